//! Endpoints for operators and load balancers.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// `GET /health`: the process is alive.
pub async fn health() -> &'static str {
    "ok"
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let storage = state.storage.clone();
    let since = crate::storage::now_ms() - 5 * 60 * 1000;
    let (active, backend) = tokio::task::spawn_blocking(move || {
        let mut backend = String::new();
        storage.render_metrics(&mut backend);
        (storage.active_devices(since).unwrap_or(0), backend)
    })
    .await
    .unwrap_or_default();
    let mut text = state.metrics.render(active);
    text.push_str(&backend);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `GET /ready`: the database answers.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    let storage = state.storage.clone();
    match tokio::task::spawn_blocking(move || storage.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}
