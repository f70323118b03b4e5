//! Sending, listing, reading and deleting messages.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};

use super::dto::*;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiKey, JsonBody, Params};
use crate::dispatch::plan::{Accepted, SendInput, MAX_ID_LEN};
use crate::model::{Idempotency, MessageFilter, PageRequest, StatusFilter};
use crate::state::AppState;
use crate::store::LIST_DELIVERIES_PER_MESSAGE;

const MAX_PAGE_SIZE: u32 = 1000;

impl From<SendRequest> for SendInput {
    fn from(r: SendRequest) -> Self {
        SendInput {
            title: r.title,
            content: r.content,
            msg_type: r.msg_type,
            receivers: r
                .receivers
                .map(|list| list.into_iter().map(UserId::into_string).collect()),
            channels: r.channels,
            template: r.template,
            data: r.data,
            sender: r.sender,
            routing: r.routing,
            send_at: r.send_at,
            expires_at: r.expires_at,
        }
    }
}

/// Send a message
///
/// Stores the message and one delivery per receiver and channel, commits, then hands the
/// deliveries to their channels. `202` means the message is durable.
#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "messages",
    request_body = SendRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body again → same id, nothing sent twice (kept 24 h)")),
    responses(
        (status = 202, description = "Accepted and stored", body = SendResponse),
        (status = 400, description = "Invalid JSON or header", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The API key has neither the `send` nor the `admin` scope", body = ErrorBody),
        (status = 429, description = "Over the API key's send rate limit; nothing stored", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the key may send again"))),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 422, description = "A field is invalid (named in `error`/`field`)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn send(
    State(app): State<AppState>,
    _key: ApiKey,
    headers: HeaderMap,
    body: JsonBody<SendRequest>,
) -> Result<Response, ApiError> {
    let idem = idempotency(&headers, &body.raw)?;
    accept(&app, body.value.into(), idem).await
}

pub fn idempotency(
    headers: &HeaderMap,
    raw: &serde_json::Value,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::bad_param(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })?;
    let hash = Sha256::digest(raw.to_string().as_bytes());
    Ok(Some(Idempotency {
        key: key.to_owned(),
        request_hash: hash.iter().map(|b| format!("{b:02x}")).collect(),
    }))
}

/// Hand a parsed send to the planner: `202 {"id","deliveries"}` once it is stored.
pub async fn accept(
    app: &AppState,
    req: SendInput,
    idem: Option<Idempotency>,
) -> Result<Response, ApiError> {
    let Accepted { id, deliveries } = app.planner.accept(req, idem).await?;
    Ok((StatusCode::ACCEPTED, Json(SendResponse { id, deliveries })).into_response())
}

pub fn page_request(params: &Params) -> Result<PageRequest, ApiError> {
    Ok(PageRequest {
        page: params.number(&["page", "pageNum"], 1, u32::MAX / 2)?,
        size: params.number(&["size", "pageSize"], 20, MAX_PAGE_SIZE)?,
    })
}

/// List messages
///
/// Newest first, with per-channel delivery status. Filters combine with AND; `status`,
/// `receiver` and `channel` match messages having at least one such delivery.
#[utoipa::path(
    get,
    path = "/api/v1/messages",
    tag = "messages",
    params(
        ("page" = Option<u32>, Query, minimum = 1, description = "1-based page (default 1)"),
        ("size" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1–1000 (default 20)"),
        ("status" = Option<String>, Query, description = "pending | sent | delivered | read | failed | undelivered"),
        ("receiver" = Option<String>, Query),
        ("sender" = Option<String>, Query),
        ("type" = Option<i64>, Query),
        ("channel" = Option<String>, Query),
    ),
    responses(
        (status = 200, body = MessagePage),
        (status = 400, description = "A query parameter is invalid", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(app): State<AppState>,
    _key: ApiKey,
    params: Params,
) -> Result<Json<MessagePage>, ApiError> {
    list_messages(&app, &params).await.map(Json)
}

pub async fn list_messages(app: &AppState, params: &Params) -> Result<MessagePage, ApiError> {
    let page = page_request(params)?;
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        match params.0.get(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) if v.len() > MAX_ID_LEN => Err(ApiError::bad_param(name, "too long")),
            Some(v) => Ok(Some(v.clone())),
        }
    };
    let status = match text("status")? {
        None => None,
        Some(s) => Some(s.parse::<StatusFilter>().map_err(|()| {
            ApiError::bad_param(
                "status",
                "expected pending, sent, delivered, read, failed or undelivered",
            )
        })?),
    };
    let msg_type = match text("type")? {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| ApiError::bad_param("type", "expected an integer"))?,
        ),
    };
    let filter = MessageFilter {
        status,
        receiver: text("receiver")?,
        sender: text("sender")?,
        msg_type,
        channel: text("channel")?,
    };
    let result = app
        .store
        .list_messages(&filter, page, LIST_DELIVERIES_PER_MESSAGE)
        .await?;
    Ok(MessagePage {
        items: result.items.iter().map(MessageDto::from).collect(),
        page: page.page,
        size: page.size,
        total: result.total,
    })
}

/// Get one message with all its deliveries
#[utoipa::path(
    get,
    path = "/api/v1/messages/{id}",
    tag = "messages",
    params(("id" = String, Path)),
    responses((status = 200, body = MessageDto), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn get(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<MessageDto>, ApiError> {
    match app.store.get_message(&id).await? {
        Some(m) => Ok(Json(MessageDto::from(&m))),
        None => Err(ApiError::not_found(format!("message `{id}` not found"))),
    }
}

/// Delete a message
///
/// The message and its deliveries are removed; it is never delivered afterwards.
#[utoipa::path(
    delete,
    path = "/api/v1/messages/{id}",
    tag = "messages",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn delete(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_message(&app, &id).await
}

pub async fn delete_message(app: &AppState, id: &str) -> Result<StatusCode, ApiError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ApiError::not_found(format!("message `{id}` not found")));
    }
    // Tombstone first: frames already queued for sessions are dropped from now on.
    app.dispatcher.mark_deleted(id);
    if app.store.delete_message(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("message `{id}` not found")))
    }
}
