//! Checkpoints of the server's WAL on a thread of their own.
//!
//! By default SQLite checkpoints (copies the WAL's pages into the database file and flushes
//! both) inside the commit that takes the WAL past 1,000 pages: that commit, and every request
//! queued behind the one connection, waited for a copy of some megabytes and two flushes. Here
//! such a commit only wakes a thread, which checkpoints over its own connection while requests
//! go on: a passive checkpoint takes no lock that writers wait for. Should that thread fall far
//! behind, the committing connection checkpoints itself, as SQLite would.

use std::ffi::c_int;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

use super::BUSY_TIMEOUT;
use crate::error::ServerError;
use crate::storage::Result;

/// A commit that leaves this many pages in the WAL wakes the checkpoint thread (SQLite's
/// own threshold).
const BACKGROUND_FROM_PAGES: c_int = 1000;
/// A commit that leaves this many (64 MiB of 4 KiB pages) checkpoints on the spot.
const INLINE_FROM_PAGES: c_int = 16_000;

/// The checkpoint thread; stopped and joined when dropped.
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    requested: bool,
    stop: bool,
    /// Checkpoints the thread ran.
    background: u64,
    /// Checkpoints commits ran themselves.
    inline: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Checkpointer {
    /// Starts the thread over a connection of its own to `path`, and hooks `conn`'s commits to
    /// it. Replaces SQLite's automatic checkpoints on `conn`.
    pub(super) fn start(path: &Path, conn: &mut Connection) -> Result<Checkpointer> {
        let own = Connection::open(path)?;
        own.busy_timeout(BUSY_TIMEOUT)?;
        // A connection only knows the file is in WAL mode once it has read it; until then a
        // checkpoint does nothing.
        let mode: String = own.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ServerError::Internal(format!(
                "the database is in {mode} mode, not WAL"
            )));
        }
        let shared = Arc::new(Shared::default());
        let hooked = Arc::clone(&shared);
        conn.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
            if pages >= INLINE_FROM_PAGES {
                wal.checkpoint()?;
                hooked.lock().inline += 1;
            } else if pages >= BACKGROUND_FROM_PAGES {
                hooked.lock().requested = true;
                hooked.changed.notify_all();
            }
            Ok(())
        }))?;
        let running = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("fieldsync-checkpoint".into())
            .spawn(move || run(&own, &running))
            .map_err(|err| ServerError::Internal(format!("no checkpoint thread: {err}")))?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// How many checkpoints ran on the thread and in commits.
    pub(super) fn counts(&self) -> (u64, u64) {
        let state = self.shared.lock();
        (state.background, state.inline)
    }

    /// Waits until the thread has run `count` checkpoints, at most `timeout`; returns whether
    /// it had.
    pub(super) fn wait_for(&self, count: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.background < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        true
    }
}

fn run(conn: &Connection, shared: &Shared) {
    loop {
        {
            let mut state = shared.lock();
            while !state.requested && !state.stop {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.stop {
                return;
            }
            state.requested = false;
        }
        match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            // SQLite's way of saying that it could not run.
            Ok((-1, _)) => tracing::warn!("a WAL checkpoint did not run"),
            Ok(_) => {
                shared.lock().background += 1;
                shared.changed.notify_all();
            }
            // The next commit past the threshold asks again; the WAL only grows meanwhile.
            Err(err) => tracing::warn!(error = %err, "a WAL checkpoint failed"),
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
