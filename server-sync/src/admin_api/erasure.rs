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

/// What to erase: `fields`, or with `history` every past value, or with neither the record.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseBody {
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    history: bool,
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
        reason,
    } = body(request)?;
    let erasure = match (fields.is_empty(), history) {
        (false, false) => Erasure::Fields(fields.into_iter().collect()),
        (false, true) => {
            return Err(ServerError::BadRequest(
                "name `fields` or `history`, not both".into(),
            ));
        }
        (true, true) => Erasure::History,
        (true, false) => Erasure::Record,
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
    }))
}
