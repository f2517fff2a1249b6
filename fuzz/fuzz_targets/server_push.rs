//! Arbitrary bytes as a `/v1/push` body from an authenticated device, sent as they are and
//! compressed (so that they reach the MessagePack decoder and the merge). The server must
//! answer, and never with a 5xx.

#![no_main]

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use fieldsync_record::protocol;
use fieldsync_server::storage::sqlite::SqliteStorage;
use fieldsync_server::storage::{Access, Role};
use fieldsync_server::{AppState, Limits, admin, router};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    app: Router,
    token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // The server catches the panics Automerge raises on some crafted input; libFuzzer's
        // hook would abort on those too. A panic that escapes still aborts through the
        // fuzz_target! wrapper, and one inside a handler becomes a 500, which fails below.
        std::panic::set_hook(Box::new(|_| {}));
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(&dir.path().join("server.db")).unwrap());
        admin::create_user(&*storage, "ada", Role::Member).unwrap();
        admin::grant(&*storage, "ada", "north", Access::Write).unwrap();
        let token = admin::enroll_device(&*storage, "ada", "phone", None)
            .unwrap()
            .token;
        let limits = Limits {
            requests_per_second: 0,
            ..Limits::default()
        };
        let app = router(AppState::new(storage, limits));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Fixture {
            _dir: dir,
            runtime,
            app,
            token,
        }
    })
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, data).unwrap();
    encoder.finish().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    for body in [data.to_vec(), deflate(data)] {
        let request = Request::post("/v1/push")
            .header(protocol::VERSION_HEADER, "1")
            .header("content-type", protocol::CONTENT_TYPE)
            .header("authorization", format!("Bearer {}", fixture.token))
            .body(Body::from(body))
            .unwrap();
        let response = fixture
            .runtime
            .block_on(fixture.app.clone().oneshot(request))
            .unwrap();
        let status = response.status();
        assert!(!status.is_server_error(), "the server answered {status}");
    }
});
