//! [`Kv`] on sled 0.34: one sled tree per [`Tree`]; `flush` is sled's flush followed by an
//! `fsync` of sled's data file (sled's flush alone only calls `sync_file_range`, and leaves
//! the `fsync` to its background thread: not durable when it returns).
//!
//! **Large values are stored in chunks.** sled keeps a value inside its B-tree leaf, and a
//! leaf (up to 16 entries) is rewritten whole whenever sled consolidates or splits it; a
//! leaf over 128 KiB is written as a separate blob file. A replica's snapshot and the
//! archive's checkpoints are encodings of the whole state (megabytes), so every small write
//! beside them, and every further checkpoint, rewrote several of them at once: under load
//! this was most of a replica's CPU and disk traffic. So a value over [`INLINE_MAX`] bytes
//! is split into [`CHUNK`]-byte pieces in a hidden `chunks` tree, and the tree itself holds
//! a small manifest (generation, length, CRC-32).
//!
//! Every stored value starts with a tag byte: [`TAG_INLINE`] then the value, or
//! [`TAG_CHUNKED`] then the manifest. A chunk's key is the tree's number, the key's length
//! and the key, the generation, and the chunk's number, so a key's chunks sort together
//! and by generation.
//!
//! Crash safety rests on sled recovering a prefix of its writes in order. A large value is
//! written as: remove leftovers of the new generation (from a write that crashed), write its
//! chunks, insert the manifest (one insert, atomic), then remove every other generation of
//! the key. The manifest that survives a crash therefore always finds its chunks: the
//! previous generation is untouched until the new manifest is in place. Every write takes
//! its tree's lock (uncontended but for snapshots), so two writers of one key (openraft
//! builds a snapshot in a task of its own while the state machine may install one) never
//! pick the same generation; a read that finds a chunked value changing under it (its
//! chunks removed by the writer that replaced it) reads the key again under that lock.

use std::path::Path;

use crate::kv::{Kv, KvError, Pair, Tree};

/// The file sled 0.34 keeps its pages in, inside its directory.
const SLED_DATA_FILE: &str = "db";
/// Values longer than this are chunked.
pub const INLINE_MAX: usize = 4096;
/// Size of a chunk (the last may be shorter). 17 chunks (a leaf about to split) stay well
/// under sled's 128 KiB blob threshold.
pub const CHUNK: usize = 4096;
/// Tag of a value stored inline.
const TAG_INLINE: u8 = 0;
/// Tag of a manifest: generation (u64), length (u64), CRC-32 (u32), big-endian.
const TAG_CHUNKED: u8 = 1;
const MANIFEST_LEN: usize = 1 + 8 + 8 + 4;

/// A sled database with Drover's trees.
#[derive(Clone, Debug)]
pub struct SledKv {
    db: sled::Db,
    trees: [sled::Tree; 5],
    chunks: sled::Tree,
    /// Per tree: held by writes that may write or remove chunks.
    locks: std::sync::Arc<[std::sync::Mutex<()>; 5]>,
    /// sled's data file, opened again to `fsync` it: sled's own flush only calls
    /// `sync_file_range`, which neither writes the file's metadata nor flushes the device's
    /// cache (an fsync of any descriptor of the file covers it).
    data_file: std::sync::Arc<std::fs::File>,
}

/// Where a chunked value's pieces are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Manifest {
    generation: u64,
    len: u64,
    crc: u32,
}

impl Manifest {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MANIFEST_LEN);
        v.push(TAG_CHUNKED);
        v.extend_from_slice(&self.generation.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.crc.to_be_bytes());
        v
    }

    /// The manifest in a stored value, if it is one.
    fn decode(stored: &[u8]) -> Option<Manifest> {
        if stored.len() != MANIFEST_LEN || stored[0] != TAG_CHUNKED {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(stored[at..at + 8].try_into().expect("8 bytes"));
        Some(Manifest {
            generation: u64_at(1),
            len: u64_at(9),
            crc: u32::from_be_bytes(stored[17..21].try_into().expect("4 bytes")),
        })
    }
}

fn damaged(tree: Tree, key: &[u8], what: impl std::fmt::Display) -> KvError {
    KvError::Damaged(format!("tree {}, key {:?}: {what}", tree.name(), String::from_utf8_lossy(key)))
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
        let chunks = db.open_tree("chunks")?;
        let data_file = std::fs::File::open(path.join(SLED_DATA_FILE))
            .map_err(|e| KvError::Io(format!("{}: {e}", path.join(SLED_DATA_FILE).display())))?;
        Ok(SledKv { db, trees, chunks, locks: Default::default(), data_file: std::sync::Arc::new(data_file) })
    }

    /// The lock of `t`'s chunked values.
    fn lock(&self, t: Tree) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding it leaves nothing half-done that the next writer could not
        // cope with (leftovers of a generation are cleared before it is written again).
        self.locks[usize::from(Self::tree_number(t))].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tree_number(t: Tree) -> u8 {
        let n = Tree::ALL.iter().position(|x| *x == t).expect("every tree is listed");
        u8::try_from(n).expect("few trees")
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[usize::from(Self::tree_number(t))]
    }

    /// The prefix every chunk of `key` starts with.
    fn chunk_prefix(tree: Tree, key: &[u8]) -> Vec<u8> {
        let len = u16::try_from(key.len()).expect("keys are short");
        let mut p = Vec::with_capacity(3 + key.len() + 12);
        p.push(Self::tree_number(tree));
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(key);
        p
    }

    fn chunk_key(prefix: &[u8], generation: u64, n: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(prefix.len() + 12);
        k.extend_from_slice(prefix);
        k.extend_from_slice(&generation.to_be_bytes());
        k.extend_from_slice(&n.to_be_bytes());
        k
    }

    fn generation_start(prefix: &[u8], generation: u64) -> Vec<u8> {
        Self::chunk_key(prefix, generation, 0)
    }

    /// The keys of one generation's chunks: `from..to`.
    fn generation_range(prefix: &[u8], generation: u64) -> (Vec<u8>, Vec<u8>) {
        (Self::generation_start(prefix, generation), Self::chunk_key(prefix, generation, u32::MAX))
    }

    fn remove_chunks(&self, from: &[u8], to: &[u8]) -> Result<(), KvError> {
        for k in self.chunks.range(from..to).keys() {
            self.chunks.remove(k?)?;
        }
        Ok(())
    }

    /// Remove every chunk of `key` except those of generation `keep`.
    fn remove_other_generations(&self, tree: Tree, key: &[u8], keep: Option<u64>) -> Result<(), KvError> {
        let prefix = Self::chunk_prefix(tree, key);
        let mut end = prefix.clone();
        end.extend_from_slice(&[0xff; 13]);
        match keep {
            None => self.remove_chunks(&prefix, &end),
            Some(g) => {
                self.remove_chunks(&prefix, &Self::generation_start(&prefix, g))?;
                match g.checked_add(1) {
                    Some(next) => self.remove_chunks(&Self::generation_start(&prefix, next), &end),
                    None => Ok(()),
                }
            }
        }
    }

    /// Write `value`'s chunks as the next generation of `key`; the manifest to store.
    fn write_chunks(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<Manifest, KvError> {
        let previous = self.tree(tree).get(key)?.and_then(|v| Manifest::decode(&v));
        let generation = previous.map_or(1, |m| m.generation.wrapping_add(1));
        let prefix = Self::chunk_prefix(tree, key);
        // Leftovers of this generation from a write that crashed before its manifest.
        let (from, to) = Self::generation_range(&prefix, generation);
        self.remove_chunks(&from, &to)?;
        for (n, piece) in value.chunks(CHUNK).enumerate() {
            let n = u32::try_from(n).expect("values under 16 TiB");
            self.chunks.insert(Self::chunk_key(&prefix, generation, n), piece)?;
        }
        Ok(Manifest { generation, len: value.len() as u64, crc: crc32fast::hash(value) })
    }

    /// The stored form of `value` under `key`: inline, or chunks written now and a manifest.
    fn stored_form(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(Vec<u8>, Option<u64>), KvError> {
        if value.len() > INLINE_MAX {
            let m = self.write_chunks(tree, key, value)?;
            return Ok((m.encode(), Some(m.generation)));
        }
        let mut v = Vec::with_capacity(1 + value.len());
        v.push(TAG_INLINE);
        v.extend_from_slice(value);
        Ok((v, None))
    }

    /// After `key` was overwritten (or removed), drop the chunks its new value does not use.
    fn after_overwrite(
        &self,
        tree: Tree,
        key: &[u8],
        old: Option<&[u8]>,
        kept: Option<u64>,
    ) -> Result<(), KvError> {
        if kept.is_some() || old.and_then(Manifest::decode).is_some() {
            self.remove_other_generations(tree, key, kept)?;
        }
        Ok(())
    }

    /// The value stored as `stored` under `key`: `None` if a concurrent write removed it.
    ///
    /// A chunked value is first read without the tree's lock; a writer may replace it
    /// meanwhile and remove the chunks being read (they then look missing or fail their
    /// CRC). Then the key is read again under the lock, where no writer runs, and only a
    /// failure there is damage.
    fn value(&self, tree: Tree, key: &[u8], stored: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match stored.first() {
            Some(&TAG_INLINE) => Ok(Some(stored[1..].to_vec())),
            Some(&TAG_CHUNKED) => {
                if let Ok(value) = self.read_chunks(tree, key, stored) {
                    return Ok(Some(value));
                }
                let _guard = self.lock(tree);
                match self.tree(tree).get(key)? {
                    None => Ok(None),
                    Some(now) if now.first() == Some(&TAG_INLINE) => Ok(Some(now[1..].to_vec())),
                    Some(now) => self.read_chunks(tree, key, &now).map(Some),
                }
            }
            _ => Err(damaged(tree, key, "unknown value tag")),
        }
    }

    /// The value a manifest (`stored`) describes, read from its chunks.
    fn read_chunks(&self, tree: Tree, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, KvError> {
        let m = Manifest::decode(stored).ok_or_else(|| damaged(tree, key, "malformed manifest"))?;
        let len = usize::try_from(m.len).map_err(|_| damaged(tree, key, "length too large"))?;
        let prefix = Self::chunk_prefix(tree, key);
        let mut value = Vec::with_capacity(len);
        let (from, to) = Self::generation_range(&prefix, m.generation);
        for (n, pair) in self.chunks.range(from..to).enumerate() {
            let (k, piece) = pair?;
            let want = Self::chunk_key(&prefix, m.generation, u32::try_from(n).unwrap_or(u32::MAX));
            if k != want[..] {
                return Err(damaged(tree, key, format!("chunk {n} is missing")));
            }
            value.extend_from_slice(&piece);
        }
        if value.len() != len || crc32fast::hash(&value) != m.crc {
            return Err(damaged(tree, key, "chunks do not match their manifest"));
        }
        Ok(value)
    }

    /// One insert (one insert is atomic by itself; a sled batch would cost two IO-buffer
    /// writes), with the tree's lock held.
    fn put_locked(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        let (stored, kept) = self.stored_form(tree, key, value)?;
        let old = self.tree(tree).insert(key, stored)?;
        self.after_overwrite(tree, key, old.as_deref(), kept)
    }

    /// A stored pair with its value; `None` if a concurrent write removed it.
    fn pair(&self, tree: Tree, (k, v): (sled::IVec, sled::IVec)) -> Result<Option<Pair>, KvError> {
        Ok(self.value(tree, &k, &v)?.map(|value| (k.to_vec(), value)))
    }
}

impl Kv for SledKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self.tree(tree).get(key)? {
            Some(v) => self.value(tree, key, &v),
            None => Ok(None),
        }
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        let _guard = self.lock(tree);
        self.put_locked(tree, key, value)
    }

    fn put_batch(&self, tree: Tree, pairs: Vec<Pair>) -> Result<(), KvError> {
        let _guard = self.lock(tree);
        if let [(k, v)] = &pairs[..] {
            return self.put_locked(tree, k, v);
        }
        // A key written twice in one batch keeps its last value (as a sled batch would);
        // writing its chunks twice would put both in one generation.
        let mut seen = std::collections::HashSet::new();
        let mut pairs: Vec<Pair> = pairs.into_iter().rev().filter(|(k, _)| seen.insert(k.clone())).collect();
        pairs.reverse();
        let t = self.tree(tree);
        let mut batch = sled::Batch::default();
        let mut written = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let old = t.get(&k)?;
            let (stored, kept) = self.stored_form(tree, &k, &v)?;
            batch.insert(&k[..], stored);
            written.push((k, old, kept));
        }
        t.apply_batch(batch)?;
        for (k, old, kept) in written {
            self.after_overwrite(tree, &k, old.as_deref(), kept)?;
        }
        Ok(())
    }

    /// Plain inserts. sled recovers its log as a prefix in write order, so a crash keeps
    /// a prefix of these. (`apply_batch` makes sled seal and write its IO buffer before
    /// and after the batch, each write followed by `sync_file_range(WAIT)` on sled's IO
    /// threads: two synchronous disk writes per batch, which were most of a replica's
    /// disk traffic when every log append and archive record was a batch.)
    fn put_in_order(&self, tree: Tree, pairs: Vec<Pair>) -> Result<(), KvError> {
        let _guard = self.lock(tree);
        for (k, v) in pairs {
            self.put_locked(tree, &k, &v)?;
        }
        Ok(())
    }

    fn remove_range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>) -> Result<(), KvError> {
        let _guard = self.lock(tree);
        let t = self.tree(tree);
        let mut batch = sled::Batch::default();
        let found: Vec<(sled::IVec, sled::IVec)> = match to {
            Some(to) => t.range(from..to).collect::<Result<_, _>>()?,
            None => t.range(from..).collect::<Result<_, _>>()?,
        };
        for (k, _) in &found {
            batch.remove(k);
        }
        t.apply_batch(batch)?;
        for (k, old) in &found {
            self.after_overwrite(tree, k, Some(old), None)?;
        }
        Ok(())
    }

    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, KvError> {
        let t = self.tree(tree);
        let iter = match to {
            Some(to) => t.range(from..to),
            None => t.range(from..),
        };
        let mut out = Vec::new();
        for r in iter {
            if out.len() == limit {
                break;
            }
            out.extend(self.pair(tree, r?)?);
        }
        Ok(out)
    }

    fn floor(&self, tree: Tree, key: &[u8]) -> Result<Option<Pair>, KvError> {
        for p in self.tree(tree).range(..=key).rev() {
            if let Some(pair) = self.pair(tree, p?)? {
                return Ok(Some(pair));
            }
        }
        Ok(None)
    }

    fn first(&self, tree: Tree) -> Result<Option<Pair>, KvError> {
        for p in self.tree(tree).iter() {
            if let Some(pair) = self.pair(tree, p?)? {
                return Ok(Some(pair));
            }
        }
        Ok(None)
    }

    fn last(&self, tree: Tree) -> Result<Option<Pair>, KvError> {
        for p in self.tree(tree).iter().rev() {
            if let Some(pair) = self.pair(tree, p?)? {
                return Ok(Some(pair));
            }
        }
        Ok(None)
    }

    async fn flush(&self) -> Result<(), KvError> {
        self.db.flush_async().await?;
        let file = self.data_file.clone();
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| KvError::Io(format!("the sync task ended: {e}")))?
            .map_err(|e| KvError::Io(format!("fsync of sled's data file: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, SledKv) {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv = SledKv::open(&dir.path().join("db")).expect("sled opens");
        (dir, kv)
    }

    fn big(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn chunk_count(kv: &SledKv) -> usize {
        kv.chunks.len()
    }

    #[test]
    fn values_at_the_inline_limit_stay_inline_and_larger_ones_are_chunked() {
        let (_d, kv) = open();
        kv.put(Tree::Meta, b"a", &big(INLINE_MAX, 1)).unwrap();
        assert_eq!(chunk_count(&kv), 0);
        kv.put(Tree::Meta, b"b", &big(INLINE_MAX + 1, 2)).unwrap();
        assert_eq!(chunk_count(&kv), 2);
        assert_eq!(kv.get(Tree::Meta, b"a").unwrap(), Some(big(INLINE_MAX, 1)));
        assert_eq!(kv.get(Tree::Meta, b"b").unwrap(), Some(big(INLINE_MAX + 1, 2)));
        let stored = kv.tree(Tree::Meta).get(b"b").unwrap().unwrap();
        assert_eq!(stored.len(), MANIFEST_LEN, "the tree holds only the manifest");
    }

    #[test]
    fn overwrites_keep_only_the_chunks_of_the_current_value() {
        let (_d, kv) = open();
        kv.put(Tree::Checkpoints, b"k", &big(10 * CHUNK, 1)).unwrap();
        assert_eq!(chunk_count(&kv), 10);
        kv.put(Tree::Checkpoints, b"k", &big(3 * CHUNK + 5, 2)).unwrap();
        assert_eq!(chunk_count(&kv), 4);
        assert_eq!(kv.get(Tree::Checkpoints, b"k").unwrap(), Some(big(3 * CHUNK + 5, 2)));
        kv.put(Tree::Checkpoints, b"k", b"small").unwrap();
        assert_eq!(chunk_count(&kv), 0);
        assert_eq!(kv.get(Tree::Checkpoints, b"k").unwrap(), Some(b"small".to_vec()));
        kv.put_batch(Tree::Checkpoints, vec![(b"k".to_vec(), big(2 * CHUNK, 3)), (b"l".to_vec(), big(9, 4))])
            .unwrap();
        assert_eq!(chunk_count(&kv), 2);
        assert_eq!(kv.get(Tree::Checkpoints, b"k").unwrap(), Some(big(2 * CHUNK, 3)));
        // One key twice in a batch: the last value, whole.
        kv.put_batch(
            Tree::Checkpoints,
            vec![(b"k".to_vec(), big(5 * CHUNK, 5)), (b"k".to_vec(), big(3 * CHUNK, 6))],
        )
        .unwrap();
        assert_eq!(kv.get(Tree::Checkpoints, b"k").unwrap(), Some(big(3 * CHUNK, 6)));
        assert_eq!(chunk_count(&kv), 3);
        kv.remove_range(Tree::Checkpoints, b"a", None).unwrap();
        assert_eq!(chunk_count(&kv), 0);
        assert_eq!(kv.get(Tree::Checkpoints, b"k").unwrap(), None);
    }

    #[test]
    fn keys_that_prefix_one_another_keep_their_chunks_apart() {
        let (_d, kv) = open();
        kv.put(Tree::Meta, b"ab", &big(2 * CHUNK, 1)).unwrap();
        kv.put(Tree::Meta, b"a", &big(2 * CHUNK, 2)).unwrap();
        kv.put(Tree::Log, b"a", &big(2 * CHUNK, 3)).unwrap();
        kv.remove_range(Tree::Meta, b"a", Some(b"aa")).unwrap();
        assert_eq!(kv.get(Tree::Meta, b"ab").unwrap(), Some(big(2 * CHUNK, 1)));
        assert_eq!(kv.get(Tree::Log, b"a").unwrap(), Some(big(2 * CHUNK, 3)));
        assert_eq!(chunk_count(&kv), 4);
    }

    #[test]
    fn reads_in_order_reassemble_chunked_values() {
        let (_d, kv) = open();
        for i in 0u8..5 {
            let v = if i % 2 == 0 { big(3 * CHUNK + usize::from(i), i) } else { vec![i] };
            kv.put(Tree::Checkpoints, &[i], &v).unwrap();
        }
        let all = kv.range(Tree::Checkpoints, &[0], None, usize::MAX).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[2], (vec![2], big(3 * CHUNK + 2, 2)));
        assert_eq!(kv.floor(Tree::Checkpoints, &[3, 9]).unwrap(), Some((vec![3], vec![3])));
        assert_eq!(kv.last(Tree::Checkpoints).unwrap(), Some((vec![4], big(3 * CHUNK + 4, 4))));
        assert_eq!(kv.first(Tree::Checkpoints).unwrap(), Some((vec![0], big(3 * CHUNK, 0))));
    }

    #[test]
    fn a_missing_or_altered_chunk_is_reported_as_damage() {
        let (_d, kv) = open();
        kv.put(Tree::Meta, b"s", &big(3 * CHUNK, 1)).unwrap();
        let prefix = SledKv::chunk_prefix(Tree::Meta, b"s");
        kv.chunks.insert(SledKv::chunk_key(&prefix, 1, 1), &b"tampered"[..]).unwrap();
        assert!(matches!(kv.get(Tree::Meta, b"s"), Err(KvError::Damaged(_))));
        kv.chunks.remove(SledKv::chunk_key(&prefix, 1, 1)).unwrap();
        let err = kv.get(Tree::Meta, b"s").unwrap_err();
        assert!(err.to_string().contains("chunk 1 is missing"), "{err}");
    }

    #[test]
    fn a_write_that_crashed_before_its_manifest_leaves_the_old_value_readable() {
        let (_d, kv) = open();
        kv.put(Tree::Meta, b"s", &big(3 * CHUNK, 1)).unwrap();
        // A crashed overwrite: chunks of generation 2 written, no manifest.
        let prefix = SledKv::chunk_prefix(Tree::Meta, b"s");
        for n in 0..7 {
            kv.chunks.insert(SledKv::chunk_key(&prefix, 2, n), &b"orphan"[..]).unwrap();
        }
        assert_eq!(kv.get(Tree::Meta, b"s").unwrap(), Some(big(3 * CHUNK, 1)));
        // The next write of the key clears the leftovers.
        kv.put(Tree::Meta, b"s", &big(2 * CHUNK, 2)).unwrap();
        assert_eq!(kv.get(Tree::Meta, b"s").unwrap(), Some(big(2 * CHUNK, 2)));
        assert_eq!(chunk_count(&kv), 2);
    }

    #[test]
    fn concurrent_writers_of_one_large_key_leave_one_whole_value() {
        let (_d, kv) = open();
        kv.put(Tree::Meta, b"snapshot", &big(2 * CHUNK, 0)).unwrap();
        let writers: Vec<_> = (0u8..4)
            .map(|w| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for round in 0..25 {
                        let len = (usize::from(w) + 2) * CHUNK + round;
                        kv.put(Tree::Meta, b"snapshot", &big(len, w)).unwrap();
                        kv.get(Tree::Meta, b"snapshot").unwrap().expect("always a whole value");
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let v = kv.get(Tree::Meta, b"snapshot").unwrap().expect("always a whole value");
                        assert!((0u8..4).any(|w| big(v.len(), w) == v), "one writer's value, whole");
                    }
                })
            })
            .collect();
        for t in writers.into_iter().chain(readers) {
            t.join().unwrap();
        }
        let last = kv.get(Tree::Meta, b"snapshot").unwrap().expect("a value");
        let writer = (0u8..4).find(|w| big(last.len(), *w) == last).expect("one writer's value, whole");
        assert_eq!(last.len(), (usize::from(writer) + 2) * CHUNK + 24);
        assert_eq!(chunk_count(&kv), last.len().div_ceil(CHUNK), "no other generation left");
    }

    #[tokio::test]
    async fn chunked_values_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let kv = SledKv::open(&dir.path().join("db")).unwrap();
            kv.put(Tree::Checkpoints, b"c", &big(50 * CHUNK + 7, 9)).unwrap();
            kv.put_in_order(Tree::Log, vec![(vec![1], big(5, 1)), (vec![2], big(2 * CHUNK, 2))]).unwrap();
            kv.flush().await.unwrap();
        }
        // sled's background flusher lets go of the database's file lock shortly after the
        // last handle is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let kv = loop {
            match SledKv::open(&dir.path().join("db")) {
                Ok(kv) => break kv,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(format!("{e:?}").contains("lock"), "{e:?}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the database does not reopen: {e:?}"),
            }
        };
        assert_eq!(kv.get(Tree::Checkpoints, b"c").unwrap(), Some(big(50 * CHUNK + 7, 9)));
        assert_eq!(kv.get(Tree::Log, &[2]).unwrap(), Some(big(2 * CHUNK, 2)));
    }
}
