//! The invariants, one per file, each saying what it protects. Each is a pure function
//! over what the world observed; the world calls them during the run (single run,
//! replica hashes) and at its end (the rest).

pub mod acked_writes;
pub mod archive_replay;
pub mod durability;
pub mod failover;
pub mod fencing;
pub mod leases;
pub mod linearizable;
pub mod liveness;
pub mod migrations;
pub mod replica_hashes;
pub mod rights;
pub mod single_run;
pub mod snapshots;
pub mod volumes;

/// An invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name (its file).
    pub invariant: &'static str,
    /// Simulated time it was found.
    pub at_ms: u64,
    pub detail: String,
}
