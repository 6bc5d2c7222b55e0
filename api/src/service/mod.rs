//! The public gRPC services. Each turns requests into `controlplane::Command`s submitted
//! through the replica ([`raft::node::Node::submit`]) and reads from its state.

pub mod audit;
pub mod domains;
pub mod events;
pub mod hosts;
pub mod migrations;
pub mod networks;
pub mod snapshots;
pub mod storage;

use controlplane::model::ResourceKind;
use controlplane::{Command, Committed, Rejection, Request, State};
use proto::api as pb;
use raft::node::Node;
use tonic::Status;

/// Metadata header naming who makes a change. Until authentication exists it is taken on
/// trust; without it the principal is `anonymous`.
pub const PRINCIPAL_HEADER: &str = "drover-principal";

/// What every service holds: the replica it runs on.
#[derive(Debug, Clone)]
pub struct Api {
    pub node: Node,
}

impl Api {
    /// Submit `command` for the caller of `meta` under `request_id` (generated if empty).
    pub async fn write(
        &self,
        meta: &tonic::metadata::MetadataMap,
        request_id: String,
        command: Command,
    ) -> Result<pb::WriteReply, Status> {
        let principal = meta
            .get(PRINCIPAL_HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "anonymous".to_owned(), str::to_owned);
        let request_id =
            if request_id.is_empty() { format!("auto-{:032x}", rand::random::<u128>()) } else { request_id };
        let committed: Committed = self
            .node
            .submit(Request { request_id, principal, command }, false)
            .await
            .map_err(|e| e.to_status())?;
        Ok(pb::WriteReply { first_seq: committed.first_seq, last_seq: committed.last_seq })
    }

    /// Submit the command `command(name)` built from a domain action request.
    pub async fn act(
        &self,
        request: tonic::Request<pb::DomainActionRequest>,
        command: fn(String) -> Command,
    ) -> Result<tonic::Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        Ok(tonic::Response::new(self.write(&meta, r.request_id, command(r.name)).await?))
    }

    /// Run `f` on a state as fresh as `consistency` asks.
    pub async fn read<T>(&self, consistency: i32, f: impl FnOnce(&State) -> T) -> Result<T, Status> {
        match pb::Consistency::try_from(consistency) {
            Ok(pb::Consistency::Local) => Ok(self.node.read_local(f)),
            Ok(pb::Consistency::Linearizable) => {
                self.node.read_linearizable(f).await.map_err(|e| e.to_status())
            }
            Err(_) => Err(Status::invalid_argument(format!("invalid consistency: {consistency}"))),
        }
    }
}

/// The NOT_FOUND answer for a read of a missing resource, worded like `decide`'s.
pub fn not_found(kind: ResourceKind, name: &str) -> Status {
    Status::not_found(Rejection::NotFound { kind, name: name.to_owned() }.to_string())
}
