//! Erasing a record's content from the server: the record is written again as its next epoch
//! (`fieldsync_record::erasure`), which takes the place of its document, values and every
//! feed entry that held the old content, with an audit line saying what was erased, by whom
//! and why, never the content. Devices replace their copy at their next pull; changes made on
//! the old epoch are refused (`record_erased`) and made again by the devices on the new one.
//!
//! Push answers kept for replays (`push_batches`) hold record ids and refusal codes, never
//! content, so they stay. Attachments' bytes that only erased values referenced go too, once
//! the caller, which holds the attachment store, drops those no other record references.

use automerge::{ActorId, AutoCommit};
use fieldsync_record::Schema;
use fieldsync_record::erasure::{Erasure, next_epoch};
use fieldsync_record::merge::guarded;
use fieldsync_record::validate::validate_document;

use crate::error::ServerError;
use crate::merge::lineage_after_merge;
use crate::storage::{NewEpoch, Storage, now_ms};

/// How many times an erasure is tried again when pushes keep writing the record meanwhile.
const ATTEMPTS: usize = 5;

/// An erasure to make.
#[derive(Debug, Clone)]
pub struct EraseRequest<'a> {
    /// The record's collection.
    pub collection: &'a str,
    /// The record's id.
    pub id: &'a str,
    /// What to take out.
    pub erasure: Erasure,
    /// Who asks: a user id, 0 for the command line on the server's host.
    pub by: i64,
    /// Why (required; it goes in the audit line, so it names no content).
    pub reason: &'a str,
    /// Whether to empty the storage's WAL once written ([`Storage::scrub`]); an erasure of
    /// many records (retention) scrubs once at the end instead.
    pub scrub: bool,
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    /// The record's new epoch.
    pub epoch: u64,
    /// Whether the storage's own files keep no copy of the erased bytes (see
    /// [`Storage::scrub`]); false when the request did not ask for it.
    pub scrubbed: bool,
    /// The record's scope.
    pub scope: String,
    /// Attachments the record referenced, now or before, and no longer does: their bytes go
    /// unless another record of the scope references them
    /// ([`drop_unreferenced`](crate::attachments::collect::drop_unreferenced)).
    pub attachments: Vec<[u8; 32]>,
}

/// Erases what `request` names from the record, as one new epoch.
pub fn erase(
    storage: &dyn Storage,
    schema: &Schema,
    request: &EraseRequest<'_>,
) -> Result<Erased, ServerError> {
    if request.reason.trim().is_empty() {
        return Err(ServerError::BadRequest(
            "an erasure needs a reason, for the audit log".into(),
        ));
    }
    let collection = schema
        .collection(request.collection)
        .map_err(|err| ServerError::BadRequest(err.to_string()))?;
    let key = (request.collection, request.id);
    for _ in 0..ATTEMPTS {
        let stored = storage
            .stored_records(&[key])?
            .records
            .pop()
            .flatten()
            .ok_or_else(|| ServerError::NotFound("no such record".into()))?;
        let version = stored
            .version
            .ok_or_else(|| ServerError::Corrupt("a stored record has no version".into()))?;
        let mut doc = guarded(|| AutoCommit::load(&stored.doc).ok())
            .flatten()
            .ok_or_else(|| {
                ServerError::Corrupt(
                    "the record's document does not load: repair it before erasing".into(),
                )
            })?;
        let mut next = next_epoch(
            &doc,
            (request.collection, collection),
            &request.erasure,
            stored.epoch,
            &ActorId::random(),
            now_ms(),
        )
        .map_err(|err| ServerError::BadRequest(err.to_string()))?;
        validate_document(schema, request.collection, &stored.scope, &next).map_err(|err| {
            let rule = err.record_rule().unwrap_or_else(|| err.to_string());
            ServerError::BadRequest(format!("the erased record would break the schema: {rule}"))
        })?;
        let (fields, deleted) = fieldsync_record::document::document_values(&next)
            .map_err(|_| ServerError::Corrupt("the erased record's values do not read".into()))?;
        let attachments =
            fieldsync_record::erasure::attachments_left_behind(&mut doc, collection, &next)
                .map_err(|err| ServerError::Corrupt(err.to_string()))?;
        let history = next.get_changes(&[]);
        let epoch = NewEpoch {
            epoch: stored.epoch + 1,
            doc: next.save(),
            fields_json: serde_json::Value::Object(fields).to_string(),
            deleted,
            lineage: lineage_after_merge(&mut next, None, &history),
            erased: request.erasure.describe(),
            by: request.by,
            reason: request.reason.to_owned(),
        };
        if storage.erase_record(key, version, &epoch)? {
            let scrubbed = request.scrub && storage.scrub()?;
            return Ok(Erased {
                epoch: epoch.epoch,
                scrubbed,
                scope: stored.scope,
                attachments: attachments.into_iter().collect(),
            });
        }
    }
    Err(ServerError::TryAgain(
        "the record kept being written while it was erased".into(),
    ))
}
