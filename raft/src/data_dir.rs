//! A replica's data directory, and the checks that make a damaged one refuse to start
//! rather than come up silently empty.
//!
//! Layout: `IDENTITY` (text: format and node id, written once, last, at creation), `log/`
//! (the write-ahead log, `kv_wal`: raft log, vote, committed index, purge point), `db/`
//! (sled: snapshots, cluster id), `archive/` (sled: the event archive) and `WATERMARK`
//! (the index of the newest snapshot, rewritten after each). On open:
//! - `IDENTITY` must exist whenever `db/` does, name this node, and match the identity
//!   record inside the log and each database (a truncated or wiped store loses it);
//! - every stored record must decode: vote, committed index, purge point, snapshot,
//!   every log entry;
//! - the log must be contiguous and start right after the purge point (entries at or
//!   below it are the leftovers of a purge a crash interrupted, removed at start);
//! - the stored snapshot must not be older than `WATERMARK` says it was;
//! - the archive must hold every event up to the snapshot's.

use std::path::{Path, PathBuf};

use controlplane::{codec, State};

use crate::encoding;
use crate::kv::{key_u64, Kv, Tree};
use crate::kv_sled::SledKv;
use crate::kv_wal::WalKv;
use crate::log_store::{COMMITTED_KEY, LAST_PURGED_KEY, VOTE_KEY};
use crate::state_machine::{SNAPSHOT_DATA_KEY, SNAPSHOT_META_KEY};
use crate::type_config::{Entry, LogId, SnapshotMeta, Vote};

const IDENTITY_FILE: &str = "IDENTITY";
const WATERMARK_FILE: &str = "WATERMARK";
const LOG_DIR: &str = "log";
const DB_DIR: &str = "db";
const ARCHIVE_DIR: &str = "archive";
const IDENTITY_KEY: &[u8] = b"identity";
/// v3: the raft log and vote moved from sled to the write-ahead log (`log/`). v2: values
/// over 4 KiB are chunked and every stored value carries a tag byte (`kv_sled`). Older
/// directories are refused with a clear error.
const FORMAT_LINE: &str = "drover-data-dir v3";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {path} is damaged: {reason}; refusing to start (restore it from a backup, or remove it and join the node afresh)")]
    Damaged { path: PathBuf, reason: String },
    #[error("data directory {path} belongs to node {found}, not node {expected}")]
    WrongNode { path: PathBuf, expected: u64, found: u64 },
    #[error("data directory {path}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// An opened, checked data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub path: PathBuf,
    /// Raft log, vote, committed index, purge point.
    pub log_kv: WalKv,
    /// Snapshots, cluster id.
    pub kv: SledKv,
    /// The event archive.
    pub archive_kv: SledKv,
}

fn identity_text(node_id: u64) -> String {
    format!("{FORMAT_LINE}\nnode_id={node_id}\n")
}

impl DataDir {
    /// Open (creating it if absent) the data directory of node `node_id`.
    pub async fn open(path: &Path, node_id: u64) -> Result<DataDir, DataDirError> {
        let io = |source| DataDirError::Io { path: path.to_owned(), source };
        let damaged = |reason: String| DataDirError::Damaged { path: path.to_owned(), reason };
        let identity_path = path.join(IDENTITY_FILE);
        let db_path = path.join(DB_DIR);
        let expected = identity_text(node_id);

        if !identity_path.exists() {
            if db_path.exists() {
                return Err(damaged(format!("{IDENTITY_FILE} is missing beside an existing database")));
            }
            std::fs::create_dir_all(path).map_err(io)?;
            let log_kv = WalKv::open(&path.join(LOG_DIR))
                .map_err(|e| damaged(format!("cannot create the log: {e:?}")))?;
            log_kv
                .put(Tree::Meta, IDENTITY_KEY, expected.as_bytes())
                .map_err(|e| damaged(format!("{e:?}")))?;
            log_kv.flush().await.map_err(|e| damaged(format!("{e:?}")))?;
            let kv =
                SledKv::open(&db_path).map_err(|e| damaged(format!("cannot create the database: {e:?}")))?;
            let archive_kv = SledKv::open(&path.join(ARCHIVE_DIR))
                .map_err(|e| damaged(format!("cannot create the archive: {e:?}")))?;
            for store in [&kv, &archive_kv] {
                store
                    .put(Tree::Meta, IDENTITY_KEY, expected.as_bytes())
                    .map_err(|e| damaged(format!("{e:?}")))?;
                store.flush().await.map_err(|e| damaged(format!("{e:?}")))?;
            }
            write_synced(&identity_path, expected.as_bytes()).map_err(io)?;
            return Ok(DataDir { path: path.to_owned(), log_kv, kv, archive_kv });
        }

        let found = std::fs::read_to_string(&identity_path).map_err(io)?;
        if let Some(format) =
            found.lines().next().filter(|l| l.starts_with("drover-data-dir ") && *l != FORMAT_LINE)
        {
            return Err(damaged(format!(
                "it is in format \"{format}\", and this build reads \"{FORMAT_LINE}\" only"
            )));
        }
        let found_id = found
            .strip_prefix(FORMAT_LINE)
            .and_then(|rest| rest.trim().strip_prefix("node_id="))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .ok_or_else(|| damaged(format!("{IDENTITY_FILE} is unreadable")))?;
        if found_id != node_id {
            return Err(DataDirError::WrongNode {
                path: path.to_owned(),
                expected: node_id,
                found: found_id,
            });
        }
        let archive_path = path.join(ARCHIVE_DIR);
        let log_path = path.join(LOG_DIR);
        for (dir, what) in [(&log_path, "log"), (&db_path, "database"), (&archive_path, "archive")] {
            if !dir.exists() {
                return Err(damaged(format!("the {what} directory is missing")));
            }
        }
        let log_kv = WalKv::open(&log_path).map_err(|e| damaged(format!("the log does not open: {e:?}")))?;
        match log_kv.get(Tree::Meta, IDENTITY_KEY).map_err(|e| damaged(format!("{e:?}")))? {
            Some(id) if id == expected.as_bytes() => {}
            Some(_) => return Err(damaged("the log belongs to another node".into())),
            None => return Err(damaged("the log lost its identity record (truncated or wiped)".into())),
        }
        let kv = SledKv::open(&db_path).map_err(|e| damaged(format!("the database does not open: {e:?}")))?;
        let archive_kv =
            SledKv::open(&archive_path).map_err(|e| damaged(format!("the archive does not open: {e:?}")))?;
        for (store, what) in [(&kv, "database"), (&archive_kv, "archive")] {
            match store.get(Tree::Meta, IDENTITY_KEY).map_err(|e| damaged(format!("{e:?}")))? {
                Some(id) if id == expected.as_bytes() => {}
                Some(_) => return Err(damaged(format!("the {what} belongs to another node"))),
                None => {
                    return Err(damaged(format!("the {what} lost its identity record (truncated or wiped)")))
                }
            }
        }
        check_records(&log_kv, &kv, &archive_kv, path).map_err(damaged)?;
        Ok(DataDir { path: path.to_owned(), log_kv, kv, archive_kv })
    }

    /// Record that a snapshot up to `index` is stored, so losing it is noticed at open.
    pub fn write_watermark(path: &Path, index: u64) -> std::io::Result<()> {
        write_synced(&path.join(WATERMARK_FILE), index.to_string().as_bytes())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn check_records(log_kv: &WalKv, kv: &SledKv, archive_kv: &SledKv, path: &Path) -> Result<(), String> {
    let get_log = |key: &[u8]| log_kv.get(Tree::Meta, key).map_err(|e| format!("{e:?}"));
    let get = |key: &[u8]| kv.get(Tree::Meta, key).map_err(|e| format!("{e:?}"));
    if let Some(b) = get_log(VOTE_KEY)? {
        encoding::decode::<Vote>(&b).map_err(|e| format!("the vote record does not decode: {e}"))?;
    }
    if let Some(b) = get_log(COMMITTED_KEY)? {
        encoding::decode::<Option<LogId>>(&b)
            .map_err(|e| format!("the committed record does not decode: {e}"))?;
    }
    let purged = match get_log(LAST_PURGED_KEY)? {
        Some(b) => Some(
            encoding::decode::<LogId>(&b).map_err(|e| format!("the purge record does not decode: {e}"))?,
        ),
        None => None,
    };
    let mut snapshot_index = 0;
    if let Some(b) = get(SNAPSHOT_META_KEY)? {
        let meta: SnapshotMeta =
            encoding::decode(&b).map_err(|e| format!("the snapshot metadata does not decode: {e}"))?;
        snapshot_index = meta.last_log_id.map_or(0, |l| l.index);
        let data = get(SNAPSHOT_DATA_KEY)?.ok_or("the snapshot data is missing")?;
        let state =
            codec::decode::<State>(&data).map_err(|e| format!("the snapshot does not decode: {e}"))?;
        let archived =
            archive_kv.last(Tree::Events).map_err(|e| format!("{e:?}"))?.map_or(0, |(k, _)| key_u64(&k));
        // Events a snapshot install skipped are a noted hole, filled later from peers.
        let holes = crate::archive::Archive::new(archive_kv.clone(), 1)
            .holes()
            .map_err(|e| format!("the archive's holes do not read: {e}"))?;
        let noted = holes.iter().any(|(_, to)| *to >= state.last_seq());
        if archived < state.last_seq() && !noted {
            return Err(format!(
                "the archive ends at event {archived}, but the snapshot holds events up to {}",
                state.last_seq()
            ));
        }
    }
    let mut expected_index = purged.map(|p| p.index + 1);
    let mut from = 0u64;
    loop {
        let batch = log_kv.range(Tree::Log, &from.to_be_bytes(), None, 1024).map_err(|e| format!("{e:?}"))?;
        if batch.is_empty() {
            break;
        }
        for (k, v) in &batch {
            let index = key_u64(k);
            let entry: Entry =
                encoding::decode(v).map_err(|e| format!("log entry {index} does not decode: {e}"))?;
            if entry.log_id.index != index {
                return Err(format!("log entry at {index} claims index {}", entry.log_id.index));
            }
            from = index + 1;
            if purged.is_some_and(|p| index <= p.index) {
                // Left by a purge that a crash interrupted; the log store removes them.
                continue;
            }
            if let Some(want) = expected_index {
                if index != want {
                    return Err(format!("the log has a hole: expected entry {want}, found {index}"));
                }
            }
            expected_index = Some(index + 1);
        }
    }
    if let Ok(text) = std::fs::read_to_string(path.join(WATERMARK_FILE)) {
        let mark: u64 = text.trim().parse().map_err(|_| "WATERMARK is unreadable".to_string())?;
        if snapshot_index < mark {
            return Err(format!(
                "the stored snapshot covers index {snapshot_index}, but a snapshot up to {mark} was written"
            ));
        }
    }
    Ok(())
}
