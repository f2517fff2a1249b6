//! The audit log, as storage keeps it.

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When (ms since the epoch).
    pub at: i64,
    /// Who.
    pub user: String,
    /// From which device.
    pub device_id: i64,
    /// `push`, `pull`, `refuse` for a pushed record the server refused, `repair` for a
    /// record the server rebuilt (by the user `(server)`, device 0), or `erase`.
    pub action: String,
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub record_id: String,
    /// Scope of the record.
    pub scope: String,
    /// For `refuse`: the refusal's code (`forbidden_scope`, `invalid_record`, ...).
    pub code: Option<String>,
    /// For `erase`: what was erased and why (never a value).
    pub detail: Option<String>,
}

/// One version of the schema pushed records are validated against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSchema {
    /// The version, counted from 1; the newest is in force.
    pub version: u32,
    /// The schema as JSON (`fieldsync_record::Schema`).
    pub schema_json: String,
    /// When it was set (ms since the epoch).
    pub set_at: i64,
}

/// A line to write to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewAuditLine<'a> {
    /// Who (0: the server itself, or its command line).
    pub user_id: i64,
    /// From which device (0: none).
    pub device_id: i64,
    /// What was done.
    pub action: &'a str,
    /// To what: a record's collection, `admin` for an administrator's action, `attachment`.
    pub collection: &'a str,
    /// The record's id, the administrator's target, or the attachment's SHA-256.
    pub record_id: &'a str,
    /// The scope, if any.
    pub scope: &'a str,
}

/// Which audit lines to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this user's.
    pub user: Option<String>,
    /// Only this record's (or, for an administrator's action, this target's).
    pub record_id: Option<String>,
    /// Only lines at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// Only lines before this time (ms since the epoch).
    pub until: Option<i64>,
    /// At most this many, newest first.
    pub limit: u32,
}
