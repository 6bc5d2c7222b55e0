//! [`ArchivePeers`] over gRPC: the `Replication.Archive` call of the other members, tried
//! in turn, each call with a deadline and this cluster's id.

use std::sync::Arc;
use std::time::Duration;

use proto::raft::replication_client::ReplicationClient;
use proto::raft::ArchiveRequest;

use crate::archive::ArchivedEvent;
use crate::backfill::ArchivePeers;
use crate::network::{Channels, ClusterId};
use crate::state_machine::Shared;
use crate::type_config::NodeId;

/// How long one archive fetch may take.
const FETCH_TIMEOUT_MS: u64 = 10_000;

/// The other members of this replica's cluster, as its applied membership names them.
#[derive(Debug)]
pub struct GrpcArchivePeers {
    pub me: NodeId,
    pub shared: Arc<Shared>,
    pub channels: Channels,
    pub cluster: ClusterId,
    /// Which member to ask next.
    pub turn: usize,
}

impl ArchivePeers for GrpcArchivePeers {
    async fn fetch(&mut self, from_seq: u64, limit: usize) -> Result<Vec<ArchivedEvent>, String> {
        let membership = self.shared.membership();
        let peers: Vec<String> = membership
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.me)
            .map(|(_, node)| node.peer.clone())
            .collect();
        if peers.is_empty() {
            return Err("no other member to fetch from".into());
        }
        self.turn = self.turn.wrapping_add(1);
        let addr = &peers[self.turn % peers.len()];
        let channel = self.channels.get(addr).map_err(|e| format!("{addr}: {e}"))?;
        let mut request = tonic::Request::new(ArchiveRequest { from_seq, limit: limit as u32 });
        request.set_timeout(Duration::from_millis(FETCH_TIMEOUT_MS));
        self.cluster.stamp(&mut request);
        let reply =
            ReplicationClient::new(channel).archive(request).await.map_err(|s| format!("{addr}: {s}"))?;
        let reply = reply.into_inner();
        if reply.raft_indexes.len() != reply.events.len() {
            return Err(format!(
                "{addr} answered {} events with {} raft indexes",
                reply.events.len(),
                reply.raft_indexes.len()
            ));
        }
        reply
            .events
            .iter()
            .zip(reply.raft_indexes)
            .map(|(bytes, raft_index)| {
                let envelope =
                    controlplane::codec::decode(bytes).map_err(|e| format!("{addr}: bad event: {e}"))?;
                Ok(ArchivedEvent { raft_index, envelope })
            })
            .collect()
    }
}
