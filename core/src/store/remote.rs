//! Merging changes that came from elsewhere: the sync engine's entry point.
//!
//! Each record merges or is rejected on its own (inside a savepoint), and the whole batch
//! commits in one transaction. Changes whose dependencies have not arrived wait in
//! `pending_changes` and are retried whenever more changes for the record come in.

use std::collections::{HashMap, HashSet};

use automerge::{Change, ChangeHash};
use rusqlite::{Transaction, TransactionBehavior};

use super::tables::TableSql;
use super::{CachedDoc, Db, DocKey, Shared, epochs, read};
use crate::document;
use crate::error::{Error, Result};
use crate::merge::{decode_change, guarded};
use crate::protocol::{self, Author, DecodeError};
use crate::subscription::Changed;
use crate::value::Fields;
use fieldsync_record::validate;

/// Changes or a whole document for one record, from another device or the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRecord {
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// The record's scope as the sender states it; it must match the document.
    pub scope: String,
    /// What to merge.
    pub payload: RemotePayload,
    /// The record's epoch the payload belongs to (0 until the server erases content from the
    /// record). A newer epoch than the store's replaces its copy (the payload is then the
    /// epoch's whole document); an older one is left out.
    pub epoch: u64,
}

/// What a [`RemoteRecord`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemotePayload {
    /// Individual Automerge changes, in any order; duplicates are ignored.
    Changes(Vec<Vec<u8>>),
    /// A saved Automerge document (for example a compacted first sync).
    Document(Vec<u8>),
}

impl RemotePayload {
    /// An outbox row's payload: one change, or (written by earlier versions) a saved document.
    pub(crate) fn from_outbox(is_document: bool, bytes: Vec<u8>) -> RemotePayload {
        if is_document {
            RemotePayload::Document(bytes)
        } else {
            RemotePayload::Changes(vec![bytes])
        }
    }
}

/// What [`Store::apply_remote`](crate::Store::apply_remote) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Records whose state changed.
    pub changed: usize,
    /// Records that were already up to date (the payload held nothing new).
    pub unchanged: usize,
    /// Changes kept aside, store-wide, until their dependencies arrive.
    pub waiting_changes: usize,
    /// Records that were not merged, and why. Nothing of them was written.
    pub rejected: Vec<RejectedRecord>,
    /// Records replaced by a new epoch: the server erased content from them.
    pub erased: usize,
    /// Of those, records whose unsent writes were made again on the new epoch (they wait in
    /// the outbox to be pushed).
    pub rebased: usize,
}

/// A record `apply_remote` refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// Why it was refused.
    pub reason: String,
}

/// A remote record and, when the server sent them, its current values and deleted flag: with
/// those, a whole document for a record new to this store is stored without loading it, and
/// changes that bring a record up to the server's state are appended without loading it.
pub(crate) struct Incoming {
    pub record: RemoteRecord,
    pub values: Option<(Fields, bool)>,
    /// The record's epoch on the server (see `epochs.rs`): a newer one than the store holds
    /// replaces its copy, an older one is left out.
    pub epoch: u64,
}

impl From<RemoteRecord> for Incoming {
    fn from(record: RemoteRecord) -> Incoming {
        Incoming {
            epoch: record.epoch,
            record,
            values: None,
        }
    }
}

/// What a pulled page does besides merging, in the same transaction.
#[derive(Default)]
pub(crate) struct PageEffects<'a> {
    /// Scopes to delete every local record of (hard delete, no tombstones).
    pub purge_scopes: &'a [String],
    /// The pull cursor to store with the merged records; `None` for records that come from
    /// elsewhere than the server's feed ([`Store::apply_remote`](crate::Store::apply_remote)).
    pub cursor: Option<&'a str>,
    /// Who the server says writes as each actor of the page's records.
    pub authors: &'a [Author],
}

/// The `sync_state` key set once records merged from elsewhere than the server's feed: the
/// store may then hold changes the server lacks, and the server's values no longer describe
/// its documents.
const MERGED_OUTSIDE_SYNC: &str = "merged_outside_sync";

pub(super) fn apply(
    shared: &Shared,
    db: &mut Db,
    incoming: Vec<Incoming>,
    effects: PageEffects<'_>,
) -> Result<(ApplyReport, Vec<Changed>, HashSet<DocKey>)> {
    let Db { conn, cache, .. } = db;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut report = ApplyReport::default();
    // A page may hold several feed entries of one record: it counts once.
    let mut changed_records: HashSet<DocKey> = HashSet::new();
    let mut changed = purge(shared, &tx, cache, effects.purge_scopes)?;
    let mut merged: HashMap<DocKey, CachedDoc> = HashMap::new();
    let now = super::now_ms();
    // Most pages find nothing kept aside; then no record needs to look for its own.
    let mut any_pending: bool =
        tx.query_row("SELECT EXISTS (SELECT 1 FROM pending_changes)", [], |row| {
            row.get(0)
        })?;
    let from_feed = effects.cursor.is_some();
    let mut epochs = epochs::local_epochs(&tx)?;
    let appendable = if from_feed && !any_pending {
        Appendable::read(&tx, &incoming)?
    } else {
        Appendable::default()
    };
    let mut ahead = if any_pending {
        HashMap::new()
    } else {
        merge_ahead(shared, &tx, cache, (&incoming, &epochs), &appendable, now)?
    };
    for Incoming {
        record,
        values,
        epoch,
    } in incoming
    {
        let key = (record.collection.clone(), record.id.clone());
        let local_epoch = epochs.get(&key).copied().unwrap_or(0);
        if epoch < local_epoch {
            // A change of an epoch the store has left: an erasure removed what it built on.
            report.unchanged += 1;
            continue;
        }
        if epoch > local_epoch {
            merged.remove(&key);
            cache.pop(&key);
            tx.prepare_cached("SAVEPOINT remote_record")?.execute([])?;
            let epochs_seen = (epoch, local_epoch);
            let replaced = guarded(|| epochs::replace(shared, &tx, &record, epochs_seen, now))
                .unwrap_or_else(|| {
                    Err(Error::InvalidRemoteChange {
                        collection: record.collection.clone(),
                        id: record.id.clone(),
                        reason: "the record's new epoch made Automerge fail".into(),
                    })
                });
            match replaced {
                Ok(replaced) => {
                    tx.prepare_cached("RELEASE remote_record")?.execute([])?;
                    report.erased += 1;
                    report.rebased += usize::from(replaced.rebased);
                    epochs.insert(key.clone(), epoch);
                    changed.push(replaced.changed);
                    changed_records.insert(key.clone());
                    merged.insert(key, replaced.doc);
                }
                Err(Error::Database(err)) => return Err(Error::Database(err)),
                Err(err) => {
                    tx.execute_batch("ROLLBACK TO remote_record; RELEASE remote_record")?;
                    if from_feed {
                        remember_refused(&tx, &record.collection, &record.id, now)?;
                    }
                    report.rejected.push(RejectedRecord {
                        collection: record.collection,
                        id: record.id,
                        reason: err.to_string(),
                    });
                }
            }
            continue;
        }
        let ahead = ahead.remove(&key);
        if let Some(Ahead::Damaged(reason)) = ahead {
            if from_feed {
                remember_refused(&tx, &record.collection, &record.id, now)?;
            }
            report.rejected.push(damaged(record, &reason));
            continue;
        }
        // A record merged ahead brings its document with it.
        let existing = match merged.remove(&key) {
            _ if ahead.is_some() => None,
            Some(doc) => Some(doc),
            None => match cache.pop(&key) {
                Some(doc) => Some(doc),
                None => {
                    // A whole document with its values is stored unread unless the store has
                    // the record (the insert then does nothing): a first sync looks nothing up.
                    // Changes with the record's latest values are appended unread.
                    let stored = match (values, &record.payload) {
                        (Some(values), RemotePayload::Document(bytes)) => {
                            store_known(shared, &tx, &record, values, bytes, now)?
                        }
                        (Some(values), RemotePayload::Changes(raw)) if appendable.allows(&key) => {
                            append_known(shared, &tx, &record, values, raw, now)?
                        }
                        _ => None,
                    };
                    if let Some(change) = stored {
                        changed.push(change);
                        changed_records.insert(key);
                        continue;
                    }
                    match load_existing(shared, &tx, &record) {
                        Ok(doc) => doc,
                        // A damaged local copy must not stall every later pull: its record is
                        // refused and the rest of the page merges.
                        Err(Error::Corrupt(reason)) => {
                            if from_feed {
                                remember_refused(&tx, &record.collection, &record.id, now)?;
                            }
                            report.rejected.push(damaged(record, &reason));
                            continue;
                        }
                        Err(err) => return Err(err),
                    }
                }
            },
        };
        tx.prepare_cached("SAVEPOINT remote_record")?.execute([])?;
        // Remote bytes reach Automerge in many places (decode, apply, materialize, save), and
        // Automerge panics on some crafted input: a panic anywhere in the merge rejects the
        // record like any other failure instead of unwinding through the caller.
        let outcome = guarded(|| match ahead {
            Some(Ahead::Merged(merge)) => {
                write_merge(shared, &tx, &record, (*merge)?, now, &mut any_pending)
            }
            _ => merge_one(shared, &tx, &record, existing, now, &mut any_pending),
        })
        .unwrap_or_else(|| {
            Err(Error::InvalidRemoteChange {
                collection: record.collection.clone(),
                id: record.id.clone(),
                reason: "the record's changes or document made Automerge fail".into(),
            })
        });
        match outcome {
            Ok(Outcome::Changed(doc, change)) => {
                tx.prepare_cached("RELEASE remote_record")?.execute([])?;
                changed_records.insert(key.clone());
                merged.insert(key, doc);
                changed.push(change);
            }
            Ok(Outcome::Unchanged(doc)) => {
                tx.prepare_cached("RELEASE remote_record")?.execute([])?;
                if let Some(doc) = doc {
                    merged.insert(key, doc);
                }
                report.unchanged += 1;
            }
            Err(Error::Database(err)) => return Err(Error::Database(err)),
            Err(err) => {
                // The document is dropped: the next read reloads the committed one.
                tx.execute_batch("ROLLBACK TO remote_record; RELEASE remote_record")?;
                if from_feed {
                    remember_refused(&tx, &record.collection, &record.id, now)?;
                }
                report.rejected.push(RejectedRecord {
                    collection: record.collection,
                    id: record.id,
                    reason: err.to_string(),
                });
            }
        }
    }
    for author in effects.authors {
        tx.prepare_cached(
            "INSERT INTO authors (actor, user_name, device_name) VALUES (?1, ?2, ?3)
             ON CONFLICT (actor) DO UPDATE SET user_name = excluded.user_name,
                 device_name = excluded.device_name",
        )?
        .execute(rusqlite::params![author.actor, author.user, author.device])?;
    }
    if let Some(cursor) = effects.cursor {
        tx.execute(
            "INSERT INTO sync_state (key, value) VALUES ('cursor', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [cursor],
        )?;
    }
    report.changed = changed_records.len();
    if !from_feed && report.changed > 0 {
        tx.prepare_cached(
            "INSERT INTO sync_state (key, value) VALUES (?1, '1') ON CONFLICT (key) DO NOTHING",
        )?
        .execute([MERGED_OUTSIDE_SYNC])?;
    }
    report.waiting_changes = tx.query_row("SELECT count(*) FROM pending_changes", [], |row| {
        row.get::<_, i64>(0)
    })? as usize;
    tx.commit()?;
    if report.erased > 0 {
        epochs::scrub_wal(conn)?;
    }
    for (key, doc) in merged {
        cache.put(key, doc);
    }
    Ok((report, changed, changed_records))
}

/// Remembers that this store refused pulled changes of a record (see [`Appendable`]).
fn remember_refused(tx: &Transaction<'_>, collection: &str, id: &str, now: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO refused_pulls (collection, record_id, refused_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (collection, record_id) DO UPDATE SET refused_at = excluded.refused_at",
    )?
    .execute(rusqlite::params![collection, id, now])?;
    Ok(())
}

fn damaged(record: RemoteRecord, reason: &str) -> RejectedRecord {
    RejectedRecord {
        collection: record.collection,
        id: record.id,
        reason: format!("the local copy is damaged: {reason}"),
    }
}

/// Pages with fewer records to merge ahead merge them on the calling thread: starting threads
/// would cost more than it saves.
const PARALLEL_MERGE_FROM: usize = 16;
/// At most this many threads merge one page.
const MAX_MERGE_THREADS: usize = 4;

/// A record merged ahead of the page's writes, on a worker thread.
enum Ahead {
    Merged(Box<Result<DocMerge>>),
    /// The stored document does not load.
    Damaged(String),
}

/// Where a document merged ahead comes from.
enum Source {
    Cached(Box<CachedDoc>),
    Stored(read::DocRow),
}

/// Merges in memory, on several threads, the records of a page that can merge without the
/// database: changes to a record the store has, named once in the page (a second mention
/// builds on the first) while no changes wait for their dependencies anywhere (those are read
/// and written as the record merges). Their documents are read here, loaded and merged on the
/// workers; the page's loop then only writes them, in order. Returns nothing for pages with
/// too few such records.
fn merge_ahead(
    shared: &Shared,
    tx: &Transaction<'_>,
    cache: &mut lru::LruCache<DocKey, CachedDoc>,
    (incoming, epochs): (&[Incoming], &HashMap<DocKey, u64>),
    appendable: &Appendable,
    now: i64,
) -> Result<HashMap<DocKey, Ahead>> {
    let threads = crate::parallel::threads(MAX_MERGE_THREADS);

    let mut mentions: HashMap<(&str, &str), usize> = HashMap::new();
    for Incoming { record, .. } in incoming {
        *mentions
            .entry((record.collection.as_str(), record.id.as_str()))
            .or_default() += 1;
    }
    let candidates: Vec<&RemoteRecord> = incoming
        .iter()
        // Records that may be appended unread, and records of another epoch than the store's,
        // are left to the page's loop.
        .filter(|incoming| incoming.values.is_none() || !appendable.allows_record(&incoming.record))
        .filter(|incoming| {
            let key = (
                incoming.record.collection.clone(),
                incoming.record.id.clone(),
            );
            incoming.epoch == epochs.get(&key).copied().unwrap_or(0)
        })
        .map(|incoming| &incoming.record)
        .filter(|record| {
            matches!(record.payload, RemotePayload::Changes(_))
                && mentions[&(record.collection.as_str(), record.id.as_str())] == 1
                && mergeable(shared, record)
        })
        .collect();
    if threads < 2 || candidates.len() < PARALLEL_MERGE_FROM {
        return Ok(HashMap::new());
    }
    let mut jobs = Vec::with_capacity(candidates.len());
    for record in candidates {
        let key = (record.collection.clone(), record.id.clone());
        let source = match cache.pop(&key) {
            Some(doc) => Source::Cached(Box::new(doc)),
            None => match read::read_doc_row(shared, tx, &record.collection, &record.id)? {
                Some(row) => Source::Stored(row),
                // New to the store: merged in turn.
                None => continue,
            },
        };
        jobs.push((key, record, source));
    }
    // A share whose thread failed is absent: the page's loop merges those records in turn.
    Ok(
        crate::parallel::map_in_shares(jobs, threads, |(key, record, source)| {
            (key, merge_one_ahead(shared, record, source, now))
        })
        .into_iter()
        .collect(),
    )
}

fn merge_one_ahead(shared: &Shared, record: &RemoteRecord, source: Source, now: i64) -> Ahead {
    // As in the page's loop, a panic inside Automerge rejects the record.
    guarded(|| {
        let existing = match source {
            Source::Cached(doc) => *doc,
            Source::Stored(row) => match row.load(shared, &record.collection) {
                Ok(doc) => doc,
                Err(Error::Corrupt(reason)) => return Ahead::Damaged(reason),
                Err(err) => return Ahead::Merged(Box::new(Err(err))),
            },
        };
        let merged = merge_doc(shared, record, Some(existing), Vec::new(), now);
        Ahead::Merged(Box::new(merged))
    })
    .unwrap_or_else(|| {
        Ahead::Merged(Box::new(Err(Error::InvalidRemoteChange {
            collection: record.collection.clone(),
            id: record.id.clone(),
            reason: "the record's changes or document made Automerge fail".into(),
        })))
    })
}

/// Stores a record new to this store from its document and the sender's values, without
/// loading the document; `None` if the store has the record (the caller then merges into it)
/// or the values do not fit the schema (the caller then merges the document the slow way,
/// which reports what is wrong).
fn store_known(
    shared: &Shared,
    tx: &Transaction<'_>,
    record: &RemoteRecord,
    (values, deleted): (Fields, bool),
    bytes: &[u8],
    now: i64,
) -> Result<Option<Changed>> {
    let collection = record.collection.as_str();
    let Some((table, fields)) = fit_values(shared, record, values) else {
        return Ok(None);
    };
    // The document is stored unread, but it is loaded on the first write, history or merge:
    // one that inflates past the limit, or whose bytes are not what their checksums say (a
    // document damaged on the server), must not get in this way. The merge then refuses it.
    let limit = protocol::MAX_RECORD_INFLATED_BYTES;
    if protocol::check_inflated_size(bytes, limit).is_err()
        || fieldsync_record::chunks::verify_checksums(bytes, limit).is_err()
    {
        return Ok(None);
    }
    let row = read::RowData {
        id: &record.id,
        stored: bytes,
        tail: 0,
        deleted,
        created_at: now,
        updated_at: now,
        fields: &fields,
    };
    let inserted = tx
        .prepare_cached(&table.insert_new)?
        .execute(rusqlite::params_from_iter(read::row_values(table, &row)))?;
    if inserted == 0 {
        return Ok(None);
    }
    let after = (!deleted).then_some(fields);
    Ok(Some(super::changed(collection, &record.id, None, after)))
}

/// The record's table and its declared fields out of the values the server sent for it;
/// `None` if the record is not one this store can hold as they stand (unknown collection,
/// invalid id, a value of the wrong type, a required field missing, another scope): the caller
/// then merges the Automerge data the slow way, which reports what is wrong.
fn fit_values<'s>(
    shared: &'s Shared,
    record: &RemoteRecord,
    mut values: Fields,
) -> Option<(&'s TableSql, Fields)> {
    let collection = record.collection.as_str();
    let table = shared.table(collection).ok()?;
    let decl = shared.schema.collection(collection).ok()?;
    super::write::check_id(&record.id).ok()?;
    let mut fields = Fields::new();
    for (name, field) in &decl.fields {
        match values.remove_entry(name).filter(|(_, v)| !v.is_null()) {
            Some((name, value))
                if crate::value::check_type(collection, &name, field, &value).is_ok() =>
            {
                fields.insert(name, value);
            }
            Some(_) => return None,
            None if field.required => return None,
            None => {}
        }
    }
    let scope = fields.get(&decl.scope_field).and_then(|v| v.as_str());
    (scope == Some(record.scope.as_str())).then_some((table, fields))
}

/// Which records of a pulled page may take the server's values with their changes instead of
/// a merge: the server's state of a record is the device's plus the page's changes only when
/// the device holds nothing the server lacks and lacks nothing before them. That is not so for
/// a record with unsent writes (in the outbox), with writes the server refused, with pulled
/// changes this store refused (`refused_pulls`: its copy may lack them, and appending what
/// depends on them would leave a document that does not load), or when changes were merged
/// from elsewhere than the feed; nor while changes wait for their dependencies.
#[derive(Default)]
struct Appendable {
    enabled: bool,
    /// Records with unsent or refused local writes, or refused pulled changes.
    excluded: std::collections::HashSet<DocKey>,
}

impl Appendable {
    fn read(tx: &Transaction<'_>, incoming: &[Incoming]) -> Result<Appendable> {
        let offered = incoming
            .iter()
            .any(|i| i.values.is_some() && matches!(i.record.payload, RemotePayload::Changes(_)));
        if !offered {
            return Ok(Appendable::default());
        }
        let merged_outside: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM sync_state WHERE key = ?1)")?
            .query_row([MERGED_OUTSIDE_SYNC], |row| row.get(0))?;
        if merged_outside {
            return Ok(Appendable::default());
        }
        let mut stmt = tx.prepare_cached(
            "SELECT collection, record_id FROM outbox
             UNION SELECT collection, record_id FROM rejected_writes WHERE reverted = 0
             UNION SELECT collection, record_id FROM refused_pulls",
        )?;
        let excluded = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Appendable {
            enabled: true,
            excluded,
        })
    }

    fn allows(&self, key: &DocKey) -> bool {
        self.enabled && !self.excluded.contains(key)
    }

    fn allows_record(&self, record: &RemoteRecord) -> bool {
        self.allows(&(record.collection.clone(), record.id.clone()))
    }
}

/// Appends pulled changes to a record's stored document and takes the server's values for it,
/// without loading the document (which costs far more than the rest of a merge); `None` when
/// the record must merge the slow way: its stored row is damaged or in another scope, the
/// values do not fit the schema, a change does not decode, the row's appended changes would
/// reach [`crate::stored::APPENDED_AT_MOST`] (the merge then saves it whole), or, for a record new
/// to the store, the changes are not its whole history. Only for records
/// [`Appendable::allows`].
fn append_known(
    shared: &Shared,
    tx: &Transaction<'_>,
    record: &RemoteRecord,
    (values, deleted): (Fields, bool),
    raw: &[Vec<u8>],
    now: i64,
) -> Result<Option<Changed>> {
    let collection = record.collection.as_str();
    let Some((table, fields)) = fit_values(shared, record, values) else {
        return Ok(None);
    };
    let Some(changes) = decode_bounded(raw) else {
        return Ok(None);
    };
    let Some(row) = read::read_doc_row(shared, tx, collection, &record.id)? else {
        if !is_whole_history(&changes) {
            return Ok(None);
        }
        let stored: Vec<u8> = raw.concat();
        let row = read::RowData {
            id: &record.id,
            stored: &stored,
            tail: changes.len() as u32 - 1,
            deleted,
            created_at: now,
            updated_at: now,
            fields: &fields,
        };
        tx.prepare_cached(&table.upsert)?
            .execute(rusqlite::params_from_iter(read::row_values(table, &row)))?;
        let after = (!deleted).then_some(fields);
        return Ok(Some(super::changed(collection, &record.id, None, after)));
    };
    let Ok(local) = row.fields else {
        return Ok(None);
    };
    let local_scope = shared
        .schema
        .collection(collection)
        .ok()
        .and_then(|decl| local.get(&decl.scope_field))
        .and_then(|v| v.as_str());
    let tail = row.tail.saturating_add(changes.len() as u32);
    if local_scope != Some(record.scope.as_str()) || tail >= crate::stored::APPENDED_AT_MOST {
        return Ok(None);
    }
    let mut stored = row.bytes;
    for bytes in raw {
        stored.extend_from_slice(bytes);
    }
    let update = read::RowData {
        id: &record.id,
        stored: &stored,
        tail,
        deleted,
        created_at: row.created_at,
        updated_at: now,
        fields: &fields,
    };
    read::update_row(tx, table, &update, &local, row.deleted)?;
    let before = (!row.deleted).then_some(local);
    let after = (!deleted).then_some(fields);
    Ok(Some(super::changed(collection, &record.id, before, after)))
}

/// The changes decoded, if each decodes and all of them together inflate to no more than a
/// record may.
fn decode_bounded(raw: &[Vec<u8>]) -> Option<Vec<Change>> {
    if raw.is_empty() {
        return None;
    }
    let mut budget = protocol::MAX_RECORD_INFLATED_BYTES;
    for bytes in raw {
        budget -= protocol::inflated_size(bytes, budget).ok()?;
    }
    raw.iter()
        .map(|bytes| decode_change(bytes.clone()))
        .collect()
}

/// Whether `changes`, in order, are a document's whole history: the first depends on nothing
/// and each later one only on changes before it.
fn is_whole_history(changes: &[Change]) -> bool {
    let mut seen = std::collections::HashSet::new();
    changes.iter().enumerate().all(|(i, change)| {
        let fits = if i == 0 {
            change.deps().is_empty()
        } else {
            change.deps().iter().all(|dep| seen.contains(dep))
        };
        seen.insert(change.hash());
        fits
    })
}

/// Deletes every local record of the scopes, with their outbox entries and waiting changes:
/// the user may no longer read them. Their unsent writes are kept as rejected writes first.
fn purge(
    shared: &Shared,
    tx: &Transaction<'_>,
    cache: &mut lru::LruCache<DocKey, CachedDoc>,
    scopes: &[String],
) -> Result<Vec<Changed>> {
    let mut changed = Vec::new();
    let now = super::now_ms();
    for scope in scopes {
        for (collection, id, _, payloads) in super::rejected::unsent_by_record(tx, Some(scope))? {
            if shared.schema.collections.contains_key(&collection) {
                super::rejected::keep_revoked(
                    shared,
                    tx,
                    (&collection, &id, scope),
                    &payloads,
                    now,
                )?;
            }
        }
        for (name, decl) in &shared.schema.collections {
            let table = shared.table(name)?;
            let purged = read::records_in_scope(shared, tx, name, &decl.scope_field, scope)?;
            for (id, fields) in purged {
                cache.pop(&(name.clone(), id.clone()));
                tx.prepare_cached(
                    "DELETE FROM pending_changes WHERE collection = ?1 AND record_id = ?2",
                )?
                .execute([name, &id])?;
                tx.prepare_cached(
                    "DELETE FROM refused_pulls WHERE collection = ?1 AND record_id = ?2",
                )?
                .execute([name, &id])?;
                changed.push(super::changed(name, &id, fields, None));
            }
            tx.execute(
                &format!(
                    "DELETE FROM {} WHERE \"{}\" = ?1",
                    table.table, decl.scope_field
                ),
                [scope],
            )?;
        }
        tx.execute("DELETE FROM outbox WHERE scope = ?1", [scope])?;
    }
    Ok(changed)
}

enum Outcome {
    Changed(CachedDoc, Changed),
    Unchanged(Option<CachedDoc>),
}

/// A record merged in memory, not yet written.
enum DocMerge {
    Unchanged {
        /// `None` for a record new to the store that brought nothing.
        doc: Option<CachedDoc>,
        waiting: Vec<Change>,
    },
    Changed {
        doc: CachedDoc,
        /// The live values before the merge, for observers.
        before: Option<Fields>,
        waiting: Vec<Change>,
    },
}

fn load_existing(
    shared: &Shared,
    tx: &Transaction<'_>,
    record: &RemoteRecord,
) -> Result<Option<CachedDoc>> {
    if mergeable(shared, record) {
        read::load_cached_doc(shared, tx, &record.collection, &record.id)
    } else {
        Ok(None)
    }
}

/// Whether the record names a collection of the schema and a valid id.
fn mergeable(shared: &Shared, record: &RemoteRecord) -> bool {
    shared.schema.collections.contains_key(&record.collection)
        && super::write::check_id(&record.id).is_ok()
}

fn merge_one(
    shared: &Shared,
    tx: &Transaction<'_>,
    record: &RemoteRecord,
    existing: Option<CachedDoc>,
    now: i64,
    any_pending: &mut bool,
) -> Result<Outcome> {
    let pending = match &record.payload {
        RemotePayload::Changes(_) if *any_pending && mergeable(shared, record) => {
            take_pending(tx, &record.collection, &record.id)?
        }
        _ => Vec::new(),
    };
    let merged = merge_doc(shared, record, existing, pending, now)?;
    write_merge(shared, tx, record, merged, now, any_pending)
}

/// The Automerge part of merging one record, with the changes kept aside for it: no database
/// access, so that it can run on any thread.
fn merge_doc(
    shared: &Shared,
    record: &RemoteRecord,
    existing: Option<CachedDoc>,
    pending: Vec<Change>,
    now: i64,
) -> Result<DocMerge> {
    let collection = record.collection.as_str();
    shared.schema.collection(collection)?;
    super::write::check_id(&record.id)?;
    let invalid = |reason: &str| Error::InvalidRemoteChange {
        collection: collection.to_owned(),
        id: record.id.clone(),
        reason: reason.to_owned(),
    };

    let is_new = existing.is_none();
    let mut cached = existing.unwrap_or_else(|| CachedDoc {
        doc: document::new_doc(&shared.actor()),
        fields: Fields::new(),
        scope: record.scope.clone(),
        created_at: now,
        deleted: false,
        stored: Vec::new(),
        tail: 0,
        compact_next: false,
    });
    let before = (!is_new && !cached.deleted).then(|| cached.fields.clone());
    let heads_before = cached.doc.get_heads();

    // Measured before Automerge sees the bytes, which it would inflate in full.
    let mut budget = protocol::MAX_RECORD_INFLATED_BYTES;
    let mut measure = |bytes: &[u8]| match protocol::inflated_size(bytes, budget) {
        Ok(size) => {
            budget -= size;
            Ok(())
        }
        Err(DecodeError::TooLarge { .. }) => Err(Error::RemoteTooLarge {
            collection: collection.to_owned(),
            id: record.id.clone(),
            limit: protocol::MAX_RECORD_INFLATED_BYTES,
        }),
        Err(err) => Err(invalid(&format!("not Automerge data ({err})"))),
    };
    let mut waiting = Vec::new();
    match &record.payload {
        RemotePayload::Changes(raw) => {
            for bytes in raw {
                measure(bytes)?;
            }
            let mut changes = Vec::with_capacity(raw.len());
            for bytes in raw {
                changes.push(
                    decode_change(bytes.clone())
                        .ok_or_else(|| invalid("a change does not decode"))?,
                );
            }
            changes.extend(pending);
            let hashes: Vec<ChangeHash> = changes.iter().map(Change::hash).collect();
            guarded(|| cached.doc.apply_changes(changes.clone()))
                .and_then(Result::ok)
                .ok_or_else(|| invalid("the changes do not apply"))?;
            waiting = changes
                .into_iter()
                .zip(&hashes)
                .filter(|(_, hash)| cached.doc.get_change_by_hash(hash).is_none())
                .map(|(change, _)| change)
                .collect();
        }
        RemotePayload::Document(bytes) => {
            measure(bytes)?;
            // Loaded whole first: `load_incremental` would merge what parses and silently drop
            // the rest, accepting a damaged document in part.
            let mut incoming = document::load_doc(bytes, &shared.actor())
                .map_err(|_| invalid("the document does not load"))?;
            if is_new {
                cached.doc = incoming;
            } else {
                guarded(|| cached.doc.merge(&mut incoming))
                    .and_then(Result::ok)
                    .ok_or_else(|| invalid("the document does not merge"))?;
            }
        }
    }

    let heads_after = cached.doc.get_heads();
    if heads_after == heads_before {
        return Ok(DocMerge::Unchanged {
            doc: (!is_new).then_some(cached),
            waiting,
        });
    }
    let fields =
        validate::validate_document(&shared.schema, collection, &cached.scope, &cached.doc)?;
    cached.deleted = document::is_deleted(&cached.doc);
    cached.fields = fields;
    cached.tail = 0;
    cached.compact_next = false;
    cached.stored = cached.doc.save();
    Ok(DocMerge::Changed {
        doc: cached,
        before,
        waiting,
    })
}

/// The database part of merging one record: keeps aside the changes still waiting for their
/// dependencies and writes the merged row.
fn write_merge(
    shared: &Shared,
    tx: &Transaction<'_>,
    record: &RemoteRecord,
    merged: DocMerge,
    now: i64,
    any_pending: &mut bool,
) -> Result<Outcome> {
    let collection = record.collection.as_str();
    let (DocMerge::Unchanged { waiting, .. } | DocMerge::Changed { waiting, .. }) = &merged;
    if !waiting.is_empty() {
        let waiting: Vec<&Change> = waiting.iter().collect();
        keep_pending(shared, tx, collection, &record.id, &waiting, now)?;
        *any_pending = true;
    }
    match merged {
        DocMerge::Unchanged { doc, .. } => Ok(Outcome::Unchanged(doc)),
        DocMerge::Changed { doc, before, .. } => {
            let table = shared.table(collection)?;
            let values = read::row_values(table, &doc.row(&record.id, now));
            tx.prepare_cached(&table.upsert)?
                .execute(rusqlite::params_from_iter(values))?;
            let after = (!doc.deleted).then(|| doc.fields.clone());
            let change = super::changed(collection, &record.id, before, after);
            Ok(Outcome::Changed(doc, change))
        }
    }
}

fn take_pending(tx: &Transaction<'_>, collection: &str, id: &str) -> Result<Vec<Change>> {
    let mut stmt = tx.prepare_cached(
        "SELECT change FROM pending_changes WHERE collection = ?1 AND record_id = ?2",
    )?;
    let rows = stmt.query_map([collection, id], |row| row.get::<_, Vec<u8>>(0))?;
    let mut changes = Vec::new();
    for bytes in rows {
        // Only changes that decoded were ever kept aside.
        if let Some(change) = decode_change(bytes?) {
            changes.push(change);
        }
    }
    tx.prepare_cached("DELETE FROM pending_changes WHERE collection = ?1 AND record_id = ?2")?
        .execute([collection, id])?;
    Ok(changes)
}

fn keep_pending(
    shared: &Shared,
    tx: &Transaction<'_>,
    collection: &str,
    id: &str,
    waiting: &[&Change],
    now: i64,
) -> Result<()> {
    if waiting.is_empty() {
        return Ok(());
    }
    let already: i64 =
        tx.query_row("SELECT count(*) FROM pending_changes", [], |row| row.get(0))?;
    let total = already as usize + waiting.len();
    if total > shared.options.max_pending_changes {
        return Err(Error::TooManyPendingChanges {
            waiting: total,
            limit: shared.options.max_pending_changes,
        });
    }
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO pending_changes (collection, record_id, hash, change, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for change in waiting {
        stmt.execute(rusqlite::params![
            collection,
            id,
            change.hash().0.to_vec(),
            change.raw_bytes(),
            now
        ])?;
    }
    Ok(())
}
