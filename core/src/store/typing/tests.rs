use std::time::{Duration, Instant};

use automerge::{AutoCommit, ReadDoc};
use serde_json::json;

use super::KEYSTROKES_PER_CHANGE;
use crate::{Fields, Schema, Store, StoreOptions, Synchronous};

fn open(path: &std::path::Path, synchronous: Synchronous) -> Store {
    let schema = Schema::from_json(
        r#"{"collections": {"clients": {"scope_field": "caseload_id", "fields": {
            "caseload_id": {"type": "string", "required": true},
            "name": {"type": "string", "required": true},
            "notes": {"type": "text"},
            "plan": {"type": "text"}}}}}"#,
    )
    .unwrap();
    let options = StoreOptions {
        synchronous,
        ..StoreOptions::default()
    };
    Store::open(path, schema, options).unwrap()
}

fn client(store: &Store, name: &str) -> String {
    let fields: Fields = json!({"caseload_id": "north", "name": name})
        .as_object()
        .unwrap()
        .clone();
    store.insert("clients", fields).unwrap()
}

fn type_text(store: &Store, id: &str, field: &str, at: usize, text: &str) {
    for (offset, c) in text.chars().enumerate() {
        store
            .splice_text("clients", id, field, at + offset, 0, &c.to_string())
            .unwrap();
    }
}

/// (journaled keystrokes, outbox entries), read without settling the run.
fn counts(store: &Store) -> (i64, i64) {
    let db = store.shared.lock_rows();
    let count = |table: &str| -> i64 {
        db.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .unwrap()
    };
    (count("typing"), count("outbox"))
}

fn row_text(store: &Store, id: &str, field: &str) -> String {
    let record = store.get("clients", id).unwrap().unwrap();
    record.fields[field].as_str().unwrap().to_owned()
}

/// The text the record's document holds (settling the run first).
fn document_text(store: &Store, id: &str, field: &str) -> String {
    let doc = AutoCommit::load(&store.document("clients", id).unwrap()).unwrap();
    let (_, text) = doc.get(automerge::ROOT, field).unwrap().unwrap();
    doc.text(&text).unwrap()
}

#[test]
fn a_run_of_keystrokes_becomes_one_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("a.db"), Synchronous::Normal);
    let id = client(&store, "Ada");
    type_text(&store, &id, "notes", 0, "Calm and engaged.");
    // Taken back and typed again.
    store
        .splice_text("clients", &id, "notes", 16, 1, "")
        .unwrap();
    type_text(&store, &id, "notes", 16, "!");
    assert_eq!(row_text(&store, &id, "notes"), "Calm and engaged!");
    assert_eq!(counts(&store), (19, 1), "the row shows it; no change yet");

    assert_eq!(document_text(&store, &id, "notes"), "Calm and engaged!");
    assert_eq!(counts(&store), (0, 2), "one change for the run");
    let history = store.history("clients", &id).unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].fields, ["notes"]);
    assert_eq!(history[1].device_id, store.device_id());
}

#[test]
fn a_long_run_settles_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("a.db"), Synchronous::Normal);
    let id = client(&store, "Ada");
    let typed = "x".repeat(KEYSTROKES_PER_CHANGE as usize + 5);
    type_text(&store, &id, "notes", 0, &typed);
    assert_eq!(counts(&store), (5, 2));
    assert_eq!(document_text(&store, &id, "notes"), typed);
    assert_eq!(counts(&store), (0, 3));
}

#[test]
fn keystrokes_outlive_the_store_and_settle_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let id = {
        let store = open(&path, Synchronous::Normal);
        let id = client(&store, "Ada");
        type_text(&store, &id, "notes", 0, "Slept well.");
        id
    };
    let store = open(&path, Synchronous::Normal);
    assert_eq!(row_text(&store, &id, "notes"), "Slept well.");
    assert_eq!(counts(&store), (11, 1));
    // The run goes on where it stopped.
    type_text(&store, &id, "notes", 11, " Ate.");
    assert_eq!(counts(&store), (16, 1));
    assert_eq!(document_text(&store, &id, "notes"), "Slept well. Ate.");
    assert_eq!(counts(&store), (0, 2));
}

#[test]
fn typing_elsewhere_settles_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("a.db"), Synchronous::Normal);
    let (ada, ben) = (client(&store, "Ada"), client(&store, "Ben"));
    type_text(&store, &ada, "notes", 0, "abc");
    type_text(&store, &ada, "plan", 0, "de");
    assert_eq!(counts(&store), (2, 3), "another field");
    type_text(&store, &ben, "notes", 0, "f");
    assert_eq!(counts(&store), (1, 4), "another record");
    store.update("clients", &ben, Fields::new()).unwrap();
    assert_eq!(counts(&store).0, 0, "any other write");
    assert_eq!(document_text(&store, &ada, "notes"), "abc");
    assert_eq!(document_text(&store, &ada, "plan"), "de");
    assert_eq!(document_text(&store, &ben, "notes"), "f");
}

#[test]
fn a_refused_keystroke_leaves_the_run_going() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("a.db"), Synchronous::Normal);
    let id = client(&store, "Ada");
    type_text(&store, &id, "notes", 0, "a😀");
    let err = store
        .splice_text("clients", &id, "notes", 2, 0, "x")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid text edit on `clients.notes`: position 2 splits a surrogate pair"
    );
    let err = store
        .splice_text("clients", &id, "notes", 3, 2, "")
        .unwrap_err();
    assert!(
        err.to_string().contains("outside a text of 3 UTF-16 units"),
        "{err}"
    );
    type_text(&store, &id, "notes", 3, "b");
    assert_eq!(counts(&store), (3, 1));
    assert_eq!(document_text(&store, &id, "notes"), "a😀b");
}

#[test]
fn a_merged_edit_waits_for_the_run_to_settle() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        open(&dir.path().join("a.db"), Synchronous::Normal),
        open(&dir.path().join("b.db"), Synchronous::Normal),
    );
    let id = client(&a, "Ada");
    type_text(&a, &id, "notes", 0, "Calm.");
    let send = |from: &Store, to: &Store| {
        let entries = from.outbox(1000).unwrap();
        to.apply_remote(entries.into_iter().map(|e| e.into_remote()).collect())
            .unwrap();
    };
    send(&a, &b);
    // Both type at once: A's run is still in its journal when B's edit arrives.
    type_text(&a, &id, "notes", 5, " Tired.");
    type_text(&b, &id, "notes", 0, "Ben: ");
    send(&b, &a);
    assert_eq!(counts(&a).0, 0);
    assert_eq!(row_text(&a, &id, "notes"), "Ben: Calm. Tired.");
    send(&a, &b);
    assert_eq!(row_text(&b, &id, "notes"), "Ben: Calm. Tired.");
    assert_eq!(
        document_text(&a, &id, "notes"),
        document_text(&b, &id, "notes")
    );
}

#[test]
fn at_full_a_keystroke_is_flushed_by_the_checkpoint_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("a.db"), Synchronous::Full);
    let id = client(&store, "Ada");
    type_text(&store, &id, "notes", 0, "abc");
    let flushes = || {
        let db = store.shared.lock_rows();
        db.checkpointer.as_ref().unwrap().flushes()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while flushes() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(flushes() >= 1);
    let db = store.shared.lock_rows();
    let level: i64 = db
        .conn
        .query_row("PRAGMA synchronous", [], |row| row.get(0))
        .unwrap();
    assert_eq!(level, 2, "other commits wait for the disk again");
}
