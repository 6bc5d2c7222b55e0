//! Snapshots of QEMU VMs: the VM's whole state (RAM, vCPUs, devices) as QEMU's own
//! migration stream, in a file.
//!
//! File format: one header line written by the driver, then the stream QEMU wrote:
//!
//! ```text
//! DROVER-QEMU-SNAPSHOT 1 {"domain":"web","phase":"running","memory_mib":256}\n
//! QEVM...                (QEMU's migration stream, as `migrate` wrote it)
//! ```
//!
//! The header is what lets a restore come back in the phase the snapshot was taken in (QEMU
//! records the run state in its stream too, but the guest is always stopped before it is
//! written, so there it always says "paused"), and lets a start refuse a file that is not a
//! snapshot, or one of a guest with another memory size, with a clear reason before
//! QEMU runs. Keeping it inside the file keeps a snapshot one file: it is written, renamed,
//! copied and removed whole.
//!
//! Taking one: QMP `stop` (if the guest runs), `migrate` to an `exec:` URI whose shell
//! appends the stream to `<path>.part` and then leaves a marker saying whether `cat`
//! succeeded (QEMU can report `completed` before it has closed the pipe and reaped the
//! writer, so the marker, not the status, says the file is whole), `cont`, then fsync and
//! rename to `<path>`. QEMU 7.2 (Debian 12) has no `file:` URI (8.2 and later), hence
//! `exec:`; paths go to `/bin/sh` in single quotes, so paths holding one are refused.
//! A paused guest stays paused, in QEMU's `postmigrate` state (see `leave_postmigrate`).
//!
//! Restoring: QEMU started with `-S -incoming defer`, `migrate-incoming` from an `exec:`
//! reader that skips the header, `cont` if the snapshot was of a running guest. A stream
//! QEMU cannot load makes it exit (its default on a failed incoming migration); the start
//! then fails with what QEMU said, and the driver makes sure no QEMU is left.
//!
//! Disks: once QEMU has written its stream (the guest still stopped, and QEMU's block
//! layer flushed and let go of the images, as a migration ends), every writable disk is
//! copied after the stream, and a trailer lists them (index, offset, length, CRC-32):
//!
//! ```text
//! ... QEMU's stream ... | disk images | {"disks":[...]} | u64 trailer length | DRVRDSKS
//! ```
//!
//! so memory and disks come back to one instant. A restore checks each image against its
//! checksum and writes it back over the domain's disk (beside it, synced, renamed) before
//! QEMU starts, and feeds QEMU only the stream. A snapshot of a VM without writable disks
//! has no trailer.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use qapi::qmp;

use super::{qemu_said, qmp_call};
use crate::driver::SnapshotTaken;
use crate::vm_dir;

/// How long writing a snapshot (from `stop` to the file being whole) may take.
pub const SNAPSHOT_TIMEOUT_MS: u64 = 60_000;
/// How long QEMU may take to load a snapshot once it answers QMP.
pub const RESTORE_TIMEOUT_MS: u64 = 60_000;
/// The first word of every snapshot file of this driver.
pub const MAGIC: &str = "DROVER-QEMU-SNAPSHOT";
/// The header format this driver writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// QEMU's migration stream starts with these bytes ("QEVM").
const QEMU_STREAM_MAGIC: &[u8; 4] = b"QEVM";
/// The longest header line accepted.
const HEADER_BYTES_MAX: u64 = 4096;
/// The migration bandwidth cap while snapshotting: none that matters (QEMU's default, 128
/// MiB/s, would hold a stopped guest paused for seconds per GiB).
const MAX_BANDWIDTH: u64 = 1 << 40;
/// How often QEMU is asked how far it got.
const POLL: Duration = Duration::from_millis(5);
/// The last bytes of a snapshot that carries disk images.
const DISKS_MAGIC: &[u8; 8] = b"DRVRDSKS";
/// The longest disk trailer accepted.
const TRAILER_BYTES_MAX: u64 = 1 << 20;
/// Copies go in pieces of this size.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// One disk image after the stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskImage {
    /// The disk's position in the domain's disks (QEMU's drive `disk<index>`).
    pub index: usize,
    /// The disk's file when the snapshot was taken: a restore writes it back only there.
    pub file: String,
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Trailer {
    disks: Vec<DiskImage>,
}

/// `query-block`'s answer, read loosely (only what a snapshot needs).
#[derive(Debug, serde::Serialize)]
struct QueryBlock {}

#[derive(Debug, serde::Deserialize)]
struct BlockEntry {
    device: String,
    #[serde(default)]
    inserted: Option<Inserted>,
}

#[derive(Debug, serde::Deserialize)]
struct Inserted {
    file: String,
    #[serde(default)]
    ro: bool,
}

impl qapi::Command for QueryBlock {
    type Ok = Vec<BlockEntry>;
    const NAME: &'static str = "query-block";
    const ALLOW_OOB: bool = false;
}

/// What the driver writes down about the VM in the snapshot's header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub domain: String,
    /// "running" or "paused": the phase a restore comes back in.
    pub phase: String,
    pub memory_mib: u64,
}

impl Header {
    pub fn resumes(&self) -> bool {
        self.phase == "running"
    }
}

/// `query-migrate`'s answer, read loosely: the qapi crate's `MigrationInfo` wants RAM
/// statistics fields that not every QEMU version sends.
#[derive(Debug, serde::Serialize)]
struct QueryMigrate {}

#[derive(Debug, Default, serde::Deserialize)]
struct MigrationProgress {
    #[serde(default)]
    status: Option<String>,
    #[serde(rename = "error-desc", default)]
    error_desc: Option<String>,
}

impl qapi::Command for QueryMigrate {
    type Ok = MigrationProgress;
    const NAME: &'static str = "query-migrate";
    const ALLOW_OOB: bool = false;
}

/// `path` for a shell command line, in single quotes.
fn sh_quoted(path: &Path) -> Result<String, String> {
    let text = path.to_str().ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
    if text.contains('\'') {
        return Err(format!("{text} contains a single quote, which QEMU's exec: migration cannot be given"));
    }
    Ok(format!("'{text}'"))
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The files a snapshot in progress uses beside its destination.
struct Files {
    /// The stream being written.
    part: PathBuf,
    /// Left by the writer once `cat` has written the whole stream.
    written: PathBuf,
    /// Left by the writer when `cat` failed.
    failed: PathBuf,
}

impl Files {
    fn for_path(path: &Path) -> Files {
        Files {
            part: with_suffix(path, ".part"),
            written: with_suffix(path, ".part.written"),
            failed: with_suffix(path, ".part.failed"),
        }
    }

    fn remove(&self) {
        for f in [&self.part, &self.written, &self.failed] {
            let _ = std::fs::remove_file(f);
        }
    }

    /// The `exec:` URI that appends the stream to `part` and leaves a marker.
    fn uri(&self) -> Result<String, String> {
        Ok(format!(
            "exec:cat >> {} && : > {} || : > {}",
            sh_quoted(&self.part)?,
            sh_quoted(&self.written)?,
            sh_quoted(&self.failed)?
        ))
    }

    /// Wait until the writer has left its marker: whether `cat` wrote the whole stream.
    fn wait_writer(&self, deadline: Instant) -> Result<(), String> {
        loop {
            if self.written.exists() {
                return Ok(());
            }
            if self.failed.exists() {
                return Err(format!("writing {} failed (see QEMU's log)", self.part.display()));
            }
            if Instant::now() >= deadline {
                return Err(format!("the writer of {} did not finish in time", self.part.display()));
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Snapshot the VM whose QEMU is `pid`, run directory `dir`, into `path`; it runs
/// afterwards if `running` (it was running when asked), and stays paused otherwise.
pub fn take(dir: &Path, pid: u32, domain: &str, path: &Path, running: bool) -> Result<SnapshotTaken, String> {
    let files = Files::for_path(path);
    let uri = files.uri()?;
    let memory = qmp_call(dir, &qmp::query_memory_size_summary {})?;
    let header = Header {
        domain: domain.to_owned(),
        phase: if running { "running" } else { "paused" }.into(),
        memory_mib: memory.base_memory >> 20,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    files.remove();
    let result = write_header(&files.part, &header)
        .and_then(|()| {
            let limits =
                qmp::MigrateSetParameters { max_bandwidth: Some(MAX_BANDWIDTH), ..Default::default() };
            qmp_call(dir, &qmp::migrate_set_parameters(limits)).map(|_| ())
        })
        .and_then(|()| migrate_out(dir, pid, &files, &uri, running))
        .and_then(|duration_ms| Ok(SnapshotTaken { bytes: finish(&files, path)?, duration_ms }));
    if result.is_err() {
        files.remove();
    }
    result
}

fn write_header(part: &Path, header: &Header) -> Result<(), String> {
    let json = serde_json::to_string(header).map_err(|e| e.to_string())?;
    let mut file = std::fs::File::create(part).map_err(|e| format!("{}: {e}", part.display()))?;
    writeln!(file, "{MAGIC} {FORMAT_VERSION} {json}").map_err(|e| format!("{}: {e}", part.display()))
}

/// Stop the guest (if `running`), have QEMU write its state through `uri`, and let the
/// guest go on; returns how long it was held paused.
fn migrate_out(dir: &Path, pid: u32, files: &Files, uri: &str, running: bool) -> Result<u64, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(SNAPSHOT_TIMEOUT_MS);
    let stopped = if running { qmp_call(dir, &qmp::stop {}).map(|_| ()) } else { leave_postmigrate(dir) };
    let migrated = stopped.and_then(|()| {
        let migrate = qmp::migrate { uri: Some(uri.to_owned()), channels: None, detach: None, resume: None };
        qmp_call(dir, &migrate)?;
        let outcome = wait_migration(dir, pid, deadline);
        if outcome.is_err() {
            // Stop QEMU writing (a no-op once it has finished), and let the writer end
            // before its files are removed.
            let _ = qmp_call(dir, &qmp::migrate_cancel {});
            let _ = files.wait_writer(Instant::now() + Duration::from_millis(super::QMP_TIMEOUT_MS));
            return outcome;
        }
        files.wait_writer(deadline)?;
        // Still stopped, and the block layer has let go of the images: copy the disks.
        append_disks(dir, &files.part)
    });
    // `cont` whatever happened: the guest must not stay paused by a failed snapshot.
    let resumed = if running {
        qmp_call(dir, &qmp::cont {}).map(|_| ()).map_err(|e| format!("the guest was not resumed: {e}"))
    } else {
        Ok(())
    };
    let held_ms = started.elapsed().as_millis() as u64;
    migrated?;
    resumed?;
    Ok(held_ms)
}

/// Copy every writable disk of the VM (QEMU's drives `disk<i>`) after the stream in
/// `part`, then the trailer that lists them; nothing when there is none.
fn append_disks(dir: &Path, part: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let blocks = qmp_call(dir, &QueryBlock {})?;
    let mut trailer = Trailer::default();
    let out = std::fs::OpenOptions::new()
        .append(true)
        .open(part)
        .map_err(|e| io(&part.display().to_string(), e))?;
    let mut offset = out.metadata().map_err(|e| io("the snapshot", e))?.len();
    for block in blocks {
        let Some(index) = block.device.strip_prefix("disk").and_then(|i| i.parse::<usize>().ok()) else {
            continue;
        };
        let Some(inserted) = block.inserted.filter(|i| !i.ro) else { continue };
        let disk = std::fs::File::open(&inserted.file).map_err(|e| io(&inserted.file, e))?;
        let len = disk.metadata().map_err(|e| io(&inserted.file, e))?.len();
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; COPY_CHUNK_BYTES];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(COPY_CHUNK_BYTES as u64) as usize;
            disk.read_exact_at(&mut buf[..n], at).map_err(|e| io(&inserted.file, e))?;
            crc.update(&buf[..n]);
            (&out).write_all(&buf[..n]).map_err(|e| io("the snapshot", e))?;
            at += n as u64;
        }
        trailer.disks.push(DiskImage {
            index,
            file: inserted.file.clone(),
            offset,
            len,
            crc: crc.finalize(),
        });
        offset += len;
    }
    if trailer.disks.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_vec(&trailer).map_err(|e| e.to_string())?;
    (&out).write_all(&json).map_err(|e| io("the snapshot", e))?;
    (&out).write_all(&(json.len() as u64).to_le_bytes()).map_err(|e| io("the snapshot", e))?;
    (&out).write_all(DISKS_MAGIC).map_err(|e| io("the snapshot", e))
}

/// Where QEMU's stream of snapshot `file` ends, and the disk images after it.
pub fn read_disks(file: &Path) -> Result<(u64, Vec<DiskImage>), String> {
    use std::os::unix::fs::FileExt;
    let damaged = |why: String| format!("{}: the disk images are damaged: {why}", file.display());
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let len = f.metadata().map_err(|e| format!("{}: {e}", file.display()))?.len();
    let mut tail = [0u8; 16];
    if len < 16 || f.read_exact_at(&mut tail, len - 16).is_err() || &tail[8..] != DISKS_MAGIC {
        return Ok((len, Vec::new()));
    }
    let trailer_len = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
    if trailer_len > TRAILER_BYTES_MAX || trailer_len + 16 > len {
        return Err(damaged(format!("a trailer of {trailer_len} bytes")));
    }
    let mut json = vec![0u8; trailer_len as usize];
    f.read_exact_at(&mut json, len - 16 - trailer_len).map_err(|e| damaged(e.to_string()))?;
    let trailer: Trailer = serde_json::from_slice(&json).map_err(|e| damaged(e.to_string()))?;
    let mut end = len - 16 - trailer_len;
    for d in trailer.disks.iter().rev() {
        if d.offset.checked_add(d.len) != Some(end) {
            return Err(damaged(format!("disk {} does not end where the next part starts", d.index)));
        }
        end = d.offset;
    }
    Ok((end, trailer.disks))
}

/// Disk images written back over a domain's disks, with what they replaced kept beside
/// until the restore is known to have worked: [`RestoredDisks::keep`] drops the old
/// contents, [`RestoredDisks::undo`] (or dropping it) puts them back.
#[derive(Debug, Default)]
pub struct RestoredDisks {
    /// (disk, its old contents moved aside).
    moved: Vec<(PathBuf, PathBuf)>,
}

impl RestoredDisks {
    pub fn keep(mut self) {
        for (_, old) in std::mem::take(&mut self.moved) {
            let _ = std::fs::remove_file(old);
        }
    }

    pub fn undo(mut self) {
        self.roll_back();
    }

    fn roll_back(&mut self) {
        for (disk, old) in std::mem::take(&mut self.moved) {
            if let Err(e) = std::fs::rename(&old, &disk) {
                tracing::warn!(disk = %disk.display(), error = %e, "cannot put a disk back after a failed restore");
            }
        }
    }
}

impl Drop for RestoredDisks {
    fn drop(&mut self) {
        self.roll_back();
    }
}

/// Write the disk images of snapshot `file` back over `targets` (the domain's disk paths,
/// by index; `None` for read-only ones), once every image passes its checksum and names
/// the same file; every writable disk must have an image. What they replace is kept until
/// the caller knows the restore worked.
pub fn restore_disks(
    file: &Path,
    disks: &[DiskImage],
    targets: &[Option<&str>],
) -> Result<RestoredDisks, String> {
    use std::os::unix::fs::FileExt;
    let writable: Vec<usize> = (0..targets.len()).filter(|i| targets[*i].is_some()).collect();
    let imaged: Vec<usize> = disks.iter().map(|d| d.index).collect();
    if writable != imaged {
        return Err(format!(
            "{}: the snapshot holds images of disks {imaged:?}, the domain has writable disks {writable:?}",
            file.display()
        ));
    }
    for d in disks {
        let target = targets[d.index].expect("writable, checked above");
        if d.file != target {
            return Err(format!(
                "{}: disk {} was {} when the snapshot was taken, the domain's is {target}",
                file.display(),
                d.index,
                d.file
            ));
        }
    }
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    for d in disks {
        let mut crc = crc32fast::Hasher::new();
        let mut at = 0u64;
        while at < d.len {
            let n = (d.len - at).min(COPY_CHUNK_BYTES as u64) as usize;
            f.read_exact_at(&mut buf[..n], d.offset + at).map_err(|e| format!("{}: {e}", file.display()))?;
            crc.update(&buf[..n]);
            at += n as u64;
        }
        if crc.finalize() != d.crc {
            return Err(format!("{}: the image of disk {} fails its checksum", file.display(), d.index));
        }
    }
    let mut restored = RestoredDisks::default();
    for d in disks {
        let target = Path::new(targets[d.index].expect("writable, checked above"));
        let temp = with_suffix(target, ".restoring");
        let old = with_suffix(target, ".before-restore");
        let written = (|| {
            let out = std::fs::File::create(&temp)?;
            let mut at = 0u64;
            while at < d.len {
                let n = (d.len - at).min(COPY_CHUNK_BYTES as u64) as usize;
                f.read_exact_at(&mut buf[..n], d.offset + at)?;
                // Zero pages stay holes: a sparse disk stays sparse.
                for (i, page) in buf[..n].chunks(4096).enumerate() {
                    if page.iter().any(|&b| b != 0) {
                        out.write_all_at(page, at + (i as u64) * 4096)?;
                    }
                }
                at += n as u64;
            }
            out.set_len(d.len)?;
            out.sync_all()?;
            std::fs::rename(target, &old)?;
            restored.moved.push((target.to_owned(), old.clone()));
            std::fs::rename(&temp, target)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(format!("writing disk {} back to {}: {e}", d.index, target.display()));
        }
    }
    Ok(restored)
}

/// A paused guest that a snapshot has been taken of stays in QEMU's `postmigrate` state,
/// from which QEMU refuses to migrate again ("Can't migrate the vm that was paused due to
/// previous migration") and only `cont` leads out. So a guest found there is let run for
/// the moment between a `cont` and a `stop` first: it is paused again, as it was, and has
/// run for about a millisecond.
fn leave_postmigrate(dir: &Path) -> Result<(), String> {
    if qmp_call(dir, &qmp::query_status {})?.status == qmp::RunState::postmigrate {
        qmp_call(dir, &qmp::cont {})?;
        qmp_call(dir, &qmp::stop {})?;
    }
    Ok(())
}

/// Poll `query-migrate` until the migration has completed, failed or run out of time. QMP
/// may not answer for a moment while QEMU finishes (it holds its big lock then); only a
/// QEMU that is gone ends the wait early.
fn wait_migration(dir: &Path, pid: u32, deadline: Instant) -> Result<(), String> {
    loop {
        let progress = match qmp_call(dir, &QueryMigrate {}) {
            Ok(progress) => progress,
            Err(e) if !vm_dir::process_alive(pid) => return Err(format!("QEMU ended while writing: {e}")),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                std::thread::sleep(POLL);
                continue;
            }
        };
        match progress.status.as_deref() {
            Some("completed") => return Ok(()),
            Some(status @ ("failed" | "cancelled")) => {
                let why = progress.error_desc.unwrap_or_else(|| "no reason given".into());
                return Err(format!("QEMU's migration {status}: {why}"));
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(format!("QEMU did not write the snapshot within {SNAPSHOT_TIMEOUT_MS} ms"));
        }
        std::thread::sleep(POLL);
    }
}

/// Make the written stream durable and give it its name; returns its size.
fn finish(files: &Files, path: &Path) -> Result<u64, String> {
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    let part = std::fs::File::open(&files.part).map_err(|e| io(&files.part, e))?;
    part.sync_all().map_err(|e| io(&files.part, e))?;
    let bytes = part.metadata().map_err(|e| io(&files.part, e))?.len();
    check_stream(&files.part)?;
    std::fs::rename(&files.part, path).map_err(|e| io(path, e))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(|e| io(parent, e))?;
    }
    files.remove();
    Ok(bytes)
}

/// Whether `file` holds a header and then the start of a QEMU stream.
fn check_stream(file: &Path) -> Result<(), String> {
    read_header(file).map(|_| ())
}

/// The header of snapshot `file`, and the offset of the QEMU stream after it.
pub fn read_header(file: &Path) -> Result<(Header, u64), String> {
    let not_ours = |why: &str| format!("{} is not a snapshot of the qemu driver: {why}", file.display());
    let opened = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut reader = std::io::BufReader::new(opened);
    let mut line = Vec::new();
    (&mut reader)
        .take(HEADER_BYTES_MAX)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if line.last() != Some(&b'\n') {
        return Err(not_ours("no header line"));
    }
    let text = std::str::from_utf8(&line).map_err(|_| not_ours("no header line"))?.trim_end();
    let mut words = text.splitn(3, ' ');
    if words.next() != Some(MAGIC) {
        return Err(not_ours(&format!("it does not start with {MAGIC}")));
    }
    let version = words.next().unwrap_or_default();
    if version != FORMAT_VERSION.to_string() {
        return Err(not_ours(&format!("format {version:?}; this driver reads {FORMAT_VERSION}")));
    }
    let header: Header = serde_json::from_str(words.next().unwrap_or_default())
        .map_err(|e| not_ours(&format!("unreadable header: {e}")))?;
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic).map_err(|_| not_ours("no QEMU migration stream after the header"))?;
    if &magic != QEMU_STREAM_MAGIC {
        return Err(not_ours("no QEMU migration stream after the header"));
    }
    Ok((header, line.len() as u64))
}

/// The `exec:` URI that feeds QEMU the stream of snapshot `file`: from the end of its
/// `offset`-byte header to `end` (where the disk images start, or the file ends).
pub fn incoming_uri(file: &Path, offset: u64, end: u64) -> Result<String, String> {
    Ok(format!("exec:tail -c +{} {} | head -c {}", offset + 1, sh_quoted(file)?, end.saturating_sub(offset)))
}

/// Load a snapshot into `child`, a QEMU started with `-S -incoming defer` whose run
/// directory is `dir`, through `uri`; then let it run if `resume`. On an error the caller
/// ends QEMU.
pub fn restore(dir: &Path, child: &mut Child, uri: &str, resume: bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(RESTORE_TIMEOUT_MS);
    let exited = |child: &mut Child| match child.try_wait() {
        Ok(Some(status)) => Some(format!("QEMU exited with {status}: {}", qemu_said(dir, 3))),
        _ => None,
    };
    qmp_call(dir, &qmp::migrate_incoming { uri: Some(uri.to_owned()), channels: None, exit_on_error: None })?;
    loop {
        if let Some(exit) = exited(child) {
            return Err(exit);
        }
        // QMP may fail while QEMU exits on a stream it cannot load; the next round sees it.
        if let Ok(progress) = qmp_call(dir, &QueryMigrate {}) {
            match progress.status.as_deref() {
                Some("completed") => break,
                Some(status @ ("failed" | "cancelled")) => {
                    let why = progress.error_desc.unwrap_or_else(|| qemu_said(dir, 3));
                    return Err(format!("loading the snapshot {status}: {why}"));
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("QEMU did not load the snapshot within {RESTORE_TIMEOUT_MS} ms"));
        }
        std::thread::sleep(POLL);
    }
    // "completed" comes a moment before QEMU leaves the `inmigrate` state; a `cont` before
    // that would be overridden by the stream's own run state.
    loop {
        if let Some(exit) = exited(child) {
            return Err(exit);
        }
        if qmp_call(dir, &qmp::query_status {}).is_ok_and(|s| s.status != qmp::RunState::inmigrate) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!("QEMU did not finish loading the snapshot within {RESTORE_TIMEOUT_MS} ms"));
        }
        std::thread::sleep(POLL);
    }
    if resume {
        qmp_call(dir, &qmp::cont {}).map_err(|e| format!("resuming the restored guest: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let header = Header { domain: "web".into(), phase: "running".into(), memory_mib: 256 };
        let file = dir.path().join("a.snap");
        write_header(&file, &header).unwrap();
        std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b"QEVM\0\0\0\x03").unwrap();
        let (read, offset) = read_header(&file).unwrap();
        assert_eq!(read, header);
        assert!(read.resumes());
        let text = std::fs::read(&file).unwrap();
        assert_eq!(&text[offset as usize..offset as usize + 4], b"QEVM");

        let random = dir.path().join("random.snap");
        std::fs::write(&random, [7u8; 10_000]).unwrap();
        let err = read_header(&random).unwrap_err();
        assert!(err.contains("is not a snapshot of the qemu driver"), "{err}");
        let headless = dir.path().join("headless.snap");
        std::fs::write(&headless, &text[..offset as usize]).unwrap();
        let err = read_header(&headless).unwrap_err();
        assert!(err.contains("no QEMU migration stream"), "{err}");
    }

    #[test]
    fn paths_reach_the_shell_quoted_or_not_at_all() {
        assert_eq!(sh_quoted(Path::new("/a b/$x.snap")).unwrap(), "'/a b/$x.snap'");
        assert!(sh_quoted(Path::new("/a'b.snap")).unwrap_err().contains("single quote"));
        let files = Files::for_path(Path::new("/s/d/n.snap"));
        assert_eq!(
            files.uri().unwrap(),
            "exec:cat >> '/s/d/n.snap.part' && : > '/s/d/n.snap.part.written' || : > '/s/d/n.snap.part.failed'"
        );
        assert_eq!(
            incoming_uri(Path::new("/s/n.snap"), 80, 1080).unwrap(),
            "exec:tail -c +81 '/s/n.snap' | head -c 1000"
        );
    }
}
