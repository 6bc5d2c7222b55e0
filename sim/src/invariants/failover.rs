//! Protects: **a fenced host's HA domains run again elsewhere, promptly, and nothing is
//! placed on a host that cannot run it.** Watched on the leader's state through the run:
//! an HA domain that should run and was lost with its fenced host is placed again within
//! [`FAILOVER_BOUND_MS`] of leader time (time with a leader a quorum acknowledges, the
//! only time anything can commit; a domain HA records as waiting for capacity is exempt
//! while it waits), and no domain stays placed on a fenced host or is newly placed on
//! one that is not ready or is left out for flapping (fenced too often lately).

use std::collections::BTreeMap;

use controlplane::model::{DesiredState, HaPolicy, HostState, Phase};
use controlplane::State;

/// How long, counting only time with a leader, an HA domain may stay lost.
pub const FAILOVER_BOUND_MS: u64 = 5_000;

/// What the watch remembers between looks.
#[derive(Debug, Default)]
pub struct FailoverWatch {
    /// HA domains lost and not yet placed again: leader time they have waited, in ms.
    lost: BTreeMap<String, u64>,
    /// Each domain's placement as last seen (host, generation).
    placed: BTreeMap<String, (String, u64)>,
    last_ms: Option<u64>,
}

impl FailoverWatch {
    /// Look at the leader's `state` at `now_ms` (`None`: no leader in contact with a
    /// quorum now). Returns what is wrong.
    pub fn observe(&mut self, now_ms: u64, state: Option<&State>) -> Vec<String> {
        let step = self.last_ms.map_or(0, |l| now_ms.saturating_sub(l));
        self.last_ms = Some(now_ms);
        let Some(state) = state else { return Vec::new() };
        let mut found = Vec::new();
        for d in state.domains().values() {
            let ha = matches!(d.spec.ha, HaPolicy::Restart { .. });
            let waiting = d.status.reason.as_deref().is_some_and(|r| r.starts_with("waiting for HA restart"));
            let due = ha && d.desired != DesiredState::Stopped && d.status.phase == Phase::Lost && !waiting;
            if due {
                let waited = self.lost.entry(d.name.clone()).or_insert(0);
                *waited += step;
                if *waited > FAILOVER_BOUND_MS {
                    found.push(format!(
                        "HA domain {} lost with its host ({}) is not placed again after {waited} ms with a leader",
                        d.name,
                        d.status.reason.as_deref().unwrap_or("no reason")
                    ));
                    *waited = 0; // report once per bound
                }
            } else {
                self.lost.remove(&d.name);
            }
            match &d.status.host {
                Some(host) => {
                    let now = (host.clone(), d.status.generation);
                    let h = state.host(host).map(|h| h.state);
                    if h == Some(HostState::Fenced) {
                        found.push(format!("domain {} is still placed on fenced host {host}", d.name));
                    }
                    if self.placed.get(&d.name) != Some(&now) && d.migration.is_none() {
                        // A new placement: only on a ready host (it may have been suspected
                        // since, but never fenced or in maintenance when placed).
                        if matches!(h, Some(HostState::Fenced | HostState::Maintenance | HostState::Left)) {
                            found.push(format!("domain {} was placed on {host}, which is {h:?}", d.name));
                        }
                        if state.is_flapping(host) {
                            found.push(format!("domain {} was placed on {host}, which is flapping", d.name));
                        }
                        self.placed.insert(d.name.clone(), now);
                    }
                }
                None => {
                    self.placed.remove(&d.name);
                }
            }
        }
        self.lost.retain(|name, _| state.domain(name).is_some());
        found
    }
}
