//! Protects: **the cluster does not stay stuck.** After every fault is healed, within the
//! settle bound: every replica has applied the same log; every domain that should run
//! (desired running or paused, placed, not failed or crashed) runs exactly once, on its
//! host, with its current generation, and the state says so; no VM runs anywhere for a
//! domain that should not; every migration has committed or rolled back.
//!
//! And HA has done its work: no domain is still placed on a host lost for good (the host
//! was fenced and its runs lost), and every HA domain that should run and that HA has not
//! given up on runs again, elsewhere if need be (unless no host left runs a VM of its
//! size: the hosts' VM limits).

use std::collections::{BTreeMap, BTreeSet};

use controlplane::model::{DesiredState, HaPolicy, ObservedPhase, Phase};
use controlplane::State;
use hostd::driver::VmStatus;

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
        if let Some(host) = d.status.host.as_ref().filter(|h| lost.contains(*h)) {
            return Err(format!("domain {} is still placed on {host}, lost for good", d.name));
        }
        let ha = matches!(d.spec.ha, HaPolicy::Restart { .. });
        let runnable = state
            .hosts()
            .values()
            .any(|h| !lost.contains(&h.name) && h.vm_limits.is_none_or(|l| l.exceeded_by(&d.spec).is_none()));
        if ha
            && runnable
            && d.desired != DesiredState::Stopped
            && matches!(d.status.phase, Phase::Lost | Phase::Crashed)
        {
            return Err(format!(
                "HA domain {} is {:?} and not restarted ({})",
                d.name,
                d.status.phase,
                d.status.reason.as_deref().unwrap_or("no reason given")
            ));
        }
        let should_run = d.desired != DesiredState::Stopped
            && d.status.host.is_some()
            && !matches!(d.status.phase, Phase::Failed | Phase::Crashed);
        if !should_run {
            if let Some((h, vm)) = holders.first() {
                return Err(format!("domain {} should not run but is {:?} on {h}", d.name, vm.phase));
            }
            continue;
        }
        let host = d.status.host.as_ref().expect("placed");
        let (want_vm, want_phase) = match d.desired {
            DesiredState::Paused => (ObservedPhase::Paused, Phase::Paused),
            _ => (ObservedPhase::Running, Phase::Running),
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
