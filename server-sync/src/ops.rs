//! Endpoints for operators and load balancers.

use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;

/// `GET /health`: the process is alive.
pub async fn health() -> &'static str {
    "ok"
}

/// `GET /ready`: the database answers.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    let storage = state.storage.clone();
    match tokio::task::spawn_blocking(move || storage.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}
