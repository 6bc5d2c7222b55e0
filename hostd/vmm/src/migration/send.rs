//! The source side of a live migration: [`Outgoing::start`] copies the VM to a target in
//! a thread of its own; the control socket reads its status, and orders the switch-over
//! or a cancel.

use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::tls::{self, Stream};
use super::wire::{self, Tag, PAGES_PER_FRAME_MAX, PAGE_BYTES};
use super::{MigrationError, ANSWER_TIMEOUT_MS, COPY_TIMEOUT_MS};
use crate::control::{ConvergeLimits, MigrationProgress, MigrationTls, OutgoingPhase, OutgoingStatus};
use crate::memory::GuestMemoryMmap;
use crate::vm::Vm;

/// The first throttle a copy that does not converge gets, and the step it grows by each
/// round that still does not.
const THROTTLE_FIRST_PERCENT: u8 = 30;
const THROTTLE_STEP_PERCENT: u8 = 15;
/// A round that leaves at least this share (in tenths) of the round before's dirty bytes
/// is not converging.
const CONVERGING_TENTHS: u64 = 9;
/// The share of the downtime budget the final copy of memory may take; the rest is for
/// the device state, building the target and the cluster's commit.
const COPY_SHARE_OF_DOWNTIME: u64 = 2;
/// The final copy the rounds aim at first, as a share of the budget (3 ms of 50): the
/// budget is the longest pause allowed, not the pause to settle for while more rounds
/// (and the throttle) still shrink the rest.
const AIM_SHARE_OF_DOWNTIME: u64 = 16;
/// Rounds after the first full copy spent aiming below the budget's share; after them a
/// rest that fits [`COPY_SHARE_OF_DOWNTIME`] switches over.
const AIMING_ROUNDS_MAX: u32 = 10;
/// How long a source whose stream broke looks for the target's reason.
const REFUSAL_WAIT_MS: u64 = 500;
/// The send buffer in front of the socket.
const BUFFER_BYTES: usize = 1 << 20;
/// How often the watchdog looks whether the copy still advances.
const WATCH_INTERVAL_MS: u64 = 500;
/// The least a copy must advance in each [`ANSWER_TIMEOUT_MS`], in frames' worth of pages
/// (sent, or looked at): the cluster's least advance
/// ([`vmm_control::limits::MIGRATION_STALL_ADVANCE_MIN_BYTES`]) in whole frames.
const ADVANCE_PER_WINDOW_MIN: u64 =
    vmm_control::limits::MIGRATION_STALL_ADVANCE_MIN_BYTES / (PAGES_PER_FRAME_MAX * PAGE_BYTES) as u64;
const _: () = assert!(ADVANCE_PER_WINDOW_MIN >= 1, "a stall is less than a frame's worth");

/// An outgoing live migration of this VMM's VM.
pub struct Outgoing {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("address", &self.shared.address)
            .field("status", &self.status())
            .finish()
    }
}

struct Shared {
    address: String,
    /// TLS on the stream, with the target's host; none in the clear.
    tls: Option<MigrationTls>,
    /// The limits the rounds end within; an operator may change them while it copies.
    limits: Mutex<ConvergeLimits>,
    status: Mutex<OutgoingStatus>,
    cancel: AtomicBool,
    /// The stream's socket: shut down by a cancel (which unblocks the copy).
    stream: Mutex<Option<TcpStream>>,
    /// The stream, once the target holds the VM: taken by the switch.
    conn: Mutex<Option<Stream>>,
    /// When the VM was paused for the final copy: the downtime runs from here.
    paused_at: Mutex<Option<Instant>>,
    /// Whether the guest ran when the final copy paused it (the target then runs it).
    was_running: AtomicBool,
    /// Whether the VM runs here again (or has ended) after a failure or cancel.
    undone: AtomicBool,
    /// How far the copy has come, in frames' worth of pages: one per frame sent and one
    /// per frame's worth of pages looked at; the watchdog reads it.
    advanced: AtomicU64,
    /// Whether the watchdog cut the stream because the copy stood (almost) still.
    stalled: AtomicBool,
}

impl Shared {
    fn advance(&self, frames: u64) {
        self.advanced.fetch_add(frames, Ordering::SeqCst);
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Outgoing {
    /// Start copying `vm` to the incoming VMM at `address` (over `tls` where given).
    pub fn start(
        vm: Arc<Vm>,
        address: String,
        limits: ConvergeLimits,
        tls: Option<MigrationTls>,
    ) -> Outgoing {
        let shared = Arc::new(Shared {
            address: address.clone(),
            tls,
            limits: Mutex::new(limits),
            status: Mutex::new(OutgoingStatus {
                address: address.clone(),
                phase: OutgoingPhase::Copying,
                progress: MigrationProgress::default(),
                reason: None,
                stop_copy_us: None,
            }),
            cancel: AtomicBool::new(false),
            stream: Mutex::new(None),
            conn: Mutex::new(None),
            paused_at: Mutex::new(None),
            was_running: AtomicBool::new(false),
            undone: AtomicBool::new(false),
            advanced: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
        });
        let s = shared.clone();
        let spawned = std::thread::Builder::new().name("migrate-out".into()).spawn(move || {
            let watchdog = watch(s.clone());
            let result = copy(&vm, &s);
            let result = match result {
                // The watchdog's cut: say why, not what the cut socket said.
                Err(_) if s.stalled.load(Ordering::SeqCst) => {
                    Err(MigrationError::Failed(vmm_control::limits::migration_stalled()))
                }
                other => other,
            };
            if let Err(e) = result {
                undo(&vm, &s);
                let mut status = locked(&s.status);
                if matches!(e, MigrationError::Cancelled) || s.cancel.load(Ordering::SeqCst) {
                    status.phase = OutgoingPhase::Cancelled;
                } else {
                    status.phase = OutgoingPhase::Failed;
                    status.reason = Some(e.to_string());
                }
                eprintln!("drover-vmm: migration to {} ended: {e}", s.address);
            }
            drop(watchdog);
        });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                let mut status = locked(&shared.status);
                status.phase = OutgoingPhase::Failed;
                status.reason = Some(format!("starting the migration thread: {e}"));
                None
            }
        };
        Outgoing { shared, thread: Mutex::new(thread) }
    }

    /// New limits for the rounds to come.
    pub fn set_limits(&self, limits: ConvergeLimits) {
        *locked(&self.shared.limits) = limits;
    }

    pub fn status(&self) -> OutgoingStatus {
        locked(&self.shared.status).clone()
    }

    /// Whether it still holds the VM (copying, or waiting for the switch-over).
    pub fn active(&self) -> bool {
        matches!(
            self.status().phase,
            OutgoingPhase::Copying | OutgoingPhase::Completing | OutgoingPhase::AwaitingSwitch
        )
    }

    /// The cluster committed the switch-over: tell the target to run, wait for its word,
    /// and end this VM. The VM ends here whatever the target says: ownership has moved.
    pub fn switch(&self, vm: &Vm) -> Result<MigrationProgress, MigrationError> {
        let phase = self.status().phase;
        if phase != OutgoingPhase::AwaitingSwitch {
            return Err(MigrationError::Failed(format!("cannot switch over while {phase:?}")));
        }
        // The target claims the disks before it runs; the VM here never runs again.
        vm.release_disks()?;
        let answered = (|| {
            let mut stream = locked(&self.shared.conn)
                .take()
                .ok_or_else(|| MigrationError::Failed("the stream is gone".into()))?;
            let run = self.shared.was_running.load(Ordering::SeqCst);
            wire::write_frame(&mut stream, Tag::Go, &[u8::from(run)])?;
            stream.flush()?;
            let mut buf = Vec::new();
            match wire::read_frame(&mut stream, &mut buf)? {
                Tag::Resumed => Ok(()),
                other => Err(MigrationError::Protocol(format!("{other:?} where Resumed was due"))),
            }
        })();
        let downtime = locked(&self.shared.paused_at).map(|t| t.elapsed().as_millis() as u64);
        let progress = {
            let mut status = locked(&self.shared.status);
            if answered.is_ok() {
                status.progress.downtime_ms = downtime;
            }
            status.progress
        };
        self.shared.undone.store(true, Ordering::SeqCst);
        let ended = vm.end(format!("migrated to {}", self.shared.address));
        answered?;
        ended?;
        Ok(progress)
    }

    /// Abandon the migration: the VM runs here again (or stays paused, if it was).
    pub fn cancel(&self, vm: &Arc<Vm>) {
        self.shared.cancel.store(true, Ordering::SeqCst);
        if let Some(stream) = locked(&self.shared.stream).as_ref() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = locked(&self.thread).take() {
            let _ = t.join();
        }
        undo(vm, &self.shared);
        let mut status = locked(&self.shared.status);
        if status.phase != OutgoingPhase::Failed {
            status.phase = OutgoingPhase::Cancelled;
        }
    }
}

/// Cut the stream when the copy advanced by less than [`ADVANCE_PER_WINDOW_MIN`] in an
/// [`ANSWER_TIMEOUT_MS`]. The socket's own timeouts are per call: a target that stopped
/// reading, or a link that lets a few bytes through now and then, keeps each blocked write
/// moving a little; in a test that black-holes the link the copy went on waiting past
/// 75 s, and a frame crept through about every 30 s. The watchdog ends when the sender
/// it returns is dropped.
fn watch(shared: Arc<Shared>) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new().name("migrate-watch".into()).spawn(move || {
        let window = Duration::from_millis(ANSWER_TIMEOUT_MS);
        // How far the copy had come at each look, the oldest at least a window ago once
        // there is one that old.
        let mut looks = std::collections::VecDeque::new();
        looks.push_back((Instant::now(), shared.advanced.load(Ordering::SeqCst)));
        // Until the copy ends (its sender is dropped).
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            rx.recv_timeout(Duration::from_millis(WATCH_INTERVAL_MS))
        {
            let now = shared.advanced.load(Ordering::SeqCst);
            looks.push_back((Instant::now(), now));
            while looks.get(1).is_some_and(|(at, _)| at.elapsed() >= window) {
                looks.pop_front();
            }
            let (at, then) = looks[0];
            if at.elapsed() >= window && now - then < ADVANCE_PER_WINDOW_MIN {
                shared.stalled.store(true, Ordering::SeqCst);
                if let Some(stream) = locked(&shared.stream).as_ref() {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
                return;
            }
        }
    });
    if let Err(e) = spawned {
        // The socket's per-call timeouts still bound most stalls.
        eprintln!("drover-vmm: starting the migration watchdog: {e}");
    }
    tx
}

/// Put the VM back as it was: unthrottled, unlogged, running if the migration paused it.
fn undo(vm: &Arc<Vm>, shared: &Shared) {
    if shared.undone.swap(true, Ordering::SeqCst) {
        return;
    }
    vm.set_throttle(0);
    if let Err(e) = vm.log_dirty_pages(false) {
        eprintln!("drover-vmm: turning the dirty log off: {e}");
    }
    if locked(&shared.paused_at).is_some() && shared.was_running.load(Ordering::SeqCst) {
        if let Err(e) = vm.resume() {
            eprintln!("drover-vmm: resuming after the migration stopped: {e}");
        }
    }
    if let Some(stream) = locked(&shared.stream).take() {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    locked(&shared.conn).take();
}

/// Pages on their way: gathered into frames of at most [`PAGES_PER_FRAME_MAX`].
struct PageSender<'a> {
    out: &'a mut BufWriter<Stream>,
    shared: &'a Shared,
    mem: &'a GuestMemoryMmap,
    numbers: Vec<u64>,
    data: Vec<u8>,
    zeros: Vec<u64>,
    frame: Vec<u8>,
    page: Vec<u8>,
    bytes: u64,
}

impl PageSender<'_> {
    /// Send page `p`; an all-zero one as a number only, or not at all if `skip_zero` (the
    /// target's memory starts zeroed).
    fn page(&mut self, p: u64, skip_zero: bool) -> Result<(), MigrationError> {
        self.mem
            .read_slice(&mut self.page, GuestAddress(p * PAGE_BYTES as u64))
            .map_err(|e| MigrationError::Failed(format!("reading guest page {p}: {e}")))?;
        if self.page.iter().all(|&b| b == 0) {
            if !skip_zero {
                self.zeros.push(p);
                if self.zeros.len() == PAGES_PER_FRAME_MAX {
                    self.flush_zeros()?;
                }
            }
            return Ok(());
        }
        self.numbers.push(p);
        self.data.extend_from_slice(&self.page);
        if self.numbers.len() == PAGES_PER_FRAME_MAX {
            self.flush_pages()?;
        }
        Ok(())
    }

    fn flush_pages(&mut self) -> Result<(), MigrationError> {
        if self.numbers.is_empty() {
            return Ok(());
        }
        self.frame.clear();
        self.frame.extend_from_slice(&(self.numbers.len() as u32).to_le_bytes());
        for p in &self.numbers {
            self.frame.extend_from_slice(&p.to_le_bytes());
        }
        self.frame.extend_from_slice(&self.data);
        wire::write_frame(self.out, Tag::Pages, &self.frame)?;
        self.shared.advance(1);
        self.bytes += self.frame.len() as u64 + 5;
        self.numbers.clear();
        self.data.clear();
        Ok(())
    }

    fn flush_zeros(&mut self) -> Result<(), MigrationError> {
        if self.zeros.is_empty() {
            return Ok(());
        }
        self.frame.clear();
        self.frame.extend_from_slice(&(self.zeros.len() as u32).to_le_bytes());
        for p in &self.zeros {
            self.frame.extend_from_slice(&p.to_le_bytes());
        }
        wire::write_frame(self.out, Tag::Zeros, &self.frame)?;
        self.shared.advance(1);
        self.bytes += self.frame.len() as u64 + 5;
        self.zeros.clear();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MigrationError> {
        self.flush_pages()?;
        self.flush_zeros()?;
        self.out.flush()?;
        Ok(())
    }
}

/// The pages whose bits are set in `bitmap`, in order.
fn set_pages(bitmap: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for (w, word) in bitmap.iter().enumerate() {
        let mut x = *word;
        while x != 0 {
            out.push(w as u64 * 64 + u64::from(x.trailing_zeros()));
            x &= x - 1;
        }
    }
    out
}

/// Every page of `pending` and of `more`, each once, in order.
fn union(pending: Vec<u64>, more: Vec<u64>) -> Vec<u64> {
    let mut all = pending;
    all.extend(more);
    all.sort_unstable();
    all.dedup();
    all
}

/// Whether the target has said something (it only ever refuses before `Ready`): read it
/// without waiting when nothing is there (after the handshake, anything on the socket is
/// the target's frame: [`tls`]).
fn refusal(stream: &mut Stream) -> Result<(), MigrationError> {
    let tcp = stream.tcp();
    tcp.set_nonblocking(true)?;
    let peeked = tcp.peek(&mut [0u8; 1]);
    tcp.set_nonblocking(false)?;
    match peeked {
        Ok(0) => Err(MigrationError::Failed("the target closed the stream".into())),
        Ok(_) => {
            let mut buf = Vec::new();
            match wire::read_frame(stream, &mut buf)? {
                Tag::Refused => Err(MigrationError::Refused(String::from_utf8_lossy(&buf).into_owned())),
                other => Err(MigrationError::Protocol(format!("{other:?} from the target while copying"))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Connect to the target, copy the VM, and leave the stream for the switch-over.
fn copy(vm: &Arc<Vm>, shared: &Shared) -> Result<(), MigrationError> {
    let addr: SocketAddr = shared
        .address
        .parse()
        .map_err(|e| MigrationError::Failed(format!("target address {:?}: {e}", shared.address)))?;
    let answer = Duration::from_millis(ANSWER_TIMEOUT_MS);
    let tcp = TcpStream::connect_timeout(&addr, answer)?;
    tcp.set_nodelay(true)?;
    tcp.set_write_timeout(Some(answer))?;
    tcp.set_read_timeout(Some(answer))?;
    *locked(&shared.stream) = Some(tcp.try_clone()?);
    let stream = match &shared.tls {
        Some(t) => tls::client(tcp, t)?,
        None => Stream::Plain(tcp),
    };
    let mut out = BufWriter::with_capacity(BUFFER_BYTES, stream);
    let result = copy_rounds(vm, shared, &mut out);
    // A stream that broke may carry the target's reason.
    if let Err(MigrationError::Io(_)) = &result {
        let stream = out.get_mut();
        let _ = stream.tcp().set_read_timeout(Some(Duration::from_millis(REFUSAL_WAIT_MS)));
        let mut buf = Vec::new();
        if let Ok(Tag::Refused) = wire::read_frame(stream, &mut buf) {
            return Err(MigrationError::Refused(String::from_utf8_lossy(&buf).into_owned()));
        }
    }
    result?;
    *locked(&shared.conn) = Some(out.into_inner().map_err(|e| MigrationError::Io(e.into_error()))?);
    locked(&shared.status).phase = OutgoingPhase::AwaitingSwitch;
    Ok(())
}

/// The rounds, the stop-and-copy and the target's `Ready`, over `out`.
fn copy_rounds(vm: &Arc<Vm>, shared: &Shared, out: &mut BufWriter<Stream>) -> Result<(), MigrationError> {
    // Checked every frame's worth of pages: also where the copy shows the watchdog it
    // advances (a long run of zero pages sends nothing, yet is no stall).
    let cancelled = || -> Result<(), MigrationError> {
        shared.advance(1);
        if shared.cancel.load(Ordering::SeqCst) {
            Err(MigrationError::Cancelled)
        } else {
            Ok(())
        }
    };
    cancelled()?;
    let config = vm.config();
    let memory_bytes = config.memory_mib << 20;
    let pages = memory_bytes / PAGE_BYTES as u64;
    let hello = wire::Hello {
        version: wire::VERSION,
        domain: config.domain.clone(),
        memory_mib: config.memory_mib,
        vcpus: config.vcpus,
    };
    wire::write_frame(out, Tag::Hello, &serde_json::to_vec(&hello).expect("serializes"))?;
    let mut sender = PageSender {
        out,
        shared,
        mem: vm.memory(),
        numbers: Vec::with_capacity(PAGES_PER_FRAME_MAX),
        data: Vec::with_capacity(PAGES_PER_FRAME_MAX * PAGE_BYTES),
        zeros: Vec::with_capacity(PAGES_PER_FRAME_MAX),
        frame: Vec::with_capacity(4 + PAGES_PER_FRAME_MAX * (8 + PAGE_BYTES)),
        page: vec![0; PAGE_BYTES],
        bytes: 0,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_millis(COPY_TIMEOUT_MS);
    vm.log_dirty_pages(true)?;
    let mut collected_at = Instant::now();
    // Round 0: everything that is not zeros. Pages the process never touched are, and
    // are skipped unread (reading them would map a zero page into each); one touched
    // from here on is in the dirty log, on since before this look.
    let untouched = if vm.anonymous_memory() { untouched(vm.memory(), pages) } else { None };
    for p in 0..pages {
        if p % PAGES_PER_FRAME_MAX as u64 == 0 {
            cancelled()?;
        }
        if untouched.as_ref().is_some_and(|u| u[p as usize]) {
            continue;
        }
        sender.page(p, true)?;
    }
    sender.flush()?;
    refusal(sender.out.get_mut())?;
    let mut copy_time = started.elapsed();
    let mut rounds = 1u32;
    let mut throttle = 0u8;
    let mut previous_dirty = u64::MAX;
    let set_progress = |update: &dyn Fn(&mut MigrationProgress)| update(&mut locked(&shared.status).progress);
    set_progress(&|p| {
        p.bytes_sent = sender.bytes;
        p.rounds = rounds;
    });
    let pending = loop {
        cancelled()?;
        if Instant::now() >= deadline {
            return Err(MigrationError::Failed(format!(
                "pre-copy did not converge within {COPY_TIMEOUT_MS} ms (throttled {throttle}%)"
            )));
        }
        let dirty = set_pages(&vm.take_dirty_pages()?);
        let since = collected_at.elapsed().as_secs_f64().max(1e-6);
        collected_at = Instant::now();
        let dirty_bytes = dirty.len() as u64 * PAGE_BYTES as u64;
        let link_bytes_per_s = (sender.bytes as f64 / copy_time.as_secs_f64().max(1e-6)).max(1.0);
        let expected_ms = (dirty_bytes as f64 * 1000.0 / link_bytes_per_s).ceil() as u64;
        set_progress(&|p| {
            p.remaining_bytes = dirty_bytes;
            p.dirty_bytes_per_s = (dirty_bytes as f64 / since) as u64;
            p.expected_downtime_ms = expected_ms;
            p.throttle_percent = throttle;
        });
        // The limits are read anew each round (an operator may change them).
        let limits = *locked(&shared.limits);
        let throttle_max = limits.throttle_max_percent.min(crate::vm::THROTTLE_PERCENT_MAX);
        let shrinking = dirty_bytes * 10 < previous_dirty.saturating_mul(CONVERGING_TENTHS);
        // A budget of 0 never switches over: the copy goes on until cancelled. A rest
        // within the aim switches over at once; one within the budget's share once more
        // rounds cannot shrink it: the throttle is all it may be and the last round did
        // not, or the rounds spent aiming are spent.
        if limits.max_downtime_ms > 0 {
            let settled = rounds > AIMING_ROUNDS_MAX || (!shrinking && throttle >= throttle_max);
            if expected_ms <= limits.max_downtime_ms / AIM_SHARE_OF_DOWNTIME
                || (settled && expected_ms <= limits.max_downtime_ms / COPY_SHARE_OF_DOWNTIME)
            {
                break dirty;
            }
        }
        if rounds >= 2 && throttle < throttle_max && !shrinking {
            // Not shrinking: slow the guest down (auto-converge).
            throttle = if throttle == 0 {
                THROTTLE_FIRST_PERCENT
            } else {
                throttle.saturating_add(THROTTLE_STEP_PERCENT)
            }
            .min(throttle_max);
            vm.set_throttle(throttle);
        }
        previous_dirty = dirty_bytes;
        let round_started = Instant::now();
        for (i, &p) in dirty.iter().enumerate() {
            if i % PAGES_PER_FRAME_MAX == 0 {
                cancelled()?;
            }
            sender.page(p, false)?;
        }
        sender.flush()?;
        refusal(sender.out.get_mut())?;
        copy_time += round_started.elapsed();
        rounds += 1;
        set_progress(&|p| {
            p.bytes_sent = sender.bytes;
            p.rounds = rounds;
            p.throttle_percent = throttle;
        });
    };
    // Stop and copy.
    cancelled()?;
    shared.was_running.store(vm.status().0 == crate::control::Phase::Running, Ordering::SeqCst);
    *locked(&shared.paused_at) = Some(Instant::now());
    locked(&shared.status).phase = OutgoingPhase::Completing;
    vm.pause()?;
    vm.set_throttle(0);
    {
        let (mut state, frozen) = vm.freeze(false)?;
        let last = union(pending, set_pages(&vm.take_dirty_pages()?));
        for &p in &last {
            sender.page(p, false)?;
        }
        sender.flush()?;
        frozen.sync_disks()?;
        // The target builds the VM paused and runs it on `Go`.
        state.paused = true;
        let json = serde_json::to_vec(&state)
            .map_err(|e| MigrationError::Failed(format!("encoding the VM's state: {e}")))?;
        wire::write_frame(sender.out, Tag::State, &json)?;
        sender.out.flush()?;
        let stop_copy = locked(&shared.paused_at).map(|t| t.elapsed().as_micros() as u64);
        locked(&shared.status).stop_copy_us = stop_copy;
        // The target builds the VM now: a window's worth of credit for its answer.
        shared.advance(ADVANCE_PER_WINDOW_MIN);
        sender.bytes += json.len() as u64 + 5;
        let bytes = sender.bytes;
        set_progress(&|p| {
            p.bytes_sent = bytes;
            p.remaining_bytes = 0;
        });
    }
    let mut buf = Vec::new();
    match wire::read_frame(sender.out.get_mut(), &mut buf)? {
        // The stream stays for the switch-over: the watchdog, ending now, must not cut it.
        Tag::Ready => shared.advance(ADVANCE_PER_WINDOW_MIN),
        Tag::Refused => return Err(MigrationError::Refused(String::from_utf8_lossy(&buf).into_owned())),
        other => return Err(MigrationError::Protocol(format!("{other:?} where Ready was due"))),
    }
    cancelled()
}

/// Which of the first `pages` pages of `mem` (one anonymous mapping) the process never
/// touched; `None` where that is not known.
fn untouched(mem: &GuestMemoryMmap, pages: u64) -> Option<Vec<bool>> {
    use vm_memory::GuestMemoryBackend;
    if mem.num_regions() != 1 {
        return None;
    }
    let host = mem.get_host_address(GuestAddress(0)).ok()?;
    let len = usize::try_from(pages).ok()?.checked_mul(PAGE_BYTES)?;
    let untouched = crate::snapshot::untouched_pages(host as u64, len)?;
    (untouched.len() as u64 == pages).then_some(untouched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_pages_lists_every_bit_in_order() {
        assert_eq!(set_pages(&[0b1011, 0, 1 << 63]), vec![0, 1, 3, 191]);
        assert_eq!(union(vec![1, 5], vec![5, 2]), vec![1, 2, 5]);
    }
}
