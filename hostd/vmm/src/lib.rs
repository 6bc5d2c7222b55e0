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
//! speaks: status, pause, resume, shutdown, reboot, destroy, snapshot, migrate; when the VM ends it
//! writes its exit record beside the socket, so a restarted hostd learns how a VM it did
//! not watch ended. [`snapshot`] saves a VM's whole state (vCPUs, irqchip, PIT, clock,
//! devices, touched memory, every writable disk's contents) to a versioned, checksummed,
//! sparse file, and a VM starts from one (`--restore-from`) with the memory image mapped
//! copy-on-write and its disks put back to the snapshot's instant. A VM process given its
//! host's [`lease`] file ends itself the moment the lease passes (self-fencing).
//! [`migration`] moves a running VM to another VMM process over TCP, or mutual TLS
//! between the two hosts' certificates (`--incoming-tls-dir`/`--incoming-peer`; pre-copy rounds
//! from KVM's dirty log and the memory's own bitmap, [`memory`]; auto-converge
//! throttling; the snapshot's VM state at the end; the target runs only on the source's
//! `Go`, sent once the cluster committed the switch-over): `--incoming ADDR` on the
//! target, `migrate_send`/`migrate_switch`/`migrate_cancel` on the source's socket.
//!
//! This is the only crate of the workspace that holds `unsafe` code; every block carries a
//! `// SAFETY:` comment. Everything below the [`vm`] layer is safe Rust over the rust-vmm
//! crates' abstractions.
#![allow(unsafe_code)] // The one crate allowed to; each block says why it is sound.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod boot;
pub mod config;
pub mod console_log;
pub mod devices;
pub mod layout;
pub mod lease;
pub mod memory;
pub mod migration;
pub mod mptable;
pub mod process;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

pub use vmm_control::{control, kvm_present_for, kvm_usable, POWER_OFF_KEY, REQUIRE_KVM_ENV};
