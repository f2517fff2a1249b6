//! What every `/v1` handler shares: authenticating the caller, reading the body, running
//! storage work on the blocking pool, and answering in the protocol's encoding.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use fieldsync_record::protocol::{self, DecodeError};
use serde::Serialize;

use crate::AppState;
use crate::auth::{Caller, Person, authenticate, authenticate_person};
use crate::error::ServerError;
use crate::metrics::Metrics;

/// Authenticates the caller, then checks the protocol version; without a valid token nothing
/// else is looked at.
pub(crate) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Caller, ServerError> {
    let caller = authenticate(state, headers).await.inspect_err(|err| {
        if matches!(
            err,
            ServerError::Unauthorized(_) | ServerError::InvalidToken(_)
        ) {
            Metrics::inc(&state.metrics.unauthorized);
        }
    })?;
    if let Err(retry_after_secs) = state.rate_limiter.check(caller.device_id) {
        Metrics::inc(&state.metrics.rate_limited);
        return Err(ServerError::RateLimited { retry_after_secs });
    }
    check_version(headers)?;
    Ok(caller)
}

/// Authenticates someone whichever device they call from (see [`authenticate_person`]), with
/// the request limit of their user, then checks the protocol version.
pub(crate) async fn authorize_person(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Person, ServerError> {
    let person = authenticate_person(state, headers)
        .await
        .inspect_err(|err| {
            if matches!(
                err,
                ServerError::Unauthorized(_) | ServerError::InvalidToken(_)
            ) {
                Metrics::inc(&state.metrics.unauthorized);
            }
        })?;
    // Device ids are positive: a user's limit is kept under the negated id.
    let limited = person.device_id.unwrap_or(-person.user_id);
    if let Err(retry_after_secs) = state.rate_limiter.check(limited) {
        Metrics::inc(&state.metrics.rate_limited);
        return Err(ServerError::RateLimited { retry_after_secs });
    }
    check_version(headers)?;
    Ok(person)
}

fn check_version(headers: &HeaderMap) -> Result<(), ServerError> {
    let version = headers
        .get(protocol::VERSION_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
    if version != Some(protocol::VERSION) {
        return Err(ServerError::UnsupportedVersion(version));
    }
    Ok(())
}

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ServerError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ServerError::TooLarge(format!("bodies are limited to {limit} bytes")))
}

/// Runs `work` on the blocking pool, in the request's span (so that what it logs, a caught
/// panic included, carries the request id).
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|err| ServerError::Internal(format!("a blocking task failed: {err}")))?
}

pub(crate) fn message_response<T: Serialize>(message: &T) -> Response {
    let mut response = protocol::encode(message).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(protocol::CONTENT_TYPE),
    );
    response
}

pub(crate) fn decode_error(err: DecodeError) -> ServerError {
    match err {
        DecodeError::TooLarge { .. } => ServerError::TooLarge(err.to_string()),
        DecodeError::Compression | DecodeError::Malformed(_) => {
            ServerError::BadRequest(err.to_string())
        }
    }
}
