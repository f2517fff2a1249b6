//! What the sync engine needs from the store: finishing a push, the pull cursor, merging a
//! pulled page, and taking back the writes the server refused.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior};

use super::remote::{Incoming, PageEffects};
use super::{Db, OutboxEntry, RemotePayload, Shared, Store, Synchronous, now_ms, rejected, remote};
use crate::error::Result;
use crate::protocol::{PullResponse, PushResponse, RejectCode, Rejection};
use crate::store::ApplyReport;
use crate::subscription::{ChangeOrigin, Changed};

impl Store {
    /// Records the server's answer to a push of `entries`: they leave the outbox, and each
    /// refused record's writes are taken back out of its document and kept as rejected writes
    /// (`rejected.rs`), with the record's later unsent writes, which build on them. One
    /// transaction; observers hear of the records that changed.
    ///
    /// It commits without waiting for the disk, even at `synchronous = FULL`: if a power cut
    /// takes it back, the entries are pushed again and the server, which has their changes,
    /// adds nothing and refuses what it refused. The next commit at the store's level (a
    /// local write, or a pull's last page that brings records) flushes it.
    pub(crate) fn complete_push(
        &self,
        entries: &[OutboxEntry],
        response: &PushResponse,
    ) -> Result<()> {
        let changed = {
            let mut db = self.shared.lock()?;
            self.without_waiting_for_disk(&mut db, true, |db| {
                remove_pushed(&self.shared, db, entries, response)
            })?
        };
        super::rejected::notify(self, &changed);
        Ok(())
    }

    /// Runs `work`, its commits not waiting for the disk when `relaxed` and the store's own
    /// level is `FULL`; then puts that level back, whatever `work` returned.
    fn without_waiting_for_disk<T>(
        &self,
        db: &mut Db,
        relaxed: bool,
        work: impl FnOnce(&mut Db) -> Result<T>,
    ) -> Result<T> {
        let relaxed = relaxed && self.shared.options.synchronous == Synchronous::Full;
        if relaxed {
            db.conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let done = work(db);
        if relaxed {
            db.conn.pragma_update(None, "synchronous", "FULL")?;
        }
        done
    }

    /// The highest position the outbox has reached (0 before the first write), which only
    /// ever grows: the server takes a store whose position is behind what it pushed for an
    /// older copy of it.
    pub(crate) fn outbox_high_water(&self) -> Result<i64> {
        let db = self.shared.lock()?;
        Ok(db
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'",
                [],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// The pull cursor stored with the last merged page, if any.
    pub(crate) fn sync_cursor(&self) -> Result<Option<String>> {
        let db = self.shared.lock()?;
        Ok(db
            .conn
            .query_row(
                "SELECT value FROM sync_state WHERE key = 'cursor'",
                [],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Drops the indexes of the record tables for the rest of a long first sync, which
    /// [`Store::rebuild_indexes`] puts back at its end. The server sends records in the order
    /// they last changed, so each page's records land all over an index such as (client,
    /// start time), and every page's commit rewrites most of that index's pages; built once at
    /// the end, each index is written once. Queries keep working in between, by scanning. If
    /// the process ends first, the next [`Store::open`] rebuilds them.
    pub(crate) fn suspend_indexes(&self) -> Result<()> {
        self.change_indexes(true)
    }

    /// Creates the indexes [`Store::suspend_indexes`] dropped; nothing if it did not. A sync
    /// that was cancelled half-way (its future dropped) leaves them to the next sync.
    pub(crate) fn rebuild_indexes(&self) -> Result<()> {
        self.change_indexes(false)
    }

    fn change_indexes(&self, suspend: bool) -> Result<()> {
        let mut db = self.shared.lock()?;
        if db.indexes_suspended == suspend {
            return Ok(());
        }
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if suspend {
            super::tables::drop_indexes(&tx, &self.shared.schema)?;
        } else {
            super::tables::rebuild_indexes(&tx, &self.shared.schema)?;
        }
        tx.commit()?;
        db.indexes_suspended = suspend;
        Ok(())
    }

    /// Merges a pulled page, purges revoked scopes and stores the page's cursor, in one
    /// transaction; then tells subscribers.
    ///
    /// A page with more to follow commits without waiting for the disk, even at
    /// `synchronous = FULL`: what it brings is on the server and its cursor is in the same
    /// transaction, so losing the commit to a power cut only means pulling it again. The last
    /// page of a pull commits at the store's own level, and its flush of the WAL covers the
    /// pages before it: a pull that has returned with records is on disk. A first sync pays
    /// one flush instead of one a page. A last page that brings nothing (no record, no
    /// revoked scope: a pull that found nothing new, or only this device's own changes) stores
    /// only its cursor and does not wait for the disk either; losing it means reading the same
    /// feed positions again.
    /// Returns the report and the records that changed, which a sync counts once however
    /// many of its pages bring them.
    pub(crate) fn apply_pulled_page(
        &self,
        page: PullResponse,
    ) -> Result<(ApplyReport, HashSet<(String, String)>)> {
        let relaxed = need_not_wait_for_disk(&page);
        let incoming: Vec<Incoming> = page
            .records
            .into_iter()
            .map(|mut record| {
                let values = record.fields.take().map(|fields| (fields, record.deleted));
                Incoming {
                    epoch: record.epoch,
                    record: record.into(),
                    values,
                }
            })
            .collect();
        let effects = PageEffects {
            purge_scopes: &page.revoked_scopes,
            cursor: Some(&page.next_cursor),
            authors: &page.authors,
        };
        let (report, changed, records) = {
            let mut db = self.shared.lock()?;
            self.without_waiting_for_disk(&mut db, relaxed, |db| {
                remote::apply(&self.shared, db, incoming, effects)
            })?
        };
        self.shared
            .subscriptions
            .notify(&changed, ChangeOrigin::Remote);
        Ok((report, records))
    }
}

#[cfg(test)]
impl Store {
    /// [`Store::apply_pulled_page`]'s report alone.
    pub(crate) fn apply_pull_page(&self, page: PullResponse) -> Result<ApplyReport> {
        Ok(self.apply_pulled_page(page)?.0)
    }
}

/// Whether storing `page` may commit without waiting for the disk (see
/// [`Store::apply_pulled_page`]).
fn need_not_wait_for_disk(page: &PullResponse) -> bool {
    page.more || (page.records.is_empty() && page.revoked_scopes.is_empty())
}

/// Removes pushed `entries` from the outbox and remembers the ones `response` refused.
/// `entries` are the outbox's oldest, in order, as [`Store::outbox`] reads them: every entry
/// from the first to the last is one of them, and entries written since come after.
fn remove_pushed(
    shared: &Shared,
    db: &mut Db,
    entries: &[OutboxEntry],
    response: &PushResponse,
) -> Result<Vec<Changed>> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(Vec::new());
    };
    let Db { conn, cache, .. } = db;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // A change refused as `actor_reused` is this store's own, numbered again after a restore:
    // its record's writes stay queued (nothing is taken back; those after it were refused
    // for depending on it) until the store syncs under a new actor. One refused as
    // `record_erased` was made on an epoch the server has left: its record's writes stay
    // queued until the pull brings the new epoch, which makes them again on it.
    let reused: HashSet<(&str, &str)> = entries
        .iter()
        .zip(&response.results)
        .filter(|(_, result)| {
            result.rejected.as_ref().is_some_and(|r| {
                matches!(r.code, RejectCode::ActorReused | RejectCode::RecordErased)
            })
        })
        .map(|(entry, _)| (entry.collection.as_str(), entry.record_id.as_str()))
        .collect();
    let kept = |entry: &OutboxEntry| {
        reused.contains(&(entry.collection.as_str(), entry.record_id.as_str()))
    };
    if reused.is_empty() {
        tx.execute(
            "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2",
            [first.seq, last.seq],
        )?;
    } else {
        let mut stmt = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
        for entry in entries.iter().filter(|e| !kept(e)) {
            stmt.execute([entry.seq])?;
        }
    }
    let now = now_ms();
    // Each refused record's writes from its first refused entry on, in order: the batch's,
    // then those still queued (they build on the refused ones).
    let mut refused: Vec<(&OutboxEntry, &Rejection, Vec<RemotePayload>)> = Vec::new();
    for (entry, result) in entries.iter().zip(&response.results) {
        let same =
            |e: &OutboxEntry| e.collection == entry.collection && e.record_id == entry.record_id;
        match refused.iter_mut().find(|(e, _, _)| same(e)) {
            Some((_, _, payloads)) => payloads.push(entry.payload.clone()),
            None => {
                if let Some(rejection) = result.rejected.as_ref().filter(|_| !kept(entry)) {
                    refused.push((entry, rejection, vec![entry.payload.clone()]));
                }
            }
        }
    }
    let mut changed = Vec::new();
    for (entry, rejection, mut payloads) in refused {
        payloads.extend(take_queued(&tx, &entry.collection, &entry.record_id)?);
        let key = (
            entry.collection.as_str(),
            entry.record_id.as_str(),
            entry.scope.as_str(),
        );
        let reason = (rejection.code.as_str(), rejection.message.as_str());
        if shared.schema.collections.contains_key(&entry.collection) {
            changed.extend(rejected::take_back(
                shared, &tx, cache, key, &payloads, reason, now,
            )?);
        }
    }
    tx.commit()?;
    Ok(changed)
}

/// Removes a record's queued outbox entries and returns their payloads, in order.
pub(super) fn take_queued(
    tx: &Transaction<'_>,
    collection: &str,
    id: &str,
) -> Result<Vec<RemotePayload>> {
    let mut stmt = tx.prepare_cached(
        "SELECT is_document, payload FROM outbox WHERE collection = ?1 AND record_id = ?2
         ORDER BY seq",
    )?;
    let payloads = stmt
        .query_map([collection, id], |row| {
            Ok(RemotePayload::from_outbox(row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.prepare_cached("DELETE FROM outbox WHERE collection = ?1 AND record_id = ?2")?
        .execute([collection, id])?;
    Ok(payloads)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use serde_bytes::ByteBuf;

    use crate::protocol::{Payload, PulledRecord, PushResult, RejectCode, Rejection};
    use crate::{Fields, RemotePayload, RemoteRecord, Schema, StoreOptions};

    fn open(path: &std::path::Path, synchronous: Synchronous) -> Store {
        let schema = Schema::from_json(
            r#"{"collections": {"clients": {"scope_field": "caseload_id", "fields": {
                "caseload_id": {"type": "string", "required": true},
                "name": {"type": "string", "required": true},
                "phone": {"type": "string"},
                "notes": {"type": "text"}}}}}"#,
        )
        .unwrap();
        let options = StoreOptions {
            synchronous,
            ..StoreOptions::default()
        };
        Store::open(path, schema, options).unwrap()
    }

    fn fields(value: serde_json::Value) -> Fields {
        value.as_object().unwrap().clone()
    }

    /// A page holding `id`'s whole document on `from`, with its values, as the server sends
    /// it on a first sync.
    fn whole_document_page(from: &Store, id: &str, cursor: &str, more: bool) -> PullResponse {
        let bytes = from.document("clients", id).unwrap();
        let record = from.get("clients", id).unwrap().unwrap();
        PullResponse {
            records: vec![PulledRecord {
                epoch: 0,
                collection: "clients".into(),
                id: id.into(),
                scope: record.scope,
                payload: Payload::Document(ByteBuf::from(bytes)),
                fields: Some(record.fields),
                deleted: false,
            }],
            next_cursor: cursor.into(),
            more,
            revoked_scopes: Vec::new(),
            authors: Vec::new(),
        }
    }

    fn synchronous_level(store: &Store) -> i64 {
        let db = store.shared.lock().unwrap();
        db.conn
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn a_page_with_more_to_follow_leaves_the_store_at_its_own_level() {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(&dir.path().join("writer.db"), Synchronous::Normal);
        let id = writer
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": "Ada"})),
            )
            .unwrap();
        // SQLite's levels: 1 is NORMAL, 2 is FULL.
        for (synchronous, level) in [(Synchronous::Full, 2), (Synchronous::Normal, 1)] {
            let store = open(&dir.path().join(format!("{level}.db")), synchronous);
            for (cursor, more) in [("c1", true), ("c2", false)] {
                store
                    .apply_pull_page(whole_document_page(&writer, &id, cursor, more))
                    .unwrap();
                assert_eq!(synchronous_level(&store), level);
                assert_eq!(store.sync_cursor().unwrap().as_deref(), Some(cursor));
            }
            assert_eq!(
                store.get("clients", &id).unwrap().unwrap().fields["name"],
                "Ada"
            );
        }
    }

    #[test]
    fn only_a_last_page_that_brings_something_waits_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(&dir.path().join("w.db"), Synchronous::Normal);
        let id = writer
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": "Ada"})),
            )
            .unwrap();
        let with_record = |more| whole_document_page(&writer, &id, "c", more);
        let empty = |more, revoked: &[&str]| PullResponse {
            records: Vec::new(),
            next_cursor: "c".into(),
            more,
            revoked_scopes: revoked.iter().map(|s| s.to_string()).collect(),
            authors: Vec::new(),
        };
        assert!(need_not_wait_for_disk(&with_record(true)));
        assert!(!need_not_wait_for_disk(&with_record(false)));
        assert!(need_not_wait_for_disk(&empty(false, &[])));
        assert!(!need_not_wait_for_disk(&empty(false, &["north"])));
        assert!(need_not_wait_for_disk(&empty(true, &["north"])));
    }

    #[test]
    fn an_acknowledged_push_leaves_the_store_at_its_own_level() {
        let dir = tempfile::tempdir().unwrap();
        for (synchronous, level) in [(Synchronous::Full, 2), (Synchronous::Normal, 1)] {
            let store = open(&dir.path().join(format!("{level}.db")), synchronous);
            for name in ["Ada", "Bo"] {
                store
                    .insert(
                        "clients",
                        fields(json!({"caseload_id": "north", "name": name})),
                    )
                    .unwrap();
            }
            let entries = store.outbox(10).unwrap();
            // Written while the push was on its way: not part of it.
            store
                .insert(
                    "clients",
                    fields(json!({"caseload_id": "north", "name": "Cy"})),
                )
                .unwrap();
            let response = PushResponse {
                results: entries
                    .iter()
                    .map(|entry| PushResult {
                        collection: entry.collection.clone(),
                        id: entry.record_id.clone(),
                        rejected: None,
                    })
                    .collect(),
            };
            store.complete_push(&entries, &response).unwrap();
            let left = store.outbox(10).unwrap();
            assert_eq!(left.len(), 1, "the entry written since stays");
            assert!(left[0].seq > entries[1].seq);
            assert_eq!(synchronous_level(&store), level);
        }
    }

    fn index_names(store: &Store) -> Vec<String> {
        let db = store.shared.lock().unwrap();
        let mut stmt = db
            .conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'idx:%'
                 ORDER BY name",
            )
            .unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn suspended_indexes_come_back_once_and_queries_work_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("s.db"), Synchronous::Normal);
        store
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": "Ada"})),
            )
            .unwrap();
        let wanted = index_names(&store);
        assert!(!wanted.is_empty());
        store.suspend_indexes().unwrap();
        assert!(index_names(&store).is_empty());
        let north = crate::Filter::Eq {
            field: "caseload_id".into(),
            value: json!("north"),
        };
        assert_eq!(store.count("clients", &north).unwrap(), 1);
        store.rebuild_indexes().unwrap();
        store.rebuild_indexes().unwrap();
        assert_eq!(index_names(&store), wanted);
        assert_eq!(store.count("clients", &north).unwrap(), 1);
    }

    /// A store standing for the server, holding a new record, and an empty device.
    fn ada_on_the_server_side(dir: &std::path::Path) -> (Store, Store, String) {
        let server_side = open(&dir.join("a.db"), Synchronous::Normal);
        let device = open(&dir.join("b.db"), Synchronous::Normal);
        let id = server_side
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": "Ada"})),
            )
            .unwrap();
        (server_side, device, id)
    }

    #[test]
    fn a_whole_document_for_a_record_the_store_has_merges_into_it() {
        let dir = tempfile::tempdir().unwrap();
        let (server_side, device, id) = ada_on_the_server_side(dir.path());
        device
            .apply_pull_page(whole_document_page(&server_side, &id, "c1", false))
            .unwrap();
        // Both change the record; then the whole document comes again (a scope granted anew
        // sends every document once more).
        device
            .update("clients", &id, fields(json!({"phone": "555"})))
            .unwrap();
        server_side
            .update("clients", &id, fields(json!({"name": "Ada L."})))
            .unwrap();
        // Reopened, the device has no document in memory: the record is found on disk.
        drop(device);
        let device = open(&dir.path().join("b.db"), Synchronous::Normal);
        let report = device
            .apply_pull_page(whole_document_page(&server_side, &id, "c2", false))
            .unwrap();
        assert_eq!(report.changed, 1);
        let merged = device.get("clients", &id).unwrap().unwrap().fields;
        assert_eq!(merged["name"], "Ada L.", "the incoming edit is merged");
        assert_eq!(merged["phone"], "555", "the local edit is kept");
    }

    /// A document whose bytes were damaged on the server (a flipped bit) is refused, never
    /// stored; with its bytes intact it is stored as sent.
    #[test]
    fn a_damaged_whole_document_is_refused_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (server_side, device, id) = ada_on_the_server_side(dir.path());
        let page = whole_document_page(&server_side, &id, "c1", false);
        let Payload::Document(bytes) = page.records[0].payload.clone() else {
            unreachable!()
        };
        for byte in [4, 9, bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = page.clone();
            let mut bad = bytes.to_vec();
            bad[byte] ^= 0x04;
            damaged.records[0].payload = Payload::Document(ByteBuf::from(bad));
            let report = device.apply_pull_page(damaged).unwrap();
            assert_eq!(
                (report.changed, report.rejected.len()),
                (0, 1),
                "byte {byte}"
            );
            assert!(device.get("clients", &id).unwrap().is_none());
        }
        let report = device.apply_pull_page(page).unwrap();
        assert_eq!((report.changed, report.rejected.len()), (1, 0));
        assert_eq!(device.document("clients", &id).unwrap(), bytes.to_vec());
    }

    /// A pulled change whose checksum was damaged is merged from what it decodes to, never
    /// appended as it came: the stored document still loads.
    #[test]
    fn a_pulled_change_with_a_damaged_checksum_is_not_appended_as_it_came() {
        let dir = tempfile::tempdir().unwrap();
        let (server_side, device, id) = synced_pair(dir.path());
        server_side
            .update("clients", &id, fields(json!({"name": "Ada L."})))
            .unwrap();
        let mut page = latest_changes_page(&server_side, &id, "c1");
        let Payload::Changes(changes) = &mut page.records[0].payload else {
            unreachable!()
        };
        changes[0][5] ^= 0x01;
        let (_, tail_before) = stored_row(&device, &id);
        device.apply_pull_page(page).unwrap();
        let (bytes, tail) = stored_row(&device, &id);
        assert_ne!(tail, tail_before + 1, "not appended");
        automerge::AutoCommit::load(&bytes).expect("the stored document loads");
        device
            .update("clients", &id, fields(json!({"phone": "555"})))
            .unwrap();
    }

    /// `from`'s unsent changes to `id` as one feed entry that is the record's latest, with
    /// `from`'s values, as the server sends it; `from`'s outbox is then acknowledged.
    fn latest_changes_page(from: &Store, id: &str, cursor: &str) -> PullResponse {
        let values = from.get("clients", id).unwrap().unwrap().fields;
        latest_changes_page_of(from, id, cursor, values)
    }

    /// A page of `from`'s unsent changes to `id`, as its latest, with `values`.
    fn latest_changes_page_of(
        from: &Store,
        id: &str,
        cursor: &str,
        values: Fields,
    ) -> PullResponse {
        let entries = from.outbox(1000).unwrap();
        let changes: Vec<ByteBuf> = entries
            .iter()
            .filter(|entry| entry.record_id == id)
            .flat_map(|entry| match &entry.payload {
                RemotePayload::Changes(changes) => changes.clone(),
                RemotePayload::Document(doc) => vec![doc.clone()],
            })
            .map(ByteBuf::from)
            .collect();
        assert!(!changes.is_empty());
        from.acknowledge_outbox(entries.last().unwrap().seq)
            .unwrap();
        PullResponse {
            records: vec![PulledRecord {
                epoch: 0,
                collection: "clients".into(),
                id: id.into(),
                scope: values["caseload_id"].as_str().unwrap().into(),
                payload: Payload::Changes(changes),
                fields: Some(values),
                deleted: false,
            }],
            next_cursor: cursor.into(),
            more: false,
            revoked_scopes: Vec::new(),
            authors: Vec::new(),
        }
    }

    /// The record's stored document bytes and how many changes they have appended.
    fn stored_row(store: &Store, id: &str) -> (Vec<u8>, u32) {
        let db = store.shared.lock().unwrap();
        db.conn
            .query_row(
                "SELECT _doc, _doc_tail FROM \"rec_clients\" WHERE _id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap()
    }

    fn page_changes(page: &PullResponse) -> Vec<u8> {
        match &page.records[0].payload {
            Payload::Changes(changes) => changes.iter().flat_map(|c| c.to_vec()).collect(),
            Payload::Document(_) => unreachable!(),
        }
    }

    /// A record on `server_side` and on a device that got it whole, as after a first sync.
    fn synced_pair(dir: &std::path::Path) -> (Store, Store, String) {
        let server_side = open(&dir.join("a.db"), Synchronous::Normal);
        let device = open(&dir.join("b.db"), Synchronous::Normal);
        let id = server_side
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": "Ada", "notes": "First visit."})),
            )
            .unwrap();
        let first = server_side.outbox(10).unwrap().last().unwrap().seq;
        server_side.acknowledge_outbox(first).unwrap();
        device
            .apply_pull_page(whole_document_page(&server_side, &id, "c0", false))
            .unwrap();
        (server_side, device, id)
    }

    #[test]
    fn changes_with_the_record_s_latest_values_are_appended_to_its_document_unread() {
        let dir = tempfile::tempdir().unwrap();
        let (server_side, device, id) = synced_pair(dir.path());
        server_side
            .update("clients", &id, fields(json!({"name": "Ada L."})))
            .unwrap();
        server_side
            .splice_text("clients", &id, "notes", 0, 5, "Second")
            .unwrap();
        let page = latest_changes_page(&server_side, &id, "c1");
        let (bytes_before, tail_before) = stored_row(&device, &id);

        let report = device.apply_pull_page(page.clone()).unwrap();
        assert_eq!((report.changed, report.rejected.len()), (1, 0));
        let (bytes_after, tail_after) = stored_row(&device, &id);
        assert_eq!(tail_after, tail_before + 2, "both changes appended");
        assert_eq!(bytes_after, [bytes_before, page_changes(&page)].concat());
        let expected = server_side.get("clients", &id).unwrap().unwrap().fields;
        assert_eq!(
            device.get("clients", &id).unwrap().unwrap().fields,
            expected
        );
        assert_eq!(device.sync_cursor().unwrap().as_deref(), Some("c1"));

        // The appended document loads whole: a local write builds on every change.
        device
            .update("clients", &id, fields(json!({"phone": "555"})))
            .unwrap();
        let record = device.get("clients", &id).unwrap().unwrap().fields;
        assert_eq!(record["name"], "Ada L.");
        assert_eq!(record["notes"], "Second visit.");
        assert_eq!(record["phone"], "555");
        assert_eq!(device.history("clients", &id).unwrap().len(), 4);
    }

    #[test]
    fn appended_changes_that_rename_then_delete_a_record_update_its_row_and_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let (server_side, device, id) = synced_pair(dir.path());
        let in_north = || {
            device
                .count(
                    "clients",
                    &crate::Filter::Eq {
                        field: "caseload_id".into(),
                        value: json!("north"),
                    },
                )
                .unwrap()
        };
        // One field changes: the row takes it and keeps the others.
        server_side
            .update("clients", &id, fields(json!({"name": "Ada L."})))
            .unwrap();
        let renamed = server_side.get("clients", &id).unwrap().unwrap().fields;
        let report = device
            .apply_pull_page(latest_changes_page(&server_side, &id, "c1"))
            .unwrap();
        assert_eq!((report.changed, report.rejected.len()), (1, 0));
        assert_eq!(stored_row(&device, &id).1, 1, "appended, not merged");
        assert_eq!(device.get("clients", &id).unwrap().unwrap().fields, renamed);
        assert_eq!(in_north(), 1);

        // Deleted: the row says so and the scope's index no longer lists it.
        server_side.delete("clients", &id).unwrap();
        let mut deletion = latest_changes_page_of(&server_side, &id, "c2", renamed);
        deletion.records[0].deleted = true;
        let report = device.apply_pull_page(deletion).unwrap();
        assert_eq!((report.changed, report.rejected.len()), (1, 0));
        assert_eq!(stored_row(&device, &id).1, 2, "appended, not merged");
        assert!(device.get("clients", &id).unwrap().is_none());
        assert_eq!(in_north(), 0);
    }

    /// `server_side` renames the record and the device, reopened from `dir` (no document in
    /// memory), pulls that as the record's latest change. The server's values lack the
    /// device's `phone`: it is kept only if the changes were merged rather than appended with
    /// those values taken.
    fn pull_rename_keeping_phone(
        dir: &std::path::Path,
        server_side: &Store,
        id: &str,
        phone: &str,
    ) -> Store {
        let device = open(&dir.join("b.db"), Synchronous::Normal);
        server_side
            .update("clients", id, fields(json!({"name": "Ada L."})))
            .unwrap();
        device
            .apply_pull_page(latest_changes_page(server_side, id, "c1"))
            .unwrap();
        let record = device.get("clients", id).unwrap().unwrap().fields;
        assert_eq!(
            (record["name"].as_str(), record["phone"].as_str()),
            (Some("Ada L."), Some(phone))
        );
        device
    }

    #[test]
    fn a_record_with_unsent_writes_merges_pulled_changes_instead() {
        let dir = tempfile::tempdir().unwrap();
        let (server_side, device, id) = synced_pair(dir.path());
        device
            .update("clients", &id, fields(json!({"phone": "555"})))
            .unwrap();
        drop(device);
        let device = pull_rename_keeping_phone(dir.path(), &server_side, &id, "555");
        assert_eq!(stored_row(&device, &id).1, 0, "merged and saved whole");
    }

    #[test]
    fn a_record_whose_refused_write_was_taken_back_shows_what_the_server_sends() {
        let dir = tempfile::tempdir().unwrap();
        let (server_side, device, id) = synced_pair(dir.path());
        device
            .update("clients", &id, fields(json!({"phone": "555"})))
            .unwrap();
        let entries = device.outbox(10).unwrap();
        let refused = PushResponse {
            results: vec![PushResult {
                collection: "clients".into(),
                id: id.clone(),
                rejected: Some(Rejection {
                    code: RejectCode::TooLarge,
                    message: "refused".into(),
                }),
            }],
        };
        device.complete_push(&entries, &refused).unwrap();
        assert_eq!(device.outbox_len().unwrap(), 0);
        assert_eq!(device.rejected_writes().unwrap()[0].fields["phone"], "555");
        drop(device);
        let device = open(&dir.path().join("b.db"), Synchronous::Normal);
        server_side
            .update("clients", &id, fields(json!({"name": "Ada L."})))
            .unwrap();
        device
            .apply_pull_page(latest_changes_page(&server_side, &id, "c1"))
            .unwrap();
        assert_eq!(
            device.get("clients", &id).unwrap().unwrap().fields,
            server_side.get("clients", &id).unwrap().unwrap().fields
        );
        assert_eq!(stored_row(&device, &id).1, 1, "appended unread");
    }

    #[test]
    fn after_a_merge_from_elsewhere_pulled_changes_always_merge() {
        let dir = tempfile::tempdir().unwrap();
        let (server_side, device, id) = synced_pair(dir.path());
        // Another device's edit reaches this one directly, not through the server.
        let peer = open(&dir.path().join("peer.db"), Synchronous::Normal);
        peer.apply_pull_page(whole_document_page(&server_side, &id, "p0", false))
            .unwrap();
        peer.update("clients", &id, fields(json!({"phone": "777"})))
            .unwrap();
        let from_peer: Vec<RemoteRecord> = peer
            .outbox(10)
            .unwrap()
            .into_iter()
            .map(|entry| RemoteRecord {
                epoch: 0,
                collection: entry.collection,
                id: entry.record_id,
                scope: entry.scope,
                payload: entry.payload,
            })
            .collect();
        assert_eq!(device.apply_remote(from_peer).unwrap().changed, 1);
        // Reopened: the mark outlives the process.
        drop(device);
        pull_rename_keeping_phone(dir.path(), &server_side, &id, "777");
    }

    #[test]
    fn a_new_record_s_whole_history_is_stored_from_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (server_side, device, _) = synced_pair(dir.path());
        let id = server_side
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": "Bo"})),
            )
            .unwrap();
        server_side
            .update("clients", &id, fields(json!({"phone": "123"})))
            .unwrap();
        let page = latest_changes_page(&server_side, &id, "c1");
        device.apply_pull_page(page.clone()).unwrap();
        assert_eq!(stored_row(&device, &id), (page_changes(&page), 1));
        assert_eq!(
            device.get("clients", &id).unwrap().unwrap().fields,
            server_side.get("clients", &id).unwrap().unwrap().fields
        );
        device
            .splice_text("clients", &id, "notes", 0, 0, "Met at school.")
            .unwrap();
        assert_eq!(device.history("clients", &id).unwrap().len(), 3);

        // A record new to the device whose first change is missing waits for it, values or not.
        let (other, _) = (
            server_side
                .insert(
                    "clients",
                    fields(json!({"caseload_id": "north", "name": "Cy"})),
                )
                .unwrap(),
            (),
        );
        let first = server_side.outbox(10).unwrap().last().unwrap().seq;
        server_side.acknowledge_outbox(first).unwrap();
        server_side
            .update("clients", &other, fields(json!({"phone": "9"})))
            .unwrap();
        let report = device
            .apply_pull_page(latest_changes_page(&server_side, &other, "c2"))
            .unwrap();
        assert_eq!((report.changed, report.waiting_changes), (0, 1));
        assert!(device.get("clients", &other).unwrap().is_none());
    }

    #[test]
    fn a_document_is_saved_whole_before_its_appended_changes_reach_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (server_side, device, id) = synced_pair(dir.path());
        let mut tails = Vec::new();
        for round in 0..2 * crate::stored::APPENDED_AT_MOST {
            server_side
                .update("clients", &id, fields(json!({"phone": round.to_string()})))
                .unwrap();
            device
                .apply_pull_page(latest_changes_page(&server_side, &id, &format!("c{round}")))
                .unwrap();
            tails.push(stored_row(&device, &id).1);
        }
        assert!(
            tails
                .iter()
                .all(|&tail| tail < crate::stored::APPENDED_AT_MOST)
        );
        assert!(tails.contains(&0), "saved whole at least once: {tails:?}");
        assert!(tails.contains(&(crate::stored::APPENDED_AT_MOST - 1)));
        let last = (2 * crate::stored::APPENDED_AT_MOST - 1).to_string();
        assert_eq!(
            device.get("clients", &id).unwrap().unwrap().fields["phone"],
            last.as_str()
        );
    }

    #[test]
    fn a_record_whose_pulled_change_was_refused_merges_later_changes() {
        use automerge::transaction::Transactable;
        let dir = tempfile::tempdir().unwrap();
        let (server_side, device, id) = synced_pair(dir.path());
        // Another app version drops a field this schema requires, then writes it again.
        let mut doc =
            automerge::AutoCommit::load(&server_side.document("clients", &id).unwrap()).unwrap();
        let page =
            |doc: &mut automerge::AutoCommit, heads: &[automerge::ChangeHash], cursor: &str| {
                let change = doc.get_changes(heads)[0].raw_bytes().to_vec();
                let (fields, deleted) = crate::document::document_values(doc).unwrap();
                PullResponse {
                    records: vec![PulledRecord {
                        epoch: 0,
                        collection: "clients".into(),
                        id: id.clone(),
                        scope: "north".into(),
                        payload: Payload::Changes(vec![ByteBuf::from(change)]),
                        fields: Some(fields),
                        deleted,
                    }],
                    next_cursor: cursor.into(),
                    more: false,
                    revoked_scopes: Vec::new(),
                    authors: Vec::new(),
                }
            };
        let heads = doc.get_heads();
        doc.delete(automerge::ROOT, "name").unwrap();
        doc.commit();
        let refused = device
            .apply_pull_page(page(&mut doc, &heads, "c1"))
            .unwrap();
        assert_eq!(refused.rejected.len(), 1);
        let heads = doc.get_heads();
        doc.put(automerge::ROOT, "name", "Back").unwrap();
        doc.commit();
        let tail_before = stored_row(&device, &id).1;
        // The change fits the schema, but it depends on the refused one: appended, it would
        // leave a document missing a change. Merged, it waits for it.
        let later = device
            .apply_pull_page(page(&mut doc, &heads, "c2"))
            .unwrap();
        assert_eq!((later.changed, later.waiting_changes), (0, 1));
        assert_eq!(stored_row(&device, &id).1, tail_before);
        assert_eq!(
            device.get("clients", &id).unwrap().unwrap().fields["name"],
            "Ada"
        );
    }
}
