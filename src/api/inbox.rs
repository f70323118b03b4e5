//! The notification center (docs/api.md §6): a user's inbox with its own token, and the
//! same per user for admins under `/api/v1/recipients/{userId}/inbox`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::dto::{Collected, InboxChange, InboxChanged, InboxCounts, InboxMessage, InboxPage};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiKey, JsonBody, Params, User};
use super::messages::page_request;
use crate::model::inbox::{Op, Query, Show, Target};
use crate::model::WEBSOCKET;
use crate::state::AppState;
use crate::ws::inbox::{mark, Outcome};

/// Most messages one collect returns; call again until `items` is empty.
pub const COLLECT_LIMIT: u32 = 1000;

/// Most ids one change names (a request of more is refused: use `all`).
pub const MAX_IDS: usize = 1000;

/// Entries per cursor page when `limit` is not given.
const DEFAULT_LIMIT: u32 = 50;

/// A cursor from the query or a body: the entry's `seq`, written as a decimal string.
fn cursor(field: &str, v: &str) -> Result<i64, ApiError> {
    v.trim()
        .parse::<i64>()
        .ok()
        .filter(|c| *c >= 0)
        .ok_or_else(|| {
            ApiError::bad_param(field, "not a cursor (take one from an entry's `cursor`)")
        })
}

/// The listing's query (docs/api.md §6.3).
fn query(params: &Params) -> Result<(Query, u32, u32), ApiError> {
    let p = &params.0;
    let show = match p.get("status").map(|s| s.trim()) {
        None | Some("") | Some("undelivered") => Show::Undelivered,
        Some("all") => Show::All,
        Some("unseen") => Show::Unseen,
        Some("seen") => Show::Seen,
        Some("unread") => Show::Unread,
        Some("read") => Show::Read,
        Some(_) => {
            return Err(ApiError::bad_param(
                "status",
                "expected `undelivered`, `all`, `unseen`, `seen`, `unread` or `read`",
            ))
        }
    };
    let archived = match p.get("archived").map(|s| s.trim()) {
        None | Some("") | Some("false") => Some(false),
        Some("true") => Some(true),
        Some("any") => None,
        Some(_) => {
            return Err(ApiError::bad_param(
                "archived",
                "expected `false`, `true` or `any`",
            ))
        }
    };
    let msg_type = match p.get("type") {
        None => None,
        Some(t) => Some(
            t.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::bad_param("type", "must be an integer"))?,
        ),
    };
    let before = p.get("before").map(|c| cursor("before", c)).transpose()?;
    let after = p.get("after").map(|c| cursor("after", c)).transpose()?;
    if before.is_some() && after.is_some() {
        return Err(ApiError::bad_param(
            "after",
            "give `before` or `after`, not both",
        ));
    }
    let (page, size) = if before.is_some() || after.is_some() || p.contains_key("limit") {
        if p.contains_key("page") {
            return Err(ApiError::bad_param(
                "page",
                "cursor paging (`before`/`after`/`limit`) does not take `page`",
            ));
        }
        (1, params.number(&["limit"], DEFAULT_LIMIT, 1000)?)
    } else {
        let r = page_request(params)?;
        (r.page, r.size)
    };
    let q = Query {
        show,
        archived,
        msg_type,
        before,
        after,
        offset: i64::from(page.saturating_sub(1)) * i64::from(size),
        limit: size,
    };
    Ok((q, page, size))
}

async fn list(app: &AppState, user: &str, params: &Params) -> Result<Json<InboxPage>, ApiError> {
    let (q, page, size) = query(params)?;
    let result = app.store.inbox_entries(user, &q).await?;
    // An older page exists when this one is full and more entries are older than its last.
    let shown = q.offset + result.items.len() as i64;
    let next_cursor = match (result.items.last(), q.after) {
        (Some(last), None) if result.items.len() == size as usize && shown < result.total => {
            Some(last.seq.to_string())
        }
        (Some(last), Some(_)) => Some(last.seq.to_string()).filter(|_| result.total > 0),
        _ => None,
    };
    Ok(Json(InboxPage {
        items: result.items.iter().map(InboxMessage::from).collect(),
        page,
        size,
        total: result.total,
        next_cursor,
    }))
}

/// The target of a change, checked: `ids` (1–[`MAX_IDS`], de-duplicated) or `all`.
fn target(body: InboxChange) -> Result<Target, ApiError> {
    match (body.ids, body.all) {
        (Some(_), Some(true)) => Err(ApiError::invalid(
            "all",
            "give `ids` or `\"all\": true`, not both",
        )),
        (Some(mut ids), _) => {
            if body.before.is_some() {
                return Err(ApiError::invalid(
                    "before",
                    "only goes with `\"all\": true`",
                ));
            }
            if ids.is_empty() {
                return Err(ApiError::invalid("ids", "must name at least one message"));
            }
            if ids.len() > MAX_IDS {
                return Err(ApiError::invalid(
                    "ids",
                    format!(
                        "{} ids; at most {MAX_IDS} per request (use `\"all\": true` with `before`)",
                        ids.len()
                    ),
                ));
            }
            if let Some(bad) = ids.iter().find(|i| i.is_empty() || i.len() > 64) {
                return Err(ApiError::invalid(
                    "ids",
                    format!("`{}` is not a message id", truncate(bad)),
                ));
            }
            ids.sort();
            ids.dedup();
            Ok(Target::Ids(ids))
        }
        (None, Some(true)) => {
            let before = body.before.map(|b| cursor("before", &b)).transpose()?;
            Ok(Target::All { before })
        }
        (None, _) => Err(ApiError::invalid(
            "ids",
            "give `ids` (message ids) or `\"all\": true`",
        )),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

async fn change(
    app: &AppState,
    user: &str,
    op: &str,
    body: InboxChange,
) -> Result<Json<InboxChanged>, ApiError> {
    let Some(op) = Op::parse(op) else {
        return Err(ApiError::not_found(
            "no such inbox change; one of seen, read, unread, archive, unarchive, ack, delete",
        ));
    };
    let target = target(body)?;
    match mark(app, user, op, target).await? {
        Outcome::Done { changed, counts } => Ok(Json(InboxChanged {
            changed,
            counts: counts.into(),
        })),
        Outcome::Unknown(ids) => {
            let shown: Vec<&str> = ids.iter().take(10).map(String::as_str).collect();
            let more = if ids.len() > 10 {
                format!(" and {} more", ids.len() - 10)
            } else {
                String::new()
            };
            Err(ApiError::invalid(
                "ids",
                format!(
                    "not in this inbox (unknown, deleted, or another user's): {}{more}; nothing changed",
                    shown.join(", ")
                ),
            ))
        }
    }
}

async fn delete_one(app: &AppState, user: &str, id: String) -> Result<StatusCode, ApiError> {
    match mark(app, user, Op::Delete, Target::Ids(vec![id])).await? {
        Outcome::Done { .. } => Ok(StatusCode::NO_CONTENT),
        Outcome::Unknown(_) => Err(ApiError::not_found("no such message in this inbox")),
    }
}

/// This user's inbox
///
/// Newest first. Without cursors, `page`/`size` page by offset; with `before`/`after`
/// (an entry's `cursor`) and `limit`, pages stay stable while new messages arrive.
#[utoipa::path(
    get,
    path = "/api/v1/inbox",
    tag = "inbox",
    params(
        ("status" = Option<String>, Query, description = "`undelivered` (default), `all`, `unseen`, `seen`, `unread` or `read`"),
        ("archived" = Option<String>, Query, description = "`false` (default), `true` or `any`"),
        ("type" = Option<i64>, Query, description = "Only this message type"),
        ("before" = Option<String>, Query, description = "Cursor: entries older than it"),
        ("after" = Option<String>, Query, description = "Cursor: entries newer than it (the oldest `limit` of them)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Cursor page size (default 50)"),
        ("page" = Option<u32>, Query, minimum = 1), ("size" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ),
    responses((status = 200, body = InboxPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("user_token" = []))
)]
pub async fn inbox(
    State(app): State<AppState>,
    User(user): User,
    params: Params,
) -> Result<Json<InboxPage>, ApiError> {
    list(&app, &user.user_id, &params).await
}

/// This user's inbox counts
///
/// Entries that are not archived: `unseen` (the badge), `unread`, `total`.
#[utoipa::path(
    get,
    path = "/api/v1/inbox/counts",
    tag = "inbox",
    responses((status = 200, body = InboxCounts), (status = 401, body = ErrorBody)),
    security(("user_token" = []))
)]
pub async fn counts(
    State(app): State<AppState>,
    User(user): User,
) -> Result<Json<InboxCounts>, ApiError> {
    Ok(Json(app.store.inbox_counts(&user.user_id).await?.into()))
}

/// Change the state of inbox entries
///
/// `op` is `seen`, `read`, `unread`, `archive`, `unarchive`, `ack` or `delete`. The change
/// reaches every session of the user as `state` and `counts` frames.
#[utoipa::path(
    post,
    path = "/api/v1/inbox/{op}",
    tag = "inbox",
    params(("op" = String, Path, description = "seen | read | unread | archive | unarchive | ack | delete")),
    request_body = InboxChange,
    responses(
        (status = 200, body = InboxChanged),
        (status = 404, description = "No such op", body = ErrorBody),
        (status = 413, description = "Body over `http.body_limit`", body = ErrorBody),
        (status = 422, description = "Bad body, more than 1000 ids, or ids not in this inbox (nothing changed)", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("user_token" = []))
)]
pub async fn change_own(
    State(app): State<AppState>,
    User(user): User,
    Path(op): Path<String>,
    body: JsonBody<InboxChange>,
) -> Result<Json<InboxChanged>, ApiError> {
    change(&app, &user.user_id, &op, body.value).await
}

/// Delete a message from this user's inbox
///
/// The entry leaves the inbox for good; the delivery and its status stay for the sender.
#[utoipa::path(
    delete,
    path = "/api/v1/inbox/{id}",
    tag = "inbox",
    params(("id" = String, Path, description = "Message id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("user_token" = []))
)]
pub async fn delete_own(
    State(app): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_one(&app, &user.user_id, id).await
}

/// A recipient's inbox (admin)
#[utoipa::path(
    get,
    path = "/api/v1/recipients/{userId}/inbox",
    tag = "inbox",
    params(
        ("userId" = String, Path),
        ("status" = Option<String>, Query), ("archived" = Option<String>, Query),
        ("type" = Option<i64>, Query), ("before" = Option<String>, Query),
        ("after" = Option<String>, Query), ("limit" = Option<u32>, Query),
        ("page" = Option<u32>, Query), ("size" = Option<u32>, Query),
    ),
    responses((status = 200, body = InboxPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn admin_inbox(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(user_id): Path<String>,
    params: Params,
) -> Result<Json<InboxPage>, ApiError> {
    list(&app, &user_id, &params).await
}

/// A recipient's inbox counts (admin)
#[utoipa::path(
    get,
    path = "/api/v1/recipients/{userId}/inbox/counts",
    tag = "inbox",
    params(("userId" = String, Path)),
    responses((status = 200, body = InboxCounts), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn admin_counts(
    State(app): State<AppState>,
    _key: ApiKey,
    Path(user_id): Path<String>,
) -> Result<Json<InboxCounts>, ApiError> {
    Ok(Json(app.store.inbox_counts(&user_id).await?.into()))
}

/// Change a recipient's inbox entries (admin)
#[utoipa::path(
    post,
    path = "/api/v1/recipients/{userId}/inbox/{op}",
    tag = "inbox",
    params(("userId" = String, Path), ("op" = String, Path)),
    request_body = InboxChange,
    responses((status = 200, body = InboxChanged), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn admin_change(
    State(app): State<AppState>,
    _key: ApiKey,
    Path((user_id, op)): Path<(String, String)>,
    body: JsonBody<InboxChange>,
) -> Result<Json<InboxChanged>, ApiError> {
    change(&app, &user_id, &op, body.value).await
}

/// Delete a message from a recipient's inbox (admin)
#[utoipa::path(
    delete,
    path = "/api/v1/recipients/{userId}/inbox/{id}",
    tag = "inbox",
    params(("userId" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn admin_delete(
    State(app): State<AppState>,
    _key: ApiKey,
    Path((user_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete_one(&app, &user_id, id).await
}

/// Collect undelivered messages
///
/// Returns this user's undelivered messages, oldest first (at most 1000; call again until
/// empty), and marks them `delivered` — for clients that cannot hold a WebSocket.
#[utoipa::path(
    post,
    path = "/api/v1/inbox/collect",
    tag = "inbox",
    responses((status = 200, body = Collected), (status = 401, body = ErrorBody)),
    security(("user_token" = []))
)]
pub async fn collect(
    State(app): State<AppState>,
    User(user): User,
) -> Result<Json<Collected>, ApiError> {
    let items = app
        .store
        .collect(&user.user_id, WEBSOCKET, COLLECT_LIMIT)
        .await?;
    Ok(Json(Collected {
        items: items.iter().map(InboxMessage::from).collect(),
    }))
}
