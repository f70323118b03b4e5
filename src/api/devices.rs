//! Push devices: a user registers their own with their user token; admins see and manage
//! them through the recipients API.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::dto::{DeviceBody, DeviceDto};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiKey, JsonBody, User};
use crate::model::{DeviceRecord, NewDevice};
use crate::state::AppState;

/// The platforms Herald's push channels serve.
pub const PLATFORMS: [&str; 3] = ["fcm", "apns", "webpush"];
const MAX_TOKEN_LEN: usize = 4096;

fn b64url_len(s: &str) -> Option<usize> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
        .map(|b| b.len())
}

/// Validate a registration; `field` prefixes error fields (`devices[0].` for recipients).
pub fn validate(user_id: &str, b: &DeviceBody, field: &str) -> Result<NewDevice, ApiError> {
    let f = |name: &str| format!("{field}{name}");
    if !PLATFORMS.contains(&b.platform.as_str()) {
        return Err(ApiError::invalid(
            &f("platform"),
            "expected `fcm`, `apns` or `webpush`",
        ));
    }
    if b.name.as_ref().is_some_and(|n| n.len() > 128) {
        return Err(ApiError::invalid(&f("name"), "longer than 128 bytes"));
    }
    let token = match (b.platform.as_str(), &b.token, &b.subscription) {
        ("webpush", None, Some(sub)) => {
            let endpoint = sub["endpoint"].as_str().unwrap_or("");
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
                || endpoint.len() > 2048
            {
                return Err(ApiError::invalid(
                    &f("subscription.endpoint"),
                    "must be the subscription's http(s) URL",
                ));
            }
            if sub["keys"]["p256dh"].as_str().and_then(b64url_len) != Some(65) {
                return Err(ApiError::invalid(
                    &f("subscription.keys.p256dh"),
                    "must be a base64url P-256 public key (65 bytes)",
                ));
            }
            if sub["keys"]["auth"].as_str().and_then(b64url_len) != Some(16) {
                return Err(ApiError::invalid(
                    &f("subscription.keys.auth"),
                    "must be a base64url 16-byte secret",
                ));
            }
            // Store only what is needed, in a stable form (idempotent registration).
            serde_json::json!({
                "endpoint": endpoint,
                "keys": {"p256dh": sub["keys"]["p256dh"], "auth": sub["keys"]["auth"]},
            })
            .to_string()
        }
        ("webpush", _, _) => {
            return Err(ApiError::invalid(
                &f("subscription"),
                "a webpush device needs `subscription` (and no `token`)",
            ))
        }
        (_, Some(t), None) => {
            if t.is_empty()
                || t.len() > MAX_TOKEN_LEN
                || t.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ApiError::invalid(
                    &f("token"),
                    format!("must be 1 to {MAX_TOKEN_LEN} characters without spaces"),
                ));
            }
            if b.platform == "apns" && !t.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(ApiError::invalid(&f("token"), "an APNs token is hex"));
            }
            t.clone()
        }
        _ => {
            return Err(ApiError::invalid(
                &f("token"),
                "an fcm or apns device needs `token` (and no `subscription`)",
            ))
        }
    };
    // The platform's channel crate checks what only it can (a Web Push `p256dh` must be a
    // P-256 point), through the SDK's `DeviceCheck`s: no channel internals in the core.
    herald_channel::check_device(&b.platform, &token)
        .map_err(|e| ApiError::invalid(&f(e.field), e.message))?;
    Ok(NewDevice {
        user_id: user_id.to_owned(),
        platform: b.platform.clone(),
        token,
        name: b.name.clone(),
    })
}

/// Store a validated registration. A token that another user had registered *moves* to
/// `new.user_id` (the store keeps one row per platform and token): that is what a push
/// token means, one app install, and the install now belongs to whoever registered it last
/// (a phone that changed hands, a new login on a shared tablet); keeping it with both
/// users would show the previous owner's notifications on a device they no longer hold.
/// A move is logged (device id and user ids, never the token): only someone who holds the
/// token can move it, and the previous owner's app takes it back by registering it again.
pub async fn register_device(
    app: &AppState,
    new: NewDevice,
    via: &'static str,
) -> Result<(DeviceRecord, bool), ApiError> {
    let r = app.store.register_device(new).await?;
    if let Some(from_user) = &r.previous_owner {
        let rec = &r.device;
        tracing::info!(device = rec.id, platform = %rec.platform, %from_user, to_user = %rec.user_id, via,
            "push device registered by another user: moved to this user; its previous owner \
             gets no pushes on it until their app registers it again");
    }
    Ok((r.device, r.created))
}

/// Register one of my devices
///
/// Idempotent: registering the same token again returns the same device (`200`),
/// reactivated if a provider had reported it gone.
///
/// **A token registered by another user moves to this one** (`200`, the same device id):
/// a push token stands for one app install, which now belongs to whoever registered it
/// last (a device that changed hands, another login on a shared device). The previous
/// owner no longer sees it in their list and gets no pushes on it; their app takes it back
/// by registering the token again (apps should register at every start and login). Only a
/// holder of the token can move it, and every move is logged with the device id and the new
/// owner's user id (never the token).
#[utoipa::path(
    post,
    path = "/api/v1/me/devices",
    tag = "devices",
    request_body = DeviceBody,
    responses(
        (status = 201, description = "Registered", body = DeviceDto),
        (status = 200, description = "Already registered (by this user, or by another user: then moved to this one)", body = DeviceDto),
        (status = 401, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("user_token" = []))
)]
pub async fn register(
    State(app): State<AppState>,
    User(user): User,
    body: JsonBody<DeviceBody>,
) -> Result<(StatusCode, Json<DeviceDto>), ApiError> {
    let new = validate(&user.user_id, &body.value, "")?;
    let (rec, created) = register_device(&app, new, "user").await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(DeviceDto::from(&rec))))
}

/// My devices
#[utoipa::path(
    get,
    path = "/api/v1/me/devices",
    tag = "devices",
    responses((status = 200, body = Vec<DeviceDto>), (status = 401, body = ErrorBody)),
    security(("user_token" = []))
)]
pub async fn list(
    State(app): State<AppState>,
    User(user): User,
) -> Result<Json<Vec<DeviceDto>>, ApiError> {
    let devices = app.store.list_devices(&user.user_id).await?;
    Ok(Json(devices.iter().map(DeviceDto::from).collect()))
}

/// One of my devices
#[utoipa::path(
    get,
    path = "/api/v1/me/devices/{id}",
    tag = "devices",
    params(("id" = i64, Path)),
    responses((status = 200, body = DeviceDto), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("user_token" = []))
)]
pub async fn get(
    State(app): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
) -> Result<Json<DeviceDto>, ApiError> {
    let id = parse_id(&id)?;
    app.store
        .list_devices(&user.user_id)
        .await?
        .iter()
        .find(|d| d.id == id)
        .map(|d| Json(DeviceDto::from(d)))
        .ok_or_else(|| ApiError::not_found(format!("device {id} not found")))
}

/// Remove one of my devices
#[utoipa::path(
    delete,
    path = "/api/v1/me/devices/{id}",
    tag = "devices",
    params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("user_token" = []))
)]
pub async fn delete(
    State(app): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove(&app, &user.user_id, &id).await
}

/// Remove a recipient's device (admin)
#[utoipa::path(
    delete,
    path = "/api/v1/recipients/{userId}/devices/{id}",
    tag = "recipients",
    params(("userId" = String, Path), ("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn admin_delete(
    State(app): State<AppState>,
    _key: ApiKey,
    Path((user_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    remove(&app, &user_id, &id).await
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .map_err(|_| ApiError::not_found(format!("device `{id}` not found")))
}

async fn remove(app: &AppState, user_id: &str, id: &str) -> Result<StatusCode, ApiError> {
    let id = parse_id(id)?;
    if app.store.delete_device(user_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("device {id} not found")))
    }
}
