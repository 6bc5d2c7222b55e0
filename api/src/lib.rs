//! Drover's cluster API.
//!
//! Contract (filled in by the API issue, #4): every node serves the whole gRPC API
//! (Cluster, Hosts, Domains, Networks, StoragePools, Volumes, Snapshots, Migrations,
//! Events, Audit). A request becomes a `controlplane::Command`, is decided on the leader
//! with `controlplane::decide`, and its proposal is committed through `raft`. Every
//! `controlplane::Rejection` maps to exactly one gRPC status code. This crate also holds
//! the client library and the `drover` CLI, including `drover up`.
//!
//! Today: the `drover` binary (`src/main.rs`) is the one place that wires the pieces
//! together, and runs a replica with `drover server` (the replication service of `raft`).
//! The public API services do not exist yet.
#![forbid(unsafe_code)]
