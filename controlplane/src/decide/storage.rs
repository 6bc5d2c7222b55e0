//! Storage pool and volume commands.

use super::Draft;
use crate::command::VolumeOutcome;
use crate::event::Event;
use crate::limits::{EVENTS_PER_PROPOSAL_MAX, REASON_LEN_MAX};
use crate::limits::{POOL_CAPACITY_MIB_MAX, VOLUME_CAPACITY_MIB_MAX};
use crate::model::{
    HostState, PoolConfig, ResourceKey, ResourceKind, Volume, VolumeFormat, VolumeOp, VolumeRef, VolumeState,
};
use crate::rejection::Rejection;
use crate::validate;

pub(super) fn create_pool(d: &mut Draft<'_>, name: &str, config: &PoolConfig) -> Result<(), Rejection> {
    validate::name("name", name)?;
    validate::path("config.path", &config.path)?;
    validate::range("config.capacity_mib", config.capacity_mib, 1, POOL_CAPACITY_MIB_MAX)?;
    d.absent(ResourceKey::Pool(name.to_owned()), name)?;
    if let Some(other) = d.state.pools().values().find(|p| p.config.path == config.path) {
        return Err(Rejection::precondition(
            ResourceKind::Pool,
            name,
            format!("path {} is already pool {}", config.path, other.name),
        ));
    }
    d.emit(Event::PoolCreated { name: name.to_owned(), config: config.clone() });
    Ok(())
}

pub(super) fn delete_pool(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    let pool = d.pool(name)?;
    if pool.volumes > 0 {
        return Err(Rejection::precondition(
            ResourceKind::Pool,
            name,
            format!("still holds {} volumes; delete them first", pool.volumes),
        ));
    }
    d.emit(Event::PoolDeleted { name: name.to_owned() });
    Ok(())
}

fn pool_room(d: &mut Draft<'_>, pool: &str, extra_mib: u64) -> Result<(), Rejection> {
    let pool = d.pool(pool)?;
    let free = pool.config.capacity_mib - pool.allocated_mib;
    if extra_mib > free {
        return Err(Rejection::exhausted(
            ResourceKind::Pool,
            &pool.name,
            format!("needs {extra_mib} MiB, {free} MiB free"),
        ));
    }
    Ok(())
}

/// The host that carries out an operation on a volume's file: the host holding it (a
/// volume of a local pool, `bound`), else a ready host other than `avoid` picked by a
/// hash of the volume's name (any host sees a shared pool's files). Guards the host it
/// picks.
pub(super) fn volume_host(
    d: &mut Draft<'_>,
    volume: &VolumeRef,
    bound: Option<&str>,
    avoid: Option<&str>,
) -> Result<String, Rejection> {
    if let Some(name) = bound {
        let host = d.host(name)?;
        if host.state != HostState::Ready {
            return Err(Rejection::precondition(
                ResourceKind::Volume,
                volume,
                format!("its file is on host {name}, which is {}", host.state),
            ));
        }
        return Ok(name.to_owned());
    }
    let ready: Vec<&str> = d
        .state
        .hosts()
        .values()
        .filter(|h| h.state == HostState::Ready && !d.state.is_flapping(&h.name))
        .filter(|h| Some(h.name.as_str()) != avoid)
        .map(|h| h.name.as_str())
        .collect();
    if ready.is_empty() {
        return Err(Rejection::precondition(
            ResourceKind::Volume,
            volume,
            "no ready host to make its file; start a host first",
        ));
    }
    let key = format!("{volume}");
    let pick = ready[(fnv64(&key) % ready.len() as u64) as usize].to_owned();
    d.host(&pick)?;
    Ok(pick)
}

/// Host `host` was fenced and carries out nothing more: each operation on a shared
/// pool's volume still asked of it is asked of another ready host instead, as
/// many as one proposal carries (the HA controller fences again for the rest). Every
/// operation is idempotent on the file (a file already made as asked, grown, or gone is
/// taken as done), and `host` commits none once its lease has passed, so the second host
/// finishes what the first may have begun. With no other ready host they stay asked of
/// `host`, and an operation on a local pool's volume always does: the file is on its
/// disk, and it carries the operation out once it is back.
pub(super) fn reassign_volume_ops(d: &mut Draft<'_>, host: &str) {
    let state = d.state;
    for v in state.volumes_asked_of(host).filter(|v| v.host.is_none()) {
        if d.events.len() + 1 > EVENTS_PER_PROPOSAL_MAX {
            break;
        }
        let Ok(to) = volume_host(d, &v.id, None, Some(host)) else { break };
        d.guard(ResourceKey::Volume(v.id.clone()));
        d.emit(Event::VolumeReassigned { volume: v.id.clone(), host: to });
    }
}

/// Fenced host `host` leaves with operations on its local pools' volumes still asked of
/// it: no host will carry them out. A create or resize fails (the volume stays as it was,
/// or failed with no file); a delete completes, as the file went with the host's disk.
pub(super) fn abandon_volume_ops(d: &mut Draft<'_>, host: &str) {
    let state = d.state;
    for v in state.volumes_asked_of(host) {
        let VolumeState::Pending { op, .. } = &v.state else { continue };
        d.guard(ResourceKey::Volume(v.id.clone()));
        d.guard(ResourceKey::Pool(v.id.pool.clone()));
        if let Some(b) = v.backing.as_ref().filter(|_| *op == VolumeOp::Delete) {
            d.guard(ResourceKey::Volume(VolumeRef::new(&v.id.pool, b)));
        }
        d.emit(match op {
            VolumeOp::Delete => Event::VolumeDeleted { volume: v.id.clone() },
            _ => Event::VolumeFailed {
                volume: v.id.clone(),
                reason: format!("host {host} left before it carried out the {}", op.name()),
            },
        });
    }
}

/// FNV-1a: a stable, platform-independent hash.
fn fnv64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Refuse an operation on a volume some host is still working on.
fn not_busy(volume: &Volume, what: &str) -> Result<(), Rejection> {
    match &volume.state {
        VolumeState::Pending { op, host, .. } => Err(Rejection::precondition(
            ResourceKind::Volume,
            &volume.id,
            format!("cannot {what} while host {host} carries out its {}", op.name()),
        )),
        _ => Ok(()),
    }
}

/// A volume to create.
pub(super) struct NewVolume<'a> {
    pub volume: &'a VolumeRef,
    pub format: VolumeFormat,
    pub capacity_mib: u64,
    pub backing: Option<&'a str>,
    pub preallocate: bool,
    pub import: Option<&'a str>,
}

pub(super) fn create_volume(d: &mut Draft<'_>, new: NewVolume<'_>) -> Result<(), Rejection> {
    let NewVolume { volume, format, capacity_mib, backing, preallocate, import } = new;
    validate::name("volume.pool", &volume.pool)?;
    validate::name("volume.name", &volume.name)?;
    validate::range("capacity_mib", capacity_mib, 1, VOLUME_CAPACITY_MIB_MAX)?;
    d.pool(&volume.pool)?;
    d.absent(ResourceKey::Volume(volume.clone()), volume)?;
    if preallocate && format != VolumeFormat::Raw {
        return Err(Rejection::invalid("preallocate", "only a raw volume is preallocated"));
    }
    if let Some(path) = import {
        validate::path("import", path)?;
        if backing.is_some() {
            return Err(Rejection::invalid("import", "a volume is either imported or a clone, not both"));
        }
    }
    let mut bound = None;
    if let Some(backing) = backing {
        validate::name("backing", backing)?;
        if format != VolumeFormat::Qcow2 {
            return Err(Rejection::invalid("format", "a clone is a qcow2 volume"));
        }
        let base = d.volume(&VolumeRef::new(&volume.pool, backing))?;
        if !base.usable() {
            return Err(Rejection::precondition(
                ResourceKind::Volume,
                &base.id,
                format!("cannot be cloned while {}", base.state.name()),
            ));
        }
        if capacity_mib < base.capacity_mib {
            return Err(Rejection::invalid(
                "capacity_mib",
                format!("a clone is at least as large as its backing volume ({} MiB)", base.capacity_mib),
            ));
        }
        // An overlay lives beside its backing file.
        bound = base.host.as_deref();
    }
    pool_room(d, &volume.pool, capacity_mib)?;
    let host = volume_host(d, volume, bound, None)?;
    d.emit(Event::VolumeRequested {
        volume: volume.clone(),
        format,
        capacity_mib,
        backing: backing.map(str::to_owned),
        preallocate,
        import: import.map(str::to_owned),
        host,
    });
    Ok(())
}

pub(super) fn delete_volume(d: &mut Draft<'_>, id: &VolumeRef) -> Result<(), Rejection> {
    let volume = d.volume(id)?;
    not_busy(volume, "delete it")?;
    if let Some(domain) = volume.attachments.keys().next() {
        return Err(Rejection::precondition(
            ResourceKind::Volume,
            id,
            format!("is attached to domain {domain}"),
        ));
    }
    if volume.clones > 0 {
        return Err(Rejection::precondition(
            ResourceKind::Volume,
            id,
            format!("is the backing volume of {} clones", volume.clones),
        ));
    }
    d.guard(ResourceKey::Pool(id.pool.clone()));
    if let Some(b) = &volume.backing {
        d.guard(ResourceKey::Volume(VolumeRef::new(&id.pool, b)));
    }
    match volume.state {
        // No file was made for it: the record goes at once.
        VolumeState::Failed { .. } | VolumeState::RecordOnly => {
            d.emit(Event::VolumeDeleted { volume: id.clone() })
        }
        _ => {
            let host = volume_host(d, id, volume.host.as_deref(), None)?;
            d.emit(Event::VolumeDeleteRequested { volume: id.clone(), host });
        }
    }
    Ok(())
}

pub(super) fn resize_volume(d: &mut Draft<'_>, id: &VolumeRef, capacity_mib: u64) -> Result<(), Rejection> {
    let volume = d.volume(id)?;
    validate::range("capacity_mib", capacity_mib, 1, VOLUME_CAPACITY_MIB_MAX)?;
    if capacity_mib < volume.capacity_mib {
        return Err(Rejection::invalid(
            "capacity_mib",
            format!("volumes only grow: {capacity_mib} MiB is below {} MiB", volume.capacity_mib),
        ));
    }
    not_busy(volume, "resize it")?;
    if capacity_mib == volume.capacity_mib {
        return Ok(());
    }
    if volume.state != VolumeState::Ready {
        return Err(Rejection::precondition(
            ResourceKind::Volume,
            id,
            format!("has no file to grow ({})", volume.state.name()),
        ));
    }
    for holder in volume.attachments.keys() {
        let domain = d.domain(holder)?;
        if let Some(s) = d
            .state
            .snapshots_of(holder)
            .find(|s| matches!(s.state, crate::model::SnapshotState::Pending { .. }))
        {
            return Err(Rejection::precondition(
                ResourceKind::Volume,
                id,
                format!("is being imaged for snapshot {holder}/{}; resize it once that is taken", s.name),
            ));
        }
        if domain.is_placed() {
            return Err(Rejection::precondition(
                ResourceKind::Volume,
                id,
                format!("is attached to active domain {holder}; resize it while the domain is stopped"),
            ));
        }
    }
    pool_room(d, &id.pool, capacity_mib - volume.capacity_mib)?;
    let host = volume_host(d, id, volume.host.as_deref(), None)?;
    d.emit(Event::VolumeResizeRequested { volume: id.clone(), capacity_mib, host });
    Ok(())
}

/// A host reports how the operation `id` on `volume`, asked of it, went.
pub(super) fn report_volume(
    d: &mut Draft<'_>,
    id: &VolumeRef,
    host: &str,
    op_id: u64,
    outcome: &VolumeOutcome,
) -> Result<(), Rejection> {
    validate::name("host", host)?;
    let volume = d.volume(id)?;
    let pending = match &volume.state {
        VolumeState::Pending { op, host: asked, id } if asked == host && *id == op_id => op,
        other => {
            return Err(Rejection::precondition(
                ResourceKind::Volume,
                id,
                format!("has no operation {op_id} pending on host {host} (it is {})", other.name()),
            ))
        }
    };
    match outcome {
        VolumeOutcome::Done { allocation_mib } => {
            validate::range("allocation_mib", *allocation_mib, 0, VOLUME_CAPACITY_MIB_MAX)?;
            match pending {
                VolumeOp::Delete => {
                    d.guard(ResourceKey::Pool(id.pool.clone()));
                    if let Some(b) = &volume.backing {
                        d.guard(ResourceKey::Volume(VolumeRef::new(&id.pool, b)));
                    }
                    d.emit(Event::VolumeDeleted { volume: id.clone() });
                }
                VolumeOp::Create { .. } | VolumeOp::Resize { .. } => {
                    d.emit(Event::VolumeReady { volume: id.clone(), allocation_mib: *allocation_mib })
                }
            }
        }
        VolumeOutcome::Failed { reason } => {
            validate::text("reason", reason, 1, REASON_LEN_MAX)?;
            if matches!(pending, VolumeOp::Resize { .. }) {
                d.guard(ResourceKey::Pool(id.pool.clone()));
            }
            d.emit(Event::VolumeFailed { volume: id.clone(), reason: reason.clone() });
        }
    }
    Ok(())
}

pub(super) fn report_allocation(
    d: &mut Draft<'_>,
    id: &VolumeRef,
    allocation_mib: u64,
) -> Result<(), Rejection> {
    let volume = d.volume(id)?;
    validate::range("allocation_mib", allocation_mib, 0, VOLUME_CAPACITY_MIB_MAX)?;
    if volume.allocation_mib != allocation_mib {
        d.emit(Event::VolumeAllocationObserved { volume: id.clone(), allocation_mib });
    }
    Ok(())
}
