//! The `webhook.json` channel end to end: through an in-process Herald (REST API →
//! dispatcher → channel → local receiver), and the channel alone against the same receiver
//! to check the exact request and the classification of real answers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::*;
use herald_channel::testkit::{message, outgoing, rendered};
use herald_channel::{Accepted, BuildContext, Channel, ErrorKind, Services};
use serde_json::{json, Value};

// Links the crate, so its `inventory::submit!` registers `webhook.json` in this test binary.
use herald_custom_channel as webhook;

// ---------------------------------------------------------------------------------------------
// Through Herald
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn herald_lists_the_instance_and_delivers_a_signed_post() {
    let receiver = Receiver::start([]).await;
    let herald = start_herald(vec![("hook", hook_table(&receiver.url(), &[]))]).await;

    let (status, channels) = herald.get("/api/v1/channels").await;
    assert_eq!(status, StatusCode::OK, "{channels}");
    assert_lists_hook(&channels);

    let (status, sent) = herald
        .send(&json!({
            "title": "Deploy finished",
            "content": "v1.2.3 is live",
            "receivers": ["42"],
            "channels": ["hook"],
        }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    assert_eq!(sent["deliveries"], 1, "{sent}");
    let id = sent["id"].as_str().expect("message id").to_owned();

    let delivery = herald
        .wait_delivery(&id, "42", "hook", "the hook delivery to be sent", |d| {
            d["status"] == "sent"
        })
        .await;
    assert_eq!(delivery["attempts"], 1, "{delivery}");
    assert!(delivery.get("error").is_none(), "{delivery}");

    // `sent` is recorded after the receiver answered: every request has arrived by now.
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "exactly one POST: {requests:?}");
    let req = &requests[0];
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, "/hook");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.header("x-herald-signature"),
        Some(expected_signature(SECRET, &req.body).as_str()),
        "signature over the exact body"
    );
    let body = req.json();
    assert_eq!(body["receiver"], "42", "{body}");
    assert_eq!(body["address"], Value::Null, "{body}");
    assert_eq!(body["attempt"], 1, "{body}");
    assert_eq!(body["message"]["id"], id.as_str(), "{body}");
    assert_eq!(body["message"]["title"], "Deploy finished", "{body}");
    assert_eq!(body["message"]["content"], "v1.2.3 is live", "{body}");
    assert_eq!(body["message"]["type"], 0, "{body}");
    assert_eq!(body["rendered"], Value::Null, "{body}");
    let delivery_id = body["deliveryId"].as_i64().expect("numeric deliveryId");
    assert_eq!(
        req.header("idempotency-key"),
        Some(format!("{id}.{delivery_id}").as_str())
    );

    herald.shutdown().await;
}

/// The channel only classifies the 500 as transient; the core's provider outbox retries.
#[tokio::test]
async fn herald_retries_a_server_error_until_sent() {
    let receiver = Receiver::start([Reply::status(500), Reply::status(200)]).await;
    // Short backoff and poll interval keep the test fast; the defaults (seconds) would only
    // make it slow. (Today a retry is picked up at the worker's next poll, not at its due
    // time, so `poll_interval` matters as much as `retry_base`.)
    let herald = start_herald_with(vec![("hook", hook_table(&receiver.url(), &[]))], |s| {
        s.dispatch.retry_base = Duration::from_millis(50);
        s.dispatch.retry_max = Duration::from_millis(200);
        s.dispatch.poll_interval = Duration::from_millis(300);
    })
    .await;

    let (status, sent) = herald
        .send(&json!({
            "title": "flaky", "content": "try again", "receivers": ["42"], "channels": ["hook"],
        }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    let id = sent["id"].as_str().expect("message id").to_owned();

    let delivery = herald
        .wait_delivery(
            &id,
            "42",
            "hook",
            "the hook delivery to be sent after a retry",
            |d| d["status"] == "sent",
        )
        .await;
    assert!(
        delivery["attempts"].as_i64().unwrap_or(0) >= 2,
        "{delivery}"
    );
    let requests = receiver.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    // Every attempt carries the same idempotency key and a growing attempt number.
    assert_eq!(
        requests[0].header("idempotency-key"),
        requests[1].header("idempotency-key")
    );
    assert_eq!(requests[0].json()["attempt"], 1);
    assert_eq!(requests[1].json()["attempt"], 2);

    herald.shutdown().await;
}

#[tokio::test]
async fn herald_fails_the_delivery_on_a_client_error() {
    let receiver = Receiver::start([Reply::status(400)]).await;
    let herald = start_herald(vec![("hook", hook_table(&receiver.url(), &[]))]).await;

    let (status, sent) = herald
        .send(&json!({
            "title": "bad", "content": "rejected", "receivers": ["42"], "channels": ["hook"],
        }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    let id = sent["id"].as_str().expect("message id").to_owned();

    let delivery = herald
        .wait_delivery(&id, "42", "hook", "the hook delivery to fail", |d| {
            d["status"] == "failed"
        })
        .await;
    let error = delivery["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("permanent: [400]"), "{delivery}");
    assert!(error.contains("400 Bad Request"), "{delivery}");
    assert_eq!(receiver.requests().len(), 1);

    herald.shutdown().await;
}

#[tokio::test]
async fn herald_refuses_to_start_with_a_bad_webhook_url() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = herald::config::Settings::for_data_dir(dir.path());
    settings
        .channels
        .insert("hook".into(), hook_table("ftp://example.com/x", &[]));
    let err = match herald::start(settings).await {
        Ok(_) => panic!("started with an ftp:// webhook url"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("channels.hook: url:"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The channel alone, against the local receiver
// ---------------------------------------------------------------------------------------------

fn channel(config: Value) -> Arc<dyn Channel> {
    let services = Services::default();
    webhook::build(BuildContext {
        name: "hook",
        config: &config,
        services: &services,
    })
    .unwrap_or_else(|e| panic!("build: {e}"))
}

fn hook(receiver: &Receiver) -> Arc<dyn Channel> {
    channel(json!({ "url": receiver.url(), "secret": SECRET }))
}

#[tokio::test]
async fn send_posts_the_exact_request() {
    let receiver = Receiver::start([Reply::status(202).header("X-Request-Id", "rcv-7")]).await;
    let ch = channel(json!({
        "url": format!("{}?tenant=acme", receiver.url()),
        "secret": SECRET,
        "timeout": "5s",
        "headers": { "Authorization": "Bearer abc", "X-Tenant": "acme" },
    }));
    let mut m = (*message("Report ready", "3 reports")).clone();
    m.template = Some("report_ready".into());
    m.data = Some(json!({"count": 3}));
    let mut out = outgoing(Arc::new(m), "42", None);
    out.delivery_id = 99;
    out.attempt = 3;
    out.rendered = Some(rendered(&[("txt", "You have 3 reports")]));

    let result = ch.send(&out).await;
    assert_eq!(
        result,
        Ok(Accepted::Sent {
            provider_id: Some("rcv-7".into())
        })
    );

    let requests = receiver.wait_requests(1).await;
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, "/hook");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("user-agent"), Some(webhook::USER_AGENT));
    assert!(webhook::USER_AGENT.starts_with("herald-webhook/"));
    assert_eq!(req.header("authorization"), Some("Bearer abc"));
    assert_eq!(req.header("x-tenant"), Some("acme"));
    assert_eq!(
        req.header("idempotency-key"),
        Some("0190f5c2-0000-7000-8000-000000000001.99")
    );
    let signature = req.header("x-herald-signature").expect("signature header");
    assert_eq!(signature, expected_signature(SECRET, &req.body));
    assert!(webhook::verify_signature(
        SECRET.as_bytes(),
        &req.body,
        signature
    ));
    assert_eq!(
        req.json(),
        json!({
            "deliveryId": 99,
            "attempt": 3,
            "receiver": "42",
            "address": null,
            "message": {
                "id": "0190f5c2-0000-7000-8000-000000000001",
                "title": "Report ready",
                "content": "3 reports",
                "type": 0,
                "sender": "test",
                "createdAt": "2026-01-01T00:00:00.000Z",
                "template": "report_ready",
                "data": {"count": 3},
            },
            "rendered": {"txt": "You have 3 reports"},
        })
    );
}

#[tokio::test]
async fn no_signature_without_a_secret() {
    let receiver = Receiver::start([]).await;
    let ch = channel(json!({ "url": receiver.url() }));
    let result = ch.send(&outgoing(message("t", "c"), "1", None)).await;
    assert_eq!(result, Ok(Accepted::Sent { provider_id: None }));
    let req = &receiver.wait_requests(1).await[0];
    assert_eq!(req.header("x-herald-signature"), None);
}

#[tokio::test]
async fn real_answers_are_classified() {
    let receiver = Receiver::start([
        Reply::status(429).header("Retry-After", "30"),
        Reply::status(503).header("Retry-After", "5"),
        Reply::status(502),
        Reply::status(410),
        Reply::status(422),
    ])
    .await;
    let ch = hook(&receiver);
    let out = outgoing(message("t", "c"), "42", None);
    let expected = [
        (ErrorKind::RateLimited, "429", Some(Duration::from_secs(30))),
        (ErrorKind::Transient, "503", Some(Duration::from_secs(5))),
        (ErrorKind::Transient, "502", None),
        (ErrorKind::Config, "410", None),
        (ErrorKind::Permanent, "422", None),
    ];
    for (kind, code, retry_after) in expected {
        let err = ch.send(&out).await.expect_err("an error answer");
        assert_eq!(err.kind(), kind, "{err}");
        assert_eq!(err.code(), Some(code), "{err}");
        assert_eq!(err.retry_after(), retry_after, "{err}");
    }
    assert_eq!(
        receiver.requests().len(),
        expected.len(),
        "one request each"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let receiver = Receiver::start([]).await;
    let target = format!("http://{}/elsewhere", receiver.addr);
    // The first answer redirects to the receiver itself: following it would show up as a
    // second request.
    let redirecting =
        Receiver::start([Reply::status(307).header("Location", target.as_str())]).await;
    let ch = hook(&redirecting);
    let err = ch
        .send(&outgoing(message("t", "c"), "42", None))
        .await
        .expect_err("a redirect is an error");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(err.code(), Some("307"));
    assert_eq!(redirecting.requests().len(), 1);
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn connection_refused_is_transient() {
    // A port that was just free, with nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let ch = channel(json!({ "url": format!("http://127.0.0.1:{port}/hook?token=T0KEN") }));
    let err = ch
        .send(&outgoing(message("t", "c"), "42", None))
        .await
        .expect_err("nobody listens");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.is_retryable());
    assert!(!err.to_string().contains("T0KEN"), "URL leaked: {err}");
}

#[tokio::test]
async fn timeout_is_transient() {
    let receiver = Receiver::start([Reply::hang()]).await;
    let ch = channel(json!({ "url": receiver.url(), "timeout": "200ms" }));
    let err = tokio::time::timeout(DEADLINE, ch.send(&outgoing(message("t", "c"), "42", None)))
        .await
        .expect("the channel's own timeout fires first")
        .expect_err("the receiver never answers");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.message().contains("timed out"), "{err}");
}
