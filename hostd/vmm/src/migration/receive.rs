//! The target side of a live migration: an incoming VMM [`prepare`]s the guest's memory
//! and the KVM VM for it, [`listen`]s, [`receive`]s one source's pages and state into
//! that memory, and once its VM is built paused,
//! [`Incoming::ready`] tells the source and waits (in a thread) for the `Go` that only a
//! committed switch-over sends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::tls::{self, Stream};
use super::wire::{self, Tag, PAGE_BYTES};
use super::{MigrationError, ACCEPT_TIMEOUT_MS, ANSWER_TIMEOUT_MS};
use crate::config::VmConfig;
use crate::control::{MigrationTls, INCOMING_FILE};
use crate::memory::GuestMemoryMmap;
use crate::snapshot::VmState;
use crate::vm::{Shell, Vm};

/// Listen on `address` (`ip:port`; port 0 picks one) and publish the address it got in
/// `run_dir`'s [`INCOMING_FILE`] (whole, through a rename).
pub fn listen(address: &str, run_dir: &Path) -> Result<TcpListener, MigrationError> {
    let addr: SocketAddr =
        address.parse().map_err(|e| MigrationError::Failed(format!("incoming address {address:?}: {e}")))?;
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let file = run_dir.join(INCOMING_FILE);
    let tmp = file.with_extension("addr.tmp");
    std::fs::write(&tmp, bound.to_string())?;
    std::fs::rename(&tmp, &file)?;
    Ok(listener)
}

/// What a source sent, before the VM exists.
#[derive(Debug)]
pub struct Received {
    pub memory: GuestMemoryMmap,
    pub state: VmState,
    /// The KVM VM made for the memory before the address was published.
    pub shell: Shell,
    pub incoming: Incoming,
}

/// The connection to the source, once the VM's memory and state are in.
#[derive(Debug)]
pub struct Incoming {
    stream: Stream,
}

/// The guest's memory for `config`'s machine and the KVM VM for it, made before the
/// address is published (so before any source can connect): registering the memory with
/// KVM takes milliseconds on some hosts (5 to 10 ms under kvm-pvm), which must not fall
/// into the guest's pause.
pub fn prepare(config: &VmConfig) -> Result<(GuestMemoryMmap, Shell), MigrationError> {
    let memory_bytes = config.memory_mib << 20;
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), memory_bytes as usize)])
        .map_err(|e| MigrationError::Failed(format!("guest memory: {e}")))?;
    let shell = Shell::new(&memory).map_err(|e| MigrationError::Failed(format!("preparing the VM: {e}")))?;
    Ok((memory, shell))
}

/// Take one source's connection (over `tls` where given: a source that is not its host
/// fails the handshake) and everything it sends up to the VM's state. The source must
/// describe the machine `config` describes; otherwise it is told why (`Refused`) and
/// nothing is built.
pub fn receive(
    listener: TcpListener,
    config: &VmConfig,
    (memory, shell): (GuestMemoryMmap, Shell),
    tls: Option<&MigrationTls>,
) -> Result<Received, MigrationError> {
    let tcp = accept(&listener)?;
    drop(listener); // one source only
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_millis(ANSWER_TIMEOUT_MS)))?;
    tcp.set_write_timeout(Some(Duration::from_millis(ANSWER_TIMEOUT_MS)))?;
    let stream = match tls {
        Some(t) => tls::server(tcp, t)?,
        None => Stream::Plain(tcp),
    };
    if let Err(e) = tls.map_or(Ok(()), |t| stream.check_peer(&t.peer)) {
        refuse(stream, &e.to_string());
        return Err(e);
    }
    let mut reader = std::io::BufReader::with_capacity(1 << 20, stream);
    let filled = fill(&mut reader, config, &memory);
    // The source sends nothing after the state until it hears `Ready`: nothing is left
    // in the buffer.
    debug_assert!(filled.is_err() || reader.buffer().is_empty());
    let stream = reader.into_inner();
    match filled {
        Ok(state) => Ok(Received { memory, state, shell, incoming: Incoming { stream } }),
        Err(e) => {
            refuse(stream, &e.to_string());
            Err(e)
        }
    }
}

/// Tell the source why not, then take in what it still sends until it hangs up (or
/// [`ANSWER_TIMEOUT_MS`] pass): closing on unread bytes would reset the connection, and
/// the reset could overtake the reason.
fn refuse(mut stream: Stream, why: &str) {
    if wire::write_frame(&mut stream, Tag::Refused, why.as_bytes()).and_then(|()| stream.flush()).is_err() {
        return;
    }
    stream.finish();
    let deadline = Instant::now() + Duration::from_millis(ANSWER_TIMEOUT_MS);
    let mut sink = vec![0u8; 64 << 10];
    while Instant::now() < deadline {
        // The socket's bytes, not the stream's: what comes is dropped unread.
        match stream.tcp().read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The source's connection, taken the moment it comes (an epoll wait, not a poll: the
/// source may pause its guest right after connecting, for an idle guest's whole copy).
fn accept(listener: &TcpListener) -> Result<TcpStream, MigrationError> {
    let deadline = Instant::now() + Duration::from_millis(ACCEPT_TIMEOUT_MS);
    let epoll = |e: vmm_sys_util::errno::Error| MigrationError::Io(e.into());
    let ready = vmm_sys_util::poll::PollContext::<u32>::new().map_err(epoll)?;
    ready.add(listener, 0).map_err(epoll)?;
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(MigrationError::Failed(format!(
                        "no source connected within {ACCEPT_TIMEOUT_MS} ms"
                    )));
                }
                ready.wait_timeout(left).map_err(epoll)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Read the source's pages into `memory` (made for `config`'s machine) up to the VM's
/// state.
fn fill(
    input: &mut impl std::io::Read,
    config: &VmConfig,
    memory: &GuestMemoryMmap,
) -> Result<VmState, MigrationError> {
    let bad = MigrationError::Protocol;
    let mut buf = Vec::new();
    let tag = wire::read_frame(input, &mut buf)?;
    if tag != Tag::Hello {
        return Err(bad(format!("{tag:?} where Hello was due")));
    }
    let hello: wire::Hello =
        serde_json::from_slice(&buf).map_err(|e| bad(format!("a malformed Hello: {e}")))?;
    if hello.version != wire::VERSION {
        return Err(bad(format!("protocol version {} (this VMM speaks {})", hello.version, wire::VERSION)));
    }
    let shape = (hello.domain.as_str(), hello.memory_mib, hello.vcpus);
    if shape != (config.domain.as_str(), config.memory_mib, config.vcpus) {
        return Err(MigrationError::Failed(format!(
            "the source sends {} with {} MiB and {} vCPUs; this VMM was started for {} with {} MiB and {} vCPUs",
            hello.domain, hello.memory_mib, hello.vcpus, config.domain, config.memory_mib, config.vcpus
        )));
    }
    let pages = (config.memory_mib << 20) / PAGE_BYTES as u64;
    let zeros = vec![0u8; PAGE_BYTES];
    loop {
        let tag = wire::read_frame(input, &mut buf)?;
        match tag {
            Tag::Pages | Tag::Zeros => {
                let with_data = tag == Tag::Pages;
                let numbers = wire::page_numbers(&buf, with_data, pages)?;
                let data = &buf[4 + numbers.len() * 8..];
                for (i, &p) in numbers.iter().enumerate() {
                    let page =
                        if with_data { &data[i * PAGE_BYTES..(i + 1) * PAGE_BYTES] } else { &zeros[..] };
                    memory
                        .write_slice(page, GuestAddress(p * PAGE_BYTES as u64))
                        .map_err(|e| MigrationError::Failed(format!("writing guest page {p}: {e}")))?;
                }
            }
            Tag::State => {
                let state: VmState =
                    serde_json::from_slice(&buf).map_err(|e| bad(format!("a malformed VM state: {e}")))?;
                // The writes above are the source's, not the guest's: none is dirty here.
                for region in memory.iter() {
                    std::ops::Deref::deref(region).bitmap().reset();
                }
                return Ok(state);
            }
            other => return Err(bad(format!("{other:?} in the middle of the pages"))),
        }
    }
}

impl Incoming {
    /// The VM could not be built from what came: tell the source why.
    pub fn refuse(self, why: &str) {
        refuse(self.stream, why);
    }

    /// Tell the source `vm` is built (paused), then wait in a thread for its `Go`: resume
    /// the guest if it ran on the source, and say so. A source that goes away without
    /// `Go` leaves the VM paused; its host decides what becomes of it.
    pub fn ready(mut self, vm: Arc<Vm>) -> Result<(), MigrationError> {
        wire::write_frame(&mut self.stream, Tag::Ready, &[])?;
        self.stream.flush()?;
        // The cluster's commit comes between Ready and Go, however long it takes.
        self.stream.tcp().set_read_timeout(None)?;
        std::thread::Builder::new().name("migrate-in".into()).spawn(move || {
            let mut buf = Vec::new();
            match wire::read_frame(&mut self.stream, &mut buf) {
                Ok(Tag::Go) => {
                    let run = buf.first().copied() == Some(1);
                    let resumed = if run { vm.resume() } else { Ok(()) };
                    match resumed {
                        Ok(()) => {
                            let _ = wire::write_frame(&mut self.stream, Tag::Resumed, &[]);
                        }
                        Err(e) => eprintln!("drover-vmm: resuming the migrated VM: {e}"),
                    }
                }
                Ok(other) => eprintln!("drover-vmm: {other:?} where Go was due; staying paused"),
                Err(e) => eprintln!("drover-vmm: the source went away before Go ({e}); staying paused"),
            }
        })?;
        Ok(())
    }
}
