//! Protects: **history reproduces today, on every replica.** Each replica's event archive
//! is complete (holes left by snapshot installs have been backfilled) and replaying it
//! from the first event gives the live state; replicas' archives agree event for event.

use controlplane::{apply, state_hash, EventEnvelope, State};
use std::rc::Rc;

use raft::archive::{Archive, ArchiveError};
use raft::kv::{key_u64, Pair};
use raft::kv_mem::MemKv;
use raft::type_config::NodeId;

/// One replica's archive, read once for both checks.
#[derive(Debug)]
pub struct ReadArchive {
    pub id: NodeId,
    /// The earliest hole, if any.
    pub hole: Result<Option<(u64, u64)>, ArchiveError>,
    /// Every archived record from seq 1 on, as stored.
    raw: Result<Vec<Pair>, String>,
    /// The same, decoded.
    pub events: Result<Rc<Vec<EventEnvelope>>, String>,
    /// `events` replayed from seq 1 (or why they could not be read).
    replay: Result<Rc<Replay>, String>,
}

/// Replaying events from seq 1: the state, or where they skip (seq expected, seq found).
type Replay = Result<State, (u64, u64)>;

fn replay(events: &[EventEnvelope]) -> Replay {
    let mut replayed = State::new();
    for (expected, e) in (1..).zip(events) {
        if e.seq != expected {
            return Err((expected, e.seq));
        }
        apply(&mut replayed, e);
    }
    Ok(replayed)
}

impl ReadArchive {
    /// Read replica `id`'s archive. Records stored byte for byte as in an archive read
    /// before (`earlier`) decode and replay alike, so they are decoded and replayed once.
    pub fn read(id: NodeId, archive: &Archive<MemKv>, earlier: &[ReadArchive]) -> ReadArchive {
        let raw = all_records(archive).map_err(|e| e.to_string());
        let same = match &raw {
            Ok(records) => earlier.iter().find(|r| r.raw.as_ref().is_ok_and(|theirs| theirs == records)),
            Err(_) => None,
        };
        let (events, replayed) = match (&raw, same) {
            (Err(e), _) => (Err(e.clone()), Err(e.clone())),
            (Ok(_), Some(same)) => (same.events.clone(), same.replay.clone()),
            (Ok(records), None) => {
                let events = records
                    .iter()
                    .map(|(k, v)| Archive::<MemKv>::decode(k, v))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|blocks| blocks.into_iter().flatten().map(|e| e.envelope).collect::<Vec<_>>())
                    .map(Rc::new)
                    .map_err(|e| e.to_string());
                let replayed = events.as_ref().map(|e| Rc::new(replay(e))).map_err(Clone::clone);
                (events, replayed)
            }
        };
        ReadArchive { id, hole: archive.first_hole(), raw, events, replay: replayed }
    }
}

/// Every archived record from seq 1 on, in order, as stored.
fn all_records(archive: &Archive<MemKv>) -> Result<Vec<Pair>, ArchiveError> {
    let mut out: Vec<Pair> = Vec::new();
    loop {
        let next = match out.last() {
            None => 1,
            Some((k, _)) if k.len() == 8 => key_u64(k) + 1,
            // A damaged key: decoding reports it.
            Some(_) => return Ok(out),
        };
        let batch = archive.raw_events(next, 4096)?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(batch);
    }
}

/// Replay one replica's archive and compare with its live state.
pub fn check_replica(archive: &ReadArchive, live: &State) -> Vec<String> {
    let (id, last) = (archive.id, live.last_seq());
    if let Ok(Some((from, to))) = archive.hole {
        return vec![format!("replica {id}: the archive still misses events {from}..={to}")];
    }
    let replayed = match archive.replay.as_deref().map(|r| r.as_ref()) {
        Ok(Ok(state)) => state,
        Ok(Err((expected, found))) => {
            return vec![format!("replica {id}: the archive skips from seq {expected} to {found}")]
        }
        Err(e) => return vec![format!("replica {id}: reading the archive: {e}")],
    };
    // Compared as states (as their hashes would be: equal states encode alike); hashed
    // only to report a difference.
    if *replayed != *live {
        return vec![format!(
            "replica {id}: replaying the archive gives state {} at seq {}, the live state is {} at seq {last}",
            state_hash(replayed),
            replayed.last_seq(),
            state_hash(live)
        )];
    }
    Vec::new()
}

/// Every event two archives both hold is the same event.
pub fn check_agree(archives: &[ReadArchive]) -> Vec<String> {
    let mut found = Vec::new();
    let Some((first, rest)) = archives.split_first() else { return found };
    let Ok(reference) = &first.events else { return found };
    for other in rest {
        let Ok(theirs) = &other.events else { continue };
        let mut mine = reference.iter().peekable();
        for e in theirs.iter() {
            while mine.peek().is_some_and(|m| m.seq < e.seq) {
                mine.next();
            }
            if let Some(m) = mine.peek().filter(|m| m.seq == e.seq) {
                if *m != e {
                    found.push(format!(
                        "seq {}: replica {} archived {:?}, replica {} archived {:?}",
                        e.seq, first.id, m.event, other.id, e.event
                    ));
                    break;
                }
            }
        }
    }
    found
}
