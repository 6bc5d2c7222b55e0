//! Power: the power-off port (QEMU's isa-debug-exit port, so one guest image powers off
//! under both) and the i8042 controller, whose 0xfe command pulses the reset line
//! (vm-superio's model). Ctrl-Alt-Del can be sent to a Linux guest through it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vm_superio::{I8042Device, Trigger};

use super::BusEvent;
use crate::layout;

/// Records that the guest pulsed the reset line.
#[derive(Debug, Clone, Default)]
pub struct ResetLine(Arc<AtomicBool>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

pub struct Power {
    i8042: Mutex<I8042Device<ResetLine>>,
    reset: ResetLine,
}

impl std::fmt::Debug for Power {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Power").finish_non_exhaustive()
    }
}

impl Default for Power {
    fn default() -> Self {
        let reset = ResetLine::default();
        Power { i8042: Mutex::new(I8042Device::new(reset.clone())), reset }
    }
}

impl Power {
    fn offset(port: u16) -> u8 {
        (port - layout::I8042_DATA_PORT) as u8
    }

    pub fn i8042_read(&self, port: u16) -> u8 {
        self.i8042.lock().unwrap_or_else(|p| p.into_inner()).read(Self::offset(port))
    }

    pub fn i8042_write(&self, port: u16, value: u8) -> BusEvent {
        let Ok(()) = self.i8042.lock().unwrap_or_else(|p| p.into_inner()).write(Self::offset(port), value);
        if self.reset.0.swap(false, Ordering::SeqCst) {
            BusEvent::Reset
        } else {
            BusEvent::None
        }
    }
}
