//! Typing a session note into a `text` field, one `Store::splice_text` per keystroke, beside
//! plain rusqlite rewriting the note's row on every keystroke in the same run.
//!
//! Each keystroke appends one character; every 40 characters a typo is typed and taken back
//! with a backspace (a one-character delete). For notes of 1,000, 5,000 and 50,000 characters,
//! at the default durability (`synchronous = FULL`) and at NORMAL, it prints the keystroke
//! latency (p50, p99, max, and the p99 of the first and of the last 500 keystrokes), the outbox
//! entries the typing leaves, the WAL's size at the end of typing and its peak (sampled every
//! 100 keystrokes), the first splice after closing and reopening the store (median of 5
//! reopens), and the file's size.
//!
//! `cargo bench -p fieldsync-core --bench typing` runs everything; `-- --quick` leaves out the
//! 50,000-character note. Figures go to docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fieldsync_core::{Fields, RemotePayload, Schema, Store, StoreOptions, Synchronous};
use rusqlite::{Connection, params};
use serde_json::json;

const SCHEMA: &str = r#"{"collections": {"sessions": {
    "scope_field": "caseload_id",
    "fields": {
        "caseload_id": {"type": "string", "required": true},
        "client_id": {"type": "string", "required": true},
        "started_at": {"type": "integer"},
        "note": {"type": "text"}
    },
    "indexes": [{"name": "by_caseload", "fields": ["caseload_id"]}]
}}}"#;

/// What the therapist types, over and over. ASCII, so that a character is one UTF-16 unit and
/// the note's byte length is the splice position.
const PROSE: &str = "Client arrived on time and reported sleeping better since the last \
    session. We reviewed last week's thought record: two situations at work triggered worry, \
    rated 60 and 40. Practised paced breathing for ten minutes. Plan: keep the record daily \
    and try one small exposure before the next session. ";

/// A typo and its backspace every this many characters.
const TYPO_EVERY: usize = 40;
/// The window whose p99 is compared at the start and at the end of the note.
const WINDOW: usize = 500;
const WAL_SAMPLE_EVERY: usize = 100;
const REOPENS: usize = 5;

#[derive(Clone, Copy)]
enum Key {
    Type(char),
    Backspace,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let lengths: &[usize] = if quick {
        &[1_000, 5_000]
    } else {
        &[1_000, 5_000, 50_000]
    };
    println!(
        "fieldsync-core typing benchmark ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "one splice_text per keystroke (append one character; a typo and a backspace every \
         {TYPO_EVERY} characters), timed alternately with plain rusqlite updating the note's \
         row with the whole note; ratio = fieldsync / plain, lower is better\n"
    );
    let mut results = Vec::new();
    for synchronous in [Synchronous::Full, Synchronous::Normal] {
        for &chars in lengths {
            let start = Instant::now();
            let result = type_note(synchronous, chars);
            println!(
                "typed {chars} characters at {} in {:.1} s",
                label(synchronous),
                start.elapsed().as_secs_f64()
            );
            results.push(result);
        }
    }
    print_latency(&results);
    print_state(&results);
}

fn label(synchronous: Synchronous) -> &'static str {
    match synchronous {
        Synchronous::Full => "FULL (default)",
        Synchronous::Normal => "NORMAL",
    }
}

fn keystrokes(chars: usize) -> Vec<Key> {
    let prose = PROSE.as_bytes();
    let mut keys = Vec::with_capacity(chars + 2 * chars / TYPO_EVERY);
    for i in 0..chars {
        if i > 0 && i.is_multiple_of(TYPO_EVERY) {
            keys.push(Key::Type('x'));
            keys.push(Key::Backspace);
        }
        keys.push(Key::Type(prose[i % prose.len()] as char));
    }
    keys
}

fn fields(value: serde_json::Value) -> Fields {
    value.as_object().cloned().expect("an object")
}

fn open_store(dir: &Path, synchronous: Synchronous) -> Store {
    let options = StoreOptions {
        synchronous,
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
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};"
    ))
    .unwrap();
    conn
}

fn plain_update(conn: &Connection, note: &str, id: &str) {
    conn.prepare_cached("UPDATE notes SET body = ?1 WHERE id = ?2")
        .unwrap()
        .execute(params![note, id])
        .unwrap();
}

/// What one note, typed at one durability, left behind.
struct Typed {
    synchronous: Synchronous,
    chars: usize,
    /// Keystroke times in typing order.
    ours: Vec<Duration>,
    theirs: Vec<Duration>,
    outbox_entries: usize,
    outbox_bytes: usize,
    document_bytes: usize,
    /// WAL sizes at the end of typing and at their peak: fieldsync, plain.
    wal_end: (u64, u64),
    wal_peak: (u64, u64),
    /// Medians over the reopen cycles.
    reopen_open: Duration,
    reopen_splice: Duration,
    reopen_plain_update: Duration,
    file_bytes: (u64, u64),
}

fn type_note(synchronous: Synchronous, chars: usize) -> Typed {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), synchronous);
    let plain = open_plain(dir.path(), synchronous);
    plain
        .execute_batch(
            "CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, caseload_id TEXT NOT NULL,
                 client_id TEXT NOT NULL, started_at INTEGER, body TEXT);
             CREATE INDEX by_caseload ON notes (caseload_id);",
        )
        .unwrap();
    let session = json!({
        "caseload_id": "cl-0001",
        "client_id": "client-000042",
        "started_at": 1_796_000_000_000_i64,
        "note": "",
    });
    let id = store.insert("sessions", fields(session.clone())).unwrap();
    plain
        .execute(
            "INSERT INTO notes (id, caseload_id, client_id, started_at, body)
             VALUES (?1, ?2, ?3, ?4, '')",
            params![
                id,
                session["caseload_id"].as_str(),
                session["client_id"].as_str(),
                session["started_at"].as_i64()
            ],
        )
        .unwrap();

    let keys = keystrokes(chars);
    let wal = (
        wal_path(dir.path(), "fieldsync.db"),
        wal_path(dir.path(), "plain.db"),
    );
    let mut note = String::with_capacity(chars);
    let mut ours = Vec::with_capacity(keys.len());
    let mut theirs = Vec::with_capacity(keys.len());
    let mut wal_peak = (0, 0);
    for (k, key) in keys.iter().enumerate() {
        let (index, delete, insert) = match *key {
            Key::Type(c) => {
                note.push(c);
                (note.len() - 1, 0, c.to_string())
            }
            Key::Backspace => {
                note.pop();
                (note.len(), 1, String::new())
            }
        };
        // Alternately, keystroke by keystroke, so that both sides meet the same machine.
        let start = Instant::now();
        store
            .splice_text("sessions", &id, "note", index, delete, &insert)
            .unwrap();
        ours.push(start.elapsed());
        let start = Instant::now();
        plain_update(&plain, &note, &id);
        theirs.push(start.elapsed());
        if (k + 1).is_multiple_of(WAL_SAMPLE_EVERY) {
            wal_peak.0 = wal_peak.0.max(file_size(&wal.0));
            wal_peak.1 = wal_peak.1.max(file_size(&wal.1));
        }
    }
    let wal_end = (file_size(&wal.0), file_size(&wal.1));
    let wal_peak = (wal_peak.0.max(wal_end.0), wal_peak.1.max(wal_end.1));

    let record = store.get("sessions", &id).unwrap().unwrap();
    assert_eq!(record.fields["note"].as_str(), Some(note.as_str()));
    let outbox = store.outbox(usize::MAX >> 1).unwrap();
    let outbox_entries = store.outbox_len().unwrap();
    assert_eq!(outbox_entries, outbox.len());
    let outbox_bytes = outbox
        .iter()
        .map(|entry| match &entry.payload {
            RemotePayload::Changes(changes) => changes.iter().map(Vec::len).sum(),
            RemotePayload::Document(doc) => doc.len(),
        })
        .sum();
    let document_bytes = store.document("sessions", &id).unwrap().len();
    drop(store);
    drop(plain);

    // Closing checkpoints the WAL into the file, so each reopen reads the note's row from the
    // file and loads its document afresh, as after the app was closed.
    let mut reopen_open = Vec::with_capacity(REOPENS);
    let mut reopen_splice = Vec::with_capacity(REOPENS);
    let mut reopen_plain_update = Vec::with_capacity(REOPENS);
    for _ in 0..REOPENS {
        let start = Instant::now();
        let store = open_store(dir.path(), synchronous);
        reopen_open.push(start.elapsed());
        note.push('.');
        let start = Instant::now();
        store
            .splice_text("sessions", &id, "note", note.len() - 1, 0, ".")
            .unwrap();
        reopen_splice.push(start.elapsed());
        drop(store);
        let plain = open_plain(dir.path(), synchronous);
        let start = Instant::now();
        plain_update(&plain, &note, &id);
        reopen_plain_update.push(start.elapsed());
    }
    let file_bytes = (
        file_size(&dir.path().join("fieldsync.db")),
        file_size(&dir.path().join("plain.db")),
    );
    Typed {
        synchronous,
        chars,
        ours,
        theirs,
        outbox_entries,
        outbox_bytes,
        document_bytes,
        wal_end,
        wal_peak,
        reopen_open: median(reopen_open),
        reopen_splice: median(reopen_splice),
        reopen_plain_update: median(reopen_plain_update),
        file_bytes,
    }
}

fn wal_path(dir: &Path, db: &str) -> PathBuf {
    dir.join(format!("{db}-wal"))
}

/// A file's size; 0 when it does not exist (the WAL before the first write, or after a close).
fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn print_latency(results: &[Typed]) {
    println!(
        "\nkeystroke latency, µs (p99 first/last: the p99 of the first and of the last \
         {WINDOW} keystrokes)"
    );
    println!(
        "{:<15} {:>6} {:>6} | {:>21} {:>15} | {:>17} {:>15} | {:>13}",
        "durability",
        "chars",
        "keys",
        "fieldsync p50/p99/max",
        "p99 first/last",
        "plain p50/p99/max",
        "p99 first/last",
        "ratio p50/p99"
    );
    for r in results {
        let (ours, theirs) = (sorted(&r.ours), sorted(&r.theirs));
        let (p50, p99) = (percentile(&ours, 0.5), percentile(&ours, 0.99));
        let (plain50, plain99) = (percentile(&theirs, 0.5), percentile(&theirs, 0.99));
        println!(
            "{:<15} {:>6} {:>6} | {:>21} {:>15} | {:>17} {:>15} | {:>5.1}x {:>5.1}x",
            label(r.synchronous),
            r.chars,
            r.ours.len(),
            format!(
                "{:.0}/{:.0}/{:.0}",
                us(p50),
                us(p99),
                us(*ours.last().unwrap())
            ),
            first_last(&r.ours),
            format!(
                "{:.0}/{:.0}/{:.0}",
                us(plain50),
                us(plain99),
                us(*theirs.last().unwrap())
            ),
            first_last(&r.theirs),
            p50.as_secs_f64() / plain50.as_secs_f64(),
            p99.as_secs_f64() / plain99.as_secs_f64()
        );
    }
}

fn print_state(results: &[Typed]) {
    println!(
        "\nafter typing (WAL at the end / peak; reopen: medians of {REOPENS} closes and \
         reopens; file after the last close)"
    );
    println!(
        "{:<15} {:>6} | {:>14} {:>11} {:>9} | {:>21} {:>21} | {:>8} {:>13} {:>14} | {:>9} {:>9}",
        "durability",
        "chars",
        "outbox entries",
        "outbox KiB",
        "doc KiB",
        "fieldsync WAL MiB",
        "plain WAL MiB",
        "open ms",
        "1st splice ms",
        "plain 1st ms",
        "file MiB",
        "plain MiB"
    );
    for r in results {
        println!(
            "{:<15} {:>6} | {:>14} {:>11.1} {:>9.1} | {:>21} {:>21} | \
             {:>8.1} {:>13.2} {:>14.2} | {:>9.2} {:>9.2}",
            label(r.synchronous),
            r.chars,
            r.outbox_entries,
            kib(r.outbox_bytes as u64),
            kib(r.document_bytes as u64),
            format!("{:.2} / {:.2}", mib(r.wal_end.0), mib(r.wal_peak.0)),
            format!("{:.2} / {:.2}", mib(r.wal_end.1), mib(r.wal_peak.1)),
            ms(r.reopen_open),
            ms(r.reopen_splice),
            ms(r.reopen_plain_update),
            mib(r.file_bytes.0),
            mib(r.file_bytes.1)
        );
    }
}

/// The p99 of the first and of the last `WINDOW` keystrokes, in µs.
fn first_last(times: &[Duration]) -> String {
    let window = WINDOW.min(times.len());
    let first = sorted(&times[..window]);
    let last = sorted(&times[times.len() - window..]);
    format!(
        "{:.0}/{:.0}",
        us(percentile(&first, 0.99)),
        us(percentile(&last, 0.99))
    )
}

fn sorted(times: &[Duration]) -> Vec<Duration> {
    let mut times = times.to_vec();
    times.sort_unstable();
    times
}

fn median(times: Vec<Duration>) -> Duration {
    percentile(&sorted(&times), 0.5)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn kib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
