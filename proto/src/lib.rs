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
//! - `drover.host.v1`: what a host agent serves the control replicas (a domain's console).
#![forbid(unsafe_code)]

pub mod convert;

/// The generated code, nested as its packages are, so one package's messages can name
/// another's (`drover.host.v1` uses `drover.api.v1`'s).
#[allow(missing_debug_implementations, clippy::all)]
mod generated {
    pub mod drover {
        pub mod raft {
            pub mod v1 {
                tonic::include_proto!("drover.raft.v1");
            }
        }
        pub mod api {
            pub mod v1 {
                tonic::include_proto!("drover.api.v1");
            }
        }
        pub mod host {
            pub mod v1 {
                tonic::include_proto!("drover.host.v1");
            }
        }
    }
}

/// Replication: raft traffic, joins, forwarded writes, replica status.
pub use generated::drover::raft::v1 as raft;

/// The public cluster API.
pub use generated::drover::api::v1 as api;

/// What a host agent serves for the control replicas (its console).
pub use generated::drover::host::v1 as host;

/// The encoded descriptor set of every service here, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("drover_descriptor");
