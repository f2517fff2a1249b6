//! Writes the server refused, and unsent writes a revoked scope took away.
//!
//! A refused write leaves the record's document: the document is rebuilt from its changes
//! without the refused ones (nor any local change made on top of them), so the device shows
//! what every other device shows, and its next edit depends only on changes the server has. A
//! record the refused write created leaves the store. What the user wrote (each field it set,
//! with the value the user last gave it) is kept in `rejected_writes`, for the app to retry as
//! a new edit once the user may write, or to discard.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};

use automerge::{AutoCommit, Change, ChangeHash};
use rusqlite::{OptionalExtension, Transaction, params};
use serde_json::Value;

use super::{CachedDoc, DocKey, Shared, Store, Write, read};
use crate::document;
use crate::error::{Error, Result};
use crate::merge::{decode_change, guarded};
use crate::store::RemotePayload;
use crate::subscription::{ChangeOrigin, Changed};
use crate::value::Fields;

/// The code of writes a revoked scope took away (the server's refusals carry its own codes).
pub const SCOPE_REVOKED: &str = "scope_revoked";

/// A write that did not reach the server: refused by it, or taken away with a revoked scope.
/// The record itself shows what the server has; this keeps what the user wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RejectedWrite {
    /// Identifies the entry for [`Store::retry_rejected_write`] and
    /// [`Store::discard_rejected_write`].
    pub id: i64,
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub record_id: String,
    /// The record's scope.
    pub scope: String,
    /// Each declared field the write set, with the value the user last gave it (`null`: the
    /// user cleared it). A text field holds its whole text as the user left it.
    pub fields: Fields,
    /// Whether the write deleted the record.
    pub deleted: bool,
    /// Whether the write created the record (the store no longer has it).
    pub created: bool,
    /// The server's stable code (`forbidden_scope`, `invalid_record`, ...), or
    /// `scope_revoked`.
    pub code: String,
    /// The server's message (it names fields and rules, never values).
    pub message: String,
    /// When it was refused (ms since the epoch).
    pub rejected_at_ms: i64,
}

/// What one write did, read from its changes.
pub(super) struct Typed {
    pub fields: BTreeSet<String>,
    pub deleted: bool,
}

/// Takes a record's refused or unsent writes (`payloads`, as the outbox held them) back out of
/// its document and keeps them in `rejected_writes`. Returns what observers should hear of
/// the record, if it changed.
pub(super) fn take_back(
    shared: &Shared,
    tx: &Transaction<'_>,
    cache: &mut lru::LruCache<DocKey, CachedDoc>,
    (collection, id, scope): (&str, &str, &str),
    payloads: &[RemotePayload],
    (code, message): (&str, &str),
    now: i64,
) -> Result<Option<Changed>> {
    cache.pop(&(collection.to_owned(), id.to_owned()));
    let Some(mut cached) = read::load_cached_doc(shared, tx, collection, id)? else {
        // Nothing stored to take the writes from; what they were is still worth keeping.
        remember(
            tx,
            (collection, id, scope),
            &Fields::new(),
            false,
            false,
            (code, message),
            now,
        )?;
        return Ok(None);
    };
    let refused = change_hashes(payloads);
    let typed = typed_by(&mut cached.doc, &refused);
    let values = typed_values(shared, collection, &cached, &typed)?;
    let before = (!cached.deleted).then(|| cached.fields.clone());
    let kept = without(&cached.doc, &refused);
    let table = shared.table(collection)?;
    let created = kept.is_empty();
    let after = if created {
        tx.prepare_cached(&format!("DELETE FROM {} WHERE _id = ?1", table.table))?
            .execute([id])?;
        None
    } else {
        let mut doc = document::new_doc(&shared.actor());
        guarded(|| doc.apply_changes(kept))
            .and_then(std::result::Result::ok)
            .ok_or_else(|| Error::Corrupt("a record's own changes do not apply again".into()))?;
        let decl = shared.schema.collection(collection)?;
        let reverted = CachedDoc {
            fields: document::materialize(&doc, collection, decl)?,
            deleted: document::is_deleted(&doc),
            stored: doc.save(),
            doc,
            tail: 0,
            compact_next: false,
            ..cached
        };
        let values = read::row_values(table, &reverted.row(id, now));
        tx.prepare_cached(&table.upsert)?
            .execute(rusqlite::params_from_iter(values))?;
        (!reverted.deleted).then_some(reverted.fields)
    };
    remember(
        tx,
        (collection, id, scope),
        &values,
        typed.deleted,
        created,
        (code, message),
        now,
    )?;
    Ok(Some(super::changed(collection, id, before, after)))
}

/// Keeps the unsent writes of a record whose scope was revoked, before it is purged.
pub(super) fn keep_revoked(
    shared: &Shared,
    tx: &Transaction<'_>,
    (collection, id, scope): (&str, &str, &str),
    payloads: &[RemotePayload],
    now: i64,
) -> Result<()> {
    let message = "the user may no longer read this scope";
    let Some(mut cached) = read::load_cached_doc(shared, tx, collection, id)? else {
        return Ok(());
    };
    let refused = change_hashes(payloads);
    let typed = typed_by(&mut cached.doc, &refused);
    let values = typed_values(shared, collection, &cached, &typed)?;
    let created = without(&cached.doc, &refused).is_empty();
    remember(
        tx,
        (collection, id, scope),
        &values,
        typed.deleted,
        created,
        (SCOPE_REVOKED, message),
        now,
    )
}

/// A record's unsent writes: collection, id, scope, and the outbox payloads in write order.
pub(super) type Unsent = (String, String, String, Vec<RemotePayload>);

/// The outbox's entries by record (of one scope, or all), records in the order of their first
/// entry.
pub(super) fn unsent_by_record(tx: &Transaction<'_>, scope: Option<&str>) -> Result<Vec<Unsent>> {
    let mut stmt = tx.prepare_cached(
        "SELECT collection, record_id, scope, is_document, payload FROM outbox
         WHERE ?1 IS NULL OR scope = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([scope], |row| {
        let payload = RemotePayload::from_outbox(row.get(3)?, row.get(4)?);
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            payload,
        ))
    })?;
    let mut unsent: Vec<Unsent> = Vec::new();
    let mut index: HashMap<DocKey, usize> = HashMap::new();
    for row in rows {
        let (collection, id, scope, payload) = row?;
        match index.entry((collection.clone(), id.clone())) {
            Entry::Occupied(at) => unsent[*at.get()].3.push(payload),
            Entry::Vacant(at) => {
                at.insert(unsent.len());
                unsent.push((collection, id, scope, vec![payload]));
            }
        }
    }
    Ok(unsent)
}

/// The hashes of the changes `payloads` hold (every change of a saved document, which earlier
/// versions queued for a new record).
pub(super) fn change_hashes(payloads: &[RemotePayload]) -> HashSet<ChangeHash> {
    let mut hashes = HashSet::new();
    for payload in payloads {
        match payload {
            RemotePayload::Changes(changes) => {
                hashes.extend(
                    changes
                        .iter()
                        .filter_map(|c| decode_change(c.clone()))
                        .map(|c| c.hash()),
                );
            }
            RemotePayload::Document(bytes) => {
                if let Some(mut doc) = guarded(|| AutoCommit::load(bytes).ok()).flatten() {
                    hashes.extend(doc.get_changes(&[]).iter().map(Change::hash));
                }
            }
        }
    }
    hashes
}

/// The fields the changes `hashes` wrote, and whether they deleted the record.
pub(super) fn typed_by(doc: &mut AutoCommit, hashes: &HashSet<ChangeHash>) -> Typed {
    let mut typed = Typed {
        fields: BTreeSet::new(),
        deleted: false,
    };
    for entry in document::history(doc) {
        let hash = entry.change_hash.parse::<ChangeHash>().ok();
        if hash.is_some_and(|hash| hashes.contains(&hash)) {
            typed.fields.extend(entry.fields);
            typed.deleted |= entry.deleted;
        }
    }
    typed
}

/// The values the user last gave the declared fields `typed` wrote.
fn typed_values(
    shared: &Shared,
    collection: &str,
    cached: &CachedDoc,
    typed: &Typed,
) -> Result<Fields> {
    let decl = shared.schema.collection(collection)?;
    Ok(typed
        .fields
        .iter()
        .filter(|field| decl.fields.contains_key(*field))
        .map(|field| {
            let value = cached.fields.get(field).cloned().unwrap_or(Value::Null);
            (field.clone(), value)
        })
        .collect())
}

/// The document's changes, in causal order, without `refused` and every change that depends
/// on one of them.
pub(super) fn without(doc: &AutoCommit, refused: &HashSet<ChangeHash>) -> Vec<Change> {
    let mut dropped = refused.clone();
    let mut kept = Vec::new();
    let mut doc = doc.clone();
    for change in doc.get_changes(&[]) {
        if dropped.contains(&change.hash()) || change.deps().iter().any(|d| dropped.contains(d)) {
            dropped.insert(change.hash());
        } else {
            kept.push(change);
        }
    }
    kept
}

pub(super) fn remember(
    tx: &Transaction<'_>,
    (collection, id, scope): (&str, &str, &str),
    fields: &Fields,
    deleted: bool,
    created: bool,
    (code, message): (&str, &str),
    now: i64,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO rejected_writes
             (collection, record_id, scope, fields, deleted, created, code, message, rejected_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        collection,
        id,
        scope,
        Value::Object(fields.clone()).to_string(),
        deleted,
        created,
        code,
        message,
        now
    ])?;
    Ok(())
}

impl Store {
    /// Writes that did not reach the server, oldest first: refused by it (the record shows
    /// what the server has again), or taken away with a revoked scope. Each keeps the values
    /// the user wrote until the app retries or discards it.
    pub fn rejected_writes(&self) -> Result<Vec<RejectedWrite>> {
        let db = self.shared.lock()?;
        let mut stmt = db.conn.prepare_cached(
            "SELECT id, collection, record_id, scope, fields, deleted, created, code, message,
                    rejected_at
             FROM rejected_writes ORDER BY id",
        )?;
        let rows = stmt.query_map([], rejected_write)?;
        let mut writes = Vec::new();
        for row in rows {
            writes.push(row??);
        }
        Ok(writes)
    }

    /// Forgets a rejected write; the record stays as the server has it.
    pub fn discard_rejected_write(&self, id: i64) -> Result<()> {
        let db = self.shared.lock()?;
        db.conn
            .execute("DELETE FROM rejected_writes WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Writes a rejected write again, as a new edit on top of the record as it is now (or as
    /// a new record with the same id, if the write had created it), then forgets it. The edit
    /// syncs like any other: it goes through once the user may write.
    pub fn retry_rejected_write(&self, id: i64) -> Result<()> {
        let entry = {
            let db = self.shared.lock()?;
            db.conn
                .query_row(
                    "SELECT id, collection, record_id, scope, fields, deleted, created, code,
                            message, rejected_at
                     FROM rejected_writes WHERE id = ?1",
                    [id],
                    rejected_write,
                )
                .optional()?
                .transpose()?
                .ok_or_else(|| Error::NotFound {
                    collection: "rejected_writes".into(),
                    id: id.to_string(),
                })?
        };
        let exists = self.get(&entry.collection, &entry.record_id)?.is_some();
        let write = match (exists, entry.deleted) {
            (true, true) => Some(Write::Delete {
                collection: entry.collection.clone(),
                id: entry.record_id.clone(),
            }),
            (false, true) => None,
            (true, false) => Some(Write::Update {
                collection: entry.collection.clone(),
                id: entry.record_id.clone(),
                patch: entry.fields.clone(),
            }),
            (false, false) => Some(Write::Insert {
                collection: entry.collection.clone(),
                id: Some(entry.record_id.clone()),
                fields: entry
                    .fields
                    .iter()
                    .filter(|(_, value)| !value.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
        };
        if let Some(write) = write {
            self.write_batch(vec![write])?;
        }
        self.discard_rejected_write(id)
    }
}

fn rejected_write(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RejectedWrite>> {
    let fields: String = row.get(4)?;
    let fields = match serde_json::from_str::<Value>(&fields) {
        Ok(Value::Object(fields)) => fields,
        _ => {
            return Ok(Err(Error::Corrupt(
                "a rejected write's values do not read".into(),
            )));
        }
    };
    Ok(Ok(RejectedWrite {
        id: row.get(0)?,
        collection: row.get(1)?,
        record_id: row.get(2)?,
        scope: row.get(3)?,
        fields,
        deleted: row.get(5)?,
        created: row.get(6)?,
        code: row.get(7)?,
        message: row.get(8)?,
        rejected_at_ms: row.get(9)?,
    }))
}

/// Tells observers about records whose refused writes were taken back.
pub(super) fn notify(store: &Store, changed: &[Changed]) {
    store
        .shared
        .subscriptions
        .notify(changed, ChangeOrigin::Remote);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::protocol::{PullResponse, PushResponse, PushResult, RejectCode, Rejection};
    use crate::{Schema, StoreOptions};

    fn store(dir: &std::path::Path) -> Store {
        let schema = Schema::from_json(
            r#"{"collections": {"clients": {"scope_field": "caseload_id", "fields": {
                "caseload_id": {"type": "string", "required": true},
                "name": {"type": "string", "required": true},
                "phone": {"type": "string"},
                "notes": {"type": "text"}}}}}"#,
        )
        .unwrap();
        Store::open(dir.join("device.db"), schema, StoreOptions::default()).unwrap()
    }

    fn fields(value: serde_json::Value) -> Fields {
        value.as_object().unwrap().clone()
    }

    fn answer(entries: &[crate::OutboxEntry], refused: &[usize]) -> PushResponse {
        PushResponse {
            results: entries
                .iter()
                .enumerate()
                .map(|(n, entry)| PushResult {
                    collection: entry.collection.clone(),
                    id: entry.record_id.clone(),
                    rejected: refused.contains(&n).then(|| Rejection {
                        code: RejectCode::ForbiddenScope,
                        message: "no write grant on this scope".into(),
                    }),
                })
                .collect(),
        }
    }

    #[test]
    fn a_refused_write_and_the_queued_writes_on_top_of_it_are_taken_back_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let id = store
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": "Ada"})),
            )
            .unwrap();
        store
            .update("clients", &id, fields(json!({"phone": "111"})))
            .unwrap();
        store
            .splice_text("clients", &id, "notes", 0, 0, "typed offline")
            .unwrap();
        store
            .update("clients", &id, fields(json!({"phone": "222"})))
            .unwrap();
        // The first two entries are pushed: the insert is accepted, the edit refused; the
        // later two are still queued and build on it.
        let batch = store.outbox(2).unwrap();
        store.complete_push(&batch, &answer(&batch, &[1])).unwrap();

        assert!(store.outbox(10).unwrap().is_empty());
        let shown = store.get("clients", &id).unwrap().unwrap().fields;
        assert_eq!(
            shown,
            fields(json!({"caseload_id": "north", "name": "Ada"}))
        );
        assert_eq!(store.history("clients", &id).unwrap().len(), 1);
        let [write] = store.rejected_writes().unwrap().try_into().unwrap();
        assert_eq!(
            write.fields,
            fields(json!({"phone": "222", "notes": "typed offline"}))
        );
        assert_eq!((write.created, write.deleted), (false, false));
        assert_eq!(write.code, "forbidden_scope");

        // A write made on the reverted record syncs on changes the server has.
        store
            .update("clients", &id, fields(json!({"name": "Ada L."})))
            .unwrap();
        let [entry] = store.outbox(10).unwrap().try_into().unwrap();
        let crate::RemotePayload::Changes(changes) = entry.payload else {
            panic!("a change")
        };
        let change = automerge::Change::from_bytes(changes[0].clone()).unwrap();
        let first = store.document("clients", &id).unwrap();
        let mut doc = AutoCommit::load(&first).unwrap();
        let kept: Vec<ChangeHash> = doc.get_changes(&[]).iter().map(|c| c.hash()).collect();
        assert!(change.deps().iter().all(|dep| kept.contains(dep)));

        store.discard_rejected_write(write.id).unwrap();
        assert!(store.rejected_writes().unwrap().is_empty());
    }

    #[test]
    fn a_refused_delete_brings_the_record_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let id = store
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": "Ada"})),
            )
            .unwrap();
        let created = store.outbox(10).unwrap();
        store
            .complete_push(&created, &answer(&created, &[]))
            .unwrap();
        store.delete("clients", &id).unwrap();
        assert!(store.get("clients", &id).unwrap().is_none());
        let batch = store.outbox(10).unwrap();
        store.complete_push(&batch, &answer(&batch, &[0])).unwrap();
        assert_eq!(
            store.get("clients", &id).unwrap().unwrap().fields["name"],
            "Ada"
        );
        let [write] = store.rejected_writes().unwrap().try_into().unwrap();
        assert!(write.deleted && !write.created);
        store.retry_rejected_write(write.id).unwrap();
        assert!(store.get("clients", &id).unwrap().is_none());
    }

    #[test]
    fn unsent_writes_of_a_revoked_scope_are_kept_when_it_is_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let synced = store
            .insert(
                "clients",
                fields(json!({"caseload_id": "south", "name": "S"})),
            )
            .unwrap();
        let created = store.outbox(10).unwrap();
        store
            .complete_push(&created, &answer(&created, &[]))
            .unwrap();
        store
            .update("clients", &synced, fields(json!({"phone": "333"})))
            .unwrap();
        let new = store
            .insert(
                "clients",
                fields(json!({"caseload_id": "south", "name": "N"})),
            )
            .unwrap();
        store
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": "Stays"})),
            )
            .unwrap();
        store
            .apply_pull_page(PullResponse {
                records: Vec::new(),
                next_cursor: "c".into(),
                more: false,
                revoked_scopes: vec!["south".into()],
                authors: Vec::new(),
            })
            .unwrap();
        let kept: Vec<(String, Fields, bool, String)> = store
            .rejected_writes()
            .unwrap()
            .into_iter()
            .map(|w| (w.record_id, w.fields, w.created, w.code))
            .collect();
        assert_eq!(
            kept,
            vec![
                (
                    synced,
                    fields(json!({"phone": "333"})),
                    false,
                    SCOPE_REVOKED.into()
                ),
                (
                    new,
                    fields(json!({"caseload_id": "south", "name": "N"})),
                    true,
                    SCOPE_REVOKED.into()
                ),
            ]
        );
        assert_eq!(
            store.outbox_len().unwrap(),
            1,
            "the other scope's write stays queued"
        );
    }
}
