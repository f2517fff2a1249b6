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

/// The request header naming the device a request comes from, when its bearer token is an
/// identity provider's access token (which names a person, not a device): the device id the
/// device got when it enrolled ([`EnrolledDevice`]).
pub const DEVICE_HEADER: &str = "fieldsync-device";

/// The request header of pushes and pulls in which a device says how many of its local changes
/// wait to be pushed: its outbox entries that no push answer covers yet (those of the push
/// that carries it included), as decimal digits. Optional; the server refuses a malformed one
/// (`400 bad_request`) and shows the latest to administrators. See docs/PROTOCOL.md.
pub const PENDING_CHANGES_HEADER: &str = "fieldsync-pending-changes";

/// The size of the chunks attachments' bytes travel in (the last of an attachment shorter).
pub const ATTACHMENT_CHUNK_BYTES: usize = 1 << 20;

/// The header carrying the SHA-256 (64 lowercase hex digits) of an attachment chunk's bytes,
/// on a chunk sent and on a chunk fetched: each is checked on arrival.
pub const CHUNK_SHA256_HEADER: &str = "fieldsync-chunk-sha256";

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

impl Payload {
    /// How many bytes of Automerge data it carries.
    pub fn byte_len(&self) -> usize {
        match self {
            Payload::Changes(changes) => changes.iter().map(|change| change.len()).sum(),
            Payload::Document(doc) => doc.len(),
        }
    }
}

/// `POST /v1/push`: one device's local changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    /// Chosen by the client, unique per batch: a replay of the same batch id with the same
    /// records is answered with the first answer and changes nothing; the same id with other
    /// records is refused (`batch_conflict`).
    pub batch_id: String,
    /// The position in the device's outbox of the last record sent, if it counts its writes:
    /// a device whose store goes back below a position it pushed was restored from an older
    /// copy (see `GET /v1/pull`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_seq: Option<i64>,
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
    /// The record's epoch the changes were made on: 0 until the record is first erased, then
    /// the number of the erasure (see [`PulledRecord::epoch`]). Changes made on an epoch
    /// other than the server's are refused with [`RejectCode::RecordErased`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

fn is_zero(epoch: &u64) -> bool {
    *epoch == 0
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
    /// The record breaks the server's schema (its message names the field and the rule), or
    /// its collection or id is not acceptable.
    InvalidRecord,
    /// A change reuses a sequence number the device's actor already used for another change:
    /// the device's store was restored from an older copy. It must take a new actor, make its
    /// unsent writes again under it, and sync again.
    ActorReused,
    /// The changes were made on an epoch of the record other than the server's: the record
    /// was erased since. The device keeps its writes, pulls the record's new epoch, and makes
    /// them again on it.
    RecordErased,
    /// A code this build does not know (a newer server's): the refusal is final, as most are.
    #[serde(other)]
    Unknown,
}

impl RejectCode {
    /// The code as the wire spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::ForbiddenScope => "forbidden_scope",
            RejectCode::ScopeChange => "scope_change",
            RejectCode::Malformed => "malformed",
            RejectCode::ForeignActor => "foreign_actor",
            RejectCode::MissingDependencies => "missing_dependencies",
            RejectCode::TooLarge => "too_large",
            RejectCode::InvalidRecord => "invalid_record",
            RejectCode::ActorReused => "actor_reused",
            RejectCode::RecordErased => "record_erased",
            RejectCode::Unknown => "unknown",
        }
    }
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
    /// Who wrote the page's records: for each actor whose changes they hold and that the
    /// server knows, its user and device, so that a device shows "Ben edited this" instead of
    /// an actor id. Left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<Author>,
}

/// The person and device behind an Automerge actor, as the server knows them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Author {
    /// The actor (hex), as history and conflicts name it.
    pub actor: String,
    /// The user's display name (their sign-in name when they have none).
    pub user: String,
    /// The device's name, as it was enrolled.
    pub device: String,
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
    /// The record's current values by root key: always with a whole document, so that a
    /// device can store a large first sync without loading every document; with changes when
    /// they are the record's latest on the server, so that a device holding everything that
    /// came before them (nothing unsent of its own) can append them to its stored document
    /// and take these values instead of loading it. A device may always ignore them and merge.
    pub fields: Option<Fields>,
    /// With `fields`: whether the record is deleted.
    pub deleted: bool,
    /// The record's epoch: 0 until it is first erased, one more at each erasure. An erasure
    /// rewrites the record as a new document without the erased content or any history; a
    /// device holding an older epoch replaces its copy with this record's `document` (always
    /// a whole document then) and makes its unsent writes again on it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

/// `GET /v1/schema`: the schema the server validates pushed records against (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaResponse {
    /// The version in force, counted from 1.
    pub version: u32,
    /// The schema, as apps declare it, with `version` set.
    pub schema: crate::Schema,
    /// When it was set (ms since the epoch).
    pub set_at: i64,
}

/// `POST /v1/devices` (JSON): a device enrols itself, with its user's access token from the
/// clinic's identity provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// A name for the device that its user and administrators recognise ("Ada's tablet").
    pub name: String,
}

/// The answer to [`EnrollRequest`] (JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledDevice {
    /// The device's id, for the [`DEVICE_HEADER`] of its requests.
    pub device_id: i64,
}

/// `GET /v1/devices` (JSON): the caller's devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// Every device of the caller, revoked ones included, oldest first.
    pub devices: Vec<DeviceSummary>,
}

/// One device of [`DeviceList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its last push or pull (ms since the epoch).
    pub last_sync_at: Option<i64>,
    /// Whether it was revoked (`DELETE /v1/devices/{id}`).
    pub revoked: bool,
}

/// What the server holds of an attachment (JSON): the answer to
/// `GET /v1/scopes/{scope}/attachments/{sha256}` and to each chunk sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentStatus {
    /// The attachment's length in bytes.
    pub size: u64,
    /// The numbers of the chunks the server holds, in order: a resumed upload sends the others.
    pub received: Vec<u32>,
    /// Whether every chunk is in and the whole matched its SHA-256: it can be fetched.
    pub complete: bool,
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
    /// The server has no schema yet, so it stores no records (503): an administrator sets one
    /// with `fieldsync-server schema set`; retry later.
    NoSchema,
    /// The batch id was used before for other records (409): the device's store was restored
    /// from an older copy (see [`RejectCode::ActorReused`]).
    BatchConflict,
    /// The device's store is older than what the device pushed (409): it was restored from an
    /// older copy (see [`RejectCode::ActorReused`]).
    ActorReused,
    /// What the request names does not exist (404; the admin API and `/v1/devices`).
    NotFound,
    /// What the request would create exists already, or what it would change changed since
    /// it was read (409; the admin and records APIs).
    Conflict,
    /// The records API refused a write: the schema or the merge rules do not allow it (422).
    Refused,
    /// The change feed no longer holds the changes after the cursor: it was pruned past it
    /// (410). Read the records again, then follow the feed from its start.
    CursorExpired,
    /// An unexpected server error (500).
    Internal,
    /// A code this build does not know (a newer server's); the status says what kind it is.
    #[serde(other)]
    Unknown,
}

/// How deeply maps and lists may nest in a decoded body. A pulled record's values sit four
/// levels down (page, records, record, fields), and a field value may nest
/// [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH) levels more; anything deeper is hostile, and
/// decoding it would recurse once per level on a thread with a small stack.
pub const MAX_MESSAGE_DEPTH: usize = crate::MAX_NESTING_DEPTH + 28;

/// The most one record's Automerge changes (together) or saved document may inflate to. A
/// store refuses larger remote records before loading them, so a few compressed bytes cannot
/// make it allocate gigabytes.
pub const MAX_RECORD_INFLATED_BYTES: usize = 16 * 1024 * 1024;

/// Why a body, or Automerge bytes, could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The data is not a DEFLATE stream.
    #[error("the data is not valid compressed data")]
    Compression,
    /// The data decompresses to more than the limit.
    #[error("the data decompresses to more than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The data is not the expected message, or not well-formed Automerge chunks.
    #[error("the data is malformed: {0}")]
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

/// How many bytes a body decompresses to, counting at most `max_decompressed + 1` of them and
/// keeping none: what decoding it will hold in memory, known before it is decoded.
pub fn decompressed_size(body: &[u8], max_decompressed: usize) -> Result<usize, DecodeError> {
    let limit = u64::try_from(max_decompressed)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut inflater = flate2::read::DeflateDecoder::new(body).take(limit);
    let size =
        std::io::copy(&mut inflater, &mut std::io::sink()).map_err(|_| DecodeError::Compression)?;
    match usize::try_from(size) {
        Ok(size) if size <= max_decompressed => Ok(size),
        _ => Err(DecodeError::TooLarge {
            limit: max_decompressed,
        }),
    }
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
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(&packed);
    deserializer.set_max_depth(MAX_MESSAGE_DEPTH);
    serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|err| DecodeError::Malformed(describe(&err)))
}

/// Where a message failed to decode and what kind of problem it was, fit for an answer and a
/// log line: never the value (a record's content, or megabytes of a hostile string), and at
/// most a few hundred characters.
fn describe(err: &serde_path_to_error::Error<rmp_serde::decode::Error>) -> String {
    use rmp_serde::decode::Error;
    use serde_path_to_error::Segment;
    let problem = match err.inner() {
        Error::InvalidMarkerRead(_) | Error::InvalidDataRead(_) => {
            "the message ends early or cannot be read".to_owned()
        }
        Error::TypeMismatch(_) => "a value has the wrong type".to_owned(),
        Error::OutOfRange => "a number is out of range".to_owned(),
        Error::LengthMismatch(_) => "a list has the wrong length".to_owned(),
        Error::Utf8Error(_) => "a string is not UTF-8".to_owned(),
        Error::DepthLimitExceeded => "the message nests past the depth limit".to_owned(),
        Error::Syntax(serde) | Error::Uncategorized(serde) => serde_problem(serde),
    };
    let mut at = String::new();
    for segment in err.path().iter().take(8) {
        match segment {
            Segment::Seq { index } => at.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } if is_plain_name(key) => {
                at.push('.');
                at.push_str(key);
            }
            _ => at.push_str(".?"),
        }
    }
    match at.strip_prefix('.') {
        Some(path) => format!("{problem} (at {path})"),
        None if at.is_empty() => problem,
        None => format!("{problem} (at {at})"),
    }
}

/// serde's own messages quote the value ("invalid type: string \"…\"", "unknown variant
/// `…`"): only their kind is kept, with a missing field's name, which is the message type's.
fn serde_problem(message: &str) -> String {
    const KINDS: [(&str, &str); 6] = [
        ("invalid type", "a value has the wrong type"),
        ("invalid value", "a value is not valid"),
        ("invalid length", "a list or string has the wrong length"),
        ("unknown variant", "an enum name is not known"),
        ("unknown field", "a field is not known"),
        ("duplicate field", "a field is given twice"),
    ];
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
        .filter(|field| is_plain_name(field))
    {
        return format!("the field `{field}` is missing");
    }
    KINDS
        .iter()
        .find(|(prefix, _)| message.starts_with(prefix))
        .map_or("the message does not decode", |(_, kind)| kind)
        .to_owned()
}

/// A name as the protocol's own fields are spelled (lowercase words joined by `_`, or an enum
/// variant's capitalised word), short enough to name in a message.
fn is_plain_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_uppercase())
}

pub use crate::chunks::{check_inflated_size, inflated_size};

#[cfg(test)]
mod tests {
    use super::*;

    fn push() -> PushRequest {
        PushRequest {
            outbox_seq: None,
            batch_id: "b1".into(),
            records: vec![PushRecord {
                collection: "clients".into(),
                id: "c1".into(),
                scope: "north".into(),
                payload: Payload::Changes(vec![ByteBuf::from(vec![1, 2, 3])]),
                epoch: 0,
            }],
        }
    }

    #[test]
    fn codes_are_spelled_as_on_the_wire_and_unknown_error_codes_still_read() {
        for code in [
            RejectCode::ForbiddenScope,
            RejectCode::ScopeChange,
            RejectCode::Malformed,
            RejectCode::ForeignActor,
            RejectCode::MissingDependencies,
            RejectCode::TooLarge,
            RejectCode::InvalidRecord,
            RejectCode::ActorReused,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::from(code.as_str())
            );
        }
        let body: ErrorBody =
            serde_json::from_str(r#"{"code": "from_a_newer_server", "message": "m"}"#).unwrap();
        assert_eq!(body.code, ErrorCode::Unknown);
        let body: ErrorBody =
            serde_json::from_str(r#"{"code": "no_schema", "message": "m"}"#).unwrap();
        assert_eq!(body.code, ErrorCode::NoSchema);
    }

    /// A value where another kind is expected, an unknown enum name, a missing field: the
    /// error names where and what, never the value.
    #[test]
    fn decode_errors_name_the_place_and_the_problem_never_the_value() {
        let canary = "CANARY-7f3a".repeat(3000);
        let wrong_type = rmp_serde::to_vec_named(&serde_json::json!({
            "batch_id": "b1",
            "records": [{"collection": "clients", "id": "c1", "scope": "north",
                         "payload": {"changes": [[1, 2, canary.clone()]]}}],
        }))
        .unwrap();
        let unknown_variant = rmp_serde::to_vec_named(&serde_json::json!({
            "batch_id": "b1",
            "records": [{"collection": "clients", "id": "c1", "scope": "north",
                         "payload": {canary.clone(): []}}],
        }))
        .unwrap();
        let missing = rmp_serde::to_vec_named(&serde_json::json!({"records": []})).unwrap();
        let deflate = |packed: &[u8]| {
            let mut encoder =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut encoder, packed).unwrap();
            encoder.finish().unwrap()
        };
        let errors: Vec<String> = [wrong_type, unknown_variant, missing]
            .iter()
            .map(
                |packed| match decode::<PushRequest>(&deflate(packed), 1 << 20) {
                    Err(DecodeError::Malformed(message)) => message,
                    other => panic!("decoded: {}", other.is_ok()),
                },
            )
            .collect();
        for message in &errors {
            assert!(!message.contains("CANARY"), "{message}");
            assert!(message.len() < 200, "{message}");
        }
        assert_eq!(
            errors[0],
            "a value has the wrong type (at records[0].payload.changes[0][2])"
        );
        assert_eq!(
            errors[1],
            "an enum name is not known (at records[0].payload)"
        );
        assert_eq!(errors[2], "the field `batch_id` is missing");
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
            decompressed_size(&bomb, 1 << 20),
            Err(DecodeError::TooLarge { limit: 1 << 20 })
        );
        assert_eq!(
            decompressed_size(&body, 1 << 20),
            Ok(rmp_serde::to_vec_named(&push()).unwrap().len())
        );
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
