//! A digest of the whole state: SHA-256 of its canonical encoding. Every map in the state
//! is ordered, so equal states hash equal on every replica and every build.

use sha2::{Digest, Sha256};

use crate::codec;
use crate::state::State;

/// SHA-256 of a state's encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateHash(pub [u8; 32]);

impl std::fmt::Display for StateHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for StateHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateHash({self})")
    }
}

pub fn state_hash(state: &State) -> StateHash {
    StateHash(Sha256::digest(codec::encode(state)).into())
}
