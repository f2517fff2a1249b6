//! Hostile remote input: whatever bytes another device or a server sends, `apply_remote` and
//! the pull path answer with a typed error or a per-record rejection, never panic, and leave a
//! rejected record's store exactly as it was (every table compared row by row), after which a
//! valid record still merges.
//!
//! Generated inputs come from a seeded generator; each test prints its seed and how many
//! inputs it tried. `FIELDSYNC_HOSTILE_CASES` sets the number of generated cases and
//! `FIELDSYNC_HOSTILE_SEED` the seed, for longer local runs or to replay one. The valid records
//! the inputs are cut from are written under actors and at times drawn from a generator too
//! (see [`Author`]), so that a seed gives the same bytes on every run.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT, ScalarValue};
use common::{dump, fields, options, record, schema};
use fieldsync_core::{
    ApplyReport, BoxFuture, Credentials, Error, Query, RemotePayload, Schema, Store, StoreOptions,
    SyncClient, SyncConfig, SyncReport, Transport, TransportRequest, TransportResponse,
};
use fieldsync_record::document;
use fieldsync_record::protocol::{self, DecodeError, PullResponse, PulledRecord};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_bytes::ByteBuf;
use serde_json::{Value, json};

/// Writes client records as a device's store does, through the record engine's own calls,
/// but under an actor and at times drawn from a generator: a store writes under a random actor
/// at the current time, and every input cut from its bytes would differ from run to run.
struct Author {
    schema: Schema,
    actor: ActorId,
    /// The time of the last change, in milliseconds.
    clock: i64,
    documents: BTreeMap<String, AutoCommit>,
}

impl Author {
    fn new(rng: &mut StdRng) -> Author {
        Author {
            schema: schema(),
            actor: ActorId::from(rng.random::<[u8; 16]>().as_slice()),
            clock: rng.random_range(1_600_000_000_000..1_900_000_000_000),
            documents: BTreeMap::new(),
        }
    }

    /// Commits `doc`'s pending operations a millisecond after the last change; returns the
    /// change.
    fn commit(&mut self, doc: &mut AutoCommit) -> Vec<u8> {
        self.clock += 1;
        document::commit(doc, self.clock).expect("the document has pending operations");
        doc.get_last_local_change().unwrap().raw_bytes().to_vec()
    }

    /// Inserts a client record; returns its first change.
    fn insert(&mut self, id: &str, values: Value) -> Vec<u8> {
        let mut doc = document::new_doc(&self.actor);
        let clients = self.schema.collection("clients").unwrap();
        document::init_fields(&mut doc, clients, &fields(values)).unwrap();
        let change = self.commit(&mut doc);
        self.documents.insert(id.to_owned(), doc);
        change
    }

    /// Sets fields of a record inserted before; returns the change.
    fn update(&mut self, id: &str, patch: Value) -> Vec<u8> {
        let mut doc = self.documents.remove(id).expect("the record was inserted");
        let clients = self.schema.collection("clients").unwrap();
        for (name, value) in fields(patch) {
            document::put_field(&mut doc, &name, &clients.fields[&name], &value).unwrap();
        }
        let change = self.commit(&mut doc);
        self.documents.insert(id.to_owned(), doc);
        change
    }

    /// A record as this author has it, saved whole.
    fn document(&mut self, id: &str) -> Vec<u8> {
        self.documents.get_mut(id).unwrap().save()
    }

    /// A client document built by hand, with any root values (wrong types, undeclared keys).
    fn client_doc(&mut self, values: &[(&str, ScalarValue)]) -> Vec<u8> {
        let mut doc = document::new_doc(&self.actor);
        for (key, value) in values {
            doc.put(ROOT, *key, value.clone()).unwrap();
        }
        self.commit(&mut doc);
        doc.save()
    }

    /// A client document whose `goals` (a json field) nests `depth` maps and lists, or whose
    /// undeclared key does when `undeclared`; with its change.
    fn nested_client(&mut self, depth: usize, undeclared: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut doc = document::new_doc(&self.actor);
        common::put_nested_client(&mut doc, "north", depth, undeclared);
        let change = self.commit(&mut doc);
        (doc.save(), vec![change])
    }
}

/// The generator of a test that draws nothing else at random: its authors still need one.
fn fixed_rng() -> StdRng {
    StdRng::seed_from_u64(0x5eed_0000)
}

/// A store that already holds a merged record, a local record in its outbox and a change
/// waiting for its dependencies, and the author of those remote records.
struct Target {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Store,
    author: Author,
    /// A record both the store and the author have.
    existing: String,
    /// A change of `existing` the target does not have yet, which applies.
    next_change: Vec<u8>,
    /// `existing` as the author has it after `next_change`, saved whole.
    next_document: Vec<u8>,
}

fn target_with(target_options: StoreOptions, rng: &mut StdRng) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let store = Store::open(&path, schema(), target_options).unwrap();
    let mut author = Author::new(rng);
    let existing = "ada".to_owned();
    let first = author.insert(
        &existing,
        json!({"caseload_id": "north", "name": "Ada", "notes": "Calm visit."}),
    );
    author.insert("bo", json!({"caseload_id": "north", "name": "Bo"}));
    // The update of `bo` without the insert it depends on.
    let waiting_change = author.update("bo", json!({"birth_year": 2001}));
    let report = store
        .apply_remote(vec![record(
            "clients",
            &existing,
            "north",
            RemotePayload::Changes(vec![first]),
        )])
        .unwrap();
    assert_eq!(report.changed, 1);
    let report = store
        .apply_remote(vec![record(
            "clients",
            "bo",
            "north",
            RemotePayload::Changes(vec![waiting_change]),
        )])
        .unwrap();
    assert_eq!(report.waiting_changes, 1);
    store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Local"})),
        )
        .unwrap();
    let next_change = author.update(&existing, json!({"name": "Ada Lovelace"}));
    let next_document = author.document(&existing);
    Target {
        _dir: dir,
        path,
        store,
        author,
        existing,
        next_change,
        next_document,
    }
}

fn target(rng: &mut StdRng) -> Target {
    target_with(options(), rng)
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
            self.next_document
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
    let target = target(&mut rng);
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
    let mut target = target(&mut fixed_rng());
    let notes = "Speech goals. ".repeat(400);
    target.author.insert(
        "long",
        json!({"caseload_id": "north", "name": "Long", "notes": notes}),
    );
    let big_document = target.author.document("long");
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
    let target = target(&mut rng);
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
    let target = target(&mut fixed_rng());
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
    let target = target(&mut fixed_rng());
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
    let mut target = target(&mut fixed_rng());
    let notes = "Works on the /r/ sound at home and at school. ".repeat(2000);
    let id = "long";
    target.author.insert(
        id,
        json!({"caseload_id": "north", "name": "Long", "notes": notes}),
    );
    let document = target.author.document(id);
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
            id,
            "north",
            RemotePayload::Document(document),
        )])
        .unwrap();
    assert_eq!(report.changed, 1, "{report:?}");
    assert_eq!(
        target.store.get("clients", id).unwrap().unwrap().fields["notes"],
        notes.as_str()
    );
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let mut rng = fixed_rng();
    let target = target(&mut rng);
    let mut stranger = Author::new(&mut rng);
    let limit = fieldsync_core::MAX_NESTING_DEPTH;
    for depth in [limit + 1, 5_000] {
        let (document, changes) = stranger.nested_client(depth, false);
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
    let (document, _) = stranger.nested_client(limit, false);
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
    let (document, _) = stranger.nested_client(5_000, true);
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
    let mut rng = fixed_rng();
    let target = target(&mut rng);
    let mut stranger = Author::new(&mut rng);
    let mut doc =
        |values: &[(&str, ScalarValue)]| RemotePayload::Document(stranger.client_doc(values));
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
    let mut other_device = Author::new(&mut rng);
    let mut fork = document::load_doc(&target.next_document, &other_device.actor).unwrap();
    fork.put(ROOT, "caseload_id", "south").unwrap();
    let moved = other_device.commit(&mut fork);
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
    let mut target = target_with(
        StoreOptions {
            max_pending_changes: 3,
            ..options()
        },
        &mut fixed_rng(),
    );
    let id = "cy";
    let mut changes = vec![
        target
            .author
            .insert(id, json!({"caseload_id": "north", "name": "Cy"})),
    ];
    for year in [2001, 2002, 2003] {
        changes.push(target.author.update(id, json!({"birth_year": year})));
    }
    let change = |i: usize| changes[i].clone();
    let report = target
        .store
        .apply_remote(vec![record(
            "clients",
            id,
            "north",
            RemotePayload::Changes(vec![change(2), change(3)]),
        )])
        .unwrap();
    assert_eq!(
        (report.changed, report.waiting_changes),
        (0, 3),
        "{report:?}"
    );
    assert!(target.store.get("clients", id).unwrap().is_none());

    // One more waiting change would pass the bound: refused, and the waiting ones stay put.
    let report = target.refused(id, RemotePayload::Changes(vec![change(1)]));
    assert!(reason(&report).contains("waiting for missing dependencies"));

    let report = target
        .store
        .apply_remote(vec![
            record(
                "clients",
                id,
                "north",
                RemotePayload::Changes(vec![change(0)]),
            ),
            record(
                "clients",
                id,
                "north",
                RemotePayload::Changes(vec![change(1)]),
            ),
        ])
        .unwrap();
    assert_eq!(report.waiting_changes, 1, "{report:?}");
    assert_eq!(
        target.store.get("clients", id).unwrap().unwrap().fields["birth_year"],
        2003
    );
    target.still_merges();
}

/// Answers pulls with the pages given, in order, then with an empty last page: a hostile page
/// may claim that more follow.
#[derive(Debug)]
struct Pages(Mutex<VecDeque<Vec<u8>>>);

impl Transport for Pages {
    fn send<'a>(
        &'a self,
        _credentials: &'a Credentials,
        request: TransportRequest,
    ) -> BoxFuture<'a, fieldsync_core::Result<TransportResponse>> {
        assert!(
            matches!(request, TransportRequest::Pull { .. }),
            "{request:?}"
        );
        let body = self
            .0
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| protocol::encode(&page(Vec::new())));
        Box::pin(async move {
            Ok(TransportResponse {
                chunk_sha256: None,
                status: 200,
                retry_after_secs: None,
                body,
            })
        })
    }
}

fn pull(store: &Store, body: Vec<u8>) -> fieldsync_core::Result<SyncReport> {
    let client = SyncClient::with_transport(
        SyncConfig::new("http://unused.invalid", "token"),
        Arc::new(Pages(Mutex::new(VecDeque::from([body])))),
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(client.sync_now(store))
}

fn pulled(id: &str, document: Vec<u8>, values: Value) -> PulledRecord {
    PulledRecord {
        epoch: 0,
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
        authors: Vec::new(),
    }
}

/// A page whose cursor could not be sent back is refused before it is stored: stored, it
/// would make every later pull fail.
#[test]
fn a_page_with_a_cursor_that_is_not_url_safe_is_refused_and_later_pulls_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("device.db"), schema(), options()).unwrap();
    let bad = PullResponse {
        next_cursor: "c1&limit=9/..".into(),
        ..page(Vec::new())
    };
    let err = pull(&store, protocol::encode(&bad)).unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err}");
    pull(&store, protocol::encode(&page(Vec::new()))).unwrap();
    pull(&store, protocol::encode(&page(Vec::new()))).unwrap();
}

#[test]
fn a_pulled_page_of_bombs_and_lies_stores_only_what_is_sound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let store = Store::open(&path, schema(), options()).unwrap();
    let mut author = Author::new(&mut fixed_rng());
    let good = "good";
    author.insert(good, json!({"caseload_id": "north", "name": "Good"}));
    let good_document = author.document(good);
    let plausible = json!({"caseload_id": "north", "name": "Bomb"});
    let (deep_document, _) = author.nested_client(5_000, false);
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
            good,
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
        store.get("clients", good).unwrap().unwrap().fields["name"],
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

    let mut author = Author::new(&mut rng);
    author.insert(
        "c1",
        json!({"caseload_id": "north", "name": "Ada", "notes": "Calm visit."}),
    );
    author.update("c1", json!({"name": "Ada Lovelace"}));
    let valid = protocol::encode(&page(vec![pulled(
        "c1",
        author.document("c1"),
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
    let mut refused = 0;
    // What the bodies that decode did when pulled: failed with an error, or brought records
    // that were merged or refused one by one.
    let (mut failed, mut merged, mut not_merged) = (0, 0, 0);
    for (case, body) in bodies.iter().enumerate() {
        match protocol::decode::<PullResponse>(body, 1 << 20) {
            Err(_) => {
                refused += 1;
                let err = pull(&store, body.clone()).unwrap_err();
                assert!(matches!(err, Error::Protocol(_)), "{err}");
                assert_eq!(dump(&path), before);
            }
            Ok(decoded) => {
                let context = format!("seed {seed}, body {case}");
                match pull_into_new_store(body, &context) {
                    Ok(report) => {
                        merged += report.pulled;
                        not_merged += decoded.records.len().saturating_sub(report.pulled);
                    }
                    Err(_) => failed += 1,
                }
            }
        }
    }
    assert!(matches!(
        protocol::decode::<PullResponse>(&bodies[0], 1 << 20),
        Err(DecodeError::Malformed(message)) if message.contains("depth")
    ));
    assert!(refused > bodies.len() / 2);
    println!(
        "pull bodies: seed {seed}, {} inputs tried, {refused} refused, {} decoded and pulled \
         into a new store ({failed} pulls failed, {merged} records merged, {not_merged} not)",
        bodies.len(),
        bodies.len() - refused,
    );
}

/// Pulls `body` into a new store through the sync engine, as a device's first sync would, and
/// checks what any answer must leave behind: no panic (the engine reports a panicked store
/// task as a corrupt store), a store that opens again, and records that all read back.
fn pull_into_new_store(body: &[u8], context: &str) -> fieldsync_core::Result<SyncReport> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let store = Store::open(&path, schema(), options()).unwrap();
    let outcome = pull(&store, body.to_vec());
    if let Err(Error::Corrupt(message)) = &outcome {
        assert!(!message.contains("panicked"), "{context}: {message}");
    }
    drop(store);
    let store = Store::open(&path, schema(), options())
        .unwrap_or_else(|err| panic!("{context}: the store no longer opens: {err}"));
    for collection in schema().collections.keys() {
        let records = store
            .query(collection, &Query::default())
            .unwrap_or_else(|err| panic!("{context}: {collection} no longer reads: {err}"));
        for found in records {
            let read = store.get(collection, &found.id).and_then(|_| {
                store.document(collection, &found.id)?;
                store.history(collection, &found.id)
            });
            if let Err(err) = read {
                panic!(
                    "{context}: {collection} {} no longer reads: {err}",
                    found.id
                );
            }
        }
    }
    outcome
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
