//! What a replica says about itself in Prometheus metrics. The `metrics` facade records
//! nothing until a process installs an exporter (`drover server --metrics-listen`, and
//! hostd's for its learner), so tests and the simulator pay nothing.
//!
//! Recorded where they happen: the log's `fdatasync` (`kv_wal`), the leader's batches and
//! proposals (`proposer`), the archive's events and checkpoints (`archive`). Sampled once
//! a second from openraft's metrics ([`sample`]): term, leadership and its changes, last
//! log, committed and applied index, snapshot and purge points, and, on the leader, how
//! many entries each follower lags behind.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};

use crate::type_config::{NodeId, Raft};

/// How often the raft gauges are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

pub const LOG_SYNC_SECONDS: &str = "drover_raft_log_sync_seconds";
pub const COMMIT_SECONDS: &str = "drover_raft_commit_seconds";
pub const BATCH_PROPOSALS: &str = "drover_raft_batch_proposals";
pub const PROPOSALS_TOTAL: &str = "drover_proposals_total";
pub const ARCHIVE_EVENTS_TOTAL: &str = "drover_archive_events_total";
pub const ARCHIVE_CHECKPOINTS_TOTAL: &str = "drover_archive_checkpoints_total";

/// Count a proposal's outcome on the leader (`applied`, `duplicate`, `conflict`, `unfit`,
/// `out_of_term`, `rejected`, `not_leader`, `failed`).
pub fn proposal(outcome: &'static str) {
    counter!(PROPOSALS_TOTAL, "outcome" => outcome).increment(1);
}

/// Sample `raft`'s own metrics into gauges every [`SAMPLE_INTERVAL`], until raft stops.
pub async fn sample(raft: Raft, me: NodeId) {
    let mut leader: Option<NodeId> = None;
    let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        interval.tick().await;
        let m = raft.metrics().borrow().clone();
        if m.running_state.is_err() {
            return; // raft has stopped: so has this replica
        }
        if m.current_leader != leader {
            if leader.is_some() || m.current_leader.is_some() {
                counter!("drover_raft_leader_changes_total").increment(1);
            }
            leader = m.current_leader;
        }
        gauge!("drover_raft_term").set(m.current_term as f64);
        gauge!("drover_raft_is_leader").set(if m.current_leader == Some(me) { 1.0 } else { 0.0 });
        let index = |l: Option<openraft::LogId<NodeId>>| l.map_or(0.0, |l| l.index as f64);
        gauge!("drover_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
        gauge!("drover_raft_applied_index").set(index(m.last_applied));
        gauge!("drover_raft_snapshot_index").set(index(m.snapshot));
        gauge!("drover_raft_purged_index").set(index(m.purged));
        if let Some(replication) = &m.replication {
            let last = m.last_log_index.unwrap_or(0);
            for (follower, matched) in replication.iter().filter(|(f, _)| **f != me) {
                let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                gauge!("drover_raft_replication_lag_entries", "follower" => follower.to_string())
                    .set(lag as f64);
            }
        }
    }
}

/// Histogram buckets (seconds) for every `_seconds` histogram: 100 µs to 30 s.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets for [`BATCH_PROPOSALS`] (proposals per log entry, up to the batch limit).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// The help text of every series recorded here.
fn describe() {
    describe_histogram!(LOG_SYNC_SECONDS, Unit::Seconds, "One fdatasync of the raft log's active segment");
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "From handing a batch to raft to its commit and apply"
    );
    describe_histogram!(BATCH_PROPOSALS, Unit::Count, "Proposals per raft log entry");
    describe_counter!(PROPOSALS_TOTAL, Unit::Count, "Writes decided on this replica as leader, by outcome");
    describe_counter!(ARCHIVE_EVENTS_TOTAL, Unit::Count, "Events written to this replica's archive");
    describe_counter!(ARCHIVE_CHECKPOINTS_TOTAL, Unit::Count, "State checkpoints written to the archive");
    describe_counter!(
        "drover_raft_leader_changes_total",
        Unit::Count,
        "Times this replica saw the leader change"
    );
    describe_gauge!("drover_raft_term", "The raft term this replica is in");
    describe_gauge!("drover_raft_is_leader", "1 while this replica leads");
    describe_gauge!("drover_raft_last_log_index", "The last entry in this replica's log");
    describe_gauge!("drover_raft_applied_index", "The last entry applied to the state");
    describe_gauge!("drover_raft_snapshot_index", "The last entry the latest snapshot covers");
    describe_gauge!("drover_raft_purged_index", "The last entry purged from the log");
    describe_gauge!("drover_raft_replication_lag_entries", "On the leader: entries a follower lacks");
}

/// Serve this process's metrics in Prometheus' text format at `http://<addr>/metrics`
/// (any path answers), from now on. Call once per process, inside a tokio runtime.
pub fn serve(addr: std::net::SocketAddr) -> Result<(), String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_PROPOSALS.into()), BATCH_BUCKETS))
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("serving metrics on {addr}: {e}"))?;
    describe();
    Ok(())
}
