//! Volume files in a directory pool, as a host makes them: `<pool path>/<volume name>`.
//!
//! Raw files are made with std (sparse: a length and no blocks; preallocated: every
//! block allocated with `fallocate`); qcow2 files, overlays on a backing file, imports
//! and qcow2 growth with `qemu-img` (Debian's `qemu-utils`). A new file is written under a
//! temporary name beside its place, synced, renamed into place and the directory synced,
//! so a crash leaves either no file or the whole one; a host that finds the file already
//! there, of the right format and size, takes it as its own earlier work (it crashed
//! before its report) rather than failing the volume, or as the work of a host fenced
//! before its report, which the cluster then asked of this one. A host whose lease has
//! passed (`VolumeJob::commit_by_ms`) starts no operation and moves no new file into
//! place: the cluster may have fenced it and asked another host by then.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use controlplane::model::{VolumeFormat, VolumeOp};

use crate::volumes::VolumeJob;

/// Where volume `name` of the pool at `pool_path` has its file.
pub fn volume_path(pool_path: &str, name: &str) -> PathBuf {
    Path::new(pool_path.trim_end_matches('/')).join(name)
}

const MIB: u64 = 1 << 20;

/// Carry out `job` on this host's file system; returns the MiB the file takes on disk
/// (0 once deleted).
pub fn carry_out(job: &VolumeJob) -> Result<u64, String> {
    lease_held(job)?;
    match &job.op {
        VolumeOp::Create { preallocate, import } => create(job, *preallocate, import.as_deref()),
        VolumeOp::Resize { capacity_mib } => resize(&job.path, job.format, *capacity_mib),
        VolumeOp::Delete => delete(&job.path).map(|()| 0),
    }
}

fn create(job: &VolumeJob, preallocate: bool, import: Option<&str>) -> Result<u64, String> {
    let path = &job.path;
    let dir = path.parent().ok_or_else(|| format!("{} has no directory", path.display()))?;
    fs::create_dir_all(dir).map_err(|e| format!("cannot make the pool directory {}: {e}", dir.display()))?;
    if path.exists() {
        // A retry of its own earlier work, or someone else's file: only the first is taken.
        let (format, size) = image_info(path)?;
        if format == job.format && size == job.capacity_mib * MIB {
            return allocation_mib(path);
        }
        return Err(format!(
            "{} already exists (a {} file of {size} bytes)",
            path.display(),
            format_name(format)
        ));
    }
    let name = path.file_name().and_then(|n| n.to_str()).ok_or("the volume's name is not a file name")?;
    let part = dir.join(format!(".{name}.{}.part", job.id));
    let _ = fs::remove_file(&part);
    let made = make(job, &part, preallocate, import).and_then(|()| {
        File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", part.display()))?;
        // The commit point: a making that outlasted the lease leaves nothing.
        lease_held(job)?;
        fs::rename(&part, path).map_err(|e| format!("cannot move the new file into place: {e}"))?;
        sync_dir(dir)
    });
    if let Err(e) = made {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    allocation_mib(path)
}

/// Refuse to go on once the host's lease has passed.
fn lease_held(job: &VolumeJob) -> Result<(), String> {
    match job.commit_by_ms {
        Some(by) if vmm_control::lease::monotonic_ms() >= by => {
            Err("this host's lease has passed; the cluster may have asked another host".into())
        }
        _ => Ok(()),
    }
}

/// Write the new file at `part`.
fn make(job: &VolumeJob, part: &Path, preallocate: bool, import: Option<&str>) -> Result<(), String> {
    let bytes = job.capacity_mib * MIB;
    if let Some(source) = import {
        let source = Path::new(source);
        let (_, size) = image_info(source)?;
        if size > bytes {
            return Err(format!(
                "{} holds {} MiB, more than the volume's {} MiB",
                source.display(),
                size.div_ceil(MIB),
                job.capacity_mib
            ));
        }
        qemu_img(&[
            "convert".as_ref(),
            "-q".as_ref(),
            "-O".as_ref(),
            format_name(job.format).as_ref(),
            source.as_os_str(),
            part.as_os_str(),
        ])?;
        grow(part, job.format, bytes)?;
        if preallocate && job.format == VolumeFormat::Raw {
            allocate(part, bytes)?;
        }
        return Ok(());
    }
    match (job.format, &job.backing) {
        (VolumeFormat::Raw, _) => {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(part)
                .map_err(|e| format!("cannot create {}: {e}", part.display()))?;
            file.set_len(bytes).map_err(|e| format!("cannot size {}: {e}", part.display()))?;
            if preallocate {
                allocate(part, bytes)?;
            }
            Ok(())
        }
        (VolumeFormat::Qcow2, None) => qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            part.as_os_str(),
            bytes.to_string().as_ref(),
        ]),
        (VolumeFormat::Qcow2, Some((backing, backing_format))) => {
            if !backing.is_file() {
                return Err(format!("the backing file {} is missing", backing.display()));
            }
            qemu_img(&[
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-b".as_ref(),
                backing.as_os_str(),
                "-F".as_ref(),
                format_name(*backing_format).as_ref(),
                part.as_os_str(),
                bytes.to_string().as_ref(),
            ])
        }
    }
}

fn resize(path: &Path, format: VolumeFormat, capacity_mib: u64) -> Result<u64, String> {
    if !path.is_file() {
        return Err(format!("{} is missing", path.display()));
    }
    grow(path, format, capacity_mib * MIB)?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
    allocation_mib(path)
}

/// Grow the image at `path` to `bytes` of guest-visible size (a larger one stays).
fn grow(path: &Path, format: VolumeFormat, bytes: u64) -> Result<(), String> {
    let (_, size) = image_info(path)?;
    if size >= bytes {
        return Ok(());
    }
    match format {
        VolumeFormat::Raw => OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| format!("cannot grow {}: {e}", path.display())),
        VolumeFormat::Qcow2 => {
            qemu_img(&["resize".as_ref(), "-q".as_ref(), path.as_os_str(), bytes.to_string().as_ref()])
        }
    }
}

fn delete(path: &Path) -> Result<(), String> {
    match fs::remove_file(path) {
        Ok(()) => path.parent().map_or(Ok(()), sync_dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

/// Allocate every block of the first `bytes` of `path`.
fn allocate(path: &Path, bytes: u64) -> Result<(), String> {
    let file = OpenOptions::new().write(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes)
        .map_err(|e| format!("cannot preallocate {} MiB: {e}", bytes / MIB))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

/// What the file takes on disk, in MiB (rounded up).
fn allocation_mib(path: &Path) -> Result<u64, String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((meta.blocks() * 512).div_ceil(MIB))
}

fn format_name(format: VolumeFormat) -> &'static str {
    match format {
        VolumeFormat::Raw => "raw",
        VolumeFormat::Qcow2 => "qcow2",
    }
}

/// An image's format and guest-visible size in bytes: a qcow2 file's from its header
/// (through `qemu-img info`), anything else is raw and as large as the file.
pub fn image_info(path: &Path) -> Result<(VolumeFormat, u64), String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut magic = [0u8; 4];
    let is_qcow2 = File::open(path)
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut magic))
        .map(|()| magic == *b"QFI\xfb")
        .unwrap_or(false);
    if !is_qcow2 {
        return Ok((VolumeFormat::Raw, meta.len()));
    }
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run qemu-img (install qemu-utils): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img info {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info: {e}"))?;
    let size = info["virtual-size"].as_u64().ok_or("qemu-img info gave no virtual-size")?;
    Ok((VolumeFormat::Qcow2, size))
}

fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run qemu-img (install qemu-utils): {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let verb = args.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
    Err(format!("qemu-img {verb}: {}", String::from_utf8_lossy(&out.stderr).trim()))
}

#[cfg(test)]
mod tests {
    use controlplane::model::VolumeRef;

    use super::*;

    fn job(
        dir: &Path,
        name: &str,
        id: u64,
        op: VolumeOp,
        format: VolumeFormat,
        capacity_mib: u64,
    ) -> VolumeJob {
        VolumeJob {
            volume: VolumeRef::new("p", name),
            id,
            op,
            path: volume_path(dir.to_str().unwrap(), name),
            format,
            capacity_mib,
            backing: None,
            commit_by_ms: None,
        }
    }

    fn create() -> VolumeOp {
        VolumeOp::Create { preallocate: false, import: None }
    }

    #[test]
    fn a_host_whose_lease_passed_starts_and_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        let now = vmm_control::lease::monotonic_ms();
        let mut late = job(&pool, "v", 1, create(), VolumeFormat::Raw, 8);
        late.commit_by_ms = Some(now);
        assert!(carry_out(&late).unwrap_err().contains("lease has passed"));
        assert!(!late.path.exists());
        assert_eq!(fs::read_dir(&pool).map(|d| d.count()).unwrap_or(0), 0, "no part file either");
        // Held: made; and the same file is taken as done by the host asked next.
        late.commit_by_ms = Some(now + 60_000);
        carry_out(&late).unwrap();
        let mut next = job(&pool, "v", 7, create(), VolumeFormat::Raw, 8);
        next.commit_by_ms = Some(now + 60_000);
        carry_out(&next).unwrap();
        for op in [VolumeOp::Resize { capacity_mib: 16 }, VolumeOp::Delete] {
            let mut passed = job(&pool, "v", 8, op, VolumeFormat::Raw, 8);
            passed.commit_by_ms = Some(now);
            assert!(carry_out(&passed).unwrap_err().contains("lease has passed"));
            assert_eq!(fs::metadata(&late.path).unwrap().len(), 8 * MIB, "untouched");
        }
    }

    #[test]
    fn raw_files_are_sparse_or_preallocated_grow_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        let sparse = job(&pool, "sparse", 1, create(), VolumeFormat::Raw, 64);
        assert_eq!(carry_out(&sparse).unwrap(), 0, "a sparse file takes no blocks");
        assert_eq!(fs::metadata(&sparse.path).unwrap().len(), 64 * MIB);
        let full =
            job(&pool, "full", 2, VolumeOp::Create { preallocate: true, import: None }, VolumeFormat::Raw, 8);
        assert_eq!(carry_out(&full).unwrap(), 8, "a preallocated file takes every block");
        // Done again (a retry after a crash): the same file is taken as done.
        assert_eq!(carry_out(&sparse).unwrap(), 0);
        // Another's file of that name is not.
        let other = job(&pool, "sparse", 3, create(), VolumeFormat::Raw, 32);
        assert!(carry_out(&other).unwrap_err().contains("already exists"));
        let grow = job(&pool, "sparse", 4, VolumeOp::Resize { capacity_mib: 128 }, VolumeFormat::Raw, 64);
        carry_out(&grow).unwrap();
        assert_eq!(fs::metadata(&sparse.path).unwrap().len(), 128 * MIB);
        let delete = job(&pool, "sparse", 5, VolumeOp::Delete, VolumeFormat::Raw, 128);
        assert_eq!(carry_out(&delete).unwrap(), 0);
        assert!(!sparse.path.exists());
        assert_eq!(carry_out(&delete).unwrap(), 0, "a file already gone is deleted");
        let leftovers: Vec<_> = fs::read_dir(&pool).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("full")], "no temporary file is left");
    }

    #[test]
    fn qcow2_files_clones_imports_and_resizes_go_through_qemu_img() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path();
        let base = job(pool, "base", 1, create(), VolumeFormat::Qcow2, 32);
        carry_out(&base).unwrap();
        assert_eq!(image_info(&base.path).unwrap(), (VolumeFormat::Qcow2, 32 * MIB));
        let mut clone = job(pool, "clone", 2, create(), VolumeFormat::Qcow2, 48);
        clone.backing = Some((base.path.clone(), VolumeFormat::Qcow2));
        carry_out(&clone).unwrap();
        let out = Command::new("qemu-img").args(["info", "--output=json"]).arg(&clone.path).output().unwrap();
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["backing-filename"].as_str(), base.path.to_str(), "an overlay on its backing file");
        assert_eq!(info["virtual-size"].as_u64(), Some(48 * MIB));
        let grow = job(pool, "clone", 3, VolumeOp::Resize { capacity_mib: 96 }, VolumeFormat::Qcow2, 48);
        carry_out(&grow).unwrap();
        assert_eq!(image_info(&clone.path).unwrap(), (VolumeFormat::Qcow2, 96 * MIB));

        // Import: a raw image with data, copied into a qcow2 volume and grown.
        let source = pool.join("cloud.img");
        let mut data = vec![0u8; 2 << 20];
        data[..12].copy_from_slice(b"hello, image");
        fs::write(&source, &data).unwrap();
        let import = VolumeOp::Create { preallocate: false, import: Some(source.display().to_string()) };
        let imported = job(pool, "imported", 4, import.clone(), VolumeFormat::Qcow2, 16);
        carry_out(&imported).unwrap();
        assert_eq!(image_info(&imported.path).unwrap(), (VolumeFormat::Qcow2, 16 * MIB));
        let back = pool.join("back.raw");
        let convert = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&imported.path)
            .arg(&back)
            .status()
            .unwrap();
        assert!(convert.success());
        assert_eq!(&fs::read(&back).unwrap()[..12], b"hello, image", "the import holds the image's data");
        // An image larger than the volume, or missing, is refused with the reason.
        let small = job(pool, "small", 5, import, VolumeFormat::Raw, 1);
        assert!(carry_out(&small).unwrap_err().contains("more than the volume's 1 MiB"));
        let missing = VolumeOp::Create { preallocate: false, import: Some("/nonexistent/x.img".into()) };
        assert!(carry_out(&job(pool, "m", 6, missing, VolumeFormat::Raw, 1))
            .unwrap_err()
            .contains("/nonexistent/x.img"));
        assert!(!pool.join("small").exists() && !pool.join("m").exists(), "a failed create leaves no file");
    }

    #[test]
    fn a_pool_that_cannot_hold_files_fails_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, b"").unwrap();
        let err = carry_out(&job(&blocker, "v", 1, create(), VolumeFormat::Raw, 1)).unwrap_err();
        assert!(err.contains("cannot make the pool directory"), "{err}");
    }
}
