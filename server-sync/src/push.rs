//! `POST /v1/push`: a device's changes, each record checked, merged into the server's copy and
//! added to the feed, or refused on its own (the merge itself is `merge.rs`, the threads that
//! make it ahead `premerge.rs`).

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use fieldsync_record::merge::guarded;
use fieldsync_record::protocol::{self, Payload, PushRequest};

use crate::AppState;
use crate::error::ServerError;
use crate::http::{
    authorize, blocking, decode_error, message_response, pending_changes, read_body,
};
use crate::merge::{MergeContext, decode_change, load_document};
use crate::metrics::Metrics;
use crate::premerge::{Premerges, PushMerger};
use crate::storage::Batch;

/// Handles a push: each record is checked, merged into the server's copy and added to the
/// feed, or rejected on its own.
pub async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let started = Instant::now();
    let caller = authorize(&state, &headers).await?;
    let pending_changes = pending_changes(&headers)?;
    // What the push may hold in memory is admitted before it is held (admission.rs).
    let _slot = state.admission.device_slot(caller.device_id)?;
    let body = read_body(body, state.limits.max_body_bytes).await?;
    let (body, decoded_size) = {
        let max = state.limits.max_decompressed_bytes;
        blocking(move || {
            let size = protocol::decompressed_size(&body, max).map_err(decode_error)?;
            Ok((body, size))
        })
        .await?
    };
    let _bytes = state.admission.bytes(body.len() + 2 * decoded_size).await;
    let _merging = state.admission.merging().await;
    let pusher = Pusher {
        pending_changes,
        ..Pusher::of(&state)
    };
    let response = blocking(move || {
        let request: PushRequest =
            protocol::decode(&body, pusher.limits.max_decompressed_bytes).map_err(decode_error)?;
        pusher.push(&caller, &request)
    })
    .await?;
    state.metrics.pushes.inc();
    state.metrics.push_latency.observe(started.elapsed());
    Ok(message_response(&response))
}

/// What a push needs of the server's state: shared by devices' pushes and the records API,
/// whose writes are pushes of the server's making.
#[derive(Clone)]
pub(crate) struct Pusher {
    storage: std::sync::Arc<dyn crate::storage::Storage>,
    limits: crate::Limits,
    metrics: std::sync::Arc<Metrics>,
    schemas: std::sync::Arc<crate::schema::SchemaCache>,
    feed_stored: std::sync::Arc<tokio::sync::Notify>,
    /// How many local changes the pushing device said wait in its outbox, recorded with the
    /// push; `None` when it did not say, and for pushes of the server's making.
    pending_changes: Option<u64>,
}

impl Pusher {
    pub(crate) fn of(state: &AppState) -> Pusher {
        Pusher {
            storage: state.storage.clone(),
            limits: state.limits.clone(),
            metrics: state.metrics.clone(),
            schemas: state.schema.clone(),
            feed_stored: state.feed_stored.clone(),
            pending_changes: None,
        }
    }

    /// Checks, merges and stores `request` from `caller`, on the calling (blocking) thread.
    pub(crate) fn push(
        &self,
        caller: &crate::auth::Caller,
        request: &PushRequest,
    ) -> Result<protocol::PushResponse, ServerError> {
        let schema = self.schemas.current(&*self.storage)?;
        // A NUL byte cannot be stored in PostgreSQL text; refused here on every backend.
        if request.batch_id.is_empty()
            || request.batch_id.len() > 128
            || request.batch_id.contains('\0')
        {
            return Err(ServerError::BadRequest(
                "batch_id must be 1 to 128 characters, without NUL".into(),
            ));
        }
        if request.records.len() > self.limits.max_records_per_push {
            return Err(ServerError::TooLarge(format!(
                "at most {} records per push",
                self.limits.max_records_per_push
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
        if changes > self.limits.max_changes_per_push {
            return Err(ServerError::TooLarge(format!(
                "at most {} changes per push",
                self.limits.max_changes_per_push
            )));
        }
        // The device pushes as the actor of its first change: bound by its first push that
        // stores something, and again when a store restored from an older copy took a new
        // one. Until then the changes count as its own only if no other live device holds
        // the actor; an actor the device had before is an older copy's.
        let claimed = first_actor(request, self.limits.max_document_bytes);
        let (actor, binds) = match (&caller.actor, claimed) {
            (Some(bound), Some(claimed)) if *bound == claimed => (Some(claimed), None),
            (bound, Some(claimed)) => {
                if self.storage.actor_free(caller.device_id, &claimed)? {
                    (Some(claimed.clone()), Some(claimed))
                } else if self.storage.retired_actor(caller.device_id, &claimed)? {
                    return Err(ServerError::ActorReused);
                } else {
                    (bound.clone(), None)
                }
            }
            (bound, None) => (bound.clone(), None),
        };
        let keys: Vec<(&str, &str)> = request
            .records
            .iter()
            .map(|r| (r.collection.as_str(), r.id.as_str()))
            .collect();
        let snapshot = self.storage.stored_records(&keys)?;
        let context = MergeContext {
            caller,
            actor: actor.as_deref(),
            limits: &self.limits,
            schema: &schema.schema,
        };
        let premerges = Premerges::for_records(&request.records);
        let (response, applied) = std::thread::scope(|scope| {
            premerges.start(scope, context, &request.records, snapshot.records);
            let mut merger = PushMerger::new(context, &premerges, snapshot.mark);
            let batch = Batch {
                outbox_seq: request.outbox_seq,
                binds: binds.as_deref(),
                pending_changes: self.pending_changes,
                ..Batch::new(&request.batch_id, &request.records)
            };
            let response = self.storage.push(caller.device_id, &batch, &mut merger);
            self.metrics.merge_time.observe(merger.merge_time());
            Ok::<_, ServerError>((response?, merger.applied))
        })?;
        if applied > 0 {
            self.feed_stored.notify_waiters();
        }
        let rejected = response
            .results
            .iter()
            .filter(|r| r.rejected.is_some())
            .count();
        self.metrics.records_rejected.inc_by(rejected as u64);
        self.metrics
            .records_accepted
            .inc_by((response.results.len() - rejected) as u64);
        self.metrics.changes_applied.inc_by(applied as u64);
        Ok(response)
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
