//! `POST /v1/push` and `GET /v1/pull`: checking, merging and serving records.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use automerge::legacy::{ElementId, Key, ObjectId, OpId, OpType};
use automerge::{ActorId, AutoCommit, Change, ChangeHash, ObjId, ROOT, ReadDoc, ScalarValue};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use fieldsync_core::Fields;
use fieldsync_core::protocol::{
    self, DecodeError, Payload, PullResponse, PulledRecord, PushRecord, PushRequest, RejectCode,
    Rejection,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::auth::{Caller, authenticate};
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::storage::{
    Lineage, Merge, MergedRecord, RootOps, SnapshotMark, StoredRecord, StoredVersion,
};
use crate::{AppState, Limits};

/// Handles a push: each record is checked, merged into the server's copy and added to the
/// feed, or rejected on its own.
pub async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let started = Instant::now();
    let caller = authorize(&state, &headers).await?;
    let body = read_body(body, state.limits.max_body_bytes).await?;
    let storage = state.storage.clone();
    let limits = state.limits.clone();
    let metrics = state.metrics.clone();
    let response = blocking(move || {
        let request: PushRequest =
            protocol::decode(&body, limits.max_decompressed_bytes).map_err(decode_error)?;
        // A NUL byte cannot be stored in PostgreSQL text; refused here on every backend.
        if request.batch_id.is_empty()
            || request.batch_id.len() > 128
            || request.batch_id.contains('\0')
        {
            return Err(ServerError::BadRequest(
                "batch_id must be 1 to 128 characters, without NUL".into(),
            ));
        }
        if request.records.len() > limits.max_records_per_push {
            return Err(ServerError::TooLarge(format!(
                "at most {} records per push",
                limits.max_records_per_push
            )));
        }
        let changes: usize = request
            .records
            .iter()
            .map(|r| match &r.payload {
                Payload::Changes(changes) => changes.len(),
                Payload::Document(_) => 1,
            })
            .sum();
        if changes > limits.max_changes_per_push {
            return Err(ServerError::TooLarge(format!(
                "at most {} changes per push",
                limits.max_changes_per_push
            )));
        }
        // `None` when the device is unbound and its first change's actor belongs to another
        // live device (or no change decodes): then no change it pushes is its own.
        let actor = match &caller.actor {
            Some(bound) => Some(bound.clone()),
            None => match first_actor(&request, limits.max_decompressed_bytes) {
                Some(claimed) => storage.bind_actor(caller.device_id, &claimed)?,
                None => None,
            },
        };
        let keys: Vec<(&str, &str)> = request
            .records
            .iter()
            .map(|r| (r.collection.as_str(), r.id.as_str()))
            .collect();
        let snapshot = storage.stored_records(&keys)?;
        let context = MergeContext {
            caller: &caller,
            actor: actor.as_deref(),
            limits: &limits,
        };
        let premerges = Premerges::for_records(&request.records);
        let (response, applied) = std::thread::scope(|scope| {
            premerges.start(scope, context, &request.records, snapshot.records);
            let mut merger = PushMerger::new(context, &premerges, snapshot.mark);
            let response = storage.push(
                caller.device_id,
                &request.batch_id,
                &request.records,
                &mut merger,
            )?;
            Ok::<_, ServerError>((response, merger.applied))
        })?;
        let rejected = response
            .results
            .iter()
            .filter(|r| r.rejected.is_some())
            .count();
        Metrics::add(&metrics.records_rejected, rejected);
        Metrics::add(&metrics.records_accepted, response.results.len() - rejected);
        Metrics::add(&metrics.changes_applied, applied);
        Ok(response)
    })
    .await?;
    Metrics::inc(&state.metrics.pushes);
    state.metrics.push_latency.observe(started.elapsed());
    Ok(message_response(&response))
}

/// The query string of a pull.
#[derive(Debug, Deserialize)]
pub struct PullParams {
    cursor: Option<String>,
    limit: Option<u32>,
}

/// What a cursor remembers: where the client is, in which mode, for which scopes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// `true` while a first sync pages through whole documents.
    documents: bool,
    /// Feed position reached. During a first sync, the feed's head when it began: the feed
    /// after it holds every change the documents sent may not have had.
    seq: i64,
    /// The scopes the client has been sent.
    scopes: BTreeSet<String>,
    /// During a first sync, the creation position of the last document sent. Absent from
    /// cursors of first syncs that paged by last change, which start over; left out of feed
    /// cursors, which instances of that release still read during an upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sent_to: Option<i64>,
}

impl Cursor {
    fn encode(&self) -> String {
        hex::encode(rmp_serde::to_vec(self).expect("cursors always serialize"))
    }

    fn decode(text: &str) -> Result<Cursor, ServerError> {
        let invalid = || ServerError::BadRequest("invalid cursor".into());
        let bytes = hex::decode(text).map_err(|_| invalid())?;
        rmp_serde::from_slice(&bytes).map_err(|_| invalid())
    }
}

/// Handles a pull: what changed in the caller's scopes after the cursor.
///
/// Without a cursor, or when scopes were added to the caller's grants since the cursor, the
/// pull pages through whole documents (with their values) ordered by their last change; then
/// it follows the feed of changes. Scopes the cursor covers but the caller may no longer read
/// come back in `revoked_scopes` until the client moves on to the new cursor.
pub async fn pull(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<PullParams>, QueryRejection>,
) -> Result<Response, ServerError> {
    let started = Instant::now();
    let caller = authorize(&state, &headers).await?;
    // Looked at only once the token checked out, and refused with the JSON error body, not
    // the extractor's plain text.
    let Query(params) =
        params.map_err(|_| ServerError::BadRequest("the query string does not decode".into()))?;
    let cursor = params.cursor.as_deref().map(Cursor::decode).transpose()?;
    let limit = params
        .limit
        .unwrap_or(state.limits.default_pull_limit)
        .clamp(1, state.limits.max_pull_limit);
    let storage = state.storage.clone();
    let response = blocking(move || {
        let readable: BTreeSet<String> = caller.readable_scopes().into_iter().collect();
        let scopes: Vec<String> = readable.iter().cloned().collect();
        let (revoked, added) = match &cursor {
            Some(cursor) => (
                cursor
                    .scopes
                    .difference(&readable)
                    .cloned()
                    .collect::<Vec<_>>(),
                readable.difference(&cursor.scopes).count(),
            ),
            None => (Vec::new(), 0),
        };
        // A first sync pages through the documents created after `sent_to`; it starts
        // (again) without a cursor, when scopes were added, and from a cursor that does not
        // say where it is.
        let first_sync = match &cursor {
            None => Some(None),
            Some(_) if added > 0 => Some(None),
            Some(cursor) if cursor.documents => {
                Some(cursor.sent_to.map(|sent_to| (cursor.seq, sent_to)))
            }
            Some(_) => None,
        };
        let (records, next, more) = match first_sync {
            Some(from) => {
                // The head is taken before the first page is read: whatever commits while
                // the documents are paged through comes after it in the feed, and records
                // created after it come only from there.
                let (head, sent_to) = match from {
                    Some(from) => from,
                    None => (storage.feed_head()?, 0),
                };
                let page = storage.documents_page(&scopes, sent_to, head, limit)?;
                let records = page
                    .entries
                    .into_iter()
                    .map(|entry| {
                        let fields = decode_fields(&entry.fields_json)?;
                        Ok(PulledRecord {
                            collection: entry.collection,
                            id: entry.record_id,
                            scope: entry.scope,
                            payload: Payload::Document(ByteBuf::from(entry.doc)),
                            fields: Some(fields),
                            deleted: entry.deleted,
                        })
                    })
                    .collect::<Result<Vec<_>, ServerError>>()?;
                // Once every document is sent, the feed after the head holds the rest, and
                // the device reads on at once if anything was written there meanwhile.
                let next = Cursor {
                    documents: page.more,
                    seq: head,
                    scopes: readable,
                    sent_to: page.more.then_some(page.last_seq),
                };
                let more = page.more || storage.feed_head()? > head;
                (records, next, more)
            }
            None => {
                let after = cursor.as_ref().map_or(0, |c| c.seq);
                let page = feed_page_of_others(&*storage, &scopes, caller.device_id, after, limit)?;
                let records = page
                    .entries
                    .into_iter()
                    .map(|entry| {
                        let (fields, deleted) = match entry.latest {
                            Some((json, deleted)) => (Some(decode_fields(&json)?), deleted),
                            None => (None, false),
                        };
                        Ok(PulledRecord {
                            collection: entry.collection,
                            id: entry.record_id,
                            scope: entry.scope,
                            payload: Payload::Changes(
                                entry.changes.into_iter().map(ByteBuf::from).collect(),
                            ),
                            fields,
                            deleted,
                        })
                    })
                    .collect::<Result<Vec<_>, ServerError>>()?;
                let next = Cursor {
                    documents: false,
                    seq: page.last_seq,
                    scopes: readable,
                    sent_to: None,
                };
                (records, next, page.more)
            }
        };
        let pulled: Vec<(String, String, String)> = records
            .iter()
            .map(|r| (r.collection.clone(), r.id.clone(), r.scope.clone()))
            .collect();
        storage.record_pull(caller.device_id, &pulled)?;
        Ok(PullResponse {
            records,
            next_cursor: next.encode(),
            more,
            revoked_scopes: revoked,
        })
    })
    .await?;
    Metrics::inc(&state.metrics.pulls);
    Metrics::add(&state.metrics.records_pulled, response.records.len());
    state.metrics.pull_latency.observe(started.elapsed());
    Ok(message_response(&response))
}

/// How many feed pages one pull reads at most to fill its page with other devices' entries.
const FEED_READS_PER_PULL: usize = 8;

/// Up to `limit` feed entries after `after` that `device` did not push (a device already has
/// the changes it pushed). The pull right after a device's own push finds mostly its own
/// entries: reading on until the page fills, instead of answering an empty page with more to
/// come, spares the device a round trip per page of them. The page still reaches the last
/// position read, own entries included.
fn feed_page_of_others(
    storage: &dyn crate::storage::Storage,
    scopes: &[String],
    device: i64,
    after: i64,
    limit: u32,
) -> Result<crate::storage::Page<crate::storage::FeedEntry>, ServerError> {
    let mut page = crate::storage::Page {
        entries: Vec::new(),
        last_seq: after,
        more: true,
    };
    for _ in 0..FEED_READS_PER_PULL {
        let wanted = limit - page.entries.len() as u32;
        let read = storage.feed_page_for(device, scopes, page.last_seq, wanted)?;
        page.entries.extend(read.entries);
        page.last_seq = read.last_seq;
        page.more = read.more;
        if !page.more || page.entries.len() as u32 >= limit {
            break;
        }
    }
    Ok(page)
}

fn decode_fields(json: &str) -> Result<Fields, ServerError> {
    serde_json::from_str(json)
        .map_err(|_| ServerError::Corrupt("stored values do not decode".into()))
}

/// Authenticates the caller, then checks the protocol version; without a valid token nothing
/// else is looked at.
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Caller, ServerError> {
    let storage = state.storage.clone();
    let headers_for_auth = headers.clone();
    let caller = blocking(move || authenticate(&*storage, &headers_for_auth))
        .await
        .inspect_err(|err| {
            if matches!(err, ServerError::Unauthorized(_)) {
                Metrics::inc(&state.metrics.unauthorized);
            }
        })?;
    if let Err(retry_after_secs) = state.rate_limiter.check(caller.device_id) {
        Metrics::inc(&state.metrics.rate_limited);
        return Err(ServerError::RateLimited { retry_after_secs });
    }
    let version = headers
        .get(protocol::VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    if version != protocol::VERSION.to_string() {
        return Err(ServerError::UnsupportedVersion(
            version.chars().take(16).collect(),
        ));
    }
    Ok(caller)
}

async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ServerError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ServerError::TooLarge(format!("bodies are limited to {limit} bytes")))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ServerError::Internal(format!("a blocking task failed: {err}")))?
}

fn message_response<T: Serialize>(message: &T) -> Response {
    let mut response = protocol::encode(message).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(protocol::CONTENT_TYPE),
    );
    response
}

fn decode_error(err: DecodeError) -> ServerError {
    match err {
        DecodeError::TooLarge { .. } => ServerError::TooLarge(err.to_string()),
        DecodeError::Compression | DecodeError::Malformed(_) => {
            ServerError::BadRequest(err.to_string())
        }
    }
}

/// The actor of the first change in a push, which binds a device that has pushed nothing yet.
fn first_actor(request: &PushRequest, max_inflated: usize) -> Option<String> {
    request
        .records
        .iter()
        .find_map(|record| match &record.payload {
            Payload::Changes(changes) => changes
                .first()
                .and_then(|bytes| decode_change(bytes, max_inflated).ok())
                .map(|change| change.actor_id().to_hex_string()),
            Payload::Document(bytes) => {
                load_document(bytes, max_inflated).ok().and_then(|mut doc| {
                    guarded(|| {
                        doc.get_changes(&[])
                            .first()
                            .map(|c| c.actor_id().to_hex_string())
                    })
                    .flatten()
                })
            }
        })
}

/// Automerge inflates compressed chunks in full before looking at them, so a few kilobytes
/// could claim gigabytes: the inflated size is bounded first, without keeping any of it.
fn check_inflated(bytes: &[u8], max_inflated: usize) -> Result<(), Rejection> {
    protocol::check_inflated_size(bytes, max_inflated).map_err(|err| match err {
        DecodeError::TooLarge { .. } => reject(
            RejectCode::TooLarge,
            "the Automerge data inflates past the size limit",
        ),
        DecodeError::Compression | DecodeError::Malformed(_) => {
            reject(RejectCode::Malformed, "the Automerge data does not decode")
        }
    })
}

/// A pushed change, once its inflated size is known to be bounded.
fn decode_change(bytes: &[u8], max_inflated: usize) -> Result<Change, Rejection> {
    check_inflated(bytes, max_inflated)?;
    guarded(|| Change::from_bytes(bytes.to_vec()).ok())
        .flatten()
        .ok_or_else(|| reject(RejectCode::Malformed, "a change does not decode"))
}

/// A pushed document, once its inflated size is known to be bounded.
fn load_document(bytes: &[u8], max_inflated: usize) -> Result<AutoCommit, Rejection> {
    check_inflated(bytes, max_inflated)?;
    guarded(|| AutoCommit::load(bytes).ok())
        .flatten()
        .ok_or_else(|| reject(RejectCode::Malformed, "the document does not load"))
}

/// Runs Automerge on bytes from outside; a panic inside the library becomes `None`.
fn guarded<T>(work: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(work)).ok()
}

/// Whether a change was made by the pushing device, whose actor is `actor` (`None`: no
/// change is the device's own).
fn is_own(actor: Option<&str>, change_actor: &automerge::ActorId) -> bool {
    actor.is_some_and(|actor| change_actor.to_hex_string() == actor)
}

fn reject(code: RejectCode, message: &str) -> Rejection {
    Rejection {
        code,
        message: message.to_owned(),
    }
}

fn valid_collection(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// Merges the records of one push. The Automerge work is done by [`Premerges`], ahead of the
/// storage's transaction (or alongside it, for a large push); under the transaction,
/// [`Merge::merged_ahead`] hands each record's merge over if the record's stored version is
/// still the one merged against, and the storage reads the record whole only where another
/// push came between.
struct PushMerger<'a> {
    context: MergeContext<'a>,
    ahead: &'a Premerges,
    /// The mark of the snapshot the merges ahead were made against.
    snapshot: Option<SnapshotMark>,
    /// Records written by this push, and whether each is still the state merged ahead (false
    /// once a copy of it merged again under the transaction).
    written: HashMap<(String, String), bool>,
    /// Changes accepted so far.
    applied: usize,
}

impl<'a> PushMerger<'a> {
    fn new(
        context: MergeContext<'a>,
        ahead: &'a Premerges,
        snapshot: Option<SnapshotMark>,
    ) -> PushMerger<'a> {
        PushMerger {
            context,
            ahead,
            snapshot,
            written: HashMap::new(),
            applied: 0,
        }
    }

    /// Counts what `outcome` brings to `key`, merged ahead or again.
    fn account(
        &mut self,
        key: (String, String),
        outcome: &Result<MergedRecord, Rejection>,
        as_merged_ahead: bool,
    ) {
        if let Ok(merged) = outcome
            && !merged.new_changes.is_empty()
        {
            self.applied += merged.new_changes.len();
            let intact = self.written.entry(key).or_insert(true);
            *intact &= as_merged_ahead;
        }
    }
}

impl Merge for PushMerger<'_> {
    fn merged_ahead(
        &mut self,
        record: &PushRecord,
        now: StoredVersion,
    ) -> Option<Result<MergedRecord, Rejection>> {
        let key = (record.collection.clone(), record.id.clone());
        let premerged = self.ahead.next_of(&key)?;
        let fits = match now {
            StoredVersion::ThisPush => {
                *self.written.get(&key)? && premerged.against == Some(StoredVersion::ThisPush)
            }
            // Unchanged since the snapshot: a merge against it fits, whatever its version.
            StoredVersion::Current => premerged.against != Some(StoredVersion::ThisPush),
            now => premerged.against == Some(now),
        };
        if !fits {
            return None;
        }
        self.account(key, &premerged.result, true);
        Some(premerged.result)
    }

    fn merge(
        &mut self,
        record: &PushRecord,
        stored: Option<StoredRecord>,
    ) -> Result<MergedRecord, Rejection> {
        let MergeContext {
            caller,
            actor,
            limits,
        } = self.context;
        let outcome = merge(caller, actor, limits, record, stored);
        let key = (record.collection.clone(), record.id.clone());
        self.account(key, &outcome, false);
        outcome
    }

    fn snapshot_mark(&self) -> Option<SnapshotMark> {
        self.snapshot
    }
}

/// A merge made ahead of a push's transaction, and the stored state it was made against
/// (`None`: a snapshot of a state without a version, which only [`StoredVersion::Current`]
/// matches).
struct Premerged {
    against: Option<StoredVersion>,
    result: Result<MergedRecord, Rejection>,
}

/// Pushes with fewer distinct records merge on the request's own thread: starting threads
/// would cost more than it saves.
const PARALLEL_MERGE_FROM: usize = 16;
/// At most this many threads merge one push.
const MAX_MERGE_THREADS: usize = 4;

/// The copies of one record in a push (its positions in the push) and the stored state the
/// first is merged against.
type Group = (Vec<usize>, Option<StoredRecord>);

/// The merges of a push made ahead of its transaction, by record: each record's copies merge
/// in turn, the first against the stored state read before the transaction (the snapshot),
/// the next into the first's merge, as the storage will hand them.
///
/// A push with many records merges on threads, in push order; for it the storage's
/// transaction starts at once and [`Premerges::next_of`] waits for a record's merge only if
/// the transaction reaches the record first, so the merges and the writes overlap instead of
/// following each other.
struct Premerges {
    group_of: HashMap<(String, String), usize>,
    merges: Mutex<Vec<GroupMerges>>,
    merged: Condvar,
}

enum GroupMerges {
    Pending,
    Made(VecDeque<Premerged>),
    /// Merging the group failed outside each record's own guard: these records merge again
    /// under the transaction, where a failure is reported as for any request.
    Lost,
}

impl Premerges {
    /// Starts merging `records` against `snapshot` (each record's stored state, in order):
    /// here for a small push, on threads of `scope` for a large one.
    fn start<'scope, 'env: 'scope>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        context: MergeContext<'env>,
        records: &'env [PushRecord],
        snapshot: Vec<Option<StoredRecord>>,
    ) {
        let groups = self.groups(records, snapshot);
        let threads = if groups.len() < PARALLEL_MERGE_FROM {
            1
        } else {
            fieldsync_core::parallel::threads(MAX_MERGE_THREADS)
        };
        let queue = Arc::new(Mutex::new(groups.into_iter().enumerate()));
        if threads == 1 {
            self.merge_from(&queue, context, records);
            return;
        }
        for _ in 0..threads {
            let queue = Arc::clone(&queue);
            scope.spawn(move || self.merge_from(&queue, context, records));
        }
    }

    /// Merges everything before returning (tests).
    #[cfg(test)]
    fn made(
        context: MergeContext<'_>,
        records: &[PushRecord],
        snapshot: Vec<Option<StoredRecord>>,
    ) -> Premerges {
        let premerges = Premerges::for_records(records);
        std::thread::scope(|scope| premerges.start(scope, context, records, snapshot));
        premerges
    }

    /// Groups the copies of each record, in the order of their first copy.
    fn for_records(records: &[PushRecord]) -> Premerges {
        let mut group_of = HashMap::new();
        for record in records {
            let next = group_of.len();
            group_of
                .entry((record.collection.clone(), record.id.clone()))
                .or_insert(next);
        }
        let merges = (0..group_of.len()).map(|_| GroupMerges::Pending).collect();
        Premerges {
            group_of,
            merges: Mutex::new(merges),
            merged: Condvar::new(),
        }
    }

    fn groups(&self, records: &[PushRecord], snapshot: Vec<Option<StoredRecord>>) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::with_capacity(self.group_of.len());
        for (index, (record, stored)) in records.iter().zip(snapshot).enumerate() {
            let key = (record.collection.clone(), record.id.clone());
            let group = self.group_of[&key];
            if group == groups.len() {
                groups.push((vec![index], stored));
            } else {
                groups[group].0.push(index);
            }
        }
        groups
    }

    /// Merges groups taken from `queue` until it is empty.
    fn merge_from(
        &self,
        queue: &Mutex<impl Iterator<Item = (usize, Group)>>,
        context: MergeContext<'_>,
        records: &[PushRecord],
    ) {
        loop {
            let next = lock(queue).next();
            let Some((group, (indices, stored))) = next else {
                return;
            };
            let made = guarded(|| merge_group(context, records, indices, stored))
                .map_or(GroupMerges::Lost, GroupMerges::Made);
            lock(&self.merges)[group] = made;
            self.merged.notify_all();
        }
    }

    /// The next merge made ahead for `key`'s copies, once it is made; `None` if there is none
    /// (the record is not in the push, its copies are used up, or merging them failed).
    fn next_of(&self, key: &(String, String)) -> Option<Premerged> {
        let group = *self.group_of.get(key)?;
        let mut merges = lock(&self.merges);
        loop {
            match &mut merges[group] {
                GroupMerges::Pending => {
                    merges = self
                        .merged
                        .wait(merges)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                GroupMerges::Made(made) => return made.pop_front(),
                GroupMerges::Lost => return None,
            }
        }
    }
}

/// Who pushes, as every merge of a push needs it.
#[derive(Clone, Copy)]
struct MergeContext<'a> {
    caller: &'a Caller,
    actor: Option<&'a str>,
    limits: &'a Limits,
}

/// Merges one record's copies in turn, the first against `state`.
fn merge_group(
    context: MergeContext<'_>,
    records: &[PushRecord],
    indices: Vec<usize>,
    mut state: Option<StoredRecord>,
) -> VecDeque<Premerged> {
    let MergeContext {
        caller,
        actor,
        limits,
    } = context;
    let mut against = match &state {
        None => Some(StoredVersion::Absent),
        Some(stored) => stored.version.map(StoredVersion::Written),
    };
    let mut merges = VecDeque::with_capacity(indices.len());
    for index in indices {
        let record = &records[index];
        let result = merge(caller, actor, limits, record, state.clone());
        let next = match &result {
            Ok(merged) if !merged.new_changes.is_empty() => Some(merged.to_stored(&record.scope)),
            _ => None,
        };
        merges.push_back(Premerged { against, result });
        if next.is_some() {
            state = next;
            against = Some(StoredVersion::ThisPush);
        }
    }
    merges
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Checks one pushed record and merges it into the stored document. Automerge panics on some
/// crafted input in places no single guard covers (a change that applies can still break a
/// later lookup): a panic anywhere refuses the record, as malformed.
fn merge(
    caller: &Caller,
    actor: Option<&str>,
    limits: &Limits,
    record: &PushRecord,
    stored: Option<StoredRecord>,
) -> Result<MergedRecord, Rejection> {
    guarded(|| merge_unguarded(caller, actor, limits, record, stored)).unwrap_or_else(|| {
        Err(reject(
            RejectCode::Malformed,
            "the record's changes or document made Automerge fail",
        ))
    })
}

fn merge_unguarded(
    caller: &Caller,
    actor: Option<&str>,
    limits: &Limits,
    record: &PushRecord,
    stored: Option<StoredRecord>,
) -> Result<MergedRecord, Rejection> {
    if !valid_collection(&record.collection)
        || fieldsync_core::check_record_id(&record.id).is_err()
        || record.scope.contains('\0')
    {
        return Err(reject(
            RejectCode::InvalidRecord,
            "invalid collection or record id",
        ));
    }
    if !caller.may_write(&record.scope) {
        return Err(reject(
            RejectCode::ForbiddenScope,
            "no write grant on this scope",
        ));
    }
    if stored.as_ref().is_some_and(|s| s.scope != record.scope) {
        return Err(reject(
            RejectCode::ScopeChange,
            "the record cannot be written in this scope",
        ));
    }
    // A record that brings no change at all is not something a device sends; accepting it
    // would answer "stored" for a record the server does not have.
    if matches!(&record.payload, Payload::Changes(changes) if changes.is_empty()) {
        return Err(reject(RejectCode::Malformed, "the record holds no changes"));
    }
    match (&stored, &record.payload) {
        (Some(stored), Payload::Changes(raw)) => {
            if let Some(merged) = append_in_line(actor, limits, stored, raw) {
                return Ok(merged);
            }
        }
        (None, Payload::Document(bytes)) => return new_record_as_sent(actor, limits, bytes),
        // A new record's first change, as devices send it. Automerge loads a change as it
        // loads a document, and one change is 20-30% smaller than a save of it; one that
        // needs changes the server lacks takes the general path, which says so.
        (None, Payload::Changes(raw))
            if raw.len() == 1
                && decode_change(&raw[0], limits.max_decompressed_bytes)?
                    .deps()
                    .is_empty() =>
        {
            return new_record_as_sent(actor, limits, &raw[0]);
        }
        _ => {}
    }
    let mut doc = match &stored {
        Some(stored) => guarded(|| AutoCommit::load(&stored.doc).ok())
            .flatten()
            .ok_or_else(|| reject(RejectCode::Malformed, "the stored document does not load"))?,
        None => AutoCommit::new(),
    };
    let heads_before = doc.get_heads();
    match &record.payload {
        Payload::Changes(raw) => {
            let size: usize = raw.iter().map(|c| c.len()).sum();
            if size > limits.max_document_bytes {
                return Err(reject(
                    RejectCode::TooLarge,
                    "the changes exceed the document size limit",
                ));
            }
            // Bounded together, since each change alone could stay under the limit.
            let joined: Vec<u8> = raw.iter().flat_map(|c| c.iter().copied()).collect();
            check_inflated(&joined, limits.max_decompressed_bytes)?;
            let mut changes = Vec::with_capacity(raw.len());
            for bytes in raw {
                let change = decode_change(bytes, limits.max_decompressed_bytes)?;
                if !is_own(actor, change.actor_id()) {
                    return Err(reject(
                        RejectCode::ForeignActor,
                        "a change was made by another device",
                    ));
                }
                changes.push(change);
            }
            let hashes: Vec<ChangeHash> = changes.iter().map(Change::hash).collect();
            let applied = guarded(|| doc.apply_changes(changes).is_ok()).unwrap_or(false);
            if !applied {
                return Err(reject(RejectCode::Malformed, "the changes do not apply"));
            }
            if hashes
                .iter()
                .any(|hash| doc.get_change_by_hash(hash).is_none())
            {
                return Err(reject(
                    RejectCode::MissingDependencies,
                    "a change depends on changes the server lacks",
                ));
            }
        }
        Payload::Document(bytes) => {
            if bytes.len() > limits.max_document_bytes {
                return Err(reject(
                    RejectCode::TooLarge,
                    "the document exceeds the size limit",
                ));
            }
            let mut incoming = load_document(bytes, limits.max_decompressed_bytes)?;
            let foreign = incoming.get_changes(&[]).iter().any(|c| {
                !is_own(actor, c.actor_id()) && doc.get_change_by_hash(&c.hash()).is_none()
            });
            if foreign {
                return Err(reject(
                    RejectCode::ForeignActor,
                    "the document holds another device's new changes",
                ));
            }
            let merged = guarded(|| doc.merge(&mut incoming).is_ok()).unwrap_or(false);
            if !merged {
                return Err(reject(RejectCode::Malformed, "the document does not merge"));
            }
        }
    }
    let new_changes = doc.get_changes(&heads_before);
    let known = stored.as_ref().map(|stored| stored.lineage.as_ref());
    let lineage = lineage_after_merge(&mut doc, known, &new_changes);
    let new_changes: Vec<Vec<u8>> = new_changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
    let saved = doc.save();
    if saved.len() > limits.max_document_bytes {
        return Err(reject(
            RejectCode::TooLarge,
            "the merged document exceeds the size limit",
        ));
    }
    // Automerge applies a change whose operations name, as the ones they overwrite,
    // operations the document does not have, and then saves bytes that do not load: stored,
    // they would cost everyone the record.
    let reloads = guarded(|| AutoCommit::load(&saved).map(|mut d| d.get_heads()).ok())
        .flatten()
        .is_some_and(|heads| heads == lineage.heads);
    if !reloads {
        return Err(overwrites_missing_operations());
    }
    let (fields, deleted) = fieldsync_core::document_values(&doc)
        .map_err(|_| reject(RejectCode::Malformed, "the document's values do not read"))?;
    Ok(MergedRecord {
        doc: saved,
        fields_json: serde_json::Value::Object(fields).to_string(),
        deleted,
        new_changes,
        lineage,
    })
}

/// The lineage of a document just merged and about to be saved whole. `known` is the stored
/// record's (`None` for a new record, `Some(None)` for one stored before lineages were kept),
/// `new_changes` the changes the merge added.
fn lineage_after_merge(
    doc: &mut AutoCommit,
    known: Option<Option<&Lineage>>,
    new_changes: &[Change],
) -> Lineage {
    let newest_op = |changes: &[Change]| changes.iter().map(Change::max_op).max().unwrap_or(0);
    let max_op = match known {
        Some(Some(known)) => known.max_op.max(newest_op(new_changes)),
        // Counted once over the whole history; from then on the lineage is kept.
        Some(None) => newest_op(&doc.get_changes(&[])),
        None => newest_op(new_changes),
    };
    let heads = doc.get_heads();
    let head_change = match heads.as_slice() {
        [head] => new_changes
            .iter()
            .find(|change| change.hash() == *head)
            .cloned()
            .or_else(|| doc.get_change_by_hash(head))
            .map(|change| (change.actor_id().clone(), change.seq())),
        _ => None,
    };
    Lineage {
        heads,
        max_op,
        appended: 0,
        head_change,
        root_ops: root_ops(doc),
    }
}

/// The operations holding each root key's value; `None` if Automerge does not say.
fn root_ops(doc: &AutoCommit) -> Option<RootOps> {
    let mut root_ops = RootOps::new();
    for key in doc.keys(ROOT) {
        let mut ops = Vec::new();
        for (_, id) in doc.get_all(ROOT, key.as_str()).ok()? {
            match id {
                ObjId::Id(counter, actor, _) => ops.push((counter, actor)),
                ObjId::Root => return None,
            }
        }
        ops.sort();
        root_ops.insert(key, ops);
    }
    Some(root_ops)
}

/// How many changes a stored document takes appended before a merge saves it whole again:
/// each makes loading it slower.
const APPENDED_AT_MOST: u32 = 32;

/// Appends changes that follow the stored document in line, without loading it: the first
/// depends on exactly the document's heads, each next one on the one before; each is the next
/// change of the actor that made the document's head (the pushing device's own, whose actor
/// is checked), numbered and counted on from it; and each only sets root keys to scalar values.
/// Then the new values are the stored ones with those keys set, since an operation numbered
/// above every other in the document is what Automerge shows for its key, whatever it
/// overwrote. `None` when any of that does not hold or is not known (records stored before
/// lineages were kept, tombstones, text, nested values, counters, a document that took
/// [`APPENDED_AT_MOST`] changes): the record then merges the slow way, which also reports
/// what is wrong.
fn append_in_line(
    actor: Option<&str>,
    limits: &Limits,
    stored: &StoredRecord,
    raw: &[ByteBuf],
) -> Option<MergedRecord> {
    let lineage = stored.lineage.as_ref()?;
    let appended = lineage
        .appended
        .checked_add(u32::try_from(raw.len()).ok()?)
        .filter(|appended| *appended <= APPENDED_AT_MOST)?;
    let size = stored.doc.len() + raw.iter().map(|c| c.len()).sum::<usize>();
    if size > limits.max_document_bytes {
        return None;
    }
    let joined: Vec<u8> = raw.iter().flat_map(|c| c.iter().copied()).collect();
    check_inflated(&joined, limits.max_decompressed_bytes).ok()?;
    let mut fields: Fields = serde_json::from_str(&stored.fields_json).ok()?;
    let mut heads = lineage.heads.clone();
    heads.sort();
    let (mut head_actor, mut head_seq) = lineage.head_change.clone()?;
    let mut max_op = lineage.max_op;
    let mut root_ops = lineage.root_ops.clone()?;
    for bytes in raw {
        let change = decode_change(bytes, limits.max_decompressed_bytes).ok()?;
        let mut deps = change.deps().to_vec();
        deps.sort();
        let follows = deps == heads
            && is_own(actor, change.actor_id())
            && *change.actor_id() == head_actor
            && change.seq() == head_seq + 1
            && change.start_op().get() == max_op + 1;
        if !follows {
            return None;
        }
        for (op, counter) in change.decode().operations.into_iter().zip(max_op + 1..) {
            match (op.obj, op.key, op.action, op.insert) {
                (ObjectId::Root, Key::Map(key), OpType::Put(value), false)
                    if key != fieldsync_core::DELETED_KEY
                        && !matches!(value, ScalarValue::Counter(_)) =>
                {
                    // A change made on the whole document overwrites exactly the operations
                    // holding the key's value: Automerge breaks on a change that names others.
                    let mut pred: Vec<(u64, ActorId)> = op
                        .pred
                        .iter()
                        .map(|id| (id.counter(), id.actor().clone()))
                        .collect();
                    pred.sort();
                    let holding = root_ops.get(key.as_str()).map_or(&[][..], Vec::as_slice);
                    if pred != holding {
                        return None;
                    }
                    root_ops.insert(key.to_string(), vec![(counter, change.actor_id().clone())]);
                    fields.insert(key.to_string(), fieldsync_core::scalar_to_json(&value));
                }
                _ => return None,
            }
        }
        heads = vec![change.hash()];
        (head_actor, head_seq) = (change.actor_id().clone(), change.seq());
        max_op = change.max_op();
    }
    Some(MergedRecord {
        doc: [stored.doc.as_slice(), &joined].concat(),
        fields_json: serde_json::Value::Object(fields).to_string(),
        deleted: stored.deleted,
        new_changes: raw.iter().map(|c| c.to_vec()).collect(),
        lineage: Lineage {
            heads,
            max_op,
            appended,
            head_change: Some((head_actor, head_seq)),
            root_ops: Some(root_ops),
        },
    })
}

/// A record the server does not have yet, pushed as its whole document or as its one change:
/// loading it validates it, and it is stored as sent (it is already compact), without a merge.
fn new_record_as_sent(
    actor: Option<&str>,
    limits: &Limits,
    bytes: &[u8],
) -> Result<MergedRecord, Rejection> {
    if bytes.len() > limits.max_document_bytes {
        return Err(reject(
            RejectCode::TooLarge,
            "the document exceeds the size limit",
        ));
    }
    let mut doc = load_document(bytes, limits.max_decompressed_bytes)?;
    let changes = doc.get_changes(&[]);
    if changes.is_empty() {
        return Err(reject(
            RejectCode::Malformed,
            "the document holds no changes",
        ));
    }
    if changes.iter().any(|c| !is_own(actor, c.actor_id())) {
        return Err(reject(
            RejectCode::ForeignActor,
            "the document holds another device's changes",
        ));
    }
    if !history_is_intact(&mut doc, &changes) || !overwrites_only_earlier_operations(&changes) {
        return Err(overwrites_missing_operations());
    }
    let lineage = lineage_after_merge(&mut doc, None, &changes);
    let new_changes = changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
    let (fields, deleted) = fieldsync_core::document_values(&doc)
        .map_err(|_| reject(RejectCode::Malformed, "the document's values do not read"))?;
    Ok(MergedRecord {
        doc: bytes.to_vec(),
        fields_json: serde_json::Value::Object(fields).to_string(),
        deleted,
        new_changes,
        lineage,
    })
}

/// Whether `changes`, as Automerge rebuilt them from the loaded `doc`, are the history that
/// `doc`'s hashes name. A release build of Automerge loads an operation that overwrites
/// operations the history lacks by dropping what it cannot find (a debug build panics): the
/// rebuilt change then hashes differently from the one sent, which the bytes as sent still
/// hold, and a save of the document does not load.
fn history_is_intact(doc: &mut AutoCommit, changes: &[Change]) -> bool {
    let hashes: HashSet<ChangeHash> = changes.iter().map(Change::hash).collect();
    doc.get_heads().iter().all(|head| hashes.contains(head))
        && changes
            .iter()
            .all(|change| change.deps().iter().all(|dep| hashes.contains(dep)))
}

fn overwrites_missing_operations() -> Rejection {
    reject(
        RejectCode::Malformed,
        "the changes overwrite operations the document does not have",
    )
}

/// Whether every operation of a whole history (`changes` in causal order, as Automerge
/// returns them) overwrites only operations that come before it on the same object and key.
/// Automerge loads a history that breaks this and saves it as bytes that do not load.
fn overwrites_only_earlier_operations(changes: &[Change]) -> bool {
    let mut seen: HashSet<(ObjectId, Key, OpId)> = HashSet::new();
    for change in changes {
        let expanded = change.decode();
        for (op, counter) in expanded
            .operations
            .into_iter()
            .zip(expanded.start_op.get()..)
        {
            if !op
                .pred
                .iter()
                .all(|pred| seen.contains(&(op.obj.clone(), op.key.clone(), pred.clone())))
            {
                return false;
            }
            let id = OpId::new(counter, &expanded.actor_id);
            // An insertion's key names the element it follows; what overwrites the element
            // it makes names that element as its key.
            let key = if op.insert {
                Key::Seq(ElementId::Id(id.clone()))
            } else {
                op.key
            };
            seen.insert((op.obj, key, id));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ROOT};

    use super::*;
    use crate::storage::{Access, Grant};

    fn caller(actor: &ActorId) -> Caller {
        Caller {
            device_id: 1,
            user_id: 1,
            actor: Some(actor.to_hex_string()),
            grants: vec![Grant {
                scope: "north".into(),
                access: Access::Write,
            }],
        }
    }

    fn document(actor: &ActorId, name: &str) -> AutoCommit {
        let mut doc = AutoCommit::new().with_actor(actor.clone());
        doc.put(ROOT, "name", name).unwrap();
        doc.commit();
        doc
    }

    /// Sets `key` on `doc` and returns the change that did it.
    fn edit(doc: &mut AutoCommit, key: &str, value: i64) -> Vec<u8> {
        let heads = doc.get_heads();
        doc.put(ROOT, key, value).unwrap();
        doc.commit();
        doc.get_changes(&heads)[0].raw_bytes().to_vec()
    }

    fn pushed(id: &str, scope: &str, payload: Payload) -> PushRecord {
        PushRecord {
            collection: "clients".into(),
            id: id.into(),
            scope: scope.into(),
            payload,
        }
    }

    fn changes(change: Vec<u8>) -> Payload {
        Payload::Changes(vec![ByteBuf::from(change)])
    }

    /// `doc` as a record stored before lineages were kept.
    fn stored(doc: &mut AutoCommit) -> StoredRecord {
        let (fields, deleted) = fieldsync_core::document_values(doc).unwrap();
        StoredRecord {
            scope: "north".into(),
            doc: doc.save(),
            fields_json: serde_json::Value::Object(fields).to_string(),
            deleted,
            lineage: None,
            version: Some(1),
        }
    }

    /// Runs `merge` over a push as a storage does: it names each record's stored version
    /// first and reads the record whole only when no merge made ahead fits; what a merge
    /// writes gets the next version. Returns the outcomes and how many records were read.
    fn run_push(
        records: &[PushRecord],
        mut state: HashMap<String, StoredRecord>,
        merge: &mut dyn Merge,
    ) -> (Vec<Result<MergedRecord, Rejection>>, usize) {
        let mut written = HashSet::new();
        let mut reads = 0;
        let mut next_version = 1000;
        let outcomes = records
            .iter()
            .map(|record| {
                let now = match state.get(&record.id) {
                    _ if written.contains(&record.id) => StoredVersion::ThisPush,
                    Some(stored) => StoredVersion::Written(stored.version.unwrap()),
                    None => StoredVersion::Absent,
                };
                let result = merge.merged_ahead(record, now).unwrap_or_else(|| {
                    reads += 1;
                    merge.merge(record, state.get(&record.id).cloned())
                });
                if let Ok(merged) = &result
                    && !merged.new_changes.is_empty()
                {
                    let mut stored = merged.to_stored(&record.scope);
                    stored.version = Some(next_version);
                    next_version += 1;
                    state.insert(record.id.clone(), stored);
                    written.insert(record.id.clone());
                }
                result
            })
            .collect();
        (outcomes, reads)
    }

    #[test]
    fn merging_ahead_on_threads_gives_what_merging_in_turn_gives() {
        let device = ActorId::random();
        let other = ActorId::random();
        let caller = caller(&device);
        let limits = Limits::default();
        let mut state = HashMap::new();
        let mut records = Vec::new();
        let mut docs: Vec<AutoCommit> = (0..24)
            .map(|i| document(&device, &format!("client {i}")))
            .collect();
        for (i, doc) in docs.iter_mut().enumerate() {
            state.insert(format!("r{i}"), stored(doc));
            records.push(pushed(
                &format!("r{i}"),
                "north",
                changes(edit(doc, "visits", 1)),
            ));
        }
        // Pushed twice in the batch: the second change builds on the first.
        for (i, visits) in [(3, 2), (7, 2), (7, 3)] {
            let change = edit(&mut docs[i], "visits", visits);
            records.push(pushed(&format!("r{i}"), "north", changes(change)));
        }
        for i in 0..5 {
            let mut doc = document(&device, &format!("new {i}"));
            records.push(pushed(
                &format!("n{i}"),
                "north",
                Payload::Document(ByteBuf::from(doc.save())),
            ));
        }
        let mut foreign = document(&other, "someone else's");
        records.push(pushed("f", "north", changes(edit(&mut foreign, "x", 1))));
        records.push(pushed("r1", "south", changes(edit(&mut docs[1], "x", 1))));
        records.push(pushed(
            "r2",
            "north",
            Payload::Changes(vec![ByteBuf::from(vec![1, 2])]),
        ));

        let actor = caller.actor.as_deref();
        let (in_turn, read_in_turn) = run_push(
            &records,
            state.clone(),
            &mut |record: &PushRecord, stored| merge(&caller, actor, &limits, record, stored),
        );
        assert_eq!(read_in_turn, records.len());
        let keys: Vec<(&str, &str)> = records
            .iter()
            .map(|r| (r.collection.as_str(), r.id.as_str()))
            .collect();
        let snapshot = || keys.iter().map(|(_, id)| state.get(*id).cloned()).collect();
        let context = MergeContext {
            caller: &caller,
            actor,
            limits: &limits,
        };
        // Merged before the transaction runs, and while it runs.
        let made = Premerges::made(context, &records, snapshot());
        let mut merger = PushMerger::new(context, &made, None);
        let (ahead, read_ahead) = run_push(&records, state.clone(), &mut merger);
        let alongside = Premerges::for_records(&records);
        let (along, read_along) = std::thread::scope(|scope| {
            alongside.start(scope, context, &records, snapshot());
            run_push(
                &records,
                state.clone(),
                &mut PushMerger::new(context, &alongside, None),
            )
        });

        assert_eq!(ahead, in_turn);
        assert_eq!(along, in_turn);
        assert_eq!(
            (read_ahead, read_along),
            (0, 0),
            "no record changed since the snapshot, copies pushed twice included"
        );
        let accepted = ahead.iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            accepted,
            24 + 3 + 5,
            "every record of the device's own scope"
        );
        let codes: Vec<RejectCode> = ahead
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.code))
            .collect();
        assert_eq!(
            codes,
            vec![
                RejectCode::ForeignActor,
                RejectCode::ForbiddenScope,
                RejectCode::Malformed
            ]
        );
        assert_eq!(merger.applied, 24 + 3 + 5);
    }

    #[test]
    fn a_new_record_pushed_as_its_one_change_is_stored_as_sent() {
        let device = ActorId::random();
        let caller = caller(&device);
        let limits = Limits::default();
        let push_new = |id: &str, change: Vec<u8>| {
            let record = pushed(id, "north", changes(change));
            merge(&caller, caller.actor.as_deref(), &limits, &record, None)
        };
        let mut doc = document(&device, "Ada");
        let first = doc.save_after(&[]);
        let merged = push_new("a", first.clone()).unwrap();
        assert_eq!(merged.doc, first);
        assert_eq!(merged.new_changes, vec![first.clone()]);
        assert!(merged.fields_json.contains("Ada"));
        assert!(merged.doc.len() < doc.save().len());

        // A second change alone, for a record the server lacks, needs the first.
        let second = edit(&mut doc, "visits", 1);
        let missing = push_new("b", second);
        assert_eq!(missing.unwrap_err().code, RejectCode::MissingDependencies);

        // Another device's first change is refused as such.
        let colleague = document(&ActorId::random(), "Bo").save_after(&[]);
        let foreign = push_new("c", colleague);
        assert_eq!(foreign.unwrap_err().code, RejectCode::ForeignActor);
    }

    #[test]
    fn a_record_changed_since_the_snapshot_merges_again() {
        let device = ActorId::random();
        let colleague = ActorId::random();
        let caller = caller(&device);
        let limits = Limits::default();
        let mut original = document(&device, "Ada");
        let before = stored(&mut original);
        // Another push, through another request, lands between the snapshot and the
        // transaction.
        let mut theirs = original.fork().with_actor(colleague);
        edit(&mut theirs, "phone", 555);
        let moved = stored(&mut theirs);
        let mut mine = original.fork().with_actor(device.clone());
        let record = pushed("a", "north", changes(edit(&mut mine, "visits", 3)));

        let moved = StoredRecord {
            version: Some(2),
            ..moved
        };
        // Pushed twice: the second copy builds on the first.
        let again = pushed("a", "north", changes(edit(&mut mine, "visits", 4)));

        let actor = caller.actor.as_deref();
        let records = [record, again];
        let snapshot = || vec![Some(before.clone()), Some(before.clone())];
        let context = MergeContext {
            caller: &caller,
            actor,
            limits: &limits,
        };
        let made = Premerges::made(context, &records, snapshot());
        let mut unmoved = PushMerger::new(context, &made, None);
        assert!(
            unmoved
                .merged_ahead(&records[0], StoredVersion::Written(1))
                .is_some(),
            "the version merged against"
        );
        assert!(
            unmoved
                .merged_ahead(&records[1], StoredVersion::ThisPush)
                .is_some(),
            "the copy before it was merged ahead"
        );

        let made = Premerges::made(context, &records, snapshot());
        let mut merger = PushMerger::new(context, &made, None);
        let now = StoredVersion::Written(2);
        assert!(merger.merged_ahead(&records[0], now).is_none());
        let merged = merger.merge(&records[0], Some(moved)).unwrap();
        let doc = AutoCommit::load(&merged.doc).unwrap();
        let (fields, _) = fieldsync_core::document_values(&doc).unwrap();
        assert_eq!(fields["phone"], 555, "the colleague's change is kept");
        assert_eq!(fields["visits"], 3, "the pushed change is merged");
        assert_eq!(merged.new_changes.len(), 1);
        // The merge ahead of the second copy built on a first merge that did not happen.
        assert!(
            merger
                .merged_ahead(&records[1], StoredVersion::ThisPush)
                .is_none()
        );
        let merged = merger
            .merge(&records[1], Some(merged.to_stored("north")))
            .unwrap();
        let doc = AutoCommit::load(&merged.doc).unwrap();
        let (fields, _) = fieldsync_core::document_values(&doc).unwrap();
        assert_eq!(
            (&fields["phone"], &fields["visits"]),
            (&serde_json::json!(555), &serde_json::json!(4))
        );
        assert_eq!(merger.applied, 2);
    }

    #[test]
    fn a_snapshot_nothing_changed_since_fits_whatever_its_version() {
        let device = ActorId::random();
        let caller = caller(&device);
        let limits = Limits::default();
        let mut original = document(&device, "Ada");
        // As stored before versions were kept: no version to name.
        let unversioned = StoredRecord {
            version: None,
            ..stored(&mut original)
        };
        let mut mine = original.fork().with_actor(device.clone());
        let records = [
            pushed("a", "north", changes(edit(&mut mine, "visits", 3))),
            pushed("a", "north", changes(edit(&mut mine, "visits", 4))),
        ];
        let context = MergeContext {
            caller: &caller,
            actor: caller.actor.as_deref(),
            limits: &limits,
        };
        let snapshot = || vec![Some(unversioned.clone()), Some(unversioned.clone())];

        let made = Premerges::made(context, &records, snapshot());
        let mut versioned = PushMerger::new(context, &made, None);
        assert!(
            versioned
                .merged_ahead(&records[0], StoredVersion::Written(1))
                .is_none(),
            "no version to match"
        );

        let made = Premerges::made(context, &records, snapshot());
        let mut current = PushMerger::new(context, &made, None);
        assert!(
            current
                .merged_ahead(&records[0], StoredVersion::Current)
                .is_some()
        );
        // The second copy was merged ahead into the first: it fits as this push left it, not
        // as the snapshot read it.
        assert!(
            current
                .merged_ahead(&records[1], StoredVersion::ThisPush)
                .is_some()
        );
        let made = Premerges::made(context, &records, snapshot());
        let mut confused = PushMerger::new(context, &made, None);
        confused.merged_ahead(&records[0], StoredVersion::Current);
        assert!(
            confused
                .merged_ahead(&records[1], StoredVersion::Current)
                .is_none()
        );
    }

    /// Pushes `change` for record "a" stored as `stored`, as `device`'s.
    fn push_change(device: &ActorId, stored: &StoredRecord, change: &[u8]) -> MergedRecord {
        let caller = caller(device);
        let record = pushed("a", "north", changes(change.to_vec()));
        let limits = Limits::default();
        merge(
            &caller,
            caller.actor.as_deref(),
            &limits,
            &record,
            Some(stored.clone()),
        )
        .unwrap()
    }

    /// The values of a stored document, loaded whole.
    fn loaded_values(doc: &[u8]) -> (Fields, bool) {
        fieldsync_core::document_values(&AutoCommit::load(doc).unwrap()).unwrap()
    }

    fn values(merged: &MergedRecord) -> (Fields, bool) {
        (
            serde_json::from_str(&merged.fields_json).unwrap(),
            merged.deleted,
        )
    }

    /// A new record "a" as the server stores it from its first change, and the device's
    /// document.
    fn new_record(device: &ActorId) -> (AutoCommit, StoredRecord) {
        let mut doc = document(device, "Ada");
        let merged = push(device, None, changes(doc.save_after(&[])));
        (doc, merged.unwrap().to_stored("north"))
    }

    #[test]
    fn changes_that_follow_the_stored_document_in_line_are_appended_unread() {
        let device = ActorId::random();
        let (mut doc, mut state) = new_record(&device);
        // A text field (merged the slow way), later replaced by a scalar.
        let heads = doc.get_heads();
        doc.put_object(ROOT, "notes", automerge::ObjType::Text)
            .unwrap();
        doc.commit();
        state =
            push_change(&device, &state, doc.get_changes(&heads)[0].raw_bytes()).to_stored("north");
        // Scalars of every kind, several keys per change, a key set twice in one change.
        for round in 0..5i64 {
            let heads = doc.get_heads();
            doc.put(ROOT, "visits", round).unwrap();
            doc.put(ROOT, "rate", 1.5 * round as f64).unwrap();
            doc.put(ROOT, "name", format!("Ada {round}")).unwrap();
            doc.put(ROOT, "name", format!("Ada L. {round}")).unwrap();
            doc.put(ROOT, "active", round % 2 == 0).unwrap();
            doc.put(
                ROOT,
                "since",
                ScalarValue::Timestamp(1_700_000_000_000 + round),
            )
            .unwrap();
            doc.put(ROOT, "gone", ScalarValue::Null).unwrap();
            if round == 3 {
                doc.put(ROOT, "notes", "a scalar now").unwrap();
            }
            doc.commit();
            let change = doc.get_changes(&heads)[0].raw_bytes().to_vec();
            let merged = push_change(&device, &state, &change);
            assert_eq!(
                merged.doc,
                [state.doc.as_slice(), &change].concat(),
                "appended"
            );
            assert_eq!(merged.lineage.appended, round as u32 + 1);
            assert_eq!(merged.new_changes, vec![change.clone()]);
            // The values derived from the change are the ones Automerge shows, and the ones
            // the slow merge finds.
            assert_eq!(values(&merged), loaded_values(&merged.doc));
            let without_lineage = StoredRecord {
                lineage: None,
                ..state.clone()
            };
            let slow = push_change(&device, &without_lineage, &change);
            assert_eq!(values(&slow), values(&merged));
            assert_eq!(slow.lineage.heads, merged.lineage.heads);
            assert_eq!(slow.lineage.max_op, merged.lineage.max_op);
            assert_eq!(slow.lineage.head_change, merged.lineage.head_change);
            assert_eq!(slow.lineage.root_ops, merged.lineage.root_ops);
            state = merged.to_stored("north");
        }
        assert_eq!(
            AutoCommit::load(&state.doc).unwrap().get_heads(),
            doc.get_heads()
        );
    }

    #[test]
    fn a_document_that_took_enough_appended_changes_is_saved_whole() {
        let device = ActorId::random();
        let (mut doc, mut state) = new_record(&device);
        let mut appended_counts = Vec::new();
        for round in 0..APPENDED_AT_MOST as i64 + 3 {
            let merged = push_change(&device, &state, &edit(&mut doc, "visits", round));
            appended_counts.push(merged.lineage.appended);
            assert_eq!(values(&merged), loaded_values(&merged.doc));
            state = merged.to_stored("north");
        }
        let at_most = APPENDED_AT_MOST as usize;
        assert_eq!(appended_counts[at_most - 1], APPENDED_AT_MOST);
        assert_eq!(appended_counts[at_most], 0, "saved whole");
        assert_eq!(appended_counts[at_most + 1], 1, "then appended again");
    }

    #[test]
    fn changes_out_of_line_merge_the_slow_way() {
        let device = ActorId::random();
        let colleague = ActorId::random();
        let (mut doc, state) = new_record(&device);
        let slow = |merged: &MergedRecord| merged.lineage.appended == 0;

        // Text edits, nested values and tombstones are not derived from the change.
        let mut text = doc.fork().with_actor(device.clone());
        let heads = text.get_heads();
        let notes = text
            .put_object(ROOT, "notes", automerge::ObjType::Text)
            .unwrap();
        text.splice_text(&notes, 0, 0, "hello").unwrap();
        text.commit();
        let merged = push_change(&device, &state, text.get_changes(&heads)[0].raw_bytes());
        assert!(slow(&merged));
        assert_eq!(values(&merged).0["notes"], "hello");
        let mut tombstone = doc.fork().with_actor(device.clone());
        let heads = tombstone.get_heads();
        tombstone
            .put(ROOT, fieldsync_core::DELETED_KEY, true)
            .unwrap();
        tombstone.commit();
        let merged = push_change(
            &device,
            &state,
            tombstone.get_changes(&heads)[0].raw_bytes(),
        );
        assert!(slow(&merged) && merged.deleted);

        // A change concurrent with one the server has: its dependencies are not the heads.
        let mut elsewhere = doc.fork().with_actor(colleague.clone());
        let first = edit(&mut doc, "visits", 1);
        let state = push_change(&device, &state, &first).to_stored("north");
        assert_eq!(state.lineage.as_ref().unwrap().appended, 1);
        let concurrent = edit(&mut elsewhere, "phone", 555);
        let merged = push_change(&colleague, &state, &concurrent);
        assert!(slow(&merged));
        let (fields, _) = values(&merged);
        assert_eq!(
            (fields["visits"].as_i64(), fields["phone"].as_i64()),
            (Some(1), Some(555))
        );

        // After another device's change, this device's next one is not known to be next in
        // its own line.
        let mut theirs = AutoCommit::load(&state.doc)
            .unwrap()
            .with_actor(colleague.clone());
        let from_colleague = edit(&mut theirs, "phone", 1);
        let after_colleague = push_change(&colleague, &state, &from_colleague).to_stored("north");
        let mut mine = AutoCommit::load(&after_colleague.doc)
            .unwrap()
            .with_actor(device.clone());
        let merged = push_change(&device, &after_colleague, &edit(&mut mine, "phone", 2));
        assert!(slow(&merged));
        assert_eq!(values(&merged).0["phone"], 2);
        // ...and once this device's change is the head, its next one is in line again.
        let state = merged.to_stored("north");
        let merged = push_change(&device, &state, &edit(&mut mine, "phone", 3));
        assert_eq!(merged.lineage.appended, 1);
    }

    #[test]
    fn a_crafted_change_numbered_out_of_line_is_never_appended() {
        let device = ActorId::random();
        let caller = caller(&device);
        let (mut doc, state) = new_record(&device);
        let heads = doc.get_heads();
        doc.put(ROOT, "visits", 1).unwrap();
        doc.commit();
        let change = doc.get_changes(&heads)[0].clone();
        // Automerge fails to load (or panics on) a document whose changes skip a sequence
        // number or an operation counter: such a change must go through a real merge.
        for craft in 0..3 {
            let mut expanded = change.decode();
            match craft {
                0 => expanded.seq += 1,
                1 => expanded.start_op = expanded.start_op.saturating_add(5),
                _ => expanded.seq = 1,
            }
            expanded.hash = None;
            let crafted: Change = expanded.into();
            let record = pushed("a", "north", changes(crafted.raw_bytes().to_vec()));
            let result = merge(
                &caller,
                caller.actor.as_deref(),
                &Limits::default(),
                &record,
                Some(state.clone()),
            );
            if let Ok(merged) = result {
                assert_eq!(
                    merged.lineage.appended, 0,
                    "craft {craft} merged, not appended"
                );
                assert!(AutoCommit::load(&merged.doc).is_ok());
            }
        }
    }

    /// `change` with the first operation's overwritten operations replaced by `pred`.
    fn overwriting(change: &[u8], pred: Vec<OpId>) -> Vec<u8> {
        let mut expanded = Change::try_from(change).unwrap().decode();
        expanded.operations[0].pred = pred.into();
        expanded.hash = None;
        Change::from(expanded).raw_bytes().to_vec()
    }

    fn push(
        device: &ActorId,
        stored: Option<StoredRecord>,
        payload: Payload,
    ) -> Result<MergedRecord, Rejection> {
        let caller = caller(device);
        let record = pushed("a", "north", payload);
        merge(
            &caller,
            caller.actor.as_deref(),
            &Limits::default(),
            &record,
            stored,
        )
    }

    #[test]
    fn a_change_overwriting_operations_the_document_lacks_is_refused() {
        let device = ActorId::random();
        let (mut doc, in_line) = new_record(&device);
        let legacy = stored(&mut doc);
        let change = edit(&mut doc, "visits", 1);
        // An operation the document does not have, and the name's operation (another key's),
        // where the change merges and where it would otherwise be appended.
        let cases = [
            (OpId::new(99, &device), &legacy),
            (OpId::new(1, &device), &legacy),
            (OpId::new(99, &device), &in_line),
            (OpId::new(1, &device), &in_line),
        ];
        for (pred, state) in cases {
            let crafted = overwriting(&change, vec![pred.clone()]);
            let result = push(&device, Some(state.clone()), changes(crafted));
            let rejection = result.expect_err(&format!("{pred:?} was stored"));
            assert_eq!(rejection.code, RejectCode::Malformed);
        }
        // The change as made is appended.
        assert_eq!(
            push(&device, Some(in_line), changes(change))
                .unwrap()
                .lineage
                .appended,
            1
        );
    }

    #[test]
    fn a_new_record_overwriting_operations_it_lacks_is_refused() {
        let device = ActorId::random();
        let mut doc = document(&device, "Ada");
        let first = doc.save_after(&[]);
        for pred in [OpId::new(5, &device), OpId::new(1, &ActorId::random())] {
            let crafted = overwriting(&first, vec![pred]);
            let rejection = push(&device, None, changes(crafted.clone())).unwrap_err();
            assert_eq!(rejection.code, RejectCode::Malformed);
            // Automerge loads a change chunk as a document, too.
            let as_document = Payload::Document(ByteBuf::from(crafted));
            let rejection = push(&device, None, as_document).unwrap_err();
            assert_eq!(rejection.code, RejectCode::Malformed);
        }
    }

    #[test]
    fn a_new_record_editing_its_own_text_is_stored() {
        let device = ActorId::random();
        let mut doc = document(&device, "Ada");
        let notes = doc
            .put_object(ROOT, "notes", automerge::ObjType::Text)
            .unwrap();
        doc.splice_text(&notes, 0, 0, "hello there").unwrap();
        doc.commit();
        // Deleting and replacing characters overwrites the insertions of the change before.
        doc.splice_text(&notes, 0, 5, "HELLO").unwrap();
        doc.put(ROOT, "name", "Ada L.").unwrap();
        doc.commit();
        let merged = push(&device, None, Payload::Document(ByteBuf::from(doc.save()))).unwrap();
        let loaded = AutoCommit::load(&merged.doc).unwrap();
        assert_eq!(
            automerge::ReadDoc::text(&loaded, &notes).unwrap(),
            "HELLO there"
        );
        // The same in one change.
        let mut single = AutoCommit::new().with_actor(ActorId::random());
        let notes = single
            .put_object(ROOT, "notes", automerge::ObjType::Text)
            .unwrap();
        single.splice_text(&notes, 0, 0, "abc").unwrap();
        single.splice_text(&notes, 1, 1, "B").unwrap();
        single.commit();
        let actor = single.get_actor().clone();
        let merged = push(&actor, None, changes(single.save_after(&[])));
        assert!(merged.is_ok(), "{merged:?}");
    }

    #[test]
    fn a_record_stored_before_lineages_gets_one_on_its_next_merge() {
        let device = ActorId::random();
        let mut doc = document(&device, "Ada");
        edit(&mut doc, "visits", 1);
        let legacy = stored(&mut doc);
        let merged = push_change(&device, &legacy, &edit(&mut doc, "visits", 2));
        assert_eq!(merged.lineage.appended, 0);
        assert_eq!(merged.lineage.heads, doc.get_heads());
        assert_eq!(merged.lineage.max_op, 3);
        let heads = doc.get_heads();
        let head = doc.get_change_by_hash(&heads[0]).unwrap();
        assert_eq!(
            merged.lineage.head_change,
            Some((device.clone(), head.seq()))
        );
        // From then on, in line.
        let next = push_change(
            &device,
            &merged.to_stored("north"),
            &edit(&mut doc, "visits", 3),
        );
        assert_eq!(next.lineage.appended, 1);
    }
}
