//! The records API in process: a service account's reads and writes within its grants, the
//! version an update is based on, filters and paging, and the audit lines every call leaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::admin::{self, By};
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Access, AuditQuery, Role, Storage};
use crate::{AppState, Limits, router};

const SCHEMA: &str = r#"{"collections": {"clients": {"scope_field": "caseload_id",
    "fields": {"caseload_id": {"type": "string", "required": true},
               "name": {"type": "string", "required": true},
               "age": {"type": "integer"},
               "notes": {"type": "text"}}}}}"#;

struct Api {
    _dir: tempfile::TempDir,
    storage: Arc<SqliteStorage>,
    app: axum::Router,
}

impl Api {
    fn new() -> Api {
        Api::with_limits(Limits {
            requests_per_second: 0,
            ..Limits::default()
        })
    }

    fn with_limits(limits: Limits) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(&dir.path().join("server.db")).unwrap());
        crate::schema::set_schema(&*storage, SCHEMA).unwrap();
        let app = router(AppState::new(storage.clone(), limits));
        Api {
            _dir: dir,
            storage,
            app,
        }
    }

    /// A service account with `grants`, and its token.
    fn account(&self, name: &str, grants: &[(&str, Access)]) -> String {
        admin::create_user(&*self.storage, By::CommandLine, name, Role::Service).unwrap();
        for (scope, access) in grants {
            admin::grant(&*self.storage, By::CommandLine, name, scope, *access).unwrap();
        }
        admin::enroll_device(&*self.storage, By::CommandLine, name, "connector", None)
            .unwrap()
            .token
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn create(&self, token: &str, id: &str, name: &str, scope: &str) -> i64 {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/records/clients",
                token,
                Some(json!({"id": id, "fields": {"caseload_id": scope, "name": name}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["version"].as_i64().unwrap()
    }
}

#[tokio::test]
async fn a_service_account_creates_reads_updates_and_deletes_within_its_grants() {
    let api = Api::new();
    let ehr = api.account("ehr", &[("north", Access::Write)]);
    let version = api.create(&ehr, "c1", "Sam", "north").await;

    let (status, read) = api
        .call(
            Method::GET,
            "/v1/records/clients/c1?history=true",
            &ehr,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(
        read["fields"],
        json!({"caseload_id": "north", "name": "Sam"})
    );
    assert_eq!(read["version"], json!(version));
    assert_eq!(read["scope"], json!("north"));
    assert_eq!(read["conflicts"], json!([]));
    let history = read["history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (&history[0]["user"], &history[0]["device"]),
        (&json!("ehr"), &json!("connector"))
    );

    // An update names the version it read; one read before another write is refused.
    let (status, updated) = api
        .call(
            Method::PATCH,
            "/v1/records/clients/c1",
            &ehr,
            Some(json!({"base_version": version, "fields": {"age": 7, "notes": "Likes trains."}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let stale = api
        .call(
            Method::PATCH,
            "/v1/records/clients/c1",
            &ehr,
            Some(json!({"base_version": version, "fields": {"age": 8}})),
        )
        .await;
    assert_eq!(stale.0, StatusCode::CONFLICT, "{}", stale.1);
    assert_eq!(stale.1["code"], json!("conflict"));
    let (status, merged) = api
        .call(
            Method::PATCH,
            "/v1/records/clients/c1",
            &ehr,
            Some(json!({"merge": true, "fields": {"age": 8}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{merged}");
    assert!(merged["version"].as_i64() > updated["version"].as_i64());
    let (_, read) = api
        .call(Method::GET, "/v1/records/clients/c1", &ehr, None)
        .await;
    assert_eq!(read["fields"]["age"], json!(8));
    assert_eq!(read["fields"]["notes"], json!("Likes trains."));

    let (status, _) = api
        .call(Method::DELETE, "/v1/records/clients/c1", &ehr, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, read) = api
        .call(Method::GET, "/v1/records/clients/c1", &ehr, None)
        .await;
    assert_eq!(read["deleted"], json!(true));
    let (_, page) = api
        .call(Method::GET, "/v1/records/clients?scope=north", &ehr, None)
        .await;
    assert_eq!(page["records"], json!([]), "a deleted record is not listed");

    // Every call is in the audit log, reads included, with who made it.
    let lines = api
        .storage
        .audit(&AuditQuery {
            record_id: Some("c1".into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .unwrap();
    let actions: Vec<&str> = lines.iter().rev().map(|l| l.action.as_str()).collect();
    assert_eq!(
        actions,
        ["push", "read", "push", "push", "read", "push", "read"]
    );
    assert!(lines.iter().all(|l| l.user == "ehr"));
}

#[tokio::test]
async fn a_service_account_without_a_grant_reads_and_writes_nothing() {
    let api = Api::new();
    let ehr = api.account("ehr", &[("north", Access::Write)]);
    let reports = api.account("reports", &[("south", Access::Read)]);
    api.create(&ehr, "c1", "Sam", "north").await;

    let (status, body) = api
        .call(Method::GET, "/v1/records/clients/c1", &reports, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body["message"],
        json!("not found: no record c1 in collection clients"),
        "the same answer as for a record that does not exist"
    );
    let (status, _) = api
        .call(
            Method::GET,
            "/v1/records/clients?scope=north",
            &reports,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call(
            Method::PATCH,
            "/v1/records/clients/c1",
            &reports,
            Some(json!({"merge": true, "fields": {"age": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/records/clients",
            &reports,
            Some(json!({"fields": {"caseload_id": "south", "name": "Ann"}})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a read grant does not write");
    // A reader of the scope reads, and may not write.
    let auditor = api.account("auditor", &[("north", Access::Read)]);
    let (status, _) = api
        .call(Method::GET, "/v1/records/clients/c1", &auditor, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(Method::DELETE, "/v1/records/clients/c1", &auditor, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_writes_are_refused_naming_the_field_and_nothing_is_stored() {
    let api = Api::new();
    let ehr = api.account("ehr", &[("north", Access::Write)]);
    for (body, names) in [
        (
            json!({"fields": {"caseload_id": "north", "name": "Sam", "mood": "cheerful"}}),
            "mood",
        ),
        (json!({"fields": {"caseload_id": "north"}}), "name"),
        (
            json!({"fields": {"caseload_id": "north", "name": "Sam", "age": "seven"}}),
            "age",
        ),
        (
            json!({"fields": {"caseload_id": "north", "name": "Sam"}, "colour": 1}),
            "colour",
        ),
    ] {
        let (status, answer) = api
            .call(Method::POST, "/v1/records/clients", &ehr, Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(names), "{message}");
        assert!(!message.contains("cheerful") && !message.contains("seven"));
    }
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/records/sessions",
            &ehr,
            Some(json!({"fields": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.create(&ehr, "c1", "Sam", "north").await;
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/records/clients",
            &ehr,
            Some(json!({"id": "c1", "fields": {"caseload_id": "north", "name": "Ann"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "an id taken");
    for body in [
        json!({"fields": {"age": 1}}),
        json!({"fields": {"age": 1}, "merge": true, "base_version": 1}),
    ] {
        let (status, _) = api
            .call(Method::PATCH, "/v1/records/clients/c1", &ehr, Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (status, answer) = api
        .call(
            Method::PATCH,
            "/v1/records/clients/c1",
            &ehr,
            Some(json!({"merge": true, "fields": {"caseload_id": "south"}})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the scope is fixed: {answer}"
    );
    let (_, read) = api
        .call(Method::GET, "/v1/records/clients/c1", &ehr, None)
        .await;
    assert_eq!(read["fields"]["name"], json!("Sam"));
    assert_eq!(read["scope"], json!("north"));
}

#[tokio::test]
async fn a_listing_filters_and_pages_a_scope() {
    let api = Api::new();
    let ehr = api.account("ehr", &[("north", Access::Write), ("south", Access::Write)]);
    for (i, name) in ["Ann", "Bo", "Ann", "Cy", "Ann"].iter().enumerate() {
        api.create(&ehr, &format!("c{i}"), name, "north").await;
    }
    api.create(&ehr, "s1", "Ann", "south").await;

    let mut ids = Vec::new();
    let mut path = "/v1/records/clients?scope=north&limit=2".to_string();
    loop {
        let (status, page) = api.call(Method::GET, &path, &ehr, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for record in page["records"].as_array().unwrap() {
            ids.push(record["id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/records/clients?scope=north&limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(ids, ["c0", "c1", "c2", "c3", "c4"]);

    let (_, page) = api
        .call(
            Method::GET,
            "/v1/records/clients?scope=north&field.name=Ann",
            &ehr,
            None,
        )
        .await;
    let found: Vec<&str> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["c0", "c2", "c4"]);
    assert_eq!(page["next"], Value::Null);
    for bad in [
        "/v1/records/clients?scope=north&field.mood=x",
        "/v1/records/clients?scope=north&colour=x",
        "/v1/records/clients?scope=north&limit=0",
        "/v1/records/clients",
    ] {
        let (status, _) = api.call(Method::GET, bad, &ehr, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn the_openapi_document_is_served_and_agrees_with_the_routes() {
    let api = Api::new();
    let document: Value = serde_json::from_str(super::OPENAPI).unwrap();
    assert_eq!(document["openapi"], json!("3.1.0"));
    let paths = document["paths"].as_object().unwrap();
    // Every route of the source is documented...
    let source = include_str!("../records_api.rs");
    let routed: Vec<&str> = source
        .split(".route(")
        .skip(1)
        .map(|rest| {
            let path = rest.trim_start().trim_start_matches('"');
            &path[..path.find('"').unwrap()]
        })
        .collect();
    assert_eq!(routed.len(), 4);
    for path in &routed {
        assert!(paths.contains_key(*path), "{path} is not documented");
    }
    // ... and every documented operation answers (401 without a token), as documented; the
    // document's own path is not taken for a collection's.
    for (path, operations) in paths {
        assert!(
            routed.contains(&path.as_str()),
            "{path} is documented but not routed"
        );
        let concrete = path
            .replace("{collection}", "clients")
            .replace("{id}", "c1");
        for (method, operation) in operations.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let public = operation["security"] == json!([]);
            let token = if public { "" } else { "fs_unknown" };
            let (status, body) = api.call(method.clone(), &concrete, token, None).await;
            let expected = if public {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(status, expected, "{method} {path}: {body}");
            if public {
                assert_eq!(body, document, "{path} serves the document");
            }
            for (code, response) in operation["responses"].as_object().unwrap() {
                assert!(code.parse::<u16>().is_ok(), "{method} {path}: {code}");
                if let Some(target) = response["$ref"].as_str() {
                    let name = target.strip_prefix("#/components/responses/").unwrap();
                    assert!(
                        document["components"]["responses"][name].is_object(),
                        "{method} {path}: {target}"
                    );
                }
            }
        }
    }
    // The document is no collection of the schema, and no other method takes it for one.
    let ehr = api.account("ehr", &[("north", Access::Write)]);
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/records/openapi.json",
            &ehr,
            Some(json!({"fields": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
}

/// Found by the schema-driven fuzzer (tests/openapi/run.sh): a path parameter that does not
/// read (a device id past `i64`, a percent-encoding that is not UTF-8) was answered in axum's
/// plain text, not as the JSON error both documents describe, and before the token was looked
/// at.
#[tokio::test]
async fn a_path_that_does_not_read_is_a_json_bad_request_once_authenticated() {
    let api = Api::new();
    let ehr = api.account("ehr", &[("north", Access::Write)]);
    admin::create_user(&*api.storage, By::CommandLine, "root", Role::Admin).unwrap();
    let root = admin::enroll_device(&*api.storage, By::CommandLine, "root", "laptop", None)
        .unwrap()
        .token;
    let too_big = "9223372036854775808";
    for (method, path, token) in [
        (Method::GET, "/v1/records/clients/%FF".to_owned(), &ehr),
        (Method::PATCH, "/v1/records/clients/%FF".to_owned(), &ehr),
        (Method::DELETE, "/v1/records/clients/%FF".to_owned(), &ehr),
        (Method::GET, "/v1/records/%FF?scope=north".to_owned(), &ehr),
        (Method::POST, "/v1/records/%FF".to_owned(), &ehr),
        (
            Method::DELETE,
            format!("/v1/admin/devices/{too_big}"),
            &root,
        ),
        (
            Method::POST,
            format!("/v1/admin/devices/{too_big}/tokens"),
            &root,
        ),
        (Method::DELETE, "/v1/admin/tokens/%FF".to_owned(), &root),
        (Method::DELETE, "/v1/admin/actors/%FF".to_owned(), &root),
        (Method::GET, "/v1/admin/users/%FF/grants".to_owned(), &root),
        (
            Method::DELETE,
            "/v1/admin/users/root/grants/%FF".to_owned(),
            &root,
        ),
    ] {
        let (status, body) = api.call(method.clone(), &path, "fs_unknown", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        let (status, body) = api.call(method.clone(), &path, token, None).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::BAD_REQUEST, &json!("bad_request")),
            "{method} {path}: {body}"
        );
    }
}

/// Found while documenting the change feed: a long poll may ask to wait up to 60 seconds, but
/// the server cuts every request off at its request timeout (30 seconds), so a poll that found
/// nothing was answered a bodiless `408` rather than its empty page.
#[tokio::test]
async fn a_long_poll_answers_its_empty_page_within_the_request_timeout() {
    let timeout = Duration::from_secs(5);
    let api = Api::with_limits(Limits {
        requests_per_second: 0,
        request_timeout: timeout,
        ..Limits::default()
    });
    let ehr = api.account("ehr", &[("north", Access::Write)]);
    let started = Instant::now();
    let (status, page) = api
        .call(Method::GET, "/v1/changes?wait=60", &ehr, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page, json!({"changes": [], "next": "0", "more": false}));
    let waited = started.elapsed();
    assert!(waited < timeout, "answered after {waited:?}");
    assert!(waited >= timeout / 2, "a long poll still waits: {waited:?}");
}
