//! Conversions between the public protobuf messages and the core's model. Conversions
//! into the model validate shape (a missing field, a bad MAC) and answer
//! `InvalidArgument`; everything else is `decide`'s to judge.

use controlplane::model::{
    Boot, DesiredState, Disk, Domain, DomainSpec, HaPolicy, Host, HostState, Mac, Nic, Phase, Placement,
    Resources, StopMode, VolumeRef,
};
use controlplane::EventEnvelope;
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

pub fn host_to_pb(h: &Host) -> pb::Host {
    let res = |r: Resources| Some(pb::Resources { vcpus: r.vcpus, memory_mib: r.memory_mib });
    pb::Host {
        name: h.name.clone(),
        address: h.address.clone(),
        capacity: res(h.capacity),
        allocated: res(h.allocated),
        labels: h.labels.clone().into_iter().collect(),
        state: h.state.as_str().into(),
        domains: h.domains.iter().cloned().collect(),
        registered_ms: h.registered_ms,
        version: h.version,
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
