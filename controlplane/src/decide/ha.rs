//! HA commands: a fenced host's runs are lost, and the HA controller restarts what
//! should run again. (The controller itself, deciding *when*, is [`crate::ha`].)

use super::Draft;
use crate::event::Event;
use crate::limits::{EVENTS_PER_PROPOSAL_MAX, HA_CRASH_RESTARTS_MAX, HA_CRASH_RESTART_WINDOW_MS};
use crate::model::{DesiredState, HaPolicy, Phase, ResourceKey, ResourceKind};
use crate::rejection::Rejection;
use crate::scheduler;

/// Events one lost domain may need: its migration rolled back, its pending snapshot
/// failed, the loss itself.
const EVENTS_PER_LOST_DOMAIN_MAX: usize = 3;

/// Host `name` is fenced (the caller emitted or checked its `HostStateChanged`): every run
/// it held is lost and every migration to or from it rolls back. A host with more
/// domains than one proposal may carry is finished by asking again (the HA controller
/// does while a fenced host still holds domains).
pub(super) fn lose_runs(d: &mut Draft<'_>, host: &str) {
    let state = d.state;
    let Some(h) = state.host(host) else { return };
    for name in &h.domains {
        if d.events.len() + EVENTS_PER_LOST_DOMAIN_MAX > EVENTS_PER_PROPOSAL_MAX {
            break;
        }
        let Some(domain) = state.domain(name) else { continue };
        d.guard(ResourceKey::Domain(name.clone()));
        if let Some(id) = domain.migration {
            let m = state.migration(id).expect("a domain's migration exists");
            d.guard(ResourceKey::Migration(id));
            d.emit(Event::MigrationRolledBack { id, reason: format!("host {host} was fenced") });
            if m.target == host {
                // Only the incoming reservation was here; the domain runs on on its source.
                continue;
            }
        }
        let generation = domain.status.generation;
        super::snapshot::fail_pending(d, name, generation, &format!("host {host} was fenced"));
        d.emit(Event::DomainLost { name: name.clone(), generation, host: host.to_owned() });
    }
    // Disk snapshots of stopped domains asked of it will not be taken by it.
    let asked: Vec<(String, String)> = state
        .snapshots_asked_of(host)
        .filter(|s| state.domain(&s.domain).is_some_and(|x| !x.is_placed()))
        .map(|s| (s.domain.clone(), s.name.clone()))
        .collect();
    for (domain, name) in asked {
        if d.events.len() + 1 > EVENTS_PER_PROPOSAL_MAX {
            break;
        }
        d.guard(ResourceKey::Snapshot { domain: domain.clone(), name: name.clone() });
        d.emit(Event::SnapshotFailed {
            domain,
            name,
            reason: format!("host {host} was fenced before it was taken"),
        });
    }
    super::storage::reassign_volume_ops(d, host);
}

/// Restart HA domain `name`, which should run and does not: placed anywhere that fits,
/// or the reason recorded (once) when nothing does; after too many crashes in the window,
/// HA gives up on it.
pub(super) fn restart(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    let domain = d.domain(name)?;
    let not_needed = |why: &str| Err(Rejection::precondition(ResourceKind::Domain, name, why.to_owned()));
    if !matches!(domain.spec.ha, HaPolicy::Restart { .. }) {
        return not_needed("has no HA policy");
    }
    if domain.is_placed() || domain.migration.is_some() {
        return not_needed("holds a placement");
    }
    if domain.desired == DesiredState::Stopped {
        return not_needed("is not meant to run");
    }
    let crashed = match domain.status.phase {
        Phase::Crashed => true,
        Phase::Lost => false,
        _ => return not_needed("did not crash and was not lost"),
    };
    if crashed {
        let since = d.now_ms.saturating_sub(HA_CRASH_RESTART_WINDOW_MS);
        let recent = domain.ha_restarts.iter().filter(|t| **t > since).count();
        if recent >= HA_CRASH_RESTARTS_MAX {
            d.emit(Event::DomainHaGaveUp {
                name: name.to_owned(),
                reason: format!(
                    "crashed again after {recent} HA restarts within {} s; HA gave up (start it to try again)",
                    HA_CRASH_RESTART_WINDOW_MS / 1000
                ),
            });
            return Ok(());
        }
    }
    super::domain::disks_ready(d, domain)?;
    match scheduler::place(d.state, name, &domain.spec) {
        Ok(host) => {
            d.fit(&host, name);
            if crashed {
                d.emit(Event::DomainHaRestarting { name: name.to_owned() });
            }
            d.emit(Event::DomainScheduled {
                name: name.to_owned(),
                host,
                generation: domain.status.generation + 1,
            });
        }
        Err(why) => {
            let reason = format!("waiting for HA restart: {why}");
            if domain.status.reason.as_deref() != Some(reason.as_str()) {
                d.emit(Event::DomainHaWaiting { name: name.to_owned(), reason });
            }
        }
    }
    Ok(())
}

/// HA admission control: with `ha_reserve_hosts` N set, starting HA domain `name` (the
/// draft's events so far place it) is refused unless every HA domain could still run
/// again after any N of the hosts that are up failed.
pub(super) fn admit(d: &Draft<'_>, name: &str) -> Result<(), Rejection> {
    let n = d.state.settings().ha_reserve_hosts;
    if n == 0 {
        return Ok(());
    }
    let mut after = d.state.clone();
    let proposal = crate::proposal::Proposal {
        request_id: "ha-admission".into(),
        principal: crate::ha::PRINCIPAL.into(),
        time_ms: d.now_ms,
        preconditions: Vec::new(),
        fits: Vec::new(),
        events: d.events.clone(),
        trace: None,
        term: None,
    };
    crate::apply::apply_proposal(&mut after, &proposal);
    let refuse = |why: String| {
        Err(Rejection::precondition(
            ResourceKind::Domain,
            name,
            format!("HA admission (ha_reserve_hosts {n}): {why}"),
        ))
    };
    match crate::ha::what_if_any(&after, n as usize, d.now_ms) {
        Err(why) => refuse(why),
        Ok(scenarios) => match scenarios.iter().find(|w| !w.unplaced.is_empty()) {
            Some(w) => {
                let (domain, why) = &w.unplaced[0];
                refuse(format!("if {} failed, {domain} would not run again ({why})", w.failed.join(", ")))
            }
            None => Ok(()),
        },
    }
}
