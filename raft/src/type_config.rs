//! The one `declare_raft_types!`: what openraft replicates and answers.

use std::io::Cursor;
use std::sync::Arc;

use controlplane::{Proposal, ProposalOutcome};
use serde::{Deserialize, Serialize};

use crate::runtime::DroverRuntime;

/// A node's id in the cluster.
pub type NodeId = u64;
/// A node's address record (its raft service's `host:port`).
pub type Node = openraft::BasicNode;

/// One log entry's payload: proposals decided by the leader, committed together and
/// applied in order. Batching amortizes a raft round (and its fsyncs) over every write
/// that arrived while the previous round was in flight.
///
/// Shared, so an entry is copied cheaply (to each follower's message, into the log
/// store's cache, to the state machine); it encodes exactly as the plain list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalBatch(pub Arc<Vec<Proposal>>);

/// What applying one log entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResult {
    /// An application entry: each proposal's outcome, in order.
    Batch(Vec<ProposalOutcome>),
    /// A blank or membership entry.
    Internal,
}

openraft::declare_raft_types!(
    /// Drover's raft types: the log carries batches of decided [`Proposal`]s.
    pub TypeConfig:
        D = ProposalBatch,
        R = ApplyResult,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = DroverRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
