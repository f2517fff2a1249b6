//! People and what administrators do with them, in SQL: users (and those who sign in through
//! the identity provider), their devices, the scopes a grant on a prefix names, the group
//! mappings, and the audit lines of administrators' actions.

use postgres::Client;
use postgres::error::SqlState;

use crate::error::ServerError;
use crate::storage::{
    Access, DeviceInfo, DeviceRecord, NewAuditLine, Result, Role, SignIn, StoredGroupGrant,
    UserInfo, listed_count, now_ms,
};

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
                d.schema_version, d.pending_changes, d.pending_reported_at
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
            pending_changes: row.get::<_, Option<i64>>(7).map(listed_count),
            pending_reported_at: row.get(8),
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

pub(super) fn audit_line(conn: &mut Client, line: &NewAuditLine<'_>) -> Result<()> {
    conn.execute(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &now_ms(),
            &line.user_id,
            &line.device_id,
            &line.action,
            &line.collection,
            &line.record_id,
            &line.scope,
        ],
    )?;
    Ok(())
}

pub(super) fn list_users(conn: &mut Client) -> Result<Vec<UserInfo>> {
    let rows = conn.query(
        "SELECT id, name, role, display_name, email, subject IS NOT NULL, created_at
         FROM users ORDER BY id",
        &[],
    )?;
    rows.iter()
        .map(|row| {
            Ok(UserInfo {
                id: row.get(0),
                name: row.get(1),
                role: Role::parse(row.get(2))
                    .ok_or_else(|| ServerError::Corrupt("unknown user role".into()))?,
                display_name: row.get(3),
                email: row.get(4),
                signs_in: row.get(5),
                created_at: row.get(6),
            })
        })
        .collect()
}

pub(super) fn group_grants(conn: &mut Client) -> Result<Vec<StoredGroupGrant>> {
    let rows = conn.query(
        "SELECT group_name, scopes, access FROM group_grants
         ORDER BY group_name COLLATE \"C\", scopes COLLATE \"C\"",
        &[],
    )?;
    rows.iter()
        .map(|row| {
            Ok(StoredGroupGrant {
                group: row.get(0),
                scopes: row.get(1),
                access: Access::parse(row.get(2))
                    .ok_or_else(|| ServerError::Corrupt("unknown group grant access".into()))?,
            })
        })
        .collect()
}

pub(super) fn set_group_grants(conn: &mut Client, grants: &[StoredGroupGrant]) -> Result<()> {
    let mut tx = conn.transaction()?;
    tx.execute("DELETE FROM group_grants", &[])?;
    for grant in grants {
        tx.execute(
            "INSERT INTO group_grants (group_name, scopes, access) VALUES ($1, $2, $3)
             ON CONFLICT (group_name, scopes) DO UPDATE
             SET access = CASE WHEN excluded.access = 'write' THEN 'write' ELSE group_grants.access END",
            &[&grant.group, &grant.scopes, &grant.access.as_str()],
        )?;
    }
    tx.commit()?;
    Ok(())
}
