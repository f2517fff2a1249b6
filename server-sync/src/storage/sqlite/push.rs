//! A push's statements on SQLite, for the push applied as [`push_pipeline`] does it: one
//! transaction holding the database's write lock throughout, so that no other write comes
//! between the versions read and the commit, and records need no locks of their own.

use std::collections::HashMap;

use fieldsync_record::protocol::PushRecord;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{SELECT_STORED_RECORD, snapshot_mark, stored_record};
use crate::storage::push_pipeline::{
    Accepted, AuditLine, PushTx, PushedBy, RecordKey, StoredAnswer,
};
use crate::storage::{
    Batch, Result, SnapshotMark, StoredRecord, encode_changes, stored_count, stored_epoch,
};

/// A push's transaction on SQLite.
pub(super) struct SqlitePush<'c> {
    tx: Transaction<'c>,
}

impl SqlitePush<'_> {
    /// Begins the push's transaction, taking the write lock at once.
    pub(super) fn begin(conn: &mut Connection) -> Result<SqlitePush<'_>> {
        Ok(SqlitePush {
            tx: conn.transaction_with_behavior(TransactionBehavior::Immediate)?,
        })
    }
}

impl PushTx for SqlitePush<'_> {
    fn replayed_batch(&mut self, device_id: i64, batch_id: &str) -> Result<Option<StoredAnswer>> {
        Ok(self
            .tx
            .query_row(
                "SELECT response, body_hash FROM push_batches
                 WHERE device_id = ?1 AND batch_id = ?2",
                params![device_id, batch_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    fn user_of_device(&mut self, device_id: i64) -> Result<i64> {
        Ok(self.tx.query_row(
            "SELECT user_id FROM devices WHERE id = ?1",
            [device_id],
            |row| row.get(0),
        )?)
    }

    /// Nothing to lock: the transaction holds the only write lock.
    fn lock_records(&mut self, _records: &[PushRecord]) -> Result<()> {
        Ok(())
    }

    fn snapshot_unchanged(&mut self, mark: SnapshotMark) -> Result<bool> {
        Ok(snapshot_mark(&self.tx)? == mark)
    }

    fn stored_versions<'r>(
        &mut self,
        records: &'r [PushRecord],
    ) -> Result<HashMap<RecordKey<'r>, i64>> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT updated_seq FROM records WHERE collection = ?1 AND id = ?2")?;
        let mut versions = HashMap::with_capacity(records.len());
        for record in records {
            let key = (record.collection.as_str(), record.id.as_str());
            if versions.contains_key(&key) {
                continue;
            }
            let version: Option<i64> = stmt
                .query_row(params![record.collection, record.id], |row| row.get(0))
                .optional()?;
            if let Some(version) = version {
                versions.insert(key, version);
            }
        }
        Ok(versions)
    }

    fn stored_record(&mut self, record: &PushRecord) -> Result<Option<StoredRecord>> {
        Ok(self
            .tx
            .prepare_cached(SELECT_STORED_RECORD)?
            .query_row(params![record.collection, record.id], stored_record)
            .optional()?)
    }

    fn audit(&mut self, by: PushedBy, lines: &[AuditLine<'_>]) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope, code)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for line in lines {
            stmt.execute(params![
                by.at,
                by.user_id,
                by.device_id,
                line.action(),
                line.collection,
                line.record_id,
                line.scope,
                line.code
            ])?;
        }
        Ok(())
    }

    fn bind_actor(&mut self, device_id: i64, actor: &str) -> Result<Option<String>> {
        bind_in(&self.tx, device_id, actor)
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
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![device_id, batch.id, answer, now, batch.hash.as_slice()],
        )?;
        Ok(())
    }

    fn update_device(&mut self, device_id: i64, batch: &Batch<'_>, now: i64) -> Result<()> {
        self.tx.execute(
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
        Ok(())
    }

    /// Record by record: each feed entry's position is the row id it was given, which the
    /// record then takes (a record pushed twice is written twice, the later merge last).
    fn write_accepted(&mut self, by: PushedBy, accepted: &[Accepted<'_>]) -> Result<()> {
        let mut feed = self.tx.prepare_cached(
            "INSERT INTO feed (collection, record_id, scope, device_id, changes, committed_at, epoch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut writers = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO record_writers (collection, id, device_id) VALUES (?1, ?2, ?3)",
        )?;
        let mut records = self.tx.prepare_cached(
            "INSERT INTO records (collection, id, scope, doc, fields, deleted, updated_seq, lineage, created_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7)
             ON CONFLICT (collection, id) DO UPDATE SET doc = excluded.doc,
                 fields = excluded.fields, deleted = excluded.deleted,
                 updated_seq = excluded.updated_seq, lineage = excluded.lineage",
        )?;
        for Accepted { record, merged } in accepted {
            feed.execute(params![
                record.collection,
                record.id,
                record.scope,
                by.device_id,
                encode_changes(&merged.new_changes),
                by.at,
                stored_epoch(merged.epoch)
            ])?;
            let seq = self.tx.last_insert_rowid();
            writers.execute(params![record.collection, record.id, by.device_id])?;
            records.execute(params![
                record.collection,
                record.id,
                record.scope,
                merged.doc,
                merged.fields_json,
                merged.deleted,
                seq,
                merged.lineage.encode()
            ])?;
        }
        Ok(())
    }

    fn commit(self) -> Result<()> {
        Ok(self.tx.commit()?)
    }
}

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

/// Whether device `?1` may not take actor `?2`: another device that is not revoked has pushed
/// as it, now or before, or the device itself did before its current actor.
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
