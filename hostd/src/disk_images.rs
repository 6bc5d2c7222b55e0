//! Disk images inside snapshot files, and disk-only snapshots.
//!
//! A snapshot that holds disks carries a whole image of each writable disk, then a
//! trailer that lists them (index, the disk's file, offset, length, CRC-32):
//!
//! ```text
//! ... | image of disk i | image of disk j | {"disks":[...]} | u64 LE trailer length | DRVRDSKS
//! ```
//!
//! The qemu driver's full snapshots put them after QEMU's migration stream (`qemu::snapshot`).
//! A **disk-only snapshot** (of a stopped domain, under any process driver) is a header
//! line and then only the images:
//!
//! ```text
//! DROVER-DISK-SNAPSHOT 1 {"domain":"web"}\n | images | trailer
//! ```
//!
//! written under a temporary name, synced, renamed into place and the directory synced,
//! so a file under its own name is whole. A restore checks the header, every image's
//! checksum and that each names the disk file it is written back to, before it changes
//! any disk; each image is written beside its disk, synced and renamed over it (zero
//! pages stay holes, so a sparse disk stays sparse). A qcow2 disk's image is its file as
//! it is, so a restore puts back its clusters and its backing-file reference alike.

use std::io::{BufRead, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::driver::{DiskSpec, SnapshotTaken};

/// The last bytes of a snapshot that carries disk images.
const DISKS_MAGIC: &[u8; 8] = b"DRVRDSKS";
/// The longest disk trailer accepted.
const TRAILER_BYTES_MAX: u64 = 1 << 20;
/// Copies go in pieces of this size.
const COPY_CHUNK_BYTES: usize = 1 << 20;
/// The first word of every disk-only snapshot.
pub const MAGIC: &str = "DROVER-DISK-SNAPSHOT";
/// The disk-only snapshot format written and read.
pub const FORMAT_VERSION: u32 = 1;
/// The longest header line accepted.
const HEADER_BYTES_MAX: u64 = 4096;

/// One disk image in a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskImage {
    /// The disk's position in the domain's disks.
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

/// What a disk-only snapshot's header says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub domain: String,
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Append an image of each of `disks` ((index, file), in order) to the file `out`, then
/// the trailer that lists them; nothing when there is none. Pages of zeros are left as
/// holes, so the images of sparse disks take little room.
pub fn append(out: &Path, disks: &[(usize, String)]) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    if disks.is_empty() {
        return Ok(());
    }
    let snapshot = out.display().to_string();
    let out = std::fs::OpenOptions::new().write(true).open(out).map_err(|e| io(&snapshot, e))?;
    let mut offset = out.metadata().map_err(|e| io(&snapshot, e))?.len();
    let mut trailer = Trailer::default();
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    for (index, file) in disks {
        let disk = std::fs::File::open(file).map_err(|e| io(file, e))?;
        let len = disk.metadata().map_err(|e| io(file, e))?.len();
        let mut crc = crc32fast::Hasher::new();
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(COPY_CHUNK_BYTES as u64) as usize;
            disk.read_exact_at(&mut buf[..n], at).map_err(|e| io(file, e))?;
            crc.update(&buf[..n]);
            write_sparse(&out, &buf[..n], offset + at).map_err(|e| io(&snapshot, e))?;
            at += n as u64;
        }
        trailer.disks.push(DiskImage { index: *index, file: file.clone(), offset, len, crc: crc.finalize() });
        offset += len;
    }
    let json = serde_json::to_vec(&trailer).map_err(|e| e.to_string())?;
    let tail = [json.as_slice(), &(json.len() as u64).to_le_bytes(), DISKS_MAGIC].concat();
    out.write_all_at(&tail, offset).map_err(|e| io(&snapshot, e))
}

/// Write the pages of `data` that are not all zeros at `offset` of `out` (the rest stay
/// holes, read back as zeros); the caller gives the file its length.
fn write_sparse(out: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    for (i, page) in data.chunks(4096).enumerate() {
        if page.iter().any(|&b| b != 0) {
            out.write_all_at(page, offset + (i as u64) * 4096)?;
        }
    }
    Ok(())
}

/// Where what comes before the disk images of snapshot `file` ends, and the images.
pub fn read(file: &Path) -> Result<(u64, Vec<DiskImage>), String> {
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
pub fn restore(file: &Path, disks: &[DiskImage], targets: &[Option<&str>]) -> Result<RestoredDisks, String> {
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
                write_sparse(&out, &buf[..n], at)?;
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

/// The writable ones of `disks`, as (index, file).
fn writable(disks: &[DiskSpec]) -> Vec<(usize, String)> {
    disks.iter().enumerate().filter(|(_, d)| !d.read_only).map(|(i, d)| (i, d.path.clone())).collect()
}

/// Take a disk-only snapshot of `domain`'s writable `disks` (its VM not running) into
/// `path`; a failure leaves no file there.
pub fn take(path: &Path, domain: &str, disks: &[DiskSpec]) -> Result<SnapshotTaken, String> {
    let started = Instant::now();
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    let images = writable(disks);
    if images.is_empty() {
        return Err(format!("{domain} has no writable disk to snapshot"));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    let part = with_suffix(path, ".part");
    let written = (|| {
        let json = serde_json::to_string(&Header { domain: domain.to_owned() }).map_err(|e| e.to_string())?;
        let mut file = std::fs::File::create(&part).map_err(|e| io(&part, e))?;
        writeln!(file, "{MAGIC} {FORMAT_VERSION} {json}").map_err(|e| io(&part, e))?;
        drop(file);
        append(&part, &images)?;
        let file = std::fs::File::open(&part).map_err(|e| io(&part, e))?;
        file.sync_all().map_err(|e| io(&part, e))?;
        // What it takes on disk: the images' holes take nothing.
        let bytes = file.metadata().map_err(|e| io(&part, e))?.blocks() * 512;
        std::fs::rename(&part, path).map_err(|e| io(path, e))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(|e| io(parent, e))?;
        }
        Ok(bytes)
    })();
    match written {
        Ok(bytes) => Ok(SnapshotTaken { bytes, duration_ms: started.elapsed().as_millis() as u64 }),
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

/// The one-line header `MAGIC VERSION {json}` that starts snapshot `file` (this module's
/// disk-only snapshots, the qemu driver's): the JSON read as `H`, and the line's length.
/// `kind` says what the file must be, for the errors ("a disk snapshot").
pub fn read_header_line<H: serde::de::DeserializeOwned>(
    file: &Path,
    magic: &str,
    version: u32,
    kind: &str,
) -> Result<(H, u64), String> {
    let not_ours = |why: &str| format!("{} is not {kind}: {why}", file.display());
    let opened = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut line = Vec::new();
    std::io::BufReader::new(opened)
        .take(HEADER_BYTES_MAX)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if line.last() != Some(&b'\n') {
        return Err(not_ours("no header line"));
    }
    let text = std::str::from_utf8(&line).map_err(|_| not_ours("no header line"))?.trim_end();
    let mut words = text.splitn(3, ' ');
    if words.next() != Some(magic) {
        return Err(not_ours(&format!("it does not start with {magic}")));
    }
    let found = words.next().unwrap_or_default();
    if found != version.to_string() {
        return Err(not_ours(&format!("format {found:?}; this build reads {version}")));
    }
    let header: H = serde_json::from_str(words.next().unwrap_or_default())
        .map_err(|e| not_ours(&format!("unreadable header: {e}")))?;
    Ok((header, line.len() as u64))
}

/// The header of disk-only snapshot `file`, and where its images start.
pub fn read_header(file: &Path) -> Result<(Header, u64), String> {
    read_header_line(file, MAGIC, FORMAT_VERSION, "a disk snapshot")
}

/// Write disk-only snapshot `file` of `domain` back over its writable `disks` (its VM not
/// running); nothing changes unless every image is whole and names its disk.
pub fn restore_snapshot(file: &Path, domain: &str, disks: &[DiskSpec]) -> Result<(), String> {
    let (header, start) = read_header(file)?;
    if header.domain != domain {
        return Err(format!("{} is a disk snapshot of {}, not of {domain}", file.display(), header.domain));
    }
    let (end, images) = read(file)?;
    if images.is_empty() || end != start {
        return Err(format!("{}: the disk images are damaged or missing", file.display()));
    }
    let targets: Vec<Option<&str>> =
        disks.iter().map(|d| (!d.read_only).then_some(d.path.as_str())).collect();
    restore(file, &images, &targets)?.keep();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use controlplane::model::VolumeFormat;

    fn disk(path: &Path, read_only: bool) -> DiskSpec {
        DiskSpec { path: path.display().to_string(), format: VolumeFormat::Raw, read_only }
    }

    #[test]
    fn a_disk_snapshot_puts_back_the_writable_disks_and_leaves_the_read_only_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a, ro, b) = (dir.path().join("a"), dir.path().join("ro"), dir.path().join("b"));
        std::fs::write(&a, b"first a").unwrap();
        std::fs::write(&ro, b"read only").unwrap();
        // A sparse disk with data past a hole.
        let f = std::fs::File::create(&b).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"deep", 5 << 20).unwrap();
        let disks = [disk(&a, false), disk(&ro, true), disk(&b, false)];
        let snap = dir.path().join("web/s1-7.snap");
        let taken = take(&snap, "web", &disks).unwrap();
        let on_disk = std::fs::metadata(&snap).unwrap();
        assert_eq!(taken.bytes, on_disk.blocks() * 512);
        assert!(
            on_disk.len() > 8 << 20 && taken.bytes < 1 << 20,
            "the hole of disk b stays a hole: {taken:?}"
        );
        assert!(!with_suffix(&snap, ".part").exists());
        std::fs::write(&a, b"second a, longer").unwrap();
        std::fs::write(&b, b"overwritten").unwrap();
        std::fs::write(&ro, b"changed by hand").unwrap();
        restore_snapshot(&snap, "web", &disks).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"first a");
        let back = std::fs::read(&b).unwrap();
        assert_eq!(back.len(), 8 << 20);
        assert_eq!(&back[5 << 20..(5 << 20) + 4], b"deep");
        assert!(std::fs::metadata(&b).unwrap().blocks() * 512 < 1 << 20, "the hole stays a hole");
        assert_eq!(std::fs::read(&ro).unwrap(), b"changed by hand", "read-only disks are not in it");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".before-restore") || n.contains(".restoring"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// `qemu-io` (from qemu-utils, as `scripts/deps` installs) runs `command` on `file`.
    fn qemu_io(file: &Path, command: &str) -> bool {
        let out = std::process::Command::new("qemu-io").args(["-c", command]).arg(file).output().unwrap();
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed")
    }

    #[test]
    fn a_qcow2_overlay_comes_back_with_its_clusters_and_its_backing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (base, top) = (dir.path().join("base"), dir.path().join("top"));
        std::fs::write(&base, vec![0x11u8; 1 << 20]).unwrap();
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&top)
            .arg("1M")
            .status()
            .unwrap();
        assert!(made.success());
        assert!(qemu_io(&top, "write -q -P 0x41 0 4k"));
        let disks =
            [DiskSpec { path: top.display().to_string(), format: VolumeFormat::Qcow2, read_only: false }];
        let snap = dir.path().join("s.snap");
        take(&snap, "web", &disks).unwrap();
        assert!(qemu_io(&top, "write -q -P 0x42 0 4k"));
        assert!(qemu_io(&top, "write -q -P 0x43 64k 4k"));
        restore_snapshot(&snap, "web", &disks).unwrap();
        assert!(qemu_io(&top, "read -q -P 0x41 0 4k"), "the cluster written before the snapshot");
        assert!(qemu_io(&top, "read -q -P 0x11 64k 4k"), "read through to the backing file again");
        let check = std::process::Command::new("qemu-img").arg("check").arg("-q").arg(&top).status().unwrap();
        assert!(check.success(), "a consistent qcow2 image");
    }

    #[test]
    fn a_damaged_or_foreign_disk_snapshot_is_refused_and_changes_no_disk() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, vec![7u8; 10_000]).unwrap();
        let disks = [disk(&a, false)];
        let snap = dir.path().join("s.snap");
        take(&snap, "web", &disks).unwrap();
        std::fs::write(&a, b"now").unwrap();
        let whole = std::fs::read(&snap).unwrap();
        let refused = |bytes: &[u8], domain: &str, want: &str| {
            std::fs::write(&snap, bytes).unwrap();
            let e = restore_snapshot(&snap, domain, &disks).unwrap_err();
            assert!(e.contains(want), "{e} does not say {want}");
            assert_eq!(std::fs::read(&a).unwrap(), b"now");
        };
        refused(&whole, "db", "not of db");
        let mut corrupt = whole.clone();
        corrupt[100] ^= 0xff;
        refused(&corrupt, "web", "fails its checksum");
        refused(&whole[..whole.len() - 20], "web", "damaged");
        let mut version = whole.clone();
        let at = MAGIC.len() + 1;
        version[at] = b'9';
        refused(&version, "web", "format \"9\"");
        refused(b"QEVM and then nothing", "web", "not a disk snapshot");
        // Another disk file than the one imaged is not written over.
        std::fs::write(&snap, &whole).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"other").unwrap();
        let e = restore_snapshot(&snap, "web", &[disk(&other, false)]).unwrap_err();
        assert!(e.contains("when the snapshot was taken"), "{e}");
        assert_eq!(std::fs::read(&other).unwrap(), b"other");
    }
}
