//! Drover's deterministic simulator of the whole control plane.
//!
//! Contract: one seed decides everything. A world of control replicas and hosts runs the
//! real code — the pure core (`controlplane`), openraft 0.9 with Drover's storage code on
//! an in-memory disk with an fsync model (`raft::kv_mem`), the leader's write path
//! (`raft::proposer`), the API's decision path with leader forwarding (`caller`: the
//! same `raft::proposer::submit` as `drover server`, over the simulated network), and
//! hostd's reconcile pass (`hostd::pass`, `hostd::assignment`) on the fake hypervisor —
//! on one single-threaded tokio runtime with a paused clock, tokio's randomness and
//! openraft's seeded (`raft::runtime`), a simulated network (`network`) and per-node
//! clocks (`clock`). Faults (partitions, loss, duplication, delay, crashes and restarts of
//! replicas, hostds and VMs, slow and failing disks, clock skew and jumps, hosts lost for
//! good) and the workload are drawn from the seed (`world`, `workload`). The invariants
//! live one per file in `invariants`. The world, hosts and clients share one `Core`
//! (`shared`), which depends on none of them. Every run yields a trace whose hash is the same for
//! the same seed, in debug and release builds.
//!
//! Every host holds a learner replica of the log and hostd reconciles from it, as under
//! `drover up` (`SimConfig::host_replicas`; off, hosts read through the API). Snapshots
//! are taken, reverted, cloned from and deleted on storage every host shares
//! (`hostd::fake::SnapshotStore`); volume files are made, grown and removed in a pool
//! every host shares (`hostd::fake::VolumeStore`), and hosts serve their networks
//! (recorded by the fake). HA failover and fencing run under every fault. Not simulated
//! yet: migrations (their issue adds their faults and invariants here).
#![forbid(unsafe_code)]
// openraft's error types are large by design and are what its network trait returns.
#![allow(clippy::result_large_err)]

pub mod caller;
pub mod client;
pub mod clock;
pub mod config;
pub mod history;
pub mod host;
pub mod invariants;
pub mod network;
pub mod replica;
pub mod shared;
pub mod trace;
pub mod workload;
pub mod world;

pub use config::SimConfig;
pub use world::{run, RunOutcome, DETERMINISTIC};

/// The allocator the simulator's binaries run on (`sim`, and `bench`'s `sim_speed`):
/// `#[global_allocator] static ALLOCATOR: sim::Allocator = sim::Allocator;`. A run
/// allocates and frees constantly (openraft's messages and tasks, tokio's timers, the
/// state machine's events), and mimalloc costs about a tenth less CPU than the system
/// allocator for the same run. Nothing simulated depends on it: a seed's trace hash is
/// the same on either.
pub use mimalloc::MiMalloc as Allocator;
