//! What clients and hosts saw: every write with when it was sent and answered and how,
//! and every linearizable read with the sequence number it returned.

use controlplane::{Committed, Rejection};

/// How a write ended, as its sender saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed, with the answer the cluster gave.
    Acked(Committed),
    /// Refused, on the `attempts`-th try. Refused on its first try, it must have changed
    /// nothing; after a try with no answer, that earlier try may still commit (a request
    /// id makes a write happen at most once, it does not make a refusal durable).
    Rejected { rejection: Rejection, attempts: u32 },
    /// No definite answer within the deadline: it may or may not have happened.
    Unknown,
}

/// One write.
#[derive(Debug, Clone)]
pub struct Op {
    pub principal: String,
    pub request_id: String,
    pub command: &'static str,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub outcome: Outcome,
}

/// One linearizable read.
#[derive(Debug, Clone)]
pub struct Read {
    pub reader: String,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    /// The last sequence number of the state it returned.
    pub last_seq: u64,
}

/// Everything observed, in completion order.
#[derive(Debug, Default)]
pub struct History {
    pub ops: Vec<Op>,
    pub reads: Vec<Read>,
}
