//! The Fieldsync record engine: what a record is, written once and used by the device's store
//! (`fieldsync-core`) and the sync server (`fieldsync-server`) alike.
//!
//! - [`schema`]: an app's collections and typed fields, their JSON form, and which changes to
//!   a schema are compatible.
//! - [`document`]: a record as an Automerge document (each declared field a root key, `text`
//!   fields Automerge text, `json` fields nested maps and lists, the tombstone `_deleted`), and
//!   its values, conflicts and history.
//! - [`validate`]: whether a record document is valid under a schema.
//! - [`erasure`]: a record written again as a new epoch without erased content or history,
//!   and a device's unsent writes made again on it.
//! - [`merge`] and [`stored`]: the panic guard every merge of outside data runs under, and the
//!   stored form of a document (a save followed by appended changes).
//! - [`chunks`]: Automerge's binary chunks checked before Automerge sees them (inflated size,
//!   checksums).
//! - [`attachment`]: what an `attachment` field holds, a reference to bytes kept beside the
//!   record.
//! - [`ids`]: the rules for record ids and collection names.
//! - [`protocol`]: the sync protocol's wire types and their encoding (docs/PROTOCOL.md).
//!
//! ```
//! use automerge::{ActorId, transaction::Transactable, ROOT};
//! use fieldsync_record::{Schema, document, validate};
//!
//! let schema = Schema::from_json(r#"{"collections": {"clients": {
//!     "scope_field": "caseload_id",
//!     "fields": {
//!         "caseload_id": {"type": "string", "required": true},
//!         "name": {"type": "string", "required": true}
//!     }
//! }}}"#)?;
//! let mut doc = document::new_doc(&ActorId::random());
//! doc.put(ROOT, "caseload_id", "north")?;
//! assert!(validate::validate_document(&schema, "clients", "north", &doc).is_err()); // no name
//! doc.put(ROOT, "name", "Ada")?;
//! let fields = validate::validate_document(&schema, "clients", "north", &doc)?;
//! assert_eq!(fields["name"], "Ada");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod attachment;
pub mod chunks;
pub mod cold_update;
pub mod document;
pub mod erasure;
mod error;
pub mod ids;
pub mod merge;
pub mod parallel;
pub mod protocol;
pub mod schema;
pub mod stored;
pub mod validate;
pub mod value;

pub use document::{DELETED_KEY, MAX_NESTING_DEPTH};
pub use error::{Error, Result};
pub use schema::{Collection, Download, Field, FieldType, Index, OnDelete, Schema};
pub use value::Fields;
