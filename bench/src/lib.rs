//! Drover's benchmarks and load generators.
//!
//! Contract: speed and memory are measured here, never asserted by timed tests. Each
//! benchmark records its numbers, the machine and the command in `bench/README.md`.
//! Criterion benches of the pure core (`benches/core.rs`) and the audit archive
//! (`benches/archive.rs`) over histories made by [`history`]; binaries: `raft_load`
//! (replication against etcd), `durability_floor`, `placements`, `vm_start` (against QEMU
//! and libvirt), `snapshot` (save and restore, against QEMU), `migration` (live migration,
//! against QEMU), `disk_io` (guest disk throughput, against QEMU) and `sim_speed`;
//! `bench/overlay_net.sh` (the overlay against one bridge).
#![forbid(unsafe_code)]

pub mod history;

/// The own VMM's binary beside the running benchmark (`target/<profile>/drover-vmm`).
pub fn vmm_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent().expect("target/<profile>").join("drover-vmm")
}

/// The process driver `name` (`kvm`: the own VMM, which must be built; `qemu`) with its
/// VMs under `run_dir`.
pub fn process_driver(
    name: &str,
    run_dir: &std::path::Path,
) -> anyhow::Result<Box<dyn hostd::driver::Driver>> {
    process_driver_with(name, run_dir, &vmm_bin(), None)
}

/// [`process_driver`], the own VMM being the binary `vmm`, its migration streams over
/// mutual TLS with the host certificate in `tls_dir` where given.
pub fn process_driver_with(
    name: &str,
    run_dir: &std::path::Path,
    vmm: &std::path::Path,
    tls_dir: Option<&std::path::Path>,
) -> anyhow::Result<Box<dyn hostd::driver::Driver>> {
    let tls_dir = tls_dir.map(std::path::Path::to_path_buf);
    Ok(match name {
        "kvm" => {
            if !vmm.exists() {
                anyhow::bail!("{} is missing: cargo build --release -p vmm", vmm.display());
            }
            Box::new(hostd::kvm::KvmDriver::new(hostd::kvm::KvmConfig {
                program: vmm.to_owned(),
                program_args: Vec::new(),
                run_dir: run_dir.to_owned(),
                console_log_bytes_max: 1 << 20,
                tls_dir,
            })?)
        }
        "qemu" => Box::new(hostd::qemu::QemuDriver::new(hostd::qemu::QemuConfig {
            tls_dir,
            ..hostd::qemu::QemuConfig::new(run_dir.to_owned())
        })?),
        other => anyhow::bail!("unknown driver {other}"),
    })
}

/// How long a driver benchmark waits for a VM to reach a phase or print its ticks.
pub const DRIVER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Wall-clock milliseconds, as drivers take them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The `p` quantile (0 to 1) of `sorted`, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Wait until `driver` lists `domain` in `phase`, for at most [`DRIVER_DEADLINE`].
pub fn wait_phase(
    driver: &mut dyn hostd::driver::Driver,
    domain: &str,
    phase: controlplane::model::ObservedPhase,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + DRIVER_DEADLINE;
    while driver.list(now_ms()).get(domain).map(|s| s.phase) != Some(phase) {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{domain} never became {phase:?}: {:?}", driver.list(now_ms()).get(domain));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    Ok(())
}

/// Wait until the test guest has printed `count` ticks to `console`, for at most
/// [`DRIVER_DEADLINE`].
pub fn wait_ticks(console: &std::path::Path, count: usize) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + DRIVER_DEADLINE;
    while std::fs::read_to_string(console).unwrap_or_default().matches(testguest::TICK_PREFIX).count() < count
    {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the guest never printed {count} ticks in {}", console.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(())
}

/// Traces for a benchmark's replicas (`--trace-sample-ratio`): an OTLP receiver in the
/// benchmark's process, and the flags that point the replicas at it with that ratio.
/// `None` (no flags) when no ratio is given: traces off.
pub async fn traced(ratio: Option<f64>) -> (Option<tests::otlp::Receiver>, Vec<String>) {
    let Some(ratio) = ratio else { return (None, Vec::new()) };
    let receiver = tests::otlp::Receiver::start().await;
    let flags = vec![
        "--otlp-endpoint".to_owned(),
        receiver.endpoint(),
        "--trace-sample-ratio".to_owned(),
        ratio.to_string(),
    ];
    (Some(receiver), flags)
}
