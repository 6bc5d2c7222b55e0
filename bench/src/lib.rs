//! Drover's benchmarks and load generators.
//!
//! Contract: speed and memory are measured here, never asserted by timed tests. Each
//! benchmark records its numbers, the machine and the command in `bench/README.md`.
//! Today: criterion benches of the pure core (`benches/core.rs`) over histories made by
//! [`history`]. Later issues add the replication load generator (against etcd), VM start
//! latency (against QEMU and libvirt) and the simulator's speed.
#![forbid(unsafe_code)]

pub mod history;
