//! Host leases, as the leader holds them: in memory, never logged. A renewal is a
//! heartbeat from a hostd that this leader answered after confirming its leadership.
//!
//! Leases belong to a term. A leader that takes over (a new term) knows nothing of the
//! renewals its predecessor saw, so it grants every host a fresh, full lease from the
//! moment it first looks: a host is never suspected or fenced sooner than a full lease
//! after the new leader could have heard from it.
//!
//! A renewal needs no round of its own to prove the leader still leads: openraft reports
//! when a quorum last acknowledged this leader (`millis_since_quorum_ack`, counted from
//! when the acknowledged message was sent), and no other leader can have been elected
//! before that moment. A leader renews only while that is at most the lease minus the
//! metrics' staleness (three heartbeat intervals: openraft refreshes them at least every
//! tick of one and a half). So a deposed leader answers renewals for at most a lease after
//! its successor was elected, and the successor, which grants every host a fresh full
//! lease, fences no host sooner than lease + fence + drift after taking over: every VM of
//! a host that renewed only with the old leader is dead by then. Once per term the leader
//! also confirms that its applied state is current (openraft's read index), so it never
//! renews a host that an earlier term fenced.
//!
//! What a leader decides from its leases holds only in its own term: its HA loop and an
//! operator's fencing (`Node::fence_host`) propose those writes with the term
//! ([`crate::proposer::Proposer::propose_in_term`]), and a log entry of a later term voids
//! them. Without that, a fencing decided by the leader of one
//! term waited in its write queue through an election and committed in the next term,
//! whose leader had meanwhile renewed the host's lease afresh: the host's VM ran on while
//! HA restarted it elsewhere (the simulator found it, seed 1114). A table only moves
//! forward in terms: a caller still acting for an older term changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use controlplane::model::HostState;
use tokio::time::Instant;

use crate::proposer::Proposer;
use crate::state_machine::Shared;
use crate::type_config::{NodeId, Raft};

/// Why a heartbeat renewed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This replica does not lead (or could not confirm that it does).
    NotLeader,
    /// No such host in the cluster.
    Unknown,
    /// The host is fenced or has left: it must destroy its VMs and register again.
    Gone(HostState),
    /// This leader has not heard from a quorum recently enough to vouch for a lease.
    NotConfirmed,
    /// The leader is fencing the host right now: no renewal until that has committed
    /// (or failed), so a host never holds a lease while its runs move elsewhere.
    Fencing,
}

/// What renewing needs of a replica.
#[derive(Clone, Copy)]
#[allow(missing_debug_implementations)] // openraft's Raft has no Debug
pub struct Replica<'a> {
    pub id: NodeId,
    pub raft: &'a Raft,
    pub proposer: &'a Proposer,
    pub shared: &'a Shared,
}

/// The leader's table of leases. Shared by the heartbeat handler and the HA loop.
#[derive(Debug, Default)]
pub struct Leases {
    table: Mutex<Table>,
    /// The last term in which this replica confirmed its applied state was current.
    confirmed: tokio::sync::Mutex<Option<u64>>,
}

#[derive(Debug, Default)]
struct Table {
    term: u64,
    renewed: BTreeMap<String, Instant>,
    /// Hosts whose fencing is being committed.
    fencing: BTreeSet<String>,
}

impl Table {
    /// Move to `term` (a new term forgets every lease and fencing); false, changing
    /// nothing, for a term older than the table's.
    fn in_term(&mut self, term: u64) -> bool {
        if term < self.term {
            return false;
        }
        if term > self.term {
            self.term = term;
            self.renewed.clear();
            self.fencing.clear();
        }
        true
    }

    fn age_ms(&mut self, host: &str, now: Instant) -> u64 {
        let since = *self.renewed.entry(host.to_owned()).or_insert(now);
        now.saturating_duration_since(since).as_millis() as u64
    }
}

impl Leases {
    /// Host `host` renewed with the leader of `term` at `now`; refused (nothing renewed)
    /// while its fencing is under way, or once a later term has begun.
    pub fn renew(&self, term: u64, host: &str, now: Instant) -> Result<(), Refusal> {
        let mut t = self.table.lock().expect("lease lock");
        if !t.in_term(term) {
            return Err(Refusal::NotLeader);
        }
        if t.fencing.contains(host) {
            return Err(Refusal::Fencing);
        }
        t.renewed.insert(host.to_owned(), now);
        Ok(())
    }

    /// How long ago each of `hosts` renewed, in ms, for the leader of `term` at `now`; a
    /// host this leader has not seen yet gets a full lease from now (and so does every
    /// host, for a term older than the table's).
    pub fn ages<'a>(
        &self,
        term: u64,
        hosts: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> BTreeMap<String, u64> {
        let mut t = self.table.lock().expect("lease lock");
        let current = t.in_term(term);
        hosts.into_iter().map(|h| (h.to_owned(), if current { t.age_ms(h, now) } else { 0 })).collect()
    }

    /// Before the leader of `term` proposes to fence `host`: whether its lease is still at
    /// least `fence_after_ms` old at `now` (it may have renewed since the plan was made);
    /// if so, renewals are refused until [`Leases::fenced`]. Never for a term older than
    /// the table's.
    pub fn begin_fencing(&self, term: u64, host: &str, now: Instant, fence_after_ms: u64) -> bool {
        let mut t = self.table.lock().expect("lease lock");
        if !t.in_term(term) || t.age_ms(host, now) < fence_after_ms {
            return false;
        }
        t.fencing.insert(host.to_owned());
        true
    }

    /// The fencing of `host` committed or was refused: renewals are answered again (a
    /// fenced host's are refused by its state).
    pub fn fenced(&self, host: &str) {
        self.table.lock().expect("lease lock").fencing.remove(host);
    }

    /// Forget the lease of a host that left or was fenced (it starts afresh on return).
    pub fn forget(&self, host: &str) {
        self.table.lock().expect("lease lock").renewed.remove(host);
    }

    /// A heartbeat from `host`, arriving at `replica` now: renew its lease for a lease of
    /// `lease_ms`, on the leader only, and only while a quorum has acknowledged this
    /// leader recently (see the module documentation). The renewal counts from now.
    pub async fn renew_from(&self, replica: Replica<'_>, host: &str, lease_ms: u64) -> Result<(), Refusal> {
        let arrived = Instant::now();
        let term = self.vouch(replica, lease_ms)?;
        self.confirm(replica, term).await?;
        // The confirmation may have taken a while: vouch again, as of now.
        if self.vouch(replica, lease_ms)? != term {
            return Err(Refusal::NotLeader);
        }
        let state = replica.shared.state.read().expect("state lock").host(host).map(|h| h.state);
        match state {
            None => Err(Refusal::Unknown),
            Some(s @ (HostState::Fenced | HostState::Left)) => {
                self.forget(host);
                Err(Refusal::Gone(s))
            }
            Some(_) => self.renew(term, host, arrived),
        }
    }

    /// The term in which this replica leads, if a quorum acknowledged it recently enough to
    /// vouch for a lease of `lease_ms`.
    fn vouch(&self, replica: Replica<'_>, lease_ms: u64) -> Result<u64, Refusal> {
        let staleness_ms = replica.raft.config().heartbeat_interval * 3;
        let m = replica.raft.metrics();
        let m = m.borrow();
        if m.current_leader != Some(replica.id) {
            return Err(Refusal::NotLeader);
        }
        match m.millis_since_quorum_ack {
            Some(age) if age + staleness_ms <= lease_ms => Ok(m.current_term),
            _ => Err(Refusal::NotConfirmed),
        }
    }

    /// Once per term: confirm that this replica's applied state holds every committed
    /// write (so a host fenced in an earlier term is seen as fenced).
    async fn confirm(&self, replica: Replica<'_>, term: u64) -> Result<(), Refusal> {
        let mut confirmed = self.confirmed.lock().await;
        if *confirmed == Some(term) {
            return Ok(());
        }
        replica.proposer.ensure_linearizable().await.map_err(|_| Refusal::NotLeader)?;
        if replica.raft.metrics().borrow().current_term != term {
            return Err(Refusal::NotLeader);
        }
        *confirmed = Some(term);
        Ok(())
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
        leases.renew(1, "b", t0).unwrap();
        let t1 = t0 + Duration::from_millis(700);
        let ages = leases.ages(1, ["a", "b"], t1);
        assert_eq!((ages["a"], ages["b"]), (700, 700));
        leases.renew(1, "a", t1).unwrap();
        let t2 = t1 + Duration::from_millis(300);
        let ages = leases.ages(1, ["a", "b"], t2);
        assert_eq!((ages["a"], ages["b"]), (300, 1_000));
        // A host being fenced cannot renew until the fencing is over.
        assert!(!leases.begin_fencing(1, "a", t2, 1_000), "a renewed 300 ms ago");
        assert!(leases.begin_fencing(1, "b", t2, 1_000));
        assert_eq!(leases.renew(1, "b", t2), Err(Refusal::Fencing), "no renewal while b is being fenced");
        leases.fenced("b");
        assert_eq!(leases.renew(1, "b", t2), Ok(()));
        // A new leader's term: every host starts from a full lease.
        let ages = leases.ages(2, ["a", "b"], t2 + Duration::from_millis(5));
        assert_eq!((ages["a"], ages["b"]), (0, 0));
    }

    #[test]
    fn a_table_moves_only_forward_in_terms() {
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.renew(2, "a", t0).unwrap();
        let t1 = t0 + Duration::from_millis(5_000);
        // A caller still acting for term 1 (an HA tick that began before the election)
        // fences nothing, sees only fresh leases and renews nothing.
        assert!(!leases.begin_fencing(1, "a", t1, 1_000));
        assert_eq!(leases.ages(1, ["a"], t1)["a"], 0);
        assert_eq!(leases.renew(1, "a", t1), Err(Refusal::NotLeader));
        // Term 2's table is untouched: a's renewal is 5 s old there.
        assert_eq!(leases.ages(2, ["a"], t1)["a"], 5_000);
        assert!(leases.begin_fencing(2, "a", t1, 1_000));
    }
}
