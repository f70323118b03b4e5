//! Extractors that turn every malformed request into a clear 4xx [`ApiError`].

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::auth::{api_key_matches, UserIdentity};
use crate::state::AppState;

/// A JSON body: 413 over the body limit, 400 for invalid JSON, 422 naming the field for
/// JSON of the wrong shape. Also keeps the parsed value (for idempotency hashing).
pub struct JsonBody<T> {
    pub value: T,
    pub raw: serde_json::Value,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "request body is larger than the configured limit (http.body_limit)",
                )
            } else {
                ApiError::new(status, rejection.body_text())
            }
        })?;
        parse_json(&bytes)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<JsonBody<T>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "request body is empty; expected a JSON object",
        ));
    }
    let raw: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    if !raw.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "request body must be a JSON object",
        ));
    }
    let value = serde_path_to_error::deserialize(&raw).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, inner)
        } else {
            ApiError::invalid(&path, inner)
        }
    })?;
    Ok(JsonBody { value, raw })
}

/// Query parameters as a map; a malformed query string is a 400.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Params(q))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
    }
}

impl Params {
    /// First of `names` that is present.
    pub fn get<'a>(&'a self, names: &[&'a str]) -> Option<(&'a str, &'a str)> {
        names
            .iter()
            .find_map(|n| self.0.get(*n).map(|v| (*n, v.as_str())))
    }

    /// A positive integer parameter within `1..=max`, or `default`.
    pub fn number(&self, names: &[&str], default: u32, max: u32) -> Result<u32, ApiError> {
        match self.get(names) {
            None => Ok(default),
            Some((name, v)) => match v.trim().parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_param(
                    name,
                    format!("must be an integer from 1 to {max}"),
                )),
            },
        }
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The management API key (`Authorization: Bearer <key>`), compared in constant time.
pub struct ApiKey;

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            None => Err(ApiError::unauthorized(
                "missing API key: send Authorization: Bearer <key>",
            )),
            Some(key) if api_key_matches(key, app.api_key.expose()) => Ok(ApiKey),
            Some(_) => Err(ApiError::unauthorized("invalid API key")),
        }
    }
}

/// A user token (`Authorization: Bearer <user token>`).
pub struct User(pub UserIdentity);

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::unauthorized(
                "missing user token: send Authorization: Bearer <token>",
            ));
        };
        app.auth
            .verify(token)
            .await
            .map(User)
            .map_err(|e| ApiError::unauthorized(format!("invalid user token: {e}")))
    }
}
