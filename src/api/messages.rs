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
use super::recipients::Preferences;
use crate::dispatch::outbox::address_of;
use crate::dispatch::Planned;
use crate::model::{
    new_message_id, now_ms, rfc3339, Idempotency, Inserted, MessageFilter, NewAudience,
    NewDelivery, NewMessage, PageRequest, Recipient, RenderedByFamily, Status, StatusFilter,
};
use crate::routing::{Policy, PolicyKind, PolicySpec};
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
    pub data: Option<serde_json::Value>,
    pub sender: Option<String>,
    pub routing: Option<PolicySpec>,
    pub send_at: Option<String>,
    pub expires_at: Option<String>,
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

/// Validate, store (durably) and dispatch a send; `202 {"id","deliveries"}`.
pub async fn accept(
    app: &AppState,
    req: Send,
    idem: Option<Idempotency>,
) -> Result<Response, ApiError> {
    // The outbox's clock: the system clock, or the one a test injected.
    let created_at_ms = app.dispatcher.clock().now_ms();
    let send_at = parse_time("sendAt", req.send_at.as_deref())?;
    let expires_at = parse_time("expiresAt", req.expires_at.as_deref())?;
    if send_at.is_some_and(|t| t > created_at_ms + MAX_SCHEDULE_MS) {
        return Err(ApiError::invalid("sendAt", "at most one year ahead"));
    }
    if let Some(e) = expires_at {
        let start = send_at.unwrap_or(created_at_ms).max(created_at_ms);
        if e <= start {
            return Err(ApiError::invalid(
                "expiresAt",
                "must be later than sendAt (or now, without sendAt)",
            ));
        }
    }
    let (channels, routing) = route(
        app,
        req.channels,
        req.routing,
        req.template.as_deref(),
        req.msg_type,
    )?;
    let rendered = render(app, req.template.as_deref(), req.data.as_ref(), &channels)?;
    let (title, content) = title_and_content(
        req.title,
        req.content,
        req.template.as_deref(),
        req.data.as_ref(),
        &rendered,
    )?;
    if title.len() > MAX_TITLE_LEN {
        return Err(ApiError::invalid(
            "title",
            format!("longer than {MAX_TITLE_LEN} bytes"),
        ));
    }
    let sender = req.sender.unwrap_or_else(|| "api".into());
    check_id("sender", &sender)?;

    let explicit = req.receivers.filter(|r| !r.is_empty());
    let broadcast = explicit.is_none();
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
        None => {
            if send_at.is_some_and(|t| t > created_at_ms) {
                return Err(ApiError::invalid(
                    "receivers",
                    "a scheduled message (sendAt) needs explicit receivers: a broadcast goes to the users online when it is accepted",
                ));
            }
            app.registry.online_users().await
        }
    };

    // A failover chain creates its deliveries step by step (the scheduler).
    let (mut deliveries, routes) = if routing.is_some() {
        (Vec::new(), receivers.clone())
    } else {
        (
            plan(app, &receivers, &channels, req.msg_type).await?,
            Vec::new(),
        )
    };
    // A broadcast's presence deliveries that start pending become one compact audience
    // record (ARCHITECTURE.md, "Compact audiences"): a constant number of rows before the
    // `202`, however many users are online. The rest (provider channels, opt-outs) are rows.
    let audience = match (broadcast, routing.is_some()) {
        (true, false) => compact_audience(&mut deliveries, created_at_ms, &app.settings),
        _ => None,
    };
    if deliveries
        .iter()
        .any(|d| !d.outbox && d.status == Status::Pending)
        || audience.is_some()
    {
        refuse_over_backlog(app)?;
    }
    let id = new_message_id();
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
        template: req.template.clone(),
        data: req
            .template
            .as_ref()
            .map(|_| req.data.clone().unwrap_or_else(|| serde_json::json!({}))),
        rendered,
        send_at_ms: send_at,
        expires_at_ms: expires_at,
        routing,
        routes,
        audience,
    };
    let held = new.held_until().is_some();
    let timers =
        held || new.expires_at_ms.is_some() || !new.routes.is_empty() || new.audience.is_some();
    let view = Arc::new(MessageView {
        id: id.clone(),
        title: new.title.clone(),
        content: new.content.clone(),
        msg_type: new.msg_type,
        sender: new.sender.clone(),
        created_at: rfc3339(created_at_ms),
        template: new.template.clone(),
        data: new.data.clone(),
    });
    let planned_deliveries = new.deliveries.clone();
    let members = new
        .audience
        .as_ref()
        .map(|a| (a.channel.clone(), a.members.clone()));
    let receivers_count = new.routes.len();
    let inserted = match app.store.insert_message(new).await {
        Ok(i) => i,
        Err(e) => {
            if let Some(reason) = refusal(&e) {
                app.metrics.count_refusal(reason);
            }
            return Err(e.into());
        }
    };
    match inserted {
        Inserted::New { seq, delivery_ids } => {
            app.metrics.messages_accepted.fetch_add(1, Relaxed);
            // Deliveries born failed (no_address, opted_out) count as failures too.
            for d in planned_deliveries
                .iter()
                .filter(|d| d.status == Status::Failed)
            {
                if let Some(c) = app.metrics.channel(&d.channel) {
                    c.count(Status::Failed);
                }
            }
            // A failover message counts its chains (one per receiver).
            let member_count = members.as_ref().map_or(0, |(_, m)| m.len());
            let count = (delivery_ids.len() + member_count).max(receivers_count);
            if timers {
                app.dispatcher.wake_scheduler();
            }
            if held {
                // Provider rows come due at sendAt; presence rows wait for the release.
                return Ok((
                    StatusCode::ACCEPTED,
                    Json(SendResponse {
                        id,
                        deliveries: count,
                    }),
                )
                    .into_response());
            }
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
            if let Some((channel, members)) = &members {
                app.dispatcher
                    .dispatch_audience(view.clone(), accepted_at, channel, seq, members)
                    .await;
            }
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

/// The metric label of a refused send (admission control), if it was one.
fn refusal(e: &crate::store::StoreError) -> Option<&'static str> {
    match e {
        crate::store::StoreError::Overloaded(_) => Some("overloaded"),
        crate::store::StoreError::Unavailable(_) => Some("unavailable"),
        _ => None,
    }
}

/// Move a broadcast's pending presence deliveries (on its first presence channel) out of
/// `deliveries` into a compact audience.
fn compact_audience(
    deliveries: &mut Vec<NewDelivery>,
    created_at_ms: i64,
    settings: &crate::config::Settings,
) -> Option<NewAudience> {
    let channel = deliveries
        .iter()
        .find(|d| !d.outbox && d.status == Status::Pending)?
        .channel
        .clone();
    let mut members = Vec::new();
    deliveries.retain_mut(|d| {
        if !d.outbox && d.status == Status::Pending && d.channel == channel {
            members.push(std::mem::take(&mut d.receiver));
            false
        } else {
            true
        }
    });
    Some(NewAudience::new(
        channel,
        members,
        now_ms(),
        created_at_ms + settings.database.audience_window.as_millis() as i64,
    ))
}

/// Fan-out admission control: refuse while this node's sessions have more frames queued
/// than `dispatch.fanout_backlog` per session (nothing is stored).
fn refuse_over_backlog(app: &AppState) -> Result<(), ApiError> {
    let per_session = app.settings.dispatch.fanout_backlog;
    if per_session == 0 {
        return Ok(());
    }
    let sessions = app.registry.local_count().max(1);
    if app.backlog.frames() > per_session.saturating_mul(sessions) {
        app.metrics.count_refusal("backlog");
        return Err(ApiError::unavailable(
            "overloaded (WebSocket sessions have too many frames queued); nothing was stored, retry shortly",
        )
        .with_retry_after(1));
    }
    Ok(())
}

/// Render `template` for the family of every requested channel (API.md §8). A family
/// without template files, or data the template cannot render, is a 422.
fn render(
    app: &AppState,
    template: Option<&str>,
    data: Option<&serde_json::Value>,
    channels: &[String],
) -> Result<RenderedByFamily, ApiError> {
    let Some(name) = template else {
        if data.is_some() {
            return Err(ApiError::invalid(
                "data",
                "`data` is only used with `template`",
            ));
        }
        return Ok(RenderedByFamily::new());
    };
    if name.is_empty() || name.len() > MAX_ID_LEN {
        return Err(ApiError::invalid("template", "must be 1 to 128 characters"));
    }
    let families = app.templates.families(name);
    if families.is_empty() {
        let known = app.templates.names();
        return Err(ApiError::invalid(
            "template",
            format!(
                "template `{name}` not found (loaded: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    let empty = serde_json::json!({});
    let data = data.unwrap_or(&empty);
    if !data.is_object() {
        return Err(ApiError::invalid("data", "must be a JSON object"));
    }
    let mut out = RenderedByFamily::new();
    for (i, c) in channels.iter().enumerate() {
        let Some(instance) = app.dispatcher.instance(c) else {
            continue;
        };
        let family = instance.descriptor.family();
        if out.contains_key(family) {
            continue;
        }
        if !app.templates.has(name, family) {
            return Err(ApiError::invalid(
                &format!("channels[{i}]"),
                format!(
                    "template `{name}` has nothing for channel `{c}` (expected {name}/{family}.<part>.j2; it has: {})",
                    families.join(", ")
                ),
            ));
        }
        let parts = app
            .templates
            .render(name, family, data)
            .map_err(|e| ApiError::invalid("data", e.to_string()))?;
        out.insert(family.to_owned(), parts);
    }
    Ok(out)
}

/// The stored title and content: given ones win; else the WebSocket rendering
/// (`websocket.json.j2` → `{"title","content"}`); else the e-mail subject and text; else
/// the template name and the data as JSON text.
fn title_and_content(
    title: Option<String>,
    content: Option<String>,
    template: Option<&str>,
    data: Option<&serde_json::Value>,
    rendered: &RenderedByFamily,
) -> Result<(String, String), ApiError> {
    let Some(name) = template else {
        let title = title.ok_or_else(|| ApiError::invalid("title", "missing field `title`"))?;
        let content =
            content.ok_or_else(|| ApiError::invalid("content", "missing field `content`"))?;
        return Ok((title, content));
    };
    let ws = rendered
        .get(WEBSOCKET)
        .and_then(|p| p.get("json"))
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok());
    let ws_field = |f: &str| -> Option<String> {
        ws.as_ref()?.get(f).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let email = rendered.get("email");
    let title = title
        .or_else(|| ws_field("title"))
        .or_else(|| email.and_then(|p| p.get("subject").cloned()))
        .unwrap_or_else(|| name.to_owned());
    let content = content
        .or_else(|| ws_field("content"))
        .or_else(|| email.and_then(|p| p.get("txt").cloned()))
        .unwrap_or_else(|| data.map(|d| d.to_string()).unwrap_or_default());
    Ok((title, content))
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
        check_instance(app, &name).map_err(|e| ApiError::invalid(&format!("channels[{i}]"), e))?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// One delivery per receiver × channel. Channels that need an address get it from the
/// recipient record; without one the delivery is born `failed` with `no_address`. A
/// receiver who opted out of the channel or of the message type gets a `failed` delivery
/// with `opted_out` (recorded, not dropped).
async fn plan(
    app: &AppState,
    receivers: &[String],
    channels: &[String],
    msg_type: i64,
) -> Result<Vec<NewDelivery>, ApiError> {
    let mut out = Vec::with_capacity(receivers.len() * channels.len());
    let prefs = app.preferences_present.load(Relaxed);
    let needs_records = prefs
        || channels.iter().any(|c| {
            app.dispatcher
                .instance(c)
                .is_some_and(|i| i.descriptor.address != AddressKind::None)
        });
    let mut records: HashMap<&str, Option<Recipient>> = HashMap::new();
    if needs_records {
        for r in receivers {
            records.insert(r, app.store.get_recipient(r).await?);
        }
    }
    for r in receivers {
        let rec = records.get(r.as_str()).and_then(Option::as_ref);
        for c in channels {
            if let Some(d) = plan_one(app, r, c, rec, msg_type).await? {
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// The delivery of one receiver on one channel instance (`None`: no such instance):
/// pending, or born `failed` with `opted_out` / `no_address`. `rec` is the receiver's record
/// (needed when the channel needs an address or the receiver may have preferences).
pub async fn plan_one(
    app: &AppState,
    receiver: &str,
    channel: &str,
    rec: Option<&Recipient>,
    msg_type: i64,
) -> Result<Option<NewDelivery>, crate::store::StoreError> {
    let Some(instance) = app.dispatcher.instance(channel) else {
        return Ok(None);
    };
    let prefs = rec.map(Preferences::of);
    let kind = instance.descriptor.address;
    let opted_out = prefs.as_ref().is_some_and(|p| {
        p.mutes_type(msg_type) || p.mutes_channel(channel, instance.descriptor.family())
    });
    let address = match kind {
        // Push: the receiver's active devices of the platform (looked up again at every
        // attempt); "address" only says there is at least one.
        AddressKind::Device(platform) => {
            let any = app.store.active_devices(receiver, platform).await?;
            (!any.is_empty()).then(|| format!("{} device(s)", any.len()))
        }
        _ => rec.and_then(|rec| address_of(rec, kind)),
    };
    let (status, error) = if opted_out {
        (Status::Failed, Some("opted_out".to_owned()))
    } else if kind != AddressKind::None && address.is_none() {
        (Status::Failed, Some("no_address".to_owned()))
    } else {
        (Status::Pending, None)
    };
    Ok(Some(NewDelivery {
        receiver: receiver.to_owned(),
        channel: channel.to_owned(),
        status,
        error,
        address,
        outbox: !instance.descriptor.presence,
    }))
}

/// Latest `sendAt`, from now.
const MAX_SCHEDULE_MS: i64 = 366 * 86_400_000;

/// An optional RFC 3339 date-time field, in ms since the epoch.
fn parse_time(field: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            ApiError::invalid(
                field,
                format!("`{v}` is not an RFC 3339 date-time (e.g. 2026-12-01T08:00:00Z)"),
            )
        })?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms)
        .ok()
        .filter(|ms| *ms >= 0)
        .map(Some)
        .ok_or_else(|| ApiError::invalid(field, "out of range"))
}

/// The channels to render for and, for `failover`, the chain. A send's `routing` or
/// `channels` wins over the defaults of its template, then of its type (`[routing]`).
fn route(
    app: &AppState,
    channels: Option<Vec<String>>,
    routing: Option<PolicySpec>,
    template: Option<&str>,
    msg_type: i64,
) -> Result<(Vec<String>, Option<Policy>), ApiError> {
    if channels.is_some() && routing.is_some() {
        return Err(ApiError::invalid(
            "routing",
            "give either `channels` or `routing`, not both",
        ));
    }
    let (spec, field) = match (&routing, &channels) {
        (Some(spec), _) => (spec, "routing".to_owned()),
        (None, Some(_)) => return Ok((resolve_channels(app, channels)?, None)),
        (None, None) => match app.settings.routing.default_for(template, msg_type) {
            Some(spec) => (spec, "routing (configured default)".to_owned()),
            None => return Ok((resolve_channels(app, None)?, None)),
        },
    };
    let policy = spec
        .validate(&|name| check_instance(app, name))
        .map_err(|(f, e)| ApiError::invalid(&format!("{field}.{f}"), e))?;
    let names = policy.steps.iter().map(|s| s.channel.clone()).collect();
    Ok(match policy.policy {
        PolicyKind::All => (names, None),
        PolicyKind::Failover => (names, Some(policy)),
    })
}

/// A channel instance a send may name: configured and enabled.
fn check_instance(app: &AppState, name: &str) -> Result<(), String> {
    match app.dispatcher.instance(name) {
        Some(i) if !i.enabled => Err(format!(
            "channel instance `{name}` is disabled (enabled = false)"
        )),
        Some(_) => Ok(()),
        None => {
            let known: Vec<&str> = app
                .dispatcher
                .instances()
                .map(|i| i.name.as_str())
                .collect();
            Err(format!(
                "unknown channel instance `{name}` (configured: {})",
                known.join(", ")
            ))
        }
    }
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
