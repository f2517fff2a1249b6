//! Real `fieldsync-server` processes on random loopback ports, with devices as core stores.

use std::path::Path;

use fieldsync_core::Filter;
use fieldsync_tests::server::{Client, ServerProcess, partial_push};
use fieldsync_tests::{fields, open_device};
use serde_json::json;

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

fn start(db: &Path) -> ServerProcess {
    ServerProcess::start(Path::new(SERVER), db)
}

#[test]
fn devices_sync_through_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("server.db"));
    assert!(
        server
            .banner
            .iter()
            .any(|line| line.contains("no users yet")),
        "{:?}",
        server.banner
    );
    let phone_token = server.user_with_device("ada", &["north"]);
    let tablet_token = server.device("ada");
    let phone = open_device(&dir.path().join("phone.db"));
    let tablet = open_device(&dir.path().join("tablet.db"));
    let (phone_client, tablet_client) = (
        Client::new(&server.url, &phone_token),
        Client::new(&server.url, &tablet_token),
    );

    for i in 0..30 {
        phone
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": format!("c{i}"), "notes": "n"})),
            )
            .unwrap();
    }
    assert_eq!(phone_client.push_outbox(&phone, "p1"), 30);
    let cursor = tablet_client.pull_into(&tablet, None);
    assert_eq!(tablet.count("clients", &Filter::All).unwrap(), 30);

    let id = tablet.query("clients", &Default::default()).unwrap()[3]
        .id
        .clone();
    tablet
        .splice_text("clients", &id, "notes", 1, 0, " from the tablet")
        .unwrap();
    assert_eq!(tablet_client.push_outbox(&tablet, "t1"), 1);
    phone_client.pull_into(&phone, None);
    assert_eq!(
        phone.get("clients", &id).unwrap().unwrap().fields["notes"],
        "n from the tablet"
    );
    let page = tablet_client.pull(Some(&cursor), 100).unwrap();
    assert!(
        page.records.is_empty(),
        "the tablet gets nothing back it pushed itself"
    );

    let (status, body) = Client::new(&server.url, "fs_bad")
        .pull(None, 10)
        .unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("\"unauthorized\""));
    assert!(server.terminate(), "SIGTERM stops the server cleanly");
}

#[test]
fn a_backup_restores_into_a_new_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("server.db"));
    let token = server.user_with_device("ada", &["north"]);
    let phone = open_device(&dir.path().join("phone.db"));
    for i in 0..10 {
        phone
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": format!("c{i}")})),
            )
            .unwrap();
    }
    Client::new(&server.url, &token).push_outbox(&phone, "p1");
    let backup = dir.path().join("backup.db");
    // Taken while the server runs.
    server.admin(&["backup", backup.to_str().unwrap()]);
    server.kill();

    let restored = start(&backup);
    let fresh = open_device(&dir.path().join("fresh.db"));
    Client::new(&restored.url, &token).pull_into(&fresh, None);
    assert_eq!(fresh.count("clients", &Filter::All).unwrap(), 10);
    assert!(restored.admin(&["devices"]).contains("ada"));
}

#[test]
fn logs_carry_request_ids_but_no_tokens_or_record_values() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server =
        ServerProcess::start_logging(Path::new(SERVER), dir.path().join("server.db"), Some(&log));
    let token = server.user_with_device("ada", &["north"]);
    let phone = open_device(&dir.path().join("phone.db"));
    let canary = "CANARY-7f3a-client-name";
    phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": canary, "notes": "CANARY-note-text"})),
        )
        .unwrap();
    let client = Client::new(&server.url, &token);
    client.push_outbox(&phone, "p1");
    client.pull_into(&open_device(&dir.path().join("tablet.db")), None);
    Client::new(&server.url, "fs_0123456789abcdef_CANARY")
        .pull(None, 1)
        .unwrap_err();
    assert!(server.terminate());

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() >= 4,
        "the server logged its requests:\n{text}"
    );
    let request_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request done"))
        .collect();
    assert!(request_lines.len() >= 3);
    assert!(
        request_lines.iter().all(|l| l.contains("request_id")),
        "{request_lines:?}"
    );
    let secret = token.rsplit('_').next().unwrap();
    for needle in ["CANARY", secret, token.as_str()] {
        assert!(!text.contains(needle), "the log contains `{needle}`");
    }
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("server.db"));
    let token = server.user_with_device("ada", &["north"]);
    let phone = open_device(&dir.path().join("phone.db"));
    phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ada"})),
        )
        .unwrap();
    let body = fieldsync_record::protocol::encode(&fieldsync_record::protocol::PushRequest {
        outbox_seq: None,
        batch_id: "p1".into(),
        records: phone
            .outbox(10)
            .unwrap()
            .into_iter()
            .map(Into::into)
            .collect(),
    });
    // The request is in flight: headers and half the body sent.
    let half = body.len() / 2;
    let begun = server.requests_begun();
    let mut connection = partial_push(&server.url, &token, &body, half);
    // A connection whose request the server has not yet read is closed at shutdown, so wait
    // until the push is being handled.
    server.wait_for_request_begun(begun);
    server.signal_terminate();
    server.wait_for_line("shutting down");
    // The request in flight completes after the server began shutting down.
    connection.write_all(&body[half..]).unwrap();
    let mut response = Vec::new();
    connection.read_to_end(&mut response).unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert!(server.wait(), "the server exits cleanly after the request");
    // The push was stored: a restarted server serves it.
    let restarted = start(&dir.path().join("server.db"));
    let page = Client::new(&restarted.url, &token).pull(None, 10).unwrap();
    assert_eq!(page.records.len(), 1);
}

/// Runs the server's command line on `db`; returns whether it succeeded and what it printed.
fn command(db: &Path, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(SERVER)
        .arg("--db")
        .arg(db)
        .args(args)
        .env("FIELDSYNC_LOG", "warn")
        .output()
        .expect("the command runs");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), printed)
}

#[test]
fn the_schema_is_set_shown_and_changed_only_compatibly_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let file = |name: &str, json: &serde_json::Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, json.to_string()).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ok, printed) = command(&db, &["schema", "show"]);
    assert!(!ok && printed.contains("no schema"), "{printed}");
    let clinic: serde_json::Value = serde_json::from_str(fieldsync_tests::CLINIC_SCHEMA).unwrap();
    let first = file("v1.json", &clinic);
    assert_eq!(
        command(&db, &["schema", "set", &first]),
        (true, "schema version 1 is in force\n".into())
    );
    let (ok, printed) = command(&db, &["schema", "set", &first]);
    assert!(ok && printed.contains("unchanged"), "{printed}");

    let mut removed = clinic.clone();
    removed["collections"]["clients"]["fields"]
        .as_object_mut()
        .unwrap()
        .remove("phone");
    let (ok, printed) = command(&db, &["schema", "set", &file("removed.json", &removed)]);
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("field `clients.phone` was removed"),
        "{printed}"
    );

    let mut added = clinic.clone();
    added["collections"]["clients"]["fields"]["pronouns"] = json!({"type": "string"});
    let (ok, printed) = command(&db, &["schema", "set", &file("v2.json", &added)]);
    assert!(ok, "{printed}");
    let (_, history) = command(&db, &["schema", "history"]);
    assert_eq!(history.lines().count(), 2, "{history}");
    assert!(history.starts_with("version 1 set 20"), "{history}");
    let (_, shown) = command(&db, &["schema", "show"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["version"], 2);
    assert_eq!(
        shown["collections"]["clients"]["fields"]["pronouns"]["type"],
        "string"
    );
    let (_, old) = command(&db, &["schema", "show", "--version", "1"]);
    assert!(!old.contains("pronouns"), "{old}");

    // A running server validates against the version set while it runs, and lists which
    // schema version each device runs.
    let server = start(&db);
    let token = server.user_with_device("ada", &["north"]);
    added["version"] = json!(2);
    let newer = fieldsync_core::Schema::from_json(&added.to_string()).unwrap();
    let phone = fieldsync_core::Store::open(
        dir.path().join("phone.db"),
        newer,
        fieldsync_core::StoreOptions::default(),
    )
    .unwrap();
    phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ada", "pronouns": "she/her"})),
        )
        .unwrap();
    assert_eq!(
        Client::new(&server.url, &token).push_outbox(&phone, "p1"),
        1
    );
}

#[test]
fn records_devices_would_refuse_are_refused_by_a_real_server_and_audited() {
    use automerge::transaction::Transactable as _;
    use fieldsync_record::protocol::{Payload, PushRecord, PushRequest, RejectCode};

    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("server.db"));
    let ada = server.user_with_device("ada", &["north", "south"]);
    let bo = server.user_with_device("bo", &["north", "south"]);
    // The app of a careless integration: the name is optional there and the scope field may
    // say anything.
    let actor = automerge::ActorId::random();
    let crafted = |id: &str, write: &dyn Fn(&mut automerge::AutoCommit)| {
        let mut doc = automerge::AutoCommit::new().with_actor(actor.clone());
        doc.put(automerge::ROOT, "caseload_id", "north").unwrap();
        doc.put(automerge::ROOT, "name", "Ada").unwrap();
        write(&mut doc);
        PushRecord {
            epoch: 0,
            collection: "clients".into(),
            id: id.into(),
            scope: "north".into(),
            payload: Payload::Changes(vec![serde_bytes::ByteBuf::from(
                doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
            )]),
        }
    };
    let request = PushRequest {
        outbox_seq: None,
        batch_id: "crafted".into(),
        records: vec![
            crafted("other-scope", &|d| {
                d.put(automerge::ROOT, "caseload_id", "south").unwrap()
            }),
            crafted("no-name", &|d| d.delete(automerge::ROOT, "name").unwrap()),
            crafted("deleted-yes", &|d| {
                d.put(automerge::ROOT, "_deleted", "yes").unwrap()
            }),
            crafted("fine", &|_| {}),
        ],
    };
    let response = Client::new(&server.url, &ada).push(&request).unwrap();
    let codes: Vec<Option<RejectCode>> = response
        .results
        .iter()
        .map(|r| r.rejected.as_ref().map(|x| x.code))
        .collect();
    let invalid = Some(RejectCode::InvalidRecord);
    assert_eq!(codes, vec![invalid, invalid, invalid, None]);

    // Another device stores everything it is sent: nothing is parked as refused.
    let tablet = open_device(&dir.path().join("tablet.db"));
    Client::new(&server.url, &bo).pull_into(&tablet, None);
    assert_eq!(tablet.count("clients", &Filter::All).unwrap(), 1);
    let audit = server.admin(&["audit", "--user", "ada"]);
    assert_eq!(audit.matches("refuse clients/").count(), 3, "{audit}");
    assert!(audit.contains("(invalid_record)"), "{audit}");
}

/// A record an older server stored damaged (an appended change whose checksum no longer
/// matches): a device pulling it refuses it rather than store bytes it cannot load; `check`
/// finds it and fails; `repair` rebuilds it from a device's good copy, and devices then get
/// it. A push of such a change is refused.
#[test]
fn a_damaged_record_is_found_refused_by_devices_and_repaired_from_a_device_s_copy() {
    use fieldsync_record::protocol::{Payload, PushRecord, PushRequest, RejectCode};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let server = start(&db);
    let token = server.user_with_device("ada", &["north"]);
    let client = Client::new(&server.url, &token);
    let phone = open_device(&dir.path().join("phone.db"));
    let id = phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ada"})),
        )
        .unwrap();
    client.push_outbox(&phone, "p1");
    phone
        .update("clients", &id, fields(json!({"name": "Ada L."})))
        .unwrap();
    let edit = match &phone.outbox(10).unwrap()[0].payload {
        fieldsync_core::RemotePayload::Changes(changes) => changes[0].clone(),
        fieldsync_core::RemotePayload::Document(_) => unreachable!(),
    };

    // The probe's input: the edit with its checksum flipped, refused; then the edit itself.
    let mut damaged = edit.clone();
    damaged[4] ^= 0x01;
    let push = |batch: &str, change: Vec<u8>| PushRequest {
        outbox_seq: None,
        batch_id: batch.into(),
        records: vec![PushRecord {
            epoch: 0,
            collection: "clients".into(),
            id: id.clone(),
            scope: "north".into(),
            payload: Payload::Changes(vec![serde_bytes::ByteBuf::from(change)]),
        }],
    };
    let refused = client.push(&push("bad", damaged.clone())).unwrap();
    let rejection = refused.results[0].rejected.as_ref().expect("refused");
    assert_eq!(rejection.code, RejectCode::Malformed);
    assert!(
        client.push(&push("good", edit.clone())).unwrap().results[0]
            .rejected
            .is_none()
    );
    assert!(command(&db, &["check"]).0);

    // What an older server stored for it.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let doc: Vec<u8> = conn
        .query_row("SELECT doc FROM records", [], |row| row.get(0))
        .unwrap();
    let at = doc.windows(edit.len()).position(|w| w == edit).unwrap();
    let mut stored = doc.clone();
    stored[at + 4] ^= 0x01;
    conn.execute("UPDATE records SET doc = ?1", [stored])
        .unwrap();
    drop(conn);

    let tablet = open_device(&dir.path().join("tablet.db"));
    let page = client.pull(None, 100).unwrap();
    let report = tablet
        .apply_remote(page.records.into_iter().map(Into::into).collect())
        .unwrap();
    assert_eq!(report.rejected.len(), 1);
    assert!(tablet.get("clients", &id).unwrap().is_none(), "refused");
    let (clean, printed) = command(&db, &["check"]);
    assert!(!clean, "{printed}");
    assert!(printed.contains(&format!(
        "clients/{id}: its stored bytes fail their checksums"
    )));
    assert!(
        printed.contains("1 records checked, 1 damaged"),
        "{printed}"
    );

    let copy = dir.path().join("copy.automerge");
    std::fs::write(&copy, phone.document("clients", &id).unwrap()).unwrap();
    let repaired = server.admin(&[
        "repair",
        "--collection",
        "clients",
        "--id",
        &id,
        "--from",
        copy.to_str().unwrap(),
    ]);
    assert!(repaired.contains("repaired with 2 changes"), "{repaired}");
    assert!(command(&db, &["check"]).0);
    let fresh = open_device(&dir.path().join("fresh.db"));
    client.pull_into(&fresh, None);
    assert_eq!(
        fresh.get("clients", &id).unwrap().unwrap().fields["name"],
        "Ada L."
    );
    assert!(server.admin(&["audit"]).contains("repair clients/"));
}

/// The server's peak memory under a burst of pushes whose Automerge data inflates far past
/// its size: 30 pushes at once from 10 devices, 20 of them a body of about 30 KB holding one
/// valid change that inflates to 30 MB (refused before Automerge parses it), 10 of them a
/// change that inflates to just under the 4 MiB document limit (parsed; stored for the device
/// that made it). Bounds: the peak stays under 200 MiB above what the idle server holds, and
/// memory is given back afterwards (resident size within 64 MiB of the idle server's); about
/// 85 and 25 MiB were measured.
#[test]
fn a_burst_of_inflating_pushes_stays_within_its_memory_bound() {
    use automerge::transaction::Transactable as _;
    use fieldsync_record::protocol::{Payload, PushRecord, PushRequest, RejectCode};
    use fieldsync_tests::memory_kib;

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        Path::new(SERVER),
        dir.path().join("server.db"),
        &["--requests-per-second", "0"],
        None,
    );
    let pid = server.pid().to_string();
    let tokens: Vec<String> = (0..10)
        .map(|i| server.user_with_device(&format!("user{i}"), &["north"]))
        .collect();
    let change_inflating_to = |len: usize| {
        let mut doc = automerge::AutoCommit::new();
        doc.put(automerge::ROOT, "caseload_id", "north").unwrap();
        doc.put(automerge::ROOT, "name", "a".repeat(len)).unwrap();
        let change = doc
            .get_last_local_change()
            .unwrap()
            .clone()
            .bytes()
            .to_vec();
        assert!(change.len() < 40_000, "{} bytes", change.len());
        change
    };
    let bomb = change_inflating_to(30 << 20);
    let largest = change_inflating_to((4 << 20) - 4096);
    let idle = memory_kib(&pid, "VmRSS").unwrap();
    let push = |token: &str, n: usize, change: &[u8]| {
        let request = PushRequest {
            outbox_seq: None,
            batch_id: format!("burst-{n}"),
            records: vec![PushRecord {
                epoch: 0,
                collection: "clients".into(),
                id: format!("burst-{n}"),
                scope: "north".into(),
                payload: Payload::Changes(vec![serde_bytes::ByteBuf::from(change.to_vec())]),
            }],
        };
        Client::new(&server.url, token).push(&request)
    };
    let (bomb, largest, push) = (&bomb, &largest, &push);
    let answers: Vec<_> = std::thread::scope(|scope| {
        let pushes: Vec<_> = (0..30)
            .map(|n| {
                let token = &tokens[n % tokens.len()];
                let is_bomb = n % 3 != 2;
                let change = if is_bomb { bomb } else { largest };
                scope.spawn(move || (is_bomb, push(token, n, change)))
            })
            .collect();
        pushes.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let peak = memory_kib(&pid, "VmHWM").unwrap();
    let after = memory_kib(&pid, "VmRSS").unwrap();
    let mut stored = 0;
    for (is_bomb, answer) in &answers {
        match answer {
            Ok(response) => match response.results[0].rejected.as_ref() {
                None => stored += 1,
                Some(rejection) if *is_bomb => assert_eq!(rejection.code, RejectCode::TooLarge),
                Some(_) => {}
            },
            // A device's third push at once (429); a push whose actor another device bound
            // meanwhile (503, try again).
            Err((status, body)) => assert!([429, 503].contains(status), "{status} {body}"),
        }
    }
    assert!(stored >= 1, "the largest record that fits is stored");
    println!(
        "idle {} MiB, peak {} MiB, after {} MiB",
        idle / 1024,
        peak / 1024,
        after / 1024
    );
    assert!(peak < idle + 200 * 1024, "peak {peak} KiB, idle {idle} KiB");
    assert!(
        after < idle + 64 * 1024,
        "after {after} KiB, idle {idle} KiB"
    );
}

/// Every malformed body, query, header and path a probe tried, with a canary in each place in
/// turn (where a string, bytes, a number, an enum name or a list is expected; as a map key;
/// as an unknown field): no answer and no log line holds the canary, and every answer is
/// short.
#[test]
fn malformed_input_is_never_echoed_into_answers_or_logs() {
    use fieldsync_record::protocol;
    use serde_json::Value;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server =
        ServerProcess::start_logging(Path::new(SERVER), dir.path().join("server.db"), Some(&log));
    let token = server.user_with_device("ada", &["north"]);
    let canary = "CANARY-5e1d".repeat(2_000);
    let base = json!({
        "batch_id": "b1",
        "outbox_seq": 1,
        "records": [{"collection": "clients", "id": "c1", "scope": "north",
                     "payload": {"changes": [[133, 111, 74, 131]]}}],
    });
    // Each place a value sits, as a JSON pointer, and what a canary may stand in for there.
    let places = [
        "/batch_id",
        "/outbox_seq",
        "/records",
        "/records/0",
        "/records/0/collection",
        "/records/0/id",
        "/records/0/scope",
        "/records/0/payload",
        "/records/0/payload/changes",
        "/records/0/payload/changes/0",
        "/records/0/payload/changes/0/0",
    ];
    let stand_ins = [
        json!(canary),
        json!([canary]),
        json!({ canary.clone(): 1 }),
        json!({"document": canary}),
    ];
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let packed = |value: &Value| deflate(&rmp_serde::to_vec_named(value).unwrap());
    for place in places {
        for stand_in in &stand_ins {
            let mut body = base.clone();
            *body.pointer_mut(place).unwrap() = stand_in.clone();
            bodies.push(packed(&body));
        }
    }
    for map in ["", "/records/0", "/records/0/payload"] {
        let mut body = base.clone();
        body.pointer_mut(map)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(canary.clone(), json!(canary));
        bodies.push(packed(&body));
    }
    // An unknown enum name as the payload's variant.
    let mut body = base.clone();
    *body.pointer_mut("/records/0/payload").unwrap() = json!({ canary.clone(): [] });
    bodies.push(packed(&body));
    // Not DEFLATE at all, and plain MessagePack of the canary.
    bodies.push(canary.as_bytes().to_vec());
    bodies.push(rmp_serde::to_vec(&canary).unwrap());

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::blocking::Client::new();
    let mut answers = Vec::new();
    for body in bodies {
        let response = http
            .post(format!("{}/v1/push", server.url))
            .bearer_auth(&token)
            .header(protocol::VERSION_HEADER, "1")
            .body(body)
            .send()
            .unwrap();
        answers.push((
            response.status().as_u16(),
            response.bytes().unwrap().to_vec(),
        ));
    }
    let short = &canary[..200];
    let gets = [
        format!("/v1/pull?cursor={short}"),
        format!("/v1/pull?limit={short}"),
        format!("/v1/pull?actor={short}"),
        format!("/v1/pull?schema_version={short}"),
        format!("/v1/pull?outbox_seq={short}"),
        format!("/v1/{short}"),
        format!("/{short}?{short}={short}"),
    ];
    for path in &gets {
        let response = http
            .get(format!("{}{path}", server.url))
            .bearer_auth(&token)
            .header(protocol::VERSION_HEADER, "1")
            .send()
            .unwrap();
        answers.push((
            response.status().as_u16(),
            response.bytes().unwrap().to_vec(),
        ));
    }
    for (name, value) in [
        (protocol::VERSION_HEADER, short),
        ("authorization", &format!("Bearer {short}")[..]),
        (
            "authorization",
            &format!("Bearer fs_0123456789abcdef_{short}")[..],
        ),
    ] {
        let mut request = http
            .get(format!("{}/v1/pull", server.url))
            .header(name, value);
        if name != "authorization" {
            request = request.bearer_auth(&token);
        }
        let response = request.send().unwrap();
        answers.push((
            response.status().as_u16(),
            response.bytes().unwrap().to_vec(),
        ));
    }
    let method = reqwest::Method::from_bytes(short.as_bytes()).unwrap();
    let response = http
        .request(method, format!("{}/v1/push", server.url))
        .send()
        .unwrap();
    answers.push((
        response.status().as_u16(),
        response.bytes().unwrap().to_vec(),
    ));
    assert!(server.terminate());

    for (status, answer) in &answers {
        let text = String::from_utf8_lossy(answer);
        assert!(
            !text.contains("CANARY"),
            "{status}: {}",
            &text[..text.len().min(300)]
        );
        assert!(
            answer.len() < 1_000,
            "{status}: an answer of {} bytes",
            answer.len()
        );
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    let echoed = logged.lines().find(|line| line.contains("CANARY"));
    assert!(
        echoed.is_none(),
        "{}",
        &echoed.unwrap_or("")[..300.min(echoed.unwrap_or("").len())]
    );
    println!(
        "{} requests, no canary in answers or {} log lines",
        answers.len(),
        logged.lines().count()
    );
}

/// `bytes` compressed as the protocol's bodies are (raw DEFLATE).
fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, bytes).unwrap();
    encoder.finish().unwrap()
}

/// Under an open-file limit of 256, 300 connections that send nothing or trickle a request's
/// head do not stop `/health` or a pull from being answered, and the server closes each of
/// them within its head timeout (1 second here; 2 for the spare connections past the limit).
/// This test waits on those timeouts: they are what it checks.
#[test]
fn idle_and_slow_connections_are_closed_and_health_is_still_answered() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let limited = dir.path().join("server-with-256-files");
    std::fs::write(
        &limited,
        format!("#!/bin/sh\nulimit -n 256\nexec \"{SERVER}\" \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        &limited,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let server = ServerProcess::start_with(
        &limited,
        dir.path().join("server.db"),
        &["--head-timeout-secs", "1", "--requests-per-second", "0"],
        None,
    );
    let token = server.user_with_device("ada", &["north"]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut held: Vec<TcpStream> = (0..300)
        .map(|n| {
            let mut stream = TcpStream::connect(&address).unwrap();
            if n % 2 == 0 {
                stream.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
            }
            stream
        })
        .collect();
    // One more line of the head for the trickling half, well inside a second.
    std::thread::sleep(Duration::from_millis(300));
    for stream in held.iter_mut().step_by(2) {
        let _ = stream.write_all(b"x-slow: 1\r\n");
    }

    let started = Instant::now();
    let client = Client::new(&server.url, &token);
    let health = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("{}/health", server.url))
        .send()
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(client.pull(None, 10).is_ok());
    println!("health and a pull answered in {:?}", started.elapsed());

    for (n, stream) in held.iter_mut().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = Vec::new();
        // Closed by the server: the read ends (after a 408 for a head that timed out, or
        // nothing), where an open connection would block until the read timeout.
        let ended = stream.read_to_end(&mut answer).is_ok() || answer.is_empty();
        let waited = started.elapsed();
        assert!(
            ended && waited < Duration::from_secs(5),
            "connection {n} open after {waited:?}"
        );
    }
    assert!(server.terminate());
}

/// A change overwriting an operation its document lacks makes Automerge panic in a build with
/// debug assertions (this test's server; a release build drops the operation instead): the
/// record is refused, and the log holds each panic (the document is loaded twice: for the
/// push's actor, then to merge it) as one JSON warning with the request's id, every line of
/// it JSON.
#[test]
fn a_caught_panic_is_one_json_warning_with_the_request_id() {
    use automerge::transaction::Transactable as _;
    use fieldsync_record::protocol::{Payload, PushRecord, PushRequest, RejectCode};

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server =
        ServerProcess::start_logging(Path::new(SERVER), dir.path().join("server.db"), Some(&log));
    let token = server.user_with_device("ada", &["north"]);
    let actor = automerge::ActorId::random();
    let mut doc = automerge::AutoCommit::new().with_actor(actor.clone());
    doc.put(automerge::ROOT, "caseload_id", "north").unwrap();
    doc.put(automerge::ROOT, "name", "Ada").unwrap();
    let mut expanded = doc.get_last_local_change().unwrap().decode();
    expanded.operations[0].pred = vec![automerge::legacy::OpId::new(5, &actor)].into();
    expanded.hash = None;
    let crafted = automerge::Change::from(expanded).raw_bytes().to_vec();
    let request = PushRequest {
        outbox_seq: None,
        batch_id: "crafted".into(),
        records: vec![PushRecord {
            epoch: 0,
            collection: "clients".into(),
            id: "c1".into(),
            scope: "north".into(),
            payload: Payload::Document(serde_bytes::ByteBuf::from(crafted)),
        }],
    };
    let response = Client::new(&server.url, &token).push(&request).unwrap();
    let rejected = response.results[0].rejected.as_ref().unwrap();
    assert_eq!(rejected.code, RejectCode::Malformed);
    assert!(server.terminate());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let panics: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| line["fields"]["panic"].is_string())
        .collect();
    assert!(!panics.is_empty(), "{text}");
    for panic in panics {
        assert_eq!(panic["level"], "WARN");
        assert!(panic["span"]["request_id"].is_string(), "{panic}");
    }
}

/// Names with line breaks are refused on the command line, and a refused push whose id and
/// scope carry a forged audit line is printed as one line, escaped.
#[test]
fn the_audit_output_cannot_be_forged_with_line_breaks() {
    use fieldsync_record::protocol::{Payload, PushRecord, PushRequest};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let server = start(&db);
    let token = server.user_with_device("ada", &["north"]);
    for args in [
        &["create-user", "eve\n2026-01-01T00:00:00.000Z admin"][..],
        &["grant", "--user", "ada", "--scope", "north\u{202e}"],
        &["enroll-device", "--user", "ada", "--name", "tablet\r\n"],
    ] {
        let (ok, printed) = command(&db, args);
        assert!(
            !ok && printed.contains("control characters"),
            "{args:?}: {printed}"
        );
    }
    let forged = "\n2026-01-01T00:00:00.000Z admin device 1 push clients/x in north";
    let request = PushRequest {
        outbox_seq: None,
        batch_id: "forged".into(),
        records: vec![PushRecord {
            epoch: 0,
            collection: "clients".into(),
            id: format!("c1{forged}"),
            scope: format!("north{forged}"),
            payload: Payload::Changes(vec![serde_bytes::ByteBuf::from(vec![1])]),
        }],
    };
    let response = Client::new(&server.url, &token).push(&request).unwrap();
    assert!(response.results[0].rejected.is_some());
    // The device's user's lines: the administrator's (creating ada, enrolling her device)
    // are the server's.
    let audit = server.admin(&["audit", "--user", "ada"]);
    let lines: Vec<&str> = audit.lines().collect();
    assert_eq!(lines.len(), 1, "{audit}");
    assert!(
        lines[0].contains("refuse") && lines[0].contains("\\u{a}2026"),
        "{audit}"
    );
}
