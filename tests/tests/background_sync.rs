//! Background sync against a real server: syncing after local writes, stopping on a refused
//! token, retrying while the server is unreachable, and the budgeted sync an OS background task
//! runs. Every wait is on a status the listener reports, never on a timer; the budgeted sync's
//! test slows its requests down and checks bounds only (at most so much in so long).

use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldsync_core::{
    BackgroundOptions, BackgroundSync, BoxFuture, Credentials, SyncClient, SyncConfig,
    SyncListener, SyncState, SyncStatus, Transport, TransportRequest, TransportResponse,
    http_transport,
};
use fieldsync_tests::server::ServerProcess;
use fieldsync_tests::{fields, open_device};
use serde_json::json;

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

/// An upper bound for waits on the listener, so a broken loop fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

struct Statuses(Mutex<Sender<SyncStatus>>);

impl SyncListener for Statuses {
    fn on_status(&self, status: &SyncStatus) {
        let _ = self.0.lock().unwrap().send(status.clone());
    }
}

fn listener() -> (Arc<dyn SyncListener>, Receiver<SyncStatus>) {
    let (sender, receiver) = channel();
    (Arc::new(Statuses(Mutex::new(sender))), receiver)
}

fn wait_for(
    statuses: &Receiver<SyncStatus>,
    what: &str,
    wanted: impl Fn(&SyncStatus) -> bool,
) -> SyncStatus {
    loop {
        let status = statuses
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no status {what}"));
        if wanted(&status) {
            return status;
        }
    }
}

fn quick() -> BackgroundOptions {
    BackgroundOptions {
        interval: Duration::from_secs(3600),
        debounce: Duration::from_millis(20),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_writes_are_synced_soon_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(Path::new(SERVER), dir.path().join("server.db"));
    let token = server.user_with_device("ada", &["north"]);
    let other_token = server.device("ada");
    let phone = open_device(&dir.path().join("phone.db"));
    let (status_listener, statuses) = listener();
    let client = SyncClient::new(SyncConfig::new(&server.url, &token)).unwrap();
    let background =
        BackgroundSync::start(client, phone.clone(), quick(), Some(status_listener)).unwrap();

    let id = phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ada"})),
        )
        .unwrap();
    let synced = wait_for(&statuses, "after the write", |s| {
        s.state == SyncState::Idle && s.progress.pushed == 1
    });
    assert!(synced.last_success_ms.is_some());
    let report = synced.last_report.expect("the report of the last sync");
    assert_eq!((report.pushed, report.rejected), (1, 0));
    assert!(report.complete);
    assert_eq!(background.status().state, SyncState::Idle);

    let tablet = open_device(&dir.path().join("tablet.db"));
    SyncClient::new(SyncConfig::new(&server.url, &other_token))
        .unwrap()
        .sync_now(&tablet)
        .await
        .unwrap();
    assert!(tablet.get("clients", &id).unwrap().is_some());

    background.stop().await;
    wait_for(&statuses, "stopped", |s| s.stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_background_sync_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(Path::new(SERVER), dir.path().join("server.db"));
    let (device_id, token) = {
        server.admin(&["create-user", "ada"]);
        server.enroll("ada")
    };
    server.admin(&["revoke-device", &device_id.to_string()]);
    let phone = open_device(&dir.path().join("phone.db"));
    let (status_listener, statuses) = listener();
    let client = SyncClient::new(SyncConfig::new(&server.url, &token)).unwrap();
    let background = BackgroundSync::start(client, phone, quick(), Some(status_listener)).unwrap();
    let failed = wait_for(&statuses, "refused", |s| s.stopped);
    assert_eq!(failed.state, SyncState::Error);
    assert!(
        failed.last_error.as_deref().unwrap().contains("refused"),
        "{failed:?}"
    );
    assert_eq!(failed.retry_in_ms, None, "no retry: only a new token helps");
    background.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_reported_offline_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago and has nothing listening now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let phone = open_device(&dir.path().join("phone.db"));
    let (status_listener, statuses) = listener();
    let config = SyncConfig::new(format!("http://127.0.0.1:{port}"), "fs_x");
    let background = BackgroundSync::start(
        SyncClient::new(config).unwrap(),
        phone,
        quick(),
        Some(status_listener),
    )
    .unwrap();
    for attempt in 0..3 {
        let offline = wait_for(&statuses, "offline", |s| s.state == SyncState::Offline);
        assert!(
            offline
                .retry_in_ms
                .is_some_and(|ms| (10..=40).contains(&ms)),
            "attempt {attempt}: {offline:?}"
        );
        assert!(!offline.stopped);
    }
    background.stop().await;
    wait_for(&statuses, "stopped", |s| s.stopped);
}

/// The real HTTP transport, each request held back by `delay` first: a slow connection.
#[derive(Debug)]
struct Slow {
    inner: Arc<dyn Transport>,
    delay: Duration,
}

impl Transport for Slow {
    fn send<'a>(
        &'a self,
        credentials: &'a Credentials,
        request: TransportRequest,
    ) -> BoxFuture<'a, fieldsync_core::Result<TransportResponse>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.send(credentials, request).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budgeted_sync_stops_within_its_budget_and_the_next_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(Path::new(SERVER), dir.path().join("server.db"));
    let laptop_token = server.user_with_device("ada", &["north"]);
    let phone_token = server.device("ada");
    let laptop = open_device(&dir.path().join("laptop.db"));
    for n in 0..30 {
        laptop
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": format!("client {n}")})),
            )
            .unwrap();
    }
    SyncClient::new(SyncConfig::new(&server.url, &laptop_token))
        .unwrap()
        .sync_now(&laptop)
        .await
        .unwrap();

    // Two records a page, each request 200 ms late: fifteen pages take three seconds, and a
    // one-second budget has room for a few at most.
    let phone = open_device(&dir.path().join("phone.db"));
    let config = SyncConfig {
        pull_page_size: 2,
        pull_page_bytes: 0,
        ..SyncConfig::new(&server.url, &phone_token)
    };
    let slow = Arc::new(Slow {
        inner: http_transport(&config).unwrap(),
        delay: Duration::from_millis(200),
    });
    let client = SyncClient::with_transport(config, slow);
    let started = std::time::Instant::now();
    let cut_short = client
        .sync_within(&phone, Duration::from_secs(1), &|_| {})
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!cut_short.complete);
    let stored = phone
        .count("clients", &fieldsync_core::Filter::All)
        .unwrap();
    assert!(stored < 30, "{stored} records arrived within the budget");
    // What it reports is what it stored (a page cancelled at the end may have been stored).
    assert!(cut_short.pulled as u64 <= stored);

    let rest = client
        .sync_within(&phone, Duration::from_secs(600), &|_| {})
        .await
        .unwrap();
    assert!(rest.complete);
    assert_eq!(
        phone
            .count("clients", &fieldsync_core::Filter::All)
            .unwrap(),
        30
    );
    assert_eq!(rest.pulled as u64, 30 - stored);

    // No budget at all: nothing is started, and nothing is lost.
    let id = phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ben"})),
        )
        .unwrap();
    let none = client
        .sync_within(&phone, Duration::ZERO, &|_| {})
        .await
        .unwrap();
    assert!(!none.complete);
    assert_eq!((none.pushed, phone.outbox_len().unwrap()), (0, 1));
    let pushed = client.sync_now(&phone).await.unwrap();
    assert_eq!(pushed.pushed, 1);
    assert!(pushed.complete);
    assert!(phone.get("clients", &id).unwrap().is_some());
}
