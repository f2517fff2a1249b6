//! The admin API (`/v1/admin/...`, JSON): users, devices, tokens, grants, group mappings and
//! the audit log, for an administrator: a person in the identity provider's administrators'
//! group, or a device token of a user with the `admin` role. The handlers are thin: each calls
//! the same function of `admin.rs` as the command line, which audits what it changes. The
//! OpenAPI document (`openapi.json`, served at `/v1/admin/openapi.json`) describes every route.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::admin::{self, By};
use crate::error::ServerError;
use crate::group_grants::{GroupGrant, GroupGrants, ScopePattern};
use crate::http::{authorize_admin, blocking};
use crate::storage::{Access, AuditQuery, DeviceInfo, Role, UserInfo};

/// The OpenAPI document of these routes.
pub const OPENAPI: &str = include_str!("admin_api/openapi.json");

/// Most audit lines one query returns.
const MAX_AUDIT_LINES: u32 = 10_000;

/// The admin routes.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/admin/openapi.json", get(openapi))
        .route("/v1/admin/users", get(list_users).post(create_user))
        .route("/v1/admin/users/{name}/grants", get(list_grants))
        .route(
            "/v1/admin/users/{name}/grants/{scope}",
            put(set_grant).delete(revoke_grant),
        )
        .route("/v1/admin/devices", get(list_devices).post(enroll_device))
        .route("/v1/admin/devices/{id}", delete(revoke_device))
        .route("/v1/admin/devices/{id}/tokens", post(issue_token))
        .route("/v1/admin/tokens/{id}", delete(revoke_token))
        .route("/v1/admin/actors/{actor}", delete(release_actor))
        .route(
            "/v1/admin/group-grants",
            get(list_group_grants).put(set_group_grants),
        )
        .route("/v1/admin/audit", get(audit))
        .route("/v1/admin/grants", get(all_grants))
        .route("/v1/admin/health", get(health))
        .route("/v1/admin/schema", get(schema_versions))
        .route(
            "/v1/admin/webhooks",
            get(webhooks::list).post(webhooks::add),
        )
        .route("/v1/admin/webhooks/{id}", delete(webhooks::remove))
        .route(
            "/v1/admin/records/{collection}/{id}/erase",
            post(erasure::erase),
        )
}

/// An administrator, authenticated: the extractor every admin route takes first.
pub struct Administrator(By);

impl FromRequestParts<AppState> for Administrator {
    type Rejection = ServerError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let person = authorize_admin(state, &parts.headers).await?;
        Ok(Administrator(By::User(person.user_id)))
    }
}

/// A JSON body, refused as `bad_request` naming what does not read.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ServerError> {
    body.map(|Json(value)| value)
        .map_err(|rejection| crate::http::unreadable(rejection.body_text()))
}

/// Path parameters, refused as `bad_request` (in JSON, like every other error) when they do
/// not read: a number out of range, a percent-encoding that is not UTF-8.
fn path<T>(params: Result<Path<T>, PathRejection>) -> Result<T, ServerError> {
    params
        .map(|Path(value)| value)
        .map_err(|rejection| crate::http::unreadable(rejection.body_text()))
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// A user as the API shows them.
#[derive(Serialize)]
struct UserView {
    id: i64,
    name: String,
    role: &'static str,
    signs_in_through_provider: bool,
    display_name: Option<String>,
    email: Option<String>,
    created_at: i64,
}

impl From<UserInfo> for UserView {
    fn from(user: UserInfo) -> Self {
        UserView {
            id: user.id,
            name: user.name,
            role: user.role.as_str(),
            signs_in_through_provider: user.signs_in,
            display_name: user.display_name,
            email: user.email,
            created_at: user.created_at,
        }
    }
}

async fn list_users(
    Administrator(_): Administrator,
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ServerError> {
    let storage = state.storage.clone();
    let users = blocking(move || storage.list_users()).await?;
    let users: Vec<UserView> = users.into_iter().map(UserView::from).collect();
    Ok(Json(serde_json::json!({ "users": users })))
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    service: bool,
}

async fn create_user(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    request: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ServerError> {
    let user = body(request)?;
    let role = match (user.admin, user.service) {
        (true, true) => {
            return Err(ServerError::BadRequest(
                "a service account is not an administrator".into(),
            ));
        }
        (true, false) => Role::Admin,
        (false, true) => Role::Service,
        (false, false) => Role::Member,
    };
    let storage = state.storage.clone();
    let id = blocking(move || admin::create_user(&*storage, by, &user.name, role)).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

async fn list_grants(
    Administrator(_): Administrator,
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ServerError> {
    let name = path(name)?;
    let storage = state.storage.clone();
    let grants = blocking(move || admin::grants_of(&*storage, &name)).await?;
    let grants: Vec<serde_json::Value> = grants
        .into_iter()
        .map(|grant| serde_json::json!({"scope": grant.scope, "access": grant.access.as_str()}))
        .collect();
    Ok(Json(serde_json::json!({ "grants": grants })))
}

#[derive(Deserialize)]
struct GrantBody {
    access: AccessName,
}

/// `read` or `write`, as JSON spells it.
#[derive(Deserialize, Serialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum AccessName {
    Read,
    Write,
}

impl From<AccessName> for Access {
    fn from(access: AccessName) -> Access {
        match access {
            AccessName::Read => Access::Read,
            AccessName::Write => Access::Write,
        }
    }
}

async fn set_grant(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    target: Result<Path<(String, String)>, PathRejection>,
    request: Result<Json<GrantBody>, JsonRejection>,
) -> Result<StatusCode, ServerError> {
    let (name, scope) = path(target)?;
    let access = body(request)?.access.into();
    let storage = state.storage.clone();
    blocking(move || admin::grant(&*storage, by, &name, &scope, access)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_grant(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    target: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ServerError> {
    let (name, scope) = path(target)?;
    let storage = state.storage.clone();
    blocking(move || admin::revoke_grant(&*storage, by, &name, &scope)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct DevicesQuery {
    user: Option<String>,
}

#[derive(Serialize)]
struct DeviceView {
    id: i64,
    user: String,
    name: String,
    actor: Option<String>,
    last_sync_at: Option<i64>,
    revoked: bool,
    schema_version: Option<u32>,
    pending_changes: Option<u64>,
    pending_reported_at: Option<i64>,
}

impl From<DeviceInfo> for DeviceView {
    fn from(device: DeviceInfo) -> Self {
        DeviceView {
            id: device.id,
            user: device.user,
            name: device.name,
            actor: device.actor,
            last_sync_at: device.last_sync_at,
            revoked: device.revoked,
            schema_version: device.schema_version,
            pending_changes: device.pending_changes,
            pending_reported_at: device.pending_reported_at,
        }
    }
}

async fn list_devices(
    Administrator(_): Administrator,
    State(state): State<AppState>,
    query: Result<Query<DevicesQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ServerError> {
    let Query(query) = query.map_err(|rejection| crate::http::unreadable(rejection.body_text()))?;
    let storage = state.storage.clone();
    let devices = blocking(move || admin::devices(&*storage, query.user.as_deref())).await?;
    let devices: Vec<DeviceView> = devices.into_iter().map(DeviceView::from).collect();
    Ok(Json(serde_json::json!({ "devices": devices })))
}

#[derive(Deserialize)]
struct NewDevice {
    user: String,
    name: String,
    expires_in_days: Option<u32>,
}

async fn enroll_device(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    request: Result<Json<NewDevice>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ServerError> {
    let device = body(request)?;
    let storage = state.storage.clone();
    let enrolled = blocking(move || {
        admin::enroll_device(
            &*storage,
            by,
            &device.user,
            &device.name,
            device.expires_in_days,
        )
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "device_id": enrolled.device_id,
            "token": enrolled.token,
            "token_id": enrolled.token_id,
        })),
    ))
}

async fn revoke_device(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<StatusCode, ServerError> {
    let id = path(id)?;
    let storage = state.storage.clone();
    blocking(move || admin::revoke_device(&*storage, by, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct NewToken {
    expires_in_days: Option<u32>,
}

async fn issue_token(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    request: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ServerError> {
    let id = path(id)?;
    // An empty body asks for a token that does not expire.
    let expires_in_days = match request {
        Err(JsonRejection::MissingJsonContentType(_)) => None,
        request => body(request)?.expires_in_days,
    };
    let storage = state.storage.clone();
    let (token, token_id) =
        blocking(move || admin::issue_token(&*storage, by, id, expires_in_days)).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "token": token, "token_id": token_id })),
    ))
}

async fn revoke_token(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ServerError> {
    let id = path(id)?;
    let storage = state.storage.clone();
    blocking(move || admin::revoke_token(&*storage, by, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn release_actor(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    actor: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ServerError> {
    let actor = path(actor)?;
    let storage = state.storage.clone();
    blocking(move || admin::release_actor(&*storage, by, &actor)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A group mapping as JSON spells it.
#[derive(Deserialize, Serialize)]
struct GroupGrantView {
    group: String,
    access: AccessName,
    /// A scope, or a prefix followed by `*`.
    scopes: String,
}

#[derive(Deserialize, Serialize)]
struct GroupGrantsView {
    grants: Vec<GroupGrantView>,
}

async fn list_group_grants(
    Administrator(_): Administrator,
    State(state): State<AppState>,
) -> Result<Json<GroupGrantsView>, ServerError> {
    let storage = state.storage.clone();
    let grants = blocking(move || admin::group_grants(&*storage)).await?;
    Ok(Json(GroupGrantsView {
        grants: grants
            .grants()
            .iter()
            .map(|grant| GroupGrantView {
                group: grant.group.clone(),
                access: match grant.access {
                    Access::Read => AccessName::Read,
                    Access::Write => AccessName::Write,
                },
                scopes: grant.scopes.to_string(),
            })
            .collect(),
    }))
}

async fn set_group_grants(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    request: Result<Json<GroupGrantsView>, JsonRejection>,
) -> Result<StatusCode, ServerError> {
    let view = body(request)?;
    let grants = view
        .grants
        .into_iter()
        .enumerate()
        .map(|(index, grant)| {
            let problem =
                |what: String| ServerError::BadRequest(format!("grants[{index}]: {what}"));
            admin::check_name("group name", &grant.group)
                .map_err(|err| problem(err.to_string()))?;
            Ok(GroupGrant {
                group: grant.group,
                access: grant.access.into(),
                scopes: ScopePattern::parse(&grant.scopes).map_err(problem)?,
            })
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    let grants = GroupGrants::from_grants(grants);
    let storage = state.storage.clone();
    blocking(move || admin::set_group_grants(&*storage, by, &grants)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AuditParams {
    user: Option<String>,
    record: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    limit: Option<u32>,
}

async fn audit(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ServerError> {
    let Query(params) =
        params.map_err(|rejection| crate::http::unreadable(rejection.body_text()))?;
    let query = AuditQuery {
        user: params.user,
        record_id: params.record,
        since: params.since,
        until: params.until,
        limit: params.limit.unwrap_or(100).clamp(1, MAX_AUDIT_LINES),
    };
    let storage = state.storage.clone();
    let entries = blocking(move || admin::audit(&*storage, by, &query)).await?;
    let entries: Vec<serde_json::Value> = entries
        .into_iter()
        .map(|entry| {
            serde_json::json!({
                "at": entry.at,
                "user": entry.user,
                "device_id": entry.device_id,
                "action": entry.action,
                "collection": entry.collection,
                "record_id": entry.record_id,
                "scope": entry.scope,
                "code": entry.code,
                "detail": entry.detail,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "entries": entries })))
}

/// Every user's stored grants, in one answer (a page showing them all would otherwise ask once
/// per user, against the administrator's request limit).
async fn all_grants(
    Administrator(_): Administrator,
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ServerError> {
    let storage = state.storage.clone();
    let grants = blocking(move || {
        let mut all = Vec::new();
        for user in storage.list_users()? {
            for grant in storage.grants(user.id)? {
                all.push(serde_json::json!({
                    "user": user.name,
                    "scope": grant.scope,
                    "access": grant.access.as_str(),
                }));
            }
        }
        Ok(all)
    })
    .await?;
    Ok(Json(serde_json::json!({ "grants": grants })))
}

/// The counters' growth in each interval of the last 24 hours (`metrics::history`).
async fn health(
    Administrator(_): Administrator,
    State(state): State<AppState>,
) -> Json<crate::metrics::history::HistoryView> {
    Json(state.metrics_history.view(&state.metrics))
}

/// Every schema version, oldest first: the last is in force.
async fn schema_versions(
    Administrator(_): Administrator,
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ServerError> {
    let storage = state.storage.clone();
    let history = blocking(move || storage.schema_history()).await?;
    let versions = history
        .iter()
        .map(|stored| {
            let schema = crate::schema::parse(stored)?;
            Ok(serde_json::json!({
                "version": stored.version,
                "set_at": stored.set_at,
                "schema": schema,
            }))
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    let current = history.last().map(|stored| stored.version);
    Ok(Json(
        serde_json::json!({ "current": current, "versions": versions }),
    ))
}

mod erasure;
#[cfg(test)]
mod tests;
mod webhooks;
