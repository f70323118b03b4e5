//! Seed-compatible routes (docs/api.md §8): the earlier message service's names, served by the
//! same handlers.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;

use super::dto::{ClientDto, Collected, MessagePage, SeedSendRequest, SendResponse};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiKey, JsonBody, Params, User};
use super::messages;
use crate::dispatch::plan::SendInput;
use crate::state::AppState;

/// Send a message (seed-compatible)
///
/// `{"content","receiver":[ids],"title","type"}`; same behaviour and answer as
/// `POST /api/v1/messages`.
#[utoipa::path(
    post,
    path = "/message/sendMessage",
    tag = "seed-compatible",
    request_body = SeedSendRequest,
    responses(
        (status = 202, body = SendResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "The API key has neither the `send` nor the `admin` scope", body = ErrorBody),
        (status = 429, description = "Over the API key's send rate limit; nothing stored", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the key may send again"))),
        (status = 422, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn send_message(
    State(app): State<AppState>,
    _key: ApiKey,
    headers: HeaderMap,
    body: JsonBody<SeedSendRequest>,
) -> Result<Response, ApiError> {
    let idem = messages::idempotency(&headers, &body.raw)?;
    let b = body.value;
    // The seed body ignores unknown fields (older clients send extras), so without this a
    // misspelt key (`receivers`, `reciever`) would broadcast to every user online. A
    // broadcast has to be asked for: `"receiver": []`.
    if b.receiver.is_none() {
        return Err(ApiError::invalid(
            "receiver",
            "missing field `receiver`: list the receivers, or send [] to broadcast to every user online",
        ));
    }
    let req = SendInput {
        title: Some(b.title.unwrap_or_default()),
        content: Some(b.content),
        msg_type: b.msg_type,
        receivers: b
            .receiver
            .map(|list| list.into_iter().map(|r| r.into_string()).collect()),
        sender: b.sender,
        ..SendInput::default()
    };
    messages::accept(&app, req, idem).await
}

/// List messages (seed-compatible)
///
/// Same as `GET /api/v1/messages`; also accepts `pageNum`/`pageSize`.
#[utoipa::path(
    get,
    path = "/message/getMessagePage",
    tag = "seed-compatible",
    params(
        ("pageNum" = Option<u32>, Query, minimum = 1, description = "1-based page (default 1); `page` also works"),
        ("pageSize" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1–1000 (default 20); `size` also works"),
    ),
    responses((status = 200, body = MessagePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn get_message_page(
    State(app): State<AppState>,
    _key: ApiKey,
    params: Params,
) -> Result<Json<MessagePage>, ApiError> {
    messages::list_messages(&app, &params).await.map(Json)
}

/// Delete a message (seed-compatible; also `DELETE`)
#[utoipa::path(
    method(post, delete),
    path = "/message/deleteMessageById",
    tag = "seed-compatible",
    params(("id" = String, Query)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn delete_message_by_id(
    State(app): State<AppState>,
    _key: ApiKey,
    params: Params,
) -> Result<StatusCode, ApiError> {
    let Some((_, id)) = params.get(&["id"]) else {
        return Err(ApiError::bad_param("id", "missing query parameter `id`"));
    };
    messages::delete_message(&app, id).await
}

/// Online clients (seed-compatible)
#[utoipa::path(
    get,
    path = "/message/getWebSocketClients",
    tag = "seed-compatible",
    responses((status = 200, body = Vec<ClientDto>), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn get_websocket_clients(state: State<AppState>, key: ApiKey) -> Json<Vec<ClientDto>> {
    super::clients::clients(state, key).await
}

/// Collect undelivered messages (seed-compatible; user token)
#[utoipa::path(
    post,
    path = "/message/collectMessage",
    tag = "seed-compatible",
    responses((status = 200, body = Collected), (status = 401, body = ErrorBody)),
    security(("user_token" = []))
)]
pub async fn collect_message(
    state: State<AppState>,
    user: User,
) -> Result<Json<Collected>, ApiError> {
    super::inbox::collect(state, user).await
}
