//! Real `fieldsync-server` processes on random loopback ports, with devices as core stores.

use std::path::Path;

use fieldsync_core::Filter;
use fieldsync_tests::server::{Client, ServerProcess, partial_push};
use fieldsync_tests::{fields, open_device};
use serde_json::json;

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

fn start(db: &Path) -> ServerProcess {
    ServerProcess::start(Path::new(SERVER), db)
}

#[test]
fn devices_sync_through_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("server.db"));
    assert!(
        server
            .banner
            .iter()
            .any(|line| line.contains("no users yet")),
        "{:?}",
        server.banner
    );
    let phone_token = server.user_with_device("ada", &["north"]);
    let tablet_token = server.device("ada");
    let phone = open_device(&dir.path().join("phone.db"));
    let tablet = open_device(&dir.path().join("tablet.db"));
    let (phone_client, tablet_client) = (
        Client::new(&server.url, &phone_token),
        Client::new(&server.url, &tablet_token),
    );

    for i in 0..30 {
        phone
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": format!("c{i}"), "notes": "n"})),
            )
            .unwrap();
    }
    assert_eq!(phone_client.push_outbox(&phone, "p1"), 30);
    let cursor = tablet_client.pull_into(&tablet, None);
    assert_eq!(tablet.count("clients", &Filter::All).unwrap(), 30);

    let id = tablet.query("clients", &Default::default()).unwrap()[3]
        .id
        .clone();
    tablet
        .splice_text("clients", &id, "notes", 1, 0, " from the tablet")
        .unwrap();
    assert_eq!(tablet_client.push_outbox(&tablet, "t1"), 1);
    phone_client.pull_into(&phone, None);
    assert_eq!(
        phone.get("clients", &id).unwrap().unwrap().fields["notes"],
        "n from the tablet"
    );
    let page = tablet_client.pull(Some(&cursor), 100).unwrap();
    assert!(
        page.records.is_empty(),
        "the tablet gets nothing back it pushed itself"
    );

    let (status, body) = Client::new(&server.url, "fs_bad")
        .pull(None, 10)
        .unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("\"unauthorized\""));
    assert!(server.terminate(), "SIGTERM stops the server cleanly");
}

#[test]
fn a_backup_restores_into_a_new_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("server.db"));
    let token = server.user_with_device("ada", &["north"]);
    let phone = open_device(&dir.path().join("phone.db"));
    for i in 0..10 {
        phone
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": format!("c{i}")})),
            )
            .unwrap();
    }
    Client::new(&server.url, &token).push_outbox(&phone, "p1");
    let backup = dir.path().join("backup.db");
    // Taken while the server runs.
    server.admin(&["backup", backup.to_str().unwrap()]);
    server.kill();

    let restored = start(&backup);
    let fresh = open_device(&dir.path().join("fresh.db"));
    Client::new(&restored.url, &token).pull_into(&fresh, None);
    assert_eq!(fresh.count("clients", &Filter::All).unwrap(), 10);
    assert!(restored.admin(&["devices"]).contains("ada"));
}

#[test]
fn logs_carry_request_ids_but_no_tokens_or_record_values() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server =
        ServerProcess::start_logging(Path::new(SERVER), dir.path().join("server.db"), Some(&log));
    let token = server.user_with_device("ada", &["north"]);
    let phone = open_device(&dir.path().join("phone.db"));
    let canary = "CANARY-7f3a-client-name";
    phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": canary, "notes": "CANARY-note-text"})),
        )
        .unwrap();
    let client = Client::new(&server.url, &token);
    client.push_outbox(&phone, "p1");
    client.pull_into(&open_device(&dir.path().join("tablet.db")), None);
    Client::new(&server.url, "fs_0123456789abcdef_CANARY")
        .pull(None, 1)
        .unwrap_err();
    assert!(server.terminate());

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() >= 4,
        "the server logged its requests:\n{text}"
    );
    let request_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request done"))
        .collect();
    assert!(request_lines.len() >= 3);
    assert!(
        request_lines.iter().all(|l| l.contains("request_id")),
        "{request_lines:?}"
    );
    let secret = token.rsplit('_').next().unwrap();
    for needle in ["CANARY", secret, token.as_str()] {
        assert!(!text.contains(needle), "the log contains `{needle}`");
    }
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("server.db"));
    let token = server.user_with_device("ada", &["north"]);
    let phone = open_device(&dir.path().join("phone.db"));
    phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ada"})),
        )
        .unwrap();
    let body = fieldsync_core::protocol::encode(&fieldsync_core::protocol::PushRequest {
        batch_id: "p1".into(),
        records: phone
            .outbox(10)
            .unwrap()
            .into_iter()
            .map(Into::into)
            .collect(),
    });
    // The request is in flight: headers and half the body sent.
    let half = body.len() / 2;
    let begun = server.requests_begun();
    let mut connection = partial_push(&server.url, &token, &body, half);
    // A connection whose request the server has not yet read is closed at shutdown, so wait
    // until the push is being handled.
    server.wait_for_request_begun(begun);
    server.signal_terminate();
    server.wait_for_line("shutting down");
    // The request in flight completes after the server began shutting down.
    connection.write_all(&body[half..]).unwrap();
    let mut response = Vec::new();
    connection.read_to_end(&mut response).unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert!(server.wait(), "the server exits cleanly after the request");
    // The push was stored: a restarted server serves it.
    let restarted = start(&dir.path().join("server.db"));
    let page = Client::new(&restarted.url, &token).pull(None, 10).unwrap();
    assert_eq!(page.records.len(), 1);
}
