//! Sync protocol v1: the wire types the sync engine and the server share, defined once.
//!
//! Request and response bodies of `/v1/push` and `/v1/pull` are MessagePack (maps with named
//! fields, so fields can be added) compressed with raw DEFLATE, content type
//! [`CONTENT_TYPE`]. Every request names its protocol version in the [`VERSION_HEADER`]
//! header. Errors come back as JSON [`ErrorBody`] with a stable [`ErrorCode`]. See
//! docs/PROTOCOL.md for the exchange and its guarantees.

use std::io::Read;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::value::Fields;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// The request header that carries the client's protocol version.
pub const VERSION_HEADER: &str = "fieldsync-protocol";

/// The content type of push and pull bodies.
pub const CONTENT_TYPE: &str = "application/vnd.fieldsync+msgpack";

/// What a record carries over the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// Automerge changes, each one change's bytes.
    Changes(Vec<ByteBuf>),
    /// A saved Automerge document.
    Document(ByteBuf),
}

/// `POST /v1/push`: one device's local changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    /// Chosen by the client, unique per batch: a replay of the same batch id is answered with
    /// the first answer and changes nothing.
    pub batch_id: String,
    /// The records, each accepted or rejected on its own.
    pub records: Vec<PushRecord>,
}

/// One record of a push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRecord {
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// The record's scope.
    pub scope: String,
    /// Its changes, or its whole document for a new record.
    pub payload: Payload,
}

/// The answer to a push: one result per pushed record, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    /// Results in the order of the request's records.
    pub results: Vec<PushResult>,
}

/// What happened to one pushed record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResult {
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// `None` when accepted; the reason when rejected.
    pub rejected: Option<Rejection>,
}

/// Why the server refused a pushed record. Nothing of that record was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// Stable code.
    pub code: RejectCode,
    /// Human-readable detail (never record values).
    pub message: String,
}

/// Stable codes of [`Rejection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The device's user may not write this scope.
    ForbiddenScope,
    /// The record exists in another scope; scopes never change.
    ScopeChange,
    /// The changes or document do not decode or apply.
    Malformed,
    /// A change was made by another device's actor.
    ForeignActor,
    /// A change depends on changes the server does not have.
    MissingDependencies,
    /// The record exceeds the server's size limits.
    TooLarge,
    /// The collection or id is not acceptable.
    InvalidRecord,
}

/// `GET /v1/pull?cursor=…&limit=…`: what changed in the caller's scopes after the cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullResponse {
    /// Records in feed order. Applying them in order, then storing `next_cursor`, is safe to
    /// repeat: merges are idempotent.
    pub records: Vec<PulledRecord>,
    /// The cursor to send next time.
    pub next_cursor: String,
    /// Whether more is waiting after `next_cursor`.
    pub more: bool,
    /// Scopes the device synced before but may no longer read: purge their records.
    pub revoked_scopes: Vec<String>,
}

/// One record of a pull.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PulledRecord {
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// The record's scope.
    pub scope: String,
    /// New changes, or the whole document (first sync, old cursor).
    pub payload: Payload,
    /// With a whole document: its current values by root key, so that a device can store a
    /// large first sync without loading every document.
    pub fields: Option<Fields>,
    /// With a whole document: whether the record is deleted.
    pub deleted: bool,
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Missing, unknown, expired or revoked token (401).
    Unauthorized,
    /// The caller may not do this (403).
    Forbidden,
    /// The client's protocol version is not spoken here (400); upgrade the app.
    UnsupportedVersion,
    /// The body or query does not decode (400).
    BadRequest,
    /// The body exceeds a size limit (413).
    PayloadTooLarge,
    /// Too many requests; retry after the `Retry-After` seconds (429).
    RateLimited,
    /// The server cannot serve now (503); retry later.
    Unavailable,
    /// An unexpected server error (500).
    Internal,
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is not a DEFLATE stream.
    #[error("the body is not valid compressed data")]
    Compression,
    /// The body decompresses to more than the limit.
    #[error("the body decompresses to more than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The decompressed body is not the expected message.
    #[error("the body is not a valid message: {0}")]
    Malformed(String),
}

/// Encodes a message as MessagePack, then DEFLATE.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let packed = rmp_serde::to_vec_named(message).expect("protocol messages always serialize");
    let mut encoder = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(packed.len() / 2),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut encoder, &packed).expect("writing to memory cannot fail");
    encoder.finish().expect("writing to memory cannot fail")
}

/// Decodes a body, refusing one that decompresses to more than `max_decompressed` bytes
/// before allocating for it.
pub fn decode<T: DeserializeOwned>(body: &[u8], max_decompressed: usize) -> Result<T, DecodeError> {
    let mut packed = Vec::new();
    let limit = u64::try_from(max_decompressed)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    flate2::read::DeflateDecoder::new(body)
        .take(limit)
        .read_to_end(&mut packed)
        .map_err(|_| DecodeError::Compression)?;
    if packed.len() > max_decompressed {
        return Err(DecodeError::TooLarge {
            limit: max_decompressed,
        });
    }
    rmp_serde::from_slice(&packed).map_err(|err| DecodeError::Malformed(err.to_string()))
}

impl From<crate::RemotePayload> for Payload {
    fn from(payload: crate::RemotePayload) -> Payload {
        match payload {
            crate::RemotePayload::Changes(changes) => {
                Payload::Changes(changes.into_iter().map(ByteBuf::from).collect())
            }
            crate::RemotePayload::Document(doc) => Payload::Document(ByteBuf::from(doc)),
        }
    }
}

impl From<Payload> for crate::RemotePayload {
    fn from(payload: Payload) -> crate::RemotePayload {
        match payload {
            Payload::Changes(changes) => {
                crate::RemotePayload::Changes(changes.into_iter().map(ByteBuf::into_vec).collect())
            }
            Payload::Document(doc) => crate::RemotePayload::Document(doc.into_vec()),
        }
    }
}

impl From<crate::OutboxEntry> for PushRecord {
    fn from(entry: crate::OutboxEntry) -> PushRecord {
        PushRecord {
            collection: entry.collection,
            id: entry.record_id,
            scope: entry.scope,
            payload: entry.payload.into(),
        }
    }
}

impl From<PulledRecord> for crate::RemoteRecord {
    fn from(record: PulledRecord) -> crate::RemoteRecord {
        crate::RemoteRecord {
            collection: record.collection,
            id: record.id,
            scope: record.scope,
            payload: record.payload.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push() -> PushRequest {
        PushRequest {
            batch_id: "b1".into(),
            records: vec![PushRecord {
                collection: "clients".into(),
                id: "c1".into(),
                scope: "north".into(),
                payload: Payload::Changes(vec![ByteBuf::from(vec![1, 2, 3])]),
            }],
        }
    }

    #[test]
    fn messages_round_trip() {
        let request = push();
        assert_eq!(
            decode::<PushRequest>(&encode(&request), 1 << 20).unwrap(),
            request
        );
    }

    #[test]
    fn garbage_truncation_and_bombs_are_clean_errors() {
        let body = encode(&push());
        assert!(decode::<PushRequest>(&body[..body.len() / 2], 1 << 20).is_err());
        assert!(decode::<PushRequest>(b"\xff\x00garbage", 1 << 20).is_err());
        assert!(decode::<PushRequest>(&[], 1 << 20).is_err());
        let bomb = encode(&vec![0u8; 10_000_000]);
        assert!(bomb.len() < 100_000);
        assert_eq!(
            decode::<Vec<u8>>(&bomb, 1 << 20),
            Err(DecodeError::TooLarge { limit: 1 << 20 })
        );
        let other = encode(&ErrorBody {
            code: ErrorCode::Internal,
            message: "x".into(),
        });
        assert!(matches!(
            decode::<PushRequest>(&other, 1 << 20),
            Err(DecodeError::Malformed(_))
        ));
    }
}
