//! Drover's benchmarks and load generators.
//!
//! Contract: speed and memory are measured here, never asserted by timed tests. Each
//! benchmark records its numbers, the machine and the command in `bench/README.md`.
//! Criterion benches of the pure core (`benches/core.rs`) and the audit archive
//! (`benches/archive.rs`) over histories made by [`history`]; binaries: `raft_load`
//! (replication against etcd), `durability_floor`, `placements`, `vm_start` (against QEMU
//! and libvirt), `snapshot` (save and restore, against QEMU) and `sim_speed`.
#![forbid(unsafe_code)]

pub mod history;
