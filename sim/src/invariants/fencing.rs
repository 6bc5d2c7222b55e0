//! Protects: **a host is fenced only once its lease has run out.** HA restarts a fenced
//! host's domains at once, so the fencing must come after every VM the host runs has
//! stopped itself at its lease's end: watched on the leader's state through the run, a
//! fencing seen for the first time must find the host's lease (the one its VM processes
//! watch) ended by then. A fencing is told apart by the host's version, so a state that
//! lags (a new leader still applying its log) shows no old fencing as new. A fencing
//! decided from one leader's leases and committed under a later leader, which had
//! renewed the host meanwhile, breaks it (the simulator found it as two runs, seed 1114;
//! without the term check, seeds 1606, 1923, 2025 and 2072 break this invariant); so
//! would a lease renewed by a leader that could not vouch for it.

use std::collections::BTreeMap;

use controlplane::model::HostState;
use controlplane::State;

/// What the watch remembers between looks.
#[derive(Debug, Default)]
pub struct FencingWatch {
    /// The newest version of each host seen so far.
    seen: BTreeMap<String, u64>,
}

impl FencingWatch {
    /// Look at the leader's `state` at `now_ms` (`None`: no leader in contact with a
    /// quorum now); `lease_end` says until when host `name`'s VMs may run (its lease as
    /// they watch it; `None` if it never held one). Returns what is wrong.
    pub fn observe(
        &mut self,
        now_ms: u64,
        state: Option<&State>,
        lease_end: impl Fn(&str) -> Option<u64>,
    ) -> Vec<String> {
        let Some(state) = state else { return Vec::new() };
        let mut found = Vec::new();
        for h in state.hosts().values() {
            let newest = self.seen.entry(h.name.clone()).or_insert(0);
            if h.version <= *newest {
                continue;
            }
            *newest = h.version;
            if h.state != HostState::Fenced {
                continue;
            }
            if let Some(end) = lease_end(&h.name).filter(|end| *end > now_ms) {
                found.push(format!(
                    "host {} is fenced at {now_ms} ms while its lease runs until {end} ms",
                    h.name
                ));
            }
        }
        found
    }
}
