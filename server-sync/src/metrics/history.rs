//! Sync health over time, for the admin console's charts (`GET /v1/admin/health`).
//!
//! The counters of [`Metrics`] only ever grow; a chart of pushes or refusals needs how much
//! they grew in each minute. A task of `serve` reads them every interval (a minute by default,
//! `--metrics-sample-secs`) and keeps the differences for the last 24 hours, in memory. Like
//! the counters, the history is this instance's own and starts empty when the process starts;
//! Prometheus scraping `/metrics` is the place for longer or fleet-wide histories.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter as PromCounter;
use serde::Serialize;

use super::Metrics;

/// How far back the history reaches.
const KEPT: Duration = Duration::from_secs(24 * 60 * 60);

/// Where a counter is read.
type Counter = fn(&Metrics) -> &PromCounter;

/// The counters sampled: the name the JSON gives each, and where it is read.
const COUNTERS: [(&str, Counter); 15] = [
    ("requests", |m| &m.requests),
    ("pushes", |m| &m.pushes),
    ("pulls", |m| &m.pulls),
    ("records_accepted", |m| &m.records_accepted),
    ("records_rejected", |m| &m.records_rejected),
    ("records_pulled", |m| &m.records_pulled),
    ("changes_applied", |m| &m.changes_applied),
    ("unauthorized", |m| &m.unauthorized),
    ("rate_limited", |m| &m.rate_limited),
    ("attachment_chunks_received", |m| {
        &m.attachment_chunks_received
    }),
    ("attachment_bytes_sent", |m| &m.attachment_bytes_sent),
    // Kept to derive the mean latencies; not served as series of their own.
    ("push_count", |m| &m.push_latency.count),
    ("push_micros", |m| &m.push_latency.sum_micros),
    ("pull_count", |m| &m.pull_latency.count),
    ("pull_micros", |m| &m.pull_latency.sum_micros),
];

/// How many of [`COUNTERS`] are served as series (the latency sums come after them).
const SERVED: usize = 11;

type Readings = [u64; COUNTERS.len()];

fn read(metrics: &Metrics) -> Readings {
    COUNTERS.map(|(_, counter)| counter(metrics).get())
}

/// The counters' growth over the last 24 hours, one sample per interval.
pub struct History {
    every: Duration,
    kept: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    /// The counters at the last sample (all zero before the first: they start at zero too).
    last: Readings,
    /// Oldest first: when each interval ended (ms since the epoch), and what each counter
    /// grew by in it.
    samples: VecDeque<(i64, Readings)>,
}

impl Default for History {
    /// A history sampled every minute.
    fn default() -> Self {
        History::new(Duration::from_secs(60))
    }
}

impl History {
    /// A history sampled every `every` (at least a second), keeping 24 hours of samples.
    pub fn new(every: Duration) -> History {
        let every = every.max(Duration::from_secs(1));
        let kept = (KEPT.as_secs() / every.as_secs()).max(1) as usize;
        History {
            every,
            kept,
            inner: Mutex::new(Inner {
                last: [0; COUNTERS.len()],
                samples: VecDeque::new(),
            }),
        }
    }

    /// How often the counters are sampled.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Records how much each counter of `metrics` grew since the last sample, as of `at` (ms
    /// since the epoch), dropping the samples older than 24 hours.
    pub fn sample(&self, metrics: &Metrics, at: i64) {
        let now = read(metrics);
        let mut inner = self
            .inner
            .lock()
            .expect("no sample panics holding the lock");
        let mut grew = [0; COUNTERS.len()];
        for ((grew, now), last) in grew.iter_mut().zip(now).zip(inner.last) {
            *grew = now.saturating_sub(last);
        }
        inner.last = now;
        if inner.samples.len() == self.kept {
            inner.samples.pop_front();
        }
        inner.samples.push_back((at, grew));
    }

    /// The history as the admin API serves it, with the counters' totals in `metrics`.
    pub fn view(&self, metrics: &Metrics) -> HistoryView {
        let inner = self
            .inner
            .lock()
            .expect("no sample panics holding the lock");
        let samples = &inner.samples;
        let mut series: Vec<(&'static str, Vec<Option<f64>>)> = COUNTERS[..SERVED]
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let values = samples.iter().map(|(_, grew)| Some(grew[i] as f64));
                (*name, values.collect())
            })
            .collect();
        let latencies = [
            ("push_latency_ms", SERVED, SERVED + 1),
            ("pull_latency_ms", SERVED + 2, SERVED + 3),
        ];
        for (name, count, micros) in latencies {
            let means = samples.iter().map(|(_, grew)| {
                (grew[count] > 0).then(|| grew[micros] as f64 / grew[count] as f64 / 1000.0)
            });
            series.push((name, means.collect()));
        }
        let totals = read(metrics);
        HistoryView {
            interval_secs: self.every.as_secs(),
            at: samples.iter().map(|(at, _)| *at).collect(),
            series: series.into_iter().collect(),
            totals: COUNTERS[..SERVED]
                .iter()
                .zip(totals)
                .map(|((name, _), total)| (*name, total))
                .collect(),
        }
    }
}

/// The history as JSON: `at[i]` ends the interval of `series[name][i]`.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    /// Seconds between samples.
    pub interval_secs: u64,
    /// When each interval ended, ms since the epoch, oldest first.
    pub at: Vec<i64>,
    /// Per series, how much it grew in each interval (the latencies: their mean in ms, `null`
    /// in an interval without a push or pull).
    pub series: std::collections::BTreeMap<&'static str, Vec<Option<f64>>>,
    /// Each counter since this instance started.
    pub totals: std::collections::BTreeMap<&'static str, u64>,
}

/// Samples `metrics` into `history` at its interval, forever: `serve` spawns it.
pub async fn sample_periodically(metrics: Arc<Metrics>, history: Arc<History>) {
    let mut ticks = tokio::time::interval(history.every());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: the interval before it has not passed.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        history.sample(&metrics, crate::storage::now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_hold_what_each_interval_added_and_the_oldest_go() {
        let metrics = Metrics::default();
        let history = History::new(Duration::from_secs(8 * 60 * 60));
        metrics.pushes.inc_by(3);
        metrics.push_latency.observe(Duration::from_millis(10));
        metrics.push_latency.observe(Duration::from_millis(30));
        history.sample(&metrics, 1_000);
        metrics.pushes.inc();
        metrics.unauthorized.inc();
        history.sample(&metrics, 2_000);
        let view = history.view(&metrics);
        assert_eq!(view.interval_secs, 8 * 60 * 60);
        assert_eq!(view.at, [1_000, 2_000]);
        assert_eq!(view.series["pushes"], [Some(3.0), Some(1.0)]);
        assert_eq!(view.series["unauthorized"], [Some(0.0), Some(1.0)]);
        assert_eq!(view.series["push_latency_ms"], [Some(20.0), None]);
        assert_eq!(view.totals["pushes"], 4);
        assert!(!view.series.contains_key("push_micros"));

        // Three samples make 24 hours at this interval: a fourth drops the first.
        history.sample(&metrics, 3_000);
        history.sample(&metrics, 4_000);
        assert_eq!(history.view(&metrics).at, [2_000, 3_000, 4_000]);
    }

    #[test]
    fn the_latency_sums_come_after_the_served_counters() {
        let names: Vec<&str> = COUNTERS.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names[SERVED..],
            ["push_count", "push_micros", "pull_count", "pull_micros"]
        );
    }
}
