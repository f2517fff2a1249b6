//! Erasure through a real server process and several devices: content erased on the server
//! leaves every file that held it (the server's database and WAL, with its feed and push
//! answers; each device's store), and a device that was offline during the erasure keeps its
//! own edits of the record without bringing the erased content back.

use std::path::Path;

use fieldsync_core::{AttachmentSource, Store, SyncClient, SyncConfig};
use fieldsync_tests::server::ServerProcess;
use fieldsync_tests::{fields, open_device};
use serde_json::json;

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

/// Which of the files at `path` (a SQLite database and its WAL) hold `needle`, raw.
fn files_holding(path: &Path, needle: &str) -> Vec<String> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path.to_path_buf(), wal.into()]
        .into_iter()
        .filter(|file| {
            std::fs::read(file).is_ok_and(|bytes| {
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            })
        })
        .map(|file| file.display().to_string())
        .collect()
}

async fn start(dir: &Path) -> ServerProcess {
    let db = dir.join("server.db");
    tokio::task::spawn_blocking(move || ServerProcess::start(Path::new(SERVER), db))
        .await
        .unwrap()
}

fn note_of(store: &Store, id: &str) -> serde_json::Value {
    let record = store
        .get("sessions", id)
        .unwrap()
        .expect("the session is there");
    record.fields.get("note").cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_note_leaves_every_file_and_an_offline_device_keeps_its_own_typing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let ada = server.user_with_device("ada", &["north"]);
    let ben = server.user_with_device("ben", &["north"]);
    let cai = server.user_with_device("cai", &["north"]);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let canary = format!("CANARY-{nanos:x}");
    let paths = ["phone.db", "tablet.db", "laptop.db"].map(|name| dir.path().join(name));
    let [phone, tablet, laptop] = paths.clone().map(|path| open_device(&path));
    let syncs = [&ada, &ben, &cai]
        .map(|token| SyncClient::new(SyncConfig::new(&server.url, token)).unwrap());

    // Ada types about another child into this session, syncs, and moves the text on; the
    // canary stays in the note's history everywhere. (Automerge compresses longer data, in
    // which the canary would not show as written.)
    let wrong = format!(" Visited Sam at school; {canary} read the wrong file.");
    let session = phone
        .insert(
            "sessions",
            fields(json!({"caseload_id": "north", "started_at": 1,
                          "note": format!("Visit.{wrong}")})),
        )
        .unwrap();
    syncs[0].sync_now(&phone).await.unwrap();
    phone
        .update("sessions", &session, fields(json!({"note": "Visit."})))
        .unwrap();
    syncs[0].sync_now(&phone).await.unwrap();
    syncs[1].sync_now(&tablet).await.unwrap();
    syncs[2].sync_now(&laptop).await.unwrap();
    // The laptop goes offline and Cai adds to the note there.
    laptop
        .splice_text(
            "sessions",
            &session,
            "note",
            6,
            0,
            " Cai saw Sam read well.",
        )
        .unwrap();
    assert!(
        !files_holding(&dir.path().join("server.db"), &canary).is_empty()
            && !files_holding(&paths[1], &canary).is_empty(),
        "before the erasure the canary is in the server's and the devices' files"
    );

    let said = server.admin(&[
        "erase",
        "--collection",
        "sessions",
        "--id",
        &session,
        "--field",
        "note",
        "--reason",
        "typed into the wrong client's record",
    ]);
    assert!(said.contains("epoch 1"), "{said}");
    for (sync, store) in syncs.iter().zip([&phone, &tablet]) {
        let report = sync.sync_now(store).await.unwrap();
        assert_eq!(report.erased, 1);
        assert_eq!(note_of(store, &session), serde_json::Value::Null);
        assert_eq!(store.history("sessions", &session).unwrap().len(), 1);
    }
    assert_eq!(
        files_holding(&dir.path().join("server.db"), &canary),
        Vec::<String>::new()
    );
    for path in &paths[..2] {
        assert_eq!(files_holding(path, &canary), Vec::<String>::new());
    }
    let audit = server.admin(&["audit", "--record", &session]);
    assert!(
        audit.contains("erase") && audit.contains("typed into the wrong client's record"),
        "{audit}"
    );
    assert!(!audit.contains(&canary));

    // Back online, the laptop's edit is refused as made on the old epoch, made again on the
    // new one, and pushed: its typing survives, the erased text does not come back.
    let report = syncs[2].sync_now(&laptop).await.unwrap();
    assert_eq!((report.erased, report.rebased), (1, 1), "{report:?}");
    assert_eq!(note_of(&laptop, &session), json!(" Cai saw Sam read well."));
    assert_eq!(
        laptop.outbox_len().unwrap(),
        0,
        "the rebased edit was pushed"
    );
    syncs[0].sync_now(&phone).await.unwrap();
    assert_eq!(note_of(&phone, &session), json!(" Cai saw Sam read well."));
    for path in [&paths[0], &paths[2]] {
        assert_eq!(files_holding(path, &canary), Vec::<String>::new());
    }
    assert_eq!(
        files_holding(&dir.path().join("server.db"), &canary),
        Vec::<String>::new()
    );
    drop((phone, tablet, laptop));
    assert!(server.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_erases_exactly_the_sessions_older_than_its_policy() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let ada = server.user_with_device("ada", &["north"]);
    let phone = open_device(&dir.path().join("phone.db"));
    let sync = SyncClient::new(SyncConfig::new(&server.url, &ada)).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    const DAY: i64 = 24 * 3600 * 1000;
    let session = |days_ago: i64| {
        phone
            .insert(
                "sessions",
                fields(
                    json!({"caseload_id": "north", "started_at": now - days_ago * DAY,
                              "note": "Sam read well."}),
                ),
            )
            .unwrap()
    };
    let old = [session(8 * 365), session(2557 + 10)];
    let kept = [session(2557 - 10), session(1)];
    sync.sync_now(&phone).await.unwrap();

    let set = server.admin(&[
        "retention",
        "set",
        "--collection",
        "sessions",
        "--age-field",
        "started_at",
        "--older-than-days",
        "2557",
    ]);
    assert!(set.contains("more than 2557 days old are erased"), "{set}");
    let applied = server.admin(&["retention", "apply"]);
    assert!(applied.contains("sessions: erased 2 records"), "{applied}");
    let again = server.admin(&["retention", "apply"]);
    assert!(again.contains("sessions: erased 0 records"), "{again}");

    let report = sync.sync_now(&phone).await.unwrap();
    assert_eq!(report.erased, 2);
    for id in &old {
        assert!(phone.get("sessions", id).unwrap().is_none());
    }
    for id in &kept {
        assert_eq!(note_of(&phone, id), json!("Sam read well."));
    }
    let audit = server.admin(&["audit", "--record", &old[0]]);
    assert!(
        audit.contains("retention: sessions older than 2557 days"),
        "{audit}"
    );
    drop(phone);
    assert!(server.terminate());
}

/// The feed is pruned past a device that did not sync within the keep period: its next sync
/// starts over with whole records and misses nothing; a change feed consumer that far behind
/// is told its cursor expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_pruned_feed_left_behind_syncs_again_from_whole_records() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let ada = server.user_with_device("ada", &["north"]);
    let ben = server.user_with_device("ben", &["north"]);
    server.admin(&["create-user", "ehr", "--service"]);
    server.admin(&["grant", "--user", "ehr", "--scope", "north"]);
    let ehr = server.device("ehr");
    let phone = open_device(&dir.path().join("phone.db"));
    let tablet = open_device(&dir.path().join("tablet.db"));
    let [phone_sync, tablet_sync] =
        [&ada, &ben].map(|token| SyncClient::new(SyncConfig::new(&server.url, token)).unwrap());
    let session =
        |note: &str| fields(json!({"caseload_id": "north", "started_at": 1, "note": note}));
    let first = phone.insert("sessions", session("first")).unwrap();
    phone_sync.sync_now(&phone).await.unwrap();
    tablet_sync.sync_now(&tablet).await.unwrap();
    let http = reqwest::Client::new();
    let feed = |after: &str| {
        http.get(format!("{}/v1/changes?after={after}", server.url))
            .bearer_auth(&ehr)
            .send()
    };
    let page: serde_json::Value =
        serde_json::from_slice(&feed("0").await.unwrap().bytes().await.unwrap()).unwrap();
    let cursor = page["next"].as_str().unwrap().to_owned();

    // The tablet goes quiet; the phone writes on, and the feed is pruned past the tablet.
    let later = phone.insert("sessions", session("later")).unwrap();
    phone
        .update("sessions", &first, fields(json!({"note": "first, edited"})))
        .unwrap();
    phone_sync.sync_now(&phone).await.unwrap();
    let pruned = server.admin(&["prune", "--keep-days", "0"]);
    assert!(pruned.contains("pruned 3 feed entries"), "{pruned}");

    tablet_sync.sync_now(&tablet).await.unwrap();
    assert_eq!(note_of(&tablet, &first), json!("first, edited"));
    assert_eq!(note_of(&tablet, &later), json!("later"));
    let expired = feed(&cursor).await.unwrap();
    assert_eq!(expired.status(), 410);
    let body: serde_json::Value = serde_json::from_slice(&expired.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "cursor_expired");
    drop((phone, tablet));
    assert!(server.terminate());
}

/// Erasing a client's consent form drops its bytes from the server at once, unless another
/// record of the scope still references them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_attachment_s_bytes_leave_the_server() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let ada = server.user_with_device("ada", &["north"]);
    let phone = open_device(&dir.path().join("phone.db"));
    let sync = SyncClient::new(SyncConfig::new(&server.url, &ada)).unwrap();
    let client = |name: &str| {
        phone
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": name})),
            )
            .unwrap()
    };
    let (sam, kim) = (client("Sam"), client("Kim"));
    let form = b"CANARY consent form of the wrong family".repeat(100);
    let shared = b"the clinic's leaflet".to_vec();
    let attach = |id: &str, bytes: &[u8]| {
        phone
            .attach(
                "clients",
                id,
                "consent_form",
                AttachmentSource::Bytes(bytes),
                "image/jpeg",
                None,
            )
            .unwrap()
    };
    let form_ref = attach(&sam, &form);
    attach(&kim, &shared);
    let leaflet = attach(&sam, &shared);
    sync.sync_now(&phone).await.unwrap();
    let held = |sha256: &str| {
        let url = format!("{}/v1/scopes/north/attachments/{sha256}", server.url);
        let ada = ada.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(ada)
                .header("fieldsync-protocol", "1")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let hex = |sha256: [u8; 32]| {
        sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let form_sha = hex(form_ref.sha256);
    assert_eq!(held(&form_sha).await, 200);

    // Sam's field held the form, then the leaflet Kim's record references too.
    let said = server.admin(&[
        "erase",
        "--collection",
        "clients",
        "--id",
        &sam,
        "--field",
        "consent_form",
        "--reason",
        "consent withdrawn",
    ]);
    assert!(said.contains("1 attachments dropped"), "{said}");
    assert_eq!(held(&form_sha).await, 404);
    assert_eq!(
        held(&hex(leaflet.sha256)).await,
        200,
        "Kim's record still uses it"
    );
    drop(phone);
    assert!(server.terminate());
}
