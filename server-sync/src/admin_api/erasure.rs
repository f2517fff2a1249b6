//! `POST /v1/admin/records/{collection}/{id}/erase`: an erasure, as `fieldsync-server erase`
//! makes it (`erasure.rs`), by an administrator whose name the audit line keeps.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use fieldsync_record::erasure::Erasure;
use serde::{Deserialize, Serialize};

use super::{Administrator, body, path};
use crate::AppState;
use crate::error::ServerError;
use crate::http::blocking;

/// What to erase: `fields`, or with `history` every past value, or with `record` the whole
/// record; exactly one of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseBody {
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    history: bool,
    #[serde(default)]
    record: bool,
    reason: String,
}

/// What the erasure did.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ErasedView {
    /// What was erased (`fields a,b`, `history` or `record`).
    pub erased: String,
    /// The record's new epoch.
    pub epoch: u64,
    /// Attachments only the erased values referenced, whose bytes were dropped.
    pub attachments_dropped: usize,
    /// Whether the database's own files keep no copy of the erased bytes (false on PostgreSQL,
    /// or while a reader held the WAL: see DEPLOYMENT.md, "Erasure").
    pub scrubbed: bool,
}

/// `POST /v1/admin/records/{collection}/{id}/erase`.
pub async fn erase(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    key: Result<Path<(String, String)>, PathRejection>,
    request: Result<Json<EraseBody>, JsonRejection>,
) -> Result<Json<ErasedView>, ServerError> {
    let (collection, id) = path(key)?;
    let EraseBody {
        fields,
        history,
        record,
        reason,
    } = body(request)?;
    let erasure = match (!fields.is_empty(), history, record) {
        (true, false, false) => Erasure::Fields(fields.into_iter().collect()),
        (false, true, false) => Erasure::History,
        (false, false, true) => Erasure::Record,
        _ => {
            return Err(ServerError::BadRequest(
                "name exactly one of `fields`, `history` and `record`".into(),
            ));
        }
    };
    let storage = state.storage.clone();
    let erased = erasure.describe();
    let (done, schema) = blocking(move || {
        let stored = storage.current_schema()?.ok_or(ServerError::NoSchema)?;
        let schema = crate::schema::parse(&stored)?;
        let request = crate::erasure::EraseRequest {
            collection: &collection,
            id: &id,
            erasure,
            by: by.user_id(),
            reason: &reason,
            scrub: true,
        };
        Ok((crate::erasure::erase(&*storage, &schema, &request)?, schema))
    })
    .await?;
    let attachments_dropped = crate::attachments::collect::drop_unreferenced(
        &state.storage,
        &state.chunks,
        &schema,
        &done.scope,
        &done.attachments,
    )
    .await?;
    Ok(Json(ErasedView {
        erased,
        epoch: done.epoch,
        attachments_dropped,
        scrubbed: done.scrubbed,
    }))
}
