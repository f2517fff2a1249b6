//! The Fieldsync core for Kotlin (Android), Swift (iOS) and Python, through uniffi.
//!
//! A thin layer: every call goes to [`fieldsync_core`], converting values at the boundary.
//! [`Store`] is the record store, [`SyncClient`] syncs it with a server (`sync_now` is a
//! Kotlin `suspend fun`, a Swift `async` function and a Python coroutine), and
//! [`BackgroundSync`] keeps syncing with a status listener. Attachments' bytes go in and come
//! out by their [`AttachmentRef`], never through a record's fields. Errors cross as one flat
//! [`FieldsyncError`]; a Rust panic becomes the foreign language's internal error instead of
//! crossing the boundary.
//!
//! ```
//! use std::collections::HashMap;
//! use fieldsync_ffi::{FieldValue, Store};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let schema = r#"{"collections": {"clients": {
//!     "scope_field": "caseload_id",
//!     "fields": {
//!         "caseload_id": {"type": "string", "required": true},
//!         "name": {"type": "string", "required": true}
//!     }
//! }}}"#;
//! let path = dir.path().join("app.db").to_string_lossy().into_owned();
//! let store = Store::new(path, schema.into())?;
//! let fields = HashMap::from([
//!     ("caseload_id".to_owned(), FieldValue::Str { value: "north".into() }),
//!     ("name".to_owned(), FieldValue::Str { value: "Ada".into() }),
//! ]);
//! let id = store.insert("clients".into(), fields)?;
//! let record = store.get("clients".into(), id)?.unwrap();
//! assert_eq!(record.fields["name"], FieldValue::Str { value: "Ada".into() });
//! # Ok::<(), fieldsync_ffi::FieldsyncError>(())
//! ```

mod attachments;
mod error;
mod store;
mod sync;
mod values;

pub use attachments::{AttachmentRef, AttachmentsTidied, attachment_ref_of};
pub use error::{FieldsyncError, Result};
pub use store::{ChangeListener, Store, Subscription, encrypt_store_file, generate_encryption_key};
pub use sync::{
    BackgroundOptions, BackgroundSync, SyncClient, SyncConfig, SyncProgress, SyncProgressListener,
    SyncReport, SyncState, SyncStatus, SyncStatusListener,
};
pub use values::{
    Author, ChangeEvent, ChangeOrigin, ConflictValue, FieldConflict, FieldMap, FieldValue, Filter,
    HistoryEntry, Order, Orphan, Query, Record, RejectedWrite, StoreOptions, Synchronous, Write,
};

uniffi::setup_scaffolding!("fieldsync");
