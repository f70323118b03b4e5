//! The HTTP error of every handler and of the WebSocket handshake: `{"error": "...",
//! "field"?: "..."}` with the right status. Internal causes are logged, never sent to
//! clients. Shared by `api/`, `ws/` and `server/`, so none of them imports another for it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::dispatch::plan::SendError;
use crate::limits::TooManyRequests;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
    /// `Retry-After` seconds (`503` while the store cannot write or is overloaded).
    retry_after: Option<u64>,
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the offending field or parameter.
    pub error: String,
    /// The field or parameter at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 422 naming `field`: `"<field>: <message>"`.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field}: {message}"),
        )
        .with_field(field)
    }

    /// 400 naming a query parameter.
    pub fn bad_param(param: &str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("{param}: {message}")).with_field(param)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<StoreError> for ApiError {
    /// Every store failure is a `503` (nothing was done; the cause is logged, not sent),
    /// with `Retry-After` when trying again can help. Overload and a database that cannot
    /// write are expected under stress and logged by the store once, not per request.
    fn from(e: StoreError) -> Self {
        let message = match &e {
            StoreError::Overloaded(why) => {
                tracing::debug!(why, "send refused: overloaded");
                format!("overloaded ({why}); nothing was stored, retry shortly")
            }
            StoreError::Unavailable(why) => {
                tracing::debug!(why, "refused: the database cannot write");
                format!("the database cannot store anything now ({why}); nothing was stored, retry later")
            }
            StoreError::Closed => "shutting down; retry on another node or later".to_owned(),
            other => {
                tracing::error!(error = %other, "store error");
                "storage is unavailable; retry later".to_owned()
            }
        };
        let err = ApiError::unavailable(message);
        match e.retry_after_secs() {
            Some(secs) => err.with_retry_after(secs),
            None => err,
        }
    }
}

impl IntoResponse for TooManyRequests {
    /// `429` with `Retry-After` (whole seconds, at least 1) and a JSON error.
    fn into_response(self) -> Response {
        let secs = self.retry_after_secs();
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{}; retry in {secs} s", self.message()),
        )
        .with_retry_after(secs)
        .into_response()
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Invalid { field, message } => ApiError::invalid(&field, message),
            SendError::Backlog => ApiError::unavailable(
                "overloaded (WebSocket sessions have too many frames queued); nothing was stored, retry shortly",
            )
            .with_retry_after(1),
            SendError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut resp = (
            self.status,
            Json(ErrorBody {
                error: self.message,
                field: self.field,
            }),
        )
            .into_response();
        if unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
