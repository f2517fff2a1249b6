//! Endpoints for operators and load balancers.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::metrics::Scraped;

/// `GET /health`: the process is alive.
pub async fn health() -> &'static str {
    "ok"
}

/// `GET /metrics`: the OpenMetrics text exposition, with the gauges read from storage now.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let storage = state.storage.clone();
    let since = crate::storage::now_ms() - 5 * 60 * 1000;
    let scraped = tokio::task::spawn_blocking(move || Scraped {
        active_devices: storage.active_devices(since).unwrap_or(0),
        feed_lag: storage.feed_lag(since).unwrap_or_default(),
    })
    .await
    .unwrap_or_default();
    let mut response = state.metrics.render(scraped).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
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
