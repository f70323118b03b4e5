//! A local Web Push service on `127.0.0.1:0` that checks each request the way a real one
//! (and the browser behind it) would: the VAPID JWT (RFC 8292) is verified against the
//! `k=` key, with `aud` = this service's origin, `exp` within 24 h and the configured `sub`;
//! the body is decrypted with the subscription's private key and auth secret (the user
//! agent's side of RFC 8291, written here independently of the channel).
//!
//! A request that fails a check is answered 400 and its problem recorded; tests assert
//! there were none. Every request is recorded before it is answered, so once `send`
//! returns, what the channel sent is here. Nothing sleeps.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand::RngCore;
use serde_json::Value;
use sha2::Sha256;

/// A browser's push subscription: the private half stays here.
pub struct TestSubscription {
    pub id: String,
    secret: SecretKey,
    auth: [u8; 16],
}

impl TestSubscription {
    pub fn generate(id: &str) -> Self {
        let mut rng = rand::rng();
        let mut auth = [0u8; 16];
        rng.fill_bytes(&mut auth);
        Self {
            id: id.to_owned(),
            secret: random_secret(),
            auth,
        }
    }

    pub fn p256dh(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.public_key().to_encoded_point(false).as_bytes())
    }

    pub fn auth(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.auth)
    }
}

/// A random P-256 private key.
pub fn random_secret() -> SecretKey {
    let mut rng = rand::rng();
    loop {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        if let Ok(key) = SecretKey::from_slice(&bytes) {
            return key;
        }
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16, Vec<(&'static str, String)>),
    /// Never answers (the channel's timeout fires).
    Hang,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply::Status(status, Vec::new())
    }
}

/// One request that passed every check.
#[derive(Debug, Clone)]
pub struct Received {
    pub subscription: String,
    pub ttl: String,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    pub content_type: Option<String>,
    /// The JWT (`t=`).
    pub token: String,
    /// `k=`.
    pub key: String,
    pub claims: Value,
    /// The record size in the body's header.
    pub record_size: u32,
    pub body_len: usize,
    /// The decrypted notification.
    pub plaintext: Value,
}

#[derive(Default)]
struct Inner {
    subscriptions: HashMap<String, TestSubscription>,
    script: HashMap<String, VecDeque<Reply>>,
    received: Vec<Received>,
    problems: Vec<String>,
    accepted: u64,
}

struct Shared {
    origin: String,
    subject: String,
    inner: Mutex<Inner>,
}

pub struct PushService {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl PushService {
    /// Starts a push service expecting VAPID tokens with `sub` = `subject`.
    pub async fn start(subject: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            origin: format!("http://{addr}"),
            subject: subject.to_owned(),
            inner: Mutex::default(),
        });
        let app = Router::new()
            .route("/push/{id}", post(push))
            .with_state(shared.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self { addr, shared }
    }

    pub fn origin(&self) -> String {
        self.shared.origin.clone()
    }

    /// A new subscription on this service; returns its `PushSubscription.toJSON()`.
    pub fn subscribe(&self, id: &str) -> String {
        let sub = TestSubscription::generate(id);
        let json = serde_json::json!({
            "endpoint": format!("{}/push/{id}", self.shared.origin),
            "expirationTime": null,
            "keys": {"p256dh": sub.p256dh(), "auth": sub.auth()},
        })
        .to_string();
        self.lock().subscriptions.insert(id.to_owned(), sub);
        json
    }

    /// Answers for the next requests to subscription `id`; then 201.
    pub fn script(&self, id: &str, replies: impl IntoIterator<Item = Reply>) {
        self.lock()
            .script
            .entry(id.to_owned())
            .or_default()
            .extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Checks that failed (each answered 400).
    pub fn problems(&self) -> Vec<String> {
        self.lock().problems.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().expect("not poisoned")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn push(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let checked = {
        let inner = shared.inner.lock().expect("not poisoned");
        match inner.subscriptions.get(&id) {
            None => Err(format!("unknown subscription {id}")),
            Some(sub) => check(&shared, sub, &headers, &body),
        }
    };
    let reply = {
        let mut inner = shared.inner.lock().expect("not poisoned");
        match checked {
            Err(problem) => {
                inner.problems.push(problem.clone());
                return (StatusCode::BAD_REQUEST, problem).into_response();
            }
            Ok(received) => inner.received.push(received),
        }
        let scripted = inner.script.get_mut(&id).and_then(VecDeque::pop_front);
        match scripted {
            Some(reply) => reply,
            None => {
                inner.accepted += 1;
                let location = format!("{}/message/{}", shared.origin, inner.accepted);
                Reply::Status(201, vec![("location", location)])
            }
        }
    };
    match reply {
        Reply::Hang => std::future::pending::<Response>().await,
        Reply::Status(status, extra) => {
            let mut response = StatusCode::from_u16(status)
                .expect("a valid status")
                .into_response();
            for (name, value) in extra {
                response
                    .headers_mut()
                    .insert(name, value.parse().expect("a header value"));
            }
            response
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| format!("not unpadded base64url ({e}): {s}"))
}

/// Every check a push service and the receiving browser make.
fn check(
    shared: &Shared,
    sub: &TestSubscription,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Received, String> {
    if header(headers, "content-encoding").as_deref() != Some("aes128gcm") {
        return Err("Content-Encoding must be aes128gcm".into());
    }
    let ttl = header(headers, "ttl").ok_or("TTL is required (RFC 8030 §5.2)")?;
    ttl.parse::<u64>()
        .map_err(|_| format!("TTL is not a number of seconds: {ttl}"))?;
    let urgency = header(headers, "urgency");
    if let Some(u) = &urgency {
        if !["very-low", "low", "normal", "high"].contains(&u.as_str()) {
            return Err(format!("bad Urgency {u}"));
        }
    }

    // VAPID (RFC 8292 §3): `vapid t=<jwt>, k=<key>`.
    let authorization = header(headers, "authorization").ok_or("no Authorization")?;
    let params = authorization
        .strip_prefix("vapid ")
        .ok_or("Authorization scheme must be vapid")?;
    let mut token = None;
    let mut key = None;
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => token = Some(v.to_owned()),
            Some(("k", v)) => key = Some(v.to_owned()),
            _ => return Err(format!("unexpected vapid parameter {param}")),
        }
    }
    let token = token.ok_or("no t=")?;
    let key = key.ok_or("no k=")?;
    let verifying =
        VerifyingKey::from_sec1_bytes(&b64(&key)?).map_err(|_| "k= is not a P-256 key")?;
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the JWT must have three parts".into());
    };
    let jwt_header: Value =
        serde_json::from_slice(&b64(h)?).map_err(|_| "JWT header is not JSON")?;
    if jwt_header != serde_json::json!({"typ": "JWT", "alg": "ES256"}) {
        return Err(format!("JWT header {jwt_header}"));
    }
    let signature = Signature::from_slice(&b64(s)?).map_err(|_| "ES256 signature is not r‖s")?;
    verifying
        .verify(format!("{h}.{c}").as_bytes(), &signature)
        .map_err(|_| "the JWT signature does not verify against k=")?;
    let claims: Value = serde_json::from_slice(&b64(c)?).map_err(|_| "JWT claims are not JSON")?;
    if claims["aud"] != Value::String(shared.origin.clone()) {
        return Err(format!("aud {} is not {}", claims["aud"], shared.origin));
    }
    if claims["sub"] != Value::String(shared.subject.clone()) {
        return Err(format!("sub {} is not {}", claims["sub"], shared.subject));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let exp = claims["exp"].as_u64().ok_or("exp is not a number")?;
    if exp <= now || exp > now + 24 * 3600 {
        return Err(format!("exp {exp} is not within 24 h of {now}"));
    }

    let (record_size, plaintext) = decrypt(sub, body)?;
    let plaintext: Value =
        serde_json::from_slice(&plaintext).map_err(|_| "the plaintext is not JSON")?;
    Ok(Received {
        subscription: sub.id.clone(),
        ttl,
        urgency,
        topic: header(headers, "topic"),
        content_type: header(headers, "content-type"),
        token,
        key,
        claims,
        record_size,
        body_len: body.len(),
        plaintext,
    })
}

/// The user agent's side of RFC 8291 / RFC 8188 (one record).
fn decrypt(sub: &TestSubscription, body: &[u8]) -> Result<(u32, Vec<u8>), String> {
    if body.len() < 21 {
        return Err("body shorter than the aes128gcm header".into());
    }
    let salt = &body[..16];
    let rs = u32::from_be_bytes(body[16..20].try_into().expect("4 bytes"));
    let idlen = body[20] as usize;
    if idlen != 65 || body.len() < 21 + idlen {
        return Err(format!("keyid must be the 65-byte sender key, got {idlen}"));
    }
    let as_public_bytes = &body[21..21 + idlen];
    let record = &body[21 + idlen..];
    if record.len() > rs as usize || rs < 18 {
        return Err(format!("one record of {} bytes with rs {rs}", record.len()));
    }
    let as_public =
        PublicKey::from_sec1_bytes(as_public_bytes).map_err(|_| "keyid is not a P-256 key")?;
    let ua_public = sub.secret.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(sub.secret.to_nonzero_scalar(), as_public.as_affine());

    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(ua_public.as_bytes());
    info.extend_from_slice(as_public_bytes);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&sub.auth), shared.raw_secret_bytes().as_slice())
        .expand(&info, &mut ikm)
        .expect("32 bytes");
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .expect("16 bytes");
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .expect("12 bytes");
    let mut padded = Aes128Gcm::new_from_slice(&cek)
        .expect("16-byte key")
        .decrypt(Nonce::from_slice(&nonce), record)
        .map_err(|_| "AES-GCM decryption failed")?;
    // Strip zero padding, then the last record's delimiter 0x02.
    while padded.last() == Some(&0) {
        padded.pop();
    }
    if padded.pop() != Some(0x02) {
        return Err("the last record must end with the 0x02 delimiter".into());
    }
    Ok((rs, padded))
}
