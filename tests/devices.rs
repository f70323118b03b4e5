//! Push devices: registration by the user (`/api/v1/me/devices`), the admin view through the
//! recipients API, delivery to every active device of a platform, and dead tokens reported
//! by a channel → the device is deactivated (kept, with the reason) and counted.

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use herald_channel::{
    async_trait, Accepted, AddressKind, BuildContext, Channel, ChannelDescriptor, ChannelError,
    ConfigError, Outgoing,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Every hand-over the scripted push channel saw: the device tokens it was given.
fn seen() -> &'static Mutex<Vec<Vec<String>>> {
    static S: OnceLock<Mutex<Vec<Vec<String>>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// A push channel for tests: tokens starting with `dead-` are gone at the "vendor".
struct FakePush;

#[async_trait]
impl Channel for FakePush {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        seen()
            .lock()
            .unwrap()
            .push(out.devices.iter().map(|d| d.token.clone()).collect());
        let mut ok = 0;
        for d in &out.devices {
            if d.token.starts_with("dead-") {
                out.dead_devices.mark(d.id, "UNREGISTERED");
            } else {
                ok += 1;
            }
        }
        if ok > 0 {
            Ok(Accepted::Sent { provider_id: None })
        } else {
            Err(ChannelError::bad_recipient("all devices unregistered"))
        }
    }
}

fn build(_ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    Ok(Arc::new(FakePush))
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: "testpush.fake",
        summary: "fake FCM-like push (tests)",
        address: AddressKind::Device("fcm"),
        presence: false,
        build,
    }
}

async fn app() -> TestApp {
    spawn_app_with(|s| {
        let mut t = toml::Table::new();
        t.insert("kind".into(), toml::Value::String("testpush.fake".into()));
        s.channels.insert("push".into(), t);
    })
    .await
}

async fn me(
    app: &TestApp,
    user: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let token = app.token(user);
    app.request(method, path, Some(&token), body.as_ref()).await
}

fn subscription() -> Value {
    // A P-256 public key (65 bytes) and a 16-byte auth secret, base64url (RFC 8291 App. A).
    json!({
        "endpoint": "https://push.example.net/push/JzLQ3raZJfFBR0aqvOMsLrt54w4rJUsV",
        "keys": {
            "p256dh": "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "auth": "BTBZMqHH6r4Tts7J_aSIgg"
        }
    })
}

#[tokio::test]
async fn users_register_their_own_devices_idempotently() {
    let app = app().await;
    let (st, a) = me(
        &app,
        "42",
        Method::POST,
        "/api/v1/me/devices",
        Some(json!({"platform": "fcm", "token": "fcm-token-1", "name": "Pixel"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(
        (a["platform"].as_str(), a["active"].as_bool()),
        (Some("fcm"), Some(true))
    );
    // The same token again: the same device, 200.
    let (st, again) = me(
        &app,
        "42",
        Method::POST,
        "/api/v1/me/devices",
        Some(json!({"platform": "fcm", "token": "fcm-token-1"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again["id"], a["id"]);
    assert_eq!(again["name"], "Pixel", "a missing name keeps the old one");
    let (st, w) = me(
        &app,
        "42",
        Method::POST,
        "/api/v1/me/devices",
        Some(json!({"platform": "webpush", "subscription": subscription()})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{w}");
    assert_eq!(
        w["token"],
        subscription()["endpoint"],
        "webpush shows the endpoint"
    );

    // Bad input: 422 naming the field, nothing stored.
    for (body, field) in [
        (json!({"platform": "pigeon", "token": "x"}), "platform"),
        (json!({"platform": "fcm"}), "token"),
        (json!({"platform": "apns", "token": "not hex!"}), "token"),
        (json!({"platform": "webpush", "token": "x"}), "subscription"),
        (
            json!({"platform": "webpush", "subscription": {"endpoint": "ftp://x", "keys": {}}}),
            "subscription.endpoint",
        ),
        (
            json!({"platform": "webpush", "subscription": {"endpoint": "https://x", "keys": {"p256dh": "AAAA", "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}}),
            "subscription.keys.p256dh",
        ),
    ] {
        let (st, e) = me(
            &app,
            "42",
            Method::POST,
            "/api/v1/me/devices",
            Some(body.clone()),
        )
        .await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {e}");
        assert_eq!(e["field"], field, "{body}: {e}");
    }
    let (st, list) = me(&app, "42", Method::GET, "/api/v1/me/devices", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    // Another user sees none of it and cannot delete it; no token → 401.
    let (_, other) = me(&app, "7", Method::GET, "/api/v1/me/devices", None).await;
    assert_eq!(other, json!([]));
    let id = a["id"].as_i64().unwrap();
    let (st, _) = me(
        &app,
        "7",
        Method::DELETE,
        &format!("/api/v1/me/devices/{id}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = app
        .request(Method::GET, "/api/v1/me/devices", None, None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // The API key is not a user token.
    let key = app.api_key.clone();
    let (st, _) = app
        .request(Method::GET, "/api/v1/me/devices", Some(&key), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Admins see and manage them through the recipients API.
    let (st, rec) = app.api_get("/api/v1/recipients/42").await;
    assert_eq!(st, StatusCode::OK, "{rec}");
    assert_eq!(rec["devices"].as_array().unwrap().len(), 2, "{rec}");
    let (st, rec) = app
        .api(
            Method::PUT,
            "/api/v1/recipients/42",
            Some(&json!({"name": "Alice", "devices": [{"platform": "apns", "token": "ab12cd34"}]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{rec}");
    assert_eq!(rec["devices"].as_array().unwrap().len(), 3, "{rec}");
    let (st, e) = app
        .api(
            Method::PUT,
            "/api/v1/recipients/42",
            Some(&json!({"devices": [{"platform": "fcm"}]})),
        )
        .await;
    assert_eq!(
        (st, e["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("devices[0].token")),
        "{e}"
    );
    let (st, _) = app
        .api(
            Method::DELETE,
            &format!("/api/v1/recipients/42/devices/{id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = me(
        &app,
        "42",
        Method::GET,
        &format!("/api/v1/me/devices/{id}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    app.shutdown().await;
}

/// `subscription()` with a `p256dh` of the right length and form (65 bytes, 0x04 ‖ x ‖ y)
/// that is not a point on P-256: y is off by one bit.
fn off_curve_subscription() -> Value {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut sub = subscription();
    let mut key = b64.decode(sub["keys"]["p256dh"].as_str().unwrap()).unwrap();
    assert_eq!((key.len(), key[0]), (65, 4));
    key[64] ^= 1;
    sub["keys"]["p256dh"] = json!(b64.encode(key));
    sub
}

#[tokio::test]
async fn a_webpush_key_that_is_not_a_p256_point_is_refused_with_422() {
    let app = app().await;
    let (st, e) = me(
        &app,
        "42",
        Method::POST,
        "/api/v1/me/devices",
        Some(json!({"platform": "webpush", "subscription": off_curve_subscription()})),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["field"], "subscription.keys.p256dh", "{e}");
    let error = assert_error_body(&e);
    assert!(error.contains("P-256"), "{error}");
    assert!(
        !error.contains("push.example.net"),
        "the endpoint is a capability: {error}"
    );
    let (_, list) = me(&app, "42", Method::GET, "/api/v1/me/devices", None).await;
    assert_eq!(list, json!([]), "nothing is stored");

    // The same check for an admin's PUT of a recipient: nothing is stored either.
    let (st, e) = app
        .api(
            Method::PUT,
            "/api/v1/recipients/43",
            Some(&json!({"devices": [{"platform": "webpush", "subscription": off_curve_subscription()}]})),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["field"], "devices[0].subscription.keys.p256dh", "{e}");
    let (st, _) = app.api_get("/api/v1/recipients/43").await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // The browser's real key is accepted.
    let (st, d) = me(
        &app,
        "42",
        Method::POST,
        "/api/v1/me/devices",
        Some(json!({"platform": "webpush", "subscription": subscription()})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    app.shutdown().await;
}

/// A token registered by another user moves to them (what a push token means when a
/// device changes hands), the move is in the log by device and user id without the token,
/// and the first owner's app takes it back by registering again: it cannot be used to keep
/// a user's notifications away for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_registered_by_another_user_moves_is_logged_and_can_be_taken_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = spawn_process_with_secrets(dir.path()).await;
    let token = "fcm-token-of-alices-phone-0123456789";
    let register = |user: &'static str| {
        let server = &server;
        async move {
            let resp = server
                .client
                .post(format!("{}/api/v1/me/devices", server.base))
                .bearer_auth(proc_token(user))
                .json(&json!({"platform": "fcm", "token": token}))
                .send()
                .await
                .expect("POST /api/v1/me/devices");
            read_response(resp).await
        }
    };
    let list = |user: &'static str| {
        let server = &server;
        async move {
            let resp = server
                .client
                .get(format!("{}/api/v1/me/devices", server.base))
                .bearer_auth(proc_token(user))
                .send()
                .await
                .expect("GET /api/v1/me/devices");
            read_response(resp).await.1
        }
    };
    // The log as text: tracing colours its fields (ANSI escapes) even into a file.
    let log_text = || {
        let raw = server.log_text();
        let mut text = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|c| c.is_ascii_alphabetic());
            } else {
                text.push(c);
            }
        }
        text
    };
    let moved_line = |to: &str| {
        log_text()
            .lines()
            .filter(|l| l.contains("moved to this user") && l.contains(&format!("to_user={to}")))
            .count()
    };

    let (st, a) = register("alice").await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    let id = a["id"].as_i64().unwrap();
    // Registering again as alice is no move.
    let (st, _) = register("alice").await;
    assert_eq!(st, StatusCode::OK);

    let (st, b) = register("mallory").await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["id"], id, "the same device, moved");
    assert_eq!(list("alice").await, json!([]));
    assert_eq!(list("mallory").await[0]["id"], id);
    wait_until(DEADLINE, "the move in the log", || async {
        moved_line("mallory") == 1
    })
    .await;
    let log = log_text();
    let line = log.lines().find(|l| l.contains("to_user=mallory")).unwrap();
    assert!(line.contains(&format!("device={id}")), "{line}");

    // Alice's app registers its token again (at start or login): it is hers again.
    let (st, back) = register("alice").await;
    assert_eq!(st, StatusCode::OK, "{back}");
    assert_eq!(list("alice").await[0]["id"], id);
    assert_eq!(list("mallory").await, json!([]));
    wait_until(DEADLINE, "the move back in the log", || async {
        moved_line("alice") == 1
    })
    .await;
    assert_eq!(
        moved_line("mallory"),
        1,
        "alice's own re-registration is no move"
    );

    let log = server.log_text();
    assert!(
        !log.contains(token),
        "the log shows the device token:\n{log}"
    );
}

#[tokio::test]
async fn a_push_goes_to_every_active_device_and_dead_tokens_are_deactivated() {
    let app = app().await;
    for token in ["fcm-live-1", "dead-fcm-2"] {
        let (st, _) = me(
            &app,
            "alice",
            Method::POST,
            "/api/v1/me/devices",
            Some(json!({"platform": "fcm", "token": token})),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    // Another platform's device is not this channel's.
    me(
        &app,
        "alice",
        Method::POST,
        "/api/v1/me/devices",
        Some(json!({"platform": "webpush", "subscription": subscription()})),
    )
    .await;
    let send = |receivers: Value| {
        let app = &app;
        async move {
            send_ok(app, json!({"title": "Report ready", "content": "CT chest", "receivers": receivers, "channels": ["push"]})).await
        }
    };
    let id = send(json!(["alice", "nodevice"])).await;
    let status = |d: &Value| d["status"].as_str().unwrap_or_default().to_owned();
    app.wait_delivery(&id, "alice", "push", "sent", |d| status(d) == "sent")
        .await;
    let d = app.delivery(&id, "nodevice", "push").await;
    assert_eq!(
        (status(&d), d["error"].as_str()),
        ("failed".into(), Some("no_address"))
    );
    let tokens = seen()
        .lock()
        .unwrap()
        .iter()
        .find(|t| t.contains(&"fcm-live-1".to_owned()))
        .cloned()
        .unwrap();
    assert_eq!(
        tokens,
        vec!["fcm-live-1".to_owned(), "dead-fcm-2".to_owned()],
        "every active fcm device"
    );

    // The dead one is deactivated, kept with the reason, and counted.
    wait_until(DEADLINE, "the dead device to be deactivated", || async {
        let list = me(&app, "alice", Method::GET, "/api/v1/me/devices", None)
            .await
            .1;
        list.as_array()
            .unwrap()
            .iter()
            .any(|d| d["active"] == false)
    })
    .await;
    let devices = me(&app, "alice", Method::GET, "/api/v1/me/devices", None)
        .await
        .1;
    let dead = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["active"] == false)
        .unwrap()
        .clone();
    assert_eq!(dead["token"], "dead-fcm-2");
    assert_eq!(dead["deactivatedReason"], "UNREGISTERED");
    assert!(dead["deactivatedAt"].is_string());
    let (_, metrics) = app.request(Method::GET, "/metrics", None, None).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("herald_dead_tokens_total{channel=\"push\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("herald_channel_info{channel=\"push\",kind=\"testpush.fake\"} 1"),
        "pushes by provider: join on `channel`; {metrics}"
    );

    // The next push goes to the live device only; registering the dead token again revives it.
    let id2 = send(json!(["alice"])).await;
    app.wait_delivery(&id2, "alice", "push", "sent", |d| status(d) == "sent")
        .await;
    assert!(seen()
        .lock()
        .unwrap()
        .iter()
        .any(|t| t == &vec!["fcm-live-1".to_owned()]));
    let (st, revived) = me(
        &app,
        "alice",
        Method::POST,
        "/api/v1/me/devices",
        Some(json!({"platform": "fcm", "token": "dead-fcm-2"})),
    )
    .await;
    assert_eq!(
        (st, revived["active"].as_bool()),
        (StatusCode::OK, Some(true))
    );

    // Only dead devices: the delivery fails as bad_recipient, once.
    me(
        &app,
        "bob",
        Method::POST,
        "/api/v1/me/devices",
        Some(json!({"platform": "fcm", "token": "dead-bob"})),
    )
    .await;
    let id3 = send(json!(["bob"])).await;
    let d = app
        .wait_delivery(&id3, "bob", "push", "failed", |d| status(d) == "failed")
        .await;
    assert_eq!(d["attempts"], 1);
    assert!(
        d["error"].as_str().unwrap().starts_with("bad_recipient:"),
        "{d}"
    );
    app.shutdown().await;
}
