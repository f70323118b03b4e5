//! Shared harness for Herald's black-box integration tests.
//!
//! * [`spawn_app`] / [`spawn_app_with`] start the server in-process on `127.0.0.1:0` with its
//!   own temporary data directory (SQLite file + generated secrets).
//! * [`spawn_process`] starts the real `herald` binary as a child process (crash and signal
//!   tests).
//! * [`WsClient`] is a small WebSocket client whose reads all have a deadline.
//!
//! Nothing here sleeps to wait for something: every wait is a `tokio::time::timeout` or a
//! poll loop bounded by a deadline ([`wait_until`]). The one bounded wait that is allowed to
//! run to its end is [`WsClient::expect_no_message`], which proves an absence.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald::config::Settings;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before the test fails. Generous: it is only
/// ever reached when something is broken (or the machine is very loaded).
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The bounded wait used to prove that nothing arrives.
pub const QUIET: Duration = Duration::from_millis(300);

/// Secrets given to child processes through the environment.
pub const PROC_API_KEY: &str = "test-api-key-0123456789abcdef";
pub const PROC_JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

// ---------------------------------------------------------------------------------------------
// In-process server
// ---------------------------------------------------------------------------------------------

pub struct TestApp {
    // Field order matters: the server is dropped before the directory that holds its database.
    server: Option<herald::Running>,
    pub settings: Settings,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub api_key: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    /// The injected outbox clock, when the test moves time itself.
    pub clock: Option<herald::clock::ManualClock>,
}

/// Start a server with the defaults of [`Settings::for_data_dir`] in a fresh temporary dir.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], with a closure that adjusts the settings first.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_clock(tweak, None).await
}

/// Like [`spawn_app_with`], with an injected outbox clock (kept across restarts).
pub async fn spawn_app_clock(
    tweak: impl FnOnce(&mut Settings),
    clock: Option<herald::clock::ManualClock>,
) -> TestApp {
    let dir = tempfile::tempdir().expect("create temp dir");
    let mut settings = Settings::for_data_dir(dir.path());
    tweak(&mut settings);
    let server = tokio::time::timeout(DEADLINE, start(&settings, &clock))
        .await
        .expect("herald::start did not finish within the deadline")
        .expect("herald::start failed");
    let addr = server.addr();
    let api_key = server.api_key().to_owned();
    TestApp {
        server: Some(server),
        settings,
        addr,
        base: format!("http://{addr}"),
        api_key,
        client: reqwest::Client::builder()
            .timeout(DEADLINE)
            .build()
            .expect("build reqwest client"),
        dir,
        clock,
    }
}

async fn start(
    settings: &Settings,
    clock: &Option<herald::clock::ManualClock>,
) -> Result<herald::Running, herald::StartError> {
    herald::start_with_options(
        settings.clone(),
        herald::StartOptions {
            clock: clock
                .clone()
                .map(|c| std::sync::Arc::new(c) as std::sync::Arc<dyn herald::clock::Clock>),
            ..Default::default()
        },
    )
    .await
}

impl TestApp {
    pub fn running(&self) -> &herald::Running {
        self.server.as_ref().expect("server is running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// A valid user token (1 h) without name/device claims.
    pub fn token(&self, user: &str) -> String {
        self.running()
            .mint_token(user, None, None, Duration::from_secs(3600))
    }

    /// A valid user token (1 h) with `name` and `device` claims.
    pub fn token_full(&self, user: &str, name: &str, device: &str) -> String {
        self.running()
            .mint_token(user, Some(name), Some(device), Duration::from_secs(3600))
    }

    /// Graceful shutdown, then start again on the same directory and settings (the bound
    /// port changes; the generated secrets are reused).
    pub async fn restart(&mut self) {
        let server = self.server.take().expect("server is running");
        tokio::time::timeout(DEADLINE, server.shutdown())
            .await
            .expect("graceful shutdown did not finish within the deadline");
        let server = tokio::time::timeout(DEADLINE, start(&self.settings, &self.clock))
            .await
            .expect("restart did not finish within the deadline")
            .expect("restart failed");
        self.addr = server.addr();
        self.base = format!("http://{}", self.addr);
        self.api_key = server.api_key().to_owned();
        self.server = Some(server);
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(DEADLINE, server.shutdown())
                .await
                .expect("graceful shutdown did not finish within the deadline");
        }
    }

    /// Any request; `auth` is the bearer credential (API key or user token), `body` JSON.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(auth) = auth {
            req = req.bearer_auth(auth);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        read_response(req.send().await.expect("HTTP request failed")).await
    }

    /// A request with a raw body and `Content-Type: application/json`.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(auth) = auth {
            req = req.bearer_auth(auth);
        }
        read_response(req.send().await.expect("HTTP request failed")).await
    }

    /// Management API call authenticated with the API key.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        self.request(method, path, Some(&self.api_key), body).await
    }

    pub async fn api_get(&self, path: &str) -> (StatusCode, Value) {
        self.api(Method::GET, path, None).await
    }

    /// `GET /api/v1/messages/{id}`, asserting 200.
    pub async fn message(&self, id: &str) -> Value {
        let (status, body) = self.api_get(&format!("/api/v1/messages/{id}")).await;
        assert_eq!(status, StatusCode::OK, "GET message {id}: {body}");
        body
    }

    /// The status of `receiver`'s websocket delivery of message `id`.
    pub async fn delivery_status(&self, id: &str, receiver: &str) -> Option<String> {
        let msg = self.message(id).await;
        delivery_of(&msg, receiver).map(|d| d["status"].as_str().unwrap_or_default().to_owned())
    }

    /// Poll until `receiver`'s delivery of `id` has one of `statuses`.
    pub async fn wait_status(&self, id: &str, receiver: &str, statuses: &[&str]) {
        let what = format!("delivery of {id} to {receiver} to reach {statuses:?}");
        wait_until(DEADLINE, &what, || async {
            match self.delivery_status(id, receiver).await {
                Some(s) => statuses.contains(&s.as_str()),
                None => false,
            }
        })
        .await;
    }

    /// Move the injected clock forward and wake the outbox workers.
    pub fn advance(&self, by: Duration) {
        self.clock
            .as_ref()
            .expect("spawned with a manual clock")
            .advance(by);
        self.running().wake_outbox();
    }

    /// `receiver`'s delivery of message `id` on channel instance `channel`.
    pub async fn delivery(&self, id: &str, receiver: &str, channel: &str) -> Value {
        let msg = self.message(id).await;
        msg["deliveries"]
            .as_array()
            .unwrap_or_else(|| panic!("message without deliveries: {msg}"))
            .iter()
            .find(|d| d["receiver"] == receiver && d["channel"] == channel)
            .unwrap_or_else(|| panic!("no {channel} delivery to {receiver} in {msg}"))
            .clone()
    }

    /// Poll until the delivery satisfies `pred`; returns it.
    pub async fn wait_delivery(
        &self,
        id: &str,
        receiver: &str,
        channel: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let d = self.delivery(id, receiver, channel).await;
            if pred(&d) {
                return d;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {DEADLINE:?} waiting for {what}; last: {d}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Poll until attempt number `attempts` of the delivery has *failed* and its retry is
    /// scheduled: the row shows `attempts`, an error, and a due time closer than half the
    /// lease (while an attempt is in flight the due time is its lease end, and the error
    /// is the previous attempt's). Use before moving the clock, so a send still in flight
    /// never sees its lease run out.
    pub async fn wait_retry_scheduled(
        &self,
        id: &str,
        receiver: &str,
        channel: &str,
        attempts: i64,
    ) -> Value {
        let clock = self.clock.clone().expect("spawned with a manual clock");
        let half_lease = self.settings.dispatch.lease.as_millis() as i128 / 2;
        self.wait_delivery(
            id,
            receiver,
            channel,
            &format!("attempt {attempts} to fail"),
            |d| {
                let due = d["nextAttemptAt"].as_str().and_then(|s| {
                    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                        .ok()
                });
                let now = i128::from(herald::clock::Clock::now_ms(&clock)) * 1_000_000;
                d["attempts"] == attempts
                    && d["error"].is_string()
                    && due
                        .is_some_and(|t| (t.unix_timestamp_nanos() - now) / 1_000_000 < half_lease)
            },
        )
        .await
    }

    /// `GET /api/v1/messages` total.
    pub async fn total(&self) -> u64 {
        let (status, body) = self.api_get("/api/v1/messages?page=1&size=100").await;
        assert_eq!(status, StatusCode::OK, "list messages: {body}");
        body["total"]
            .as_u64()
            .unwrap_or_else(|| panic!("list without numeric total: {body}"))
    }

    /// `GET /api/v1/clients`, asserting 200 and an array.
    pub async fn clients(&self) -> Vec<Value> {
        let (status, body) = self.api_get("/api/v1/clients").await;
        assert_eq!(status, StatusCode::OK, "list clients: {body}");
        body.as_array()
            .unwrap_or_else(|| panic!("clients is not an array: {body}"))
            .clone()
    }

    /// Poll until `GET /api/v1/clients` lists exactly `n` sessions.
    pub async fn wait_clients(&self, n: usize) {
        wait_until(
            DEADLINE,
            &format!("{n} session(s) in /api/v1/clients"),
            || async { self.clients().await.len() == n },
        )
        .await;
    }
}

/// Status and body (JSON, or `Value::String` with the raw text when it is not JSON, or
/// `Value::Null` when empty).
pub async fn read_response(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("read response body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// `POST /api/v1/messages` with the API key.
pub async fn send(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.api(Method::POST, "/api/v1/messages", Some(&body)).await
}

/// `send` that asserts `202` and returns the message id.
pub async fn send_ok(app: &TestApp, body: Value) -> String {
    let (status, resp) = send(app, body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "send {body}: {resp}");
    resp["id"]
        .as_str()
        .unwrap_or_else(|| panic!("send response without id: {resp}"))
        .to_owned()
}

/// A plain websocket message for `receivers`.
pub fn msg(title: &str, receivers: &[&str]) -> Value {
    serde_json::json!({ "title": title, "content": format!("content of {title}"), "receivers": receivers })
}

/// The websocket delivery of `receiver` in a `Message`.
pub fn delivery_of<'a>(msg: &'a Value, receiver: &str) -> Option<&'a Value> {
    msg["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("message without deliveries array: {msg}"))
        .iter()
        .find(|d| d["receiver"] == receiver && d["channel"] == "websocket")
}

/// Asserts a JSON error body `{"error": "<non-empty string>"}` and returns the text.
#[track_caller]
pub fn assert_error_body(body: &Value) -> String {
    let err = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a JSON body with a string \"error\", got {body}"));
    assert!(!err.is_empty(), "empty error text: {body}");
    err.to_owned()
}

/// Parses an RFC 3339 timestamp or panics naming `what`.
#[track_caller]
pub fn rfc3339(v: &Value, what: &str) -> time::OffsetDateTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{what} = {s:?} is not RFC 3339: {e}"))
}

/// Poll `check` until it returns true; panic with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct WsClient {
    pub stream: Ws,
}

/// Connect to `/websocket/{token}`; panics unless the upgrade succeeds.
pub async fn ws_connect(app: &TestApp, token: &str) -> WsClient {
    ws_connect_url(&app.ws_url(&format!("/websocket/{token}"))).await
}

/// Connect to `url`; panics unless the upgrade succeeds.
pub async fn ws_connect_url(url: &str) -> WsClient {
    match ws_try_connect(url).await {
        Ok(ws) => ws,
        Err(e) => panic!("websocket connect to {url} failed: {e}"),
    }
}

/// Connect and read the welcome frame, returning both.
pub async fn ws_login(app: &TestApp, token: &str) -> (WsClient, Value) {
    let mut ws = ws_connect(app, token).await;
    let welcome = ws.welcome().await;
    (ws, welcome)
}

pub async fn ws_try_connect(url: &str) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
    let (stream, _resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|_| panic!("websocket handshake with {url} timed out"))?;
    Ok(WsClient { stream })
}

impl WsClient {
    /// The next data or close frame (server pings/pongs are skipped), within [`DEADLINE`].
    pub async fn next_frame(&mut self) -> Message {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no websocket frame within {DEADLINE:?}"));
            match next {
                None => panic!("websocket stream ended"),
                Some(Err(e)) => panic!("websocket error: {e}"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
            }
        }
    }

    /// The next text frame parsed as JSON, within [`DEADLINE`].
    pub async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Message::Text(t) => serde_json::from_str(t.as_str())
                .unwrap_or_else(|e| panic!("server sent a text frame that is not JSON ({e}): {t}")),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Like [`WsClient::next_json`], but `None` when nothing arrives within `within`.
    pub async fn try_next_json(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("websocket stream ended"),
                Ok(Some(Err(e))) => panic!("websocket error: {e}"),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                        panic!("server sent a text frame that is not JSON ({e}): {t}")
                    }))
                }
                Ok(Some(Ok(other))) => panic!("expected a JSON text frame, got {other:?}"),
            }
        }
    }

    /// Reads message frames until every id in `expected` has arrived (duplicates tolerated:
    /// delivery is at-least-once), then proves nothing else follows.
    pub async fn receive_ids(&mut self, user: &str, expected: &std::collections::BTreeSet<String>) {
        let mut seen = std::collections::BTreeSet::new();
        while !expected.is_subset(&seen) {
            let Some(frame) = self.try_next_json(DEADLINE).await else {
                let lost: Vec<&String> = expected.difference(&seen).collect();
                panic!(
                    "{user}: {} expected message(s) never arrived: {lost:?}",
                    lost.len()
                );
            };
            assert_eq!(frame["type"], "message", "{user}: {frame}");
            let id = frame["id"].as_str().expect("id").to_owned();
            assert!(
                expected.contains(&id),
                "{user} received {id}, which was not sent to them"
            );
            seen.insert(id);
        }
        self.expect_no_message(QUIET).await;
    }

    /// The welcome frame; asserts it is one.
    pub async fn welcome(&mut self) -> Value {
        let v = self.next_json().await;
        assert_eq!(
            v["type"], "welcome",
            "first frame must be the welcome frame: {v}"
        );
        v
    }

    /// The next frame that is not a message (replayed and live messages are skipped): an
    /// inbox `state` or `counts` frame, a pong, an error.
    pub async fn next_control(&mut self) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] != "message" {
                return v;
            }
        }
    }

    /// The next frame, asserting `type == "message"`.
    pub async fn next_message(&mut self) -> Value {
        let v = self.next_json().await;
        assert_eq!(v["type"], "message", "expected a message frame: {v}");
        v
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: impl Into<String>) {
        let s: String = s.into();
        tokio::time::timeout(DEADLINE, self.stream.send(Message::text(s)))
            .await
            .expect("websocket send timed out")
            .expect("websocket send failed");
    }

    pub async fn ack(&mut self, id: &str) {
        self.send_json(serde_json::json!({"type": "ack", "id": id}))
            .await;
    }

    /// Proves absence: fails if any data or close frame arrives within `within`.
    pub async fn expect_no_message(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected no frame within {within:?}, got {other:?}"),
            }
        }
    }

    /// Reads until the server's close frame and returns it (`None` = close without payload).
    /// Fails if the connection ends without a close frame or nothing comes within the deadline.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no close frame within {DEADLINE:?}"));
            match next {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                // Frames queued before the close (e.g. an error frame) are allowed.
                Some(Ok(Message::Text(_) | Message::Binary(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame while waiting for close: {other:?}"),
                Some(Err(e)) => panic!("connection failed without a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Client-initiated close handshake (best effort, bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(DEADLINE, self.stream.close(None)).await;
        // Drain until the server answers the close or drops the connection.
        let _ = tokio::time::timeout(DEADLINE, async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket client (hand-made frames, for protocol violations)
// ---------------------------------------------------------------------------------------------

/// A WebSocket over a plain TCP stream: the upgrade is written by hand and every frame is
/// built byte by byte, so a test can send what no WebSocket library would (unmasked
/// frames, reserved bits or opcodes, invalid UTF-8). Every read has a deadline.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame read from the server.
#[derive(Debug)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Upgrade `GET /websocket/{token}` by hand, check the `101` and `Sec-WebSocket-Accept`
/// (the RFC 6455 §1.3 example key), then read the welcome frame.
pub async fn raw_ws_login(app: &TestApp, token: &str) -> RawWs {
    use tokio::io::AsyncWriteExt;
    let stream = tokio::time::timeout(DEADLINE, TcpStream::connect(app.addr))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect");
    let mut ws = RawWs {
        stream,
        buf: Vec::new(),
    };
    let request = format!(
        "GET /websocket/{token} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        app.addr
    );
    ws.stream
        .write_all(request.as_bytes())
        .await
        .expect("write the upgrade request");
    let head = loop {
        if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
            ws.buf.drain(..end + 4);
            break head;
        }
        assert!(ws.fill().await > 0, "connection closed during the upgrade");
    };
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "the upgrade was refused: {head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "wrong Sec-WebSocket-Accept: {head}"
    );
    let welcome = ws.read_frame().await.expect("the welcome frame");
    assert_eq!(
        welcome.opcode, 1,
        "welcome must be a text frame: {welcome:?}"
    );
    ws
}

/// One frame as a client writes it: `first` is the first byte (FIN, RSV1-3, opcode),
/// `mask` the masking key (`None`: unmasked, which only a server may send).
pub fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

impl RawWs {
    /// Read more bytes within [`DEADLINE`]; 0 at end of stream.
    async fn fill(&mut self) -> usize {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("nothing from the server within {DEADLINE:?}"))
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        tokio::time::timeout(DEADLINE, self.stream.write_all(bytes))
            .await
            .expect("raw write timed out")
            .expect("raw write failed");
    }

    /// The next server frame (servers never mask), or `None` when the connection ended.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if self.buf.len() >= 2 {
                let (first, second) = (self.buf[0], self.buf[1]);
                assert_eq!(second & 0x80, 0, "the server masked a frame");
                let (len, at) = match second & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(n) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some(RawFrame {
                        fin: first & 0x80 != 0,
                        opcode: first & 0x0f,
                        payload,
                    });
                }
            }
            if self.fill().await == 0 {
                assert!(self.buf.is_empty(), "the connection ended inside a frame");
                return None;
            }
        }
    }

    /// Reads until the server's close frame and returns its code (`None`: no code); data
    /// frames and pings before it are skipped. Panics if the connection ends without one.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            let Some(frame) = self.read_frame().await else {
                panic!("the connection ended without a close frame");
            };
            if frame.opcode == 8 {
                return (frame.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
            }
        }
    }

    /// After the close frame: the server ends the TCP connection (within the deadline).
    pub async fn expect_end(&mut self) {
        if let Some(frame) = self.read_frame().await {
            panic!("expected the connection to end, got {frame:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child process
// ---------------------------------------------------------------------------------------------

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

pub struct HeraldProcess {
    pub child: Child,
    pub port: u16,
    pub base: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub client: reqwest::Client,
}

/// A `Command` for the `herald` binary with a clean `HERALD_*` environment, run in `dir`.
pub fn herald_command(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    clean_env(&mut cmd, dir, env);
    cmd
}

/// Run in `dir` with no `HERALD_*` variable but those of `env`.
fn clean_env(cmd: &mut Command, dir: &Path, env: &[(&str, &str)]) {
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// Start `herald serve --bind 127.0.0.1:PORT --database-url sqlite://DIR/herald.db` (unless
/// `env` sets `HERALD_DATABASE_URL`) and wait (with a deadline) until `GET /healthz` answers
/// 200.
pub async fn spawn_process(dir: &Path, port: u16, env: &[(&str, &str)]) -> HeraldProcess {
    spawn_process_nofile(dir, port, env, None).await
}

/// [`spawn_process`] with the open-file limit set to `nofile` (soft and hard, through
/// `sh -c 'ulimit -n N'`, so the server cannot raise it again).
pub async fn spawn_process_nofile(
    dir: &Path,
    port: u16,
    env: &[(&str, &str)],
    nofile: Option<u64>,
) -> HeraldProcess {
    let log = dir.join(format!("herald-{port}.log"));
    let out = std::fs::File::create(&log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    let mut cmd = match nofile {
        None => herald_command(dir, env),
        Some(n) => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_herald"));
            clean_env(&mut cmd, dir, env);
            cmd
        }
    };
    cmd.arg("serve")
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"));
    // A database given in the environment (cluster tests: PostgreSQL) wins.
    if !env.iter().any(|(k, _)| *k == "HERALD_DATABASE_URL") {
        cmd.arg("--database-url")
            .arg(format!("sqlite://{}", dir.join("herald.db").display()));
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn herald binary");
    let mut p = HeraldProcess {
        child,
        port,
        base: format!("http://127.0.0.1:{port}"),
        dir: dir.to_owned(),
        log,
        client: reqwest::Client::builder()
            .timeout(DEADLINE)
            .build()
            .expect("build reqwest client"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = p.child.try_wait().expect("try_wait") {
            panic!(
                "herald exited during start-up with {status}; log:\n{}",
                p.log_text()
            );
        }
        if let Ok(resp) = p.client.get(format!("{}/healthz", p.base)).send().await {
            if resp.status() == StatusCode::OK {
                return p;
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "herald did not answer /healthz within 30 s; log:\n{}",
                p.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// [`spawn_process`] with [`PROC_API_KEY`] and [`PROC_JWT_SECRET`].
pub async fn spawn_process_with_secrets(dir: &Path) -> HeraldProcess {
    spawn_process(
        dir,
        free_port(),
        &[
            ("HERALD_API_KEY", PROC_API_KEY),
            ("HERALD_JWT_SECRET", PROC_JWT_SECRET),
        ],
    )
    .await
}

/// A user token signed with [`PROC_JWT_SECRET`], valid for an hour.
pub fn proc_token(user: &str) -> String {
    herald::auth::mint_token(
        PROC_JWT_SECRET.as_bytes(),
        user,
        None,
        None,
        unix_now() + 3600,
    )
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

impl HeraldProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://127.0.0.1:{}/websocket/{token}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `POST /api/v1/messages` with [`PROC_API_KEY`].
    pub async fn send(&self, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(format!("{}/api/v1/messages", self.base))
            .bearer_auth(PROC_API_KEY)
            .json(body)
            .send()
            .await
            .expect("HTTP request to herald process failed");
        read_response(resp).await
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9 herald");
        self.child.wait().expect("reap herald");
    }

    /// Sends SIGTERM with `kill -TERM <pid>`.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Poll for exit with a deadline.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "herald did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        // Never leave a server behind when a test fails.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
