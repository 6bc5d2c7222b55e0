//! virtio-blk backed by a raw image file: read, write, flush and get-id requests, 512-byte
//! sectors, every request bounds-checked against the image size. A request the device
//! cannot serve gets VIRTIO_BLK_S_IOERR or S_UNSUPP; it never ends the VM.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

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

impl Block {
    pub fn open(path: &Path, read_only: bool, id: &str) -> std::io::Result<Block> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let capacity_sectors = file.metadata()?.len() / SECTOR_BYTES;
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Block { file, capacity_sectors, read_only, id: id_bytes, failed_requests: 0 })
    }

    /// Serve one request: `header` is (type, sector), `data` the bytes the driver sent,
    /// `room` how many bytes the driver can take back before the status byte.
    /// Returns (status, bytes to give back).
    fn serve(&mut self, kind: u32, sector: u64, data: &[u8], room: usize) -> (u8, Vec<u8>) {
        let in_range = |len: usize| {
            let sectors = (len as u64).div_ceil(SECTOR_BYTES);
            len % SECTOR_BYTES as usize == 0
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
