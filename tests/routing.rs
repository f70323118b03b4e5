//! Routing policies (failover chains), scheduling (sendAt / expiresAt) and the welcome
//! frame's gap signal, end to end through the HTTP API and real WebSocket sessions, with a
//! scripted provider kind registered by this binary and an injected clock (no sleeping).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use herald::clock::{Clock, ManualClock};
use herald_channel::testkit::ScriptedChannel;
use herald_channel::{
    AddressKind, BuildContext, Channel, ChannelDescriptor, ChannelError, ConfigError,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

// A provider kind `test.route` whose instances send through a `ScriptedChannel` registered
// under their `script` option (every send is recorded; unscripted sends succeed).

fn scripts() -> &'static Mutex<HashMap<String, Arc<ScriptedChannel>>> {
    static S: OnceLock<Mutex<HashMap<String, Arc<ScriptedChannel>>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

fn script(
    id: &str,
    outcomes: impl IntoIterator<Item = Result<herald_channel::Accepted, ChannelError>>,
) -> Arc<ScriptedChannel> {
    let s = Arc::new(ScriptedChannel::new(outcomes));
    scripts().lock().unwrap().insert(id.into(), s.clone());
    s
}

struct Shared(Arc<ScriptedChannel>);

#[herald_channel::async_trait]
impl Channel for Shared {
    async fn send(
        &self,
        out: &herald_channel::Outgoing,
    ) -> Result<herald_channel::Accepted, ChannelError> {
        self.0.send(out).await
    }
}

fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        script: String,
    }
    let cfg: Cfg = herald_channel::parse_config(&ctx)?;
    let s = scripts()
        .lock()
        .unwrap()
        .get(&cfg.script)
        .cloned()
        .ok_or_else(|| ConfigError::new(ctx.name, format!("script: no script `{}`", cfg.script)))?;
    Ok(Arc::new(Shared(s)))
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: "test.route",
        summary: "scripted provider channel (routing tests)",
        address: AddressKind::None,
        presence: false,
        build,
    }
}

/// A server with provider instances `names` (each on its own script, registered under
/// `<prefix>.<name>`), an e-mail instance `mail` (for `no_address`) and a manual clock.
async fn app_with(
    prefix: &str,
    names: &[&str],
    tweak: impl FnOnce(&mut herald::config::Settings),
) -> TestApp {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let prefix = prefix.to_owned();
    spawn_app_clock(
        move |s| {
            for n in &names {
                let mut t = toml::Table::new();
                t.insert("kind".into(), "test.route".into());
                t.insert("script".into(), format!("{prefix}.{n}").into());
                s.channels.insert(n.clone(), t);
            }
            let mut mail = toml::Table::new();
            mail.insert("kind".into(), "email.smtp".into());
            mail.insert("host".into(), "127.0.0.1".into());
            mail.insert("port".into(), 1.into());
            mail.insert("tls".into(), "none".into());
            mail.insert("from".into(), "Herald <herald@example.test>".into());
            s.channels.insert("mail".into(), mail);
            tweak(s);
        },
        Some(ManualClock::default()),
    )
    .await
}

fn clock_iso(app: &TestApp, ahead: Duration) -> String {
    let now = app.clock.as_ref().expect("manual clock").now_ms() + ahead.as_millis() as i64;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now) * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn failover(steps: Value) -> Value {
    json!({"policy": "failover", "steps": steps})
}

/// Poll until the message's chain for `receiver` satisfies `pred`; returns it.
async fn wait_route(
    app: &TestApp,
    id: &str,
    receiver: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let msg = app.message(id).await;
        if let Some(r) = msg["routes"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["receiver"] == receiver))
        {
            if pred(r) {
                return r.clone();
            }
            last = msg.clone();
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}; last message: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn events(route: &Value) -> Vec<String> {
    route["log"]
        .as_array()
        .expect("log")
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["event"].as_str().unwrap(),
                e["channel"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

#[tokio::test]
async fn unacked_websocket_step_fails_over_to_the_next_channel_after_its_wait() {
    let sms = script("t1.sms", []);
    let app = app_with("t1", &["sms"], |_| {}).await;
    let (mut ws, _) = ws_login(&app, &app.token("u1")).await;
    let id = send_ok(
        &app,
        json!({"title": "report ready", "content": "c", "receivers": ["u1"],
               "routing": failover(json!([{"channel": "websocket", "wait": "2m"}, {"channel": "sms"}]))}),
    )
    .await;
    let frame = ws.next_message().await;
    assert_eq!(frame["id"], id.as_str());
    // Written to the socket, not acked: the chain waits on the websocket step.
    let route = wait_route(&app, &id, "u1", "the websocket step to be written", |r| {
        r["state"] == "running" && r["step"] == 0
    })
    .await;
    app.wait_status(&id, "u1", &["sent"]).await;
    assert_eq!(events(&route), ["started:websocket"]);
    assert!(sms.seen().is_empty(), "sms must wait for the 2 minutes");

    app.advance(Duration::from_secs(119));
    app.advance(Duration::from_secs(1));
    let route = wait_route(&app, &id, "u1", "the sms step to succeed", |r| {
        r["state"] == "succeeded"
    })
    .await;
    assert_eq!(
        events(&route),
        [
            "started:websocket",
            "timeout:websocket",
            "started:sms",
            "succeeded:sms"
        ]
    );
    assert_eq!(sms.seen().len(), 1, "sent once on sms");
    let d = app.delivery(&id, "u1", "sms").await;
    assert_eq!(d["status"], "sent");
    // The websocket delivery stays for the browser's inbox/replay.
    assert_eq!(app.delivery(&id, "u1", "websocket").await["status"], "sent");
    let (_, msg) = app.api_get(&format!("/api/v1/messages/{id}")).await;
    assert_eq!(msg["routing"]["steps"][0]["wait"], "2m");
}

#[tokio::test]
async fn an_ack_ends_the_chain_and_cancels_the_remaining_steps() {
    let sms = script("t2.sms", []);
    let app = app_with("t2", &["sms"], |_| {}).await;
    let (mut ws, _) = ws_login(&app, &app.token("u1")).await;
    let id = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["u1"],
               "routing": failover(json!([{"channel": "websocket", "wait": "2m"}, {"channel": "sms"}]))}),
    )
    .await;
    ws.next_message().await;
    ws.send_json(json!({"type": "ack", "id": id})).await;
    let route = wait_route(&app, &id, "u1", "the ack to end the chain", |r| {
        r["state"] == "succeeded"
    })
    .await;
    assert_eq!(events(&route), ["started:websocket", "succeeded:websocket"]);
    app.advance(Duration::from_secs(600));
    // Wake the scheduler and outbox again, then prove nothing was started: a later
    // message through the same outbox is handed over, and the chain's one still is not.
    let probe = send_ok(
        &app,
        json!({"title": "p", "content": "c", "receivers": ["u2"], "channels": ["sms"]}),
    )
    .await;
    app.wait_delivery(&probe, "u2", "sms", "the probe sent", |d| {
        d["status"] == "sent"
    })
    .await;
    assert_eq!(sms.seen().len(), 1, "only the probe went out on sms");
    assert_eq!(sms.seen()[0].receiver, "u2");
    let msg = app.message(&id).await;
    assert_eq!(msg["deliveries"].as_array().unwrap().len(), 1, "{msg}");
}

#[tokio::test]
async fn offline_receiver_skips_unusable_steps_and_fails_over_on_permanent_errors() {
    let p1 = script("t3.p1", [Err(ChannelError::permanent("template rejected"))]);
    let p2 = script("t3.p2", []);
    let app = app_with("t3", &["p1", "p2"], |_| {}).await;
    let id = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["u1"],
               "routing": failover(json!([
                   {"channel": "websocket", "wait": "10m"},
                   {"channel": "mail"},
                   {"channel": "p1"},
                   {"channel": "p2"}]))}),
    )
    .await;
    let route = wait_route(&app, &id, "u1", "the chain to reach p2", |r| {
        r["state"] == "succeeded"
    })
    .await;
    assert_eq!(
        events(&route),
        [
            "skipped:websocket",
            "skipped:mail",
            "started:p1",
            "failed:p1",
            "started:p2",
            "succeeded:p2"
        ],
        "{route}"
    );
    let log = route["log"].as_array().unwrap();
    assert!(log[0]["reason"].as_str().unwrap().contains("offline"));
    assert_eq!(log[1]["reason"], "no_address");
    assert!(log[3]["reason"]
        .as_str()
        .unwrap()
        .contains("template rejected"));
    assert_eq!(app.delivery(&id, "u1", "mail").await["error"], "no_address");
    assert_eq!(app.delivery(&id, "u1", "p1").await["status"], "failed");
    assert_eq!(app.delivery(&id, "u1", "p2").await["status"], "sent");
    assert_eq!((p1.seen().len(), p2.seen().len()), (1, 1));
    // The websocket delivery was kept: connecting later replays it.
    let (mut ws, welcome) = ws_login(&app, &app.token("u1")).await;
    assert_eq!(welcome["pending"], 1);
    assert_eq!(ws.next_message().await["id"], id.as_str());
}

#[tokio::test]
async fn a_chain_resumes_after_a_restart_and_supersedes_a_stuck_step() {
    // p1 never gets through (retryable errors); p2 works.
    let p1 = script(
        "t4.p1",
        (0..20).map(|_| Err(ChannelError::transient("503 from vendor"))),
    );
    let p2 = script("t4.p2", []);
    let mut app = app_with("t4", &["p1", "p2"], |_| {}).await;
    let id = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["u1"],
               "routing": failover(json!([{"channel": "p1", "wait": "5m"}, {"channel": "p2"}]))}),
    )
    .await;
    wait_route(&app, &id, "u1", "the first step", |r| r["step"] == 0).await;
    app.wait_retry_scheduled(&id, "u1", "p1", 1).await;
    app.restart().await;
    let route = wait_route(&app, &id, "u1", "the chain after restart", |r| {
        r["step"] == 0
    })
    .await;
    assert_eq!(route["state"], "running");
    assert!(p2.seen().is_empty());
    app.advance(Duration::from_secs(300));
    let route = wait_route(&app, &id, "u1", "p2 to succeed", |r| {
        r["state"] == "succeeded"
    })
    .await;
    assert_eq!(
        events(&route),
        ["started:p1", "timeout:p1", "started:p2", "succeeded:p2"]
    );
    let stuck = app.delivery(&id, "u1", "p1").await;
    assert_eq!(stuck["status"], "failed");
    assert!(
        stuck["error"].as_str().unwrap().starts_with("superseded"),
        "{stuck}"
    );
    assert_eq!(p2.seen().len(), 1);
    assert!(!p1.seen().is_empty());
}

#[tokio::test]
async fn deleting_the_message_cancels_its_chains() {
    let sms = script("t5.sms", []);
    let app = app_with("t5", &["sms"], |_| {}).await;
    let (mut ws, _) = ws_login(&app, &app.token("u1")).await;
    let id = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["u1"],
               "routing": failover(json!([{"channel": "websocket", "wait": "1m"}, {"channel": "sms"}]))}),
    )
    .await;
    ws.next_message().await;
    wait_route(&app, &id, "u1", "the websocket step", |r| r["step"] == 0).await;
    let (status, _) = app
        .api(Method::DELETE, &format!("/api/v1/messages/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.advance(Duration::from_secs(120));
    let probe = send_ok(
        &app,
        json!({"title": "p", "content": "c", "receivers": ["u2"], "channels": ["sms"]}),
    )
    .await;
    app.wait_delivery(&probe, "u2", "sms", "the probe sent", |d| {
        d["status"] == "sent"
    })
    .await;
    let receivers: Vec<String> = sms.seen().iter().map(|o| o.receiver.clone()).collect();
    assert_eq!(
        receivers,
        ["u2"],
        "the deleted message's sms step never started"
    );
}

#[tokio::test]
async fn send_at_holds_every_channel_until_its_time() {
    let sms = script("t6.sms", []);
    let app = app_with("t6", &["sms"], |_| {}).await;
    let (mut ws, _) = ws_login(&app, &app.token("u1")).await;
    let at = clock_iso(&app, Duration::from_secs(3600));
    let (status, body) = send(
        &app,
        json!({"title": "later", "content": "c", "receivers": ["u1"],
               "channels": ["websocket", "sms"], "sendAt": at}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["deliveries"], 2);
    let msg = app.message(&id).await;
    assert!(msg["sendAt"].is_string(), "{msg}");
    // Nothing is visible to the receiver yet: a new session has nothing to replay, the
    // inbox is empty, and the provider saw nothing.
    let (mut ws2, welcome) = ws_login(&app, &app.token("u1")).await;
    assert_eq!(welcome["pending"], 0);
    ws2.send_json(json!({"type": "ping"})).await;
    assert_eq!(
        ws2.next_json().await["type"],
        "pong",
        "no replay before sendAt"
    );
    let inbox = app
        .client
        .get(app.url("/api/v1/inbox?status=all"))
        .bearer_auth(app.token("u1"))
        .send()
        .await
        .unwrap();
    let (_, inbox) = read_response(inbox).await;
    assert_eq!(inbox["total"], 0, "{inbox}");
    app.advance(Duration::from_secs(1800));
    assert!(sms.seen().is_empty());
    assert_eq!(app.delivery(&id, "u1", "sms").await["status"], "pending");

    app.advance(Duration::from_secs(1800));
    assert_eq!(ws.next_message().await["id"], id.as_str());
    assert_eq!(ws2.next_message().await["id"], id.as_str());
    app.wait_status(&id, "u1", &["sent"]).await;
    app.wait_delivery(&id, "u1", "sms", "sms sent", |d| d["status"] == "sent")
        .await;
    assert_eq!(sms.seen().len(), 1);
}

#[tokio::test]
async fn a_scheduled_message_deleted_before_its_time_is_never_sent() {
    let sms = script("t7.sms", []);
    let app = app_with("t7", &["sms"], |_| {}).await;
    let (mut ws, _) = ws_login(&app, &app.token("u1")).await;
    let at = clock_iso(&app, Duration::from_secs(60));
    let id = send_ok(
        &app,
        json!({"title": "later", "content": "c", "receivers": ["u1"],
               "channels": ["websocket", "sms"], "sendAt": at}),
    )
    .await;
    let (status, _) = app
        .api(Method::DELETE, &format!("/api/v1/messages/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.advance(Duration::from_secs(120));
    let probe = send_ok(&app, json!({"title": "p", "content": "c", "receivers": ["u1"], "channels": ["websocket", "sms"]})).await;
    // The next frame is the probe, not the deleted message.
    assert_eq!(ws.next_message().await["id"], probe.as_str());
    app.wait_delivery(&probe, "u1", "sms", "probe sent", |d| d["status"] == "sent")
        .await;
    assert_eq!(sms.seen().len(), 1);
    assert_eq!(sms.seen()[0].message.id, probe);
}

#[tokio::test]
async fn expired_deliveries_fail_and_are_not_replayed() {
    let sms = script(
        "t8.sms",
        (0..20).map(|_| Err(ChannelError::transient("vendor down"))),
    );
    let app = app_with("t8", &["sms"], |_| {}).await;
    let id = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["u1"], "channels": ["websocket", "sms"],
               "expiresAt": clock_iso(&app, Duration::from_secs(600))}),
    )
    .await;
    app.wait_retry_scheduled(&id, "u1", "sms", 1).await;
    app.advance(Duration::from_secs(600));
    let d = app
        .wait_delivery(&id, "u1", "websocket", "websocket to expire", |d| {
            d["status"] == "failed"
        })
        .await;
    assert_eq!(d["error"], "expired");
    let d = app
        .wait_delivery(&id, "u1", "sms", "sms to expire", |d| {
            d["status"] == "failed"
        })
        .await;
    assert_eq!(d["error"], "expired");
    let (mut ws, welcome) = ws_login(&app, &app.token("u1")).await;
    assert_eq!(welcome["pending"], 0);
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong", "nothing replayed");
    let attempts = sms.seen().len();
    app.advance(Duration::from_secs(3600));
    let probe = send_ok(
        &app,
        json!({"title": "p", "content": "c", "receivers": ["u2"], "channels": ["sms"]}),
    )
    .await;
    app.wait_retry_scheduled(&probe, "u2", "sms", 1).await;
    assert_eq!(
        sms.seen().iter().filter(|o| o.message.id == id).count(),
        attempts,
        "no attempt after expiry"
    );
}

#[tokio::test]
async fn welcome_says_how_many_messages_the_replay_sends() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(send_ok(&app, msg(&format!("m{i}"), &["u1"])).await);
    }
    let (mut ws, welcome) = ws_login(&app, &app.token("u1")).await;
    assert_eq!(welcome["pending"], 3, "{welcome}");
    for id in &ids {
        assert_eq!(ws.next_message().await["id"], id.as_str());
    }
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    let (_, welcome) = ws_login(&app, &app.token("nobody")).await;
    assert_eq!(welcome["pending"], 0);
}

#[tokio::test]
async fn bad_routing_and_schedules_are_422_naming_the_field_and_store_nothing() {
    script("t9.sms", []);
    let app = app_with("t9", &["sms"], |_| {}).await;
    let later = clock_iso(&app, Duration::from_secs(60));
    let earlier = clock_iso(&app, Duration::from_secs(30));
    let cases = [
        (
            json!({"channels": ["sms"], "routing": failover(json!([{"channel": "sms"}]))}),
            "routing",
        ),
        (json!({"routing": failover(json!([]))}), "routing.steps"),
        (
            json!({"routing": failover(json!([{"channel": "nope"}]))}),
            "routing.steps[0].channel",
        ),
        (
            json!({"routing": failover(json!([{"channel": "sms"}, {"channel": "sms"}]))}),
            "routing.steps[1].channel",
        ),
        (
            json!({"routing": {"policy": "all", "steps": [{"channel": "sms", "wait": "1m"}]}}),
            "routing.steps[0].wait",
        ),
        (
            json!({"routing": failover(json!([{"channel": "sms", "wait": "soonish"}]))}),
            "routing.steps[0].wait",
        ),
        (
            json!({"routing": {"policy": "sometimes", "steps": []}}),
            "routing.policy",
        ),
        (json!({"sendAt": "tomorrow"}), "sendAt"),
        (json!({"expiresAt": "2020-01-01T00:00:00Z"}), "expiresAt"),
        (json!({"sendAt": later, "expiresAt": earlier}), "expiresAt"),
        (
            json!({"sendAt": clock_iso(&app, Duration::from_secs(400 * 86_400))}),
            "sendAt",
        ),
    ];
    for (extra, field) in cases {
        let mut body = json!({"title": "t", "content": "c", "receivers": ["u1"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, err) = send(&app, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {err}");
        let named = assert_error_body(&err);
        assert!(
            err["field"] == field || named.contains(field),
            "{body}: expected the error to name `{field}`: {err}"
        );
    }
    // A scheduled broadcast has no receivers to hold.
    let (status, err) = send(&app, json!({"title": "t", "content": "c", "sendAt": later})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(assert_error_body(&err).contains("receivers"));
    assert_eq!(app.total().await, 0, "nothing stored");
}

#[tokio::test]
async fn configured_defaults_route_by_message_type_and_all_sends_every_step() {
    let sms = script("t10.sms", []);
    let app = app_with("t10", &["sms"], |s| {
        s.routing.types.insert(
            "7".into(),
            herald::routing::PolicySpec {
                policy: herald::routing::PolicyKind::Failover,
                steps: vec![herald::routing::StepSpec {
                    channel: "sms".into(),
                    wait: None,
                }],
            },
        );
    })
    .await;
    let id = send_ok(
        &app,
        json!({"title": "t", "content": "c", "type": 7, "receivers": ["u1"]}),
    )
    .await;
    let route = wait_route(&app, &id, "u1", "the default chain", |r| {
        r["state"] == "succeeded"
    })
    .await;
    assert_eq!(events(&route), ["started:sms", "succeeded:sms"]);
    // Type 0 keeps the built-in default (websocket only), and `all` sends every step.
    let id = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["u1"],
               "routing": {"policy": "all", "steps": [{"channel": "websocket"}, {"channel": "sms"}]}}),
    )
    .await;
    let msg = app.message(&id).await;
    assert!(msg.get("routes").is_none() || msg["routes"].as_array().unwrap().is_empty());
    assert_eq!(msg["deliveries"].as_array().unwrap().len(), 2, "{msg}");
    app.wait_delivery(&id, "u1", "sms", "sms sent", |d| d["status"] == "sent")
        .await;
    assert_eq!(sms.seen().len(), 2);
}

#[tokio::test]
async fn unknown_channels_in_configured_policies_fail_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = herald::config::Settings::for_data_dir(dir.path());
    settings.routing.templates.insert(
        "report_ready".into(),
        herald::routing::PolicySpec {
            policy: herald::routing::PolicyKind::Failover,
            steps: vec![herald::routing::StepSpec {
                channel: "pager".into(),
                wait: None,
            }],
        },
    );
    let err = match herald::start(settings).await {
        Ok(_) => panic!("started with a policy naming an unknown channel"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("routing.templates.report_ready.steps[0].channel"),
        "{err}"
    );
    assert!(err.contains("pager"), "{err}");
}

#[tokio::test]
async fn the_openapi_document_describes_routing_and_scheduling() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    let send = &schemas["SendRequest"]["properties"];
    for field in ["routing", "sendAt", "expiresAt"] {
        assert!(
            send.get(field).is_some(),
            "SendRequest.{field} missing: {send}"
        );
    }
    let policy = &schemas["PolicySpec"];
    assert!(policy["properties"].get("steps").is_some(), "{policy}");
    let message = &schemas["MessageDto"]["properties"];
    for field in ["routes", "sendAt", "expiresAt", "routing"] {
        assert!(message.get(field).is_some(), "MessageDto.{field} missing");
    }
    assert!(schemas["RouteDto"]["properties"].get("log").is_some());
}
