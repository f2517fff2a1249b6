//! Retention: per collection, records older than a policy says (counted from a timestamp field,
//! such as a session's `started_at`) are erased, whole or only some fields, by `fieldsync-server
//! retention apply` and once a day while `serve` runs. Each erasure is an erasure like any
//! other (`erasure.rs`): devices follow at their next sync, and the audit log names the policy.

use std::sync::Arc;

use automerge::AutoCommit;
use fieldsync_record::erasure::Erasure;
use fieldsync_record::merge::guarded;
use fieldsync_record::{FieldType, Schema};

use crate::erasure::{EraseRequest, erase};
use crate::error::ServerError;
use crate::storage::{RetentionPolicy, Storage, now_ms};

/// Records read a page at a time.
const PAGE: u32 = 500;

/// How often `serve` applies the policies.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// How long after it starts `serve` first applies them.
pub const FIRST_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

const DAY_MS: i64 = 24 * 3600 * 1000;

/// What applying one policy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The policy's collection.
    pub collection: String,
    /// Records erased.
    pub erased: usize,
    /// Records past their time that could not be erased (damaged; `check` finds them).
    pub failed: usize,
}

/// Checks `policy` against the schema in force: its collection is declared, its age field is a
/// timestamp, and each field it erases may be erased on its own (neither the scope field nor a
/// required one).
pub fn check(schema: &Schema, policy: &RetentionPolicy) -> Result<(), ServerError> {
    let bad = |message: String| ServerError::BadRequest(message);
    let collection = schema
        .collection(&policy.collection)
        .map_err(|err| bad(err.to_string()))?;
    match collection.fields.get(&policy.age_field) {
        Some(field) if field.field_type == FieldType::Timestamp => {}
        _ => {
            return Err(bad(format!(
                "`{}` is not a timestamp field of `{}`: a record's age is counted from one",
                policy.age_field, policy.collection
            )));
        }
    }
    if policy.older_than_days == 0 {
        return Err(bad("a retention period is at least one day".into()));
    }
    for name in &policy.erase_fields {
        match collection.fields.get(name) {
            None => {
                return Err(bad(format!(
                    "`{}` has no field `{name}`",
                    policy.collection
                )));
            }
            Some(field) if field.required || *name == collection.scope_field => {
                return Err(bad(format!(
                    "`{name}` is required: a policy erases it only with the whole record"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Applies every policy once, as at `now` (ms since the epoch), then empties the storage's
/// WAL once if anything was erased.
pub fn apply(
    storage: &dyn Storage,
    schema: &Schema,
    now: i64,
) -> Result<Vec<Applied>, ServerError> {
    let applied = storage
        .retention_policies()?
        .iter()
        .map(|policy| apply_one(storage, schema, policy, now))
        .collect::<Result<Vec<_>, _>>()?;
    if applied.iter().any(|applied| applied.erased > 0) {
        storage.scrub()?;
    }
    Ok(applied)
}

fn apply_one(
    storage: &dyn Storage,
    schema: &Schema,
    policy: &RetentionPolicy,
    now: i64,
) -> Result<Applied, ServerError> {
    check(schema, policy)?;
    let cutoff = now.saturating_sub(i64::from(policy.older_than_days).saturating_mul(DAY_MS));
    let reason = format!(
        "retention: {} older than {} days by {}",
        policy.collection, policy.older_than_days, policy.age_field
    );
    let erasure = if policy.erase_fields.is_empty() {
        Erasure::Record
    } else {
        Erasure::Fields(policy.erase_fields.iter().cloned().collect())
    };
    let key = (policy.collection.as_str(), policy.age_field.as_str());
    let (mut erased, mut failed) = (0, 0);
    let mut after = String::new();
    loop {
        let page = storage.records_aged(key, cutoff, &after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.id.clone();
        for aged in &page {
            // A record erased whole keeps no age field and is not listed again; one whose
            // fields were erased is, and is left alone unless they came back.
            if let Erasure::Fields(fields) = &erasure
                && !holds_any(storage, (&policy.collection, &aged.id), fields)?
            {
                continue;
            }
            let request = EraseRequest {
                collection: &policy.collection,
                id: &aged.id,
                erasure: erasure.clone(),
                by: 0,
                reason: &reason,
                scrub: false,
            };
            match erase(storage, schema, &request) {
                Ok(_) => erased += 1,
                // Deleted or written meanwhile: the next run sees it again.
                Err(ServerError::NotFound(_) | ServerError::TryAgain(_)) => {}
                // One record that cannot be erased (damaged: `check` and `repair` find it) must
                // not keep the policy from every other record.
                Err(ServerError::Corrupt(_) | ServerError::BadRequest(_)) => {
                    tracing::warn!(
                        collection = %policy.collection,
                        id = %aged.id,
                        "a record past its retention could not be erased: run `check`"
                    );
                    failed += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
    Ok(Applied {
        collection: policy.collection.clone(),
        erased,
        failed,
    })
}

/// Whether any of `fields` has a value in the record, or had one in its history.
fn holds_any(
    storage: &dyn Storage,
    (collection, id): (&str, &str),
    fields: &std::collections::BTreeSet<String>,
) -> Result<bool, ServerError> {
    let Some(stored) = storage
        .stored_records(&[(collection, id)])?
        .records
        .pop()
        .flatten()
    else {
        return Ok(false);
    };
    let mut doc = guarded(|| AutoCommit::load(&stored.doc).ok())
        .flatten()
        .ok_or_else(|| ServerError::Corrupt("a stored record does not load".into()))?;
    let wrote = fieldsync_record::document::history(&mut doc)
        .into_iter()
        .any(|change| change.fields.iter().any(|field| fields.contains(field)));
    Ok(wrote
        || fields
            .iter()
            .any(|field| fieldsync_record::erasure::holds(&doc, field)))
}

/// Applies the policies once every [`EVERY`], the first [`FIRST_AFTER`] after the server
/// started (a server restarted more often than daily still applies them), for as long as
/// the server runs.
pub async fn periodically(storage: Arc<dyn Storage>) {
    let mut wait = FIRST_AFTER;
    loop {
        tokio::time::sleep(wait).await;
        wait = EVERY;
        let storage = storage.clone();
        let applied = crate::http::blocking(move || {
            let Some(stored) = storage.current_schema()? else {
                return Ok(Vec::new());
            };
            let schema = crate::schema::parse(&stored)?;
            apply(&*storage, &schema, now_ms())
        })
        .await;
        match applied {
            Ok(applied) => {
                for Applied {
                    collection,
                    erased,
                    failed,
                } in applied
                {
                    tracing::info!(%collection, erased, failed, "applied the retention policy");
                }
            }
            Err(err) => tracing::warn!(error = %err, "applying retention policies failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use fieldsync_record::protocol::{Payload, PushRecord};
    use serde_bytes::ByteBuf;
    use serde_json::json;

    use super::*;
    use crate::storage::sqlite::SqliteStorage;
    use crate::storage::{Batch, Role};

    const SCHEMA: &str = r#"{"collections": {"sessions": {"scope_field": "caseload_id",
        "fields": {"caseload_id": {"type": "string", "required": true},
                   "started_at": {"type": "timestamp", "required": true},
                   "note": {"type": "text"}}}}}"#;

    fn session(id: &str, started_at: i64) -> PushRecord {
        let schema = Schema::from_json(SCHEMA).unwrap();
        let mut doc = fieldsync_record::document::new_doc(&automerge::ActorId::random());
        let fields = json!({"caseload_id": "north", "started_at": started_at, "note": "Sam read."});
        fieldsync_record::document::init_fields(
            &mut doc,
            schema.collection("sessions").unwrap(),
            fields.as_object().unwrap(),
        )
        .unwrap();
        fieldsync_record::document::commit(&mut doc, 1);
        PushRecord {
            collection: "sessions".into(),
            id: id.into(),
            scope: "north".into(),
            payload: Payload::Document(ByteBuf::from(doc.save())),
            epoch: 0,
        }
    }

    #[test]
    fn a_policy_erases_exactly_the_records_older_than_it_says_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
        let schema = Schema::from_json(SCHEMA).unwrap();
        let user = storage.create_user("ada", Role::Member).unwrap();
        let device = storage.create_device(user, "phone").unwrap();
        let now = 1_000 * DAY_MS;
        let records = [
            session("old-1", now - 400 * DAY_MS),
            session("new-1", now - 10 * DAY_MS),
            session("old-2", now - 366 * DAY_MS),
            session("new-2", now - 364 * DAY_MS),
        ];
        storage
            .push(
                device,
                &Batch::new("b", &records),
                &mut |record: &PushRecord, _| {
                    let Payload::Document(doc) = &record.payload else {
                        unreachable!()
                    };
                    let mut loaded = AutoCommit::load(doc).unwrap();
                    let (fields, deleted) =
                        fieldsync_record::document::document_values(&loaded).unwrap();
                    let changes = loaded.get_changes(&[]);
                    Ok(crate::storage::MergedRecord {
                        doc: doc.to_vec(),
                        fields_json: serde_json::Value::Object(fields).to_string(),
                        deleted,
                        new_changes: changes.iter().map(|c| c.raw_bytes().to_vec()).collect(),
                        lineage: crate::merge::lineage_after_merge(&mut loaded, None, &changes),
                        epoch: 0,
                    })
                },
            )
            .unwrap();
        let mut policy = RetentionPolicy {
            collection: "sessions".into(),
            age_field: "started_at".into(),
            older_than_days: 365,
            erase_fields: vec!["note".into()],
            set_at: now,
        };
        storage.set_retention_policy(&policy).unwrap();
        let applied = apply(&storage, &schema, now).unwrap();
        assert_eq!(applied[0].erased, 2);
        let note_of = |id: &str| {
            let stored = storage.stored_records(&[("sessions", id)]).unwrap().records[0]
                .clone()
                .unwrap();
            let fields: serde_json::Value = serde_json::from_str(&stored.fields_json).unwrap();
            (stored.epoch, fields.get("note").cloned())
        };
        assert_eq!(note_of("old-1"), (1, None));
        assert_eq!(note_of("old-2"), (1, None));
        assert_eq!(note_of("new-2"), (0, Some(json!("Sam read."))));
        assert_eq!(
            apply(&storage, &schema, now).unwrap()[0].erased,
            0,
            "erased once"
        );

        policy.erase_fields.clear();
        storage.set_retention_policy(&policy).unwrap();
        assert_eq!(apply(&storage, &schema, now).unwrap()[0].erased, 2);
        let old = storage
            .stored_records(&[("sessions", "old-1")])
            .unwrap()
            .records[0]
            .clone()
            .unwrap();
        assert!(old.deleted && old.epoch == 2);
        assert_eq!(apply(&storage, &schema, now).unwrap()[0].erased, 0);
        let audit = storage
            .audit(&crate::storage::AuditQuery {
                record_id: Some("old-1".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert!(
            audit[0]
                .detail
                .as_deref()
                .unwrap()
                .contains("retention: sessions older than 365 days")
        );
    }

    #[test]
    fn policies_are_checked_against_the_schema() {
        let schema = Schema::from_json(SCHEMA).unwrap();
        let policy = |age_field: &str, erase: &[&str]| RetentionPolicy {
            collection: "sessions".into(),
            age_field: age_field.into(),
            older_than_days: 30,
            erase_fields: erase.iter().map(|f| f.to_string()).collect(),
            set_at: 0,
        };
        assert!(check(&schema, &policy("started_at", &["note"])).is_ok());
        for bad in [
            policy("note", &[]),
            policy("started_at", &["caseload_id"]),
            policy("started_at", &["nope"]),
        ] {
            assert!(matches!(
                check(&schema, &bad),
                Err(ServerError::BadRequest(_))
            ));
        }
    }
}
