//! Limits and abuse: API keys with scopes, per-key send rate limits, the per-IP WebSocket
//! handshake limit and CORS — over real HTTP on 127.0.0.1. Limits are per minute so the
//! burst boundary is deterministic: nothing here depends on timing.

mod common;

use common::*;
use herald::config::{ApiKeySettings, Secret, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;

const SEND_KEY: &str = "send-only-key-0123456789abcdef";
const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

fn key(name: &str, secret: &str, scopes: &[&str], rate_limit: Option<&str>) -> ApiKeySettings {
    ApiKeySettings {
        name: name.into(),
        key: Secret::new(secret),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        rate_limit: rate_limit.map(str::to_owned),
    }
}

fn with_keys(s: &mut Settings) {
    s.api_keys = vec![
        key("reports-service", SEND_KEY, &["send"], None),
        key("ops", ADMIN_KEY, &["admin"], None),
    ];
}

async fn send_with(app: &TestApp, key: &str, body: &Value) -> (StatusCode, Value) {
    app.request(Method::POST, "/api/v1/messages", Some(key), Some(body))
        .await
}

async fn seed_send_with(app: &TestApp, key: &str, title: &str) -> (StatusCode, Value) {
    let body = json!({"content": "c", "receiver": ["42"], "title": title, "type": 0});
    app.request(Method::POST, "/message/sendMessage", Some(key), Some(&body))
        .await
}

async fn metrics(app: &TestApp) -> String {
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.unwrap()
}

#[track_caller]
fn assert_metric(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "metrics lack `{line}`:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Scopes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn send_only_key_sends_but_gets_403_on_management_routes() {
    let app = spawn_app_with(with_keys).await;
    let (status, body) = send_with(&app, SEND_KEY, &msg("hello", &["42"])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, body) = seed_send_with(&app, SEND_KEY, "seed hello").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    for (method, path) in [
        (Method::GET, "/api/v1/messages".to_owned()),
        (Method::GET, format!("/api/v1/messages/{id}")),
        (Method::DELETE, format!("/api/v1/messages/{id}")),
        (Method::GET, "/api/v1/clients".to_owned()),
        (Method::GET, "/api/v1/channels".to_owned()),
        (Method::GET, "/api/v1/recipients/42".to_owned()),
        (Method::GET, "/api/v1/stats/deliveries".to_owned()),
        (Method::GET, "/message/getMessagePage".to_owned()),
        (Method::GET, "/message/getWebSocketClients".to_owned()),
        (Method::POST, format!("/message/deleteMessageById?id={id}")),
    ] {
        let (status, body) = app
            .request(method.clone(), &path, Some(SEND_KEY), None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        let err = assert_error_body(&body);
        assert!(
            err.contains("\"admin\"") && err.contains("reports-service"),
            "{method} {path}: the error names the missing scope and the key: {err}"
        );
        assert!(!err.contains(SEND_KEY), "the key leaked: {err}");
    }
    // The 403s changed nothing: both messages are still there.
    assert_eq!(app.total().await, 2);
}

#[tokio::test]
async fn admin_key_sends_and_manages() {
    let app = spawn_app_with(with_keys).await;
    let (status, body) = send_with(&app, ADMIN_KEY, &msg("by admin", &["42"])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, body) = seed_send_with(&app, ADMIN_KEY, "seed by admin").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = app
        .request(Method::GET, "/api/v1/messages", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 2);
    let (status, _) = app
        .request(Method::GET, "/api/v1/clients", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .request(
            Method::DELETE,
            &format!("/api/v1/messages/{id}"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn main_key_keeps_every_scope_next_to_extra_keys() {
    let app = spawn_app_with(with_keys).await;
    send_ok(&app, msg("main", &["42"])).await;
    let (status, body) = app.api_get("/api/v1/messages").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app.api_get("/api/v1/clients").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_or_missing_key_is_401_not_403() {
    let app = spawn_app_with(with_keys).await;
    let wrong = format!("{SEND_KEY}x");
    let user_token = app.token("42");
    for (what, auth) in [
        ("wrong key", Some(wrong.as_str())),
        ("prefix of a key", Some(&SEND_KEY[..SEND_KEY.len() - 1])),
        ("user token", Some(user_token.as_str())),
        ("no key", None),
    ] {
        for (method, path) in [
            (Method::POST, "/api/v1/messages"),
            (Method::GET, "/api/v1/messages"),
        ] {
            let resp = app
                .client
                .request(method.clone(), app.url(path))
                .json(&msg("x", &["42"]));
            let resp = match auth {
                Some(a) => resp.bearer_auth(a),
                None => resp,
            };
            let resp = resp.send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{what}: {method} {path}"
            );
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            let (_, body) = read_response(resp).await;
            assert_error_body(&body);
        }
    }
    assert_eq!(app.total().await, 0);
}

// ---------------------------------------------------------------------------------------------
// Per-key send limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn per_key_send_limit_answers_429_with_retry_after_and_stores_nothing() {
    let app = spawn_app_with(|s| {
        s.api_keys = vec![
            key("reports-service", SEND_KEY, &["send"], Some("2/min")),
            key("ops", ADMIN_KEY, &["admin"], Some("1/min")),
        ];
    })
    .await;
    // The burst: two sends, on either send route.
    let (status, body) = send_with(&app, SEND_KEY, &msg("one", &["42"])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = seed_send_with(&app, SEND_KEY, "two").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // The third is refused before anything is read or stored, on both routes.
    for route in ["/api/v1/messages", "/message/sendMessage"] {
        let resp = app
            .client
            .post(app.url(route))
            .bearer_auth(SEND_KEY)
            .json(
                &json!({"title": "three", "content": "c", "receivers": ["42"], "receiver": ["42"]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{route}");
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .expect("Retry-After is whole seconds");
        // "2/min": one send every 30 s after the burst.
        assert!((1..=30).contains(&retry), "Retry-After {retry}");
        let (_, body) = read_response(resp).await;
        let err = assert_error_body(&body);
        assert!(
            err.contains("reports-service") && err.contains("2/min"),
            "{err}"
        );
    }
    // Even an invalid body is refused by the limit first (nothing parsed, 429 not 400).
    let (status, _) = app
        .request_raw(
            Method::POST,
            "/api/v1/messages",
            Some(SEND_KEY),
            "{not json",
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    assert_eq!(app.total().await, 2, "nothing stored for refused sends");

    // Other keys have their own budget; the main key has none.
    let (status, _) = send_with(&app, ADMIN_KEY, &msg("ops one", &["42"])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = send_with(&app, ADMIN_KEY, &msg("ops two", &["42"])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // An admin key's limit is on sends only: it still manages.
    let (status, _) = app
        .request(Method::GET, "/api/v1/messages", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for i in 0..5 {
        send_ok(&app, msg(&format!("main {i}"), &["42"])).await;
    }

    let text = metrics(&app).await;
    assert_metric(
        &text,
        "herald_api_rate_limited_total{key=\"reports-service\"} 3",
    );
    assert_metric(&text, "herald_api_rate_limited_total{key=\"ops\"} 1");
    assert!(!text.contains("key=\"api_key\""), "{text}");
    assert!(!text.contains(SEND_KEY) && !text.contains(ADMIN_KEY));
}

#[tokio::test]
async fn main_key_send_limit() {
    let app = spawn_app_with(|s| s.api_key_rate_limit = Some("1/min".into())).await;
    send_ok(&app, msg("one", &["42"])).await;
    let (status, body) = send(&app, msg("two", &["42"])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(assert_error_body(&body).contains("\"api_key\""));
    // Reading is not limited.
    assert_eq!(app.total().await, 1);
    assert_metric(
        &metrics(&app).await,
        "herald_api_rate_limited_total{key=\"api_key\"} 1",
    );
}

// ---------------------------------------------------------------------------------------------
// WebSocket handshakes per IP
// ---------------------------------------------------------------------------------------------

/// The HTTP answer to a handshake that was refused.
async fn refused_handshake(
    app: &TestApp,
    token: &str,
) -> tungstenite::http::Response<Option<Vec<u8>>> {
    match ws_try_connect(&app.ws_url(&format!("/websocket/{token}"))).await {
        Ok(_) => panic!("the handshake was upgraded"),
        Err(tungstenite::Error::Http(resp)) => *resp,
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

#[tokio::test]
async fn websocket_handshakes_over_the_per_ip_limit_get_429_without_upgrade() {
    let app = spawn_app_with(|s| s.websocket.handshake_rate_limit = Some("2/min".into())).await;
    let token = app.token("42");
    let (_a, _) = ws_login(&app, &token).await;
    let (_b, _) = ws_login(&app, &token).await;

    let resp = refused_handshake(&app, &token).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
    assert!(assert_error_body(&body).contains("handshake"), "{body}");

    // Checked before the token: a bad token over the limit is a 429, not a 401. The query
    // form shares the budget.
    assert_eq!(refused_handshake(&app, "not-a-token").await.status(), 429);
    match ws_try_connect(&app.ws_url(&format!("/websocket?token={token}"))).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| "upgrade")),
    }

    // Only the two admitted sessions exist.
    assert_eq!(app.clients().await.len(), 2);
    let text = metrics(&app).await;
    assert_metric(&text, "herald_ws_handshakes_rate_limited_total 3");
    assert_metric(&text, "herald_handshakes_rejected_total 0");
}

#[tokio::test]
async fn websocket_handshakes_are_not_limited_by_default() {
    let app = spawn_app().await;
    // Many more than any sensible per-IP default, all refused for their token (401).
    for _ in 0..120 {
        assert_eq!(refused_handshake(&app, "bad").await.status(), 401);
    }
    ws_login(&app, &app.token("42")).await;
    assert_metric(
        &metrics(&app).await,
        "herald_ws_handshakes_rate_limited_total 0",
    );
}

// ---------------------------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------------------------

const ORIGIN: &str = "https://app.example.com";

async fn preflight(app: &TestApp, path: &str, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

async fn get_from(
    app: &TestApp,
    path: &str,
    origin: &str,
    auth: Option<&str>,
) -> reqwest::Response {
    let req = app.client.get(app.url(path)).header("origin", origin);
    match auth {
        Some(a) => req.bearer_auth(a),
        None => req,
    }
    .send()
    .await
    .unwrap()
}

#[tokio::test]
async fn cors_for_the_browser_client_when_configured() {
    let app = spawn_app_with(|s| s.http.cors.allowed_origins = vec![ORIGIN.into()]).await;
    let token = app.token("42");

    for path in [
        "/api/v1/inbox/collect",
        "/api/v1/me/devices",
        "/api/v1/inbox",
    ] {
        let resp = preflight(&app, path, ORIGIN).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{path}");
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], ORIGIN);
        let methods = h["access-control-allow-methods"].to_str().unwrap();
        assert!(
            methods.contains("POST") && methods.contains("DELETE"),
            "{methods}"
        );
        let headers = h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        for needed in ["authorization", "content-type", "idempotency-key"] {
            assert!(headers.contains(needed), "{headers}");
        }
        assert!(h.contains_key("access-control-max-age"));
        assert!(h.get("access-control-allow-credentials").is_none());
    }

    // The actual request, and its errors, carry the origin.
    let resp = get_from(&app, "/api/v1/inbox", ORIGIN, Some(&token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], ORIGIN);
    assert!(resp.headers()["vary"]
        .to_str()
        .unwrap()
        .to_lowercase()
        .contains("origin"));
    let expose = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(expose.to_lowercase().contains("retry-after"), "{expose}");
    let resp = get_from(&app, "/api/v1/inbox", ORIGIN, None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["access-control-allow-origin"], ORIGIN);

    // Another origin gets nothing, and its preflight fails.
    let other = "https://evil.example";
    let resp = get_from(&app, "/api/v1/inbox", other, Some(&token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let resp = preflight(&app, "/api/v1/inbox", other).await;
    assert_ne!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    // The management API is not opened to browsers unless `all_routes` says so.
    let resp = get_from(&app, "/api/v1/messages", ORIGIN, Some(&app.api_key)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let resp = preflight(&app, "/api/v1/messages", ORIGIN).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cors_any_origin_on_all_routes() {
    let app = spawn_app_with(|s| {
        s.http.cors.allowed_origins = vec!["*".into()];
        s.http.cors.all_routes = true;
    })
    .await;
    let resp = preflight(&app, "/api/v1/messages", ORIGIN).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let resp = get_from(
        &app,
        "/api/v1/messages",
        "http://localhost:3000",
        Some(&app.api_key),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn no_cors_headers_unless_configured() {
    let app = spawn_app().await;
    let resp = get_from(&app, "/api/v1/inbox", ORIGIN, Some(&app.token("42"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp
        .headers()
        .keys()
        .all(|k| !k.as_str().starts_with("access-control-")));
    let resp = preflight(&app, "/api/v1/inbox", ORIGIN).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_limits_configuration_stops_the_start_naming_the_key() {
    type Tweak = Box<dyn Fn(&mut Settings)>;
    let cases: Vec<(&str, Tweak)> = vec![
        (
            "api_keys[0] (\"reports\").scopes",
            Box::new(|s| s.api_keys = vec![key("reports", SEND_KEY, &["sned"], None)]),
        ),
        (
            "api_keys[0] (\"reports\").key",
            Box::new(|s| s.api_keys = vec![key("reports", "", &["send"], None)]),
        ),
        (
            "api_keys[1] (\"b\").key",
            Box::new(|s| {
                s.api_keys = vec![
                    key("a", SEND_KEY, &["send"], None),
                    key("b", SEND_KEY, &["admin"], None),
                ]
            }),
        ),
        (
            "api_keys[1] (\"a\").name",
            Box::new(|s| {
                s.api_keys = vec![
                    key("a", SEND_KEY, &["send"], None),
                    key("a", ADMIN_KEY, &["admin"], None),
                ]
            }),
        ),
        (
            "api_keys[0] (\"a\").rate_limit",
            Box::new(|s| s.api_keys = vec![key("a", SEND_KEY, &["send"], Some("lots"))]),
        ),
        (
            "api_key_rate_limit",
            Box::new(|s| s.api_key_rate_limit = Some("5/fortnight".into())),
        ),
        (
            "websocket.handshake_rate_limit",
            Box::new(|s| s.websocket.handshake_rate_limit = Some("-1/s".into())),
        ),
        (
            "http.cors.allowed_origins[0]",
            Box::new(|s| s.http.cors.allowed_origins = vec!["https://app.example.com/".into()]),
        ),
    ];
    for (expect, tweak) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::for_data_dir(dir.path());
        tweak(&mut settings);
        let err = match herald::start(settings).await {
            Ok(_) => panic!("started despite a bad {expect}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expect), "{err:?} should name {expect}");
        assert!(!err.contains(SEND_KEY), "the key leaked: {err}");
    }
}

#[test]
fn limits_load_from_herald_toml_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[api_keys]]
name = "reports-service"
key = "{SEND_KEY}"
scopes = ["send"]
rate_limit = "50/s"

[[api_keys]]
name = "ops"
key = "{ADMIN_KEY}"
scopes = ["admin"]

[http.cors]
allowed_origins = ["https://app.example.com"]

[websocket]
handshake_rate_limit = "20/s"
"#
        ),
    )
    .unwrap();
    let env = vec![("HERALD_API_KEY_RATE_LIMIT".to_owned(), "100/min".to_owned())];
    let s = Settings::load_from(Some(&file), env, &Default::default()).unwrap();
    assert_eq!(s.api_keys.len(), 2);
    assert_eq!(s.api_keys[0].name, "reports-service");
    assert_eq!(s.api_keys[0].key.expose(), SEND_KEY);
    assert_eq!(s.api_keys[0].rate_limit.as_deref(), Some("50/s"));
    assert_eq!(s.api_keys[1].scopes, ["admin"]);
    assert_eq!(s.api_key_rate_limit.as_deref(), Some("100/min"));
    assert_eq!(s.http.cors.allowed_origins, ["https://app.example.com"]);
    assert_eq!(s.websocket.handshake_rate_limit.as_deref(), Some("20/s"));
    let debug = format!("{s:?}");
    assert!(
        !debug.contains(SEND_KEY) && !debug.contains(ADMIN_KEY),
        "{debug}"
    );

    // A misspelt field of an entry is refused, naming it.
    std::fs::write(
        &file,
        format!("[[api_keys]]\nname = \"a\"\nkey = \"{SEND_KEY}\"\nscope = [\"send\"]\n"),
    )
    .unwrap();
    let err = Settings::load_from(Some(&file), vec![], &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("scope"), "{err}");
}

#[tokio::test]
async fn openapi_documents_403_and_429() {
    let app = spawn_app().await;
    let (status, doc) = app.request(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let responses = |path: &str, method: &str| doc["paths"][path][method]["responses"].clone();
    for (path, method) in [
        ("/api/v1/messages", "post"),
        ("/message/sendMessage", "post"),
    ] {
        let r = responses(path, method);
        assert!(r["403"].is_object() && r["429"].is_object(), "{path}: {r}");
        assert!(
            r["429"]["headers"]["Retry-After"].is_object(),
            "{path}: {r}"
        );
    }
    for (path, method) in [
        ("/api/v1/messages", "get"),
        ("/api/v1/clients", "get"),
        ("/api/v1/recipients/{userId}", "put"),
    ] {
        assert!(
            responses(path, method)["403"].is_object(),
            "{method} {path}"
        );
    }
    assert!(responses("/websocket/{token}", "get")["429"].is_object());
}
