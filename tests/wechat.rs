//! WeChat end to end: `[channels.*]` config → REST API → outbox → `wechat.template` /
//! `wechat.robot` → local WeChat and WeCom servers that check every request as the vendor
//! does (`herald_channel_wechat::testing`, shared with the crate's own tests). The daily quota
//! is driven by an injected clock.

mod common;

use std::time::Duration;

use common::*;
use herald_channel_wechat::testing as vendor;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn table(kind: &str, config: &Value) -> toml::Table {
    let mut t = toml::Table::try_from(config).expect("JSON object → TOML");
    t.insert("kind".into(), toml::Value::String(kind.into()));
    t
}

async fn put_openid(app: &TestApp, user: &str, openid: &str) {
    let (st, body) = app
        .api(
            Method::PUT,
            &format!("/api/v1/recipients/{user}"),
            Some(&json!({"wechatOpenId": openid})),
        )
        .await;
    assert!(st.is_success(), "{body}");
}

fn report(receivers: &[&str], channel: &str) -> Value {
    json!({"receivers": receivers, "channels": [channel], "template": "report_ready", "data": vendor::report_data()})
}

fn status(d: &Value) -> &str {
    d["status"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn template_messages_reach_wechat_and_a_daily_quota_defers_the_rest() {
    let wx = vendor::WeChatServer::start().await;
    let mut t = table("wechat.template", &wx.config());
    t.insert("daily_quota".into(), toml::Value::Integer(3));
    let app = spawn_app_clock(
        move |s| {
            s.channels.insert("wechat".into(), t);
            s.templates.dir =
                Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"));
        },
        Some(herald::clock::ManualClock::default()),
    )
    .await;
    for i in 0..5 {
        put_openid(&app, &format!("u{i}"), vendor::FOLLOWER).await;
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(send_ok(&app, report(&[&format!("u{i}")], "wechat")).await);
    }
    // Three go today; one token fetch serves them all.
    for (i, id) in ids.iter().enumerate().take(3) {
        let d = app
            .wait_delivery(id, &format!("u{i}"), "wechat", "sent", |d| {
                status(d) == "sent"
            })
            .await;
        assert!(d["providerId"].is_string(), "the msgid is kept: {d}");
    }
    let sends = wx.sends();
    assert_eq!(sends.len(), 3);
    assert_eq!(wx.token_requests().len(), 1, "cached token");
    let body = &sends[0].body;
    assert_eq!(body["touser"], vendor::FOLLOWER);
    assert_eq!(body["template_id"], vendor::TEMPLATE_ID);
    assert_eq!(
        body["data"]["keyword1"]["value"],
        vendor::report_data()["patient_name"]
    );
    assert!(
        body["client_msg_id"].as_str().unwrap().contains(&ids[0]),
        "{body}"
    );
    // The other two wait for the next window, pending and untried.
    for (i, id) in ids.iter().enumerate().skip(3) {
        let d = app.delivery(id, &format!("u{i}"), "wechat").await;
        assert_eq!(
            (status(&d), d["attempts"].as_i64()),
            ("pending", Some(0)),
            "{d}"
        );
    }
    let (_, channels) = app.api_get("/api/v1/channels").await;
    let info = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "wechat")
        .unwrap()
        .clone();
    assert_eq!(
        (info["dailyQuota"].as_u64(), info["quotaUsed"].as_u64()),
        (Some(3), Some(3)),
        "{info}"
    );
    // WeChat's day is China time: the window turns at 16:00 UTC.
    let resets = rfc3339(&info["quotaResetsAt"], "quotaResetsAt");
    assert_eq!((resets.hour(), resets.minute()), (16, 0), "{info}");
    app.advance(Duration::from_secs(86_400));
    for (i, id) in ids.iter().enumerate().skip(3) {
        app.wait_delivery(id, &format!("u{i}"), "wechat", "sent next day", |d| {
            status(d) == "sent"
        })
        .await;
    }
    assert_eq!(wx.sends().len(), 5);
    app.shutdown().await;
}

#[tokio::test]
async fn a_user_who_does_not_follow_fails_as_bad_recipient_once() {
    let wx = vendor::WeChatServer::start().await;
    let t = table("wechat.template", &wx.config());
    let app = spawn_app_clock(
        move |s| {
            s.channels.insert("wechat".into(), t);
            s.templates.dir =
                Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"));
        },
        Some(herald::clock::ManualClock::default()),
    )
    .await;
    put_openid(&app, "s", vendor::STRANGER).await;
    let id = send_ok(&app, report(&["s"], "wechat")).await;
    let d = app
        .wait_delivery(&id, "s", "wechat", "failed", |d| status(d) == "failed")
        .await;
    assert_eq!(d["attempts"], 1, "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .starts_with("bad_recipient: [43004]"),
        "{d}"
    );
    // A recipient without an openid: no_address, nothing sent.
    let (st, _) = app
        .api(
            Method::PUT,
            "/api/v1/recipients/n",
            Some(&json!({"name": "N"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let id = send_ok(&app, report(&["n"], "wechat")).await;
    let d = app.delivery(&id, "n", "wechat").await;
    assert_eq!(
        (status(&d), d["error"].as_str()),
        ("failed", Some("no_address"))
    );
    assert_eq!(wx.sends().len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_wecom_robot_posts_the_markdown_rendering() {
    let robot = vendor::RobotServer::start().await;
    let t = table("wechat.robot", &json!({"url": robot.webhook_url()}));
    let app = spawn_app_clock(
        move |s| {
            s.channels.insert("ops".into(), t);
            s.templates.dir =
                Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"));
        },
        None,
    )
    .await;
    let id = send_ok(&app, report(&["ward-7"], "ops")).await;
    app.wait_delivery(&id, "ward-7", "ops", "sent", |d| status(d) == "sent")
        .await;
    let posts = robot.posts();
    assert_eq!(posts.len(), 1);
    let body = &posts[0].body;
    assert_eq!(body["msgtype"], "markdown", "{body}");
    let content = body["markdown"]["content"].as_str().unwrap();
    let data = vendor::report_data();
    assert!(
        content.contains(data["report_id"].as_str().unwrap()),
        "{content}"
    );
    // The kind's documented cap applies: 20 per minute.
    let (_, channels) = app.api_get("/api/v1/channels").await;
    let ops = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ops")
        .unwrap()
        .clone();
    assert_eq!(ops["rateLimit"], "20/1m", "{ops}");
    app.shutdown().await;
}
