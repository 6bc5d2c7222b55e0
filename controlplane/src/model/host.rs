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

    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Joining => "joining",
            HostState::Ready => "ready",
            HostState::Suspect => "suspect",
            HostState::Fenced => "fenced",
            HostState::Maintenance => "maintenance",
            HostState::Left => "left",
        }
    }
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
}

impl Host {
    /// What is still free.
    pub fn free(&self) -> Resources {
        self.capacity.minus(self.allocated)
    }
}
