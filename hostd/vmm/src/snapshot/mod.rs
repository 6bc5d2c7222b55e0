//! A VM's whole state in one file: every vCPU, the in-kernel irqchip, PIT and clock, every
//! device, and guest memory. Written by `Vm::snapshot`, read back by `Vm::start_from` with
//! `Source::Snapshot`, for revert, clone and (later) migration.
//!
//! # Format, version 2 (all integers little endian)
//!
//! | offset | size | what |
//! |---|---|---|
//! | 0 | 8 | magic `DRVRSNAP` |
//! | 8 | 4 | format version ([`FORMAT_VERSION`]) |
//! | 12 | 4 | `S`: length of the state section |
//! | 16 | 8 | `M`: length of the memory image (the guest's RAM size) |
//! | 24 | 4 | CRC-32 of the state section |
//! | 28 | 4 | CRC-32 of the memory pages [`MemoryLayout::runs`] lists, in order |
//! | 32 | 4 | `N`: how many disk images follow the state section (at most [`DISKS_MAX`]) |
//! | 36 | 4 | CRC-32 of the header: bytes 0 to `48 + 16 N`, with these four as zeros |
//! | 40 | 8 | zeros |
//! | 48 | `16 N` | the disk table, one entry per image: the disk's index in guest order (4), the image's CRC-32 (4), its length `D_k` (8) |
//! | `48 + 16 N` | | zeros up to [`PAGE_BYTES`] |
//! | 4096 | `M` | the memory image: guest-physical page `p` at `4096 + p * 4096` |
//! | 4096 + `M` | `S` | the state section: [`VmState`] as JSON |
//! | `4096 + M + S` rounded up to a page | `D_0` | the first disk image |
//! | the end of image `k - 1` rounded up to a page | `D_k` | image `k` |
//!
//! Every writable disk has an image, in guest order; a read-only disk has none (the VM
//! cannot have changed it), only its device's state (and its size, which must not have
//! changed by the restore) in the state section's [`VmState::disks`], as every disk does.
//! The file ends exactly where the last image ends (with no images: where the state
//! section ends).
//!
//! # Format, version 1 (read, never written)
//!
//! The same up to offset 32, then `D` (8), the length of the one disk's image (0: the VM
//! had no disk), and its CRC-32 (4); the image, of the VM's only (writable) disk, follows
//! the state section as image 0 does above. Its state section names that disk's device
//! `disk` (one transport state or null) where version 2 has `disks`. A version-1 file
//! restores as a VM with no disk or one writable disk.
//!
//! # Both
//!
//! Pages that are all zeros are not written: they are holes in a sparse file (guest
//! memory starts zeroed, and so does a sparse disk), so a file costs the disk only what
//! the guest has touched. The disk images are taken with the memory, the guest paused
//! across all of it, so a restore brings memory and disks back to one instant: a restore
//! writes every image back over its disk's file before the VM opens it, through a file
//! beside each (checked and written for every disk before any is moved into place; if one
//! cannot be moved, those already moved are put back, [`commit_disks`]). The
//! memory image sits page-aligned so a restore maps it privately (copy on write) as the
//! new VM's RAM instead of copying it. A file is accepted only if its magic and version
//! are known, its size is exactly what the header says, every checksum matches, no data
//! lies outside the listed pages (where a file system keeps no holes, it must read as
//! zeros), and the state fits the VM being built; all of that is checked before any vCPU
//! runs. Snapshots are written to `<path>.part`, synced once the guest runs again, and
//! renamed into place, so a failed or interrupted save leaves nothing at `path`.

pub mod vcpu_state;
pub mod vm_state;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::bitmap::NewBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{AtomicBitmap, GuestMemoryMmap, GuestRegionMmap};

use crate::devices::serial::SerialSnapshot;
use crate::devices::virtio_mmio::TransportState;
use crate::layout::DISKS_MAX;
pub use vcpu_state::VcpuState;
pub use vm_state::KvmVmState;

pub const MAGIC: [u8; 8] = *b"DRVRSNAP";
/// The version this VMM writes.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this VMM still restores.
pub const FORMAT_VERSION_OLDEST: u32 = 1;
/// The header's fixed part; version 2's disk table follows it.
const HEADER_BYTES: usize = 48;
/// One entry of the disk table.
const DISK_ENTRY_BYTES: usize = 16;
pub const PAGE_BYTES: u64 = 4096;
/// Where the memory image starts.
const MEMORY_OFFSET: u64 = PAGE_BYTES;
/// The state section's largest size (32 vCPUs with their XSAVE areas fit many times).
pub const STATE_BYTES_MAX: u32 = 16 << 20;
/// How much memory is scanned at once.
const CHUNK_BYTES: usize = 1 << 20;

static ZERO_PAGE: [u8; PAGE_BYTES as usize] = [0; PAGE_BYTES as usize];

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a Drover VM snapshot (bad magic)")]
    Magic { path: String },
    #[error(
        "{path} has snapshot format version {found}; this VMM reads versions \
         {FORMAT_VERSION_OLDEST} to {FORMAT_VERSION}"
    )]
    Version { path: String, found: u32 },
    #[error("{path} is {actual} bytes but its header says {expected}: truncated or damaged")]
    Size { path: String, expected: u64, actual: u64 },
    #[error("{path}: the {section} section fails its checksum: the file is damaged")]
    Checksum { path: String, section: &'static str },
    #[error("{path}: the image of disk {index} fails its checksum: the file is damaged")]
    DiskChecksum { path: String, index: usize },
    #[error("{path} is malformed: {reason}")]
    Malformed { path: String, reason: String },
    #[error("the snapshot does not fit this VM: {0}")]
    Mismatch(String),
    #[error("KVM: {what}: {source}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error("guest memory: {0}")]
    Memory(String),
}

/// Everything but guest memory's contents.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// The domain the snapshot was taken of (a clone restores it under another name).
    pub domain: String,
    pub memory_mib: u64,
    /// Whether the VM was paused when taken: a restore comes back paused then.
    pub paused: bool,
    pub vcpus: Vec<VcpuState>,
    pub kvm: KvmVmState,
    pub serial: SerialSnapshot,
    /// Every disk, in guest order.
    pub disks: Vec<DiskState>,
    pub nics: Vec<TransportState>,
    /// Each NIC's MAC, in guest order. A restore with other MACs (a clone) announces a
    /// configuration change to the guest. Absent from snapshots taken before it was kept:
    /// a restore of one announces a change on every NIC, which a guest that reads the MAC
    /// again takes as no change.
    #[serde(default)]
    pub nic_macs: Vec<[u8; 6]>,
    pub memory: MemoryLayout,
}

impl VmState {
    /// Whether this state fits a VM of this shape (its memory, vCPUs, disks and their
    /// modes, NICs); a restore and an incoming migration both check it before any vCPU
    /// exists.
    pub fn check_fits(
        &self,
        memory_mib: u64,
        vcpus: usize,
        disks_read_only: &[bool],
        nics: usize,
    ) -> Result<(), SnapshotError> {
        let s = self;

        let mismatch = |what: &str, snap: String, vm: String| {
            Err(SnapshotError::Mismatch(format!("{what}: the snapshot has {snap}, the VM {vm}")))
        };
        if s.memory_mib != memory_mib {
            return mismatch("memory", format!("{} MiB", s.memory_mib), format!("{memory_mib} MiB"));
        }
        if s.vcpus.len() != vcpus {
            return mismatch("vCPUs", s.vcpus.len().to_string(), vcpus.to_string());
        }
        if s.disks.len() != disks_read_only.len() {
            return mismatch("disks", s.disks.len().to_string(), disks_read_only.len().to_string());
        }
        let mode = |read_only: bool| if read_only { "read-only" } else { "writable" }.to_owned();
        for (i, (disk, &read_only)) in s.disks.iter().zip(disks_read_only).enumerate() {
            if disk.read_only != read_only {
                return mismatch(&format!("disk {i}"), mode(disk.read_only), mode(read_only));
            }
        }
        if s.nics.len() != nics {
            return mismatch("NICs", s.nics.len().to_string(), nics.to_string());
        }
        Ok(())
    }
}

/// One disk in a snapshot (a writable one's contents are its image in the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskState {
    pub read_only: bool,
    /// What the guest was told its capacity is, in 512-byte sectors.
    pub sectors: u64,
    pub transport: TransportState,
}

/// Which guest pages the memory image holds data for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemoryLayout {
    /// (first page, page count), ascending and not overlapping.
    pub runs: Vec<(u64, u64)>,
}

pub use vmm_control::control::SnapshotInfo;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.display().to_string(), source }
}

/// The whole of `mem` (one region from guest address 0, `memory_bytes` long) as bytes.
///
/// SAFETY (of the callers' promise): nothing may write guest memory while the slice
/// lives; every caller holds the VM's vCPUs parked and its devices locked, or owns a
/// mapping no VM runs on yet.
fn guest_bytes(mem: &GuestMemoryMmap, memory_bytes: u64) -> Result<&[u8], SnapshotError> {
    let host = mem.get_host_address(GuestAddress(0)).map_err(|e| SnapshotError::Memory(e.to_string()))?;
    let len = usize::try_from(memory_bytes).map_err(|e| SnapshotError::Memory(e.to_string()))?;
    let region_len = mem.iter().next().map_or(0, |r| r.len());
    assert_eq!(mem.num_regions(), 1, "guest memory is one region");
    assert_eq!(region_len, memory_bytes, "guest memory is {region_len} bytes, the state says {memory_bytes}");
    // SAFETY: `host..host + len` is the one mapping of `mem`'s single region (checked
    // above), readable and alive for as long as `mem` is borrowed; the callers guarantee
    // that nothing writes it meanwhile (see above), so a shared slice over it is sound.
    Ok(unsafe { std::slice::from_raw_parts(host, len) })
}

/// A snapshot written to its `.part` file, not yet synced nor in place.
#[derive(Debug)]
pub struct Written {
    path: PathBuf,
    part: PathBuf,
    file: Option<File>,
}

impl Written {
    /// Sync the file and move it into place; returns the bytes it takes on disk.
    pub fn commit(mut self) -> Result<u64, SnapshotError> {
        // On an error `self` drops with its file, which removes the `.part` file.
        let file = self.file.as_ref().expect("committed once");
        file.sync_all().map_err(io(&self.part))?;
        let bytes = file.metadata().map_err(io(&self.part))?.blocks() * 512;
        std::fs::rename(&self.part, &self.path).map_err(io(&self.path))?;
        self.file = None;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        }
        Ok(bytes)
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

/// Which pages of the anonymous mapping of `len` bytes at host address `start` the
/// process has never touched (neither present nor swapped out, per `/proc/self/pagemap`):
/// they read as zeros, and reading them only to find that out would map a zero page into
/// each. `None` when the kernel does not say; then every page is read. (An address, not
/// a slice: a live migration asks while the guest writes its memory.)
pub(crate) fn untouched_pages(start: u64, len: usize) -> Option<Vec<bool>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let pages = len / PAGE_BYTES as usize;
    let mut raw = vec![0u8; pages * 8];
    let offset = (start / PAGE_BYTES) * 8;
    pagemap.read_exact_at(&mut raw, offset).ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes")) & (PRESENT | SWAPPED) == 0)
            .collect(),
    )
}

/// Write `state` (its `memory` field is filled in here), the touched pages of `mem` and
/// the images of `disks` to `path`'s `.part` file, in one pass over guest memory.
/// `anonymous`: `mem` is anonymous memory (not a restored snapshot's file mapping), so
/// pages the process never touched are known zeros without reading them. `disks` holds
/// the file of every writable disk of `state.disks`, by index, in order. The caller holds
/// every vCPU parked and every device locked until this returns, then commits the result
/// (which syncs it) once the guest may run again.
pub fn write(
    path: &Path,
    mut state: VmState,
    mem: &GuestMemoryMmap,
    anonymous: bool,
    disks: &[(usize, &File)],
) -> Result<Written, SnapshotError> {
    let writable: Vec<usize> = (0..state.disks.len()).filter(|&i| !state.disks[i].read_only).collect();
    let imaged: Vec<usize> = disks.iter().map(|(i, _)| *i).collect();
    assert_eq!(imaged, writable, "every writable disk has an image, in order");
    let memory_bytes = state.memory_mib << 20;
    let part = part_path(path);
    let file = File::create(&part).map_err(io(&part))?;
    let written = Written { path: path.to_owned(), part: part.clone(), file: Some(file) };
    let file = written.file.as_ref().expect("just set");
    let bytes = guest_bytes(mem, memory_bytes)?;
    let untouched = if anonymous { untouched_pages(bytes.as_ptr() as u64, bytes.len()) } else { None };
    let mut crc = crc32fast::Hasher::new();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (c, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
        let first_page = (c * CHUNK_BYTES) as u64 / PAGE_BYTES;
        let mut run: Option<(usize, usize)> = None; // pages [from, to) of this chunk
        let mut flush = |from: usize, to: usize, runs: &mut Vec<(u64, u64)>| -> Result<(), SnapshotError> {
            let data = &chunk[from * PAGE_BYTES as usize..to * PAGE_BYTES as usize];
            crc.update(data);
            let page = first_page + from as u64;
            file.write_all_at(data, MEMORY_OFFSET + page * PAGE_BYTES).map_err(io(&part))?;
            match runs.last_mut() {
                Some((p, n)) if *p + *n == page => *n += (to - from) as u64,
                _ => runs.push((page, (to - from) as u64)),
            }
            Ok(())
        };
        for (i, page) in chunk.chunks(PAGE_BYTES as usize).enumerate() {
            let never = untouched.as_ref().is_some_and(|u| u[first_page as usize + i]);
            let touched = !never && page != &ZERO_PAGE[..page.len()];
            run = match (run, touched) {
                (None, true) => Some((i, i + 1)),
                (Some((from, _)), true) => Some((from, i + 1)),
                (Some((from, to)), false) => {
                    flush(from, to, &mut runs)?;
                    None
                }
                (None, false) => None,
            };
        }
        if let Some((from, to)) = run {
            flush(from, to, &mut runs)?;
        }
    }
    state.memory = MemoryLayout { runs };
    let state_json = serde_json::to_vec(&state)
        .map_err(|e| SnapshotError::Malformed { path: path.display().to_string(), reason: e.to_string() })?;
    assert!(state_json.len() <= STATE_BYTES_MAX as usize, "a VM's state is {} bytes", state_json.len());
    let state_end = MEMORY_OFFSET + memory_bytes + state_json.len() as u64;
    file.write_all_at(&state_json, MEMORY_OFFSET + memory_bytes).map_err(io(&part))?;
    let mut images = Vec::with_capacity(disks.len());
    let mut end = state_end;
    for &(index, disk) in disks {
        let offset = end.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        let (len, crc) = copy_sparse(disk, file, offset).map_err(io(&part))?;
        images.push(DiskImage { index, offset, len, crc });
        end = offset + len;
    }
    let lengths = Lengths { state: state_json.len() as u32, memory: memory_bytes };
    let h = header(lengths, crc32fast::hash(&state_json), crc.finalize(), &images);
    file.write_all_at(&h, 0).map_err(io(&part))?;
    Ok(written)
}

/// One disk's image in a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DiskImage {
    /// The disk's index in guest order.
    index: usize,
    offset: u64,
    len: u64,
    crc: u32,
}

/// Copy all of `from` into `to` at `offset`, leaving its all-zero pages as holes; returns
/// (length, CRC-32 of all of it).
fn copy_sparse(from: &File, to: &File, offset: u64) -> std::io::Result<(u64, u32)> {
    let len = from.metadata()?.len();
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(CHUNK_BYTES as u64) as usize;
        from.read_exact_at(&mut buf[..n], at)?;
        crc.update(&buf[..n]);
        for (i, page) in buf[..n].chunks(PAGE_BYTES as usize).enumerate() {
            if page != &ZERO_PAGE[..page.len()] {
                to.write_all_at(page, offset + at + (i as u64) * PAGE_BYTES)?;
            }
        }
        at += n as u64;
    }
    // A trailing hole still counts toward the length.
    if to.metadata()?.len() < offset + len {
        to.set_len(offset + len)?;
    }
    Ok((len, crc.finalize()))
}

/// A disk image written beside the disk it replaces (`<disk>.restoring`), not yet moved
/// over it; dropped uncommitted, it is removed.
#[derive(Debug)]
pub struct PreparedDisk {
    temp: PathBuf,
    target: PathBuf,
    done: bool,
}

impl PreparedDisk {
    /// Where the image is now (a VM may open it there: the open file stays valid when it
    /// is renamed).
    pub fn path(&self) -> &Path {
        &self.temp
    }
}

impl Drop for PreparedDisk {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn sync_dir_of(path: &Path) -> Result<(), SnapshotError> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir)),
        None => Ok(()),
    }
}

/// Move every prepared image over the disk it replaces: all of them, or none. Each disk
/// is first moved aside (`<disk>.before-restore`) and its image into its place; if any
/// step fails, the disks already moved aside are put back (and the images dropped), and
/// once all are in place the old disks are removed.
pub fn commit_disks(prepared: Vec<PreparedDisk>) -> Result<(), SnapshotError> {
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new(); // (disk, where the old one is)
    let mut failed = None;
    for p in &prepared {
        let old = with_suffix(&p.target, ".before-restore");
        if let Err(e) = std::fs::rename(&p.target, &old).map_err(io(&p.target)) {
            failed = Some(e);
            break;
        }
        moved.push((p.target.clone(), old.clone()));
        if let Err(e) = std::fs::rename(&p.temp, &p.target).map_err(io(&p.target)) {
            failed = Some(e);
            break;
        }
    }
    if let Some(e) = failed {
        for (disk, old) in moved.iter().rev() {
            // Over the image, if it got there: the disk is as it was before the restore.
            let _ = std::fs::rename(old, disk);
        }
        return Err(e); // `prepared` drops here, removing every image not moved
    }
    let mut prepared = prepared;
    for p in &mut prepared {
        p.done = true;
    }
    for (_, old) in &moved {
        // The restore has happened; an old disk left behind is only space (and said so).
        if let Err(e) = std::fs::remove_file(old) {
            eprintln!("drover-vmm: removing {} after the restore: {e}", old.display());
        }
    }
    for p in &prepared {
        sync_dir_of(&p.target)?;
    }
    Ok(())
}

/// The lengths of a snapshot file's state and memory sections.
#[derive(Debug, Clone, Copy)]
struct Lengths {
    state: u32,
    memory: u64,
}

/// Where a snapshot is written before it is renamed to `path`.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// A version-2 header with its disk table.
fn header(lengths: Lengths, state_crc: u32, memory_crc: u32, images: &[DiskImage]) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&lengths.state.to_le_bytes());
    h[16..24].copy_from_slice(&lengths.memory.to_le_bytes());
    h[24..28].copy_from_slice(&state_crc.to_le_bytes());
    h[28..32].copy_from_slice(&memory_crc.to_le_bytes());
    h[32..36].copy_from_slice(&(images.len() as u32).to_le_bytes());
    for image in images {
        h.extend((image.index as u32).to_le_bytes());
        h.extend(image.crc.to_le_bytes());
        h.extend(image.len.to_le_bytes());
    }
    let crc = crc32fast::hash(&h);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

/// An opened snapshot whose header and state section have been checked; its memory is
/// checked by [`Reader::guest_memory`], its disk images by [`Reader::prepare_disk`].
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    file: File,
    /// The file's format version.
    pub version: u32,
    pub state: VmState,
    memory_crc: u32,
    /// The writable disks' images, in guest order.
    images: Vec<DiskImage>,
}

/// A snapshot's header, of either version, in one form.
struct Header {
    version: u32,
    lengths: Lengths,
    state_crc: u32,
    memory_crc: u32,
    /// (disk index, length, CRC-32) of each image, in file order.
    images: Vec<(usize, u64, u32)>,
}

fn read_header(path: &Path, file: &File, actual: u64) -> Result<Header, SnapshotError> {
    let name = || path.display().to_string();
    if actual < HEADER_BYTES as u64 {
        return Err(SnapshotError::Size { path: name(), expected: HEADER_BYTES as u64, actual });
    }
    let mut h = vec![0u8; HEADER_BYTES];
    file.read_exact_at(&mut h, 0).map_err(io(path))?;
    if h[0..8] != MAGIC {
        return Err(SnapshotError::Magic { path: name() });
    }
    let word = |h: &[u8], at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    let long = |h: &[u8], at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    let version = word(&h, 8);
    let lengths = Lengths { state: word(&h, 12), memory: long(&h, 16) };
    let (state_crc, memory_crc) = (word(&h, 24), word(&h, 28));
    let images = match version {
        1 => match long(&h, 32) {
            0 => Vec::new(),
            len => vec![(0, len, word(&h, 40))],
        },
        FORMAT_VERSION => {
            let count = word(&h, 32) as usize;
            if count > DISKS_MAX {
                return Err(SnapshotError::Malformed {
                    path: name(),
                    reason: format!(
                        "its header lists {count} disk images; a VM has at most {DISKS_MAX} disks"
                    ),
                });
            }
            let table_end = HEADER_BYTES + count * DISK_ENTRY_BYTES;
            if actual < table_end as u64 {
                return Err(SnapshotError::Size { path: name(), expected: table_end as u64, actual });
            }
            h.resize(table_end, 0);
            file.read_exact_at(&mut h[HEADER_BYTES..], HEADER_BYTES as u64).map_err(io(path))?;
            let crc = word(&h, 36);
            h[36..40].fill(0);
            if crc32fast::hash(&h) != crc {
                return Err(SnapshotError::Checksum { path: name(), section: "header" });
            }
            h[HEADER_BYTES..]
                .chunks_exact(DISK_ENTRY_BYTES)
                .map(|e| (word(e, 0) as usize, long(e, 8), word(e, 4)))
                .collect()
        }
        found => return Err(SnapshotError::Version { path: name(), found }),
    };
    Ok(Header { version, lengths, state_crc, memory_crc, images })
}

/// A version-1 state section as version 2 has it: its `disk` (a transport state or null)
/// becomes `disks`, one writable disk of `image_len` bytes or none.
fn state_from_v1(json: &[u8], image_len: u64) -> Result<VmState, serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_slice(json)?;
    if let Some(fields) = value.as_object_mut() {
        let disk = fields.remove("disk").unwrap_or(serde_json::Value::Null);
        let disks = match disk {
            serde_json::Value::Null => serde_json::json!([]),
            transport => serde_json::json!([{
                "read_only": false,
                "sectors": image_len / crate::devices::virtio_blk::SECTOR_BYTES,
                "transport": transport,
            }]),
        };
        fields.insert("disks".into(), disks);
    }
    serde_json::from_value(value)
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, SnapshotError> {
        let name = || path.display().to_string();
        let malformed = |reason: String| SnapshotError::Malformed {
            path: name(),
            reason: format!("its state section: {reason}"),
        };
        let file = File::open(path).map_err(io(path))?;
        let actual = file.metadata().map_err(io(path))?.len();
        let h = read_header(path, &file, actual)?;
        let Lengths { state: state_len, memory: memory_len } = h.lengths;
        // Where each image starts, and where the file ends.
        let state_end =
            MEMORY_OFFSET.checked_add(memory_len).and_then(|m| m.checked_add(u64::from(state_len)));
        let mut end = state_end;
        let mut images = Vec::with_capacity(h.images.len());
        for &(index, len, crc) in &h.images {
            let offset = end.and_then(|e| e.checked_next_multiple_of(PAGE_BYTES));
            end = offset.and_then(|o| o.checked_add(len));
            images.push(DiskImage { index, offset: offset.unwrap_or(0), len, crc });
        }
        if state_len > STATE_BYTES_MAX || memory_len % PAGE_BYTES != 0 || end != Some(actual) {
            return Err(SnapshotError::Size { path: name(), expected: end.unwrap_or(u64::MAX), actual });
        }
        let mut state_json = vec![0u8; state_len as usize];
        file.read_exact_at(&mut state_json, MEMORY_OFFSET + memory_len).map_err(io(path))?;
        if crc32fast::hash(&state_json) != h.state_crc {
            return Err(SnapshotError::Checksum { path: name(), section: "state" });
        }
        let state: VmState = match h.version {
            1 => state_from_v1(&state_json, images.first().map_or(0, |i| i.len)),
            _ => serde_json::from_slice(&state_json),
        }
        .map_err(|e| malformed(e.to_string()))?;
        if state.memory_mib << 20 != memory_len {
            return Err(malformed("memory size disagrees with the header".into()));
        }
        let memory_pages = memory_len / PAGE_BYTES;
        let mut next = 0u64;
        for &(first, count) in &state.memory.runs {
            if first < next || count == 0 || first.checked_add(count).is_none_or(|end| end > memory_pages) {
                return Err(malformed(format!("memory run {first}+{count}")));
            }
            next = first + count;
        }
        if state.disks.len() > DISKS_MAX {
            return Err(malformed(format!("{} disks; a VM has at most {DISKS_MAX}", state.disks.len())));
        }
        let writable: Vec<usize> = (0..state.disks.len()).filter(|&i| !state.disks[i].read_only).collect();
        let imaged: Vec<usize> = images.iter().map(|i| i.index).collect();
        if writable != imaged {
            return Err(malformed(format!(
                "the file holds images of disks {imaged:?}, its state has writable disks {writable:?}"
            )));
        }
        Ok(Reader {
            path: path.to_owned(),
            file,
            version: h.version,
            state,
            memory_crc: h.memory_crc,
            images,
        })
    }

    /// Check that the snapshot can be restored into a VM with this shape: `disks_read_only`
    /// says, for each of the VM's disks in guest order, whether it is read-only.
    pub fn check_fits(
        &self,
        memory_mib: u64,
        vcpus: usize,
        disks_read_only: &[bool],
        nics: usize,
    ) -> Result<(), SnapshotError> {
        self.state.check_fits(memory_mib, vcpus, disks_read_only, nics)
    }

    /// The snapshot's memory image mapped privately (copy on write) as a new VM's RAM,
    /// once checked: its checksum, and no data outside the listed pages. An error means
    /// nothing may run on it.
    pub fn guest_memory(&self) -> Result<GuestMemoryMmap, SnapshotError> {
        let memory_bytes = self.state.memory_mib << 20;
        let size = usize::try_from(memory_bytes).map_err(|e| SnapshotError::Memory(e.to_string()))?;
        let file = self.file.try_clone().map_err(io(&self.path))?;
        let region = MmapRegionBuilder::new_with_bitmap(size, AtomicBitmap::with_len(size))
            .with_file_offset(FileOffset::new(file, MEMORY_OFFSET))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::Memory(format!("mapping {}: {e}", self.path.display())))?;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| SnapshotError::Memory("guest memory region".into()))?;
        let mem =
            GuestMemoryMmap::from_regions(vec![region]).map_err(|e| SnapshotError::Memory(e.to_string()))?;
        // Nothing runs on `mem` yet and nobody else has it.
        let bytes = guest_bytes(&mem, memory_bytes)?;
        let mut crc = crc32fast::Hasher::new();
        for &(first, count) in &self.state.memory.runs {
            let from = (first * PAGE_BYTES) as usize;
            crc.update(&bytes[from..from + (count * PAGE_BYTES) as usize]);
        }
        if crc.finalize() != self.memory_crc {
            return Err(SnapshotError::Checksum { path: self.path.display().to_string(), section: "memory" });
        }
        self.check_unlisted_is_zero(bytes)?;
        Ok(mem)
    }

    /// Disk `index` (guest order) as it was when the snapshot was taken, written beside
    /// `target` (the VM's file for that disk) once its image passes its checksum; give
    /// every prepared disk to [`commit_disks`] to move them over their targets, and drop
    /// them uncommitted to remove them. `None`: the snapshot has no image of that disk (it
    /// is read-only).
    pub fn prepare_disk(&self, index: usize, target: &Path) -> Result<Option<PreparedDisk>, SnapshotError> {
        let Some(&DiskImage { offset, len, crc, .. }) = self.images.iter().find(|i| i.index == index) else {
            return Ok(None);
        };
        let damaged = || SnapshotError::DiskChecksum { path: self.path.display().to_string(), index };
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(CHUNK_BYTES as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], offset + at).map_err(io(&self.path))?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        if hasher.finalize() != crc {
            return Err(damaged());
        }
        let prepared =
            PreparedDisk { temp: with_suffix(target, ".restoring"), target: target.to_owned(), done: false };
        let out = File::create(&prepared.temp).map_err(io(&prepared.temp))?;
        let mut at = 0u64;
        let mut crc_again = crc32fast::Hasher::new();
        while at < len {
            let n = (len - at).min(CHUNK_BYTES as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], offset + at).map_err(io(&self.path))?;
            crc_again.update(&buf[..n]);
            for (i, page) in buf[..n].chunks(PAGE_BYTES as usize).enumerate() {
                if page != &ZERO_PAGE[..page.len()] {
                    out.write_all_at(page, at + (i as u64) * PAGE_BYTES).map_err(io(&prepared.temp))?;
                }
            }
            at += n as u64;
        }
        // What was copied is what was checked (the file could have changed in between).
        if crc_again.finalize() != crc {
            return Err(damaged());
        }
        out.set_len(len).map_err(io(&prepared.temp))?;
        out.sync_all().map_err(io(&prepared.temp))?;
        Ok(Some(prepared))
    }

    /// Data the file holds outside the listed pages must read as zeros (file systems with
    /// holes report none there; the others store zeros).
    fn check_unlisted_is_zero(&self, memory: &[u8]) -> Result<(), SnapshotError> {
        let end = memory.len() as u64;
        let mut at = 0u64;
        let runs = &self.state.memory.runs;
        while at < end {
            let Some((data, hole)) = self.data_extent(at, end)? else { break };
            // Within [data, hole), every page not in a run must be zero.
            let mut page = data / PAGE_BYTES;
            while page * PAGE_BYTES < hole {
                let i = runs.partition_point(|(p, n)| p + n <= page);
                let listed = runs.get(i).filter(|(p, _)| *p <= page);
                match listed {
                    Some((p, n)) => page = p + n,
                    None => {
                        let from = (page * PAGE_BYTES) as usize;
                        if memory[from..from + PAGE_BYTES as usize] != ZERO_PAGE {
                            return Err(SnapshotError::Checksum {
                                path: self.path.display().to_string(),
                                section: "memory",
                            });
                        }
                        page += 1;
                    }
                }
            }
            at = hole;
        }
        Ok(())
    }

    /// The next data extent of the memory image at or after `at` (image offsets), as
    /// `(start, end)`; `None` past the last one.
    fn data_extent(&self, at: u64, end: u64) -> Result<Option<(u64, u64)>, SnapshotError> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let seek = |offset: u64, whence: libc::c_int| -> Result<Option<u64>, SnapshotError> {
            let offset = libc::off_t::try_from(MEMORY_OFFSET + offset)
                .map_err(|e| SnapshotError::Memory(e.to_string()))?;
            // SAFETY: lseek on a file descriptor this reader owns; it only moves the
            // descriptor's offset, which nothing else uses (reads are positional).
            let r = unsafe { libc::lseek(fd, offset, whence) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::ENXIO) => Ok(None), // no data after `offset`
                    _ => Err(SnapshotError::Io { path: self.path.display().to_string(), source: e }),
                };
            }
            Ok(Some((r as u64).saturating_sub(MEMORY_OFFSET)))
        };
        let Some(data) = seek(at, libc::SEEK_DATA)? else { return Ok(None) };
        if data >= end {
            return Ok(None);
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        Ok(Some((data, hole)))
    }
}
