//! `/v1/admin/webhooks`: webhooks added, listed with how their deliveries go, and removed.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Administrator, body, path};
use crate::AppState;
use crate::admin;
use crate::error::ServerError;
use crate::http::blocking;

/// A webhook as the API shows it (never its secret).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct WebhookView {
    id: i64,
    url: String,
    user: String,
    cursor: i64,
    created_at: i64,
    attempts: u32,
    failing_since: Option<i64>,
    last_error: Option<String>,
    next_attempt_at: i64,
}

/// `POST /v1/admin/webhooks`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    url: String,
    user: String,
    #[serde(default)]
    from_start: bool,
}

/// `GET /v1/admin/webhooks`.
pub async fn list(
    Administrator(_): Administrator,
    State(state): State<AppState>,
) -> Result<Json<Vec<WebhookView>>, ServerError> {
    let storage = state.storage.clone();
    let webhooks = blocking(move || admin::webhooks(&*storage)).await?;
    Ok(Json(
        webhooks
            .into_iter()
            .map(|webhook| WebhookView {
                id: webhook.id,
                url: webhook.url,
                user: webhook.user,
                cursor: webhook.cursor,
                created_at: webhook.created_at,
                attempts: webhook.attempts,
                failing_since: webhook.failing_since,
                last_error: webhook.last_error,
                next_attempt_at: webhook.next_attempt_at,
            })
            .collect(),
    ))
}

/// `POST /v1/admin/webhooks`: `201` with the id and the secret (shown only this once).
pub async fn add(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    request: Result<Json<NewWebhook>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ServerError> {
    let new = body(request)?;
    let storage = state.storage.clone();
    let added =
        blocking(move || admin::add_webhook(&*storage, by, &new.url, &new.user, new.from_start))
            .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"id": added.id, "secret": added.secret})),
    ))
}

/// `DELETE /v1/admin/webhooks/{id}`.
pub async fn remove(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<StatusCode, ServerError> {
    let id = path(id)?;
    let storage = state.storage.clone();
    blocking(move || admin::remove_webhook(&*storage, by, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
