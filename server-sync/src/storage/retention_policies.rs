//! Retention policies, and what pruning deleted, as storage keeps them.

use super::Result;
use crate::error::ServerError;

/// How long a collection's records are kept: those whose `age_field` (a timestamp) is more
/// than `older_than_days` in the past are erased, whole or only `erase_fields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The collection.
    pub collection: String,
    /// The timestamp field a record's age is counted from.
    pub age_field: String,
    /// Records older than this many days are erased.
    pub older_than_days: u32,
    /// The fields to erase; empty: the whole record.
    pub erase_fields: Vec<String>,
    /// When the policy was set (ms since the epoch).
    pub set_at: i64,
}

/// A policy's fields to erase as stored: a JSON array, or NULL for the whole record.
pub(crate) fn erase_fields_json(policy: &RetentionPolicy) -> Option<String> {
    (!policy.erase_fields.is_empty())
        .then(|| serde_json::to_string(&policy.erase_fields).expect("names serialize"))
}

/// The stored fields to erase.
pub(crate) fn parse_erase_fields(stored: Option<&str>) -> Result<Vec<String>> {
    stored.map_or(Ok(Vec::new()), |json| {
        serde_json::from_str(json).map_err(|_| {
            ServerError::Corrupt("a retention policy's fields to erase do not read".into())
        })
    })
}

/// What one pruning of the feed deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Feed entries.
    pub feed_entries: u64,
    /// Push answers kept for replays.
    pub push_answers: u64,
}
