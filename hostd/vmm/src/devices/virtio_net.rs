//! virtio-net backed by a tap device: one receive and one transmit queue, the MAC address
//! in the configuration space, no offloads (every frame travels whole, with a zeroed
//! 12-byte `virtio_net_hdr_v1` in front of it in guest memory).
//!
//! Transmit runs on the vCPU thread when the driver notifies queue 1: each chain is one
//! frame, written to the tap. Receive runs on the device's own thread ([`spawn_rx`]),
//! which waits on the tap, queues what it reads (up to [`PENDING_FRAMES_MAX`]; beyond
//! that a frame is dropped, as a NIC with a full ring drops) and fills the receive
//! buffers the driver has posted; a notification of queue 0 (new buffers) delivers what
//! is still queued. A frame that does not fit the buffer chain it is offered is dropped,
//! never cut. Nothing the guest does to the queues ends the VM.
//!
//! The backend is any file whose reads and writes are whole frames: a tap in production
//! ([`open_tap`]), a datagram socket in the tests.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::virtio_mmio::{MmioTransport, VirtioDevice};

const DEVICE_TYPE_NET: u32 = 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers.
pub const HEADER_BYTES: usize = 12;
/// The largest frame either way: a 1500-byte MTU with its Ethernet header and a VLAN tag
/// (no offloads are offered, so the guest never sends more and the tap never hands more).
pub const FRAME_BYTES_MAX: usize = 1522;
/// Frames read from the tap while the guest had no receive buffer, kept until it posts
/// some.
pub const PENDING_FRAMES_MAX: usize = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
const QUEUE_SIZE_MAX: u16 = 256;
/// How long the receive thread waits on the tap before looking at its stop flag.
const RX_WAIT_MS: i32 = 100;

/// A MAC address, parsed from "52:54:00:12:34:56".
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// What the device did, for tests and the VMM's status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    pub tx_frames: u64,
    pub rx_frames: u64,
    /// Transmit chains that were malformed, too large, or that the tap refused.
    pub tx_dropped: u64,
    /// Frames dropped because the guest had no room for them.
    pub rx_dropped: u64,
}

#[derive(Debug)]
pub struct Net {
    tap: File,
    mac: [u8; 6],
    pending: VecDeque<Vec<u8>>,
    pub counters: NetCounters,
}

impl Net {
    /// A device writing to `tap` (which the receive thread reads through a clone of it).
    pub fn new(tap: File, mac: [u8; 6]) -> Net {
        Net { tap, mac, pending: VecDeque::new(), counters: NetCounters::default() }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Queue a frame read from the tap for the guest; false if it was dropped.
    pub fn push_frame(&mut self, frame: Vec<u8>) -> bool {
        if self.pending.len() >= PENDING_FRAMES_MAX || frame.len() > FRAME_BYTES_MAX {
            self.counters.rx_dropped += 1;
            return false;
        }
        self.pending.push_back(frame);
        true
    }

    /// Frames waiting for a receive buffer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Move queued frames into the receive buffers the driver posted.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used_any = false;
        while !self.pending.is_empty() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else { break };
            let head = chain.head_index();
            let frame = self.pending.pop_front().expect("not empty");
            let mut header = [0u8; HEADER_BYTES];
            header[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
            let written = match chain.writer(mem) {
                Ok(mut w) if w.available_bytes() >= HEADER_BYTES + frame.len() => {
                    match w.write_all(&header).and_then(|()| w.write_all(&frame)) {
                        Ok(()) => (HEADER_BYTES + frame.len()) as u32,
                        Err(_) => 0,
                    }
                }
                _ => 0,
            };
            if written == 0 {
                self.counters.rx_dropped += 1;
            } else {
                self.counters.rx_frames += 1;
            }
            if queue.add_used(mem, head, written).is_err() {
                self.counters.rx_dropped += 1;
            }
            used_any = true;
        }
        used_any
    }

    /// Send every frame the driver made available.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut buf = Vec::new();
            let sent = match chain.reader(mem) {
                Ok(mut r)
                    if (HEADER_BYTES..=HEADER_BYTES + FRAME_BYTES_MAX).contains(&r.available_bytes()) =>
                {
                    buf.resize(r.available_bytes(), 0);
                    r.read_exact(&mut buf).is_ok()
                        && buf.len() > HEADER_BYTES
                        && (&self.tap).write(&buf[HEADER_BYTES..]).is_ok()
                }
                _ => false,
            };
            if sent {
                self.counters.tx_frames += 1;
            } else {
                self.counters.tx_dropped += 1;
            }
            // Nothing is written back into a transmit buffer.
            if queue.add_used(mem, head, 0).is_err() {
                self.counters.tx_dropped += 1;
            }
            used_any = true;
        }
        used_any
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_NET
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE_MAX, QUEUE_SIZE_MAX]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], then status (u16); the rest reads as zero.
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn process(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let used_any = match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => false,
        };
        used_any && queue.needs_notification(mem).unwrap_or(true)
    }

    fn reset(&mut self) {
        self.pending.clear();
    }
}

/// Open (attach to) the tap device `name` (hostd creates it and plugs it into its bridge
/// first), non-blocking, without packet information: each read and write is one frame.
pub fn open_tap(name: &str) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['\0', '/']) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad tap name {name:?}")));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    /// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the
    /// 40-byte union is unused).
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _rest: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _rest: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write back the name into) a `struct ifreq`: `req`
    // is a live, writable, 40-byte `repr(C)` value laid out as the kernel's ifreq (16-byte
    // NUL-terminated name, since `name.len() < IFNAMSIZ`, then the short flags), borrowed
    // only for the call. The fd is the tun device opened just above.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("attaching to tap {name}: {e}")));
    }
    Ok(file)
}

/// The receive thread of one NIC, ended by [`RxThread::stop`] (or when dropped).
#[derive(Debug)]
pub struct RxThread {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl RxThread {
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for RxThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Start the thread that reads frames from `tap` (a clone of the device's backend) and
/// hands them to the guest through `nic`.
pub fn spawn_rx(name: String, tap: File, nic: Arc<Mutex<MmioTransport<Net>>>) -> std::io::Result<RxThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let wake = EventFd::new(libc::EFD_NONBLOCK)?;
    let epoll = Epoll::new()?;
    epoll.ctl(ControlOperation::Add, tap.as_raw_fd(), EpollEvent::new(EventSet::IN, 0))?;
    epoll.ctl(ControlOperation::Add, wake.as_raw_fd(), EpollEvent::new(EventSet::IN, 1))?;
    let thread_stop = stop.clone();
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let mut events = [EpollEvent::default(); 2];
        let mut buf = vec![0u8; 65536];
        while !thread_stop.load(Ordering::SeqCst) {
            if epoll.wait(RX_WAIT_MS, &mut events).is_err() {
                continue; // EINTR: look at the stop flag again
            }
            // Read until the tap is empty (or a ring's worth, so a flood cannot grow this
            // without bound; the tap stays readable and the next wait returns at once).
            // Every frame read is either queued or dropped, so a slow guest never leaves
            // the tap readable for a busy loop.
            let mut frames = Vec::new();
            while frames.len() < PENDING_FRAMES_MAX {
                match (&tap).read(&mut buf) {
                    Ok(n) if n > 0 => frames.push(buf[..n].to_vec()),
                    _ => break,
                }
            }
            if frames.is_empty() {
                continue;
            }
            let mut nic = locked(&nic);
            for frame in frames {
                nic.device.push_frame(frame);
            }
            nic.run_queue(RX_QUEUE);
        }
    })?;
    Ok(RxThread { stop, wake, handle: Some(handle) })
}

#[cfg(test)]
mod tests {
    //! The device model against virtio-queue's mock split queue, with a datagram socket
    //! pair standing in for the tap.
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const BUF: u64 = 0x10_0000;
    const WRITE: u16 = 2;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    /// A device whose "tap" is one end of a socket pair; the other end is the wire.
    fn device() -> (Net, UnixDatagram) {
        let (ours, wire) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        wire.set_nonblocking(true).unwrap();
        (Net::new(File::from(std::os::fd::OwnedFd::from(ours)), [0x52, 0x54, 0, 1, 2, 3]), wire)
    }

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    #[test]
    fn a_transmitted_chain_reaches_the_tap_without_its_header() {
        let mem = memory();
        let (mut net, wire) = device();
        let mut bytes = vec![0u8; HEADER_BYTES];
        bytes.extend(frame(60, 0xaa));
        mem.write_slice(&bytes, GuestAddress(BUF)).unwrap();
        // Header and frame in two descriptors, as Linux may send them.
        let descs: Vec<RawDescriptor> = vec![
            Descriptor::new(BUF, HEADER_BYTES as u32, 1, 1).into(),
            Descriptor::new(BUF + HEADER_BYTES as u64, 60, 0, 0).into(),
        ];
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        assert!(net.process(TX_QUEUE, &mut queue, &mem), "the guest is told");
        assert_eq!(vq.used().idx().load(), 1);
        let mut got = [0u8; 2048];
        let n = wire.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &frame(60, 0xaa)[..]);
        assert_eq!(net.counters.tx_frames, 1);
        assert!(wire.recv(&mut got).is_err(), "one frame only");
    }

    #[test]
    fn malformed_or_oversized_transmit_chains_are_dropped_and_completed() {
        let mem = memory();
        let (mut net, wire) = device();
        let descs: Vec<RawDescriptor> = vec![
            Descriptor::new(BUF, 4, 0, 0).into(), // shorter than the header
            Descriptor::new(BUF, (HEADER_BYTES + FRAME_BYTES_MAX + 1) as u32, 0, 0).into(),
        ];
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        net.process(TX_QUEUE, &mut queue, &mem);
        assert_eq!(vq.used().idx().load(), 2, "both chains are given back");
        assert_eq!(net.counters, NetCounters { tx_dropped: 2, ..Default::default() });
        let mut got = [0u8; 64];
        assert!(wire.recv(&mut got).is_err(), "nothing reached the tap");
    }

    /// Post `sizes` receive buffers (one descriptor each, 0x1000 apart).
    fn rx_queue<'a>(mem: &'a GuestMemoryMmap, sizes: &[u32]) -> (MockSplitQueue<'a, GuestMemoryMmap>, Queue) {
        let descs: Vec<RawDescriptor> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| Descriptor::new(BUF + 0x1000 * i as u64, len, WRITE, 0).into())
            .collect();
        let vq = MockSplitQueue::new(mem, 16);
        vq.add_desc_chains(&descs, 0).unwrap();
        let queue = vq.create_queue().unwrap();
        (vq, queue)
    }

    #[test]
    fn received_frames_fill_posted_buffers_in_order_and_wait_for_more() {
        let mem = memory();
        let (mut net, _wire) = device();
        for fill in 1..=3u8 {
            assert!(net.push_frame(frame(100, fill)));
        }
        let (vq, mut queue) = rx_queue(&mem, &[1526, 1526]);
        assert!(net.process(RX_QUEUE, &mut queue, &mem));
        assert_eq!(vq.used().idx().load(), 2);
        for i in 0..2usize {
            let used = vq.used().ring().ref_at(i).unwrap().load();
            assert_eq!(used.len() as usize, HEADER_BYTES + 100);
            let mut got = [0u8; HEADER_BYTES + 100];
            mem.read_slice(&mut got, GuestAddress(BUF + 0x1000 * i as u64)).unwrap();
            assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
            assert_eq!(&got[..10], &[0; 10]);
            assert_eq!(&got[HEADER_BYTES..], &frame(100, i as u8 + 1)[..]);
        }
        assert_eq!(net.pending(), 1, "the third frame waits for a buffer");
        assert_eq!(net.counters.rx_frames, 2);
    }

    #[test]
    fn a_frame_too_big_for_its_buffer_is_dropped_not_cut() {
        let mem = memory();
        let (mut net, _wire) = device();
        net.push_frame(frame(200, 7));
        let (vq, mut queue) = rx_queue(&mem, &[64]);
        net.process(RX_QUEUE, &mut queue, &mem);
        assert_eq!(vq.used().idx().load(), 1, "the buffer is given back");
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0, "empty");
        assert_eq!(net.counters.rx_dropped, 1);
        assert_eq!(net.pending(), 0);
    }

    #[test]
    fn frames_beyond_the_pending_limit_are_dropped() {
        let (mut net, _wire) = device();
        for _ in 0..PENDING_FRAMES_MAX {
            assert!(net.push_frame(frame(60, 1)));
        }
        assert!(!net.push_frame(frame(60, 1)));
        assert!(!device().0.push_frame(frame(FRAME_BYTES_MAX + 1, 1)), "oversized");
        assert_eq!(net.counters.rx_dropped, 1);
        net.reset();
        assert_eq!(net.pending(), 0, "a reset forgets them");
    }

    #[test]
    fn the_config_space_holds_the_mac_and_link_up() {
        let (net, _wire) = device();
        let mut config = [0u8; 8];
        net.read_config(0, &mut config);
        assert_eq!(config, [0x52, 0x54, 0, 1, 2, 3, 1, 0]);
        assert_ne!(net.features() & VIRTIO_NET_F_MAC, 0);
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("52:54:00:ab:CD:0f"), Some([0x52, 0x54, 0, 0xab, 0xcd, 0x0f]));
        for bad in ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:11", "52:54:00:ab:cd:g0", "5:54:00:ab:cd:0f"] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
