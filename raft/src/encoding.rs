//! How the raft layer encodes openraft's own types (log entries, votes, snapshot metadata
//! and the messages on the wire): a version byte, then bincode 2.0.1 via serde. Drover's
//! events, proposals and states go through `controlplane::codec` instead.
//!
//! Versions: 1, the first; 2 encodes each proposal of a log entry with
//! `controlplane::codec` (see [`crate::type_config::ProposalBatch`]); 3 records each
//! member's peer and API addresses (see [`crate::type_config::Member`]). Everything else
//! encodes alike in all three, and versions 1 and 2 still decode.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The version byte this build writes.
pub const RAFT_FORMAT_VERSION: u8 = 3;

std::thread_local! {
    /// The version of the value being decoded on this thread, for the types whose layout
    /// changed (decoding is synchronous: no other decode interleaves).
    static DECODING: std::cell::Cell<u8> = const { std::cell::Cell::new(RAFT_FORMAT_VERSION) };
}

/// The raft format of the value being decoded (for a type's own `Deserialize`).
pub(crate) fn decoding_format() -> u8 {
    DECODING.with(|d| d.get())
}
/// Largest value decoded here (a raft message or a log entry), 64 MiB.
pub const DECODE_LIMIT_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EncodingError {
    #[error("empty record")]
    Empty,
    #[error("format version {0} is not known to this build")]
    Version(u8),
    #[error("payload")]
    Payload(#[from] bincode::error::DecodeError),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RAFT_FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config()).expect("openraft types always encode");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EncodingError> {
    let (&version, payload) = bytes.split_first().ok_or(EncodingError::Empty)?;
    if !(1..=RAFT_FORMAT_VERSION).contains(&version) {
        return Err(EncodingError::Version(version));
    }
    let outer = DECODING.with(|d| d.replace(version));
    let decoded = bincode::serde::decode_from_slice(payload, config());
    DECODING.with(|d| d.set(outer));
    let (value, used) = decoded?;
    if used != payload.len() {
        return Err(EncodingError::Trailing(payload.len() - used));
    }
    Ok(value)
}
