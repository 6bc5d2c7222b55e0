//! Applying the events of hosts.
// Each function takes the fields of its event as the event holds them.
#![allow(clippy::ptr_arg)]

use super::*;
use crate::limits::{HOST_FENCES_MAX, HOST_FENCE_WINDOW_MS};

pub(super) fn registered(
    state: &mut State,
    seq: u64,
    now: u64,
    name: &String,
    address: &String,
    capacity: &Resources,
    labels: &Labels,
) {
    let host = Host {
        name: name.clone(),
        address: address.clone(),
        capacity: *capacity,
        allocated: Resources::ZERO,
        labels: labels.clone(),
        state: HostState::Joining,
        domains: BTreeSet::new(),
        registered_ms: now,
        version: seq,
        vm_limits: None,
    };
    let previous = state.hosts.insert(name.clone(), host);
    assert!(previous.is_none(), "host {name} registered twice");
}

pub(super) fn updated(
    state: &mut State,
    seq: u64,
    name: &String,
    address: &String,
    capacity: &Resources,
    labels: &Labels,
) {
    let host = host_mut(state, name);
    assert!(host.allocated.fits_within(*capacity), "host {name} capacity below its allocation");
    host.address = address.clone();
    host.capacity = *capacity;
    host.labels = labels.clone();
    host.version = seq;
}

pub(super) fn vm_limits(state: &mut State, seq: u64, name: &String, limits: &Option<VmLimits>) {
    let host = host_mut(state, name);
    host.vm_limits = *limits;
    host.version = seq;
}

pub(super) fn state_changed(state: &mut State, seq: u64, now: u64, name: &String, to: &HostState) {
    let host = host_mut(state, name);
    if *to == HostState::Left {
        assert!(host.domains.is_empty(), "host {name} left with domains placed");
    }
    host.state = *to;
    host.version = seq;
    if *to == HostState::Fenced {
        // Counted: a host fenced too often within the window is left out of placement.
        let fences = state.fences.entry(name.clone()).or_default();
        let since = now.saturating_sub(HOST_FENCE_WINDOW_MS);
        fences.times.retain(|t| *t > since);
        fences.times.push(now);
        if fences.times.len() > HOST_FENCES_MAX {
            fences.times.remove(0);
        }
        fences.flapping |= fences.times.len() >= HOST_FENCES_MAX;
    }
}

pub(super) fn cleared(state: &mut State, seq: u64, name: &String) {
    assert!(state.fences.remove(name).is_some(), "host {name} cleared but never fenced lately");
    host_mut(state, name).version = seq;
}

pub(super) fn settings_changed(state: &mut State, seq: u64, ha_reserve_hosts: &u32) {
    state.settings.ha_reserve_hosts = *ha_reserve_hosts;
    state.settings.version = seq;
}
