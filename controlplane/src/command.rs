//! Commands: intents from the API, hosts and controllers. `decide` turns one into a
//! proposal of events, or rejects it. Commands are never stored in the log.

use serde::{Deserialize, Serialize};

use crate::model::{
    Disk, DomainSpec, HostState, Labels, MigrationId, MigrationPhase, MigrationReport, NetworkConfig,
    ObservedPhase, PoolConfig, Resources, Role, SnapshotKind, VmLimits, VolumeFormat, VolumeRef,
};

/// A command with who sent it and the id that makes retries safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique per principal; a retry reuses it and gets the first answer.
    pub request_id: String,
    pub principal: String,
    /// The rights it is decided with.
    pub caller: Caller,
    pub command: Command,
}

/// Whose rights a request is decided with: what the API's door proved of its caller (a
/// certificate or a bearer token), or the cluster acting by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Caller {
    /// The cluster's own controllers (HA) and tools that speak for it.
    Cluster,
    /// A user of a role. Without TLS nobody is proven and every caller is an admin.
    User(Role),
    /// A host's agent, which acts only for its own host.
    Host(String),
}

/// What a command asks of its caller's rights ([`Command::needs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'c> {
    /// A user of at least this role.
    Role(Role),
    /// An admin, or the agent of this host (a report, a registration: a host acts for itself).
    HostOrAdmin(&'c str),
    /// The cluster itself (its controllers).
    Cluster,
}

impl Caller {
    /// Whether this caller may ask for what `need` says.
    pub fn may(&self, need: Need<'_>) -> bool {
        match (self, need) {
            (Caller::Cluster, _) => true,
            (Caller::User(role), Need::Role(needed)) => *role >= needed,
            (Caller::User(role), Need::HostOrAdmin(_)) => *role == Role::Admin,
            (Caller::Host(own), Need::HostOrAdmin(host)) => own == host,
            (Caller::User(_) | Caller::Host(_), _) => false,
        }
    }
}

/// Everything that can be asked of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    // --- hosts ---
    /// Register a host, or update a registered one (a host that was fenced or left joins
    /// again).
    RegisterHost {
        name: String,
        address: String,
        capacity: Resources,
        labels: Labels,
        /// The largest VM its driver runs (`None`: no limit beyond the cluster's).
        vm_limits: Option<VmLimits>,
    },
    SetHostState {
        name: String,
        state: HostState,
    },

    // --- domains ---
    DefineDomain {
        name: String,
        spec: DomainSpec,
    },
    UndefineDomain {
        name: String,
    },
    StartDomain {
        name: String,
    },
    ShutdownDomain {
        name: String,
    },
    DestroyDomain {
        name: String,
    },
    RebootDomain {
        name: String,
    },
    SuspendDomain {
        name: String,
    },
    ResumeDomain {
        name: String,
    },
    /// Attach a disk to a stopped domain.
    AttachDisk {
        domain: String,
        disk: Disk,
    },
    /// Detach a disk from a stopped domain.
    DetachDisk {
        domain: String,
        volume: VolumeRef,
    },
    /// A host reports what the VM of run `generation` is doing.
    ReportObservation {
        domain: String,
        host: String,
        generation: u64,
        phase: ObservedPhase,
        reason: Option<String>,
    },

    // --- networks ---
    CreateNetwork {
        name: String,
        config: NetworkConfig,
    },
    DeleteNetwork {
        name: String,
    },

    // --- storage ---
    CreatePool {
        name: String,
        config: PoolConfig,
    },
    DeletePool {
        name: String,
    },
    /// Create a volume; with `backing`, a qcow2 copy-on-write clone of that volume of the
    /// same pool.
    CreateVolume {
        volume: VolumeRef,
        format: VolumeFormat,
        capacity_mib: u64,
        backing: Option<String>,
        /// A raw volume's blocks are allocated up front rather than on first write.
        preallocate: bool,
        /// An image file on the host that makes the volume, copied into it (converted to
        /// `format`; grown to `capacity_mib`, which must hold it).
        import: Option<String>,
    },
    DeleteVolume {
        volume: VolumeRef,
    },
    /// Grow a volume that no running domain holds.
    ResizeVolume {
        volume: VolumeRef,
        capacity_mib: u64,
    },
    ReportVolumeAllocation {
        volume: VolumeRef,
        allocation_mib: u64,
    },
    /// A host reports how the operation `id` on `volume` (the event that asked for it),
    /// asked of it, went.
    ReportVolume {
        volume: VolumeRef,
        host: String,
        id: u64,
        outcome: VolumeOutcome,
    },

    // --- snapshots ---
    CreateSnapshot {
        domain: String,
        name: String,
        kind: SnapshotKind,
    },
    DeleteSnapshot {
        domain: String,
        name: String,
    },
    RevertSnapshot {
        domain: String,
        name: String,
    },

    // --- migrations ---
    /// Live-migrate a running domain; without a target the scheduler picks one; without
    /// a longest pause, each source host's own limit holds.
    StartMigration {
        domain: String,
        target: Option<String>,
        max_downtime_ms: Option<u64>,
    },
    /// Change the longest pause a live migration that still copies may take (virsh's
    /// `migrate-setmaxdowntime`).
    SetMigrationDowntime {
        id: MigrationId,
        max_downtime_ms: u64,
    },
    ReportMigrationProgress {
        id: MigrationId,
        phase: MigrationPhase,
    },
    /// The switch-over: ownership moves to the target.
    CommitMigration {
        id: MigrationId,
    },
    AbortMigration {
        id: MigrationId,
        reason: String,
    },
    /// Define domain `clone` as a copy of `source` (a new name, new MACs and addresses)
    /// that starts from `source`'s snapshot `snapshot`.
    CloneDomain {
        clone: String,
        source: String,
        snapshot: String,
    },
    /// A host reports how snapshot `name`, asked of it for run `generation`, went.
    ReportSnapshot {
        domain: String,
        name: String,
        /// The snapshot's id (a later snapshot of the same name has another).
        id: u64,
        host: String,
        generation: u64,
        outcome: SnapshotOutcome,
    },
    /// The HA controller restarts an HA domain that should run and does not: lost with its
    /// fenced host, or crashed on a live one (within its restart limit).
    RestartDomain {
        name: String,
    },
    SetClusterSettings {
        ha_reserve_hosts: u32,
    },
    /// Put a flapping host back into placement.
    ClearHost {
        name: String,
    },

    // --- bearer tokens ---
    /// Make a bearer token for `name`, valid for `ttl_ms` from the decision. The replica
    /// that took the call made the secret and sends only its hash.
    CreateToken {
        name: String,
        role: Role,
        secret_sha256: [u8; 32],
        ttl_ms: u64,
    },
    RevokeToken {
        name: String,
    },

    // --- live migrations' data plane (appended) ---
    /// A host reports a step of migration `id` that it took part in (its source or
    /// target); `Switch` commits the switch-over.
    ReportMigration {
        id: MigrationId,
        host: String,
        report: MigrationReport,
    },
}

/// What a host did with a volume operation asked of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeOutcome {
    /// Done; the file takes `allocation_mib` (nothing, once deleted).
    Done {
        allocation_mib: u64,
    },
    Failed {
        reason: String,
    },
}

/// What a host did with a snapshot asked of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotOutcome {
    Taken { bytes: u64, duration_ms: u64 },
    Failed { reason: String },
}

impl Command {
    /// What the caller's rights must allow. The API's door checks each method against
    /// its table first; this is the decision path's own check, which every write passes.
    pub fn needs(&self) -> Need<'_> {
        use Command::*;
        match self {
            RegisterHost { name, .. } | SetHostState { name, .. } => Need::HostOrAdmin(name),
            ReportObservation { host, .. }
            | ReportVolume { host, .. }
            | ReportSnapshot { host, .. }
            | ReportMigration { host, .. } => Need::HostOrAdmin(host),
            DefineDomain { .. }
            | UndefineDomain { .. }
            | StartDomain { .. }
            | ShutdownDomain { .. }
            | DestroyDomain { .. }
            | RebootDomain { .. }
            | SuspendDomain { .. }
            | ResumeDomain { .. }
            | AttachDisk { .. }
            | DetachDisk { .. }
            | CreateSnapshot { .. }
            | DeleteSnapshot { .. }
            | RevertSnapshot { .. }
            | CloneDomain { .. }
            | StartMigration { .. }
            | SetMigrationDowntime { .. }
            | AbortMigration { .. } => Need::Role(Role::Operator),
            CreateNetwork { .. }
            | DeleteNetwork { .. }
            | CreatePool { .. }
            | DeletePool { .. }
            | CreateVolume { .. }
            | DeleteVolume { .. }
            | ResizeVolume { .. }
            | ReportVolumeAllocation { .. }
            | SetClusterSettings { .. }
            | ClearHost { .. }
            | CreateToken { .. }
            | RevokeToken { .. } => Need::Role(Role::Admin),
            ReportMigrationProgress { .. } | CommitMigration { .. } | RestartDomain { .. } => Need::Cluster,
        }
    }

    /// The command's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterHost { .. } => "RegisterHost",
            Command::SetHostState { .. } => "SetHostState",
            Command::DefineDomain { .. } => "DefineDomain",
            Command::UndefineDomain { .. } => "UndefineDomain",
            Command::StartDomain { .. } => "StartDomain",
            Command::ShutdownDomain { .. } => "ShutdownDomain",
            Command::DestroyDomain { .. } => "DestroyDomain",
            Command::RebootDomain { .. } => "RebootDomain",
            Command::SuspendDomain { .. } => "SuspendDomain",
            Command::ResumeDomain { .. } => "ResumeDomain",
            Command::AttachDisk { .. } => "AttachDisk",
            Command::DetachDisk { .. } => "DetachDisk",
            Command::ReportObservation { .. } => "ReportObservation",
            Command::CreateNetwork { .. } => "CreateNetwork",
            Command::DeleteNetwork { .. } => "DeleteNetwork",
            Command::CreatePool { .. } => "CreatePool",
            Command::DeletePool { .. } => "DeletePool",
            Command::CreateVolume { .. } => "CreateVolume",
            Command::DeleteVolume { .. } => "DeleteVolume",
            Command::ResizeVolume { .. } => "ResizeVolume",
            Command::ReportVolumeAllocation { .. } => "ReportVolumeAllocation",
            Command::ReportVolume { .. } => "ReportVolume",
            Command::CreateSnapshot { .. } => "CreateSnapshot",
            Command::DeleteSnapshot { .. } => "DeleteSnapshot",
            Command::RevertSnapshot { .. } => "RevertSnapshot",
            Command::StartMigration { .. } => "StartMigration",
            Command::SetMigrationDowntime { .. } => "SetMigrationDowntime",
            Command::ReportMigrationProgress { .. } => "ReportMigrationProgress",
            Command::CommitMigration { .. } => "CommitMigration",
            Command::AbortMigration { .. } => "AbortMigration",
            Command::ReportSnapshot { .. } => "ReportSnapshot",
            Command::CloneDomain { .. } => "CloneDomain",
            Command::RestartDomain { .. } => "RestartDomain",
            Command::SetClusterSettings { .. } => "SetClusterSettings",
            Command::ClearHost { .. } => "ClearHost",
            Command::CreateToken { .. } => "CreateToken",
            Command::RevokeToken { .. } => "RevokeToken",
            Command::ReportMigration { .. } => "ReportMigration",
        }
    }
}
