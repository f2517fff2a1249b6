//! What the server does to records outside a push, in SQL: reading every record (for
//! `fieldsync-server check`) and rewriting one (a repair).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::stored_record;
use crate::storage::{
    ListedRecord, MergedRecord, RecordValues, Result, decode_changes, encode_changes, now_ms,
};

pub(super) fn records_after(
    conn: &Connection,
    after: Option<(&str, &str)>,
    limit: u32,
) -> Result<Vec<ListedRecord>> {
    let (collection, id) = after.unwrap_or(("", ""));
    let mut stmt = conn.prepare_cached(
        "SELECT scope, doc, fields, deleted, lineage, updated_seq, collection, id FROM records
         WHERE (collection, id) > (?1, ?2) ORDER BY collection, id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![collection, id, limit], |row| {
        Ok(ListedRecord {
            stored: stored_record(row)?,
            collection: row.get(6)?,
            id: row.get(7)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn records_in_scope(
    conn: &Connection,
    (collection, scope): (&str, &str),
    after: &str,
    limit: u32,
) -> Result<Vec<RecordValues>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, fields, updated_seq FROM records
         WHERE collection = ?1 AND scope = ?2 AND id > ?3 AND NOT deleted
         ORDER BY id LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![collection, scope, after, limit], |row| {
        Ok(RecordValues {
            id: row.get(0)?,
            fields_json: row.get(1)?,
            version: row.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn feed_changes_of(
    conn: &Connection,
    collection: &str,
    id: &str,
) -> Result<Vec<Vec<u8>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT changes FROM feed WHERE collection = ?1 AND record_id = ?2 ORDER BY seq",
    )?;
    let mut changes = Vec::new();
    for entry in stmt.query_map([collection, id], |row| row.get::<_, Vec<u8>>(0))? {
        changes.extend(decode_changes(&entry?)?);
    }
    Ok(changes)
}

pub(super) fn rewrite_record(
    conn: &mut Connection,
    (collection, id): (&str, &str),
    version: i64,
    record: &MergedRecord,
    action: &str,
) -> Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let scope: Option<String> = tx
        .query_row(
            "SELECT scope FROM records WHERE collection = ?1 AND id = ?2 AND updated_seq = ?3",
            params![collection, id, version],
            |row| row.get(0),
        )
        .optional()?;
    let Some(scope) = scope else {
        return Ok(false);
    };
    let now = now_ms();
    tx.execute(
        "INSERT INTO feed (collection, record_id, scope, device_id, changes, committed_at)
         VALUES (?1, ?2, ?3, 0, ?4, ?5)",
        params![
            collection,
            id,
            scope,
            encode_changes(&record.new_changes),
            now
        ],
    )?;
    let seq = tx.last_insert_rowid();
    tx.execute(
        "UPDATE records SET doc = ?3, fields = ?4, deleted = ?5, updated_seq = ?6, lineage = ?7
         WHERE collection = ?1 AND id = ?2",
        params![
            collection,
            id,
            record.doc,
            record.fields_json,
            record.deleted,
            seq,
            record.lineage.encode()
        ],
    )?;
    tx.execute(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope)
         VALUES (?1, 0, 0, ?2, ?3, ?4, ?5)",
        params![now, action, collection, id, scope],
    )?;
    tx.commit()?;
    Ok(true)
}
