use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Labels, Resources};

/// A hypervisor host's place in the cluster's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HostState {
    /// Registered, still catching up with the log; not schedulable yet.
    Joining,
    /// Schedulable.
    Ready,
    /// Missed heartbeats; not schedulable, its domains not yet failed over.
    Suspect,
    /// Declared dead: its lease expired and it has fenced itself.
    Fenced,
    /// Taken out of scheduling by an operator (drain).
    Maintenance,
    /// Removed from the cluster.
    Left,
}

impl HostState {
    /// The transitions an operator or controller may ask for with `SetHostState`.
    /// (Re-registering moves a fenced or departed host back to `Joining`.)
    pub fn may_become(self, to: HostState) -> bool {
        use HostState::*;
        matches!(
            (self, to),
            (Joining, Ready | Left)
                | (Ready, Suspect | Fenced | Maintenance | Left)
                | (Suspect, Ready | Fenced | Maintenance | Left)
                | (Maintenance, Ready | Suspect | Fenced | Left)
                | (Fenced, Left)
        )
    }
}

words!(HostState {
    Joining => "joining",
    Ready => "ready",
    Suspect => "suspect",
    Fenced => "fenced",
    Maintenance => "maintenance",
    Left => "left",
});

/// The largest VM a host's hypervisor driver runs, as the host says when it registers
/// (Drover's own VMM: 32 vCPUs, 3 GiB, 8 disks, 8 NICs). The scheduler places a domain
/// only on a host whose driver runs a VM of its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmLimits {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: u32,
    pub nics: u32,
}

impl VmLimits {
    /// What of `spec` is over these limits ("4096 MiB of memory (at most 3072)"), if any.
    pub fn exceeded_by(&self, spec: &super::DomainSpec) -> Option<String> {
        self.exceeded(spec.vcpus, spec.memory_mib, spec.disks.len(), spec.nics.len())
    }

    /// What of a VM of this size is over these limits, if any.
    pub fn exceeded(&self, vcpus: u32, memory_mib: u64, disks: usize, nics: usize) -> Option<String> {
        let over = [
            (u64::from(vcpus), u64::from(self.vcpus), "vCPUs"),
            (memory_mib, self.memory_mib, "MiB of memory"),
            (disks as u64, u64::from(self.disks), "disks"),
            (nics as u64, u64::from(self.nics), "NICs"),
        ];
        over.into_iter()
            .find(|(asked, max, _)| asked > max)
            .map(|(asked, max, what)| format!("{asked} {what} (at most {max})"))
    }
}

/// The label a host gives itself naming its hypervisor driver (`kvm`, `qemu`, `fake`), as
/// Kubernetes' nodes label their architecture: a running guest moves live only between
/// hosts of one driver, and a domain may require one.
pub const DRIVER_LABEL: &str = "drover.io/driver";

/// A hypervisor host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    /// Where its hostd listens (`ip:port`).
    pub address: String,
    pub capacity: Resources,
    /// Sum of the resources of `domains`; never above `capacity`.
    pub allocated: Resources,
    pub labels: Labels,
    pub state: HostState,
    /// Domains placed here, including incoming migrations (their target's reservation).
    pub domains: BTreeSet<String>,
    pub registered_ms: u64,
    pub version: u64,
    /// The largest VM its driver runs; `None`: the host said nothing (registered by a
    /// build from before hosts said), and only the cluster's own limits apply.
    pub vm_limits: Option<VmLimits>,
}

impl Host {
    /// The driver it says it runs ([`DRIVER_LABEL`]); `None` for a host registered by a
    /// build from before hosts said.
    pub fn driver(&self) -> Option<&str> {
        self.labels.get(DRIVER_LABEL).map(String::as_str)
    }

    /// What is still free.
    pub fn free(&self) -> Resources {
        self.capacity.minus(self.allocated)
    }
}
