//! The HTTP surface: every route of docs/api.md §2 (and the WebSocket routes of
//! docs/websocket.md §1, the SSE route of §7) in one [`router`].

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::state::AppState;
use crate::store::StoreError;

pub mod callbacks;
pub mod clients;
pub mod cors;
pub mod devices;
pub mod dto;
pub use crate::error;
pub mod extract;
pub mod inbox;
pub mod messages;
pub mod recipients;
pub mod seed;
pub mod stats;
pub mod webhooks;

use error::ApiError;

/// The whole application router. Tests can drive it with `tower::ServiceExt::oneshot`.
pub fn router(app: AppState) -> Router {
    let body_limit = app.settings.http.body_limit;
    let cors = cors::Cors::from_settings(&app.settings.http.cors);
    let router = Router::new()
        .route("/websocket/{token}", get(crate::ws::ws_path))
        .route("/websocket", get(crate::ws::ws_query))
        .route("/events", get(crate::ws::sse::events))
        .route("/api/v1/messages", post(messages::send).get(messages::list))
        .route(
            "/api/v1/messages/{id}",
            get(messages::get).delete(messages::delete),
        )
        .route("/api/v1/clients", get(clients::clients))
        .route("/api/v1/channels", get(clients::channels))
        .route(
            "/api/v1/callbacks/{provider}/{instance}",
            post(callbacks::callback),
        )
        .route(
            "/api/v1/recipients/{user_id}",
            get(recipients::get)
                .put(recipients::put)
                .delete(recipients::delete),
        )
        .route("/api/v1/inbox", get(inbox::inbox))
        .route("/api/v1/inbox/counts", get(inbox::counts))
        .route(
            "/api/v1/inbox/{op}",
            post(inbox::change_own).delete(inbox::delete_own),
        )
        .route(
            "/api/v1/recipients/{user_id}/inbox",
            get(inbox::admin_inbox),
        )
        .route(
            "/api/v1/recipients/{user_id}/inbox/counts",
            get(inbox::admin_counts),
        )
        .route(
            "/api/v1/recipients/{user_id}/inbox/{op}",
            post(inbox::admin_change).delete(inbox::admin_delete),
        )
        .route(
            "/api/v1/me/devices",
            post(devices::register).get(devices::list),
        )
        .route(
            "/api/v1/me/devices/{id}",
            get(devices::get).delete(devices::delete),
        )
        .route(
            "/api/v1/recipients/{user_id}/devices/{id}",
            axum::routing::delete(devices::admin_delete),
        )
        .route("/api/v1/inbox/collect", post(inbox::collect))
        .route(
            "/api/v1/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/api/v1/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/api/v1/webhooks/{id}/rotate", post(webhooks::rotate))
        .route("/api/v1/webhooks/{id}/attempts", get(webhooks::attempts))
        .route("/api/v1/webhooks/{id}/redeliver", post(webhooks::redeliver))
        .route("/message/sendMessage", post(seed::send_message))
        .route("/message/getMessagePage", get(seed::get_message_page))
        .route(
            "/message/deleteMessageById",
            post(seed::delete_message_by_id).delete(seed::delete_message_by_id),
        )
        .route(
            "/message/getWebSocketClients",
            get(seed::get_websocket_clients),
        )
        .route("/message/collectMessage", post(seed::collect_message))
        .route("/", get(index))
        .route("/favicon.ico", get(favicon))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs))
        .route("/docs/rapidoc-min.js", get(rapidoc))
        .route("/herald.js", get(herald_js))
        .route("/herald-inbox.js", get(herald_inbox_js))
        .route("/demo", get(demo))
        .route("/admin", get(admin))
        .route("/api/v1/stats/deliveries", get(stats::deliveries))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app);
    // Outermost, so preflights are answered before routing and errors carry the headers.
    cors::apply(router, cors)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// Process is up
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "`{\"status\":\"ok\"}`")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Database reachable and migrations applied
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "`{\"status\":\"ready\"}`"),
    (status = 503, body = error::ErrorBody),
))]
pub async fn readyz(State(app): State<AppState>) -> Response {
    if app.shutdown.is_cancelled() {
        return ApiError::unavailable("shutting down").into_response();
    }
    match app.store.ready().await {
        Ok(()) => Json(serde_json::json!({"status": "ready"})).into_response(),
        // Why the database cannot write (disk full …): logged by the store when it began.
        Err(StoreError::Unavailable(why)) => {
            ApiError::unavailable(format!("database cannot write: {why}"))
                .with_retry_after(5)
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            ApiError::unavailable("database not ready").into_response()
        }
    }
}

/// Prometheus metrics (text format)
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain", description = "Prometheus text exposition")))]
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let mut text = app.metrics.render();
    crate::metrics::write_gauge(
        &mut text,
        "herald_store_queued_writes",
        "Writes waiting for the database (SQLite writer queue).",
        app.store.queued_writes() as i64,
    );
    crate::metrics::write_gauge(
        &mut text,
        "herald_ws_frames_queued",
        "Frames queued for this node's WebSocket sessions (the fan-out backlog).",
        app.backlog.frames() as i64,
    );
    crate::metrics::write_gauge(
        &mut text,
        "herald_store_failing",
        "1 while the database cannot write (see /readyz for why).",
        i64::from(app.store.ready().await.is_err()),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Self-hosted multi-channel notification server. WebSocket frames: see the `websocket` tag and docs/websocket.md in the repository (every frame, close code and the replay and ack rules).",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::ws::ws_path,
        crate::ws::ws_query,
        crate::ws::sse::events,
        messages::send,
        messages::list,
        messages::get,
        messages::delete,
        clients::clients,
        clients::channels,
        callbacks::callback,
        stats::deliveries,
        recipients::put,
        recipients::get,
        recipients::delete,
        devices::register,
        devices::list,
        devices::get,
        devices::delete,
        devices::admin_delete,
        inbox::inbox,
        inbox::counts,
        inbox::change_own,
        inbox::delete_own,
        inbox::admin_inbox,
        inbox::admin_counts,
        inbox::admin_change,
        inbox::admin_delete,
        inbox::collect,
        webhooks::list,
        webhooks::create,
        webhooks::get,
        webhooks::update,
        webhooks::delete,
        webhooks::rotate,
        webhooks::attempts,
        webhooks::redeliver,
        seed::send_message,
        seed::get_message_page,
        seed::delete_message_by_id,
        seed::get_websocket_clients,
        seed::collect_message,
        healthz,
        readyz,
        metrics,
    ),
    components(schemas(error::ErrorBody, dto::SendRequest, dto::SeedSendRequest, dto::UserId)),
    modifiers(&Security),
    tags(
        (name = "messages", description = "Send and track messages (API key)"),
        (name = "inbox", description = "The notification center: a user's inbox, counts and state (user token; per user under /api/v1/recipients with an admin key)"),
        (name = "webhooks", description = "Delivery events out: signed webhook endpoints, their attempts and redelivery (admin API key; docs/webhooks.md)"),
        (name = "websocket", description = "Live push; frames: welcome, message, ack, read, ping/pong, error"),
        (name = "events", description = "Live push over Server-Sent Events (`GET /events`), for networks that block WebSocket: the same frames as `data:` events; acknowledge over REST"),
        (name = "operations", description = "Health, readiness, metrics"),
        (name = "seed-compatible", description = "Routes of the earlier message service, served by the same handlers"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Management API key: the main `api_key` (every scope) or an `[[api_keys]]` entry whose scopes (`send`, `admin`) cover the route (`403` otherwise)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "user_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("User token (HS256 JWT)"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> Response {
    match serde_json::to_string(&openapi()) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "OpenAPI serialization failed");
            ApiError::unavailable("OpenAPI document unavailable").into_response()
        }
    }
}

/// The API reference: RapiDoc rendering `/openapi.json` (schemas resolved, auth, try-it),
/// served from the binary (no CDN).
async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

/// RapiDoc 9.3.8 (MIT, `web/vendor/rapidoc/`), the component `/docs` renders with: a
/// well-kept reference UI (schemas, auth, try-it) rather than a hand-written one. Stored as
/// the package's own gzip file (217 KB instead of 863 KB, in the binary and on the wire);
/// every browser accepts gzip, and a client that does not is told so.
async fn rapidoc(headers: axum::http::HeaderMap) -> Response {
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    if !gzip {
        return ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "this script is served gzip-compressed only: send Accept-Encoding: gzip",
        )
        .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CONTENT_ENCODING, "gzip"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::VARY, "accept-encoding"),
        ],
        include_bytes!("../../web/vendor/rapidoc/rapidoc-min.js.gz").as_slice(),
    )
        .into_response()
}

/// The browser client (`clients/js/herald.js`), an ES module.
async fn herald_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../clients/js/herald.js"),
    )
}

/// The `<herald-inbox>` web component (`clients/js/herald-inbox.js`), an ES module that
/// imports `./herald.js`.
async fn herald_inbox_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../clients/js/herald-inbox.js"),
    )
}

/// The front door: version, health, links to the demo, dashboard and API reference, and
/// the next step.
async fn index() -> Html<String> {
    Html(include_str!("../../web/index.html").replace("{{VERSION}}", env!("CARGO_PKG_VERSION")))
}

/// The icon (SVG; browsers ask for `/favicon.ico` on their own).
async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        include_str!("../../web/favicon.svg"),
    )
}

/// The demo inbox: log in with a user token, watch messages arrive.
async fn demo() -> Html<&'static str> {
    Html(include_str!("../../web/demo.html"))
}

/// The admin dashboard (API key login).
async fn admin() -> Html<&'static str> {
    Html(include_str!("../../web/admin.html"))
}
