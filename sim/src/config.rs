//! What one simulated run looks like: the size of the world, how long the chaos lasts,
//! and which deliberate bug (if any) the write path carries.

use raft::proposer::Bug;

/// A planted bug in the hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostBug {
    None,
    /// Report a snapshot as taken although its file never reached storage.
    SnapshotWithoutFile,
    /// Ignore the lease: no self-fencing by hostd, and VM processes that do not watch it.
    NoSelfFence,
    /// Report a volume's file made although it never reached the pool.
    VolumeWithoutFile,
    /// Boot a domain reverted to a disk snapshot on its disks as they are, without writing
    /// the snapshot's images back.
    DiskRevertSkipped,
    /// Run a migration's incoming VM as soon as it is there, without waiting for its
    /// source's go.
    IncomingRunsEarly,
    /// Copy with the host's own longest pause, ignoring the operator's for the migration.
    MigrationLimitIgnored,
}

/// One run's settings. Everything random is drawn from `seed`.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Control replicas (raft voters).
    pub replicas: u64,
    /// Hypervisor hosts, each with a hostd and a fake hypervisor.
    pub hosts: u64,
    /// Domain names the workload uses (`d0`, `d1`, …).
    pub domains: u64,
    /// Domains (`vm0`, `vm1`, …) defined and started before the chaos begins, so the
    /// world has VMs to keep running whatever the workload draws.
    pub vms: u64,
    /// Every host holds a learner replica of the log and hostd reconciles from it, as
    /// `drover up` runs hosts; otherwise hostd reads through the API (linearizable).
    pub host_replicas: bool,
    /// Concurrent API clients.
    pub clients: u64,
    /// Simulated time with workload and faults, in milliseconds.
    pub chaos_ms: u64,
    /// After healing every fault, how long the cluster has to settle (the liveness
    /// bound), in milliseconds.
    pub settle_ms: u64,
    /// Draw faults at all (a fault-free run is the baseline).
    pub faults: bool,
    /// A deliberately broken write path, to prove the invariants catch it.
    pub bug: Bug,
    /// A deliberately broken host, to prove the invariants catch it.
    pub host_bug: HostBug,
    /// Keep the readable trace (it is always hashed).
    pub keep_trace: bool,
}

impl SimConfig {
    /// A small world: 3 replicas, 4 hosts, 8 VMs started up front, 12 more domain names for
    /// the workload, 3 clients, 20 s of chaos.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            replicas: 3,
            hosts: 4,
            domains: 12,
            vms: 8,
            host_replicas: true,
            clients: 3,
            chaos_ms: 20_000,
            settle_ms: 60_000,
            faults: true,
            bug: Bug::None,
            host_bug: HostBug::None,
            keep_trace: false,
        }
    }
}

/// Every host's snapshot directory: one shared store, as shared storage gives.
pub const SNAPSHOT_DIR: &str = "/sim/snapshots";
