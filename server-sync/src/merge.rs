//! The server's merge of one pushed record into its stored copy: the checks (grant, scope,
//! actor, size, the schema), the fast paths that store a new record as sent or append changes
//! that follow the stored document in line without loading it, and the general merge that
//! loads, merges, saves and reloads.

use std::collections::HashSet;

use automerge::legacy::{ElementId, Key, ObjectId, OpId, OpType};
use automerge::{
    ActorId, AutoCommit, AutomergeError, Change, ChangeHash, ObjId, ROOT, ReadDoc, ScalarValue,
};
use fieldsync_record::Fields;
use fieldsync_record::Schema;
use fieldsync_record::merge::guarded;
use fieldsync_record::protocol::{self, DecodeError, Payload, PushRecord, RejectCode, Rejection};
use fieldsync_record::stored::APPENDED_AT_MOST;
use fieldsync_record::validate::{validate_document, validate_scalar_puts};
use serde_bytes::ByteBuf;

use crate::Limits;
use crate::auth::Caller;
use crate::storage::{Lineage, MergedRecord, RootOps, StoredRecord};

/// Who pushes and under which schema, as every merge of a push needs it.
#[derive(Clone, Copy)]
pub(crate) struct MergeContext<'a> {
    pub(crate) caller: &'a Caller,
    pub(crate) actor: Option<&'a str>,
    pub(crate) limits: &'a Limits,
    /// The schema in force, which every accepted record must follow.
    pub(crate) schema: &'a Schema,
}

/// Automerge inflates compressed chunks in full before looking at them, so a few kilobytes
/// could claim gigabytes: the inflated size is bounded first, without keeping any of it.
fn check_inflated(bytes: &[u8], max_inflated: usize) -> Result<(), Rejection> {
    protocol::check_inflated_size(bytes, max_inflated).map_err(|err| match err {
        DecodeError::TooLarge { .. } => reject(
            RejectCode::TooLarge,
            "the Automerge data inflates past the size limit",
        ),
        DecodeError::Compression | DecodeError::Malformed(_) => {
            reject(RejectCode::Malformed, "the Automerge data does not decode")
        }
    })
}

/// A pushed change, once its inflated size is known to be bounded.
pub(crate) fn decode_change(bytes: &[u8], max_inflated: usize) -> Result<Change, Rejection> {
    check_inflated(bytes, max_inflated)?;
    fieldsync_record::merge::decode_change(bytes.to_vec())
        .ok_or_else(|| reject(RejectCode::Malformed, "a change does not decode"))
}

/// A pushed document, once its inflated size is known to be bounded.
pub(crate) fn load_document(bytes: &[u8], max_inflated: usize) -> Result<AutoCommit, Rejection> {
    check_inflated(bytes, max_inflated)?;
    guarded(|| AutoCommit::load(bytes).ok())
        .flatten()
        .ok_or_else(|| reject(RejectCode::Malformed, "the document does not load"))
}

/// Whether a change was made by the pushing device, whose actor is `actor` (`None`: no
/// change is the device's own).
fn is_own(actor: Option<&str>, change_actor: &automerge::ActorId) -> bool {
    actor.is_some_and(|actor| change_actor.to_hex_string() == actor)
}

/// A record that breaks the schema, refused with the rule it broke (the field and the problem,
/// never a value).
fn invalid_record(err: fieldsync_record::Error) -> Rejection {
    let rule = err
        .record_rule()
        .unwrap_or_else(|| "the record's values do not read".to_owned());
    reject(RejectCode::InvalidRecord, &rule)
}

/// Changes made on another epoch of the record than the stored one are never merged: an older
/// epoch's changes depend on a history an erasure removed, and a whole document of it would
/// bring the erased content back.
fn check_epoch(record: &PushRecord, stored: Option<&StoredRecord>) -> Result<(), Rejection> {
    let epoch = stored.map_or(0, |stored| stored.epoch);
    if record.epoch < epoch {
        return Err(reject(
            RejectCode::RecordErased,
            "the record was erased since these changes were made: pull its new epoch and \
             make them again on it",
        ));
    }
    if record.epoch > epoch {
        return Err(reject(
            RejectCode::Malformed,
            "the changes name an epoch of the record the server has not reached",
        ));
    }
    Ok(())
}

fn reject(code: RejectCode, message: &str) -> Rejection {
    Rejection {
        code,
        message: message.to_owned(),
    }
}

/// Checks one pushed record and merges it into the stored document. Automerge panics on some
/// crafted input in places no single guard covers (a change that applies can still break a
/// later lookup): a panic anywhere refuses the record, as malformed.
///
/// Changes the server has already are accepted, adding nothing, whatever the checks would say
/// now: a device whose push was stored but whose answer was lost sends it again, maybe after
/// its grant or the schema changed, and must hear that the server has them (its pulls leave
/// out its own changes, so a refusal would have it take back, for good, what everyone else
/// keeps).
pub(crate) fn merge(
    context: MergeContext<'_>,
    record: &PushRecord,
    stored: Option<StoredRecord>,
) -> Result<MergedRecord, Rejection> {
    let merged =
        guarded(|| merge_unguarded(context, record, stored.as_ref())).unwrap_or_else(|| {
            Err(reject(
                RejectCode::Malformed,
                "the record's changes or document made Automerge fail",
            ))
        });
    match (merged, stored) {
        // Only to a caller who may read the scope: to anyone else it would tell what the
        // scope's records hold.
        (Err(_), Some(stored))
            if context.caller.may_read(&record.scope)
                && holds_already(context.limits, record, &stored) =>
        {
            Ok(unchanged(stored))
        }
        (merged, _) => merged,
    }
}

/// Whether `stored` holds every change `record` brings (its scope and epoch the same).
fn holds_already(limits: &Limits, record: &PushRecord, stored: &StoredRecord) -> bool {
    let Payload::Changes(raw) = &record.payload else {
        return false;
    };
    if raw.is_empty() || stored.scope != record.scope || stored.epoch != record.epoch {
        return false;
    }
    let Ok(hashes) = raw
        .iter()
        .map(|bytes| decode_change(bytes, limits.max_document_bytes).map(|c| c.hash()))
        .collect::<Result<Vec<ChangeHash>, Rejection>>()
    else {
        return false;
    };
    guarded(|| {
        let doc = AutoCommit::load(&stored.doc).ok()?;
        Some(
            hashes
                .iter()
                .all(|hash| doc.get_change_by_hash(hash).is_some()),
        )
    })
    .flatten()
    .unwrap_or(false)
}

/// A pushed record that adds nothing to `stored`: accepted, and nothing is written.
fn unchanged(stored: StoredRecord) -> MergedRecord {
    MergedRecord {
        lineage: stored.lineage.unwrap_or_default(),
        doc: stored.doc,
        fields_json: stored.fields_json,
        deleted: stored.deleted,
        new_changes: Vec::new(),
        epoch: stored.epoch,
    }
}

fn merge_unguarded(
    context: MergeContext<'_>,
    record: &PushRecord,
    stored: Option<&StoredRecord>,
) -> Result<MergedRecord, Rejection> {
    let MergeContext {
        caller,
        actor,
        limits,
        schema,
    } = context;
    if !fieldsync_record::ids::is_valid_name(&record.collection)
        || fieldsync_record::ids::check_record_id(&record.id).is_err()
        || record.scope.contains('\0')
    {
        return Err(reject(
            RejectCode::InvalidRecord,
            "invalid collection or record id",
        ));
    }
    if !caller.may_write(&record.scope) {
        return Err(reject(
            RejectCode::ForbiddenScope,
            "no write grant on this scope",
        ));
    }
    if stored.is_some_and(|s| s.scope != record.scope) {
        return Err(reject(
            RejectCode::ScopeChange,
            "the record cannot be written in this scope",
        ));
    }
    check_epoch(record, stored)?;
    schema
        .collection(&record.collection)
        .map_err(invalid_record)?;
    // A record that brings no change at all is not something a device sends; accepting it
    // would answer "stored" for a record the server does not have.
    if matches!(&record.payload, Payload::Changes(changes) if changes.is_empty()) {
        return Err(reject(RejectCode::Malformed, "the record holds no changes"));
    }
    match (stored, &record.payload) {
        (Some(stored), Payload::Changes(raw)) => {
            if let Some(merged) = append_in_line(context, record, stored, raw) {
                return Ok(merged);
            }
        }
        (None, Payload::Document(bytes)) => return new_record_as_sent(context, record, bytes),
        // A new record's first change, as devices send it. Automerge loads a change as it
        // loads a document, and one change is 20-30% smaller than a save of it; one that
        // needs changes the server lacks takes the general path, which says so.
        (None, Payload::Changes(raw))
            if raw.len() == 1
                && decode_change(&raw[0], limits.max_document_bytes)?
                    .deps()
                    .is_empty() =>
        {
            return new_record_as_sent(context, record, &raw[0]);
        }
        _ => {}
    }
    let mut doc = match stored {
        Some(stored) => guarded(|| AutoCommit::load(&stored.doc).ok())
            .flatten()
            .ok_or_else(|| reject(RejectCode::Malformed, "the stored document does not load"))?,
        None => AutoCommit::new(),
    };
    let heads_before = doc.get_heads();
    match &record.payload {
        Payload::Changes(raw) => {
            let size: usize = raw.iter().map(|c| c.len()).sum();
            if size > limits.max_document_bytes {
                return Err(reject(
                    RejectCode::TooLarge,
                    "the changes exceed the document size limit",
                ));
            }
            // Bounded together, since each change alone could stay under the limit.
            let joined: Vec<u8> = raw.iter().flat_map(|c| c.iter().copied()).collect();
            check_inflated(&joined, limits.max_document_bytes)?;
            let mut changes = Vec::with_capacity(raw.len());
            for bytes in raw {
                let change = decode_change(bytes, limits.max_document_bytes)?;
                if !is_own(actor, change.actor_id()) {
                    return Err(reject(
                        RejectCode::ForeignActor,
                        "a change was made by another device",
                    ));
                }
                changes.push(change);
            }
            let hashes: Vec<ChangeHash> = changes.iter().map(Change::hash).collect();
            match guarded(|| doc.apply_changes(changes)) {
                Some(Ok(())) => {}
                // Another change of the device's own actor has this sequence number: the
                // device's store went back to an older copy and numbers its changes again.
                Some(Err(AutomergeError::DuplicateSeqNumber(..))) => {
                    return Err(reject(
                        RejectCode::ActorReused,
                        "a change reuses a sequence number of this device's actor: its store \
                         was restored from an older copy",
                    ));
                }
                _ => return Err(reject(RejectCode::Malformed, "the changes do not apply")),
            }
            if hashes
                .iter()
                .any(|hash| doc.get_change_by_hash(hash).is_none())
            {
                return Err(reject(
                    RejectCode::MissingDependencies,
                    "a change depends on changes the server lacks",
                ));
            }
        }
        Payload::Document(bytes) => {
            if bytes.len() > limits.max_document_bytes {
                return Err(reject(
                    RejectCode::TooLarge,
                    "the document exceeds the size limit",
                ));
            }
            let mut incoming = load_document(bytes, limits.max_document_bytes)?;
            let foreign = incoming.get_changes(&[]).iter().any(|c| {
                !is_own(actor, c.actor_id()) && doc.get_change_by_hash(&c.hash()).is_none()
            });
            if foreign {
                return Err(reject(
                    RejectCode::ForeignActor,
                    "the document holds another device's new changes",
                ));
            }
            let merged = guarded(|| doc.merge(&mut incoming).is_ok()).unwrap_or(false);
            if !merged {
                return Err(reject(RejectCode::Malformed, "the document does not merge"));
            }
        }
    }
    let new_changes = doc.get_changes(&heads_before);
    let known = stored.map(|stored| stored.lineage.as_ref());
    let lineage = lineage_after_merge(&mut doc, known, &new_changes);
    let new_changes: Vec<Vec<u8>> = new_changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
    let saved = doc.save();
    if protocol::inflated_size(&saved, limits.max_document_bytes).is_err() {
        return Err(reject(
            RejectCode::TooLarge,
            "the merged document exceeds the size limit",
        ));
    }
    // Automerge applies a change whose operations name, as the ones they overwrite,
    // operations the document does not have, and then saves bytes that do not load: stored,
    // they would cost everyone the record.
    let reloads = guarded(|| AutoCommit::load(&saved).map(|mut d| d.get_heads()).ok())
        .flatten()
        .is_some_and(|heads| heads == lineage.heads);
    if !reloads {
        return Err(overwrites_missing_operations());
    }
    validate_document(schema, &record.collection, &record.scope, &doc).map_err(invalid_record)?;
    let (fields, deleted) = fieldsync_record::document::document_values(&doc)
        .map_err(|_| reject(RejectCode::Malformed, "the document's values do not read"))?;
    Ok(MergedRecord {
        doc: saved,
        fields_json: serde_json::Value::Object(fields).to_string(),
        deleted,
        new_changes,
        lineage,
        epoch: record.epoch,
    })
}

/// The lineage of a document just merged and about to be saved whole. `known` is the stored
/// record's (`None` for a new record, `Some(None)` for one stored before lineages were kept),
/// `new_changes` the changes the merge added.
pub(crate) fn lineage_after_merge(
    doc: &mut AutoCommit,
    known: Option<Option<&Lineage>>,
    new_changes: &[Change],
) -> Lineage {
    let newest_op = |changes: &[Change]| changes.iter().map(Change::max_op).max().unwrap_or(0);
    let max_op = match known {
        Some(Some(known)) => known.max_op.max(newest_op(new_changes)),
        // Counted once over the whole history; from then on the lineage is kept.
        Some(None) => newest_op(&doc.get_changes(&[])),
        None => newest_op(new_changes),
    };
    let heads = doc.get_heads();
    let head_change = match heads.as_slice() {
        [head] => new_changes
            .iter()
            .find(|change| change.hash() == *head)
            .cloned()
            .or_else(|| doc.get_change_by_hash(head))
            .map(|change| (change.actor_id().clone(), change.seq())),
        _ => None,
    };
    Lineage {
        heads,
        max_op,
        appended: 0,
        head_change,
        root_ops: root_ops(doc),
    }
}

/// The operations holding each root key's value; `None` if Automerge does not say.
fn root_ops(doc: &AutoCommit) -> Option<RootOps> {
    let mut root_ops = RootOps::new();
    for key in doc.keys(ROOT) {
        let mut ops = Vec::new();
        for (_, id) in doc.get_all(ROOT, key.as_str()).ok()? {
            match id {
                ObjId::Id(counter, actor, _) => ops.push((counter, actor)),
                ObjId::Root => return None,
            }
        }
        ops.sort();
        root_ops.insert(key, ops);
    }
    Some(root_ops)
}

/// Appends changes that follow the stored document in line, without loading it: the first
/// depends on exactly the document's heads, each next one on the one before; each is the next
/// change of the actor that made the document's head (the pushing device's own, whose actor
/// is checked), numbered and counted on from it; and each only sets root keys to scalar values.
/// Then the new values are the stored ones with those keys set, since an operation numbered
/// above every other in the document is what Automerge shows for its key, whatever it
/// overwrote. `None` when any of that does not hold or is not known (records stored before
/// lineages were kept, tombstones, text, nested values, counters, a document that took
/// [`APPENDED_AT_MOST`] changes): the record then merges the slow way, which also reports
/// what is wrong.
fn append_in_line(
    context: MergeContext<'_>,
    record: &PushRecord,
    stored: &StoredRecord,
    raw: &[ByteBuf],
) -> Option<MergedRecord> {
    let MergeContext { actor, limits, .. } = context;
    let lineage = stored.lineage.as_ref()?;
    let appended = lineage
        .appended
        .checked_add(u32::try_from(raw.len()).ok()?)
        .filter(|appended| *appended <= APPENDED_AT_MOST)?;
    // The limit is on the inflated size of the whole document.
    let stored_size = protocol::inflated_size(&stored.doc, limits.max_document_bytes).ok()?;
    let joined: Vec<u8> = raw.iter().flat_map(|c| c.iter().copied()).collect();
    check_inflated(&joined, limits.max_document_bytes - stored_size).ok()?;
    let mut fields: Fields = serde_json::from_str(&stored.fields_json).ok()?;
    let mut heads = lineage.heads.clone();
    heads.sort();
    let (mut head_actor, mut head_seq) = lineage.head_change.clone()?;
    let mut max_op = lineage.max_op;
    let mut root_ops = lineage.root_ops.clone()?;
    for bytes in raw {
        let change = decode_change(bytes, limits.max_document_bytes).ok()?;
        let mut deps = change.deps().to_vec();
        deps.sort();
        let follows = deps == heads
            && is_own(actor, change.actor_id())
            && *change.actor_id() == head_actor
            && change.seq() == head_seq + 1
            && change.start_op().get() == max_op + 1;
        if !follows {
            return None;
        }
        for (op, counter) in change.decode().operations.into_iter().zip(max_op + 1..) {
            match (op.obj, op.key, op.action, op.insert) {
                (ObjectId::Root, Key::Map(key), OpType::Put(value), false)
                    if key != fieldsync_record::DELETED_KEY
                        && !matches!(value, ScalarValue::Counter(_)) =>
                {
                    // A change made on the whole document overwrites exactly the operations
                    // holding the key's value: Automerge breaks on a change that names others.
                    let mut pred: Vec<(u64, ActorId)> = op
                        .pred
                        .iter()
                        .map(|id| (id.counter(), id.actor().clone()))
                        .collect();
                    pred.sort();
                    let holding = root_ops.get(key.as_str()).map_or(&[][..], Vec::as_slice);
                    if pred != holding {
                        return None;
                    }
                    validate_scalar_puts(
                        context.schema,
                        &record.collection,
                        &record.scope,
                        [(key.as_str(), &value)],
                    )
                    .ok()?;
                    root_ops.insert(key.to_string(), vec![(counter, change.actor_id().clone())]);
                    fields.insert(
                        key.to_string(),
                        fieldsync_record::document::scalar_to_json(&value),
                    );
                }
                _ => return None,
            }
        }
        heads = vec![change.hash()];
        (head_actor, head_seq) = (change.actor_id().clone(), change.seq());
        max_op = change.max_op();
    }
    Some(MergedRecord {
        doc: [stored.doc.as_slice(), &joined].concat(),
        fields_json: serde_json::Value::Object(fields).to_string(),
        deleted: stored.deleted,
        new_changes: raw.iter().map(|c| c.to_vec()).collect(),
        lineage: Lineage {
            heads,
            max_op,
            appended,
            head_change: Some((head_actor, head_seq)),
            root_ops: Some(root_ops),
        },
        epoch: stored.epoch,
    })
}

/// A record the server does not have yet, pushed as its whole document or as its one change:
/// loading it validates it, and it is stored as sent (it is already compact), without a merge.
fn new_record_as_sent(
    context: MergeContext<'_>,
    record: &PushRecord,
    bytes: &[u8],
) -> Result<MergedRecord, Rejection> {
    let MergeContext { actor, limits, .. } = context;
    if bytes.len() > limits.max_document_bytes {
        return Err(reject(
            RejectCode::TooLarge,
            "the document exceeds the size limit",
        ));
    }
    let mut doc = load_document(bytes, limits.max_document_bytes)?;
    let changes = doc.get_changes(&[]);
    if changes.is_empty() {
        return Err(reject(
            RejectCode::Malformed,
            "the document holds no changes",
        ));
    }
    if changes.iter().any(|c| !is_own(actor, c.actor_id())) {
        return Err(reject(
            RejectCode::ForeignActor,
            "the document holds another device's changes",
        ));
    }
    if !history_is_intact(&mut doc, &changes) || !overwrites_only_earlier_operations(&changes) {
        return Err(overwrites_missing_operations());
    }
    validate_document(context.schema, &record.collection, &record.scope, &doc)
        .map_err(invalid_record)?;
    let lineage = lineage_after_merge(&mut doc, None, &changes);
    let new_changes = changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
    let (fields, deleted) = fieldsync_record::document::document_values(&doc)
        .map_err(|_| reject(RejectCode::Malformed, "the document's values do not read"))?;
    Ok(MergedRecord {
        doc: bytes.to_vec(),
        fields_json: serde_json::Value::Object(fields).to_string(),
        deleted,
        new_changes,
        lineage,
        epoch: 0,
    })
}

/// Whether `changes`, as Automerge rebuilt them from the loaded `doc`, are the history that
/// `doc`'s hashes name. A release build of Automerge loads an operation that overwrites
/// operations the history lacks by dropping what it cannot find (a debug build panics): the
/// rebuilt change then hashes differently from the one sent, which the bytes as sent still
/// hold, and a save of the document does not load.
fn history_is_intact(doc: &mut AutoCommit, changes: &[Change]) -> bool {
    let hashes: HashSet<ChangeHash> = changes.iter().map(Change::hash).collect();
    doc.get_heads().iter().all(|head| hashes.contains(head))
        && changes
            .iter()
            .all(|change| change.deps().iter().all(|dep| hashes.contains(dep)))
}

fn overwrites_missing_operations() -> Rejection {
    reject(
        RejectCode::Malformed,
        "the changes overwrite operations the document does not have",
    )
}

/// Whether every operation of a whole history (`changes` in causal order, as Automerge
/// returns them) overwrites only operations that come before it on the same object and key.
/// Automerge loads a history that breaks this and saves it as bytes that do not load.
fn overwrites_only_earlier_operations(changes: &[Change]) -> bool {
    let mut seen: HashSet<(ObjectId, Key, OpId)> = HashSet::new();
    for change in changes {
        let expanded = change.decode();
        for (op, counter) in expanded
            .operations
            .into_iter()
            .zip(expanded.start_op.get()..)
        {
            if !op
                .pred
                .iter()
                .all(|pred| seen.contains(&(op.obj.clone(), op.key.clone(), pred.clone())))
            {
                return false;
            }
            let id = OpId::new(counter, &expanded.actor_id);
            // An insertion's key names the element it follows; what overwrites the element
            // it makes names that element as its key.
            let key = if op.insert {
                Key::Seq(ElementId::Id(id.clone()))
            } else {
                op.key
            };
            seen.insert((op.obj, key, id));
        }
    }
    true
}

#[cfg(test)]
pub(crate) mod tests;
