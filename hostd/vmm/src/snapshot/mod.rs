//! A VM's whole state in one file: every vCPU, the in-kernel irqchip, PIT and clock, every
//! device, and guest memory. Written by `Vm::snapshot`, read back by `Vm::start` with
//! `Source::Snapshot`, for revert, clone and (later) migration.
//!
//! # Format, version 1 (all integers little endian)
//!
//! | offset | size | what |
//! |---|---|---|
//! | 0 | 8 | magic `DRVRSNAP` |
//! | 8 | 4 | format version ([`FORMAT_VERSION`]) |
//! | 12 | 4 | `S`: length of the state section |
//! | 16 | 8 | `M`: length of the memory section |
//! | 24 | 4 | CRC-32 of the state section |
//! | 28 | 4 | CRC-32 of the memory section |
//! | 32 | `S` | the state section: [`VmState`] as JSON |
//! | … | | zeros up to the next multiple of [`PAGE_BYTES`] |
//! | | `M` | the memory section: the guest pages [`MemoryLayout::runs`] lists, in order |
//!
//! Pages that are all zeros are not stored (guest memory starts zeroed). A file is
//! accepted only if its magic and version are known, its size is exactly what the header
//! says, both checksums match, and the state fits the VM being built; all of that is
//! checked before any vCPU runs. Snapshots are written to `<path>.part`, synced, and
//! renamed into place, so a failed or interrupted save leaves nothing at `path`.

pub mod vcpu_state;
pub mod vm_state;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::serial::SerialSnapshot;
use crate::devices::virtio_mmio::TransportState;
pub use vcpu_state::VcpuState;
pub use vm_state::KvmVmState;

pub const MAGIC: [u8; 8] = *b"DRVRSNAP";
pub const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 32;
pub const PAGE_BYTES: u64 = 4096;
/// The state section's largest size (32 vCPUs with their XSAVE areas fit many times).
pub const STATE_BYTES_MAX: u32 = 16 << 20;
/// How much memory is read or written at once.
const CHUNK_BYTES: usize = 1 << 20;

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

/// Which guest pages the memory section holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemoryLayout {
    /// (first page, page count), ascending and not overlapping.
    pub runs: Vec<(u64, u64)>,
}

impl MemoryLayout {
    fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }
}

/// What a save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub bytes: u64,
    /// From the pause to the resume (or to the end, for a guest already paused).
    pub duration_ms: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.display().to_string(), source }
}

fn state_offset_end(state_len: u64) -> u64 {
    (HEADER_BYTES as u64 + state_len).div_ceil(PAGE_BYTES) * PAGE_BYTES
}

/// The pages of `mem` (one region from guest address 0, `memory_bytes` long) that are
/// not all zeros, as runs.
fn nonzero_runs(mem: &GuestMemoryMmap, memory_bytes: u64) -> Result<MemoryLayout, SnapshotError> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut at = 0u64;
    while at < memory_bytes {
        let len = (memory_bytes - at).min(CHUNK_BYTES as u64) as usize;
        mem.read_slice(&mut buf[..len], GuestAddress(at))
            .map_err(|e| SnapshotError::Memory(e.to_string()))?;
        for (i, page) in buf[..len].chunks(PAGE_BYTES as usize).enumerate() {
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            let number = at / PAGE_BYTES + i as u64;
            match runs.last_mut() {
                Some((first, count)) if *first + *count == number => *count += 1,
                _ => runs.push((number, 1)),
            }
        }
        at += len as u64;
    }
    Ok(MemoryLayout { runs })
}

/// Write `state` (its `memory` field is filled in here) and the pages of `mem` to `path`,
/// atomically. The caller holds every vCPU parked and every device locked.
pub fn write(path: &Path, mut state: VmState, mem: &GuestMemoryMmap) -> Result<u64, SnapshotError> {
    let memory_bytes = state.memory_mib << 20;
    state.memory = nonzero_runs(mem, memory_bytes)?;
    let state_json = serde_json::to_vec(&state)
        .map_err(|e| SnapshotError::Malformed { path: path.display().to_string(), reason: e.to_string() })?;
    assert!(state_json.len() <= STATE_BYTES_MAX as usize, "a VM's state is {} bytes", state_json.len());
    let memory_len = state.memory.pages() * PAGE_BYTES;

    let part = part_path(path);
    let result = (|| {
        let file = File::create(&part).map_err(io(&part))?;
        let mut out = BufWriter::with_capacity(CHUNK_BYTES, file);
        // The header's memory checksum is filled in once the pages are written.
        out.write_all(&header(state_json.len() as u32, memory_len, crc32fast::hash(&state_json), 0))
            .map_err(io(&part))?;
        out.write_all(&state_json).map_err(io(&part))?;
        let pad = state_offset_end(state_json.len() as u64) - (HEADER_BYTES + state_json.len()) as u64;
        out.write_all(&vec![0u8; pad as usize]).map_err(io(&part))?;
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; CHUNK_BYTES];
        for &(first, count) in &state.memory.runs {
            let mut at = first * PAGE_BYTES;
            let end = (first + count) * PAGE_BYTES;
            while at < end {
                let len = (end - at).min(CHUNK_BYTES as u64) as usize;
                mem.read_slice(&mut buf[..len], GuestAddress(at))
                    .map_err(|e| SnapshotError::Memory(e.to_string()))?;
                crc.update(&buf[..len]);
                out.write_all(&buf[..len]).map_err(io(&part))?;
                at += len as u64;
            }
        }
        let mut file = out
            .into_inner()
            .map_err(|e| SnapshotError::Io { path: part.display().to_string(), source: e.into_error() })?;
        file.seek(SeekFrom::Start(28)).map_err(io(&part))?;
        file.write_all(&crc.finalize().to_le_bytes()).map_err(io(&part))?;
        file.sync_all().map_err(io(&part))?;
        let bytes = file.metadata().map_err(io(&part))?.len();
        std::fs::rename(&part, path).map_err(io(path))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        }
        Ok(bytes)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Where a snapshot is written before it is renamed to `path`.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

fn header(state_len: u32, memory_len: u64, state_crc: u32, memory_crc: u32) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&state_len.to_le_bytes());
    h[16..24].copy_from_slice(&memory_len.to_le_bytes());
    h[24..28].copy_from_slice(&state_crc.to_le_bytes());
    h[28..32].copy_from_slice(&memory_crc.to_le_bytes());
    h
}

/// An opened snapshot whose header and state section have been checked; its memory is
/// checked as [`Reader::load_memory`] reads it.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    file: BufReader<File>,
    pub state: VmState,
    memory_crc: u32,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, SnapshotError> {
        let name = || path.display().to_string();
        let file = File::open(path).map_err(io(path))?;
        let actual = file.metadata().map_err(io(path))?.len();
        let mut file = BufReader::with_capacity(CHUNK_BYTES, file);
        let mut h = [0u8; HEADER_BYTES];
        if actual < HEADER_BYTES as u64 {
            return Err(SnapshotError::Size { path: name(), expected: HEADER_BYTES as u64, actual });
        }
        file.read_exact(&mut h).map_err(io(path))?;
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
        let expected = state_offset_end(u64::from(state_len)).checked_add(memory_len);
        if state_len > STATE_BYTES_MAX || expected != Some(actual) {
            return Err(SnapshotError::Size { path: name(), expected: expected.unwrap_or(u64::MAX), actual });
        }
        let mut state_json = vec![0u8; state_len as usize];
        file.read_exact(&mut state_json).map_err(io(path))?;
        if crc32fast::hash(&state_json) != state_crc {
            return Err(SnapshotError::Checksum { path: name(), section: "state" });
        }
        let state: VmState = serde_json::from_slice(&state_json)
            .map_err(|e| SnapshotError::Malformed { path: name(), reason: e.to_string() })?;
        if state.memory.pages() * PAGE_BYTES != memory_len {
            return Err(SnapshotError::Malformed {
                path: name(),
                reason: "memory runs do not match the memory section".into(),
            });
        }
        let memory_pages = (state.memory_mib << 20) / PAGE_BYTES;
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
        file.seek(SeekFrom::Start(state_offset_end(u64::from(state_len)))).map_err(io(path))?;
        Ok(Reader { path: path.to_owned(), file, state, memory_crc })
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

    /// Copy the stored pages into `mem` (zeroed, fresh guest memory), checking the memory
    /// section's checksum; an error means `mem` must not run.
    pub fn load_memory(&mut self, mem: &GuestMemoryMmap) -> Result<(), SnapshotError> {
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; CHUNK_BYTES];
        for &(first, count) in &self.state.memory.runs {
            let mut at = first * PAGE_BYTES;
            let end = (first + count) * PAGE_BYTES;
            while at < end {
                let len = (end - at).min(CHUNK_BYTES as u64) as usize;
                self.file.read_exact(&mut buf[..len]).map_err(io(&self.path))?;
                crc.update(&buf[..len]);
                mem.write_slice(&buf[..len], GuestAddress(at))
                    .map_err(|e| SnapshotError::Memory(e.to_string()))?;
                at += len as u64;
            }
        }
        if crc.finalize() != self.memory_crc {
            return Err(SnapshotError::Checksum { path: self.path.display().to_string(), section: "memory" });
        }
        Ok(())
    }
}
