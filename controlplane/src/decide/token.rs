//! Bearer tokens: made and revoked by admins (the API checks the role).

use super::Draft;
use crate::event::Event;
use crate::limits::{TOKENS_MAX, TOKEN_TTL_MS_MAX};
use crate::model::{ResourceKey, ResourceKind, Role};
use crate::rejection::Rejection;
use crate::validate;

pub(super) fn create(
    d: &mut Draft<'_>,
    name: &str,
    role: Role,
    secret_sha256: &[u8; 32],
    ttl_ms: u64,
) -> Result<(), Rejection> {
    validate::name("name", name)?;
    validate::range("ttl_ms", ttl_ms, 1, TOKEN_TTL_MS_MAX)?;
    if d.state.token(name).is_some() {
        return Err(Rejection::exists(ResourceKind::Token, name));
    }
    if d.state.tokens().count() >= TOKENS_MAX {
        return Err(Rejection::exhausted(
            ResourceKind::Token,
            name,
            format!("the cluster keeps at most {TOKENS_MAX} tokens; revoke one first"),
        ));
    }
    d.guard(ResourceKey::Token(name.to_owned()));
    d.emit(Event::TokenCreated {
        name: name.to_owned(),
        role,
        secret_sha256: *secret_sha256,
        expires_ms: d.now_ms.saturating_add(ttl_ms),
    });
    Ok(())
}

pub(super) fn revoke(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    validate::name("name", name)?;
    if d.state.token(name).is_none() {
        return Err(Rejection::not_found(ResourceKind::Token, name));
    }
    d.guard(ResourceKey::Token(name.to_owned()));
    d.emit(Event::TokenRevoked { name: name.to_owned() });
    Ok(())
}
