//! Store benchmarks, each printed beside plain rusqlite doing the same work in the same run
//! (same columns, same indexes, WAL), as a ratio.
//!
//! `cargo bench -p fieldsync-core --bench store` runs everything; `-- --quick` runs smaller
//! sizes. Figures go to docs/BENCHMARKS.md.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fieldsync_core::{
    EncryptionKey, Fields, Filter, Query, Schema, Store, StoreOptions, Synchronous, Write,
};
use rusqlite::{Connection, params};
use serde_json::json;

const SCHEMA: &str = r#"{"collections": {"clients": {
    "scope_field": "caseload_id",
    "fields": {
        "caseload_id": {"type": "string", "required": true},
        "name": {"type": "string", "required": true},
        "birth_year": {"type": "integer"},
        "active": {"type": "boolean"},
        "risk_score": {"type": "float"}
    },
    "indexes": [{"name": "by_caseload", "fields": ["caseload_id"]}]
}}}"#;

const CASELOADS: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only NAME` runs one benchmark (single, bulk, query, bytes), for profiling.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    // `--encrypted` opens the fieldsync stores with a key (SQLCipher); the plain rusqlite
    // baseline stays unencrypted, so the ratio against an unencrypted run is the cost.
    if args.iter().any(|a| a == "--encrypted") {
        ENCRYPTION_KEY
            .set(EncryptionKey::generate().unwrap())
            .unwrap();
    }
    let (present, bulk_sizes, query_size) = if quick {
        (2_000, vec![2_000], 20_000)
    } else {
        (10_000, vec![10_000, 100_000], 100_000)
    };
    println!(
        "fieldsync-core store benchmarks ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    if ENCRYPTION_KEY.get().is_some() {
        println!("fieldsync stores encrypted with a raw 256-bit key (SQLCipher)");
    }
    println!("ratio = fieldsync / plain rusqlite; lower is better\n");
    if run("single") {
        for synchronous in [Synchronous::Full, Synchronous::Normal] {
            single_writes(synchronous, present, if quick { 300 } else { 2_000 });
        }
    }
    if only.as_deref() == Some("profile-update") {
        profile_update();
    }
    if only.as_deref() == Some("profile-query") {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = filled(dir.path(), 20_000);
        let times = sample(50_000, |i| {
            let filter = Filter::eq("caseload_id", format!("cl-{:04}", i % CASELOADS));
            let query = Query {
                filter,
                ..Query::default()
            };
            std::hint::black_box(store.query("clients", &query).unwrap());
        });
        println!("query p50 {:.1} µs", us(percentile(&times, 0.5)));
    }
    if run("bulk") {
        for size in bulk_sizes {
            bulk_insert(size);
        }
    }
    if run("query") {
        indexed_query(query_size);
    }
    if run("bytes") {
        bytes_per_record(query_size);
    }
}

fn client(i: usize) -> Fields {
    fields(json!({
        "caseload_id": format!("cl-{:04}", i % CASELOADS),
        "name": format!("Client {i:06}"),
        "birth_year": 1940 + (i % 80) as i64,
        "active": !i.is_multiple_of(3),
        "risk_score": (i % 100) as f64 / 10.0,
    }))
}

fn fields(value: serde_json::Value) -> Fields {
    value.as_object().cloned().expect("an object")
}

static ENCRYPTION_KEY: OnceLock<EncryptionKey> = OnceLock::new();

fn open_store(dir: &Path, synchronous: Synchronous) -> Store {
    let options = StoreOptions {
        synchronous,
        encryption_key: ENCRYPTION_KEY.get().cloned(),
        ..StoreOptions::default()
    };
    Store::open(
        dir.join("fieldsync.db"),
        Schema::from_json(SCHEMA).unwrap(),
        options,
    )
    .unwrap()
}

fn open_plain(dir: &Path, synchronous: Synchronous) -> Connection {
    let conn = Connection::open(dir.join("plain.db")).unwrap();
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};
         CREATE TABLE clients (id TEXT PRIMARY KEY NOT NULL, caseload_id TEXT NOT NULL,
             name TEXT NOT NULL, birth_year INTEGER, active INTEGER, risk_score REAL);
         CREATE INDEX by_caseload ON clients (caseload_id);"
    ))
    .unwrap();
    conn
}

fn plain_insert(conn: &Connection, i: usize) {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO clients (id, caseload_id, name, birth_year, active, risk_score)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .unwrap();
    stmt.execute(params![
        uuid::Uuid::now_v7().to_string(),
        format!("cl-{:04}", i % CASELOADS),
        format!("Client {i:06}"),
        1940 + (i % 80) as i64,
        !i.is_multiple_of(3),
        (i % 100) as f64 / 10.0
    ])
    .unwrap();
}

fn single_writes(synchronous: Synchronous, present: usize, samples: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), synchronous);
    let plain = open_plain(dir.path(), synchronous);
    let writes = (0..present)
        .map(|i| Write::Insert {
            collection: "clients".into(),
            id: None,
            fields: client(i),
        })
        .collect();
    let ids = store.write_batch(writes).unwrap();
    let tx = plain.unchecked_transaction().unwrap();
    for i in 0..present {
        plain_insert(&tx, i);
    }
    tx.commit().unwrap();
    let plain_ids: Vec<String> = plain
        .prepare("SELECT id FROM clients")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();

    let (ours, theirs) = sample_pair(
        samples,
        |i| {
            store.insert("clients", client(present + i)).unwrap();
        },
        |i| plain_insert(&plain, present + i),
    );
    report(
        &format!("insert, one transaction each, {present} present, synchronous={synchronous:?}"),
        &ours,
        &theirs,
    );

    // Cold: each update picks any of the records, so its document is rarely in the cache.
    // Hot: updates go to a working set of 100 records, as when a therapist edits today's
    // clients; their documents stay loaded.
    for (label, spread) in [("any record (cold)", ids.len()), ("100 hot records", 100)] {
        let (ours, theirs) = sample_pair(
            samples,
            |i| {
                let patch = fields(json!({"risk_score": i as f64, "active": i.is_multiple_of(2)}));
                store
                    .update("clients", &ids[(i * 7919) % spread], patch)
                    .unwrap();
            },
            |i| {
                plain
                    .prepare_cached("UPDATE clients SET risk_score = ?1, active = ?2 WHERE id = ?3")
                    .unwrap()
                    .execute(params![
                        i as f64,
                        i.is_multiple_of(2),
                        plain_ids[(i * 7919) % spread]
                    ])
                    .unwrap();
            },
        );
        let what = format!(
            "update of {label}, one transaction each, {present} present, synchronous={synchronous:?}"
        );
        report(&what, &ours, &theirs);
    }
}

/// Many updates at synchronous=NORMAL, for a profiler to look at.
fn profile_update() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Synchronous::Normal);
    let writes = (0..2000)
        .map(|i| Write::Insert {
            collection: "clients".into(),
            id: None,
            fields: client(i),
        })
        .collect();
    let ids = store.write_batch(writes).unwrap();
    let times = sample(20_000, |i| {
        let patch = fields(json!({"risk_score": i as f64, "active": i.is_multiple_of(2)}));
        store
            .update("clients", &ids[(i * 7919) % 100], patch)
            .unwrap();
    });
    println!("update p50 {:.1} µs", us(percentile(&times, 0.5)));
}

fn bulk_insert(size: usize) {
    // Three rounds, each into fresh files, one side after the other; the medians are the
    // figures, since a single import meets whatever the disk is doing at that moment.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), Synchronous::Full);
        let plain = open_plain(dir.path(), Synchronous::Full);
        let writes: Vec<Write> = (0..size)
            .map(|i| Write::Insert {
                collection: "clients".into(),
                id: None,
                fields: client(i),
            })
            .collect();
        let start = Instant::now();
        store.write_batch(writes).unwrap();
        ours.push(start.elapsed());
        let start = Instant::now();
        let tx = plain.unchecked_transaction().unwrap();
        for i in 0..size {
            plain_insert(&tx, i);
        }
        tx.commit().unwrap();
        theirs.push(start.elapsed());
    }
    ours.sort_unstable();
    theirs.sort_unstable();
    let (ours, theirs) = (ours[1], theirs[1]);
    println!(
        "bulk insert of {size} in one batch (median of 3): fieldsync {:.0} ms ({:.1} µs/record), plain {:.0} ms, ratio {:.1}x",
        ms(ours),
        ours.as_secs_f64() * 1e6 / size as f64,
        ms(theirs),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
}

fn indexed_query(size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (store, plain) = filled(dir.path(), size);
    let rounds = 1000;
    let (ours, theirs) = sample_pair(
        rounds,
        |i| {
            let query = Query {
                filter: Filter::eq("caseload_id", format!("cl-{:04}", i % CASELOADS)),
                ..Query::default()
            };
            let found = store.query("clients", &query).unwrap();
            assert_eq!(found.len(), size / CASELOADS);
        },
        |i| {
            let mut stmt = plain
                .prepare_cached(
                    "SELECT id, caseload_id, name, birth_year, active, risk_score FROM clients
                     WHERE caseload_id = ?1 ORDER BY id",
                )
                .unwrap();
            let rows: Vec<(String, String, String, i64, bool, f64)> = stmt
                .query_map([format!("cl-{:04}", i % CASELOADS)], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(rows.len(), size / CASELOADS);
        },
    );
    report(
        &format!(
            "indexed query returning {} of {size} records",
            size / CASELOADS
        ),
        &ours,
        &theirs,
    );
}

fn bytes_per_record(size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (store, plain) = filled(dir.path(), size);
    let plain_bytes = vacuumed_size(&plain);
    let with_outbox = {
        let db = Connection::open(dir.path().join("fieldsync.db")).unwrap();
        vacuumed_size(&db)
    };
    let last = store
        .outbox(usize::MAX >> 1)
        .unwrap()
        .last()
        .map(|e| e.seq)
        .unwrap();
    store.acknowledge_outbox(last).unwrap();
    drop(store);
    let synced = {
        let db = Connection::open(dir.path().join("fieldsync.db")).unwrap();
        vacuumed_size(&db)
    };
    let per = |bytes: u64| bytes as f64 / size as f64;
    println!(
        "bytes per record after VACUUM ({size} records): plain {:.0} B; fieldsync {:.0} B with the outbox unsent ({:.2}x), {:.0} B once synced ({:.2}x)",
        per(plain_bytes),
        per(with_outbox),
        with_outbox as f64 / plain_bytes as f64,
        per(synced),
        synced as f64 / plain_bytes as f64
    );
}

fn filled(dir: &Path, size: usize) -> (Store, Connection) {
    let store = open_store(dir, Synchronous::Normal);
    let plain = open_plain(dir, Synchronous::Normal);
    for chunk in (0..size).collect::<Vec<_>>().chunks(10_000) {
        let writes = chunk
            .iter()
            .map(|&i| Write::Insert {
                collection: "clients".into(),
                id: None,
                fields: client(i),
            })
            .collect();
        store.write_batch(writes).unwrap();
    }
    let tx = plain.unchecked_transaction().unwrap();
    for i in 0..size {
        plain_insert(&tx, i);
    }
    tx.commit().unwrap();
    (store, plain)
}

fn vacuumed_size(conn: &Connection) -> u64 {
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    (pages * page_size) as u64
}

fn sample(count: usize, mut op: impl FnMut(usize)) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..count)
        .map(|i| {
            let start = Instant::now();
            op(i);
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    times
}

/// Times `ours` and `theirs` alternately, so that a machine that speeds up or slows down during
/// the run (other processes, the disk's flushes) affects both sides alike.
fn sample_pair(
    count: usize,
    mut ours: impl FnMut(usize),
    mut theirs: impl FnMut(usize),
) -> (Vec<Duration>, Vec<Duration>) {
    let mut timed = (Vec::with_capacity(count), Vec::with_capacity(count));
    for i in 0..count {
        let start = Instant::now();
        ours(i);
        timed.0.push(start.elapsed());
        let start = Instant::now();
        theirs(i);
        timed.1.push(start.elapsed());
    }
    timed.0.sort_unstable();
    timed.1.sort_unstable();
    timed
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, ours: &[Duration], theirs: &[Duration]) {
    let (p50, p99) = (percentile(ours, 0.5), percentile(ours, 0.99));
    let (plain50, plain99) = (percentile(theirs, 0.5), percentile(theirs, 0.99));
    println!(
        "{what}: fieldsync p50 {:.1} µs p99 {:.1} µs; plain p50 {:.1} µs p99 {:.1} µs; p50 ratio {:.2}x",
        us(p50),
        us(p99),
        us(plain50),
        us(plain99),
        p50.as_secs_f64() / plain50.as_secs_f64()
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
