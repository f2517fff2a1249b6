//! A load test: many simulated devices writing offline and syncing over HTTP against running
//! server instances, then a check that every device and the server hold identical data and
//! that no change was lost.
//!
//! Devices come in groups that share a scope (a caseload). In each cycle a device, offline,
//! adds a client, edits one of its earlier ones and now and then adds a line to its group's
//! shared record, which every device of the group edits concurrently; then it pushes what it
//! wrote and pulls until caught up, and waits about `interval` before the next cycle.
//!
//! A simulated device is a protocol client, not a store: a thousand of them share the machine
//! with the server being measured, and a store each (a SQLite file, a document cache, every
//! record of the scope merged) cost more CPU than the server and a gigabyte of memory. A
//! device keeps what it needs to write and to be checked, and nothing else:
//!
//! - of its own clients, what their next Automerge change builds on (the last change's hash,
//!   sequence number and operation counter, and the operation that set the phone number);
//! - of its group's shared record, the changes it holds (their hashes, its heads), what its
//!   own edits build on; merging the devices' concurrent edits is the server's work;
//! - of the records of other devices, a digest of the values the server sent with them.
//!
//! Its changes are the bytes a store's document would make for the same writes (the tests
//! below check that), and the server checks and merges them as it does any device's. At the
//! end every device must hold exactly the server's records of its scope: the same ids, the
//! same values, and for the shared record the same heads, so every change the server holds.
//!
//! Every device runs as a task on a Tokio runtime of two threads, and all share one HTTP client
//! and its pool of connections. The `fieldsync-loadtest` binary runs it from the command line;
//! a small run is part of the test suite.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ExpandedChange, ObjId, ObjType, ROOT, ReadDoc,
    ScalarValue, Value, legacy,
};
use fieldsync_record::protocol::{
    self, Payload, PullResponse, PulledRecord, PushRecord, PushRequest, PushResponse,
};
use fieldsync_record::{Collection, Fields, document, merge};
use fieldsync_server::storage::{Access, Database, Role, Storage};
use fieldsync_server::{ServerError, admin};
use serde_json::json;
use tokio::sync::Barrier;

use crate::clinic_data::Rng;
use crate::fields;

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
    /// The server instances' process ids, where they run on this machine: their CPU time over
    /// the measured phase and their peak memory are reported. May be empty.
    pub server_pids: Vec<u32>,
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
    async fn scrape(http: &reqwest::Client, urls: &[String]) -> Option<DiskReport> {
        let mut total: Option<DiskReport> = None;
        for url in urls {
            let response = http.get(format!("{url}/metrics")).send().await.ok()?;
            let text = response.text().await.ok()?;
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
    /// CPU time (user and system) this process, all simulated devices together, used in the
    /// measured phase, where the system tells.
    pub devices_cpu: Option<Duration>,
    /// CPU time the server processes ([`LoadConfig::server_pids`]) used in the measured
    /// phase, where given and the system tells.
    pub server_cpu: Option<Duration>,
    /// The server processes' peak resident memory (KiB), summed, where given and the system
    /// tells.
    pub server_peak_kib: Option<u64>,
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
        let mib = |kib: u64| kib as f64 / 1024.0;
        let cores =
            |cpu: Duration| cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(f64::EPSILON);
        if let Some(kib) = self.devices_peak_kib {
            writeln!(
                f,
                "simulated devices' process: peak memory {:.0} MiB",
                mib(kib)
            )?;
        }
        for (name, cpu) in [
            ("simulated devices' process", self.devices_cpu),
            ("servers", self.server_cpu),
        ] {
            if let Some(cpu) = cpu {
                writeln!(
                    f,
                    "{name}: CPU {:.1} s in the measured phase ({:.2} cores)",
                    cpu.as_secs_f64(),
                    cores(cpu)
                )?;
            }
        }
        if let Some(kib) = self.server_peak_kib {
            writeln!(f, "servers: peak memory {:.0} MiB", mib(kib))?;
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

/// Runs the load test; errors only for setup failures (the database, the runtime).
pub fn run(config: &LoadConfig) -> Result<LoadReport, ServerError> {
    assert!(!config.urls.is_empty(), "at least one server URL");
    let storage = Database::parse(&config.db).open(4)?;
    // Names unique to this run, so runs against one database do not meet.
    let run_millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let run_id = format!("{run_millis:x}");
    // The load is the clinic's records; a database without a schema gets the clinic schema.
    if storage.schema_version()? == 0 {
        fieldsync_server::schema::set_schema(&*storage, crate::CLINIC_SCHEMA)?;
    }
    let clients = crate::clinic_schema()
        .collection("clients")
        .expect("the clinic schema has clients")
        .clone();
    let per_scope = config.devices_per_scope.max(1);
    let groups = config.devices.div_ceil(per_scope);
    let mut devices = Vec::with_capacity(config.devices);
    for group in 0..groups {
        let user = format!("load-{run_id}-{group}");
        let scope: Arc<str> = format!("load-{run_id}-{group}").into();
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
            devices.push(Device::new(
                index,
                // Seeded by the run too: record ids must not repeat across runs.
                Rng::new(run_millis ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                enrolled.token,
                index % config.urls.len(),
                scope.clone(),
                index % per_scope == 0,
            ));
        }
    }
    // Two threads: the devices' own work is small, and the server needs the rest of the
    // machine. Not one: a device's latency would then include waiting for the others' work.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| ServerError::Internal(format!("cannot start a runtime: {err}")))?;
    let shared = Arc::new(Shared {
        http: http_client(),
        urls: config.urls.clone(),
        clients,
    });
    let (devices, mut report) = runtime.block_on(drive(config, devices, shared));
    drop(runtime);
    report.devices_peak_kib = crate::peak_rss_kib();
    if !config.server_pids.is_empty() {
        report.server_peak_kib = config
            .server_pids
            .iter()
            .map(|pid| crate::memory_kib(&pid.to_string(), "VmHWM"))
            .sum();
    }
    verify(&*storage, &devices, &mut report)?;
    Ok(report)
}

/// What every device uses.
struct Shared {
    http: reqwest::Client,
    urls: Vec<String>,
    /// The clinic schema's `clients`, which the devices write.
    clients: Collection,
}

/// CPU time of this process and of the servers so far.
fn cpu_now(server_pids: &[u32]) -> (Option<f64>, Option<f64>) {
    let servers = if server_pids.is_empty() {
        None
    } else {
        server_pids.iter().map(|pid| crate::cpu_seconds(*pid)).sum()
    };
    (crate::cpu_seconds(std::process::id()), servers)
}

/// Runs the devices: setup, the measured phase, the final catch-up.
async fn drive(
    config: &LoadConfig,
    mut devices: Vec<Device>,
    shared: Arc<Shared>,
) -> (Vec<Device>, LoadReport) {
    for device in devices.iter_mut().filter(|d| d.creates_shared) {
        device.create_shared(&shared).await;
    }
    let start_line = Arc::new(Barrier::new(devices.len() + 1));
    let pushed_all = Arc::new(Barrier::new(devices.len()));
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|mut device| {
            let shared = shared.clone();
            let (start_line, pushed_all) = (start_line.clone(), pushed_all.clone());
            let (duration, interval) = (config.duration, config.interval);
            tokio::spawn(async move {
                device.prepare(&shared, &start_line).await;
                device.run(&shared, duration, interval).await;
                device.finish(&shared, &pushed_all).await;
                device
            })
        })
        .collect();
    // Every device has its scope's shared record and has pushed once; the clock starts.
    start_line.wait().await;
    let started = Instant::now();
    let cpu_before = cpu_now(&config.server_pids);
    let disk_before = DiskReport::scrape(&shared.http, &config.urls).await;
    tokio::time::sleep(config.duration).await;
    let cpu_after = cpu_now(&config.server_pids);
    let mut devices = Vec::with_capacity(tasks.len());
    for task in tasks {
        devices.push(task.await.expect("a device task panicked"));
    }
    let elapsed = started.elapsed().min(config.duration);
    let disk = DiskReport::scrape(&shared.http, &config.urls)
        .await
        .zip(disk_before)
        .map(|(after, before)| after.since(before));
    let used = |after: Option<f64>, before: Option<f64>| {
        Some(Duration::from_secs_f64((after? - before?).max(0.0)))
    };
    let mut report = LoadReport {
        devices: devices.len(),
        elapsed,
        disk,
        devices_cpu: used(cpu_after.0, cpu_before.0),
        server_cpu: used(cpu_after.1, cpu_before.1),
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
    (devices, report)
}

/// Compares every device with the server, and the server with what the devices wrote.
fn verify(
    storage: &dyn Storage,
    devices: &[Device],
    report: &mut LoadReport,
) -> Result<(), ServerError> {
    let mut server: HashMap<&str, ServerScope> = HashMap::new();
    for device in devices {
        if !server.contains_key(&*device.scope) {
            let scope = ServerScope::read(storage, &device.scope)?;
            report.server_records += scope.records.len();
            server.insert(&device.scope, scope);
        }
    }
    for device in devices {
        let on_server = &server[&*device.scope];
        if device.records() != on_server.held {
            report.devices_differing += 1;
        }
        for own in &device.own {
            let kept = on_server
                .records
                .get(&own.id)
                .is_some_and(|fields| fields.get("phone") == Some(&json!(own.phone.to_string())));
            report.lost_changes += u64::from(!kept);
        }
        let notes = device
            .shared
            .as_ref()
            .and_then(|shared| on_server.records.get(&shared.id))
            .and_then(|fields| fields.get("notes"))
            .and_then(|notes| notes.as_str())
            .unwrap_or_default();
        for line in 0..device.lines {
            report.lost_changes += u64::from(!notes.contains(&device.line(line)));
        }
    }
    Ok(())
}

/// The server's records of a scope.
struct ServerScope {
    /// Their values.
    records: HashMap<String, Fields>,
    /// What a device holding exactly these records holds (see [`Device::records`]).
    held: HashMap<String, u64>,
}

impl ServerScope {
    fn read(storage: &dyn Storage, scope: &str) -> Result<ServerScope, ServerError> {
        let scopes = [scope.to_owned()];
        let mut records = HashMap::new();
        let mut held = HashMap::new();
        let mut after = 0;
        loop {
            let page = storage.documents_page(&scopes, after, i64::MAX, 1000)?;
            for entry in page.entries {
                let fields: Fields = serde_json::from_str(&entry.fields_json)
                    .map_err(|_| ServerError::Corrupt("stored values do not decode".into()))?;
                let fields = without_nulls(fields);
                let kept = if fields.get("name") == Some(&json!(SHARED_NAME)) {
                    let mut doc = AutoCommit::load(&entry.doc).map_err(|_| {
                        ServerError::Corrupt("a stored document does not load".into())
                    })?;
                    digest_heads(doc.get_heads())
                } else {
                    digest(&fields)
                };
                held.insert(entry.record_id.clone(), kept);
                records.insert(entry.record_id, fields);
            }
            after = page.last_seq;
            if !page.more {
                return Ok(ServerScope { records, held });
            }
        }
    }
}

/// A digest of a record's values, what a device keeps of the records other devices write:
/// equal values, equal digests, and two different values of a record differ in theirs but for
/// a chance in 2^64.
fn digest(fields: &Fields) -> u64 {
    let mut entries: Vec<(&String, String)> = fields
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(name, value)| (name, value.to_string()))
        .collect();
    entries.sort_unstable();
    let mut hasher = std::hash::DefaultHasher::new();
    entries.hash(&mut hasher);
    hasher.finish()
}

/// A digest of a document's heads: equal heads, the same changes, the same document.
fn digest_heads(mut heads: Vec<ChangeHash>) -> u64 {
    heads.sort_unstable();
    let mut hasher = std::hash::DefaultHasher::new();
    heads.hash(&mut hasher);
    hasher.finish()
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

fn http_client() -> reqwest::Client {
    // fieldsync-core builds reqwest without a default TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        // Under the server's idle timeout (10 s by default), so that no request goes out on a
        // connection the server is closing.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client builds")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
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

/// One of a device's own clients: its values, and what the next change to it builds on. Only
/// this device writes it, so the device needs no document: its changes are encoded directly,
/// as [`document::first_change_of_scalars`] encodes a new record's.
struct OwnRecord {
    id: String,
    /// Its number among the device's clients, which names it.
    number: usize,
    /// The phone number last given.
    phone: u64,
    /// The hash of the last change, the next one's dependency.
    head: ChangeHash,
    /// The last change's sequence number (changes to one record count from 1 per actor).
    seq: u64,
    /// The last operation counter used.
    max_op: u64,
    /// The counter of the operation that set the phone number, which the next one overwrites.
    phone_op: u64,
}

impl OwnRecord {
    /// A new client's first change and the record.
    fn create(
        actor: &ActorId,
        clients: &Collection,
        values: &Fields,
        id: String,
        number: usize,
        time_ms: i64,
    ) -> (OwnRecord, Vec<u8>) {
        let bytes = document::first_change_of_scalars(actor, clients, values, time_ms)
            .expect("a client of scalars has a first change");
        let change = Change::try_from(bytes.as_slice()).expect("the change decodes");
        let expanded = change.decode();
        let position = expanded
            .operations
            .iter()
            .position(|op| matches!(&op.key, legacy::Key::Map(key) if key == "phone"))
            .expect("the first change sets the phone number");
        let record = OwnRecord {
            id,
            number,
            phone: 0,
            head: change.hash(),
            seq: change.seq(),
            max_op: change.max_op(),
            phone_op: change.start_op().get() + position as u64,
        };
        (record, bytes)
    }

    /// Gives the phone number `phone`: the change a record document makes for
    /// `put(ROOT, "phone", phone)` and a commit.
    fn set_phone(&mut self, actor: &ActorId, phone: u64, time_ms: i64) -> Vec<u8> {
        let op = legacy::Op {
            action: legacy::OpType::Put(ScalarValue::Str(phone.to_string().into())),
            obj: legacy::ObjectId::Root,
            key: legacy::Key::Map("phone".into()),
            pred: vec![legacy::OpId(self.phone_op, actor.clone())].into(),
            insert: false,
        };
        let change = Change::from(ExpandedChange {
            operations: vec![op],
            actor_id: actor.clone(),
            hash: None,
            seq: self.seq + 1,
            start_op: NonZeroU64::new(self.max_op + 1).expect("counters start at 1"),
            time: time_ms,
            message: None,
            deps: vec![self.head],
            extra_bytes: Vec::new(),
            author: None,
        });
        self.phone = phone;
        self.head = change.hash();
        self.seq += 1;
        self.max_op += 1;
        self.phone_op = self.max_op;
        change.raw_bytes().to_vec()
    }
}

/// The name of the group's shared record.
const SHARED_NAME: &str = "shared";

/// A device's copy of its group's shared record: not a document (one costs tens of KiB, and
/// more with every line), but what the device's own edits build on and what shows it holds
/// every change the server has. Its edits insert at the start of the notes, which needs no
/// knowledge of the text: the first character goes after the text's head, each next one after
/// the one before. Merging them with the others' concurrent edits is the server's work.
struct SharedRecord {
    id: String,
    /// The notes' text object.
    text: legacy::OpId,
    /// The changes the device holds that no other it holds depends on.
    heads: Vec<ChangeHash>,
    /// Every change the device holds (a change can come twice, with a document).
    known: std::collections::HashSet<ChangeHash>,
    /// The largest operation counter of those changes.
    max_op: u64,
    /// The device's own last change's sequence number.
    seq: u64,
}

impl SharedRecord {
    /// The record as a whole document holds it.
    fn of(id: String, doc: &mut AutoCommit, actor: &ActorId) -> Result<SharedRecord, String> {
        let text = match doc.get(ROOT, "notes") {
            Ok(Some((Value::Object(ObjType::Text), id))) => match id {
                ObjId::Id(counter, actor, _) => legacy::OpId(counter, actor),
                ObjId::Root => return Err("the notes are the root".into()),
            },
            _ => return Err("the shared record has no notes text".into()),
        };
        let mut record = SharedRecord {
            id,
            text,
            heads: Vec::new(),
            known: Default::default(),
            max_op: 0,
            seq: 0,
        };
        for change in &doc.get_changes(&[]) {
            record.take(change, actor);
        }
        Ok(record)
    }

    /// Takes a change in causal order (its dependencies first), as a document applies it.
    fn take(&mut self, change: &Change, actor: &ActorId) {
        if !self.known.insert(change.hash()) {
            return;
        }
        self.heads.retain(|head| !change.deps().contains(head));
        self.heads.push(change.hash());
        self.max_op = self.max_op.max(change.max_op());
        if change.actor_id() == actor {
            self.seq = self.seq.max(change.seq());
        }
    }

    /// Inserts `line` at the start of the notes: the change a document holding the same
    /// changes makes for `splice_text(notes, 0, 0, line)` and a commit.
    fn insert_at_start(&mut self, actor: &ActorId, line: &str, time_ms: i64) -> Vec<u8> {
        let start_op = self.max_op + 1;
        let operations = line
            .chars()
            .zip(start_op..)
            .map(|(ch, counter)| legacy::Op {
                action: legacy::OpType::Put(ScalarValue::Str(ch.to_string().into())),
                obj: legacy::ObjectId::Id(self.text.clone()),
                key: if counter == start_op {
                    legacy::Key::Seq(legacy::ElementId::Head)
                } else {
                    legacy::Key::Seq(legacy::ElementId::Id(legacy::OpId(
                        counter - 1,
                        actor.clone(),
                    )))
                },
                pred: Vec::new().into(),
                insert: true,
            })
            .collect();
        let mut deps = self.heads.clone();
        deps.sort_unstable();
        let change = Change::from(ExpandedChange {
            operations,
            actor_id: actor.clone(),
            hash: None,
            seq: self.seq + 1,
            start_op: NonZeroU64::new(start_op).expect("counters start at 1"),
            time: time_ms,
            message: None,
            deps,
            extra_bytes: Vec::new(),
            author: None,
        });
        self.take(&change, actor);
        change.raw_bytes().to_vec()
    }
}

/// One simulated device.
struct Device {
    index: usize,
    /// Its Automerge actor, which the server binds it to at its first push.
    actor: ActorId,
    token: String,
    /// Which of the servers it syncs with.
    server: usize,
    scope: Arc<str>,
    /// The first device of a group creates the group's shared record.
    creates_shared: bool,
    /// The shared record, from the first sync on.
    shared: Option<SharedRecord>,
    /// The other devices' records, each with the [`digest`] of the values the server last
    /// sent with it (`None` until a pull brings them: the feed sends them with a record's
    /// latest changes).
    others: HashMap<String, Option<u64>>,
    cursor: Option<String>,
    rng: Rng,
    own: Vec<OwnRecord>,
    /// How many lines it added to the shared record's notes.
    lines: usize,
    /// Changes written and not yet pushed, one record each, as a store's outbox holds them.
    outbox: Vec<PushRecord>,
    /// The position of the first of them among every change the device wrote.
    outbox_start: u64,
    stats: Stats,
}

impl Device {
    fn new(
        index: usize,
        rng: Rng,
        token: String,
        server: usize,
        scope: Arc<str>,
        creates_shared: bool,
    ) -> Device {
        Device {
            index,
            actor: ActorId::random(),
            token,
            server,
            scope,
            creates_shared,
            shared: None,
            others: HashMap::new(),
            cursor: None,
            rng,
            own: Vec::new(),
            lines: 0,
            outbox: Vec::new(),
            outbox_start: 0,
            stats: Stats::default(),
        }
    }

    /// The `n`th line the device adds to the shared record.
    fn line(&self, n: usize) -> String {
        format!("[{}.{n}]", self.index)
    }

    /// A new record id, as a store makes them (128 random bits, hex).
    fn new_id(&mut self) -> String {
        format!("{:016x}{:016x}", self.rng.next_u64(), self.rng.next_u64())
    }

    fn write(&mut self, id: String, change: Vec<u8>) {
        self.outbox.push(PushRecord {
            collection: "clients".to_owned(),
            id,
            scope: self.scope.to_string(),
            payload: Payload::Changes(vec![change.into()]),
            epoch: 0,
        });
    }

    /// The records the device holds, with the [`digest`] of their values: its own, the
    /// others' as the server sent them (a record whose values never came has those of no
    /// record, an empty one's), and the shared one's with the [`digest_heads`] of its heads.
    fn records(&self) -> HashMap<String, u64> {
        let none = digest(&Fields::new());
        let mut records: HashMap<String, u64> = self
            .others
            .iter()
            .map(|(id, digest)| (id.clone(), digest.unwrap_or(none)))
            .collect();
        for own in &self.own {
            let values = self.own_values(own.number, own.phone);
            records.insert(own.id.clone(), digest(&values));
        }
        if let Some(shared) = &self.shared {
            records.insert(shared.id.clone(), digest_heads(shared.heads.clone()));
        }
        records
    }

    fn own_values(&self, number: usize, phone: u64) -> Fields {
        fields(json!({
            "caseload_id": &*self.scope,
            "name": format!("device {} client {number}", self.index),
            "phone": phone.to_string(),
        }))
    }

    /// Writes the group's shared record and pushes it, before the devices start.
    async fn create_shared(&mut self, shared: &Shared) {
        let values = fields(json!({"caseload_id": &*self.scope, "name": SHARED_NAME, "notes": ""}));
        let mut doc = document::new_doc(&self.actor);
        document::init_fields(&mut doc, &shared.clients, &values)
            .expect("the shared record's values fit the schema");
        document::commit(&mut doc, now_ms());
        let change = doc
            .get_last_local_change()
            .expect("the record has its first change")
            .raw_bytes()
            .to_vec();
        let id = self.new_id();
        let record =
            SharedRecord::of(id.clone(), &mut doc, &self.actor).expect("the shared record reads");
        self.shared = Some(record);
        self.write(id, change);
        assert!(self.push(shared).await, "the shared record was pushed");
    }

    /// Before the clock starts: a first sync, which brings the group's shared record, and a
    /// first push. A device's first push that stores something binds its actor to it, once in
    /// its life, under a lock every other binding waits for (on PostgreSQL, one for the whole
    /// database): a thousand devices binding in the first seconds of the measured phase would
    /// measure a fleet's first sync, not its syncing day after day.
    async fn prepare(&mut self, shared: &Shared, start_line: &Barrier) {
        if self.pull(shared).await && self.shared.is_none() {
            self.stats
                .error("the first sync did not bring the shared record".into());
        }
        self.write_offline(&shared.clients);
        self.push(shared).await;
        start_line.wait().await;
        self.stats.measuring = true;
    }

    async fn run(&mut self, shared: &Shared, duration: Duration, interval: Duration) {
        let deadline = Instant::now() + duration;
        // Devices sync at random moments, not in step: the first sync comes anywhere within
        // the first interval.
        tokio::time::sleep(interval.mul_f64(self.rng.below(1000) as f64 / 1000.0)).await;
        while Instant::now() < deadline {
            self.write_offline(&shared.clients);
            self.push(shared).await;
            self.pull(shared).await;
            let pause = interval.mul_f64(0.5 + self.rng.below(1000) as f64 / 1000.0);
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// After the clock: push what is left, wait for every device to do so, pull the rest.
    async fn finish(&mut self, shared: &Shared, pushed_all: &Barrier) {
        self.stats.measuring = false;
        for _ in 0..5 {
            if self.push(shared).await {
                break;
            }
        }
        pushed_all.wait().await;
        for _ in 0..5 {
            if self.pull(shared).await {
                break;
            }
        }
    }

    /// A cycle's writes, offline: a new client, a new phone number for one of the device's
    /// clients, and one time in four a line at the start of the shared record's notes.
    fn write_offline(&mut self, clients: &Collection) {
        let number = self.own.len();
        let id = self.new_id();
        let values = self.own_values(number, 0);
        let (record, change) =
            OwnRecord::create(&self.actor, clients, &values, id, number, now_ms());
        self.write(record.id.clone(), change);
        self.own.push(record);
        let pick = self.rng.below(self.own.len());
        let record = &mut self.own[pick];
        let change = record.set_phone(&self.actor, record.phone + 1, now_ms());
        let id = record.id.clone();
        self.write(id, change);
        let line = self.line(self.lines);
        if self.rng.below(4) == 0
            && let Some(record) = self.shared.as_mut()
        {
            let change = record.insert_at_start(&self.actor, &line, now_ms());
            let id = record.id.clone();
            self.lines += 1;
            self.write(id, change);
        }
    }

    /// Pushes the outbox in one request; false if it failed (it is sent again next time).
    async fn push(&mut self, shared: &Shared) -> bool {
        if self.outbox.is_empty() {
            return true;
        }
        let first = self.outbox_start;
        let last = first + self.outbox.len() as u64 - 1;
        let request = PushRequest {
            outbox_seq: None,
            batch_id: format!("{first}-{last}"),
            records: std::mem::take(&mut self.outbox),
        };
        let body = protocol::encode(&request);
        let started = Instant::now();
        let answer: Result<PushResponse, String> = send(
            shared
                .http
                .post(format!("{}/v1/push", shared.urls[self.server]))
                .body(body),
            &self.token,
        )
        .await;
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
                self.outbox_start = last + 1;
                true
            }
            Err(err) => {
                self.stats.error(format!("push: {err}"));
                self.outbox = request.records;
                false
            }
        }
    }

    /// Pulls pages until caught up; false if a request failed.
    async fn pull(&mut self, shared: &Shared) -> bool {
        loop {
            let mut url = format!("{}/v1/pull?limit=500", shared.urls[self.server]);
            if let Some(cursor) = &self.cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let started = Instant::now();
            let answer: Result<PullResponse, String> =
                send(shared.http.get(url), &self.token).await;
            let page = match answer {
                Ok(page) => page,
                Err(err) => {
                    self.stats.error(format!("pull: {err}"));
                    return false;
                }
            };
            self.stats.pulled(started.elapsed(), page.records.len());
            for record in page.records {
                if let Err(err) = self.take(record) {
                    self.stats
                        .error(format!("the device refused a record: {err}"));
                }
            }
            self.cursor = Some(page.next_cursor);
            if !page.more {
                return true;
            }
        }
    }

    /// Takes a pulled record: the shared record's changes, the others' values.
    fn take(&mut self, record: PulledRecord) -> Result<(), String> {
        let is_shared = match &self.shared {
            Some(shared) => record.id == shared.id,
            None => record.fields.as_ref().and_then(|f| f.get("name")) == Some(&json!(SHARED_NAME)),
        };
        if !is_shared {
            match record.fields {
                Some(fields) => {
                    self.others.insert(record.id, Some(digest(&fields)));
                }
                None => {
                    self.others.entry(record.id).or_insert(None);
                }
            }
            return Ok(());
        }
        match record.payload {
            Payload::Document(bytes) => {
                let mut doc = document::load_doc(&bytes, &self.actor)
                    .map_err(|err| format!("the shared record does not load: {err}"))?;
                match self.shared.as_mut() {
                    Some(shared) => {
                        for change in &doc.get_changes(&[]) {
                            shared.take(change, &self.actor);
                        }
                    }
                    None => self.shared = Some(SharedRecord::of(record.id, &mut doc, &self.actor)?),
                }
            }
            Payload::Changes(raw) => {
                let shared = self
                    .shared
                    .as_mut()
                    .ok_or("changes to a shared record the device does not hold")?;
                for bytes in raw {
                    let change = merge::decode_change(bytes.into_vec())
                        .ok_or("a change of the shared record does not decode")?;
                    shared.take(&change, &self.actor);
                }
            }
        }
        Ok(())
    }
}

async fn send<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    token: &str,
) -> Result<T, String> {
    let response = request
        .bearer_auth(token)
        .header(protocol::VERSION_HEADER, protocol::VERSION.to_string())
        .send()
        .await
        .map_err(|err| format!("no answer: {err}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
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

#[cfg(test)]
mod tests {
    use automerge::ROOT;
    use automerge::transaction::Transactable;

    use super::*;

    /// The changes a device encodes directly are the bytes a record document makes.
    #[test]
    fn own_records_changes_are_the_changes_a_document_makes() {
        let clients = crate::clinic_schema()
            .collection("clients")
            .unwrap()
            .clone();
        let actor = ActorId::random();
        let values = fields(json!({"caseload_id": "north", "name": "Ada", "phone": "0"}));
        let (mut record, first) =
            OwnRecord::create(&actor, &clients, &values, "c1".into(), 0, 1_000);
        let mut doc = document::new_doc(&actor);
        document::init_fields(&mut doc, &clients, &values).unwrap();
        document::commit(&mut doc, 1_000);
        assert_eq!(doc.get_last_local_change().unwrap().raw_bytes(), first);
        for (phone, time) in [(1, 2_000), (2, 3_000), (3, 4_000)] {
            let change = record.set_phone(&actor, phone, time);
            doc.put(ROOT, "phone", phone.to_string()).unwrap();
            document::commit(&mut doc, time);
            assert_eq!(doc.get_last_local_change().unwrap().raw_bytes(), change);
        }
        assert_eq!(record.phone, 3);
        let (read, _) = document::document_values(&doc).unwrap();
        assert_eq!(read["phone"], json!("3"));
    }

    /// A device's lines at the start of the shared record's notes are the changes a document
    /// holding the same changes makes, before and after it hears of another device's edit.
    #[test]
    fn shared_record_edits_are_the_changes_a_document_makes() {
        let clients = crate::clinic_schema()
            .collection("clients")
            .unwrap()
            .clone();
        let values = fields(json!({"caseload_id": "north", "name": SHARED_NAME, "notes": ""}));
        let mut created = document::new_doc(&ActorId::random());
        document::init_fields(&mut created, &clients, &values).unwrap();
        document::commit(&mut created, 1_000);
        let saved = created.save();
        let (a, b) = (ActorId::random(), ActorId::random());
        let mut record = SharedRecord::of(
            "s1".into(),
            &mut document::load_doc(&saved, &a).unwrap(),
            &a,
        )
        .unwrap();
        let mut doc_a = document::load_doc(&saved, &a).unwrap();
        let mut doc_b = document::load_doc(&saved, &b).unwrap();
        let splice = |doc: &mut AutoCommit, line: &str, time: i64| {
            document::splice_text(doc, "clients", "notes", 0, 0, line).unwrap();
            document::commit(doc, time);
            doc.get_last_local_change().unwrap().clone()
        };
        let theirs = splice(&mut doc_b, "[b.0]", 2_000);
        // Concurrent with theirs, then after it.
        for (line, time) in [("[a.0]", 3_000), ("[a.1]", 4_000)] {
            let change = record.insert_at_start(&a, line, time);
            assert_eq!(splice(&mut doc_a, line, time).raw_bytes(), change, "{line}");
            if line == "[a.0]" {
                record.take(&theirs, &a);
                doc_a.apply_changes([theirs.clone()]).unwrap();
            }
        }
        assert_eq!(
            digest_heads(record.heads.clone()),
            digest_heads(doc_a.get_heads())
        );
        let (merged, _) = document::document_values(&doc_a).unwrap();
        let notes = merged["notes"].as_str().unwrap();
        assert!(
            ["[a.0]", "[a.1]", "[b.0]"]
                .iter()
                .all(|line| notes.contains(line)),
            "{notes}"
        );
    }
}
