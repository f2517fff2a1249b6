//! Erasing what a record held, everywhere: the record is written again as a fresh Automerge
//! document, its next **epoch**, holding its current values minus what is erased and none of
//! its history. The server stores it in place of the old document; devices replace their copy
//! with it and make their unsent writes again on top of it ([`rebase_value`]). Changes made on
//! an older epoch are never merged into a newer one (they depend on a history that no longer
//! exists), so nothing erased comes back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ROOT, ReadDoc, hydrate};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attachment::AttachmentRef;
use crate::document::{self, DELETED_KEY};
use crate::error::{Error, Result};
use crate::schema::{Collection, Field, FieldType};

/// What an erasure takes out of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erasure {
    /// These fields' values, current and past. Neither the scope field nor, while the record
    /// is live, a required field can go.
    Fields(BTreeSet<String>),
    /// Every past value: the record keeps its current values, without their history.
    History,
    /// The whole record: it keeps only its scope and is deleted.
    Record,
}

impl Erasure {
    /// What the erasure names, for an audit line: field names or a word, never a value.
    pub fn describe(&self) -> String {
        match self {
            Erasure::Fields(fields) => {
                let names: Vec<&str> = fields.iter().map(String::as_str).collect();
                format!("fields {}", names.join(","))
            }
            Erasure::History => "history".to_owned(),
            Erasure::Record => "record".to_owned(),
        }
    }
}

/// Each actor's highest sequence number in a document: which changes it holds.
pub type Clock = BTreeMap<String, u64>;

/// What an epoch's one change says, as its message, of the epochs it replaces: for each, its
/// number and the clock of its last document, so that a device still holding writes made on
/// one of them tells those the server had (an answer lost) from those it did not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Replaced {
    replaces: Vec<ReplacedEpoch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ReplacedEpoch {
    epoch: u64,
    clock: Clock,
}

/// The record's next epoch: a new document written by `actor` at `time_ms`, in one change,
/// that holds `doc`'s current values (the value that shows where concurrent writes left
/// several, keys the schema does not declare included) without what `erasure` takes out.
/// `doc` is the record at epoch `epoch`; the new change's message names the changes it held
/// (see [`replaced_clock`]).
pub fn next_epoch(
    doc: &AutoCommit,
    (collection_name, collection): (&str, &Collection),
    erasure: &Erasure,
    epoch: u64,
    actor: &ActorId,
    time_ms: i64,
) -> Result<AutoCommit> {
    let deleted = document::is_deleted(doc);
    let hydrate::Value::Map(root) = doc.hydrate(ROOT, None)? else {
        return Err(Error::Corrupt("a record's root is not a map".into()));
    };
    let kept = |key: &str| match erasure {
        Erasure::Fields(fields) => !fields.contains(key),
        Erasure::History => true,
        Erasure::Record => key == collection.scope_field,
    };
    if let Erasure::Fields(fields) = erasure {
        for name in fields {
            check_erasable(collection_name, collection, name, deleted)?;
        }
    }
    let mut values: HashMap<String, hydrate::Value> = root
        .iter()
        .filter(|(key, _)| key.as_str() != DELETED_KEY && kept(key))
        .map(|(key, value)| (key.clone(), value.value.clone()))
        .collect();
    if deleted || *erasure == Erasure::Record {
        values.insert(
            DELETED_KEY.to_owned(),
            hydrate::Value::Scalar(automerge::ScalarValue::Boolean(true)),
        );
    }
    let mut replaced = root_message(doc).unwrap_or_default();
    replaced.replaces.push(ReplacedEpoch {
        epoch,
        clock: clock_of(doc),
    });
    let message = serde_json::to_string(&replaced).expect("clocks serialize");
    let mut next = document::new_doc(actor);
    next.init_root_from_hydrate(&hydrate::Map::from(values))?;
    next.commit_with(
        CommitOptions::default()
            .with_time(time_ms)
            .with_message(message),
    );
    Ok(next)
}

/// Each actor's highest sequence number in `doc`.
fn clock_of(doc: &AutoCommit) -> Clock {
    let mut clock = Clock::new();
    for change in doc.clone().get_changes(&[]) {
        let seq = clock.entry(change.actor_id().to_hex_string()).or_default();
        *seq = (*seq).max(change.seq());
    }
    clock
}

/// What the root change of an epoch's document says it replaced; `None` for a record never
/// erased (or erased by a server from before clocks were kept).
fn root_message(doc: &AutoCommit) -> Option<Replaced> {
    let root = doc
        .clone()
        .get_changes(&[])
        .into_iter()
        .find(|change| change.deps().is_empty())?;
    serde_json::from_str(root.message()?).ok()
}

/// The clock of epoch `epoch`'s last document, as the epoch `doc` belongs to recorded it when
/// it replaced that one: a change made on epoch `epoch` with a sequence number up to its
/// actor's in the clock reached the server before the erasure. `None` if `doc` does not say.
pub fn replaced_clock(doc: &AutoCommit, epoch: u64) -> Option<Clock> {
    root_message(doc)?
        .replaces
        .into_iter()
        .find(|replaced| replaced.epoch == epoch)
        .map(|replaced| replaced.clock)
}

/// Whether field `name` may be erased from a record (live unless `deleted`).
fn check_erasable(
    collection_name: &str,
    collection: &Collection,
    name: &str,
    deleted: bool,
) -> Result<()> {
    let refused = |reason: &str| Error::CannotErase {
        collection: collection_name.to_owned(),
        field: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name == DELETED_KEY || name == collection.scope_field {
        return Err(refused("a record keeps its scope and its tombstone"));
    }
    match collection.fields.get(name) {
        Some(field) if field.required && !deleted => Err(refused(
            "it is required: set another value and erase the record's history, or erase the \
             whole record",
        )),
        Some(_) => Ok(()),
        // A key a newer app wrote may be erased too; a name in no schema is a typo.
        None => Err(Error::UnknownField {
            collection: collection_name.to_owned(),
            field: name.to_owned(),
        }),
    }
}

/// The value a device's unsent write gives a field once the record moved to a new epoch:
/// `base` is the field's value before the device's writes, `local` after them, `next` its
/// value in the new epoch. A scalar takes the device's value (its write came after `base`).
/// Text and nested values are merged three ways, as Automerge merges concurrent edits: what
/// the device inserted stays where its surrounding text still is, and what the new epoch
/// removed (an erased note) stays removed, so the device's own typing survives an erasure
/// of the note it typed into without bringing the erased text back.
pub fn rebase_value(field: &Field, base: &Value, local: &Value, next: &Value) -> Result<Value> {
    let merged_kind = matches!(field.field_type, FieldType::Text | FieldType::Json)
        && (local.is_string() || local.is_object() || local.is_array());
    if !merged_kind || local.is_null() {
        return Ok(local.clone());
    }
    const FIELD: &str = "value";
    let actor = |byte: u8| ActorId::from([byte; 16]);
    let empty = empty_like(local);
    let mut common = document::new_doc(&actor(1));
    document::put_field(
        &mut common,
        FIELD,
        field,
        if base.is_null() { &empty } else { base },
    )?;
    document::commit(&mut common, 0);
    let mut theirs = common.fork().with_actor(actor(2));
    let mut ours = common.with_actor(actor(3));
    document::put_field(&mut ours, FIELD, field, local)?;
    document::commit(&mut ours, 0);
    document::put_field(
        &mut theirs,
        FIELD,
        field,
        if next.is_null() { &empty } else { next },
    )?;
    document::commit(&mut theirs, 0);
    ours.merge(&mut theirs)?;
    let (fields, _) = document::document_values(&ours)?;
    Ok(fields.get(FIELD).cloned().unwrap_or(Value::Null))
}

/// An empty value of `value`'s kind: the absent side of a three-way merge, from which the
/// other side's insertions survive.
fn empty_like(value: &Value) -> Value {
    match value {
        Value::String(_) => Value::String(String::new()),
        Value::Array(_) => Value::Array(Vec::new()),
        _ => Value::Object(serde_json::Map::new()),
    }
}

/// The attachments (SHA-256) that `doc`'s attachment fields held at any point of its history
/// and that its next epoch `next` no longer references: the bytes an erasure leaves behind,
/// which go unless another record of the scope references them.
pub fn attachments_left_behind(
    doc: &mut AutoCommit,
    collection: &Collection,
    next: &AutoCommit,
) -> Result<BTreeSet<[u8; 32]>> {
    let attachment_fields: Vec<&str> = collection
        .fields
        .iter()
        .filter(|(_, field)| field.field_type == FieldType::Attachment)
        .map(|(name, _)| name.as_str())
        .collect();
    let held = |doc: &AutoCommit| -> Result<Vec<[u8; 32]>> {
        let (values, _) = document::document_values(doc)?;
        Ok(attachment_fields
            .iter()
            .filter_map(|name| values.get(*name))
            .filter_map(|value| AttachmentRef::from_value(value).ok())
            .map(|reference| reference.sha256)
            .collect())
    };
    let mut left = BTreeSet::new();
    if attachment_fields.is_empty() {
        return Ok(left);
    }
    for change in document::history(doc) {
        if !change
            .fields
            .iter()
            .any(|f| attachment_fields.contains(&f.as_str()))
        {
            continue;
        }
        let Ok(hash) = change.change_hash.parse::<automerge::ChangeHash>() else {
            continue;
        };
        let then = doc
            .fork_at(&[hash])
            .map_err(|_| Error::Corrupt("a change of the record's history is missing".into()))?;
        left.extend(held(&then)?);
    }
    for sha256 in held(next)? {
        left.remove(&sha256);
    }
    Ok(left)
}

/// Whether a record document's root holds `key`.
pub fn holds(doc: &AutoCommit, key: &str) -> bool {
    doc.get(ROOT, key).ok().flatten().is_some()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Schema;
    use crate::value::Fields;

    fn schema() -> Schema {
        Schema::from_json(
            r#"{"collections": {"sessions": {"scope_field": "caseload_id", "fields": {
                "caseload_id": {"type": "string", "required": true},
                "client": {"type": "string", "required": true},
                "minutes": {"type": "integer"},
                "note": {"type": "text"},
                "goals": {"type": "json"}}}}}"#,
        )
        .unwrap()
    }

    fn record(fields: Value) -> AutoCommit {
        let schema = schema();
        let collection = schema.collection("sessions").unwrap();
        let mut doc = document::new_doc(&ActorId::random());
        let fields: Fields = fields.as_object().unwrap().clone();
        document::init_fields(&mut doc, collection, &fields).unwrap();
        document::commit(&mut doc, 1);
        doc
    }

    fn values(doc: &AutoCommit) -> (Value, bool) {
        let (fields, deleted) = document::document_values(doc).unwrap();
        (Value::Object(fields), deleted)
    }

    fn saved_bytes_hold(doc: &mut AutoCommit, needle: &str) -> bool {
        let saved = doc.save_nocompress();
        saved.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn an_erased_field_leaves_neither_its_value_nor_its_history() {
        let schema = schema();
        let collection = schema.collection("sessions").unwrap();
        let mut doc = record(json!({"caseload_id": "north", "client": "Ada", "minutes": 30}));
        let note = collection.fields.get("note").unwrap();
        document::put_field(&mut doc, "note", note, &json!("CANARY-1 wrong child")).unwrap();
        document::commit(&mut doc, 2);
        document::put_field(&mut doc, "note", note, &json!("fixed")).unwrap();
        document::commit(&mut doc, 3);
        assert!(saved_bytes_hold(&mut doc, "CANARY-1"));

        let erasure = Erasure::Fields(["note".to_owned()].into());
        let mut next = next_epoch(
            &doc,
            ("sessions", collection),
            &erasure,
            0,
            &ActorId::random(),
            4,
        )
        .unwrap();
        assert_eq!(
            values(&next),
            (
                json!({"caseload_id": "north", "client": "Ada", "minutes": 30}),
                false
            )
        );
        assert!(!saved_bytes_hold(&mut next, "CANARY-1"));
        assert_eq!(next.get_changes(&[]).len(), 1, "one change, no history");
        crate::validate::validate_document(&schema, "sessions", "north", &next).unwrap();
    }

    #[test]
    fn history_erasure_keeps_current_values_and_record_erasure_keeps_the_scope() {
        let schema = schema();
        let collection = schema.collection("sessions").unwrap();
        let mut doc = record(json!({"caseload_id": "north", "client": "CANARY-2"}));
        let client = collection.fields.get("client").unwrap();
        document::put_field(&mut doc, "client", client, &json!("Ada")).unwrap();
        document::commit(&mut doc, 2);

        let actor = ActorId::random();
        let mut squashed = next_epoch(
            &doc,
            ("sessions", collection),
            &Erasure::History,
            0,
            &actor,
            3,
        )
        .unwrap();
        assert_eq!(
            values(&squashed),
            (json!({"caseload_id": "north", "client": "Ada"}), false)
        );
        assert!(!saved_bytes_hold(&mut squashed, "CANARY-2"));

        let mut erased = next_epoch(
            &doc,
            ("sessions", collection),
            &Erasure::Record,
            0,
            &actor,
            3,
        )
        .unwrap();
        assert_eq!(values(&erased), (json!({"caseload_id": "north"}), true));
        assert!(!saved_bytes_hold(&mut erased, "Ada"));
        crate::validate::validate_document(&schema, "sessions", "north", &erased).unwrap();
    }

    #[test]
    fn the_scope_field_and_required_fields_of_live_records_are_not_erased_alone() {
        let schema = schema();
        let collection = schema.collection("sessions").unwrap();
        let doc = record(json!({"caseload_id": "north", "client": "Ada"}));
        let actor = ActorId::random();
        for field in ["caseload_id", "client", "_deleted"] {
            let erasure = Erasure::Fields([field.to_owned()].into());
            let err =
                next_epoch(&doc, ("sessions", collection), &erasure, 0, &actor, 2).unwrap_err();
            assert!(matches!(err, Error::CannotErase { .. }), "{field}: {err}");
        }
        let erasure = Erasure::Fields(["nope".to_owned()].into());
        assert!(matches!(
            next_epoch(&doc, ("sessions", collection), &erasure, 0, &actor, 2),
            Err(Error::UnknownField { .. })
        ));
    }

    #[test]
    fn a_device_s_typing_survives_the_erasure_of_the_note_it_typed_into() {
        let schema = schema();
        let note = schema
            .collection("sessions")
            .unwrap()
            .fields
            .get("note")
            .unwrap();
        let base = json!("CANARY-3 about another child.");
        let local = json!("CANARY-3 about another child. Sam read well.");
        // The note was erased: the new epoch has none.
        let rebased = rebase_value(note, &base, &local, &Value::Null).unwrap();
        assert_eq!(rebased, json!(" Sam read well."));
        // Another field was erased: the note is the same in the new epoch.
        let rebased = rebase_value(note, &base, &local, &base).unwrap();
        assert_eq!(rebased, local);
        // The new epoch holds a later edit made elsewhere: both stay.
        let next = json!("Session one: CANARY-3 about another child.");
        let rebased = rebase_value(note, &base, &local, &next).unwrap();
        assert_eq!(
            rebased,
            json!("Session one: CANARY-3 about another child. Sam read well.")
        );
    }

    #[test]
    fn scalars_take_the_device_s_value_and_nested_values_merge_by_key() {
        let schema = schema();
        let collection = schema.collection("sessions").unwrap();
        let minutes = collection.fields.get("minutes").unwrap();
        assert_eq!(
            rebase_value(minutes, &json!(30), &json!(45), &Value::Null).unwrap(),
            json!(45)
        );
        let goals = collection.fields.get("goals").unwrap();
        let base = json!({"reading": "CANARY-4", "writing": "b"});
        let local = json!({"reading": "CANARY-4", "writing": "b", "maths": "new"});
        assert_eq!(
            rebase_value(goals, &base, &local, &Value::Null).unwrap(),
            json!({"maths": "new"})
        );
        assert_eq!(
            rebase_value(goals, &base, &Value::Null, &base).unwrap(),
            Value::Null,
            "a field the device cleared stays cleared"
        );
    }
}
