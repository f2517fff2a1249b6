//! Who is calling: bearer tokens, how device tokens are made, stored and checked, and what an
//! identity provider's token gives its bearer.
//!
//! A device token reads `fs_<id>_<secret>`: the id finds the stored row, the 32-byte random
//! secret is kept only as its SHA-256 and compared in constant time. Device tokens are shown
//! once, when issued, and never logged. Any other bearer token is taken for an access token of
//! the clinic's identity provider (see [`crate::oidc`]), if one is configured: it names a
//! person, who is created as a user on first sign-in and whose groups give them grants
//! (see [`crate::group_grants`]) worked out again from every token.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::admin::check_name;
use crate::error::ServerError;
use crate::group_grants::{GroupGrants, ScopePattern};
use crate::http::blocking;
use crate::jwt::JwtError;
use crate::oidc::{self, SignedIn};
use crate::storage::{Access, Role, SignIn, Storage, now_ms};
use fieldsync_record::protocol::DEVICE_HEADER;

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

/// Who is calling from which device, once the token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The device.
    pub device_id: i64,
    /// Its user.
    pub user_id: i64,
    /// The Automerge actor the device pushes as, once bound.
    pub actor: Option<String>,
    /// What the user may read and write: their stored grants, and under an identity provider
    /// what their groups in this token give them.
    pub grants: Vec<(ScopePattern, Access)>,
    /// Whether the user is an administrator.
    pub admin: bool,
}

impl Caller {
    /// The scopes the caller may read (every grant).
    pub fn readable(&self) -> Readable {
        let mut readable = Readable::default();
        for (pattern, _) in &self.grants {
            match pattern {
                ScopePattern::Exact(scope) => readable.exact.insert(scope.clone()),
                ScopePattern::Prefix(prefix) => readable.prefixes.insert(prefix.clone()),
            };
        }
        readable
    }

    /// Whether the caller may read `scope` (any grant on it).
    pub fn may_read(&self, scope: &str) -> bool {
        self.grants
            .iter()
            .any(|(pattern, _)| pattern.matches(scope))
    }

    /// Whether the caller may write `scope`.
    pub fn may_write(&self, scope: &str) -> bool {
        self.grants
            .iter()
            .any(|(pattern, access)| *access == Access::Write && pattern.matches(scope))
    }
}

/// The scopes someone may read: some by name, some as every scope with a prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readable {
    /// Scopes named.
    pub exact: BTreeSet<String>,
    /// Prefixes of scopes.
    pub prefixes: BTreeSet<String>,
}

impl Readable {
    /// Every scope meant: those named, and those holding records under each prefix.
    pub fn resolve(&self, storage: &dyn Storage) -> Result<BTreeSet<String>, ServerError> {
        let mut scopes = self.exact.clone();
        for prefix in &self.prefixes {
            scopes.extend(storage.scopes_with_prefix(prefix)?);
        }
        Ok(scopes)
    }

    /// Whether `scope` is one of these.
    pub fn covers(&self, scope: &str) -> bool {
        self.exact.contains(scope)
            || self
                .prefixes
                .iter()
                .any(|prefix| scope.starts_with(prefix.as_str()))
    }
}

/// Someone signed in, whichever device they call from: for enrolling a device, listing
/// their devices, and the admin API.
#[derive(Debug, Clone)]
pub struct Person {
    /// The user.
    pub user_id: i64,
    /// What they may read and write.
    pub grants: Vec<(ScopePattern, Access)>,
    /// Whether they are an administrator.
    pub admin: bool,
    /// The device whose token this is, for a device token.
    pub device_id: Option<i64>,
}

/// Checks the `Authorization: Bearer` header and the device a request comes from: a device
/// token names its device, an identity provider's token needs the [`DEVICE_HEADER`] too, naming
/// one of its user's devices. Every failure is a 401.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ServerError> {
    let token = bearer(headers)?.to_owned();
    if token.starts_with(DEVICE_TOKEN_PREFIX) {
        let storage = state.storage.clone();
        return blocking(move || {
            let (person, actor) = device_token_person(&*storage, &token)?;
            Ok(Caller {
                device_id: person.device_id.expect("device tokens name their device"),
                user_id: person.user_id,
                actor,
                grants: person.grants,
                admin: person.admin,
            })
        })
        .await;
    }
    let signed = provider(state)?.verify(&token).await?;
    let device_id = headers
        .get(DEVICE_HEADER)
        .and_then(|value| value.to_str().ok()?.parse::<i64>().ok())
        .ok_or(ServerError::Unauthorized(
            "an identity provider's token needs the fieldsync-device header",
        ))?;
    let storage = state.storage.clone();
    blocking(move || {
        let person = signed_in_person(&*storage, &signed)?;
        let device = storage
            .device(device_id)?
            .filter(|device| device.user_id == person.user_id)
            .ok_or(ServerError::Unauthorized("unknown device"))?;
        if device.revoked {
            return Err(ServerError::Unauthorized("revoked device"));
        }
        Ok(Caller {
            device_id,
            user_id: person.user_id,
            actor: device.actor,
            grants: person.grants,
            admin: person.admin,
        })
    })
    .await
}

/// Checks the `Authorization: Bearer` header alone: who is calling, whichever device.
pub async fn authenticate_person(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Person, ServerError> {
    let token = bearer(headers)?.to_owned();
    let storage = state.storage.clone();
    if token.starts_with(DEVICE_TOKEN_PREFIX) {
        return blocking(move || Ok(device_token_person(&*storage, &token)?.0)).await;
    }
    let signed = provider(state)?.verify(&token).await?;
    blocking(move || signed_in_person(&*storage, &signed)).await
}

const DEVICE_TOKEN_PREFIX: &str = "fs_";

fn bearer(headers: &HeaderMap) -> Result<&str, ServerError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ServerError::Unauthorized("missing bearer token"))?;
    header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or(ServerError::Unauthorized("malformed authorization header"))
}

fn provider(state: &AppState) -> Result<&oidc::Provider, ServerError> {
    state
        .oidc
        .as_deref()
        .ok_or(ServerError::Unauthorized("malformed token"))
}

/// The person and device of a device token, and the device's actor.
fn device_token_person(
    storage: &dyn Storage,
    token: &str,
) -> Result<(Person, Option<String>), ServerError> {
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
    let person = Person {
        user_id: stored.user_id,
        grants: stored_grants(storage, stored.user_id)?,
        admin: stored.role == Role::Admin,
        device_id: Some(stored.device_id),
    };
    Ok((person, stored.actor))
}

/// The user an identity provider's token names (created on their first sign-in), with their
/// stored grants and those their groups give them now.
fn signed_in_person(storage: &dyn Storage, signed: &SignedIn) -> Result<Person, ServerError> {
    let identity = &signed.identity;
    if check_name("subject", &identity.subject).is_err() {
        return Err(ServerError::InvalidToken(JwtError::Malformed(
            "the subject (sub) is not a usable name",
        )));
    }
    // What the provider says of the person is shown to administrators: kept only if it is
    // printable text.
    fn shown(text: &Option<String>) -> Option<&str> {
        text.as_deref()
            .filter(|text| check_name("name", text).is_ok())
    }
    let user_id = storage
        .sign_in(&SignIn {
            subject: &identity.subject,
            display_name: shown(&identity.name),
            email: shown(&identity.email),
        })
        .map_err(|err| match err {
            ServerError::Conflict(_) => ServerError::Forbidden(
                "a user created by an administrator has this person's subject as name".into(),
            ),
            err => err,
        })?;
    let mut grants = stored_grants(storage, user_id)?;
    if !identity.groups.is_empty() {
        let group_grants = GroupGrants::from_stored(&storage.group_grants()?)?;
        grants.extend(group_grants.for_groups(&identity.groups));
    }
    Ok(Person {
        user_id,
        grants: strongest(grants),
        admin: signed.admin,
        device_id: None,
    })
}

/// The user `user_id` as their stored grants let them read and write, from no device: what a
/// webhook of theirs may deliver.
pub(crate) fn caller_of_user(storage: &dyn Storage, user_id: i64) -> Result<Caller, ServerError> {
    Ok(Caller {
        device_id: 0,
        user_id,
        actor: None,
        grants: strongest(stored_grants(storage, user_id)?),
        admin: false,
    })
}

/// A user's stored grants, each on the scope it names.
fn stored_grants(
    storage: &dyn Storage,
    user_id: i64,
) -> Result<Vec<(ScopePattern, Access)>, ServerError> {
    Ok(storage
        .grants(user_id)?
        .into_iter()
        .map(|grant| (ScopePattern::Exact(grant.scope), grant.access))
        .collect())
}

/// One grant a pattern, the strongest of those given.
fn strongest(grants: Vec<(ScopePattern, Access)>) -> Vec<(ScopePattern, Access)> {
    let mut by_pattern: BTreeMap<ScopePattern, Access> = BTreeMap::new();
    for (pattern, access) in grants {
        let held = by_pattern.entry(pattern).or_insert(access);
        *held = (*held).max(access);
    }
    by_pattern.into_iter().collect()
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
