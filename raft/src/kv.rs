//! The storage backend under the raft log, the state machine and the archive: a few
//! ordered key-value trees and an explicit `flush` (fsync).
//!
//! Three implementations: [`crate::kv_wal::WalKv`] (the raft log and its small records,
//! `fdatasync`ed) and [`crate::kv_sled::SledKv`] (snapshots, the archive; `fsync`ed) in
//! production, and [`crate::kv_mem::MemKv`] for the simulator, whose crash model loses
//! everything written since the last flush. Nothing written is durable until `flush`
//! returns.

use std::future::Future;

/// The trees Drover keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    /// Raft log entries by index (big-endian u64).
    Log,
    /// Small records: identity, vote, committed index, purge point, snapshot.
    Meta,
    /// Archived events in blocks of consecutive events, by the last one's sequence number.
    Events,
    /// Archive index: resource key bytes ++ seq → nothing.
    Index,
    /// State checkpoints by sequence number.
    Checkpoints,
}

impl Tree {
    pub const ALL: [Tree; 5] = [Tree::Log, Tree::Meta, Tree::Events, Tree::Index, Tree::Checkpoints];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Log => "log",
            Tree::Meta => "meta",
            Tree::Events => "events",
            Tree::Index => "index",
            Tree::Checkpoints => "checkpoints",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("sled")]
    Sled(#[from] sled::Error),
    #[error("injected write failure")]
    Injected,
    #[error("damaged value: {0}")]
    Damaged(String),
    #[error("{0}")]
    Io(String),
    #[error("tree {0} is not kept in this store")]
    Unsupported(&'static str),
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// An ordered key-value store with trees and explicit durability.
pub trait Kv: Clone + Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Insert or replace every pair, atomically with respect to a crash.
    fn put_batch(&self, tree: Tree, pairs: Vec<Pair>) -> Result<(), KvError>;
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.put_batch(tree, vec![(key.to_vec(), value.to_vec())])
    }
    /// Insert or replace every pair, in order, without atomicity: a crash before the next
    /// `flush` keeps some prefix of them (and of everything written before them). For
    /// writes that are either covered by a later flush before anyone relies on them (log
    /// appends) or rewritten after a crash (archive records re-applied from the log). An
    /// atomic store satisfies this as it is.
    fn put_in_order(&self, tree: Tree, pairs: Vec<Pair>) -> Result<(), KvError> {
        self.put_batch(tree, pairs)
    }
    /// Remove keys in `from..to` (`to` = None: to the end).
    fn remove_range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>) -> Result<(), KvError>;
    /// Pairs in `from..to`, in key order, at most `limit`.
    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, KvError>;
    /// The greatest pair whose key is `<= key`.
    fn floor(&self, tree: Tree, key: &[u8]) -> Result<Option<Pair>, KvError>;
    fn first(&self, tree: Tree) -> Result<Option<Pair>, KvError>;
    fn last(&self, tree: Tree) -> Result<Option<Pair>, KvError>;
    /// Make everything written so far durable.
    fn flush(&self) -> impl Future<Output = Result<(), KvError>> + Send;
}

/// A u64 as an order-preserving key.
pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// The u64 of an order-preserving key.
pub fn key_u64(key: &[u8]) -> u64 {
    let bytes: [u8; 8] = key.try_into().expect("u64 keys are 8 bytes");
    u64::from_be_bytes(bytes)
}
