//! HA failover time with real processes and real guests: one control replica, three
//! `drover hostd` processes (kvm driver), one HA domain running the test guest. Each run
//! SIGKILLs the hostd of the host that runs the domain (its VM process stays, and must
//! fence itself), and measures until the guest's boot marker appears on another host's
//! console, broken down with the leader's event times:
//!
//! - detection: the kill to `HostStateChanged Suspect` (the lease running out);
//! - fence wait: suspect to `HostStateChanged Fenced` (the host's VMs have ended by then);
//! - commit: fenced to the domain's `DomainScheduled` elsewhere;
//! - boot: scheduled to the guest's marker on its new host's console.
//!
//! The killed hostd is started again (it registers again) before the next run. Also
//! counts double runs: a moment in which the domain's old VM process lives while its new
//! run has begun.
//!
//! Usage: `cargo run --release -p bench --bin failover -- --runs 20`.

#![allow(clippy::print_stdout)] // a report on stdout is its output

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use tests::alive;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 20)]
    runs: usize,
}

const DEADLINE: Duration = Duration::from_secs(60);
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn drover(endpoint: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(tests::drover_bin()).args(["--endpoint", endpoint]).args(args).output()?;
    if !out.status.success() {
        bail!("drover {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn domain(endpoint: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&drover(endpoint, &["--output", "json", "domain", "info", "db"])?)?)
}

fn start_hostd(endpoint: &str, dir: &Path, name: &str) -> anyhow::Result<Child> {
    let log = std::fs::File::options().create(true).append(true).open(dir.join(format!("{name}.log")))?;
    Ok(Command::new(tests::drover_bin())
        .args(["--endpoint", endpoint, "hostd", "--name", name, "--driver", "kvm", "--tick-ms", "20"])
        .args(["--vcpus", "16", "--memory-mib", "4096", "--run-dir"])
        .arg(dir.join(format!("{name}-vms")))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?)
}

fn wait<T>(what: &str, mut f: impl FnMut() -> anyhow::Result<Option<T>>) -> anyhow::Result<T> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn all_ready(endpoint: &str) -> anyhow::Result<bool> {
    let list: serde_json::Value =
        serde_json::from_str(&drover(endpoint, &["--output", "json", "host", "list"])?)?;
    let ready = list.as_array().into_iter().flatten().filter(|h| h["state"] == "ready").count();
    Ok(ready == HOSTS.len())
}

fn vmm_pid(dir: &Path, host: &str) -> Option<u64> {
    let record = std::fs::read_to_string(dir.join(format!("{host}-vms/db/config.json"))).ok()?;
    serde_json::from_str::<serde_json::Value>(&record).ok()?["pid"].as_u64()
}

/// The leader's time of the first event after `from_seq` that `matches`.
fn event_time(
    endpoint: &str,
    from_seq: u64,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<u64> {
    let out = drover(endpoint, &["--output", "json", "events", "--from", &from_seq.to_string()])?;
    for line in out.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if matches(&e) {
            return e["time_ms"].as_u64().context("an event time");
        }
    }
    bail!("no such event after seq {from_seq}")
}

fn last_seq(endpoint: &str) -> anyhow::Result<u64> {
    let out = drover(endpoint, &["--output", "json", "events", "--from", "1"])?;
    Ok(out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["seq"].as_u64())
        .max()
        .unwrap_or(0))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !vmm::kvm_usable() {
        bail!("/dev/kvm is not usable here");
    }
    let rt = tokio::runtime::Runtime::new()?;
    let mut cluster = tests::Processes::new();
    let ep = rt.block_on(cluster.bootstrap(&[]));
    let dir: PathBuf = cluster.dir.path().to_owned();
    let kernel = dir.join("guest.elf");
    testguest::write_to(&kernel)?;
    let mut hostds: BTreeMap<&str, Child> = BTreeMap::new();
    for h in HOSTS {
        hostds.insert(h, start_hostd(&ep, &dir, h)?);
    }
    wait("every host to be ready", || Ok(all_ready(&ep)?.then_some(())))?;
    let spec = dir.join("db.yaml");
    tests::write_guest_spec(&spec, &kernel, 32, 1000, Some(5))?;
    drover(&ep, &["domain", "define", "db", "--file", spec.to_str().expect("utf-8 path")])?;
    drover(&ep, &["domain", "start", "db"])?;
    wait("db to run", || Ok((domain(&ep)?["phase"] == "running").then_some(())))
        .with_context(|| format!("db: {:?}", domain(&ep).ok()))?;
    let (mut total, mut detect, mut fence, mut commit, mut boot) = (vec![], vec![], vec![], vec![], vec![]);
    let mut double_runs = 0;
    for run in 0..args.runs {
        let d = domain(&ep)?;
        let host = d["host"].as_str().context("db is placed")?.to_owned();
        let generation = d["generation"].as_u64().context("a generation")?;
        let old_pid = vmm_pid(&dir, &host).context("db's VMM")?;
        let from = last_seq(&ep)? + 1;
        let host_name: &str = HOSTS.iter().copied().find(|h| *h == host).context("a known host")?;
        let killed_ms = now_ms();
        let killed = Instant::now();
        let mut hostd = hostds.remove(host_name).context("the host's hostd")?;
        hostd.kill()?;
        hostd.wait()?;
        // Until the guest's marker shows on its new host, watch for a double run.
        let (new_host, marker_ms) = wait("db's guest to boot elsewhere", || {
            let d = domain(&ep)?;
            let moved = d["generation"].as_u64() > Some(generation) && d["host"] != host.as_str();
            if moved && alive(old_pid) {
                double_runs += 1;
            }
            let Some(new_host) = d["host"].as_str().filter(|_| moved).map(str::to_owned) else {
                return Ok(None);
            };
            let console = dir.join(format!("{new_host}-vms/db/console.log"));
            let booted = std::fs::read_to_string(console).is_ok_and(|t| t.contains(testguest::MARKER));
            Ok(booted.then(|| (new_host, now_ms())))
        })?;
        let elapsed = killed.elapsed().as_secs_f64() * 1000.0;
        let state_of = |e: &serde_json::Value, s: &str| {
            e["kind"] == "HostStateChanged"
                && e["event"]["HostStateChanged"]["name"] == host.as_str()
                && e["event"]["HostStateChanged"]["state"] == s
        };
        let suspect = event_time(&ep, from, |e| state_of(e, "Suspect"))?;
        let fenced = event_time(&ep, from, |e| state_of(e, "Fenced"))?;
        let scheduled = event_time(&ep, from, |e| {
            e["kind"] == "DomainScheduled" && e["event"]["DomainScheduled"]["name"] == "db"
        })?;
        total.push(elapsed);
        detect.push(suspect.saturating_sub(killed_ms) as f64);
        fence.push(fenced.saturating_sub(suspect) as f64);
        commit.push(scheduled.saturating_sub(fenced) as f64);
        boot.push(marker_ms.saturating_sub(scheduled) as f64);
        println!("run {run:>2}: {host} -> {new_host} in {elapsed:.0} ms");
        hostds.insert(host_name, start_hostd(&ep, &dir, host_name)?);
        wait("every host to be ready again", || Ok(all_ready(&ep)?.then_some(())))?;
    }
    println!("\n{} failovers (SIGKILL of the hostd; its VM process fences itself), double runs seen: {double_runs}", args.runs);
    for (name, mut ms) in
        [("detection", detect), ("fence wait", fence), ("commit", commit), ("boot", boot), ("total", total)]
    {
        ms.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        println!(
            "{name:<11} p50 {:>7.0} ms  p99 {:>7.0} ms  max {:>7.0} ms",
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms[ms.len() - 1]
        );
    }
    for (_, mut c) in hostds {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(())
}
