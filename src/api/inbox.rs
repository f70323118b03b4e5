//! The user's own inbox (user token).

use axum::extract::State;
use axum::Json;

use super::dto::{Collected, InboxMessage, InboxPage};
use super::error::{ApiError, ErrorBody};
use super::extract::{Params, User};
use super::messages::page_request;
use crate::model::WEBSOCKET;
use crate::state::AppState;

/// Most messages one collect returns; call again until `items` is empty.
pub const COLLECT_LIMIT: u32 = 1000;

/// This user's messages
#[utoipa::path(
    get,
    path = "/api/v1/inbox",
    tag = "inbox",
    params(
        ("status" = Option<String>, Query, description = "`undelivered` (default) or `all`"),
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
    let page = page_request(&params)?;
    let undelivered_only = match params.0.get("status").map(String::as_str) {
        None | Some("undelivered") | Some("") => true,
        Some("all") => false,
        Some(_) => {
            return Err(ApiError::bad_param(
                "status",
                "expected `undelivered` or `all`",
            ))
        }
    };
    let result = app
        .store
        .inbox(&user.user_id, WEBSOCKET, undelivered_only, page)
        .await?;
    Ok(Json(InboxPage {
        items: result.items.iter().map(InboxMessage::from).collect(),
        page: page.page,
        size: page.size,
        total: result.total,
    }))
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
