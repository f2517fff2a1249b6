//! A push's statements on PostgreSQL, for the push applied as [`push_pipeline`] does it, under
//! the advisory locks that keep it apart from other instances' pushes (see the module
//! [`postgres`](super)): the device's (taken at the start), its records' (before their
//! versions are read), the actor lock (around a binding) and last the feed lock (around the
//! feed entries, until the commit).

use std::collections::HashMap;

use fieldsync_record::protocol::PushRecord;
use postgres::Transaction;

use super::{
    Connection, LOCK_ACTOR, LOCK_DEVICE, LOCK_FEED, LOCK_RECORD, insert_audit, record_lock_key,
    stored_record, stored_versions, user_of_device,
};
use crate::error::ServerError;
use crate::storage::push_pipeline::{
    Accepted, AuditLine, PushTx, PushedBy, RecordKey, StoredAnswer,
};
use crate::storage::{
    Batch, Result, SnapshotMark, StoredRecord, encode_changes, stored_count, stored_epoch,
};

/// A push's transaction on PostgreSQL.
pub(super) struct PostgresPush<'c> {
    tx: Transaction<'c>,
}

impl PostgresPush<'_> {
    /// Begins the push's transaction and waits for the device's earlier pushes to end: a
    /// batch replayed through another instance while the first attempt is in flight then
    /// finds the stored answer.
    pub(super) fn begin(conn: &mut Connection, device_id: i64) -> Result<PostgresPush<'_>> {
        let mut tx = conn.transaction()?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&LOCK_DEVICE, &(device_id as i32)],
        )?;
        Ok(PostgresPush { tx })
    }
}

impl PushTx for PostgresPush<'_> {
    fn replayed_batch(&mut self, device_id: i64, batch_id: &str) -> Result<Option<StoredAnswer>> {
        let row = self.tx.query_opt(
            "SELECT response, body_hash FROM push_batches WHERE device_id = $1 AND batch_id = $2",
            &[&device_id, &batch_id],
        )?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    fn user_of_device(&mut self, device_id: i64) -> Result<i64> {
        user_of_device(&mut self.tx, device_id)
    }

    /// Each record's lock, in key order so that two pushes never wait on each other in a
    /// cycle; held until the transaction ends.
    fn lock_records(&mut self, records: &[PushRecord]) -> Result<()> {
        let mut keys: Vec<i32> = records
            .iter()
            .map(|r| record_lock_key(&r.collection, &r.id))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        self.tx.execute(
            "SELECT count(pg_advisory_xact_lock($1, key)) FROM unnest($2::int4[]) AS key",
            &[&LOCK_RECORD, &keys],
        )?;
        Ok(())
    }

    /// Never: other instances write too, and their writes leave no mark to compare.
    fn snapshot_unchanged(&mut self, _mark: SnapshotMark) -> Result<bool> {
        Ok(false)
    }

    fn stored_versions<'r>(
        &mut self,
        records: &'r [PushRecord],
    ) -> Result<HashMap<RecordKey<'r>, i64>> {
        stored_versions(&mut self.tx, records)
    }

    fn stored_record(&mut self, record: &PushRecord) -> Result<Option<StoredRecord>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT scope, doc, fields, deleted, lineage, updated_seq, epoch
                 FROM records WHERE collection = $1 AND id = $2",
                &[&record.collection, &record.id],
            )?
            .map(|row| stored_record(&row, 0)))
    }

    /// In two statements: the lines of records stored, then those of records refused.
    fn audit(&mut self, by: PushedBy, lines: &[AuditLine<'_>]) -> Result<()> {
        let stored: Vec<(&str, &str, &str)> = lines
            .iter()
            .filter(|line| line.code.is_none())
            .map(|line| (&*line.collection, &*line.record_id, &*line.scope))
            .collect();
        insert_audit(
            &mut self.tx,
            by.at,
            by.user_id,
            by.device_id,
            "push",
            &stored,
        )?;
        let refused: Vec<&AuditLine<'_>> =
            lines.iter().filter(|line| line.code.is_some()).collect();
        insert_refusals(&mut self.tx, by, &refused)
    }

    fn bind_actor(&mut self, device_id: i64, actor: &str) -> Result<Option<String>> {
        bind_in(&mut self.tx, device_id, actor)
    }

    fn store_answer(
        &mut self,
        device_id: i64,
        batch: &Batch<'_>,
        answer: &[u8],
        now: i64,
    ) -> Result<()> {
        self.tx.execute(
            "INSERT INTO push_batches (device_id, batch_id, response, created_at, body_hash)
             VALUES ($1, $2, $3, $4, $5)",
            &[&device_id, &batch.id, &answer, &now, &batch.hash.as_slice()],
        )?;
        Ok(())
    }

    fn update_device(&mut self, device_id: i64, batch: &Batch<'_>, now: i64) -> Result<()> {
        self.tx.execute(
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
        Ok(())
    }

    /// Under the feed lock, held until the commit: feed positions become visible in the order
    /// they are taken. Everything else was written before it, so that the section all pushes
    /// take in turn is short: two statements and the commit.
    fn write_accepted(&mut self, by: PushedBy, accepted: &[Accepted<'_>]) -> Result<()> {
        self.tx
            .execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_FEED])?;
        write_feed_and_records(&mut self.tx, by.device_id, by.at, accepted)
    }

    fn commit(self) -> Result<()> {
        Ok(self.tx.commit()?)
    }
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

/// Audit lines for refused records, in one statement.
fn insert_refusals(
    tx: &mut Transaction<'_>,
    by: PushedBy,
    refused: &[&AuditLine<'_>],
) -> Result<()> {
    if refused.is_empty() {
        return Ok(());
    }
    let collections: Vec<&str> = refused.iter().map(|line| &*line.collection).collect();
    let ids: Vec<&str> = refused.iter().map(|line| &*line.record_id).collect();
    let scopes: Vec<&str> = refused.iter().map(|line| &*line.scope).collect();
    let codes: Vec<&str> = refused
        .iter()
        .map(|line| line.code.unwrap_or_default())
        .collect();
    tx.execute(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope, code)
         SELECT $1, $2, $3, 'refuse', c, r, s, k
         FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) AS t (c, r, s, k)",
        &[
            &by.at,
            &by.user_id,
            &by.device_id,
            &collections,
            &ids,
            &scopes,
            &codes,
        ],
    )?;
    Ok(())
}

/// Adds the accepted records' feed entries (in push order) and writes each record's latest
/// merge with the position of its last entry: one statement each.
fn write_feed_and_records(
    tx: &mut Transaction<'_>,
    device_id: i64,
    now: i64,
    accepted: &[Accepted<'_>],
) -> Result<()> {
    let collections: Vec<&str> = accepted
        .iter()
        .map(|a| a.record.collection.as_str())
        .collect();
    let ids: Vec<&str> = accepted.iter().map(|a| a.record.id.as_str()).collect();
    let scopes: Vec<&str> = accepted.iter().map(|a| a.record.scope.as_str()).collect();
    let changes: Vec<Vec<u8>> = accepted
        .iter()
        .map(|a| encode_changes(&a.merged.new_changes))
        .collect();
    let epochs: Vec<i64> = accepted
        .iter()
        .map(|a| stored_epoch(a.merged.epoch))
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
    let mut latest: HashMap<RecordKey<'_>, &Accepted<'_>> = HashMap::new();
    for item in accepted {
        latest.insert((&item.record.collection, &item.record.id), item);
    }
    let latest: Vec<(&Accepted<'_>, i64)> = latest
        .into_values()
        .map(|a| {
            let key = (a.record.collection.clone(), a.record.id.clone());
            let seq = last_seq
                .get(&key)
                .copied()
                .ok_or_else(|| ServerError::Internal("a feed entry was not written".into()))?;
            Ok((a, seq))
        })
        .collect::<Result<_>>()?;
    write_records(tx, &latest)
}

/// Writes each record's merge at its feed position, in one statement.
fn write_records(tx: &mut Transaction<'_>, latest: &[(&Accepted<'_>, i64)]) -> Result<()> {
    let collections: Vec<&str> = latest
        .iter()
        .map(|(a, _)| a.record.collection.as_str())
        .collect();
    let ids: Vec<&str> = latest.iter().map(|(a, _)| a.record.id.as_str()).collect();
    let scopes: Vec<&str> = latest
        .iter()
        .map(|(a, _)| a.record.scope.as_str())
        .collect();
    let docs: Vec<&[u8]> = latest
        .iter()
        .map(|(a, _)| a.merged.doc.as_slice())
        .collect();
    let values: Vec<&str> = latest
        .iter()
        .map(|(a, _)| a.merged.fields_json.as_str())
        .collect();
    let deleted: Vec<bool> = latest.iter().map(|(a, _)| a.merged.deleted).collect();
    let seqs: Vec<i64> = latest.iter().map(|(_, seq)| *seq).collect();
    let lineages: Vec<Vec<u8>> = latest
        .iter()
        .map(|(a, _)| a.merged.lineage.encode())
        .collect();
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
