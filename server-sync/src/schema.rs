//! The schema the server validates pushed records against: setting a new version (compatible
//! changes only, by the rule stores apply to their own upgrades), its history, `GET
//! /v1/schema` for devices, and the copy pushes read, parsed once per version.
//!
//! Without a schema the server stores no record: a push is refused with `no_schema`, so that
//! nothing enters the feed that devices would refuse.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use fieldsync_record::Schema;
use fieldsync_record::protocol::SchemaResponse;

use crate::AppState;
use crate::error::ServerError;
use crate::http::{authorize, blocking};
use crate::storage::{Storage, StoredSchema};

/// A schema version in force, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSchema {
    /// Its version number.
    pub version: u32,
    /// The schema.
    pub schema: Schema,
}

/// What setting a schema did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaSet {
    /// The schema is now in force as this version.
    Added(u32),
    /// The schema in force, of this version, is the same: nothing was stored.
    Unchanged(u32),
}

/// How often [`set_schema`] checks against a version someone else set meanwhile before it
/// gives up.
const SET_ATTEMPTS: usize = 5;

/// Makes the schema in `json` the one in force, if it is valid and a compatible change of the
/// one in force (new collections, fields and indexes; required fields becoming optional).
/// Its version is the one the schema declares, which must be above the one in force, or else
/// the next number.
pub fn set_schema(storage: &dyn Storage, json: &str) -> Result<SchemaSet, ServerError> {
    let mut schema = Schema::from_json(json).map_err(invalid)?;
    for _ in 0..SET_ATTEMPTS {
        let current = storage.current_schema()?;
        let version = match &current {
            None => schema.version.unwrap_or(1),
            Some(stored) => {
                let in_force = parse(stored)?;
                let same_declaration = Schema {
                    version: in_force.version,
                    ..schema.clone()
                } == in_force;
                if same_declaration && schema.version.is_none_or(|v| v == stored.version) {
                    return Ok(SchemaSet::Unchanged(stored.version));
                }
                schema.check_upgrade_from(&in_force).map_err(invalid)?;
                match schema.version {
                    Some(declared) if declared <= stored.version => {
                        return Err(ServerError::InvalidSchema(format!(
                            "the schema declares version {declared}, but version {} is in \
                             force: declare a higher one",
                            stored.version
                        )));
                    }
                    Some(declared) => declared,
                    None => stored.version + 1,
                }
            }
        };
        if version == 0 {
            return Err(ServerError::InvalidSchema(
                "schema versions start at 1".into(),
            ));
        }
        schema.version = Some(version);
        if storage.add_schema(version, &schema.to_json())? {
            return Ok(SchemaSet::Added(version));
        }
        schema.version = Schema::from_json(json).map_err(invalid)?.version;
    }
    Err(ServerError::Conflict(
        "other schemas were being set at the same time; try again".into(),
    ))
}

fn invalid(err: fieldsync_record::Error) -> ServerError {
    ServerError::InvalidSchema(err.to_string())
}

/// A stored version, parsed; a stored schema that does not parse is damaged data.
pub fn parse(stored: &StoredSchema) -> Result<Schema, ServerError> {
    Schema::from_json(&stored.schema_json).map_err(|_| {
        ServerError::Corrupt(format!(
            "stored schema version {} does not parse",
            stored.version
        ))
    })
}

/// The schema in force as pushes read it: the storage is asked for the version number on
/// every push (another instance, or the admin command, may have set a new one), and the
/// schema itself is read and parsed again only when that number changed.
#[derive(Default)]
pub struct SchemaCache {
    current: Mutex<Option<Arc<ServerSchema>>>,
}

impl SchemaCache {
    /// The schema in force, or [`ServerError::NoSchema`].
    pub fn current(&self, storage: &dyn Storage) -> Result<Arc<ServerSchema>, ServerError> {
        let version = storage.schema_version()?;
        if version == 0 {
            return Err(ServerError::NoSchema);
        }
        let mut cached = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(schema) = cached.as_ref().filter(|s| s.version == version) {
            return Ok(schema.clone());
        }
        let stored = storage.current_schema()?.ok_or(ServerError::NoSchema)?;
        let schema = Arc::new(ServerSchema {
            version: stored.version,
            schema: parse(&stored)?,
        });
        *cached = Some(schema.clone());
        Ok(schema)
    }
}

/// `GET /v1/schema`: the schema in force, for devices (JSON).
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SchemaResponse>, ServerError> {
    authorize(&state, &headers).await?;
    let storage = state.storage.clone();
    let stored = blocking(move || storage.current_schema()).await?;
    let stored = stored.ok_or(ServerError::NoSchema)?;
    Ok(Json(SchemaResponse {
        version: stored.version,
        schema: parse(&stored)?,
        set_at: stored.set_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStorage;

    const CLINIC: &str = r#"{"collections": {"clients": {
        "scope_field": "caseload_id",
        "fields": {
            "caseload_id": {"type": "string", "required": true},
            "name": {"type": "string", "required": true},
            "birth_year": {"type": "integer"}
        }
    }}}"#;

    fn storage() -> (tempfile::TempDir, SqliteStorage) {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
        (dir, storage)
    }

    /// The clinic schema with `edit` applied to its JSON.
    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut json: serde_json::Value = serde_json::from_str(CLINIC).unwrap();
        edit(&mut json);
        json.to_string()
    }

    #[test]
    fn compatible_changes_become_new_versions_and_the_history_is_kept() {
        let (_dir, storage) = storage();
        let cache = SchemaCache::default();
        assert!(matches!(
            cache.current(&storage),
            Err(ServerError::NoSchema)
        ));
        assert_eq!(set_schema(&storage, CLINIC).unwrap(), SchemaSet::Added(1));
        assert_eq!(cache.current(&storage).unwrap().version, 1);
        assert_eq!(
            set_schema(&storage, CLINIC).unwrap(),
            SchemaSet::Unchanged(1)
        );

        let added = edited(|s| {
            let clients = &mut s["collections"]["clients"];
            clients["fields"]["phone"] = serde_json::json!({"type": "string"});
            clients["fields"]["name"]["required"] = false.into();
            clients["indexes"] = serde_json::json!([{"name": "by_phone", "fields": ["phone"]}]);
            s["collections"]["visits"] = serde_json::json!({"scope_field": "caseload_id",
                "fields": {"caseload_id": {"type": "string", "required": true}}});
        });
        assert_eq!(set_schema(&storage, &added).unwrap(), SchemaSet::Added(2));
        let current = cache.current(&storage).unwrap();
        assert_eq!(current.version, 2, "the cache reads a new version");
        assert!(current.schema.collections.contains_key("visits"));
        assert_eq!(current.schema.version, Some(2));

        let declared = edited(|s| {
            s["version"] = 7.into();
            s["collections"] =
                serde_json::from_str::<serde_json::Value>(&added).unwrap()["collections"].clone();
        });
        assert_eq!(
            set_schema(&storage, &declared).unwrap(),
            SchemaSet::Added(7)
        );
        let history: Vec<u32> = storage
            .schema_history()
            .unwrap()
            .iter()
            .map(|s| s.version)
            .collect();
        assert_eq!(history, vec![1, 2, 7]);
        let lower = declared.replace("\"version\":7", "\"version\":5");
        assert_ne!(lower, declared);
        let refused = set_schema(&storage, &lower).unwrap_err().to_string();
        assert!(refused.contains("declares version 5"), "{refused}");
    }

    #[test]
    fn incompatible_changes_are_refused_with_the_reason_and_store_nothing() {
        let (_dir, storage) = storage();
        set_schema(&storage, CLINIC).unwrap();
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: [(Edit, &str); 6] = [
            (
                Box::new(|s| {
                    s["collections"]["clients"]["fields"]["birth_year"]["type"] = "string".into()
                }),
                "the type of `clients.birth_year` changed",
            ),
            (
                Box::new(|s| {
                    s["collections"]["clients"]["fields"]
                        .as_object_mut()
                        .unwrap()
                        .remove("birth_year");
                }),
                "field `clients.birth_year` was removed",
            ),
            (
                Box::new(|s| {
                    s["collections"]["clients"]["fields"]["birth_year"]["required"] = true.into()
                }),
                "`clients.birth_year` became required",
            ),
            (
                Box::new(|s| {
                    s["collections"]["clients"]["fields"]["phone"] =
                        serde_json::json!({"type": "string", "required": true});
                }),
                "new field `clients.phone` must be optional",
            ),
            (
                Box::new(|s| {
                    s["collections"] = serde_json::json!({"visits": {"scope_field": "c",
                    "fields": {"c": {"type": "string", "required": true}}}})
                }),
                "collection `clients` was removed",
            ),
            (
                Box::new(|s| {
                    s["collections"]["clients"]["fields"]["name"]["type"] = "strin".into()
                }),
                "invalid schema",
            ),
        ];
        for (edit, reason) in cases {
            let refused = set_schema(&storage, &edited(edit)).unwrap_err();
            assert!(
                matches!(refused, ServerError::InvalidSchema(_)),
                "{refused:?}"
            );
            assert!(
                refused.to_string().contains(reason),
                "{refused} lacks {reason}"
            );
        }
        assert_eq!(storage.schema_history().unwrap().len(), 1);
        assert!(matches!(
            set_schema(&storage, "not json"),
            Err(ServerError::InvalidSchema(_))
        ));
    }
}
