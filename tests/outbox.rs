//! The provider outbox end to end: retries with backoff, retry-after deferral, the attempts
//! cap, permanent failures, concurrency and rate limits, instance configuration errors,
//! preferences (opted_out) and the channels listing — through the real HTTP API, with a
//! scripted provider channel registered by this test binary (a third-party kind, exactly as
//! a plugin crate would register one) and an injected clock instead of sleeping.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use herald_channel::{
    async_trait, Accepted, AddressKind, BuildContext, Channel, ChannelDescriptor, ChannelError,
    ConfigError, Outgoing,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// A scripted provider channel, kind `test.scripted`, configured with `script = "<id>"`.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Script {
    outcomes: Mutex<VecDeque<Result<Accepted, ChannelError>>>,
    seen: Mutex<Vec<Outgoing>>,
    /// When set, each send waits for a permit (the test releases them).
    gate: Option<Arc<tokio::sync::Semaphore>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Script {
    fn seen(&self) -> Vec<Outgoing> {
        self.seen.lock().unwrap().clone()
    }
}

fn scripts() -> &'static Mutex<HashMap<String, Arc<Script>>> {
    static S: OnceLock<Mutex<HashMap<String, Arc<Script>>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

fn script(
    id: &str,
    outcomes: impl IntoIterator<Item = Result<Accepted, ChannelError>>,
) -> Arc<Script> {
    let s = Arc::new(Script {
        outcomes: Mutex::new(outcomes.into_iter().collect()),
        ..Script::default()
    });
    scripts().lock().unwrap().insert(id.into(), s.clone());
    s
}

struct Scripted(Arc<Script>);

#[async_trait]
impl Channel for Scripted {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        let s = &self.0;
        s.seen.lock().unwrap().push(out.clone());
        let now = s.running.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_running.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &s.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        s.running.fetch_sub(1, Ordering::SeqCst);
        let next = s.outcomes.lock().unwrap().pop_front();
        next.unwrap_or(Ok(Accepted::Sent {
            provider_id: Some(format!("p-{}", out.delivery_id)),
        }))
    }

    /// Receipts as `delivered:<delivery id>` / `failed:<provider id>` lines, "signed" with
    /// the header `x-test-signature: ok`.
    async fn callback(
        &self,
        req: &herald_channel::CallbackRequest<'_>,
    ) -> Result<Vec<herald_channel::Receipt>, herald_channel::CallbackError> {
        use herald_channel::{CallbackError, Receipt, ReceiptFor};
        if req.header("x-test-signature") != Some("ok") {
            return Err(CallbackError::Unauthorized("no signature".into()));
        }
        let body = std::str::from_utf8(req.body)
            .map_err(|_| CallbackError::BadRequest("not UTF-8".into()))?;
        body.lines()
            .map(|line| match line.split_once(':') {
                Some(("delivered", id)) => Ok(Receipt::Delivered(ReceiptFor::Delivery(
                    id.parse()
                        .map_err(|_| CallbackError::BadRequest("bad id".into()))?,
                ))),
                Some(("failed", pid)) => Ok(Receipt::Failed(
                    ReceiptFor::Provider(pid.into()),
                    ChannelError::bad_recipient("handset unreachable").with_code("30003"),
                )),
                _ => Err(CallbackError::BadRequest(format!("bad line `{line}`"))),
            })
            .collect()
    }
}

/// Like [`Scripted`], with the kind's defaults a vendor would document.
struct Limited(Scripted);

#[async_trait]
impl Channel for Limited {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        self.0.send(out).await
    }
    fn defaults(&self) -> herald_channel::Defaults {
        herald_channel::Defaults::default()
            .daily_quota(2)
            .rate_limit(20, Duration::from_secs(60))
    }
}

fn build_limited(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    let inner = build(ctx)?;
    let script = scripts().lock().unwrap().get("limited").cloned().unwrap();
    drop(inner);
    Ok(Arc::new(Limited(Scripted(script))))
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: "test.limited",
        summary: "scripted channel with kind defaults (tests)",
        address: AddressKind::None,
        presence: false,
        build: build_limited,
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
    Ok(Arc::new(Scripted(s)))
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: "test.scripted",
        summary: "scripted provider channel (tests)",
        address: AddressKind::None,
        presence: false,
        build,
    }
}

fn build_mailish(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    build(ctx)
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: "testmail.scripted",
        summary: "scripted channel that needs an e-mail address (tests)",
        address: AddressKind::Email,
        presence: false,
        build: build_mailish,
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn channel_table(kind: &str, script: &str, extra: &[(&str, toml::Value)]) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("kind".into(), toml::Value::String(kind.into()));
    t.insert("script".into(), toml::Value::String(script.into()));
    for (k, v) in extra {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// A server with one scripted instance `name` and a manual clock.
async fn app_with(name: &str, script_id: &str, extra: &[(&str, toml::Value)]) -> TestApp {
    let table = channel_table("test.scripted", script_id, extra);
    let name = name.to_owned();
    spawn_app_clock(
        move |s| {
            s.channels.insert(name, table);
            s.dispatch.retry_base = Duration::from_secs(60);
            s.dispatch.retry_max = Duration::from_secs(3600);
        },
        Some(herald::clock::ManualClock::default()),
    )
    .await
}

async fn send_to(app: &TestApp, channel: &str, receivers: &[&str]) -> String {
    send_ok(
        app,
        json!({"title": "Report ready", "content": "CT chest", "receivers": receivers, "channels": [channel]}),
    )
    .await
}

async fn wait_seen(s: &Script, n: usize) {
    wait_until(DEADLINE, &format!("{n} hand-over(s)"), || async {
        s.seen.lock().unwrap().len() >= n
    })
    .await;
}

fn status(d: &Value) -> &str {
    d["status"].as_str().unwrap_or_default()
}

async fn channel_info(app: &TestApp, name: &str) -> Value {
    let (st, body) = app.api_get("/api/v1/channels").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("instance {name} not listed: {body}"))
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_then_sent() {
    let s = script(
        "retry",
        [
            Err(ChannelError::transient("connection reset").with_code("451")),
            Err(ChannelError::transient("try again")),
        ],
    );
    let app = app_with("prov", "retry", &[]).await;
    let id = send_to(&app, "prov", &["42"]).await;

    // Attempt 1 fails: pending, error kept, a retry is scheduled ~60 s (±20 %) ahead.
    let d = app
        .wait_delivery(&id, "42", "prov", "first failure", |d| {
            d["attempts"] == 1 && d["error"].is_string() && d["nextAttemptAt"].is_string()
        })
        .await;
    assert_eq!(status(&d), "pending", "{d}");
    assert_eq!(d["error"], "transient: [451] connection reset");
    let now = app.clock.as_ref().unwrap();
    let due = rfc3339(&d["nextAttemptAt"], "nextAttemptAt");
    let now_t = time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(herald::clock::Clock::now_ms(now)) * 1_000_000,
    )
    .unwrap();
    let wait = (due - now_t).whole_milliseconds();
    assert!((47_000..=73_000).contains(&wait), "first backoff {wait} ms");
    assert_eq!(s.seen().len(), 1);

    // Not retried before it is due (the clock has not moved); retried once it is.
    app.advance(Duration::from_secs(75));
    let d = app
        .wait_delivery(&id, "42", "prov", "second failure", |d| {
            d["attempts"] == 2 && d["error"] == "transient: try again"
        })
        .await;
    assert_eq!(status(&d), "pending");
    // The second backoff doubles (~120 s): 75 s later it is still not due.
    app.advance(Duration::from_secs(75));
    app.advance(Duration::from_secs(75));
    let d = app
        .wait_delivery(&id, "42", "prov", "sent on the third attempt", |d| {
            status(d) == "sent"
        })
        .await;
    assert_eq!(d["attempts"], 3, "{d}");
    assert!(d.get("nextAttemptAt").is_none(), "{d}");
    let seen = s.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen.iter().map(|o| o.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(seen.iter().all(|o| o.delivery_id == seen[0].delivery_id));
    assert_eq!(seen[0].message.title, "Report ready");

    let info = channel_info(&app, "prov").await;
    assert_eq!(info["kind"], "test.scripted");
    assert_eq!(info["sent"], 1, "{info}");
    assert_eq!(info["retries"], 2, "{info}");
    assert_eq!(info["errors"], 2, "{info}");
    assert_eq!(info["pending"], 0, "{info}");
    assert_eq!(info["concurrency"], 8, "{info}");
    assert_eq!(info["health"], "ok");
    let (_, metrics) = app.request(Method::GET, "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("herald_delivery_retries_total{channel=\"prov\"} 2"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn retry_after_from_the_channel_is_honoured() {
    let s = script(
        "deferral",
        [Err(ChannelError::rate_limited("quota per minute")
            .with_code("45011")
            .with_retry_after(Duration::from_secs(3600)))],
    );
    let app = app_with("slow", "deferral", &[]).await;
    let deferred = send_to(&app, "slow", &["1"]).await;
    let d = app
        .wait_delivery(&deferred, "1", "slow", "deferral", |d| {
            d["attempts"] == 1 && d["error"].is_string()
        })
        .await;
    assert_eq!(d["error"], "rate_limited: [45011] quota per minute");

    // Half an hour later a new message is due and handed over; the deferred one is not
    // (both are claimed by the same oldest-first query, so it would have been taken).
    app.advance(Duration::from_secs(1800));
    let fresh = send_to(&app, "slow", &["2"]).await;
    app.wait_delivery(&fresh, "2", "slow", "the fresh message sent", |d| {
        status(d) == "sent"
    })
    .await;
    let d = app.delivery(&deferred, "1", "slow").await;
    assert_eq!(
        (status(&d), d["attempts"].as_i64()),
        ("pending", Some(1)),
        "{d}"
    );
    assert_eq!(s.seen().len(), 2);

    // Past the hour it goes.
    app.advance(Duration::from_secs(1801));
    let d = app
        .wait_delivery(&deferred, "1", "slow", "sent after the deferral", |d| {
            status(d) == "sent"
        })
        .await;
    assert_eq!(d["attempts"], 2);
    app.shutdown().await;
}

#[tokio::test]
async fn attempts_are_capped_and_permanent_errors_never_retried() {
    let transient = || Err(ChannelError::transient("503 from vendor").with_code("503"));
    script("cap", [transient(), transient(), transient(), transient()]);
    let perm = script(
        "perm",
        [
            Err(ChannelError::permanent("template rejected").with_code("47003")),
            Err(ChannelError::bad_recipient("no such user").with_code("550")),
        ],
    );
    let app = spawn_app_clock(
        |s| {
            s.channels.insert(
                "capped".into(),
                channel_table(
                    "test.scripted",
                    "cap",
                    &[("max_attempts", toml::Value::Integer(3))],
                ),
            );
            s.channels
                .insert("strict".into(), channel_table("test.scripted", "perm", &[]));
            s.dispatch.retry_base = Duration::from_secs(1);
        },
        Some(herald::clock::ManualClock::default()),
    )
    .await;
    let capped = send_to(&app, "capped", &["7"]).await;
    for n in 1..=2 {
        app.wait_retry_scheduled(&capped, "7", "capped", n).await;
        app.advance(Duration::from_secs(10));
    }
    let d = app
        .wait_delivery(&capped, "7", "capped", "attempts exhausted", |d| {
            status(d) == "failed"
        })
        .await;
    assert_eq!(d["attempts"], 3);
    assert_eq!(
        d["error"],
        "attempts_exhausted: transient: [503] 503 from vendor"
    );

    let a = send_to(&app, "strict", &["8"]).await;
    let d = app
        .wait_delivery(&a, "8", "strict", "permanent failure", |d| {
            status(d) == "failed"
        })
        .await;
    assert_eq!(
        (d["attempts"].as_i64(), d["error"].as_str()),
        (Some(1), Some("permanent: [47003] template rejected"))
    );
    let b = send_to(&app, "strict", &["9"]).await;
    let d = app
        .wait_delivery(&b, "9", "strict", "bad recipient", |d| {
            status(d) == "failed"
        })
        .await;
    assert_eq!(d["error"], "bad_recipient: [550] no such user");
    // Time passing changes nothing: failed deliveries are never handed over again.
    app.advance(Duration::from_secs(86_400));
    let c = send_to(&app, "strict", &["10"]).await;
    app.wait_delivery(&c, "10", "strict", "a later send", |d| status(d) == "sent")
        .await;
    assert_eq!(perm.seen().len(), 3);
    let info = channel_info(&app, "capped").await;
    assert_eq!(
        (info["failed"].as_u64(), info["maxAttempts"].as_u64()),
        (Some(1), Some(3)),
        "{info}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn concurrency_limit_bounds_sends_in_flight() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let s = Arc::new(Script {
        gate: Some(gate.clone()),
        ..Script::default()
    });
    scripts().lock().unwrap().insert("gated".into(), s.clone());
    let app = app_with(
        "gated",
        "gated",
        &[("concurrency", toml::Value::Integer(2))],
    )
    .await;
    let ids: Vec<String> = futures_util::future::join_all((0..5).map(|i| {
        let app = &app;
        async move { send_to(app, "gated", &[&format!("u{i}")]).await }
    }))
    .await;
    // Two enter and block; the rest wait for a permit (claimed only when one is free).
    wait_seen(&s, 2).await;
    let info = channel_info(&app, "gated").await;
    assert_eq!(info["inFlight"], 2, "{info}");
    assert_eq!(info["concurrency"], 2, "{info}");
    gate.add_permits(5);
    for (i, id) in ids.iter().enumerate() {
        app.wait_delivery(id, &format!("u{i}"), "gated", "sent", |d| {
            status(d) == "sent"
        })
        .await;
    }
    assert_eq!(s.seen().len(), 5);
    assert_eq!(
        s.max_running.load(Ordering::SeqCst),
        2,
        "never more than 2 at once"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn rate_limit_holds_back_what_exceeds_it() {
    let s = script("rated", []);
    let app = app_with(
        "rated",
        "rated",
        &[("rate_limit", toml::Value::String("2/h".into()))],
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(send_to(&app, "rated", &[&format!("r{i}")]).await);
    }
    wait_seen(&s, 2).await;
    let sent_count = || async {
        let mut n = 0;
        for (i, id) in ids.iter().enumerate() {
            if status(&app.delivery(id, &format!("r{i}"), "rated").await) == "sent" {
                n += 1;
            }
        }
        n
    };
    wait_until(DEADLINE, "two sent", || async { sent_count().await == 2 }).await;
    // The third holds no claim: it was never attempted.
    let third = app.delivery(&ids[2], "r2", "rated").await;
    assert_eq!(
        (status(&third), third["attempts"].as_i64()),
        ("pending", Some(0)),
        "{third}"
    );
    let info = channel_info(&app, "rated").await;
    assert_eq!(info["rateLimit"], "2/1h", "{info}");
    assert_eq!(info["pending"], 1, "{info}");
    assert_eq!(s.seen().len(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_sends_in_flight_and_unsent_work_survives_a_restart() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let s = Arc::new(Script {
        gate: Some(gate.clone()),
        ..Script::default()
    });
    scripts()
        .lock()
        .unwrap()
        .insert("restart".into(), s.clone());
    // One at a time, one per hour: `a` is in flight, `b` waits (unclaimed) for the limiter.
    let mut app = app_with(
        "r",
        "restart",
        &[
            ("concurrency", toml::Value::Integer(1)),
            ("rate_limit", toml::Value::String("1/h".into())),
        ],
    )
    .await;
    let a = send_to(&app, "r", &["1"]).await;
    let b = send_to(&app, "r", &["2"]).await;
    wait_seen(&s, 1).await;
    // Begin a graceful restart; open the gate only once the server has stopped accepting,
    // so `a` completes during the shutdown, which must wait for it and record it.
    let addr = app.addr;
    let opener = tokio::spawn({
        let gate = gate.clone();
        async move {
            wait_until(DEADLINE, "the listener to close", || async {
                tokio::net::TcpStream::connect(addr).await.is_err()
            })
            .await;
            gate.add_permits(10);
        }
    });
    app.restart().await;
    opener.await.unwrap();
    let d = app.delivery(&a, "1", "r").await;
    assert_eq!(
        (status(&d), d["attempts"].as_i64()),
        ("sent", Some(1)),
        "{d}"
    );
    // The new process's limiter is fresh: `b` goes now, exactly once.
    app.wait_delivery(&b, "2", "r", "b sent", |d| status(d) == "sent")
        .await;
    let sent_ids: Vec<i64> = s.seen().iter().map(|o| o.delivery_id).collect();
    assert_eq!(sent_ids.len(), 2, "each exactly once: {sent_ids:?}");
    app.shutdown().await;

    script("off", []);
    let app = app_with("off", "off", &[("enabled", toml::Value::Boolean(false))]).await;
    let (st, body) = send(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["1"], "channels": ["off"]}),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(assert_error_body(&body).contains("disabled"), "{body}");
    assert_eq!(channel_info(&app, "off").await["enabled"], false);
    app.shutdown().await;
}

#[tokio::test]
async fn instance_configuration_errors_name_the_key() {
    script("cfg", []);
    let cases: Vec<(toml::Table, &str)> = vec![
        (
            channel_table(
                "test.scripted",
                "cfg",
                &[("concurrency", toml::Value::Integer(0))],
            ),
            "channels.bad: concurrency",
        ),
        (
            channel_table(
                "test.scripted",
                "cfg",
                &[("rate_limit", toml::Value::String("fast".into()))],
            ),
            "channels.bad: rate_limit",
        ),
        (
            channel_table(
                "test.scripted",
                "cfg",
                &[("max_attempts", toml::Value::String("3".into()))],
            ),
            "channels.bad: max_attempts",
        ),
        (
            channel_table(
                "test.scripted",
                "cfg",
                &[("enabled", toml::Value::String("yes".into()))],
            ),
            "channels.bad: enabled",
        ),
        (
            channel_table(
                "test.scripted",
                "cfg",
                &[("colour", toml::Value::String("red".into()))],
            ),
            "unknown field `colour`",
        ),
        (
            channel_table("no.such.kind", "cfg", &[]),
            "unknown channel kind `no.such.kind`",
        ),
        (
            channel_table("test.scripted", "missing-script", &[]),
            "no script `missing-script`",
        ),
    ];
    for (table, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = herald::config::Settings::for_data_dir(dir.path());
        settings.channels.insert("bad".into(), table.clone());
        let err = match herald::start(settings).await {
            Ok(running) => {
                running.shutdown().await;
                panic!("started with {table:?}")
            }
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
        assert!(
            err.contains("channels.bad"),
            "{err:?} should name the instance"
        );
    }
    // Global outbox settings are validated too.
    let dir = tempfile::tempdir().unwrap();
    let mut settings = herald::config::Settings::for_data_dir(dir.path());
    settings.dispatch.lease = Duration::from_secs(5);
    settings.dispatch.send_timeout = Duration::from_secs(30);
    let err = herald::start(settings)
        .await
        .err()
        .expect("must refuse")
        .to_string();
    assert!(err.contains("dispatch.lease"), "{err}");
}

#[tokio::test]
async fn opted_out_and_missing_addresses_are_recorded_as_failed() {
    let s = script("prefs", []);
    let app = spawn_app_clock(
        |st| {
            st.channels.insert(
                "mail".into(),
                channel_table("testmail.scripted", "prefs", &[]),
            );
        },
        None,
    )
    .await;
    // 1: has an address, no preferences. 2: opted out of `mail`. 3: opted out of type 5 by
    // family name. 4: no recipient record.
    for (user, body) in [
        ("1", json!({"email": "one@example.com"})),
        (
            "2",
            json!({"email": "two@example.com", "preferences": {"optOutChannels": ["mail"]}}),
        ),
        (
            "3",
            json!({"email": "three@example.com", "preferences": {"optOutTypes": [5]}}),
        ),
    ] {
        let (st, resp) = app
            .api(
                Method::PUT,
                &format!("/api/v1/recipients/{user}"),
                Some(&body),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{resp}");
    }
    let id = send_ok(
        &app,
        json!({"title": "t", "content": "c", "type": 5, "receivers": ["1", "2", "3", "4"], "channels": ["mail", "websocket"]}),
    )
    .await;
    app.wait_delivery(&id, "1", "mail", "sent", |d| status(d) == "sent")
        .await;
    let seen = s.seen();
    assert_eq!(seen.len(), 1, "only user 1 is handed over");
    assert_eq!(seen[0].address.as_deref(), Some("one@example.com"));
    let m = app.message(&id).await;
    let get = |user: &str, ch: &str| -> (String, Option<String>) {
        let d = m["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["receiver"] == user && d["channel"] == ch)
            .unwrap_or_else(|| panic!("{user}/{ch} in {m}"));
        (status(d).to_owned(), d["error"].as_str().map(str::to_owned))
    };
    assert_eq!(
        get("2", "mail"),
        ("failed".into(), Some("opted_out".into()))
    );
    assert_eq!(
        get("3", "mail"),
        ("failed".into(), Some("opted_out".into()))
    );
    // A message-type opt-out covers every channel, WebSocket included.
    assert_eq!(
        get("3", "websocket"),
        ("failed".into(), Some("opted_out".into()))
    );
    assert_eq!(get("2", "websocket").0, "pending");
    assert_eq!(
        get("4", "mail"),
        ("failed".into(), Some("no_address".into()))
    );

    // Bad preferences and addresses are refused with the field named; nothing changes.
    for (body, field) in [
        (
            json!({"preferences": {"optOutChannels": "mail"}}),
            "preferences.optOutChannels",
        ),
        (
            json!({"preferences": {"optOutTypes": ["x"]}}),
            "preferences.optOutTypes[0]",
        ),
        (json!({"preferences": {"mute": []}}), "preferences.mute"),
        (json!({"email": "not-an-address"}), "email"),
        (json!({"phone": "13800000000"}), "phone"),
    ] {
        let (st, resp) = app
            .api(Method::PUT, "/api/v1/recipients/1", Some(&body))
            .await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {resp}");
        assert!(
            assert_error_body(&resp).contains(field) || resp["field"] == field,
            "{resp}"
        );
    }
    let (_, rec) = app.api_get("/api/v1/recipients/1").await;
    assert_eq!(rec["email"], "one@example.com");
    app.shutdown().await;
}

#[tokio::test]
async fn a_daily_quota_defers_to_the_next_window() {
    let s = script("quota", []);
    let app = app_with(
        "q",
        "quota",
        &[
            ("daily_quota", toml::Value::Integer(3)),
            ("quota_reset", toml::Value::String("00:00+08:00".into())),
        ],
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(send_to(&app, "q", &[&format!("q{i}")]).await);
    }
    wait_seen(&s, 3).await;
    for (i, id) in ids.iter().enumerate().take(3) {
        app.wait_delivery(id, &format!("q{i}"), "q", "sent", |d| status(d) == "sent")
            .await;
    }
    // The other two wait, untouched: pending, never attempted (deferred, not failed).
    for (i, id) in ids.iter().enumerate().skip(3) {
        let d = app.delivery(id, &format!("q{i}"), "q").await;
        assert_eq!(
            (status(&d), d["attempts"].as_i64()),
            ("pending", Some(0)),
            "{d}"
        );
    }
    let info = channel_info(&app, "q").await;
    assert_eq!(
        (info["dailyQuota"].as_u64(), info["quotaUsed"].as_u64()),
        (Some(3), Some(3)),
        "{info}"
    );
    // The window ends at midnight UTC+8 (16:00 UTC).
    let resets = rfc3339(&info["quotaResetsAt"], "quotaResetsAt");
    assert_eq!((resets.hour(), resets.minute()), (16, 0), "{info}");
    let (_, metrics) = app.request(Method::GET, "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("herald_quota_used{channel=\"q\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_quota_limit{channel=\"q\"} 3"),
        "{metrics}"
    );

    // The window turns: the deferred two go.
    let now = time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(herald::clock::Clock::now_ms(app.clock.as_ref().unwrap())) * 1_000_000,
    )
    .unwrap();
    let until = (resets - now).whole_milliseconds() as u64 + 1000;
    app.advance(Duration::from_millis(until));
    for (i, id) in ids.iter().enumerate().skip(3) {
        app.wait_delivery(id, &format!("q{i}"), "q", "sent next window", |d| {
            status(d) == "sent"
        })
        .await;
    }
    assert_eq!(s.seen().len(), 5);
    let info = channel_info(&app, "q").await;
    assert_eq!(info["quotaUsed"], 2, "{info}");
    app.shutdown().await;
}

#[tokio::test]
async fn kind_defaults_apply_unless_the_instance_overrides_them() {
    script("limited", []);
    let app = spawn_app_clock(
        |s| {
            s.channels
                .insert("a".into(), channel_table("test.limited", "limited", &[]));
            s.channels.insert(
                "b".into(),
                channel_table(
                    "test.limited",
                    "limited",
                    &[
                        ("daily_quota", toml::Value::Integer(0)),
                        ("rate_limit", toml::Value::String("5/s".into())),
                    ],
                ),
            );
        },
        None,
    )
    .await;
    let a = channel_info(&app, "a").await;
    assert_eq!(
        (a["dailyQuota"].as_u64(), a["rateLimit"].as_str()),
        (Some(2), Some("20/1m")),
        "{a}"
    );
    let b = channel_info(&app, "b").await;
    assert!(b.get("dailyQuota").is_none(), "{b}");
    assert_eq!(b["rateLimit"], "5/1s", "{b}");
    app.shutdown().await;
}

#[tokio::test]
async fn vendor_receipts_move_deliveries_to_delivered_or_failed() {
    script("receipts", []);
    let app = app_with("prov", "receipts", &[]).await;
    let a = send_to(&app, "prov", &["1"]).await;
    let b = send_to(&app, "prov", &["2"]).await;
    let da = app
        .wait_delivery(&a, "1", "prov", "sent", |d| status(d) == "sent")
        .await;
    let db = app
        .wait_delivery(&b, "2", "prov", "sent", |d| status(d) == "sent")
        .await;
    let pid_b = db["providerId"]
        .as_str()
        .expect("provider id kept")
        .to_owned();
    let id_a: i64 = da["providerId"]
        .as_str()
        .unwrap()
        .trim_start_matches("p-")
        .parse()
        .unwrap();

    let post = |body: String, sig: Option<&'static str>, path: &'static str| {
        let mut req = app.client.post(app.url(path)).body(body);
        if let Some(sig) = sig {
            req = req.header("x-test-signature", sig);
        }
        async move { read_response(req.send().await.unwrap()).await }
    };
    let path = "/api/v1/callbacks/scripted/prov";
    // A bad signature changes nothing.
    let (st, body) = post(format!("delivered:{id_a}"), Some("forged"), path).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    assert_error_body(&body);
    let (st, _) = post(
        format!("delivered:{id_a}"),
        None,
        "/api/v1/callbacks/twilio/prov",
    )
    .await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "the provider segment must match the kind"
    );
    let (st, _) = post(String::new(), Some("ok"), "/api/v1/callbacks/scripted/nope").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, body) = post("garbage".into(), Some("ok"), path).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(status(&app.delivery(&a, "1", "prov").await), "sent");

    // Verified receipts: by delivery id and by provider id.
    let (st, body) = post(
        format!("delivered:{id_a}\nfailed:{pid_b}"),
        Some("ok"),
        path,
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    app.wait_delivery(&a, "1", "prov", "delivered", |d| status(d) == "delivered")
        .await;
    let d = app
        .wait_delivery(&b, "2", "prov", "failed", |d| status(d) == "failed")
        .await;
    assert_eq!(d["error"], "bad_recipient: [30003] handset unreachable");
    // A receipt naming another channel's delivery (here the WebSocket delivery created
    // next, id = b's + 1 in this fresh database) changes nothing.
    let ws = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["9"]}),
    )
    .await;
    let id_b: i64 = pid_b.trim_start_matches("p-").parse().unwrap();
    let (st, _) = post(format!("delivered:{}", id_b + 1), Some("ok"), path).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // Flush the status queue through a later receipt, then look.
    let c = send_to(&app, "prov", &["3"]).await;
    let dc = app
        .wait_delivery(&c, "3", "prov", "sent", |d| status(d) == "sent")
        .await;
    let id_c = dc["providerId"]
        .as_str()
        .unwrap()
        .trim_start_matches("p-")
        .to_owned();
    post(format!("delivered:{id_c}"), Some("ok"), path).await;
    app.wait_delivery(&c, "3", "prov", "delivered", |d| status(d) == "delivered")
        .await;
    assert_eq!(
        app.delivery(&ws, "9", "websocket").await["status"],
        "pending"
    );
    app.shutdown().await;
}
