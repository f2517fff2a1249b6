//! `fieldsync-loadtest`: simulated devices writing offline and syncing against running server
//! instances, with throughput, latency and error figures, and a check at the end that every
//! device and the server hold identical data. See docs/BENCHMARKS.md for runs and figures.
//!
//! ```sh
//! fieldsync-loadtest --url http://127.0.0.1:8787 --db fieldsync-server.db --devices 1000 --seconds 30 \
//!     --server-pid "$(pgrep -n fieldsync-server)"
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fieldsync_tests::load::{self, LoadConfig};

#[derive(Parser)]
#[command(
    name = "fieldsync-loadtest",
    about = "Load-test running Fieldsync sync servers"
)]
struct Args {
    /// A server instance (`http://host:port`); repeat for several, devices take turns.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// The servers' database, as given to their `--db`: the test enrolls its devices there
    /// and reads the server's records at the end.
    #[arg(long, env = "FIELDSYNC_DB")]
    db: String,
    /// Simulated devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Devices sharing a scope (a caseload) and editing its shared record.
    #[arg(long, default_value_t = 10)]
    devices_per_scope: usize,
    /// Seconds of writing and syncing.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Mean milliseconds between a device's syncs. The default is the busiest a device on the
    /// engine's default background sync gets: it syncs 2 seconds after its writes pause. Each
    /// sync is a push and at least one pull: keep this above what the server's per-device rate
    /// limit allows (20 a second by default).
    #[arg(long, default_value_t = 2000)]
    interval_ms: u64,
    /// The process id of a server instance on this machine, to report the CPU time it used
    /// while measured and its peak memory; repeat for several.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = LoadConfig {
        urls: args.urls,
        db: args.db,
        devices: args.devices,
        devices_per_scope: args.devices_per_scope,
        duration: Duration::from_secs_f64(args.seconds),
        interval: Duration::from_millis(args.interval_ms),
        server_pids: args.server_pids,
    };
    match load::run(&config) {
        Ok(report) => {
            println!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
