//! The one error type that crosses the boundary: flat, so Kotlin and Swift see one exception
//! (error) type with a case per failure, each carrying the core's message.

use fieldsync_core::Error as CoreError;

/// Everything that can go wrong in a Fieldsync call. Each case names the failure; its message
/// says what happened and what to do. Messages never contain field values.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum FieldsyncError {
    /// SQLite refused an operation (disk full, file locked, I/O failure); nothing was written.
    #[error("{0}")]
    Database(String),
    /// The file is not a Fieldsync store, or it is damaged.
    #[error("{0}")]
    Corrupt(String),
    /// The file was written by a newer Fieldsync; upgrade the app.
    #[error("{0}")]
    NewerFormat(String),
    /// The file is encrypted (or not a database) and no key was given.
    #[error("{0}")]
    KeyRequired(String),
    /// The key does not open the file (wrong key, or a damaged file); nothing was written.
    #[error("{0}")]
    WrongKey(String),
    /// A key was given for an unencrypted file: encrypt it first with `encrypt_store_file`.
    #[error("{0}")]
    NotEncrypted(String),
    /// The file to encrypt is encrypted already: rotate its key with `Store.rekey`.
    #[error("{0}")]
    AlreadyEncrypted(String),
    /// A key cannot be used (it must be 32 bytes).
    #[error("{0}")]
    InvalidKey(String),
    /// The schema declaration is malformed.
    #[error("{0}")]
    InvalidSchema(String),
    /// The schema cannot replace the one the file was created with.
    #[error("{0}")]
    IncompatibleSchema(String),
    /// No collection of that name is declared.
    #[error("{0}")]
    UnknownCollection(String),
    /// The collection declares no field of that name.
    #[error("{0}")]
    UnknownField(String),
    /// A value does not have its field's declared type.
    #[error("{0}")]
    WrongType(String),
    /// A required field is missing, or a write tried to clear it.
    #[error("{0}")]
    MissingField(String),
    /// An update tried to change a record's scope.
    #[error("{0}")]
    ScopeChange(String),
    /// No live record with that id exists.
    #[error("{0}")]
    NotFound(String),
    /// An insert used an id that is already taken.
    #[error("{0}")]
    DuplicateId(String),
    /// A delete was refused because `restrict` references point at the record.
    #[error("{0}")]
    Restricted(String),
    /// A query filter or order does not fit the collection.
    #[error("{0}")]
    InvalidQuery(String),
    /// A text edit is outside the text or on a field that is not `text`.
    #[error("{0}")]
    InvalidTextEdit(String),
    /// A record id is empty, too long, or uses characters outside `[A-Za-z0-9_.:-]`.
    #[error("{0}")]
    InvalidId(String),
    /// A `Json` field value is not valid JSON, or nests deeper than the store accepts; or an
    /// attachment reference, media type or file name is malformed (the message names which).
    #[error("{0}")]
    InvalidValue(String),
    /// A file the app named could not be read or written (an attachment's source, or where
    /// its bytes were to be saved), or an attachment's bytes left the store while being read.
    #[error("{0}")]
    Io(String),
    /// Changes from elsewhere could not be decoded or merged, or inflate beyond the limit.
    #[error("{0}")]
    InvalidRemoteChange(String),
    /// Too many remote changes wait for missing dependencies.
    #[error("{0}")]
    TooManyPendingChanges(String),
    /// The sync configuration cannot be used (endpoint, certificates).
    #[error("{0}")]
    InvalidConfig(String),
    /// The server could not be reached or the connection broke; retry later.
    #[error("{0}")]
    Network(String),
    /// The server refused the device's token (unknown, expired or revoked): enroll again.
    #[error("{0}")]
    Unauthorized(String),
    /// The token provider gave no token, or the server refused its fresh one: the person must
    /// sign in again. Nothing local is lost; sync again once they have.
    #[error("{0}")]
    SignInRequired(String),
    /// The server asks to slow down; the message says for how long.
    #[error("{0}")]
    RateLimited(String),
    /// The server answered with an error.
    #[error("{0}")]
    Server(String),
    /// The server's answer does not follow the protocol version spoken here.
    #[error("{0}")]
    Protocol(String),
    /// An app callback failed, or the library met a state it does not expect; report it.
    #[error("{0}")]
    Internal(String),
}

impl From<CoreError> for FieldsyncError {
    fn from(err: CoreError) -> Self {
        let message = err.to_string();
        match err {
            CoreError::Database(_) => FieldsyncError::Database(message),
            CoreError::Corrupt(_) => FieldsyncError::Corrupt(message),
            CoreError::NewerFormat { .. } => FieldsyncError::NewerFormat(message),
            CoreError::KeyRequired => FieldsyncError::KeyRequired(message),
            CoreError::WrongKey => FieldsyncError::WrongKey(message),
            CoreError::NotEncrypted => FieldsyncError::NotEncrypted(message),
            CoreError::AlreadyEncrypted => FieldsyncError::AlreadyEncrypted(message),
            CoreError::InvalidKey(_) => FieldsyncError::InvalidKey(message),
            CoreError::InvalidSchema(_) => FieldsyncError::InvalidSchema(message),
            CoreError::IncompatibleSchema(_) => FieldsyncError::IncompatibleSchema(message),
            CoreError::UnknownCollection(_) => FieldsyncError::UnknownCollection(message),
            CoreError::UnknownField { .. } => FieldsyncError::UnknownField(message),
            CoreError::WrongType { .. } => FieldsyncError::WrongType(message),
            CoreError::MissingField { .. } => FieldsyncError::MissingField(message),
            CoreError::ScopeChange { .. } => FieldsyncError::ScopeChange(message),
            CoreError::NotFound { .. } => FieldsyncError::NotFound(message),
            CoreError::DuplicateId { .. } => FieldsyncError::DuplicateId(message),
            CoreError::Restricted { .. } => FieldsyncError::Restricted(message),
            CoreError::InvalidQuery(_) => FieldsyncError::InvalidQuery(message),
            CoreError::InvalidTextEdit { .. } => FieldsyncError::InvalidTextEdit(message),
            CoreError::InvalidId(_) => FieldsyncError::InvalidId(message),
            CoreError::InvalidRemoteChange { .. } | CoreError::RemoteTooLarge { .. } => {
                FieldsyncError::InvalidRemoteChange(message)
            }
            CoreError::NestingTooDeep { .. } | CoreError::InvalidAttachment { .. } => {
                FieldsyncError::InvalidValue(message)
            }
            CoreError::Io(_) => FieldsyncError::Io(message),
            CoreError::TooManyPendingChanges { .. } => {
                FieldsyncError::TooManyPendingChanges(message)
            }
            CoreError::InvalidConfig(_) => FieldsyncError::InvalidConfig(message),
            CoreError::Network(_) => FieldsyncError::Network(message),
            CoreError::Unauthorized => FieldsyncError::Unauthorized(message),
            CoreError::SignInRequired(_) => FieldsyncError::SignInRequired(message),
            CoreError::RateLimited { .. } => FieldsyncError::RateLimited(message),
            CoreError::Server { .. } => FieldsyncError::Server(message),
            CoreError::Protocol(_) => FieldsyncError::Protocol(message),
            _ => FieldsyncError::Internal(message),
        }
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for FieldsyncError {
    fn from(err: uniffi::UnexpectedUniFFICallbackError) -> Self {
        FieldsyncError::Internal(format!("an app callback failed: {}", err.reason))
    }
}

/// A shorthand for results across the boundary.
pub type Result<T, E = FieldsyncError> = std::result::Result<T, E>;
