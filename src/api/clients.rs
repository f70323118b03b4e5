//! Online clients and channel instances.

use axum::extract::State;
use axum::Json;

use super::dto::{ChannelDto, ClientDto};
use super::error::ErrorBody;
use super::extract::ApiKey;
use crate::model::Status;
use crate::state::AppState;

/// Online WebSocket sessions
#[utoipa::path(
    get,
    path = "/api/v1/clients",
    tag = "clients",
    responses((status = 200, body = Vec<ClientDto>), (status = 401, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn clients(State(app): State<AppState>, _key: ApiKey) -> Json<Vec<ClientDto>> {
    Json(
        app.registry
            .list()
            .await
            .into_iter()
            .map(ClientDto::from)
            .collect(),
    )
}

/// Channel instances with counters and health
#[utoipa::path(
    get,
    path = "/api/v1/channels",
    tag = "channels",
    responses((status = 200, body = Vec<ChannelDto>), (status = 401, body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn channels(State(app): State<AppState>, _key: ApiKey) -> Json<Vec<ChannelDto>> {
    let list = app
        .dispatcher
        .instances()
        .map(|i| {
            let counters = app.metrics.channel(&i.name);
            let get = |s: Status| counters.map(|c| c.get(s)).unwrap_or(0);
            let errors = counters
                .map(|c| {
                    c.errors
                        .iter()
                        .map(|e| e.load(std::sync::atomic::Ordering::Relaxed))
                        .sum()
                })
                .unwrap_or(0);
            ChannelDto {
                name: i.name.clone(),
                kind: i.descriptor.kind.to_owned(),
                enabled: true,
                summary: i.descriptor.summary.to_owned(),
                health: i.channel.health().as_str().to_owned(),
                sent: get(Status::Sent),
                delivered: get(Status::Delivered),
                read: get(Status::Read),
                failed: get(Status::Failed),
                errors,
            }
        })
        .collect();
    Json(list)
}
