//! Who may read and write what, against a real server process logging at debug level: every
//! endpoint with every kind of bad token, and every read and write of a scope not granted. No
//! refused request may return record data, no scope may leak, and the log may hold no token and
//! no record value.
//!
//! Users and grants: ada writes `north` and reads `south`; dave writes `south`; bob writes
//! `west`; carol reads `north`; nobody holds `east`; the auditor reads every scope and checks
//! at the end that nothing new was written.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;

use automerge::transaction::Transactable as _;
use fieldsync_core::{RemotePayload, Store};
use fieldsync_record::protocol::{
    self, ErrorBody, Payload, PullResponse, PushRecord, PushRequest, PushResponse, RejectCode,
};
use fieldsync_tests::postgres::TestPostgres;
use fieldsync_tests::server::ServerProcess;
use fieldsync_tests::{fields, open_device};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::json;

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

const SCOPES: [&str; 4] = ["north", "south", "west", "east"];

/// Marks every record value, so that a leak of any of them is found by a plain search.
const VALUE_CANARY: &str = "CANARY-clinical";

/// A user and what their device may do.
struct User {
    name: &'static str,
    token: String,
    reads: Vec<&'static str>,
    writes: Vec<&'static str>,
}

/// The requests tried, by category, and the checks every answer must pass.
struct Probe {
    http: reqwest::blocking::Client,
    url: String,
    /// Strings no answer to a refused request, and no log line, may contain.
    secrets: Vec<String>,
    tried: BTreeMap<&'static str, usize>,
    /// Answers by category and status, for the figures in docs/RELIABILITY.md.
    answered: BTreeMap<(&'static str, u16), usize>,
}

enum Auth {
    None,
    Header(HeaderValue),
}

impl Auth {
    fn bearer(token: &str) -> Auth {
        Auth::Header(HeaderValue::from_str(&format!("Bearer {token}")).unwrap())
    }
}

impl Probe {
    fn send(
        &mut self,
        category: &'static str,
        method: Method,
        path: &str,
        auth: &Auth,
        body: Option<Vec<u8>>,
    ) -> (u16, Vec<u8>) {
        *self.tried.entry(category).or_default() += 1;
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header(protocol::VERSION_HEADER, "1");
        if let Auth::Header(value) = auth {
            request = request.header(AUTHORIZATION, value.clone());
        }
        if let Some(body) = body {
            // JSON bodies (the records API's) say so; pushes are the protocol's own type.
            if body.first() == Some(&b'{') {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
            }
            request = request.body(body);
        }
        let response = request.send().expect("the server answers every request");
        let status = response.status().as_u16();
        *self.answered.entry((category, status)).or_default() += 1;
        (status, response.bytes().expect("the body reads").to_vec())
    }

    /// A refused request: a 4xx whose body names none of the secrets, and the JSON error body
    /// wherever the router reached a handler.
    fn assert_refused(&self, what: &str, status: u16, body: &[u8], expected: u16) {
        assert_eq!(
            status,
            expected,
            "{what}: {}",
            String::from_utf8_lossy(body)
        );
        if !body.is_empty() {
            let error: ErrorBody = serde_json::from_slice(body)
                .unwrap_or_else(|_| panic!("{what}: the error body is JSON"));
            assert!(!error.message.is_empty(), "{what}");
        }
        self.assert_no_secret(what, body);
    }

    fn assert_no_secret(&self, what: &str, body: &[u8]) {
        let text = String::from_utf8_lossy(body);
        for secret in &self.secrets {
            assert!(!text.contains(secret.as_str()), "{what} leaked `{secret}`");
        }
    }

    fn push(
        &mut self,
        category: &'static str,
        auth: &Auth,
        request: &PushRequest,
    ) -> (u16, Vec<u8>) {
        self.send(
            category,
            Method::POST,
            "/v1/push",
            auth,
            Some(protocol::encode(request)),
        )
    }

    fn pull(&mut self, category: &'static str, auth: &Auth, query: &str) -> (u16, Vec<u8>) {
        self.send(
            category,
            Method::GET,
            &format!("/v1/pull{query}"),
            auth,
            None,
        )
    }
}

fn decoded<T: serde::de::DeserializeOwned>(what: &str, status: u16, body: &[u8]) -> T {
    assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(body));
    protocol::decode(body, 256 << 20).expect("a success body decodes")
}

/// Whether a pulled record carries any record value: in its values or its Automerge bytes.
fn carries_values(page: &PullResponse) -> bool {
    let needle = VALUE_CANARY.as_bytes();
    page.records.iter().any(|record| {
        let in_fields = record
            .fields
            .as_ref()
            .is_some_and(|f| serde_json::to_string(f).unwrap().contains(VALUE_CANARY));
        let bytes: Vec<&[u8]> = match &record.payload {
            Payload::Changes(changes) => changes.iter().map(|c| c.as_slice()).collect(),
            Payload::Document(doc) => vec![doc.as_slice()],
        };
        in_fields
            || bytes
                .iter()
                .any(|b| b.windows(needle.len()).any(|w| w == needle))
    })
}

/// A cursor as the server encodes it (MessagePack `[documents, seq, scopes]`, in hex), forged.
fn forged_cursor(documents: bool, seq: i64, scopes: &[&str]) -> String {
    let mut bytes = vec![0x93, if documents { 0xc3 } else { 0xc2 }, 0xd3];
    bytes.extend(seq.to_be_bytes());
    bytes.push(0x90 + u8::try_from(scopes.len()).unwrap());
    for scope in scopes {
        bytes.push(0xa0 + u8::try_from(scope.len()).unwrap());
        bytes.extend(scope.as_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn insert(store: &Store, scope: &str, i: usize) -> String {
    store
        .insert(
            "clients",
            fields(json!({
                "caseload_id": scope,
                "name": format!("{VALUE_CANARY}-name-{scope}-{i}"),
                "notes": format!("{VALUE_CANARY}-note-{scope}-{i}: sleeps badly, new medication"),
            })),
        )
        .unwrap()
}

fn outbox_request(store: &Store, batch_id: &str) -> PushRequest {
    PushRequest {
        outbox_seq: None,
        batch_id: batch_id.into(),
        records: store
            .outbox(1000)
            .unwrap()
            .into_iter()
            .map(PushRecord::from)
            .collect(),
    }
}

fn enroll_with(server: &ServerProcess, user: &str, extra: &[&str]) -> String {
    let mut args = vec!["enroll-device", "--user", user, "--name", "extra"];
    args.extend(extra);
    server
        .admin(&args)
        .lines()
        .find_map(|line| line.strip_prefix("token: "))
        .expect("enroll-device prints a token")
        .to_owned()
}

fn token_id(token: &str) -> &str {
    token.split('_').nth(1).unwrap()
}

/// A new record in `scope` made by `actor` (hex), as the device holding that actor would.
fn record_by(actor: &str, id: &str, scope: &str) -> PushRecord {
    let mut doc =
        automerge::AutoCommit::new().with_actor(automerge::ActorId::try_from(actor).unwrap());
    doc.put(automerge::ROOT, "caseload_id", scope).unwrap();
    doc.put(automerge::ROOT, "name", "claimed").unwrap();
    PushRecord {
        epoch: 0,
        collection: "clients".into(),
        id: id.into(),
        scope: scope.into(),
        payload: Payload::from(RemotePayload::Document(doc.save())),
    }
}

fn run_matrix(backend: &str, db: &OsStr, dir: &Path) {
    let log = dir.join("server.log");
    // The rate limit has its own test; this one sends hundreds of requests per device.
    let server = ServerProcess::start_with(
        Path::new(SERVER),
        db,
        &["--requests-per-second", "0"],
        Some(&log),
    );
    let grants: [(&str, &[&str], &[&str]); 5] = [
        ("ada", &["north"], &["south"]),
        ("dave", &["south"], &[]),
        ("bob", &["west"], &[]),
        ("carol", &[], &["north"]),
        ("auditor", &[], &SCOPES),
    ];
    let mut users = Vec::new();
    for (name, writes, reads_only) in grants {
        server.admin(&["create-user", name]);
        for scope in writes {
            server.admin(&["grant", "--user", name, "--scope", scope]);
        }
        for scope in reads_only {
            server.admin(&[
                "grant", "--user", name, "--scope", scope, "--access", "read",
            ]);
        }
        let token = server.device(name);
        let mut reads: Vec<&str> = writes.iter().chain(reads_only.iter()).copied().collect();
        reads.sort_unstable();
        users.push(User {
            name,
            token,
            reads,
            writes: writes.to_vec(),
        });
    }
    let user = |name: &str| users.iter().find(|u| u.name == name).unwrap();

    // Each writer stores records with clinical notes in its scope.
    let mut ids: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut stores = BTreeMap::new();
    let mut probe = Probe {
        http: {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::blocking::Client::new()
        },
        url: server.url.clone(),
        secrets: Vec::new(),
        tried: BTreeMap::new(),
        answered: BTreeMap::new(),
    };
    for (name, scope) in [("ada", "north"), ("dave", "south"), ("bob", "west")] {
        let store = open_device(&dir.join(format!("{name}.db")));
        let scope_ids: Vec<String> = (0..3).map(|i| insert(&store, scope, i)).collect();
        let (status, body) = probe.push(
            "setup",
            &Auth::bearer(&user(name).token),
            &outbox_request(&store, "setup"),
        );
        let response: PushResponse = decoded("setup push", status, &body);
        assert!(response.results.iter().all(|r| r.rejected.is_none()));
        store.acknowledge_outbox(i64::MAX).unwrap();
        ids.insert(scope, scope_ids);
        stores.insert(name, store);
    }
    // The auditor's cursor, after which nothing may be written.
    let mut audit_cursor = None;
    loop {
        let query = audit_cursor.as_ref().map_or("?limit=1000".to_owned(), |c| {
            format!("?limit=1000&cursor={c}")
        });
        let (status, body) = probe.pull("setup", &Auth::bearer(&user("auditor").token), &query);
        let page: PullResponse = decoded("auditor pull", status, &body);
        audit_cursor = Some(page.next_cursor);
        if !page.more {
            break;
        }
    }
    // Ada's cursors: one in the middle of her first sync, one on the feed.
    let (status, body) = probe.pull("setup", &Auth::bearer(&user("ada").token), "?limit=2");
    let first: PullResponse = decoded("ada pull", status, &body);
    assert!(
        carries_values(&first),
        "the canary check sees values where they are allowed"
    );
    let mid_sync_cursor = first.next_cursor;
    let (status, body) = probe.pull("setup", &Auth::bearer(&user("ada").token), "?limit=1000");
    let feed_cursor = decoded::<PullResponse>("ada pull", status, &body).next_cursor;

    // Tokens that must get nothing at all.
    let ada = user("ada").token.clone();
    let revoked = enroll_with(&server, "ada", &[]);
    server.admin(&["revoke-token", token_id(&revoked)]);
    let (revoked_device_id, revoked_device) = server.enroll("ada");
    server.admin(&["revoke-device", &revoked_device_id.to_string()]);
    let expired = enroll_with(&server, "ada", &["--expires-in-days", "0"]);
    let unknown = format!("fs_{}_{}", "c0ffee00c0ffee00", "ca11ab1e".repeat(8));
    let wrong_secret = format!("fs_{}_{}", token_id(&ada), "5ec2e7".repeat(10) + "abcd");
    let mut bad: Vec<(String, Auth)> = vec![
        ("no token".into(), Auth::None),
        ("revoked token".into(), Auth::bearer(&revoked)),
        ("revoked device".into(), Auth::bearer(&revoked_device)),
        ("expired token".into(), Auth::bearer(&expired)),
        ("unknown token".into(), Auth::bearer(&unknown)),
        ("wrong secret".into(), Auth::bearer(&wrong_secret)),
    ];
    let malformed: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"Bearer".to_vec(),
        b"Bearer ".to_vec(),
        format!("bearer {ada}").into_bytes(),
        format!("Basic {ada}").into_bytes(),
        format!("Bearer  {ada}").into_bytes(),
        format!("Bearer {ada}x").into_bytes(),
        format!("Bearer {ada} {ada}").into_bytes(),
        format!("Bearer {}", &ada[..ada.len() - 1]).into_bytes(),
        format!("Bearer {}", ada.to_uppercase()).into_bytes(),
        b"Bearer fs_CANARYTOKEN_secret-in-a-token".to_vec(),
        b"Bearer fs_0123456789abcdef_CANARYTOKEN".to_vec(),
        [b"Bearer fs_".as_slice(), &[0xff, 0xfe], b"_CANARYTOKEN"].concat(),
        format!("Bearer fs_{}", "0".repeat(5000)).into_bytes(),
    ];
    for header in malformed {
        let value = HeaderValue::from_bytes(&header).expect("a header value the client sends");
        bad.push(("malformed header".into(), Auth::Header(value)));
    }
    probe.secrets = vec![
        VALUE_CANARY.to_owned(),
        "CANARYTOKEN".to_owned(),
        unknown.clone(),
        wrong_secret.clone(),
    ];
    for token in [&revoked, &revoked_device, &expired]
        .into_iter()
        .chain(users.iter().map(|u| &u.token))
    {
        probe.secrets.push(token.clone());
        probe
            .secrets
            .push(token.rsplit('_').next().unwrap().to_owned());
    }

    // 1. Bad tokens on every endpoint that needs one: 401, whatever the request carries.
    let ada_store = &stores["ada"];
    let existing = ids["north"][0].clone();
    ada_store
        .splice_text(
            "clients",
            &existing,
            "notes",
            0,
            0,
            "CANARY-clinical more: ",
        )
        .unwrap();
    let would_write = outbox_request(ada_store, "bad-token");
    let pull_queries = [
        String::new(),
        format!("?cursor={mid_sync_cursor}"),
        format!("?cursor={feed_cursor}&limit=5000"),
        format!("?cursor={}", forged_cursor(false, 0, &SCOPES)),
        format!("?id={existing}&scope=north"),
        "?limit=-1&cursor=zz".to_owned(),
    ];
    for (what, auth) in &bad {
        let (status, body) = probe.push("bad token", auth, &would_write);
        probe.assert_refused(&format!("push, {what}"), status, &body, 401);
        for query in &pull_queries {
            let (status, body) = probe.pull("bad token", auth, query);
            probe.assert_refused(&format!("pull{query}, {what}"), status, &body, 401);
        }
    }

    // 2. Public endpoints answer anyone and name nothing: no values, tokens, ids, scopes or
    // users.
    let mut public_secrets = probe.secrets.clone();
    public_secrets.extend(ids.values().flatten().cloned());
    public_secrets.extend(SCOPES.iter().map(|s| s.to_string()));
    public_secrets.extend(users.iter().map(|u| u.name.to_owned()));
    for path in ["/health", "/ready", "/metrics"] {
        for (_, auth) in bad
            .iter()
            .chain([("ada".to_owned(), Auth::bearer(&ada))].iter())
        {
            let (status, body) = probe.send("public endpoint", Method::GET, path, auth, None);
            assert_eq!(status, 200, "{path}");
            let text = String::from_utf8_lossy(&body);
            for secret in &public_secrets {
                assert!(!text.contains(secret.as_str()), "{path} names `{secret}`");
            }
        }
    }

    // 3. Routes that do not exist, and wrong methods, with a valid token: refused, no data.
    let ada_auth = Auth::bearer(&ada);
    for (method, path) in [
        (Method::GET, "/v1/push".to_owned()),
        (Method::PUT, "/v1/push".to_owned()),
        (Method::POST, "/v1/pull".to_owned()),
        (Method::DELETE, "/v1/pull".to_owned()),
        (Method::GET, format!("/v1/records/nowhere/{existing}")),
        (Method::GET, format!("/v1/pull/{existing}")),
        (Method::GET, "/v1/admin/users".to_owned()),
        (Method::GET, "/v1/audit".to_owned()),
        (Method::GET, "/v2/pull".to_owned()),
    ] {
        let (status, body) = probe.send("unknown route", method.clone(), &path, &ada_auth, None);
        assert!((400..500).contains(&status), "{method} {path}: {status}");
        probe.assert_no_secret(&format!("{method} {path}"), &body);
    }

    // 4. Reads of scopes not granted, by every user and every means of reaching them.
    let mut queries: Vec<String> = vec![
        String::new(),
        "?limit=5000".into(),
        format!("?cursor={mid_sync_cursor}"),
        format!("?cursor={feed_cursor}"),
    ];
    for scope in SCOPES {
        for documents in [true, false] {
            for seq in [i64::MIN, -1, 0, 1, 3, i64::MAX] {
                queries.push(format!(
                    "?cursor={}",
                    forged_cursor(documents, seq, &[scope])
                ));
            }
            queries.push(format!("?cursor={}", forged_cursor(documents, 0, &SCOPES)));
        }
        for id in ids.get(scope).into_iter().flatten() {
            queries.push(format!("?id={id}&scope={scope}&collection=clients"));
            queries.push(format!("?cursor={id}"));
        }
    }
    for reader in &users {
        let auth = Auth::bearer(&reader.token);
        for query in &queries {
            let (status, body) = probe.pull("read of a scope not granted", &auth, query);
            let what = format!("{} pull{query}", reader.name);
            if status != 200 {
                probe.assert_refused(&what, status, &body, 400);
                continue;
            }
            let page: PullResponse = decoded(&what, status, &body);
            for record in &page.records {
                assert!(
                    reader.reads.contains(&record.scope.as_str()),
                    "{what} returned a record of {}",
                    record.scope
                );
            }
            let may_read_values = reader.reads.iter().any(|s| ids.contains_key(s));
            if !may_read_values {
                assert!(!carries_values(&page), "{what} carried record values");
                probe.assert_no_secret(&what, &body);
            }
        }
    }

    // 4b. The records API and the change feed, for scopes not granted: a record is as absent
    // as one that does not exist, a listing is refused, the feed leaves it out.
    for reader in &users {
        let auth = Auth::bearer(&reader.token);
        for scope in SCOPES.iter().filter(|s| !reader.reads.contains(s)) {
            let what = format!("{} records API on {scope}", reader.name);
            for id in ids.get(scope).into_iter().flatten() {
                let path = format!("/v1/records/clients/{id}?history=true");
                let (status, body) = probe.send("records API", Method::GET, &path, &auth, None);
                probe.assert_refused(&what, status, &body, 404);
                let patch = br#"{"merge": true, "fields": {"name": "x"}}"#.to_vec();
                let path = format!("/v1/records/clients/{id}");
                let (status, body) =
                    probe.send("records API", Method::PATCH, &path, &auth, Some(patch));
                probe.assert_refused(&what, status, &body, 404);
                let (status, body) = probe.send("records API", Method::DELETE, &path, &auth, None);
                probe.assert_refused(&what, status, &body, 404);
            }
            let path = format!("/v1/records/clients?scope={scope}");
            let (status, body) = probe.send("records API", Method::GET, &path, &auth, None);
            probe.assert_refused(&what, status, &body, 403);
        }
        let (status, body) = probe.send(
            "change feed",
            Method::GET,
            "/v1/changes?limit=500",
            &auth,
            None,
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for change in page["changes"].as_array().unwrap() {
            let scope = change["scope"].as_str().unwrap();
            assert!(
                reader.reads.contains(&scope),
                "{} fed a change of {scope}",
                reader.name
            );
        }
        if !reader.reads.iter().any(|s| ids.contains_key(s)) {
            probe.assert_no_secret(&format!("{} change feed", reader.name), &body);
        }
    }

    // 5. Writes to scopes not granted: new records, and existing records of another user by
    // their ids, claiming their scope or the writer's own.
    let mut batch = 0;
    let mut refused_records = 0;
    for writer in &users {
        let auth = Auth::bearer(&writer.token);
        let own = open_device(&dir.join(format!("{}-writes.db", writer.name)));
        for scope in SCOPES.iter().filter(|s| !writer.writes.contains(s)) {
            let mut records = Vec::new();
            insert(&own, scope, 99);
            records.extend(outbox_request(&own, "x").records);
            own.acknowledge_outbox(i64::MAX).unwrap();
            for id in ids.get(scope).into_iter().flatten() {
                for claimed in [Some(*scope), writer.writes.first().copied()]
                    .into_iter()
                    .flatten()
                {
                    // The writer's own change to a record of that id, so that only the
                    // scope stands in the way; and a copy of the owner's pending change.
                    let owner_change = outbox_request(ada_store, "y").records.into_iter().next();
                    records.push(PushRecord {
                        epoch: 0,
                        collection: "clients".into(),
                        id: id.clone(),
                        scope: claimed.into(),
                        payload: records[0].payload.clone(),
                    });
                    if let Some(change) = owner_change {
                        records.push(PushRecord {
                            id: id.clone(),
                            scope: claimed.into(),
                            ..change
                        });
                    }
                }
            }
            batch += 1;
            let request = PushRequest {
                outbox_seq: None,
                batch_id: format!("hostile-{batch}"),
                records,
            };
            let (status, body) = probe.push("write to a scope not granted", &auth, &request);
            let what = format!("{} writing {scope}", writer.name);
            let response: PushResponse = decoded(&what, status, &body);
            refused_records += response.results.len();
            for result in &response.results {
                let code = result.rejected.as_ref().map(|r| r.code);
                assert!(
                    matches!(
                        code,
                        Some(
                            RejectCode::ForbiddenScope
                                | RejectCode::ScopeChange
                                | RejectCode::ForeignActor
                        )
                    ),
                    "{what}: {result:?}"
                );
            }
            probe.assert_no_secret(&what, &body);
        }
    }

    // 6. A change claiming another device's actor: from a fresh device of another user and
    // from a bound one, into a scope the pusher may write.
    let phone_actor = ada_store.device_id().to_owned();
    let fresh_bob = server.device("bob");
    for (what, token) in [
        ("fresh device", &fresh_bob),
        ("bound device", &user("bob").token),
    ] {
        let request = PushRequest {
            outbox_seq: None,
            batch_id: format!("claim-{what}"),
            records: vec![record_by(
                &phone_actor,
                &format!("claimed-{}", what.len()),
                "west",
            )],
        };
        let (status, body) = probe.push("foreign actor", &Auth::bearer(token), &request);
        let response: PushResponse = decoded(what, status, &body);
        assert_eq!(
            response.results[0].rejected.as_ref().map(|r| r.code),
            Some(RejectCode::ForeignActor),
            "{what}"
        );
    }

    // Nothing was written by any of it.
    let query = format!("?limit=5000&cursor={}", audit_cursor.unwrap());
    let (status, body) = probe.pull("check", &Auth::bearer(&user("auditor").token), &query);
    let after: PullResponse = decoded("auditor pull", status, &body);
    assert!(
        after.records.is_empty(),
        "refused requests wrote {:?}",
        after.records.iter().map(|r| &r.id).collect::<Vec<_>>()
    );

    assert!(server.terminate(), "the server stops cleanly");
    let text = std::fs::read_to_string(&log).unwrap();
    let total: usize = probe.tried.values().sum();
    let logged = text.lines().filter(|l| l.contains("request done")).count();
    assert!(
        logged >= total,
        "the log holds every request: {logged} of {total}"
    );
    let hits: Vec<&String> = probe
        .secrets
        .iter()
        .filter(|secret| text.contains(secret.as_str()))
        .collect();
    // What each category got: the refusals at the request (4xx), and the 200s, which are the
    // setup, the public endpoints, reads whose pages were checked to hold no record of a scope
    // not granted, and pushes whose every record was refused.
    let answered: Vec<String> = probe
        .answered
        .iter()
        .map(|((category, status), n)| format!("{category} {status}: {n}"))
        .collect();
    println!(
        "{backend}: answers by category and status: {}",
        answered.join(", ")
    );
    println!(
        "{backend}: {total} requests tried {:?} ({refused_records} records pushed to scopes not \
         granted, all refused); {} log lines searched for {} canaries, {} hits",
        probe.tried,
        text.lines().count(),
        probe.secrets.len(),
        hits.len()
    );
    let first_hit = text
        .lines()
        .find(|line| hits.iter().any(|secret| line.contains(secret.as_str())));
    assert!(
        hits.is_empty(),
        "the log holds {hits:?}, first in: {}",
        first_hit
            .unwrap_or_default()
            .chars()
            .take(400)
            .collect::<String>()
    );
}

#[test]
fn no_request_reaches_data_it_may_not_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    run_matrix(
        "sqlite",
        dir.path().join("server.db").as_os_str(),
        dir.path(),
    );
}

#[test]
fn no_request_reaches_data_it_may_not_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestPostgres::start();
    run_matrix("postgres", OsStr::new(&cluster.database()), dir.path());
}
