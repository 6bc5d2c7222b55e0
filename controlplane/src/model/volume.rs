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

/// How a domain holds a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachMode {
    ReadOnly,
    ReadWrite,
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
}
