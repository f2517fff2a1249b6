//! A seeded simulation of devices syncing through the real server logic over an unreliable
//! network: the sync engine apps run (`SyncClient`), the server's router in-process, and a
//! [`Transport`] between them that drops requests and answers, duplicates requests, replays
//! old pushes late, and cuts devices off. Every choice comes from one seed, so a failing
//! scenario is replayed from its seed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use fieldsync_core::{
    BoxFuture, Credentials, Error, Fields, Filter, Query, Result, Store, StoreOptions, SyncClient,
    SyncConfig, Synchronous, Transport, TransportRequest, TransportResponse,
};
use fieldsync_record::erasure::Erasure;
use fieldsync_record::protocol;
use fieldsync_server::erasure::{EraseRequest, erase};
use fieldsync_server::storage::sqlite::SqliteStorage;
use fieldsync_server::storage::{Access, Role};
use fieldsync_server::{AppState, Limits, ServerError, admin, router};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::clinic_schema;

/// How often each fault happens, per request.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// The request never reaches the server.
    pub drop_request: f64,
    /// The server handles the request but the answer is lost.
    pub drop_response: f64,
    /// The request reaches the server twice.
    pub duplicate: f64,
    /// An earlier push of any device reaches the server again, late.
    pub replay_old_push: f64,
}

impl Faults {
    /// A network that loses or repeats about one message in ten.
    pub const UNRELIABLE: Faults = Faults {
        drop_request: 0.1,
        drop_response: 0.1,
        duplicate: 0.1,
        replay_old_push: 0.05,
    };

    /// A network that delivers everything once.
    pub const NONE: Faults = Faults {
        drop_request: 0.0,
        drop_response: 0.0,
        duplicate: 0.0,
        replay_old_push: 0.0,
    };
}

/// The server and the network between it and the devices.
#[derive(Debug)]
pub struct Network {
    server_db: PathBuf,
    state: Mutex<NetworkState>,
}

#[derive(Debug)]
struct NetworkState {
    app: Router,
    rng: StdRng,
    faults: Faults,
    /// Devices cut off from the server.
    partitioned: Vec<bool>,
    /// Every push sent so far, with its token, for late replays.
    pushes: Vec<(String, TransportRequest)>,
}

impl Network {
    /// A fresh server database in `dir`, for `devices` devices.
    pub fn new(dir: &Path, devices: usize, seed: u64) -> Arc<Network> {
        let server_db = dir.join("server.db");
        let app = server_app(&server_db);
        Arc::new(Network {
            server_db,
            state: Mutex::new(NetworkState {
                app,
                rng: StdRng::seed_from_u64(seed.wrapping_add(1)),
                faults: Faults::NONE,
                partitioned: vec![false; devices],
                pushes: Vec::new(),
            }),
        })
    }

    /// Creates a user with write access to `scope` and enrolls a device; returns its token.
    pub fn enroll(&self, user: &str, scope: &str) -> String {
        let storage = SqliteStorage::open(&self.server_db).expect("the server database opens");
        if admin::create_user(&storage, admin::By::CommandLine, user, Role::Member).is_ok() {
            admin::grant(&storage, admin::By::CommandLine, user, scope, Access::Write)
                .expect("grant");
        }
        admin::enroll_device(&storage, admin::By::CommandLine, user, "device", None)
            .expect("enroll")
            .token
    }

    /// Gives `user` `access` to `scope`, or takes it away (`None`).
    pub fn set_access(&self, user: &str, scope: &str, access: Option<Access>) {
        let storage = SqliteStorage::open(&self.server_db).expect("the server database opens");
        match access {
            Some(access) => {
                admin::grant(&storage, admin::By::CommandLine, user, scope, access).expect("grant")
            }
            // Revoking a grant the user no longer has is no change.
            None => drop(admin::revoke_grant(
                &storage,
                admin::By::CommandLine,
                user,
                scope,
            )),
        }
    }

    /// Sets the fault rates.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Cuts `device` off from the server, or reconnects it.
    pub fn set_partitioned(&self, device: usize, partitioned: bool) {
        self.lock().partitioned[device] = partitioned;
    }

    /// Reconnects every device.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.partitioned.iter_mut().for_each(|p| *p = false);
        state.faults = Faults::NONE;
    }

    /// Erases content from client `id` on the server, as an administrator would: the notes, the
    /// phone, every past value, or the whole record, by `which` (0 to 3). False if the server
    /// does not have the record.
    pub fn erase(&self, id: &str, which: usize) -> bool {
        let storage = SqliteStorage::open(&self.server_db).expect("the server database opens");
        let schema = clinic_schema();
        let erasure = match which {
            0 => Erasure::Fields(["notes".to_owned()].into()),
            1 => Erasure::Fields(["phone".to_owned()].into()),
            2 => Erasure::History,
            _ => Erasure::Record,
        };
        let request = EraseRequest {
            collection: "clients",
            id,
            erasure,
            by: 0,
            reason: "simulated",
            scrub: true,
        };
        match erase(&storage, &schema, &request) {
            Ok(_) => true,
            Err(ServerError::NotFound(_)) => false,
            Err(err) => panic!("the erasure of {id} failed: {err}"),
        }
    }

    /// Restarts the server process: a new router over the same database.
    pub fn restart_server(&self) {
        self.lock().app = server_app(&self.server_db);
    }

    /// The transport device `device` syncs through.
    pub fn transport(self: &Arc<Self>, device: usize) -> Arc<dyn Transport> {
        Arc::new(SimTransport {
            network: self.clone(),
            device,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetworkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn server_app(db: &Path) -> Router {
    let storage = Arc::new(SqliteStorage::open(db).expect("the server database opens"));
    fieldsync_server::schema::set_schema(&*storage, crate::CLINIC_SCHEMA)
        .expect("the clinic schema is set");
    router(AppState::new(
        storage,
        Limits {
            // Devices here sync far faster than people do.
            requests_per_second: 0,
            ..Limits::default()
        },
    ))
}

#[derive(Debug)]
struct SimTransport {
    network: Arc<Network>,
    device: usize,
}

/// What the network decided to do with one request, decided up front so that the lock is not
/// held across the server's work.
struct Plan {
    app: Router,
    deliver: bool,
    duplicate: bool,
    replay: Option<(String, TransportRequest)>,
    drop_response: bool,
}

impl Transport for SimTransport {
    fn send<'a>(
        &'a self,
        credentials: &'a Credentials,
        request: TransportRequest,
    ) -> BoxFuture<'a, Result<TransportResponse>> {
        let token = credentials.token.as_str();
        Box::pin(async move {
            let plan = {
                let mut state = self.network.lock();
                if state.partitioned[self.device] {
                    return Err(Error::Network("cut off".into()));
                }
                let faults = state.faults;
                let deliver = !state.rng.random_bool(faults.drop_request);
                let duplicate = state.rng.random_bool(faults.duplicate);
                let replay =
                    if !state.pushes.is_empty() && state.rng.random_bool(faults.replay_old_push) {
                        let count = state.pushes.len();
                        let i = state.rng.random_range(0..count);
                        Some(state.pushes[i].clone())
                    } else {
                        None
                    };
                let drop_response = state.rng.random_bool(faults.drop_response);
                if let TransportRequest::Push { .. } = &request {
                    state.pushes.push((token.to_owned(), request.clone()));
                }
                Plan {
                    app: state.app.clone(),
                    deliver,
                    duplicate,
                    replay,
                    drop_response,
                }
            };
            if !plan.deliver {
                return Err(Error::Network("request lost".into()));
            }
            if let Some((old_token, old_push)) = plan.replay {
                deliver(&plan.app, &old_token, old_push).await;
            }
            let answer = deliver(&plan.app, token, request.clone()).await;
            if plan.duplicate {
                deliver(&plan.app, token, request).await;
            }
            if plan.drop_response {
                return Err(Error::Network("answer lost".into()));
            }
            Ok(answer)
        })
    }
}

async fn deliver(app: &Router, token: &str, request: TransportRequest) -> TransportResponse {
    let builder = Request::builder()
        .uri(request.path_and_query())
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(protocol::VERSION_HEADER, protocol::VERSION.to_string());
    let mut builder = builder.method(request.method());
    for (name, value) in request.headers() {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Body::from(request.into_body()))
        .expect("a valid request");
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status().as_u16();
    let retry_after_secs = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body reads")
        .to_vec();
    TransportResponse {
        status,
        retry_after_secs,
        chunk_sha256: None,
        body,
    }
}

/// One simulated device: its store file, the store while the app runs, its sync client.
pub struct Device {
    path: PathBuf,
    store: Option<Store>,
    client: SyncClient,
    /// Ids of the records this device inserted, to name the next one.
    inserted: usize,
    /// A copy of the store file, as a phone's backup keeps it.
    backup: Option<PathBuf>,
}

impl Device {
    fn open(path: &Path, client: SyncClient) -> Device {
        let mut device = Device {
            path: path.to_owned(),
            store: None,
            client,
            inserted: 0,
            backup: None,
        };
        device.restart();
        device
    }

    /// The running store.
    pub fn store(&self) -> &Store {
        self.store.as_ref().expect("the device is running")
    }

    /// Copies the store file aside, as a phone's backup does (the app closes it first).
    pub fn back_up(&mut self) {
        self.store = None;
        let backup = self.path.with_extension("backup");
        std::fs::copy(&self.path, &backup).expect("the store file copies");
        self.backup = Some(backup);
        self.restart();
    }

    /// Puts the last backup back as the store file, as restoring a phone does; false if
    /// there is none.
    pub fn restore(&mut self) -> bool {
        let Some(backup) = self.backup.clone() else {
            return false;
        };
        self.store = None;
        for leftover in ["db-wal", "db-shm"] {
            let _ = std::fs::remove_file(self.path.with_extension(leftover));
        }
        std::fs::copy(&backup, &self.path).expect("the backup copies back");
        self.restart();
        true
    }

    /// Closes the store and opens it again, as an app restart does.
    pub fn restart(&mut self) {
        self.store = None;
        let options = StoreOptions {
            // Power loss is not simulated; commits only need to survive the process.
            synchronous: Synchronous::Normal,
            ..StoreOptions::default()
        };
        self.store =
            Some(Store::open(&self.path, clinic_schema(), options).expect("the store opens"));
    }
}

/// What one scenario did, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Local writes made.
    pub writes: usize,
    /// Syncs attempted during the faulty phase.
    pub syncs: usize,
    /// Of those, syncs that failed on the network.
    pub failed_syncs: usize,
    /// Device and server restarts.
    pub restarts: usize,
    /// Changes of a user's grant.
    pub grant_changes: usize,
    /// Writes the server refused (or a revoked scope took away) that devices took back.
    pub refused_writes: usize,
    /// Devices restored from an older copy of their store file.
    pub restores: usize,
    /// Records an administrator erased content from.
    pub erasures: usize,
}

impl Tally {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Tally) {
        self.writes += other.writes;
        self.syncs += other.syncs;
        self.failed_syncs += other.failed_syncs;
        self.restarts += other.restarts;
        self.grant_changes += other.grant_changes;
        self.refused_writes += other.refused_writes;
        self.restores += other.restores;
        self.erasures += other.erasures;
    }
}

/// Runs the scenario of `seed`: 2 to 8 devices write and sync over a faulty network, then
/// the network heals and everyone syncs. Panics, naming what differs, unless every device
/// ends with the same records and the same document heads.
///
/// Two therapists share the caseload, each with several devices; the devices of a third user
/// may only read it and write anyway, and the second therapist's grant changes as the
/// scenario goes (read only, revoked, given back), so the server refuses writes and devices
/// take them back. Devices back their store file up and are restored from the copy. Now and
/// again an administrator erases a client's notes, phone, history or whole record on the server.
pub async fn run_scenario(seed: u64, steps: usize) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = scratch_dir();
    let device_count = rng.random_range(2..=8);
    let network = Network::new(dir.path(), device_count, seed);
    let mut devices: Vec<Device> = (0..device_count)
        .map(|i| {
            let token = network.enroll(["ada", "bo", "cy"][i % 3], "north");
            let config = SyncConfig::new("sim://server", token);
            let client = SyncClient::with_transport(config, network.transport(i));
            Device::open(&dir.path().join(format!("device-{i}.db")), client)
        })
        .collect();
    if device_count > 2 {
        network.set_access("cy", "north", Some(Access::Read));
    }
    // Every phone keeps a backup, taken now and again as the scenario goes.
    for device in &mut devices {
        device.back_up();
    }
    network.set_faults(Faults::UNRELIABLE);

    let mut tally = Tally::default();
    let mut created: Vec<String> = Vec::new();
    for _ in 0..steps {
        let d = rng.random_range(0..device_count);
        match rng.random_range(0..101) {
            0..52 => {
                if write(&mut rng, &mut devices[d], d, &mut created) {
                    tally.writes += 1;
                }
            }
            52..55 => {
                let access =
                    [Some(Access::Write), Some(Access::Read), None][rng.random_range(0..3)];
                network.set_access("bo", "north", access);
                tally.grant_changes += 1;
            }
            55..85 => {
                tally.syncs += 1;
                match devices[d].client.sync_now(devices[d].store()).await {
                    Ok(_) => {}
                    Err(Error::Network(_)) => tally.failed_syncs += 1,
                    Err(err) => panic!("seed {seed}: device {d} sync failed: {err}"),
                }
            }
            85..93 => {
                let cut = rng.random_bool(0.5);
                network.set_partitioned(d, cut);
            }
            93..96 => {
                devices[d].restart();
                tally.restarts += 1;
            }
            96 => devices[d].back_up(),
            97 => {
                if devices[d].restore() {
                    tally.restores += 1;
                }
            }
            100 => {
                if !created.is_empty() {
                    let id = &created[rng.random_range(0..created.len())];
                    if network.erase(id, rng.random_range(0..4)) {
                        tally.erasures += 1;
                    }
                }
            }
            _ => {
                network.restart_server();
                tally.restarts += 1;
            }
        }
    }

    network.heal();
    network.set_access("bo", "north", Some(Access::Write));
    // Two rounds: the first pushes everything, the second brings everything to everyone.
    for round in 0..2 {
        for (d, device) in devices.iter().enumerate() {
            if let Err(err) = device.client.sync_now(device.store()).await {
                panic!(
                    "seed {seed}: device {d} failed to sync after healing (round {round}): {err}"
                );
            }
        }
    }
    check_converged(seed, &devices, &created);
    tally.refused_writes = devices
        .iter()
        .map(|device| {
            device
                .store()
                .rejected_writes()
                .expect("rejected writes")
                .len()
        })
        .sum();
    tally
}

/// A temp dir in memory where there is one: durability is not what this tests, and fsyncs
/// would dominate its time.
fn scratch_dir() -> tempfile::TempDir {
    let memory = Path::new("/dev/shm");
    if memory.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("fieldsync-sim")
            .tempdir_in(memory)
    {
        return dir;
    }
    tempfile::tempdir().expect("a temp dir")
}

/// One random local write on device `d`; false if there was nothing to write to.
fn write(rng: &mut StdRng, device: &mut Device, d: usize, created: &mut Vec<String>) -> bool {
    let live: Vec<(String, Fields)> = device
        .store()
        .query("clients", &Query::default())
        .expect("query")
        .into_iter()
        .map(|r| (r.id, r.fields))
        .collect();
    if live.is_empty() || rng.random_bool(0.15) {
        let id = format!("d{d}-{}", device.inserted);
        device.inserted += 1;
        let fields = crate::fields(json!({
            "caseload_id": "north",
            "name": format!("Client {id}"),
            "notes": "Visit.",
        }));
        device
            .store()
            .insert_with_id("clients", Some(id.clone()), fields)
            .expect("insert");
        created.push(id);
        return true;
    }
    let (id, fields) = &live[rng.random_range(0..live.len())];
    let store = device.store();
    match rng.random_range(0..100) {
        0..35 => {
            let patch = match rng.random_range(0..4) {
                0 => json!({"name": format!("Name {}", rng.random_range(0..1000))}),
                1 => json!({"phone": format!("555-{:04}", rng.random_range(0..10_000))}),
                2 => json!({"birth_year": rng.random_range(1940..2020)}),
                _ => json!({"active": rng.random_bool(0.5), "phone": Value::Null}),
            };
            store
                .update("clients", id, crate::fields(patch))
                .expect("update");
        }
        35..95 => {
            let notes = fields.get("notes").and_then(Value::as_str).unwrap_or("");
            let units = notes.encode_utf16().count();
            let index = rng.random_range(0..=units);
            let delete = rng.random_range(0..=(units - index).min(3));
            let insert = ["a", "é", " call mum", "ü", ""][rng.random_range(0..5)];
            store
                .splice_text("clients", id, "notes", index, delete, insert)
                .expect("splice");
        }
        _ => store.delete("clients", id).expect("delete"),
    }
    true
}

fn check_converged(seed: u64, devices: &[Device], created: &[String]) {
    let snapshot = |device: &Device| {
        let store = device.store();
        assert_eq!(
            store.outbox_len().expect("outbox"),
            0,
            "seed {seed}: unsent changes"
        );
        let records: Vec<(String, Fields)> = store
            .query("clients", &Query::default())
            .expect("query")
            .into_iter()
            .map(|r| (r.id, r.fields))
            .collect();
        // A record whose creation was refused is on no device; any other is on every one.
        let heads: Vec<Option<Vec<automerge::ChangeHash>>> = created
            .iter()
            .map(|id| {
                let bytes = store.document("clients", id).ok()?;
                let mut doc = automerge::AutoCommit::load(&bytes).expect("the document loads");
                let mut heads = doc.get_heads();
                heads.sort();
                Some(heads)
            })
            .collect();
        (records, heads)
    };
    let (first_records, first_heads) = snapshot(&devices[0]);
    for (d, device) in devices.iter().enumerate().skip(1) {
        let (records, heads) = snapshot(device);
        assert_eq!(
            records, first_records,
            "seed {seed}: device {d} records differ from device 0"
        );
        assert_eq!(
            heads, first_heads,
            "seed {seed}: device {d} document heads differ"
        );
    }
    let live = devices[0]
        .store()
        .count("clients", &Filter::All)
        .expect("count");
    assert_eq!(live as usize, first_records.len());
}
