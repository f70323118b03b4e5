//! Numbers for the dashboard's chart.

use axum::extract::State;
use axum::Json;

use super::dto::{ChannelSeries, DeliveryStats};
use super::error::ErrorBody;
use super::extract::ApiKey;
use crate::metrics::RECENT_MINUTES;
use crate::model::{now_ms, rfc3339, Status};
use crate::state::AppState;

/// Delivery status changes per minute, last hour
///
/// Per channel instance and status reached (`sent`, `delivered`, `read`, `failed`; `pending`
/// stays 0), one count per minute for the last 60 minutes, oldest first, as recorded by
/// this node since it started (not kept across restarts).
#[utoipa::path(
    get,
    path = "/api/v1/stats/deliveries",
    tag = "channels",
    responses((status = 200, body = DeliveryStats), (status = 401, body = ErrorBody), (status = 403, description = "The API key lacks the `admin` scope", body = ErrorBody)),
    security(("api_key" = []))
)]
pub async fn deliveries(State(app): State<AppState>, _key: ApiKey) -> Json<DeliveryStats> {
    let now_minute = now_ms().div_euclid(60_000);
    let first = now_minute - RECENT_MINUTES as i64 + 1;
    let channels = app
        .metrics
        .channels
        .iter()
        .map(|(name, c)| {
            let series = c.recent_series(now_minute);
            ChannelSeries {
                channel: name.clone(),
                series: Status::ALL
                    .iter()
                    .map(|s| (s.as_str().to_owned(), series[s.code() as usize].to_vec()))
                    .collect(),
            }
        })
        .collect();
    Json(DeliveryStats {
        from: rfc3339(first * 60_000),
        bucket_seconds: 60,
        buckets: RECENT_MINUTES,
        channels,
    })
}
