//! One VM: KVM objects, guest memory, devices, and the vCPU thread that runs it, plus the
//! handle the control socket uses to pause, resume, reset and end it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootEntry, BootError};
use crate::config::{ConfigError, VmConfig};
use crate::console_log::ConsoleLog;
use crate::control::Phase;
use crate::devices::power::Power;
use crate::devices::serial::{Console, IrqLine};
use crate::devices::virtio_blk::Block;
use crate::devices::virtio_mmio::MmioTransport;
use crate::devices::virtio_net::{self, Net, RxThread};
use crate::devices::{Bus, BusEvent};
use crate::layout;
use crate::mptable;
use crate::snapshot::{self, DiskState, KvmVmState, SnapshotError, SnapshotInfo, VcpuState, VmState};
use crate::vcpu::{self, VcpuError};

/// KVM exit codes for KVM_EXIT_SYSTEM_EVENT.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
/// How often a pause request re-kicks a vCPU that has not stopped yet.
const KICK_INTERVAL_MS: u64 = 1;
/// How long pause and resume wait for the vCPU thread to answer.
const TRANSITION_TIMEOUT_MS: u64 = 1_000;
/// A throttled vCPU is interrupted this often and then sits out its share of the period.
pub const THROTTLE_PERIOD_MS: u64 = 10;
/// The most a vCPU is throttled (it always runs a little, so the guest keeps time).
pub const THROTTLE_PERCENT_MAX: u8 = 99;
/// How long a live migration's target tries to lock the disks its source is giving up.
pub const DISK_CLAIM_TIMEOUT_MS: u64 = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("KVM: {what}: {source}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the VM has ended")]
    Ended,
    #[error("the vCPU did not {0} in time")]
    Timeout(&'static str),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the VM is {0}")]
    Busy(&'static str),
}

/// What a VM starts from.
#[derive(Debug)]
pub enum Source {
    /// Boot the configured kernel.
    Kernel,
    /// Continue from a snapshot file (`crate::snapshot`); the kernel is kept for reboots.
    Snapshot(PathBuf),
    /// Continue from what a live migration brought (`crate::migration::receive`): the
    /// guest's memory and its state, in the KVM VM made for that memory before the copy
    /// began. The VM starts paused; disks are on storage both hosts share, as the source
    /// left them.
    Migrated(Box<(GuestMemoryMmap, VmState, Shell)>),
}

/// A KVM VM (TSS, irqchip, PIT) with its guest memory registered, before any device or
/// vCPU. A live migration's target makes it before its source connects: registering the
/// memory takes milliseconds under some KVMs (5 to 10 ms under kvm-pvm), which would
/// otherwise be part of the guest's pause. Pages written into the memory afterwards are
/// the guest's as KVM sees it (the slot maps the process's memory, not a copy). A shell
/// is made for one memory and goes with it only (`Source::Migrated` carries the two
/// together; `Vm::start_from` keeps that memory for the VM's life): it has no vCPU, so
/// nothing runs guest code in it before then (`register_memory`'s SAFETY).
#[derive(Debug)]
pub struct Shell {
    vm_fd: Arc<VmFd>,
}

impl Shell {
    pub fn new(mem: &GuestMemoryMmap) -> Result<Shell, VmError> {
        let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
        let vm_fd = new_vm(&kvm)?;
        register_memory(&vm_fd, mem, false)?;
        Ok(Shell { vm_fd })
    }
}

/// A new KVM VM with the x86 pieces every guest here has: the TSS, the in-kernel
/// irqchip and PIT.
fn new_vm(kvm: &Kvm) -> Result<Arc<VmFd>, VmError> {
    let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("creating the VM"))?);
    vm_fd.set_tss_address(layout::KVM_TSS_ADDRESS).map_err(kvm_err("setting the TSS address"))?;
    vm_fd.create_irq_chip().map_err(kvm_err("creating the irqchip"))?;
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm_fd.create_pit2(pit).map_err(kvm_err("creating the PIT"))?;
    Ok(vm_fd)
}

/// A restore's source, once opened and checked.
enum Restore<'s> {
    Snapshot(snapshot::Reader),
    Migrated(&'s GuestMemoryMmap, &'s VmState),
}

impl Restore<'_> {
    fn state(&self) -> &VmState {
        match self {
            Restore::Snapshot(reader) => &reader.state,
            Restore::Migrated(_, state) => state,
        }
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Where the vCPU threads are, shared with the control side.
#[derive(Debug)]
struct RunState {
    phase: Phase,
    reason: Option<String>,
    /// vCPU threads sitting in `park`; the VM is Paused when all of them are.
    parked: usize,
    /// For each vCPU, the last reset (a `reset_generation` value) it has carried out.
    reset_done: Vec<u64>,
    /// For each vCPU, its state for the snapshot being taken, once it has saved it.
    captured: Vec<Option<Result<VcpuState, String>>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<RunState>,
    changed: Condvar,
    pause_requested: AtomicBool,
    /// Raised by one for every reset asked for (by the guest or the control socket); each
    /// vCPU carries out the newest one it has not yet.
    reset_generation: AtomicU64,
    stop_requested: AtomicBool,
    /// Raised by one for every snapshot; each parked vCPU saves its state into
    /// `RunState::captured` once per value.
    capture_generation: AtomicU64,
    /// The MSRs a snapshot saves (what the host's KVM lists).
    msr_indices: Vec<u32>,
    /// Whether this host's XSAVE area fits `kvm_xsave` (4 KiB), which is all a snapshot
    /// saves and restores; where it does not (KVM_CAP_XSAVE2 reports more, e.g. AMX),
    /// snapshots are refused.
    xsave_fits: bool,
    /// Serial input arrived: an idle guest should look at it.
    input_pending: AtomicBool,
    /// The share of each [`THROTTLE_PERIOD_MS`] the vCPUs sit out (live migration's
    /// auto-converge); 0: not throttled.
    throttle_percent: AtomicU8,
    /// Whether the thread that interrupts throttled vCPUs runs.
    throttle_ticking: AtomicBool,
    exits: AtomicU64,
    /// The vCPU threads, for kicks; emptied (under the lock) before they are joined, so a
    /// kick never targets a joined thread.
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request_reset(&self) {
        self.reset_generation.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Interrupt every vCPU that is in KVM_RUN, so it looks at the requests.
    fn kick_all(&self) {
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for t in threads.iter() {
            // SAFETY: the ids come from JoinHandles whose threads are joined only after
            // `Vm::wait` has emptied this list under the same lock, so each id is still
            // valid (a finished, unjoined thread makes pthread_kill fail with ESRCH, which
            // is harmless). The signal has a no-op handler, installed by `Vm::start`
            // before any vCPU thread existed.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Kick every vCPU, then wait up to one kick interval for the state to change.
    fn kick_and_wait<'a>(
        &'a self,
        state: std::sync::MutexGuard<'a, RunState>,
    ) -> std::sync::MutexGuard<'a, RunState> {
        drop(state);
        self.kick_all();
        let state = self.state();
        self.changed
            .wait_timeout(state, Duration::from_millis(KICK_INTERVAL_MS))
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    fn set(&self, phase: Phase, reason: Option<String>) {
        let mut s = self.state();
        if !ended(s.phase) {
            s.phase = phase;
            s.reason = reason;
        }
        self.changed.notify_all();
    }
}

fn ended(phase: Phase) -> bool {
    matches!(phase, Phase::Stopped | Phase::Crashed | Phase::Destroyed)
}

/// A VM whose vCPU thread is running.
#[derive(Debug)]
pub struct Vm {
    config: VmConfig,
    shared: Arc<Shared>,
    bus: Arc<Bus>,
    /// The vCPU threads, taken out by `wait` to join them.
    vcpu_threads: Mutex<Vec<JoinHandle<()>>>,
    /// The NICs' receive threads, stopped once the vCPU has ended.
    rx_threads: Mutex<Vec<RxThread>>,
    /// Kept for the VM's lifetime: the memory slots and irqchip belong to it.
    vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    /// Whether `mem` maps a snapshot's file (else it is anonymous memory).
    restored: bool,
    /// Whether the disks' images are locked for this VM: not yet for a live migration's
    /// target (its source holds them until the switch-over), no more for a source after
    /// it. The vCPUs run only while they are.
    disks_claimed: AtomicBool,
}

/// Everything one vCPU thread owns.
struct VcpuRunner {
    vcpu: VcpuFd,
    /// 0 is the boot processor.
    index: usize,
    /// The last reset this vCPU carried out.
    reset_seen: u64,
    /// The last snapshot this vCPU saved its state for.
    capture_seen: u64,
    mem: GuestMemoryMmap,
    bus: Arc<Bus>,
    shared: Arc<Shared>,
    config: VmConfig,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal only makes KVM_RUN return EINTR.
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

impl Vm {
    /// Create the VM, load the kernel and start the vCPU thread.
    pub fn start(config: VmConfig) -> Result<Vm, VmError> {
        Vm::start_from(config, &Source::Kernel)
    }

    /// Create the VM and start its vCPUs from `source`. A snapshot is checked whole (its
    /// format, checksums, and that it fits `config`) before any vCPU exists.
    pub fn start_from(config: VmConfig, source: &Source) -> Result<Vm, VmError> {
        config.validate()?;
        let read_only: Vec<bool> = config.disks.iter().map(|d| d.read_only).collect();
        let restore = match source {
            Source::Kernel => None,
            Source::Snapshot(path) => Some(Restore::Snapshot(snapshot::Reader::open(path)?)),
            Source::Migrated(migrated) => Some(Restore::Migrated(&migrated.0, &migrated.1)),
        };
        if let Some(r) = &restore {
            r.state().check_fits(
                config.memory_mib,
                usize::from(config.vcpus),
                &read_only,
                config.nics.len(),
            )?;
        }
        vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| VmError::Io { what: "installing the vCPU kick handler".into(), source: e.into() })?;
        let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
        // A migrated VM's KVM VM exists already, its memory registered (`Shell`).
        let shell = match source {
            Source::Migrated(migrated) => Some(migrated.2.vm_fd.clone()),
            _ => None,
        };
        let vm_fd = match &shell {
            Some(vm_fd) => vm_fd.clone(),
            None => new_vm(&kvm)?,
        };

        let memory_bytes = config.memory_mib << 20;
        let mem = match &restore {
            // The snapshot's memory image, mapped copy-on-write: nothing is copied.
            Some(Restore::Snapshot(reader)) => reader.guest_memory()?,
            Some(Restore::Migrated(mem, _)) => (*mem).clone(),
            None => GuestMemoryMmap::from_ranges(&[(GuestAddress(0), memory_bytes as usize)])
                .map_err(|e| VmError::Memory(e.to_string()))?,
        };
        if shell.is_none() {
            register_memory(&vm_fd, &mem, false)?;
        }
        let saved: Option<&VmState> = restore.as_ref().map(Restore::state);

        let serial_irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| VmError::Io { what: "eventfd".into(), source: e })?;
        vm_fd
            .register_irqfd(&serial_irq, layout::COM1_IRQ)
            .map_err(kvm_err("wiring the serial interrupt"))?;
        let log = ConsoleLog::open(&config.console_log, config.console_log_bytes_max).map_err(|e| {
            VmError::Io { what: format!("console log {}", config.console_log.display()), source: e }
        })?;
        let console = match saved {
            None => Console::new(IrqLine(serial_irq), log),
            Some(s) => {
                Console::from_state(IrqLine(serial_irq), log, &s.serial).map_err(SnapshotError::Mismatch)?
            }
        };
        let console = Arc::new(Mutex::new(console));
        // The writable disks go back to the snapshot's instant: each image is written
        // beside its disk (all of them checked and written before any VM device exists)
        // and opened from there, and moved over the disks only once the whole VM is
        // restored, so a restore that fails leaves every disk as it was.
        let migrated = matches!(restore, Some(Restore::Migrated(..)));
        let mut prepared = Vec::new();
        let mut opened_at = Vec::new();
        for (i, disk) in config.disks.iter().enumerate() {
            let image = match &restore {
                Some(Restore::Snapshot(reader)) if !disk.read_only => reader.prepare_disk(i, &disk.path)?,
                _ => None,
            };
            opened_at.push(image.as_ref().map_or(disk.path.clone(), |p| p.path().to_owned()));
            prepared.extend(image);
        }
        let mut disks = Vec::new();
        for (i, (disk, path)) in config.disks.iter().zip(&opened_at).enumerate() {
            let open = if migrated { Block::open_unclaimed } else { Block::open };
            let block = open(path, disk.read_only, &config.domain).map_err(|e| VmError::Io {
                what: format!("disk {i} ({})", disk.path.display()),
                source: e,
            })?;
            let irq = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| VmError::Io { what: "eventfd".into(), source: e })?;
            vm_fd.register_irqfd(&irq, layout::disk_slot(i).1).map_err(kvm_err("wiring a disk interrupt"))?;
            let sectors = block.capacity_sectors();
            let mut transport = MmioTransport::new(block, mem.clone(), irq);
            if let Some(state) = saved.map(|s| &s.disks[i]) {
                // A read-only disk is not in the snapshot: it must be the same size (the
                // guest knows its capacity); its contents are the host's business.
                if disk.read_only && state.sectors != sectors {
                    return Err(SnapshotError::Mismatch(format!(
                        "disk {i}: {} has {sectors} sectors, the snapshot's read-only disk had {}",
                        disk.path.display(),
                        state.sectors
                    ))
                    .into());
                }
                transport
                    .restore(&state.transport)
                    .map_err(|e| SnapshotError::Mismatch(format!("disk {i}: {e}")))?;
            }
            disks.push(Mutex::new(transport));
        }
        let mut nics = Vec::new();
        let mut taps = Vec::new();
        for (i, nic) in config.nics.iter().enumerate() {
            let io = |what: String| move |source| VmError::Io { what, source };
            let tap = virtio_net::open_tap(&nic.tap).map_err(io(format!("NIC {i}")))?;
            let rx_tap = tap.try_clone().map_err(io(format!("NIC {i}: cloning the tap fd")))?;
            let mac = virtio_net::parse_mac(&nic.mac).expect("validated");
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd".into()))?;
            vm_fd.register_irqfd(&irq, layout::nic_slot(i).1).map_err(kvm_err("wiring a NIC interrupt"))?;
            let mut transport = MmioTransport::new(Net::new(tap, mac), mem.clone(), irq);
            if let Some(s) = saved {
                transport
                    .restore(&s.nics[i])
                    .map_err(|e| SnapshotError::Mismatch(format!("NIC {i}: {e}")))?;
                // A clone has its own MAC: the guest learned the snapshot's at boot and
                // is told to read it again.
                if s.nic_macs.get(i) != Some(&mac) {
                    transport.config_changed();
                }
            }
            nics.push(Arc::new(Mutex::new(transport)));
            taps.push(rx_tap);
        }
        let bus = Arc::new(Bus {
            console,
            power: Power::default(),
            disks,
            nics: nics.clone(),
            unclaimed: AtomicU64::new(0),
        });
        let mut rx_threads = Vec::new();
        for (i, (nic, tap)) in nics.into_iter().zip(taps).enumerate() {
            let rx = virtio_net::spawn_rx(format!("net{i}-rx"), tap, nic).map_err(|e| VmError::Io {
                what: format!("NIC {i}: starting its receive thread"),
                source: e,
            })?;
            rx_threads.push(rx);
        }

        let entry = match saved {
            None => {
                let entry = boot::load(
                    &mem,
                    memory_bytes,
                    &config.kernel,
                    config.initrd.as_deref(),
                    &full_cmdline(&config),
                )?;
                mptable::write(&mem, config.vcpus).map_err(|e| VmError::Memory(e.to_string()))?;
                Some(entry)
            }
            Some(s) => {
                s.kvm.restore(&vm_fd)?;
                None
            }
        };
        if saved.is_some() && !xsave_fits(&vm_fd) {
            return Err(SnapshotError::Mismatch(XSAVE_TOO_BIG.into()).into());
        }
        let mut vcpus = Vec::new();
        for i in 0..config.vcpus {
            let vcpu = vm_fd.create_vcpu(u64::from(i)).map_err(kvm_err("creating a vCPU"))?;
            vcpu::set_cpuid(&kvm, &vcpu, i, config.vcpus)?;
            match (saved, entry) {
                (Some(s), _) => s.vcpus[usize::from(i)].restore(&vcpu)?,
                (None, Some(entry)) if i == 0 => vcpu::configure(&vcpu, &mem, entry)?,
                (None, _) => vcpu::configure_ap(&vcpu)?,
            }
            vcpus.push(vcpu);
        }
        let msr_indices = kvm.get_msr_index_list().map_err(kvm_err("listing MSRs"))?.as_slice().to_vec();
        let xsave_fits = xsave_fits(&vm_fd);
        snapshot::commit_disks(prepared)?;
        let start_paused = saved.is_some_and(|s| s.paused);

        let shared = Arc::new(Shared {
            state: Mutex::new(RunState {
                // A VM restored paused is paused from the start (its vCPUs park at once),
                // not running for the moment until they have.
                phase: if start_paused { Phase::Paused } else { Phase::Running },
                reason: None,
                parked: 0,
                reset_done: vec![0; vcpus.len()],
                captured: Vec::new(),
            }),
            changed: Condvar::new(),
            pause_requested: AtomicBool::new(start_paused),
            reset_generation: AtomicU64::new(0),
            stop_requested: AtomicBool::new(false),
            capture_generation: AtomicU64::new(0),
            msr_indices,
            xsave_fits,
            input_pending: AtomicBool::new(false),
            throttle_percent: AtomicU8::new(0),
            throttle_ticking: AtomicBool::new(false),
            exits: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let mut vcpu_threads = Vec::new();
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            let runner = VcpuRunner {
                vcpu,
                index,
                reset_seen: 0,
                capture_seen: 0,
                mem: mem.clone(),
                bus: bus.clone(),
                shared: shared.clone(),
                config: config.clone(),
            };
            let spawned =
                std::thread::Builder::new().name(format!("vcpu{index}")).spawn(move || runner.run());
            let thread = match spawned {
                Ok(t) => t,
                Err(e) => {
                    // End the ones already running before giving up.
                    shared.set(Phase::Crashed, Some(format!("spawning a vCPU thread: {e}")));
                    shared.stop_requested.store(true, Ordering::SeqCst);
                    let vm = Vm::assemble(config, shared, bus, vcpu_threads, rx_threads, vm_fd, mem);
                    vm.wait();
                    return Err(VmError::Io { what: "spawning a vCPU thread".into(), source: e });
                }
            };
            {
                use std::os::unix::thread::JoinHandleExt;
                shared.threads.lock().unwrap_or_else(|p| p.into_inner()).push(thread.as_pthread_t());
            }
            vcpu_threads.push(thread);
        }
        let mut vm = Vm::assemble(config, shared, bus, vcpu_threads, rx_threads, vm_fd, mem);
        vm.restored = matches!(restore, Some(Restore::Snapshot(_)));
        vm.disks_claimed = AtomicBool::new(!migrated);
        Ok(vm)
    }

    fn assemble(
        config: VmConfig,
        shared: Arc<Shared>,
        bus: Arc<Bus>,
        vcpu_threads: Vec<JoinHandle<()>>,
        rx_threads: Vec<RxThread>,
        vm_fd: Arc<VmFd>,
        mem: GuestMemoryMmap,
    ) -> Vm {
        Vm {
            config,
            shared,
            bus,
            vcpu_threads: Mutex::new(vcpu_threads),
            rx_threads: Mutex::new(rx_threads),
            vm_fd,
            mem,
            restored: false,
            disks_claimed: AtomicBool::new(true),
        }
    }

    /// Lock the disks' images for this VM if it does not hold them yet (a live
    /// migration's target, before it runs). The source gives them up just before it
    /// says `Go`, so a conflicting lock is tried again for [`DISK_CLAIM_TIMEOUT_MS`].
    pub fn claim_disks(&self) -> Result<(), VmError> {
        if self.disks_claimed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_millis(DISK_CLAIM_TIMEOUT_MS);
        for (i, disk) in self.bus.disks.iter().enumerate() {
            let disk = disk.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                match disk.device.claim() {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => {
                        return Err(VmError::Io { what: format!("claiming disk {i}"), source: e });
                    }
                }
            }
        }
        self.disks_claimed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Give the disks' locks up: a live migration's source, paused for good, right
    /// before its target runs. The guest's writes are synced first: on shared storage the
    /// target, on another machine, reads what the storage holds. The VM must not run
    /// again.
    pub fn release_disks(&self) -> Result<(), VmError> {
        assert_ne!(self.status().0, Phase::Running, "a running VM keeps its disks");
        for (i, disk) in self.bus.disks.iter().enumerate() {
            let disk = disk.lock().unwrap_or_else(|p| p.into_inner());
            if !disk.device.read_only() {
                disk.device
                    .file()
                    .sync_data()
                    .map_err(|e| VmError::Io { what: format!("syncing disk {i}"), source: e })?;
            }
        }
        self.disks_claimed.store(false, Ordering::SeqCst);
        for (i, disk) in self.bus.disks.iter().enumerate() {
            let disk = disk.lock().unwrap_or_else(|p| p.into_inner());
            disk.device
                .release()
                .map_err(|e| VmError::Io { what: format!("releasing disk {i}"), source: e })?;
        }
        Ok(())
    }

    /// Save the VM's whole state to `path` (see [`crate::snapshot`]). A running VM is
    /// paused for it and resumed after; a paused one stays paused (and is restored
    /// paused).
    pub fn snapshot(&self, path: &Path) -> Result<SnapshotInfo, VmError> {
        let started = Instant::now();
        if !self.shared.xsave_fits {
            return Err(SnapshotError::Mismatch(XSAVE_TOO_BIG.into()).into());
        }
        {
            let state = self.shared.state();
            let due = self.shared.reset_generation.load(Ordering::SeqCst);
            if state.reset_done.iter().any(|&g| g != due) {
                return Err(VmError::Busy("rebooting; snapshot it once it runs again"));
            }
        }
        let was_paused = self.shared.pause_requested.load(Ordering::SeqCst);
        if was_paused {
            self.wait_for("pause", |p| p == Phase::Paused)?;
        } else if let Err(e) = self.pause() {
            // Not left paused by a snapshot that could not pause it.
            let _ = self.resume();
            return Err(e);
        }
        let written = self.write_snapshot(path, was_paused);
        let duration_ms = if was_paused { 0 } else { started.elapsed().as_millis() as u64 };
        if !was_paused {
            self.resume()?;
        }
        // Synced while the guest runs again: the pause covers only the copy.
        let bytes = written?.commit()?;
        Ok(SnapshotInfo { bytes, duration_ms })
    }

    fn write_snapshot(&self, path: &Path, paused: bool) -> Result<snapshot::Written, VmError> {
        // Every device stays locked until the file is written, so a NIC's receive thread
        // cannot change guest memory or a queue under the copy.
        let (state, frozen) = self.freeze(paused)?;
        let images: Vec<(usize, &std::fs::File)> = frozen
            .disks
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.device.read_only())
            .map(|(i, d)| (i, d.device.file()))
            .collect();
        Ok(snapshot::write(path, state, &self.mem, !self.restored, &images)?)
    }

    /// The whole state of the paused VM but its memory's contents, with every device
    /// locked until the returned [`Frozen`] drops: until then nothing but this thread
    /// changes guest memory (the vCPUs are parked and a NIC's receive thread waits).
    pub fn freeze(&self, paused: bool) -> Result<(VmState, Frozen<'_>), VmError> {
        let console = self.bus.console.lock().unwrap_or_else(|p| p.into_inner());
        let disks: Vec<_> =
            self.bus.disks.iter().map(|d| d.lock().unwrap_or_else(|p| p.into_inner())).collect();
        let nics: Vec<_> =
            self.bus.nics.iter().map(|n| n.lock().unwrap_or_else(|p| p.into_inner())).collect();
        let vcpus = self.capture_vcpus()?;
        let state = VmState {
            domain: self.config.domain.clone(),
            memory_mib: self.config.memory_mib,
            paused,
            vcpus,
            kvm: KvmVmState::save(&self.vm_fd)?,
            serial: console.state(),
            disks: disks
                .iter()
                .map(|d| DiskState {
                    read_only: d.device.read_only(),
                    sectors: d.device.capacity_sectors(),
                    transport: d.state(),
                })
                .collect(),
            nics: nics.iter().map(|n| n.state()).collect(),
            nic_macs: nics.iter().map(|n| n.device.mac()).collect(),
            memory: Default::default(),
        };
        Ok((state, Frozen { _console: console, disks, _nics: nics }))
    }

    /// Have KVM log the guest's writes to its memory (for [`Vm::take_dirty_pages`]), or
    /// stop. Turning it on also clears the VMM's own record of its writes.
    pub fn log_dirty_pages(&self, on: bool) -> Result<(), VmError> {
        register_memory(&self.vm_fd, &self.mem, on)?;
        if on {
            for region in self.mem.iter() {
                std::ops::Deref::deref(region).bitmap().reset();
            }
        }
        Ok(())
    }

    /// Which pages were written since logging began or the last call, one bit per page
    /// (bit `p % 64` of word `p / 64` for guest page `p`): KVM's log of the guest's writes
    /// OR'd with the VMM's own (the memory's bitmap); both start afresh.
    pub fn take_dirty_pages(&self) -> Result<Vec<u64>, VmError> {
        assert_eq!(self.mem.num_regions(), 1, "guest memory is one region from 0");
        let region = self.mem.iter().next().expect("one region");
        let len = usize::try_from(region.len()).map_err(|e| VmError::Memory(e.to_string()))?;
        let mut dirty = self.vm_fd.get_dirty_log(0, len).map_err(kvm_err("reading the dirty log"))?;
        let own = std::ops::Deref::deref(region).bitmap().get_and_reset();
        assert_eq!(own.len(), dirty.len(), "both logs have a bit per page");
        for (d, o) in dirty.iter_mut().zip(own) {
            *d |= o;
        }
        Ok(dirty)
    }

    /// Throttle every vCPU to sit out `percent` of each [`THROTTLE_PERIOD_MS`] (0: run
    /// freely), so a guest dirties memory more slowly than a live migration sends it.
    pub fn set_throttle(self: &Arc<Self>, percent: u8) {
        let percent = percent.min(THROTTLE_PERCENT_MAX);
        self.shared.throttle_percent.store(percent, Ordering::SeqCst);
        if percent == 0 || self.shared.throttle_ticking.swap(true, Ordering::SeqCst) {
            return;
        }
        // Interrupts the vCPUs once a period; each then sits out its share (`run_loop`).
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new().name("throttle".into()).spawn(move || {
            while shared.throttle_percent.load(Ordering::SeqCst) > 0 && !ended(shared.state().phase) {
                shared.kick_all();
                std::thread::sleep(Duration::from_millis(THROTTLE_PERIOD_MS));
            }
            shared.throttle_ticking.store(false, Ordering::SeqCst);
        });
        if spawned.is_err() {
            // Without the ticker the vCPUs run unthrottled; the migration may not converge.
            self.shared.throttle_ticking.store(false, Ordering::SeqCst);
        }
    }

    /// End the VM as Destroyed, saying `why` (a VM that has already ended keeps its end).
    pub fn end(&self, why: String) -> Result<(), VmError> {
        self.shared.set(Phase::Destroyed, Some(why));
        self.destroy()
    }

    /// Have every parked vCPU save its state; the VM must be paused.
    fn capture_vcpus(&self) -> Result<Vec<VcpuState>, VmError> {
        let vcpus = usize::from(self.config.vcpus);
        let mut state = self.shared.state();
        if state.phase != Phase::Paused {
            return Err(VmError::Busy("not paused"));
        }
        state.captured = (0..vcpus).map(|_| None).collect();
        self.shared.capture_generation.fetch_add(1, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let deadline = Instant::now() + Duration::from_millis(TRANSITION_TIMEOUT_MS);
        while state.captured.iter().any(Option::is_none) {
            if ended(state.phase) {
                return Err(VmError::Ended);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VmError::Timeout("save its state"));
            }
            state =
                self.shared.changed.wait_timeout(state, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        let mut out = Vec::with_capacity(vcpus);
        for (i, c) in std::mem::take(&mut state.captured).into_iter().enumerate() {
            match c.expect("every vCPU answered") {
                Ok(s) => out.push(s),
                Err(e) => return Err(VmError::Memory(format!("vCPU {i}: {e}"))),
            }
        }
        Ok(out)
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Whether guest memory is anonymous (not a restored snapshot's file mapping), so
    /// that pages the process never touched are zeros.
    pub fn anonymous_memory(&self) -> bool {
        !self.restored
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// (phase, reason, exits so far).
    pub fn status(&self) -> (Phase, Option<String>, u64) {
        let s = self.shared.state();
        (s.phase, s.reason.clone(), self.shared.exits.load(Ordering::Relaxed))
    }

    fn kick(&self) {
        self.shared.kick_all();
    }

    /// Wait until `done(phase)`, kicking the vCPU every millisecond.
    fn wait_for(&self, what: &'static str, done: impl Fn(Phase) -> bool) -> Result<(), VmError> {
        let deadline = std::time::Instant::now() + Duration::from_millis(TRANSITION_TIMEOUT_MS);
        let mut state = self.shared.state();
        loop {
            if done(state.phase) {
                return Ok(());
            }
            if ended(state.phase) {
                return Err(VmError::Ended);
            }
            if std::time::Instant::now() >= deadline {
                return Err(VmError::Timeout(what));
            }
            state = self.shared.kick_and_wait(state);
        }
    }

    pub fn pause(&self) -> Result<(), VmError> {
        self.shared.pause_requested.store(true, Ordering::SeqCst);
        // A vCPU idling on the condition variable wakes for this, not for the kick (a
        // signal does not end a condvar wait): without it a pause took up to the rest of
        // the guest's idle period (up to IDLE_MS_MAX).
        self.shared.changed.notify_all();
        self.wait_for("pause", |p| p == Phase::Paused)
    }

    pub fn resume(&self) -> Result<(), VmError> {
        self.claim_disks()?;
        self.shared.pause_requested.store(false, Ordering::SeqCst);
        {
            // vCPUs that never reached `park` (a VM restored paused and resumed at once)
            // now run without passing through it, which is where the phase is set.
            let mut state = self.shared.state();
            if state.parked == 0 && state.phase == Phase::Paused {
                state.phase = Phase::Running;
            }
        }
        self.shared.changed.notify_all();
        self.wait_for("resume", |p| p == Phase::Running)
    }

    /// Ask the guest to power off: the power-off key on its serial console.
    pub fn shutdown(&self) -> Result<(), VmError> {
        if ended(self.status().0) {
            return Err(VmError::Ended);
        }
        self.bus.console.lock().unwrap_or_else(|p| p.into_inner()).input(&[crate::POWER_OFF_KEY]);
        self.shared.input_pending.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        Ok(())
    }

    pub fn reboot(&self) -> Result<(), VmError> {
        if ended(self.status().0) {
            return Err(VmError::Ended);
        }
        self.claim_disks()?;
        self.shared.request_reset();
        self.kick();
        Ok(())
    }

    /// Stop the vCPU at once; the VM ends as Destroyed. An error means the vCPU did not
    /// stop in time (the caller ends the process instead); a VM that had already ended is
    /// not an error.
    pub fn destroy(&self) -> Result<(), VmError> {
        self.shared.stop_requested.store(true, Ordering::SeqCst);
        self.shared.pause_requested.store(false, Ordering::SeqCst);
        self.shared.changed.notify_all();
        match self.wait_for("stop", ended) {
            Ok(()) | Err(VmError::Ended) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Block until the VM has ended; returns how.
    pub fn wait(&self) -> (Phase, Option<String>) {
        let mut state = self.shared.state();
        while !ended(state.phase) {
            state = self.shared.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let out = (state.phase, state.reason.clone());
        drop(state);
        // The first vCPU to end asked the others to stop; kick them until they have
        // (one may sit in KVM_RUN waiting for a SIPI that will never come).
        let threads = std::mem::take(&mut *self.vcpu_threads.lock().unwrap_or_else(|p| p.into_inner()));
        self.shared.stop_requested.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_millis(TRANSITION_TIMEOUT_MS);
        while !threads.iter().all(|t| t.is_finished()) && std::time::Instant::now() < deadline {
            self.shared.kick_all();
            std::thread::sleep(Duration::from_millis(KICK_INTERVAL_MS));
        }
        self.shared.threads.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for rx in self.rx_threads.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            rx.stop();
        }
        let mut out = out;
        for t in threads {
            if !t.is_finished() {
                // Never stopped: leave it (the process is about to end) rather than hang.
                out = (Phase::Crashed, Some("a vCPU thread did not stop".into()));
                continue;
            }
            if t.join().is_err() {
                out = (Phase::Crashed, Some("a vCPU thread panicked".into()));
            }
        }
        out
    }
}

/// The devices of a frozen VM ([`Vm::freeze`]), locked until this drops.
pub struct Frozen<'a> {
    _console: std::sync::MutexGuard<'a, Console>,
    disks: Vec<std::sync::MutexGuard<'a, MmioTransport<Block>>>,
    _nics: Vec<std::sync::MutexGuard<'a, MmioTransport<Net>>>,
}

impl std::fmt::Debug for Frozen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frozen").field("disks", &self.disks.len()).finish()
    }
}

impl Frozen<'_> {
    /// Flush every writable disk's file to stable storage, so that another host that
    /// opens the same (shared) file sees every write the guest made.
    pub fn sync_disks(&self) -> std::io::Result<()> {
        for disk in self.disks.iter().filter(|d| !d.device.read_only()) {
            disk.device.file().sync_data()?;
        }
        Ok(())
    }
}

/// Register `mem`'s regions as the VM's memory slots (slot `i` for region `i`), with
/// KVM's dirty-page log on or off. Registering a slot again with other flags is how KVM
/// turns its log on or off.
fn register_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap, log_dirty: bool) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem.get_host_address(region.start_addr()).map_err(|e| VmError::Memory(e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: if log_dirty { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host..host + len` is a live mapping owned by `mem`. `mem` is kept by
        // the `Vm` and by the vCPU thread for as long as the VM fd can run guest code, and
        // the mapping is never resized or unmapped before that; registering it again only
        // changes the slot's flags.
        unsafe { vm_fd.set_user_memory_region(r) }.map_err(kvm_err("registering guest memory"))?;
    }
    Ok(())
}

const XSAVE_TOO_BIG: &str =
    "this host's XSAVE area is larger than the 4 KiB snapshots hold (AMX?); snapshots are not supported here";

/// Whether the vCPUs' XSAVE area fits `kvm_xsave` (KVM_CAP_XSAVE2 reports its size, or 0
/// where the legacy 4 KiB is all there is).
fn xsave_fits(vm: &VmFd) -> bool {
    let size = vm.check_extension_int(kvm_ioctls::Cap::Xsave2);
    size <= std::mem::size_of::<kvm_bindings::kvm_xsave>() as i32
}

/// The command line the guest sees: the configured one plus where its virtio devices are
/// (Linux's `virtio_mmio.device=` syntax, which the test guest reads too).
fn full_cmdline(config: &VmConfig) -> String {
    let mut line = config.cmdline.trim().to_owned();
    // Disks first, in guest order (the order Linux and the test guest find them in).
    let devices =
        (0..config.disks.len()).map(layout::disk_slot).chain((0..config.nics.len()).map(layout::nic_slot));
    for (base, irq) in devices {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
    }
    line
}

impl VcpuRunner {
    fn run(mut self) {
        let (phase, reason) = self.run_loop();
        // The VM ends with the first vCPU that ends (its reason wins, so it is set before
        // the others are told to stop and end as Destroyed).
        self.shared.set(phase, Some(reason));
        self.shared.stop_requested.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
    }

    /// Run until the VM ends; returns how it ended.
    fn run_loop(&mut self) -> (Phase, String) {
        loop {
            if self.shared.stop_requested.load(Ordering::SeqCst) {
                return (Phase::Destroyed, "destroyed on request".into());
            }
            if self.shared.pause_requested.load(Ordering::SeqCst) {
                self.park();
                continue;
            }
            let generation = self.shared.reset_generation.load(Ordering::SeqCst);
            if generation != self.reset_seen {
                match self.reset(generation) {
                    Ok(true) => self.reset_seen = generation,
                    Ok(false) => continue, // interrupted by pause or stop: look again
                    Err(e) => return (Phase::Crashed, format!("reset failed: {e}")),
                }
            }
            let exit = self.vcpu.run();
            self.shared.exits.fetch_add(1, Ordering::Relaxed);
            match exit {
                Ok(VcpuExit::IoIn(port, data)) => self.bus.pio_read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => match self.bus.pio_write(port, data) {
                    BusEvent::None => {}
                    BusEvent::PowerOff => return (Phase::Stopped, "the guest powered off".into()),
                    BusEvent::Reset => self.shared.request_reset(),
                    BusEvent::Idle(ms) => self.idle(ms),
                },
                Ok(VcpuExit::MmioRead(addr, data)) => self.bus.mmio_read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => self.bus.mmio_write(addr, data),
                Ok(VcpuExit::Hlt) => return (Phase::Stopped, "the guest halted".into()),
                Ok(VcpuExit::Shutdown) => {
                    return (Phase::Crashed, format!("triple fault at {}", self.where_now()))
                }
                Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, _)) => {
                    return (Phase::Stopped, "the guest powered off".into())
                }
                Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, _)) => self.shared.request_reset(),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return (
                        Phase::Crashed,
                        format!("KVM could not enter the guest (reason {reason:#x}, cpu {cpu})"),
                    )
                }
                Ok(VcpuExit::InternalError) => return (Phase::Crashed, "KVM internal error".into()),
                Ok(other) => return (Phase::Crashed, format!("unexpected VM exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Interrupted: by a request (looked at above), or by the throttle's tick.
                    let throttle = u64::from(self.shared.throttle_percent.load(Ordering::SeqCst));
                    if throttle > 0 {
                        self.idle(THROTTLE_PERIOD_MS * throttle / 100);
                    }
                }
                Err(e) => return (Phase::Crashed, format!("KVM_RUN failed: {e}")),
            }
        }
    }

    /// The vCPU's instruction pointer and mode, for crash reasons.
    fn where_now(&self) -> String {
        match (self.vcpu.get_regs(), self.vcpu.get_sregs()) {
            (Ok(r), Ok(s)) => {
                format!("rip {:#x} (cs {:#x}, cr0 {:#x}, efer {:#x})", r.rip, s.cs.selector, s.cr0, s.efer)
            }
            _ => "an unknown address".into(),
        }
    }

    /// The guest has nothing to do for `ms`: sleep, but wake for any request or input.
    fn idle(&self, ms: u64) {
        let deadline = std::time::Instant::now() + Duration::from_millis(ms.min(layout::IDLE_MS_MAX));
        let mut state = self.shared.state();
        loop {
            let now = std::time::Instant::now();
            if now >= deadline
                || self.shared.pause_requested.load(Ordering::SeqCst)
                || self.shared.stop_requested.load(Ordering::SeqCst)
                || self.shared.reset_generation.load(Ordering::SeqCst) != self.reset_seen
                || self.shared.input_pending.swap(false, Ordering::SeqCst)
            {
                return;
            }
            state =
                self.shared.changed.wait_timeout(state, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Sit paused until resumed or stopped; the VM is Paused once every vCPU sits here.
    /// A parked vCPU saves its state when a snapshot asks for it.
    fn park(&mut self) {
        let vcpus = usize::from(self.config.vcpus);
        let mut state = self.shared.state();
        state.parked += 1;
        if state.parked == vcpus && !ended(state.phase) {
            state.phase = Phase::Paused;
        }
        self.shared.changed.notify_all();
        while self.shared.pause_requested.load(Ordering::SeqCst)
            && !self.shared.stop_requested.load(Ordering::SeqCst)
        {
            let capture = self.shared.capture_generation.load(Ordering::SeqCst);
            if capture != self.capture_seen {
                self.capture_seen = capture;
                drop(state);
                let saved = self.save_state();
                state = self.shared.state();
                if let Some(slot) = state.captured.get_mut(self.index) {
                    *slot = Some(saved);
                }
                self.shared.changed.notify_all();
                continue;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.parked -= 1;
        if !ended(state.phase) {
            state.phase = Phase::Running;
        }
        self.shared.changed.notify_all();
    }

    /// This vCPU's state for a snapshot. The exit it last took is completed first: an
    /// IN's or an MMIO read's data reaches the guest (and its instruction retires) only on
    /// the next KVM_RUN, so one run with `immediate_exit` set completes it and returns at
    /// once, without entering the guest; otherwise a restore would run that instruction
    /// again (a byte read twice, or lost).
    fn save_state(&mut self) -> Result<VcpuState, String> {
        self.vcpu.set_kvm_immediate_exit(1);
        let completed = match self.vcpu.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(format!("completing the last exit: {e}")),
            Ok(exit) => Err(format!("completing the last exit: the guest ran and exited ({exit:?})")),
        };
        self.vcpu.set_kvm_immediate_exit(0);
        completed?;
        VcpuState::save(&self.vcpu, &self.shared.msr_indices).map_err(|e| e.to_string())
    }

    /// Carry out reset `generation`. An application processor goes back to waiting for
    /// INIT and SIPI; the boot processor waits until every other vCPU has, then resets the
    /// virtio devices, reloads the kernel and MP table and starts again at the kernel's
    /// entry. Returns false if a pause or stop interrupted the wait (the reset stays due).
    fn reset(&mut self, generation: u64) -> Result<bool, VmError> {
        if self.index != 0 {
            vcpu::reset_ap(&self.vcpu)?;
            let mut state = self.shared.state();
            state.reset_done[self.index] = generation;
            self.shared.changed.notify_all();
            return Ok(true);
        }
        let mut state = self.shared.state();
        while !state.reset_done[1..].iter().all(|&g| g >= generation) {
            if self.shared.pause_requested.load(Ordering::SeqCst)
                || self.shared.stop_requested.load(Ordering::SeqCst)
            {
                return Ok(false);
            }
            // The others may sit in KVM_RUN: interrupt them so they see the reset.
            state = self.shared.kick_and_wait(state);
        }
        state.reset_done[0] = generation;
        drop(state);
        self.bus.reset_virtio();
        mptable::write(&self.mem, self.config.vcpus).map_err(|e| VmError::Memory(e.to_string()))?;
        let entry: BootEntry = boot::load(
            &self.mem,
            self.config.memory_mib << 20,
            &self.config.kernel,
            self.config.initrd.as_deref(),
            &full_cmdline(&self.config),
        )?;
        vcpu::configure(&self.vcpu, &self.mem, entry)?;
        Ok(true)
    }
}
