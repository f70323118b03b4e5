//! A local stand-in for Apple's provider API over cleartext HTTP/2 (h2c, prior knowledge) on
//! `127.0.0.1:0`. It refuses anything that is not HTTP/2, verifies the ES256 provider token
//! with the test key's public key (`kid`, `iss`, age), checks the headers and the JSON body,
//! and answers with Apple's documented errors when a device token is scripted to fail.
//! Every request is recorded before it is answered.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald_channel::clock::Clock;
use herald_channel::testkit::ManualClock;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use p256::SecretKey;
use serde_json::{json, Value};

pub const TEAM_ID: &str = "TEAM123456";
pub const KEY_ID: &str = "KEY1234567";
pub const TOPIC: &str = "com.example.herald";
pub const MESSAGE_ID: &str = "0190f5c2-0000-7000-8000-000000000001";

pub fn device(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// A fresh P-256 key: its PKCS#8 PEM (the `.p8` file) and its public half.
pub fn p8_key() -> (String, VerifyingKey) {
    let secret = loop {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        if let Ok(key) = SecretKey::from_slice(&bytes) {
            break key;
        }
    };
    let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let verifying = *SigningKey::from(&secret).verifying_key();
    (pem, verifying)
}

// ---------------------------------------------------------------------------------------
// The stand-in
// ---------------------------------------------------------------------------------------

#[derive(Default)]
pub struct Seen {
    pub requests: usize,
    pub problems: Vec<String>,
    /// Provider tokens seen, in order of first use.
    pub tokens: Vec<String>,
    /// Accepted notifications: (device token, headers we care about, body).
    pub accepted: Vec<(String, HashMap<String, String>, Value)>,
    /// device token → (status, reason, Retry-After).
    pub script: HashMap<String, (u16, &'static str, Option<u64>)>,
    /// Provider tokens answered 403 ExpiredProviderToken.
    pub expired: HashSet<String>,
}

#[derive(Clone)]
pub struct Apple {
    pub addr: SocketAddr,
    public: VerifyingKey,
    clock: ManualClock,
    seen: Arc<Mutex<Seen>>,
}

fn reason(status: u16, reason: &str) -> Response {
    let mut body = json!({"reason": reason});
    if status == 410 {
        body["timestamp"] = json!(1_700_000_000_000u64);
    }
    (
        StatusCode::from_u16(status).unwrap(),
        [("apns-id", "5E5F8F1A-0000-4000-8000-00000000ERR0")],
        body.to_string(),
    )
        .into_response()
}

impl Apple {
    pub async fn start(public: VerifyingKey, clock: ManualClock) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let apple = Apple {
            addr,
            public,
            clock,
            seen: Arc::default(),
        };
        let app = Router::new().fallback(push).with_state(apple.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        apple
    }

    /// The `endpoint` to configure: `http://` (h2c with prior knowledge).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
        f(&mut self.seen.lock().unwrap())
    }

    pub fn problem(&self, p: String) {
        self.seen(|s| s.problems.push(p));
    }

    pub fn assert_no_problems(&self) {
        let problems = self.seen(|s| s.problems.clone());
        assert!(problems.is_empty(), "{problems:#?}");
    }

    pub fn script(
        &self,
        device: &str,
        status: u16,
        reason: &'static str,
        retry_after: Option<u64>,
    ) {
        self.seen(|s| {
            s.script
                .insert(device.to_owned(), (status, reason, retry_after))
        });
    }

    pub fn distinct_tokens(&self) -> usize {
        self.seen(|s| s.tokens.len())
    }

    /// Verifies the provider token as Apple does: `Err(reason)` to answer 403 with.
    fn check_token(&self, headers: &HeaderMap) -> Result<String, &'static str> {
        let jwt = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bearer "))
            .ok_or("MissingProviderToken")?;
        let parts: Vec<&str> = jwt.split('.').collect();
        let [header, claims, signature] = parts[..] else {
            return Err("InvalidProviderToken");
        };
        let decode = |s: &str| -> Result<Value, &'static str> {
            let bytes = URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| "InvalidProviderToken")?;
            serde_json::from_slice(&bytes).map_err(|_| "InvalidProviderToken")
        };
        let (header, claims) = (decode(header)?, decode(claims)?);
        if header != json!({"alg": "ES256", "kid": KEY_ID}) {
            self.problem(format!("JWT header {header}"));
            return Err("InvalidProviderToken");
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|s| Signature::from_slice(&s).ok())
            .ok_or("InvalidProviderToken")?;
        self.public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .map_err(|_| "InvalidProviderToken")?;
        if claims["iss"] != TEAM_ID || claims.as_object().map(|o| o.len()) != Some(2) {
            self.problem(format!("JWT claims {claims}"));
            return Err("InvalidProviderToken");
        }
        let iat = claims["iat"].as_u64().ok_or("InvalidProviderToken")?;
        if self.clock.unix_secs().saturating_sub(iat) > 3600 {
            self.problem(format!("a token {} s old", self.clock.unix_secs() - iat));
            return Err("ExpiredProviderToken");
        }
        Ok(jwt.to_owned())
    }
}

async fn push(State(apple): State<Apple>, request: Request) -> Response {
    apple.seen(|s| s.requests += 1);
    if request.version() != Version::HTTP_2 {
        apple.problem(format!("not HTTP/2: {:?}", request.version()));
        return StatusCode::HTTP_VERSION_NOT_SUPPORTED.into_response();
    }
    if request.method() != "POST" {
        return reason(405, "MethodNotAllowed");
    }
    let Some(device) = request.uri().path().strip_prefix("/3/device/") else {
        apple.problem(format!("path {}", request.uri().path()));
        return reason(404, "BadPath");
    };
    let device = device.to_owned();
    let headers = request.headers().clone();
    let jwt = match apple.check_token(&headers) {
        Ok(jwt) => jwt,
        Err(why) => return reason(403, why),
    };
    apple.seen(|s| {
        if !s.tokens.contains(&jwt) {
            s.tokens.push(jwt.clone());
        }
    });
    if apple.seen(|s| s.expired.contains(&jwt)) {
        return reason(403, "ExpiredProviderToken");
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if header("apns-topic") != TOPIC {
        apple.problem(format!("apns-topic {:?}", header("apns-topic")));
        return reason(400, "BadTopic");
    }
    if !["alert", "background"].contains(&header("apns-push-type").as_str()) {
        apple.problem(format!("apns-push-type {:?}", header("apns-push-type")));
        return reason(400, "InvalidPushType");
    }
    if !["5", "10"].contains(&header("apns-priority").as_str()) {
        return reason(400, "BadPriority");
    }
    if header("apns-expiration").parse::<u64>().is_err() {
        return reason(400, "BadExpirationDate");
    }
    let collapse = header("apns-collapse-id");
    if collapse.is_empty() || collapse.len() > 64 {
        return reason(400, "BadCollapseId");
    }
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .unwrap_or_else(|_| Bytes::new());
    if body.len() > 4096 {
        return reason(413, "PayloadTooLarge");
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            apple.problem("body is not a JSON object".into());
            return reason(400, "BadRequest");
        }
    };
    if !body["aps"].is_object() {
        apple.problem(format!("no aps: {body}"));
        return reason(400, "PayloadEmpty");
    }
    if !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        apple.problem(format!("device token {device}"));
        return reason(400, "BadDeviceToken");
    }
    if let Some((status, why, retry_after)) = apple.seen(|s| s.script.get(&device).copied()) {
        let mut response = reason(status, why);
        if let Some(after) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", after.to_string().parse().unwrap());
        }
        return response;
    }
    let kept: HashMap<String, String> = [
        "apns-topic",
        "apns-push-type",
        "apns-priority",
        "apns-expiration",
        "apns-collapse-id",
    ]
    .iter()
    .map(|h| (h.to_string(), header(h)))
    .collect();
    let n = apple.seen(|s| {
        s.accepted.push((device, kept, body));
        s.accepted.len()
    });
    (
        StatusCode::OK,
        [("apns-id", format!("5E5F8F1A-0000-4000-8000-{n:012}"))],
    )
        .into_response()
}
