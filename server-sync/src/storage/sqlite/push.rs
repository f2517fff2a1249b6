//! A push applied in one SQLite transaction: the batch replayed or merged record by record,
//! each with its feed entry and audit line, and the device's actor bound.

use std::collections::HashSet;

use fieldsync_record::protocol::{PushResponse, PushResult};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{SELECT_STORED_RECORD, snapshot_mark, stored_record};
use crate::storage::{
    Batch, Merge, Result, StoredVersion, actor_taken_meanwhile, audited_name, encode_changes,
    now_ms, replayed, stored_count, stored_epoch,
};

pub(super) fn push_in(
    conn: &mut Connection,
    device_id: i64,
    batch: &Batch<'_>,
    merge: &mut dyn Merge,
) -> Result<PushResponse> {
    let records = batch.records;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Nothing changed since the merges' snapshot was read: its states are the stored ones.
    let unchanged = match merge.snapshot_mark() {
        Some(mark) => snapshot_mark(&tx)? == mark,
        None => false,
    };
    let replay = tx
        .query_row(
            "SELECT response, body_hash FROM push_batches WHERE device_id = ?1 AND batch_id = ?2",
            params![device_id, batch.id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    if let Some(stored) = replay {
        return replayed(batch, stored);
    }
    let user_id: i64 = tx.query_row(
        "SELECT user_id FROM devices WHERE id = ?1",
        [device_id],
        |row| row.get(0),
    )?;
    let now = now_ms();
    let mut results = Vec::with_capacity(records.len());
    let mut written: HashSet<(&str, &str)> = HashSet::new();
    for record in records {
        let key = (record.collection.as_str(), record.id.as_str());
        let now_stored = if written.contains(&key) {
            StoredVersion::ThisPush
        } else if unchanged {
            StoredVersion::Current
        } else {
            tx.prepare_cached("SELECT updated_seq FROM records WHERE collection = ?1 AND id = ?2")?
                .query_row(params![record.collection, record.id], |row| row.get(0))
                .optional()?
                .map_or(StoredVersion::Absent, StoredVersion::Written)
        };
        let outcome = match merge.merged_ahead(record, now_stored) {
            Some(outcome) => outcome,
            None => {
                let stored = tx
                    .prepare_cached(SELECT_STORED_RECORD)?
                    .query_row(params![record.collection, record.id], stored_record)
                    .optional()?;
                merge.merge(record, stored)
            }
        };
        let rejected = match outcome {
            Err(rejection) => {
                tx.prepare_cached(
                        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope, code)
                         VALUES (?1, ?2, ?3, 'refuse', ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        now,
                        user_id,
                        device_id,
                        audited_name(&record.collection),
                        audited_name(&record.id),
                        audited_name(&record.scope),
                        rejection.code.as_str()
                    ])?;
                Some(rejection)
            }
            Ok(merged) if merged.new_changes.is_empty() => None,
            Ok(merged) => {
                written.insert(key);
                tx.prepare_cached(
                        "INSERT INTO feed (collection, record_id, scope, device_id, changes, committed_at, epoch)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        record.collection,
                        record.id,
                        record.scope,
                        device_id,
                        encode_changes(&merged.new_changes),
                        now,
                        stored_epoch(merged.epoch)
                    ])?;
                let seq = tx.last_insert_rowid();
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO record_writers (collection, id, device_id)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![record.collection, record.id, device_id])?;
                tx.prepare_cached(
                    "INSERT INTO records (collection, id, scope, doc, fields, deleted, updated_seq, lineage, created_seq)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7)
                         ON CONFLICT (collection, id) DO UPDATE SET doc = excluded.doc,
                             fields = excluded.fields, deleted = excluded.deleted,
                             updated_seq = excluded.updated_seq, lineage = excluded.lineage",
                )?
                .execute(params![
                    record.collection,
                    record.id,
                    record.scope,
                    merged.doc,
                    merged.fields_json,
                    merged.deleted,
                    seq,
                    merged.lineage.encode()
                ])?;
                tx.prepare_cached(
                        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope)
                         VALUES (?1, ?2, ?3, 'push', ?4, ?5, ?6)",
                    )?
                    .execute(params![now, user_id, device_id, record.collection, record.id, record.scope])?;
                None
            }
        };
        results.push(PushResult {
            collection: record.collection.clone(),
            id: record.id.clone(),
            rejected,
        });
    }
    if let Some(actor) = batch.binds.filter(|_| !written.is_empty())
        && bind_in(&tx, device_id, actor)?.as_deref() != Some(actor)
    {
        return Err(actor_taken_meanwhile());
    }
    let response = PushResponse { results };
    let stored = rmp_serde::to_vec_named(&response).expect("responses always serialize");
    tx.execute(
        "INSERT INTO push_batches (device_id, batch_id, response, created_at, body_hash)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        params![device_id, batch.id, stored, now, batch.hash.as_slice()],
    )?;
    tx.execute(
        "UPDATE devices SET last_sync_at = ?2,
             outbox_seq = CASE WHEN ?3 IS NULL THEN outbox_seq
                               ELSE max(coalesce(outbox_seq, ?3), ?3) END,
             pending_changes = coalesce(?4, pending_changes),
             pending_reported_at = CASE WHEN ?4 IS NULL THEN pending_reported_at ELSE ?2 END
         WHERE id = ?1",
        params![
            device_id,
            now,
            batch.outbox_seq,
            batch.pending_changes.map(stored_count)
        ],
    )?;
    tx.commit()?;
    Ok(response)
}

/// Whether device `?1` may not take actor `?2`: another device that is not revoked has pushed
/// as it, now or before, or the device itself did before its current actor.
/// Binds `actor` to the device unless it is taken ([`ACTOR_TAKEN`]); returns the device's
/// actor after. Under the caller's write transaction.
pub(super) fn bind_in(tx: &Connection, device_id: i64, actor: &str) -> Result<Option<String>> {
    let taken: bool = tx
        .prepare_cached(ACTOR_TAKEN)?
        .query_row(params![device_id, actor], |row| row.get(0))?;
    if !taken {
        tx.execute(
            "INSERT INTO device_actors (actor, device_id) VALUES (?2, ?1)
             ON CONFLICT (actor) DO UPDATE SET device_id = excluded.device_id",
            params![device_id, actor],
        )?;
        // A new actor starts its outbox positions over (see `device_sync`).
        tx.execute(
            "UPDATE devices SET actor = ?2,
                 outbox_seq = CASE WHEN actor IS ?2 THEN outbox_seq END
             WHERE id = ?1",
            params![device_id, actor],
        )?;
    }
    Ok(tx.query_row(
        "SELECT actor FROM devices WHERE id = ?1",
        [device_id],
        |row| row.get(0),
    )?)
}

pub(super) const ACTOR_TAKEN: &str =
    "SELECT EXISTS (SELECT 1 FROM device_actors a JOIN devices d ON d.id = a.device_id
                    WHERE a.actor = ?2 AND a.device_id <> ?1 AND d.revoked_at IS NULL)
         OR EXISTS (SELECT 1 FROM devices WHERE actor = ?2 AND id <> ?1 AND revoked_at IS NULL)
         OR EXISTS (SELECT 1 FROM device_actors a JOIN devices d ON d.id = a.device_id
                    WHERE a.actor = ?2 AND a.device_id = ?1 AND d.actor IS NOT ?2)";

/// Whether device `?1` pushed as `?2` before its current actor.
pub(super) const ACTOR_RETIRED: &str =
    "SELECT EXISTS (SELECT 1 FROM device_actors a JOIN devices d ON d.id = a.device_id
                    WHERE a.actor = ?2 AND a.device_id = ?1 AND d.actor IS NOT ?2)";
