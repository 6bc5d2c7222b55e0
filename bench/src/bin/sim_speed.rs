//! Simulator speed: simulated seconds per wall-clock second, one seed at a time on one
//! core, for the brief's world (5 replicas, 10 hosts, 100 VMs) with faults on. The
//! reference points are FoundationDB's simulator (~10x) and TigerBeetle's VOPR (~700x);
//! Drover's target is at least 500x.
//!
//! `cargo run --release -p bench --bin sim_speed -- --seeds 5`

// A load generator prints its results.
#![allow(clippy::print_stdout)]

use clap::Parser;
use sim::{run, SimConfig};

/// The allocator the simulator's own binary runs on.
#[global_allocator]
static ALLOCATOR: sim::Allocator = sim::Allocator;

#[derive(Parser, Debug)]
struct Args {
    /// Seeds to run (1..=N), one after another.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    #[arg(long, default_value_t = 5)]
    replicas: u64,
    #[arg(long, default_value_t = 10)]
    hosts: u64,
    #[arg(long, default_value_t = 100)]
    vms: u64,
    /// Simulated seconds of chaos per seed.
    #[arg(long, default_value_t = 60)]
    chaos_s: u64,
    /// The same world without faults (every message delivered, nothing crashes).
    #[arg(long)]
    no_faults: bool,
    /// Hosts read the state through the API instead of holding a learner replica each.
    #[arg(long)]
    hosts_read_api: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(sim::DETERMINISTIC, "build with --cfg tokio_unstable (.cargo/config.toml sets it)");
    let (mut simulated_s, mut wall_s) = (0.0, 0.0);
    for seed in 1..=args.seeds {
        let cfg = SimConfig {
            replicas: args.replicas,
            hosts: args.hosts,
            vms: args.vms,
            domains: 20,
            clients: 4,
            chaos_ms: args.chaos_s * 1000,
            faults: !args.no_faults,
            host_replicas: !args.hosts_read_api,
            ..SimConfig::new(seed)
        };
        let out = run(&cfg);
        let (s, w) = (out.simulated_ms as f64 / 1000.0, out.wall.as_secs_f64());
        println!(
            "seed {seed}: {s:.1} simulated s in {w:.2} s wall = {:.0}x; {} faults, {} writes acked, {} violations",
            s / w,
            out.faults,
            out.writes_acked,
            out.violations.len()
        );
        anyhow::ensure!(out.violations.is_empty(), "seed {seed} broke an invariant: {:?}", out.violations[0]);
        simulated_s += s;
        wall_s += w;
    }
    println!(
        "{} replicas, {} hosts, {} VMs{}: {simulated_s:.0} simulated s in {wall_s:.1} s wall = {:.0}x real time",
        args.replicas,
        args.hosts,
        args.vms,
        match (args.no_faults, args.hosts_read_api) {
            (false, false) => ", host replicas, faults on",
            (true, false) => ", host replicas, no faults",
            (false, true) => ", hosts read the API, faults on",
            (true, true) => ", hosts read the API, no faults",
        },
        simulated_s / wall_s
    );
    Ok(())
}
