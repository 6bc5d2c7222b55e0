//! COM1: vm-superio's 8250 UART, its output going to the size-capped console log, its
//! interrupt to KVM through an irqfd. Input (the control socket's power-off key) is
//! queued into its receive FIFO.

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::console_log::ConsoleLog;

/// An interrupt line into KVM (an irqfd).
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serial console of one VM.
pub struct Console {
    uart: Serial<IrqLine, vm_superio::serial::NoEvents, ConsoleLog>,
    /// Output bytes the log could not take (disk full): counted, never fatal to the guest.
    pub lost_bytes: u64,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("lost_bytes", &self.lost_bytes).finish_non_exhaustive()
    }
}

impl Console {
    pub fn new(irq: IrqLine, log: ConsoleLog) -> Console {
        Console { uart: Serial::new(irq, log), lost_bytes: 0 }
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        if self.uart.write(offset, value).is_err() {
            self.lost_bytes += 1;
        }
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn state(&self) -> SerialSnapshot {
        SerialSnapshot { uart: self.uart.state() }
    }

    /// A console in the state a snapshot recorded, writing to `log`.
    pub fn from_state(irq: IrqLine, log: ConsoleLog, state: &SerialSnapshot) -> Result<Console, String> {
        let uart = Serial::from_state(&state.uart, irq, vm_superio::serial::NoEvents, log)
            .map_err(|e| format!("serial state: {e:?}"))?;
        Ok(Console { uart, lost_bytes: 0 })
    }

    /// Queue bytes for the guest to read; returns how many fit in the FIFO.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

/// The serial port in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    #[serde(with = "SerialStateDef")]
    pub uart: SerialState,
}

/// vm-superio's `SerialState`, field for field, for serde.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SerialStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}
