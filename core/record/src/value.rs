//! Field values: checking a value against its declared type.
//!
//! Values travel as `serde_json::Value`, so that the same shape crosses the FFI and the wire
//! as JSON.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::schema::{Collection, Field, FieldType};

/// A record's field values by field name.
pub type Fields = serde_json::Map<String, Value>;

/// Checks that a non-null `value` fits `field`; `Null` is handled by the callers because its
/// meaning (clear the field) depends on the operation.
pub fn check_type(collection: &str, name: &str, field: &Field, value: &Value) -> Result<()> {
    let ok = match field.field_type {
        FieldType::String | FieldType::Text | FieldType::Reference => value.is_string(),
        FieldType::Integer | FieldType::Timestamp => value.is_i64(),
        FieldType::Float => value.is_number(),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Attachment => {
            return crate::attachment::AttachmentRef::from_value(value)
                .map(drop)
                .map_err(|problem| Error::InvalidAttachment {
                    collection: collection.to_owned(),
                    field: name.to_owned(),
                    problem,
                });
        }
        FieldType::Json => {
            if nests_deeper(value, crate::MAX_NESTING_DEPTH) {
                return Err(Error::NestingTooDeep {
                    field: name.to_owned(),
                    limit: crate::MAX_NESTING_DEPTH,
                });
            }
            true
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Error::WrongType {
            collection: collection.to_owned(),
            field: name.to_owned(),
            expected: field.field_type,
        })
    }
}

/// Whether maps and lists nest more than `levels` deep in `value`; stops looking at the limit,
/// so the recursion is bounded however deep the value is.
fn nests_deeper(value: &Value, levels: usize) -> bool {
    match value {
        Value::Array(items) => levels == 0 || items.iter().any(|v| nests_deeper(v, levels - 1)),
        Value::Object(map) => levels == 0 || map.values().any(|v| nests_deeper(v, levels - 1)),
        _ => false,
    }
}

/// A value as stored: a whole number given to a `float` field becomes a float.
pub fn normalize(field_type: FieldType, value: Value) -> Value {
    match (field_type, &value) {
        (FieldType::Float, Value::Number(n)) if !n.is_f64() => {
            n.as_f64().map_or(value, Value::from)
        }
        _ => value,
    }
}

/// Checks the fields of a new record of `collection`: each declared, of its type, and every
/// required one set.
pub fn check_insert(collection: &str, decl: &Collection, fields: &Fields) -> Result<()> {
    for (name, value) in fields {
        let field = decl.field(collection, name)?;
        if !value.is_null() {
            check_type(collection, name, field, value)?;
        }
    }
    for (name, field) in &decl.fields {
        if field.required && fields.get(name).is_none_or(Value::is_null) {
            return Err(Error::MissingField {
                collection: collection.to_owned(),
                field: name.clone(),
            });
        }
    }
    Ok(())
}

/// Checks the fields an update of a record of `collection` in `scope` sets: each declared,
/// of its type, no required one cleared, the scope field unchanged.
pub fn check_patch(collection: &str, decl: &Collection, patch: &Fields, scope: &str) -> Result<()> {
    for (name, value) in patch {
        let field = decl.field(collection, name)?;
        if value.is_null() {
            if field.required {
                return Err(Error::MissingField {
                    collection: collection.to_owned(),
                    field: name.clone(),
                });
            }
            continue;
        }
        check_type(collection, name, field, value)?;
        if *name == decl.scope_field && value.as_str() != Some(scope) {
            return Err(Error::ScopeChange {
                collection: collection.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(field_type: FieldType) -> Field {
        Field {
            field_type,
            required: false,
            target: None,
            on_delete: None,
            download: None,
        }
    }

    #[test]
    fn type_checks_follow_the_declaration() {
        assert!(check_type("c", "f", &field(FieldType::Integer), &json!(3)).is_ok());
        assert!(check_type("c", "f", &field(FieldType::Integer), &json!(3.5)).is_err());
        assert!(check_type("c", "f", &field(FieldType::Float), &json!(3)).is_ok());
        assert!(check_type("c", "f", &field(FieldType::Boolean), &json!("true")).is_err());
        assert!(check_type("c", "f", &field(FieldType::Text), &json!("note")).is_ok());
        assert!(check_type("c", "f", &field(FieldType::Json), &json!({"a": [1]})).is_ok());
        let photo = json!({"sha256": "ab".repeat(32), "size": 3, "media_type": "image/png"});
        assert!(check_type("c", "f", &field(FieldType::Attachment), &photo).is_ok());
        let err = check_type("c", "f", &field(FieldType::Attachment), &json!({"size": 3}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`c.f`") && err.contains("sha256"), "{err}");
    }
}
