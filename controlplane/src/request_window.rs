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
/// map is rebuilt on decode and never iterated. Two windows are equal when their lists
/// are (the lookup map follows from the list), so comparing and encoding one walk the
/// list in order without a lookup per entry.
#[derive(Debug, Clone, Default)]
pub struct RequestWindow {
    /// (key, answer) in commit order, oldest first.
    order: VecDeque<(String, Committed)>,
    /// Where each key is in `order`, counted from the first entry this window ever held
    /// (`order[i]` is at `evicted + i`).
    positions: HashMap<String, u64>,
    /// Entries evicted from the front so far.
    evicted: u64,
}

impl PartialEq for RequestWindow {
    fn eq(&self, other: &RequestWindow) -> bool {
        self.order == other.order
    }
}

impl Eq for RequestWindow {}

impl Serialize for RequestWindow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.order.iter().map(|(k, c)| (k, c)))
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
            let at = window.order.len() as u64;
            if window.positions.insert(k.clone(), at).is_some() {
                return Err(serde::de::Error::custom("request window lists a request twice"));
            }
            window.order.push_back((k, c));
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
        let at = self.positions.get(&key(principal, request_id))?;
        let (_, committed) = &self.order[(at - self.evicted) as usize];
        Some(*committed)
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
        if let Some((_, entry)) = self.order.back_mut().filter(|(k, _)| is_key(k, principal, request_id)) {
            assert_eq!(entry.last_seq + 1, seq, "events of one request are contiguous");
            entry.last_seq = seq;
            return;
        }
        let k = key(principal, request_id);
        let at = self.evicted + self.order.len() as u64;
        let previous = self.positions.insert(k.clone(), at);
        assert!(previous.is_none(), "request {request_id:?} of {principal:?} applied twice");
        self.order.push_back((k, Committed { first_seq: seq, last_seq: seq }));
        while self.order.len() > REQUEST_WINDOW_MAX {
            let (oldest, _) = self.order.pop_front().expect("window is not empty");
            self.positions.remove(&oldest);
            self.evicted += 1;
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
    fn a_decoded_window_equals_the_original_and_answers_alike_after_evictions() {
        let mut w = RequestWindow::default();
        for i in 0..REQUEST_WINDOW_MAX as u64 + 10 {
            w.record("carol", &format!("r{i}"), i + 1);
        }
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&w, config).expect("encodes");
        let (decoded, _): (RequestWindow, usize) =
            bincode::serde::decode_from_slice(&bytes, config).expect("decodes");
        assert_eq!(decoded, w);
        assert_eq!(bincode::serde::encode_to_vec(&decoded, config).expect("encodes"), bytes);
        for id in ["r0", "r9", "r10", "r11", "r65545"] {
            assert_eq!(decoded.get("carol", id), w.get("carol", id), "{id}");
        }
        assert_eq!(w.get("carol", "r9"), None);
        assert_eq!(w.get("carol", "r10"), Some(Committed { first_seq: 11, last_seq: 11 }));
        let mut other = decoded.clone();
        other.record("dave", "x", REQUEST_WINDOW_MAX as u64 + 11);
        assert_ne!(other, w);
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
