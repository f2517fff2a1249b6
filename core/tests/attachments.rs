//! Attachments on one device and between devices: bytes stored with the reference in one
//! transaction, read back whole, streamed or saved to a file, stored once, and references
//! that travel with their records while the bytes stay behind.

use std::io::Read;

use fieldsync_core::{
    AttachmentRef, AttachmentSource, Error, Fields, STORED_CHUNK_BYTES, Schema, Store, StoreOptions,
};
use serde_json::{Value, json};

const SCHEMA: &str = include_str!("fixtures/clinic.schema.json");

fn open(dir: &tempfile::TempDir, name: &str) -> Store {
    let schema = Schema::from_json(SCHEMA).unwrap();
    Store::open(dir.path().join(name), schema, StoreOptions::default()).unwrap()
}

fn fields(value: Value) -> Fields {
    value.as_object().expect("an object").clone()
}

fn client(store: &Store) -> String {
    store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam"})),
        )
        .unwrap()
}

/// Bytes that differ at every position, `len` of them.
fn photo(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[0] ^ seed)
        .collect()
}

/// Rows of the attachment tables: (attachments, chunks), read from the file directly.
fn rows(dir: &tempfile::TempDir, name: &str) -> (i64, i64) {
    let conn = rusqlite::Connection::open(dir.path().join(name)).unwrap();
    let count = |table: &str| {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    (count("attachments"), count("attachment_chunks"))
}

#[test]
fn bytes_and_their_reference_are_stored_together_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "phone.db");
    let id = client(&store);
    // Three chunks and a bit: the last chunk is short.
    let bytes = photo(3 * STORED_CHUNK_BYTES + 1234, 7);
    let reference = store
        .attach(
            "clients",
            &id,
            "consent_form",
            AttachmentSource::Bytes(&bytes),
            "image/jpeg",
            Some("consent.jpg"),
        )
        .unwrap();
    assert_eq!(reference.size, bytes.len() as u64);
    let record = store.get("clients", &id).unwrap().unwrap();
    assert_eq!(record.fields["consent_form"], reference.to_value());
    assert_eq!(
        AttachmentRef::from_value(&record.fields["consent_form"]).unwrap(),
        reference
    );
    assert!(store.has_attachment(&reference).unwrap());
    assert_eq!(store.attachment_bytes(&reference).unwrap().unwrap(), bytes);
    // Read in odd-sized pieces, as a stream.
    let mut reader = store.attachment(&reference).unwrap().unwrap();
    let mut streamed = Vec::new();
    let mut piece = [0u8; 100_003];
    loop {
        let n = reader.read(&mut piece).unwrap();
        if n == 0 {
            break;
        }
        streamed.extend_from_slice(&piece[..n]);
    }
    assert_eq!(streamed, bytes);
    let saved = dir.path().join("saved.jpg");
    assert!(store.save_attachment(&reference, &saved).unwrap());
    assert_eq!(std::fs::read(&saved).unwrap(), bytes);
    assert_eq!(rows(&dir, "phone.db"), (1, 4));
    // The write is a local change like any other: it waits in the outbox.
    assert_eq!(store.outbox(100).unwrap().len(), 2);
}

#[test]
fn a_file_is_attached_in_chunks_and_the_same_bytes_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "phone.db");
    let bytes = photo(2 * STORED_CHUNK_BYTES, 3);
    let path = dir.path().join("drawing.png");
    std::fs::write(&path, &bytes).unwrap();
    let first = client(&store);
    let second = client(&store);
    let from_file = store
        .attach(
            "clients",
            &first,
            "consent_form",
            AttachmentSource::File(&path),
            "image/png",
            None,
        )
        .unwrap();
    let from_bytes = store
        .attach(
            "clients",
            &second,
            "consent_form",
            AttachmentSource::Bytes(&bytes),
            "image/png",
            Some("copy.png"),
        )
        .unwrap();
    assert_eq!(from_file.sha256, from_bytes.sha256);
    assert_eq!(rows(&dir, "phone.db"), (1, 2), "one copy of the bytes");
    assert_eq!(store.attachment_bytes(&from_file).unwrap().unwrap(), bytes);
    // An empty file is an attachment too.
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let nothing = store
        .attach(
            "clients",
            &first,
            "consent_form",
            AttachmentSource::File(&empty),
            "text/plain",
            None,
        )
        .unwrap();
    assert_eq!(store.attachment_bytes(&nothing).unwrap().unwrap(), b"");
}

#[test]
fn a_refused_attach_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "phone.db");
    let id = client(&store);
    let bytes = photo(1000, 1);
    let attach = |collection: &str, id: &str, field: &str, media_type: &str| {
        store.attach(
            collection,
            id,
            field,
            AttachmentSource::Bytes(&bytes),
            media_type,
            None,
        )
    };
    assert!(matches!(
        attach("clients", &id, "name", "image/png"),
        Err(Error::WrongType { .. })
    ));
    assert!(matches!(
        attach("clients", &id, "nope", "image/png"),
        Err(Error::UnknownField { .. })
    ));
    assert!(matches!(
        attach("clients", "no-such-id", "consent_form", "image/png"),
        Err(Error::NotFound { .. })
    ));
    let err = attach("clients", &id, "consent_form", "png").unwrap_err();
    assert!(
        matches!(&err, Error::InvalidAttachment { problem, .. } if problem.contains("media_type")),
        "{err:?}"
    );
    let missing = dir.path().join("missing.jpg");
    assert!(matches!(
        store.attach(
            "clients",
            &id,
            "consent_form",
            AttachmentSource::File(&missing),
            "image/jpeg",
            None
        ),
        Err(Error::Io(_))
    ));
    assert_eq!(rows(&dir, "phone.db"), (0, 0));
    assert_eq!(
        store
            .get("clients", &id)
            .unwrap()
            .unwrap()
            .fields
            .get("consent_form"),
        None
    );
}

#[test]
fn references_travel_with_their_records_and_the_bytes_stay_behind() {
    let dir = tempfile::tempdir().unwrap();
    let phone = open(&dir, "phone.db");
    let tablet = open(&dir, "tablet.db");
    let id = client(&phone);
    let carry = |from: &Store, to: &Store| {
        let entries = from.outbox(1000).unwrap();
        let last = entries.last().map(|e| e.seq);
        let report = to
            .apply_remote(entries.into_iter().map(|e| e.into_remote()).collect())
            .unwrap();
        assert!(report.rejected.is_empty());
        if let Some(last) = last {
            from.acknowledge_outbox(last).unwrap();
        }
    };
    carry(&phone, &tablet);
    // Both attach a photo to the same record while apart; after they meet, both show one of
    // the two references, whole.
    let on_phone = phone
        .attach(
            "clients",
            &id,
            "consent_form",
            AttachmentSource::Bytes(&photo(5000, 1)),
            "image/jpeg",
            Some("phone.jpg"),
        )
        .unwrap();
    let on_tablet = tablet
        .attach(
            "clients",
            &id,
            "consent_form",
            AttachmentSource::Bytes(&photo(7000, 2)),
            "image/png",
            Some("tablet.png"),
        )
        .unwrap();
    carry(&phone, &tablet);
    carry(&tablet, &phone);
    let shown = |store: &Store| {
        AttachmentRef::from_value(
            &store.get("clients", &id).unwrap().unwrap().fields["consent_form"],
        )
        .unwrap()
    };
    let winner = shown(&phone);
    assert_eq!(winner, shown(&tablet));
    assert!(
        winner == on_phone || winner == on_tablet,
        "never a mix of the two"
    );
    // The bytes did not travel with the changes: each store holds its own only.
    assert!(phone.has_attachment(&on_phone).unwrap());
    assert!(!phone.has_attachment(&on_tablet).unwrap());
    assert!(tablet.attachment(&on_phone).unwrap().is_none());
    assert!(
        !tablet
            .save_attachment(&on_phone, &dir.path().join("x"))
            .unwrap()
    );
}
