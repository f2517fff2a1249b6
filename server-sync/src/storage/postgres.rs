//! PostgreSQL, for several stateless server instances over one database.
//!
//! The guarantees are the embedded backend's; what SQLite gets from one connection behind a
//! mutex, this backend gets from transaction-level advisory locks, each released when its
//! transaction ends (commit, rollback or a dropped connection):
//!
//! - **The feed lock** makes feed positions visible in order. A push merges its records first,
//!   then takes the lock, takes its feed positions from the identity column and commits while
//!   still holding it. A position is therefore never visible before a smaller one, and a
//!   reader that has seen position 11 has seen 10 (or 10 was rolled back and never will be
//!   seen). Without the lock, a transaction could take 10, another take 11 and commit first,
//!   and a reader moving its cursor to 11 would skip 10 forever. Only the feed and record
//!   writes (one statement each) and the commit run under the lock; the Automerge merges, the
//!   slow part, and the other writes come before it.
//! - **Record locks** (by a stable hash of collection and id, taken in sorted order so that two
//!   pushes never wait on each other in a cycle) make two pushes to the same record merge one
//!   after the other: the second sees the first's document, so both survive.
//! - **The device lock** makes one device's pushes take turns, so a batch replayed through
//!   another instance while the first attempt is in flight waits and gets the stored answer.
//! - **The actor lock** makes actor bindings take turns, so two devices can never both bind
//!   one actor.
//!
//! Migrations (`migrations/postgres/`) run at open in one transaction under their own lock, so
//! instances starting at once migrate once.

use std::collections::HashMap;
use std::time::Duration;

use fieldsync_record::protocol::{Author, PushRecord, PushResponse};
use postgres::error::SqlState;
use postgres::{Client, NoTls, Transaction};
use r2d2_postgres::PostgresConnectionManager;

use super::{
    Access, AttachmentState, AuditEntry, AuditQuery, Batch, ChunkStored, Delivery, DeviceInfo,
    DeviceRecord, DeviceSync, DocumentEntry, FEED_POSITION_RECORDED_EVERY_MS, FeedEntry, Grant,
    IDLE_PULL_RECORDED_EVERY_MS, Lineage, ListedAttachment, ListedRecord, Merge, MergedRecord,
    NewAuditLine, NewEpoch, Page, Pruned, RecordValues, Result, RetentionPolicy, Role, SignIn,
    Snapshot, Storage, StoredChunk, StoredGroupGrant, StoredRecord, StoredSchema, TokenRecord,
    UserInfo, Webhook, decode_changes, now_ms, push_pipeline, stored_count,
};
use crate::error::ServerError;

mod attachments;
mod identity;
mod maintenance;
mod pruning;
mod push;
mod retention;

use push::{ACTOR_RETIRED, ACTOR_TAKEN, PostgresPush, bind_in};
mod webhooks;

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/001_init.sql"),
    include_str!("migrations/postgres/002_record_lineage.sql"),
    include_str!("migrations/postgres/003_lineage_follows_doc.sql"),
    include_str!("migrations/postgres/004_first_syncs_by_creation.sql"),
    include_str!("migrations/postgres/005_schemas.sql"),
    include_str!("migrations/postgres/006_audit_refusals.sql"),
    include_str!("migrations/postgres/007_restored_devices.sql"),
    include_str!("migrations/postgres/008_device_actors.sql"),
    include_str!("migrations/postgres/009_device_schema_versions.sql"),
    include_str!("migrations/postgres/010_identity.sql"),
    include_str!("migrations/postgres/011_attachments.sql"),
    include_str!("migrations/postgres/012_chunks_in_a_bucket.sql"),
    include_str!("migrations/postgres/013_pending_changes.sql"),
    include_str!("migrations/postgres/014_back_office.sql"),
    include_str!("migrations/postgres/015_erasure.sql"),
    include_str!("migrations/postgres/016_retention.sql"),
    include_str!("migrations/postgres/017_pruning.sql"),
    include_str!("migrations/postgres/018_record_writers.sql"),
];

/// The first key of every advisory lock this backend takes ("FS" and a class), so that its
/// locks stay apart from any other application's on the same database.
const LOCK_MIGRATIONS: i32 = 0x4653_0001;
const LOCK_FEED: i32 = 0x4653_0002;
const LOCK_DEVICE: i32 = 0x4653_0003;
const LOCK_RECORD: i32 = 0x4653_0004;
const LOCK_ACTOR: i32 = 0x4653_0005;

/// How long a request waits for a connection before the database counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections each server instance keeps open at most, unless told otherwise.
pub const DEFAULT_CONNECTIONS: u32 = 16;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
type Connection = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// Server storage in a PostgreSQL database, shared by any number of server instances.
pub struct PostgresStorage {
    pool: Pool,
    /// Migration steps this open applied (see [`PostgresStorage::migrations_applied`]).
    migrations_applied: u32,
}

impl PostgresStorage {
    /// Feed entries after `after` in `scopes`, those `reader` pushed left out (see
    /// [`Storage::feed_page_for`]).
    fn feed_page_of(
        &self,
        reader: Option<i64>,
        scopes: &[String],
        after: i64,
        limit: u32,
    ) -> Result<Page<FeedEntry>> {
        if scopes.is_empty() {
            return Ok(Page::empty(after));
        }
        let rows = self.conn()?.query(
            "SELECT f.seq, f.device_id IS NOT DISTINCT FROM $4, f.collection, f.record_id,
                    f.scope, f.device_id,
                    CASE WHEN f.device_id IS DISTINCT FROM $4 THEN f.changes END,
                    r.fields, r.deleted, f.committed_at, f.epoch, f.erased
             FROM feed f
             LEFT JOIN records r
               ON f.device_id IS DISTINCT FROM $4 AND r.collection = f.collection
                  AND r.id = f.record_id AND r.updated_seq = f.seq
             WHERE f.seq > $1 AND f.scope = ANY($3) ORDER BY f.seq LIMIT $2",
            &[&after, &(i64::from(limit) + 1), &scopes, &reader],
        )?;
        let read = rows
            .iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                if row.get::<_, bool>(1) {
                    return Ok((seq, None));
                }
                Ok((
                    seq,
                    Some(FeedEntry {
                        seq,
                        collection: row.get(2),
                        record_id: row.get(3),
                        scope: row.get(4),
                        device_id: row.get(5),
                        changes: decode_changes(row.get(6))?,
                        latest: row
                            .get::<_, Option<String>>(7)
                            .map(|fields| (fields, row.get::<_, Option<bool>>(8).unwrap_or(false))),
                        committed_at: row.get(9),
                        epoch: super::listed_epoch(row.get(10)),
                        erased: row.get(11),
                    }),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows_leaving_out(read, after, limit))
    }

    /// Connects to `url` (`postgres://user:password@host:port/database`) with at most
    /// `connections` connections, and brings the schema up to date.
    ///
    /// The connection is not encrypted: use a local socket, a loopback address, or a TLS
    /// sidecar in front of a remote database (docs/DEPLOYMENT.md).
    pub fn open(url: &str, connections: u32) -> Result<PostgresStorage> {
        let mut config: postgres::Config = url.parse().map_err(|err| {
            ServerError::Config(format!("--db is not a valid PostgreSQL URL: {err}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A first connection of its own, so that a wrong address or password is reported
        // as PostgreSQL put it.
        let mut first = config.connect(NoTls).map_err(|err| {
            ServerError::DatabaseUnavailable(format!(
                "cannot connect to PostgreSQL: {}",
                crate::error::describe_postgres_error(&err)
            ))
        })?;
        let migrations_applied = migrate(&mut first)?;
        drop(first);
        let pool = r2d2::Pool::builder()
            .max_size(connections.max(1))
            .min_idle(Some(0))
            .connection_timeout(CONNECT_TIMEOUT)
            .build(PostgresConnectionManager::new(config, NoTls))
            .map_err(unavailable)?;
        Ok(PostgresStorage {
            pool,
            migrations_applied,
        })
    }

    /// How many migration steps this open applied to the database: all of them on a new
    /// database, none on an up-to-date one. Of several instances starting at once, one applies
    /// them all and the others none.
    pub fn migrations_applied(&self) -> u32 {
        self.migrations_applied
    }

    fn conn(&self) -> Result<Connection> {
        self.pool.get().map_err(unavailable)
    }
}

fn unavailable(err: r2d2::Error) -> ServerError {
    ServerError::DatabaseUnavailable(err.to_string())
}

/// Applies the missing migration steps in one transaction, under a lock that makes a second
/// instance starting at the same moment wait and then find nothing left to do. Returns how
/// many steps it applied.
fn migrate(client: &mut Client) -> Result<u32> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_MIGRATIONS])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS fieldsync_schema (
             only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
             version INTEGER NOT NULL
         )",
    )?;
    let current: i32 = tx
        .query_opt("SELECT version FROM fieldsync_schema", &[])?
        .map_or(0, |row| row.get(0));
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(ServerError::Corrupt(format!(
            "the database has schema version {current}, newer than this server ({})",
            MIGRATIONS.len()
        )));
    }
    if current == MIGRATIONS.len() {
        return Ok(0);
    }
    let missing = &MIGRATIONS[current..];
    for step in missing {
        tx.batch_execute(step)?;
    }
    let version = MIGRATIONS.len() as i32;
    tx.execute(
        "INSERT INTO fieldsync_schema (version) VALUES ($1)
         ON CONFLICT (only_row) DO UPDATE SET version = excluded.version",
        &[&version],
    )?;
    tx.commit()?;
    Ok(missing.len() as u32)
}

/// A record's stored state from `scope, doc, fields, deleted, lineage, updated_seq, epoch` at
/// columns `first`….
fn stored_record(row: &postgres::Row, first: usize) -> StoredRecord {
    StoredRecord {
        scope: row.get(first),
        doc: row.get(first + 1),
        fields_json: row.get(first + 2),
        deleted: row.get(first + 3),
        lineage: row
            .get::<_, Option<&[u8]>>(first + 4)
            .and_then(Lineage::decode),
        version: Some(row.get(first + 5)),
        epoch: super::listed_epoch(row.get(first + 6)),
    }
}

/// Record keys as the two arrays a lookup by `unnest` takes, without the keys that name a
/// NUL byte: PostgreSQL text cannot hold one and fails the statement that passes one, and
/// no stored record has one in its name (the merge refuses such a record).
fn key_arrays<'k>(keys: impl Iterator<Item = (&'k str, &'k str)>) -> (Vec<&'k str>, Vec<&'k str>) {
    keys.filter(|(collection, id)| !collection.contains('\0') && !id.contains('\0'))
        .unzip()
}

/// The version of each pushed record that is stored, by `(collection, id)`, in one query.
/// Call with the records' locks held: nothing else writes them until the commit.
fn stored_versions<'r>(
    tx: &mut Transaction<'_>,
    records: &'r [PushRecord],
) -> Result<HashMap<(&'r str, &'r str), i64>> {
    let (collections, ids) = key_arrays(
        records
            .iter()
            .map(|r| (r.collection.as_str(), r.id.as_str())),
    );
    let rows = tx.query(
        "SELECT r.collection, r.id, r.updated_seq
         FROM unnest($1::text[], $2::text[]) AS k (collection, id)
         JOIN records r ON r.collection = k.collection AND r.id = k.id",
        &[&collections, &ids],
    )?;
    let found: HashMap<(String, String), i64> = rows
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
    Ok(records
        .iter()
        .filter_map(|r| {
            let key = (r.collection.as_str(), r.id.as_str());
            let version = found.get(&(key.0.to_owned(), key.1.to_owned()))?;
            Some((key, *version))
        })
        .collect())
}

/// A record's lock key: FNV-1a of collection and id. It must be the same in every instance,
/// whatever build or platform, which rules out the standard library's hasher. Two records
/// sharing a key only take turns.
fn record_lock_key(collection: &str, id: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in collection.bytes().chain([0]).chain(id.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as i32
}

fn stored_schema(row: &postgres::Row) -> StoredSchema {
    StoredSchema {
        version: row.get::<_, i32>(0) as u32,
        schema_json: row.get(1),
        set_at: row.get(2),
    }
}

fn user_of_device(tx: &mut Transaction<'_>, device_id: i64) -> Result<i64> {
    Ok(tx
        .query_one("SELECT user_id FROM devices WHERE id = $1", &[&device_id])?
        .get(0))
}

/// Audit lines for records, in one statement.
fn insert_audit(
    tx: &mut Transaction<'_>,
    at: i64,
    user_id: i64,
    device_id: i64,
    action: &str,
    records: &[(&str, &str, &str)],
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let collections: Vec<&str> = records.iter().map(|r| r.0).collect();
    let ids: Vec<&str> = records.iter().map(|r| r.1).collect();
    let scopes: Vec<&str> = records.iter().map(|r| r.2).collect();
    tx.execute(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope)
         SELECT $1, $2, $3, $4, c, r, s
         FROM unnest($5::text[], $6::text[], $7::text[]) AS t (c, r, s)",
        &[
            &at,
            &user_id,
            &device_id,
            &action,
            &collections,
            &ids,
            &scopes,
        ],
    )?;
    Ok(())
}

impl Storage for PostgresStorage {
    fn ping(&self) -> Result<()> {
        self.conn()?.query_one("SELECT 1", &[])?;
        Ok(())
    }

    fn create_user(&self, name: &str, role: Role) -> Result<i64> {
        let row = self
            .conn()?
            .query_one(
                "INSERT INTO users (name, role, created_at) VALUES ($1, $2, $3) RETURNING id",
                &[&name, &role.as_str(), &now_ms()],
            )
            .map_err(|err| {
                if err.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    ServerError::Conflict(format!("a user named `{name}` exists"))
                } else {
                    err.into()
                }
            })?;
        Ok(row.get(0))
    }

    fn user_id(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .conn()?
            .query_opt("SELECT id FROM users WHERE name = $1", &[&name])?
            .map(|row| row.get(0)))
    }

    fn count_users(&self) -> Result<u64> {
        let count: i64 = self
            .conn()?
            .query_one("SELECT count(*) FROM users", &[])?
            .get(0);
        Ok(count as u64)
    }

    fn create_device(&self, user_id: i64, name: &str) -> Result<i64> {
        Ok(self
            .conn()?
            .query_one(
                "INSERT INTO devices (user_id, name, created_at) VALUES ($1, $2, $3) RETURNING id",
                &[&user_id, &name, &now_ms()],
            )?
            .get(0))
    }

    fn revoke_device(&self, device_id: i64) -> Result<bool> {
        let changed = self.conn()?.execute(
            "UPDATE devices SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&device_id, &now_ms()],
        )?;
        Ok(changed > 0)
    }

    fn list_devices(&self) -> Result<Vec<DeviceInfo>> {
        identity::devices(&mut *self.conn()?, None)
    }

    fn sign_in(&self, sign_in: &SignIn<'_>) -> Result<i64> {
        identity::sign_in(&mut *self.conn()?, sign_in)
    }

    fn device(&self, device_id: i64) -> Result<Option<DeviceRecord>> {
        identity::device(&mut *self.conn()?, device_id)
    }

    fn devices_of(&self, user_id: i64) -> Result<Vec<DeviceInfo>> {
        identity::devices(&mut *self.conn()?, Some(user_id))
    }

    fn scopes_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        identity::scopes_with_prefix(&mut *self.conn()?, prefix)
    }

    fn insert_token(
        &self,
        token_id: &str,
        device_id: i64,
        secret_hash: &[u8],
        expires_at: Option<i64>,
    ) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO tokens (id, device_id, secret_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&token_id, &device_id, &secret_hash, &now_ms(), &expires_at],
        )?;
        Ok(())
    }

    fn revoke_token(&self, token_id: &str) -> Result<bool> {
        let changed = self.conn()?.execute(
            "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&token_id, &now_ms()],
        )?;
        Ok(changed > 0)
    }

    fn token(&self, token_id: &str) -> Result<Option<TokenRecord>> {
        let row = self.conn()?.query_opt(
            "SELECT t.device_id, d.user_id, t.secret_hash, t.expires_at,
                    t.revoked_at IS NOT NULL OR d.revoked_at IS NOT NULL, d.actor, u.role
             FROM tokens t JOIN devices d ON d.id = t.device_id JOIN users u ON u.id = d.user_id
             WHERE t.id = $1",
            &[&token_id],
        )?;
        row.map(|row| {
            Ok(TokenRecord {
                device_id: row.get(0),
                user_id: row.get(1),
                secret_hash: row.get(2),
                expires_at: row.get(3),
                revoked: row.get(4),
                actor: row.get(5),
                role: Role::parse(row.get(6))
                    .ok_or_else(|| ServerError::Corrupt("unknown user role".into()))?,
            })
        })
        .transpose()
    }

    fn set_grant(&self, user_id: i64, scope: &str, access: Access) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO grants (user_id, scope, access) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, scope) DO UPDATE SET access = excluded.access",
            &[&user_id, &scope, &access.as_str()],
        )?;
        Ok(())
    }

    fn revoke_grant(&self, user_id: i64, scope: &str) -> Result<bool> {
        let changed = self.conn()?.execute(
            "DELETE FROM grants WHERE user_id = $1 AND scope = $2",
            &[&user_id, &scope],
        )?;
        Ok(changed > 0)
    }

    fn grants(&self, user_id: i64) -> Result<Vec<Grant>> {
        let rows = self.conn()?.query(
            "SELECT scope, access FROM grants WHERE user_id = $1 ORDER BY scope",
            &[&user_id],
        )?;
        rows.iter()
            .map(|row| {
                let access = Access::parse(row.get(1))
                    .ok_or_else(|| ServerError::Corrupt("unknown grant access".into()))?;
                Ok(Grant {
                    scope: row.get(0),
                    access,
                })
            })
            .collect()
    }

    fn bind_actor(&self, device_id: i64, actor: &str) -> Result<Option<String>> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let bound = bind_in(&mut tx, device_id, actor)?;
        tx.commit()?;
        Ok(bound)
    }

    fn retired_actor(&self, device_id: i64, actor: &str) -> Result<bool> {
        Ok(self
            .conn()?
            .query_one(ACTOR_RETIRED, &[&device_id, &actor])?
            .get(0))
    }

    fn actor_free(&self, device_id: i64, actor: &str) -> Result<bool> {
        let taken: bool = self
            .conn()?
            .query_one(ACTOR_TAKEN, &[&device_id, &actor])?
            .get(0);
        Ok(!taken)
    }

    fn release_actor(&self, actor: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_ACTOR])?;
        let released = tx.execute("DELETE FROM device_actors WHERE actor = $1", &[&actor])?;
        let unbound = tx.execute(
            "UPDATE devices SET actor = NULL, outbox_seq = NULL WHERE actor = $1",
            &[&actor],
        )?;
        tx.commit()?;
        Ok(released + unbound > 0)
    }

    fn stored_records(&self, keys: &[(&str, &str)]) -> Result<Snapshot> {
        let (collections, ids) = key_arrays(keys.iter().copied());
        let rows = self.conn()?.query(
            "SELECT r.collection, r.id, r.scope, r.doc, r.fields, r.deleted, r.lineage,
                    r.updated_seq, r.epoch
             FROM unnest($1::text[], $2::text[]) AS k (collection, id)
             JOIN records r ON r.collection = k.collection AND r.id = k.id",
            &[&collections, &ids],
        )?;
        let found: HashMap<(String, String), StoredRecord> = rows
            .iter()
            .map(|row| ((row.get(0), row.get(1)), stored_record(row, 2)))
            .collect();
        let records = keys
            .iter()
            .map(|(collection, id)| {
                let key = ((*collection).to_owned(), (*id).to_owned());
                // A key named twice gets the same state twice.
                found.get(&key).cloned()
            })
            .collect();
        // Other instances write too: every push looks the versions up again.
        Ok(Snapshot {
            records,
            mark: None,
        })
    }

    fn device_sync(&self, device_id: i64) -> Result<DeviceSync> {
        let row = self.conn()?.query_opt(
            "SELECT d.outbox_seq, d.schema_version, h.pruned_through
             FROM devices d, feed_horizon h WHERE d.id = $1",
            &[&device_id],
        )?;
        Ok(row.map_or_else(DeviceSync::default, |row| DeviceSync {
            outbox_seq: row.get(0),
            schema_version: row.get::<_, Option<i32>>(1).map(|v| v as u32),
            feed_pruned_through: row.get(2),
        }))
    }

    fn set_device_schema_version(&self, device_id: i64, version: u32) -> Result<()> {
        let version = i32::try_from(version)
            .map_err(|_| ServerError::BadRequest("schema versions end at 2^31".into()))?;
        self.conn()?.execute(
            "UPDATE devices SET schema_version = $2 WHERE id = $1",
            &[&device_id, &version],
        )?;
        Ok(())
    }

    fn push(
        &self,
        device_id: i64,
        batch: &Batch<'_>,
        merge: &mut dyn Merge,
    ) -> Result<PushResponse> {
        let mut conn = self.conn()?;
        push_pipeline::apply(
            PostgresPush::begin(&mut conn, device_id)?,
            device_id,
            batch,
            merge,
        )
    }

    fn feed_page(&self, scopes: &[String], after: i64, limit: u32) -> Result<Page<FeedEntry>> {
        self.feed_page_of(None, scopes, after, limit)
    }

    fn feed_page_for(
        &self,
        reader: i64,
        scopes: &[String],
        after: i64,
        limit: u32,
    ) -> Result<Page<FeedEntry>> {
        self.feed_page_of(Some(reader), scopes, after, limit)
    }

    fn feed_head(&self) -> Result<i64> {
        // Positions become visible in order (the feed lock), so everything that commits
        // after this read comes after the head it returns.
        let row = self.conn()?.query_one(
            // Past the entries pruned, even when every entry was.
            "SELECT greatest(coalesce((SELECT max(seq) FROM feed), 0),
                                 (SELECT pruned_through FROM feed_horizon))",
            &[],
        )?;
        Ok(row.get(0))
    }

    fn documents_page(
        &self,
        scopes: &[String],
        after: i64,
        up_to: i64,
        limit: u32,
    ) -> Result<Page<DocumentEntry>> {
        if scopes.is_empty() {
            return Ok(Page::empty(after));
        }
        let rows = self.conn()?.query(
            "SELECT created_seq, updated_seq, collection, id, scope, doc, fields, deleted, epoch
             FROM records
             WHERE created_seq > $1 AND created_seq <= $4 AND scope = ANY($3)
             ORDER BY created_seq LIMIT $2",
            &[&after, &(i64::from(limit) + 1), &scopes, &up_to],
        )?;
        let entries = rows
            .iter()
            .map(|row| DocumentEntry {
                created_seq: row.get(0),
                seq: row.get(1),
                collection: row.get(2),
                record_id: row.get(3),
                scope: row.get(4),
                doc: row.get(5),
                fields_json: row.get(6),
                deleted: row.get(7),
                epoch: super::listed_epoch(row.get(8)),
            })
            .collect();
        Ok(Page::from_rows(entries, after, limit, |e| e.created_seq))
    }

    fn authors_of(&self, keys: &[(&str, &str)]) -> Result<Vec<Author>> {
        let (collections, ids) = key_arrays(keys.iter().copied());
        let rows = self.conn()?.query(
            "SELECT DISTINCT a.actor, coalesce(nullif(u.display_name, ''), u.name), d.name
             FROM unnest($1::text[], $2::text[]) AS k (collection, id)
             JOIN record_writers w ON w.collection = k.collection AND w.id = k.id
             JOIN device_actors a ON a.device_id = w.device_id
             JOIN devices d ON d.id = w.device_id
             JOIN users u ON u.id = d.user_id
             ORDER BY a.actor",
            &[&collections, &ids],
        )?;
        Ok(rows
            .iter()
            .map(|row| Author {
                actor: row.get(0),
                user: row.get(1),
                device: row.get(2),
            })
            .collect())
    }

    fn record_pull(
        &self,
        device_id: i64,
        records: &[(String, String, String)],
        pending_changes: Option<u64>,
        reached: i64,
    ) -> Result<()> {
        let mut conn = self.conn()?;
        let pending_changes = pending_changes.map(stored_count);
        if records.is_empty() {
            // Outside a transaction: an update that matches no row commits nothing to flush.
            let now = now_ms();
            conn.execute(
                "UPDATE devices SET last_sync_at = $2,
                     pending_changes = COALESCE($4, pending_changes),
                     pending_reported_at = CASE WHEN $4::BIGINT IS NULL THEN pending_reported_at
                                                ELSE $2 END,
                     feed_position = greatest(coalesce(feed_position, 0), $5),
                     feed_position_at = $2
                 WHERE id = $1 AND (last_sync_at IS NULL OR last_sync_at <= $3
                     OR ($4::BIGINT IS NOT NULL AND (pending_changes IS DISTINCT FROM $4
                         OR pending_reported_at IS NULL OR pending_reported_at <= $3))
                     OR (coalesce(feed_position, -1) < $5
                         AND (feed_position_at IS NULL OR feed_position_at <= $6)))",
                &[
                    &device_id,
                    &now,
                    &(now - IDLE_PULL_RECORDED_EVERY_MS),
                    &pending_changes,
                    &reached,
                    &(now - FEED_POSITION_RECORDED_EVERY_MS),
                ],
            )?;
            return Ok(());
        }
        let mut tx = conn.transaction()?;
        let now = now_ms();
        let user_id = user_of_device(&mut tx, device_id)?;
        let pulled: Vec<(&str, &str, &str)> = records
            .iter()
            .map(|(c, r, s)| (c.as_str(), r.as_str(), s.as_str()))
            .collect();
        insert_audit(&mut tx, now, user_id, device_id, "pull", &pulled)?;
        tx.execute(
            "UPDATE devices SET last_sync_at = $2,
                 pending_changes = COALESCE($3, pending_changes),
                 pending_reported_at = CASE WHEN $3::BIGINT IS NULL THEN pending_reported_at
                                            ELSE $2 END,
                 feed_position = greatest(coalesce(feed_position, 0), $4), feed_position_at = $2
             WHERE id = $1",
            &[&device_id, &now, &pending_changes, &reached],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn attachment(&self, scope: &str, sha256: &[u8; 32]) -> Result<Option<AttachmentState>> {
        attachments::attachment(&mut *self.conn()?, scope, sha256)
    }

    fn put_attachment_chunk(
        &self,
        scope: &str,
        sha256: &[u8; 32],
        size: u64,
        chunk: u32,
        bytes: Option<&[u8]>,
    ) -> Result<ChunkStored> {
        attachments::put_chunk(&mut *self.conn()?, (scope, sha256), size, chunk, bytes)
    }

    fn attachment_chunk(
        &self,
        scope: &str,
        sha256: &[u8; 32],
        chunk: u32,
    ) -> Result<Option<StoredChunk>> {
        attachments::chunk(&mut *self.conn()?, scope, sha256, chunk)
    }

    fn complete_attachment(&self, scope: &str, sha256: &[u8; 32]) -> Result<()> {
        attachments::complete(&mut *self.conn()?, scope, sha256)
    }

    fn delete_attachment(&self, scope: &str, sha256: &[u8; 32]) -> Result<bool> {
        attachments::delete(&mut *self.conn()?, scope, sha256)
    }

    fn attachments_after(
        &self,
        after: Option<(&str, &[u8; 32])>,
        limit: u32,
    ) -> Result<Vec<ListedAttachment>> {
        attachments::after(&mut *self.conn()?, after, limit)
    }

    fn create_webhook(&self, url: &str, secret: &str, user_id: i64, cursor: i64) -> Result<i64> {
        webhooks::create(&mut *self.conn()?, (url, secret), user_id, cursor)
    }

    fn webhooks(&self) -> Result<Vec<Webhook>> {
        webhooks::list(&mut *self.conn()?)
    }

    fn delete_webhook(&self, id: i64) -> Result<bool> {
        webhooks::delete(&mut *self.conn()?, id)
    }

    fn lease_webhook(&self, id: i64, now: i64, until: i64) -> Result<bool> {
        webhooks::lease(&mut *self.conn()?, id, now, until)
    }

    fn end_webhook_delivery(&self, id: i64, delivery: &Delivery, now: i64) -> Result<()> {
        webhooks::end_delivery(&mut *self.conn()?, id, delivery, now)
    }

    fn schema_version(&self) -> Result<u32> {
        let version: Option<i32> = self
            .conn()?
            .query_one("SELECT max(version) FROM schemas", &[])?
            .get(0);
        Ok(version.map_or(0, |v| v as u32))
    }

    fn current_schema(&self) -> Result<Option<StoredSchema>> {
        let row = self.conn()?.query_opt(
            "SELECT version, schema, set_at FROM schemas ORDER BY version DESC LIMIT 1",
            &[],
        )?;
        Ok(row.map(|row| stored_schema(&row)))
    }

    fn schema_history(&self) -> Result<Vec<StoredSchema>> {
        let rows = self.conn()?.query(
            "SELECT version, schema, set_at FROM schemas ORDER BY version",
            &[],
        )?;
        Ok(rows.iter().map(stored_schema).collect())
    }

    fn add_schema(&self, version: u32, schema_json: &str) -> Result<bool> {
        let version = i32::try_from(version)
            .map_err(|_| ServerError::BadRequest("schema versions end at 2^31".into()))?;
        let added = self.conn()?.execute(
            "INSERT INTO schemas (version, schema, set_at) VALUES ($1, $2, $3)
             ON CONFLICT (version) DO NOTHING",
            &[&version, &schema_json, &now_ms()],
        )?;
        Ok(added == 1)
    }

    fn records_after(&self, after: Option<(&str, &str)>, limit: u32) -> Result<Vec<ListedRecord>> {
        maintenance::records_after(&mut *self.conn()?, after, limit)
    }

    fn records_in_scope(
        &self,
        collection: &str,
        scope: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<RecordValues>> {
        maintenance::records_in_scope(&mut *self.conn()?, (collection, scope), after, limit)
    }

    fn feed_changes_of(&self, collection: &str, id: &str) -> Result<Vec<Vec<u8>>> {
        maintenance::feed_changes_of(&mut *self.conn()?, collection, id)
    }

    fn rewrite_record(
        &self,
        key: (&str, &str),
        version: i64,
        record: &MergedRecord,
        action: &str,
    ) -> Result<bool> {
        maintenance::rewrite_record(&mut *self.conn()?, key, version, record, action)
    }

    fn erase_record(&self, key: (&str, &str), version: i64, epoch: &NewEpoch) -> Result<bool> {
        maintenance::erase_record(&mut *self.conn()?, key, version, epoch)
    }

    fn records_aged(
        &self,
        key: (&str, &str),
        before: i64,
        after: &str,
        limit: u32,
    ) -> Result<Vec<RecordValues>> {
        retention::records_aged(&mut *self.conn()?, key, before, after, limit)
    }

    fn set_retention_policy(&self, policy: &RetentionPolicy) -> Result<()> {
        retention::set_policy(&mut *self.conn()?, policy)
    }

    fn retention_policies(&self) -> Result<Vec<RetentionPolicy>> {
        retention::policies(&mut *self.conn()?)
    }

    fn remove_retention_policy(&self, collection: &str) -> Result<bool> {
        retention::remove_policy(&mut *self.conn()?, collection)
    }

    fn feed_lag(&self, active_since: i64) -> Result<Vec<(String, i64)>> {
        pruning::feed_lag(&mut *self.conn()?, active_since)
    }

    fn feed_read_by_all(&self, active_since: i64) -> Result<i64> {
        pruning::feed_read_by_all(&mut *self.conn()?, active_since)
    }

    fn prune_feed(&self, through: i64, answers_before: i64) -> Result<Pruned> {
        pruning::prune_feed(&mut *self.conn()?, through, answers_before)
    }

    fn prune_audit(&self, before: i64, by: i64) -> Result<u64> {
        pruning::prune_audit(&mut *self.conn()?, before, by)
    }

    fn scrub(&self) -> Result<bool> {
        // PostgreSQL keeps a deleted row's bytes until vacuum reuses its space, and its WAL
        // until the segment is recycled: nothing a statement can clear (docs/DEPLOYMENT.md).
        Ok(false)
    }

    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let rows = self.conn()?.query(
            "SELECT a.at, coalesce(u.name, '(server)'), a.device_id, a.action, a.collection, a.record_id, a.scope, a.code,
                    a.detail
             FROM audit a LEFT JOIN users u ON u.id = a.user_id
             WHERE ($1::text IS NULL OR u.name = $1) AND ($2::text IS NULL OR a.record_id = $2)
               AND ($3::bigint IS NULL OR a.at >= $3) AND ($5::bigint IS NULL OR a.at < $5)
             ORDER BY a.id DESC LIMIT $4",
            &[
                &query.user,
                &query.record_id,
                &query.since,
                &i64::from(query.limit),
                &query.until,
            ],
        )?;
        Ok(rows
            .iter()
            .map(|row| AuditEntry {
                at: row.get(0),
                user: row.get(1),
                device_id: row.get(2),
                action: row.get(3),
                collection: row.get(4),
                record_id: row.get(5),
                scope: row.get(6),
                code: row.get(7),
                detail: row.get(8),
            })
            .collect())
    }

    fn audit_line(&self, line: &NewAuditLine<'_>) -> Result<()> {
        identity::audit_line(&mut *self.conn()?, line)
    }

    fn list_users(&self) -> Result<Vec<UserInfo>> {
        identity::list_users(&mut *self.conn()?)
    }

    fn group_grants(&self) -> Result<Vec<StoredGroupGrant>> {
        identity::group_grants(&mut *self.conn()?)
    }

    fn set_group_grants(&self, grants: &[StoredGroupGrant]) -> Result<()> {
        identity::set_group_grants(&mut *self.conn()?, grants)
    }

    fn active_devices(&self, since: i64) -> Result<u64> {
        let count: i64 = self
            .conn()?
            .query_one(
                "SELECT count(*) FROM devices WHERE last_sync_at >= $1 AND revoked_at IS NULL",
                &[&since],
            )?
            .get(0);
        Ok(count as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::record_lock_key;

    #[test]
    fn record_lock_keys_are_stable_and_spread() {
        // Instances built at different times must agree on every key.
        assert_eq!(record_lock_key("", ""), 0x050c_5d1f_u32 as i32);
        assert_ne!(
            record_lock_key("clients", "ab"),
            record_lock_key("clientsa", "b"),
            "the separator keeps collection and id apart"
        );
    }
}
