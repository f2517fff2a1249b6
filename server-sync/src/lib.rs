//! The Fieldsync sync server.
//!
//! Devices push their local Automerge changes (`POST /v1/push`) and pull what changed in the
//! scopes their user may read (`GET /v1/pull`). The server merges every accepted change into
//! its own copy of the record, keeps a change feed in commit order, and serves whole compacted
//! documents to devices on their first sync. Storage sits behind [`storage::Storage`]; the
//! embedded default is [`storage::sqlite::SqliteStorage`], and
//! [`storage::postgres::PostgresStorage`] lets several instances share one PostgreSQL database.
//!
//! ```no_run
//! use std::sync::Arc;
//! use fieldsync_server::{AppState, Limits, router, storage::sqlite::SqliteStorage};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let storage = SqliteStorage::open("fieldsync-server.db".as_ref())?;
//! let app = router(AppState::new(Arc::new(storage), Limits::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod admin_api;
pub mod admission;
pub mod attachments;
pub mod auth;
pub mod change_feed;
pub mod cli;
mod console;
mod devices;
pub mod erasure;
pub mod error;
pub mod group_grants;
mod http;
pub mod jwt;
pub mod listener;
pub mod logging;
mod merge;
pub mod metrics;
pub mod oidc;
mod ops;
mod outbound;
mod premerge;
mod pruning;
mod pull;
mod push;
pub mod rate_limit;
pub mod records_api;
pub mod repair;
pub mod retention;
pub mod schema;
pub mod storage;
pub mod subject_export;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use tracing::Instrument;

pub use error::ServerError;
use storage::Storage;

/// Size and paging limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, compressed (bytes).
    pub max_body_bytes: usize,
    /// Largest request body once decompressed (bytes).
    pub max_decompressed_bytes: usize,
    /// Most records in one push.
    pub max_records_per_push: usize,
    /// Most Automerge changes in one push, over all its records.
    pub max_changes_per_push: usize,
    /// Largest document, or changes for one record in one push (bytes).
    pub max_document_bytes: usize,
    /// Records per pull page when the client names no limit.
    pub default_pull_limit: u32,
    /// Most records per pull page.
    pub max_pull_limit: u32,
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// Requests a second each device may make on average (0: no limit).
    pub requests_per_second: u32,
    /// Requests a device may make in a burst.
    pub request_burst: u32,
    /// Largest attachment (bytes).
    pub max_attachment_bytes: u64,
    /// The longest a webhook's failed delivery waits before it is tried again (the wait
    /// doubles from a second with each failure in a row, up to this).
    pub webhook_max_backoff: Duration,
    /// Days a device may go without syncing before the feed entries it has not read may be
    /// pruned (its next pull then starts over with whole records); push answers are kept as
    /// long.
    pub feed_keep_days: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 << 20,
            max_decompressed_bytes: 32 << 20,
            max_records_per_push: 1000,
            max_changes_per_push: 20_000,
            max_document_bytes: 4 << 20,
            default_pull_limit: 500,
            max_pull_limit: 5000,
            request_timeout: Duration::from_secs(30),
            requests_per_second: 20,
            request_burst: 60,
            max_attachment_bytes: 100 << 20,
            webhook_max_backoff: Duration::from_secs(300),
            feed_keep_days: 90,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Where everything is kept.
    pub storage: Arc<dyn Storage>,
    /// Size and paging limits.
    pub limits: Limits,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// The counters' growth over the last 24 hours, for the admin console's charts.
    pub metrics_history: Arc<metrics::history::History>,
    /// The per-device request limit.
    pub rate_limiter: Arc<rate_limit::RateLimiter>,
    /// The schema pushes are validated against.
    pub schema: Arc<schema::SchemaCache>,
    /// How much push work is taken on at once.
    pub admission: Arc<admission::Admission>,
    /// The clinic's identity provider, whose access tokens are accepted besides device
    /// tokens; `None` for device tokens only.
    pub oidc: Option<Arc<oidc::Provider>>,
    /// Where attachments' bytes are kept.
    pub chunks: Arc<attachments::chunks::ChunkStore>,
    /// Woken when this instance stored a push, for the change feed's long polls.
    pub feed_stored: Arc<tokio::sync::Notify>,
}

impl AppState {
    /// State for `storage` with `limits` and fresh metrics.
    pub fn new(storage: Arc<dyn Storage>, limits: Limits) -> AppState {
        let rate_limiter = Arc::new(rate_limit::RateLimiter::new(
            limits.requests_per_second,
            limits.request_burst,
        ));
        AppState {
            metrics: Arc::new(metrics::Metrics::with_storage(storage.as_ref())),
            storage,
            limits,
            metrics_history: Arc::default(),
            rate_limiter,
            schema: Arc::default(),
            admission: Arc::new(admission::Admission::new(
                admission::AdmissionLimits::default(),
            )),
            oidc: None,
            chunks: Arc::new(attachments::chunks::ChunkStore::Database),
            feed_stored: Arc::default(),
        }
    }

    /// This state, keeping attachments' bytes in `bucket` rather than the database.
    pub fn with_attachment_bucket(self, bucket: attachments::bucket::Bucket) -> AppState {
        AppState {
            chunks: Arc::new(attachments::chunks::ChunkStore::Bucket(bucket)),
            ..self
        }
    }

    /// This state, accepting the access tokens of `provider` too (whose groups give their
    /// members the group mappings stored).
    pub fn with_identity_provider(self, provider: oidc::Provider) -> AppState {
        AppState {
            oidc: Some(Arc::new(provider)),
            ..self
        }
    }
}

/// The HTTP routes, with request ids, timeouts and tracing.
pub fn router(state: AppState) -> Router {
    let timeout = state.limits.request_timeout;
    Router::new()
        .route("/v1/push", post(push::push))
        .route("/v1/pull", get(pull::pull))
        .route("/v1/schema", get(schema::get))
        .route("/v1/devices", post(devices::enroll).get(devices::list))
        .route("/v1/devices/{id}", axum::routing::delete(devices::revoke))
        .route(
            "/v1/scopes/{scope}/attachments/{sha256}",
            get(attachments::status),
        )
        .route(
            "/v1/scopes/{scope}/attachments/{sha256}/chunks/{chunk}",
            get(attachments::get_chunk).put(attachments::put_chunk),
        )
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .merge(admin_api::routes())
        .merge(records_api::routes())
        .merge(console::routes())
        .with_state(state.clone())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(state, request_id))
}

/// Gives every request an id, logged on every line of its span and returned to the client.
async fn request_id(State(state): State<AppState>, request: Request, next: Next) -> Response {
    state.metrics.requests.inc();
    let id = uuid::Uuid::new_v4().to_string();
    // The route, not the path the client sent, which may be anything it likes.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("(no route)", |matched| matched.as_str())
        .to_owned();
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "(other)",
    };
    let span = tracing::info_span!("request", request_id = %id, method, path = %route);
    async move {
        let started = std::time::Instant::now();
        let mut response = next.run(request).await;
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request done"
        );
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-request-id", value);
        }
        response
    }
    .instrument(span)
    .await
}
