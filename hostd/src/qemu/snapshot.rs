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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use qapi::qmp;

use super::{qemu_said, qmp_call};
use crate::disk_images::{self, with_suffix};
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
/// The migration bandwidth cap while snapshotting: none that matters (QEMU's default, 128
/// MiB/s, would hold a stopped guest paused for seconds per GiB).
pub(crate) const MAX_BANDWIDTH: u64 = 1 << 40;
/// How often QEMU is asked how far it got.
const POLL: Duration = Duration::from_millis(5);
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

    /// Whether snapshot `file` with this header can start `spec`'s VM: a guest of the same
    /// size, and, for a clone (another domain's snapshot), no NICs: QEMU restores each
    /// NIC's MAC from the migration stream, so a clone would put the source's MACs on the
    /// network beside the source's own.
    pub fn fits(&self, file: &str, spec: &crate::driver::VmSpec) -> Result<(), String> {
        if self.memory_mib != spec.memory_mib {
            return Err(format!(
                "snapshot {file} is of a {} MiB guest, the domain has {} MiB",
                self.memory_mib, spec.memory_mib
            ));
        }
        if self.domain != spec.domain && !spec.nics.is_empty() {
            return Err(format!(
                "snapshot {file} is of domain {}: QEMU restores each NIC's MAC from the \
                 snapshot, so a clone with NICs would put {}'s MACs on the network; clone it on \
                 a host with the kvm driver (the own VMM hands the clone its own MACs)",
                self.domain, self.domain
            ));
        }
        Ok(())
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
            // (In the clear: a live migration over TLS before this one leaves QEMU's
            // `tls-creds` set, which QEMU would wrap the file's stream in.)
            let limits = qmp::MigrateSetParameters {
                max_bandwidth: Some(MAX_BANDWIDTH),
                tls_creds: Some(qmp::StrOrNull::s(String::new())),
                ..Default::default()
            };
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
/// `part`, then the trailer that lists them (`disk_images`); nothing when there is none.
fn append_disks(dir: &Path, part: &Path) -> Result<(), String> {
    let blocks = qmp_call(dir, &QueryBlock {})?;
    let disks: Vec<(usize, String)> = blocks
        .into_iter()
        .filter_map(|block| {
            let index = block.device.strip_prefix("disk")?.parse::<usize>().ok()?;
            let inserted = block.inserted.filter(|i| !i.ro)?;
            Some((index, inserted.file))
        })
        .collect();
    disk_images::append(part, &disks)
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
    use std::os::unix::fs::FileExt;
    let (header, len) =
        disk_images::read_header_line(file, MAGIC, FORMAT_VERSION, "a snapshot of the qemu driver")?;
    let no_stream = || {
        format!(
            "{} is not a snapshot of the qemu driver: no QEMU migration stream after the header",
            file.display()
        )
    };
    let opened = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut magic = [0u8; 4];
    opened.read_exact_at(&mut magic, len).map_err(|_| no_stream())?;
    if &magic != QEMU_STREAM_MAGIC {
        return Err(no_stream());
    }
    Ok((header, len))
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
    fn a_snapshot_restores_a_guest_of_its_size_and_clones_only_without_nics() {
        use crate::driver::{Attachment, NicSpec, VmSpec};
        let header = Header { domain: "web".into(), phase: "running".into(), memory_mib: 256 };
        let mut spec = VmSpec {
            domain: "web".into(),
            generation: 1,
            vcpus: 1,
            memory_mib: 256,
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            disks: vec![],
            nics: vec![NicSpec {
                mac: "52:54:00:00:00:01".into(),
                network: "lan".into(),
                attachment: Attachment::Isolated("drvb0".into()),
            }],
            restore_from: Some("s.snap".into()),
            disks_from: None,
        };
        header.fits("s.snap", &spec).unwrap();
        spec.memory_mib = 512;
        let err = header.fits("s.snap", &spec).unwrap_err();
        assert!(err.contains("is of a 256 MiB guest, the domain has 512 MiB"), "{err}");
        spec.memory_mib = 256;
        spec.domain = "web2".into();
        let err = header.fits("s.snap", &spec).unwrap_err();
        assert!(err.contains("is of domain web: QEMU restores each NIC's MAC"), "{err}");
        spec.nics.clear();
        header.fits("s.snap", &spec).unwrap();
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
