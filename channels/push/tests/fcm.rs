//! `push.fcm` against a local stand-in for Google's OAuth token endpoint and the FCM HTTP v1
//! API (`herald_channel_push::testing::fcm`): it verifies the RS256 assertion with the
//! service account's public key and its claims, checks the bearer token and the message
//! body, and answers with FCM's documented errors when a device token is scripted to fail.

use std::sync::Arc;
use std::time::Duration;

use herald_channel::testkit::{message, rendered, to_devices};
use herald_channel::{Accepted, BuildContext, Channel, ConfigError, ErrorKind, Services};
use herald_channel_push::testing::fcm as service;
use herald_channel_push::testing::{test_clock, ManualClock, WatchedCache};
use serde_json::{json, Value};
use service::{key, Google, CLIENT_EMAIL, PROJECT};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn build(config: Value, services: &Services) -> Result<Arc<dyn Channel>, ConfigError> {
    let descriptor = herald_channel::find("push.fcm").expect("push.fcm is registered");
    (descriptor.build)(BuildContext {
        name: "fcm",
        config: &config,
        services,
    })
}

fn channel(google: &Google, clock: &ManualClock) -> Arc<dyn Channel> {
    build(google.config(), &clock.services()).expect("a valid configuration")
}

/// Two instances with the same service account and one shared cache (and clock): two
/// "nodes" of a cluster.
fn two_nodes(google: &Google, clock: &ManualClock) -> ([Arc<dyn Channel>; 2], Arc<WatchedCache>) {
    let cache = WatchedCache::new();
    let services = cache.services(clock.services());
    let node = || build(google.config(), &services).expect("a valid configuration");
    ([node(), node()], cache)
}

fn config_error(config: Value) -> String {
    match build(config, &Services::default()) {
        Ok(_) => panic!("the configuration should be refused"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn registered_as_a_device_channel() {
    let d = herald_channel::find("push.fcm").unwrap();
    assert_eq!(d.address, herald_channel::AddressKind::Device("fcm"));
    assert!(!d.presence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_one_token_and_every_device_gets_the_message() {
    let google = Google::start().await;
    let ch = channel(&google, &test_clock());
    let mut tasks = Vec::new();
    for i in 0..6 {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let out = to_devices(
                message(&format!("Hello {i}"), "World"),
                "42",
                &[&format!("device-a-{i}"), &format!("device-b-{i}")],
            );
            ch.send(&out).await
        }));
    }
    for t in tasks {
        let accepted = t.await.unwrap().unwrap();
        let Accepted::Sent {
            provider_id: Some(id),
        } = accepted
        else {
            panic!("{accepted:?}");
        };
        assert!(id.starts_with(&format!("projects/{PROJECT}/messages/0:")));
    }
    google.assert_no_problems();
    assert_eq!(google.seen(|s| s.token_fetches), 1);
    let messages = google.seen(|s| s.messages.clone());
    assert_eq!(messages.len(), 12);
    let m = messages
        .iter()
        .find(|m| m["token"] == "device-b-3")
        .expect("device-b-3 got its message");
    assert_eq!(
        m["notification"],
        json!({"title": "Hello 3", "body": "World"})
    );
    assert_eq!(
        m["data"]["messageId"],
        "0190f5c2-0000-7000-8000-000000000001"
    );
}

#[tokio::test]
async fn the_rendered_template_is_sent_with_string_data() {
    let google = Google::start().await;
    let ch = channel(&google, &test_clock());
    let mut out = to_devices(message("Hello", "World"), "42", &["device-1"]);
    out.rendered = Some(rendered(&[(
        "json",
        r#"{"title": "Your blood report is ready", "body": "St. Mary · report 17",
            "data": {"reportId": 17, "reportType": "blood", "urgent": false}}"#,
    )]));
    assert_eq!(
        ch.send(&out).await.unwrap(),
        Accepted::Sent {
            provider_id: Some(format!("projects/{PROJECT}/messages/0:1"))
        }
    );
    google.assert_no_problems();
    let m = google.seen(|s| s.messages[0].clone());
    assert_eq!(
        m,
        json!({
            "token": "device-1",
            "notification": {"title": "Your blood report is ready", "body": "St. Mary · report 17"},
            "data": {"reportId": "17", "reportType": "blood", "urgent": "false",
                     "messageId": "0190f5c2-0000-7000-8000-000000000001"},
        })
    );
}

#[tokio::test]
async fn the_token_is_reused_until_five_minutes_before_it_expires() {
    let google = Google::start().await;
    let clock = test_clock();
    let ch = channel(&google, &clock);
    let out = to_devices(message("t", "b"), "42", &["device-1"]);
    ch.send(&out).await.unwrap();
    clock.advance(Duration::from_secs(3599 - 300 - 1));
    ch.send(&out).await.unwrap();
    assert_eq!(google.seen(|s| s.token_fetches), 1);
    clock.advance(Duration::from_secs(1));
    ch.send(&out).await.unwrap();
    assert_eq!(google.seen(|s| s.token_fetches), 2);
    google.assert_no_problems();
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_within_the_attempt() {
    let google = Google::start().await;
    let ch = channel(&google, &test_clock());
    let out = to_devices(message("t", "b"), "42", &["device-1"]);
    ch.send(&out).await.unwrap();
    google.seen(|s| {
        let current = s.issued.iter().next().unwrap().clone();
        s.revoked.insert(current);
    });
    assert!(matches!(ch.send(&out).await, Ok(Accepted::Sent { .. })));
    assert_eq!(google.seen(|s| (s.token_fetches, s.sends)), (2, 3));
    // Every token refused: one refresh, one retry, then a configuration error.
    google.seen(|s| s.refuse_all = true);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert_eq!(e.code(), Some("UNAUTHENTICATED"));
    assert_eq!(google.seen(|s| (s.token_fetches, s.sends)), (3, 5));
}

#[tokio::test]
async fn an_unregistered_device_is_marked_dead_and_the_others_get_it() {
    let google = Google::start().await;
    let ch = channel(&google, &test_clock());
    google.script("gone", 404, "UNREGISTERED", None);
    let out = to_devices(message("t", "b"), "42", &["gone", "alive"]);
    assert_eq!(
        ch.send(&out).await.unwrap(),
        Accepted::Sent {
            provider_id: Some(format!("projects/{PROJECT}/messages/0:1"))
        }
    );
    assert_eq!(
        out.dead_devices.take(),
        vec![(1, "UNREGISTERED".to_owned())]
    );
    google.assert_no_problems();
}

#[tokio::test]
async fn all_devices_unregistered_is_a_bad_recipient() {
    let google = Google::start().await;
    let ch = channel(&google, &test_clock());
    google.script("gone-1", 404, "UNREGISTERED", None);
    google.script("gone-2", 404, "UNREGISTERED", None);
    let out = to_devices(message("t", "b"), "42", &["gone-1", "gone-2"]);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadRecipient);
    assert_eq!(e.message(), "all devices unregistered");
    assert_eq!(
        out.dead_devices.take(),
        vec![(1, "UNREGISTERED".into()), (2, "UNREGISTERED".into())]
    );
}

#[tokio::test]
async fn no_device_is_a_bad_recipient_without_a_request() {
    let google = Google::start().await;
    let ch = channel(&google, &test_clock());
    let out = to_devices(message("t", "b"), "42", &[]);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadRecipient);
    assert_eq!(e.message(), "no active device");
    assert_eq!(google.seen(|s| (s.token_fetches, s.sends)), (0, 0));
}

#[tokio::test]
async fn vendor_errors_are_classified() {
    let google = Google::start().await;
    let ch = channel(&google, &test_clock());
    google.script("quota", 429, "QUOTA_EXCEEDED", Some(42));
    google.script("down", 503, "UNAVAILABLE", None);
    google.script("bad", 400, "INVALID_ARGUMENT", None);
    google.script("other-sender", 403, "SENDER_ID_MISMATCH", None);
    google.script("apns-auth", 401, "THIRD_PARTY_AUTH_ERROR", None);
    google.script("gone", 404, "UNREGISTERED", None);
    let send = |tokens: &'static [&'static str]| {
        let ch = ch.clone();
        async move {
            let out = to_devices(message("t", "b"), "42", tokens);
            ch.send(&out).await.unwrap_err()
        }
    };
    let e = send(&["quota"]).await;
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(42)));
    assert_eq!(e.code(), Some("QUOTA_EXCEEDED"));
    let e = send(&["down"]).await;
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Transient, Some("UNAVAILABLE"))
    );
    let e = send(&["bad"]).await;
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Permanent, Some("INVALID_ARGUMENT"))
    );
    let e = send(&["other-sender"]).await;
    assert_eq!(e.kind(), ErrorKind::Permanent);
    let e = send(&["apns-auth"]).await;
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Config, Some("THIRD_PARTY_AUTH_ERROR"))
    );
    // The most important failure wins: retryable over dead over permanent.
    let e = send(&["bad", "gone", "down"]).await;
    assert_eq!(e.kind(), ErrorKind::Transient);
    let e = send(&["bad", "gone"]).await;
    assert_eq!(e.kind(), ErrorKind::BadRecipient);
    // No vendor error message leaks a token.
    assert!(!e.to_string().contains("ya29"), "{e}");
    assert_eq!(google.seen(|s| s.token_fetches), 1);
}

#[tokio::test]
async fn a_payload_over_4_kib_is_refused_without_a_request() {
    let google = Google::start().await;
    let ch = channel(&google, &test_clock());
    let mut out = to_devices(message("t", "b"), "42", &["device-1"]);
    let data = format!(
        r#"{{"title": "T", "body": "B", "data": {{"x": "{}"}}}}"#,
        "x".repeat(4100)
    );
    out.rendered = Some(rendered(&[("json", &data)]));
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert_eq!(e.code(), Some("payload_too_large"));
    assert_eq!(google.seen(|s| (s.token_fetches, s.sends)), (0, 0));
}

/// 2,999 bytes of content (and a 300-byte title, over the old 2,048/256 cuts).
fn long_text() -> (String, String) {
    let title = "Résultats ".repeat(30); // 11 bytes × 30 = 330
    let content = format!("{}{}", "é".repeat(1000), "x".repeat(999)); // 2,999 bytes
    assert_eq!(content.len(), 2999);
    (title, content)
}

#[tokio::test]
async fn a_2999_byte_content_arrives_whole() {
    let google = Google::start().await;
    let ch = channel(&google, &test_clock());
    let (title, content) = long_text();
    let out = to_devices(message(&title, &content), "42", &["device-1"]);
    assert!(matches!(ch.send(&out).await, Ok(Accepted::Sent { .. })));
    google.assert_no_problems();
    let sent = google.seen(|s| s.messages[0].clone());
    assert_eq!(sent["notification"]["title"], title.as_str());
    assert_eq!(sent["notification"]["body"], content.as_str());
}

#[tokio::test]
async fn content_over_the_fcm_limit_fails_permanent_and_is_never_cut() {
    let google = Google::start().await;
    let ch = channel(&google, &test_clock());
    let content = "x".repeat(4096);
    let out = to_devices(message("Report", &content), "42", &["device-1"]);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert_eq!(e.code(), Some("payload_too_large"));
    assert!(
        e.message().contains("FCM accepts at most 4096 bytes") && e.message().contains("never cut"),
        "{e}"
    );
    // Refused before any request; nothing reached FCM cut or whole.
    assert_eq!(google.seen(|s| (s.token_fetches, s.sends)), (0, 0));
    assert!(out.dead_devices.take().is_empty());
}

#[tokio::test]
async fn a_refused_assertion_is_a_configuration_error() {
    let google = Google::start().await;
    let mut account = google.service_account();
    account["client_email"] = json!("someone-else@herald-test.iam.gserviceaccount.com");
    let config = json!({"service_account": account.to_string(), "endpoint": google.endpoint()});
    let ch = build(config, &test_clock().services()).unwrap();
    let out = to_devices(message("t", "b"), "42", &["device-1"]);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert_eq!(e.code(), Some("invalid_grant"));
    assert!(e.message().contains("Invalid issuer"), "{e}");
    assert_eq!(google.seen(|s| s.sends), 0);
}

#[tokio::test]
async fn configuration_is_checked_and_secrets_stay_hidden() {
    let google = Google::start().await;
    let pem = &key().1;
    let secret_line = pem.lines().nth(3).unwrap().to_owned();

    // A working configuration builds.
    build(google.config(), &Services::default()).unwrap();

    // The file form and a project override work.
    let dir = std::env::temp_dir().join(format!("herald-fcm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sa.json");
    std::fs::write(&file, google.service_account().to_string()).unwrap();
    build(
        json!({"service_account_file": file.to_str().unwrap(), "project_id": "other-project"}),
        &Services::default(),
    )
    .unwrap();

    let account = google.service_account().to_string();
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "service_account"),
        (
            json!({"service_account": account, "service_account_file": "/x"}),
            "service_account, service_account_file",
        ),
        (
            json!({"service_account_file": "/nonexistent/sa.json"}),
            "service_account_file",
        ),
        (
            json!({"service_account": "{not json"}),
            "service_account: not valid JSON",
        ),
        (
            json!({"service_account": 12}),
            "service_account: invalid type",
        ),
        (
            json!({"service_account": account.replace("BEGIN PRIVATE KEY", "BEGIN NOTHING")}),
            "service_account: `private_key`",
        ),
        (
            json!({"service_account": json!({"client_email": CLIENT_EMAIL, "private_key": pem}).to_string()}),
            "project_id: missing",
        ),
        (
            json!({"service_account": account, "project_id": "a b"}),
            "project_id",
        ),
        (
            json!({"service_account": account, "endpoint": "ftp://x"}),
            "endpoint",
        ),
        (
            json!({"service_account": account, "timeout": "soon"}),
            "timeout",
        ),
        (
            json!({"service_account": account, "android": "high"}),
            "android",
        ),
        (
            json!({"service_account": account, "sevice_account": 1}),
            "sevice_account",
        ),
    ];
    for (config, key) in cases {
        let e = config_error(config.clone());
        assert!(e.starts_with("channels.fcm: "), "{e}");
        assert!(e.contains(key), "{key}: {e}");
        assert!(!e.contains(&secret_line), "{e}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn android_and_apns_tables_are_passed_through() {
    let google = Google::start().await;
    let mut config = google.config();
    config["android"] = json!({"priority": "high", "ttl": "3600s"});
    config["apns"] = json!({"headers": {"apns-priority": "10"}});
    let ch = build(config, &test_clock().services()).unwrap();
    let out = to_devices(message("t", "b"), "42", &["device-1"]);
    ch.send(&out).await.unwrap();
    google.assert_no_problems();
    let m = google.seen(|s| s.messages[0].clone());
    assert_eq!(m["android"], json!({"priority": "high", "ttl": "3600s"}));
    assert_eq!(m["apns"]["headers"]["apns-priority"], "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sending_concurrently_fetch_one_token() {
    let google = Google::start().await;
    let (nodes, cache) = two_nodes(&google, &test_clock());
    // The node that fetches keeps the refresh lock until we let it store the token.
    cache.hold_sets();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let ch = nodes[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let out = to_devices(message("t", "b"), "42", &[&format!("device-{i}")]);
            ch.send(&out).await
        }));
    }
    // The other node waits for that token instead of fetching its own.
    cache.lock_refused().await;
    cache.release_sets();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Ok(Accepted::Sent { .. })));
    }
    google.assert_no_problems();
    assert_eq!(google.seen(|s| s.token_fetches), 1);
    let bearers = google.seen(|s| s.bearers.clone());
    assert_eq!(bearers.len(), 6);
    assert!(
        bearers.iter().all(|b| b == "ya29.test-token-1"),
        "{bearers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_two_nodes_is_refreshed_once_for_both() {
    let google = Google::start().await;
    let (nodes, cache) = two_nodes(&google, &test_clock());
    let out = to_devices(message("t", "b"), "42", &["device-1"]);
    for ch in &nodes {
        ch.send(&out).await.unwrap();
    }
    assert_eq!(google.seen(|s| s.token_fetches), 1);
    google.seen(|s| s.revoked.insert("ya29.test-token-1".into()));

    cache.hold_sets();
    let tasks: Vec<_> = nodes
        .iter()
        .map(|ch| {
            let ch = ch.clone();
            tokio::spawn(async move {
                let out = to_devices(message("t", "b"), "42", &["device-1"]);
                ch.send(&out).await
            })
        })
        .collect();
    // Both got 401 for token 1; one node fetches the new token, the other waits for it.
    cache.lock_refused().await;
    cache.release_sets();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Ok(Accepted::Sent { .. })));
    }
    assert_eq!(
        google.seen(|s| (s.token_fetches, s.sends)),
        (2, 6),
        "one new token; 2 warm-up sends, 2 refused, 2 retried"
    );
    // Both nodes keep using it.
    for ch in &nodes {
        ch.send(&out).await.unwrap();
    }
    assert_eq!(google.seen(|s| s.token_fetches), 2);
    let bearers = google.seen(|s| s.bearers.clone());
    assert_eq!(bearers[..2], ["ya29.test-token-1", "ya29.test-token-1"]);
    assert!(
        bearers[2..].iter().all(|b| b == "ya29.test-token-2"),
        "{bearers:?}"
    );
    google.assert_no_problems();
}
