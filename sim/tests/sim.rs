//! The simulator's own guarantees: a seed replays bit-identically (in this build and
//! against the hash recorded from the other build profile), a fixed set of seeds holds
//! every invariant, and a deliberately broken write path is caught.

use raft::proposer::Bug;
use sim::config::HostBug;
use sim::{run, SimConfig};

/// The seed whose trace hash is recorded in `tests/golden/`.
const GOLDEN_SEED: u64 = 7;

fn require_determinism() {
    let deterministic = sim::DETERMINISTIC;
    assert!(
        deterministic,
        "this build does not seed tokio (--cfg tokio_unstable, set in .cargo/config.toml, is missing)"
    );
}

#[test]
fn a_seed_replays_bit_identically() {
    require_determinism();
    let first = run(&SimConfig::new(11));
    let again = run(&SimConfig::new(11));
    assert!(first.faults > 0, "the run drew faults");
    assert!(first.writes_acked > 0, "the run committed writes");
    assert_eq!(first.trace_hash, again.trace_hash, "same seed, same trace");
    assert_eq!(first.violations, again.violations);
    let other = run(&SimConfig::new(12));
    assert_ne!(first.trace_hash, other.trace_hash, "another seed, another trace");
}

/// The hash of seed 7 is recorded in `tests/golden/seed7.hash`; CI runs this test in the
/// test build, and a release build (`cargo test --release -p sim --test sim`) must
/// produce it too. A change that alters what the
/// simulation does (message timing, the workload, the faults) changes the hash: check
/// that it was meant, then record the new one with
/// `cargo run -p sim -- --seed 7 | grep -o 'trace [0-9a-f]*'`.
#[test]
fn the_recorded_trace_hash_is_reproduced_by_this_build() {
    require_determinism();
    let out = run(&SimConfig::new(GOLDEN_SEED));
    let recorded = include_str!("golden/seed7.hash").trim();
    assert_eq!(
        out.trace_hash,
        recorded,
        "seed {GOLDEN_SEED} no longer gives the recorded trace hash (profile: {})",
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
}

#[test]
fn fixed_seeds_hold_every_invariant() {
    require_determinism();
    let mut failures = Vec::new();
    for seed in 1..=40 {
        let out = run(&SimConfig::new(seed));
        if let Some(v) = out.violations.first() {
            failures.push(format!("seed {seed}: {} — {}", v.invariant, v.detail));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The brief's world: 5 replicas, 10 hosts (each holding a learner replica), 100 VMs.
/// Here the simulator found stale reads after a leader restarted within its term (seed
/// 294 fails again if `Proposer::ensure_linearizable` stops waiting for the start-time
/// log) and holes that snapshot installs left in the archive (now backfilled).
#[test]
fn a_larger_world_holds_every_invariant() {
    require_determinism();
    for seed in [101, 102] {
        let cfg =
            SimConfig { replicas: 5, hosts: 10, vms: 100, domains: 20, clients: 4, ..SimConfig::new(seed) };
        let out = run(&cfg);
        assert!(out.violations.is_empty(), "seed {seed}: {:?}", out.violations.first());
        assert!(
            out.writes_acked >= 200,
            "the 100 VMs were defined and started: {} writes acked",
            out.writes_acked
        );
    }
}

#[test]
fn a_write_acknowledged_before_commit_is_caught_within_ten_seeds() {
    require_determinism();
    let caught = (1..=10).find(|seed| {
        let out = run(&SimConfig { bug: Bug::AckBeforeCommit, ..SimConfig::new(*seed) });
        out.violations.iter().any(|v| v.invariant == "acked_writes" || v.invariant == "linearizable")
    });
    assert!(
        caught.is_some(),
        "ten seeds ran a write path that acknowledges before commit and no invariant noticed"
    );
}

#[test]
fn a_decision_path_that_ignores_the_callers_rights_is_caught_within_ten_seeds() {
    require_determinism();
    let caught = (1..=10).find(|seed| {
        let out = run(&SimConfig { bug: Bug::CallerAsCluster, ..SimConfig::new(*seed) });
        out.violations.iter().any(|v| v.invariant == "rights")
    });
    assert!(
        caught.is_some(),
        "ten seeds decided with the cluster's rights for every caller and no invariant noticed"
    );
}

#[test]
fn a_host_that_reports_snapshots_it_did_not_keep_is_caught_within_twenty_seeds() {
    require_determinism();
    let caught = (1..=20).find(|seed| {
        let out = run(&SimConfig { host_bug: HostBug::SnapshotWithoutFile, ..SimConfig::new(*seed) });
        out.violations.iter().any(|v| v.invariant == "snapshots")
    });
    assert!(
        caught.is_some(),
        "twenty seeds ran hosts that lose the snapshots they report and no invariant noticed"
    );
}

#[test]
fn a_host_that_reports_volume_files_it_did_not_make_is_caught_within_fifty_seeds() {
    require_determinism();
    let caught = (1..=50).find(|seed| {
        let out = run(&SimConfig { host_bug: HostBug::VolumeWithoutFile, ..SimConfig::new(*seed) });
        out.violations.iter().any(|v| v.invariant == "volumes")
    });
    assert!(
        caught.is_some(),
        "fifty seeds ran hosts that lose the volume files they report and no invariant noticed"
    );
}

#[test]
fn a_host_that_boots_a_disk_revert_without_restoring_the_disks_is_caught_within_sixty_seeds() {
    require_determinism();
    let caught = (1..=60).find(|seed| {
        let out = run(&SimConfig { host_bug: HostBug::DiskRevertSkipped, ..SimConfig::new(*seed) });
        out.violations.iter().any(|v| v.invariant == "snapshots")
    });
    assert!(caught.is_some(), "sixty seeds ran hosts that skip disk restores and no invariant noticed");
}

#[test]
fn a_host_that_runs_an_incoming_vm_before_its_source_says_go_is_caught_within_twenty_seeds() {
    require_determinism();
    let caught = (1..=20).find(|seed| {
        let out = run(&SimConfig { host_bug: HostBug::IncomingRunsEarly, ..SimConfig::new(*seed) });
        out.violations.iter().any(|v| v.invariant == "migrations")
    });
    assert!(caught.is_some(), "twenty seeds ran incoming VMs before their go and no invariant noticed");
}

/// Hosts without a replica of their own read the cluster through the API's lists, as
/// production hostd does (`State::from_listing`). A listing that left the migrations out
/// (hostd did, until 2026-12-02: such hosts never acted on one) fails `liveness` in
/// seeds 6, 7 and 22 of these.
#[test]
fn hosts_reading_through_the_api_keep_every_invariant() {
    require_determinism();
    for seed in 1..=25 {
        let out = run(&SimConfig { host_replicas: false, ..SimConfig::new(seed) });
        assert!(out.violations.is_empty(), "seed {seed}: {:?}", out.violations);
    }
}

#[test]
fn a_host_that_ignores_the_operators_longest_pause_is_caught_within_twenty_seeds() {
    require_determinism();
    let caught = (1..=20).find(|seed| {
        let out = run(&SimConfig { host_bug: HostBug::MigrationLimitIgnored, ..SimConfig::new(*seed) });
        out.violations.iter().any(|v| v.invariant == "migrations")
    });
    assert!(
        caught.is_some(),
        "twenty seeds copied past the operator's longest pause and no invariant noticed"
    );
}

#[test]
fn a_host_that_does_not_fence_itself_is_caught_within_ten_seeds() {
    require_determinism();
    let caught = (1..=10).find(|seed| {
        let out = run(&SimConfig { host_bug: HostBug::NoSelfFence, ..SimConfig::new(*seed) });
        out.violations.iter().any(|v| v.invariant == "single_run")
    });
    assert!(
        caught.is_some(),
        "ten seeds ran hosts that keep their VMs past their lease and no double run was seen"
    );
}

/// A storage step that returns before its flush, caught within 200 seeds: the crash
/// points at durability boundaries land a crash right after it.
fn storage_bug_is_caught(bug: Bug) {
    require_determinism();
    let caught = (1..=200).find(|seed| {
        let out = run(&SimConfig { bug, ..SimConfig::new(*seed) });
        out.violations.iter().any(|v| v.invariant == "durability")
    });
    match caught {
        Some(seed) => eprintln!("{bug:?} caught at seed {seed}"),
        None => panic!("200 seeds ran replicas with {bug:?} and no restart found the promise broken"),
    }
}

#[test]
fn a_vote_saved_without_a_flush_is_caught_within_200_seeds() {
    storage_bug_is_caught(Bug::VoteUnsynced);
}

#[test]
fn entries_acknowledged_before_their_flush_are_caught_within_200_seeds() {
    storage_bug_is_caught(Bug::AppendUnsynced);
}

#[test]
fn a_purge_recorded_without_a_flush_is_caught_within_200_seeds() {
    storage_bug_is_caught(Bug::PurgeUnsynced);
}

#[test]
fn a_snapshot_stored_without_a_flush_is_caught_within_200_seeds() {
    storage_bug_is_caught(Bug::SnapshotUnsynced);
}
