//! Damaged store files: truncated, bit-flipped, a record's document overwritten in place, an
//! encrypted file cut short. Opening or reading (get, query, history, conflicts) answers with
//! an `Error`, never a panic.
//!
//! Which errors, by damage:
//! - a file cut inside its first page, or whose header is flipped: `Error::KeyRequired` (no
//!   SQLite header, so the file looks encrypted), `Error::Corrupt` or `Error::Database`
//!   (SQLite's "malformed" or "not a database");
//! - a file cut or flipped in later pages: `Error::Database` (malformed) at open or on the
//!   read that reaches the page, or `Error::Corrupt` where a row no longer reads as a record;
//! - a record's document bytes damaged in place: `Error::Corrupt` from history, conflicts,
//!   writes and merges of that record; reads of its values still work (they come from its
//!   columns);
//! - an encrypted file cut short: `Error::WrongKey` (the first page no longer decrypts) or
//!   `Error::Database`;
//! - any file shorter than one page (512 bytes) but not empty: `Error::Corrupt`, where SQLite
//!   would take it for an empty database and the store would be created afresh over it;
//! - a flipped bit in the header's version: `Error::NewerFormat`.
//!
//! A file cut to nothing is a new, empty store: it opens, and its records are `NotFound`.
//!
//! Unencrypted SQLite keeps no checksums, so a flipped bit inside a value may go unnoticed and
//! simply read back as another value; for those the test requires only that nothing panics.
//! Seeded: `FIELDSYNC_HOSTILE_SEED` and `FIELDSYNC_HOSTILE_CASES` as in the other hostile
//! tests.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{fields, options, schema};
use fieldsync_core::{EncryptionKey, Error, Filter, Query, RemotePayload, Store, StoreOptions};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

/// Writes a store of a few pages (records with text, edits, a merge conflict), closes it
/// (checkpointing the WAL into the file) and returns the file's bytes and record ids.
fn make_store(dir: &Path, key: Option<&EncryptionKey>) -> (Vec<u8>, Vec<String>) {
    let path = dir.join("source.db");
    let store_options = StoreOptions {
        encryption_key: key.cloned(),
        ..options()
    };
    let store = Store::open(&path, schema(), store_options.clone()).unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        let id = store
            .insert(
                "clients",
                fields(json!({
                    "caseload_id": "north", "name": format!("Client {i}"), "birth_year": 1990 + i,
                    "notes": "Worked on the /s/ sound. ".repeat(i % 7 + 1),
                    "goals": {"speech": ["s", "r"], "level": i}
                })),
            )
            .unwrap();
        store
            .splice_text("clients", &id, "notes", 0, 0, "Home visit. ")
            .unwrap();
        ids.push(id);
    }
    // A conflict, so that `conflicts` has something to read.
    let other = Store::open(dir.join("other.db"), schema(), options()).unwrap();
    other
        .apply_remote(vec![common::record(
            "clients",
            &ids[0],
            "north",
            fieldsync_core::RemotePayload::Document(store.document("clients", &ids[0]).unwrap()),
        )])
        .unwrap();
    other
        .update("clients", &ids[0], fields(json!({"name": "Other"})))
        .unwrap();
    store
        .update("clients", &ids[0], fields(json!({"name": "Mine"})))
        .unwrap();
    store
        .apply_remote(
            other
                .outbox(10)
                .unwrap()
                .into_iter()
                .map(|e| e.into_remote())
                .collect(),
        )
        .unwrap();
    assert_eq!(store.conflicts("clients", &ids[0]).unwrap().len(), 1);
    drop(store);
    assert!(
        !dir.join("source.db-wal").exists(),
        "the WAL was checkpointed at close"
    );
    (std::fs::read(&path).unwrap(), ids)
}

/// Error variants seen, by name, for the report.
#[derive(Default)]
struct Seen(BTreeMap<String, usize>);

impl Seen {
    fn note<T>(&mut self, what: &str, result: fieldsync_core::Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                let variant = format!("{err:?}");
                let variant = variant.split(['(', ' ', '{']).next().unwrap().to_owned();
                *self.0.entry(format!("{what}: {variant}")).or_default() += 1;
                None
            }
        }
    }
}

/// Opens the damaged file and reads everything a user could; returns whether the open worked.
fn open_and_read(
    path: &Path,
    key: Option<&EncryptionKey>,
    ids: &[String],
    seen: &mut Seen,
) -> bool {
    let store_options = StoreOptions {
        encryption_key: key.cloned(),
        ..options()
    };
    let Some(store) = seen.note("open", Store::open(path, schema(), store_options)) else {
        return false;
    };
    seen.note("query", store.query("clients", &Query::default()));
    seen.note("count", store.count("clients", &Filter::All));
    for id in ids.iter().step_by(7) {
        seen.note("get", store.get("clients", id));
        seen.note("history", store.history("clients", id));
        seen.note("conflicts", store.conflicts("clients", id));
    }
    true
}

fn write_damaged(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

fn cut_points(len: usize) -> Vec<usize> {
    let mut cuts = vec![
        0,
        1,
        16,
        99,
        100,
        512,
        4095,
        4096,
        4097,
        8192,
        len / 2,
        len - 4096,
        len - 1,
    ];
    cuts.retain(|&cut| cut < len);
    cuts
}

#[test]
fn a_truncated_store_gives_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, ids) = make_store(dir.path(), None);
    let mut seen = Seen::default();
    let cuts = cut_points(bytes.len());
    for &cut in &cuts {
        let path = write_damaged(dir.path(), "cut.db", &bytes[..cut]);
        let opened = open_and_read(&path, None, &ids, &mut seen);
        if cut > 0 && cut < bytes.len() - 4096 {
            assert!(!opened, "a file cut at {cut} bytes opened");
        }
    }
    assert!(seen.0.keys().any(|k| k.starts_with("open")), "{:?}", seen.0);
    println!(
        "truncated store ({} bytes): {} cuts tried, errors {:?}",
        bytes.len(),
        cuts.len(),
        seen.0
    );
}

#[test]
fn bit_flips_in_a_store_give_errors_not_panics() {
    let seed = common::seed(0x5eed_0004);
    let cases = common::cases(120);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (bytes, ids) = make_store(dir.path(), None);
    let mut seen = Seen::default();
    let mut opened = 0;
    for case in 0..cases {
        let mut damaged = bytes.clone();
        // A third of the flips land in the 100-byte header, the rest anywhere in the pages.
        let at = if case % 3 == 0 {
            rng.random_range(0..100)
        } else {
            rng.random_range(0..damaged.len())
        };
        damaged[at] ^= 1 << rng.random_range(0..8);
        let path = write_damaged(dir.path(), "flipped.db", &damaged);
        opened += usize::from(open_and_read(&path, None, &ids, &mut seen));
    }
    assert!(!seen.0.is_empty(), "some flips must be detected");
    println!(
        "bit-flipped store: seed {seed}, {cases} inputs tried, {opened} opened, errors {:?}",
        seen.0
    );
}

#[test]
fn a_record_whose_document_is_damaged_in_place_gives_corrupt() {
    let seed = common::seed(0x5eed_0005);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (bytes, ids) = make_store(dir.path(), None);
    let (original, name): (Vec<u8>, String) = {
        let path = write_damaged(dir.path(), "read.db", &bytes);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.query_row(
            "SELECT _doc, name FROM rec_clients WHERE _id = ?1",
            [&ids[0]],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap()
    };
    let mut random = vec![0u8; 200];
    rng.fill(&mut random[..]);
    let mut flipped = original.clone();
    for _ in 0..8 {
        let at = rng.random_range(0..flipped.len());
        flipped[at] ^= 1 << rng.random_range(0..8);
    }
    let mut bomb_claim = original[..9].to_vec();
    bomb_claim.extend(common::leb128(1 << 60));
    let damages: Vec<(&str, Vec<u8>, bool)> = vec![
        ("empty", Vec::new(), false),
        ("random bytes", random, true),
        ("truncated", original[..original.len() / 2].to_vec(), true),
        ("a huge declared length", bomb_claim, true),
        ("bit flips", flipped, false),
        (
            "a compressed chunk of garbage",
            common::chunk(2, &[0x4b, 0x04, 0x00]),
            true,
        ),
    ];
    let mut seen = Seen::default();
    let tried = damages.len();
    for (damage, damaged, must_fail) in damages {
        let path = write_damaged(dir.path(), "doc.db", &bytes);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE rec_clients SET _doc = ?1 WHERE _id = ?2",
            rusqlite::params![damaged, ids[0]],
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&path, schema(), options()).unwrap();
        // Values come from the record's columns and still read.
        assert_eq!(
            store.get("clients", &ids[0]).unwrap().unwrap().fields["name"],
            name
        );
        let history = seen.note("history", store.history("clients", &ids[0]));
        let conflicts = seen.note("conflicts", store.conflicts("clients", &ids[0]));
        let update = seen.note(
            "update",
            store.update("clients", &ids[0], fields(json!({"birth_year": 1980}))),
        );
        if must_fail {
            for (what, failed) in [
                ("history", history.is_none()),
                ("conflicts", conflicts.is_none()),
                ("update", update.is_none()),
            ] {
                assert!(
                    failed,
                    "{what} of a record whose document is {damage} worked"
                );
            }
            assert!(
                matches!(store.history("clients", &ids[0]), Err(Error::Corrupt(_))),
                "{damage}"
            );
        }
        // The other records are untouched.
        assert_eq!(store.history("clients", &ids[1]).unwrap().len(), 2);
    }
    println!(
        "damaged documents: seed {seed}, {tried} inputs tried, errors {:?}",
        seen.0
    );
}

#[test]
fn a_damaged_local_document_refuses_only_its_own_remote_record() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, ids) = make_store(dir.path(), None);
    let path = write_damaged(dir.path(), "stalled.db", &bytes);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let original: Vec<u8> = conn
        .query_row(
            "SELECT _doc FROM rec_clients WHERE _id = ?1",
            [&ids[0]],
            |row| row.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE rec_clients SET _doc = ?1 WHERE _id = ?2",
        rusqlite::params![&original[..original.len() / 2], ids[0]],
    )
    .unwrap();
    drop(conn);

    // A peer's edit of the damaged record, and a record new to this store, in one page.
    let mut peer = automerge::AutoCommit::load(&original).unwrap();
    automerge::transaction::Transactable::put(&mut peer, automerge::ROOT, "name", "Renamed")
        .unwrap();
    peer.commit();
    let edit = peer.get_last_local_change().unwrap().raw_bytes().to_vec();
    let fresh = common::client_doc(&[("caseload_id", "north".into()), ("name", "Fresh".into())]);
    let store = Store::open(&path, schema(), options()).unwrap();
    let report = store
        .apply_remote(vec![
            common::record(
                "clients",
                &ids[0],
                "north",
                RemotePayload::Changes(vec![edit]),
            ),
            common::record(
                "clients",
                "fresh-1",
                "north",
                RemotePayload::Document(fresh),
            ),
        ])
        .expect("a damaged record must not fail the whole page");
    assert_eq!(report.changed, 1);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].id, ids[0]);
    assert!(report.rejected[0].reason.contains("damaged"));
    assert_eq!(
        store.get("clients", "fresh-1").unwrap().unwrap().fields["name"],
        "Fresh"
    );
}

#[test]
fn a_truncated_encrypted_store_gives_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let key = EncryptionKey::from_bytes([7; 32]);
    let (bytes, ids) = make_store(dir.path(), Some(&key));
    let mut seen = Seen::default();
    let cuts = cut_points(bytes.len());
    for &cut in &cuts {
        let path = write_damaged(dir.path(), "cut.db", &bytes[..cut]);
        let opened = open_and_read(&path, Some(&key), &ids, &mut seen);
        if cut > 0 && cut < bytes.len() - 4096 {
            assert!(!opened, "an encrypted file cut at {cut} bytes opened");
        }
        // Without the key it is refused whatever its length.
        if cut > 0 {
            let err = Store::open(&path, schema(), options()).unwrap_err();
            assert!(
                matches!(err, Error::KeyRequired | Error::Corrupt(_)),
                "{err}"
            );
        }
    }
    assert!(seen.0.keys().any(|k| k.starts_with("open")), "{:?}", seen.0);
    println!(
        "truncated encrypted store ({} bytes): {} cuts tried, errors {:?}",
        bytes.len(),
        cuts.len(),
        seen.0
    );
}
