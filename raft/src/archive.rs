//! The event archive: every applied event with its sequence number, raft index, time,
//! principal and request id, indexed by resource, with a state checkpoint every
//! `checkpoint_every` events (more rarely when the state is large: see
//! [`CHECKPOINT_BYTES_PER_EVENT`]). It is never compacted with the raft log, so history outlives
//! compaction: the state at any past sequence number is the nearest checkpoint at or
//! before it plus a replay of the events after it.
//!
//! Events are stored in **blocks**: the events one log entry produced (or one run of
//! backfilled events), consecutive, in one record keyed by the last one's seq. One record
//! per entry instead of one per event halves the archive's writes under load (the
//! resource index still has a key per event and resource).
//!
//! A replica that installs a snapshot skips the events between its archive's end and the
//! snapshot: it writes a checkpoint at the snapshot and notes the **hole**. The backfill
//! task (`backfill`) fetches the missing events from another replica, checks them by
//! replaying them from the state before the hole to the checkpoint after it, and only
//! then closes the hole; so every replica's archive ends up complete.

use controlplane::model::ResourceKey;
use controlplane::{apply, codec, EventEnvelope, State};

use crate::kv::{key_u64, u64_key, Kv, KvError, Pair, Tree};

/// One archived event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedEvent {
    pub raft_index: u64,
    pub envelope: EventEnvelope,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("storage")]
    Kv(#[from] KvError),
    #[error("damaged record at seq {seq}")]
    Codec { seq: u64, source: codec::CodecError },
    #[error("event {0} is missing from the archive")]
    Gap(u64),
    #[error("record at seq {0} is too short")]
    Short(u64),
    #[error("seq {asked} is beyond the last applied event {last}")]
    Future { asked: u64, last: u64 },
    #[error("events {from}..={to} do not replay to the checkpoint at {to}")]
    Mismatch { from: u64, to: u64 },
    #[error("no checkpoint at seq {0} to check a backfill against")]
    NoCheckpoint(u64),
}

/// Meta-tree key prefix of the holes: `hole` ++ first seq (big-endian) → last seq.
const HOLE_PREFIX: &[u8] = b"hole";

fn hole_key(from: u64) -> Vec<u8> {
    let mut k = HOLE_PREFIX.to_vec();
    k.extend_from_slice(&u64_key(from));
    k
}

/// Most events one query returns.
pub const ARCHIVE_QUERY_LIMIT_MAX: usize = 10_000;
/// Most blocks read at a time while gathering events.
const BLOCKS_PER_READ_MAX: usize = 64;

/// One event in a block: raft index (u64), length (u32), the codec-encoded envelope.
fn append_record(block: &mut Vec<u8>, raft_index: u64, e: &EventEnvelope) {
    block.extend_from_slice(&raft_index.to_be_bytes());
    let at = block.len();
    block.extend_from_slice(&[0; 4]);
    codec::encode_into(e, block);
    let len = u32::try_from(block.len() - at - 4).expect("an event under 4 GiB");
    block[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Events between checkpoints, at the least, per this many bytes of the last checkpoint.
///
/// A checkpoint is the whole state, so with a fixed interval its cost per event grows with
/// the state: a cluster of 100,000 domains spent a fifth of a replica's CPU encoding and
/// writing checkpoints every 10,000 events. The interval therefore doubles (from
/// `checkpoint_every`) until it spans at least one event per this many bytes of the last
/// checkpoint, which bounds a checkpoint's cost per event (a few µs here) whatever the
/// state's size. The replay behind `state_at` grows with it but stays comparable to
/// decoding the checkpoint itself (here ~8 ns per byte to decode, ~1.3 µs per event to read
/// and apply), so the worst `state_at` stays within a small multiple of one decode.
/// Intervals are power-of-two multiples of `checkpoint_every`, so checkpoints stay on its
/// multiples.
pub const CHECKPOINT_BYTES_PER_EVENT: u64 = 256;

/// The archive on a [`Kv`].
#[derive(Debug, Clone)]
pub struct Archive<K: Kv> {
    kv: K,
    checkpoint_every: u64,
    /// Events between checkpoints now, set from the size of each checkpoint written
    /// (`checkpoint_every` until this process writes one).
    interval: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Index key: the resource's display form, a NUL, then the seq (big-endian).
fn index_key(resource: &ResourceKey, seq: u64) -> Vec<u8> {
    let mut k = index_prefix_with_room(resource, 8);
    k.extend_from_slice(&u64_key(seq));
    k
}

fn index_prefix(resource: &ResourceKey) -> Vec<u8> {
    index_prefix_with_room(resource, 0)
}

/// The resource's display form and a NUL, with `room` bytes to spare.
fn index_prefix_with_room(resource: &ResourceKey, room: usize) -> Vec<u8> {
    let mut k = match resource {
        // The common kinds, "<kind> <name>", written without the formatting machinery.
        ResourceKey::Host(name)
        | ResourceKey::Domain(name)
        | ResourceKey::Network(name)
        | ResourceKey::Pool(name) => {
            let kind = resource.kind().as_str();
            let mut k = Vec::with_capacity(kind.len() + 1 + name.len() + 1 + room);
            k.extend_from_slice(kind.as_bytes());
            k.push(b' ');
            k.extend_from_slice(name.as_bytes());
            k
        }
        _ => resource.to_string().into_bytes(),
    };
    k.push(0);
    k
}

impl<K: Kv> Archive<K> {
    pub fn new(kv: K, checkpoint_every: u64) -> Archive<K> {
        assert!(checkpoint_every > 0, "checkpoints need a positive interval");
        Archive { kv, checkpoint_every, interval: std::sync::Arc::new(checkpoint_every.into()) }
    }

    /// Events between checkpoints now: `checkpoint_every`, doubled until it spans one
    /// event per [`CHECKPOINT_BYTES_PER_EVENT`] bytes of the last checkpoint.
    pub fn checkpoint_interval(&self) -> u64 {
        self.interval.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The sequence number of the nearest checkpoint at or before `seq`.
    pub fn checkpoint_at_or_before(&self, seq: u64) -> Result<Option<u64>, ArchiveError> {
        Ok(self.kv.floor(Tree::Checkpoints, &u64_key(seq))?.map(|(k, _)| key_u64(&k)))
    }

    /// Record the envelopes one log entry produced. Writing the same entry again (after a
    /// restart re-applies the log) rewrites identical records.
    pub fn record(&self, raft_index: u64, envelopes: &[EventEnvelope]) -> Result<(), KvError> {
        self.write(envelopes.iter().map(|e| (raft_index, e)))?;
        metrics::counter!(crate::metrics::ARCHIVE_EVENTS_TOTAL).increment(envelopes.len() as u64);
        Ok(())
    }

    fn write<'a>(&self, records: impl Iterator<Item = (u64, &'a EventEnvelope)>) -> Result<(), KvError> {
        let mut blocks: Vec<Pair> = Vec::new();
        let mut index = Vec::new();
        // The block being built: its value and its last seq.
        let mut block: Option<(Vec<u8>, u64)> = None;
        for (raft_index, e) in records {
            if block.as_ref().is_some_and(|(_, last)| e.seq != last + 1) {
                let (value, last) = block.take().expect("checked above");
                blocks.push((u64_key(last).to_vec(), value));
            }
            let (value, last) = block.get_or_insert_with(|| (Vec::with_capacity(256), e.seq));
            append_record(value, raft_index, e);
            *last = e.seq;
            index.push((index_key(&e.event.subject(), e.seq), Vec::new()));
            for r in e.event.related() {
                index.push((index_key(&r, e.seq), Vec::new()));
            }
            if matches!(e.event, controlplane::Event::MigrationStarted { .. }) {
                index.push((index_key(&ResourceKey::Migration(e.seq), e.seq), Vec::new()));
            }
        }
        if let Some((value, last)) = block {
            blocks.push((u64_key(last).to_vec(), value));
        }
        if blocks.is_empty() {
            return Ok(());
        }
        // Not atomic: after a crash the log after the last snapshot is applied again and
        // rewrites these records (the same blocks: one per log entry), and the archive is
        // flushed before any snapshot lets the log behind it go.
        self.kv.put_in_order(Tree::Events, blocks)?;
        self.kv.put_in_order(Tree::Index, index)
    }

    /// Note that events `from..=to` are missing (a snapshot was installed over them).
    pub fn note_hole(&self, from: u64, to: u64) -> Result<(), KvError> {
        assert!(from <= to, "a hole holds at least one event");
        self.kv.put(Tree::Meta, &hole_key(from), &u64_key(to))
    }

    /// Every hole, earliest first.
    pub fn holes(&self) -> Result<Vec<(u64, u64)>, ArchiveError> {
        self.holes_up_to(usize::MAX)
    }

    /// The earliest hole, if any.
    pub fn first_hole(&self) -> Result<Option<(u64, u64)>, ArchiveError> {
        Ok(self.holes_up_to(1)?.first().copied())
    }

    /// The first `limit` holes as (first seq, last seq).
    fn holes_up_to(&self, limit: usize) -> Result<Vec<(u64, u64)>, ArchiveError> {
        let mut end = HOLE_PREFIX.to_vec();
        *end.last_mut().expect("non-empty prefix") += 1;
        let found = self.kv.range(Tree::Meta, HOLE_PREFIX, Some(&end), limit)?;
        Ok(found.iter().map(|(k, v)| (key_u64(&k[HOLE_PREFIX.len()..]), key_u64(v))).collect())
    }

    /// Start filling the hole `from..=to` afresh: drop what an earlier, unfinished fill
    /// wrote there. (A fill writes each batch as one block; a later fill may cut its
    /// batches elsewhere, and a block it writes must not overlap one left behind.)
    pub fn begin_backfill(&self, from: u64, to: u64) -> Result<(), KvError> {
        self.kv.remove_range(Tree::Events, &u64_key(from), Some(&u64_key(to + 1)))
    }

    /// Write backfilled events (part of a hole, in order, after [`Archive::begin_backfill`]);
    /// [`Archive::close_hole`] checks them once the hole is full.
    pub fn backfill(&self, events: &[ArchivedEvent]) -> Result<(), KvError> {
        self.write(events.iter().map(|e| (e.raft_index, &e.envelope)))
    }

    /// Check the hole `from..=to` now that it is filled: replaying its events from the
    /// state before it must give the checkpoint written at its end. Closes it if so.
    pub fn close_hole(&self, from: u64, to: u64) -> Result<(), ArchiveError> {
        let before = self.replay_to(from - 1)?;
        let after = self.replay_from(before, to)?;
        let checkpoint =
            self.kv.get(Tree::Checkpoints, &u64_key(to))?.ok_or(ArchiveError::NoCheckpoint(to))?;
        let expected: State =
            codec::decode(&checkpoint).map_err(|source| ArchiveError::Codec { seq: to, source })?;
        if controlplane::state_hash(&after) != controlplane::state_hash(&expected) {
            return Err(ArchiveError::Mismatch { from, to });
        }
        // A snapshot installed while this hole was being filled may have widened it (the
        // same first seq, a later end): what is filled and checked stays, the rest remains
        // a hole (noted before the old one goes, so a crash leaves both, never neither).
        let end = self.kv.get(Tree::Meta, &hole_key(from))?.map(|v| key_u64(&v));
        if let Some(end) = end.filter(|end| *end > to) {
            self.note_hole(to + 1, end)?;
        }
        self.kv.remove_range(Tree::Meta, &hole_key(from), Some(&hole_key(from + 1)))?;
        Ok(())
    }

    /// Write a checkpoint of `state` if one is due (when its seq crosses a multiple of
    /// [`Archive::checkpoint_interval`]), or unconditionally with `force` (after installing
    /// a snapshot).
    pub fn checkpoint(&self, state: &State, previous_seq: u64, force: bool) -> Result<(), KvError> {
        let seq = state.last_seq();
        let interval = self.checkpoint_interval();
        let due = seq / interval > previous_seq / interval;
        if (due || force) && seq > 0 {
            let bytes = codec::encode(state);
            self.kv.put(Tree::Checkpoints, &u64_key(seq), &bytes)?;
            metrics::counter!(crate::metrics::ARCHIVE_CHECKPOINTS_TOTAL).increment(1);
            let mut interval = self.checkpoint_every;
            while interval.saturating_mul(CHECKPOINT_BYTES_PER_EVENT) < bytes.len() as u64
                && interval < u64::MAX / 2
            {
                interval *= 2;
            }
            self.interval.store(interval, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Decode one record of [`Archive::raw_events`]: a block of consecutive events, keyed
    /// by the last one's seq.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Vec<ArchivedEvent>, ArchiveError> {
        if key.len() != 8 {
            return Err(ArchiveError::Short(0));
        }
        let last = key_u64(key);
        let mut out = Vec::new();
        let mut rest = value;
        while !rest.is_empty() {
            if rest.len() < 12 {
                return Err(ArchiveError::Short(last));
            }
            let raft_index = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            let len = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
            let Some(bytes) = rest.get(12..12 + len) else { return Err(ArchiveError::Short(last)) };
            let envelope: EventEnvelope =
                codec::decode(bytes).map_err(|source| ArchiveError::Codec { seq: last, source })?;
            if let Some(previous) = out.last().map(|e: &ArchivedEvent| e.envelope.seq) {
                if envelope.seq != previous + 1 {
                    return Err(ArchiveError::Gap(previous + 1));
                }
            }
            out.push(ArchivedEvent { raft_index, envelope });
            rest = &rest[12 + len..];
        }
        match out.last() {
            Some(e) if e.envelope.seq == last => Ok(out),
            _ => Err(ArchiveError::Short(last)),
        }
    }

    /// Make every archive write so far durable.
    pub async fn flush(&self) -> Result<(), KvError> {
        self.kv.flush().await
    }

    /// Events with `seq >= from_seq`, at most `limit` (capped).
    pub fn events(&self, from_seq: u64, limit: usize) -> Result<Vec<ArchivedEvent>, ArchiveError> {
        let limit = limit.min(ARCHIVE_QUERY_LIMIT_MAX);
        let mut out = Vec::new();
        // The first block whose last seq is at least `from_seq` holds it (or what follows
        // it). Blocks are read one, then two, four… at a time, so a point lookup decodes
        // one block and a long read few round trips.
        let mut next_key = from_seq;
        let mut page = 1;
        while out.len() < limit {
            let pairs = self.kv.range(Tree::Events, &u64_key(next_key), None, page)?;
            let Some((k, _)) = pairs.last() else { break };
            next_key = key_u64(k).saturating_add(1);
            for (k, v) in &pairs {
                let events = Self::decode(k, v)?;
                out.extend(events.into_iter().filter(|e| e.envelope.seq >= from_seq));
            }
            if pairs.len() < page {
                break;
            }
            page = (page * 2).min(BLOCKS_PER_READ_MAX);
        }
        out.truncate(limit);
        Ok(out)
    }

    /// The archive's records as stored (key, value), from the one that holds `from_seq`
    /// (or the first after it), at most `limit` (capped); each is a block of consecutive
    /// events keyed by its last seq, which [`Archive::decode`] reads.
    pub fn raw_events(&self, from_seq: u64, limit: usize) -> Result<Vec<Pair>, ArchiveError> {
        let limit = limit.min(ARCHIVE_QUERY_LIMIT_MAX);
        Ok(self.kv.range(Tree::Events, &u64_key(from_seq), None, limit)?)
    }

    /// The sequence numbers of the events about `resource`, from `from_seq`, at most `limit`.
    pub fn seqs_for(
        &self,
        resource: &ResourceKey,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, ArchiveError> {
        let limit = limit.min(ARCHIVE_QUERY_LIMIT_MAX);
        let prefix = index_prefix(resource);
        let mut end = prefix.clone();
        *end.last_mut().expect("prefix ends with NUL") = 1;
        let pairs = self.kv.range(Tree::Index, &index_key(resource, from_seq), Some(&end), limit)?;
        Ok(pairs.iter().map(|(k, _)| key_u64(&k[prefix.len()..])).collect())
    }

    /// The first and last archived sequence numbers.
    pub fn bounds(&self) -> Result<Option<(u64, u64)>, ArchiveError> {
        let first = match self.kv.first(Tree::Events)? {
            Some((k, v)) => Self::decode(&k, &v)?.first().map(|e| e.envelope.seq),
            None => None,
        };
        let last = self.kv.last(Tree::Events)?.map(|(k, _)| key_u64(&k));
        Ok(first.zip(last))
    }

    /// The state right after event `seq` (0: the empty state).
    pub fn state_at(&self, seq: u64, last_applied_seq: u64) -> Result<State, ArchiveError> {
        if seq > last_applied_seq {
            return Err(ArchiveError::Future { asked: seq, last: last_applied_seq });
        }
        self.replay_to(seq)
    }

    /// Nearest checkpoint at or before `seq`, then the events after it up to `seq`.
    fn replay_to(&self, seq: u64) -> Result<State, ArchiveError> {
        let state = match self.kv.floor(Tree::Checkpoints, &u64_key(seq))? {
            Some((k, v)) => {
                let at = key_u64(&k);
                codec::decode::<State>(&v).map_err(|source| ArchiveError::Codec { seq: at, source })?
            }
            None => State::new(),
        };
        self.replay_from(state, seq)
    }

    /// `state` with the archived events after it applied, up to `seq`.
    fn replay_from(&self, mut state: State, seq: u64) -> Result<State, ArchiveError> {
        let mut next = state.last_seq() + 1;
        while next <= seq {
            let want = usize::try_from(seq - next + 1).unwrap_or(usize::MAX);
            let batch = self.events(next, want)?;
            if batch.is_empty() {
                return Err(ArchiveError::Gap(next));
            }
            for e in &batch {
                if e.envelope.seq != next {
                    return Err(ArchiveError::Gap(next));
                }
                apply(&mut state, &e.envelope);
                next += 1;
            }
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_mem::MemKv;

    fn envelope(seq: u64) -> EventEnvelope {
        EventEnvelope {
            seq,
            time_ms: 1_000 + seq,
            principal: "test".into(),
            request_id: format!("r{seq}"),
            event: controlplane::Event::DomainUndefined { name: format!("vm{seq}") },
        }
    }

    fn seqs(events: &[ArchivedEvent]) -> Vec<u64> {
        events.iter().map(|e| e.envelope.seq).collect()
    }

    #[test]
    fn each_entry_is_one_block_and_reads_start_anywhere_inside_one() {
        let archive = Archive::new(MemKv::new(), 100);
        let first: Vec<_> = (1..=5).map(envelope).collect();
        let second: Vec<_> = (6..=6).map(envelope).collect();
        let third: Vec<_> = (7..=9).map(envelope).collect();
        archive.record(10, &first).unwrap();
        archive.record(11, &second).unwrap();
        archive.record(12, &third).unwrap();
        let raw = archive.raw_events(1, usize::MAX).unwrap();
        let keys: Vec<u64> = raw.iter().map(|(k, _)| key_u64(k)).collect();
        assert_eq!(keys, [5, 6, 9], "one record per entry, keyed by its last seq");
        assert_eq!(seqs(&archive.events(1, usize::MAX).unwrap()), (1..=9).collect::<Vec<_>>());
        assert_eq!(seqs(&archive.events(3, 2).unwrap()), [3, 4]);
        assert_eq!(seqs(&archive.events(4, 4).unwrap()), [4, 5, 6, 7]);
        assert_eq!(seqs(&archive.events(9, 10).unwrap()), [9]);
        assert!(archive.events(10, 10).unwrap().is_empty());
        let e = &archive.events(8, 1).unwrap()[0];
        assert_eq!((e.raft_index, &e.envelope), (12, &envelope(8)));
        assert_eq!(archive.bounds().unwrap(), Some((1, 9)));
        // Rewriting an entry (a restart applies the log again) changes nothing.
        archive.record(11, &second).unwrap();
        assert_eq!(archive.raw_events(1, usize::MAX).unwrap(), raw);
    }

    #[test]
    fn a_backfill_with_a_gap_is_stored_as_separate_runs() {
        let archive = Archive::new(MemKv::new(), 100);
        let events: Vec<ArchivedEvent> = [3, 4, 7]
            .into_iter()
            .map(|seq| ArchivedEvent { raft_index: seq * 10, envelope: envelope(seq) })
            .collect();
        archive.backfill(&events).unwrap();
        let keys: Vec<u64> = archive.raw_events(0, 10).unwrap().iter().map(|(k, _)| key_u64(k)).collect();
        assert_eq!(keys, [4, 7]);
        assert_eq!(archive.events(0, 10).unwrap(), events);
        assert_eq!(archive.bounds().unwrap(), Some((3, 7)));
    }

    #[test]
    fn a_fill_started_again_does_not_overlap_what_an_unfinished_one_left() {
        // Found by the simulator: a first fill got only part of a hole (one block, 3..=5);
        // a later one got it whole (one block, 3..=9), and reads then saw 3..=5 twice.
        let archive = Archive::new(MemKv::new(), 100);
        archive.record(1, &[envelope(1), envelope(2)]).unwrap();
        archive.note_hole(3, 9).unwrap();
        let batch = |r: std::ops::RangeInclusive<u64>| -> Vec<ArchivedEvent> {
            r.map(|seq| ArchivedEvent { raft_index: seq, envelope: envelope(seq) }).collect()
        };
        archive.begin_backfill(3, 9).unwrap();
        archive.backfill(&batch(3..=5)).unwrap();
        archive.begin_backfill(3, 9).unwrap();
        archive.backfill(&batch(3..=9)).unwrap();
        assert_eq!(seqs(&archive.events(1, 100).unwrap()), (1..=9).collect::<Vec<_>>());
        // Events after the hole are kept.
        archive.record(10, &[envelope(10)]).unwrap();
        archive.begin_backfill(3, 9).unwrap();
        assert_eq!(seqs(&archive.events(1, 100).unwrap()), [1, 2, 10]);
    }

    #[test]
    fn a_damaged_block_is_an_error_not_fewer_events() {
        let archive = Archive::new(MemKv::new(), 100);
        archive.record(1, &(1..=3).map(envelope).collect::<Vec<_>>()).unwrap();
        let (k, v) = archive.raw_events(1, 1).unwrap().remove(0);
        assert!(Archive::<MemKv>::decode(&k, &v[..v.len() - 3]).is_err(), "cut short");
        assert!(Archive::<MemKv>::decode(&u64_key(4), &v).is_err(), "key names another last seq");
        assert!(Archive::<MemKv>::decode(&k, &[]).is_err(), "empty");
        assert_eq!(Archive::<MemKv>::decode(&k, &v).unwrap().len(), 3);
    }

    #[test]
    fn index_prefixes_are_the_display_form_and_a_nul() {
        let keys = [
            ResourceKey::Host("h1".into()),
            ResourceKey::Domain("web".into()),
            ResourceKey::Network("lan".into()),
            ResourceKey::Pool("default".into()),
            ResourceKey::Volume(controlplane::model::VolumeRef::new("default", "disk")),
            ResourceKey::Snapshot { domain: "web".into(), name: "s1".into() },
            ResourceKey::Migration(7),
        ];
        for key in keys {
            let mut expected = key.to_string().into_bytes();
            expected.push(0);
            assert_eq!(index_prefix(&key), expected);
            expected.extend_from_slice(&u64_key(42));
            assert_eq!(index_key(&key, 42), expected);
        }
    }
}
