//! Background sync: a task that syncs on an interval and shortly after local writes, backs off
//! on failures, and tells a listener how it is going.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::{SyncClient, SyncProgress, SyncReport};
use crate::error::Error;
use crate::query::Filter;
use crate::store::{Store, now_ms};
use crate::subscription::{ChangeOrigin, Subscription};

/// What the background sync is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Waiting for the next sync.
    Idle,
    /// Syncing now.
    Syncing,
    /// The server cannot be reached; retrying with backoff.
    Offline,
    /// The last sync failed; retrying with backoff, or stopped (see [`SyncStatus::stopped`]).
    Error,
    /// The token provider has no token, or the server refused its fresh one: the person must
    /// sign in again. The loop asks the provider again at the interval, or at once after
    /// [`BackgroundSync::sync_soon`] (call it once they signed in).
    SignInRequired,
}

/// The background sync's status, as a UI shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// What it is doing.
    pub state: SyncState,
    /// Progress of the running (or last) sync.
    pub progress: SyncProgress,
    /// When a sync last succeeded (ms since the epoch).
    pub last_success_ms: Option<i64>,
    /// What the last successful sync did: among the rest, writes the server refused and
    /// scopes whose records were purged, for the app to tell the user.
    pub last_report: Option<SyncReport>,
    /// What went wrong last, if the last sync failed.
    pub last_error: Option<String>,
    /// How long until the next attempt, when waiting after a failure.
    pub retry_in_ms: Option<u64>,
    /// Whether the loop has stopped for good (the token was refused, or `stop` was called).
    pub stopped: bool,
}

/// Told of every status change, on the background task's thread.
pub trait SyncListener: Send + Sync {
    /// The new status.
    fn on_status(&self, status: &SyncStatus);
}

/// Timing of the background sync.
#[derive(Debug, Clone)]
pub struct BackgroundOptions {
    /// Sync at least this often.
    pub interval: Duration,
    /// After a local write, sync once writes have paused this long.
    pub debounce: Duration,
    /// First wait after a failure; doubles on each further failure.
    pub min_backoff: Duration,
    /// Longest wait after failures.
    pub max_backoff: Duration,
}

impl Default for BackgroundOptions {
    fn default() -> Self {
        BackgroundOptions {
            interval: Duration::from_secs(300),
            debounce: Duration::from_secs(2),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// A running background sync. Dropping it stops it too.
pub struct BackgroundSync {
    stop: watch::Sender<bool>,
    wake: Arc<Notify>,
    task: Option<JoinHandle<()>>,
    status: Arc<Mutex<SyncStatus>>,
}

impl BackgroundSync {
    /// Starts syncing `store` through `client` on the current tokio runtime.
    pub fn start(
        client: SyncClient,
        store: Store,
        options: BackgroundOptions,
        listener: Option<Arc<dyn SyncListener>>,
    ) -> crate::Result<BackgroundSync> {
        let wake = Arc::new(Notify::new());
        // Local writes wake the loop; remote merges do not need a push.
        let subscriptions = store
            .schema()
            .collections
            .keys()
            .map(|collection| {
                let wake = wake.clone();
                store.subscribe(collection, Filter::All, move |event| {
                    if event.origin == ChangeOrigin::Local {
                        wake.notify_one();
                    }
                })
            })
            .collect::<crate::Result<Vec<Subscription>>>()?;
        let (stop, stopped) = watch::channel(false);
        let status = Arc::new(Mutex::new(SyncStatus {
            state: SyncState::Idle,
            progress: SyncProgress::default(),
            last_success_ms: None,
            last_report: None,
            last_error: None,
            retry_in_ms: None,
            stopped: false,
        }));
        let reporter = Reporter {
            status: status.clone(),
            listener,
        };
        let task = tokio::spawn(run(
            client,
            store,
            options,
            wake.clone(),
            stopped,
            reporter,
            subscriptions,
        ));
        Ok(BackgroundSync {
            stop,
            wake,
            task: Some(task),
            status,
        })
    }

    /// Syncs as soon as possible (for example when the app comes to the foreground).
    pub fn sync_soon(&self) {
        self.wake.notify_one();
    }

    /// The latest status.
    pub fn status(&self) -> SyncStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the loop, letting a sync in progress finish, and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for BackgroundSync {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Reporter {
    status: Arc<Mutex<SyncStatus>>,
    listener: Option<Arc<dyn SyncListener>>,
}

impl Reporter {
    fn update(&self, change: impl FnOnce(&mut SyncStatus)) {
        let snapshot = {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut status);
            status.clone()
        };
        if let Some(listener) = &self.listener {
            listener.on_status(&snapshot);
        }
    }
}

/// What to do after a sync attempt.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Succeeded: wait for the interval or a write.
    Wait,
    /// Failed: retry after this long.
    Retry(Duration),
    /// Stop for good.
    Stop,
}

async fn run(
    client: SyncClient,
    store: Store,
    options: BackgroundOptions,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
    reporter: Reporter,
    _subscriptions: Vec<Subscription>,
) {
    let mut failures = 0u32;
    let mut delay = Duration::ZERO;
    loop {
        let woken = tokio::select! {
            _ = stopped.changed() => break,
            _ = tokio::time::sleep(delay) => false,
            _ = wake.notified() => true,
        };
        if woken {
            // Let a burst of writes finish before syncing them.
            tokio::select! {
                _ = stopped.changed() => break,
                _ = tokio::time::sleep(options.debounce) => {}
            }
        }
        reporter.update(|s| {
            s.state = SyncState::Syncing;
            s.progress = SyncProgress::default();
            s.retry_in_ms = None;
        });
        let on_progress = |progress: &SyncProgress| reporter.update(|s| s.progress = *progress);
        let result = client.sync_now_with_progress(&store, &on_progress).await;
        let next = match &result {
            Ok(_) => {
                failures = 0;
                Next::Wait
            }
            Err(err) => {
                failures += 1;
                next_after(err, failures, &options)
            }
        };
        match (result, &next) {
            (Ok(report), _) => reporter.update(|s| {
                s.state = SyncState::Idle;
                s.last_success_ms = Some(now_ms());
                s.last_report = Some(report);
                s.last_error = None;
            }),
            (Err(err), _) => reporter.update(|s| {
                s.state = match err {
                    Error::Network(_) => SyncState::Offline,
                    Error::SignInRequired(_) => SyncState::SignInRequired,
                    _ => SyncState::Error,
                };
                s.last_error = Some(err.to_string());
                s.retry_in_ms = match next {
                    Next::Retry(wait) => Some(wait.as_millis() as u64),
                    _ => None,
                };
                s.stopped = next == Next::Stop;
            }),
        }
        delay = match next {
            Next::Wait => options.interval,
            Next::Retry(wait) => wait,
            Next::Stop => return,
        };
    }
    reporter.update(|s| s.stopped = true);
}

/// The wait after a failed sync: a refused device token stops the loop (retrying cannot help),
/// a sign-in the person must make waits for the interval (or [`BackgroundSync::sync_soon`]),
/// the server's Retry-After is honoured, and anything else backs off exponentially with full
/// jitter so that many devices do not retry in step.
fn next_after(err: &Error, failures: u32, options: &BackgroundOptions) -> Next {
    match err {
        Error::Unauthorized => Next::Stop,
        Error::SignInRequired(_) => Next::Retry(options.interval),
        Error::RateLimited { retry_after_secs } => {
            Next::Retry(Duration::from_secs(*retry_after_secs).min(options.max_backoff))
        }
        _ => Next::Retry(backoff(failures, options, random_fraction())),
    }
}

/// `fraction` (0..1) of the capped exponential backoff for the `failures`-th failure in a row,
/// but never less than the minimum.
fn backoff(failures: u32, options: &BackgroundOptions, fraction: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let ceiling = options
        .min_backoff
        .saturating_mul(1 << exponent)
        .min(options.max_backoff);
    ceiling
        .mul_f64(fraction.clamp(0.0, 1.0))
        .max(options.min_backoff)
}

fn random_fraction() -> f64 {
    // A v4 UUID is 122 random bits from the OS; 53 of them make a uniform fraction.
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BackgroundOptions {
        BackgroundOptions {
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ..BackgroundOptions::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_below() {
        let options = options();
        assert_eq!(backoff(1, &options, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(2, &options, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(4, &options, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(30, &options, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(4, &options, 0.5), Duration::from_secs(4));
        assert_eq!(
            backoff(4, &options, 0.0),
            Duration::from_secs(1),
            "never below the minimum"
        );
        let fraction = random_fraction();
        assert!((0.0..1.0).contains(&fraction));
    }

    #[test]
    fn refused_tokens_stop_and_rate_limits_wait_as_told() {
        let options = options();
        assert_eq!(next_after(&Error::Unauthorized, 1, &options), Next::Stop);
        assert_eq!(
            next_after(&Error::SignInRequired("signed out".into()), 3, &options),
            Next::Retry(options.interval),
            "a person signed out is waited for, not retried in a loop"
        );
        assert_eq!(
            next_after(
                &Error::RateLimited {
                    retry_after_secs: 7
                },
                1,
                &options
            ),
            Next::Retry(Duration::from_secs(7))
        );
        match next_after(&Error::Network("down".into()), 3, &options) {
            Next::Retry(wait) => {
                assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(4))
            }
            other => panic!("{other:?}"),
        }
    }
}
