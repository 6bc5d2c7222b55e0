//! The HA controller: what the leader asks for, given the state, how long ago each host
//! last renewed its lease (held in the leader's memory, never logged), and `now`. A pure
//! function; the leader's loop (`raft::ha`) submits its commands
//! one by one through the ordinary write path, so each is decided against the state the
//! previous one left.
//!
//! The timeline of a host that stops renewing (every duration a setting, see
//! [`HaSettings`]):
//! - `lease_ms` after its last renewal it is `Suspect`: nothing new is placed there.
//! - `fence_ms` after the last renewal *it sent*, its hostd has killed its VMs (and its VM
//!   processes have killed themselves if hostd is gone too): self-fencing.
//! - `lease_ms + fence_ms + drift_ms` after the leader last heard from it, the leader
//!   records it `Fenced`: its runs are lost, and HA domains are restarted elsewhere, by
//!   priority. `lease_ms` past the host's own deadline, plus the drift margin, is what
//!   makes it safe for the leader's and the host's clocks to disagree a little.
//!
//! A suspect host that renews again is `Ready`. An HA domain that crashed on a live host
//! is restarted too, at most `HA_CRASH_RESTARTS_MAX` times per window.

use std::collections::BTreeMap;

use crate::command::{Command, Request};
use crate::decide::decide;
use crate::model::{DesiredState, HaPolicy, HostState, Phase};
use crate::proposal::Decision;
use crate::state::State;

/// The lease timings, shared by the leader (which suspects and fences) and each hostd
/// (which renews, and fences itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaSettings {
    /// How often a hostd renews.
    pub heartbeat_interval_ms: u64,
    /// A host that has not renewed for this long is suspect.
    pub lease_ms: u64,
    /// A hostd that has not renewed for this long kills its VMs.
    pub fence_ms: u64,
    /// Margin for the leader's and a host's clocks running at different rates.
    pub drift_ms: u64,
}

impl Default for HaSettings {
    /// Chosen for the 5 s target: fenced 3.25 s after the last renewal, leaving over a
    /// second and a half to commit the restart and boot elsewhere. `fence_ms` is what a
    /// host survives without renewing: more than a control-plane election (election
    /// timeouts of 0.5-1 s, then a heartbeat to the new leader), so electing a new leader
    /// never makes VMs fence themselves.
    fn default() -> HaSettings {
        HaSettings { heartbeat_interval_ms: 250, lease_ms: 1_000, fence_ms: 2_000, drift_ms: 250 }
    }
}

impl HaSettings {
    /// How long after the leader last heard from a host it may fence it.
    pub fn fence_after_ms(&self) -> u64 {
        self.lease_ms + self.fence_ms + self.drift_ms
    }

    /// Whether the timings are safe: a host renews several times per lease, and fences
    /// itself before the leader may.
    pub fn check(&self) -> Result<(), String> {
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms * 2 > self.lease_ms {
            return Err(format!(
                "heartbeat interval {} ms must be positive and at most half the lease ({} ms)",
                self.heartbeat_interval_ms, self.lease_ms
            ));
        }
        if self.fence_ms < self.lease_ms {
            return Err(format!(
                "fence time {} ms must be at least the lease ({} ms): a host must not kill its VMs while it is still trusted",
                self.fence_ms, self.lease_ms
            ));
        }
        Ok(())
    }
}

/// Who the HA controller's changes are recorded as.
pub const PRINCIPAL: &str = "system/ha";

/// What the leader should ask for now, in order: [`plan_hosts`], then [`plan_restarts`].
pub fn plan(
    state: &State,
    lease_age_ms: &BTreeMap<String, u64>,
    settings: &HaSettings,
    now_ms: u64,
) -> Vec<Command> {
    let mut commands = plan_hosts(state, lease_age_ms, settings);
    commands.extend(plan_restarts(state, now_ms));
    commands
}

/// Host state changes the leases call for. `lease_age_ms`: for each host the leader holds
/// a lease of, how long ago it was last renewed (a host without an entry is left alone).
/// Costs a look at each host.
pub fn plan_hosts(
    state: &State,
    lease_age_ms: &BTreeMap<String, u64>,
    settings: &HaSettings,
) -> Vec<Command> {
    let mut commands = Vec::new();
    for host in state.hosts().values() {
        let set = |s| Command::SetHostState { name: host.name.clone(), state: s };
        if host.state == HostState::Fenced {
            let movable = || {
                state.volumes_asked_of(&host.name).any(|v| v.host.is_none())
                    && state
                        .hosts()
                        .values()
                        .any(|h| h.state == HostState::Ready && !state.is_flapping(&h.name))
            };
            if !host.domains.is_empty() || state.snapshots_asked_of(&host.name).next().is_some() || movable()
            {
                // A fencing that could not carry every lost run (or snapshot, or volume
                // operation) in one proposal, or volume operations that waited for a
                // ready host to take them.
                commands.push(set(HostState::Fenced));
            }
            continue;
        }
        let Some(&age) = lease_age_ms.get(&host.name) else { continue };
        match host.state {
            HostState::Ready | HostState::Suspect | HostState::Maintenance
                if age >= settings.fence_after_ms() =>
            {
                commands.push(set(HostState::Fenced))
            }
            HostState::Ready if age >= settings.lease_ms => commands.push(set(HostState::Suspect)),
            HostState::Suspect if age < settings.lease_ms => commands.push(set(HostState::Ready)),
            _ => {}
        }
    }
    commands
}

/// HA domains to restart, highest priority first. `now_ms`: the proposer clock, for the
/// crash-restart window. Costs a look at every domain.
pub fn plan_restarts(state: &State, now_ms: u64) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut waiting: Vec<(u32, &str)> = state
        .domains()
        .values()
        .filter_map(|d| match d.spec.ha {
            HaPolicy::Restart { priority }
                if !d.is_placed()
                    && d.migration.is_none()
                    && d.desired != DesiredState::Stopped
                    && matches!(d.status.phase, Phase::Lost | Phase::Crashed) =>
            {
                Some((priority, d.name.as_str()))
            }
            _ => None,
        })
        .collect();
    // Highest priority first; by name among equals.
    waiting.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    for (_, name) in waiting {
        let command = Command::RestartDomain { name: name.to_owned() };
        // Only what would change something: a domain still waiting for the same reason
        // is not asked about again (an empty proposal would still cost a log entry).
        let probe = Request {
            request_id: "ha-probe".into(),
            principal: PRINCIPAL.into(),
            caller: crate::Caller::Cluster,
            command,
        };
        if let Ok(Decision::Propose(p)) = decide(state, &probe, now_ms) {
            if !p.events.is_empty() {
                commands.push(probe.command);
            }
        }
    }
    commands
}

/// What HA would do if `failed` hosts died now: where each HA domain they hold would run
/// again, and which would not fit (with why). Computed on a copy of `state` by the same
/// decisions the controller takes (fencing, then restarts by priority), so the answer is
/// what failover would really do, as of this state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WhatIf {
    pub failed: Vec<String>,
    /// (domain, host it would run on).
    pub placed: Vec<(String, String)>,
    /// (domain, why no host would take it).
    pub unplaced: Vec<(String, String)>,
}

/// Most decisions one what-if makes (fences, restarts), a bound on its work.
const WHAT_IF_STEPS_MAX: usize = 10_000;

/// See [`WhatIf`]. Hosts in `failed` that do not exist or are not up are skipped.
pub fn what_if(state: &State, failed: &[String], now_ms: u64) -> WhatIf {
    let mut s = state.clone();
    let steps = std::cell::Cell::new(0usize);
    let run = |s: &mut State, command: Command| -> bool {
        steps.set(steps.get() + 1);
        let request = Request {
            request_id: format!("what-if-{}", steps.get()),
            principal: PRINCIPAL.into(),
            caller: crate::Caller::Cluster,
            command,
        };
        match decide(s, &request, now_ms) {
            Ok(Decision::Propose(p)) => {
                matches!(crate::apply::apply_proposal(s, &p).0, crate::proposal::ProposalOutcome::Applied(_))
            }
            _ => false,
        }
    };
    let mut moving: Vec<String> = Vec::new();
    for host in failed {
        let Some(h) = s.host(host) else { continue };
        moving.extend(
            h.domains
                .iter()
                .filter(|d| {
                    s.domain(d).is_some_and(|d| {
                        matches!(d.spec.ha, HaPolicy::Restart { .. })
                            && d.status.host.as_deref() == Some(host)
                    })
                })
                .cloned(),
        );
        run(&mut s, Command::SetHostState { name: host.clone(), state: HostState::Fenced });
    }
    // Restart as the controller would, until it has nothing more to do.
    while steps.get() < WHAT_IF_STEPS_MAX {
        let commands = plan(&s, &BTreeMap::new(), &HaSettings::default(), now_ms);
        let before = s.last_seq();
        for c in commands {
            run(&mut s, c);
        }
        if s.last_seq() == before {
            break;
        }
    }
    let mut out = WhatIf { failed: failed.to_vec(), ..WhatIf::default() };
    for name in moving {
        let Some(d) = s.domain(&name) else { continue };
        match &d.status.host {
            Some(h) => out.placed.push((name, h.clone())),
            None => {
                out.unplaced.push((name, d.status.reason.clone().unwrap_or_else(|| "not restarted".into())))
            }
        }
    }
    out
}

/// Most host sets one `what_if_any` looks at.
pub const WHAT_IF_SCENARIOS_MAX: usize = 1_000;

/// [`what_if`] for every set of `n` hosts that are up (ready, suspect or in
/// maintenance): the scenarios in which some HA domain would not fit first, then the
/// rest. `Err` when there are more than [`WHAT_IF_SCENARIOS_MAX`] sets.
pub fn what_if_any(state: &State, n: usize, now_ms: u64) -> Result<Vec<WhatIf>, String> {
    let up: Vec<String> = state
        .hosts()
        .values()
        .filter(|h| matches!(h.state, HostState::Ready | HostState::Suspect | HostState::Maintenance))
        .map(|h| h.name.clone())
        .collect();
    if n == 0 || n > up.len() {
        return Err(format!("cannot fail {n} of the {} hosts that are up", up.len()));
    }
    let mut sets = Vec::new();
    let mut pick: Vec<usize> = (0..n).collect();
    loop {
        if sets.len() == WHAT_IF_SCENARIOS_MAX {
            return Err(format!(
                "more than {WHAT_IF_SCENARIOS_MAX} sets of {n} of {} hosts; name the hosts",
                up.len()
            ));
        }
        sets.push(pick.iter().map(|i| up[*i].clone()).collect::<Vec<_>>());
        // The next combination in lexicographic order, if any.
        let Some(i) = (0..n).rev().find(|&i| pick[i] < up.len() - n + i) else { break };
        pick[i] += 1;
        for j in i + 1..n {
            pick[j] = pick[j - 1] + 1;
        }
    }
    let mut out: Vec<WhatIf> = sets.iter().map(|failed| what_if(state, failed, now_ms)).collect();
    out.sort_by_key(|w| std::cmp::Reverse(w.unplaced.len()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{kernel_spec, Harness};
    use crate::limits::HA_CRASH_RESTARTS_MAX;
    use crate::model::ObservedPhase;

    const S: HaSettings =
        HaSettings { heartbeat_interval_ms: 250, lease_ms: 1_000, fence_ms: 2_000, drift_ms: 250 };

    fn ages(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(h, a)| (h.to_string(), *a)).collect()
    }

    /// Run the controller until it asks for nothing more (bounded).
    fn settle(h: &mut Harness, ages: &BTreeMap<String, u64>) -> Vec<String> {
        let mut done = Vec::new();
        for _ in 0..20 {
            let commands = plan(&h.state, ages, &S, h.now_ms);
            if commands.is_empty() {
                return done;
            }
            for c in commands {
                done.push(format!("{c:?}"));
                h.exec(c).unwrap();
            }
        }
        panic!("the controller never settles: {done:#?}");
    }

    fn ha_spec(priority: u32, memory_mib: u64) -> crate::model::DomainSpec {
        let mut s = kernel_spec(1, memory_mib);
        s.ha = HaPolicy::Restart { priority };
        s
    }

    fn start_on(h: &mut Harness, name: &str, spec: crate::model::DomainSpec) -> String {
        h.exec(Command::DefineDomain { name: name.into(), spec }).unwrap();
        h.exec(Command::StartDomain { name: name.into() }).unwrap();
        report(h, name, ObservedPhase::Running);
        h.state.domain(name).unwrap().status.host.clone().unwrap()
    }

    fn report(h: &mut Harness, name: &str, phase: ObservedPhase) {
        let d = h.state.domain(name).unwrap();
        let (host, generation) = (d.status.host.clone().unwrap(), d.status.generation);
        h.exec(Command::ReportObservation { domain: name.into(), host, generation, phase, reason: None })
            .unwrap();
    }

    #[test]
    fn a_silent_host_is_suspected_then_fenced_and_a_renewing_one_is_ready_again() {
        let mut h = Harness::new();
        h.ready_host("a", 8, 8192);
        h.ready_host("b", 8, 8192);
        assert!(plan(&h.state, &ages(&[("a", 999), ("b", 0)]), &S, h.now_ms).is_empty());
        settle(&mut h, &ages(&[("a", 1_000)]));
        assert_eq!(h.state.host("a").unwrap().state, HostState::Suspect);
        settle(&mut h, &ages(&[("a", 10)]));
        assert_eq!(h.state.host("a").unwrap().state, HostState::Ready, "it renewed");
        settle(&mut h, &ages(&[("a", S.fence_after_ms() - 1)]));
        assert_eq!(h.state.host("a").unwrap().state, HostState::Suspect);
        settle(&mut h, &ages(&[("a", S.fence_after_ms())]));
        assert_eq!(h.state.host("a").unwrap().state, HostState::Fenced);
        // A fenced host stays fenced whatever its lease says, until it registers again.
        assert!(plan(&h.state, &ages(&[("a", 0)]), &S, h.now_ms).is_empty());
        assert_eq!(h.state.host("b").unwrap().state, HostState::Ready, "no lease known: left alone");
    }

    #[test]
    fn fencing_restarts_ha_domains_elsewhere_by_priority_and_loses_the_others() {
        let mut h = Harness::new();
        h.ready_host("a", 8, 8192);
        h.ready_host("b", 8, 3072);
        h.ready_host("c", 8, 8192);
        // Fill a with an HA pair and a plain domain; b and c get the rest.
        for (name, spec) in
            [("low", ha_spec(1, 2048)), ("high", ha_spec(9, 2048)), ("plain", kernel_spec(1, 1024))]
        {
            h.exec(Command::DefineDomain { name: name.into(), spec }).unwrap();
        }
        // Only a is ready while they start, so all three land there.
        h.exec(Command::SetHostState { name: "b".into(), state: HostState::Maintenance }).unwrap();
        h.exec(Command::SetHostState { name: "c".into(), state: HostState::Maintenance }).unwrap();
        for name in ["low", "high", "plain"] {
            h.exec(Command::StartDomain { name: name.into() }).unwrap();
            report(&mut h, name, ObservedPhase::Running);
        }
        h.exec(Command::SetHostState { name: "b".into(), state: HostState::Ready }).unwrap();
        let a_gen = h.state.domain("high").unwrap().status.generation;
        // a goes silent; c is down too (suspect), so only b (room for one) can take them.
        settle(&mut h, &ages(&[("a", S.fence_after_ms()), ("b", 0)]));
        let high = h.state.domain("high").unwrap();
        assert_eq!(high.status.host.as_deref(), Some("b"), "the higher priority restarts first");
        assert_eq!(high.status.generation, a_gen + 1, "a new run, with a new generation");
        let low = h.state.domain("low").unwrap();
        assert_eq!(low.status.phase, Phase::Lost);
        assert!(low.status.reason.as_deref().unwrap().contains("short of memory"), "{:?}", low.status.reason);
        let plain = h.state.domain("plain").unwrap();
        assert_eq!((plain.status.phase, plain.desired), (Phase::Lost, DesiredState::Running));
        assert_eq!(plain.status.reason.as_deref(), Some("host a was fenced"));
        let a = h.state.host("a").unwrap();
        assert!(a.domains.is_empty() && a.allocated == crate::model::Resources::ZERO);
        // The waiting reason is recorded once, not again on every tick.
        let before = h.state.last_seq();
        assert!(plan(&h.state, &ages(&[("a", 99_999), ("b", 0)]), &S, h.now_ms).is_empty());
        assert_eq!(h.state.last_seq(), before);
        // Capacity appears: low restarts there; plain (no HA) stays lost.
        h.exec(Command::SetHostState { name: "c".into(), state: HostState::Ready }).unwrap();
        settle(&mut h, &ages(&[("b", 0), ("c", 0)]));
        assert_eq!(h.state.domain("low").unwrap().status.host.as_deref(), Some("c"));
        assert_eq!(h.state.domain("plain").unwrap().status.phase, Phase::Lost);
        crate::invariants::check(&h.state).unwrap();
    }

    #[test]
    fn a_fenced_source_or_target_rolls_its_migration_back() {
        let mut h = Harness::new();
        h.ready_host("a", 8, 8192);
        h.ready_host("b", 8, 8192);
        let src = start_on(&mut h, "m", ha_spec(1, 1024));
        let dst = if src == "a" { "b" } else { "a" };
        h.exec(Command::StartMigration {
            domain: "m".into(),
            target: Some(dst.into()),
            max_downtime_ms: None,
        })
        .unwrap();
        // The target dies: the domain keeps running on its source.
        settle(&mut h, &ages(&[(dst, S.fence_after_ms()), (src.as_str(), 0)]));
        let m = h.state.domain("m").unwrap();
        assert_eq!((m.status.host.as_deref(), m.migration), (Some(src.as_str()), None));
        assert!(h.state.host(dst).unwrap().domains.is_empty(), "the reservation is released");
        crate::invariants::check(&h.state).unwrap();
    }

    #[test]
    fn crashes_on_a_live_host_restart_until_the_limit_then_ha_gives_up() {
        let mut h = Harness::new();
        h.ready_host("a", 8, 8192);
        start_on(&mut h, "web", ha_spec(1, 1024));
        for round in 0..=HA_CRASH_RESTARTS_MAX {
            report(&mut h, "web", ObservedPhase::Crashed);
            settle(&mut h, &BTreeMap::new());
            let d = h.state.domain("web").unwrap();
            if round < HA_CRASH_RESTARTS_MAX {
                assert_eq!(d.status.phase, Phase::Scheduled, "restart {round}");
                report(&mut h, "web", ObservedPhase::Running);
            } else {
                assert_eq!(d.status.phase, Phase::Failed);
                assert!(d.status.reason.as_deref().unwrap().contains("HA gave up"), "{:?}", d.status.reason);
            }
        }
        // A user's start is a fresh chance.
        h.exec(Command::StartDomain { name: "web".into() }).unwrap();
        report(&mut h, "web", ObservedPhase::Crashed);
        settle(&mut h, &BTreeMap::new());
        assert_eq!(h.state.domain("web").unwrap().status.phase, Phase::Scheduled);
    }

    #[test]
    fn restart_is_refused_for_what_does_not_need_it() {
        let mut h = Harness::new();
        h.ready_host("a", 8, 8192);
        start_on(&mut h, "up", ha_spec(1, 1024));
        h.exec(Command::DefineDomain { name: "plain".into(), spec: kernel_spec(1, 512) }).unwrap();
        for (name, phrase) in
            [("up", "holds a placement"), ("plain", "has no HA policy"), ("nope", "not found")]
        {
            let e = h.exec(Command::RestartDomain { name: name.into() }).unwrap_err();
            assert!(e.to_string().contains(phrase), "{name}: {e}");
        }
    }

    #[test]
    fn what_if_says_where_ha_domains_would_go_and_what_would_not_fit() {
        let mut h = Harness::new();
        h.ready_host("a", 8, 4096);
        h.ready_host("b", 8, 4096);
        h.ready_host("c", 8, 2048);
        for (name, mem) in [("big", 3072), ("small", 1024)] {
            h.exec(Command::DefineDomain { name: name.into(), spec: ha_spec(1, mem) }).unwrap();
        }
        h.exec(Command::DefineDomain { name: "plain".into(), spec: kernel_spec(1, 512) }).unwrap();
        for name in ["big", "small", "plain"] {
            h.exec(Command::StartDomain { name: name.into() }).unwrap();
        }
        let before = h.state.clone();
        let host_of = |d: &str| h.state.domain(d).unwrap().status.host.clone().unwrap();
        let big_host = host_of("big");
        let w = what_if(&h.state, std::slice::from_ref(&big_host), h.now_ms);
        assert_eq!(
            w.placed.len() + w.unplaced.len(),
            h.state
                .host(&big_host)
                .unwrap()
                .domains
                .iter()
                .filter(|d| h.state.domain(d).is_some_and(|d| d.spec.ha != HaPolicy::None))
                .count()
        );
        for (d, to) in &w.placed {
            assert_ne!(to, &big_host, "{d} would restart on the failed host");
        }
        assert_eq!(h.state, before, "a what-if changes nothing");
        // Every pair failing: at most one host left, which cannot take everything.
        let all = what_if_any(&h.state, 2, h.now_ms).unwrap();
        assert_eq!(all.len(), 3);
        assert!(all[0].unplaced.len() >= all[2].unplaced.len(), "worst first");
        assert!(what_if_any(&h.state, 4, h.now_ms).is_err());
    }

    #[test]
    fn a_host_fenced_too_often_is_left_out_until_cleared() {
        let mut h = Harness::new();
        h.ready_host("a", 8, 8192);
        h.ready_host("b", 8, 8192);
        for _ in 0..crate::limits::HOST_FENCES_MAX {
            assert!(!h.state.is_flapping("a"));
            h.exec(Command::SetHostState { name: "a".into(), state: HostState::Fenced }).unwrap();
            h.exec(crate::fixtures::register_host("a", 8, 8192)).unwrap();
            h.exec(Command::SetHostState { name: "a".into(), state: HostState::Ready }).unwrap();
        }
        assert!(h.state.is_flapping("a"));
        for i in 0..4 {
            let name = format!("d{i}");
            h.exec(Command::DefineDomain { name: name.clone(), spec: kernel_spec(1, 512) }).unwrap();
            h.exec(Command::StartDomain { name: name.clone() }).unwrap();
            assert_eq!(h.state.domain(&name).unwrap().status.host.as_deref(), Some("b"), "never on a");
        }
        let e = h.exec(Command::ClearHost { name: "b".into() }).unwrap_err();
        assert!(e.to_string().contains("nothing to clear"), "{e}");
        h.exec(Command::ClearHost { name: "a".into() }).unwrap();
        assert!(!h.state.is_flapping("a"));
        h.exec(Command::DefineDomain { name: "e".into(), spec: kernel_spec(1, 512) }).unwrap();
        h.exec(Command::StartDomain { name: "e".into() }).unwrap();
        assert_eq!(h.state.domain("e").unwrap().status.host.as_deref(), Some("a"), "the emptier host again");
    }

    #[test]
    fn admission_refuses_an_ha_start_that_losing_reserved_hosts_could_not_restart() {
        let mut h = Harness::new();
        h.ready_host("a", 8, 4096);
        h.ready_host("b", 8, 4096);
        h.exec(Command::SetClusterSettings { ha_reserve_hosts: 1 }).unwrap();
        h.exec(Command::DefineDomain { name: "x".into(), spec: ha_spec(1, 3072) }).unwrap();
        h.exec(Command::StartDomain { name: "x".into() }).unwrap();
        // A second one that big: one host failing would leave one of them nowhere.
        h.exec(Command::DefineDomain { name: "y".into(), spec: ha_spec(1, 3072) }).unwrap();
        let e = h.exec(Command::StartDomain { name: "y".into() }).unwrap_err();
        assert_eq!(e.code(), crate::RejectionCode::FailedPrecondition);
        assert!(e.to_string().contains("would not run again"), "{e}");
        assert!(!h.state.domain("y").unwrap().is_placed(), "a refusal changes nothing");
        // A non-HA domain is not held to it; and with the setting off, y starts.
        h.exec(Command::DefineDomain { name: "z".into(), spec: kernel_spec(1, 3072) }).unwrap();
        h.exec(Command::StartDomain { name: "z".into() }).unwrap();
        h.exec(Command::SetClusterSettings { ha_reserve_hosts: 0 }).unwrap();
        h.exec(Command::DestroyDomain { name: "z".into() }).unwrap();
        let e = h.exec(Command::SetClusterSettings { ha_reserve_hosts: 99 }).unwrap_err();
        assert_eq!(e.code(), crate::RejectionCode::InvalidArgument);
    }

    #[test]
    fn settings_are_checked() {
        assert!(HaSettings::default().check().is_ok());
        assert!(HaSettings { fence_ms: 500, ..S }.check().is_err());
        assert!(HaSettings { heartbeat_interval_ms: 600, ..S }.check().is_err());
    }
}
