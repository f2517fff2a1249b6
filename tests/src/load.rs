//! A load test: many simulated devices, each a real core store, writing offline and syncing
//! over HTTP against running server instances, then a check that every device and the server
//! hold identical data and that no change was lost.
//!
//! Devices come in groups that share a scope (a caseload). In each cycle a device, offline,
//! adds a client, edits one of its earlier ones and now and then adds a line to its group's
//! shared record, which every device of the group edits concurrently; then it pushes its
//! outbox and pulls until caught up, and waits about `interval` before the next cycle.
//! The `fieldsync-loadtest` binary runs it from the command line; a small run is part of the
//! test suite.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use fieldsync_core::{Fields, Query, Store, StoreOptions, Synchronous};
use fieldsync_record::protocol::{self, PullResponse, PushRecord, PushRequest, PushResponse};
use fieldsync_server::storage::{Access, Database, Role, Storage};
use fieldsync_server::{ServerError, admin};
use serde_json::json;

use crate::clinic_data::Rng;
use crate::{clinic_schema, fields};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Server instances (`http://host:port`); devices are spread over them in turn.
    pub urls: Vec<String>,
    /// The servers' database (`--db`), to enroll the devices and read the server's data.
    pub db: String,
    /// Simulated devices.
    pub devices: usize,
    /// Devices sharing one scope.
    pub devices_per_scope: usize,
    /// How long the devices write and sync.
    pub duration: Duration,
    /// Mean pause between a device's syncs (each pause is 0.5 to 1.5 times this).
    pub interval: Duration,
    /// Where the devices' stores go (a temporary directory is made inside).
    pub work_dir: PathBuf,
}

/// Latency percentiles of one kind of request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

/// The servers' own account of making commits durable, where they keep one (the embedded
/// SQLite backend flushes its WAL itself), over the run and its final catch-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskReport {
    /// Flushes of the WAL.
    pub flushes: u64,
    /// Flushes that took more than 100 ms.
    pub slow_flushes: u64,
    /// Requests that waited for a flush covering their commit or what they read.
    pub waits: u64,
    /// Waits longer than 100 ms.
    pub slow_waits: u64,
}

impl DiskReport {
    /// Reads the servers' `/metrics` text; `None` where no server reports its flushes.
    fn scrape(http: &reqwest::blocking::Client, urls: &[String]) -> Option<DiskReport> {
        let mut total: Option<DiskReport> = None;
        for url in urls {
            let text = http
                .get(format!("{url}/metrics"))
                .send()
                .and_then(|response| response.text())
                .ok()?;
            let (Some(flushes), Some(waits)) = (
                over_100ms(&text, "fieldsync_wal_flush_seconds"),
                over_100ms(&text, "fieldsync_durable_wait_seconds"),
            ) else {
                continue;
            };
            let sum = total.get_or_insert_with(DiskReport::default);
            sum.flushes += flushes.0;
            sum.slow_flushes += flushes.1;
            sum.waits += waits.0;
            sum.slow_waits += waits.1;
        }
        total
    }

    fn since(self, before: DiskReport) -> DiskReport {
        DiskReport {
            flushes: self.flushes - before.flushes,
            slow_flushes: self.slow_flushes - before.slow_flushes,
            waits: self.waits - before.waits,
            slow_waits: self.slow_waits - before.slow_waits,
        }
    }
}

/// A histogram's count and how many of its observations exceed 100 ms, from Prometheus text.
fn over_100ms(text: &str, name: &str) -> Option<(u64, u64)> {
    let value = |prefix: String| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
    };
    let count = value(format!("{name}_count "))?;
    let fast = value(format!("{name}_bucket{{le=\"0.1\"}} "))?;
    Some((count, count.saturating_sub(fast)))
}

/// What a run measured and found.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Devices simulated.
    pub devices: usize,
    /// Length of the measured phase.
    pub elapsed: Duration,
    /// Successful pushes while measuring (not the setup's first syncs, nor the final
    /// catch-up in which every device syncs at once).
    pub pushes: u64,
    /// Successful pull requests (pages).
    pub pulls: u64,
    /// Records accepted by pushes (each a device's changes to one record).
    pub changes_pushed: u64,
    /// Records received by pulls.
    pub changes_pulled: u64,
    /// Push latency.
    pub push_latency: Latency,
    /// Pull latency (one page).
    pub pull_latency: Latency,
    /// Failed requests, refused records and records a device would not merge.
    pub errors: u64,
    /// A few of the errors, for the report.
    pub error_samples: Vec<String>,
    /// Records the server holds in the run's scopes.
    pub server_records: usize,
    /// Devices whose records differ from the server's in their scope.
    pub devices_differing: usize,
    /// The servers' flushes and the waits for them, if they report them.
    pub disk: Option<DiskReport>,
    /// Peak resident memory of this process, all simulated devices together (KiB), where
    /// the system tells.
    pub devices_peak_kib: Option<u64>,
    /// Writes of a device (a last value of its own record, or a line it added to a shared
    /// record) missing from the server.
    pub lost_changes: u64,
}

impl LoadReport {
    /// Whether the run had no errors, lost nothing and every device matches the server.
    pub fn passed(&self) -> bool {
        self.errors == 0 && self.lost_changes == 0 && self.devices_differing == 0
    }

    /// Requests or changes per second of the measured phase.
    pub fn rate(&self, count: u64) -> f64 {
        count as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        writeln!(
            f,
            "devices {}, measured {:.1} s",
            self.devices,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "pushes {} ({:.1}/s), pulls {} ({:.1}/s)",
            self.pushes,
            self.rate(self.pushes),
            self.pulls,
            self.rate(self.pulls)
        )?;
        writeln!(
            f,
            "changes pushed {} ({:.1}/s), changes pulled {} ({:.1}/s)",
            self.changes_pushed,
            self.rate(self.changes_pushed),
            self.changes_pulled,
            self.rate(self.changes_pulled)
        )?;
        for (name, latency) in [("push", self.push_latency), ("pull", self.pull_latency)] {
            writeln!(
                f,
                "{name} latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms(latency.p50),
                ms(latency.p99),
                ms(latency.max)
            )?;
        }
        if let Some(disk) = self.disk {
            writeln!(
                f,
                "server disk: {} WAL flushes, {} over 100 ms; {} waits of requests for a flush, {} over 100 ms",
                disk.flushes, disk.slow_flushes, disk.waits, disk.slow_waits
            )?;
        }
        if let Some(kib) = self.devices_peak_kib {
            writeln!(
                f,
                "simulated devices' process: peak memory {:.0} MiB",
                kib as f64 / 1024.0
            )?;
        }
        writeln!(f, "errors {}", self.errors)?;
        for sample in &self.error_samples {
            writeln!(f, "  {sample}")?;
        }
        writeln!(
            f,
            "server records {}, devices differing from the server {}, lost changes {}",
            self.server_records, self.devices_differing, self.lost_changes
        )?;
        write!(
            f,
            "{}",
            if self.passed() {
                "PASSED: every device holds the server's data"
            } else {
                "FAILED"
            }
        )
    }
}

/// Runs the load test; errors only for setup failures (the database, the work directory).
pub fn run(config: &LoadConfig) -> Result<LoadReport, ServerError> {
    assert!(!config.urls.is_empty(), "at least one server URL");
    let storage = Database::parse(&config.db).open(4)?;
    let dir = tempfile::Builder::new()
        .prefix("fieldsync-load-")
        .tempdir_in(&config.work_dir)
        .map_err(|err| ServerError::Internal(format!("cannot make a work directory: {err}")))?;
    // Names unique to this run, so runs against one database do not meet.
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    // The load is the clinic's records; a database without a schema gets the clinic schema.
    if storage.schema_version()? == 0 {
        fieldsync_server::schema::set_schema(&*storage, crate::CLINIC_SCHEMA)?;
    }
    let per_scope = config.devices_per_scope.max(1);
    let groups = config.devices.div_ceil(per_scope);
    let mut devices = Vec::with_capacity(config.devices);
    for group in 0..groups {
        let user = format!("load-{run_id}-{group}");
        let scope = format!("load-{run_id}-{group}");
        admin::create_user(&*storage, admin::By::CommandLine, &user, Role::Member)?;
        admin::grant(
            &*storage,
            admin::By::CommandLine,
            &user,
            &scope,
            Access::Write,
        )?;
        for _ in 0..per_scope.min(config.devices - group * per_scope) {
            let index = devices.len();
            let enrolled = admin::enroll_device(
                &*storage,
                admin::By::CommandLine,
                &user,
                &format!("load {index}"),
                None,
            )?;
            let options = StoreOptions {
                // The devices share the machine with the server; their own fsyncs are not
                // what is measured.
                synchronous: Synchronous::Normal,
                // An app holds one store; this process holds hundreds. With the default 512
                // loaded documents each, the devices grew by gigabytes in two minutes and
                // their page faults took CPU from the server being measured.
                document_cache_size: 8,
                ..StoreOptions::default()
            };
            let store = Store::open(
                dir.path().join(format!("device-{index}.db")),
                clinic_schema(),
                options,
            )
            .map_err(|err| ServerError::Internal(format!("a device store: {err}")))?;
            devices.push(Device::new(
                index,
                store,
                enrolled.token,
                config.urls[index % config.urls.len()].clone(),
                scope.clone(),
                index % per_scope == 0,
            ));
        }
    }
    let http = reqwest_client();
    for device in devices.iter_mut().filter(|d| d.creates_shared) {
        device.create_shared(&http);
    }
    let start_line = Arc::new(Barrier::new(devices.len() + 1));
    let pushed_all = Arc::new(Barrier::new(devices.len()));
    let handles: Vec<_> = devices
        .into_iter()
        .map(|mut device| {
            let http = http.clone();
            let (start_line, pushed_all) = (start_line.clone(), pushed_all.clone());
            let (duration, interval) = (config.duration, config.interval);
            std::thread::spawn(move || {
                device.prepare(&http, &start_line);
                device.run(&http, duration, interval);
                device.finish(&http, &pushed_all);
                device
            })
        })
        .collect();
    // Every device has its scope's shared record; the clock starts.
    let disk_before = DiskReport::scrape(&http, &config.urls);
    start_line.wait();
    let started = Instant::now();
    let devices: Vec<Device> = handles
        .into_iter()
        .map(|h| h.join().expect("a device thread panicked"))
        .collect();
    let elapsed = started.elapsed().min(config.duration);
    let disk = DiskReport::scrape(&http, &config.urls)
        .zip(disk_before)
        .map(|(after, before)| after.since(before));
    let mut report = LoadReport {
        devices: devices.len(),
        elapsed,
        disk,
        ..LoadReport::default()
    };
    let mut push_times = Vec::new();
    let mut pull_times = Vec::new();
    for device in &devices {
        let stats = &device.stats;
        report.pushes += stats.pushes;
        report.pulls += stats.pulls;
        report.changes_pushed += stats.changes_pushed;
        report.changes_pulled += stats.changes_pulled;
        report.errors += stats.errors;
        for sample in &stats.error_samples {
            if report.error_samples.len() < 8 && !report.error_samples.contains(sample) {
                report.error_samples.push(sample.clone());
            }
        }
        push_times.extend_from_slice(&stats.push_times);
        pull_times.extend_from_slice(&stats.pull_times);
    }
    report.push_latency = percentiles(&mut push_times);
    report.pull_latency = percentiles(&mut pull_times);
    report.devices_peak_kib = crate::peak_rss_kib();
    verify(&*storage, &devices, &mut report)?;
    Ok(report)
}

/// Compares every device with the server, and the server with what the devices wrote.
fn verify(
    storage: &dyn Storage,
    devices: &[Device],
    report: &mut LoadReport,
) -> Result<(), ServerError> {
    let mut server: HashMap<&str, HashMap<String, Fields>> = HashMap::new();
    for device in devices {
        if server.contains_key(device.scope.as_str()) {
            continue;
        }
        let records = server_records(storage, &device.scope)?;
        report.server_records += records.len();
        server.insert(&device.scope, records);
    }
    for device in devices {
        let on_server = &server[device.scope.as_str()];
        let on_device: HashMap<String, Fields> = device
            .store
            .query("clients", &Query::default())
            .map_err(|err| ServerError::Internal(format!("a device store: {err}")))?
            .into_iter()
            .map(|record| (record.id, without_nulls(record.fields)))
            .collect();
        if &on_device != on_server {
            report.devices_differing += 1;
        }
        for (id, phone) in &device.own {
            let kept = on_server
                .get(id)
                .is_some_and(|fields| fields.get("phone") == Some(&json!(phone.to_string())));
            report.lost_changes += u64::from(!kept);
        }
        let notes = on_server
            .get(&device.shared_id)
            .and_then(|fields| fields.get("notes"))
            .and_then(|notes| notes.as_str())
            .unwrap_or_default();
        for line in &device.lines {
            report.lost_changes += u64::from(!notes.contains(line.as_str()));
        }
    }
    Ok(())
}

fn server_records(
    storage: &dyn Storage,
    scope: &str,
) -> Result<HashMap<String, Fields>, ServerError> {
    let scopes = [scope.to_owned()];
    let mut records = HashMap::new();
    let mut after = 0;
    loop {
        let page = storage.documents_page(&scopes, after, i64::MAX, 1000)?;
        for entry in page.entries {
            let fields: Fields = serde_json::from_str(&entry.fields_json)
                .map_err(|_| ServerError::Corrupt("stored values do not decode".into()))?;
            records.insert(entry.record_id, without_nulls(fields));
        }
        after = page.last_seq;
        if !page.more {
            return Ok(records);
        }
    }
}

fn without_nulls(mut fields: Fields) -> Fields {
    fields.retain(|_, value| !value.is_null());
    fields
}

fn percentiles(times: &mut [Duration]) -> Latency {
    if times.is_empty() {
        return Latency::default();
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        max: times[times.len() - 1],
    }
}

fn reqwest_client() -> reqwest::blocking::Client {
    // fieldsync-core builds reqwest without a default TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client builds")
}

#[derive(Default)]
struct Stats {
    /// Whether requests count now: not during setup, nor during the final catch-up, when
    /// every device syncs at once. Errors always count.
    measuring: bool,
    pushes: u64,
    pulls: u64,
    changes_pushed: u64,
    changes_pulled: u64,
    errors: u64,
    error_samples: Vec<String>,
    push_times: Vec<Duration>,
    pull_times: Vec<Duration>,
}

impl Stats {
    fn pushed(&mut self, latency: Duration, accepted: usize) {
        if self.measuring {
            self.push_times.push(latency);
            self.pushes += 1;
            self.changes_pushed += accepted as u64;
        }
    }

    fn pulled(&mut self, latency: Duration, records: usize) {
        if self.measuring {
            self.pull_times.push(latency);
            self.pulls += 1;
            self.changes_pulled += records as u64;
        }
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.error_samples.len() < 4 {
            self.error_samples.push(what);
        }
    }
}

/// One simulated device.
struct Device {
    index: usize,
    store: Store,
    token: String,
    url: String,
    scope: String,
    /// The first device of a group creates the group's shared record.
    creates_shared: bool,
    shared_id: String,
    cursor: Option<String>,
    rng: Rng,
    /// The device's own clients and the last phone number it gave each.
    own: Vec<(String, u64)>,
    /// Lines it added to the shared record's notes.
    lines: Vec<String>,
    stats: Stats,
}

impl Device {
    fn new(
        index: usize,
        store: Store,
        token: String,
        url: String,
        scope: String,
        creates_shared: bool,
    ) -> Device {
        Device {
            index,
            store,
            token,
            url,
            scope,
            creates_shared,
            shared_id: String::new(),
            cursor: None,
            rng: Rng::new(index as u64 + 1),
            own: Vec::new(),
            lines: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Writes the group's shared record and pushes it, before the devices start.
    fn create_shared(&mut self, http: &reqwest::blocking::Client) {
        let values = json!({"caseload_id": self.scope, "name": "shared", "notes": ""});
        self.store
            .insert("clients", fields(values))
            .expect("a local insert succeeds");
        assert!(self.push(http), "the shared record was pushed");
    }

    /// Before the clock starts: a first sync, which brings the group's shared record.
    fn prepare(&mut self, http: &reqwest::blocking::Client, start_line: &Barrier) {
        if self.pull(http) {
            match self
                .store
                .query("clients", &Query::default())
                .expect("a local query succeeds")
                .into_iter()
                .find(|r| r.fields.get("name") == Some(&json!("shared")))
            {
                Some(shared) => self.shared_id = shared.id,
                None => self
                    .stats
                    .error("the first sync did not bring the shared record".into()),
            }
        }
        start_line.wait();
        self.stats.measuring = true;
    }

    fn run(&mut self, http: &reqwest::blocking::Client, duration: Duration, interval: Duration) {
        let deadline = Instant::now() + duration;
        // Devices sync at random moments, not in step: the first sync comes anywhere within
        // the first interval.
        std::thread::sleep(interval.mul_f64(self.rng.below(1000) as f64 / 1000.0));
        while Instant::now() < deadline {
            self.write_offline();
            self.push(http);
            self.pull(http);
            let pause = interval.mul_f64(0.5 + self.rng.below(1000) as f64 / 1000.0);
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// After the clock: push what is left, wait for every device to do so, pull the rest.
    fn finish(&mut self, http: &reqwest::blocking::Client, pushed_all: &Barrier) {
        self.stats.measuring = false;
        for _ in 0..5 {
            if self.push(http) {
                break;
            }
        }
        pushed_all.wait();
        for _ in 0..5 {
            if self.pull(http) {
                break;
            }
        }
    }

    fn write_offline(&mut self) {
        let n = self.own.len();
        let values = json!({
            "caseload_id": self.scope,
            "name": format!("device {} client {n}", self.index),
            "phone": "0",
        });
        let id = self
            .store
            .insert("clients", fields(values))
            .expect("a local insert succeeds");
        self.own.push((id, 0));
        let pick = self.rng.below(self.own.len());
        let (id, phone) = &mut self.own[pick];
        *phone += 1;
        self.store
            .update("clients", id, fields(json!({"phone": phone.to_string()})))
            .expect("a local update succeeds");
        if !self.shared_id.is_empty() && self.rng.below(4) == 0 {
            let line = format!("[{}.{}]", self.index, self.lines.len());
            self.store
                .splice_text("clients", &self.shared_id, "notes", 0, 0, &line)
                .expect("a local edit succeeds");
            self.lines.push(line);
        }
    }

    /// Pushes the outbox in one request; false if it failed (it is retried next time).
    fn push(&mut self, http: &reqwest::blocking::Client) -> bool {
        let entries = self.store.outbox(1000).expect("the outbox reads");
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return true;
        };
        let (first, last) = (first.seq, last.seq);
        let request = PushRequest {
            outbox_seq: None,
            batch_id: format!("{first}-{last}"),
            records: entries.into_iter().map(PushRecord::from).collect(),
        };
        let started = Instant::now();
        let answer: Result<PushResponse, String> = send(
            http.post(format!("{}/v1/push", self.url))
                .body(protocol::encode(&request)),
            &self.token,
        );
        match answer {
            Ok(response) => {
                let accepted = response
                    .results
                    .iter()
                    .filter(|r| r.rejected.is_none())
                    .count();
                self.stats.pushed(started.elapsed(), accepted);
                for rejection in response.results.iter().filter_map(|r| r.rejected.as_ref()) {
                    self.stats.error(format!(
                        "push refused a record: {:?} {}",
                        rejection.code, rejection.message
                    ));
                }
                self.store
                    .acknowledge_outbox(last)
                    .expect("acknowledging succeeds");
                true
            }
            Err(err) => {
                self.stats.error(format!("push: {err}"));
                false
            }
        }
    }

    /// Pulls pages until caught up; false if a request failed.
    fn pull(&mut self, http: &reqwest::blocking::Client) -> bool {
        loop {
            let mut url = format!("{}/v1/pull?limit=500", self.url);
            if let Some(cursor) = &self.cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let started = Instant::now();
            let answer: Result<PullResponse, String> = send(http.get(url), &self.token);
            let page = match answer {
                Ok(page) => page,
                Err(err) => {
                    self.stats.error(format!("pull: {err}"));
                    return false;
                }
            };
            self.stats.pulled(started.elapsed(), page.records.len());
            let report = self
                .store
                .apply_remote(page.records.into_iter().map(Into::into).collect())
                .expect("merging succeeds");
            for rejected in &report.rejected {
                self.stats
                    .error(format!("the device refused a record: {rejected:?}"));
            }
            self.cursor = Some(page.next_cursor);
            if !page.more {
                return true;
            }
        }
    }
}

fn send<T: serde::de::DeserializeOwned>(
    request: reqwest::blocking::RequestBuilder,
    token: &str,
) -> Result<T, String> {
    let response = request
        .bearer_auth(token)
        .header(protocol::VERSION_HEADER, protocol::VERSION.to_string())
        .send()
        .map_err(|err| format!("no answer: {err}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .map_err(|err| format!("the body did not arrive: {err}"))?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    protocol::decode(&body, 256 << 20).map_err(|err| format!("the answer does not decode: {err}"))
}
