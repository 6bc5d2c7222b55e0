//! The migration stream's frames: a tag byte, a little-endian u32 payload length, the
//! payload.
//!
//! | tag | from | payload |
//! |---|---|---|
//! | `Hello` | source | JSON [`Hello`]: protocol version and the VM's shape |
//! | `Pages` | source | `n` (u32), `n` page numbers (u64), then `n` pages of 4096 bytes |
//! | `Zeros` | source | `n` (u32), `n` page numbers (u64) that are all zeros now |
//! | `State` | source | JSON [`crate::snapshot::VmState`] (its `memory` field unused) |
//! | `Ready` | target | empty: the VM is built, paused |
//! | `Refused` | target | UTF-8: why it cannot take the VM |
//! | `Go` | source | empty: the switch-over is committed; run |
//! | `Resumed` | target | empty: the guest runs |

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// The stream's protocol version.
pub const VERSION: u32 = 1;
/// Pages in one `Pages` frame at most.
pub const PAGES_PER_FRAME_MAX: usize = 256;
pub const PAGE_BYTES: usize = 4096;
/// The largest payload a frame may have: a full `Pages` frame, or a VM's state.
pub const FRAME_BYTES_MAX: usize = crate::snapshot::STATE_BYTES_MAX as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Hello = 1,
    Pages = 2,
    Zeros = 3,
    State = 4,
    Ready = 5,
    Refused = 6,
    Go = 7,
    Resumed = 8,
}

impl Tag {
    fn from_byte(b: u8) -> Option<Tag> {
        use Tag::*;
        [Hello, Pages, Zeros, State, Ready, Refused, Go, Resumed].into_iter().find(|t| *t as u8 == b)
    }
}

/// The source's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub domain: String,
    pub memory_mib: u64,
    pub vcpus: u8,
}

pub fn write_frame(out: &mut impl Write, tag: Tag, payload: &[u8]) -> std::io::Result<()> {
    assert!(payload.len() <= FRAME_BYTES_MAX, "a frame of {} bytes", payload.len());
    out.write_all(&[tag as u8])?;
    out.write_all(&(payload.len() as u32).to_le_bytes())?;
    out.write_all(payload)
}

/// Read one frame: its tag and payload (into `buf`, reused).
pub fn read_frame(input: &mut impl Read, buf: &mut Vec<u8>) -> Result<Tag, super::MigrationError> {
    let mut head = [0u8; 5];
    input.read_exact(&mut head)?;
    let tag = Tag::from_byte(head[0])
        .ok_or_else(|| super::MigrationError::Protocol(format!("unknown frame tag {}", head[0])))?;
    let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(super::MigrationError::Protocol(format!("a frame of {len} bytes")));
    }
    buf.resize(len, 0);
    input.read_exact(buf)?;
    Ok(tag)
}

/// A `Pages` or `Zeros` payload's page numbers, checked against the guest's `pages`.
pub fn page_numbers(payload: &[u8], with_data: bool, pages: u64) -> Result<Vec<u64>, super::MigrationError> {
    let bad = |why: String| super::MigrationError::Protocol(why);
    let n = payload.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    let n = n.ok_or_else(|| bad("a page frame without its count".into()))?;
    let each = if with_data { 8 + PAGE_BYTES } else { 8 };
    if n > PAGES_PER_FRAME_MAX || payload.len() != 4 + n * each {
        return Err(bad(format!("a page frame of {} bytes for {n} pages", payload.len())));
    }
    let numbers: Vec<u64> = payload[4..4 + n * 8]
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    if let Some(p) = numbers.iter().find(|&&p| p >= pages) {
        return Err(bad(format!("page {p} is beyond the guest's {pages} pages")));
    }
    Ok(numbers)
}
