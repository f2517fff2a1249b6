//! One record as one Automerge document: writing fields into it, reading the materialized
//! values out of it, and explaining its conflicts and history.
//!
//! Layout of a record document: each declared field is a key of the root map. Scalar fields are
//! Automerge scalars, `text` fields are Automerge text objects (merged character by character),
//! `json` fields are nested maps and lists (merged key by key). The reserved root key
//! `_deleted` holds the tombstone; it is only ever set to `true`, so once any device's delete is
//! merged the record stays deleted ("delete wins").
//!
//! Text positions count UTF-16 code units, the unit Kotlin, Swift (`String.utf16`, `NSRange`)
//! and JavaScript strings index by.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU64;
use std::panic::catch_unwind;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ExpandedChange, LoadOptions, ObjId, ObjType, ROOT,
    ReadDoc, ScalarValue, TextEncoding, Value as AmValue, hydrate, legacy,
};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::Author;
use crate::schema::{Collection, Field, FieldType};
use crate::value::Fields;

/// The unit of every text position in the public API.
pub const TEXT_ENCODING: TextEncoding = TextEncoding::Utf16CodeUnit;

/// The reserved root key of a record document that holds its tombstone.
pub const DELETED_KEY: &str = "_deleted";

/// How deeply maps and lists may nest in one field value (a map is one level, a list in it
/// two). Deeper values are refused, written locally or merged from elsewhere: reading a value
/// out recurses once per level, and a record nested thousands deep would overflow the stack of
/// whichever thread reads it.
pub const MAX_NESTING_DEPTH: usize = 100;

/// A fresh, empty record document written by `actor`.
pub fn new_doc(actor: &ActorId) -> AutoCommit {
    AutoCommit::new_with_encoding(TEXT_ENCODING).with_actor(actor.clone())
}

/// Loads stored document bytes (a full save or a first change, optionally followed by more
/// changes).
pub fn load_doc(bytes: &[u8], actor: &ActorId) -> Result<AutoCommit> {
    let corrupt = || Error::Corrupt("a record document does not load".into());
    // Stored bytes can be damaged on disk, and Automerge panics on some malformed input.
    let loaded = catch_unwind(|| {
        AutoCommit::load_with_options(bytes, LoadOptions::new().text_encoding(TEXT_ENCODING))
    });
    let doc = loaded.map_err(|_| corrupt())?.map_err(|_| corrupt())?;
    Ok(doc.with_actor(actor.clone()))
}

/// Commits the pending operations as one change stamped with `time_ms`.
pub fn commit(doc: &mut AutoCommit, time_ms: i64) -> Option<ChangeHash> {
    doc.commit_with(CommitOptions::default().with_time(time_ms))
}

/// Writes the fields of a new record in one batch operation (much cheaper than one put each).
pub fn init_fields(doc: &mut AutoCommit, collection: &Collection, fields: &Fields) -> Result<()> {
    let mut root = HashMap::with_capacity(fields.len());
    for (name, value) in fields {
        if value.is_null() {
            continue;
        }
        let field = &collection.fields[name];
        root.insert(name.clone(), to_hydrate(field.field_type, value));
    }
    doc.init_root_from_hydrate(&hydrate::Map::from(root))?;
    Ok(())
}

/// The first change of a new record whose fields are all scalars, encoded directly: the change
/// [`new_doc`], [`init_fields`] and [`commit`] make (one put per field at the root, seq 1, no
/// dependencies), without building a document, which costs more than ten times as much.
/// `None` when a field is text or a nested value, or none is set.
pub fn first_change_of_scalars(
    actor: &ActorId,
    collection: &Collection,
    fields: &Fields,
    time_ms: i64,
) -> Option<Vec<u8>> {
    let mut operations = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        if value.is_null() {
            continue;
        }
        let field_type = collection.fields[name].field_type;
        // Checked before converting: a long note would be converted for nothing.
        if field_type == FieldType::Text || value.is_array() || value.is_object() {
            return None;
        }
        let hydrate::Value::Scalar(scalar) = to_hydrate(field_type, value) else {
            return None;
        };
        operations.push(legacy::Op {
            action: legacy::OpType::Put(scalar),
            obj: legacy::ObjectId::Root,
            key: legacy::Key::Map(name.as_str().into()),
            pred: Vec::new().into(),
            insert: false,
        });
    }
    if operations.is_empty() {
        return None;
    }
    let change = ExpandedChange {
        operations,
        actor_id: actor.clone(),
        hash: None,
        seq: 1,
        start_op: NonZeroU64::MIN,
        time: time_ms,
        message: None,
        deps: Vec::new(),
        extra_bytes: Vec::new(),
        author: None,
    };
    Some(Change::from(change).raw_bytes().to_vec())
}

/// Sets one field, diffing text and json values against the current ones so that concurrent
/// edits elsewhere in the same text or object still merge.
pub fn put_field(doc: &mut AutoCommit, name: &str, field: &Field, value: &Value) -> Result<()> {
    if value.is_null() {
        doc.delete(ROOT, name)?;
        return Ok(());
    }
    let new_value = to_hydrate(field.field_type, value);
    if let hydrate::Value::Scalar(scalar) = new_value {
        doc.put(ROOT, name, scalar)?;
        return Ok(());
    }
    let existing_object = match doc.get(ROOT, name)? {
        Some((AmValue::Object(obj_type), id)) => Some((obj_type, id)),
        _ => None,
    };
    match (existing_object, &new_value) {
        (Some((ObjType::Text, id)), hydrate::Value::Text(_))
        | (Some((ObjType::Map, id)), hydrate::Value::Map(_))
        | (Some((ObjType::List, id)), hydrate::Value::List(_)) => {
            doc.update_object(&id, &new_value)
                .map_err(|_| Error::Corrupt("a field object could not be updated".into()))?;
        }
        _ => {
            doc.batch_create_object(ROOT, name, &new_value, false)?;
        }
    }
    Ok(())
}

/// Edits a text field in place: at `index`, delete `delete_count` units and insert `insert`.
/// Returns the text after the edit.
pub fn splice_text(
    doc: &mut AutoCommit,
    collection_name: &str,
    name: &str,
    index: usize,
    delete_count: usize,
    insert: &str,
) -> Result<String> {
    let text = text(doc, name)?;
    let edit = TextEdit::check(&text, collection_name, name, index, delete_count)?;
    splice_text_checked(doc, name, index, delete_count, insert)?;
    Ok(edit.apply(&text, insert))
}

/// Applies a splice already checked against the field's current text with [`TextEdit::check`]
/// (replaying edits whose text was checked when they were made).
pub fn splice_text_checked(
    doc: &mut AutoCommit,
    name: &str,
    index: usize,
    delete_count: usize,
    insert: &str,
) -> Result<()> {
    let text_id = match doc.get(ROOT, name)? {
        Some((AmValue::Object(ObjType::Text), id)) => id,
        _ => doc.put_object(ROOT, name, ObjType::Text)?,
    };
    let delete = isize::try_from(delete_count)
        .map_err(|_| Error::Corrupt("a text edit deletes too much".into()))?;
    doc.splice_text(&text_id, index, delete, insert)?;
    Ok(())
}

/// The current text of a text field (empty when unset).
pub fn text(doc: &AutoCommit, name: &str) -> Result<String> {
    Ok(match doc.get(ROOT, name)? {
        Some((AmValue::Object(ObjType::Text), id)) => doc.text(&id)?,
        _ => String::new(),
    })
}

/// A splice of a text field checked against its current text: the bytes it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextEdit {
    /// Where the deleted units start and end, in bytes of the text.
    pub bytes: std::ops::Range<usize>,
}

impl TextEdit {
    /// Checks a splice at UTF-16 position `index` deleting `delete_count` units of `text`:
    /// the range must lie within the text and not cut a surrogate pair in two. Costs one pass
    /// over the text up to the range's end, and no allocation.
    pub fn check(
        text: &str,
        collection_name: &str,
        name: &str,
        index: usize,
        delete_count: usize,
    ) -> Result<TextEdit> {
        let invalid = |reason: String| Error::InvalidTextEdit {
            collection: collection_name.to_owned(),
            field: name.to_owned(),
            reason,
        };
        let outside = || {
            let length: usize = text.chars().map(char::len_utf16).sum();
            invalid(format!(
                "range {index}+{delete_count} is outside a text of {length} UTF-16 units"
            ))
        };
        let end = index.checked_add(delete_count).ok_or_else(outside)?;
        let (start, reached) = utf16_to_byte(text, index).ok_or_else(outside)?;
        let (length, reached_end) =
            utf16_to_byte(&text[start..], end.saturating_sub(reached)).ok_or_else(outside)?;
        // A splice that would cut a surrogate pair in two is refused rather than corrupting text.
        if reached != index {
            return Err(invalid(format!("position {index} splits a surrogate pair")));
        }
        if reached + reached_end != end {
            return Err(invalid(format!("position {end} splits a surrogate pair")));
        }
        Ok(TextEdit {
            bytes: start..start + length,
        })
    }

    /// The text after the edit, inserting `insert`.
    pub fn apply(&self, text: &str, insert: &str) -> String {
        let mut edited = String::with_capacity(text.len() - self.bytes.len() + insert.len());
        edited.push_str(&text[..self.bytes.start]);
        edited.push_str(insert);
        edited.push_str(&text[self.bytes.end..]);
        edited
    }
}

/// The byte offset in `text` of UTF-16 position `units`, with the position actually reached:
/// one past `units` when it falls inside a surrogate pair. `None` past the end.
fn utf16_to_byte(text: &str, units: usize) -> Option<(usize, usize)> {
    let mut counted = 0;
    for (byte, c) in text.char_indices() {
        if counted >= units {
            return Some((byte, counted));
        }
        counted += c.len_utf16();
    }
    (counted >= units).then_some((text.len(), counted))
}

/// Marks the record deleted. The key is never set back, so the delete wins every merge.
pub fn mark_deleted(doc: &mut AutoCommit) -> Result<()> {
    doc.put(ROOT, DELETED_KEY, true)?;
    Ok(())
}

/// Whether any merged change deleted the record.
pub fn is_deleted(doc: &AutoCommit) -> bool {
    doc.get_all(ROOT, DELETED_KEY)
        .map(|values| {
            values
                .iter()
                .any(|(value, _)| matches!(value, AmValue::Scalar(s) if s.as_ref() == &ScalarValue::Boolean(true)))
        })
        .unwrap_or(false)
}

/// The declared fields' current values, checked against their declared types. Keys the schema
/// does not declare (written by a newer app version) are kept in the document but not shown.
pub fn materialize(
    doc: &AutoCommit,
    collection_name: &str,
    collection: &Collection,
) -> Result<Fields> {
    let mut fields = Fields::new();
    for (name, field) in &collection.fields {
        let Some((value, id)) = doc.get(ROOT, name.as_str())? else {
            continue;
        };
        let json = read_value(doc, name, value, &id, 0)?;
        if !json.is_null() {
            crate::value::check_type(collection_name, name, field, &json)?;
            if field.field_type == FieldType::Text
                && !matches!(doc.object_type(&id), Ok(ObjType::Text))
            {
                return Err(Error::WrongType {
                    collection: collection_name.to_owned(),
                    field: name.clone(),
                    expected: FieldType::Text,
                });
            }
        }
        fields.insert(name.clone(), json);
    }
    Ok(fields)
}

/// Every root key of a document as JSON (text as strings, maps and lists nested), without the
/// tombstone, and whether the document is deleted. Needs no schema: the server uses it to send
/// materialized values with whole documents.
pub fn document_values(doc: &AutoCommit) -> Result<(Fields, bool)> {
    let mut fields = Fields::new();
    for item in doc.map_range(ROOT, ..) {
        if item.key == DELETED_KEY {
            continue;
        }
        let id = item.id();
        let value = read_value(doc, &item.key, item.value.into(), &id, 0)?;
        fields.insert(item.key.to_string(), value);
    }
    Ok((fields, is_deleted(doc)))
}

/// One field on which concurrent writes happened.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FieldConflict {
    /// The field name.
    pub field: String,
    /// The value every device shows (Automerge's deterministic winner).
    pub winner: ConflictValue,
    /// The values that lost, one per concurrent write.
    pub losers: Vec<ConflictValue>,
}

/// One of the concurrent values of a field, and the device that wrote it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConflictValue {
    /// The value.
    pub value: Value,
    /// The device id (Automerge actor, hex) that wrote it.
    pub device_id: String,
    /// The person and device behind `device_id`, once a server has named them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
}

/// Every declared field that holds concurrent values.
pub fn conflicts(doc: &AutoCommit, collection: &Collection) -> Result<Vec<FieldConflict>> {
    let mut conflicts = Vec::new();
    for name in collection.fields.keys() {
        let all = doc.get_all(ROOT, name.as_str())?;
        if all.len() < 2 {
            continue;
        }
        let Some((_, winner_id)) = doc.get(ROOT, name.as_str())? else {
            continue;
        };
        let mut winner = None;
        let mut losers = Vec::new();
        for (value, id) in all {
            let entry = ConflictValue {
                value: read_value(doc, name, value, &id, 0)?,
                device_id: actor_of(&id),
                author: None,
            };
            if id == winner_id {
                winner = Some(entry);
            } else {
                losers.push(entry);
            }
        }
        if let Some(winner) = winner {
            conflicts.push(FieldConflict {
                field: name.clone(),
                winner,
                losers,
            });
        }
    }
    Ok(conflicts)
}

/// One change in a record's history.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// The change hash (hex), unique across all devices.
    pub change_hash: String,
    /// The device id (Automerge actor, hex) that made the change.
    pub device_id: String,
    /// When the device made the change, in milliseconds since the Unix epoch (device clock).
    pub timestamp_ms: i64,
    /// The fields the change wrote, sorted.
    pub fields: Vec<String>,
    /// Whether this change deleted the record.
    pub deleted: bool,
    /// The person and device behind `device_id`, once a server has named them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
}

/// Every change of the document in causal order, with the fields each one touched.
pub fn history(doc: &mut AutoCommit) -> Vec<HistoryEntry> {
    use automerge::legacy::{Key, ObjectId, OpType};
    // Objects (texts, nested json) belong to the root field that created them.
    let mut owner: HashMap<ObjectId, String> = HashMap::new();
    let mut entries = Vec::new();
    for change in doc.get_changes(&[]) {
        let expanded = change.decode();
        let mut fields = BTreeSet::new();
        let mut deleted = false;
        // Operation ids are consecutive from the change's start op.
        for (op_counter, op) in (expanded.start_op.get()..).zip(&expanded.operations) {
            let field = match (&op.obj, &op.key) {
                (ObjectId::Root, Key::Map(key)) => Some(key.to_string()),
                (obj, _) => owner.get(obj).cloned(),
            };
            if let Some(field) = field {
                if field == DELETED_KEY {
                    deleted = true;
                } else {
                    if matches!(op.action, OpType::Make(_)) {
                        let id = automerge::legacy::OpId(op_counter, expanded.actor_id.clone());
                        owner.insert(ObjectId::Id(id), field.clone());
                    }
                    fields.insert(field);
                }
            }
        }
        entries.push(HistoryEntry {
            change_hash: change.hash().to_string(),
            device_id: change.actor_id().to_hex_string(),
            timestamp_ms: change.timestamp(),
            fields: fields.into_iter().collect(),
            deleted,
            author: None,
        });
    }
    entries
}

fn actor_of(id: &ObjId) -> String {
    match id {
        ObjId::Id(_, actor, _) => actor.to_hex_string(),
        ObjId::Root => String::new(),
    }
}

/// The value of field `field` as JSON; `depth` counts the objects around it.
fn read_value(
    doc: &AutoCommit,
    field: &str,
    value: AmValue<'_>,
    id: &ObjId,
    depth: usize,
) -> Result<Value> {
    if matches!(value, AmValue::Object(_)) && depth >= MAX_NESTING_DEPTH {
        return Err(Error::NestingTooDeep {
            field: field.to_owned(),
            limit: MAX_NESTING_DEPTH,
        });
    }
    Ok(match value {
        AmValue::Scalar(scalar) => scalar_to_json(&scalar),
        AmValue::Object(ObjType::Text) => Value::String(doc.text(id)?),
        AmValue::Object(ObjType::Map | ObjType::Table) => {
            let mut map = serde_json::Map::new();
            for item in doc.map_range(id, ..) {
                let id = item.id();
                let value = read_value(doc, field, item.value.into(), &id, depth + 1)?;
                map.insert(item.key.to_string(), value);
            }
            Value::Object(map)
        }
        AmValue::Object(ObjType::List) => {
            let mut list = Vec::new();
            for item in doc.list_range(id, ..) {
                let id = item.id();
                list.push(read_value(doc, field, item.value.into(), &id, depth + 1)?);
            }
            Value::Array(list)
        }
    })
}

/// An Automerge scalar as a record's values show it (the server derives values from changes
/// with it too, so both agree).
pub fn scalar_to_json(scalar: &ScalarValue) -> Value {
    match scalar {
        ScalarValue::Str(s) => Value::String(s.to_string()),
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Value::from(*i),
        ScalarValue::Uint(u) => Value::from(*u),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        ScalarValue::Counter(c) => Value::from(i64::from(c)),
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Null | ScalarValue::Bytes(_) | ScalarValue::Unknown { .. } => Value::Null,
    }
}

pub(crate) fn to_hydrate(field_type: FieldType, value: &Value) -> hydrate::Value {
    match (field_type, value) {
        (FieldType::Text, Value::String(s)) => hydrate::Value::text(TEXT_ENCODING, s),
        (FieldType::Timestamp, Value::Number(n)) => {
            hydrate::Value::scalar(ScalarValue::Timestamp(n.as_i64().unwrap_or_default()))
        }
        (FieldType::Float, Value::Number(n)) => {
            hydrate::Value::scalar(ScalarValue::F64(n.as_f64().unwrap_or_default()))
        }
        (_, value) => json_to_hydrate(value),
    }
}

fn json_to_hydrate(value: &Value) -> hydrate::Value {
    match value {
        Value::Null => hydrate::Value::scalar(ScalarValue::Null),
        Value::Bool(b) => hydrate::Value::scalar(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => hydrate::Value::scalar(i),
            (None, Some(u)) => hydrate::Value::scalar(u),
            _ => hydrate::Value::scalar(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => hydrate::Value::scalar(ScalarValue::Str(s.as_str().into())),
        Value::Array(items) => items.iter().map(json_to_hydrate).collect::<Vec<_>>().into(),
        Value::Object(map) => {
            let map: HashMap<String, hydrate::Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_hydrate(v)))
                .collect();
            hydrate::Map::from(map).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::schema::Schema;

    fn collection() -> Collection {
        let schema = Schema::from_json(
            r#"{"collections": {"visits": {
                "scope_field": "caseload_id",
                "fields": {
                    "caseload_id": {"type": "string", "required": true},
                    "client_id": {"type": "reference", "target": "visits"},
                    "count": {"type": "integer"},
                    "score": {"type": "float"},
                    "done": {"type": "boolean"},
                    "at": {"type": "timestamp"},
                    "extra": {"type": "json"},
                    "notes": {"type": "text"}
                }
            }}}"#,
        )
        .unwrap();
        schema.collection("visits").unwrap().clone()
    }

    fn fields(value: Value) -> Fields {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_first_change_of_scalars_is_the_change_a_document_makes() {
        let collection = collection();
        let actor = ActorId::random();
        let values = fields(json!({
            "caseload_id": "north", "client_id": "c-1", "count": -3, "score": 2,
            "done": true, "at": 1_700_000_000_000i64, "extra": "plain", "notes": null
        }));
        let fast = first_change_of_scalars(&actor, &collection, &values, 42).unwrap();
        let mut doc = new_doc(&actor);
        init_fields(&mut doc, &collection, &values).unwrap();
        commit(&mut doc, 42);
        let made = doc.get_changes(&[])[0].clone();

        let change = Change::try_from(fast.as_slice()).unwrap();
        assert_eq!(change.actor_id(), made.actor_id());
        assert_eq!(
            (
                change.seq(),
                change.start_op(),
                change.max_op(),
                change.timestamp()
            ),
            (made.seq(), made.start_op(), made.max_op(), made.timestamp())
        );
        assert!(change.deps().is_empty());
        let loaded = load_doc(&fast, &actor).unwrap();
        assert_eq!(
            document_values(&loaded).unwrap(),
            document_values(&doc).unwrap()
        );
        // Automerge's own types, not only the values read back.
        for key in ["score", "at", "count", "done"] {
            assert_eq!(
                loaded.get(ROOT, key).unwrap().unwrap().0,
                doc.get(ROOT, key).unwrap().unwrap().0,
                "{key}"
            );
        }
    }

    #[test]
    fn text_and_nested_values_are_not_encoded_directly() {
        let collection = collection();
        let actor = ActorId::random();
        for values in [
            json!({"caseload_id": "north", "notes": "a note"}),
            json!({"caseload_id": "north", "extra": {"a": 1}}),
            json!({"caseload_id": "north", "extra": [1]}),
            json!({"caseload_id": null}),
        ] {
            assert!(first_change_of_scalars(&actor, &collection, &fields(values), 1).is_none());
        }
    }
}
