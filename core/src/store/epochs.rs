//! Records the server erased content from. An erasure writes the record again as a new
//! document, its next **epoch**, without the erased content or any history; a pull brings it
//! whole. The store replaces its copy with it (the old document, its waiting changes and its
//! cached values go, and `secure_delete` zeroes their bytes), then makes its unsent writes of
//! the record again on top of it, by value and, for text, by what the user typed, so that
//! offline work survives the erasure but the erased content does not come back. Changes are
//! only ever merged within one epoch.

use std::collections::HashMap;

use rusqlite::{Transaction, params};
use serde_json::Value;

use super::{CachedDoc, DocKey, Shared, read, rejected};
use crate::document;
use crate::error::{Error, Result};
use crate::merge::guarded;
use crate::protocol;
use crate::store::{RemotePayload, RemoteRecord};
use crate::subscription::Changed;
use crate::value::Fields;
use fieldsync_record::FieldType;
use fieldsync_record::erasure::{rebase_value, replaced_clock};
use fieldsync_record::validate::validate_document;

/// The code of unsent writes to a record the server erased whole: the record stays deleted,
/// and what the user wrote (without the erased content) waits for the app.
pub const RECORD_ERASED: &str = "record_erased";

/// The epoch of every record that has one other than 0.
pub(super) fn local_epochs(tx: &Transaction<'_>) -> Result<HashMap<DocKey, u64>> {
    let mut stmt = tx.prepare_cached("SELECT collection, record_id, epoch FROM record_epochs")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            (row.get::<_, String>(0)?, row.get::<_, String>(1)?),
            row.get::<_, i64>(2)?.max(0) as u64,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// What replacing a record with its new epoch did.
pub(super) struct Replaced {
    /// What observers hear of the record.
    pub changed: Changed,
    /// The record as now stored.
    pub doc: CachedDoc,
    /// Whether unsent writes were made again on the new epoch (they wait in the outbox).
    pub rebased: bool,
}

/// Replaces the store's copy of `record` with its epoch `epoch`, which comes as a whole
/// document, and makes the record's unsent writes again on top of it.
pub(super) fn replace(
    shared: &Shared,
    tx: &Transaction<'_>,
    record: &RemoteRecord,
    (epoch, local_epoch): (u64, u64),
    now: i64,
) -> Result<Replaced> {
    let (collection, id) = (record.collection.as_str(), record.id.as_str());
    shared.schema.collection(collection)?;
    super::write::check_id(id)?;
    let invalid = |reason: &str| Error::InvalidRemoteChange {
        collection: collection.to_owned(),
        id: id.to_owned(),
        reason: reason.to_owned(),
    };
    let RemotePayload::Document(bytes) = &record.payload else {
        return Err(invalid(
            "a record's new epoch must come as a whole document",
        ));
    };
    protocol::check_inflated_size(bytes, protocol::MAX_RECORD_INFLATED_BYTES).map_err(|_| {
        Error::RemoteTooLarge {
            collection: collection.to_owned(),
            id: id.to_owned(),
            limit: protocol::MAX_RECORD_INFLATED_BYTES,
        }
    })?;
    let next = document::load_doc(bytes, &shared.actor())
        .map_err(|_| invalid("the new epoch's document does not load"))?;
    // The epoch replaces the copy even where this store's schema would refuse it (an older
    // app whose schema requires a field that was erased): keeping the old copy would keep the
    // erased content. Its values must still be of their declared types, in its scope.
    let next_fields = match validate_document(&shared.schema, collection, &record.scope, &next) {
        Ok(fields) => fields,
        Err(_) => {
            let decl = shared.schema.collection(collection)?;
            let fields = document::materialize(&next, collection, decl)?;
            let scope = fields.get(&decl.scope_field).and_then(Value::as_str);
            if scope != Some(record.scope.as_str()) {
                return Err(invalid(
                    "the new epoch's scope field does not hold its scope",
                ));
            }
            fields
        }
    };
    // A damaged local copy has nothing worth keeping: the new epoch replaces it all the same.
    let existing = match read::load_cached_doc(shared, tx, collection, id) {
        Ok(existing) => existing,
        Err(Error::Corrupt(_)) => None,
        Err(err) => return Err(err),
    };
    if existing.as_ref().is_some_and(|e| e.scope != record.scope) {
        return Err(invalid("the record's scope changed"));
    }
    let before = existing
        .as_ref()
        .filter(|e| !e.deleted)
        .map(|e| e.fields.clone());
    let created_at = existing.as_ref().map_or(now, |e| e.created_at);
    let unsent = super::sync_state::take_queued(tx, collection, id)?;
    if let Some(local) = &existing {
        rebase_kept_writes(shared, tx, (collection, id), &local.fields, &next_fields)?;
    }
    let mut doc = CachedDoc {
        stored: Vec::new(),
        deleted: document::is_deleted(&next),
        doc: next,
        fields: next_fields,
        scope: record.scope.clone(),
        created_at,
        tail: 0,
        compact_next: false,
    };
    let rebased = match existing {
        Some(local) if !unsent.is_empty() => {
            let local = (local, local_epoch);
            rebase(shared, tx, record, local, &unsent, &mut doc, now)?
        }
        _ => false,
    };
    doc.stored = doc.doc.save();
    let table = shared.table(collection)?;
    tx.prepare_cached(&table.upsert)?
        .execute(rusqlite::params_from_iter(read::row_values(
            table,
            &doc.row(id, now),
        )))?;
    tx.prepare_cached(
        "INSERT INTO record_epochs (collection, record_id, epoch) VALUES (?1, ?2, ?3)
         ON CONFLICT (collection, record_id) DO UPDATE SET epoch = excluded.epoch",
    )?
    .execute(params![
        collection,
        id,
        i64::try_from(epoch).unwrap_or(i64::MAX)
    ])?;
    // Changes of the old epoch waiting for their dependencies never will be merged.
    tx.prepare_cached("DELETE FROM pending_changes WHERE collection = ?1 AND record_id = ?2")?
        .execute([collection, id])?;
    tx.prepare_cached("DELETE FROM refused_pulls WHERE collection = ?1 AND record_id = ?2")?
        .execute([collection, id])?;
    let after = (!doc.deleted).then(|| doc.fields.clone());
    Ok(Replaced {
        changed: super::changed(collection, id, before, after),
        doc,
        rebased,
    })
}

/// Writes kept for the app (refused by the server, or set aside while a restored store synced
/// again) hold each field as the user left it, a text whole: the record's copy (`base`, which
/// no longer holds them) is what they were written on. Once the record moves to a new epoch,
/// their text and nested values are merged three ways against it, so that writing them again
/// brings back what the user typed, not what the erasure removed.
fn rebase_kept_writes(
    shared: &Shared,
    tx: &Transaction<'_>,
    (collection, id): (&str, &str),
    base: &Fields,
    next: &Fields,
) -> Result<()> {
    let decl = shared.schema.collection(collection)?;
    let kept: Vec<(i64, String)> = tx
        .prepare_cached(
            "SELECT id, fields FROM rejected_writes WHERE collection = ?1 AND record_id = ?2",
        )?
        .query_map([collection, id], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (row, json) in kept {
        let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(&json) else {
            continue;
        };
        for (name, value) in fields.iter_mut() {
            let Some(field) = decl.fields.get(name) else {
                continue;
            };
            let value_of = |fields: &Fields| fields.get(name).cloned().unwrap_or(Value::Null);
            *value = rebase_value(field, &value_of(base), value, &value_of(next))?;
        }
        tx.prepare_cached("UPDATE rejected_writes SET fields = ?2 WHERE id = ?1")?
            .execute(params![row, Value::Object(fields).to_string()])?;
    }
    Ok(())
}

/// Makes the writes `unsent` (as the outbox held them) made on the old epoch `local` again on
/// the new epoch `next`, as one new change queued to be pushed. Returns whether it queued one.
/// A write to a record erased whole, or one the new epoch does not take, is kept as a
/// rejected write instead, with the values it gave (text without the erased content).
fn rebase(
    shared: &Shared,
    tx: &Transaction<'_>,
    record: &RemoteRecord,
    (mut local, local_epoch): (CachedDoc, u64),
    unsent: &[RemotePayload],
    next: &mut CachedDoc,
    now: i64,
) -> Result<bool> {
    let (collection, id) = (record.collection.as_str(), record.id.as_str());
    let decl = shared.schema.collection(collection)?;
    let mut hashes = rejected::change_hashes(unsent);
    // Unsent writes the server had when it erased (a push stored, its answer lost) were
    // erased with the rest: they are not made again.
    if let Some(clock) = replaced_clock(&next.doc, local_epoch) {
        for change in local.doc.get_changes(&[]) {
            let reached = clock
                .get(&change.actor_id().to_hex_string())
                .is_some_and(|seq| change.seq() <= *seq);
            if reached {
                hashes.remove(&change.hash());
            }
        }
    }
    let mut kept = rejected::without(&local.doc, &hashes);
    if kept.is_empty() {
        // The unsent writes include the record's creation, yet the server erased the record:
        // the creation reached it (its answer was lost), so it counts as synced.
        let first: Vec<_> = local
            .doc
            .get_changes(&[])
            .into_iter()
            .filter(|change| change.deps().is_empty() && hashes.contains(&change.hash()))
            .map(|change| change.hash())
            .collect();
        first.iter().for_each(|hash| {
            hashes.remove(hash);
        });
        kept = rejected::without(&local.doc, &hashes);
    }
    let typed = rejected::typed_by(&mut local.doc, &hashes);
    let mut base_doc = document::new_doc(&shared.actor());
    guarded(|| base_doc.apply_changes(kept))
        .and_then(std::result::Result::ok)
        .ok_or_else(|| Error::Corrupt("a record's own changes do not apply again".into()))?;
    let base = document::materialize(&base_doc, collection, decl)?;
    let unsent_ops = unsent_ops(&mut local.doc, &hashes);
    let mut values = Fields::new();
    for name in typed
        .fields
        .iter()
        .filter(|name| decl.fields.contains_key(*name))
    {
        let field = &decl.fields[name];
        let value_of = |fields: &Fields| fields.get(name).cloned().unwrap_or(Value::Null);
        // Where a concurrent write won the field on this device, the device's own value is
        // what it wrote, not the winner (which is the server's to keep or erase).
        let own = own_scalar(&local.doc, name, &unsent_ops).unwrap_or(value_of(&local.fields));
        let next_value = value_of(&next.fields);
        // A text the erasure removed keeps exactly what the unsent writes typed: a diff of the
        // old text against the user's would take some of the user's characters for old ones.
        let typed_text = (field.field_type == FieldType::Text && next_value.is_null())
            .then(|| own_text(&local.doc, name, &unsent_ops))
            .flatten();
        let value = match typed_text {
            Some(text) => Value::String(text),
            None => rebase_value(field, &value_of(&base), &own, &next_value)?,
        };
        values.insert(name.clone(), value);
    }
    let keep_aside = |tx: &Transaction<'_>, message: &str| {
        rejected::remember(
            tx,
            (collection, id, &record.scope),
            &values,
            typed.deleted,
            false,
            (RECORD_ERASED, message),
            now,
        )
    };
    if next.deleted {
        if !values.is_empty() {
            keep_aside(
                tx,
                "the record was erased on the server; these are the writes made on it",
            )?;
        }
        return Ok(false);
    }
    let mut doc = next.doc.clone();
    for (name, value) in &values {
        if next.fields.get(name).unwrap_or(&Value::Null) != value {
            document::put_field(&mut doc, name, &decl.fields[name], value)?;
        }
    }
    if typed.deleted {
        document::mark_deleted(&mut doc)?;
    }
    let Some(hash) = document::commit(&mut doc, now) else {
        return Ok(false);
    };
    let Ok(fields) = validate_document(&shared.schema, collection, &record.scope, &doc) else {
        keep_aside(
            tx,
            "the writes made on the record do not fit it since it was erased",
        )?;
        return Ok(false);
    };
    let change = doc
        .get_change_by_hash(&hash)
        .map(|change| change.raw_bytes().to_vec())
        .ok_or_else(|| Error::Corrupt("a change just made is missing".into()))?;
    tx.prepare_cached(
        "INSERT INTO outbox (collection, record_id, scope, is_document, payload, created_at)
         VALUES (?1, ?2, ?3, 0, ?4, ?5)",
    )?
    .execute(params![collection, id, record.scope, change, now])?;
    next.deleted = document::is_deleted(&doc);
    next.doc = doc;
    next.fields = fields;
    Ok(true)
}

/// Each unsent change's actor and range of operation counters.
fn unsent_ops(
    doc: &mut automerge::AutoCommit,
    hashes: &std::collections::HashSet<automerge::ChangeHash>,
) -> Vec<(automerge::ActorId, std::ops::RangeInclusive<u64>)> {
    doc.get_changes(&[])
        .into_iter()
        .filter(|change| hashes.contains(&change.hash()))
        .map(|change| {
            let range = change.start_op().get()..=change.max_op();
            (change.actor_id().clone(), range)
        })
        .collect()
}

/// The scalar value an unsent change put in root key `name`, if it still shows among the
/// key's values (concurrent writes keep them all).
fn own_scalar(
    doc: &automerge::AutoCommit,
    name: &str,
    unsent_ops: &[(automerge::ActorId, std::ops::RangeInclusive<u64>)],
) -> Option<Value> {
    use automerge::ReadDoc;
    let values = doc.get_all(automerge::ROOT, name).ok()?;
    values.into_iter().find_map(|(value, id)| {
        let automerge::ObjId::Id(counter, actor, _) = id else {
            return None;
        };
        let own = unsent_ops
            .iter()
            .any(|(by, ops)| *by == actor && ops.contains(&counter));
        match value {
            automerge::Value::Scalar(scalar) if own => {
                Some(fieldsync_record::document::scalar_to_json(&scalar))
            }
            _ => None,
        }
    })
}

/// The characters of text field `name` that unsent changes inserted and that still show, in
/// order; `None` if the field holds no text.
fn own_text(
    doc: &automerge::AutoCommit,
    name: &str,
    unsent_ops: &[(automerge::ActorId, std::ops::RangeInclusive<u64>)],
) -> Option<String> {
    use automerge::ReadDoc;
    let Ok(Some((automerge::Value::Object(automerge::ObjType::Text), text))) =
        doc.get(automerge::ROOT, name)
    else {
        return None;
    };
    let mut typed = String::new();
    for item in doc.list_range(&text, ..) {
        let automerge::ObjId::Id(counter, actor, _) = item.id() else {
            continue;
        };
        let own = unsent_ops
            .iter()
            .any(|(by, ops)| *by == actor && ops.contains(&counter));
        if let (true, automerge::Value::Scalar(scalar)) = (own, item.value.into())
            && let automerge::ScalarValue::Str(chars) = scalar.as_ref()
        {
            typed.push_str(chars);
        }
    }
    Some(typed)
}

/// Copies the WAL into the database file and empties it, so that no page image from before
/// an erasure stays in it (the database file's deleted bytes were zeroed as they went). A
/// reader holding an older snapshot keeps its frames until the next checkpoint.
pub(super) fn scrub_wal(conn: &rusqlite::Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

#[cfg(test)]
mod tests;
