//! Protects: **a host is fenced only once its lease has run out.** HA restarts a fenced
//! host's domains at once, so the fencing must come after every VM the host runs has
//! stopped itself at its lease's end: watched on the leader's state through the run, a
//! host newly seen fenced must hold a lease (the one its VM processes watch) that ended
//! by then. A fencing decided from one leader's leases and committed under a later
//! leader, which had renewed the host meanwhile, breaks it (the simulator found one,
//! seed 1114); so would a lease renewed by a leader that could not vouch for it.

use std::collections::BTreeSet;

use controlplane::model::HostState;
use controlplane::State;

/// What the watch remembers between looks.
#[derive(Debug, Default)]
pub struct FencingWatch {
    /// Hosts fenced as of the last look.
    fenced: BTreeSet<String>,
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
        let fenced: BTreeSet<String> =
            state.hosts().values().filter(|h| h.state == HostState::Fenced).map(|h| h.name.clone()).collect();
        for name in fenced.difference(&self.fenced) {
            if let Some(end) = lease_end(name).filter(|end| *end > now_ms) {
                found.push(format!(
                    "host {name} is fenced at {now_ms} ms while its lease runs until {end} ms"
                ));
            }
        }
        self.fenced = fenced;
        found
    }
}
