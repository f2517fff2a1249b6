//! The back office through a real server process: the clinic's own systems reading and
//! writing records with a service account's token while therapists' devices sync, and their
//! edits merging with the devices' offline ones.

use std::path::Path;

use fieldsync_core::{SyncClient, SyncConfig};
use fieldsync_tests::server::ServerProcess;
use fieldsync_tests::{fields, open_device};
use serde_json::{Value, json};

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

/// A JSON call of the records API; its status and body.
async fn call(
    http: &reqwest::Client,
    server: &ServerProcess,
    token: &str,
    (method, path): (reqwest::Method, &str),
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A back-office edit of a session note, made while a therapist edits the same note offline,
/// ends merged character by character on the server and on the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_office_edit_of_a_note_merges_with_an_offline_one() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = {
        let db = dir.path().join("server.db");
        tokio::task::spawn_blocking(move || ServerProcess::start(Path::new(SERVER), db))
            .await
            .unwrap()
    };
    let ada = server.user_with_device("ada", &["north"]);
    server.admin(&["create-user", "ehr", "--service"]);
    server.admin(&["grant", "--user", "ehr", "--scope", "north"]);
    let ehr = server.device("ehr");
    let http = reqwest::Client::new();

    let phone = open_device(&dir.path().join("phone.db"));
    let sync = SyncClient::new(SyncConfig::new(&server.url, &ada)).unwrap();
    let session = phone
        .insert(
            "sessions",
            fields(json!({"caseload_id": "north", "started_at": 1, "note": "Sam read well."})),
        )
        .unwrap();
    sync.sync_now(&phone).await.unwrap();

    // Offline, the therapist adds a word; meanwhile the office adds a sentence.
    phone
        .update(
            "sessions",
            &session,
            fields(json!({"note": "Sam read very well."})),
        )
        .unwrap();
    let path = format!("/v1/records/sessions/{session}");
    let (status, read) = call(&http, &server, &ehr, (reqwest::Method::GET, &path), None).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["fields"]["note"], json!("Sam read well."));
    let (status, written) = call(
        &http,
        &server,
        &ehr,
        (reqwest::Method::PATCH, &path),
        Some(json!({"base_version": read["version"],
                    "fields": {"note": "Sam read well. Reviewed by Dr. Lee."}})),
    )
    .await;
    assert_eq!(status, 200, "{written}");

    let merged = "Sam read very well. Reviewed by Dr. Lee.";
    sync.sync_now(&phone).await.unwrap();
    let on_phone = phone.get("sessions", &session).unwrap().unwrap();
    assert_eq!(on_phone.fields["note"], json!(merged));
    let (_, read) = call(
        &http,
        &server,
        &ehr,
        (reqwest::Method::GET, &format!("{path}?history=true")),
        None,
    )
    .await;
    assert_eq!(read["fields"]["note"], json!(merged));
    let mut who: Vec<&str> = read["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| change["user"].as_str().unwrap_or("(unknown)"))
        .collect();
    who.sort_unstable();
    assert_eq!(who, ["ada", "ada", "ehr"], "each change names who made it");
}

/// Every change after `after` that the feed holds now, following `next`; the new cursor.
async fn drain(
    http: &reqwest::Client,
    server: &ServerProcess,
    token: &str,
    mut after: String,
    seen: &mut Vec<Value>,
) -> String {
    loop {
        let path = format!("/v1/changes?after={after}&limit=3");
        let (status, page) = call(http, server, token, (reqwest::Method::GET, &path), None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["changes"].as_array().unwrap().iter().cloned());
        after = page["next"].as_str().unwrap().to_owned();
        if page["more"] == json!(false) {
            return after;
        }
    }
}

/// An EHR connector reading the change feed, with the server restarted between its reads,
/// gets every change once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_delivers_every_change_once_in_order_across_a_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let start = |db: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || ServerProcess::start(Path::new(SERVER), db))
    };
    let server = start(db.clone()).await.unwrap();
    let ada = server.user_with_device("ada", &["north"]);
    server.admin(&["create-user", "ehr", "--service"]);
    server.admin(&[
        "grant", "--user", "ehr", "--scope", "north", "--access", "read",
    ]);
    let ehr = server.device("ehr");
    let http = reqwest::Client::new();
    let phone = open_device(&dir.path().join("phone.db"));
    let mut written = Vec::new();
    let mut write = |count: usize| {
        for _ in 0..count {
            let id = phone
                .insert(
                    "sessions",
                    fields(json!({"caseload_id": "north", "started_at": written.len()})),
                )
                .unwrap();
            written.push(id);
        }
    };

    write(7);
    let sync = SyncClient::new(SyncConfig::new(&server.url, &ada)).unwrap();
    sync.sync_now(&phone).await.unwrap();
    let mut seen = Vec::new();
    let cursor = drain(&http, &server, &ehr, String::new(), &mut seen).await;
    assert!(server.terminate(), "the server stops cleanly");

    write(5);
    let server = start(db).await.unwrap();
    let sync = SyncClient::new(SyncConfig::new(&server.url, &ada)).unwrap();
    sync.sync_now(&phone).await.unwrap();
    drain(&http, &server, &ehr, cursor, &mut seen).await;

    let ids: Vec<&str> = seen.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, written.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        seen.iter()
            .all(|c| c["user"] == "ada" && c["fields"]["caseload_id"] == "north")
    );
}

/// What a webhook's receiver got: each delivery's body, its signature checked.
#[derive(Default)]
struct Received {
    /// Answer 503 to this many deliveries first, as a receiver that is down.
    refuse: std::sync::atomic::AtomicUsize,
    changes: std::sync::Mutex<Vec<Value>>,
    bad_signatures: std::sync::atomic::AtomicUsize,
}

/// A webhook's receiver on `listener`, checking each delivery's signature with `secret`.
fn receive(listener: tokio::net::TcpListener, secret: String, received: std::sync::Arc<Received>) {
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::atomic::Ordering;
    let hook = move |headers: HeaderMap, body: axum::body::Bytes| {
        let (secret, received) = (secret.clone(), received.clone());
        async move {
            if received
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            let header = |name: &str| headers[name].to_str().unwrap().to_owned();
            let timestamp = header("fieldsync-webhook-timestamp");
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
            let signed = [timestamp.as_bytes(), b".", &body].concat();
            let expected = format!("v1={}", hex_of(ring::hmac::sign(&key, &signed).as_ref()));
            if header("fieldsync-webhook-signature") != expected {
                received.bad_signatures.fetch_add(1, Ordering::SeqCst);
                return StatusCode::UNAUTHORIZED;
            }
            let delivery: Value = serde_json::from_slice(&body).unwrap();
            let mut changes = received.changes.lock().unwrap();
            changes.extend(delivery["changes"].as_array().unwrap().iter().cloned());
            StatusCode::OK
        }
    };
    let app = axum::Router::new().route("/hook", axum::routing::post(hook));
    tokio::spawn(async move { axum::serve(listener, app).await });
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A webhook whose receiver is down for a while (nothing listening, then answering 503) gets
/// every change afterwards, once and in order, each delivery signed; while it fails,
/// `webhook list` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_that_was_down_gets_every_change_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let server = {
        let db = dir.path().join("server.db");
        tokio::task::spawn_blocking(move || {
            ServerProcess::start_with(
                Path::new(SERVER),
                db,
                &["--webhook-max-backoff-secs", "1"],
                None,
            )
        })
        .await
        .unwrap()
    };
    let ada = server.user_with_device("ada", &["north"]);
    server.admin(&["create-user", "ehr", "--service"]);
    server.admin(&[
        "grant", "--user", "ehr", "--scope", "north", "--access", "read",
    ]);
    // A port with nothing listening on it yet: the receiver is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let added = server.admin(&["webhook", "add", "--url", &url, "--user", "ehr"]);
    let secret = added.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{added}");

    let phone = open_device(&dir.path().join("phone.db"));
    let sync = SyncClient::new(SyncConfig::new(&server.url, &ada)).unwrap();
    let mut written = Vec::new();
    for minute in 0..5 {
        written.push(
            phone
                .insert(
                    "sessions",
                    fields(json!({"caseload_id": "north", "started_at": minute})),
                )
                .unwrap(),
        );
    }
    sync.sync_now(&phone).await.unwrap();
    let failing = wait_for(|| {
        let list = server.admin(&["webhook", "list"]);
        list.contains("failing since").then_some(list)
    })
    .await;
    assert!(failing.contains("could not be reached"), "{failing}");

    // The receiver comes back, refusing its first two deliveries still.
    let received = std::sync::Arc::new(Received::default());
    received
        .refuse
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    receive(listener, secret, received.clone());
    for minute in 5..8 {
        written.push(
            phone
                .insert(
                    "sessions",
                    fields(json!({"caseload_id": "north", "started_at": minute})),
                )
                .unwrap(),
        );
    }
    sync.sync_now(&phone).await.unwrap();
    wait_for(|| (received.changes.lock().unwrap().len() >= written.len()).then_some(())).await;
    let changes = received.changes.lock().unwrap().clone();
    let ids: Vec<&str> = changes.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, written.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        received
            .bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    wait_for(|| {
        let list = server.admin(&["webhook", "list"]);
        list.contains("delivering").then_some(())
    })
    .await;
}

/// Polls `check` until it gives something, for at most 30 seconds.
async fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "gave up waiting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
