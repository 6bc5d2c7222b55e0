//! The replicated state machine: openraft's `RaftStateMachine` over the pure core.
//!
//! Applying a log entry runs `controlplane::apply_proposal_in_term` (the entry's term
//! voids a proposal that holds only in another) on the in-memory [`State`] and records the resulting envelopes in the [`Archive`]. The state itself is made
//! durable by snapshots: a restart loads the latest snapshot and openraft re-applies the
//! log after it (archive writes are keyed by seq, so re-applying rewrites the same
//! records). Before a snapshot is stored, the archive is flushed, so compacting the log
//! behind the snapshot never loses an event.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use controlplane::{apply_proposal_in_term, codec, State};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftLogId};
use tokio::sync::watch;

use crate::archive::Archive;
use crate::durability::{promise, Promise};
use crate::encoding;
use crate::kv::{Kv, Tree};
use crate::log_store::io_err;
use crate::proposer::Bug;
use crate::telemetry::RecentTraces;
use crate::type_config::{
    ApplyResult, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

pub(crate) const SNAPSHOT_META_KEY: &[u8] = b"snapshot_meta";
pub(crate) const SNAPSHOT_DATA_KEY: &[u8] = b"snapshot_data";

/// What the rest of the node reads: the applied state and where it stands.
#[derive(Debug)]
pub struct Shared {
    pub state: RwLock<State>,
    applied: RwLock<(Option<LogId>, StoredMembership)>,
    /// The last applied sequence number, for waiters.
    pub applied_seq: watch::Sender<u64>,
    /// The traces of recently applied proposals, by resource (while traces are on).
    pub traces: RecentTraces,
}

impl Shared {
    pub fn last_applied(&self) -> Option<LogId> {
        self.applied.read().expect("applied lock").0
    }

    pub fn membership(&self) -> StoredMembership {
        self.applied.read().expect("applied lock").1.clone()
    }
}

/// Called with the last log index of every snapshot once it is durable.
#[derive(Clone)]
pub struct SnapshotHook(pub Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for SnapshotHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotHook")
    }
}

/// The state machine; cheap to clone (shared state, shared storage).
#[derive(Debug, Clone)]
pub struct StateMachine<K: Kv> {
    kv: K,
    shared: Arc<Shared>,
    archive: Archive<K>,
    snapshot_counter: Arc<std::sync::atomic::AtomicU64>,
    on_snapshot: Option<SnapshotHook>,
    bug: Bug,
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Snapshot(None), verb, e)
}

impl<K: Kv> StateMachine<K> {
    /// Open the state machine: the latest stored snapshot, or the empty state.
    pub fn open(kv: K, checkpoint_every: u64) -> Result<StateMachine<K>, StorageError> {
        StateMachine::open_with_archive(kv.clone(), kv, checkpoint_every)
    }

    /// Open with the archive on its own store, so the raft log's fsyncs do not carry
    /// archive writes (the archive is flushed before every snapshot instead).
    pub fn open_with_archive(
        kv: K,
        archive_kv: K,
        checkpoint_every: u64,
    ) -> Result<StateMachine<K>, StorageError> {
        let (state, applied) =
            match kv.get(Tree::Meta, SNAPSHOT_META_KEY).map_err(|e| snap_err(ErrorVerb::Read, e))? {
                None => (State::new(), (None, StoredMembership::default())),
                Some(meta_bytes) => {
                    let meta: SnapshotMeta =
                        encoding::decode(&meta_bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
                    let data = kv
                        .get(Tree::Meta, SNAPSHOT_DATA_KEY)
                        .map_err(|e| snap_err(ErrorVerb::Read, e))?
                        .ok_or_else(|| {
                            snap_err(ErrorVerb::Read, std::io::Error::other("snapshot data missing"))
                        })?;
                    let state: State = codec::decode(&data).map_err(|e| snap_err(ErrorVerb::Read, e))?;
                    (state, (meta.last_log_id, meta.last_membership))
                }
            };
        let (applied_seq, _) = watch::channel(state.last_seq());
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            applied: RwLock::new(applied),
            applied_seq,
            traces: RecentTraces::default(),
        });
        Ok(StateMachine {
            archive: Archive::new(archive_kv, checkpoint_every),
            kv,
            shared,
            snapshot_counter: Arc::default(),
            on_snapshot: None,
            bug: Bug::None,
        })
    }

    /// The same state machine with a planted storage bug (the simulator's).
    pub fn with_bug(mut self, bug: Bug) -> StateMachine<K> {
        self.bug = bug;
        self
    }

    /// Call `hook` after every snapshot is stored.
    pub fn with_snapshot_hook(mut self, hook: SnapshotHook) -> StateMachine<K> {
        self.on_snapshot = Some(hook);
        self
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    pub fn archive(&self) -> Archive<K> {
        self.archive.clone()
    }

    async fn store_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let w = |e| snap_err(ErrorVerb::Write, e);
        // Archive records up to the snapshot must be durable before the log behind the
        // snapshot may be purged.
        self.archive.flush().await.map_err(w)?;
        self.kv.put(Tree::Meta, SNAPSHOT_DATA_KEY, data).map_err(w)?;
        self.kv.put(Tree::Meta, SNAPSHOT_META_KEY, &encoding::encode(meta)).map_err(w)?;
        if self.bug != Bug::SnapshotUnsynced {
            self.kv.flush().await.map_err(w)?;
        }
        promise(Promise::Snapshot(meta.last_log_id)).await;
        if let (Some(hook), Some(last)) = (&self.on_snapshot, meta.last_log_id) {
            (hook.0)(last.index);
        }
        Ok(())
    }
}

impl<K: Kv> StateMachine<K> {
    /// The span of one traced proposal's apply, continuing the trace it carries (none for
    /// an untraced one, or while traces are off).
    fn apply_span(&self, proposal: &controlplane::Proposal, index: u64) -> tracing::Span {
        match proposal.trace {
            Some(parent) if crate::telemetry::on() => {
                let span = tracing::info_span!(
                    "apply",
                    request_id = %proposal.request_id,
                    raft.index = index,
                    events = proposal.events.len(),
                    trace_id = tracing::field::Empty,
                );
                crate::telemetry::continue_from(&span, &parent);
                span
            }
            _ => tracing::Span::none(),
        }
    }
}

impl<K: Kv> RaftSnapshotBuilder<TypeConfig> for StateMachine<K> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (data, last_log_id, last_membership) = {
            // Both locks together, so the state and its position agree.
            let state = self.shared.state.read().expect("state lock");
            let applied = self.shared.applied.read().expect("applied lock");
            (codec::encode(&*state), applied.0, applied.1.clone())
        };
        let n = self.snapshot_counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("empty-{n}"),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        self.store_snapshot(&meta, &data).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl<K: Kv> RaftStateMachine<TypeConfig> for StateMachine<K> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.shared.applied.read().expect("applied lock").clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        for entry in entries {
            let log_id = *entry.get_log_id();
            let result = match entry.payload {
                EntryPayload::Blank => ApplyResult::Internal,
                EntryPayload::Membership(m) => {
                    self.shared.applied.write().expect("applied lock").1 =
                        StoredMembership::new(Some(log_id), m);
                    ApplyResult::Internal
                }
                EntryPayload::Normal(batch) => {
                    let mut outcomes = Vec::with_capacity(batch.0.len());
                    let mut envelopes = Vec::new();
                    {
                        let mut state = self.shared.state.write().expect("state lock");
                        for proposal in batch.0.iter() {
                            let before = state.last_seq();
                            let span = self.apply_span(proposal, log_id.index);
                            let (outcome, mut produced) = span.in_scope(|| {
                                apply_proposal_in_term(&mut state, proposal, log_id.leader_id.term)
                            });
                            if let Some(parent) = crate::telemetry::current_of(&span) {
                                for e in &produced {
                                    self.shared.traces.note(e.event.subject(), parent);
                                }
                            }
                            // Checkpoints are rare; the state is encoded under the lock only
                            // when one is due.
                            self.archive
                                .checkpoint(&state, before, false)
                                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
                            envelopes.append(&mut produced);
                            outcomes.push(outcome);
                        }
                    }
                    // One archive write for the whole entry.
                    self.archive.record(log_id.index, &envelopes).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                    ApplyResult::Batch(outcomes)
                }
            };
            self.shared.applied.write().expect("applied lock").0 = Some(log_id);
            results.push(result);
        }
        let seq = self.shared.state.read().expect("state lock").last_seq();
        self.shared.applied_seq.send_replace(seq);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: State = codec::decode(&data).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        // The events between the archive's end and the snapshot are not applied here: note
        // the hole (the backfill task fetches them) and checkpoint the snapshot's state.
        // Both are flushed with the archive before the snapshot is stored.
        // What is archived or already noted missing: a hole still being filled holds some
        // events (a backfill that stopped part way), and the new hole must not overlap it
        // (filling one would drop the other's events; the simulator found an archive left
        // without events no hole named).
        let archived =
            self.archive.bounds().map_err(|e| snap_err(ErrorVerb::Read, e))?.map_or(0, |(_, last)| last);
        let noted = self.archive.holes().map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let archived = noted.iter().map(|(_, to)| *to).fold(archived, u64::max);
        let seq = state.last_seq();
        if archived < seq {
            self.archive.note_hole(archived + 1, seq).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        }
        self.archive.checkpoint(&state, 0, true).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.store_snapshot(meta, &data).await?;
        {
            let mut s = self.shared.state.write().expect("state lock");
            let mut a = self.shared.applied.write().expect("applied lock");
            *s = state;
            *a = (meta.last_log_id, meta.last_membership.clone());
        }
        self.shared.applied_seq.send_replace(seq);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let r = |e| snap_err(ErrorVerb::Read, e);
        let Some(meta_bytes) = self.kv.get(Tree::Meta, SNAPSHOT_META_KEY).map_err(r)? else {
            return Ok(None);
        };
        let meta: SnapshotMeta = encoding::decode(&meta_bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let data = self.kv.get(Tree::Meta, SNAPSHOT_DATA_KEY).map_err(r)?.unwrap_or_default();
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
