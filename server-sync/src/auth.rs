//! Bearer tokens: how they are made, stored and checked.
//!
//! A token reads `fs_<id>_<secret>`: the id finds the stored row, the 32-byte random secret is
//! kept only as its SHA-256 and compared in constant time. Tokens are shown once, when issued,
//! and never logged.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ServerError;
use crate::storage::{Access, Grant, Storage, now_ms};

/// A new token: the text to hand to the device once, and what to store.
pub struct IssuedToken {
    /// The whole token, `fs_<id>_<secret>`.
    pub token: String,
    /// Its public id.
    pub id: String,
    /// SHA-256 of its secret.
    pub secret_hash: Vec<u8>,
}

/// Makes a new random token.
pub fn new_token() -> Result<IssuedToken, ServerError> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).map_err(|_| ServerError::Internal("no randomness".into()))?;
    getrandom::fill(&mut secret).map_err(|_| ServerError::Internal("no randomness".into()))?;
    let id = hex::encode(id);
    let secret = hex::encode(secret);
    Ok(IssuedToken {
        token: format!("fs_{id}_{secret}"),
        secret_hash: Sha256::digest(secret.as_bytes()).to_vec(),
        id,
    })
}

/// Who is calling, once the token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The device.
    pub device_id: i64,
    /// Its user.
    pub user_id: i64,
    /// The Automerge actor the device pushes as, once bound.
    pub actor: Option<String>,
    /// The user's grants.
    pub grants: Vec<Grant>,
}

impl Caller {
    /// Scopes the caller may read (every grant).
    pub fn readable_scopes(&self) -> Vec<String> {
        self.grants.iter().map(|g| g.scope.clone()).collect()
    }

    /// Whether the caller may write `scope`.
    pub fn may_write(&self, scope: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.scope == scope && g.access == Access::Write)
    }
}

/// Checks the `Authorization: Bearer` header; every failure is the same 401.
pub fn authenticate(storage: &dyn Storage, headers: &HeaderMap) -> Result<Caller, ServerError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ServerError::Unauthorized("missing bearer token"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or(ServerError::Unauthorized("malformed authorization header"))?;
    let (id, secret) = parse(token).ok_or(ServerError::Unauthorized("malformed token"))?;
    let stored = storage
        .token(id)?
        .ok_or(ServerError::Unauthorized("unknown token"))?;
    let presented = Sha256::digest(secret.as_bytes());
    if !bool::from(presented.as_slice().ct_eq(&stored.secret_hash)) {
        return Err(ServerError::Unauthorized("unknown token"));
    }
    if stored.revoked {
        return Err(ServerError::Unauthorized("revoked token"));
    }
    if stored.expires_at.is_some_and(|at| at <= now_ms()) {
        return Err(ServerError::Unauthorized("expired token"));
    }
    Ok(Caller {
        device_id: stored.device_id,
        user_id: stored.user_id,
        actor: stored.actor,
        grants: storage.grants(stored.user_id)?,
    })
}

fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("fs_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 16) && hex_of(secret, 64)).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a.token, b.token);
        let (id, secret) = parse(&a.token).unwrap();
        assert_eq!(id, a.id);
        assert_eq!(Sha256::digest(secret.as_bytes()).to_vec(), a.secret_hash);
        for bad in [
            "",
            "fs_",
            "fs_abc_def",
            "xx_0123456789abcdef_00",
            &a.token[..a.token.len() - 1],
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
