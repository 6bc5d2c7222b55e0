use serde::{Deserialize, Serialize};

/// What a snapshot captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// Memory, device state and disks of a running domain.
    Full,
    /// The writable disks of a stopped domain, imaged by a host (raw or qcow2).
    Disk,
}

words!(SnapshotKind {
    Full => "full",
    Disk => "disk",
});

/// Where a snapshot stands: asked for, taken by a host, or failed. Only a host that
/// really wrote the snapshot's file moves it to `Taken`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotState {
    /// Asked of `host`, which runs run `generation` of the domain; not taken yet.
    Pending { host: String, generation: u64 },
    /// `host` wrote the snapshot: `bytes` in its file, the guest held paused `duration_ms`.
    Taken { host: String, bytes: u64, duration_ms: u64 },
    /// The host could not take it (or the run ended first); nothing is kept.
    Failed { reason: String },
    /// Recorded by a build from before hosts took snapshots (`SnapshotCreated`): there is
    /// no file behind it.
    RecordOnly,
}

impl SnapshotState {
    pub fn name(&self) -> &'static str {
        match self {
            SnapshotState::Pending { .. } => "pending",
            SnapshotState::Taken { .. } => "taken",
            SnapshotState::Failed { .. } => "failed",
            SnapshotState::RecordOnly => "record-only",
        }
    }
}

/// A snapshot, named by its domain and its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub domain: String,
    pub name: String,
}

impl std::fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.domain, self.name)
    }
}

/// A snapshot of a domain. Snapshots of one domain form a tree through `parent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub domain: String,
    pub name: String,
    pub parent: Option<String>,
    pub kind: SnapshotKind,
    pub created_ms: u64,
    pub version: u64,
    pub state: SnapshotState,
    /// The sequence number of the event that asked for it: unique for ever (a later
    /// snapshot of the same name has another), it names the snapshot's file.
    pub id: u64,
    /// The domain's writable disks when it was asked for, in order: the disks whose
    /// images it holds, which a revert writes back (so the domain must still have them).
    pub disks: Vec<super::VolumeRef>,
}
