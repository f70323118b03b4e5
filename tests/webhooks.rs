//! Webhooks (docs/webhooks.md) end to end: a real HTTP receiver on loopback that checks
//! every request's Standard Webhooks signature with its own HMAC code (written from the
//! spec, not Herald's), and servers that send to it — in process, and as the real binary
//! killed with SIGKILL mid-burst.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

// ---------------------------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    id: String,
    body: Value,
    /// Which of the receiver's secrets (by index) a `v1` signature of the request matched.
    verified_by: Vec<usize>,
    /// How many signatures the header held.
    signatures: usize,
    status: u16,
}

#[derive(Default)]
struct ReceiverState {
    hits: Vec<Hit>,
    /// Secrets to verify with (`whsec_…`).
    secrets: Vec<String>,
    /// Per webhook-id: how many attempts so far.
    attempts: HashMap<String, u32>,
    /// Answer `fail_status` (503 unless set) to the first N attempts of every event…
    fail_first: u32,
    fail_status: Option<u16>,
    /// …with this `Retry-After` (seconds).
    retry_after: Option<u32>,
    /// Answer this to every request.
    always: Option<u16>,
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

/// The Standard Webhooks check, from the spec: the key is the base64 after `whsec_`; the
/// signed content is `{id}.{timestamp}.{body}`; the header lists `v1,<base64>` entries
/// separated by spaces; the timestamp must be within 5 minutes.
fn verify(secret: &str, id: &str, ts: &str, body: &[u8], header: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    let fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (time::OffsetDateTime::now_utc().unix_timestamp() - t).abs() < 300);
    fresh && header.split(' ').any(|s| s == expected)
}

async fn hook(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let mut st = r.state.lock().unwrap();
    let verified_by: Vec<usize> = st
        .secrets
        .iter()
        .enumerate()
        .filter(|(_, s)| verify(s, &id, &ts, &body, &sig))
        .map(|(i, _)| i)
        .collect();
    let n = {
        let n = st.attempts.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    let failing = n <= st.fail_first;
    let status = if verified_by.is_empty() {
        401
    } else if let Some(s) = st.always {
        s
    } else if failing {
        st.fail_status.unwrap_or(503)
    } else {
        204
    };
    let retry_after = st.retry_after.filter(|_| failing);
    st.hits.push(Hit {
        id,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified_by,
        signatures: sig.split(' ').filter(|s| !s.is_empty()).count(),
        status,
    });
    let mut resp = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    resp
}

impl Receiver {
    /// Listen on `port` (0: any free one).
    async fn start(port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the receiver");
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn trust(&self, secret: &str) {
        self.state.lock().unwrap().secrets.push(secret.to_owned());
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }

    /// Events accepted (2xx), in the order they were accepted.
    fn accepted(&self) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.status < 300).collect()
    }

    /// Wait until `pred` holds for the accepted events.
    async fn wait(&self, what: &str, pred: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let me = self.clone();
        let pred = &pred;
        wait_until(DEADLINE, what, || {
            let me = me.clone();
            async move { pred(&me.accepted()) }
        })
        .await;
        self.accepted()
    }
}

/// `(type, data.messageId)` of each hit.
fn kinds(hits: &[Hit], message: &str) -> Vec<String> {
    hits.iter()
        .filter(|h| h.body["data"]["messageId"] == message)
        .map(|h| h.body["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Fast retries for tests.
fn fast(s: &mut herald::config::Settings) {
    let w = &mut s.dispatch.webhooks;
    w.retry_base = Duration::from_millis(50);
    w.retry_max = Duration::from_millis(300);
    w.poll_interval = Duration::from_millis(100);
    w.timeout = Duration::from_secs(5);
}

/// An e-mail instance `mail` that nobody has an address for (`no_address`).
fn with_mail(s: &mut herald::config::Settings) {
    let mut mail = toml::Table::new();
    mail.insert("kind".into(), "email.smtp".into());
    mail.insert("host".into(), "127.0.0.1".into());
    mail.insert("port".into(), 1.into());
    mail.insert("tls".into(), "none".into());
    mail.insert("from".into(), "Herald <herald@example.test>".into());
    s.channels.insert("mail".into(), mail);
}

async fn create(app: &TestApp, body: Value) -> Value {
    let (status, v) = app
        .api(reqwest::Method::POST, "/api/v1/webhooks", Some(&body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Each change fires its event once, each delivery's in order after the message's
/// acceptance, signed: accepted, a delivery
/// born failed, sent/delivered/read over a WebSocket session, a failover chain that
/// succeeds and one that is exhausted. The payload names what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_fires_once_per_change() {
    let rx = Receiver::start(0).await;
    let app = spawn_app_with(|s| {
        fast(s);
        with_mail(s);
    })
    .await;
    let created = create(&app, json!({"url": rx.url(), "events": ["*"]})).await;
    rx.trust(created["secret"].as_str().unwrap());
    assert!(created["id"].as_str().unwrap().starts_with("wh_"));
    // The secret is shown once: never in the listing.
    let (_, listed) = app.api_get("/api/v1/webhooks").await;
    assert!(!listed.to_string().contains("whsec_"), "{listed}");

    let (mut ws, _) = ws_login(&app, &app.token("u1")).await;
    let id = send_ok(
        &app,
        json!({"title": "report ready", "content": "c", "receivers": ["u1"],
               "channels": ["websocket", "mail"], "type": 3, "sender": "lab"}),
    )
    .await;
    let frame = ws.next_message().await;
    assert_eq!(frame["id"], id.as_str());
    app.wait_status(&id, "u1", &["sent"]).await;
    ws.ack(&id).await;
    app.wait_status(&id, "u1", &["delivered"]).await;
    ws.send_json(json!({"type": "read", "id": id})).await;
    app.wait_status(&id, "u1", &["read"]).await;

    let hits = rx
        .wait("the message's five events", |h| kinds(h, &id).len() >= 5)
        .await;
    let got = kinds(&hits, &id);
    // The acceptance first; each delivery's events in order (different deliveries may
    // interleave: the e-mail's failure is not held back by the WebSocket delivery).
    assert_eq!(got[0], "message.accepted", "{got:?}");
    let on_ws: Vec<&String> = got
        .iter()
        .filter(|k| k.as_str() != "delivery.failed")
        .collect();
    assert_eq!(
        on_ws,
        [
            "message.accepted",
            "delivery.sent",
            "delivery.delivered",
            "delivery.read"
        ]
    );
    assert_eq!(
        got.iter().filter(|k| *k == "delivery.failed").count(),
        1,
        "{got:?}"
    );
    let failed = hits
        .iter()
        .find(|h| h.body["type"] == "delivery.failed")
        .unwrap();
    let d = &failed.body["data"];
    assert_eq!(
        (
            d["recipient"].as_str(),
            d["channel"].as_str(),
            d["reason"].as_str()
        ),
        (Some("u1"), Some("mail"), Some("no_address"))
    );
    assert_eq!(
        (d["messageType"].as_i64(), d["sender"].as_str()),
        (Some(3), Some("lab"))
    );
    let read = hits
        .iter()
        .find(|h| h.body["type"] == "delivery.read")
        .unwrap();
    assert_eq!(read.body["data"]["status"], "read");
    assert!(rfc3339(&read.body["timestamp"], "timestamp").year() >= 2026);
    for h in &hits {
        assert_eq!(h.verified_by, [0], "{h:?}");
        assert!(h.id.starts_with("evt_"));
    }

    // Failover chains: one succeeds on the websocket step, one is exhausted (no address).
    let ok = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["u1"],
               "routing": {"policy": "failover", "steps": [{"channel": "websocket"}]}}),
    )
    .await;
    // The read above also sent `state`/`counts` control frames: skip to the message.
    loop {
        let f = ws.next_json().await;
        if f["type"] == "message" {
            assert_eq!(f["id"], ok.as_str());
            break;
        }
    }
    let gone = send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["nobody"],
               "routing": {"policy": "failover", "steps": [{"channel": "mail"}]}}),
    )
    .await;
    let hits = rx
        .wait("both chains' ends", |h| {
            kinds(h, &ok).contains(&"route.succeeded".to_string())
                && kinds(h, &gone).contains(&"route.exhausted".to_string())
        })
        .await;
    let exhausted = hits
        .iter()
        .find(|h| h.body["type"] == "route.exhausted")
        .unwrap();
    assert_eq!(exhausted.body["data"]["recipient"], "nobody");
    assert_eq!(exhausted.body["data"]["state"], "exhausted");

    // Once per change: nothing was delivered twice, and nothing more arrives.
    ws.close().await;
    let got = kinds(&rx.accepted(), &id);
    assert_eq!(got.len(), 5, "{got:?}");
    let mut ids = BTreeSet::new();
    for h in rx.accepted() {
        assert!(ids.insert(h.id.clone()), "{} delivered twice", h.id);
    }
}

/// A receiver that answers 503 twice gets each event a third time, with the same
/// `webhook-id`; the attempts are listed with their codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_503_twice_gets_each_event_until_it_accepts() {
    let rx = Receiver::start(0).await;
    rx.state.lock().unwrap().fail_first = 2;
    let app = spawn_app_with(fast).await;
    let created = create(
        &app,
        json!({"id": "flaky", "url": rx.url(), "events": ["message.accepted"]}),
    )
    .await;
    rx.trust(created["secret"].as_str().unwrap());
    let ids: Vec<String> = futures_util::future::join_all(
        (0..5).map(|i| send_ok(&app, msg(&format!("m{i}"), &["u"]))),
    )
    .await;
    let hits = rx
        .wait("every message accepted once", |h| h.len() >= 5)
        .await;
    let all = rx.hits();
    for id in &ids {
        let tries: Vec<&Hit> = all
            .iter()
            .filter(|h| h.body["data"]["messageId"] == id.as_str())
            .collect();
        assert_eq!(
            tries.iter().map(|h| h.status).collect::<Vec<_>>(),
            [503, 503, 204],
            "{id}"
        );
        assert!(
            tries.iter().all(|h| h.id == tries[0].id),
            "one webhook-id per event"
        );
    }
    assert_eq!(hits.len(), 5);
    // The receiver sees the last request just before Herald records its outcome.
    wait_until(DEADLINE, "15 attempts recorded", || async {
        let (_, page) = app
            .api_get("/api/v1/webhooks/flaky/attempts?limit=100")
            .await;
        page["items"].as_array().is_some_and(|a| a.len() == 15)
    })
    .await;
    let (status, page) = app
        .api_get("/api/v1/webhooks/flaky/attempts?limit=100")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 15);
    assert_eq!(items.iter().filter(|a| a["code"] == 503).count(), 10);
    assert!(items.iter().all(|a| a["eventState"] == "delivered"));
    let (_, ep) = app.api_get("/api/v1/webhooks/flaky").await;
    assert_eq!(
        (ep["pending"].as_u64(), ep["failed"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(ep.get("failingSince").is_none(), "{ep}");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("herald_webhook_attempts_total{outcome=\"retry\"} 10"));
    assert!(metrics.contains("herald_webhook_attempts_total{outcome=\"delivered\"} 5"));
}

/// While the receiver is down, events wait; when it comes back it gets all of them at once
/// (not at their backoff times), each message's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_everything_afterwards_in_order() {
    let port = free_port();
    let app = spawn_app_with(fast).await;
    let created = create(
        &app,
        json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["*"]}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (mut ws, _) = ws_login(&app, &app.token("u1")).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let m = send_ok(&app, msg(&format!("m{i}"), &["u1"])).await;
        ws.next_message().await;
        ws.ack(&m).await;
        ids.push(m);
    }
    for m in &ids {
        app.wait_status(m, "u1", &["delivered"]).await;
    }
    // Down: attempts fail (connection refused) and are retried.
    wait_until(DEADLINE, "failed attempts to be recorded", || async {
        let (_, ep) = app.api_get(&format!("/api/v1/webhooks/{id}")).await;
        ep.get("failingSince").is_some()
    })
    .await;
    let (_, page) = app
        .api_get(&format!("/api/v1/webhooks/{id}/attempts"))
        .await;
    let first = &page["items"][0];
    assert!(first.get("code").is_none(), "{first}");
    let error = first["error"].as_str().unwrap();
    assert!(error.contains("connection failed"), "{first}");
    assert!(
        error.to_lowercase().contains("refused"),
        "the cause is named: {first}"
    );

    let rx = Receiver::start(port).await;
    rx.trust(created["secret"].as_str().unwrap());
    let hits = rx
        .wait("every event after the receiver came back", |h| {
            ids.iter().all(|m| kinds(h, m).len() == 3)
        })
        .await;
    for m in &ids {
        assert_eq!(
            kinds(&hits, m),
            ["message.accepted", "delivery.sent", "delivery.delivered"],
            "{m}"
        );
    }
    let (_, ep) = app.api_get(&format!("/api/v1/webhooks/{id}")).await;
    assert!(ep.get("failingSince").is_none(), "recovered: {ep}");
}

/// During a rotation's overlap every request carries two signatures, one per secret;
/// afterwards only the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_and_new_signatures_valid_for_the_overlap() {
    let rx = Receiver::start(0).await;
    let app = spawn_app_with(fast).await;
    let created = create(
        &app,
        json!({"id": "rot", "url": rx.url(), "events": ["message.accepted"]}),
    )
    .await;
    let old = created["secret"].as_str().unwrap().to_owned();
    rx.trust(&old);
    let (status, rotated) = app
        .api(
            reqwest::Method::POST,
            "/api/v1/webhooks/rot/rotate",
            Some(&json!({"overlap": "1h"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    rx.trust(&new);
    let (_, ep) = app.api_get("/api/v1/webhooks/rot").await;
    assert!(ep["previousSecretUntil"].is_string(), "{ep}");
    let m = send_ok(&app, msg("during", &["u"])).await;
    let hits = rx.wait("the event", |h| !kinds(h, &m).is_empty()).await;
    let h = hits
        .iter()
        .find(|h| h.body["data"]["messageId"] == m.as_str())
        .unwrap();
    assert_eq!(h.signatures, 2);
    assert_eq!(
        h.verified_by,
        [0, 1],
        "both the old and the new secret verify"
    );

    // Ending the overlap at once: only the new secret signs.
    let (status, _) = app
        .api(
            reqwest::Method::POST,
            "/api/v1/webhooks/rot/rotate",
            Some(&json!({"overlap": "0s"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, ep) = app.api_get("/api/v1/webhooks/rot").await;
    assert!(ep.get("previousSecretUntil").is_none(), "{ep}");
}

/// Bad input is a 4xx naming the field and changes nothing; endpoints from herald.toml
/// can only be enabled or disabled through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoints_are_refused_and_config_endpoints_are_read_only() {
    let app = spawn_app_with(|s| {
        fast(s);
        s.dispatch.webhooks.allow_hosts = vec!["127.0.0.1".into(), "*.example.com".into()];
        s.webhooks = vec![herald::config::WebhookEndpointSettings {
            id: "billing".into(),
            url: "http://127.0.0.1:9/billing".into(),
            events: vec!["delivery.failed".into()],
            secret: herald::config::Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            description: String::new(),
            channels: None,
            types: None,
            senders: None,
        }];
    })
    .await;
    let cases = [
        (json!({"url": "ftp://127.0.0.1/x", "events": ["*"]}), "url"),
        (json!({"url": "http://evil.test/x", "events": ["*"]}), "url"),
        (
            json!({"url": "http://a.example.com/x", "events": ["delivery.lost"]}),
            "events",
        ),
        (
            json!({"url": "http://a.example.com/x", "events": []}),
            "events",
        ),
        (
            json!({"url": "http://a.example.com/x", "events": ["*"], "secret": "abc"}),
            "secret",
        ),
        (
            json!({"url": "http://a.example.com/x", "events": ["*"], "id": "Bad Id"}),
            "id",
        ),
        (
            json!({"url": "http://a.example.com/x", "events": ["*"], "channels": []}),
            "channels",
        ),
        (
            json!({"url": "http://a.example.com/x", "events": ["*"], "id": "billing"}),
            "id",
        ),
    ];
    for (body, field) in cases {
        let (status, v) = app
            .api(reqwest::Method::POST, "/api/v1/webhooks", Some(&body))
            .await;
        assert!(status.is_client_error(), "{body} → {status} {v}");
        assert_eq!(v["field"], field, "{body} → {v}");
    }
    let (_, list) = app.api_get("/api/v1/webhooks").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["source"], "config");
    let (status, v) = app
        .api(
            reqwest::Method::PATCH,
            "/api/v1/webhooks/billing",
            Some(&json!({"url": "http://127.0.0.1:9/other"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) = app
        .api(
            reqwest::Method::PATCH,
            "/api/v1/webhooks/billing",
            Some(&json!({"enabled": false, "disabledReason": "maintenance"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["enabled"].as_bool(), v["disabledReason"].as_str()),
        (Some(false), Some("maintenance"))
    );
    let (status, _) = app
        .api(reqwest::Method::DELETE, "/api/v1/webhooks/billing", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = app
        .api(reqwest::Method::DELETE, "/api/v1/webhooks/nope", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, v) = app
        .api(
            reqwest::Method::POST,
            "/api/v1/webhooks/billing/redeliver",
            Some(&json!({"event": "nope"})),
        )
        .await;
    assert_eq!(
        (status, v["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("event"))
    );
}

/// `kill -9` while messages are accepted and events sent: after a restart every message
/// that got a `202` has its `message.accepted` event delivered (the event was committed
/// with the message), none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_no_event() {
    let rx = Receiver::start(0).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    rx.trust(secret);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.toml"),
        format!(
            r#"
[dispatch.webhooks]
retry_base = "50ms"
retry_max = "300ms"
poll_interval = "100ms"
timeout = "1s"

[[webhooks]]
id = "audit"
url = "{}"
events = ["message.accepted"]
secret = "{secret}"
"#,
            rx.url()
        ),
    )
    .unwrap();
    let env = [
        ("HERALD_API_KEY", PROC_API_KEY),
        ("HERALD_JWT_SECRET", PROC_JWT_SECRET),
    ];
    let port = free_port();
    let mut server = spawn_process(dir.path(), port, &env).await;
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (client, base, accepted) =
            (server.client.clone(), server.base.clone(), accepted.clone());
        senders.spawn(async move {
            for i in 0.. {
                let resp = client
                    .post(format!("{base}/api/v1/messages"))
                    .bearer_auth(PROC_API_KEY)
                    .json(
                        &json!({"title": format!("w{w} {i}"), "content": "c", "receivers": ["u"]}),
                    )
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if let Some(id) = v["id"].as_str() {
                            accepted.lock().unwrap().push(id.to_owned());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return, // the server is gone
                }
            }
        });
    }
    // Kill once events are flowing.
    rx.wait("events to flow", |h| h.len() >= 50).await;
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    while senders.join_next().await.is_some() {}
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= 50);
    let server = spawn_process(dir.path(), port, &env).await;
    let want: BTreeSet<String> = accepted.iter().cloned().collect();
    // Events the killed process had leased go out when their lease ends: 1 s timeout ×
    // 9 + 5 s (docs/webhooks.md §4).
    let all_there = || {
        let got: BTreeSet<String> = rx
            .accepted()
            .iter()
            .filter_map(|h| h.body["data"]["messageId"].as_str().map(str::to_owned))
            .collect();
        want.iter().all(|m| got.contains(m))
    };
    wait_until(
        Duration::from_secs(60),
        "an event for every accepted message",
        || {
            let done = all_there();
            async move { done }
        },
    )
    .await;
    let hits = rx.accepted();
    // At least once: a duplicate keeps its webhook-id.
    let mut by_message: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for h in &hits {
        by_message
            .entry(h.body["data"]["messageId"].as_str().unwrap().to_owned())
            .or_default()
            .insert(h.id.clone());
    }
    assert!(
        by_message.values().all(|ids| ids.len() == 1),
        "one webhook-id per event"
    );
    drop(server);
}

/// `429` with `Retry-After: 1` is retried after that second, not after the (50 ms)
/// backoff; a `400` is not retried: the event is `failed` at once and can be redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_other_4xx_are_not_retried() {
    let slow = Receiver::start(0).await;
    {
        let mut st = slow.state.lock().unwrap();
        st.fail_first = 1;
        st.fail_status = Some(429);
        st.retry_after = Some(1);
    }
    let refusing = Receiver::start(0).await;
    refusing.state.lock().unwrap().always = Some(400);
    let app = spawn_app_with(|s| {
        fast(s);
        s.dispatch.webhooks.retry_max = Duration::from_secs(5);
    })
    .await;
    for (id, rx) in [("slow", &slow), ("refusing", &refusing)] {
        let created = create(
            &app,
            json!({"id": id, "url": rx.url(), "events": ["message.accepted"]}),
        )
        .await;
        rx.trust(created["secret"].as_str().unwrap());
    }
    let m = send_ok(&app, msg("m", &["u"])).await;
    slow.wait("the event after its Retry-After", |h| !h.is_empty())
        .await;
    wait_until(DEADLINE, "both attempts recorded", || async {
        let (_, page) = app.api_get("/api/v1/webhooks/slow/attempts").await;
        page["items"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let (_, page) = app.api_get("/api/v1/webhooks/slow/attempts").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(
        (items[1]["code"].as_u64(), items[0]["code"].as_u64()),
        (Some(429), Some(204))
    );
    let gap =
        rfc3339(&items[0]["at"], "second attempt") - rfc3339(&items[1]["at"], "first attempt");
    assert!(
        gap >= time::Duration::milliseconds(950),
        "retried {gap} after a Retry-After of 1 s"
    );

    wait_until(DEADLINE, "the refused event to be given up", || async {
        let (_, ep) = app.api_get("/api/v1/webhooks/refusing").await;
        ep["failed"] == 1
    })
    .await;
    let (_, page) = app.api_get("/api/v1/webhooks/refusing/attempts").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "not retried: {page}");
    assert_eq!(
        (items[0]["code"].as_u64(), items[0]["eventState"].as_str()),
        (Some(400), Some("failed"))
    );
    assert_eq!(refusing.hits().len(), 1);
    assert_eq!(refusing.hits()[0].body["data"]["messageId"], m.as_str());
    // Redelivered on request, with the same webhook-id.
    let event = items[0]["event"].as_str().unwrap().to_owned();
    let (status, v) = app
        .api(
            reqwest::Method::POST,
            "/api/v1/webhooks/refusing/redeliver",
            Some(&json!({"event": event})),
        )
        .await;
    assert_eq!(
        (status, v["redelivered"].as_u64()),
        (StatusCode::ACCEPTED, Some(1))
    );
    let me = refusing.clone();
    wait_until(DEADLINE, "the redelivery", || {
        let me = me.clone();
        async move { me.hits().len() == 2 }
    })
    .await;
    let hits = refusing.hits();
    assert_eq!(hits[1].id, hits[0].id);
    assert_eq!(hits[1].id, event);
}

/// `device.deactivated`: a Web Push subscription the (local) push service calls gone is
/// deactivated, and the endpoint hears of it once, naming the device and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_provider_calls_gone_fires_device_deactivated() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use herald_channel_push::testing::webpush::{random_secret, PushService, Reply};
    const SUBJECT: &str = "mailto:ops@herald.example";
    let push = PushService::start(SUBJECT).await;
    let rx = Receiver::start(0).await;
    let key = URL_SAFE_NO_PAD.encode(random_secret().to_bytes());
    let app = spawn_app_with(move |s| {
        fast(s);
        let mut t = toml::Table::new();
        for (k, v) in [
            ("kind", "push.webpush"),
            ("vapid_private_key", key.as_str()),
            ("subject", SUBJECT),
            ("timeout", "5s"),
        ] {
            t.insert(k.into(), toml::Value::String(v.into()));
        }
        t.insert(
            "allowed_endpoint_hosts".into(),
            toml::Value::Array(vec![toml::Value::String("127.0.0.1".into())]),
        );
        s.channels.insert("web".into(), t);
    })
    .await;
    let created = create(
        &app,
        json!({"url": rx.url(), "events": ["device.deactivated"]}),
    )
    .await;
    rx.trust(created["secret"].as_str().unwrap());
    let body = json!({"platform": "webpush", "name": "Firefox",
                      "subscription": serde_json::from_str::<Value>(&push.subscribe("old")).unwrap()});
    let (status, device) = app
        .request(
            reqwest::Method::POST,
            "/api/v1/me/devices",
            Some(&app.token("7")),
            Some(&body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    push.script("old", [Reply::status(410)]);
    send_ok(
        &app,
        json!({"title": "t", "content": "c", "receivers": ["7"], "channels": ["web"]}),
    )
    .await;
    let hits = rx.wait("device.deactivated", |h| !h.is_empty()).await;
    assert_eq!(hits.len(), 1, "{hits:?}");
    let data = &hits[0].body["data"];
    assert_eq!(hits[0].body["type"], "device.deactivated");
    assert_eq!(data["deviceId"], device["id"]);
    assert_eq!(
        (data["recipient"].as_str(), data["platform"].as_str()),
        (Some("7"), Some("webpush"))
    );
    assert!(data["reason"].as_str().unwrap().contains("410"), "{data}");
}
