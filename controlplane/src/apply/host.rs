//! Applying the events of hosts.
// Each function takes the fields of its event as the event holds them.
#![allow(clippy::ptr_arg)]

use super::*;

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

pub(super) fn state_changed(state: &mut State, seq: u64, name: &String, to: &HostState) {
    let host = host_mut(state, name);
    if *to == HostState::Left {
        assert!(host.domains.is_empty(), "host {name} left with domains placed");
    }
    host.state = *to;
    host.version = seq;
}
