//! One vCPU's architectural state: everything KVM holds for it that a guest can observe.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// MSRs KVM lists but refuses to read back on some hosts are skipped, one by one; a host
/// that lists this many is not believed.
pub const MSRS_MAX: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    /// (index, value), in the order they are restored.
    pub msrs: Vec<(u32, u64)>,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

/// Read every MSR of `indices` that KVM lets this vCPU read.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, SnapshotError> {
    assert!(indices.len() <= MSRS_MAX, "{} MSRs listed", indices.len());
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> =
            rest.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::Memory("MSR list".into()))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("reading MSRs"))?;
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // KVM stops at the first MSR it cannot read: skip that one and go on.
        rest = &rest[(read + 1).min(rest.len())..];
    }
    Ok(out)
}

impl VcpuState {
    /// Save a vCPU that is not in KVM_RUN (parked by a pause). `msr_indices` is what the
    /// host lists (`KVM_GET_MSR_INDEX_LIST`).
    pub fn save(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, SnapshotError> {
        // The MP state first: reading it makes KVM settle pending APIC events into it.
        let mp_state = vcpu.get_mp_state().map_err(kvm("reading the MP state"))?;
        Ok(VcpuState {
            mp_state,
            regs: vcpu.get_regs().map_err(kvm("reading registers"))?,
            sregs: vcpu.get_sregs().map_err(kvm("reading special registers"))?,
            xsave: vcpu.get_xsave().map_err(kvm("reading the XSAVE area"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm("reading XCRs"))?,
            debug_regs: vcpu.get_debug_regs().map_err(kvm("reading debug registers"))?,
            lapic: vcpu.get_lapic().map_err(kvm("reading the local APIC"))?,
            events: vcpu.get_vcpu_events().map_err(kvm("reading vCPU events"))?,
            msrs: read_msrs(vcpu, msr_indices)?,
        })
    }

    /// Put this state into a fresh vCPU whose CPUID is already set, in the order KVM needs
    /// (special registers before the XSAVE area and MSRs that depend on them; the local
    /// APIC before the events that may inject into it).
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), SnapshotError> {
        vcpu.set_mp_state(self.mp_state).map_err(kvm("setting the MP state"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("setting registers"))?;
        vcpu.set_sregs(&self.sregs).map_err(kvm("setting special registers"))?;
        // SAFETY: `self.xsave` is a whole `kvm_xsave` (4 KiB), valid for the call.
        // KVM_SET_XSAVE copies the vCPU's XSAVE size from it, which is 4 KiB unless
        // KVM_CAP_XSAVE2 reports more; `Vm` refuses to snapshot or restore on a host where it
        // does (`vm::xsave_fits`), so the copy stays within this struct.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("setting the XSAVE area"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("setting XCRs"))?;
        vcpu.set_debug_regs(&self.debug_regs).map_err(kvm("setting debug registers"))?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("setting the local APIC"))?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
            .collect();
        let msrs = Msrs::from_entries(&entries)
            .map_err(|_| SnapshotError::Mismatch(format!("{} MSRs", entries.len())))?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm("setting MSRs"))?;
        if written != entries.len() {
            return Err(SnapshotError::Mismatch(format!(
                "KVM refused MSR {:#x} (this host cannot take the snapshot's MSRs)",
                entries[written].index
            )));
        }
        vcpu.set_vcpu_events(&self.events).map_err(kvm("setting vCPU events"))?;
        Ok(())
    }
}
