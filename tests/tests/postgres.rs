//! The PostgreSQL backend on a throwaway cluster: the storage conformance suite, migrations
//! racing at start, and several server processes over one database.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use fieldsync_server::storage::conformance;
use fieldsync_server::storage::postgres::PostgresStorage;
use fieldsync_server::storage::{Role, Storage};
use fieldsync_tests::postgres::TestPostgres;
use fieldsync_tests::server::{Client, ServerProcess};
use fieldsync_tests::{fields, open_device};
use serde_json::json;

#[test]
fn postgres_storage_passes_the_conformance_suite() {
    let cluster = TestPostgres::start();
    conformance::run_all(&|| Box::new(PostgresStorage::open(&cluster.database(), 8).unwrap()));
}

#[test]
fn instances_starting_at_once_migrate_once() {
    /// The database's schema version and a description of every column, constraint, index and
    /// trigger of its tables.
    fn schema_of(url: &str) -> (i32, Vec<String>) {
        let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
        let version = client
            .query_one("SELECT version FROM fieldsync_schema", &[])
            .unwrap()
            .get(0);
        let objects = client
            .query(
                "SELECT format('column %s.%s %s null=%s default=%s identity=%s', table_name,
                               column_name, data_type, is_nullable, column_default, is_identity)
                 FROM information_schema.columns WHERE table_schema = 'public'
                 UNION ALL
                 SELECT format('constraint %s.%s %s', conrelid::regclass, conname,
                               pg_get_constraintdef(oid))
                 FROM pg_constraint WHERE connamespace = 'public'::regnamespace
                 UNION ALL
                 SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = 'public'
                 UNION ALL
                 SELECT format('trigger %s.%s %s', tgrelid::regclass, tgname,
                               pg_get_triggerdef(oid))
                 FROM pg_trigger WHERE NOT tgisinternal
                 ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        (version, objects)
    }

    let cluster = TestPostgres::start();
    let alone = cluster.database();
    let steps = PostgresStorage::open(&alone, 1)
        .unwrap()
        .migrations_applied();
    assert!(steps > 0, "a new database is migrated");
    let migrated_alone = schema_of(&alone);
    assert_eq!(migrated_alone.0, steps as i32);

    let url = cluster.database();
    let opened: Vec<PostgresStorage> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| PostgresStorage::open(&url, 2)))
            .collect();
        starting
            .into_iter()
            .map(|s| s.join().unwrap().expect("every instance opens"))
            .collect()
    });
    let applied: Vec<u32> = opened.iter().map(|s| s.migrations_applied()).collect();
    assert_eq!(
        applied.iter().sum::<u32>(),
        steps,
        "every step applied exactly once: {applied:?}"
    );
    assert_eq!(schema_of(&url), migrated_alone);
    opened[0].create_user("ada", Role::Member).unwrap();
    assert_eq!(opened[3].count_users().unwrap(), 1);
    // Opening an up-to-date database changes nothing.
    let again = PostgresStorage::open(&url, 1).unwrap();
    assert_eq!(again.migrations_applied(), 0);
    assert_eq!(again.user_id("ada").unwrap(), Some(1));
}

#[test]
fn the_audit_log_is_append_only() {
    let cluster = TestPostgres::start();
    let url = cluster.database();
    let storage = PostgresStorage::open(&url, 1).unwrap();
    let ada = storage.create_user("ada", Role::Member).unwrap();
    let phone = storage.create_device(ada, "phone").unwrap();
    storage
        .record_pull(
            phone,
            &[("clients".into(), "a".into(), "north".into())],
            None,
            0,
        )
        .unwrap();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    for statement in [
        "UPDATE audit SET action = 'push'",
        "DELETE FROM audit",
        "TRUNCATE audit",
        // Pruned by date only, and the horizon only moves forward.
        "UPDATE audit_horizon SET prunable_before = -1",
        "DELETE FROM audit_horizon",
        "TRUNCATE audit_horizon",
    ] {
        assert!(client.batch_execute(statement).is_err(), "{statement}");
    }
    let query = fieldsync_server::storage::AuditQuery {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        storage.audit(&query).unwrap().len(),
        1,
        "the line is still there"
    );
}

#[test]
fn a_record_inserted_as_an_instance_from_before_creation_positions_does_is_paged() {
    let cluster = TestPostgres::start();
    let url = cluster.database();
    let storage = PostgresStorage::open(&url, 1).unwrap();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    // Without `created_seq`, as an instance of the previous release still inserts during an
    // upgrade.
    for (id, seq) in [("late", 9i64), ("early", 4)] {
        client
            .execute(
                "INSERT INTO records (collection, id, scope, doc, fields, deleted, updated_seq)
                 VALUES ('clients', $1, 'north', $2, '{}', false, $3)",
                &[&id, &vec![0u8], &seq],
            )
            .unwrap();
    }
    let page = storage
        .documents_page(&["north".into()], 0, i64::MAX, 10)
        .unwrap();
    let read: Vec<(&str, i64)> = page
        .entries
        .iter()
        .map(|e| (e.record_id.as_str(), e.created_seq))
        .collect();
    assert_eq!(read, [("early", 4), ("late", 9)]);
}

#[test]
fn a_document_updated_without_its_lineage_loses_the_lineage() {
    use fieldsync_server::storage::Lineage;
    let cluster = TestPostgres::start();
    let url = cluster.database();
    let storage = PostgresStorage::open(&url, 1).unwrap();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .execute(
            "INSERT INTO records (collection, id, scope, doc, fields, deleted, updated_seq, lineage)
             VALUES ('clients', 'a', 'north', $1, '{}', false, 1, $2)",
            &[&vec![0u8], &Lineage::default().encode()],
        )
        .unwrap();
    let lineage_of = || {
        storage.stored_records(&[("clients", "a")]).unwrap().records[0]
            .clone()
            .unwrap()
            .lineage
    };
    // Written with the document, as this release does (a new lineage): kept.
    let next = Lineage {
        max_op: 1,
        ..Default::default()
    };
    client
        .execute(
            "UPDATE records SET doc = $1, lineage = $2",
            &[&vec![1u8], &next.encode()],
        )
        .unwrap();
    assert_eq!(lineage_of(), Some(next));
    // Another column alone: kept.
    client
        .execute("UPDATE records SET updated_seq = 2", &[])
        .unwrap();
    assert!(lineage_of().is_some());
    // As an instance from before lineages writes it: dropped.
    client
        .execute(
            "UPDATE records SET doc = $1, fields = '{}', deleted = false, updated_seq = 3",
            &[&vec![2u8]],
        )
        .unwrap();
    assert_eq!(lineage_of(), None);
}

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

/// Two server processes over one database, with no rate limit (the tests push in bursts),
/// logging to `a.log` and `b.log` in `dir`.
fn two_instances(url: &str, dir: &Path) -> (ServerProcess, ServerProcess) {
    let start = |name: &str| {
        ServerProcess::start_with(
            Path::new(SERVER),
            url,
            &["--requests-per-second", "0"],
            Some(&dir.join(name)),
        )
    };
    (start("a.log"), start("b.log"))
}

#[test]
fn devices_on_two_instances_see_each_others_changes_and_concurrent_edits_both_survive() {
    let cluster = TestPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_instances(&cluster.database(), dir.path());
    let phone_token = a.user_with_device("ada", &["north"]);
    let tablet_token = b.device("ada");
    let (phone, tablet) = (
        open_device(&dir.path().join("phone.db")),
        open_device(&dir.path().join("tablet.db")),
    );
    let (via_a, via_b) = (
        Client::new(&a.url, &phone_token),
        Client::new(&b.url, &tablet_token),
    );
    let id = phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ada", "notes": "first visit"})),
        )
        .unwrap();
    assert_eq!(via_a.push_outbox(&phone, "p1"), 1);
    let tablet_cursor = via_b.pull_into(&tablet, None);
    assert_eq!(
        tablet.get("clients", &id).unwrap().unwrap().fields["name"],
        "Ada",
        "pushed through A, pulled through B"
    );

    // Both devices edit the record offline, then push at the same moment through different
    // instances.
    phone
        .update("clients", &id, fields(json!({"phone": "555-0100"})))
        .unwrap();
    tablet
        .splice_text("clients", &id, "notes", 0, 0, "calm; ")
        .unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| assert_eq!(via_a.push_outbox(&phone, "p2"), 1));
        scope.spawn(|| assert_eq!(via_b.push_outbox(&tablet, "t1"), 1));
    });
    via_a.pull_into(&phone, None);
    via_b.pull_into(&tablet, Some(tablet_cursor));
    let newcomer = open_device(&dir.path().join("newcomer.db"));
    Client::new(&a.url, &a.device("ada")).pull_into(&newcomer, None);
    for store in [&phone, &tablet, &newcomer] {
        let record = store.get("clients", &id).unwrap().unwrap();
        assert_eq!(record.fields["phone"], "555-0100");
        assert_eq!(record.fields["notes"], "calm; first visit");
    }
    assert!(a.terminate(), "SIGTERM stops an instance cleanly");
    assert!(b.terminate(), "SIGTERM stops an instance cleanly");
    for log in ["a.log", "b.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap();
        assert!(!text.contains("panicked"), "{log}:\n{text}");
    }
}

#[test]
fn concurrent_pushers_on_two_instances_never_make_a_reader_skip_a_change() {
    let cluster = TestPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_instances(&cluster.database(), dir.path());
    let urls = [a.url.as_str(), b.url.as_str()];
    let pushers = 12;
    let per_pusher = 20;
    let tokens: Vec<String> = (0..pushers)
        .map(|p| a.user_with_device(&format!("user{p}"), &["north"]))
        .collect();
    a.admin(&["create-user", "reader"]);
    a.admin(&[
        "grant", "--user", "reader", "--scope", "north", "--access", "read",
    ]);
    let reader_token = b.device("reader");
    let pushing = AtomicUsize::new(pushers);
    let mut seen = std::collections::HashSet::new();
    std::thread::scope(|scope| {
        for (p, token) in tokens.iter().enumerate() {
            let (store, client) = (
                open_device(&dir.path().join(format!("pusher{p}.db"))),
                Client::new(urls[p % 2], token),
            );
            let pushing = &pushing;
            scope.spawn(move || {
                for i in 0..per_pusher {
                    store
                        .insert(
                            "clients",
                            fields(json!({"caseload_id": "north", "name": format!("{p}-{i}")})),
                        )
                        .unwrap();
                    assert_eq!(client.push_outbox(&store, &format!("{p}-{i}")), 1);
                }
                pushing.fetch_sub(1, Ordering::SeqCst);
            });
        }
        // The reader follows the feed through both instances in turn while the pushers push,
        // then once more after they are done, remembering every record it was sent.
        let readers = [
            Client::new(urls[0], &reader_token),
            Client::new(urls[1], &reader_token),
        ];
        let mut cursor: Option<String> = None;
        for turn in 0.. {
            let done = pushing.load(Ordering::SeqCst) == 0;
            let page = readers[turn % 2].pull(cursor.as_deref(), 1000).unwrap();
            seen.extend(page.records.into_iter().map(|r| r.id));
            cursor = Some(page.next_cursor);
            if done && !page.more {
                break;
            }
        }
    });
    assert_eq!(
        seen.len(),
        pushers * per_pusher,
        "the reader ended with every change"
    );
}

/// PostgreSQL text cannot hold a NUL byte and refuses a statement that passes one, where
/// SQLite stores it: names with one must be refused before they reach the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_nul_bytes_are_refused_before_they_reach_postgres() {
    use axum::body::Body;
    use axum::http::Request;
    use fieldsync_record::protocol::{self, PushRecord, PushRequest, PushResponse};
    use fieldsync_server::storage::Access;
    use fieldsync_server::{AppState, Limits, admin, router};
    use tower::ServiceExt as _;

    let cluster = TestPostgres::start();
    // The blocking PostgreSQL client runs its own runtime, which cannot start on this one's
    // worker threads without leave; the router itself calls storage on the blocking pool.
    let (storage, token) = tokio::task::block_in_place(|| {
        let storage = std::sync::Arc::new(PostgresStorage::open(&cluster.database(), 2).unwrap());
        fieldsync_server::schema::set_schema(&*storage, fieldsync_tests::CLINIC_SCHEMA).unwrap();
        admin::create_user(&*storage, admin::By::CommandLine, "ada", Role::Member).unwrap();
        admin::grant(
            &*storage,
            admin::By::CommandLine,
            "ada",
            "north",
            Access::Write,
        )
        .unwrap();
        let token = admin::enroll_device(&*storage, admin::By::CommandLine, "ada", "phone", None)
            .unwrap()
            .token;
        (storage, token)
    });
    let app = router(AppState::new(storage.clone(), Limits::default()));
    let dir = tempfile::tempdir().unwrap();
    let phone = open_device(&dir.path().join("phone.db"));
    phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ada"})),
        )
        .unwrap();
    let real = PushRecord::from(phone.outbox(1).unwrap().remove(0));
    let with_nul = |collection: &str, id: &str, scope: &str| PushRecord {
        epoch: 0,
        collection: collection.into(),
        id: id.into(),
        scope: scope.into(),
        payload: real.payload.clone(),
    };
    let pushes = [
        ("b\0", vec![real.clone()]),
        ("b1", vec![with_nul("clients", "a\0b", "north")]),
        ("b2", vec![with_nul("clients\0", &real.id, "north")]),
        ("b3", vec![with_nul("clients", &real.id, "north\0")]),
        (
            "b4",
            vec![with_nul("clients", "x", "north"), with_nul("c", "\0", "\0")],
        ),
    ];
    for (batch_id, records) in pushes {
        let count = records.len();
        let request = Request::post("/v1/push")
            .header(protocol::VERSION_HEADER, "1")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(protocol::encode(&PushRequest {
                outbox_seq: None,
                batch_id: batch_id.into(),
                records,
            })))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(
            status.is_success() || status.is_client_error(),
            "batch {batch_id:?}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        if status.is_success() {
            let answer: PushResponse = protocol::decode(&body, 1 << 20).unwrap();
            assert_eq!(answer.results.len(), count);
            for result in &answer.results {
                if result.id.contains('\0') || result.collection.contains('\0') {
                    assert!(result.rejected.is_some(), "{result:?}");
                }
            }
        }
    }
    // The blocking client's connections close on its own runtime, outside this one.
    tokio::task::block_in_place(move || drop((app, storage)));
}
