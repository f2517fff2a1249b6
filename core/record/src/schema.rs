//! The app's declaration of its data: collections, typed fields, scope fields and indexes.
//!
//! A schema is plain serde data so that it can be written as JSON, cross the FFI as a string
//! and be kept in the store file, where the next open compares it with the new declaration.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The whole data model of an app.
///
/// ```
/// use fieldsync_record::Schema;
///
/// let schema = Schema::from_json(r#"{
///   "collections": {
///     "clients": {
///       "scope_field": "caseload_id",
///       "fields": {
///         "caseload_id": { "type": "string", "required": true },
///         "name": { "type": "string", "required": true },
///         "notes": { "type": "text" }
///       },
///       "indexes": [{ "name": "by_name", "fields": ["name"] }]
///     }
///   }
/// }"#).unwrap();
/// assert_eq!(schema.collection("clients").unwrap().scope_field, "caseload_id");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// The app's number for this declaration, raised with each change (optional). Devices
    /// tell the server which version they run; the server numbers the versions it is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Collections by name.
    pub collections: BTreeMap<String, Collection>,
}

/// A set of records of one shape, like a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collection {
    /// The field that partitions records for access control and partial sync (for example
    /// `caseload_id`). It must be a required `string` field; it is set at insert and never
    /// changes.
    pub scope_field: String,
    /// Fields by name.
    pub fields: BTreeMap<String, Field>,
    /// The indexes queries will use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<Index>,
}

/// One declared field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// What values the field holds.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Whether every record must have a value.
    #[serde(default)]
    pub required: bool,
    /// For `reference` fields: the collection whose record ids the field holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// For `reference` fields: what deleting the referenced record does (default `restrict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<OnDelete>,
    /// For `attachment` fields: when devices download the bytes (default `eager`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<Download>,
}

/// When devices download an attachment field's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Download {
    /// With the record, so that they are at hand offline (a signed consent form).
    Eager,
    /// When the app asks for them (large media).
    OnDemand,
}

/// The type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A string replaced as a whole; concurrent writes conflict and one wins.
    String,
    /// A 64-bit signed integer.
    Integer,
    /// A 64-bit float.
    Float,
    /// `true` or `false`.
    Boolean,
    /// Milliseconds since the Unix epoch (UTC), as an integer.
    Timestamp,
    /// Collaborative text: concurrent edits merge character by character.
    Text,
    /// Nested maps and lists; concurrent writes merge key by key.
    Json,
    /// The id of a record in the collection named by [`Field::target`].
    Reference,
    /// A reference to bytes kept beside the record (a photo, an audio note, a signed form):
    /// see [`crate::attachment`].
    Attachment,
}

impl FieldType {
    /// Whether queries can filter and order by fields of this type.
    pub fn is_queryable(self) -> bool {
        !matches!(self, FieldType::Json | FieldType::Attachment)
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FieldType::String => "string",
            FieldType::Integer => "integer",
            FieldType::Float => "float",
            FieldType::Boolean => "boolean",
            FieldType::Timestamp => "timestamp",
            FieldType::Text => "text",
            FieldType::Json => "json",
            FieldType::Reference => "reference",
            FieldType::Attachment => "attachment",
        };
        f.write_str(name)
    }
}

/// What happens to records that reference a record being deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Delete the referencing records too, in the same transaction.
    Cascade,
    /// Refuse the delete while live records reference it.
    Restrict,
    /// Clear the reference field (it must be optional).
    SetNull,
}

/// A declared index: one SQLite index over the listed fields, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// Name, unique within the collection.
    pub name: String,
    /// Fields in index order.
    pub fields: Vec<String>,
}

impl Schema {
    /// Reads and validates a schema from JSON. Unknown keys are refused.
    pub fn from_json(json: &str) -> Result<Schema> {
        let schema: Schema = serde_json::from_str(json)
            .map_err(|err| Error::InvalidSchema(format!("not a valid schema document: {err}")))?;
        schema.validate()?;
        Ok(schema)
    }

    /// The schema as JSON, as [`Schema::from_json`] reads it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a schema always serializes")
    }

    /// The named collection, or [`Error::UnknownCollection`].
    pub fn collection(&self, name: &str) -> Result<&Collection> {
        self.collections
            .get(name)
            .ok_or_else(|| Error::UnknownCollection(name.to_owned()))
    }

    /// Checks every rule a schema must follow; opening a store and setting the server's schema
    /// call it.
    pub fn validate(&self) -> Result<()> {
        if self.collections.is_empty() {
            return Err(Error::InvalidSchema(
                "declare at least one collection".into(),
            ));
        }
        for (name, collection) in &self.collections {
            check_identifier("collection", name)?;
            collection.validate(name, self)?;
        }
        Ok(())
    }

    /// Refuses an upgrade from `old` that would lose or reinterpret stored data: the rule a
    /// store applies when the app's schema changes, and the server when a new version is set.
    /// The [`version`](Schema::version) numbers play no part.
    ///
    /// Allowed: new collections, new optional fields, new or removed indexes, a required field
    /// becoming optional, a new `on_delete` rule. Refused: removing a collection or a field,
    /// changing a field's type or reference target, a new required field on an existing
    /// collection, an optional field becoming required, a new scope field.
    pub fn check_upgrade_from(&self, old: &Schema) -> Result<()> {
        let refuse = |msg: String| Err(Error::IncompatibleSchema(msg));
        for (name, old_collection) in &old.collections {
            let Some(new_collection) = self.collections.get(name) else {
                return refuse(format!("collection `{name}` was removed"));
            };
            if new_collection.scope_field != old_collection.scope_field {
                return refuse(format!("the scope field of `{name}` changed"));
            }
            for (field_name, old_field) in &old_collection.fields {
                let Some(new_field) = new_collection.fields.get(field_name) else {
                    return refuse(format!("field `{name}.{field_name}` was removed"));
                };
                if new_field.field_type != old_field.field_type
                    || new_field.target != old_field.target
                {
                    return refuse(format!("the type of `{name}.{field_name}` changed"));
                }
                if new_field.required && !old_field.required {
                    return refuse(format!("`{name}.{field_name}` became required"));
                }
            }
            for (field_name, new_field) in &new_collection.fields {
                if new_field.required && !old_collection.fields.contains_key(field_name) {
                    return refuse(format!(
                        "new field `{name}.{field_name}` must be optional: existing records lack it"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Collection {
    /// The named field, or [`Error::UnknownField`].
    pub fn field(&self, collection: &str, name: &str) -> Result<&Field> {
        self.fields.get(name).ok_or_else(|| Error::UnknownField {
            collection: collection.to_owned(),
            field: name.to_owned(),
        })
    }

    fn validate(&self, name: &str, schema: &Schema) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidSchema(msg));
        if self.fields.is_empty() {
            return invalid(format!("collection `{name}` declares no fields"));
        }
        for (field_name, field) in &self.fields {
            check_identifier("field", field_name)?;
            let is_reference = field.field_type == FieldType::Reference;
            match (&field.target, is_reference) {
                (None, true) => {
                    return invalid(format!("reference `{name}.{field_name}` needs a `target`"));
                }
                (Some(_), false) | (None, false) if field.on_delete.is_some() => {
                    return invalid(format!(
                        "`{name}.{field_name}`: on_delete is for references"
                    ));
                }
                (Some(_), false) => {
                    return invalid(format!("`{name}.{field_name}`: target is for references"));
                }
                (Some(target), true) if !schema.collections.contains_key(target) => {
                    return invalid(format!("`{name}.{field_name}` targets unknown `{target}`"));
                }
                _ => {}
            }
            if field.download.is_some() && field.field_type != FieldType::Attachment {
                return invalid(format!(
                    "`{name}.{field_name}`: download is for attachments"
                ));
            }
            if field.on_delete == Some(OnDelete::SetNull) && field.required {
                return invalid(format!(
                    "`{name}.{field_name}`: set_null needs an optional field"
                ));
            }
        }
        let scope = self.fields.get(&self.scope_field);
        if !matches!(scope, Some(f) if f.field_type == FieldType::String && f.required) {
            return invalid(format!(
                "scope field `{name}.{}` must be a declared, required string field",
                self.scope_field
            ));
        }
        let mut index_names = std::collections::BTreeSet::new();
        for index in &self.indexes {
            check_identifier("index", &index.name)?;
            if !index_names.insert(&index.name) {
                return invalid(format!("index `{name}.{}` is declared twice", index.name));
            }
            if index.fields.is_empty() {
                return invalid(format!("index `{name}.{}` lists no fields", index.name));
            }
            for field_name in &index.fields {
                let field = self.field(name, field_name)?;
                if !field.field_type.is_queryable() {
                    return invalid(format!(
                        "index `{name}.{}`: json and attachment fields cannot be indexed",
                        index.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// When an attachment field's bytes are downloaded (`eager` when not declared).
    pub fn download(field: &Field) -> Download {
        field.download.unwrap_or(Download::Eager)
    }

    /// The delete rule of a reference field (`restrict` when not declared).
    pub fn on_delete(field: &Field) -> OnDelete {
        field.on_delete.unwrap_or(OnDelete::Restrict)
    }
}

fn check_identifier(kind: &str, name: &str) -> Result<()> {
    if crate::ids::is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidSchema(format!(
            "{kind} name `{name}` must match [a-z][a-z0-9_]* and be at most 63 characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clinic() -> Schema {
        Schema::from_json(
            r#"{"collections": {
                "clients": {"scope_field": "caseload_id", "fields": {
                    "caseload_id": {"type": "string", "required": true},
                    "name": {"type": "string", "required": true},
                    "birth_year": {"type": "integer"}},
                  "indexes": [{"name": "by_name", "fields": ["name"]}]},
                "sessions": {"scope_field": "caseload_id", "fields": {
                    "caseload_id": {"type": "string", "required": true},
                    "client": {"type": "reference", "target": "clients", "on_delete": "cascade"},
                    "note": {"type": "text"},
                    "consent": {"type": "attachment"},
                    "recording": {"type": "attachment", "download": "on_demand"}}}
            }}"#,
        )
        .unwrap()
    }

    #[test]
    fn round_trips_through_json() {
        let schema = clinic();
        let sessions = schema.collection("sessions").unwrap();
        let download = |field: &str| Collection::download(&sessions.fields[field]);
        assert_eq!(download("consent"), Download::Eager, "the default");
        assert_eq!(download("recording"), Download::OnDemand);
        assert_eq!(Schema::from_json(&schema.to_json()).unwrap(), schema);
        let versioned = Schema {
            version: Some(3),
            ..schema
        };
        assert!(versioned.to_json().starts_with(r#"{"version":3,"#));
        assert_eq!(Schema::from_json(&versioned.to_json()).unwrap(), versioned);
    }

    #[test]
    fn refuses_unknown_keys_and_bad_declarations() {
        let cases = [
            r#"{"collections": {}, "extra": 1}"#,
            r#"{"collections": {}}"#,
            r#"{"collections": {"Bad Name": {"scope_field": "s", "fields": {"s": {"type": "string", "required": true}}}}}"#,
            r#"{"collections": {"c": {"scope_field": "s", "fields": {"s": {"type": "string"}}}}}"#,
            r#"{"collections": {"c": {"scope_field": "s", "fields": {"s": {"type": "string", "required": true}, "r": {"type": "reference"}}}}}"#,
            r#"{"collections": {"c": {"scope_field": "s", "fields": {"s": {"type": "string", "required": true}, "r": {"type": "reference", "target": "nope"}}}}}"#,
            r#"{"collections": {"c": {"scope_field": "s", "fields": {"s": {"type": "string", "required": true}, "j": {"type": "json"}}, "indexes": [{"name": "i", "fields": ["j"]}]}}}"#,
            r#"{"collections": {"c": {"scope_field": "s", "fields": {"s": {"type": "string", "required": true}, "_x": {"type": "string"}}}}}"#,
            r#"{"collections": {"c": {"scope_field": "s", "fields": {"s": {"type": "strin", "required": true}}}}}"#,
            r#"{"collections": {"c": {"scope_field": "s", "fields": {"s": {"type": "string", "required": true}, "a": {"type": "attachment"}}, "indexes": [{"name": "i", "fields": ["a"]}]}}}"#,
            r#"{"collections": {"c": {"scope_field": "s", "fields": {"s": {"type": "string", "required": true}, "n": {"type": "string", "download": "eager"}}}}}"#,
            r#"{"collections": {"c": {"scope_field": "s", "fields": {"s": {"type": "string", "required": true}, "a": {"type": "attachment", "download": "lazily"}}}}}"#,
        ];
        for case in cases {
            assert!(
                matches!(Schema::from_json(case), Err(Error::InvalidSchema(_))),
                "accepted {case}"
            );
        }
    }

    #[test]
    fn upgrades_that_only_add_are_allowed() {
        let old = clinic();
        let mut new = old.clone();
        let clients = new.collections.get_mut("clients").unwrap();
        clients.fields.insert(
            "phone".into(),
            Field {
                field_type: FieldType::String,
                required: false,
                target: None,
                on_delete: None,
                download: None,
            },
        );
        clients.indexes.push(Index {
            name: "by_year".into(),
            fields: vec!["birth_year".into()],
        });
        new.check_upgrade_from(&old).unwrap();
    }

    #[test]
    fn upgrades_that_lose_data_are_refused() {
        let old = clinic();
        let mut removed = old.clone();
        removed
            .collections
            .get_mut("clients")
            .unwrap()
            .fields
            .remove("birth_year");
        let mut retyped = old.clone();
        retyped
            .collections
            .get_mut("clients")
            .unwrap()
            .fields
            .get_mut("birth_year")
            .unwrap()
            .field_type = FieldType::String;
        let mut required = old.clone();
        required
            .collections
            .get_mut("clients")
            .unwrap()
            .fields
            .get_mut("birth_year")
            .unwrap()
            .required = true;
        let mut dropped = old.clone();
        dropped.collections.remove("sessions");
        for new in [removed, retyped, required, dropped] {
            assert!(matches!(
                new.check_upgrade_from(&old),
                Err(Error::IncompatibleSchema(_))
            ));
        }
    }
}
