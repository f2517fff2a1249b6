//! What the hostile-input tests share: the clinic schema, a dump of every table of a store file,
//! and crafted Automerge bytes (decompression bombs, huge declared lengths, deep nesting).

#![allow(dead_code)]

use std::io::Write as _;
use std::path::Path;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT};
use fieldsync_core::{Fields, RemotePayload, RemoteRecord, Schema, StoreOptions, Synchronous};
use serde_json::Value;

pub const SCHEMA: &str = include_str!("../fixtures/clinic.schema.json");

pub fn schema() -> Schema {
    Schema::from_json(SCHEMA).unwrap()
}

/// Commits without an fsync each: these tests apply thousands of small batches, and none of
/// them is about power loss.
pub fn options() -> StoreOptions {
    StoreOptions {
        synchronous: Synchronous::Normal,
        ..StoreOptions::default()
    }
}

pub fn fields(value: Value) -> Fields {
    value.as_object().expect("an object").clone()
}

/// How many generated inputs to try: `FIELDSYNC_HOSTILE_CASES` when set, else `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("FIELDSYNC_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed of the generators: `FIELDSYNC_HOSTILE_SEED` when set, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("FIELDSYNC_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn record(collection: &str, id: &str, scope: &str, payload: RemotePayload) -> RemoteRecord {
    RemoteRecord {
        epoch: 0,
        collection: collection.into(),
        id: id.into(),
        scope: scope.into(),
        payload,
    }
}

/// Every row of every table of the store file, blobs in hex, sorted: two equal dumps mean the
/// records, outbox, waiting changes and sync state are byte-identical.
pub fn dump(path: &Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.retain(|t| t != "sqlite_sequence");
    let mut rows = Vec::new();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let width = stmt.column_count();
        let mut found = stmt.query([]).unwrap();
        let mut table_rows = Vec::new();
        while let Some(row) = found.next().unwrap() {
            let cells: Vec<String> = (0..width)
                .map(|i| match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Blob(b) => hex(b),
                    rusqlite::types::ValueRef::Text(t) => {
                        format!("{:?}", String::from_utf8_lossy(t))
                    }
                    other => format!("{other:?}"),
                })
                .collect();
            table_rows.push(format!("{table}: {}", cells.join(" | ")));
        }
        table_rows.sort();
        rows.extend(table_rows);
    }
    rows
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn leb128(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// An Automerge chunk: magic bytes, a checksum (left zero: the size check comes first),
/// the chunk type and the LEB128 length of `body`.
pub fn chunk(chunk_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, chunk_type];
    out.extend(leb128(body.len() as u64));
    out.extend(body);
    out
}

/// Raw DEFLATE of `mib` MiB of zeros, about 1 KiB per MiB. Built from one sync-flushed segment
/// repeated: after the first MiB every segment only refers back to zeros, so the copies decode
/// alike, and building a gigabyte bomb costs compressing two megabytes.
pub fn zero_bomb(mib: usize) -> Vec<u8> {
    let block = vec![0u8; 1 << 20];
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&block).unwrap();
    encoder.flush().unwrap();
    let head = encoder.get_ref().len();
    encoder.write_all(&block).unwrap();
    encoder.flush().unwrap();
    let segment = encoder.get_ref()[head..].to_vec();
    let mut out = encoder.get_ref()[..head].to_vec();
    for _ in 1..mib {
        out.extend(&segment);
    }
    let done = encoder.finish().unwrap();
    out.extend(&done[head + segment.len()..]);
    out
}

/// A compressed change chunk (type 2) whose body inflates to `mib` MiB.
pub fn compressed_change_bomb(mib: usize) -> Vec<u8> {
    chunk(2, &zero_bomb(mib))
}

/// A document chunk (type 0) with one DEFLATE column that inflates to `mib` MiB.
pub fn document_column_bomb(mib: usize) -> Vec<u8> {
    let data = zero_bomb(mib);
    let mut body = Vec::new();
    body.extend(leb128(0)); // actors
    body.extend(leb128(0)); // heads
    body.extend(leb128(1)); // change columns
    body.extend(leb128((1 << 4) | 0b1000 | 2)); // column 1, DEFLATE, string type
    body.extend(leb128(data.len() as u64));
    body.extend(leb128(0)); // op columns
    body.extend(&data);
    chunk(0, &body)
}

/// Chunks whose declared lengths claim far more than follows: of the chunk, of an actor id in
/// a document, of a column.
pub fn huge_length_inputs() -> Vec<Vec<u8>> {
    let mut chunk_claim = vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 1];
    chunk_claim.extend(leb128(1 << 62));
    chunk_claim.extend([1, 2, 3]);
    let mut max_claim = vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 0];
    max_claim.extend([0xff; 9]);
    max_claim.push(0x01);
    let mut overflowing = vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 2];
    overflowing.extend([0xff; 12]);
    let mut actor = leb128(1);
    actor.extend(leb128(u64::MAX));
    actor.extend([7; 16]);
    let mut columns = leb128(0);
    columns.extend(leb128(0));
    columns.extend(leb128(u64::MAX >> 1));
    let mut column_len = leb128(0);
    column_len.extend(leb128(0));
    column_len.extend(leb128(1));
    column_len.extend(leb128(0x18));
    column_len.extend(leb128(1 << 40));
    column_len.extend(leb128(0));
    vec![
        chunk_claim,
        max_claim,
        overflowing,
        chunk(0, &actor),
        chunk(0, &columns),
        chunk(0, &column_len),
        chunk(1, &actor),
        chunk(3, &[0; 8]),
        chunk(9, &[0; 8]),
    ]
}

/// A client document whose `goals` (a json field) nests `depth` maps, or whose undeclared key
/// does when `undeclared`; with its changes.
pub fn nested_client(scope: &str, depth: usize, undeclared: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut doc = AutoCommit::new();
    put_nested_client(&mut doc, scope, depth, undeclared);
    doc.commit();
    let changes = doc
        .get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    (doc.save(), changes)
}

/// Writes a client of `scope` into `doc` whose `goals` (a json field) nests `depth` maps and
/// lists, or whose undeclared key does when `undeclared`.
pub fn put_nested_client(doc: &mut AutoCommit, scope: &str, depth: usize, undeclared: bool) {
    doc.put(ROOT, "caseload_id", scope).unwrap();
    doc.put(ROOT, "name", "Deep").unwrap();
    let key = if undeclared {
        "from_a_newer_app"
    } else {
        "goals"
    };
    let mut obj = doc.put_object(ROOT, key, ObjType::Map).unwrap();
    // Maps at even levels, lists at odd ones.
    for level in 1..depth {
        obj = if level % 2 == 0 {
            doc.insert_object(&obj, 0, ObjType::Map).unwrap()
        } else {
            doc.put_object(&obj, "k", ObjType::List).unwrap()
        };
    }
}

/// A client document built by hand, with any root values (wrong types, undeclared keys).
pub fn client_doc(values: &[(&str, automerge::ScalarValue)]) -> Vec<u8> {
    let mut doc = AutoCommit::new();
    for (key, value) in values {
        doc.put(ROOT, *key, value.clone()).unwrap();
    }
    doc.commit();
    doc.save()
}
