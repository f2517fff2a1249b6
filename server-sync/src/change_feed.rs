//! `GET /v1/changes`: every change the server stored, in the order it stored them, for the
//! clinic's systems (an EHR connector): each record's collection, id and scope, the fields the
//! change wrote with their values, who made it and when. A consumer keeps the cursor of the
//! last change it handled and asks for what comes after it, so that across its restarts and
//! the server's it sees every change once and in order: feed positions become visible in
//! order on both backends (docs/PROTOCOL.md, "Why the cursor never skips a change"). Long-poll
//! (`wait=SECS`) or server-sent events (`Accept: text/event-stream`, resumed with
//! `Last-Event-ID`). Only the scopes the caller may read.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::{AutoCommit, ChangeHash};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fieldsync_record::document;
use fieldsync_record::value::Fields;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ServerError;
use crate::http::{authorize_api, blocking};
use crate::storage::{FeedEntry, NewAuditLine, Storage};

/// Most changes one answer holds, and the default.
const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 100;
/// The longest a long poll waits.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a waiting request looks again, for changes another server instance stored.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// One change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChangeView {
    /// Its position: the `after` of the next request once it is handled.
    pub cursor: String,
    /// The record's collection.
    pub collection: String,
    /// The record's id.
    pub id: String,
    /// The record's scope.
    pub scope: String,
    /// The fields the change wrote, with their values once it was made (`null`: cleared).
    pub fields: Fields,
    /// Whether the change deleted the record.
    pub deleted: bool,
    /// The user whose device (or service account) pushed it.
    pub user: Option<String>,
    /// That device's name.
    pub device: Option<String>,
    /// When the server stored it (ms since the epoch).
    pub at: i64,
    /// For an erasure, what it erased (`fields a,b`, `history` or `record`): every earlier
    /// change of the record is gone from the feed, and `fields` holds all of the record's
    /// values as the erasure left them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased: Option<String>,
}

/// An answer: the changes after the cursor asked for, and where the next request starts.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ChangePage {
    /// The changes, oldest first.
    pub changes: Vec<ChangeView>,
    /// The `after` of the next request (the cursor asked for when there was nothing new).
    pub next: String,
    /// Whether more changes wait after `next`.
    pub more: bool,
}

/// The query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    after: Option<String>,
    limit: Option<u32>,
    wait: Option<u64>,
}

/// `GET /v1/changes?after=CURSOR&limit=N&wait=SECS`.
pub async fn changes(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Response, ServerError> {
    let caller = Arc::new(authorize_api(&state, &headers).await?);
    let Query(query) = query.map_err(|r| crate::http::unreadable(r.body_text()))?;
    let resumed = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());
    let after = cursor(query.after.as_deref().or(resumed))?;
    let pruned_through = {
        let (storage, device) = (state.storage.clone(), caller.device_id);
        blocking(move || storage.device_sync(device))
            .await?
            .feed_pruned_through
    };
    if after > 0 && after < pruned_through {
        return Err(ServerError::CursorExpired);
    }
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => limit,
        Some(_) => {
            return Err(ServerError::BadRequest(format!(
                "limit must be from 1 to {MAX_PAGE}"
            )));
        }
    };
    let streams = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if streams {
        return Ok(stream(state, caller, after, limit).into_response());
    }
    let wait = Duration::from_secs(query.wait.unwrap_or(0))
        .min(longest_wait(state.limits.request_timeout));
    let page = poll(&state, &caller, after, limit, wait).await?;
    Ok(Json(page).into_response())
}

/// The longest a long poll waits: [`MAX_WAIT`], but no longer than four fifths of the request
/// timeout (24 seconds of the default 30), so that a poll that found nothing has time left to
/// answer its empty page before the timeout cuts the request off with a bodiless `408`.
fn longest_wait(request_timeout: Duration) -> Duration {
    MAX_WAIT.min(request_timeout - request_timeout / 5)
}

/// The page after `after`, waiting up to `wait` for one that is not empty.
async fn poll(
    state: &AppState,
    caller: &Arc<Caller>,
    after: i64,
    limit: u32,
    wait: Duration,
) -> Result<ChangePage, ServerError> {
    let until = Instant::now() + wait;
    loop {
        // Registered before reading, so that a push stored meanwhile is not missed.
        let stored = state.feed_stored.notified();
        let page = read_page(state, caller, after, limit).await?;
        let left = until.saturating_duration_since(Instant::now());
        if !page.changes.is_empty() || left.is_zero() {
            return Ok(page);
        }
        let _ = tokio::time::timeout(left.min(LOOK_AGAIN), stored).await;
    }
}

/// Server-sent events: each change an event whose id is its cursor, for as long as the client
/// stays.
fn stream(
    state: AppState,
    caller: Arc<Caller>,
    after: i64,
    limit: u32,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let events = futures_util::stream::unfold(
        (state, caller, after, Vec::<ChangeView>::new().into_iter()),
        move |(state, caller, mut after, mut pending)| async move {
            loop {
                if let Some(change) = pending.next() {
                    after = cursor(Some(&change.cursor)).unwrap_or(after);
                    let event = Event::default()
                        .id(change.cursor.clone())
                        .event("change")
                        .json_data(&change)
                        .unwrap_or_else(|_| Event::default().comment("unencodable"));
                    return Some((Ok(event), (state, caller, after, pending)));
                }
                match poll(&state, &caller, after, limit, MAX_WAIT).await {
                    Ok(page) => pending = page.changes.into_iter(),
                    Err(err) => {
                        tracing::warn!(error = %err, "the change stream ended");
                        return None;
                    }
                }
            }
        },
    );
    Sse::new(events).keep_alive(KeepAlive::default())
}

async fn read_page(
    state: &AppState,
    caller: &Arc<Caller>,
    after: i64,
    limit: u32,
) -> Result<ChangePage, ServerError> {
    read_page_for(state, caller, (after, limit), "changes").await
}

/// The changes after `after` that `caller` may read, at most `limit`, with an audit line of
/// `action` if there are any.
pub(crate) async fn read_page_for(
    state: &AppState,
    caller: &Arc<Caller>,
    (after, limit): (i64, u32),
    action: &'static str,
) -> Result<ChangePage, ServerError> {
    let (storage, caller) = (state.storage.clone(), caller.clone());
    let max_inflated = state.limits.max_document_bytes;
    blocking(move || {
        let readable = caller.readable();
        let page = crate::pull::feed_page_in(
            &readable,
            || readable.resolve(&*storage),
            |scopes| storage.feed_page(scopes, after, limit),
        )?;
        let changes = describe(&*storage, &page.entries, max_inflated)?;
        if let (Some(first), Some(last)) = (changes.first(), changes.last()) {
            storage.audit_line(&NewAuditLine {
                user_id: caller.user_id,
                device_id: caller.device_id,
                action,
                collection: "",
                record_id: &format!("{}..{}", first.cursor, last.cursor),
                scope: "",
            })?;
        }
        Ok(ChangePage {
            changes,
            next: page.last_seq.to_string(),
            more: page.more,
        })
    })
    .await
}

/// Each entry as a change: the fields its changes wrote, with their values as they left them.
fn describe(
    storage: &dyn Storage,
    entries: &[FeedEntry],
    max_inflated: usize,
) -> Result<Vec<ChangeView>, ServerError> {
    let who: HashMap<i64, (String, String)> = storage
        .list_devices()?
        .into_iter()
        .map(|device| (device.id, (device.user, device.name)))
        .collect();
    let mut documents: HashMap<(String, String), Written> = HashMap::new();
    entries
        .iter()
        .map(|entry| {
            let key = (entry.collection.clone(), entry.record_id.clone());
            let written = match documents.entry(key) {
                std::collections::hash_map::Entry::Occupied(found) => found.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    let stored = storage
                        .stored_records(&[(&entry.collection, &entry.record_id)])?
                        .records
                        .pop()
                        .flatten()
                        .ok_or_else(|| ServerError::Corrupt("a fed record is missing".into()))?;
                    slot.insert(Written::of(&stored.doc, max_inflated))
                }
            };
            let (fields, deleted) = match &entry.erased {
                Some(_) => epoch_values(entry, max_inflated)?,
                None => written.by(entry)?,
            };
            let who = who.get(&entry.device_id);
            Ok(ChangeView {
                cursor: entry.seq.to_string(),
                collection: entry.collection.clone(),
                id: entry.record_id.clone(),
                scope: entry.scope.clone(),
                fields,
                deleted,
                user: who.map(|(user, _)| user.clone()),
                device: who.map(|(_, device)| device.clone()),
                at: entry.committed_at,
                erased: entry.erased.clone(),
            })
        })
        .collect()
}

/// The values of the epoch an erasure's entry starts: its whole document.
fn epoch_values(entry: &FeedEntry, max_inflated: usize) -> Result<(Fields, bool), ServerError> {
    let doc = entry
        .changes
        .first()
        .and_then(|bytes| crate::merge::load_document(bytes, max_inflated).ok())
        .ok_or_else(|| ServerError::Corrupt("an erasure's feed entry does not load".into()))?;
    document::document_values(&doc)
        .map_err(|_| ServerError::Corrupt("an erasure's feed entry does not read".into()))
}

/// A record's document, and which fields each of its changes wrote.
struct Written {
    doc: AutoCommit,
    fields_of: HashMap<String, (Vec<String>, bool)>,
}

impl Written {
    /// The record stored as `bytes`; one that does not load (`check` finds it, `repair`
    /// mends it) is described with no fields rather than stopping the feed.
    fn of(bytes: &[u8], max_inflated: usize) -> Written {
        let Ok(mut doc) = crate::merge::load_document(bytes, max_inflated) else {
            tracing::warn!("a record in the change feed does not load: run `check`");
            return Written {
                doc: AutoCommit::new(),
                fields_of: HashMap::new(),
            };
        };
        let fields_of = document::history(&mut doc)
            .into_iter()
            .map(|change| (change.change_hash, (change.fields, change.deleted)))
            .collect();
        Written { doc, fields_of }
    }

    /// The fields `entry`'s changes wrote, with their values in the document as those changes
    /// left it, and whether they deleted the record. A change the document no longer holds
    /// (a record rebuilt by `repair`) gives its fields' values now rather than stopping the
    /// feed.
    fn by(&mut self, entry: &FeedEntry) -> Result<(Fields, bool), ServerError> {
        let mut heads: Vec<ChangeHash> = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        let mut deleted = false;
        for bytes in &entry.changes {
            let Ok(change) = automerge::Change::from_bytes(bytes.clone()) else {
                continue;
            };
            let hash = change.hash();
            if let Some((fields, deletes)) = self.fields_of.get(&hash.to_string()) {
                names.extend(fields.iter().cloned());
                deleted |= deletes;
            }
            heads.push(hash);
        }
        let then = self.doc.fork_at(&heads).ok();
        let (values, _) = document::document_values(then.as_ref().unwrap_or(&self.doc))
            .map_err(|_| ServerError::Corrupt("a stored record does not read".into()))?;
        let fields = names
            .into_iter()
            .map(|name| {
                let value = values
                    .get(&name)
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                (name, value)
            })
            .collect();
        Ok((fields, deleted))
    }
}

/// A cursor as sent: a feed position; none is the start.
fn cursor(text: Option<&str>) -> Result<i64, ServerError> {
    match text {
        None | Some("") => Ok(0),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|seq| *seq >= 0)
            .ok_or_else(|| ServerError::BadRequest("after is a cursor this feed gave".into())),
    }
}

#[cfg(test)]
mod tests;
