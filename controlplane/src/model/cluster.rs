use serde::{Deserialize, Serialize};

/// Settings of the whole cluster, changed by operators (`SetClusterSettings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// HA admission control: starting an HA domain fails unless every HA domain could
    /// still run again after any this many hosts fail (0: off).
    pub ha_reserve_hosts: u32,
    pub version: u64,
}

/// When a host was fenced lately, and whether that makes it flapping: a host fenced
/// `HOST_FENCES_MAX` times within `HOST_FENCE_WINDOW_MS` is left out of placement until an
/// operator clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFences {
    /// Proposer ms of its latest fencings, oldest first, at most `HOST_FENCES_MAX`.
    pub times: Vec<u64>,
    pub flapping: bool,
}
