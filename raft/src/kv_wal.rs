//! [`Kv`] as a write-ahead log of its own: the raft log and its small records (vote,
//! committed index, purge point), made durable by `fdatasync`.
//!
//! sled's flush writes its buffers with `sync_file_range` and leaves the `fsync` to a
//! background thread, so an acknowledged append could live only in the page cache for up
//! to a second. The raft log is the one store every acknowledgment waits on, so it lives
//! here instead: appends are records at the end of a preallocated segment file, and
//! [`Kv::flush`] returns after one `fdatasync` of that file (group commit: one sync covers
//! every record written before it started, whoever wrote it).
//!
//! **Files.** `<dir>/<number:020>.seg`, numbered from 1. A segment is created full size
//! ([`SEGMENT_BYTES`], or larger for a record that needs it) and zero-filled, then synced
//! and renamed into place and the directory synced, so an append changes no file metadata
//! and `fdatasync` writes data only. Records: `len: u32 LE, crc32(body): u32 LE, body`;
//! a zero `len` is the end of the log. Bodies: [`OP_PUT`] (tree, then pairs), or
//! [`OP_REMOVE`] (tree, from, optional to). A batch is one record, so its CRC makes it
//! atomic in a crash.
//!
//! **Recovery** replays every segment in order into memory: the small trees' values, and
//! for [`Tree::Log`] where each value lies (values are read back with `pread`). In the last
//! segment, the first record whose length or CRC is wrong is where a crash cut the log:
//! nothing after it was synced, so the rest of the segment is zeroed (and synced) before
//! anything is appended. A bad record in any earlier segment is damage (a segment is
//! synced in full before the next one is started) and refuses to open.
//!
//! **Segments are removed** once no live log value lies in them: every new segment begins
//! with a record of all small-tree values, so once that segment is synced nothing older is
//! needed for them. Removal happens only after a flush, so the purge record that made a
//! segment dead is durable before the segment goes.
//!
//! Only [`Tree::Log`] and [`Tree::Meta`] are kept here (snapshots, the archive and
//! checkpoints stay in sled); other trees are refused. After a write error the store
//! refuses every further write and flush: what is on disk is no longer known.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::kv::{Kv, KvError, Pair, Tree};

/// Size of a segment file.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// The largest record accepted (a log entry is a batch of proposals, far smaller).
pub const RECORD_MAX: u64 = 256 << 20;
/// Record header: length and CRC-32.
const HEADER: u64 = 8;
const OP_PUT: u8 = 1;
const OP_REMOVE: u8 = 2;
/// Zeroes are written this many at a time.
const ZERO_CHUNK: usize = 1 << 20;

/// Where a log value lies: segment number, offset of the value, its length.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    size: u64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// The segment appended to (the last one) and where the next record goes.
    active: u64,
    write_at: u64,
    log: BTreeMap<Vec<u8>, Loc>,
    /// How many live log values lie in each segment (segments with none are absent).
    live: BTreeMap<u64, usize>,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Why writes are refused, after one failed.
    failed: Option<String>,
}

/// The write-ahead log store; clones share it.
#[derive(Debug, Clone)]
pub struct WalKv {
    inner: Arc<Mutex<Inner>>,
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> KvError {
    KvError::Io(format!("{what}: {e}"))
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), KvError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir.display(), e))
}

/// Write `len` zero bytes at `from`.
fn zero_fill(file: &File, from: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut at = from;
    let end = from + len;
    while at < end {
        let n = usize::try_from((end - at).min(ZERO_CHUNK as u64)).expect("chunk fits");
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).expect("record parts under 4 GiB").to_le_bytes());
}

/// Reads a record body front to back.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.body.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<usize> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()?;
        self.take(n)
    }
}

fn tree_byte(tree: Tree) -> Result<u8, KvError> {
    match tree {
        Tree::Log => Ok(0),
        Tree::Meta => Ok(1),
        other => Err(KvError::Unsupported(other.name())),
    }
}

fn byte_tree(b: u8) -> Option<Tree> {
    match b {
        0 => Some(Tree::Log),
        1 => Some(Tree::Meta),
        _ => None,
    }
}

/// Keys of `map` in `from..to`, in order, at most `limit`.
fn keys_in<V>(map: &BTreeMap<Vec<u8>, V>, from: &[u8], to: Option<&[u8]>, limit: usize) -> Vec<Vec<u8>> {
    map.range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
        .map(|(k, _)| k)
        .take_while(|k| to.is_none_or(|to| k.as_slice() < to))
        .take(limit)
        .cloned()
        .collect()
}

fn remove_from<V>(map: &mut BTreeMap<Vec<u8>, V>, from: &[u8], to: Option<&[u8]>) {
    for k in keys_in(map, from, to, usize::MAX) {
        map.remove(&k);
    }
}

impl Inner {
    fn insert_log(&mut self, k: Vec<u8>, loc: Loc) {
        *self.live.entry(loc.segment).or_default() += 1;
        if let Some(old) = self.log.insert(k, loc) {
            self.forget(old.segment);
        }
    }

    fn remove_log(&mut self, from: &[u8], to: Option<&[u8]>) {
        for k in keys_in(&self.log, from, to, usize::MAX) {
            let old = self.log.remove(&k).expect("the key was just listed");
            self.forget(old.segment);
        }
    }

    /// One live value fewer in `segment`.
    fn forget(&mut self, segment: u64) {
        let n = self.live.get_mut(&segment).expect("every live value is counted");
        *n -= 1;
        if *n == 0 {
            self.live.remove(&segment);
        }
    }

    /// Apply a record body found at `offset` (of its header) in `segment`.
    fn replay(&mut self, segment: u64, offset: u64, body: &[u8]) -> Option<()> {
        let mut r = Reader { body, at: 0 };
        let op = r.u8()?;
        let tree = byte_tree(r.u8()?)?;
        match op {
            OP_PUT => {
                let count = r.u32()?;
                for _ in 0..count {
                    let k = r.bytes()?.to_vec();
                    let vlen = r.u32()?;
                    let value_at = offset + HEADER + r.at as u64;
                    let v = r.take(vlen)?;
                    match tree {
                        Tree::Log => {
                            let len = u32::try_from(vlen).ok()?;
                            self.insert_log(k, Loc { segment, offset: value_at, len });
                        }
                        _ => {
                            self.meta.insert(k, v.to_vec());
                        }
                    }
                }
            }
            OP_REMOVE => {
                let from = r.bytes()?.to_vec();
                let to = match r.u8()? {
                    0 => None,
                    _ => Some(r.bytes()?.to_vec()),
                };
                match tree {
                    Tree::Log => self.remove_log(&from, to.as_deref()),
                    _ => remove_from(&mut self.meta, &from, to.as_deref()),
                }
            }
            _ => return None,
        }
        (r.at == body.len()).then_some(())
    }

    fn refuse_if_failed(&self) -> Result<(), KvError> {
        match &self.failed {
            Some(why) => Err(KvError::Io(format!("the log refuses writes after an earlier failure: {why}"))),
            None => Ok(()),
        }
    }

    /// Create segment `n` of at least `size` bytes, zero-filled and durable, empty.
    fn create_segment(&mut self, n: u64, size: u64) -> Result<(), KvError> {
        let path = segment_path(&self.dir, n);
        let tmp = path.with_extension("tmp");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io(tmp.display(), e))?;
        zero_fill(&file, 0, size).and_then(|()| file.sync_all()).map_err(|e| io(tmp.display(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(path.display(), e))?;
        sync_dir(&self.dir)?;
        self.segments.insert(n, Segment { file: Arc::new(file), size });
        Ok(())
    }

    /// Append one record (from [`record`], its header still blank); returns the offset of
    /// its body.
    fn append(&mut self, record: &mut [u8]) -> Result<u64, KvError> {
        self.refuse_if_failed()?;
        let need = record.len() as u64;
        if need > RECORD_MAX {
            return Err(KvError::Io(format!("a record of {need} bytes is over the limit of {RECORD_MAX}")));
        }
        // Room for this record and the zero length that ends the log.
        if self.write_at + need + 4 > self.segments[&self.active].size {
            self.roll(need)?;
        }
        let at = self.write_at;
        let (header, body) = record.split_at_mut(HEADER as usize);
        let len = u32::try_from(body.len()).expect("under the record limit");
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
        let file = &self.segments[&self.active].file;
        if let Err(e) = file.write_all_at(record, at) {
            self.failed = Some(e.to_string());
            return Err(io("append", e));
        }
        self.write_at += need;
        Ok(at + HEADER)
    }

    /// Finish the active segment (synced in full) and start the next, which begins with
    /// every small-tree value.
    fn roll(&mut self, need: u64) -> Result<(), KvError> {
        let old = &self.segments[&self.active];
        if let Err(e) = old.file.sync_data() {
            self.failed = Some(e.to_string());
            return Err(io("sync before a new segment", e));
        }
        let mut meta = put_record(Tree::Meta, self.meta.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?;
        let size = SEGMENT_BYTES.max(need + meta.len() as u64 + 4);
        let next = self.active + 1;
        if let Err(e) = self.create_segment(next, size) {
            self.failed = Some(format!("{e:?}"));
            return Err(e);
        }
        self.active = next;
        self.write_at = 0;
        self.append(&mut meta)?;
        Ok(())
    }

    fn read_value(&self, loc: Loc) -> Result<Vec<u8>, KvError> {
        let segment = self
            .segments
            .get(&loc.segment)
            .ok_or_else(|| KvError::Damaged(format!("segment {} is gone", loc.segment)))?;
        let mut v = vec![0u8; loc.len as usize];
        segment.file.read_exact_at(&mut v, loc.offset).map_err(|e| io("read", e))?;
        Ok(v)
    }

    fn pair(&self, tree: Tree, k: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match tree {
            Tree::Log => self.log.get(k).map(|loc| self.read_value(*loc)).transpose(),
            _ => Ok(self.meta.get(k).cloned()),
        }
    }

    /// Keys of `tree` in `from..to`, in order, at most `limit`.
    fn keys(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Vec<Vec<u8>> {
        match tree {
            Tree::Log => keys_in(&self.log, from, to, limit),
            _ => keys_in(&self.meta, from, to, limit),
        }
    }

    /// Remove every segment before `synced` that no live log value lies in.
    fn remove_dead_segments(&mut self, synced: u64) -> Result<(), KvError> {
        if self.segments.len() < 2 {
            return Ok(());
        }
        let oldest_live = self.live.keys().next().copied().unwrap_or(synced).min(synced);
        debug_assert_eq!(self.live.values().sum::<usize>(), self.log.len(), "live counts match the log");
        let dead: Vec<u64> = self.segments.range(..oldest_live).map(|(n, _)| *n).collect();
        for n in &dead {
            let path = segment_path(&self.dir, *n);
            std::fs::remove_file(&path).map_err(|e| io(path.display(), e))?;
            self.segments.remove(n);
        }
        if !dead.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// A record being built: a blank header ([`Inner::append`] fills it), then the op and tree.
fn record(op: u8, tree: Tree) -> Result<Vec<u8>, KvError> {
    let mut r = vec![0u8; HEADER as usize];
    r.extend_from_slice(&[op, tree_byte(tree)?]);
    Ok(r)
}

/// A put record.
fn put_record<'a>(
    tree: Tree,
    pairs: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Vec<u8>, KvError> {
    let mut r = record(OP_PUT, tree)?;
    put_u32(&mut r, pairs.len());
    for (k, v) in pairs {
        put_u32(&mut r, k.len());
        r.extend_from_slice(k);
        put_u32(&mut r, v.len());
        r.extend_from_slice(v);
    }
    Ok(r)
}

/// Read the record at `at` in `file` (of `size` bytes): its body, or `None` at the end of
/// the log or at a record that is cut short or fails its CRC.
fn read_record(file: &File, at: u64, size: u64) -> std::io::Result<Option<Vec<u8>>> {
    if at + HEADER > size {
        return Ok(None);
    }
    let mut header = [0u8; HEADER as usize];
    file.read_exact_at(&mut header, at)?;
    let len = u64::from(u32::from_le_bytes(header[..4].try_into().expect("4 bytes")));
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > RECORD_MAX || at + HEADER + len > size {
        return Ok(None);
    }
    let mut body = vec![0u8; usize::try_from(len).expect("under the limit")];
    file.read_exact_at(&mut body, at + HEADER)?;
    Ok((crc32fast::hash(&body) == crc).then_some(body))
}

/// Whether `file` holds only zeroes from `from` on.
fn zero_from(file: &File, from: u64, size: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; ZERO_CHUNK];
    let mut at = from;
    while at < size {
        let n = usize::try_from((size - at).min(ZERO_CHUNK as u64)).expect("chunk fits");
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

impl WalKv {
    /// Open the log in `dir` (created if absent), replaying what it holds.
    pub fn open(dir: &Path) -> Result<WalKv, KvError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir.display(), e))?;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir.display(), e))? {
            let path = entry.map_err(|e| io(dir.display(), e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".tmp") {
                // A segment whose creation a crash interrupted: never used.
                std::fs::remove_file(&path).map_err(|e| io(path.display(), e))?;
            } else if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
                numbers.push(n);
            } else {
                return Err(KvError::Damaged(format!("unexpected file {} in the log", path.display())));
            }
        }
        numbers.sort_unstable();
        let mut inner = Inner {
            dir: dir.to_owned(),
            segments: BTreeMap::new(),
            active: 0,
            write_at: 0,
            log: BTreeMap::new(),
            live: BTreeMap::new(),
            meta: BTreeMap::new(),
            failed: None,
        };
        if let Some(pair) = numbers.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(KvError::Damaged(format!("segment {} is missing", pair[0] + 1)));
        }
        for (i, &n) in numbers.iter().enumerate() {
            let last = i + 1 == numbers.len();
            let path = segment_path(dir, n);
            let file =
                OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io(path.display(), e))?;
            let size = file.metadata().map_err(|e| io(path.display(), e))?.len();
            if size < SEGMENT_BYTES {
                return Err(KvError::Damaged(format!(
                    "{} is cut short: {size} bytes, and segments are made {SEGMENT_BYTES}",
                    path.display()
                )));
            }
            let mut at = 0u64;
            while let Some(body) = read_record(&file, at, size).map_err(|e| io(path.display(), e))? {
                inner.replay(n, at, &body).ok_or_else(|| {
                    KvError::Damaged(format!("{}: the record at {at} does not decode", path.display()))
                })?;
                at += HEADER + body.len() as u64;
            }
            if !zero_from(&file, at, size).map_err(|e| io(path.display(), e))? {
                if !last {
                    return Err(KvError::Damaged(format!(
                        "{}: the record at {at} is damaged, and later segments exist",
                        path.display()
                    )));
                }
                // Cut by a crash before it was synced: never acknowledged.
                tracing::info!(segment = n, at, "the log's unsynced tail was cut; zeroing it");
                zero_fill(&file, at, size - at)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| io(path.display(), e))?;
            }
            inner.segments.insert(n, Segment { file: Arc::new(file), size });
            inner.active = n;
            inner.write_at = at;
        }
        if inner.segments.is_empty() {
            inner.create_segment(1, SEGMENT_BYTES)?;
            inner.active = 1;
        }
        Ok(WalKv { inner: Arc::new(Mutex::new(inner)) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves `failed` or a consistent view; writes re-check.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many segment files the log has.
    pub fn segments(&self) -> usize {
        self.lock().segments.len()
    }

    fn first_or_last(&self, tree: Tree, last: bool) -> Result<Option<Pair>, KvError> {
        tree_byte(tree)?;
        let inner = self.lock();
        let key = match tree {
            Tree::Log => if last { inner.log.keys().next_back() } else { inner.log.keys().next() }.cloned(),
            _ => if last { inner.meta.keys().next_back() } else { inner.meta.keys().next() }.cloned(),
        };
        match key {
            None => Ok(None),
            Some(k) => Ok(inner.pair(tree, &k)?.map(|v| (k, v))),
        }
    }
}

impl Kv for WalKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        tree_byte(tree)?;
        self.lock().pair(tree, key)
    }

    fn put_batch(&self, tree: Tree, pairs: Vec<Pair>) -> Result<(), KvError> {
        let mut r = put_record(tree, pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?;
        let mut inner = self.lock();
        let at = inner.append(&mut r)?;
        let segment = inner.active;
        // Where each value landed: after op, tree, count, then per pair key and length.
        let mut offset = at + 2 + 4;
        for (k, v) in pairs {
            offset += 4 + k.len() as u64 + 4;
            let len = v.len() as u64;
            match tree {
                Tree::Log => {
                    let len = u32::try_from(len).expect("under the record limit");
                    inner.insert_log(k, Loc { segment, offset, len });
                }
                _ => {
                    inner.meta.insert(k, v);
                }
            }
            offset += len;
        }
        Ok(())
    }

    fn remove_range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>) -> Result<(), KvError> {
        let mut r = record(OP_REMOVE, tree)?;
        put_u32(&mut r, from.len());
        r.extend_from_slice(from);
        match to {
            None => r.push(0),
            Some(to) => {
                r.push(1);
                put_u32(&mut r, to.len());
                r.extend_from_slice(to);
            }
        }
        let mut inner = self.lock();
        let any = !inner.keys(tree, from, to, 1).is_empty();
        if !any {
            return Ok(());
        }
        inner.append(&mut r)?;
        match tree {
            Tree::Log => inner.remove_log(from, to),
            _ => remove_from(&mut inner.meta, from, to),
        }
        Ok(())
    }

    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, KvError> {
        tree_byte(tree)?;
        let inner = self.lock();
        let mut out = Vec::new();
        for k in inner.keys(tree, from, to, limit) {
            if let Some(v) = inner.pair(tree, &k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    fn floor(&self, tree: Tree, key: &[u8]) -> Result<Option<Pair>, KvError> {
        tree_byte(tree)?;
        let inner = self.lock();
        let below = (Bound::Unbounded, Bound::Included(key));
        let k = match tree {
            Tree::Log => inner.log.range::<[u8], _>(below).next_back().map(|(k, _)| k.clone()),
            _ => inner.meta.range::<[u8], _>(below).next_back().map(|(k, _)| k.clone()),
        };
        match k {
            None => Ok(None),
            Some(k) => Ok(inner.pair(tree, &k)?.map(|v| (k, v))),
        }
    }

    fn first(&self, tree: Tree) -> Result<Option<Pair>, KvError> {
        self.first_or_last(tree, false)
    }

    fn last(&self, tree: Tree) -> Result<Option<Pair>, KvError> {
        self.first_or_last(tree, true)
    }

    async fn flush(&self) -> Result<(), KvError> {
        let (file, active) = {
            let inner = self.lock();
            inner.refuse_if_failed()?;
            (inner.segments[&inner.active].file.clone(), inner.active)
        };
        // Off the runtime's threads: an fdatasync takes milliseconds. Every record written
        // before this point is covered; records written meanwhile may be too.
        let started = std::time::Instant::now();
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| KvError::Io(format!("the sync task ended: {e}")))?;
        metrics::histogram!(crate::metrics::LOG_SYNC_SECONDS).record(started.elapsed().as_secs_f64());
        let mut inner = self.lock();
        if let Err(e) = synced {
            inner.failed = Some(e.to_string());
            return Err(io("fdatasync", e));
        }
        inner.remove_dead_segments(active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::u64_key;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    fn put_log(kv: &WalKv, from: u64, to: u64, size: usize) {
        let pairs = (from..to).map(|i| (u64_key(i).to_vec(), vec![(i % 251) as u8; size])).collect();
        kv.put_in_order(Tree::Log, pairs).expect("append");
    }

    #[test]
    fn writes_survive_a_reopen_and_reads_see_them_before_a_flush() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv = WalKv::open(dir.path()).expect("opens");
        put_log(&kv, 1, 11, 100);
        kv.put(Tree::Meta, b"vote", b"v1").expect("put");
        assert_eq!(kv.get(Tree::Log, &u64_key(5)).expect("get"), Some(vec![5u8; 100]));
        kv.remove_range(Tree::Log, &u64_key(8), None).expect("truncate");
        put_log(&kv, 8, 9, 7);
        rt().block_on(kv.flush()).expect("flush");
        drop(kv);
        let kv = WalKv::open(dir.path()).expect("reopens");
        assert_eq!(kv.get(Tree::Meta, b"vote").expect("get"), Some(b"v1".to_vec()));
        assert_eq!(kv.last(Tree::Log).expect("last"), Some((u64_key(8).to_vec(), vec![8u8; 7])));
        assert_eq!(kv.first(Tree::Log).expect("first").map(|p| p.0), Some(u64_key(1).to_vec()));
        assert_eq!(kv.range(Tree::Log, &u64_key(0), None, usize::MAX).expect("range").len(), 8);
        assert_eq!(
            kv.floor(Tree::Log, &u64_key(100)).expect("floor").map(|p| p.0),
            Some(u64_key(8).to_vec())
        );
        assert!(matches!(kv.get(Tree::Events, b"x"), Err(KvError::Unsupported(_))));
    }

    #[test]
    fn a_torn_tail_is_cut_and_zeroed_and_appends_go_on_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv = WalKv::open(dir.path()).expect("opens");
        put_log(&kv, 1, 4, 50);
        rt().block_on(kv.flush()).expect("flush");
        let end = kv.lock().write_at;
        put_log(&kv, 4, 6, 50);
        drop(kv);
        // A crash kept the second record's start, not its end; junk lies beyond.
        let path = segment_path(dir.path(), 1);
        let file = OpenOptions::new().write(true).open(&path).expect("segment");
        file.write_all_at(&[0xAB; 16], end + 40).expect("tear");
        file.write_all_at(&[0x5A; 64], end + 4096).expect("stray page");
        drop(file);
        let kv = WalKv::open(dir.path()).expect("reopens");
        assert_eq!(kv.last(Tree::Log).expect("last").map(|p| p.0), Some(u64_key(3).to_vec()));
        put_log(&kv, 4, 5, 10);
        rt().block_on(kv.flush()).expect("flush");
        drop(kv);
        let kv = WalKv::open(dir.path()).expect("reopens again");
        assert_eq!(kv.last(Tree::Log).expect("last"), Some((u64_key(4).to_vec(), vec![4u8; 10])));
    }

    #[test]
    fn segments_roll_over_and_purged_ones_are_removed_keeping_the_small_records() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv = WalKv::open(dir.path()).expect("opens");
        kv.put(Tree::Meta, b"vote", b"v9").expect("put");
        let per_entry = 64 << 10;
        let n = 3 * SEGMENT_BYTES / per_entry as u64;
        for i in 0..n {
            put_log(&kv, i, i + 1, per_entry);
        }
        rt().block_on(kv.flush()).expect("flush");
        assert!(kv.segments() >= 3, "{} segments", kv.segments());
        kv.remove_range(Tree::Log, &u64_key(0), Some(&u64_key(n - 1))).expect("purge");
        rt().block_on(kv.flush()).expect("flush");
        assert_eq!(kv.segments(), 1);
        drop(kv);
        let kv = WalKv::open(dir.path()).expect("reopens");
        assert_eq!(kv.get(Tree::Meta, b"vote").expect("get"), Some(b"v9".to_vec()));
        assert_eq!(kv.first(Tree::Log).expect("first").map(|p| p.0), Some(u64_key(n - 1).to_vec()));
    }

    #[test]
    fn a_segment_stays_while_any_live_value_lies_in_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv = WalKv::open(dir.path()).expect("opens");
        // Written first, so it lies in the first segment, but sorts after the others.
        put_log(&kv, 1_000_000, 1_000_001, 10);
        let n = 2 * SEGMENT_BYTES / (64 << 10);
        for i in 0..n {
            put_log(&kv, i, i + 1, 64 << 10);
        }
        // The first key left lies in the newest segment, the other in the oldest.
        kv.remove_range(Tree::Log, &u64_key(0), Some(&u64_key(n - 1))).expect("purge");
        rt().block_on(kv.flush()).expect("flush");
        assert!(kv.segments() >= 3, "the first segment still holds a live value: {}", kv.segments());
        drop(kv);
        let kv = WalKv::open(dir.path()).expect("reopens");
        assert_eq!(
            kv.get(Tree::Log, &u64_key(1_000_000)).expect("get"),
            Some(vec![(1_000_000 % 251) as u8; 10])
        );
    }

    #[test]
    fn damage_before_the_last_segment_refuses_to_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv = WalKv::open(dir.path()).expect("opens");
        let n = SEGMENT_BYTES / (64 << 10) + 4;
        for i in 0..n {
            put_log(&kv, i, i + 1, 64 << 10);
        }
        rt().block_on(kv.flush()).expect("flush");
        drop(kv);
        let file = OpenOptions::new().write(true).open(segment_path(dir.path(), 1)).expect("segment");
        file.write_all_at(&[0xFF; 8], 100).expect("damage");
        drop(file);
        let err = WalKv::open(dir.path()).expect_err("refused");
        assert!(format!("{err:?}").contains("damaged"), "{err:?}");
    }
}
