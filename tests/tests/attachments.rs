//! Attachments between devices through a real server process: bytes written on one device
//! reach another (eager fields with the sync, on-demand fields when asked), an upload cut off
//! (by a dropped connection, or with the app's process killed) resumes without sending a
//! chunk twice (the server's counters say so), and a device of another scope gets nothing
//! however well it knows the hash. `bucket` runs a server keeping the bytes in an
//! S3-compatible bucket.

#[path = "attachments/bucket.rs"]
mod bucket;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fieldsync_core::{
    AttachmentRef, AttachmentSource, BoxFuture, Credentials, Store, SyncClient, SyncConfig,
    Transport, TransportRequest, TransportResponse,
};
use fieldsync_record::protocol::ATTACHMENT_CHUNK_BYTES;
use fieldsync_tests::server::ServerProcess;
use fieldsync_tests::{fields, open_device};
use serde_json::json;

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

/// Bytes that differ at every position.
fn recording(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// A counter of the server's `/metrics`.
fn metric(server: &ServerProcess, name: &str) -> u64 {
    use std::io::{Read as _, Write as _};
    let address = server.url.trim_start_matches("http://");
    let mut connection = std::net::TcpStream::connect(address).unwrap();
    write!(
        connection,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    connection.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("/metrics has {name}"))
}

/// The HTTP transport, failing (as a dropped connection does) every chunk sent after the first
/// `allowed`.
#[derive(Debug)]
struct Cuts {
    http: Arc<dyn Transport>,
    allowed: AtomicUsize,
}

impl Transport for Cuts {
    fn send<'a>(
        &'a self,
        credentials: &'a Credentials,
        request: TransportRequest,
    ) -> BoxFuture<'a, fieldsync_core::Result<TransportResponse>> {
        Box::pin(async move {
            if matches!(request, TransportRequest::PutChunk { .. }) {
                let left = self.allowed.load(Ordering::SeqCst);
                if left == 0 {
                    return Err(fieldsync_core::Error::Network(
                        "the connection failed".into(),
                    ));
                }
                self.allowed.store(left - 1, Ordering::SeqCst);
            }
            self.http.send(credentials, request).await
        })
    }
}

struct Clinic {
    dir: tempfile::TempDir,
    server: ServerProcess,
}

impl Clinic {
    fn new() -> Clinic {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(Path::new(SERVER), dir.path().join("server.db"));
        Clinic { dir, server }
    }

    fn device(&self, name: &str, token: &str) -> (Store, SyncClient) {
        let store = open_device(&self.dir.path().join(format!("{name}.db")));
        let client = SyncClient::new(SyncConfig::new(&self.server.url, token)).unwrap();
        (store, client)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_reach_other_devices_eagerly_or_on_demand() {
    let clinic = tokio::task::spawn_blocking(Clinic::new).await.unwrap();
    let ada = clinic.server.user_with_device("ada", &["north"]);
    let bo = clinic.server.user_with_device("bo", &["north"]);
    let (phone, phone_client) = clinic.device("phone", &ada);
    let (tablet, tablet_client) = clinic.device("tablet", &bo);

    let client_id = phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam"})),
        )
        .unwrap();
    let session = phone
        .insert(
            "sessions",
            fields(json!({"caseload_id": "north", "client": client_id, "started_at": 1})),
        )
        .unwrap();
    let form = recording(2 * ATTACHMENT_CHUNK_BYTES + 4321, 1);
    let consent = phone
        .attach(
            "clients",
            &client_id,
            "consent_form",
            AttachmentSource::Bytes(&form),
            "image/jpeg",
            Some("consent.jpg"),
        )
        .unwrap();
    let audio = recording(70_000, 2);
    let note = phone
        .attach(
            "sessions",
            &session,
            "audio_note",
            AttachmentSource::Bytes(&audio),
            "audio/mp4",
            None,
        )
        .unwrap();
    let progress = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = progress.clone();
    let report = phone_client
        .sync_now_with_progress(&phone, &move |p| seen.lock().unwrap().push(*p))
        .await
        .unwrap();
    assert_eq!(report.attachments_sent, 2);
    let last = *progress.lock().unwrap().last().unwrap();
    let total = (form.len() + audio.len()) as u64;
    assert_eq!(
        (last.attachment_bytes_done, last.attachment_bytes_total),
        (total, total)
    );
    assert_eq!(
        metric(&clinic.server, "fieldsync_attachment_chunks_received_total"),
        4
    );

    // The consent form (eager) comes with the sync; the audio note (on demand) when asked.
    let report = tablet_client.sync_now(&tablet).await.unwrap();
    assert_eq!(report.attachments_fetched, 1);
    assert_eq!(tablet.attachment_bytes(&consent).unwrap().unwrap(), form);
    let shown = tablet.get("clients", &client_id).unwrap().unwrap();
    assert_eq!(
        AttachmentRef::from_value(&shown.fields["consent_form"]).unwrap(),
        consent
    );
    assert!(!tablet.has_attachment(&note).unwrap());
    assert!(
        tablet_client
            .fetch_attachment(&tablet, "sessions", &session, "audio_note")
            .await
            .unwrap()
    );
    assert_eq!(tablet.attachment_bytes(&note).unwrap().unwrap(), audio);
    // Syncing again sends and fetches nothing.
    let again = phone_client.sync_now(&phone).await.unwrap();
    assert_eq!((again.attachments_sent, again.attachments_fetched), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_resumes_without_sending_a_chunk_twice() {
    let clinic = tokio::task::spawn_blocking(Clinic::new).await.unwrap();
    let ada = clinic.server.user_with_device("ada", &["north"]);
    let store = open_device(&clinic.dir.path().join("phone.db"));
    let config = SyncConfig::new(&clinic.server.url, &ada);
    let cuts = Arc::new(Cuts {
        http: fieldsync_core::http_transport(&config).unwrap(),
        allowed: AtomicUsize::new(2),
    });
    let client = SyncClient::with_transport(config, cuts.clone());
    let id = store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam"})),
        )
        .unwrap();
    let video = recording(5 * ATTACHMENT_CHUNK_BYTES + 1, 3);
    let reference = store
        .attach(
            "clients",
            &id,
            "consent_form",
            AttachmentSource::Bytes(&video),
            "video/mp4",
            None,
        )
        .unwrap();
    // Two chunks get through, then the connection drops: the sync fails, the record is on the
    // server, the attachment is still queued.
    assert!(client.sync_now(&store).await.is_err());
    assert_eq!(store.outbox_len().unwrap(), 0);
    cuts.allowed.store(usize::MAX, Ordering::SeqCst);
    let report = client.sync_now(&store).await.unwrap();
    assert_eq!(report.attachments_sent, 1);
    assert_eq!(
        (
            metric(&clinic.server, "fieldsync_attachment_chunks_received_total"),
            metric(&clinic.server, "fieldsync_attachment_chunks_repeated_total")
        ),
        (6, 0),
        "every chunk sent once"
    );
    // Another device of the scope gets it whole; one of another scope gets nothing, even
    // naming its hash in its own scope's path.
    let bo = clinic.server.user_with_device("bo", &["north"]);
    let (tablet, tablet_client) = clinic.device("tablet", &bo);
    tablet_client.sync_now(&tablet).await.unwrap();
    assert_eq!(tablet.attachment_bytes(&reference).unwrap().unwrap(), video);
    let eve = clinic.server.user_with_device("eve", &["south"]);
    let sha = reference.sha256_hex();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    for scope in ["north", "south"] {
        let answer = http
            .get(format!(
                "{}/v1/scopes/{scope}/attachments/{sha}/chunks/0",
                clinic.server.url
            ))
            .bearer_auth(&eve)
            .header("fieldsync-protocol", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 404, "{scope}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_within_the_budget_what_the_server_holds_and_keeps_the_rest() {
    let clinic = tokio::task::spawn_blocking(Clinic::new).await.unwrap();
    let ada = clinic.server.user_with_device("ada", &["north"]);
    let options = fieldsync_core::StoreOptions {
        attachment_budget_bytes: 100_000,
        ..fieldsync_core::StoreOptions::default()
    };
    let store = Store::open(
        clinic.dir.path().join("phone.db"),
        fieldsync_tests::clinic_schema(),
        options,
    )
    .unwrap();
    let client = SyncClient::new(SyncConfig::new(&clinic.server.url, &ada)).unwrap();
    let attach = |name: &str, bytes: &[u8]| {
        let id = store
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": name})),
            )
            .unwrap();
        store
            .attach(
                "clients",
                &id,
                "consent_form",
                AttachmentSource::Bytes(bytes),
                "image/png",
                None,
            )
            .unwrap()
    };
    let first = attach("first", &recording(80_000, 1));
    let second = attach("second", &recording(80_000, 2));
    // Read the first now: the second is the least recently used.
    store.attachment_bytes(&first).unwrap().unwrap();
    client.sync_now(&store).await.unwrap();
    // Both are on the server, 160,000 bytes over a budget of 100,000: one goes.
    assert!(store.has_attachment(&first).unwrap());
    assert!(
        !store.has_attachment(&second).unwrap(),
        "the least recently used"
    );
    // It is not fetched back by the next sync (it would not fit), but on demand.
    let again = client.sync_now(&store).await.unwrap();
    assert_eq!(again.attachments_fetched, 0);

    // Written offline, not yet on the server: kept, however far over the budget.
    let offline: Vec<AttachmentRef> = (0..3)
        .map(|i| attach(&format!("offline {i}"), &recording(90_000, 10 + i)))
        .collect();
    let tidied = store.tidy_attachments().unwrap();
    assert_eq!((tidied.evicted, tidied.unreferenced), (0, 0));
    for reference in &offline {
        assert!(store.has_attachment(reference).unwrap());
    }
    // A record that stops referencing bytes frees them.
    let bytes = recording(5_000, 20);
    let temporary = attach("temporary", &bytes);
    let id = store
        .query(
            "clients",
            &fieldsync_core::Query {
                filter: fieldsync_core::Filter::eq("name", "temporary"),
                ..Default::default()
            },
        )
        .unwrap()[0]
        .id
        .clone();
    store.delete("clients", &id).unwrap();
    client.sync_now(&store).await.unwrap();
    assert!(!store.has_attachment(&temporary).unwrap(), "unreferenced");
    // Sent now, the offline ones count against the budget: the least recently used go
    // until what the server holds fits, the newest stays.
    let held: Vec<bool> = std::iter::once(&first)
        .chain(&offline)
        .map(|reference| store.has_attachment(reference).unwrap())
        .collect();
    assert_eq!(held, [false, false, false, true]);
}

/// `fieldsync-device` run as the app's process, killed (SIGKILL) when dropped, so that no test,
/// passing or failing, leaves one behind.
struct DeviceProcess {
    child: std::process::Child,
    answers: std::process::ChildStdin,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl DeviceProcess {
    fn start(args: &[&str]) -> DeviceProcess {
        use std::io::BufRead as _;
        use std::process::Stdio;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync-device"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let answers = child.stdin.take().unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        DeviceProcess {
            child,
            answers,
            lines,
        }
    }

    /// The next line it prints.
    fn line(&mut self) -> String {
        self.lines
            .next()
            .expect("the device printed a line")
            .unwrap()
    }

    /// Lets it go on from the line it stopped at.
    fn go_on(&mut self) {
        use std::io::Write as _;
        writeln!(self.answers, "go on").unwrap();
    }

    /// Kills it with SIGKILL, as the system kills an app, and waits until it is gone.
    fn kill(mut self) {
        use std::os::unix::process::ExitStatusExt as _;
        self.child.kill().unwrap();
        assert_eq!(self.child.wait().unwrap().signal(), Some(9), "killed");
    }

    /// Waits until it exits; true if it succeeded.
    fn finished(mut self) -> bool {
        self.child.wait().unwrap().success()
    }
}

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        // Fails only for a process already waited for, which is gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_killed_with_the_app_resumes_where_it_stopped() {
    const CHUNKS: u64 = 8;
    const ACKNOWLEDGED: u64 = 3;
    let clinic = tokio::task::spawn_blocking(Clinic::new).await.unwrap();
    let ada = clinic.server.user_with_device("ada", &["north"]);
    let phone = clinic.dir.path().join("phone.db");
    let phone = phone.to_str().unwrap();
    let len = (CHUNKS as usize - 1) * ATTACHMENT_CHUNK_BYTES + 4321;
    let received = || metric(&clinic.server, "fieldsync_attachment_chunks_received_total");
    let repeated = || metric(&clinic.server, "fieldsync_attachment_chunks_repeated_total");

    // The app attaches a consent form and syncs; the server has answered for three chunks of
    // eight when the app is killed, before it read the third answer.
    let mut app =
        DeviceProcess::start(&["upload", phone, &clinic.server.url, &ada, &len.to_string()]);
    let attached = app.line();
    let [_, id, sha256] = attached.split(' ').collect::<Vec<_>>()[..] else {
        panic!("the device printed {attached:?}");
    };
    let (id, sha256) = (id.to_owned(), sha256.to_owned());
    for chunk in 0..ACKNOWLEDGED {
        assert_eq!(app.line(), format!("chunk {chunk}"));
        if chunk + 1 < ACKNOWLEDGED {
            app.go_on();
        }
    }
    app.kill();
    assert_eq!((received(), repeated()), (ACKNOWLEDGED, 0));

    // Started again, it syncs the rest. The device keeps no record of the chunks it sent: it
    // asks the server what it holds, so even the chunk whose answer it never read is not sent
    // again, and with nothing in flight at the kill none may be repeated.
    let mut app = DeviceProcess::start(&["sync", phone, &clinic.server.url, &ada]);
    // `synced <pushed> <rejected> <pulled> <attachments-sent> <attachments-fetched>`: the
    // record went with the first run, only the attachment is left.
    assert_eq!(app.line(), "synced 0 0 0 1 0");
    assert!(app.finished());
    assert_eq!(
        (received(), repeated()),
        (CHUNKS, 0),
        "every chunk sent once"
    );

    // Another device of the scope gets the bytes the app attached.
    let bo = clinic.server.user_with_device("bo", &["north"]);
    let (tablet, tablet_client) = clinic.device("tablet", &bo);
    let report = tablet_client.sync_now(&tablet).await.unwrap();
    assert_eq!(report.attachments_fetched, 1);
    let record = tablet.get("clients", &id).unwrap().unwrap();
    let reference = AttachmentRef::from_value(&record.fields["consent_form"]).unwrap();
    assert_eq!(reference.sha256_hex(), sha256);
    // The device process attaches `recording(len, 0)`.
    let bytes = tablet.attachment_bytes(&reference).unwrap().unwrap();
    assert!(bytes == recording(len, 0), "the bytes arrive intact");
}
