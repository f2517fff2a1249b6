//! The sign-in flow against a real Keycloak, which tests/keycloak/run.sh downloads and starts
//! (realm `clinic`, client `fieldsync-app`, users `ada` and `root`) before it runs this test:
//! the test identity provider of the other identity tests is ours, this checks a provider
//! clinics run. Part of the identity tests' binary, so that it costs CI no link of its own.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fieldsync_record::protocol::{self, ErrorBody};
use fieldsync_tests::server::ServerProcess;
use reqwest::blocking::Client;
use serde_json::{Value, json};

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

/// The passwords tests/keycloak/run.sh gives its users.
const ADA_PASSWORD: &str = "ada-password";
const ROOT_PASSWORD: &str = "root-password";

/// A sign-in library holding one access token.
#[derive(Debug)]
struct SignedIn(String);

impl fieldsync_core::TokenProvider for SignedIn {
    fn token(&self) -> fieldsync_core::BoxFuture<'_, Result<String, String>> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
}

/// `value` percent-encoded for an `application/x-www-form-urlencoded` body.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// An access token for `username` from the token endpoint, by the password grant.
fn sign_in(http: &Client, token_endpoint: &str, username: &str, password: &str) -> String {
    let body = [
        ("grant_type", "password"),
        ("client_id", "fieldsync-app"),
        ("scope", "openid"),
        ("username", username),
        ("password", password),
    ]
    .iter()
    .map(|(key, value)| format!("{key}={}", form_encode(value)))
    .collect::<Vec<_>>()
    .join("&");
    let response = http
        .post(token_endpoint)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .expect("Keycloak answers at its token endpoint");
    let status = response.status();
    let answer: Value = json_body(response);
    assert!(
        status.is_success(),
        "{username} signs in: {status} {answer}"
    );
    answer["access_token"]
        .as_str()
        .expect("the answer holds an access token")
        .to_owned()
}

/// A token's header and claims, decoded (not checked).
fn decoded(token: &str) -> (Value, Value) {
    let part = |index: usize| -> Value {
        let text = token
            .split('.')
            .nth(index)
            .expect("a token has three parts");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).expect("base64url"))
            .expect("the part is JSON")
    };
    (part(0), part(1))
}

/// What a token carries that the server looks at, without the token itself.
fn describe(who: &str, token: &str) {
    let (header, claims) = decoded(token);
    let lifespan = claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0);
    eprintln!(
        "{who}'s access token: alg {}, typ {}, kid present: {}, iss {}, aud {}, groups {}, \
         sub is a {}-character id, preferred_username {}, lives {lifespan} s",
        header["alg"],
        header["typ"],
        header.get("kid").is_some_and(Value::is_string),
        claims["iss"],
        claims["aud"],
        claims.get("groups").unwrap_or(&Value::Null),
        claims["sub"].as_str().map_or(0, str::len),
        claims["preferred_username"],
    );
}

/// `token` with its claims replaced by `claims`, Keycloak's signature kept.
fn with_claims(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

fn json_body<T: serde::de::DeserializeOwned>(response: reqwest::blocking::Response) -> T {
    serde_json::from_slice(&response.bytes().unwrap()).expect("the body is JSON")
}

/// A sync client of `server` whose sign-in library hands out `token`.
fn client(server: &ServerProcess, token: &str) -> fieldsync_core::SyncClient {
    fieldsync_core::SyncClient::new(fieldsync_core::SyncConfig {
        token_provider: Some(std::sync::Arc::new(SignedIn(token.to_owned()))),
        ..fieldsync_core::SyncConfig::new(&server.url, "")
    })
    .unwrap()
}

/// Run by tests/keycloak/run.sh, which starts Keycloak and sets `KEYCLOAK_URL`.
#[test]
#[ignore = "needs a running Keycloak: tests/keycloak/run.sh"]
fn keycloak_access_tokens_enrol_devices_sync_and_reach_the_admin_api() {
    let base = std::env::var("KEYCLOAK_URL").expect(
        "KEYCLOAK_URL is not set: run tests/keycloak/run.sh, which starts Keycloak and sets it",
    );
    let base = base.trim_end_matches('/');
    let issuer = format!("{base}/realms/clinic");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = Client::new();

    // Keycloak names its issuer after the host it is asked by: the server is configured with
    // the same base URL the tokens come from.
    let discovery: Value = json_body(
        http.get(format!("{issuer}/.well-known/openid-configuration"))
            .send()
            .expect("Keycloak answers"),
    );
    assert_eq!(discovery["issuer"], issuer.as_str());
    let token_endpoint = discovery["token_endpoint"].as_str().unwrap();
    let ada = sign_in(&http, token_endpoint, "ada", ADA_PASSWORD);
    let root = sign_in(&http, token_endpoint, "root", ROOT_PASSWORD);
    describe("ada", &ada);
    describe("root", &root);

    let dir = tempfile::tempdir().unwrap();
    let grants = dir.path().join("groups.conf");
    std::fs::write(
        &grants,
        "group \"east-therapists\" -> write caseload-east\n",
    )
    .unwrap();
    let server = ServerProcess::start_with(
        SERVER.as_ref(),
        dir.path().join("server.db"),
        &[
            "--oidc-issuer",
            &issuer,
            "--oidc-audience",
            "fieldsync",
            "--oidc-admin-group",
            "clinic-admins",
            "--requests-per-second",
            "0",
        ],
        None,
    );
    server.admin(&["group-grants", "set", grants.to_str().unwrap()]);
    let request = |method: reqwest::Method, path: &str, token: &str| {
        http.request(method, format!("{}{path}", server.url))
            .bearer_auth(token)
            .header(protocol::VERSION_HEADER, protocol::VERSION.to_string())
    };

    // Ada's token enrols a device by itself.
    let enrolled = request(reqwest::Method::POST, "/v1/devices", &ada)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json!({"name": "tablet"}).to_string())
        .send()
        .unwrap();
    assert_eq!(enrolled.status().as_u16(), 201);
    let tablet: Value = json_body(enrolled);
    assert!(
        tablet["device_id"].as_i64().is_some_and(|id| id > 0),
        "{tablet}"
    );

    // A visit noted on one of her devices reaches another, through her group's grant.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let laptop = fieldsync_tests::open_device(&dir.path().join("laptop.db"));
    let visit = laptop
        .insert(
            "clients",
            fieldsync_tests::fields(json!({"caseload_id": "caseload-east", "name": "Sam"})),
        )
        .unwrap();
    let laptop_client = client(&server, &ada);
    runtime
        .block_on(laptop_client.enroll_device("Ada's laptop"))
        .unwrap();
    let pushed = runtime.block_on(laptop_client.sync_now(&laptop)).unwrap();
    assert_eq!(pushed.pushed, 1, "{pushed:?}");
    assert_eq!(laptop.outbox_len().unwrap(), 0);
    let phone = fieldsync_tests::open_device(&dir.path().join("phone.db"));
    let phone_client = client(&server, &ada);
    runtime
        .block_on(phone_client.enroll_device("Ada's phone"))
        .unwrap();
    let pulled = runtime.block_on(phone_client.sync_now(&phone)).unwrap();
    assert_eq!(pulled.pulled, 1, "{pulled:?}");
    assert!(phone.get("clients", &visit).unwrap().is_some());

    // Root's group makes them an administrator; Ada's does not.
    let users = |token: &str| {
        request(reqwest::Method::GET, "/v1/admin/users", token)
            .send()
            .unwrap()
    };
    let listed = users(&root);
    assert_eq!(listed.status().as_u16(), 200);
    let listed: Value = json_body(listed);
    let emails: Vec<&str> = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|user| user["email"].as_str())
        .collect();
    assert!(emails.contains(&"root@clinic.example"), "{listed}");
    assert_eq!(users(&ada).status().as_u16(), 403);

    // Ada's token with the administrators' group written in: Keycloak's signature no longer
    // fits, at the admin API and at a pull alike.
    let (_, mut claims) = decoded(&ada);
    claims["groups"] = json!(["clinic-admins"]);
    let tampered = with_claims(&ada, &claims);
    let refused = users(&tampered);
    assert_eq!(refused.status().as_u16(), 401);
    let refused: ErrorBody = json_body(refused);
    assert!(refused.message.contains("signature"), "{}", refused.message);
    let pull = request(reqwest::Method::GET, "/v1/pull", &tampered)
        .header(protocol::DEVICE_HEADER, tablet["device_id"].to_string())
        .send()
        .unwrap();
    assert_eq!(pull.status().as_u16(), 401);
}
