//! A local stand-in for Google's OAuth token endpoint and the FCM HTTP v1 API on
//! `127.0.0.1:0`. It verifies the RS256 assertion with the service account's public key and
//! its claims, checks the bearer token and the message body, and answers with FCM's
//! documented errors when a device token is scripted to fail. Every request is recorded
//! before it is answered, so once a send returns, what the channel sent is here.
//!
//! The RSA key is generated once per test binary with 1024 bits: 2048-bit generation in an
//! unoptimised debug build takes tens of seconds, and the key size does not change what is
//! tested (the channel's code path is identical).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::signature::Verifier;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::Sha256;

pub const PROJECT: &str = "herald-test";
pub const CLIENT_EMAIL: &str = "herald@herald-test.iam.gserviceaccount.com";
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

/// rand 0.9's generator behind rsa 0.9's (rand_core 0.6) traits.
struct Rng06;

impl rsa::rand_core::RngCore for Rng06 {
    fn next_u32(&mut self) -> u32 {
        rand::random()
    }
    fn next_u64(&mut self) -> u64 {
        rand::random()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand::RngCore::fill_bytes(&mut rand::rng(), dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rsa::rand_core::CryptoRng for Rng06 {}

/// The throwaway key and its PKCS#8 PEM.
pub fn key() -> &'static (RsaPrivateKey, String) {
    static KEY: OnceLock<(RsaPrivateKey, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = RsaPrivateKey::new(&mut Rng06, 1024).expect("an RSA key");
        let pem = key.to_pkcs8_pem(LineEnding::LF).expect("PEM").to_string();
        (key, pem)
    })
}

// ---------------------------------------------------------------------------------------
// The stand-in
// ---------------------------------------------------------------------------------------

#[derive(Default)]
pub struct Seen {
    pub token_fetches: usize,
    /// Problems the stand-in found in any request (must stay empty).
    pub problems: Vec<String>,
    /// Accepted sends' message bodies.
    pub messages: Vec<Value>,
    /// The bearer token of each accepted send (one the token endpoint issued).
    pub bearers: Vec<String>,
    /// Every send request (accepted or not).
    pub sends: usize,
    pub issued: HashSet<String>,
    /// Tokens the stand-in treats as expired (401 UNAUTHENTICATED).
    pub revoked: HashSet<String>,
    /// Every token is refused.
    pub refuse_all: bool,
    /// device token → (status, errorCode, Retry-After)
    pub script: HashMap<String, (u16, &'static str, Option<u64>)>,
}

#[derive(Clone)]
pub struct Google {
    pub addr: SocketAddr,
    public: RsaPublicKey,
    seen: Arc<Mutex<Seen>>,
}

impl Google {
    pub async fn start() -> Self {
        let public = key().0.to_public_key();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let google = Google { addr, public, seen };
        let app = Router::new()
            .route("/token", post(token))
            .fallback(send)
            .with_state(google.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        google
    }

    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn script(&self, device: &str, status: u16, code: &'static str, retry_after: Option<u64>) {
        let mut seen = self.seen.lock().unwrap();
        seen.script
            .insert(device.to_owned(), (status, code, retry_after));
    }

    pub fn seen<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
        f(&mut self.seen.lock().unwrap())
    }

    pub fn assert_no_problems(&self) {
        let problems = self.seen(|s| s.problems.clone());
        assert!(problems.is_empty(), "{problems:#?}");
    }

    pub fn service_account(&self) -> Value {
        json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "0123456789abcdef",
            "private_key": key().1,
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri(),
        })
    }

    pub fn config(&self) -> Value {
        json!({
            "service_account": self.service_account().to_string(),
            "endpoint": self.endpoint(),
            "timeout": "5s",
        })
    }
}

fn google_error(status: u16, code: &str, message: &str) -> Response {
    let grpc = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let body = json!({"error": {"code": status, "message": message, "status": grpc,
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                     "errorCode": code}]}});
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    std::str::from_utf8(body)
        .unwrap()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Checks the assertion as Google does; `Err(description)` → `invalid_grant`.
fn check_assertion(google: &Google, assertion: &str) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("not a JWT".into());
    };
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let signature = Signature::try_from(
        URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|e| e.to_string())?
            .as_slice(),
    )
    .map_err(|e| e.to_string())?;
    VerifyingKey::<Sha256>::new(google.public.clone())
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .map_err(|_| "Invalid JWT Signature.".to_owned())?;
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if claims["iss"] != CLIENT_EMAIL {
        return Err("Invalid issuer".into());
    }
    if claims["scope"] != SCOPE {
        return Err(format!("scope {}", claims["scope"]));
    }
    if claims["aud"] != google.token_uri() {
        return Err(format!("aud {}", claims["aud"]));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
        return Err("iat/exp missing".into());
    };
    if exp <= iat || exp - iat > 3600 {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes)".into());
    }
    Ok(())
}

async fn token(State(google): State<Google>, headers: HeaderMap, body: Bytes) -> Response {
    let invalid = |why: String| {
        (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            json!({"error": "invalid_grant", "error_description": why}).to_string(),
        )
            .into_response()
    };
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        return invalid("content type".into());
    }
    let form = form(&body);
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return invalid("grant_type".into());
    }
    let Some(assertion) = form.get("assertion") else {
        return invalid("no assertion".into());
    };
    if let Err(why) = check_assertion(&google, assertion) {
        return invalid(why);
    }
    let token = google.seen(|s| {
        s.token_fetches += 1;
        let token = format!("ya29.test-token-{}", s.token_fetches);
        s.issued.insert(token.clone());
        token
    });
    axum::Json(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}))
        .into_response()
}

/// Problems with a send's body, as FCM's INVALID_ARGUMENT would report them.
fn check_message(body: &Value) -> Result<String, String> {
    let object = body.as_object().ok_or("body is not an object")?;
    if object.keys().collect::<Vec<_>>() != ["message"] {
        return Err(format!("top-level keys {:?}", object.keys()));
    }
    let message = body["message"]
        .as_object()
        .ok_or("message is not an object")?;
    for k in message.keys() {
        if !["token", "notification", "data", "android", "apns"].contains(&k.as_str()) {
            return Err(format!("unknown message field {k}"));
        }
    }
    let token = message
        .get("token")
        .and_then(Value::as_str)
        .ok_or("no token")?;
    let notification = message
        .get("notification")
        .and_then(Value::as_object)
        .ok_or("no notification")?;
    for (k, v) in notification {
        if !["title", "body"].contains(&k.as_str()) || !v.is_string() {
            return Err(format!("notification.{k} = {v}"));
        }
    }
    if let Some(data) = message.get("data") {
        let data = data.as_object().ok_or("data is not a map")?;
        for (k, v) in data {
            if !v.is_string() {
                return Err(format!("data.{k} is not a string: {v}"));
            }
        }
    }
    // "Maximum payload for both message types is 4096 bytes" (FCM, "Message types"); FCM
    // answers INVALID_ARGUMENT beyond it. Counted here as the channel does: everything but
    // the token.
    let mut payload = message.clone();
    payload.remove("token");
    let size = Value::Object(payload).to_string().len();
    if size > 4096 {
        return Err(format!("message is too big: {size} bytes"));
    }
    Ok(token.to_owned())
}

async fn send(State(google): State<Google>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    google.seen(|s| s.sends += 1);
    let expected = format!("/v1/projects/{PROJECT}/messages:send");
    if uri.path() != expected {
        google.seen(|s| s.problems.push(format!("path {}", uri.path())));
        return google_error(404, "NOT_FOUND", "not found");
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    let (issued, revoked) = google.seen(|s| {
        (
            s.issued.contains(&bearer),
            s.revoked.contains(&bearer) || s.refuse_all,
        )
    });
    if !issued {
        google.seen(|s| s.problems.push(format!("unknown bearer {bearer:?}")));
    }
    if !issued || revoked {
        let body = json!({"error": {"code": 401, "status": "UNAUTHENTICATED",
            "message": "Request had invalid authentication credentials."}});
        return (StatusCode::UNAUTHORIZED, body.to_string()).into_response();
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            google.seen(|s| s.problems.push(format!("body is not JSON: {e}")));
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
        }
    };
    let device = match check_message(&body) {
        Ok(token) => token,
        Err(problem) => {
            google.seen(|s| s.problems.push(problem.clone()));
            return google_error(400, "INVALID_ARGUMENT", &problem);
        }
    };
    let scripted = google.seen(|s| s.script.get(&device).copied());
    if let Some((status, code, retry_after)) = scripted {
        let mut response = google_error(status, code, "scripted failure");
        if let Some(after) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", after.to_string().parse().unwrap());
        }
        return response;
    }
    let n = google.seen(|s| {
        s.messages.push(body["message"].clone());
        s.bearers.push(bearer.clone());
        s.messages.len()
    });
    axum::Json(json!({"name": format!("projects/{PROJECT}/messages/0:{n}")})).into_response()
}
