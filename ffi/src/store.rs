//! The store object: the core's [`fieldsync_core::Store`] with boundary types.

use std::path::Path;
use std::sync::{Arc, Mutex};

use fieldsync_core as core;

use crate::attachments::{AttachmentRef, AttachmentsTidied};
use crate::error::Result;
use crate::values::{
    ChangeEvent, FieldConflict, FieldMap, Filter, HistoryEntry, Orphan, Query, Record,
    RejectedWrite, StoreOptions, Write, fields_to_core, signed, unsigned,
};

/// An app's local record store: one SQLite file. Every method may be called from any thread;
/// they block on disk I/O, so call them off the UI thread.
#[derive(Debug, uniffi::Object)]
pub struct Store {
    pub(crate) inner: core::Store,
}

/// Told after every commit that changes records a subscription watches.
#[uniffi::export(foreign)]
pub trait ChangeListener: Send + Sync {
    /// Which records changed. Runs on the thread that committed, after the commit; it may
    /// read the store, and should hand longer work to another thread. An exception thrown
    /// here is logged and does not fail the write, which has committed already.
    fn on_change(&self, event: ChangeEvent) -> Result<()>;
}

/// A live subscription. `cancel` (or closing or dropping the object) stops the callbacks.
#[derive(Debug, uniffi::Object)]
pub struct Subscription {
    inner: Mutex<Option<core::Subscription>>,
}

#[uniffi::export]
impl Subscription {
    /// Stops the callbacks now. Calling it again does nothing.
    pub fn cancel(&self) {
        let subscription = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(subscription);
    }
}

#[uniffi::export]
impl Store {
    /// Opens (or creates) the store file at `path` for the schema declared in `schema_json`,
    /// with default options (every commit durable). A file created with an older schema is
    /// upgraded in place when the new one only adds.
    #[uniffi::constructor]
    pub fn new(path: String, schema_json: String) -> Result<Arc<Store>> {
        Self::open_with_options(path, schema_json, StoreOptions::default())
    }

    /// Like the primary constructor, with options.
    #[uniffi::constructor]
    pub fn open_with_options(
        path: String,
        schema_json: String,
        options: StoreOptions,
    ) -> Result<Arc<Store>> {
        let schema = core::Schema::from_json(&schema_json).map_err(core::Error::from)?;
        let inner = core::Store::open(path, schema, options.try_into()?)?;
        Ok(Arc::new(Store { inner }))
    }

    /// Re-encrypts the store with `new_key` (32 bytes); afterwards only that key opens it.
    /// The store must have been opened with a key.
    pub fn rekey(&self, new_key: Vec<u8>) -> Result<()> {
        Ok(self
            .inner
            .rekey(&core::EncryptionKey::from_slice(&new_key)?)?)
    }

    /// This device's stable id, kept in the file.
    pub fn device_id(&self) -> String {
        self.inner.device_id()
    }

    /// Inserts a record with a new UUIDv7 id and returns the id.
    pub fn insert(&self, collection: String, fields: FieldMap) -> Result<String> {
        Ok(self.inner.insert(&collection, fields_to_core(&fields)?)?)
    }

    /// Inserts a record with the given id.
    pub fn insert_with_id(&self, collection: String, id: String, fields: FieldMap) -> Result<()> {
        self.inner
            .insert_with_id(&collection, Some(id), fields_to_core(&fields)?)?;
        Ok(())
    }

    /// Sets the fields in `patch`; `Null` clears an optional field. Other fields are kept.
    pub fn update(&self, collection: String, id: String, patch: FieldMap) -> Result<()> {
        Ok(self
            .inner
            .update(&collection, &id, fields_to_core(&patch)?)?)
    }

    /// Edits a `text` field: at `index`, deletes `delete_count` units and inserts `insert`.
    /// Positions count UTF-16 code units, as Kotlin and Swift (`utf16`) strings do. Made for
    /// one call per keystroke: the record shows the edit at once, and a run of keystrokes on
    /// one field becomes one change before the next sync or other write.
    pub fn splice_text(
        &self,
        collection: String,
        id: String,
        field: String,
        index: i32,
        delete_count: i32,
        insert: String,
    ) -> Result<()> {
        Ok(self.inner.splice_text(
            &collection,
            &id,
            &field,
            unsigned(index, "index")?,
            unsigned(delete_count, "delete_count")?,
            &insert,
        )?)
    }

    /// Deletes a record, leaving a tombstone that syncs; a delete wins over concurrent edits.
    pub fn delete(&self, collection: String, id: String) -> Result<()> {
        Ok(self.inner.delete(&collection, &id)?)
    }

    /// Applies the writes in one transaction, all or none; returns each write's record id.
    pub fn write_batch(&self, writes: Vec<Write>) -> Result<Vec<String>> {
        let writes = writes
            .into_iter()
            .map(Write::into_core)
            .collect::<Result<Vec<_>>>()?;
        Ok(self.inner.write_batch(writes)?)
    }

    /// The live record with this id, or null if there is none or it was deleted.
    pub fn get(&self, collection: String, id: String) -> Result<Option<Record>> {
        Ok(self.inner.get(&collection, &id)?.map(Record::from))
    }

    /// Live records matching the query.
    pub fn query(&self, collection: String, query: Query) -> Result<Vec<Record>> {
        let records = self.inner.query(&collection, &query.to_core()?)?;
        Ok(records.into_iter().map(Record::from).collect())
    }

    /// How many live records match the filter.
    pub fn count(&self, collection: String, filter: Filter) -> Result<i64> {
        Ok(signed(self.inner.count(&collection, &filter.to_core()?)?))
    }

    /// Live records whose reference fields point at a deleted or absent record.
    pub fn orphans(&self, collection: String) -> Result<Vec<Orphan>> {
        let orphans = self.inner.orphans(&collection)?;
        Ok(orphans.into_iter().map(Orphan::from).collect())
    }

    /// Fields of the record on which concurrent writes happened, with winner and losers.
    pub fn conflicts(&self, collection: String, id: String) -> Result<Vec<FieldConflict>> {
        let conflicts = self.inner.conflicts(&collection, &id)?;
        Ok(conflicts.into_iter().map(FieldConflict::from).collect())
    }

    /// Every change of the record, oldest first: which device, when, which fields.
    pub fn history(&self, collection: String, id: String) -> Result<Vec<HistoryEntry>> {
        let history = self.inner.history(&collection, &id)?;
        Ok(history.into_iter().map(HistoryEntry::from).collect())
    }

    /// Calls `listener` after every commit that changes records of `collection` matching
    /// `filter` (before or after the change), for local writes and merges alike, until the
    /// returned subscription is cancelled.
    pub fn subscribe(
        &self,
        collection: String,
        filter: Filter,
        listener: Arc<dyn ChangeListener>,
    ) -> Result<Arc<Subscription>> {
        let subscription = self
            .inner
            .subscribe(&collection, filter.to_core()?, move |event| {
                if let Err(err) = listener.on_change(ChangeEvent::from(event)) {
                    tracing::warn!(error = %err, "a change listener failed");
                }
            })?;
        Ok(Arc::new(Subscription {
            inner: Mutex::new(Some(subscription)),
        }))
    }

    /// How many local changes wait to be pushed.
    pub fn outbox_len(&self) -> Result<i64> {
        Ok(signed(self.inner.outbox_len()?))
    }

    /// Writes that did not reach the server, oldest first: refused by it (the record shows
    /// what the server has again), or taken away with a revoked scope.
    pub fn rejected_writes(&self) -> Result<Vec<RejectedWrite>> {
        let writes = self.inner.rejected_writes()?;
        Ok(writes.into_iter().map(RejectedWrite::from).collect())
    }

    /// Writes a rejected write again as a new edit on top of the record as it is now (or as
    /// a new record, if the write had created it), then forgets it.
    pub fn retry_rejected_write(&self, id: i64) -> Result<()> {
        Ok(self.inner.retry_rejected_write(id)?)
    }

    /// Forgets a rejected write; the record stays as the server has it.
    pub fn discard_rejected_write(&self, id: i64) -> Result<()> {
        Ok(self.inner.discard_rejected_write(id)?)
    }

    /// Stores `bytes` and makes the `attachment` field `field` of `collection/id` reference
    /// them, in one transaction; returns the reference. `media_type` (`image/jpeg`) and `name`
    /// (`consent.jpg`) go into the reference. The next sync sends the bytes. For large files,
    /// prefer `attach_file`, which does not hold them in memory.
    #[uniffi::method(default(name = None))]
    pub fn attach_bytes(
        &self,
        collection: String,
        id: String,
        field: String,
        bytes: Vec<u8>,
        media_type: String,
        name: Option<String>,
    ) -> Result<AttachmentRef> {
        let source = core::AttachmentSource::Bytes(&bytes);
        let reference = self.inner.attach(
            &collection,
            &id,
            &field,
            source,
            &media_type,
            name.as_deref(),
        )?;
        Ok(reference.into())
    }

    /// Like `attach_bytes`, with the bytes read from the file at `path`, a chunk at a time.
    /// Throws `Io` when the file cannot be read; nothing is stored then.
    #[uniffi::method(default(name = None))]
    pub fn attach_file(
        &self,
        collection: String,
        id: String,
        field: String,
        path: String,
        media_type: String,
        name: Option<String>,
    ) -> Result<AttachmentRef> {
        let source = core::AttachmentSource::File(Path::new(&path));
        let reference = self.inner.attach(
            &collection,
            &id,
            &field,
            source,
            &media_type,
            name.as_deref(),
        )?;
        Ok(reference.into())
    }

    /// The reference the `attachment` field `field` of `collection/id` holds, or null when the
    /// field is empty. Throws `NotFound` when there is no such live record.
    pub fn attachment_of(
        &self,
        collection: String,
        id: String,
        field: String,
    ) -> Result<Option<AttachmentRef>> {
        let declared = self
            .inner
            .schema()
            .collection(&collection)
            .and_then(|declared| declared.field(&collection, &field))
            .map_err(core::Error::from)?;
        if declared.field_type != core::FieldType::Attachment {
            return Err(core::Error::WrongType {
                collection,
                field,
                expected: core::FieldType::Attachment,
            }
            .into());
        }
        let record = self
            .inner
            .get(&collection, &id)?
            .ok_or_else(|| core::Error::NotFound {
                collection: collection.clone(),
                id,
            })?;
        match record.fields.get(&field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => match core::AttachmentRef::from_value(value) {
                Ok(reference) => Ok(Some(reference.into())),
                Err(problem) => Err(core::Error::InvalidAttachment {
                    collection,
                    field,
                    problem,
                }
                .into()),
            },
        }
    }

    /// Whether the store holds every byte `reference` names: false while an `on_demand`
    /// attachment is not fetched (`SyncClient.fetch_attachment`), or after it was evicted.
    pub fn has_attachment(&self, reference: AttachmentRef) -> Result<bool> {
        Ok(self.inner.has_attachment(&reference.to_core()?)?)
    }

    /// The bytes `reference` names, in memory, or null while the store does not hold them all.
    /// For large attachments (recordings, videos), prefer `save_attachment`.
    pub fn attachment_bytes(&self, reference: AttachmentRef) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.attachment_bytes(&reference.to_core()?)?)
    }

    /// Writes the bytes `reference` names to the file at `path` (created or replaced), a chunk
    /// at a time, so that a large attachment is never held in memory whole; false, writing
    /// nothing, while the store does not hold them all. Throws `Io` when the file cannot be
    /// written.
    pub fn save_attachment(&self, reference: AttachmentRef, path: String) -> Result<bool> {
        Ok(self
            .inner
            .save_attachment(&reference.to_core()?, Path::new(&path))?)
    }

    /// Removes the bytes of attachments nothing references any more, then evicts attachments
    /// the server holds, least recently used first, to keep within
    /// `StoreOptions.attachment_budget_bytes`. Bytes not yet on the server are never evicted.
    /// Every sync does this at its end; call it after deleting many records offline.
    pub fn tidy_attachments(&self) -> Result<AttachmentsTidied> {
        Ok(self.inner.tidy_attachments()?.into())
    }
}

/// A new random 32-byte key, to keep in the Keychain or Keystore and pass as
/// `StoreOptions.encryption_key`.
#[uniffi::export]
pub fn generate_encryption_key() -> Result<Vec<u8>> {
    Ok(core::EncryptionKey::generate()?.as_bytes().to_vec())
}

/// Encrypts an unencrypted store file in place with `key` (32 bytes), keeping all its data.
/// The file must not be open; afterwards open it with the key.
#[uniffi::export]
pub fn encrypt_store_file(path: String, key: Vec<u8>) -> Result<()> {
    Ok(core::Store::encrypt_file(
        path,
        &core::EncryptionKey::from_slice(&key)?,
    )?)
}
