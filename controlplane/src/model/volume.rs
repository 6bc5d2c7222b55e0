use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A volume's full name: its pool and its name within the pool.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VolumeRef {
    pub pool: String,
    pub name: String,
}

impl VolumeRef {
    pub fn new(pool: impl Into<String>, name: impl Into<String>) -> VolumeRef {
        VolumeRef { pool: pool.into(), name: name.into() }
    }
}

impl std::fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.name)
    }
}

/// On-disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeFormat {
    Raw,
    Qcow2,
}

words!(VolumeFormat {
    Raw => "raw",
    Qcow2 => "qcow2",
});

/// How a domain holds a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachMode {
    ReadOnly,
    ReadWrite,
}

words!(AttachMode {
    ReadOnly => "ro",
    ReadWrite => "rw",
});

/// What a host is asked to do to a volume's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeOp {
    /// Make the file: empty (raw sparse, raw preallocated or qcow2), a qcow2 overlay on
    /// the backing volume, or a copy of `import`, an image file on the host.
    Create { preallocate: bool, import: Option<String> },
    /// Grow the file to `capacity_mib` (already counted against the pool).
    Resize { capacity_mib: u64 },
    /// Remove the file; the record goes once the host reports it gone.
    Delete,
}

impl VolumeOp {
    pub fn name(&self) -> &'static str {
        match self {
            VolumeOp::Create { .. } => "create",
            VolumeOp::Resize { .. } => "resize",
            VolumeOp::Delete => "delete",
        }
    }
}

/// Where a volume's file stands. Only a host that really made (grew, removed) the file
/// moves a volume on from `Pending`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeState {
    /// `op` is asked of `host`; `id` is the sequence number of the event that asked (a
    /// report names it, so a late report of an earlier operation completes nothing).
    Pending { op: VolumeOp, host: String, id: u64 },
    /// The file exists as recorded.
    Ready,
    /// The host could not make the file; nothing is on disk. Delete it to free the name.
    Failed { reason: String },
    /// Recorded by a build from before hosts made volume files (`VolumeCreated`): Drover
    /// made no file for it.
    RecordOnly,
}

impl VolumeState {
    pub fn name(&self) -> &'static str {
        match self {
            VolumeState::Pending { op: VolumeOp::Create { .. }, .. } => "creating",
            VolumeState::Pending { op: VolumeOp::Resize { .. }, .. } => "resizing",
            VolumeState::Pending { op: VolumeOp::Delete, .. } => "deleting",
            VolumeState::Ready => "ready",
            VolumeState::Failed { .. } => "failed",
            VolumeState::RecordOnly => "record-only",
        }
    }
}

/// A volume: a disk image in a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: VolumeRef,
    pub format: VolumeFormat,
    pub capacity_mib: u64,
    /// Space actually used, as last reported by a host.
    pub allocation_mib: u64,
    /// The volume this one is a copy-on-write clone of (same pool).
    pub backing: Option<String>,
    /// How many volumes use this one as their backing volume.
    pub clones: u64,
    /// Domains holding this volume.
    pub attachments: BTreeMap<String, AttachMode>,
    pub created_ms: u64,
    pub version: u64,
    pub state: VolumeState,
    /// The host whose disk holds the file, for a volume of a local (not shared) pool: its
    /// domains run there. `None` in a shared pool, where every host sees the file.
    pub host: Option<String>,
    /// Why the last resize or delete failed (the volume stayed as it was); cleared by the
    /// next operation that succeeds.
    pub failure: Option<String>,
}

impl Volume {
    /// What the volume counts against its pool: its capacity, or the capacity a pending
    /// resize grows it to.
    pub fn reserved_mib(&self) -> u64 {
        match &self.state {
            VolumeState::Pending { op: VolumeOp::Resize { capacity_mib }, .. } => *capacity_mib,
            _ => self.capacity_mib,
        }
    }

    /// Whether a domain may use the file now: it exists and no operation is changing it.
    pub fn usable(&self) -> bool {
        matches!(self.state, VolumeState::Ready | VolumeState::RecordOnly)
    }
}
