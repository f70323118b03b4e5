//! Seed-compatible routes (API.md §6): the earlier message service's names, served by the
//! same handlers.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;

use super::dto::{ClientDto, Collected, MessagePage, SeedSendRequest};
use super::error::ApiError;
use super::extract::{ApiKey, JsonBody, Params, User};
use super::messages::{self, Send};
use crate::state::AppState;

/// `POST /message/sendMessage` `{"content","receiver":[ids],"title","type"}`
pub async fn send_message(
    State(app): State<AppState>,
    _key: ApiKey,
    headers: HeaderMap,
    body: JsonBody<SeedSendRequest>,
) -> Result<Response, ApiError> {
    let idem = messages::idempotency(&headers, &body.raw)?;
    let b = body.value;
    let req = Send {
        title: Some(b.title.unwrap_or_default()),
        content: Some(b.content),
        msg_type: b.msg_type,
        receivers: b.receiver,
        channels: None,
        template: None,
        sender: b.sender,
    };
    messages::accept(&app, req, idem).await
}

/// `GET /message/getMessagePage?pageNum=&pageSize=` (also `page`/`size`)
pub async fn get_message_page(
    State(app): State<AppState>,
    _key: ApiKey,
    params: Params,
) -> Result<Json<MessagePage>, ApiError> {
    messages::list_messages(&app, &params).await.map(Json)
}

/// `POST|DELETE /message/deleteMessageById?id=`
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

/// `GET /message/getWebSocketClients`
pub async fn get_websocket_clients(state: State<AppState>, key: ApiKey) -> Json<Vec<ClientDto>> {
    super::clients::clients(state, key).await
}

/// `POST /message/collectMessage` (user token)
pub async fn collect_message(
    state: State<AppState>,
    user: User,
) -> Result<Json<Collected>, ApiError> {
    super::inbox::collect(state, user).await
}
