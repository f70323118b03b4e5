//! `GET /events`, the Server-Sent Events transport (docs/websocket.md §7), over real
//! sockets: the raw HTTP stream is read by hand (chunked encoding included), every read
//! has a deadline, and nothing sleeps to wait.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "sse-test-secret-0123456789abcdef0123456789";

/// An event stream read from a raw socket.
struct Sse {
    stream: TcpStream,
    /// Bytes read from the socket, not decoded yet.
    raw: Vec<u8>,
    /// Decoded body bytes, not parsed into events yet.
    body: Vec<u8>,
    chunked: bool,
    /// The body ended (last chunk or EOF).
    ended: bool,
    pub headers: BTreeMap<String, String>,
}

/// One event block: its fields in order (`(field, value)`; a comment is `("", text)`).
#[derive(Debug, Clone)]
struct Event(Vec<(String, String)>);

impl Event {
    fn get(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v.as_str())
    }

    fn is_comment(&self) -> bool {
        self.0.iter().all(|(f, _)| f.is_empty())
    }

    fn json(&self) -> Value {
        let data = self
            .get("data")
            .unwrap_or_else(|| panic!("event without data: {self:?}"));
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"))
    }
}

/// A refused request: status, headers (lower-case names), JSON body.
type Refused = (StatusCode, BTreeMap<String, String>, Value);

/// `GET path` with `headers`; the stream when the answer is `200`, else the refusal.
async fn open(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Result<Sse, Refused> {
    let stream = tokio::time::timeout(DEADLINE, TcpStream::connect(app.addr))
        .await
        .expect("connect within the deadline")
        .expect("connect");
    let mut sse = Sse {
        stream,
        raw: Vec::new(),
        body: Vec::new(),
        chunked: false,
        ended: false,
        headers: BTreeMap::new(),
    };
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
        app.addr
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    sse.stream
        .write_all(req.as_bytes())
        .await
        .expect("write request");
    let head = loop {
        if let Some(end) = sse.raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&sse.raw[..end]).into_owned();
            sse.raw.drain(..end + 4);
            break head;
        }
        assert!(
            sse.fill().await > 0,
            "connection closed before the response head"
        );
    };
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    for line in lines {
        let (k, v) = line.split_once(':').expect("header line");
        sse.headers
            .insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    sse.chunked = sse
        .headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let status = StatusCode::from_u16(status).expect("status");
    if status != StatusCode::OK {
        let len: usize = sse
            .headers
            .get("content-length")
            .map(|v| v.parse().expect("content-length"))
            .unwrap_or(0);
        while sse.raw.len() < len {
            assert!(sse.fill().await > 0, "connection closed inside the body");
        }
        let body = serde_json::from_slice(&sse.raw[..len]).unwrap_or(Value::Null);
        return Err((status, sse.headers, body));
    }
    Ok(sse)
}

/// `GET /events` with the token in `Authorization`, asserting `200`.
async fn connect(app: &TestApp, token: &str) -> Sse {
    connect_with(
        app,
        "/events",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
}

async fn connect_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Sse {
    match open(app, path, headers).await {
        Ok(sse) => sse,
        Err(refused) => panic!("GET {path} refused: {refused:?}"),
    }
}

async fn refused(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Refused {
    match open(app, path, headers).await {
        Ok(sse) => panic!("GET {path} was answered 200: {:?}", sse.headers),
        Err(r) => r,
    }
}

impl Sse {
    /// Read more bytes within [`DEADLINE`]; 0 at the end of the stream.
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("nothing from the server within {DEADLINE:?}"))
            .unwrap_or(0);
        self.raw.extend_from_slice(&chunk[..n]);
        n
    }

    /// Move complete chunks (or everything, when not chunked) from `raw` to `body`.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        while let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&self.raw[..line_end]).expect("chunk size");
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|e| panic!("bad chunk size {size:?}: {e}"));
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            let start = line_end + 2;
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next event block, or `None` when the stream ended.
    async fn next_block(&mut self) -> Option<Event> {
        loop {
            self.decode();
            if let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.body[..end].to_vec()).expect("UTF-8 events");
                self.body.drain(..end + 2);
                let fields = block
                    .lines()
                    .map(|l| match l.strip_prefix(':') {
                        Some(comment) => (String::new(), comment.trim().to_owned()),
                        None => {
                            let (f, v) = l.split_once(':').unwrap_or((l, ""));
                            (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned())
                        }
                    })
                    .collect();
                return Some(Event(fields));
            }
            if self.ended {
                assert!(self.body.is_empty(), "the stream ended inside an event");
                return None;
            }
            if self.fill().await == 0 {
                self.ended = true;
            }
        }
    }

    /// The next event that is not a comment (heartbeats are skipped).
    async fn next_event(&mut self) -> Event {
        loop {
            let e = self.next_block().await.expect("the stream ended");
            if !e.is_comment() {
                return e;
            }
        }
    }

    /// The `retry:` line, then the welcome event (returned).
    async fn welcome(&mut self) -> Value {
        let first = self.next_block().await.expect("the stream ended");
        assert_eq!(
            first.get("retry"),
            Some("2000"),
            "first a retry line: {first:?}"
        );
        let e = self.next_event().await;
        assert_eq!(e.get("id"), None, "the welcome carries no id: {e:?}");
        let w = e.json();
        assert_eq!(w["type"], "welcome", "{w}");
        w
    }

    /// The next message event: (its `id:` field, its frame).
    async fn message(&mut self) -> (Option<String>, Value) {
        let e = self.next_event().await;
        let frame = e.json();
        assert_eq!(frame["type"], "message", "expected a message event: {e:?}");
        (e.get("id").map(str::to_owned), frame)
    }

    /// Proves absence: no event (heartbeats aside) within `within`.
    async fn expect_quiet(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(left, self.next_block()).await {
                Err(_) => return,
                Ok(Some(e)) if e.is_comment() => continue,
                Ok(other) => panic!("expected nothing within {within:?}, got {other:?}"),
            }
        }
    }

    /// Reads until the server ends the stream (within the deadline); returns the events.
    async fn expect_end(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(e) = self.next_block().await {
            events.push(e);
        }
        events
    }
}

async fn metrics(app: &TestApp) -> String {
    let resp = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    resp.text().await.expect("metrics text")
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("metric {name} missing"))
        .trim()
        .parse()
        .expect("metric value")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_replay_then_live_events_with_sent_recorded() {
    let app = spawn_app().await;
    let a = send_ok(&app, msg("a", &["alice"])).await;
    let b = send_ok(&app, msg("b", &["alice"])).await;
    send_ok(&app, msg("for bob", &["bob"])).await;

    let mut sse = connect(&app, &app.token("alice")).await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    assert_eq!(sse.headers["connection"], "close");
    let welcome = sse.welcome().await;
    assert_eq!(welcome["userId"], "alice");
    assert_eq!(welcome["pending"], 2);
    assert!(welcome.get("resumedFrom").is_none(), "{welcome}");

    // Replayed oldest first, the frames WebSocket sends, each with `id: <seq>`.
    let (id_a, frame_a) = sse.message().await;
    let (id_b, frame_b) = sse.message().await;
    assert_eq!(frame_a["id"], a.as_str());
    assert_eq!(frame_b["id"], b.as_str());
    assert_eq!(frame_a["title"], "a");
    assert_eq!(frame_a["content"], "content of a");
    let seq = |id: Option<String>| -> i64 {
        id.expect("a replayed message event has an id")
            .parse()
            .expect("the id is the message seq")
    };
    assert!(seq(id_a) < seq(id_b), "ids follow the replay order");
    app.wait_status(&a, "alice", &["sent"]).await;
    app.wait_status(&b, "alice", &["sent"]).await;

    // Live: the same frame, written as it comes and recorded `sent`.
    let c = send_ok(&app, msg("c", &["alice"])).await;
    let (_, frame_c) = sse.message().await;
    assert_eq!(frame_c["id"], c.as_str());
    app.wait_status(&c, "alice", &["sent"]).await;
    let d = app.delivery(&c, "alice", "websocket").await;
    assert_eq!(d["attempts"], 1, "{d}");
    sse.expect_quiet(QUIET).await;

    let text = metrics(&app).await;
    assert_eq!(metric(&text, "herald_sse_sessions"), 1.0);
    assert_eq!(metric(&text, "herald_connections"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_may_come_in_the_query_and_sessions_are_listed() {
    let app = spawn_app().await;
    let token = app.token_full("carol", "Carol", "laptop");
    let mut sse = connect_with(&app, &format!("/events?token={token}"), &[]).await;
    let welcome = sse.welcome().await;
    assert_eq!(welcome["pending"], 0);
    let clients = app.clients().await;
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0]["sessionId"], welcome["sessionId"]);
    assert_eq!(clients[0]["userId"], "carol");
    assert_eq!(clients[0]["loginName"], "Carol");
    assert_eq!(clients[0]["device"], "laptop");

    // A WebSocket session of the same user gets the same live message.
    let (mut ws, _) = ws_login(&app, &app.token("carol")).await;
    app.wait_clients(2).await;
    let id = send_ok(&app, msg("both", &["carol"])).await;
    assert_eq!(sse.message().await.1["id"], id.as_str());
    assert_eq!(ws.next_message().await["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_replays_every_unacknowledged_message_and_nothing_once_collected() {
    let app = spawn_app().await;
    let token = app.token("dave");
    let ids: Vec<String> = [
        send_ok(&app, msg("1", &["dave"])).await,
        send_ok(&app, msg("2", &["dave"])).await,
        send_ok(&app, msg("3", &["dave"])).await,
    ]
    .into();
    let mut sse = connect(&app, &token).await;
    sse.welcome().await;
    let mut event_ids = Vec::new();
    for id in &ids {
        let (event_id, frame) = sse.message().await;
        assert_eq!(frame["id"], id.as_str());
        event_ids.push(event_id.expect("replayed events carry ids"));
    }
    // The connection drops; the session goes away with it.
    drop(sse);
    app.wait_clients(0).await;

    // EventSource reconnects with `Last-Event-ID`: echoed, and every message not
    // acknowledged comes again — none is skipped because the client saw it.
    let last = event_ids[1].clone();
    let mut sse = connect_with(
        &app,
        "/events",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Last-Event-ID", &last),
        ],
    )
    .await;
    let welcome = sse.welcome().await;
    assert_eq!(welcome["resumedFrom"], last.as_str());
    assert_eq!(welcome["pending"], 3);
    for (id, event_id) in ids.iter().zip(&event_ids) {
        let (again, frame) = sse.message().await;
        assert_eq!(frame["id"], id.as_str());
        assert_eq!(again.as_ref(), Some(event_id), "the same id as before");
    }
    drop(sse);
    app.wait_clients(0).await;

    // Acknowledged over REST (collect marks them delivered): nothing is replayed.
    let (status, body) = app
        .request(Method::POST, "/api/v1/inbox/collect", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for id in &ids {
        app.wait_status(id, "dave", &["delivered"]).await;
    }
    let mut sse = connect_with(
        &app,
        &format!("/events?token={token}&lastEventId={}", event_ids[2]),
        &[],
    )
    .await;
    let welcome = sse.welcome().await;
    assert_eq!(welcome["resumedFrom"], event_ids[2].as_str());
    assert_eq!(welcome["pending"], 0);
    sse.expect_quiet(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_and_open_no_session() {
    let app = spawn_app_with(|s| s.jwt_secret = Some(herald::config::Secret::new(SECRET))).await;
    let expired = herald::auth::mint_token(SECRET.as_bytes(), "eve", None, None, unix_now() - 10);
    let forged = herald::auth::mint_token(
        b"another-secret-0123456789abcdef",
        "eve",
        None,
        None,
        unix_now() + 600,
    );
    for (path, headers) in [
        ("/events".to_owned(), vec![]),
        ("/events?token=nope".to_owned(), vec![]),
        (format!("/events?token={expired}"), vec![]),
        (
            "/events".to_owned(),
            vec![("Authorization".to_owned(), format!("Bearer {forged}"))],
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, h, body) = refused(&app, &path, &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_eq!(
            h.get("www-authenticate").map(String::as_str),
            Some("Bearer")
        );
        assert_error_body(&body);
    }
    let (_, _, body) = refused(&app, &format!("/events?token={expired}"), &[]).await;
    assert_eq!(body["error"], "token expired");
    assert!(app.clients().await.is_empty());
    let text = metrics(&app).await;
    assert_eq!(metric(&text, "herald_handshakes_rejected_total"), 5.0);
    assert_eq!(metric(&text, "herald_sse_sessions"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_over_the_per_address_limit_get_429() {
    let app = spawn_app_with(|s| s.websocket.handshake_rate_limit = Some("2/min".into())).await;
    let token = app.token("frank");
    let mut first = connect(&app, &token).await;
    first.welcome().await;
    let (_ws, _) = ws_login(&app, &token).await;
    let (status, h, body) = refused(&app, &format!("/events?token={token}"), &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert_error_body(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_share_the_session_cap_with_websockets() {
    const MAX: usize = 5;
    const RESERVED: usize = 3;
    let app = spawn_app_with(|s| {
        s.http.max_connections = Some(MAX);
        s.http.reserved_connections = RESERVED;
    })
    .await;
    let mut sse = connect(&app, &app.token("u1")).await;
    sse.welcome().await;
    let (_ws, _) = ws_login(&app, &app.token("u2")).await;

    // Both sessions hold the share: a third of either kind is refused.
    let (status, h, body) = refused(&app, &format!("/events?token={}", app.token("u3")), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(h.get("retry-after").map(String::as_str), Some("5"));
    assert_error_body(&body);
    assert!(
        ws_try_connect(&app.ws_url(&format!("/websocket/{}", app.token("u3"))))
            .await
            .is_err(),
        "a WebSocket past the share was accepted"
    );
    // The reserve still answers.
    let (status, _) = app.api_get("/api/v1/clients").await;
    assert_eq!(status, StatusCode::OK);

    // The stream's slot comes back when it ends: another stream gets in.
    drop(sse);
    app.wait_clients(1).await;
    let deadline = Instant::now() + DEADLINE;
    let mut sse = loop {
        // The socket closes right after the session ends; until then the share is full.
        match open(&app, &format!("/events?token={}", app.token("u4")), &[]).await {
            Ok(sse) => break sse,
            Err((StatusCode::SERVICE_UNAVAILABLE, _, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(r) => panic!("the freed slot was not given back: {r:?}"),
        }
    };
    assert_eq!(sse.welcome().await["userId"], "u4");
    let text = metrics(&app).await;
    assert!(metric(&text, "herald_ws_sessions_refused_total") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_coming_and_no_timeout_cuts_an_idle_stream() {
    let app = spawn_app_with(|s| {
        s.websocket.ping_interval = Duration::from_millis(100);
        s.websocket.pong_timeout = Duration::from_millis(300);
        s.websocket.first_frame_timeout = Duration::from_millis(200);
        s.http.header_read_timeout = Duration::from_millis(300);
        s.http.keep_alive_timeout = Duration::from_millis(300);
        s.http.body_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut sse = connect(&app, &app.token("gina")).await;
    sse.welcome().await;
    // The client never sends anything: comments keep coming well past every timeout.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(1200) {
        let e = sse.next_block().await.expect("the stream ended");
        assert!(e.is_comment(), "only heartbeats expected: {e:?}");
        assert_eq!(e.0[0].1, "ping");
        pings += 1;
    }
    assert!(pings >= 5, "{pings} heartbeats in 1.2 s");
    assert_eq!(app.clients().await.len(), 1);
    let id = send_ok(&app, msg("still here", &["gina"])).await;
    assert_eq!(sse.message().await.1["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_ends_the_session() {
    let app = spawn_app().await;
    let mut sse = connect(&app, &app.token("hal")).await;
    sse.welcome().await;
    app.wait_clients(1).await;
    drop(sse);
    app.wait_clients(0).await;
    wait_until(DEADLINE, "herald_sse_sessions back to 0", || async {
        metric(&metrics(&app).await, "herald_sse_sessions") == 0.0
    })
    .await;
    // Messages for the user are held for the next connection.
    let id = send_ok(&app, msg("later", &["hal"])).await;
    assert_eq!(
        app.delivery_status(&id, "hal").await.as_deref(),
        Some("pending")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_ended_and_its_messages_replayed() {
    let app = spawn_app_with(|s| {
        s.websocket.queue_capacity = 4;
        s.websocket.write_timeout = Duration::from_millis(500);
    })
    .await;
    let token = app.token("ivan");
    let mut slow = connect(&app, &token).await;
    slow.welcome().await;
    // Large messages until the stream's buffers are full and the session gives up (a
    // stalled write or an overflowing queue); the client reads nothing meanwhile.
    let big = "x".repeat(256 * 1024);
    let mut sent = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while !app.clients().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the stalled session was never ended"
        );
        let (status, body) = send(
            &app,
            json!({"title": "big", "content": big, "receivers": ["ivan"]}),
        )
        .await;
        if status == StatusCode::ACCEPTED {
            sent.push(body["id"].as_str().expect("id").to_owned());
        }
    }
    // Its stream ends (after whatever was already on its way).
    slow.expect_end().await;
    // Nothing was acknowledged: a new connection gets every message again.
    let mut sse = connect(&app, &token).await;
    let welcome = sse.welcome().await;
    assert_eq!(welcome["pending"], sent.len(), "{welcome}");
    for id in &sent {
        assert_eq!(sse.message().await.1["id"], id.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_stream() {
    let app = spawn_app().await;
    let mut sse = connect(&app, &app.token("judy")).await;
    sse.welcome().await;
    let stopping = tokio::spawn(app.shutdown());
    let rest = sse.expect_end().await;
    assert!(rest.iter().all(Event::is_comment), "{rest:?}");
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("shutdown within the deadline")
        .expect("shutdown task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_event_source_works_when_cors_allows_it() {
    const ORIGIN: &str = "https://app.example.com";
    let app = spawn_app_with(|s| s.http.cors.allowed_origins = vec![ORIGIN.into()]).await;
    let token = app.token("kim");
    // EventSource with the token in the query: a simple request, no preflight.
    let mut sse = connect_with(
        &app,
        &format!("/events?token={token}"),
        &[("Origin", ORIGIN)],
    )
    .await;
    assert_eq!(sse.headers["access-control-allow-origin"], ORIGIN);
    sse.welcome().await;
    // A refusal is readable too.
    let (status, h, _) = refused(&app, "/events?token=bad", &[("Origin", ORIGIN)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    // With the token in a header the browser asks first; the preflight opens no session.
    let resp = app
        .client
        .request(Method::OPTIONS, app.url("/events"))
        .header("Origin", ORIGIN)
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .expect("preflight");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(app.clients().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_is_in_the_openapi_document() {
    let app = spawn_app().await;
    let (status, doc) = app.request(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let op = &doc["paths"]["/events"]["get"];
    assert!(op.is_object(), "GET /events missing from /openapi.json");
    assert_eq!(op["tags"][0], "events");
    assert!(
        op["responses"]["200"]["content"]["text/event-stream"].is_object(),
        "{op}"
    );
}

/// The done-when of the notification center's SSE fallback: a client that acks over REST
/// (`POST /api/v1/inbox/ack`) and drops mid-stream gets, on resume, exactly what it had not
/// acknowledged — the messages sent while it was away and the one it saw but had not
/// acked yet (at least once, by id) — and nothing it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_rest_acks_gets_what_was_missed_and_nothing_acknowledged() {
    let app = spawn_app().await;
    let token = app.token("erin");
    let mut sse = connect(&app, &token).await;
    let welcome = sse.welcome().await;
    assert_eq!(
        welcome["counts"],
        json!({"unseen": 0, "unread": 0, "total": 0})
    );
    let mut seen = Vec::new();
    for i in 0..3 {
        let id = send_ok(&app, msg(&format!("live {i}"), &["erin"])).await;
        let (_, frame) = sse.message().await;
        assert_eq!(frame["id"], id.as_str());
        seen.push(id);
    }
    // The first two are acknowledged over REST; the third is not (its ack was in flight).
    let (status, body) = app
        .request(
            Method::POST,
            "/api/v1/inbox/ack",
            Some(&token),
            Some(&json!({"ids": [seen[0], seen[1]]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], 2);
    drop(sse);
    app.wait_clients(0).await;
    let missed = [
        send_ok(&app, msg("while away 1", &["erin"])).await,
        send_ok(&app, msg("while away 2", &["erin"])).await,
    ];
    let mut sse = connect_with(
        &app,
        "/events",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Last-Event-ID", "42"),
        ],
    )
    .await;
    let welcome = sse.welcome().await;
    assert_eq!(welcome["pending"], 3);
    assert_eq!(welcome["counts"]["unread"], 5);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sse.message().await.1["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, [seen[2].clone(), missed[0].clone(), missed[1].clone()]);
    sse.expect_quiet(QUIET).await;
}

/// Inbox changes reach an SSE session as `state` and `counts` events, like a WebSocket's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_state_and_counts_events_reach_sse_sessions() {
    let app = spawn_app().await;
    let token = app.token("fay");
    let id = send_ok(&app, msg("hello", &["fay"])).await;
    let mut sse = connect(&app, &token).await;
    assert_eq!(
        sse.welcome().await["counts"],
        json!({"unseen": 1, "unread": 1, "total": 1})
    );
    assert_eq!(sse.message().await.1["id"], id.as_str());
    let mut ws = ws_connect(&app, &token).await;
    ws.welcome().await;
    ws.next_message().await;
    // A WebSocket session of the same user reads it: the SSE stream hears of it.
    ws.send_json(json!({"type": "read", "id": id})).await;
    let state = sse.next_event().await.json();
    assert_eq!(
        state,
        json!({"type": "state", "ids": [id], "seen": true, "read": true})
    );
    let counts = sse.next_event().await.json();
    assert_eq!(
        counts,
        json!({"type": "counts", "unseen": 0, "unread": 0, "total": 1})
    );
}
