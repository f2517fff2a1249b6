//! Field values: checking them against their declared type and turning them into SQLite
//! values for the materialized columns.
//!
//! Values travel as `serde_json::Value` so that the same shape crosses the FFI as JSON.

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::schema::{Field, FieldType};

/// A record's field values by field name.
pub type Fields = serde_json::Map<String, Value>;

/// Checks that a non-null `value` fits `field`; `Null` is handled by the callers because its
/// meaning (clear the field) depends on the operation.
pub(crate) fn check_type(collection: &str, name: &str, field: &Field, value: &Value) -> Result<()> {
    let ok = match field.field_type {
        FieldType::String | FieldType::Text | FieldType::Reference => value.is_string(),
        FieldType::Integer | FieldType::Timestamp => value.is_i64(),
        FieldType::Float => value.is_number(),
        FieldType::Boolean => value.is_boolean(),
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

/// The SQLite value stored in a materialized column (and bound in queries).
pub(crate) fn to_sql(field_type: FieldType, value: &Value) -> SqlValue {
    match (field_type, value) {
        (_, Value::Null) => SqlValue::Null,
        (FieldType::Json, other) => SqlValue::Text(other.to_string()),
        (_, Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
        (FieldType::Float, Value::Number(n)) => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
        (_, Value::Number(n)) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        (_, Value::String(s)) => SqlValue::Text(s.clone()),
        (_, other) => SqlValue::Text(other.to_string()),
    }
}

/// Like [`to_sql`], borrowing strings instead of copying them.
pub(crate) fn to_sql_output(field_type: FieldType, value: &Value) -> ToSqlOutput<'_> {
    match (field_type, value) {
        (FieldType::Json, _) | (_, Value::Null | Value::Bool(_) | Value::Number(_)) => {
            ToSqlOutput::Owned(to_sql(field_type, value))
        }
        (_, Value::String(s)) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        (_, other) => ToSqlOutput::Owned(to_sql(field_type, other)),
    }
}

/// Reads a materialized column back into a field value, copying only what the value keeps.
pub(crate) fn from_sql(field_type: FieldType, value: ValueRef<'_>) -> Result<Value> {
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| Error::Corrupt("a text column does not hold UTF-8".into()))
    };
    Ok(match (field_type, value) {
        (_, ValueRef::Null) => Value::Null,
        (FieldType::Boolean, ValueRef::Integer(i)) => Value::Bool(i != 0),
        (FieldType::Json, ValueRef::Text(s)) => serde_json::from_slice(s)
            .map_err(|_| Error::Corrupt("a json column does not hold JSON".into()))?,
        (FieldType::Float, ValueRef::Integer(i)) => Value::from(i as f64),
        (_, ValueRef::Integer(i)) => Value::from(i),
        (_, ValueRef::Real(f)) => Value::from(f),
        (_, ValueRef::Text(s)) => Value::String(text(s)?),
        (_, ValueRef::Blob(_)) => return Err(Error::Corrupt("unexpected blob column".into())),
    })
}

/// Orders two non-null values of the same field the way SQLite orders their columns.
pub(crate) fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
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
    }

    #[test]
    fn a_column_that_is_not_its_type_reads_as_corrupt() {
        for (field_type, raw) in [
            (FieldType::String, ValueRef::Text(b"\xff\xfe")),
            (FieldType::Json, ValueRef::Text(b"{not json")),
            (FieldType::String, ValueRef::Blob(b"x")),
        ] {
            assert!(matches!(from_sql(field_type, raw), Err(Error::Corrupt(_))));
        }
    }

    #[test]
    fn sql_values_round_trip() {
        let cases = [
            (FieldType::Boolean, json!(true)),
            (FieldType::Integer, json!(-7)),
            (FieldType::Float, json!(2.5)),
            (FieldType::String, json!("x")),
            (FieldType::Json, json!({"goals": ["a", "b"]})),
            (FieldType::Timestamp, json!(1_700_000_000_000i64)),
        ];
        for (field_type, value) in cases {
            assert_eq!(
                from_sql(field_type, (&to_sql(field_type, &value)).into()).unwrap(),
                value
            );
        }
    }
}
