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

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fieldsync_record::protocol::{PushResponse, PushResult};
use fieldsync_sqlite::Checkpointer;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};

use super::{
    Access, AttachmentState, AuditEntry, AuditQuery, Batch, ChunkStored, Delivery, DeviceInfo,
    DeviceRecord, DeviceSync, DocumentEntry, FeedEntry, Grant, IDLE_PULL_RECORDED_EVERY_MS,
    Lineage, ListedAttachment, ListedRecord, Merge, MergedRecord, NewAuditLine, Page, RecordValues,
    Result, Role, SignIn, Snapshot, SnapshotMark, Storage, StoredChunk, StoredGroupGrant,
    StoredRecord, StoredSchema, StoredVersion, TokenRecord, UserInfo, Webhook,
    actor_taken_meanwhile, audited_name, decode_changes, encode_changes, now_ms, replayed,
    stored_count,
};
use crate::error::ServerError;
use crate::metrics::Histogram;

mod attachments;
mod identity;
mod maintenance;
mod webhooks;

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
    flush_latency: Histogram,
    /// How long each request waited for its commit (or what it read) to be flushed.
    durable_wait: Histogram,
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
        // back to the file system; a server can afford 64 MiB.
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536;",
        )?;
        let migrations_applied = migrate(&mut conn)?;
        // From here on, commits are flushed by `wait_durable`, in groups.
        conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        let checkpointer = {
            let path = path.to_owned();
            Checkpointer::start(&mut conn, move || {
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
            flush_latency: Histogram::default(),
            durable_wait: Histogram::default(),
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
        self.write(|conn| push_in(conn, device_id, batch, merge))
    }

    fn device_sync(&self, device_id: i64) -> Result<DeviceSync> {
        let conn = self.lock();
        let sync = conn
            .prepare_cached("SELECT outbox_seq, schema_version FROM devices WHERE id = ?1")?
            .query_row([device_id], |row| {
                Ok(DeviceSync {
                    outbox_seq: row.get(0)?,
                    schema_version: row.get(1)?,
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
                conn.query_row("SELECT coalesce(max(seq), 0) FROM feed", [], |row| {
                    row.get(0)
                })?,
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

    fn record_pull(
        &self,
        device_id: i64,
        records: &[(String, String, String)],
        pending_changes: Option<u64>,
    ) -> Result<()> {
        let pending_changes = pending_changes.map(stored_count);
        if records.is_empty() {
            let recent: bool = self.read(|conn| {
                Ok(conn.query_row(
                    "SELECT coalesce(last_sync_at > ?2 AND (?3 IS NULL
                         OR (pending_changes IS ?3 AND pending_reported_at > ?2)), 0)
                     FROM devices WHERE id = ?1",
                    params![
                        device_id,
                        now_ms() - IDLE_PULL_RECORDED_EVERY_MS,
                        pending_changes
                    ],
                    |row| row.get(0),
                )?)
            })?;
            if recent {
                return Ok(());
            }
        }
        self.write(|conn| record_pull_in(conn, device_id, records, pending_changes))
    }

    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let conn = self.lock();
        if query.record_id.is_some() {
            return audit_of_record(&conn, query);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT a.at, coalesce(u.name, '(server)'), a.device_id, a.action, a.collection, a.record_id, a.scope, a.code
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

    fn render_metrics(&self, out: &mut String) {
        self.flush_latency.render(
            out,
            "fieldsync_wal_flush_seconds",
            "flushes of the SQLite WAL (fsync), which make commits durable",
        );
        self.durable_wait.render(
            out,
            "fieldsync_durable_wait_seconds",
            "waits of requests for a flush covering their commit or what they read",
        );
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
const SELECT_STORED_RECORD: &str = "SELECT scope, doc, fields, deleted, lineage, updated_seq
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
    })
}

/// A record's (`?2`) audit lines in block `?1`, as [`audit_entry`] reads them, newest first:
/// by user name `?3`, from time `?4` and before time `?6` when not null, at most `?5`.
const AUDIT_OF_RECORD_IN_BLOCK: &str =
    "SELECT a.at, coalesce(u.name, '(server)'), a.device_id, a.action, a.collection, a.record_id, a.scope, a.code
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
    })
}

fn push_in(
    conn: &mut Connection,
    device_id: i64,
    batch: &Batch<'_>,
    merge: &mut dyn Merge,
) -> Result<PushResponse> {
    let records = batch.records;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Nothing changed since the merges' snapshot was read: its states are the stored ones.
    let unchanged = match merge.snapshot_mark() {
        Some(mark) => snapshot_mark(&tx)? == mark,
        None => false,
    };
    let replay = tx
        .query_row(
            "SELECT response, body_hash FROM push_batches WHERE device_id = ?1 AND batch_id = ?2",
            params![device_id, batch.id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    if let Some(stored) = replay {
        return replayed(batch, stored);
    }
    let user_id: i64 = tx.query_row(
        "SELECT user_id FROM devices WHERE id = ?1",
        [device_id],
        |row| row.get(0),
    )?;
    let now = now_ms();
    let mut results = Vec::with_capacity(records.len());
    let mut written: HashSet<(&str, &str)> = HashSet::new();
    for record in records {
        let key = (record.collection.as_str(), record.id.as_str());
        let now_stored = if written.contains(&key) {
            StoredVersion::ThisPush
        } else if unchanged {
            StoredVersion::Current
        } else {
            tx.prepare_cached("SELECT updated_seq FROM records WHERE collection = ?1 AND id = ?2")?
                .query_row(params![record.collection, record.id], |row| row.get(0))
                .optional()?
                .map_or(StoredVersion::Absent, StoredVersion::Written)
        };
        let outcome = match merge.merged_ahead(record, now_stored) {
            Some(outcome) => outcome,
            None => {
                let stored = tx
                    .prepare_cached(SELECT_STORED_RECORD)?
                    .query_row(params![record.collection, record.id], stored_record)
                    .optional()?;
                merge.merge(record, stored)
            }
        };
        let rejected = match outcome {
            Err(rejection) => {
                tx.prepare_cached(
                        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope, code)
                         VALUES (?1, ?2, ?3, 'refuse', ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        now,
                        user_id,
                        device_id,
                        audited_name(&record.collection),
                        audited_name(&record.id),
                        audited_name(&record.scope),
                        rejection.code.as_str()
                    ])?;
                Some(rejection)
            }
            Ok(merged) if merged.new_changes.is_empty() => None,
            Ok(merged) => {
                written.insert(key);
                tx.prepare_cached(
                        "INSERT INTO feed (collection, record_id, scope, device_id, changes, committed_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        record.collection,
                        record.id,
                        record.scope,
                        device_id,
                        encode_changes(&merged.new_changes),
                        now
                    ])?;
                let seq = tx.last_insert_rowid();
                tx.prepare_cached(
                    "INSERT INTO records (collection, id, scope, doc, fields, deleted, updated_seq, lineage, created_seq)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7)
                         ON CONFLICT (collection, id) DO UPDATE SET doc = excluded.doc,
                             fields = excluded.fields, deleted = excluded.deleted,
                             updated_seq = excluded.updated_seq, lineage = excluded.lineage",
                )?
                .execute(params![
                    record.collection,
                    record.id,
                    record.scope,
                    merged.doc,
                    merged.fields_json,
                    merged.deleted,
                    seq,
                    merged.lineage.encode()
                ])?;
                tx.prepare_cached(
                        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope)
                         VALUES (?1, ?2, ?3, 'push', ?4, ?5, ?6)",
                    )?
                    .execute(params![now, user_id, device_id, record.collection, record.id, record.scope])?;
                None
            }
        };
        results.push(PushResult {
            collection: record.collection.clone(),
            id: record.id.clone(),
            rejected,
        });
    }
    if let Some(actor) = batch.binds.filter(|_| !written.is_empty())
        && bind_in(&tx, device_id, actor)?.as_deref() != Some(actor)
    {
        return Err(actor_taken_meanwhile());
    }
    let response = PushResponse { results };
    let stored = rmp_serde::to_vec_named(&response).expect("responses always serialize");
    tx.execute(
        "INSERT INTO push_batches (device_id, batch_id, response, created_at, body_hash)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        params![device_id, batch.id, stored, now, batch.hash.as_slice()],
    )?;
    tx.execute(
        "UPDATE devices SET last_sync_at = ?2,
             outbox_seq = CASE WHEN ?3 IS NULL THEN outbox_seq
                               ELSE max(coalesce(outbox_seq, ?3), ?3) END,
             pending_changes = coalesce(?4, pending_changes),
             pending_reported_at = CASE WHEN ?4 IS NULL THEN pending_reported_at ELSE ?2 END
         WHERE id = ?1",
        params![
            device_id,
            now,
            batch.outbox_seq,
            batch.pending_changes.map(stored_count)
        ],
    )?;
    tx.commit()?;
    Ok(response)
}

/// Whether device `?1` may not take actor `?2`: another device that is not revoked has pushed
/// as it, now or before, or the device itself did before its current actor.
/// Binds `actor` to the device unless it is taken ([`ACTOR_TAKEN`]); returns the device's
/// actor after. Under the caller's write transaction.
fn bind_in(tx: &Connection, device_id: i64, actor: &str) -> Result<Option<String>> {
    let taken: bool = tx
        .prepare_cached(ACTOR_TAKEN)?
        .query_row(params![device_id, actor], |row| row.get(0))?;
    if !taken {
        tx.execute(
            "INSERT INTO device_actors (actor, device_id) VALUES (?2, ?1)
             ON CONFLICT (actor) DO UPDATE SET device_id = excluded.device_id",
            params![device_id, actor],
        )?;
        // A new actor starts its outbox positions over (see `device_sync`).
        tx.execute(
            "UPDATE devices SET actor = ?2,
                 outbox_seq = CASE WHEN actor IS ?2 THEN outbox_seq END
             WHERE id = ?1",
            params![device_id, actor],
        )?;
    }
    Ok(tx.query_row(
        "SELECT actor FROM devices WHERE id = ?1",
        [device_id],
        |row| row.get(0),
    )?)
}

const ACTOR_TAKEN: &str =
    "SELECT EXISTS (SELECT 1 FROM device_actors a JOIN devices d ON d.id = a.device_id
                    WHERE a.actor = ?2 AND a.device_id <> ?1 AND d.revoked_at IS NULL)
         OR EXISTS (SELECT 1 FROM devices WHERE actor = ?2 AND id <> ?1 AND revoked_at IS NULL)
         OR EXISTS (SELECT 1 FROM device_actors a JOIN devices d ON d.id = a.device_id
                    WHERE a.actor = ?2 AND a.device_id = ?1 AND d.actor IS NOT ?2)";

/// Whether device `?1` pushed as `?2` before its current actor.
const ACTOR_RETIRED: &str =
    "SELECT EXISTS (SELECT 1 FROM device_actors a JOIN devices d ON d.id = a.device_id
                    WHERE a.actor = ?2 AND a.device_id = ?1 AND d.actor IS NOT ?2)";

/// Feed entries after `?1` in `scopes` scopes (`?4`…), in order, at most `?2`; the second
/// column says whether device `?3` (or none, if null) pushed the entry, which then comes
/// without its changes and finds no record to join. The join's key is null for such an entry
/// so that SQLite skips the record lookup (a condition on the entry alone is only tested after
/// it): the pull after a device's push reads mostly its own entries.
fn feed_page_sql(scopes: usize) -> String {
    format!(
        "SELECT f.seq, f.device_id IS ?3, f.collection, f.record_id, f.scope, f.device_id,
                CASE WHEN f.device_id IS NOT ?3 THEN f.changes END, r.fields, r.deleted,
                f.committed_at
         FROM feed f INDEXED BY feed_by_seq_scope
         LEFT JOIN records r
           ON r.collection = CASE WHEN f.device_id IS NOT ?3 THEN f.collection END
              AND r.id = f.record_id AND r.updated_seq = f.seq
         WHERE f.seq > ?1 AND f.scope IN ({}) ORDER BY f.seq LIMIT ?2",
        placeholders(4, scopes)
    )
}

/// Records created after position `?1` and up to `?3` in `scopes` scopes (`?4`…), in that
/// order, at most `?2`.
fn documents_page_sql(scopes: usize) -> String {
    format!(
        "SELECT created_seq, updated_seq, collection, id, scope, doc, fields, deleted
         FROM records INDEXED BY records_by_creation_scope
         WHERE created_seq > ?1 AND created_seq <= ?3 AND scope IN ({})
         ORDER BY created_seq LIMIT ?2",
        placeholders(4, scopes)
    )
}

fn feed_page_in(
    conn: &Connection,
    reader: Option<i64>,
    scopes: &[String],
    after: i64,
    limit: u32,
) -> Result<Page<FeedEntry>> {
    if scopes.is_empty() {
        return Ok(Page::empty(after));
    }
    let mut stmt = conn.prepare_cached(&feed_page_sql(scopes.len()))?;
    let reader = reader.map_or(rusqlite::types::Value::Null, Into::into);
    let values = page_params(after, limit, &[reader], scopes);
    let mut rows = stmt.query(params_from_iter(values))?;
    let mut read = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        if row.get::<_, bool>(1)? {
            read.push((seq, None));
            continue;
        }
        let latest = match row.get::<_, Option<String>>(7)? {
            Some(fields) => Some((fields, row.get::<_, Option<bool>>(8)?.unwrap_or(false))),
            None => None,
        };
        read.push((
            seq,
            Some(FeedEntry {
                seq,
                collection: row.get(2)?,
                record_id: row.get(3)?,
                scope: row.get(4)?,
                device_id: row.get(5)?,
                changes: decode_changes(&row.get::<_, Vec<u8>>(6)?)?,
                latest,
                committed_at: row.get(9)?,
            }),
        ));
    }
    Ok(Page::from_rows_leaving_out(read, after, limit))
}

fn documents_page_in(
    conn: &Connection,
    scopes: &[String],
    after: i64,
    up_to: i64,
    limit: u32,
) -> Result<Page<DocumentEntry>> {
    if scopes.is_empty() {
        return Ok(Page::empty(after));
    }
    let mut stmt = conn.prepare_cached(&documents_page_sql(scopes.len()))?;
    let values = page_params(after, limit, &[up_to.into()], scopes);
    let rows = stmt.query_map(params_from_iter(values), |row| {
        Ok(DocumentEntry {
            created_seq: row.get(0)?,
            seq: row.get(1)?,
            collection: row.get(2)?,
            record_id: row.get(3)?,
            scope: row.get(4)?,
            doc: row.get(5)?,
            fields_json: row.get(6)?,
            deleted: row.get(7)?,
        })
    })?;
    let entries = rows.collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(entries, after, limit, |e| e.created_seq))
}

fn record_pull_in(
    conn: &mut Connection,
    device_id: i64,
    records: &[(String, String, String)],
    pending_changes: Option<i64>,
) -> Result<()> {
    let tx = conn.transaction()?;
    let now = now_ms();
    let user_id: i64 = tx.query_row(
        "SELECT user_id FROM devices WHERE id = ?1",
        [device_id],
        |row| row.get(0),
    )?;
    for (collection, record_id, scope) in records {
        tx.prepare_cached(
            "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope)
                 VALUES (?1, ?2, ?3, 'pull', ?4, ?5, ?6)",
        )?
        .execute(params![
            now, user_id, device_id, collection, record_id, scope
        ])?;
    }
    tx.execute(
        "UPDATE devices SET last_sync_at = ?2,
             pending_changes = coalesce(?3, pending_changes),
             pending_reported_at = CASE WHEN ?3 IS NULL THEN pending_reported_at ELSE ?2 END
         WHERE id = ?1",
        params![device_id, now, pending_changes],
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_s_audit_lines_are_read_from_the_block_index_without_sorting() {
        assert!(AUDIT_OF_RECORD_IN_BLOCK.contains(&format!("(a.id >> {AUDIT_BLOCK_BITS})")));
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
        let conn = storage.lock();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {AUDIT_OF_RECORD_IN_BLOCK}"))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map(params![0, "r", "ada", 0, 10, 1], |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(
            plan.contains("USING INDEX audit_by_record_in_blocks (<expr>=? AND record_id=?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    #[test]
    fn records_stored_before_creation_positions_are_paged_by_their_last_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        {
            let conn = Connection::open(&path).unwrap();
            for (version, step) in MIGRATIONS[..6].iter().enumerate() {
                conn.execute_batch(step).unwrap();
                conn.pragma_update(None, "user_version", version as i64 + 1)
                    .unwrap();
            }
            for (id, seq) in [("late", 9), ("early", 4)] {
                conn.execute(
                    "INSERT INTO records (collection, id, scope, doc, fields, deleted, updated_seq)
                     VALUES ('clients', ?1, 'north', x'00', '{}', 0, ?2)",
                    params![id, seq],
                )
                .unwrap();
            }
        }
        let storage = SqliteStorage::open(&path).unwrap();
        let page = storage
            .documents_page(&["north".into()], 0, i64::MAX, 10)
            .unwrap();
        let read: Vec<(&str, i64, i64)> = page
            .entries
            .iter()
            .map(|e| (e.record_id.as_str(), e.created_seq, e.seq))
            .collect();
        assert_eq!(read, [("early", 4, 4), ("late", 9, 9)]);
    }

    #[test]
    fn pages_walk_positions_in_order_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
        let conn = storage.lock();
        let feed = (
            feed_page_sql(3),
            params![0, 101, 7, "a", "b", "c"],
            "feed_by_seq_scope",
        );
        let documents = (
            documents_page_sql(3),
            params![0, 101, 1000, "a", "b", "c"],
            "records_by_creation_scope",
        );
        for (sql, params, index) in [feed, documents] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map(params, |row| row.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains(index), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "a page sorts: {plan}");
        }
        // The feed's join finds each record by its key, and skips the search when the key is
        // null (the reader's own entries): the program tests the key's register before seeking.
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", feed_page_sql(1)))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map(params![0, 101, 7, "a"], |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("SEARCH r USING INDEX sqlite_autoindex_records_1")),
            "{plan:?}"
        );
        let records_index: i64 = conn
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 'sqlite_autoindex_records_1'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN {}", feed_page_sql(1)))
            .unwrap();
        let program: Vec<(String, i64, i64, i64)> = stmt
            .query_map(params![0, 101, 7, "a"], |row| {
                Ok((row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let cursor = program
            .iter()
            .find(|(op, _, root, _)| op == "OpenRead" && *root == records_index)
            .map(|(_, cursor, _, _)| *cursor)
            .expect("the records index is opened");
        let seek = program
            .iter()
            .position(|(op, p1, _, _)| op.starts_with("Seek") && *p1 == cursor)
            .expect("the records index is searched");
        let key = program[seek].3;
        assert!(
            program[..seek]
                .iter()
                .any(|(op, register, _, _)| op == "IsNull" && *register == key),
            "no test of the key before the search: {program:?}"
        );
    }

    #[test]
    fn a_snapshot_mark_moves_with_every_change_to_the_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let storage = SqliteStorage::open(&path).unwrap();
        let mark = || snapshot_mark(&storage.lock()).unwrap();
        let first = mark();
        storage
            .lock()
            .query_row("SELECT count(*) FROM records", [], |row| {
                row.get::<_, i64>(0)
            })
            .unwrap();
        assert_eq!(mark(), first, "a read changes nothing");

        storage.create_user("ada", Role::Member).unwrap();
        let own = mark();
        assert_ne!(own, first, "a change through the storage");

        // Nothing expects another process to write the file, but a write must not go unseen.
        let other = Connection::open(&path).unwrap();
        other
            .execute(
                "INSERT INTO users (name, role, created_at) VALUES ('bo', 'member', 0)",
                [],
            )
            .unwrap();
        let others = mark();
        assert_ne!(others, own, "a commit by another connection");

        // The checkpoint thread's kind. (One that resets the WAL moves the mark, which only
        // costs the next push a look at the versions.)
        other
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .unwrap();
        assert_eq!(mark(), others, "a passive checkpoint changes no data");
    }

    #[test]
    fn one_flush_covers_every_commit_made_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
        let before = storage.wal_flushes();

        // Three commits that nobody has waited for yet, as concurrent pushes leave them.
        let last = {
            let conn = storage.lock();
            let mut last = 0;
            for name in ["ada", "bob", "carol"] {
                conn.execute(
                    "INSERT INTO users (name, role, created_at) VALUES (?1, 'member', 0)",
                    [name],
                )
                .unwrap();
                last = storage.committed(&conn);
            }
            last
        };
        storage.wait_durable(last).unwrap();
        assert_eq!(storage.wal_flushes(), before + 1);
        // Earlier commits are covered by that flush: no more flushing for them.
        storage.wait_durable(last - 2).unwrap();
        assert_eq!(storage.wal_flushes(), before + 1);

        // A read that saw only durable commits does not flush; a write does.
        storage.feed_page(&["north".into()], 0, 10).unwrap();
        assert_eq!(storage.wal_flushes(), before + 1);
        storage.create_user("dave", Role::Member).unwrap();
        assert_eq!(storage.wal_flushes(), before + 2);
    }

    #[test]
    fn a_pull_that_brought_nothing_soon_after_a_sync_commits_and_flushes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
        let user = storage.create_user("ada", Role::Member).unwrap();
        let device = storage.create_device(user, "phone").unwrap();
        storage.record_pull(device, &[], Some(0)).unwrap();
        let before = storage.wal_flushes();
        // Saying the same count of pending changes as before changes nothing either.
        storage.record_pull(device, &[], Some(0)).unwrap();
        assert_eq!(storage.wal_flushes(), before);
        storage
            .record_pull(device, &[("c".into(), "r".into(), "s".into())], None)
            .unwrap();
        assert_eq!(storage.wal_flushes(), before + 1);
    }

    #[test]
    fn a_database_of_any_earlier_version_upgrades_to_a_new_one_s_schema_keeping_its_devices() {
        /// Every table, index and trigger of a file, as created.
        fn schema_of(path: &Path) -> Vec<(String, String, Option<String>)> {
            let conn = Connection::open(path).unwrap();
            let mut stmt = conn
                .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
                .unwrap();
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)));
            rows.unwrap().collect::<rusqlite::Result<_>>().unwrap()
        }

        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.db");
        drop(SqliteStorage::open(&fresh).unwrap());
        for version in 1..MIGRATIONS.len() {
            let old = dir.path().join(format!("version-{version}.db"));
            {
                let conn = Connection::open(&old).unwrap();
                for step in &MIGRATIONS[..version] {
                    conn.execute_batch(step).unwrap();
                }
                conn.pragma_update(None, "user_version", version as i64)
                    .unwrap();
                conn.execute_batch(
                    "INSERT INTO users (name, role, created_at) VALUES ('ada', 'member', 0);
                     INSERT INTO devices (user_id, name, created_at, last_sync_at)
                         VALUES (1, 'phone', 0, 5);",
                )
                .unwrap();
            }
            let upgraded = SqliteStorage::open(&old).unwrap();
            assert_eq!(
                upgraded.migrations_applied() as usize,
                MIGRATIONS.len() - version
            );
            let phone = upgraded.list_devices().unwrap().remove(0);
            let said = (phone.pending_changes, phone.pending_reported_at);
            assert_eq!(
                (phone.last_sync_at, said),
                (Some(5), (None, None)),
                "from version {version}: a device has said nothing of its outbox yet"
            );
            drop(upgraded);
            assert_eq!(schema_of(&old), schema_of(&fresh), "from version {version}");
        }
    }
}
