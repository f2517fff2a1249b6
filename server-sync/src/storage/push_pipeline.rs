//! A push applied in one transaction, the same way on every backend (see [`Storage::push`]):
//! a replayed batch answered again, or else every record merged first and then everything
//! written: audit lines, the device's actor, the stored answer, the device's sync state, and
//! last the feed entries and records. The backends supply only the statements, as a
//! [`PushTx`].
//!
//! [`Storage::push`]: super::Storage::push

use std::borrow::Cow;
use std::collections::HashMap;

use fieldsync_record::protocol::{PushRecord, PushResponse, PushResult, Rejection};

use super::{
    Batch, Merge, MergedRecord, Result, SnapshotMark, StoredRecord, StoredVersion,
    actor_taken_meanwhile, audited_name, now_ms, replayed,
};

/// A record's key: its collection and id.
pub(super) type RecordKey<'r> = (&'r str, &'r str);

/// A stored push answer and the hash of the records it answered (`None` for batches stored
/// before hashes were kept).
pub(super) type StoredAnswer = (Vec<u8>, Option<Vec<u8>>);

/// One push's transaction, as a backend runs it: what it reads and writes, in the order
/// [`apply`] calls it. The transaction is begun (and the device's pushes made to take turns)
/// before it is handed to [`apply`]; dropped without [`PushTx::commit`], it rolls back.
pub(super) trait PushTx {
    /// The answer stored for the device's batch `batch_id`, if it was pushed before.
    fn replayed_batch(&mut self, device_id: i64, batch_id: &str) -> Result<Option<StoredAnswer>>;
    /// The user the device belongs to.
    fn user_of_device(&mut self, device_id: i64) -> Result<i64>;
    /// Keeps other pushes from writing `records` until the commit, so that the versions read
    /// next stay the stored ones (nothing to do where the transaction holds the only writer).
    fn lock_records(&mut self, records: &[PushRecord]) -> Result<()>;
    /// Whether nothing was written since the snapshot marked `mark` was read.
    fn snapshot_unchanged(&mut self, mark: SnapshotMark) -> Result<bool>;
    /// The stored version of each of `records` the storage holds.
    fn stored_versions<'r>(
        &mut self,
        records: &'r [PushRecord],
    ) -> Result<HashMap<RecordKey<'r>, i64>>;
    /// The stored state of the record `record` names.
    fn stored_record(&mut self, record: &PushRecord) -> Result<Option<StoredRecord>>;
    /// Writes the push's audit lines, given in push order.
    fn audit(&mut self, by: PushedBy, lines: &[AuditLine<'_>]) -> Result<()>;
    /// Binds `actor` to the device as [`Storage::bind_actor`] does; the device's actor after.
    ///
    /// [`Storage::bind_actor`]: super::Storage::bind_actor
    fn bind_actor(&mut self, device_id: i64, actor: &str) -> Result<Option<String>>;
    /// Keeps `answer` as the answer to `batch`, for replays.
    fn store_answer(
        &mut self,
        device_id: i64,
        batch: &Batch<'_>,
        answer: &[u8],
        now: i64,
    ) -> Result<()>;
    /// Records the device's sync at `now`: its outbox position and pending changes (as the
    /// batch gives them) with its last sync time.
    fn update_device(&mut self, device_id: i64, batch: &Batch<'_>, now: i64) -> Result<()>;
    /// Writes each accepted merge's feed entry (in push order, each at the next feed
    /// position), its record's writer, and the record at the position of its last entry.
    /// Called last before the commit, and only with something to write: a backend may hold
    /// the feed's order from here on.
    fn write_accepted(&mut self, by: PushedBy, accepted: &[Accepted<'_>]) -> Result<()>;
    /// Commits the transaction.
    fn commit(self) -> Result<()>;
}

/// Who pushes, and when the push is stored.
#[derive(Debug, Clone, Copy)]
pub(super) struct PushedBy {
    pub(super) device_id: i64,
    pub(super) user_id: i64,
    /// Milliseconds since the epoch.
    pub(super) at: i64,
}

/// A pushed record and its merge, which brought changes.
pub(super) struct Accepted<'r> {
    pub(super) record: &'r PushRecord,
    pub(super) merged: MergedRecord,
}

/// An audit line of a push: a record stored, or refused with its code. A refused record's
/// names are cut as [`audited_name`] does.
pub(super) struct AuditLine<'r> {
    pub(super) collection: Cow<'r, str>,
    pub(super) record_id: Cow<'r, str>,
    pub(super) scope: Cow<'r, str>,
    /// The refusal's code; `None` for a record stored.
    pub(super) code: Option<&'static str>,
}

impl AuditLine<'_> {
    /// The line's action: `push` or `refuse`.
    pub(super) fn action(&self) -> &'static str {
        if self.code.is_some() {
            "refuse"
        } else {
            "push"
        }
    }
}

/// What merging a push's records came to.
struct Merged<'r> {
    results: Vec<PushResult>,
    accepted: Vec<Accepted<'r>>,
    audit: Vec<AuditLine<'r>>,
    /// Where in `accepted` each record's latest merge is.
    latest: HashMap<RecordKey<'r>, usize>,
}

/// Applies a push in `tx` (see [`Storage::push`](super::Storage::push)).
pub(super) fn apply(
    mut tx: impl PushTx,
    device_id: i64,
    batch: &Batch<'_>,
    merge: &mut dyn Merge,
) -> Result<PushResponse> {
    if let Some(stored) = tx.replayed_batch(device_id, batch.id)? {
        // Answered again, writing nothing: the transaction rolls back.
        return replayed(batch, stored);
    }
    let user_id = tx.user_of_device(device_id)?;
    tx.lock_records(batch.records)?;
    let merged = merge_all(&mut tx, batch.records, merge)?;
    let by = PushedBy {
        device_id,
        user_id,
        at: now_ms(),
    };
    // Everything but the feed entries and records first: a backend may hold the feed's order
    // from `write_accepted` until the commit, which keeps that section short (and a binding,
    // with its own lock, out of it).
    tx.audit(by, &merged.audit)?;
    // Bound only by a push that stores something.
    if let Some(actor) = batch.binds.filter(|_| !merged.accepted.is_empty())
        && tx.bind_actor(device_id, actor)?.as_deref() != Some(actor)
    {
        return Err(actor_taken_meanwhile());
    }
    let response = PushResponse {
        results: merged.results,
    };
    let answer = rmp_serde::to_vec_named(&response).expect("responses always serialize");
    tx.store_answer(device_id, batch, &answer, by.at)?;
    tx.update_device(device_id, batch, by.at)?;
    if !merged.accepted.is_empty() {
        tx.write_accepted(by, &merged.accepted)?;
    }
    tx.commit()?;
    Ok(response)
}

/// Merges every record of a push, in push order, writing nothing. A record pushed twice in
/// one batch merges onto its first merge ([`StoredVersion::ThisPush`]).
fn merge_all<'r>(
    tx: &mut impl PushTx,
    records: &'r [PushRecord],
    merge: &mut dyn Merge,
) -> Result<Merged<'r>> {
    // Nothing changed since the merges' snapshot was read: its states are the stored ones.
    let unchanged = match merge.snapshot_mark() {
        Some(mark) => tx.snapshot_unchanged(mark)?,
        None => false,
    };
    let versions = if unchanged {
        HashMap::new()
    } else {
        tx.stored_versions(records)?
    };
    let mut merged = Merged {
        results: Vec::with_capacity(records.len()),
        accepted: Vec::with_capacity(records.len()),
        audit: Vec::with_capacity(records.len()),
        latest: HashMap::new(),
    };
    for record in records {
        let key = (record.collection.as_str(), record.id.as_str());
        let earlier = merged.latest.get(&key).map(|&at| &merged.accepted[at]);
        let now = match earlier {
            Some(_) => StoredVersion::ThisPush,
            None if unchanged => StoredVersion::Current,
            None => versions
                .get(&key)
                .map_or(StoredVersion::Absent, |&version| {
                    StoredVersion::Written(version)
                }),
        };
        let outcome = match merge.merged_ahead(record, now) {
            Some(outcome) => outcome,
            None => {
                let stored = match (earlier, now) {
                    (Some(earlier), _) => Some(earlier.merged.to_stored(&earlier.record.scope)),
                    (None, StoredVersion::Absent) => None,
                    (None, _) => tx.stored_record(record)?,
                };
                merge.merge(record, stored)
            }
        };
        merged.add(record, outcome);
    }
    Ok(merged)
}

impl<'r> Merged<'r> {
    /// Adds a record's merge: a refusal is audited, a merge that brought changes is to be
    /// written and audited, one that brought nothing new writes nothing.
    fn add(&mut self, record: &'r PushRecord, outcome: Result<MergedRecord, Rejection>) {
        let rejected = match outcome {
            Err(rejection) => {
                self.audit.push(AuditLine {
                    collection: Cow::Owned(audited_name(&record.collection)),
                    record_id: Cow::Owned(audited_name(&record.id)),
                    scope: Cow::Owned(audited_name(&record.scope)),
                    code: Some(rejection.code.as_str()),
                });
                Some(rejection)
            }
            Ok(merged) if merged.new_changes.is_empty() => None,
            Ok(merged) => {
                let key = (record.collection.as_str(), record.id.as_str());
                self.latest.insert(key, self.accepted.len());
                self.accepted.push(Accepted { record, merged });
                self.audit.push(AuditLine {
                    collection: Cow::Borrowed(&record.collection),
                    record_id: Cow::Borrowed(&record.id),
                    scope: Cow::Borrowed(&record.scope),
                    code: None,
                });
                None
            }
        };
        self.results.push(PushResult {
            collection: record.collection.clone(),
            id: record.id.clone(),
            rejected,
        });
    }
}
