//! A local webhook receiver for tests (cargo feature `testing`): it records every request
//! and answers from a script.
//!
//! Nothing here sleeps to wait: the receiver publishes its request count on a `watch`
//! channel that tests await with a deadline ([`Receiver::wait_requests`]).
//!
//! The crate's own tests turn the feature on through a dev-dependency on the crate itself
//! (`herald-custom-channel = { path = ".", features = ["testing"] }`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

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
