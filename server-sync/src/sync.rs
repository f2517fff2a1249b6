//! `POST /v1/push` and `GET /v1/pull`: checking, merging and serving records.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use automerge::{AutoCommit, Change, ChangeHash};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use fieldsync_core::protocol::{
    self, DecodeError, Payload, PullResponse, PulledRecord, PushRecord, PushRequest, RejectCode,
    Rejection,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::auth::{Caller, authenticate};
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::storage::{MergedRecord, StoredRecord};
use crate::{AppState, Limits};

/// Handles a push: each record is checked, merged into the server's copy and added to the
/// feed, or rejected on its own.
pub async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let started = Instant::now();
    let caller = authorize(&state, &headers).await?;
    let body = read_body(body, state.limits.max_body_bytes).await?;
    let storage = state.storage.clone();
    let limits = state.limits.clone();
    let metrics = state.metrics.clone();
    let response = blocking(move || {
        let request: PushRequest =
            protocol::decode(&body, limits.max_decompressed_bytes).map_err(decode_error)?;
        // A NUL byte cannot be stored in PostgreSQL text; refused here on every backend.
        if request.batch_id.is_empty()
            || request.batch_id.len() > 128
            || request.batch_id.contains('\0')
        {
            return Err(ServerError::BadRequest(
                "batch_id must be 1 to 128 characters, without NUL".into(),
            ));
        }
        if request.records.len() > limits.max_records_per_push {
            return Err(ServerError::TooLarge(format!(
                "at most {} records per push",
                limits.max_records_per_push
            )));
        }
        let changes: usize = request
            .records
            .iter()
            .map(|r| match &r.payload {
                Payload::Changes(changes) => changes.len(),
                Payload::Document(_) => 1,
            })
            .sum();
        if changes > limits.max_changes_per_push {
            return Err(ServerError::TooLarge(format!(
                "at most {} changes per push",
                limits.max_changes_per_push
            )));
        }
        // `None` when the device is unbound and its first change's actor belongs to another
        // live device (or no change decodes): then no change it pushes is its own.
        let actor = match &caller.actor {
            Some(bound) => Some(bound.clone()),
            None => match first_actor(&request, limits.max_decompressed_bytes) {
                Some(claimed) => storage.bind_actor(caller.device_id, &claimed)?,
                None => None,
            },
        };
        let mut applied = 0;
        let mut merge = |record: &PushRecord, stored: Option<StoredRecord>| {
            let merged = merge(&caller, actor.as_deref(), &limits, record, stored);
            if let Ok(merged) = &merged {
                applied += merged.new_changes.len();
            }
            merged
        };
        let response = storage.push(
            caller.device_id,
            &request.batch_id,
            &request.records,
            &mut merge,
        )?;
        let rejected = response
            .results
            .iter()
            .filter(|r| r.rejected.is_some())
            .count();
        Metrics::add(&metrics.records_rejected, rejected);
        Metrics::add(&metrics.records_accepted, response.results.len() - rejected);
        Metrics::add(&metrics.changes_applied, applied);
        Ok(response)
    })
    .await?;
    Metrics::inc(&state.metrics.pushes);
    state.metrics.push_latency.observe(started.elapsed());
    Ok(message_response(&response))
}

/// The query string of a pull.
#[derive(Debug, Deserialize)]
pub struct PullParams {
    cursor: Option<String>,
    limit: Option<u32>,
}

/// What a cursor remembers: where the client is, in which mode, for which scopes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// `true` while a first sync pages through whole documents.
    documents: bool,
    /// Feed position reached.
    seq: i64,
    /// The scopes the client has been sent.
    scopes: BTreeSet<String>,
}

impl Cursor {
    fn encode(&self) -> String {
        hex::encode(rmp_serde::to_vec(self).expect("cursors always serialize"))
    }

    fn decode(text: &str) -> Result<Cursor, ServerError> {
        let invalid = || ServerError::BadRequest("invalid cursor".into());
        let bytes = hex::decode(text).map_err(|_| invalid())?;
        rmp_serde::from_slice(&bytes).map_err(|_| invalid())
    }
}

/// Handles a pull: what changed in the caller's scopes after the cursor.
///
/// Without a cursor, or when scopes were added to the caller's grants since the cursor, the
/// pull pages through whole documents (with their values) ordered by their last change; then
/// it follows the feed of changes. Scopes the cursor covers but the caller may no longer read
/// come back in `revoked_scopes` until the client moves on to the new cursor.
pub async fn pull(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<PullParams>, QueryRejection>,
) -> Result<Response, ServerError> {
    let started = Instant::now();
    let caller = authorize(&state, &headers).await?;
    // Looked at only once the token checked out, and refused with the JSON error body, not
    // the extractor's plain text.
    let Query(params) =
        params.map_err(|_| ServerError::BadRequest("the query string does not decode".into()))?;
    let cursor = params.cursor.as_deref().map(Cursor::decode).transpose()?;
    let limit = params
        .limit
        .unwrap_or(state.limits.default_pull_limit)
        .clamp(1, state.limits.max_pull_limit);
    let storage = state.storage.clone();
    let response = blocking(move || {
        let readable: BTreeSet<String> = caller.readable_scopes().into_iter().collect();
        let scopes: Vec<String> = readable.iter().cloned().collect();
        let (revoked, added) = match &cursor {
            Some(cursor) => (
                cursor
                    .scopes
                    .difference(&readable)
                    .cloned()
                    .collect::<Vec<_>>(),
                readable.difference(&cursor.scopes).count(),
            ),
            None => (Vec::new(), 0),
        };
        let documents_from = match &cursor {
            None => Some(0),
            Some(_) if added > 0 => Some(0),
            Some(cursor) if cursor.documents => Some(cursor.seq),
            Some(_) => None,
        };
        let (records, next, more) = match documents_from {
            Some(after) => {
                let page = storage.documents_page(&scopes, after, limit)?;
                let records = page
                    .entries
                    .into_iter()
                    .map(|entry| {
                        let fields = serde_json::from_str(&entry.fields_json).map_err(|_| {
                            ServerError::Corrupt("stored values do not decode".into())
                        })?;
                        Ok(PulledRecord {
                            collection: entry.collection,
                            id: entry.record_id,
                            scope: entry.scope,
                            payload: Payload::Document(ByteBuf::from(entry.doc)),
                            fields: Some(fields),
                            deleted: entry.deleted,
                        })
                    })
                    .collect::<Result<Vec<_>, ServerError>>()?;
                // Once every document is sent, the feed after the last one holds the rest.
                let next = Cursor {
                    documents: page.more,
                    seq: page.last_seq,
                    scopes: readable,
                };
                (records, next, page.more)
            }
            None => {
                let after = cursor.as_ref().map_or(0, |c| c.seq);
                let page = storage.feed_page(&scopes, after, limit)?;
                let records = page
                    .entries
                    .into_iter()
                    // A device already has the changes it pushed.
                    .filter(|entry| entry.device_id != caller.device_id)
                    .map(|entry| PulledRecord {
                        collection: entry.collection,
                        id: entry.record_id,
                        scope: entry.scope,
                        payload: Payload::Changes(
                            entry.changes.into_iter().map(ByteBuf::from).collect(),
                        ),
                        fields: None,
                        deleted: false,
                    })
                    .collect();
                let next = Cursor {
                    documents: false,
                    seq: page.last_seq,
                    scopes: readable,
                };
                (records, next, page.more)
            }
        };
        let pulled: Vec<(String, String, String)> = records
            .iter()
            .map(|r| (r.collection.clone(), r.id.clone(), r.scope.clone()))
            .collect();
        storage.record_pull(caller.device_id, &pulled)?;
        Ok(PullResponse {
            records,
            next_cursor: next.encode(),
            more,
            revoked_scopes: revoked,
        })
    })
    .await?;
    Metrics::inc(&state.metrics.pulls);
    Metrics::add(&state.metrics.records_pulled, response.records.len());
    state.metrics.pull_latency.observe(started.elapsed());
    Ok(message_response(&response))
}

/// Authenticates the caller, then checks the protocol version; without a valid token nothing
/// else is looked at.
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Caller, ServerError> {
    let storage = state.storage.clone();
    let headers_for_auth = headers.clone();
    let caller = blocking(move || authenticate(&*storage, &headers_for_auth))
        .await
        .inspect_err(|err| {
            if matches!(err, ServerError::Unauthorized(_)) {
                Metrics::inc(&state.metrics.unauthorized);
            }
        })?;
    if let Err(retry_after_secs) = state.rate_limiter.check(caller.device_id) {
        Metrics::inc(&state.metrics.rate_limited);
        return Err(ServerError::RateLimited { retry_after_secs });
    }
    let version = headers
        .get(protocol::VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    if version != protocol::VERSION.to_string() {
        return Err(ServerError::UnsupportedVersion(
            version.chars().take(16).collect(),
        ));
    }
    Ok(caller)
}

async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ServerError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ServerError::TooLarge(format!("bodies are limited to {limit} bytes")))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ServerError::Internal(format!("a blocking task failed: {err}")))?
}

fn message_response<T: Serialize>(message: &T) -> Response {
    let mut response = protocol::encode(message).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(protocol::CONTENT_TYPE),
    );
    response
}

fn decode_error(err: DecodeError) -> ServerError {
    match err {
        DecodeError::TooLarge { .. } => ServerError::TooLarge(err.to_string()),
        DecodeError::Compression | DecodeError::Malformed(_) => {
            ServerError::BadRequest(err.to_string())
        }
    }
}

/// The actor of the first change in a push, which binds a device that has pushed nothing yet.
fn first_actor(request: &PushRequest, max_inflated: usize) -> Option<String> {
    request
        .records
        .iter()
        .find_map(|record| match &record.payload {
            Payload::Changes(changes) => changes
                .first()
                .and_then(|bytes| decode_change(bytes, max_inflated).ok())
                .map(|change| change.actor_id().to_hex_string()),
            Payload::Document(bytes) => {
                load_document(bytes, max_inflated).ok().and_then(|mut doc| {
                    guarded(|| {
                        doc.get_changes(&[])
                            .first()
                            .map(|c| c.actor_id().to_hex_string())
                    })
                    .flatten()
                })
            }
        })
}

/// Automerge inflates compressed chunks in full before looking at them, so a few kilobytes
/// could claim gigabytes: the inflated size is bounded first, without keeping any of it.
fn check_inflated(bytes: &[u8], max_inflated: usize) -> Result<(), Rejection> {
    protocol::check_inflated_size(bytes, max_inflated).map_err(|err| match err {
        DecodeError::TooLarge { .. } => reject(
            RejectCode::TooLarge,
            "the Automerge data inflates past the size limit",
        ),
        DecodeError::Compression | DecodeError::Malformed(_) => {
            reject(RejectCode::Malformed, "the Automerge data does not decode")
        }
    })
}

/// A pushed change, once its inflated size is known to be bounded.
fn decode_change(bytes: &[u8], max_inflated: usize) -> Result<Change, Rejection> {
    check_inflated(bytes, max_inflated)?;
    guarded(|| Change::from_bytes(bytes.to_vec()).ok())
        .flatten()
        .ok_or_else(|| reject(RejectCode::Malformed, "a change does not decode"))
}

/// A pushed document, once its inflated size is known to be bounded.
fn load_document(bytes: &[u8], max_inflated: usize) -> Result<AutoCommit, Rejection> {
    check_inflated(bytes, max_inflated)?;
    guarded(|| AutoCommit::load(bytes).ok())
        .flatten()
        .ok_or_else(|| reject(RejectCode::Malformed, "the document does not load"))
}

/// Runs Automerge on bytes from outside; a panic inside the library becomes `None`.
fn guarded<T>(work: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(work)).ok()
}

/// Whether a change was made by the pushing device, whose actor is `actor` (`None`: no
/// change is the device's own).
fn is_own(actor: Option<&str>, change_actor: &automerge::ActorId) -> bool {
    actor.is_some_and(|actor| change_actor.to_hex_string() == actor)
}

fn reject(code: RejectCode, message: &str) -> Rejection {
    Rejection {
        code,
        message: message.to_owned(),
    }
}

fn valid_collection(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// Checks one pushed record and merges it into the stored document.
fn merge(
    caller: &Caller,
    actor: Option<&str>,
    limits: &Limits,
    record: &PushRecord,
    stored: Option<StoredRecord>,
) -> Result<MergedRecord, Rejection> {
    if !valid_collection(&record.collection)
        || fieldsync_core::check_record_id(&record.id).is_err()
        || record.scope.contains('\0')
    {
        return Err(reject(
            RejectCode::InvalidRecord,
            "invalid collection or record id",
        ));
    }
    if !caller.may_write(&record.scope) {
        return Err(reject(
            RejectCode::ForbiddenScope,
            "no write grant on this scope",
        ));
    }
    if stored.as_ref().is_some_and(|s| s.scope != record.scope) {
        return Err(reject(
            RejectCode::ScopeChange,
            "the record cannot be written in this scope",
        ));
    }
    // A record that brings no change at all is not something a device sends; accepting it
    // would answer "stored" for a record the server does not have.
    if matches!(&record.payload, Payload::Changes(changes) if changes.is_empty()) {
        return Err(reject(RejectCode::Malformed, "the record holds no changes"));
    }
    if let (None, Payload::Document(bytes)) = (&stored, &record.payload) {
        return new_record_from_document(actor, limits, bytes);
    }
    let mut doc = match &stored {
        Some(stored) => guarded(|| AutoCommit::load(&stored.doc).ok())
            .flatten()
            .ok_or_else(|| reject(RejectCode::Malformed, "the stored document does not load"))?,
        None => AutoCommit::new(),
    };
    let heads_before = doc.get_heads();
    match &record.payload {
        Payload::Changes(raw) => {
            let size: usize = raw.iter().map(|c| c.len()).sum();
            if size > limits.max_document_bytes {
                return Err(reject(
                    RejectCode::TooLarge,
                    "the changes exceed the document size limit",
                ));
            }
            // Bounded together, since each change alone could stay under the limit.
            let joined: Vec<u8> = raw.iter().flat_map(|c| c.iter().copied()).collect();
            check_inflated(&joined, limits.max_decompressed_bytes)?;
            let mut changes = Vec::with_capacity(raw.len());
            for bytes in raw {
                let change = decode_change(bytes, limits.max_decompressed_bytes)?;
                if !is_own(actor, change.actor_id()) {
                    return Err(reject(
                        RejectCode::ForeignActor,
                        "a change was made by another device",
                    ));
                }
                changes.push(change);
            }
            let hashes: Vec<ChangeHash> = changes.iter().map(Change::hash).collect();
            let applied = guarded(|| doc.apply_changes(changes).is_ok()).unwrap_or(false);
            if !applied {
                return Err(reject(RejectCode::Malformed, "the changes do not apply"));
            }
            if hashes
                .iter()
                .any(|hash| doc.get_change_by_hash(hash).is_none())
            {
                return Err(reject(
                    RejectCode::MissingDependencies,
                    "a change depends on changes the server lacks",
                ));
            }
        }
        Payload::Document(bytes) => {
            if bytes.len() > limits.max_document_bytes {
                return Err(reject(
                    RejectCode::TooLarge,
                    "the document exceeds the size limit",
                ));
            }
            let mut incoming = load_document(bytes, limits.max_decompressed_bytes)?;
            let foreign = incoming.get_changes(&[]).iter().any(|c| {
                !is_own(actor, c.actor_id()) && doc.get_change_by_hash(&c.hash()).is_none()
            });
            if foreign {
                return Err(reject(
                    RejectCode::ForeignActor,
                    "the document holds another device's new changes",
                ));
            }
            let merged = guarded(|| doc.merge(&mut incoming).is_ok()).unwrap_or(false);
            if !merged {
                return Err(reject(RejectCode::Malformed, "the document does not merge"));
            }
        }
    }
    let new_changes: Vec<Vec<u8>> = doc
        .get_changes(&heads_before)
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    let saved = doc.save();
    if saved.len() > limits.max_document_bytes {
        return Err(reject(
            RejectCode::TooLarge,
            "the merged document exceeds the size limit",
        ));
    }
    let (fields, deleted) = fieldsync_core::document_values(&doc)
        .map_err(|_| reject(RejectCode::Malformed, "the document's values do not read"))?;
    Ok(MergedRecord {
        doc: saved,
        fields_json: serde_json::Value::Object(fields).to_string(),
        deleted,
        new_changes,
    })
}

/// A record the server does not have yet, pushed as its whole document: loading it validates
/// it, and it is stored as sent (it is already a compact save), without a merge.
fn new_record_from_document(
    actor: Option<&str>,
    limits: &Limits,
    bytes: &[u8],
) -> Result<MergedRecord, Rejection> {
    if bytes.len() > limits.max_document_bytes {
        return Err(reject(
            RejectCode::TooLarge,
            "the document exceeds the size limit",
        ));
    }
    let mut doc = load_document(bytes, limits.max_decompressed_bytes)?;
    let changes = doc.get_changes(&[]);
    if changes.is_empty() {
        return Err(reject(
            RejectCode::Malformed,
            "the document holds no changes",
        ));
    }
    if changes.iter().any(|c| !is_own(actor, c.actor_id())) {
        return Err(reject(
            RejectCode::ForeignActor,
            "the document holds another device's changes",
        ));
    }
    let new_changes = changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
    let (fields, deleted) = fieldsync_core::document_values(&doc)
        .map_err(|_| reject(RejectCode::Malformed, "the document's values do not read"))?;
    Ok(MergedRecord {
        doc: bytes.to_vec(),
        fields_json: serde_json::Value::Object(fields).to_string(),
        deleted,
        new_changes,
    })
}
