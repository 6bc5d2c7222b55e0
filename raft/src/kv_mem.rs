//! [`Kv`] in memory, for the simulator and tests, with an explicit fsync model.
//!
//! Every write lands in a volatile layer; `flush` makes the volatile layer durable.
//! [`MemKv::crash`] throws the volatile layer away, which is exactly what a power loss
//! does to writes that were not fsynced. [`MemKv::fail_writes`] makes writes return an
//! error, as a full or failing disk would; [`MemKv::set_flush_delay_ms`] makes fsyncs slow.
//! Clones share the same disk.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use crate::kv::{Kv, KvError, Pair, Tree};

type Trees = BTreeMap<Tree, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A write not yet made durable.
#[derive(Debug)]
enum Op {
    Put(Tree, Vec<Pair>),
    RemoveRange(Tree, Vec<u8>, Option<Vec<u8>>),
}

#[derive(Debug, Default)]
struct Disk {
    durable: Trees,
    /// The current view: durable plus everything written since the last flush.
    current: Trees,
    /// The writes since the last flush, replayed onto `durable` by the next flush.
    pending: Vec<Op>,
    fail_writes: bool,
    flushes: u64,
    /// How long an fsync takes (the simulator's fsync lag), in tokio time.
    flush_delay_ms: u64,
}

fn put(trees: &mut Trees, tree: Tree, pairs: Vec<Pair>) {
    trees.entry(tree).or_default().extend(pairs);
}

fn remove_range(trees: &mut Trees, tree: Tree, from: &[u8], to: Option<&[u8]>) {
    let t = trees.entry(tree).or_default();
    let keys: Vec<Vec<u8>> = t.range::<[u8], _>(bounds(from, to)).map(|(k, _)| k.clone()).collect();
    for k in keys {
        t.remove(&k);
    }
}

/// An in-memory disk shared by its clones.
#[derive(Clone, Debug, Default)]
pub struct MemKv {
    disk: Arc<Mutex<Disk>>,
}

impl MemKv {
    pub fn new() -> MemKv {
        MemKv::default()
    }

    /// Lose everything not flushed, as a power loss would.
    pub fn crash(&self) {
        let mut d = self.disk.lock().expect("disk lock");
        d.current = d.durable.clone();
        d.pending.clear();
    }

    /// Make every write fail (true) or succeed again (false).
    pub fn fail_writes(&self, fail: bool) {
        self.disk.lock().expect("disk lock").fail_writes = fail;
    }

    /// Make every flush take `ms` milliseconds (tokio time) before it makes anything
    /// durable; writes made meanwhile are still lost by a crash until a flush covers them.
    pub fn set_flush_delay_ms(&self, ms: u64) {
        self.disk.lock().expect("disk lock").flush_delay_ms = ms;
    }

    /// How many flushes (fsyncs) have happened.
    pub fn flushes(&self) -> u64 {
        self.disk.lock().expect("disk lock").flushes
    }

    fn write(&self, op: Op) -> Result<(), KvError> {
        let mut d = self.disk.lock().expect("disk lock");
        if d.fail_writes {
            return Err(KvError::Injected);
        }
        match &op {
            Op::Put(tree, pairs) => put(&mut d.current, *tree, pairs.clone()),
            Op::RemoveRange(tree, from, to) => remove_range(&mut d.current, *tree, from, to.as_deref()),
        }
        d.pending.push(op);
        Ok(())
    }

    fn read<T>(&self, tree: Tree, f: impl FnOnce(&BTreeMap<Vec<u8>, Vec<u8>>) -> T) -> T {
        let d = self.disk.lock().expect("disk lock");
        match d.current.get(&tree) {
            Some(t) => f(t),
            None => f(&BTreeMap::new()),
        }
    }
}

fn bounds<'a>(from: &'a [u8], to: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (Bound::Included(from), to.map_or(Bound::Unbounded, Bound::Excluded))
}

impl Kv for MemKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.read(tree, |t| t.get(key).cloned()))
    }

    fn put_batch(&self, tree: Tree, pairs: Vec<Pair>) -> Result<(), KvError> {
        self.write(Op::Put(tree, pairs))
    }

    fn remove_range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>) -> Result<(), KvError> {
        self.write(Op::RemoveRange(tree, from.to_vec(), to.map(<[u8]>::to_vec)))
    }

    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, KvError> {
        Ok(self.read(tree, |t| {
            t.range::<[u8], _>(bounds(from, to)).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect()
        }))
    }

    fn floor(&self, tree: Tree, key: &[u8]) -> Result<Option<Pair>, KvError> {
        Ok(self.read(tree, |t| {
            t.range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
                .next_back()
                .map(|(k, v)| (k.clone(), v.clone()))
        }))
    }

    fn first(&self, tree: Tree) -> Result<Option<Pair>, KvError> {
        Ok(self.read(tree, |t| t.iter().next().map(|(k, v)| (k.clone(), v.clone()))))
    }

    fn last(&self, tree: Tree) -> Result<Option<Pair>, KvError> {
        Ok(self.read(tree, |t| t.iter().next_back().map(|(k, v)| (k.clone(), v.clone()))))
    }

    async fn flush(&self) -> Result<(), KvError> {
        let delay_ms = self.disk.lock().expect("disk lock").flush_delay_ms;
        if delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        }
        let mut d = self.disk.lock().expect("disk lock");
        if d.fail_writes {
            return Err(KvError::Injected);
        }
        let pending = std::mem::take(&mut d.pending);
        for op in pending {
            match op {
                Op::Put(tree, pairs) => put(&mut d.durable, tree, pairs),
                Op::RemoveRange(tree, from, to) => remove_range(&mut d.durable, tree, &from, to.as_deref()),
            }
        }
        d.flushes += 1;
        Ok(())
    }
}
