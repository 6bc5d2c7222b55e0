//! Proposals: what `decide` produces and the log carries.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::model::ResourceKey;

/// "This resource is still at this version" (0: "does not exist"). Checked at apply time
/// against the then-latest state; one failure voids the whole proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precondition {
    pub key: ResourceKey,
    pub version: u64,
}

/// "Domain `domain` still fits on host `host`": the host is ready, has the room, carries
/// the required labels and runs no other member of the domain's anti-affinity group.
/// Placements guard on this rather than on the host's version, so placements decided at
/// the same moment on the same host commute unless the host really fills up (the way
/// Nomad's plan applier re-checks fit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFit {
    pub host: String,
    pub domain: String,
}

/// The decided result of one request: events to append if every precondition still holds.
/// This is the raft log's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: String,
    pub principal: String,
    /// The proposer's clock when it decided, stamped on every event.
    pub time_ms: u64,
    pub preconditions: Vec<Precondition>,
    pub fits: Vec<HostFit>,
    pub events: Vec<Event>,
    /// The trace this decision belongs to, when it is being traced (format 8 on): every
    /// replica that applies the proposal, and the host that acts on it, continue it. Not
    /// part of what the proposal decides: applying ignores it.
    pub trace: Option<TraceParent>,
    /// The raft term whose leader decided this from what only it knew (its hosts'
    /// leases, which the leader of each term grants afresh): the proposal holds only in a
    /// log entry appended in that term (format 12 on). The replica applying the entry
    /// checks it ([`ProposalOutcome::OutOfTerm`]); the core knows no terms, so
    /// [`crate::apply_proposal`] does not. `None` for every decision made from the log's
    /// state alone.
    pub term: Option<u64>,
}

/// A W3C trace context (`traceparent`) as the log carries it: whose trace, which span
/// decided, and its flags (bit 0: sampled). Only sampled traces ride in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// A proposal as formats 1 to 7 wrote it: no trace. (Raft log entries of raft format 1
/// hold proposals in this layout, without the codec's header.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProposalV7 {
    pub request_id: String,
    pub principal: String,
    pub time_ms: u64,
    pub preconditions: Vec<Precondition>,
    pub fits: Vec<HostFit>,
    pub events: Vec<Event>,
}

impl From<ProposalV7> for Proposal {
    fn from(p: ProposalV7) -> Proposal {
        let ProposalV7 { request_id, principal, time_ms, preconditions, fits, events } = p;
        Proposal { request_id, principal, time_ms, preconditions, fits, events, trace: None, term: None }
    }
}

/// A proposal as formats 8 to 11 wrote it: a trace, no term.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProposalV11 {
    pub request_id: String,
    pub principal: String,
    pub time_ms: u64,
    pub preconditions: Vec<Precondition>,
    pub fits: Vec<HostFit>,
    pub events: Vec<Event>,
    pub trace: Option<TraceParent>,
}

impl From<ProposalV11> for Proposal {
    fn from(p: ProposalV11) -> Proposal {
        let ProposalV11 { request_id, principal, time_ms, preconditions, fits, events, trace } = p;
        Proposal { request_id, principal, time_ms, preconditions, fits, events, trace, term: None }
    }
}

/// Where a committed request's events landed: `first_seq..=last_seq`. A request that
/// changed nothing has an empty range (`last_seq == first_seq - 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub first_seq: u64,
    pub last_seq: u64,
}

impl Committed {
    pub fn event_count(self) -> u64 {
        self.last_seq + 1 - self.first_seq
    }
}

/// What `decide` returns for an acceptable request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Propose these events.
    Propose(Proposal),
    /// The request id was already committed: here is the first answer, do nothing.
    AlreadyCommitted(Committed),
}

/// What applying a proposal did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposalOutcome {
    /// Every event was applied.
    Applied(Committed),
    /// The request id had been committed before (a retry raced the first attempt); nothing
    /// was applied and this is the first answer.
    Duplicate(Committed),
    /// A precondition failed; nothing was applied. The proposer re-decides.
    Conflict { key: ResourceKey, expected: u64, actual: u64 },
    /// A placement no longer fits its host; nothing was applied. The proposer re-decides.
    Unfit { host: String, domain: String, reason: String },
    /// The proposal holds only in term `decided` and was appended by the leader of term
    /// `appended` (it waited in a queue across an election): nothing was applied, and the
    /// proposer gives up (what it decided from is gone with its term).
    OutOfTerm { decided: u64, appended: u64 },
}
