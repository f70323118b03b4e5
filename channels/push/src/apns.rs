//! `push.apns`: the Apple Push Notification service's HTTP/2 provider API, with token-based
//! (`.p8` key, ES256 JWT) authentication.
//!
//! One `send` is one `POST {endpoint}/3/device/{token}` per device of the receiver, all on
//! the instance's one HTTP/2 connection (TLS with ALPN `h2`; cleartext `h2c` by prior
//! knowledge when `endpoint` is `http://`, which only the tests use).
//!
//! Configuration (`[channels.<name>]`, `kind = "push.apns"`):
//!
//! * `team_id`, `key_id` (required): the Apple developer team and the APNs key's id.
//! * `private_key` (secret) **or** `private_key_file` — exactly one: the `AuthKey_<key id>.p8`
//!   file's contents (PEM, PKCS#8, P-256), or its path.
//! * `topic` (required): the app's bundle id (`com.example.app`).
//! * `endpoint` (default `https://api.push.apple.com`); `sandbox = true` selects
//!   `https://api.sandbox.push.apple.com` instead (set one of the two, not both).
//! * `push_type` (default `alert`): the `apns-push-type` header. `alert` sends
//!   `aps.alert = {title, body}`; `background` sends `aps.content-available = 1`.
//! * `priority` (default 10; 5 for `background`): `apns-priority`, one of 1, 5, 10.
//! * `ttl` (default `"4w"`): `apns-expiration` is set to now + `ttl` (unix seconds), so APNs
//!   stores the notification for an offline device (it keeps the latest one per app) until
//!   then; `ttl = "0s"` sends `apns-expiration: 0` (deliver now or never, never stored).
//! * `timeout` (default `"10s"`): per request.
//!
//! Every request also carries `apns-topic`, `apns-collapse-id` (the message id, at most
//! 64 bytes) and a JSON body `{"aps": {…}, <data keys>…}` where the data keys come from the
//! rendered `push` template (or are just `messageId`).
//!
//! **Provider token.** One ES256 JWT (`{alg: ES256, kid: key_id}.{iss: team_id, iat}`) per
//! APNs key for the whole cluster: it lives in the core's shared cache under
//! `herald:token:apns:<team_id>:<key_id>` for 50 minutes (Apple refuses tokens older than an
//! hour), is signed by one caller in the cluster when there is none ([`crate::token`]), and
//! is reused by every instance and node with that key. So the cluster makes a new one every
//! 50 minutes, never within 20 minutes of the previous one (Apple answers 429
//! `TooManyProviderTokenUpdates` otherwise), unless Apple refused it:
//!
//! * 403 `ExpiredProviderToken` for a token at least 20 minutes old by this node's clock
//!   (e.g. signed by a node whose clock is behind): it is deleted from the shared cache, the
//!   cluster's replacement is taken (signed once) and the device retried once. For a younger
//!   token this host's clock disagrees with Apple's: a new token would be as stale and count
//!   as an update too many, so the send fails `transient` (unless another node has already
//!   replaced it).
//! * 403 `InvalidProviderToken` for a token this instance's key did not sign (another
//!   instance or node signed it with another key): replaced the same way and retried once. A
//!   token this key signed is refused for the key itself: `config`.
//!
//! The clock is the SDK's ([`herald_channel::clock`]), injectable through
//! [`herald_channel::Services`].
//!
//! Invariants: no other retry, no sleep, no store; the private key and the JWT never appear
//! in errors, logs or `Debug` output; device tokens are hex-checked before they enter a URL.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald_channel::clock::{self, Clock};
use herald_channel::http::{build_client, client_builder, MAX_CONNECT_TIMEOUT};
use herald_channel::{
    async_trait, Accepted, BuildContext, Channel, ChannelError, ConfigError, ErrorKind, Outgoing,
};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::DecodePrivateKey;
use p256::SecretKey;
use serde_json::{json, Map, Value};

use crate::common::{
    config_error, content, duration_value, endpoint_value, finish, payload_too_large,
    request_error, retry_after_header, secret_value, string_value, timeout_value, vendor_text,
    Content, Outcome, Secret, Verdict,
};
use crate::token::{Fresh, SharedToken};

const PRODUCTION: &str = "https://api.push.apple.com";
const SANDBOX: &str = "https://api.sandbox.push.apple.com";
/// A provider token is replaced once it is this old (Apple: at most 60 minutes).
const REFRESH_AFTER_SECS: u64 = 50 * 60;
/// …and never sooner than this after the previous one (Apple: at most every 20 minutes).
const MIN_REFRESH_INTERVAL_SECS: u64 = 20 * 60;
const MAX_COLLAPSE_ID: usize = 64;
const DEFAULT_TTL: &str = "4w";
const USER_AGENT: &str = concat!("herald-apns/", env!("CARGO_PKG_VERSION"));

/// The shared cache's key for the provider token of an APNs key.
pub(crate) fn cache_key(team_id: &str, key_id: &str) -> String {
    format!("herald:token:apns:{team_id}:{key_id}")
}

/// The descriptor's `build` (registered in `lib.rs`).
pub(crate) fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    Ok(Arc::new(ApnsChannel::from_context(&ctx)?))
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    team_id: Option<Value>,
    key_id: Option<Value>,
    private_key: Option<Value>,
    private_key_file: Option<Value>,
    topic: Option<Value>,
    endpoint: Option<Value>,
    sandbox: Option<Value>,
    push_type: Option<Value>,
    priority: Option<Value>,
    ttl: Option<Value>,
    timeout: Option<Value>,
}

const PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "location",
    "pushtotalk",
    "widgets",
    "controls",
];

fn parse_ec_key(pem: &str) -> Result<SigningKey, &'static str> {
    let key = SecretKey::from_pkcs8_pem(pem.trim()).map_err(|_| {
        "not a PEM PKCS#8 P-256 private key (the AuthKey_<key id>.p8 file's contents)"
    })?;
    Ok(SigningKey::from(&key))
}

fn apple_id(name: &str, key: &str, value: Option<&Value>) -> Result<String, ConfigError> {
    let id = string_value(name, key, value)?
        .ok_or_else(|| config_error(name, key, "missing"))?
        .trim();
    if id.len() != 10 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(config_error(
            name,
            key,
            format!("`{id}`: expected Apple's 10-character id (e.g. \"ABC123DEFG\")"),
        ));
    }
    Ok(id.to_owned())
}

// ---------------------------------------------------------------------------------------
// The channel
// ---------------------------------------------------------------------------------------

/// One configured `push.apns` instance.
pub struct ApnsChannel {
    name: String,
    team_id: String,
    key_id: String,
    key: SigningKey,
    topic: String,
    /// Base URL without a trailing `/`.
    endpoint: String,
    push_type: String,
    priority: u8,
    ttl: Duration,
    timeout: Duration,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    /// The provider token, shared by every instance and node with this team and key.
    tokens: SharedToken,
}

impl fmt::Debug for ApnsChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsChannel")
            .field("name", &self.name)
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .field("private_key", &"<redacted>")
            .field("topic", &self.topic)
            .field("endpoint", &self.endpoint)
            .field("push_type", &self.push_type)
            .field("priority", &self.priority)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ApnsChannel {
    /// Validates the instance's configuration; every error names the key and never
    /// contains the private key.
    pub fn from_context(ctx: &BuildContext<'_>) -> Result<Self, ConfigError> {
        let raw: RawConfig = herald_channel::parse_config(ctx)?;
        let name = ctx.name;
        let team_id = apple_id(name, "team_id", raw.team_id.as_ref())?;
        let key_id = apple_id(name, "key_id", raw.key_id.as_ref())?;
        let inline = secret_value(name, "private_key", raw.private_key.as_ref())?;
        let file = string_value(name, "private_key_file", raw.private_key_file.as_ref())?;
        let key = match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    name,
                    "private_key, private_key_file: set exactly one",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    name,
                    "private_key: missing; set `private_key` (the .p8 file's contents) or \
                     `private_key_file` (its path)",
                ))
            }
            (Some(pem), None) => {
                parse_ec_key(pem.expose()).map_err(|e| config_error(name, "private_key", e))?
            }
            (None, Some(path)) => {
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    config_error(name, "private_key_file", format!("`{path}`: {e}"))
                })?;
                parse_ec_key(&pem)
                    .map_err(|e| config_error(name, "private_key_file", format!("`{path}`: {e}")))?
            }
        };
        let topic = string_value(name, "topic", raw.topic.as_ref())?
            .map(str::trim)
            .ok_or_else(|| config_error(name, "topic", "missing; set the app's bundle id"))?;
        if topic.is_empty()
            || !topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(config_error(
                name,
                "topic",
                format!("`{topic}`: expected a bundle id such as \"com.example.app\""),
            ));
        }
        let sandbox = match raw.sandbox {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(config_error(name, "sandbox", "expected true or false")),
        };
        let endpoint = match (&raw.endpoint, sandbox) {
            (Some(_), true) => {
                return Err(ConfigError::new(
                    name,
                    "endpoint, sandbox: set one of the two (sandbox = true means endpoint = \
                     \"https://api.sandbox.push.apple.com\")",
                ))
            }
            (None, true) => SANDBOX.to_owned(),
            (e, false) => endpoint_value(name, "endpoint", e.as_ref(), PRODUCTION)?,
        };
        let push_type = string_value(name, "push_type", raw.push_type.as_ref())?
            .unwrap_or("alert")
            .trim()
            .to_owned();
        if !PUSH_TYPES.contains(&push_type.as_str()) {
            return Err(config_error(
                name,
                "push_type",
                format!("`{push_type}`: expected one of {}", PUSH_TYPES.join(", ")),
            ));
        }
        let priority = match raw.priority {
            None if push_type == "background" => 5,
            None => 10,
            Some(Value::Number(n)) if matches!(n.as_u64(), Some(1 | 5 | 10)) => {
                n.as_u64().unwrap_or(10) as u8
            }
            Some(_) => return Err(config_error(name, "priority", "expected 1, 5 or 10")),
        };
        if push_type == "background" && priority == 10 {
            return Err(config_error(
                name,
                "priority",
                "background pushes must use priority 5 (or 1)",
            ));
        }
        let ttl = duration_value(name, "ttl", raw.ttl.as_ref(), DEFAULT_TTL)?;
        let timeout = timeout_value(name, raw.timeout.as_ref())?;
        let mut builder = client_builder(USER_AGENT, timeout.min(MAX_CONNECT_TIMEOUT), timeout);
        if endpoint.starts_with("http://") {
            // h2c: HTTP/2 without TLS by prior knowledge (a local APNs in tests).
            builder = builder.http2_prior_knowledge();
        }
        let http = build_client(name, builder)?;
        let clock = clock::from_services(ctx.services);
        Ok(Self {
            name: name.to_owned(),
            tokens: SharedToken::new(ctx.services, cache_key(&team_id, &key_id), clock.clone()),
            team_id,
            key_id,
            key,
            topic: topic.to_owned(),
            endpoint,
            push_type,
            priority,
            ttl,
            timeout,
            http,
            clock,
        })
    }

    fn jwt(&self, iat: u64) -> Secret {
        let header = json!({"alg": "ES256", "kid": self.key_id});
        let claims = json!({"iss": self.team_id, "iat": iat});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = self.key.sign(input.as_bytes());
        Secret::new(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }

    /// The cluster's provider token, or a new one signed by one caller in the cluster when
    /// there is none (the last one is 50 minutes old).
    async fn provider_token(&self) -> Result<Secret, ChannelError> {
        self.tokens.get(None, || self.sign_new()).await
    }

    async fn sign_new(&self) -> Result<Fresh, ChannelError> {
        let now = self.clock.unix_secs();
        tracing::debug!(channel = %self.name, "APNs provider token signed");
        Ok(Fresh {
            token: self.jwt(now),
            reuse_secs: REFRESH_AFTER_SECS,
        })
    }

    /// After Apple refused `jwt` with `reason` (`ExpiredProviderToken` or
    /// `InvalidProviderToken`): the token to retry with, `Ok(None)` when no other token can
    /// help (the answer is classified as it is), or the error to report. See the module's
    /// documentation.
    async fn replace_provider_token(
        &self,
        jwt: &Secret,
        reason: &str,
    ) -> Result<Option<Secret>, ChannelError> {
        if reason == "ExpiredProviderToken" {
            let now = self.clock.unix_secs();
            let age = jwt_iat(jwt.expose()).map_or(u64::MAX, |iat| now.saturating_sub(iat));
            if age < MIN_REFRESH_INTERVAL_SECS {
                // Not ours to replace yet; another node may have done it already.
                if let Some(other) = self.tokens.other_than(jwt).await {
                    return Ok(Some(other));
                }
                return Err(ChannelError::transient(format!(
                    "APNs says the provider token expired, but it is only {age} s old and \
                     Apple allows one new token per 20 minutes; check the host's clock"
                ))
                .with_code("ExpiredProviderToken"));
            }
        } else if self.signed_with_our_key(jwt.expose()) {
            return Ok(None);
        }
        self.tokens
            .get(Some(jwt), || self.sign_new())
            .await
            .map(Some)
    }

    /// Whether this instance's key signed `jwt` (then a new token from it is refused too).
    fn signed_with_our_key(&self, jwt: &str) -> bool {
        let Some((input, signature)) = jwt.rsplit_once('.') else {
            return false;
        };
        let Some(signature) = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|s| Signature::from_slice(&s).ok())
        else {
            return false;
        };
        VerifyingKey::from(&self.key)
            .verify(input.as_bytes(), &signature)
            .is_ok()
    }

    /// `{"aps": {…}, <data>…}`.
    fn body(&self, content: &Content) -> Value {
        let aps = if self.push_type == "background" {
            json!({"content-available": 1})
        } else {
            json!({"alert": {"title": content.title, "body": content.body}})
        };
        let mut body = Map::new();
        body.insert("aps".into(), aps);
        for (k, v) in &content.data {
            if k != "aps" {
                body.insert(k.clone(), json!(v));
            }
        }
        Value::Object(body)
    }

    fn expiration(&self) -> u64 {
        if self.ttl.is_zero() {
            0
        } else {
            self.clock.unix_secs() + self.ttl.as_secs()
        }
    }

    async fn send_one(&self, device_token: &str, collapse_id: &str, body: &[u8]) -> Outcome {
        let url = format!("{}/3/device/{device_token}", self.endpoint);
        let mut token = match self.provider_token().await {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(e),
        };
        let mut retried = false;
        loop {
            let response = match self
                .http
                .post(&url)
                .header("authorization", format!("bearer {}", token.expose()))
                .header("apns-topic", &self.topic)
                .header("apns-push-type", &self.push_type)
                .header("apns-priority", self.priority.to_string())
                .header("apns-expiration", self.expiration().to_string())
                .header("apns-collapse-id", collapse_id)
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(request_error(e, "APNs")),
            };
            let status = response.status().as_u16();
            let retry_after = retry_after_header(response.headers());
            let apns_id = response
                .headers()
                .get("apns-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if (200..300).contains(&status) {
                return Outcome::Sent(apns_id);
            }
            let text = response.text().await.unwrap_or_default();
            let reason = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned));
            if let Some(r @ ("ExpiredProviderToken" | "InvalidProviderToken")) = reason.as_deref() {
                if status == 403 && !retried {
                    // Replaced (for the whole cluster) and this device retried once.
                    retried = true;
                    match self.replace_provider_token(&token, r).await {
                        Ok(Some(t)) => {
                            token = t;
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => return Outcome::Failed(e),
                    }
                }
            }
            let reason = reason.map(|r| vendor_text(&r, &[device_token]));
            return match classify(status, reason.as_deref(), retry_after) {
                Verdict::Dead(reason) => Outcome::Dead(reason),
                Verdict::Failed(e) => Outcome::Failed(e),
            };
        }
    }
}

/// APNs' limit on the JSON payload: "For Voice over Internet Protocol (VoIP)
/// notifications, the maximum size is 5 KB (5120 bytes). For all other remote
/// notifications, the maximum size is 4 KB (4096 bytes)"
/// (<https://developer.apple.com/documentation/usernotifications/generating-a-remote-notification>);
/// APNs answers 413 `PayloadTooLarge` beyond it.
pub(crate) fn max_payload(push_type: &str) -> usize {
    if push_type == "voip" {
        5120
    } else {
        4096
    }
}

/// The `iat` claim of a provider token.
fn jwt_iat(jwt: &str) -> Option<u64> {
    let claims = jwt.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
    claims.get("iat")?.as_u64()
}

/// APNs device tokens are hex (64 characters today; Apple says not to assume a length).
fn valid_device_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= 400 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

#[async_trait]
impl Channel for ApnsChannel {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        if out.devices.is_empty() {
            return Err(ChannelError::bad_recipient("no active device").with_code("no_device"));
        }
        let content = content(out)?;
        let body = self.body(&content).to_string().into_bytes();
        let limit = max_payload(&self.push_type);
        if body.len() > limit {
            return Err(payload_too_large(
                "the APNs payload",
                "APNs",
                body.len(),
                limit,
            ));
        }
        // At most 64 bytes, cut plainly (a header takes no ellipsis).
        let id = out.message.id.as_str();
        let mut end = id.len().min(MAX_COLLAPSE_ID);
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        let collapse_id = &id[..end];
        let mut outcomes = Vec::with_capacity(out.devices.len());
        for device in &out.devices {
            let token = device.token.trim();
            let outcome = if valid_device_token(token) {
                self.send_one(token, collapse_id, &body).await
            } else {
                Outcome::Dead("BadDeviceToken (not a hex device token)".into())
            };
            if let Outcome::Dead(reason) = &outcome {
                out.dead_devices.mark(device.id, reason.clone());
            }
            let stop = matches!(&outcome, Outcome::Failed(e) if e.kind() == ErrorKind::Config);
            outcomes.push(outcome);
            if stop {
                break;
            }
        }
        finish(outcomes)
    }
}

/// APNs' HTTP status and `reason` → what to do. Unknown reasons are transient, code kept.
pub(crate) fn classify(
    status: u16,
    reason: Option<&str>,
    retry_after: Option<Duration>,
) -> Verdict {
    let code = reason
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let answered = format!("APNs answered HTTP {status} {code}");
    let e = match (status, reason) {
        (410, r) => return Verdict::Dead(r.unwrap_or("Unregistered").to_owned()),
        (_, Some(r @ ("Unregistered" | "BadDeviceToken" | "DeviceTokenNotForTopic"))) => {
            return Verdict::Dead(r.to_owned())
        }
        (
            _,
            Some(
                "InvalidProviderToken"
                | "MissingProviderToken"
                | "BadCertificate"
                | "BadCertificateEnvironment"
                | "Forbidden"
                | "BadTopic"
                | "TopicDisallowed"
                | "MissingTopic"
                | "BadPath"
                | "MethodNotAllowed",
            ),
        ) => ChannelError::config(format!(
            "{answered}; check team_id, key_id, private_key, topic and endpoint"
        )),
        (
            _,
            Some(
                "PayloadTooLarge" | "PayloadEmpty" | "BadCollapseId" | "BadExpirationDate"
                | "BadMessageId" | "BadPriority" | "DuplicateHeaders" | "InvalidPushType"
                | "MissingDeviceToken",
            ),
        ) => ChannelError::permanent(answered),
        (_, Some("TooManyRequests")) => ChannelError::rate_limited(answered),
        (
            _,
            Some(
                "ExpiredProviderToken"
                | "TooManyProviderTokenUpdates"
                | "IdleTimeout"
                | "InternalServerError"
                | "ServiceUnavailable"
                | "Shutdown",
            ),
        ) => ChannelError::transient(answered),
        (_, Some(_)) => ChannelError::transient(answered),
        (413, None) => ChannelError::permanent(answered),
        (429, None) => ChannelError::rate_limited(answered),
        (400, None) => ChannelError::permanent(answered),
        (403..=405, None) => {
            ChannelError::config(format!("{answered}; check the credentials and endpoint"))
        }
        (_, None) => ChannelError::transient(answered),
    };
    let e = e.with_code(code);
    Verdict::Failed(match retry_after {
        Some(after) if e.is_retryable() => e.with_retry_after(after),
        _ => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// status, code, Retry-After → kind, code, retry_after.
    type Row = (
        u16,
        Option<&'static str>,
        Option<Duration>,
        ErrorKind,
        &'static str,
        Option<Duration>,
    );

    #[test]
    fn classification_table() {
        use ErrorKind::*;
        let after = Some(Duration::from_secs(30));
        for (status, reason, dead) in [
            (410, Some("Unregistered"), "Unregistered"),
            (410, Some("ExpiredToken"), "ExpiredToken"),
            (410, None, "Unregistered"),
            (400, Some("BadDeviceToken"), "BadDeviceToken"),
            (
                400,
                Some("DeviceTokenNotForTopic"),
                "DeviceTokenNotForTopic",
            ),
        ] {
            assert_eq!(
                classify(status, reason, None),
                Verdict::Dead(dead.into()),
                "{status} {reason:?}"
            );
        }
        let rows: &[Row] = &[
            (
                403,
                Some("InvalidProviderToken"),
                None,
                Config,
                "InvalidProviderToken",
                None,
            ),
            (
                403,
                Some("MissingProviderToken"),
                None,
                Config,
                "MissingProviderToken",
                None,
            ),
            (400, Some("BadTopic"), None, Config, "BadTopic", None),
            (
                400,
                Some("TopicDisallowed"),
                None,
                Config,
                "TopicDisallowed",
                None,
            ),
            (
                413,
                Some("PayloadTooLarge"),
                None,
                Permanent,
                "PayloadTooLarge",
                None,
            ),
            (413, None, None, Permanent, "HTTP 413", None),
            (
                400,
                Some("BadCollapseId"),
                None,
                Permanent,
                "BadCollapseId",
                None,
            ),
            (
                400,
                Some("BadExpirationDate"),
                None,
                Permanent,
                "BadExpirationDate",
                None,
            ),
            (
                429,
                Some("TooManyRequests"),
                after,
                RateLimited,
                "TooManyRequests",
                after,
            ),
            (429, None, None, RateLimited, "HTTP 429", None),
            (
                429,
                Some("TooManyProviderTokenUpdates"),
                None,
                Transient,
                "TooManyProviderTokenUpdates",
                None,
            ),
            (
                403,
                Some("ExpiredProviderToken"),
                None,
                Transient,
                "ExpiredProviderToken",
                None,
            ),
            (
                500,
                Some("InternalServerError"),
                None,
                Transient,
                "InternalServerError",
                None,
            ),
            (
                503,
                Some("ServiceUnavailable"),
                after,
                Transient,
                "ServiceUnavailable",
                after,
            ),
            (503, Some("Shutdown"), None, Transient, "Shutdown", None),
            (
                400,
                Some("SomethingNew"),
                None,
                Transient,
                "SomethingNew",
                None,
            ),
            (502, None, None, Transient, "HTTP 502", None),
            (403, None, after, Config, "HTTP 403", None),
        ];
        for &(status, reason, retry_after, kind, code, expected_after) in rows {
            let Verdict::Failed(e) = classify(status, reason, retry_after) else {
                panic!("{status} {reason:?} should fail");
            };
            assert_eq!(e.kind(), kind, "{status} {reason:?}: {e}");
            assert_eq!(e.code(), Some(code), "{status} {reason:?}");
            assert_eq!(e.retry_after(), expected_after, "{status} {reason:?}");
        }
    }

    #[test]
    fn device_tokens_are_hex() {
        assert!(valid_device_token(&"ab01".repeat(16)));
        assert!(!valid_device_token(""));
        assert!(!valid_device_token("../../3/device/x"));
        assert!(!valid_device_token("abc?x=1"));
    }

    #[test]
    fn payload_limits_are_apples() {
        assert_eq!(max_payload("voip"), 5120);
        for push_type in [
            "alert",
            "background",
            "location",
            "complication",
            "fileprovider",
        ] {
            assert_eq!(max_payload(push_type), 4096, "{push_type}");
        }
    }
}
