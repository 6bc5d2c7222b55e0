use serde::{Deserialize, Serialize};

/// The kind of storage behind a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolKind {
    /// A directory of image files.
    Dir,
}

words!(PoolKind {
    Dir => "dir",
});

/// A pool's settings, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub kind: PoolKind,
    /// Absolute path of the directory on every host that uses the pool.
    pub path: String,
    /// Whether every host sees the same files (NFS, cluster FS). Domains with disks on a
    /// local pool cannot be live-migrated.
    pub shared: bool,
    /// What the pool may hand out: the sum of its volumes' capacities stays below this.
    pub capacity_mib: u64,
}

/// A storage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub config: PoolConfig,
    /// Sum of the capacities of its volumes.
    pub allocated_mib: u64,
    /// How many volumes it holds.
    pub volumes: u64,
    pub created_ms: u64,
    pub version: u64,
}
