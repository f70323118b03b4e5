//! Fakes for tests (cargo feature `testing`): a local vendor HTTP server on `127.0.0.1:0`,
//! channel builders, and stand-ins for the three SMS vendors, one file per provider:
//! Aliyun's dysmsapi ([`aliyun`]), Tencent Cloud's SMS API ([`tencent`]) and Twilio's
//! Messages API ([`twilio`]). Each checks a request the way the vendor does (signatures
//! recomputed from what arrived) and answers with the vendor's documented replies; tests
//! script failures and read back what was accepted.
//!
//! A [`Server`] runs a [`Vendor`] (signature check exactly as the vendor does it, then a
//! scripted or default answer) and records every request; a request is recorded before it
//! is answered, so once `send` returns, what the channel sent is there. Nothing sleeps.
//!
//! Used by this crate's tests and by the server's end-to-end `tests/sms.rs` and
//! `tests/faults.rs` (`herald-channel-sms = { …, features = ["testing"] }`).

pub mod aliyun;
pub mod tencent;
pub mod twilio;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use herald_channel::{BuildContext, Channel, ConfigError, MessageView, Outgoing, Services};

/// One request the vendor server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as `application/x-www-form-urlencoded` pairs.
    pub fn form(&self) -> BTreeMap<String, String> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// The query as decoded pairs.
    pub fn query_pairs(&self) -> BTreeMap<String, String> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A vendor: checks a request the way the vendor does and answers it.
pub trait Vendor: Send + Sync + 'static {
    fn answer(&self, request: &Recorded) -> Answer;
}

struct Shared {
    vendor: Arc<dyn Vendor>,
    requests: Mutex<Vec<Recorded>>,
}

/// A running vendor server; it stops with the test's runtime.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Server {
    pub async fn start(vendor: Arc<dyn Vendor>) -> Server {
        let shared = Arc::new(Shared {
            vendor,
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { addr, shared }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The only request so far.
    pub fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "exactly one request: {requests:#?}");
        requests.into_iter().next().unwrap()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = Recorded {
        method,
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers,
        body: body.to_vec(),
    };
    shared.requests.lock().unwrap().push(request.clone());
    let answer = shared.vendor.answer(&request);
    let mut response = (
        StatusCode::from_u16(answer.status).expect("a valid status"),
        answer.body,
    )
        .into_response();
    for (name, value) in answer.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

/// An address on 127.0.0.1 where nothing listens (bound, then released).
pub async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Build instance `name` of `kind` through its registered descriptor.
pub fn build(
    kind: &str,
    name: &str,
    config: serde_json::Value,
) -> Result<Arc<dyn Channel>, ConfigError> {
    build_with(kind, name, config, &Services::default())
}

/// [`build`] with the services a host lends (e.g. a clock: `ManualClock::services`).
pub fn build_with(
    kind: &str,
    name: &str,
    config: serde_json::Value,
    services: &Services,
) -> Result<Arc<dyn Channel>, ConfigError> {
    let descriptor = herald_channel::find(kind).unwrap_or_else(|| panic!("{kind} is registered"));
    (descriptor.build)(BuildContext {
        name,
        config: &config,
        services,
    })
}

/// A delivery of a message sent with Herald template `template` and `data`.
pub fn templated(
    template: &str,
    data: serde_json::Value,
    phone: &str,
    delivery_id: i64,
) -> Outgoing {
    let mut message: MessageView =
        (*herald_channel::testkit::message("Report ready", "Your report is ready")).clone();
    message.template = Some(template.to_owned());
    message.data = Some(data);
    let mut out = herald_channel::testkit::outgoing(Arc::new(message), "patient-7", Some(phone));
    out.delivery_id = delivery_id;
    out
}

/// `time` formatted like Aliyun's `Timestamp` (`2017-07-12T02:42:19Z`).
pub fn iso_utc(t: time::OffsetDateTime) -> String {
    t.format(&time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap()
}
