//! Durability under SIGKILL: a device process writes and syncs against a real server while the
//! test kills it, again and again. After every kill the store opens, SQLite's integrity check
//! passes, the records are exactly what the returned writes made them (with the write in
//! flight if it had committed), the outbox names only records the store has, and at the end a
//! sync brings the server and a second device to the same records.
//!
//! The device stops after each line it prints until the test answers (see `fieldsync-device
//! churn`), and the test kills it at a stop picked from the seed: in a write (committed, its
//! call not returned), in a sync (a push about to be sent; answered by the server but not
//! stored; an answer or a pulled page stored), or between steps. The device draws its writes
//! from a seed the test derives, so a seed replays the same writes, syncs and kills. No kill
//! falls inside an SQLite commit, which cannot be placed from outside; that is SQLite's own
//! atomic commit to keep.
//!
//! `FIELDSYNC_KILLS` (default 50) sets how many kills; `FIELDSYNC_KILL_SEED` the seed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

use fieldsync_core::{Query, Store, SyncClient, SyncConfig};
use fieldsync_tests::open_device;
use fieldsync_tests::server::ServerProcess;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");
const DEVICE: &str = env!("CARGO_BIN_EXE_fieldsync-device");

/// What the test expects of one record: `None` once deleted.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    phone: Option<String>,
    notes: String,
}

type Model = BTreeMap<String, Option<Expected>>;

/// A write the device announced, as `begin <op> <id> [<value>]`.
#[derive(Debug, Clone)]
enum Op {
    Insert(String),
    Update(String, String),
    Splice(String, String),
    Delete(String),
}

impl Op {
    fn parse(line: &str) -> Op {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["begin", "insert", id] => Op::Insert(id.to_string()),
            ["begin", "update", id, phone] => Op::Update(id.to_string(), phone.to_string()),
            ["begin", "splice", id, text] => Op::Splice(id.to_string(), text.to_string()),
            ["begin", "delete", id] => Op::Delete(id.to_string()),
            _ => panic!("the device printed {line:?}"),
        }
    }

    fn apply(&self, model: &mut Model) {
        let live = |model: &mut Model, id: &str| -> Expected {
            model[id]
                .clone()
                .expect("the device writes only live records")
        };
        match self {
            Op::Insert(id) => {
                model.insert(
                    id.clone(),
                    Some(Expected {
                        phone: None,
                        notes: "n".into(),
                    }),
                );
            }
            Op::Update(id, phone) => {
                let mut record = live(model, id);
                record.phone = Some(phone.clone());
                model.insert(id.clone(), Some(record));
            }
            Op::Splice(id, text) => {
                let mut record = live(model, id);
                record.notes.push_str(text);
                model.insert(id.clone(), Some(record));
            }
            Op::Delete(id) => {
                model.insert(id.clone(), None);
            }
        }
    }
}

/// A line the device stops at, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    /// `begin ...`: a write announced, its call not made.
    Begin,
    /// `committed`: the write committed, its call not returned.
    Committed,
    /// `ok`: the write's call returned.
    Returned,
    /// `push`: a push about to be sent.
    Push,
    /// `pushed`: the server answered a push, the device has not stored the answer.
    Pushed,
    /// `stored`: a push's answer stored.
    Stored,
    /// `page`: a pulled page stored.
    Page,
    /// `synced ...`: the sync returned.
    Synced,
}

const STOPS: [Stop; 8] = [
    Stop::Begin,
    Stop::Committed,
    Stop::Returned,
    Stop::Push,
    Stop::Pushed,
    Stop::Stored,
    Stop::Page,
    Stop::Synced,
];

/// Where a kill at a stop lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    InWrite,
    InSync,
    BetweenSteps,
}

impl Stop {
    fn place(self) -> Place {
        match self {
            Stop::Committed => Place::InWrite,
            Stop::Push | Stop::Pushed | Stop::Stored | Stop::Page => Place::InSync,
            Stop::Begin | Stop::Returned | Stop::Synced => Place::BetweenSteps,
        }
    }
}

/// What the device's lines have told the test.
#[derive(Default)]
struct Device {
    /// The records as the returned writes left them.
    model: Model,
    /// The write announced and not returned, and whether it committed.
    in_flight: Option<(Op, bool)>,
    /// Lines read, over every run: the same seed reads the same lines.
    lines: usize,
    syncs: usize,
    pushed: usize,
}

impl Device {
    /// Follows one line; returns the stop it is.
    fn follow(&mut self, line: &str, context: &str) -> Stop {
        self.lines += 1;
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["begin", ..] => {
                self.in_flight = Some((Op::parse(line), false));
                Stop::Begin
            }
            ["committed"] => {
                let (_, committed) = self.in_flight.as_mut().expect("a write is in flight");
                *committed = true;
                Stop::Committed
            }
            ["ok"] => {
                let (op, committed) = self.in_flight.take().expect("a write is in flight");
                assert!(committed, "{context}: {op:?} returned without committing");
                op.apply(&mut self.model);
                Stop::Returned
            }
            ["push"] => Stop::Push,
            ["pushed"] => Stop::Pushed,
            ["stored"] => Stop::Stored,
            ["page"] => Stop::Page,
            ["synced", pushed, rejected, _pulled] => {
                assert_eq!(*rejected, "0", "{context}: the server refused writes");
                self.pushed += pushed.parse::<usize>().unwrap();
                self.syncs += 1;
                Stop::Synced
            }
            ["sync-failed", ..] => panic!("{context}: a sync no kill interrupted failed: {line}"),
            _ => panic!("{context}: the device printed {line:?}"),
        }
    }

    /// The records a kill must leave: those of the returned writes, and the write in flight
    /// if it committed. The model moves on to them.
    fn killed(&mut self) -> &Model {
        if let Some((op, true)) = self.in_flight.take() {
            op.apply(&mut self.model);
        }
        &self.model
    }
}

fn actual(store: &Store, id: &str) -> Option<Expected> {
    store.get("clients", id).unwrap().map(|record| Expected {
        phone: record
            .fields
            .get("phone")
            .map(|v| v.as_str().unwrap().to_owned()),
        notes: record.fields["notes"].as_str().unwrap().to_owned(),
    })
}

/// Checks the store after a kill against the records it must hold.
fn check_after_kill(path: &Path, expected: &Model, context: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "{context}");
    drop(conn);

    let store = open_device(path);
    for (id, record) in expected {
        let found = actual(&store, id);
        assert_eq!(&found, record, "{context}: record {id}");
    }
    for record in store.query("clients", &Query::default()).unwrap() {
        assert!(
            expected.get(&record.id).is_some_and(Option::is_some),
            "{context}: record {} appeared from nowhere",
            record.id
        );
    }
    for entry in store.outbox(1_000_000).unwrap() {
        store
            .document(&entry.collection, &entry.record_id)
            .unwrap_or_else(|err| panic!("{context}: the outbox names a lost record: {err}"));
    }
}

#[test]
fn a_device_killed_at_random_loses_no_returned_write() {
    let kills: usize = std::env::var("FIELDSYNC_KILLS").map_or(50, |v| v.parse().unwrap());
    let seed: u64 = std::env::var("FIELDSYNC_KILL_SEED").map_or(7, |v| v.parse().unwrap());
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // The churning device syncs after one write in five, more often than the per-device rate
    // limit allows; the limit is not under test here, and the final sync must not be refused.
    let server = ServerProcess::start_with(
        Path::new(SERVER),
        dir.path().join("server.db"),
        &["--requests-per-second", "0"],
        None,
    );
    let token = server.user_with_device("ada", &["north"]);
    let reader_token = server.device("ada");
    let path = dir.path().join("phone.db");

    let mut device = Device::default();
    let mut round = Vec::new();
    let mut kills_at: BTreeMap<Stop, usize> = BTreeMap::new();
    for kill in 0..kills {
        // Each round of kills stops once at every kind of stop, in an order the seed picks.
        if round.is_empty() {
            round = STOPS.to_vec();
            round.shuffle(&mut rng);
        }
        let target = round.pop().unwrap();
        let occurrence = rng.random_range(1..=8);
        let context = format!("seed {seed}, kill {kill} at {target:?} {occurrence}");
        let mut child = Command::new(DEVICE)
            .args(["churn", path.to_str().unwrap(), &server.url, &token])
            .arg((seed * 1000 + kill as u64).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut answers = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        for read in 1.. {
            assert!(read < 10_000, "{context}: the device never got there");
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{context}: the device ended"))
                .unwrap();
            if device.follow(&line, &context) == target {
                seen += 1;
                if seen == occurrence {
                    break;
                }
            }
            writeln!(answers, "go").unwrap();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            lines.next().is_none(),
            "{context}: the device went on past its stop"
        );
        *kills_at.entry(target).or_default() += 1;
        check_after_kill(&path, device.killed(), &context);
    }
    let mut places: BTreeMap<Place, usize> = BTreeMap::new();
    for (stop, count) in &kills_at {
        *places.entry(stop.place()).or_default() += count;
    }
    let count = |place| places.get(&place).copied().unwrap_or(0);
    println!(
        "{kills} kills survived (seed {seed}): {} in a write, {} in a sync, {} between steps; \
         by stop {kills_at:?}; {} lines, {} syncs returned, {} entries pushed, {} records tracked",
        count(Place::InWrite),
        count(Place::InSync),
        count(Place::BetweenSteps),
        device.lines,
        device.syncs,
        device.pushed,
        device.model.len()
    );
    for place in [Place::InWrite, Place::InSync, Place::BetweenSteps] {
        assert!(
            count(place) >= kills / STOPS.len(),
            "too few kills {place:?}: {kills_at:?}"
        );
    }

    // Everything converges: the device pushes what it has, a second device pulls it all.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let phone = open_device(&path);
    let client = SyncClient::new(SyncConfig::new(&server.url, &token)).unwrap();
    runtime.block_on(client.sync_now(&phone)).unwrap();
    assert_eq!(phone.outbox_len().unwrap(), 0);
    let reader = open_device(&dir.path().join("reader.db"));
    let client = SyncClient::new(SyncConfig::new(&server.url, &reader_token)).unwrap();
    runtime.block_on(client.sync_now(&reader)).unwrap();
    let records = |store: &Store| {
        store
            .query("clients", &Query::default())
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.fields))
            .collect::<Vec<_>>()
    };
    assert_eq!(records(&reader), records(&phone));
    assert!(!records(&phone).is_empty());
}
