//! The Drover networks a host serves: every isolated or NAT network with an address range
//! that a VM placed on this host has a NIC on. For each, the host keeps its bridge (with
//! the network's service address: the NAT gateway, or an isolated network's own address),
//! and a DHCP and DNS server that hands every NIC the address IPAM recorded for it and
//! answers the names of the network's domains (`dnsmasq`, as libvirt runs one per
//! network). A network the host no longer serves (its VMs left, or it was deleted) has
//! its server, rules and bridge taken away. Pure of cluster I/O like [`crate::pass`]: the
//! agent and the simulator both run it; the driver does the plumbing
//! ([`crate::driver::Driver::serve_networks`]: `net_host` on this host, the fake in
//! memory).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use controlplane::model::{Cidr, NetworkMode};
use controlplane::State;
use tracing::warn;

use crate::driver::{isolated_bridge, Driver};

/// One network as this host serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    pub name: String,
    pub bridge: String,
    /// NAT (routed out, masqueraded) or isolated.
    pub nat: bool,
    pub cidr: Cidr,
    /// The host's address on it, where DHCP and DNS answer (see
    /// `NetworkConfig::service_ip`).
    pub service_ip: Ipv4Addr,
    /// Every address IPAM recorded on the network: (MAC, address, domain), whichever host
    /// its VM runs on (so names resolve across the network).
    pub leases: Vec<(String, Ipv4Addr, String)>,
    /// The overlay: its VXLAN network identifier, this host's address (`None`, or a
    /// loopback one: no overlay, every host shares this kernel's bridge), and the
    /// addresses of the other hosts that run VMs of the network.
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    pub peers: Vec<Ipv4Addr>,
}

/// The IP address in a host's recorded address (`ip:port`).
pub fn host_ip(address: &str) -> Option<Ipv4Addr> {
    address.parse::<std::net::SocketAddrV4>().ok().map(|a| *a.ip()).or_else(|| address.parse().ok())
}

/// The networks `state` has this host serve, by bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkWork {
    /// The host serving them (hosts that share a network namespace share its networks;
    /// each says which it uses).
    pub host: String,
    pub networks: BTreeMap<String, NetworkPlan>,
}

impl NetworkWork {
    pub fn from_state(host: &str, state: &State) -> NetworkWork {
        let mut work = NetworkWork { host: host.to_owned(), ..NetworkWork::default() };
        let served: BTreeSet<&str> = state
            .domains()
            .values()
            .filter(|d| d.status.host.as_deref() == Some(host))
            .flat_map(|d| d.spec.nics.iter().map(|n| n.network.as_str()))
            .collect();
        let local = state.host(host).and_then(|h| host_ip(&h.address));
        let ip_of = |h: &str| state.host(h).and_then(|h| host_ip(&h.address));
        for name in served {
            let Some(n) = state.network(name) else { continue };
            let (Some(cidr), Some(service_ip)) = (n.config.cidr, n.config.service_ip()) else { continue };
            if n.config.mode == NetworkMode::Bridge {
                continue;
            }
            let leases = n
                .leases
                .iter()
                .filter_map(|(mac, lease)| Some((mac.to_string(), lease.ip?, lease.domain.clone())))
                .collect();
            let peers: BTreeSet<Ipv4Addr> = state
                .domains()
                .values()
                .filter(|d| d.spec.nics.iter().any(|nic| nic.network == name))
                .filter_map(|d| d.status.host.as_deref())
                .filter(|h| *h != host)
                .filter_map(ip_of)
                .filter(|ip| Some(*ip) != local)
                .collect();
            let bridge = isolated_bridge(name);
            let nat = n.config.mode == NetworkMode::Nat;
            let plan = NetworkPlan {
                name: name.to_owned(),
                bridge: bridge.clone(),
                nat,
                cidr,
                service_ip,
                leases,
                vni: n.vni(),
                local,
                peers: peers.into_iter().collect(),
            };
            work.networks.insert(bridge, plan);
        }
        work
    }
}

/// What a host remembers between passes: the plans it last carried out, so an unchanged
/// network costs nothing.
#[derive(Debug, Clone, Default)]
pub struct HostNetworks {
    served: NetworkWork,
    passes: u64,
}

/// How often (in passes) a host carries out its networks even when nothing changed (a
/// DHCP server that died is started again, a bridge someone removed comes back).
pub const RECHECK_EVERY_PASSES: u64 = 20;

impl HostNetworks {
    pub fn new() -> HostNetworks {
        HostNetworks::default()
    }

    /// Serve `work`'s networks and stop serving the rest.
    pub fn run<D: Driver + ?Sized>(&mut self, driver: &mut D, work: &NetworkWork) {
        let recheck = self.passes.is_multiple_of(RECHECK_EVERY_PASSES);
        self.passes += 1;
        if !recheck && *work == self.served {
            return;
        }
        for (network, error) in driver.serve_networks(work) {
            warn!(network = %network, error = %error, "cannot serve a network on this host");
        }
        self.served = work.clone();
    }
}
