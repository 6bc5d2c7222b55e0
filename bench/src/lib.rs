//! Drover's benchmarks and load generators.
//!
//! Contract: speed and memory are measured here, never asserted by timed tests. Each
//! benchmark records its numbers, the machine and the command in `bench/README.md`.
//! Criterion benches of the pure core (`benches/core.rs`) and the audit archive
//! (`benches/archive.rs`) over histories made by [`history`]; binaries: `raft_load`
//! (replication against etcd), `durability_floor`, `placements`, `vm_start` (against QEMU
//! and libvirt), `snapshot` (save and restore, against QEMU), `disk_io` (guest disk throughput, against
//! QEMU) and `sim_speed`; `bench/overlay_net.sh` (the overlay against one bridge).
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
    Ok(match name {
        "kvm" => {
            if !vmm_bin().exists() {
                anyhow::bail!("{} is missing: cargo build --release -p vmm", vmm_bin().display());
            }
            Box::new(hostd::kvm::KvmDriver::new(hostd::kvm::KvmConfig {
                program: vmm_bin(),
                program_args: Vec::new(),
                run_dir: run_dir.to_owned(),
                console_log_bytes_max: 1 << 20,
            })?)
        }
        "qemu" => Box::new(hostd::qemu::QemuDriver::new(hostd::qemu::QemuConfig::new(run_dir.to_owned()))?),
        other => anyhow::bail!("unknown driver {other}"),
    })
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
