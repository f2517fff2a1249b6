//! The server's error type and how each error answers over HTTP.
//!
//! Clients see a stable code and a short message; internal details (SQL, paths) go to the log
//! only, and neither carries tokens or record values.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fieldsync_record::protocol::{ErrorBody, ErrorCode};

/// Everything that can go wrong in the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Missing, malformed, unknown, expired or revoked token.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// An identity provider's access token that is not accepted (expired, for another
    /// audience, badly signed...): the app gets a new one, or signs the person in again.
    #[error("unauthorized: {0}")]
    InvalidToken(crate::jwt::JwtError),
    /// The caller may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The client speaks another protocol version (the one it named, if it is a number).
    #[error(
        "unsupported protocol version{}; this server speaks {supported}",
        .0.map(|v| format!(" {v}")).unwrap_or_default(),
        supported = fieldsync_record::protocol::VERSION
    )]
    UnsupportedVersion(Option<u32>),
    /// The request does not decode or is not valid.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request exceeds a size limit.
    #[error("payload too large: {0}")]
    TooLarge(String),
    /// Too many requests from this token.
    #[error("rate limited")]
    RateLimited {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// A name or id is already taken (administration).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A write of the records API that the schema or the merge refused (its reason names the
    /// field, never a value).
    #[error("refused: {0}")]
    Refused(String),
    /// Something named does not exist (administration, a person's devices).
    #[error("not found: {0}")]
    NotFound(String),
    /// A schema that does not parse, or that cannot follow the one in force (the reason names
    /// the collection and field).
    #[error("{0}")]
    InvalidSchema(String),
    /// The batch id was used before for other records: the device's store was restored from
    /// an older copy.
    #[error(
        "this batch id was used for other records: the device's store was restored from an older copy"
    )]
    BatchConflict,
    /// The device reads from behind what it pushed: its store was restored from an older copy.
    #[error("the device's store is older than what it pushed: it was restored from an older copy")]
    ActorReused,
    /// The request met another one it cannot be applied alongside; nothing of it was stored
    /// and the same request may succeed in a moment (503 `unavailable`, `Retry-After: 1`).
    #[error("try again: {0}")]
    TryAgain(String),
    /// A change feed cursor from before how far the feed was pruned.
    #[error(
        "the change feed was pruned past this cursor: read the records again through the \
         records API, then follow the feed from its start"
    )]
    CursorExpired,
    /// No schema was set, so no record can be validated or stored.
    #[error(
        "the server has no schema yet; an administrator sets one with `fieldsync-server schema set FILE`"
    )]
    NoSchema,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL refused or failed a statement (its SQLSTATE and message, never the values
    /// of the rows involved).
    #[error("PostgreSQL error: {0}")]
    Postgres(String),
    /// No connection to PostgreSQL could be had in time.
    #[error("the database is unavailable ({0}); check that PostgreSQL runs and that --db names it")]
    DatabaseUnavailable(String),
    /// The embedded database's commits could not be flushed to disk; nothing was answered as
    /// stored, so devices keep their changes and retry.
    #[error("the database could not be flushed to disk ({0}); check the disk")]
    Flush(String),
    /// The server was started with settings it cannot use.
    #[error("configuration error: {0}")]
    Config(String),
    /// Stored data could not be read.
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// A blocking task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServerError {
    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ServerError::Unauthorized(_) | ServerError::InvalidToken(_) => {
                (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
            }
            ServerError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ServerError::UnsupportedVersion(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::UnsupportedVersion)
            }
            ServerError::BadRequest(_) | ServerError::InvalidSchema(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::BadRequest)
            }
            ServerError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ServerError::Refused(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Refused),
            ServerError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ServerError::CursorExpired => (StatusCode::GONE, ErrorCode::CursorExpired),
            ServerError::NoSchema => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NoSchema),
            ServerError::TryAgain(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ServerError::BatchConflict => (StatusCode::CONFLICT, ErrorCode::BatchConflict),
            ServerError::ActorReused => (StatusCode::CONFLICT, ErrorCode::ActorReused),
            ServerError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge),
            ServerError::RateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited)
            }
            ServerError::Database(_)
            | ServerError::Postgres(_)
            | ServerError::DatabaseUnavailable(_)
            | ServerError::Flush(_)
            | ServerError::Config(_)
            | ServerError::Corrupt(_)
            | ServerError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        }
    }
}

impl From<postgres::Error> for ServerError {
    fn from(err: postgres::Error) -> Self {
        ServerError::Postgres(describe_postgres_error(&err))
    }
}

/// A PostgreSQL error for the log. A database error's detail can quote a row's values (a key
/// that already exists, a failing row), which may be clinical data: only its code and message
/// are kept. Other errors (connecting, I/O) name their cause.
pub(crate) fn describe_postgres_error(err: &postgres::Error) -> String {
    match (err.as_db_error(), std::error::Error::source(err)) {
        (Some(db), _) => format!("{} {}", db.code().code(), db.message()),
        (None, Some(cause)) => format!("{err}: {cause}"),
        (None, None) => err.to_string(),
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let told = matches!(self, ServerError::NoSchema | ServerError::TryAgain(_));
        let message = if status.is_server_error() && !told {
            tracing::error!(error = %self, "request failed");
            "the server could not complete the request".to_owned()
        } else {
            tracing::info!(error = %self, "request refused");
            self.to_string()
        };
        let mut response = (status, axum::Json(ErrorBody { code, message })).into_response();
        let retry_after_secs = match self {
            ServerError::RateLimited { retry_after_secs } => Some(retry_after_secs),
            ServerError::TryAgain(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
