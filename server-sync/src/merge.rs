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

fn reject(code: RejectCode, message: &str) -> Rejection {
    Rejection {
        code,
        message: message.to_owned(),
    }
}

/// Checks one pushed record and merges it into the stored document. Automerge panics on some
/// crafted input in places no single guard covers (a change that applies can still break a
/// later lookup): a panic anywhere refuses the record, as malformed.
pub(crate) fn merge(
    context: MergeContext<'_>,
    record: &PushRecord,
    stored: Option<StoredRecord>,
) -> Result<MergedRecord, Rejection> {
    guarded(|| merge_unguarded(context, record, stored)).unwrap_or_else(|| {
        Err(reject(
            RejectCode::Malformed,
            "the record's changes or document made Automerge fail",
        ))
    })
}

fn merge_unguarded(
    context: MergeContext<'_>,
    record: &PushRecord,
    stored: Option<StoredRecord>,
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
    if stored.as_ref().is_some_and(|s| s.scope != record.scope) {
        return Err(reject(
            RejectCode::ScopeChange,
            "the record cannot be written in this scope",
        ));
    }
    schema
        .collection(&record.collection)
        .map_err(invalid_record)?;
    // A record that brings no change at all is not something a device sends; accepting it
    // would answer "stored" for a record the server does not have.
    if matches!(&record.payload, Payload::Changes(changes) if changes.is_empty()) {
        return Err(reject(RejectCode::Malformed, "the record holds no changes"));
    }
    match (&stored, &record.payload) {
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
                && decode_change(&raw[0], limits.max_decompressed_bytes)?
                    .deps()
                    .is_empty() =>
        {
            return new_record_as_sent(context, record, &raw[0]);
        }
        _ => {}
    }
    let mut doc = match &stored {
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
            check_inflated(&joined, limits.max_decompressed_bytes)?;
            let mut changes = Vec::with_capacity(raw.len());
            for bytes in raw {
                let change = decode_change(bytes, limits.max_decompressed_bytes)?;
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
            let mut incoming = load_document(bytes, limits.max_decompressed_bytes)?;
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
    let known = stored.as_ref().map(|stored| stored.lineage.as_ref());
    let lineage = lineage_after_merge(&mut doc, known, &new_changes);
    let new_changes: Vec<Vec<u8>> = new_changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
    let saved = doc.save();
    if saved.len() > limits.max_document_bytes {
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
    })
}

/// The lineage of a document just merged and about to be saved whole. `known` is the stored
/// record's (`None` for a new record, `Some(None)` for one stored before lineages were kept),
/// `new_changes` the changes the merge added.
fn lineage_after_merge(
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
    let size = stored.doc.len() + raw.iter().map(|c| c.len()).sum::<usize>();
    if size > limits.max_document_bytes {
        return None;
    }
    let joined: Vec<u8> = raw.iter().flat_map(|c| c.iter().copied()).collect();
    check_inflated(&joined, limits.max_decompressed_bytes).ok()?;
    let mut fields: Fields = serde_json::from_str(&stored.fields_json).ok()?;
    let mut heads = lineage.heads.clone();
    heads.sort();
    let (mut head_actor, mut head_seq) = lineage.head_change.clone()?;
    let mut max_op = lineage.max_op;
    let mut root_ops = lineage.root_ops.clone()?;
    for bytes in raw {
        let change = decode_change(bytes, limits.max_decompressed_bytes).ok()?;
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
    let mut doc = load_document(bytes, limits.max_decompressed_bytes)?;
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
pub(crate) mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ROOT};

    use std::sync::LazyLock;

    use super::*;
    use crate::storage::{Access, Grant};

    pub(crate) fn caller(actor: &ActorId) -> Caller {
        Caller {
            device_id: 1,
            user_id: 1,
            actor: Some(actor.to_hex_string()),
            grants: vec![Grant {
                scope: "north".into(),
                access: Access::Write,
            }],
        }
    }

    /// The schema of these tests: keys they set beyond these are unknown to it, and kept.
    static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
        Schema::from_json(
            r#"{"collections": {"clients": {"scope_field": "caseload_id", "fields": {
                "caseload_id": {"type": "string", "required": true},
                "name": {"type": "string", "required": true},
                "visits": {"type": "integer"},
                "note": {"type": "text"}
            }}}}"#,
        )
        .unwrap()
    });

    pub(crate) fn context<'a>(caller: &'a Caller, limits: &'a Limits) -> MergeContext<'a> {
        MergeContext {
            caller,
            actor: caller.actor.as_deref(),
            limits,
            schema: &SCHEMA,
        }
    }

    /// A new client record of scope "north" written by `actor`.
    pub(crate) fn document(actor: &ActorId, name: &str) -> AutoCommit {
        let mut doc = AutoCommit::new().with_actor(actor.clone());
        doc.put(ROOT, "caseload_id", "north").unwrap();
        doc.put(ROOT, "name", name).unwrap();
        doc.commit();
        doc
    }

    /// Sets `key` on `doc` and returns the change that did it.
    pub(crate) fn edit(doc: &mut AutoCommit, key: &str, value: i64) -> Vec<u8> {
        let heads = doc.get_heads();
        doc.put(ROOT, key, value).unwrap();
        doc.commit();
        doc.get_changes(&heads)[0].raw_bytes().to_vec()
    }

    pub(crate) fn pushed(id: &str, scope: &str, payload: Payload) -> PushRecord {
        PushRecord {
            collection: "clients".into(),
            id: id.into(),
            scope: scope.into(),
            payload,
        }
    }

    pub(crate) fn changes(change: Vec<u8>) -> Payload {
        Payload::Changes(vec![ByteBuf::from(change)])
    }

    /// `doc` as a record stored before lineages were kept.
    pub(crate) fn stored(doc: &mut AutoCommit) -> StoredRecord {
        let (fields, deleted) = fieldsync_record::document::document_values(doc).unwrap();
        StoredRecord {
            scope: "north".into(),
            doc: doc.save(),
            fields_json: serde_json::Value::Object(fields).to_string(),
            deleted,
            lineage: None,
            version: Some(1),
        }
    }

    #[test]
    fn a_new_record_pushed_as_its_one_change_is_stored_as_sent() {
        let device = ActorId::random();
        let caller = caller(&device);
        let limits = Limits::default();
        let push_new = |id: &str, change: Vec<u8>| {
            let record = pushed(id, "north", changes(change));
            merge(context(&caller, &limits), &record, None)
        };
        let mut doc = document(&device, "Ada");
        let first = doc.save_after(&[]);
        let merged = push_new("a", first.clone()).unwrap();
        assert_eq!(merged.doc, first);
        assert_eq!(merged.new_changes, vec![first.clone()]);
        assert!(merged.fields_json.contains("Ada"));
        assert!(merged.doc.len() < doc.save().len());

        // A second change alone, for a record the server lacks, needs the first.
        let second = edit(&mut doc, "visits", 1);
        let missing = push_new("b", second);
        assert_eq!(missing.unwrap_err().code, RejectCode::MissingDependencies);

        // Another device's first change is refused as such.
        let colleague = document(&ActorId::random(), "Bo").save_after(&[]);
        let foreign = push_new("c", colleague);
        assert_eq!(foreign.unwrap_err().code, RejectCode::ForeignActor);
    }

    /// Pushes `change` for record "a" stored as `stored`, as `device`'s.
    fn push_change(device: &ActorId, stored: &StoredRecord, change: &[u8]) -> MergedRecord {
        let caller = caller(device);
        let record = pushed("a", "north", changes(change.to_vec()));
        let limits = Limits::default();
        merge(context(&caller, &limits), &record, Some(stored.clone())).unwrap()
    }

    /// The values of a stored document, loaded whole.
    fn loaded_values(doc: &[u8]) -> (Fields, bool) {
        fieldsync_record::document::document_values(&AutoCommit::load(doc).unwrap()).unwrap()
    }

    fn values(merged: &MergedRecord) -> (Fields, bool) {
        (
            serde_json::from_str(&merged.fields_json).unwrap(),
            merged.deleted,
        )
    }

    /// A new record "a" as the server stores it from its first change, and the device's
    /// document.
    fn new_record(device: &ActorId) -> (AutoCommit, StoredRecord) {
        let mut doc = document(device, "Ada");
        let merged = push(device, None, changes(doc.save_after(&[])));
        (doc, merged.unwrap().to_stored("north"))
    }

    #[test]
    fn changes_that_follow_the_stored_document_in_line_are_appended_unread() {
        let device = ActorId::random();
        let (mut doc, mut state) = new_record(&device);
        // A text field (merged the slow way), later replaced by a scalar.
        let heads = doc.get_heads();
        doc.put_object(ROOT, "notes", automerge::ObjType::Text)
            .unwrap();
        doc.commit();
        state =
            push_change(&device, &state, doc.get_changes(&heads)[0].raw_bytes()).to_stored("north");
        // Scalars of every kind, several keys per change, a key set twice in one change.
        for round in 0..5i64 {
            let heads = doc.get_heads();
            doc.put(ROOT, "visits", round).unwrap();
            doc.put(ROOT, "rate", 1.5 * round as f64).unwrap();
            doc.put(ROOT, "name", format!("Ada {round}")).unwrap();
            doc.put(ROOT, "name", format!("Ada L. {round}")).unwrap();
            doc.put(ROOT, "active", round % 2 == 0).unwrap();
            doc.put(
                ROOT,
                "since",
                ScalarValue::Timestamp(1_700_000_000_000 + round),
            )
            .unwrap();
            doc.put(ROOT, "gone", ScalarValue::Null).unwrap();
            if round == 3 {
                doc.put(ROOT, "notes", "a scalar now").unwrap();
            }
            doc.commit();
            let change = doc.get_changes(&heads)[0].raw_bytes().to_vec();
            let merged = push_change(&device, &state, &change);
            assert_eq!(
                merged.doc,
                [state.doc.as_slice(), &change].concat(),
                "appended"
            );
            assert_eq!(merged.lineage.appended, round as u32 + 1);
            assert_eq!(merged.new_changes, vec![change.clone()]);
            // The values derived from the change are the ones Automerge shows, and the ones
            // the slow merge finds.
            assert_eq!(values(&merged), loaded_values(&merged.doc));
            let without_lineage = StoredRecord {
                lineage: None,
                ..state.clone()
            };
            let slow = push_change(&device, &without_lineage, &change);
            assert_eq!(values(&slow), values(&merged));
            assert_eq!(slow.lineage.heads, merged.lineage.heads);
            assert_eq!(slow.lineage.max_op, merged.lineage.max_op);
            assert_eq!(slow.lineage.head_change, merged.lineage.head_change);
            assert_eq!(slow.lineage.root_ops, merged.lineage.root_ops);
            state = merged.to_stored("north");
        }
        assert_eq!(
            AutoCommit::load(&state.doc).unwrap().get_heads(),
            doc.get_heads()
        );
    }

    #[test]
    fn a_document_that_took_enough_appended_changes_is_saved_whole() {
        let device = ActorId::random();
        let (mut doc, mut state) = new_record(&device);
        let mut appended_counts = Vec::new();
        for round in 0..APPENDED_AT_MOST as i64 + 3 {
            let merged = push_change(&device, &state, &edit(&mut doc, "visits", round));
            appended_counts.push(merged.lineage.appended);
            assert_eq!(values(&merged), loaded_values(&merged.doc));
            state = merged.to_stored("north");
        }
        let at_most = APPENDED_AT_MOST as usize;
        assert_eq!(appended_counts[at_most - 1], APPENDED_AT_MOST);
        assert_eq!(appended_counts[at_most], 0, "saved whole");
        assert_eq!(appended_counts[at_most + 1], 1, "then appended again");
    }

    #[test]
    fn changes_out_of_line_merge_the_slow_way() {
        let device = ActorId::random();
        let colleague = ActorId::random();
        let (mut doc, state) = new_record(&device);
        let slow = |merged: &MergedRecord| merged.lineage.appended == 0;

        // Text edits, nested values and tombstones are not derived from the change.
        let mut text = doc.fork().with_actor(device.clone());
        let heads = text.get_heads();
        let notes = text
            .put_object(ROOT, "notes", automerge::ObjType::Text)
            .unwrap();
        text.splice_text(&notes, 0, 0, "hello").unwrap();
        text.commit();
        let merged = push_change(&device, &state, text.get_changes(&heads)[0].raw_bytes());
        assert!(slow(&merged));
        assert_eq!(values(&merged).0["notes"], "hello");
        let mut tombstone = doc.fork().with_actor(device.clone());
        let heads = tombstone.get_heads();
        tombstone
            .put(ROOT, fieldsync_record::DELETED_KEY, true)
            .unwrap();
        tombstone.commit();
        let merged = push_change(
            &device,
            &state,
            tombstone.get_changes(&heads)[0].raw_bytes(),
        );
        assert!(slow(&merged) && merged.deleted);

        // A change concurrent with one the server has: its dependencies are not the heads.
        let mut elsewhere = doc.fork().with_actor(colleague.clone());
        let first = edit(&mut doc, "visits", 1);
        let state = push_change(&device, &state, &first).to_stored("north");
        assert_eq!(state.lineage.as_ref().unwrap().appended, 1);
        let concurrent = edit(&mut elsewhere, "phone", 555);
        let merged = push_change(&colleague, &state, &concurrent);
        assert!(slow(&merged));
        let (fields, _) = values(&merged);
        assert_eq!(
            (fields["visits"].as_i64(), fields["phone"].as_i64()),
            (Some(1), Some(555))
        );

        // After another device's change, this device's next one is not known to be next in
        // its own line.
        let mut theirs = AutoCommit::load(&state.doc)
            .unwrap()
            .with_actor(colleague.clone());
        let from_colleague = edit(&mut theirs, "phone", 1);
        let after_colleague = push_change(&colleague, &state, &from_colleague).to_stored("north");
        let mut mine = AutoCommit::load(&after_colleague.doc)
            .unwrap()
            .with_actor(device.clone());
        let merged = push_change(&device, &after_colleague, &edit(&mut mine, "phone", 2));
        assert!(slow(&merged));
        assert_eq!(values(&merged).0["phone"], 2);
        // ...and once this device's change is the head, its next one is in line again.
        let state = merged.to_stored("north");
        let merged = push_change(&device, &state, &edit(&mut mine, "phone", 3));
        assert_eq!(merged.lineage.appended, 1);
    }

    #[test]
    fn a_crafted_change_numbered_out_of_line_is_never_appended() {
        let device = ActorId::random();
        let caller = caller(&device);
        let (mut doc, state) = new_record(&device);
        let heads = doc.get_heads();
        doc.put(ROOT, "visits", 1).unwrap();
        doc.commit();
        let change = doc.get_changes(&heads)[0].clone();
        // Automerge fails to load (or panics on) a document whose changes skip a sequence
        // number or an operation counter: such a change must go through a real merge.
        for craft in 0..3 {
            let mut expanded = change.decode();
            match craft {
                0 => expanded.seq += 1,
                1 => expanded.start_op = expanded.start_op.saturating_add(5),
                _ => expanded.seq = 1,
            }
            expanded.hash = None;
            let crafted: Change = expanded.into();
            let record = pushed("a", "north", changes(crafted.raw_bytes().to_vec()));
            let result = merge(
                context(&caller, &Limits::default()),
                &record,
                Some(state.clone()),
            );
            if let Ok(merged) = result {
                assert_eq!(
                    merged.lineage.appended, 0,
                    "craft {craft} merged, not appended"
                );
                assert!(AutoCommit::load(&merged.doc).is_ok());
            }
        }
    }

    /// `change` with the first operation's overwritten operations replaced by `pred`.
    fn overwriting(change: &[u8], pred: Vec<OpId>) -> Vec<u8> {
        let mut expanded = Change::try_from(change).unwrap().decode();
        expanded.operations[0].pred = pred.into();
        expanded.hash = None;
        Change::from(expanded).raw_bytes().to_vec()
    }

    fn push(
        device: &ActorId,
        stored: Option<StoredRecord>,
        payload: Payload,
    ) -> Result<MergedRecord, Rejection> {
        let caller = caller(device);
        let record = pushed("a", "north", payload);
        merge(context(&caller, &Limits::default()), &record, stored)
    }

    #[test]
    fn a_change_overwriting_operations_the_document_lacks_is_refused() {
        let device = ActorId::random();
        let (mut doc, in_line) = new_record(&device);
        let legacy = stored(&mut doc);
        let change = edit(&mut doc, "visits", 1);
        // An operation the document does not have, and the name's operation (another key's),
        // where the change merges and where it would otherwise be appended.
        let cases = [
            (OpId::new(99, &device), &legacy),
            (OpId::new(1, &device), &legacy),
            (OpId::new(99, &device), &in_line),
            (OpId::new(1, &device), &in_line),
        ];
        for (pred, state) in cases {
            let crafted = overwriting(&change, vec![pred.clone()]);
            let result = push(&device, Some(state.clone()), changes(crafted));
            let rejection = result.expect_err(&format!("{pred:?} was stored"));
            assert_eq!(rejection.code, RejectCode::Malformed);
        }
        // The change as made is appended.
        assert_eq!(
            push(&device, Some(in_line), changes(change))
                .unwrap()
                .lineage
                .appended,
            1
        );
    }

    #[test]
    fn a_new_record_overwriting_operations_it_lacks_is_refused() {
        let device = ActorId::random();
        let mut doc = document(&device, "Ada");
        let first = doc.save_after(&[]);
        for pred in [OpId::new(5, &device), OpId::new(1, &ActorId::random())] {
            let crafted = overwriting(&first, vec![pred]);
            let rejection = push(&device, None, changes(crafted.clone())).unwrap_err();
            assert_eq!(rejection.code, RejectCode::Malformed);
            // Automerge loads a change chunk as a document, too.
            let as_document = Payload::Document(ByteBuf::from(crafted));
            let rejection = push(&device, None, as_document).unwrap_err();
            assert_eq!(rejection.code, RejectCode::Malformed);
        }
    }

    #[test]
    fn a_new_record_editing_its_own_text_is_stored() {
        let device = ActorId::random();
        let mut doc = document(&device, "Ada");
        let notes = doc
            .put_object(ROOT, "notes", automerge::ObjType::Text)
            .unwrap();
        doc.splice_text(&notes, 0, 0, "hello there").unwrap();
        doc.commit();
        // Deleting and replacing characters overwrites the insertions of the change before.
        doc.splice_text(&notes, 0, 5, "HELLO").unwrap();
        doc.put(ROOT, "name", "Ada L.").unwrap();
        doc.commit();
        let merged = push(&device, None, Payload::Document(ByteBuf::from(doc.save()))).unwrap();
        let loaded = AutoCommit::load(&merged.doc).unwrap();
        assert_eq!(
            automerge::ReadDoc::text(&loaded, &notes).unwrap(),
            "HELLO there"
        );
        // The same in one change.
        let mut single = AutoCommit::new().with_actor(ActorId::random());
        single.put(ROOT, "caseload_id", "north").unwrap();
        single.put(ROOT, "name", "Bo").unwrap();
        let notes = single
            .put_object(ROOT, "notes", automerge::ObjType::Text)
            .unwrap();
        single.splice_text(&notes, 0, 0, "abc").unwrap();
        single.splice_text(&notes, 1, 1, "B").unwrap();
        single.commit();
        let actor = single.get_actor().clone();
        let merged = push(&actor, None, changes(single.save_after(&[])));
        assert!(merged.is_ok(), "{merged:?}");
    }

    #[test]
    fn a_record_stored_before_lineages_gets_one_on_its_next_merge() {
        let device = ActorId::random();
        let mut doc = document(&device, "Ada");
        edit(&mut doc, "visits", 1);
        let legacy = stored(&mut doc);
        let merged = push_change(&device, &legacy, &edit(&mut doc, "visits", 2));
        assert_eq!(merged.lineage.appended, 0);
        assert_eq!(merged.lineage.heads, doc.get_heads());
        // Two puts creating the record, then one per edit.
        assert_eq!(merged.lineage.max_op, 4);
        let heads = doc.get_heads();
        let head = doc.get_change_by_hash(&heads[0]).unwrap();
        assert_eq!(
            merged.lineage.head_change,
            Some((device.clone(), head.seq()))
        );
        // From then on, in line.
        let next = push_change(
            &device,
            &merged.to_stored("north"),
            &edit(&mut doc, "visits", 3),
        );
        assert_eq!(next.lineage.appended, 1);
    }

    /// Refused as `invalid_record` with its rule, which never quotes the value.
    fn refused_rule(result: Result<MergedRecord, Rejection>, value: &str) -> String {
        let rejection = result.unwrap_err();
        assert_eq!(rejection.code, RejectCode::InvalidRecord, "{rejection:?}");
        assert!(
            value.is_empty() || !rejection.message.contains(value),
            "{rejection:?}"
        );
        rejection.message
    }

    #[test]
    fn a_new_record_that_breaks_the_schema_is_refused_with_its_rule() {
        let device = ActorId::random();
        let cases: [(&str, &str, serde_json::Value, &str); 5] = [
            (
                "caseload_id",
                "south-caseload",
                serde_json::json!("south-caseload"),
                "the scope field must hold the record's scope",
            ),
            (
                "name",
                "",
                serde_json::Value::Null,
                "field `name` is required",
            ),
            (
                "visits",
                "many-visits",
                serde_json::json!("many-visits"),
                "field `visits` must be of type integer",
            ),
            (
                "note",
                "scalar-note",
                serde_json::json!("scalar-note"),
                "field `note` must be of type text",
            ),
            (
                "_deleted",
                "yes-deleted",
                serde_json::json!("yes-deleted"),
                "field `_deleted` must be of type boolean",
            ),
        ];
        for (key, value, json, rule) in cases {
            let mut doc = AutoCommit::new().with_actor(device.clone());
            doc.put(ROOT, "caseload_id", "north").unwrap();
            doc.put(ROOT, "name", "Ada").unwrap();
            match json {
                serde_json::Value::Null => doc.delete(ROOT, key).unwrap(),
                serde_json::Value::String(text) => doc.put(ROOT, key, text).unwrap(),
                _ => unreachable!(),
            }
            doc.commit();
            let as_change = push(&device, None, changes(doc.save_after(&[])));
            assert_eq!(refused_rule(as_change, value), rule, "{key} as its change");
            let as_document = push(&device, None, Payload::Document(ByteBuf::from(doc.save())));
            assert_eq!(
                refused_rule(as_document, value),
                rule,
                "{key} as a document"
            );
        }
        let mut doc = document(&device, "Ada");
        let caller = caller(&device);
        let record = PushRecord {
            collection: "visits".into(),
            ..pushed("a", "north", changes(doc.save_after(&[])))
        };
        let unknown = merge(context(&caller, &Limits::default()), &record, None);
        assert_eq!(
            refused_rule(unknown, "Ada"),
            "collection `visits` is not declared"
        );
    }

    #[test]
    fn an_edit_that_breaks_the_schema_is_refused_in_line_or_not() {
        let device = ActorId::random();
        let (doc, in_line) = new_record(&device);
        let legacy = stored(&mut doc.clone());
        type Write = fn(&mut AutoCommit);
        let edits: [(&str, Write, &str); 5] = [
            (
                "south-caseload",
                |d| d.put(ROOT, "caseload_id", "south-caseload").unwrap(),
                "the scope field must hold the record's scope",
            ),
            (
                "",
                |d| d.put(ROOT, "name", ScalarValue::Null).unwrap(),
                "field `name` is required",
            ),
            (
                "",
                |d| d.delete(ROOT, "name").unwrap(),
                "field `name` is required",
            ),
            (
                "many-visits",
                |d| d.put(ROOT, "visits", "many-visits").unwrap(),
                "field `visits` must be of type integer",
            ),
            (
                "yes-deleted",
                |d| d.put(ROOT, "_deleted", "yes-deleted").unwrap(),
                "field `_deleted` must be of type boolean",
            ),
        ];
        for (value, write, rule) in edits {
            for stored in [&in_line, &legacy] {
                let mut edited = doc.clone();
                let heads = edited.get_heads();
                write(&mut edited);
                edited.commit();
                let change = edited.get_changes(&heads)[0].raw_bytes().to_vec();
                let result = push(&device, Some(stored.clone()), changes(change));
                assert_eq!(refused_rule(result, value), rule);
            }
        }
        // A valid edit on both paths still goes through.
        let mut edited = doc.clone();
        let change = edit(&mut edited, "visits", 2);
        assert!(push(&device, Some(in_line.clone()), changes(change.clone())).is_ok());
        assert!(push(&device, Some(legacy), changes(change)).is_ok());
    }

    #[test]
    fn a_change_numbered_again_by_a_restored_store_is_refused_as_actor_reused() {
        let device = ActorId::random();
        let (mut doc, _) = new_record(&device);
        let backup = doc.fork().with_actor(device.clone());
        edit(&mut doc, "visits", 1);
        let stored = stored(&mut doc);
        // The store, restored from before that edit, numbers its next change the same.
        let mut restored = backup;
        let again = edit(&mut restored, "visits", 7);
        let result = push(&device, Some(stored.clone()), changes(again));
        assert_eq!(result.unwrap_err().code, RejectCode::ActorReused);
        // A change that follows what the server has is the device's own as before.
        let next = edit(&mut doc, "visits", 2);
        assert!(push(&device, Some(stored), changes(next)).is_ok());
    }
}
