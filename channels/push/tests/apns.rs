//! `push.apns` against a local stand-in for Apple's provider API over cleartext HTTP/2
//! (`herald_channel_push::testing::apns`): it refuses anything that is not HTTP/2, verifies
//! the ES256 provider token with the test key's public key (`kid`, `iss`, age), checks the
//! headers and the JSON body, and answers with Apple's documented errors when a device
//! token is scripted to fail.

use std::sync::Arc;
use std::time::Duration;

use herald_channel::clock::Clock;
use herald_channel::testkit::{message, rendered, to_devices};
use herald_channel::{Accepted, BuildContext, Channel, ConfigError, ErrorKind, Services};
use herald_channel_push::testing::apns as service;
use herald_channel_push::testing::{test_clock, ManualClock, WatchedCache};
use serde_json::{json, Value};
use service::{device, p8_key, Apple, KEY_ID, MESSAGE_ID, TEAM_ID, TOPIC};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn build(config: Value, services: &Services) -> Result<Arc<dyn Channel>, ConfigError> {
    let descriptor = herald_channel::find("push.apns").expect("push.apns is registered");
    (descriptor.build)(BuildContext {
        name: "apns",
        config: &config,
        services,
    })
}

fn config(apple: &Apple, pem: &str) -> Value {
    json!({
        "team_id": TEAM_ID,
        "key_id": KEY_ID,
        "private_key": pem,
        "topic": TOPIC,
        "endpoint": apple.endpoint(),
        "timeout": "5s",
    })
}

/// A stand-in, a channel talking to it, and their shared clock.
async fn setup() -> (Apple, Arc<dyn Channel>, ManualClock, String) {
    let (pem, public) = p8_key();
    let clock = test_clock();
    let apple = Apple::start(public, clock.clone()).await;
    let ch = build(config(&apple, &pem), &clock.services()).expect("a valid configuration");
    (apple, ch, clock, pem)
}

/// A stand-in and two instances with the same team, key and one shared cache (and clock):
/// two "nodes" of a cluster.
async fn two_nodes() -> (Apple, [Arc<dyn Channel>; 2], ManualClock, Arc<WatchedCache>) {
    let (pem, public) = p8_key();
    let clock = test_clock();
    let apple = Apple::start(public, clock.clone()).await;
    let cache = WatchedCache::new();
    let services = cache.services(clock.services());
    let node = || build(config(&apple, &pem), &services).expect("a valid configuration");
    let nodes = [node(), node()];
    (apple, nodes, clock, cache)
}

/// One send on each node at the same time, the token's storing held until one node waits
/// for the other's token; their results.
async fn send_on_both_at_once(
    nodes: &[Arc<dyn Channel>; 2],
    cache: &WatchedCache,
    device_token: &str,
) -> Vec<Result<Accepted, herald_channel::ChannelError>> {
    cache.hold_sets();
    let tasks: Vec<_> = nodes
        .iter()
        .map(|ch| {
            let ch = ch.clone();
            let out = to_devices(message("t", "b"), "42", &[device_token]);
            tokio::spawn(async move { ch.send(&out).await })
        })
        .collect();
    cache.lock_refused().await;
    cache.release_sets();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

fn provider_id(n: usize) -> Accepted {
    Accepted::Sent {
        provider_id: Some(format!("5E5F8F1A-0000-4000-8000-{n:012}")),
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn registered_as_a_device_channel() {
    let d = herald_channel::find("push.apns").unwrap();
    assert_eq!(d.address, herald_channel::AddressKind::Device("apns"));
    assert!(!d.presence);
}

#[tokio::test]
async fn a_notification_goes_over_http2_with_every_header_and_the_body() {
    let (apple, ch, clock, _) = setup().await;
    let mut out = to_devices(message("Hello", "World"), "42", &[&device(1)]);
    out.rendered = Some(rendered(&[(
        "json",
        r#"{"title": "Your blood report is ready", "body": "St. Mary · report 17",
            "data": {"reportId": 17, "reportType": "blood"}}"#,
    )]));
    assert_eq!(ch.send(&out).await.unwrap(), provider_id(1));
    apple.assert_no_problems();
    let (token, headers, body) = apple.seen(|s| s.accepted[0].clone());
    assert_eq!(token, device(1));
    assert_eq!(headers["apns-topic"], TOPIC);
    assert_eq!(headers["apns-push-type"], "alert");
    assert_eq!(headers["apns-priority"], "10");
    assert_eq!(headers["apns-collapse-id"], MESSAGE_ID);
    // ttl defaults to 4 weeks.
    assert_eq!(
        headers["apns-expiration"],
        (clock.unix_secs() + 28 * 24 * 3600).to_string()
    );
    assert_eq!(
        body,
        json!({
            "aps": {"alert": {"title": "Your blood report is ready", "body": "St. Mary · report 17"}},
            "reportId": "17",
            "reportType": "blood",
            "messageId": MESSAGE_ID,
        })
    );
}

#[tokio::test]
async fn the_provider_token_is_reused_and_rotated_after_50_minutes() {
    let (apple, ch, clock, _) = setup().await;
    let out = to_devices(message("t", "b"), "42", &[&device(1), &device(2)]);
    ch.send(&out).await.unwrap();
    for _ in 0..4 {
        clock.advance(minutes(10)); // 10, 20, 30, 40 minutes
        ch.send(&out).await.unwrap();
    }
    assert_eq!(apple.distinct_tokens(), 1);
    clock.advance(minutes(11)); // 51 minutes
    ch.send(&out).await.unwrap();
    assert_eq!(apple.distinct_tokens(), 2);
    clock.advance(minutes(45)); // the new token is 45 minutes old
    ch.send(&out).await.unwrap();
    assert_eq!(apple.distinct_tokens(), 2);
    clock.advance(minutes(5));
    ch.send(&out).await.unwrap();
    assert_eq!(apple.distinct_tokens(), 3);
    assert_eq!(apple.seen(|s| (s.requests, s.accepted.len())), (16, 16));
    apple.assert_no_problems();
}

#[tokio::test]
async fn expired_provider_token_is_replaced_once_but_not_within_20_minutes() {
    let (apple, ch, clock, _) = setup().await;
    let out = to_devices(message("t", "b"), "42", &[&device(1)]);
    ch.send(&out).await.unwrap();
    let first = apple.seen(|s| s.tokens[0].clone());
    apple.seen(|s| s.expired.insert(first));
    // 5 minutes later Apple calls it expired: a new one would be refused (429), so no.
    clock.advance(minutes(5));
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert_eq!(e.code(), Some("ExpiredProviderToken"));
    assert_eq!(apple.distinct_tokens(), 1);
    // 25 minutes after it was made: replaced, and the device is retried once.
    clock.advance(minutes(20));
    assert_eq!(ch.send(&out).await.unwrap(), provider_id(2));
    assert_eq!(apple.distinct_tokens(), 2);
    // 1 + 1 refused + (1 refused, 1 retried).
    assert_eq!(apple.seen(|s| s.requests), 4);
    apple.assert_no_problems();
}

#[tokio::test]
async fn an_unregistered_device_is_marked_dead() {
    let (apple, ch, _, _) = setup().await;
    apple.script(&device(9), 410, "Unregistered", None);
    let out = to_devices(message("t", "b"), "42", &[&device(9)]);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadRecipient);
    assert_eq!(e.message(), "all devices unregistered");
    assert_eq!(
        out.dead_devices.take(),
        vec![(1, "Unregistered".to_owned())]
    );
}

#[tokio::test]
async fn two_devices_one_dead_is_sent_with_one_marked() {
    let (apple, ch, _, _) = setup().await;
    apple.script(&device(9), 410, "Unregistered", None);
    apple.script(&device(8), 400, "BadDeviceToken", None);
    let out = to_devices(message("t", "b"), "42", &[&device(9), &device(1)]);
    assert_eq!(ch.send(&out).await.unwrap(), provider_id(1));
    assert_eq!(
        out.dead_devices.take(),
        vec![(1, "Unregistered".to_owned())]
    );
    // A token Apple calls bad, and one that is not even hex (never sent), are dead too.
    let out = to_devices(
        message("t", "b"),
        "42",
        &[&device(8), "../../x", &device(2)],
    );
    assert_eq!(ch.send(&out).await.unwrap(), provider_id(2));
    let dead = out.dead_devices.take();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0], (1, "BadDeviceToken".to_owned()));
    assert_eq!(dead[1].0, 2);
    assert_eq!(apple.seen(|s| s.requests), 4);
    apple.assert_no_problems();
}

#[tokio::test]
async fn throttling_and_outages_are_retryable() {
    let (apple, ch, _, _) = setup().await;
    apple.script(&device(1), 429, "TooManyRequests", Some(30));
    apple.script(&device(2), 503, "ServiceUnavailable", None);
    apple.script(&device(3), 500, "InternalServerError", None);
    apple.script(&device(4), 400, "SomethingAppleInventsLater", None);
    let send = |n: u8| {
        let ch = ch.clone();
        async move {
            let out = to_devices(message("t", "b"), "42", &[&device(n)]);
            ch.send(&out).await.unwrap_err()
        }
    };
    let e = send(1).await;
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::RateLimited, Some("TooManyRequests"))
    );
    assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    let e = send(2).await;
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Transient, Some("ServiceUnavailable"))
    );
    let e = send(3).await;
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Transient, Some("InternalServerError"))
    );
    let e = send(4).await;
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Transient, Some("SomethingAppleInventsLater"))
    );
    apple.assert_no_problems();
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_a_configuration_error() {
    let (apple, _, clock, _) = setup().await;
    let (other_pem, _) = p8_key();
    let ch = build(config(&apple, &other_pem), &clock.services()).unwrap();
    let out = to_devices(message("t", "b"), "42", &[&device(1), &device(2)]);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Config, Some("InvalidProviderToken"))
    );
    // A configuration error stops the send: the second device is not tried.
    assert_eq!(apple.seen(|s| s.requests), 1);
    assert!(out.dead_devices.take().is_empty());
}

#[tokio::test]
async fn a_payload_over_4_kib_is_refused_without_a_request() {
    let (apple, ch, _, _) = setup().await;
    let mut out = to_devices(message("t", "b"), "42", &[&device(1)]);
    let json = format!(r#"{{"title": "T", "body": "{}"}}"#, "x".repeat(4100));
    out.rendered = Some(rendered(&[("json", &json)]));
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Permanent, Some("payload_too_large"))
    );
    assert_eq!(apple.seen(|s| s.requests), 0);
}

#[tokio::test]
async fn a_2999_byte_content_arrives_whole() {
    let (apple, ch, _, _) = setup().await;
    let title = "Résultats ".repeat(30); // 330 bytes, over the old 256 cut
    let content = format!("{}{}", "é".repeat(1000), "x".repeat(999));
    assert_eq!(content.len(), 2999);
    let out = to_devices(message(&title, &content), "42", &[&device(1)]);
    assert_eq!(ch.send(&out).await.unwrap(), provider_id(1));
    apple.assert_no_problems();
    let (_, _, body) = apple.seen(|s| s.accepted[0].clone());
    assert_eq!(body["aps"]["alert"]["title"], title.as_str());
    assert_eq!(body["aps"]["alert"]["body"], content.as_str());
}

#[tokio::test]
async fn content_over_the_apns_limit_fails_permanent_and_is_never_cut() {
    let (apple, ch, _, _) = setup().await;
    let out = to_devices(message("t", &"x".repeat(10_000)), "42", &[&device(1)]);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Permanent, Some("payload_too_large"))
    );
    assert!(
        e.message().contains("APNs accepts at most 4096 bytes")
            && e.message().contains("never cut"),
        "{e}"
    );
    assert_eq!(apple.seen(|s| s.requests), 0);
    assert!(out.dead_devices.take().is_empty());
}

#[tokio::test]
async fn no_device_is_a_bad_recipient() {
    let (apple, ch, _, _) = setup().await;
    let out = to_devices(message("t", "b"), "42", &[]);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.message()),
        (ErrorKind::BadRecipient, "no active device")
    );
    assert_eq!(apple.seen(|s| s.requests), 0);
}

#[tokio::test]
async fn background_pushes_and_a_zero_ttl() {
    let (apple, _, clock, pem) = setup().await;
    let mut cfg = config(&apple, &pem);
    cfg["push_type"] = json!("background");
    cfg["ttl"] = json!("0s");
    let ch = build(cfg, &clock.services()).unwrap();
    let out = to_devices(message("t", "b"), "42", &[&device(1)]);
    ch.send(&out).await.unwrap();
    apple.assert_no_problems();
    let (_, headers, body) = apple.seen(|s| s.accepted[0].clone());
    assert_eq!(headers["apns-push-type"], "background");
    assert_eq!(headers["apns-priority"], "5");
    assert_eq!(headers["apns-expiration"], "0");
    assert_eq!(body["aps"], json!({"content-available": 1}));
}

#[tokio::test]
async fn configuration_is_checked_and_the_key_stays_hidden() {
    let (apple, _, _, pem) = setup().await;
    let secret_line = pem.lines().nth(1).unwrap().to_owned();
    let base = config(&apple, &pem);
    let with = |key: &str, value: Value| {
        let mut c = base.clone();
        c[key] = value;
        c
    };
    let without = |key: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(key);
        c
    };
    // The file form, and sandbox instead of endpoint, build.
    let dir = std::env::temp_dir().join(format!("herald-apns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("AuthKey_KEY1234567.p8");
    std::fs::write(&file, &pem).unwrap();
    let mut from_file = without("private_key");
    from_file["private_key_file"] = json!(file.to_str().unwrap());
    build(from_file, &Services::default()).unwrap();
    let mut sandbox = without("endpoint");
    sandbox["sandbox"] = json!(true);
    build(sandbox, &Services::default()).unwrap();

    let cases: Vec<(Value, &str)> = vec![
        (without("team_id"), "team_id: missing"),
        (with("team_id", json!("short")), "team_id"),
        (with("key_id", json!(42)), "key_id: invalid type"),
        (without("private_key"), "private_key: missing"),
        (
            with("private_key_file", json!("/x.p8")),
            "private_key, private_key_file",
        ),
        (
            with("private_key", json!(pem.replace('A', "B"))),
            "private_key: not a PEM",
        ),
        (
            with("private_key", json!("")),
            "private_key: must not be empty",
        ),
        (without("topic"), "topic: missing"),
        (with("topic", json!("com example")), "topic"),
        (with("sandbox", json!(true)), "endpoint, sandbox"),
        (with("sandbox", json!("yes")), "sandbox"),
        (with("endpoint", json!("api.push.apple.com")), "endpoint"),
        (with("push_type", json!("loud")), "push_type"),
        (with("priority", json!(7)), "priority"),
        (
            with("push_type", json!("background")).with_priority(10),
            "priority",
        ),
        (with("ttl", json!("forever")), "ttl"),
        (with("timeout", json!("0s")), "timeout"),
        (with("topics", json!("x")), "topics"),
    ];
    for (config, key) in cases {
        let e = match build(config, &Services::default()) {
            Ok(_) => panic!("{key}: the configuration should be refused"),
            Err(e) => e.to_string(),
        };
        assert!(e.starts_with("channels.apns: "), "{e}");
        assert!(e.contains(key), "{key}: {e}");
        assert!(!e.contains(&secret_line), "{e}");
    }
    std::fs::remove_dir_all(dir).ok();
}

trait WithPriority {
    fn with_priority(self, p: u64) -> Value;
}

impl WithPriority for Value {
    fn with_priority(mut self, p: u64) -> Value {
        self["priority"] = json!(p);
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sending_concurrently_sign_one_provider_token() {
    let (apple, nodes, clock, cache) = two_nodes().await;
    for result in send_on_both_at_once(&nodes, &cache, &device(1)).await {
        assert!(matches!(result, Ok(Accepted::Sent { .. })), "{result:?}");
    }
    assert_eq!(apple.distinct_tokens(), 1);
    // 51 minutes later: one new token for both.
    clock.advance(minutes(51));
    for result in send_on_both_at_once(&nodes, &cache, &device(2)).await {
        assert!(matches!(result, Ok(Accepted::Sent { .. })), "{result:?}");
    }
    assert_eq!(apple.distinct_tokens(), 2);
    assert_eq!(apple.seen(|s| (s.requests, s.accepted.len())), (4, 4));
    apple.assert_no_problems();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_provider_token_is_replaced_once_for_both_nodes() {
    let (apple, nodes, clock, cache) = two_nodes().await;
    let out = to_devices(message("t", "b"), "42", &[&device(1)]);
    for ch in &nodes {
        ch.send(&out).await.unwrap();
    }
    assert_eq!(apple.distinct_tokens(), 1);
    let first = apple.seen(|s| s.tokens[0].clone());
    apple.seen(|s| s.expired.insert(first));
    // 5 minutes after it was signed: no node signs another (Apple allows one per 20 min).
    clock.advance(minutes(5));
    for ch in &nodes {
        let e = ch.send(&out).await.unwrap_err();
        assert_eq!(e.code(), Some("ExpiredProviderToken"), "{e}");
    }
    assert_eq!(apple.distinct_tokens(), 1);
    // 2 warm-up, 2 refused at 5 min.
    assert_eq!(apple.seen(|s| (s.requests, s.accepted.len())), (4, 2));
    assert_eq!(cache.stored(), 1);
    // 25 minutes after: one new token for both, signed and stored once, and every send
    // succeeds. A node refused with the old token deletes it from the shared cache and
    // signs the new one (held, so the other node must wait for it). The other node is
    // refused too, and retried, if it read the old token before that deletion (its copy
    // is past its one-minute recheck); if it reads after, it waits for the new token and
    // is never refused. So one or two refusals, each device accepted once.
    clock.advance(minutes(20));
    for result in send_on_both_at_once(&nodes, &cache, &device(1)).await {
        assert!(matches!(result, Ok(Accepted::Sent { .. })), "{result:?}");
    }
    assert_eq!(cache.stored(), 2, "the token replaced once, by one node");
    assert_eq!(apple.distinct_tokens(), 2);
    let (requests, accepted) = apple.seen(|s| (s.requests, s.accepted.len()));
    assert_eq!(accepted, 2 + 2, "each node's device accepted once");
    assert!(
        (7..=8).contains(&requests),
        "2 warm-up, 2 refused at 5 min, 1 or 2 refused at 25 min, 2 accepted: {requests}"
    );
    // Both nodes keep the new token: no more refusals, nothing signed.
    for ch in &nodes {
        ch.send(&out).await.unwrap();
    }
    assert_eq!(
        apple.seen(|s| (s.requests, s.accepted.len())),
        (requests + 2, 6)
    );
    assert_eq!((apple.distinct_tokens(), cache.stored()), (2, 2));
    apple.assert_no_problems();
}

#[tokio::test]
async fn a_token_another_node_signed_with_a_wrong_key_is_replaced() {
    let (pem, public) = p8_key();
    let (wrong_pem, _) = p8_key();
    let clock = test_clock();
    let apple = Apple::start(public, clock.clone()).await;
    let cache = WatchedCache::new();
    let services = cache.services(clock.services());
    let wrong = build(config(&apple, &wrong_pem), &services).unwrap();
    let right = build(config(&apple, &pem), &services).unwrap();
    let out = to_devices(message("t", "b"), "42", &[&device(1)]);
    // The misconfigured node signs the cluster's token; Apple refuses it: its own key.
    let e = wrong.send(&out).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Config, Some("InvalidProviderToken"))
    );
    // The node with the right key finds that token refused, signs its own, and retries.
    assert_eq!(right.send(&out).await.unwrap(), provider_id(1));
    assert_eq!(apple.seen(|s| s.requests), 3);
    assert_eq!(right.send(&out).await.unwrap(), provider_id(2));
    assert_eq!(apple.seen(|s| s.requests), 4);
}
