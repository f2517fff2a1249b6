//! People who sign in through the identity provider, their devices, and the scopes a grant on
//! a prefix names, in SQL.

use postgres::Client;
use postgres::error::SqlState;

use crate::error::ServerError;
use crate::storage::{DeviceInfo, DeviceRecord, Result, Role, SignIn, now_ms};

pub(super) fn sign_in(conn: &mut Client, sign_in: &SignIn<'_>) -> Result<i64> {
    let values: [&(dyn postgres::types::ToSql + Sync); 3] =
        [&sign_in.subject, &sign_in.display_name, &sign_in.email];
    // The common case, they signed in before as they are, writes nothing.
    if let Some(row) = conn.query_opt(
        "SELECT id FROM users WHERE subject = $1
         AND display_name IS NOT DISTINCT FROM $2 AND email IS NOT DISTINCT FROM $3",
        &values,
    )? {
        return Ok(row.get(0));
    }
    if let Some(row) = conn.query_opt(
        "UPDATE users SET display_name = $2, email = $3 WHERE subject = $1 RETURNING id",
        &values,
    )? {
        return Ok(row.get(0));
    }
    let created = conn.query_one(
        "INSERT INTO users (name, role, created_at, subject, display_name, email)
         VALUES ($1, $4, $5, $1, $2, $3) RETURNING id",
        &[
            &sign_in.subject,
            &sign_in.display_name,
            &sign_in.email,
            &Role::Member.as_str(),
            &now_ms(),
        ],
    );
    match created {
        Ok(row) => Ok(row.get(0)),
        Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            // Another instance created them meanwhile, or the name is an administrator's user.
            match conn.query_opt(
                "SELECT id FROM users WHERE subject = $1",
                &[&sign_in.subject],
            )? {
                Some(row) => Ok(row.get(0)),
                None => Err(ServerError::Conflict(
                    "a user created by an administrator has the subject as name".into(),
                )),
            }
        }
        Err(err) => Err(err.into()),
    }
}

pub(super) fn device(conn: &mut Client, device_id: i64) -> Result<Option<DeviceRecord>> {
    Ok(conn
        .query_opt(
            "SELECT user_id, actor, revoked_at IS NOT NULL FROM devices WHERE id = $1",
            &[&device_id],
        )?
        .map(|row| DeviceRecord {
            user_id: row.get(0),
            actor: row.get(1),
            revoked: row.get(2),
        }))
}

/// Devices with their user, last sync and actor, of one user or of every user.
pub(super) fn devices(conn: &mut Client, user_id: Option<i64>) -> Result<Vec<DeviceInfo>> {
    let rows = conn.query(
        "SELECT d.id, u.name, d.name, d.actor, d.last_sync_at, d.revoked_at IS NOT NULL,
                d.schema_version
         FROM devices d JOIN users u ON u.id = d.user_id
         WHERE $1::BIGINT IS NULL OR d.user_id = $1 ORDER BY d.id",
        &[&user_id],
    )?;
    Ok(rows
        .iter()
        .map(|row| DeviceInfo {
            id: row.get(0),
            user: row.get(1),
            name: row.get(2),
            actor: row.get(3),
            last_sync_at: row.get(4),
            revoked: row.get(5),
            schema_version: row.get::<_, Option<i32>>(6).map(|v| v as u32),
        })
        .collect())
}

pub(super) fn scopes_with_prefix(conn: &mut Client, prefix: &str) -> Result<Vec<String>> {
    // `starts_with`, not LIKE (whose `%` and `_` a scope may hold); byte order, as SQLite sorts.
    let rows = conn.query(
        "SELECT name FROM scopes WHERE starts_with(name, $1) ORDER BY name COLLATE \"C\"",
        &[&prefix],
    )?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
