//! Drover's own micro-VMM: one OS process per VM on KVM, built from rust-vmm crates
//! (kvm-ioctls, vm-memory, linux-loader, vm-superio, virtio-queue).
//!
//! Contract: [`vm::Vm`] boots one guest from a [`config::VmConfig`] — a PVH ELF (Xen note
//! 18), a Linux `vmlinux` ELF or a `bzImage` (64-bit Linux boot protocol), with an initrd
//! and a command line — on KVM's in-kernel irqchip and PIT, with up to 32 vCPUs (an MP
//! table, [`mptable`]), an 8250 serial console captured to a size-capped log
//! ([`console_log`]), a power-off port and i8042 reset ([`devices`]), up to
//! [`layout::DISKS_MAX`] virtio-blk disks backed by raw files (each writable, or read-only:
//! opened read-only, offered as such, writes refused) and virtio-net NICs on taps, over
//! virtio-mmio. The VMM process ([`process`], run as `drover vmm` or `drover-vmm`) serves
//! the [`control`] protocol (JSON lines on a Unix socket) that hostd's `kvm` driver
//! speaks: status, pause, resume, shutdown, reboot, destroy, snapshot; when the VM ends it
//! writes its exit record beside the socket, so a restarted hostd learns how a VM it did
//! not watch ended. [`snapshot`] saves a VM's whole state (vCPUs, irqchip, PIT, clock,
//! devices, touched memory, every writable disk's contents) to a versioned, checksummed,
//! sparse file, and a VM starts from one (`--restore-from`) with the memory image mapped
//! copy-on-write and its disks put back to the snapshot's instant. A VM process given its
//! host's [`lease`] file ends itself the moment the lease passes (self-fencing).
//!
//! This is the only crate of the workspace that holds `unsafe` code; every block carries a
//! `// SAFETY:` comment. Everything below the [`vm`] layer is safe Rust over the rust-vmm
//! crates' abstractions.
#![allow(unsafe_code)] // The one crate allowed to; each block says why it is sound.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod boot;
pub mod config;
pub mod console_log;
pub mod control;
pub mod devices;
pub mod layout;
pub mod lease;
pub mod mptable;
pub mod process;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

/// The serial input byte that asks a guest to power off (the test guest and Drover's
/// Linux initramfs both honour it).
pub const POWER_OFF_KEY: u8 = b'p';

/// Whether this process may use KVM (`/dev/kvm` opens read-write).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// Set to `1` where KVM must work (`.ci/run` sets it on machines with `/dev/kvm`).
pub const REQUIRE_KVM_ENV: &str = "DROVER_REQUIRE_KVM";

/// For tests that need KVM: whether it is usable. Where it is not, the test says so on
/// stderr (`SKIPPED: ...`, naming `what` did not run) and should return — unless
/// [`REQUIRE_KVM_ENV`] is `1`, where this panics instead, so a broken `/dev/kvm` fails CI
/// rather than passing it silently.
pub fn kvm_present_for(what: &str) -> bool {
    let required = std::env::var(REQUIRE_KVM_ENV).as_deref() == Ok("1");
    device_present_for(std::path::Path::new("/dev/kvm"), what, required)
}

fn device_present_for(device: &std::path::Path, what: &str, required: bool) -> bool {
    let why = match std::fs::OpenOptions::new().read(true).write(true).open(device) {
        Ok(_) => return true,
        Err(e) => e.to_string(),
    };
    assert!(
        !required,
        "{REQUIRE_KVM_ENV}=1 but {} is not usable ({why}): {what} cannot run",
        device.display()
    );
    eprintln!("SKIPPED: {} is not usable here ({why}); {what} did not run", device.display());
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_skips_unless_it_is_required() {
        let missing = std::path::Path::new("/nonexistent/kvm");
        assert!(!device_present_for(missing, "this test", false));
        let required = std::panic::catch_unwind(|| device_present_for(missing, "this test", true));
        let message = *required.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("DROVER_REQUIRE_KVM=1 but /nonexistent/kvm is not usable"), "{message}");
    }
}
