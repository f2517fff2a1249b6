//! The last push batch's answer is stored while the pull's first page is asked for: when the
//! pull fails, the stored answer must hold, and when both succeed, both the answer and the
//! page's cursor are stored.

mod common;

use std::sync::Mutex;

use common::{fields, options, schema};
use fieldsync_core::{
    BoxFuture, Credentials, Error, Store, SyncClient, SyncConfig, Transport, TransportRequest,
    TransportResponse,
};
use fieldsync_record::protocol::{self, PullResponse, PushRequest, PushResponse, PushResult};
use serde_json::json;

/// Accepts every pushed record and answers pulls with `pull_status` (an empty, final page when
/// it is 200). Counts the pushes and remembers each pull's cursor.
#[derive(Debug)]
struct Server {
    pull_status: u16,
    pushes: Mutex<u32>,
    pull_cursors: Mutex<Vec<Option<String>>>,
}

impl Transport for Server {
    fn send<'a>(
        &'a self,
        _credentials: &'a Credentials,
        request: TransportRequest,
    ) -> BoxFuture<'a, fieldsync_core::Result<TransportResponse>> {
        let (status, body) = match request {
            TransportRequest::Push { body, .. } => {
                *self.pushes.lock().unwrap() += 1;
                let request: PushRequest = protocol::decode(&body, 64 << 20).unwrap();
                let results = request
                    .records
                    .into_iter()
                    .map(|r| PushResult {
                        collection: r.collection,
                        id: r.id,
                        rejected: None,
                    })
                    .collect();
                (200, protocol::encode(&PushResponse { results }))
            }
            TransportRequest::Pull { cursor, .. } => {
                self.pull_cursors.lock().unwrap().push(cursor);
                if self.pull_status == 200 {
                    let page = PullResponse {
                        records: Vec::new(),
                        next_cursor: "c1".into(),
                        more: false,
                        revoked_scopes: Vec::new(),
                        authors: Vec::new(),
                    };
                    (200, protocol::encode(&page))
                } else {
                    (
                        self.pull_status,
                        br#"{"code":"internal","message":"down"}"#.to_vec(),
                    )
                }
            }
            _ => (404, Vec::new()),
        };
        Box::pin(async move {
            Ok(TransportResponse {
                chunk_sha256: None,
                status,
                retry_after_secs: None,
                body,
            })
        })
    }
}

fn store_with_writes(dir: &std::path::Path, count: usize) -> Store {
    let store = Store::open(dir.join("device.db"), schema(), options()).unwrap();
    for i in 0..count {
        store
            .insert(
                "clients",
                fields(json!({"name": format!("client {i}"), "caseload_id": "north"})),
            )
            .unwrap();
    }
    store
}

async fn sync(store: &Store, pull_status: u16, batch: usize) -> (Server, Result<u32, Error>) {
    let server = Server {
        pull_status,
        pushes: Mutex::new(0),
        pull_cursors: Mutex::new(Vec::new()),
    };
    let transport = std::sync::Arc::new(server);
    let mut config = SyncConfig::new("http://localhost", "token");
    config.push_batch_size = batch;
    let client = SyncClient::with_transport(config, transport.clone());
    let result = client
        .sync_now(store)
        .await
        .map(|report| report.pushed as u32);
    drop(client);
    let server = std::sync::Arc::try_unwrap(transport).unwrap();
    (server, result)
}

#[tokio::test]
async fn a_failed_pull_keeps_the_stored_answer_of_the_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_writes(dir.path(), 5);
    let (server, result) = sync(&store, 503, 2).await;
    assert!(
        matches!(result, Err(Error::Server { status: 503, .. })),
        "{result:?}"
    );
    // Three batches (2, 2, 1) were answered, the last while the pull was asked for.
    assert_eq!(*server.pushes.lock().unwrap(), 3);
    assert_eq!(*server.pull_cursors.lock().unwrap(), vec![None]);
    assert_eq!(store.outbox_len().unwrap(), 0);
}

#[tokio::test]
async fn the_last_answer_and_the_first_page_are_both_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_writes(dir.path(), 4);
    // A batch of exactly the outbox's size is the last one.
    let (server, result) = sync(&store, 200, 4).await;
    assert_eq!(result.unwrap(), 4);
    assert_eq!(*server.pushes.lock().unwrap(), 1);
    assert_eq!(store.outbox_len().unwrap(), 0);
    // The page's cursor was stored: the next sync pulls from it, with nothing to push.
    let (server, result) = sync(&store, 200, 4).await;
    assert_eq!(result.unwrap(), 0);
    assert_eq!(*server.pushes.lock().unwrap(), 0);
    assert_eq!(
        *server.pull_cursors.lock().unwrap(),
        vec![Some("c1".to_owned())]
    );
}

#[tokio::test]
async fn a_batch_size_without_bound_pushes_the_outbox_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_writes(dir.path(), 3);
    let (server, result) = sync(&store, 200, usize::MAX).await;
    assert_eq!(result.unwrap(), 3);
    assert_eq!(*server.pushes.lock().unwrap(), 1);
    assert_eq!(store.outbox_len().unwrap(), 0);
}
