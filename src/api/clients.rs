//! Online clients and channel instances.

use axum::extract::State;
use axum::Json;

use super::dto::{ChannelDto, ClientDto};
use super::error::{ApiError, ErrorBody};
use super::extract::ApiKey;
use std::sync::atomic::Ordering::Relaxed;

use herald_channel::Health;

use crate::model::Status;
use crate::state::AppState;

/// Online WebSocket sessions
#[utoipa::path(
    get,
    path = "/api/v1/clients",
    tag = "clients",
    responses((status = 200, body = Vec<ClientDto>), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody)),
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
    responses((status = 200, body = Vec<ChannelDto>), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn channels(
    State(app): State<AppState>,
    _key: ApiKey,
) -> Result<Json<Vec<ChannelDto>>, ApiError> {
    let outbox = app.store.outbox_counts().await?;
    let now = app.dispatcher.clock().now_ms();
    let mut quota_used = std::collections::HashMap::new();
    for i in app.dispatcher.instances() {
        if let Some(q) = app.dispatcher.limits(&i.name).and_then(|l| l.quota) {
            quota_used.insert(
                i.name.clone(),
                app.store.quota_used(&i.name, q.window_start(now)).await?,
            );
        }
    }
    let list = app
        .dispatcher
        .instances()
        .map(|i| {
            let quota = limits_of(&app, &i.name).and_then(|l| l.quota);
            let counters = app.metrics.channel(&i.name);
            let get = |s: Status| counters.map(|c| c.get(s)).unwrap_or(0);
            let errors = counters
                .map(|c| c.errors.iter().map(|e| e.load(Relaxed)).sum())
                .unwrap_or(0);
            let health = i.channel.health();
            let health_detail = match &health {
                Health::Ok => None,
                Health::Degraded(d) | Health::Down(d) => Some(d.clone()),
            };
            let counts = outbox.get(&i.name).copied().unwrap_or_default();
            let limits = app.dispatcher.limits(&i.name);
            ChannelDto {
                name: i.name.clone(),
                kind: i.descriptor.kind.to_owned(),
                enabled: i.enabled,
                summary: i.descriptor.summary.to_owned(),
                health: health.as_str().to_owned(),
                health_detail,
                sent: get(Status::Sent),
                delivered: get(Status::Delivered),
                read: get(Status::Read),
                failed: get(Status::Failed),
                errors,
                retries: counters.map(|c| c.retries.load(Relaxed)).unwrap_or(0),
                pending: counts.pending,
                retrying: counts.retrying,
                in_flight: app.dispatcher.in_flight(&i.name),
                concurrency: limits.map(|l| l.concurrency),
                rate_limit: limits.and_then(|l| l.rate).map(|r| r.to_string()),
                max_attempts: limits.map(|l| l.max_attempts),
                daily_quota: quota.map(|q| q.limit),
                quota_used: quota_used.get(&i.name).copied(),
                quota_resets_at: quota.map(|q| crate::model::rfc3339(q.window_end(now))),
            }
        })
        .collect();
    Ok(Json(list))
}

fn limits_of<'a>(app: &'a AppState, name: &str) -> Option<&'a crate::dispatch::outbox::Limits> {
    app.dispatcher.limits(name)
}
