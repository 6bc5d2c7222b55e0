//! Events: the facts in the log. Replaying them needs no command logic.
//!
//! **Append only.** The codec encodes a variant by its position, so a new variant goes at
//! the end of [`Event`], and no variant or field is ever changed or removed; the golden
//! files in `tests/golden/` prove that events written by earlier builds still decode.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::{
    DesiredState, Disk, DomainSpec, HostState, Labels, Mac, MigrationId, MigrationPhase, MigrationProgress,
    NetworkConfig, ObservedPhase, PoolConfig, ResourceKey, Resources, Role, SnapshotKind, VmLimits,
    VolumeFormat, VolumeRef,
};

/// One event with its place in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Position in the cluster's history: 1, 2, 3, … with no gaps.
    pub seq: u64,
    /// When the proposer decided it (ms since the Unix epoch).
    pub time_ms: u64,
    /// Who asked for it.
    pub principal: String,
    /// The client's request id; every event of one request carries it.
    pub request_id: String,
    pub event: Event,
}

/// Every change to the cluster's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    // --- hosts ---
    HostRegistered {
        name: String,
        address: String,
        capacity: Resources,
        labels: Labels,
    },
    HostUpdated {
        name: String,
        address: String,
        capacity: Resources,
        labels: Labels,
    },
    HostStateChanged {
        name: String,
        state: HostState,
    },

    // --- domain life cycle ---
    DomainDefined {
        name: String,
        /// Shared with the domain it defines (and, in the simulator, between replicas that
        /// apply the same entry), so applying and comparing states need not copy it.
        /// Encoded as the plain spec.
        spec: std::sync::Arc<DomainSpec>,
    },
    DomainUndefined {
        name: String,
    },
    DomainStartRequested {
        name: String,
    },
    DomainShutdownRequested {
        name: String,
    },
    DomainDestroyRequested {
        name: String,
    },
    DomainRebootRequested {
        name: String,
    },
    DomainSuspendRequested {
        name: String,
    },
    DomainResumeRequested {
        name: String,
    },
    /// The domain is placed on `host` for run number `generation`.
    DomainScheduled {
        name: String,
        host: String,
        generation: u64,
    },
    /// The host holding `generation` saw the VM in `phase`.
    DomainObserved {
        name: String,
        generation: u64,
        phase: ObservedPhase,
        reason: Option<String>,
    },
    /// The run `generation` is over: its host and resources are freed, and the domain now
    /// wants to be `desired`.
    DomainReleased {
        name: String,
        generation: u64,
        desired: DesiredState,
    },
    DomainDiskAdded {
        name: String,
        disk: Disk,
    },
    DomainDiskRemoved {
        name: String,
        volume: VolumeRef,
    },

    // --- networks and addresses ---
    NetworkCreated {
        name: String,
        config: NetworkConfig,
    },
    NetworkDeleted {
        name: String,
    },
    /// A NIC's lease on a network; `ip` is set where the network manages addresses.
    IpAllocated {
        network: String,
        mac: Mac,
        ip: Option<Ipv4Addr>,
        domain: String,
    },
    IpReleased {
        network: String,
        mac: Mac,
    },

    // --- storage ---
    PoolCreated {
        name: String,
        config: PoolConfig,
    },
    PoolDeleted {
        name: String,
    },
    VolumeCreated {
        volume: VolumeRef,
        format: VolumeFormat,
        capacity_mib: u64,
        backing: Option<String>,
    },
    VolumeDeleted {
        volume: VolumeRef,
    },
    VolumeResized {
        volume: VolumeRef,
        capacity_mib: u64,
    },
    VolumeAllocationObserved {
        volume: VolumeRef,
        allocation_mib: u64,
    },
    VolumeAttached {
        volume: VolumeRef,
        domain: String,
        read_only: bool,
    },
    VolumeDetached {
        volume: VolumeRef,
        domain: String,
    },

    // --- snapshots ---
    SnapshotCreated {
        domain: String,
        name: String,
        parent: Option<String>,
        kind: SnapshotKind,
    },
    SnapshotDeleted {
        domain: String,
        name: String,
    },
    SnapshotReparented {
        domain: String,
        name: String,
        parent: Option<String>,
    },
    SnapshotReverted {
        domain: String,
        name: String,
    },

    // --- migrations (the id of a migration is the seq of its MigrationStarted) ---
    MigrationStarted {
        domain: String,
        source: String,
        target: String,
    },
    MigrationPhaseChanged {
        id: MigrationId,
        phase: MigrationPhase,
    },
    /// The switch-over: from this event on the target owns the domain, run `generation`.
    MigrationCommitted {
        id: MigrationId,
        generation: u64,
    },
    MigrationRolledBack {
        id: MigrationId,
        reason: String,
    },

    // --- snapshots taken by hosts (appended: `SnapshotCreated` above is the record-only
    // form of builds before them) ---
    /// Snapshot `name` is asked of `host`, which runs run `generation` of the domain; it is
    /// `SnapshotTaken` or `SnapshotFailed` once the host reports.
    SnapshotRequested {
        domain: String,
        name: String,
        parent: Option<String>,
        kind: SnapshotKind,
        host: String,
        generation: u64,
    },
    /// The host wrote the snapshot's file; it becomes the domain's current snapshot.
    SnapshotTaken {
        domain: String,
        name: String,
        bytes: u64,
        duration_ms: u64,
    },
    SnapshotFailed {
        domain: String,
        name: String,
        reason: String,
    },
    /// The domain goes back to snapshot `name`: its next run starts from it. With
    /// `generation`, the domain is running and that new run starts now on the same host
    /// (its old run ends).
    SnapshotRevertRequested {
        domain: String,
        name: String,
        generation: Option<u64>,
    },
    /// The host restored run `generation` of `domain` from snapshot `source`/`name` (the
    /// domain's own, or its clone source's) and it runs.
    SnapshotRestored {
        domain: String,
        source: String,
        name: String,
        generation: u64,
    },
    /// Domain `clone` (just defined, stopped) starts from snapshot `source`/`name`: a new
    /// domain, with its own name and runs, continuing another's memory image.
    DomainCloned {
        clone: String,
        source: String,
        name: String,
    },

    // --- HA ---
    /// Run `generation` of domain `name` ended with its host `host`, which was fenced: the
    /// placement is released and the domain is `Lost` (its desired state kept).
    DomainLost {
        name: String,
        generation: u64,
        host: String,
    },
    /// The HA controller restarts a domain that crashed on a live host (counted against
    /// its restart limit); a `DomainScheduled` follows in the same proposal.
    DomainHaRestarting {
        name: String,
    },
    /// The HA controller could not place a domain that should run again (why, in
    /// `reason`); it tries again as capacity changes.
    DomainHaWaiting {
        name: String,
        reason: String,
    },
    /// The HA controller stops restarting a domain that keeps crashing: it is `Failed`
    /// with `reason` until a user starts it.
    DomainHaGaveUp {
        name: String,
        reason: String,
    },

    // --- the cluster ---
    ClusterSettingsChanged {
        ha_reserve_hosts: u32,
    },
    /// An operator cleared a flapping host: it may be placed on again.
    HostCleared {
        name: String,
    },

    // --- volume files made by hosts (appended: `VolumeCreated` and `VolumeResized` above
    // are the record-only forms of builds before them) ---
    /// Volume `volume` is recorded and its file asked of `host`: empty, a qcow2 overlay
    /// on `backing`, or a copy of `import` (a file on that host). It counts against its
    /// pool from here; `VolumeReady` or `VolumeFailed` follows once the host reports.
    VolumeRequested {
        volume: VolumeRef,
        format: VolumeFormat,
        capacity_mib: u64,
        backing: Option<String>,
        preallocate: bool,
        import: Option<String>,
        host: String,
    },
    /// `host` is asked to grow the file to `capacity_mib` (counted against the pool now).
    VolumeResizeRequested {
        volume: VolumeRef,
        capacity_mib: u64,
        host: String,
    },
    /// `host` is asked to remove the file; `VolumeDeleted` follows once it has.
    VolumeDeleteRequested {
        volume: VolumeRef,
        host: String,
    },
    /// The host carried out the pending create or resize; the file takes `allocation_mib`.
    VolumeReady {
        volume: VolumeRef,
        allocation_mib: u64,
    },
    /// The host could not carry out the pending operation: a create leaves a failed
    /// volume with no file, a resize or delete leaves the volume as it was.
    VolumeFailed {
        volume: VolumeRef,
        reason: String,
    },

    // --- networks with overlays (appended: `NetworkCreated` above is the form of builds
    // before them) ---
    /// Network `name` is created; its overlay between hosts is VXLAN network `vni`.
    NetworkDefined {
        name: String,
        config: NetworkConfig,
        vni: u32,
    },

    // --- volume operations moved between hosts (appended) ---
    /// The operation pending on the volume is asked of `host` now, instead of a host that
    /// was fenced or left before reporting it (a shared pool's file: every host sees it).
    /// It keeps its operation; its id becomes this event's, so a late report of the first
    /// host completes nothing.
    VolumeReassigned {
        volume: VolumeRef,
        host: String,
    },

    // --- what a host's driver runs (appended) ---
    /// Host `name` runs VMs up to `limits` (`None`: it says nothing of its limits).
    /// Emitted when a registration says something else than the state holds.
    HostVmLimits {
        name: String,
        limits: Option<VmLimits>,
    },

    // --- bearer tokens ---
    /// An admin made a bearer token for `name` with `role`, valid until `expires_ms`; the
    /// cluster keeps the SHA-256 of its secret only.
    TokenCreated {
        name: String,
        role: Role,
        secret_sha256: [u8; 32],
        expires_ms: u64,
    },
    /// A token was revoked: it is refused from here and forgotten.
    TokenRevoked {
        name: String,
    },

    // --- live migrations' data plane (appended) ---
    /// The target host's incoming VM listens at `address`; the source may send.
    MigrationTargetReady {
        id: MigrationId,
        address: String,
    },
    /// The source host's numbers for the copy.
    MigrationProgressed {
        id: MigrationId,
        progress: MigrationProgress,
    },
    /// The operator's longest pause for the live migration of `domain` (its current
    /// one); in the same proposal as its `MigrationStarted`, or later while it copies.
    MigrationDowntimeSet {
        domain: String,
        max_downtime_ms: u64,
    },
}

impl Event {
    /// Every variant's name, in declaration order (= encoding order).
    pub const KINDS: &'static [&'static str] = &[
        "HostRegistered",
        "HostUpdated",
        "HostStateChanged",
        "DomainDefined",
        "DomainUndefined",
        "DomainStartRequested",
        "DomainShutdownRequested",
        "DomainDestroyRequested",
        "DomainRebootRequested",
        "DomainSuspendRequested",
        "DomainResumeRequested",
        "DomainScheduled",
        "DomainObserved",
        "DomainReleased",
        "DomainDiskAdded",
        "DomainDiskRemoved",
        "NetworkCreated",
        "NetworkDeleted",
        "IpAllocated",
        "IpReleased",
        "PoolCreated",
        "PoolDeleted",
        "VolumeCreated",
        "VolumeDeleted",
        "VolumeResized",
        "VolumeAllocationObserved",
        "VolumeAttached",
        "VolumeDetached",
        "SnapshotCreated",
        "SnapshotDeleted",
        "SnapshotReparented",
        "SnapshotReverted",
        "MigrationStarted",
        "MigrationPhaseChanged",
        "MigrationCommitted",
        "MigrationRolledBack",
        "SnapshotRequested",
        "SnapshotTaken",
        "SnapshotFailed",
        "SnapshotRevertRequested",
        "SnapshotRestored",
        "DomainCloned",
        "DomainLost",
        "DomainHaRestarting",
        "DomainHaWaiting",
        "DomainHaGaveUp",
        "ClusterSettingsChanged",
        "HostCleared",
        "VolumeRequested",
        "VolumeResizeRequested",
        "VolumeDeleteRequested",
        "VolumeReady",
        "VolumeFailed",
        "NetworkDefined",
        "VolumeReassigned",
        "HostVmLimits",
        "TokenCreated",
        "TokenRevoked",
        "MigrationTargetReady",
        "MigrationProgressed",
        "MigrationDowntimeSet",
    ];

    /// This variant's name (one of [`Event::KINDS`]).
    pub fn kind(&self) -> &'static str {
        Event::KINDS[self.kind_index()]
    }

    fn kind_index(&self) -> usize {
        match self {
            Event::HostRegistered { .. } => 0,
            Event::HostUpdated { .. } => 1,
            Event::HostStateChanged { .. } => 2,
            Event::DomainDefined { .. } => 3,
            Event::DomainUndefined { .. } => 4,
            Event::DomainStartRequested { .. } => 5,
            Event::DomainShutdownRequested { .. } => 6,
            Event::DomainDestroyRequested { .. } => 7,
            Event::DomainRebootRequested { .. } => 8,
            Event::DomainSuspendRequested { .. } => 9,
            Event::DomainResumeRequested { .. } => 10,
            Event::DomainScheduled { .. } => 11,
            Event::DomainObserved { .. } => 12,
            Event::DomainReleased { .. } => 13,
            Event::DomainDiskAdded { .. } => 14,
            Event::DomainDiskRemoved { .. } => 15,
            Event::NetworkCreated { .. } => 16,
            Event::NetworkDeleted { .. } => 17,
            Event::IpAllocated { .. } => 18,
            Event::IpReleased { .. } => 19,
            Event::PoolCreated { .. } => 20,
            Event::PoolDeleted { .. } => 21,
            Event::VolumeCreated { .. } => 22,
            Event::VolumeDeleted { .. } => 23,
            Event::VolumeResized { .. } => 24,
            Event::VolumeAllocationObserved { .. } => 25,
            Event::VolumeAttached { .. } => 26,
            Event::VolumeDetached { .. } => 27,
            Event::SnapshotCreated { .. } => 28,
            Event::SnapshotDeleted { .. } => 29,
            Event::SnapshotReparented { .. } => 30,
            Event::SnapshotReverted { .. } => 31,
            Event::MigrationStarted { .. } => 32,
            Event::MigrationPhaseChanged { .. } => 33,
            Event::MigrationCommitted { .. } => 34,
            Event::MigrationRolledBack { .. } => 35,
            Event::SnapshotRequested { .. } => 36,
            Event::SnapshotTaken { .. } => 37,
            Event::SnapshotFailed { .. } => 38,
            Event::SnapshotRevertRequested { .. } => 39,
            Event::SnapshotRestored { .. } => 40,
            Event::DomainCloned { .. } => 41,
            Event::DomainLost { .. } => 42,
            Event::DomainHaRestarting { .. } => 43,
            Event::DomainHaWaiting { .. } => 44,
            Event::DomainHaGaveUp { .. } => 45,
            Event::ClusterSettingsChanged { .. } => 46,
            Event::HostCleared { .. } => 47,
            Event::VolumeRequested { .. } => 48,
            Event::VolumeResizeRequested { .. } => 49,
            Event::VolumeDeleteRequested { .. } => 50,
            Event::VolumeReady { .. } => 51,
            Event::VolumeFailed { .. } => 52,
            Event::NetworkDefined { .. } => 53,
            Event::VolumeReassigned { .. } => 54,
            Event::HostVmLimits { .. } => 55,
            Event::TokenCreated { .. } => 56,
            Event::TokenRevoked { .. } => 57,
            Event::MigrationTargetReady { .. } => 58,
            Event::MigrationProgressed { .. } => 59,
            Event::MigrationDowntimeSet { .. } => 60,
        }
    }

    /// The resource the event is about, for the archive's index. Events that touch a
    /// second resource (a volume attachment, an address lease) name the primary one here
    /// and the other in [`Event::related`].
    pub fn subject(&self) -> ResourceKey {
        use Event::*;
        match self {
            HostRegistered { name, .. }
            | HostUpdated { name, .. }
            | HostStateChanged { name, .. }
            | HostCleared { name }
            | HostVmLimits { name, .. } => ResourceKey::Host(name.clone()),
            ClusterSettingsChanged { .. } => ResourceKey::Cluster,
            TokenCreated { name, .. } | TokenRevoked { name } => ResourceKey::Token(name.clone()),
            DomainDefined { name, .. }
            | DomainUndefined { name }
            | DomainStartRequested { name }
            | DomainShutdownRequested { name }
            | DomainDestroyRequested { name }
            | DomainRebootRequested { name }
            | DomainSuspendRequested { name }
            | DomainResumeRequested { name }
            | DomainScheduled { name, .. }
            | DomainObserved { name, .. }
            | DomainReleased { name, .. }
            | DomainDiskAdded { name, .. }
            | DomainDiskRemoved { name, .. }
            | DomainLost { name, .. }
            | DomainHaRestarting { name }
            | DomainHaWaiting { name, .. }
            | DomainHaGaveUp { name, .. } => ResourceKey::Domain(name.clone()),
            NetworkCreated { name, .. } | NetworkDefined { name, .. } | NetworkDeleted { name } => {
                ResourceKey::Network(name.clone())
            }
            IpAllocated { network, .. } | IpReleased { network, .. } => ResourceKey::Network(network.clone()),
            PoolCreated { name, .. } | PoolDeleted { name } => ResourceKey::Pool(name.clone()),
            VolumeCreated { volume, .. }
            | VolumeDeleted { volume }
            | VolumeResized { volume, .. }
            | VolumeAllocationObserved { volume, .. }
            | VolumeAttached { volume, .. }
            | VolumeDetached { volume, .. }
            | VolumeRequested { volume, .. }
            | VolumeResizeRequested { volume, .. }
            | VolumeDeleteRequested { volume, .. }
            | VolumeReady { volume, .. }
            | VolumeFailed { volume, .. }
            | VolumeReassigned { volume, .. } => ResourceKey::Volume(volume.clone()),
            SnapshotCreated { domain, name, .. }
            | SnapshotDeleted { domain, name }
            | SnapshotReparented { domain, name, .. }
            | SnapshotReverted { domain, name }
            | SnapshotRequested { domain, name, .. }
            | SnapshotTaken { domain, name, .. }
            | SnapshotFailed { domain, name, .. }
            | SnapshotRevertRequested { domain, name, .. } => {
                ResourceKey::Snapshot { domain: domain.clone(), name: name.clone() }
            }
            SnapshotRestored { domain, .. } => ResourceKey::Domain(domain.clone()),
            DomainCloned { clone, .. } => ResourceKey::Domain(clone.clone()),
            MigrationStarted { domain, .. } | MigrationDowntimeSet { domain, .. } => {
                ResourceKey::Domain(domain.clone())
            }
            MigrationPhaseChanged { id, .. }
            | MigrationTargetReady { id, .. }
            | MigrationProgressed { id, .. }
            | MigrationCommitted { id, .. }
            | MigrationRolledBack { id, .. } => ResourceKey::Migration(*id),
        }
    }

    /// Other resources the event changes or names, for the archive's index.
    pub fn related(&self) -> Vec<ResourceKey> {
        use Event::*;
        match self {
            DomainScheduled { host, .. } | DomainLost { host, .. } => vec![ResourceKey::Host(host.clone())],
            DomainDiskAdded { disk, .. } => vec![ResourceKey::Volume(disk.volume.clone())],
            DomainDiskRemoved { volume, .. } => vec![ResourceKey::Volume(volume.clone())],
            IpAllocated { domain, .. } => vec![ResourceKey::Domain(domain.clone())],
            VolumeCreated { volume, backing: Some(b), .. } => {
                vec![
                    ResourceKey::Pool(volume.pool.clone()),
                    ResourceKey::Volume(VolumeRef::new(&volume.pool, b)),
                ]
            }
            VolumeRequested { volume, backing, host, .. } => {
                let mut related =
                    vec![ResourceKey::Pool(volume.pool.clone()), ResourceKey::Host(host.clone())];
                related.extend(backing.iter().map(|b| ResourceKey::Volume(VolumeRef::new(&volume.pool, b))));
                related
            }
            VolumeResizeRequested { volume, host, .. }
            | VolumeDeleteRequested { volume, host }
            | VolumeReassigned { volume, host } => {
                vec![ResourceKey::Pool(volume.pool.clone()), ResourceKey::Host(host.clone())]
            }
            VolumeCreated { volume, .. } | VolumeDeleted { volume } => {
                vec![ResourceKey::Pool(volume.pool.clone())]
            }
            VolumeAttached { domain, .. } | VolumeDetached { domain, .. } => {
                vec![ResourceKey::Domain(domain.clone())]
            }
            SnapshotRequested { domain, host, .. } => {
                vec![ResourceKey::Domain(domain.clone()), ResourceKey::Host(host.clone())]
            }
            SnapshotCreated { domain, .. }
            | SnapshotDeleted { domain, .. }
            | SnapshotReverted { domain, .. }
            | SnapshotTaken { domain, .. }
            | SnapshotFailed { domain, .. }
            | SnapshotRevertRequested { domain, .. } => vec![ResourceKey::Domain(domain.clone())],
            SnapshotRestored { source, name, .. } | DomainCloned { source, name, .. } => {
                vec![ResourceKey::Snapshot { domain: source.clone(), name: name.clone() }]
            }
            MigrationStarted { source, target, .. } => {
                vec![ResourceKey::Host(source.clone()), ResourceKey::Host(target.clone())]
            }
            _ => Vec::new(),
        }
    }
}
