//! Applying the events of domains (their definition, runs and observations).
// Each function takes the fields of its event as the event holds them.
#![allow(clippy::ptr_arg)]

use super::*;

pub(super) fn defined(
    state: &mut State,
    seq: u64,
    now: u64,
    name: &String,
    spec: &std::sync::Arc<DomainSpec>,
) {
    assert!(spec.nics.iter().all(|n| n.mac.is_some()), "domain {name} defined with an unresolved MAC");
    let domain = Domain {
        name: name.clone(),
        spec: spec.clone(),
        desired: DesiredState::Stopped,
        stop_mode: StopMode::Graceful,
        reboots: 0,
        status: DomainStatus {
            host: None,
            generation: 0,
            phase: Phase::Stopped,
            reason: None,
            observed_ms: now,
        },
        current_snapshot: None,
        restore_from: None,
        ha_restarts: Vec::new(),
        migration: None,
        defined_ms: now,
        version: seq,
    };
    let previous = state.domains.insert(name.clone(), domain);
    assert!(previous.is_none(), "domain {name} defined twice");
}

pub(super) fn undefined(state: &mut State, name: &String) {
    let domain = state.domains.remove(name).unwrap_or_else(|| panic!("domain {name} undefined but absent"));
    assert!(!domain.is_placed() && domain.migration.is_none(), "domain {name} undefined while active");
    for disk in &domain.spec.disks {
        let attached = state.volumes.get(&disk.volume).is_some_and(|v| v.attachments.contains_key(name));
        assert!(!attached, "domain {name} undefined before volume {} was detached", disk.volume);
    }
    for nic in &domain.spec.nics {
        let network = state.networks.get(&nic.network);
        let mac = nic.mac.expect("NICs in the state have MACs");
        assert!(
            network.is_none_or(|n| !n.leases.contains_key(&mac)),
            "domain {name} undefined before its lease on {} was released",
            nic.network
        );
    }
    assert!(state.snapshots_of(name).next().is_none(), "domain {name} undefined with snapshots");
}

pub(super) fn start_requested(state: &mut State, seq: u64, name: &String) {
    let d = domain_mut(state, name);
    d.desired = DesiredState::Running;
    d.stop_mode = StopMode::Graceful;
    // A user's start is a fresh chance: HA's count of crash restarts begins again.
    d.ha_restarts.clear();
    d.version = seq;
}

pub(super) fn shutdown_requested(state: &mut State, seq: u64, name: &String) {
    let d = domain_mut(state, name);
    d.desired = DesiredState::Stopped;
    d.stop_mode = StopMode::Graceful;
    d.version = seq;
}

pub(super) fn destroy_requested(state: &mut State, seq: u64, name: &String) {
    let d = domain_mut(state, name);
    d.desired = DesiredState::Stopped;
    d.stop_mode = StopMode::Force;
    d.version = seq;
}

pub(super) fn reboot_requested(state: &mut State, seq: u64, name: &String) {
    let d = domain_mut(state, name);
    d.reboots += 1;
    d.version = seq;
}

pub(super) fn suspend_requested(state: &mut State, seq: u64, name: &String) {
    let d = domain_mut(state, name);
    d.desired = DesiredState::Paused;
    d.version = seq;
}

pub(super) fn resume_requested(state: &mut State, seq: u64, name: &String) {
    let d = domain_mut(state, name);
    d.desired = DesiredState::Running;
    d.version = seq;
}

pub(super) fn scheduled(state: &mut State, seq: u64, name: &String, host: &String, generation: &u64) {
    let d = domain_mut(state, name);
    assert!(!d.is_placed(), "domain {name} scheduled while placed");
    assert_eq!(*generation, d.status.generation + 1, "domain {name} generations go up by one");
    d.status.host = Some(host.clone());
    d.status.generation = *generation;
    d.status.phase = Phase::Scheduled;
    d.status.reason = None;
    d.version = seq;
    let needs = d.spec.resources();
    let h = host_mut(state, host);
    assert_eq!(h.state, HostState::Ready, "domain {name} scheduled on host {host} that is not ready");
    reserve(h, name, needs, seq);
}

pub(super) fn observed(
    state: &mut State,
    seq: u64,
    now: u64,
    name: &String,
    generation: &u64,
    phase: &ObservedPhase,
    reason: &Option<String>,
) {
    let d = domain_mut(state, name);
    assert_eq!(*generation, d.status.generation, "domain {name} observed for a stale generation");
    assert!(d.is_placed(), "domain {name} observed while not placed");
    d.status.phase = (*phase).into();
    d.status.reason = reason.clone();
    d.status.observed_ms = now;
    d.version = seq;
}

pub(super) fn released(state: &mut State, seq: u64, name: &String, generation: &u64, desired: &DesiredState) {
    let d = domain_mut(state, name);
    assert_eq!(*generation, d.status.generation, "domain {name} released for a stale generation");
    assert!(d.migration.is_none(), "domain {name} released while migrating");
    let host = d.status.host.take().unwrap_or_else(|| panic!("domain {name} released while not placed"));
    if !matches!(d.status.phase, Phase::Crashed | Phase::Failed) {
        d.status.phase = Phase::Stopped;
    }
    d.desired = *desired;
    d.stop_mode = StopMode::Graceful;
    d.version = seq;
    let needs = d.spec.resources();
    release(host_mut(state, &host), name, needs, seq);
}

pub(super) fn disk_added(state: &mut State, seq: u64, name: &String, disk: &Disk) {
    let d = domain_mut(state, name);
    assert!(!d.is_placed(), "disk added to running domain {name}");
    std::sync::Arc::make_mut(&mut d.spec).disks.push(disk.clone());
    d.version = seq;
}

pub(super) fn disk_removed(state: &mut State, seq: u64, name: &String, volume: &VolumeRef) {
    let d = domain_mut(state, name);
    assert!(!d.is_placed(), "disk removed from running domain {name}");
    let before = d.spec.disks.len();
    std::sync::Arc::make_mut(&mut d.spec).disks.retain(|disk| &disk.volume != volume);
    assert_eq!(d.spec.disks.len() + 1, before, "domain {name} had exactly one disk on {volume}");
    d.version = seq;
}
