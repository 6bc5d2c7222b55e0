//! Snapshot commands.

use super::Draft;
use crate::event::Event;
use crate::limits::SNAPSHOTS_PER_DOMAIN_MAX;
use crate::model::{Phase, ResourceKey, ResourceKind, SnapshotKind, VolumeFormat};
use crate::rejection::Rejection;
use crate::validate;

pub(super) fn create(
    d: &mut Draft<'_>,
    domain_name: &str,
    name: &str,
    kind: SnapshotKind,
) -> Result<(), Rejection> {
    validate::name("name", name)?;
    let domain = d.domain(domain_name)?;
    let key = ResourceKey::Snapshot { domain: domain_name.to_owned(), name: name.to_owned() };
    d.absent(key, format!("{domain_name}/{name}"))?;
    if d.state.snapshots_of(domain_name).count() >= SNAPSHOTS_PER_DOMAIN_MAX {
        return Err(Rejection::exhausted(
            ResourceKind::Domain,
            domain_name,
            format!("already has {SNAPSHOTS_PER_DOMAIN_MAX} snapshots"),
        ));
    }
    if let Some(id) = domain.migration {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            domain_name,
            format!("is migrating (migration {id})"),
        ));
    }
    match kind {
        SnapshotKind::Full => {
            let live = domain.is_placed() && matches!(domain.status.phase, Phase::Running | Phase::Paused);
            if !live {
                return Err(Rejection::precondition(
                    ResourceKind::Domain,
                    domain_name,
                    "a full snapshot needs a running or paused domain",
                ));
            }
        }
        SnapshotKind::Disk => {
            if domain.spec.disks.is_empty() {
                return Err(Rejection::precondition(
                    ResourceKind::Domain,
                    domain_name,
                    "has no disks to snapshot",
                ));
            }
            for disk in domain.spec.disks.iter().filter(|disk| !disk.read_only) {
                let volume = d.volume(&disk.volume)?;
                if volume.format != VolumeFormat::Qcow2 {
                    return Err(Rejection::precondition(
                        ResourceKind::Volume,
                        &disk.volume,
                        "is raw; disk snapshots need qcow2",
                    ));
                }
            }
        }
    }
    d.emit(Event::SnapshotCreated {
        domain: domain_name.to_owned(),
        name: name.to_owned(),
        parent: domain.current_snapshot.clone(),
        kind,
    });
    Ok(())
}

fn snapshot_guarded<'s>(
    d: &mut Draft<'s>,
    domain: &str,
    name: &str,
) -> Result<&'s crate::model::Snapshot, Rejection> {
    validate::name("name", name)?;
    d.domain(domain)?;
    let snapshot = d
        .state
        .snapshot(domain, name)
        .ok_or_else(|| Rejection::not_found(ResourceKind::Snapshot, format!("{domain}/{name}")))?;
    d.guard(ResourceKey::Snapshot { domain: domain.to_owned(), name: name.to_owned() });
    Ok(snapshot)
}

pub(super) fn delete(d: &mut Draft<'_>, domain: &str, name: &str) -> Result<(), Rejection> {
    let snapshot = snapshot_guarded(d, domain, name)?;
    let children: Vec<String> = d
        .state
        .snapshots_of(domain)
        .filter(|s| s.parent.as_deref() == Some(name))
        .map(|s| s.name.clone())
        .collect();
    for child in children {
        d.guard(ResourceKey::Snapshot { domain: domain.to_owned(), name: child.clone() });
        d.emit(Event::SnapshotReparented {
            domain: domain.to_owned(),
            name: child,
            parent: snapshot.parent.clone(),
        });
    }
    d.emit(Event::SnapshotDeleted { domain: domain.to_owned(), name: name.to_owned() });
    Ok(())
}

pub(super) fn revert(d: &mut Draft<'_>, domain: &str, name: &str) -> Result<(), Rejection> {
    snapshot_guarded(d, domain, name)?;
    let dom = d.domain(domain)?;
    if dom.is_placed() {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            domain,
            "is active; stop it before reverting",
        ));
    }
    d.emit(Event::SnapshotReverted { domain: domain.to_owned(), name: name.to_owned() });
    Ok(())
}
