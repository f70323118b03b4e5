//! Vendor callbacks (delivery receipts): `POST /api/v1/callbacks/{provider}/{instance}`.
//!
//! No API key: the vendor calls this, and the instance's channel verifies the vendor's
//! signature ([`herald_channel::Channel::callback`]). The receipts it returns become status
//! changes through the dispatcher like any other (forward only: `delivered` or `failed`).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use herald_channel::{family_of, CallbackError, CallbackRequest};

use super::error::{ApiError, ErrorBody};
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
    app.dispatcher.apply_receipts(&instance, receipts).await?;
    Ok(StatusCode::NO_CONTENT)
}
