//! The admin API in process: who may use it, what each route does, that every action lands in
//! the audit log with who did it, and that the OpenAPI document and the routes agree.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::admin::{self, By};
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Access, Role, Storage};
use crate::{AppState, Limits, router};

struct Api {
    _dir: tempfile::TempDir,
    storage: Arc<SqliteStorage>,
    app: axum::Router,
    state: AppState,
    /// A device token of an administrator.
    admin: String,
}

impl Api {
    fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(&dir.path().join("server.db")).unwrap());
        let limits = Limits {
            requests_per_second: 0,
            ..Limits::default()
        };
        let state = AppState::new(storage.clone(), limits);
        let app = router(state.clone());
        admin::create_user(&*storage, By::CommandLine, "root", Role::Admin).unwrap();
        let admin = admin::enroll_device(&*storage, By::CommandLine, "root", "laptop", None)
            .unwrap()
            .token;
        Api {
            _dir: dir,
            storage,
            app,
            state,
            admin,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, value)
    }

    /// A call as the administrator that must answer `expected`.
    async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: StatusCode,
    ) -> Value {
        let (status, value) = self.call(method, path, Some(&self.admin), body).await;
        assert_eq!(status, expected, "{path}: {value}");
        value
    }
}

#[tokio::test]
async fn only_administrators_may_use_it() {
    let api = Api::new();
    admin::create_user(&*api.storage, By::CommandLine, "ada", Role::Member).unwrap();
    let member = admin::enroll_device(&*api.storage, By::CommandLine, "ada", "phone", None)
        .unwrap()
        .token;
    let (status, body) = api.call(Method::GET, "/v1/admin/users", None, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (status, body) = api
        .call(Method::GET, "/v1/admin/users", Some(&member), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/admin/users",
            Some(&member),
            Some(json!({"name": "eve", "admin": true})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        api.storage.user_id("eve").unwrap(),
        None,
        "nothing was done"
    );
    let users = api
        .admin(Method::GET, "/v1/admin/users", None, StatusCode::OK)
        .await;
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["root", "ada"]);
}

#[tokio::test]
async fn every_action_is_applied_and_audited_with_who_did_it() {
    let api = Api::new();
    let ok = StatusCode::OK;
    let created = api
        .admin(
            Method::POST,
            "/v1/admin/users",
            Some(json!({"name": "ada"})),
            StatusCode::CREATED,
        )
        .await;
    assert!(created["id"].as_i64().unwrap() > 0);
    api.admin(
        Method::PUT,
        "/v1/admin/users/ada/grants/caseload-east",
        Some(json!({"access": "write"})),
        StatusCode::NO_CONTENT,
    )
    .await;
    let grants = api
        .admin(Method::GET, "/v1/admin/users/ada/grants", None, ok)
        .await;
    assert_eq!(
        grants,
        json!({"grants": [{"scope": "caseload-east", "access": "write"}]})
    );
    let enrolled = api
        .admin(
            Method::POST,
            "/v1/admin/devices",
            Some(json!({"user": "ada", "name": "Ada's tablet"})),
            StatusCode::CREATED,
        )
        .await;
    let device = enrolled["device_id"].as_i64().unwrap();
    assert!(enrolled["token"].as_str().unwrap().starts_with("fs_"));
    let issued = api
        .admin(
            Method::POST,
            &format!("/v1/admin/devices/{device}/tokens"),
            None,
            StatusCode::CREATED,
        )
        .await;
    let token_id = issued["token_id"].as_str().unwrap();
    api.admin(
        Method::DELETE,
        &format!("/v1/admin/tokens/{token_id}"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    let devices = api
        .admin(Method::GET, "/v1/admin/devices?user=ada", None, ok)
        .await;
    assert_eq!(devices["devices"][0]["name"], "Ada's tablet");
    assert_eq!(devices["devices"][0]["last_sync_at"], Value::Null);
    api.admin(
        Method::DELETE,
        &format!("/v1/admin/devices/{device}"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    api.admin(
        Method::DELETE,
        "/v1/admin/users/ada/grants/caseload-east",
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    let mappings = json!({"grants": [
        {"group": "supervisors", "access": "read", "scopes": "caseload-*"},
        {"group": "east-therapists", "access": "write", "scopes": "caseload-east"},
    ]});
    api.admin(
        Method::PUT,
        "/v1/admin/group-grants",
        Some(mappings),
        StatusCode::NO_CONTENT,
    )
    .await;
    let stored = api
        .admin(Method::GET, "/v1/admin/group-grants", None, ok)
        .await;
    assert_eq!(stored["grants"].as_array().unwrap().len(), 2);
    assert_eq!(stored["grants"][1]["scopes"], "caseload-*");

    // The command line's actions are the server's; the API's are the administrator's.
    let audit = api
        .admin(Method::GET, "/v1/admin/audit?user=root&limit=50", None, ok)
        .await;
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|entry| entry["collection"] == "admin")
        .map(|entry| {
            (
                entry["action"].as_str().unwrap().to_owned(),
                entry["record_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("create-user (member)".to_owned(), "ada".to_owned()),
        ("grant (write) on caseload-east".into(), "ada".into()),
        ("enroll-device".into(), device.to_string()),
        (
            "issue-token".into(),
            format!("{device}/{}", enrolled["token_id"].as_str().unwrap()),
        ),
        ("issue-token".into(), format!("{device}/{token_id}")),
        ("revoke-token".into(), token_id.to_owned()),
        ("revoke-device".into(), device.to_string()),
        ("revoke-grant on caseload-east".into(), "ada".into()),
        ("set-group-grants".into(), "2 mappings".into()),
    ];
    assert_eq!(actions, expected);
    let by_server = api
        .storage
        .audit(&crate::storage::AuditQuery {
            user: Some("(server)".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(by_server.is_empty(), "the name filter finds users only");
    let all = api
        .admin(
            Method::GET,
            "/v1/admin/audit?record=root&limit=10",
            None,
            ok,
        )
        .await;
    let first = all["entries"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (first["user"].as_str(), first["action"].as_str()),
        (Some("(server)"), Some("create-user (admin)")),
        "the command line created the administrator"
    );
    // Reading the audit log is audited too.
    let reads = api
        .admin(Method::GET, "/v1/admin/audit?limit=1", None, ok)
        .await;
    assert_eq!(reads["entries"][0]["action"], "read-audit");
}

#[tokio::test]
async fn bad_requests_name_what_is_wrong() {
    let api = Api::new();
    let cases = [
        (
            Method::POST,
            "/v1/admin/users",
            Some(json!({"name": "root"})),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            Method::POST,
            "/v1/admin/users",
            Some(json!({"nom": "x"})),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            Method::POST,
            "/v1/admin/users",
            Some(json!({"name": "a\nb"})),
            StatusCode::BAD_REQUEST,
            "control",
        ),
        (
            Method::PUT,
            "/v1/admin/users/nobody/grants/north",
            Some(json!({"access": "read"})),
            StatusCode::NOT_FOUND,
            "nobody",
        ),
        (
            Method::PUT,
            "/v1/admin/users/root/grants/north",
            Some(json!({"access": "own"})),
            StatusCode::BAD_REQUEST,
            "access",
        ),
        (
            Method::DELETE,
            "/v1/admin/devices/999",
            None,
            StatusCode::NOT_FOUND,
            "999",
        ),
        (
            Method::POST,
            "/v1/admin/devices/999/tokens",
            None,
            StatusCode::NOT_FOUND,
            "999",
        ),
        (
            Method::PUT,
            "/v1/admin/group-grants",
            Some(json!({"grants": [
                {"group": "ok", "access": "read", "scopes": "a"},
                {"group": "bad", "access": "read", "scopes": "ca*se"},
            ]})),
            StatusCode::BAD_REQUEST,
            "grants[1]",
        ),
        (
            Method::GET,
            "/v1/admin/audit?since=yesterday",
            None,
            StatusCode::BAD_REQUEST,
            "since",
        ),
    ];
    for (method, path, body, status, says) in cases {
        let (answered, error) = api.call(method, path, Some(&api.admin), body).await;
        assert_eq!(answered, status, "{path}: {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{path}: `{message}` does not say `{says}`"
        );
    }
    assert!(
        admin::group_grants(&*api.storage)
            .unwrap()
            .grants()
            .is_empty(),
        "nothing was set"
    );
}

#[tokio::test]
async fn the_openapi_document_and_the_routes_agree() {
    let api = Api::new();
    let document: Value = serde_json::from_str(super::OPENAPI).unwrap();
    let paths = document["paths"].as_object().unwrap();
    // Every route of the source is documented...
    let source = include_str!("../admin_api.rs");
    let routed: Vec<&str> = source
        .split(".route(")
        .skip(1)
        .map(|rest| {
            let path = rest.trim_start().trim_start_matches('"');
            &path[..path.find('"').unwrap()]
        })
        .collect();
    assert!(routed.len() >= 10);
    for path in &routed {
        assert!(paths.contains_key(*path), "{path} is not documented");
    }
    // ... and every documented operation answers (401 without a token), as documented.
    for (path, operations) in paths {
        assert!(
            routed.contains(&path.as_str()),
            "{path} is documented but not routed"
        );
        let concrete = path
            .replace("{name}", "root")
            .replace("{scope}", "north")
            .replace("{id}", "1")
            .replace("{actor}", "ab");
        for (method, operation) in operations.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, _) = api.call(method.clone(), &concrete, None, None).await;
            let public = operation["security"] == json!([]);
            let expected = if public {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(status, expected, "{method} {path}");
            for code in operation["responses"].as_object().unwrap().keys() {
                assert!(code.parse::<u16>().is_ok(), "{method} {path}: {code}");
            }
        }
    }
}

#[tokio::test]
async fn the_consoles_routes_are_for_administrators_and_show_what_is_stored() {
    let api = Api::new();
    let ok = StatusCode::OK;
    admin::create_user(&*api.storage, By::CommandLine, "ada", Role::Member).unwrap();
    admin::grant(
        &*api.storage,
        By::CommandLine,
        "ada",
        "caseload-east",
        Access::Write,
    )
    .unwrap();
    admin::grant(
        &*api.storage,
        By::CommandLine,
        "root",
        "clinic",
        Access::Read,
    )
    .unwrap();
    let member = admin::enroll_device(&*api.storage, By::CommandLine, "ada", "phone", None)
        .unwrap()
        .token;
    for path in ["/v1/admin/grants", "/v1/admin/health", "/v1/admin/schema"] {
        let (status, body) = api.call(Method::GET, path, Some(&member), None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{path}"
        );
        assert_eq!(body.as_object().unwrap().len(), 2, "{path}: {body}");
    }

    let grants = api.admin(Method::GET, "/v1/admin/grants", None, ok).await;
    assert_eq!(
        grants,
        json!({"grants": [
            {"user": "root", "scope": "clinic", "access": "read"},
            {"user": "ada", "scope": "caseload-east", "access": "write"},
        ]})
    );

    let schemas = api.admin(Method::GET, "/v1/admin/schema", None, ok).await;
    assert_eq!(schemas, json!({"current": null, "versions": []}));
    let first = r#"{"collections": {"clients": {"scope_field": "caseload_id",
        "fields": {"caseload_id": {"type": "string", "required": true}}}}}"#;
    let second = first.replace(r#"}}}}}"#, r#"}, "name": {"type": "string"}}}}}"#);
    crate::schema::set_schema(&*api.storage, first).unwrap();
    crate::schema::set_schema(&*api.storage, &second).unwrap();
    let schemas = api.admin(Method::GET, "/v1/admin/schema", None, ok).await;
    assert_eq!(schemas["current"], 2);
    let versions = schemas["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["version"], 1);
    assert!(versions[1]["set_at"].as_i64().unwrap() > 0);
    let fields = &versions[1]["schema"]["collections"]["clients"]["fields"];
    assert_eq!(fields["name"]["type"], "string");
    assert!(versions[0]["schema"]["collections"]["clients"]["fields"]["name"].is_null());

    // Before the first sample the history is empty; the totals count what happened already.
    let health = api.admin(Method::GET, "/v1/admin/health", None, ok).await;
    assert_eq!(health["interval_secs"], 60);
    assert_eq!(health["at"], json!([]));
    assert_eq!(health["totals"]["unauthorized"], 0);
    let (status, _) = api
        .call(Method::GET, "/v1/admin/health", Some("fs_x"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api.state.metrics_history.sample(&api.state.metrics, 1_000);
    let health = api.admin(Method::GET, "/v1/admin/health", None, ok).await;
    assert_eq!(health["at"], json!([1_000]));
    assert_eq!(health["series"]["unauthorized"], json!([1.0]));
    assert_eq!(
        health["series"]["requests"],
        json!([8.0]),
        "every call so far"
    );
    assert_eq!(health["series"]["pushes"], json!([0.0]));
    assert_eq!(health["series"]["push_latency_ms"], json!([null]));
}

#[tokio::test]
async fn webhooks_are_added_listed_without_their_secret_and_removed() {
    let api = Api::new();
    api.admin(
        Method::POST,
        "/v1/admin/users",
        Some(json!({"name": "ehr", "service": true})),
        StatusCode::CREATED,
    )
    .await;
    for url in [
        "http://ehr.example/hook",
        "ftp://127.0.0.1/hook",
        "not a url",
    ] {
        let (status, body) = api
            .call(
                Method::POST,
                "/v1/admin/webhooks",
                Some(&api.admin),
                Some(json!({"url": url, "user": "ehr"})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
    }
    api.admin(
        Method::POST,
        "/v1/admin/webhooks",
        Some(json!({"url": "https://ehr.example/hook", "user": "nobody"})),
        StatusCode::NOT_FOUND,
    )
    .await;
    let added = api
        .admin(
            Method::POST,
            "/v1/admin/webhooks",
            Some(json!({"url": "https://ehr.example/hook", "user": "ehr"})),
            StatusCode::CREATED,
        )
        .await;
    let secret = added["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    let listed = api
        .admin(Method::GET, "/v1/admin/webhooks", None, StatusCode::OK)
        .await;
    assert_eq!(listed[0]["user"], json!("ehr"));
    assert_eq!(listed[0]["failing_since"], Value::Null);
    assert!(
        !listed.to_string().contains(secret),
        "the secret is shown once"
    );
    let path = format!("/v1/admin/webhooks/{}", added["id"]);
    api.admin(Method::DELETE, &path, None, StatusCode::NO_CONTENT)
        .await;
    api.admin(Method::DELETE, &path, None, StatusCode::NOT_FOUND)
        .await;
    let lines = api
        .storage
        .audit(&crate::storage::AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let actions: Vec<&str> = lines.iter().map(|l| l.action.as_str()).collect();
    assert!(
        actions.iter().any(|a| a.starts_with("add-webhook")),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a.starts_with("remove-webhook")),
        "{actions:?}"
    );
}

#[tokio::test]
async fn an_administrator_erases_a_field_naming_exactly_one_kind_of_erasure() {
    let api = Api::new();
    crate::schema::set_schema(
        &*api.storage,
        r#"{"collections": {"clients": {"scope_field": "caseload_id", "fields": {
            "caseload_id": {"type": "string", "required": true},
            "name": {"type": "string", "required": true},
            "notes": {"type": "text"}}}}}"#,
    )
    .unwrap();
    admin::grant(
        &*api.storage,
        By::CommandLine,
        "root",
        "north",
        Access::Write,
    )
    .unwrap();
    let created = api
        .admin(
            Method::POST,
            "/v1/records/clients",
            Some(json!({"fields": {"caseload_id": "north", "name": "Ada",
                                   "notes": "CANARY wrong child"}})),
            StatusCode::CREATED,
        )
        .await;
    let path = format!(
        "/v1/admin/records/clients/{}/erase",
        created["id"].as_str().unwrap()
    );
    for ambiguous in [
        json!({"reason": "consent withdrawn"}),
        json!({"fields": ["notes"], "record": true, "reason": "consent withdrawn"}),
    ] {
        api.admin(
            Method::POST,
            &path,
            Some(ambiguous),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let erased = api
        .admin(
            Method::POST,
            &path,
            Some(json!({"fields": ["notes"], "reason": "typed into the wrong record"})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        erased,
        json!({"erased": "fields notes", "epoch": 1, "attachments_dropped": 0, "scrubbed": true})
    );
    let read = api
        .admin(
            Method::GET,
            &format!("/v1/records/clients/{}", created["id"].as_str().unwrap()),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        read["fields"],
        json!({"caseload_id": "north", "name": "Ada"})
    );
    let missing = "/v1/admin/records/clients/nobody/erase";
    api.admin(
        Method::POST,
        missing,
        Some(json!({"record": true, "reason": "x"})),
        StatusCode::NOT_FOUND,
    )
    .await;
}
