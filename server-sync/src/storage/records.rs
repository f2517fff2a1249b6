//! Records, their merge and the feed, as storage keeps them.

use std::collections::BTreeMap;

use automerge::{ActorId, ChangeHash};
use fieldsync_record::protocol::{PushRecord, PushResponse, Rejection};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::Result;
use crate::error::ServerError;

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
    /// Its epoch: 0 until it is first erased, one more at each erasure.
    pub epoch: u64,
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
    /// The epoch it stays in (a push never changes it).
    pub epoch: u64,
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
            epoch: self.epoch,
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
    /// The record's epoch the changes belong to.
    pub epoch: u64,
    /// For the entry that starts an epoch (its `changes` then hold the epoch's whole
    /// document): what the erasure took out, as [`Erasure::describe`] names it.
    ///
    /// [`Erasure::describe`]: fieldsync_record::erasure::Erasure::describe
    pub erased: Option<String>,
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
    /// Its epoch ([`StoredRecord::epoch`]).
    pub epoch: u64,
}

/// A record's next epoch, for the storage to write in place of everything it held: its
/// document, values and feed entries ([`Storage::erase_record`](super::Storage::erase_record)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEpoch {
    /// The epoch's number, one more than the record's.
    pub epoch: u64,
    /// The epoch's whole document.
    pub doc: Vec<u8>,
    /// Its values by root key, as JSON.
    pub fields_json: String,
    /// Whether it is deleted.
    pub deleted: bool,
    /// Its history's facts.
    pub lineage: Lineage,
    /// What was erased ([`Erasure::describe`](fieldsync_record::erasure::Erasure::describe)).
    pub erased: String,
    /// Who erased it: a user id, 0 for the command line on the server's host.
    pub by: i64,
    /// Why, as the administrator said it (it goes in the audit line).
    pub reason: String,
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
