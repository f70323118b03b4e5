//! The e-mail channel end to end: REST API → store → outbox → `email.smtp` (lettre) → a
//! real SMTP server on loopback (`herald_channel_email::testing::TestSmtp`), including
//! SMTP replies that force retries and failures, and a `kill -9` while deliveries are
//! leased. Time moves by an injected clock, never by sleeping.

mod common;

use std::time::Duration;

use common::*;
use herald_channel_email::testing::TestSmtp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn toml_table(v: &Value) -> toml::Table {
    toml::Table::try_from(v).expect("JSON object → TOML table")
}

/// A server whose instance `mail` points at `smtp`, with a manual clock and the repo's
/// `templates/` directory.
async fn app_with_smtp(smtp: &TestSmtp) -> TestApp {
    let mut table = toml_table(&smtp.channel_config());
    table.insert("kind".into(), toml::Value::String("email.smtp".into()));
    spawn_app_clock(
        move |s| {
            s.channels.insert("mail".into(), table);
            s.templates.dir =
                Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"));
            s.dispatch.retry_base = Duration::from_secs(30);
            s.dispatch.lease = Duration::from_secs(600);
        },
        Some(herald::clock::ManualClock::default()),
    )
    .await
}

async fn put_email(app: &TestApp, user: &str, email: &str) {
    let (st, body) = app
        .api(
            Method::PUT,
            &format!("/api/v1/recipients/{user}"),
            Some(&json!({"name": format!("User {user}"), "email": email})),
        )
        .await;
    assert!(st == StatusCode::CREATED || st == StatusCode::OK, "{body}");
}

fn report_data() -> Value {
    json!({
        "patient_name": "李雷",
        "report_type": "CT chest",
        "report_id": "R-2026-0042",
        "hospital": "Herald General",
        "ready_at": "2026-11-29 09:30",
        "url": "https://reports.example.com/R-2026-0042"
    })
}

fn status(d: &Value) -> &str {
    d["status"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_templated_send_arrives_as_a_rendered_multipart_mail() {
    let smtp = TestSmtp::start();
    let app = app_with_smtp(&smtp).await;
    put_email(&app, "42", "li.lei@example.com").await;
    let id = send_ok(
        &app,
        json!({"receivers": ["42"], "channels": ["mail"], "template": "report_ready", "data": report_data()}),
    )
    .await;
    let mails = smtp.wait_for(1, DEADLINE).await;
    assert_eq!(mails.len(), 1, "one mail");
    let mail = &mails[0];
    assert_eq!(mail.to, vec!["li.lei@example.com".to_owned()]);
    assert_eq!(mail.from, "herald@example.com");
    assert_eq!(
        mail.header("From").as_deref(),
        Some("Herald <herald@example.com>")
    );
    assert_eq!(mail.header("To").as_deref(), Some("li.lei@example.com"));
    let subject = mail.header("Subject").expect("a Subject");
    assert!(subject.contains("CT chest"), "{subject}");
    assert!(mail
        .mime_type()
        .unwrap_or_default()
        .starts_with("multipart/alternative"));
    let text = mail.text_part().expect("a text/plain part");
    let html = mail.html_part().expect("a text/html part");
    for part in [&text, &html] {
        assert!(part.contains("李雷"), "{part}");
        assert!(part.contains("R-2026-0042"), "{part}");
        assert!(part.contains("Herald General"), "{part}");
    }
    assert!(html.contains("<"), "html markup: {html}");
    // The message records the template; the delivery is sent after one attempt.
    let d = app
        .wait_delivery(&id, "42", "mail", "sent", |d| status(d) == "sent")
        .await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(app.message(&id).await["template"], "report_ready");
    // The Message-ID ties the mail to the message and delivery (retries are recognisable).
    let mid = mail.header("Message-ID").expect("Message-ID");
    assert!(mid.contains(&id), "{mid}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_plain_send_arrives_with_title_and_content() {
    let smtp = TestSmtp::start();
    let app = app_with_smtp(&smtp).await;
    put_email(&app, "7", "seven@example.com").await;
    send_ok(
        &app,
        json!({"title": "Maintenance tonight", "content": "Reports are read-only 22:00-23:00.", "receivers": ["7"], "channels": ["mail"]}),
    )
    .await;
    let mail = smtp.wait_for(1, DEADLINE).await.remove(0);
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("Maintenance tonight")
    );
    assert!(mail
        .text_part()
        .unwrap_or_default()
        .contains("Reports are read-only 22:00-23:00."));
    assert!(mail.html_part().is_none());
    app.shutdown().await;
}

#[tokio::test]
async fn smtp_451_twice_then_250_is_sent_on_the_third_attempt() {
    let smtp = TestSmtp::start();
    smtp.script_data_replies([
        (451, "4.3.0 Temporary local problem".to_owned()),
        (451, "4.3.0 Temporary local problem".to_owned()),
    ]);
    let app = app_with_smtp(&smtp).await;
    put_email(&app, "1", "one@example.com").await;
    let id = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["1"], "channels": ["mail"]}),
    )
    .await;
    for n in 1..=2 {
        let d = app.wait_retry_scheduled(&id, "1", "mail", n).await;
        assert_eq!(status(&d), "pending", "{d}");
        let err = d["error"].as_str().unwrap();
        assert!(err.starts_with("transient:") && err.contains("451"), "{d}");
        assert!(smtp.received().is_empty());
        // Past the retry (≤ 72 s), well inside the lease of the next attempt.
        app.advance(Duration::from_secs(100));
    }
    let d = app
        .wait_delivery(&id, "1", "mail", "sent", |d| status(d) == "sent")
        .await;
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(smtp.data_attempts(), 3);
    assert_eq!(smtp.received().len(), 1, "delivered once");
    app.shutdown().await;
}

#[tokio::test]
async fn smtp_5xx_fails_at_once_and_is_never_retried() {
    let smtp = TestSmtp::start();
    smtp.reject_rcpt("gone@example.com", 550, "5.1.1 User unknown");
    smtp.script_data_replies([(554, "5.6.0 Message rejected".to_owned())]);
    let app = app_with_smtp(&smtp).await;
    put_email(&app, "gone", "gone@example.com").await;
    put_email(&app, "spam", "spam@example.com").await;
    let a = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["gone"], "channels": ["mail"]}),
    )
    .await;
    let d = app
        .wait_delivery(&a, "gone", "mail", "failed", |d| status(d) == "failed")
        .await;
    assert_eq!(d["attempts"], 1, "{d}");
    let err = d["error"].as_str().unwrap();
    assert!(
        err.starts_with("bad_recipient:") && err.contains("550"),
        "{err}"
    );
    let b = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["spam"], "channels": ["mail"]}),
    )
    .await;
    let d = app
        .wait_delivery(&b, "spam", "mail", "failed", |d| status(d) == "failed")
        .await;
    assert_eq!(d["attempts"], 1, "{d}");
    assert!(
        d["error"].as_str().unwrap().starts_with("permanent:"),
        "{d}"
    );
    // A day later nothing was tried again.
    app.advance(Duration::from_secs(86_400));
    let c = send_ok(
        &app,
        json!({"title": "later", "content": "c", "receivers": ["spam"], "channels": ["mail"]}),
    )
    .await;
    app.wait_delivery(&c, "spam", "mail", "sent", |d| status(d) == "sent")
        .await;
    assert_eq!(smtp.data_attempts(), 2, "the 554 message was not retried");
    assert_eq!(app.delivery(&a, "gone", "mail").await["attempts"], 1);
    app.shutdown().await;
}

#[tokio::test]
async fn connection_refused_is_retried() {
    // A port nothing listens on.
    let port = free_port();
    let mut table = toml::Table::new();
    for (k, v) in [
        ("kind", toml::Value::String("email.smtp".into())),
        ("host", toml::Value::String("127.0.0.1".into())),
        ("port", toml::Value::Integer(i64::from(port))),
        ("tls", toml::Value::String("none".into())),
        (
            "from",
            toml::Value::String("Herald <herald@example.com>".into()),
        ),
        ("timeout", toml::Value::String("5s".into())),
    ] {
        table.insert(k.into(), v);
    }
    let app = spawn_app_clock(
        move |s| {
            s.channels.insert("mail".into(), table);
        },
        Some(herald::clock::ManualClock::default()),
    )
    .await;
    put_email(&app, "1", "one@example.com").await;
    let id = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["1"], "channels": ["mail"]}),
    )
    .await;
    let d = app
        .wait_delivery(&id, "1", "mail", "a retry scheduled", |d| {
            d["attempts"] == 1 && d["nextAttemptAt"].is_string() && d["error"].is_string()
        })
        .await;
    assert_eq!(status(&d), "pending");
    assert!(
        d["error"].as_str().unwrap().starts_with("transient:"),
        "{d}"
    );
    app.advance(Duration::from_secs(3600));
    app.wait_delivery(&id, "1", "mail", "a second attempt", |d| d["attempts"] == 2)
        .await;
    let (_, channels) = app.api_get("/api/v1/channels").await;
    let mail = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mail")
        .unwrap()
        .clone();
    assert_eq!(mail["kind"], "email.smtp");
    assert_eq!(mail["retrying"], 1, "{mail}");
    app.shutdown().await;
}

#[tokio::test]
async fn email_config_and_template_errors_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = herald::config::Settings::for_data_dir(dir.path());
    let mut t = toml::Table::new();
    t.insert("kind".into(), toml::Value::String("email.smtp".into()));
    t.insert("host".into(), toml::Value::String("127.0.0.1".into()));
    t.insert("form".into(), toml::Value::String("x@example.com".into()));
    settings.channels.insert("mail".into(), t);
    let err = herald::start(settings)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("channels.mail") && err.contains("form"),
        "{err}"
    );

    // A broken template: the start fails naming the file and the line.
    let tpl = dir.path().join("tpl");
    std::fs::create_dir_all(tpl.join("broken")).unwrap();
    std::fs::write(
        tpl.join("broken/email.txt.j2"),
        "Hello {{ name }}\nline two\n{% if %}\n",
    )
    .unwrap();
    let mut settings = herald::config::Settings::for_data_dir(dir.path());
    settings.templates.dir = Some(tpl.clone());
    let err = herald::start(settings)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("broken/email.txt.j2"), "{err}");
    assert!(err.contains(":3"), "names line 3: {err}");

    // A template directory that was configured must exist.
    let mut settings = herald::config::Settings::for_data_dir(dir.path());
    settings.templates.dir = Some(dir.path().join("nope"));
    let err = herald::start(settings)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("templates.dir") && err.contains("nope"),
        "{err}"
    );
}

#[tokio::test]
async fn template_problems_at_send_time_are_422_and_store_nothing() {
    let smtp = TestSmtp::start();
    let app = app_with_smtp(&smtp).await;
    put_email(&app, "1", "one@example.com").await;
    let before = app.total().await;
    let cases = [
        (
            json!({"receivers": ["1"], "channels": ["mail"], "template": "nope", "data": {}}),
            "template",
        ),
        (
            json!({"receivers": ["1"], "channels": ["mail"], "template": "report_ready", "data": {"patient_name": "x"}}),
            "data",
        ),
        (
            json!({"receivers": ["1"], "channels": ["mail"], "template": "report_ready", "data": [1]}),
            "data",
        ),
        (
            json!({"title": "t", "content": "c", "receivers": ["1"], "data": {"a": 1}}),
            "data",
        ),
    ];
    for (body, field) in cases {
        let (st, resp) = send(&app, body.clone()).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {resp}");
        assert_eq!(resp["field"], field, "{body}: {resp}");
        assert_error_body(&resp);
    }
    assert_eq!(app.total().await, before, "nothing stored");
    assert!(smtp.received().is_empty());

    // WebSocket gets the rendered title/content of websocket.json.j2.
    let token = app.token("1");
    let (mut ws, _) = ws_login(&app, &token).await;
    send_ok(
        &app,
        json!({"receivers": ["1"], "template": "report_ready", "data": report_data()}),
    )
    .await;
    let frame = ws.next_message().await;
    assert!(
        frame["title"].as_str().unwrap().contains("CT chest"),
        "{frame}"
    );
    assert!(
        frame["content"].as_str().unwrap().contains("R-2026-0042"),
        "{frame}"
    );
    app.shutdown().await;
}

/// A TCP server that accepts connections and never says a word: SMTP clients hang in the
/// greeting until their timeout.
fn blackhole() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn write_config(dir: &std::path::Path, smtp_port: u16) {
    std::fs::write(
        dir.join("herald.toml"),
        format!(
            r#"
[dispatch]
send_timeout = "3s"
lease = "4s"
poll_interval = "200ms"

[channels.mail]
kind = "email.smtp"
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "Herald <herald@example.com>"
timeout = "3s"
"#
        ),
    )
    .unwrap();
}

#[tokio::test]
async fn deliveries_leased_when_the_process_is_killed_are_sent_after_restart_once() {
    let dir = tempfile::tempdir().unwrap();
    let (hole, hole_port) = blackhole();
    write_config(dir.path(), hole_port);
    let env = [
        ("HERALD_API_KEY", PROC_API_KEY),
        ("HERALD_JWT_SECRET", PROC_JWT_SECRET),
    ];
    let mut p = spawn_process(dir.path(), free_port(), &env).await;
    let client = reqwest::Client::new();
    let api = |path: &str| format!("{}{path}", p.base);
    let mut ids = Vec::new();
    for i in 0..3 {
        let resp = client
            .put(api(&format!("/api/v1/recipients/u{i}")))
            .bearer_auth(PROC_API_KEY)
            .json(&json!({"email": format!("u{i}@example.com")}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let (st, body) = p
            .send(&json!({"title": format!("report {i}"), "content": "ready", "receivers": [format!("u{i}")], "channels": ["mail"]}))
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    // All three are claimed (leased, one attempt counted) and hanging in the SMTP greeting.
    let get = |id: String| {
        let client = client.clone();
        let url = api(&format!("/api/v1/messages/{id}"));
        async move {
            let resp = client
                .get(url)
                .bearer_auth(PROC_API_KEY)
                .send()
                .await
                .unwrap();
            resp.json::<Value>().await.unwrap()["deliveries"][0].clone()
        }
    };
    for id in &ids {
        let id = id.clone();
        wait_until(DEADLINE, "the delivery to be leased", || {
            let get = &get;
            let id = id.clone();
            async move {
                let d = get(id).await;
                d["attempts"] == 1 && d["status"] == "pending" && d.get("error").is_none()
            }
        })
        .await;
    }
    p.kill9();
    drop(hole);

    // Restart against a real SMTP server: the leases run out and each mail goes, once.
    let smtp = TestSmtp::start();
    write_config(dir.path(), smtp.addr().port());
    let p = spawn_process(dir.path(), free_port(), &env).await;
    let mails = smtp.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 3, "log:\n{}", p.log_text());
    let mut to: Vec<String> = mails.iter().map(|m| m.to[0].clone()).collect();
    to.sort();
    assert_eq!(to, ["u0@example.com", "u1@example.com", "u2@example.com"]);
    let client = reqwest::Client::new();
    for id in &ids {
        let url = format!("{}/api/v1/messages/{id}", p.base);
        let deadline = std::time::Instant::now() + DEADLINE;
        let d = loop {
            let resp = client
                .get(&url)
                .bearer_auth(PROC_API_KEY)
                .send()
                .await
                .unwrap();
            let d = resp.json::<Value>().await.unwrap()["deliveries"][0].clone();
            if d["status"] == "sent" {
                break d;
            }
            assert!(std::time::Instant::now() < deadline, "not sent: {d}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert_eq!(d["attempts"], 2, "{d}");
    }
    assert_eq!(smtp.data_attempts(), 3, "no mail went twice");
}
