//! Applying the events of storage pools and volumes.
// Each function takes the fields of its event as the event holds them.
#![allow(clippy::ptr_arg)]

use super::*;

pub(super) fn pool_created(state: &mut State, seq: u64, now: u64, name: &String, config: &PoolConfig) {
    let pool = Pool {
        name: name.clone(),
        config: config.clone(),
        allocated_mib: 0,
        volumes: 0,
        created_ms: now,
        version: seq,
    };
    let previous = state.pools.insert(name.clone(), pool);
    assert!(previous.is_none(), "pool {name} created twice");
}

pub(super) fn pool_deleted(state: &mut State, name: &String) {
    let p = state.pools.remove(name).unwrap_or_else(|| panic!("pool {name} deleted but absent"));
    assert_eq!(p.volumes, 0, "pool {name} deleted with volumes");
}

pub(super) fn volume_created(
    state: &mut State,
    seq: u64,
    now: u64,
    volume: &VolumeRef,
    format: &VolumeFormat,
    capacity_mib: &u64,
    backing: &Option<String>,
) {
    add_volume(state, seq, now, volume, *format, *capacity_mib, backing, VolumeState::RecordOnly, None);
}

#[allow(clippy::too_many_arguments)]
pub(super) fn volume_requested(
    state: &mut State,
    seq: u64,
    now: u64,
    volume: &VolumeRef,
    format: &VolumeFormat,
    capacity_mib: &u64,
    backing: &Option<String>,
    op: VolumeOp,
    host: &String,
) {
    // A local pool's file lives on the host that makes it; its domains run there.
    let shared = state.pools.get(&volume.pool).is_some_and(|p| p.config.shared);
    let pending = VolumeState::Pending { op, host: host.clone(), id: seq };
    let local_host = (!shared).then(|| host.clone());
    add_volume(state, seq, now, volume, *format, *capacity_mib, backing, pending, local_host);
}

#[allow(clippy::too_many_arguments)]
fn add_volume(
    state: &mut State,
    seq: u64,
    now: u64,
    volume: &VolumeRef,
    format: VolumeFormat,
    capacity_mib: u64,
    backing: &Option<String>,
    volume_state: VolumeState,
    host: Option<String>,
) {
    let pool = pool_mut(state, &volume.pool);
    pool.allocated_mib += capacity_mib;
    assert!(pool.allocated_mib <= pool.config.capacity_mib, "pool {} over capacity", volume.pool);
    pool.volumes += 1;
    pool.version = seq;
    if let Some(b) = backing {
        let base = volume_mut(state, &VolumeRef::new(&volume.pool, b));
        base.clones += 1;
        base.version = seq;
    }
    let v = Volume {
        id: volume.clone(),
        format,
        capacity_mib,
        allocation_mib: 0,
        backing: backing.clone(),
        clones: 0,
        attachments: BTreeMap::new(),
        created_ms: now,
        version: seq,
        state: volume_state,
        host,
        failure: None,
    };
    let previous = state.volumes.insert(volume.clone(), v);
    assert!(previous.is_none(), "volume {volume} created twice");
}

pub(super) fn volume_resize_requested(
    state: &mut State,
    seq: u64,
    volume: &VolumeRef,
    capacity_mib: &u64,
    host: &String,
) {
    let v = volume_mut(state, volume);
    assert!(v.state == VolumeState::Ready, "volume {volume} resized while {}", v.state.name());
    let grow = capacity_mib.checked_sub(v.capacity_mib).expect("volumes only grow");
    v.state = VolumeState::Pending {
        op: VolumeOp::Resize { capacity_mib: *capacity_mib },
        host: host.clone(),
        id: seq,
    };
    v.version = seq;
    let pool = pool_mut(state, &volume.pool);
    pool.allocated_mib += grow;
    assert!(pool.allocated_mib <= pool.config.capacity_mib, "pool {} over capacity", volume.pool);
    pool.version = seq;
}

pub(super) fn volume_delete_requested(state: &mut State, seq: u64, volume: &VolumeRef, host: &String) {
    let v = volume_mut(state, volume);
    assert!(v.state == VolumeState::Ready, "volume {volume} deleted while {}", v.state.name());
    assert!(v.attachments.is_empty() && v.clones == 0, "volume {volume} deleted while in use");
    v.state = VolumeState::Pending { op: VolumeOp::Delete, host: host.clone(), id: seq };
    v.version = seq;
}

pub(super) fn volume_reassigned(state: &mut State, seq: u64, volume: &VolumeRef, to: &String) {
    let v = volume_mut(state, volume);
    let VolumeState::Pending { host, id, .. } = &mut v.state else {
        panic!("volume {volume} reassigned while {}", v.state.name())
    };
    assert!(v.host.is_none(), "volume {volume} of a local pool reassigned");
    assert_ne!(host, to, "volume {volume} reassigned to the host it was asked of");
    *host = to.clone();
    *id = seq;
    v.version = seq;
}

pub(super) fn volume_ready(state: &mut State, seq: u64, volume: &VolumeRef, allocation_mib: &u64) {
    let v = volume_mut(state, volume);
    match &v.state {
        VolumeState::Pending { op: VolumeOp::Create { .. }, .. } => {}
        VolumeState::Pending { op: VolumeOp::Resize { capacity_mib }, .. } => v.capacity_mib = *capacity_mib,
        other => panic!("volume {volume} made ready while {}", other.name()),
    }
    v.state = VolumeState::Ready;
    v.allocation_mib = *allocation_mib;
    v.failure = None;
    v.version = seq;
}

pub(super) fn volume_failed(state: &mut State, seq: u64, volume: &VolumeRef, reason: &String) {
    let v = volume_mut(state, volume);
    let VolumeState::Pending { op, .. } = &v.state else {
        panic!("volume {volume} failed while {}", v.state.name())
    };
    let returned = match op {
        VolumeOp::Create { .. } => {
            v.state = VolumeState::Failed { reason: reason.clone() };
            0
        }
        VolumeOp::Resize { capacity_mib } => {
            let returned = capacity_mib - v.capacity_mib;
            v.state = VolumeState::Ready;
            v.failure = Some(reason.clone());
            returned
        }
        VolumeOp::Delete => {
            v.state = VolumeState::Ready;
            v.failure = Some(reason.clone());
            0
        }
    };
    v.version = seq;
    if returned > 0 {
        let pool = pool_mut(state, &volume.pool);
        pool.allocated_mib -= returned;
        pool.version = seq;
    }
}

pub(super) fn volume_deleted(state: &mut State, seq: u64, volume: &VolumeRef) {
    let v = state.volumes.remove(volume).unwrap_or_else(|| panic!("volume {volume} deleted but absent"));
    assert!(v.attachments.is_empty() && v.clones == 0, "volume {volume} deleted while in use");
    assert!(
        !matches!(
            v.state,
            VolumeState::Pending { op: VolumeOp::Create { .. } | VolumeOp::Resize { .. }, .. }
        ),
        "volume {volume} deleted while {}",
        v.state.name()
    );
    if let Some(b) = &v.backing {
        let base = volume_mut(state, &VolumeRef::new(&volume.pool, b));
        base.clones -= 1;
        base.version = seq;
    }
    let pool = pool_mut(state, &volume.pool);
    pool.allocated_mib -= v.capacity_mib;
    pool.volumes -= 1;
    pool.version = seq;
}

pub(super) fn volume_resized(state: &mut State, seq: u64, volume: &VolumeRef, capacity_mib: &u64) {
    let v = volume_mut(state, volume);
    let grow = capacity_mib.checked_sub(v.capacity_mib).expect("volumes only grow");
    v.capacity_mib = *capacity_mib;
    v.version = seq;
    let pool = pool_mut(state, &volume.pool);
    pool.allocated_mib += grow;
    assert!(pool.allocated_mib <= pool.config.capacity_mib, "pool {} over capacity", volume.pool);
    pool.version = seq;
}

pub(super) fn volume_allocation_observed(
    state: &mut State,
    seq: u64,
    volume: &VolumeRef,
    allocation_mib: &u64,
) {
    let v = volume_mut(state, volume);
    v.allocation_mib = *allocation_mib;
    v.version = seq;
}

pub(super) fn volume_attached(
    state: &mut State,
    seq: u64,
    volume: &VolumeRef,
    domain: &String,
    read_only: &bool,
) {
    attach(state, volume, domain, *read_only, seq);
}

pub(super) fn volume_detached(state: &mut State, seq: u64, volume: &VolumeRef, domain: &String) {
    detach(state, volume, domain, seq);
}
