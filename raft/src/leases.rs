//! Host leases, as the leader holds them: in memory, never logged. A renewal is a
//! heartbeat from a hostd that this leader answered after confirming its leadership.
//!
//! Leases belong to a term. A leader that takes over (a new term) knows nothing of the
//! renewals its predecessor saw, so it grants every host a fresh, full lease from the
//! moment it first looks: a host is never suspected or fenced sooner than a full lease
//! after the new leader could have heard from it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::time::Instant;

/// The leader's table of leases. Shared by the heartbeat handler and the HA loop.
#[derive(Debug, Default)]
pub struct Leases {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    term: u64,
    renewed: BTreeMap<String, Instant>,
}

impl Table {
    fn in_term(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.renewed.clear();
        }
    }
}

impl Leases {
    /// Host `host` renewed with the leader of `term` at `now`.
    pub fn renew(&self, term: u64, host: &str, now: Instant) {
        let mut t = self.table.lock().expect("lease lock");
        t.in_term(term);
        t.renewed.insert(host.to_owned(), now);
    }

    /// How long ago each of `hosts` renewed, in ms, for the leader of `term` at `now`; a
    /// host this leader has not seen yet gets a full lease from now.
    pub fn ages<'a>(
        &self,
        term: u64,
        hosts: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> BTreeMap<String, u64> {
        let mut t = self.table.lock().expect("lease lock");
        t.in_term(term);
        hosts
            .into_iter()
            .map(|h| {
                let since = *t.renewed.entry(h.to_owned()).or_insert(now);
                (h.to_owned(), now.saturating_duration_since(since).as_millis() as u64)
            })
            .collect()
    }

    /// Forget the lease of a host that left or was fenced (it starts afresh on return).
    pub fn forget(&self, host: &str) {
        self.table.lock().expect("lease lock").renewed.remove(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ages_count_from_renewals_and_a_new_term_grants_fresh_leases() {
        let leases = Leases::default();
        let t0 = Instant::now();
        assert_eq!(leases.ages(1, ["a"], t0)["a"], 0, "first sight is a fresh lease");
        leases.renew(1, "b", t0);
        let t1 = t0 + Duration::from_millis(700);
        let ages = leases.ages(1, ["a", "b"], t1);
        assert_eq!((ages["a"], ages["b"]), (700, 700));
        leases.renew(1, "a", t1);
        let t2 = t1 + Duration::from_millis(300);
        let ages = leases.ages(1, ["a", "b"], t2);
        assert_eq!((ages["a"], ages["b"]), (300, 1_000));
        // A new leader's term: every host starts from a full lease.
        let ages = leases.ages(2, ["a", "b"], t2 + Duration::from_millis(5));
        assert_eq!((ages["a"], ages["b"]), (0, 0));
    }
}
