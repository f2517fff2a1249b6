//! Hostile remote input: whatever bytes another device or a server sends, `apply_remote` and
//! the pull path answer with a typed error or a per-record rejection, never panic, and leave a
//! rejected record's store exactly as it was (every table compared row by row), after which a
//! valid record still merges.
//!
//! Generated inputs come from a seeded generator; each test prints its seed and how many
//! inputs it tried. `FIELDSYNC_HOSTILE_CASES` sets the number of generated cases and
//! `FIELDSYNC_HOSTILE_SEED` the seed, for longer local runs or to replay one.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::{dump, fields, options, record, schema};
use fieldsync_core::{
    ApplyReport, BoxFuture, Error, RemotePayload, Store, StoreOptions, SyncClient, SyncConfig,
    Transport, TransportRequest, TransportResponse,
};
use fieldsync_record::protocol::{self, DecodeError, PullResponse, PulledRecord};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_bytes::ByteBuf;
use serde_json::{Value, json};

/// A store that already holds a merged record, a local record in its outbox and a change
/// waiting for its dependencies, and the device those remote records came from.
struct Target {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Store,
    sender: Store,
    /// A record both stores have.
    existing: String,
    /// A change of `existing` the target does not have yet, which applies.
    next_change: Vec<u8>,
    /// `existing` as the sender has it after `next_change`, saved whole.
    next_document: Vec<u8>,
}

fn target_with(target_options: StoreOptions) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let sender = Store::open(dir.path().join("sender.db"), schema(), options()).unwrap();
    let store = Store::open(&path, schema(), target_options).unwrap();
    let existing = sender
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ada", "notes": "Calm visit."})),
        )
        .unwrap();
    let waiting = sender
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Bo"})),
        )
        .unwrap();
    sender
        .update("clients", &waiting, fields(json!({"birth_year": 2001})))
        .unwrap();
    let outbox: Vec<_> = sender
        .outbox(100)
        .unwrap()
        .into_iter()
        .map(|e| e.into_remote())
        .collect();
    // The update of `waiting` without the insert it depends on.
    let waiting_change: Vec<_> = outbox
        .iter()
        .filter(|r| r.id == waiting)
        .skip(1)
        .cloned()
        .collect();
    let first: Vec<_> = outbox.into_iter().filter(|r| r.id == existing).collect();
    let report = store.apply_remote(first).unwrap();
    assert_eq!(report.changed, 1);
    let report = store.apply_remote(waiting_change).unwrap();
    assert_eq!(report.waiting_changes, 1);
    store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Local"})),
        )
        .unwrap();
    let last_seq = sender.outbox(100).unwrap().last().unwrap().seq;
    sender.acknowledge_outbox(last_seq).unwrap();
    sender
        .update(
            "clients",
            &existing,
            fields(json!({"name": "Ada Lovelace"})),
        )
        .unwrap();
    let next_change = match sender.outbox(1).unwrap().remove(0).payload {
        RemotePayload::Changes(mut changes) => changes.remove(0),
        RemotePayload::Document(_) => unreachable!("an update is a change"),
    };
    let next_document = sender.document("clients", &existing).unwrap();
    Target {
        _dir: dir,
        path,
        store,
        sender,
        existing,
        next_change,
        next_document,
    }
}

fn target() -> Target {
    target_with(options())
}

impl Target {
    /// Applies one hostile record and checks that it changed nothing; returns the report.
    fn refused(&self, id: &str, payload: RemotePayload) -> ApplyReport {
        self.refused_record(record("clients", id, "north", payload))
    }

    fn refused_record(&self, hostile: fieldsync_core::RemoteRecord) -> ApplyReport {
        let before = dump(&self.path);
        let report = self.store.apply_remote(vec![hostile.clone()]).unwrap();
        assert_eq!(report.changed, 0, "{hostile:?} was merged: {report:?}");
        assert_eq!(report.rejected.len() + report.unchanged, 1, "{report:?}");
        assert_eq!(dump(&self.path), before, "{hostile:?} changed the store");
        report
    }

    /// The valid change still merges after whatever came before.
    fn still_merges(&self) {
        let report = self
            .store
            .apply_remote(vec![record(
                "clients",
                &self.existing,
                "north",
                RemotePayload::Changes(vec![self.next_change.clone()]),
            )])
            .unwrap();
        assert_eq!(report.changed, 1, "{report:?}");
        assert!(report.rejected.is_empty());
        let merged = self.store.get("clients", &self.existing).unwrap().unwrap();
        assert_eq!(merged.fields["name"], "Ada Lovelace");
        assert_eq!(merged.fields["notes"], "Calm visit.");
        assert_eq!(
            self.store.document("clients", &self.existing).unwrap(),
            self.sender.document("clients", &self.existing).unwrap()
        );
    }
}

fn reason(report: &ApplyReport) -> &str {
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    &report.rejected[0].reason
}

/// Random bytes, some dressed as Automerge chunks so that they get past the magic bytes.
fn random_input(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.random_range(0..300usize);
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    if rng.random_bool(0.6) {
        let chunk_type = rng.random_range(0..4u8);
        let body_len = if rng.random_bool(0.5) {
            len as u64
        } else {
            rng.random::<u64>() >> rng.random_range(0..64u32)
        };
        let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83];
        chunk.extend(rng.random::<[u8; 4]>());
        chunk.push(chunk_type);
        chunk.extend(common::leb128(body_len));
        chunk.extend(bytes);
        bytes = chunk;
    }
    bytes
}

#[test]
fn random_bytes_are_refused_and_change_nothing() {
    let seed = common::seed(0x5eed_0001);
    let cases = common::cases(400);
    let mut rng = StdRng::seed_from_u64(seed);
    let target = target();
    let mut rejected = 0;
    for case in 0..cases {
        let bytes = random_input(&mut rng);
        let id = if case % 2 == 0 {
            target.existing.clone()
        } else {
            format!("hostile-{case}")
        };
        for payload in [
            RemotePayload::Changes(vec![bytes.clone()]),
            RemotePayload::Document(bytes.clone()),
        ] {
            rejected += target.refused(&id, payload).rejected.len();
        }
    }
    target.still_merges();
    assert!(rejected > cases, "almost every input is refused outright");
    println!(
        "random bytes: seed {seed}, {cases} inputs tried as change and document, {rejected} rejections"
    );
}

#[test]
fn every_truncation_of_a_valid_change_or_document_is_refused() {
    let target = target();
    let notes = "Speech goals. ".repeat(400);
    let big = target
        .sender
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Long", "notes": notes})),
        )
        .unwrap();
    let big_document = target.sender.document("clients", &big).unwrap();
    let mut tried = 0;
    for (name, bytes, as_document) in [
        ("change", &target.next_change, false),
        ("document", &target.next_document, true),
        ("document with compressed columns", &big_document, true),
    ] {
        for len in 0..bytes.len() {
            let cut = bytes[..len].to_vec();
            let payload = if as_document {
                RemotePayload::Document(cut)
            } else {
                RemotePayload::Changes(vec![cut])
            };
            let report = target.refused(&target.existing, payload);
            if len > 0 || !as_document {
                assert_eq!(report.rejected.len(), 1, "{name} cut at {len}: {report:?}");
            }
            tried += 1;
        }
    }
    target.still_merges();
    println!("truncations: {tried} inputs tried");
}

#[test]
fn bit_flips_are_refused_or_merge_cleanly() {
    let seed = common::seed(0x5eed_0002);
    let cases = common::cases(400);
    let mut rng = StdRng::seed_from_u64(seed);
    let target = target();
    let (mut refused, mut merged) = (0, 0);
    for _ in 0..cases {
        let as_document = rng.random_bool(0.5);
        let mut bytes = if as_document {
            target.next_document.clone()
        } else {
            target.next_change.clone()
        };
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= 1 << rng.random_range(0..8);
        }
        let payload = if as_document {
            RemotePayload::Document(bytes)
        } else {
            RemotePayload::Changes(vec![bytes])
        };
        let before = dump(&target.path);
        let report = target
            .store
            .apply_remote(vec![record("clients", &target.existing, "north", payload)])
            .unwrap();
        if report.rejected.is_empty() {
            // A flip Automerge cannot detect (it only checksums some parts) merges as another
            // valid record would: the record must still read back through the schema.
            merged += 1;
            let record = target.store.get("clients", &target.existing).unwrap();
            if let Some(record) = record {
                assert_eq!(record.scope, "north");
            }
        } else {
            refused += 1;
            assert_eq!(
                dump(&target.path),
                before,
                "a refused flip changed the store"
            );
        }
    }
    println!("bit flips: seed {seed}, {cases} inputs tried, {refused} refused, {merged} merged");
    assert!(refused > cases / 2, "most flips are detected");
}

#[test]
fn huge_declared_lengths_are_refused() {
    let target = target();
    let mut tried = 0;
    for bytes in common::huge_length_inputs() {
        for payload in [
            RemotePayload::Changes(vec![bytes.clone()]),
            RemotePayload::Document(bytes.clone()),
        ] {
            let report = target.refused(&target.existing, payload);
            reason(&report);
            tried += 1;
        }
    }
    // A valid change whose dependency count is rewritten to claim 2^62 hashes: it passes the
    // size check (a plain change is its own size) and reaches Automerge's parser.
    let change = &target.next_change;
    let header = 9 + change[9..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    let mut body = common::leb128(1 << 62);
    body.extend(&change[header + 1..]);
    target.refused(
        &target.existing,
        RemotePayload::Changes(vec![common::chunk(1, &body)]),
    );
    target.still_merges();
    println!("huge lengths: {} inputs tried", tried + 1);
}

#[test]
fn decompression_bombs_are_refused_before_they_inflate() {
    let target = target();
    for (name, bomb) in [
        ("compressed change", common::compressed_change_bomb(1024)),
        ("document column", common::document_column_bomb(1024)),
        ("just past the limit", common::compressed_change_bomb(17)),
    ] {
        assert!(bomb.len() < 2 << 20, "{name} is {} bytes", bomb.len());
        assert_eq!(
            protocol::check_inflated_size(&bomb, protocol::MAX_RECORD_INFLATED_BYTES),
            Err(DecodeError::TooLarge {
                limit: protocol::MAX_RECORD_INFLATED_BYTES
            }),
            "{name}"
        );
        for payload in [
            RemotePayload::Changes(vec![bomb.clone()]),
            RemotePayload::Document(bomb.clone()),
        ] {
            let report = target.refused(&target.existing, payload);
            assert!(
                reason(&report).contains("inflates to more than"),
                "{name}: {report:?}"
            );
        }
    }
    // Many changes, each under the limit, that together exceed it.
    let parts = vec![common::compressed_change_bomb(6); 3];
    let report = target.refused(&target.existing, RemotePayload::Changes(parts));
    assert!(reason(&report).contains("inflates to more than"));
    target.still_merges();
}

#[test]
fn a_document_with_compressed_columns_is_measured_and_accepted() {
    let target = target();
    let notes = "Works on the /r/ sound at home and at school. ".repeat(2000);
    let id = target
        .sender
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Long", "notes": notes})),
        )
        .unwrap();
    let document = target.sender.document("clients", &id).unwrap();
    // Counted inflated: the check reads through the compressed columns rather than past them.
    assert!(matches!(
        protocol::check_inflated_size(&document, document.len()),
        Err(DecodeError::TooLarge { .. })
    ));
    assert_eq!(
        protocol::check_inflated_size(&document, protocol::MAX_RECORD_INFLATED_BYTES),
        Ok(())
    );
    let report = target
        .store
        .apply_remote(vec![record(
            "clients",
            &id,
            "north",
            RemotePayload::Document(document),
        )])
        .unwrap();
    assert_eq!(report.changed, 1, "{report:?}");
    assert_eq!(
        target.store.get("clients", &id).unwrap().unwrap().fields["notes"],
        notes.as_str()
    );
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let target = target();
    let limit = fieldsync_core::MAX_NESTING_DEPTH;
    for depth in [limit + 1, 5_000] {
        let (document, changes) = common::nested_client("north", depth, false);
        for (i, payload) in [
            RemotePayload::Document(document),
            RemotePayload::Changes(changes),
        ]
        .into_iter()
        .enumerate()
        {
            let report = target.refused(&format!("deep-{depth}-{i}"), payload);
            assert!(
                reason(&report).contains(&format!("deeper than {limit} levels")),
                "{report:?}"
            );
        }
    }
    let (document, _) = common::nested_client("north", limit, false);
    let report = target
        .store
        .apply_remote(vec![record(
            "clients",
            "deep-at-limit",
            "north",
            RemotePayload::Document(document),
        )])
        .unwrap();
    assert_eq!(report.changed, 1, "{report:?}");
    let goals = &target
        .store
        .get("clients", "deep-at-limit")
        .unwrap()
        .unwrap()
        .fields["goals"];
    let mut depth = 0;
    let mut value = goals;
    while let Some(inner) = value.get("k").or_else(|| value.get(0)) {
        depth += 1;
        value = inner;
    }
    assert_eq!(depth + 1, limit);

    // Undeclared keys are kept unread, however deep: nothing recurses into them.
    let (document, _) = common::nested_client("north", 5_000, true);
    let report = target
        .store
        .apply_remote(vec![record(
            "clients",
            "deep-undeclared",
            "north",
            RemotePayload::Document(document),
        )])
        .unwrap();
    assert_eq!(report.changed, 1, "{report:?}");
    let kept = target
        .store
        .get("clients", "deep-undeclared")
        .unwrap()
        .unwrap();
    assert!(!kept.fields.contains_key("from_a_newer_app"));
    assert_eq!(
        target
            .store
            .history("clients", "deep-undeclared")
            .unwrap()
            .len(),
        1
    );

    // A local write is held to the same limit, so no device makes what its peers refuse.
    let mut deep = json!(1);
    for _ in 0..limit + 1 {
        deep = json!([deep]);
    }
    let err = target
        .store
        .update(
            "clients",
            &target.existing,
            fields(json!({ "goals": deep })),
        )
        .unwrap_err();
    assert!(matches!(err, Error::NestingTooDeep { .. }), "{err}");
    target.still_merges();
}

#[test]
fn records_that_break_the_schema_are_refused() {
    use automerge::ScalarValue::{Int, Str};
    let target = target();
    let doc = |values: &[(&str, automerge::ScalarValue)]| {
        RemotePayload::Document(common::client_doc(values))
    };
    let north = ("caseload_id", Str("north".into()));
    let name = ("name", Str("Eve".into()));
    let cases: Vec<(&str, fieldsync_core::RemoteRecord, &str)> = vec![
        (
            "wrong scope",
            record(
                "clients",
                "s1",
                "south",
                doc(&[north.clone(), name.clone()]),
            ),
            "scope",
        ),
        (
            "unknown collection",
            record(
                "billing",
                "s2",
                "north",
                doc(&[north.clone(), name.clone()]),
            ),
            "unknown collection",
        ),
        (
            "invalid id",
            record(
                "clients",
                "../s3",
                "north",
                doc(&[north.clone(), name.clone()]),
            ),
            "invalid record id",
        ),
        (
            "integer field holding a string",
            record(
                "clients",
                "s4",
                "north",
                doc(&[
                    north.clone(),
                    name.clone(),
                    ("birth_year", Str("old".into())),
                ]),
            ),
            "expects a value of type",
        ),
        (
            "text field holding a plain string",
            record(
                "clients",
                "s5",
                "north",
                doc(&[north.clone(), name.clone(), ("notes", Str("flat".into()))]),
            ),
            "expects a value of type",
        ),
        (
            "scope field holding an integer",
            record(
                "clients",
                "s6",
                "north",
                doc(&[("caseload_id", Int(7)), name.clone()]),
            ),
            "expects a value of type",
        ),
        (
            "required field missing",
            record("clients", "s7", "north", doc(std::slice::from_ref(&north))),
            "is required",
        ),
    ];
    for (name, hostile, expected) in cases {
        let report = target.refused_record(hostile);
        assert!(reason(&report).contains(expected), "{name}: {report:?}");
    }

    // Another device moves the existing record to another scope: refused, the record stays.
    let mut fork = automerge::AutoCommit::load(&target.next_document).unwrap();
    automerge::transaction::Transactable::put(&mut fork, automerge::ROOT, "caseload_id", "south")
        .unwrap();
    fork.commit();
    let moved = fork.get_last_local_change().unwrap().raw_bytes().to_vec();
    let with_deps = vec![target.next_change.clone(), moved];
    let report = target.refused(&target.existing, RemotePayload::Changes(with_deps));
    assert!(reason(&report).contains("scope"), "{report:?}");

    // Undeclared keys are kept in the document and not shown (a newer app wrote them).
    let report = target
        .store
        .apply_remote(vec![record(
            "clients",
            "s8",
            "north",
            doc(&[
                north.clone(),
                name.clone(),
                ("written_by_v2", Str("x".into())),
            ]),
        )])
        .unwrap();
    assert_eq!(report.changed, 1, "{report:?}");
    let kept = target.store.get("clients", "s8").unwrap().unwrap();
    assert_eq!(
        kept.fields,
        fields(json!({"caseload_id": "north", "name": "Eve"}))
    );
    target.still_merges();
}

#[test]
fn changes_whose_dependencies_never_arrive_wait_within_their_bound() {
    let target = target_with(StoreOptions {
        max_pending_changes: 3,
        ..options()
    });
    let id = target
        .sender
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Cy"})),
        )
        .unwrap();
    for year in [2001, 2002, 2003] {
        target
            .sender
            .update("clients", &id, fields(json!({"birth_year": year})))
            .unwrap();
    }
    let entries: Vec<_> = target
        .sender
        .outbox(100)
        .unwrap()
        .into_iter()
        .filter(|e| e.record_id == id)
        .collect();
    let change = |i: usize| match &entries[i].payload {
        RemotePayload::Changes(changes) => changes[0].clone(),
        RemotePayload::Document(_) => unreachable!(),
    };
    let report = target
        .store
        .apply_remote(vec![record(
            "clients",
            &id,
            "north",
            RemotePayload::Changes(vec![change(2), change(3)]),
        )])
        .unwrap();
    assert_eq!(
        (report.changed, report.waiting_changes),
        (0, 3),
        "{report:?}"
    );
    assert!(target.store.get("clients", &id).unwrap().is_none());

    // One more waiting change would pass the bound: refused, and the waiting ones stay put.
    let report = target.refused(&id, RemotePayload::Changes(vec![change(1)]));
    assert!(reason(&report).contains("waiting for missing dependencies"));

    let report = target
        .store
        .apply_remote(vec![
            record(
                "clients",
                &id,
                "north",
                RemotePayload::Changes(vec![change(0)]),
            ),
            record(
                "clients",
                &id,
                "north",
                RemotePayload::Changes(vec![change(1)]),
            ),
        ])
        .unwrap();
    assert_eq!(report.waiting_changes, 1, "{report:?}");
    assert_eq!(
        target.store.get("clients", &id).unwrap().unwrap().fields["birth_year"],
        2003
    );
    target.still_merges();
}

/// Answers pulls with the pages given, in order.
#[derive(Debug)]
struct Pages(Mutex<Vec<Vec<u8>>>);

impl Transport for Pages {
    fn send<'a>(
        &'a self,
        _token: &'a str,
        request: TransportRequest,
    ) -> BoxFuture<'a, fieldsync_core::Result<TransportResponse>> {
        assert!(
            matches!(request, TransportRequest::Pull { .. }),
            "{request:?}"
        );
        let body = self.0.lock().unwrap().remove(0);
        Box::pin(async move {
            Ok(TransportResponse {
                status: 200,
                retry_after_secs: None,
                body,
            })
        })
    }
}

fn pull(store: &Store, body: Vec<u8>) -> fieldsync_core::Result<fieldsync_core::SyncReport> {
    let client = SyncClient::with_transport(
        SyncConfig::new("http://unused.invalid", "token"),
        Arc::new(Pages(Mutex::new(vec![body]))),
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(client.sync_now(store))
}

fn pulled(id: &str, document: Vec<u8>, values: Value) -> PulledRecord {
    PulledRecord {
        collection: "clients".into(),
        id: id.into(),
        scope: "north".into(),
        payload: protocol::Payload::Document(ByteBuf::from(document)),
        fields: Some(fields(values)),
        deleted: false,
    }
}

fn page(records: Vec<PulledRecord>) -> PullResponse {
    PullResponse {
        records,
        next_cursor: "c1".into(),
        more: false,
        revoked_scopes: Vec::new(),
    }
}

#[test]
fn a_pulled_page_of_bombs_and_lies_stores_only_what_is_sound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let store = Store::open(&path, schema(), options()).unwrap();
    let sender = target().sender;
    let good = sender
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Good"})),
        )
        .unwrap();
    let good_document = sender.document("clients", &good).unwrap();
    let plausible = json!({"caseload_id": "north", "name": "Bomb"});
    let (deep_document, _) = common::nested_client("north", 5_000, false);
    let mut deep_values = json!(1);
    for _ in 0..fieldsync_core::MAX_NESTING_DEPTH + 1 {
        deep_values = json!({ "k": deep_values });
    }
    let body = protocol::encode(&page(vec![
        // Values that fit the schema would let these be stored without loading them.
        pulled(
            "bomb-1",
            common::document_column_bomb(1024),
            plausible.clone(),
        ),
        pulled(
            "bomb-2",
            common::compressed_change_bomb(1024),
            plausible.clone(),
        ),
        pulled(
            "lengths",
            common::huge_length_inputs().remove(0),
            plausible.clone(),
        ),
        pulled(
            "deep",
            deep_document,
            json!({"caseload_id": "north", "name": "Deep", "goals": deep_values}),
        ),
        pulled(
            &good,
            good_document,
            json!({"caseload_id": "north", "name": "Good"}),
        ),
    ]));
    let report = pull(&store, body).unwrap();
    assert_eq!(report.pulled, 1, "{report:?}");
    for id in ["bomb-1", "bomb-2", "lengths", "deep"] {
        assert!(
            store.get("clients", id).unwrap().is_none(),
            "{id} was stored"
        );
        assert!(matches!(
            store.history("clients", id),
            Err(Error::NotFound { .. })
        ));
    }
    assert_eq!(
        store.get("clients", &good).unwrap().unwrap().fields["name"],
        "Good"
    );
    assert!(dump(&path).contains(&r#"sync_state: "cursor" | "c1""#.to_owned()));
}

#[test]
fn pull_bodies_that_do_not_decode_are_protocol_errors_and_change_nothing() {
    let seed = common::seed(0x5eed_0003);
    let cases = common::cases(300);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let store = Store::open(&path, schema(), options()).unwrap();
    let before = dump(&path);
    let mut bodies = Vec::new();

    assert!(protocol::decode::<PullResponse>(&deep_page(10), 1 << 20).is_ok());
    bodies.push(deep_page(100_000));

    let valid = protocol::encode(&page(vec![pulled(
        "c1",
        target().next_document,
        json!({"caseload_id": "north", "name": "Ada Lovelace"}),
    )]));
    for len in 0..valid.len() {
        bodies.push(valid[..len].to_vec());
    }
    for _ in 0..cases {
        let mut body = valid.clone();
        let at = rng.random_range(0..body.len());
        body[at] ^= 1 << rng.random_range(0..8);
        bodies.push(body);
        let mut garbage = vec![0u8; rng.random_range(0..200)];
        rng.fill(&mut garbage[..]);
        bodies.push(garbage);
    }
    let (mut refused, mut accepted) = (0, 0);
    for body in &bodies {
        match protocol::decode::<PullResponse>(body, 1 << 20) {
            Err(_) => {
                refused += 1;
                let err = pull(&store, body.clone()).unwrap_err();
                assert!(matches!(err, Error::Protocol(_)), "{err}");
                assert_eq!(dump(&path), before);
            }
            Ok(_) => accepted += 1,
        }
    }
    assert!(matches!(
        protocol::decode::<PullResponse>(&bodies[0], 1 << 20),
        Err(DecodeError::Malformed(message)) if message.contains("depth")
    ));
    assert!(refused > bodies.len() / 2);
    println!(
        "pull bodies: seed {seed}, {} inputs tried, {refused} refused, {accepted} decoded",
        bodies.len()
    );
}

/// A compressed page whose one record's `goals` value is MessagePack arrays nested `levels`
/// deep, written by hand: serializing such a value would itself recurse that deep.
fn deep_page(levels: usize) -> Vec<u8> {
    let text = |s: &str| {
        let mut out = vec![0xa0 | s.len() as u8];
        out.extend(s.as_bytes());
        out
    };
    let mut deep = vec![0x84];
    deep.extend(text("records"));
    deep.extend([0x91, 0x86]);
    for (key, value) in [("collection", "clients"), ("id", "x1"), ("scope", "north")] {
        deep.extend(text(key));
        deep.extend(text(value));
    }
    deep.extend(text("payload"));
    deep.push(0x81);
    deep.extend(text("document"));
    deep.extend([0xc4, 0]);
    deep.extend(text("fields"));
    deep.push(0x81);
    deep.extend(text("goals"));
    deep.extend(std::iter::repeat_n(0x91, levels));
    deep.push(0xc0);
    deep.extend(text("deleted"));
    deep.push(0xc2);
    deep.extend(text("next_cursor"));
    deep.extend(text("c2"));
    deep.extend(text("more"));
    deep.push(0xc2);
    deep.extend(text("revoked_scopes"));
    deep.push(0x90);
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &deep).unwrap();
    encoder.finish().unwrap()
}
