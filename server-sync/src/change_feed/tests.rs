//! The change feed in process: every change once and in order, each with the fields it wrote
//! and their values then; only readable scopes; long polls woken by a push; server-sent events.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::admin::{self, By};
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Access, Role};
use crate::{AppState, Limits, router};

const SCHEMA: &str = r#"{"collections": {"sessions": {"scope_field": "caseload_id",
    "fields": {"caseload_id": {"type": "string", "required": true},
               "minutes": {"type": "integer"},
               "note": {"type": "text"}}}}}"#;

struct Feed {
    _dir: tempfile::TempDir,
    app: axum::Router,
    ehr: String,
}

impl Feed {
    fn new() -> Feed {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(&dir.path().join("server.db")).unwrap());
        crate::schema::set_schema(&*storage, SCHEMA).unwrap();
        let limits = Limits {
            requests_per_second: 0,
            ..Limits::default()
        };
        let app = router(AppState::new(storage.clone(), limits));
        let account = |name: &str, scopes: &[&str]| {
            admin::create_user(&*storage, By::CommandLine, name, Role::Service).unwrap();
            for scope in scopes {
                admin::grant(&*storage, By::CommandLine, name, scope, Access::Write).unwrap();
            }
            admin::enroll_device(&*storage, By::CommandLine, name, "connector", None)
                .unwrap()
                .token
        };
        let ehr = account("ehr", &["north", "south"]);
        Feed {
            _dir: dir,
            app,
            ehr,
        }
    }

    fn request(method: Method, path: &str, token: &str, body: Option<Value>) -> Request<Body> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
        match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap()
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let request = Feed::request(method, path, &self.ehr, body);
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn write(&self, method: Method, path: &str, body: Value) {
        let (status, answer) = self.call(method, path, Some(body)).await;
        assert!(status.is_success(), "{status} {answer}");
    }

    /// Every change after `after`, in pages of `limit`, following `next`.
    async fn all_after(&self, mut after: String, limit: u32) -> Vec<Value> {
        let mut changes = Vec::new();
        loop {
            let path = format!("/v1/changes?after={after}&limit={limit}");
            let (status, page) = self.call(Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            changes.extend(page["changes"].as_array().unwrap().iter().cloned());
            after = page["next"].as_str().unwrap().to_owned();
            if !page["more"].as_bool().unwrap() {
                return changes;
            }
        }
    }
}

#[tokio::test]
async fn every_change_comes_once_in_order_with_the_fields_it_wrote() {
    let feed = Feed::new();
    let create = |id: &str, scope: &str| json!({"id": id, "fields": {"caseload_id": scope, "minutes": 30, "note": "Sam read."}});
    feed.write(Method::POST, "/v1/records/sessions", create("s1", "north"))
        .await;
    feed.write(Method::POST, "/v1/records/sessions", create("s2", "south"))
        .await;
    feed.write(
        Method::PATCH,
        "/v1/records/sessions/s1",
        json!({"merge": true, "fields": {"note": "Sam read well."}}),
    )
    .await;
    feed.write(
        Method::PATCH,
        "/v1/records/sessions/s1",
        json!({"merge": true, "fields": {"minutes": 45}}),
    )
    .await;
    feed.write(Method::DELETE, "/v1/records/sessions/s2", json!(null))
        .await;

    let changes = feed.all_after(String::new(), 2).await;
    let seen: Vec<(&str, &Value, bool)> = changes
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap(),
                &c["fields"],
                c["deleted"].as_bool().unwrap(),
            )
        })
        .collect();
    let created = json!({"caseload_id": "north", "minutes": 30, "note": "Sam read."});
    let created_south = json!({"caseload_id": "south", "minutes": 30, "note": "Sam read."});
    assert_eq!(
        seen,
        [
            ("s1", &created, false),
            ("s2", &created_south, false),
            // The note's value as that change left it, not as the record is now.
            ("s1", &json!({"note": "Sam read well."}), false),
            ("s1", &json!({"minutes": 45}), false),
            ("s2", &json!({}), true),
        ]
    );
    let cursors: Vec<i64> = changes
        .iter()
        .map(|c| c["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    assert!(
        changes
            .iter()
            .all(|c| c["user"] == "ehr" && c["at"].as_i64() > Some(0))
    );
    // After the third change, only what came after it.
    let rest = feed.all_after(cursors[2].to_string(), 10).await;
    assert_eq!(rest, changes[3..]);
}

#[tokio::test]
async fn a_caller_sees_only_the_changes_of_scopes_it_may_read() {
    let feed = Feed::new();
    feed.write(
        Method::POST,
        "/v1/records/sessions",
        json!({"id": "s1", "fields": {"caseload_id": "north"}}),
    )
    .await;
    feed.write(
        Method::POST,
        "/v1/records/sessions",
        json!({"id": "s2", "fields": {"caseload_id": "south"}}),
    )
    .await;
    let dir = &feed._dir;
    let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
    admin::create_user(&storage, By::CommandLine, "reports", Role::Service).unwrap();
    admin::grant(&storage, By::CommandLine, "reports", "south", Access::Read).unwrap();
    let reports = admin::enroll_device(&storage, By::CommandLine, "reports", "r", None)
        .unwrap()
        .token;
    let nobody = {
        admin::create_user(&storage, By::CommandLine, "nobody", Role::Service).unwrap();
        admin::enroll_device(&storage, By::CommandLine, "nobody", "n", None)
            .unwrap()
            .token
    };
    for (token, expected) in [(&reports, vec!["s2"]), (&nobody, vec![])] {
        let request = Feed::request(Method::GET, "/v1/changes", token, None);
        let response = feed.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        let ids: Vec<&str> = page["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, expected);
    }
    let (status, _) = feed.call(Method::GET, "/v1/changes?after=soon", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_long_poll_answers_when_a_change_is_stored() {
    let feed = Arc::new(Feed::new());
    let waiting = {
        let feed = feed.clone();
        tokio::spawn(async move { feed.call(Method::GET, "/v1/changes?wait=30", None).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "nothing to answer yet");
    feed.write(
        Method::POST,
        "/v1/records/sessions",
        json!({"id": "s1", "fields": {"caseload_id": "north"}}),
    )
    .await;
    let (status, page) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the poll answered")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["changes"][0]["id"], json!("s1"));
}

#[tokio::test]
async fn server_sent_events_carry_each_change_with_its_cursor_as_id() {
    let feed = Feed::new();
    for id in ["s1", "s2"] {
        feed.write(
            Method::POST,
            "/v1/records/sessions",
            json!({"id": id, "fields": {"caseload_id": "north"}}),
        )
        .await;
    }
    let mut request = Feed::request(Method::GET, "/v1/changes", &feed.ehr, None);
    request
        .headers_mut()
        .insert("accept", "text/event-stream".parse().unwrap());
    let response = feed.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while text.matches("event: change").count() < 2 {
        let data = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&data).unwrap());
    }
    let events: Vec<(&str, Value)> = text
        .split("\n\n")
        .filter(|event| event.contains("event: change"))
        .map(|event| {
            let field = |name: &str| {
                event
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .unwrap()
            };
            (
                field("id: "),
                serde_json::from_str(field("data: ")).unwrap(),
            )
        })
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    for ((id, change), expected) in events.iter().zip(["s1", "s2"]) {
        assert_eq!(change["id"], json!(expected));
        assert_eq!(change["cursor"], json!(id));
    }
}
