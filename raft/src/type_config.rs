//! The one `declare_raft_types!`: what openraft replicates and answers.

use std::io::Cursor;
use std::sync::Arc;

use controlplane::{codec, Proposal, ProposalOutcome, ProposalV7};
use serde::de::Error as _;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::runtime::DroverRuntime;

/// A node's id in the cluster.
pub type NodeId = u64;
/// A node's record in the membership.
pub type Node = Member;

/// Where a member is reached: its peer port (the raft and replication services, for
/// other members) and its public API (for clients, and what a leader hint names). A
/// host's learner serves no public API: its `api` is empty. Like etcd's peer and client
/// URLs, both are replicated with the membership, so every replica can point a client to
/// the leader's API.
///
/// Raft formats 1 and 2 recorded one address (openraft's `BasicNode`), where a replica
/// served both on one port; it decodes as both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Member {
    /// `host:port` of the raft and replication services.
    pub peer: String,
    /// `host:port` of the public API; empty where there is none.
    pub api: String,
}

impl Member {
    pub fn new(peer: impl Into<String>, api: impl Into<String>) -> Member {
        Member { peer: peer.into(), api: api.into() }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.api.as_str() {
            "" => write!(f, "{} (no API)", self.peer),
            api if api == self.peer => f.write_str(&self.peer),
            api => write!(f, "{} (API {api})", self.peer),
        }
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Member, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "Member")]
        struct Now {
            peer: String,
            api: String,
        }
        #[derive(Deserialize)]
        #[serde(rename = "BasicNode")]
        struct OneAddress {
            addr: String,
        }
        Ok(if crate::encoding::decoding_format() <= 2 {
            let old = OneAddress::deserialize(d)?;
            Member { api: old.addr.clone(), peer: old.addr }
        } else {
            let now = Now::deserialize(d)?;
            Member { peer: now.peer, api: now.api }
        })
    }
}

/// One log entry's payload: proposals decided by the leader, committed together and
/// applied in order. Batching amortizes a raft round (and its fsyncs) over every write
/// that arrived while the previous round was in flight.
///
/// Shared, so an entry is copied cheaply (to each follower's message, into the log
/// store's cache, to the state machine).
///
/// Each proposal is encoded by `controlplane::codec`, versioned, so a proposal that
/// changes shape (format 8 added its trace) needs no new raft format. Raft format 1
/// entries held the proposals' plain layout ([`ProposalV7`]) instead, and still decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalBatch(pub Arc<Vec<Proposal>>);

/// One proposal's codec bytes, as one byte string.
struct Encoded(Vec<u8>);

impl Serialize for Encoded {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Encoded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Encoded, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Encoded;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a proposal's codec bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Encoded, E> {
                Ok(Encoded(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Encoded, E> {
                Ok(Encoded(v))
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

impl Serialize for ProposalBatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for proposal in self.0.iter() {
            seq.serialize_element(&Encoded(codec::encode(proposal)))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for ProposalBatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ProposalBatch, D::Error> {
        let proposals = if crate::encoding::decoding_format() == 1 {
            Vec::<ProposalV7>::deserialize(d)?.into_iter().map(Proposal::from).collect()
        } else {
            Vec::<Encoded>::deserialize(d)?
                .iter()
                .map(|e| codec::decode::<Proposal>(&e.0).map_err(D::Error::custom))
                .collect::<Result<_, _>>()?
        };
        Ok(ProposalBatch(Arc::new(proposals)))
    }
}

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
