//! Webhook endpoints (docs/webhooks.md): create, list, update, enable/disable, delete,
//! rotate the secret, list attempts, redeliver. Every route needs the `admin` scope.
//! Secrets are shown once (at creation and rotation), never listed or logged.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiKey, JsonBody, Params};
use crate::model::webhook::{self, Backlog, Endpoint, EventType, Redeliver, Source};
use crate::model::{now_ms, rfc3339};
use crate::state::AppState;

/// Most entries in a filter list (`channels`, `types`, `senders`).
const MAX_FILTER: usize = 100;
/// Longest rotation overlap.
const MAX_OVERLAP_SECS: u64 = 7 * 86_400;
/// Default rotation overlap.
const DEFAULT_OVERLAP_SECS: u64 = 86_400;

/// An endpoint as the API shows it (never its secret).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDto {
    pub id: String,
    pub url: String,
    pub description: String,
    /// Event types it receives.
    pub events: Vec<String>,
    /// Only these channel instances (absent: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub senders: Option<Vec<String>>,
    pub enabled: bool,
    /// Why it is disabled (by an admin, or for failing too long).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Every attempt since then has failed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
    /// During a rotation: until when the previous secret also signs (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<String>,
    /// `api` or `config` (`[[webhooks]]` in herald.toml: only `enabled` can change).
    pub source: String,
    /// Events waiting to be delivered.
    pub pending: u64,
    /// Events given up (they can be redelivered).
    pub failed: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// A created endpoint, with its secret (shown this once).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub endpoint: WebhookDto,
    /// `whsec_…`: verify `webhook-signature` with it (docs/webhooks.md §3).
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateWebhook {
    /// 1–64 characters of `a-z 0-9 _ -`; generated (`wh_…`) when absent.
    pub id: Option<String>,
    /// `http://` or `https://`.
    pub url: String,
    /// Event types, or `["*"]` for all.
    pub events: Vec<String>,
    #[serde(default)]
    pub description: String,
    pub channels: Option<Vec<String>>,
    pub types: Option<Vec<i64>>,
    pub senders: Option<Vec<String>>,
    /// `whsec_` + base64 of 24–64 bytes; generated when absent.
    pub secret: Option<String>,
    /// Start disabled.
    pub enabled: Option<bool>,
}

/// Fields to change; a filter set to `null` is removed (all pass).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateWebhook {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    #[serde(default, with = "nullable")]
    #[schema(value_type = Option<Vec<String>>)]
    pub channels: Option<Option<Vec<String>>>,
    #[serde(default, with = "nullable")]
    #[schema(value_type = Option<Vec<i64>>)]
    pub types: Option<Option<Vec<i64>>>,
    #[serde(default, with = "nullable")]
    #[schema(value_type = Option<Vec<String>>)]
    pub senders: Option<Option<Vec<String>>>,
    /// Enable (clears the failure streak) or disable.
    pub enabled: Option<bool>,
    /// Why, when disabling (shown in the listing).
    pub disabled_reason: Option<String>,
}

/// `Option<Option<T>>`: absent → `None`, `null` → `Some(None)`.
mod nullable {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotateWebhook {
    /// How long the previous secret keeps signing beside the new one (`"24h"` default,
    /// at most 7 days; `"0s"` ends it at once).
    pub overlap: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret {
    pub secret: String,
    /// Until when the previous secret also signs (RFC 3339).
    pub previous_secret_until: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedeliverBody {
    /// One event (`evt_…`, the `webhook-id`).
    pub event: Option<String>,
    /// Or every event of the endpoint that happened in `[since, until)` (RFC 3339).
    pub since: Option<String>,
    pub until: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivered {
    /// Events queued again.
    pub redelivered: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptDto {
    pub id: i64,
    /// The event's `webhook-id`.
    pub event: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: String,
    pub latency_ms: i64,
    /// The HTTP status (absent: no response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// The first 256 characters of the response body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The event now: `pending`, `delivered` or `failed`.
    pub event_state: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptPage {
    pub items: Vec<AttemptDto>,
    /// Pass as `before` for older attempts (absent: no more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn dto(e: &Endpoint, backlog: Backlog) -> WebhookDto {
    let now = now_ms();
    WebhookDto {
        id: e.id.clone(),
        url: e.url.clone(),
        description: e.description.clone(),
        events: EventType::names_of(e.events)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        channels: e.channels.clone(),
        types: e.types.clone(),
        senders: e.senders.clone(),
        enabled: e.enabled,
        disabled_reason: e.disabled_reason.clone(),
        failing_since: e.failing_since_ms.map(rfc3339),
        previous_secret_until: e.old_until_ms.filter(|u| *u > now).map(rfc3339),
        source: e.source.as_str().into(),
        pending: backlog.pending,
        failed: backlog.failed,
        created_at: rfc3339(e.created_at_ms),
        updated_at: rfc3339(e.updated_at_ms),
    }
}

fn check_list<T>(field: &str, v: &Option<Vec<T>>, ok: impl Fn(&T) -> bool) -> Result<(), ApiError> {
    if let Some(l) = v {
        if l.is_empty() || l.len() > MAX_FILTER {
            return Err(ApiError::invalid(
                field,
                format!("must list 1 to {MAX_FILTER} entries, or be left out for all"),
            ));
        }
        if let Some(i) = l.iter().position(|x| !ok(x)) {
            return Err(ApiError::invalid(
                &format!("{field}[{i}]"),
                "must be 1 to 128 characters",
            ));
        }
    }
    Ok(())
}

#[allow(clippy::ptr_arg)] // called through `check_list::<String>`
fn short(s: &String) -> bool {
    !s.is_empty() && s.len() <= 128
}

/// Check the fields every endpoint has; the error names the field.
fn check(app: &AppState, e: &Endpoint) -> Result<(), ApiError> {
    webhook::check_url(&e.url, &app.settings.dispatch.webhooks.allow_hosts)
        .map_err(|m| ApiError::invalid("url", m))?;
    if e.description.len() > 1024 {
        return Err(ApiError::invalid("description", "longer than 1024 bytes"));
    }
    check_list("channels", &e.channels, short)?;
    check_list("types", &e.types, |_| true)?;
    check_list("senders", &e.senders, short)?;
    Ok(())
}

async fn found(app: &AppState, id: &str) -> Result<Endpoint, ApiError> {
    app.store
        .webhook_get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no webhook endpoint `{id}`")))
}

async fn shown(app: &AppState, id: &str) -> Result<WebhookDto, ApiError> {
    let e = found(app, id).await?;
    let backlog = app.store.webhook_backlog().await?;
    Ok(dto(&e, backlog.get(id).copied().unwrap_or_default()))
}

fn from_config(e: &Endpoint) -> Result<(), ApiError> {
    if e.source == Source::Config {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "webhook endpoint `{}` is defined in herald.toml ([[webhooks]]); change it there (only `enabled` can change here)",
                e.id
            ),
        ));
    }
    Ok(())
}

/// List webhook endpoints
#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    responses((status = 200, body = Vec<WebhookDto>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn list(
    State(app): State<AppState>,
    _key: ApiKey,
) -> Result<Json<Vec<WebhookDto>>, ApiError> {
    let eps = app.store.webhook_list().await?;
    let backlog: HashMap<String, Backlog> = app.store.webhook_backlog().await?;
    Ok(Json(
        eps.iter()
            .map(|e| dto(e, backlog.get(&e.id).copied().unwrap_or_default()))
            .collect(),
    ))
}

/// Create a webhook endpoint
///
/// The answer holds the secret, shown this once.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    request_body = CreateWebhook,
    responses(
        (status = 201, body = CreatedWebhook),
        (status = 400, body = ErrorBody), (status = 409, description = "The id is taken", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create(
    State(app): State<AppState>,
    _key: ApiKey,
    body: JsonBody<CreateWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let b = body.value;
    let id = match b.id {
        Some(id) => {
            webhook::check_id(&id).map_err(|m| ApiError::invalid("id", m))?;
            id
        }
        None => format!("wh_{}", uuid::Uuid::now_v7().simple()),
    };
    let events = EventType::bits_of(&b.events).map_err(|m| ApiError::invalid("events", m))?;
    let secret = match b.secret {
        Some(s) => {
            webhook::secret_key(&s).map_err(|m| ApiError::invalid("secret", m))?;
            crate::config::Secret::new(s)
        }
        None => webhook::new_secret(),
    };
    let e = Endpoint {
        id: id.clone(),
        url: b.url,
        description: b.description,
        events,
        channels: b.channels,
        types: b.types,
        senders: b.senders,
        secret: secret.clone(),
        old_secret: None,
        old_until_ms: None,
        enabled: b.enabled.unwrap_or(true),
        disabled_reason: (b.enabled == Some(false)).then(|| "created disabled".into()),
        failing_since_ms: None,
        source: Source::Api,
        created_at_ms: 0,
        updated_at_ms: 0,
    };
    check(&app, &e)?;
    if !app.store.webhook_create(e).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a webhook endpoint `{id}` exists"),
        )
        .with_field("id"));
    }
    if b.enabled == Some(false) {
        app.store
            .webhook_set_enabled(&id, false, Some("created disabled".into()))
            .await?;
    }
    app.dispatcher.webhooks_changed();
    tracing::info!(endpoint = %id, "webhook endpoint created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            endpoint: shown(&app, &id).await?,
            secret: secret.expose().to_owned(),
        }),
    ))
}

/// One webhook endpoint
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 200, body = WebhookDto), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn get(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<WebhookDto>, ApiError> {
    Ok(Json(shown(&app, &id).await?))
}

/// Change a webhook endpoint
///
/// Change its URL, events or filters, or enable/disable it. Endpoints from herald.toml
/// only take `enabled` (and `disabledReason`).
#[utoipa::path(
    patch,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path)),
    request_body = UpdateWebhook,
    responses(
        (status = 200, body = WebhookDto), (status = 404, body = ErrorBody),
        (status = 409, description = "Defined in herald.toml", body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn update(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
    body: JsonBody<UpdateWebhook>,
) -> Result<Json<WebhookDto>, ApiError> {
    let b = body.value;
    let mut e = found(&app, &id).await?;
    let changes_fields = b.url.is_some()
        || b.events.is_some()
        || b.description.is_some()
        || b.channels.is_some()
        || b.types.is_some()
        || b.senders.is_some();
    if changes_fields {
        from_config(&e)?;
        if let Some(u) = b.url {
            e.url = u;
        }
        if let Some(ev) = &b.events {
            e.events = EventType::bits_of(ev).map_err(|m| ApiError::invalid("events", m))?;
        }
        if let Some(d) = b.description {
            e.description = d;
        }
        if let Some(c) = b.channels {
            e.channels = c;
        }
        if let Some(t) = b.types {
            e.types = t;
        }
        if let Some(s) = b.senders {
            e.senders = s;
        }
        check(&app, &e)?;
    }
    if b.disabled_reason.as_ref().is_some_and(|r| r.len() > 512) {
        return Err(ApiError::invalid("disabledReason", "longer than 512 bytes"));
    }
    if b.disabled_reason.is_some() && b.enabled != Some(false) {
        return Err(ApiError::invalid(
            "disabledReason",
            "only with \"enabled\": false",
        ));
    }
    if changes_fields && !app.store.webhook_update(e).await? {
        return Err(ApiError::not_found(format!("no webhook endpoint `{id}`")));
    }
    if let Some(enabled) = b.enabled {
        let reason = b
            .disabled_reason
            .unwrap_or_else(|| "disabled through the API".into());
        app.store
            .webhook_set_enabled(&id, enabled, (!enabled).then_some(reason))
            .await?;
        tracing::info!(endpoint = %id, enabled, "webhook endpoint {}", if enabled { "enabled" } else { "disabled" });
    }
    app.dispatcher.webhooks_changed();
    Ok(Json(shown(&app, &id).await?))
}

/// Delete a webhook endpoint
///
/// Its undelivered events go with it.
#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"), (status = 404, body = ErrorBody),
        (status = 409, description = "Defined in herald.toml", body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn delete(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    from_config(&found(&app, &id).await?)?;
    if !app.store.webhook_delete(&id).await? {
        return Err(ApiError::not_found(format!("no webhook endpoint `{id}`")));
    }
    app.dispatcher.webhooks_changed();
    tracing::info!(endpoint = %id, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate an endpoint's secret
///
/// A new secret signs from now on; the previous one signs too (a second signature in
/// `webhook-signature`) until the overlap ends, so receivers can switch without losing
/// a request.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/rotate",
    tag = "webhooks",
    params(("id" = String, Path)),
    request_body(content = Option<RotateWebhook>),
    responses(
        (status = 200, body = RotatedSecret), (status = 404, body = ErrorBody),
        (status = 409, description = "Defined in herald.toml", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn rotate(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<RotatedSecret>, ApiError> {
    // The body is optional: `POST …/rotate` alone rotates with the default overlap.
    let b: RotateWebhook = if body.iter().all(u8::is_ascii_whitespace) {
        RotateWebhook::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid body: {e}"),
            )
        })?
    };
    let overlap = match b.overlap {
        None => std::time::Duration::from_secs(DEFAULT_OVERLAP_SECS),
        Some(o) => humantime::parse_duration(o.trim())
            .ok()
            .filter(|d| d.as_secs() <= MAX_OVERLAP_SECS)
            .ok_or_else(|| {
                ApiError::invalid("overlap", "a duration like \"24h\", at most 7 days")
            })?,
    };
    from_config(&found(&app, &id).await?)?;
    let secret = webhook::new_secret();
    let until = now_ms() + overlap.as_millis() as i64;
    if !app.store.webhook_rotate(&id, secret.clone(), until).await? {
        return Err(ApiError::not_found(format!("no webhook endpoint `{id}`")));
    }
    app.dispatcher.webhooks_changed();
    tracing::info!(endpoint = %id, "webhook secret rotated");
    Ok(Json(RotatedSecret {
        secret: secret.expose().to_owned(),
        previous_secret_until: rfc3339(until),
    }))
}

/// An endpoint's attempts
///
/// Newest first: when, how long, the HTTP status and the first bytes of the answer.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/attempts",
    tag = "webhooks",
    params(
        ("id" = String, Path),
        ("before" = Option<String>, Query, description = "Cursor: attempts older than it (`nextCursor`)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Default 50"),
    ),
    responses((status = 200, body = AttemptPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn attempts(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<AttemptPage>, ApiError> {
    let limit = params.number(&["limit"], 50, 1000)?;
    let before = match params.0.get("before") {
        None => None,
        Some(b) => Some(
            b.trim()
                .parse::<i64>()
                .ok()
                .filter(|b| *b > 0)
                .ok_or_else(|| ApiError::bad_param("before", "not a cursor (take `nextCursor`)"))?,
        ),
    };
    found(&app, &id).await?;
    let items = app.store.webhook_attempts(&id, before, limit).await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|a| a.id.to_string()))
        .flatten();
    Ok(Json(AttemptPage {
        items: items
            .into_iter()
            .map(|a| AttemptDto {
                id: a.id,
                event: webhook::event_id(a.event_row),
                kind: a.kind,
                at: rfc3339(a.at_ms),
                latency_ms: a.latency_ms,
                code: a.code,
                response: a.response,
                error: a.error,
                event_state: match a.event_state {
                    webhook::DELIVERED => "delivered",
                    webhook::FAILED => "failed",
                    _ => "pending",
                }
                .into(),
            })
            .collect(),
        next_cursor,
    }))
}

fn time(field: &str, v: &str) -> Result<i64, ApiError> {
    time::OffsetDateTime::parse(v.trim(), &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| ApiError::invalid(field, "not an RFC 3339 time like 2026-01-02T03:04:05Z"))
}

/// Redeliver events
///
/// One event (`{"event": "evt_…"}`) or every event that happened in a time range
/// (`{"since", "until"}`), delivered or not: they are sent again, with the same
/// `webhook-id`, in order.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/redeliver",
    tag = "webhooks",
    params(("id" = String, Path)),
    request_body = RedeliverBody,
    responses(
        (status = 202, body = Redelivered), (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn redeliver(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
    body: JsonBody<RedeliverBody>,
) -> Result<(StatusCode, Json<Redelivered>), ApiError> {
    let b = body.value;
    let what = match (b.event, b.since, b.until) {
        (Some(ev), None, None) => Redeliver::Event(webhook::row_of(&ev).ok_or_else(|| {
            ApiError::invalid("event", "not an event id (`evt_…`, the webhook-id header)")
        })?),
        (None, Some(s), u) => {
            let since_ms = time("since", &s)?;
            let until_ms = match u {
                Some(u) => time("until", &u)?,
                None => now_ms() + 1,
            };
            if until_ms <= since_ms {
                return Err(ApiError::invalid("until", "must be after `since`"));
            }
            Redeliver::Range { since_ms, until_ms }
        }
        (None, None, Some(_)) => {
            return Err(ApiError::invalid("since", "`until` needs `since`"));
        }
        _ => {
            return Err(ApiError::invalid(
                "event",
                "give `event`, or `since` (and optionally `until`), not both",
            ))
        }
    };
    found(&app, &id).await?;
    let n = app.store.webhook_redeliver(&id, what).await?;
    if n == 0 {
        if let Redeliver::Event(_) = what {
            return Err(ApiError::not_found(
                "no such event at this endpoint (or it is being sent right now)",
            ));
        }
    }
    app.dispatcher.wake_webhooks();
    Ok((StatusCode::ACCEPTED, Json(Redelivered { redelivered: n })))
}
