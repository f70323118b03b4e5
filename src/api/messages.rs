//! Sending, listing, reading and deleting messages.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_channel::{AddressKind, MessageView};
use sha2::{Digest, Sha256};

use super::dto::*;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiKey, JsonBody, Params};
use crate::dispatch::Planned;
use crate::model::{
    new_message_id, now_ms, rfc3339, Idempotency, Inserted, MessageFilter, NewDelivery, NewMessage,
    PageRequest, Recipient, Status, StatusFilter,
};
use crate::state::AppState;
use crate::store::LIST_DELIVERIES_PER_MESSAGE;
use crate::ws::WEBSOCKET;

/// Most receivers one request may name.
pub const MAX_RECEIVERS: usize = 10_000;
const MAX_ID_LEN: usize = 128;
const MAX_TITLE_LEN: usize = 1024;
const MAX_PAGE_SIZE: u32 = 1000;

/// A send after parsing, shared by `/api/v1/messages` and the seed route.
pub struct Send {
    pub title: Option<String>,
    pub content: Option<String>,
    pub msg_type: i64,
    pub receivers: Option<Vec<UserId>>,
    pub channels: Option<Vec<String>>,
    pub template: Option<String>,
    pub sender: Option<String>,
}

impl From<SendRequest> for Send {
    fn from(r: SendRequest) -> Self {
        Send {
            title: r.title,
            content: r.content,
            msg_type: r.msg_type,
            receivers: r.receivers,
            channels: r.channels,
            template: r.template,
            sender: r.sender,
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

/// Validate, store (durably) and dispatch a send; `202 {"id","deliveries"}`.
pub async fn accept(
    app: &AppState,
    req: Send,
    idem: Option<Idempotency>,
) -> Result<Response, ApiError> {
    if let Some(t) = &req.template {
        return Err(ApiError::invalid(
            "template",
            format!("template `{t}` not found (no templates are loaded)"),
        ));
    }
    let title = req
        .title
        .ok_or_else(|| ApiError::invalid("title", "missing field `title`"))?;
    let content = req
        .content
        .ok_or_else(|| ApiError::invalid("content", "missing field `content`"))?;
    if title.len() > MAX_TITLE_LEN {
        return Err(ApiError::invalid(
            "title",
            format!("longer than {MAX_TITLE_LEN} bytes"),
        ));
    }
    let sender = req.sender.unwrap_or_else(|| "api".into());
    check_id("sender", &sender)?;

    let channels = resolve_channels(app, req.channels)?;
    let explicit = req.receivers.filter(|r| !r.is_empty());
    let receivers: Vec<String> = match explicit {
        Some(list) => {
            if list.len() > MAX_RECEIVERS {
                return Err(ApiError::invalid(
                    "receivers",
                    format!("at most {MAX_RECEIVERS} receivers per message"),
                ));
            }
            let mut seen = BTreeSet::new();
            let mut out = Vec::with_capacity(list.len());
            for (i, r) in list.into_iter().enumerate() {
                let r = r.into_string();
                check_id(&format!("receivers[{i}]"), &r)?;
                if seen.insert(r.clone()) {
                    out.push(r);
                }
            }
            out
        }
        // Broadcast: every user online right now.
        None => app.registry.online_users().await,
    };

    let deliveries = plan(app, &receivers, &channels).await?;
    let id = new_message_id();
    let created_at_ms = now_ms();
    let accepted_at = Instant::now();
    let new = NewMessage {
        id: id.clone(),
        title,
        content,
        msg_type: req.msg_type,
        sender,
        created_at_ms,
        deliveries,
        idempotency: idem,
    };
    let view = Arc::new(MessageView {
        id: id.clone(),
        title: new.title.clone(),
        content: new.content.clone(),
        msg_type: new.msg_type,
        sender: new.sender.clone(),
        created_at: rfc3339(created_at_ms),
        template: None,
        data: None,
    });
    let planned_deliveries = new.deliveries.clone();
    match app.store.insert_message(new).await? {
        Inserted::New { delivery_ids, .. } => {
            app.metrics.messages_accepted.fetch_add(1, Relaxed);
            let count = delivery_ids.len();
            let planned: Vec<Planned> = planned_deliveries
                .into_iter()
                .zip(delivery_ids)
                .filter(|(d, _)| d.status == Status::Pending)
                .map(|(d, delivery_id)| Planned {
                    delivery_id,
                    receiver: d.receiver,
                    channel: d.channel,
                    address: d.address,
                })
                .collect();
            app.dispatcher.dispatch(view, accepted_at, planned).await;
            Ok((
                StatusCode::ACCEPTED,
                Json(SendResponse {
                    id,
                    deliveries: count,
                }),
            )
                .into_response())
        }
        Inserted::Existing { id, deliveries } => {
            Ok((StatusCode::ACCEPTED, Json(SendResponse { id, deliveries })).into_response())
        }
        Inserted::KeyConflict => Err(ApiError::invalid(
            "Idempotency-Key",
            "already used with a different request body",
        )),
    }
}

fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {MAX_ID_LEN} characters without control characters"),
        ));
    }
    Ok(())
}

fn resolve_channels(
    app: &AppState,
    requested: Option<Vec<String>>,
) -> Result<Vec<String>, ApiError> {
    let Some(list) = requested else {
        return Ok(vec![WEBSOCKET.to_owned()]);
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            "channels",
            "must name at least one channel instance",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, name) in list.into_iter().enumerate() {
        if app.dispatcher.instance(&name).is_none() {
            let known: Vec<&str> = app
                .dispatcher
                .instances()
                .map(|i| i.name.as_str())
                .collect();
            return Err(ApiError::invalid(
                &format!("channels[{i}]"),
                format!(
                    "unknown channel instance `{name}` (configured: {})",
                    known.join(", ")
                ),
            ));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// One delivery per receiver × channel. Channels that need an address get it from the
/// recipient record; without one the delivery is born `failed` with `no_address`.
async fn plan(
    app: &AppState,
    receivers: &[String],
    channels: &[String],
) -> Result<Vec<NewDelivery>, ApiError> {
    let mut out = Vec::with_capacity(receivers.len() * channels.len());
    let mut records: HashMap<&str, Option<Recipient>> = HashMap::new();
    for r in receivers {
        for c in channels {
            let kind = app
                .dispatcher
                .instance(c)
                .map(|i| i.descriptor.address)
                .unwrap_or(AddressKind::None);
            if kind == AddressKind::None {
                out.push(NewDelivery {
                    receiver: r.clone(),
                    channel: c.clone(),
                    status: Status::Pending,
                    error: None,
                    address: None,
                });
                continue;
            }
            if !records.contains_key(r.as_str()) {
                let rec = app.store.get_recipient(r).await?;
                records.insert(r, rec);
            }
            let rec = records.get(r.as_str()).and_then(Option::as_ref);
            let address = rec.and_then(|rec| match kind {
                AddressKind::Email => rec.email.clone(),
                AddressKind::Phone => rec.phone.clone(),
                AddressKind::WechatOpenId => rec.wechat_open_id.clone(),
                AddressKind::Device(_) | AddressKind::None => None,
            });
            let (status, error) = match address {
                Some(_) => (Status::Pending, None),
                None => (Status::Failed, Some("no_address".to_owned())),
            };
            out.push(NewDelivery {
                receiver: r.clone(),
                channel: c.clone(),
                status,
                error,
                address,
            });
        }
    }
    Ok(out)
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
        ("page" = Option<u32>, Query, description = "1-based page (default 1)"),
        ("size" = Option<u32>, Query, description = "Page size, 1–1000 (default 20)"),
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
    responses((status = 200, body = MessageDto), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
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
    responses((status = 204), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
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
