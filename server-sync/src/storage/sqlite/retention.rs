//! Retention policies and the records they age out, in SQLite.

use rusqlite::{Connection, OptionalExtension, params};

use crate::storage::{
    RecordValues, Result, RetentionPolicy, erase_fields_json, parse_erase_fields,
};

pub(super) fn records_aged(
    conn: &Connection,
    (collection, field): (&str, &str),
    before: i64,
    after: &str,
    limit: u32,
) -> Result<Vec<RecordValues>> {
    // A field name is `[a-z][a-z0-9_]*` (the schema refuses others), quoted in the path all
    // the same; the path is a parameter.
    let path = format!("$.\"{field}\"");
    let mut stmt = conn.prepare_cached(
        "SELECT id, fields, updated_seq FROM records
         WHERE collection = ?1 AND id > ?3
           AND json_type(fields, ?2) IN ('integer', 'real') AND json_extract(fields, ?2) < ?4
         ORDER BY id LIMIT ?5",
    )?;
    let rows = stmt.query_map(params![collection, path, after, before, limit], |row| {
        Ok(RecordValues {
            id: row.get(0)?,
            fields_json: row.get(1)?,
            version: row.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn set_policy(conn: &Connection, policy: &RetentionPolicy) -> Result<()> {
    conn.execute(
        "INSERT INTO retention_policies (collection, age_field, older_than_days, erase_fields, set_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (collection) DO UPDATE SET age_field = excluded.age_field,
             older_than_days = excluded.older_than_days, erase_fields = excluded.erase_fields,
             set_at = excluded.set_at",
        params![
            policy.collection,
            policy.age_field,
            policy.older_than_days,
            erase_fields_json(policy),
            policy.set_at
        ],
    )?;
    Ok(())
}

pub(super) fn policies(conn: &Connection) -> Result<Vec<RetentionPolicy>> {
    let mut stmt = conn.prepare_cached(
        "SELECT collection, age_field, older_than_days, erase_fields, set_at
         FROM retention_policies ORDER BY collection",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, u32>(2)?,
            row.get::<_, Option<String>>(3)?,
            row.get::<_, i64>(4)?,
        ))
    })?;
    let mut policies = Vec::new();
    for row in rows {
        let (collection, age_field, older_than_days, erase_fields, set_at) = row?;
        policies.push(RetentionPolicy {
            collection,
            age_field,
            older_than_days,
            erase_fields: parse_erase_fields(erase_fields.as_deref())?,
            set_at,
        });
    }
    Ok(policies)
}

pub(super) fn remove_policy(conn: &Connection, collection: &str) -> Result<bool> {
    let removed = conn
        .query_row(
            "DELETE FROM retention_policies WHERE collection = ?1 RETURNING 1",
            [collection],
            |_| Ok(()),
        )
        .optional()?;
    Ok(removed.is_some())
}
