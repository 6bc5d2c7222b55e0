//! Protects: **history reproduces today, on every replica.** Each replica's event archive
//! is complete (holes left by snapshot installs have been backfilled) and replaying it
//! from the first event gives the live state; replicas' archives agree event for event.

use controlplane::{apply, state_hash, EventEnvelope, State};
use raft::archive::{Archive, ArchiveError};
use raft::kv_mem::MemKv;
use raft::type_config::NodeId;

/// One replica's archive, read once for both checks.
#[derive(Debug)]
pub struct ReadArchive {
    pub id: NodeId,
    /// The earliest hole, if any.
    pub hole: Result<Option<(u64, u64)>, ArchiveError>,
    /// Every archived event from seq 1 on, in order.
    pub events: Result<Vec<EventEnvelope>, ArchiveError>,
}

impl ReadArchive {
    pub fn read(id: NodeId, archive: &Archive<MemKv>) -> ReadArchive {
        ReadArchive { id, hole: archive.first_hole(), events: all_events(archive, 1) }
    }
}

/// Every archived event from `from_seq` on, in order.
fn all_events(archive: &Archive<MemKv>, from_seq: u64) -> Result<Vec<EventEnvelope>, ArchiveError> {
    let mut out: Vec<EventEnvelope> = Vec::new();
    loop {
        let next = out.last().map_or(from_seq, |e| e.seq + 1);
        let batch = archive.events(next, 4096)?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(batch.into_iter().map(|e| e.envelope));
    }
}

/// Replay one replica's archive and compare with its live state.
pub fn check_replica(archive: &ReadArchive, live: &State) -> Vec<String> {
    let (id, last) = (archive.id, live.last_seq());
    if let Ok(Some((from, to))) = archive.hole {
        return vec![format!("replica {id}: the archive still misses events {from}..={to}")];
    }
    let events = match &archive.events {
        Ok(e) => e,
        Err(e) => return vec![format!("replica {id}: reading the archive: {e}")],
    };
    let mut replayed = State::new();
    for (expected, e) in (1..).zip(events) {
        if e.seq != expected {
            return vec![format!("replica {id}: the archive skips from seq {expected} to {}", e.seq)];
        }
        apply(&mut replayed, e);
    }
    // Compared as states (as their hashes would be: equal states encode alike); hashed
    // only to report a difference.
    if replayed != *live {
        return vec![format!(
            "replica {id}: replaying the archive gives state {} at seq {}, the live state is {} at seq {last}",
            state_hash(&replayed),
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
        for e in theirs {
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
