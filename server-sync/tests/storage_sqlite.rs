//! The storage conformance suite against the embedded SQLite backend.

use fieldsync_server::storage::sqlite::SqliteStorage;
use fieldsync_server::storage::{Batch, conformance};

#[test]
fn sqlite_storage_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::cell::Cell::new(0);
    conformance::run_all(&|| {
        counter.set(counter.get() + 1);
        let path = dir.path().join(format!("server-{}.db", counter.get()));
        Box::new(SqliteStorage::open(&path).unwrap())
    });
}

#[test]
fn the_audit_log_is_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    drop(SqliteStorage::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO users (name, role, created_at) VALUES ('a', 'member', 0)",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope) VALUES (0, 1, 1, 'push', 'c', 'r', 's')",
        [],
    )
    .unwrap();
    assert!(
        conn.execute("UPDATE audit SET action = 'pull'", [])
            .is_err()
    );
    assert!(conn.execute("DELETE FROM audit", []).is_err());

    // Pruned by date only: a line goes once older than the horizon, which only moves forward.
    conn.execute(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope) VALUES (1000, 1, 1, 'push', 'c', 'r', 's')",
        [],
    )
    .unwrap();
    conn.execute("UPDATE audit_horizon SET prunable_before = 500", [])
        .unwrap();
    assert!(
        conn.execute("DELETE FROM audit", []).is_err(),
        "the newer line is refused, and with it the statement"
    );
    assert_eq!(
        conn.execute("DELETE FROM audit WHERE at < 500", [])
            .unwrap(),
        1
    );
    for statement in [
        "UPDATE audit_horizon SET prunable_before = 0",
        "DELETE FROM audit_horizon",
    ] {
        assert!(conn.execute(statement, []).is_err(), "{statement}");
    }
    let left: i64 = conn
        .query_row("SELECT count(*) FROM audit", [], |row| row.get(0))
        .unwrap();
    assert_eq!(left, 1);
}

#[test]
fn several_processes_opening_a_new_file_at_once_migrate_it_once() {
    /// The file's schema version and every table, index and trigger it holds.
    fn schema_of(path: &std::path::Path) -> (i64, Vec<(String, String, Option<String>)>) {
        let conn = rusqlite::Connection::open(path).unwrap();
        let version = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        let objects = conn
            .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (version, objects)
    }

    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("alone.db");
    let steps = SqliteStorage::open(&alone).unwrap().migrations_applied();
    assert!(steps > 0, "a new file is migrated");
    let migrated_alone = schema_of(&alone);
    assert_eq!(migrated_alone.0, i64::from(steps));

    // An admin command run while the server starts opens the same new file at the same moment;
    // separate connections, here on threads, take SQLite's file locks as processes do.
    for round in 0..20 {
        let path = dir.path().join(format!("server-{round}.db"));
        let start = std::sync::Arc::new(std::sync::Barrier::new(4));
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let (start, path) = (start.clone(), path.clone());
                std::thread::spawn(move || {
                    start.wait();
                    SqliteStorage::open(&path).map(|storage| storage.migrations_applied())
                })
            })
            .collect();
        let applied: Vec<u32> = openers
            .into_iter()
            .map(|opener| opener.join().unwrap().unwrap())
            .collect();
        assert_eq!(
            applied.iter().sum::<u32>(),
            steps,
            "every step applied exactly once, by one opener or another: {applied:?}"
        );
        assert_eq!(schema_of(&path), migrated_alone);
    }
}

#[test]
fn a_record_without_a_readable_lineage_is_handed_over_without_one() {
    use fieldsync_server::storage::Storage;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    let storage = SqliteStorage::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    // As a server from before lineages wrote it, and with bytes that do not decode.
    for (id, lineage) in [("old", None), ("garbled", Some(vec![0xc1u8, 0xff]))] {
        conn.execute(
            "INSERT INTO records (collection, id, scope, doc, fields, deleted, updated_seq, lineage)
             VALUES ('clients', ?1, 'north', x'00', '{\"name\": \"Ada\"}', 0, 1, ?2)",
            rusqlite::params![id, lineage],
        )
        .unwrap();
    }
    let found = storage
        .stored_records(&[("clients", "old"), ("clients", "garbled")])
        .unwrap();
    for record in found.records {
        let record = record.expect("the record is found");
        assert_eq!(record.lineage, None);
        assert_eq!(record.fields_json, "{\"name\": \"Ada\"}");
    }
}

#[test]
fn the_wal_is_checkpointed_on_its_own_thread_not_in_a_commit() {
    use fieldsync_record::protocol::{Payload, PushRecord};
    use fieldsync_server::storage::{Lineage, MergedRecord, Role, Storage};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    let storage = SqliteStorage::open(&path).unwrap();
    let user = storage.create_user("ada", Role::Member).unwrap();
    let device = storage.create_device(user, "phone").unwrap();
    // About 6 MB of documents: one commit takes the WAL past SQLite's 1,000 pages.
    let records: Vec<PushRecord> = (0..300)
        .map(|i| PushRecord {
            epoch: 0,
            collection: "clients".into(),
            id: format!("r{i}"),
            scope: "north".into(),
            payload: Payload::Changes(vec![vec![i as u8; 20_000].into()]),
        })
        .collect();
    let mut store_as_sent = |record: &PushRecord, _| {
        let Payload::Changes(changes) = &record.payload else {
            unreachable!()
        };
        Ok(MergedRecord {
            epoch: 0,
            doc: changes[0].to_vec(),
            fields_json: "{}".into(),
            deleted: false,
            new_changes: vec![changes[0].to_vec()],
            lineage: Lineage::default(),
        })
    };
    storage
        .push(device, &Batch::new("batch", &records), &mut store_as_sent)
        .unwrap();
    assert!(
        storage.wait_for_checkpoints(1, std::time::Duration::from_secs(60)),
        "the checkpoint thread ran"
    );
    assert_eq!(storage.checkpoints().1, 0, "no commit checkpointed itself");
    let copied = std::fs::metadata(&path).unwrap().len();
    assert!(
        copied > 6_000_000,
        "the pages are in the database file: {copied} bytes"
    );
}

#[test]
fn a_document_updated_without_its_lineage_loses_the_lineage() {
    use fieldsync_server::storage::Storage;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    let storage = SqliteStorage::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let lineage = fieldsync_server::storage::Lineage::default().encode();
    conn.execute(
        "INSERT INTO records (collection, id, scope, doc, fields, deleted, updated_seq, lineage)
         VALUES ('clients', 'a', 'north', x'00', '{}', 0, 1, ?1)",
        [&lineage],
    )
    .unwrap();
    let lineage_of = || {
        storage.stored_records(&[("clients", "a")]).unwrap().records[0]
            .clone()
            .unwrap()
            .lineage
    };
    // Written with the document, as this release does (a new lineage): kept.
    let next = fieldsync_server::storage::Lineage {
        max_op: 1,
        ..Default::default()
    };
    conn.execute(
        "UPDATE records SET doc = x'01', lineage = ?1",
        [&next.encode()],
    )
    .unwrap();
    assert_eq!(lineage_of(), Some(next));
    // Another column alone: kept.
    conn.execute("UPDATE records SET updated_seq = 2", [])
        .unwrap();
    assert!(lineage_of().is_some());
    // As an instance from before lineages writes it: dropped.
    conn.execute(
        "UPDATE records SET doc = x'02', fields = '{}', deleted = 0, updated_seq = 3",
        [],
    )
    .unwrap();
    assert_eq!(lineage_of(), None);
}

/// The database, its WAL and shared-memory files and a backup are readable by their owner
/// only, whatever the umask (the usual 022 would leave them readable by everyone).
#[cfg(unix)]
#[test]
fn database_files_and_backups_are_readable_by_their_owner_only() {
    use fieldsync_server::storage::{Role, Storage};
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    let storage = SqliteStorage::open(&path).unwrap();
    storage.create_user("ada", Role::Member).unwrap();
    let backup = dir.path().join("backup.db");
    storage.backup_to(&backup).unwrap();
    let mode = |name: &str| {
        let metadata = std::fs::metadata(dir.path().join(name)).unwrap();
        metadata.permissions().mode() & 0o777
    };
    for name in ["server.db", "server.db-wal", "server.db-shm", "backup.db"] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
}
