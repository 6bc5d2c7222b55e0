//! Replication of Drover's event log.
//!
//! Contract (filled in by the replication issue, #3): one `declare_raft_types!` whose app
//! data is a [`controlplane::Proposal`]-shaped entry and whose response is the apply
//! outcome; a log, vote and state-machine store on sled 0.34.7 with group commit (one fsync
//! per batch) and an in-memory twin with an explicit fsync model for the simulator, both
//! passing openraft's storage suite; the durable event archive (every applied event with
//! its sequence number, kept past log compaction, indexed by resource, with state
//! checkpoints); and the tonic transport for AppendEntries, Vote and streamed snapshots.
//!
//! Today this crate is empty: nothing here is wired yet.
#![forbid(unsafe_code)]
