//! Fakes for tests (cargo feature `testing`): local stand-ins for WeChat's API
//! (`stable_token`, template send) and a WeCom group robot, on `127.0.0.1:0`. They check
//! every request the way the vendor does and answer with the vendor's documented replies;
//! tests read back what was asked and script failures.
//!
//! Also: the shipped `templates/report_ready/wechat.*.j2`, rendered the way the core renders
//! them, and a manual clock ([`manual_clock`]).
//!
//! Used by this crate's tests and by the server's end-to-end `tests/wechat.rs`
//! (`herald-channel-wechat = { …, features = ["testing"] }`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use herald_channel::shared::{LocalCache, Shared, SharedCache, SharedError};
use herald_channel::{
    async_trait, testkit, BuildContext, Channel, ConfigError, Outgoing, Services,
};
use serde_json::{json, Value};

pub const APP_ID: &str = "wx0123456789abcdef";
pub const APP_SECRET: &str = "app-s3cr3t-0123456789";
pub const TEMPLATE_ID: &str = "TPL-report-ready-0001";
/// A user who follows the account (openids are 28 characters).
pub const FOLLOWER: &str = "oFollower0123456789abcdefXYZ";
/// A well-formed openid of someone who does not follow the account.
pub const STRANGER: &str = "oStranger0123456789abcdefXYZ";
pub const ROBOT_KEY: &str = "693a91f6-7aa1-4bc4-97a0-0ec2fa5a1234";

/// How long tests wait for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(5);

/// A scripted reply.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This JSON with HTTP 200; `$TOKEN` in a string value is replaced by the request's
    /// access token (to check that an echoed token is scrubbed).
    Json(Value),
    /// An empty body with this HTTP status (a proxy's error).
    Status(u16),
    /// Never answer (the client's timeout fires).
    Hang,
}

fn reply(v: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

fn error(code: i64, msg: &str) -> Response {
    reply(json!({"errcode": code, "errmsg": format!("{msg} rid: 6789abcd-0123")}))
}

async fn answer(a: Answer, token: &str) -> Response {
    match a {
        Answer::Json(v) => reply(
            serde_json::from_str(&v.to_string().replace("$TOKEN", token)).expect("still JSON"),
        ),
        Answer::Status(s) => StatusCode::from_u16(s).expect("a status").into_response(),
        Answer::Hang => std::future::pending().await,
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    addr
}

// ---------------------------------------------------------------------------------------
// WeChat official account API
// ---------------------------------------------------------------------------------------

/// A template send as received.
#[derive(Debug, Clone)]
pub struct SendRecord {
    /// The `access_token` query parameter ("" when missing).
    pub access_token: String,
    pub body: Value,
}

struct WeChatState {
    expires_in: u64,
    issued: u32,
    /// What `stable_token` returns in normal mode.
    current: Option<String>,
    valid: HashSet<String>,
    followers: HashSet<String>,
    templates: HashSet<String>,
    token_requests: Vec<Value>,
    sends: Vec<SendRecord>,
    token_script: VecDeque<Answer>,
    send_script: VecDeque<Answer>,
    msgid: u64,
}

impl WeChatState {
    fn issue(&mut self) -> String {
        self.issued += 1;
        // Real tokens are ~140 characters of [A-Za-z0-9_-].
        let token = format!("{}_ACCESS_TOKEN_{:04}", "x".repeat(100), self.issued);
        if let Some(old) = self.current.replace(token.clone()) {
            self.valid.remove(&old);
        }
        self.valid.insert(token.clone());
        token
    }
}

struct WeChatShared {
    state: Mutex<WeChatState>,
    /// Signalled when a token request arrives (before the gate).
    token_arrived: tokio::sync::Notify,
    /// `false`: token requests wait (see [`WeChatServer::hold_tokens`]).
    gate: tokio::sync::watch::Sender<bool>,
}

/// WeChat's API: `POST /cgi-bin/stable_token` and `POST /cgi-bin/message/template/send`.
pub struct WeChatServer {
    addr: SocketAddr,
    shared: Arc<WeChatShared>,
}

impl WeChatServer {
    pub async fn start() -> WeChatServer {
        let shared = Arc::new(WeChatShared {
            state: Mutex::new(WeChatState {
                expires_in: 7200,
                issued: 0,
                current: None,
                valid: HashSet::new(),
                followers: HashSet::from([FOLLOWER.to_owned()]),
                templates: HashSet::from([TEMPLATE_ID.to_owned()]),
                token_requests: Vec::new(),
                sends: Vec::new(),
                token_script: VecDeque::new(),
                send_script: VecDeque::new(),
                msgid: 3_147_483_647_000,
            }),
            token_arrived: tokio::sync::Notify::new(),
            gate: tokio::sync::watch::channel(true).0,
        });
        let router = Router::new()
            .route("/cgi-bin/stable_token", post(stable_token))
            .route("/cgi-bin/message/template/send", post(template_send))
            .with_state(shared.clone());
        WeChatServer {
            addr: serve(router).await,
            shared,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `wechat.template` configuration for this server, `report_ready` mapped.
    pub fn config(&self) -> Value {
        json!({
            "app_id": APP_ID,
            "app_secret": APP_SECRET,
            "endpoint": self.endpoint(),
            "timeout": "5s",
            "templates": {"report_ready": {"template_id": TEMPLATE_ID}},
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WeChatState> {
        self.shared.state.lock().expect("server state")
    }

    /// Bodies of every `stable_token` request, in order.
    pub fn token_requests(&self) -> Vec<Value> {
        self.state().token_requests.clone()
    }

    /// Every template send received, in order (refused ones included).
    pub fn sends(&self) -> Vec<SendRecord> {
        self.state().sends.clone()
    }

    /// The token `stable_token` hands out now.
    pub fn current_token(&self) -> Option<String> {
        self.state().current.clone()
    }

    /// Another system forced a refresh: the token we handed out is invalid from now on.
    pub fn rotate_token_elsewhere(&self) {
        self.state().issue();
    }

    pub fn set_expires_in(&self, secs: u64) {
        self.state().expires_in = secs;
    }

    pub fn script_token(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state().token_script.extend(answers);
    }

    /// Replies for the next template sends that carry a valid token, then normal service.
    pub fn script_send(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state().send_script.extend(answers);
    }

    /// Token requests wait until [`WeChatServer::release_tokens`].
    pub fn hold_tokens(&self) {
        self.shared.gate.send_replace(false);
    }

    pub fn release_tokens(&self) {
        self.shared.gate.send_replace(true);
    }

    /// Returns once a token request has arrived (or panics after [`WAIT`]).
    pub async fn token_request_arrived(&self) {
        tokio::time::timeout(WAIT, self.shared.token_arrived.notified())
            .await
            .expect("a token request within the deadline");
    }
}

async fn stable_token(
    State(shared): State<Arc<WeChatShared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.token_arrived.notify_one();
    let mut gate = shared.gate.subscribe();
    let _ = gate.wait_for(|open| *open).await;

    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) if is_json(&headers) => v,
        _ => {
            return error(
                47001,
                "data format error hint: [stable_token needs a JSON body]",
            )
        }
    };
    let scripted = {
        let mut state = shared.state.lock().expect("state");
        state.token_requests.push(request.clone());
        state.token_script.pop_front()
    };
    if let Some(a) = scripted {
        return answer(a, "").await;
    }
    let field = |name: &str| request.get(name).and_then(Value::as_str);
    if field("grant_type") != Some("client_credential") {
        return error(40002, "invalid grant_type");
    }
    match field("appid") {
        None => return error(41002, "appid missing"),
        Some(APP_ID) => {}
        Some(_) => return error(40013, "invalid appid"),
    }
    match field("secret") {
        None => return error(41004, "appsecret missing"),
        Some(APP_SECRET) => {}
        Some(_) => return error(40125, "invalid appsecret"),
    }
    let force = match request.get("force_refresh") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return error(47001, "data format error hint: [force_refresh]"),
    };
    if let Some(extra) = request.as_object().and_then(|o| {
        o.keys()
            .find(|k| !["grant_type", "appid", "secret", "force_refresh"].contains(&k.as_str()))
    }) {
        panic!("unexpected stable_token field `{extra}`");
    }
    let mut state = shared.state.lock().expect("state");
    let token = match (&state.current, force) {
        (Some(t), false) => t.clone(),
        _ => state.issue(),
    };
    reply(json!({"access_token": token, "expires_in": state.expires_in}))
}

fn valid_openid(s: &str) -> bool {
    s.len() == 28
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn template_send(
    State(shared): State<Arc<WeChatShared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = query.get("access_token").cloned().unwrap_or_default();
    let request: Option<Value> = serde_json::from_slice(&body).ok();
    let scripted = {
        let mut state = shared.state.lock().expect("state");
        state.sends.push(SendRecord {
            access_token: token.clone(),
            body: request.clone().unwrap_or(Value::Null),
        });
        if token.is_empty() {
            return error(41001, "access_token missing");
        }
        if !state.valid.contains(&token) {
            return error(
                40001,
                "invalid credential, access_token is invalid or not latest, could get \
                 access_token by getStableAccessToken",
            );
        }
        state.send_script.pop_front()
    };
    if let Some(a) = scripted {
        return answer(a, &token).await;
    }
    let Some(request) = request.filter(|_| is_json(&headers)) else {
        return error(47001, "data format error");
    };
    let field = |name: &str| request.get(name);
    let Some(touser) = field("touser").and_then(Value::as_str) else {
        return error(40003, "invalid openid");
    };
    if !valid_openid(touser) {
        return error(40003, "invalid openid");
    }
    let mut state = shared.state.lock().expect("state");
    if !state.followers.contains(touser) {
        return error(43004, "require subscribe");
    }
    match field("template_id").and_then(Value::as_str) {
        Some(id) if state.templates.contains(id) => {}
        _ => return error(40037, "invalid template_id"),
    }
    let Some(data) = field("data").and_then(Value::as_object) else {
        return error(47003, "argument invalid! data invalid");
    };
    for (key, value) in data {
        if value.get("value").and_then(Value::as_str).is_none() {
            return error(
                47003,
                &format!("argument invalid! data.{key}.value invalid"),
            );
        }
    }
    match field("client_msg_id") {
        None => {}
        Some(Value::String(id)) if id.len() <= 64 => {}
        Some(_) => return error(47003, "argument invalid! client_msg_id invalid"),
    }
    match field("url") {
        None | Some(Value::String(_)) => {}
        Some(_) => return error(47001, "data format error hint: [url]"),
    }
    match field("miniprogram") {
        None => {}
        Some(mp)
            if mp.get("appid").and_then(Value::as_str).is_some()
                && mp.get("pagepath").and_then(Value::as_str).is_some() => {}
        Some(_) => return error(47001, "data format error hint: [miniprogram]"),
    }
    state.msgid += 1;
    reply(json!({"errcode": 0, "errmsg": "ok", "msgid": state.msgid}))
}

// ---------------------------------------------------------------------------------------
// WeCom group robot
// ---------------------------------------------------------------------------------------

/// A robot post as received.
#[derive(Debug, Clone)]
pub struct Post {
    pub key: String,
    pub body: Value,
}

struct RobotState {
    posts: Vec<Post>,
    script: VecDeque<Answer>,
}

/// A WeCom group robot: `POST /cgi-bin/webhook/send?key=KEY`.
pub struct RobotServer {
    addr: SocketAddr,
    state: Arc<Mutex<RobotState>>,
}

impl RobotServer {
    pub async fn start() -> RobotServer {
        let state = Arc::new(Mutex::new(RobotState {
            posts: Vec::new(),
            script: VecDeque::new(),
        }));
        let router = Router::new()
            .route("/cgi-bin/webhook/send", post(webhook_send))
            .with_state(state.clone());
        RobotServer {
            addr: serve(router).await,
            state,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The whole webhook URL, as WeCom shows it.
    pub fn webhook_url(&self) -> String {
        format!("{}/cgi-bin/webhook/send?key={ROBOT_KEY}", self.endpoint())
    }

    pub fn posts(&self) -> Vec<Post> {
        self.state.lock().expect("robot state").posts.clone()
    }

    /// Replies for the next posts with the right key, then normal service.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state
            .lock()
            .expect("robot state")
            .script
            .extend(answers);
    }
}

async fn webhook_send(
    State(state): State<Arc<Mutex<RobotState>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = query.get("key").cloned().unwrap_or_default();
    let request: Option<Value> = serde_json::from_slice(&body).ok();
    let scripted = {
        let mut state = state.lock().expect("robot state");
        state.posts.push(Post {
            key: key.clone(),
            body: request.clone().unwrap_or(Value::Null),
        });
        if key != ROBOT_KEY {
            return error(
                93000,
                "invalid webhook url, hint: [1717571485419203277035119], from ip: 127.0.0.1, \
                 more info at https://open.work.weixin.qq.com/devtool/query?e=93000",
            );
        }
        state.script.pop_front()
    };
    if let Some(a) = scripted {
        return answer(a, "").await;
    }
    let Some(request) = request.filter(|_| is_json(&headers)) else {
        return error(40008, "invalid message type");
    };
    let (msgtype, limit) = match request.get("msgtype").and_then(Value::as_str) {
        Some("text") => ("text", 2048),
        Some("markdown") => ("markdown", 4096),
        _ => return error(40008, "invalid message type"),
    };
    let Some(message) = request.get(msgtype) else {
        return error(40008, "invalid message type");
    };
    let content = match message.get("content").and_then(Value::as_str) {
        Some(c) if !c.is_empty() => c,
        _ => return error(44004, "empty content"),
    };
    if content.len() > limit {
        return error(
            40058,
            &format!("{msgtype}.content exceed max length {limit}"),
        );
    }
    if let Some(list) = message.get("mentioned_mobile_list") {
        let ok = msgtype == "text"
            && list
                .as_array()
                .is_some_and(|l| l.iter().all(Value::is_string));
        if !ok {
            return error(40058, "invalid mentioned_mobile_list");
        }
    }
    reply(json!({"errcode": 0, "errmsg": "ok"}))
}

// ---------------------------------------------------------------------------------------
// Channels, deliveries, templates, clock
// ---------------------------------------------------------------------------------------

/// Build an instance named `wechat` of `kind` through its registered descriptor.
pub fn build(kind: &str, config: &Value) -> Result<Arc<dyn Channel>, ConfigError> {
    build_with(kind, config, &Services::default())
}

/// [`build`] with the core's services (e.g. a shared cache: [`cluster_services`]).
pub fn build_with(
    kind: &str,
    config: &Value,
    services: &Services,
) -> Result<Arc<dyn Channel>, ConfigError> {
    let descriptor = herald_channel::find(kind).expect("registered");
    (descriptor.build)(BuildContext {
        name: "wechat",
        config,
        services,
    })
}

// ---------------------------------------------------------------------------------------
// A cluster's shared cache
// ---------------------------------------------------------------------------------------

/// The core's in-process [`LocalCache`], watched: it tells when a caller found the refresh
/// lock taken, i.e. one "node" waits for another node's token refresh.
#[derive(Default)]
pub struct WatchedCache {
    inner: LocalCache,
    lock_refused: tokio::sync::Notify,
}

impl WatchedCache {
    /// Returns once a caller has found a refresh lock taken (or panics after [`WAIT`]).
    pub async fn lock_refused(&self) {
        tokio::time::timeout(WAIT, self.lock_refused.notified())
            .await
            .expect("a caller waiting for another's refresh within the deadline");
    }
}

#[async_trait]
impl SharedCache for WatchedCache {
    async fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), SharedError> {
        self.inner.set(key, value, ttl).await
    }
    async fn delete_if(&self, key: &str, value: &str) -> Result<(), SharedError> {
        self.inner.delete_if(key, value).await
    }
    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<String>, SharedError> {
        let taken = self.inner.try_lock(key, ttl).await?;
        if taken.is_none() {
            self.lock_refused.notify_one();
        }
        Ok(taken)
    }
    async fn unlock(&self, key: &str, token: &str) -> Result<(), SharedError> {
        self.inner.unlock(key, token).await
    }
}

/// Services holding `cache` as the shared cache, as the core lends them to every channel
/// it builds (Redis in cluster mode): instances built with them are "nodes" of one cluster.
pub fn cluster_services(cache: Arc<WatchedCache>) -> Services {
    let mut services = Services::default();
    services.insert(Shared(cache));
    services
}

pub fn report_data() -> Value {
    json!({
        "patient_name": "李雷",
        "report_type": "CT chest",
        "report_id": "R-2026-0042",
        "hospital": "Herald General",
        "ready_at": "2026-11-29 09:30",
        "url": "https://reports.example.com/R-2026-0042",
    })
}

/// Render `templates/report_ready/wechat.<part>.j2` as the core does: strict undefined,
/// JSON-escaped `json` parts (re-serialized compactly), plain text otherwise.
pub fn render(part: &str, data: &Value) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../templates/report_ready")
        .join(format!("wechat.{part}.j2"));
    let source = std::fs::read_to_string(&path).expect("the shipped template");
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".json.j2") {
            minijinja::AutoEscape::Json
        } else {
            minijinja::AutoEscape::None
        }
    });
    let name = format!("wechat.{part}.j2");
    env.add_template_owned(name.clone(), source)
        .expect("the template parses");
    let text = env
        .get_template(&name)
        .and_then(|t| t.render(minijinja::Value::from_serialize(data)))
        .expect("the template renders");
    if part == "json" {
        serde_json::from_str::<Value>(&text)
            .expect("valid JSON")
            .to_string()
    } else {
        text
    }
}

/// A `report_ready` delivery to `openid`, rendered for the `wechat` family (`json` and
/// `md`) from `data`.
pub fn report_ready_with(openid: Option<&str>, data: &Value) -> Outgoing {
    let mut message = (*testkit::message("CT chest report ready", "fallback content")).clone();
    message.template = Some("report_ready".into());
    message.data = Some(data.clone());
    let mut out = testkit::outgoing(Arc::new(message), "42", openid);
    out.delivery_id = 1001;
    out.rendered = Some(testkit::rendered(&[
        ("json", &render("json", data)),
        ("md", &render("md", data)),
    ]));
    out
}

pub fn report_ready(openid: &str) -> Outgoing {
    report_ready_with(Some(openid), &report_data())
}

pub use herald_channel::testkit::ManualClock;

/// A clock that moves only when told to, starting at 2026-01-01T00:00:00Z (08:00 in
/// Beijing).
pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::at_unix_secs(1_767_225_600))
}
