//! Arbitrary bytes as remote input to a store: as a change of a record it has, as a whole
//! document of a new record, and as a pull body, decoded and merged.
//!
//! A crash is an uncaught panic, an abort, a stack overflow, or an allocation past libFuzzer's
//! memory limit.

#![no_main]

use std::sync::OnceLock;

use fieldsync_record::protocol::{self, PullResponse};
use fieldsync_core::{RemotePayload, RemoteRecord, Schema, Store, StoreOptions, Synchronous};
use libfuzzer_sys::fuzz_target;

const SCHEMA: &str = include_str!("../../core/tests/fixtures/clinic.schema.json");

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    existing: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // The store catches the panics Automerge raises on some crafted input and rejects the
        // record; libFuzzer's hook would abort on those too. A panic that escapes the store
        // still aborts: the fuzz_target! wrapper catches it and aborts.
        std::panic::set_hook(Box::new(|_| {}));
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            synchronous: Synchronous::Normal,
            ..StoreOptions::default()
        };
        let schema = Schema::from_json(SCHEMA).unwrap();
        let store = Store::open(dir.path().join("device.db"), schema, options).unwrap();
        let fields = serde_json::json!({"caseload_id": "north", "name": "Ada", "notes": "Visit"});
        let existing = store
            .insert("clients", fields.as_object().unwrap().clone())
            .unwrap();
        Fixture {
            _dir: dir,
            store,
            existing,
        }
    })
}

fn record(id: &str, payload: RemotePayload) -> RemoteRecord {
    RemoteRecord {
        collection: "clients".into(),
        id: id.into(),
        scope: "north".into(),
        payload,
        epoch: 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let records = vec![
        record(
            &fixture.existing,
            RemotePayload::Changes(vec![data.to_vec()]),
        ),
        record("fuzz-new", RemotePayload::Document(data.to_vec())),
    ];
    fixture
        .store
        .apply_remote(records)
        .expect("a hostile record is rejected, never an error of the whole batch");
    if let Ok(page) = protocol::decode::<PullResponse>(data, 1 << 20) {
        let records = page.records.into_iter().map(RemoteRecord::from).collect();
        fixture
            .store
            .apply_remote(records)
            .expect("a decoded page merges or rejects record by record");
    }
});
