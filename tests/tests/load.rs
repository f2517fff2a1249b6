//! A small run of the load test (docs/BENCHMARKS.md has the big one), so that it cannot rot:
//! devices writing offline and syncing through real servers end with the server's data.
//!
//! A load test runs for a time: its devices write and sync for 3 seconds of wall time. What
//! it asserts does not depend on how much they did in that time (every write reaches the
//! server and every device, no request fails), only that they did something.

use std::path::Path;
use std::time::Duration;

use fieldsync_tests::load::{self, LoadConfig};
use fieldsync_tests::postgres::TestPostgres;
use fieldsync_tests::server::ServerProcess;

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

fn small_run(servers: &[&ServerProcess], db: String) -> load::LoadReport {
    let report = load::run(&LoadConfig {
        urls: servers.iter().map(|server| server.url.clone()).collect(),
        db,
        devices: 10,
        devices_per_scope: 5,
        duration: Duration::from_secs(3),
        interval: Duration::from_millis(200),
        server_pids: servers.iter().map(|server| server.pid()).collect(),
    })
    .unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(report.pushes >= 10 && report.pulls >= 10, "{report}");
    assert!(
        report.changes_pulled > 0,
        "devices of a scope hear of each other"
    );
    if cfg!(target_os = "linux") {
        assert!(
            report.devices_peak_kib.is_some_and(|kib| kib > 0)
                && report.server_peak_kib.is_some_and(|kib| kib > 0)
                && report.devices_cpu.is_some()
                && report.server_cpu.is_some_and(|cpu| cpu > Duration::ZERO),
            "{report}"
        );
    }
    report
}

#[test]
fn a_small_load_test_on_sqlite_passes_within_the_default_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let server = ServerProcess::start(Path::new(SERVER), &db);
    let report = small_run(&[&server], db.to_str().unwrap().to_owned());
    // The embedded server reports its flushes: every push waited for one.
    let disk = report.disk.expect("the embedded server reports its disk");
    assert!(disk.flushes >= 1 && disk.waits >= report.pushes, "{report}");
}

#[test]
fn a_small_load_test_on_two_postgres_instances_passes() {
    let cluster = TestPostgres::start();
    let db = cluster.database();
    let (a, b) = (
        ServerProcess::start(Path::new(SERVER), &db),
        ServerProcess::start(Path::new(SERVER), &db),
    );
    let report = small_run(&[&a, &b], db);
    assert_eq!(report.disk, None, "PostgreSQL flushes inside the database");
}
