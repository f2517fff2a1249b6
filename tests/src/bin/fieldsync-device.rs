//! A device as a separate process, so tests can end it abruptly and reopen its store.
//!
//! - `fieldsync-device write <db> <count>` inserts `count` clients with a note each, prints each
//!   id as its insert returns, then exits at once without closing the store.
//! - `fieldsync-device pull <db> <url> <token> <page-size>` syncs; after each merged page it
//!   prints `pulled <n>` and waits for a line on stdin before going on, so a test can kill it
//!   at a known point.
//! - `fieldsync-device first-sync <db> <url> <token> <page-size>` syncs a fresh store and
//!   prints `records <n> seconds <s> peak_rss_kib <k> cpu_seconds <c>` (its CPU time, opening
//!   the store included).
//! - `fieldsync-device churn <db> <url> <token> <seed>` writes and syncs until killed: before
//!   each write it prints `begin <op> <id> [<value>]`, after the call returns `ok`, so a test
//!   knows which writes must survive a kill and which one may have been in flight.

use std::io::{BufRead, Write as _};
use std::path::Path;

use fieldsync_core::{SyncClient, SyncConfig};
use fieldsync_tests::{fields, open_device};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [_, "write", path, count] => {
            write(Path::new(path), count.parse().expect("count is a number"))
        }
        [_, "pull", path, url, token, page] => pull(
            Path::new(path),
            url,
            token,
            page.parse().expect("page is a number"),
        ),
        [_, "first-sync", path, url, token, page] => first_sync(
            Path::new(path),
            url,
            token,
            page.parse().expect("page is a number"),
        ),
        [_, "churn", path, url, token, seed] => churn(
            Path::new(path),
            url,
            token,
            seed.parse().expect("seed is a number"),
        ),
        _ => {
            eprintln!(
                "usage: fieldsync-device write <db> <count> | pull|first-sync <db> <url> <token> <page-size> | churn <db> <url> <token> <seed>"
            );
            std::process::exit(2);
        }
    }
}

fn write(path: &Path, count: usize) {
    let store = open_device(path);
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        let id = store
            .insert("clients", fields(json!({"caseload_id": "north", "name": format!("client {i}"), "notes": format!("note {i}")})))
            .expect("insert succeeds");
        writeln!(out, "{id}").expect("stdout is open");
        out.flush().expect("stdout is open");
    }
    // Leave without dropping the store: what was committed must already be on disk.
    std::process::exit(0);
}

fn pull(path: &Path, url: &str, token: &str, page_size: u32) {
    let store = open_device(path);
    let mut config = SyncConfig::new(url, token);
    config.pull_page_size = page_size;
    // Pages stay at `page_size`, so that the test knows where it stops the pull.
    config.pull_page_bytes = 0;
    let client = SyncClient::new(config).expect("the client builds");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime starts");
    let on_progress = |progress: &fieldsync_core::SyncProgress| {
        if progress.pulling && progress.pulled > 0 {
            println!("pulled {}", progress.pulled);
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        }
    };
    let report = runtime
        .block_on(client.sync_now_with_progress(&store, &on_progress))
        .expect("the sync succeeds");
    println!("done {}", report.pulled);
    std::process::exit(0);
}

fn churn(path: &Path, url: &str, token: &str, seed: u64) {
    use rand::{RngExt, SeedableRng};

    let store = open_device(path);
    let client = SyncClient::new(SyncConfig::new(url, token)).expect("the client builds");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime starts");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let live: Vec<String> = store
            .query("clients", &Default::default())
            .expect("query")
            .into_iter()
            .map(|r| r.id)
            .collect();
        let choice = if live.is_empty() {
            0
        } else {
            rng.random_range(0..100)
        };
        match choice {
            0..30 => {
                let id = format!("s{seed}-{n}");
                writeln!(out, "begin insert {id}").unwrap();
                out.flush().unwrap();
                store
                    .insert_with_id(
                        "clients",
                        Some(id),
                        fields(json!({"caseload_id": "north", "name": "Churn", "notes": "n"})),
                    )
                    .expect("insert");
            }
            30..60 => {
                let id = &live[rng.random_range(0..live.len())];
                let phone = format!("p{n}");
                writeln!(out, "begin update {id} {phone}").unwrap();
                out.flush().unwrap();
                store
                    .update("clients", id, fields(json!({"phone": phone})))
                    .expect("update");
            }
            60..90 => {
                let id = &live[rng.random_range(0..live.len())];
                let notes = store.get("clients", id).expect("get").expect("live");
                let units = notes.fields["notes"]
                    .as_str()
                    .unwrap_or("")
                    .encode_utf16()
                    .count();
                let text = format!("w{n}");
                writeln!(out, "begin splice {id} {text}").unwrap();
                out.flush().unwrap();
                store
                    .splice_text("clients", id, "notes", units, 0, &text)
                    .expect("splice");
            }
            _ => {
                let id = &live[rng.random_range(0..live.len())];
                writeln!(out, "begin delete {id}").unwrap();
                out.flush().unwrap();
                store.delete("clients", id).expect("delete");
            }
        }
        writeln!(out, "ok").unwrap();
        out.flush().unwrap();
        if rng.random_bool(0.2) {
            // The server may be unreachable for a moment; the outbox keeps everything.
            let _ = runtime.block_on(client.sync_now(&store));
        }
    }
}

fn first_sync(path: &Path, url: &str, token: &str, page_size: u32) {
    let store = open_device(path);
    let mut config = SyncConfig::new(url, token);
    config.pull_page_size = page_size;
    let client = SyncClient::new(config).expect("the client builds");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime starts");
    let started = std::time::Instant::now();
    let report = runtime
        .block_on(client.sync_now(&store))
        .expect("the sync succeeds");
    let seconds = started.elapsed().as_secs_f64();
    let cpu = fieldsync_tests::cpu_seconds(std::process::id()).unwrap_or(0.0);
    println!(
        "records {} seconds {seconds:.3} peak_rss_kib {} cpu_seconds {cpu:.2}",
        report.pulled,
        fieldsync_tests::peak_rss_kib().unwrap_or(0)
    );
}
