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

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// How to take back one write not yet made durable.
#[derive(Debug)]
enum Undo {
    /// The key (`Disk::undo_keys[from..to]`) held this value before (`None`: absent).
    Put { tree: Tree, from: usize, to: usize, old: Option<Vec<u8>> },
    /// These pairs were removed.
    Removed(Tree, Map),
}

#[derive(Debug, Default)]
struct Disk {
    /// The current view: what is durable plus everything written since the last flush,
    /// one map per tree (indexed by `Tree as usize`).
    current: [Map; Tree::ALL.len()],
    /// The writes since the last flush, as the way back to what is durable: a crash
    /// undoes them newest first, a flush forgets them. (Cheaper than keeping a second,
    /// durable copy of every tree: a write is made once, not once now and again at the
    /// flush, and a crash touches only what was not flushed.)
    undo: Vec<Undo>,
    /// The keys of the undone puts, end to end (one buffer rather than a copy each).
    undo_keys: Vec<u8>,
    fail_writes: bool,
    flushes: u64,
    /// How long an fsync takes (the simulator's fsync lag), in tokio time.
    flush_delay_ms: u64,
}

impl Disk {
    fn tree(&mut self, tree: Tree) -> &mut Map {
        &mut self.current[tree as usize]
    }

    fn put(&mut self, tree: Tree, pairs: Vec<Pair>) {
        for (k, v) in pairs {
            let from = self.undo_keys.len();
            self.undo_keys.extend_from_slice(&k);
            let old = self.tree(tree).insert(k, v);
            self.undo.push(Undo::Put { tree, from, to: self.undo_keys.len(), old });
        }
    }

    fn remove_range(&mut self, tree: Tree, from: &[u8], to: Option<&[u8]>) {
        let t = self.tree(tree);
        // `t` keeps what lies before `from`; `removed` gets `from..to`; what lies from `to`
        // on goes back into `t`.
        let mut removed = t.split_off(from);
        if let Some(to) = to {
            let mut after = removed.split_off(to);
            t.append(&mut after);
        }
        if !removed.is_empty() {
            self.undo.push(Undo::Removed(tree, removed));
        }
    }

    /// Take back every write since the last flush, newest first.
    fn undo_all(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Put { tree, from, to, old: Some(old) } => {
                    let k = self.undo_keys[from..to].to_vec();
                    self.tree(tree).insert(k, old);
                }
                Undo::Put { tree, from, to, old: None } => {
                    let k = &self.undo_keys[from..to];
                    self.current[tree as usize].remove(k);
                }
                Undo::Removed(tree, mut pairs) => self.tree(tree).append(&mut pairs),
            }
        }
        self.undo_keys.clear();
    }

    /// Everything written so far is durable.
    fn forget_undo(&mut self) {
        self.undo.clear();
        self.undo_keys.clear();
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
        self.disk.lock().expect("disk lock").undo_all();
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

    fn write(&self, f: impl FnOnce(&mut Disk)) -> Result<(), KvError> {
        let mut d = self.disk.lock().expect("disk lock");
        if d.fail_writes {
            return Err(KvError::Injected);
        }
        f(&mut d);
        Ok(())
    }

    fn read<T>(&self, tree: Tree, f: impl FnOnce(&Map) -> T) -> T {
        let d = self.disk.lock().expect("disk lock");
        f(&d.current[tree as usize])
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
        self.write(|d| d.put(tree, pairs))
    }

    fn remove_range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>) -> Result<(), KvError> {
        self.write(|d| d.remove_range(tree, from, to))
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
        d.forget_undo();
        d.flushes += 1;
        Ok(())
    }
}
