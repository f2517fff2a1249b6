//! Processes that die mid-sync: the server killed during a push, a device killed during a pull
//! or while a note is typed. After a restart nothing is lost, nothing is applied twice, and
//! everything converges.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use fieldsync_core::{Filter, SyncClient, SyncConfig};
use fieldsync_record::protocol::{self, PushRecord, PushRequest};
use fieldsync_tests::server::{ServerProcess, partial_push};
use fieldsync_tests::{fields, open_device, record_indexes};
use serde_json::json;

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");
const DEVICE: &str = env!("CARGO_BIN_EXE_fieldsync-device");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_a_push_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let server = ServerProcess::start(Path::new(SERVER), &db);
    let token = server.user_with_device("ada", &["north"]);
    let reader_token = server.device("ada");
    let phone = open_device(&dir.path().join("phone.db"));
    for i in 0..20 {
        phone
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": format!("c{i}")})),
            )
            .unwrap();
    }
    let first_half: Vec<PushRecord> = phone
        .outbox(10)
        .unwrap()
        .into_iter()
        .map(Into::into)
        .collect();
    let all: Vec<PushRecord> = phone
        .outbox(100)
        .unwrap()
        .into_iter()
        .map(Into::into)
        .collect();

    // 1. The server stored the first half but its answer never reached the device.
    let body = protocol::encode(&PushRequest {
        outbox_seq: None,
        batch_id: "lost-answer".into(),
        records: first_half,
    });
    let mut connection = partial_push(&server.url, &token, &body, body.len());
    let mut answer = Vec::new();
    connection.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    // 2. Then a push of everything is cut off half-way: the server dies with the body unread.
    let body = protocol::encode(&PushRequest {
        outbox_seq: None,
        batch_id: "cut-off".into(),
        records: all,
    });
    let begun = server.requests_begun();
    let _connection = partial_push(&server.url, &token, &body, body.len() / 2);
    server.wait_for_request_begun(begun);
    server.kill();

    // The device, which believes nothing was sent, syncs with the restarted server.
    let restarted = ServerProcess::start(Path::new(SERVER), &db);
    let report = SyncClient::new(SyncConfig::new(&restarted.url, &token))
        .unwrap()
        .sync_now(&phone)
        .await
        .unwrap();
    assert_eq!((report.pushed, report.rejected), (20, 0));
    assert!(phone.outbox(100).unwrap().is_empty());

    let tablet = open_device(&dir.path().join("tablet.db"));
    SyncClient::new(SyncConfig::new(&restarted.url, &reader_token))
        .unwrap()
        .sync_now(&tablet)
        .await
        .unwrap();
    assert_eq!(
        tablet.count("clients", &Filter::All).unwrap(),
        20,
        "nothing lost"
    );
    let audit = restarted.admin(&["audit", "--limit", "1000"]);
    let pushes = audit.lines().filter(|l| l.contains(" push ")).count();
    assert_eq!(pushes, 20, "each record was stored once:\n{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_killed_during_a_pull_converges_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(Path::new(SERVER), dir.path().join("server.db"));
    let token = server.user_with_device("ada", &["north"]);
    let device_token = server.device("ada");
    let phone = open_device(&dir.path().join("phone.db"));
    let writes = (0..600)
        .map(|i| fieldsync_core::Write::Insert {
            collection: "clients".into(),
            id: None,
            fields: fields(json!({"caseload_id": "north", "name": format!("c{i}"), "notes": "n"})),
        })
        .collect();
    phone.write_batch(writes).unwrap();
    SyncClient::new(SyncConfig::new(&server.url, &token))
        .unwrap()
        .sync_now(&phone)
        .await
        .unwrap();

    // The device process pulls 50 records a page and is killed after its fourth page.
    let tablet_db = dir.path().join("tablet.db");
    let mut child = Command::new(DEVICE)
        .args([
            "pull",
            tablet_db.to_str().unwrap(),
            &server.url,
            &device_token,
            "50",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for page in 1..=4 {
        let line = lines.next().unwrap().unwrap();
        assert_eq!(line, format!("pulled {}", page * 50));
        if page < 4 {
            writeln!(stdin, "go on").unwrap();
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // A first pull stores its pages without indexes; opening the store builds them again.
    assert!(
        record_indexes(&tablet_db).is_empty(),
        "the first pull suspended the indexes"
    );
    let tablet = open_device(&tablet_db);
    assert!(
        !record_indexes(&tablet_db).is_empty(),
        "opening the store rebuilt them"
    );
    assert_eq!(
        tablet.count("clients", &Filter::All).unwrap(),
        200,
        "the merged pages survived"
    );
    let report = SyncClient::new(SyncConfig::new(&server.url, &device_token))
        .unwrap()
        .sync_now(&tablet)
        .await
        .unwrap();
    assert_eq!(
        report.pulled, 400,
        "the pull resumed after the last stored page"
    );
    assert_eq!(tablet.count("clients", &Filter::All).unwrap(), 600);
    drop(tablet);
    let check = rusqlite::Connection::open(&tablet_db).unwrap();
    let integrity: String = check
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_killed_while_a_note_is_typed_keeps_every_keystroke_and_pushes_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(Path::new(SERVER), dir.path().join("server.db"));
    let token = server.user_with_device("ada", &["north"]);
    let reader_token = server.device("ada");
    let phone_db = dir.path().join("phone.db");
    let id = {
        let phone = open_device(&phone_db);
        let fields = fields(json!({"caseload_id": "north", "name": "Ada", "notes": "Visit: "}));
        phone.insert("clients", fields).unwrap()
    };

    // The app types a note and is killed after at least 300 keystrokes returned: fewer than
    // make a change on their own, so they are all in the typing journal.
    let mut child = Command::new(DEVICE)
        .args(["type", phone_db.to_str().unwrap(), &id, "600"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for typed in 1..=300 {
        assert_eq!(lines.next().unwrap().unwrap(), format!("typed {typed}"));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let phone = open_device(&phone_db);
    let note = phone.get("clients", &id).unwrap().unwrap().fields["notes"].clone();
    let note = note.as_str().unwrap().to_owned();
    let typed = note.strip_prefix("Visit: ").unwrap();
    assert!(typed.len() >= 300, "{} keystrokes kept", typed.len());
    let letters: String = (b'a'..=b'z')
        .cycle()
        .take(typed.len())
        .map(char::from)
        .collect();
    assert_eq!(typed, letters);

    let report = SyncClient::new(SyncConfig::new(&server.url, &token))
        .unwrap()
        .sync_now(&phone)
        .await
        .unwrap();
    assert_eq!(
        report.pushed, 2,
        "the insert, and one change for the typing"
    );
    let tablet = open_device(&dir.path().join("tablet.db"));
    SyncClient::new(SyncConfig::new(&server.url, &reader_token))
        .unwrap()
        .sync_now(&tablet)
        .await
        .unwrap();
    let on_tablet = tablet.get("clients", &id).unwrap().unwrap().fields["notes"].clone();
    assert_eq!(on_tablet, note.as_str());
}
