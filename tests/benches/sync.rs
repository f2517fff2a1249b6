//! Sync benchmarks against a real server process over loopback:
//! - first sync of a fresh device (records/s, the device process's peak memory, the CPU time
//!   of the device and of the server, for two data sizes, beside plain rusqlite inserting the
//!   same rows);
//! - an incremental sync of 1,000 edits from device A through the server to device B, nine
//!   rounds, each timed from A's sync to B's sync returning.
//!
//! `cargo bench -p fieldsync-tests --bench sync` (100,000 sessions) or `-- --quick` (20,000).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fieldsync_core::{Filter, SyncClient, SyncConfig, Write};
use fieldsync_tests::clinic_data::{self, ClinicSize, Rng};
use fieldsync_tests::server::ServerProcess;
use fieldsync_tests::{cpu_seconds, fields, open_device};
use serde_json::json;

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");
const DEVICE: &str = env!("CARGO_BIN_EXE_fieldsync-device");

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let size = if quick {
        ClinicSize {
            sessions: 20_000,
            ..ClinicSize::FULL
        }
    } else {
        ClinicSize::FULL
    };
    println!(
        "fieldsync sync benchmarks ({} sessions, release build)\n",
        size.sessions
    );
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(Path::new(SERVER), dir.path().join("server.db"));
    let writer_token = grant_user(&server, "writer", size.therapists);
    let all_token = grant_user(&server, "reader", size.therapists);
    let fifth_token = grant_user(&server, "fifth", size.therapists / 5);

    let writer = open_device(&dir.path().join("writer.db"));
    let mut rng = Rng::new(7);
    let started = Instant::now();
    let sessions: Vec<Write> = (0..size.sessions)
        .map(|i| clinic_data::session(size, i, &mut rng))
        .collect();
    for chunk in sessions.chunks(10_000) {
        writer.write_batch(chunk.to_vec()).unwrap();
    }
    let mut config = SyncConfig::new(&server.url, &writer_token);
    config.push_batch_size = 1000;
    let writer_client = SyncClient::new(config).unwrap();
    writer_client.sync_now(&writer).await.unwrap();
    println!(
        "seeded: {} sessions written and pushed in {:.1} s",
        size.sessions,
        started.elapsed().as_secs_f64()
    );

    // Each first sync runs three times (a fresh device each time) and the median is the
    // figure: single runs on a shared machine vary by a fifth.
    let mut caught_up = None;
    for (label, token) in [
        ("a fifth of the caseloads", &fifth_token),
        ("every caseload", &all_token),
    ] {
        let mut rates = Vec::new();
        for attempt in 0..3 {
            let db = dir
                .path()
                .join(format!("fresh-{}-{attempt}.db", label.len()));
            let (records, seconds) = first_sync(&server, token, &db);
            rates.push(records / seconds);
            caught_up = Some((db, token));
        }
        println!(
            "first sync, {label}: median {:.0} records/s",
            median(&mut rates)
        );
    }
    let mut plain_rates: Vec<f64> = (0..3)
        .map(|attempt| {
            let seconds = plain_insert(
                &dir.path().join(format!("plain-{attempt}.db")),
                size.sessions,
            );
            println!(
                "  plain rusqlite inserting the same {} rows in one transaction: {seconds:.2} s",
                size.sessions
            );
            size.sessions as f64 / seconds
        })
        .collect();
    println!(
        "plain rusqlite inserting the same rows: median {:.0} rows/s",
        median(&mut plain_rates)
    );

    // Incremental: device B is caught up; device A edits 1,000 sessions and syncs; B syncs.
    let (reader_db, reader_token) = caught_up.expect("the first syncs ran");
    let reader = open_device(&reader_db);
    let reader_client = SyncClient::new(SyncConfig::new(&server.url, reader_token)).unwrap();
    reader_client.sync_now(&reader).await.unwrap();
    // Nine rounds, each editing 1,000 other sessions (documents neither side has loaded).
    let mut rounds = Vec::new();
    // CPU the rounds took, in the server and in this process (both devices).
    let (mut server_cpu, mut devices_cpu) = (0.0, 0.0);
    let bench_pid = std::process::id();
    for round in 0..9 {
        let edited = |i: usize| format!("session-{:06}", i * (size.sessions / 1000) + round);
        let stamp = 9_000_000_000_000i64 + round as i64 * 1000;
        let edits: Vec<Write> = (0..1000)
            .map(|i| Write::Update {
                collection: "sessions".into(),
                id: edited(i),
                patch: fields(json!({"started_at": stamp + i as i64})),
            })
            .collect();
        writer.write_batch(edits).unwrap();
        settle(&dir.path().join("writer.db"));
        let cpu_before = (cpu_seconds(server.pid()), cpu_seconds(bench_pid));
        let started = Instant::now();
        let pushed = writer_client.sync_now(&writer).await.unwrap().pushed;
        let push_done = started.elapsed();
        let pulled = reader_client.sync_now(&reader).await.unwrap().pulled;
        let elapsed = started.elapsed();
        let cpu_after = (cpu_seconds(server.pid()), cpu_seconds(bench_pid));
        server_cpu += cpu_after.0.zip(cpu_before.0).map_or(0.0, |(a, b)| a - b);
        devices_cpu += cpu_after.1.zip(cpu_before.1).map_or(0.0, |(a, b)| a - b);
        assert_eq!((pushed, pulled), (1000, 1000));
        let moved = reader
            .count(
                "sessions",
                &Filter::Gte {
                    field: "started_at".into(),
                    value: json!(stamp),
                },
            )
            .unwrap();
        assert_eq!(moved, 1000);
        println!(
            "  round {}: {:.0} ms (A's sync {:.0} ms, B's sync {:.0} ms)",
            round + 1,
            elapsed.as_secs_f64() * 1e3,
            push_done.as_secs_f64() * 1e3,
            (elapsed - push_done).as_secs_f64() * 1e3
        );
        rounds.push(elapsed);
    }
    rounds.sort();
    println!(
        "  CPU per round (9 rounds together): server {:.0} ms, both devices {:.0} ms",
        server_cpu / 9.0 * 1e3,
        devices_cpu / 9.0 * 1e3
    );
    println!(
        "incremental sync of 1,000 edits from device A through the server to device B: median {:.0} ms",
        rounds[rounds.len() / 2].as_secs_f64() * 1e3
    );
}

/// Runs a fresh device process's first sync into `db`; prints its figures and returns the
/// records it stored and the seconds it took.
fn first_sync(server: &ServerProcess, token: &str, db: &Path) -> (f64, f64) {
    // The engine's own page sizes: a first page of the default size, growing from there.
    let first_page = SyncConfig::new(&server.url, token)
        .pull_page_size
        .to_string();
    let server_cpu_before = cpu_seconds(server.pid()).unwrap_or(0.0);
    let output = Command::new(DEVICE)
        .args([
            "first-sync",
            db.to_str().unwrap(),
            &server.url,
            token,
            &first_page,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = String::from_utf8(output.stdout).unwrap();
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [records, seconds, peak_kib, device_cpu] = numbers[..] else {
        panic!("unexpected output: {line}")
    };
    let server_cpu = cpu_seconds(server.pid()).unwrap_or(0.0) - server_cpu_before;
    println!(
        "  {records} records in {seconds:.2} s = {:.0} records/s; device peak memory {:.1} MiB; CPU seconds: device {device_cpu:.2}, server {server_cpu:.2}",
        records / seconds,
        peak_kib / 1024.0
    );
    (records, seconds)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn grant_user(server: &ServerProcess, name: &str, caseloads: usize) -> String {
    server.admin(&["create-user", name]);
    for t in 0..caseloads {
        server.admin(&[
            "grant",
            "--user",
            name,
            "--scope",
            &clinic_data::caseload(t),
        ]);
    }
    server.device(name)
}

/// Returns once the WAL that device A's untimed edits left is copied into its database file.
/// The engine's background sync starts 2 seconds after writes pause, long after the store's
/// checkpoint thread has done that; timed right after the edits, the sync would share the
/// machine's two cores with the copy.
fn settle(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    // A checkpoint already running on the store's thread makes this one return busy at once
    // (SQLite's busy handler covers writers, not other checkpoints): ask again, as the busy
    // handler would.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (busy, frames, copied): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(FULL)", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .unwrap();
        if busy == 0 && frames == copied {
            return;
        }
        assert!(Instant::now() < deadline, "device A's WAL stays uncopied");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Seconds for plain rusqlite to insert the same session rows (same columns) in one
/// transaction, WAL, synchronous=FULL.
fn plain_insert(db: &Path, count: usize) -> f64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE sessions (id TEXT PRIMARY KEY, caseload_id TEXT NOT NULL, client TEXT,
             started_at INTEGER NOT NULL, note TEXT);
         CREATE INDEX by_client ON sessions (client, started_at);
         CREATE INDEX by_caseload ON sessions (caseload_id);",
    )
    .unwrap();
    let size = ClinicSize::FULL;
    let mut rng = Rng::new(7);
    let rows: Vec<Write> = (0..count)
        .map(|i| clinic_data::session(size, i, &mut rng))
        .collect();
    let started = Instant::now();
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut stmt = tx
            .prepare("INSERT INTO sessions (id, caseload_id, client, started_at, note) VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        for row in &rows {
            let Write::Insert { id, fields, .. } = row else {
                unreachable!()
            };
            stmt.execute(rusqlite::params![
                id,
                fields["caseload_id"].as_str(),
                fields["client"].as_str(),
                fields["started_at"].as_i64(),
                fields["note"].as_str()
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    started.elapsed().as_secs_f64()
}
