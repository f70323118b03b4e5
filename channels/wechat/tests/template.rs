//! `wechat.template` end to end: the channel, built through its descriptor, against a local
//! WeChat API that checks every request (`herald_channel_wechat::testing`).

use std::sync::Arc;
use std::time::Duration;

use herald_channel::{testkit, Accepted, AddressKind, BuildContext, Channel, ErrorKind, Services};
use herald_channel_wechat::template::TemplateChannel;
use herald_channel_wechat::testing::*;
use serde_json::{json, Value};

fn channel(server: &WeChatServer) -> Arc<dyn Channel> {
    build("wechat.template", &server.config()).expect("the test server's config is valid")
}

fn channel_with_clock(server: &WeChatServer, clock: Arc<ManualClock>) -> TemplateChannel {
    let config = server.config();
    let services = Services::default();
    TemplateChannel::from_context(&BuildContext {
        name: "wechat",
        config: &config,
        services: &services,
    })
    .expect("valid")
    .with_clock(clock)
}

fn token_request(force: bool) -> Value {
    json!({
        "grant_type": "client_credential",
        "appid": APP_ID,
        "secret": APP_SECRET,
        "force_refresh": force,
    })
}

fn sent(result: Result<Accepted, herald_channel::ChannelError>) -> String {
    match result {
        Ok(Accepted::Sent {
            provider_id: Some(id),
        }) => id,
        other => panic!("expected Sent with a msgid, got {other:?}"),
    }
}

#[test]
fn registered_and_builds_without_a_runtime() {
    let d = herald_channel::find("wechat.template").expect("registered");
    assert_eq!(d.address, AddressKind::WechatOpenId);
    assert!(!d.presence);
    assert_eq!(d.family(), "wechat");
    let ch = build(
        "wechat.template",
        &json!({
            "app_id": APP_ID,
            "app_secret": APP_SECRET,
            "timeout": "3s",
            "templates": {"report_ready": {
                "template_id": TEMPLATE_ID,
                "url": "https://reports.example.com/",
                "miniprogram": {"appid": "wxmini0123456789", "pagepath": "pages/report?id=1"},
            }},
        }),
    )
    .expect("valid");
    assert_eq!(ch.defaults().daily_quota, Some(100_000));
}

#[tokio::test]
async fn sends_what_wechat_expects() {
    let server = WeChatServer::start().await;
    let ch = channel(&server);
    let out = report_ready(FOLLOWER);
    let msgid = sent(ch.send(&out).await);
    assert_eq!(msgid, "3147483647001");

    assert_eq!(server.token_requests(), vec![token_request(false)]);
    let sends = server.sends();
    assert_eq!(sends.len(), 1);
    assert_eq!(
        Some(&sends[0].access_token),
        server.current_token().as_ref()
    );
    assert_eq!(
        sends[0].body,
        json!({
            "touser": FOLLOWER,
            "template_id": TEMPLATE_ID,
            "url": "https://reports.example.com/R-2026-0042",
            "client_msg_id": "0190f5c2-0000-7000-8000-000000000001-1001",
            "data": {
                "first": {"value": "Your CT chest report is ready"},
                "keyword1": {"value": "李雷"},
                "keyword2": {"value": "CT chest"},
                "keyword3": {"value": "R-2026-0042"},
                "keyword4": {"value": "2026-11-29 09:30"},
                "remark": {"value": "Herald General: tap to read the report."},
            },
        })
    );

    // Without `url` in the data, the rendering has none and neither has the request.
    let mut data = report_data();
    data.as_object_mut().unwrap().remove("url");
    sent(ch.send(&report_ready_with(Some(FOLLOWER), &data)).await);
    assert!(server.sends()[1].body.get("url").is_none());
}

#[tokio::test]
async fn the_token_is_fetched_once_for_many_sends() {
    let server = WeChatServer::start().await;
    let ch = channel(&server);
    for i in 0..5 {
        let mut out = report_ready(FOLLOWER);
        out.delivery_id = 100 + i;
        sent(ch.send(&out).await);
    }
    assert_eq!(server.token_requests().len(), 1);
    let sends = server.sends();
    assert_eq!(sends.len(), 5);
    assert!(sends
        .iter()
        .all(|s| Some(&s.access_token) == server.current_token().as_ref()));
}

#[tokio::test]
async fn a_retry_carries_the_same_client_msg_id() {
    let server = WeChatServer::start().await;
    let ch = channel(&server);
    server.script_send([Answer::Json(
        json!({"errcode": -1, "errmsg": "system error"}),
    )]);
    let mut out = report_ready(FOLLOWER);
    let err = ch.send(&out).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(err.code(), Some("-1"));
    out.attempt = 2;
    sent(ch.send(&out).await);
    let sends = server.sends();
    assert_eq!(
        sends[0].body["client_msg_id"],
        sends[1].body["client_msg_id"]
    );
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once_and_the_send_repeated() {
    let server = WeChatServer::start().await;
    let ch = channel(&server);
    sent(ch.send(&report_ready(FOLLOWER)).await);
    let old = server.current_token().unwrap();
    server.rotate_token_elsewhere(); // our cached token is now refused with 40001

    sent(ch.send(&report_ready(FOLLOWER)).await);
    assert_eq!(
        server.token_requests(),
        vec![token_request(false), token_request(true)]
    );
    let sends = server.sends();
    assert_eq!(sends.len(), 3);
    assert_eq!(
        sends[1].access_token, old,
        "first try with the cached token"
    );
    let new = server.current_token().unwrap();
    assert_ne!(new, old);
    assert_eq!(sends[2].access_token, new, "repeated with the fresh token");
    assert_eq!(sends[1].body, sends[2].body);

    // The fresh token is cached.
    sent(ch.send(&report_ready(FOLLOWER)).await);
    assert_eq!(server.token_requests().len(), 2);
}

#[tokio::test]
async fn a_token_refused_twice_is_transient_after_one_refresh() {
    let server = WeChatServer::start().await;
    let ch = channel(&server);
    server.script_send([
        Answer::Json(json!({"errcode": 42001, "errmsg": "access_token expired"})),
        Answer::Json(json!({"errcode": 40014, "errmsg": "invalid access_token $TOKEN"})),
    ]);
    let err = ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.code(), Some("40014"));
    assert_eq!(
        server.token_requests(),
        vec![token_request(false), token_request(true)]
    );
    assert_eq!(server.sends().len(), 2);
    // WeChat echoed the token: it is not in the error.
    let token = server.current_token().unwrap();
    assert!(!err.to_string().contains(&token), "{err}");
    assert!(err.message().contains("<redacted>"), "{err}");
}

#[tokio::test]
async fn recipients_who_cannot_receive() {
    let server = WeChatServer::start().await;
    let ch = channel(&server);
    let err = ch.send(&report_ready(STRANGER)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRecipient, "{err}");
    assert_eq!(err.code(), Some("43004"));
    assert!(!err.to_string().contains(STRANGER), "{err}");

    let err = ch.send(&report_ready("not-an-openid")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRecipient, "{err}");
    assert_eq!(err.code(), Some("40003"));
}

#[tokio::test]
async fn quotas_are_rate_limited_with_a_retry_time() {
    let server = WeChatServer::start().await;
    let clock = manual_clock(); // 08:00 in Beijing
    let ch = channel_with_clock(&server, clock);
    server.script_send([
        Answer::Json(json!({"errcode": 45009, "errmsg": "reach max api daily quota limit"})),
        Answer::Json(json!({"errcode": 45011, "errmsg": "api minute-quota reach limit"})),
    ]);
    let err = ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    assert_eq!(err.code(), Some("45009"));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(16 * 3600)));
    assert!(
        err.message().contains("reach max api daily quota limit"),
        "{err}"
    );

    let err = ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
}

#[tokio::test]
async fn template_and_data_refusals_are_permanent() {
    let server = WeChatServer::start().await;
    let mut config = server.config();
    config["templates"]["report_ready"]["template_id"] = json!("TPL-unknown");
    let ch = build("wechat.template", &config).unwrap();
    let err = ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.code(), Some("40037"));

    let ch = channel(&server);
    let mut out = report_ready(FOLLOWER);
    out.rendered = Some(testkit::rendered(&[(
        "json",
        r#"{"data":{"keyword1":"not an object"}}"#,
    )]));
    let err = ch.send(&out).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.code(), Some("47003"));
}

#[tokio::test]
async fn the_mapping_overrides_url_and_adds_a_miniprogram() {
    let server = WeChatServer::start().await;
    let mut config = server.config();
    config["templates"]["report_ready"]["url"] = json!("https://portal.example.com/reports");
    config["templates"]["report_ready"]["miniprogram"] =
        json!({"appid": "wxmini0123456789", "pagepath": "pages/reports/index"});
    let ch = build("wechat.template", &config).unwrap();
    sent(ch.send(&report_ready(FOLLOWER)).await);
    let body = &server.sends()[0].body;
    assert_eq!(body["url"], "https://portal.example.com/reports");
    assert_eq!(
        body["miniprogram"],
        json!({"appid": "wxmini0123456789", "pagepath": "pages/reports/index"})
    );
}

#[tokio::test]
async fn what_cannot_be_sent_costs_no_request() {
    let server = WeChatServer::start().await;
    let ch = channel(&server);
    // No Herald template at all.
    let plain = testkit::outgoing(testkit::message("t", "c"), "42", Some(FOLLOWER));
    let err = ch.send(&plain).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    // A template without a mapping.
    let mut other = report_ready(FOLLOWER);
    let mut m = (*other.message).clone();
    m.template = Some("invoice_due".into());
    other.message = Arc::new(m);
    let err = ch.send(&other).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains("invoice_due"), "{err}");
    // No wechat rendering.
    let mut unrendered = report_ready(FOLLOWER);
    unrendered.rendered = None;
    let err = ch.send(&unrendered).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains("wechat.json.j2"), "{err}");
    // No openid.
    let err = ch
        .send(&report_ready_with(None, &report_data()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRecipient, "{err}");

    assert!(server.token_requests().is_empty());
    assert!(server.sends().is_empty());
}

#[tokio::test]
async fn a_wrong_secret_is_a_config_error_that_does_not_show_it() {
    let server = WeChatServer::start().await;
    let mut config = server.config();
    config["app_secret"] = json!("wrong-s3cret-value");
    let ch = build("wechat.template", &config).unwrap();
    let err = ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(err.code(), Some("40125"));
    assert!(err.message().contains("invalid appsecret"), "{err}");
    assert!(!err.to_string().contains("wrong-s3cret"), "{err}");
    assert_eq!(ch.health().as_str(), "degraded");
    assert!(!format!("{:?}", ch.health()).contains("wrong-s3cret"));
    // Not cached: the next send asks again.
    ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!(server.token_requests().len(), 2);
    assert!(server.sends().is_empty());

    let mut config = server.config();
    config["app_id"] = json!("wx-not-this-account");
    let ch = build("wechat.template", &config).unwrap();
    let err = ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(err.code(), Some("40013"));
}

#[tokio::test]
async fn token_refusals_and_outages() {
    let server = WeChatServer::start().await;
    let ch = channel(&server);
    server.script_token([
        Answer::Json(
            json!({"errcode": 40164, "errmsg": "invalid ip 203.0.113.7, not in whitelist"}),
        ),
        Answer::Json(json!({"errcode": -1, "errmsg": "system error"})),
        Answer::Status(502),
    ]);
    let err = ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!((err.kind(), err.code()), (ErrorKind::Config, Some("40164")));
    let err = ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!((err.kind(), err.code()), (ErrorKind::Transient, Some("-1")));
    let err = ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Transient, Some("HTTP 502"))
    );
    assert_eq!(ch.health().as_str(), "degraded");
    sent(ch.send(&report_ready(FOLLOWER)).await);
    assert_eq!(ch.health().as_str(), "ok");
}

#[tokio::test]
async fn concurrent_sends_on_a_cold_cache_fetch_one_token() {
    let server = WeChatServer::start().await;
    let ch = channel(&server);
    server.hold_tokens();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let ch = ch.clone();
        let mut out = report_ready(FOLLOWER);
        out.delivery_id = 500 + i;
        tasks.push(tokio::spawn(async move { ch.send(&out).await }));
    }
    // The first send is waiting for its token; let the others reach the cache too (this is
    // a current-thread runtime: they run while the first one waits).
    server.token_request_arrived().await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    server.release_tokens();
    for t in tasks {
        sent(t.await.expect("task"));
    }
    assert_eq!(server.token_requests(), vec![token_request(false)]);
    assert_eq!(server.sends().len(), 8);
}

/// Two instances of the same account, built with one shared cache: two "nodes" of a
/// cluster.
fn two_nodes(server: &WeChatServer) -> ([Arc<dyn Channel>; 2], Arc<WatchedCache>) {
    let cache = Arc::new(WatchedCache::default());
    let services = cluster_services(cache.clone());
    let node = || build_with("wechat.template", &server.config(), &services).expect("valid");
    ([node(), node()], cache)
}

#[tokio::test]
async fn two_nodes_sending_concurrently_fetch_one_token() {
    let server = WeChatServer::start().await;
    let (nodes, cache) = two_nodes(&server);
    server.hold_tokens();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let ch = nodes[i % 2].clone();
        let mut out = report_ready(FOLLOWER);
        out.delivery_id = 700 + i as i64;
        tasks.push(tokio::spawn(async move { ch.send(&out).await }));
    }
    // One node is fetching; the other waits for that fetch instead of making its own.
    server.token_request_arrived().await;
    cache.lock_refused().await;
    server.release_tokens();
    for t in tasks {
        sent(t.await.expect("task"));
    }
    assert_eq!(server.token_requests(), vec![token_request(false)]);
    let token = server.current_token().unwrap();
    let sends = server.sends();
    assert_eq!(sends.len(), 8);
    assert!(sends.iter().all(|s| s.access_token == token));
}

#[tokio::test]
async fn a_token_refused_on_two_nodes_is_refreshed_once_for_both() {
    let server = WeChatServer::start().await;
    let (nodes, cache) = two_nodes(&server);
    for ch in &nodes {
        sent(ch.send(&report_ready(FOLLOWER)).await);
    }
    assert_eq!(server.token_requests().len(), 1);
    let old = server.current_token().unwrap();
    server.rotate_token_elsewhere(); // both nodes' copies are now refused with 40001

    server.hold_tokens();
    let tasks: Vec<_> = nodes
        .iter()
        .map(|ch| {
            let ch = ch.clone();
            tokio::spawn(async move { ch.send(&report_ready(FOLLOWER)).await })
        })
        .collect();
    // One node forces the refresh; the other waits for its token.
    server.token_request_arrived().await;
    cache.lock_refused().await;
    server.release_tokens();
    for t in tasks {
        sent(t.await.expect("task"));
    }
    assert_eq!(
        server.token_requests(),
        vec![token_request(false), token_request(true)],
        "one forced refresh in the cluster"
    );
    let new = server.current_token().unwrap();
    assert_ne!(new, old);
    let sends = server.sends();
    assert_eq!(sends.len(), 6, "2 warm-up, 2 refused, 2 repeated");
    let tokens: Vec<&str> = sends[2..].iter().map(|s| s.access_token.as_str()).collect();
    assert_eq!(tokens.iter().filter(|t| **t == old).count(), 2);
    assert_eq!(tokens.iter().filter(|t| **t == new).count(), 2);
    // Both keep using the new token.
    for ch in &nodes {
        sent(ch.send(&report_ready(FOLLOWER)).await);
    }
    assert_eq!(server.token_requests().len(), 2);
    assert!(server.sends()[6..].iter().all(|s| s.access_token == new));
}

#[tokio::test]
async fn the_token_is_refreshed_after_expires_in_minus_300s() {
    let server = WeChatServer::start().await;
    let clock = manual_clock();
    let ch = channel_with_clock(&server, clock.clone());
    sent(ch.send(&report_ready(FOLLOWER)).await);
    clock.advance(Duration::from_secs(7200 - 300 - 1));
    sent(ch.send(&report_ready(FOLLOWER)).await);
    assert_eq!(server.token_requests().len(), 1, "still fresh at 6899 s");
    clock.advance(Duration::from_secs(1));
    sent(ch.send(&report_ready(FOLLOWER)).await);
    assert_eq!(
        server.token_requests(),
        vec![token_request(false), token_request(false)],
        "refreshed at 6900 s, without forcing"
    );

    // A shorter expires_in from WeChat is honoured.
    server.set_expires_in(1000);
    server.rotate_token_elsewhere();
    sent(ch.send(&report_ready(FOLLOWER)).await); // refused, refreshed (forced)
    assert_eq!(server.token_requests().len(), 3);
    clock.advance(Duration::from_secs(700));
    sent(ch.send(&report_ready(FOLLOWER)).await);
    assert_eq!(
        server.token_requests().len(),
        4,
        "refreshed at 1000 - 300 s"
    );
}

#[tokio::test]
async fn timeouts_are_transient_and_never_show_the_token() {
    let server = WeChatServer::start().await;
    let mut config = server.config();
    config["timeout"] = json!("300ms");
    let ch = build("wechat.template", &config).unwrap();
    server.script_send([Answer::Hang]);
    let err = ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.message().contains("timed out"), "{err}");
    let token = server.current_token().unwrap();
    assert!(!err.to_string().contains(&token), "{err}");
    assert!(!err.to_string().contains("access_token="), "{err}");

    // Nothing listening: transient too.
    let mut config = server.config();
    config["endpoint"] = json!("http://127.0.0.1:1");
    let ch = build("wechat.template", &config).unwrap();
    let err = ch.send(&report_ready(FOLLOWER)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(!err.to_string().contains(APP_SECRET), "{err}");
}

#[test]
fn debug_output_has_no_secret() {
    let config = json!({
        "app_id": APP_ID,
        "app_secret": APP_SECRET,
        "templates": {"report_ready": {"template_id": TEMPLATE_ID}},
    });
    let services = Services::default();
    let ch = TemplateChannel::from_context(&BuildContext {
        name: "wechat",
        config: &config,
        services: &services,
    })
    .unwrap();
    let debug = format!("{ch:?}");
    assert!(!debug.contains(APP_SECRET), "{debug}");
    assert!(debug.contains(APP_ID), "{debug}");
}

#[test]
fn config_errors_are_clear() {
    let base = json!({
        "app_id": APP_ID,
        "app_secret": APP_SECRET,
        "templates": {"report_ready": {"template_id": TEMPLATE_ID}},
    });
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
    for (config, expected) in [
        (with("secret", json!("x")), "unknown field `secret`"),
        (without("app_secret"), "missing field `app_secret`"),
        (without("app_id"), "missing field `app_id`"),
        (with("endpoint", json!("ftp://x")), "endpoint:"),
        (with("timeout", json!("1 fortnight")), "timeout:"),
        (
            with("templates", json!({"report_ready": {"template": "x"}})),
            "unknown field `template`",
        ),
    ] {
        let err = build("wechat.template", &config)
            .err()
            .expect("invalid")
            .to_string();
        assert!(err.starts_with("channels.wechat: "), "{config}: {err}");
        assert!(
            err.contains(expected),
            "{config}: expected {expected:?} in {err}"
        );
        assert!(!err.contains(APP_SECRET), "{err}");
    }
}
