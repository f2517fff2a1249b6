//! Retention policies and the records they age out, in PostgreSQL.

use postgres::Client;

use crate::storage::{
    RecordValues, Result, RetentionPolicy, erase_fields_json, parse_erase_fields,
};

pub(super) fn records_aged(
    conn: &mut Client,
    (collection, field): (&str, &str),
    before: i64,
    after: &str,
    limit: u32,
) -> Result<Vec<RecordValues>> {
    // `COLLATE "C"`: byte order, as SQLite compares, whatever the database's locale.
    let rows = conn.query(
        "SELECT id, fields, updated_seq FROM records
         WHERE collection = $1 AND id COLLATE \"C\" > $3
           AND jsonb_typeof(fields::jsonb -> $2) = 'number'
           AND (fields::jsonb ->> $2)::numeric < $4::bigint
         ORDER BY id COLLATE \"C\" LIMIT $5",
        &[&collection, &field, &after, &before, &i64::from(limit)],
    )?;
    Ok(rows
        .iter()
        .map(|row| RecordValues {
            id: row.get(0),
            fields_json: row.get(1),
            version: row.get(2),
        })
        .collect())
}

pub(super) fn set_policy(conn: &mut Client, policy: &RetentionPolicy) -> Result<()> {
    conn.execute(
        "INSERT INTO retention_policies (collection, age_field, older_than_days, erase_fields, set_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (collection) DO UPDATE SET age_field = excluded.age_field,
             older_than_days = excluded.older_than_days, erase_fields = excluded.erase_fields,
             set_at = excluded.set_at",
        &[
            &policy.collection,
            &policy.age_field,
            &i64::from(policy.older_than_days),
            &erase_fields_json(policy),
            &policy.set_at,
        ],
    )?;
    Ok(())
}

pub(super) fn policies(conn: &mut Client) -> Result<Vec<RetentionPolicy>> {
    let rows = conn.query(
        "SELECT collection, age_field, older_than_days, erase_fields, set_at
         FROM retention_policies ORDER BY collection COLLATE \"C\"",
        &[],
    )?;
    rows.iter()
        .map(|row| {
            Ok(RetentionPolicy {
                collection: row.get(0),
                age_field: row.get(1),
                older_than_days: u32::try_from(row.get::<_, i64>(2)).unwrap_or(u32::MAX),
                erase_fields: parse_erase_fields(row.get::<_, Option<&str>>(3))?,
                set_at: row.get(4),
            })
        })
        .collect()
}

pub(super) fn remove_policy(conn: &mut Client, collection: &str) -> Result<bool> {
    Ok(conn.execute(
        "DELETE FROM retention_policies WHERE collection = $1",
        &[&collection],
    )? > 0)
}
