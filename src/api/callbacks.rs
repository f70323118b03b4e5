//! Vendor callbacks (delivery receipts): `POST /api/v1/callbacks/{provider}/{instance}`.
//!
//! No API key: the vendor calls this, and the instance's channel verifies the vendor's
//! signature ([`herald_channel::Channel::callback`]). The receipts it returns become status
//! changes through the dispatcher like any other (forward only: `delivered` or `failed`).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use herald_channel::{family_of, CallbackError, CallbackRequest, Receipt, ReceiptFor};

use super::error::{ApiError, ErrorBody};
use crate::model::{Status, StatusChange};
use crate::state::AppState;

/// Receive a vendor's delivery receipts
///
/// For channels whose vendor reports delivery (e.g. `sms.twilio`'s StatusCallback). The
/// `provider` segment is the kind's second word (`twilio` for `sms.twilio`) and `instance`
/// the configured instance name. The channel verifies the vendor's signature; the receipts
/// move deliveries to `delivered` or `failed`. Unknown receipts are ignored.
#[utoipa::path(
    post,
    path = "/api/v1/callbacks/{provider}/{instance}",
    tag = "channels",
    params(("provider" = String, Path), ("instance" = String, Path)),
    request_body(content = String, description = "The vendor's callback body, as it sends it", content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 204, description = "Verified and applied"),
        (status = 400, description = "Malformed callback", body = ErrorBody),
        (status = 401, description = "Signature check failed", body = ErrorBody),
        (status = 404, description = "No such instance, or it takes no callbacks", body = ErrorBody),
    )
)]
pub async fn callback(
    State(app): State<AppState>,
    Path((provider, instance)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::not_found(format!("no callback for `{provider}/{instance}`"));
    let Some(inst) = app.dispatcher.instance(&instance) else {
        return Err(not_found());
    };
    let kind = inst.descriptor.kind;
    let kind_provider = kind
        .strip_prefix(family_of(kind))
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or(kind);
    if kind_provider != provider {
        return Err(not_found());
    }
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let query = query.unwrap_or_default();
    let req = CallbackRequest {
        query: &query,
        headers: &headers,
        body: &body,
    };
    let receipts = match inst.channel.callback(&req).await {
        Ok(r) => r,
        Err(CallbackError::NotSupported) => return Err(not_found()),
        Err(CallbackError::Unauthorized(why)) => {
            tracing::warn!(channel = %instance, reason = %why, "callback refused: bad signature");
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "signature check failed",
            ));
        }
        Err(CallbackError::BadRequest(why)) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, why));
        }
    };
    for receipt in receipts {
        let (target, status, error) = match receipt {
            Receipt::Delivered(t) => (t, Status::Delivered, None),
            // A failure receipt is final: a kind that would be retried at send time
            // (e.g. "handset unreachable") reads as permanent here, with its code.
            Receipt::Failed(t, e) => {
                let e = if e.is_retryable() {
                    let p = herald_channel::ChannelError::permanent(e.message());
                    match e.code() {
                        Some(c) => p.with_code(c),
                        None => p,
                    }
                } else {
                    e
                };
                (t, Status::Failed, Some(e.to_string()))
            }
        };
        let delivery_id = match target {
            // Only a delivery of this instance (the id came in the signed callback URL).
            ReceiptFor::Delivery(id) => app
                .store
                .delivery_channel(id)
                .await?
                .filter(|c| *c == instance)
                .map(|_| id),
            ReceiptFor::Provider(pid) => app.store.delivery_by_provider_id(&instance, &pid).await?,
        };
        let Some(delivery_id) = delivery_id else {
            tracing::info!(channel = %instance, "receipt for an unknown delivery ignored");
            continue;
        };
        app.dispatcher
            .record(
                &instance,
                StatusChange::Delivery {
                    delivery_id,
                    status,
                    error,
                    count_attempt: false,
                },
            )
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}
