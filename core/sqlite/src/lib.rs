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
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

/// A commit that leaves this many pages in the WAL wakes the checkpoint thread (SQLite's
/// own threshold).
const BACKGROUND_FROM_PAGES: c_int = 1000;
/// A commit that leaves this many (64 MiB of 4 KiB pages) checkpoints on the spot, unless
/// [`Checkpointer::start`] is given another bound.
pub const INLINE_FROM_PAGES: u32 = 16_000;

/// The checkpoint thread; stopped and joined when dropped (its connection closes with it).
pub struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// A commit that leaves this many pages in the WAL checkpoints on the spot.
    inline_from_pages: c_int,
}

impl Shared {
    fn new(inline_from_pages: u32) -> Shared {
        Shared {
            state: Mutex::default(),
            changed: Condvar::new(),
            inline_from_pages: c_int::try_from(inline_from_pages).unwrap_or(c_int::MAX),
        }
    }
}

#[derive(Default)]
struct State {
    requested: bool,
    /// A WAL file to flush (fsync) as soon as the thread can.
    flush: Option<PathBuf>,
    stop: bool,
    /// Checkpoints the thread ran.
    background: u64,
    /// Checkpoints commits ran themselves.
    inline: u64,
    /// Flushes of the WAL the thread ran.
    flushes: u64,
    /// Whether the thread is checkpointing at this moment.
    checkpointing: bool,
    /// How many checkpoints the thread had run when it was last asked for one.
    asked_at: u64,
}

impl Shared {
    /// Whether a commit that left `pages` in the WAL checkpoints it itself: past
    /// [`INLINE_FROM_PAGES`] or twice the bound [`Checkpointer::start`] was given, or past that
    /// bound once the thread has checkpointed since it was asked and the WAL still did not
    /// start over because commits kept coming (a burst in one commit is the thread's to copy).
    fn overdue(&self, pages: c_int) -> bool {
        if pages >= (INLINE_FROM_PAGES as c_int).min(self.inline_from_pages.saturating_mul(2)) {
            return true;
        }
        let state = self.lock();
        pages >= self.inline_from_pages && state.background > state.asked_at
    }

    /// Waits until the thread is not checkpointing (at most a few seconds).
    fn wait_until_idle(&self) {
        let state = self.lock();
        let _ = self
            .changed
            .wait_timeout_while(state, Duration::from_secs(5), |state| state.checkpointing)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }

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
    /// could start: `main` then keeps checkpointing in its commits. A commit that leaves
    /// `inline_from_pages` in the WAL (the thread has fallen behind) checkpoints on the spot,
    /// which bounds the WAL file's size.
    pub fn start<E: Display>(
        main: &mut Connection,
        inline_from_pages: u32,
        open: impl FnMut() -> Result<Connection, E> + Send + 'static,
    ) -> rusqlite::Result<Option<Checkpointer>> {
        let shared = Arc::new(Shared::new(inline_from_pages));
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

    /// Asks the thread to flush the WAL file `wal` to disk: for a commit made without waiting
    /// for the disk, which is then durable a flush later (at most [`FLUSH_INTERVAL`] and an
    /// fsync) instead of when it returned. A flush covers every commit before it, so requests made while one runs
    /// share the next.
    pub fn flush_soon(&self, wal: &Path) {
        let mut state = self.shared.lock();
        if state.flush.is_none() {
            state.flush = Some(wal.to_owned());
        }
        drop(state);
        self.shared.changed.notify_all();
    }

    /// How many flushes of the WAL the thread ran.
    pub fn flushes(&self) -> u64 {
        self.shared.lock().flushes
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
    mut checkpoint: impl FnMut() -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    if shared.overdue(pages) {
        // One checkpoint runs at a time: when the thread's is running, the commit waits for
        // it to end and checkpoints what it left, which no commit can add to meanwhile.
        for attempt in 0..2 {
            match checkpoint() {
                Ok(()) => {
                    shared.lock().inline += 1;
                    return Ok(());
                }
                Err(err) if attempt == 0 && is_busy(&err) => shared.wait_until_idle(),
                Err(err) => {
                    tracing::debug!(error = %err, "a commit could not checkpoint");
                    break;
                }
            }
        }
    }
    if pages >= BACKGROUND_FROM_PAGES {
        let mut state = shared.lock();
        if !state.requested {
            state.requested = true;
            state.asked_at = state.background;
        }
        drop(state);
        shared.changed.notify_all();
    }
    Ok(())
}

/// The least time between two flushes of the WAL: fsyncs back to back stall the commits that
/// write into the file meanwhile, and one flush covers every commit before it.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

fn run<E: Display>(mut open: impl FnMut() -> Result<Connection, E>, shared: &Shared) {
    let mut conn = None;
    let mut last_flush: Option<Instant> = None;
    loop {
        let (flush, checkpoint) = {
            let mut state = shared.lock();
            loop {
                // A flush waits out the interval since the last one; a checkpoint does not
                // wait for it.
                let flush_wait = state.flush.as_ref().map(|_| {
                    last_flush.map_or(Duration::ZERO, |at| {
                        FLUSH_INTERVAL.saturating_sub(at.elapsed())
                    })
                });
                if state.requested || state.stop || flush_wait == Some(Duration::ZERO) {
                    break;
                }
                state = match flush_wait {
                    Some(wait) => {
                        shared
                            .changed
                            .wait_timeout(state, wait)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0
                    }
                    None => shared
                        .changed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                };
            }
            let due = state.stop || last_flush.is_none_or(|at| at.elapsed() >= FLUSH_INTERVAL);
            let flush = if due { state.flush.take() } else { None };
            (flush, std::mem::take(&mut state.requested))
        };
        if let Some(wal) = flush {
            flush_wal(&wal, shared);
            last_flush = Some(Instant::now());
        }
        {
            let state = shared.lock();
            if state.stop && state.flush.is_none() {
                return;
            }
        }
        if !checkpoint {
            continue;
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
        shared.lock().checkpointing = true;
        let checkpointed = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE);
        shared.lock().checkpointing = false;
        shared.changed.notify_all();
        match checkpointed {
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

fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(failure, _)
        if failure.code == rusqlite::ErrorCode::DatabaseBusy)
}

/// Flushes the WAL file's data to disk. fsync flushes a file's data whichever descriptor asks;
/// the file is opened anew each time, so that one SQLite has replaced is never the one flushed,
/// and for writing, because some systems refuse to flush a file opened only for reading. A
/// WAL that is gone was checkpointed and removed: nothing is left to flush.
fn flush_wal(wal: &Path, shared: &Shared) {
    let flushed = OpenOptions::new()
        .write(true)
        .open(wal)
        .and_then(|file| file.sync_data());
    match flushed {
        Ok(()) => {
            shared.lock().flushes += 1;
            shared.changed.notify_all();
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(error = %err, "the WAL could not be flushed"),
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
        let shared = Shared::new(INLINE_FROM_PAGES);
        let busy = || {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(5),
                None,
            ))
        };
        assert!(after_commit(&shared, INLINE_FROM_PAGES as c_int, busy).is_ok());
        let state = shared.lock();
        assert!(state.requested);
        assert_eq!(state.inline, 0);
    }

    #[test]
    fn a_commit_far_past_the_threshold_checkpoints_itself() {
        let shared = Shared::new(INLINE_FROM_PAGES);
        assert!(after_commit(&shared, INLINE_FROM_PAGES as c_int, || Ok(())).is_ok());
        let state = shared.lock();
        assert_eq!(state.inline, 1);
        assert!(!state.requested);
    }

    #[test]
    fn a_commit_past_the_bound_checkpoints_itself_once_the_thread_has_run() {
        let shared = Shared::new(2000);
        let checkpoint = || panic!("a burst checkpointed in its commit");
        assert!(after_commit(&shared, 2500, checkpoint).is_ok());
        assert!(shared.lock().requested);
        // The thread ran, and commits kept coming: the WAL never started over.
        {
            let mut state = shared.lock();
            state.requested = false;
            state.background += 1;
        }
        assert!(after_commit(&shared, 2600, || Ok(())).is_ok());
        assert_eq!(shared.lock().inline, 1);
        assert!(after_commit(&shared, 1999, || panic!("below the bound")).is_ok());
        // Twice the bound, a commit checkpoints whatever the thread is doing.
        let busy = Shared::new(2000);
        assert!(after_commit(&busy, 4000, || Ok(())).is_ok());
        assert_eq!(busy.lock().inline, 1);
    }

    #[test]
    fn a_commit_past_the_threshold_only_wakes_the_thread() {
        let shared = Shared::new(INLINE_FROM_PAGES);
        let checkpoint = || panic!("a commit below the inline threshold checkpointed");
        assert!(after_commit(&shared, BACKGROUND_FROM_PAGES, checkpoint).is_ok());
        assert!(shared.lock().requested);
        assert!(
            after_commit(
                &Shared::new(INLINE_FROM_PAGES),
                BACKGROUND_FROM_PAGES - 1,
                checkpoint
            )
            .is_ok()
        );
    }
}
