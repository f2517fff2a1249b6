//! A subject access request: everything the server holds of one person (a client), as JSON,
//! for `fieldsync-server export-subject`. The subject's record, every record whose
//! `reference` field names it (sessions, invoices...), each with its whole history and who
//! made each change, and every audit line of those records. The export itself is audited.

use fieldsync_record::{FieldType, Schema};
use serde::Serialize;

use crate::error::ServerError;
use crate::records_api::{RecordView, record_view};
use crate::storage::{AuditQuery, Storage};

/// Records and audit lines read a page at a time.
const PAGE: u32 = 500;
/// Audit lines a record's export holds at most.
const MAX_AUDIT_LINES: u32 = 100_000;

/// What the server holds of a subject.
#[derive(Debug, Serialize)]
pub struct SubjectExport {
    /// The subject's own record, with its history.
    pub subject: RecordView,
    /// The records that reference it, with theirs.
    pub related: Vec<RecordView>,
    /// Who read or wrote each of those records when, newest first.
    pub audit: Vec<AuditLine>,
}

/// One audit line of an exported record.
#[derive(Debug, Serialize)]
pub struct AuditLine {
    /// When (ms since the epoch).
    pub at: i64,
    /// Who (`(server)` for the server itself).
    pub user: String,
    /// What: push, pull, read, refuse...
    pub action: String,
    /// The record's collection.
    pub collection: String,
    /// The record's id.
    pub record_id: String,
}

/// Everything held of the record `collection`/`id` and of the records that reference it.
pub fn export(
    storage: &dyn Storage,
    schema: &Schema,
    (collection, id): (&str, &str),
    max_inflated: usize,
) -> Result<SubjectExport, ServerError> {
    let not_found = || ServerError::NotFound(format!("no record {id} in collection {collection}"));
    let decl = schema.collection(collection).map_err(|_| not_found())?;
    let stored = storage
        .stored_records(&[(collection, id)])?
        .records
        .pop()
        .flatten()
        .ok_or_else(not_found)?;
    let subject = record_view(
        storage,
        (decl, collection, id),
        stored,
        (true, max_inflated),
    )?;
    let mut related = Vec::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let key = after.as_ref().map(|(c, i)| (c.as_str(), i.as_str()));
        let page = storage.records_after(key, PAGE)?;
        for listed in &page {
            let Ok(decl) = schema.collection(&listed.collection) else {
                continue;
            };
            let values: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&listed.stored.fields_json)
                    .map_err(|_| ServerError::Corrupt("stored values do not decode".into()))?;
            let references = decl.fields.iter().any(|(name, field)| {
                field.field_type == FieldType::Reference
                    && field.target.as_deref() == Some(collection)
                    && values.get(name).and_then(|value| value.as_str()) == Some(id)
            });
            if references {
                related.push(record_view(
                    storage,
                    (decl, &listed.collection, &listed.id),
                    listed.stored.clone(),
                    (true, max_inflated),
                )?);
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => {
                after = Some((last.collection.clone(), last.id.clone()));
            }
            _ => break,
        }
    }
    let mut audit = Vec::new();
    for record in std::iter::once(&subject).chain(&related) {
        let lines = storage.audit(&AuditQuery {
            record_id: Some(record.id.clone()),
            limit: MAX_AUDIT_LINES,
            ..AuditQuery::default()
        })?;
        audit.extend(
            lines
                .into_iter()
                .filter(|line| line.collection == record.collection)
                .map(|line| AuditLine {
                    at: line.at,
                    user: line.user,
                    action: line.action,
                    collection: line.collection,
                    record_id: line.record_id,
                }),
        );
    }
    audit.sort_by_key(|line| std::cmp::Reverse(line.at));
    storage.audit_admin(0, "export-subject", &format!("{collection}/{id}"))?;
    Ok(SubjectExport {
        subject,
        related,
        audit,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Method, Request};
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    use super::*;
    use crate::admin::{self, By};
    use crate::storage::sqlite::SqliteStorage;
    use crate::storage::{Access, Role};
    use crate::{AppState, Limits, router};

    const SCHEMA: &str = r#"{"collections": {
        "clients": {"scope_field": "caseload_id",
            "fields": {"caseload_id": {"type": "string", "required": true},
                       "name": {"type": "string"}}},
        "sessions": {"scope_field": "caseload_id",
            "fields": {"caseload_id": {"type": "string", "required": true},
                       "client": {"type": "reference", "target": "clients"},
                       "note": {"type": "text"}}}}}"#;

    #[tokio::test]
    async fn a_subjects_export_holds_their_record_what_references_it_and_who_touched_them() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(&dir.path().join("server.db")).unwrap());
        crate::schema::set_schema(&*storage, SCHEMA).unwrap();
        let limits = Limits {
            requests_per_second: 0,
            ..Limits::default()
        };
        let app = router(AppState::new(storage.clone(), limits));
        admin::create_user(&*storage, By::CommandLine, "ehr", Role::Service).unwrap();
        admin::grant(&*storage, By::CommandLine, "ehr", "north", Access::Write).unwrap();
        let token = admin::enroll_device(&*storage, By::CommandLine, "ehr", "connector", None)
            .unwrap()
            .token;
        let write = |method: Method, path: &str, body: Value| {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let app = app.clone();
            async move {
                let status = app.oneshot(request).await.unwrap().status();
                assert!(status.is_success(), "{status}");
            }
        };
        for (id, name) in [("sam", "Sam"), ("ann", "Ann")] {
            write(
                Method::POST,
                "/v1/records/clients",
                json!({"id": id, "fields": {"caseload_id": "north", "name": name}}),
            )
            .await;
        }
        for (id, client) in [("s1", "sam"), ("s2", "ann"), ("s3", "sam")] {
            write(
                Method::POST,
                "/v1/records/sessions",
                json!({"id": id, "fields": {"caseload_id": "north", "client": client,
                                            "note": "Read aloud."}}),
            )
            .await;
        }
        write(
            Method::PATCH,
            "/v1/records/sessions/s3",
            json!({"merge": true, "fields": {"note": "Read aloud, well."}}),
        )
        .await;

        let schema = Schema::from_json(SCHEMA).unwrap();
        let exported = export(&*storage, &schema, ("clients", "sam"), usize::MAX).unwrap();
        assert_eq!(exported.subject.fields["name"], json!("Sam"));
        let related: Vec<&str> = exported.related.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(related, ["s1", "s3"], "Ann's session is not Sam's");
        let s3 = &exported.related[1];
        assert_eq!(s3.history.as_ref().unwrap().len(), 2);
        assert!(
            s3.history
                .as_ref()
                .unwrap()
                .iter()
                .all(|c| c.user.as_deref() == Some("ehr"))
        );
        let audited: Vec<(&str, &str)> = exported
            .audit
            .iter()
            .map(|l| (l.record_id.as_str(), l.action.as_str()))
            .collect();
        assert_eq!(audited.iter().filter(|(id, _)| *id == "s3").count(), 2);
        assert!(
            audited
                .iter()
                .all(|(id, _)| ["sam", "s1", "s3"].contains(id))
        );
        let missing = export(&*storage, &schema, ("clients", "zed"), usize::MAX);
        assert!(matches!(missing, Err(ServerError::NotFound(_))));
        let admin_lines = storage
            .audit(&AuditQuery {
                record_id: Some("clients/sam".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(admin_lines[0].action, "export-subject");
    }
}
