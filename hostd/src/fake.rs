//! The fake hypervisor: deterministic and in memory, for the simulator, unit tests and
//! `drover up` on machines without a usable KVM. It models boot time (a VM is starting
//! for `boot_ms`, then running), graceful shutdown time, reboots, and crashes injected by
//! tests; snapshot and volume files live in stores that hosts sharing storage share (a
//! VM whose disk file is missing does not start). Time only moves when the caller says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use controlplane::model::{MigrationProgress, ObservedPhase, VmLimits, VolumeFormat, VolumeOp};

use crate::driver::{
    ConvergeLimits, DiskSpec, Driver, DriverError, Outgoing, OutgoingPhase, SnapshotFile, SnapshotTaken,
    VmSpec, VmStatus,
};
use crate::networks::NetworkWork;
use crate::volumes::VolumeJob;

/// How long the fake says it held a guest paused, per GiB of memory it snapshots.
pub const SNAPSHOT_MS_PER_GIB: u64 = 200;

/// What a fake snapshot file holds: whose it is, and the phase to come back in; a
/// disk-only one (`disk_only`, no memory) the disk files it imaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSnapshot {
    pub domain: String,
    pub memory_mib: u64,
    pub phase: ObservedPhase,
    pub disk_only: bool,
    pub disks: Vec<PathBuf>,
}

/// How long the fake says a disk-only snapshot takes per disk it images.
pub const DISK_SNAPSHOT_MS_PER_DISK: u64 = 20;

/// The fake's snapshot "files", by path; hosts that share storage share one.
pub type SnapshotStore = Arc<Mutex<BTreeMap<PathBuf, FakeSnapshot>>>;

/// What a fake volume file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeVolume {
    pub format: VolumeFormat,
    pub capacity_mib: u64,
    pub backing: Option<PathBuf>,
}

/// The fake's volume "files", by path; hosts that share a pool share one.
pub type VolumeStore = Arc<Mutex<BTreeMap<PathBuf, FakeVolume>>>;

#[derive(Debug, Clone)]
struct FakeVm {
    generation: u64,
    memory_mib: u64,
    phase: ObservedPhase,
    /// When the current transition (boot, shutdown) completes.
    until_ms: u64,
    reason: Option<String>,
    /// Its outgoing live migration.
    outgoing: Option<FakeOutgoing>,
    /// An incoming VM's address: it waits for its source's copy and `Go`.
    incoming: Option<String>,
}

/// An outgoing live migration, modelled: one round copies the whole memory at
/// [`MIGRATION_MIB_PER_MS`], then the VM pauses and the target holds it.
#[derive(Debug, Clone)]
struct FakeOutgoing {
    address: String,
    started_ms: u64,
    phase: OutgoingPhase,
    was_running: bool,
    progress: MigrationProgress,
    reason: Option<String>,
    /// The copy's limits as last given: its pause fits the longest one.
    limits: ConvergeLimits,
}

/// The migration streams between the fakes of a cluster's hosts, modelled: by the
/// incoming VM's address. Hosts that should reach each other share one.
pub type MigrationLinks = Arc<Mutex<BTreeMap<String, FakeLink>>>;

/// One migration stream, as its two ends see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeLink {
    pub domain: String,
    /// The source's copy is whole: the target holds the VM.
    pub complete: bool,
    /// The source said `Go` (after the commit): the target may run.
    pub go: bool,
    /// The source gave up (cancelled, failed) or is gone with its host: an incoming VM
    /// that does not hold the whole VM yet ends; one that does stays paused.
    pub gone: bool,
    /// The target refused the source at the stream's handshake (TLS: not the host it
    /// expected, a certificate it does not trust), and why: nothing of the VM crossed.
    pub refused: Option<String>,
}

/// How an incoming VM whose source gave up ends (as the own VMM's does).
pub const INCOMING_ABANDONED: &str = "incoming migration: the source went away";

/// How fast the fake copies a migrating VM's memory (1 GiB/s).
pub const MIGRATION_MIB_PER_MS: u64 = 1;
/// The downtime the fake says a switch-over took.
pub const MIGRATION_DOWNTIME_MS: u64 = 10;

/// How a start refused for being over the driver's limits begins its reason.
pub const OVER_LIMITS: &str = "over this driver's VM limits";

/// An in-memory hypervisor.
#[derive(Debug, Clone)]
pub struct FakeDriver {
    vms: BTreeMap<String, FakeVm>,
    pub boot_ms: u64,
    pub shutdown_ms: u64,
    /// Kernels that fail to boot (bad-input tests).
    pub broken_kernels: Vec<String>,
    /// Snapshot files, shared between the fakes of hosts that share storage.
    pub snapshot_store: SnapshotStore,
    /// The next snapshot fails with this reason (tests and the simulator's faults).
    pub fail_next_snapshot: Option<String>,
    /// Every restore so far: (the domain started, the domain whose snapshot it was, the
    /// file it came from).
    pub restores: Vec<(String, String, PathBuf)>,
    /// The host's lease deadline, as its VM processes would watch it: past it, every VM
    /// has ended itself and none starts. `None`: no lease kept.
    pub lease_deadline_ms: Option<u64>,
    /// Volume files, shared between the fakes of hosts that share a pool.
    pub volume_store: VolumeStore,
    /// The next volume operation fails with this reason (tests and the simulator's faults).
    pub fail_next_volume: Option<String>,
    /// Every start refused for a disk whose file is missing: (domain, path).
    pub missing_disks: Vec<(String, String)>,
    /// The networks the host serves, as last asked (by bridge).
    pub served_networks: NetworkWork,
    /// The largest VM it runs (said to the cluster); a larger one fails to start, as the
    /// own VMM refuses one. `None`: no limit.
    pub vm_limits: Option<VmLimits>,
    /// Live migrations' streams, shared with the other hosts' fakes.
    pub migration_links: MigrationLinks,
    /// The next incoming migration refuses its source at the handshake with this reason
    /// (the simulator's faults).
    pub refuse_next_incoming: Option<String>,
}

impl Default for FakeDriver {
    fn default() -> Self {
        FakeDriver::new(50, 50)
    }
}

impl FakeDriver {
    pub fn new(boot_ms: u64, shutdown_ms: u64) -> FakeDriver {
        FakeDriver {
            vms: BTreeMap::new(),
            boot_ms,
            shutdown_ms,
            broken_kernels: Vec::new(),
            snapshot_store: SnapshotStore::default(),
            fail_next_snapshot: None,
            restores: Vec::new(),
            lease_deadline_ms: None,
            volume_store: VolumeStore::default(),
            fail_next_volume: None,
            missing_disks: Vec::new(),
            served_networks: NetworkWork::default(),
            vm_limits: None,
            migration_links: MigrationLinks::default(),
            refuse_next_incoming: None,
        }
    }

    /// hostd renewed the lease at `now_ms` until `deadline_ms`. VMs whose lease passed
    /// before have ended already, whether or not anyone looked.
    pub fn renew_lease(&mut self, deadline_ms: u64, now_ms: u64) {
        self.enforce_lease(now_ms);
        self.lease_deadline_ms = Some(deadline_ms);
    }

    /// Model the VM processes' self-fencing: once the lease has passed, every live VM
    /// has ended itself.
    fn enforce_lease(&mut self, now_ms: u64) {
        self.end_abandoned_incoming();
        if self.lease_deadline_ms.is_none_or(|d| now_ms < d) {
            return;
        }
        for vm in self.vms.values_mut() {
            Self::advance(vm, now_ms);
            if vm.phase.is_live() {
                vm.phase = ObservedPhase::Crashed;
                vm.reason = Some("fenced itself: its host's lease passed".into());
            }
        }
    }

    /// An incoming VM whose source gave up before the copy was whole ends, as the own
    /// VMM's does when its stream drops while it fills; one that holds the whole VM stays
    /// paused (its host resumes it after the commit, or destroys it after a rollback).
    fn end_abandoned_incoming(&mut self) {
        let links = self.migration_links.lock().expect("migration links lock");
        for vm in self.vms.values_mut() {
            let gone = vm
                .incoming
                .as_ref()
                .and_then(|a| links.get(a))
                .is_some_and(|l| l.gone && !l.go && !l.complete);
            if gone && vm.phase.is_live() {
                vm.phase = ObservedPhase::Crashed;
                vm.reason = Some(INCOMING_ABANDONED.into());
                vm.incoming = None;
            }
        }
    }

    /// Whether `domain`'s VM is an incoming one that has not run yet (it holds the
    /// domain's memory as copied so far, but runs nothing until its source's `Go`).
    pub fn is_incoming(&self, domain: &str) -> bool {
        self.vms.get(domain).is_some_and(|vm| vm.incoming.is_some() && vm.phase.is_live())
    }

    /// Run an incoming VM now, as if its source had said go (the simulator's planted
    /// bug).
    pub fn run_incoming_now(&mut self, domain: &str, now_ms: u64) {
        let Some(address) = self.vms.get(domain).and_then(|vm| vm.incoming.clone()) else { return };
        if let Some(l) = self.migration_links.lock().expect("migration links lock").get_mut(&address) {
            l.go = true;
        }
        let _ = self.resume(domain, now_ms);
    }

    /// The host is lost with its VMs (the simulator): the streams its VMs sent on are gone.
    pub fn lose_host(&mut self) {
        let mut links = self.migration_links.lock().expect("migration links lock");
        for out in self.vms.values().filter_map(|vm| vm.outgoing.as_ref()) {
            if let Some(l) = links.get_mut(&out.address) {
                l.gone = true;
            }
        }
        drop(links);
        self.vms.clear();
    }

    /// Make a VM crash (tests and the simulator).
    pub fn crash(&mut self, domain: &str, reason: &str) {
        if let Some(vm) = self.vms.get_mut(domain) {
            vm.phase = ObservedPhase::Crashed;
            vm.reason = Some(reason.to_owned());
        }
    }

    /// One VM's status as of `now_ms` (what `list` says of it, without listing all).
    pub fn status(&mut self, domain: &str, now_ms: u64) -> Option<VmStatus> {
        self.enforce_lease(now_ms);
        let vm = self.vms.get_mut(domain)?;
        Self::advance(vm, now_ms);
        Some(VmStatus { generation: vm.generation, phase: vm.phase, reason: vm.reason.clone() })
    }

    /// The names of the VMs whose phase (as of `now_ms`) passes `keep`, incoming VMs
    /// that have not run yet left out.
    pub fn names_where(&mut self, now_ms: u64, keep: impl Fn(ObservedPhase) -> bool) -> BTreeSet<String> {
        self.enforce_lease(now_ms);
        self.vms
            .iter_mut()
            .filter_map(|(name, vm)| {
                Self::advance(vm, now_ms);
                (keep(vm.phase) && vm.incoming.is_none()).then(|| name.clone())
            })
            .collect()
    }

    fn vm(&mut self, domain: &str) -> Result<&mut FakeVm, DriverError> {
        self.vms.get_mut(domain).ok_or_else(|| DriverError::NoSuchVm(domain.to_owned()))
    }

    fn advance(vm: &mut FakeVm, now_ms: u64) {
        if now_ms >= vm.until_ms {
            match vm.phase {
                ObservedPhase::Starting => vm.phase = ObservedPhase::Running,
                ObservedPhase::ShuttingDown => vm.phase = ObservedPhase::Stopped,
                _ => {}
            }
        }
    }
}

impl Driver for FakeDriver {
    fn vm_limits(&self) -> Option<VmLimits> {
        self.vm_limits
    }

    fn start(&mut self, spec: &VmSpec, now_ms: u64) -> Result<(), DriverError> {
        if let Some(over) = self
            .vm_limits
            .and_then(|l| l.exceeded(spec.vcpus, spec.memory_mib, spec.disks.len(), spec.nics.len()))
        {
            return Err(DriverError::StartFailed {
                domain: spec.domain.clone(),
                reason: format!("{OVER_LIMITS}: {over}"),
            });
        }
        self.enforce_lease(now_ms);
        if self.lease_deadline_ms.is_some_and(|d| now_ms >= d) {
            return Err(DriverError::StartFailed {
                domain: spec.domain.clone(),
                reason: "the host's lease has passed: not started".into(),
            });
        }
        if let Some(kernel) = spec.kernel.as_ref().filter(|k| self.broken_kernels.contains(k)) {
            return Err(DriverError::StartFailed {
                domain: spec.domain.clone(),
                reason: format!("kernel {kernel} is not bootable"),
            });
        }
        if let Some(vm) = self.vms.get_mut(&spec.domain) {
            Self::advance(vm, now_ms);
            if !matches!(vm.phase, ObservedPhase::Stopped | ObservedPhase::Crashed) {
                return Err(DriverError::WrongPhase {
                    domain: spec.domain.clone(),
                    action: "start",
                    phase: vm.phase,
                });
            }
        }
        {
            let volumes = self.volume_store.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(disk) = spec.disks.iter().find(|d| !volumes.contains_key(Path::new(&d.path))) {
                drop(volumes);
                self.missing_disks.push((spec.domain.clone(), disk.path.clone()));
                return Err(DriverError::StartFailed {
                    domain: spec.domain.clone(),
                    reason: format!("disk {} is missing", disk.path),
                });
            }
        }
        let mut vm = FakeVm {
            generation: spec.generation,
            memory_mib: spec.memory_mib,
            phase: ObservedPhase::Starting,
            until_ms: now_ms + self.boot_ms,
            reason: None,
            outgoing: None,
            incoming: None,
        };
        if let Some(path) = &spec.restore_from {
            let store = self.snapshot_store.lock().unwrap_or_else(|p| p.into_inner());
            let refuse = |reason: String| DriverError::StartFailed { domain: spec.domain.clone(), reason };
            let snapshot = store
                .get(Path::new(path))
                .ok_or_else(|| refuse(format!("snapshot file {path} is missing")))?;
            if snapshot.disk_only {
                return Err(refuse(format!("{path} is a disk snapshot; it holds no memory to restore")));
            }
            if snapshot.memory_mib != spec.memory_mib {
                return Err(refuse(format!(
                    "snapshot {path} is of a {} MiB guest, the domain has {} MiB",
                    snapshot.memory_mib, spec.memory_mib
                )));
            }
            // A restore is running at once, in the phase the snapshot was taken in.
            vm.phase = snapshot.phase;
            vm.until_ms = now_ms;
            self.restores.push((spec.domain.clone(), snapshot.domain.clone(), PathBuf::from(path)));
        }
        self.vms.insert(spec.domain.clone(), vm);
        Ok(())
    }

    /// The incoming VM is there at once, paused, at a made-up address that names its
    /// stream in the shared [`MigrationLinks`].
    fn prepare_incoming(
        &mut self,
        spec: &VmSpec,
        listen_ip: std::net::IpAddr,
        _source: &str,
    ) -> Result<String, DriverError> {
        if let Some(vm) = self.vms.get(&spec.domain).filter(|vm| vm.phase.is_live()) {
            return Err(DriverError::WrongPhase {
                domain: spec.domain.clone(),
                action: "receive a live migration",
                phase: vm.phase,
            });
        }
        let address = {
            let mut links = self.migration_links.lock().expect("migration links lock");
            let port = 4_000 + (links.len() % 60_000) as u16;
            let address = std::net::SocketAddr::new(listen_ip, port).to_string();
            let refused = self.refuse_next_incoming.take();
            links.insert(
                address.clone(),
                FakeLink { domain: spec.domain.clone(), refused, ..FakeLink::default() },
            );
            address
        };
        let vm = FakeVm {
            generation: spec.generation,
            memory_mib: spec.memory_mib,
            phase: ObservedPhase::Paused,
            until_ms: 0,
            reason: None,
            outgoing: None,
            incoming: Some(address.clone()),
        };
        self.vms.insert(spec.domain.clone(), vm);
        Ok(address)
    }

    fn migrate_out(
        &mut self,
        domain: &str,
        address: &str,
        _target: &str,
        limits: ConvergeLimits,
        now_ms: u64,
    ) -> Result<(), DriverError> {
        let vm = self.vm(domain)?;
        Self::advance(vm, now_ms);
        if !matches!(vm.phase, ObservedPhase::Running | ObservedPhase::Paused) {
            return Err(DriverError::WrongPhase {
                domain: domain.to_owned(),
                action: "live-migrate",
                phase: vm.phase,
            });
        }
        vm.outgoing = Some(FakeOutgoing {
            address: address.to_owned(),
            started_ms: now_ms,
            phase: OutgoingPhase::Copying,
            was_running: vm.phase == ObservedPhase::Running,
            progress: MigrationProgress::default(),
            reason: None,
            limits,
        });
        Ok(())
    }

    fn migrate_limits(&mut self, domain: &str, limits: ConvergeLimits) -> Result<(), DriverError> {
        let vm = self.vm(domain)?;
        match vm.outgoing.as_mut() {
            Some(o) if o.phase == OutgoingPhase::Copying => {
                o.limits = limits;
                Ok(())
            }
            _ => Err(DriverError::Failed {
                domain: domain.to_owned(),
                action: "change a live migration's limits",
                reason: "no copy is under way".into(),
            }),
        }
    }

    fn outgoing(&mut self, domain: &str, now_ms: u64) -> Result<Outgoing, DriverError> {
        self.enforce_lease(now_ms);
        let links = self.migration_links.clone();
        let vm = self.vm(domain)?;
        Self::advance(vm, now_ms);
        let Some(o) = vm.outgoing.as_mut() else {
            return Err(DriverError::Failed {
                domain: domain.to_owned(),
                action: "live-migrate",
                reason: "no migration was started".into(),
            });
        };
        let mut links = links.lock().expect("migration links lock");
        if o.phase == OutgoingPhase::Copying
            && !matches!(vm.phase, ObservedPhase::Running | ObservedPhase::Paused)
        {
            // The VM ended under the copy: so does the stream.
            o.phase = OutgoingPhase::Failed;
            o.reason = Some(format!("the VM ended ({:?})", vm.phase));
            if let Some(l) = links.get_mut(&o.address) {
                l.gone = true;
            }
        }
        let refused = links.get(&o.address).and_then(|l| l.refused.clone());
        if let (OutgoingPhase::Copying, Some(reason)) = (o.phase, refused) {
            // The handshake failed: the copy never began; the incoming VM ends.
            o.phase = OutgoingPhase::Failed;
            o.reason = Some(format!("the target refused the stream: {reason}"));
            if let Some(l) = links.get_mut(&o.address) {
                l.gone = true;
            }
        }
        if o.phase == OutgoingPhase::Copying && now_ms >= o.started_ms + vm.memory_mib / MIGRATION_MIB_PER_MS
        {
            o.phase = OutgoingPhase::AwaitingSwitch;
            o.progress =
                MigrationProgress { bytes_sent: vm.memory_mib << 20, rounds: 1, ..Default::default() };
            vm.phase = ObservedPhase::Paused;
            if let Some(l) = links.get_mut(&o.address) {
                l.complete = true;
            }
        }
        Ok(Outgoing {
            address: o.address.clone(),
            phase: o.phase,
            progress: o.progress,
            reason: o.reason.clone(),
            stop_copy_us: None,
        })
    }

    fn migrate_switch(&mut self, domain: &str) -> Result<MigrationProgress, DriverError> {
        let links = self.migration_links.clone();
        let vm = self.vm(domain)?;
        match vm.outgoing.as_mut() {
            Some(o) if o.phase == OutgoingPhase::AwaitingSwitch => {
                if let Some(l) = links.lock().expect("migration links lock").get_mut(&o.address) {
                    l.go = true;
                }
                // The rounds went on until the rest fitted the longest pause allowed.
                let fits = match o.limits.max_downtime_ms {
                    0 => MIGRATION_DOWNTIME_MS,
                    most => MIGRATION_DOWNTIME_MS.min(most),
                };
                o.progress.downtime_ms = Some(fits);
                vm.phase = ObservedPhase::Stopped;
                vm.reason = Some(format!("migrated to {}", o.address));
                Ok(o.progress)
            }
            _ => Err(DriverError::Failed {
                domain: domain.to_owned(),
                action: "switch over",
                reason: "no migration awaits the switch-over".into(),
            }),
        }
    }

    fn migrate_cancel(&mut self, domain: &str) -> Result<(), DriverError> {
        let links = self.migration_links.clone();
        let vm = self.vm(domain)?;
        if let Some(o) = vm.outgoing.as_mut() {
            if matches!(o.phase, OutgoingPhase::Copying | OutgoingPhase::AwaitingSwitch) {
                if let Some(l) = links.lock().expect("migration links lock").get_mut(&o.address) {
                    l.gone = true;
                }
                if o.phase == OutgoingPhase::AwaitingSwitch && o.was_running {
                    vm.phase = ObservedPhase::Running;
                }
                o.phase = OutgoingPhase::Cancelled;
            }
        }
        Ok(())
    }

    fn pause(&mut self, domain: &str, now_ms: u64) -> Result<(), DriverError> {
        self.enforce_lease(now_ms);
        let vm = self.vm(domain)?;
        Self::advance(vm, now_ms);
        match vm.phase {
            ObservedPhase::Running | ObservedPhase::Paused => {
                vm.phase = ObservedPhase::Paused;
                Ok(())
            }
            phase => Err(DriverError::WrongPhase { domain: domain.to_owned(), action: "pause", phase }),
        }
    }

    fn resume(&mut self, domain: &str, now_ms: u64) -> Result<(), DriverError> {
        self.enforce_lease(now_ms);
        let links = self.migration_links.clone();
        let vm = self.vm(domain)?;
        Self::advance(vm, now_ms);
        if let Some(address) = &vm.incoming {
            // An incoming VM runs on its source's `Go`; its host may resume it only once it
            // holds the whole VM and its source is gone (so no copy is left there; the host
            // does so only after the commit is in its view), as a source lost after the
            // commit never says go.
            let may = links
                .lock()
                .expect("migration links lock")
                .get(address)
                .is_some_and(|l| l.go || (l.complete && l.gone));
            if !may {
                return Err(DriverError::WrongPhase {
                    domain: domain.to_owned(),
                    action: "run before its source's go",
                    phase: vm.phase,
                });
            }
            vm.incoming = None;
        }
        match vm.phase {
            ObservedPhase::Paused | ObservedPhase::Running => {
                vm.phase = ObservedPhase::Running;
                Ok(())
            }
            phase => Err(DriverError::WrongPhase { domain: domain.to_owned(), action: "resume", phase }),
        }
    }

    fn shutdown(&mut self, domain: &str, now_ms: u64) -> Result<(), DriverError> {
        self.enforce_lease(now_ms);
        let shutdown_ms = self.shutdown_ms;
        let vm = self.vm(domain)?;
        Self::advance(vm, now_ms);
        if matches!(vm.phase, ObservedPhase::Starting | ObservedPhase::Running | ObservedPhase::Paused) {
            vm.phase = ObservedPhase::ShuttingDown;
            vm.until_ms = now_ms + shutdown_ms;
        }
        Ok(())
    }

    fn destroy(&mut self, domain: &str, _now_ms: u64) -> Result<(), DriverError> {
        let vm = self.vm(domain)?;
        if vm.phase != ObservedPhase::Crashed {
            vm.phase = ObservedPhase::Stopped;
        }
        Ok(())
    }

    fn reboot(&mut self, domain: &str, now_ms: u64) -> Result<(), DriverError> {
        self.enforce_lease(now_ms);
        let boot_ms = self.boot_ms;
        let vm = self.vm(domain)?;
        vm.phase = ObservedPhase::Starting;
        vm.until_ms = now_ms + boot_ms;
        Ok(())
    }

    fn snapshot(&mut self, domain: &str, path: &Path, now_ms: u64) -> Result<SnapshotTaken, DriverError> {
        self.enforce_lease(now_ms);
        let failure = self.fail_next_snapshot.take();
        let vm = self.vm(domain)?;
        Self::advance(vm, now_ms);
        if !matches!(vm.phase, ObservedPhase::Running | ObservedPhase::Paused) {
            return Err(DriverError::WrongPhase {
                domain: domain.to_owned(),
                action: "snapshot",
                phase: vm.phase,
            });
        }
        if let Some(reason) = failure {
            return Err(DriverError::Failed { domain: domain.to_owned(), action: "snapshot", reason });
        }
        let taken = FakeSnapshot {
            domain: domain.to_owned(),
            memory_mib: vm.memory_mib,
            phase: vm.phase,
            disk_only: false,
            disks: Vec::new(),
        };
        let bytes = vm.memory_mib << 20;
        let duration_ms = vm.memory_mib * SNAPSHOT_MS_PER_GIB / 1024;
        self.snapshot_store.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_owned(), taken);
        Ok(SnapshotTaken { bytes, duration_ms })
    }

    fn disk_snapshot(
        &mut self,
        domain: &str,
        disks: &[DiskSpec],
        path: &Path,
    ) -> Result<SnapshotTaken, DriverError> {
        let failed = |reason: String| DriverError::Failed {
            domain: domain.to_owned(),
            action: "take a disk snapshot",
            reason,
        };
        if let Some(reason) = self.fail_next_snapshot.take() {
            return Err(failed(reason));
        }
        let writable: Vec<PathBuf> =
            disks.iter().filter(|d| !d.read_only).map(|d| PathBuf::from(&d.path)).collect();
        let volumes = self.volume_store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(missing) = writable.iter().find(|d| !volumes.contains_key(*d)) {
            return Err(failed(format!("disk {} is missing", missing.display())));
        }
        drop(volumes);
        let duration_ms = writable.len() as u64 * DISK_SNAPSHOT_MS_PER_DISK;
        let taken = FakeSnapshot {
            domain: domain.to_owned(),
            memory_mib: 0,
            phase: ObservedPhase::Stopped,
            disk_only: true,
            disks: writable,
        };
        self.snapshot_store.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_owned(), taken);
        Ok(SnapshotTaken { bytes: 0, duration_ms })
    }

    fn restore_disks(&mut self, domain: &str, disks: &[DiskSpec], path: &Path) -> Result<(), DriverError> {
        let refuse = |reason: String| DriverError::StartFailed {
            domain: domain.to_owned(),
            reason: format!("restoring its disks: {reason}"),
        };
        let store = self.snapshot_store.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot =
            store.get(path).ok_or_else(|| refuse(format!("snapshot file {} is missing", path.display())))?;
        if !snapshot.disk_only || snapshot.domain != domain {
            return Err(refuse(format!("{} is not a disk snapshot of {domain}", path.display())));
        }
        let writable: Vec<PathBuf> =
            disks.iter().filter(|d| !d.read_only).map(|d| PathBuf::from(&d.path)).collect();
        if writable != snapshot.disks {
            return Err(refuse(format!(
                "{} imaged {:?}, the domain's writable disks are {writable:?}",
                path.display(),
                snapshot.disks
            )));
        }
        let from = snapshot.domain.clone();
        drop(store);
        self.restores.push((domain.to_owned(), from, path.to_owned()));
        Ok(())
    }

    fn snapshot_files(&mut self, dir: &Path) -> Vec<SnapshotFile> {
        let store = self.snapshot_store.lock().unwrap_or_else(|p| p.into_inner());
        store
            .keys()
            .filter_map(|path| {
                let rest = path.strip_prefix(dir).ok()?;
                let domain = rest.parent()?.to_str()?.to_owned();
                let (name, id) = crate::driver::parse_snapshot_stem(rest.file_stem()?.to_str()?)?;
                Some(SnapshotFile { domain, name, id, path: path.clone() })
            })
            .collect()
    }

    fn remove_snapshot_file(&mut self, path: &Path) -> Result<(), DriverError> {
        self.snapshot_store.lock().unwrap_or_else(|p| p.into_inner()).remove(path);
        Ok(())
    }

    fn volume(&mut self, job: &VolumeJob) -> Result<u64, DriverError> {
        let failed = |reason: String| DriverError::Volume {
            volume: job.volume.to_string(),
            action: job.op.name(),
            reason,
        };
        let mut store = self.volume_store.lock().unwrap_or_else(|p| p.into_inner());
        let made = FakeVolume {
            format: job.format,
            capacity_mib: job.capacity_mib,
            backing: job.backing.as_ref().map(|(path, _)| path.clone()),
        };
        // As `dir_pool` does: a create first looks for the file, which is its own earlier
        // work or that of a host fenced before reporting it, and only then can fail making it.
        if matches!(job.op, VolumeOp::Create { .. }) && store.get(&job.path) == Some(&made) {
            return Ok(0);
        }
        if let Some(reason) = self.fail_next_volume.take() {
            return Err(failed(reason));
        }
        match &job.op {
            VolumeOp::Create { .. } => {
                if store.contains_key(&job.path) {
                    return Err(failed(format!("{} already exists", job.path.display())));
                }
                if let Some(backing) = made.backing.as_ref().filter(|b| !store.contains_key(*b)) {
                    return Err(failed(format!("the backing file {} is missing", backing.display())));
                }
                store.insert(job.path.clone(), made);
            }
            VolumeOp::Resize { capacity_mib } => {
                let file = store
                    .get_mut(&job.path)
                    .ok_or_else(|| failed(format!("{} is missing", job.path.display())))?;
                file.capacity_mib = file.capacity_mib.max(*capacity_mib);
            }
            VolumeOp::Delete => {
                store.remove(&job.path);
            }
        }
        // Sparse: nothing written yet.
        Ok(0)
    }

    fn serve_networks(&mut self, work: &NetworkWork) -> Vec<(String, String)> {
        self.served_networks = work.clone();
        Vec::new()
    }

    fn remove(&mut self, domain: &str) {
        self.vms.remove(domain);
    }

    fn list(&mut self, now_ms: u64) -> BTreeMap<String, VmStatus> {
        self.enforce_lease(now_ms);
        self.vms
            .iter_mut()
            .map(|(name, vm)| {
                Self::advance(vm, now_ms);
                (
                    name.clone(),
                    VmStatus { generation: vm.generation, phase: vm.phase, reason: vm.reason.clone() },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kernel: &str) -> VmSpec {
        VmSpec {
            domain: "web".into(),
            generation: 1,
            vcpus: 1,
            memory_mib: 64,
            kernel: Some(kernel.into()),
            initrd: None,
            cmdline: String::new(),
            disks: Vec::new(),
            nics: Vec::new(),
            restore_from: None,
            disks_from: None,
        }
    }

    /// An incoming VM runs on its source's go. Once it holds the whole VM it outlives its
    /// source (its host resumes it after the commit); before that it ends with it.
    #[test]
    fn an_incoming_vm_that_holds_the_whole_vm_outlives_a_lost_source() {
        let links = MigrationLinks::default();
        let pair = || {
            let (mut a, mut b) = (FakeDriver::new(0, 0), FakeDriver::new(0, 0));
            a.migration_links = links.clone();
            b.migration_links = links.clone();
            a.start(&spec("/k"), 0).unwrap();
            let mut next = spec("/k");
            next.generation = 2;
            let address = b.prepare_incoming(&next, "10.0.0.2".parse().unwrap(), "a").unwrap();
            a.migrate_out("web", &address, "b", crate::migrations::LIMITS_DEFAULT, 10).unwrap();
            (a, b)
        };
        // Whole: refused while the source may still say go, resumable once it is gone.
        let (mut a, mut b) = pair();
        let whole = 10 + 64 / MIGRATION_MIB_PER_MS;
        assert_eq!(a.outgoing("web", whole).unwrap().phase, OutgoingPhase::AwaitingSwitch);
        assert!(matches!(b.resume("web", whole), Err(DriverError::WrongPhase { .. })));
        a.lose_host();
        assert_eq!(b.status("web", whole + 1).unwrap().phase, ObservedPhase::Paused);
        b.resume("web", whole + 1).unwrap();
        assert_eq!(b.list(whole + 2)["web"].phase, ObservedPhase::Running);
        // Not whole yet: it ends with its source.
        let (mut a, mut b) = pair();
        a.lose_host();
        let vm = b.status("web", 11).unwrap();
        assert_eq!((vm.phase, vm.reason.as_deref()), (ObservedPhase::Crashed, Some(INCOMING_ABANDONED)));
    }

    #[test]
    fn models_boot_shutdown_pause_crash_and_bad_kernels() {
        let mut d = FakeDriver::new(100, 50);
        d.start(&spec("/k"), 1_000).unwrap();
        assert_eq!(d.list(1_050)["web"].phase, ObservedPhase::Starting);
        assert_eq!(d.list(1_100)["web"].phase, ObservedPhase::Running);
        d.pause("web", 1_200).unwrap();
        assert_eq!(d.list(1_200)["web"].phase, ObservedPhase::Paused);
        d.resume("web", 1_300).unwrap();
        d.shutdown("web", 1_400).unwrap();
        assert_eq!(d.list(1_420)["web"].phase, ObservedPhase::ShuttingDown);
        assert_eq!(d.list(1_450)["web"].phase, ObservedPhase::Stopped);
        assert!(matches!(d.pause("web", 1_500), Err(DriverError::WrongPhase { .. })));
        d.start(&spec("/k"), 2_000).unwrap();
        d.crash("web", "triple fault");
        let vm = &d.list(2_500)["web"];
        assert_eq!((vm.phase, vm.reason.as_deref()), (ObservedPhase::Crashed, Some("triple fault")));
        d.remove("web");
        assert!(d.list(3_000).is_empty());
        d.broken_kernels.push("/broken".into());
        assert!(matches!(d.start(&spec("/broken"), 0), Err(DriverError::StartFailed { .. })));
        assert!(matches!(d.destroy("nope", 0), Err(DriverError::NoSuchVm(_))));
    }
}
