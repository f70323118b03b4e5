//! `[http.cors]`: cross-origin access for browser clients served from another origin
//! (the user's REST routes and the `GET /events` stream; WebSocket needs no CORS).
//!
//! Off unless `allowed_origins` is set: without it no response carries CORS headers, so
//! browsers only let same-origin pages read Herald's answers. When set, the routes the
//! browser client uses with a user token get CORS (all routes with `all_routes = true`):
//! a preflight from an allowed origin is answered `204` here, before any route or
//! extractor; other responses (errors included, so a page can read a `401`/`429`) get
//! `Access-Control-Allow-Origin`. Credentials are bearer tokens, never cookies, so
//! `Access-Control-Allow-Credentials` is never sent and `"*"` is safe to answer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::config::CorsSettings;

/// Methods and request headers a cross-origin page may use.
const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE";
const ALLOW_HEADERS: &str = "authorization, content-type, idempotency-key";
/// Response headers a cross-origin page may read beyond the safelisted ones.
const EXPOSE_HEADERS: &str = "retry-after, www-authenticate";
/// How long a browser may cache a preflight answer (seconds).
const MAX_AGE: &str = "600";

pub struct Cors {
    /// `None`: any origin (`"*"`); else the allowed origins, lower-case.
    origins: Option<Vec<String>>,
    all_routes: bool,
}

impl Cors {
    /// `None` when no origin is allowed (the default): no middleware at all.
    pub fn from_settings(s: &CorsSettings) -> Option<Arc<Cors>> {
        if s.allowed_origins.is_empty() {
            return None;
        }
        let any = s.allowed_origins.iter().any(|o| o == "*");
        Some(Arc::new(Cors {
            origins: (!any).then(|| {
                s.allowed_origins
                    .iter()
                    .map(|o| o.to_ascii_lowercase())
                    .collect()
            }),
            all_routes: s.all_routes,
        }))
    }

    /// The routes a browser client calls with a user token (and the client script itself).
    fn applies(&self, path: &str) -> bool {
        self.all_routes
            || path == "/api/v1/inbox"
            || path.starts_with("/api/v1/inbox/")
            || path.starts_with("/api/v1/me/")
            || path == "/message/collectMessage"
            || path == "/herald.js"
            || path == "/herald-inbox.js"
            || path == "/events"
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            None => Some(HeaderValue::from_static("*")),
            Some(list) => {
                let o = origin.to_str().ok()?;
                list.iter()
                    .any(|a| a.eq_ignore_ascii_case(o))
                    .then(|| origin.clone())
            }
        }
    }

    fn vary(&self, headers: &mut HeaderMap) {
        // The answer depends on Origin only when it echoes one of a list.
        if self.origins.is_some() {
            headers.append(VARY, HeaderValue::from_static("origin"));
        }
    }
}

/// Wrap the whole router (routes and fallbacks) when CORS is configured.
pub fn apply(router: Router, cors: Option<Arc<Cors>>) -> Router {
    match cors {
        Some(cors) => router.layer(axum::middleware::from_fn_with_state(cors, handle)),
        None => router,
    }
}

async fn handle(State(cors): State<Arc<Cors>>, req: Request, next: Next) -> Response {
    if !cors.applies(req.uri().path()) {
        return next.run(req).await;
    }
    let allowed = req.headers().get(ORIGIN).and_then(|o| cors.allow(o));
    let preflight = req.method() == Method::OPTIONS
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    if let (true, Some(origin)) = (preflight, &allowed) {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
        cors.vary(h);
        return resp;
    }
    // A preflight from an origin that is not allowed goes on to the router (405): the
    // browser sees no CORS headers and refuses the request.
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Some(origin) = allowed {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    cors.vary(h);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], all_routes: bool) -> Arc<Cors> {
        Cors::from_settings(&CorsSettings {
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            all_routes,
        })
        .unwrap()
    }

    #[test]
    fn off_by_default() {
        assert!(Cors::from_settings(&CorsSettings::default()).is_none());
    }

    #[test]
    fn user_routes_only_unless_all_routes() {
        let c = cors(&["*"], false);
        for p in [
            "/api/v1/inbox",
            "/api/v1/inbox/collect",
            "/api/v1/me/devices",
            "/api/v1/me/devices/7",
            "/message/collectMessage",
            "/herald.js",
            "/events",
        ] {
            assert!(c.applies(p), "{p}");
        }
        for p in [
            "/api/v1/messages",
            "/api/v1/inboxes",
            "/metrics",
            "/message/sendMessage",
        ] {
            assert!(!c.applies(p), "{p}");
        }
        assert!(cors(&["*"], true).applies("/api/v1/messages"));
    }

    #[test]
    fn origins_match_exactly_ignoring_case() {
        let c = cors(&["https://App.example.com"], false);
        let ok = HeaderValue::from_static("https://app.example.com");
        assert_eq!(c.allow(&ok), Some(ok.clone()));
        for bad in [
            "https://app.example.com.evil.test",
            "http://app.example.com",
            "https://app.example.com:8443",
            "null",
        ] {
            assert_eq!(c.allow(&HeaderValue::from_static(bad)), None, "{bad}");
        }
        let any = cors(&["*"], false);
        assert_eq!(any.allow(&ok).unwrap(), "*");
    }
}
