//! A device as a separate process, so tests can end it abruptly and reopen its store.
//!
//! - `fieldsync-device write <db> <count>` inserts `count` clients with a note each, prints each
//!   id as its insert returns, then exits at once without closing the store.
//! - `fieldsync-device pull <db> <url> <token> <page-size>` syncs; after each merged page it
//!   prints `pulled <n>` and waits for a line on stdin before going on, so a test can kill it
//!   at a known point.
//! - `fieldsync-device first-sync <db> <url> <token> <page-size>` syncs a fresh store and
//!   prints `records <n> seconds <s> peak_rss_kib <k>`.

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
        _ => {
            eprintln!(
                "usage: fieldsync-device write <db> <count> | pull|first-sync <db> <url> <token> <page-size>"
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
    println!(
        "records {} seconds {seconds:.3} peak_rss_kib {}",
        report.pulled,
        peak_rss_kib()
    );
}

/// The process's peak resident memory (Linux `VmHWM`), or 0 where unknown.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
