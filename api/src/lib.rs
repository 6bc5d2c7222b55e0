//! Drover's cluster API.
//!
//! Contract: every control replica serves the whole gRPC API (`proto/drover/api/v1`). A
//! request becomes a `controlplane::Command`, is forwarded to the leader, decided there
//! with `controlplane::decide` and committed through `raft`; every
//! `controlplane::Rejection` maps to one gRPC status code. Reads choose linearizable (the
//! leader, after a read index) or local. The `drover` binary (`src/main.rs`) is the one
//! place that wires the pieces together.
//!
//! Today: Domains, Hosts, Networks, StoragePools, Volumes, Snapshots, Migrations, Events
//! (durable, resumable stream) and Audit (log, state at a past point, verify, export),
//! with gRPC health and reflection (v1 and v1alpha); the CLI verbs (`cli`) over a
//! multi-endpoint client (`client`); `drover up` (`up`), a local cluster of 3 replicas
//! and 3 host agents (each holding a learner replica) that run real guests under the kvm
//! driver where /dev/kvm works, the fake driver elsewhere. Every call is counted
//! (`metrics`) and, with traces on, traced (`traces`). Security: each server's door
//! (`raft::tls`) checks a caller's certificate; `certs` makes a cluster's CA and
//! certificates (`drover up`, `drover ca`, `drover cert`), `config` is the CLI's file that
//! names its endpoints and certificate.
#![forbid(unsafe_code)]

pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod metrics;
pub mod progress;
pub mod server;
pub mod service;
pub mod spec_file;
pub mod traces;
pub mod up;
