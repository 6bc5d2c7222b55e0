//! Applying the events of HA: lost runs, restarts, and giving up.
// Each function takes the fields of its event as the event holds them.
#![allow(clippy::ptr_arg)]

use super::*;
use crate::limits::HA_CRASH_RESTARTS_MAX;

pub(super) fn lost(state: &mut State, seq: u64, name: &String, generation: &u64, host: &String) {
    let d = domain_mut(state, name);
    assert_eq!(*generation, d.status.generation, "domain {name} lost for a stale generation");
    assert!(d.migration.is_none(), "domain {name} lost while migrating");
    assert_eq!(d.status.host.as_ref(), Some(host), "domain {name} lost with a host it was not on");
    d.status.host = None;
    if d.desired == DesiredState::Stopped {
        // It was being stopped anyway: it is.
        d.status.phase = Phase::Stopped;
        d.status.reason = None;
    } else {
        d.status.phase = Phase::Lost;
        d.status.reason = Some(format!("host {host} was fenced"));
    }
    d.stop_mode = StopMode::Graceful;
    d.version = seq;
    let needs = d.spec.resources();
    let h = host_mut(state, host);
    assert_eq!(h.state, HostState::Fenced, "domain {name} lost with host {host}, which is not fenced");
    release(h, name, needs, seq);
}

pub(super) fn restarting(state: &mut State, seq: u64, now: u64, name: &String) {
    let d = domain_mut(state, name);
    assert_eq!(d.status.phase, Phase::Crashed, "domain {name} HA-restarted after no crash");
    d.ha_restarts.push(now);
    if d.ha_restarts.len() > HA_CRASH_RESTARTS_MAX {
        d.ha_restarts.remove(0);
    }
    d.version = seq;
}

pub(super) fn waiting(state: &mut State, seq: u64, name: &String, reason: &String) {
    let d = domain_mut(state, name);
    assert!(!d.is_placed(), "domain {name} waits for HA while placed");
    d.status.reason = Some(reason.clone());
    d.version = seq;
}

pub(super) fn gave_up(state: &mut State, seq: u64, name: &String, reason: &String) {
    let d = domain_mut(state, name);
    assert!(!d.is_placed(), "HA gave up on domain {name} while placed");
    d.status.phase = Phase::Failed;
    d.status.reason = Some(reason.clone());
    d.version = seq;
}
