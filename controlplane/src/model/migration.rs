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
    /// Where the target's incoming VM listens (`ip:port`), once the target is prepared.
    pub target_address: Option<String>,
    /// How far the copy has got, as the source last reported.
    pub progress: MigrationProgress,
    /// The longest pause the operator allows this migration; `None`: the source host's
    /// own limit (`--migration-max-downtime-ms`). It may change while the copy runs.
    pub max_downtime_ms: Option<u64>,
}

/// How far a live migration's copy has got (the source host's numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// Guest memory bytes sent so far, over all rounds.
    pub bytes_sent: u64,
    /// Pre-copy rounds done (the first full pass is one).
    pub rounds: u32,
    /// How fast the guest dirties its memory, as last measured.
    pub dirty_bytes_per_s: u64,
    /// Dirty bytes left to send after the last round.
    pub remaining_bytes: u64,
    /// What the final copy would take now, at the link rate measured so far.
    pub expected_downtime_ms: u64,
    /// How much the vCPUs are throttled so that the copy converges (0 to 99).
    pub throttle_percent: u8,
    /// Once switched over: how long the guest was paused, from the pause on the source
    /// to the target's word that it runs.
    pub downtime_ms: Option<u64>,
}

/// The largest vCPU throttle a progress report may carry.
pub const THROTTLE_PERCENT_MAX: u8 = 99;

/// What a host reports of a live migration it takes part in: the steps of the saga
/// that only the hosts see happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationReport {
    /// The target: its incoming VM listens at `address`.
    TargetReady { address: String },
    /// The source: pre-copy rounds, while the guest runs.
    Copying(MigrationProgress),
    /// The source: the guest is paused; the last pages and the device state are on
    /// their way.
    Completing(MigrationProgress),
    /// The source: the target holds the whole VM; commit the switch-over (ownership
    /// moves to the target here).
    Switch(MigrationProgress),
    /// The source: the target runs the guest; the final numbers, with the downtime.
    Done(MigrationProgress),
    /// Either host: the migration cannot go on; roll it back (unless it has committed).
    Failed { reason: String },
}
