//! Drover's cluster API.
//!
//! Contract (filled in by the API issue, #4): every node serves the whole gRPC API
//! (Cluster, Hosts, Domains, Networks, StoragePools, Volumes, Snapshots, Migrations,
//! Events, Audit). A request becomes a `controlplane::Command`, is decided on the leader
//! with `controlplane::decide`, and its proposal is committed through `raft`. Every
//! `controlplane::Rejection` maps to exactly one gRPC status code. This crate also holds
//! the client library and the `drover` CLI, including `drover up`.
//!
//! Today this crate is empty: the API does not exist yet.
#![forbid(unsafe_code)]
