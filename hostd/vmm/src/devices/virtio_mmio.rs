//! The virtio-mmio transport (virtio 1.x, "version 2" register layout), polled by the
//! vCPU thread: a queue notification processes the queue on the spot, then raises the
//! device's interrupt if the device asks for it.

use std::sync::atomic::Ordering;

use crate::memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4452_5652; // "DRVR"
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FAILED: u32 = 128;
const INTERRUPT_USED_RING: u32 = 1;
const INTERRUPT_CONFIG: u32 = 2;

/// What a device behind the transport provides.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Offered feature bits (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    fn queue_max_sizes(&self) -> &[u16];
    /// Read the device's configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Handle what the driver made available on `queue`; true if the guest should be
    /// interrupted.
    fn process(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool;
    /// The driver reset the device: forget any state kept beside the queues.
    fn reset(&mut self) {}
}

#[derive(Debug)]
pub struct MmioTransport<D> {
    pub device: D,
    mem: GuestMemoryMmap,
    irq: EventFd,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    /// Bumped each time the device's configuration changes under the driver, which
    /// reads it before and after the configuration to see a consistent one.
    config_generation: u32,
    /// Registers written with bad values or at unknown offsets.
    pub bad_writes: u64,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D, mem: GuestMemoryMmap, irq: EventFd) -> MmioTransport<D> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            mem,
            irq,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            bad_writes: 0,
        }
    }

    fn offered(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.queue_select = 0;
        self.device.reset();
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        let value = match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR_ID,
            0x010 => match self.device_features_select {
                0 => self.offered() as u32,
                1 => (self.offered() >> 32) as u32,
                _ => 0,
            },
            0x034 => self.selected().map_or(0, |q| u32::from(q.max_size())),
            0x044 => self.selected().map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 4 {
            self.bad_writes += 1;
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match offset {
            0x014 => self.device_features_select = v,
            0x020 => match self.driver_features_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
                _ => self.bad_writes += 1,
            },
            0x024 => self.driver_features_select = v,
            0x030 => self.queue_select = v,
            0x038 => match self.selected() {
                Some(q) => q.set_size(v as u16),
                None => self.bad_writes += 1,
            },
            0x044 => match self.selected() {
                Some(q) => q.set_ready(v == 1),
                None => self.bad_writes += 1,
            },
            0x050 => self.notify(v as usize),
            0x064 => self.interrupt_status &= !v,
            0x070 => self.set_status(v),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                let Some(q) = self.selected() else {
                    self.bad_writes += 1;
                    return;
                };
                let (lo, hi) = if offset & 4 == 0 { (Some(v), None) } else { (None, Some(v)) };
                match offset & !4 {
                    0x080 => q.set_desc_table_address(lo, hi),
                    0x090 => q.set_avail_ring_address(lo, hi),
                    _ => q.set_used_ring_address(lo, hi),
                }
            }
            _ => self.bad_writes += 1,
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        // FEATURES_OK only sticks if the driver took nothing we did not offer and
        // speaks virtio 1.x.
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let ok =
                self.driver_features & !self.offered() == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                v &= !STATUS_FEATURES_OK;
            }
        }
        if v & STATUS_DRIVER_OK != 0 && !self.queues.iter().all(|q| !q.ready() || q.is_valid(&self.mem)) {
            v |= STATUS_FAILED;
        }
        self.status = v;
    }

    fn notify(&mut self, index: usize) {
        if !self.driver_ok() || index >= self.queues.len() {
            self.bad_writes += 1;
            return;
        }
        self.run_queue(index);
    }

    /// Let the device work on queue `index` (the driver notified it, or the device has
    /// something for it), then interrupt the guest if the device asks to. Does nothing
    /// before the driver has set the device up.
    pub fn run_queue(&mut self, index: usize) {
        if !self.driver_ok() {
            return;
        }
        let Some(queue) = self.queues.get_mut(index) else { return };
        if !queue.ready() {
            return;
        }
        if self.device.process(index, queue, &self.mem) {
            self.interrupt_status |= INTERRUPT_USED_RING;
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.irq.write(1).is_err() {
                self.bad_writes += 1;
            }
        }
    }

    /// The device's configuration changed under the driver (a restored NIC with another
    /// MAC): bump the generation and, once the driver runs the device, tell it with a
    /// configuration-change interrupt (virtio 1.x, 4.2.2.1) so it reads the config again.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if !self.driver_ok() {
            return;
        }
        self.interrupt_status |= INTERRUPT_CONFIG;
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.irq.write(1).is_err() {
            self.bad_writes += 1;
        }
    }

    /// The transport's registers and its queues' positions, for a snapshot. The device
    /// behind it keeps nothing else a guest could observe (a NIC's frames not yet
    /// delivered are dropped, as a wire would).
    pub fn state(&self) -> TransportState {
        TransportState {
            queues: self.queues.iter().map(Queue::state).collect(),
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
        }
    }

    /// Take on a snapshot's state (the guest's memory is already restored).
    pub fn restore(&mut self, state: &TransportState) -> Result<(), String> {
        if state.queues.len() != self.queues.len() {
            return Err(format!(
                "{} queues in the snapshot, the device has {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (q, mine) in state.queues.iter().zip(&self.queues) {
            if q.max_size != mine.max_size() {
                return Err(format!(
                    "queue of {} entries in the snapshot, the device has {}",
                    q.max_size,
                    mine.max_size()
                ));
            }
            queues.push(Queue::try_from(*q).map_err(|e| format!("queue state: {e}"))?);
        }
        self.queues = queues;
        self.queue_select = state.queue_select;
        self.device_features_select = state.device_features_select;
        self.driver_features_select = state.driver_features_select;
        self.driver_features = state.driver_features;
        self.status = state.status;
        self.interrupt_status = state.interrupt_status;
        self.config_generation = state.config_generation;
        Ok(())
    }

    /// Whether the driver finished setting the device up.
    pub fn driver_ok(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_FAILED == 0
    }
}

/// A virtio-mmio transport in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    #[serde(with = "queue_states")]
    pub queues: Vec<QueueState>,
    pub queue_select: u32,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub driver_features: u64,
    pub status: u32,
    pub interrupt_status: u32,
    /// Absent from snapshots taken before it was kept (always 0 then).
    #[serde(default)]
    pub config_generation: u32,
}

/// virtio-queue's `QueueState`, field for field, for serde.
#[derive(Serialize, Deserialize)]
#[serde(remote = "QueueState")]
struct QueueStateDef {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

mod queue_states {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use virtio_queue::QueueState;

    #[derive(Serialize, Deserialize)]
    struct Wrap(#[serde(with = "super::QueueStateDef")] QueueState);

    pub fn serialize<S: Serializer>(queues: &[QueueState], s: S) -> Result<S::Ok, S::Error> {
        let wrapped: Vec<Wrap> = queues.iter().map(|q| Wrap(*q)).collect();
        wrapped.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<QueueState>, D::Error> {
        Ok(Vec::<Wrap>::deserialize(d)?.into_iter().map(|w| w.0).collect())
    }
}
