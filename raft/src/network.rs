//! The raft transport's client side: openraft's `RaftNetwork` over tonic gRPC.
//!
//! Channels are created lazily per address and reconnect by themselves; every call has a
//! deadline (openraft's `hard_ttl` for the RPC), a message-size cap, and the cluster-id
//! header. Snapshots go as openraft's bounded chunks, one unary call per chunk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use proto::raft::raft_client::RaftClient;
use proto::raft::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::encoding;
use crate::tls::Transport;
use crate::type_config::{Node, NodeId, TypeConfig};

/// Largest gRPC message a replica sends or accepts (a batch of entries or a snapshot chunk).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Header carrying the cluster id on every call between replicas.
pub const CLUSTER_HEADER: &str = "drover-cluster-id";
const CONNECT_TIMEOUT_MS: u64 = 500;

/// The cluster this replica belongs to, once known; shared by the client and server sides.
#[derive(Debug, Clone, Default)]
pub struct ClusterId(Arc<RwLock<Option<String>>>);

impl ClusterId {
    pub fn get(&self) -> Option<String> {
        self.0.read().expect("cluster id lock").clone()
    }

    pub fn set(&self, id: String) {
        *self.0.write().expect("cluster id lock") = Some(id);
    }

    /// Add the cluster-id header to an outgoing request.
    pub fn stamp<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(id) = self.get() {
            if let Ok(v) = id.parse() {
                request.metadata_mut().insert(CLUSTER_HEADER, v);
            }
        }
    }
}

/// Lazily connected channels by address, over one transport (TLS or insecure).
#[derive(Debug, Clone, Default)]
pub struct Channels {
    map: Arc<Mutex<HashMap<String, Channel>>>,
    transport: Transport,
}

impl Channels {
    pub fn new(transport: Transport) -> Channels {
        Channels { map: Arc::default(), transport }
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// A channel to `addr` (`host:port`), created on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.map.lock().expect("channels lock");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let channel = self
            .transport
            .endpoint(addr)?
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Creates a client per target replica.
#[derive(Debug, Clone)]
pub struct GrpcNetwork {
    pub channels: Channels,
    pub cluster: ClusterId,
}

/// The client for one target replica.
#[derive(Debug)]
pub struct GrpcPeer {
    target: NodeId,
    addr: String,
    channels: Channels,
    cluster: ClusterId,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcPeer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> GrpcPeer {
        GrpcPeer {
            target,
            addr: node.peer.clone(),
            channels: self.channels.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl GrpcPeer {
    async fn call<Req, Resp, E>(
        &self,
        kind: &'static str,
        rpc: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel =
            self.channels.get(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let mut request = tonic::Request::new(RaftPayload { payload: encoding::encode(rpc) });
        request.set_timeout(option.hard_ttl());
        self.cluster.stamp(&mut request);
        let reply = match kind {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let payload = match reply {
            Ok(r) => r.into_inner().payload,
            Err(status)
                if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) =>
            {
                return Err(RPCError::Unreachable(Unreachable::new(&Message(format!(
                    "{kind} to node {}: {status}",
                    self.target
                )))));
            }
            Err(status) => {
                return Err(RPCError::Network(NetworkError::new(&Message(format!(
                    "{kind} to node {}: {status}",
                    self.target
                )))));
            }
        };
        let result: Result<Resp, E> = encoding::decode(&payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&Message(format!("bad {kind} reply: {e}")))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
