//! Protects: **a caller without the rights changes nothing.** Clients send some of their
//! writes as intruders ([`INTRUDER`]): a viewer, or a host acting for no host of the
//! cluster, whose rights allow no write. None of those writes is acknowledged, and no
//! replica's archive holds an event of theirs.

use crate::history::{Op, Outcome};
use crate::invariants::archive_replay::ReadArchive;

/// How an intruder's principal begins.
pub const INTRUDER: &str = "intruder-";

pub fn check(ops: &[Op], archives: &[ReadArchive]) -> Vec<String> {
    let mut found = Vec::new();
    for op in ops.iter().filter(|op| op.principal.starts_with(INTRUDER)) {
        if let Outcome::Acked(c) = &op.outcome {
            found.push(format!(
                "{} {} ({}) was acknowledged as {c:?}",
                op.principal, op.request_id, op.command
            ));
        }
    }
    for archive in archives {
        let Ok(events) = &archive.events else { continue };
        if let Some(e) = events.iter().find(|e| e.principal.starts_with(INTRUDER)) {
            found.push(format!(
                "replica {} committed seq {} ({}) for {} {}",
                archive.id,
                e.seq,
                e.event.kind(),
                e.principal,
                e.request_id
            ));
        }
    }
    found
}
