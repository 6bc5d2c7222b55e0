//! Applying the events of networks and their address leases.
// Each function takes the fields of its event as the event holds them.
#![allow(clippy::ptr_arg)]

use super::*;

pub(super) fn created(
    state: &mut State,
    seq: u64,
    now: u64,
    name: &String,
    config: &NetworkConfig,
    vni: &u32,
) {
    let network = Network {
        name: name.clone(),
        config: config.clone(),
        leases: BTreeMap::new(),
        used_ips: BTreeSet::new(),
        created_ms: now,
        version: seq,
        vni: *vni,
    };
    let previous = state.networks.insert(name.clone(), network);
    assert!(previous.is_none(), "network {name} created twice");
}

pub(super) fn deleted(state: &mut State, name: &String) {
    let n = state.networks.remove(name).unwrap_or_else(|| panic!("network {name} deleted but absent"));
    assert!(n.leases.is_empty(), "network {name} deleted with leases");
}

pub(super) fn ip_allocated(
    state: &mut State,
    seq: u64,
    network: &String,
    mac: &Mac,
    ip: &Option<Ipv4Addr>,
    domain: &String,
) {
    let n = network_mut(state, network);
    if let Some(ip) = ip {
        let cidr =
            n.config.cidr.unwrap_or_else(|| panic!("address leased on network {network} without CIDR"));
        assert!(cidr.is_host_address(*ip), "address {ip} outside network {network}");
        assert!(Some(*ip) != n.config.gateway, "gateway {ip} leased on network {network}");
        assert!(n.used_ips.insert(*ip), "address {ip} leased twice on network {network}");
    }
    let previous = n.leases.insert(*mac, Lease { domain: domain.clone(), ip: *ip });
    assert!(previous.is_none(), "MAC {mac} leased twice on network {network}");
    n.version = seq;
}

pub(super) fn ip_released(state: &mut State, seq: u64, network: &String, mac: &Mac) {
    let n = network_mut(state, network);
    let lease =
        n.leases.remove(mac).unwrap_or_else(|| panic!("MAC {mac} released but not leased on {network}"));
    if let Some(ip) = lease.ip {
        assert!(n.used_ips.remove(&ip), "address {ip} leased but not marked used");
    }
    n.version = seq;
}
