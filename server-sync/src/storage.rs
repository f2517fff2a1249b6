//! What the server keeps, behind one trait so that backends (the embedded SQLite default, and
//! PostgreSQL for several server instances) are interchangeable and pass the same conformance
//! tests.
//!
//! The methods block; the HTTP layer calls them on tokio's blocking pool.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use automerge::{ActorId, ChangeHash};
use fieldsync_record::protocol::{PushRecord, PushResponse, Rejection};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::ServerError;

/// A shorthand for storage results.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May use the admin API with a device token of theirs.
    Admin,
    /// A therapist or other member of staff.
    Member,
    /// A service account: the clinic's own system (an EHR connector, a scheduling system)
    /// using the records API with a token of its own, within its grants.
    Service,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Service => "service",
        }
    }

    /// Reads a stored name.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

/// What a grant allows on a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Pull the scope's records.
    Read,
    /// Pull and push.
    Write,
}

impl Access {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }

    /// Reads a stored name.
    pub fn parse(name: &str) -> Option<Access> {
        match name {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            _ => None,
        }
    }
}

/// One scope a user may read or write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The scope (a caseload, a team, a clinic).
    pub scope: String,
    /// What it allows.
    pub access: Access,
}

/// A stored token, found by its public id.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// The token's device.
    pub device_id: i64,
    /// The device's user.
    pub user_id: i64,
    /// SHA-256 of the token's secret part.
    pub secret_hash: Vec<u8>,
    /// When it stops working (ms since the epoch), if ever.
    pub expires_at: Option<i64>,
    /// Whether the token, or its device, was revoked.
    pub revoked: bool,
    /// The Automerge actor bound to the device by its first push, if any.
    pub actor: Option<String>,
    /// The device's user's role.
    pub role: Role,
}

/// A device as the admin command lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device id.
    pub id: i64,
    /// Its user's name.
    pub user: String,
    /// Device name.
    pub name: String,
    /// The Automerge actor it pushes as, once bound.
    pub actor: Option<String>,
    /// Last push or pull (ms since the epoch).
    pub last_sync_at: Option<i64>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// The version of the app's schema it last said it runs.
    pub schema_version: Option<u32>,
    /// How many local changes it last said wait in its outbox, unsent (the
    /// `fieldsync-pending-changes` header of a push or pull); `None` until it says.
    pub pending_changes: Option<u64>,
    /// When it said so (ms since the epoch): its last sync, unless it synced since without
    /// saying (an app from before the header).
    pub pending_reported_at: Option<i64>,
}

/// A device as authentication reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its user.
    pub user_id: i64,
    /// The Automerge actor it pushes as, once bound.
    pub actor: Option<String>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A user as the admin API lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User id.
    pub id: i64,
    /// Their unique name (for people who sign in through the identity provider, their
    /// subject).
    pub name: String,
    /// Their stored role.
    pub role: Role,
    /// Their name as the identity provider last sent it.
    pub display_name: Option<String>,
    /// Their email as the identity provider last sent it.
    pub email: Option<String>,
    /// Whether they sign in through the identity provider.
    pub signs_in: bool,
    /// When they were created (ms since the epoch).
    pub created_at: i64,
}

/// One stored mapping of an identity provider's group to a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGroupGrant {
    /// The group, as the provider names it in tokens.
    pub group: String,
    /// A scope, or a prefix followed by `*`.
    pub scopes: String,
    /// What its members may do there.
    pub access: Access,
}

/// An attachment the server holds, or is receiving, in a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentState {
    /// Its length in bytes.
    pub size: u64,
    /// The numbers of the chunks held, in order.
    pub received: Vec<u32>,
    /// Whether every chunk is in and the whole matched its hash.
    pub complete: bool,
}

/// An attachment as the collection of unreferenced ones lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAttachment {
    /// Its scope.
    pub scope: String,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its size.
    pub size: u64,
    /// When its first chunk arrived (ms since the epoch).
    pub created_at: i64,
}

/// A stored chunk of an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredChunk {
    /// Its bytes, kept in the database.
    Bytes(Vec<u8>),
    /// It arrived, and its bytes are in the attachment bucket.
    InBucket,
}

/// What storing an attachment's chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStored {
    /// The chunk was new.
    New,
    /// The server held it already (a retry after a lost answer): nothing was written.
    AlreadyHeld,
}

/// A webhook: a URL that receives, in order, the changes its owner may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Its id.
    pub id: i64,
    /// Where changes are posted.
    pub url: String,
    /// The key its deliveries are signed with.
    pub secret: String,
    /// The user (a service account) whose grants say which scopes' changes it receives.
    pub user_id: i64,
    /// That user's name.
    pub user: String,
    /// The feed position delivered up to.
    pub cursor: i64,
    /// When it was added (ms since the epoch).
    pub created_at: i64,
    /// Failed deliveries in a row.
    pub attempts: u32,
    /// Since when deliveries fail, while they do.
    pub failing_since: Option<i64>,
    /// Why the last one failed, while they do.
    pub last_error: Option<String>,
    /// The earliest the next delivery is tried.
    pub next_attempt_at: i64,
}

/// How a webhook's delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver took every change up to `cursor`.
    Delivered {
        /// The feed position now delivered up to.
        cursor: i64,
    },
    /// The receiver did not take them; tried again from `retry_at`.
    Failed {
        /// Why, for administrators (never a record's value).
        error: String,
        /// When to try again (ms since the epoch).
        retry_at: i64,
    },
    /// There was nothing to deliver.
    Idle,
}

/// Who the clinic's identity provider says signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignIn<'a> {
    /// The provider's stable id for the person (`sub`); also their user name here.
    pub subject: &'a str,
    /// Their name as the provider sends it.
    pub display_name: Option<&'a str>,
    /// Their email as the provider sends it.
    pub email: Option<&'a str>,
}

/// What a pull checks of its device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceSync {
    /// The highest outbox position the device pushed under its current actor, if it said.
    pub outbox_seq: Option<i64>,
    /// The version of the app's schema it last said it runs.
    pub schema_version: Option<u32>,
}

/// A record's stored state, handed to the merge step of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its scope, fixed at creation.
    pub scope: String,
    /// The Automerge document: a save (or a first change), then any changes appended since.
    pub doc: Vec<u8>,
    /// Its values by root key, as JSON.
    pub fields_json: String,
    /// Whether it is deleted.
    pub deleted: bool,
    /// What is known of its history without loading it; `None` for records stored before
    /// that was kept (or whose lineage does not decode): they merge the slow way.
    pub lineage: Option<Lineage>,
    /// The feed position of the push that wrote it (`updated_seq`), which no other write
    /// shares: a record whose version has not moved has not changed. `None` for a state not
    /// written yet.
    pub version: Option<i64>,
}

/// A record's values, as [`Storage::records_in_scope`] lists them (without its document).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordValues {
    /// Record id.
    pub id: String,
    /// Its values by root key, as JSON.
    pub fields_json: String,
    /// Its version ([`StoredRecord::version`]).
    pub version: i64,
}

/// A stored record with its key, as [`Storage::records_after`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedRecord {
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// Its stored state.
    pub stored: StoredRecord,
}

/// A record after a push merged into it, for the storage to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedRecord {
    /// The document to store.
    pub doc: Vec<u8>,
    /// Its values by root key, as JSON.
    pub fields_json: String,
    /// Whether it is deleted.
    pub deleted: bool,
    /// The changes the server did not have before, for the feed.
    pub new_changes: Vec<Vec<u8>>,
    /// Its history's facts after the merge.
    pub lineage: Lineage,
}

impl MergedRecord {
    /// The stored state this merge leaves, as a later merge of the same record is handed it.
    pub fn to_stored(&self, scope: &str) -> StoredRecord {
        StoredRecord {
            scope: scope.to_owned(),
            doc: self.doc.clone(),
            fields_json: self.fields_json.clone(),
            deleted: self.deleted,
            lineage: Some(self.lineage.clone()),
            version: None,
        }
    }
}

/// What the server knows of a record's Automerge history without loading its document: enough
/// to tell whether pushed changes follow the stored document in line, which sync.rs then
/// appends without a load. Stored as MessagePack in `records.lineage`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// The document's heads.
    pub heads: Vec<ChangeHash>,
    /// The largest operation counter in the document.
    pub max_op: u64,
    /// How many changes were appended to the stored bytes since they were saved whole.
    pub appended: u32,
    /// With a single head: the actor and sequence number of that change.
    pub head_change: Option<(ActorId, u64)>,
    /// For each key of the document's root, the operations holding its value (more than one
    /// after concurrent writes), which a change that follows in line names as what it
    /// overwrites. `None` in lineages written before they were kept.
    pub root_ops: Option<RootOps>,
}

/// Root keys and the operations (counter, actor) holding their values, each list sorted.
pub type RootOps = BTreeMap<String, Vec<(u64, ActorId)>>;

/// [`Lineage`] as stored.
#[derive(Serialize, Deserialize)]
struct StoredLineage {
    heads: Vec<ByteBuf>,
    max_op: u64,
    appended: u32,
    head_change: Option<(ByteBuf, u64)>,
    /// The actors `root_ops` refers to by position.
    #[serde(default)]
    actors: Vec<ByteBuf>,
    #[serde(default)]
    root_ops: Option<Vec<StoredRootKey>>,
}

/// A root key and its operations, each a counter and a position in `actors`.
type StoredRootKey = (String, Vec<(u64, u32)>);

impl Lineage {
    /// The bytes the storage keeps.
    pub fn encode(&self) -> Vec<u8> {
        let mut stored = StoredLineage {
            heads: self
                .heads
                .iter()
                .map(|h| ByteBuf::from(h.0.to_vec()))
                .collect(),
            max_op: self.max_op,
            appended: self.appended,
            head_change: self
                .head_change
                .as_ref()
                .map(|(actor, seq)| (ByteBuf::from(actor.to_bytes().to_vec()), *seq)),
            actors: Vec::new(),
            root_ops: None,
        };
        if let Some(root_ops) = &self.root_ops {
            let mut actors: Vec<ActorId> = Vec::new();
            let mut position = |actor: &ActorId| {
                let found = actors.iter().position(|known| known == actor);
                found.unwrap_or_else(|| {
                    actors.push(actor.clone());
                    actors.len() - 1
                }) as u32
            };
            let root_ops = root_ops
                .iter()
                .map(|(key, ops)| {
                    let ops = ops
                        .iter()
                        .map(|(counter, actor)| (*counter, position(actor)));
                    (key.clone(), ops.collect())
                })
                .collect();
            stored.root_ops = Some(root_ops);
            stored.actors = actors
                .into_iter()
                .map(|actor| ByteBuf::from(actor.to_bytes().to_vec()))
                .collect();
        }
        rmp_serde::to_vec(&stored).expect("lineages always serialize")
    }

    /// Decodes stored bytes; `None` if they do not decode, which only costs the record a
    /// slow merge (that writes a new lineage).
    pub fn decode(bytes: &[u8]) -> Option<Lineage> {
        let stored: StoredLineage = rmp_serde::from_slice(bytes).ok()?;
        let heads = stored
            .heads
            .iter()
            .map(|h| ChangeHash::try_from(h.as_slice()).ok())
            .collect::<Option<Vec<_>>>()?;
        let actors: Vec<ActorId> = stored
            .actors
            .iter()
            .map(|actor| ActorId::from(actor.as_slice()))
            .collect();
        let root_ops = match stored.root_ops {
            Some(root_ops) => Some(
                root_ops
                    .into_iter()
                    .map(|(key, ops)| {
                        let ops = ops.into_iter().map(|(counter, actor)| {
                            Some((counter, actors.get(actor as usize)?.clone()))
                        });
                        Some((key, ops.collect::<Option<Vec<_>>>()?))
                    })
                    .collect::<Option<RootOps>>()?,
            ),
            None => None,
        };
        Some(Lineage {
            heads,
            max_op: stored.max_op,
            appended: stored.appended,
            head_change: stored
                .head_change
                .map(|(actor, seq)| (ActorId::from(actor.as_slice()), seq)),
            root_ops,
        })
    }
}

/// The merge step of a push: given a pushed record and its stored state, the merged record,
/// or why the pushed record is refused. [`Storage::push`] asks, record by record under its
/// transaction, for the merge made ahead against what is stored now, and reads the record
/// whole for [`Merge::merge`] only when there is none.
///
/// Any closure taking the record and its stored state is a `Merge` that merges everything
/// under the transaction.
pub trait Merge {
    /// The merge of `record` made before the transaction, if it was made against the state
    /// `now` names; `None` otherwise, and then the storage calls [`Merge::merge`]. Called once
    /// for each pushed record, in push order.
    fn merged_ahead(
        &mut self,
        record: &PushRecord,
        now: StoredVersion,
    ) -> Option<Result<MergedRecord, Rejection>>;
    /// Merges `record` into `stored`, its state read under the transaction.
    fn merge(
        &mut self,
        record: &PushRecord,
        stored: Option<StoredRecord>,
    ) -> Result<MergedRecord, Rejection>;
    /// The mark of the [`Snapshot`] the merges ahead were made against. A storage that finds
    /// under its transaction that nothing has changed since names each record the push has
    /// not written yet [`StoredVersion::Current`] instead of looking its version up.
    fn snapshot_mark(&self) -> Option<SnapshotMark> {
        None
    }
}

/// Stored states read for merging ahead of a push ([`Storage::stored_records`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Each named record's state, in order; `None` for a record the server does not have.
    pub records: Vec<Option<StoredRecord>>,
    /// What the storage looked like when the states were read, if it can tell later whether
    /// anything changed since ([`Merge::snapshot_mark`]).
    pub mark: Option<SnapshotMark>,
}

/// A storage's own note of its state when a [`Snapshot`] was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMark {
    /// Rows the storage's connection had changed (SQLite's total changes).
    pub(crate) changes: u64,
    /// How many times other connections had committed, as SQLite counts (`data_version`).
    pub(crate) others: i64,
}

impl<F> Merge for F
where
    F: FnMut(&PushRecord, Option<StoredRecord>) -> Result<MergedRecord, Rejection>,
{
    fn merged_ahead(
        &mut self,
        _record: &PushRecord,
        _now: StoredVersion,
    ) -> Option<Result<MergedRecord, Rejection>> {
        None
    }

    fn merge(
        &mut self,
        record: &PushRecord,
        stored: Option<StoredRecord>,
    ) -> Result<MergedRecord, Rejection> {
        self(record, stored)
    }
}

/// What a push's transaction finds stored for a record, named without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredVersion {
    /// No such record.
    Absent,
    /// The record as the push at this feed position wrote it ([`StoredRecord::version`]).
    Written(i64),
    /// The record as an earlier copy of it in the same push left it.
    ThisPush,
    /// The record as the snapshot the merge names ([`Merge::snapshot_mark`]) read it: nothing
    /// has changed since.
    Current,
}

/// One push's records and what names the batch.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The device's batch id.
    pub id: &'a str,
    /// The records, in order.
    pub records: &'a [PushRecord],
    /// SHA-256 of the records: a stored batch id answers again only the same records.
    pub hash: [u8; 32],
    /// The device's outbox position of the batch's last record, if it counts its writes.
    pub outbox_seq: Option<i64>,
    /// An actor the device pushes as for the first time, bound to it if the push stores
    /// anything (a push whose records are all refused binds nothing).
    pub binds: Option<&'a str>,
    /// How many local changes the device said wait in its outbox, this batch's included, if
    /// it said: recorded with its last sync time.
    pub pending_changes: Option<u64>,
}

impl<'a> Batch<'a> {
    /// The batch `id` of `records`.
    pub fn new(id: &'a str, records: &'a [PushRecord]) -> Batch<'a> {
        Batch {
            id,
            records,
            hash: batch_hash(records),
            outbox_seq: None,
            binds: None,
            pending_changes: None,
        }
    }
}

/// The answer to a batch whose id the device used before (`stored`: the stored answer and the
/// hash of the records it answered, which batches stored before hashes were kept lack): that
/// answer if the records are the same, [`ServerError::BatchConflict`] if not.
pub(crate) fn replayed(
    batch: &Batch<'_>,
    stored: (Vec<u8>, Option<Vec<u8>>),
) -> Result<PushResponse> {
    let (answer, hash) = stored;
    if hash.is_some_and(|hash| hash != batch.hash) {
        return Err(ServerError::BatchConflict);
    }
    rmp_serde::from_slice(&answer)
        .map_err(|_| ServerError::Corrupt("a stored push answer does not decode".into()))
}

/// What identifies a batch's contents: each record's collection, id, scope and Automerge
/// bytes, length-prefixed so that no two lists of records hash alike by shifting bytes.
fn batch_hash(records: &[PushRecord]) -> [u8; 32] {
    use fieldsync_record::protocol::Payload;
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    for record in records {
        field(record.collection.as_bytes());
        field(record.id.as_bytes());
        field(record.scope.as_bytes());
        match &record.payload {
            Payload::Changes(changes) => {
                field(b"changes");
                changes.iter().for_each(|change| field(change));
            }
            Payload::Document(doc) => {
                field(b"document");
                field(doc);
            }
        }
    }
    hash.finalize().into()
}

/// One feed entry: the new changes one push brought to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// Position in the feed.
    pub seq: i64,
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub record_id: String,
    /// Scope of the record.
    pub scope: String,
    /// The device that pushed them.
    pub device_id: i64,
    /// Automerge changes.
    pub changes: Vec<Vec<u8>>,
    /// The record's current values (JSON) and deleted flag, when this entry is its latest
    /// change: a device holding everything before it can then store them without loading
    /// the document. Read in the same snapshot as the entry.
    pub latest: Option<(String, bool)>,
    /// When the push that brought them was stored (ms since the epoch).
    pub committed_at: i64,
}

/// A whole record, for first syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentEntry {
    /// Feed position of the change that created the record.
    pub created_seq: i64,
    /// Feed position of the record's last change (its version).
    pub seq: i64,
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub record_id: String,
    /// Scope of the record.
    pub scope: String,
    /// The saved document.
    pub doc: Vec<u8>,
    /// Its values by root key, as JSON.
    pub fields_json: String,
    /// Whether it is deleted.
    pub deleted: bool,
}

/// One page of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The entries.
    pub entries: Vec<T>,
    /// The feed position the page reaches; the next page starts after it.
    pub last_seq: i64,
    /// Whether more entries wait after `last_seq`.
    pub more: bool,
}

impl<T> Page<T> {
    /// The page made of up to `limit + 1` rows read after `after`: the extra row only tells
    /// that more are waiting.
    pub(crate) fn from_rows(
        mut entries: Vec<T>,
        after: i64,
        limit: u32,
        seq: impl Fn(&T) -> i64,
    ) -> Page<T> {
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        let last_seq = entries.last().map_or(after, seq);
        Page {
            entries,
            last_seq,
            more,
        }
    }

    /// Like [`Page::from_rows`], from rows by position, `None` for a row read but left out.
    pub(crate) fn from_rows_leaving_out(
        mut rows: Vec<(i64, Option<T>)>,
        after: i64,
        limit: u32,
    ) -> Page<T> {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let last_seq = rows.last().map_or(after, |(seq, _)| *seq);
        Page {
            entries: rows.into_iter().filter_map(|(_, entry)| entry).collect(),
            last_seq,
            more,
        }
    }

    /// The page of a caller who may read no scope: nothing, and the cursor stays.
    pub(crate) fn empty(after: i64) -> Page<T> {
        Page {
            entries: Vec::new(),
            last_seq: after,
            more: false,
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When (ms since the epoch).
    pub at: i64,
    /// Who.
    pub user: String,
    /// From which device.
    pub device_id: i64,
    /// `push`, `pull`, `refuse` for a pushed record the server refused, or `repair` for a
    /// record the server rebuilt (by the user `(server)`, device 0).
    pub action: String,
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub record_id: String,
    /// Scope of the record.
    pub scope: String,
    /// For `refuse`: the refusal's code (`forbidden_scope`, `invalid_record`, ...).
    pub code: Option<String>,
}

/// One version of the schema pushed records are validated against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSchema {
    /// The version, counted from 1; the newest is in force.
    pub version: u32,
    /// The schema as JSON (`fieldsync_record::Schema`).
    pub schema_json: String,
    /// When it was set (ms since the epoch).
    pub set_at: i64,
}

/// A line to write to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewAuditLine<'a> {
    /// Who (0: the server itself, or its command line).
    pub user_id: i64,
    /// From which device (0: none).
    pub device_id: i64,
    /// What was done.
    pub action: &'a str,
    /// To what: a record's collection, `admin` for an administrator's action, `attachment`.
    pub collection: &'a str,
    /// The record's id, the administrator's target, or the attachment's SHA-256.
    pub record_id: &'a str,
    /// The scope, if any.
    pub scope: &'a str,
}

/// Which audit lines to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this user's.
    pub user: Option<String>,
    /// Only this record's (or, for an administrator's action, this target's).
    pub record_id: Option<String>,
    /// Only lines at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// Only lines before this time (ms since the epoch).
    pub until: Option<i64>,
    /// At most this many, newest first.
    pub limit: u32,
}

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
    /// `None`). A pull that brought nothing writes nothing if the last sync time is less than
    /// [`IDLE_PULL_RECORDED_EVERY_MS`] old and the count, if given, is the one stored and was
    /// recorded as recently.
    fn record_pull(
        &self,
        device_id: i64,
        records: &[(String, String, String)],
        pending_changes: Option<u64>,
    ) -> Result<()>;
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
    /// Appends the backend's own series to the Prometheus text of `/metrics`: what making
    /// commits durable costs, where the backend does it itself (the embedded SQLite file;
    /// PostgreSQL flushes inside the database).
    fn render_metrics(&self, _out: &mut String) {}
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
