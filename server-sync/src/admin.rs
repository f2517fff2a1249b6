//! Administration: users, devices, tokens, grants and group mappings. The `fieldsync-server`
//! command line and the admin API (`admin_api.rs`) call these same functions; each action that
//! changes something is written to the audit log with who did it.

pub use webhooks::{AddedWebhook, add_webhook, remove_webhook, webhooks};

use crate::auth::new_token;
use crate::error::ServerError;
use crate::group_grants::GroupGrants;
use crate::storage::{
    Access, AuditEntry, AuditQuery, DeviceInfo, Grant, Role, Storage, StoredGroupGrant, now_ms,
};

mod webhooks;

/// Who performs an administrator's action, as the audit log names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// Someone at the server's command line (the audit log's user `(server)`).
    CommandLine,
    /// An administrator through the admin API.
    User(i64),
}

impl By {
    /// The user id audit lines name: 0 for the command line.
    pub(crate) fn user_id(self) -> i64 {
        match self {
            By::CommandLine => 0,
            By::User(id) => id,
        }
    }
}

/// Writes `action` on `target` by `by` to the audit log.
fn audited(storage: &dyn Storage, by: By, action: &str, target: &str) -> Result<(), ServerError> {
    storage.audit_admin(by.user_id(), action, target)
}

/// A device registered for a user, with its first token.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The device id.
    pub device_id: i64,
    /// Its token (shown once).
    pub token: String,
    /// The token's public id, for revoking it.
    pub token_id: String,
}

/// Checks a name an administrator gives (a user, a device, a scope): 1 to 128 characters, not
/// blank, and none of them a control character (a newline would forge a line of the audit
/// output) or a bidirectional-text control (which would make a name read as another).
pub fn check_name(kind: &str, name: &str) -> Result<(), ServerError> {
    if name.trim().is_empty() || name.chars().count() > 128 {
        return Err(ServerError::BadRequest(format!(
            "a {kind} is 1 to 128 characters, not all blank"
        )));
    }
    if name.chars().any(is_hidden) {
        return Err(ServerError::BadRequest(format!(
            "a {kind} may not hold control characters or line breaks"
        )));
    }
    Ok(())
}

/// `text` as the command line prints it: control and bidirectional-text characters (which a
/// device may have put in a pushed record's scope or id, as the audit log keeps them) escaped
/// as `\u{…}`, so that one printed line is one entry.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if is_hidden(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A control character, or a control of bidirectional text (marks, embeddings, overrides,
/// isolates), which changes how the text around it reads.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Creates a user.
pub fn create_user(
    storage: &dyn Storage,
    by: By,
    name: &str,
    role: Role,
) -> Result<i64, ServerError> {
    check_name("user name", name)?;
    let id = storage.create_user(name, role)?;
    audited(
        storage,
        by,
        &format!("create-user ({})", role.as_str()),
        name,
    )?;
    Ok(id)
}

fn user(storage: &dyn Storage, name: &str) -> Result<i64, ServerError> {
    storage
        .user_id(name)?
        .ok_or_else(|| ServerError::NotFound(format!("no user named `{name}`")))
}

/// Registers a device for a user and issues its first token.
pub fn enroll_device(
    storage: &dyn Storage,
    by: By,
    user_name: &str,
    device_name: &str,
    expires_in_days: Option<u32>,
) -> Result<Enrolled, ServerError> {
    check_name("device name", device_name)?;
    let user_id = user(storage, user_name)?;
    let device_id = storage.create_device(user_id, device_name)?;
    audited(storage, by, "enroll-device", &device_id.to_string())?;
    let (token, token_id) = issue_token(storage, by, device_id, expires_in_days)?;
    Ok(Enrolled {
        device_id,
        token,
        token_id,
    })
}

/// Issues another token for a device; returns the token and its id.
pub fn issue_token(
    storage: &dyn Storage,
    by: By,
    device_id: i64,
    expires_in_days: Option<u32>,
) -> Result<(String, String), ServerError> {
    if storage
        .device(device_id)?
        .is_none_or(|device| device.revoked)
    {
        return Err(ServerError::NotFound(format!("no live device {device_id}")));
    }
    let issued = new_token()?;
    let expires_at = expires_in_days.map(|days| now_ms() + i64::from(days) * 86_400_000);
    storage.insert_token(&issued.id, device_id, &issued.secret_hash, expires_at)?;
    audited(
        storage,
        by,
        "issue-token",
        &format!("{device_id}/{}", issued.id),
    )?;
    Ok((issued.token, issued.id))
}

/// Grants a user read or write access to a scope.
pub fn grant(
    storage: &dyn Storage,
    by: By,
    user_name: &str,
    scope: &str,
    access: Access,
) -> Result<(), ServerError> {
    check_name("scope", scope)?;
    storage.set_grant(user(storage, user_name)?, scope, access)?;
    audited(
        storage,
        by,
        &format!("grant ({}) on {scope}", access.as_str()),
        user_name,
    )
}

/// Removes a user's grant on a scope.
pub fn revoke_grant(
    storage: &dyn Storage,
    by: By,
    user_name: &str,
    scope: &str,
) -> Result<(), ServerError> {
    if storage.revoke_grant(user(storage, user_name)?, scope)? {
        audited(storage, by, &format!("revoke-grant on {scope}"), user_name)
    } else {
        Err(ServerError::NotFound(format!(
            "`{user_name}` has no grant on `{scope}`"
        )))
    }
}

/// Revokes a token by its id (the part after `fs_`, before the second `_`).
pub fn revoke_token(storage: &dyn Storage, by: By, token_id: &str) -> Result<(), ServerError> {
    if storage.revoke_token(token_id)? {
        audited(storage, by, "revoke-token", token_id)
    } else {
        Err(ServerError::NotFound("no such live token".into()))
    }
}

/// Revokes a device and every token of it.
pub fn revoke_device(storage: &dyn Storage, by: By, device_id: i64) -> Result<(), ServerError> {
    if storage.revoke_device(device_id)? {
        audited(storage, by, "revoke-device", &device_id.to_string())
    } else {
        Err(ServerError::NotFound(format!("no live device {device_id}")))
    }
}

/// Frees an Automerge actor from the device holding it (see [`Storage::release_actor`]).
pub fn release_actor(storage: &dyn Storage, by: By, actor: &str) -> Result<(), ServerError> {
    if storage.release_actor(actor)? {
        audited(storage, by, "release-actor", actor)
    } else {
        Err(ServerError::NotFound(format!(
            "no device holds actor {actor}"
        )))
    }
}

/// Makes `grants` the group mappings in force, replacing every one before; each is checked
/// as the mappings file's lines are.
pub fn set_group_grants(
    storage: &dyn Storage,
    by: By,
    grants: &GroupGrants,
) -> Result<(), ServerError> {
    let stored: Vec<StoredGroupGrant> = grants
        .grants()
        .iter()
        .map(|grant| StoredGroupGrant {
            group: grant.group.clone(),
            scopes: grant.scopes.to_string(),
            access: grant.access,
        })
        .collect();
    storage.set_group_grants(&stored)?;
    audited(
        storage,
        by,
        "set-group-grants",
        &format!("{} mappings", stored.len()),
    )
}

/// A user's stored grants.
pub fn grants_of(storage: &dyn Storage, user_name: &str) -> Result<Vec<Grant>, ServerError> {
    storage.grants(user(storage, user_name)?)
}

/// Every device, or `user_name`'s.
pub fn devices(
    storage: &dyn Storage,
    user_name: Option<&str>,
) -> Result<Vec<DeviceInfo>, ServerError> {
    match user_name {
        Some(name) => storage.devices_of(user(storage, name)?),
        None => storage.list_devices(),
    }
}

/// Lines of the audit log; the query is audited too (who looked at whose lines).
pub fn audit(
    storage: &dyn Storage,
    by: By,
    query: &AuditQuery,
) -> Result<Vec<AuditEntry>, ServerError> {
    let entries = storage.audit(query)?;
    let filter = [
        query.user.as_ref().map(|user| format!("user {user}")),
        query.record_id.as_ref().map(|id| format!("record {id}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    audited(storage, by, "read-audit", &filter)?;
    Ok(entries)
}

/// The group mappings in force.
pub fn group_grants(storage: &dyn Storage) -> Result<GroupGrants, ServerError> {
    GroupGrants::from_stored(&storage.group_grants()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_control_or_bidi_characters_are_refused_and_printed_escaped() {
        for bad in [
            "",
            "  ",
            "ada\nbo",
            "ada\r",
            "tab\there",
            "nul\0",
            "rtl\u{202e}gnp.exe",
            "\u{1b}[31m",
        ] {
            assert!(check_name("scope", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("scope", &"x".repeat(129)).is_err());
        for good in [
            "ada",
            "caseload-east",
            "Zoë Ümlaut",
            "東京",
            &"x".repeat(128),
        ] {
            assert!(check_name("scope", good).is_ok(), "{good:?}");
        }
        assert_eq!(printable("a\nb\u{202e}c"), "a\\u{a}b\\u{202e}c");
        assert_eq!(printable("Zoë"), "Zoë");
    }
}
