//! Conversions between the public protobuf messages and the core's model. Conversions
//! into the model validate shape (a missing field, a bad MAC) and answer
//! `InvalidArgument`; everything else is `decide`'s to judge.

use std::net::Ipv4Addr;

use controlplane::model::{
    AttachMode, Boot, Cidr, DesiredState, Disk, Domain, DomainSpec, HaPolicy, Host, HostState, Mac,
    Migration, MigrationPhase, Network, NetworkConfig, NetworkMode, Nic, Phase, Placement, Pool, PoolConfig,
    PoolKind, Resources, Snapshot, SnapshotKind, SnapshotState, StopMode, VmLimits, Volume, VolumeFormat,
    VolumeOp, VolumeRef, VolumeState,
};
use controlplane::{Command, EventEnvelope, SnapshotOutcome, VolumeOutcome};
use proto::api as pb;
use tonic::Status;

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {reason}"))
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

pub fn phase_str(p: Phase) -> &'static str {
    match p {
        Phase::Stopped => "stopped",
        Phase::Scheduled => "scheduled",
        Phase::Starting => "starting",
        Phase::Running => "running",
        Phase::Paused => "paused",
        Phase::ShuttingDown => "shutting-down",
        Phase::Crashed => "crashed",
        Phase::Failed => "failed",
        Phase::Lost => "lost",
    }
}

pub fn domain_to_pb(d: &Domain) -> pb::Domain {
    pb::Domain {
        name: d.name.clone(),
        spec: Some(spec_to_pb(&d.spec)),
        desired: match d.desired {
            DesiredState::Running => "running",
            DesiredState::Stopped => "stopped",
            DesiredState::Paused => "paused",
        }
        .into(),
        stop_mode: match d.stop_mode {
            StopMode::Graceful => "graceful",
            StopMode::Force => "force",
        }
        .into(),
        reboots: d.reboots,
        status: Some(pb::DomainStatus {
            host: d.status.host.clone().unwrap_or_default(),
            generation: d.status.generation,
            phase: phase_str(d.status.phase).into(),
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

pub fn host_state(s: &str) -> Result<HostState, Status> {
    Ok(match s {
        "joining" => HostState::Joining,
        "ready" => HostState::Ready,
        "suspect" => HostState::Suspect,
        "fenced" => HostState::Fenced,
        "maintenance" | "drain" => HostState::Maintenance,
        "left" => HostState::Left,
        other => return Err(invalid("state", format!("{other:?} is not a host state"))),
    })
}

pub fn resources(r: Option<pb::Resources>) -> Result<Resources, Status> {
    let r = r.ok_or_else(|| invalid("capacity", "is required"))?;
    Ok(Resources { vcpus: r.vcpus, memory_mib: r.memory_mib })
}

pub fn vm_limits_from_pb(l: Option<pb::VmLimits>) -> Option<VmLimits> {
    l.map(|l| VmLimits { vcpus: l.vcpus, memory_mib: l.memory_mib, disks: l.disks, nics: l.nics })
}

pub fn vm_limits_to_pb(l: Option<VmLimits>) -> Option<pb::VmLimits> {
    l.map(|l| pb::VmLimits { vcpus: l.vcpus, memory_mib: l.memory_mib, disks: l.disks, nics: l.nics })
}

/// A host as the API shows it, with what the state knows of its recent fencings.
pub fn host_to_pb(state: &controlplane::State, h: &Host) -> pb::Host {
    let res = |r: Resources| Some(pb::Resources { vcpus: r.vcpus, memory_mib: r.memory_mib });
    let fences = state.fences_of(&h.name);
    pb::Host {
        flapping: fences.is_some_and(|f| f.flapping),
        recent_fences: fences.map_or(0, |f| f.times.len() as u32),
        name: h.name.clone(),
        address: h.address.clone(),
        capacity: res(h.capacity),
        allocated: res(h.allocated),
        labels: h.labels.clone().into_iter().collect(),
        state: h.state.as_str().into(),
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
    let mode = match c.mode.as_str() {
        "isolated" => NetworkMode::Isolated,
        "nat" => NetworkMode::Nat,
        "bridge" => NetworkMode::Bridge,
        other => return Err(invalid("config.mode", format!("{other:?} is not isolated, nat or bridge"))),
    };
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

pub fn network_to_pb(n: &Network) -> pb::Network {
    pb::Network {
        name: n.name.clone(),
        config: Some(pb::NetworkConfig {
            mode: match n.config.mode {
                NetworkMode::Isolated => "isolated",
                NetworkMode::Nat => "nat",
                NetworkMode::Bridge => "bridge",
            }
            .into(),
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

pub fn pool_config(c: Option<pb::PoolConfig>) -> Result<PoolConfig, Status> {
    let c = c.ok_or_else(|| invalid("config", "is required"))?;
    let kind = match c.kind.as_str() {
        "dir" | "" => PoolKind::Dir,
        other => return Err(invalid("config.kind", format!("{other:?} is not a pool kind (dir)"))),
    };
    Ok(PoolConfig { kind, path: c.path, shared: c.shared, capacity_mib: c.capacity_mib })
}

pub fn pool_to_pb(p: &Pool) -> pb::Pool {
    pb::Pool {
        name: p.name.clone(),
        config: Some(pb::PoolConfig {
            kind: "dir".into(),
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

pub fn volume_format(f: &str) -> Result<VolumeFormat, Status> {
    match f {
        "raw" => Ok(VolumeFormat::Raw),
        "qcow2" => Ok(VolumeFormat::Qcow2),
        other => Err(invalid("format", format!("{other:?} is not raw or qcow2"))),
    }
}

pub fn volume_to_pb(v: &Volume) -> pb::Volume {
    let mut out = pb::Volume {
        id: Some(pb::VolumeRef { pool: v.id.pool.clone(), name: v.id.name.clone() }),
        format: match v.format {
            VolumeFormat::Raw => "raw",
            VolumeFormat::Qcow2 => "qcow2",
        }
        .into(),
        capacity_mib: v.capacity_mib,
        allocation_mib: v.allocation_mib,
        backing: v.backing.clone().unwrap_or_default(),
        clones: v.clones,
        attachments: v
            .attachments
            .iter()
            .map(|(d, m)| (d.clone(), if *m == AttachMode::ReadOnly { "ro" } else { "rw" }.to_string()))
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

/// A host's volume report as the command it is.
pub fn volume_report(r: pb::ReportVolumeRequest) -> Result<Command, Status> {
    let outcome = if r.failed {
        VolumeOutcome::Failed { reason: r.failure }
    } else {
        VolumeOutcome::Done { allocation_mib: r.allocation_mib }
    };
    Ok(Command::ReportVolume { volume: volume_ref(r.volume, "volume")?, host: r.host, id: r.id, outcome })
}

pub fn snapshot_kind(k: &str) -> Result<SnapshotKind, Status> {
    match k {
        "full" => Ok(SnapshotKind::Full),
        "disk" => Ok(SnapshotKind::Disk),
        other => Err(invalid("kind", format!("{other:?} is not full or disk"))),
    }
}

pub fn snapshot_to_pb(s: &Snapshot) -> pb::Snapshot {
    let mut out = pb::Snapshot {
        domain: s.domain.clone(),
        name: s.name.clone(),
        parent: s.parent.clone().unwrap_or_default(),
        kind: if s.kind == SnapshotKind::Full { "full" } else { "disk" }.into(),
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
        phase: match m.phase {
            MigrationPhase::Preparing => "preparing",
            MigrationPhase::Transferring => "transferring",
            MigrationPhase::Completing => "completing",
            MigrationPhase::Committed => "committed",
            MigrationPhase::RolledBack => "rolled-back",
        }
        .into(),
        reason: m.reason.clone().unwrap_or_default(),
        started_ms: m.started_ms,
        ended_ms: m.ended_ms.unwrap_or(0),
        version: m.version,
    }
}

pub fn observed_phase(p: &str) -> Result<controlplane::model::ObservedPhase, Status> {
    use controlplane::model::ObservedPhase as O;
    Ok(match p {
        "starting" => O::Starting,
        "running" => O::Running,
        "paused" => O::Paused,
        "shutting-down" => O::ShuttingDown,
        "stopped" => O::Stopped,
        "crashed" => O::Crashed,
        "failed" => O::Failed,
        other => return Err(invalid("phase", format!("{other:?} is not an observed phase"))),
    })
}
