use serde::{Deserialize, Serialize};

use super::{Labels, Mac, MigrationId, Resources, VolumeRef};

/// How a domain boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Boot {
    /// Direct kernel boot (Linux boot protocol or PVH ELF), paths on the host.
    Kernel { kernel: String, initrd: Option<String>, cmdline: String },
    /// Boot from the first disk.
    Disk,
}

/// A volume attached to a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub volume: VolumeRef,
    pub read_only: bool,
}

/// A network interface. `mac` is optional in a command; every NIC in the state has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub network: String,
    pub mac: Option<Mac>,
}

/// What happens when the domain's host fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HaPolicy {
    /// Nothing: the domain stays down.
    None,
    /// Restart elsewhere; higher priorities restart first.
    Restart { priority: u32 },
}

/// Constraints on where a domain may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The host must carry every one of these labels with these values.
    pub required_labels: Labels,
    /// No two domains of the same group run on one host.
    pub anti_affinity_group: Option<String>,
}

/// A domain's definition: what the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSpec {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub boot: Boot,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub ha: HaPolicy,
    pub placement: Placement,
}

impl DomainSpec {
    pub fn resources(&self) -> Resources {
        Resources { vcpus: self.vcpus, memory_mib: self.memory_mib }
    }
}

/// What the user wants the domain to be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DesiredState {
    Running,
    Stopped,
    Paused,
}

words!(DesiredState {
    Running => "running",
    Stopped => "stopped",
    Paused => "paused",
});

/// How a domain that should stop is to be stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopMode {
    /// ACPI power button, then destroy after the host's timeout.
    Graceful,
    /// Kill at once (virsh destroy).
    Force,
}

words!(StopMode {
    Graceful => "graceful",
    Force => "force",
});

/// What a host reports a domain's VM is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObservedPhase {
    Starting,
    Running,
    Paused,
    ShuttingDown,
    /// Powered off, cleanly.
    Stopped,
    /// Died unexpectedly.
    Crashed,
    /// Could not be started (bad kernel, missing volume, …).
    Failed,
}

words!(ObservedPhase {
    Starting => "starting",
    Running => "running",
    Paused => "paused",
    ShuttingDown => "shutting-down",
    Stopped => "stopped",
    Crashed => "crashed",
    Failed => "failed",
});

impl ObservedPhase {
    /// The VM is using its domain's identity (disks, addresses) right now.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            ObservedPhase::Starting
                | ObservedPhase::Running
                | ObservedPhase::Paused
                | ObservedPhase::ShuttingDown
        )
    }

    /// The VM process is gone: the placement can be released.
    pub fn is_terminal(self) -> bool {
        matches!(self, ObservedPhase::Stopped | ObservedPhase::Crashed | ObservedPhase::Failed)
    }
}

/// The last known phase of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Not placed on any host.
    Stopped,
    /// Placed; its host has not reported yet.
    Scheduled,
    Starting,
    Running,
    Paused,
    ShuttingDown,
    Crashed,
    Failed,
    /// Its host was fenced while it ran: the run is gone, the placement released. An HA
    /// domain waits here to be restarted elsewhere; any other keeps its desired state and
    /// stays down until a user starts it.
    Lost,
}

words!(Phase {
    Stopped => "stopped",
    Scheduled => "scheduled",
    Starting => "starting",
    Running => "running",
    Paused => "paused",
    ShuttingDown => "shutting-down",
    Crashed => "crashed",
    Failed => "failed",
    Lost => "lost",
});

impl From<ObservedPhase> for Phase {
    fn from(p: ObservedPhase) -> Phase {
        match p {
            ObservedPhase::Starting => Phase::Starting,
            ObservedPhase::Running => Phase::Running,
            ObservedPhase::Paused => Phase::Paused,
            ObservedPhase::ShuttingDown => Phase::ShuttingDown,
            ObservedPhase::Stopped => Phase::Stopped,
            ObservedPhase::Crashed => Phase::Crashed,
            ObservedPhase::Failed => Phase::Failed,
        }
    }
}

/// Where and how a domain runs, as last decided and observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainStatus {
    /// The host that owns the current run; `None` when not placed.
    pub host: Option<String>,
    /// Bumped by every placement and every migration switch-over. Only the holder of the
    /// current generation may run the domain or report on it.
    pub generation: u64,
    pub phase: Phase,
    /// Why the domain crashed or failed, as its host said.
    pub reason: Option<String>,
    /// Proposer time of the last observation.
    pub observed_ms: u64,
}

/// A domain (a VM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub name: String,
    /// Shared with the event that defined it (encoded as the plain spec); `Arc::make_mut`
    /// to change it.
    pub spec: std::sync::Arc<DomainSpec>,
    pub desired: DesiredState,
    pub stop_mode: StopMode,
    /// Count of reboot requests; a host reboots the VM when this passes what it has done.
    pub reboots: u64,
    pub status: DomainStatus,
    pub current_snapshot: Option<String>,
    /// The snapshot the next run starts from instead of booting: one of its own (set by a
    /// revert) or, for a clone, its source's; cleared once a host has restored it.
    pub restore_from: Option<super::SnapshotRef>,
    /// When the HA controller restarted it after a crash (proposer ms), oldest first: at
    /// most `HA_CRASH_RESTARTS_MAX`, the ones within `HA_CRASH_RESTART_WINDOW_MS` count.
    pub ha_restarts: Vec<u64>,
    /// The migration in progress, if any.
    pub migration: Option<MigrationId>,
    pub defined_ms: u64,
    pub version: u64,
}

impl Domain {
    /// Whether the domain holds a placement (a host and its resources).
    pub fn is_placed(&self) -> bool {
        self.status.host.is_some()
    }
}
