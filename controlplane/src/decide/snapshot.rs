//! Snapshot commands.

//!
//! A snapshot is a saga with one step on a host: `create` asks a host (`SnapshotRequested`),
//! the host writes the file and reports (`report`: `SnapshotTaken` or `SnapshotFailed`).
//! A full snapshot (memory, devices and writable disks) is of a running or paused domain
//! and asked of the host running it; a disk snapshot (the writable disks' images) is of a
//! stopped domain and asked of a host that sees its disks' files (`disk_snapshot_host`),
//! and the domain cannot start until it is taken. A revert marks the domain to start from
//! the snapshot (`SnapshotRevertRequested`, a new run at once if it is running); the host
//! that restores it (a disk snapshot: writes the images back, then boots afresh) says so
//! with its observation (`SnapshotRestored`).

use super::Draft;
use crate::command::SnapshotOutcome;
use crate::event::Event;
use crate::limits::{REASON_LEN_MAX, SNAPSHOTS_PER_DOMAIN_MAX};
use crate::model::{
    Disk, HostState, Phase, ResourceKey, ResourceKind, SnapshotKind, SnapshotState, VolumeRef,
};
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
    if let Some(pending) =
        d.state.snapshots_of(domain_name).find(|s| matches!(s.state, SnapshotState::Pending { .. }))
    {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            domain_name,
            format!("snapshot {} is still being taken", pending.name),
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
            if domain.is_placed() {
                return Err(Rejection::precondition(
                    ResourceKind::Domain,
                    domain_name,
                    "a disk snapshot is of a stopped domain; stop it first, or take a full snapshot (memory and disks) of it running",
                ));
            }
        }
    }
    let host = match kind {
        SnapshotKind::Full => domain.status.host.clone().expect("a live domain is placed"),
        SnapshotKind::Disk => disk_snapshot_host(d, domain_name, &domain.spec.disks)?,
    };
    d.emit(Event::SnapshotRequested {
        domain: domain_name.to_owned(),
        name: name.to_owned(),
        parent: domain.current_snapshot.clone(),
        kind,
        host,
        generation: domain.status.generation,
    });
    Ok(())
}

/// The host that images a stopped domain's writable disks: the one holding them (disks
/// of a local pool), else the one a shared pool's first writable disk picks.
fn disk_snapshot_host(d: &mut Draft<'_>, domain: &str, disks: &[Disk]) -> Result<String, Rejection> {
    let writable: Vec<&VolumeRef> = disks.iter().filter(|x| !x.read_only).map(|x| &x.volume).collect();
    let Some(first) = writable.first() else {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            domain,
            "has no writable disks to snapshot",
        ));
    };
    let mut bound: Option<&str> = None;
    for id in &writable {
        let volume = d.volume(id)?;
        if !volume.usable() {
            return Err(Rejection::precondition(
                ResourceKind::Volume,
                *id,
                format!("is {}; a disk snapshot images ready volumes", volume.state.name()),
            ));
        }
        match (bound, volume.host.as_deref()) {
            (Some(a), Some(b)) if a != b => {
                return Err(Rejection::precondition(
                    ResourceKind::Domain,
                    domain,
                    format!("its disks are local to two hosts ({a} and {b}); no one host can image them"),
                ))
            }
            (None, Some(b)) => bound = Some(b),
            _ => {}
        }
    }
    super::storage::volume_host(d, first, bound, None)
}

/// Define `clone` as a copy of `source` (its own name, runs, MACs and addresses; no disks
/// it cannot share) that starts from `source`'s snapshot `snapshot`.
pub(super) fn clone(d: &mut Draft<'_>, clone: &str, source: &str, snapshot: &str) -> Result<(), Rejection> {
    let taken = snapshot_guarded(d, source, snapshot)?;
    if !matches!((&taken.state, taken.kind), (SnapshotState::Taken { .. }, SnapshotKind::Full)) {
        return Err(Rejection::precondition(
            ResourceKind::Snapshot,
            format!("{source}/{snapshot}"),
            format!(
                "is a {} {:?} snapshot; a clone starts from a taken full one",
                taken.state.name(),
                taken.kind
            ),
        ));
    }
    let mut spec = (*d.domain(source)?.spec).clone();
    // Its own MACs and addresses: the host that restores it hands the guest the new MAC
    // (a configuration change on each NIC), and the network's DHCP the new address.
    for nic in &mut spec.nics {
        nic.mac = None;
    }
    super::domain::define_with(d, clone, &spec)?;
    d.emit(Event::DomainCloned {
        clone: clone.to_owned(),
        source: source.to_owned(),
        name: snapshot.to_owned(),
    });
    Ok(())
}

/// Which snapshot a host reports on, as it was asked of it.
pub(super) struct Reported<'a> {
    pub domain: &'a str,
    pub name: &'a str,
    pub id: u64,
    pub host: &'a str,
    pub generation: u64,
}

/// A host reports a snapshot asked of it. A report about a snapshot that is no longer
/// pending for that host, run and id is stale and refused (the host stops sending it);
/// the same outcome again is accepted and changes nothing.
pub(super) fn report(d: &mut Draft<'_>, r: Reported<'_>, outcome: &SnapshotOutcome) -> Result<(), Rejection> {
    let Reported { domain, name, id, host, generation } = r;
    if let SnapshotOutcome::Failed { reason } = outcome {
        validate::text("reason", reason, 1, REASON_LEN_MAX)?;
    }
    d.host(host)?;
    let snapshot = snapshot_guarded(d, domain, name)?;
    let stale = |now: &str| {
        Rejection::precondition(
            ResourceKind::Snapshot,
            format!("{domain}/{name}"),
            format!("stale report from host {host} for run {generation} (id {id}): the snapshot is {now}"),
        )
    };
    if snapshot.id != id {
        return Err(stale(&format!("another one now (id {})", snapshot.id)));
    }
    match (&snapshot.state, outcome) {
        (SnapshotState::Pending { host: h, generation: g }, _) if h == host && *g == generation => {}
        (SnapshotState::Taken { host: h, .. }, SnapshotOutcome::Taken { .. }) if h == host => return Ok(()),
        (SnapshotState::Failed { .. }, SnapshotOutcome::Failed { .. }) => return Ok(()),
        (state, _) => return Err(stale(state.name())),
    }
    d.emit(match outcome {
        SnapshotOutcome::Taken { bytes, duration_ms } => Event::SnapshotTaken {
            domain: domain.to_owned(),
            name: name.to_owned(),
            bytes: *bytes,
            duration_ms: *duration_ms,
        },
        SnapshotOutcome::Failed { reason } => {
            Event::SnapshotFailed { domain: domain.to_owned(), name: name.to_owned(), reason: reason.clone() }
        }
    });
    Ok(())
}

/// The snapshots still pending for run `generation` of `domain`, failed because that run
/// ended: the events that say so (the caller emits them beside the run's end).
pub(super) fn fail_pending(d: &mut Draft<'_>, domain: &str, generation: u64, why: &str) {
    let pending: Vec<String> = d
        .state
        .snapshots_of(domain)
        .filter(|s| matches!(&s.state, SnapshotState::Pending { generation: g, .. } if *g == generation))
        .map(|s| s.name.clone())
        .collect();
    for name in pending {
        d.guard(ResourceKey::Snapshot { domain: domain.to_owned(), name: name.clone() });
        d.emit(Event::SnapshotFailed { domain: domain.to_owned(), name, reason: why.to_owned() });
    }
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
    // A domain about to start from it (a revert or a clone not yet restored) must not
    // silently boot afresh instead.
    let restoring = d
        .state
        .domains()
        .values()
        .find(|x| x.restore_from.as_ref().is_some_and(|r| r.domain == domain && r.name == name));
    if let Some(x) = restoring {
        return Err(Rejection::precondition(
            ResourceKind::Snapshot,
            format!("{domain}/{name}"),
            format!(
                "domain {} is to start from it; start it first, or revert it to another snapshot",
                x.name
            ),
        ));
    }
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
    let snapshot = snapshot_guarded(d, domain, name)?;
    let key = || format!("{domain}/{name}");
    match (&snapshot.state, snapshot.kind) {
        (SnapshotState::Taken { .. }, _) => {}
        (state, _) => {
            return Err(Rejection::precondition(
                ResourceKind::Snapshot,
                key(),
                format!("is {}; only a taken snapshot can be reverted to", state.name()),
            ))
        }
    }
    let dom = d.domain(domain)?;
    let disks: Vec<&VolumeRef> = dom.spec.disks.iter().filter(|x| !x.read_only).map(|x| &x.volume).collect();
    if disks != snapshot.disks.iter().collect::<Vec<_>>() {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            domain,
            format!(
                "its writable disks changed since snapshot {name} ({:?} then); a revert would write them over others",
                snapshot.disks.iter().map(ToString::to_string).collect::<Vec<_>>()
            ),
        ));
    }
    if let Some(id) = dom.migration {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            domain,
            format!("is migrating (migration {id})"),
        ));
    }
    let generation = match &dom.status.host {
        None => None,
        Some(host) => {
            // A running domain gets a new run on its host, from the snapshot; the host ends
            // the old run when it sees the new generation.
            if d.host(host)?.state != HostState::Ready {
                return Err(Rejection::precondition(
                    ResourceKind::Host,
                    host,
                    "is not ready; stop the domain and revert it while stopped",
                ));
            }
            fail_pending(d, domain, dom.status.generation, "the domain was reverted before it was taken");
            Some(dom.status.generation + 1)
        }
    };
    d.emit(Event::SnapshotRevertRequested { domain: domain.to_owned(), name: name.to_owned(), generation });
    Ok(())
}
