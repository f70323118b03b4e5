//! `push.webpush` end to end: the channel, built through its descriptor, against a local
//! push service that verifies VAPID and decrypts every message
//! (`herald_channel_push::testing::webpush`).

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald_channel::{
    testkit, Accepted, AddressKind, BuildContext, Channel, ConfigError, ErrorKind, Outgoing,
    Services,
};
use herald_channel_push::testing::webpush as service;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::SecretKey;
use serde_json::{json, Value};
use service::{random_secret, PushService, Reply};

// The descriptor lives in the library: link it.

const SUBJECT: &str = "mailto:ops@herald.example";

fn build(config: &Value) -> Result<Arc<dyn Channel>, ConfigError> {
    let descriptor = herald_channel::find("push.webpush").expect("registered");
    let services = Services::default();
    (descriptor.build)(BuildContext {
        name: "webpush",
        config,
        services: &services,
    })
}

fn raw_key(secret: &SecretKey) -> String {
    URL_SAFE_NO_PAD.encode(secret.to_bytes())
}

fn public_key(secret: &SecretKey) -> String {
    URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes())
}

/// A channel allowed to reach the loopback push service over plain HTTP.
fn channel(key: &SecretKey, extra: Value) -> Arc<dyn Channel> {
    let mut config = json!({
        "vapid_private_key": raw_key(key),
        "subject": SUBJECT,
        "allowed_endpoint_hosts": ["127.0.0.1"],
        "timeout": "5s",
    });
    for (k, v) in extra.as_object().expect("an object") {
        config[k] = v.clone();
    }
    build(&config).expect("valid")
}

fn out_to(tokens: &[&str]) -> Outgoing {
    testkit::to_devices(
        testkit::message("Report ready", "Your CT report is ready."),
        "42",
        tokens,
    )
}

fn assert_no_problems(server: &PushService) {
    assert_eq!(server.problems(), Vec::<String>::new());
}

#[test]
fn registered_as_a_device_channel() {
    let d = herald_channel::find("push.webpush").expect("registered");
    assert_eq!(d.address, AddressKind::Device("webpush"));
    assert!(!d.presence);
    assert_eq!(d.family(), "push");
}

#[tokio::test]
async fn delivers_an_encrypted_notification_with_vapid() {
    let server = PushService::start(SUBJECT).await;
    let key = random_secret();
    let ch = channel(&key, json!({}));
    let sub = server.subscribe("a");
    let out = out_to(&[&sub]);

    let sent = ch.send(&out).await.expect("sent");
    assert_eq!(
        sent,
        Accepted::Sent {
            provider_id: Some(format!("{}/message/1", server.origin()))
        }
    );
    assert_no_problems(&server);
    assert!(out.dead_devices.take().is_empty());
    let received = server.received();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.subscription, "a");
    assert_eq!(
        r.plaintext,
        json!({
            "title": "Report ready",
            "body": "Your CT report is ready.",
            "id": out.message.id,
        })
    );
    // Defaults: 4 weeks, normal urgency, no topic.
    assert_eq!(r.ttl, "2419200");
    assert_eq!(r.urgency.as_deref(), Some("normal"));
    assert_eq!(r.topic, None);
    assert_eq!(r.content_type.as_deref(), Some("application/octet-stream"));
    assert_eq!(r.record_size, 4096);
    assert_eq!(r.key, public_key(&key));
    assert_eq!(r.claims["aud"], json!(server.origin()));
    assert_eq!(r.claims["sub"], json!(SUBJECT));
}

#[tokio::test]
async fn sends_the_rendering_with_configured_ttl_and_urgency() {
    let server = PushService::start(SUBJECT).await;
    let ch = channel(&random_secret(), json!({"ttl": "1h", "urgency": "high"}));
    let sub = server.subscribe("a");
    let mut out = out_to(&[&sub]);
    out.rendered = Some(testkit::rendered(&[(
        "json",
        r#"{"title": "CT chest ready", "body": "R-2026-0042", "data": {"url": "/reports/R-2026-0042"}}"#,
    )]));
    assert!(matches!(ch.send(&out).await, Ok(Accepted::Sent { .. })));
    assert_no_problems(&server);
    let r = &server.received()[0];
    assert_eq!(r.ttl, "3600");
    assert_eq!(r.urgency.as_deref(), Some("high"));
    assert_eq!(
        r.plaintext,
        json!({
            "title": "CT chest ready",
            "body": "R-2026-0042",
            "data": {"url": "/reports/R-2026-0042"},
            "id": out.message.id,
        })
    );
}

#[tokio::test]
async fn each_message_has_its_own_key_and_salt_but_the_jwt_is_reused() {
    let server = PushService::start(SUBJECT).await;
    let ch = channel(&random_secret(), json!({}));
    let sub = server.subscribe("a");
    for _ in 0..2 {
        assert!(ch.send(&out_to(&[&sub])).await.is_ok());
    }
    assert_no_problems(&server);
    let received = server.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].token, received[1].token, "cached per audience");
    assert_eq!(received[0].plaintext, received[1].plaintext);
}

#[tokio::test]
async fn a_gone_subscription_is_marked_dead() {
    let server = PushService::start(SUBJECT).await;
    let ch = channel(&random_secret(), json!({}));
    let sub = server.subscribe("a");
    for status in [410, 404] {
        server.script("a", [Reply::status(status)]);
        let out = out_to(&[&sub]);
        let err = ch.send(&out).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadRecipient, "{err}");
        assert_eq!(err.message(), "all subscriptions gone");
        let dead = out.dead_devices.take();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].0, 1);
        assert!(dead[0].1.contains(&status.to_string()), "{dead:?}");
        assert!(!dead[0].1.contains("/push/"), "no endpoint path: {dead:?}");
    }
    assert_no_problems(&server);
}

#[tokio::test]
async fn rate_limited_honours_retry_after() {
    let server = PushService::start(SUBJECT).await;
    let ch = channel(&random_secret(), json!({}));
    let sub = server.subscribe("a");
    server.script(
        "a",
        [Reply::Status(429, vec![("retry-after", "120".into())])],
    );
    let out = out_to(&[&sub]);
    let err = ch.send(&out).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(err.code(), Some("HTTP 429"));
    assert!(out.dead_devices.take().is_empty());
    assert_no_problems(&server);
}

#[tokio::test]
async fn two_subscriptions_one_gone_is_sent_and_one_marked() {
    let server = PushService::start(SUBJECT).await;
    let ch = channel(&random_secret(), json!({}));
    let gone = server.subscribe("gone");
    let live = server.subscribe("live");
    server.script("gone", [Reply::status(410)]);
    let out = out_to(&[&gone, &live]);
    let sent = ch.send(&out).await.expect("sent to the live one");
    assert!(matches!(
        sent,
        Accepted::Sent {
            provider_id: Some(_)
        }
    ));
    let dead = out.dead_devices.take();
    assert_eq!(dead.iter().map(|d| d.0).collect::<Vec<_>>(), vec![1]);
    assert_eq!(server.received().len(), 2);
    assert_no_problems(&server);
}

#[tokio::test]
async fn a_malformed_subscription_is_marked_and_the_others_still_get_it() {
    let server = PushService::start(SUBJECT).await;
    let ch = channel(&random_secret(), json!({}));
    let live = server.subscribe("live");
    let bad_key = json!({"endpoint": format!("{}/push/x", server.origin()),
        "keys": {"p256dh": "AAAA", "auth": "BTBZMqHH6r4Tts7J_aSIgg"}})
    .to_string();
    let out = out_to(&["not json", &bad_key, &live]);
    assert!(ch.send(&out).await.is_ok());
    assert_eq!(
        out.dead_devices.take(),
        vec![
            (1, "malformed subscription".to_owned()),
            (2, "malformed subscription".to_owned())
        ]
    );
    assert_eq!(server.received().len(), 1);

    let out = out_to(&["{}"]);
    let err = ch.send(&out).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRecipient);
    assert_eq!(out.dead_devices.take().len(), 1);
    assert_no_problems(&server);
}

#[tokio::test]
async fn no_device_is_a_bad_recipient() {
    let ch = channel(&random_secret(), json!({}));
    let err = ch.send(&out_to(&[])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRecipient);
    assert_eq!(err.message(), "no active device");
}

#[tokio::test]
async fn when_every_device_fails_the_most_important_error_wins() {
    let server = PushService::start(SUBJECT).await;
    let ch = channel(&random_secret(), json!({}));
    let a = server.subscribe("a");
    let b = server.subscribe("b");

    server.script("a", [Reply::status(413)]);
    server.script("b", [Reply::status(503)]);
    let err = ch.send(&out_to(&[&a, &b])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.code(), Some("HTTP 503"));

    server.script("a", [Reply::status(503)]);
    server.script("b", [Reply::status(403)]);
    let err = ch.send(&out_to(&[&a, &b])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains("VAPID"), "{err}");

    server.script("a", [Reply::status(400)]);
    server.script("b", [Reply::status(410)]);
    let out = out_to(&[&a, &b]);
    let err = ch.send(&out).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(out.dead_devices.take().len(), 1);

    server.script("a", [Reply::status(413)]);
    let err = ch.send(&out_to(&[&a])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.code(), Some("HTTP 413"));
    assert_no_problems(&server);
}

#[tokio::test]
async fn too_large_a_payload_is_refused_before_sending() {
    let server = PushService::start(SUBJECT).await;
    let ch = channel(&random_secret(), json!({}));
    let sub = server.subscribe("a");
    let out = testkit::to_devices(
        testkit::message("Big", &"x".repeat(4000)),
        "42",
        &[sub.as_str()],
    );
    let err = ch.send(&out).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert_eq!(err.code(), Some("payload_too_large"));
    assert!(server.received().is_empty());
    assert!(server.problems().is_empty());

    // The largest that fits makes a 4096-byte body.
    let id_len = out.message.id.len();
    let overhead = r#"{"title":"Big","body":"","id":""}"#.len() + id_len;
    let out = testkit::to_devices(
        testkit::message("Big", &"x".repeat(3993 - overhead)),
        "42",
        &[sub.as_str()],
    );
    assert!(ch.send(&out).await.is_ok());
    assert_eq!(server.received()[0].body_len, 4096);
    assert_no_problems(&server);
}

#[tokio::test]
async fn endpoints_outside_the_allowed_hosts_are_not_contacted() {
    let server = PushService::start(SUBJECT).await;
    let ch = channel(&random_secret(), json!({}));
    let sub = server.subscribe("a");
    // Same service, but named `localhost`: not listed.
    let other = sub.replace("127.0.0.1", "localhost");
    let err = ch.send(&out_to(&[&other])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert_eq!(err.code(), Some("endpoint_not_allowed"));
    assert!(server.received().is_empty());

    // Without the list, plain http is refused too.
    let key = random_secret();
    let open = build(&json!({"vapid_private_key": raw_key(&key), "subject": SUBJECT})).unwrap();
    let err = open.send(&out_to(&[&sub])).await.unwrap_err();
    assert_eq!(err.code(), Some("endpoint_not_allowed"));
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn network_failures_are_transient_and_hide_the_endpoint() {
    let server = PushService::start(SUBJECT).await;
    let ch = channel(&random_secret(), json!({"timeout": "300ms"}));
    let sub = server.subscribe("a");
    server.script("a", [Reply::Hang]);
    let err = ch.send(&out_to(&[&sub])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.message().contains("timed out"), "{err}");
    assert!(!err.to_string().contains("/push/"), "{err}");

    let closed = sub.replace(&server.addr().port().to_string(), "1");
    let err = ch.send(&out_to(&[&closed])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(!err.to_string().contains("/push/"), "{err}");
}

#[tokio::test]
async fn a_pem_private_key_works_too() {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let server = PushService::start("https://herald.example/contact").await;
    let key = random_secret();
    let pem = key.to_pkcs8_pem(LineEnding::LF).expect("PEM");
    let ch = build(&json!({
        "vapid_private_key": pem.as_str(),
        "subject": "https://herald.example/contact",
        "allowed_endpoint_hosts": ["127.0.0.1"],
    }))
    .expect("valid");
    let sub = server.subscribe("a");
    assert!(ch.send(&out_to(&[&sub])).await.is_ok());
    assert_no_problems(&server);
    assert_eq!(server.received()[0].key, public_key(&key));
}

#[test]
fn config_errors_name_the_key_and_never_show_the_private_key() {
    let key = raw_key(&random_secret());
    let base = json!({"vapid_private_key": key, "subject": SUBJECT});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let cases = [
        (json!({"subject": SUBJECT}), "vapid_private_key: required"),
        (json!({"vapid_private_key": key}), "subject: required"),
        (
            with("vapid_private_key", json!("c2hvcnQ")),
            "vapid_private_key:",
        ),
        (
            with("vapid_private_key", json!(12345)),
            "vapid_private_key: invalid type",
        ),
        (
            with(
                "vapid_private_key",
                json!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"),
            ),
            "vapid_private_key: not a valid PKCS#8",
        ),
        (with("subject", json!("ops@herald.example")), "subject:"),
        (with("subject", json!("http://herald.example")), "subject:"),
        (with("subject", json!("mailto:")), "subject:"),
        (with("ttl", json!("forever")), "ttl:"),
        (with("ttl", json!(60)), "ttl: invalid type"),
        (with("urgency", json!("urgent")), "urgency: `urgent`"),
        (with("timeout", json!("0s")), "timeout:"),
        (
            with("allowed_endpoint_hosts", json!("127.0.0.1")),
            "allowed_endpoint_hosts:",
        ),
        (
            with("allowed_endpoint_hosts", json!(["https://x.example/"])),
            "allowed_endpoint_hosts:",
        ),
        (
            with("vapid_public_key", json!("x")),
            "unknown field `vapid_public_key`",
        ),
    ];
    for (config, expected) in cases {
        let err = build(&config).err().expect("invalid").to_string();
        assert!(err.starts_with("channels.webpush: "), "{config}: {err}");
        assert!(
            err.contains(expected),
            "{config}: expected {expected:?} in {err}"
        );
        assert!(!err.contains(&key), "{err}");
        assert!(!err.contains("12345"), "{err}");
    }
    for good in [
        with("urgency", json!("very-low")),
        with("ttl", json!("0s")),
        with("subject", json!("https://herald.example")),
    ] {
        assert!(build(&good).is_ok(), "{good}");
    }
}
