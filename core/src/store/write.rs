//! Local writes. Each write becomes one Automerge change, and one SQLite transaction commits,
//! for every write of a batch, the new document, the materialized values and the change in the
//! outbox. Documents come back to the cache only after that commit succeeded.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use automerge::{AutoCommit, ChangeHash};
use lru::LruCache;
use rusqlite::{Transaction, TransactionBehavior};
use serde_json::Value;

use super::{CachedDoc, Db, DocKey, Shared, read};
use crate::document;
use crate::error::{Error, Result};
use crate::schema::{Collection, FieldType, OnDelete};
use crate::subscription::Changed;
use crate::value::{Fields, check_insert, check_patch, normalize};
use fieldsync_record::cold_update::{self, ColdUpdate};

/// One write of a batch (see [`Store::write_batch`](crate::Store::write_batch)).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Write {
    /// Insert a record; `id` defaults to a new UUIDv7.
    Insert {
        /// Collection.
        collection: String,
        /// Caller-chosen id, if any.
        #[serde(default)]
        id: Option<String>,
        /// Field values; every required field must be present.
        fields: Fields,
    },
    /// Set fields of a live record; `null` clears an optional field.
    Update {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
        /// Fields to set or clear.
        patch: Fields,
    },
    /// Edit a text field in place (positions in UTF-16 code units).
    SpliceText {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
        /// A `text` field.
        field: String,
        /// Where the edit starts.
        index: usize,
        /// How many units to delete there.
        delete_count: usize,
        /// What to insert there.
        insert: String,
    },
    /// Delete a record (a tombstone that syncs) and apply reference rules.
    Delete {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
    },
}

/// Applies `writes` in one transaction; returns each write's record id and what changed.
pub(super) fn apply(
    shared: &Shared,
    db: &mut Db,
    writes: Vec<Write>,
) -> Result<(Vec<String>, Vec<Changed>)> {
    apply_with(shared, db, writes, |_| Ok(()))
}

/// Like [`apply`], running `first` in the same transaction before the writes (storing an
/// attachment's bytes with the write that references them).
pub(super) fn apply_with(
    shared: &Shared,
    db: &mut Db,
    writes: Vec<Write>,
    first: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<()>,
) -> Result<(Vec<String>, Vec<Changed>)> {
    let now = super::now_ms();
    let Db { conn, cache, .. } = db;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    first(&tx)?;
    let mut batch = Batch {
        shared,
        tx: &tx,
        cache,
        docs: HashMap::new(),
        changed: Vec::new(),
        now,
    };
    let ids = run(shared, writes, now, |step| match step {
        Step::Write(write) => batch.apply(write),
        Step::Insert {
            collection,
            encoded,
        } => batch.store_new(&collection, (*encoded)?),
    })?;
    let Batch { docs, changed, .. } = batch;
    tx.commit()?;
    for (key, doc) in docs {
        cache.put(key, doc);
    }
    Ok((ids, changed))
}

/// Makes a run of journaled keystrokes on `field` into one change of the record's document,
/// stamped `typed_at` (the last keystroke's time), in one transaction with `first` (which
/// takes the run off the journal). The row already shows the text; it is written again from
/// the document. A record deleted meanwhile has nothing to replay into.
pub(super) fn replay_typing(
    shared: &Shared,
    db: &mut Db,
    (collection, id): &DocKey,
    field: &str,
    keystrokes: &[&super::typing::Keystroke],
    typed_at: i64,
    first: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<()>,
) -> Result<()> {
    let Db { conn, cache, .. } = db;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    first(&tx)?;
    let mut batch = Batch {
        shared,
        tx: &tx,
        cache,
        docs: HashMap::new(),
        changed: Vec::new(),
        now: typed_at,
    };
    match batch.replay(collection, id, field, keystrokes) {
        Err(Error::NotFound { .. }) => {}
        other => other?,
    }
    let Batch { docs, .. } = batch;
    tx.commit()?;
    for (key, doc) in docs {
        cache.put(key, doc);
    }
    Ok(())
}

/// Batches with at least this many inserts encode their documents on worker threads.
const PARALLEL_INSERTS: usize = 64;

/// Writes handed to one worker at a time.
const CHUNK: usize = 256;

/// A write, or an insert whose document was already encoded.
enum Step {
    Write(Write),
    Insert {
        collection: String,
        encoded: Box<Result<Encoded>>,
    },
}

/// Runs every write through `store`, in order, stopping at the first error. In a batch with
/// many inserts (a bulk import), worker threads encode the documents of upcoming inserts while
/// `store` writes earlier ones: creating an Automerge document costs several times more than
/// storing it.
fn run(
    shared: &Shared,
    writes: Vec<Write>,
    now: i64,
    mut store: impl FnMut(Step) -> Result<String>,
) -> Result<Vec<String>> {
    let inserts = writes
        .iter()
        .filter(|w| matches!(w, Write::Insert { .. }))
        .count();
    // Asked only for large batches: it reads cgroup files, which costs more than a small write.
    let workers = || std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if inserts < PARALLEL_INSERTS || workers() < 2 {
        return writes
            .into_iter()
            .map(|write| store(Step::Write(write)))
            .collect();
    }
    let mut queue = VecDeque::new();
    let mut writes = writes.into_iter();
    loop {
        let chunk: Vec<Write> = writes.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        queue.push_back((queue.len(), chunk));
    }
    let total = queue.len();
    let queue = Mutex::new(queue);
    let stop = AtomicBool::new(false);
    let (sender, receiver) = mpsc::channel::<(usize, Vec<Step>)>();
    std::thread::scope(|scope| {
        for _ in 0..workers() {
            let (sender, queue, stop) = (sender.clone(), &queue, &stop);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some((index, chunk)) = next else { break };
                    if sender
                        .send((index, encode_chunk(shared, chunk, now)))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        drop(sender);
        let mut ids = Vec::with_capacity(inserts);
        let mut arrived = BTreeMap::new();
        let mut stored = 0;
        let result = loop {
            if stored == total {
                break Ok(ids);
            }
            let Some(steps) = arrived.remove(&stored) else {
                // Every worker gone before its chunk arrived means one panicked; leaving the
                // scope re-raises that panic.
                let Ok((index, steps)) = receiver.recv() else {
                    break Ok(ids);
                };
                arrived.insert(index, steps);
                continue;
            };
            if let Err(err) = steps
                .into_iter()
                .try_for_each(|step| store(step).map(|id| ids.push(id)))
            {
                break Err(err);
            }
            stored += 1;
        };
        stop.store(true, Ordering::Relaxed);
        result
    })
}

fn encode_chunk(shared: &Shared, chunk: Vec<Write>, now: i64) -> Vec<Step> {
    chunk
        .into_iter()
        .map(|write| match write {
            Write::Insert {
                collection,
                id,
                fields,
            } => {
                let encoded = encode_insert(shared, &collection, id, fields, now, false);
                Step::Insert {
                    collection,
                    encoded: Box::new(encoded),
                }
            }
            other => Step::Write(other),
        })
        .collect()
}

/// A new record, encoded and ready to store.
struct Encoded {
    id: String,
    /// The document, when it is worth keeping in the cache.
    doc: Option<AutoCommit>,
    /// Its stored bytes: its one change.
    stored: Vec<u8>,
    fields: Fields,
    scope: String,
}

/// Checks an insert against the schema and builds its document as one change.
fn encode_insert(
    shared: &Shared,
    collection: &str,
    id: Option<String>,
    fields: Fields,
    now: i64,
    keep_doc: bool,
) -> Result<Encoded> {
    let decl = shared.schema.collection(collection)?;
    check_insert(collection, decl, &fields)?;
    let id = match id {
        Some(id) => {
            check_id(&id)?;
            id
        }
        None => uuid::Uuid::now_v7().to_string(),
    };
    // The record's one change, not a saved document: Automerge loads either, and for a single
    // change the change chunk is 20-30% smaller (no head hash, no change index). Most
    // records are written once; an edited one is saved whole once its tail grows or it is
    // written after a cold load.
    let fast = if keep_doc {
        None
    } else {
        document::first_change_of_scalars(&shared.actor(), decl, &fields, now)
    };
    let (doc, stored) = match fast {
        Some(stored) => (None, stored),
        None => {
            let mut doc = document::new_doc(&shared.actor());
            document::init_fields(&mut doc, decl, &fields)?;
            document::commit(&mut doc, now);
            let stored = doc.save_after(&[]);
            (keep_doc.then_some(doc), stored)
        }
    };
    let fields: Fields = fields
        .into_iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(name, value)| {
            let value = normalize(decl.fields[&name].field_type, value);
            (name, value)
        })
        .collect();
    let scope = fields[&decl.scope_field]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok(Encoded {
        id,
        doc,
        stored,
        fields,
        scope,
    })
}

struct Batch<'a> {
    shared: &'a Shared,
    tx: &'a Transaction<'a>,
    cache: &'a mut LruCache<DocKey, CachedDoc>,
    /// Documents this batch has touched, out of the cache until the commit succeeds.
    docs: HashMap<DocKey, CachedDoc>,
    changed: Vec<Changed>,
    now: i64,
}

impl Batch<'_> {
    fn apply(&mut self, write: Write) -> Result<String> {
        match write {
            Write::Insert {
                collection,
                id,
                fields,
            } => {
                // A record inserted alone is likely edited next: keep its document loaded.
                let encoded = encode_insert(self.shared, &collection, id, fields, self.now, true)?;
                self.store_new(&collection, encoded)
            }
            Write::Update {
                collection,
                id,
                patch,
            } => self.update(&collection, &id, &patch).map(|()| id),
            Write::SpliceText {
                collection,
                id,
                field,
                index,
                delete_count,
                insert,
            } => self
                .splice(&collection, &id, &field, index, delete_count, &insert)
                .map(|()| id),
            Write::Delete { collection, id } => self.delete(&collection, &id).map(|()| id),
        }
    }

    /// Stores an encoded new record: its row, and its change as the outbox entry.
    fn store_new(&mut self, collection: &str, encoded: Encoded) -> Result<String> {
        let Encoded {
            id,
            doc,
            stored,
            fields,
            scope,
        } = encoded;
        // A taken id (even one inserted earlier in this batch: rows are written as they go)
        // fails the primary key.
        let table = self.shared.table(collection)?;
        let row = read::RowData {
            id: &id,
            stored: &stored,
            tail: 0,
            deleted: false,
            created_at: self.now,
            updated_at: self.now,
            fields: &fields,
        };
        let inserted = self
            .tx
            .prepare_cached(&table.insert)?
            .execute(rusqlite::params_from_iter(read::row_values(table, &row)));
        match inserted {
            Err(rusqlite::Error::SqliteFailure(err, _))
                if err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                return Err(Error::DuplicateId {
                    collection: collection.to_owned(),
                    id,
                });
            }
            other => other?,
        };
        self.push_outbox(collection, &id, &scope, &stored)?;
        self.changed
            .push(super::changed(collection, &id, None, Some(fields.clone())));
        if let Some(doc) = doc {
            let cached = CachedDoc {
                doc,
                fields,
                scope,
                created_at: self.now,
                deleted: false,
                stored,
                tail: 0,
                compact_next: false,
            };
            self.docs
                .insert((collection.to_owned(), id.clone()), cached);
        }
        Ok(id)
    }

    fn update(&mut self, collection: &str, id: &str, patch: &Fields) -> Result<()> {
        let decl = self.shared.schema.collection(collection)?;
        if self.update_cold(collection, id, patch)? {
            return Ok(());
        }
        let (heads, before) = self.open_live(collection, id)?;
        let cached = &self.docs[&(collection.to_owned(), id.to_owned())];
        check_patch(collection, decl, patch, &cached.scope)?;
        let cached = self.doc_mut(collection, id);
        for (name, value) in patch {
            let field = &decl.fields[name];
            document::put_field(&mut cached.doc, name, field, value)?;
            // A local put replaces every current value of the key, so it is the new value.
            if value.is_null() {
                cached.fields.remove(name);
            } else {
                cached
                    .fields
                    .insert(name.clone(), normalize(field.field_type, value.clone()));
            }
        }
        self.finish(collection, id, heads, before)
    }

    /// Updates a record whose document is not loaded, when it is stored as changes only and
    /// the update puts plain scalars: the change is encoded from the stored changes
    /// (`fieldsync_record::cold_update`) and appended, and the document is not loaded, which
    /// was most of the update's cost. `false` when the document must be loaded instead; the
    /// row read is then left in the batch for it.
    fn update_cold(&mut self, collection: &str, id: &str, patch: &Fields) -> Result<bool> {
        let key = (collection.to_owned(), id.to_owned());
        if self.docs.contains_key(&key) || self.cache.contains(&key) {
            return Ok(false);
        }
        let not_found = || Error::NotFound {
            collection: collection.to_owned(),
            id: id.to_owned(),
        };
        let row =
            read::read_doc_row(self.shared, self.tx, collection, id)?.ok_or_else(not_found)?;
        if row.deleted {
            return Err(not_found());
        }
        let decl = self.shared.schema.collection(collection)?;
        let table = self.shared.table(collection)?;
        let before = row.fields?;
        let scope = read::scope_of(table, &before)?;
        check_patch(collection, decl, patch, &scope)?;
        let update = (row.tail + 1 < crate::stored::APPENDED_AT_MOST)
            .then(|| {
                cold_update::scalar_update(&row.bytes, &self.shared.actor(), decl, patch, self.now)
            })
            .flatten();
        let change = match update {
            Some(ColdUpdate::Change(change)) => change,
            Some(ColdUpdate::Unchanged) => return Ok(true),
            None => {
                let row = read::DocRow {
                    fields: Ok(before),
                    ..row
                };
                let loaded = row.load(self.shared, collection)?;
                self.docs.insert(key, loaded);
                return Ok(false);
            }
        };
        let mut after = before.clone();
        for (name, value) in patch {
            let field_type = decl.fields[name].field_type;
            after.insert(name.clone(), normalize(field_type, value.clone()));
        }
        let mut stored = row.bytes;
        stored.extend_from_slice(&change);
        let written = read::RowData {
            id,
            stored: &stored,
            tail: row.tail + 1,
            deleted: false,
            created_at: row.created_at,
            updated_at: self.now,
            fields: &after,
        };
        read::update_row(self.tx, table, &written, &before, false)?;
        self.push_outbox(collection, id, &scope, &change)?;
        self.changed
            .push(super::changed(collection, id, Some(before), Some(after)));
        Ok(true)
    }

    fn splice(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        index: usize,
        delete_count: usize,
        insert: &str,
    ) -> Result<()> {
        let decl = self.shared.schema.collection(collection)?;
        if decl.field(collection, field)?.field_type != FieldType::Text {
            return Err(Error::InvalidTextEdit {
                collection: collection.to_owned(),
                field: field.to_owned(),
                reason: "the field is not of type text".into(),
            });
        }
        let (heads, before) = self.open_live(collection, id)?;
        let cached = self.doc_mut(collection, id);
        let text = document::splice_text(
            &mut cached.doc,
            collection,
            field,
            index,
            delete_count,
            insert,
        )?;
        cached.fields.insert(field.to_owned(), Value::String(text));
        self.finish(collection, id, heads, before)
    }

    fn replay(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        keystrokes: &[&super::typing::Keystroke],
    ) -> Result<()> {
        let (heads, _) = self.open_live(collection, id)?;
        let cached = self.doc_mut(collection, id);
        for keystroke in keystrokes {
            document::splice_text_checked(
                &mut cached.doc,
                field,
                keystroke.index,
                keystroke.delete,
                &keystroke.insert,
            )?;
        }
        let text = document::text(&cached.doc, field)?;
        cached.fields.insert(field.to_owned(), Value::String(text));
        self.finish(collection, id, heads, None)
    }

    fn delete(&mut self, collection: &str, id: &str) -> Result<()> {
        let (heads, before) = self.open_live(collection, id)?;
        let cached = self.doc_mut(collection, id);
        document::mark_deleted(&mut cached.doc)?;
        cached.deleted = true;
        self.finish(collection, id, heads, before)?;
        // The reference rules see this batch's earlier writes: every write is already in the
        // transaction's rows.
        for (other, other_decl) in &self.shared.schema.collections {
            for (field, declared) in &other_decl.fields {
                if declared.target.as_deref() != Some(collection) {
                    continue;
                }
                let referencing = read::referencing(self.shared, self.tx, other, field, id)?;
                if referencing.is_empty() {
                    continue;
                }
                match Collection::on_delete(declared) {
                    OnDelete::Restrict => {
                        return Err(Error::Restricted {
                            collection: collection.to_owned(),
                            id: id.to_owned(),
                            referenced_by: format!("{other}.{field}"),
                        });
                    }
                    OnDelete::Cascade => {
                        for referencing_id in referencing {
                            self.delete(other, &referencing_id)?;
                        }
                    }
                    OnDelete::SetNull => {
                        let mut patch = Fields::new();
                        patch.insert(field.clone(), Value::Null);
                        for referencing_id in referencing {
                            self.update(other, &referencing_id, &patch)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Brings a live record's document into the batch; returns its heads and, when someone
    /// subscribes to the collection, its values before the write.
    fn open_live(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<(Vec<ChangeHash>, Option<Fields>)> {
        let key = (collection.to_owned(), id.to_owned());
        if !self.docs.contains_key(&key) {
            let loaded = match self.cache.pop(&key) {
                Some(cached) => cached,
                None => read::load_cached_doc(self.shared, self.tx, collection, id)?.ok_or_else(
                    || Error::NotFound {
                        collection: collection.to_owned(),
                        id: id.to_owned(),
                    },
                )?,
            };
            self.docs.insert(key.clone(), loaded);
        }
        let cached = self.docs.get_mut(&key).expect("just inserted");
        if cached.deleted {
            return Err(Error::NotFound {
                collection: collection.to_owned(),
                id: id.to_owned(),
            });
        }
        Ok((cached.doc.get_heads(), Some(cached.fields.clone())))
    }

    fn doc_mut(&mut self, collection: &str, id: &str) -> &mut CachedDoc {
        self.docs
            .get_mut(&(collection.to_owned(), id.to_owned()))
            .expect("opened by the caller")
    }

    /// Commits the pending Automerge operations of an existing record as one change and
    /// writes the row and the outbox entry. `heads` are the document's heads before the write.
    fn finish(
        &mut self,
        collection: &str,
        id: &str,
        heads: Vec<ChangeHash>,
        before: Option<Fields>,
    ) -> Result<()> {
        let (shared, tx, now) = (self.shared, self.tx, self.now);
        let table = shared.table(collection)?;
        let cached = self.doc_mut(collection, id);
        if document::commit(&mut cached.doc, now).is_none() {
            return Ok(());
        }
        let change = match cached.doc.get_changes(&heads).as_slice() {
            [change] => change.raw_bytes().to_vec(),
            _ => {
                return Err(Error::Corrupt(
                    "a local write did not make exactly one change".into(),
                ));
            }
        };
        if cached.compact_next || cached.tail + 1 >= crate::stored::APPENDED_AT_MOST {
            cached.stored = cached.doc.save();
            cached.tail = 0;
            cached.compact_next = false;
        } else {
            // Appending the change spares re-saving the whole document on every write;
            // Automerge loads a document followed by changes as one.
            cached.stored.extend_from_slice(&change);
            cached.tail += 1;
        }
        tx.prepare_cached(&table.upsert)?
            .execute(rusqlite::params_from_iter(read::row_values(
                table,
                &cached.row(id, now),
            )))?;
        let after = (!cached.deleted).then(|| cached.fields.clone());
        let scope = cached.scope.clone();
        self.push_outbox(collection, id, &scope, &change)?;
        self.changed
            .push(super::changed(collection, id, before, after));
        Ok(())
    }

    /// Queues one change for the server. (Stores written by earlier versions may still hold
    /// a new record's saved document, `is_document = 1`, which the outbox reads as such.)
    fn push_outbox(&self, collection: &str, id: &str, scope: &str, change: &[u8]) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO outbox (collection, record_id, scope, is_document, payload, created_at)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5)",
            )?
            .execute(rusqlite::params![collection, id, scope, change, self.now])?;
        Ok(())
    }
}

/// The value as materialization reads it back: floats stay floats even when written as `3`.
/// Ids appear in URLs, logs and file names, so they keep to a safe alphabet.
pub(crate) fn check_id(id: &str) -> Result<()> {
    Ok(fieldsync_record::ids::check_record_id(id)?)
}
