//! A device as a separate process, so tests can end it abruptly and reopen its store.
//!
//! `fieldsync-device write <db-path> <count>` inserts `count` clients with a note each, prints
//! each id as its insert returns, then exits at once without closing the store.

use std::io::Write as _;

use fieldsync_tests::{fields, open_device};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, command, path, count] = args.as_slice() else {
        eprintln!("usage: fieldsync-device write <db-path> <count>");
        std::process::exit(2);
    };
    assert_eq!(command, "write", "the only command is `write`");
    let count: usize = count.parse().expect("count is a number");
    let store = open_device(std::path::Path::new(path));
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
