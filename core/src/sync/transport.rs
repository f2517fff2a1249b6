//! How the sync engine reaches the server: one request, one answer. HTTP(S) through reqwest in
//! apps; tests put an in-process server behind the same trait, with faults injected, so the
//! engine they exercise is the one apps run.

use std::future::Future;
use std::pin::Pin;

use crate::error::{Error, Result};
use crate::protocol;

/// A boxed future, as the object-safe [`Transport`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who a request is sent as.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The bearer token: a device token, or an identity provider's access token.
    pub token: String,
    /// With an identity provider's token, the device's id (sent as
    /// [`protocol::DEVICE_HEADER`]), once it enrolled.
    pub device_id: Option<i64>,
}

impl std::fmt::Debug for Credentials {
    // Never the token: debug output ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// One request of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportRequest {
    /// `POST /v1/push` with an encoded [`protocol::PushRequest`].
    Push {
        /// The encoded body.
        body: Vec<u8>,
        /// The store's outbox entries no push answer covers yet, this push's included (sent
        /// as [`protocol::PENDING_CHANGES_HEADER`]).
        pending_changes: u64,
    },
    /// `GET /v1/pull?limit=..&cursor=..&outbox_seq=..&actor=..&schema_version=..`.
    Pull {
        /// Records per page.
        limit: u32,
        /// Where the last page ended (URL-safe), if anywhere.
        cursor: Option<String>,
        /// The highest position the store's outbox has reached.
        outbox_seq: i64,
        /// The Automerge actor the store writes as (hex).
        actor: String,
        /// The app schema's declared version, if it declares one.
        schema_version: Option<u32>,
        /// The store's outbox entries no push answer covers yet (sent as
        /// [`protocol::PENDING_CHANGES_HEADER`]).
        pending_changes: u64,
    },
    /// `POST /v1/devices` with a JSON [`protocol::EnrollRequest`]: the device enrols itself
    /// with its person's identity provider token.
    Enroll {
        /// The encoded (JSON) body.
        body: Vec<u8>,
    },
    /// `GET /v1/scopes/{scope}/attachments/{sha256}`: what the server holds of an attachment.
    AttachmentStatus {
        /// The scope of the record that references it.
        scope: String,
        /// Its SHA-256, in hex.
        sha256: String,
    },
    /// `PUT /v1/scopes/{scope}/attachments/{sha256}/chunks/{chunk}?size={size}`.
    PutChunk {
        /// The scope of the record that references it.
        scope: String,
        /// The attachment's SHA-256, in hex.
        sha256: String,
        /// The attachment's size.
        size: u64,
        /// The chunk's number.
        chunk: u32,
        /// The chunk's bytes.
        bytes: Vec<u8>,
    },
    /// `GET /v1/scopes/{scope}/attachments/{sha256}/chunks/{chunk}`.
    GetChunk {
        /// The scope of the record that references it.
        scope: String,
        /// The attachment's SHA-256, in hex.
        sha256: String,
        /// The chunk's number.
        chunk: u32,
    },
}

impl TransportRequest {
    /// The path and query of the request.
    pub fn path_and_query(&self) -> String {
        match self {
            TransportRequest::Push { .. } => "/v1/push".to_owned(),
            TransportRequest::Enroll { .. } => "/v1/devices".to_owned(),
            TransportRequest::AttachmentStatus { scope, sha256 } => {
                format!("/v1/scopes/{}/attachments/{sha256}", path_segment(scope))
            }
            TransportRequest::PutChunk {
                scope,
                sha256,
                size,
                chunk,
                ..
            } => format!(
                "/v1/scopes/{}/attachments/{sha256}/chunks/{chunk}?size={size}",
                path_segment(scope)
            ),
            TransportRequest::GetChunk {
                scope,
                sha256,
                chunk,
            } => format!(
                "/v1/scopes/{}/attachments/{sha256}/chunks/{chunk}",
                path_segment(scope)
            ),
            TransportRequest::Pull {
                limit,
                cursor,
                outbox_seq,
                actor,
                schema_version,
                ..
            } => {
                let cursor = cursor
                    .as_ref()
                    .map(|c| format!("&cursor={c}"))
                    .unwrap_or_default();
                let schema = schema_version
                    .map(|v| format!("&schema_version={v}"))
                    .unwrap_or_default();
                format!(
                    "/v1/pull?limit={limit}{cursor}&outbox_seq={outbox_seq}&actor={actor}{schema}"
                )
            }
        }
    }
}

impl TransportRequest {
    /// The HTTP method.
    pub fn method(&self) -> &'static str {
        match self {
            TransportRequest::Push { .. } | TransportRequest::Enroll { .. } => "POST",
            TransportRequest::PutChunk { .. } => "PUT",
            TransportRequest::Pull { .. }
            | TransportRequest::AttachmentStatus { .. }
            | TransportRequest::GetChunk { .. } => "GET",
        }
    }

    /// The headers the request carries besides authentication and the protocol version.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            TransportRequest::Push {
                pending_changes, ..
            } => vec![
                ("content-type", protocol::CONTENT_TYPE.into()),
                (
                    protocol::PENDING_CHANGES_HEADER,
                    pending_changes.to_string(),
                ),
            ],
            TransportRequest::Pull {
                pending_changes, ..
            } => vec![(
                protocol::PENDING_CHANGES_HEADER,
                pending_changes.to_string(),
            )],
            TransportRequest::Enroll { .. } => vec![("content-type", "application/json".into())],
            TransportRequest::PutChunk { bytes, .. } => {
                use sha2::Digest as _;
                vec![
                    ("content-type", "application/octet-stream".into()),
                    (
                        protocol::CHUNK_SHA256_HEADER,
                        hex_of(&sha2::Sha256::digest(bytes)),
                    ),
                ]
            }
            _ => Vec::new(),
        }
    }

    /// The body the request carries (empty for a GET).
    pub fn into_body(self) -> Vec<u8> {
        match self {
            TransportRequest::Push { body, .. } | TransportRequest::Enroll { body } => body,
            TransportRequest::PutChunk { bytes, .. } => bytes,
            _ => Vec::new(),
        }
    }
}

/// `text` percent-encoded as one path segment (a scope may hold any character).
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The server's answer, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportResponse {
    /// HTTP status.
    pub status: u16,
    /// The `Retry-After` header in seconds, if any.
    pub retry_after_secs: Option<u64>,
    /// The [`protocol::CHUNK_SHA256_HEADER`] of a fetched attachment chunk, if any.
    pub chunk_sha256: Option<String>,
    /// The body as received.
    pub body: Vec<u8>,
}

/// Carries requests to a server. Implementations send the bearer token, the device id if any
/// ([`protocol::DEVICE_HEADER`]) and the [`protocol::VERSION_HEADER`], and report an
/// unreachable server or a broken connection as [`Error::Network`].
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// Sends one request and waits for the answer.
    fn send<'a>(
        &'a self,
        credentials: &'a Credentials,
        request: TransportRequest,
    ) -> BoxFuture<'a, Result<TransportResponse>>;
}

/// HTTP(S) through reqwest, with rustls.
#[derive(Debug, Clone)]
pub(crate) struct HttpTransport {
    pub http: reqwest::Client,
    pub endpoint: String,
}

impl Transport for HttpTransport {
    fn send<'a>(
        &'a self,
        credentials: &'a Credentials,
        request: TransportRequest,
    ) -> BoxFuture<'a, Result<TransportResponse>> {
        Box::pin(async move {
            let url = format!(
                "{}{}",
                self.endpoint.trim_end_matches('/'),
                request.path_and_query()
            );
            let method = reqwest::Method::from_bytes(request.method().as_bytes())
                .map_err(|_| Error::Protocol("an unknown HTTP method".into()))?;
            let mut builder = self.http.request(method, url);
            for (name, value) in request.headers() {
                builder = builder.header(name, value);
            }
            let builder = builder.body(request.into_body());
            let mut builder = builder
                .bearer_auth(&credentials.token)
                .header(protocol::VERSION_HEADER, protocol::VERSION.to_string());
            if let Some(device_id) = credentials.device_id {
                builder = builder.header(protocol::DEVICE_HEADER, device_id.to_string());
            }
            let response = builder.send().await.map_err(network_error)?;
            let status = response.status().as_u16();
            let retry_after_secs = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let chunk_sha256 = response
                .headers()
                .get(protocol::CHUNK_SHA256_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.bytes().await.map_err(network_error)?.to_vec();
            Ok(TransportResponse {
                status,
                retry_after_secs,
                chunk_sha256,
                body,
            })
        })
    }
}

fn network_error(err: reqwest::Error) -> Error {
    // The URL may carry the cursor, never a token or values; keep only the kind of failure.
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "the connection failed"
    };
    Error::Network(kind.to_owned())
}
