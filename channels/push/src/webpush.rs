//! `push.webpush`: Web Push (RFC 8030) to browser subscriptions, identified with VAPID
//! (RFC 8292) and encrypted with `aes128gcm` (RFC 8291 over RFC 8188).
//!
//! Each device's token is the browser's `PushSubscription.toJSON()`:
//! `{"endpoint": "https://…", "keys": {"p256dh": "<base64url>", "auth": "<base64url>"}}`.
//! One `send` is one `POST <endpoint>` per device, each with its own ephemeral key and salt.
//!
//! Configuration (`[channels.<name>]`, `kind = "push.webpush"`):
//!
//! * `vapid_private_key` (required, secret): the application server's P-256 private key,
//!   either the raw 32-byte scalar in base64url (what `web-push generate-vapid-keys` prints)
//!   or a PEM (`PRIVATE KEY`, PKCS#8; `EC PRIVATE KEY`, SEC1). The public key (`k=`, the
//!   browser's `applicationServerKey`) is derived from it.
//! * `subject` (required): a `mailto:` or `https:` contact URI, the VAPID `sub` claim.
//! * `ttl` (default `"4w"`): how long the push service keeps an undelivered message.
//! * `urgency` (default `"normal"`): `very-low`, `low`, `normal` or `high`.
//! * `timeout` (default `"10s"`): per request.
//! * `allowed_endpoint_hosts` (optional): when set, only endpoints on these hosts are
//!   contacted (`"*.example.com"` matches subdomains). Endpoints must be `https`, except on
//!   a host listed here by its exact name: the tests list `"127.0.0.1"` and run a plain-HTTP
//!   push service on loopback.
//!
//! Invariants: no retry, no sleep, no store; the private key and the endpoints' paths
//! (capability URLs) never appear in errors, logs or `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use herald_channel::clock::{self, Clock};
use herald_channel::http::{http_client, MAX_CONNECT_TIMEOUT};
use herald_channel::{
    async_trait, Accepted, BuildContext, Channel, ChannelError, ConfigError, Device, ErrorKind,
    InvalidDevice, Outgoing,
};
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use p256::{PublicKey, SecretKey};
use rand::RngCore;
use reqwest::Url;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::Sha256;

use crate::common::{config_error, duration_value, string_value, timeout_value};

/// The record size written into every body; one record carries the whole message.
pub const RECORD_SIZE: u32 = 4096;
/// The largest body every push service must accept (RFC 8030 §7.2, RFC 8291 §4).
pub const MAX_BODY: usize = 4096;
/// The aes128gcm header: salt (16) ‖ rs (4) ‖ idlen (1) ‖ keyid (65-byte public key).
pub const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// AES-GCM's tag.
const TAG_LEN: usize = 16;
/// The largest plaintext that fits: the body minus header, padding delimiter and tag.
pub const MAX_PLAINTEXT: usize = MAX_BODY - HEADER_LEN - 1 - TAG_LEN;

/// A VAPID token's life (RFC 8292 allows at most 24 h).
const JWT_LIFETIME_SECS: u64 = 12 * 3600;
/// A cached token is replaced when less than this is left.
const JWT_RENEW_BEFORE_SECS: u64 = 3600;
/// The token cache keeps at most this many audiences (push services are few).
const JWT_CACHE_MAX: usize = 64;

const DEFAULT_TTL: &str = "4w";
const USER_AGENT: &str = concat!("herald-webpush/", env!("CARGO_PKG_VERSION"));

/// base64url that takes padded and unpadded input (browsers send unpadded).
const B64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The descriptor's `build` (registered in `lib.rs`).
pub(crate) fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    Ok(Arc::new(WebPushChannel::from_context(&ctx)?))
}

/// The registration check of `webpush` devices (registered in `lib.rs`): a subscription
/// `send` could not encrypt for (a `p256dh` that is 65 bytes but not a point on P-256, …)
/// is refused at registration, by the same parser `send` uses.
pub(crate) fn check_subscription(token: &str) -> Result<(), InvalidDevice> {
    Subscription::parse(token).map(drop)
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// The raw table: every value is checked below so each error names its key (and a wrongly
/// typed private key is never echoed, as serde's type errors would).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    vapid_private_key: Option<Value>,
    subject: Option<Value>,
    ttl: Option<Value>,
    urgency: Option<Value>,
    timeout: Option<Value>,
    allowed_endpoint_hosts: Option<Value>,
}

/// The `Urgency` header (RFC 8030 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    VeryLow,
    Low,
    Normal,
    High,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "very-low" => Urgency::VeryLow,
            "low" => Urgency::Low,
            "normal" => Urgency::Normal,
            "high" => Urgency::High,
            _ => return None,
        })
    }
}

/// The application server key from raw base64url or PEM. Errors never contain the key.
fn parse_private_key(text: &str) -> Result<SecretKey, &'static str> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        if text.contains("-----BEGIN EC PRIVATE KEY-----") {
            return SecretKey::from_sec1_pem(text)
                .map_err(|_| "not a valid SEC1 PEM P-256 private key");
        }
        return SecretKey::from_pkcs8_pem(text)
            .map_err(|_| "not a valid PKCS#8 PEM P-256 private key");
    }
    let bytes = B64URL_LENIENT.decode(text).map_err(|_| {
        "expected the raw 32-byte P-256 private key in base64url, or a PEM private key"
    })?;
    if bytes.len() != 32 {
        return Err("expected 32 bytes (the raw P-256 private key) after base64url decoding");
    }
    SecretKey::from_slice(&bytes).map_err(|_| "not a valid P-256 private key")
}

/// `mailto:someone@example.com` or `https://example.com/contact`.
fn valid_subject(subject: &str) -> bool {
    if let Some(address) = subject.strip_prefix("mailto:") {
        let mut parts = address.splitn(2, '@');
        let local = parts.next().unwrap_or_default();
        let domain = parts.next().unwrap_or_default();
        return !local.is_empty() && !domain.is_empty() && !address.contains(char::is_whitespace);
    }
    subject.starts_with("https:")
        && Url::parse(subject).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some())
}

// ---------------------------------------------------------------------------------------
// The channel
// ---------------------------------------------------------------------------------------

/// A signed VAPID token for one audience.
struct CachedJwt {
    token: String,
    exp: u64,
}

/// One configured `push.webpush` instance.
pub struct WebPushChannel {
    name: String,
    /// The VAPID private key: secret.
    signing_key: SigningKey,
    /// `k=`: the uncompressed public key in base64url (not secret).
    public_key: String,
    subject: String,
    ttl: Duration,
    urgency: Urgency,
    timeout: Duration,
    allowed_endpoint_hosts: Option<Vec<String>>,
    http: reqwest::Client,
    /// VAPID tokens by audience (`scheme://host[:port]`).
    tokens: Mutex<HashMap<String, CachedJwt>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for WebPushChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebPushChannel")
            .field("name", &self.name)
            .field("vapid_private_key", &"<redacted>")
            .field("vapid_public_key", &self.public_key)
            .field("subject", &self.subject)
            .field("ttl", &self.ttl)
            .field("urgency", &self.urgency)
            .field("timeout", &self.timeout)
            .field("allowed_endpoint_hosts", &self.allowed_endpoint_hosts)
            .finish_non_exhaustive()
    }
}

impl WebPushChannel {
    /// Validates the instance's configuration; every error names its key and none contains
    /// the private key.
    pub fn from_context(ctx: &BuildContext<'_>) -> Result<Self, ConfigError> {
        let name = ctx.name;
        let raw: RawConfig = herald_channel::parse_config(ctx)?;

        let key_text = match &raw.vapid_private_key {
            None => {
                return Err(config_error(
                    name,
                    "vapid_private_key",
                    "required: the VAPID private key (raw base64url or PEM)",
                ))
            }
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(config_error(
                    name,
                    "vapid_private_key",
                    "invalid type: expected a string",
                ))
            }
        };
        let secret = parse_private_key(key_text)
            .map_err(|why| config_error(name, "vapid_private_key", why))?;
        let signing_key = SigningKey::from(&secret);
        let public_key = URL_SAFE_NO_PAD.encode(
            signing_key
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes(),
        );
        // Not secret: pages need it as `applicationServerKey` to subscribe.
        tracing::info!(channel = %name, application_server_key = %public_key,
            "web push VAPID public key");

        let subject = string_value(name, "subject", raw.subject.as_ref())?
            .map(str::trim)
            .ok_or_else(|| {
                config_error(
                    name,
                    "subject",
                    "required: a contact URI, `mailto:ops@example.com` or `https://example.com`",
                )
            })?;
        if !valid_subject(subject) {
            return Err(config_error(
                name,
                "subject",
                format!("`{subject}`: expected `mailto:<address>` or an `https:` URL"),
            ));
        }

        let ttl = duration_value(name, "ttl", raw.ttl.as_ref(), DEFAULT_TTL)?;
        let urgency = match string_value(name, "urgency", raw.urgency.as_ref())? {
            None => Urgency::Normal,
            Some(u) => Urgency::parse(u.trim()).ok_or_else(|| {
                config_error(
                    name,
                    "urgency",
                    format!("`{u}`: expected one of very-low, low, normal, high"),
                )
            })?,
        };
        let timeout = timeout_value(name, raw.timeout.as_ref())?;

        let allowed_endpoint_hosts = match &raw.allowed_endpoint_hosts {
            None => None,
            Some(Value::Array(items)) => {
                let mut hosts = Vec::with_capacity(items.len());
                for item in items {
                    let host = item
                        .as_str()
                        .map(|h| h.trim().to_ascii_lowercase())
                        .filter(|h| {
                            // An IPv6 address is written as the URL writes it: `[::1]`.
                            let ipv6 = h.starts_with('[') && h.ends_with(']');
                            !h.is_empty()
                                && !h.contains(|c: char| c.is_whitespace() || "/@?#".contains(c))
                                && (ipv6 || !h.contains(':'))
                        })
                        .ok_or_else(|| {
                            config_error(
                                name,
                                "allowed_endpoint_hosts",
                                "expected host names such as \"fcm.googleapis.com\" or \
                                 \"*.push.apple.com\" (no scheme, port or path)",
                            )
                        })?;
                    hosts.push(host);
                }
                Some(hosts)
            }
            Some(_) => {
                return Err(config_error(
                    name,
                    "allowed_endpoint_hosts",
                    "invalid type: expected a list of host names",
                ))
            }
        };

        // No redirects: a push service answers, it does not send us elsewhere.
        let http = http_client(name, USER_AGENT, timeout.min(MAX_CONNECT_TIMEOUT), timeout)?;

        Ok(Self {
            name: name.to_owned(),
            signing_key,
            public_key,
            subject: subject.to_owned(),
            ttl,
            urgency,
            timeout,
            allowed_endpoint_hosts,
            http,
            tokens: Mutex::new(HashMap::new()),
            clock: clock::from_services(ctx.services),
        })
    }

    /// Whether `url` may be contacted under `allowed_endpoint_hosts` and the https rule.
    fn endpoint_allowed(&self, url: &Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
            return false;
        };
        let listed_exactly = self
            .allowed_endpoint_hosts
            .as_ref()
            .is_some_and(|hosts| hosts.contains(&host));
        let scheme_ok = match url.scheme() {
            "https" => true,
            "http" => listed_exactly,
            _ => false,
        };
        let host_ok = match &self.allowed_endpoint_hosts {
            None => true,
            Some(hosts) => hosts.iter().any(|h| match h.strip_prefix("*.") {
                Some(parent) => host
                    .strip_suffix(parent)
                    .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
                None => *h == host,
            }),
        };
        scheme_ok && host_ok
    }

    /// `vapid t=<jwt>, k=<public key>` for `audience`, from the cache while the token has
    /// more than an hour left.
    fn authorization(&self, audience: &str) -> Result<String, ChannelError> {
        let now = self.clock.unix_secs();
        let mut tokens = self
            .tokens
            .lock()
            .map_err(|_| ChannelError::transient("VAPID token cache is poisoned"))?;
        if let Some(cached) = tokens.get(audience) {
            if now + JWT_RENEW_BEFORE_SECS < cached.exp {
                return Ok(format!("vapid t={}, k={}", cached.token, self.public_key));
            }
        }
        let exp = now + JWT_LIFETIME_SECS;
        let token = vapid_jwt(&self.signing_key, audience, exp, &self.subject);
        tokens.retain(|_, t| now + JWT_RENEW_BEFORE_SECS < t.exp);
        if tokens.len() >= JWT_CACHE_MAX {
            tokens.clear();
        }
        tokens.insert(
            audience.to_owned(),
            CachedJwt {
                token: token.clone(),
                exp,
            },
        );
        Ok(format!("vapid t={token}, k={}", self.public_key))
    }

    /// The notification JSON the service worker receives: `{"title", "body", "data", "id"}`
    /// from the rendering's `json` part, else the message's title and content.
    fn plaintext(&self, out: &Outgoing) -> Result<Vec<u8>, ChannelError> {
        let mut object = Map::new();
        let rendered = out.rendered.as_deref().and_then(|r| r.part("json"));
        match rendered.map(str::trim).filter(|t| !t.is_empty()) {
            Some(text) => {
                let value: Value = serde_json::from_str(text).map_err(|e| {
                    ChannelError::permanent(format!("the rendered push.json part is not JSON: {e}"))
                        .with_code("bad_rendering")
                })?;
                let Value::Object(rendered) = value else {
                    return Err(ChannelError::permanent(
                        "the rendered push.json part is not a JSON object",
                    )
                    .with_code("bad_rendering"));
                };
                for key in ["title", "body", "data"] {
                    if let Some(v) = rendered.get(key) {
                        object.insert(key.to_owned(), v.clone());
                    }
                }
            }
            None => {
                object.insert("title".into(), json!(out.message.title));
                object.insert("body".into(), json!(out.message.content));
                if let Some(data) = &out.message.data {
                    object.insert("data".into(), data.clone());
                }
            }
        }
        object.insert("id".into(), json!(out.message.id));
        let bytes = serde_json::to_vec(&Value::Object(object))
            .map_err(|e| ChannelError::permanent(format!("cannot encode the notification: {e}")))?;
        if bytes.len() > MAX_PLAINTEXT {
            return Err(ChannelError::permanent(format!(
                "the notification is {} bytes; Web Push carries at most {MAX_PLAINTEXT}",
                bytes.len()
            ))
            .with_code("payload_too_large"));
        }
        Ok(bytes)
    }

    /// One attempt for one device.
    async fn send_one(&self, device: &Device, plaintext: &[u8]) -> DeviceOutcome {
        let Ok(sub) = Subscription::parse(&device.token) else {
            return DeviceOutcome::Dead("malformed subscription".into());
        };
        let origin = sub.endpoint.origin().ascii_serialization();
        if !self.endpoint_allowed(&sub.endpoint) {
            return DeviceOutcome::Failed(
                ChannelError::permanent(format!(
                    "endpoint {origin} is not allowed (https only; see allowed_endpoint_hosts)"
                ))
                .with_code("endpoint_not_allowed"),
            );
        }
        let authorization = match self.authorization(&origin) {
            Ok(a) => a,
            Err(e) => return DeviceOutcome::Failed(e),
        };
        let (ephemeral, salt) = fresh_key_and_salt();
        let body = match encrypt(plaintext, &sub.p256dh, &sub.auth, &ephemeral, &salt) {
            Ok(b) => b,
            Err(e) => return DeviceOutcome::Failed(e),
        };
        let response = self
            .http
            .post(sub.endpoint.clone())
            .header("TTL", self.ttl.as_secs().to_string())
            .header("Urgency", self.urgency.as_str())
            .header("Content-Encoding", "aes128gcm")
            .header("Content-Type", "application/octet-stream")
            .header("Authorization", authorization)
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return DeviceOutcome::Failed(request_error(e, &origin)),
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v));
        let location = header("location");
        tracing::debug!(channel = %self.name, device = device.id, status, push_service = %origin, "web push answered");
        match classify(status, retry_after) {
            Verdict::Accepted => DeviceOutcome::Accepted(location),
            Verdict::Gone => DeviceOutcome::Dead(format!(
                "push service {origin} answered HTTP {status}: subscription gone"
            )),
            Verdict::Failed(e) => {
                DeviceOutcome::Failed(annotate(e, &format!("push service {origin}")))
            }
        }
    }
}

/// What happened for one device.
enum DeviceOutcome {
    Accepted(Option<String>),
    Dead(String),
    Failed(ChannelError),
}

/// The error's message prefixed with where it happened.
fn annotate(e: ChannelError, what: &str) -> ChannelError {
    let mut out = ChannelError::new(e.kind(), format!("{what}: {}", e.message()));
    if let Some(code) = e.code() {
        out = out.with_code(code);
    }
    if let Some(after) = e.retry_after() {
        out = out.with_retry_after(after);
    }
    out
}

/// How much an error matters when every device failed: config > retryable > permanent.
fn importance(e: &ChannelError) -> u8 {
    match e.kind() {
        ErrorKind::Config => 3,
        ErrorKind::RateLimited | ErrorKind::Transient => 2,
        ErrorKind::Permanent | ErrorKind::BadRecipient => 1,
    }
}

#[async_trait]
impl Channel for WebPushChannel {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        if out.devices.is_empty() {
            return Err(ChannelError::bad_recipient("no active device"));
        }
        let plaintext = self.plaintext(out)?;
        let mut accepted: Option<Option<String>> = None;
        let mut dead = 0usize;
        let mut worst: Option<ChannelError> = None;
        for device in &out.devices {
            match self.send_one(device, &plaintext).await {
                DeviceOutcome::Accepted(location) => {
                    if accepted.as_ref().is_none_or(Option::is_none) {
                        accepted = Some(location);
                    }
                }
                DeviceOutcome::Dead(reason) => {
                    tracing::debug!(channel = %self.name, device = device.id, %reason, "web push subscription is dead");
                    out.dead_devices.mark(device.id, reason);
                    dead += 1;
                }
                DeviceOutcome::Failed(e) => {
                    tracing::debug!(channel = %self.name, device = device.id, kind = e.kind().as_str(), "web push failed");
                    let replace = match &worst {
                        None => true,
                        Some(w) => {
                            importance(&e) > importance(w)
                                || (importance(&e) == importance(w)
                                    && e.retry_after() > w.retry_after())
                        }
                    };
                    if replace {
                        worst = Some(e);
                    }
                }
            }
        }
        if let Some(provider_id) = accepted {
            return Ok(Accepted::Sent { provider_id });
        }
        match worst {
            Some(e) => Err(e),
            None if dead == out.devices.len() => {
                Err(ChannelError::bad_recipient("all subscriptions gone"))
            }
            None => Err(ChannelError::transient("no device was tried")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------

/// What a push service's status means for one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Accepted for delivery.
    Accepted,
    /// The subscription is gone for good: deactivate the device.
    Gone,
    Failed(ChannelError),
}

/// The one table of push-service answers (RFC 8030 §5, RFC 8292 §4).
pub(crate) fn classify(status: u16, retry_after: Option<Duration>) -> Verdict {
    let answered = format!("answered HTTP {status}");
    let error = match status {
        200..=202 => return Verdict::Accepted,
        404 | 410 => return Verdict::Gone,
        413 => ChannelError::permanent(format!("{answered}: payload too large")),
        429 => {
            let e = ChannelError::rate_limited(format!("{answered}: too many requests"));
            match retry_after {
                Some(after) => e.with_retry_after(after),
                None => e,
            }
        }
        400 => ChannelError::permanent(format!("{answered}: bad request")),
        401 | 403 => ChannelError::config(format!(
            "{answered}: VAPID rejected (check vapid_private_key and subject; was the \
             subscription made with another applicationServerKey?)"
        )),
        408 => ChannelError::transient(format!("{answered}: request timeout")),
        500..=599 => {
            let e = ChannelError::transient(format!("{answered}: push service error"));
            match retry_after {
                Some(after) => e.with_retry_after(after),
                None => e,
            }
        }
        _ => ChannelError::permanent(format!("{answered}: unexpected answer")),
    };
    Verdict::Failed(error.with_code(format!("HTTP {status}")))
}

/// `Retry-After` in seconds (the HTTP-date form is not used by push services we know).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A request that got no answer: transient. The URL (a capability) is left out.
fn request_error(e: reqwest::Error, origin: &str) -> ChannelError {
    crate::common::request_error(e, &format!("push service {origin}"))
}

// ---------------------------------------------------------------------------------------
// Subscriptions, VAPID and RFC 8291
// ---------------------------------------------------------------------------------------

/// A parsed `PushSubscription`.
struct Subscription {
    endpoint: Url,
    p256dh: PublicKey,
    auth: [u8; 16],
}

#[derive(Deserialize)]
struct RawSubscription {
    endpoint: String,
    keys: RawKeys,
}

#[derive(Deserialize)]
struct RawKeys {
    p256dh: String,
    auth: String,
}

impl Subscription {
    /// The subscription, or which field is malformed (JSON, endpoint, keys). The errors
    /// never quote the values: the endpoint is a capability URL.
    fn parse(token: &str) -> Result<Self, InvalidDevice> {
        let raw: RawSubscription = serde_json::from_str(token).map_err(|_| {
            InvalidDevice::new(
                "subscription",
                "must be a PushSubscription: {\"endpoint\", \"keys\": {\"p256dh\", \"auth\"}}",
            )
        })?;
        let endpoint = Url::parse(raw.endpoint.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| InvalidDevice::new("subscription.endpoint", "must be an http(s) URL"))?;
        let p256dh = B64URL_LENIENT
            .decode(raw.keys.p256dh.trim())
            .ok()
            .filter(|k| k.len() == 65)
            .ok_or_else(|| {
                InvalidDevice::new(
                    "subscription.keys.p256dh",
                    "must be a base64url P-256 public key (65 bytes, uncompressed)",
                )
            })?;
        // 65 bytes are not enough: RFC 8291 §3.1 needs a point on the curve for ECDH.
        let p256dh = PublicKey::from_sec1_bytes(&p256dh).map_err(|_| {
            InvalidDevice::new(
                "subscription.keys.p256dh",
                "is not a point on the P-256 curve (RFC 8291 §3.1); send the browser's \
                 PushSubscription.toJSON() keys unchanged",
            )
        })?;
        let auth: [u8; 16] = B64URL_LENIENT
            .decode(raw.keys.auth.trim())
            .ok()
            .and_then(|a| a.try_into().ok())
            .ok_or_else(|| {
                InvalidDevice::new(
                    "subscription.keys.auth",
                    "must be a base64url 16-byte secret",
                )
            })?;
        Ok(Self {
            endpoint,
            p256dh,
            auth,
        })
    }
}

/// An ES256 JWT `{typ: JWT, alg: ES256}.{aud, exp, sub}` (RFC 8292 §2).
fn vapid_jwt(key: &SigningKey, audience: &str, exp: u64, subject: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
    let claims = json!({ "aud": audience, "exp": exp, "sub": subject });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{claims}");
    let signature: Signature = key.sign(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes().as_slice())
    )
}

/// A fresh ephemeral key pair and salt for one message.
fn fresh_key_and_salt() -> (SecretKey, [u8; 16]) {
    let mut rng = rand::rng();
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    loop {
        let mut scalar = [0u8; 32];
        rng.fill_bytes(&mut scalar);
        // Zero or ≥ n is rejected: practically never.
        if let Ok(key) = SecretKey::from_slice(&scalar) {
            return (key, salt);
        }
    }
}

fn hkdf_expand(prk: &Hkdf<Sha256>, info: &[&[u8]], out: &mut [u8]) -> Result<(), ChannelError> {
    prk.expand_multi_info(info, out)
        .map_err(|_| ChannelError::permanent("HKDF output length is invalid"))
}

/// RFC 8291 `aes128gcm`: the whole request body for `plaintext`, sent to the subscription
/// `ua_public` / `auth` with the application server's ephemeral key `as_secret` and `salt`.
pub(crate) fn encrypt(
    plaintext: &[u8],
    ua_public: &PublicKey,
    auth: &[u8; 16],
    as_secret: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, ChannelError> {
    let ua_bytes = ua_public.to_encoded_point(false);
    let as_bytes = as_secret.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_public.as_affine());

    // IKM = HKDF(salt = auth, ikm = ECDH secret, info = "WebPush: info\0" ‖ ua ‖ as).
    let key_info = Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes().as_slice());
    let mut ikm = [0u8; 32];
    hkdf_expand(
        &key_info,
        &[b"WebPush: info\0", ua_bytes.as_bytes(), as_bytes.as_bytes()],
        &mut ikm,
    )?;
    // PRK = HKDF-Extract(salt, IKM); CEK and NONCE expand from it (RFC 8188 §2.2, §2.3).
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    hkdf_expand(&prk, &[b"Content-Encoding: aes128gcm\0"], &mut cek)?;
    let mut nonce = [0u8; 12];
    hkdf_expand(&prk, &[b"Content-Encoding: nonce\0"], &mut nonce)?;

    // One record: plaintext ‖ 0x02 (the last record's padding delimiter, no padding).
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(0x02);
    let cipher = Aes128Gcm::new_from_slice(&cek)
        .map_err(|_| ChannelError::permanent("AES-128-GCM key length is invalid"))?;
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), record.as_slice())
        .map_err(|_| ChannelError::permanent("AES-128-GCM encryption failed"))?;
    if sealed.len() > RECORD_SIZE as usize {
        return Err(
            ChannelError::permanent("the record is larger than the record size")
                .with_code("payload_too_large"),
        );
    }

    let mut body = Vec::with_capacity(HEADER_LEN + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_bytes.as_bytes().len() as u8);
    body.extend_from_slice(as_bytes.as_bytes());
    body.extend_from_slice(&sealed);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::testkit::ManualClock;
    use herald_channel::testkit::{message, rendered, to_devices};
    use herald_channel::Services;

    fn b64(s: &str) -> Vec<u8> {
        B64URL_LENIENT.decode(s).unwrap()
    }

    /// RFC 8291 Appendix A, byte for byte.
    #[test]
    fn rfc8291_appendix_a() {
        let plaintext = b"When I grow up, I want to be a watermelon";
        let as_private =
            SecretKey::from_slice(&b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")).unwrap();
        let as_public = "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
        assert_eq!(
            URL_SAFE_NO_PAD.encode(as_private.public_key().to_encoded_point(false).as_bytes()),
            as_public
        );
        let ua_public = PublicKey::from_sec1_bytes(&b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        ))
        .unwrap();
        let ua_private =
            SecretKey::from_slice(&b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")).unwrap();
        assert_eq!(ua_private.public_key(), ua_public);
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let auth: [u8; 16] = b64("BTBZMqHH6r4Tts7J_aSIgg").try_into().unwrap();
        let body = encrypt(plaintext, &ua_public, &auth, &as_private, &salt).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(&body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn classification_table() {
        use ErrorKind::*;
        let after = Some(Duration::from_secs(30));
        assert_eq!(classify(201, None), Verdict::Accepted);
        assert_eq!(classify(202, None), Verdict::Accepted);
        assert_eq!(classify(200, None), Verdict::Accepted);
        assert_eq!(classify(404, None), Verdict::Gone);
        assert_eq!(classify(410, None), Verdict::Gone);
        let rows: &[(u16, Option<Duration>, ErrorKind, Option<Duration>)] = &[
            (413, None, Permanent, None),
            (429, after, RateLimited, after),
            (429, None, RateLimited, None),
            (400, None, Permanent, None),
            (401, None, Config, None),
            (403, None, Config, None),
            (408, None, Transient, None),
            (500, None, Transient, None),
            (502, None, Transient, None),
            (503, after, Transient, after),
            (301, None, Permanent, None),
            (418, None, Permanent, None),
        ];
        for &(status, retry_after, kind, expected_after) in rows {
            let Verdict::Failed(e) = classify(status, retry_after) else {
                panic!("{status} should fail");
            };
            assert_eq!(e.kind(), kind, "{status}: {e}");
            assert_eq!(e.retry_after(), expected_after, "{status}");
            assert_eq!(e.code(), Some(format!("HTTP {status}").as_str()));
        }
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    fn channel(config: Value) -> Result<WebPushChannel, ConfigError> {
        let services = Services::default();
        WebPushChannel::from_context(&BuildContext {
            name: "webpush",
            config: &config,
            services: &services,
        })
    }

    const KEY: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";

    #[test]
    fn defaults_and_public_key() {
        let ch = channel(json!({"vapid_private_key": KEY, "subject": "mailto:ops@example.com"}))
            .unwrap();
        assert_eq!(ch.ttl, Duration::from_secs(28 * 24 * 3600));
        assert_eq!(ch.urgency, Urgency::Normal);
        assert_eq!(ch.timeout, Duration::from_secs(10));
        assert_eq!(ch.public_key, "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8");
        let debug = format!("{ch:?}");
        assert!(!debug.contains(KEY), "{debug}");
    }

    #[test]
    fn the_jwt_is_cached_per_audience_until_an_hour_before_it_expires() {
        let mut ch =
            channel(json!({"vapid_private_key": KEY, "subject": "https://example.com"})).unwrap();
        let now = ManualClock::at_unix_secs(1_800_000_000);
        ch.clock = Arc::new(now.clone());
        let a = ch.authorization("https://push.example.net").unwrap();
        assert!(a.starts_with("vapid t=") && a.ends_with(&format!(", k={}", ch.public_key)));
        let claims = |auth: &str| -> Value {
            let token = auth
                .strip_prefix("vapid t=")
                .unwrap()
                .split(',')
                .next()
                .unwrap();
            let part = token.split('.').nth(1).unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
        };
        assert_eq!(
            claims(&a),
            json!({"aud": "https://push.example.net", "exp": 1_800_000_000u64 + 12 * 3600, "sub": "https://example.com"})
        );
        now.advance(Duration::from_secs(10 * 3600));
        assert_eq!(ch.authorization("https://push.example.net").unwrap(), a);
        let other = ch.authorization("https://other.example.net").unwrap();
        assert_ne!(other, a);
        now.advance(Duration::from_secs(3600 + 1));
        let renewed = ch.authorization("https://push.example.net").unwrap();
        assert_ne!(renewed, a);
        assert_eq!(
            claims(&renewed)["exp"],
            json!(1_800_000_000u64 + 23 * 3600 + 1)
        );
    }

    #[test]
    fn endpoint_policy() {
        let open = channel(json!({"vapid_private_key": KEY, "subject": "mailto:a@b.c"})).unwrap();
        let listed = channel(json!({
            "vapid_private_key": KEY, "subject": "mailto:a@b.c",
            "allowed_endpoint_hosts": ["127.0.0.1", "*.push.apple.com", "fcm.googleapis.com"],
        }))
        .unwrap();
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(open.endpoint_allowed(&url("https://fcm.googleapis.com/fcm/send/x")));
        assert!(!open.endpoint_allowed(&url("http://fcm.googleapis.com/fcm/send/x")));
        assert!(!open.endpoint_allowed(&url("http://127.0.0.1:8080/x")));
        assert!(listed.endpoint_allowed(&url("http://127.0.0.1:8080/x")));
        assert!(listed.endpoint_allowed(&url("https://web.push.apple.com/x")));
        assert!(!listed.endpoint_allowed(&url("https://push.apple.com/x")));
        assert!(!listed.endpoint_allowed(&url("https://evilpush.apple.com.example/x")));
        assert!(!listed.endpoint_allowed(&url("http://web.push.apple.com/x")));
        assert!(listed.endpoint_allowed(&url("https://FCM.googleapis.com/x")));
        assert!(!listed.endpoint_allowed(&url("https://updates.push.services.mozilla.com/x")));
        let v6 = channel(json!({
            "vapid_private_key": KEY, "subject": "mailto:a@b.c",
            "allowed_endpoint_hosts": ["[::1]"],
        }))
        .unwrap();
        assert!(v6.endpoint_allowed(&url("http://[::1]:8080/x")));
    }

    #[test]
    fn plaintext_from_rendering_or_message_and_size_limit() {
        let ch = channel(json!({"vapid_private_key": KEY, "subject": "mailto:a@b.c"})).unwrap();
        let mut out = to_devices(message("Hello", "World"), "42", &["{}"]);
        let p: Value = serde_json::from_slice(&ch.plaintext(&out).unwrap()).unwrap();
        assert_eq!(
            p,
            json!({"title": "Hello", "body": "World", "id": out.message.id})
        );
        out.rendered = Some(rendered(&[(
            "json",
            r#"{"title": "T", "body": "B", "data": {"url": "/r/1"}, "extra": 1}"#,
        )]));
        let p: Value = serde_json::from_slice(&ch.plaintext(&out).unwrap()).unwrap();
        assert_eq!(
            p,
            json!({"title": "T", "body": "B", "data": {"url": "/r/1"}, "id": out.message.id})
        );
        out.rendered = Some(rendered(&[("json", "[1]")]));
        assert_eq!(
            ch.plaintext(&out).unwrap_err().code(),
            Some("bad_rendering")
        );

        let big = to_devices(message("Hello", &"x".repeat(MAX_PLAINTEXT)), "42", &["{}"]);
        let e = ch.plaintext(&big).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Permanent);
        assert_eq!(e.code(), Some("payload_too_large"));
        // The limit is exact: the largest plaintext makes a 4096-byte body.
        let (key, salt) = fresh_key_and_salt();
        let ua = fresh_key_and_salt().0.public_key();
        let body = encrypt(&[b'x'; MAX_PLAINTEXT], &ua, &[7; 16], &key, &salt).unwrap();
        assert_eq!(body.len(), MAX_BODY);
    }

    #[test]
    fn subscriptions() {
        let ua = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
        let good = json!({"endpoint": "https://push.example.net/p/abc", "expirationTime": null,
            "keys": {"p256dh": ua, "auth": "BTBZMqHH6r4Tts7J_aSIgg"}});
        assert!(Subscription::parse(&good.to_string()).is_ok());
        assert_eq!(check_subscription(&good.to_string()), Ok(()));
        // 0x04 ‖ x ‖ y with y wrong: 65 bytes, uncompressed, but not on the curve.
        let mut off_curve = B64URL_LENIENT.decode(ua).unwrap();
        off_curve[64] ^= 1;
        let off_curve = URL_SAFE_NO_PAD.encode(off_curve);
        for (bad, field) in [
            ("not json".to_owned(), "subscription"),
            (json!({"endpoint": "https://x/"}).to_string(), "subscription"),
            (json!({"endpoint": "ftp://x/", "keys": {"p256dh": ua, "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}).to_string(), "subscription.endpoint"),
            (json!({"endpoint": "https://x/", "keys": {"p256dh": "AAAA", "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}).to_string(), "subscription.keys.p256dh"),
            (json!({"endpoint": "https://x/", "keys": {"p256dh": off_curve, "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}).to_string(), "subscription.keys.p256dh"),
            (json!({"endpoint": "https://x/", "keys": {"p256dh": ua, "auth": "AAAA"}}).to_string(), "subscription.keys.auth"),
        ] {
            let e = check_subscription(&bad).unwrap_err();
            assert_eq!(e.field, field, "{bad}: {e:?}");
            assert!(!e.message.contains("https://x/"), "{e:?}");
        }
        // Registered for the platform, so the core runs it at registration.
        let e = herald_channel::check_device(
            "webpush",
            &json!({"endpoint": "https://x/", "keys": {"p256dh": off_curve, "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}).to_string(),
        )
        .unwrap_err();
        assert!(e.message.contains("P-256"), "{e:?}");
    }
}
