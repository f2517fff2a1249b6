//! A large attachment through a real server process over loopback: device A attaches a file
//! and syncs (upload), device B syncs (download of an eager attachment) and saves it to a file.
//! Each is timed in MB/s (10^6 bytes a second) beside a plain HTTP copy of the same file over
//! the same loopback in the same run, and the peak resident memory of the device process (this
//! one) and of the server process is taken phase by phase, to show that it is bounded by the
//! chunks, not by the attachment's size.
//!
//! `cargo bench -p fieldsync-tests --bench attachments` (200 MiB); another size with
//! `FIELDSYNC_BENCH_ATTACHMENT_MIB=20`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use fieldsync_core::{AttachmentSource, SyncClient, SyncConfig};
use fieldsync_tests::server::ServerProcess;
use fieldsync_tests::{cpu_seconds, fields, memory_kib, open_device};
use serde_json::json;
use sha2::{Digest, Sha256};

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

/// The buffer of every plain copy and hash here: as large as a sync chunk.
const BUFFER: usize = 1 << 20;

fn main() {
    let mib: u64 = std::env::var("FIELDSYNC_BENCH_ATTACHMENT_MIB")
        .ok()
        .map(|v| {
            v.parse()
                .expect("FIELDSYNC_BENCH_ATTACHMENT_MIB is a number of MiB")
        })
        .unwrap_or(200);
    let size = mib << 20;
    println!("fieldsync attachment benchmark ({mib} MiB, release build)\n");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("recording.bin");
    let source_sha = write_random_file(&source, size);

    let server = ServerProcess::start_with(
        Path::new(SERVER),
        dir.path().join("server.db"),
        &[
            "--max-attachment-bytes",
            &(size + (1 << 20)).to_string(),
            "--requests-per-second",
            "0",
        ],
        None,
    );
    let server_pid = server.pid().to_string();
    let ada = server.user_with_device("ada", &["north"]);
    let bo = server.user_with_device("bo", &["north"]);
    let phone = open_device(&dir.path().join("phone.db"));
    let tablet = open_device(&dir.path().join("tablet.db"));
    let phone_client = SyncClient::new(SyncConfig::new(&server.url, &ada)).unwrap();
    let tablet_client = SyncClient::new(SyncConfig::new(&server.url, &bo)).unwrap();
    let client_id = phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam"})),
        )
        .unwrap();

    let device = Meter::new("self");
    let server_meter = Meter::new(&server_pid);
    let start_rss = (device.rss_mib(), server_meter.rss_mib());
    println!(
        "resident memory before: device process {:.1} MiB, server {:.1} MiB\n",
        start_rss.0, start_rss.1
    );

    let attach = Phase::start(&device, &server_meter);
    let reference = phone
        .attach(
            "clients",
            &client_id,
            "consent_form",
            AttachmentSource::File(&source),
            "video/mp4",
            Some("consent.mp4"),
        )
        .unwrap();
    let attach = attach.end("device A attaches the file", size);

    let upload = Phase::start(&device, &server_meter);
    let report = runtime.block_on(phone_client.sync_now(&phone)).unwrap();
    assert_eq!(report.attachments_sent, 1);
    let upload = upload.end("device A's sync (upload)", size);

    let download = Phase::start(&device, &server_meter);
    let report = runtime.block_on(tablet_client.sync_now(&tablet)).unwrap();
    assert_eq!(report.attachments_fetched, 1, "the consent form is eager");
    let download = download.end("device B's sync (download)", size);

    let save = Phase::start(&device, &server_meter);
    let saved = dir.path().join("saved.bin");
    assert!(tablet.save_attachment(&reference, &saved).unwrap());
    let save = save.end("device B saves it to a file", size);
    assert_eq!(
        file_sha256(&saved),
        source_sha,
        "the saved file is the source"
    );
    std::fs::remove_file(&saved).unwrap();

    // The reference: the same file over the same loopback, by a plain HTTP/1.1 server in this
    // process and reqwest's blocking client, both streaming through 1 MiB buffers, the
    // receiving side flushing its file to disk at the end, as `save_attachment` does.
    let plain = PlainServer::start(source.clone(), dir.path().join("plain-upload.bin"));
    let http = reqwest::blocking::Client::new();
    let plain_down = Phase::start(&device, &server_meter);
    let copied = dir.path().join("plain-download.bin");
    let mut response = http
        .get(format!("{}/file", plain.url))
        .send()
        .unwrap()
        .error_for_status()
        .unwrap();
    let mut file = std::fs::File::create(&copied).unwrap();
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let n = response.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n]).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);
    let plain_down = plain_down.end("plain HTTP copy, server to client", size);
    assert_eq!(file_sha256(&copied), source_sha);
    std::fs::remove_file(&copied).unwrap();

    let plain_up = Phase::start(&device, &server_meter);
    let body = reqwest::blocking::Body::sized(std::fs::File::open(&source).unwrap(), size);
    http.put(format!("{}/upload", plain.url))
        .body(body)
        .send()
        .unwrap()
        .error_for_status()
        .unwrap();
    let plain_up = plain_up.end("plain HTTP copy, client to server", size);
    let uploaded = plain.finish();
    assert_eq!(file_sha256(&uploaded), source_sha);
    std::fs::remove_file(&uploaded).unwrap();

    let mb_s = |phase: &Measured| size as f64 / phase.seconds / 1e6;
    println!("\n| measurement | {mib} MiB |\n|---|---|");
    println!(
        "| upload (device A's sync) | {:.1} MB/s, {:.3}x the plain copy client to server ({:.0} MB/s) |",
        mb_s(&upload),
        mb_s(&upload) / mb_s(&plain_up),
        mb_s(&plain_up)
    );
    println!(
        "| download (device B's sync) | {:.1} MB/s, {:.3}x the plain copy server to client ({:.0} MB/s) |",
        mb_s(&download),
        mb_s(&download) / mb_s(&plain_down),
        mb_s(&plain_down)
    );
    println!(
        "| attach (into device A's store) / save (out of device B's) | {:.0} / {:.0} MB/s |",
        mb_s(&attach),
        mb_s(&save)
    );
    let device_peak = [&attach, &upload, &download, &save]
        .iter()
        .map(|p| p.device_peak)
        .fold(0.0, f64::max);
    let server_peak = [&upload, &download]
        .iter()
        .map(|p| p.server_peak)
        .fold(0.0, f64::max);
    println!(
        "| device process, peak memory | {device_peak:.1} MiB ({:+.1} MiB over its {:.1} MiB before) |",
        device_peak - start_rss.0,
        start_rss.0
    );
    println!(
        "| server process, peak memory | {server_peak:.1} MiB ({:+.1} MiB over its {:.1} MiB before) |",
        server_peak - start_rss.1,
        start_rss.1
    );
    if !device.resets || !server_meter.resets {
        println!(
            "\n(peak memory could not be reset between phases: each phase's peak includes the earlier ones')"
        );
    }
}

/// The resident memory of one process (`"self"` or a pid), whose peak (`VmHWM`) is reset at
/// the start of each phase so that each phase's peak is its own.
struct Meter {
    pid: String,
    /// Whether resetting the peak works (Linux 4.0 and later, a process of the same user).
    resets: bool,
}

impl Meter {
    fn new(pid: &str) -> Meter {
        let mut meter = Meter {
            pid: pid.to_owned(),
            resets: true,
        };
        meter.resets = meter.reset_peak();
        meter
    }

    /// Writing 5 to `clear_refs` sets the peak to the current resident memory.
    fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    fn kib(&self, field: &str) -> f64 {
        memory_kib(&self.pid, field).expect("/proc/<pid>/status reads") as f64
    }

    fn rss_mib(&self) -> f64 {
        self.kib("VmRSS") / 1024.0
    }

    fn peak_mib(&self) -> f64 {
        self.kib("VmHWM") / 1024.0
    }

    fn cpu(&self) -> f64 {
        let pid = match self.pid.as_str() {
            "self" => std::process::id(),
            pid => pid.parse().unwrap(),
        };
        cpu_seconds(pid).unwrap_or(0.0)
    }
}

/// A phase being measured: when it started, and both processes' memory and CPU then.
struct Phase<'a> {
    device: &'a Meter,
    server: &'a Meter,
    started: Instant,
    rss: (f64, f64),
    cpu: (f64, f64),
}

/// What a phase took.
struct Measured {
    seconds: f64,
    device_peak: f64,
    server_peak: f64,
}

impl<'a> Phase<'a> {
    fn start(device: &'a Meter, server: &'a Meter) -> Phase<'a> {
        device.reset_peak();
        server.reset_peak();
        Phase {
            device,
            server,
            rss: (device.rss_mib(), server.rss_mib()),
            cpu: (device.cpu(), server.cpu()),
            started: Instant::now(),
        }
    }

    fn end(self, label: &str, size: u64) -> Measured {
        let seconds = self.started.elapsed().as_secs_f64();
        let measured = Measured {
            seconds,
            device_peak: self.device.peak_mib(),
            server_peak: self.server.peak_mib(),
        };
        println!(
            "{label}: {seconds:.2} s = {:.1} MB/s; peak memory: device process {:.1} MiB ({:+.1}), \
             server {:.1} MiB ({:+.1}); CPU seconds: device process {:.2}, server {:.2}",
            size as f64 / seconds / 1e6,
            measured.device_peak,
            measured.device_peak - self.rss.0,
            measured.server_peak,
            measured.server_peak - self.rss.1,
            self.device.cpu() - self.cpu.0,
            self.server.cpu() - self.cpu.1,
        );
        measured
    }
}

/// Writes `size` bytes that do not compress (xorshift), a buffer at a time; returns their
/// SHA-256.
fn write_random_file(path: &Path, size: u64) -> [u8; 32] {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buffer = vec![0u8; BUFFER];
    let mut left = size;
    while left > 0 {
        for word in buffer.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(BUFFER as u64) as usize;
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n]).unwrap();
        left -= n as u64;
    }
    file.into_inner().unwrap().sync_all().unwrap();
    hasher.finalize().into()
}

/// The SHA-256 of a file, read a buffer at a time.
fn file_sha256(path: &Path) -> [u8; 32] {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let n = file.read(&mut buffer).unwrap();
        if n == 0 {
            return hasher.finalize().into();
        }
        hasher.update(&buffer[..n]);
    }
}

/// A plain HTTP/1.1 file server on loopback, in a thread: `GET /file` sends `source`, `PUT
/// /upload` writes the body to `upload`. It answers two requests, then its thread ends.
struct PlainServer {
    url: String,
    thread: std::thread::JoinHandle<PathBuf>,
}

impl PlainServer {
    fn start(source: PathBuf, upload: PathBuf) -> PlainServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let thread = std::thread::spawn(move || {
            for connection in listener.incoming().take(2) {
                serve(connection.unwrap(), &source, &upload);
            }
            upload
        });
        PlainServer { url, thread }
    }

    /// Waits for the server's thread; the path of the file it received.
    fn finish(self) -> PathBuf {
        self.thread.join().unwrap()
    }
}

/// Answers one request on `connection`, copying through a 1 MiB buffer (no `sendfile`), as
/// an ordinary server's handler would.
fn serve(connection: TcpStream, source: &Path, upload: &Path) {
    let mut reader = BufReader::new(connection.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut length = 0u64;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut writer = connection;
    let mut buffer = vec![0u8; BUFFER];
    if request_line.starts_with("GET /file ") {
        let mut file = std::fs::File::open(source).unwrap();
        let size = file.metadata().unwrap().len();
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {size}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        loop {
            let n = file.read(&mut buffer).unwrap();
            if n == 0 {
                break;
            }
            writer.write_all(&buffer[..n]).unwrap();
        }
    } else if request_line.starts_with("PUT /upload ") {
        let mut file = std::fs::File::create(upload).unwrap();
        let mut left = length;
        while left > 0 {
            let want = left.min(BUFFER as u64) as usize;
            let n = reader.read(&mut buffer[..want]).unwrap();
            assert!(n > 0, "the upload ended early");
            file.write_all(&buffer[..n]).unwrap();
            left -= n as u64;
        }
        file.sync_all().unwrap();
        writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
    } else {
        panic!("unexpected request: {request_line}");
    }
    writer.flush().unwrap();
}
