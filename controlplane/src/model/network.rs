use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{Cidr, Mac};

/// How a virtual network reaches the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// Guests see each other and nothing else.
    Isolated,
    /// Guests reach out through the host's address (masquerade).
    Nat,
    /// Guests sit on an existing host bridge.
    Bridge,
}

words!(NetworkMode {
    Isolated => "isolated",
    Nat => "nat",
    Bridge => "bridge",
});

/// A network's settings, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub mode: NetworkMode,
    /// Required for isolated and NAT networks; optional for a bridge, where it turns on
    /// Drover's address management for that segment.
    pub cidr: Option<Cidr>,
    /// Defaults to the first host address for isolated and NAT networks.
    pub gateway: Option<Ipv4Addr>,
    /// The host bridge to join (bridge mode only).
    pub bridge: Option<String>,
}

/// One NIC's lease on a network: its MAC, and its address where the network has a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub domain: String,
    pub ip: Option<Ipv4Addr>,
}

/// A virtual network with its address management.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub config: NetworkConfig,
    /// Every NIC on this network, by MAC.
    pub leases: BTreeMap<Mac, Lease>,
    /// The addresses in `leases`, for allocation.
    pub used_ips: BTreeSet<Ipv4Addr>,
    pub created_ms: u64,
    pub version: u64,
    /// Its overlay's VXLAN network identifier, chosen when it was created; 0 for a network
    /// created before overlays (its VNI is derived from its name: [`Network::vni`]).
    pub vni: u32,
}

impl NetworkConfig {
    /// The host's address on the network, where its DHCP and DNS server answers: a NAT
    /// network's gateway (its first host address unless set); an isolated network's
    /// gateway if set, else its last host address (an isolated network routes nowhere;
    /// the address serves the network only). `None` without a range, or for a bridge
    /// network (the user's bridge, the user's DHCP).
    pub fn service_ip(&self) -> Option<Ipv4Addr> {
        let cidr = self.cidr?;
        match self.mode {
            NetworkMode::Bridge => None,
            NetworkMode::Nat => Some(self.gateway.unwrap_or(cidr.first_host())),
            NetworkMode::Isolated => {
                Some(self.gateway.unwrap_or(Ipv4Addr::from(u32::from(cidr.broadcast()) - 1)))
            }
        }
    }
}

/// The largest VXLAN network identifier (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;

impl Network {
    /// Its overlay's VNI: as recorded, or for a network from before overlays, one derived
    /// from its name (FNV-1a, folded into 24 bits, never 0).
    pub fn vni(&self) -> u32 {
        if self.vni != 0 {
            return self.vni;
        }
        let h = self.name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
        ((h >> 24) ^ (h & VNI_MAX)).max(1)
    }

    /// The lowest address not in use: not network, broadcast or gateway, not leased, not
    /// in `also_taken` (addresses picked for a proposal not applied yet). `None` when the
    /// network has no CIDR or is full.
    pub fn next_free_ip(&self, also_taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let cidr = self.config.cidr?;
        let first = u32::from(cidr.first_host());
        let last = u32::from(cidr.broadcast()) - 1;
        let gateway = self.config.gateway.or(self.config.service_ip()).map(u32::from);
        let mut used = self.used_ips.iter().map(|ip| u32::from(*ip)).peekable();
        let mut candidate = first;
        while candidate <= last {
            while used.peek().is_some_and(|u| *u < candidate) {
                used.next();
            }
            let pending = also_taken.iter().any(|ip| u32::from(*ip) == candidate);
            if Some(candidate) == gateway || used.peek() == Some(&candidate) || pending {
                candidate += 1;
                continue;
            }
            return Some(Ipv4Addr::from(candidate));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(cidr: &str) -> Network {
        let cidr: Cidr = cidr.parse().unwrap();
        Network {
            name: "n".into(),
            config: NetworkConfig {
                mode: NetworkMode::Nat,
                cidr: Some(cidr),
                gateway: Some(cidr.first_host()),
                bridge: None,
            },
            leases: BTreeMap::new(),
            used_ips: BTreeSet::new(),
            created_ms: 0,
            version: 1,
            vni: 0,
        }
    }

    #[test]
    fn allocates_lowest_free_and_skips_gateway() {
        let mut n = net("192.0.2.0/29"); // .1 gateway, .2-.6 free, .7 broadcast
        let mut got = Vec::new();
        while let Some(ip) = n.next_free_ip(&[]) {
            n.used_ips.insert(ip);
            got.push(ip.octets()[3]);
        }
        assert_eq!(got, vec![2, 3, 4, 5, 6]);
        n.used_ips.remove(&Ipv4Addr::new(192, 0, 2, 4));
        assert_eq!(n.next_free_ip(&[]), Some(Ipv4Addr::new(192, 0, 2, 4)));
        assert_eq!(n.next_free_ip(&[Ipv4Addr::new(192, 0, 2, 4)]), None);
    }

    #[test]
    fn no_cidr_no_addresses() {
        let mut n = net("192.0.2.0/30");
        n.config.cidr = None;
        assert_eq!(n.next_free_ip(&[]), None);
    }
}
