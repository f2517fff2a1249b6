//! A throwaway PostgreSQL cluster for tests: created in a temporary directory, listening on a
//! free loopback port (and a socket in that directory), stopped and deleted when dropped.
//!
//! The server programs are found on `PATH` or under `/usr/lib/postgresql/<version>/bin`
//! (Debian's `postgresql` package; `scripts/test` installs it when missing). PostgreSQL
//! refuses to run as root, so as root the cluster runs as the `postgres` user that package
//! creates. A missing PostgreSQL fails the test that asked for it, with a message saying how
//! to install it: tests never skip silently.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// A running PostgreSQL cluster that exists only for the test holding it.
pub struct TestPostgres {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    next_database: AtomicU32,
    log: Arc<Mutex<Vec<String>>>,
}

/// The user every test database belongs to (a superuser, trusted on loopback).
const USER: &str = "fieldsync";

impl TestPostgres {
    /// Creates and starts a cluster; panics with the reason if it cannot.
    pub fn start() -> TestPostgres {
        let bin = find_bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server programs (initdb, postgres) were not found on PATH or in \
                 /usr/lib/postgresql/*/bin; install them with `apt-get install postgresql` \
                 (scripts/test does this)"
            )
        });
        let owner = cluster_owner();
        let dir = tempfile::Builder::new()
            .prefix("fieldsync-pg-")
            .tempdir()
            .expect("a temporary directory");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("the cluster directory can be given to the postgres user");
        }
        let data = dir.path().join("data");
        let init = as_owner(Command::new(bin.join("initdb")), owner)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("initdb runs");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        // A port that was free a moment ago may be taken by the time PostgreSQL binds it;
        // then it exits at once, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            if let Some((child, log)) = start_server(&bin, &data, dir.path(), port, owner) {
                return TestPostgres {
                    child,
                    dir,
                    port,
                    next_database: AtomicU32::new(0),
                    log,
                };
            }
        }
        panic!("PostgreSQL did not start on any of 5 free ports");
    }

    /// A URL of the cluster's `postgres` database.
    pub fn admin_url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of `database` on this cluster.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn database(&self) -> String {
        let name = format!(
            "test_{}",
            self.next_database.fetch_add(1, Ordering::Relaxed)
        );
        let mut client = postgres::Client::connect(&self.admin_url(), postgres::NoTls)
            .unwrap_or_else(|err| panic!("cannot connect to the test cluster: {err}"));
        // A name made here, never from input: safe to splice into the statement.
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("the database is created");
        self.url_of(&name)
    }

    /// The directory holding the cluster (its data, socket and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the server logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("the log lock").clone()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown, no checkpoint; the cluster is thrown away.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Starts `postgres` and waits (by reading its log) until it accepts connections; `None` if
/// it exited first because the port was taken.
fn start_server(
    bin: &Path,
    data: &Path,
    socket_dir: &Path,
    port: u16,
    owner: Option<(u32, u32)>,
) -> Option<(Child, Arc<Mutex<Vec<String>>>)> {
    let mut child = as_owner(Command::new(bin.join("postgres")), owner)
        .arg("-D")
        .arg(data)
        .arg("-k")
        .arg(socket_dir)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        // Throwaway data: durability buys nothing here and costs seconds.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
        .args(["-c", "lc_messages=C", "-c", "logging_collector=off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("postgres starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let lines = log.clone();
    // Keep reading so the server never blocks on a full pipe; report the ready line.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("database system is ready to accept connections") {
                let _ = ready_tx.send(());
            }
            lines.lock().expect("the log lock").push(line);
        }
    });
    // The channel closes without a message if postgres exits before it is ready.
    if ready_rx.recv().is_ok() {
        return Some((child, log));
    }
    let _ = child.wait();
    let text = log.lock().expect("the log lock").join("\n");
    assert!(
        text.contains("could not bind") || text.contains("Address already in use"),
        "postgres exited before it was ready:\n{text}"
    );
    None
}

/// As root, the `postgres` user's uid and gid (PostgreSQL will not run as root).
fn cluster_owner() -> Option<(u32, u32)> {
    if id(&["-u"]) != Some(0) {
        return None;
    }
    let uid = id(&["-u", "postgres"]);
    let gid = id(&["-g", "postgres"]);
    match (uid, gid) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => panic!(
            "running as root, the test cluster needs the `postgres` user, which Debian's \
             postgresql package creates; install it with `apt-get install postgresql`"
        ),
    }
}

fn id(args: &[&str]) -> Option<u32> {
    let output = Command::new("id").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}

fn as_owner(mut command: Command, owner: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    command
}

/// `initdb` and `postgres` on PATH, or in the newest `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let has_programs = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|dir| has_programs(dir)) {
        // Resolve symlinks so that postgres finds its libraries beside its real path.
        let real = dir.join("postgres").canonicalize().ok()?;
        return real.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_programs(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}
