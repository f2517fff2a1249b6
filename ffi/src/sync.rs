//! Sync across the boundary: `sync_now` as a foreign async call, background sync with a
//! status listener, and tokens from the app's sign-in library. Everything runs on one tokio
//! runtime owned by the library, so apps need no runtime of their own and a foreign executor
//! only awaits the result.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fieldsync_core as core;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::error::{FieldsyncError, Result};
use crate::store::Store;
use crate::values::{signed, unsigned};

/// Where and how to sync.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncConfig {
    /// The server's base URL, such as `https://sync.clinic.example`.
    pub endpoint: String,
    /// The device's bearer token. Unused by a client built with a token provider
    /// (`SyncClient.with_token_provider`); pass an empty string there.
    pub token: String,
    /// PEM root certificates to trust instead of the platform's (a clinic's private CA).
    #[uniffi(default = [])]
    pub trusted_roots_pem: Vec<String>,
    /// If not empty, the server's certificate must carry one of these public keys (base64
    /// SHA-256 of the SubjectPublicKeyInfo, optionally prefixed `sha256/`).
    #[uniffi(default = [])]
    pub pinned_spki_sha256: Vec<String>,
    /// Outbox entries per push.
    #[uniffi(default = 500)]
    pub push_batch_size: i32,
    /// Records asked for in a pull's first page, and the fewest asked for in any page.
    #[uniffi(default = 500)]
    pub pull_page_size: i32,
    /// Longest one request may take, in milliseconds.
    #[uniffi(default = 60000)]
    pub request_timeout_ms: i64,
    /// While a pull's pages carry fewer bytes of record data than this, the next page asks for
    /// more records (at most four times as many, and 5,000); 0 keeps every page at
    /// `pull_page_size`. It bounds a long first sync's memory.
    #[uniffi(default = 2097152)]
    pub pull_page_bytes: i64,
    /// With a token provider: the id `SyncClient.enroll_device` returned when this device
    /// enrolled, kept by the app and passed again whenever it builds its client.
    #[uniffi(default = None)]
    pub device_id: Option<i64>,
}

/// What one `sync_now` or `sync_within` did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncReport {
    /// Outbox entries the server accepted.
    pub pushed: i64,
    /// Outbox entries the server refused; their writes were taken back (see
    /// `Store.rejected_writes`).
    pub rejected: i64,
    /// Pulled records that changed this store.
    pub pulled: i64,
    /// Scopes whose records were removed because the user may no longer read them.
    pub purged_scopes: Vec<String>,
    /// Attachments written here that the server now holds whole.
    pub attachments_sent: i64,
    /// Attachments of `eager` fields downloaded whole.
    pub attachments_fetched: i64,
    /// Pulled records the server erased content from: each replaced this store's copy.
    pub erased: i64,
    /// Of those, records whose unsent writes were made again on the erased record and pushed.
    pub rebased: i64,
    /// Whether the sync went to the end. False when `sync_within` ran out of budget first:
    /// what was done is kept, and the next sync carries on from there.
    pub complete: bool,
}

impl From<core::SyncReport> for SyncReport {
    fn from(report: core::SyncReport) -> Self {
        SyncReport {
            pushed: signed(report.pushed),
            rejected: signed(report.rejected),
            pulled: signed(report.pulled),
            purged_scopes: report.purged_scopes,
            attachments_sent: signed(report.attachments_sent),
            attachments_fetched: signed(report.attachments_fetched),
            erased: signed(report.erased),
            rebased: signed(report.rebased),
            complete: report.complete,
        }
    }
}

/// How far a running sync has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct SyncProgress {
    /// Outbox entries sent so far.
    pub pushed: i64,
    /// Outbox entries there were to send when the sync started.
    pub push_total: i64,
    /// Pulled records merged so far (the total is not known in advance).
    pub pulled: i64,
    /// Whether the sync has moved on to pulling.
    pub pulling: bool,
    /// Attachment bytes sent or fetched so far; attachments move once the records are synced.
    pub attachment_bytes_done: i64,
    /// Attachment bytes there are to send or fetch, growing as each attachment starts.
    pub attachment_bytes_total: i64,
}

/// What the background sync is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncState {
    /// Waiting for the next sync.
    Idle,
    /// Syncing now.
    Syncing,
    /// The server cannot be reached; retrying with backoff.
    Offline,
    /// The last sync failed; retrying with backoff, or stopped.
    Error,
    /// The token provider has no token, or the server refused its fresh one: the person must
    /// sign in again. The loop asks the provider again at the interval, or at once after
    /// `BackgroundSync.sync_soon` (call it once they signed in).
    SignInRequired,
}

/// The background sync's status, as a UI shows it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncStatus {
    /// What it is doing.
    pub state: SyncState,
    /// Progress of the running (or last) sync.
    pub progress: SyncProgress,
    /// When a sync last succeeded (ms since the epoch).
    pub last_success_ms: Option<i64>,
    /// What the last successful sync did: writes the server refused, scopes purged, ...
    pub last_report: Option<SyncReport>,
    /// What went wrong last, if the last sync failed.
    pub last_error: Option<String>,
    /// How long until the next attempt, when waiting after a failure.
    pub retry_in_ms: Option<i64>,
    /// Whether the loop has stopped for good (a device token refused, or stopped by the app).
    /// `SignInRequired` does not stop it.
    pub stopped: bool,
}

/// Timing of the background sync, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct BackgroundOptions {
    /// Sync at least this often.
    #[uniffi(default = 300000)]
    pub interval_ms: i64,
    /// After a local write, sync once writes have paused this long.
    #[uniffi(default = 2000)]
    pub debounce_ms: i64,
    /// First wait after a failure; doubles on each further failure.
    #[uniffi(default = 1000)]
    pub min_backoff_ms: i64,
    /// Longest wait after failures.
    #[uniffi(default = 300000)]
    pub max_backoff_ms: i64,
}

/// Told how a running `sync_now` progresses.
#[uniffi::export(foreign)]
pub trait SyncProgressListener: Send + Sync {
    /// After every pushed batch and pulled page. An exception thrown here is logged and does
    /// not stop the sync.
    fn on_progress(&self, progress: SyncProgress) -> Result<()>;
}

/// Told of every change of the background sync's status, on a library thread.
#[uniffi::export(foreign)]
pub trait SyncStatusListener: Send + Sync {
    /// The new status. An exception thrown here is logged and does not stop the sync.
    fn on_status(&self, status: SyncStatus) -> Result<()>;
}

/// The app's sign-in library, for clinics whose staff sign in through an identity provider:
/// gives the sync its access tokens.
#[uniffi::export(foreign)]
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync {
    /// A current access token, refreshed as the sign-in library needs to. Asked before every
    /// sync and once more when the server refused the token it gave (it expired meanwhile).
    /// Throw `TokenProviderError.SignInRequired` when no token can be had without the person
    /// (they signed out, or their session ended): the sync then fails with `SignInRequired`,
    /// carrying the reason, which must not contain a token.
    async fn token(&self) -> Result<String, TokenProviderError>;
}

/// What a token provider throws when it has no token; any other error thrown by `token` counts
/// as `SignInRequired` too. Its own type because the library's error type carries a message
/// only, which cannot be read back when the app's code throws it.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum TokenProviderError {
    /// The person must sign in again; `reason` says why, for the sync's error message.
    #[error("{reason}")]
    SignInRequired {
        /// Why no token can be had (signed out, session ended, ...).
        reason: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for TokenProviderError {
    fn from(err: uniffi::UnexpectedUniFFICallbackError) -> Self {
        TokenProviderError::SignInRequired {
            reason: format!("the token provider failed: {}", err.reason),
        }
    }
}

/// The app's provider as the core sees it.
struct ForeignTokenProvider(Arc<dyn TokenProvider>);

// By hand: the core requires Debug, and the foreign object has nothing worth printing.
impl std::fmt::Debug for ForeignTokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForeignTokenProvider")
            .finish_non_exhaustive()
    }
}

impl core::TokenProvider for ForeignTokenProvider {
    fn token(&self) -> core::BoxFuture<'_, std::result::Result<String, String>> {
        Box::pin(async move { self.0.token().await.map_err(|err| err.to_string()) })
    }
}

/// Syncs stores with one server; keeps its connections between calls.
#[derive(Debug, uniffi::Object)]
pub struct SyncClient {
    inner: core::SyncClient,
}

#[uniffi::export]
impl SyncClient {
    /// Checks the configuration and builds the HTTP client; it sends `config.token`.
    #[uniffi::constructor]
    pub fn new(config: SyncConfig) -> Result<Arc<SyncClient>> {
        SyncClient::build(config, None)
    }

    /// Like `new`, but every request carries a token from `provider` (the app's sign-in
    /// library) instead of `config.token`, which is ignored, and names the device
    /// `config.device_id`. A new device calls `enroll_device` once, before its first sync.
    #[uniffi::constructor]
    pub fn with_token_provider(
        config: SyncConfig,
        provider: Arc<dyn TokenProvider>,
    ) -> Result<Arc<SyncClient>> {
        SyncClient::build(config, Some(provider))
    }

    /// Makes this device one of the signed-in person's (needs a client built with a token
    /// provider), named `name` in their device list. Every later request of this client names
    /// the device; the app keeps the returned id and passes it as `SyncConfig.device_id` when
    /// it builds its client again.
    pub async fn enroll_device(&self, name: String) -> Result<i64> {
        let client = self.inner.clone();
        run(async move { client.enroll_device(&name).await })?.await
    }

    /// Pushes the whole outbox, then pulls until caught up. Safe to cancel: whatever the
    /// server answered is kept, and the next sync carries on.
    #[uniffi::method(default(progress = None))]
    pub async fn sync_now(
        &self,
        store: Arc<Store>,
        progress: Option<Arc<dyn SyncProgressListener>>,
    ) -> Result<SyncReport> {
        self.sync(store, None, progress).await
    }

    /// Syncs for at most `budget_ms`, for the background work an OS allows a suspended app
    /// (Android's WorkManager, iOS's BGTaskScheduler). No new batch, page or attachment starts
    /// once most of the budget is spent, and one still running when it ends is cancelled;
    /// what was stored stays stored, and the next sync carries on from there. The report says
    /// whether it went to the end (`complete`), and what the server refused or purged.
    #[uniffi::method(default(progress = None))]
    pub async fn sync_within(
        &self,
        store: Arc<Store>,
        budget_ms: i64,
        progress: Option<Arc<dyn SyncProgressListener>>,
    ) -> Result<SyncReport> {
        let budget = Duration::from_millis(unsigned(budget_ms, "budget_ms")?);
        self.sync(store, Some(budget), progress).await
    }

    /// Fetches the attachment the field `field` of `collection/id` references: the way to get
    /// an `on_demand` field's bytes (an `eager` field's too, when the budget left it behind).
    /// True once the store holds it whole, at once if it did already; false while the server
    /// does not hold it whole yet (the device that wrote it has not sent it all). Safe to
    /// cancel: the chunks fetched are kept, and the next call fetches the rest.
    pub async fn fetch_attachment(
        &self,
        store: Arc<Store>,
        collection: String,
        id: String,
        field: String,
    ) -> Result<bool> {
        let client = self.inner.clone();
        let store = store.inner.clone();
        run(async move {
            client
                .fetch_attachment(&store, &collection, &id, &field)
                .await
        })?
        .await
    }

    /// Starts syncing `store` in the background: on the interval, shortly after local writes,
    /// and with backoff after failures. It stops when the server refuses a device token, when
    /// `stop` is called, or when the returned object is closed. When a token provider has no
    /// token, or the server refuses its fresh one, it reports `SignInRequired` and carries on:
    /// it asks again at the interval, or at once after `sync_soon`.
    pub fn start_background(
        &self,
        store: Arc<Store>,
        options: BackgroundOptions,
        listener: Option<Arc<dyn SyncStatusListener>>,
    ) -> Result<Arc<BackgroundSync>> {
        let _context = runtime()?.enter();
        let listener = listener
            .map(|listener| Arc::new(StatusForwarder(listener)) as Arc<dyn core::SyncListener>);
        let inner = core::BackgroundSync::start(
            self.inner.clone(),
            store.inner.clone(),
            core::BackgroundOptions {
                interval: Duration::from_millis(unsigned(options.interval_ms, "interval_ms")?),
                debounce: Duration::from_millis(unsigned(options.debounce_ms, "debounce_ms")?),
                min_backoff: Duration::from_millis(unsigned(
                    options.min_backoff_ms,
                    "min_backoff_ms",
                )?),
                max_backoff: Duration::from_millis(unsigned(
                    options.max_backoff_ms,
                    "max_backoff_ms",
                )?),
            },
            listener,
        )?;
        Ok(Arc::new(BackgroundSync {
            inner: Mutex::new(Some(inner)),
        }))
    }
}

impl SyncClient {
    async fn sync(
        &self,
        store: Arc<Store>,
        budget: Option<Duration>,
        progress: Option<Arc<dyn SyncProgressListener>>,
    ) -> Result<SyncReport> {
        let client = self.inner.clone();
        let store = store.inner.clone();
        let report = run(async move {
            let on_progress = |p: &core::SyncProgress| {
                if let Some(Err(err)) = progress.as_ref().map(|l| l.on_progress(p.into())) {
                    tracing::warn!(error = %err, "a sync progress listener failed");
                }
            };
            match budget {
                Some(budget) => client.sync_within(&store, budget, &on_progress).await,
                None => client.sync_now_with_progress(&store, &on_progress).await,
            }
        })?
        .await?;
        Ok(report.into())
    }

    fn build(config: SyncConfig, provider: Option<Arc<dyn TokenProvider>>) -> Result<Arc<Self>> {
        let _context = runtime()?.enter();
        // With a provider the configured token is never sent: the provider is asked first.
        let token = if provider.is_some() {
            String::new()
        } else {
            config.token
        };
        let inner = core::SyncClient::new(core::SyncConfig {
            token_provider: provider.map(|provider| {
                Arc::new(ForeignTokenProvider(provider)) as Arc<dyn core::TokenProvider>
            }),
            device_id: config.device_id,
            trusted_roots_pem: config.trusted_roots_pem,
            pinned_spki_sha256: config.pinned_spki_sha256,
            push_batch_size: unsigned(config.push_batch_size, "push_batch_size")?,
            pull_page_size: unsigned(config.pull_page_size, "pull_page_size")?,
            pull_page_bytes: unsigned(config.pull_page_bytes, "pull_page_bytes")?,
            request_timeout: Duration::from_millis(unsigned(
                config.request_timeout_ms,
                "request_timeout_ms",
            )?),
            ..core::SyncConfig::new(config.endpoint, token)
        })?;
        Ok(Arc::new(SyncClient { inner }))
    }
}

/// A running background sync.
#[derive(uniffi::Object)]
pub struct BackgroundSync {
    inner: Mutex<Option<core::BackgroundSync>>,
}

impl std::fmt::Debug for BackgroundSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundSync").finish_non_exhaustive()
    }
}

#[uniffi::export]
impl BackgroundSync {
    /// Syncs as soon as possible (for example when the app comes to the foreground).
    pub fn sync_soon(&self) {
        if let Some(inner) = self.lock().as_ref() {
            inner.sync_soon();
        }
    }

    /// The latest status; `stopped` once `stop` was called.
    pub fn status(&self) -> SyncStatus {
        match self.lock().as_ref() {
            Some(inner) => (&inner.status()).into(),
            None => SyncStatus {
                state: SyncState::Idle,
                progress: SyncProgress {
                    pushed: 0,
                    push_total: 0,
                    pulled: 0,
                    pulling: false,
                    attachment_bytes_done: 0,
                    attachment_bytes_total: 0,
                },
                last_success_ms: None,
                last_report: None,
                last_error: None,
                retry_in_ms: None,
                stopped: true,
            },
        }
    }

    /// Stops the loop, letting a sync in progress finish, and waits for it. Calling it again
    /// does nothing.
    pub async fn stop(&self) -> Result<()> {
        let Some(inner) = self.lock().take() else {
            return Ok(());
        };
        run(async move {
            inner.stop().await;
            Ok::<(), FieldsyncError>(())
        })?
        .await
    }
}

impl BackgroundSync {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<core::BackgroundSync>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct StatusForwarder(Arc<dyn SyncStatusListener>);

impl core::SyncListener for StatusForwarder {
    fn on_status(&self, status: &core::SyncStatus) {
        if let Err(err) = self.0.on_status(status.into()) {
            tracing::warn!(error = %err, "a sync status listener failed");
        }
    }
}

impl From<&core::SyncProgress> for SyncProgress {
    fn from(progress: &core::SyncProgress) -> Self {
        SyncProgress {
            pushed: signed(progress.pushed),
            push_total: signed(progress.push_total),
            pulled: signed(progress.pulled),
            pulling: progress.pulling,
            attachment_bytes_done: signed(progress.attachment_bytes_done),
            attachment_bytes_total: signed(progress.attachment_bytes_total),
        }
    }
}

impl From<&core::SyncStatus> for SyncStatus {
    fn from(status: &core::SyncStatus) -> Self {
        SyncStatus {
            state: match status.state {
                core::SyncState::Idle => SyncState::Idle,
                core::SyncState::Syncing => SyncState::Syncing,
                core::SyncState::Offline => SyncState::Offline,
                core::SyncState::Error => SyncState::Error,
                core::SyncState::SignInRequired => SyncState::SignInRequired,
            },
            progress: (&status.progress).into(),
            last_success_ms: status.last_success_ms,
            last_report: status.last_report.clone().map(Into::into),
            last_error: status.last_error.clone(),
            retry_in_ms: status.retry_in_ms.map(signed),
            stopped: status.stopped,
        }
    }
}

/// The library's runtime: two worker threads are plenty for one device's sync.
fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("fieldsync-sync")
                .enable_all()
                .build()
                .map_err(|err| err.to_string())
        })
        .as_ref()
        .map_err(|err| FieldsyncError::internal(format!("the sync runtime cannot start: {err}")))
}

/// Runs `work` on the library's runtime; the returned future, polled by any executor, gives
/// its result, and dropping it (a cancelled coroutine or task) aborts the work.
fn run<T, E>(
    work: impl Future<Output = std::result::Result<T, E>> + Send + 'static,
) -> Result<impl Future<Output = Result<T>>>
where
    T: Send + 'static,
    E: Into<FieldsyncError> + Send + 'static,
{
    let task = AbortOnDrop(runtime()?.spawn(work));
    Ok(async move {
        match task.join().await {
            Ok(result) => result.map_err(Into::into),
            Err(err) => Err(FieldsyncError::internal(format!(
                "the sync task failed: {err}"
            ))),
        }
    })
}

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> std::result::Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
