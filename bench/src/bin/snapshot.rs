//! Snapshot save and restore of the test guest, Drover's own VMM beside QEMU's
//! `migrate` to a file (the qemu driver's snapshots), both through hostd's drivers, in
//! one run on this machine: for each guest size, the time the guest is held paused, the
//! whole `snapshot` call, the file's size, and restore-to-running (a new VM from the file
//! until the driver lists it running).
//!
//! Two workloads: `idle` (the guest touches about a megabyte) and `touched` (it rewrites a
//! quarter of its memory every tick, so the memory holds that much data).
//!
//! Usage: `cargo run --release -p bench --bin snapshot -- --runs 5 [--sizes 32,256,512,1024]
//! [--only kvm,qemu]`. The own VMM needs /dev/kvm; QEMU comes from `scripts/deps`.

#![allow(clippy::print_stdout)] // a report on stdout is its output

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use bench::{now_ms, percentile, wait_phase, wait_ticks};
use clap::Parser;
use controlplane::model::ObservedPhase;
use hostd::driver::{snapshot_path, Driver, VmSpec};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Guest memory sizes, MiB.
    #[arg(long, default_value = "32,256,512,1024", value_delimiter = ',')]
    sizes: Vec<u64>,
    /// Comma-separated subset of: kvm,qemu.
    #[arg(long, default_value = "kvm,qemu")]
    only: String,
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// One measured round: (paused ms, snapshot call ms, file bytes, restore-to-running ms).
type Round = (f64, f64, u64, f64);

fn round(
    driver: &mut dyn Driver,
    spec: &VmSpec,
    dir: &Path,
    console: &Path,
    n: u64,
) -> anyhow::Result<Round> {
    driver.start(spec, now_ms())?;
    wait_phase(driver, &spec.domain, ObservedPhase::Running)?;
    wait_ticks(console, 2)?;
    let file = snapshot_path(dir, &spec.domain, "s", n);
    let t = Instant::now();
    let taken = driver.snapshot(&spec.domain, &file, now_ms())?;
    let call_ms = t.elapsed().as_secs_f64() * 1e3;
    driver.destroy(&spec.domain, now_ms())?;
    wait_phase(driver, &spec.domain, ObservedPhase::Stopped)?;
    driver.remove(&spec.domain);
    let mut restore = spec.clone();
    restore.generation += 1;
    restore.restore_from = Some(file.display().to_string());
    let t = Instant::now();
    driver.start(&restore, now_ms())?;
    wait_phase(driver, &spec.domain, ObservedPhase::Running)?;
    let restore_ms = t.elapsed().as_secs_f64() * 1e3;
    driver.destroy(&spec.domain, now_ms())?;
    wait_phase(driver, &spec.domain, ObservedPhase::Stopped)?;
    driver.remove(&spec.domain);
    driver.remove_snapshot_file(&file)?;
    Ok((taken.duration_ms as f64, call_ms, taken.bytes, restore_ms))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let kernel = work.path().join("guest.elf");
    testguest::write_to(&kernel)?;
    let snapshots = work.path().join("snapshots");
    println!("driver  size_mib  workload  paused_ms_p50  snapshot_call_ms_p50  file_mib  restore_to_running_ms_p50");
    for name in args.only.split(',') {
        let run_dir = work.path().join(name);
        let mut driver = bench::process_driver(name, &run_dir)?;
        let mut n = 0;
        for &mib in &args.sizes {
            for (workload, dirty) in [("idle", 0), ("touched", mib / 4)] {
                let mut rounds = Vec::new();
                for run in 0..args.runs {
                    n += 1;
                    let domain = format!("b{mib}{workload}{run}");
                    let spec = VmSpec {
                        domain: domain.clone(),
                        generation: 1,
                        vcpus: 1,
                        memory_mib: mib,
                        kernel: Some(kernel.display().to_string()),
                        initrd: None,
                        cmdline: format!("drover.tick_ms=50 drover.dirty_mib={dirty}"),
                        disks: Vec::new(),
                        nics: Vec::new(),
                        restore_from: None,
                        disks_from: None,
                    };
                    let console = run_dir.join(&domain).join("console.log");
                    rounds.push(
                        round(driver.as_mut(), &spec, &snapshots, &console, n)
                            .with_context(|| format!("{name} {mib} MiB {workload}"))?,
                    );
                }
                println!(
                    "{name:<6}  {mib:>8}  {workload:<8}  {:>13.1}  {:>20.1}  {:>8.1}  {:>25.1}",
                    p50(rounds.iter().map(|r| r.0).collect()),
                    p50(rounds.iter().map(|r| r.1).collect()),
                    p50(rounds.iter().map(|r| r.2 as f64 / (1u64 << 20) as f64).collect()),
                    p50(rounds.iter().map(|r| r.3).collect()),
                );
            }
        }
    }
    Ok(())
}
