//! Live migration of the test guest between two hosts' drivers on this machine (over
//! loopback), Drover's own VMM beside QEMU's own migration (the qemu driver), in one run
//! with the same guest, memory size, workload and limits: for each guest size and
//! workload, the downtime each reports, the whole migration (from `migrate_out` to the
//! guest running on the target), the bytes sent and the rounds, and how many runs did not
//! converge within the timeout (cancelled: the guest runs on at the source) and how many
//! failed (said on stderr).
//!
//! Workloads: `idle` (the guest ticks every 20 ms and touches about a megabyte) and
//! `dirtyN` (it rewrites N MiB of its memory, a byte per page, as fast as it can: a tick
//! every millisecond that is always late).
//!
//! Downtime, as each reports it: the own VMM's runs from the pause at the source to the
//! target's word that the guest runs there; QEMU's (`query-migrate`'s `downtime`) from
//! the stop at the source to the last byte sent, without the target's resume, which
//! under the qemu driver its host does after the commit. `stop_copy` is QEMU's measure
//! for both: from the pause to the last byte handed to the stream (for QEMU its
//! downtime; for the own VMM the part of its downtime before the target builds and
//! runs the guest). The `switch` column is the
//! bench's own measure for both: from the copy being complete to the target listed
//! running (for the own VMM it is part of its downtime; for QEMU it comes on top).
//!
//! Streams: `plain` (TCP in the clear) and `tls` (mutual TLS between the two hosts'
//! certificates of a CA made for the run, as hosts with `--tls-dir` send them: rustls
//! for the own VMM, GnuTLS for QEMU), each row once per stream asked for.
//!
//! Usage: `cargo build --release -p vmm --bin drover-vmm && cargo run -p bench --bin
//! migration -- --runs 5 [--sizes 256,1024] [--dirty 0,16,64,128] [--only kvm,qemu]
//! [--streams plain,tls] [--max-downtime-ms 50] [--timeout-s 60]
//! [--vmm target/release/drover-vmm]`. The own VMM needs /dev/kvm; QEMU comes from
//! `scripts/deps`.

#![allow(clippy::print_stdout)] // a report on stdout is its output

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bench::{now_ms, percentile, wait_phase, wait_ticks, DRIVER_DEADLINE};
use clap::Parser;
use controlplane::model::ObservedPhase;
use hostd::driver::{ConvergeLimits, Driver, OutgoingPhase, VmSpec};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Guest memory sizes, MiB.
    #[arg(long, default_value = "256,1024", value_delimiter = ',')]
    sizes: Vec<u64>,
    /// MiB the guest rewrites as fast as it can; 0 is the idle guest.
    #[arg(long, default_value = "0,16,64,128", value_delimiter = ',')]
    dirty: Vec<u64>,
    /// Comma-separated subset of: kvm,qemu.
    #[arg(long, default_value = "kvm,qemu")]
    only: String,
    /// Comma-separated subset of: plain,tls.
    #[arg(long, default_value = "plain,tls", value_delimiter = ',')]
    streams: Vec<String>,
    /// The pause budget given to both (hostd's default).
    #[arg(long, default_value_t = hostd::migrations::MAX_DOWNTIME_MS_DEFAULT)]
    max_downtime_ms: u64,
    /// How far both may throttle the guest (hostd's default).
    #[arg(long, default_value_t = hostd::migrations::THROTTLE_MAX_PERCENT_DEFAULT)]
    throttle_max_percent: u8,
    /// A migration not done copying after this long is cancelled and counted as not
    /// converging.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// The own VMM's binary (a release build; default: beside this program).
    #[arg(long)]
    vmm: Option<PathBuf>,
}

/// (p50, p99) of `v`, or `None` when it is empty.
fn p50_p99(mut v: Vec<f64>) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((percentile(&v, 0.5), percentile(&v, 0.99)))
}

fn wait_ended(driver: &mut dyn Driver, domain: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRIVER_DEADLINE;
    while driver.list(now_ms()).get(domain).is_some_and(|s| s.phase.is_live()) {
        if Instant::now() > deadline {
            bail!("{domain} never ended: {:?}", driver.list(now_ms()).get(domain));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    driver.remove(domain);
    Ok(())
}

/// One migration: its numbers, or `None` where it did not converge in time.
struct Run {
    done: Option<Done>,
    bytes_sent: u64,
}

struct Done {
    downtime_ms: f64,
    /// From the pause to the last byte sent: QEMU's downtime, the own VMM's part of its own.
    stop_copy_ms: f64,
    switch_ms: f64,
    total_ms: f64,
    rounds: u32,
    throttle_percent: u8,
}

fn migrate_once(
    source: &mut dyn Driver,
    target: &mut dyn Driver,
    spec: &VmSpec,
    console: &Path,
    limits: ConvergeLimits,
    timeout: Duration,
) -> anyhow::Result<Run> {
    let domain = spec.domain.as_str();
    source.start(spec, now_ms())?;
    wait_phase(source, domain, ObservedPhase::Running)?;
    wait_ticks(console, 3)?;
    let mut incoming = spec.clone();
    incoming.generation += 1;
    let address = target.prepare_incoming(&incoming, IpAddr::from([127, 0, 0, 1]), "h1")?;
    let started = Instant::now();
    source.migrate_out(domain, &address, "h2", limits, now_ms())?;
    let stop_copy_us = loop {
        let out = source.outgoing(domain, now_ms())?;
        match out.phase {
            OutgoingPhase::AwaitingSwitch => {
                break out.stop_copy_us.context("a complete copy without its stop-and-copy time")?
            }
            OutgoingPhase::Failed | OutgoingPhase::Cancelled => bail!("the migration ended: {out:?}"),
            OutgoingPhase::Copying | OutgoingPhase::Completing => {}
        }
        if started.elapsed() > timeout {
            source.migrate_cancel(domain)?;
            target.destroy(domain, now_ms())?;
            wait_ended(target, domain)?;
            wait_phase(source, domain, ObservedPhase::Running)?;
            source.destroy(domain, now_ms())?;
            wait_ended(source, domain)?;
            return Ok(Run { done: None, bytes_sent: out.progress.bytes_sent });
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let complete = Instant::now();
    let progress = source.migrate_switch(domain)?;
    // The own VMM's target runs on its source's word; QEMU's waits for its host's resume.
    if target.list(now_ms()).get(domain).is_some_and(|s| s.phase == ObservedPhase::Paused) {
        target.resume(domain, now_ms())?;
    }
    wait_phase(target, domain, ObservedPhase::Running)?;
    let switch_ms = complete.elapsed().as_secs_f64() * 1e3;
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    wait_ended(source, domain)?;
    target.destroy(domain, now_ms())?;
    wait_ended(target, domain)?;
    let downtime_ms = progress.downtime_ms.context("a switched-over migration without its downtime")?;
    Ok(Run {
        bytes_sent: progress.bytes_sent,
        done: Some(Done {
            downtime_ms: downtime_ms as f64,
            stop_copy_ms: stop_copy_us as f64 / 1e3,
            switch_ms,
            total_ms,
            rounds: progress.rounds,
            throttle_percent: progress.throttle_percent,
        }),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limits = ConvergeLimits {
        max_downtime_ms: args.max_downtime_ms,
        throttle_max_percent: args.throttle_max_percent,
    };
    let timeout = Duration::from_secs(args.timeout_s);
    let vmm = args.vmm.clone().unwrap_or_else(bench::vmm_bin);
    let work = tempfile::tempdir()?;
    let kernel = work.path().join("guest.elf");
    testguest::write_to(&kernel)?;
    println!(
        "limits: max downtime {} ms, throttle up to {}%, timeout {} s, {} runs per row",
        args.max_downtime_ms, args.throttle_max_percent, args.timeout_s, args.runs
    );
    let pki = testguest::certs::Pki::new();
    println!(
        "driver  stream  size_mib  workload  downtime_ms_p50  downtime_ms_p99  stop_copy_ms_p50  switch_ms_p50  total_ms_p50  total_ms_p99  \
         mib_sent_p50  rounds_p50  throttle_p50  not_converged  failed"
    );
    for (name, stream) in args.only.split(',').flat_map(|n| args.streams.iter().map(move |s| (n, s.as_str())))
    {
        let tls = match stream {
            "plain" => false,
            "tls" => true,
            other => bail!("unknown stream {other}: plain or tls"),
        };
        let host_tls = |host: &str| tls.then(|| pki.dir("host", host));
        let from = work.path().join(name).join(stream).join("from");
        let to = work.path().join(name).join(stream).join("to");
        let mut source = bench::process_driver_with(name, &from, &vmm, host_tls("h1").as_deref())?;
        let mut target = bench::process_driver_with(name, &to, &vmm, host_tls("h2").as_deref())?;
        for &mib in &args.sizes {
            for &dirty in &args.dirty {
                let workload = if dirty == 0 { "idle".to_owned() } else { format!("dirty{dirty}") };
                let cmdline = if dirty == 0 {
                    "drover.tick_ms=20".to_owned()
                } else {
                    format!("drover.tick_ms=1 drover.dirty_mib={dirty}")
                };
                let mut runs = Vec::new();
                let mut failed = 0;
                for run in 0..args.runs {
                    let domain = format!("m{mib}{workload}{run}");
                    let spec = VmSpec {
                        domain: domain.clone(),
                        generation: 1,
                        vcpus: 1,
                        memory_mib: mib,
                        kernel: Some(kernel.display().to_string()),
                        initrd: None,
                        cmdline: cmdline.clone(),
                        disks: Vec::new(),
                        nics: Vec::new(),
                        restore_from: None,
                        disks_from: None,
                    };
                    let console = from.join(&domain).join("console.log");
                    match migrate_once(source.as_mut(), target.as_mut(), &spec, &console, limits, timeout) {
                        Ok(r) => runs.push(r),
                        Err(e) => {
                            // Counted, said, and cleaned up; the other runs go on.
                            eprintln!("{name} {stream} {mib} MiB {workload} run {run} failed: {e:#}");
                            failed += 1;
                            for driver in [source.as_mut(), target.as_mut()] {
                                let _ = driver.destroy(&domain, now_ms());
                                let _ = wait_ended(driver, &domain);
                            }
                        }
                    }
                }
                let done: Vec<&Done> = runs.iter().filter_map(|r| r.done.as_ref()).collect();
                let cell = |v: Vec<f64>, pick: fn((f64, f64)) -> f64| {
                    p50_p99(v).map_or_else(|| "-".to_owned(), |p| format!("{:.1}", pick(p)))
                };
                let downtime = || done.iter().map(|d| d.downtime_ms).collect::<Vec<_>>();
                let total = || done.iter().map(|d| d.total_ms).collect::<Vec<_>>();
                println!(
                    "{name:<6}  {stream:<6}  {mib:>8}  {workload:<8}  {:>15}  {:>15}  {:>16}  {:>13}  {:>12}  {:>12}  {:>12}  {:>10}  {:>12}  {:>5}/{}  {failed:>6}",
                    cell(downtime(), |p| p.0),
                    cell(downtime(), |p| p.1),
                    cell(done.iter().map(|d| d.stop_copy_ms).collect(), |p| p.0),
                    cell(done.iter().map(|d| d.switch_ms).collect(), |p| p.0),
                    cell(total(), |p| p.0),
                    cell(total(), |p| p.1),
                    cell(runs.iter().map(|r| r.bytes_sent as f64 / f64::from(1 << 20)).collect(), |p| p.0),
                    cell(done.iter().map(|d| f64::from(d.rounds)).collect(), |p| p.0),
                    cell(done.iter().map(|d| f64::from(d.throttle_percent)).collect(), |p| p.0),
                    runs.len() - done.len(),
                    args.runs,
                );
            }
        }
    }
    Ok(())
}
