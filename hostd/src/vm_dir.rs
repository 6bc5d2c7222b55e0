//! The process drivers' (kvm, qemu) shared skeleton: a VM's run directory
//! `<run_dir>/<domain>/` with the driver's record of the VM (`config.json`: domain,
//! generation, pid) and its exit record (`exit.json`, `vmm_control::control::ExitRecord`, one
//! format for the VMM and QEMU) beside the hypervisor's own files. The records are what
//! let a restarted hostd find its VMs and learn how the ones it did not watch ended.
//!
//! A start goes the same way in both: the last run must be over and its process gone
//! (`ensure_ended`), the directory is made ready (`prepare`), the NICs plugged
//! (`tap::plug_nics`), the process spawned and recorded (`spawn`), then awaited until it
//! answers (`wait_up`); a failure after the spawn leaves nothing to adopt (`abandon`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use controlplane::model::ObservedPhase;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::driver::DriverError;

/// The driver's record file in each VM directory.
pub const RECORD_FILE: &str = vmm_control::control::CONFIG_FILE;
/// How the VM ended (written by the VMM, or by the qemu driver for QEMU).
pub const EXIT_FILE: &str = vmm_control::control::EXIT_FILE;

/// One VM process a driver knows of.
#[derive(Debug)]
pub struct VmProcess {
    pub generation: u64,
    pub pid: u32,
    pub dir: PathBuf,
    /// Our child, when this driver started it (reaped in `reap`).
    pub child: Option<Child>,
    /// A graceful shutdown was asked for.
    pub shutting_down: bool,
    /// VM exits its hypervisor counted, as of its last status (the own VMM says).
    pub exits: Option<u64>,
}

impl VmProcess {
    /// A VM this driver just started.
    pub fn started(generation: u64, dir: PathBuf, child: Child) -> VmProcess {
        VmProcess { generation, pid: child.id(), dir, child: Some(child), shutting_down: false, exits: None }
    }

    /// A VM found in the run directory after a restart (not our child).
    pub fn adopted(record: &Record, dir: PathBuf) -> VmProcess {
        VmProcess {
            generation: record.generation,
            pid: record.pid,
            dir,
            child: None,
            shutting_down: false,
            exits: None,
        }
    }

    /// Collect our child's exit status if it has ended, so no zombie is left.
    pub fn reap(&mut self) {
        if let Some(child) = &mut self.child {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
            }
        }
    }

    /// Wait for our child to end (after it was told or made to).
    pub fn wait_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Forget the VM: wait for our child and drop the records; the console and
    /// hypervisor logs stay for the operator.
    pub fn forget(mut self) {
        self.wait_child();
        for f in [RECORD_FILE, EXIT_FILE] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
    }
}

/// What a driver writes beside each VM, so a later hostd knows whose process it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub domain: String,
    pub generation: u64,
    pub pid: u32,
}

impl Record {
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        let body = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        std::fs::write(dir.join(RECORD_FILE), body).map_err(|e| e.to_string())
    }

    pub fn read(dir: &Path) -> Option<Record> {
        let text = std::fs::read_to_string(dir.join(RECORD_FILE)).ok()?;
        match serde_json::from_str(&text) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "unreadable VM record; ignoring the directory");
                None
            }
        }
    }
}

/// Every VM directory under `run_dir` that holds a record.
pub fn recorded(run_dir: &Path) -> Vec<(PathBuf, Record)> {
    let Ok(entries) = std::fs::read_dir(run_dir) else { return Vec::new() };
    let mut found: Vec<(PathBuf, Record)> =
        entries.flatten().filter_map(|e| Record::read(&e.path()).map(|r| (e.path(), r))).collect();
    found.sort_by(|a, b| a.1.domain.cmp(&b.1.domain));
    found
}

/// The directory for `domain`, refusing names that would escape `run_dir`.
pub fn dir_for(run_dir: &Path, domain: &str) -> Result<PathBuf, String> {
    if domain.is_empty() || domain.contains('/') || domain.starts_with('.') {
        return Err(format!("{domain:?} cannot name a run directory"));
    }
    Ok(run_dir.join(domain))
}

/// How long a start waits for the process of the domain's ended run to exit.
pub const OLD_PROCESS_EXIT_WAIT: Duration = Duration::from_secs(5);

/// Whether a new run of `domain` may start beside `vm`, its last one, now in `phase`: only
/// once that run is over and its process has exited (on its way out it removes its
/// sockets, which must not be the new process's: same directory).
pub fn ensure_ended(vm: &mut VmProcess, phase: ObservedPhase, domain: &str) -> Result<(), DriverError> {
    if !matches!(phase, ObservedPhase::Stopped | ObservedPhase::Crashed) {
        return Err(DriverError::WrongPhase { domain: domain.to_owned(), action: "start", phase });
    }
    let deadline = Instant::now() + OLD_PROCESS_EXIT_WAIT;
    let mut alive = || {
        vm.reap();
        process_alive(vm.pid) && runs_in(vm.pid, &vm.dir)
    };
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    if alive() {
        return Err(DriverError::StartFailed {
            domain: domain.to_owned(),
            reason: format!(
                "the process of its last run (pid {}) has not exited {} ms after the run ended",
                vm.pid,
                OLD_PROCESS_EXIT_WAIT.as_millis()
            ),
        });
    }
    Ok(())
}

/// `domain`'s run directory, made ready for a new VM process: created, without the last
/// run's records or the files in `stale` (its sockets).
pub fn prepare(run_dir: &Path, domain: &str, stale: &[&str]) -> Result<PathBuf, String> {
    let dir = dir_for(run_dir, domain)?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for file in [RECORD_FILE, EXIT_FILE].iter().chain(stale) {
        let _ = std::fs::remove_file(dir.join(file));
    }
    Ok(dir)
}

/// Where and as what a VM process runs, for [`spawn`].
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// What the process is, for messages ("QEMU", "the VMM").
    pub what: &'a str,
    pub dir: &'a Path,
    /// Its stdout and stderr, a file in `dir`.
    pub log: &'a str,
    pub domain: &'a str,
    pub generation: u64,
}

/// Start `cmd` as run `generation` of `domain` in `dir`: no stdin, stdout and stderr to
/// the file `log` there, in a process group of its own (it outlives hostd), and recorded
/// before this returns (a process that cannot be recorded is killed: no hostd could find
/// it again).
pub fn spawn(cmd: &mut Command, launch: Launch<'_>) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let Launch { what, dir, log, domain, generation } = launch;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = std::fs::File::create(dir.join(log)).map_err(|e| format!("{log}: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("{log}: {e}"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {what} ({program}): {e}"))?;
    let record = Record { domain: domain.to_owned(), generation, pid: child.id() };
    if let Err(e) = record.write(dir) {
        abandon(&mut child, dir);
        return Err(format!("recording the VM: {e}"));
    }
    Ok(child)
}

/// Give up a VM process whose start failed after its spawn: kill it, reap it, and remove
/// its record so no later hostd adopts it.
pub fn abandon(child: &mut Child, dir: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(dir.join(RECORD_FILE));
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether live process `pid` was started for `dir` (its command line names it), so a
/// recycled pid is never mistaken for a VM.
pub fn runs_in(pid: u32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
        .unwrap_or(false)
}

/// What process `pid` uses: its CPU time (user + system, every thread) and resident
/// memory, from `/proc`; `None` once it is gone.
pub fn usage(pid: u32) -> Option<crate::metrics::VmUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces), from field 3 (state).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(crate::metrics::VmUsage {
        cpu_seconds: ticks as f64 / rustix::param::clock_ticks_per_second() as f64,
        resident_bytes: pages * rustix::param::page_size() as u64,
        exits: None,
    })
}

/// The usage of every VM process in `vms` that is still there (and still the VM's: a
/// recycled pid is someone else's).
pub fn usage_of<'a>(
    vms: impl Iterator<Item = (&'a String, &'a VmProcess)>,
) -> std::collections::BTreeMap<String, crate::metrics::VmUsage> {
    vms.filter(|(_, vm)| runs_in(vm.pid, &vm.dir))
        .filter_map(|(domain, vm)| {
            Some((domain.clone(), crate::metrics::VmUsage { exits: vm.exits, ..usage(vm.pid)? }))
        })
        .collect()
}

/// SIGKILL `pid`.
pub fn kill(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        if let Err(e) = rustix::process::kill_process(p, rustix::process::Signal::KILL) {
            warn!(pid, error = %e, "killing a VM process failed");
        }
    }
}

/// How a freshly spawned VM process came out of its start.
#[derive(Debug)]
pub enum StartOutcome {
    /// It answers on its control socket.
    Up,
    /// It exited first.
    Exited(ExitStatus),
    /// Neither within the timeout; it has been killed and reaped.
    TimedOut,
}

/// Wait until `answers()` or until `child` exits, for at most `timeout_ms`. On a failure
/// the driver's record in `dir` is removed, so no later hostd adopts the corpse.
pub fn wait_up(child: &mut Child, dir: &Path, timeout_ms: u64, answers: impl Fn() -> bool) -> StartOutcome {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let outcome = loop {
        if answers() {
            return StartOutcome::Up;
        }
        if let Ok(Some(status)) = child.try_wait() {
            break StartOutcome::Exited(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break StartOutcome::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = std::fs::remove_file(dir.join(RECORD_FILE));
    outcome
}
