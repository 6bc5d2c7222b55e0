//! The `qemu` driver: one qemu-system-x86_64 process per VM, as libvirt runs it,
//! controlled over QMP (the `qapi` crate). This is how Drover runs arbitrary guests on
//! any host: KVM where the host has hardware virtualization, TCG where it does not
//! (kvm-pvm counts as "not": its ring-0 emulation is slower than TCG).
//!
//! Each VM's run directory holds `qmp.sock`, `console.sock` (the serial port: output is
//! logged to `console.log`, input is how a graceful shutdown reaches guests without ACPI),
//! `qemu.log` (QEMU's own stderr), the driver's record and, once the guest has powered
//! off, `exit.json`. QEMU runs with `-no-shutdown`, so a guest power-off leaves it alive
//! in the `shutdown` state until the driver has written down that it stopped; a QEMU that
//! vanishes without that record crashed. QEMU outlives hostd (own process group) and is
//! re-adopted through its QMP socket.
//!
//! Snapshots (`snapshot`, `qemu/snapshot.rs`) are QEMU's own migration stream in a file,
//! behind a one-line Drover header that records the guest's phase and memory size: QMP
//! `stop`, `migrate` to an `exec:` writer, the writable disks copied after the stream
//! (still stopped), `cont`, then fsync and rename. A start with `restore_from` writes the
//! disk images back, runs QEMU with the same arguments plus `-S -incoming defer`, feeds it
//! the stream with `migrate-incoming` and resumes the guest if it was running when the
//! snapshot was taken; a file QEMU cannot load fails the start and leaves no QEMU behind.
//!
//! Live migration (`qemu/migration.rs`) is QEMU's own pre-copy over TCP through the same
//! saga as the own VMM's: the target's QEMU waits with `-S -incoming` and inactive disks,
//! the source's sends with the host's limits mapped to QEMU's (`downtime-limit`,
//! `auto-converge` up to `max-cpu-throttle`, no bandwidth cap), the switch ends the
//! source's QEMU and the target's host resumes its own once the commit is in its view.
//! With the host's `tls_dir`, every QEMU starts with x509 credentials made of the host's
//! certificate and the stream goes over mutual TLS.
//!
//! QEMU cannot watch the host's lease itself, so with `fence_watch` set each QEMU gets a
//! guard process (`drover-vmm fence-watch`, in its own process group too) that SIGKILLs it
//! the moment the lease in `<run_dir>/lease` passes (self-fencing, see `vmm_control::lease`).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use controlplane::model::ObservedPhase;
use qapi::{qmp, Qmp};
use tracing::{info, warn};
use vmm_control::control::{ExitRecord, Phase};

use crate::driver::{tap_name, Driver, DriverError, SnapshotTaken, VmSpec, VmStatus};
use crate::tap;
use crate::vm_dir::{self, VmProcess};

pub mod migration;
pub mod snapshot;

pub const QMP_FILE: &str = "qmp.sock";
pub const CONSOLE_SOCKET_FILE: &str = "console.sock";
pub const CONSOLE_FILE: &str = vmm_control::control::CONSOLE_FILE;
pub const QEMU_LOG_FILE: &str = "qemu.log";
pub const EXIT_FILE: &str = vm_dir::EXIT_FILE;
/// How long QEMU may take to come up and answer QMP.
pub const START_TIMEOUT_MS: u64 = 10_000;
/// Deadline of one QMP exchange.
pub const QMP_TIMEOUT_MS: u64 = 2_000;
/// The TSC frequency given to Linux guests on microvm, where early calibration against
/// the PIT hangs about half the boots under TCG.
pub const MICROVM_TSC_KHZ: u64 = 2_300_000;

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM where the CPU has VMX/SVM and KVM is not kvm-pvm; TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    pub fn parse(s: &str) -> Option<Accel> {
        match s {
            "auto" => Some(Accel::Auto),
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }

    /// What `Auto` means on this machine.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto if hardware_kvm() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            other => other,
        }
    }
}

/// Hardware-assisted KVM: /dev/kvm usable, the CPU has VMX or SVM, and not kvm-pvm.
pub fn hardware_kvm() -> bool {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpu.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    let vmx = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    vmx && !Path::new("/sys/module/kvm_pvm").exists() && vmm_control::kvm_usable()
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub accel: Accel,
    /// `microvm` (virtio-mmio, no firmware) or `q35` (PCI, SeaBIOS).
    pub machine: String,
    pub run_dir: PathBuf,
    pub console_log_bytes_max: u64,
    /// The VMM program and the arguments before its own (`drover-vmm`, or `drover` +
    /// `vmm`) that runs each QEMU's lease guard; `None`: QEMUs are not guarded.
    pub fence_watch: Option<(PathBuf, Vec<String>)>,
    /// The host's TLS directory (hostd's `--tls-dir`): migration streams go over mutual
    /// TLS with its certificate (`qemu/migration.rs`); none sends them in the clear.
    pub tls_dir: Option<PathBuf>,
}

impl QemuConfig {
    pub fn new(run_dir: PathBuf) -> QemuConfig {
        QemuConfig {
            binary: "qemu-system-x86_64".into(),
            accel: Accel::Auto,
            machine: "microvm".into(),
            run_dir,
            console_log_bytes_max: 1 << 20,
            fence_watch: None,
            tls_dir: None,
        }
    }
}

#[derive(Debug)]
pub struct QemuDriver {
    config: QemuConfig,
    accel: Accel,
    vms: BTreeMap<String, VmProcess>,
    /// Lease guards this driver started, reaped once they end.
    guards: Vec<std::process::Child>,
    /// The outgoing copies under way, by domain, as this driver watches them (QEMU's
    /// own has no time limit: `migration::CopyWatch`).
    copies: BTreeMap<String, migration::CopyWatch>,
}

/// How many times a QMP connection is opened for one call: QEMU serves one client at a
/// time, and one that connects right as the last one leaves now and then reads a line of
/// that session before its greeting (seen when a migration is polled every half
/// millisecond).
const QMP_CONNECT_TRIES: usize = 3;

fn qmp_call<C: qapi::Command>(dir: &Path, command: &C) -> Result<C::Ok, String> {
    let mut tries = 0;
    loop {
        tries += 1;
        match qmp_once(dir, command) {
            Ok(done) => return done,
            Err(handshake) if tries >= QMP_CONNECT_TRIES => return Err(handshake),
            // Nothing was asked of QEMU yet: connecting again is safe.
            Err(_) => {}
        }
    }
}

/// One QMP session for `command`: `Err` where the handshake failed (the command was not
/// sent), else what the command came to.
fn qmp_once<C: qapi::Command>(dir: &Path, command: &C) -> Result<Result<C::Ok, String>, String> {
    let stream = match UnixStream::connect(dir.join(QMP_FILE)) {
        Ok(stream) => stream,
        Err(e) => return Ok(Err(format!("QMP socket: {e}"))),
    };
    let timeout = Some(Duration::from_millis(QMP_TIMEOUT_MS));
    if let Err(e) = stream.set_read_timeout(timeout).and_then(|()| stream.set_write_timeout(timeout)) {
        return Ok(Err(e.to_string()));
    }
    // The greeting is read here, not by qapi's handshake: qapi 0.15 panics ("unexpected
    // eof") when the socket closes before it, as it does when QEMU dies right then (seen
    // in CI: a QEMU killed by its lease guard while hostd listed its VMs). QEMU sends
    // nothing after its greeting until capabilities are negotiated, so reading the line
    // through a buffer of our own leaves nothing behind for qapi's.
    let mut greeting = String::new();
    match std::io::BufReader::new(&stream).read_line(&mut greeting) {
        Ok(0) => return Err("QMP: QEMU closed the socket before its greeting".into()),
        Err(e) => return Err(format!("QMP greeting: {e}")),
        Ok(_) if !greeting.contains("\"QMP\"") => {
            return Err(format!("QMP: not a greeting: {}", greeting.trim()));
        }
        Ok(_) => {}
    }
    let mut qmp = Qmp::from_stream(&stream);
    qmp.execute(&qmp::qmp_capabilities { enable: None }).map_err(|e| format!("QMP handshake: {e}"))?;
    Ok(qmp.execute(command).map_err(|e| format!("QMP: {e}")))
}

/// The last `lines` non-empty lines QEMU wrote to its log in `dir`, joined by " / ".
fn qemu_said(dir: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(dir.join(QEMU_LOG_FILE)).unwrap_or_default();
    let mut said: Vec<&str> =
        log.lines().map(str::trim).filter(|l| !l.is_empty()).rev().take(lines).collect();
    said.reverse();
    said.join(" / ")
}

/// The machine a domain that boots from its disk runs on when the driver's is microvm.
pub const DISK_BOOT_MACHINE: &str = "pc";

impl QemuDriver {
    /// Start the lease guard of QEMU process `pid`, if guards are configured.
    fn guard(&mut self, pid: u32) -> std::io::Result<()> {
        let Some((program, args)) = &self.config.fence_watch else { return Ok(()) };
        use std::os::unix::process::CommandExt;
        let guard = Command::new(program)
            .args(args)
            .arg("fence-watch")
            .args(["--pid", &pid.to_string()])
            .arg("--lease")
            .arg(self.config.run_dir.join(vmm_control::lease::LEASE_FILE))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        self.guards.push(guard);
        Ok(())
    }

    pub fn new(config: QemuConfig) -> Result<QemuDriver, DriverError> {
        std::fs::create_dir_all(&config.run_dir).map_err(|e| DriverError::Failed {
            domain: String::new(),
            action: "create its run directory",
            reason: format!("{}: {e}", config.run_dir.display()),
        })?;
        let accel = config.accel.resolve();
        let mut driver =
            QemuDriver { config, accel, vms: BTreeMap::new(), guards: Vec::new(), copies: BTreeMap::new() };
        for (dir, record) in vm_dir::recorded(&driver.config.run_dir) {
            match qmp_call(&dir, &qmp::query_status {}) {
                Ok(_) => info!(domain = %record.domain, pid = record.pid, "re-adopted a running QEMU"),
                Err(_) if vm_dir::process_alive(record.pid) && vm_dir::runs_in(record.pid, &dir) => {
                    warn!(domain = %record.domain, pid = record.pid, "QEMU does not answer QMP; killing it");
                    vm_dir::kill(record.pid);
                }
                Err(_) => {}
            }
            let vm = VmProcess::adopted(&record, dir);
            driver.vms.insert(record.domain, vm);
        }
        Ok(driver)
    }

    /// The accelerator this driver uses on this machine.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    fn vm(&mut self, domain: &str) -> Result<&mut VmProcess, DriverError> {
        self.vms.get_mut(domain).ok_or_else(|| DriverError::NoSuchVm(domain.to_owned()))
    }

    fn call<C: qapi::Command>(
        &mut self,
        domain: &str,
        action: &'static str,
        command: &C,
    ) -> Result<(), DriverError> {
        let vm = self.vm(domain)?;
        qmp_call(&vm.dir, command).map(|_| ()).map_err(|reason| DriverError::Failed {
            domain: domain.to_owned(),
            action,
            reason,
        })
    }

    fn args(&self, spec: &VmSpec, dir: &Path) -> Result<Vec<String>, String> {
        if let Some(kernel) = spec.kernel.as_ref().filter(|k| !Path::new(k).is_file()) {
            return Err(format!("kernel {kernel} is missing"));
        }
        if spec.kernel.is_none() && spec.disks.is_empty() {
            return Err("boots from its first disk, and has none".into());
        }
        // A disk boots through firmware (SeaBIOS); microvm has none that reads disks, so a
        // domain that boots from its disk runs on the PC machine.
        let machine = match &spec.kernel {
            None if self.config.machine == "microvm" => DISK_BOOT_MACHINE.to_owned(),
            _ => self.config.machine.clone(),
        };
        let microvm = machine == "microvm";
        let mut cmdline = spec.cmdline.trim().to_owned();
        if microvm && !cmdline.contains("tsc_early_khz=") {
            cmdline = format!("{cmdline} tsc_early_khz={MICROVM_TSC_KHZ}").trim().to_owned();
        }
        let p = |f: &str| dir.join(f).display().to_string();
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("{},process=drover-{}", spec.domain, spec.domain),
            "-machine".into(),
            machine,
            "-accel".into(),
            match self.accel {
                Accel::Kvm => "kvm".into(),
                _ => "tcg".into(),
            },
            "-m".into(),
            spec.memory_mib.to_string(),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-shutdown".into(),
            "-chardev".into(),
            format!(
                "socket,id=con,path={},server=on,wait=off,logfile={},logappend=on",
                p(CONSOLE_SOCKET_FILE),
                p(CONSOLE_FILE)
            ),
            "-serial".into(),
            "chardev:con".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", p(QMP_FILE)),
        ];
        if let Some(kernel) = &spec.kernel {
            a.extend(["-kernel".into(), kernel.clone(), "-append".into(), cmdline]);
        }
        if self.accel == Accel::Kvm {
            a.extend(["-cpu".into(), "host".into()]);
        }
        if microvm {
            // Virtio 1.0 transports (version 2), as the own VMM offers, rather than QEMU's
            // legacy default: Linux drives either, Drover's test guest only these.
            a.extend(["-global".into(), "virtio-mmio.force-legacy=false".into()]);
        }
        if let Some(initrd) = &spec.initrd {
            if !Path::new(initrd).is_file() {
                return Err(format!("initrd {initrd} is missing"));
            }
            a.extend(["-initrd".into(), initrd.clone()]);
        }
        for (i, disk) in spec.disks.iter().enumerate() {
            if !Path::new(&disk.path).is_file() {
                return Err(format!("disk {} is missing", disk.path));
            }
            a.push("-drive".into());
            a.push(format!(
                "file={},if=none,id=disk{i},format={},readonly={}",
                disk.path,
                match disk.format {
                    controlplane::model::VolumeFormat::Raw => "raw",
                    controlplane::model::VolumeFormat::Qcow2 => "qcow2",
                },
                if disk.read_only { "on" } else { "off" }
            ));
            a.push("-device".into());
            let model = if microvm { "virtio-blk-device" } else { "virtio-blk-pci" };
            // Without a kernel, the firmware boots the first disk.
            let boot = if spec.kernel.is_none() && i == 0 { ",bootindex=0" } else { "" };
            a.push(format!("{model},drive=disk{i}{boot}"));
        }
        if spec.nics.len() > tap::NICS_MAX {
            return Err(format!("{} NICs; at most {} per VM", spec.nics.len(), tap::NICS_MAX));
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            // The tap exists before QEMU starts (see `plug_nics`); QEMU only opens it.
            a.push("-netdev".into());
            a.push(format!("tap,id=net{i},ifname={},script=no,downscript=no", tap_name(&spec.domain, i)));
            a.push("-device".into());
            let model = if microvm { "virtio-net-device" } else { "virtio-net-pci" };
            a.push(format!("{model},netdev=net{i},mac={}", nic.mac));
        }
        Ok(a)
    }

    /// Keep the console log under its cap: the current part becomes `.old`.
    fn cap_console(&self, dir: &Path) {
        let log = dir.join(CONSOLE_FILE);
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > self.config.console_log_bytes_max) {
            let old = dir.join(format!("{CONSOLE_FILE}.old"));
            // QEMU appends (logappend=on), so truncating in place is safe for it.
            if let Err(e) = std::fs::copy(&log, &old).and_then(|_| std::fs::File::create(&log).map(|_| ())) {
                warn!(log = %log.display(), error = %e, "cannot rotate a console log");
            }
        }
    }

    fn status_of(&self, vm: &mut VmProcess) -> VmStatus {
        vm.reap();
        self.cap_console(&vm.dir);
        let status = |phase, reason: Option<String>| VmStatus { generation: vm.generation, phase, reason };
        match qmp_call(&vm.dir, &qmp::query_status {}) {
            Ok(info) => match info.status {
                qmp::RunState::running if vm.shutting_down => status(ObservedPhase::ShuttingDown, None),
                qmp::RunState::running => status(ObservedPhase::Running, None),
                // `finish-migrate` while a snapshot is written; `postmigrate` after one of a
                // paused guest (a `cont` resumes it as from `paused`).
                qmp::RunState::paused
                | qmp::RunState::suspended
                | qmp::RunState::finish_migrate
                | qmp::RunState::postmigrate => status(ObservedPhase::Paused, None),
                qmp::RunState::shutdown => {
                    // The guest powered off; write it down, then let QEMU go.
                    let reason = "the guest powered off";
                    if Self::record_exit(vm, Phase::Stopped, reason).is_ok() {
                        let _ = qmp_call(&vm.dir, &qmp::quit {});
                    }
                    status(ObservedPhase::Stopped, Some(reason.into()))
                }
                qmp::RunState::internal_error | qmp::RunState::io_error | qmp::RunState::guest_panicked => {
                    status(ObservedPhase::Crashed, Some(format!("QEMU reports {:?}", info.status)))
                }
                _ => status(ObservedPhase::Starting, None),
            },
            Err(_) if vm_dir::process_alive(vm.pid) => status(ObservedPhase::Starting, None),
            Err(_) => match ExitRecord::read(&vm.dir, vm.generation) {
                Some(exit) if exit.phase == Phase::Crashed => status(ObservedPhase::Crashed, exit.reason),
                Some(exit) => status(ObservedPhase::Stopped, exit.reason),
                None => {
                    status(ObservedPhase::Crashed, Some("QEMU ended without the guest powering off".into()))
                }
            },
        }
    }

    /// Make sure the domain's previous QEMU, if this driver has one, has ended.
    fn end_previous(&mut self, spec: &VmSpec) -> Result<(), DriverError> {
        if let Some(mut vm) = self.vms.remove(&spec.domain) {
            let phase = self.status_of(&mut vm).phase;
            let ended = vm_dir::ensure_ended(&mut vm, phase, &spec.domain);
            self.vms.insert(spec.domain.clone(), vm);
            ended?;
        }
        Ok(())
    }

    /// Start the QEMU of `spec` and wait until it answers QMP; `incoming`: held before the
    /// guest's first instruction, waiting for a migration stream (`-S -incoming defer`),
    /// from host `source` where it is a live migration's.
    fn launch(
        &mut self,
        spec: &VmSpec,
        incoming: bool,
        source: Option<&str>,
    ) -> Result<(PathBuf, std::process::Child), DriverError> {
        let failed = |reason: String| DriverError::StartFailed { domain: spec.domain.clone(), reason };
        // (A migration an earlier QEMU of the domain sent is not this one's.)
        let stale = [QMP_FILE, CONSOLE_SOCKET_FILE, migration::OUTGOING_FILE];
        let dir = vm_dir::prepare(&self.config.run_dir, &spec.domain, &stale).map_err(failed)?;
        let mut args = self.args(spec, &dir).map_err(failed)?;
        if let Some(tls_dir) = &self.config.tls_dir {
            args.extend(migration::tls_args(&dir, tls_dir, source).map_err(failed)?);
        }
        if incoming {
            args.extend(["-S".into(), "-incoming".into(), "defer".into()]);
        }
        tap::plug_nics(spec).map_err(failed)?;
        let mut cmd = Command::new(&self.config.binary);
        cmd.args(&args);
        let launch = vm_dir::Launch {
            what: "QEMU",
            dir: &dir,
            log: QEMU_LOG_FILE,
            domain: &spec.domain,
            generation: spec.generation,
        };
        let mut child = vm_dir::spawn(&mut cmd, launch).map_err(failed)?;
        if let Err(e) = self.guard(child.id()) {
            vm_dir::abandon(&mut child, &dir);
            return Err(failed(format!("cannot guard QEMU with the host's lease: {e}")));
        }
        match vm_dir::wait_up(&mut child, &dir, START_TIMEOUT_MS, || {
            qmp_call(&dir, &qmp::query_status {}).is_ok()
        }) {
            vm_dir::StartOutcome::Up => Ok((dir, child)),
            vm_dir::StartOutcome::Exited(status) => {
                Err(failed(format!("QEMU exited with {status}: {}", qemu_said(&dir, 1))))
            }
            vm_dir::StartOutcome::TimedOut => {
                Err(failed(format!("QEMU did not answer QMP within {START_TIMEOUT_MS} ms")))
            }
        }
    }

    /// Write how the QEMU of `vm` ended, in the VMM's format (QEMU writes none of its own).
    fn record_exit(vm: &VmProcess, phase: Phase, reason: &str) -> std::io::Result<()> {
        let domain = vm.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        ExitRecord { domain, generation: vm.generation, phase, reason: Some(reason.into()) }.write(&vm.dir)
    }
}

impl Driver for QemuDriver {
    fn serve_networks(&mut self, work: &crate::networks::NetworkWork) -> Vec<(String, String)> {
        let user = crate::net_host::user(&work.host, &self.config.run_dir);
        crate::net_host::serve(work, &user, std::path::Path::new(crate::net_host::SERVER_DIR))
    }

    fn start(&mut self, spec: &VmSpec, _now_ms: u64) -> Result<(), DriverError> {
        let failed = |reason: String| DriverError::StartFailed { domain: spec.domain.clone(), reason };
        self.end_previous(spec)?;
        // A restore: the file must be a snapshot of this driver, of a guest of this size.
        let restore = match &spec.restore_from {
            None => None,
            Some(file) => {
                let path = Path::new(file);
                if !path.is_file() {
                    return Err(failed(format!("snapshot file {file} is missing")));
                }
                let (header, offset) = snapshot::read_header(path).map_err(failed)?;
                header.fits(file, spec).map_err(failed)?;
                let (end, disks) = crate::disk_images::read(path).map_err(failed)?;
                // Memory and disks come back to one instant: the disks first, before QEMU
                // opens them.
                let targets: Vec<Option<&str>> =
                    spec.disks.iter().map(|d| (!d.read_only).then_some(d.path.as_str())).collect();
                let restored = crate::disk_images::restore(path, &disks, &targets).map_err(failed)?;
                Some((file, header, snapshot::incoming_uri(path, offset, end).map_err(failed)?, restored))
            }
        };
        // (A failed launch drops the restored disks, which puts the old ones back.)
        let (dir, mut child) = self.launch(spec, restore.is_some(), None)?;
        if let Some((file, header, uri, restored)) = restore {
            if let Err(reason) = snapshot::restore(&dir, &mut child, &uri, header.resumes()) {
                vm_dir::abandon(&mut child, &dir);
                // The disks go back to what they were before this failed restore.
                restored.undo();
                return Err(failed(format!("restoring {file}: {reason}")));
            }
            restored.keep();
            info!(domain = %spec.domain, file = %file, phase = %header.phase, "restored a snapshot");
        }
        self.vms.insert(spec.domain.clone(), VmProcess::started(spec.generation, dir, child));
        Ok(())
    }

    /// QEMU `-incoming` on `listen_ip` (see `qemu/migration.rs`).
    fn prepare_incoming(
        &mut self,
        spec: &VmSpec,
        listen_ip: std::net::IpAddr,
        source: &str,
    ) -> Result<String, DriverError> {
        self.end_previous(spec)?;
        let (dir, mut child) = self.launch(spec, true, Some(source))?;
        match migration::listen(&dir, listen_ip, self.config.tls_dir.is_some()) {
            Ok(address) => {
                info!(domain = %spec.domain, %address, "QEMU waits for an incoming migration");
                self.vms.insert(spec.domain.clone(), VmProcess::started(spec.generation, dir, child));
                Ok(address)
            }
            Err(reason) => {
                vm_dir::abandon(&mut child, &dir);
                Err(DriverError::StartFailed {
                    domain: spec.domain.clone(),
                    reason: format!("QEMU cannot receive a migration: {reason}"),
                })
            }
        }
    }

    fn migrate_out(
        &mut self,
        domain: &str,
        address: &str,
        // (The target's certificate is checked against `address`.)
        _target: &str,
        limits: crate::driver::ConvergeLimits,
        _now_ms: u64,
    ) -> Result<(), DriverError> {
        let tls = self.config.tls_dir.is_some();
        let vm = self.vm(domain)?;
        migration::start(&vm.dir, address, limits, tls).map_err(|reason| DriverError::Failed {
            domain: domain.to_owned(),
            action: "start a live migration",
            reason,
        })?;
        self.copies.insert(domain.to_owned(), migration::CopyWatch::new(Instant::now()));
        Ok(())
    }

    fn migrate_limits(
        &mut self,
        domain: &str,
        limits: crate::driver::ConvergeLimits,
    ) -> Result<(), DriverError> {
        let vm = self.vm(domain)?;
        migration::set_limits(&vm.dir, limits).map_err(|reason| DriverError::Failed {
            domain: domain.to_owned(),
            action: "change a live migration's limits",
            reason,
        })
    }

    fn outgoing(&mut self, domain: &str, _now_ms: u64) -> Result<crate::driver::Outgoing, DriverError> {
        let failed =
            |reason| DriverError::Failed { domain: domain.to_owned(), action: "live-migrate", reason };
        let dir = self.vm(domain)?.dir.clone();
        let mut out = migration::outgoing(&dir).map_err(failed)?;
        // A hostd that restarted mid-copy watches it from now on.
        let now = Instant::now();
        let watch = self.copies.entry(domain.to_owned()).or_insert_with(|| migration::CopyWatch::new(now));
        watch.look(&dir, &mut out, now).map_err(failed)?;
        Ok(out)
    }

    /// The target QEMU holds the whole VM: this one ends (the target's host resumes its
    /// own once it sees the commit).
    fn migrate_switch(
        &mut self,
        domain: &str,
    ) -> Result<controlplane::model::MigrationProgress, DriverError> {
        let failed =
            |reason: String| DriverError::Failed { domain: domain.to_owned(), action: "switch over", reason };
        self.copies.remove(domain);
        let vm = self.vm(domain)?;
        let progress = migration::finished(&vm.dir).map_err(failed)?;
        let to = migration::target(&vm.dir).map_or_else(String::new, |(address, _)| address);
        Self::record_exit(vm, Phase::Destroyed, &format!("migrated to {to}"))
            .map_err(|e| failed(format!("recording the end: {e}")))?;
        if qmp_call(&vm.dir, &qmp::quit {}).is_err() && vm_dir::process_alive(vm.pid) {
            vm_dir::kill(vm.pid);
        }
        vm.wait_child();
        info!(domain, to = %to, downtime_ms = ?progress.downtime_ms, "migrated away");
        Ok(progress)
    }

    fn migrate_cancel(&mut self, domain: &str) -> Result<(), DriverError> {
        self.copies.remove(domain);
        let vm = self.vm(domain)?;
        migration::cancel(&vm.dir).map_err(|reason| DriverError::Failed {
            domain: domain.to_owned(),
            action: "cancel a live migration",
            reason,
        })
    }

    fn pause(&mut self, domain: &str, _now_ms: u64) -> Result<(), DriverError> {
        self.call(domain, "pause", &qmp::stop {})
    }

    fn resume(&mut self, domain: &str, _now_ms: u64) -> Result<(), DriverError> {
        self.call(domain, "resume", &qmp::cont {})
    }

    /// ACPI power button, and the power-off key on the serial console for guests
    /// without ACPI (Drover's test guests); hostd destroys the VM if neither works in time.
    fn shutdown(&mut self, domain: &str, _now_ms: u64) -> Result<(), DriverError> {
        self.call(domain, "shut down", &qmp::system_powerdown {})?;
        let vm = self.vm(domain)?;
        vm.shutting_down = true;
        if let Ok(mut console) = UnixStream::connect(vm.dir.join(CONSOLE_SOCKET_FILE)) {
            let _ = console.write_all(&[vmm_control::POWER_OFF_KEY]);
        }
        Ok(())
    }

    fn destroy(&mut self, domain: &str, _now_ms: u64) -> Result<(), DriverError> {
        let vm = self.vm(domain)?;
        let _ = Self::record_exit(vm, Phase::Destroyed, "destroyed on request");
        if qmp_call(&vm.dir, &qmp::quit {}).is_err() && vm_dir::process_alive(vm.pid) {
            vm_dir::kill(vm.pid);
        }
        vm.wait_child();
        Ok(())
    }

    fn reboot(&mut self, domain: &str, _now_ms: u64) -> Result<(), DriverError> {
        self.call(domain, "reboot", &qmp::system_reset {})
    }

    /// QEMU's migration stream behind a header (see `snapshot`); `duration_ms` is the time
    /// from `stop` to `cont` (for a paused guest, the time QEMU took to write it).
    fn snapshot(&mut self, domain: &str, path: &Path, _now_ms: u64) -> Result<SnapshotTaken, DriverError> {
        let mut vm = self.vms.remove(domain).ok_or_else(|| DriverError::NoSuchVm(domain.to_owned()))?;
        let phase = self.status_of(&mut vm).phase;
        let (dir, pid) = (vm.dir.clone(), vm.pid);
        self.vms.insert(domain.to_owned(), vm);
        let running = match phase {
            ObservedPhase::Running => true,
            ObservedPhase::Paused => false,
            phase => {
                return Err(DriverError::WrongPhase { domain: domain.to_owned(), action: "snapshot", phase })
            }
        };
        let taken = snapshot::take(&dir, pid, domain, path, running).map_err(|reason| {
            DriverError::Failed { domain: domain.to_owned(), action: "snapshot", reason }
        })?;
        info!(domain, path = %path.display(), bytes = taken.bytes, held_ms = taken.duration_ms, "took a snapshot");
        Ok(taken)
    }

    fn remove(&mut self, domain: &str) {
        self.copies.remove(domain);
        if let Some(vm) = self.vms.remove(domain) {
            vm.forget();
        }
        tap::unplug_nics(domain);
    }

    fn usage(&mut self) -> BTreeMap<String, crate::metrics::VmUsage> {
        vm_dir::usage_of(self.vms.iter())
    }

    fn list(&mut self, _now_ms: u64) -> BTreeMap<String, VmStatus> {
        self.guards.retain_mut(|g| matches!(g.try_wait(), Ok(None)));
        let mut vms = std::mem::take(&mut self.vms);
        let out = vms.iter_mut().map(|(name, vm)| (name.clone(), self.status_of(vm))).collect();
        self.vms = vms;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QMP socket that closes before (or instead of) its greeting is an error, not a
    /// panic; a greeting followed by answers is a session.
    #[test]
    fn a_qmp_socket_that_closes_before_its_greeting_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join(QMP_FILE)).unwrap();
        let serve = |said: Vec<&'static str>| {
            let (mut conn, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            for (i, line) in said.iter().enumerate() {
                if i > 0 {
                    // Each answer follows a command.
                    let mut asked = String::new();
                    std::io::BufRead::read_line(&mut reader, &mut asked).unwrap();
                }
                conn.write_all(line.as_bytes()).unwrap();
                conn.write_all(b"\n").unwrap();
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| serve(Vec::new()));
            let closed = qmp_once(dir.path(), &qmp::query_status {});
            assert!(closed.as_ref().is_err_and(|e| e.contains("before its greeting")), "{closed:?}");
            s.spawn(|| serve(vec![r#"{"event": "STOP"}"#]));
            let stray = qmp_once(dir.path(), &qmp::query_status {});
            assert!(stray.as_ref().is_err_and(|e| e.contains("not a greeting")), "{stray:?}");
            let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#;
            let status = r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#;
            s.spawn(move || serve(vec![greeting, r#"{"return": {}}"#, status]));
            let answered = qmp_once(dir.path(), &qmp::query_status {}).unwrap().unwrap();
            assert!(answered.running);
        });
    }
}
