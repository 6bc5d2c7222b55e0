//! The VM's devices and the bus that routes vCPU port and MMIO exits to them.
//!
//! One file per device, Firecracker style: `serial` (8250 UART, vm-superio), `power`
//! (power-off port and i8042 reset line), `virtio_mmio` (the transport) and `virtio_blk`.

pub mod power;
pub mod serial;
pub mod virtio_blk;
pub mod virtio_mmio;

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
    pub disk: Option<Mutex<MmioTransport<virtio_blk::Block>>>,
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

    fn disk_at(&self, addr: u64) -> Option<(&Mutex<MmioTransport<virtio_blk::Block>>, u64)> {
        let base = layout::VIRTIO_BLK_MMIO;
        match &self.disk {
            Some(d) if (base..base + layout::VIRTIO_MMIO_SIZE).contains(&addr) => Some((d, addr - base)),
            _ => None,
        }
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.disk_at(addr) {
            Some((d, offset)) => locked(d).read(offset, data),
            None => {
                self.unclaimed.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff);
            }
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        match self.disk_at(addr) {
            Some((d, offset)) => locked(d).write(offset, data),
            None => {
                self.unclaimed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
