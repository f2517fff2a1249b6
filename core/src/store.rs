//! The store: one SQLite file holding every record of an app as an Automerge document, the
//! materialized values queries use, and the outbox of local changes waiting to sync.

mod attachment_sync;
mod attachments;
mod epochs;
mod migrations;
mod read;
mod rejected;
mod remote;
mod restore;
mod sync_state;
mod tables;
mod typing;
mod write;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use automerge::{ActorId, AutoCommit};
use lru::LruCache;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::encryption::{self, EncryptionKey};
use crate::error::{Error, Result};
use crate::query::{Filter, Query};
use crate::schema::Schema;
use crate::subscription::{ChangeEvent, ChangeOrigin, Changed, Registry, Subscription};
use crate::value::Fields;
use fieldsync_sqlite::Checkpointer;

pub use attachment_sync::AttachmentsTidied;
pub use attachments::{AttachmentReader, AttachmentSource, STORED_CHUNK_BYTES};
pub use read::{Orphan, Record};
pub use rejected::RejectedWrite;
pub use remote::{ApplyReport, RejectedRecord, RemotePayload, RemoteRecord};
pub use write::Write;

use tables::TableSql;

/// How hard SQLite works to make each commit survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// Every commit is on disk when the call returns, even across power loss (default); but a
    /// keystroke ([`Store::splice_text`]) is flushed on a thread of its own within about 50 ms.
    #[default]
    Full,
    /// Commits survive an app crash but the last ones may be lost on power loss; faster.
    Normal,
}

/// Options for [`Store::open`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// How many record documents stay loaded in memory between writes. A loaded document of a
    /// small record takes about 20 KiB (more with long text or a long history), so the default
    /// of 512 holds about 10 MiB for such records.
    pub document_cache_size: usize,
    /// How many remote changes may wait for missing dependencies before `apply_remote`
    /// refuses more (the sync engine then asks for whole documents).
    pub max_pending_changes: usize,
    /// The most bytes of attachments the server holds that the store keeps: past it, the
    /// least recently used are evicted (and fetched again when needed). Attachments not yet
    /// on the server are kept whatever their size.
    pub attachment_budget_bytes: u64,
    /// Encrypts the file (SQLCipher) with this key; `None` keeps it unencrypted. Clinical
    /// apps should always set one (see [`EncryptionKey`]). Never serialized.
    #[serde(skip)]
    pub encryption_key: Option<EncryptionKey>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous: Synchronous::Full,
            document_cache_size: 512,
            max_pending_changes: 10_000,
            attachment_budget_bytes: 1 << 30,
            encryption_key: None,
        }
    }
}

/// A local change waiting in the outbox for the server to acknowledge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Position in the outbox; acknowledge up to it with [`Store::acknowledge_outbox`].
    pub seq: i64,
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub record_id: String,
    /// Scope of the record.
    pub scope: String,
    /// What to send: one Automerge change (a new record's is the bytes its row holds, encoded
    /// once). Entries written by earlier versions may hold a new record's saved document.
    pub payload: RemotePayload,
    /// The record's epoch the change was made on (0 until the server erases content from the
    /// record; see [`PulledRecord::epoch`](crate::protocol::PulledRecord::epoch)).
    pub epoch: u64,
}

/// A record document held in memory, with the row facts that go with it.
pub(crate) struct CachedDoc {
    pub doc: AutoCommit,
    /// The materialized values, as in the row: local writes derive the next values from
    /// these instead of reading every field back out of the document.
    pub fields: Fields,
    pub scope: String,
    pub created_at: i64,
    pub deleted: bool,
    /// The stored bytes: the document as last saved whole, then the changes appended since.
    pub stored: Vec<u8>,
    /// How many changes `stored` has appended.
    pub tail: u32,
    /// Save the document whole on the next write: it was loaded from a row with appended
    /// changes, or from a record's first change, which are slow to load, and it may go cold
    /// again.
    pub compact_next: bool,
}

type DocKey = (String, String);

struct Db {
    /// Checkpoints the WAL off the commit path (`None`: SQLite checkpoints in commits).
    /// Declared first: its thread stops before the connection closes.
    checkpointer: Option<Checkpointer>,
    conn: Connection,
    cache: LruCache<DocKey, CachedDoc>,
    /// Whether a first sync dropped the record indexes and has not built them again yet
    /// (see `Store::suspend_indexes`).
    indexes_suspended: bool,
    /// Keystrokes typed into a text field that are not a change yet (`typing.rs`).
    typing: Option<typing::TypingRun>,
}

struct Shared {
    db: Mutex<Db>,
    schema: Schema,
    tables: BTreeMap<String, TableSql>,
    /// The actor this store writes as, and the device id it is (its hex). A store restored
    /// from an older copy takes a new one (`restore.rs`), hence the lock.
    identity: std::sync::RwLock<(ActorId, String)>,
    options: StoreOptions,
    subscriptions: Arc<Registry>,
    /// The store file, for the checkpoint thread's connection.
    path: PathBuf,
    /// Its WAL file, which the checkpoint thread flushes after a keystroke (`typing.rs`).
    wal_path: PathBuf,
}

/// An app's local record store. Cheap to clone; clones share one connection, and every method
/// may be called from any thread.
///
/// ```
/// use fieldsync_core::{Filter, Query, Schema, Store, StoreOptions};
/// use serde_json::json;
///
/// let schema = Schema::from_json(r#"{"collections": {"clients": {
///     "scope_field": "caseload_id",
///     "fields": {
///         "caseload_id": {"type": "string", "required": true},
///         "name": {"type": "string", "required": true},
///         "notes": {"type": "text"}
///     },
///     "indexes": [{"name": "by_name", "fields": ["name"]}]
/// }}}"#)?;
/// let dir = tempfile::tempdir().unwrap();
/// let store = Store::open(dir.path().join("app.db"), schema, StoreOptions::default())?;
///
/// let fields = json!({"caseload_id": "north", "name": "Ada", "notes": "First visit."});
/// let id = store.insert("clients", fields.as_object().unwrap().clone())?;
/// store.splice_text("clients", &id, "notes", 0, 0, "Calm. ")?;
///
/// let found = store.query("clients", &Query { filter: Filter::eq("name", "Ada"), ..Query::default() })?;
/// assert_eq!(found[0].fields["notes"], "Calm. First visit.");
/// # Ok::<(), fieldsync_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("device_id", &self.device_id())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store file at `path` for `schema`.
    ///
    /// A file created with an older schema is upgraded in place when the new schema only adds
    /// (see [`Schema::check_upgrade_from`]); otherwise [`Error::IncompatibleSchema`] is returned
    /// and the file is left as it was.
    pub fn open(path: impl AsRef<Path>, schema: Schema, options: StoreOptions) -> Result<Store> {
        schema.validate()?;
        let mut conn = Connection::open(path.as_ref())?;
        encryption::unlock(&conn, path.as_ref(), options.encryption_key.as_ref())?;
        configure(&conn, options.synchronous)?;
        migrations::migrate(&mut conn)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |row| {
                row.get(0)
            })
            .optional()?;
        if let Some(stored) = stored {
            let old: Schema = serde_json::from_str(&stored)
                .map_err(|_| Error::Corrupt("the stored schema is not readable".into()))?;
            schema.check_upgrade_from(&old)?;
        }
        tables::sync_tables(&tx, &schema)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [schema.to_json()],
        )?;
        let device_id = device_id(&tx)?;
        tx.commit()?;

        let actor = ActorId::try_from(device_id.as_str())
            .map_err(|_| Error::Corrupt("the stored device id is not valid".into()))?;
        let tables = schema
            .collections
            .iter()
            .map(|(name, collection)| (name.clone(), TableSql::new(name, collection)))
            .collect();
        let cache_size =
            NonZeroUsize::new(options.document_cache_size).unwrap_or(NonZeroUsize::MIN);
        let typing = typing::run_in_journal(&conn)?;
        let checkpointer =
            start_checkpointer(&mut conn, path.as_ref(), options.encryption_key.as_ref())?;
        Ok(Store {
            shared: Arc::new(Shared {
                db: Mutex::new(Db {
                    checkpointer,
                    conn,
                    cache: LruCache::new(cache_size),
                    indexes_suspended: false,
                    typing,
                }),
                schema,
                tables,
                identity: std::sync::RwLock::new((actor, device_id)),
                options,
                subscriptions: Arc::default(),
                path: path.as_ref().to_owned(),
                wal_path: wal_path(path.as_ref()),
            }),
        })
    }

    /// Re-encrypts the store with `new_key` (key rotation). The store must have been opened
    /// with a key; afterwards only `new_key` opens it.
    pub fn rekey(&self, new_key: &EncryptionKey) -> Result<()> {
        if self.shared.options.encryption_key.is_none() {
            return Err(Error::NotEncrypted);
        }
        let mut db = self.shared.lock()?;
        // Leaving WAL for the rewrite needs the only connection to the file; the checkpoint
        // thread's comes back with the new key.
        db.checkpointer = None;
        db.conn.pragma_update(None, "wal_autocheckpoint", 1000)?;
        encryption::rekey(&db.conn, new_key)?;
        db.checkpointer = start_checkpointer(&mut db.conn, &self.shared.path, Some(new_key))?;
        Ok(())
    }

    /// Encrypts an unencrypted store file in place with `key`, keeping every record, outbox
    /// entry and sync state. The file must not be open. Afterwards open it with the key.
    ///
    /// Blocks the old file used on disk are released to the file system, which may not erase
    /// them at once; encrypt before the first clinical record is written where possible.
    pub fn encrypt_file(path: impl AsRef<Path>, key: &EncryptionKey) -> Result<()> {
        encryption::encrypt_file(path.as_ref(), key)
    }

    /// This device's stable id (its Automerge actor id, hex), kept in the file.
    pub fn device_id(&self) -> String {
        self.shared.identity().1
    }

    /// The schema the store was opened with.
    pub fn schema(&self) -> &Schema {
        &self.shared.schema
    }

    /// Inserts a record with a new UUIDv7 id and returns the id.
    pub fn insert(&self, collection: &str, fields: Fields) -> Result<String> {
        self.insert_with_id(collection, None, fields)
    }

    /// Inserts a record with the given id (or a new UUIDv7 when `None`).
    pub fn insert_with_id(
        &self,
        collection: &str,
        id: Option<String>,
        fields: Fields,
    ) -> Result<String> {
        let ids = self.write_batch(vec![Write::Insert {
            collection: collection.into(),
            id,
            fields,
        }])?;
        Ok(ids.into_iter().next().expect("one write gives one id"))
    }

    /// Sets the fields in `patch`; a `null` clears an optional field. Other fields are kept.
    pub fn update(&self, collection: &str, id: &str, patch: Fields) -> Result<()> {
        self.write_batch(vec![Write::Update {
            collection: collection.into(),
            id: id.into(),
            patch,
        }])?;
        Ok(())
    }

    /// Edits a `text` field: at `index`, deletes `delete_count` units and inserts `insert`.
    /// Positions count UTF-16 code units (as Kotlin, Swift and JavaScript strings do).
    ///
    /// Made for typing, one call per keystroke: the record's row shows the edit at once, and a
    /// run of edits of one field becomes one Automerge change later (before the next sync or
    /// other write, or after a thousand keystrokes), so that a long note costs neither a change
    /// per keystroke nor work that grows with its length. At [`Synchronous::Full`] the edit
    /// returns before the disk has it: it is flushed a few milliseconds later, so a power cut
    /// can lose the last moment's keystrokes, and an app crash loses none.
    pub fn splice_text(
        &self,
        collection: &str,
        id: &str,
        field: &str,
        index: usize,
        delete_count: usize,
        insert: &str,
    ) -> Result<()> {
        let changed = {
            let mut db = self.shared.lock_rows();
            typing::splice(
                &self.shared,
                &mut db,
                collection,
                id,
                field,
                index,
                delete_count,
                insert,
            )?
        };
        self.shared
            .subscriptions
            .notify(&[changed], ChangeOrigin::Local);
        Ok(())
    }

    /// Deletes a record, leaving a tombstone that syncs, and applies the `on_delete` rules of
    /// reference fields that point at it.
    pub fn delete(&self, collection: &str, id: &str) -> Result<()> {
        self.write_batch(vec![Write::Delete {
            collection: collection.into(),
            id: id.into(),
        }])?;
        Ok(())
    }

    /// Applies many writes in one SQLite transaction: all of them, or none if one fails.
    /// Returns the record id of each write, in order.
    pub fn write_batch(&self, writes: Vec<Write>) -> Result<Vec<String>> {
        let (ids, changed) = {
            let mut db = self.shared.lock()?;
            write::apply(&self.shared, &mut db, writes)?
        };
        self.shared
            .subscriptions
            .notify(&changed, ChangeOrigin::Local);
        Ok(ids)
    }

    /// The live record with this id, or `None` if there is none or it was deleted.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Record>> {
        let db = self.shared.lock_rows();
        read::get(&self.shared, &db.conn, collection, id)
    }

    /// Live records matching the query.
    pub fn query(&self, collection: &str, query: &Query) -> Result<Vec<Record>> {
        let db = self.shared.lock_rows();
        read::query(&self.shared, &db.conn, collection, query)
    }

    /// SQLite's `EXPLAIN QUERY PLAN` for exactly the statement and parameters
    /// [`Store::query`] runs for `query`, one line per step (nested steps follow their parent).
    ///
    /// For checking, in development or in a test, that a query uses an index: a step like
    /// `SEARCH rec_clients USING INDEX idx:clients:by_name (name=?)` means it does; a step
    /// starting with `SCAN` reads every row of the table (or of an index), and
    /// `USE TEMP B-TREE FOR ORDER BY` sorts the matches. During a first sync in several pages
    /// the indexes are dropped until it ends, and the plan says so.
    pub fn query_plan(&self, collection: &str, query: &Query) -> Result<Vec<String>> {
        let db = self.shared.lock_rows();
        read::query_plan(&self.shared, &db.conn, collection, query)
    }

    /// How many live records match the filter.
    pub fn count(&self, collection: &str, filter: &Filter) -> Result<u64> {
        let db = self.shared.lock_rows();
        read::count(&self.shared, &db.conn, collection, filter)
    }

    /// Live records whose reference fields point at a record that is deleted or absent, as
    /// can happen when a record arrives by merge after its target was deleted elsewhere.
    pub fn orphans(&self, collection: &str) -> Result<Vec<Orphan>> {
        let db = self.shared.lock_rows();
        read::orphans(&self.shared, &db.conn, collection)
    }

    /// Fields of the record on which concurrent writes happened, with winner and losers.
    pub fn conflicts(&self, collection: &str, id: &str) -> Result<Vec<crate::FieldConflict>> {
        let mut db = self.shared.lock()?;
        let cached = self.shared.load_doc(&mut db, collection, id)?;
        let collection_decl = self.shared.schema.collection(collection)?;
        let mut conflicts = crate::document::conflicts(&cached.doc, collection_decl)?;
        let values = conflicts
            .iter_mut()
            .flat_map(|c| std::iter::once(&mut c.winner).chain(c.losers.iter_mut()));
        for value in values {
            value.author = read::author(&db.conn, &value.device_id)?;
        }
        Ok(conflicts)
    }

    /// Every change of the record (including ones merged from other devices), oldest first:
    /// which device made it (and, once a sync named them, the person and device behind it),
    /// when, and which fields it wrote.
    pub fn history(&self, collection: &str, id: &str) -> Result<Vec<crate::HistoryEntry>> {
        let mut db = self.shared.lock()?;
        let cached = self.shared.load_doc(&mut db, collection, id)?;
        let mut history = crate::document::history(&mut cached.doc);
        for entry in &mut history {
            entry.author = read::author(&db.conn, &entry.device_id)?;
        }
        Ok(history)
    }

    /// The saved Automerge document of a record (live or deleted), for sending it whole.
    pub fn document(&self, collection: &str, id: &str) -> Result<Vec<u8>> {
        let mut db = self.shared.lock()?;
        let cached = self.shared.load_doc(&mut db, collection, id)?;
        Ok(cached.doc.save())
    }

    /// Calls `callback` after every commit that changes records of `collection` matching
    /// `filter` (before or after the change), for local writes and merges alike.
    pub fn subscribe(
        &self,
        collection: &str,
        filter: Filter,
        callback: impl Fn(&ChangeEvent) + Send + Sync + 'static,
    ) -> Result<Subscription> {
        let decl = self.shared.schema.collection(collection)?;
        crate::query::compile_filter(collection, decl, &filter)?;
        Ok(self
            .shared
            .subscriptions
            .subscribe(collection, filter, Arc::new(callback)))
    }

    /// Merges changes or whole documents that came from elsewhere, in one transaction.
    /// Each record is merged or rejected on its own; see [`ApplyReport`].
    pub fn apply_remote(&self, records: Vec<RemoteRecord>) -> Result<ApplyReport> {
        let incoming = records.into_iter().map(remote::Incoming::from).collect();
        let (report, changed, _) = {
            let mut db = self.shared.lock()?;
            remote::apply(
                &self.shared,
                &mut db,
                incoming,
                remote::PageEffects::default(),
            )?
        };
        self.shared
            .subscriptions
            .notify(&changed, ChangeOrigin::Remote);
        Ok(report)
    }

    /// The oldest `limit` outbox entries, in write order.
    pub fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>> {
        let db = self.shared.lock()?;
        let mut stmt = db.conn.prepare_cached(
            "SELECT o.seq, o.collection, o.record_id, o.scope, o.is_document, o.payload,
                    coalesce(e.epoch, 0)
             FROM outbox o
             LEFT JOIN record_epochs e ON e.collection = o.collection AND e.record_id = o.record_id
             ORDER BY o.seq LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit.min(i64::MAX as usize) as i64], |row| {
            Ok(OutboxEntry {
                seq: row.get(0)?,
                collection: row.get(1)?,
                record_id: row.get(2)?,
                scope: row.get(3)?,
                payload: RemotePayload::from_outbox(row.get(4)?, row.get(5)?),
                epoch: row.get::<_, i64>(6)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many entries wait in the outbox.
    pub fn outbox_len(&self) -> Result<usize> {
        let db = self.shared.lock()?;
        let count: i64 = db
            .conn
            .query_row("SELECT count(*) FROM outbox", [], |row| row.get(0))?;
        Ok(count as usize)
    }

    /// Removes the outbox entries up to and including `seq`, once the server has them.
    pub fn acknowledge_outbox(&self, seq: i64) -> Result<()> {
        let db = self.shared.lock()?;
        db.conn
            .execute("DELETE FROM outbox WHERE seq <= ?1", [seq])?;
        Ok(())
    }
}

impl Shared {
    /// The actor this store writes as, and its device id.
    fn identity(&self) -> (ActorId, String) {
        self.identity
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The actor this store writes as.
    fn actor(&self) -> ActorId {
        self.identity().0
    }

    /// The store's connection, with every keystroke typed so far made into its record's
    /// change (`typing.rs`): for anything that reads or writes documents or the outbox.
    fn lock(&self) -> Result<MutexGuard<'_, Db>> {
        let mut db = self.lock_rows();
        typing::settle(self, &mut db)?;
        Ok(db)
    }

    /// The store's connection as it is, for what reads only the records' rows (which show
    /// every keystroke at once) and for typing itself.
    fn lock_rows(&self) -> MutexGuard<'_, Db> {
        // Writers hand documents back to the cache only after their commit succeeded, so a
        // writer that panicked left nothing half-done behind the lock.
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn table(&self, collection: &str) -> Result<&TableSql> {
        self.tables
            .get(collection)
            .ok_or_else(|| Error::UnknownCollection(collection.to_owned()))
    }

    /// The record's document (live or deleted), from the cache or the file.
    fn load_doc<'a>(
        &self,
        db: &'a mut Db,
        collection: &str,
        id: &str,
    ) -> Result<&'a mut CachedDoc> {
        let key = (collection.to_owned(), id.to_owned());
        if !db.cache.contains(&key) {
            let loaded =
                read::load_cached_doc(self, &db.conn, collection, id)?.ok_or_else(|| {
                    Error::NotFound {
                        collection: collection.to_owned(),
                        id: id.to_owned(),
                    }
                })?;
            db.cache.put(key.clone(), loaded);
        }
        Ok(db.cache.get_mut(&key).expect("just inserted"))
    }
}

/// Moves the WAL's checkpoints off `conn`'s commits, onto a thread with a connection of its
/// own (see [`crate::wal_checkpoint`]). A pulled page of edits dirties thousands of pages, and
/// the commit that crossed SQLite's threshold copied them all and flushed twice before the
/// sync could go on. `None` for a store not in WAL mode (in memory).
fn start_checkpointer(
    conn: &mut Connection,
    path: &Path,
    key: Option<&EncryptionKey>,
) -> Result<Option<Checkpointer>> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Ok(None);
    }
    let (path, key) = (path.to_owned(), key.cloned());
    let open = move || -> Result<Connection> {
        let own = Connection::open(&path)?;
        encryption::unlock(&own, &path, key.as_ref())?;
        own.busy_timeout(Duration::from_secs(5))?;
        Ok(own)
    };
    Ok(Checkpointer::start(conn, WAL_PAGES_AT_MOST, open)?)
}

/// The WAL file SQLite keeps beside the store file `path`.
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// A commit that leaves this many pages in the WAL (8 MiB) checkpoints on the spot once the
/// checkpoint thread has had its turn, and one that leaves twice as many whatever the thread
/// is doing: the thread cannot catch up with commits that come back to back, such as fast
/// typing, and the WAL would grow until they pause.
const WAL_PAGES_AT_MOST: u32 = 2000;

/// The size the WAL file is cut back to once checkpointed (bytes): the thousand pages after
/// which a checkpoint is asked for.
const WAL_SIZE_LIMIT: i64 = 4 << 20;

fn configure(conn: &Connection, synchronous: Synchronous) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    // With the bundled SQLite's STAT4, a cached statement whose parameters are compared with
    // a partial index's condition is re-prepared on every new binding; our plans do not
    // depend on values, so keep them.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        return Err(Error::Corrupt(format!(
            "the file cannot use WAL journaling ({mode})"
        )));
    }
    let level = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    // An 8 MiB page cache (SQLite's default is 2 MiB) holds the pages a pulled page of 500
    // edited records dirties (about 900: each record's row and the index entries its new
    // values move), so the transaction no longer spills them to the WAL half-way and reads
    // them back.
    // Deleted content is zeroed as it goes (`secure_delete`): what an erasure removes, and
    // every earlier version of a record's row, leaves no copy in free pages or in the free
    // space of the pages that held it (docs/BENCHMARKS.md, "Erasure").
    // The WAL file keeps the size of its busiest moment unless told otherwise: a note typed
    // keystroke by keystroke, or a large pull, left tens of megabytes on a phone for good.
    // Once checkpointed, it is cut back to WAL_SIZE_LIMIT when it starts over.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {level}; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -8192;
         PRAGMA secure_delete = ON; PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};"
    ))?;
    // A file that is not SQLite at all fails here rather than on the first write.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    })
    .map_err(|_| Error::Corrupt("the file is not a SQLite database".into()))?;
    Ok(())
}

/// The device id kept in the file, created on first open.
fn device_id(tx: &rusqlite::Transaction<'_>) -> Result<String> {
    let existing: Option<String> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'device_id'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('device_id', ?1)",
        [&id],
    )?;
    Ok(id)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

pub(crate) fn changed(
    collection: &str,
    id: &str,
    before: Option<Fields>,
    after: Option<Fields>,
) -> Changed {
    Changed {
        collection: collection.to_owned(),
        id: id.to_owned(),
        before,
        after,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn open(path: &Path, key: Option<&EncryptionKey>) -> Store {
        let schema = Schema::from_json(
            r#"{"collections": {"notes": {"scope_field": "caseload_id", "fields": {
                "caseload_id": {"type": "string", "required": true},
                "body": {"type": "string"}}}}}"#,
        )
        .unwrap();
        let options = StoreOptions {
            encryption_key: key.cloned(),
            ..StoreOptions::default()
        };
        Store::open(path, schema, options).unwrap()
    }

    /// Writes about 6 MB (each body twice: in its column and in its document's change): past
    /// SQLite's checkpoint threshold of 1,000 pages, short of the store's WAL bound.
    fn write_past_the_threshold(store: &Store, round: usize) {
        let body = "x".repeat(20_000);
        let writes = (0..150)
            .map(|i| Write::Insert {
                collection: "notes".into(),
                id: Some(format!("n{round}-{i}")),
                fields: json!({"caseload_id": "north", "body": body})
                    .as_object()
                    .unwrap()
                    .clone(),
            })
            .collect();
        store.write_batch(writes).unwrap();
    }

    fn checkpoints(store: &Store) -> (u64, u64) {
        let db = store.shared.lock().unwrap();
        db.checkpointer.as_ref().unwrap().counts()
    }

    /// Waits for the checkpoint thread's first checkpoint. Under the store's lock: the
    /// thread does not take it.
    fn wait_for_checkpoint(store: &Store) -> bool {
        let db = store.shared.lock().unwrap();
        let checkpointer = db.checkpointer.as_ref().unwrap();
        checkpointer.wait_for(1, Duration::from_secs(60))
    }

    #[test]
    fn the_wal_is_checkpointed_on_its_own_thread_not_in_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = open(&path, None);
        write_past_the_threshold(&store, 0);
        assert!(wait_for_checkpoint(&store), "the checkpoint thread ran");
        assert_eq!(checkpoints(&store).1, 0, "no commit checkpointed itself");
        let copied = std::fs::metadata(&path).unwrap().len();
        assert!(
            copied > 5_000_000,
            "the pages are in the file: {copied} bytes"
        );
    }

    #[test]
    fn the_wal_file_is_cut_back_once_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let wal = dir.path().join("store.db-wal");
        let store = open(&path, None);
        write_past_the_threshold(&store, 0);
        let grown = std::fs::metadata(&wal).unwrap().len();
        assert!(
            grown > WAL_SIZE_LIMIT as u64,
            "the WAL grew to {grown} bytes"
        );
        assert!(wait_for_checkpoint(&store));
        // The next commit starts the WAL over, and cuts the file back as it does.
        store
            .insert(
                "notes",
                json!({"caseload_id": "north"}).as_object().unwrap().clone(),
            )
            .unwrap();
        let now = std::fs::metadata(&wal).unwrap().len();
        assert!(
            now <= WAL_SIZE_LIMIT as u64,
            "the WAL stayed at {now} bytes"
        );
    }

    #[test]
    fn an_encrypted_store_checkpoints_on_its_own_thread_before_and_after_a_rekey() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let (old_key, new_key) = (
            EncryptionKey::from_bytes([1; 32]),
            EncryptionKey::from_bytes([2; 32]),
        );
        let store = open(&path, Some(&old_key));
        write_past_the_threshold(&store, 0);
        assert!(wait_for_checkpoint(&store));
        store.rekey(&new_key).unwrap();
        // A new thread, keyed anew.
        assert_eq!(checkpoints(&store), (0, 0));
        write_past_the_threshold(&store, 1);
        assert!(wait_for_checkpoint(&store));
        assert_eq!(checkpoints(&store).1, 0);
        drop(store);
        let store = open(&path, Some(&new_key));
        assert_eq!(store.count("notes", &Filter::All).unwrap(), 300);
    }
}
