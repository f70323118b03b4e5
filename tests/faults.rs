//! The fault-test suite (RELIABILITY.md): Herald under the faults a deployment meets.
//!
//! * [`kill_9_mid_burst_loses_nothing`]: the real binary is killed with SIGKILL in the middle
//!   of a burst of 10,000 concurrent sends (each with an `Idempotency-Key`) to users whose
//!   WebSocket clients are connected and to an SMS provider; restarted on the same
//!   database, the requests whose answer was lost are sent again with the same key. Every
//!   message that got a `202` is stored once and delivered; duplicates exist only as the
//!   same message (WebSocket) or delivery (vendor) id.
//! * [`vendor_outage_then_recovery_sends_each_delivery_once`]: the three SMS vendors
//!   (local fakes that check signatures) answer `503` with `Retry-After` for two rounds of
//!   attempts, then recover. Every delivery ends `sent`, and each vendor accepted each
//!   delivery id exactly once. Time moves by the injected clock, never by sleeping.
//! * [`stalled_clients_are_closed_and_replayed`]: 2 of 200 WebSocket clients stop reading
//!   their socket. The server closes those two sessions; the other 198 receive (and ack)
//!   every message; the stalled users, reconnecting, get everything they missed.
//! * The regression test of the poison message the stalled-client test found:
//!   [`a_message_larger_than_the_write_buffer_is_delivered_live_and_by_replay`].
//!
//! Each test prints its figures on stderr (`FAULTS …` lines; `cargo test --test faults --
//! --nocapture` shows them) and runs under a deadline of its own.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use herald_channel_sms::testing::{aliyun, tencent, twilio};
use herald_channel_sms::testing::{Answer, Recorded, Server, Vendor};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Runs `test` under `limit`; a fault test that hangs fails instead of stalling CI.
async fn bounded<F: std::future::Future<Output = ()>>(name: &str, limit: Duration, test: F) {
    if tokio::time::timeout(limit, test).await.is_err() {
        panic!("{name}: did not finish within {limit:?}");
    }
}

/// The `total` of `GET {path}` on a server at `base` (API key `key`).
async fn total_at(client: &reqwest::Client, base: &str, key: &str, path: &str) -> u64 {
    let resp = client
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let (status, body) = read_response(resp).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body["total"]
        .as_u64()
        .unwrap_or_else(|| panic!("GET {path}: no total in {body}"))
}

/// Poll until `GET {path}`'s total is `want`.
async fn wait_total(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
    want: u64,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let total = total_at(client, base, key, path).await;
        if total == want {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?}: GET {path} has total {total}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One counter from `/metrics` (0 when absent).
async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .map_or(0, |v| v as u64)
}

// ---------------------------------------------------------------------------------------------
// kill -9 in the middle of a burst of 10,000 sends
// ---------------------------------------------------------------------------------------------

const BURST: usize = 10_000;
/// Users with a connected WebSocket client; message `i` goes to user `i % BURST_USERS`.
const BURST_USERS: usize = 50;
/// Requests in flight at once.
const IN_FLIGHT: usize = 48;
/// The server is killed the moment this many `202`s have arrived.
const KILL_AT: usize = 5_000;
/// Every `SMS_EVERY`-th message also goes to the SMS instance `tw` (a local Twilio).
const SMS_EVERY: usize = 5;

fn burst_user(i: usize) -> String {
    format!("burst-{}", i % BURST_USERS)
}

fn burst_body(i: usize) -> Value {
    let channels = if i % SMS_EVERY == 0 {
        json!(["websocket", "tw"])
    } else {
        json!(["websocket"])
    };
    json!({"title": format!("burst {i}"), "content": format!("payload {i}"),
           "receivers": [burst_user(i)], "channels": channels})
}

/// What one WebSocket user saw, across every connection it made.
#[derive(Default)]
struct Inbox {
    ids: HashSet<String>,
    frames: usize,
    connections: usize,
}

/// A WebSocket user that acks every message and reconnects whenever the connection ends
/// (the server was killed). Runs until aborted; the test's deadline bounds it.
async fn acking_user(port: u16, user: String, inbox: Arc<Mutex<Inbox>>) {
    let url = format!("ws://127.0.0.1:{port}/websocket/{}", proc_token(&user));
    loop {
        let connected =
            tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(&url)).await;
        let Ok(Ok((mut ws, _))) = connected else {
            // Down (killed, not restarted yet): try again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        inbox.lock().unwrap().connections += 1;
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("a JSON frame");
            if v["type"] != "message" {
                continue;
            }
            let id = v["id"].as_str().expect("message id").to_owned();
            {
                let mut inbox = inbox.lock().unwrap();
                inbox.frames += 1;
                inbox.ids.insert(id.clone());
            }
            let ack = json!({"type": "ack", "id": id}).to_string();
            if ws.send(Message::text(ack)).await.is_err() {
                break;
            }
        }
    }
}

enum Outcome {
    Accepted(String),
    /// The request was sent but its answer never came (the server died).
    Lost,
    /// Not sent: the server was already dead.
    NotSent,
}

/// One send of the burst. A `503` (admission control: nothing was stored) is what a
/// well-behaved client retries, with the same key, after `Retry-After`; on a busy machine
/// the burst's own sessions can fill the fan-out backlog for a moment.
async fn post_send(client: &reqwest::Client, base: &str, i: usize) -> Result<String, String> {
    let (status, text) = loop {
        let resp = client
            .post(format!("{base}/api/v1/messages"))
            .bearer_auth(PROC_API_KEY)
            .header("idempotency-key", format!("burst-{i}"))
            .json(&burst_body(i))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let retry = resp.headers().contains_key("retry-after");
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if status == StatusCode::SERVICE_UNAVAILABLE && retry {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        break (status, text);
    };
    assert_eq!(status, StatusCode::ACCEPTED, "send {i}: {text}");
    let body: Value = serde_json::from_str(&text).expect("a JSON answer");
    Ok(body["id"].as_str().expect("id").to_owned())
}

fn burst_config(vendor_url: &str) -> String {
    format!(
        r#"
[dispatch]
send_timeout = "3s"
lease = "4s"
poll_interval = "200ms"

[channels.tw]
kind = "sms.twilio"
account_sid = "{sid}"
auth_token = "{token}"
from = "{from}"
status_callback_url = "{callback}"
endpoint = "{vendor_url}"
timeout = "2s"
concurrency = 16
"#,
        sid = twilio::SID,
        token = twilio::TOKEN,
        from = twilio::FROM,
        callback = twilio::CALLBACK,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_nothing() {
    bounded(
        "kill -9 mid-burst",
        Duration::from_secs(150),
        kill_9_mid_burst(),
    )
    .await;
}

async fn kill_9_mid_burst() {
    let started = Instant::now();
    let vendor = Arc::new(twilio::TwilioApi::default());
    let sms = Server::start(vendor.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("herald.toml"), burst_config(&sms.url())).expect("config");
    let port = free_port();
    let env = [
        ("HERALD_API_KEY", PROC_API_KEY),
        ("HERALD_JWT_SECRET", PROC_JWT_SECRET),
        ("HERALD_LOG__FILTER", "warn"),
    ];
    let mut server = spawn_process(dir.path(), port, &env).await;
    let base = server.base.clone();
    let client = reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("client");

    for u in 0..BURST_USERS {
        let resp = client
            .put(format!("{base}/api/v1/recipients/{}", burst_user(u)))
            .bearer_auth(PROC_API_KEY)
            .json(&json!({"phone": format!("+1415555{u:04}")}))
            .send()
            .await
            .expect("PUT recipient");
        assert!(
            resp.status().is_success(),
            "PUT recipient: {}",
            resp.status()
        );
    }

    // Every user online, acking, reconnecting by itself after the crash.
    let inboxes: Vec<Arc<Mutex<Inbox>>> = (0..BURST_USERS).map(|_| Arc::default()).collect();
    let mut users = tokio::task::JoinSet::new();
    for (u, inbox) in inboxes.iter().enumerate() {
        users.spawn(acking_user(port, burst_user(u), inbox.clone()));
    }
    wait_until(DEADLINE, "every burst user online", || async {
        let resp = client
            .get(format!("{base}/api/v1/clients"))
            .bearer_auth(PROC_API_KEY)
            .send()
            .await
            .expect("GET clients");
        let (_, body) = read_response(resp).await;
        body.as_array().is_some_and(|a| a.len() == BURST_USERS)
    })
    .await;

    // The burst; SIGKILL the moment the KILL_AT-th 202 arrives.
    let killed = Arc::new(AtomicBool::new(false));
    let mut outcomes = futures_util::stream::iter(0..BURST)
        .map(|i| {
            let (client, base, killed) = (client.clone(), base.clone(), killed.clone());
            async move {
                if killed.load(SeqCst) {
                    return (i, Outcome::NotSent);
                }
                match post_send(&client, &base, i).await {
                    Ok(id) => (i, Outcome::Accepted(id)),
                    Err(_) => (i, Outcome::Lost),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut ids: Vec<Option<String>> = vec![None; BURST];
    let (mut answered, mut lost, mut not_sent) = (Vec::new(), Vec::new(), Vec::new());
    while let Some((i, outcome)) = outcomes.next().await {
        match outcome {
            Outcome::Accepted(id) => {
                ids[i] = Some(id);
                answered.push(i);
                if answered.len() == KILL_AT {
                    killed.store(true, SeqCst);
                    server.kill9();
                }
            }
            Outcome::Lost => lost.push(i),
            Outcome::NotSent => not_sent.push(i),
        }
    }
    drop(outcomes);
    assert!(killed.load(SeqCst), "the burst ended before the kill");
    let burst_done = started.elapsed();

    // Restart on the same database and port; the clients reconnect by themselves.
    let server = spawn_process(dir.path(), port, &env).await;
    let client = reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("client");
    let committed = total_at(&client, &base, PROC_API_KEY, "/api/v1/messages?size=1").await;
    assert!(
        committed as usize >= answered.len(),
        "{committed} messages stored, but {} were answered 202",
        answered.len()
    );

    // Retry every request without an answer, with its key; also re-send every 50th
    // answered one: the key must still give the same id after the crash.
    let resend_answered: Vec<usize> = answered.iter().copied().step_by(50).collect();
    let retry: Vec<usize> = lost
        .iter()
        .chain(&not_sent)
        .chain(&resend_answered)
        .copied()
        .collect();
    let mut retried = futures_util::stream::iter(retry.clone())
        .map(|i| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let id = post_send(&client, &base, i)
                    .await
                    .unwrap_or_else(|e| panic!("retry of send {i} failed: {e}"));
                (i, id)
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut same_id = 0;
    while let Some((i, id)) = retried.next().await {
        match &ids[i] {
            Some(first) => {
                assert_eq!(
                    first, &id,
                    "send {i}: the key gave another id after restart"
                );
                same_id += 1;
            }
            None => ids[i] = Some(id),
        }
    }
    drop(retried);
    let ids: Vec<String> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| id.unwrap_or_else(|| panic!("send {i} never got an id")))
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), BURST, "two sends share an id");
    // A retried key never stored a second message.
    let stored = total_at(&client, &base, PROC_API_KEY, "/api/v1/messages?size=1").await;
    assert_eq!(stored as usize, BURST, "messages stored");

    // Every user receives every message addressed to it (replay after the crash).
    let mut expected: Vec<HashSet<String>> = vec![HashSet::new(); BURST_USERS];
    for (i, id) in ids.iter().enumerate() {
        expected[i % BURST_USERS].insert(id.clone());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: usize = inboxes
            .iter()
            .zip(&expected)
            .map(|(inbox, want)| want.difference(&inbox.lock().unwrap().ids).count())
            .sum();
        if missing == 0 {
            break;
        }
        if let Some(ended) = users.try_join_next() {
            panic!("a WebSocket user stopped: {ended:?}");
        }
        assert!(
            Instant::now() < deadline,
            "{missing} accepted message(s) never reached their WebSocket client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and nothing else.
    for (u, (inbox, want)) in inboxes.iter().zip(&expected).enumerate() {
        let inbox = inbox.lock().unwrap();
        assert!(
            inbox.ids.is_subset(want),
            "user {u} received a message that was not sent to them"
        );
    }
    // Every WebSocket delivery is acked, and every SMS handed to the vendor.
    let within = Duration::from_secs(60);
    let path = "/api/v1/messages?size=1&channel=websocket&status=undelivered";
    wait_total(&client, &base, PROC_API_KEY, path, 0, within).await;
    let path = "/api/v1/messages?size=1&channel=tw&status=pending";
    wait_total(&client, &base, PROC_API_KEY, path, 0, within).await;
    let failed = total_at(
        &client,
        &base,
        PROC_API_KEY,
        "/api/v1/messages?size=1&status=failed",
    )
    .await;
    assert_eq!(failed, 0, "failed deliveries");
    let sms_sent = total_at(
        &client,
        &base,
        PROC_API_KEY,
        "/api/v1/messages?size=1&channel=tw&status=sent",
    )
    .await;
    assert_eq!(
        sms_sent as usize,
        BURST.div_ceil(SMS_EVERY),
        "SMS deliveries sent"
    );

    // At the vendor: every SMS message arrived; a repeat (sent, then the crash lost the
    // `sent`) is always the same delivery id.
    let mut by_message: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let accepted = vendor.accepted();
    for form in &accepted {
        let i: usize = form["Body"]
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("burst "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected SMS body {:?}", form["Body"]));
        let delivery = form["StatusCallback"]
            .split_once("delivery=")
            .map(|(_, d)| d.to_owned())
            .expect("a delivery id in the StatusCallback");
        by_message.entry(i).or_default().insert(delivery);
    }
    let sms_messages: BTreeSet<usize> = (0..BURST).step_by(SMS_EVERY).collect();
    assert_eq!(
        by_message.keys().copied().collect::<BTreeSet<_>>(),
        sms_messages,
        "messages that reached the vendor"
    );
    for (i, deliveries) in &by_message {
        assert_eq!(
            deliveries.len(),
            1,
            "message {i} reached the vendor as {deliveries:?}"
        );
    }

    let (frames, reconnects) = inboxes.iter().fold((0, 0), |(f, c), inbox| {
        let inbox = inbox.lock().unwrap();
        (f + inbox.frames, c + inbox.connections.saturating_sub(1))
    });
    users.abort_all();
    eprintln!(
        "FAULTS kill-9: sends={BURST} in_flight={IN_FLIGHT} killed_at_202={KILL_AT} answered_202={} \
         answers_lost={} not_sent={} stored_before_retry={committed} \
         lost_but_committed={} retried={} same_id_on_resend={same_id} stored={stored} \
         ws_users={BURST_USERS} ws_frames={frames} ws_distinct={BURST} ws_duplicates={} \
         reconnects={reconnects} sms_accepted={} sms_distinct={} sms_duplicates={} \
         burst_secs={:.1} total_secs={:.1}",
        answered.len(),
        lost.len(),
        not_sent.len(),
        committed as usize - answered.len(),
        retry.len(),
        frames - BURST,
        accepted.len(),
        by_message.len(),
        accepted.len() - by_message.len(),
        burst_done.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// Vendor outage: 503 + Retry-After, then recovery
// ---------------------------------------------------------------------------------------------

/// A vendor behind a switch: while down it answers `refusal` (a 503 with `Retry-After`)
/// without looking at the request, as a vendor's load balancer does in an outage.
struct Outage {
    vendor: Arc<dyn Vendor>,
    down: AtomicBool,
    refusal: Answer,
    refused: AtomicUsize,
}

impl Outage {
    fn new(vendor: Arc<dyn Vendor>, refusal: Answer) -> Arc<Outage> {
        Arc::new(Outage {
            vendor,
            down: AtomicBool::new(true),
            refusal: refusal.with_header("retry-after", "30"),
            refused: AtomicUsize::new(0),
        })
    }
}

impl Vendor for Outage {
    fn answer(&self, request: &Recorded) -> Answer {
        if self.down.load(SeqCst) {
            self.refused.fetch_add(1, SeqCst);
            return self.refusal.clone();
        }
        self.vendor.answer(request)
    }
}

const OUTAGE_USERS: usize = 10;
const OUTAGE_MESSAGES: usize = 5;
/// Rounds of attempts that meet the outage; the next one succeeds.
const OUTAGE_ROUNDS: i64 = 2;
const SMS_INSTANCES: [&str; 3] = ["ali", "tc", "tw"];

fn outage_channels(ali: &Server, tc: &Server, tw: &Server) -> Vec<(String, toml::Table)> {
    let report = |t: Value| json!({"report_ready": t});
    let configs = [
        (
            "ali",
            "sms.aliyun",
            json!({
                "access_key_id": aliyun::KEY_ID, "access_key_secret": aliyun::SECRET,
                "sign_name": "阿里云短信测试", "endpoint": ali.url(), "signature": "acs3",
                "timeout": "5s",
                "templates": report(json!({"template_code": "SMS_71390007",
                    "params": {"customer": "patient_name", "report": "report_id"}})),
            }),
        ),
        (
            "tc",
            "sms.tencent",
            json!({
                "secret_id": tencent::SECRET_ID, "secret_key": tencent::SECRET_KEY,
                "sms_sdk_app_id": tencent::APP_ID, "sign_name": "腾讯云",
                "region": "ap-guangzhou", "endpoint": tc.url(), "timeout": "5s",
                "templates": report(json!({"template_id": 1110,
                    "params": ["patient_name", "report_id"]})),
            }),
        ),
        (
            "tw",
            "sms.twilio",
            json!({
                "account_sid": twilio::SID, "auth_token": twilio::TOKEN, "from": twilio::FROM,
                "status_callback_url": twilio::CALLBACK, "endpoint": tw.url(), "timeout": "5s",
            }),
        ),
    ];
    configs
        .into_iter()
        .map(|(name, kind, config)| {
            let mut t = toml::Table::try_from(config).expect("JSON object → TOML");
            t.insert("kind".into(), toml::Value::String(kind.into()));
            (name.to_owned(), t)
        })
        .collect()
}

/// Every delivery of `ids` (fetched once each).
async fn deliveries(app: &TestApp, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        let msg = app.message(id).await;
        out.extend(
            msg["deliveries"]
                .as_array()
                .expect("deliveries")
                .iter()
                .cloned(),
        );
    }
    out
}

/// Milliseconds from the injected clock's now until `d`'s next attempt.
fn due_in_ms(app: &TestApp, d: &Value) -> i64 {
    let now = herald::clock::Clock::now_ms(app.clock.as_ref().expect("a manual clock"));
    (rfc3339(&d["nextAttemptAt"], "nextAttemptAt").unix_timestamp_nanos() / 1_000_000) as i64 - now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_outage_then_recovery_sends_each_delivery_once() {
    bounded("vendor outage", Duration::from_secs(90), vendor_outage()).await;
}

async fn vendor_outage() {
    let started = Instant::now();
    let ali_api = Arc::new(aliyun::Dysmsapi::default());
    let tc_api = Arc::new(tencent::TencentCloud::default());
    let tw_api = Arc::new(twilio::TwilioApi::default());
    let ali = Outage::new(
        ali_api.clone(),
        aliyun::gateway_error(
            503,
            "ServiceUnavailable",
            "The request has failed due to a temporary failure of the server.",
        ),
    );
    let tc = Outage::new(
        tc_api.clone(),
        Answer {
            status: 503,
            headers: vec![("content-type".into(), "text/html".into())],
            body: "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>".into(),
        },
    );
    let tw = Outage::new(
        tw_api.clone(),
        twilio::twilio_error(503, 20503, "Service Unavailable"),
    );
    let outages = [ali.clone(), tc.clone(), tw.clone()];
    let (ali_server, tc_server, tw_server) = (
        Server::start(ali).await,
        Server::start(tc).await,
        Server::start(tw).await,
    );
    let tables = outage_channels(&ali_server, &tc_server, &tw_server);
    let app = spawn_app_clock(
        move |s| {
            for (name, t) in tables {
                s.channels.insert(name, t);
            }
            s.templates.dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"));
            // A lease well beyond the vendors' Retry-After (30 s), so a scheduled retry
            // (due in 30 s) is told apart from an attempt in flight (due at its lease end).
            s.dispatch.lease = Duration::from_secs(120);
        },
        Some(herald::clock::ManualClock::default()),
    )
    .await;

    let users: Vec<String> = (0..OUTAGE_USERS).map(|u| format!("patient-{u}")).collect();
    for (u, user) in users.iter().enumerate() {
        let (st, body) = app
            .api(
                Method::PUT,
                &format!("/api/v1/recipients/{user}"),
                Some(&json!({"phone": format!("+86138000{u:05}")})),
            )
            .await;
        assert!(st.is_success(), "{body}");
    }
    let mut ids = Vec::new();
    for m in 0..OUTAGE_MESSAGES {
        let data = json!({
            "patient_name": format!("Patient {m}"), "report_type": "CT chest",
            "report_id": format!("R-{m}"), "hospital": "Herald General",
            "ready_at": "2026-11-29 09:30", "url": format!("https://reports.example.com/R-{m}")
        });
        let body = json!({"receivers": users, "channels": SMS_INSTANCES,
                          "template": "report_ready", "data": data});
        ids.push(send_ok(&app, body).await);
    }
    let expected = OUTAGE_USERS * OUTAGE_MESSAGES * SMS_INSTANCES.len();

    // Each round: wait until every attempt of this round has failed and its retry is
    // scheduled (never move the clock under a send in flight), then move the clock to the
    // latest due time. After OUTAGE_ROUNDS rounds the vendors are back.
    let half_lease = app.settings.dispatch.lease.as_millis() as i64 / 2;
    let mut delays_ms = Vec::new();
    for round in 1..=OUTAGE_ROUNDS {
        let deadline = Instant::now() + DEADLINE;
        let all = loop {
            let all = deliveries(&app, &ids).await;
            let scheduled = all.iter().all(|d| {
                d["status"] == "pending"
                    && d["attempts"] == round
                    && d["error"].is_string()
                    && due_in_ms(&app, d) < half_lease
            });
            if scheduled {
                break all;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: not every attempt failed and was rescheduled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(all.len(), expected);
        let latest = all.iter().map(|d| due_in_ms(&app, d)).max().unwrap_or(0);
        delays_ms.extend(all.iter().map(|d| due_in_ms(&app, d)));
        if round == OUTAGE_ROUNDS {
            for o in &outages {
                o.down.store(false, SeqCst);
            }
        }
        app.advance(Duration::from_millis(latest.max(0) as u64 + 1));
    }

    let deadline = Instant::now() + DEADLINE;
    let all = loop {
        let all = deliveries(&app, &ids).await;
        if all.iter().all(|d| d["status"] == "sent") {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "not every delivery was sent after the recovery: {:?}",
            all.iter()
                .filter(|d| d["status"] != "sent")
                .take(3)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for d in &all {
        assert_eq!(d["attempts"], OUTAGE_ROUNDS + 1, "{d}");
    }

    // At each vendor: every delivery id accepted exactly once.
    let per_instance = OUTAGE_USERS * OUTAGE_MESSAGES;
    let ali_ids: Vec<String> = ali_api
        .accepted()
        .iter()
        .map(|p| p["OutId"].clone())
        .collect();
    let tc_ids: Vec<String> = tc_api
        .accepted()
        .iter()
        .map(|b| {
            b["SessionContext"]
                .as_str()
                .expect("SessionContext")
                .to_owned()
        })
        .collect();
    let tw_ids: Vec<String> = tw_api
        .accepted()
        .iter()
        .map(|f| {
            f["StatusCallback"]
                .split_once("delivery=")
                .expect("a delivery id in the StatusCallback")
                .1
                .to_owned()
        })
        .collect();
    for (name, accepted) in [
        ("aliyun", &ali_ids),
        ("tencent", &tc_ids),
        ("twilio", &tw_ids),
    ] {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for id in accepted {
            *counts.entry(id).or_default() += 1;
        }
        assert_eq!(
            counts.len(),
            per_instance,
            "{name}: distinct delivery ids accepted"
        );
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{name} accepted deliveries twice: {twice:?}"
        );
    }
    let refused: usize = outages.iter().map(|o| o.refused.load(SeqCst)).sum();
    assert_eq!(refused, expected * OUTAGE_ROUNDS as usize, "503s answered");
    // Every retry waited as long as the vendor asked (Retry-After: 30).
    assert!(
        delays_ms.iter().all(|&d| d == 30_000),
        "retries not scheduled at the vendor's Retry-After: {:?}..{:?}",
        delays_ms.iter().min(),
        delays_ms.iter().max()
    );
    eprintln!(
        "FAULTS vendor-outage: vendors=3 deliveries={expected} outage_rounds={OUTAGE_ROUNDS} \
         refused_503={refused} retry_delays_ms={}..{} sent={} attempts_each={} \
         accepted_aliyun={} accepted_tencent={} accepted_twilio={} accepted_twice=0 secs={:.1}",
        delays_ms.iter().min().unwrap_or(&0),
        delays_ms.iter().max().unwrap_or(&0),
        all.len(),
        OUTAGE_ROUNDS + 1,
        ali_ids.len(),
        tc_ids.len(),
        tw_ids.len(),
        started.elapsed().as_secs_f64(),
    );
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Stalled clients
// ---------------------------------------------------------------------------------------------

const WALL_USERS: usize = 200;
const STALLED: usize = 2;
const WALL_MESSAGES: usize = 150;
/// Bytes of content per message sent to every user.
const WALL_CONTENT: usize = 1024;
/// Large messages sent to the stalled users only, with the first of the others: 6 MiB,
/// more than a loopback socket's buffers take (Linux grows a send buffer up to
/// `net.ipv4.tcp_wmem`'s 4 MiB), so the stalled sessions' writes block.
const BULK: usize = 24;
const BULK_CONTENT: usize = 256 * 1024;
/// Messages sent ahead of the slowest healthy client (below the queue capacity, so a
/// healthy but busy client is never mistaken for a stalled one).
const WINDOW: usize = 4;
const QUEUE: usize = 16;
/// The default: long enough for a client that reads to take a replay of large messages
/// in one flush (a debug build parses 6 MiB slowly). The stalled sessions are closed
/// when their queue overflows.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Progress of one healthy client.
#[derive(Default)]
struct Reader {
    ids: Mutex<HashSet<String>>,
    distinct: AtomicUsize,
    frames: AtomicUsize,
    closed: AtomicBool,
}

/// Reads, acks and counts every message until the connection ends.
async fn healthy_reader(mut ws: WsClient, reader: Arc<Reader>, progress: Arc<Notify>) {
    while let Some(Ok(frame)) = ws.stream.next().await {
        let Message::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(text.as_str()).expect("a JSON frame");
        if v["type"] != "message" {
            continue;
        }
        let id = v["id"].as_str().expect("message id").to_owned();
        reader.frames.fetch_add(1, SeqCst);
        if reader.ids.lock().unwrap().insert(id.clone()) {
            reader.distinct.fetch_add(1, SeqCst);
        }
        progress.notify_one();
        if ws
            .stream
            .send(Message::text(json!({"type": "ack", "id": id}).to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    reader.closed.store(true, SeqCst);
    progress.notify_one();
}

/// A client whose kernel receive buffer is tiny; after the welcome it never reads again.
async fn stalled_client(app: &TestApp, user: &str) -> WsClient {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
    let stream = socket.connect(app.addr).await.expect("connect");
    let url = app.ws_url(&format!("/websocket/{}", app.token(user)));
    let (stream, _) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    let mut ws = WsClient { stream };
    ws.welcome().await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_closed_and_replayed() {
    bounded(
        "stalled clients",
        Duration::from_secs(120),
        stalled_clients(),
    )
    .await;
}

async fn stalled_clients() {
    let started = Instant::now();
    let app = spawn_app_with(|s| {
        s.websocket.queue_capacity = QUEUE;
        s.websocket.write_timeout = WRITE_TIMEOUT;
        // The stalled clients never answer the ping sent with the welcome: only the full
        // queue may close them here, not the first-frame deadline.
        s.websocket.first_frame_timeout = Duration::from_secs(120);
        s.database.synchronous = herald::config::Synchronous::Normal;
    })
    .await;
    let users: Vec<String> = (0..WALL_USERS).map(|u| format!("wall-{u:03}")).collect();
    let (stalled_users, healthy_users) = users.split_at(STALLED);

    let mut stalled = Vec::new();
    for user in stalled_users {
        stalled.push(stalled_client(&app, user).await);
    }
    let progress = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    let mut readers = Vec::new();
    for user in healthy_users {
        let (ws, _) = ws_login(&app, &app.token(user)).await;
        let reader = Arc::new(Reader::default());
        tasks.spawn(healthy_reader(ws, reader.clone(), progress.clone()));
        readers.push(reader);
    }
    app.wait_clients(WALL_USERS).await;

    let slowest = |readers: &[Arc<Reader>]| {
        readers
            .iter()
            .map(|r| r.distinct.load(SeqCst))
            .min()
            .unwrap_or(0)
    };
    let content = "x".repeat(WALL_CONTENT);
    let bulk = "b".repeat(BULK_CONTENT);
    let (mut ids, mut bulk_ids) = (Vec::new(), Vec::new());
    for k in 0..WALL_MESSAGES {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while slowest(&readers) + WINDOW <= k {
            assert!(
                readers.iter().all(|r| !r.closed.load(SeqCst)),
                "a healthy client's session was closed"
            );
            tokio::time::timeout_at(deadline, progress.notified())
                .await
                .expect("the healthy clients stopped receiving");
        }
        if k < BULK {
            let body = json!({"title": format!("bulk {k}"), "content": bulk,
                              "receivers": stalled_users});
            bulk_ids.push(send_ok(&app, body).await);
        }
        let body = json!({"title": format!("wall {k}"), "content": content, "receivers": users});
        ids.push(send_ok(&app, body).await);
    }
    let expected: HashSet<String> = ids.iter().cloned().collect();
    let stalled_expected: HashSet<String> = ids.iter().chain(&bulk_ids).cloned().collect();

    // Every healthy client gets every message...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while slowest(&readers) < WALL_MESSAGES {
        tokio::time::timeout_at(deadline, progress.notified())
            .await
            .expect("the healthy clients did not receive every message");
    }
    for r in &readers {
        assert!(
            *r.ids.lock().unwrap() == expected,
            "a healthy client got other messages"
        );
        assert!(
            !r.closed.load(SeqCst),
            "a healthy client's session was closed"
        );
    }
    // ... and the two stalled sessions are closed by the server.
    app.wait_clients(WALL_USERS - STALLED).await;
    let online: HashSet<String> = app
        .clients()
        .await
        .iter()
        .map(|c| c["userId"].as_str().unwrap_or_default().to_owned())
        .collect();
    for user in stalled_users {
        assert!(
            !online.contains(user),
            "{user}'s stalled session is still open"
        );
    }
    let kicked = metric(&app, "herald_slow_consumers_total").await;

    // The stalled users come back and get everything they missed, by replay.
    drop(stalled);
    let mut replay_frames = 0;
    for user in stalled_users {
        let (mut ws, _) = ws_login(&app, &app.token(user)).await;
        let mut seen = HashSet::new();
        while seen.len() < stalled_expected.len() {
            let frame = ws.next_message().await;
            let id = frame["id"].as_str().expect("id").to_owned();
            assert!(
                stalled_expected.contains(&id),
                "{user} got {id}, never sent to them"
            );
            replay_frames += 1;
            seen.insert(id.clone());
            ws.ack(&id).await;
        }
        ws.expect_no_message(QUIET).await;
        ws.close().await;
    }
    // Every delivery, to healthy and stalled users alike, ends acked.
    let undelivered = "/api/v1/messages?size=1&status=undelivered";
    wait_total(
        &app.client,
        &app.base,
        &app.api_key,
        undelivered,
        0,
        DEADLINE,
    )
    .await;

    let frames: usize = readers.iter().map(|r| r.frames.load(SeqCst)).sum();
    eprintln!(
        "FAULTS stalled-clients: clients={WALL_USERS} stalled={STALLED} messages={WALL_MESSAGES} \
         content_bytes={WALL_CONTENT} bulk_to_stalled={BULK}x{BULK_CONTENT} \
         queue_capacity={QUEUE} write_timeout_s={} \
         stalled_closed={STALLED} closed_as_slow_consumer={kicked} healthy_closed=0 \
         healthy_frames={frames} healthy_expected={} healthy_duplicates={} \
         stalled_replayed={replay_frames} stalled_expected={} lost=0 secs={:.1}",
        WRITE_TIMEOUT.as_secs(),
        (WALL_USERS - STALLED) * WALL_MESSAGES,
        frames - (WALL_USERS - STALLED) * WALL_MESSAGES,
        STALLED * (WALL_MESSAGES + BULK),
        started.elapsed().as_secs_f64(),
    );
    tasks.abort_all();
    app.shutdown().await;
}

/// Regression: a frame larger than the session's write buffer limit used to fail with
/// `WriteBufferFull` on every attempt, dropping the connection live and again on every
/// replay, so the user's WebSocket never got past that message. Found by the stalled-client
/// test's 256 KiB messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_write_buffer_is_delivered_live_and_by_replay() {
    bounded("large message", Duration::from_secs(60), async {
        let app = spawn_app().await;
        let limit = app.settings.websocket.max_frame_size * 4;
        let (mut ws, _) = ws_login(&app, &app.token("big")).await;
        let content = "z".repeat(limit + 1024);
        let id = send_ok(
            &app,
            json!({"title": "big", "content": content, "receivers": ["big"]}),
        )
        .await;
        let live = ws.next_message().await;
        assert_eq!(live["id"], id.as_str());
        assert_eq!(live["content"].as_str().map(str::len), Some(content.len()));
        ws.close().await;
        // Not acked: replayed on the next connection, which then stays usable.
        let (mut ws, _) = ws_login(&app, &app.token("big")).await;
        assert_eq!(ws.next_message().await["id"], id.as_str());
        ws.ack(&id).await;
        app.wait_status(&id, "big", &["delivered"]).await;
        let small = send_ok(&app, msg("after", &["big"])).await;
        assert_eq!(ws.next_message().await["id"], small.as_str());
        eprintln!(
            "FAULTS large-message: content_bytes={} delivered_live=1 replayed=1",
            content.len()
        );
        app.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Disk full
// ---------------------------------------------------------------------------------------------

/// What a full disk does to sends, seen from outside: `503` with `Retry-After` (never a
/// `202` for what was not stored), `/readyz` `503` naming "disk full", the refusals
/// counted in `/metrics`; after a restart with room, every message that got a `202` is
/// listed and nothing else is. `database.max_size` makes SQLite answer `SQLITE_FULL`
/// exactly as a full filesystem does (`tests/postgres.rs` and the service tests also fill
/// a real tmpfs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_sends_and_every_202_is_stored() {
    bounded("disk full", Duration::from_secs(120), disk_full()).await;
}

async fn disk_full() {
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let full_env = [
        ("HERALD_API_KEY", PROC_API_KEY),
        ("HERALD_JWT_SECRET", PROC_JWT_SECRET),
        ("HERALD_DATABASE__MAX_SIZE", "1 MiB"),
    ];
    let server = spawn_process(dir.path(), free_port(), &full_env).await;
    let content = "x".repeat(3000);
    let (mut accepted, mut refused) = (Vec::new(), 0u64);
    // Concurrent senders, so whole group commits fail; keep going well past "full".
    let mut after_full = 0;
    while after_full < 200 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let (client, base) = (server.client.clone(), server.base.clone());
            let body =
                json!({"title": format!("fill {i}"), "content": content, "receivers": ["u"]});
            tasks.spawn(async move {
                let resp = client
                    .post(format!("{base}/api/v1/messages"))
                    .bearer_auth(PROC_API_KEY)
                    .json(&body)
                    .send()
                    .await
                    .expect("send");
                let retry = resp.headers().get("retry-after").cloned();
                let (status, body) = read_response(resp).await;
                (status, body, retry)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (status, body, retry) = r.expect("task");
            match status {
                StatusCode::ACCEPTED => {
                    accepted.push(body["id"].as_str().expect("id").to_owned());
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    refused += 1;
                    assert!(retry.is_some(), "503 without Retry-After: {body}");
                    assert!(
                        body["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("nothing was stored")),
                        "{body}"
                    );
                }
                other => panic!("unexpected {other}: {body}"),
            }
            if refused > 0 {
                after_full += 1;
            }
        }
        assert!(accepted.len() < 5_000, "the database never filled up");
    }
    let resp = server
        .client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .expect("readyz");
    let (status, body) = read_response(resp).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("disk full")),
        "{body}"
    );
    let metrics = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.lines().any(|l| l
            .starts_with("herald_sends_refused_total{reason=\"unavailable\"}")
            && !l.ends_with(" 0")),
        "refusals not counted"
    );
    // The log says why once, not per request.
    let log = server.log_text();
    let said = log.matches("the database cannot write").count();
    assert!((1..=2).contains(&said), "logged {said} times:\n{log}");
    drop(server);

    // Room again: everything accepted is there, nothing refused is.
    let server = spawn_process_with_secrets(dir.path()).await;
    let total = total_at(
        &server.client,
        &server.base,
        PROC_API_KEY,
        "/api/v1/messages?size=1",
    )
    .await;
    assert_eq!(total as usize, accepted.len(), "stored ≠ accepted");
    for id in &accepted {
        let resp = server
            .client
            .get(format!("{}/api/v1/messages/{id}", server.base))
            .bearer_auth(PROC_API_KEY)
            .send()
            .await
            .expect("get");
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{id} was answered 202 but is not stored"
        );
    }
    eprintln!(
        "FAULTS disk_full: accepted={} refused={} stored_after_restart={} logged_once={} secs={:.1}",
        accepted.len(),
        refused,
        total,
        said,
        started.elapsed().as_secs_f64()
    );
}
