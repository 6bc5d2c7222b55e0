//! Putting a vCPU in the state its boot protocol expects: CPUID, FPU, MSRs, local APIC
//! interrupt lines, segment and control registers.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::memory::GuestMemoryMmap;
use vm_memory::{Address, Bytes};

use crate::boot::BootEntry;
use crate::layout;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// Local APIC LVT registers and delivery modes (for LINT0 = ExtINT, LINT1 = NMI).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("{what}: {source}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error("writing the boot GDT: {0}")]
    Gdt(String),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Kvm { what, source }
}

/// A GDT entry from (flags, base, limit), in the packed x86 layout.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The KVM segment register that GDT entry `index` loads. KVM wants the limit in bytes,
/// so a page-granular limit is expanded (a raw 0xfffff would cut a 32-bit guest off at
/// 1 MiB, right where kernels load).
fn segment(entry: u64, index: u16) -> kvm_segment {
    let raw_limit = (((entry >> 32) & 0xf_0000) | (entry & 0xffff)) as u32;
    let granular = (entry >> 55) & 1 == 1;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular { (raw_limit << 12) | 0xfff } else { raw_limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

/// Give vCPU `index` of `count` its CPUID (once: KVM refuses changes after the first
/// run): what KVM supports, with this vCPU's APIC id (leaf 1 EBX[31:24], leaf 0xb EDX) and
/// the logical processor count (leaf 1 EBX[23:16]).
pub fn set_cpuid(kvm_sys: &Kvm, vcpu: &VcpuFd, index: u8, count: u8) -> Result<(), VcpuError> {
    let mut cpuid =
        kvm_sys.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm("reading supported CPUID"))?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the count above is valid
                }
            }
            0xb => e.edx = u32::from(index),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(kvm("setting CPUID"))
}

/// Set up an application processor: FPU, MSRs and local interrupt lines. It waits for
/// the boot processor's INIT and SIPI (KVM keeps every vCPU but the first in that state),
/// which set its registers.
pub fn configure_ap(vcpu: &VcpuFd) -> Result<(), VcpuError> {
    common(vcpu)
}

/// Put an application processor back to waiting for INIT and SIPI (a reboot).
pub fn reset_ap(vcpu: &VcpuFd) -> Result<(), VcpuError> {
    let state = kvm_bindings::kvm_mp_state { mp_state: kvm_bindings::KVM_MP_STATE_UNINITIALIZED };
    vcpu.set_mp_state(state).map_err(kvm("setting the MP state"))?;
    common(vcpu)
}

fn common(vcpu: &VcpuFd) -> Result<(), VcpuError> {
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(kvm("setting FPU state"))?;
    let msrs = Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRING,
        ..Default::default()
    }])
    .map_err(|_| VcpuError::Gdt("MSR list".into()))?;
    vcpu.set_msrs(&msrs).map_err(kvm("setting MSRs"))?;
    set_lint(vcpu)
}

/// Set up the boot processor (its CPUID already set) to enter the kernel at `entry`;
/// also used to reset it for a reboot.
pub fn configure(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: BootEntry) -> Result<(), VcpuError> {
    common(vcpu)?;

    // One GDT for both protocols: null, 64-bit code, 32-bit code, data, TSS.
    let long = matches!(entry, BootEntry::Linux64 { .. });
    let gdt = [
        gdt_entry(0, 0, 0),
        gdt_entry(if long { 0xa09b } else { 0xc09b }, 0, 0xfffff), // 0x08 code
        gdt_entry(0xc093, 0, 0xfffff),                             // 0x10 data
        gdt_entry(0x808b, 0, 0xfffff),                             // 0x18 TSS
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, layout::BOOT_GDT.unchecked_add(i as u64 * 8))
            .map_err(|e| VcpuError::Gdt(e.to_string()))?;
    }
    mem.write_obj(0u64, layout::BOOT_IDT).map_err(|e| VcpuError::Gdt(e.to_string()))?;

    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("reading sregs"))?;
    let code = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);
    sregs.gdt.base = layout::BOOT_GDT.raw_value();
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT.raw_value();
    sregs.idt.limit = 7;
    let mut regs = kvm_regs { rflags: 0x2, ..Default::default() };
    match entry {
        BootEntry::Pvh { entry, start_info } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry.raw_value();
            regs.rbx = start_info.raw_value();
        }
        BootEntry::Linux64 { entry, zero_page } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = layout::PML4.raw_value();
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = entry.raw_value();
            regs.rsi = zero_page.raw_value();
            regs.rsp = layout::BOOT_STACK;
            regs.rbp = layout::BOOT_STACK;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("setting sregs"))?;
    vcpu.set_regs(&regs).map_err(kvm("setting registers"))?;
    Ok(())
}

/// Route the legacy PIC to LINT0 and NMI to LINT1, as firmware would.
fn set_lint(vcpu: &VcpuFd) -> Result<(), VcpuError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("reading the local APIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("setting the local APIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_the_segments_they_describe() {
        let code64 = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code64.l, code64.db, code64.present, code64.type_, code64.selector), (1, 0, 1, 0xb, 8));
        assert_eq!((code64.limit, code64.g, code64.s), (0xffff_ffff, 1, 1));
        let code32 = segment(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        let tss = segment(gdt_entry(0x808b, 0, 0xfffff), 3);
        assert_eq!((tss.s, tss.type_, tss.selector), (0, 0xb, 0x18));
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
