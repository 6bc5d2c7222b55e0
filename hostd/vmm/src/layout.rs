//! Where things live in guest-physical memory and on the I/O bus (x86_64).

use vm_memory::GuestAddress;

/// Boot GDT for the Linux 64-bit protocol.
pub const BOOT_GDT: GuestAddress = GuestAddress(0x500);
/// Boot IDT (empty) for the Linux 64-bit protocol.
pub const BOOT_IDT: GuestAddress = GuestAddress(0x520);
/// PVH `hvm_start_info`, followed by its memory map.
pub const PVH_START_INFO: GuestAddress = GuestAddress(0x6000);
pub const PVH_MEMMAP: GuestAddress = GuestAddress(0x6100);
/// Linux `boot_params` (the zero page).
pub const ZERO_PAGE: GuestAddress = GuestAddress(0x7000);
/// Identity page tables for the Linux 64-bit protocol: PML4, PDPT, PD (first 1 GiB).
pub const PML4: GuestAddress = GuestAddress(0x9000);
pub const PDPT: GuestAddress = GuestAddress(0xa000);
pub const PD: GuestAddress = GuestAddress(0xb000);
/// The kernel command line.
pub const CMDLINE: GuestAddress = GuestAddress(0x20000);
/// Start of the EBDA hole (legacy BIOS area) up to 1 MiB.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table (`mptable`), in the last KiB of base memory where kernels look for it.
pub const MPTABLE_START: u64 = EBDA_START;
/// Where the local APICs and the IOAPIC answer (KVM's in-kernel irqchip).
pub const APIC_ADDRESS: u64 = 0xfee0_0000;
pub const IOAPIC_ADDRESS: u64 = 0xfec0_0000;
/// Kernels load at 1 MiB.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);
/// Start of the MMIO hole; RAM stays below it.
pub const MMIO_START: u64 = 0xd000_0000;
/// Every virtio device has one virtio-mmio window of this size and one interrupt line.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Disk 0 (virtio-blk): its window and interrupt line, where the one disk of earlier
/// VMMs sat (a snapshot of such a VM restores with its disk where the guest left it).
pub const VIRTIO_BLK_MMIO: u64 = MMIO_START;
pub const VIRTIO_BLK_IRQ: u32 = 5;
/// NIC `i` (virtio-net) has the window at `VIRTIO_NET_MMIO + i * VIRTIO_MMIO_SIZE` and
/// interrupt line `VIRTIO_NET_IRQ + i`, for `i < NICS_MAX` (lines 6..=13 of the IOAPIC).
pub const VIRTIO_NET_MMIO: u64 = MMIO_START + VIRTIO_MMIO_SIZE;
pub const VIRTIO_NET_IRQ: u32 = 6;
pub use vmm_control::limits::NICS_MAX;
/// Disk `i`, for `1 <= i < DISKS_MAX`, has the window at
/// `VIRTIO_BLK_MORE_MMIO + (i - 1) * VIRTIO_MMIO_SIZE` (after the NICs') and interrupt
/// line `VIRTIO_BLK_MORE_IRQ + i - 1` (lines 14..=20 of the IOAPIC).
pub const VIRTIO_BLK_MORE_MMIO: u64 = VIRTIO_NET_MMIO + NICS_MAX as u64 * VIRTIO_MMIO_SIZE;
pub const VIRTIO_BLK_MORE_IRQ: u32 = VIRTIO_NET_IRQ + NICS_MAX as u32;
/// Disks (virtio-blk devices) per VM, one window and line each (checked below).
pub use vmm_control::limits::DISKS_MAX;
const _: () = assert!(
    VIRTIO_BLK_MORE_IRQ + DISKS_MAX as u32 - 2 < crate::mptable::IOAPIC_PINS as u32,
    "every disk's interrupt line is an IOAPIC pin"
);

/// Disk `i`'s virtio-mmio window and interrupt line (`i < DISKS_MAX`).
pub fn disk_slot(i: usize) -> (u64, u32) {
    debug_assert!(i < DISKS_MAX, "disk {i}");
    match i {
        0 => (VIRTIO_BLK_MMIO, VIRTIO_BLK_IRQ),
        _ => (VIRTIO_BLK_MORE_MMIO + (i as u64 - 1) * VIRTIO_MMIO_SIZE, VIRTIO_BLK_MORE_IRQ + i as u32 - 1),
    }
}

/// NIC `i`'s virtio-mmio window and interrupt line (`i < NICS_MAX`).
pub fn nic_slot(i: usize) -> (u64, u32) {
    debug_assert!(i < NICS_MAX, "NIC {i}");
    (VIRTIO_NET_MMIO + i as u64 * VIRTIO_MMIO_SIZE, VIRTIO_NET_IRQ + i as u32)
}
/// COM1 and its interrupt line.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// A write here powers the VM off (the port QEMU's isa-debug-exit uses by default).
pub const POWER_OFF_PORT: u16 = 0xf4;
/// A 16-bit write of N here asks the VMM to idle the vCPU for N ms, or until a request
/// or serial input arrives (a paravirtual "sleep" for ring-3 guests, which cannot halt).
/// Elsewhere (QEMU) the port is unclaimed and the write does nothing.
pub const IDLE_PORT: u16 = 0xf6;
/// The longest single idle.
pub const IDLE_MS_MAX: u64 = 100;
/// i8042 command port: 0xfe pulses the reset line.
pub const I8042_COMMAND_PORT: u16 = 0x64;
pub const I8042_DATA_PORT: u16 = 0x60;
/// The TSS KVM needs on Intel for real-mode emulation (3 pages below 4 GiB).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// The boot stack for the Linux 64-bit protocol (grows down below the zero page).
pub const BOOT_STACK: u64 = 0x8ff0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_slots_neither_overlap_nor_share_a_line() {
        let mut slots: Vec<(u64, u32)> =
            (0..DISKS_MAX).map(disk_slot).chain((0..NICS_MAX).map(nic_slot)).collect();
        assert_eq!(disk_slot(0), (MMIO_START, 5), "disk 0 stays where snapshots of one-disk VMs have it");
        assert_eq!(disk_slot(1), (MMIO_START + 9 * VIRTIO_MMIO_SIZE, 14));
        assert_eq!(disk_slot(DISKS_MAX - 1).1, 20);
        slots.sort_unstable();
        for pair in slots.windows(2) {
            assert!(pair[0].0 + VIRTIO_MMIO_SIZE <= pair[1].0, "{pair:?}");
        }
        let mut lines: Vec<u32> = slots.iter().map(|s| s.1).collect();
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), DISKS_MAX + NICS_MAX);
        assert!(lines.iter().all(|&l| l != COM1_IRQ && l < u32::from(crate::mptable::IOAPIC_PINS)));
        assert!(slots.last().unwrap().0 + VIRTIO_MMIO_SIZE <= IOAPIC_ADDRESS);
    }
}
