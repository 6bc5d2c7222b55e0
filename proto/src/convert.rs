//! The one converter between the public protobuf messages and the core's model, used by
//! the API server, the CLI and hostd alike. Conversions into the model validate shape (a
//! missing field, a bad MAC, an enum left unspecified) and answer `InvalidArgument`;
//! everything else is `decide`'s to judge.
//!
//! Every wire enum maps to one model enum (`wire_enum!`), whose words (`as_str`,
//! `FromStr`) the model owns.

use std::net::Ipv4Addr;
use std::sync::Arc;

use controlplane::model::{
    self, Boot, Cidr, Disk, Domain, DomainSpec, DomainStatus, HaPolicy, Host, Lease, Mac, Migration,
    MigrationProgress, MigrationReport, Network, NetworkConfig, Nic, Placement, Pool, PoolConfig, PoolKind,
    Resources, Snapshot, SnapshotRef, SnapshotState, VmLimits, Volume, VolumeOp, VolumeRef, VolumeState,
};
use controlplane::{Command, EventEnvelope, SnapshotOutcome, VolumeOutcome};
use tonic::Status;

use crate::api as pb;

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {reason}"))
}

/// A wire enum and the model enum it stands for.
pub trait WireEnum: TryFrom<i32> + Copy {
    type Model;
    /// The model's value; `None` for UNSPECIFIED.
    fn to_model(self) -> Option<Self::Model>;
}

/// Pairs a wire enum with its model enum, value for value: `From<model>` for the wire
/// one and `WireEnum` back (UNSPECIFIED has no model value).
macro_rules! wire_enum {
    ($wire:ident <=> $model:ident { $($variant:ident),+ $(,)? }) => {
        impl From<model::$model> for pb::$wire {
            fn from(m: model::$model) -> pb::$wire {
                match m {
                    $(model::$model::$variant => pb::$wire::$variant),+
                }
            }
        }

        impl WireEnum for pb::$wire {
            type Model = model::$model;

            fn to_model(self) -> Option<model::$model> {
                match self {
                    pb::$wire::Unspecified => None,
                    $(pb::$wire::$variant => Some(model::$model::$variant)),+
                }
            }
        }
    };
}

wire_enum!(DomainPhase <=> Phase {
    Stopped, Scheduled, Starting, Running, Paused, ShuttingDown, Crashed, Failed, Lost
});
wire_enum!(ObservedPhase <=> ObservedPhase { Starting, Running, Paused, ShuttingDown, Stopped, Crashed, Failed });
wire_enum!(DesiredState <=> DesiredState { Running, Stopped, Paused });
wire_enum!(StopMode <=> StopMode { Graceful, Force });
wire_enum!(HostState <=> HostState { Joining, Ready, Suspect, Fenced, Maintenance, Left });
wire_enum!(MigrationPhase <=> MigrationPhase { Preparing, Transferring, Completing, Committed, RolledBack });
wire_enum!(NetworkMode <=> NetworkMode { Isolated, Nat, Bridge });
wire_enum!(PoolKind <=> PoolKind { Dir });
wire_enum!(SnapshotKind <=> SnapshotKind { Full, Disk });
wire_enum!(VolumeFormat <=> VolumeFormat { Raw, Qcow2 });
wire_enum!(AttachMode <=> AttachMode { ReadWrite, ReadOnly });
wire_enum!(Role <=> Role { Viewer, Operator, Admin });

/// The model value of a wire enum field (its raw `i32`): UNSPECIFIED and values this
/// build does not know are `InvalidArgument`, naming `field`.
pub fn required<W: WireEnum>(value: i32, field: &str) -> Result<W::Model, Status> {
    match W::try_from(value).ok().and_then(W::to_model) {
        Some(m) => Ok(m),
        None if value == 0 => Err(invalid(field, "is required")),
        None => Err(invalid(field, format!("{value} is not a known value"))),
    }
}

pub fn volume_ref(v: Option<pb::VolumeRef>, field: &str) -> Result<VolumeRef, Status> {
    let v = v.ok_or_else(|| invalid(field, "is required"))?;
    Ok(VolumeRef::new(v.pool, v.name))
}

pub fn domain_spec(spec: Option<pb::DomainSpec>) -> Result<DomainSpec, Status> {
    let s = spec.ok_or_else(|| invalid("spec", "is required"))?;
    let boot = match s.boot {
        Some(pb::domain_spec::Boot::Kernel(k)) => Boot::Kernel {
            kernel: k.kernel,
            initrd: (!k.initrd.is_empty()).then_some(k.initrd),
            cmdline: k.cmdline,
        },
        Some(pb::domain_spec::Boot::Disk(true)) => Boot::Disk,
        Some(pb::domain_spec::Boot::Disk(false)) | None => {
            return Err(invalid("spec.boot", "set kernel, or disk = true"));
        }
    };
    let disks = s
        .disks
        .into_iter()
        .map(|d| Ok(Disk { volume: volume_ref(d.volume, "spec.disks.volume")?, read_only: d.read_only }))
        .collect::<Result<_, Status>>()?;
    let nics = s
        .nics
        .into_iter()
        .map(|n| {
            let mac = if n.mac.is_empty() {
                None
            } else {
                Some(
                    n.mac
                        .parse::<Mac>()
                        .map_err(|e| invalid("spec.nics.mac", format!("{:?}: {e}", n.mac)))?,
                )
            };
            Ok(Nic { network: n.network, mac })
        })
        .collect::<Result<_, Status>>()?;
    let ha = match (s.ha_restart, s.ha_priority) {
        (true, priority) => HaPolicy::Restart { priority },
        (false, 0) => HaPolicy::None,
        (false, _) => return Err(invalid("spec.ha_priority", "is set but ha_restart is not")),
    };
    Ok(DomainSpec {
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        boot,
        disks,
        nics,
        ha,
        placement: Placement {
            required_labels: s.required_labels.into_iter().collect(),
            anti_affinity_group: (!s.anti_affinity_group.is_empty()).then_some(s.anti_affinity_group),
        },
    })
}

pub fn spec_to_pb(s: &DomainSpec) -> pb::DomainSpec {
    let boot = match &s.boot {
        Boot::Kernel { kernel, initrd, cmdline } => pb::domain_spec::Boot::Kernel(pb::KernelBoot {
            kernel: kernel.clone(),
            initrd: initrd.clone().unwrap_or_default(),
            cmdline: cmdline.clone(),
        }),
        Boot::Disk => pb::domain_spec::Boot::Disk(true),
    };
    let (ha_restart, ha_priority) = match s.ha {
        HaPolicy::None => (false, 0),
        HaPolicy::Restart { priority } => (true, priority),
    };
    pb::DomainSpec {
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        boot: Some(boot),
        disks: s
            .disks
            .iter()
            .map(|d| pb::Disk {
                volume: Some(pb::VolumeRef { pool: d.volume.pool.clone(), name: d.volume.name.clone() }),
                read_only: d.read_only,
            })
            .collect(),
        nics: s
            .nics
            .iter()
            .map(|n| pb::Nic {
                network: n.network.clone(),
                mac: n.mac.map(|m| m.to_string()).unwrap_or_default(),
            })
            .collect(),
        ha_restart,
        ha_priority,
        required_labels: s.placement.required_labels.clone().into_iter().collect(),
        anti_affinity_group: s.placement.anti_affinity_group.clone().unwrap_or_default(),
    }
}

pub fn domain_to_pb(d: &Domain) -> pb::Domain {
    pb::Domain {
        name: d.name.clone(),
        spec: Some(spec_to_pb(&d.spec)),
        desired: pb::DesiredState::from(d.desired).into(),
        stop_mode: pb::StopMode::from(d.stop_mode).into(),
        reboots: d.reboots,
        status: Some(pb::DomainStatus {
            host: d.status.host.clone().unwrap_or_default(),
            generation: d.status.generation,
            phase: pb::DomainPhase::from(d.status.phase).into(),
            reason: d.status.reason.clone().unwrap_or_default(),
            observed_ms: d.status.observed_ms,
        }),
        current_snapshot: d.current_snapshot.clone().unwrap_or_default(),
        restore_from: d
            .restore_from
            .as_ref()
            .map(|r| pb::SnapshotRef { domain: r.domain.clone(), name: r.name.clone() }),
        migration_id: d.migration.unwrap_or(0),
        defined_ms: d.defined_ms,
        version: d.version,
    }
}

/// A domain as the API lists it, back in the model's shape (hostd reading through the
/// API). What the wire does not carry (HA restart times) is empty.
pub fn domain_from_pb(d: pb::Domain) -> Result<Domain, Status> {
    let status = d.status.ok_or_else(|| invalid("status", "is required"))?;
    Ok(Domain {
        spec: Arc::new(domain_spec(d.spec)?),
        desired: required::<pb::DesiredState>(d.desired, "desired")?,
        stop_mode: required::<pb::StopMode>(d.stop_mode, "stop_mode")?,
        reboots: d.reboots,
        status: DomainStatus {
            host: (!status.host.is_empty()).then_some(status.host),
            generation: status.generation,
            phase: required::<pb::DomainPhase>(status.phase, "status.phase")?,
            reason: (!status.reason.is_empty()).then_some(status.reason),
            observed_ms: status.observed_ms,
        },
        current_snapshot: (!d.current_snapshot.is_empty()).then_some(d.current_snapshot),
        restore_from: d.restore_from.map(|r| SnapshotRef { domain: r.domain, name: r.name }),
        ha_restarts: Vec::new(),
        migration: (d.migration_id != 0).then_some(d.migration_id),
        defined_ms: d.defined_ms,
        version: d.version,
        name: d.name,
    })
}

pub fn resources(r: Option<pb::Resources>) -> Result<Resources, Status> {
    let r = r.ok_or_else(|| invalid("capacity", "is required"))?;
    Ok(Resources { vcpus: r.vcpus, memory_mib: r.memory_mib })
}

pub fn resources_to_pb(r: Resources) -> pb::Resources {
    pb::Resources { vcpus: r.vcpus, memory_mib: r.memory_mib }
}

pub fn vm_limits_from_pb(l: Option<pb::VmLimits>) -> Option<VmLimits> {
    l.map(|l| VmLimits { vcpus: l.vcpus, memory_mib: l.memory_mib, disks: l.disks, nics: l.nics })
}

pub fn vm_limits_to_pb(l: Option<VmLimits>) -> Option<pb::VmLimits> {
    l.map(|l| pb::VmLimits { vcpus: l.vcpus, memory_mib: l.memory_mib, disks: l.disks, nics: l.nics })
}

/// A host as the API lists it, back in the model's shape.
pub fn host_from_pb(h: pb::Host) -> Result<Host, Status> {
    Ok(Host {
        address: h.address,
        capacity: resources(h.capacity)?,
        allocated: resources(h.allocated)?,
        labels: h.labels.into_iter().collect(),
        state: required::<pb::HostState>(h.state, "state")?,
        domains: h.domains.into_iter().collect(),
        registered_ms: h.registered_ms,
        version: h.version,
        vm_limits: vm_limits_from_pb(h.vm_limits),
        name: h.name,
    })
}

/// A host as the API shows it, with what the state knows of its recent fencings.
pub fn host_to_pb(state: &controlplane::State, h: &Host) -> pb::Host {
    let res = |r: Resources| Some(resources_to_pb(r));
    let fences = state.fences_of(&h.name);
    pb::Host {
        flapping: fences.is_some_and(|f| f.flapping),
        recent_fences: fences.map_or(0, |f| f.times.len() as u32),
        name: h.name.clone(),
        address: h.address.clone(),
        capacity: res(h.capacity),
        allocated: res(h.allocated),
        labels: h.labels.clone().into_iter().collect(),
        state: pb::HostState::from(h.state).into(),
        domains: h.domains.iter().cloned().collect(),
        registered_ms: h.registered_ms,
        version: h.version,
        vm_limits: vm_limits_to_pb(h.vm_limits),
    }
}

pub fn event_to_pb(e: &EventEnvelope) -> pb::Event {
    pb::Event {
        seq: e.seq,
        time_ms: e.time_ms,
        principal: e.principal.clone(),
        request_id: e.request_id.clone(),
        kind: e.event.kind().into(),
        resource: e.event.subject().to_string(),
        json: serde_json::to_string(&e.event).expect("events serialize to JSON"),
    }
}

pub fn network_config(c: Option<pb::NetworkConfig>) -> Result<NetworkConfig, Status> {
    let c = c.ok_or_else(|| invalid("config", "is required"))?;
    let mode = required::<pb::NetworkMode>(c.mode, "config.mode")?;
    let cidr = if c.cidr.is_empty() {
        None
    } else {
        Some(c.cidr.parse::<Cidr>().map_err(|e| invalid("config.cidr", format!("{:?}: {e}", c.cidr)))?)
    };
    let gateway = if c.gateway.is_empty() {
        None
    } else {
        Some(
            c.gateway
                .parse::<Ipv4Addr>()
                .map_err(|e| invalid("config.gateway", format!("{:?}: {e}", c.gateway)))?,
        )
    };
    Ok(NetworkConfig { mode, cidr, gateway, bridge: (!c.bridge.is_empty()).then_some(c.bridge) })
}

pub fn token_to_pb(t: &model::Token) -> pb::Token {
    pb::Token {
        name: t.name.clone(),
        role: pb::Role::from(t.role).into(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms,
        created_by: t.created_by.clone(),
        version: t.version,
    }
}

pub fn network_to_pb(n: &Network) -> pb::Network {
    pb::Network {
        name: n.name.clone(),
        config: Some(pb::NetworkConfig {
            mode: pb::NetworkMode::from(n.config.mode).into(),
            cidr: n.config.cidr.map(|c| c.to_string()).unwrap_or_default(),
            gateway: n.config.gateway.map(|g| g.to_string()).unwrap_or_default(),
            bridge: n.config.bridge.clone().unwrap_or_default(),
        }),
        leases: n
            .leases
            .iter()
            .map(|(mac, l)| pb::Lease {
                mac: mac.to_string(),
                ip: l.ip.map(|i| i.to_string()).unwrap_or_default(),
                domain: l.domain.clone(),
            })
            .collect(),
        created_ms: n.created_ms,
        version: n.version,
        vni: n.vni(),
    }
}

/// A network as the API lists it, back in the model's shape.
pub fn network_from_pb(n: pb::Network) -> Result<Network, Status> {
    let leases = n
        .leases
        .into_iter()
        .map(|l| {
            let mac = l.mac.parse::<Mac>().map_err(|e| invalid("leases.mac", format!("{:?}: {e}", l.mac)))?;
            let ip = if l.ip.is_empty() {
                None
            } else {
                Some(l.ip.parse::<Ipv4Addr>().map_err(|e| invalid("leases.ip", format!("{:?}: {e}", l.ip)))?)
            };
            Ok((mac, Lease { domain: l.domain, ip }))
        })
        .collect::<Result<std::collections::BTreeMap<_, _>, Status>>()?;
    Ok(Network {
        config: network_config(n.config)?,
        used_ips: leases.values().filter_map(|l| l.ip).collect(),
        leases,
        created_ms: n.created_ms,
        version: n.version,
        vni: n.vni,
        name: n.name,
    })
}

pub fn pool_config(c: Option<pb::PoolConfig>) -> Result<PoolConfig, Status> {
    let c = c.ok_or_else(|| invalid("config", "is required"))?;
    // Unspecified: the one kind there is.
    let kind = if c.kind == 0 { PoolKind::Dir } else { required::<pb::PoolKind>(c.kind, "config.kind")? };
    Ok(PoolConfig { kind, path: c.path, shared: c.shared, capacity_mib: c.capacity_mib })
}

pub fn pool_to_pb(p: &Pool) -> pb::Pool {
    pb::Pool {
        name: p.name.clone(),
        config: Some(pb::PoolConfig {
            kind: pb::PoolKind::from(p.config.kind).into(),
            path: p.config.path.clone(),
            shared: p.config.shared,
            capacity_mib: p.config.capacity_mib,
        }),
        allocated_mib: p.allocated_mib,
        volumes: p.volumes,
        created_ms: p.created_ms,
        version: p.version,
    }
}

/// A pool as the API lists it, back in the model's shape.
pub fn pool_from_pb(p: pb::Pool) -> Result<Pool, Status> {
    Ok(Pool {
        config: pool_config(p.config)?,
        allocated_mib: p.allocated_mib,
        volumes: p.volumes,
        created_ms: p.created_ms,
        version: p.version,
        name: p.name,
    })
}

pub fn volume_to_pb(v: &Volume) -> pb::Volume {
    let mut out = pb::Volume {
        id: Some(pb::VolumeRef { pool: v.id.pool.clone(), name: v.id.name.clone() }),
        format: pb::VolumeFormat::from(v.format).into(),
        capacity_mib: v.capacity_mib,
        allocation_mib: v.allocation_mib,
        backing: v.backing.clone().unwrap_or_default(),
        clones: v.clones,
        attachments: v
            .attachments
            .iter()
            .map(|(d, m)| (d.clone(), pb::AttachMode::from(*m).into()))
            .collect(),
        created_ms: v.created_ms,
        version: v.version,
        host: v.host.clone().unwrap_or_default(),
        failure: v.failure.clone().unwrap_or_default(),
        ..Default::default()
    };
    match &v.state {
        VolumeState::Pending { op, host, id } => {
            out.pending_host = host.clone();
            out.pending_id = *id;
            match op {
                VolumeOp::Create { preallocate, import } => {
                    out.set_state(pb::VolumeState::Creating);
                    out.pending_preallocate = *preallocate;
                    out.pending_import = import.clone().unwrap_or_default();
                }
                VolumeOp::Resize { capacity_mib } => {
                    out.set_state(pb::VolumeState::Resizing);
                    out.pending_capacity_mib = *capacity_mib;
                }
                VolumeOp::Delete => out.set_state(pb::VolumeState::Deleting),
            }
        }
        VolumeState::Ready => out.set_state(pb::VolumeState::Ready),
        VolumeState::Failed { reason } => {
            out.set_state(pb::VolumeState::Failed);
            out.failure = reason.clone();
        }
        VolumeState::RecordOnly => out.set_state(pb::VolumeState::RecordOnly),
    }
    out
}

/// A volume as the API lists it, back in the model's shape.
pub fn volume_from_pb(v: pb::Volume) -> Result<Volume, Status> {
    let pending = |op| VolumeState::Pending { op, host: v.pending_host.clone(), id: v.pending_id };
    let state = match v.state() {
        pb::VolumeState::Unspecified => return Err(invalid("state", "is required")),
        pb::VolumeState::Creating => pending(VolumeOp::Create {
            preallocate: v.pending_preallocate,
            import: (!v.pending_import.is_empty()).then(|| v.pending_import.clone()),
        }),
        pb::VolumeState::Resizing => pending(VolumeOp::Resize { capacity_mib: v.pending_capacity_mib }),
        pb::VolumeState::Deleting => pending(VolumeOp::Delete),
        pb::VolumeState::Ready => VolumeState::Ready,
        pb::VolumeState::Failed => VolumeState::Failed { reason: v.failure.clone() },
        pb::VolumeState::RecordOnly => VolumeState::RecordOnly,
    };
    let attachments = v
        .attachments
        .iter()
        .map(|(d, m)| Ok((d.clone(), required::<pb::AttachMode>(*m, "attachments")?)))
        .collect::<Result<_, Status>>()?;
    let failed = matches!(state, VolumeState::Failed { .. });
    Ok(Volume {
        id: volume_ref(v.id, "id")?,
        format: required::<pb::VolumeFormat>(v.format, "format")?,
        capacity_mib: v.capacity_mib,
        allocation_mib: v.allocation_mib,
        backing: (!v.backing.is_empty()).then_some(v.backing),
        clones: v.clones,
        attachments,
        created_ms: v.created_ms,
        version: v.version,
        state,
        host: (!v.host.is_empty()).then_some(v.host),
        // A failed volume's reason is its state's.
        failure: (!failed && !v.failure.is_empty()).then_some(v.failure),
    })
}

/// A host's volume report as the command it is.
pub fn volume_report(r: pb::ReportVolumeRequest) -> Result<Command, Status> {
    let outcome = if r.failed {
        VolumeOutcome::Failed { reason: r.failure }
    } else {
        VolumeOutcome::Done { allocation_mib: r.allocation_mib }
    };
    Ok(Command::ReportVolume { volume: volume_ref(r.volume, "volume")?, host: r.host, id: r.id, outcome })
}

pub fn snapshot_to_pb(s: &Snapshot) -> pb::Snapshot {
    let mut out = pb::Snapshot {
        domain: s.domain.clone(),
        name: s.name.clone(),
        parent: s.parent.clone().unwrap_or_default(),
        kind: pb::SnapshotKind::from(s.kind).into(),
        created_ms: s.created_ms,
        version: s.version,
        id: s.id,
        ..Default::default()
    };
    match &s.state {
        SnapshotState::Pending { host, generation } => {
            out.set_state(pb::SnapshotState::Pending);
            out.host = host.clone();
            out.generation = *generation;
        }
        SnapshotState::Taken { host, bytes, duration_ms } => {
            out.set_state(pb::SnapshotState::Taken);
            out.host = host.clone();
            out.bytes = *bytes;
            out.duration_ms = *duration_ms;
        }
        SnapshotState::Failed { reason } => {
            out.set_state(pb::SnapshotState::Failed);
            out.reason = reason.clone();
        }
        SnapshotState::RecordOnly => out.set_state(pb::SnapshotState::RecordOnly),
    }
    out
}

/// A snapshot as the API lists it, back in the model's shape. The disks it imaged are not
/// on the wire (empty).
pub fn snapshot_from_pb(s: pb::Snapshot) -> Result<Snapshot, Status> {
    let state = match s.state() {
        pb::SnapshotState::Unspecified => return Err(invalid("state", "is required")),
        pb::SnapshotState::Pending => {
            SnapshotState::Pending { host: s.host.clone(), generation: s.generation }
        }
        pb::SnapshotState::Taken => {
            SnapshotState::Taken { host: s.host.clone(), bytes: s.bytes, duration_ms: s.duration_ms }
        }
        pb::SnapshotState::Failed => SnapshotState::Failed { reason: s.reason.clone() },
        pb::SnapshotState::RecordOnly => SnapshotState::RecordOnly,
    };
    Ok(Snapshot {
        kind: required::<pb::SnapshotKind>(s.kind, "kind")?,
        parent: (!s.parent.is_empty()).then_some(s.parent),
        created_ms: s.created_ms,
        version: s.version,
        state,
        id: s.id,
        disks: Vec::new(),
        domain: s.domain,
        name: s.name,
    })
}

/// A host's snapshot report as the command it is.
pub fn snapshot_report(r: pb::ReportSnapshotRequest) -> Command {
    let outcome = if r.failed {
        SnapshotOutcome::Failed { reason: r.failure }
    } else {
        SnapshotOutcome::Taken { bytes: r.bytes, duration_ms: r.duration_ms }
    };
    Command::ReportSnapshot {
        domain: r.domain,
        name: r.name,
        id: r.id,
        host: r.host,
        generation: r.generation,
        outcome,
    }
}

pub fn migration_to_pb(m: &Migration) -> pb::Migration {
    pb::Migration {
        id: m.id,
        domain: m.domain.clone(),
        source: m.source.clone(),
        target: m.target.clone(),
        phase: pb::MigrationPhase::from(m.phase).into(),
        reason: m.reason.clone().unwrap_or_default(),
        started_ms: m.started_ms,
        ended_ms: m.ended_ms.unwrap_or(0),
        version: m.version,
        target_address: m.target_address.clone(),
        progress: Some(migration_progress_to_pb(&m.progress)),
        max_downtime_ms: m.max_downtime_ms,
    }
}

/// A migration as the API lists it, back in the model's shape (everything is on the wire).
pub fn migration_from_pb(m: pb::Migration) -> Result<Migration, Status> {
    Ok(Migration {
        phase: required::<pb::MigrationPhase>(m.phase, "phase")?,
        reason: (!m.reason.is_empty()).then_some(m.reason),
        ended_ms: (m.ended_ms != 0).then_some(m.ended_ms),
        progress: migration_progress_from_pb(&m.progress.unwrap_or_default())?,
        id: m.id,
        domain: m.domain,
        source: m.source,
        target: m.target,
        started_ms: m.started_ms,
        version: m.version,
        target_address: m.target_address,
        max_downtime_ms: m.max_downtime_ms,
    })
}

pub fn migration_progress_to_pb(p: &MigrationProgress) -> pb::MigrationProgress {
    pb::MigrationProgress {
        bytes_sent: p.bytes_sent,
        rounds: p.rounds,
        dirty_bytes_per_s: p.dirty_bytes_per_s,
        remaining_bytes: p.remaining_bytes,
        expected_downtime_ms: p.expected_downtime_ms,
        throttle_percent: u32::from(p.throttle_percent),
        downtime_ms: p.downtime_ms,
    }
}

pub fn migration_progress_from_pb(p: &pb::MigrationProgress) -> Result<MigrationProgress, Status> {
    Ok(MigrationProgress {
        bytes_sent: p.bytes_sent,
        rounds: p.rounds,
        dirty_bytes_per_s: p.dirty_bytes_per_s,
        remaining_bytes: p.remaining_bytes,
        expected_downtime_ms: p.expected_downtime_ms,
        throttle_percent: u8::try_from(p.throttle_percent)
            .map_err(|_| invalid("throttle_percent", format!("{} is above 255", p.throttle_percent)))?,
        downtime_ms: p.downtime_ms,
    })
}

/// A host's migration report for the wire.
pub fn report_migration_to_pb(
    request_id: String,
    id: u64,
    host: &str,
    report: &MigrationReport,
) -> pb::ReportMigrationRequest {
    use pb::report_migration_request::Report;
    let report = match report {
        MigrationReport::TargetReady { address } => Report::TargetReady(address.clone()),
        MigrationReport::Copying(p) => Report::Copying(migration_progress_to_pb(p)),
        MigrationReport::Completing(p) => Report::Completing(migration_progress_to_pb(p)),
        MigrationReport::Switch(p) => Report::Switch(migration_progress_to_pb(p)),
        MigrationReport::Done(p) => Report::Done(migration_progress_to_pb(p)),
        MigrationReport::Failed { reason } => Report::Failed(reason.clone()),
    };
    pb::ReportMigrationRequest { request_id, id, host: host.to_owned(), report: Some(report) }
}

/// A host's migration report as the command it is.
pub fn migration_report(r: &pb::ReportMigrationRequest) -> Result<Command, Status> {
    use pb::report_migration_request::Report;
    let report = match r.report.as_ref().ok_or_else(|| invalid("report", "none given"))? {
        Report::TargetReady(address) => MigrationReport::TargetReady { address: address.clone() },
        Report::Copying(p) => MigrationReport::Copying(migration_progress_from_pb(p)?),
        Report::Completing(p) => MigrationReport::Completing(migration_progress_from_pb(p)?),
        Report::Switch(p) => MigrationReport::Switch(migration_progress_from_pb(p)?),
        Report::Done(p) => MigrationReport::Done(migration_progress_from_pb(p)?),
        Report::Failed(reason) => MigrationReport::Failed { reason: reason.clone() },
    };
    Ok(Command::ReportMigration { id: r.id, host: r.host.clone(), report })
}

/// The model's word for a wire enum value, as the CLI shows it: "unspecified", or the
/// number for a value this build does not know.
pub fn word<W: WireEnum>(value: i32) -> String
where
    W::Model: std::fmt::Display,
{
    match W::try_from(value).ok().and_then(W::to_model) {
        Some(m) => m.to_string(),
        None if value == 0 => "unspecified".into(),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use controlplane::fixtures::{dir_pool, kernel_spec, nat_network, new_volume, Harness};
    use controlplane::model::{DesiredState, ObservedPhase, Phase, VolumeFormat};
    use controlplane::State;

    use super::*;

    /// Every model value has a wire value and comes back as itself; UNSPECIFIED and
    /// unknown numbers are refused with the field named.
    #[test]
    fn every_enum_value_crosses_the_wire_and_back() {
        fn round_trip<W: WireEnum + Into<i32> + From<W::Model>>(all: &[W::Model])
        where
            W::Model: Copy + PartialEq + std::fmt::Debug,
        {
            for m in all {
                let raw: i32 = W::from(*m).into();
                assert_ne!(raw, 0, "{m:?} is not UNSPECIFIED on the wire");
                assert_eq!(required::<W>(raw, "f").unwrap(), *m);
            }
            assert!(required::<W>(0, "f").unwrap_err().message().contains("f: is required"));
            assert!(required::<W>(1000, "f").unwrap_err().message().contains("1000 is not a known value"));
        }
        round_trip::<pb::DomainPhase>(Phase::ALL);
        round_trip::<pb::ObservedPhase>(ObservedPhase::ALL);
        round_trip::<pb::DesiredState>(DesiredState::ALL);
        round_trip::<pb::StopMode>(model::StopMode::ALL);
        round_trip::<pb::HostState>(model::HostState::ALL);
        round_trip::<pb::MigrationPhase>(model::MigrationPhase::ALL);
        round_trip::<pb::NetworkMode>(model::NetworkMode::ALL);
        round_trip::<pb::PoolKind>(model::PoolKind::ALL);
        round_trip::<pb::SnapshotKind>(model::SnapshotKind::ALL);
        round_trip::<pb::VolumeFormat>(VolumeFormat::ALL);
        round_trip::<pb::AttachMode>(model::AttachMode::ALL);
        round_trip::<pb::Role>(model::Role::ALL);
        assert_eq!(word::<pb::DomainPhase>(pb::DomainPhase::ShuttingDown.into()), "shutting-down");
        assert_eq!(word::<pb::DomainPhase>(0), "unspecified");
    }

    /// What the API lists, converted back, is what the state holds: hostd reading through
    /// the API sees the same cluster as hostd reading its own replica.
    #[test]
    fn listed_resources_convert_back_to_the_state_they_came_from() {
        let mut h = Harness::new();
        h.ready_host("h1", 8, 8192);
        h.exec(nat_network("lan", "10.7.0.0/24")).unwrap();
        h.exec(dir_pool("p", true, 10_000)).unwrap();
        h.exec_volume(new_volume("p", "root", VolumeFormat::Qcow2, 100, None)).unwrap();
        h.exec(new_volume("p", "pending", VolumeFormat::Raw, 100, None)).unwrap();
        let mut spec = kernel_spec(1, 256);
        spec.disks.push(Disk { volume: VolumeRef::new("p", "root"), read_only: false });
        spec.nics.push(Nic { network: "lan".into(), mac: None });
        h.exec(Command::DefineDomain { name: "web".into(), spec }).unwrap();
        h.exec(Command::StartDomain { name: "web".into() }).unwrap();
        h.exec(Command::ReportObservation {
            domain: "web".into(),
            host: "h1".into(),
            generation: 1,
            phase: ObservedPhase::Running,
            reason: None,
        })
        .unwrap();
        h.take_snapshot("web", "s0").unwrap();
        h.exec(Command::CreateSnapshot {
            domain: "web".into(),
            name: "s1".into(),
            kind: model::SnapshotKind::Full,
        })
        .unwrap();
        h.ready_host("h2", 8, 8192);
        h.exec(Command::DefineDomain { name: "app".into(), spec: kernel_spec(1, 128) }).unwrap();
        h.exec(Command::StartDomain { name: "app".into() }).unwrap();
        let app = h.state.domain("app").unwrap().status.clone();
        h.exec(Command::ReportObservation {
            domain: "app".into(),
            host: app.host.clone().unwrap(),
            generation: app.generation,
            phase: ObservedPhase::Running,
            reason: None,
        })
        .unwrap();
        h.exec(Command::StartMigration { domain: "app".into(), target: None, max_downtime_ms: Some(20) })
            .unwrap();
        assert_eq!(h.state.migrations().len(), 1);
        let s = &h.state;
        let listed = State::from_listing(
            s.hosts().values().map(|x| host_from_pb(host_to_pb(s, x)).unwrap()),
            s.domains().values().map(|x| domain_from_pb(domain_to_pb(x)).unwrap()),
            s.networks().values().map(|x| network_from_pb(network_to_pb(x)).unwrap()),
            s.pools().values().map(|x| pool_from_pb(pool_to_pb(x)).unwrap()),
            s.volumes().values().map(|x| volume_from_pb(volume_to_pb(x)).unwrap()),
            s.snapshots().values().map(|x| snapshot_from_pb(snapshot_to_pb(x)).unwrap()),
            s.migrations().values().map(|x| migration_from_pb(migration_to_pb(x)).unwrap()),
        );
        assert_eq!(listed.hosts(), s.hosts());
        assert_eq!(listed.networks(), s.networks());
        assert_eq!(listed.pools(), s.pools());
        assert_eq!(listed.volumes(), s.volumes());
        assert_eq!(listed.migrations(), s.migrations());
        assert!(matches!(
            listed.volume(&VolumeRef::new("p", "pending")).unwrap().state,
            VolumeState::Pending { .. }
        ));
        // The wire carries neither HA restart times nor the disks a snapshot imaged.
        let web = listed.domain("web").unwrap();
        assert_eq!(web, s.domain("web").unwrap());
        for name in ["s0", "s1"] {
            let (snap, was) = (listed.snapshot("web", name).unwrap(), s.snapshot("web", name).unwrap());
            assert_eq!(Snapshot { disks: was.disks.clone(), ..snap.clone() }, *was);
        }
        assert!(listed.last_seq() > 0 && listed.last_seq() <= s.last_seq());
    }
}
