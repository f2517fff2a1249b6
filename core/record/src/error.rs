//! The one error type of the record engine.
//!
//! Messages name collections, fields and rules, never field values: a value may be clinical
//! data, and error messages end up in logs, crash reports and other devices' push answers.

use crate::schema::FieldType;

/// A shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with a schema, a record, or a record's Automerge data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The schema itself is malformed: fix the declaration.
    #[error("invalid schema: {0}")]
    InvalidSchema(String),

    /// The schema cannot replace the one before it, because data would be lost or
    /// reinterpreted. Only additions (collections, optional fields, indexes) and required
    /// fields becoming optional are compatible.
    #[error("schema change refused: {0}")]
    IncompatibleSchema(String),

    /// No collection of that name is declared in the schema.
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),

    /// The collection declares no field of that name.
    #[error("collection `{collection}` has no field `{field}`")]
    UnknownField {
        /// The collection.
        collection: String,
        /// The undeclared field name.
        field: String,
    },

    /// A value does not have the declared type of its field (`_deleted`, the tombstone, must
    /// be a boolean).
    #[error("field `{collection}.{field}` expects a value of type {expected}")]
    WrongType {
        /// The collection.
        collection: String,
        /// The field whose value is of the wrong type.
        field: String,
        /// The declared type.
        expected: FieldType,
    },

    /// A required field has no value.
    #[error("field `{collection}.{field}` is required")]
    MissingField {
        /// The collection.
        collection: String,
        /// The required field.
        field: String,
    },

    /// A record's scope field does not hold the record's scope (scopes never change).
    #[error("the scope field of a record in `{collection}` does not hold the record's scope")]
    ScopeChange {
        /// The collection.
        collection: String,
    },

    /// An `attachment` field's value is not a reference to an attachment.
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
    /// [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH) levels.
    #[error("field `{field}` nests maps and lists deeper than {limit} levels")]
    NestingTooDeep {
        /// The field holding the value.
        field: String,
        /// The deepest nesting accepted.
        limit: usize,
    },

    /// A text edit addressed a position outside the text.
    #[error("invalid text edit on `{collection}.{field}`: {reason}")]
    InvalidTextEdit {
        /// The collection.
        collection: String,
        /// The field edited.
        field: String,
        /// What was wrong (positions, never content).
        reason: String,
    },

    /// A record id is empty, too long, or uses characters outside `[A-Za-z0-9_.:-]`.
    #[error("invalid record id: {0}")]
    InvalidId(String),

    /// An erasure names a field that cannot be erased on its own (the scope field, the
    /// tombstone, a required field of a live record).
    #[error("field `{collection}.{field}` cannot be erased: {reason}")]
    CannotErase {
        /// The collection.
        collection: String,
        /// The field.
        field: String,
        /// Why, and what to do instead.
        reason: String,
    },

    /// A document does not load or Automerge refused an operation on it.
    #[error("damaged record document: {0}")]
    Corrupt(String),
}

impl Error {
    /// The rule a record broke, as `invalid_record` answers name it: the field and the problem,
    /// never a value. `None` for errors that are not about a record's contents.
    pub fn record_rule(&self) -> Option<String> {
        match self {
            Error::UnknownCollection(name) => Some(format!("collection `{name}` is not declared")),
            Error::WrongType {
                field, expected, ..
            } => Some(format!("field `{field}` must be of type {expected}")),
            Error::MissingField { field, .. } => Some(format!("field `{field}` is required")),
            Error::ScopeChange { .. } => {
                Some("the scope field must hold the record's scope".to_owned())
            }
            Error::NestingTooDeep { field, limit } => Some(format!(
                "field `{field}` nests maps and lists deeper than {limit} levels"
            )),
            Error::InvalidId(reason) => Some(format!("the record id is invalid: {reason}")),
            _ => None,
        }
    }
}

impl From<automerge::AutomergeError> for Error {
    fn from(err: automerge::AutomergeError) -> Self {
        // Automerge errors describe document structure, not values, but stay conservative:
        // only the kind of failure is kept.
        let text = err.to_string();
        let kind = text.split(':').next().unwrap_or("error").trim();
        Error::Corrupt(format!("automerge: {kind}"))
    }
}
