//! Drover's wire contract.
//!
//! Contract: the `.proto` files under `proto/` are the contract for every language; they
//! are compiled in-process by `build.rs` with protox (no system `protoc`), and this crate
//! re-exports the generated prost/tonic code. Beside it lives the one converter between
//! the API's messages and the core's model (`convert`), used by the server, the CLI and
//! hostd, so each concept has one shape on each side of the wire.
//!
//! - `drover.raft.v1`: replication between replicas and the internal write path (#3).
//! - `drover.api.v1`: the public cluster API (Domains, Hosts, Networks, StoragePools,
//!   Volumes, Snapshots, Migrations, Events, Audit).
#![forbid(unsafe_code)]

pub mod convert;

/// Replication: raft traffic, joins, forwarded writes, replica status.
#[allow(missing_debug_implementations, clippy::all)]
pub mod raft {
    tonic::include_proto!("drover.raft.v1");
}

/// The public cluster API.
#[allow(missing_debug_implementations, clippy::all)]
pub mod api {
    tonic::include_proto!("drover.api.v1");
}

/// The encoded descriptor set of every service here, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("drover_descriptor");
