//! Fieldsync core: an offline-first record store for mobile apps.
//!
//! An app declares a [`Schema`] (collections, typed fields, a scope field, indexes) and opens a
//! [`Store`], one SQLite file. Every record is an Automerge document, so edits made on several
//! devices while offline merge: different fields both survive, `text` fields merge character
//! by character, and the same scalar field written twice gets one deterministic winner on every
//! device, with the losing values visible through [`Store::conflicts`].
//!
//! Each write commits, in one SQLite transaction, the document, the materialized field values
//! that queries use, and the Automerge change in the outbox that sync drains. Changes from
//! elsewhere come in through [`Store::apply_remote`].
//!
//! ```
//! use fieldsync_core::{Schema, Store, StoreOptions};
//! use serde_json::json;
//!
//! let schema = Schema::from_json(r#"{"collections": {"clients": {
//!     "scope_field": "caseload_id",
//!     "fields": {
//!         "caseload_id": {"type": "string", "required": true},
//!         "name": {"type": "string", "required": true},
//!         "notes": {"type": "text"}
//!     }
//! }}}"#)?;
//! let dir = tempfile::tempdir().unwrap();
//! let phone = Store::open(dir.path().join("phone.db"), schema.clone(), StoreOptions::default())?;
//! let tablet = Store::open(dir.path().join("tablet.db"), schema, StoreOptions::default())?;
//!
//! let fields = json!({"caseload_id": "north", "name": "Ada", "notes": "Visit"});
//! let id = phone.insert("clients", fields.as_object().unwrap().clone())?;
//!
//! // Carry the phone's outbox to the tablet (the sync engine does this through the server).
//! let outbox = phone.outbox(100)?;
//! tablet.apply_remote(outbox.into_iter().map(|e| e.into_remote()).collect())?;
//! assert_eq!(tablet.get("clients", &id)?.unwrap().fields["name"], "Ada");
//! # Ok::<(), fieldsync_core::Error>(())
//! ```
//!
//! # Rules worth knowing
//! - **Delete wins.** A delete is a tombstone in the document that no later or concurrent edit
//!   can undo: once any device's delete is merged, the record is deleted everywhere, and edits
//!   made elsewhere on an old copy are merged into the tombstoned document but never bring the
//!   record back. To restore a record, insert a new one.
//! - **Text positions** count UTF-16 code units, the unit of Kotlin, Swift (`String.utf16`,
//!   `NSRange`) and JavaScript strings. Python callers convert with
//!   `len(s[:i].encode("utf-16-le")) // 2`.
//! - **Scope** is fixed at insert; an update that changes the scope field is refused.
//! - **Unknown data is kept.** Keys in a merged document that this app's schema does not
//!   declare (a newer app version wrote them) stay in the document and sync on, unseen.

mod encryption;
mod error;
mod query;
mod store;
mod subscription;
mod sync;
mod value;

// The record model is the record engine's, shared with the server.
use fieldsync_record::{document, merge, parallel, protocol, schema, stored};

pub use encryption::EncryptionKey;
pub use error::{Error, Result};
pub use fieldsync_record::MAX_NESTING_DEPTH;
pub use fieldsync_record::attachment::AttachmentRef;
pub use fieldsync_record::document::{ConflictValue, FieldConflict, HistoryEntry, TEXT_ENCODING};
pub use fieldsync_record::protocol::Author;
pub use query::{Filter, Order, Query};
pub use schema::{Collection, Download, Field, FieldType, Index, OnDelete, Schema};
pub use store::{
    ApplyReport, AttachmentReader, AttachmentSource, AttachmentsTidied, Orphan, OutboxEntry,
    Record, RejectedRecord, RejectedWrite, RemotePayload, RemoteRecord, STORED_CHUNK_BYTES, Store,
    StoreOptions, Synchronous, Write,
};
pub use subscription::{ChangeEvent, ChangeOrigin, Subscription};
pub use sync::{
    BackgroundOptions, BackgroundSync, BoxFuture, Credentials, SyncClient, SyncConfig,
    SyncListener, SyncProgress, SyncReport, SyncState, SyncStatus, TokenProvider, Transport,
    TransportRequest, TransportResponse, http_transport,
};
pub use value::Fields;

impl OutboxEntry {
    /// The entry as another store's [`Store::apply_remote`] takes it.
    pub fn into_remote(self) -> RemoteRecord {
        RemoteRecord {
            collection: self.collection,
            id: self.record_id,
            scope: self.scope,
            payload: self.payload,
            epoch: self.epoch,
        }
    }
}
