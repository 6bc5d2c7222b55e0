//! Applying the events of snapshots, reverts, restores and clones.
// Each function takes the fields of its event as the event holds them.
#![allow(clippy::ptr_arg)]

use super::*;

pub(super) fn created(
    state: &mut State,
    seq: u64,
    now: u64,
    domain: &String,
    name: &String,
    parent: &Option<String>,
    kind: &SnapshotKind,
) {
    insert(
        state,
        Snapshot {
            domain: domain.clone(),
            name: name.clone(),
            parent: parent.clone(),
            kind: *kind,
            created_ms: now,
            version: seq,
            state: SnapshotState::RecordOnly,
            // No file is named by it; 0 whether replayed or decoded from format 1.
            id: 0,
            disks: Vec::new(),
        },
    );
    let d = domain_mut(state, domain);
    d.current_snapshot = Some(name.clone());
    d.version = seq;
}

/// Record a new snapshot of a domain, whose parent is the domain's current snapshot.
fn insert(state: &mut State, snapshot: Snapshot) {
    let (domain, name) = (snapshot.domain.clone(), snapshot.name.clone());
    let current = &domain_mut(state, &domain).current_snapshot;
    assert_eq!(current, &snapshot.parent, "snapshot {domain}/{name} parent is the current snapshot");
    if let Some(p) = &snapshot.parent {
        assert!(state.snapshots.contains_key(&(domain.clone(), p.clone())), "snapshot parent {p} exists");
    }
    let previous = state.snapshots.insert((domain.clone(), name.clone()), snapshot);
    assert!(previous.is_none(), "snapshot {domain}/{name} created twice");
}

pub(super) fn deleted(state: &mut State, seq: u64, domain: &String, name: &String) {
    let key = (domain.clone(), name.clone());
    let s =
        state.snapshots.remove(&key).unwrap_or_else(|| panic!("snapshot {domain}/{name} deleted but absent"));
    assert!(
        state.snapshots_of(domain).all(|c| c.parent.as_deref() != Some(name)),
        "snapshot {domain}/{name} deleted with children"
    );
    let d = domain_mut(state, domain);
    if d.current_snapshot.as_deref() == Some(name) {
        d.current_snapshot = s.parent;
    }
    d.version = seq;
    assert!(
        state
            .domains
            .values()
            .all(|d| d.restore_from.as_ref().is_none_or(|r| r.domain != *domain || r.name != *name)),
        "snapshot {domain}/{name} deleted while a domain is to start from it"
    );
}

pub(super) fn reparented(
    state: &mut State,
    seq: u64,
    domain: &String,
    name: &String,
    parent: &Option<String>,
) {
    let s = state
        .snapshots
        .get_mut(&(domain.clone(), name.clone()))
        .unwrap_or_else(|| panic!("snapshot {domain}/{name} reparented but absent"));
    s.parent = parent.clone();
    s.version = seq;
}

pub(super) fn reverted(state: &mut State, seq: u64, domain: &String, name: &String) {
    assert!(state.snapshots.contains_key(&(domain.clone(), name.clone())), "reverted to a missing snapshot");
    let d = domain_mut(state, domain);
    assert!(!d.is_placed(), "domain {domain} reverted while placed");
    d.current_snapshot = Some(name.clone());
    d.version = seq;
}

#[allow(clippy::too_many_arguments)] // one per field of the event, as for every event
pub(super) fn requested(
    state: &mut State,
    seq: u64,
    now: u64,
    domain: &String,
    name: &String,
    parent: &Option<String>,
    kind: &SnapshotKind,
    host: &String,
    generation: &u64,
) {
    let d = domain_mut(state, domain);
    let disks = d.spec.disks.iter().filter(|x| !x.read_only).map(|x| x.volume.clone()).collect();
    match kind {
        SnapshotKind::Full => assert_eq!(
            d.status.host.as_ref(),
            Some(host),
            "snapshot {domain}/{name} asked of a host not running it"
        ),
        SnapshotKind::Disk => {
            assert!(!d.is_placed(), "disk snapshot {domain}/{name} asked of a placed domain")
        }
    }
    assert_eq!(d.status.generation, *generation, "snapshot {domain}/{name} asked for a stale run");
    d.version = seq;
    assert!(
        state.snapshots_of(domain).all(|s| !matches!(s.state, SnapshotState::Pending { .. })),
        "domain {domain} has two snapshots pending"
    );
    insert(
        state,
        Snapshot {
            domain: domain.clone(),
            name: name.clone(),
            parent: parent.clone(),
            kind: *kind,
            created_ms: now,
            version: seq,
            state: SnapshotState::Pending { host: host.clone(), generation: *generation },
            id: seq,
            disks,
        },
    );
}

pub(super) fn taken(
    state: &mut State,
    seq: u64,
    domain: &String,
    name: &String,
    bytes: &u64,
    duration_ms: &u64,
) {
    let s = snapshot_mut(state, domain, name);
    let SnapshotState::Pending { host, .. } = &s.state else {
        panic!("snapshot {domain}/{name} taken while {}", s.state.name());
    };
    s.state = SnapshotState::Taken { host: host.clone(), bytes: *bytes, duration_ms: *duration_ms };
    s.version = seq;
    // The snapshot's parent was the current one when it was asked for, and no
    // other snapshot of the domain could be taken meanwhile.
    let d = domain_mut(state, domain);
    d.current_snapshot = Some(name.clone());
    d.version = seq;
}

pub(super) fn failed(state: &mut State, seq: u64, domain: &String, name: &String, reason: &String) {
    let s = snapshot_mut(state, domain, name);
    assert!(
        matches!(s.state, SnapshotState::Pending { .. }),
        "snapshot {domain}/{name} failed while {}",
        s.state.name()
    );
    s.state = SnapshotState::Failed { reason: reason.clone() };
    s.version = seq;
}

pub(super) fn revert_requested(
    state: &mut State,
    seq: u64,
    domain: &String,
    name: &String,
    generation: &Option<u64>,
) {
    assert_taken(state, domain, name, "reverted to");
    let d = domain_mut(state, domain);
    d.current_snapshot = Some(name.clone());
    d.restore_from = Some(SnapshotRef { domain: domain.clone(), name: name.clone() });
    if let Some(g) = generation {
        assert!(d.is_placed(), "domain {domain} reverted in place while not placed");
        assert_eq!(*g, d.status.generation + 1, "domain {domain} generations go up by one");
        d.status.generation = *g;
        d.status.phase = Phase::Scheduled;
        d.status.reason = None;
    } else {
        assert!(!d.is_placed(), "domain {domain} reverted while placed, without a new run");
    }
    d.version = seq;
}

pub(super) fn restored(
    state: &mut State,
    seq: u64,
    domain: &String,
    source: &String,
    name: &String,
    generation: &u64,
) {
    let d = domain_mut(state, domain);
    let restored = d.restore_from.as_ref().is_some_and(|r| r.domain == *source && r.name == *name);
    assert!(restored, "domain {domain} restored from {source}/{name}, which it was not to start from");
    assert_eq!(d.status.generation, *generation, "domain {domain} restored for a stale run");
    d.restore_from = None;
    d.version = seq;
}

pub(super) fn domain_cloned(state: &mut State, seq: u64, clone: &String, source: &String, name: &String) {
    assert_taken(state, source, name, "cloned from");
    let d = domain_mut(state, clone);
    assert!(!d.is_placed() && d.restore_from.is_none(), "domain {clone} cloned once defined");
    d.restore_from = Some(SnapshotRef { domain: source.clone(), name: name.clone() });
    d.version = seq;
}
