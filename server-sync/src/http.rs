//! What every `/v1` handler shares: authenticating the caller (a device, a person, or an
//! administrator) within their request limit, reading the body, running storage work on the
//! blocking pool, and answering in the protocol's encoding.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use fieldsync_record::protocol::{self, DecodeError};
use serde::Serialize;

use crate::AppState;
use crate::auth::{Caller, Person, authenticate, authenticate_person};
use crate::error::ServerError;

/// Authenticates the caller, then checks the protocol version; without a valid token nothing
/// else is looked at.
pub(crate) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Caller, ServerError> {
    let caller = counted(state, authenticate(state, headers).await)?;
    rate_limit(state, caller.device_id)?;
    check_version(headers)?;
    Ok(caller)
}

/// Authenticates a caller of the records API: as [`authorize`], without the protocol header
/// (the API is JSON and versioned by its path).
pub(crate) async fn authorize_api(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Caller, ServerError> {
    let caller = counted(state, authenticate(state, headers).await)?;
    rate_limit(state, caller.device_id)?;
    Ok(caller)
}

/// Authenticates someone whichever device they call from (see [`authenticate_person`]), with
/// the request limit of their device or user, then checks the protocol version.
pub(crate) async fn authorize_person(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Person, ServerError> {
    let person = counted(state, authenticate_person(state, headers).await)?;
    rate_limit(state, limit_key(&person))?;
    check_version(headers)?;
    Ok(person)
}

/// Authenticates an administrator for the admin API (see [`authenticate_person`]), with the
/// request limit of their device or user; anyone else is `forbidden`. The admin API is JSON and
/// versioned by its path: it asks for no protocol header.
pub(crate) async fn authorize_admin(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Person, ServerError> {
    let person = counted(state, authenticate_person(state, headers).await)?;
    rate_limit(state, limit_key(&person))?;
    if !person.admin {
        return Err(ServerError::Forbidden(
            "the admin API is for administrators".into(),
        ));
    }
    Ok(person)
}

/// Counts a refused token in the metrics.
fn counted<T>(state: &AppState, authenticated: Result<T, ServerError>) -> Result<T, ServerError> {
    if let Err(ServerError::Unauthorized(_) | ServerError::InvalidToken(_)) = &authenticated {
        state.metrics.unauthorized.inc();
    }
    authenticated
}

/// Whose request limit a person's request counts against: their device's, or without one
/// their user's, kept under the negated user id (device ids are positive).
fn limit_key(person: &Person) -> i64 {
    person.device_id.unwrap_or(-person.user_id)
}

fn rate_limit(state: &AppState, key: i64) -> Result<(), ServerError> {
    state.rate_limiter.check(key).map_err(|retry_after_secs| {
        state.metrics.rate_limited.inc();
        ServerError::RateLimited { retry_after_secs }
    })
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

/// The count of local changes a device says wait in its outbox
/// ([`protocol::PENDING_CHANGES_HEADER`]), if it says: `None` without the header (an app from
/// before it). Anything but one header of decimal digits with a value up to `i64::MAX` is
/// refused, so that a client's mistake shows at once instead of as a wrong count.
pub(crate) fn pending_changes(headers: &HeaderMap) -> Result<Option<u64>, ServerError> {
    let mut values = headers.get_all(protocol::PENDING_CHANGES_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let malformed = || {
        ServerError::BadRequest(format!(
            "the {} header must be sent once, as a decimal count from 0 to {}",
            protocol::PENDING_CHANGES_HEADER,
            i64::MAX
        ))
    };
    if values.next().is_some() {
        return Err(malformed());
    }
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    // Digits only, so that no sign is taken; the parse refuses what passes the bound.
    let count = value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(malformed)?;
    Ok(Some(count as u64))
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

/// A request the JSON or query extractor refused, as `bad_request`: its reason (a field
/// missing or unknown, a wrong type) with any value it quotes left out, since a value sent
/// may be clinical data.
pub(crate) fn unreadable(reason: String) -> ServerError {
    ServerError::BadRequest(without_values(&reason))
}

/// `text` with what serde quotes of a value (`string "…"`, `integer `…``) elided.
fn without_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = [
            ("string \"", '"'),
            ("integer `", '`'),
            ("floating point `", '`'),
        ]
        .iter()
        .filter_map(|(opening, close)| rest.find(opening).map(|at| (at, *opening, *close)))
        .min_by_key(|(at, _, _)| *at);
        let Some((at, opening, close)) = next else {
            out.push_str(rest);
            return out;
        };
        let start = at + opening.len();
        out.push_str(&rest[..start]);
        out.push('…');
        match rest[start..].find(close) {
            Some(end) => rest = &rest[start + end..],
            None => return out,
        }
    }
}

#[cfg(test)]
mod unreadable_tests {
    use super::without_values;

    #[test]
    fn values_quoted_by_serde_are_left_out() {
        assert_eq!(
            without_values(
                "fields: invalid type: string \"Sam has a fever\", expected a map at line 1"
            ),
            "fields: invalid type: string \"…\", expected a map at line 1"
        );
        assert_eq!(
            without_values("invalid type: integer `42`, expected a string"),
            "invalid type: integer `…`, expected a string"
        );
        assert_eq!(
            without_values("unknown field `colour`, expected `id` or `fields`"),
            "unknown field `colour`, expected `id` or `fields`"
        );
        assert_eq!(without_values("cut string \"abc"), "cut string \"…");
    }
}
