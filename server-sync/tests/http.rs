//! The server in-process (`tower::ServiceExt::oneshot`), driven by real core stores as devices.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use fieldsync_core::{Fields, Filter, Schema, Store, StoreOptions};
use fieldsync_record::protocol::{
    self, ErrorBody, ErrorCode, Payload, PullResponse, PushRecord, PushRequest, PushResponse,
    RejectCode,
};
use fieldsync_server::storage::sqlite::SqliteStorage;
use fieldsync_server::storage::{Access, Role, Storage};
use fieldsync_server::{AppState, Limits, admin, router};
use serde_json::json;
use tower::ServiceExt;

const SCHEMA: &str = include_str!("../../core/tests/fixtures/clinic.schema.json");

struct Server {
    dir: tempfile::TempDir,
    storage: Arc<SqliteStorage>,
    app: Router,
}

enum Answer<T> {
    Ok(T),
    Err(StatusCode, ErrorBody),
}

impl<T: std::fmt::Debug> Answer<T> {
    fn ok(self) -> T {
        match self {
            Answer::Ok(value) => value,
            Answer::Err(status, body) => panic!("{status}: {body:?}"),
        }
    }

    fn err(self) -> (StatusCode, ErrorCode) {
        match self {
            Answer::Ok(value) => panic!("expected an error, got {value:?}"),
            Answer::Err(status, body) => (status, body.code),
        }
    }
}

impl Server {
    fn new() -> Server {
        // The rate limit has its own test; the others send bursts.
        Server::with_limits(Limits {
            requests_per_second: 0,
            ..Limits::default()
        })
    }

    fn with_limits(limits: Limits) -> Server {
        let server = Server::without_schema(limits);
        fieldsync_server::schema::set_schema(&*server.storage, SCHEMA).unwrap();
        server
    }

    fn without_schema(limits: Limits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(&dir.path().join("server.db")).unwrap());
        let app = router(AppState::new(storage.clone(), limits));
        Server { dir, storage, app }
    }

    /// Creates a user with grants and enrolls one device; returns its token.
    fn user(&self, name: &str, grants: &[(&str, Access)]) -> String {
        admin::create_user(&*self.storage, admin::By::CommandLine, name, Role::Member).unwrap();
        for (scope, access) in grants {
            admin::grant(&*self.storage, admin::By::CommandLine, name, scope, *access).unwrap();
        }
        self.device(name)
    }

    fn device(&self, user: &str) -> String {
        admin::enroll_device(&*self.storage, admin::By::CommandLine, user, "phone", None)
            .unwrap()
            .token
    }

    fn store(&self, name: &str) -> Store {
        let schema = Schema::from_json(SCHEMA).unwrap();
        Store::open(
            self.dir.path().join(format!("{name}.db")),
            schema,
            StoreOptions::default(),
        )
        .unwrap()
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Vec<u8>) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body.to_vec())
    }

    async fn push_raw(&self, token: Option<&str>, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let mut request = Request::post("/v1/push").header(protocol::VERSION_HEADER, "1");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    async fn get_schema(&self, token: &str) -> (StatusCode, Vec<u8>) {
        let request = Request::get("/v1/schema")
            .header(protocol::VERSION_HEADER, "1")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }

    async fn push(&self, token: &str, request: &PushRequest) -> Answer<PushResponse> {
        let (status, body) = self.push_raw(Some(token), protocol::encode(request)).await;
        answer(status, &body)
    }

    async fn pull(&self, token: &str, cursor: Option<&str>, limit: u32) -> Answer<PullResponse> {
        let mut uri = format!("/v1/pull?limit={limit}");
        if let Some(cursor) = cursor {
            uri.push_str(&format!("&cursor={cursor}"));
        }
        let request = Request::get(uri)
            .header(protocol::VERSION_HEADER, "1")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let (status, body) = self.send(request).await;
        answer(status, &body)
    }

    /// Pushes a store's whole outbox, acknowledging what was accepted.
    async fn push_outbox(&self, token: &str, store: &Store, batch_id: &str) -> PushResponse {
        let entries = store.outbox(10_000).unwrap();
        let last = entries.last().map(|e| e.seq);
        let request = PushRequest {
            outbox_seq: None,
            batch_id: batch_id.into(),
            records: entries.into_iter().map(PushRecord::from).collect(),
        };
        let response = self.push(token, &request).await.ok();
        if let Some(last) = last {
            store.acknowledge_outbox(last).unwrap();
        }
        response
    }

    /// Pulls until caught up, merging into the store; returns the final cursor.
    async fn pull_all(
        &self,
        token: &str,
        store: &Store,
        cursor: Option<String>,
    ) -> (Option<String>, Vec<String>) {
        let mut cursor = cursor;
        let mut revoked = Vec::new();
        loop {
            let page = self.pull(token, cursor.as_deref(), 7).await.ok();
            revoked.extend(page.revoked_scopes.clone());
            let report = store
                .apply_remote(page.records.into_iter().map(Into::into).collect())
                .unwrap();
            assert!(report.rejected.is_empty(), "{:?}", report.rejected);
            cursor = Some(page.next_cursor);
            if !page.more {
                return (cursor, revoked);
            }
        }
    }
}

fn answer<T: serde::de::DeserializeOwned>(status: StatusCode, body: &[u8]) -> Answer<T> {
    if status.is_success() {
        Answer::Ok(protocol::decode(body, 64 << 20).expect("a success body decodes"))
    } else {
        let error: ErrorBody =
            serde_json::from_slice(body).expect("an error body is JSON with a code");
        Answer::Err(status, error)
    }
}

fn fields(value: serde_json::Value) -> Fields {
    value.as_object().cloned().unwrap()
}

fn client(caseload: &str, name: &str) -> Fields {
    fields(json!({"caseload_id": caseload, "name": name, "notes": "note"}))
}

fn accepted(response: &PushResponse) -> usize {
    response
        .results
        .iter()
        .filter(|r| r.rejected.is_none())
        .count()
}

#[tokio::test]
async fn records_pushed_by_one_device_reach_another() {
    let server = Server::new();
    let token_a = server.user("ada", &[("north", Access::Write)]);
    let token_b = server.device("ada");
    let (phone, tablet) = (server.store("phone"), server.store("tablet"));
    for i in 0..20 {
        phone
            .insert("clients", client("north", &format!("client {i}")))
            .unwrap();
    }
    let response = server.push_outbox(&token_a, &phone, "b1").await;
    assert_eq!(accepted(&response), 20);

    // First sync: whole documents, in pages.
    let (cursor, _) = server.pull_all(&token_b, &tablet, None).await;
    assert_eq!(tablet.count("clients", &Filter::All).unwrap(), 20);

    // Then changes only, both ways.
    let id = tablet.query("clients", &Default::default()).unwrap()[0]
        .id
        .clone();
    tablet
        .splice_text("clients", &id, "notes", 0, 0, "Tablet: ")
        .unwrap();
    phone
        .update("clients", &id, fields(json!({"phone": "555"})))
        .unwrap();
    assert_eq!(
        accepted(&server.push_outbox(&token_b, &tablet, "t1").await),
        1
    );
    assert_eq!(
        accepted(&server.push_outbox(&token_a, &phone, "b2").await),
        1
    );
    let (_, _) = server.pull_all(&token_b, &tablet, cursor).await;
    let (_, _) = server.pull_all(&token_a, &phone, None).await;
    let on_phone = phone.get("clients", &id).unwrap().unwrap().fields;
    assert_eq!(on_phone["notes"], "Tablet: note");
    assert_eq!(on_phone["phone"], "555");
    assert_eq!(
        Some(on_phone),
        tablet.get("clients", &id).unwrap().map(|r| r.fields)
    );
}

#[tokio::test]
async fn a_first_sync_sends_each_document_once_and_then_what_was_written_meanwhile() {
    let server = Server::new();
    let scopes = ["north", "south", "west"];
    let grants: Vec<(&str, Access)> = scopes.iter().map(|s| (*s, Access::Write)).collect();
    let token = server.user("ada", &grants);
    let reader = server.device("ada");
    let (phone, tablet) = (server.store("phone"), server.store("tablet"));
    let mut created = Vec::new();
    for i in 0..10 {
        for scope in scopes {
            let id = phone
                .insert("clients", client(scope, &format!("{scope} {i}")))
                .unwrap();
            created.push((scope.to_owned(), id));
        }
    }
    server.push_outbox(&token, &phone, "b1").await;

    let mut documents: Vec<(String, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = server.pull(&reader, cursor.as_deref(), 5).await.ok();
        pages += 1;
        assert!(!page.records.is_empty(), "page {pages} is empty");
        for record in &page.records {
            if matches!(record.payload, Payload::Document(_)) {
                documents.push((record.scope.clone(), record.id.clone()));
            }
        }
        tablet
            .apply_remote(page.records.into_iter().map(Into::into).collect())
            .unwrap();
        cursor = Some(page.next_cursor);
        if pages == 1 {
            // Written after the first page: an edit of a record sent already, and a new
            // record whose id comes before every other.
            let sent = &documents[0].1;
            phone
                .update("clients", sent, fields(json!({"phone": "555"})))
                .unwrap();
            let earliest = phone
                .insert_with_id("clients", Some("0-first".into()), client("north", "Early"))
                .unwrap();
            assert_eq!(earliest, "0-first");
            server.push_outbox(&token, &phone, "b2").await;
        }
        if !page.more {
            break;
        }
    }
    // In the order they were created across the scopes, each once; the record created
    // meanwhile comes with the feed.
    assert_eq!(documents, created);
    assert_eq!(tablet.count("clients", &Filter::All).unwrap(), 31);
    let edited = &documents[0].1;
    assert_eq!(
        tablet.get("clients", edited).unwrap().unwrap().fields["phone"],
        "555",
        "the edit made during the first sync came with the feed"
    );
    assert_eq!(
        tablet.get("clients", "0-first").unwrap().unwrap().fields["name"],
        "Early"
    );
}

#[tokio::test]
async fn first_sync_cursors_from_before_creation_order_start_over_and_feed_cursors_stay_readable() {
    // Cursors of first syncs that paged by last change held no creation position to go on
    // from.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct OldCursor {
        documents: bool,
        seq: i64,
        scopes: std::collections::BTreeSet<String>,
    }
    let server = Server::new();
    let token = server.user("ada", &[("north", Access::Write)]);
    let reader = server.device("ada");
    let phone = server.store("phone");
    for i in 0..3 {
        phone
            .insert("clients", client("north", &format!("client {i}")))
            .unwrap();
    }
    server.push_outbox(&token, &phone, "b1").await;
    let old = OldCursor {
        documents: true,
        seq: 2,
        scopes: ["north".to_owned()].into(),
    };
    let old = hex::encode(rmp_serde::to_vec(&old).unwrap());
    let page = server.pull(&reader, Some(&old), 100).await.ok();
    assert_eq!(page.records.len(), 3, "every document, from the first");
    assert!(!page.more);
    // The feed cursor it ends with is one the previous release reads.
    let bytes = hex::decode(&page.next_cursor).unwrap();
    let read: OldCursor = rmp_serde::from_slice(&bytes).unwrap();
    assert!(!read.documents);
}

#[tokio::test]
async fn a_pull_never_returns_a_devices_own_changes() {
    let server = Server::new();
    let token = server.user("ada", &[("north", Access::Write)]);
    let phone = server.store("phone");
    let (cursor, _) = server.pull_all(&token, &phone, None).await;
    phone.insert("clients", client("north", "Ada")).unwrap();
    server.push_outbox(&token, &phone, "b1").await;
    let page = server.pull(&token, cursor.as_deref(), 100).await.ok();
    assert!(page.records.is_empty());
    assert!(!page.more);
}

#[tokio::test]
async fn a_pull_reads_past_the_devices_own_changes_to_fill_its_page() {
    let server = Server::new();
    let token = server.user("ada", &[("north", Access::Write)]);
    let other = server.device("ada");
    let (phone, tablet) = (server.store("phone"), server.store("tablet"));
    let (cursor, _) = server.pull_all(&token, &phone, None).await;
    for i in 0..30 {
        phone
            .insert("clients", client("north", &format!("client {i}")))
            .unwrap();
    }
    server.push_outbox(&token, &phone, "b1").await;
    tablet.insert("clients", client("north", "Bo")).unwrap();
    server.push_outbox(&other, &tablet, "t1").await;

    // Pages of 7: the phone's 30 entries come first, and the one answer still reaches Bo.
    let page = server.pull(&token, cursor.as_deref(), 7).await.ok();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].fields.as_ref().unwrap()["name"], "Bo");
    assert!(!page.more);

    // Reading on is bounded: with more of its own entries than a pull reads, the answer is
    // empty, says more, and has moved the cursor past what it read.
    for i in 0..100 {
        phone
            .insert("clients", client("north", &format!("more {i}")))
            .unwrap();
    }
    server.push_outbox(&token, &phone, "b2").await;
    tablet.insert("clients", client("north", "Cy")).unwrap();
    server.push_outbox(&other, &tablet, "t2").await;
    let first = server.pull(&token, Some(&page.next_cursor), 7).await.ok();
    assert!(first.records.is_empty() && first.more);
    let second = server.pull(&token, Some(&first.next_cursor), 7).await.ok();
    assert_eq!(second.records.len(), 1);
    assert_eq!(second.records[0].fields.as_ref().unwrap()["name"], "Cy");
    assert!(!second.more);
}

#[tokio::test]
async fn a_replayed_batch_is_answered_the_same_and_changes_nothing() {
    let server = Server::new();
    let token = server.user("ada", &[("north", Access::Write)]);
    let reader = server.device("ada");
    let phone = server.store("phone");
    phone.insert("clients", client("north", "Ada")).unwrap();
    let request = PushRequest {
        outbox_seq: None,
        batch_id: "same".into(),
        records: phone
            .outbox(10)
            .unwrap()
            .into_iter()
            .map(PushRecord::from)
            .collect(),
    };
    let first = server.push(&token, &request).await.ok();
    let second = server.push(&token, &request).await.ok();
    assert_eq!(first, second);
    let page = server.pull(&reader, None, 100).await.ok();
    assert_eq!(page.records.len(), 1);
    let query = fieldsync_server::storage::AuditQuery {
        limit: 100,
        ..Default::default()
    };
    let audit = server.storage.audit(&query).unwrap();
    assert_eq!(audit.iter().filter(|e| e.action == "push").count(), 1);
}

#[tokio::test]
async fn scopes_limit_what_a_user_reads_and_writes() {
    let server = Server::new();
    let ada = server.user("ada", &[("north", Access::Write), ("south", Access::Read)]);
    let bob = server.user("bob", &[("west", Access::Write)]);
    let ada_store = server.store("ada");
    let bob_store = server.store("bob");
    ada_store.insert("clients", client("north", "N")).unwrap();
    ada_store.insert("clients", client("south", "S")).unwrap();
    let response = server.push_outbox(&ada, &ada_store, "a1").await;
    assert!(response.results[0].rejected.is_none());
    assert_eq!(
        response.results[1].rejected.as_ref().unwrap().code,
        RejectCode::ForbiddenScope
    );

    // Bob pushes into Ada's scope: refused; he reads nothing of it, by any cursor.
    bob_store
        .insert("clients", client("north", "intruder"))
        .unwrap();
    bob_store.insert("clients", client("west", "W")).unwrap();
    let response = server.push_outbox(&bob, &bob_store, "b1").await;
    assert_eq!(
        response.results[0].rejected.as_ref().unwrap().code,
        RejectCode::ForbiddenScope
    );
    assert!(response.results[1].rejected.is_none());
    let page = server.pull(&bob, None, 100).await.ok();
    assert!(page.records.iter().all(|r| r.scope == "west"));
    assert_eq!(page.records.len(), 1);

    // A guessed id in another scope cannot be written through a granted scope.
    let north_id = ada_store
        .query("clients", &Default::default())
        .unwrap()
        .into_iter()
        .find(|r| r.scope == "north")
        .unwrap()
        .id;
    let hijack = PushRequest {
        outbox_seq: None,
        batch_id: "b2".into(),
        records: vec![PushRecord {
            epoch: 0,
            collection: "clients".into(),
            id: north_id,
            scope: "west".into(),
            payload: bob_store
                .outbox(10)
                .unwrap()
                .into_iter()
                .map(PushRecord::from)
                .next()
                .map_or(Payload::Changes(vec![]), |r| r.payload),
        }],
    };
    let response = server.push(&bob, &hijack).await.ok();
    assert!(response.results[0].rejected.is_some());
    let ada_view = server.pull(&ada, None, 100).await.ok();
    assert_eq!(
        ada_view.records.len(),
        1,
        "only Ada's north record exists in her scopes"
    );
}

#[tokio::test]
async fn a_change_made_by_another_device_is_rejected() {
    let server = Server::new();
    let ada = server.user("ada", &[("north", Access::Write)]);
    let other = server.device("ada");
    let (phone, tablet) = (server.store("phone"), server.store("tablet"));
    phone.insert("clients", client("north", "Ada")).unwrap();
    tablet.insert("clients", client("north", "Tab")).unwrap();
    server.push_outbox(&ada, &phone, "p1").await;
    server.push_outbox(&other, &tablet, "t1").await;
    // The tablet's token now tries to push a change of the phone's actor.
    let id = phone.query("clients", &Default::default()).unwrap()[0]
        .id
        .clone();
    phone
        .update("clients", &id, fields(json!({"phone": "1"})))
        .unwrap();
    let request = PushRequest {
        outbox_seq: None,
        batch_id: "t2".into(),
        records: phone
            .outbox(10)
            .unwrap()
            .into_iter()
            .map(PushRecord::from)
            .collect(),
    };
    let response = server.push(&other, &request).await.ok();
    assert_eq!(
        response.results[0].rejected.as_ref().unwrap().code,
        RejectCode::ForeignActor
    );
}

#[tokio::test]
async fn every_endpoint_refuses_missing_bad_revoked_and_expired_tokens() {
    let server = Server::new();
    let good = server.user("ada", &[("north", Access::Write)]);
    let revoked = server.device("ada");
    let revoked_id = revoked.split('_').nth(1).unwrap().to_owned();
    admin::revoke_token(&*server.storage, admin::By::CommandLine, &revoked_id).unwrap();
    let expired = {
        let device = admin::enroll_device(
            &*server.storage,
            admin::By::CommandLine,
            "ada",
            "old",
            Some(0),
        )
        .unwrap();
        device.token
    };
    let phone = server.store("phone");
    phone.insert("clients", client("north", "Ada")).unwrap();
    server.push_outbox(&good, &phone, "p1").await;
    let wrong_secret = format!("{}{}", &good[..good.len() - 4], "0000");
    let tokens: Vec<Option<String>> = vec![
        None,
        Some("not-a-token".into()),
        Some(format!("fs_{}_{}", "0".repeat(16), "0".repeat(64))),
        Some(wrong_secret),
        Some(revoked),
        Some(expired),
    ];
    for token in tokens {
        for path in ["/v1/push", "/v1/pull"] {
            let mut request = if path == "/v1/push" {
                Request::post(path)
            } else {
                Request::get(path)
            }
            .header(protocol::VERSION_HEADER, "1");
            if let Some(token) = &token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let (status, body) = server
                .send(request.body(Body::from(vec![1, 2, 3])).unwrap())
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} with {token:?}");
            let error: ErrorBody = serde_json::from_slice(&body).unwrap();
            assert_eq!(error.code, ErrorCode::Unauthorized);
            assert!(!String::from_utf8_lossy(&body).contains("Ada"));
        }
    }
}

#[tokio::test]
async fn bad_bodies_are_refused_cleanly_and_write_nothing() {
    let server = Server::with_limits(Limits {
        max_body_bytes: 64 << 10,
        ..Limits::default()
    });
    let token = server.user("ada", &[("north", Access::Write)]);
    let reader = server.device("ada");
    let phone = server.store("phone");
    phone.insert("clients", client("north", "Ada")).unwrap();
    let good = protocol::encode(&PushRequest {
        outbox_seq: None,
        batch_id: "b".into(),
        records: phone
            .outbox(10)
            .unwrap()
            .into_iter()
            .map(PushRecord::from)
            .collect(),
    });
    let mut seed = 7u64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect()
    };
    let mut bodies = vec![
        Vec::new(),
        good[..good.len() / 2].to_vec(),
        good[..1].to_vec(),
        b"{\"json\": true}".to_vec(),
    ];
    for len in [1, 10, 100, 1000, 10_000] {
        bodies.push(random(len));
    }
    for body in bodies {
        let (status, response) = server.push_raw(Some(&token), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error: ErrorBody = serde_json::from_slice(&response).unwrap();
        assert_eq!(error.code, ErrorCode::BadRequest);
    }
    let (status, _) = server.push_raw(Some(&token), random(100_000)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let bomb = protocol::encode(&vec![0u8; 40 << 20]);
    let (status, _) = server.push_raw(Some(&token), bomb).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // A decodable push whose change bytes are garbage: that record is rejected alone.
    let garbage = PushRequest {
        outbox_seq: None,
        batch_id: "g".into(),
        records: vec![PushRecord {
            epoch: 0,
            collection: "clients".into(),
            id: "x".into(),
            scope: "north".into(),
            payload: Payload::Changes(vec![serde_bytes::ByteBuf::from(random(64))]),
        }],
    };
    let response = server.push(&token, &garbage).await.ok();
    assert_eq!(
        response.results[0].rejected.as_ref().unwrap().code,
        RejectCode::Malformed
    );
    assert!(
        server
            .pull(&reader, None, 100)
            .await
            .ok()
            .records
            .is_empty()
    );
}

#[tokio::test]
async fn an_unknown_protocol_version_gets_a_clear_error() {
    let server = Server::new();
    let token = server.user("ada", &[("north", Access::Write)]);
    for version in [None, Some("0"), Some("2"), Some("banana")] {
        let mut request =
            Request::get("/v1/pull").header("authorization", format!("Bearer {token}"));
        if let Some(version) = version {
            request = request.header(protocol::VERSION_HEADER, version);
        }
        let (status, body) = server.send(request.body(Body::empty()).unwrap()).await;
        let answer: Answer<PullResponse> = answer(status, &body);
        assert_eq!(
            answer.err(),
            (StatusCode::BAD_REQUEST, ErrorCode::UnsupportedVersion)
        );
    }
}

#[tokio::test]
async fn a_malformed_pending_changes_header_is_refused_and_records_nothing() {
    let server = Server::new();
    let token = server.user("ada", &[("north", Access::Write)]);
    let reader = server.device("ada");
    let phone = server.store("phone");
    phone.insert("clients", client("north", "Ada")).unwrap();
    let body = protocol::encode(&PushRequest {
        outbox_seq: None,
        batch_id: "b".into(),
        records: phone
            .outbox(10)
            .unwrap()
            .into_iter()
            .map(PushRecord::from)
            .collect(),
    });
    // A push or a pull from the phone, carrying each of `values` as the header.
    let send = |push: bool, values: &[&[u8]]| {
        let mut request = if push {
            Request::post("/v1/push")
        } else {
            Request::get("/v1/pull")
        };
        request = request
            .header(protocol::VERSION_HEADER, "1")
            .header("authorization", format!("Bearer {token}"));
        for value in values {
            let value = axum::http::HeaderValue::from_bytes(value).unwrap();
            request = request.header(protocol::PENDING_CHANGES_HEADER, value);
        }
        let body = if push { body.clone() } else { Vec::new() };
        server.send(request.body(Body::from(body)).unwrap())
    };
    let listed = || {
        let devices = server.storage.list_devices().unwrap();
        let phone = devices.into_iter().next().unwrap();
        (
            phone.pending_changes,
            phone.pending_reported_at.is_some(),
            phone.last_sync_at.is_some(),
        )
    };
    let malformed: [&[&[u8]]; 10] = [
        &[b""],
        &[b"-1"],
        &[b"+1"],
        &[b"1.0"],
        &[b"0x10"],
        &[b"1 2"],
        &[b"twelve"],
        &["\u{ff11}".as_bytes()],
        &[b"9223372036854775808"],
        &[b"1", b"1"],
    ];
    for values in malformed {
        for push in [true, false] {
            let (status, answer) = send(push, values).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{values:?}, push {push}");
            let error: ErrorBody = serde_json::from_slice(&answer).unwrap();
            assert_eq!(error.code, ErrorCode::BadRequest);
            assert!(
                error.message.contains(protocol::PENDING_CHANGES_HEADER),
                "{}",
                error.message
            );
        }
    }
    assert_eq!(listed(), (None, false, false), "nothing was recorded");
    let stored = server.pull(&reader, None, 100).await.ok();
    assert!(stored.records.is_empty(), "the refused push stored nothing");

    // Decimal digits, leading zeros allowed, up to the largest signed 64-bit count.
    let (status, _) = send(true, &[b"007"]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(), (Some(7), true, true));
    let (status, _) = send(false, &[b"9223372036854775807"]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(), (Some(i64::MAX as u64), true, true));
    // Without the header the count stays as it was said.
    let (status, _) = send(false, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(), (Some(i64::MAX as u64), true, true));
}

#[tokio::test]
async fn a_revoked_grant_tells_the_device_to_purge_and_a_new_grant_resyncs() {
    let server = Server::new();
    let ada = server.user("ada", &[("north", Access::Write), ("south", Access::Write)]);
    let phone = server.store("phone");
    phone.insert("clients", client("north", "N")).unwrap();
    phone.insert("clients", client("south", "S")).unwrap();
    server.push_outbox(&ada, &phone, "p1").await;
    let tablet = server.store("tablet");
    let tablet_token = server.device("ada");
    let (cursor, _) = server.pull_all(&tablet_token, &tablet, None).await;
    assert_eq!(tablet.count("clients", &Filter::All).unwrap(), 2);

    admin::revoke_grant(&*server.storage, admin::By::CommandLine, "ada", "south").unwrap();
    let page = server
        .pull(&tablet_token, cursor.as_deref(), 100)
        .await
        .ok();
    assert_eq!(page.revoked_scopes, vec!["south".to_owned()]);
    // Until the device moves on to the new cursor, the old one keeps saying so.
    let again = server
        .pull(&tablet_token, cursor.as_deref(), 100)
        .await
        .ok();
    assert_eq!(again.revoked_scopes, vec!["south".to_owned()]);
    let after = server
        .pull(&tablet_token, Some(&page.next_cursor), 100)
        .await
        .ok();
    assert!(after.revoked_scopes.is_empty());

    // Granted again: the next pull sends the scope's documents from the start.
    admin::grant(
        &*server.storage,
        admin::By::CommandLine,
        "ada",
        "south",
        Access::Read,
    )
    .unwrap();
    let resync = server
        .pull(&tablet_token, Some(&after.next_cursor), 100)
        .await
        .ok();
    assert!(
        resync
            .records
            .iter()
            .any(|r| r.scope == "south" && matches!(r.payload, Payload::Document(_)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushers_never_make_a_reader_skip_a_change() {
    let server = Arc::new(Server::new());
    let writers = 4;
    let per_writer = 15;
    let tokens: Vec<String> = (0..writers)
        .map(|w| server.user(&format!("user{w}"), &[("north", Access::Write)]))
        .collect();
    let reader_token = server.user("reader", &[("north", Access::Read)]);
    let mut pushers = Vec::new();
    for (w, token) in tokens.into_iter().enumerate() {
        let server = server.clone();
        pushers.push(tokio::spawn(async move {
            let store = server.store(&format!("writer{w}"));
            for i in 0..per_writer {
                store
                    .insert("clients", client("north", &format!("{w}-{i}")))
                    .unwrap();
                server
                    .push_outbox(&token, &store, &format!("{w}-{i}"))
                    .await;
            }
        }));
    }
    // The reader pages through the feed while the writers push, then once more after.
    let reader = server.store("reader");
    let mut cursor = None;
    loop {
        let done = pushers.iter().all(|p| p.is_finished());
        let (next, _) = server.pull_all(&reader_token, &reader, cursor).await;
        cursor = next;
        if done {
            break;
        }
        tokio::task::yield_now().await;
    }
    for pusher in pushers {
        pusher.await.unwrap();
    }
    let seen = reader.count("clients", &Filter::All).unwrap() as usize;
    assert_eq!(seen, writers * per_writer);
}

#[tokio::test]
async fn health_and_ready_answer() {
    let server = Server::new();
    for path in ["/health", "/ready"] {
        let (status, _) = server
            .send(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// Depends on its four requests coming within a second (one a second, bursts of three), which
/// in-process they do by orders of magnitude.
#[tokio::test]
async fn a_device_over_its_rate_gets_429_with_retry_after() {
    let server = Server::with_limits(Limits {
        requests_per_second: 1,
        request_burst: 3,
        ..Limits::default()
    });
    let token = server.user("ada", &[("north", Access::Write)]);
    let other = server.device("ada");
    let request = || {
        Request::get("/v1/pull")
            .header(protocol::VERSION_HEADER, "1")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    for _ in 0..3 {
        assert_eq!(server.send(request()).await.0, StatusCode::OK);
    }
    let response = server.app.clone().oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let error: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(error.code, ErrorCode::RateLimited);
    assert!(
        server.pull(&other, None, 10).await.ok().records.is_empty(),
        "other devices are not limited"
    );
}

#[tokio::test]
async fn metrics_count_pushes_pulls_and_refusals() {
    let server = Server::new();
    let token = server.user("ada", &[("north", Access::Write)]);
    let phone = server.store("phone");
    phone.insert("clients", client("north", "Ada")).unwrap();
    phone
        .insert("clients", client("south", "Elsewhere"))
        .unwrap();
    server.push_outbox(&token, &phone, "p1").await;
    server.pull(&token, None, 10).await.ok();
    let (status, _) = server.push_raw(None, vec![]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = server
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    for line in [
        "fieldsync_pushes_total 1",
        "fieldsync_pulls_total 1",
        "fieldsync_records_accepted_total 1",
        "fieldsync_records_rejected_total 1",
        "fieldsync_unauthorized_total 1",
        "fieldsync_active_devices 1",
        "fieldsync_push_seconds_count 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    // The embedded backend's own series: its flushes, and the waits of requests for them
    // (the push's and the pull's at least, besides the admin commands').
    let count = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_count ")))
            .unwrap_or_else(|| panic!("missing {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    let flushes = count("fieldsync_wal_flush_seconds");
    let waits = count("fieldsync_durable_wait_seconds");
    assert!(flushes >= 1, "{text}");
    assert!(waits >= 2 && waits >= flushes, "{text}");
}

#[tokio::test]
async fn metrics_are_openmetrics_text_with_the_operators_histograms() {
    let mut server = Server::new();
    // Scopes are named on `/metrics` only when the operator asks (`--metrics-scope-labels`).
    let limits = Limits {
        requests_per_second: 0,
        ..Limits::default()
    };
    let state = AppState::new(server.storage.clone(), limits);
    state.metrics.label_scopes(true);
    server.app = router(state);
    let token = server.user("ada", &[("north", Access::Write)]);
    let phone = server.store("phone");
    phone.insert("clients", client("north", "Ada")).unwrap();
    server.push_outbox(&token, &phone, "p1").await;
    let (status, body) = server
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();

    // The exposition format: declared families, then samples of them, then `# EOF`.
    let mut types = std::collections::HashMap::new();
    let mut samples = std::collections::HashMap::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_none() {
            assert_eq!(line, "# EOF", "{text}");
            break;
        }
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declared.split_once(' ').expect("a name and a type");
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("`{line}`"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of `{line}`"));
        let name = series.split('{').next().unwrap();
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "labels of `{line}`"
            );
        }
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|family| types.contains_key(*family))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "`{line}` of no declared family");
        samples.insert(series.to_owned(), value);
    }

    for (family, kind) in [
        ("fieldsync_push_seconds", "histogram"),
        ("fieldsync_pull_seconds", "histogram"),
        ("fieldsync_merge_seconds", "histogram"),
        ("fieldsync_wal_flush_seconds", "histogram"),
        ("fieldsync_durable_wait_seconds", "histogram"),
        ("fieldsync_feed_lag", "gauge"),
        ("fieldsync_feed_lag_max", "gauge"),
        ("fieldsync_active_devices", "gauge"),
        ("fieldsync_requests", "counter"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(kind), "{text}");
    }
    assert_eq!(samples["fieldsync_merge_seconds_count"], 1.0, "{text}");
    assert_eq!(samples["fieldsync_push_seconds_count"], 1.0, "{text}");
    assert!(
        samples["fieldsync_wal_flush_seconds_count"] >= 1.0,
        "{text}"
    );
    assert!(samples.contains_key("fieldsync_merge_seconds_bucket{le=\"0.001\"}"));
    assert!(samples.contains_key("fieldsync_merge_seconds_bucket{le=\"5.0\"}"));
    // The phone pushed and never pulled: north's last entry is as far ahead of it as the
    // feed's head.
    assert!(
        samples["fieldsync_feed_lag{scope=\"north\"}"] >= 1.0,
        "{text}"
    );
    assert_eq!(
        samples["fieldsync_feed_lag_max"],
        samples["fieldsync_feed_lag{scope=\"north\"}"]
    );
}

/// A new record's saved document and its one change, made by `actor` (hex) as if on that
/// device.
fn written_by(actor: &str, scope: &str, name: &str) -> (Vec<u8>, Vec<u8>) {
    use automerge::transaction::Transactable as _;
    let actor = automerge::ActorId::try_from(actor).unwrap();
    let mut doc = automerge::AutoCommit::new().with_actor(actor);
    doc.put(automerge::ROOT, "caseload_id", scope).unwrap();
    doc.put(automerge::ROOT, "name", name).unwrap();
    let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    (doc.save(), change)
}

fn claim(id: &str, (doc, change): &(Vec<u8>, Vec<u8>), as_document: bool) -> PushRecord {
    PushRecord {
        epoch: 0,
        collection: "clients".into(),
        id: id.into(),
        scope: "north".into(),
        payload: if as_document {
            Payload::Document(serde_bytes::ByteBuf::from(doc.clone()))
        } else {
            Payload::Changes(vec![serde_bytes::ByteBuf::from(change.clone())])
        },
    }
}

#[tokio::test]
async fn a_new_device_cannot_claim_the_actor_of_another_live_device() {
    let server = Server::new();
    let ada = server.user("ada", &[("north", Access::Write)]);
    // Bob may write the scope too, so that only the actor check stands in the way.
    let bob = server.user("bob", &[("north", Access::Write)]);
    let reader = server.user("reader", &[("north", Access::Read)]);
    let phone = server.store("phone");
    phone.insert("clients", client("north", "Ada")).unwrap();
    assert_eq!(accepted(&server.push_outbox(&ada, &phone, "p1").await), 1);
    let actor = phone.device_id().to_owned();
    let (cursor, _) = server
        .pull_all(&reader, &server.store("reader"), None)
        .await;

    // Fresh, unbound devices of another user and of the same user push records made with
    // the phone's actor, as changes and as whole documents.
    let tablet = server.device("ada");
    for (who, token) in [("bob", &bob), ("tablet", &tablet)] {
        for as_document in [false, true] {
            let id = format!("{who}-{as_document}");
            let request = PushRequest {
                outbox_seq: None,
                batch_id: id.clone(),
                records: vec![claim(&id, &written_by(&actor, "north", "x"), as_document)],
            };
            let response = server.push(token, &request).await.ok();
            assert_eq!(
                response.results[0].rejected.as_ref().map(|r| r.code),
                Some(RejectCode::ForeignActor),
                "{who} claiming the phone's actor, document: {as_document}"
            );
        }
    }
    let page = server.pull(&reader, cursor.as_deref(), 100).await.ok();
    assert!(page.records.is_empty(), "a refused claim stored nothing");
    let devices = server.storage.list_devices().unwrap();
    assert_eq!(
        devices
            .iter()
            .filter(|d| d.actor.as_deref() == Some(actor.as_str()))
            .count(),
        1,
        "only the phone holds its actor"
    );
    let phone_device = devices
        .iter()
        .find(|d| d.actor.as_deref() == Some(actor.as_str()))
        .unwrap()
        .id;

    // The refused devices are still free to bind their own actors.
    let bobs_store = server.store("bob");
    bobs_store
        .insert("clients", client("north", "Bob"))
        .unwrap();
    assert_eq!(
        accepted(&server.push_outbox(&bob, &bobs_store, "b1").await),
        1
    );

    // Once the phone is revoked, a device enrolled again with the same store takes its actor
    // over, and the revoked phone's token no longer works.
    admin::revoke_device(&*server.storage, admin::By::CommandLine, phone_device).unwrap();
    let reinstalled = server.device("ada");
    let request = PushRequest {
        outbox_seq: None,
        batch_id: "r1".into(),
        records: vec![claim(
            "reinstalled",
            &written_by(&actor, "north", "again"),
            false,
        )],
    };
    let response = server.push(&reinstalled, &request).await.ok();
    assert!(response.results[0].rejected.is_none(), "{response:?}");
    assert_eq!(
        server.pull(&ada, None, 10).await.err(),
        (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
    );
}

/// A freed actor (its device revoked) goes to the first device whose push stores something:
/// a read-only device that pulls naming it, or pushes records that are all refused, takes
/// nothing. An administrator can see which device holds an actor and free it.
#[tokio::test]
async fn only_a_push_that_stores_something_binds_an_actor() {
    let server = Server::new();
    let ada = server.user("ada", &[("north", Access::Write)]);
    let reader = server.user("reader", &[("north", Access::Read)]);
    let phone = server.store("phone");
    phone.insert("clients", client("north", "Ada")).unwrap();
    assert_eq!(accepted(&server.push_outbox(&ada, &phone, "p1").await), 1);
    let actor = phone.device_id().to_owned();
    let holder = |actor: &str| {
        let devices = server.storage.list_devices().unwrap();
        let holders: Vec<i64> = devices
            .iter()
            .filter(|d| d.actor.as_deref() == Some(actor) && !d.revoked)
            .map(|d| d.id)
            .collect();
        assert!(holders.len() <= 1, "{holders:?}");
        holders.first().copied()
    };
    admin::revoke_device(
        &*server.storage,
        admin::By::CommandLine,
        holder(&actor).unwrap(),
    )
    .unwrap();

    // The reader names the freed actor on its pull, then pushes records made with it, which
    // are refused (it may not write): it holds no actor.
    let query = format!("/v1/pull?actor={actor}");
    let request = Request::get(&query)
        .header("authorization", format!("Bearer {reader}"))
        .header(protocol::VERSION_HEADER, "1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(server.send(request).await.0, StatusCode::OK);
    let refused = PushRequest {
        outbox_seq: None,
        batch_id: "taken".into(),
        records: vec![claim("grab", &written_by(&actor, "north", "x"), false)],
    };
    let response = server.push(&reader, &refused).await.ok();
    assert_eq!(
        response.results[0].rejected.as_ref().map(|r| r.code),
        Some(RejectCode::ForbiddenScope)
    );
    assert_eq!(holder(&actor), None, "nothing stored, nothing bound");

    // The phone, enrolled again with the same store, takes its actor back by writing.
    let reinstalled = server.device("ada");
    let request = PushRequest {
        outbox_seq: None,
        batch_id: "r1".into(),
        records: vec![claim("again", &written_by(&actor, "north", "again"), false)],
    };
    let response = server.push(&reinstalled, &request).await.ok();
    assert!(response.results[0].rejected.is_none(), "{response:?}");
    let device = holder(&actor).unwrap();

    // Freed by an administrator, the actor may be bound again by another device.
    assert!(server.storage.release_actor(&actor).unwrap());
    assert!(!server.storage.release_actor(&actor).unwrap());
    assert_eq!(holder(&actor), None);
    assert!(server.storage.actor_free(device + 100, &actor).unwrap());
}

#[tokio::test]
async fn a_server_without_a_schema_refuses_pushes_until_one_is_set() {
    let server = Server::without_schema(Limits {
        requests_per_second: 0,
        ..Limits::default()
    });
    let ada = server.user("ada", &[("north", Access::Write)]);
    let phone = server.store("phone");
    phone.insert("clients", client("north", "Ada")).unwrap();
    let request = PushRequest {
        outbox_seq: None,
        batch_id: "p1".into(),
        records: phone
            .outbox(10)
            .unwrap()
            .into_iter()
            .map(PushRecord::from)
            .collect(),
    };
    let (status, body) = server
        .push_raw(Some(&ada), protocol::encode(&request))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let error: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(error.code, ErrorCode::NoSchema);
    assert!(error.message.contains("schema set"), "{}", error.message);
    let (status, _) = server.get_schema(&ada).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        server
            .storage
            .audit(&Default::default())
            .unwrap()
            .is_empty()
    );

    fieldsync_server::schema::set_schema(&*server.storage, SCHEMA).unwrap();
    let response = server.push(&ada, &request).await.ok();
    assert_eq!(accepted(&response), 1);
    let (status, body) = server.get_schema(&ada).await;
    assert_eq!(status, StatusCode::OK);
    let served: protocol::SchemaResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(served.version, 1);
    assert_eq!(
        served.schema.collections,
        Schema::from_json(SCHEMA).unwrap().collections
    );
    let (status, _) = server.get_schema("fs_0000000000000000_00").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The actor of the device that pushes [`crafted`] records.
static CRAFTING_DEVICE: std::sync::LazyLock<automerge::ActorId> =
    std::sync::LazyLock::new(automerge::ActorId::random);

/// A new client record of `north` written on one device, with `write` applied before its one
/// change is made.
fn crafted(id: &str, write: impl FnOnce(&mut automerge::AutoCommit)) -> PushRecord {
    use automerge::transaction::Transactable as _;
    let mut doc = automerge::AutoCommit::new().with_actor(CRAFTING_DEVICE.clone());
    doc.put(automerge::ROOT, "caseload_id", "north").unwrap();
    doc.put(automerge::ROOT, "name", "Ada").unwrap();
    write(&mut doc);
    let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    PushRecord {
        epoch: 0,
        collection: "clients".into(),
        id: id.into(),
        scope: "north".into(),
        payload: Payload::Changes(vec![serde_bytes::ByteBuf::from(change)]),
    }
}

#[tokio::test]
async fn records_that_break_the_schema_are_refused_audited_and_never_served() {
    use automerge::transaction::Transactable as _;
    let server = Server::new();
    let ada = server.user("ada", &[("north", Access::Write), ("south", Access::Write)]);
    let bo = server.user("bo", &[("north", Access::Read), ("south", Access::Read)]);
    let records = vec![
        crafted("scope", |d| {
            d.put(automerge::ROOT, "caseload_id", "south").unwrap();
        }),
        crafted("required", |d| d.delete(automerge::ROOT, "name").unwrap()),
        crafted("tombstone", |d| {
            d.put(automerge::ROOT, "_deleted", "yes").unwrap();
        }),
        crafted("typed", |d| {
            d.put(automerge::ROOT, "birth_year", "nineteen").unwrap();
        }),
        PushRecord {
            collection: "referrals".into(),
            ..crafted("collection", |_| {})
        },
        crafted("valid", |_| {}),
    ];
    let response = server
        .push(
            &ada,
            &PushRequest {
                outbox_seq: None,
                batch_id: "p1".into(),
                records,
            },
        )
        .await
        .ok();
    let refusals: Vec<(String, Option<RejectCode>, String)> = response
        .results
        .iter()
        .map(|r| {
            (
                r.id.clone(),
                r.rejected.as_ref().map(|x| x.code),
                r.rejected
                    .as_ref()
                    .map(|x| x.message.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let invalid = Some(RejectCode::InvalidRecord);
    assert_eq!(
        refusals,
        vec![
            (
                "scope".into(),
                invalid,
                "the scope field must hold the record's scope".into()
            ),
            (
                "required".into(),
                invalid,
                "field `name` is required".into()
            ),
            (
                "tombstone".into(),
                invalid,
                "field `_deleted` must be of type boolean".into()
            ),
            (
                "typed".into(),
                invalid,
                "field `birth_year` must be of type integer".into()
            ),
            (
                "collection".into(),
                invalid,
                "collection `referrals` is not declared".into()
            ),
            ("valid".into(), None, String::new()),
        ]
    );
    let audit = server
        .storage
        .audit(&fieldsync_server::storage::AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let refused: Vec<(&str, Option<&str>)> = audit
        .iter()
        .filter(|line| line.action == "refuse")
        .map(|line| (line.record_id.as_str(), line.code.as_deref()))
        .collect();
    assert_eq!(refused.len(), 5, "{audit:?}");
    assert!(
        refused
            .iter()
            .all(|(_, code)| *code == Some("invalid_record"))
    );
    // Nothing refused reaches another device.
    let page = server.pull(&bo, None, 100).await.ok();
    let served: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(served, vec!["valid"]);
}
