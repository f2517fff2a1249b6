//! A push applied in one PostgreSQL transaction, under the advisory locks that keep feed
//! positions in commit order: the batch replayed or merged record by record, each with its
//! feed entry and audit line, and the device's actor bound.

use std::collections::HashMap;

use fieldsync_record::protocol::{PushRecord, PushResponse, PushResult};
use postgres::Transaction;

use super::{
    LOCK_ACTOR, LOCK_DEVICE, LOCK_FEED, LOCK_RECORD, PostgresStorage, insert_audit,
    record_lock_key, stored_record, stored_versions, user_of_device,
};
use crate::error::ServerError;
use crate::storage::{
    Batch, Merge, MergedRecord, Result, StoredRecord, StoredVersion, actor_taken_meanwhile,
    audited_name, encode_changes, now_ms, replayed, stored_count, stored_epoch,
};

/// Applies a push in one transaction (see [`Storage::push`]).
pub(super) fn push(
    storage: &PostgresStorage,
    device_id: i64,
    batch: &Batch<'_>,
    merge: &mut dyn Merge,
) -> Result<PushResponse> {
    let records = batch.records;
    let mut conn = storage.conn()?;
    let mut tx = conn.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_DEVICE, &(device_id as i32)],
    )?;
    let replay = tx.query_opt(
        "SELECT response, body_hash FROM push_batches WHERE device_id = $1 AND batch_id = $2",
        &[&device_id, &batch.id],
    )?;
    if let Some(row) = replay {
        return replayed(batch, (row.get(0), row.get(1)));
    }
    let user_id = user_of_device(&mut tx, device_id)?;
    let mut keys: Vec<i32> = records
        .iter()
        .map(|r| record_lock_key(&r.collection, &r.id))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    tx.execute(
        "SELECT count(pg_advisory_xact_lock($1, key)) FROM unnest($2::int4[]) AS key",
        &[&LOCK_RECORD, &keys],
    )?;

    // Merge every record; a record pushed twice in one batch merges into its first merge.
    // Records are written after the loop, so an earlier copy's merge stands for them.
    let versions = stored_versions(&mut tx, records)?;
    let mut merged_so_far: HashMap<(&str, &str), StoredRecord> = HashMap::new();
    let mut accepted: Vec<(&PushRecord, MergedRecord)> = Vec::new();
    let mut refused: Vec<[String; 4]> = Vec::new();
    let mut results = Vec::with_capacity(records.len());
    for record in records {
        let key = (record.collection.as_str(), record.id.as_str());
        let now_stored = if merged_so_far.contains_key(&key) {
            StoredVersion::ThisPush
        } else {
            versions
                .get(&key)
                .map_or(StoredVersion::Absent, |&version| {
                    StoredVersion::Written(version)
                })
        };
        let outcome = match merge.merged_ahead(record, now_stored) {
            Some(outcome) => outcome,
            None => {
                let stored = match merged_so_far.get(&key) {
                    Some(stored) => Some(stored.clone()),
                    None if !versions.contains_key(&key) => None,
                    None => tx
                        .query_opt(
                            "SELECT scope, doc, fields, deleted, lineage, updated_seq, epoch
                             FROM records WHERE collection = $1 AND id = $2",
                            &[&record.collection, &record.id],
                        )?
                        .map(|row| stored_record(&row, 0)),
                };
                merge.merge(record, stored)
            }
        };
        let rejected = match outcome {
            Err(rejection) => {
                refused.push([
                    audited_name(&record.collection),
                    audited_name(&record.id),
                    audited_name(&record.scope),
                    rejection.code.as_str().to_owned(),
                ]);
                Some(rejection)
            }
            Ok(merged) if merged.new_changes.is_empty() => None,
            Ok(merged) => {
                merged_so_far.insert(key, merged.to_stored(&record.scope));
                accepted.push((record, merged));
                None
            }
        };
        results.push(PushResult {
            collection: record.collection.clone(),
            id: record.id.clone(),
            rejected,
        });
    }

    let now = now_ms();
    // Everything that does not need a feed position is written before the feed lock, so
    // that the section all pushes take in turn is short: two statements and the commit.
    let audited: Vec<(&str, &str, &str)> = accepted
        .iter()
        .map(|(r, _)| (r.collection.as_str(), r.id.as_str(), r.scope.as_str()))
        .collect();
    insert_audit(&mut tx, now, user_id, device_id, "push", &audited)?;
    insert_refusals(&mut tx, now, user_id, device_id, &refused)?;
    if let Some(actor) = batch.binds.filter(|_| !accepted.is_empty())
        && bind_in(&mut tx, device_id, actor)?.as_deref() != Some(actor)
    {
        return Err(actor_taken_meanwhile());
    }
    let response = PushResponse { results };
    let stored = rmp_serde::to_vec_named(&response).expect("responses always serialize");
    tx.execute(
        "INSERT INTO push_batches (device_id, batch_id, response, created_at, body_hash)
         VALUES ($1, $2, $3, $4, $5)",
        &[&device_id, &batch.id, &stored, &now, &batch.hash.as_slice()],
    )?;
    tx.execute(
        "UPDATE devices SET last_sync_at = $2, outbox_seq = GREATEST(outbox_seq, $3),
             pending_changes = COALESCE($4, pending_changes),
             pending_reported_at = CASE WHEN $4::BIGINT IS NULL THEN pending_reported_at
                                        ELSE $2 END
         WHERE id = $1",
        &[
            &device_id,
            &now,
            &batch.outbox_seq,
            &batch.pending_changes.map(stored_count),
        ],
    )?;
    if !accepted.is_empty() {
        // Held until commit: positions become visible in the order they are taken.
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_FEED])?;
        write_feed_and_records(&mut tx, device_id, now, &accepted)?;
    }
    tx.commit()?;
    Ok(response)
}

/// Whether actor `$2` is taken for device `$1`: another live device holds it (now or before),
/// or the device itself had it before its current actor.
pub(super) const ACTOR_TAKEN: &str =
    "SELECT EXISTS (SELECT 1 FROM device_actors a JOIN devices d ON d.id = a.device_id
                    WHERE a.actor = $2 AND a.device_id <> $1 AND d.revoked_at IS NULL)
         OR EXISTS (SELECT 1 FROM devices WHERE actor = $2 AND id <> $1 AND revoked_at IS NULL)
         OR EXISTS (SELECT 1 FROM device_actors a JOIN devices d ON d.id = a.device_id
                    WHERE a.actor = $2 AND a.device_id = $1
                      AND d.actor IS DISTINCT FROM $2)";

/// Whether device `$1` pushed as `$2` before its current actor.
pub(super) const ACTOR_RETIRED: &str =
    "SELECT EXISTS (SELECT 1 FROM device_actors a JOIN devices d ON d.id = a.device_id
                    WHERE a.actor = $2 AND a.device_id = $1 AND d.actor IS DISTINCT FROM $2)";

/// Binds `actor` to the device unless it is taken ([`ACTOR_TAKEN`]); returns the device's
/// actor after. Two devices binding the same actor at once update different rows, so no row
/// lock orders them, and each statement's snapshot would miss the other's uncommitted
/// binding: both would pass the check. Under the lock, the second binding's statement starts
/// after the first committed and sees it. Bindings happen once per device and actor, so one
/// lock for all of them costs nothing.
pub(super) fn bind_in(
    tx: &mut Transaction<'_>,
    device_id: i64,
    actor: &str,
) -> Result<Option<String>> {
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_ACTOR])?;
    let taken: bool = tx.query_one(ACTOR_TAKEN, &[&device_id, &actor])?.get(0);
    if !taken {
        tx.execute(
            "INSERT INTO device_actors (actor, device_id) VALUES ($2, $1)
             ON CONFLICT (actor) DO UPDATE SET device_id = excluded.device_id",
            &[&device_id, &actor],
        )?;
        // A new actor starts its outbox positions over (see `device_sync`).
        tx.execute(
            "UPDATE devices SET actor = $2,
                 outbox_seq = CASE WHEN actor IS NOT DISTINCT FROM $2 THEN outbox_seq END
             WHERE id = $1",
            &[&device_id, &actor],
        )?;
    }
    Ok(tx
        .query_one("SELECT actor FROM devices WHERE id = $1", &[&device_id])?
        .get(0))
}

/// Audit lines for refused records (collection, id, scope, code), in one statement.
pub(super) fn insert_refusals(
    tx: &mut Transaction<'_>,
    at: i64,
    user_id: i64,
    device_id: i64,
    refused: &[[String; 4]],
) -> Result<()> {
    if refused.is_empty() {
        return Ok(());
    }
    let column = |n: usize| refused.iter().map(|r| r[n].as_str()).collect::<Vec<_>>();
    tx.execute(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope, code)
         SELECT $1, $2, $3, 'refuse', c, r, s, k
         FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) AS t (c, r, s, k)",
        &[
            &at,
            &user_id,
            &device_id,
            &column(0),
            &column(1),
            &column(2),
            &column(3),
        ],
    )?;
    Ok(())
}

/// Adds the accepted records' feed entries (in push order) and writes each record's latest
/// merge with the position of its last entry: one statement each.
pub(super) fn write_feed_and_records(
    tx: &mut Transaction<'_>,
    device_id: i64,
    now: i64,
    accepted: &[(&PushRecord, MergedRecord)],
) -> Result<()> {
    let collections: Vec<&str> = accepted
        .iter()
        .map(|(r, _)| r.collection.as_str())
        .collect();
    let ids: Vec<&str> = accepted.iter().map(|(r, _)| r.id.as_str()).collect();
    let scopes: Vec<&str> = accepted.iter().map(|(r, _)| r.scope.as_str()).collect();
    let changes: Vec<Vec<u8>> = accepted
        .iter()
        .map(|(_, m)| encode_changes(&m.new_changes))
        .collect();
    let epochs: Vec<i64> = accepted
        .iter()
        .map(|(_, m)| stored_epoch(m.epoch))
        .collect();
    let rows = tx.query(
        "INSERT INTO feed (collection, record_id, scope, device_id, changes, committed_at, epoch)
         SELECT c, r, s, $1, ch, $2, e
         FROM unnest($3::text[], $4::text[], $5::text[], $6::bytea[], $7::bigint[])
             WITH ORDINALITY AS t (c, r, s, ch, e, n)
         ORDER BY n
         RETURNING seq, collection, record_id",
        &[
            &device_id,
            &now,
            &collections,
            &ids,
            &scopes,
            &changes,
            &epochs,
        ],
    )?;
    tx.execute(
        "INSERT INTO record_writers (collection, id, device_id)
         SELECT c, i, $1 FROM unnest($2::text[], $3::text[]) AS u (c, i)
         ON CONFLICT DO NOTHING",
        &[&device_id, &collections, &ids],
    )?;
    // A record pushed twice in one batch takes the position of its later entry; its later
    // merge already holds the earlier one.
    let mut last_seq: HashMap<(String, String), i64> = HashMap::new();
    for row in &rows {
        let seq: i64 = row.get(0);
        let entry = last_seq.entry((row.get(1), row.get(2))).or_insert(seq);
        *entry = (*entry).max(seq);
    }
    let mut latest: HashMap<(&str, &str), &(&PushRecord, MergedRecord)> = HashMap::new();
    for item in accepted {
        latest.insert((item.0.collection.as_str(), item.0.id.as_str()), item);
    }
    let latest: Vec<&(&PushRecord, MergedRecord)> = latest.into_values().collect();
    let seqs = latest
        .iter()
        .map(|(r, _)| {
            last_seq
                .get(&(r.collection.clone(), r.id.clone()))
                .copied()
                .ok_or_else(|| ServerError::Internal("a feed entry was not written".into()))
        })
        .collect::<Result<Vec<i64>>>()?;
    let collections: Vec<&str> = latest.iter().map(|(r, _)| r.collection.as_str()).collect();
    let ids: Vec<&str> = latest.iter().map(|(r, _)| r.id.as_str()).collect();
    let scopes: Vec<&str> = latest.iter().map(|(r, _)| r.scope.as_str()).collect();
    let docs: Vec<&[u8]> = latest.iter().map(|(_, m)| m.doc.as_slice()).collect();
    let values: Vec<&str> = latest.iter().map(|(_, m)| m.fields_json.as_str()).collect();
    let deleted: Vec<bool> = latest.iter().map(|(_, m)| m.deleted).collect();
    let lineages: Vec<Vec<u8>> = latest.iter().map(|(_, m)| m.lineage.encode()).collect();
    tx.execute(
        "INSERT INTO records (collection, id, scope, doc, fields, deleted, updated_seq, lineage,
                              created_seq)
         SELECT c, i, s, d, f, del, seq, lin, seq
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                     $6::boolean[], $7::bigint[], $8::bytea[]) AS u (c, i, s, d, f, del, seq, lin)
         ON CONFLICT (collection, id) DO UPDATE SET doc = excluded.doc,
             fields = excluded.fields, deleted = excluded.deleted,
             updated_seq = excluded.updated_seq, lineage = excluded.lineage",
        &[
            &collections,
            &ids,
            &scopes,
            &docs,
            &values,
            &deleted,
            &seqs,
            &lineages,
        ],
    )?;
    Ok(())
}
