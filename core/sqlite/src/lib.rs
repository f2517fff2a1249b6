//! Checkpoints of a SQLite WAL on a thread of their own, for the store and the server.
//!
//! By default SQLite checkpoints (copies the WAL's pages into the database file and flushes
//! both) inside the commit that takes the WAL past 1,000 pages: that commit, and whoever waits
//! for the connection behind it, waits for a copy of some megabytes and two flushes. With a
//! [`Checkpointer`] such a commit only wakes a thread, which checkpoints over a connection of
//! its own while the main one goes on: a passive checkpoint takes no lock that writers or
//! readers wait for. Should that thread fall far behind, the committing connection checkpoints
//! itself, as SQLite would.

use std::ffi::c_int;
use std::fmt::Display;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

/// A commit that leaves this many pages in the WAL wakes the checkpoint thread (SQLite's
/// own threshold).
const BACKGROUND_FROM_PAGES: c_int = 1000;
/// A commit that leaves this many (64 MiB of 4 KiB pages) checkpoints on the spot.
const INLINE_FROM_PAGES: c_int = 16_000;

/// The checkpoint thread; stopped and joined when dropped (its connection closes with it).
pub struct Checkpointer {
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
    /// Starts the thread and hooks `main`'s commits to it: SQLite's automatic checkpoints on
    /// `main`, which must be in WAL mode, are replaced. The thread opens its connection with
    /// `open` (a second connection to `main`'s file, opened and unlocked as `main` was) when
    /// first asked to checkpoint, so that a connection opened and closed again never makes
    /// one; if that fails it says so and tries again at the next request. `None` if no thread
    /// could start: `main` then keeps checkpointing in its commits.
    pub fn start<E: Display>(
        main: &mut Connection,
        open: impl FnMut() -> Result<Connection, E> + Send + 'static,
    ) -> rusqlite::Result<Option<Checkpointer>> {
        let shared = Arc::new(Shared::default());
        let running = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("fieldsync-checkpoint".into())
            .spawn(move || run(open, &running));
        let thread = match spawned {
            Ok(thread) => thread,
            Err(err) => {
                tracing::warn!(error = %err, "no checkpoint thread; commits checkpoint");
                return Ok(None);
            }
        };
        // Made before the hook, so that a failure to hook stops the thread.
        let checkpointer = Checkpointer {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        let hooked = shared;
        main.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
            after_commit(&hooked, pages, || wal.checkpoint())
        }))?;
        Ok(Some(checkpointer))
    }

    /// How many checkpoints ran on the thread and in commits.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.shared.lock();
        (state.background, state.inline)
    }

    /// Waits until the thread has run `count` checkpoints, at most `timeout`; returns whether
    /// it had.
    pub fn wait_for(&self, count: u64, timeout: Duration) -> bool {
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

/// What a commit that left `pages` in the WAL does next; `checkpoint` checkpoints over the
/// committing connection. Never an error: SQLite reports an error from its WAL hook as the
/// failure of the commit, which has happened all the same.
fn after_commit(
    shared: &Shared,
    pages: c_int,
    checkpoint: impl FnOnce() -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    if pages >= INLINE_FROM_PAGES {
        match checkpoint() {
            Ok(()) => {
                shared.lock().inline += 1;
                return Ok(());
            }
            // Busy when the thread is checkpointing at that moment; it is then asked again.
            Err(err) => tracing::debug!(error = %err, "a commit could not checkpoint"),
        }
    }
    if pages >= BACKGROUND_FROM_PAGES {
        shared.lock().requested = true;
        shared.changed.notify_all();
    }
    Ok(())
}

fn run<E: Display>(mut open: impl FnMut() -> Result<Connection, E>, shared: &Shared) {
    let mut conn = None;
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
        if conn.is_none() {
            match open() {
                // A connection only knows the file is in WAL mode once it has read it; until
                // then a checkpoint does nothing.
                Ok(opened) => match opened
                    .query_row("PRAGMA journal_mode", [], |row| row.get::<_, String>(0))
                {
                    Ok(_) => conn = Some(opened),
                    Err(err) => {
                        tracing::warn!(error = %err, "the checkpoint connection cannot read")
                    }
                },
                Err(err) => tracing::warn!(error = %err, "no checkpoint connection"),
            }
        }
        let Some(conn) = &conn else { continue };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_that_cannot_checkpoint_succeeds_and_asks_the_thread() {
        let shared = Shared::default();
        let busy = || {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(5),
                None,
            ))
        };
        assert!(after_commit(&shared, INLINE_FROM_PAGES, busy).is_ok());
        let state = shared.lock();
        assert!(state.requested);
        assert_eq!(state.inline, 0);
    }

    #[test]
    fn a_commit_far_past_the_threshold_checkpoints_itself() {
        let shared = Shared::default();
        assert!(after_commit(&shared, INLINE_FROM_PAGES, || Ok(())).is_ok());
        let state = shared.lock();
        assert_eq!(state.inline, 1);
        assert!(!state.requested);
    }

    #[test]
    fn a_commit_past_the_threshold_only_wakes_the_thread() {
        let shared = Shared::default();
        let checkpoint = || panic!("a commit below the inline threshold checkpointed");
        assert!(after_commit(&shared, BACKGROUND_FROM_PAGES, checkpoint).is_ok());
        assert!(shared.lock().requested);
        assert!(after_commit(&Shared::default(), BACKGROUND_FROM_PAGES - 1, checkpoint).is_ok());
    }
}
