//! `/v1/scopes/{scope}/attachments/{sha256}...`: attachments' bytes, sent and fetched in chunks
//! of [`ATTACHMENT_CHUNK_BYTES`], each checked against the SHA-256 its request names, the whole
//! against the attachment's once the last chunk is in. An attachment is kept under a scope:
//! who may write the scope may send it, who may read the scope may fetch it. To anyone else,
//! and for one the server does not hold, the answer is the same `not_found`, so a known hash
//! tells nothing.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fieldsync_record::attachment::parse_sha256;
use fieldsync_record::protocol::{ATTACHMENT_CHUNK_BYTES, AttachmentStatus, CHUNK_SHA256_HEADER};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ServerError;
use crate::http::{authorize, blocking, read_body};
use crate::storage::{ChunkStored, NewAuditLine};

/// The path of an attachment: its scope and SHA-256.
#[derive(Deserialize)]
pub struct AttachmentPath {
    scope: String,
    sha256: String,
}

/// The path of one chunk of an attachment.
#[derive(Deserialize)]
pub struct ChunkPath {
    scope: String,
    sha256: String,
    chunk: u32,
}

/// The query of a chunk sent: the attachment's whole size.
#[derive(Deserialize)]
pub struct ChunkQuery {
    size: u64,
}

/// What the server holds of an attachment: `GET /v1/scopes/{scope}/attachments/{sha256}`.
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<AttachmentPath>,
) -> Result<Json<AttachmentStatus>, ServerError> {
    let caller = authorize(&state, &headers).await?;
    let sha256 = hash(&path.sha256)?;
    let readable = may_read(&caller, &path.scope) || caller.may_write(&path.scope);
    let storage = state.storage.clone();
    let held = blocking(move || storage.attachment(&path.scope, &sha256)).await?;
    match held.filter(|_| readable) {
        Some(held) => Ok(Json(AttachmentStatus {
            size: held.size,
            received: held.received,
            complete: held.complete,
        })),
        None => Err(not_found()),
    }
}

/// One chunk sent: `PUT /v1/scopes/{scope}/attachments/{sha256}/chunks/{chunk}?size=N`.
pub async fn put_chunk(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<ChunkPath>,
    query: Result<Query<ChunkQuery>, QueryRejection>,
    body: Body,
) -> Result<Json<AttachmentStatus>, ServerError> {
    let caller = authorize(&state, &headers).await?;
    let sha256 = hash(&path.sha256)?;
    let Query(ChunkQuery { size }) = query.map_err(|_| {
        ServerError::BadRequest("a chunk names its attachment's size: ?size=N".into())
    })?;
    if !caller.may_write(&path.scope) {
        return Err(ServerError::Forbidden(
            "attachments are sent into a scope the user may write".into(),
        ));
    }
    let limit = state.limits.max_attachment_bytes;
    if size > limit {
        return Err(ServerError::TooLarge(format!(
            "attachments are limited to {limit} bytes"
        )));
    }
    let expected = chunk_len(size, path.chunk).ok_or_else(|| {
        ServerError::BadRequest(format!(
            "an attachment of {size} bytes has no chunk {}",
            path.chunk
        ))
    })?;
    let chunk_sha256 = headers
        .get(CHUNK_SHA256_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_sha256)
        .ok_or_else(|| {
            ServerError::BadRequest(format!(
                "a chunk names its SHA-256 in the {CHUNK_SHA256_HEADER} header"
            ))
        })?;
    let bytes = read_body(body, ATTACHMENT_CHUNK_BYTES).await?;
    if bytes.len() != expected {
        return Err(ServerError::BadRequest(format!(
            "chunk {} of this attachment is {expected} bytes, not {}",
            path.chunk,
            bytes.len()
        )));
    }
    if <[u8; 32]>::from(Sha256::digest(&bytes)) != chunk_sha256 {
        return Err(ServerError::BadRequest(
            "the chunk's bytes do not match its SHA-256; send it again".into(),
        ));
    }
    let key = (path.scope.clone(), sha256);
    let stored = state
        .chunks
        .put(&state.storage, &key, size, path.chunk, bytes)
        .await?;
    match stored {
        ChunkStored::New => &state.metrics.attachment_chunks_received,
        ChunkStored::AlreadyHeld => &state.metrics.attachment_chunks_repeated,
    }
    .inc();
    let held = {
        let (storage, scope) = (state.storage.clone(), path.scope.clone());
        blocking(move || storage.attachment(&scope, &sha256))
            .await?
            .ok_or_else(|| ServerError::Internal("a chunk stored is not found".into()))?
    };
    let chunks = chunk_count(size);
    if held.complete || held.received.len() as u64 != chunks {
        return Ok(Json(AttachmentStatus {
            size,
            received: held.received,
            complete: held.complete,
        }));
    }
    // The last chunk is in: the whole must be the bytes the hash names.
    if whole_sha256(&state, &key, chunks).await? != sha256 {
        state.chunks.delete(&state.storage, &key).await?;
        return Err(ServerError::BadRequest(
            "the attachment's bytes do not match its SHA-256; it was dropped".into(),
        ));
    }
    let storage = state.storage.clone();
    blocking(move || {
        storage.complete_attachment(&path.scope, &sha256)?;
        storage.audit_line(&NewAuditLine {
            user_id: caller.user_id,
            device_id: caller.device_id,
            action: "upload",
            collection: "attachment",
            record_id: &path.sha256,
            scope: &path.scope,
        })
    })
    .await?;
    Ok(Json(AttachmentStatus {
        size,
        received: held.received,
        complete: true,
    }))
}

/// One chunk fetched: `GET /v1/scopes/{scope}/attachments/{sha256}/chunks/{chunk}`.
pub async fn get_chunk(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<ChunkPath>,
) -> Result<Response, ServerError> {
    let caller = authorize(&state, &headers).await?;
    let sha256 = hash(&path.sha256)?;
    if !may_read(&caller, &path.scope) {
        return Err(not_found());
    }
    let key = (path.scope.clone(), sha256);
    let complete = {
        let (storage, scope) = (state.storage.clone(), path.scope.clone());
        blocking(move || storage.attachment(&scope, &sha256))
            .await?
            .is_some_and(|held| held.complete)
    };
    if !complete {
        return Err(not_found());
    }
    let bytes = state
        .chunks
        .get(&state.storage, &key, path.chunk)
        .await?
        .ok_or_else(not_found)?;
    // A download is audited once, at its first chunk.
    if path.chunk == 0 {
        let storage = state.storage.clone();
        blocking(move || {
            storage.audit_line(&NewAuditLine {
                user_id: caller.user_id,
                device_id: caller.device_id,
                action: "download",
                collection: "attachment",
                record_id: &path.sha256,
                scope: &path.scope,
            })
        })
        .await?;
    }
    state
        .metrics
        .attachment_bytes_sent
        .inc_by(bytes.len() as u64);
    let digest = hex::encode(Sha256::digest(&bytes));
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&digest) {
        headers.insert(CHUNK_SHA256_HEADER, value);
    }
    Ok(response)
}

fn may_read(caller: &Caller, scope: &str) -> bool {
    caller.readable().covers(scope)
}

fn not_found() -> ServerError {
    ServerError::NotFound("no such attachment".into())
}

fn hash(text: &str) -> Result<[u8; 32], ServerError> {
    parse_sha256(text).ok_or_else(|| {
        ServerError::BadRequest("an attachment is named by 64 lowercase hex digits".into())
    })
}

/// How many chunks an attachment of `size` bytes travels in (an empty one in one, empty).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(ATTACHMENT_CHUNK_BYTES as u64).max(1)
}

/// The length of chunk `chunk` of an attachment of `size` bytes, if it has one.
pub fn chunk_len(size: u64, chunk: u32) -> Option<usize> {
    let chunk = u64::from(chunk);
    if chunk >= chunk_count(size) {
        return None;
    }
    let start = chunk * ATTACHMENT_CHUNK_BYTES as u64;
    Some((size - start).min(ATTACHMENT_CHUNK_BYTES as u64) as usize)
}

/// The SHA-256 of the attachment's stored chunks, read one at a time.
async fn whole_sha256(
    state: &AppState,
    key: &chunks::AttachmentKey,
    chunks: u64,
) -> Result<[u8; 32], ServerError> {
    let mut hasher = Sha256::new();
    for chunk in 0..chunks {
        let bytes = state
            .chunks
            .get(&state.storage, key, chunk as u32)
            .await?
            .ok_or_else(|| ServerError::Internal("a received chunk is missing".into()))?;
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_an_attachment_exactly() {
        let chunk = ATTACHMENT_CHUNK_BYTES as u64;
        assert_eq!((chunk_count(0), chunk_len(0, 0)), (1, Some(0)));
        assert_eq!(chunk_len(0, 1), None);
        assert_eq!(chunk_count(chunk), 1);
        assert_eq!(chunk_count(chunk + 1), 2);
        assert_eq!(chunk_len(chunk + 1, 0), Some(ATTACHMENT_CHUNK_BYTES));
        assert_eq!(chunk_len(chunk + 1, 1), Some(1));
        assert_eq!(chunk_len(chunk + 1, 2), None);
        assert_eq!(chunk_len(u64::MAX, u32::MAX), Some(ATTACHMENT_CHUNK_BYTES));
    }
}

pub mod bucket;
pub mod chunks;
pub(crate) mod collect;
#[cfg(test)]
mod http_tests;
