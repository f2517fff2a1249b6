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
    },
    /// `POST /v1/devices` with a JSON [`protocol::EnrollRequest`]: the device enrols itself
    /// with its person's identity provider token.
    Enroll {
        /// The encoded (JSON) body.
        body: Vec<u8>,
    },
}

impl TransportRequest {
    /// The path and query of the request.
    pub fn path_and_query(&self) -> String {
        match self {
            TransportRequest::Push { .. } => "/v1/push".to_owned(),
            TransportRequest::Enroll { .. } => "/v1/devices".to_owned(),
            TransportRequest::Pull {
                limit,
                cursor,
                outbox_seq,
                actor,
                schema_version,
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

/// The server's answer, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportResponse {
    /// HTTP status.
    pub status: u16,
    /// The `Retry-After` header in seconds, if any.
    pub retry_after_secs: Option<u64>,
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
            let builder = match request {
                TransportRequest::Push { body } => self
                    .http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, protocol::CONTENT_TYPE)
                    .body(body),
                TransportRequest::Pull { .. } => self.http.get(url),
                TransportRequest::Enroll { body } => self
                    .http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body),
            };
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
            let body = response.bytes().await.map_err(network_error)?.to_vec();
            Ok(TransportResponse {
                status,
                retry_after_secs,
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
