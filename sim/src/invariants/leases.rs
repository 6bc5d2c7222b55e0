//! Protects: **no address is given twice.** Every time a host serves its networks, the
//! DHCP table of each (as the host's view of the state has it) gives every address to one
//! NIC only, gives every NIC one address, holds no address outside the network's range,
//! and never the host's own service address.

use std::collections::BTreeSet;

use hostd::networks::NetworkWork;

/// What is wrong with the tables host `host` serves.
pub fn check(host: &str, work: &NetworkWork) -> Vec<String> {
    let mut out = Vec::new();
    for plan in work.networks.values() {
        let mut ips = BTreeSet::new();
        let mut macs = BTreeSet::new();
        for (mac, ip, domain) in &plan.leases {
            if !ips.insert(*ip) {
                out.push(format!("{host} serves {ip} twice on network {} (again to {domain})", plan.name));
            }
            if !macs.insert(mac) {
                out.push(format!("{host} serves NIC {mac} two addresses on network {}", plan.name));
            }
            if !plan.cidr.is_host_address(*ip) || *ip == plan.service_ip {
                out.push(format!("{host} serves {ip} on network {}, which it cannot lease", plan.name));
            }
        }
    }
    out
}
