//! What the server does to records outside a push, in SQL: reading every record (for
//! `fieldsync-server check`), rewriting one (a repair) and erasing one.

use postgres::Client;

use super::{LOCK_FEED, LOCK_RECORD, record_lock_key, stored_record};
use crate::storage::{
    ListedRecord, MergedRecord, NewEpoch, RecordValues, Result, decode_changes, encode_changes,
    erasure_detail, now_ms, stored_epoch,
};

pub(super) fn records_after(
    conn: &mut Client,
    after: Option<(&str, &str)>,
    limit: u32,
) -> Result<Vec<ListedRecord>> {
    let (collection, id) = after.unwrap_or(("", ""));
    // `COLLATE "C"`: byte order, as SQLite compares, whatever the database's locale.
    let rows = conn.query(
        "SELECT collection, id, scope, doc, fields, deleted, lineage, updated_seq, epoch
         FROM records
         WHERE (collection COLLATE \"C\", id COLLATE \"C\") > ($1, $2)
         ORDER BY collection COLLATE \"C\", id COLLATE \"C\" LIMIT $3",
        &[&collection, &id, &i64::from(limit)],
    )?;
    Ok(rows
        .iter()
        .map(|row| ListedRecord {
            collection: row.get(0),
            id: row.get(1),
            stored: stored_record(row, 2),
        })
        .collect())
}

pub(super) fn records_in_scope(
    conn: &mut Client,
    (collection, scope): (&str, &str),
    after: &str,
    limit: u32,
) -> Result<Vec<RecordValues>> {
    // `COLLATE "C"`: byte order, as SQLite compares, whatever the database's locale.
    let rows = conn.query(
        "SELECT id, fields, updated_seq FROM records
         WHERE collection = $1 AND scope = $2 AND id COLLATE \"C\" > $3 AND NOT deleted
         ORDER BY id COLLATE \"C\" LIMIT $4",
        &[&collection, &scope, &after, &i64::from(limit)],
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

pub(super) fn feed_changes_of(
    conn: &mut Client,
    collection: &str,
    id: &str,
) -> Result<Vec<Vec<u8>>> {
    let rows = conn.query(
        "SELECT changes FROM feed WHERE collection = $1 AND record_id = $2 ORDER BY seq",
        &[&collection, &id],
    )?;
    let mut changes = Vec::new();
    for row in &rows {
        changes.extend(decode_changes(row.get(0))?);
    }
    Ok(changes)
}

pub(super) fn rewrite_record(
    conn: &mut Client,
    (collection, id): (&str, &str),
    version: i64,
    record: &MergedRecord,
    action: &str,
) -> Result<bool> {
    let mut tx = conn.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_RECORD, &record_lock_key(collection, id)],
    )?;
    let scope: Option<String> = tx
        .query_opt(
            "SELECT scope FROM records WHERE collection = $1 AND id = $2 AND updated_seq = $3",
            &[&collection, &id, &version],
        )?
        .map(|row| row.get(0));
    let Some(scope) = scope else {
        return Ok(false);
    };
    let now = now_ms();
    tx.execute(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope)
         VALUES ($1, 0, 0, $2, $3, $4, $5)",
        &[&now, &action, &collection, &id, &scope],
    )?;
    // Held until commit: positions become visible in the order they are taken.
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_FEED])?;
    let seq: i64 = tx
        .query_one(
            "INSERT INTO feed (collection, record_id, scope, device_id, changes, committed_at, epoch)
             VALUES ($1, $2, $3, 0, $4, $5, $6) RETURNING seq",
            &[
                &collection,
                &id,
                &scope,
                &encode_changes(&record.new_changes),
                &now,
                &stored_epoch(record.epoch),
            ],
        )?
        .get(0);
    tx.execute(
        "UPDATE records SET doc = $3, fields = $4, deleted = $5, updated_seq = $6, lineage = $7
         WHERE collection = $1 AND id = $2",
        &[
            &collection,
            &id,
            &record.doc,
            &record.fields_json,
            &record.deleted,
            &seq,
            &record.lineage.encode(),
        ],
    )?;
    tx.commit()?;
    Ok(true)
}

/// Writes `epoch` in place of everything record `key` held, if it is still at `version` (see
/// [`Storage::erase_record`](crate::storage::Storage::erase_record)).
pub(super) fn erase_record(
    conn: &mut Client,
    (collection, id): (&str, &str),
    version: i64,
    epoch: &NewEpoch,
) -> Result<bool> {
    let mut tx = conn.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_RECORD, &record_lock_key(collection, id)],
    )?;
    let scope: Option<String> = tx
        .query_opt(
            "SELECT scope FROM records WHERE collection = $1 AND id = $2 AND updated_seq = $3",
            &[&collection, &id, &version],
        )?
        .map(|row| row.get(0));
    let Some(scope) = scope else {
        return Ok(false);
    };
    let now = now_ms();
    tx.execute(
        "DELETE FROM feed WHERE collection = $1 AND record_id = $2",
        &[&collection, &id],
    )?;
    // The history that named them is gone.
    tx.execute(
        "DELETE FROM record_writers WHERE collection = $1 AND id = $2",
        &[&collection, &id],
    )?;
    tx.execute(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope, detail)
         VALUES ($1, $2, 0, 'erase', $3, $4, $5, $6)",
        &[
            &now,
            &epoch.by,
            &collection,
            &id,
            &scope,
            &erasure_detail(epoch),
        ],
    )?;
    // Held until commit: positions become visible in the order they are taken.
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_FEED])?;
    let seq: i64 = tx
        .query_one(
            "INSERT INTO feed
                 (collection, record_id, scope, device_id, changes, committed_at, epoch, erased)
             VALUES ($1, $2, $3, 0, $4, $5, $6, $7) RETURNING seq",
            &[
                &collection,
                &id,
                &scope,
                &encode_changes(std::slice::from_ref(&epoch.doc)),
                &now,
                &stored_epoch(epoch.epoch),
                &epoch.erased,
            ],
        )?
        .get(0);
    tx.execute(
        "UPDATE records SET doc = $3, fields = $4, deleted = $5, updated_seq = $6, lineage = $7,
             epoch = $8
         WHERE collection = $1 AND id = $2",
        &[
            &collection,
            &id,
            &epoch.doc,
            &epoch.fields_json,
            &epoch.deleted,
            &seq,
            &epoch.lineage.encode(),
            &stored_epoch(epoch.epoch),
        ],
    )?;
    tx.commit()?;
    Ok(true)
}
