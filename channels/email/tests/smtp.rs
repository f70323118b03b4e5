//! `email.smtp` end to end: the channel, built through its descriptor, against the real
//! SMTP server of `src/testing.rs` on loopback.

use std::sync::Arc;
use std::time::Duration;

use herald_channel::testkit::ManualClock;
use herald_channel::{testkit, Accepted, AddressKind, BuildContext, Channel, ErrorKind, Services};
use serde_json::json;

use herald_channel_email::testing::TestSmtp;

const WAIT: Duration = Duration::from_secs(5);

fn build(config: serde_json::Value) -> Result<Arc<dyn Channel>, herald_channel::ConfigError> {
    let descriptor = herald_channel::find("email.smtp").expect("email.smtp is registered");
    let services = Services::default();
    (descriptor.build)(BuildContext {
        name: "mail",
        config: &config,
        services: &services,
    })
}

fn channel(smtp: &TestSmtp) -> Arc<dyn Channel> {
    build(smtp.channel_config()).expect("the test server's config is valid")
}

#[test]
fn descriptor_is_registered_and_builds_without_a_runtime() {
    let d = herald_channel::find("email.smtp").expect("registered");
    assert_eq!(d.family(), "email");
    assert_eq!(d.address, AddressKind::Email);
    assert!(!d.presence);
    assert!(!d.summary.is_empty());
    let ch = build(json!({
        "host": "smtp.example.com",
        "from": "Herald <noreply@example.com>",
        "username": "herald",
        "password": "p",
        "tls": "tls",
        "timeout": "10s",
        "pool_max_size": 2,
        "hello_name": "herald.example.com",
        "reply_to": "support@example.com",
    }));
    assert!(ch.is_ok(), "{:?}", ch.err());
}

#[test]
fn config_errors_are_clear() {
    let cases = [
        (
            json!({"host": "h", "from": "a@example.com", "hots": "x"}),
            "unknown field `hots`",
        ),
        (json!({"host": "h"}), "missing field `from`"),
        (
            json!({"host": "h", "from": "Herald <nope>"}),
            "from: not a valid mailbox",
        ),
        (
            json!({"host": "h", "from": "a@example.com", "username": "u"}),
            "password: required when `username` is set",
        ),
        (
            json!({"host": "h", "from": "a@example.com", "tls": "ssl"}),
            "tls: unknown variant `ssl`",
        ),
    ];
    for (config, expected) in cases {
        let err = build(config.clone()).err().expect("invalid").to_string();
        assert!(err.starts_with("channels.mail: "), "{config}: {err}");
        assert!(err.contains(expected), "{config}: {err}");
    }
}

#[tokio::test]
async fn rendered_parts_become_multipart_alternative() {
    let smtp = TestSmtp::start();
    let ch = channel(&smtp);
    let mut out = testkit::outgoing(
        testkit::message("fallback title", "fallback content"),
        "42",
        Some("bob@example.org"),
    );
    out.delivery_id = 7;
    out.rendered = Some(testkit::rendered(&[
        ("subject", "报告已生成：第三季度\n"),
        (
            "txt",
            "Hello Bob,\nyour report 42 is ready.\n.a line starting with a dot",
        ),
        (
            "html",
            "<p>Hello Bob, your report <b>42</b> is ready. 你好</p>",
        ),
    ]));

    let accepted = ch.send(&out).await.expect("sent");
    let message_id = "0190f5c2-0000-7000-8000-000000000001.7@example.com";
    assert_eq!(
        accepted,
        Accepted::Sent {
            provider_id: Some(message_id.into())
        }
    );

    let mail = smtp.wait_for(1, WAIT).await;
    assert_eq!(mail.len(), 1);
    let m = &mail[0];
    assert_eq!(m.from, "herald@example.com");
    assert_eq!(m.to, ["bob@example.org"]);
    assert_eq!(
        m.header("From").as_deref(),
        Some("Herald <herald@example.com>")
    );
    assert_eq!(m.header("To").as_deref(), Some("bob@example.org"));
    assert_eq!(m.header("Subject").as_deref(), Some("报告已生成：第三季度"));
    assert_eq!(m.header("Message-ID"), Some(format!("<{message_id}>")));
    assert!(m.header("Date").is_some());
    assert_eq!(m.mime_type().as_deref(), Some("multipart/alternative"));
    let types: Vec<_> = m.parts().into_iter().map(|p| p.mime_type).collect();
    assert_eq!(types, ["text/plain", "text/html"], "plain first, then HTML");
    assert_eq!(
        m.text_part().as_deref(),
        Some("Hello Bob,\nyour report 42 is ready.\n.a line starting with a dot")
    );
    assert_eq!(
        m.html_part().as_deref(),
        Some("<p>Hello Bob, your report <b>42</b> is ready. 你好</p>")
    );
}

/// `Date:` is the clock the services lend (the system clock unless one is lent).
#[tokio::test]
async fn the_date_header_comes_from_the_lent_clock() {
    let smtp = TestSmtp::start();
    let clock = ManualClock::at_unix_secs(1_767_225_600); // 2026-01-01T00:00:00Z
    let descriptor = herald_channel::find("email.smtp").expect("email.smtp is registered");
    let config = smtp.channel_config();
    let ch = (descriptor.build)(BuildContext {
        name: "mail",
        config: &config,
        services: &clock.services(),
    })
    .expect("the test server's config is valid");
    let out = testkit::outgoing(testkit::message("t", "c"), "42", Some("bob@example.org"));
    ch.send(&out).await.expect("sent");
    let mail = smtp.wait_for(1, WAIT).await;
    assert_eq!(
        mail[0].header("Date").as_deref(),
        Some("Thu, 01 Jan 2026 00:00:00 +0000")
    );
}

#[tokio::test]
async fn without_a_template_title_and_content_are_plain_text() {
    let smtp = TestSmtp::start();
    let ch = channel(&smtp);
    let out = testkit::outgoing(
        testkit::message("Build 1234 failed", "Step `test` failed after 3 minutes."),
        "42",
        Some("ops@example.org"),
    );
    ch.send(&out).await.expect("sent");
    let mail = smtp.wait_for(1, WAIT).await;
    assert_eq!(mail.len(), 1);
    let m = &mail[0];
    assert_eq!(m.header("Subject").as_deref(), Some("Build 1234 failed"));
    assert_eq!(m.mime_type().as_deref(), Some("text/plain"));
    assert_eq!(
        m.text_part().as_deref(),
        Some("Step `test` failed after 3 minutes.")
    );
    assert_eq!(m.html_part(), None);
}

#[tokio::test]
async fn reply_451_is_transient_and_a_retry_goes_through() {
    let smtp = TestSmtp::start();
    smtp.script_data_replies([(451, "4.3.0 Local error in processing".to_owned())]);
    let ch = channel(&smtp);
    let out = testkit::outgoing(testkit::message("t", "c"), "42", Some("bob@example.org"));

    let err = ch.send(&out).await.expect_err("451");
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(err.code(), Some("451"));
    assert!(err.is_retryable());
    assert!(smtp.received().is_empty());

    ch.send(&out).await.expect("the retry is accepted");
    assert_eq!(smtp.wait_for(1, WAIT).await.len(), 1);
    assert_eq!(smtp.data_attempts(), 2);
}

#[tokio::test]
async fn unknown_recipient_is_bad_recipient() {
    let smtp = TestSmtp::start();
    smtp.reject_rcpt(
        "gone@example.org",
        550,
        "5.1.1 <gone@example.org>: user unknown",
    );
    let ch = channel(&smtp);
    let out = testkit::outgoing(testkit::message("t", "c"), "42", Some("gone@example.org"));

    let err = ch.send(&out).await.expect_err("550");
    assert_eq!(err.kind(), ErrorKind::BadRecipient);
    assert_eq!(err.code(), Some("550"));
    assert!(!err.to_string().contains("gone@"), "{err}");
    assert_eq!(smtp.data_attempts(), 0);

    // The pooled connection is still good for the next delivery.
    let out = testkit::outgoing(testkit::message("t", "c"), "43", Some("here@example.org"));
    ch.send(&out).await.expect("sent");
    assert_eq!(smtp.wait_for(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn reply_554_on_data_is_permanent() {
    let smtp = TestSmtp::start();
    smtp.script_data_replies([(554, "5.6.0 Transaction failed".to_owned())]);
    let ch = channel(&smtp);
    let out = testkit::outgoing(testkit::message("t", "c"), "42", Some("bob@example.org"));
    let err = ch.send(&out).await.expect_err("554");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert_eq!(err.code(), Some("554"));
    assert_eq!(smtp.data_attempts(), 1);
}

#[tokio::test]
async fn missing_address_is_bad_recipient() {
    let smtp = TestSmtp::start();
    let ch = channel(&smtp);
    let out = testkit::outgoing(testkit::message("t", "c"), "42", None);
    let err = ch.send(&out).await.expect_err("no address");
    assert_eq!(err.kind(), ErrorKind::BadRecipient);
    assert_eq!(err.message(), "no e-mail address");
    assert_eq!(smtp.connections(), 0);
}

#[tokio::test]
async fn connection_refused_is_transient_and_degrades_health() {
    // A port that was just free: bind, note it, close.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let ch = build(json!({
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "from": "herald@example.com",
        "timeout": "5s",
    }))
    .expect("valid");
    let out = testkit::outgoing(testkit::message("t", "c"), "42", Some("bob@example.org"));
    for _ in 0..3 {
        assert_eq!(ch.health().as_str(), "ok");
        let err = ch.send(&out).await.expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
        assert_eq!(err.code(), None);
        assert!(err.message().contains("refused"), "{err}");
    }
    assert_eq!(ch.health().as_str(), "degraded");
}

#[tokio::test]
async fn auth_over_plain_tcp_is_verified_by_the_server() {
    let smtp = TestSmtp::start();
    smtp.require_auth("herald", "s3cret-pass");

    let mut config = smtp.channel_config();
    config["username"] = json!("herald");
    config["password"] = json!("s3cret-pass");
    let ch = build(config.clone()).expect("valid");
    let out = testkit::outgoing(testkit::message("t", "c"), "42", Some("bob@example.org"));
    ch.send(&out).await.expect("authenticated and sent");
    let mail = smtp.wait_for(1, WAIT).await;
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].auth_user.as_deref(), Some("herald"));

    // Wrong password: the server says 535, which is our configuration's fault.
    config["password"] = json!("wrong-pass");
    let err = build(config)
        .expect("valid")
        .send(&out)
        .await
        .expect_err("535");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.code(), Some("535"));
    assert!(!err.to_string().contains("wrong-pass"), "{err}");

    // No credentials at all: 530 on MAIL.
    let err = channel(&smtp).send(&out).await.expect_err("530");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.code(), Some("530"));
}

#[tokio::test]
async fn connections_are_pooled() {
    let smtp = TestSmtp::start();
    let ch = channel(&smtp);
    for i in 0..3 {
        let out = testkit::outgoing(testkit::message("t", "c"), "42", Some("bob@example.org"));
        let out = herald_channel::Outgoing {
            delivery_id: i,
            ..out
        };
        ch.send(&out).await.expect("sent");
        // lettre hands a used connection back to the pool in a spawned task: let it run.
        tokio::task::yield_now().await;
    }
    assert_eq!(smtp.wait_for(3, WAIT).await.len(), 3);
    assert_eq!(smtp.connections(), 1);
}

#[tokio::test]
async fn starttls_required_but_not_offered_is_a_config_error() {
    let smtp = TestSmtp::start();
    let mut config = smtp.channel_config();
    config["tls"] = json!("starttls");
    let ch = build(config).expect("valid");
    let out = testkit::outgoing(testkit::message("t", "c"), "42", Some("bob@example.org"));
    let err = ch.send(&out).await.expect_err("no STARTTLS");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains("STARTTLS"), "{err}");
    assert!(smtp.received().is_empty());
}

#[tokio::test]
async fn implicit_tls_against_a_plain_server_is_transient() {
    // Also proves the rustls (ring) client is wired up: the handshake is attempted.
    let smtp = TestSmtp::start();
    let mut config = smtp.channel_config();
    config["tls"] = json!("tls");
    let ch = build(config).expect("valid");
    let out = testkit::outgoing(testkit::message("t", "c"), "42", Some("bob@example.org"));
    let err = ch.send(&out).await.expect_err("handshake fails");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.code(), None);
}

#[tokio::test]
async fn a_batch_is_sent_concurrently_and_answered_in_order() {
    let smtp = TestSmtp::start();
    smtp.reject_rcpt("gone@example.org", 550, "5.1.1 user unknown");
    let mut config = smtp.channel_config();
    config["pool_max_size"] = json!(2);
    let ch = build(config).expect("valid");
    let outs: Vec<_> = ["a", "b", "gone", "c", "d"]
        .iter()
        .zip(1..)
        .map(|(user, id)| herald_channel::Outgoing {
            delivery_id: id,
            ..testkit::outgoing(
                testkit::message("t", "c"),
                user,
                Some(&format!("{user}@example.org")),
            )
        })
        .collect();
    let results = ch.send_batch(&outs).await;
    assert_eq!(results.len(), 5);
    for (i, result) in results.iter().enumerate() {
        if i == 2 {
            let err = result.as_ref().expect_err("rejected recipient");
            assert_eq!(err.kind(), ErrorKind::BadRecipient);
        } else {
            assert!(result.is_ok(), "{i}: {result:?}");
        }
    }
    let mut to: Vec<_> = smtp
        .wait_for(4, WAIT)
        .await
        .into_iter()
        .flat_map(|m| m.to)
        .collect();
    to.sort();
    assert_eq!(
        to,
        [
            "a@example.org",
            "b@example.org",
            "c@example.org",
            "d@example.org"
        ]
    );
}
