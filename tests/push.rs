//! Push end to end: a browser registers its Web Push subscription with its user token, a
//! service sends a templated message on a `push.webpush` instance from `[channels.*]`, and a
//! local push service (the crate's, shared) verifies the VAPID token and decrypts the body
//! as a browser would. A subscription the service says is gone (410) is deactivated.
//!
//! FCM and APNs the same way, against the crate's fake vendors: Google's OAuth token
//! endpoint (verifying the RS256 assertion) with the FCM HTTP v1 API, and Apple's provider
//! API over HTTP/2 (verifying the ES256 provider token). A token the vendor calls
//! unregistered is deactivated, and the access / provider token is reused.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use herald_channel_push::testing::webpush as service;
use herald_channel_push::testing::{apns as apns_service, fcm as fcm_service, ManualClock};
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

// ---------------------------------------------------------------------------------------------
// FCM and APNs
// ---------------------------------------------------------------------------------------------

/// Herald with one channel instance, `name`, of the given settings.
async fn app_with_channel(name: &str, table: &[(&str, String)]) -> TestApp {
    let mut t = toml::Table::new();
    for (k, v) in table {
        t.insert((*k).into(), toml::Value::String(v.clone()));
    }
    let name = name.to_owned();
    spawn_app_with(move |s| {
        s.channels.insert(name, t);
    })
    .await
}

async fn register_token(app: &TestApp, user: &str, platform: &str, token: &str) -> Value {
    let body = json!({"platform": platform, "token": token});
    let (st, d) = app
        .request(
            Method::POST,
            "/api/v1/me/devices",
            Some(&app.token(user)),
            Some(&body),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    d
}

/// The user's devices once one of them is deactivated (polled, with a deadline).
async fn wait_deactivated(app: &TestApp, user: &str) -> Value {
    let token = app.token(user);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, d) = app
            .request(Method::GET, "/api/v1/me/devices", Some(&token), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{d}");
        if d.as_array().unwrap().iter().any(|x| x["active"] == false) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "no device was deactivated within the deadline: {d}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Exactly one deactivated device, `dead`, with a reason containing `reason`; the others
/// are active.
fn assert_only_dead(devices: &Value, dead: &Value, reason: &str) {
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 2, "{devices:?}");
    for d in devices {
        if d["id"] == dead["id"] {
            assert_eq!(d["active"], false, "{d}");
            let why = d["deactivatedReason"].as_str().unwrap_or_default();
            assert!(why.contains(reason), "{d}");
        } else {
            assert_eq!(d["active"], true, "{d}");
        }
    }
}

#[tokio::test]
async fn fcm_reaches_the_live_token_and_an_unregistered_one_is_deactivated() {
    let google = fcm_service::Google::start().await;
    let app = app_with_channel(
        "fcm",
        &[
            ("kind", "push.fcm".into()),
            ("service_account", google.service_account().to_string()),
            ("endpoint", google.endpoint()),
            ("timeout", "5s".into()),
        ],
    )
    .await;
    let gone = register_token(&app, "42", "fcm", "fcm-token-gone").await;
    register_token(&app, "42", "fcm", "fcm-token-live").await;
    google.script("fcm-token-gone", 404, "UNREGISTERED", None);

    let id = send_ok(
        &app,
        json!({"title": "Results", "content": "Your report is ready", "receivers": ["42"], "channels": ["fcm"]}),
    )
    .await;
    app.wait_delivery(&id, "42", "fcm", "sent", |d| status(d) == "sent")
        .await;
    google.assert_no_problems();
    let (messages, bearers, issued) =
        google.seen(|s| (s.messages.clone(), s.bearers.clone(), s.issued.clone()));
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let m = &messages[0];
    assert_eq!(m["token"], "fcm-token-live");
    assert_eq!(
        m["notification"],
        json!({"title": "Results", "body": "Your report is ready"})
    );
    assert_eq!(m["data"]["messageId"], id.as_str());
    // Sent with an access token the token endpoint issued for a verified assertion.
    assert_eq!(bearers.len(), 1);
    assert!(issued.contains(&bearers[0]), "{bearers:?} / {issued:?}");

    let devices = wait_deactivated(&app, "42").await;
    assert_only_dead(&devices, &gone, "UNREGISTERED");

    // The next message goes to the live token only, with the cached access token.
    let id2 = send_ok(
        &app,
        json!({"title": "Again", "content": "x", "receivers": ["42"], "channels": ["fcm"]}),
    )
    .await;
    app.wait_delivery(&id2, "42", "fcm", "sent", |d| status(d) == "sent")
        .await;
    google.assert_no_problems();
    let (messages, token_fetches, sends) =
        google.seen(|s| (s.messages.clone(), s.token_fetches, s.sends));
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["token"], "fcm-token-live");
    assert_eq!(sends, 3, "the deactivated token is not tried again");
    assert_eq!(token_fetches, 1, "one access token for both messages");
    app.shutdown().await;
}

#[tokio::test]
async fn apns_reaches_the_live_token_over_http2_and_a_410_is_deactivated() {
    let (pem, public) = apns_service::p8_key();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let apple = apns_service::Apple::start(public, ManualClock::at_unix_secs(now)).await;
    let app = app_with_channel(
        "apns",
        &[
            ("kind", "push.apns".into()),
            ("team_id", apns_service::TEAM_ID.into()),
            ("key_id", apns_service::KEY_ID.into()),
            ("private_key", pem),
            ("topic", apns_service::TOPIC.into()),
            ("endpoint", apple.endpoint()),
            ("timeout", "5s".into()),
        ],
    )
    .await;
    let (dead_token, live_token) = (apns_service::device(9), apns_service::device(1));
    let gone = register_token(&app, "42", "apns", &dead_token).await;
    register_token(&app, "42", "apns", &live_token).await;
    apple.script(&dead_token, 410, "Unregistered", None);

    let id = send_ok(
        &app,
        json!({"title": "Results", "content": "Your report is ready", "receivers": ["42"], "channels": ["apns"]}),
    )
    .await;
    app.wait_delivery(&id, "42", "apns", "sent", |d| status(d) == "sent")
        .await;
    apple.assert_no_problems();
    let accepted = apple.seen(|s| s.accepted.clone());
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    let (device, headers, body) = &accepted[0];
    assert_eq!(device, &live_token);
    assert_eq!(headers["apns-topic"], apns_service::TOPIC);
    assert_eq!(headers["apns-push-type"], "alert");
    assert_eq!(headers["apns-collapse-id"], id.as_str());
    assert_eq!(
        body["aps"]["alert"],
        json!({"title": "Results", "body": "Your report is ready"})
    );
    assert_eq!(body["messageId"], id.as_str());

    let devices = wait_deactivated(&app, "42").await;
    assert_only_dead(&devices, &gone, "Unregistered");

    // The next message goes to the live token only, with the same provider token.
    let id2 = send_ok(
        &app,
        json!({"title": "Again", "content": "x", "receivers": ["42"], "channels": ["apns"]}),
    )
    .await;
    app.wait_delivery(&id2, "42", "apns", "sent", |d| status(d) == "sent")
        .await;
    apple.assert_no_problems();
    let (accepted, requests) = apple.seen(|s| (s.accepted.clone(), s.requests));
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[1].0, live_token);
    assert_eq!(requests, 3, "the deactivated token is not tried again");
    assert_eq!(apple.distinct_tokens(), 1, "one provider token for both");
    app.shutdown().await;
}
