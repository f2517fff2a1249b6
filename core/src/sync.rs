//! The sync engine: pushes the outbox to the server and pulls what changed, over HTTP(S).
//!
//! Safe to interrupt anywhere. Outbox entries leave only after the server answered for them
//! (accepted, or rejected and recorded), and a retried batch carries the same batch id, which
//! the server answers from its record. Each pulled page is merged, and the cursor that covers it
//! stored, in one SQLite transaction: a crash repeats at most one page, and merging is
//! idempotent.
//!
//! TLS is rustls with the *ring* provider (it cross-compiles for Android and iOS without the
//! C toolchain aws-lc needs). By default the platform's trust store verifies the server
//! (on Android the app must first initialise `rustls-platform-verifier` through JNI, as its
//! documentation shows); a clinic that runs a private CA passes its root certificates instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::OutboxEntry;
use crate::error::{Error, Result};
use crate::protocol::{self, ErrorBody, PullResponse, PushRecord, PushRequest, PushResponse};
use crate::store::Store;
use transport::HttpTransport;

mod attachments;
mod background;
mod tls;
mod token;
mod transport;
mod wire;

pub use background::{BackgroundOptions, BackgroundSync, SyncListener, SyncState, SyncStatus};
pub use token::TokenProvider;
pub use transport::{BoxFuture, Credentials, Transport, TransportRequest, TransportResponse};

/// Where and how to sync.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The server's base URL, such as `https://sync.clinic.example`.
    pub endpoint: String,
    /// The device's bearer token: a device token, or left empty when `token_provider` gives
    /// the token.
    pub token: String,
    /// Where an identity provider's access tokens come from, asked before every sync; `None`
    /// to send `token`.
    pub token_provider: Option<Arc<dyn TokenProvider>>,
    /// With `token_provider`, the id the device got when it enrolled
    /// ([`SyncClient::enroll_device`]).
    pub device_id: Option<i64>,
    /// PEM root certificates to trust instead of the platform's (a clinic's private CA).
    pub trusted_roots_pem: Vec<String>,
    /// If not empty, the server's certificate must also carry one of these public keys: the
    /// base64 SHA-256 of its SubjectPublicKeyInfo (`openssl x509 -pubkey -noout | openssl pkey
    /// -pubin -outform der | openssl dgst -sha256 -binary | base64`), optionally prefixed
    /// `sha256/`.
    pub pinned_spki_sha256: Vec<String>,
    /// Outbox entries per push.
    pub push_batch_size: usize,
    /// Records asked for in a pull's first page, and the fewest asked for in any page.
    pub pull_page_size: u32,
    /// While a pull's pages carry fewer payload bytes than this, the next page asks for as
    /// many records as should fit (at most four times as many as the page before, and at
    /// most 5,000, the server's default cap); `0` keeps every page at `pull_page_size`.
    /// Larger pages make a long first sync commit less often; the bound keeps its memory flat.
    pub pull_page_bytes: usize,
    /// Longest one request may take.
    pub request_timeout: Duration,
}

impl SyncConfig {
    /// A configuration with default sizes and timeouts.
    pub fn new(endpoint: impl Into<String>, token: impl Into<String>) -> SyncConfig {
        SyncConfig {
            endpoint: endpoint.into(),
            token: token.into(),
            token_provider: None,
            device_id: None,
            trusted_roots_pem: Vec::new(),
            pinned_spki_sha256: Vec::new(),
            push_batch_size: 500,
            pull_page_size: 500,
            pull_page_bytes: 2 << 20,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// The HTTP(S) transport [`SyncClient::new`] uses for `config`'s endpoint and TLS settings;
/// fails on an endpoint that is not an http or https URL or on unusable root certificates.
/// For wrapping in a [`Transport`] of one's own (to observe or delay requests) and handing to
/// [`SyncClient::with_transport`].
pub fn http_transport(config: &SyncConfig) -> Result<Arc<dyn Transport>> {
    if !(config.endpoint.starts_with("https://") || config.endpoint.starts_with("http://")) {
        return Err(Error::InvalidConfig(
            "the endpoint must be an http or https URL".into(),
        ));
    }
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls::client_config(
            &config.trusted_roots_pem,
            &config.pinned_spki_sha256,
        )?)
        .timeout(config.request_timeout)
        .build()
        .map_err(|err| Error::InvalidConfig(format!("the HTTP client cannot be built: {err}")))?;
    Ok(Arc::new(HttpTransport {
        http,
        endpoint: config.endpoint.clone(),
    }))
}

/// What one `sync_now` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Outbox entries the server accepted.
    pub pushed: usize,
    /// Outbox entries the server refused: their writes were taken back out of their records
    /// and kept (see [`Store::rejected_writes`]).
    pub rejected: usize,
    /// Pulled records that changed this store (records it already had are not counted).
    pub pulled: usize,
    /// Scopes whose records were deleted because the user may no longer read them.
    pub purged_scopes: Vec<String>,
    /// Attachments the server now holds whole that it lacked.
    pub attachments_sent: usize,
    /// Attachments downloaded whole (eager fields).
    pub attachments_fetched: usize,
    /// Pulled records the server erased content from: each replaced this store's copy.
    pub erased: usize,
    /// Of those, records whose unsent writes were made again on the erased record and pushed.
    pub rebased: usize,
    /// Whether the sync went to the end: everything pushed, pulled and transferred. False when
    /// [`SyncClient::sync_within`] ran out of budget first; what was done is kept, and the next
    /// sync carries on from there.
    pub complete: bool,
}

/// When a budgeted sync ([`SyncClient::sync_within`]) stops starting new steps.
#[derive(Debug, Clone, Copy)]
struct Deadline(Option<tokio::time::Instant>);

impl Deadline {
    /// No deadline: the sync goes to the end.
    const NONE: Deadline = Deadline(None);

    fn passed(self) -> bool {
        self.0.is_some_and(|at| tokio::time::Instant::now() >= at)
    }
}

/// How far a running sync has come, for a progress bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Outbox entries sent so far (accepted or refused).
    pub pushed: u64,
    /// Outbox entries there were to send when the sync started.
    pub push_total: u64,
    /// Pulled records merged so far (the total is not known in advance).
    pub pulled: u64,
    /// Whether the sync has moved on to pulling.
    pub pulling: bool,
    /// Attachment bytes sent or fetched so far, once the records are synced.
    pub attachment_bytes_done: u64,
    /// Attachment bytes there were to send or fetch (known as each attachment starts).
    pub attachment_bytes_total: u64,
}

/// Syncs stores with one server; keeps its connections between calls.
#[derive(Debug, Clone)]
pub struct SyncClient {
    transport: Arc<dyn Transport>,
    config: SyncConfig,
    /// What requests are sent as: the configured token and device, or the provider's latest
    /// token and the device enrolled.
    credentials: Arc<Mutex<Arc<Credentials>>>,
}

impl SyncClient {
    /// Builds the HTTP client; fails on unusable root certificates.
    pub fn new(config: SyncConfig) -> Result<SyncClient> {
        let transport = http_transport(&config)?;
        Ok(SyncClient::with_transport(config, transport))
    }

    /// A client that reaches the server through `transport` instead of HTTP (the endpoint
    /// and TLS settings of `config` are then unused). Tests use it to run the engine against
    /// an in-process server with faults injected.
    pub fn with_transport(config: SyncConfig, transport: Arc<dyn Transport>) -> SyncClient {
        let credentials = Credentials {
            token: config.token.clone(),
            device_id: config.device_id,
        };
        SyncClient {
            transport,
            config,
            credentials: Arc::new(Mutex::new(Arc::new(credentials))),
        }
    }

    /// Enrols this device with its person's identity provider token (from the
    /// `token_provider`): the server makes it a device of theirs, named `name`, and every
    /// request of this client names it from now on. Returns the device id, for the app to keep
    /// and pass as [`SyncConfig::device_id`] when it builds its client again.
    pub async fn enroll_device(&self, name: &str) -> Result<i64> {
        if self.config.token_provider.is_none() {
            return Err(Error::InvalidConfig(
                "a device enrols itself with a token provider's token".into(),
            ));
        }
        let body = serde_json::to_vec(&protocol::EnrollRequest {
            name: name.to_owned(),
        })
        .map_err(|err| Error::Protocol(err.to_string()))?;
        let enrolled: protocol::EnrolledDevice = self
            .with_fresh_token(|credentials| {
                let request = TransportRequest::Enroll { body: body.clone() };
                async move { decode_json(self.transport.send(&credentials, request).await?) }
            })
            .await?;
        let mut credentials = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        *credentials = Arc::new(Credentials {
            device_id: Some(enrolled.device_id),
            ..(**credentials).clone()
        });
        Ok(enrolled.device_id)
    }

    /// Runs `work` with the current credentials, asking the token provider (if any) for a
    /// token first, and once more if the server refused the one it gave.
    async fn with_fresh_token<T, F, Fut>(&self, work: F) -> Result<T>
    where
        F: Fn(Arc<Credentials>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let Some(provider) = &self.config.token_provider else {
            return work(self.credentials()).await;
        };
        let mut refused_before = false;
        loop {
            // A provider is to answer from what it holds, not wait for the person: one that
            // does not answer in time must not hold the sync (or the background loop) forever.
            let token = tokio::time::timeout(self.config.request_timeout, provider.token())
                .await
                .map_err(|_| {
                    Error::SignInRequired("the token provider did not answer in time".into())
                })?
                .map_err(Error::SignInRequired)?;
            {
                let mut credentials = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
                if credentials.token != token {
                    *credentials = Arc::new(Credentials {
                        token,
                        device_id: credentials.device_id,
                    });
                }
            }
            match work(self.credentials()).await {
                Err(Error::Unauthorized) if !refused_before => refused_before = true,
                Err(Error::Unauthorized) => {
                    return Err(Error::SignInRequired(
                        "the server refused the token provider's fresh token".into(),
                    ));
                }
                done => return done,
            }
        }
    }

    fn credentials(&self) -> Arc<Credentials> {
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Pushes the whole outbox, then pulls until caught up.
    pub async fn sync_now(&self, store: &Store) -> Result<SyncReport> {
        self.sync_now_with_progress(store, &|_| {}).await
    }

    /// Like [`SyncClient::sync_now`], telling `on_progress` after every batch and page.
    ///
    /// A store restored from an older copy of its file is told so by the server (409): it
    /// takes a new actor, makes its unsent writes again under it, and syncs again from the
    /// start, which brings back what it pushed after the copy was made.
    pub async fn sync_now_with_progress(
        &self,
        store: &Store,
        on_progress: &(dyn Fn(&SyncProgress) + Send + Sync),
    ) -> Result<SyncReport> {
        // A sync is safe to repeat: one refused half-way for an expired token runs again.
        let tally = Mutex::new(SyncReport::default());
        self.with_fresh_token(|_| self.sync_restoring(store, on_progress, Deadline::NONE, &tally))
            .await
    }

    /// Syncs for at most `budget`, for a background task the OS gives a few seconds or
    /// minutes (Android's WorkManager, iOS's BGTaskScheduler). No new batch, page or attachment
    /// is started once most of the budget is spent; one still running when the budget ends is
    /// cancelled. Everything stored stays stored: the next sync, budgeted or not, carries on
    /// where this one stopped. The report says whether it went to the end (`complete`), and
    /// what the steps that finished did (a cancelled step's own work, whether or not it was
    /// stored, and attachments' counts are left out).
    pub async fn sync_within(
        &self,
        store: &Store,
        budget: Duration,
        on_progress: &(dyn Fn(&SyncProgress) + Send + Sync),
    ) -> Result<SyncReport> {
        let start = tokio::time::Instant::now();
        // A step (a batch, a page, an attachment's chunk) takes seconds at most on a working
        // connection: a fifth of the budget, up to ten seconds, is left for the last one.
        let margin = (budget / 5).min(Duration::from_secs(10));
        let soft = Deadline(Some(start + budget.saturating_sub(margin)));
        let tally = Mutex::new(SyncReport::default());
        let sync = self.with_fresh_token(|_| self.sync_restoring(store, on_progress, soft, &tally));
        let done = tokio::time::timeout(budget, sync).await;
        match done {
            Ok(done) => done,
            Err(_) => Ok(tally.into_inner().unwrap_or_else(|p| p.into_inner())),
        }
    }

    /// [`SyncClient::sync_once`], which a store restored from an older copy repeats under a
    /// new actor.
    async fn sync_restoring(
        &self,
        store: &Store,
        on_progress: &(dyn Fn(&SyncProgress) + Send + Sync),
        deadline: Deadline,
        tally: &Mutex<SyncReport>,
    ) -> Result<SyncReport> {
        match self.sync_once(store, on_progress, deadline, tally).await {
            Err(Error::Server { status: 409, .. }) => {
                tracing::warn!("the store was restored from an older copy; it takes a new actor");
                blocking(store, |s| s.take_new_actor()).await?;
                self.sync_once(store, on_progress, deadline, tally).await
            }
            done => done,
        }
    }

    /// One sync: push, pull, push again what the pull made again, attachments. `tally` keeps
    /// the report as each step stores its work, for a budgeted sync cancelled half-way.
    async fn sync_once(
        &self,
        store: &Store,
        on_progress: &(dyn Fn(&SyncProgress) + Send + Sync),
        deadline: Deadline,
        tally: &Mutex<SyncReport>,
    ) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let push_total = blocking(store, |s| s.outbox_len()).await? as u64;
        let progress = |report: &SyncReport, pulling: bool| {
            *tally.lock().unwrap_or_else(|p| p.into_inner()) = report.clone();
            on_progress(&SyncProgress {
                pushed: (report.pushed + report.rejected) as u64,
                push_total,
                pulled: report.pulled as u64,
                pulling,
                ..SyncProgress::default()
            })
        };
        let last_batch = self
            .push_all(store, &mut report, &|r| progress(r, false), deadline)
            .await?;
        if deadline.passed() {
            if let Some(batch) = last_batch {
                batch.store(store, &mut report).await?;
                progress(&report, false);
            }
            return Ok(report);
        }
        let caught_up = self
            .pull_all(store, last_batch, &mut report, &progress, deadline)
            .await?;
        if !caught_up {
            return Ok(report);
        }
        // The writes a store restored from an older copy kept aside are made again once it has
        // caught up with the server under its new actor, on top of everything the server has;
        // a sync that stops before then leaves them to the next one.
        let restored = blocking(store, |s| s.write_restored_again()).await?;
        if report.rebased > 0 || restored > 0 {
            // Writes refused as made on an erased record's old epoch were just made again on
            // its new one, and kept writes of a restored store: they go now rather than at
            // the next sync.
            if let Some(batch) = self
                .push_all(store, &mut report, &|r| progress(r, false), Deadline::NONE)
                .await?
            {
                batch.store(store, &mut report).await?;
            }
        }
        // Sent after the records that reference them, so that the server knows their scope is
        // the device's to write before the bytes arrive.
        let records = SyncProgress {
            pushed: (report.pushed + report.rejected) as u64,
            push_total,
            pulled: report.pulled as u64,
            pulling: true,
            ..SyncProgress::default()
        };
        let mut bytes = attachments::Bytes::new(records, on_progress);
        let (sent, all_sent) = self.send_attachments(store, &mut bytes, deadline).await?;
        report.attachments_sent = sent;
        let (fetched, all_fetched) = self.fetch_attachments(store, &mut bytes, deadline).await?;
        report.attachments_fetched = fetched;
        blocking(store, |s| s.tidy_attachments()).await?;
        report.complete = all_sent && all_fetched;
        *tally.lock().unwrap_or_else(|p| p.into_inner()) = report.clone();
        Ok(report)
    }

    /// Pushes the outbox in batches, storing each answer, except the last batch's: that one
    /// is returned for [`SyncClient::pull_all`] to store while its first page is asked for.
    /// Past the deadline no further batch is sent.
    async fn push_all(
        &self,
        store: &Store,
        report: &mut SyncReport,
        progress: &(dyn Fn(&SyncReport) + Send + Sync),
        deadline: Deadline,
    ) -> Result<Option<AnsweredBatch>> {
        let batch_size = self.config.push_batch_size.max(1);
        loop {
            if deadline.passed() {
                return Ok(None);
            }
            // One entry more than a batch says whether this batch is the last. The server is
            // told how many wait, this batch's included (the count may include writes made
            // since the entries were read: it is a snapshot for administrators).
            let (mut entries, pending_changes) = blocking(store, move |s| {
                Ok((s.outbox(batch_size.saturating_add(1))?, s.outbox_len()?))
            })
            .await?;
            let last = entries.len() <= batch_size;
            entries.truncate(batch_size);
            let (Some(first), Some(end)) = (entries.first(), entries.last()) else {
                return Ok(None);
            };
            // The same entries make the same batch id, so a retry after a lost answer is
            // answered from the server's record instead of being applied twice.
            let batch_id = format!("{}:{}-{}", store.device_id(), first.seq, end.seq);
            let request = PushRequest {
                batch_id,
                outbox_seq: Some(end.seq),
                records: entries.iter().cloned().map(PushRecord::from).collect(),
            };
            let response: PushResponse = self.send_push(&request, pending_changes as u64).await?;
            if response.results.len() != entries.len() {
                return Err(Error::Protocol(
                    "the push answer does not match the request".into(),
                ));
            }
            let batch = AnsweredBatch { entries, response };
            if last {
                return Ok(Some(batch));
            }
            batch.store(store, report).await?;
            progress(report);
        }
    }

    /// Stores `last_batch`'s answer, then pulls until caught up. The first page is asked for
    /// while that answer is stored: the push it answers has committed on the server, so the
    /// page holds the same either way, and it is stored after the answer, as it would be
    /// without the overlap. Whether it caught up: past the deadline no further page is asked.
    async fn pull_all(
        &self,
        store: &Store,
        last_batch: Option<AnsweredBatch>,
        report: &mut SyncReport,
        progress: &(dyn Fn(&SyncReport, bool) + Send + Sync),
        deadline: Deadline,
    ) -> Result<bool> {
        // The last batch's entries are still in the outbox while its answer is stored, but
        // answered: the pull does not count them as waiting.
        let answered = last_batch.as_ref().map_or(0, |batch| batch.entries.len());
        // A first sync cancelled half-way left its indexes to build.
        let (cursor, writer) = blocking(store, move |s| {
            s.rebuild_indexes()?;
            let writer = Writer {
                outbox_seq: s.outbox_high_water()?,
                actor: s.device_id(),
                schema_version: s.schema().version,
                pending_changes: s.outbox_len()?.saturating_sub(answered) as u64,
            };
            Ok((s.sync_cursor()?, writer))
        })
        .await?;
        let limit = self.config.pull_page_size;
        let acknowledge = async {
            if let Some(batch) = last_batch {
                batch.store(store, report).await?;
                progress(report, false);
            }
            Ok::<(), Error>(())
        };
        // Both run to the end, so that a failed request never hides an answer that was stored.
        let (acknowledged, page) = tokio::join!(
            acknowledge,
            self.send_pull(cursor.as_deref(), limit, &writer)
        );
        acknowledged?;
        let page = page?;
        // A device's first pull that does not fit one page stores its records without indexes
        // and builds them once at the end, even when the pull fails half-way.
        let bulk = cursor.is_none() && page.more;
        if bulk {
            blocking(store, |s| s.suspend_indexes()).await?;
        }
        let progress = |r: &SyncReport| progress(r, true);
        let pulled = self
            .pull_pages(store, page, (limit, &writer), report, &progress, deadline)
            .await;
        if bulk {
            let rebuilt = blocking(store, |s| s.rebuild_indexes()).await;
            // The pull's own failure says more than the rebuild's.
            return pulled.and_then(|caught_up| rebuilt.map(|()| caught_up));
        }
        pulled
    }

    /// Stores `page` and the pages after it, each asked for while the one before is stored;
    /// whether it caught up (past the deadline no further page is asked for).
    async fn pull_pages(
        &self,
        store: &Store,
        mut page: PullResponse,
        (mut limit, writer): (u32, &Writer),
        report: &mut SyncReport,
        progress: &(dyn Fn(&SyncReport) + Send + Sync),
        deadline: Deadline,
    ) -> Result<bool> {
        // Records, each once however many pages bring it.
        let mut pulled = std::collections::HashSet::new();
        loop {
            report
                .purged_scopes
                .extend(page.revoked_scopes.iter().cloned());
            // The next page is asked for while this one is stored: the server reads it while
            // the device writes, instead of each waiting for the other. Its cursor is the one
            // this page stores; if storing fails, the next sync asks again from the stored one.
            let stopped = page.more && deadline.passed();
            let next_cursor = (page.more && !stopped).then(|| page.next_cursor.clone());
            limit = next_page_size(&self.config, limit, &page);
            let apply = blocking(store, move |s| s.apply_pulled_page(page));
            let fetch = async {
                match &next_cursor {
                    Some(cursor) => self.send_pull(Some(cursor), limit, writer).await.map(Some),
                    None => Ok(None),
                }
            };
            // Both run to the end, so that a failed request never hides a page that committed.
            let (applied, next) = tokio::join!(apply, fetch);
            let (applied, records) = applied?;
            report.erased += applied.erased;
            report.rebased += applied.rebased;
            pulled.extend(records);
            report.pulled = pulled.len();
            progress(report);
            if !applied.rejected.is_empty() {
                tracing::warn!(
                    count = applied.rejected.len(),
                    "pulled records did not merge"
                );
            }
            match next? {
                Some(next) => page = next,
                None => return Ok(!stopped),
            }
        }
    }

    async fn send_push(&self, request: &PushRequest, pending_changes: u64) -> Result<PushResponse> {
        let body = protocol::encode(request);
        let request = TransportRequest::Push {
            body,
            pending_changes,
        };
        let response = self.transport.send(&self.credentials(), request).await?;
        decode_response(response)
    }

    async fn send_pull(
        &self,
        cursor: Option<&str>,
        limit: u32,
        writer: &Writer,
    ) -> Result<PullResponse> {
        if cursor.is_some_and(|cursor| !is_url_safe(cursor)) {
            return Err(Error::Protocol("the stored cursor is not URL-safe".into()));
        }
        let request = TransportRequest::Pull {
            limit,
            cursor: cursor.map(str::to_owned),
            outbox_seq: writer.outbox_seq,
            actor: writer.actor.clone(),
            schema_version: writer.schema_version,
            pending_changes: writer.pending_changes,
        };
        let response = self.transport.send(&self.credentials(), request).await?;
        let page: PullResponse = decode_response(response)?;
        // Stored with the page, a cursor that cannot be sent back would fail every later pull.
        if !is_url_safe(&page.next_cursor) {
            return Err(Error::Protocol(
                "the server sent a cursor that is not URL-safe".into(),
            ));
        }
        Ok(page)
    }
}

/// Cursors are opaque, but the server only makes URL-safe ones (letters and digits).
fn is_url_safe(cursor: &str) -> bool {
    cursor.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Who a pull comes from: the store's actor and how far its outbox has come, by which the
/// server tells a store restored from an older copy, and the schema version it runs.
struct Writer {
    outbox_seq: i64,
    actor: String,
    /// The app schema's version, which the server shows in its device list.
    schema_version: Option<u32>,
    /// The outbox entries no push answer covers yet, counted when the pull began and sent
    /// with each of its pages, which the server shows in its device list.
    pending_changes: u64,
}

/// A pushed batch and the server's answer to it, not yet stored.
struct AnsweredBatch {
    entries: Vec<OutboxEntry>,
    response: PushResponse,
}

impl AnsweredBatch {
    /// Removes the batch's entries from the outbox (remembering refusals) and counts them.
    async fn store(self, store: &Store, report: &mut SyncReport) -> Result<()> {
        // Writes refused as made on an erased record's old epoch stay queued: the pull makes
        // them again on the new epoch.
        let kept = |r: &protocol::Rejection| r.code == protocol::RejectCode::RecordErased;
        let rejected = self
            .response
            .results
            .iter()
            .filter(|r| r.rejected.as_ref().is_some_and(|r| !kept(r)))
            .count();
        let waiting = self
            .response
            .results
            .iter()
            .filter(|r| r.rejected.as_ref().is_some_and(kept))
            .count();
        let restored = self.response.results.iter().find_map(|r| {
            r.rejected
                .as_ref()
                .filter(|r| r.code == protocol::RejectCode::ActorReused)
        });
        let restored = restored.map(|rejection| Error::Server {
            status: 409,
            message: rejection.message.clone(),
        });
        let AnsweredBatch { entries, response } = self;
        let count = entries.len();
        blocking(store, move |s| s.complete_push(&entries, &response)).await?;
        report.rejected += rejected;
        report.pushed += count - rejected - waiting;
        // Its writes stay queued; the app hears why the sync cannot finish.
        restored.map_or(Ok(()), Err)
    }
}

/// Largest answer the engine accepts once decompressed.
const MAX_ANSWER_BYTES: usize = 512 << 20;

/// The most records a pull page grows to (the server's default cap; it may cap lower).
const MAX_PULL_PAGE_SIZE: u32 = 5000;

/// How many records to ask for after `page`, which answered a request for `asked`: as many as
/// should carry `pull_page_bytes` at `page`'s bytes per record, from `pull_page_size` up to four
/// times `asked` and [`MAX_PULL_PAGE_SIZE`].
fn next_page_size(config: &SyncConfig, asked: u32, page: &PullResponse) -> u32 {
    let floor = config.pull_page_size.max(1);
    let records = page.records.len();
    if config.pull_page_bytes == 0 {
        return floor;
    }
    if records == 0 {
        // Nothing to measure by (every entry of the page was this device's own).
        return asked.clamp(floor, MAX_PULL_PAGE_SIZE.max(floor));
    }
    let bytes: usize = page.records.iter().map(|r| r.payload.byte_len()).sum();
    let fitting = config.pull_page_bytes as u128 * records as u128 / bytes.max(1) as u128;
    let ceiling = asked
        .saturating_mul(4)
        .clamp(floor, MAX_PULL_PAGE_SIZE.max(floor));
    u32::try_from(fitting)
        .unwrap_or(u32::MAX)
        .clamp(floor, ceiling)
}

fn decode_response<T: serde::de::DeserializeOwned>(response: TransportResponse) -> Result<T> {
    if (200..300).contains(&response.status) {
        return protocol::decode(&response.body, MAX_ANSWER_BYTES)
            .map_err(|err| Error::Protocol(format!("the server's answer does not decode: {err}")));
    }
    Err(error_of(response))
}

/// A JSON answer (of `/v1/devices`).
fn decode_json<T: serde::de::DeserializeOwned>(response: TransportResponse) -> Result<T> {
    if (200..300).contains(&response.status) {
        return serde_json::from_slice(&response.body)
            .map_err(|_| Error::Protocol("the server's answer does not decode".into()));
    }
    Err(error_of(response))
}

/// The error an unsuccessful answer stands for.
fn error_of(response: TransportResponse) -> Error {
    let error: Option<ErrorBody> = serde_json::from_slice(&response.body).ok();
    let code = error.as_ref().map(|e| e.code);
    match (response.status, code) {
        (401, _) => Error::Unauthorized,
        (429, _) => Error::RateLimited {
            retry_after_secs: response.retry_after_secs.unwrap_or(1),
        },
        (_, Some(protocol::ErrorCode::UnsupportedVersion)) => Error::Protocol(
            "the server does not speak this protocol version; upgrade the app".into(),
        ),
        (status, _) => Error::Server {
            status,
            message: error.map_or_else(|| "no error body".to_owned(), |e| e.message),
        },
    }
}

/// Runs a store call on the blocking pool: SQLite work must not stall the async runtime.
async fn blocking<T: Send + 'static>(
    store: &Store,
    work: impl FnOnce(&Store) -> Result<T> + Send + 'static,
) -> Result<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(|_| Error::Corrupt("a store task panicked".into()))?
}

#[cfg(test)]
mod tests {
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::protocol::{Payload, PulledRecord};

    /// A page of `records` whole documents of `bytes` bytes each.
    fn page(records: usize, bytes: usize) -> PullResponse {
        let record = PulledRecord {
            epoch: 0,
            collection: "clients".into(),
            id: "id".into(),
            scope: "north".into(),
            payload: Payload::Document(ByteBuf::from(vec![0; bytes])),
            fields: None,
            deleted: false,
        };
        PullResponse {
            records: vec![record; records],
            next_cursor: "c".into(),
            more: true,
            revoked_scopes: Vec::new(),
            authors: Vec::new(),
        }
    }

    #[test]
    fn small_pages_grow_fourfold_until_they_carry_the_byte_target() {
        let mut config = SyncConfig::new("http://localhost", "t");
        config.pull_page_size = 100;
        config.pull_page_bytes = 1 << 20;
        // 100 records of 100 bytes: a megabyte would hold 10,485 of them.
        assert_eq!(next_page_size(&config, 100, &page(100, 100)), 400);
        assert_eq!(next_page_size(&config, 400, &page(400, 100)), 1600);
        assert_eq!(
            next_page_size(&config, 1600, &page(1600, 100)),
            MAX_PULL_PAGE_SIZE
        );
        // Records of 1 KiB: 1,024 fit.
        assert_eq!(next_page_size(&config, 1600, &page(1600, 1024)), 1024);
    }

    #[test]
    fn large_records_shrink_pages_back_to_the_configured_size_but_not_below() {
        let mut config = SyncConfig::new("http://localhost", "t");
        config.pull_page_size = 100;
        config.pull_page_bytes = 1 << 20;
        assert_eq!(next_page_size(&config, 4000, &page(4000, 2048)), 512);
        assert_eq!(next_page_size(&config, 512, &page(512, 1 << 20)), 100);
        // An empty page (every entry was this device's own) has nothing to measure by.
        assert_eq!(next_page_size(&config, 2000, &page(0, 0)), 2000);
    }

    #[test]
    fn a_zero_byte_target_keeps_every_page_at_the_configured_size() {
        let mut config = SyncConfig::new("http://localhost", "t");
        config.pull_page_size = 50;
        config.pull_page_bytes = 0;
        assert_eq!(next_page_size(&config, 50, &page(50, 10)), 50);
    }
}
