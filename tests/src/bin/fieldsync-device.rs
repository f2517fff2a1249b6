//! A device as a separate process, so tests can end it abruptly and reopen its store, and so
//! tests in other languages (the admin console's) can seed one with the project's clinic data.
//!
//! - `fieldsync-device write <db> <count>` inserts `count` clients with a note each, prints each
//!   id as its insert returns, then exits at once without closing the store.
//! - `fieldsync-device type <db> <id> <count>` types `count` characters (`a` to `z` over and
//!   over) at the end of client `id`'s note, one `splice_text` per keystroke, printing `typed
//!   <n>` as each returns, and keeps typing until killed.
//! - `fieldsync-device pull <db> <url> <token> <page-size>` syncs; after each merged page it
//!   prints `pulled <n>` and waits for a line on stdin before going on, so a test can kill it
//!   at a known point.
//! - `fieldsync-device first-sync <db> <url> <token> <page-size>` syncs a fresh store and
//!   prints `records <n> seconds <s> peak_rss_kib <k> cpu_seconds <c>` (its CPU time, opening
//!   the store included).
//! - `fieldsync-device churn <db> <url> <token> <seed>` writes and syncs until killed, its
//!   choices drawn from `seed`. After each line it prints it stops until a line comes on stdin,
//!   so that a test kills it at a line of its choosing and a seed replays the same run. A write
//!   prints `begin <op> <id> [<value>]` before its call, `committed` once it committed (the
//!   call has not returned), `ok` after the call returned. A sync prints `push` before a push
//!   is sent, `pushed` once the server answered it (the answer not stored yet), `stored` once
//!   an answer is stored, `page` once a pulled page is stored, and `synced <pushed> <rejected>
//!   <pulled>` when it returned; a sync that fails prints `sync-failed <error>` and the process
//!   exits with status 1.
//! - `fieldsync-device upload <db> <url> <token> <len>` inserts a client of caseload `north`,
//!   attaches `len` bytes to its `consent_form` (byte `i` is the second byte of the
//!   little-endian `u32` `i × 2654435761`), prints `attached <id> <sha256>`, then syncs. After
//!   each chunk of the attachment the server answered that it holds, it prints `chunk <n>` and
//!   waits for a line on stdin before going on, the engine not having read that answer yet, so
//!   that a test can kill it with no chunk in flight. When the sync returns it prints `synced
//!   <pushed> <rejected> <pulled> <attachments-sent> <attachments-fetched>`.
//! - `fieldsync-device sync <db> <url> <token>` syncs once and prints the same `synced` line.
//! - `fieldsync-device seed <db> <therapist> <therapists> <seed>` writes into a fresh store
//!   what the tablet of therapist `therapist` (from 0) holds in the clinic that
//!   [`fieldsync_tests::clinic_data`] makes from `seed` with `therapists` therapists (and 12
//!   clients and 20 sessions a therapist): the therapist records of their team (their own
//!   among them), the clients of their caseload, and those clients' sessions. It prints
//!   `therapist <id> <caseload> <team> <name>` (the scopes its records are in, and the name,
//!   which is the rest of the line: a user can be named after it and granted the scopes
//!   before the device is enrolled), then `record <collection> <id>` for each record written,
//!   then `seeded <records>`. It does not sync: `sync` does, or the app that opens the store
//!   next.

use std::io::{BufRead, Write as _};
use std::path::Path;
use std::sync::Arc;

use fieldsync_core::{
    AttachmentSource, BoxFuture, ChangeOrigin, Credentials, Fields, Filter, SyncClient, SyncConfig,
    SyncProgress, SyncReport, Transport, TransportRequest, TransportResponse, Write,
};
use fieldsync_tests::clinic_data::{self, ClinicSize, Rng};
use fieldsync_tests::{fields, open_device};
use serde_json::{Value, json};

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
        [_, "type", path, id, count] => type_note(
            Path::new(path),
            id,
            count.parse().expect("count is a number"),
        ),
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
        [_, "upload", path, url, token, len] => upload(
            Path::new(path),
            url,
            token,
            len.parse().expect("len is a number"),
        ),
        [_, "sync", path, url, token] => sync(Path::new(path), url, token),
        [_, "seed", path, therapist, therapists, seed] => seed_tablet(
            Path::new(path),
            therapist.parse().expect("therapist is a number"),
            therapists.parse().expect("therapists is a number"),
            seed.parse().expect("seed is a number"),
        ),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: fieldsync-device write <db> <count> | type <db> <id> <count> | pull|first-sync <db> <url> <token> <page-size> | churn <db> <url> <token> <seed> | upload <db> <url> <token> <len> | sync <db> <url> <token> | seed <db> <therapist> <therapists> <seed>"
    );
    std::process::exit(2);
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

fn type_note(path: &Path, id: &str, count: usize) {
    let store = open_device(path);
    let mut out = std::io::stdout().lock();
    let note = store
        .get("clients", id)
        .expect("reads")
        .expect("the client exists");
    let start = note
        .fields
        .get("notes")
        .and_then(Value::as_str)
        .map_or(0, |n| n.encode_utf16().count());
    for (typed, letter) in (b'a'..=b'z').cycle().take(count).enumerate() {
        store
            .splice_text(
                "clients",
                id,
                "notes",
                start + typed,
                0,
                &char::from(letter).to_string(),
            )
            .expect("splice");
        writeln!(out, "typed {}", typed + 1).expect("stdout is open");
        out.flush().expect("stdout is open");
    }
    loop {
        std::thread::park();
    }
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
    // Subscribers hear of a write after its commit, before its call returns.
    let _committed = store
        .subscribe("clients", Filter::All, |event| {
            if event.origin == ChangeOrigin::Local {
                stop_at("committed");
            }
        })
        .expect("the subscription starts");
    let mut config = SyncConfig::new(url, token);
    // Several pushes to a sync, so that a kill can fall between two of them.
    config.push_batch_size = 3;
    let transport = StoppingTransport {
        http: fieldsync_core::http_transport(&config).expect("the HTTP transport builds"),
    };
    let client = SyncClient::with_transport(config, Arc::new(transport));
    let runtime = tokio::runtime::Runtime::new().expect("a runtime starts");
    let on_progress = |progress: &SyncProgress| {
        stop_at(if progress.pulling { "page" } else { "stored" });
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for n in 0u64.. {
        // In id order: the same store and seed make the same choices.
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
                stop_at(&format!("begin insert {id}"));
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
                // Never the phone it had: a write that changes nothing commits nothing.
                let phone = format!("p{seed}-{n}");
                stop_at(&format!("begin update {id} {phone}"));
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
                stop_at(&format!("begin splice {id} {text}"));
                store
                    .splice_text("clients", id, "notes", units, 0, &text)
                    .expect("splice");
            }
            _ => {
                let id = &live[rng.random_range(0..live.len())];
                stop_at(&format!("begin delete {id}"));
                store.delete("clients", id).expect("delete");
            }
        }
        stop_at("ok");
        if rng.random_bool(0.2) {
            // Nothing interrupts a sync but a kill, which ends the process: a sync that returns
            // an error failed on its own.
            match runtime.block_on(client.sync_now_with_progress(&store, &on_progress)) {
                Ok(report) => stop_at(&format!(
                    "synced {} {} {}",
                    report.pushed, report.rejected, report.pulled
                )),
                Err(err) => {
                    println!("sync-failed {err}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// Prints `line` and waits for a line on stdin before going on; exits when stdin closes (the
/// test is gone). The test kills the process while it waits, never while it runs, so where it
/// dies is the line the test chose, not wherever it had got to by the time the signal came.
fn stop_at(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout is open");
    out.flush().expect("stdout is open");
    drop(out);
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).unwrap_or(0) == 0 {
        std::process::exit(0);
    }
}

/// The engine's own HTTP transport, stopping before a push is sent and after the server
/// answered it: a kill at the second stop leaves the server holding changes the device still
/// has queued, which the next sync sends again. Pulls do not stop: the engine asks for a page
/// while it stores the one before (or a push's answer), and how far that store had got at a
/// kill would be left to chance.
#[derive(Debug)]
struct StoppingTransport {
    http: Arc<dyn Transport>,
}

impl Transport for StoppingTransport {
    fn send<'a>(
        &'a self,
        credentials: &'a Credentials,
        request: TransportRequest,
    ) -> BoxFuture<'a, fieldsync_core::Result<TransportResponse>> {
        Box::pin(async move {
            let is_push = matches!(request, TransportRequest::Push { .. });
            if is_push {
                stop_at("push");
            }
            let response = self.http.send(credentials, request).await?;
            if is_push {
                stop_at("pushed");
            }
            Ok(response)
        })
    }
}

fn upload(path: &Path, url: &str, token: &str, len: usize) {
    let store = open_device(path);
    let id = store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Consent"})),
        )
        .expect("insert succeeds");
    let reference = store
        .attach(
            "clients",
            &id,
            "consent_form",
            AttachmentSource::Bytes(&attachment_bytes(len)),
            "image/jpeg",
            None,
        )
        .expect("the attachment is stored");
    println!("attached {id} {}", reference.sha256_hex());
    let config = SyncConfig::new(url, token);
    let transport = ChunkStops {
        http: fieldsync_core::http_transport(&config).expect("the HTTP transport builds"),
    };
    let client = SyncClient::with_transport(config, Arc::new(transport));
    let runtime = tokio::runtime::Runtime::new().expect("a runtime starts");
    let report = runtime
        .block_on(client.sync_now(&store))
        .expect("the sync succeeds");
    print_synced(&report);
}

/// `len` bytes that differ at every position: byte `i` is the second byte of the little-endian
/// `u32` `i × 2654435761` (what `recording(len, 0)` of tests/tests/attachments.rs makes).
fn attachment_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

fn sync(path: &Path, url: &str, token: &str) {
    let store = open_device(path);
    let client = SyncClient::new(SyncConfig::new(url, token)).expect("the client builds");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime starts");
    let report = runtime
        .block_on(client.sync_now(&store))
        .expect("the sync succeeds");
    print_synced(&report);
}

fn print_synced(report: &SyncReport) {
    println!(
        "synced {} {} {} {} {}",
        report.pushed,
        report.rejected,
        report.pulled,
        report.attachments_sent,
        report.attachments_fetched
    );
}

/// The engine's own HTTP transport, stopping once the server answered that it holds a chunk
/// sent, before the engine reads that answer. Nothing is in flight while it stops: the engine
/// sends an attachment's chunks one after another, each once the one before was answered.
#[derive(Debug)]
struct ChunkStops {
    http: Arc<dyn Transport>,
}

impl Transport for ChunkStops {
    fn send<'a>(
        &'a self,
        credentials: &'a Credentials,
        request: TransportRequest,
    ) -> BoxFuture<'a, fieldsync_core::Result<TransportResponse>> {
        Box::pin(async move {
            let chunk = match &request {
                TransportRequest::PutChunk { chunk, .. } => Some(*chunk),
                _ => None,
            };
            let response = self.http.send(credentials, request).await?;
            if let Some(chunk) = chunk.filter(|_| response.status == 200) {
                stop_at(&format!("chunk {chunk}"));
            }
            Ok(response)
        })
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

/// Clients of each therapist in the clinic `seed` makes.
const CLIENTS_PER_THERAPIST: usize = 12;
/// Sessions of each therapist's clients in the clinic `seed` makes, on average.
const SESSIONS_PER_THERAPIST: usize = 20;

fn seed_tablet(path: &Path, therapist: usize, therapists: usize, seed: u64) {
    if therapist >= therapists {
        usage();
    }
    let size = ClinicSize {
        therapists,
        clients: therapists * CLIENTS_PER_THERAPIST,
        sessions: therapists * SESSIONS_PER_THERAPIST,
    };
    // In the order the generator's other callers draw: therapists, clients, sessions.
    let mut rng = Rng::new(seed);
    let mut clinic = clinic_data::therapists(size, &mut rng);
    clinic.extend(clinic_data::clients(size, &mut rng));
    clinic.extend((0..size.sessions).map(|i| clinic_data::session(size, i, &mut rng)));

    let (_, id, own) = inserted(&clinic[therapist]);
    let text = |name: &str| {
        own[name]
            .as_str()
            .expect("a therapist has a team and a name")
    };
    let team = text("team_id").to_owned();
    let caseload = clinic_data::caseload(therapist);
    let therapist_line = format!("therapist {id} {caseload} {team} {}", text("name"));
    let holds = |fields: &Fields| {
        fields.get("caseload_id").and_then(Value::as_str) == Some(caseload.as_str())
            || fields.get("team_id").and_then(Value::as_str) == Some(team.as_str())
    };
    let theirs: Vec<Write> = clinic
        .into_iter()
        .filter(|write| holds(inserted(write).2))
        .collect();
    let records: Vec<String> = theirs
        .iter()
        .map(|write| {
            let (collection, id, _) = inserted(write);
            format!("record {collection} {id}")
        })
        .collect();
    open_device(path)
        .write_batch(theirs)
        .expect("the clinic's records are written");

    let mut out = std::io::stdout().lock();
    writeln!(out, "{therapist_line}").expect("stdout is open");
    for line in &records {
        writeln!(out, "{line}").expect("stdout is open");
    }
    writeln!(out, "seeded {}", records.len()).expect("stdout is open");
}

/// The collection, id and fields of one of `clinic_data`'s writes, which are all inserts with
/// an id.
fn inserted(write: &Write) -> (&str, &str, &Fields) {
    match write {
        Write::Insert {
            collection,
            id: Some(id),
            fields,
        } => (collection, id, fields),
        _ => unreachable!("clinic_data makes inserts with ids only"),
    }
}
