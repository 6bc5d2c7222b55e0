//! A VM's whole state in one file: every vCPU, the in-kernel irqchip, PIT and clock, every
//! device, and guest memory. Written by `Vm::snapshot`, read back by `Vm::start_from` with
//! `Source::Snapshot`, for revert, clone and (later) migration.
//!
//! # Format, version 1 (all integers little endian)
//!
//! | offset | size | what |
//! |---|---|---|
//! | 0 | 8 | magic `DRVRSNAP` |
//! | 8 | 4 | format version ([`FORMAT_VERSION`]) |
//! | 12 | 4 | `S`: length of the state section |
//! | 16 | 8 | `M`: length of the memory image (the guest's RAM size) |
//! | 24 | 4 | CRC-32 of the state section |
//! | 28 | 4 | CRC-32 of the memory pages [`MemoryLayout::runs`] lists, in order |
//! | 32 | 8 | `D`: length of the disk image (0: the VM has no disk) |
//! | 40 | 4 | CRC-32 of the disk image |
//! | 44 | | zeros up to [`PAGE_BYTES`] |
//! | 4096 | `M` | the memory image: guest-physical page `p` at `4096 + p * 4096` |
//! | 4096 + `M` | `S` | the state section: [`VmState`] as JSON |
//! | `4096 + M + S` rounded up to a page | `D` | the disk image: the VM's disk as it was |
//!
//! Pages that are all zeros are not written: they are holes in a sparse file (guest
//! memory starts zeroed, and so does a sparse disk), so a file costs the disk only what
//! the guest has touched. The disk image is taken with the memory, the guest paused across
//! both, so a restore brings memory and disk back to one instant: a restore writes the
//! image back over the VM's disk file (through a file beside it, renamed into place)
//! before the VM opens it. The
//! memory image sits page-aligned so a restore maps it privately (copy on write) as the
//! new VM's RAM instead of copying it. A file is accepted only if its magic and version
//! are known, its size is exactly what the header says, both checksums match, no data
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
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::devices::serial::SerialSnapshot;
use crate::devices::virtio_mmio::TransportState;
pub use vcpu_state::VcpuState;
pub use vm_state::KvmVmState;

pub const MAGIC: [u8; 8] = *b"DRVRSNAP";
pub const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 48;
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
    #[error("{path} has snapshot format version {found}; this VMM reads version {FORMAT_VERSION}")]
    Version { path: String, found: u32 },
    #[error("{path} is {actual} bytes but its header says {expected}: truncated or damaged")]
    Size { path: String, expected: u64, actual: u64 },
    #[error("{path}: the {section} section fails its checksum: the file is damaged")]
    Checksum { path: String, section: &'static str },
    #[error("{path}: the state section is malformed: {reason}")]
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
    pub disk: Option<TransportState>,
    pub nics: Vec<TransportState>,
    pub memory: MemoryLayout,
}

/// Which guest pages the memory image holds data for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemoryLayout {
    /// (first page, page count), ascending and not overlapping.
    pub runs: Vec<(u64, u64)>,
}

/// What a save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// What the file takes on disk (it is sparse: untouched guest memory costs nothing).
    pub bytes: u64,
    /// How long the guest was held paused for it (0 for a guest that was paused anyway).
    pub duration_ms: u64,
}

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

/// Which pages of the anonymous mapping at `bytes` the process has never touched (neither
/// present nor swapped out, per `/proc/self/pagemap`): they read as zeros, and reading
/// them only to find that out would map a zero page into each. `None` when the kernel
/// does not say; then every page is read.
fn untouched_pages(bytes: &[u8]) -> Option<Vec<bool>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let pages = bytes.len() / PAGE_BYTES as usize;
    let mut raw = vec![0u8; pages * 8];
    let offset = (bytes.as_ptr() as u64 / PAGE_BYTES) * 8;
    pagemap.read_exact_at(&mut raw, offset).ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes")) & (PRESENT | SWAPPED) == 0)
            .collect(),
    )
}

/// Write `state` (its `memory` field is filled in here) and the touched pages of `mem` to
/// `path`'s `.part` file, in one pass over guest memory. `anonymous`: `mem` is anonymous
/// memory (not a restored snapshot's file mapping), so pages the process never touched
/// are known zeros without reading them. The caller holds every vCPU parked and every
/// device locked until this returns, then commits the result (which syncs it) once the
/// guest may run again.
pub fn write(
    path: &Path,
    mut state: VmState,
    mem: &GuestMemoryMmap,
    anonymous: bool,
    disk: Option<&File>,
) -> Result<Written, SnapshotError> {
    let memory_bytes = state.memory_mib << 20;
    let part = part_path(path);
    let file = File::create(&part).map_err(io(&part))?;
    let written = Written { path: path.to_owned(), part: part.clone(), file: Some(file) };
    let file = written.file.as_ref().expect("just set");
    let bytes = guest_bytes(mem, memory_bytes)?;
    let untouched = if anonymous { untouched_pages(bytes) } else { None };
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
    file.write_all_at(&state_json, MEMORY_OFFSET + memory_bytes).map_err(io(&part))?;
    let (disk_len, disk_crc) = match disk {
        None => (0, 0),
        Some(disk) => {
            let offset = disk_offset(memory_bytes, state_json.len() as u32);
            copy_sparse(disk, file, offset).map_err(io(&part))?
        }
    };
    let lengths = Lengths { state: state_json.len() as u32, memory: memory_bytes, disk: disk_len };
    let h = header(lengths, crc32fast::hash(&state_json), crc.finalize(), disk_crc);
    file.write_all_at(&h, 0).map_err(io(&part))?;
    Ok(written)
}

/// Where the disk image starts.
fn disk_offset(memory_len: u64, state_len: u32) -> u64 {
    (MEMORY_OFFSET + memory_len + u64::from(state_len)).div_ceil(PAGE_BYTES) * PAGE_BYTES
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

/// A disk image written beside the disk it replaces, not yet moved over it.
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

    /// Move the image over the disk it replaces.
    pub fn commit(mut self) -> Result<(), SnapshotError> {
        std::fs::rename(&self.temp, &self.target).map_err(io(&self.target))?;
        self.done = true;
        if let Some(dir) = self.target.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        }
        Ok(())
    }
}

impl Drop for PreparedDisk {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// The lengths of a snapshot file's sections.
#[derive(Debug, Clone, Copy)]
struct Lengths {
    state: u32,
    memory: u64,
    disk: u64,
}

/// Where a snapshot is written before it is renamed to `path`.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

fn header(lengths: Lengths, state_crc: u32, memory_crc: u32, disk_crc: u32) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&lengths.state.to_le_bytes());
    h[16..24].copy_from_slice(&lengths.memory.to_le_bytes());
    h[24..28].copy_from_slice(&state_crc.to_le_bytes());
    h[28..32].copy_from_slice(&memory_crc.to_le_bytes());
    h[32..40].copy_from_slice(&lengths.disk.to_le_bytes());
    h[40..44].copy_from_slice(&disk_crc.to_le_bytes());
    h
}

/// An opened snapshot whose header and state section have been checked; its memory is
/// checked by [`Reader::guest_memory`].
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    file: File,
    pub state: VmState,
    memory_crc: u32,
    /// (offset, length, CRC-32) of the disk image; length 0: none.
    disk: (u64, u64, u32),
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, SnapshotError> {
        let name = || path.display().to_string();
        let file = File::open(path).map_err(io(path))?;
        let actual = file.metadata().map_err(io(path))?.len();
        if actual < HEADER_BYTES as u64 {
            return Err(SnapshotError::Size { path: name(), expected: HEADER_BYTES as u64, actual });
        }
        let mut h = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut h, 0).map_err(io(path))?;
        if h[0..8] != MAGIC {
            return Err(SnapshotError::Magic { path: name() });
        }
        let word = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        let version = word(8);
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Version { path: name(), found: version });
        }
        let state_len = word(12);
        let memory_len = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
        let (state_crc, memory_crc) = (word(24), word(28));
        let disk_len = u64::from_le_bytes(h[32..40].try_into().expect("8 bytes"));
        let disk_crc = word(40);
        let disk_at = MEMORY_OFFSET
            .checked_add(memory_len)
            .and_then(|m| m.checked_add(u64::from(state_len)))
            .map(|end| end.div_ceil(PAGE_BYTES) * PAGE_BYTES);
        let expected = if disk_len == 0 {
            MEMORY_OFFSET.checked_add(memory_len).and_then(|m| m.checked_add(u64::from(state_len)))
        } else {
            disk_at.and_then(|d| d.checked_add(disk_len))
        };
        if state_len > STATE_BYTES_MAX || memory_len % PAGE_BYTES != 0 || expected != Some(actual) {
            return Err(SnapshotError::Size { path: name(), expected: expected.unwrap_or(u64::MAX), actual });
        }
        let mut state_json = vec![0u8; state_len as usize];
        file.read_exact_at(&mut state_json, MEMORY_OFFSET + memory_len).map_err(io(path))?;
        if crc32fast::hash(&state_json) != state_crc {
            return Err(SnapshotError::Checksum { path: name(), section: "state" });
        }
        let state: VmState = serde_json::from_slice(&state_json)
            .map_err(|e| SnapshotError::Malformed { path: name(), reason: e.to_string() })?;
        if state.memory_mib << 20 != memory_len {
            return Err(SnapshotError::Malformed {
                path: name(),
                reason: "memory size disagrees with the header".into(),
            });
        }
        let memory_pages = memory_len / PAGE_BYTES;
        let mut next = 0u64;
        for &(first, count) in &state.memory.runs {
            if first < next || count == 0 || first.checked_add(count).is_none_or(|end| end > memory_pages) {
                return Err(SnapshotError::Malformed {
                    path: name(),
                    reason: format!("memory run {first}+{count}"),
                });
            }
            next = first + count;
        }
        if state.disk.is_some() != (disk_len > 0) {
            return Err(SnapshotError::Malformed {
                path: name(),
                reason: "the disk image and the disk's state disagree".into(),
            });
        }
        let disk = (disk_at.unwrap_or(0), disk_len, disk_crc);
        Ok(Reader { path: path.to_owned(), file, state, memory_crc, disk })
    }

    /// Check that the snapshot can be restored into a VM with this shape.
    pub fn check_fits(
        &self,
        memory_mib: u64,
        vcpus: usize,
        disk: bool,
        nics: usize,
    ) -> Result<(), SnapshotError> {
        let s = &self.state;
        let mismatch = |what: &str, snap: String, vm: String| {
            Err(SnapshotError::Mismatch(format!("{what}: the snapshot has {snap}, the VM {vm}")))
        };
        if s.memory_mib != memory_mib {
            return mismatch("memory", format!("{} MiB", s.memory_mib), format!("{memory_mib} MiB"));
        }
        if s.vcpus.len() != vcpus {
            return mismatch("vCPUs", s.vcpus.len().to_string(), vcpus.to_string());
        }
        if s.disk.is_some() != disk {
            return mismatch("disk", s.disk.is_some().to_string(), disk.to_string());
        }
        if s.nics.len() != nics {
            return mismatch("NICs", s.nics.len().to_string(), nics.to_string());
        }
        Ok(())
    }

    /// The snapshot's memory image mapped privately (copy on write) as a new VM's RAM,
    /// once checked: its checksum, and no data outside the listed pages. An error means
    /// nothing may run on it.
    pub fn guest_memory(&self) -> Result<GuestMemoryMmap, SnapshotError> {
        let memory_bytes = self.state.memory_mib << 20;
        let size = usize::try_from(memory_bytes).map_err(|e| SnapshotError::Memory(e.to_string()))?;
        let file = self.file.try_clone().map_err(io(&self.path))?;
        let region = MmapRegionBuilder::new(size)
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

    /// The disk as it was when the snapshot was taken, written beside `target` (the VM's
    /// disk file) once the image passes its checksum; [`PreparedDisk::commit`] moves it
    /// over `target`, and dropping it uncommitted removes it. `None`: no disk image.
    pub fn prepare_disk(&self, target: &Path) -> Result<Option<PreparedDisk>, SnapshotError> {
        let (offset, len, crc) = self.disk;
        if len == 0 {
            return Ok(None);
        }
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
            return Err(SnapshotError::Checksum { path: self.path.display().to_string(), section: "disk" });
        }
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(".restoring");
        let prepared =
            PreparedDisk { temp: target.with_file_name(name), target: target.to_owned(), done: false };
        let out = File::create(&prepared.temp).map_err(io(&prepared.temp))?;
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(CHUNK_BYTES as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], offset + at).map_err(io(&self.path))?;
            for (i, page) in buf[..n].chunks(PAGE_BYTES as usize).enumerate() {
                if page != &ZERO_PAGE[..page.len()] {
                    out.write_all_at(page, at + (i as u64) * PAGE_BYTES).map_err(io(&prepared.temp))?;
                }
            }
            at += n as u64;
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
