//! The idempotency window: which requests have been committed, and where.
//!
//! A request is known by its principal and request id. The window remembers the last
//! [`REQUEST_WINDOW_MAX`] committed requests that changed something; a retry of one of
//! those gets the first answer instead of a second effect. A retry arriving after its
//! request has been pushed out of the window (65,536 later writes) is decided afresh,
//! which is safe for every command whose second effect is a rejection (defining twice,
//! deleting twice) and a repeat for the rest; clients retry within seconds, far inside it.
//!
//! The window is part of the replicated state and of its hash, and it is rebuilt by
//! replaying events (every envelope carries its principal and request id), so every
//! replica deduplicates identically.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::REQUEST_WINDOW_MAX;
use crate::proposal::Committed;

/// Encoded as the list of (key, answer) in commit order, which is canonical; the lookup
/// map is rebuilt on decode and never iterated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestWindow {
    entries: HashMap<String, Committed>,
    /// Keys in commit order, oldest first.
    order: VecDeque<String>,
}

impl Serialize for RequestWindow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.order.iter().map(|k| (k, &self.entries[k])))
    }
}

impl<'de> Deserialize<'de> for RequestWindow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RequestWindow, D::Error> {
        let list: Vec<(String, Committed)> = Vec::deserialize(deserializer)?;
        if list.len() > REQUEST_WINDOW_MAX {
            return Err(serde::de::Error::custom("request window over its bound"));
        }
        let mut window = RequestWindow::default();
        for (k, c) in list {
            if window.entries.insert(k.clone(), c).is_some() {
                return Err(serde::de::Error::custom("request window lists a request twice"));
            }
            window.order.push_back(k);
        }
        Ok(window)
    }
}

/// Whether `k` is the key of (principal, request_id), without building it.
fn is_key(k: &str, principal: &str, request_id: &str) -> bool {
    k.len() == principal.len() + 1 + request_id.len()
        && k.starts_with(principal)
        && k.as_bytes()[principal.len()] == 0
        && k.ends_with(request_id)
}

fn key(principal: &str, request_id: &str) -> String {
    // Neither part may contain control characters (decide checks), so NUL separates them.
    let mut k = String::with_capacity(principal.len() + 1 + request_id.len());
    k.push_str(principal);
    k.push('\0');
    k.push_str(request_id);
    k
}

impl RequestWindow {
    /// The first answer to this request, if it was committed and is still remembered.
    pub fn get(&self, principal: &str, request_id: &str) -> Option<Committed> {
        self.entries.get(&key(principal, request_id)).copied()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Record that event `seq` belongs to this request. The events of one request are
    /// contiguous; a request id seen earlier and then again later is a broken invariant.
    pub(crate) fn record(&mut self, principal: &str, request_id: &str, seq: u64) {
        if let Some(last) = self.order.back().filter(|k| is_key(k, principal, request_id)) {
            let entry = self.entries.get_mut(last).expect("window order and entries agree");
            assert_eq!(entry.last_seq + 1, seq, "events of one request are contiguous");
            entry.last_seq = seq;
            return;
        }
        let k = key(principal, request_id);
        let previous = self.entries.insert(k.clone(), Committed { first_seq: seq, last_seq: seq });
        assert!(previous.is_none(), "request {request_id:?} of {principal:?} applied twice");
        self.order.push_back(k);
        while self.order.len() > REQUEST_WINDOW_MAX {
            let oldest = self.order.pop_front().expect("window is not empty");
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_contiguous_events_and_evicts_the_oldest() {
        let mut w = RequestWindow::default();
        w.record("alice", "r0", 1);
        w.record("alice", "r0", 2);
        w.record("bob", "r0", 3);
        assert_eq!(w.get("alice", "r0"), Some(Committed { first_seq: 1, last_seq: 2 }));
        assert_eq!(w.get("bob", "r0"), Some(Committed { first_seq: 3, last_seq: 3 }));
        for i in 1..REQUEST_WINDOW_MAX as u64 {
            w.record("carol", &format!("r{i}"), 3 + i);
        }
        assert_eq!(w.len(), REQUEST_WINDOW_MAX);
        assert_eq!(w.get("alice", "r0"), None, "the oldest request left the window");
        assert_eq!(w.get("bob", "r0"), Some(Committed { first_seq: 3, last_seq: 3 }));
    }

    #[test]
    #[should_panic(expected = "applied twice")]
    fn a_request_applied_twice_is_a_broken_invariant() {
        let mut w = RequestWindow::default();
        w.record("alice", "r0", 1);
        w.record("bob", "r1", 2);
        w.record("alice", "r0", 3);
    }
}
