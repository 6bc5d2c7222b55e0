//! The one codec for everything durable: event envelopes, proposals and state snapshots.
//!
//! Every encoding starts with a five-byte header: the magic `DR`, a tag saying what the
//! payload is, and the format version (u16, little endian). The payload is bincode 2.0.1
//! (serde, standard config: little endian, varint integers). Decoding checks the header,
//! refuses trailing bytes and caps what a payload may allocate.
//!
//! Swapping the serializer means a new format version here: decoders for every earlier
//! version stay, and the golden files in `tests/golden/` prove it.
//!
//! Versions: 1, the first; 2 added a snapshot's state and a domain's `restore_from` to the
//! state (`crate::state_v1` decodes version-1 states); 3 added a domain's `ha_restarts`
//! (`crate::state_v2` decodes version-2 states); 4 added the cluster's settings and its
//! hosts' recent fencings (`crate::state_v3`); 5 added a volume's state, host and last
//! failure (`crate::state_v4`); 6 added a network's VNI (`crate::state_v5`); 7 added a
//! host's VM limits (`crate::state_v6`); 8 added a proposal's trace context
//! (`crate::proposal::ProposalV7` decodes earlier proposals; states are as in 7); 9 added
//! bearer tokens to the state (`crate::state_v8` decodes states of 7 and 8; proposals
//! are as in 8); 10 added a migration's target address and progress (`crate::state_v9`
//! decodes version-9 states, and its `MigrationV9` the migrations of every earlier one);
//! 11 added a migration's operator-set longest pause (`crate::state_v10`); 12 added a
//! proposal's term (`crate::proposal::ProposalV11` decodes proposals of 8 to 11; states
//! are as in 11).
//! Events encode alike from 8 on (variants are only appended).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::EventEnvelope;
use crate::proposal::Proposal;
use crate::state::State;

/// The format this build writes.
pub const FORMAT_VERSION: u16 = 12;
/// Largest payload a decode will allocate for (1 GiB: a state snapshot of a big cluster).
pub const DECODE_LIMIT_BYTES: usize = 1 << 30;

const MAGIC: [u8; 2] = *b"DR";
const HEADER_LEN: usize = 5;

/// What an encoding holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Event = 1,
    Proposal = 2,
    State = 3,
}

/// A type that is written to disk or the wire through this codec.
pub trait Durable: Serialize + DeserializeOwned {
    const TAG: Tag;

    /// Decode a payload of an earlier format `version` (the same layout, unless the type
    /// says not).
    fn decode_old(version: u16, payload: &[u8]) -> Result<Self, CodecError> {
        debug_assert!(version < FORMAT_VERSION);
        decode_payload(payload)
    }
}

impl Durable for EventEnvelope {
    const TAG: Tag = Tag::Event;
}
impl Durable for Proposal {
    const TAG: Tag = Tag::Proposal;

    fn decode_old(version: u16, payload: &[u8]) -> Result<Self, CodecError> {
        match version {
            1..=7 => decode_payload::<crate::proposal::ProposalV7>(payload).map(Proposal::from),
            8..=11 => decode_payload::<crate::proposal::ProposalV11>(payload).map(Proposal::from),
            _ => decode_payload(payload),
        }
    }
}
impl Durable for State {
    const TAG: Tag = Tag::State;

    fn decode_old(version: u16, payload: &[u8]) -> Result<Self, CodecError> {
        match version {
            1 => decode_payload::<crate::state_v1::StateV1>(payload).map(State::from),
            2 => decode_payload::<crate::state_v2::StateV2>(payload).map(State::from),
            3 => decode_payload::<crate::state_v3::StateV3>(payload).map(State::from),
            4 => decode_payload::<crate::state_v4::StateV4>(payload).map(State::from),
            5 => decode_payload::<crate::state_v5::StateV5>(payload).map(State::from),
            6 => decode_payload::<crate::state_v6::StateV6>(payload).map(State::from),
            7 | 8 => decode_payload::<crate::state_v8::StateV8>(payload).map(State::from),
            9 => decode_payload::<crate::state_v9::StateV9>(payload).map(State::from),
            10 => decode_payload::<crate::state_v10::StateV10>(payload).map(State::from),
            _ => decode_payload(payload),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("too short for a header ({0} bytes)")]
    Truncated(usize),
    #[error("bad magic {0:02x?}")]
    Magic([u8; 2]),
    #[error("holds tag {found}, expected {expected}")]
    Tag { expected: u8, found: u8 },
    #[error("format version {0} is not known to this build (it reads up to {FORMAT_VERSION})")]
    Version(u16),
    #[error("payload")]
    Payload(#[from] bincode::error::DecodeError),
    #[error("{0} trailing bytes after the payload")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

/// Encode `value` in the current format.
pub fn encode<T: Durable>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_into(value, &mut out);
    out
}

/// Encode `value` in the current format at the end of `out`.
pub fn encode_into<T: Durable>(value: &T, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.push(T::TAG as u8);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    // The model holds only types bincode's serde support encodes (no maps keyed by
    // unsized types, no untagged enums), so failure would be a bug in the model.
    bincode::serde::encode_into_std_write(value, out, config()).expect("the model always encodes");
}

/// Decode a value written by this or any earlier format version.
pub fn decode<T: Durable>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated(bytes.len()));
    }
    if bytes[..2] != MAGIC {
        return Err(CodecError::Magic([bytes[0], bytes[1]]));
    }
    if bytes[2] != T::TAG as u8 {
        return Err(CodecError::Tag { expected: T::TAG as u8, found: bytes[2] });
    }
    let version = u16::from_le_bytes([bytes[3], bytes[4]]);
    let payload = &bytes[HEADER_LEN..];
    match version {
        1..FORMAT_VERSION => T::decode_old(version, payload),
        FORMAT_VERSION => decode_payload(payload),
        other => Err(CodecError::Version(other)),
    }
}

/// Decode a whole bincode payload as `T`.
fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(payload, config())?;
    if used != payload.len() {
        return Err(CodecError::Trailing(payload.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn envelope() -> EventEnvelope {
        EventEnvelope {
            seq: 7,
            time_ms: 1_700_000_000_000,
            principal: "alice".into(),
            request_id: "r-1".into(),
            event: Event::DomainStartRequested { name: "web".into() },
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&envelope());
        assert_eq!(&bytes[..5], &[b'D', b'R', 1, 12, 0]);
        assert_eq!(decode::<EventEnvelope>(&bytes).unwrap(), envelope());
    }

    #[test]
    fn refuses_damage() {
        let bytes = encode(&envelope());
        assert!(matches!(decode::<EventEnvelope>(&bytes[..3]), Err(CodecError::Truncated(3))));
        assert!(matches!(decode::<State>(&bytes), Err(CodecError::Tag { expected: 3, found: 1 })));
        let mut v13 = bytes.clone();
        v13[3] = 13;
        assert!(matches!(decode::<EventEnvelope>(&v13), Err(CodecError::Version(13))));
        let mut v1 = bytes.clone();
        v1[3] = 1;
        assert_eq!(
            decode::<EventEnvelope>(&v1).unwrap(),
            envelope(),
            "events encode alike in versions 1 to 12"
        );
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(matches!(decode::<EventEnvelope>(&magic), Err(CodecError::Magic(_))));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(decode::<EventEnvelope>(&trailing), Err(CodecError::Trailing(1))));
        assert!(matches!(decode::<EventEnvelope>(&bytes[..bytes.len() - 1]), Err(CodecError::Payload(_))));
    }

    #[test]
    fn refuses_huge_length_prefix() {
        // A string length of 2^60 must fail on the limit, not try to allocate.
        let mut bytes = vec![b'D', b'R', 1, 4, 0];
        bytes.extend_from_slice(&[7, 0]); // seq 7, time 0
        bytes.push(0xFF); // varint u64 marker
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(decode::<EventEnvelope>(&bytes), Err(CodecError::Payload(_))));
    }
}
