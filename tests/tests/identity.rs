//! Sign-in through the clinic's identity provider, against a real server process and a test
//! provider on loopback (keys made by the test, discovery and JWKS served over HTTP): which
//! access tokens are accepted and which refused, devices enrolling themselves, key rotation,
//! and access that follows the provider's groups.

#[path = "support/identity_provider.rs"]
mod identity_provider;
#[path = "support/keycloak.rs"]
mod keycloak;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fieldsync_record::protocol::{self, DeviceList, EnrolledDevice, ErrorBody, PullResponse};
use fieldsync_tests::server::ServerProcess;
use identity_provider::{AUDIENCE, TestIdentityProvider};
use reqwest::blocking::Client;
use serde_json::{Value, json};

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

/// What the provider's groups give their members.
const GROUP_GRANTS: &str = r#"
group "east-therapists" -> write caseload-east
group "supervisors" -> read caseload-*
"#;

/// A provider, and a server trusting it.
struct Clinic {
    _dir: tempfile::TempDir,
    idp: TestIdentityProvider,
    server: ServerProcess,
    http: Client,
}

impl Clinic {
    fn start() -> Clinic {
        Clinic::start_with(|idp| vec!["--oidc-issuer".into(), idp.issuer.clone()])
    }

    /// A clinic whose server is told of the provider by the flags `identity` gives.
    fn start_with(identity: impl FnOnce(&TestIdentityProvider) -> Vec<String>) -> Clinic {
        let idp = TestIdentityProvider::start();
        let dir = tempfile::tempdir().unwrap();
        let grants = dir.path().join("groups.conf");
        std::fs::write(&grants, GROUP_GRANTS).unwrap();
        let mut flags = identity(&idp);
        flags.extend(
            [
                "--oidc-audience",
                AUDIENCE,
                "--oidc-admin-group",
                "clinic-admins",
                "--oidc-refetch-secs",
                "1",
                "--oidc-leeway-secs",
                "0",
                "--requests-per-second",
                "0",
            ]
            .map(String::from),
        );
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server =
            ServerProcess::start_with(SERVER.as_ref(), dir.path().join("server.db"), &flags, None);
        server.admin(&["group-grants", "set", grants.to_str().unwrap()]);
        Clinic {
            _dir: dir,
            idp,
            server,
            http: {
                let _ = rustls::crypto::ring::default_provider().install_default();
                Client::new()
            },
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        device: Option<i64>,
    ) -> reqwest::blocking::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.server.url))
            .bearer_auth(token)
            .header(protocol::VERSION_HEADER, protocol::VERSION.to_string());
        if let Some(device) = device {
            request = request.header(protocol::DEVICE_HEADER, device.to_string());
        }
        request
    }

    /// Enrols a device with `token`: its id, or the refusal's status and error body.
    fn enroll(&self, token: &str) -> Result<i64, (u16, ErrorBody)> {
        let response = self
            .request(reqwest::Method::POST, "/v1/devices", token, None)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json!({"name": "tablet"}).to_string())
            .send()
            .unwrap();
        match response.status().as_u16() {
            201 => Ok(json_body::<EnrolledDevice>(response).device_id),
            status => Err((status, json_body(response))),
        }
    }

    /// A pull from the start by `device` with `token`.
    fn pull(&self, token: &str, device: Option<i64>) -> Result<PullResponse, (u16, ErrorBody)> {
        self.pull_from(token, device, None)
    }

    fn pull_from(
        &self,
        token: &str,
        device: Option<i64>,
        cursor: Option<&str>,
    ) -> Result<PullResponse, (u16, ErrorBody)> {
        let query = cursor.map_or_else(String::new, |cursor| format!("?cursor={cursor}"));
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/v1/pull{query}"),
                token,
                device,
            )
            .send()
            .unwrap();
        match response.status().as_u16() {
            200 => Ok(protocol::decode(&response.bytes().unwrap(), 64 << 20).unwrap()),
            status => Err((status, json_body(response))),
        }
    }
}

fn json_body<T: serde::de::DeserializeOwned>(response: reqwest::blocking::Response) -> T {
    serde_json::from_slice(&response.bytes().unwrap()).expect("the body is JSON")
}

/// `token` with its claims replaced by `claims`, the signature kept.
fn with_claims(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn refused(what: &str, answer: Result<impl std::fmt::Debug, (u16, ErrorBody)>, says: &str) {
    match answer {
        Err((401, body)) => assert!(
            body.message.contains(says),
            "{what}: `{}` does not say `{says}`",
            body.message
        ),
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn access_tokens_are_accepted_only_when_every_check_passes() {
    let clinic = Clinic::start();
    let idp = &clinic.idp;
    let token = idp.token("ada", &["east-therapists"]);
    let device = clinic.enroll(&token).expect("a good token enrols a device");
    assert!(clinic.pull(&token, Some(device)).is_ok());
    // Every accepted algorithm, each with its own published key.
    for kid in ["rsa", "ed"] {
        let token = idp.sign_with(kid, idp.claims("ada", &["east-therapists"], 600));
        assert!(clinic.pull(&token, Some(device)).is_ok(), "{kid}");
    }

    let claims = idp.claims("ada", &["east-therapists"], 600);
    let changed = |change: Value| {
        let mut claims = claims.clone();
        for (key, value) in change.as_object().unwrap() {
            claims[key] = value.clone();
        }
        claims
    };
    let now = claims["iat"].as_i64().unwrap();
    let rsa = idp.signer("rsa");
    let rsa_public = &rsa.jwk("rsa")["n"];
    let hmac_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        rsa_public.as_str().unwrap().as_bytes(),
    );
    let hs256 = {
        let signed = unsigned(&json!({"alg": "HS256", "kid": "rsa"}), &claims);
        let tag = ring::hmac::sign(&hmac_key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    };
    let refusals: Vec<(&str, String, &str)> = vec![
        (
            // Past the minute of clock skew allowed.
            "expired",
            idp.sign(changed(json!({"exp": now - 120}))),
            "expired",
        ),
        (
            "not yet valid",
            idp.sign(changed(json!({"nbf": now + 600}))),
            "not valid yet",
        ),
        (
            "another issuer",
            idp.sign(changed(
                json!({"iss": "https://evil.example/realms/clinic"}),
            )),
            "another issuer",
        ),
        (
            "another audience",
            idp.sign(changed(json!({"aud": "another-app"}))),
            "another audience",
        ),
        (
            "alg none",
            format!("{}.", unsigned(&json!({"alg": "none"}), &claims)),
            "algorithm",
        ),
        ("HS256 keyed with the RSA public key", hs256, "algorithm"),
        (
            "tampered claims",
            with_claims(&token, &changed(json!({"groups": ["supervisors"]}))),
            "signature",
        ),
        ("not a token", "not-a-token".into(), "malformed"),
    ];
    for (what, token, says) in &refusals {
        refused(what, clinic.pull(token, Some(device)), says);
        refused(what, clinic.enroll(token), says);
    }
    // A good token for a device that is not the person's, or without its device.
    let bo = idp.token("bo", &["east-therapists"]);
    refused(
        "another's device",
        clinic.pull(&bo, Some(device)),
        "unknown device",
    );
    refused("no device", clinic.pull(&token, None), "fieldsync-device");

    // A key never published: the keys are fetched once more at most, however many come.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let fetched = idp.jwks_fetches();
    let hidden = idp.unpublished_key();
    for _ in 0..5 {
        let token = idp.sign_with(&hidden, claims.clone());
        refused(
            "an unpublished key",
            clinic.pull(&token, Some(device)),
            "key",
        );
    }
    assert_eq!(idp.jwks_fetches(), fetched + 1);

    // The provider rotates its keys: a token signed with the new key makes the server fetch
    // them again (once the refetch interval has passed), and the old key stops working.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let old = idp.token("ada", &["east-therapists"]);
    idp.rotate();
    let rotated = idp.token("ada", &["east-therapists"]);
    assert!(clinic.pull(&rotated, Some(device)).is_ok(), "the new key");
    assert_eq!(idp.jwks_fetches(), fetched + 2);
    refused("a withdrawn key", clinic.pull(&old, Some(device)), "key");
}

#[test]
fn devices_enrol_themselves_and_are_listed_and_revoked_by_their_person() {
    let clinic = Clinic::start();
    let ada = clinic.idp.token("ada", &["east-therapists"]);
    let tablet = clinic.enroll(&ada).unwrap();
    let phone = clinic.enroll(&ada).unwrap();
    let bo = clinic.idp.token("bo", &[]);
    let bo_phone = clinic.enroll(&bo).unwrap();

    let listed: DeviceList = clinic
        .request(reqwest::Method::GET, "/v1/devices", &ada, None)
        .send()
        .map(json_body)
        .unwrap();
    let ids: Vec<i64> = listed.devices.iter().map(|d| d.id).collect();
    assert_eq!(ids, [tablet, phone], "only the person's own devices");

    // Another's device is not found; one's own is revoked and stops working.
    let revoke = |token: &str, device: i64| {
        clinic
            .request(
                reqwest::Method::DELETE,
                &format!("/v1/devices/{device}"),
                token,
                None,
            )
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(revoke(&ada, bo_phone), 404);
    assert!(clinic.pull(&bo, Some(bo_phone)).is_ok());
    assert_eq!(revoke(&ada, phone), 204);
    refused(
        "a revoked device",
        clinic.pull(&ada, Some(phone)),
        "revoked device",
    );
    assert!(clinic.pull(&ada, Some(tablet)).is_ok());

    // The server made a user of each person on first sign-in, named by subject.
    let devices = clinic.server.admin(&["devices"]);
    assert!(
        devices.contains("ada") && devices.contains("bo"),
        "{devices}"
    );
    let audit = clinic.server.admin(&["audit", "--user", "ada"]);
    assert!(
        audit.contains(&format!("ada enroll-device (self) {phone}"))
            && audit.contains(&format!("ada revoke-device (self) {phone}")),
        "{audit}"
    );
}

/// Records the seeder (a device token user, as clinics without a provider have) writes into
/// `scopes`, one each, synced to the server.
fn seed(clinic: &Clinic, dir: &std::path::Path, name: &str, scopes: &[&str]) {
    let token = clinic.server.user_with_device(name, scopes);
    let store = fieldsync_tests::open_device(&dir.join(format!("{name}.db")));
    for scope in scopes {
        store
            .insert(
                "clients",
                fieldsync_tests::fields(json!({"caseload_id": scope, "name": "Sam"})),
            )
            .unwrap();
    }
    let client = fieldsync_core::SyncClient::new(fieldsync_core::SyncConfig::new(
        &clinic.server.url,
        &token,
    ))
    .unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(client.sync_now(&store))
        .unwrap();
}

/// The scopes of a pull's records.
fn scopes_of(page: &PullResponse) -> Vec<&str> {
    let mut scopes: Vec<&str> = page.records.iter().map(|r| r.scope.as_str()).collect();
    scopes.sort();
    scopes
}

#[test]
fn access_follows_the_providers_groups_at_every_token() {
    let clinic = Clinic::start();
    let dir = tempfile::tempdir().unwrap();
    seed(
        &clinic,
        dir.path(),
        "seeder",
        &["caseload-east", "caseload-west", "team"],
    );
    let idp = &clinic.idp;

    // A therapist of the east team reads its caseload only; a supervisor reads every caseload.
    let therapist = idp.token("ada", &["east-therapists"]);
    let ada = clinic.enroll(&therapist).unwrap();
    let first = clinic.pull(&therapist, Some(ada)).unwrap();
    assert_eq!(scopes_of(&first), ["caseload-east"]);
    let supervisor = idp.token("sue", &["supervisors"]);
    let sue = clinic.enroll(&supervisor).unwrap();
    let everything = clinic.pull(&supervisor, Some(sue)).unwrap();
    assert_eq!(scopes_of(&everything), ["caseload-east", "caseload-west"]);

    // A caseload made after the supervisor's first sync reaches them through the feed.
    seed(&clinic, dir.path(), "other-seeder", &["caseload-north"]);
    let later = clinic
        .pull_from(&supervisor, Some(sue), Some(&everything.next_cursor))
        .unwrap();
    assert_eq!(scopes_of(&later), ["caseload-north"]);
    assert!(later.revoked_scopes.is_empty());

    // Removed from their groups at the provider, both lose what they read at the next pull:
    // their devices are told to purge those scopes.
    let left = idp.token("ada", &[]);
    let gone = clinic
        .pull_from(&left, Some(ada), Some(&first.next_cursor))
        .unwrap();
    assert_eq!(gone.revoked_scopes, ["caseload-east"]);
    assert!(gone.records.is_empty());
    let demoted = idp.token("sue", &["east-therapists"]);
    let narrowed = clinic
        .pull_from(&demoted, Some(sue), Some(&later.next_cursor))
        .unwrap();
    let mut revoked = narrowed.revoked_scopes.clone();
    revoked.sort();
    assert_eq!(revoked, ["caseload-north", "caseload-west"]);
}

/// A sign-in library as an app has one: hands out the tokens it is given, in turn (the last
/// one again and again), or says the person must sign in.
#[derive(Debug, Default)]
struct SignIn {
    tokens: std::sync::Mutex<std::collections::VecDeque<Result<String, String>>>,
    asked: std::sync::atomic::AtomicUsize,
}

impl SignIn {
    fn will_give(&self, token: Result<String, String>) {
        self.tokens.lock().unwrap().push_back(token);
    }

    fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl fieldsync_core::TokenProvider for SignIn {
    fn token(&self) -> fieldsync_core::BoxFuture<'_, Result<String, String>> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut tokens = self.tokens.lock().unwrap();
        let token = if tokens.len() > 1 {
            tokens.pop_front()
        } else {
            tokens.front().cloned()
        };
        Box::pin(async move { token.unwrap_or_else(|| Err("no one signed in".into())) })
    }
}

fn client(clinic: &Clinic, sign_in: &std::sync::Arc<SignIn>) -> fieldsync_core::SyncClient {
    fieldsync_core::SyncClient::new(fieldsync_core::SyncConfig {
        token_provider: Some(sign_in.clone()),
        ..fieldsync_core::SyncConfig::new(&clinic.server.url, "")
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_mid_day_is_refreshed_through_the_provider_and_nothing_is_lost() {
    let clinic = tokio::task::spawn_blocking(Clinic::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let idp = &clinic.idp;
    let sign_in = std::sync::Arc::new(SignIn::default());
    sign_in.will_give(Ok(idp.token("ada", &["east-therapists"])));
    let client = client(&clinic, &sign_in);
    let device = client.enroll_device("Ada's tablet").await.unwrap();
    assert!(device > 0);
    let store = fieldsync_tests::open_device(&dir.path().join("ada.db"));
    let note = |name: &str| {
        store
            .insert(
                "clients",
                fieldsync_tests::fields(json!({"caseload_id": "caseload-east", "name": name})),
            )
            .unwrap()
    };
    let morning = note("Morning visit");
    client.sync_now(&store).await.unwrap();

    // The token expires while the therapist works offline; the next sync is refused once,
    // asks the provider again, and pushes every write of the afternoon.
    *sign_in.tokens.lock().unwrap() = [
        Ok(idp.sign(idp.claims("ada", &["east-therapists"], -5))),
        Ok(idp.token("ada", &["east-therapists"])),
    ]
    .into();
    let afternoon: Vec<String> = (0..3).map(|i| note(&format!("Visit {i}"))).collect();
    let asked = sign_in.asked();
    let report = client.sync_now(&store).await.unwrap();
    assert_eq!(report.pushed, 3);
    assert_eq!(
        sign_in.asked(),
        asked + 2,
        "once before the sync, once after the 401"
    );
    assert_eq!(store.outbox_len().unwrap(), 0);

    // Another device of the clinic sees every note.
    let other = fieldsync_tests::open_device(&dir.path().join("supervisor.db"));
    let supervisor = std::sync::Arc::new(SignIn::default());
    supervisor.will_give(Ok(idp.token("sue", &["supervisors"])));
    let supervisor_client = self::client(&clinic, &supervisor);
    supervisor_client.enroll_device("office").await.unwrap();
    supervisor_client.sync_now(&other).await.unwrap();
    for id in std::iter::once(&morning).chain(&afternoon) {
        assert!(other.get("clients", id).unwrap().is_some(), "{id}");
    }

    // A provider that can give no token, and a fresh token the server refuses, both ask for
    // a sign-in; nothing written is lost meanwhile.
    let unsent = note("Written while signed out");
    *sign_in.tokens.lock().unwrap() = [Err("the session ended".to_owned())].into();
    let err = client.sync_now(&store).await.unwrap_err();
    assert!(
        matches!(&err, fieldsync_core::Error::SignInRequired(why) if why.contains("session ended")),
        "{err:?}"
    );
    *sign_in.tokens.lock().unwrap() =
        [Ok(idp.sign(idp.claims("ada", &["east-therapists"], -5)))].into();
    let err = client.sync_now(&store).await.unwrap_err();
    assert!(
        matches!(err, fieldsync_core::Error::SignInRequired(_)),
        "{err:?}"
    );
    assert_eq!(store.outbox_len().unwrap(), 1);

    // Signed in again, but removed from the east team at the provider: the write made
    // before goes nowhere the person may not write, and the team's records leave the device.
    *sign_in.tokens.lock().unwrap() = [Ok(idp.token("ada", &[]))].into();
    let report = client.sync_now(&store).await.unwrap();
    assert_eq!(report.purged_scopes, ["caseload-east"]);
    assert!(store.get("clients", &morning).unwrap().is_none());
    assert!(store.get("clients", &unsent).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_sync_waits_for_a_sign_in_instead_of_stopping() {
    use fieldsync_core::{BackgroundOptions, BackgroundSync, SyncListener, SyncState, SyncStatus};

    struct Statuses(std::sync::Mutex<std::sync::mpsc::Sender<SyncStatus>>);
    impl SyncListener for Statuses {
        fn on_status(&self, status: &SyncStatus) {
            let _ = self.0.lock().unwrap().send(status.clone());
        }
    }
    let wait_for = |statuses: &std::sync::mpsc::Receiver<SyncStatus>, state: SyncState| loop {
        let status = statuses
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no status {state:?}"));
        if status.state == state {
            return status;
        }
    };

    let clinic = tokio::task::spawn_blocking(Clinic::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sign_in = std::sync::Arc::new(SignIn::default());
    sign_in.will_give(Ok(clinic.idp.token("ada", &["east-therapists"])));
    let client = client(&clinic, &sign_in);
    client.enroll_device("tablet").await.unwrap();
    let store = fieldsync_tests::open_device(&dir.path().join("ada.db"));

    *sign_in.tokens.lock().unwrap() = [Err("signed out".to_owned())].into();
    let (sender, statuses) = std::sync::mpsc::channel();
    let background = BackgroundSync::start(
        client,
        store.clone(),
        BackgroundOptions {
            interval: std::time::Duration::from_secs(3600),
            debounce: std::time::Duration::from_millis(20),
            ..BackgroundOptions::default()
        },
        Some(std::sync::Arc::new(Statuses(std::sync::Mutex::new(sender)))),
    )
    .unwrap();
    let waiting = wait_for(&statuses, SyncState::SignInRequired);
    assert!(!waiting.stopped, "the loop carries on");
    assert_eq!(waiting.retry_in_ms, Some(3_600_000), "it waits, not loops");

    // The person signs in again; the app says so and the loop syncs at once.
    *sign_in.tokens.lock().unwrap() = [Ok(clinic.idp.token("ada", &["east-therapists"]))].into();
    background.sync_soon();
    let synced = wait_for(&statuses, SyncState::Idle);
    assert!(synced.last_success_ms.is_some());
    background.stop().await;
}

#[test]
fn the_providers_administrators_use_the_admin_api_and_lose_it_with_the_group() {
    let clinic = Clinic::start();
    let idp = &clinic.idp;
    let users = |token: &str| {
        clinic
            .http
            .get(format!("{}/v1/admin/users", clinic.server.url))
            .bearer_auth(token)
            .send()
            .unwrap()
    };
    let admin = idp.token("root", &["clinic-admins"]);
    let answer = users(&admin);
    assert_eq!(answer.status().as_u16(), 200);
    let listed: Value = json_body(answer);
    assert_eq!(
        listed["users"][0]["name"], "root",
        "created at first sign-in"
    );
    assert_eq!(listed["users"][0]["signs_in_through_provider"], true);
    assert_eq!(listed["users"][0]["email"], "root@clinic.example");
    // Group mappings set through the API apply to the next token of each person.
    let mappings =
        json!({"grants": [{"group": "west", "access": "write", "scopes": "caseload-west"}]});
    let set = clinic
        .http
        .put(format!("{}/v1/admin/group-grants", clinic.server.url))
        .bearer_auth(&admin)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(mappings.to_string())
        .send()
        .unwrap();
    assert_eq!(set.status().as_u16(), 204);
    assert!(
        clinic
            .server
            .admin(&["group-grants", "show"])
            .contains("group \"west\" -> write caseload-west")
    );
    // Out of the administrators' group, the same person is refused at their next token.
    assert_eq!(users(&idp.token("root", &[])).status().as_u16(), 403);
    let audit = clinic.server.admin(&["audit", "--user", "root"]);
    assert!(audit.contains("set-group-grants"), "{audit}");
}

#[test]
fn keys_come_from_a_configured_jwks_url_or_a_discovery_document_naming_the_issuer() {
    // A JWKS URL given: the discovery document is never asked for.
    let clinic = Clinic::start_with(|idp| {
        vec![
            "--oidc-issuer".into(),
            idp.issuer.clone(),
            "--oidc-jwks-url".into(),
            idp.jwks_url(),
        ]
    });
    let token = clinic.idp.token("ada", &[]);
    assert!(clinic.enroll(&token).is_ok());
    assert_eq!(
        (clinic.idp.discoveries(), clinic.idp.jwks_fetches()),
        (0, 1)
    );

    // An issuer spelled otherwise than the provider's discovery document names it: no key is
    // taken from there, and tokens cannot be checked (503, to retry) rather than refused.
    let clinic = Clinic::start_with(|idp| vec!["--oidc-issuer".into(), format!("{}/", idp.issuer)]);
    let mut claims = clinic.idp.claims("ada", &[], 600);
    claims["iss"] = json!(format!("{}/", clinic.idp.issuer));
    match clinic.enroll(&clinic.idp.sign(claims)) {
        Err((503, body)) => assert!(body.message.contains("keys"), "{}", body.message),
        other => panic!("{other:?}"),
    }
    assert_eq!(clinic.idp.discoveries(), 1);
    assert_eq!(clinic.idp.jwks_fetches(), 0);
}
