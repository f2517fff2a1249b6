//! The data types that cross the boundary, and their conversions to and from the core's.
//!
//! Field values cross typed ([`FieldValue`]) rather than as JSON text: Kotlin and Swift code
//! then reads `record.fields["name"]` as a value it can switch over, with no JSON library and
//! no parsing at every read. Only the nested maps and lists of `json` fields cross as JSON
//! text, because they have no fixed shape.

use std::collections::HashMap;

use fieldsync_core as core;
use serde_json::{Number, Value};

use crate::error::{FieldsyncError, Result};

/// One field's value. Timestamps are `Integer` milliseconds since the Unix epoch; `text`,
/// `string` and `reference` fields hold `Str`; `json` fields hold whatever their JSON is, with
/// maps and lists as `Json` text.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum FieldValue {
    /// No value; in an update, clears an optional field.
    Null,
    /// A boolean.
    Boolean {
        /// The value.
        value: bool,
    },
    /// A 64-bit signed integer (also timestamps).
    Integer {
        /// The value.
        value: i64,
    },
    /// A 64-bit float.
    Float {
        /// The value.
        value: f64,
    },
    /// A string (also `text` and `reference` fields).
    Str {
        /// The value.
        value: String,
    },
    /// A JSON map or list, as JSON text.
    Json {
        /// The JSON text.
        json: String,
    },
}

/// Field values by field name.
pub type FieldMap = HashMap<String, FieldValue>;

impl FieldValue {
    pub(crate) fn to_core(&self) -> Result<Value> {
        Ok(match self {
            FieldValue::Null => Value::Null,
            FieldValue::Boolean { value } => Value::Bool(*value),
            FieldValue::Integer { value } => Value::from(*value),
            FieldValue::Float { value } => {
                Number::from_f64(*value).map(Value::Number).ok_or_else(|| {
                    FieldsyncError::invalid_value("a float field value must be finite")
                })?
            }
            FieldValue::Str { value } => Value::String(value.clone()),
            FieldValue::Json { json } => serde_json::from_str(json).map_err(|err| {
                FieldsyncError::invalid_value(format!("a Json field value is not JSON: {err}"))
            })?,
        })
    }

    pub(crate) fn from_core(value: &Value) -> FieldValue {
        match value {
            Value::Null => FieldValue::Null,
            Value::Bool(value) => FieldValue::Boolean { value: *value },
            Value::Number(number) => match number.as_i64() {
                Some(value) => FieldValue::Integer { value },
                None => FieldValue::Float {
                    value: number.as_f64().unwrap_or(f64::NAN),
                },
            },
            Value::String(value) => FieldValue::Str {
                value: value.clone(),
            },
            Value::Array(_) | Value::Object(_) => FieldValue::Json {
                json: value.to_string(),
            },
        }
    }
}

pub(crate) fn fields_to_core(fields: &FieldMap) -> Result<core::Fields> {
    fields
        .iter()
        .map(|(name, value)| Ok((name.clone(), value.to_core()?)))
        .collect()
}

pub(crate) fn fields_from_core(fields: &core::Fields) -> FieldMap {
    fields
        .iter()
        .map(|(name, value)| (name.clone(), FieldValue::from_core(value)))
        .collect()
}

/// A live record.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Record {
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// The record's scope (its collection's scope field).
    pub scope: String,
    /// Declared fields that have a value.
    pub fields: FieldMap,
    /// When the record was first stored on this device (ms since the epoch).
    pub created_at_ms: i64,
    /// When the record last changed on this device, locally or by merge.
    pub updated_at_ms: i64,
}

impl From<core::Record> for Record {
    fn from(record: core::Record) -> Self {
        Record {
            fields: fields_from_core(&record.fields),
            collection: record.collection,
            id: record.id,
            scope: record.scope,
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
        }
    }
}

/// A condition on a record's fields.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum Filter {
    /// Every record.
    All,
    /// The field equals the value.
    Eq {
        /// Field name.
        field: String,
        /// Value compared with.
        value: FieldValue,
    },
    /// The field differs from the value; records where it is unset match too.
    Ne {
        /// Field name.
        field: String,
        /// Value compared with.
        value: FieldValue,
    },
    /// The field is less than the value.
    Lt {
        /// Field name.
        field: String,
        /// Value compared with.
        value: FieldValue,
    },
    /// The field is less than or equal to the value.
    Lte {
        /// Field name.
        field: String,
        /// Value compared with.
        value: FieldValue,
    },
    /// The field is greater than the value.
    Gt {
        /// Field name.
        field: String,
        /// Value compared with.
        value: FieldValue,
    },
    /// The field is greater than or equal to the value.
    Gte {
        /// Field name.
        field: String,
        /// Value compared with.
        value: FieldValue,
    },
    /// The field equals one of the values.
    In {
        /// Field name.
        field: String,
        /// Values compared with.
        values: Vec<FieldValue>,
    },
    /// The string field starts with the prefix (case-sensitive).
    Prefix {
        /// Field name.
        field: String,
        /// The prefix.
        prefix: String,
    },
    /// The field is unset.
    IsNull {
        /// Field name.
        field: String,
    },
    /// The field is set.
    IsNotNull {
        /// Field name.
        field: String,
    },
    /// Every filter matches.
    And {
        /// The conditions.
        filters: Vec<Filter>,
    },
    /// At least one filter matches.
    Or {
        /// The conditions.
        filters: Vec<Filter>,
    },
}

impl Filter {
    pub(crate) fn to_core(&self) -> Result<core::Filter> {
        let compare = |field: &String, value: &FieldValue| -> Result<(String, Value)> {
            Ok((field.clone(), value.to_core()?))
        };
        Ok(match self {
            Filter::All => core::Filter::All,
            Filter::Eq { field, value } => {
                let (field, value) = compare(field, value)?;
                core::Filter::Eq { field, value }
            }
            Filter::Ne { field, value } => {
                let (field, value) = compare(field, value)?;
                core::Filter::Ne { field, value }
            }
            Filter::Lt { field, value } => {
                let (field, value) = compare(field, value)?;
                core::Filter::Lt { field, value }
            }
            Filter::Lte { field, value } => {
                let (field, value) = compare(field, value)?;
                core::Filter::Lte { field, value }
            }
            Filter::Gt { field, value } => {
                let (field, value) = compare(field, value)?;
                core::Filter::Gt { field, value }
            }
            Filter::Gte { field, value } => {
                let (field, value) = compare(field, value)?;
                core::Filter::Gte { field, value }
            }
            Filter::In { field, values } => core::Filter::In {
                field: field.clone(),
                values: values
                    .iter()
                    .map(FieldValue::to_core)
                    .collect::<Result<_>>()?,
            },
            Filter::Prefix { field, prefix } => core::Filter::Prefix {
                field: field.clone(),
                prefix: prefix.clone(),
            },
            Filter::IsNull { field } => core::Filter::IsNull {
                field: field.clone(),
            },
            Filter::IsNotNull { field } => core::Filter::IsNotNull {
                field: field.clone(),
            },
            Filter::And { filters } => core::Filter::And {
                filters: filters.iter().map(Filter::to_core).collect::<Result<_>>()?,
            },
            Filter::Or { filters } => core::Filter::Or {
                filters: filters.iter().map(Filter::to_core).collect::<Result<_>>()?,
            },
        })
    }
}

/// One ordering key.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Order {
    /// Field name.
    pub field: String,
    /// Largest first when true.
    #[uniffi(default = false)]
    pub descending: bool,
}

/// A filter with ordering and paging. Records with equal ordering keys come in id order.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Query {
    /// Which records (`Filter::All` for every record).
    pub filter: Filter,
    /// In which order.
    #[uniffi(default = [])]
    pub order: Vec<Order>,
    /// At most this many.
    #[uniffi(default = None)]
    pub limit: Option<i64>,
    /// After skipping this many.
    #[uniffi(default = 0)]
    pub offset: i64,
}

impl Query {
    pub(crate) fn to_core(&self) -> Result<core::Query> {
        Ok(core::Query {
            filter: self.filter.to_core()?,
            order: self
                .order
                .iter()
                .map(|order| core::Order {
                    field: order.field.clone(),
                    descending: order.descending,
                })
                .collect(),
            limit: self
                .limit
                .map(|limit| unsigned(limit, "limit"))
                .transpose()?,
            offset: unsigned(self.offset, "offset")?,
        })
    }
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum Write {
    /// Insert a record; `id` defaults to a new UUIDv7.
    Insert {
        /// Collection.
        collection: String,
        /// Caller-chosen id, if any.
        id: Option<String>,
        /// Field values; every required field must be present.
        fields: FieldMap,
    },
    /// Set fields of a live record; `Null` clears an optional field.
    Update {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
        /// Fields to set or clear.
        patch: FieldMap,
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
        index: i32,
        /// How many units to delete there.
        delete_count: i32,
        /// What to insert there.
        insert: String,
    },
    /// Delete a record (a tombstone that syncs).
    Delete {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
    },
}

impl Write {
    pub(crate) fn into_core(self) -> Result<core::Write> {
        Ok(match self {
            Write::Insert {
                collection,
                id,
                fields,
            } => core::Write::Insert {
                collection,
                id,
                fields: fields_to_core(&fields)?,
            },
            Write::Update {
                collection,
                id,
                patch,
            } => core::Write::Update {
                collection,
                id,
                patch: fields_to_core(&patch)?,
            },
            Write::SpliceText {
                collection,
                id,
                field,
                index,
                delete_count,
                insert,
            } => core::Write::SpliceText {
                collection,
                id,
                field,
                index: unsigned(index, "index")?,
                delete_count: unsigned(delete_count, "delete_count")?,
                insert,
            },
            Write::Delete { collection, id } => core::Write::Delete { collection, id },
        })
    }
}

/// A count or size as the platforms count it: in a signed integer (Kotlin `Long`, Swift
/// `Int64`). Nothing the store counts comes near the top of its range.
pub(crate) fn signed<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// A count, size or position the app gave, for the core: refused when negative, naming it.
pub(crate) fn unsigned<T: TryFrom<i64>>(value: impl Into<i64>, name: &str) -> Result<T> {
    let value = value.into();
    if value < 0 {
        return Err(FieldsyncError::invalid_value(format!(
            "`{name}` must not be negative"
        )));
    }
    T::try_from(value).map_err(|_| {
        FieldsyncError::invalid_value(format!("`{name}` is too large for this device"))
    })
}

/// The person and device behind a change, as the server named them at a sync.
#[derive(Debug, Clone, PartialEq, Eq, Hash, uniffi::Record)]
pub struct Author {
    /// The user's display name (their sign-in name when they have none).
    pub user_name: String,
    /// The device's name, as it was enrolled.
    pub device_name: String,
}

impl From<core::Author> for Author {
    fn from(author: core::Author) -> Self {
        Author {
            user_name: author.user,
            device_name: author.device,
        }
    }
}

/// One of the concurrent values of a field, and the device that wrote it.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ConflictValue {
    /// The value.
    pub value: FieldValue,
    /// The device (actor id) that wrote it.
    pub device_id: String,
    /// Who wrote it, once a sync named the person and device behind `device_id`.
    pub author: Option<Author>,
}

/// A field on which concurrent writes happened: the value every device shows, and the losers.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct FieldConflict {
    /// The field name.
    pub field: String,
    /// The value every device shows.
    pub winner: ConflictValue,
    /// The values that lost, one per concurrent write.
    pub losers: Vec<ConflictValue>,
}

impl From<core::ConflictValue> for ConflictValue {
    fn from(value: core::ConflictValue) -> Self {
        ConflictValue {
            value: FieldValue::from_core(&value.value),
            device_id: value.device_id,
            author: value.author.map(Into::into),
        }
    }
}

impl From<core::FieldConflict> for FieldConflict {
    fn from(conflict: core::FieldConflict) -> Self {
        FieldConflict {
            field: conflict.field,
            winner: conflict.winner.into(),
            losers: conflict.losers.into_iter().map(Into::into).collect(),
        }
    }
}

/// One change in a record's history.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HistoryEntry {
    /// The change hash (hex), unique across all devices.
    pub change_hash: String,
    /// The device (actor id) that made the change.
    pub device_id: String,
    /// Who made it, once a sync named the person and device behind `device_id`.
    pub author: Option<Author>,
    /// When the device made it (ms since the epoch, device clock).
    pub timestamp_ms: i64,
    /// The fields it wrote, sorted.
    pub fields: Vec<String>,
    /// Whether it deleted the record.
    pub deleted: bool,
}

impl From<core::HistoryEntry> for HistoryEntry {
    fn from(entry: core::HistoryEntry) -> Self {
        HistoryEntry {
            change_hash: entry.change_hash,
            device_id: entry.device_id,
            author: entry.author.map(Into::into),
            timestamp_ms: entry.timestamp_ms,
            fields: entry.fields,
            deleted: entry.deleted,
        }
    }
}

/// A live record whose reference field points at a deleted or absent record.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Orphan {
    /// Id of the referencing record.
    pub id: String,
    /// Its reference field.
    pub field: String,
    /// The id it points at.
    pub target_id: String,
}

impl From<core::Orphan> for Orphan {
    fn from(orphan: core::Orphan) -> Self {
        Orphan {
            id: orphan.id,
            field: orphan.field,
            target_id: orphan.target_id,
        }
    }
}

/// A write that did not reach the server: refused by it (the record shows what the server has
/// again), or taken away with a revoked scope. It keeps what the user wrote until the app
/// retries or discards it.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct RejectedWrite {
    /// Identifies the entry for `retry_rejected_write` and `discard_rejected_write`.
    pub id: i64,
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub record_id: String,
    /// The record's scope.
    pub scope: String,
    /// Each field the write set, with the value the user last gave it (`Null`: cleared).
    pub fields: FieldMap,
    /// Whether the write deleted the record.
    pub deleted: bool,
    /// Whether the write created the record (the store no longer has it).
    pub created: bool,
    /// The server's stable code (`forbidden_scope`, `invalid_record`, ...), or
    /// `scope_revoked`.
    pub code: String,
    /// The server's message (fields and rules, never values).
    pub message: String,
    /// When it was refused (ms since the epoch).
    pub rejected_at_ms: i64,
}

impl From<core::RejectedWrite> for RejectedWrite {
    fn from(write: core::RejectedWrite) -> Self {
        RejectedWrite {
            fields: fields_from_core(&write.fields),
            id: write.id,
            collection: write.collection,
            record_id: write.record_id,
            scope: write.scope,
            deleted: write.deleted,
            created: write.created,
            code: write.code,
            message: write.message,
            rejected_at_ms: write.rejected_at_ms,
        }
    }
}

/// How hard SQLite works to make each commit survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Synchronous {
    /// Every commit is on disk when the call returns, even across power loss; but a keystroke
    /// (`splice_text`) is flushed on a thread of its own within about 50 ms.
    Full,
    /// Commits survive an app crash; the last ones may be lost on power loss. Faster.
    Normal,
}

/// Options for opening a store.
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
pub struct StoreOptions {
    /// Durability of commits (`Full` unless the app can lose its last writes on power loss).
    pub synchronous: Synchronous,
    /// How many record documents stay loaded in memory between writes.
    #[uniffi(default = 512)]
    pub document_cache_size: i32,
    /// How many remote changes may wait for missing dependencies.
    #[uniffi(default = 10000)]
    pub max_pending_changes: i32,
    /// The 32-byte key that encrypts the file (kept in the Keychain or Keystore); null keeps
    /// the file unencrypted, which only apps without clinical data should do.
    #[uniffi(default = None)]
    pub encryption_key: Option<Vec<u8>>,
    /// The most bytes of attachments the server holds that the store keeps (1 GiB by
    /// default): past it the least recently used are evicted, and fetched again when needed.
    /// Attachments not yet on the server are kept whatever their size.
    #[uniffi(default = 1073741824)]
    pub attachment_budget_bytes: i64,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("synchronous", &self.synchronous)
            .field("document_cache_size", &self.document_cache_size)
            .field("max_pending_changes", &self.max_pending_changes)
            .field("encrypted", &self.encryption_key.is_some())
            .field("attachment_budget_bytes", &self.attachment_budget_bytes)
            .finish()
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        let defaults = core::StoreOptions::default();
        StoreOptions {
            synchronous: Synchronous::Full,
            document_cache_size: i32::try_from(defaults.document_cache_size).unwrap_or(i32::MAX),
            max_pending_changes: i32::try_from(defaults.max_pending_changes).unwrap_or(i32::MAX),
            encryption_key: None,
            attachment_budget_bytes: signed(defaults.attachment_budget_bytes),
        }
    }
}

impl TryFrom<StoreOptions> for core::StoreOptions {
    type Error = FieldsyncError;

    fn try_from(options: StoreOptions) -> Result<Self> {
        let encryption_key = match &options.encryption_key {
            Some(bytes) => Some(core::EncryptionKey::from_slice(bytes)?),
            None => None,
        };
        Ok(core::StoreOptions {
            encryption_key,
            synchronous: match options.synchronous {
                Synchronous::Full => core::Synchronous::Full,
                Synchronous::Normal => core::Synchronous::Normal,
            },
            document_cache_size: unsigned(options.document_cache_size, "document_cache_size")?,
            max_pending_changes: unsigned(options.max_pending_changes, "max_pending_changes")?,
            attachment_budget_bytes: unsigned(
                options.attachment_budget_bytes,
                "attachment_budget_bytes",
            )?,
        })
    }
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ChangeOrigin {
    /// A write on this device.
    Local,
    /// Changes merged from elsewhere (sync).
    Remote,
}

/// What a subscriber is told after a commit.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChangeEvent {
    /// The collection subscribed to.
    pub collection: String,
    /// Ids of the records that changed and matched the filter before or after the change.
    pub ids: Vec<String>,
    /// Whether the change was local or merged from elsewhere.
    pub origin: ChangeOrigin,
}

impl From<&core::ChangeEvent> for ChangeEvent {
    fn from(event: &core::ChangeEvent) -> Self {
        ChangeEvent {
            collection: event.collection.clone(),
            ids: event.ids.clone(),
            origin: match event.origin {
                core::ChangeOrigin::Local => ChangeOrigin::Local,
                core::ChangeOrigin::Remote => ChangeOrigin::Remote,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_round_trip_through_the_core() {
        let values = [
            FieldValue::Null,
            FieldValue::Boolean { value: true },
            FieldValue::Integer { value: -7 },
            FieldValue::Float { value: 2.5 },
            FieldValue::Str {
                value: "Ada".into(),
            },
            FieldValue::Json {
                json: r#"{"goals":["walk",2]}"#.into(),
            },
        ];
        for value in values {
            assert_eq!(FieldValue::from_core(&value.to_core().unwrap()), value);
        }
    }

    #[test]
    fn numbers_beyond_i64_and_non_finite_floats() {
        assert_eq!(
            FieldValue::from_core(&json!(u64::MAX)),
            FieldValue::Float {
                value: u64::MAX as f64
            }
        );
        let nan = FieldValue::Float { value: f64::NAN };
        assert!(matches!(
            nan.to_core(),
            Err(FieldsyncError::InvalidValue { .. })
        ));
        let bad = FieldValue::Json { json: "{".into() };
        assert!(matches!(
            bad.to_core(),
            Err(FieldsyncError::InvalidValue { .. })
        ));
    }

    #[test]
    fn nested_filters_convert() {
        let filter = Filter::Or {
            filters: vec![
                Filter::Eq {
                    field: "name".into(),
                    value: FieldValue::Str {
                        value: "Ada".into(),
                    },
                },
                Filter::And {
                    filters: vec![Filter::IsNull {
                        field: "phone".into(),
                    }],
                },
            ],
        };
        assert_eq!(
            filter.to_core().unwrap(),
            core::Filter::Or {
                filters: vec![
                    core::Filter::eq("name", "Ada"),
                    core::Filter::And {
                        filters: vec![core::Filter::IsNull {
                            field: "phone".into()
                        }]
                    },
                ]
            }
        );
    }
}
