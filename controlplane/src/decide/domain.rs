//! Domain commands: definition, life cycle, disks and host observations.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use super::Draft;
use crate::event::Event;
use crate::limits::{
    CMDLINE_LEN_MAX, DISKS_PER_DOMAIN_MAX, DOMAIN_MEMORY_MIB_MAX, DOMAIN_MEMORY_MIB_MIN, DOMAIN_VCPUS_MAX,
    HA_PRIORITY_MAX, NICS_PER_DOMAIN_MAX, REASON_LEN_MAX,
};
use crate::model::{
    AttachMode, Boot, DesiredState, Disk, Domain, DomainSpec, HaPolicy, Mac, ObservedPhase, Phase,
    ResourceKey, ResourceKind, SnapshotState, StopMode, Volume, VolumeOp, VolumeRef, VolumeState,
};
use crate::rejection::Rejection;
use crate::scheduler;
use crate::validate;

/// Shape checks on a spec that need no state.
fn validate_spec(spec: &DomainSpec) -> Result<(), Rejection> {
    validate::range("spec.vcpus", spec.vcpus, 1, DOMAIN_VCPUS_MAX)?;
    validate::range("spec.memory_mib", spec.memory_mib, DOMAIN_MEMORY_MIB_MIN, DOMAIN_MEMORY_MIB_MAX)?;
    match &spec.boot {
        Boot::Kernel { kernel, initrd, cmdline } => {
            validate::path("spec.boot.kernel", kernel)?;
            if let Some(initrd) = initrd {
                validate::path("spec.boot.initrd", initrd)?;
            }
            validate::text("spec.boot.cmdline", cmdline, 0, CMDLINE_LEN_MAX)?;
        }
        Boot::Disk if spec.disks.is_empty() => {
            return Err(Rejection::invalid("spec.boot", "boots from disk but has no disks"));
        }
        Boot::Disk => {}
    }
    if spec.disks.len() > DISKS_PER_DOMAIN_MAX {
        return Err(Rejection::invalid(
            "spec.disks",
            format!("at most {DISKS_PER_DOMAIN_MAX}, got {}", spec.disks.len()),
        ));
    }
    let mut volumes = BTreeSet::new();
    for disk in &spec.disks {
        validate::name("spec.disks.volume.pool", &disk.volume.pool)?;
        validate::name("spec.disks.volume.name", &disk.volume.name)?;
        if !volumes.insert(&disk.volume) {
            return Err(Rejection::invalid("spec.disks", format!("volume {} is listed twice", disk.volume)));
        }
    }
    if spec.nics.len() > NICS_PER_DOMAIN_MAX {
        return Err(Rejection::invalid(
            "spec.nics",
            format!("at most {NICS_PER_DOMAIN_MAX}, got {}", spec.nics.len()),
        ));
    }
    let mut macs = BTreeSet::new();
    for nic in &spec.nics {
        validate::name("spec.nics.network", &nic.network)?;
        if let Some(mac) = nic.mac {
            if !mac.is_unicast() {
                return Err(Rejection::invalid("spec.nics.mac", format!("{mac} is not a unicast address")));
            }
            if !macs.insert(mac) {
                return Err(Rejection::invalid("spec.nics.mac", format!("{mac} is listed twice")));
            }
        }
    }
    if let HaPolicy::Restart { priority } = spec.ha {
        validate::range("spec.ha.priority", priority, 0, HA_PRIORITY_MAX)?;
    }
    validate::labels("spec.placement.required_labels", &spec.placement.required_labels)?;
    if let Some(group) = &spec.placement.anti_affinity_group {
        validate::name("spec.placement.anti_affinity_group", group)?;
    }
    Ok(())
}

/// Whether `domain` may attach `volume` in `mode`: a read-write attachment is exclusive.
fn check_attachable(volume: &Volume, domain: &str, read_only: bool) -> Result<(), Rejection> {
    if matches!(volume.state, VolumeState::Failed { .. } | VolumeState::Pending { op: VolumeOp::Delete, .. })
    {
        return Err(Rejection::precondition(
            ResourceKind::Volume,
            &volume.id,
            format!("is {}; it cannot be attached", volume.state.name()),
        ));
    }
    if volume.attachments.contains_key(domain) {
        return Err(Rejection::precondition(
            ResourceKind::Volume,
            &volume.id,
            format!("is already attached to domain {domain}"),
        ));
    }
    if let Some((holder, _)) = volume.attachments.iter().find(|(_, m)| **m == AttachMode::ReadWrite) {
        return Err(Rejection::precondition(
            ResourceKind::Volume,
            &volume.id,
            format!("is attached read-write to domain {holder}"),
        ));
    }
    if !read_only {
        if let Some(holder) = volume.attachments.keys().next() {
            return Err(Rejection::precondition(
                ResourceKind::Volume,
                &volume.id,
                format!("is attached to domain {holder}; a read-write attachment must be exclusive"),
            ));
        }
    }
    Ok(())
}

/// A MAC for NIC `index` of domain `name`: the QEMU prefix and three bytes of a hash, so the
/// same definition gets the same address on every replica.
fn generated_mac(name: &str, index: usize, attempt: u32) -> Mac {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update((index as u64).to_le_bytes())
        .chain_update(attempt.to_le_bytes())
        .finalize();
    let p = Mac::GENERATED_PREFIX;
    Mac([p[0], p[1], p[2], digest[0], digest[1], digest[2]])
}

pub(super) fn define(d: &mut Draft<'_>, name: &str, spec: &DomainSpec) -> Result<(), Rejection> {
    define_with(d, name, spec)
}

/// Define `name`; the events are emitted into `d`.
pub(super) fn define_with(d: &mut Draft<'_>, name: &str, spec: &DomainSpec) -> Result<(), Rejection> {
    validate::name("name", name)?;
    validate_spec(spec)?;
    d.absent(ResourceKey::Domain(name.to_owned()), name)?;
    for disk in &spec.disks {
        let volume = d.volume(&disk.volume)?;
        check_attachable(volume, name, disk.read_only)?;
    }
    let mut spec = spec.clone();
    let mut leases = Vec::new();
    // Addresses and MACs taken by earlier NICs of this same definition, per network.
    let mut taken_ips: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    let mut taken_macs: BTreeSet<Mac> = spec.nics.iter().filter_map(|n| n.mac).collect();
    for (index, nic) in spec.nics.iter_mut().enumerate() {
        let network = d.network(&nic.network)?;
        let mac = match nic.mac {
            Some(mac) => {
                if let Some(lease) = network.leases.get(&mac) {
                    return Err(Rejection::precondition(
                        ResourceKind::Network,
                        &network.name,
                        format!("MAC {mac} is in use by domain {}", lease.domain),
                    ));
                }
                mac
            }
            None => {
                let free = (0..64u32)
                    .map(|attempt| generated_mac(name, index, attempt))
                    .find(|m| !network.leases.contains_key(m) && !taken_macs.contains(m));
                let mac = free.ok_or_else(|| {
                    Rejection::exhausted(
                        ResourceKind::Network,
                        &network.name,
                        "no free generated MAC; give one",
                    )
                })?;
                taken_macs.insert(mac);
                mac
            }
        };
        nic.mac = Some(mac);
        let ip = if network.config.cidr.is_some() {
            let taken = taken_ips.entry(network.name.as_str()).or_default();
            let ip = network.next_free_ip(taken).ok_or_else(|| {
                Rejection::exhausted(ResourceKind::Network, &network.name, "no free address left in its CIDR")
            })?;
            taken.push(ip);
            Some(ip)
        } else {
            None
        };
        leases.push(Event::IpAllocated { network: network.name.clone(), mac, ip, domain: name.to_owned() });
    }
    let attachments: Vec<Event> = spec
        .disks
        .iter()
        .map(|disk| Event::VolumeAttached {
            volume: disk.volume.clone(),
            domain: name.to_owned(),
            read_only: disk.read_only,
        })
        .collect();
    d.emit(Event::DomainDefined { name: name.to_owned(), spec: std::sync::Arc::new(spec) });
    attachments.into_iter().for_each(|e| d.emit(e));
    leases.into_iter().for_each(|e| d.emit(e));
    Ok(())
}

pub(super) fn undefine(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    let domain = d.domain(name)?;
    if domain.is_placed() {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            name,
            "is active; shut it down or destroy it first",
        ));
    }
    let snapshots = d.state.snapshots_of(name).count();
    if snapshots > 0 {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            name,
            format!("has {snapshots} snapshots; delete them first"),
        ));
    }
    for disk in &domain.spec.disks {
        d.guard(ResourceKey::Volume(disk.volume.clone()));
        d.emit(Event::VolumeDetached { volume: disk.volume.clone(), domain: name.to_owned() });
    }
    for nic in &domain.spec.nics {
        d.guard(ResourceKey::Network(nic.network.clone()));
        let mac = nic.mac.expect("NICs in the state have MACs");
        d.emit(Event::IpReleased { network: nic.network.clone(), mac });
    }
    d.emit(Event::DomainUndefined { name: name.to_owned() });
    Ok(())
}

fn not_while_migrating(domain: &Domain) -> Result<(), Rejection> {
    match domain.migration {
        Some(id) => Err(Rejection::precondition(
            ResourceKind::Domain,
            &domain.name,
            format!("is migrating (migration {id}); wait for it or abort it"),
        )),
        None => Ok(()),
    }
}

fn must_be_active(domain: &Domain) -> Result<(), Rejection> {
    if !domain.is_placed() {
        return Err(Rejection::precondition(ResourceKind::Domain, &domain.name, "is not running"));
    }
    if domain.desired == DesiredState::Stopped {
        let what = if domain.stop_mode == StopMode::Force { "being destroyed" } else { "shutting down" };
        return Err(Rejection::precondition(ResourceKind::Domain, &domain.name, format!("is {what}")));
    }
    Ok(())
}

pub(super) fn start(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    let domain = d.domain(name)?;
    not_while_migrating(domain)?;
    if domain.is_placed() {
        let reason = match domain.desired {
            DesiredState::Running => "is already running",
            DesiredState::Paused => "is paused; resume it",
            DesiredState::Stopped => "is still stopping; start it once it has stopped",
        };
        return Err(Rejection::precondition(ResourceKind::Domain, name, reason));
    }
    disks_ready(d, domain)?;
    let host = scheduler::place(d.state, name, &domain.spec)
        .map_err(|why| Rejection::exhausted(ResourceKind::Domain, name, why.to_string()))?;
    d.fit(&host, name);
    d.emit(Event::DomainStartRequested { name: name.to_owned() });
    d.emit(Event::DomainScheduled { name: name.to_owned(), host, generation: domain.status.generation + 1 });
    if matches!(domain.spec.ha, HaPolicy::Restart { .. }) {
        d.guard(ResourceKey::Cluster);
        super::ha::admit(d, name)?;
    }
    Ok(())
}

/// A run of `domain` may begin only on disks whose files are made and not changing
/// (guarded: a resize or delete asked meanwhile voids the proposal).
/// Refuse to `what` while a host images the domain's disks (a snapshot pending while the
/// domain is not placed is a disk snapshot).
fn not_while_imaged(d: &Draft<'_>, domain: &Domain, what: &str) -> Result<(), Rejection> {
    match d.state.snapshots_of(&domain.name).find(|s| matches!(s.state, SnapshotState::Pending { .. })) {
        Some(s) if !domain.is_placed() => Err(Rejection::precondition(
            ResourceKind::Domain,
            &domain.name,
            format!("its disk snapshot {} is being taken; {what} once that is done", s.name),
        )),
        _ => Ok(()),
    }
}

pub(super) fn disks_ready(d: &mut Draft<'_>, domain: &Domain) -> Result<(), Rejection> {
    not_while_imaged(d, domain, "it runs")?;
    for disk in &domain.spec.disks {
        let volume = d.volume(&disk.volume)?;
        if !volume.usable() {
            return Err(Rejection::precondition(
                ResourceKind::Volume,
                &disk.volume,
                format!("is {}; the domain runs once its file is ready", volume.state.name()),
            ));
        }
    }
    Ok(())
}

pub(super) fn shutdown(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    let domain = d.domain(name)?;
    not_while_migrating(domain)?;
    if !domain.is_placed() {
        return Err(Rejection::precondition(ResourceKind::Domain, name, "is not running"));
    }
    if domain.desired == DesiredState::Stopped && domain.stop_mode == StopMode::Force {
        return Err(Rejection::precondition(ResourceKind::Domain, name, "is being destroyed"));
    }
    // Asking again while it shuts down presses the power button again, as virsh does.
    d.emit(Event::DomainShutdownRequested { name: name.to_owned() });
    Ok(())
}

pub(super) fn destroy(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    let domain = d.domain(name)?;
    if !domain.is_placed() {
        return Err(Rejection::precondition(ResourceKind::Domain, name, "is not running"));
    }
    if domain.desired == DesiredState::Stopped && domain.stop_mode == StopMode::Force {
        return Ok(());
    }
    if let Some(id) = domain.migration {
        d.guard(ResourceKey::Migration(id));
        d.emit(Event::MigrationRolledBack { id, reason: "domain destroyed".to_owned() });
    }
    d.emit(Event::DomainDestroyRequested { name: name.to_owned() });
    Ok(())
}

pub(super) fn reboot(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    let domain = d.domain(name)?;
    not_while_migrating(domain)?;
    must_be_active(domain)?;
    if domain.desired == DesiredState::Paused {
        return Err(Rejection::precondition(ResourceKind::Domain, name, "is paused; resume it first"));
    }
    d.emit(Event::DomainRebootRequested { name: name.to_owned() });
    Ok(())
}

pub(super) fn suspend(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    let domain = d.domain(name)?;
    not_while_migrating(domain)?;
    must_be_active(domain)?;
    if domain.desired == DesiredState::Paused {
        return Err(Rejection::precondition(ResourceKind::Domain, name, "is already paused"));
    }
    d.emit(Event::DomainSuspendRequested { name: name.to_owned() });
    Ok(())
}

pub(super) fn resume(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    let domain = d.domain(name)?;
    not_while_migrating(domain)?;
    if domain.desired != DesiredState::Paused || !domain.is_placed() {
        return Err(Rejection::precondition(ResourceKind::Domain, name, "is not paused"));
    }
    d.emit(Event::DomainResumeRequested { name: name.to_owned() });
    Ok(())
}

fn must_be_offline(domain: &Domain, what: &str) -> Result<(), Rejection> {
    if domain.is_placed() {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            &domain.name,
            format!("is active; {what} while it is stopped"),
        ));
    }
    Ok(())
}

pub(super) fn attach_disk(d: &mut Draft<'_>, name: &str, disk: &Disk) -> Result<(), Rejection> {
    let domain = d.domain(name)?;
    must_be_offline(domain, "attach disks")?;
    not_while_imaged(d, domain, "attach disks")?;
    if domain.spec.disks.len() >= DISKS_PER_DOMAIN_MAX {
        return Err(Rejection::exhausted(
            ResourceKind::Domain,
            name,
            format!("already has {DISKS_PER_DOMAIN_MAX} disks"),
        ));
    }
    let volume = d.volume(&disk.volume)?;
    check_attachable(volume, name, disk.read_only)?;
    d.emit(Event::DomainDiskAdded { name: name.to_owned(), disk: disk.clone() });
    d.emit(Event::VolumeAttached {
        volume: disk.volume.clone(),
        domain: name.to_owned(),
        read_only: disk.read_only,
    });
    Ok(())
}

pub(super) fn detach_disk(d: &mut Draft<'_>, name: &str, volume: &VolumeRef) -> Result<(), Rejection> {
    let domain = d.domain(name)?;
    validate::name("volume.pool", &volume.pool)?;
    validate::name("volume.name", &volume.name)?;
    must_be_offline(domain, "detach disks")?;
    not_while_imaged(d, domain, "detach disks")?;
    if !domain.spec.disks.iter().any(|disk| &disk.volume == volume) {
        return Err(Rejection::not_found(ResourceKind::Volume, format!("{volume} on domain {name}")));
    }
    if domain.spec.boot == Boot::Disk && domain.spec.disks.len() == 1 {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            name,
            "boots from disk; its only disk stays",
        ));
    }
    d.guard(ResourceKey::Volume(volume.clone()));
    d.emit(Event::DomainDiskRemoved { name: name.to_owned(), volume: volume.clone() });
    d.emit(Event::VolumeDetached { volume: volume.clone(), domain: name.to_owned() });
    Ok(())
}

pub(super) fn report_observation(
    d: &mut Draft<'_>,
    name: &str,
    host: &str,
    generation: u64,
    phase: ObservedPhase,
    reason: Option<&str>,
) -> Result<(), Rejection> {
    if let Some(reason) = reason {
        validate::text("reason", reason, 0, REASON_LEN_MAX)?;
    }
    d.host(host)?;
    let domain = d.domain(name)?;
    let current = (domain.status.host.as_deref(), domain.status.generation);
    if current != (Some(host), generation) {
        let now = match current {
            (Some(h), g) => format!("run {g} belongs to host {h}"),
            (None, g) => format!("run {g} has ended"),
        };
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            name,
            format!("stale report from host {host} for run {generation}: {now}"),
        ));
    }
    let unchanged = Phase::from(phase) == domain.status.phase && domain.status.reason.as_deref() == reason;
    if unchanged {
        return Ok(());
    }
    d.emit(Event::DomainObserved {
        name: name.to_owned(),
        generation,
        phase,
        reason: reason.map(str::to_owned),
    });
    if let Some(snapshot) = &domain.restore_from {
        if matches!(phase, ObservedPhase::Running | ObservedPhase::Paused) {
            d.emit(Event::SnapshotRestored {
                domain: name.to_owned(),
                source: snapshot.domain.clone(),
                name: snapshot.name.clone(),
                generation,
            });
        }
    }
    if phase.is_terminal() {
        super::snapshot::fail_pending(d, name, generation, "the run ended before the snapshot was taken");
        if let Some(id) = domain.migration {
            d.guard(ResourceKey::Migration(id));
            d.emit(Event::MigrationRolledBack { id, reason: format!("source VM {phase:?}") });
        }
        // A guest that powered itself off, or could not start, stays off. A crash of an HA
        // domain leaves it wanting to run, for the HA controller to restart.
        let restart = phase == ObservedPhase::Crashed
            && domain.desired != DesiredState::Stopped
            && matches!(domain.spec.ha, HaPolicy::Restart { .. });
        let desired = if restart { DesiredState::Running } else { DesiredState::Stopped };
        d.emit(Event::DomainReleased { name: name.to_owned(), generation, desired });
    }
    Ok(())
}
