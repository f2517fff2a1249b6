//! The records API's writes as Automerge changes, made on top of the server's copy of the
//! record by the caller's actor: a record created, fields set (a text or JSON value diffed
//! against the current one, so that a therapist's offline edit elsewhere in the same note
//! still merges character by character), a record deleted. Each becomes a [`PushRecord`] that
//! is pushed as a device's would be (`push.rs`): checked against the schema, merged, added to
//! the feed and audited the same way. Nothing here does I/O.

use automerge::{ActorId, AutoCommit, ChangeHash};
use fieldsync_record::document;
use fieldsync_record::protocol::{Payload, PushRecord};
use fieldsync_record::schema::Collection;
use fieldsync_record::value::{Fields, check_insert, check_patch};
use serde_bytes::ByteBuf;

use crate::error::ServerError;
use crate::merge::load_document;
use crate::storage::StoredRecord;

/// A record to write: its collection's name and declaration, and its id.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The collection's name.
    pub collection: &'a str,
    /// Its declaration in the schema in force.
    pub decl: &'a Collection,
    /// The record's id.
    pub id: &'a str,
}

/// A new record with `fields`, as one change by `actor` at `now` (ms since the epoch).
pub fn create(
    target: Target<'_>,
    fields: &Fields,
    actor: &ActorId,
    now: i64,
) -> Result<PushRecord, ServerError> {
    fieldsync_record::ids::check_record_id(target.id).map_err(refused)?;
    check_insert(target.collection, target.decl, fields).map_err(refused)?;
    let scope = fields[&target.decl.scope_field]
        .as_str()
        .ok_or_else(|| {
            ServerError::BadRequest(format!(
                "field `{}` (the scope) must be a string",
                target.decl.scope_field
            ))
        })?
        .to_owned();
    let mut doc = document::new_doc(actor);
    document::init_fields(&mut doc, target.decl, fields).map_err(refused)?;
    document::commit(&mut doc, now);
    Ok(push_record(
        target,
        (scope, 0),
        changes_since(&mut doc, &[]),
    ))
}

/// `patch` applied to the stored record, as one change by `actor`; `None` when it sets
/// nothing.
pub fn update(
    target: Target<'_>,
    stored: &StoredRecord,
    patch: &Fields,
    actor: &ActorId,
    (now, max_inflated): (i64, usize),
) -> Result<Option<PushRecord>, ServerError> {
    check_patch(target.collection, target.decl, patch, &stored.scope).map_err(refused)?;
    let mut doc = load(stored, actor, max_inflated)?;
    let heads = doc.get_heads();
    for (name, value) in patch {
        let field = &target.decl.fields[name];
        document::put_field(&mut doc, name, field, value).map_err(refused)?;
    }
    if document::commit(&mut doc, now).is_none() {
        return Ok(None);
    }
    let changes = changes_since(&mut doc, &heads);
    Ok(Some(push_record(
        target,
        (stored.scope.clone(), stored.epoch),
        changes,
    )))
}

/// The stored record marked deleted, as one change by `actor`.
pub fn delete(
    target: Target<'_>,
    stored: &StoredRecord,
    actor: &ActorId,
    (now, max_inflated): (i64, usize),
) -> Result<PushRecord, ServerError> {
    let mut doc = load(stored, actor, max_inflated)?;
    let heads = doc.get_heads();
    document::mark_deleted(&mut doc).map_err(refused)?;
    document::commit(&mut doc, now);
    let changes = changes_since(&mut doc, &heads);
    Ok(push_record(
        target,
        (stored.scope.clone(), stored.epoch),
        changes,
    ))
}

fn load(
    stored: &StoredRecord,
    actor: &ActorId,
    max_inflated: usize,
) -> Result<AutoCommit, ServerError> {
    let mut doc = load_document(&stored.doc, max_inflated)
        .map_err(|_| ServerError::Corrupt("a stored record does not load".into()))?;
    doc.set_actor(actor.clone());
    Ok(doc)
}

fn changes_since(doc: &mut AutoCommit, heads: &[ChangeHash]) -> Vec<ByteBuf> {
    doc.get_changes(heads)
        .into_iter()
        .map(|change| ByteBuf::from(change.raw_bytes().to_vec()))
        .collect()
}

/// The write as a push of `changes` to the record in `scope`, made on its `epoch`.
fn push_record(
    target: Target<'_>,
    (scope, epoch): (String, u64),
    changes: Vec<ByteBuf>,
) -> PushRecord {
    PushRecord {
        collection: target.collection.to_owned(),
        id: target.id.to_owned(),
        scope,
        payload: Payload::Changes(changes),
        epoch,
    }
}

/// A write the schema refuses, named by field (never by value).
fn refused(err: fieldsync_record::Error) -> ServerError {
    ServerError::BadRequest(err.to_string())
}

#[cfg(test)]
mod tests {
    use fieldsync_record::Schema;
    use serde_json::json;

    use super::*;

    const SCHEMA: &str = r#"{"collections": {"notes": {"scope_field": "caseload_id",
        "fields": {"caseload_id": {"type": "string", "required": true},
                   "body": {"type": "text"}, "minutes": {"type": "integer"}}}}}"#;

    fn fields(value: serde_json::Value) -> Fields {
        value.as_object().unwrap().clone()
    }

    /// The record `changes` make, as the server would store it.
    fn stored(changes: &[&PushRecord]) -> StoredRecord {
        let mut doc = AutoCommit::new();
        for record in changes {
            let Payload::Changes(bytes) = &record.payload else {
                panic!("changes")
            };
            for change in bytes {
                doc.load_incremental(change).unwrap();
            }
        }
        StoredRecord {
            epoch: 0,
            scope: "north".into(),
            doc: doc.save(),
            fields_json: String::new(),
            deleted: false,
            lineage: None,
            version: Some(1),
        }
    }

    #[test]
    fn an_edit_of_a_note_merges_with_a_concurrent_one_character_by_character() {
        let schema = Schema::from_json(SCHEMA).unwrap();
        let decl = schema.collection("notes").unwrap();
        let target = Target {
            collection: "notes",
            decl,
            id: "n1",
        };
        let (office, phone) = (ActorId::random(), ActorId::random());
        let created = create(
            target,
            &fields(json!({"caseload_id": "north", "body": "Sam read well."})),
            &office,
            1,
        )
        .unwrap();
        let base = stored(&[&created]);
        let from_office = update(
            target,
            &base,
            &fields(json!({"body": "Sam read well today."})),
            &office,
            (2, usize::MAX),
        )
        .unwrap()
        .unwrap();
        let from_phone = update(
            target,
            &base,
            &fields(json!({"body": "Sam read very well."})),
            &phone,
            (3, usize::MAX),
        )
        .unwrap()
        .unwrap();
        let merged = AutoCommit::load(&stored(&[&created, &from_office, &from_phone]).doc).unwrap();
        let (values, _) = document::document_values(&merged).unwrap();
        assert_eq!(values["body"], json!("Sam read very well today."));
    }

    #[test]
    fn writes_the_schema_refuses_name_the_field() {
        let schema = Schema::from_json(SCHEMA).unwrap();
        let target = Target {
            collection: "notes",
            decl: schema.collection("notes").unwrap(),
            id: "n1",
        };
        let actor = ActorId::random();
        let unknown = create(
            target,
            &fields(json!({"caseload_id": "north", "mood": "secret value"})),
            &actor,
            1,
        );
        let Err(ServerError::BadRequest(message)) = unknown else {
            panic!("{unknown:?}")
        };
        assert!(
            message.contains("mood") && !message.contains("secret"),
            "{message}"
        );
        let missing = create(target, &fields(json!({"minutes": 3})), &actor, 1);
        assert!(matches!(&missing, Err(ServerError::BadRequest(m)) if m.contains("caseload_id")));
        let created = create(target, &fields(json!({"caseload_id": "north"})), &actor, 1).unwrap();
        let moved = update(
            target,
            &stored(&[&created]),
            &fields(json!({"caseload_id": "south"})),
            &actor,
            (2, usize::MAX),
        );
        assert!(
            matches!(moved, Err(ServerError::BadRequest(_))),
            "{moved:?}"
        );
        let mistyped = update(
            target,
            &stored(&[&created]),
            &fields(json!({"minutes": "many"})),
            &actor,
            (2, usize::MAX),
        );
        assert!(
            matches!(&mistyped, Err(ServerError::BadRequest(m)) if m.contains("minutes") && !m.contains("many"))
        );
    }
}
