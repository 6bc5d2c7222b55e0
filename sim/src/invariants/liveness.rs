//! Protects: **the cluster does not stay stuck.** After every fault is healed, within the
//! settle bound: every replica has applied the same log; every domain that should run
//! (desired running or paused, placed on a host that still exists, not failed or
//! crashed) runs exactly once, on its host, with its current generation, and the state
//! says so; no VM runs anywhere for a domain that should not; every migration has
//! committed or rolled back.
//!
//! Until HA lands (its issue extends this file), domains placed on a host lost for good
//! are not expected to run again.

use std::collections::{BTreeMap, BTreeSet};

use controlplane::model::{DesiredState, Phase};
use controlplane::State;
use hostd::driver::{VmPhase, VmStatus};

use crate::invariants::single_run::is_live;

/// `vms`: every host's VMs; `lost`: hosts gone for good. `Ok` once settled, else what is
/// still wrong.
pub fn check(
    state: &State,
    vms: &BTreeMap<String, BTreeMap<String, VmStatus>>,
    lost: &BTreeSet<String>,
) -> Result<(), String> {
    for m in state.migrations().values() {
        if !m.phase.is_ended() {
            return Err(format!("migration {:?} of {} is still {:?}", m.id, m.domain, m.phase));
        }
    }
    let live_on = |domain: &str| -> Vec<(&String, &VmStatus)> {
        vms.iter()
            .filter_map(|(h, l)| l.get(domain).filter(|vm| is_live(vm.phase)).map(|vm| (h, vm)))
            .collect()
    };
    for d in state.domains().values() {
        let holders = live_on(&d.name);
        let on_lost = d.status.host.as_ref().is_some_and(|h| lost.contains(h));
        let should_run = d.desired != DesiredState::Stopped
            && d.status.host.is_some()
            && !on_lost
            && !matches!(d.status.phase, Phase::Failed | Phase::Crashed);
        if on_lost {
            continue;
        }
        if !should_run {
            if let Some((h, vm)) = holders.first() {
                return Err(format!("domain {} should not run but is {:?} on {h}", d.name, vm.phase));
            }
            continue;
        }
        let host = d.status.host.as_ref().expect("placed");
        let (want_vm, want_phase) = match d.desired {
            DesiredState::Paused => (VmPhase::Paused, Phase::Paused),
            _ => (VmPhase::Running, Phase::Running),
        };
        match holders.as_slice() {
            [(h, vm)] if *h == host && vm.generation == d.status.generation && vm.phase == want_vm => {}
            other => {
                return Err(format!(
                    "domain {} should be {want_vm:?} on {host} (generation {}), hypervisors hold {other:?}",
                    d.name, d.status.generation
                ))
            }
        }
        if d.status.phase != want_phase {
            return Err(format!("domain {} runs but the state says {:?}", d.name, d.status.phase));
        }
    }
    for (host, list) in vms {
        for (name, vm) in list {
            if is_live(vm.phase) && state.domain(name).is_none() {
                return Err(format!("undefined domain {name} still has a {:?} VM on {host}", vm.phase));
            }
        }
    }
    Ok(())
}
