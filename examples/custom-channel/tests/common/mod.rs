//! Test harness: a local webhook receiver and an in-process Herald.
//!
//! Nothing here sleeps to wait: the receiver publishes its request count on a `watch`
//! channel that tests await with a deadline, and Herald's delivery status is polled with a
//! deadline ([`wait_until`]).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tempfile::TempDir;

/// Longest wait for something that should happen; only reached when something is broken.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub const SECRET: &str = "webhook-test-secret";

// ---------------------------------------------------------------------------------------------
// Webhook receiver
// ---------------------------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    hang: bool,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            hang: false,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Never answer (the client's timeout must fire).
    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::status(200)
        }
    }
}

#[derive(Default)]
struct ReceiverState {
    /// Answers in order; `200` once the script runs out.
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    count: tokio::sync::watch::Sender<usize>,
}

/// A local HTTP server that records every request and answers from a script.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(script: impl IntoIterator<Item = Reply>) -> Self {
        let state = Arc::new(ReceiverState {
            script: Mutex::new(script.into_iter().collect()),
            ..ReceiverState::default()
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver on 127.0.0.1:0");
        let addr = listener.local_addr().expect("receiver address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT/hook`
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("receiver lock").clone()
    }

    /// Wait (with [`DEADLINE`]) until at least `n` requests arrived; returns all of them.
    pub async fn wait_requests(&self, n: usize) -> Vec<Recorded> {
        let mut rx = self.state.count.subscribe();
        let arrived = tokio::time::timeout(DEADLINE, rx.wait_for(|count| *count >= n)).await;
        if arrived.is_err() {
            panic!(
                "expected {n} webhook request(s) within {DEADLINE:?}, got {}",
                self.requests().len()
            );
        }
        self.requests()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = state
        .script
        .lock()
        .expect("receiver lock")
        .pop_front()
        .unwrap_or_else(|| Reply::status(200));
    let count = {
        let mut requests = state.requests.lock().expect("receiver lock");
        requests.push(Recorded {
            method,
            path: uri.path().to_owned(),
            headers,
            body: body.to_vec(),
        });
        requests.len()
    };
    state.count.send_replace(count);
    if reply.hang {
        std::future::pending::<()>().await;
    }
    let mut response = StatusCode::from_u16(reply.status)
        .expect("scripted status is valid")
        .into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("scripted header name"),
            HeaderValue::from_str(&value).expect("scripted header value"),
        );
    }
    response
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, computed here independently of the channel.
pub fn expected_signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Herald in-process
// ---------------------------------------------------------------------------------------------

/// `kind = "webhook.json"`, `url`, `secret` (+ `extra` keys) as a `[channels.<name>]` table.
pub fn hook_table(url: &str, extra: &[(&str, &str)]) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("kind".into(), "webhook.json".into());
    t.insert("url".into(), url.into());
    t.insert("secret".into(), SECRET.into());
    for (k, v) in extra {
        t.insert((*k).into(), (*v).into());
    }
    t
}

pub struct Herald {
    // Dropped before the directory that holds its database.
    running: Option<herald::Running>,
    pub base: String,
    pub api_key: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
}

/// Start Herald with `Settings::for_data_dir` and the given channel instances.
pub async fn start_herald(channels: Vec<(&str, toml::Table)>) -> Herald {
    start_herald_with(channels, |_| {}).await
}

/// [`start_herald`] with a closure that adjusts the settings first.
pub async fn start_herald_with(
    channels: Vec<(&str, toml::Table)>,
    tweak: impl FnOnce(&mut herald::config::Settings),
) -> Herald {
    let dir = tempfile::tempdir().expect("create temp dir");
    let mut settings = herald::config::Settings::for_data_dir(dir.path());
    settings.bind = "127.0.0.1:0".into();
    for (name, table) in channels {
        settings.channels.insert(name.to_owned(), table);
    }
    tweak(&mut settings);
    let running = tokio::time::timeout(DEADLINE, herald::start(settings))
        .await
        .expect("herald::start did not finish within the deadline")
        .expect("herald::start failed");
    Herald {
        base: format!("http://{}", running.addr()),
        api_key: running.api_key().to_owned(),
        running: Some(running),
        client: reqwest::Client::builder()
            .timeout(DEADLINE)
            .build()
            .expect("build reqwest client"),
        dir,
    }
}

impl Herald {
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        api_get(&self.client, &self.base, &self.api_key, path).await
    }

    pub async fn send(&self, body: &Value) -> (StatusCode, Value) {
        api_post(
            &self.client,
            &self.base,
            &self.api_key,
            "/api/v1/messages",
            body,
        )
        .await
    }

    /// Poll `GET /api/v1/messages/{id}` until `check` accepts the delivery of `receiver` on
    /// `channel`; returns that delivery.
    pub async fn wait_delivery(
        &self,
        id: &str,
        receiver: &str,
        channel: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_delivery(
            &self.client,
            &self.base,
            &self.api_key,
            id,
            receiver,
            channel,
            what,
            check,
        )
        .await
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            tokio::time::timeout(DEADLINE, running.shutdown())
                .await
                .expect("graceful shutdown within the deadline");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// API helpers shared by the in-process and the child-process tests
// ---------------------------------------------------------------------------------------------

async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(resp.status().as_u16()).expect("valid status");
    let text = resp.text().await.expect("read response body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

pub async fn api_get(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
) -> (StatusCode, Value) {
    let resp = client
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET request failed");
    read(resp).await
}

pub async fn api_post(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let resp = client
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("POST request failed");
    read(resp).await
}

/// The `hook` entry of `GET /api/v1/channels`, asserting it is a `webhook.json` instance.
pub fn assert_lists_hook(channels: &Value) {
    let list = channels
        .as_array()
        .unwrap_or_else(|| panic!("channels is not an array: {channels}"));
    let hook = list
        .iter()
        .find(|c| c["name"] == "hook")
        .unwrap_or_else(|| panic!("no `hook` instance in {channels}"));
    assert_eq!(hook["kind"], "webhook.json", "{hook}");
    assert_eq!(hook["enabled"], true, "{hook}");
}

#[allow(clippy::too_many_arguments)]
pub async fn wait_delivery(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    id: &str,
    receiver: &str,
    channel: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, msg) = api_get(client, base, key, &format!("/api/v1/messages/{id}")).await;
        assert_eq!(status, StatusCode::OK, "GET message {id}: {msg}");
        let delivery = msg["deliveries"]
            .as_array()
            .unwrap_or_else(|| panic!("message without deliveries: {msg}"))
            .iter()
            .find(|d| d["receiver"] == receiver && d["channel"] == channel)
            .cloned()
            .unwrap_or_else(|| panic!("no {channel} delivery for {receiver}: {msg}"));
        if check(&delivery) {
            return delivery;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {DEADLINE:?} waiting for {what}; last delivery: {delivery}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
