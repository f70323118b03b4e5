//! Recipient records: the addresses non-WebSocket channels send to.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::dto::{RecipientBody, RecipientDto};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiKey, JsonBody};
use crate::model::{rfc3339, Preferences, Recipient};
use crate::state::AppState;

fn dto(r: Recipient, devices: &[crate::model::DeviceRecord]) -> RecipientDto {
    RecipientDto {
        user_id: r.user_id,
        name: r.name,
        email: r.email,
        phone: r.phone,
        wechat_open_id: r.wechat_open_id,
        devices: devices.iter().map(super::dto::DeviceDto::from).collect(),
        preferences: r.preferences,
        updated_at: rfc3339(r.updated_at_ms),
    }
}

/// Check the address fields and name of a recipient body; the error names the field.
fn validate_addresses(b: &RecipientBody) -> Result<(), ApiError> {
    if b.email.as_deref().is_some_and(|e| !valid_email(e)) {
        return Err(ApiError::invalid("email", "not a valid e-mail address"));
    }
    if b.phone.as_deref().is_some_and(|p| !valid_e164(p)) {
        return Err(ApiError::invalid(
            "phone",
            "expected E.164 form, e.g. +8613800000000",
        ));
    }
    if b.wechat_open_id
        .as_ref()
        .is_some_and(|w| w.is_empty() || w.len() > 128)
    {
        return Err(ApiError::invalid(
            "wechatOpenId",
            "must be 1 to 128 characters",
        ));
    }
    if b.name.as_ref().is_some_and(|n| n.len() > 256) {
        return Err(ApiError::invalid("name", "longer than 256 bytes"));
    }
    Ok(())
}

/// Check a `preferences` object from a request; the error names the offending field.
fn validate_preferences(p: &serde_json::Map<String, serde_json::Value>) -> Result<(), ApiError> {
    for (key, value) in p {
        let field = format!("preferences.{key}");
        let Some(items) = value.as_array() else {
            if Preferences::KEYS.contains(&key.as_str()) {
                return Err(ApiError::invalid(&field, "must be an array"));
            }
            return Err(ApiError::invalid(
                &field,
                format!(
                    "unknown preference (known: {})",
                    Preferences::KEYS.join(", ")
                ),
            ));
        };
        match key.as_str() {
            "optOutChannels" => {
                for (i, v) in items.iter().enumerate() {
                    if !v.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 128) {
                        return Err(ApiError::invalid(
                            &format!("{field}[{i}]"),
                            "must be a channel instance or family name",
                        ));
                    }
                }
            }
            "optOutTypes" => {
                for (i, v) in items.iter().enumerate() {
                    if v.as_i64().is_none() {
                        return Err(ApiError::invalid(
                            &format!("{field}[{i}]"),
                            "must be an integer message type",
                        ));
                    }
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    &field,
                    format!(
                        "unknown preference (known: {})",
                        Preferences::KEYS.join(", ")
                    ),
                ))
            }
        }
    }
    Ok(())
}

fn check_user(user_id: &str) -> Result<(), ApiError> {
    if user_id.is_empty() || user_id.len() > 128 || user_id.chars().any(char::is_control) {
        return Err(ApiError::invalid("userId", "must be 1 to 128 characters"));
    }
    Ok(())
}

/// A plausible e-mail address: `local@domain.tld`, no spaces, at most 254 characters.
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == ',')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
}

/// E.164: `+`, a non-zero digit, then 6 to 14 more digits.
pub fn valid_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Create or replace a recipient
#[utoipa::path(
    put,
    path = "/api/v1/recipients/{userId}",
    tag = "recipients",
    params(("userId" = String, Path)),
    request_body = RecipientBody,
    responses(
        (status = 200, description = "Replaced", body = RecipientDto),
        (status = 201, description = "Created", body = RecipientDto),
        (status = 400, description = "Empty or invalid JSON body", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn put(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(user_id): Path<String>,
    body: JsonBody<RecipientBody>,
) -> Result<(StatusCode, Json<RecipientDto>), ApiError> {
    check_user(&user_id)?;
    let b = body.value;
    validate_addresses(&b)?;
    if let Some(p) = &b.preferences {
        validate_preferences(p)?;
        if !p.is_empty() {
            // Before the write: a send racing with it must already look receivers up.
            app.planner.note_preferences();
        }
    }
    let mut new_devices = Vec::new();
    for (i, d) in b.devices.iter().flatten().enumerate() {
        new_devices.push(super::devices::validate(
            &user_id,
            d,
            &format!("devices[{i}]."),
        )?);
    }
    let rec = Recipient {
        user_id: user_id.clone(),
        name: b.name,
        email: b.email,
        phone: b.phone,
        wechat_open_id: b.wechat_open_id,
        devices: serde_json::Value::Array(Vec::new()),
        preferences: serde_json::Value::Object(b.preferences.unwrap_or_default()),
        updated_at_ms: 0,
    };
    let created = app.store.put_recipient(rec).await?;
    for d in new_devices {
        super::devices::register_device(&app, d, "admin").await?;
    }
    let devices = app.store.list_devices(&user_id).await?;
    let stored = app
        .store
        .get_recipient(&user_id)
        .await?
        .ok_or_else(|| ApiError::unavailable("recipient vanished during the write; retry"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(dto(stored, &devices))))
}

/// Get a recipient
#[utoipa::path(
    get,
    path = "/api/v1/recipients/{userId}",
    tag = "recipients",
    params(("userId" = String, Path)),
    responses((status = 200, body = RecipientDto), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn get(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(user_id): Path<String>,
) -> Result<Json<RecipientDto>, ApiError> {
    let devices = app.store.list_devices(&user_id).await?;
    match app.store.get_recipient(&user_id).await? {
        Some(r) => Ok(Json(dto(r, &devices))),
        // Devices registered by the user themselves, without a record yet.
        None if !devices.is_empty() => Ok(Json(dto(
            Recipient {
                user_id: user_id.clone(),
                ..Recipient::default()
            },
            &devices,
        ))),
        None => Err(ApiError::not_found(format!(
            "recipient `{user_id}` not found"
        ))),
    }
}

/// Delete a recipient
#[utoipa::path(
    delete,
    path = "/api/v1/recipients/{userId}",
    tag = "recipients",
    params(("userId" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn delete(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if app.store.delete_recipient(&user_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "recipient `{user_id}` not found"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_syntax() {
        for ok in ["a@example.com", "first.last+tag@sub.example.cn", "x@b.co"] {
            assert!(valid_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@",
            "@b.com",
            "a@b",
            "a b@c.com",
            "a@.com",
            "a@b..com",
            "a@b.com.",
            "<a@b.com>",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn e164() {
        for ok in ["+8613800000000", "+14155552671", "+4420794600"] {
            assert!(valid_e164(ok), "{ok}");
        }
        for bad in [
            "13800000000",
            "+0123456789",
            "+1",
            "+1234567890123456",
            "+86 138",
            "+86138a0000000",
        ] {
            assert!(!valid_e164(bad), "{bad}");
        }
    }
}
