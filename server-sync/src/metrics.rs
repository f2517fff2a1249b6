//! Counters and latency histograms, served as Prometheus text on `GET /metrics`.
//!
//! A handful of fixed series kept in atomics: cheap to update on every request and simple to
//! render, with no registry to configure.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub mod history;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Appends the histogram as Prometheus text.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Every series the server exports.
#[derive(Default)]
pub struct Metrics {
    /// HTTP requests received (counted once their headers are read).
    pub requests: AtomicU64,
    /// Requests refused for a missing or bad token.
    pub unauthorized: AtomicU64,
    /// Requests refused by the rate limit.
    pub rate_limited: AtomicU64,
    /// Pushes answered.
    pub pushes: AtomicU64,
    /// Pulls answered.
    pub pulls: AtomicU64,
    /// Pushed records accepted.
    pub records_accepted: AtomicU64,
    /// Pushed records rejected.
    pub records_rejected: AtomicU64,
    /// Automerge changes the server had not seen, added to the feed.
    pub changes_applied: AtomicU64,
    /// Records sent by pulls.
    pub records_pulled: AtomicU64,
    /// Attachment chunks received and stored.
    pub attachment_chunks_received: AtomicU64,
    /// Attachment chunks received that the server held already (a retry after a lost answer).
    pub attachment_chunks_repeated: AtomicU64,
    /// Bytes of attachment chunks sent.
    pub attachment_bytes_sent: AtomicU64,
    /// Webhook deliveries a receiver took.
    pub webhook_deliveries: AtomicU64,
    /// Webhook deliveries that failed (each is tried again).
    pub webhook_failures: AtomicU64,
    /// Webhooks whose deliveries fail now (a gauge).
    pub webhooks_failing: AtomicU64,
    /// Push latency.
    pub push_latency: Histogram,
    /// Pull latency.
    pub pull_latency: Histogram,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition; `active_devices` is read from storage at scrape time.
    pub fn render(&self, active_devices: u64) -> String {
        let mut out = String::new();
        let counters = [
            (
                "fieldsync_requests_total",
                "HTTP requests received",
                &self.requests,
            ),
            (
                "fieldsync_unauthorized_total",
                "requests refused for a missing or bad token",
                &self.unauthorized,
            ),
            (
                "fieldsync_rate_limited_total",
                "requests refused by the rate limit",
                &self.rate_limited,
            ),
            ("fieldsync_pushes_total", "pushes answered", &self.pushes),
            ("fieldsync_pulls_total", "pulls answered", &self.pulls),
            (
                "fieldsync_records_accepted_total",
                "pushed records accepted",
                &self.records_accepted,
            ),
            (
                "fieldsync_records_rejected_total",
                "pushed records rejected",
                &self.records_rejected,
            ),
            (
                "fieldsync_changes_applied_total",
                "new Automerge changes merged",
                &self.changes_applied,
            ),
            (
                "fieldsync_records_pulled_total",
                "records sent by pulls",
                &self.records_pulled,
            ),
            (
                "fieldsync_attachment_chunks_received_total",
                "attachment chunks received and stored",
                &self.attachment_chunks_received,
            ),
            (
                "fieldsync_attachment_chunks_repeated_total",
                "attachment chunks received that were held already",
                &self.attachment_chunks_repeated,
            ),
            (
                "fieldsync_attachment_bytes_sent_total",
                "bytes of attachment chunks sent",
                &self.attachment_bytes_sent,
            ),
            (
                "fieldsync_webhook_deliveries_total",
                "webhook deliveries a receiver took",
                &self.webhook_deliveries,
            ),
            (
                "fieldsync_webhook_failures_total",
                "webhook deliveries that failed",
                &self.webhook_failures,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP fieldsync_active_devices devices that synced in the last 5 minutes\n\
             # TYPE fieldsync_active_devices gauge\nfieldsync_active_devices {active_devices}"
        );
        let _ = writeln!(
            out,
            "# HELP fieldsync_webhooks_failing webhooks whose deliveries fail\n\
             # TYPE fieldsync_webhooks_failing gauge\nfieldsync_webhooks_failing {}",
            self.webhooks_failing.load(Ordering::Relaxed)
        );
        self.push_latency
            .render(&mut out, "fieldsync_push_seconds", "push latency");
        self.pull_latency
            .render(&mut out, "fieldsync_pull_seconds", "pull latency");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(30));
        let mut out = String::new();
        histogram.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1"));
        assert!(out.contains("x_bucket{le=\"0.05\"} 2"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2"));
        assert!(out.contains("x_count 2"));
    }
}
