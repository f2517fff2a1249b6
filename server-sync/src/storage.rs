//! What the server keeps, behind one trait so that backends (the embedded SQLite default, and
//! PostgreSQL for several server instances) are interchangeable and pass the same conformance
//! tests.
//!
//! The methods block; the HTTP layer calls them on tokio's blocking pool.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod postgres;
pub mod sqlite;

mod accounts;
mod audit;
mod push_pipeline;
mod records;
mod retention_policies;
mod stored_attachments;
mod stored_webhooks;

pub use accounts::*;
pub use audit::*;
pub use records::*;
pub use retention_policies::*;
pub use stored_attachments::*;
pub use stored_webhooks::*;

use std::path::PathBuf;
use std::sync::Arc;

use fieldsync_record::protocol::{Author, PushResponse};
use serde_bytes::ByteBuf;

use crate::error::ServerError;

/// A shorthand for storage results.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// Everything the server stores.
pub trait Storage: Send + Sync + 'static {
    /// Whether the database answers.
    fn ping(&self) -> Result<()>;

    /// Creates a user; the name must be new.
    fn create_user(&self, name: &str, role: Role) -> Result<i64>;
    /// A user's id by name.
    fn user_id(&self, name: &str) -> Result<Option<i64>>;
    /// How many users exist.
    fn count_users(&self) -> Result<u64>;
    /// Creates a device of a user.
    fn create_device(&self, user_id: i64, name: &str) -> Result<i64>;
    /// Revokes a device and so every token of it; false if there is no such device.
    fn revoke_device(&self, device_id: i64) -> Result<bool>;
    /// Every device with its user and last sync.
    fn list_devices(&self) -> Result<Vec<DeviceInfo>>;
    /// The user the identity provider knows as `sign_in.subject`: created on their first
    /// sign-in (named by the subject, as a member), their display name and email rewritten
    /// when the provider sends others. [`ServerError::Conflict`] if a user created by an
    /// administrator has the subject as name.
    fn sign_in(&self, sign_in: &SignIn<'_>) -> Result<i64>;
    /// A device by id, for authenticating a request that names it.
    fn device(&self, device_id: i64) -> Result<Option<DeviceRecord>>;
    /// A user's devices, revoked ones included.
    fn devices_of(&self, user_id: i64) -> Result<Vec<DeviceInfo>>;
    /// The scopes holding records whose names start with `prefix`, in byte order.
    fn scopes_with_prefix(&self, prefix: &str) -> Result<Vec<String>>;
    /// Stores a new token (its secret only as a hash).
    fn insert_token(
        &self,
        token_id: &str,
        device_id: i64,
        secret_hash: &[u8],
        expires_at: Option<i64>,
    ) -> Result<()>;
    /// Revokes a token; false if there is no such token.
    fn revoke_token(&self, token_id: &str) -> Result<bool>;
    /// A token by its public id.
    fn token(&self, token_id: &str) -> Result<Option<TokenRecord>>;
    /// Grants (or changes) a user's access to a scope.
    fn set_grant(&self, user_id: i64, scope: &str, access: Access) -> Result<()>;
    /// Removes a user's grant on a scope; false if there was none.
    fn revoke_grant(&self, user_id: i64, scope: &str) -> Result<bool>;
    /// A user's grants.
    fn grants(&self, user_id: i64) -> Result<Vec<Grant>>;
    /// Makes `actor` the device's actor, unless another device that is not revoked pushes or
    /// pushed as `actor` (a revoked device's actors may be taken over), or the device had it
    /// before. A device takes a new actor when its store was restored from an older copy; the
    /// actors it had stay its own, never taken again, and its outbox positions start over.
    /// Returns the device's actor, `None` while it has none.
    fn bind_actor(&self, device_id: i64, actor: &str) -> Result<Option<String>>;
    /// Whether the device pushed as `actor` before it took the actor it has now: a store that
    /// writes as it again is an older copy.
    fn retired_actor(&self, device_id: i64, actor: &str) -> Result<bool>;
    /// Whether [`Storage::bind_actor`] would make `actor` the device's actor now.
    fn actor_free(&self, device_id: i64, actor: &str) -> Result<bool>;
    /// Frees `actor` from the device holding it (now or before), so that another device may
    /// bind it: for an administrator, when a device took an actor that was not its own.
    /// False if no device holds it.
    fn release_actor(&self, actor: &str) -> Result<bool>;

    /// The stored state of each record named by `(collection, id)`, in order; `None` for a
    /// record the server does not have. A snapshot for merging ahead of [`Storage::push`],
    /// which hands each merge the state it must build on and may differ from this one.
    fn stored_records(&self, keys: &[(&str, &str)]) -> Result<Snapshot>;
    /// Applies a push in one transaction: a replayed batch (its id and records) returns the
    /// stored response and changes nothing; the id of a stored batch with other records is
    /// [`ServerError::BatchConflict`]; otherwise each record is merged by `merge` and written
    /// with its feed entry and audit line, or rejected and written only to the audit log, and
    /// the device's highest pushed outbox position and its [`Batch::pending_changes`] (if
    /// given) are kept with its last sync time. If the push stores anything and
    /// [`Batch::binds`] names an actor, the device is bound to it as by
    /// [`Storage::bind_actor`] in the same transaction; if another device took the actor
    /// meanwhile, nothing is written and the push fails with [`ServerError::TryAgain`].
    fn push(
        &self,
        device_id: i64,
        batch: &Batch<'_>,
        merge: &mut dyn Merge,
    ) -> Result<PushResponse>;
    /// What a pull checks of `device_id`: the highest outbox position it pushed, and the
    /// schema version it runs.
    fn device_sync(&self, device_id: i64) -> Result<DeviceSync>;
    /// Records the version of the app's schema `device_id` runs.
    fn set_device_schema_version(&self, device_id: i64, version: u32) -> Result<()>;
    /// Feed entries after `after` in the scopes, in feed order.
    fn feed_page(&self, scopes: &[String], after: i64, limit: u32) -> Result<Page<FeedEntry>>;
    /// Like [`Storage::feed_page`] without the entries device `reader` pushed, which it has:
    /// they count against `limit` and the page's position moves past them, but their changes
    /// are neither read nor decoded (a device's pull right after its push reads mostly its own).
    fn feed_page_for(
        &self,
        reader: i64,
        scopes: &[String],
        after: i64,
        limit: u32,
    ) -> Result<Page<FeedEntry>>;
    /// The feed's last position (0 while it is empty). Every change that commits after this
    /// call comes after it in the feed.
    fn feed_head(&self) -> Result<i64>;
    /// Whole records of the scopes created at a feed position after `after` and up to
    /// `up_to`, in that order (their creation never moves, so a push writes nothing to
    /// keep this order but the records it creates).
    fn documents_page(
        &self,
        scopes: &[String],
        after: i64,
        up_to: i64,
        limit: u32,
    ) -> Result<Page<DocumentEntry>>;
    /// Records a pull in the audit log, and the device's last sync time with the count of
    /// local changes it said wait in its outbox (`pending_changes`, kept as it was when
    /// `None`) and the feed position its cursor `reached` (kept if higher). A pull that brought nothing writes nothing if the last sync time is less than
    /// [`IDLE_PULL_RECORDED_EVERY_MS`] old and the count, if given, is the one stored and was
    /// recorded as recently.
    fn record_pull(
        &self,
        device_id: i64,
        records: &[(String, String, String)],
        pending_changes: Option<u64>,
        reached: i64,
    ) -> Result<()>;
    /// Who wrote the records `keys` name: each actor of each device that pushed to one of them,
    /// with its user's display name and the device's name, by actor, each once.
    fn authors_of(&self, keys: &[(&str, &str)]) -> Result<Vec<Author>>;
    /// Lines of the audit log, newest first.
    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>>;
    /// Writes a line to the audit log, at the current time.
    fn audit_line(&self, line: &NewAuditLine<'_>) -> Result<()>;
    /// Writes an administrator's action to the audit log: `by` the user (0 for the command
    /// line on the server's host), `action` what they did, `target` to what (a user's name, a
    /// device id, a scope), in the line's collection `admin` and record id.
    fn audit_admin(&self, by: i64, action: &str, target: &str) -> Result<()> {
        self.audit_line(&NewAuditLine {
            user_id: by,
            device_id: 0,
            action,
            collection: "admin",
            record_id: target,
            scope: "",
        })
    }
    /// Every user, in id order.
    fn list_users(&self) -> Result<Vec<UserInfo>>;
    /// The group mappings in force, by group and scopes.
    fn group_grants(&self) -> Result<Vec<StoredGroupGrant>>;
    /// Replaces every group mapping by `grants`, in one transaction.
    fn set_group_grants(&self, grants: &[StoredGroupGrant]) -> Result<()>;

    /// Stored records in (collection, id) order after `after`, at most `limit`: what
    /// `fieldsync-server check` reads the whole database through.
    fn records_after(&self, after: Option<(&str, &str)>, limit: u32) -> Result<Vec<ListedRecord>>;
    /// The live records of `collection` in `scope` whose ids come after `after` (byte order),
    /// at most `limit`, in id order: the records API's listing.
    fn records_in_scope(
        &self,
        collection: &str,
        scope: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<RecordValues>>;
    /// Every change the feed holds for a record, oldest entry first, as they were stored.
    fn feed_changes_of(&self, collection: &str, id: &str) -> Result<Vec<Vec<u8>>>;
    /// Writes `record` as the new state of the record `key` names, with a feed entry holding
    /// its `new_changes` and an audit line of `action` by the server itself (user and device
    /// 0), if the record is still at `version`; false, writing nothing, if another write came
    /// between. For what the server does to a record outside a push (a repair).
    fn rewrite_record(
        &self,
        key: (&str, &str),
        version: i64,
        record: &MergedRecord,
        action: &str,
    ) -> Result<bool>;
    /// Writes `epoch` in place of everything the record `key` names held, if it is still at
    /// `version`: its document and values, and its feed entries, which give way to one entry
    /// holding the epoch's whole document; with an audit line (`erase`) saying what was
    /// erased, by whom and why. False, writing nothing, if another write came between.
    fn erase_record(&self, key: (&str, &str), version: i64, epoch: &NewEpoch) -> Result<bool>;
    /// The records of a collection whose field (`key`: the collection and the field) holds a
    /// number below `before`, deleted or not, in id order after `after` (byte order), at most
    /// `limit`: what a retention policy ages out.
    fn records_aged(
        &self,
        key: (&str, &str),
        before: i64,
        after: &str,
        limit: u32,
    ) -> Result<Vec<RecordValues>>;
    /// Sets the retention policy of its collection, replacing any.
    fn set_retention_policy(&self, policy: &RetentionPolicy) -> Result<()>;
    /// Every retention policy, by collection.
    fn retention_policies(&self) -> Result<Vec<RetentionPolicy>>;
    /// Removes `collection`'s retention policy; false if it had none.
    fn remove_retention_policy(&self, collection: &str) -> Result<bool>;
    /// The feed position every reader in use has read up to: the lowest of the positions the
    /// pulls of devices not revoked that synced since `active_since` reached, and of
    /// webhooks' cursors; the feed's head if there is no such reader.
    fn feed_read_by_all(&self, active_since: i64) -> Result<i64>;
    /// Deletes the feed entries up to position `through` and remembers that it did (a pull
    /// from a cursor before it starts over, see [`DeviceSync::feed_pruned_through`]), and the
    /// push answers kept for replays stored before `answers_before` (ms since the epoch).
    fn prune_feed(&self, through: i64, answers_before: i64) -> Result<Pruned>;
    /// Deletes the audit lines from before `before` (ms since the epoch), by date only (the
    /// database refuses to delete a line newer than the latest such date), with an audit line
    /// (`audit-prune`) by user `by` (0: the command line). Returns how many were deleted.
    fn prune_audit(&self, before: i64, by: i64) -> Result<u64>;
    /// Leaves no copy of deleted bytes in the storage's own files where it can: the embedded
    /// SQLite database empties its WAL into the database file (whose deleted bytes were
    /// zeroed as they went). True if nothing was left behind (a reader holding an old
    /// snapshot keeps its WAL frames alive).
    fn scrub(&self) -> Result<bool>;

    /// The attachment `sha256` of `scope`, if the server holds or is receiving it.
    fn attachment(&self, scope: &str, sha256: &[u8; 32]) -> Result<Option<AttachmentState>>;
    /// Stores chunk `chunk` of the attachment `sha256` of `size` bytes in `scope`, recording
    /// the attachment if it is new: its `bytes`, or with `None` its arrival only, the bytes
    /// being in the attachment bucket. [`ServerError::Conflict`] if the server holds the
    /// attachment with another size; a chunk held already is left as it is.
    fn put_attachment_chunk(
        &self,
        scope: &str,
        sha256: &[u8; 32],
        size: u64,
        chunk: u32,
        bytes: Option<&[u8]>,
    ) -> Result<ChunkStored>;
    /// Chunk `chunk` of the attachment `sha256` of `scope`, if held.
    fn attachment_chunk(
        &self,
        scope: &str,
        sha256: &[u8; 32],
        chunk: u32,
    ) -> Result<Option<StoredChunk>>;
    /// Marks the attachment complete: every chunk is in and the caller checked the whole.
    fn complete_attachment(&self, scope: &str, sha256: &[u8; 32]) -> Result<()>;
    /// Drops an attachment and its chunks; false if the server held none.
    fn delete_attachment(&self, scope: &str, sha256: &[u8; 32]) -> Result<bool>;
    /// Attachments after `after` in (scope, SHA-256) order, at most `limit`.
    fn attachments_after(
        &self,
        after: Option<(&str, &[u8; 32])>,
        limit: u32,
    ) -> Result<Vec<ListedAttachment>>;

    /// Adds a webhook of user `user_id` posting to `url`, signed with `secret`, from feed
    /// position `cursor` on; its id.
    fn create_webhook(&self, url: &str, secret: &str, user_id: i64, cursor: i64) -> Result<i64>;
    /// Every webhook, by id.
    fn webhooks(&self) -> Result<Vec<Webhook>>;
    /// Removes a webhook; false if there was none.
    fn delete_webhook(&self, id: i64) -> Result<bool>;
    /// Takes webhook `id` for a delivery until `until`, if it is due at `now` and no instance
    /// holds it; false otherwise.
    fn lease_webhook(&self, id: i64, now: i64, until: i64) -> Result<bool>;
    /// Records how a delivery of webhook `id` ended at `now`, and releases it.
    fn end_webhook_delivery(&self, id: i64, delivery: &Delivery, now: i64) -> Result<()>;

    /// The number of the schema version in force, 0 while none was set: cheap enough to ask
    /// on every push, which reads the schema again only when it changed.
    fn schema_version(&self) -> Result<u32>;
    /// The schema version in force, if one was set.
    fn current_schema(&self) -> Result<Option<StoredSchema>>;
    /// Every schema version, oldest first.
    fn schema_history(&self) -> Result<Vec<StoredSchema>>;
    /// Stores `schema_json` as `version`; false, storing nothing, when that version exists
    /// already (someone set another schema meanwhile, which the caller checks against again).
    fn add_schema(&self, version: u32, schema_json: &str) -> Result<bool>;
    /// How many live devices synced at or after `since` (ms since the epoch).
    fn active_devices(&self, since: i64) -> Result<u64>;
    /// Per scope with feed entries, how many feed positions its slowest reader in use is
    /// behind the scope's last entry: the scope's last position less the lowest position
    /// reached by the devices not revoked that synced since `active_since` (ms since the
    /// epoch) of users granted the scope, and by the cursors of those users' webhooks; 0 where
    /// none is behind or no such reader reads the scope. In scope order; one query.
    fn feed_lag(&self, active_since: i64) -> Result<Vec<(String, i64)>>;
    /// Registers the backend's own series for `/metrics`: what making commits durable costs,
    /// where the backend does it itself (the embedded SQLite file; PostgreSQL flushes inside
    /// the database).
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}

/// Where the server keeps its data, as named by `--db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, created if missing (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://` or `postgresql://`), shared by several instances.
    Postgres(String),
}

impl Database {
    /// Reads `--db`: a PostgreSQL URL, or else a SQLite file path.
    pub fn parse(text: &str) -> Database {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Database::Postgres(text.to_owned())
        } else {
            Database::Sqlite(PathBuf::from(text))
        }
    }

    /// Opens the database and brings its schema up to date; `connections` bounds the
    /// PostgreSQL connections this process keeps (SQLite uses one).
    pub fn open(&self, connections: u32) -> Result<Arc<dyn Storage>> {
        Ok(match self {
            Database::Sqlite(path) => Arc::new(sqlite::SqliteStorage::open(path)?),
            Database::Postgres(url) => Arc::new(postgres::PostgresStorage::open(url, connections)?),
        })
    }
}

/// Shows the database for messages: a PostgreSQL URL without its password.
impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

/// `postgres://user:secret@host/db` becomes `postgres://user:***@host/db`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// How often, at most, an idle pull whose cursor moved (past the device's own changes, say)
/// records how far it reached, for pruning: a position up to this old only holds pruning back.
pub const FEED_POSITION_RECORDED_EVERY_MS: i64 = 3_600_000;

/// How stale a device's last sync time may grow before a pull that brought nothing updates
/// it. A device's sync after a local write pushes (which records the time) and then pulls,
/// usually nothing; a write for that pull would cost a commit and, on SQLite, a WAL flush to
/// wait for, to move a time that the device list and `active_devices` read to the minute.
pub const IDLE_PULL_RECORDED_EVERY_MS: i64 = 60_000;

/// Milliseconds since the epoch.
/// A push's new actor was bound by another device between the check and the push.
fn actor_taken_meanwhile() -> ServerError {
    ServerError::TryAgain("another device took this push's actor meanwhile".into())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A device's count of pending changes as a signed 64-bit column holds it (the HTTP layer
/// takes none larger; a larger one is stored as the largest).
pub(crate) fn stored_count(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A stored count of pending changes, as [`DeviceInfo`] lists it.
pub(crate) fn listed_count(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or(0)
}

/// A pushed record's collection, id or scope as an audit line of its refusal keeps it. A
/// refused record's names may be anything a client sent: they are cut to a bounded length,
/// and a NUL (which PostgreSQL text cannot hold) is replaced.
pub(crate) fn audited_name(name: &str) -> String {
    name.chars()
        .take(128)
        .map(|c| {
            if c == '\0' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// A record's epoch as a signed 64-bit column holds it.
pub(crate) fn stored_epoch(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

/// A stored epoch, as [`StoredRecord::epoch`] holds it.
pub(crate) fn listed_epoch(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or(0)
}

/// The `detail` of an erasure's audit line: what was erased and why.
pub(crate) fn erasure_detail(epoch: &NewEpoch) -> String {
    format!("erased {}; reason: {}", epoch.erased, epoch.reason)
}

/// A feed entry's changes as stored: a MessagePack list of byte strings.
fn encode_changes(changes: &[Vec<u8>]) -> Vec<u8> {
    let list: Vec<ByteBuf> = changes.iter().cloned().map(ByteBuf::from).collect();
    rmp_serde::to_vec(&list).expect("byte lists always serialize")
}

fn decode_changes(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let list: Vec<ByteBuf> = rmp_serde::from_slice(bytes)
        .map_err(|_| ServerError::Corrupt("a feed entry does not decode".into()))?;
    Ok(list.into_iter().map(ByteBuf::into_vec).collect())
}

#[cfg(test)]
mod tests {
    use automerge::{ActorId, ChangeHash};

    use super::*;

    #[test]
    fn db_names_a_sqlite_file_or_a_postgres_url_and_hides_its_password() {
        assert_eq!(
            Database::parse("server.db"),
            Database::Sqlite("server.db".into())
        );
        let db = Database::parse("postgres://fs:s3cret@db.example:5432/fieldsync?sslmode=disable");
        assert!(matches!(db, Database::Postgres(_)));
        assert_eq!(
            db.to_string(),
            "postgres://fs:***@db.example:5432/fieldsync?sslmode=disable"
        );
        assert_eq!(
            Database::parse("postgresql://fs@localhost/fieldsync").to_string(),
            "postgresql://fs@localhost/fieldsync"
        );
    }

    #[test]
    fn lineages_written_before_root_operations_were_kept_still_read() {
        let head = ChangeHash([3; 32]);
        let actor = ActorId::from(&[5u8; 16][..]);
        // The four fields lineages had then, in their order.
        let old = rmp_serde::to_vec(&(
            vec![ByteBuf::from(head.0.to_vec())],
            9u64,
            2u32,
            Some((ByteBuf::from(actor.to_bytes().to_vec()), 4u64)),
        ))
        .unwrap();
        let read = Lineage::decode(&old).unwrap();
        assert_eq!(
            read,
            Lineage {
                heads: vec![head],
                max_op: 9,
                appended: 2,
                head_change: Some((actor.clone(), 4)),
                root_ops: None,
            }
        );
        let with_ops = Lineage {
            root_ops: Some(
                [
                    (
                        "a".to_owned(),
                        vec![(1, actor.clone()), (2, ActorId::random())],
                    ),
                    ("b".to_owned(), vec![(3, actor)]),
                    ("c".to_owned(), vec![]),
                ]
                .into(),
            ),
            ..read
        };
        assert_eq!(Lineage::decode(&with_ops.encode()), Some(with_ops));
    }
}
