//! Protects: nothing storage told openraft was durable is missing after a crash (the
//! brief's "an acknowledged write lost after any crash").
//!
//! Every replica's storage makes a [`Promise`] at each durability boundary (vote saved,
//! entries acknowledged, truncation, purge point, snapshot stored). The watch records
//! them per replica and, during the chaos, draws from its own seeded stream whether the
//! replica crashes right there ("buggify": a crash at a random moment almost never lands
//! just after one particular step). When a replica starts again, what its disk holds must
//! cover every promise it made.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use raft::durability::{Durable, Promise, Promised};
use raft::type_config::NodeId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One crash in this many at each kind of boundary, while crash points are armed. Votes,
/// truncations, purges and snapshots are rare in a run; appends come by the thousand.
const CRASH_ONE_IN_VOTE: u32 = 12;
const CRASH_ONE_IN_APPEND: u32 = 300;
const CRASH_ONE_IN_OTHER: u32 = 4;

#[derive(Debug)]
struct Inner {
    promised: BTreeMap<NodeId, Promised>,
    /// Replicas that may crash at a boundary, while armed.
    crashable: BTreeSet<NodeId>,
    armed: bool,
    /// Replicas that stopped at a boundary, with the promise they stopped after.
    crashed: Vec<(NodeId, Promise)>,
    rng: ChaCha8Rng,
}

/// The simulator's side of `raft::durability`; clones share it. Installed on the
/// simulation's thread for the length of one run (`world::run` removes it after).
#[derive(Debug, Clone)]
pub struct DurabilityWatch {
    inner: Rc<RefCell<Inner>>,
}

impl DurabilityWatch {
    /// Watch this thread's promises; crash points drawn from `seed`.
    pub fn install(seed: u64, crashable: impl IntoIterator<Item = NodeId>) -> DurabilityWatch {
        let inner = Rc::new(RefCell::new(Inner {
            promised: BTreeMap::new(),
            crashable: crashable.into_iter().collect(),
            armed: false,
            crashed: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }));
        let watch = DurabilityWatch { inner: inner.clone() };
        raft::durability::observe(Some(Box::new(move |node, p| {
            let mut w = inner.borrow_mut();
            w.promised.entry(node).or_default().record(p);
            // One crash at a time: a replica already stopped makes no more promises.
            if !w.armed || !w.crashable.contains(&node) || w.crashed.iter().any(|(n, _)| *n == node) {
                return false;
            }
            let one_in = match p {
                Promise::Vote(_) => CRASH_ONE_IN_VOTE,
                Promise::Appended(_) => CRASH_ONE_IN_APPEND,
                _ => CRASH_ONE_IN_OTHER,
            };
            let crash = w.rng.gen_range(0..one_in) == 0;
            if crash {
                w.crashed.push((node, p.clone()));
            }
            crash
        })));
        watch
    }

    /// Draw crash points (during the chaos) or not.
    pub fn arm(&self, armed: bool) {
        self.inner.borrow_mut().armed = armed;
    }

    /// Replicas that stopped at a boundary since the last call, to be crashed now.
    pub fn take_crashed(&self) -> Vec<(NodeId, Promise)> {
        std::mem::take(&mut self.inner.borrow_mut().crashed)
    }

    /// Replica `node` starts on a disk that holds `durable`: the promises it does not
    /// keep. They are forgotten either way (what the disk holds is the new baseline).
    pub fn check_restart(&self, node: NodeId, durable: &Durable) -> Option<String> {
        let mut w = self.inner.borrow_mut();
        let promised = w.promised.remove(&node)?;
        promised.broken_by(durable)
    }
}
