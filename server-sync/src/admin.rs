//! Administration: users, devices, tokens and grants. The `fieldsync-server` command line calls
//! these against the server's database; tests call them directly.

use crate::auth::new_token;
use crate::error::ServerError;
use crate::storage::{Access, Role, Storage, now_ms};

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
pub fn create_user(storage: &dyn Storage, name: &str, role: Role) -> Result<i64, ServerError> {
    check_name("user name", name)?;
    storage.create_user(name, role)
}

fn user(storage: &dyn Storage, name: &str) -> Result<i64, ServerError> {
    storage
        .user_id(name)?
        .ok_or_else(|| ServerError::NotFound(format!("no user named `{name}`")))
}

/// Registers a device for a user and issues its first token.
pub fn enroll_device(
    storage: &dyn Storage,
    user_name: &str,
    device_name: &str,
    expires_in_days: Option<u32>,
) -> Result<Enrolled, ServerError> {
    check_name("device name", device_name)?;
    let user_id = user(storage, user_name)?;
    let device_id = storage.create_device(user_id, device_name)?;
    let (token, token_id) = issue_token(storage, device_id, expires_in_days)?;
    Ok(Enrolled {
        device_id,
        token,
        token_id,
    })
}

/// Issues another token for a device; returns the token and its id.
pub fn issue_token(
    storage: &dyn Storage,
    device_id: i64,
    expires_in_days: Option<u32>,
) -> Result<(String, String), ServerError> {
    let issued = new_token()?;
    let expires_at = expires_in_days.map(|days| now_ms() + i64::from(days) * 86_400_000);
    storage.insert_token(&issued.id, device_id, &issued.secret_hash, expires_at)?;
    Ok((issued.token, issued.id))
}

/// Grants a user read or write access to a scope.
pub fn grant(
    storage: &dyn Storage,
    user_name: &str,
    scope: &str,
    access: Access,
) -> Result<(), ServerError> {
    check_name("scope", scope)?;
    storage.set_grant(user(storage, user_name)?, scope, access)
}

/// Removes a user's grant on a scope.
pub fn revoke_grant(
    storage: &dyn Storage,
    user_name: &str,
    scope: &str,
) -> Result<(), ServerError> {
    if storage.revoke_grant(user(storage, user_name)?, scope)? {
        Ok(())
    } else {
        Err(ServerError::NotFound(format!(
            "`{user_name}` has no grant on `{scope}`"
        )))
    }
}

/// Revokes a token by its id (the part after `fs_`, before the second `_`).
pub fn revoke_token(storage: &dyn Storage, token_id: &str) -> Result<(), ServerError> {
    if storage.revoke_token(token_id)? {
        Ok(())
    } else {
        Err(ServerError::NotFound("no such live token".into()))
    }
}

/// Revokes a device and every token of it.
pub fn revoke_device(storage: &dyn Storage, device_id: i64) -> Result<(), ServerError> {
    if storage.revoke_device(device_id)? {
        Ok(())
    } else {
        Err(ServerError::NotFound(format!("no live device {device_id}")))
    }
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
