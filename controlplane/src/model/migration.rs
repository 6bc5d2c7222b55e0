use serde::{Deserialize, Serialize};

/// A migration's id: the sequence number of its `MigrationStarted` event.
pub type MigrationId = u64;

/// Where a migration stands. It moves forward only, and ends committed or rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MigrationPhase {
    /// Target reserved, target VM being prepared.
    Preparing,
    /// Pre-copy rounds of dirty memory.
    Transferring,
    /// Source paused, last pages and device state in flight.
    Completing,
    /// Ownership moved to the target (the single commit point).
    Committed,
    /// Abandoned; the source keeps the domain.
    RolledBack,
}

words!(MigrationPhase {
    Preparing => "preparing",
    Transferring => "transferring",
    Completing => "completing",
    Committed => "committed",
    RolledBack => "rolled-back",
});

impl MigrationPhase {
    pub fn is_ended(self) -> bool {
        matches!(self, MigrationPhase::Committed | MigrationPhase::RolledBack)
    }
}

/// A live migration of a domain from one host to another: a saga in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub id: MigrationId,
    pub domain: String,
    pub source: String,
    pub target: String,
    pub phase: MigrationPhase,
    /// Why it rolled back.
    pub reason: Option<String>,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub version: u64,
}
