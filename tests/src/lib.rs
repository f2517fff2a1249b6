//! Shared helpers for the integration tests: the clinic schema, field maps, and carrying
//! changes between stores the way a sync would.

pub mod clinic_data;
pub mod load;
pub mod postgres;
pub mod s3proxy;
pub mod server;
pub mod sim;

use fieldsync_core::{Fields, Schema, Store, StoreOptions};

/// The clinic schema the tests, examples and benchmarks share.
pub const CLINIC_SCHEMA: &str = include_str!("../../core/tests/fixtures/clinic.schema.json");

/// The clinic schema, parsed.
pub fn clinic_schema() -> Schema {
    Schema::from_json(CLINIC_SCHEMA).expect("the clinic schema is valid")
}

/// Opens (or creates) a clinic store at `path`.
pub fn open_device(path: &std::path::Path) -> Store {
    Store::open(path, clinic_schema(), StoreOptions::default()).expect("the store opens")
}

/// CPU seconds (user and system, every thread) process `pid` has used so far, from Linux's
/// `/proc/<pid>/stat`; `None` elsewhere.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces; the fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields (12th and 13th after the name), counted
    // in USER_HZ, which is 100 on every architecture Linux supports today.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// This process's peak resident memory in KiB (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_kib() -> Option<u64> {
    memory_kib("self", "VmHWM")
}

/// A memory figure of process `pid` ("self" for this one) in KiB, from Linux's
/// `/proc/<pid>/status` (`VmHWM` the peak resident memory, `VmRSS` the current); `None`
/// elsewhere.
pub fn memory_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The record tables' indexes in a store file (`idx:` names), with their definitions.
pub fn record_indexes(path: &std::path::Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(path).expect("the store file opens");
    let mut stmt = conn
        .prepare(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name LIKE 'idx:%'
             ORDER BY name",
        )
        .expect("sqlite_master reads");
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .and_then(|rows| rows.collect())
        .expect("the index list reads")
}

/// A field map from a JSON object literal.
pub fn fields(value: serde_json::Value) -> Fields {
    value.as_object().cloned().expect("a JSON object")
}

/// Applies every unsent change of `from` to `to` without acknowledging it, as a device would
/// hear of it over a side channel; the changes still go to the server later.
pub fn deliver(from: &Store, to: &Store) {
    let entries = from.outbox(1_000_000).expect("outbox reads");
    let report = to
        .apply_remote(entries.into_iter().map(|e| e.into_remote()).collect())
        .expect("apply_remote succeeds");
    assert!(
        report.rejected.is_empty(),
        "rejected: {:?}",
        report.rejected
    );
}

/// Moves every unsent change of `from` into `to` and acknowledges it, as a sync through a
/// server would. Returns how many changes moved.
pub fn carry(from: &Store, to: &Store) -> usize {
    let entries = from.outbox(1_000_000).expect("outbox reads");
    let Some(last) = entries.last().map(|e| e.seq) else {
        return 0;
    };
    deliver(from, to);
    from.acknowledge_outbox(last).expect("acknowledge succeeds");
    entries.len()
}
