//! The VM's devices and the bus that routes vCPU port and MMIO exits to them.
//!
//! One file per device, Firecracker style: `serial` (8250 UART, vm-superio), `power`
//! (power-off port and i8042 reset line), `virtio_mmio` (the transport), `virtio_blk` and
//! `virtio_net`.

pub mod power;
pub mod serial;
pub mod virtio_blk;
pub mod virtio_mmio;
pub mod virtio_net;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::layout;
use power::Power;
use serial::Console;
use virtio_mmio::MmioTransport;

/// What a vCPU exit asked of the machine as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusEvent {
    None,
    PowerOff,
    Reset,
    /// The guest asks to idle for this many milliseconds (see `layout::IDLE_PORT`).
    Idle(u64),
}

/// Every device of one VM, shared between its vCPU thread and the control thread.
#[derive(Debug)]
pub struct Bus {
    pub console: Arc<Mutex<Console>>,
    pub power: Power,
    /// Disk `i` (in guest order) at `layout::disk_slot(i)`.
    pub disks: Vec<Mutex<MmioTransport<virtio_blk::Block>>>,
    /// NIC `i` at `layout::VIRTIO_NET_MMIO + i * VIRTIO_MMIO_SIZE`; its receive thread
    /// holds the other reference.
    pub nics: Vec<Arc<Mutex<MmioTransport<virtio_net::Net>>>>,
    /// Port and MMIO accesses that no device claimed (reads return all ones).
    pub unclaimed: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A device panicking while locked already ended the VM; keep the state it left.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Bus {
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        match port {
            p if (layout::COM1_PORT..layout::COM1_PORT + 8).contains(&p) && data.len() == 1 => {
                data[0] = locked(&self.console).read((p - layout::COM1_PORT) as u8);
            }
            layout::I8042_DATA_PORT | layout::I8042_COMMAND_PORT if data.len() == 1 => {
                data[0] = self.power.i8042_read(port);
            }
            _ => {
                self.unclaimed.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff);
            }
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) -> BusEvent {
        match port {
            p if (layout::COM1_PORT..layout::COM1_PORT + 8).contains(&p) && data.len() == 1 => {
                locked(&self.console).write((p - layout::COM1_PORT) as u8, data[0]);
                BusEvent::None
            }
            layout::POWER_OFF_PORT => BusEvent::PowerOff,
            layout::IDLE_PORT if data.len() == 2 => {
                BusEvent::Idle(u64::from(u16::from_le_bytes([data[0], data[1]])))
            }
            layout::I8042_DATA_PORT | layout::I8042_COMMAND_PORT if data.len() == 1 => {
                self.power.i8042_write(port, data[0])
            }
            _ => {
                self.unclaimed.fetch_add(1, Ordering::Relaxed);
                BusEvent::None
            }
        }
    }

    /// The virtio device whose window holds `addr`, and the offset into it.
    fn virtio_at(&self, addr: u64) -> Option<(VirtioSlot<'_>, u64)> {
        let size = layout::VIRTIO_MMIO_SIZE;
        if (layout::VIRTIO_BLK_MMIO..layout::VIRTIO_BLK_MMIO + size).contains(&addr) {
            let disk = self.disks.first()?;
            return Some((VirtioSlot::Disk(disk), addr - layout::VIRTIO_BLK_MMIO));
        }
        if let Some(offset) = addr.checked_sub(layout::VIRTIO_BLK_MORE_MMIO) {
            // Disks 1.. follow the NICs' windows.
            let disk = self.disks.get(usize::try_from(offset / size).ok()?.checked_add(1)?)?;
            return Some((VirtioSlot::Disk(disk), offset % size));
        }
        let offset = addr.checked_sub(layout::VIRTIO_NET_MMIO)?;
        let nic = self.nics.get(usize::try_from(offset / size).ok()?)?;
        Some((VirtioSlot::Nic(nic), offset % size))
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.virtio_at(addr) {
            Some((VirtioSlot::Disk(d), offset)) => locked(d).read(offset, data),
            Some((VirtioSlot::Nic(n), offset)) => locked(n).read(offset, data),
            None => {
                self.unclaimed.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff);
            }
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        match self.virtio_at(addr) {
            Some((VirtioSlot::Disk(d), offset)) => locked(d).write(offset, data),
            Some((VirtioSlot::Nic(n), offset)) => locked(n).write(offset, data),
            None => {
                self.unclaimed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Put every virtio device back in its reset state (the VM reboots).
    pub fn reset_virtio(&self) {
        let status_zero = 0u32.to_le_bytes();
        for d in &self.disks {
            locked(d).write(0x70, &status_zero);
        }
        for n in &self.nics {
            locked(n).write(0x70, &status_zero);
        }
    }
}

enum VirtioSlot<'a> {
    Disk(&'a Mutex<MmioTransport<virtio_blk::Block>>),
    Nic(&'a Mutex<MmioTransport<virtio_net::Net>>),
}
