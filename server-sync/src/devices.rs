//! `/v1/devices`: under an identity provider, a device enrols itself with its user's access
//! token (no administrator involved), and a person lists and revokes their own devices. Both
//! changes are audited as an administrator's are, by the person.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use fieldsync_record::protocol::{DeviceList, DeviceSummary, EnrollRequest, EnrolledDevice};

use crate::AppState;
use crate::admin::check_name;
use crate::error::ServerError;
use crate::http::{authorize_person, blocking};

/// Most devices one person may have that are not revoked: enough for every phone, tablet and
/// laptop they use, few enough that a stolen token cannot fill the table.
pub const MAX_LIVE_DEVICES_PER_USER: usize = 50;

/// Enrols the caller's device: `POST /v1/devices`.
pub async fn enroll(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<EnrolledDevice>), ServerError> {
    let person = authorize_person(&state, &headers).await?;
    if person.device_id.is_some() {
        return Err(ServerError::Forbidden(
            "a device enrols itself with an identity provider's token, not a device token".into(),
        ));
    }
    let Json(request) =
        body.map_err(|_| ServerError::BadRequest("the body is not an enrolment request".into()))?;
    check_name("device name", &request.name)?;
    let storage = state.storage.clone();
    let device_id = blocking(move || {
        let live = storage
            .devices_of(person.user_id)?
            .iter()
            .filter(|device| !device.revoked)
            .count();
        if live >= MAX_LIVE_DEVICES_PER_USER {
            return Err(ServerError::Forbidden(format!(
                "a person may have {MAX_LIVE_DEVICES_PER_USER} devices; revoke one first"
            )));
        }
        let device_id = storage.create_device(person.user_id, &request.name)?;
        storage.audit_admin(
            person.user_id,
            "enroll-device (self)",
            &device_id.to_string(),
        )?;
        Ok(device_id)
    })
    .await?;
    tracing::info!(device_id, user_id = person.user_id, "device enrolled");
    Ok((StatusCode::CREATED, Json(EnrolledDevice { device_id })))
}

/// The caller's devices: `GET /v1/devices`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<DeviceList>, ServerError> {
    let person = authorize_person(&state, &headers).await?;
    let storage = state.storage.clone();
    let devices = blocking(move || storage.devices_of(person.user_id)).await?;
    Ok(Json(DeviceList {
        devices: devices
            .into_iter()
            .map(|device| DeviceSummary {
                id: device.id,
                name: device.name,
                last_sync_at: device.last_sync_at,
                revoked: device.revoked,
            })
            .collect(),
    }))
}

/// Revokes one of the caller's devices: `DELETE /v1/devices/{id}`. A device of someone else
/// is not found, as one that does not exist.
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(device_id): Path<i64>,
) -> Result<StatusCode, ServerError> {
    let person = authorize_person(&state, &headers).await?;
    let storage = state.storage.clone();
    blocking(move || {
        let owned = storage
            .device(device_id)?
            .is_some_and(|device| device.user_id == person.user_id);
        if !owned {
            return Err(ServerError::NotFound(format!("no device {device_id}")));
        }
        if storage.revoke_device(device_id)? {
            storage.audit_admin(
                person.user_id,
                "revoke-device (self)",
                &device_id.to_string(),
            )?;
        }
        Ok(())
    })
    .await?;
    tracing::info!(
        device_id,
        user_id = person.user_id,
        "device revoked by its user"
    );
    Ok(StatusCode::NO_CONTENT)
}
