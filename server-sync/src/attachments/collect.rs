//! Attachments no record references any more (the record was deleted, or its field now names
//! other bytes, or the upload was abandoned) are dropped once older than a grace period: long
//! enough that a device sending bytes for a record it pushed moments ago is never cut off.

use std::collections::HashSet;
use std::sync::Arc;

use fieldsync_record::attachment::AttachmentRef;
use fieldsync_record::{FieldType, Schema};

use super::chunks::ChunkStore;
use crate::error::ServerError;
use crate::http::blocking;
use crate::storage::{NewAuditLine, Storage};

/// What one collection dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Attachments held before.
    pub held: usize,
    /// Attachments dropped.
    pub dropped: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// How often `serve` collects, and the grace period it gives.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Collects once every [`EVERY`], the first a period after the server started, with a grace
/// period of as long, for as long as the server runs.
pub async fn periodically(storage: Arc<dyn Storage>, chunks: Arc<ChunkStore>) {
    loop {
        tokio::time::sleep(EVERY).await;
        let collected = async {
            let schema = {
                let storage = storage.clone();
                blocking(move || storage.current_schema()).await?
            };
            let Some(stored) = schema else {
                return Ok(Collected::default());
            };
            let schema = crate::schema::parse(&stored)?;
            let grace = EVERY.as_millis() as i64;
            collect(&storage, &chunks, schema, grace, crate::storage::now_ms()).await
        };
        match collected.await {
            Ok(collected) => tracing::info!(
                held = collected.held,
                dropped = collected.dropped,
                bytes = collected.bytes,
                "collected unreferenced attachments"
            ),
            Err(err) => tracing::warn!(error = %err, "collecting attachments failed"),
        }
    }
}

/// Records and attachments read a page at a time.
const PAGE: u32 = 500;

/// Drops every attachment that no live record of its scope references and that arrived more
/// than `grace_ms` before `now` (ms since the epoch), with an audit line each.
pub async fn collect(
    storage: &Arc<dyn Storage>,
    chunks: &ChunkStore,
    schema: Schema,
    grace_ms: i64,
    now: i64,
) -> Result<Collected, ServerError> {
    let referenced = {
        let storage = storage.clone();
        blocking(move || referenced(&*storage, &schema)).await?
    };
    let mut collected = Collected::default();
    let mut after: Option<(String, [u8; 32])> = None;
    loop {
        let page = {
            let (storage, after) = (storage.clone(), after.clone());
            blocking(move || {
                let key = after.as_ref().map(|(scope, sha)| (scope.as_str(), sha));
                storage.attachments_after(key, PAGE)
            })
            .await?
        };
        for attachment in &page {
            collected.held += 1;
            let key = (attachment.scope.clone(), attachment.sha256);
            if referenced.contains(&key) || attachment.created_at > now - grace_ms {
                continue;
            }
            if chunks.delete(storage, &key).await? {
                collected.dropped += 1;
                collected.bytes += attachment.size;
                let storage = storage.clone();
                blocking(move || {
                    storage.audit_line(&NewAuditLine {
                        user_id: 0,
                        device_id: 0,
                        action: "collect",
                        collection: "attachment",
                        record_id: &hex::encode(key.1),
                        scope: &key.0,
                    })
                })
                .await?;
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => {
                after = Some((last.scope.clone(), last.sha256));
            }
            _ => return Ok(collected),
        }
    }
}

/// Drops the attachments `sha256s` of `scope` that no live record of the scope references
/// (an erasure's leftovers), at once, with an audit line each; returns how many.
pub async fn drop_unreferenced(
    storage: &Arc<dyn Storage>,
    chunks: &ChunkStore,
    schema: &Schema,
    scope: &str,
    sha256s: &[[u8; 32]],
) -> Result<usize, ServerError> {
    if sha256s.is_empty() {
        return Ok(0);
    }
    let referenced = {
        let (storage, schema, scope) = (storage.clone(), schema.clone(), scope.to_owned());
        blocking(move || referenced_in_scope(&*storage, &schema, &scope)).await?
    };
    let mut dropped = 0;
    for sha256 in sha256s.iter().filter(|sha| !referenced.contains(*sha)) {
        let key = (scope.to_owned(), *sha256);
        if chunks.delete(storage, &key).await? {
            dropped += 1;
            let storage = storage.clone();
            blocking(move || {
                storage.audit_line(&NewAuditLine {
                    user_id: 0,
                    device_id: 0,
                    action: "collect",
                    collection: "attachment",
                    record_id: &hex::encode(key.1),
                    scope: &key.0,
                })
            })
            .await?;
        }
    }
    Ok(dropped)
}

/// Every SHA-256 an attachment field of a live record of `scope` holds.
fn referenced_in_scope(
    storage: &dyn Storage,
    schema: &Schema,
    scope: &str,
) -> Result<HashSet<[u8; 32]>, ServerError> {
    let mut referenced = HashSet::new();
    for (name, collection) in &schema.collections {
        let fields: Vec<&str> = collection
            .fields
            .iter()
            .filter(|(_, field)| field.field_type == FieldType::Attachment)
            .map(|(field, _)| field.as_str())
            .collect();
        if fields.is_empty() {
            continue;
        }
        let mut after = String::new();
        loop {
            let page = storage.records_in_scope(name, scope, &after, PAGE)?;
            for record in &page {
                let values: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&record.fields_json)
                        .map_err(|_| ServerError::Corrupt("stored values do not decode".into()))?;
                referenced.extend(
                    fields
                        .iter()
                        .filter_map(|field| values.get(*field))
                        .filter_map(|value| AttachmentRef::from_value(value).ok())
                        .map(|reference| reference.sha256),
                );
            }
            match page.last() {
                Some(last) if page.len() == PAGE as usize => after = last.id.clone(),
                _ => break,
            }
        }
    }
    Ok(referenced)
}

/// Every (scope, SHA-256) an attachment field of a live record holds.
fn referenced(
    storage: &dyn Storage,
    schema: &Schema,
) -> Result<HashSet<(String, [u8; 32])>, ServerError> {
    let mut referenced = HashSet::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let key = after.as_ref().map(|(c, i)| (c.as_str(), i.as_str()));
        let page = storage.records_after(key, PAGE)?;
        for listed in &page {
            let Ok(collection) = schema.collection(&listed.collection) else {
                continue;
            };
            if listed.stored.deleted {
                continue;
            }
            let fields: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&listed.stored.fields_json)
                    .map_err(|_| ServerError::Corrupt("stored values do not decode".into()))?;
            for (name, field) in &collection.fields {
                if field.field_type != FieldType::Attachment {
                    continue;
                }
                if let Some(Ok(reference)) = fields.get(name).map(AttachmentRef::from_value) {
                    referenced.insert((listed.stored.scope.clone(), reference.sha256));
                }
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => {
                after = Some((last.collection.clone(), last.id.clone()));
            }
            _ => return Ok(referenced),
        }
    }
}

#[cfg(test)]
mod tests {
    use fieldsync_record::protocol::PushRecord;
    use serde_json::json;

    use super::*;
    use crate::storage::conformance::{accept, record};
    use crate::storage::sqlite::SqliteStorage;
    use crate::storage::{AuditQuery, Batch, MergedRecord, Role, StoredRecord};

    const SCHEMA: &str = r#"{"collections": {"clients": {"scope_field": "caseload_id",
        "fields": {"caseload_id": {"type": "string", "required": true},
                   "consent_form": {"type": "attachment"}}}}}"#;

    #[tokio::test]
    async fn unreferenced_attachments_older_than_the_grace_period_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(&dir.path().join("server.db")).unwrap());
        let schema = Schema::from_json(SCHEMA).unwrap();
        let user = storage.create_user("ada", Role::Member).unwrap();
        let device = storage.create_device(user, "phone").unwrap();
        let referenced = [1u8; 32];
        let orphan = [2u8; 32];
        // A record of north references the first; the same bytes in south are referenced by
        // nothing there.
        let mut merge = |r: &PushRecord, stored: Option<StoredRecord>| {
            let mut merged: MergedRecord = accept(r, stored)?;
            merged.fields_json = json!({"caseload_id": "north", "consent_form":
                {"sha256": hex::encode(referenced), "size": 3, "media_type": "image/png"}})
            .to_string();
            Ok(merged)
        };
        storage
            .push(
                device,
                &Batch::new("b", &[record("c1", "north")]),
                &mut merge,
            )
            .unwrap();
        for (scope, sha) in [
            ("north", referenced),
            ("north", orphan),
            ("south", referenced),
        ] {
            storage
                .put_attachment_chunk(scope, &sha, 3, 0, Some(b"abc"))
                .unwrap();
        }
        // A minute on, every attachment is within a grace period of five: kept.
        let now = crate::storage::now_ms();
        let (shared, chunks): (Arc<dyn Storage>, _) = (storage.clone(), ChunkStore::Database);
        let collected = collect(&shared, &chunks, schema.clone(), 5 * 60_000, now + 60_000)
            .await
            .unwrap();
        assert_eq!(
            collected.dropped, 0,
            "nothing is older than the grace period yet"
        );
        let collected = collect(&shared, &chunks, schema, 5 * 60_000, now + 10 * 60_000)
            .await
            .unwrap();
        assert_eq!(
            collected,
            Collected {
                held: 3,
                dropped: 2,
                bytes: 6
            }
        );
        assert!(storage.attachment("north", &referenced).unwrap().is_some());
        assert!(storage.attachment("north", &orphan).unwrap().is_none());
        assert!(storage.attachment("south", &referenced).unwrap().is_none());
        let lines = storage
            .audit(&AuditQuery {
                record_id: Some(hex::encode(orphan)),
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(
            (lines[0].action.as_str(), lines[0].user.as_str()),
            ("collect", "(server)")
        );
    }
}
