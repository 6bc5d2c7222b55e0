//! The `kvm` driver: Drover's own VMM, one OS process per VM, driven over its control
//! socket (`vmm_control::control`).
//!
//! Each VM has a run directory `<run_dir>/<domain>/` with its control socket, console
//! log, the VMM's own log, `config.json` (domain and generation, written by this driver)
//! and `exit.json` (written by the VMM as it ends). VMM processes run in their own process
//! group, so they outlive hostd; a new driver re-adopts every VMM that still answers on
//! its socket, learns how the others ended from their exit record, and kills any VMM
//! process that no longer answers. Every VMM watches the host's lease file
//! (`<run_dir>/lease`, `vmm_control::lease`) and ends itself once the lease passes.
//!
//! A VM has up to `vmm_control::limits::DISKS_MAX` (8) disks, raw files only, passed in guest order;
//! a read-only one is attached read-only. A qcow2 disk, or a ninth, is a start failure that
//! says so (the qemu driver serves qcow2).
//!
//! Live migration: `prepare_incoming` starts a VMM with `--incoming IP:0` for the
//! domain's next run (it listens, and waits paused for its source's copy and `Go`);
//! `migrate_out`, `outgoing`, `migrate_switch` and `migrate_cancel` drive the source
//! VMM's `MigrateSend`/`MigrateSwitch`/`MigrateCancel` (`vmm::migration`). With the
//! host's TLS files (`KvmConfig::tls_dir`) both VMMs speak mutual TLS and accept only the
//! other end's host (`--incoming-tls-dir`/`--incoming-peer`, `MigrateSend::tls`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use controlplane::model::{MigrationProgress, ObservedPhase, VolumeFormat};
use tracing::{info, warn};
use vmm_control::control::{self, ExitRecord, Phase, Request};

use crate::driver::{
    tap_name, ConvergeLimits, Driver, DriverError, Outgoing, SnapshotTaken, VmSpec, VmStatus,
};
use crate::tap;
use crate::vm_dir::{self, Record, VmProcess};

/// How long a VMM may take to come up (create the VM, load the kernel, bind its socket).
pub const START_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct KvmConfig {
    /// The VMM program and the arguments before the VMM's own (`drover` + `vmm`, or
    /// `drover-vmm` and nothing).
    pub program: PathBuf,
    pub program_args: Vec<String>,
    pub run_dir: PathBuf,
    pub console_log_bytes_max: u64,
    /// The host's TLS directory (hostd's `--tls-dir`): migration streams go over mutual
    /// TLS with its certificate; none sends them in the clear.
    pub tls_dir: Option<PathBuf>,
}

#[derive(Debug)]
pub struct KvmDriver {
    config: KvmConfig,
    vms: BTreeMap<String, VmProcess>,
}

fn phase_of(p: Phase) -> ObservedPhase {
    match p {
        Phase::Running => ObservedPhase::Running,
        Phase::Paused => ObservedPhase::Paused,
        Phase::Stopped | Phase::Destroyed => ObservedPhase::Stopped,
        Phase::Crashed => ObservedPhase::Crashed,
    }
}

/// The VMM's numbers as the cluster records them (the same fields).
fn progress_of(p: control::MigrationProgress) -> MigrationProgress {
    MigrationProgress {
        bytes_sent: p.bytes_sent,
        rounds: p.rounds,
        dirty_bytes_per_s: p.dirty_bytes_per_s,
        remaining_bytes: p.remaining_bytes,
        expected_downtime_ms: p.expected_downtime_ms,
        throttle_percent: p.throttle_percent,
        downtime_ms: p.downtime_ms,
    }
}

impl KvmDriver {
    /// A driver over `config.run_dir`, re-adopting the VMs found there.
    pub fn new(config: KvmConfig) -> Result<KvmDriver, DriverError> {
        std::fs::create_dir_all(&config.run_dir).map_err(|e| DriverError::Failed {
            domain: String::new(),
            action: "create its run directory",
            reason: format!("{}: {e}", config.run_dir.display()),
        })?;
        let mut driver = KvmDriver { config, vms: BTreeMap::new() };
        driver.adopt();
        Ok(driver)
    }

    fn adopt(&mut self) {
        for (dir, record) in vm_dir::recorded(&self.config.run_dir) {
            match control::call(&dir.join(control::SOCKET_FILE), Request::Status) {
                Ok(status) if status.domain == record.domain => {
                    info!(domain = %record.domain, pid = status.pid, "re-adopted a running VM");
                }
                _ if vm_dir::process_alive(record.pid) && vm_dir::runs_in(record.pid, &dir) => {
                    // There, but not answering: it cannot be controlled, so it must go.
                    warn!(domain = %record.domain, pid = record.pid, "VMM does not answer; killing it");
                    vm_dir::kill(record.pid);
                }
                _ => {}
            }
            let vm = VmProcess::adopted(&record, dir);
            self.vms.insert(record.domain, vm);
        }
    }

    fn vm(&mut self, domain: &str) -> Result<&mut VmProcess, DriverError> {
        self.vms.get_mut(domain).ok_or_else(|| DriverError::NoSuchVm(domain.to_owned()))
    }

    fn control(&mut self, domain: &str, action: &'static str, request: Request) -> Result<(), DriverError> {
        let vm = self.vm(domain)?;
        control::call(&vm.dir.join(control::SOCKET_FILE), request)
            .map(|_| ())
            .map_err(|e| DriverError::Failed { domain: domain.to_owned(), action, reason: e.to_string() })
    }

    fn status_of(vm: &mut VmProcess) -> VmStatus {
        vm.reap();
        match control::call(&vm.dir.join(control::SOCKET_FILE), Request::Status) {
            Ok(s) => {
                vm.exits = Some(s.exits);
                let mut phase = phase_of(s.phase);
                if vm.shutting_down && phase == ObservedPhase::Running {
                    phase = ObservedPhase::ShuttingDown;
                }
                VmStatus { generation: vm.generation, phase, reason: s.reason }
            }
            // No answer: its exit record, once written, says how this run ended (a VMM
            // that has written it may still be on its way out; calling that "starting"
            // refused a start right after a stop, seen in CI).
            Err(_) => match ExitRecord::read(&vm.dir, vm.generation) {
                Some(exit) => {
                    VmStatus { generation: vm.generation, phase: phase_of(exit.phase), reason: exit.reason }
                }
                // Starting up or briefly busy: say it is starting rather than guess.
                None if vm_dir::process_alive(vm.pid) => {
                    VmStatus { generation: vm.generation, phase: ObservedPhase::Starting, reason: None }
                }
                None => VmStatus {
                    generation: vm.generation,
                    phase: ObservedPhase::Crashed,
                    reason: Some("the VMM process ended without an exit record (killed?)".into()),
                },
            },
        }
    }

    /// Start a VMM for `spec` (receiving a live migration on `incoming`): up once its
    /// socket answers (its incoming address is written). Returns its run directory.
    /// TLS for a migration stream with host `peer`, where this host has TLS files.
    fn migration_tls(&self, peer: &str) -> Option<control::MigrationTls> {
        self.config.tls_dir.clone().map(|dir| control::MigrationTls { dir, peer: peer.to_owned() })
    }

    fn launch(&mut self, spec: &VmSpec, incoming: Option<(&str, &str)>) -> Result<PathBuf, DriverError> {
        let failed = |reason: String| DriverError::StartFailed { domain: spec.domain.clone(), reason };
        if let Some(vm) = self.vms.get_mut(&spec.domain) {
            let phase = Self::status_of(vm).phase;
            vm_dir::ensure_ended(vm, phase, &spec.domain)?;
        }
        let dir = vm_dir::prepare(
            &self.config.run_dir,
            &spec.domain,
            &[control::SOCKET_FILE, control::INCOMING_FILE],
        )
        .map_err(failed)?;
        // The taps exist, in their bridges, before the VMM attaches to them.
        tap::plug_nics(spec).map_err(failed)?;
        let mut cmd = self.command(spec, &dir).map_err(failed)?;
        if let Some((address, source)) = incoming {
            cmd.args(["--incoming", address]);
            if let Some(tls) = self.migration_tls(source) {
                cmd.arg("--incoming-tls-dir").arg(&tls.dir).args(["--incoming-peer", &tls.peer]);
            }
        }
        let launch = vm_dir::Launch {
            what: "the VMM",
            dir: &dir,
            log: control::VMM_LOG_FILE,
            domain: &spec.domain,
            generation: spec.generation,
        };
        let mut child = vm_dir::spawn(&mut cmd, launch).map_err(failed)?;
        // Up when its socket answers; failed when it exits first with a failure (its exit
        // record says why). A guest may also run and power off before the first look:
        // the VMM then exits successfully and the VM lists as stopped.
        let socket = dir.join(control::SOCKET_FILE);
        let listening = dir.join(control::INCOMING_FILE);
        match vm_dir::wait_up(&mut child, &dir, START_TIMEOUT_MS, || match incoming {
            None => control::call(&socket, Request::Status).is_ok(),
            Some(_) => listening.exists(),
        }) {
            vm_dir::StartOutcome::Up => {}
            vm_dir::StartOutcome::Exited(status) if status.success() => {
                Record { domain: spec.domain.clone(), generation: spec.generation, pid: child.id() }
                    .write(&dir)
                    .map_err(failed)?;
            }
            vm_dir::StartOutcome::Exited(status) => {
                let reason = ExitRecord::read(&dir, spec.generation)
                    .and_then(|r| r.reason)
                    .unwrap_or_else(|| format!("the VMM exited with {status}"));
                return Err(failed(reason));
            }
            vm_dir::StartOutcome::TimedOut => {
                return Err(failed(format!("the VMM did not come up within {START_TIMEOUT_MS} ms")))
            }
        }
        self.vms.insert(spec.domain.clone(), VmProcess::started(spec.generation, dir.clone(), child));
        Ok(dir)
    }

    /// The VMM's command line for `spec`, running in `dir`.
    fn command(&self, spec: &VmSpec, dir: &Path) -> Result<Command, String> {
        let kernel = spec
            .kernel
            .as_ref()
            .ok_or("the kvm driver boots a kernel directly; disk boot is not supported")?;
        if spec.disks.len() > vmm_control::limits::DISKS_MAX {
            return Err(format!(
                "{} disks; the kvm driver's VMM attaches at most {} per VM",
                spec.disks.len(),
                vmm_control::limits::DISKS_MAX
            ));
        }
        for (i, disk) in spec.disks.iter().enumerate() {
            match disk.format {
                VolumeFormat::Raw => {}
                VolumeFormat::Qcow2 => {
                    return Err(format!(
                        "disk {i} ({}) is qcow2; the kvm driver's VMM serves raw files only (the qemu \
                         driver serves qcow2)",
                        disk.path
                    ))
                }
            }
        }
        let vcpus = u8::try_from(spec.vcpus).map_err(|_| format!("{} vCPUs is too many", spec.vcpus))?;
        let mut cmd = Command::new(&self.config.program);
        cmd.args(&self.config.program_args)
            .arg("--run-dir")
            .arg(dir)
            .args(["--domain", &spec.domain, "--generation", &spec.generation.to_string()])
            .args(["--kernel", kernel, "--cmdline", &spec.cmdline])
            .args(["--memory-mib", &spec.memory_mib.to_string(), "--vcpus", &vcpus.to_string()])
            .args(["--console-log-bytes-max", &self.config.console_log_bytes_max.to_string()]);
        if let Some(initrd) = &spec.initrd {
            cmd.args(["--initrd", initrd]);
        }
        if let Some(snapshot) = &spec.restore_from {
            cmd.args(["--restore-from", snapshot]);
        }
        // The host's lease: the VMM ends itself once it passes (no file: none is kept).
        cmd.arg("--lease").arg(self.config.run_dir.join(vmm_control::lease::LEASE_FILE));
        // In guest order, each with its mode spelled out (so no path reads as a mode).
        for disk in &spec.disks {
            let mode = if disk.read_only { "ro" } else { "rw" };
            cmd.arg("--disk").arg(format!("{},{mode}", disk.path));
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            cmd.arg("--nic").arg(format!("tap={},mac={}", tap_name(&spec.domain, i), nic.mac));
        }
        Ok(cmd)
    }
}

impl Driver for KvmDriver {
    /// Drover's own VMM's limits, from their one owner (`vmm_control::limits`).
    fn vm_limits(&self) -> Option<controlplane::model::VmLimits> {
        Some(controlplane::model::VmLimits {
            vcpus: u32::from(vmm_control::limits::VCPUS_MAX),
            memory_mib: vmm_control::limits::MEMORY_MIB_MAX,
            disks: vmm_control::limits::DISKS_MAX as u32,
            nics: vmm_control::limits::NICS_MAX as u32,
        })
    }

    fn start(&mut self, spec: &VmSpec, _now_ms: u64) -> Result<(), DriverError> {
        self.launch(spec, None).map(|_| ())
    }

    fn serve_networks(&mut self, work: &crate::networks::NetworkWork) -> Vec<(String, String)> {
        let user = crate::net_host::user(&work.host, &self.config.run_dir);
        crate::net_host::serve(work, &user, std::path::Path::new(crate::net_host::SERVER_DIR))
    }

    fn prepare_incoming(
        &mut self,
        spec: &VmSpec,
        listen_ip: std::net::IpAddr,
        source: &str,
    ) -> Result<String, DriverError> {
        let address = std::net::SocketAddr::new(listen_ip, 0).to_string();
        let dir = self.launch(spec, Some((&address, source)))?;
        std::fs::read_to_string(dir.join(control::INCOMING_FILE)).map_err(|e| DriverError::StartFailed {
            domain: spec.domain.clone(),
            reason: format!("reading the incoming VMM's address: {e}"),
        })
    }

    fn migrate_out(
        &mut self,
        domain: &str,
        address: &str,
        target: &str,
        limits: ConvergeLimits,
        _now_ms: u64,
    ) -> Result<(), DriverError> {
        let tls = self.migration_tls(target);
        let request = Request::MigrateSend { address: address.to_owned(), limits, tls };
        self.control(domain, "start a live migration", request)
    }

    fn migrate_limits(&mut self, domain: &str, limits: ConvergeLimits) -> Result<(), DriverError> {
        self.control(domain, "change a live migration's limits", Request::MigrateLimits { limits })
    }

    fn outgoing(&mut self, domain: &str, _now_ms: u64) -> Result<Outgoing, DriverError> {
        let failed = |reason: String| DriverError::Failed {
            domain: domain.to_owned(),
            action: "live-migrate",
            reason,
        };
        let vm = self.vm(domain)?;
        let status = control::call(&vm.dir.join(control::SOCKET_FILE), Request::Status)
            .map_err(|e| failed(e.to_string()))?;
        let m = status.migration.ok_or_else(|| failed("no migration was started".into()))?;
        Ok(Outgoing {
            address: m.address,
            phase: m.phase,
            progress: progress_of(m.progress),
            reason: m.reason,
            stop_copy_us: m.stop_copy_us,
        })
    }

    fn migrate_switch(&mut self, domain: &str) -> Result<MigrationProgress, DriverError> {
        let vm = self.vm(domain)?;
        control::migrate_switch(&vm.dir.join(control::SOCKET_FILE)).map(progress_of).map_err(|e| {
            DriverError::Failed { domain: domain.to_owned(), action: "switch over", reason: e.to_string() }
        })
    }

    fn migrate_cancel(&mut self, domain: &str) -> Result<(), DriverError> {
        self.control(domain, "cancel a live migration", Request::MigrateCancel)
    }

    fn pause(&mut self, domain: &str, _now_ms: u64) -> Result<(), DriverError> {
        self.control(domain, "pause", Request::Pause)
    }

    fn resume(&mut self, domain: &str, _now_ms: u64) -> Result<(), DriverError> {
        self.control(domain, "resume", Request::Resume)
    }

    fn shutdown(&mut self, domain: &str, _now_ms: u64) -> Result<(), DriverError> {
        self.control(domain, "shut down", Request::Shutdown)?;
        self.vm(domain)?.shutting_down = true;
        Ok(())
    }

    fn destroy(&mut self, domain: &str, _now_ms: u64) -> Result<(), DriverError> {
        match self.control(domain, "destroy", Request::Destroy) {
            Ok(()) => Ok(()),
            Err(e) => {
                let vm = self.vm(domain)?;
                if vm_dir::process_alive(vm.pid) {
                    // It does not answer: end it the hard way.
                    vm_dir::kill(vm.pid);
                    vm.wait_child();
                    Ok(())
                } else if matches!(e, DriverError::Failed { .. }) {
                    Ok(()) // already gone
                } else {
                    Err(e)
                }
            }
        }
    }

    fn reboot(&mut self, domain: &str, _now_ms: u64) -> Result<(), DriverError> {
        self.control(domain, "reboot", Request::Reboot)
    }

    fn snapshot(&mut self, domain: &str, path: &Path, _now_ms: u64) -> Result<SnapshotTaken, DriverError> {
        let failed =
            |reason: String| DriverError::Failed { domain: domain.to_owned(), action: "snapshot", reason };
        let vm = self.vm(domain)?;
        let status = Self::status_of(vm);
        if !matches!(status.phase, ObservedPhase::Running | ObservedPhase::Paused) {
            return Err(DriverError::WrongPhase {
                domain: domain.to_owned(),
                action: "snapshot",
                phase: status.phase,
            });
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| failed(format!("{}: {e}", parent.display())))?;
        }
        let info =
            control::snapshot(&vm.dir.join(control::SOCKET_FILE), path).map_err(|e| failed(e.to_string()))?;
        Ok(SnapshotTaken { bytes: info.bytes, duration_ms: info.duration_ms })
    }

    fn remove(&mut self, domain: &str) {
        if let Some(vm) = self.vms.remove(domain) {
            vm.forget();
        }
        tap::unplug_nics(domain);
    }

    /// With the VM exits each VMM counted, as of its last status (read by `list`).
    fn usage(&mut self) -> BTreeMap<String, crate::metrics::VmUsage> {
        vm_dir::usage_of(self.vms.iter())
    }

    fn list(&mut self, _now_ms: u64) -> BTreeMap<String, VmStatus> {
        self.vms.iter_mut().map(|(name, vm)| (name.clone(), Self::status_of(vm))).collect()
    }
}
