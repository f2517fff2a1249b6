//! Queries over the materialized values: filters, ordering and paging, compiled to SQL with
//! every value bound as a parameter.
//!
//! Field names reach the SQL text only after they were checked against the schema, whose names
//! are restricted to `[a-z][a-z0-9_]*` and always quoted; values never do.

use rusqlite::types::Value as SqlValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::schema::{Collection, FieldType};
use crate::value::{self, Fields};

/// A condition on a record's fields. Serialized as JSON with an `op` tag, for example
/// `{"op": "eq", "field": "name", "value": "Ada"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Filter {
    /// Every record.
    #[default]
    All,
    /// The field equals the value.
    Eq {
        /// Field name.
        field: String,
        /// Value compared with.
        value: Value,
    },
    /// The field differs from the value; records where the field is unset match too.
    Ne {
        /// Field name.
        field: String,
        /// Value compared with.
        value: Value,
    },
    /// The field is less than the value.
    Lt {
        /// Field name.
        field: String,
        /// Value compared with.
        value: Value,
    },
    /// The field is less than or equal to the value.
    Lte {
        /// Field name.
        field: String,
        /// Value compared with.
        value: Value,
    },
    /// The field is greater than the value.
    Gt {
        /// Field name.
        field: String,
        /// Value compared with.
        value: Value,
    },
    /// The field is greater than or equal to the value.
    Gte {
        /// Field name.
        field: String,
        /// Value compared with.
        value: Value,
    },
    /// The field equals one of the values.
    In {
        /// Field name.
        field: String,
        /// Values compared with.
        values: Vec<Value>,
    },
    /// The string field starts with the prefix (case-sensitive).
    Prefix {
        /// Field name.
        field: String,
        /// The prefix.
        prefix: String,
    },
    /// The field is unset.
    IsNull {
        /// Field name.
        field: String,
    },
    /// The field is set.
    IsNotNull {
        /// Field name.
        field: String,
    },
    /// Every filter matches.
    And {
        /// The conditions.
        filters: Vec<Filter>,
    },
    /// At least one filter matches.
    Or {
        /// The conditions.
        filters: Vec<Filter>,
    },
}

/// One ordering key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// Field name.
    pub field: String,
    /// Largest first when true.
    #[serde(default)]
    pub descending: bool,
}

/// A filter with ordering and paging. Records with equal ordering keys come in id order, so
/// paging is stable.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Which records.
    #[serde(default)]
    pub filter: Filter,
    /// In which order.
    #[serde(default)]
    pub order: Vec<Order>,
    /// At most this many.
    #[serde(default)]
    pub limit: Option<u64>,
    /// After skipping this many.
    #[serde(default)]
    pub offset: u64,
}

impl Filter {
    /// `field == value`.
    pub fn eq(field: &str, value: impl Into<Value>) -> Filter {
        Filter::Eq {
            field: field.into(),
            value: value.into(),
        }
    }

    /// All of `filters`.
    pub fn and(filters: impl IntoIterator<Item = Filter>) -> Filter {
        Filter::And {
            filters: filters.into_iter().collect(),
        }
    }

    /// Whether `fields` satisfy the filter, with the same meaning as the SQL it compiles to.
    pub(crate) fn matches(&self, fields: &Fields) -> bool {
        use std::cmp::Ordering::*;
        let get = |field: &str| fields.get(field).filter(|v| !v.is_null());
        let cmp = |field: &str, value: &Value| get(field).and_then(|f| value::compare(f, value));
        match self {
            Filter::All => true,
            Filter::Eq { field, value } => cmp(field, value) == Some(Equal),
            Filter::Ne { field, value } => cmp(field, value) != Some(Equal),
            Filter::Lt { field, value } => cmp(field, value) == Some(Less),
            Filter::Lte { field, value } => matches!(cmp(field, value), Some(Less | Equal)),
            Filter::Gt { field, value } => cmp(field, value) == Some(Greater),
            Filter::Gte { field, value } => matches!(cmp(field, value), Some(Greater | Equal)),
            Filter::In { field, values } => values.iter().any(|v| cmp(field, v) == Some(Equal)),
            Filter::Prefix { field, prefix } => get(field)
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(prefix.as_str())),
            Filter::IsNull { field } => get(field).is_none(),
            Filter::IsNotNull { field } => get(field).is_some(),
            Filter::And { filters } => filters.iter().all(|f| f.matches(fields)),
            Filter::Or { filters } => filters.iter().any(|f| f.matches(fields)),
        }
    }
}

/// A compiled `WHERE` clause and its parameters.
pub(crate) struct SqlFilter {
    pub sql: String,
    pub params: Vec<SqlValue>,
}

/// Compiles `filter` for `collection`, refusing unknown fields and values of the wrong type.
pub(crate) fn compile_filter(
    name: &str,
    collection: &Collection,
    filter: &Filter,
) -> Result<SqlFilter> {
    let mut out = SqlFilter {
        sql: String::new(),
        params: Vec::new(),
    };
    write_filter(name, collection, filter, &mut out)?;
    Ok(out)
}

/// Compiles `order` into an `ORDER BY` list ending with the id for stable paging.
pub(crate) fn compile_order(
    name: &str,
    collection: &Collection,
    order: &[Order],
) -> Result<String> {
    let mut sql = String::new();
    for key in order {
        queryable_type(name, collection, &key.field)?;
        let direction = if key.descending { "DESC" } else { "ASC" };
        sql.push_str(&format!("\"{}\" {direction}, ", key.field));
    }
    sql.push_str("_id ASC");
    Ok(sql)
}

fn write_filter(
    name: &str,
    collection: &Collection,
    filter: &Filter,
    out: &mut SqlFilter,
) -> Result<()> {
    let comparison = |field: &str, op: &str, value: &Value, out: &mut SqlFilter| {
        let field_type = queryable_type(name, collection, field)?;
        out.params.push(bind(name, field, field_type, value)?);
        out.sql
            .push_str(&format!("\"{field}\" {op} ?{}", out.params.len()));
        Ok::<(), Error>(())
    };
    match filter {
        Filter::All => out.sql.push('1'),
        Filter::Eq { field, value } => comparison(field, "=", value, out)?,
        Filter::Ne { field, value } => comparison(field, "IS NOT", value, out)?,
        Filter::Lt { field, value } => comparison(field, "<", value, out)?,
        Filter::Lte { field, value } => comparison(field, "<=", value, out)?,
        Filter::Gt { field, value } => comparison(field, ">", value, out)?,
        Filter::Gte { field, value } => comparison(field, ">=", value, out)?,
        Filter::In { field, values } => {
            let field_type = queryable_type(name, collection, field)?;
            if values.is_empty() {
                out.sql.push('0');
                return Ok(());
            }
            let mut placeholders = Vec::with_capacity(values.len());
            for value in values {
                out.params.push(bind(name, field, field_type, value)?);
                placeholders.push(format!("?{}", out.params.len()));
            }
            out.sql
                .push_str(&format!("\"{field}\" IN ({})", placeholders.join(", ")));
        }
        Filter::Prefix { field, prefix } => {
            let field_type = queryable_type(name, collection, field)?;
            if !matches!(
                field_type,
                FieldType::String | FieldType::Text | FieldType::Reference
            ) {
                return Err(Error::InvalidQuery(format!(
                    "prefix needs a string field, not `{field}`"
                )));
            }
            // A range on the raw bytes, so that an index on the field serves it: every string
            // with the prefix P lies in [P, successor(P)).
            out.params.push(SqlValue::Text(prefix.clone()));
            out.sql
                .push_str(&format!("(\"{field}\" >= ?{}", out.params.len()));
            match prefix_successor(prefix) {
                Some(upper) => {
                    out.params.push(SqlValue::Text(upper));
                    out.sql
                        .push_str(&format!(" AND \"{field}\" < ?{})", out.params.len()));
                }
                None => out.sql.push(')'),
            }
        }
        Filter::IsNull { field } => {
            queryable_type(name, collection, field)?;
            out.sql.push_str(&format!("\"{field}\" IS NULL"));
        }
        Filter::IsNotNull { field } => {
            queryable_type(name, collection, field)?;
            out.sql.push_str(&format!("\"{field}\" IS NOT NULL"));
        }
        Filter::And { filters } | Filter::Or { filters } => {
            let joiner = if matches!(filter, Filter::And { .. }) {
                " AND "
            } else {
                " OR "
            };
            if filters.is_empty() {
                out.sql.push_str(if joiner == " AND " { "1" } else { "0" });
                return Ok(());
            }
            out.sql.push('(');
            for (i, inner) in filters.iter().enumerate() {
                if i > 0 {
                    out.sql.push_str(joiner);
                }
                write_filter(name, collection, inner, out)?;
            }
            out.sql.push(')');
        }
    }
    Ok(())
}

fn queryable_type(name: &str, collection: &Collection, field: &str) -> Result<FieldType> {
    let declared = collection.field(name, field)?;
    if declared.field_type.is_queryable() {
        Ok(declared.field_type)
    } else {
        Err(Error::InvalidQuery(format!(
            "json field `{name}.{field}` cannot be filtered or ordered"
        )))
    }
}

fn bind(name: &str, field: &str, field_type: FieldType, value: &Value) -> Result<SqlValue> {
    if value.is_null() {
        return Err(Error::InvalidQuery(format!(
            "compare `{name}.{field}` with null using is_null / is_not_null"
        )));
    }
    let declared = crate::schema::Field {
        field_type,
        required: false,
        target: None,
        on_delete: None,
        download: None,
    };
    value::check_type(name, field, &declared, value).map_err(|_| {
        Error::InvalidQuery(format!(
            "`{name}.{field}` is compared with a non-{field_type} value"
        ))
    })?;
    Ok(value::to_sql(field_type, value))
}

/// The smallest string greater than every string that starts with `prefix`, if one exists.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefix_successor_bounds_the_range() {
        assert_eq!(prefix_successor("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor(""), None);
    }

    #[test]
    fn filters_read_from_json() {
        let filter: Filter = serde_json::from_value(json!({
            "op": "and", "filters": [
                {"op": "eq", "field": "name", "value": "Ada"},
                {"op": "in", "field": "age", "values": [1, 2]}
            ]
        }))
        .unwrap();
        let mut fields = Fields::new();
        fields.insert("name".into(), json!("Ada"));
        fields.insert("age".into(), json!(2));
        assert!(filter.matches(&fields));
        fields.insert("age".into(), json!(3));
        assert!(!filter.matches(&fields));
        assert!(
            serde_json::from_value::<Filter>(json!({"op": "eq", "field": "a", "value": 1, "x": 1}))
                .is_err()
        );
    }

    #[test]
    fn ne_matches_unset_fields_like_sql_is_not() {
        let fields = Fields::new();
        assert!(
            Filter::Ne {
                field: "a".into(),
                value: json!(1)
            }
            .matches(&fields)
        );
        assert!(
            !Filter::Eq {
                field: "a".into(),
                value: json!(1)
            }
            .matches(&fields)
        );
    }
}
