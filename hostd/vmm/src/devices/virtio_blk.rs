//! virtio-blk backed by a raw image file: read, write, flush and get-id requests, 512-byte
//! sectors, every request bounds-checked against the image size. A request the device
//! cannot serve gets VIRTIO_BLK_S_IOERR or S_UNSUPP; it never ends the VM.
//!
//! The image is locked while the VM holds it (an open-file-description lock on the whole
//! file, as QEMU locks its images): exclusive when writable, shared when read-only. A
//! second VM, a stale run of the same domain on shared storage included, cannot open it
//! for writing until the holder's process has ended.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};

use super::virtio_mmio::VirtioDevice;

pub const SECTOR_BYTES: u64 = 512;
const DEVICE_TYPE_BLOCK: u32 = 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const ID_BYTES: usize = 20;
/// The largest single request the device serves.
pub const REQUEST_BYTES_MAX: usize = 1 << 20;
const QUEUE_SIZE_MAX: u16 = 256;

#[derive(Debug)]
pub struct Block {
    file: File,
    capacity_sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    /// Requests answered with an error status.
    pub failed_requests: u64,
}

/// Lock the whole of `file` for this open file description: shared for a reader,
/// exclusive for a writer; refused at once if another holds a conflicting lock.
fn lock(file: &File, shared: bool) -> std::io::Result<()> {
    set_lock(file, if shared { libc::F_RDLCK } else { libc::F_WRLCK })
}

/// Set the whole-file OFD lock of `file` to `l_type` (`F_RDLCK`, `F_WRLCK`, `F_UNLCK`).
fn set_lock(file: &File, l_type: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero `flock` is a valid value (the fields are plain integers), and
    // the fields OFD locks require are set below (l_pid must be 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0; // to the end, however far the file grows
                  // SAFETY: `file` is an open descriptor for the duration of the call and `fl` a valid,
                  // writable flock; F_OFD_SETLK reads it and does not keep the pointer.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "is in use by another VM (its lock is held; a run of this domain may still be alive)",
        )),
        _ => Err(e),
    }
}

impl Block {
    pub fn open(path: &Path, read_only: bool, id: &str) -> std::io::Result<Block> {
        let block = Block::open_unclaimed(path, read_only, id)?;
        block.claim()?;
        Ok(block)
    }

    /// Open the image without locking it: for the target of a live migration, whose
    /// source holds the lock until the switch-over ([`Block::claim`] then). The guest
    /// must not run before the claim.
    pub fn open_unclaimed(path: &Path, read_only: bool, id: &str) -> std::io::Result<Block> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let capacity_sectors = file.metadata()?.len() / SECTOR_BYTES;
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Block { file, capacity_sectors, read_only, id: id_bytes, failed_requests: 0 })
    }

    /// Take the image's lock (see the module header).
    pub fn claim(&self) -> std::io::Result<()> {
        lock(&self.file, self.read_only)
    }

    /// Give the lock up while the file stays open: a live migration's source, at the
    /// switch-over, so its target can claim the image. The guest must not run after it.
    pub fn release(&self) -> std::io::Result<()> {
        set_lock(&self.file, libc::F_UNLCK)
    }

    /// The disk's file (a snapshot copies it while the VM is paused).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the disk was opened read-only (the guest is offered VIRTIO_BLK_F_RO and
    /// every write is refused).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The capacity the guest sees, in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Serve one request: `header` is (type, sector), `data` the bytes the driver sent,
    /// `room` how many bytes the driver can take back before the status byte.
    /// Returns (status, bytes to give back).
    fn serve(&mut self, kind: u32, sector: u64, data: &[u8], room: usize) -> (u8, Vec<u8>) {
        let in_range = |len: usize| {
            let sectors = (len as u64).div_ceil(SECTOR_BYTES);
            len.is_multiple_of(SECTOR_BYTES as usize)
                && sector.checked_add(sectors).is_some_and(|end| end <= self.capacity_sectors)
        };
        match kind {
            T_IN => {
                if room > REQUEST_BYTES_MAX || !in_range(room) {
                    return (S_IOERR, Vec::new());
                }
                let mut buf = vec![0u8; room];
                match self.file.read_exact_at(&mut buf, sector * SECTOR_BYTES) {
                    Ok(()) => (S_OK, buf),
                    Err(_) => (S_IOERR, Vec::new()),
                }
            }
            T_OUT => {
                if self.read_only || data.len() > REQUEST_BYTES_MAX || !in_range(data.len()) {
                    return (S_IOERR, Vec::new());
                }
                match self.file.write_all_at(data, sector * SECTOR_BYTES) {
                    Ok(()) => (S_OK, Vec::new()),
                    Err(_) => (S_IOERR, Vec::new()),
                }
            }
            T_FLUSH => match self.file.sync_data() {
                Ok(()) => (S_OK, Vec::new()),
                Err(_) => (S_IOERR, Vec::new()),
            },
            T_GET_ID => (S_OK, self.id[..room.min(ID_BYTES)].to_vec()),
            _ => (S_UNSUPP, Vec::new()),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_BLK_F_FLUSH | if self.read_only { VIRTIO_BLK_F_RO } else { 0 }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE_MAX]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (u64, offset 0) is offered; the rest reads as zero.
        let config = self.capacity_sectors.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn process(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = self.serve_chain(chain, mem);
            if queue.add_used(mem, head, written).is_err() {
                self.failed_requests += 1;
            }
            used_any = true;
        }
        used_any && queue.needs_notification(mem).unwrap_or(true)
    }
}

impl Block {
    /// Serve one descriptor chain; returns the bytes written into the guest's buffers.
    fn serve_chain(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(mem), chain.writer(mem)) else {
            self.failed_requests += 1;
            return 0;
        };
        let mut header = [0u8; 16];
        if reader.read_exact(&mut header).is_err() || writer.available_bytes() == 0 {
            self.failed_requests += 1;
            return 0;
        }
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let mut data = Vec::new();
        if kind == T_OUT {
            let len = reader.available_bytes();
            if len <= REQUEST_BYTES_MAX {
                data.resize(len, 0);
                if reader.read_exact(&mut data).is_err() {
                    data.clear();
                }
            }
        }
        let room = writer.available_bytes() - 1; // the last byte is the status
        let (status, back) = self.serve(kind, sector, &data, room);
        if status != S_OK {
            self.failed_requests += 1;
        }
        let mut status_writer = match writer.split_at(room) {
            Ok(w) => w,
            Err(_) => return 0,
        };
        let mut written = 0;
        if writer.write_all(&back).is_ok() {
            written += back.len() as u32;
        }
        if status_writer.write_all(&[status]).is_ok() {
            written += 1;
        }
        written
    }
}

#[cfg(test)]
mod tests {
    //! The device model against virtio-queue's mock split queue, without a guest.
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const HEADER: u64 = 0x10_0000;
    const DATA: u64 = 0x10_1000;
    const STATUS: u64 = 0x10_2000;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn disk(sectors: u64, read_only: bool) -> (tempfile::TempDir, Block) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::File::create(&path).unwrap().set_len(sectors * SECTOR_BYTES).unwrap();
        let block = Block::open(&path, read_only, "dom-1").unwrap();
        (dir, block)
    }

    /// Submit one request with a `data_len`-byte buffer; returns (status, used length).
    fn request(block: &mut Block, mem: &GuestMemoryMmap, kind: u32, sector: u64, data_len: u32) -> (u8, u32) {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&header, GuestAddress(HEADER)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let data_flags = if kind == T_OUT { NEXT } else { NEXT | WRITE };
        let descs: Vec<RawDescriptor> = vec![
            Descriptor::new(HEADER, 16, NEXT, 1).into(),
            Descriptor::new(DATA, data_len, data_flags, 2).into(),
            Descriptor::new(STATUS, 1, WRITE, 0).into(),
        ];
        let vq = MockSplitQueue::new(mem, 16);
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        block.process(0, &mut queue, mem);
        assert_eq!(vq.used().idx().load(), 1, "the request was not completed");
        let used = vq.used().ring().ref_at(0).unwrap().load();
        (mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), used.len())
    }

    #[test]
    fn a_written_sector_reads_back() {
        let mem = memory();
        let (_dir, mut block) = disk(8, false);
        mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(request(&mut block, &mem, T_OUT, 3, 512), (S_OK, 1));
        mem.write_slice(&[0; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(request(&mut block, &mem, T_IN, 3, 512), (S_OK, 513));
        let mut back = [0u8; 512];
        mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, [0xab; 512]);
        assert_eq!(request(&mut block, &mem, T_FLUSH, 0, 512), (S_OK, 1));
    }

    #[test]
    fn requests_past_the_end_or_misaligned_fail_without_touching_the_file() {
        let mem = memory();
        let (dir, mut block) = disk(8, false);
        mem.write_slice(&[0xcd; 1024], GuestAddress(DATA)).unwrap();
        assert_eq!(request(&mut block, &mem, T_OUT, 8, 512).0, S_IOERR);
        assert_eq!(request(&mut block, &mem, T_OUT, 7, 1024).0, S_IOERR);
        assert_eq!(request(&mut block, &mem, T_OUT, u64::MAX, 512).0, S_IOERR);
        assert_eq!(request(&mut block, &mem, T_OUT, 0, 100).0, S_IOERR);
        assert_eq!(request(&mut block, &mem, T_IN, 8, 512).0, S_IOERR);
        let file = std::fs::read(dir.path().join("disk.raw")).unwrap();
        assert!(file.iter().all(|&b| b == 0), "a refused write reached the file");
        assert_eq!(block.failed_requests, 5);
    }

    #[test]
    fn read_only_disks_refuse_writes_and_unknown_requests_are_unsupported() {
        let mem = memory();
        let (dir, mut block) = disk(8, true);
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, [0x5au8; 8 * 512]).unwrap();
        assert_ne!(block.features() & VIRTIO_BLK_F_RO, 0);
        assert!(block.read_only());
        mem.write_slice(&[0xcd; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(request(&mut block, &mem, T_OUT, 0, 512).0, S_IOERR);
        assert_eq!(request(&mut block, &mem, T_IN, 0, 512).0, S_OK, "reads are served");
        assert_eq!(request(&mut block, &mem, T_FLUSH, 0, 512).0, S_OK);
        assert_eq!(std::fs::read(&path).unwrap(), [0x5a; 8 * 512], "a refused write reached the file");
        // The file itself is open read-only: nothing the device does can write it.
        assert!(block.file.write_at(b"x", 0).is_err());
        let (_dir, writable) = disk(8, false);
        assert_eq!(writable.features() & VIRTIO_BLK_F_RO, 0);
        assert_eq!(request(&mut block, &mem, 77, 0, 512).0, S_UNSUPP);
        assert_eq!(request(&mut block, &mem, T_GET_ID, 0, 20), (S_OK, 21));
        let mut id = [0u8; 5];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"dom-1");
    }

    #[test]
    fn capacity_is_in_the_config_space() {
        let (_dir, block) = disk(8, false);
        let mut cap = [0u8; 8];
        block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut past = [0xffu8; 4];
        block.read_config(64, &mut past);
        assert_eq!(past, [0; 4]);
    }
}
