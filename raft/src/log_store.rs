//! The raft log and vote on a [`Kv`]: openraft's `RaftLogStorage`.
//!
//! Group commit: `append` writes its entries and hands openraft's completion callback to a
//! flusher task, then returns at once, so openraft keeps accepting writes while the disk
//! syncs. The flusher takes every callback queued so far, fsyncs once, and completes them
//! all: one fsync per group of batches, never one per entry. Entries are written before
//! their callback is queued, so the fsync that completes a callback always covers them.
//! The vote is flushed before `save_vote` returns; the committed index is a restart hint,
//! written now and then without a flush (openraft learns it from the leader anyway).
//! Every step that tells openraft something is durable makes its [`Promise`] right there
//! (`durability`), which the simulator checks against what a crash leaves.
//!
//! Recent entries are also kept decoded in memory ([`EntryCache`]): a leader reads each
//! entry once per follower (again for every retry to a follower that does not answer,
//! and once more to apply it), and decoding it each time was the largest cost of
//! replication. An entry's payload is shared (`Arc`), so a cached entry is handed out
//! without a deep copy. The cache mirrors the store: it holds entries as written or as
//! read back, drops them when they are truncated or purged, and a write error empties
//! it; a restart starts it empty.
//!
//! Replication reads only a gap-free run from where it asks, and only while its leader
//! has not stepped down (`limited_get_log_entries`): openraft 0.9.25 may retry a send of
//! entries purged or overwritten since.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogId, StorageIOError};

use crate::durability::{promise, Promise};
use crate::encoding;
use crate::kv::{key_u64, u64_key, Kv, Tree};
use crate::proposer::Bug;
use crate::type_config::{Entry, LogId, StorageError, TypeConfig, Vote};

pub(crate) const VOTE_KEY: &[u8] = b"vote";
pub(crate) const COMMITTED_KEY: &[u8] = b"committed";
pub(crate) const LAST_PURGED_KEY: &[u8] = b"last_purged";
/// The committed index is saved when it reaches a multiple of this.
const COMMITTED_SAVE_EVERY: u64 = 256;

/// How many decoded entries the cache holds at most.
const ENTRY_CACHE_MAX: usize = 1024;

/// Decoded entries by index, each exactly what the store holds at that index.
#[derive(Debug, Default)]
struct EntryCache {
    entries: BTreeMap<u64, Entry>,
}

impl EntryCache {
    /// These entries are now in the store at their indexes.
    fn insert(&mut self, entries: &[Entry]) {
        for e in entries {
            self.entries.insert(e.get_log_id().index, e.clone());
        }
        // The oldest go first: replication reads forward.
        while self.entries.len() > ENTRY_CACHE_MAX {
            self.entries.pop_first();
        }
    }

    /// Entries `from..to`, if every one of them is cached.
    fn get(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        let want = usize::try_from(to.checked_sub(from)?).ok()?;
        let found: Vec<Entry> = self.entries.range(from..to).map(|(_, e)| e.clone()).collect();
        (found.len() == want).then_some(found)
    }

    /// Entries at `from..` were removed.
    fn truncated(&mut self, from: u64) {
        self.entries.split_off(&from);
    }

    /// Entries at `..=to` were removed.
    fn purged(&mut self, to: u64) {
        self.entries = self.entries.split_off(&(to + 1));
    }
}

/// The log store; clones share the same storage, flusher and entry cache.
#[derive(Debug, Clone)]
pub struct LogStore<K: Kv> {
    kv: K,
    flusher: tokio::sync::mpsc::UnboundedSender<Appended>,
    cache: Arc<Mutex<EntryCache>>,
    bug: Bug,
    /// How many truncations this store has made (shared by its clones).
    truncations: Arc<AtomicU64>,
    /// A replication reader: the truncation count when its leader made it (`None` for
    /// the store itself). A leader never truncates its own log, so a count that moved
    /// means the leader stepped down and the reader's sends are stale.
    reader_of: Option<u64>,
}

/// An append waiting for its flush: openraft's callback and the last entry it wrote.
type Appended = (LogFlushed<TypeConfig>, Option<LogId>);

/// Complete queued append callbacks, one fsync per group.
async fn flusher<K: Kv>(kv: K, mut queue: tokio::sync::mpsc::UnboundedReceiver<Appended>) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while let Ok(more) = queue.try_recv() {
            group.push(more);
        }
        let result = kv.flush().await.map_err(|e| e.to_string());
        tracing::trace!(group = group.len(), "log flushed");
        for (callback, last) in group {
            if let (Ok(()), Some(last)) = (&result, last) {
                promise(Promise::Appended(last)).await;
            }
            callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

pub(crate) fn io_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn read_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl<K: Kv> LogStore<K> {
    /// A log store on `kv`; spawns its flusher task on the current tokio runtime.
    pub fn new(kv: K) -> LogStore<K> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        crate::runtime::spawn(flusher(kv.clone(), rx));
        LogStore {
            kv,
            flusher: tx,
            cache: Arc::default(),
            bug: Bug::None,
            truncations: Arc::default(),
            reader_of: None,
        }
    }

    /// The same store with a planted storage bug (the simulator's).
    pub fn with_bug(mut self, bug: Bug) -> LogStore<K> {
        self.bug = bug;
        self
    }

    /// The cache, locked. Readers hold it across their store read and the insert of what
    /// they decoded, and writers update it after their store write, so a read racing a
    /// write never leaves a stale entry behind.
    fn cache(&self) -> std::sync::MutexGuard<'_, EntryCache> {
        self.cache.lock().expect("entry cache lock")
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.kv.get(Tree::Meta, key).map_err(read_logs_err)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(encoding::decode(&bytes).map_err(read_logs_err)?)),
        }
    }

    /// Remove the entries up to `index` (inclusive), durably if `sync`.
    async fn remove_through(&self, index: u64, sync: bool) -> Result<(), StorageError> {
        match self.kv.remove_range(Tree::Log, &u64_key(0), Some(&u64_key(index + 1))) {
            Ok(()) => self.cache().purged(index),
            Err(e) => {
                *self.cache() = EntryCache::default();
                return Err(write_logs_err(e));
            }
        }
        if sync {
            self.kv.flush().await.map_err(write_logs_err)?;
        }
        Ok(())
    }

    /// Index of the last entry, if any.
    pub fn last_index(&self) -> Result<Option<u64>, StorageError> {
        Ok(self.kv.last(Tree::Log).map_err(read_logs_err)?.map(|(k, _)| key_u64(&k)))
    }
}

impl<K: Kv> RaftLogReader<TypeConfig> for LogStore<K> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(n) => *n,
            Bound::Excluded(n) => n + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(n) => Some(n + 1),
            Bound::Excluded(n) => Some(*n),
            Bound::Unbounded => None,
        };
        // An empty (or inverted) range holds nothing; the key-value stores refuse an
        // inverted one.
        if to.is_some_and(|to| to <= from) {
            return Ok(Vec::new());
        }
        let mut cache = self.cache();
        if let Some(entries) = to.and_then(|to| cache.get(from, to)) {
            return Ok(entries);
        }
        let to_key = to.map(u64_key);
        let pairs = self
            .kv
            .range(Tree::Log, &u64_key(from), to_key.as_ref().map(|k| &k[..]), usize::MAX)
            .map_err(read_logs_err)?;
        let entries: Vec<Entry> = pairs
            .into_iter()
            .map(|(_, v)| encoding::decode(&v).map_err(read_logs_err))
            .collect::<Result<_, _>>()?;
        cache.insert(&entries);
        Ok(entries)
    }

    /// Replication's read: the entries from `start` on, without a gap, or none.
    ///
    /// openraft 0.9.25 may replay a replication read of a range it has purged since (a
    /// send retried to a follower that was down, whose range no longer blocked the purge).
    /// Entries that do not begin at `start` would make an AppendEntries whose entries do
    /// not follow its `prev_log_id`, on which the receiver's openraft asserts and stops for
    /// good (the simulator found a host's learner stopped so, seed 1159). None makes
    /// openraft send a heartbeat at `prev_log_id` instead; from that answer it sees the
    /// purge and sends a snapshot.
    ///
    /// Nothing either from the reader of a leader that has stepped down since (this store
    /// truncated): openraft 0.9.25 lets such a stream retry a send, and it read the new
    /// term's entries now at those indexes and sent them after its own term's
    /// `prev_log_id`. A learner took them, holding an entry no quorum ever had below them,
    /// and applied that entry (the simulator found it, seed 4389: a host's replica
    /// diverged from the cluster's state).
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        if self.reader_of.is_some_and(|at| at != self.truncations.load(Ordering::Acquire)) {
            return Ok(Vec::new());
        }
        let mut entries = self.try_get_log_entries(start..end).await?;
        let following = entries.iter().zip(start..).take_while(|(e, i)| e.get_log_id().index == *i).count();
        entries.truncate(following);
        Ok(entries)
    }
}

impl<K: Kv> RaftLogStorage<TypeConfig> for LogStore<K> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.meta(LAST_PURGED_KEY)?;
        if let Some(purged) = last_purged {
            // A purge records its point before it removes the entries, and a crash can
            // come between the two: finish it, so the log starts right after the point.
            let leftover = self.kv.first(Tree::Log).map_err(read_logs_err)?;
            if leftover.is_some_and(|(k, _)| key_u64(&k) <= purged.index) {
                self.remove_through(purged.index, true).await?;
            }
        }
        let last = match self.kv.last(Tree::Log).map_err(read_logs_err)? {
            Some((_, v)) => Some(*encoding::decode::<Entry>(&v).map_err(read_logs_err)?.get_log_id()),
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    /// A reader for one replication stream of a leader (openraft 0.9 asks for one only
    /// there): it serves replication only while this store has not truncated since.
    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogStore { reader_of: Some(self.truncations.load(Ordering::Acquire)), ..self.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote_err = |e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e);
        self.kv.put(Tree::Meta, VOTE_KEY, &encoding::encode(vote)).map_err(vote_err)?;
        if self.bug != Bug::VoteUnsynced {
            self.kv.flush().await.map_err(vote_err)?;
        }
        promise(Promise::Vote(*vote)).await;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        match self.kv.get(Tree::Meta, VOTE_KEY).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))? {
            None => Ok(None),
            Some(b) => {
                Ok(Some(encoding::decode(&b).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))?))
            }
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Only a hint for restarts (openraft learns the commit index from the leader
        // anyway), so it is written every COMMITTED_SAVE_EVERY entries, not every round:
        // each sled write costs the hot path.
        let due = committed.is_some_and(|c| c.index % COMMITTED_SAVE_EVERY == 0);
        if due {
            self.kv.put(Tree::Meta, COMMITTED_KEY, &encoding::encode(&committed)).map_err(write_logs_err)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta::<Option<LogId>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let pairs: Vec<_> =
            entries.iter().map(|e| (u64_key(e.get_log_id().index).to_vec(), encoding::encode(e))).collect();
        // In order, not atomic: none of these count until the flush below completes the
        // callback, and a crash before it may keep any prefix, as with any unflushed append.
        match self.kv.put_in_order(Tree::Log, pairs) {
            Ok(()) => self.cache().insert(&entries),
            Err(e) => {
                *self.cache() = EntryCache::default();
                return Err(write_logs_err(e));
            }
        }
        let last = entries.last().map(|e| *e.get_log_id());
        if self.bug == Bug::AppendUnsynced {
            if let Some(last) = last {
                promise(Promise::Appended(last)).await;
            }
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        if let Err(returned) = self.flusher.send((callback, last)) {
            // The flusher is gone only when the runtime is shutting down: flush here.
            let result = self.kv.flush().await.map_err(|e| std::io::Error::other(e.to_string()));
            let (callback, _) = returned.0;
            callback.log_io_completed(result);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Before the entries go: a reader that reads the new ones must see the count moved.
        self.truncations.fetch_add(1, Ordering::AcqRel);
        let removed = self.kv.remove_range(Tree::Log, &u64_key(log_id.index), None);
        match removed {
            Ok(()) => self.cache().truncated(log_id.index),
            Err(e) => {
                *self.cache() = EntryCache::default();
                return Err(write_logs_err(e));
            }
        }
        self.kv.flush().await.map_err(write_logs_err)?;
        promise(Promise::Truncated(log_id.index)).await;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The point first, then the removal: sled keeps a prefix of its writes in a crash,
        // so the entries are never gone while the point still says they are there (a
        // crash in between leaves entries at or below the point, which the next start
        // removes: `get_log_state`).
        self.kv.put(Tree::Meta, LAST_PURGED_KEY, &encoding::encode(&log_id)).map_err(write_logs_err)?;
        self.remove_through(log_id.index, self.bug != Bug::PurgeUnsynced).await?;
        promise(Promise::Purged(log_id)).await;
        Ok(())
    }
}
