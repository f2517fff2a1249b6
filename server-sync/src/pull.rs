//! `GET /v1/pull`: what changed in the caller's readable scopes after its cursor, as whole
//! documents on a first sync and as feed entries after that.

use std::collections::BTreeSet;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use fieldsync_record::Fields;
use fieldsync_record::protocol::{Payload, PullResponse, PulledRecord};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::AppState;
use crate::auth::Readable;
use crate::error::ServerError;
use crate::http::{authorize, blocking, message_response, pending_changes};
use crate::storage::{FeedEntry, Page};

/// The query string of a pull.
#[derive(Debug, Deserialize)]
pub struct PullParams {
    cursor: Option<String>,
    limit: Option<u32>,
    /// The highest position the device's outbox has reached.
    outbox_seq: Option<i64>,
    /// The Automerge actor the device writes as (hex).
    actor: Option<String>,
    /// The version of the app's schema the device runs.
    schema_version: Option<u32>,
}

/// What a cursor remembers: where the client is, in which mode, for which scopes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// `true` while a first sync pages through whole documents.
    documents: bool,
    /// Feed position reached. During a first sync, the feed's head when it began: the feed
    /// after it holds every change the documents sent may not have had.
    seq: i64,
    /// The scopes the client has been sent, by name.
    scopes: BTreeSet<String>,
    /// During a first sync, the creation position of the last document sent. Absent from
    /// cursors of first syncs that paged by last change, which start over; left out of feed
    /// cursors, which instances of that release still read during an upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sent_to: Option<i64>,
    /// The scopes the client has been sent as every scope with one of these prefixes (a
    /// grant on `caseload-*`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    prefixes: BTreeSet<String>,
}

impl Cursor {
    fn encode(&self) -> String {
        // Named fields, so that fields left out are told apart; cursors of releases that
        // wrote them by position (an array) still decode.
        hex::encode(rmp_serde::to_vec_named(self).expect("cursors always serialize"))
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
    let pending_changes = pending_changes(&headers)?;
    let cursor = params.cursor.as_deref().map(Cursor::decode).transpose()?;
    let limit = params
        .limit
        .unwrap_or(state.limits.default_pull_limit)
        .clamp(1, state.limits.max_pull_limit);
    let storage = state.storage.clone();
    let outbox_seq = params.outbox_seq;
    let actor = params.actor;
    let schema_version = params.schema_version;
    if actor
        .as_deref()
        .is_some_and(|a| a.is_empty() || a.len() > 64 || !a.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ServerError::BadRequest(
            "actor must be 1 to 64 hex digits".into(),
        ));
    }
    let response = blocking(move || {
        // A store restored from an older copy takes a new actor, bound by its first push
        // that stores something (a pull binds nothing: a device that may only read must not
        // take an actor another device will push as). An actor the device had before is an
        // older copy's.
        let new_actor = actor.filter(|a| caller.actor.as_ref() != Some(a));
        if let Some(actor) = &new_actor
            && storage.retired_actor(caller.device_id, actor)?
        {
            return Err(ServerError::ActorReused);
        }
        let device = storage.device_sync(caller.device_id)?;
        // A device whose outbox is behind what it pushed reads from an older copy of its
        // store, which lacks what it pushed since (the feed leaves a device's own entries out).
        // Under a new actor its outbox positions start over.
        if let Some(mark) = outbox_seq
            && new_actor.is_none()
            && device.outbox_seq.is_some_and(|pushed| mark < pushed)
        {
            return Err(ServerError::ActorReused);
        }
        // Written when it changes only: a pull writes nothing else when it brings nothing.
        if let Some(version) = schema_version.filter(|v| device.schema_version != Some(*v)) {
            storage.set_device_schema_version(caller.device_id, version)?;
        }
        let readable = caller.readable();
        let (revoked, added) = match &cursor {
            Some(cursor) => {
                let held = Readable {
                    exact: cursor.scopes.clone(),
                    prefixes: cursor.prefixes.clone(),
                };
                let added = readable.exact.difference(&held.exact).count()
                    + readable.prefixes.difference(&held.prefixes).count();
                let revoked = if held == readable {
                    Vec::new()
                } else {
                    held.resolve(&*storage)?
                        .into_iter()
                        .filter(|scope| !readable.covers(scope))
                        .collect()
                };
                (revoked, added)
            }
            None => (Vec::new(), 0),
        };
        // A first sync pages through the documents created after `sent_to`; it starts
        // (again) without a cursor, when scopes were added, from a cursor the feed was pruned
        // past (the device read none of it for longer than the server keeps it), and from a
        // cursor that does not say where it is.
        let first_sync = match &cursor {
            None => Some(None),
            Some(_) if added > 0 => Some(None),
            Some(cursor) if cursor.seq < device.feed_pruned_through => Some(None),
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
                // Resolved after the head was taken: every record created up to it is seen.
                let scopes: Vec<String> = readable.resolve(&*storage)?.into_iter().collect();
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
                            epoch: entry.epoch,
                        })
                    })
                    .collect::<Result<Vec<_>, ServerError>>()?;
                // Once every document is sent, the feed after the head holds the rest, and
                // the device reads on at once if anything was written there meanwhile.
                let next = Cursor {
                    documents: page.more,
                    seq: head,
                    scopes: readable.exact,
                    prefixes: readable.prefixes,
                    sent_to: page.more.then_some(page.last_seq),
                };
                let more = page.more || storage.feed_head()? > head;
                (records, next, more)
            }
            None => {
                let after = cursor.as_ref().map_or(0, |c| c.seq);
                let page = feed_page_in(
                    &readable,
                    || readable.resolve(&*storage),
                    |scopes| feed_page_of_others(&*storage, scopes, caller.device_id, after, limit),
                )?;
                let records = page
                    .entries
                    .into_iter()
                    .map(|entry| {
                        let (fields, deleted) = match entry.latest {
                            Some((json, deleted)) => (Some(decode_fields(&json)?), deleted),
                            None => (None, false),
                        };
                        // The entry that starts an epoch holds its whole document.
                        let mut changes = entry.changes.into_iter().map(ByteBuf::from);
                        let payload = match (&entry.erased, changes.len()) {
                            (Some(_), 1) => Payload::Document(changes.next().expect("one")),
                            _ => Payload::Changes(changes.collect()),
                        };
                        Ok(PulledRecord {
                            collection: entry.collection,
                            id: entry.record_id,
                            scope: entry.scope,
                            payload,
                            fields,
                            deleted,
                            epoch: entry.epoch,
                        })
                    })
                    .collect::<Result<Vec<_>, ServerError>>()?;
                let next = Cursor {
                    documents: false,
                    seq: page.last_seq,
                    scopes: readable.exact,
                    prefixes: readable.prefixes,
                    sent_to: None,
                };
                (records, next, page.more)
            }
        };
        // Named with the page, so that the device shows people rather than actor ids.
        let keys: Vec<(&str, &str)> = records
            .iter()
            .map(|r| (r.collection.as_str(), r.id.as_str()))
            .collect();
        let authors = storage.authors_of(&keys)?;
        let pulled: Vec<(String, String, String)> = records
            .iter()
            .map(|r| (r.collection.clone(), r.id.clone(), r.scope.clone()))
            .collect();
        storage.record_pull(caller.device_id, &pulled, pending_changes, next.seq)?;
        Ok(PullResponse {
            records,
            next_cursor: next.encode(),
            more,
            revoked_scopes: revoked,
            authors,
        })
    })
    .await?;
    state.metrics.pulls.inc();
    state
        .metrics
        .records_pulled
        .inc_by(response.records.len() as u64);
    state.metrics.pull_latency.observe(started.elapsed());
    Ok(message_response(&response))
}

/// How many times a pull reads its feed page again because a scope under one of its prefixes
/// came to hold records meanwhile.
const FEED_READS_FOR_NEW_SCOPES: usize = 4;

/// The feed page of `readable`'s scopes, as `read` reads a page of the scopes it is given. The
/// scopes under a prefix are found (`resolve`) again after the page is read: a scope whose
/// first record was written meanwhile, at a position the page passed, would otherwise be
/// skipped for good. If one turned up, the page is read again with it (positions become
/// visible in order, so a scope seen after the read holds every entry up to the page's last
/// position that the read could have missed).
pub(crate) fn feed_page_in(
    readable: &Readable,
    mut resolve: impl FnMut() -> Result<BTreeSet<String>, ServerError>,
    mut read: impl FnMut(&[String]) -> Result<Page<FeedEntry>, ServerError>,
) -> Result<Page<FeedEntry>, ServerError> {
    let mut scopes = resolve()?;
    for _ in 0..FEED_READS_FOR_NEW_SCOPES {
        let listed: Vec<String> = scopes.iter().cloned().collect();
        let page = read(&listed)?;
        if readable.prefixes.is_empty() {
            return Ok(page);
        }
        let seen_after = resolve()?;
        if seen_after == scopes {
            return Ok(page);
        }
        scopes = seen_after;
    }
    Err(ServerError::TryAgain(
        "scopes are being created faster than a pull can read them".into(),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(prefixes: &[&str], sent_to: Option<i64>) -> Cursor {
        Cursor {
            documents: sent_to.is_some(),
            seq: 42,
            scopes: ["north".to_owned()].into(),
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            sent_to,
        }
    }

    /// A pull of `caseload-*` reads the feed while another device creates `caseload-north`
    /// (its first entry at a position the page passes) and writes to `caseload-east`.
    #[test]
    fn a_scope_created_under_a_prefix_while_its_page_is_read_is_not_skipped() {
        use crate::storage::conformance::{accept, record};
        use crate::storage::{Batch, Role, Storage, sqlite::SqliteStorage};

        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
        let user = storage.create_user("seeder", Role::Member).unwrap();
        let writer = storage.create_device(user, "writer").unwrap();
        let reader = storage.create_device(user, "reader").unwrap();
        let push = |id: &str, scope: &str| {
            let records = [record(id, scope)];
            storage
                .push(writer, &Batch::new(id, &records), &mut accept)
                .unwrap();
        };
        push("first", "caseload-east");
        let after = storage.feed_head().unwrap();
        let readable = Readable {
            exact: BTreeSet::new(),
            prefixes: ["caseload-".to_owned()].into(),
        };
        let mut reads = 0;
        let page = feed_page_in(
            &readable,
            || readable.resolve(&storage),
            |scopes| {
                reads += 1;
                if reads == 1 {
                    // Committed after the scopes were found, before the page is read.
                    push("new-scope", "caseload-north");
                    push("later", "caseload-east");
                }
                feed_page_of_others(&storage, scopes, reader, after, 10)
            },
        )
        .unwrap();
        let read: Vec<&str> = page.entries.iter().map(|e| e.record_id.as_str()).collect();
        assert_eq!(read, ["new-scope", "later"]);
        assert_eq!(reads, 2, "read again once the new scope was seen");
    }

    #[test]
    fn cursors_round_trip_and_those_written_by_position_still_decode() {
        for written in [
            cursor(&[], None),
            cursor(&["caseload-"], None),
            cursor(&[], Some(7)),
            cursor(&["caseload-", "team-"], Some(7)),
        ] {
            assert_eq!(Cursor::decode(&written.encode()).unwrap(), written);
        }
        // As releases before prefixes wrote them: an array, `sent_to` left out when absent.
        let feed = hex::encode(rmp_serde::to_vec(&(false, 42i64, ["north"])).unwrap());
        assert_eq!(Cursor::decode(&feed).unwrap(), cursor(&[], None));
        let first_sync = hex::encode(rmp_serde::to_vec(&(true, 42i64, ["north"], 7i64)).unwrap());
        assert_eq!(Cursor::decode(&first_sync).unwrap(), cursor(&[], Some(7)));
    }
}
