use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a user may do in the public API, least first. A user's certificate says it in
/// its organization (O), a bearer token in its record; a certificate that says none is a
/// viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Reads: lists, gets, events, consoles, the audit log.
    Viewer,
    /// And the lifecycle of domains, their snapshots, migrations and volume attachments.
    Operator,
    /// Everything: hosts, networks, pools, volumes, cluster settings, tokens.
    Admin,
}

words!(Role { Viewer => "viewer", Operator => "operator", Admin => "admin" });

/// Bytes of a token's secret (random, made by the replica that takes the create call).
pub const TOKEN_SECRET_BYTES: usize = 32;

/// A bearer token as the cluster keeps it: its holder's name and role, and the SHA-256 of
/// its secret, never the secret. Revoking a token removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The holder's name: the audit principal of its calls is `user:<name>`.
    pub name: String,
    pub role: Role,
    pub secret_sha256: [u8; 32],
    /// Proposer ms when it was made, and from when it is refused.
    pub created_ms: u64,
    pub expires_ms: u64,
    /// The principal that made it.
    pub created_by: String,
    pub version: u64,
}

impl Token {
    /// Whether `secret` is this token's.
    pub fn is_secret(&self, secret: &[u8; TOKEN_SECRET_BYTES]) -> bool {
        secret_sha256(secret) == self.secret_sha256
    }

    /// Whether it is refused at `now_ms` (wall clock) for its age.
    pub fn expired_at(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }
}

/// The hash the cluster keeps of a token's secret.
pub fn secret_sha256(secret: &[u8; TOKEN_SECRET_BYTES]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// A bearer token as its holder sends it: `<name>.<secret as hex>`.
pub fn format_bearer(name: &str, secret: &[u8; TOKEN_SECRET_BYTES]) -> String {
    let mut s = String::with_capacity(name.len() + 1 + 2 * TOKEN_SECRET_BYTES);
    s.push_str(name);
    s.push('.');
    for b in secret {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The name and secret of a bearer token ([`format_bearer`]'s form), if it has that form.
pub fn parse_bearer(token: &str) -> Option<(&str, [u8; TOKEN_SECRET_BYTES])> {
    let (name, hex) = token.rsplit_once('.')?;
    if name.is_empty() || hex.len() != 2 * TOKEN_SECRET_BYTES {
        return None;
    }
    let mut secret = [0u8; TOKEN_SECRET_BYTES];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((name, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_round_trips_and_only_its_secret_is_admitted() {
        let secret = [7u8; TOKEN_SECRET_BYTES];
        let bearer = format_bearer("ci.bot", &secret);
        assert_eq!(parse_bearer(&bearer), Some(("ci.bot", secret)));
        let token = Token {
            name: "ci.bot".into(),
            role: Role::Viewer,
            secret_sha256: secret_sha256(&secret),
            created_ms: 0,
            expires_ms: 1_000,
            created_by: "user:admin".into(),
            version: 1,
        };
        assert!(token.is_secret(&secret) && !token.expired_at(999));
        assert!(token.expired_at(1_000));
        assert!(!token.is_secret(&[8u8; TOKEN_SECRET_BYTES]), "another secret");
        for bad in ["", "x", "x.", ".00", "x.zz", &bearer[..bearer.len() - 1], &format!("{bearer}0")] {
            assert_eq!(parse_bearer(bad), None, "{bad:?}");
        }
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
