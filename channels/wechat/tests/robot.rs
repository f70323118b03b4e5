//! `wechat.robot` end to end: the channel, built through its descriptor, against a local
//! WeCom robot webhook that checks the key and the body (`herald_channel_wechat::testing`).

use std::sync::Arc;
use std::time::Duration;

use herald_channel::{testkit, Accepted, AddressKind, Channel, ErrorKind};
use herald_channel_wechat::testing::*;
use serde_json::json;

fn channel(server: &RobotServer, extra: serde_json::Value) -> Arc<dyn Channel> {
    let mut config = json!({"key": ROBOT_KEY, "endpoint": server.endpoint(), "timeout": "5s"});
    for (k, v) in extra.as_object().expect("an object") {
        config[k] = v.clone();
    }
    build("wechat.robot", &config).expect("valid")
}

const SENT: Accepted = Accepted::Sent { provider_id: None };

#[test]
fn registered_and_builds_without_a_runtime() {
    let d = herald_channel::find("wechat.robot").expect("registered");
    assert_eq!(d.address, AddressKind::None);
    assert!(!d.presence);
    assert_eq!(d.family(), "wechat");
    let ch = build("wechat.robot", &json!({"key": ROBOT_KEY})).expect("valid");
    assert_eq!(
        ch.defaults().rate_limit,
        Some((20, Duration::from_secs(60)))
    );
}

#[tokio::test]
async fn posts_the_markdown_rendering() {
    let server = RobotServer::start().await;
    let ch = channel(&server, json!({}));
    // A robot needs no address.
    let out = report_ready_with(None, &report_data());
    assert_eq!(ch.send(&out).await, Ok(SENT));
    let posts = server.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].key, ROBOT_KEY);
    let content = posts[0].body["markdown"]["content"]
        .as_str()
        .expect("markdown content");
    assert_eq!(posts[0].body["msgtype"], "markdown");
    // Exactly the shipped `wechat.md.j2` rendering (it leaves the patient's name out: a
    // robot posts to a group chat).
    assert_eq!(content, render("md", &report_data()));
    assert!(
        content.contains("R-2026-0042") && content.contains("CT chest"),
        "{content}"
    );
    assert!(
        !content.contains("李雷"),
        "no patient name in a group chat: {content}"
    );
    assert_eq!(
        posts[0].body.as_object().unwrap().len(),
        2,
        "msgtype and markdown only"
    );

    // Without `url` there is no link.
    let mut data = report_data();
    data.as_object_mut().unwrap().remove("url");
    assert_eq!(ch.send(&report_ready_with(None, &data)).await, Ok(SENT));
    let content = server.posts()[1].body["markdown"]["content"].clone();
    assert!(!content.as_str().unwrap().contains("]("), "{content}");
}

#[tokio::test]
async fn text_messages_mention_members_and_fall_back_to_title_and_content() {
    let server = RobotServer::start().await;
    let ch = channel(
        &server,
        json!({"msgtype": "text", "mentioned_mobile_list": ["13800001111", "@all"]}),
    );
    let out = testkit::outgoing(
        testkit::message("Night shift", "Two reports are waiting."),
        "42",
        None,
    );
    assert_eq!(ch.send(&out).await, Ok(SENT));
    assert_eq!(
        server.posts()[0].body,
        json!({"msgtype": "text", "text": {
            "content": "Night shift\nTwo reports are waiting.",
            "mentioned_mobile_list": ["13800001111", "@all"],
        }})
    );

    let md = channel(&server, json!({}));
    assert_eq!(md.send(&out).await, Ok(SENT));
    assert_eq!(
        server.posts()[1].body,
        json!({"msgtype": "markdown", "markdown": {
            "content": "**Night shift**\nTwo reports are waiting.",
        }})
    );
}

#[tokio::test]
async fn long_markdown_is_cut_to_what_wecom_takes() {
    let server = RobotServer::start().await;
    let ch = channel(&server, json!({}));
    let out = testkit::outgoing(
        testkit::message("报告", &"检查结果正常。".repeat(400)),
        "42",
        None,
    );
    assert_eq!(ch.send(&out).await, Ok(SENT));
    let content = server.posts()[0].body["markdown"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(content.len() <= 4096, "{}", content.len());
    assert!(content.ends_with('…'));
}

#[tokio::test]
async fn the_whole_webhook_url_works_too() {
    let server = RobotServer::start().await;
    let ch = build(
        "wechat.robot",
        &json!({"url": server.webhook_url(), "msgtype": "text"}),
    )
    .expect("valid");
    let out = testkit::outgoing(testkit::message("t", "c"), "42", None);
    assert_eq!(ch.send(&out).await, Ok(SENT));
    assert_eq!(server.posts()[0].key, ROBOT_KEY);
}

#[tokio::test]
async fn rate_limits_and_refusals() {
    let server = RobotServer::start().await;
    let ch = channel(&server, json!({}));
    let out = testkit::outgoing(testkit::message("t", "c"), "42", None);
    server.script([
        Answer::Json(json!({"errcode": 45009, "errmsg": "api freq out of limit"})),
        Answer::Json(json!({"errcode": 45033, "errmsg": "api concurrent out of limit"})),
        Answer::Json(json!({"errcode": -1, "errmsg": "system busy"})),
        Answer::Status(503),
        Answer::Json(json!({"errcode": 40008, "errmsg": "invalid message type"})),
        Answer::Json(json!({"errcode": 777, "errmsg": "something new"})),
    ]);
    let expected = [
        (
            ErrorKind::RateLimited,
            "45009",
            Some(Duration::from_secs(60)),
        ),
        (
            ErrorKind::RateLimited,
            "45033",
            Some(Duration::from_secs(60)),
        ),
        (ErrorKind::Transient, "-1", None),
        (ErrorKind::Transient, "HTTP 503", None),
        (ErrorKind::Permanent, "40008", None),
        (ErrorKind::Transient, "777", None),
    ];
    for (kind, code, retry_after) in expected {
        let err = ch.send(&out).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert_eq!(err.code(), Some(code), "{err}");
        assert_eq!(err.retry_after(), retry_after, "{err}");
    }
    assert_eq!(ch.send(&out).await, Ok(SENT));
}

#[tokio::test]
async fn a_wrong_key_is_a_config_error_that_does_not_show_it() {
    let server = RobotServer::start().await;
    let wrong = "00000000-dead-beef-0000-000000000000";
    let ch = build(
        "wechat.robot",
        &json!({"key": wrong, "endpoint": server.endpoint()}),
    )
    .unwrap();
    let out = testkit::outgoing(testkit::message("t", "c"), "42", None);
    let err = ch.send(&out).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(err.code(), Some("93000"));
    assert!(err.message().contains("invalid webhook url"), "{err}");
    assert!(!err.to_string().contains(wrong), "{err}");
    assert_eq!(server.posts()[0].key, wrong);
}

#[tokio::test]
async fn network_errors_never_show_the_key() {
    let server = RobotServer::start().await;
    let ch = build(
        "wechat.robot",
        &json!({"key": ROBOT_KEY, "endpoint": server.endpoint(), "timeout": "300ms"}),
    )
    .unwrap();
    server.script([Answer::Hang]);
    let out = testkit::outgoing(testkit::message("t", "c"), "42", None);
    let err = ch.send(&out).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(!err.to_string().contains(ROBOT_KEY), "{err}");

    let ch = build(
        "wechat.robot",
        &json!({"key": ROBOT_KEY, "endpoint": "http://127.0.0.1:1"}),
    )
    .unwrap();
    let err = ch.send(&out).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(!err.to_string().contains(ROBOT_KEY), "{err}");
}

#[test]
fn config_errors_are_clear_and_debug_hides_the_key() {
    let url = format!("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={ROBOT_KEY}");
    for (config, expected) in [
        (json!({}), "key:"),
        (
            json!({"key": ROBOT_KEY, "url": url}),
            "either `key` or `url`, not both",
        ),
        (
            json!({"key": ROBOT_KEY, "token": "x"}),
            "unknown field `token`",
        ),
        (
            json!({"key": ROBOT_KEY, "msgtype": "news"}),
            "msgtype: unknown variant `news`",
        ),
        (
            json!({"key": ROBOT_KEY, "mentioned_mobile_list": ["13800001111"]}),
            "mentioned_mobile_list:",
        ),
    ] {
        let err = build("wechat.robot", &config)
            .err()
            .expect("invalid")
            .to_string();
        assert!(err.starts_with("channels.wechat: "), "{config}: {err}");
        assert!(
            err.contains(expected),
            "{config}: expected {expected:?} in {err}"
        );
        assert!(!err.contains(ROBOT_KEY), "{err}");
    }
    let services = herald_channel::Services::default();
    let config = json!({ "url": url });
    let ch =
        herald_channel_wechat::robot::RobotChannel::from_context(&herald_channel::BuildContext {
            name: "wechat",
            config: &config,
            services: &services,
        })
        .unwrap();
    let debug = format!("{ch:?}");
    assert!(!debug.contains(ROBOT_KEY), "{debug}");
}
