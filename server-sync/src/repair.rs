//! Records whose stored bytes do not load as what the server says they are: found by
//! `fieldsync-server check`, rebuilt by `fieldsync-server repair` from what is still good (the
//! stored bytes' intact chunks, the record's changes in the feed, and a device's copy).
//!
//! Pushes never store such bytes (every change is checked against its checksum before it is
//! appended, every rewritten document is loaded back), but a database written by an older
//! server, or damaged on disk, may hold some; devices refuse them.

use std::collections::HashSet;

use automerge::{AutoCommit, Change, ChangeHash};
use fieldsync_record::chunks;
use fieldsync_record::merge::{decode_change, guarded};
use fieldsync_record::protocol::{self, MAX_RECORD_INFLATED_BYTES};
use fieldsync_record::validate::validate_document;

use crate::error::ServerError;
use crate::merge::lineage_after_merge;
use crate::storage::{MergedRecord, Storage, StoredRecord};

/// A damaged record and what is wrong with it (never its content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// What is wrong.
    pub problem: &'static str,
}

/// What is wrong with a stored record, `None` if its bytes load as the heads and values
/// stored with them.
pub fn problem(stored: &StoredRecord) -> Option<&'static str> {
    if chunks::verify_checksums(&stored.doc, MAX_RECORD_INFLATED_BYTES).is_err() {
        return Some("its stored bytes fail their checksums");
    }
    let Some(mut doc) = guarded(|| AutoCommit::load(&stored.doc).ok()).flatten() else {
        return Some("its stored document does not load");
    };
    if let Some(lineage) = &stored.lineage
        && lineage.heads != doc.get_heads()
    {
        return Some("its document's heads are not the ones stored with it");
    }
    let values = guarded(|| fieldsync_record::document::document_values(&doc).ok())
        .flatten()
        .map(|(fields, deleted)| (serde_json::Value::Object(fields), deleted));
    let stored_values = serde_json::from_str(&stored.fields_json)
        .ok()
        .map(|fields| (fields, stored.deleted));
    if values.is_none() || values != stored_values {
        return Some("its stored values are not its document's");
    }
    None
}

/// Every damaged record, in (collection, id) order, reading the records a page at a time.
pub fn check(storage: &dyn Storage) -> Result<(u64, Vec<Damage>), ServerError> {
    const PAGE: u32 = 500;
    let mut checked = 0;
    let mut damaged = Vec::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let key = after.as_ref().map(|(c, i)| (c.as_str(), i.as_str()));
        let page = storage.records_after(key, PAGE)?;
        for listed in &page {
            checked += 1;
            if let Some(problem) = problem(&listed.stored) {
                damaged.push(Damage {
                    collection: listed.collection.clone(),
                    id: listed.id.clone(),
                    problem,
                });
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => {
                after = Some((last.collection.clone(), last.id.clone()));
            }
            _ => return Ok((checked, damaged)),
        }
    }
}

/// What a repair rebuilt a record from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Repaired {
    /// Changes in the rebuilt document.
    pub changes: usize,
    /// Stored chunks and feed changes left out: their checksums fail, they do not decode, or
    /// they depend on changes nothing good holds.
    pub left_out: usize,
}

/// Rebuilds a record from the intact chunks of its stored bytes, every change of it in the
/// feed whose checksum holds, and `device_copy` (a device's document of the record, whose
/// own checksums must hold), then stores it with a feed entry holding its whole history (so
/// that every device gets what it lacks) and an audit line `repair`. The rebuilt record must
/// follow the schema in force.
pub fn repair(
    storage: &dyn Storage,
    schema: &fieldsync_record::Schema,
    (collection, id): (&str, &str),
    device_copy: Option<&[u8]>,
) -> Result<Repaired, ServerError> {
    let not_found = || ServerError::NotFound(format!("no record {id} in collection {collection}"));
    let stored = storage
        .stored_records(&[(collection, id)])?
        .records
        .pop()
        .flatten()
        .ok_or_else(not_found)?;
    let version = stored.version.ok_or_else(not_found)?;
    let mut changes: Vec<Change> = Vec::new();
    let mut failed = 0;
    let mut take = |chunk: &[u8]| match good_changes(chunk) {
        Some(good) => changes.extend(good),
        None => failed += 1,
    };
    chunks::split(&stored.doc).into_iter().for_each(&mut take);
    for bytes in storage.feed_changes_of(collection, id)? {
        take(&bytes);
    }
    if let Some(copy) = device_copy {
        let pieces = chunks::split(copy);
        if pieces.concat() != copy || pieces.iter().any(|chunk| good_changes(chunk).is_none()) {
            return Err(ServerError::BadRequest(
                "the device's copy is not intact Automerge data".into(),
            ));
        }
        // An erased record's history starts at its epoch's one change: a copy from before
        // the erasure would bring the erased history back.
        if stored.epoch > 0 {
            let roots = |changes: &mut dyn Iterator<Item = Change>| -> HashSet<ChangeHash> {
                changes
                    .filter(|change| change.deps().is_empty())
                    .map(|change| change.hash())
                    .collect()
            };
            let known = roots(
                &mut chunks::split(&stored.doc)
                    .into_iter()
                    .flat_map(good_changes)
                    .flatten(),
            );
            let copied = roots(&mut pieces.iter().copied().flat_map(good_changes).flatten());
            if known.is_empty() || !copied.is_subset(&known) {
                return Err(ServerError::BadRequest(
                    "the device's copy holds the record from before it was erased: sync the \
                     device, then repair from its copy"
                        .into(),
                ));
            }
        }
        pieces.into_iter().for_each(&mut take);
    }
    let mut doc = AutoCommit::new();
    guarded(|| doc.apply_changes(changes.clone()))
        .and_then(Result::ok)
        .ok_or_else(|| ServerError::Corrupt("the record's good changes do not apply".into()))?;
    let history = doc.get_changes(&[]);
    if history.is_empty() {
        return Err(ServerError::Corrupt(
            "nothing of the record is left to rebuild it from; repair it from a device's copy"
                .into(),
        ));
    }
    let fields = validate_document(schema, collection, &stored.scope, &doc).map_err(|err| {
        let rule = err
            .record_rule()
            .unwrap_or_else(|| "its values do not read".into());
        ServerError::Corrupt(format!("the rebuilt record breaks the schema: {rule}"))
    })?;
    let saved = doc.save();
    let lineage = lineage_after_merge(&mut doc, None, &history);
    let rebuilt = MergedRecord {
        doc: saved,
        fields_json: serde_json::Value::Object(fields).to_string(),
        deleted: fieldsync_record::document::is_deleted(&doc),
        new_changes: history.iter().map(|c| c.raw_bytes().to_vec()).collect(),
        lineage,
        epoch: stored.epoch,
    };
    if problem(&rebuilt.to_stored(&stored.scope)).is_some() {
        return Err(ServerError::Corrupt(
            "the rebuilt record does not load back".into(),
        ));
    }
    if !storage.rewrite_record((collection, id), version, &rebuilt, "repair")? {
        return Err(ServerError::Conflict(
            "the record was written while it was repaired; run the repair again".into(),
        ));
    }
    let distinct: std::collections::HashSet<_> = changes.iter().map(Change::hash).collect();
    Ok(Repaired {
        changes: history.len(),
        left_out: failed + distinct.len().saturating_sub(history.len()),
    })
}

/// The changes of one chunk (a saved document or a change) if its checksum holds and it
/// decodes; `None` if not.
fn good_changes(chunk: &[u8]) -> Option<Vec<Change>> {
    protocol::check_inflated_size(chunk, MAX_RECORD_INFLATED_BYTES).ok()?;
    chunks::verify_checksums(chunk, MAX_RECORD_INFLATED_BYTES).ok()?;
    if fieldsync_record::stored::starts_with_saved_document(chunk) {
        let mut doc = guarded(|| AutoCommit::load(chunk).ok()).flatten()?;
        guarded(|| doc.get_changes(&[]))
    } else {
        decode_change(chunk.to_vec()).map(|change| vec![change])
    }
}

#[cfg(test)]
mod tests;
