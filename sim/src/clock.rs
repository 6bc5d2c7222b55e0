//! Simulated clocks. All time is tokio's paused clock, which only moves when every task
//! waits; each node reads wall-clock time through its own skew, which faults change.
//! Raft's timers and hostd's durations (shutdown timeouts, the hypervisor's delays) run
//! on the monotonic clock, as in production, so skew and jumps reach what a node reads
//! from the wall clock: the time a leader stamps on the events it decides.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// Wall-clock time at the start of every run: 2027-01-15, a fixed point so traces repeat.
pub const EPOCH_MS: u64 = 1_800_000_000_000;

/// Every node's clock.
#[derive(Debug, Clone)]
pub struct Clocks {
    start: Instant,
    skew_ms: Arc<Mutex<BTreeMap<u64, i64>>>,
}

impl Clocks {
    pub fn new() -> Clocks {
        Clocks { start: Instant::now(), skew_ms: Arc::default() }
    }

    /// Simulated milliseconds since the run began (no skew).
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Monotonic time as hosts measure durations (timeouts, the hypervisor's delays):
    /// no skew, no jumps, as `Instant` in production.
    pub fn monotonic_ms(&self) -> u64 {
        EPOCH_MS + self.elapsed_ms()
    }

    /// Node `node`'s wall clock.
    pub fn now_ms(&self, node: u64) -> u64 {
        let skew = self.skew_ms.lock().expect("clock lock").get(&node).copied().unwrap_or(0);
        (EPOCH_MS + self.elapsed_ms()).saturating_add_signed(skew)
    }

    /// Move node `node`'s wall clock by `delta_ms` (a skew or a jump).
    pub fn shift(&self, node: u64, delta_ms: i64) {
        *self.skew_ms.lock().expect("clock lock").entry(node).or_default() += delta_ms;
    }
}

impl Default for Clocks {
    fn default() -> Self {
        Clocks::new()
    }
}
