//! The gRPC services a replica serves on its peer port: `Raft` (between replicas) and
//! `Replication` (joins, membership, writes, status, archive; its status is served on the
//! public port too, where `api::server` puts it).

use std::future::Future;
use std::time::Duration;

use openraft::ChangeMembers;
use proto::raft::raft_server::{Raft as RaftRpc, RaftServer};
use proto::raft::replication_server::{Replication, ReplicationServer};
use proto::raft::{
    ArchiveReply, ArchiveRequest, JoinReply, JoinRequest, MemberReply, MemberRequest, RaftPayload,
    StateAtReply, StateAtRequest, StatusReply, StatusRequest, SubmitBatchReply, SubmitBatchRequest,
    SubmitReply, SubmitRequest, SubmitResult,
};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::encoding;
use crate::network::{CLUSTER_HEADER, RAFT_MESSAGE_BYTES_MAX};
use crate::node::{Node, NodeError, FORWARDED_HEADER};
use crate::tls::{Identity, Kind, Port, Transport};
use crate::type_config::{Member, NodeId};

/// Largest write request accepted (one encoded command).
pub const SUBMIT_BYTES_MAX: usize = 1 << 20;
/// Most writes in one `SubmitBatch` call.
pub const SUBMIT_BATCH_MAX: usize = 1024;
/// Longest any call may run on the server.
pub const CALL_TIMEOUT_MS: u64 = 60_000;

/// Refuse traffic for another cluster; a replica that has none yet adopts the sender's.
async fn check_cluster<T>(node: &Node, request: &Request<T>) -> Result<(), Status> {
    let Some(theirs) = request.metadata().get(CLUSTER_HEADER).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    node.adopt_cluster(theirs).await.map_err(|e| e.to_status())
}

fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

fn bad_payload(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("payload does not decode: {e}"))
}

/// The raft service between replicas.
#[derive(Debug)]
pub struct RaftService {
    node: Node,
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        check_cluster(&self.node, &request).await?;
        let rpc = encoding::decode(&request.into_inner().payload).map_err(bad_payload)?;
        let result = self.node.raft().append_entries(rpc).await;
        Ok(Response::new(RaftPayload { payload: encoding::encode(&result) }))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        check_cluster(&self.node, &request).await?;
        let rpc = encoding::decode(&request.into_inner().payload).map_err(bad_payload)?;
        let result = self.node.raft().vote(rpc).await;
        Ok(Response::new(RaftPayload { payload: encoding::encode(&result) }))
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        check_cluster(&self.node, &request).await?;
        let rpc = encoding::decode(&request.into_inner().payload).map_err(bad_payload)?;
        let result = self.node.raft().install_snapshot(rpc).await;
        Ok(Response::new(RaftPayload { payload: encoding::encode(&result) }))
    }
}

/// Joins, membership, writes and replica inspection.
#[derive(Debug)]
pub struct ReplicationService {
    node: Node,
}

impl ReplicationService {
    fn member_reply(&self) -> MemberReply {
        let (voters, learners) = self.node.members();
        MemberReply { voters, learners }
    }

    async fn change(
        &self,
        id: NodeId,
        change: ChangeMembers<NodeId, Member>,
    ) -> Result<Response<MemberReply>, Status> {
        if id == 0 {
            return Err(Status::invalid_argument("node_id must be set"));
        }
        self.node.change(change).await.map_err(|e| e.to_status())?;
        Ok(Response::new(self.member_reply()))
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let fwd = forwarded(&request);
        let caller = request.extensions().get::<Identity>().cloned();
        let req = request.into_inner();
        if req.node_id == 0 {
            return Err(Status::invalid_argument("node_id must be set"));
        }
        // A host's certificate joins its learner only; a voter needs a replica's.
        if let Some(caller) = caller.filter(|c| c.kind != Kind::Replica && req.voter) {
            warn!(%caller, node = req.node_id, "refused: a voter's join with a certificate that is not a replica's");
            return Err(Status::permission_denied(format!("{caller} may join only as a learner")));
        }
        let cluster_id = self.node.handle_join(req, fwd).await.map_err(|e| e.to_status())?;
        Ok(Response::new(JoinReply { cluster_id }))
    }

    async fn promote(&self, request: Request<MemberRequest>) -> Result<Response<MemberReply>, Status> {
        let id = request.into_inner().node_id;
        self.change(id, ChangeMembers::AddVoterIds([id].into())).await
    }

    async fn remove(&self, request: Request<MemberRequest>) -> Result<Response<MemberReply>, Status> {
        let id = request.into_inner().node_id;
        let (voters, _) = self.node.members();
        if voters.contains(&id) {
            self.change(id, ChangeMembers::RemoveVoters([id].into())).await?;
        }
        self.change(id, ChangeMembers::RemoveNodes([id].into())).await
    }

    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<SubmitReply>, Status> {
        check_cluster(&self.node, &request).await?;
        let fwd = forwarded(&request);
        let req = encoding::decode(&request.into_inner().request).map_err(bad_payload)?;
        let committed = self.node.submit(req, fwd).await.map_err(|e: NodeError| e.to_status())?;
        Ok(Response::new(SubmitReply { committed: encoding::encode(&committed) }))
    }

    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<SubmitBatchReply>, Status> {
        check_cluster(&self.node, &request).await?;
        let fwd = forwarded(&request);
        let requests = request.into_inner().requests;
        if requests.len() > SUBMIT_BATCH_MAX {
            return Err(Status::invalid_argument(format!(
                "{} writes in one batch; at most {SUBMIT_BATCH_MAX}",
                requests.len()
            )));
        }
        // Every request decodes before any is submitted: bad input changes nothing.
        let decoded = requests
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                encoding::decode(bytes)
                    .map_err(|e| Status::invalid_argument(format!("write {i} does not decode: {e}")))
            })
            .collect::<Result<Vec<controlplane::Request>, Status>>()?;
        // Together, as that many concurrent Submit calls would be: the leader's write path
        // batches them into log entries.
        let outcomes = futures::future::join_all(decoded.into_iter().map(|r| self.node.submit(r, fwd))).await;
        let results = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok(committed) => {
                    SubmitResult { committed: encoding::encode(&committed), code: 0, message: String::new() }
                }
                Err(e) => {
                    let status = e.to_status();
                    SubmitResult {
                        committed: Vec::new(),
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    }
                }
            })
            .collect();
        Ok(Response::new(SubmitBatchReply { results }))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let member = request.into_inner().member;
        if member == 0 || member == self.node.id() {
            return Ok(Response::new(self.node.status()));
        }
        Ok(Response::new(self.node.status_of(member).await?))
    }

    async fn archive(&self, request: Request<ArchiveRequest>) -> Result<Response<ArchiveReply>, Status> {
        let req = request.into_inner();
        let limit = if req.limit == 0 { 1000 } else { req.limit as usize };
        let events =
            self.node.archive().events(req.from_seq, limit).map_err(|e| Status::internal(e.to_string()))?;
        let raft_indexes = events.iter().map(|e| e.raft_index).collect();
        let events = events.iter().map(|e| controlplane::codec::encode(&e.envelope)).collect();
        Ok(Response::new(ArchiveReply { events, raft_indexes }))
    }

    async fn state_at(&self, request: Request<StateAtRequest>) -> Result<Response<StateAtReply>, Status> {
        let seq = request.into_inner().seq;
        let last = self.node.read_local(|s| s.last_seq());
        let state = self.node.archive().state_at(seq, last).map_err(|e| match e {
            crate::archive::ArchiveError::Future { .. } => Status::out_of_range(e.to_string()),
            other => Status::internal(other.to_string()),
        })?;
        Ok(Response::new(StateAtReply { state_hash: controlplane::state_hash(&state).to_string(), seq }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("gRPC server")]
    Transport(#[from] tonic::transport::Error),
}

/// The raft service, with its message-size limits.
pub fn raft_server(node: Node) -> RaftServer<RaftService> {
    RaftServer::new(RaftService { node })
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
}

/// The replication service, with its message-size limits.
pub fn replication_server(node: Node) -> ReplicationServer<ReplicationService> {
    ReplicationServer::new(ReplicationService { node })
        .max_decoding_message_size(SUBMIT_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
}

/// Bind the node's public listen address (warning when it is not loopback and has no
/// TLS), with TCP_NODELAY on every accepted connection.
pub async fn listen(node: &Node) -> Result<TcpIncoming, ServeError> {
    bind(node, node.listen_addr()).await
}

/// Bind `addr` for `node`'s services (warning when it is not loopback and has no TLS), with
/// TCP_NODELAY on every accepted connection.
pub async fn bind(node: &Node, addr: std::net::SocketAddr) -> Result<TcpIncoming, ServeError> {
    if !addr.ip().is_loopback() && !node.transport().is_tls() {
        warn!(%addr, "INSECURE: listening beyond loopback without TLS: anyone who can reach it can join, read or write");
    }
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    Ok(TcpIncoming::from(listener).with_nodelay(Some(true)))
}

/// A server builder with Drover's call timeout and `transport`'s TLS; its door
/// ([`Transport::door`]) goes in front of the services.
pub fn server_builder(transport: &Transport) -> Result<tonic::transport::Server, ServeError> {
    Ok(transport
        .server(tonic::transport::Server::builder().timeout(Duration::from_millis(CALL_TIMEOUT_MS)))?)
}

/// Serve the two replication services, as a peer port, on the node's peer listen address
/// (its listen address without one) until `shutdown`.
pub async fn serve(
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let incoming = bind(&node, node.peer_listen_addr().unwrap_or(node.listen_addr())).await?;
    server_builder(node.transport())?
        .layer(node.transport().door(Port::Peer))
        .add_service(raft_server(node.clone()))
        .add_service(replication_server(node))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
