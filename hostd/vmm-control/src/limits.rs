//! The largest VM Drover's own VMM runs, one owner for each limit: the VMM checks a
//! configuration against them before touching KVM, its device layout asserts that it has
//! room for them, and hostd's kvm driver tells the cluster (`Driver::vm_limits`), so the
//! scheduler never places a VM here that the VMM would refuse.

/// Guest RAM below the MMIO hole; larger guests need a second memory region (not yet).
pub const MEMORY_MIB_MAX: u64 = 3072;
/// The smallest guest: the test guest needs 1 MiB of image plus its dirty area.
pub const MEMORY_MIB_MIN: u64 = 4;
/// vCPUs per VM (what the MP table has room for below 640 KiB).
pub const VCPUS_MAX: u8 = 32;
/// The kernel command line, without the terminating NUL.
pub const CMDLINE_BYTES_MAX: usize = 4095;
/// Disks (virtio-blk devices) per VM: one MMIO window and interrupt line each.
pub const DISKS_MAX: usize = 8;
/// NICs (virtio-net devices) per VM: one MMIO window and interrupt line each.
pub const NICS_MAX: usize = 8;
/// How long a live migration's pre-copy may go on before its source gives up (the VM
/// runs on there): the own VMM's copy, and QEMU's as hostd's qemu driver watches it.
pub const MIGRATION_COPY_TIMEOUT_MS: u64 = 120_000;
/// How long a live migration's copy may all but stand still (a target that stopped
/// reading, a link that drops every packet and sends no reset) before its source cuts
/// it; the own VMM also waits this long for the target's answers.
pub const MIGRATION_STALL_MS: u64 = 30_000;
/// The least a live migration's copy must move in every [`MIGRATION_STALL_MS`] (about
/// 280 KB/s); less is a stall: a link or target that lets a little through now and then
/// would otherwise hold the copy for ever.
pub const MIGRATION_STALL_ADVANCE_MIN_BYTES: u64 = 8 << 20;

/// Why a migration whose copy stalled ([`MIGRATION_STALL_MS`]) failed, as either source
/// says it.
pub fn migration_stalled() -> String {
    format!(
        "migration stream: the copy stood still for {} s (the link or the target stalled)",
        MIGRATION_STALL_MS / 1000
    )
}
