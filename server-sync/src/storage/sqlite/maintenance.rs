//! What the server does to records outside a push, in SQL: reading every record (for
//! `fieldsync-server check`), rewriting one (a repair) and erasing one.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::stored_record;
use crate::storage::{
    ListedRecord, MergedRecord, NewEpoch, RecordValues, Result, decode_changes, encode_changes,
    erasure_detail, now_ms, stored_epoch,
};

pub(super) fn records_after(
    conn: &Connection,
    after: Option<(&str, &str)>,
    limit: u32,
) -> Result<Vec<ListedRecord>> {
    let (collection, id) = after.unwrap_or(("", ""));
    let mut stmt = conn.prepare_cached(
        "SELECT scope, doc, fields, deleted, lineage, updated_seq, epoch, collection, id FROM records
         WHERE (collection, id) > (?1, ?2) ORDER BY collection, id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![collection, id, limit], |row| {
        Ok(ListedRecord {
            stored: stored_record(row)?,
            collection: row.get(7)?,
            id: row.get(8)?,
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
        "INSERT INTO feed (collection, record_id, scope, device_id, changes, committed_at, epoch)
         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6)",
        params![
            collection,
            id,
            scope,
            encode_changes(&record.new_changes),
            now,
            stored_epoch(record.epoch)
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

/// Writes `epoch` in place of everything record `key` held, if it is still at `version`:
/// its feed entries go, one entry holding the epoch's document takes their place, and an
/// audit line says what was erased, by whom and why. Deleted bytes are zeroed as they go
/// (`secure_delete`, set at open); the WAL is emptied by [`scrub`] after the commit.
pub(super) fn erase_record(
    conn: &mut Connection,
    (collection, id): (&str, &str),
    version: i64,
    epoch: &NewEpoch,
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
        "DELETE FROM feed WHERE collection = ?1 AND record_id = ?2",
        params![collection, id],
    )?;
    // The history that named them is gone.
    tx.execute(
        "DELETE FROM record_writers WHERE collection = ?1 AND id = ?2",
        params![collection, id],
    )?;
    tx.execute(
        "INSERT INTO feed (collection, record_id, scope, device_id, changes, committed_at, epoch, erased)
         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7)",
        params![
            collection,
            id,
            scope,
            encode_changes(std::slice::from_ref(&epoch.doc)),
            now,
            stored_epoch(epoch.epoch),
            epoch.erased
        ],
    )?;
    let seq = tx.last_insert_rowid();
    tx.execute(
        "UPDATE records SET doc = ?3, fields = ?4, deleted = ?5, updated_seq = ?6, lineage = ?7,
             epoch = ?8
         WHERE collection = ?1 AND id = ?2",
        params![
            collection,
            id,
            epoch.doc,
            epoch.fields_json,
            epoch.deleted,
            seq,
            epoch.lineage.encode(),
            stored_epoch(epoch.epoch)
        ],
    )?;
    tx.execute(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope, detail)
         VALUES (?1, ?2, 0, 'erase', ?3, ?4, ?5, ?6)",
        params![now, epoch.by, collection, id, scope, erasure_detail(epoch)],
    )?;
    tx.commit()?;
    Ok(true)
}

/// Copies every WAL frame into the database file and empties the WAL, so that no page image
/// from before an erasure stays in it. Readers holding an older snapshot can keep frames
/// alive: it waits for them (busy timeout) and reports whether the WAL was emptied.
pub(super) fn scrub(conn: &Connection) -> Result<bool> {
    let (busy, _, _): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    Ok(busy == 0)
}
