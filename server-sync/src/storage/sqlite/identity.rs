//! People and what administrators do with them, in SQL: users (and those who sign in through
//! the identity provider), their devices, the scopes a grant on a prefix names, the group
//! mappings, and the audit lines of administrators' actions.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::ServerError;
use crate::storage::{
    Access, DeviceInfo, DeviceRecord, NewAuditLine, Result, Role, SignIn, StoredGroupGrant,
    UserInfo, listed_count, now_ms,
};

/// The user of `sign_in.subject` if they signed in before with the same name and email: read
/// without writing, for the common case.
pub(super) fn signed_in_before(conn: &Connection, sign_in: &SignIn<'_>) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached(
            "SELECT id FROM users WHERE subject = ?1
             AND display_name IS ?2 AND email IS ?3",
        )?
        .query_row(
            params![sign_in.subject, sign_in.display_name, sign_in.email],
            |row| row.get(0),
        )
        .optional()?)
}

/// Creates the user of `sign_in.subject`, or rewrites their display name and email.
pub(super) fn sign_in(conn: &Connection, sign_in: &SignIn<'_>) -> Result<i64> {
    let updated = conn
        .prepare_cached(
            "UPDATE users SET display_name = ?2, email = ?3 WHERE subject = ?1 RETURNING id",
        )?
        .query_row(
            params![sign_in.subject, sign_in.display_name, sign_in.email],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(id) = updated {
        return Ok(id);
    }
    conn.prepare_cached(
        "INSERT INTO users (name, role, created_at, subject, display_name, email)
         VALUES (?1, ?2, ?3, ?1, ?4, ?5) RETURNING id",
    )?
    .query_row(
        params![
            sign_in.subject,
            Role::Member.as_str(),
            now_ms(),
            sign_in.display_name,
            sign_in.email
        ],
        |row| row.get(0),
    )
    .map_err(|err| match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => ServerError::Conflict(
            "a user created by an administrator has the subject as name".into(),
        ),
        _ => err.into(),
    })
}

pub(super) fn device(conn: &Connection, device_id: i64) -> Result<Option<DeviceRecord>> {
    Ok(conn
        .prepare_cached("SELECT user_id, actor, revoked_at IS NOT NULL FROM devices WHERE id = ?1")?
        .query_row([device_id], |row| {
            Ok(DeviceRecord {
                user_id: row.get(0)?,
                actor: row.get(1)?,
                revoked: row.get(2)?,
            })
        })
        .optional()?)
}

/// Devices with their user, last sync and actor; `?1` names a user or, NULL, every user.
pub(super) fn devices(conn: &Connection, user_id: Option<i64>) -> Result<Vec<DeviceInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, u.name, d.name, d.actor, d.last_sync_at, d.revoked_at IS NOT NULL,
                d.schema_version, d.pending_changes, d.pending_reported_at
         FROM devices d JOIN users u ON u.id = d.user_id
         WHERE ?1 IS NULL OR d.user_id = ?1 ORDER BY d.id",
    )?;
    let rows = stmt.query_map([user_id], |row| {
        Ok(DeviceInfo {
            id: row.get(0)?,
            user: row.get(1)?,
            name: row.get(2)?,
            actor: row.get(3)?,
            last_sync_at: row.get(4)?,
            revoked: row.get(5)?,
            schema_version: row.get(6)?,
            pending_changes: row.get::<_, Option<i64>>(7)?.map(listed_count),
            pending_reported_at: row.get(8)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn scopes_with_prefix(conn: &Connection, prefix: &str) -> Result<Vec<String>> {
    // Not LIKE, whose `%` and `_` a scope may hold. The primary key starts the scan at the
    // prefix; the table holds one row a scope, so reading on past the matches costs little.
    let mut stmt = conn.prepare_cached(
        "SELECT name FROM scopes WHERE name >= ?1 AND substr(name, 1, length(?1)) = ?1
         ORDER BY name",
    )?;
    let rows = stmt.query_map([prefix], |row| row.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn audit_line(conn: &mut Connection, line: &NewAuditLine<'_>) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        now_ms(),
        line.user_id,
        line.device_id,
        line.action,
        line.collection,
        line.record_id,
        line.scope
    ])?;
    Ok(())
}

pub(super) fn list_users(conn: &Connection) -> Result<Vec<UserInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, role, display_name, email, subject IS NOT NULL, created_at
         FROM users ORDER BY id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(2)?,
            UserInfo {
                id: row.get(0)?,
                name: row.get(1)?,
                role: Role::Member,
                display_name: row.get(3)?,
                email: row.get(4)?,
                signs_in: row.get(5)?,
                created_at: row.get(6)?,
            },
        ))
    })?;
    rows.map(|row| {
        let (role, user) = row?;
        let role =
            Role::parse(&role).ok_or_else(|| ServerError::Corrupt("unknown user role".into()))?;
        Ok(UserInfo { role, ..user })
    })
    .collect()
}

pub(super) fn group_grants(conn: &Connection) -> Result<Vec<StoredGroupGrant>> {
    let mut stmt = conn.prepare_cached(
        "SELECT group_name, scopes, access FROM group_grants ORDER BY group_name, scopes",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    rows.map(|row| {
        let (group, scopes, access) = row?;
        let access = Access::parse(&access)
            .ok_or_else(|| ServerError::Corrupt("unknown group grant access".into()))?;
        Ok(StoredGroupGrant {
            group,
            scopes,
            access,
        })
    })
    .collect()
}

pub(super) fn set_group_grants(conn: &mut Connection, grants: &[StoredGroupGrant]) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM group_grants", [])?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO group_grants (group_name, scopes, access) VALUES (?1, ?2, ?3)
             ON CONFLICT (group_name, scopes) DO UPDATE
             SET access = CASE WHEN excluded.access = 'write' THEN 'write' ELSE access END",
        )?;
        for grant in grants {
            insert.execute(params![grant.group, grant.scopes, grant.access.as_str()])?;
        }
    }
    tx.commit()?;
    Ok(())
}
