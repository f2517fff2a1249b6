//! A real `fieldsync-server` process on a free loopback port, killed when dropped.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use fieldsync_core::Store;
use fieldsync_record::protocol::{self, PullResponse, PushRecord, PushRequest, PushResponse};

/// A running server process.
pub struct ServerProcess {
    child: Child,
    stdout: mpsc::Receiver<String>,
    binary: PathBuf,
    db: OsString,
    /// Set for the server and its admin commands.
    env: Vec<(String, String)>,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// What the server printed before it listened.
    pub banner: Vec<String>,
}

impl ServerProcess {
    /// Starts `binary serve` on `db` (a SQLite path or a PostgreSQL URL) and a free port, and
    /// waits until it listens.
    pub fn start(binary: &Path, db: impl AsRef<OsStr>) -> ServerProcess {
        ServerProcess::start_with(binary, db, &[], None)
    }

    /// Like [`ServerProcess::start`], writing every log line (debug and up) to `log`.
    pub fn start_logging(
        binary: &Path,
        db: impl AsRef<OsStr>,
        log: Option<&Path>,
    ) -> ServerProcess {
        ServerProcess::start_with(binary, db, &[], log)
    }

    /// Like [`ServerProcess::start_logging`], with more `serve` flags (`--requests-per-second`).
    pub fn start_with(
        binary: &Path,
        db: impl AsRef<OsStr>,
        serve_args: &[&str],
        log: Option<&Path>,
    ) -> ServerProcess {
        ServerProcess::start_with_env(binary, db, serve_args, &[], log)
    }

    /// Like [`ServerProcess::start_with`], with environment variables set for the server and
    /// its admin commands (settings such as the attachment bucket's credentials).
    pub fn start_with_env(
        binary: &Path,
        db: impl AsRef<OsStr>,
        serve_args: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> ServerProcess {
        let db = db.as_ref();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        // Devices here run the clinic app: a database without a schema gets its schema.
        if admin_in(binary, db, &env, &["schema", "history"]) == "no schema set\n" {
            let fixture = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../core/tests/fixtures/clinic.schema.json"
            );
            admin_in(binary, db, &env, &["schema", "set", fixture]);
        }
        let (level, stderr) = match log {
            Some(path) => (
                "debug",
                Stdio::from(std::fs::File::create(path).expect("the log file opens")),
            ),
            None => ("warn", Stdio::inherit()),
        };
        let mut child = Command::new(binary)
            .arg("--db")
            .arg(db)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(serve_args)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .env("FIELDSYNC_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the server starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        // The server prints its address once it listens; reading blocks until then.
        let mut banner = Vec::new();
        let url = loop {
            let line = lines
                .next()
                .expect("the server printed its address")
                .expect("stdout reads");
            if let Some(url) = line.strip_prefix("listening on ") {
                break url.to_owned();
            }
            banner.push(line);
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        let (sender, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        ServerProcess {
            child,
            stdout,
            binary: binary.to_owned(),
            db: db.to_owned(),
            env,
            url,
            banner,
        }
    }

    /// Runs an admin command against the server's database and returns its output.
    pub fn admin(&self, args: &[&str]) -> String {
        admin_in(&self.binary, &self.db, &self.env, args)
    }

    /// Creates a user with write grants on `scopes` and enrolls a device; returns its token.
    pub fn user_with_device(&self, name: &str, scopes: &[&str]) -> String {
        self.admin(&["create-user", name]);
        for scope in scopes {
            self.admin(&["grant", "--user", name, "--scope", scope]);
        }
        self.device(name)
    }

    /// Enrolls another device for `user`; returns its token.
    pub fn device(&self, user: &str) -> String {
        self.enroll(user).1
    }

    /// Enrolls another device for `user`; returns its id and token.
    pub fn enroll(&self, user: &str) -> (i64, String) {
        self.enroll_named(user, "device")
    }

    /// Enrolls another device for `user`, named `name`; returns its id and token.
    pub fn enroll_named(&self, user: &str, name: &str) -> (i64, String) {
        let out = self.admin(&["enroll-device", "--user", user, "--name", name]);
        let id = out
            .lines()
            .find_map(|line| {
                line.strip_prefix("device ")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .expect("enroll-device prints the device id");
        let token = out
            .lines()
            .find_map(|line| line.strip_prefix("token: "))
            .expect("enroll-device prints a token")
            .to_owned();
        (id, token)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM works");
    }

    /// How many HTTP requests the server has begun to handle, this one included (its
    /// `fieldsync_requests_total`, counted once a request's headers are read).
    pub fn requests_begun(&self) -> u64 {
        // A raw request, so that this works inside async tests too (a blocking reqwest client
        // refuses to run on a tokio runtime).
        use std::io::{Read as _, Write as _};
        let address = self.url.trim_start_matches("http://");
        let mut connection = std::net::TcpStream::connect(address).expect("the server accepts");
        write!(
            connection,
            "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .expect("the connection writes");
        let mut text = String::new();
        connection
            .read_to_string(&mut text)
            .expect("the server answers /metrics");
        text.lines()
            .find_map(|line| line.strip_prefix("fieldsync_requests_total "))
            .and_then(|value| value.trim().parse().ok())
            .expect("/metrics counts requests")
    }

    /// Blocks until the server has begun one request more than the `begun` it had counted
    /// (by [`ServerProcess::requests_begun`]), besides the /metrics requests this makes.
    pub fn wait_for_request_begun(&self, begun: u64) {
        for polls in 1.. {
            if self.requests_begun() > begun + polls {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Blocks until the server prints a line starting with `prefix`.
    pub fn wait_for_line(&self, prefix: &str) {
        loop {
            let line = self
                .stdout
                .recv()
                .expect("the server printed the line before exiting");
            if line.starts_with(prefix) {
                return;
            }
        }
    }

    /// Waits for the process to exit; returns whether it exited successfully.
    pub fn wait(mut self) -> bool {
        self.child.wait().is_ok_and(|status| status.success())
    }

    /// Sends SIGTERM and waits; returns whether the process exited successfully.
    pub fn terminate(self) -> bool {
        self.signal_terminate();
        self.wait()
    }

    /// Kills the process at once (SIGKILL) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP client for the sync protocol, as a device would speak it.
pub struct Client {
    http: reqwest::blocking::Client,
    url: String,
    token: String,
}

impl Client {
    /// A client of the server at `url` holding `token`.
    pub fn new(url: &str, token: &str) -> Client {
        // fieldsync-core builds reqwest without a default TLS provider (it brings its own ring
        // configuration), so a plain client here needs a process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::blocking::Client::new();
        Client {
            http,
            url: url.to_owned(),
            token: token.to_owned(),
        }
    }

    /// Sends a push; `Err` holds the status and body of a refused request.
    pub fn push(&self, request: &PushRequest) -> Result<PushResponse, (u16, String)> {
        let response = self
            .http
            .post(format!("{}/v1/push", self.url))
            .bearer_auth(&self.token)
            .header(protocol::VERSION_HEADER, protocol::VERSION.to_string())
            .body(protocol::encode(request))
            .send()
            .expect("the server answers");
        decode(response)
    }

    /// Sends a pull.
    pub fn pull(&self, cursor: Option<&str>, limit: u32) -> Result<PullResponse, (u16, String)> {
        let mut url = format!("{}/v1/pull?limit={limit}", self.url);
        if let Some(cursor) = cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .header(protocol::VERSION_HEADER, protocol::VERSION.to_string())
            .send()
            .expect("the server answers");
        decode(response)
    }

    /// Pushes a store's outbox and acknowledges it; returns how many records were accepted.
    pub fn push_outbox(&self, store: &Store, batch_id: &str) -> usize {
        let entries = store.outbox(100_000).expect("outbox reads");
        let Some(last) = entries.last().map(|e| e.seq) else {
            return 0;
        };
        let request = PushRequest {
            outbox_seq: None,
            batch_id: batch_id.to_owned(),
            records: entries.into_iter().map(PushRecord::from).collect(),
        };
        let response = self.push(&request).expect("the push is answered");
        store
            .acknowledge_outbox(last)
            .expect("acknowledge succeeds");
        response
            .results
            .iter()
            .filter(|r| r.rejected.is_none())
            .count()
    }

    /// Pulls until caught up, merging into `store`; returns the new cursor.
    pub fn pull_into(&self, store: &Store, cursor: Option<String>) -> String {
        let mut cursor = cursor;
        loop {
            let page = self
                .pull(cursor.as_deref(), 500)
                .expect("the pull is answered");
            let report = store
                .apply_remote(page.records.into_iter().map(Into::into).collect())
                .expect("apply_remote succeeds");
            assert!(report.rejected.is_empty(), "{:?}", report.rejected);
            cursor = Some(page.next_cursor);
            if !page.more {
                return cursor.expect("just set");
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    response: reqwest::blocking::Response,
) -> Result<T, (u16, String)> {
    let status = response.status().as_u16();
    let body = response.bytes().expect("the body reads");
    if status == 200 {
        Ok(protocol::decode(&body, 256 << 20).expect("a success body decodes"))
    } else {
        Err((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Starts a push by hand on a raw connection: the HTTP headers for `body`, then only its first
/// `send` bytes, so a test can leave the request in flight. The caller writes the rest (or
/// not) and reads the answer.
pub fn partial_push(url: &str, token: &str, body: &[u8], send: usize) -> std::net::TcpStream {
    use std::io::Write as _;
    let address = url.trim_start_matches("http://");
    let mut connection = std::net::TcpStream::connect(address).expect("the server accepts");
    write!(
        connection,
        "POST /v1/push HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         fieldsync-protocol: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .expect("the connection writes");
    connection
        .write_all(&body[..send])
        .expect("the connection writes");
    connection.flush().expect("the connection writes");
    connection
}

/// Runs an admin command of `binary` against `db`; panics if it fails.
pub fn admin(binary: &Path, db: &OsStr, args: &[&str]) -> String {
    admin_in(binary, db, &[], args)
}

/// Like [`admin`], with environment variables set.
fn admin_in(binary: &Path, db: &OsStr, env: &[(String, String)], args: &[&str]) -> String {
    let output = Command::new(binary)
        .arg("--db")
        .arg(db)
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .env("FIELDSYNC_LOG", "warn")
        .output()
        .expect("the admin command runs");
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("output is UTF-8")
}
