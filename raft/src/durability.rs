//! Durability boundaries: the points where storage tells openraft that something is on
//! disk, and what a restart must therefore find.
//!
//! Each boundary is a [`Promise`], made right where the storage returns (after its flush):
//! a vote saved, log entries acknowledged as written, a truncation, a purge point, a
//! snapshot stored. In production [`promise`] does nothing. The simulator installs an
//! observer ([`observe`]) that records every promise and may answer "crash here": the
//! promising task then never goes on, and the simulator crashes the replica, so a crash
//! lands exactly on a boundary (FoundationDB's "buggify"). At the restart, [`Durable::read`]
//! says what the disk really holds and [`Promised::broken_by`] compares: a storage step
//! that returned before its flush is caught the first time a crash falls right after it.

use std::cell::RefCell;

use crate::encoding;
use crate::kv::{key_u64, Kv, Tree};
use crate::log_store::{LAST_PURGED_KEY, VOTE_KEY};
use crate::state_machine::SNAPSHOT_META_KEY;
use crate::type_config::{Entry, LogId, SnapshotMeta, Vote};

/// What storage promised to have made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promise {
    Vote(Vote),
    /// Entries up to this one are written (openraft counts them towards commitment).
    Appended(LogId),
    /// Entries from this index on are removed.
    Truncated(u64),
    Purged(LogId),
    /// A snapshot up to this entry is stored (built or installed).
    Snapshot(Option<LogId>),
}

/// Decides, for a promise of simulated node `node`, whether the node crashes right there.
pub type Observer = Box<dyn FnMut(u64, &Promise) -> bool>;

thread_local! {
    static OBSERVER: RefCell<Option<Observer>> = const { RefCell::new(None) };
}

/// Watch every promise made on this thread (the simulator's; `None` stops watching).
pub fn observe(observer: Option<Observer>) {
    OBSERVER.with(|o| *o.borrow_mut() = observer);
}

/// Storage has made `p` durable. Where the observer asks for a crash here, this never
/// returns (the simulator aborts the node's tasks).
pub async fn promise(p: Promise) {
    let Some(node) = crate::runtime::current_node() else { return };
    let crash = OBSERVER.with(|o| o.borrow_mut().as_mut().is_some_and(|f| f(node, &p)));
    if crash {
        std::future::pending::<()>().await;
    }
}

/// The most each kind of promise has claimed for one replica since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Promised {
    pub vote: Option<Vote>,
    /// The last entry index promised written (lowered by truncations).
    pub appended: Option<u64>,
    pub purged: Option<LogId>,
    pub snapshot: Option<LogId>,
}

impl Promised {
    pub fn record(&mut self, p: &Promise) {
        match p {
            Promise::Vote(v) => self.vote = Some(*v),
            Promise::Appended(l) => self.appended = self.appended.max(Some(l.index)),
            Promise::Truncated(from) => {
                self.appended = self.appended.map(|a| a.min(from.saturating_sub(1)));
            }
            Promise::Purged(l) => self.purged = self.purged.max(Some(*l)),
            Promise::Snapshot(l) => self.snapshot = self.snapshot.max(*l),
        }
    }

    /// What of this the disk does not hold, if anything.
    pub fn broken_by(&self, d: &Durable) -> Option<String> {
        if let Some(v) = self.vote.filter(|v| d.vote.is_none_or(|have| have < *v)) {
            return Some(format!("vote {v} was saved, the disk holds {:?}", d.vote));
        }
        let last = d.last_log.max(d.purged.map(|p| p.index)).max(d.snapshot.map(|s| s.index));
        if let Some(a) = self.appended.filter(|a| last.is_none_or(|l| l < *a)) {
            return Some(format!("entries up to {a} were acknowledged written, the log ends at {last:?}"));
        }
        if let Some(p) = self.purged.filter(|p| d.purged.is_none_or(|have| have < *p)) {
            return Some(format!("the log was purged up to {p}, the disk's purge point is {:?}", d.purged));
        }
        if let Some(s) = self.snapshot.filter(|s| d.snapshot.is_none_or(|have| have < *s)) {
            return Some(format!(
                "a snapshot up to {s} was stored, the disk holds one up to {:?}",
                d.snapshot
            ));
        }
        None
    }
}

/// What a replica's disk holds of the promised kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durable {
    pub vote: Option<Vote>,
    pub last_log: Option<u64>,
    pub purged: Option<LogId>,
    pub snapshot: Option<LogId>,
}

impl Durable {
    /// Read it from the log's store and the state machine's.
    pub fn read<L: Kv, S: Kv>(log: &L, sm: &S) -> Result<Durable, String> {
        let last = log.last(Tree::Log).map_err(|e| format!("{e:?}"))?;
        if let Some((k, v)) = &last {
            let e: Entry = encoding::decode(v).map_err(|e| e.to_string())?;
            assert_eq!(e.log_id.index, key_u64(k), "a log entry is stored under its index");
        }
        Ok(Durable {
            vote: stored(log, VOTE_KEY)?,
            last_log: last.map(|(k, _)| key_u64(&k)),
            purged: stored(log, LAST_PURGED_KEY)?,
            snapshot: stored::<SnapshotMeta>(sm, SNAPSHOT_META_KEY)?.and_then(|m| m.last_log_id),
        })
    }
}

fn stored<T: serde::de::DeserializeOwned>(kv: &impl Kv, key: &[u8]) -> Result<Option<T>, String> {
    match kv.get(Tree::Meta, key).map_err(|e| format!("{e:?}"))? {
        None => Ok(None),
        Some(b) => encoding::decode(&b).map(Some).map_err(|e| e.to_string()),
    }
}
