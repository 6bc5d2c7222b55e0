//! `sim`: run seeds of Drover's deterministic simulator.
//!
//! `sim --seeds 1..1000` runs many seeds across the machine's cores and prints a summary,
//! and for each failing seed its invariant, trace hash and the command that replays it.
//! `sim --seed N --trace` prints one seed's readable trace.

#![allow(clippy::print_stdout)] // the summary and the trace on stdout are its output

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use raft::proposer::Bug;
use sim::config::HostBug;
use sim::{run, RunOutcome, SimConfig};

#[global_allocator]
static ALLOCATOR: sim::Allocator = sim::Allocator;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BugArg {
    None,
    /// Acknowledge writes before raft commits them.
    AckBeforeCommit,
    /// Hosts report snapshots taken whose files never reached storage.
    SnapshotWithoutFile,
    /// Hosts ignore their lease: no self-fencing by hostd or its VM processes.
    NoSelfFence,
    /// Hosts report volume files made that never reached the pool.
    VolumeWithoutFile,
    /// Hosts boot a domain reverted to a disk snapshot without writing its images back.
    DiskRevertSkipped,
    /// Hosts run a migration's incoming VM without waiting for its source's go.
    IncomingRunsEarly,
    /// Hosts copy with their own longest pause, ignoring the operator's for the migration.
    MigrationLimitIgnored,
    /// Replicas save their vote without flushing it.
    VoteUnsynced,
    /// Replicas acknowledge appended entries before flushing them.
    AppendUnsynced,
    /// Replicas record a purge without flushing it.
    PurgeUnsynced,
    /// Replicas store snapshots without flushing them.
    SnapshotUnsynced,
    /// Replicas decide every request with the cluster's rights, not its caller's.
    CallerAsCluster,
}

#[derive(Debug, Parser)]
#[command(about = "Drover's deterministic simulator: the real control plane under seeded faults")]
struct Args {
    /// Seeds to run, as `A..B` (B excluded).
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<String>,
    /// One seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the readable trace (with --seed).
    #[arg(long)]
    trace: bool,
    /// Fail unless the trace hash is this (with --seed).
    #[arg(long)]
    expect_hash: Option<String>,
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    #[arg(long, default_value_t = 4)]
    hosts: u64,
    /// Domain names the workload uses.
    #[arg(long, default_value_t = 12)]
    domains: u64,
    /// Hosts read the state through the API (linearizable reads) instead of holding a
    /// learner replica of the log each.
    #[arg(long)]
    hosts_read_api: bool,
    /// VMs defined and started before the chaos.
    #[arg(long, default_value_t = 8)]
    vms: u64,
    #[arg(long, default_value_t = 3)]
    clients: u64,
    /// Simulated seconds of workload and faults.
    #[arg(long, default_value_t = 20)]
    chaos_s: u64,
    /// Run without faults.
    #[arg(long)]
    no_faults: bool,
    /// A deliberately broken write path (to see the invariants catch it).
    #[arg(long, value_enum, default_value = "none")]
    bug: BugArg,
    /// Seeds run at once (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
}

fn parse_range(s: &str) -> anyhow::Result<Range<u64>> {
    let (a, b) = s.split_once("..").context("seeds are A..B")?;
    let (a, b): (u64, u64) = (a.trim().parse()?, b.trim().parse()?);
    if a >= b {
        bail!("empty seed range {s}");
    }
    Ok(a..b)
}

fn replay_command(args: &Args, seed: u64) -> String {
    let mut c = format!(
        "cargo run -p sim --release -- --seed {seed} --trace --replicas {} --hosts {} --domains {} --vms {} --clients {} --chaos-s {}",
        args.replicas, args.hosts, args.domains, args.vms, args.clients, args.chaos_s
    );
    if args.no_faults {
        c.push_str(" --no-faults");
    }
    if args.hosts_read_api {
        c.push_str(" --hosts-read-api");
    }
    match args.bug {
        BugArg::None => {}
        BugArg::AckBeforeCommit => c.push_str(" --bug ack-before-commit"),
        BugArg::SnapshotWithoutFile => c.push_str(" --bug snapshot-without-file"),
        BugArg::NoSelfFence => c.push_str(" --bug no-self-fence"),
        BugArg::VolumeWithoutFile => c.push_str(" --bug volume-without-file"),
        BugArg::DiskRevertSkipped => c.push_str(" --bug disk-revert-skipped"),
        BugArg::IncomingRunsEarly => c.push_str(" --bug incoming-runs-early"),
        BugArg::MigrationLimitIgnored => c.push_str(" --bug migration-limit-ignored"),
        BugArg::VoteUnsynced => c.push_str(" --bug vote-unsynced"),
        BugArg::AppendUnsynced => c.push_str(" --bug append-unsynced"),
        BugArg::PurgeUnsynced => c.push_str(" --bug purge-unsynced"),
        BugArg::SnapshotUnsynced => c.push_str(" --bug snapshot-unsynced"),
        BugArg::CallerAsCluster => c.push_str(" --bug caller-as-cluster"),
    }
    c
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !sim::DETERMINISTIC {
        bail!("this build cannot replay seeds: build with --cfg tokio_unstable (.cargo/config.toml sets it)");
    }
    let config = |seed: u64| SimConfig {
        seed,
        replicas: args.replicas,
        hosts: args.hosts,
        domains: args.domains,
        vms: args.vms,
        host_replicas: !args.hosts_read_api,
        clients: args.clients,
        chaos_ms: args.chaos_s * 1000,
        faults: !args.no_faults,
        bug: match args.bug {
            BugArg::AckBeforeCommit => Bug::AckBeforeCommit,
            BugArg::VoteUnsynced => Bug::VoteUnsynced,
            BugArg::AppendUnsynced => Bug::AppendUnsynced,
            BugArg::PurgeUnsynced => Bug::PurgeUnsynced,
            BugArg::SnapshotUnsynced => Bug::SnapshotUnsynced,
            BugArg::CallerAsCluster => Bug::CallerAsCluster,
            BugArg::None
            | BugArg::SnapshotWithoutFile
            | BugArg::NoSelfFence
            | BugArg::VolumeWithoutFile
            | BugArg::DiskRevertSkipped
            | BugArg::IncomingRunsEarly
            | BugArg::MigrationLimitIgnored => Bug::None,
        },
        host_bug: match args.bug {
            BugArg::SnapshotWithoutFile => HostBug::SnapshotWithoutFile,
            BugArg::NoSelfFence => HostBug::NoSelfFence,
            BugArg::VolumeWithoutFile => HostBug::VolumeWithoutFile,
            BugArg::DiskRevertSkipped => HostBug::DiskRevertSkipped,
            BugArg::IncomingRunsEarly => HostBug::IncomingRunsEarly,
            BugArg::MigrationLimitIgnored => HostBug::MigrationLimitIgnored,
            _ => HostBug::None,
        },
        keep_trace: args.trace,
        ..SimConfig::new(seed)
    };
    if let Some(seed) = args.seed {
        let out = run(&config(seed));
        if args.trace {
            for line in &out.trace {
                println!("{line}");
            }
        }
        print_outcome(&out);
        if let Some(want) = &args.expect_hash {
            if *want != out.trace_hash {
                bail!("trace hash {} is not the expected {want}", out.trace_hash);
            }
        }
        if !out.violations.is_empty() {
            std::process::exit(1);
        }
        return Ok(());
    }
    let range = parse_range(args.seeds.as_deref().unwrap_or("1..11"))?;
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let next = Arc::new(AtomicU64::new(range.start));
    let results: Arc<Mutex<Vec<RunOutcome>>> = Arc::default();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let (next, results, config) = (next.clone(), results.clone(), &config);
            s.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= range.end {
                    return;
                }
                let out = run(&config(seed));
                let verdict = if out.violations.is_empty() { "ok" } else { "FAILED" };
                eprintln!(
                    "seed {seed}: {verdict} ({} simulated s in {:.2} s)",
                    out.simulated_ms / 1000,
                    out.wall.as_secs_f64()
                );
                results.lock().expect("results lock").push(out);
            });
        }
    });
    let wall = started.elapsed();
    let mut results = std::mem::take(&mut *results.lock().expect("results lock"));
    results.sort_by_key(|r| r.seed);
    let failed: Vec<&RunOutcome> = results.iter().filter(|r| !r.violations.is_empty()).collect();
    let simulated_s: f64 = results.iter().map(|r| r.simulated_ms as f64 / 1000.0).sum();
    let busy_s: f64 = results.iter().map(|r| r.wall.as_secs_f64()).sum();
    println!(
        "{} seeds, {} passed, {} failed; {:.0} simulated s in {:.1} s wall ({:.0}x real time per core, {jobs} jobs)",
        results.len(),
        results.len() - failed.len(),
        failed.len(),
        simulated_s,
        wall.as_secs_f64(),
        simulated_s / busy_s.max(1e-9)
    );
    for r in &failed {
        let mut names: Vec<&str> = r.violations.iter().map(|v| v.invariant).collect();
        names.dedup();
        println!("FAILED seed {}: {} (trace {})", r.seed, names.join(", "), r.trace_hash);
        println!("  first: {}", r.violations[0].detail);
        println!("  replay: {}", replay_command(&args, r.seed));
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

fn print_outcome(out: &RunOutcome) {
    println!(
        "seed {}: {} simulated s in {:.2} s wall ({:.0}x), {} faults, writes {} acked / {} refused / {} unknown, trace {}",
        out.seed,
        out.simulated_ms / 1000,
        out.wall.as_secs_f64(),
        out.simulated_ms as f64 / 1000.0 / out.wall.as_secs_f64().max(1e-9),
        out.faults,
        out.writes_acked,
        out.writes_refused,
        out.writes_unknown,
        out.trace_hash
    );
    for v in &out.violations {
        println!("VIOLATION {} at {} ms: {}", v.invariant, v.at_ms, v.detail);
    }
}
