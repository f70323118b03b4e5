//! Extractors that turn every malformed request into a clear 4xx [`ApiError`].

use std::collections::HashMap;

use axum::body::Bytes;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::auth::{Scope, UserIdentity};
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
    crate::auth::bearer(&parts.headers)
}

/// A management API key (`Authorization: Bearer <key>`) that may use this route: the main
/// `api_key` or an `[[api_keys]]` entry holding the scope the route needs
/// ([`Scope::for_route`]). Keys are compared in constant time (see [`crate::auth::ApiKeys`]).
/// On the send routes it also takes one send from the key's rate limit, before the body is
/// read. Missing or unknown key → `401`; known key without the scope → `403`; over the
/// key's send limit → `429` with `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// The key's name (`api_key` for the main key), for logs; never the secret.
    pub name: Arc<str>,
}

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let Some(presented) = bearer(parts) else {
            return Err(ApiError::unauthorized(
                "missing API key: send Authorization: Bearer <key>",
            )
            .into_response());
        };
        let Some(key) = app.api_keys.find(presented) else {
            return Err(ApiError::unauthorized("invalid API key").into_response());
        };
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or(parts.uri.path(), MatchedPath::as_str);
        let needed = Scope::for_route(&parts.method, route);
        if !key.scopes.allows(needed) {
            tracing::debug!(key = %key.name, scope = needed.as_str(), route, "API key lacks the scope");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "API key \"{}\" lacks the \"{}\" scope this route needs",
                    key.name,
                    needed.as_str()
                ),
            )
            .into_response());
        }
        if needed == Scope::Send {
            if let Some(limit) = &key.send_limit {
                // Cluster mode: one budget per key for every node (Redis).
                let taken = match app.dispatcher.shared_rate() {
                    Some(shared) => limit.take_shared(&key.name, shared.as_ref()).await,
                    None => limit.take(&key.name),
                };
                if let Err(over) = taken {
                    app.metrics.count_api_rate_limited(&key.name);
                    tracing::debug!(key = %key.name, "send rate limit of the API key exceeded");
                    return Err(over.into_response());
                }
            }
        }
        Ok(ApiKey {
            name: key.name.clone(),
        })
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
