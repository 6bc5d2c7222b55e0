//! The Intel MultiProcessor table (MP spec 1.4) that tells a guest kernel how many vCPUs
//! it has, where the IOAPIC is, and how the ISA interrupt lines reach it. Linux finds it by
//! scanning the last KiB of base memory (`layout::MPTABLE_START`, the EBDA, which the
//! memory map keeps out of RAM). Built as plain bytes here, then copied into guest memory.
//!
//! Layout: the 16-byte floating pointer, then the configuration table (44-byte header,
//! one processor entry per vCPU, the ISA bus, the IOAPIC, one interrupt assignment per
//! ISA line and the two local interrupt lines: ExtINT to LINT0, NMI to LINT1), both with
//! checksums that make their bytes sum to zero.

use crate::memory::GuestMemoryMmap;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::layout;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
/// Family 6, and the feature flags FPU and APIC, as processor entries usually carry.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Interrupt lines routed through the IOAPIC, one per pin, ISA-style (edge, active high).
pub const IOAPIC_PINS: u8 = 24;
/// The room between `MPTABLE_START` and the end of base memory.
const ROOM_BYTES: usize = 0x400;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpTableError {
    #[error("an MP table for {0} vCPUs does not fit below 640 KiB")]
    TooLarge(u8),
    #[error("writing the MP table: {0}")]
    Memory(String),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_sub(*b))
}

/// The table's bytes for `vcpus` vCPUs (APIC ids 0..vcpus, 0 boots) at guest address
/// `start`.
pub fn build(vcpus: u8, start: u64) -> Result<Vec<u8>, MpTableError> {
    let ioapic_id = vcpus; // after the local APICs
    let mut entries = Vec::new();
    for id in 0..vcpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(id);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BOOT_PROCESSOR } else { 0 });
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
    }
    entries.extend([ENTRY_BUS, 0]);
    entries.extend(b"ISA   ");
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend((layout::IOAPIC_ADDRESS as u32).to_le_bytes());
    for pin in 0..IOAPIC_PINS {
        // type, interrupt type, flags (conforming), source bus, source IRQ, IOAPIC, pin
        entries.extend([ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
    }
    // Local interrupts go to every local APIC (0xff): ExtINT on LINT0, NMI on LINT1.
    entries.extend([ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend([ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = u16::from(vcpus) + 1 + 1 + u16::from(IOAPIC_PINS) + 2;

    let table_start = start + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend(b"PCMP");
    table.extend(((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend(b"DROVER  ");
    table.extend(b"DROVER-VMM  ");
    table.extend(0u32.to_le_bytes()); // no OEM table
    table.extend(0u16.to_le_bytes());
    table.extend(entry_count.to_le_bytes());
    table.extend((layout::APIC_ADDRESS as u32).to_le_bytes());
    table.extend(0u16.to_le_bytes()); // no extended table
    table.push(0);
    table.push(0);
    table.extend(entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend(b"_MP_");
    floating.extend((table_start as u32).to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(4); // spec revision 1.4
    floating.push(0); // checksum, below
    floating.extend([0u8; 5]); // features: a configuration table is present; no IMCR
    floating[10] = checksum(&floating);

    let mut out = floating;
    out.extend(table);
    if out.len() > ROOM_BYTES {
        return Err(MpTableError::TooLarge(vcpus));
    }
    Ok(out)
}

/// Write the table for `vcpus` vCPUs at `layout::MPTABLE_START`.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MpTableError> {
    let start = GuestAddress(layout::MPTABLE_START);
    let bytes = build(vcpus, start.raw_value())?;
    mem.write_slice(&bytes, start).map_err(|e| MpTableError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// Walk the table as a kernel would; returns (APIC ids, boot APIC id, IOAPIC address,
    /// interrupt assignments).
    fn parse(bytes: &[u8], start: u64) -> (Vec<u8>, u8, u32, usize) {
        let floating = &bytes[..16];
        assert_eq!(&floating[..4], b"_MP_");
        assert_eq!(sum(floating), 0, "floating pointer checksum");
        let table_at = u32::from_le_bytes(floating[4..8].try_into().unwrap()) as u64;
        let table = &bytes[(table_at - start) as usize..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        let table = &table[..len];
        assert_eq!(sum(table), 0, "table checksum");
        let count = u16::from_le_bytes([table[34], table[35]]);
        let (mut cpus, mut boot, mut ioapic, mut ints) = (Vec::new(), None, 0, 0);
        let mut at = 44;
        for _ in 0..count {
            match table[at] {
                ENTRY_PROCESSOR => {
                    cpus.push(table[at + 1]);
                    if table[at + 3] & CPU_BOOT_PROCESSOR != 0 {
                        assert_eq!(boot.replace(table[at + 1]), None, "one boot processor");
                    }
                    at += 20;
                }
                ENTRY_IOAPIC => {
                    ioapic = u32::from_le_bytes(table[at + 4..at + 8].try_into().unwrap());
                    at += 8;
                }
                ENTRY_IO_INTERRUPT => {
                    ints += 1;
                    at += 8;
                }
                ENTRY_BUS | ENTRY_LOCAL_INTERRUPT => at += 8,
                other => panic!("unknown entry type {other}"),
            }
        }
        assert_eq!(at, len, "the entries fill the table exactly");
        (cpus, boot.expect("a boot processor"), ioapic, ints)
    }

    #[test]
    fn the_table_lists_every_vcpu_the_ioapic_and_its_lines() {
        for vcpus in [1u8, 2, 4, crate::config::VCPUS_MAX] {
            let bytes = build(vcpus, layout::MPTABLE_START).unwrap();
            let (cpus, boot, ioapic, ints) = parse(&bytes, layout::MPTABLE_START);
            assert_eq!(cpus, (0..vcpus).collect::<Vec<_>>());
            assert_eq!(boot, 0);
            assert_eq!(ioapic as u64, layout::IOAPIC_ADDRESS);
            assert_eq!(ints, IOAPIC_PINS as usize);
            assert!(layout::MPTABLE_START + bytes.len() as u64 <= layout::EBDA_START + 0x400);
        }
    }

    #[test]
    fn too_many_vcpus_do_not_fit() {
        assert_eq!(build(60, layout::MPTABLE_START), Err(MpTableError::TooLarge(60)));
    }
}
