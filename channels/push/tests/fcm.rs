//! `push.fcm` against a local stand-in for Google's OAuth token endpoint and the FCM HTTP v1
//! API. The stand-in verifies the RS256 assertion with the service account's public key and
//! its claims, checks the bearer token and the message body, and answers with FCM's
//! documented errors when a device token is scripted to fail.
//!
//! The RSA key is generated once per test binary with 1024 bits: 2048-bit generation in an
//! unoptimised debug build takes tens of seconds, and the key size does not change what is
//! tested (the channel's code path is identical).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald_channel::testkit::{message, rendered, to_devices};
use herald_channel::{Accepted, BuildContext, Channel, ConfigError, ErrorKind, Services};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::signature::Verifier;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::Sha256;

use herald_channel_push as _;

const PROJECT: &str = "herald-test";
const CLIENT_EMAIL: &str = "herald@herald-test.iam.gserviceaccount.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

// ---------------------------------------------------------------------------------------
// Keys and clock
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
fn key() -> &'static (RsaPrivateKey, String) {
    static KEY: OnceLock<(RsaPrivateKey, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = RsaPrivateKey::new(&mut Rng06, 1024).expect("an RSA key");
        let pem = key.to_pkcs8_pem(LineEnding::LF).expect("PEM").to_string();
        (key, pem)
    })
}

/// A wall clock the test moves (unix seconds).
#[derive(Clone)]
struct Clock(Arc<AtomicU64>);

impl Clock {
    fn new() -> Self {
        Clock(Arc::new(AtomicU64::new(1_800_000_000)))
    }
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    fn services(&self) -> Services {
        let mut services = Services::default();
        let at = self.0.clone();
        let clock: Arc<dyn Fn() -> SystemTime + Send + Sync> =
            Arc::new(move || UNIX_EPOCH + Duration::from_secs(at.load(Ordering::SeqCst)));
        services.insert(clock);
        services
    }
}

// ---------------------------------------------------------------------------------------
// The stand-in
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Seen {
    token_fetches: usize,
    /// Problems the stand-in found in any request (must stay empty).
    problems: Vec<String>,
    /// Accepted sends' message bodies.
    messages: Vec<Value>,
    /// Every send request (accepted or not).
    sends: usize,
    issued: HashSet<String>,
    /// Tokens the stand-in treats as expired (401 UNAUTHENTICATED).
    revoked: HashSet<String>,
    /// Every token is refused.
    refuse_all: bool,
    /// device token → (status, errorCode, Retry-After)
    script: HashMap<String, (u16, &'static str, Option<u64>)>,
}

#[derive(Clone)]
struct Google {
    addr: SocketAddr,
    public: RsaPublicKey,
    seen: Arc<Mutex<Seen>>,
}

impl Google {
    async fn start() -> Self {
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

    fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn script(&self, device: &str, status: u16, code: &'static str, retry_after: Option<u64>) {
        let mut seen = self.seen.lock().unwrap();
        seen.script
            .insert(device.to_owned(), (status, code, retry_after));
    }

    fn seen<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
        f(&mut self.seen.lock().unwrap())
    }

    fn assert_no_problems(&self) {
        let problems = self.seen(|s| s.problems.clone());
        assert!(problems.is_empty(), "{problems:#?}");
    }

    fn service_account(&self) -> Value {
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

    fn config(&self) -> Value {
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
        s.messages.len()
    });
    axum::Json(json!({"name": format!("projects/{PROJECT}/messages/0:{n}")})).into_response()
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn build(config: Value, services: &Services) -> Result<Arc<dyn Channel>, ConfigError> {
    let descriptor = herald_channel::find("push.fcm").expect("push.fcm is registered");
    (descriptor.build)(BuildContext {
        name: "fcm",
        config: &config,
        services,
    })
}

fn channel(google: &Google, clock: &Clock) -> Arc<dyn Channel> {
    build(google.config(), &clock.services()).expect("a valid configuration")
}

fn config_error(config: Value) -> String {
    match build(config, &Services::default()) {
        Ok(_) => panic!("the configuration should be refused"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn registered_as_a_device_channel() {
    let d = herald_channel::find("push.fcm").unwrap();
    assert_eq!(d.address, herald_channel::AddressKind::Device("fcm"));
    assert!(!d.presence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_one_token_and_every_device_gets_the_message() {
    let google = Google::start().await;
    let ch = channel(&google, &Clock::new());
    let mut tasks = Vec::new();
    for i in 0..6 {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let out = to_devices(
                message(&format!("Hello {i}"), "World"),
                "42",
                &[&format!("device-a-{i}"), &format!("device-b-{i}")],
            );
            ch.send(&out).await
        }));
    }
    for t in tasks {
        let accepted = t.await.unwrap().unwrap();
        let Accepted::Sent {
            provider_id: Some(id),
        } = accepted
        else {
            panic!("{accepted:?}");
        };
        assert!(id.starts_with(&format!("projects/{PROJECT}/messages/0:")));
    }
    google.assert_no_problems();
    assert_eq!(google.seen(|s| s.token_fetches), 1);
    let messages = google.seen(|s| s.messages.clone());
    assert_eq!(messages.len(), 12);
    let m = messages
        .iter()
        .find(|m| m["token"] == "device-b-3")
        .expect("device-b-3 got its message");
    assert_eq!(
        m["notification"],
        json!({"title": "Hello 3", "body": "World"})
    );
    assert_eq!(
        m["data"]["messageId"],
        "0190f5c2-0000-7000-8000-000000000001"
    );
}

#[tokio::test]
async fn the_rendered_template_is_sent_with_string_data() {
    let google = Google::start().await;
    let ch = channel(&google, &Clock::new());
    let mut out = to_devices(message("Hello", "World"), "42", &["device-1"]);
    out.rendered = Some(rendered(&[(
        "json",
        r#"{"title": "Your blood report is ready", "body": "St. Mary · report 17",
            "data": {"reportId": 17, "reportType": "blood", "urgent": false}}"#,
    )]));
    assert_eq!(
        ch.send(&out).await.unwrap(),
        Accepted::Sent {
            provider_id: Some(format!("projects/{PROJECT}/messages/0:1"))
        }
    );
    google.assert_no_problems();
    let m = google.seen(|s| s.messages[0].clone());
    assert_eq!(
        m,
        json!({
            "token": "device-1",
            "notification": {"title": "Your blood report is ready", "body": "St. Mary · report 17"},
            "data": {"reportId": "17", "reportType": "blood", "urgent": "false",
                     "messageId": "0190f5c2-0000-7000-8000-000000000001"},
        })
    );
}

#[tokio::test]
async fn the_token_is_reused_until_five_minutes_before_it_expires() {
    let google = Google::start().await;
    let clock = Clock::new();
    let ch = channel(&google, &clock);
    let out = to_devices(message("t", "b"), "42", &["device-1"]);
    ch.send(&out).await.unwrap();
    clock.advance(3599 - 300 - 1);
    ch.send(&out).await.unwrap();
    assert_eq!(google.seen(|s| s.token_fetches), 1);
    clock.advance(1);
    ch.send(&out).await.unwrap();
    assert_eq!(google.seen(|s| s.token_fetches), 2);
    google.assert_no_problems();
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_within_the_attempt() {
    let google = Google::start().await;
    let ch = channel(&google, &Clock::new());
    let out = to_devices(message("t", "b"), "42", &["device-1"]);
    ch.send(&out).await.unwrap();
    google.seen(|s| {
        let current = s.issued.iter().next().unwrap().clone();
        s.revoked.insert(current);
    });
    assert!(matches!(ch.send(&out).await, Ok(Accepted::Sent { .. })));
    assert_eq!(google.seen(|s| (s.token_fetches, s.sends)), (2, 3));
    // Every token refused: one refresh, one retry, then a configuration error.
    google.seen(|s| s.refuse_all = true);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert_eq!(e.code(), Some("UNAUTHENTICATED"));
    assert_eq!(google.seen(|s| (s.token_fetches, s.sends)), (3, 5));
}

#[tokio::test]
async fn an_unregistered_device_is_marked_dead_and_the_others_get_it() {
    let google = Google::start().await;
    let ch = channel(&google, &Clock::new());
    google.script("gone", 404, "UNREGISTERED", None);
    let out = to_devices(message("t", "b"), "42", &["gone", "alive"]);
    assert_eq!(
        ch.send(&out).await.unwrap(),
        Accepted::Sent {
            provider_id: Some(format!("projects/{PROJECT}/messages/0:1"))
        }
    );
    assert_eq!(
        out.dead_devices.take(),
        vec![(1, "UNREGISTERED".to_owned())]
    );
    google.assert_no_problems();
}

#[tokio::test]
async fn all_devices_unregistered_is_a_bad_recipient() {
    let google = Google::start().await;
    let ch = channel(&google, &Clock::new());
    google.script("gone-1", 404, "UNREGISTERED", None);
    google.script("gone-2", 404, "UNREGISTERED", None);
    let out = to_devices(message("t", "b"), "42", &["gone-1", "gone-2"]);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadRecipient);
    assert_eq!(e.message(), "all devices unregistered");
    assert_eq!(
        out.dead_devices.take(),
        vec![(1, "UNREGISTERED".into()), (2, "UNREGISTERED".into())]
    );
}

#[tokio::test]
async fn no_device_is_a_bad_recipient_without_a_request() {
    let google = Google::start().await;
    let ch = channel(&google, &Clock::new());
    let out = to_devices(message("t", "b"), "42", &[]);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadRecipient);
    assert_eq!(e.message(), "no active device");
    assert_eq!(google.seen(|s| (s.token_fetches, s.sends)), (0, 0));
}

#[tokio::test]
async fn vendor_errors_are_classified() {
    let google = Google::start().await;
    let ch = channel(&google, &Clock::new());
    google.script("quota", 429, "QUOTA_EXCEEDED", Some(42));
    google.script("down", 503, "UNAVAILABLE", None);
    google.script("bad", 400, "INVALID_ARGUMENT", None);
    google.script("other-sender", 403, "SENDER_ID_MISMATCH", None);
    google.script("apns-auth", 401, "THIRD_PARTY_AUTH_ERROR", None);
    google.script("gone", 404, "UNREGISTERED", None);
    let send = |tokens: &'static [&'static str]| {
        let ch = ch.clone();
        async move {
            let out = to_devices(message("t", "b"), "42", tokens);
            ch.send(&out).await.unwrap_err()
        }
    };
    let e = send(&["quota"]).await;
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(42)));
    assert_eq!(e.code(), Some("QUOTA_EXCEEDED"));
    let e = send(&["down"]).await;
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Transient, Some("UNAVAILABLE"))
    );
    let e = send(&["bad"]).await;
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Permanent, Some("INVALID_ARGUMENT"))
    );
    let e = send(&["other-sender"]).await;
    assert_eq!(e.kind(), ErrorKind::Permanent);
    let e = send(&["apns-auth"]).await;
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Config, Some("THIRD_PARTY_AUTH_ERROR"))
    );
    // The most important failure wins: retryable over dead over permanent.
    let e = send(&["bad", "gone", "down"]).await;
    assert_eq!(e.kind(), ErrorKind::Transient);
    let e = send(&["bad", "gone"]).await;
    assert_eq!(e.kind(), ErrorKind::BadRecipient);
    // No vendor error message leaks a token.
    assert!(!e.to_string().contains("ya29"), "{e}");
    assert_eq!(google.seen(|s| s.token_fetches), 1);
}

#[tokio::test]
async fn a_payload_over_4_kib_is_refused_without_a_request() {
    let google = Google::start().await;
    let ch = channel(&google, &Clock::new());
    let mut out = to_devices(message("t", "b"), "42", &["device-1"]);
    let data = format!(
        r#"{{"title": "T", "body": "B", "data": {{"x": "{}"}}}}"#,
        "x".repeat(4100)
    );
    out.rendered = Some(rendered(&[("json", &data)]));
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert_eq!(e.code(), Some("payload_too_large"));
    assert_eq!(google.seen(|s| (s.token_fetches, s.sends)), (0, 0));
}

#[tokio::test]
async fn a_refused_assertion_is_a_configuration_error() {
    let google = Google::start().await;
    let mut account = google.service_account();
    account["client_email"] = json!("someone-else@herald-test.iam.gserviceaccount.com");
    let config = json!({"service_account": account.to_string(), "endpoint": google.endpoint()});
    let ch = build(config, &Clock::new().services()).unwrap();
    let out = to_devices(message("t", "b"), "42", &["device-1"]);
    let e = ch.send(&out).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert_eq!(e.code(), Some("invalid_grant"));
    assert!(e.message().contains("Invalid issuer"), "{e}");
    assert_eq!(google.seen(|s| s.sends), 0);
}

#[tokio::test]
async fn configuration_is_checked_and_secrets_stay_hidden() {
    let google = Google::start().await;
    let pem = &key().1;
    let secret_line = pem.lines().nth(3).unwrap().to_owned();

    // A working configuration builds.
    build(google.config(), &Services::default()).unwrap();

    // The file form and a project override work.
    let dir = std::env::temp_dir().join(format!("herald-fcm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sa.json");
    std::fs::write(&file, google.service_account().to_string()).unwrap();
    build(
        json!({"service_account_file": file.to_str().unwrap(), "project_id": "other-project"}),
        &Services::default(),
    )
    .unwrap();

    let account = google.service_account().to_string();
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "service_account"),
        (
            json!({"service_account": account, "service_account_file": "/x"}),
            "service_account, service_account_file",
        ),
        (
            json!({"service_account_file": "/nonexistent/sa.json"}),
            "service_account_file",
        ),
        (
            json!({"service_account": "{not json"}),
            "service_account: not valid JSON",
        ),
        (
            json!({"service_account": 12}),
            "service_account: invalid type",
        ),
        (
            json!({"service_account": account.replace("BEGIN PRIVATE KEY", "BEGIN NOTHING")}),
            "service_account: `private_key`",
        ),
        (
            json!({"service_account": json!({"client_email": CLIENT_EMAIL, "private_key": pem}).to_string()}),
            "project_id: missing",
        ),
        (
            json!({"service_account": account, "project_id": "a b"}),
            "project_id",
        ),
        (
            json!({"service_account": account, "endpoint": "ftp://x"}),
            "endpoint",
        ),
        (
            json!({"service_account": account, "timeout": "soon"}),
            "timeout",
        ),
        (
            json!({"service_account": account, "android": "high"}),
            "android",
        ),
        (
            json!({"service_account": account, "sevice_account": 1}),
            "sevice_account",
        ),
    ];
    for (config, key) in cases {
        let e = config_error(config.clone());
        assert!(e.starts_with("channels.fcm: "), "{e}");
        assert!(e.contains(key), "{key}: {e}");
        assert!(!e.contains(&secret_line), "{e}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn android_and_apns_tables_are_passed_through() {
    let google = Google::start().await;
    let mut config = google.config();
    config["android"] = json!({"priority": "high", "ttl": "3600s"});
    config["apns"] = json!({"headers": {"apns-priority": "10"}});
    let ch = build(config, &Clock::new().services()).unwrap();
    let out = to_devices(message("t", "b"), "42", &["device-1"]);
    ch.send(&out).await.unwrap();
    google.assert_no_problems();
    let m = google.seen(|s| s.messages[0].clone());
    assert_eq!(m["android"], json!({"priority": "high", "ttl": "3600s"}));
    assert_eq!(m["apns"]["headers"]["apns-priority"], "10");
}
