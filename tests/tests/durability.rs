//! Durability under SIGKILL: a device process writes and syncs against a real server while the
//! test kills it at random points, again and again. After every kill the store opens, SQLite's
//! integrity check passes, every write whose call had returned is there (the one write in
//! flight may or may not be), the outbox names only records the store has, and at the end a
//! sync brings the server and a second device to the same records.
//!
//! `FIELDSYNC_KILLS` (default 50) sets how many kills; `FIELDSYNC_KILL_SEED` the seed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use fieldsync_core::{Query, Store, SyncClient, SyncConfig};
use fieldsync_tests::open_device;
use fieldsync_tests::server::ServerProcess;
use rand::rngs::StdRng;
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

    fn id(&self) -> &str {
        match self {
            Op::Insert(id) | Op::Update(id, _) | Op::Splice(id, _) | Op::Delete(id) => id,
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

/// Reads the device's lines: each `ok` confirms the write announced before it.
fn follow(line: &str, model: &mut Model, in_flight: &mut Option<Op>) {
    if line == "ok" {
        in_flight
            .take()
            .expect("`ok` follows a `begin`")
            .apply(model);
    } else {
        *in_flight = Some(Op::parse(line));
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

/// Checks the store after a kill and returns the model it matches: the returned writes, plus
/// the write in flight if that one committed before the kill.
fn check_after_kill(path: &Path, model: &Model, in_flight: Option<&Op>, kill: usize) -> Model {
    let conn = rusqlite::Connection::open(path).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "after kill {kill}");
    drop(conn);

    let store = open_device(path);
    let with_in_flight = in_flight.map(|op| {
        let mut model = model.clone();
        op.apply(&mut model);
        (op.id().to_owned(), model)
    });
    for (id, expected) in model {
        let found = actual(&store, id);
        let alternative = with_in_flight
            .as_ref()
            .filter(|(in_flight_id, _)| in_flight_id == id)
            .map(|(_, model)| &model[id]);
        assert!(
            &found == expected || alternative == Some(&found),
            "after kill {kill}, record {id} is {found:?}; returned writes made it {expected:?}"
        );
    }
    // An insert in flight may have committed; every other record comes from a returned write.
    let known = store.query("clients", &Query::default()).unwrap();
    for record in known {
        assert!(
            model.contains_key(&record.id) || in_flight.map(Op::id) == Some(record.id.as_str()),
            "after kill {kill}, record {} appeared from nowhere",
            record.id
        );
    }
    for entry in store.outbox(1_000_000).unwrap() {
        store
            .document(&entry.collection, &entry.record_id)
            .unwrap_or_else(|err| {
                panic!("after kill {kill}, the outbox names a lost record: {err}")
            });
    }
    match with_in_flight {
        Some((id, committed)) if actual(&store, &id) == committed[&id] => committed,
        _ => model.clone(),
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

    let mut model = Model::new();
    for kill in 0..kills {
        let mut child = Command::new(DEVICE)
            .args(["churn", path.to_str().unwrap(), &server.url, &token])
            .arg((seed * 1000 + kill as u64).to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut in_flight = None;
        // Kill after a random number of lines: the device is somewhere in a write, a sync, or
        // between them.
        for _ in 0..rng.random_range(1..80) {
            let line = lines.next().expect("the device runs until killed").unwrap();
            follow(&line, &mut model, &mut in_flight);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Lines already in the pipe were printed before the kill: those writes returned.
        for line in lines {
            let line = line.unwrap();
            follow(&line, &mut model, &mut in_flight);
        }
        model = check_after_kill(&path, &model, in_flight.as_ref(), kill);
    }
    println!("{kills} kills survived; {} records tracked", model.len());

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
