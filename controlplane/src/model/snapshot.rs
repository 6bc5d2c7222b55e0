use serde::{Deserialize, Serialize};

/// What a snapshot captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// Memory, device state and disks of a running domain.
    Full,
    /// Disks only (qcow2 internal snapshots).
    Disk,
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
}
