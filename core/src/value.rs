//! Field values as SQLite values, for the materialized columns (their type checks are the
//! record engine's, `fieldsync_record::value`).

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::schema::FieldType;

pub use fieldsync_record::value::Fields;
pub(crate) use fieldsync_record::value::{check_insert, check_patch, check_type, normalize};

/// The SQLite value stored in a materialized column (and bound in queries).
pub(crate) fn to_sql(field_type: FieldType, value: &Value) -> SqlValue {
    match (field_type, value) {
        (_, Value::Null) => SqlValue::Null,
        (FieldType::Json | FieldType::Attachment, other) => SqlValue::Text(other.to_string()),
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
        (FieldType::Json | FieldType::Attachment, _)
        | (_, Value::Null | Value::Bool(_) | Value::Number(_)) => {
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
        (FieldType::Json | FieldType::Attachment, ValueRef::Text(s)) => {
            serde_json::from_slice(s)
                .map_err(|_| Error::Corrupt("a json column does not hold JSON".into()))?
        }
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
