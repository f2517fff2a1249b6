//! A real S3 API server (s3proxy) for the tests of the attachment bucket: started on a free
//! loopback port with credentials of its own, keeping its buckets as directories in a
//! temporary directory (jclouds' filesystem provider: an object `a/b/c` of bucket `x` is the
//! file `x/a/b/c`, which tests may look at), killed and deleted when dropped.
//!
//! s3proxy is one jar run on Java 17 or later: `tests/s3proxy/fetch.sh` downloads it into
//! `target/s3proxy/` (`scripts/test` runs it), or `FIELDSYNC_S3PROXY_JAR` names one. A missing
//! jar fails the test that asked for it, saying how to get it: tests never skip silently.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldsync_server::attachments::bucket::BucketConfig;
use fieldsync_server::attachments::bucket::sigv4;

/// The s3proxy release `tests/s3proxy/fetch.sh` fetches.
pub const VERSION: &str = "4.1.0";
/// How long s3proxy may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How many of its last output lines are kept, to show when something fails.
const LOG_LINES: usize = 200;
/// The region its buckets are in (it checks none).
pub const REGION: &str = "us-east-1";

/// A running s3proxy that exists only for the test holding it.
pub struct S3Proxy {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    identity: String,
    credential: String,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl S3Proxy {
    /// Starts s3proxy and waits until it listens (a second or two: async tests call it with
    /// `spawn_blocking`); panics with the reason (and its output) if it cannot.
    pub fn start() -> S3Proxy {
        let jar = jar();
        assert!(
            jar.is_file(),
            "s3proxy's jar is not at {}; fetch it with `bash tests/s3proxy/fetch.sh` (scripts/test \
             does this) or set FIELDSYNC_S3PROXY_JAR to its path",
            jar.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("fieldsync-s3proxy-")
            .tempdir()
            .expect("a temporary directory");
        std::fs::create_dir(dir.path().join("buckets")).expect("the buckets' directory");
        let (identity, credential) = credentials();
        let properties = dir.path().join("s3proxy.properties");
        // Port 0: a free port, which it logs. Unknown headers ignored: it answers 501 to
        // `x-amz-security-token` otherwise (it still checks the signature that covers it).
        std::fs::write(
            &properties,
            format!(
                "s3proxy.endpoint=http://127.0.0.1:0\n\
                 s3proxy.authorization=aws-v2-or-v4\n\
                 s3proxy.ignore-unknown-headers=true\n\
                 s3proxy.identity={identity}\n\
                 s3proxy.credential={credential}\n\
                 jclouds.provider=filesystem\n\
                 jclouds.filesystem.basedir={}\n",
                dir.path().join("buckets").display()
            ),
        )
        .expect("the properties file is written");
        let java = std::env::var_os("JAVA_HOME").map_or_else(
            || PathBuf::from("java"),
            |home| Path::new(&home).join("bin/java"),
        );
        let mut child = Command::new(&java)
            .arg("-jar")
            .arg(&jar)
            .arg("--properties")
            .arg(&properties)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "{} did not start ({err}); s3proxy needs Java 17 or later on PATH or in \
                     JAVA_HOME",
                    java.display()
                )
            });
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let readers = [
            keep_reading(
                child.stdout.take().expect("stdout is piped"),
                &log,
                Some(port_tx),
            ),
            keep_reading(child.stderr.take().expect("stderr is piped"), &log, None),
        ];
        // The channel closes without a port if s3proxy exits before it listens.
        let why = match port_rx.recv_timeout(START_TIMEOUT) {
            Ok(port) => {
                return S3Proxy {
                    child,
                    dir,
                    port,
                    identity,
                    credential,
                    log,
                };
            }
            Err(mpsc::RecvTimeoutError::Timeout) => format!("in {START_TIMEOUT:?}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => "before it exited".to_owned(),
        };
        let _ = child.kill();
        let status = child.wait();
        // Its last words, once the pipes are read to their end.
        for reader in readers {
            let _ = reader.join();
        }
        panic!(
            "s3proxy did not listen {why} ({status:?}); its last lines:\n{}",
            lines(&log)
        )
    }

    /// The S3 API's URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The access key id it accepts.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The secret access key it accepts.
    pub fn credential(&self) -> &str {
        &self.credential
    }

    /// The directory holding its buckets, one directory each, objects as files under them.
    pub fn buckets_dir(&self) -> PathBuf {
        self.dir.path().join("buckets")
    }

    /// A configuration of the client for `bucket`, path style, keys under `prefix`.
    pub fn config(&self, bucket: &str, prefix: &str) -> BucketConfig {
        BucketConfig {
            endpoint: self.endpoint(),
            bucket: bucket.into(),
            region: REGION.into(),
            prefix: prefix.into(),
            virtual_hosted: false,
            access_key_id: self.identity.clone(),
            secret_access_key: self.credential.clone(),
            session_token: None,
        }
    }

    /// Creates the bucket `name` (a signed `PUT` of it, as S3 clients create buckets).
    pub async fn create_bucket(&self, name: &str) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let host = format!("127.0.0.1:{}", self.port);
        let path = format!("/{name}");
        let request = sigv4::Request {
            method: "PUT",
            host: &host,
            path: &path,
            query: &[],
            headers: &[],
            payload_sha256: sigv4::EMPTY_SHA256,
        };
        let credentials = sigv4::Credentials {
            access_key_id: &self.identity,
            secret_access_key: &self.credential,
            session_token: None,
        };
        let mut put = reqwest::Client::new().put(format!("http://{host}{path}"));
        for (header, value) in sigv4::sign(&request, &credentials, REGION, SystemTime::now()) {
            put = put.header(header, value);
        }
        let response = put.body("").send().await.expect("s3proxy answers");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "creating bucket {name}: {status} {body}\ns3proxy's last lines:\n{}",
            self.log()
        );
    }

    /// Its last lines of output.
    pub fn log(&self) -> String {
        lines(&self.log)
    }
}

impl Drop for S3Proxy {
    fn drop(&mut self) {
        // The data is thrown away: no need for a graceful stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The jar: `FIELDSYNC_S3PROXY_JAR`, or where `tests/s3proxy/fetch.sh` puts it.
fn jar() -> PathBuf {
    std::env::var_os("FIELDSYNC_S3PROXY_JAR").map_or_else(
        || {
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .join(format!("target/s3proxy/s3proxy-{VERSION}.jar"))
        },
        PathBuf::from,
    )
}

/// An access key id and secret of this instance's own.
fn credentials() -> (String, String) {
    static STARTED: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let instance = STARTED.fetch_add(1, Ordering::Relaxed);
    (
        format!("fieldsync-{}-{instance}", std::process::id()),
        format!("secret/{nanos:08x}+{instance}"),
    )
}

/// Reads `output` line by line on a thread of its own, so that s3proxy never blocks on a
/// full pipe, keeping the last lines in `log`; sends the port it listens on to `port` once it
/// says so (`Started ...ServerConnector@...{HTTP/1.1, (http/1.1)}{127.0.0.1:43155}`).
fn keep_reading(
    output: impl Read + Send + 'static,
    log: &Arc<Mutex<VecDeque<String>>>,
    mut port: Option<mpsc::Sender<u16>>,
) -> std::thread::JoinHandle<()> {
    let log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if line.contains("Started") && line.contains("ServerConnector") {
                let listening = line
                    .rsplit_once("{127.0.0.1:")
                    .and_then(|(_, rest)| rest.split_once('}'))
                    .and_then(|(number, _)| number.parse().ok());
                if let (Some(listening), Some(sender)) = (listening, port.take()) {
                    let _ = sender.send(listening);
                }
            }
            let mut log = log.lock().expect("the log lock");
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        }
    })
}

fn lines(log: &Mutex<VecDeque<String>>) -> String {
    let log = log.lock().expect("the log lock");
    log.iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}
