//! Protects: **the history clients observe is linearizable.** Writes commit in an order
//! that respects real time — a write acknowledged before another was sent has the lower
//! sequence number — and a linearizable read returns a state that includes every write
//! acknowledged before the read was sent.
//!
//! The order is checked on the sequence numbers the replicas committed (not the answers
//! the clients got, which `acked_writes` compares), for writes that produced events.

use std::collections::BTreeMap;

use controlplane::State;

use crate::history::{Op, Outcome, Read};

/// `committed`: the final state of a replica holding every acknowledged write.
pub fn check(ops: &[Op], reads: &[Read], committed: &State) -> Vec<String> {
    // (complete time, first seq, last seq, label) of acknowledged writes with events.
    let mut done: Vec<(u64, u64, u64, String)> = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Acked(_)))
        .filter_map(|op| {
            let c = committed.requests().get(&op.principal, &op.request_id)?;
            (c.last_seq >= c.first_seq && c.first_seq > 0).then(|| {
                (op.complete_ms, c.first_seq, c.last_seq, format!("{} {}", op.principal, op.request_id))
            })
        })
        .collect();
    done.sort();
    // For each completion time, the highest seq acknowledged up to then.
    let mut highest: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    let mut running: (u64, String) = (0, String::new());
    for (complete, _, last, label) in &done {
        if *last > running.0 {
            running = (*last, label.clone());
        }
        highest.insert(*complete, running.clone());
    }
    let before = |t: u64| highest.range(..t).next_back().map(|(_, v)| v.clone());
    let mut found = Vec::new();
    let mut seqs: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (_, first, last, label) in &done {
        seqs.insert(label.clone(), (*first, *last));
    }
    // A request sent again under its id (after an unknown outcome) is one operation,
    // invoked when it was first sent.
    let mut invoked: BTreeMap<String, u64> = BTreeMap::new();
    for op in ops {
        let at = invoked.entry(format!("{} {}", op.principal, op.request_id)).or_insert(op.invoke_ms);
        *at = (*at).min(op.invoke_ms);
    }
    for (label, invoke_ms) in &invoked {
        let Some((first, _)) = seqs.get(label) else { continue };
        if let Some((seq, earlier)) = before(*invoke_ms) {
            if *first <= seq {
                found.push(format!(
                    "{label} was sent at {invoke_ms} ms after {earlier} was acknowledged with seq {seq}, yet committed at seq {first}"
                ));
            }
        }
    }
    for read in reads {
        if let Some((seq, earlier)) = before(read.invoke_ms) {
            if read.last_seq < seq {
                found.push(format!(
                    "{} read at {} ms a state at seq {}, missing {earlier} (seq {seq}) acknowledged before",
                    read.reader, read.invoke_ms, read.last_seq
                ));
            }
        }
    }
    found
}
