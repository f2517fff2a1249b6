//! Encryption at rest: no clinical text reaches the disk in clear with a key, keys are checked
//! at open, rotation and migration keep every record.

use std::path::Path;

use fieldsync_core::{EncryptionKey, Error, Fields, Filter, Schema, Store, StoreOptions};
use serde_json::json;

const NAME_CANARY: &str = "CANARY-NAME-7f3a9e";
const NOTE_CANARY: &str = "CANARY-NOTE-b81c2d";

fn schema() -> Schema {
    Schema::from_json(include_str!("fixtures/clinic.schema.json")).unwrap()
}

fn options(key: Option<&EncryptionKey>) -> StoreOptions {
    StoreOptions {
        encryption_key: key.cloned(),
        ..StoreOptions::default()
    }
}

fn client(i: usize) -> Fields {
    json!({
        "caseload_id": "north",
        "name": format!("{NAME_CANARY} {i}"),
        "notes": format!("Session {i}: {NOTE_CANARY} discussed at home."),
    })
    .as_object()
    .unwrap()
    .clone()
}

/// Writes 200 records carrying the canaries, with text edits on top, and returns their ids.
fn write_canaries(store: &Store) -> Vec<String> {
    let ids: Vec<String> = (0..200)
        .map(|i| store.insert("clients", client(i)).unwrap())
        .collect();
    for id in ids.iter().take(20) {
        store
            .splice_text("clients", id, "notes", 0, 0, NOTE_CANARY)
            .unwrap();
    }
    ids
}

/// How many times each canary occurs in each file of `dir` (main file, WAL, SHM and anything
/// else the store left there).
fn canary_hits(dir: &Path) -> Vec<(String, usize)> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        let count = [NAME_CANARY, NOTE_CANARY]
            .iter()
            .map(|canary| {
                bytes
                    .windows(canary.len())
                    .filter(|w| *w == canary.as_bytes())
                    .count()
            })
            .sum();
        if count > 0 {
            hits.push((entry.file_name().to_string_lossy().into_owned(), count));
        }
    }
    hits
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn with_a_key_no_canary_reaches_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let key = EncryptionKey::generate().unwrap();
    let store = Store::open(&path, schema(), options(Some(&key))).unwrap();
    let ids = write_canaries(&store);

    // While open, the WAL holds the latest pages.
    let open_files = file_names(dir.path());
    assert!(
        open_files.contains(&"phone.db-wal".to_owned()),
        "{open_files:?}"
    );
    assert_eq!(canary_hits(dir.path()), vec![]);
    drop(store);
    assert_eq!(canary_hits(dir.path()), vec![]);

    let store = Store::open(&path, schema(), options(Some(&key))).unwrap();
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 200);
    let first = store.get("clients", &ids[0]).unwrap().unwrap();
    assert!(
        first.fields["notes"]
            .as_str()
            .unwrap()
            .starts_with(NOTE_CANARY)
    );
    drop(store);

    // SQLCipher's own check of every page's authentication code.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!("PRAGMA key = \"x'{}'\";", hex(key.as_bytes())))
        .unwrap();
    let problems: Vec<String> = conn
        .prepare("PRAGMA cipher_integrity_check")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(problems, Vec::<String>::new());
}

#[test]
fn without_a_key_the_canaries_are_on_disk() {
    // The control: the scan finds clear text when there is some.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("phone.db"), schema(), options(None)).unwrap();
    write_canaries(&store);
    assert!(!canary_hits(dir.path()).is_empty());
    drop(store);
    assert!(!canary_hits(dir.path()).is_empty());
}

#[test]
fn a_wrong_or_missing_key_is_a_typed_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let key = EncryptionKey::generate().unwrap();
    drop(write_canaries(
        &Store::open(&path, schema(), options(Some(&key))).unwrap(),
    ));
    let before = std::fs::read(&path).unwrap();

    let other = EncryptionKey::generate().unwrap();
    let err = Store::open(&path, schema(), options(Some(&other))).unwrap_err();
    assert!(matches!(err, Error::WrongKey), "{err}");
    let err = Store::open(&path, schema(), options(None)).unwrap_err();
    assert!(matches!(err, Error::KeyRequired), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let store = Store::open(&path, schema(), options(Some(&key))).unwrap();
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 200);
}

#[test]
fn rotating_the_key_keeps_the_data_and_refuses_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let old = EncryptionKey::generate().unwrap();
    let new = EncryptionKey::generate().unwrap();
    let store = Store::open(&path, schema(), options(Some(&old))).unwrap();
    let ids = write_canaries(&store);
    let outbox = store.outbox_len().unwrap();
    store.rekey(&new).unwrap();
    // The open store keeps working under the new key.
    let late = store.insert("clients", client(999)).unwrap();
    drop(store);

    let err = Store::open(&path, schema(), options(Some(&old))).unwrap_err();
    assert!(matches!(err, Error::WrongKey), "{err}");
    let store = Store::open(&path, schema(), options(Some(&new))).unwrap();
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 201);
    assert!(store.get("clients", &ids[199]).unwrap().is_some());
    assert!(store.get("clients", &late).unwrap().is_some());
    assert_eq!(store.outbox_len().unwrap(), outbox + 1);
    drop(store);
    assert_eq!(canary_hits(dir.path()), vec![]);

    let plain = Store::open(dir.path().join("plain.db"), schema(), options(None)).unwrap();
    assert!(matches!(plain.rekey(&new), Err(Error::NotEncrypted)));
}

#[test]
fn an_unencrypted_store_is_encrypted_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let store = Store::open(&path, schema(), options(None)).unwrap();
    let ids = write_canaries(&store);
    let device = store.device_id().to_owned();
    let outbox = store.outbox_len().unwrap();
    drop(store);

    let key = EncryptionKey::generate().unwrap();
    let err = Store::open(&path, schema(), options(Some(&key))).unwrap_err();
    assert!(matches!(err, Error::NotEncrypted), "{err}");

    Store::encrypt_file(&path, &key).unwrap();
    assert_eq!(canary_hits(dir.path()), vec![]);
    assert_eq!(file_names(dir.path()), vec!["phone.db".to_owned()]);
    let err = Store::open(&path, schema(), options(None)).unwrap_err();
    assert!(matches!(err, Error::KeyRequired), "{err}");
    assert!(matches!(
        Store::encrypt_file(&path, &key),
        Err(Error::AlreadyEncrypted)
    ));

    let store = Store::open(&path, schema(), options(Some(&key))).unwrap();
    assert_eq!(store.device_id(), device);
    assert_eq!(store.outbox_len().unwrap(), outbox);
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 200);
    assert!(store.get("clients", &ids[42]).unwrap().is_some());
    store.insert("clients", client(500)).unwrap();
}

#[test]
fn keys_are_checked_and_never_printed() {
    assert!(matches!(
        EncryptionKey::from_slice(&[7u8; 16]),
        Err(Error::InvalidKey(_))
    ));
    let key = EncryptionKey::from_slice(&[0xab; 32]).unwrap();
    assert_eq!(key.as_bytes(), &[0xab; 32]);
    assert_eq!(format!("{key:?}"), "EncryptionKey(..)");
    let printed = format!("{:?}", options(Some(&key)));
    assert!(
        !printed.contains("171") && !printed.contains("ab, ab"),
        "{printed}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
