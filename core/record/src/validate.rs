//! Whether a record document is valid under a schema: the one check devices run on a pulled
//! record and the server runs on a pushed one, so that neither stores what the other refuses.
//!
//! A valid record's collection is declared; each declared field that has a value has the
//! declared type (a `text` field is Automerge text, any other a scalar or, for `json`, nested
//! maps and lists no deeper than [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH)); every
//! required field of a live record has a value (a deleted one keeps at least its scope); the scope field holds the record's scope; and the tombstone
//! `_deleted`, where set, is a boolean. Keys the schema does not declare (written by a newer
//! app version) are kept and not checked.

use automerge::{AutoCommit, ROOT, ReadDoc, ScalarValue, Value as AmValue};
use serde_json::Value;

use crate::document::{self, DELETED_KEY, scalar_to_json};
use crate::error::{Error, Result};
use crate::schema::{FieldType, Schema};
use crate::value::{Fields, check_type};

/// Checks a whole record document of `collection_name` in `scope`; returns its declared
/// fields' values.
pub fn validate_document(
    schema: &Schema,
    collection_name: &str,
    scope: &str,
    doc: &AutoCommit,
) -> Result<Fields> {
    let collection = schema.collection(collection_name)?;
    let fields = document::materialize(doc, collection_name, collection)?;
    // A deleted record need not keep its required fields: an erased one keeps only its scope.
    let live = !document::is_deleted(doc);
    for (name, field) in &collection.fields {
        let must_hold = field.required && (live || name == &collection.scope_field);
        if must_hold && fields.get(name).is_none_or(Value::is_null) {
            return Err(Error::MissingField {
                collection: collection_name.to_owned(),
                field: name.clone(),
            });
        }
    }
    check_scope(collection_name, scope, &fields[&collection.scope_field])?;
    // Every concurrent value of the tombstone, not only the one that shows.
    for (value, _) in doc.get_all(ROOT, DELETED_KEY)? {
        if !matches!(&value, AmValue::Scalar(s) if matches!(s.as_ref(), ScalarValue::Boolean(_))) {
            return Err(wrong_tombstone(collection_name));
        }
    }
    Ok(fields)
}

/// Checks root keys set to scalars on top of a record that was valid, without its document:
/// the server's check of changes it appends to a stored record unread. `puts` are the keys
/// and the scalars that now show for them.
pub fn validate_scalar_puts<'a>(
    schema: &Schema,
    collection_name: &str,
    scope: &str,
    puts: impl IntoIterator<Item = (&'a str, &'a ScalarValue)>,
) -> Result<()> {
    let collection = schema.collection(collection_name)?;
    for (key, scalar) in puts {
        if key == DELETED_KEY {
            if !matches!(scalar, ScalarValue::Boolean(_)) {
                return Err(wrong_tombstone(collection_name));
            }
            continue;
        }
        let Some(field) = collection.fields.get(key) else {
            continue;
        };
        let value = scalar_to_json(scalar);
        if value.is_null() {
            if field.required {
                return Err(Error::MissingField {
                    collection: collection_name.to_owned(),
                    field: key.to_owned(),
                });
            }
            continue;
        }
        if field.field_type == FieldType::Text {
            return Err(Error::WrongType {
                collection: collection_name.to_owned(),
                field: key.to_owned(),
                expected: FieldType::Text,
            });
        }
        check_type(collection_name, key, field, &value)?;
        if key == collection.scope_field {
            check_scope(collection_name, scope, &value)?;
        }
    }
    Ok(())
}

fn check_scope(collection_name: &str, scope: &str, value: &Value) -> Result<()> {
    if value.as_str() == Some(scope) {
        Ok(())
    } else {
        Err(Error::ScopeChange {
            collection: collection_name.to_owned(),
        })
    }
}

fn wrong_tombstone(collection_name: &str) -> Error {
    Error::WrongType {
        collection: collection_name.to_owned(),
        field: DELETED_KEY.to_owned(),
        expected: FieldType::Boolean,
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ObjType};
    use serde_json::json;

    use super::*;

    fn schema() -> Schema {
        Schema::from_json(
            r#"{"collections": {"clients": {
                "scope_field": "caseload_id",
                "fields": {
                    "caseload_id": {"type": "string", "required": true},
                    "name": {"type": "string", "required": true},
                    "age": {"type": "integer"},
                    "notes": {"type": "text"}
                }
            }}}"#,
        )
        .unwrap()
    }

    fn valid_doc() -> AutoCommit {
        let mut doc = document::new_doc(&ActorId::random());
        doc.put(ROOT, "caseload_id", "north").unwrap();
        doc.put(ROOT, "name", "Ada").unwrap();
        let notes = doc.put_object(ROOT, "notes", ObjType::Text).unwrap();
        doc.splice_text(&notes, 0, 0, "First visit").unwrap();
        doc
    }

    fn rule(result: Result<impl std::fmt::Debug>) -> String {
        result.unwrap_err().record_rule().unwrap()
    }

    #[test]
    fn a_valid_record_gives_its_values_and_unknown_keys_are_kept_unchecked() {
        let mut doc = valid_doc();
        doc.put(ROOT, "added_by_a_newer_app", 3.5).unwrap();
        doc.put(ROOT, DELETED_KEY, true).unwrap();
        let fields = validate_document(&schema(), "clients", "north", &doc).unwrap();
        assert_eq!(fields["name"], json!("Ada"));
        assert_eq!(fields["notes"], json!("First visit"));
        assert!(!fields.contains_key("added_by_a_newer_app"));
    }

    #[test]
    fn each_rule_is_named_with_its_field_and_never_the_value() {
        let schema = schema();
        assert_eq!(
            rule(validate_document(&schema, "visits", "north", &valid_doc())),
            "collection `visits` is not declared"
        );
        assert_eq!(
            rule(validate_document(&schema, "clients", "south", &valid_doc())),
            "the scope field must hold the record's scope"
        );
        let mut missing = valid_doc();
        missing.delete(ROOT, "name").unwrap();
        assert_eq!(
            rule(validate_document(&schema, "clients", "north", &missing)),
            "field `name` is required"
        );
        let mut wrong = valid_doc();
        wrong.put(ROOT, "age", "Secret-Value").unwrap();
        let message = rule(validate_document(&schema, "clients", "north", &wrong));
        assert_eq!(message, "field `age` must be of type integer");
        let mut scalar_text = valid_doc();
        scalar_text.put(ROOT, "notes", "a scalar").unwrap();
        assert_eq!(
            rule(validate_document(&schema, "clients", "north", &scalar_text)),
            "field `notes` must be of type text"
        );
        let mut tombstone = valid_doc();
        tombstone.put(ROOT, DELETED_KEY, "yes").unwrap();
        assert_eq!(
            rule(validate_document(&schema, "clients", "north", &tombstone)),
            "field `_deleted` must be of type boolean"
        );
    }

    #[test]
    fn scalar_puts_follow_the_same_rules() {
        let schema = schema();
        let check = |key: &'static str, scalar: ScalarValue| {
            validate_scalar_puts(&schema, "clients", "north", [(key, &scalar)])
        };
        assert!(check("name", ScalarValue::Str("Bea".into())).is_ok());
        assert!(check("unknown", ScalarValue::F64(1.0)).is_ok());
        assert!(check("age", ScalarValue::Null).is_ok());
        assert!(check(DELETED_KEY, ScalarValue::Boolean(true)).is_ok());
        assert_eq!(
            rule(check("age", ScalarValue::Str("x".into()))),
            "field `age` must be of type integer"
        );
        assert_eq!(
            rule(check("name", ScalarValue::Null)),
            "field `name` is required"
        );
        assert_eq!(
            rule(check("notes", ScalarValue::Str("x".into()))),
            "field `notes` must be of type text"
        );
        assert_eq!(
            rule(check("caseload_id", ScalarValue::Str("south".into()))),
            "the scope field must hold the record's scope"
        );
        assert_eq!(
            rule(check(DELETED_KEY, ScalarValue::Str("yes".into()))),
            "field `_deleted` must be of type boolean"
        );
    }
}
