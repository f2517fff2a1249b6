//! The records API (`/v1/records/...`, JSON): the clinic's own systems (an EHR connector, a
//! scheduling system, reports) read and write records as a device of a service account would,
//! within the scopes the account is granted. Reads give a record's values with its conflicts
//! and, if asked, its history; writes are Automerge changes made on top of the server's copy
//! (`records_api/edit.rs`) and pushed like a device's, so they are checked, merged, added to
//! the feed devices pull, and audited the same way. Reads are audited too (`read`, `list`).
//! A record in a scope the caller may not read is answered as one that does not exist. The
//! OpenAPI document (`openapi.json`, served at `/v1/records/openapi.json`) describes every
//! route, the change feed's (`GET /v1/changes`, `change_feed.rs`) among them.

use std::collections::HashMap;

use automerge::ActorId;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fieldsync_record::document::{self, FieldConflict, HistoryEntry};
use fieldsync_record::protocol::{PushRecord, PushRequest};
use fieldsync_record::schema::Collection;
use fieldsync_record::value::Fields;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ServerError;
use crate::http::{authorize_api, blocking};
use crate::push::Pusher;
use crate::storage::{NewAuditLine, Storage, StoredRecord, now_ms};
use edit::Target;

pub mod edit;

/// The OpenAPI document of these routes.
pub const OPENAPI: &str = include_str!("records_api/openapi.json");

/// Most records one listing returns, and the default.
const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 100;
/// Records a filtered listing reads for one page at most, before it answers with what it
/// found and where to go on.
const SCAN_PER_PAGE: u32 = 5_000;

/// The records routes, and the change feed's (`change_feed.rs`), which the same document
/// describes for the same callers. The document's static path wins over `{collection}`, which
/// could not name it anyway (collection names have no `.`).
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/records/openapi.json", get(openapi))
        .route("/v1/changes", get(crate::change_feed::changes))
        .route("/v1/records/{collection}", get(list).post(create))
        .route(
            "/v1/records/{collection}/{id}",
            get(read).patch(update).delete(remove),
        )
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A record as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct RecordView {
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// Its scope.
    pub scope: String,
    /// Its version: an update based on it names it as `base_version`.
    pub version: i64,
    /// Whether it is deleted.
    pub deleted: bool,
    /// Its values.
    pub fields: Fields,
    /// The fields concurrent writes left with more than one value.
    pub conflicts: Vec<FieldConflict>,
    /// Every change, oldest first, with who made it (`?history=true` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Change>>,
}

/// One change in a record's history.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Change {
    /// The change as the record engine describes it.
    #[serde(flatten)]
    pub change: HistoryEntry,
    /// The user whose device (or service account) made it, if the server knows the actor.
    pub user: Option<String>,
    /// That device's name.
    pub device: Option<String>,
}

/// A page of records.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct RecordPage {
    /// The records, by id.
    pub records: Vec<ListedValues>,
    /// The `after` of the next page; absent at the end.
    pub next: Option<String>,
}

/// A record as a listing shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ListedValues {
    /// Its id.
    pub id: String,
    /// Its version.
    pub version: i64,
    /// Its values.
    pub fields: Fields,
}

/// What a write did.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Written {
    /// The record's id.
    pub id: String,
    /// Its version now.
    pub version: i64,
}

/// `POST /v1/records/{collection}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRecord {
    /// Its id (default: a new UUID).
    pub id: Option<String>,
    /// Its values; the scope field says where it is kept.
    pub fields: Fields,
}

/// `PATCH /v1/records/{collection}/{id}`: the fields to set (`null` clears one), and either
/// the version the update was based on or `merge: true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// The fields to set.
    pub fields: Fields,
    /// The version read before: the update is refused (409) if the record changed since.
    pub base_version: Option<i64>,
    /// Apply to whatever the record is now, merging with what changed since it was read.
    #[serde(default)]
    pub merge: bool,
}

/// The query of a read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    #[serde(default)]
    history: bool,
}

/// The query of a delete.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    base_version: Option<i64>,
}

/// `GET /v1/records/{collection}/{id}[?history=true]`.
pub async fn read(
    State(state): State<AppState>,
    headers: HeaderMap,
    record: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<RecordView>, ServerError> {
    let caller = authorize_api(&state, &headers).await?;
    let (collection, id) = path(record)?;
    let Query(query) = query.map_err(|r| crate::http::unreadable(r.body_text()))?;
    let (storage, schemas) = (state.storage.clone(), state.schema.clone());
    let max_inflated = state.limits.max_document_bytes;
    let view = blocking(move || {
        let schema = schemas.current(&*storage)?;
        let decl = declared(&schema.schema, &collection)?;
        let stored = readable_record(&*storage, &caller, (&collection, &id))?;
        let view = record_view(
            &*storage,
            (decl, &collection, &id),
            stored,
            (query.history, max_inflated),
        )?;
        audit(&*storage, &caller, "read", (&collection, &id), &view.scope)?;
        Ok(view)
    })
    .await?;
    Ok(Json(view))
}

/// `GET /v1/records/{collection}?scope=S[&after=ID][&limit=N][&field.NAME=VALUE...]`: the
/// live records of a scope, by id; a `field.` parameter keeps those whose field has that
/// value (a string as is, a number or boolean as JSON writes it).
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    collection: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<RecordPage>, ServerError> {
    let caller = authorize_api(&state, &headers).await?;
    let collection = path(collection)?;
    let Query(mut query) = query.map_err(|r| crate::http::unreadable(r.body_text()))?;
    let scope = query
        .remove("scope")
        .ok_or_else(|| ServerError::BadRequest("a listing names its scope: ?scope=S".into()))?;
    let after = query.remove("after").unwrap_or_default();
    let limit = match query.remove("limit") {
        None => DEFAULT_PAGE,
        Some(limit) => limit
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=MAX_PAGE).contains(limit))
            .ok_or_else(|| {
                ServerError::BadRequest(format!("limit must be a number from 1 to {MAX_PAGE}"))
            })?,
    };
    let (storage, schemas) = (state.storage.clone(), state.schema.clone());
    let page = blocking(move || {
        let schema = schemas.current(&*storage)?;
        let decl = declared(&schema.schema, &collection)?;
        let filters = filters(decl, query)?;
        if !caller.readable().covers(&scope) {
            return Err(ServerError::Forbidden(
                "the caller may not read this scope".into(),
            ));
        }
        let page = scan(&*storage, (&collection, &scope), after, limit, &filters)?;
        audit(&*storage, &caller, "list", (&collection, ""), &scope)?;
        Ok(page)
    })
    .await?;
    Ok(Json(page))
}

/// `POST /v1/records/{collection}`: a new record (201), or 409 if the id is taken.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    collection: Result<Path<String>, PathRejection>,
    body: Result<Json<NewRecord>, JsonRejection>,
) -> Result<(StatusCode, Json<Written>), ServerError> {
    let caller = authorize_api(&state, &headers).await?;
    let collection = path(collection)?;
    let Json(new) = body.map_err(|r| crate::http::unreadable(r.body_text()))?;
    let pusher = Pusher::of(&state);
    let (storage, schemas) = (state.storage.clone(), state.schema.clone());
    let written = blocking(move || {
        let schema = schemas.current(&*storage)?;
        let decl = declared(&schema.schema, &collection)?;
        let id = new.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let target = Target {
            collection: &collection,
            decl,
            id: &id,
        };
        let record = edit::create(target, &new.fields, &actor_of(&caller), now_ms())?;
        if !caller.may_write(&record.scope) {
            return Err(ServerError::Forbidden(
                "the caller may not write this scope".into(),
            ));
        }
        if stored(&*storage, (&collection, &id))?.is_some() {
            return Err(ServerError::Conflict(format!(
                "a record {id} exists in collection {collection}"
            )));
        }
        push(&*storage, &pusher, &caller, record)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(written)))
}

/// `PATCH /v1/records/{collection}/{id}`.
pub async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    record: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<Update>, JsonRejection>,
) -> Result<Json<Written>, ServerError> {
    let caller = authorize_api(&state, &headers).await?;
    let (collection, id) = path(record)?;
    let Json(update) = body.map_err(|r| crate::http::unreadable(r.body_text()))?;
    if update.merge == update.base_version.is_some() {
        return Err(ServerError::BadRequest(
            "an update names its base_version, or is a merge (\"merge\": true)".into(),
        ));
    }
    let pusher = Pusher::of(&state);
    let (storage, schemas) = (state.storage.clone(), state.schema.clone());
    let max_inflated = state.limits.max_document_bytes;
    let written = blocking(move || {
        let schema = schemas.current(&*storage)?;
        let decl = declared(&schema.schema, &collection)?;
        let stored = writable_record(&*storage, &caller, (&collection, &id), update.base_version)?;
        let target = Target {
            collection: &collection,
            decl,
            id: &id,
        };
        let actor = actor_of(&caller);
        match edit::update(
            target,
            &stored,
            &update.fields,
            &actor,
            (now_ms(), max_inflated),
        )? {
            Some(record) => push(&*storage, &pusher, &caller, record),
            None => Ok(Written {
                id,
                version: stored.version.unwrap_or_default(),
            }),
        }
    })
    .await?;
    Ok(Json(written))
}

/// `DELETE /v1/records/{collection}/{id}[?base_version=N]`.
pub async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    record: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Json<Written>, ServerError> {
    let caller = authorize_api(&state, &headers).await?;
    let (collection, id) = path(record)?;
    let Query(query) = query.map_err(|r| crate::http::unreadable(r.body_text()))?;
    let pusher = Pusher::of(&state);
    let (storage, schemas) = (state.storage.clone(), state.schema.clone());
    let max_inflated = state.limits.max_document_bytes;
    let written = blocking(move || {
        let schema = schemas.current(&*storage)?;
        let decl = declared(&schema.schema, &collection)?;
        let stored = writable_record(&*storage, &caller, (&collection, &id), query.base_version)?;
        let target = Target {
            collection: &collection,
            decl,
            id: &id,
        };
        let record = edit::delete(
            target,
            &stored,
            &actor_of(&caller),
            (now_ms(), max_inflated),
        )?;
        push(&*storage, &pusher, &caller, record)
    })
    .await?;
    Ok(Json(written))
}

/// Path parameters, refused as `bad_request` (in JSON, like every other error, and only once
/// the caller is authenticated) when they do not read: a percent-encoding that is not UTF-8.
fn path<T>(params: Result<Path<T>, PathRejection>) -> Result<T, ServerError> {
    params
        .map(|Path(value)| value)
        .map_err(|rejection| crate::http::unreadable(rejection.body_text()))
}

/// A stored record as the API shows it, with its history if `history`.
pub(crate) fn record_view(
    storage: &dyn Storage,
    (decl, collection, id): (&Collection, &str, &str),
    stored: StoredRecord,
    (history, max_inflated): (bool, usize),
) -> Result<RecordView, ServerError> {
    let mut doc = crate::merge::load_document(&stored.doc, max_inflated)
        .map_err(|_| ServerError::Corrupt("a stored record does not load".into()))?;
    let conflicts = document::conflicts(&doc, decl)
        .map_err(|_| ServerError::Corrupt("a stored record does not read".into()))?;
    let history = history
        .then(|| with_who(storage, document::history(&mut doc)))
        .transpose()?;
    Ok(RecordView {
        fields: values(&stored.fields_json)?,
        collection: collection.to_owned(),
        id: id.to_owned(),
        scope: stored.scope,
        version: stored.version.unwrap_or_default(),
        deleted: stored.deleted,
        conflicts,
        history,
    })
}

fn declared<'a>(
    schema: &'a fieldsync_record::Schema,
    collection: &str,
) -> Result<&'a Collection, ServerError> {
    schema
        .collection(collection)
        .map_err(|_| ServerError::NotFound(format!("no collection {collection}")))
}

fn stored(storage: &dyn Storage, key: (&str, &str)) -> Result<Option<StoredRecord>, ServerError> {
    Ok(storage
        .stored_records(&[key])?
        .records
        .pop()
        .flatten()
        .filter(|stored| stored.version.is_some()))
}

/// The record, if the caller may read its scope; otherwise, as when it does not exist, 404.
fn readable_record(
    storage: &dyn Storage,
    caller: &Caller,
    (collection, id): (&str, &str),
) -> Result<StoredRecord, ServerError> {
    stored(storage, (collection, id))?
        .filter(|stored| caller.readable().covers(&stored.scope))
        .ok_or_else(|| ServerError::NotFound(format!("no record {id} in collection {collection}")))
}

/// The live record, if the caller may write its scope and it is still at `base_version`.
fn writable_record(
    storage: &dyn Storage,
    caller: &Caller,
    (collection, id): (&str, &str),
    base_version: Option<i64>,
) -> Result<StoredRecord, ServerError> {
    let stored = readable_record(storage, caller, (collection, id))?;
    if !caller.may_write(&stored.scope) {
        return Err(ServerError::Forbidden(
            "the caller may not write this scope".into(),
        ));
    }
    if stored.deleted {
        return Err(ServerError::Conflict(format!("record {id} is deleted")));
    }
    let version = stored.version.unwrap_or_default();
    if base_version.is_some_and(|base| base != version) {
        return Err(ServerError::Conflict(format!(
            "record {id} changed since that version (it is at {version}): read it again, or \
             send the update as a merge"
        )));
    }
    Ok(stored)
}

/// The actor the caller writes as: its device's, once bound; a new one, which its first
/// write binds, before.
fn actor_of(caller: &Caller) -> ActorId {
    caller
        .actor
        .as_deref()
        .and_then(|hex| ActorId::try_from(hex).ok())
        .unwrap_or_else(ActorId::random)
}

/// Pushes `record` as `caller`'s device; its version once stored, or why it was refused.
fn push(
    storage: &dyn Storage,
    pusher: &Pusher,
    caller: &Caller,
    record: PushRecord,
) -> Result<Written, ServerError> {
    let key = (record.collection.clone(), record.id.clone());
    let request = PushRequest {
        batch_id: format!("api-{}", uuid::Uuid::new_v4().simple()),
        outbox_seq: None,
        records: vec![record],
    };
    let response = pusher.push(caller, &request)?;
    if let Some(rejected) = response.results.into_iter().find_map(|r| r.rejected) {
        return Err(ServerError::Refused(rejected.message));
    }
    let version = stored(storage, (&key.0, &key.1))?
        .and_then(|stored| stored.version)
        .ok_or_else(|| ServerError::Internal("a record written is not found".into()))?;
    Ok(Written { id: key.1, version })
}

/// Each change with the user and device whose actor made it.
fn with_who(storage: &dyn Storage, history: Vec<HistoryEntry>) -> Result<Vec<Change>, ServerError> {
    let devices: HashMap<String, (String, String)> = storage
        .list_devices()?
        .into_iter()
        .filter_map(|device| Some((device.actor?, (device.user, device.name))))
        .collect();
    Ok(history
        .into_iter()
        .map(|change| {
            let who = devices.get(&change.device_id).cloned();
            Change {
                user: who.as_ref().map(|(user, _)| user.clone()),
                device: who.map(|(_, device)| device),
                change,
            }
        })
        .collect())
}

fn values(fields_json: &str) -> Result<Fields, ServerError> {
    serde_json::from_str(fields_json)
        .map_err(|_| ServerError::Corrupt("stored values do not decode".into()))
}

/// The `field.NAME=VALUE` parameters, each naming a declared field; any other is refused.
fn filters(
    decl: &Collection,
    query: HashMap<String, String>,
) -> Result<Vec<(String, String)>, ServerError> {
    query
        .into_iter()
        .map(|(key, value)| match key.strip_prefix("field.") {
            Some(name) if decl.fields.contains_key(name) => Ok((name.to_owned(), value)),
            Some(name) => Err(ServerError::BadRequest(format!(
                "no field {name} to filter on"
            ))),
            None => Err(ServerError::BadRequest(format!(
                "unknown parameter {key}: a listing takes scope, after, limit and field.NAME"
            ))),
        })
        .collect()
}

fn matches(fields: &Fields, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(name, wanted)| match fields.get(name) {
        Some(Value::String(text)) => text == wanted,
        Some(value @ (Value::Number(_) | Value::Bool(_))) => {
            serde_json::from_str::<Value>(wanted).is_ok_and(|wanted| wanted == *value)
        }
        _ => false,
    })
}

/// A page of the scope's records that pass `filters`, reading at most [`SCAN_PER_PAGE`].
fn scan(
    storage: &dyn Storage,
    (collection, scope): (&str, &str),
    mut after: String,
    limit: u32,
    filters: &[(String, String)],
) -> Result<RecordPage, ServerError> {
    let mut records = Vec::new();
    let mut scanned = 0;
    loop {
        let read = limit.min(SCAN_PER_PAGE - scanned);
        let batch = storage.records_in_scope(collection, scope, &after, read)?;
        scanned += batch.len() as u32;
        let mut rows = batch.into_iter().peekable();
        let exhausted = scanned < SCAN_PER_PAGE && rows.len() < read as usize;
        while let Some(row) = rows.next() {
            after.clone_from(&row.id);
            let fields = values(&row.fields_json)?;
            if matches(&fields, filters) {
                records.push(ListedValues {
                    id: row.id,
                    version: row.version,
                    fields,
                });
                if records.len() == limit as usize {
                    let last = exhausted && rows.peek().is_none();
                    return Ok(RecordPage {
                        records,
                        next: (!last).then_some(after),
                    });
                }
            }
        }
        if exhausted {
            return Ok(RecordPage {
                records,
                next: None,
            });
        }
        if scanned >= SCAN_PER_PAGE {
            return Ok(RecordPage {
                records,
                next: Some(after),
            });
        }
    }
}

fn audit(
    storage: &dyn Storage,
    caller: &Caller,
    action: &str,
    (collection, id): (&str, &str),
    scope: &str,
) -> Result<(), ServerError> {
    storage.audit_line(&NewAuditLine {
        user_id: caller.user_id,
        device_id: caller.device_id,
        action,
        collection,
        record_id: id,
        scope,
    })
}

#[cfg(test)]
mod tests;
