//! Protects: **a VM never runs on two hosts at once.** At every instant a driver's state
//! changes, at most one hypervisor in the world holds a live (starting, running, paused or
//! shutting-down) VM of each domain.

use std::collections::BTreeMap;

use controlplane::model::ObservedPhase;
use hostd::driver::VmStatus;

/// Whether a VM is using its domain's identity (disks, addresses) right now.
pub fn is_live(phase: ObservedPhase) -> bool {
    phase.is_live()
}

/// `vms`: every host's VMs. Returns one line per domain live on more than one host.
pub fn check(vms: &BTreeMap<String, BTreeMap<String, VmStatus>>) -> Vec<String> {
    let mut holders: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (host, list) in vms {
        for (domain, vm) in list {
            if is_live(vm.phase) {
                holders
                    .entry(domain)
                    .or_default()
                    .push(format!("{host} (generation {}, {:?})", vm.generation, vm.phase));
            }
        }
    }
    holders
        .into_iter()
        .filter(|(_, h)| h.len() > 1)
        .map(|(d, h)| format!("domain {d} is live on {}", h.join(" and ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(generation: u64, phase: ObservedPhase) -> VmStatus {
        VmStatus { generation, phase, reason: None }
    }

    #[test]
    fn two_live_vms_of_one_domain_are_caught_and_stopped_ones_are_not() {
        let mut vms = BTreeMap::new();
        vms.insert("h0".to_owned(), BTreeMap::from([("web".to_owned(), vm(1, ObservedPhase::Stopped))]));
        vms.insert("h1".to_owned(), BTreeMap::from([("web".to_owned(), vm(2, ObservedPhase::Running))]));
        assert!(check(&vms).is_empty());
        vms.get_mut("h0").unwrap().insert("web".into(), vm(1, ObservedPhase::Paused));
        let found = check(&vms);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("h0") && found[0].contains("h1"), "{found:?}");
    }
}
