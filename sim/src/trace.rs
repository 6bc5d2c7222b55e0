//! The run's trace: one line per thing that happened (faults, answers, reports, restarts,
//! replica positions), each stamped with simulated time. Every line goes into a SHA-256
//! whose hex is the trace hash; the same seed must give the same hash, bit for bit.

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

#[derive(Debug)]
struct Inner {
    hasher: Sha256,
    lines: Option<Vec<String>>,
}

/// The trace; clones share it.
#[derive(Debug, Clone)]
pub struct Trace {
    inner: Arc<Mutex<Inner>>,
}

impl Trace {
    /// A trace that keeps its lines only when `keep` is set (it is hashed either way).
    pub fn new(keep: bool) -> Trace {
        Trace { inner: Arc::new(Mutex::new(Inner { hasher: Sha256::new(), lines: keep.then(Vec::new) })) }
    }

    pub fn record(&self, at_ms: u64, line: impl AsRef<str>) {
        let line = format!("{:>7}.{:03} {}", at_ms / 1000, at_ms % 1000, line.as_ref());
        let mut t = self.inner.lock().expect("trace lock");
        t.hasher.update(line.as_bytes());
        t.hasher.update(b"\n");
        if let Some(lines) = t.lines.as_mut() {
            lines.push(line);
        }
    }

    /// The hash of every line so far, as hex.
    pub fn hash(&self) -> String {
        let t = self.inner.lock().expect("trace lock");
        t.hasher.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The kept lines (empty unless kept).
    pub fn lines(&self) -> Vec<String> {
        self.inner.lock().expect("trace lock").lines.clone().unwrap_or_default()
    }
}
