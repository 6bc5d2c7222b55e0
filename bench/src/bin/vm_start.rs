//! Start latency, memory overhead and creation rate of VMs, side by side on this machine:
//!
//! - `api`: the cluster API's `start` to the test guest's marker on its console, with one
//!   control replica and one hostd running the kvm driver (Drover's own VMM);
//! - `vmm`: the VMM process alone (`drover-vmm`, which hostd prefers, and `drover vmm`),
//!   spawn to marker, its memory beyond guest RAM, and sequential VM creations per second;
//! - `qemu-tcg`, `qemu-kvm`: the same image under bare QEMU microvm started by hand;
//! - `libvirt`: the same image under libvirt + QEMU (`virsh create`, microvm);
//! - `linux`: Debian's cloud kernel + busybox initramfs to init under the qemu driver's
//!   command line (QEMU microvm, TCG).
//!
//! Usage: `cargo run --release -p bench --bin vm_start -- --runs 20 [--only api,vmm,...]`.
//! libvirt needs `libvirt-daemon-system` (this program starts virtlogd and libvirtd when
//! they are not running, and stops what it started); linux needs `scripts/guest-linux`.

#![allow(clippy::print_stdout)] // a report on stdout is its output

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use proto::api as pb;
use proto::api::domains_client::DomainsClient;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Comma-separated subset of: api,vmm,qemu-tcg,qemu-kvm,libvirt,linux.
    #[arg(long, default_value = "api,vmm,qemu-tcg,qemu-kvm,libvirt,linux")]
    only: String,
}

const GUEST_CMDLINE: &str = "drover.tick_ms=1000";
const DEADLINE: Duration = Duration::from_secs(60);

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent().expect("target/<profile>").to_owned()
}

/// Wait until `path` contains `marker`; returns when it was first seen.
fn wait_marker(path: &Path, marker: &str) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(marker)) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{marker} never appeared in {}", path.display());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut ms: Vec<f64>) -> f64 {
    ms.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let p50 = percentile(&ms, 0.5);
    println!(
        "{name:<10} runs {:>3}  p50 {:>8.1} ms  p90 {:>8.1} ms  min {:>8.1} ms  max {:>8.1} ms",
        ms.len(),
        p50,
        percentile(&ms, 0.9),
        ms[0],
        ms[ms.len() - 1]
    );
    p50
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// (RSS of the whole process, RSS of its guest-RAM mapping) in KiB.
fn vmm_rss_kib(pid: u32, guest_bytes: u64) -> anyhow::Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut total, mut guest) = (0, 0);
    let mut in_guest = false;
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first().is_some_and(|a| a.contains('-') && a.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        {
            let (lo, hi) = f[0].split_once('-').expect("a range");
            let size = u64::from_str_radix(hi, 16)? - u64::from_str_radix(lo, 16)?;
            in_guest = size == guest_bytes && f.len() == 5; // anonymous, exactly guest RAM
        } else if f.first() == Some(&"Rss:") {
            let kib: u64 = f[1].parse()?;
            total += kib;
            if in_guest {
                guest += kib;
            }
        }
    }
    Ok((total, guest))
}

fn bench_vmm(name: &str, program: &[&Path], guest: &Path, runs: usize) -> anyhow::Result<f64> {
    let mut ms = Vec::new();
    let mut overhead_kib = Vec::new();
    let started_all = Instant::now();
    for i in 0..runs {
        let dir = tempfile::tempdir()?;
        let t0 = Instant::now();
        let child = Command::new(program[0])
            .args(&program[1..])
            .arg("--run-dir")
            .arg(dir.path())
            .args([
                "--domain",
                &format!("b{i}"),
                "--memory-mib",
                "32",
                "--cmdline",
                GUEST_CMDLINE,
                "--kernel",
            ])
            .arg(guest)
            .stderr(Stdio::null())
            .spawn()?;
        let seen = wait_marker(&dir.path().join("console.log"), testguest::MARKER)?;
        ms.push((seen - t0).as_secs_f64() * 1e3);
        let (total, guest_kib) = vmm_rss_kib(child.id(), 32 << 20)?;
        overhead_kib.push(total - guest_kib);
        let _ =
            vmm::control::call(&dir.path().join(vmm::control::SOCKET_FILE), vmm::control::Request::Destroy);
        let mut child = child;
        child.wait()?;
    }
    let per_s = runs as f64 / started_all.elapsed().as_secs_f64();
    let p50 = report(name, ms);
    overhead_kib.sort_unstable();
    println!(
        "{name:<10} memory beyond guest RAM (RSS): p50 {:.2} MiB, max {:.2} MiB; sequential create+boot+destroy {per_s:.1} VMs/s",
        overhead_kib[overhead_kib.len() / 2] as f64 / 1024.0,
        overhead_kib[overhead_kib.len() - 1] as f64 / 1024.0,
    );
    Ok(p50)
}

fn qemu_args(guest: &Path, console: &Path, accel: &str) -> Vec<String> {
    vec![
        "-machine".into(),
        "microvm".into(),
        "-accel".into(),
        accel.into(),
        "-m".into(),
        "32".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-chardev".into(),
        format!("file,id=con,path={}", console.display()),
        "-serial".into(),
        "chardev:con".into(),
        "-kernel".into(),
        guest.display().to_string(),
        "-append".into(),
        GUEST_CMDLINE.into(),
    ]
}

fn bench_qemu(guest: &Path, accel: &str, runs: usize) -> anyhow::Result<f64> {
    let mut ms = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let console = dir.path().join("console.log");
        let t0 = Instant::now();
        let child = Command::new("qemu-system-x86_64")
            .args(qemu_args(guest, &console, accel))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("qemu-system-x86_64")?;
        let seen = wait_marker(&console, testguest::MARKER);
        kill(child);
        ms.push((seen? - t0).as_secs_f64() * 1e3);
    }
    Ok(report(&format!("qemu-{accel}"), ms))
}

const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";

/// Start virtlogd and libvirtd unless they run; returns the pids started here and the
/// original qemu.conf when it was changed. libvirtd is started with QEMU running as root:
/// as the `libvirt-qemu` user QEMU cannot open this machine's root-only /dev/kvm, and
/// libvirt then re-probes QEMU's capabilities on every `virsh create` (about 40 s each).
fn libvirt_up() -> anyhow::Result<(Vec<u32>, Option<String>)> {
    let mut started = Vec::new();
    let mut original = None;
    for daemon in ["virtlogd", "libvirtd"] {
        let running = Command::new("pgrep").args(["-x", daemon]).output()?.status.success();
        if !running {
            if daemon == "libvirtd" {
                let conf = std::fs::read_to_string(QEMU_CONF).unwrap_or_default();
                if !conf.lines().any(|l| l.trim() == "user = \"root\"") {
                    std::fs::write(QEMU_CONF, format!("{conf}\nuser = \"root\"\ngroup = \"root\"\n"))?;
                    original = Some(conf);
                }
            }
            let s = Command::new(daemon).arg("-d").status().with_context(|| daemon.to_owned())?;
            anyhow::ensure!(s.success(), "{daemon} -d failed");
            std::thread::sleep(Duration::from_millis(500));
            let pid = Command::new("pgrep").args(["-x", daemon]).output()?;
            if let Ok(p) = String::from_utf8_lossy(&pid.stdout).trim().parse() {
                started.push(p);
            }
        }
    }
    Ok((started, original))
}

fn bench_libvirt(guest: &Path, runs: usize) -> anyhow::Result<f64> {
    let (started, original_conf) = libvirt_up()?;
    let result = (|| {
        let mut ms = Vec::new();
        for i in 0..runs {
            let dir = tempfile::tempdir()?;
            let console = dir.path().join("console.log");
            let xml = dir.path().join("domain.xml");
            std::fs::write(
                &xml,
                format!(
                    "<domain type='qemu'><name>drover-bench-{}-{i}</name><memory unit='MiB'>32</memory>\
                     <os><type arch='x86_64' machine='microvm'>hvm</type><kernel>{}</kernel>\
                     <cmdline>{GUEST_CMDLINE}</cmdline></os>\
                     <devices><serial type='file'><source path='{}'/></serial>\
                     <controller type='usb' model='none'/><memballoon model='none'/></devices></domain>",
                    std::process::id(),
                    guest.display(),
                    console.display()
                ),
            )?;
            let t0 = Instant::now();
            let out = Command::new("virsh").args(["-c", "qemu:///system", "create"]).arg(&xml).output()?;
            anyhow::ensure!(out.status.success(), "virsh create: {}", String::from_utf8_lossy(&out.stderr));
            let seen = wait_marker(&console, testguest::MARKER);
            let _ = Command::new("virsh")
                .args([
                    "-c",
                    "qemu:///system",
                    "destroy",
                    &format!("drover-bench-{}-{i}", std::process::id()),
                ])
                .output();
            ms.push((seen? - t0).as_secs_f64() * 1e3);
        }
        Ok(report("libvirt", ms))
    })();
    for pid in started {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    if let Some(conf) = original_conf {
        std::fs::write(QEMU_CONF, conf)?;
    }
    result
}

fn bench_linux(runs: usize) -> anyhow::Result<f64> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/guests/linux");
    let s = Command::new(root.join("scripts/guest-linux")).arg(&dir).status()?;
    anyhow::ensure!(s.success(), "scripts/guest-linux failed");
    let mut ms = Vec::new();
    for _ in 0..runs.min(5) {
        let tmp = tempfile::tempdir()?;
        let console = tmp.path().join("console.log");
        let t0 = Instant::now();
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "microvm", "-accel", "tcg", "-m", "256", "-nodefaults", "-no-user-config"])
            .arg("-nographic")
            .args(["-chardev", &format!("file,id=con,path={}", console.display()), "-serial", "chardev:con"])
            .arg("-kernel")
            .arg(dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(dir.join("initramfs.cpio.gz"))
            .args(["-append", "console=ttyS0 panic=-1 tsc_early_khz=2300000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let seen = wait_marker(&console, "DROVER-LINUX-READY");
        kill(child);
        ms.push((seen? - t0).as_secs_f64() * 1e3);
    }
    Ok(report("linux", ms))
}

async fn bench_api(drover: &Path, guest: &Path, runs: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let port = tests::free_port();
    let ep = format!("127.0.0.1:{port}");
    let server = Command::new(drover)
        .args(["server", "--id", "1", "--bootstrap", "--listen", &ep, "--data-dir"])
        .arg(dir.path().join("replica"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let run_dir = dir.path().join("vms");
    let hostd = Command::new(drover)
        .args(["--endpoint", &ep, "hostd", "--name", "h1", "--driver", "kvm", "--run-dir"])
        .arg(&run_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{ep}"))?.connect_lazy();
        let mut domains = DomainsClient::new(channel);
        let spec = pb::DomainSpec {
            vcpus: 1,
            memory_mib: 32,
            boot: Some(pb::domain_spec::Boot::Kernel(pb::KernelBoot {
                kernel: guest.display().to_string(),
                initrd: String::new(),
                cmdline: GUEST_CMDLINE.into(),
            })),
            ..Default::default()
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            let define = pb::DefineDomainRequest {
                request_id: "define-b".into(),
                name: "b".into(),
                spec: Some(spec.clone()),
            };
            match domains.define(define).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut ms = Vec::new();
        let console = run_dir.join("b/console.log");
        // Run 0 is a warm-up (it also waits for the host to register); it is not counted.
        for i in 0..=runs {
            let _ = std::fs::remove_file(&console);
            let t0 = Instant::now();
            let act = |id: String| pb::DomainActionRequest { request_id: id, name: "b".into() };
            // The host registers asynchronously: the first start waits for it.
            loop {
                match domains.start(act(format!("start-{i}"))).await {
                    Ok(_) => break,
                    Err(s)
                        if Instant::now() < deadline
                            && matches!(
                                s.code(),
                                tonic::Code::FailedPrecondition | tonic::Code::ResourceExhausted
                            ) =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(s) => return Err(s.into()),
                }
            }
            let seen = tokio::task::block_in_place(|| wait_marker(&console, testguest::MARKER))?;
            if i > 0 {
                ms.push((seen - t0).as_secs_f64() * 1e3);
            }
            domains.destroy(act(format!("destroy-{i}"))).await?;
            let stop_deadline = Instant::now() + DEADLINE;
            loop {
                let d = domains
                    .get(pb::GetDomainRequest {
                        name: "b".into(),
                        consistency: pb::Consistency::Linearizable as i32,
                    })
                    .await?
                    .into_inner();
                if d.status
                    .as_ref()
                    .is_some_and(|s| s.phase() == pb::DomainPhase::Stopped && s.host.is_empty())
                {
                    break;
                }
                anyhow::ensure!(Instant::now() < stop_deadline, "b never stopped");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(report("api", ms))
    }
    .await;
    kill(hostd);
    kill(server);
    // The VMM outlives hostd by design; end any left over.
    if let Ok(entries) = std::fs::read_dir(&run_dir) {
        for e in entries.flatten() {
            let _ =
                vmm::control::call(&e.path().join(vmm::control::SOCKET_FILE), vmm::control::Request::Destroy);
        }
    }
    result
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let only: Vec<&str> = args.only.split(',').collect();
    let drover = target_dir().join("drover");
    anyhow::ensure!(drover.exists(), "build the binaries first: cargo build --release -p api -p vmm");
    let guest_dir = tempfile::tempdir()?;
    let guest = guest_dir.path().join("drover-test-guest.elf");
    testguest::write_to(&guest)?;
    println!("start to the test guest's marker ({} runs each; machine: {})", args.runs, machine());
    let mut p50 = std::collections::BTreeMap::new();
    if only.contains(&"api") {
        p50.insert("api", bench_api(&drover, &guest, args.runs).await?);
    }
    if only.contains(&"vmm") {
        let standalone = target_dir().join("drover-vmm");
        anyhow::ensure!(standalone.exists(), "build drover-vmm first: cargo build --release -p vmm");
        p50.insert("vmm", bench_vmm("vmm", &[&standalone], &guest, args.runs)?);
        bench_vmm("drover vmm", &[&drover, Path::new("vmm")], &guest, args.runs)?;
    }
    if only.contains(&"qemu-tcg") {
        p50.insert("qemu-tcg", bench_qemu(&guest, "tcg", args.runs)?);
    }
    if only.contains(&"qemu-kvm") {
        match bench_qemu(&guest, "kvm", args.runs) {
            Ok(v) => {
                p50.insert("qemu-kvm", v);
            }
            Err(e) => println!("qemu-kvm   not measured: {e:#}"),
        }
    }
    if only.contains(&"libvirt") {
        match bench_libvirt(&guest, args.runs) {
            Ok(v) => {
                p50.insert("libvirt", v);
            }
            Err(e) => println!("libvirt    not measured: {e:#}"),
        }
    }
    if only.contains(&"linux") {
        bench_linux(args.runs)?;
    }
    if let (Some(api), Some(lv)) = (p50.get("api"), p50.get("libvirt")) {
        println!("API start vs libvirt + QEMU (virsh create): {:.1}x faster (target >= 5x)", lv / api);
    }
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpu.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?");
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    format!("{} cores, {}", cores, model.trim())
}
