//! [`Kv`] on sled 0.34: one sled tree per [`Tree`]; `flush` is sled's fsync.

use std::path::Path;

use crate::kv::{Kv, KvError, Pair, Tree};

/// A sled database with Drover's trees.
#[derive(Clone, Debug)]
pub struct SledKv {
    db: sled::Db,
    trees: [sled::Tree; 5],
}

impl SledKv {
    pub fn open(path: &Path) -> Result<SledKv, KvError> {
        // Durability comes from explicit flushes; sled's own background flush stays on as a
        // backstop but acknowledgements never rely on it.
        let db = sled::Config::new().path(path).flush_every_ms(Some(1000)).open()?;
        let open = |t: Tree| db.open_tree(t.name());
        let trees = [
            open(Tree::Log)?,
            open(Tree::Meta)?,
            open(Tree::Events)?,
            open(Tree::Index)?,
            open(Tree::Checkpoints)?,
        ];
        Ok(SledKv { db, trees })
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[Tree::ALL.iter().position(|x| *x == t).expect("every tree is opened")]
    }
}

fn pair((k, v): (sled::IVec, sled::IVec)) -> Pair {
    (k.to_vec(), v.to_vec())
}

impl Kv for SledKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.tree(tree).get(key)?.map(|v| v.to_vec()))
    }

    fn put_batch(&self, tree: Tree, pairs: Vec<Pair>) -> Result<(), KvError> {
        if let [(k, v)] = &pairs[..] {
            // One insert is atomic by itself; a sled batch would cost two IO-buffer writes.
            self.tree(tree).insert(&k[..], &v[..])?;
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, v) in pairs {
            batch.insert(k, v);
        }
        self.tree(tree).apply_batch(batch)?;
        Ok(())
    }

    /// Plain inserts. sled recovers its log as a prefix in write order, so a crash keeps
    /// a prefix of these. (`apply_batch` makes sled seal and write its IO buffer before
    /// and after the batch, each write followed by `sync_file_range(WAIT)` on sled's IO
    /// threads: two synchronous disk writes per batch, which were most of a replica's
    /// disk traffic when every log append and archive record was a batch.)
    fn put_in_order(&self, tree: Tree, pairs: Vec<Pair>) -> Result<(), KvError> {
        let t = self.tree(tree);
        for (k, v) in pairs {
            t.insert(k, v)?;
        }
        Ok(())
    }

    fn remove_range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>) -> Result<(), KvError> {
        let t = self.tree(tree);
        let mut batch = sled::Batch::default();
        let keys: Vec<sled::IVec> = match to {
            Some(to) => t.range(from..to).keys().collect::<Result<_, _>>()?,
            None => t.range(from..).keys().collect::<Result<_, _>>()?,
        };
        for k in keys {
            batch.remove(k);
        }
        t.apply_batch(batch)?;
        Ok(())
    }

    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, KvError> {
        let t = self.tree(tree);
        let iter = match to {
            Some(to) => t.range(from..to),
            None => t.range(from..),
        };
        Ok(iter.take(limit).map(|r| r.map(pair)).collect::<Result<_, _>>()?)
    }

    fn floor(&self, tree: Tree, key: &[u8]) -> Result<Option<Pair>, KvError> {
        Ok(self.tree(tree).range(..=key).next_back().transpose()?.map(pair))
    }

    fn first(&self, tree: Tree) -> Result<Option<Pair>, KvError> {
        Ok(self.tree(tree).first()?.map(pair))
    }

    fn last(&self, tree: Tree) -> Result<Option<Pair>, KvError> {
        Ok(self.tree(tree).last()?.map(pair))
    }

    async fn flush(&self) -> Result<(), KvError> {
        self.db.flush_async().await?;
        Ok(())
    }
}
