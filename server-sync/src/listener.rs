//! Accepting connections: how many the server holds at once, and how long a client may take
//! to send a request's head or stay idle between requests, so that slow or idle clients
//! cannot use up the process's open files and leave `/health` and pulls unanswered.
//!
//! Connections beyond the limit are still accepted as spare ones, served one request each with
//! a short head timeout; when there are more spare ones than [`SPARE_CONNECTIONS`], the oldest
//! is closed. So a health check or a device that sends its request at once gets its answer
//! while connections that hold a place without sending one time out.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

/// Connections served beyond [`ConnectionLimits::max_connections`], one request each.
const SPARE_CONNECTIONS: usize = 32;
/// How long a spare connection may take to send its request's head.
const SPARE_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Open files kept for what is not a connection: the database and its WAL, the log, backups.
const FILES_FOR_THE_REST: u64 = 128;
/// The most connections held when the open-file limit allows more.
const MOST_CONNECTIONS: usize = 10_000;

/// How many connections the server holds and how long they may idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections held at once (beyond them, [`SPARE_CONNECTIONS`] more are served one
    /// request each).
    pub max_connections: usize,
    /// How long a client may take to send a request's head, and how long a kept-alive
    /// connection may wait for its next request.
    pub head_timeout: Duration,
}

impl ConnectionLimits {
    /// Limits for this process: connections up to its open-file limit less what the rest of
    /// the server needs, and a 10-second head timeout.
    pub fn for_this_process() -> ConnectionLimits {
        let open_files = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| soft_open_file_limit(&limits));
        ConnectionLimits {
            max_connections: connections_for(open_files),
            head_timeout: Duration::from_secs(10),
        }
    }
}

/// The soft "Max open files" limit in the text of `/proc/self/limits`; `None` if unlimited or
/// not found.
fn soft_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Connections to hold under an open-file limit (`None`: unknown or unlimited).
fn connections_for(open_files: Option<u64>) -> usize {
    let spare = SPARE_CONNECTIONS as u64 + FILES_FOR_THE_REST;
    match open_files {
        Some(limit) => usize::try_from(limit.saturating_sub(spare))
            .unwrap_or(MOST_CONNECTIONS)
            .clamp(1, MOST_CONNECTIONS),
        None => MOST_CONNECTIONS,
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let held = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let spares = Arc::new(Mutex::new(Spares::default()));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of open files or memory for a moment: accepting again at once
                    // would spin.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (permit, spare) = match Arc::clone(&held).try_acquire_owned() {
            Ok(permit) => (Some(permit), None),
            Err(_) => (None, Some(lock(&spares).admit())),
        };
        let head_timeout = match spare {
            Some(_) => SPARE_HEAD_TIMEOUT,
            None => limits.head_timeout,
        };
        let _ = stream.set_nodelay(true);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(head_timeout)
            .keep_alive(spare.is_none());
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        let spares = Arc::clone(&spares);
        tokio::spawn(async move {
            // A connection that ends in an error (a reset, a timed-out head) is the client's.
            match spare {
                None => drop(connection.await),
                Some((id, closed)) => {
                    tokio::select! {
                        _ = connection => {}
                        _ = closed => {}
                    }
                    lock(&spares).remove(id);
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The spare connections open, oldest first, each with the means to close it.
#[derive(Default)]
struct Spares {
    next_id: u64,
    open: VecDeque<(u64, oneshot::Sender<()>)>,
    closed_early: u64,
    reported_at: Option<Instant>,
}

impl Spares {
    /// Admits one more spare connection, closing the oldest if there are too many; returns
    /// its id and what tells it to close.
    fn admit(&mut self) -> (u64, oneshot::Receiver<()>) {
        if self.open.len() >= SPARE_CONNECTIONS
            && let Some((_, close)) = self.open.pop_front()
        {
            let _ = close.send(());
            self.closed_early += 1;
            // Reported now and then, not once per connection: under a flood of connections
            // that would be a flood of log lines.
            if self
                .reported_at
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
            {
                tracing::warn!(
                    closed = self.closed_early,
                    "more connections than the server holds: the oldest spare ones closed"
                );
                self.reported_at = Some(Instant::now());
                self.closed_early = 0;
            }
        }
        let (close, closed) = oneshot::channel();
        self.next_id += 1;
        self.open.push_back((self.next_id, close));
        (self.next_id, closed)
    }

    fn remove(&mut self, id: u64) {
        self.open.retain(|(open, _)| *open != id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_stay_below_the_open_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 1048576              files     \n";
        assert_eq!(soft_open_file_limit(limits), Some(1024));
        assert_eq!(connections_for(Some(1024)), 1024 - 160);
        assert_eq!(connections_for(Some(100)), 1);
        assert_eq!(connections_for(Some(1 << 40)), MOST_CONNECTIONS);
        assert_eq!(connections_for(None), MOST_CONNECTIONS);
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(soft_open_file_limit(unlimited), None);
    }
}
