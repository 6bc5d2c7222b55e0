//! How the raft layer encodes openraft's own types (log entries, votes, snapshot metadata
//! and the messages on the wire): a version byte, then bincode 2.0.1 via serde. Drover's
//! events and states go through `controlplane::codec` instead.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The version byte this build writes.
pub const RAFT_FORMAT_VERSION: u8 = 1;
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
    if version != RAFT_FORMAT_VERSION {
        return Err(EncodingError::Version(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(payload, config())?;
    if used != payload.len() {
        return Err(EncodingError::Trailing(payload.len() - used));
    }
    Ok(value)
}
