//! Push end to end: a browser registers its Web Push subscription with its user token, a
//! service sends a templated message on a `push.webpush` instance from `[channels.*]`, and a
//! local push service (the crate's, shared) verifies the VAPID token and decrypts the body
//! as a browser would. A subscription the service says is gone (410) is deactivated.

mod common;
#[path = "../channels/push/tests/support/webpush_service.rs"]
mod service;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use service::{random_secret, PushService, Reply};

const SUBJECT: &str = "mailto:ops@herald.example";

async fn app_with_webpush() -> TestApp {
    let key = URL_SAFE_NO_PAD.encode(random_secret().to_bytes());
    spawn_app_clock(
        move |s| {
            let mut t = toml::Table::new();
            for (k, v) in [
                ("kind", "push.webpush"),
                ("vapid_private_key", key.as_str()),
                ("subject", SUBJECT),
                ("timeout", "5s"),
            ] {
                t.insert(k.into(), toml::Value::String(v.into()));
            }
            t.insert(
                "allowed_endpoint_hosts".into(),
                toml::Value::Array(vec![toml::Value::String("127.0.0.1".into())]),
            );
            s.channels.insert("web".into(), t);
            // Retry-After deferrals (120 s) stay well inside a lease.
            s.dispatch.lease = Duration::from_secs(600);
            s.templates.dir =
                Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"));
        },
        Some(herald::clock::ManualClock::default()),
    )
    .await
}

async fn register(app: &TestApp, user: &str, subscription: &str) -> Value {
    let token = app.token(user);
    let body = json!({"platform": "webpush", "subscription": serde_json::from_str::<Value>(subscription).unwrap(), "name": "Firefox"});
    let (st, d) = app
        .request(
            Method::POST,
            "/api/v1/me/devices",
            Some(&token),
            Some(&body),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    d
}

fn status(d: &Value) -> &str {
    d["status"].as_str().unwrap_or_default()
}

fn report() -> Value {
    json!({
        "patient_name": "Li Lei", "report_type": "CT chest", "report_id": "R-77",
        "hospital": "Herald General", "ready_at": "2026-11-29 09:30"
    })
}

#[tokio::test]
async fn a_templated_web_push_reaches_the_browser_encrypted_and_signed() {
    let push = PushService::start(SUBJECT).await;
    let app = app_with_webpush().await;
    register(&app, "42", &push.subscribe("laptop")).await;
    register(&app, "42", &push.subscribe("phone")).await;
    let id = send_ok(
        &app,
        json!({"receivers": ["42"], "channels": ["web"], "template": "report_ready", "data": report()}),
    )
    .await;
    app.wait_delivery(&id, "42", "web", "sent", |d| status(d) == "sent")
        .await;
    assert_eq!(
        push.problems(),
        Vec::<String>::new(),
        "every request passed the checks"
    );
    let got = push.received();
    assert_eq!(got.len(), 2, "both browsers");
    for r in &got {
        // Decrypted by the service with the browser's keys: the push.json rendering.
        assert!(
            r.plaintext["title"].as_str().unwrap().contains("CT chest"),
            "{:?}",
            r.plaintext
        );
        assert_eq!(r.plaintext["data"]["reportId"], "R-77");
        assert_eq!(r.plaintext["id"], id.as_str());
        assert_eq!(r.claims["sub"], SUBJECT);
        assert_eq!(r.claims["aud"], push.origin());
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_gone_subscription_is_deactivated_and_the_rest_still_receive() {
    let push = PushService::start(SUBJECT).await;
    let app = app_with_webpush().await;
    let gone = register(&app, "7", &push.subscribe("old")).await;
    register(&app, "7", &push.subscribe("new")).await;
    push.script("old", [Reply::status(410)]);
    let id = send_ok(
        &app,
        json!({"title": "Maintenance", "content": "Tonight 22:00", "receivers": ["7"], "channels": ["web"]}),
    )
    .await;
    app.wait_delivery(&id, "7", "web", "sent", |d| status(d) == "sent")
        .await;
    let token = app.token("7");
    let mut devices = Value::Null;
    for _ in 0..400 {
        let (_, d) = app
            .request(Method::GET, "/api/v1/me/devices", Some(&token), None)
            .await;
        if d.as_array().unwrap().iter().any(|x| x["active"] == false) {
            devices = d;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let dead = devices
        .as_array()
        .expect("the gone subscription was deactivated within the deadline")
        .iter()
        .find(|x| x["active"] == false)
        .unwrap()
        .clone();
    assert_eq!(dead["id"], gone["id"]);
    assert!(
        dead["deactivatedReason"].as_str().unwrap().contains("410"),
        "{dead}"
    );
    // The admin sees it too; the next push goes to the live subscription only.
    let (_, rec) = app.api_get("/api/v1/recipients/7").await;
    assert_eq!(rec["devices"].as_array().unwrap().len(), 2, "{rec}");
    let before = push.received().len();
    let id2 = send_ok(
        &app,
        json!({"title": "Again", "content": "x", "receivers": ["7"], "channels": ["web"]}),
    )
    .await;
    app.wait_delivery(&id2, "7", "web", "sent", |d| status(d) == "sent")
        .await;
    let after = push.received();
    assert_eq!(after.len(), before + 1);
    assert!(
        after.last().unwrap().subscription.ends_with("new"),
        "{:?}",
        after.last()
    );
    // Throttled by the service: deferred with its Retry-After, sent when it is due.
    push.script(
        "new",
        [Reply::Status(429, vec![("retry-after", "120".to_owned())])],
    );
    let id3 = send_ok(
        &app,
        json!({"title": "Third", "content": "x", "receivers": ["7"], "channels": ["web"]}),
    )
    .await;
    let d = app.wait_retry_scheduled(&id3, "7", "web", 1).await;
    assert!(
        d["error"].as_str().unwrap().starts_with("rate_limited:"),
        "{d}"
    );
    app.advance(Duration::from_secs(121));
    app.wait_delivery(&id3, "7", "web", "sent after Retry-After", |d| {
        status(d) == "sent"
    })
    .await;
    app.shutdown().await;
}
