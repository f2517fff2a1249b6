//! The sync engine against a real server process: several devices, offline edits, conflicts,
//! deletes, catching up, revocation and rejection.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fieldsync_core::{
    BoxFuture, Credentials, Error, Filter, Store, SyncClient, SyncConfig, Transport,
    TransportRequest, TransportResponse,
};
use fieldsync_tests::server::ServerProcess;
use fieldsync_tests::{fields, open_device, record_indexes};
use serde_json::{Value, json};

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

struct Clinic {
    dir: tempfile::TempDir,
    server: ServerProcess,
}

struct Device {
    store: Store,
    client: SyncClient,
}

impl Clinic {
    fn new() -> Clinic {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(Path::new(SERVER), dir.path().join("server.db"));
        Clinic { dir, server }
    }

    /// A device of `user` enrolled as `name`, creating the user with write grants on `scopes`
    /// the first time.
    fn device(&self, user: &str, scopes: &[&str], name: &str) -> Device {
        let existing = self
            .server
            .admin(&["devices"])
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(user));
        if !existing {
            self.server.admin(&["create-user", user]);
            for scope in scopes {
                self.server
                    .admin(&["grant", "--user", user, "--scope", scope]);
            }
        }
        let (_, token) = self.server.enroll_named(user, name);
        self.device_with_token(&token, name)
    }

    fn device_with_token(&self, token: &str, name: &str) -> Device {
        let store = open_device(&self.dir.path().join(format!("{name}.db")));
        let mut config = SyncConfig::new(&self.server.url, token);
        config.pull_page_size = 50;
        config.push_batch_size = 40;
        Device {
            store,
            client: SyncClient::new(config).unwrap(),
        }
    }
}

impl Device {
    async fn sync(&self) -> fieldsync_core::SyncReport {
        self.client.sync_now(&self.store).await.unwrap()
    }

    fn client_record(&self, id: &str) -> Option<fieldsync_core::Fields> {
        self.store.get("clients", id).unwrap().map(|r| r.fields)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_therapists_edit_one_note_offline_and_both_edits_survive() {
    let clinic = Clinic::new();
    let ada = clinic.device("ada", &["north"], "ada-phone");
    let bo = clinic.device("bo", &["north"], "bo-tablet");
    let id = ada
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam", "notes": "Likes trains."})),
        )
        .unwrap();
    ada.sync().await;
    bo.sync().await;

    // Both offline: edits to the same note and to the same scalar field.
    ada.store
        .splice_text("clients", &id, "notes", 0, 0, "Calm today. ")
        .unwrap();
    ada.store
        .update("clients", &id, fields(json!({"phone": "111"})))
        .unwrap();
    bo.store
        .splice_text("clients", &id, "notes", 6, 0, "red ")
        .unwrap();
    bo.store
        .update("clients", &id, fields(json!({"phone": "222"})))
        .unwrap();

    ada.sync().await;
    bo.sync().await;
    ada.sync().await;
    let expected = json!("Calm today. Likes red trains.");
    assert_eq!(ada.client_record(&id).unwrap()["notes"], expected);
    assert_eq!(bo.client_record(&id).unwrap()["notes"], expected);
    // A third, fresh device sees the server's merged copy.
    let fresh = clinic.device("ada", &[], "fresh");
    fresh.sync().await;
    assert_eq!(fresh.client_record(&id).unwrap()["notes"], expected);

    let winner = ada.client_record(&id).unwrap()["phone"].clone();
    let both = BTreeSet::from([("ada", "ada-phone"), ("bo", "bo-tablet")]);
    for device in [&ada, &bo, &fresh] {
        assert_eq!(device.client_record(&id).unwrap()["phone"], winner);
        let conflicts = device.store.conflicts("clients", &id).unwrap();
        assert_eq!(conflicts.len(), 1, "the conflict is visible everywhere");
        assert_eq!(conflicts[0].winner.value, winner);
        // Each value and each change names the person and device behind it.
        let values = std::iter::once(&conflicts[0].winner).chain(&conflicts[0].losers);
        let writers: BTreeSet<(&str, &str)> = values
            .map(|value| {
                let author = value.author.as_ref().expect("a named writer");
                (author.user.as_str(), author.device.as_str())
            })
            .collect();
        assert_eq!(writers, both);
        let history = device.store.history("clients", &id).unwrap();
        let authors: BTreeSet<(&str, &str)> = history
            .iter()
            .map(|change| {
                let author = change.author.as_ref().expect("a named change");
                assert_eq!(author.actor, change.device_id);
                (author.user.as_str(), author.device.as_str())
            })
            .collect();
        assert_eq!(authors, both);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_wins_over_an_offline_edit_everywhere() {
    let clinic = Clinic::new();
    let ada = clinic.device("ada", &["north"], "ada");
    let bo = clinic.device("bo", &["north"], "bo");
    let id = ada
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam"})),
        )
        .unwrap();
    ada.sync().await;
    bo.sync().await;
    ada.store.delete("clients", &id).unwrap();
    bo.store
        .update("clients", &id, fields(json!({"phone": "555"})))
        .unwrap();
    bo.sync().await;
    ada.sync().await;
    bo.sync().await;
    let fresh = clinic.device("bo", &[], "fresh");
    fresh.sync().await;
    for device in [&ada, &bo, &fresh] {
        assert_eq!(device.client_record(&id), None);
        assert_eq!(device.store.count("clients", &Filter::All).unwrap(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_through_many_changes_catches_up() {
    let clinic = Clinic::new();
    let busy = clinic.device("ada", &["north"], "busy");
    let away = clinic.device("bo", &["north"], "away");
    away.sync().await;
    let mut ids = Vec::new();
    for round in 0..5 {
        for i in 0..60 {
            let id = busy
                .store
                .insert(
                    "clients",
                    fields(json!({"caseload_id": "north", "name": format!("r{round}-{i}")})),
                )
                .unwrap();
            ids.push(id);
        }
        for id in ids.iter().step_by(7) {
            busy.store
                .update("clients", id, fields(json!({"birth_year": round})))
                .unwrap();
        }
        busy.sync().await;
    }
    let report = away.sync().await;
    assert!(report.pulled >= 300, "{report:?}");
    assert_eq!(away.store.count("clients", &Filter::All).unwrap(), 300);
    for id in ids.iter().step_by(7) {
        assert_eq!(away.client_record(id), busy.client_record(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_in_many_pages_ends_with_every_index_and_uses_it() {
    let clinic = Clinic::new();
    let writer = clinic.device("ada", &["north"], "writer");
    let writes = (0..400)
        .map(|i| fieldsync_core::Write::Insert {
            collection: "clients".into(),
            id: None,
            fields: fields(json!({"caseload_id": "north", "name": format!("c{i}")})),
        })
        .collect();
    writer.store.write_batch(writes).unwrap();
    writer.sync().await;

    let fresh_path = clinic.dir.path().join("fresh.db");
    let wanted = {
        let fresh = open_device(&fresh_path);
        drop(fresh);
        record_indexes(&fresh_path)
    };
    assert!(!wanted.is_empty());
    // Pages of 50 growing from there: several pages, stored without indexes until the end.
    let device = clinic.device("ada", &["north"], "fresh");
    let report = device.sync().await;
    assert_eq!(report.pulled, 400);
    assert_eq!(record_indexes(&fresh_path), wanted);
    let in_north = fieldsync_core::Query {
        filter: Filter::eq("caseload_id", "north"),
        ..fieldsync_core::Query::default()
    };
    let plan = device.store.query_plan("clients", &in_north).unwrap();
    assert!(
        plan.iter()
            .any(|step| step.starts_with("SEARCH rec_clients USING INDEX idx:clients:")),
        "{plan:?}"
    );
    assert!(
        !plan.iter().any(|step| step.starts_with("SCAN ")),
        "{plan:?}"
    );
    // The same check on a field without an index sees the whole table read.
    let by_phone = fieldsync_core::Query {
        filter: Filter::eq("phone", "555"),
        ..fieldsync_core::Query::default()
    };
    let plan = device.store.query_plan("clients", &by_phone).unwrap();
    assert!(
        plan.iter().any(|step| step.starts_with("SCAN ")),
        "{plan:?}"
    );
    assert_eq!(device.store.query("clients", &in_north).unwrap().len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_new_record_leaves_the_device_and_waits_to_be_retried() {
    let clinic = Clinic::new();
    let ada = clinic.device("ada", &["north"], "ada");
    let forbidden = ada
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "south", "name": "Elsewhere"})),
        )
        .unwrap();
    let allowed = ada
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Here"})),
        )
        .unwrap();
    let report = ada.sync().await;
    assert_eq!((report.pushed, report.rejected), (1, 1));
    let rejected = ada.store.rejected_writes().unwrap();
    assert_eq!(rejected.len(), 1);
    let write = &rejected[0];
    assert_eq!(
        (write.record_id.as_str(), write.code.as_str(), write.created),
        (forbidden.as_str(), "forbidden_scope", true)
    );
    assert_eq!(write.fields["name"], "Elsewhere");
    assert_eq!(write.fields["caseload_id"], "south");
    assert!(
        ada.client_record(&forbidden).is_none(),
        "no other device has it: it leaves this one too"
    );
    assert!(ada.store.outbox(10).unwrap().is_empty());
    let other = clinic.device("ada", &[], "other");
    other.sync().await;
    assert!(other.client_record(&allowed).is_some());
    assert!(other.client_record(&forbidden).is_none());

    // Once the user may write there, the app retries it.
    clinic
        .server
        .admin(&["grant", "--user", "ada", "--scope", "south"]);
    ada.store.retry_rejected_write(write.id).unwrap();
    assert!(ada.store.rejected_writes().unwrap().is_empty());
    let report = ada.sync().await;
    assert_eq!((report.pushed, report.rejected), (1, 0));
    other.sync().await;
    assert_eq!(
        other.client_record(&forbidden).unwrap()["name"],
        "Elsewhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_edit_reverts_to_what_everyone_sees_and_the_next_edit_goes_through() {
    let clinic = Clinic::new();
    let ada = clinic.device("ada", &["north"], "ada");
    let id = ada
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam", "notes": "Calm."})),
        )
        .unwrap();
    ada.sync().await;
    let reader_token = clinic.server.user_with_device("bo", &[]);
    clinic.server.admin(&[
        "grant", "--user", "bo", "--scope", "north", "--access", "read",
    ]);
    let bo = clinic.device_with_token(&reader_token, "bo");
    bo.sync().await;

    // A read-only user edits the record anyway; the writer edits it too.
    bo.store
        .update("clients", &id, fields(json!({"phone": "555-0101"})))
        .unwrap();
    bo.store
        .splice_text("clients", &id, "notes", 5, 0, " Bo was here.")
        .unwrap();
    ada.store
        .update("clients", &id, fields(json!({"name": "Samuel"})))
        .unwrap();
    ada.sync().await;
    let report = bo.sync().await;
    assert_eq!((report.pushed, report.rejected), (0, 2));

    // The reader shows what everyone shows, and keeps what it typed.
    let shown = bo.client_record(&id).unwrap();
    assert_eq!(shown, ada.client_record(&id).unwrap());
    assert_eq!(shown["name"], "Samuel");
    assert!(shown.get("phone").is_none_or(|v| v.is_null()), "{shown:?}");
    assert_eq!(shown["notes"], "Calm.");
    let rejected = bo.store.rejected_writes().unwrap();
    assert_eq!(
        rejected.len(),
        1,
        "both writes of the record, taken back together"
    );
    assert_eq!(rejected[0].code, "forbidden_scope");
    assert_eq!(rejected[0].fields["phone"], "555-0101");
    assert_eq!(rejected[0].fields["notes"], "Calm. Bo was here.");
    assert!(!rejected[0].created);

    // Given write access, the reader's next edit is accepted (it depends only on changes
    // the server has), and so is the retried one.
    clinic.server.admin(&[
        "grant", "--user", "bo", "--scope", "north", "--access", "write",
    ]);
    bo.store
        .update("clients", &id, fields(json!({"active": true})))
        .unwrap();
    bo.store.retry_rejected_write(rejected[0].id).unwrap();
    let report = bo.sync().await;
    assert_eq!((report.pushed, report.rejected), (2, 0));
    ada.sync().await;
    let merged = ada.client_record(&id).unwrap();
    assert_eq!(merged["active"], true);
    assert_eq!(merged["phone"], "555-0101");
    assert_eq!(merged["notes"], "Calm. Bo was here.");
    assert_eq!(merged, bo.client_record(&id).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_stop_syncing_and_revoked_scopes_disappear() {
    let clinic = Clinic::new();
    let ada = clinic.device("ada", &["north", "south"], "ada");
    ada.store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "N"})),
        )
        .unwrap();
    let south = ada
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "south", "name": "S"})),
        )
        .unwrap();
    ada.sync().await;
    let (tablet_id, tablet_token) = clinic.server.enroll("ada");
    let tablet = clinic.device_with_token(&tablet_token, "tablet");
    tablet.sync().await;
    assert_eq!(tablet.store.count("clients", &Filter::All).unwrap(), 2);

    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    let _subscription = tablet
        .store
        .subscribe("clients", Filter::All, move |event| {
            sink.lock().unwrap().extend(event.ids.clone())
        })
        .unwrap();
    clinic
        .server
        .admin(&["revoke-grant", "--user", "ada", "--scope", "south"]);
    let report = tablet.sync().await;
    assert_eq!(report.purged_scopes, vec!["south".to_owned()]);
    assert_eq!(tablet.store.count("clients", &Filter::All).unwrap(), 1);
    assert!(tablet.client_record(&south).is_none());
    assert!(
        tablet.store.history("clients", &south).is_err(),
        "hard deleted, no tombstone"
    );
    assert_eq!(*heard.lock().unwrap(), vec![south.clone()]);

    clinic
        .server
        .admin(&["revoke-device", &tablet_id.to_string()]);
    let err = tablet.client.sync_now(&tablet.store).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized), "{err}");
    ada.sync().await;
    assert_eq!(
        ada.store.count("clients", &Filter::All).unwrap(),
        1,
        "other devices go on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_writes_in_a_revoked_scope_are_kept_before_its_records_go() {
    let clinic = Clinic::new();
    let ada = clinic.device("ada", &["north", "south"], "ada");
    let south = ada
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "south", "name": "S"})),
        )
        .unwrap();
    ada.sync().await;
    // Offline, the therapist writes a note and a new client; meanwhile the scope is revoked.
    ada.store
        .update("clients", &south, fields(json!({"phone": "555-0199"})))
        .unwrap();
    let new = ada
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "south", "name": "New"})),
        )
        .unwrap();
    clinic
        .server
        .admin(&["revoke-grant", "--user", "ada", "--scope", "south"]);
    let report = ada.sync().await;
    assert_eq!(report.purged_scopes, vec!["south".to_owned()]);
    assert_eq!(ada.store.count("clients", &Filter::All).unwrap(), 0);
    let kept = ada.store.rejected_writes().unwrap();
    let by_record: Vec<(&str, &serde_json::Value, bool)> = kept
        .iter()
        .map(|w| {
            (
                w.record_id.as_str(),
                w.fields.get("phone").or(w.fields.get("name")).unwrap(),
                w.created,
            )
        })
        .collect();
    assert_eq!(
        by_record,
        vec![
            (south.as_str(), &json!("555-0199"), false),
            (new.as_str(), &json!("New"), true)
        ]
    );
    assert!(ada.store.outbox(10).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_reports_each_pulled_record_once() {
    let clinic = Clinic::new();
    let ada = clinic.device("ada", &["north"], "ada");
    let bo = clinic.device("ada", &[], "bo");
    let id = ada
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam"})),
        )
        .unwrap();
    ada.sync().await;
    bo.sync().await;
    // Three pushes of one record, then 60 other records, then the first again: its feed
    // entries fall in both of the pull's pages of 50.
    for phone in ["1", "2", "3"] {
        ada.store
            .update("clients", &id, fields(json!({"phone": phone})))
            .unwrap();
        ada.sync().await;
    }
    for n in 0..60 {
        ada.store
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": format!("c{n}")})),
            )
            .unwrap();
    }
    ada.sync().await;
    ada.store
        .update("clients", &id, fields(json!({"phone": "4"})))
        .unwrap();
    ada.sync().await;
    let report = bo.sync().await;
    assert_eq!(report.pulled, 61);
    assert_eq!(bo.client_record(&id).unwrap()["phone"], "4");
}

/// The HTTP transport, failing (as a lost connection does) every request after the first
/// `allowed`.
#[derive(Debug)]
struct CutAfter {
    http: Arc<dyn Transport>,
    allowed: AtomicUsize,
}

impl Transport for CutAfter {
    fn send<'a>(
        &'a self,
        credentials: &'a Credentials,
        request: TransportRequest,
    ) -> BoxFuture<'a, fieldsync_core::Result<TransportResponse>> {
        let allowed = self
            .allowed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        Box::pin(async move {
            if !allowed {
                return Err(Error::Network("the connection failed".into()));
            }
            self.http.send(credentials, request).await
        })
    }
}

/// What the admin API and the `devices` command show of the device of `user`: the API's
/// `pending_changes`, `pending_reported_at` and `last_sync_at`, and the command's `pending`
/// column.
async fn pending_shown(clinic: &Clinic, admin_token: &str, user: &str) -> (Value, Value, String) {
    // The HTTP client needs a crypto provider, even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let answer = reqwest::Client::new()
        .get(format!(
            "{}/v1/admin/devices?user={user}",
            clinic.server.url
        ))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let listed: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    let device = &listed["devices"][0];
    let at = &device["pending_reported_at"];
    assert_eq!(at, &device["last_sync_at"], "said at the last sync");
    let id = device["id"].to_string();
    let command = clinic.server.admin(&["devices"]);
    let line = command
        .lines()
        .find(|line| line.split_whitespace().next() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("device {id} is listed: {command}"));
    // id, user, device, last sync, pending, pending as of, schema, state, actor.
    let columns: Vec<&str> = line.split_whitespace().collect();
    let shown_at = at
        .as_i64()
        .map_or("-".to_owned(), |_| columns[3].to_owned());
    assert_eq!(columns[5], shown_at, "{command}");
    (
        device["pending_changes"].clone(),
        at.clone(),
        columns[4].to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_see_what_a_device_has_not_pushed_yet_until_it_has() {
    let clinic = Clinic::new();
    let token = clinic.server.user_with_device("ada", &["north"]);
    let ada = clinic.device_with_token(&token, "ada");
    clinic.server.admin(&["create-user", "root", "--admin"]);
    let admin_token = clinic.server.device("root");
    let (count, at, column) = pending_shown(&clinic, &admin_token, "ada").await;
    assert_eq!(
        (count, at, column.as_str()),
        (Value::Null, Value::Null, "-"),
        "a device that never synced has said nothing"
    );
    // A first sync, with nothing to push: later pulls are incremental, and bring nothing (a
    // device's own changes are left out), which the server records sparingly.
    ada.sync().await;
    let (count, _, column) = pending_shown(&clinic, &admin_token, "ada").await;
    assert_eq!((count, column.as_str()), (json!(0), "0"));
    for n in 0..100 {
        ada.store
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": format!("c{n}")})),
            )
            .unwrap();
    }

    // A sync cut off after its first push (of 40): the server heard 100 were waiting.
    let mut config = SyncConfig::new(&clinic.server.url, &token);
    config.push_batch_size = 40;
    let transport = CutAfter {
        http: fieldsync_core::http_transport(&config).unwrap(),
        allowed: AtomicUsize::new(1),
    };
    let cut = SyncClient::with_transport(config, Arc::new(transport));
    assert!(matches!(
        cut.sync_now(&ada.store).await,
        Err(Error::Network(_))
    ));
    let (count, at, column) = pending_shown(&clinic, &admin_token, "ada").await;
    assert_eq!((count, column.as_str()), (json!(100), "100"));
    assert!(at.is_i64());

    // A sync that pushes the other 60: the pull after the last push says none are left.
    let report = ada.sync().await;
    assert_eq!(report.pushed, 60);
    assert_eq!(ada.store.outbox_len().unwrap(), 0);
    let (count, later, column) = pending_shown(&clinic, &admin_token, "ada").await;
    assert_eq!((count, column.as_str()), (json!(0), "0"));
    assert!(later.as_i64() >= at.as_i64());
}

/// Puts `backup` back as the store file `name`, as a phone restored from a backup does.
fn restore(clinic: &Clinic, backup: &Path, name: &str) {
    let path = clinic.dir.path().join(format!("{name}.db"));
    for leftover in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{leftover}", path.display()));
    }
    std::fs::copy(backup, &path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restored_from_an_older_copy_loses_nothing_and_converges() {
    let clinic = Clinic::new();
    let token = clinic.server.user_with_device("ada", &["north"]);
    let reader = clinic.device("bo", &["north"], "bo");
    let ada = clinic.device_with_token(&token, "ada");
    let id = ada
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam", "notes": "Calm."})),
        )
        .unwrap();
    ada.sync().await;
    let actor_before = ada.store.device_id();
    drop(ada);
    let backup = clinic.dir.path().join("backup.db");
    std::fs::copy(clinic.dir.path().join("ada.db"), &backup).unwrap();

    // After the backup: an edit and a new record, pushed.
    let ada = clinic.device_with_token(&token, "ada");
    ada.store
        .update("clients", &id, fields(json!({"phone": "111"})))
        .unwrap();
    let after_backup = ada
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "After the backup"})),
        )
        .unwrap();
    ada.sync().await;
    drop(ada);

    // Restored, the store writes two records (under batch ids it used before) and edits the
    // record whose later change the server has (with a sequence number it used before).
    restore(&clinic, &backup, "ada");
    let ada = clinic.device_with_token(&token, "ada");
    let mut new = Vec::new();
    for name in ["New one", "New two"] {
        new.push(
            ada.store
                .insert(
                    "clients",
                    fields(json!({"caseload_id": "north", "name": name})),
                )
                .unwrap(),
        );
    }
    ada.store
        .update("clients", &id, fields(json!({"phone": "222"})))
        .unwrap();
    ada.store
        .splice_text("clients", &id, "notes", 5, 0, " Restored.")
        .unwrap();
    let report = ada.sync().await;
    assert_eq!(report.rejected, 0, "{report:?}");
    assert_ne!(ada.store.device_id(), actor_before, "a new actor");
    assert!(ada.store.rejected_writes().unwrap().is_empty());
    assert_eq!(ada.store.outbox_len().unwrap(), 0);

    reader.sync().await;
    ada.sync().await;
    let everyone = |device: &Device| {
        let mut records: Vec<(String, fieldsync_core::Fields)> = device
            .store
            .query("clients", &Default::default())
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.fields))
            .collect();
        records.sort_by(|a, b| a.0.cmp(&b.0));
        records
    };
    assert_eq!(everyone(&ada), everyone(&reader));
    assert_eq!(everyone(&ada).len(), 4, "nothing lost, nothing twice");
    assert!(ada.client_record(&after_backup).is_some(), "pulled back");
    let sam = reader.client_record(&id).unwrap();
    assert_eq!(
        sam["phone"], "222",
        "the write made after the restore is the newest"
    );
    assert_eq!(sam["notes"], "Calm. Restored.");
    for id in &new {
        assert!(reader.client_record(id).is_some());
    }

    // A restored store that only pulls gets back what it pushed after the copy was made.
    drop(ada);
    restore(&clinic, &backup, "ada");
    let ada = clinic.device_with_token(&token, "ada");
    ada.sync().await;
    assert_eq!(everyone(&ada), everyone(&reader));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_devices_with_random_writes_and_sync_timing_converge() {
    let clinic = Clinic::new();
    let devices: Vec<Device> = (0..10)
        .map(|n| clinic.device(&format!("user{}", n % 3), &["north"], &format!("d{n}")))
        .collect();
    let seed_record = devices[0]
        .store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "shared", "notes": ""})),
        )
        .unwrap();
    devices[0].sync().await;
    for device in &devices {
        device.sync().await;
    }
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..15 {
        for (n, device) in devices.iter().enumerate() {
            match next() % 4 {
                0 => {
                    device
                        .store
                        .insert(
                            "clients",
                            fields(json!({"caseload_id": "north", "name": format!("{n}-{round}")})),
                        )
                        .unwrap();
                }
                1 => {
                    let notes = device.client_record(&seed_record).unwrap()["notes"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    let at = (next() as usize) % (notes.encode_utf16().count() + 1);
                    device
                        .store
                        .splice_text(
                            "clients",
                            &seed_record,
                            "notes",
                            at,
                            0,
                            &format!("<{n}.{round}>"),
                        )
                        .unwrap();
                }
                2 => {
                    device
                        .store
                        .update(
                            "clients",
                            &seed_record,
                            fields(json!({"birth_year": (next() % 100) as i64})),
                        )
                        .unwrap();
                }
                _ => {}
            }
            if next() % 3 == 0 {
                device.sync().await;
            }
        }
    }
    // Everyone syncs twice: first to push, then to pull what the others pushed.
    for _ in 0..2 {
        for device in &devices {
            device.sync().await;
        }
    }
    let reference = devices[0]
        .store
        .query("clients", &Default::default())
        .unwrap();
    let reference_history: Vec<String> = devices[0]
        .store
        .history("clients", &seed_record)
        .unwrap()
        .into_iter()
        .map(|e| e.change_hash)
        .collect();
    for device in &devices[1..] {
        let records = device.store.query("clients", &Default::default()).unwrap();
        let strip = |records: &[fieldsync_core::Record]| {
            records
                .iter()
                .map(|r| (r.id.clone(), r.fields.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&records), strip(&reference));
        let mut history: Vec<String> = device
            .store
            .history("clients", &seed_record)
            .unwrap()
            .into_iter()
            .map(|e| e.change_hash)
            .collect();
        let mut expected = reference_history.clone();
        history.sort();
        expected.sort();
        assert_eq!(history, expected, "the same changes everywhere");
    }
}
