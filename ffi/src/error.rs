//! The one error type that crosses the boundary. Each case names the failure and carries what
//! an app acts on (the collection and id not found, the delay a rate limit asks for, the
//! server's status) beside `reason`, the core's message. Kotlin sees one exception class per
//! case with those fields as properties, Swift an enum case with associated values, Python an
//! exception class per case with the fields as attributes.

use fieldsync_core::Error as CoreError;

/// Everything that can go wrong in a Fieldsync call. Each case names the failure; `reason`
/// says what happened and what to do. Reasons never contain field values.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum FieldsyncError {
    /// SQLite refused an operation (disk full, file locked, I/O failure); nothing was written.
    #[error("{reason}")]
    Database {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The file is not a Fieldsync store, or it is damaged.
    #[error("{reason}")]
    Corrupt {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The file was written by a newer Fieldsync; upgrade the app.
    #[error("{reason}")]
    NewerFormat {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The file is encrypted (or not a database) and no key was given.
    #[error("{reason}")]
    KeyRequired {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The key does not open the file (wrong key, or a damaged file); nothing was written.
    #[error("{reason}")]
    WrongKey {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// A key was given for an unencrypted file: encrypt it first with `encrypt_store_file`.
    #[error("{reason}")]
    NotEncrypted {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The file to encrypt is encrypted already: rotate its key with `Store.rekey`.
    #[error("{reason}")]
    AlreadyEncrypted {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// A key cannot be used (it must be 32 bytes).
    #[error("{reason}")]
    InvalidKey {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The schema declaration is malformed.
    #[error("{reason}")]
    InvalidSchema {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The schema cannot replace the one the file was created with.
    #[error("{reason}")]
    IncompatibleSchema {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// No collection of that name is declared.
    #[error("{reason}")]
    UnknownCollection {
        /// The collection named.
        collection: String,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The collection declares no field of that name.
    #[error("{reason}")]
    UnknownField {
        /// The collection.
        collection: String,
        /// The field named.
        field: String,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// A value does not have its field's declared type.
    #[error("{reason}")]
    WrongType {
        /// The collection.
        collection: String,
        /// The field written.
        field: String,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// A required field is missing, or a write tried to clear it.
    #[error("{reason}")]
    MissingField {
        /// The collection.
        collection: String,
        /// The required field.
        field: String,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// An update tried to change a record's scope.
    #[error("{reason}")]
    ScopeChange {
        /// The collection.
        collection: String,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// No live record with that id exists.
    #[error("{reason}")]
    NotFound {
        /// The collection searched.
        collection: String,
        /// The record id asked for.
        id: String,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// An insert used an id that is already taken.
    #[error("{reason}")]
    DuplicateId {
        /// The collection.
        collection: String,
        /// The id in use.
        id: String,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// A delete was refused because `restrict` references point at the record.
    #[error("{reason}")]
    Restricted {
        /// The collection.
        collection: String,
        /// The record that was to be deleted.
        id: String,
        /// `collection.field` whose records still point at it.
        referenced_by: String,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// A query filter or order does not fit the collection.
    #[error("{reason}")]
    InvalidQuery {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// A text edit is outside the text or on a field that is not `text`.
    #[error("{reason}")]
    InvalidTextEdit {
        /// The collection.
        collection: String,
        /// The field edited.
        field: String,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// A record id is empty, too long, or uses characters outside `[A-Za-z0-9_.:-]`.
    #[error("{reason}")]
    InvalidId {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// A `Json` field value is not valid JSON, or nests deeper than the store accepts; or an
    /// attachment reference, media type or file name is malformed (the reason names which).
    #[error("{reason}")]
    InvalidValue {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// A file the app named could not be read or written (an attachment's source, or where
    /// its bytes were to be saved), or an attachment's bytes left the store while being read.
    #[error("{reason}")]
    Io {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// Changes from elsewhere could not be decoded or merged, or inflate beyond the limit.
    #[error("{reason}")]
    InvalidRemoteChange {
        /// The record's collection.
        collection: String,
        /// The record's id.
        id: String,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// Too many remote changes wait for missing dependencies.
    #[error("{reason}")]
    TooManyPendingChanges {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The sync configuration cannot be used (endpoint, certificates).
    #[error("{reason}")]
    InvalidConfig {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The server could not be reached or the connection broke; retry later.
    #[error("{reason}")]
    Network {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The server refused the device's token (unknown, expired or revoked): enroll again.
    #[error("{reason}")]
    Unauthorized {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The token provider gave no token, or the server refused its fresh one: the person must
    /// sign in again. Nothing local is lost; sync again once they have.
    #[error("{reason}")]
    SignInRequired {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The server asks to slow down: sync again after `retry_after_ms`.
    #[error("{reason}")]
    RateLimited {
        /// How long to wait before the next sync (ms).
        retry_after_ms: i64,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The server answered with an error.
    #[error("{reason}")]
    Server {
        /// The HTTP status.
        status: i32,
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// The server's answer does not follow the protocol version spoken here.
    #[error("{reason}")]
    Protocol {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
    /// An app callback failed, or the library met a state it does not expect; report it.
    #[error("{reason}")]
    Internal {
        /// What happened and what to do (names fields and ids, never values).
        reason: String,
    },
}

impl FieldsyncError {
    /// A value the app gave cannot be used; `reason` says which and why.
    pub(crate) fn invalid_value(reason: impl Into<String>) -> Self {
        FieldsyncError::InvalidValue {
            reason: reason.into(),
        }
    }

    /// The library met a state it does not expect.
    pub(crate) fn internal(reason: impl Into<String>) -> Self {
        FieldsyncError::Internal {
            reason: reason.into(),
        }
    }
}

impl From<CoreError> for FieldsyncError {
    fn from(err: CoreError) -> Self {
        let reason = err.to_string();
        match err {
            CoreError::Database(_) => FieldsyncError::Database { reason },
            CoreError::Corrupt(_) => FieldsyncError::Corrupt { reason },
            CoreError::NewerFormat { .. } => FieldsyncError::NewerFormat { reason },
            CoreError::KeyRequired => FieldsyncError::KeyRequired { reason },
            CoreError::WrongKey => FieldsyncError::WrongKey { reason },
            CoreError::NotEncrypted => FieldsyncError::NotEncrypted { reason },
            CoreError::AlreadyEncrypted => FieldsyncError::AlreadyEncrypted { reason },
            CoreError::InvalidKey(_) => FieldsyncError::InvalidKey { reason },
            CoreError::InvalidSchema(_) => FieldsyncError::InvalidSchema { reason },
            CoreError::IncompatibleSchema(_) => FieldsyncError::IncompatibleSchema { reason },
            CoreError::UnknownCollection(collection) => {
                FieldsyncError::UnknownCollection { collection, reason }
            }
            CoreError::UnknownField { collection, field } => FieldsyncError::UnknownField {
                collection,
                field,
                reason,
            },
            CoreError::WrongType {
                collection, field, ..
            } => FieldsyncError::WrongType {
                collection,
                field,
                reason,
            },
            CoreError::MissingField { collection, field } => FieldsyncError::MissingField {
                collection,
                field,
                reason,
            },
            CoreError::ScopeChange { collection } => {
                FieldsyncError::ScopeChange { collection, reason }
            }
            CoreError::NotFound { collection, id } => FieldsyncError::NotFound {
                collection,
                id,
                reason,
            },
            CoreError::DuplicateId { collection, id } => FieldsyncError::DuplicateId {
                collection,
                id,
                reason,
            },
            CoreError::Restricted {
                collection,
                id,
                referenced_by,
            } => FieldsyncError::Restricted {
                collection,
                id,
                referenced_by,
                reason,
            },
            CoreError::InvalidQuery(_) => FieldsyncError::InvalidQuery { reason },
            CoreError::InvalidTextEdit {
                collection, field, ..
            } => FieldsyncError::InvalidTextEdit {
                collection,
                field,
                reason,
            },
            CoreError::InvalidId(_) => FieldsyncError::InvalidId { reason },
            CoreError::InvalidRemoteChange { collection, id, .. }
            | CoreError::RemoteTooLarge { collection, id, .. } => {
                FieldsyncError::InvalidRemoteChange {
                    collection,
                    id,
                    reason,
                }
            }
            CoreError::NestingTooDeep { .. } | CoreError::InvalidAttachment { .. } => {
                FieldsyncError::InvalidValue { reason }
            }
            CoreError::Io(_) => FieldsyncError::Io { reason },
            CoreError::TooManyPendingChanges { .. } => {
                FieldsyncError::TooManyPendingChanges { reason }
            }
            CoreError::InvalidConfig(_) => FieldsyncError::InvalidConfig { reason },
            CoreError::Network(_) => FieldsyncError::Network { reason },
            CoreError::Unauthorized => FieldsyncError::Unauthorized { reason },
            CoreError::SignInRequired(_) => FieldsyncError::SignInRequired { reason },
            CoreError::RateLimited { retry_after_secs } => FieldsyncError::RateLimited {
                retry_after_ms: i64::try_from(retry_after_secs.saturating_mul(1000))
                    .unwrap_or(i64::MAX),
                reason,
            },
            CoreError::Server { status, .. } => FieldsyncError::Server {
                status: i32::from(status),
                reason,
            },
            CoreError::Protocol(_) => FieldsyncError::Protocol { reason },
            _ => FieldsyncError::Internal { reason },
        }
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for FieldsyncError {
    fn from(err: uniffi::UnexpectedUniFFICallbackError) -> Self {
        FieldsyncError::internal(format!("an app callback failed: {}", err.reason))
    }
}

/// A shorthand for results across the boundary.
pub type Result<T, E = FieldsyncError> = std::result::Result<T, E>;
