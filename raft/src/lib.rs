//! Replication of Drover's event log.
//!
//! Contract:
//! - **Types** (`type_config`): one `declare_raft_types!`; the log carries decided
//!   `controlplane::Proposal`s and answers with their `ProposalOutcome`.
//! - **Runtime** (`runtime`): openraft's tasks and time run on tokio; its randomness comes
//!   from a source the simulator can seed.
//! - **Storage** (`kv`, `log_store`, `state_machine`, `archive`): one implementation of
//!   openraft's storage traits over a small key-value trait, with three backends: a
//!   write-ahead log (`kv_wal`, production's raft log and vote, `fdatasync`ed), sled
//!   (`kv_sled`, production's snapshots and archive, `fsync`ed) and memory with an
//!   explicit fsync model (`kv_mem`, the simulator). All pass openraft's storage suite.
//!   Group commit: one sync per group of appended batches. The state is made durable by
//!   snapshots; a restart is snapshot + log. Every durability step makes a promise
//!   (`durability`) the simulator checks after crashes it places right after them.
//! - **Archive** (`archive`): every applied event with seq, raft index, time, principal
//!   and request id, indexed by resource, with state checkpoints; never compacted.
//! - **Write path** (`proposer`): decide on the leader, batch, commit; shared with the
//!   simulator, time passed in.
//! - **Transport and node** (`network`, `service`, `node`): tonic gRPC for AppendEntries,
//!   Vote and chunked InstallSnapshot; joins, forwarded writes and replica status, on a
//!   peer port apart from the public API (the membership records each member's two
//!   addresses, `type_config::Member`).
//! - **HA** (`leases`, `ha`): the leader's in-memory host leases, renewed by hostd
//!   heartbeats it answers only while a quorum acknowledged it within the lease, and the
//!   loop that runs the pure HA controller on them.
//! - **Security** (`tls`): mutual TLS on every connection; the identity and role a
//!   peer's certificate names, checked at each server's door against what its port
//!   serves and one rule per method, and recorded as the principal.
//! - **Telemetry** (`metrics`, `telemetry`): Prometheus metrics, and OpenTelemetry traces
//!   (opt-in) whose context crosses the log inside each proposal.
#![forbid(unsafe_code)]
// openraft's error types (StorageError, RaftError) are large by design and are what its
// traits return; boxing them here would only add conversions.
#![allow(clippy::result_large_err)]

pub mod archive;
pub mod archive_peers;
pub mod backfill;
pub mod client;
pub mod data_dir;
pub mod durability;
pub mod encoding;
pub mod ha;
pub mod kv;
pub mod kv_mem;
pub mod kv_sled;
pub mod kv_wal;
pub mod leases;
pub mod log_store;
pub mod metrics;
pub mod network;
pub mod node;
pub mod proposer;
pub mod runtime;
pub mod service;
pub mod state_machine;
pub mod telemetry;
pub mod tls;
pub mod type_config;
