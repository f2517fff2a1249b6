//! Hostile requests to the router, in-process: random and damaged bodies, compression bombs,
//! MessagePack that lies about its lengths or nests without end, well-formed pushes carrying
//! broken Automerge data, and odd pull query strings. Every answer must be a 4xx with the JSON
//! error body, or a 200 whose records are each accepted or rejected; never a 5xx or a panic.
//! Afterwards the feed must be as it was and another device must pull nothing new.
//!
//! `FIELDSYNC_HOSTILE_CASES` sets the random requests per category (default 1000) and
//! `FIELDSYNC_HOSTILE_SEED` the seed (default 1); both are printed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use fieldsync_core::{Schema, Store, StoreOptions};
use fieldsync_record::protocol::{
    self, ErrorBody, Payload, PullResponse, PushRecord, PushRequest, PushResponse,
};
use fieldsync_server::storage::sqlite::SqliteStorage;
use fieldsync_server::storage::{Access, Role, Storage};
use fieldsync_server::{AppState, Limits, admin, router};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_bytes::ByteBuf;
use serde_json::json;
use tower::ServiceExt;

const SCHEMA: &str = include_str!("../../core/tests/fixtures/clinic.schema.json");

const CONTENT_TYPES: [Option<&str>; 7] = [
    Some(protocol::CONTENT_TYPE),
    None,
    Some("application/json"),
    Some("text/plain; charset=utf-8"),
    Some("multipart/form-data; boundary=x"),
    Some("application/x-www-form-urlencoded"),
    Some("garbage/;;=\"\\"),
];

/// What every answer must be; counts requests by category.
struct Barrage {
    app: Router,
    token: String,
    rng: StdRng,
    seed: u64,
    tried: BTreeMap<&'static str, usize>,
    rejected_records: usize,
}

impl Barrage {
    async fn send(
        &mut self,
        category: &'static str,
        request: Request<Body>,
    ) -> (StatusCode, Vec<u8>) {
        *self.tried.entry(category).or_default() += 1;
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let seed = self.seed;
        assert!(
            status.is_success() || status.is_client_error(),
            "{category}: {status} {} (seed {seed})",
            String::from_utf8_lossy(&body)
        );
        if status.is_client_error() {
            // An error names the field and the problem, never the input: it stays short.
            assert!(
                body.len() < 1_000,
                "{category}: {status} with an answer of {} bytes (seed {seed})",
                body.len()
            );
            let error: Result<ErrorBody, _> = serde_json::from_slice(&body);
            assert!(
                error.is_ok(),
                "{category}: {status} without the JSON error body: {} (seed {seed})",
                String::from_utf8_lossy(&body)
            );
        }
        (status, body.to_vec())
    }

    /// Sends a push body; a 200 must list a result for every record.
    async fn push(&mut self, category: &'static str, body: Vec<u8>) -> Option<PushResponse> {
        let content_type = CONTENT_TYPES[self.rng.random_range(0..CONTENT_TYPES.len())];
        let mut request = Request::post("/v1/push")
            .header(protocol::VERSION_HEADER, "1")
            .header("authorization", format!("Bearer {}", self.token));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, body) = self
            .send(category, request.body(Body::from(body)).unwrap())
            .await;
        if !status.is_success() {
            return None;
        }
        let response: PushResponse =
            protocol::decode(&body, 64 << 20).expect("a success body decodes");
        self.rejected_records += response
            .results
            .iter()
            .filter(|r| r.rejected.is_some())
            .count();
        Some(response)
    }

    /// Pushes records that must each be rejected.
    async fn push_rejected(&mut self, category: &'static str, records: Vec<PushRecord>) {
        let batch_id = format!("hostile-{}", self.rng.random::<u64>());
        let count = records.len();
        let shapes: Vec<String> = records
            .iter()
            .map(|r| match &r.payload {
                Payload::Changes(c) => format!(
                    "{} changes of {:?} bytes",
                    c.len(),
                    c.first().map(|c| c.len())
                ),
                Payload::Document(d) => format!("a document of {} bytes", d.len()),
            })
            .collect();
        let body = protocol::encode(&PushRequest {
            batch_id,
            outbox_seq: None,
            records,
        });
        let response = self.push(category, body).await;
        if let Some(response) = response {
            assert_eq!(response.results.len(), count, "{category}");
            for (result, shape) in response.results.iter().zip(&shapes) {
                assert!(
                    result.rejected.is_some(),
                    "{category}: a record with {shape} was accepted (seed {})",
                    self.seed
                );
            }
        }
    }

    async fn pull(&mut self, category: &'static str, query: &str) -> Option<PullResponse> {
        let request = Request::get(format!("/v1/pull{query}"))
            .header(protocol::VERSION_HEADER, "1")
            .header("authorization", format!("Bearer {}", self.token))
            .body(Body::empty())
            .unwrap();
        let (status, body) = self.send(category, request).await;
        status.is_success().then(|| {
            let page: PullResponse =
                protocol::decode(&body, 256 << 20).expect("a success body decodes");
            assert!(page.records.iter().all(|r| r.scope == "north"), "{query}");
            page
        })
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.rng.random()).collect()
    }

    /// `bytes` with one to eight distinct bits flipped: flipping one bit twice would give the
    /// input back, which may be valid.
    fn flip_bits(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut bytes = bytes.to_vec();
        let count = self.rng.random_range(1..=8).min(bytes.len() * 8);
        let mut flipped = std::collections::BTreeSet::new();
        while flipped.len() < count {
            flipped.insert(self.rng.random_range(0..bytes.len() * 8));
        }
        for bit in flipped {
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        bytes
    }

    fn truncate(&mut self, bytes: &[u8]) -> Vec<u8> {
        bytes[..self.rng.random_range(0..bytes.len())].to_vec()
    }
}

/// Raw DEFLATE of `data` in stored (uncompressed) blocks: any bytes, as the body format wants.
fn deflate_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 5);
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        return vec![1, 0, 0, 0xff, 0xff];
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend(chunk);
    }
    out
}

/// Raw DEFLATE of `len` zero bytes, (or up to 257 more), about 1,000 times smaller: one literal, then copies of
/// 258 bytes at distance 1 (13 bits each, fixed Huffman codes).
fn deflate_zeros(len: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        count: u32,
    }
    impl Bits {
        fn put(&mut self, value: u64, bits: u32) {
            self.acc |= value << self.count;
            self.count += bits;
            while self.count >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.count -= 8;
            }
        }
        /// Huffman codes go most significant bit first.
        fn code(&mut self, code: u64, bits: u32) {
            let reversed = (0..bits).fold(0, |r, i| r | (((code >> i) & 1) << (bits - 1 - i)));
            self.put(reversed, bits);
        }
    }
    let mut bits = Bits {
        out: Vec::new(),
        acc: 0,
        count: 0,
    };
    bits.put(1, 1); // the last block
    bits.put(1, 2); // fixed Huffman codes
    bits.code(0x30, 8); // literal 0
    for _ in 0..(len - 1).div_ceil(258) {
        // Length 258 (code 0b1100_0101, reversed here), then distance 1 (five zero bits).
        bits.put(0b1010_0011, 13);
    }
    bits.code(0, 7); // end of block
    bits.put(0, 7);
    bits.out
}

/// An Automerge compressed change chunk (type 2) whose body inflates to `len` zero bytes.
fn change_bomb(len: usize) -> Vec<u8> {
    let body = deflate_zeros(len);
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    let mut n = body.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            chunk.push(byte);
            break;
        }
        chunk.push(byte | 0x80);
    }
    chunk.extend(body);
    chunk
}

/// MessagePack: a push request map whose `records` value is `records` (raw MessagePack).
fn push_with_raw_records(records: &[u8]) -> Vec<u8> {
    let mut out = vec![0x82, 0xa8];
    out.extend(b"batch_id");
    out.extend([0xa1, b'x', 0xa7]);
    out.extend(b"records");
    out.extend(records);
    out
}

fn raw_record(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x94];
    for text in ["clients", "hostile-id", "north"] {
        out.push(0xa0 + text.len() as u8);
        out.extend(text.as_bytes());
    }
    out.extend(payload);
    out
}

fn record(id: &str, payload: Payload) -> PushRecord {
    PushRecord {
        epoch: 0,
        collection: "clients".into(),
        id: id.into(),
        scope: "north".into(),
        payload,
    }
}

fn changes(list: Vec<Vec<u8>>) -> Payload {
    Payload::Changes(list.into_iter().map(ByteBuf::from).collect())
}

fn document(bytes: Vec<u8>) -> Payload {
    Payload::Document(ByteBuf::from(bytes))
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

#[tokio::test]
async fn hostile_requests_get_a_clean_refusal_and_write_nothing() {
    let seed = env_number("FIELDSYNC_HOSTILE_SEED", 1);
    let cases = env_number("FIELDSYNC_HOSTILE_CASES", 1000) as usize;
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(SqliteStorage::open(&dir.path().join("server.db")).unwrap());
    let limits = Limits {
        requests_per_second: 0,
        ..Limits::default()
    };
    fieldsync_server::schema::set_schema(&*storage, SCHEMA).unwrap();
    let app = router(AppState::new(storage.clone(), limits.clone()));
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
    let reader = admin::enroll_device(&*storage, admin::By::CommandLine, "ada", "tablet", None)
        .unwrap()
        .token;

    // The phone's records, pushed; then edits to them (changes that depend on earlier ones),
    // pushed too. Both bodies are the material the barrage damages.
    let schema = Schema::from_json(SCHEMA).unwrap();
    let phone = Store::open(dir.path().join("phone.db"), schema, StoreOptions::default()).unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let fields = json!({"caseload_id": "north", "name": format!("c{i}"), "notes": "note"});
        ids.push(
            phone
                .insert("clients", fields.as_object().unwrap().clone())
                .unwrap(),
        );
    }
    let mut barrage = Barrage {
        app,
        token: token.clone(),
        rng: StdRng::seed_from_u64(seed),
        seed,
        tried: BTreeMap::new(),
        rejected_records: 0,
    };
    let outbox_push = |batch_id: &str| PushRequest {
        outbox_seq: None,
        batch_id: batch_id.into(),
        records: phone
            .outbox(100)
            .unwrap()
            .into_iter()
            .map(PushRecord::from)
            .collect(),
    };
    let created = outbox_push("created");
    let created_body = protocol::encode(&created);
    let pushed = barrage.push("setup", created_body.clone()).await.unwrap();
    assert!(pushed.results.iter().all(|r| r.rejected.is_none()));
    phone.acknowledge_outbox(i64::MAX).unwrap();
    let real_documents: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| phone.document("clients", id).unwrap())
        .collect();
    for id in &ids {
        phone
            .splice_text("clients", id, "notes", 0, 0, "more ")
            .unwrap();
    }
    let edits = outbox_push("edits");
    let edits_msgpack = rmp_serde::to_vec_named(&edits).unwrap();
    let edits_body = protocol::encode(&edits);
    assert!(barrage.push("setup", edits_body.clone()).await.is_some());
    phone.acknowledge_outbox(i64::MAX).unwrap();
    let real_changes: Vec<Vec<u8>> = edits
        .records
        .iter()
        .flat_map(|r| match &r.payload {
            Payload::Changes(c) => c.iter().map(|c| c.to_vec()).collect(),
            Payload::Document(d) => vec![d.to_vec()],
        })
        .collect();
    // Edits that follow each stored record in line, never pushed intact: damaged, they are
    // what an older server appended unchecked.
    for id in &ids {
        phone
            .update(
                "clients",
                id,
                json!({"phone": "555"}).as_object().unwrap().clone(),
            )
            .unwrap();
    }
    let in_line: Vec<(String, Vec<u8>)> = phone
        .outbox(100)
        .unwrap()
        .into_iter()
        .map(|entry| match entry.payload {
            fieldsync_core::RemotePayload::Changes(changes) => {
                (entry.record_id, changes[0].clone())
            }
            fieldsync_core::RemotePayload::Document(_) => unreachable!("edits are changes"),
        })
        .collect();
    let north = vec!["north".to_owned()];
    let feed_before = storage.feed_page(&north, 0, 10_000).unwrap();
    let documents_before = storage.documents_page(&north, 0, i64::MAX, 10_000).unwrap();
    let mut reader_cursor = None;
    barrage.token = reader.clone();
    while let Some(page) = barrage
        .pull(
            "setup",
            &reader_cursor
                .as_ref()
                .map_or(String::new(), |c| format!("?cursor={c}")),
        )
        .await
    {
        reader_cursor = Some(page.next_cursor);
        if !page.more {
            break;
        }
    }
    let reader_cursor = reader_cursor.unwrap();
    barrage.token = token.clone();

    for _ in 0..cases {
        // Random bytes, mostly short, sometimes long.
        let len = if barrage.rng.random_bool(0.9) {
            barrage.rng.random_range(0..512)
        } else {
            barrage.rng.random_range(512..200_000)
        };
        let body = barrage.bytes(len);
        barrage.push("random bytes", body.clone()).await;
        barrage.push("random bytes", deflate_stored(&body)).await;

        // Every base body, truncated; the edits, with bits flipped before and after DEFLATE.
        let base = if barrage.rng.random_bool(0.5) {
            created_body.clone()
        } else {
            edits_body.clone()
        };
        let truncated = barrage.truncate(&base);
        barrage.push("truncated body", truncated).await;
        let flipped = barrage.flip_bits(&edits_body);
        barrage.push("bit flips", flipped).await;
        let flipped = barrage.flip_bits(&edits_msgpack);
        barrage.push("bit flips", deflate_stored(&flipped)).await;

        // Well-formed pushes carrying broken Automerge data, each to a new record id.
        let id = format!("hostile-{}", barrage.rng.random::<u32>());
        let change = real_changes[barrage.rng.random_range(0..real_changes.len())].clone();
        let doc = real_documents[barrage.rng.random_range(0..real_documents.len())].clone();
        let random_len = barrage.rng.random_range(0..300);
        let random = barrage.bytes(random_len);
        let mut magic_random = vec![0x85, 0x6f, 0x4a, 0x83];
        magic_random.extend(&random);
        let records = vec![
            record(&id, changes(vec![random.clone()])),
            record(&id, changes(vec![magic_random.clone()])),
            record(&id, document(random)),
            record(&id, document(magic_random)),
            record(&id, changes(vec![barrage.truncate(&change)])),
            record(&id, changes(vec![barrage.flip_bits(&change)])),
            // A real change whose dependencies the server has under another record only.
            record(&id, changes(vec![change])),
            record(&id, document(barrage.truncate(&doc))),
            record(&id, document(barrage.flip_bits(&doc))),
            record(&id, changes(Vec::new())),
            record(&id, document(Vec::new())),
        ];
        barrage.push_rejected("broken Automerge", records).await;

        // An in-line edit of a stored record with bits flipped (the checksum's among them).
        let (id, change) = in_line[barrage.rng.random_range(0..in_line.len())].clone();
        let mut checksum_only = change.clone();
        checksum_only[barrage.rng.random_range(4..8)] ^= 1 << barrage.rng.random_range(0..8);
        let damaged = vec![checksum_only, barrage.flip_bits(&change)];
        let records = damaged
            .into_iter()
            .map(|bytes| record(&id, changes(vec![bytes])))
            .collect();
        barrage.push_rejected("damaged in-line edit", records).await;

        // Odd pull query strings.
        let query = odd_query(&mut barrage.rng, &reader_cursor);
        barrage.token = reader.clone();
        if let Some(page) = barrage.pull("odd pull query", &query).await {
            assert!(page.records.is_empty() || !query.contains(&reader_cursor));
        }
        barrage.token = token.clone();
    }

    // Compression bombs: the body, and an Automerge change inside a well-formed body.
    for len in [limits.max_decompressed_bytes + 1, 1 << 30] {
        let (status, _) = barrage
            .send(
                "compression bomb",
                Request::post("/v1/push")
                    .header(protocol::VERSION_HEADER, "1")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::from(deflate_zeros(len)))
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }
    for len in [64 << 20, 512 << 20] {
        let id = format!("bomb-{len}");
        barrage
            .push_rejected(
                "compression bomb",
                vec![
                    record(&id, changes(vec![change_bomb(len)])),
                    record(&id, changes(vec![change_bomb(len / 64); 64])),
                ],
            )
            .await;
    }

    // MessagePack that declares more than it holds, and nests without end.
    let huge_lengths: Vec<Vec<u8>> = vec![
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0x94],
        [
            vec![0x91],
            raw_record(&[
                0x81, 0xa7, b'c', b'h', b'a', b'n', b'g', b'e', b's', 0xdd, 0xff, 0xff, 0xff, 0xff,
            ]),
        ]
        .concat(),
        [
            vec![0x91],
            raw_record(&[
                0x81, 0xa7, b'c', b'h', b'a', b'n', b'g', b'e', b's', 0x91, 0xc6, 0xff, 0xff, 0xff,
                0xff, 1, 2,
            ]),
        ]
        .concat(),
        [
            vec![0x91],
            raw_record(&[
                0x81, 0xa8, b'd', b'o', b'c', b'u', b'm', b'e', b'n', b't', 0xc6, 0x7f, 0xff, 0xff,
                0xff,
            ]),
        ]
        .concat(),
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0x91, 0xdb, 0xff, 0xff, 0xff, 0xff],
    ];
    for records in huge_lengths {
        barrage
            .push(
                "huge declared length",
                deflate_stored(&push_with_raw_records(&records)),
            )
            .await;
    }
    let mut str32 = vec![0x82, 0xa8];
    str32.extend(b"batch_id");
    str32.extend([0xdb, 0xff, 0xff, 0xff, 0xff]);
    barrage
        .push("huge declared length", deflate_stored(&str32))
        .await;
    for depth in [10, 100, 500, 1_000, 5_000, 100_000, 1_000_000] {
        let nested = [vec![0x91; depth], vec![0x90]].concat();
        barrage
            .push(
                "deep nesting",
                deflate_stored(&push_with_raw_records(&nested)),
            )
            .await;
        let nested_maps = [[0x81, 0xa1, b'k'].repeat(depth), vec![0x80]].concat();
        let mut extra = vec![0x83, 0xa8];
        extra.extend(b"batch_id");
        extra.extend([0xa1, b'x', 0xa7]);
        extra.extend(b"records");
        extra.push(0x90);
        extra.extend([0xa5]);
        extra.extend(b"extra");
        extra.extend(&nested_maps);
        barrage.push("deep nesting", deflate_stored(&extra)).await;
        let cursor: String = [vec![0x91; depth.min(30_000)], vec![0x90]]
            .concat()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        barrage
            .pull("deep nesting", &format!("?cursor={cursor}"))
            .await;
    }

    // Nothing was written: the feed and the records are as they were (every one of them
    // loads), and another device pulls nothing new.
    assert!(
        fieldsync_server::repair::check(&*storage)
            .unwrap()
            .1
            .is_empty()
    );
    assert_eq!(storage.feed_page(&north, 0, 10_000).unwrap(), feed_before);
    assert_eq!(
        storage.documents_page(&north, 0, i64::MAX, 10_000).unwrap(),
        documents_before
    );
    barrage.token = reader.clone();
    let page = barrage
        .pull("check", &format!("?cursor={reader_cursor}"))
        .await
        .unwrap();
    assert!(page.records.is_empty() && !page.more);
    let total: usize = barrage.tried.values().sum();
    println!(
        "seed {seed}, {cases} cases per category: {total} requests {:?}, {} records rejected, \
         0 failures (FIELDSYNC_HOSTILE_SEED={seed} FIELDSYNC_HOSTILE_CASES={cases} to replay)",
        barrage.tried, barrage.rejected_records
    );
}

/// A pull query string a client should never send.
fn odd_query(rng: &mut StdRng, cursor: &str) -> String {
    let limits = [
        "-1",
        "0",
        "1",
        "4294967295",
        "4294967296",
        "-9223372036854775808",
        "99999999999999999999999",
        "1e3",
        "0x10",
        "",
        "abc",
        "%00",
        "%FF",
        "%ZZ",
        "1&limit=2",
        "%205",
        "+5",
    ];
    let mut garbage: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
    if rng.random_bool(0.5) {
        garbage
            .iter_mut()
            .for_each(|b| *b = b"0123456789abcdef"[(*b % 16) as usize]);
    }
    let encoded: String = garbage.iter().map(|b| format!("%{b:02X}")).collect();
    let mut flipped = cursor.as_bytes().to_vec();
    let at = rng.random_range(0..flipped.len());
    flipped[at] = b"0123456789abcdefxyz%"[rng.random_range(0..20)];
    let cursors = [
        encoded,
        String::from_utf8_lossy(&flipped).into_owned(),
        cursor[..rng.random_range(0..cursor.len())].to_owned(),
        format!("{cursor}{cursor}"),
        "00".repeat(rng.random_range(0..5000)),
        "%".to_owned(),
        cursor.to_owned(),
    ];
    let limit = limits[rng.random_range(0..limits.len())];
    let cursor = &cursors[rng.random_range(0..cursors.len())];
    match rng.random_range(0..4) {
        0 => format!("?limit={limit}"),
        1 => format!("?cursor={cursor}"),
        2 => format!("?cursor={cursor}&limit={limit}&cursor=&extra=%E2%82"),
        _ => format!("?limit={limit}&cursor={cursor}"),
    }
}
