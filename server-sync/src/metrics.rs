//! Counters, gauges and latency histograms, served on `GET /metrics` by `prometheus-client`.
//!
//! One [`Registry`] is built with the [`Metrics`]; request handlers update its series through
//! the fields (`metrics.pushes.inc()`), the storage backend registers its own series into it
//! ([`crate::storage::Storage::register_metrics`]), and a scrape sets the gauges read from
//! storage before encoding the registry as text.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub mod history;

/// Upper bounds of the latency buckets, in seconds: 1 ms to 5 s.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram, with its count and sum kept beside it where they can be read (for
/// [`history`]; `prometheus-client` does not expose a histogram's).
#[derive(Clone)]
pub struct Latency {
    histogram: Histogram,
    /// Observations.
    pub(crate) count: Counter,
    /// Their sum, in microseconds.
    pub(crate) sum_micros: Counter,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            histogram: Histogram::new(BUCKETS),
            count: Counter::default(),
            sum_micros: Counter::default(),
        }
    }
}

impl Latency {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        self.histogram.observe(elapsed.as_secs_f64());
        self.count.inc();
        self.sum_micros
            .inc_by(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    /// Registers the histogram as `name` (in seconds).
    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help, self.histogram.clone());
    }
}

/// The label of the series of one scope.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: String,
}

/// What a scrape reads from storage.
#[derive(Debug, Default)]
pub struct Scraped {
    /// Devices that synced in the last 5 minutes.
    pub active_devices: u64,
    /// Per scope, how many feed positions its slowest active reader is behind the scope's
    /// last entry ([`crate::storage::Storage::feed_lag`]): their largest is served, and each
    /// by scope where [`Metrics::label_scopes`] allows.
    pub feed_lag: Vec<(String, i64)>,
}

/// Every series the server exports, and the registry they are encoded from.
pub struct Metrics {
    registry: Registry,
    /// Held while a scrape sets the gauges it read and encodes them.
    scraping: Mutex<()>,
    /// HTTP requests received (counted once their headers are read).
    pub requests: Counter,
    /// Requests refused for a missing or bad token.
    pub unauthorized: Counter,
    /// Requests refused by the rate limit.
    pub rate_limited: Counter,
    /// Pushes answered.
    pub pushes: Counter,
    /// Pulls answered.
    pub pulls: Counter,
    /// Pushed records accepted.
    pub records_accepted: Counter,
    /// Pushed records rejected.
    pub records_rejected: Counter,
    /// Automerge changes the server had not seen, added to the feed.
    pub changes_applied: Counter,
    /// Records sent by pulls.
    pub records_pulled: Counter,
    /// Attachment chunks received and stored.
    pub attachment_chunks_received: Counter,
    /// Attachment chunks received that the server held already (a retry after a lost answer).
    pub attachment_chunks_repeated: Counter,
    /// Bytes of attachment chunks sent.
    pub attachment_bytes_sent: Counter,
    /// Webhook deliveries a receiver took.
    pub webhook_deliveries: Counter,
    /// Webhook deliveries that failed (each is tried again).
    pub webhook_failures: Counter,
    /// Webhooks whose deliveries fail now.
    pub webhooks_failing: Gauge,
    /// Devices that synced in the last 5 minutes, set at scrape time.
    active_devices: Gauge,
    /// The largest feed lag of any scope, set at scrape time.
    feed_lag_max: Gauge,
    /// Per scope, the feed lag of its slowest active reader, set at scrape time when
    /// `label_scopes`.
    feed_lag: Family<ScopeLabel, Gauge>,
    /// Whether `/metrics` names scopes (off by default: it needs no token).
    label_scopes: AtomicBool,
    /// Push latency.
    pub push_latency: Latency,
    /// Pull latency.
    pub pull_latency: Latency,
    /// Time spent merging each push's records (summed over the threads merging them).
    pub merge_time: Latency,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Metrics {
            registry: Registry::default(),
            scraping: Mutex::new(()),
            requests: Counter::default(),
            unauthorized: Counter::default(),
            rate_limited: Counter::default(),
            pushes: Counter::default(),
            pulls: Counter::default(),
            records_accepted: Counter::default(),
            records_rejected: Counter::default(),
            changes_applied: Counter::default(),
            records_pulled: Counter::default(),
            attachment_chunks_received: Counter::default(),
            attachment_chunks_repeated: Counter::default(),
            attachment_bytes_sent: Counter::default(),
            webhook_deliveries: Counter::default(),
            webhook_failures: Counter::default(),
            webhooks_failing: Gauge::default(),
            active_devices: Gauge::default(),
            feed_lag_max: Gauge::default(),
            feed_lag: Family::default(),
            label_scopes: AtomicBool::new(false),
            push_latency: Latency::default(),
            pull_latency: Latency::default(),
            merge_time: Latency::default(),
        };
        metrics.register();
        metrics
    }
}

impl Metrics {
    /// The server's series and `storage`'s own.
    pub fn with_storage(storage: &dyn crate::storage::Storage) -> Metrics {
        let mut metrics = Metrics::default();
        storage.register_metrics(&mut metrics.registry);
        metrics
    }

    /// Serves the feed lag of each scope, labelled with the scope's name
    /// (`--metrics-scope-labels`). Off by default: `/metrics` needs no token, and otherwise
    /// names no scope.
    pub fn label_scopes(&self, on: bool) {
        self.label_scopes.store(on, Ordering::Relaxed);
    }

    fn register(&mut self) {
        let registry = &mut self.registry;
        // Counters are exposed with `_total` after these names.
        let counters = [
            (
                "fieldsync_requests",
                "HTTP requests received",
                &self.requests,
            ),
            (
                "fieldsync_unauthorized",
                "requests refused for a missing or bad token",
                &self.unauthorized,
            ),
            (
                "fieldsync_rate_limited",
                "requests refused by the rate limit",
                &self.rate_limited,
            ),
            ("fieldsync_pushes", "pushes answered", &self.pushes),
            ("fieldsync_pulls", "pulls answered", &self.pulls),
            (
                "fieldsync_records_accepted",
                "pushed records accepted",
                &self.records_accepted,
            ),
            (
                "fieldsync_records_rejected",
                "pushed records rejected",
                &self.records_rejected,
            ),
            (
                "fieldsync_changes_applied",
                "new Automerge changes merged",
                &self.changes_applied,
            ),
            (
                "fieldsync_records_pulled",
                "records sent by pulls",
                &self.records_pulled,
            ),
            (
                "fieldsync_attachment_chunks_received",
                "attachment chunks received and stored",
                &self.attachment_chunks_received,
            ),
            (
                "fieldsync_attachment_chunks_repeated",
                "attachment chunks received that were held already",
                &self.attachment_chunks_repeated,
            ),
            (
                "fieldsync_attachment_bytes_sent",
                "bytes of attachment chunks sent",
                &self.attachment_bytes_sent,
            ),
            (
                "fieldsync_webhook_deliveries",
                "webhook deliveries a receiver took",
                &self.webhook_deliveries,
            ),
            (
                "fieldsync_webhook_failures",
                "webhook deliveries that failed",
                &self.webhook_failures,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "fieldsync_active_devices",
            "devices that synced in the last 5 minutes",
            self.active_devices.clone(),
        );
        registry.register(
            "fieldsync_webhooks_failing",
            "webhooks whose deliveries fail",
            self.webhooks_failing.clone(),
        );
        registry.register(
            "fieldsync_feed_lag_max",
            "feed positions the reader furthest behind in any scope (a device synced in the \
             last 5 minutes, or a webhook) has yet to read up to that scope's last entry",
            self.feed_lag_max.clone(),
        );
        registry.register(
            "fieldsync_feed_lag",
            "per scope, feed positions its reader furthest behind has yet to read up to the \
             scope's last entry; served with --metrics-scope-labels only",
            self.feed_lag.clone(),
        );
        self.push_latency
            .register(registry, "fieldsync_push_seconds", "push latency");
        self.pull_latency
            .register(registry, "fieldsync_pull_seconds", "pull latency");
        self.merge_time.register(
            registry,
            "fieldsync_merge_seconds",
            "time spent merging a push's records, summed over the threads merging them",
        );
    }

    /// The text exposition (OpenMetrics), with the gauges `scraped` from storage.
    pub fn render(&self, scraped: Scraped) -> String {
        let _scraping = self
            .scraping
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.active_devices
            .set(i64::try_from(scraped.active_devices).unwrap_or(i64::MAX));
        let max = scraped.feed_lag.iter().map(|(_, lag)| *lag).max();
        self.feed_lag_max.set(max.unwrap_or(0));
        self.feed_lag.clear();
        if self.label_scopes.load(Ordering::Relaxed) {
            for (scope, lag) in scraped.feed_lag {
                self.feed_lag.get_or_create(&ScopeLabel { scope }).set(lag);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_total() {
        let metrics = Metrics::default();
        metrics.push_latency.observe(Duration::from_micros(500));
        metrics.push_latency.observe(Duration::from_millis(30));
        metrics.pushes.inc_by(2);
        let scraped = || Scraped {
            active_devices: 3,
            feed_lag: vec![("north".into(), 7), ("south".into(), 2)],
        };
        // Scopes are named only when asked for.
        let out = metrics.render(scraped());
        assert!(
            out.lines().any(|l| l == "fieldsync_feed_lag_max 7"),
            "{out}"
        );
        // Nor does any help text happen to contain a scope's name.
        for scope in ["north", "south"] {
            assert!(!out.contains(scope), "{out}");
        }
        metrics.label_scopes(true);
        let out = metrics.render(scraped());
        for line in [
            "fieldsync_push_seconds_bucket{le=\"0.001\"} 1",
            "fieldsync_push_seconds_bucket{le=\"0.05\"} 2",
            "fieldsync_push_seconds_bucket{le=\"+Inf\"} 2",
            "fieldsync_push_seconds_count 2",
            "fieldsync_pushes_total 2",
            "fieldsync_active_devices 3",
            "fieldsync_feed_lag{scope=\"north\"} 7",
            "fieldsync_feed_lag{scope=\"south\"} 2",
            "fieldsync_feed_lag_max 7",
            "# TYPE fieldsync_merge_seconds histogram",
        ] {
            assert!(out.lines().any(|l| l == line), "missing `{line}` in\n{out}");
        }
        assert_eq!(metrics.push_latency.count.get(), 2);
        assert_eq!(metrics.push_latency.sum_micros.get(), 30_500);

        // A scope no reader lags in any more is gone from the next scrape.
        let out = metrics.render(Scraped::default());
        assert!(!out.contains("fieldsync_feed_lag{"), "{out}");
        assert!(
            out.lines().any(|l| l == "fieldsync_feed_lag_max 0"),
            "{out}"
        );
    }
}
