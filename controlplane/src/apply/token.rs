//! Applying the events of bearer tokens.

use super::*;
use crate::model::{Role, Token};

#[allow(clippy::too_many_arguments)]
pub(super) fn created(
    state: &mut State,
    seq: u64,
    now: u64,
    by: &str,
    name: &str,
    role: Role,
    secret_sha256: &[u8; 32],
    expires_ms: u64,
) {
    let token = Token {
        name: name.to_owned(),
        role,
        secret_sha256: *secret_sha256,
        created_ms: now,
        expires_ms,
        created_by: by.to_owned(),
        version: seq,
    };
    let previous = state.tokens.insert(name.to_owned(), token);
    assert!(previous.is_none(), "token {name} created twice");
}

pub(super) fn revoked(state: &mut State, name: &str) {
    let revoked = state.tokens.remove(name);
    assert!(revoked.is_some(), "token {name} revoked but unknown");
}
