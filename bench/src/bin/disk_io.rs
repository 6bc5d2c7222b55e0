//! Guest disk throughput: the test guest (`hostd/guest`, `drover.blk=bench:M`) on one
//! preallocated raw disk under Drover's own VMM (kvm driver): sequential writes and reads
//! of 64 KiB requests, then random writes and reads of 4 KiB, M MiB each, one request at
//! a time (queue depth 1, as a simple `dd` or a synchronous fio job). The guest prints a
//! line at the start and the end of each phase; the host times the lines as they reach
//! the console file (polled every 200 µs).
//!
//! The same guest under QEMU's virtio-blk (qemu driver, microvm, the same kind of file)
//! runs beside it: QEMU's microvm lists its virtio-mmio transports in ACPI, not on the
//! command line, so the guest is told the window to probe (`drover.mmio_window`).
//!
//! Usage: `cargo build --release -p vmm -p bench --bins && target/release/disk_io --runs 3
//! --mib 64`. The own VMM needs /dev/kvm.

#![allow(clippy::print_stdout)] // a report on stdout is its output

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use controlplane::model::{ObservedPhase, VolumeFormat};
use hostd::driver::{DiskSpec, Driver, VmSpec};

/// Where QEMU 7.2's microvm puts its virtio-mmio transports: 24 of them, 512 bytes apart.
const QEMU_MICROVM_MMIO: &str = "drover.mmio_window=0xfeb00000:24:512";

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// MiB each phase moves.
    #[arg(long, default_value_t = 64)]
    mib: u64,
    /// Comma-separated subset of: kvm,qemu.
    #[arg(long, default_value = "kvm,qemu")]
    only: String,
}

const PHASES: [&str; 4] = ["seq-write", "seq-read", "rand-write", "rand-read"];
const DEADLINE: Duration = Duration::from_secs(120);

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// One run: each phase's duration in seconds.
fn run_once(driver: &mut dyn Driver, spec: &VmSpec, console: &Path) -> anyhow::Result<BTreeMap<String, f64>> {
    driver.start(spec, now_ms())?;
    let mut seen: BTreeMap<String, Instant> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    while !seen.contains_key("rand-read done") {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if text.contains("blk bench") && text.contains(" error ") {
            bail!("the guest's disk failed: {text}");
        }
        if text.contains("drover-guest: blk disks 0") {
            bail!("the guest found no disk");
        }
        for line in text.lines() {
            if let Some(event) = line.strip_prefix("drover-guest: blk bench ") {
                seen.entry(event.to_owned()).or_insert_with(Instant::now);
            }
        }
        if Instant::now() > deadline {
            bail!("the bench did not finish: {text}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    driver.destroy(&spec.domain, now_ms())?;
    let stop = Instant::now() + Duration::from_secs(30);
    while driver.list(now_ms()).get(&spec.domain).map(|s| s.phase) != Some(ObservedPhase::Stopped)
        && Instant::now() < stop
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    driver.remove(&spec.domain);
    PHASES
        .iter()
        .map(|p| {
            let start = seen.get(&format!("{p} start")).context("a phase never started")?;
            let done = seen.get(&format!("{p} done")).context("a phase never ended")?;
            Ok((p.to_string(), done.duration_since(*start).as_secs_f64()))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let kernel = work.path().join("guest.elf");
    testguest::write_to(&kernel)?;
    let mut results: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for name in args.only.split(',') {
        let run_dir = work.path().join(name);
        let mut driver = bench::process_driver(name, &run_dir)?;
        for run in 0..args.runs {
            let disk = work.path().join(format!("{name}-{run}.img"));
            let file = std::fs::File::create(&disk)?;
            file.set_len(args.mib << 20)?;
            // Preallocated, as a fio target would be: the writes measure the device path.
            let status = std::process::Command::new("fallocate")
                .args(["-l", &(args.mib << 20).to_string()])
                .arg(&disk)
                .status()?;
            if !status.success() {
                bail!("fallocate failed");
            }
            let domain = format!("io{run}");
            let spec = VmSpec {
                domain: domain.clone(),
                generation: 1,
                vcpus: 1,
                memory_mib: 64,
                kernel: Some(kernel.display().to_string()),
                initrd: None,
                cmdline: match name {
                    "qemu" => {
                        format!("drover.tick_ms=1000 drover.blk=bench:{} {QEMU_MICROVM_MMIO}", args.mib)
                    }
                    _ => format!("drover.tick_ms=1000 drover.blk=bench:{}", args.mib),
                },
                disks: vec![DiskSpec {
                    path: disk.display().to_string(),
                    format: VolumeFormat::Raw,
                    read_only: false,
                }],
                nics: Vec::new(),
                restore_from: None,
                disks_from: None,
            };
            let console = run_dir.join(&domain).join("console.log");
            let phases =
                run_once(driver.as_mut(), &spec, &console).with_context(|| format!("{name} run {run}"))?;
            for (phase, secs) in phases {
                results.entry((name.to_owned(), phase)).or_default().push(secs);
            }
            std::fs::remove_file(&disk)?;
        }
    }
    println!("guest disk throughput, {} MiB per phase, queue depth 1, p50 of {} runs:", args.mib, args.runs);
    println!("| phase | request | {} |", args.only.split(',').collect::<Vec<_>>().join(" | "));
    println!("|---|---|{}", "---|".repeat(args.only.split(',').count()));
    for phase in PHASES {
        let request = if phase.starts_with("seq") { "64 KiB" } else { "4 KiB" };
        let cells: Vec<String> = args
            .only
            .split(',')
            .map(|name| {
                let mut v = results.get(&(name.to_owned(), phase.to_owned())).cloned().unwrap_or_default();
                v.sort_by(f64::total_cmp);
                let secs = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
                let mib_s = args.mib as f64 / secs;
                let iops = mib_s * 1024.0 / if phase.starts_with("seq") { 64.0 } else { 4.0 };
                format!("{mib_s:.1} MiB/s ({iops:.0} IOPS)")
            })
            .collect();
        println!("| {phase} | {request} | {} |", cells.join(" | "));
    }
    Ok(())
}
