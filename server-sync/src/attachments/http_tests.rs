//! The attachment endpoints in process: chunks sent, resumed and fetched, each checked; who may
//! send and fetch; and what is refused.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use fieldsync_record::protocol::{
    self, ATTACHMENT_CHUNK_BYTES, AttachmentStatus, CHUNK_SHA256_HEADER,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

use crate::admin::{self, By};
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Access, AuditQuery, Role, Storage};
use crate::{AppState, Limits, router};

struct Server {
    _dir: tempfile::TempDir,
    storage: Arc<SqliteStorage>,
    app: axum::Router,
    state: AppState,
}

/// An answer: status, body, and the chunk SHA-256 header if any.
type Answer = (StatusCode, Vec<u8>, Option<String>);

impl Server {
    fn new() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(&dir.path().join("server.db")).unwrap());
        let state = AppState::new(
            storage.clone(),
            Limits {
                requests_per_second: 0,
                max_attachment_bytes: 3 * ATTACHMENT_CHUNK_BYTES as u64,
                ..Limits::default()
            },
        );
        Server {
            _dir: dir,
            storage,
            app: router(state.clone()),
            state,
        }
    }

    /// A user with grants, and a device token of theirs.
    fn user(&self, name: &str, grants: &[(&str, Access)]) -> String {
        admin::create_user(&*self.storage, By::CommandLine, name, Role::Member).unwrap();
        for (scope, access) in grants {
            admin::grant(&*self.storage, By::CommandLine, name, scope, *access).unwrap();
        }
        admin::enroll_device(&*self.storage, By::CommandLine, name, "phone", None)
            .unwrap()
            .token
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        chunk: Option<(&[u8], [u8; 32])>,
    ) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header(protocol::VERSION_HEADER, "1");
        let request = match chunk {
            Some((bytes, sha256)) => request
                .header(CHUNK_SHA256_HEADER, hex::encode(sha256))
                .body(Body::from(bytes.to_vec())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let digest = response
            .headers()
            .get(CHUNK_SHA256_HEADER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body.to_vec(), digest)
    }

    /// Sends chunk `n` of `bytes` into `scope`.
    async fn put(&self, token: &str, scope: &str, bytes: &[u8], n: usize) -> Answer {
        let sha = hex::encode(Sha256::digest(bytes));
        let end = ((n + 1) * ATTACHMENT_CHUNK_BYTES).min(bytes.len());
        let chunk = &bytes[n * ATTACHMENT_CHUNK_BYTES..end];
        let path = format!(
            "/v1/scopes/{scope}/attachments/{sha}/chunks/{n}?size={}",
            bytes.len()
        );
        let sha256 = Sha256::digest(chunk).into();
        self.send(Method::PUT, &path, token, Some((chunk, sha256)))
            .await
    }

    async fn status(&self, token: &str, scope: &str, bytes: &[u8]) -> Answer {
        let sha = hex::encode(Sha256::digest(bytes));
        let path = format!("/v1/scopes/{scope}/attachments/{sha}");
        self.send(Method::GET, &path, token, None).await
    }

    async fn get(&self, token: &str, scope: &str, bytes: &[u8], n: usize) -> Answer {
        let sha = hex::encode(Sha256::digest(bytes));
        let path = format!("/v1/scopes/{scope}/attachments/{sha}/chunks/{n}");
        self.send(Method::GET, &path, token, None).await
    }
}

fn recording(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn parsed(body: &[u8]) -> AttachmentStatus {
    serde_json::from_slice(body).unwrap()
}

fn count(counter: &prometheus_client::metrics::counter::Counter) -> u64 {
    counter.get()
}

#[tokio::test]
async fn chunks_are_sent_resumed_and_fetched_each_checked() {
    let server = Server::new();
    let ada = server.user("ada", &[("north", Access::Write)]);
    let bytes = recording(2 * ATTACHMENT_CHUNK_BYTES + 777);
    // The second chunk first, as a resumed upload might; then it again (its answer was lost).
    let (status, body, _) = server.put(&ada, "north", &bytes, 1).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(parsed(&body).received, [1]);
    server.put(&ada, "north", &bytes, 1).await;
    let (_, body, _) = server.status(&ada, "north", &bytes).await;
    assert_eq!(
        parsed(&body),
        AttachmentStatus {
            size: bytes.len() as u64,
            received: vec![1],
            complete: false
        }
    );
    // Not complete: nothing can be fetched yet.
    let (status, _, _) = server.get(&ada, "north", &bytes, 1).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.put(&ada, "north", &bytes, 0).await;
    let (_, body, _) = server.put(&ada, "north", &bytes, 2).await;
    assert!(parsed(&body).complete);
    let metrics = &server.state.metrics;
    assert_eq!(
        (
            count(&metrics.attachment_chunks_received),
            count(&metrics.attachment_chunks_repeated)
        ),
        (3, 1),
        "each chunk stored once"
    );
    let mut fetched = Vec::new();
    for n in 0..3 {
        let (status, chunk, digest) = server.get(&ada, "north", &bytes, n).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(digest.unwrap(), hex::encode(Sha256::digest(&chunk)));
        fetched.extend(chunk);
    }
    assert_eq!(fetched, bytes);
    let (status, _, _) = server.get(&ada, "north", &bytes, 3).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let audit = server
        .storage
        .audit(&AuditQuery {
            user: Some("ada".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    let actions: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|l| (l.action.as_str(), l.collection.as_str(), l.scope.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("download", "attachment", "north"),
            ("upload", "attachment", "north")
        ]
    );
}

#[tokio::test]
async fn a_known_hash_gives_nothing_outside_the_scopes_one_may_read() {
    let server = Server::new();
    let ada = server.user("ada", &[("north", Access::Write)]);
    let carol = server.user("carol", &[("north", Access::Read)]);
    let eve = server.user("eve", &[("south", Access::Write)]);
    let bytes = recording(1000);
    server.put(&ada, "north", &bytes, 0).await;
    // A reader of the scope fetches it; a writer of another scope gets what a missing one gets.
    assert_eq!(
        server.get(&carol, "north", &bytes, 0).await.0,
        StatusCode::OK
    );
    let (status, body, _) = server.get(&eve, "north", &bytes, 0).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (missing, missing_body, _) = server.get(&eve, "south", &bytes, 0).await;
    assert_eq!((status, body), (missing, missing_body), "the same answer");
    assert_eq!(
        server.status(&eve, "north", &bytes).await.0,
        StatusCode::NOT_FOUND
    );
    // Sending the same bytes into eve's own scope does not reach ada's.
    server.put(&eve, "south", &bytes, 0).await;
    assert_eq!(
        server.get(&eve, "north", &bytes, 0).await.0,
        StatusCode::NOT_FOUND
    );
    // A reader may not send.
    let other = recording(10);
    let (status, _, _) = server.put(&carol, "north", &other, 0).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let sha256: [u8; 32] = Sha256::digest(&other).into();
    assert!(
        server
            .storage
            .attachment("north", &sha256)
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn corrupted_oversized_and_misnamed_chunks_are_refused() {
    let server = Server::new();
    let ada = server.user("ada", &[("north", Access::Write)]);
    let bytes = recording(1500);
    let sha256: [u8; 32] = Sha256::digest(&bytes).into();
    let sha = hex::encode(sha256);
    let path = format!("/v1/scopes/north/attachments/{sha}/chunks/0?size=1500");
    let mut flipped = bytes.clone();
    flipped[700] ^= 1;
    // A chunk whose bytes do not match the hash sent with them.
    let (status, body, _) = server
        .send(Method::PUT, &path, &ada, Some((&flipped, sha256)))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("do not match its SHA-256"));
    // A chunk consistent with its own hash but not with the attachment's: dropped whole.
    let flipped_sha256 = Sha256::digest(&flipped).into();
    let (status, body, _) = server
        .send(Method::PUT, &path, &ada, Some((&flipped, flipped_sha256)))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("dropped"));
    assert!(
        server
            .storage
            .attachment("north", &sha256)
            .unwrap()
            .is_none()
    );
    let over = 4 * ATTACHMENT_CHUNK_BYTES;
    for (path, expected) in [
        // Over the server's limit (three chunks here).
        (
            format!("/v1/scopes/north/attachments/{sha}/chunks/0?size={over}"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        // A chunk of the wrong length, a chunk past the end, no size, a bad hash.
        (
            format!("/v1/scopes/north/attachments/{sha}/chunks/0?size=1499"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/v1/scopes/north/attachments/{sha}/chunks/1?size=1500"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/v1/scopes/north/attachments/{sha}/chunks/0"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!(
                "/v1/scopes/north/attachments/{}/chunks/0?size=1500",
                &sha[1..]
            ),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, body, _) = server
            .send(Method::PUT, &path, &ada, Some((&bytes, sha256)))
            .await;
        assert_eq!(
            status,
            expected,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(
        server
            .storage
            .attachment("north", &sha256)
            .unwrap()
            .is_none()
    );
}
