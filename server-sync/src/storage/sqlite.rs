//! The embedded default: everything in one SQLite file.
//!
//! One connection behind a mutex serializes every transaction, so feed positions
//! (`AUTOINCREMENT`) are assigned in commit order and a reader always sees a prefix of the feed:
//! a cursor can never step over a change that commits later with a smaller position.
//!
//! Pushes and pulls commit as a group: their transactions commit with `synchronous = NORMAL`
//! (written to the WAL, not yet flushed), and no answer leaves until one `fsync` of the WAL has
//! covered its commit. Whoever waits first flushes for everyone who committed before it, so
//! under load one flush serves many syncs instead of one each. Reads that serve records wait
//! the same way, so no device ever receives a change that a power cut could still take back.
//! Rare writes (users, devices, tokens, grants, actor bindings) flush before they return.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fieldsync_record::protocol::{Author, PushResponse};
use fieldsync_sqlite::Checkpointer;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Access, AttachmentState, AuditEntry, AuditQuery, Batch, ChunkStored, Delivery, DeviceInfo,
    DeviceRecord, DeviceSync, DocumentEntry, FEED_POSITION_RECORDED_EVERY_MS, FeedEntry, Grant,
    IDLE_PULL_RECORDED_EVERY_MS, Lineage, ListedAttachment, ListedRecord, Merge, MergedRecord,
    NewAuditLine, NewEpoch, Page, Pruned, RecordValues, Result, RetentionPolicy, Role, SignIn,
    Snapshot, SnapshotMark, Storage, StoredChunk, StoredGroupGrant, StoredRecord, StoredSchema,
    TokenRecord, UserInfo, Webhook, now_ms, push_pipeline, stored_count,
};
use crate::error::ServerError;
use crate::metrics::Latency;

mod attachments;
mod identity;
mod maintenance;
mod pruning;
mod pull;
mod push;
mod retention;
mod webhooks;

use pull::{authors_in, documents_page_in, feed_page_in, record_pull_in};
use push::{ACTOR_RETIRED, ACTOR_TAKEN, SqlitePush, bind_in};

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/001_init.sql"),
    include_str!("migrations/sqlite/002_records_by_seq.sql"),
    include_str!("migrations/sqlite/003_pages_in_position_order.sql"),
    include_str!("migrations/sqlite/004_record_lineage.sql"),
    include_str!("migrations/sqlite/005_lineage_follows_doc.sql"),
    include_str!("migrations/sqlite/006_audit_by_record_in_blocks.sql"),
    include_str!("migrations/sqlite/007_first_syncs_by_creation.sql"),
    include_str!("migrations/sqlite/008_schemas.sql"),
    include_str!("migrations/sqlite/009_audit_refusals.sql"),
    include_str!("migrations/sqlite/010_restored_devices.sql"),
    include_str!("migrations/sqlite/011_device_actors.sql"),
    include_str!("migrations/sqlite/012_device_schema_versions.sql"),
    include_str!("migrations/sqlite/013_identity.sql"),
    include_str!("migrations/sqlite/014_attachments.sql"),
    include_str!("migrations/sqlite/015_chunks_in_a_bucket.sql"),
    include_str!("migrations/sqlite/016_pending_changes.sql"),
    include_str!("migrations/sqlite/017_back_office.sql"),
    include_str!("migrations/sqlite/018_erasure.sql"),
    include_str!("migrations/sqlite/019_retention.sql"),
    include_str!("migrations/sqlite/020_pruning.sql"),
    include_str!("migrations/sqlite/021_record_writers.sql"),
];

/// Audit lines are indexed by record in blocks of `1 << AUDIT_BLOCK_BITS` consecutive lines
/// (migration 6; the index's expression must match [`AUDIT_OF_RECORD_IN_BLOCK`]'s).
const AUDIT_BLOCK_BITS: u32 = 12;

/// Server storage in one SQLite file.
pub struct SqliteStorage {
    /// Checkpoints the WAL off the commit path (`None`: SQLite checkpoints in commits).
    /// Declared first: dropped (its thread stopped) before the connection.
    checkpointer: Option<Checkpointer>,
    conn: Mutex<Connection>,
    /// The WAL file, flushed to make commits durable.
    wal: PathBuf,
    durability: Mutex<Durability>,
    flushed: Condvar,
    /// How long each flush of the WAL took.
    flush_latency: Latency,
    /// How long each request waited for its commit (or what it read) to be flushed.
    durable_wait: Latency,
    /// Migration steps this open applied (see [`SqliteStorage::migrations_applied`]).
    migrations_applied: u32,
}

/// Which commits are on stable storage. Commits are counted under the connection lock, after
/// they commit, so a flush that starts after a commit was counted covers it.
#[derive(Debug, Default)]
struct Durability {
    committed: u64,
    durable: u64,
    flushing: bool,
    flushes: u64,
}

impl SqliteStorage {
    /// Opens (or creates) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStorage> {
        create_private(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        enable_wal(&conn)?;
        // SQLite's default page cache (2 MiB) would send most record reads of a busy server
        // back to the file system; a server can afford 64 MiB. Deleted content is zeroed as
        // it goes (`secure_delete`), so that what an erasure removes leaves no copy in free
        // pages or in the free space of the pages that held it (docs/BENCHMARKS.md, "Erasure").
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536;
             PRAGMA secure_delete = ON;",
        )?;
        let before: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let migrations_applied = migrate(&mut conn)?;
        if (1..ZEROES_DELETED_CONTENT).contains(&before) {
            // Pages freed by earlier releases may still hold records' earlier bytes: the file
            // is rewritten without them, once.
            tracing::info!("rewriting the database without its free pages, once");
            conn.execute_batch("VACUUM")?;
        }
        // From here on, commits are flushed by `wait_durable`, in groups.
        conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        let checkpointer = {
            let path = path.to_owned();
            Checkpointer::start(&mut conn, fieldsync_sqlite::INLINE_FROM_PAGES, move || {
                let own = Connection::open(&path)?;
                own.busy_timeout(BUSY_TIMEOUT)?;
                Ok::<_, rusqlite::Error>(own)
            })?
        };
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(SqliteStorage {
            checkpointer,
            conn: Mutex::new(conn),
            wal: PathBuf::from(wal),
            durability: Mutex::new(Durability::default()),
            flushed: Condvar::new(),
            flush_latency: Latency::default(),
            durable_wait: Latency::default(),
            migrations_applied,
        })
    }

    /// How many migration steps this open applied to the file: all of them on a new file,
    /// none on an up-to-date one. Of several processes opening a new file at once, each
    /// applies the steps the others had not, so theirs add up to the number of steps.
    pub fn migrations_applied(&self) -> u32 {
        self.migrations_applied
    }

    /// How many WAL checkpoints ran on the checkpoint thread and inside commits.
    pub fn checkpoints(&self) -> (u64, u64) {
        self.checkpointer
            .as_ref()
            .map_or((0, 0), Checkpointer::counts)
    }

    /// Waits until the checkpoint thread has run `count` checkpoints, at most `timeout`;
    /// returns whether it had.
    pub fn wait_for_checkpoints(&self, count: u64, timeout: Duration) -> bool {
        self.checkpointer
            .as_ref()
            .is_some_and(|checkpointer| checkpointer.wait_for(count, timeout))
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic inside a transaction rolls it back when the transaction drops.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn durability(&self) -> MutexGuard<'_, Durability> {
        self.durability
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a commit; call with the connection lock held, right after the commit. Returns
    /// what to pass to [`SqliteStorage::wait_durable`].
    fn committed(&self, _conn: &Connection) -> u64 {
        let mut durability = self.durability();
        durability.committed += 1;
        durability.committed
    }

    /// What a read may have seen; call with the connection lock held.
    fn seen(&self, _conn: &Connection) -> u64 {
        self.durability().committed
    }

    /// Returns once commit number `commit` is on stable storage, flushing the WAL if no one
    /// else is. Call without holding the connection lock, so that others commit meanwhile and
    /// the next flush covers them too.
    fn wait_durable(&self, commit: u64) -> Result<()> {
        let waiting = Instant::now();
        let mut durability = self.durability();
        loop {
            if durability.durable >= commit {
                self.durable_wait.observe(waiting.elapsed());
                return Ok(());
            }
            if durability.flushing {
                durability = self
                    .flushed
                    .wait(durability)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            durability.flushing = true;
            let covered = durability.committed;
            drop(durability);
            // fsync flushes the file's data whichever descriptor asks; the WAL is opened anew
            // each time so that a file SQLite has replaced is never the one flushed. Write
            // access, because some systems refuse to flush a file opened only for reading.
            let flushing = Instant::now();
            let flushed = OpenOptions::new()
                .write(true)
                .open(&self.wal)
                .and_then(|wal| wal.sync_data());
            self.flush_latency.observe(flushing.elapsed());
            durability = self.durability();
            durability.flushing = false;
            if flushed.is_ok() {
                durability.durable = durability.durable.max(covered);
                durability.flushes += 1;
            }
            self.flushed.notify_all();
            flushed.map_err(|err| ServerError::Flush(err.to_string()))?;
        }
    }

    /// Runs `work` on the connection, then returns once what it committed is durable.
    fn write<T>(&self, work: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.lock();
        let value = work(&mut conn)?;
        let commit = self.committed(&conn);
        drop(conn);
        self.wait_durable(commit)?;
        Ok(value)
    }

    /// Runs `work` on the connection, then returns once everything it could have read is
    /// durable.
    fn read<T>(&self, work: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.lock();
        let value = work(&conn)?;
        let seen = self.seen(&conn);
        drop(conn);
        self.wait_durable(seen)?;
        Ok(value)
    }

    /// Flushes of the WAL so far: fewer than commits when commits share them.
    pub fn wal_flushes(&self) -> u64 {
        self.durability().flushes
    }

    /// Writes a consistent copy of the database to `path` (SQLite online backup).
    pub fn backup_to(&self, path: &Path) -> Result<()> {
        create_private(path)?;
        let conn = self.lock();
        let mut target = Connection::open(path)?;
        let backup = rusqlite::backup::Backup::new(&conn, &mut target)?;
        backup.run_to_completion(256, Duration::ZERO, None)?;
        Ok(())
    }

    /// Chunks whose bytes are in the attachment bucket, after `after` in key order, at most
    /// `limit`: what a backup copies in.
    pub fn chunks_in_bucket(
        &self,
        after: Option<&ChunkInBucket>,
        limit: u32,
    ) -> Result<Vec<ChunkInBucket>> {
        self.read(|conn| attachments::chunks_in_bucket(conn, after, limit))
    }

    /// Keeps a chunk's bytes in the database from now on, rather than in the bucket.
    pub fn keep_chunk_bytes(&self, chunk: &ChunkInBucket, bytes: &[u8]) -> Result<()> {
        self.write(|conn| attachments::keep_chunk_bytes(conn, chunk, bytes))
    }
}

/// A chunk whose bytes are in the attachment bucket: its attachment's scope and SHA-256, and
/// its number.
pub type ChunkInBucket = (String, [u8; 32], u32);

/// Creates the file at `path`, if it is missing, readable and writable by its owner only
/// (SQLite would create it 0644 under the usual umask). SQLite gives the WAL and shared-memory
/// files it creates beside a database the database file's permissions. An existing file keeps
/// its own.
fn create_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|err| {
                ServerError::Config(format!("cannot create {}: {err}", path.display()))
            })?;
    }
    Ok(())
}

/// How long a statement waits for another connection's lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Switches the file to write-ahead logging. Changing the journal mode fails at once with
/// `SQLITE_BUSY`, without SQLite's busy handler, when another process holds the file (two
/// processes opening a new file together), so it is retried here for as long as a statement
/// would wait; once the other process has switched the file, the retry finds it switched.
fn enable_wal(conn: &Connection) -> Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
            row.get::<_, String>(0)
        }) {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(err, _))
                if err.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// The first schema version whose servers zero deleted content (`secure_delete`).
const ZEROES_DELETED_CONTENT: i64 = 18;

/// Applies the missing migration steps; returns how many this connection applied.
fn migrate(conn: &mut Connection) -> Result<u32> {
    let mut applied = 0;
    loop {
        // Each step reads the version under the write lock: another process opening the same
        // file at the same moment (an admin command while the server starts) waits for the
        // step in progress and then sees it applied, instead of applying it a second time.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let current = usize::try_from(current).unwrap_or(usize::MAX);
        if current > MIGRATIONS.len() {
            return Err(ServerError::Corrupt(format!(
                "the database has schema version {current}, newer than this server ({})",
                MIGRATIONS.len()
            )));
        }
        let Some(step) = MIGRATIONS.get(current) else {
            return Ok(applied);
        };
        tx.execute_batch(step)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", current + 1))?;
        tx.commit()?;
        applied += 1;
    }
}

fn placeholders(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `?1` the position to read after, `?2` one more than the page (to learn whether more wait),
/// then `extra`, then the scopes.
fn page_params(
    after: i64,
    limit: u32,
    extra: &[rusqlite::types::Value],
    scopes: &[String],
) -> Vec<rusqlite::types::Value> {
    let mut values: Vec<rusqlite::types::Value> = vec![after.into(), (i64::from(limit) + 1).into()];
    values.extend_from_slice(extra);
    values.extend(scopes.iter().map(|s| s.clone().into()));
    values
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Storage for SqliteStorage {
    fn ping(&self) -> Result<()> {
        self.lock()
            .query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?;
        Ok(())
    }

    fn create_user(&self, name: &str, role: Role) -> Result<i64> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO users (name, role, created_at) VALUES (?1, ?2, ?3)",
                params![name, role.as_str(), now_ms()],
            )
            .map_err(|err| {
                if is_unique_violation(&err) {
                    ServerError::Conflict(format!("a user named `{name}` exists"))
                } else {
                    err.into()
                }
            })?;
            Ok(conn.last_insert_rowid())
        })
    }

    fn user_id(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .lock()
            .query_row("SELECT id FROM users WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()?)
    }

    fn count_users(&self) -> Result<u64> {
        Ok(self
            .lock()
            .query_row("SELECT count(*) FROM users", [], |row| row.get::<_, i64>(0))?
            as u64)
    }

    fn create_device(&self, user_id: i64, name: &str) -> Result<i64> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO devices (user_id, name, created_at) VALUES (?1, ?2, ?3)",
                params![user_id, name, now_ms()],
            )?;
            Ok(conn.last_insert_rowid())
        })
    }

    fn revoke_device(&self, device_id: i64) -> Result<bool> {
        let changed = self.write(|conn| {
            Ok(conn.execute(
                "UPDATE devices SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![device_id, now_ms()],
            )?)
        })?;
        Ok(changed > 0)
    }

    fn list_devices(&self) -> Result<Vec<DeviceInfo>> {
        self.read(|conn| identity::devices(conn, None))
    }

    fn sign_in(&self, sign_in: &SignIn<'_>) -> Result<i64> {
        if let Some(id) = self.read(|conn| identity::signed_in_before(conn, sign_in))? {
            return Ok(id);
        }
        self.write(|conn| identity::sign_in(conn, sign_in))
    }

    fn device(&self, device_id: i64) -> Result<Option<DeviceRecord>> {
        self.read(|conn| identity::device(conn, device_id))
    }

    fn devices_of(&self, user_id: i64) -> Result<Vec<DeviceInfo>> {
        self.read(|conn| identity::devices(conn, Some(user_id)))
    }

    fn scopes_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        self.read(|conn| identity::scopes_with_prefix(conn, prefix))
    }

    fn insert_token(
        &self,
        token_id: &str,
        device_id: i64,
        secret_hash: &[u8],
        expires_at: Option<i64>,
    ) -> Result<()> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO tokens (id, device_id, secret_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![token_id, device_id, secret_hash, now_ms(), expires_at],
            )?;
            Ok(())
        })
    }

    fn revoke_token(&self, token_id: &str) -> Result<bool> {
        let changed = self.write(|conn| {
            Ok(conn.execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![token_id, now_ms()],
            )?)
        })?;
        Ok(changed > 0)
    }

    fn token(&self, token_id: &str) -> Result<Option<TokenRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT t.device_id, d.user_id, t.secret_hash, t.expires_at,
                    t.revoked_at IS NOT NULL OR d.revoked_at IS NOT NULL, d.actor, u.role
             FROM tokens t JOIN devices d ON d.id = t.device_id JOIN users u ON u.id = d.user_id
             WHERE t.id = ?1",
        )?;
        let token = stmt
            .query_row([token_id], |row| {
                Ok((
                    TokenRecord {
                        device_id: row.get(0)?,
                        user_id: row.get(1)?,
                        secret_hash: row.get(2)?,
                        expires_at: row.get(3)?,
                        revoked: row.get(4)?,
                        actor: row.get(5)?,
                        role: Role::Member,
                    },
                    row.get::<_, String>(6)?,
                ))
            })
            .optional()?;
        token
            .map(|(token, role)| {
                Ok(TokenRecord {
                    role: Role::parse(&role)
                        .ok_or_else(|| ServerError::Corrupt("unknown user role".into()))?,
                    ..token
                })
            })
            .transpose()
    }

    fn set_grant(&self, user_id: i64, scope: &str, access: Access) -> Result<()> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO grants (user_id, scope, access) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, scope) DO UPDATE SET access = excluded.access",
                params![user_id, scope, access.as_str()],
            )?;
            Ok(())
        })
    }

    fn revoke_grant(&self, user_id: i64, scope: &str) -> Result<bool> {
        let changed = self.write(|conn| {
            Ok(conn.execute(
                "DELETE FROM grants WHERE user_id = ?1 AND scope = ?2",
                params![user_id, scope],
            )?)
        })?;
        Ok(changed > 0)
    }

    fn grants(&self, user_id: i64) -> Result<Vec<Grant>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT scope, access FROM grants WHERE user_id = ?1 ORDER BY scope")?;
        let rows = stmt.query_map([user_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut grants = Vec::new();
        for row in rows {
            let (scope, access) = row?;
            let access = Access::parse(&access)
                .ok_or_else(|| ServerError::Corrupt("unknown grant access".into()))?;
            grants.push(Grant { scope, access });
        }
        Ok(grants)
    }

    fn bind_actor(&self, device_id: i64, actor: &str) -> Result<Option<String>> {
        self.write(|conn| {
            // One transaction under the one connection: no other binding can slip in between
            // the check that the actor is free and the binding.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let bound = bind_in(&tx, device_id, actor)?;
            tx.commit()?;
            Ok(bound)
        })
    }

    fn retired_actor(&self, device_id: i64, actor: &str) -> Result<bool> {
        let conn = self.lock();
        Ok(conn
            .prepare_cached(ACTOR_RETIRED)?
            .query_row(params![device_id, actor], |row| row.get(0))?)
    }

    fn actor_free(&self, device_id: i64, actor: &str) -> Result<bool> {
        let conn = self.lock();
        let taken: bool = conn
            .prepare_cached(ACTOR_TAKEN)?
            .query_row(params![device_id, actor], |row| row.get(0))?;
        Ok(!taken)
    }

    fn release_actor(&self, actor: &str) -> Result<bool> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let released = tx.execute("DELETE FROM device_actors WHERE actor = ?1", [actor])?;
            let unbound = tx.execute(
                "UPDATE devices SET actor = NULL, outbox_seq = NULL WHERE actor = ?1",
                [actor],
            )?;
            tx.commit()?;
            Ok(released + unbound > 0)
        })
    }

    fn stored_records(&self, keys: &[(&str, &str)]) -> Result<Snapshot> {
        // Not served to anyone, so it need not wait for a flush. One read transaction for
        // all the records: outside one, each read begins and ends its own, taking and
        // releasing the WAL's shared-memory locks (system calls) every time.
        let conn = self.lock();
        let tx = conn.unchecked_transaction()?;
        let mark = snapshot_mark(&tx)?;
        let mut records = Vec::with_capacity(keys.len());
        {
            let mut stmt = tx.prepare_cached(SELECT_STORED_RECORD)?;
            for (collection, id) in keys {
                records.push(
                    stmt.query_row(params![collection, id], stored_record)
                        .optional()?,
                );
            }
        }
        tx.commit()?;
        Ok(Snapshot {
            records,
            mark: Some(mark),
        })
    }

    fn push(
        &self,
        device_id: i64,
        batch: &Batch<'_>,
        merge: &mut dyn Merge,
    ) -> Result<PushResponse> {
        // A replayed batch's stored answer, too, goes out only once its commit is durable.
        self.write(|conn| push_pipeline::apply(SqlitePush::begin(conn)?, device_id, batch, merge))
    }

    fn device_sync(&self, device_id: i64) -> Result<DeviceSync> {
        let conn = self.lock();
        let sync = conn
            .prepare_cached(
                "SELECT d.outbox_seq, d.schema_version, h.pruned_through
                 FROM devices d, feed_horizon h WHERE d.id = ?1",
            )?
            .query_row([device_id], |row| {
                Ok(DeviceSync {
                    outbox_seq: row.get(0)?,
                    schema_version: row.get(1)?,
                    feed_pruned_through: row.get(2)?,
                })
            })
            .optional()?;
        Ok(sync.unwrap_or_default())
    }

    fn set_device_schema_version(&self, device_id: i64, version: u32) -> Result<()> {
        self.write(|conn| {
            conn.prepare_cached("UPDATE devices SET schema_version = ?2 WHERE id = ?1")?
                .execute(params![device_id, version])?;
            Ok(())
        })
    }

    fn feed_page(&self, scopes: &[String], after: i64, limit: u32) -> Result<Page<FeedEntry>> {
        self.read(|conn| feed_page_in(conn, None, scopes, after, limit))
    }

    fn feed_page_for(
        &self,
        reader: i64,
        scopes: &[String],
        after: i64,
        limit: u32,
    ) -> Result<Page<FeedEntry>> {
        self.read(|conn| feed_page_in(conn, Some(reader), scopes, after, limit))
    }

    fn feed_head(&self) -> Result<i64> {
        self.read(|conn| {
            Ok(
                // Past the entries pruned, even when every entry was.
                conn.query_row(
                    "SELECT max(coalesce((SELECT max(seq) FROM feed), 0),
                                (SELECT pruned_through FROM feed_horizon))",
                    [],
                    |row| row.get(0),
                )?,
            )
        })
    }

    fn documents_page(
        &self,
        scopes: &[String],
        after: i64,
        up_to: i64,
        limit: u32,
    ) -> Result<Page<DocumentEntry>> {
        self.read(|conn| documents_page_in(conn, scopes, after, up_to, limit))
    }

    fn authors_of(&self, keys: &[(&str, &str)]) -> Result<Vec<Author>> {
        self.read(|conn| authors_in(conn, keys))
    }

    fn record_pull(
        &self,
        device_id: i64,
        records: &[(String, String, String)],
        pending_changes: Option<u64>,
        reached: i64,
    ) -> Result<()> {
        let pending_changes = pending_changes.map(stored_count);
        if records.is_empty() {
            let recent: bool = self.read(|conn| {
                let now = now_ms();
                Ok(conn.query_row(
                    "SELECT coalesce(last_sync_at > ?2 AND (?3 IS NULL
                         OR (pending_changes IS ?3 AND pending_reported_at > ?2))
                         AND (coalesce(feed_position, -1) >= ?4 OR feed_position_at > ?5), 0)
                     FROM devices WHERE id = ?1",
                    params![
                        device_id,
                        now - IDLE_PULL_RECORDED_EVERY_MS,
                        pending_changes,
                        reached,
                        now - FEED_POSITION_RECORDED_EVERY_MS
                    ],
                    |row| row.get(0),
                )?)
            })?;
            if recent {
                return Ok(());
            }
        }
        self.write(|conn| record_pull_in(conn, device_id, records, (pending_changes, reached)))
    }

    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let conn = self.lock();
        if query.record_id.is_some() {
            return audit_of_record(&conn, query);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT a.at, coalesce(u.name, '(server)'), a.device_id, a.action, a.collection, a.record_id, a.scope, a.code,
                    a.detail
             FROM audit a LEFT JOIN users u ON u.id = a.user_id
             WHERE (?1 IS NULL OR u.name = ?1) AND (?2 IS NULL OR a.at >= ?2)
               AND (?4 IS NULL OR a.at < ?4)
             ORDER BY a.id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![query.user, query.since, query.limit, query.until],
            audit_entry,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn audit_line(&self, line: &NewAuditLine<'_>) -> Result<()> {
        self.write(|conn| identity::audit_line(conn, line))
    }

    fn list_users(&self) -> Result<Vec<UserInfo>> {
        self.read(identity::list_users)
    }

    fn group_grants(&self) -> Result<Vec<StoredGroupGrant>> {
        self.read(identity::group_grants)
    }

    fn set_group_grants(&self, grants: &[StoredGroupGrant]) -> Result<()> {
        self.write(|conn| identity::set_group_grants(conn, grants))
    }

    fn records_after(&self, after: Option<(&str, &str)>, limit: u32) -> Result<Vec<ListedRecord>> {
        self.read(|conn| maintenance::records_after(conn, after, limit))
    }

    fn records_in_scope(
        &self,
        collection: &str,
        scope: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<RecordValues>> {
        self.read(|conn| maintenance::records_in_scope(conn, (collection, scope), after, limit))
    }

    fn feed_changes_of(&self, collection: &str, id: &str) -> Result<Vec<Vec<u8>>> {
        self.read(|conn| maintenance::feed_changes_of(conn, collection, id))
    }

    fn rewrite_record(
        &self,
        key: (&str, &str),
        version: i64,
        record: &MergedRecord,
        action: &str,
    ) -> Result<bool> {
        self.write(|conn| maintenance::rewrite_record(conn, key, version, record, action))
    }

    fn erase_record(&self, key: (&str, &str), version: i64, epoch: &NewEpoch) -> Result<bool> {
        self.write(|conn| maintenance::erase_record(conn, key, version, epoch))
    }

    fn records_aged(
        &self,
        key: (&str, &str),
        before: i64,
        after: &str,
        limit: u32,
    ) -> Result<Vec<RecordValues>> {
        self.read(|conn| retention::records_aged(conn, key, before, after, limit))
    }

    fn set_retention_policy(&self, policy: &RetentionPolicy) -> Result<()> {
        self.write(|conn| retention::set_policy(conn, policy))
    }

    fn retention_policies(&self) -> Result<Vec<RetentionPolicy>> {
        self.read(retention::policies)
    }

    fn remove_retention_policy(&self, collection: &str) -> Result<bool> {
        self.write(|conn| retention::remove_policy(conn, collection))
    }

    fn feed_read_by_all(&self, active_since: i64) -> Result<i64> {
        self.read(|conn| pruning::feed_read_by_all(conn, active_since))
    }

    fn prune_feed(&self, through: i64, answers_before: i64) -> Result<Pruned> {
        self.write(|conn| pruning::prune_feed(conn, through, answers_before))
    }

    fn prune_audit(&self, before: i64, by: i64) -> Result<u64> {
        self.write(|conn| pruning::prune_audit(conn, before, by))
    }

    fn scrub(&self) -> Result<bool> {
        self.write(|conn| maintenance::scrub(conn))
    }

    fn attachment(&self, scope: &str, sha256: &[u8; 32]) -> Result<Option<AttachmentState>> {
        self.read(|conn| attachments::attachment(conn, scope, sha256))
    }

    fn put_attachment_chunk(
        &self,
        scope: &str,
        sha256: &[u8; 32],
        size: u64,
        chunk: u32,
        bytes: Option<&[u8]>,
    ) -> Result<ChunkStored> {
        self.write(|conn| attachments::put_chunk(conn, (scope, sha256), size, chunk, bytes))
    }

    fn attachment_chunk(
        &self,
        scope: &str,
        sha256: &[u8; 32],
        chunk: u32,
    ) -> Result<Option<StoredChunk>> {
        self.read(|conn| attachments::chunk(conn, scope, sha256, chunk))
    }

    fn complete_attachment(&self, scope: &str, sha256: &[u8; 32]) -> Result<()> {
        self.write(|conn| attachments::complete(conn, scope, sha256))
    }

    fn delete_attachment(&self, scope: &str, sha256: &[u8; 32]) -> Result<bool> {
        self.write(|conn| attachments::delete(conn, scope, sha256))
    }

    fn attachments_after(
        &self,
        after: Option<(&str, &[u8; 32])>,
        limit: u32,
    ) -> Result<Vec<ListedAttachment>> {
        self.read(|conn| attachments::after(conn, after, limit))
    }

    fn create_webhook(&self, url: &str, secret: &str, user_id: i64, cursor: i64) -> Result<i64> {
        self.write(|conn| webhooks::create(conn, (url, secret), user_id, cursor))
    }

    fn webhooks(&self) -> Result<Vec<Webhook>> {
        self.read(webhooks::list)
    }

    fn delete_webhook(&self, id: i64) -> Result<bool> {
        self.write(|conn| webhooks::delete(conn, id))
    }

    fn lease_webhook(&self, id: i64, now: i64, until: i64) -> Result<bool> {
        self.write(|conn| webhooks::lease(conn, id, now, until))
    }

    fn end_webhook_delivery(&self, id: i64, delivery: &Delivery, now: i64) -> Result<()> {
        self.write(|conn| webhooks::end_delivery(conn, id, delivery, now))
    }

    fn schema_version(&self) -> Result<u32> {
        let conn = self.lock();
        let version: Option<u32> = conn
            .prepare_cached("SELECT max(version) FROM schemas")?
            .query_row([], |row| row.get(0))?;
        Ok(version.unwrap_or(0))
    }

    fn current_schema(&self) -> Result<Option<StoredSchema>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT version, schema, set_at FROM schemas ORDER BY version DESC LIMIT 1",
        )?;
        Ok(stmt.query_row([], stored_schema).optional()?)
    }

    fn schema_history(&self) -> Result<Vec<StoredSchema>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT version, schema, set_at FROM schemas ORDER BY version")?;
        let rows = stmt.query_map([], stored_schema)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_schema(&self, version: u32, schema_json: &str) -> Result<bool> {
        self.write(|conn| {
            let added = conn.execute(
                "INSERT INTO schemas (version, schema, set_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (version) DO NOTHING",
                params![version, schema_json, now_ms()],
            )?;
            Ok(added == 1)
        })
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.flush_latency.register(
            registry,
            "fieldsync_wal_flush_seconds",
            "flushes of the SQLite WAL (fsync), which make commits durable",
        );
        self.durable_wait.register(
            registry,
            "fieldsync_durable_wait_seconds",
            "waits of requests for a flush covering their commit or what they read",
        );
    }

    fn feed_lag(&self, active_since: i64) -> Result<Vec<(String, i64)>> {
        self.read(|conn| pruning::feed_lag(conn, active_since))
    }

    fn active_devices(&self, since: i64) -> Result<u64> {
        let count: i64 = self.lock().query_row(
            "SELECT count(*) FROM devices WHERE last_sync_at >= ?1 AND revoked_at IS NULL",
            [since],
            |row| row.get(0),
        )?;
        Ok(count as u64)
    }
}

/// A record's stored state by collection (`?1`) and id (`?2`), as [`stored_record`] reads it.
const SELECT_STORED_RECORD: &str = "SELECT scope, doc, fields, deleted, lineage, updated_seq, epoch
     FROM records WHERE collection = ?1 AND id = ?2";

/// What `conn` sees now: rows it changed (completed statements count even if rolled back,
/// which only makes a snapshot look stale) and commits by other connections (another
/// process on the same file, which nothing else here expects but this must not miss).
fn snapshot_mark(conn: &Connection) -> Result<SnapshotMark> {
    Ok(SnapshotMark {
        changes: conn.total_changes(),
        others: conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |row| row.get(0))?,
    })
}

fn stored_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    Ok(StoredRecord {
        scope: row.get(0)?,
        doc: row.get(1)?,
        fields_json: row.get(2)?,
        deleted: row.get(3)?,
        lineage: row.get_ref(4)?.as_blob_or_null()?.and_then(Lineage::decode),
        version: Some(row.get(5)?),
        epoch: super::listed_epoch(row.get(6)?),
    })
}

/// A record's (`?2`) audit lines in block `?1`, as [`audit_entry`] reads them, newest first:
/// by user name `?3`, from time `?4` and before time `?6` when not null, at most `?5`.
const AUDIT_OF_RECORD_IN_BLOCK: &str =
    "SELECT a.at, coalesce(u.name, '(server)'), a.device_id, a.action, a.collection, a.record_id, a.scope, a.code,
                    a.detail
     FROM audit a INDEXED BY audit_by_record_in_blocks LEFT JOIN users u ON u.id = a.user_id
     WHERE (a.id >> 12) = ?1 AND a.record_id = ?2
       AND (?3 IS NULL OR u.name = ?3) AND (?4 IS NULL OR a.at >= ?4)
       AND (?6 IS NULL OR a.at < ?6)
     ORDER BY a.id DESC LIMIT ?5";

/// Looks for the record's lines block by block, newest first, until the limit is reached: one
/// index search per block (a few thousand for millions of lines), which keeps the index cheap
/// to write (see migration 6).
fn audit_of_record(conn: &Connection, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
    let (oldest, newest): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(id), max(id) FROM audit", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    let (Some(oldest), Some(newest)) = (oldest, newest) else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(AUDIT_OF_RECORD_IN_BLOCK)?;
    let mut entries = Vec::new();
    let mut block = newest >> AUDIT_BLOCK_BITS;
    while block >= oldest >> AUDIT_BLOCK_BITS && entries.len() < query.limit as usize {
        let left = query.limit as usize - entries.len();
        let rows = stmt.query_map(
            params![
                block,
                query.record_id,
                query.user,
                query.since,
                left as i64,
                query.until
            ],
            audit_entry,
        )?;
        for row in rows {
            entries.push(row?);
        }
        block -= 1;
    }
    Ok(entries)
}

fn stored_schema(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSchema> {
    Ok(StoredSchema {
        version: row.get(0)?,
        schema_json: row.get(1)?,
        set_at: row.get(2)?,
    })
}

fn audit_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        at: row.get(0)?,
        user: row.get(1)?,
        device_id: row.get(2)?,
        action: row.get(3)?,
        collection: row.get(4)?,
        record_id: row.get(5)?,
        scope: row.get(6)?,
        code: row.get(7)?,
        detail: row.get(8)?,
    })
}

#[cfg(test)]
mod tests;
