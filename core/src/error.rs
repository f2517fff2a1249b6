//! The one error type of the crate.
//!
//! Messages name collections, fields and record ids, never field values: a value may be
//! clinical data, and error messages end up in logs and crash reports.

use crate::schema::FieldType;

/// A shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store. Every failed call leaves the store unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite refused an operation (disk full, file locked, I/O failure, ...). Nothing was
    /// written; the call can be retried once the cause is fixed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),

    /// The file is not a Fieldsync store, or its contents are damaged.
    #[error("the store file is damaged or not a Fieldsync store: {0}")]
    Corrupt(String),

    /// The file was written by a newer version of Fieldsync; upgrade the app to open it.
    #[error(
        "the store file has format version {found}, newer than this build supports ({supported})"
    )]
    NewerFormat {
        /// Format version found in the file.
        found: u32,
        /// Newest format version this build understands.
        supported: u32,
    },

    /// The file is encrypted (or is not a SQLite file at all) and no key was given: open it
    /// with its key.
    #[error("the store file is encrypted (or not a database): open it with its key")]
    KeyRequired,

    /// The key does not open the file: it is not the file's key, or the file is damaged.
    /// Nothing was written.
    #[error("the key does not open the store file (wrong key, or a damaged file)")]
    WrongKey,

    /// A key was given but the file is not encrypted: encrypt it first with
    /// `Store::encrypt_file`, or open it without a key.
    #[error("the store file is not encrypted: encrypt it with Store::encrypt_file first")]
    NotEncrypted,

    /// The file to encrypt is encrypted already (or is not a store): change its key with
    /// `Store::rekey` instead.
    #[error("the store file is already encrypted: use rekey to change its key")]
    AlreadyEncrypted,

    /// A key cannot be used (not 32 bytes, or no randomness to make one).
    #[error("invalid encryption key: {0}")]
    InvalidKey(String),

    /// The schema itself is malformed: fix the declaration.
    #[error("invalid schema: {0}")]
    InvalidSchema(String),

    /// The schema cannot replace the one the file was created with, because data would be lost
    /// or reinterpreted. Only additions (collections, optional fields, indexes) apply in place.
    #[error("schema change refused: {0}")]
    IncompatibleSchema(String),

    /// No collection of that name is declared in the schema.
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),

    /// The collection declares no field of that name.
    #[error("collection `{collection}` has no field `{field}`")]
    UnknownField {
        /// Collection written to.
        collection: String,
        /// Undeclared field name.
        field: String,
    },

    /// A value does not have the declared type of its field.
    #[error("field `{collection}.{field}` expects a value of type {expected}")]
    WrongType {
        /// Collection written to.
        collection: String,
        /// Field whose value is of the wrong type.
        field: String,
        /// The declared type.
        expected: FieldType,
    },

    /// A required field is missing from an insert, or a write tried to clear it.
    #[error("field `{collection}.{field}` is required")]
    MissingField {
        /// Collection written to.
        collection: String,
        /// Required field.
        field: String,
    },

    /// A record's scope is fixed at insert: an update may not change its scope field.
    #[error("the scope of a record in `{collection}` cannot change after insert")]
    ScopeChange {
        /// Collection of the record.
        collection: String,
    },

    /// No live record with that id exists in the collection.
    #[error("no record `{id}` in `{collection}`")]
    NotFound {
        /// Collection searched.
        collection: String,
        /// Record id asked for.
        id: String,
    },

    /// An insert used an id that a record (live or deleted) already has.
    #[error("a record `{id}` already exists in `{collection}`")]
    DuplicateId {
        /// Collection written to.
        collection: String,
        /// The id in use.
        id: String,
    },

    /// A delete was refused because a reference field declared `restrict` points at the record.
    #[error(
        "record `{id}` in `{collection}` is referenced from `{referenced_by}`; delete those first"
    )]
    Restricted {
        /// Collection of the record that was to be deleted.
        collection: String,
        /// Id of that record.
        id: String,
        /// `collection.field` whose records still point at it.
        referenced_by: String,
    },

    /// A query filter or order is not valid for the collection's fields.
    #[error("invalid query: {0}")]
    InvalidQuery(String),

    /// A text edit addressed a position outside the text, or a field that is not `text`.
    #[error("invalid text edit on `{collection}.{field}`: {reason}")]
    InvalidTextEdit {
        /// Collection of the record.
        collection: String,
        /// Field edited.
        field: String,
        /// What was wrong (positions, never content).
        reason: String,
    },

    /// A record id is empty, too long, or uses characters outside `[A-Za-z0-9_.:-]`.
    #[error("invalid record id: {0}")]
    InvalidId(String),

    /// Changes that came from elsewhere could not be decoded or merged.
    #[error("invalid remote change for `{collection}/{id}`: {reason}")]
    InvalidRemoteChange {
        /// Collection of the record.
        collection: String,
        /// Record id.
        id: String,
        /// What was wrong.
        reason: String,
    },

    /// A file the app named could not be read or written (an attachment's source, or where
    /// its bytes were to be saved), or an attachment's bytes left the store while being read.
    /// The message says how, never what the file holds.
    #[error("file error: {0}")]
    Io(String),

    /// The sync configuration cannot be used (endpoint, certificates).
    #[error("invalid sync configuration: {0}")]
    InvalidConfig(String),

    /// The server could not be reached or the connection broke; retry later.
    #[error("network error: {0}")]
    Network(String),

    /// The server refused the token (unknown, expired or revoked): stop syncing and enroll the
    /// device again.
    #[error("the server refused the device's token")]
    Unauthorized,

    /// The token provider could not give a token, or the server refused a fresh one: the
    /// person must sign in again (their session ended, or they lost access). Syncing resumes
    /// once the provider has a token again.
    #[error("sign-in required: {0}")]
    SignInRequired(String),

    /// The server asks to slow down; retry after the given seconds.
    #[error("rate limited by the server; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds to wait.
        retry_after_secs: u64,
    },

    /// The server answered with an error.
    #[error("the server answered {status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },

    /// The server's answer does not follow the protocol (or its version is not spoken here).
    #[error("protocol error: {0}")]
    Protocol(String),

    /// An `attachment` field was given a value that is not a reference to an attachment.
    #[error("field `{collection}.{field}` is not an attachment reference: {problem}")]
    InvalidAttachment {
        /// The collection.
        collection: String,
        /// The field.
        field: String,
        /// What is wrong, naming the member (never its value).
        problem: &'static str,
    },

    /// A field value nests maps and lists deeper than
    /// [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH) levels. A write holding one is refused:
    /// flatten the value. A remote record holding one is not merged.
    #[error("field `{field}` nests maps and lists deeper than {limit} levels")]
    NestingTooDeep {
        /// The field holding the value.
        field: String,
        /// The deepest nesting accepted.
        limit: usize,
    },

    /// A remote record's changes or document inflate to more than
    /// [`MAX_RECORD_INFLATED_BYTES`](crate::protocol::MAX_RECORD_INFLATED_BYTES); it was not
    /// loaded or merged. Nothing of it was written; the sender must split or compact it.
    #[error("the remote record `{collection}/{id}` inflates to more than {limit} bytes")]
    RemoteTooLarge {
        /// Collection of the record.
        collection: String,
        /// Record id.
        id: String,
        /// The most one record may inflate to.
        limit: usize,
    },

    /// Too many changes are waiting for their dependencies; sync the whole document instead.
    #[error("{waiting} remote changes are waiting for missing dependencies (limit {limit})")]
    TooManyPendingChanges {
        /// Changes already waiting plus the ones that would be added.
        waiting: usize,
        /// The configured bound.
        limit: usize,
    },
}

impl From<fieldsync_record::Error> for Error {
    fn from(err: fieldsync_record::Error) -> Self {
        use fieldsync_record::Error as Record;
        match err {
            Record::InvalidSchema(reason) => Error::InvalidSchema(reason),
            Record::IncompatibleSchema(reason) => Error::IncompatibleSchema(reason),
            Record::UnknownCollection(name) => Error::UnknownCollection(name),
            Record::UnknownField { collection, field } => Error::UnknownField { collection, field },
            Record::WrongType {
                collection,
                field,
                expected,
            } => Error::WrongType {
                collection,
                field,
                expected,
            },
            Record::MissingField { collection, field } => Error::MissingField { collection, field },
            Record::ScopeChange { collection } => Error::ScopeChange { collection },
            Record::NestingTooDeep { field, limit } => Error::NestingTooDeep { field, limit },
            Record::InvalidAttachment {
                collection,
                field,
                problem,
            } => Error::InvalidAttachment {
                collection,
                field,
                problem,
            },
            Record::InvalidTextEdit {
                collection,
                field,
                reason,
            } => Error::InvalidTextEdit {
                collection,
                field,
                reason,
            },
            Record::InvalidId(reason) => Error::InvalidId(reason),
            Record::Corrupt(reason) => Error::Corrupt(reason),
            // The record engine's error is non-exhaustive; a new kind is a damaged record
            // until it gets a case of its own here.
            other => Error::Corrupt(other.to_string()),
        }
    }
}

impl From<automerge::AutomergeError> for Error {
    fn from(err: automerge::AutomergeError) -> Self {
        // Automerge errors describe document structure, not values, but stay conservative:
        // only the kind of failure is kept.
        Error::Corrupt(format!("automerge: {}", error_kind(&err)))
    }
}

fn error_kind(err: &automerge::AutomergeError) -> String {
    let text = err.to_string();
    text.split(':').next().unwrap_or("error").trim().to_owned()
}
