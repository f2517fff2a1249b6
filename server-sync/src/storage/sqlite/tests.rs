use super::pull::{documents_page_sql, feed_page_sql};
use super::*;

#[test]
fn a_record_s_audit_lines_are_read_from_the_block_index_without_sorting() {
    assert!(AUDIT_OF_RECORD_IN_BLOCK.contains(&format!("(a.id >> {AUDIT_BLOCK_BITS})")));
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
    let conn = storage.lock();
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {AUDIT_OF_RECORD_IN_BLOCK}"))
        .unwrap();
    let plan: Vec<String> = stmt
        .query_map(params![0, "r", "ada", 0, 10, 1], |row| row.get(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let plan = plan.join("; ");
    assert!(
        plan.contains("USING INDEX audit_by_record_in_blocks (<expr>=? AND record_id=?)"),
        "{plan}"
    );
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
}

#[test]
fn records_stored_before_creation_positions_are_paged_by_their_last_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    {
        let conn = Connection::open(&path).unwrap();
        for (version, step) in MIGRATIONS[..6].iter().enumerate() {
            conn.execute_batch(step).unwrap();
            conn.pragma_update(None, "user_version", version as i64 + 1)
                .unwrap();
        }
        for (id, seq) in [("late", 9), ("early", 4)] {
            conn.execute(
                "INSERT INTO records (collection, id, scope, doc, fields, deleted, updated_seq)
                 VALUES ('clients', ?1, 'north', x'00', '{}', 0, ?2)",
                params![id, seq],
            )
            .unwrap();
        }
    }
    let storage = SqliteStorage::open(&path).unwrap();
    let page = storage
        .documents_page(&["north".into()], 0, i64::MAX, 10)
        .unwrap();
    let read: Vec<(&str, i64, i64)> = page
        .entries
        .iter()
        .map(|e| (e.record_id.as_str(), e.created_seq, e.seq))
        .collect();
    assert_eq!(read, [("early", 4, 4), ("late", 9, 9)]);
}

#[test]
fn pages_walk_positions_in_order_without_sorting() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
    let conn = storage.lock();
    let feed = (
        feed_page_sql(3),
        params![0, 101, 7, "a", "b", "c"],
        "feed_by_seq_scope",
    );
    let documents = (
        documents_page_sql(3),
        params![0, 101, 1000, "a", "b", "c"],
        "records_by_creation_scope",
    );
    for (sql, params, index) in [feed, documents] {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(params, |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(plan.contains(index), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "a page sorts: {plan}");
    }
    // The feed's join finds each record by its key, and skips the search when the key is
    // null (the reader's own entries): the program tests the key's register before seeking.
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", feed_page_sql(1)))
        .unwrap();
    let plan: Vec<String> = stmt
        .query_map(params![0, 101, 7, "a"], |row| row.get(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(
        plan.iter()
            .any(|step| step.contains("SEARCH r USING INDEX sqlite_autoindex_records_1")),
        "{plan:?}"
    );
    let records_index: i64 = conn
        .query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'sqlite_autoindex_records_1'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let mut stmt = conn
        .prepare(&format!("EXPLAIN {}", feed_page_sql(1)))
        .unwrap();
    let program: Vec<(String, i64, i64, i64)> = stmt
        .query_map(params![0, 101, 7, "a"], |row| {
            Ok((row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let cursor = program
        .iter()
        .find(|(op, _, root, _)| op == "OpenRead" && *root == records_index)
        .map(|(_, cursor, _, _)| *cursor)
        .expect("the records index is opened");
    let seek = program
        .iter()
        .position(|(op, p1, _, _)| op.starts_with("Seek") && *p1 == cursor)
        .expect("the records index is searched");
    let key = program[seek].3;
    assert!(
        program[..seek]
            .iter()
            .any(|(op, register, _, _)| op == "IsNull" && *register == key),
        "no test of the key before the search: {program:?}"
    );
}

#[test]
fn a_snapshot_mark_moves_with_every_change_to_the_file_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    let storage = SqliteStorage::open(&path).unwrap();
    let mark = || snapshot_mark(&storage.lock()).unwrap();
    let first = mark();
    storage
        .lock()
        .query_row("SELECT count(*) FROM records", [], |row| {
            row.get::<_, i64>(0)
        })
        .unwrap();
    assert_eq!(mark(), first, "a read changes nothing");

    storage.create_user("ada", Role::Member).unwrap();
    let own = mark();
    assert_ne!(own, first, "a change through the storage");

    // Nothing expects another process to write the file, but a write must not go unseen.
    let other = Connection::open(&path).unwrap();
    other
        .execute(
            "INSERT INTO users (name, role, created_at) VALUES ('bo', 'member', 0)",
            [],
        )
        .unwrap();
    let others = mark();
    assert_ne!(others, own, "a commit by another connection");

    // The checkpoint thread's kind. (One that resets the WAL moves the mark, which only
    // costs the next push a look at the versions.)
    other
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        .unwrap();
    assert_eq!(mark(), others, "a passive checkpoint changes no data");
}

#[test]
fn one_flush_covers_every_commit_made_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
    let before = storage.wal_flushes();

    // Three commits that nobody has waited for yet, as concurrent pushes leave them.
    let last = {
        let conn = storage.lock();
        let mut last = 0;
        for name in ["ada", "bob", "carol"] {
            conn.execute(
                "INSERT INTO users (name, role, created_at) VALUES (?1, 'member', 0)",
                [name],
            )
            .unwrap();
            last = storage.committed(&conn);
        }
        last
    };
    storage.wait_durable(last).unwrap();
    assert_eq!(storage.wal_flushes(), before + 1);
    // Earlier commits are covered by that flush: no more flushing for them.
    storage.wait_durable(last - 2).unwrap();
    assert_eq!(storage.wal_flushes(), before + 1);

    // A read that saw only durable commits does not flush; a write does.
    storage.feed_page(&["north".into()], 0, 10).unwrap();
    assert_eq!(storage.wal_flushes(), before + 1);
    storage.create_user("dave", Role::Member).unwrap();
    assert_eq!(storage.wal_flushes(), before + 2);
}

#[test]
fn a_pull_that_brought_nothing_soon_after_a_sync_commits_and_flushes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
    let user = storage.create_user("ada", Role::Member).unwrap();
    let device = storage.create_device(user, "phone").unwrap();
    storage.record_pull(device, &[], Some(0), 0).unwrap();
    let before = storage.wal_flushes();
    // Saying the same count of pending changes as before changes nothing either.
    storage.record_pull(device, &[], Some(0), 0).unwrap();
    assert_eq!(storage.wal_flushes(), before);
    storage
        .record_pull(device, &[("c".into(), "r".into(), "s".into())], None, 0)
        .unwrap();
    assert_eq!(storage.wal_flushes(), before + 1);
}

#[test]
fn a_database_of_any_earlier_version_upgrades_to_a_new_one_s_schema_keeping_its_devices() {
    /// Every table, index and trigger of a file, as created.
    fn schema_of(path: &Path) -> Vec<(String, String, Option<String>)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap();
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)));
        rows.unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.db");
    drop(SqliteStorage::open(&fresh).unwrap());
    for version in 1..MIGRATIONS.len() {
        let old = dir.path().join(format!("version-{version}.db"));
        {
            let conn = Connection::open(&old).unwrap();
            for step in &MIGRATIONS[..version] {
                conn.execute_batch(step).unwrap();
            }
            conn.pragma_update(None, "user_version", version as i64)
                .unwrap();
            conn.execute_batch(
                "INSERT INTO users (name, role, created_at) VALUES ('ada', 'member', 0);
                 INSERT INTO devices (user_id, name, created_at, last_sync_at)
                     VALUES (1, 'phone', 0, 5);",
            )
            .unwrap();
        }
        let upgraded = SqliteStorage::open(&old).unwrap();
        assert_eq!(
            upgraded.migrations_applied() as usize,
            MIGRATIONS.len() - version
        );
        let phone = upgraded.list_devices().unwrap().remove(0);
        let said = (phone.pending_changes, phone.pending_reported_at);
        assert_eq!(
            (phone.last_sync_at, said),
            (Some(5), (None, None)),
            "from version {version}: a device has said nothing of its outbox yet"
        );
        drop(upgraded);
        assert_eq!(schema_of(&old), schema_of(&fresh), "from version {version}");
    }
}
