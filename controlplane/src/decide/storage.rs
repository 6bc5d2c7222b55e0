//! Storage pool and volume commands.

use super::Draft;
use crate::event::Event;
use crate::limits::{POOL_CAPACITY_MIB_MAX, VOLUME_CAPACITY_MIB_MAX};
use crate::model::{PoolConfig, ResourceKey, ResourceKind, VolumeFormat, VolumeRef};
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

pub(super) fn create_volume(
    d: &mut Draft<'_>,
    volume: &VolumeRef,
    format: VolumeFormat,
    capacity_mib: u64,
    backing: Option<&str>,
) -> Result<(), Rejection> {
    validate::name("volume.pool", &volume.pool)?;
    validate::name("volume.name", &volume.name)?;
    validate::range("capacity_mib", capacity_mib, 1, VOLUME_CAPACITY_MIB_MAX)?;
    d.pool(&volume.pool)?;
    d.absent(ResourceKey::Volume(volume.clone()), volume)?;
    if let Some(backing) = backing {
        validate::name("backing", backing)?;
        if format != VolumeFormat::Qcow2 {
            return Err(Rejection::invalid("format", "a clone is a qcow2 volume"));
        }
        let base = d.volume(&VolumeRef::new(&volume.pool, backing))?;
        if capacity_mib < base.capacity_mib {
            return Err(Rejection::invalid(
                "capacity_mib",
                format!("a clone is at least as large as its backing volume ({} MiB)", base.capacity_mib),
            ));
        }
    }
    pool_room(d, &volume.pool, capacity_mib)?;
    d.emit(Event::VolumeCreated {
        volume: volume.clone(),
        format,
        capacity_mib,
        backing: backing.map(str::to_owned),
    });
    Ok(())
}

pub(super) fn delete_volume(d: &mut Draft<'_>, id: &VolumeRef) -> Result<(), Rejection> {
    let volume = d.volume(id)?;
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
    d.emit(Event::VolumeDeleted { volume: id.clone() });
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
    if capacity_mib == volume.capacity_mib {
        return Ok(());
    }
    for holder in volume.attachments.keys() {
        let domain = d.domain(holder)?;
        if domain.is_placed() {
            return Err(Rejection::precondition(
                ResourceKind::Volume,
                id,
                format!("is attached to active domain {holder}; resize it while the domain is stopped"),
            ));
        }
    }
    pool_room(d, &id.pool, capacity_mib - volume.capacity_mib)?;
    d.emit(Event::VolumeResized { volume: id.clone(), capacity_mib });
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
