//! A device's first sync stores its pages without the record indexes and builds them at its
//! end; a first sync cancelled half-way (its future dropped, as an app does when it goes to the
//! background) must not leave the store without them.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{fields, options, schema};
use fieldsync_core::{
    BoxFuture, Credentials, Store, SyncClient, SyncConfig, Transport, TransportRequest,
    TransportResponse,
};
use fieldsync_record::protocol::{self, PullResponse, PulledRecord};
use serde_bytes::ByteBuf;
use serde_json::json;
use tokio::sync::oneshot;

/// Answers the pulls with the pages given, in order; once they are used up, signals `stalled`
/// and never answers, like a server that stopped talking.
struct Server {
    pages: Mutex<Vec<PullResponse>>,
    stalled: Mutex<Option<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Server")
    }
}

impl Transport for Server {
    fn send<'a>(
        &'a self,
        _credentials: &'a Credentials,
        _request: TransportRequest,
    ) -> BoxFuture<'a, fieldsync_core::Result<TransportResponse>> {
        let mut pages = self.pages.lock().unwrap();
        if pages.is_empty() {
            if let Some(stalled) = self.stalled.lock().unwrap().take() {
                let _ = stalled.send(());
            }
            return Box::pin(std::future::pending());
        }
        let body = protocol::encode(&pages.remove(0));
        Box::pin(async move {
            Ok(TransportResponse {
                chunk_sha256: None,
                status: 200,
                retry_after_secs: None,
                body,
            })
        })
    }
}

/// `count` clients as a first sync's page sends them: whole documents with their values.
fn first_sync_page(count: usize, more: bool) -> PullResponse {
    let dir = tempfile::tempdir().unwrap();
    let sender = Store::open(dir.path().join("sender.db"), schema(), options()).unwrap();
    for i in 0..count {
        sender
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": format!("c{i}")})),
            )
            .unwrap();
    }
    let records = sender
        .outbox(count)
        .unwrap()
        .into_iter()
        .map(|entry| {
            let document = sender
                .document(&entry.collection, &entry.record_id)
                .unwrap();
            let values = sender.get("clients", &entry.record_id).unwrap().unwrap();
            PulledRecord {
                epoch: 0,
                collection: entry.collection,
                id: entry.record_id,
                scope: entry.scope,
                payload: protocol::Payload::Document(ByteBuf::from(document)),
                fields: Some(values.fields),
                deleted: false,
            }
        })
        .collect();
    PullResponse {
        records,
        next_cursor: if more { "c1" } else { "c2" }.into(),
        more,
        revoked_scopes: Vec::new(),
        authors: Vec::new(),
    }
}

fn index_count(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'idx:%'",
            [],
            |row| row.get(0),
        )
        .unwrap()
}

fn client(pages: Vec<PullResponse>, stalled: Option<oneshot::Sender<()>>) -> SyncClient {
    SyncClient::with_transport(
        SyncConfig::new("http://unused.invalid", "token"),
        Arc::new(Server {
            pages: Mutex::new(pages),
            stalled: Mutex::new(stalled),
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_cancelled_half_way_leaves_its_indexes_to_the_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let store = Store::open(&path, schema(), options()).unwrap();
    let wanted = index_count(&path);
    assert!(wanted > 0);

    // The first page has more to follow; the server never answers the second.
    let (stalled, stalled_rx) = oneshot::channel();
    let first = client(vec![first_sync_page(20, true)], Some(stalled));
    tokio::select! {
        _ = first.sync_now(&store) => panic!("the second page never comes"),
        _ = stalled_rx => {}
    }
    assert_eq!(
        index_count(&path),
        0,
        "the first sync stores without indexes"
    );

    // The app syncs again later: it builds the indexes whatever the pull brings.
    let second = client(vec![first_sync_page(0, false)], None);
    second.sync_now(&store).await.unwrap();
    assert_eq!(index_count(&path), wanted);
}
