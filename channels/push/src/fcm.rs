//! `push.fcm`: Firebase Cloud Messaging, HTTP v1 API, to Android (and FCM-registered iOS
//! and web) devices.
//!
//! One `send` is one `POST {endpoint}/v1/projects/{project}/messages:send` per device of the
//! receiver, authorised with an OAuth 2 access token that a service account obtains by
//! posting an RS256-signed JWT assertion to its `token_uri`.
//!
//! Configuration (`[channels.<name>]`, `kind = "push.fcm"`):
//!
//! * `service_account` (secret) **or** `service_account_file` — exactly one: the service
//!   account JSON that the Firebase console downloads (its text, or the file's path). Used:
//!   `client_email`, `private_key` (PEM, PKCS#8 RSA), `token_uri`
//!   (default `https://oauth2.googleapis.com/token`), `project_id`.
//! * `project_id` (optional): overrides the service account's.
//! * `endpoint` (default `https://fcm.googleapis.com`): the FCM base URL.
//! * `timeout` (default `"10s"`): per HTTP request.
//! * `android`, `apns` (optional tables): copied verbatim into every message's `android` /
//!   `apns` field (e.g. `android = { priority = "high" }`).
//!
//! **Access tokens.** One per service account for the whole cluster: it lives in the core's
//! shared cache under `herald:token:fcm:<client_email>` until 5 minutes before Google's
//! `expires_in`, is fetched by one caller in the cluster at a time (the others wait for it)
//! and copied in-process for at most a minute ([`crate::token`]). A send answered 401
//! `UNAUTHENTICATED` (token revoked or expired early) deletes that token from the shared
//! cache, takes the new one (fetched once for the whole cluster) and is retried once, within
//! the same attempt.
//!
//! **Clock.** Token expiry and the assertion's `iat` read the SDK's clock
//! ([`herald_channel::clock`]), which a host (or a test) may lend through
//! [`herald_channel::Services`]; the system clock otherwise.
//!
//! Invariants: no retry beyond that one re-authorisation, no sleep, no store; the private
//! key, the assertion and access tokens never appear in errors, logs or `Debug` output.
//!
//! What it shares with `push.apns` (content, outcome aggregation, configuration helpers) is
//! in `common.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald_channel::clock::{self, Clock};
use herald_channel::http::{http_client, MAX_CONNECT_TIMEOUT};
use herald_channel::{
    async_trait, Accepted, BuildContext, Channel, ChannelError, ConfigError, ErrorKind, Outgoing,
};
use reqwest::Url;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use serde_json::{json, Map, Value};
use sha2::Sha256;

use crate::common::{
    config_error, content, endpoint_value, finish, payload_too_large, request_error,
    retry_after_header, secret_value, string_value, timeout_value, truncate_bytes, vendor_text,
    Content, Outcome, Secret, Verdict,
};
use crate::token::{Fresh, SharedToken};

const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The assertion's life (Google accepts at most one hour).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// An access token is replaced this long before Google says it expires.
const REFRESH_MARGIN_SECS: u64 = 300;
const USER_AGENT: &str = concat!("herald-fcm/", env!("CARGO_PKG_VERSION"));

/// FCM's payload limit, for notification and data messages alike: "Maximum payload for
/// both message types is 4096 bytes"
/// (<https://firebase.google.com/docs/cloud-messaging/customize-messages/set-message-type>).
/// `push.apns` has its own (`apns::max_payload`).
const MAX_PAYLOAD: usize = 4096;

/// The shared cache's key for a service account's access token.
pub(crate) fn cache_key(client_email: &str) -> String {
    format!("herald:token:fcm:{client_email}")
}

/// How long an access token with this `expires_in` is used.
fn reuse_secs(expires_in: u64) -> u64 {
    if expires_in > 2 * REFRESH_MARGIN_SECS {
        expires_in - REFRESH_MARGIN_SECS
    } else {
        expires_in / 2
    }
}

/// The descriptor's `build` (registered in `lib.rs`).
pub(crate) fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    Ok(Arc::new(FcmChannel::from_context(&ctx)?))
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// The raw table: every value is checked below so each error names its key (and a wrongly
/// typed secret is never echoed, as serde's type errors would).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    service_account: Option<Value>,
    service_account_file: Option<Value>,
    project_id: Option<Value>,
    endpoint: Option<Value>,
    timeout: Option<Value>,
    android: Option<Value>,
    apns: Option<Value>,
}

/// What the channel uses of a service account.
struct ServiceAccount {
    client_email: String,
    private_key_id: Option<String>,
    key: SigningKey<Sha256>,
    token_uri: String,
    project_id: Option<String>,
}

/// Parse the service account JSON. Errors never quote the text.
fn parse_service_account(text: &str) -> Result<ServiceAccount, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "not valid JSON (line {}, column {}); expected the service account key file's \
             contents",
            e.line(),
            e.column()
        )
    })?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::trim);
    if let Some(t) = field("type") {
        if t != "service_account" {
            return Err(format!(
                "`type` is `{}`, expected `service_account`",
                truncate_bytes(t, 40)
            ));
        }
    }
    let client_email = field("client_email")
        .filter(|s| !s.is_empty())
        .ok_or("`client_email` is missing")?
        .to_owned();
    let pem = v
        .get("private_key")
        .and_then(Value::as_str)
        .ok_or("`private_key` is missing")?;
    let key = parse_rsa_key(pem)?;
    let token_uri = field("token_uri").unwrap_or(DEFAULT_TOKEN_URI).to_owned();
    let url = Url::parse(&token_uri).map_err(|_| "`token_uri` is not a URL".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("`token_uri` is not an http(s) URL".into());
    }
    Ok(ServiceAccount {
        client_email,
        private_key_id: field("private_key_id")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        key,
        token_uri,
        project_id: field("project_id")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    })
}

/// An RSA key from PEM (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA PRIVATE KEY`).
fn parse_rsa_key(pem: &str) -> Result<SigningKey<Sha256>, String> {
    let pem = pem.trim();
    let key = if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
        RsaPrivateKey::from_pkcs1_pem(pem).ok()
    } else {
        RsaPrivateKey::from_pkcs8_pem(pem).ok()
    };
    let key = key.ok_or(
        "`private_key` is not a PEM RSA private key (-----BEGIN PRIVATE KEY-----)".to_owned(),
    )?;
    Ok(SigningKey::<Sha256>::new(key))
}

/// A JSON table copied into every message (`android`, `apns`).
fn table_value(name: &str, key: &str, value: Option<Value>) -> Result<Option<Value>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v)),
        Some(_) => Err(config_error(name, key, "expected a table")),
    }
}

// ---------------------------------------------------------------------------------------
// The channel
// ---------------------------------------------------------------------------------------

/// One configured `push.fcm` instance.
pub struct FcmChannel {
    name: String,
    account: ServiceAccount,
    project_id: String,
    /// Base URL without a trailing `/`.
    endpoint: String,
    timeout: Duration,
    android: Option<Value>,
    apns: Option<Value>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    /// The access token, shared by every instance and node with this service account.
    tokens: SharedToken,
}

impl fmt::Debug for FcmChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmChannel")
            .field("name", &self.name)
            .field("client_email", &self.account.client_email)
            .field("private_key", &"<redacted>")
            .field("token_uri", &self.account.token_uri)
            .field("project_id", &self.project_id)
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl FcmChannel {
    /// Validates the instance's configuration; every error names the key
    /// (`channels.<name>: <key>: …`) and never contains the private key.
    pub fn from_context(ctx: &BuildContext<'_>) -> Result<Self, ConfigError> {
        let raw: RawConfig = herald_channel::parse_config(ctx)?;
        let name = ctx.name;
        let inline = secret_value(name, "service_account", raw.service_account.as_ref())?;
        let file = string_value(
            name,
            "service_account_file",
            raw.service_account_file.as_ref(),
        )?;
        let (key, text) = match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    name,
                    "service_account, service_account_file: set exactly one",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    name,
                    "service_account: missing; set `service_account` (the key file's JSON) or \
                     `service_account_file` (its path)",
                ))
            }
            (Some(text), None) => ("service_account", text.expose().to_owned()),
            (None, Some(path)) => (
                "service_account_file",
                std::fs::read_to_string(path).map_err(|e| {
                    config_error(name, "service_account_file", format!("`{path}`: {e}"))
                })?,
            ),
        };
        let account = parse_service_account(&text).map_err(|e| config_error(name, key, e))?;
        let project_id = match string_value(name, "project_id", raw.project_id.as_ref())? {
            Some(p) => Some(p.trim().to_owned()),
            None => account.project_id.clone(),
        };
        let project_id = match project_id {
            Some(p) if valid_project_id(&p) => p,
            Some(_) => {
                return Err(config_error(
                    name,
                    "project_id",
                    "expected a Firebase project id (letters, digits, `-`)",
                ))
            }
            None => {
                return Err(config_error(
                    name,
                    "project_id",
                    format!(
                    "missing: neither `project_id` nor the service account's (`{key}`) sets one"
                ),
                ))
            }
        };
        let endpoint = endpoint_value(name, "endpoint", raw.endpoint.as_ref(), DEFAULT_ENDPOINT)?;
        let timeout = timeout_value(name, raw.timeout.as_ref())?;
        let android = table_value(name, "android", raw.android)?;
        let apns = table_value(name, "apns", raw.apns)?;
        let http = http_client(name, USER_AGENT, timeout.min(MAX_CONNECT_TIMEOUT), timeout)?;
        let clock = clock::from_services(ctx.services);
        Ok(Self {
            name: name.to_owned(),
            tokens: SharedToken::new(
                ctx.services,
                cache_key(&account.client_email),
                clock.clone(),
            ),
            account,
            project_id,
            endpoint,
            timeout,
            android,
            apns,
            http,
            clock,
        })
    }

    fn now(&self) -> u64 {
        self.clock.unix_secs()
    }

    /// The signed assertion `{iss, scope, aud, iat, exp}` for `now`.
    fn assertion(&self, now: u64) -> String {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.account.private_key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.account.key.sign(input.as_bytes()).to_bytes();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// A usable access token: the cluster's unless it is due or is `rejected` (FCM just
    /// refused it), else a new one, fetched by one caller in the cluster at a time.
    async fn access_token(&self, rejected: Option<&Secret>) -> Result<Secret, ChannelError> {
        self.tokens
            .get(rejected, || async {
                let (token, expires_in) = self.fetch_token(self.now()).await?;
                Ok(Fresh {
                    token,
                    reuse_secs: reuse_secs(expires_in),
                })
            })
            .await
    }

    async fn fetch_token(&self, now: u64) -> Result<(Secret, u64), ChannelError> {
        let body = format!(
            "grant_type={}&assertion={}",
            GRANT_TYPE.replace(':', "%3A"),
            self.assertion(now)
        );
        let response = self
            .http
            .post(&self.account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| request_error(e, "token_uri"))?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers());
        let text = response
            .text()
            .await
            .map_err(|e| request_error(e, "token_uri"))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            let token = v
                .get("access_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ChannelError::transient("token_uri answered without an access_token")
                        .with_code("bad_token_response")
                })?;
            let expires_in = v.get("expires_in").and_then(Value::as_u64).unwrap_or(3600);
            return Ok((Secret::new(token), expires_in));
        }
        let error = v.get("error").and_then(Value::as_str).unwrap_or("");
        let description = v
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("");
        let what = format!(
            "token_uri answered HTTP {status}{}{}",
            if error.is_empty() { "" } else { ": " },
            vendor_text(&format!("{error} {description}"), &[])
        );
        let code = if error.is_empty() {
            format!("HTTP {status}")
        } else {
            vendor_text(error, &[])
        };
        let e = match status {
            429 => ChannelError::rate_limited(what),
            408 | 500..=599 => ChannelError::transient(what),
            _ => ChannelError::config(format!("{what}; check the service account")),
        };
        let e = e.with_code(code);
        Err(match retry_after {
            Some(after) if e.is_retryable() => e.with_retry_after(after),
            _ => e,
        })
    }

    /// The message without its `token` (added per device; this is what the size check sees).
    fn message(&self, content: &Content) -> Map<String, Value> {
        let mut message = Map::new();
        message.insert(
            "notification".into(),
            json!({"title": content.title, "body": content.body}),
        );
        let data: BTreeMap<&String, &String> = content
            .data
            .iter()
            .filter(|(k, _)| !reserved_data_key(k))
            .collect();
        if !data.is_empty() {
            message.insert("data".into(), json!(data));
        }
        if let Some(android) = &self.android {
            message.insert("android".into(), android.clone());
        }
        if let Some(apns) = &self.apns {
            message.insert("apns".into(), apns.clone());
        }
        message
    }

    /// One device: POST, re-authorising once on 401 `UNAUTHENTICATED`.
    async fn send_one(
        &self,
        url: &str,
        message: &Map<String, Value>,
        device_token: &str,
        mut token: Secret,
    ) -> Outcome {
        let mut message = message.clone();
        message.insert("token".into(), json!(device_token));
        let body = json!({ "message": message });
        let mut reauthorised = false;
        loop {
            let response = match self
                .http
                .post(url)
                .bearer_auth(token.expose())
                .json(&body)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(request_error(e, "FCM")),
            };
            let status = response.status().as_u16();
            let retry_after = retry_after_header(response.headers());
            let text = match response.text().await {
                Ok(t) => t,
                Err(e) => return Outcome::Failed(request_error(e, "FCM")),
            };
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if (200..300).contains(&status) {
                let id = v.get("name").and_then(Value::as_str).map(str::to_owned);
                return Outcome::Sent(id);
            }
            let (code, vendor_message) = error_code(&v);
            if status == 401 && code.as_deref() != Some("THIRD_PARTY_AUTH_ERROR") && !reauthorised {
                reauthorised = true;
                match self.access_token(Some(&token)).await {
                    Ok(t) => token = t,
                    Err(e) => return Outcome::Failed(e),
                }
                continue;
            }
            let text = vendor_text(&vendor_message, &[device_token, token.expose()]);
            return match classify(status, code.as_deref(), retry_after) {
                Verdict::Dead(reason) => Outcome::Dead(reason),
                Verdict::Failed(e) => Outcome::Failed(if text.is_empty() {
                    e
                } else {
                    let message = format!("{}: {text}", e.message());
                    rebuild(&e, message)
                }),
            };
        }
    }
}

/// `e` with another message.
fn rebuild(e: &ChannelError, message: String) -> ChannelError {
    let mut n = ChannelError::new(e.kind(), message);
    if let Some(code) = e.code() {
        n = n.with_code(code);
    }
    if let Some(after) = e.retry_after() {
        n = n.with_retry_after(after);
    }
    n
}

/// The FCM error code (`error.details[].errorCode`, else `error.status`) and message.
fn error_code(v: &Value) -> (Option<String>, String) {
    let error = v.get("error");
    let detail = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .and_then(|details| {
            details
                .iter()
                .find_map(|d| d.get("errorCode").and_then(Value::as_str))
        });
    let status = error.and_then(|e| e.get("status")).and_then(Value::as_str);
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    (detail.or(status).map(str::to_owned), message)
}

/// Keys FCM refuses in `data` (INVALID_ARGUMENT): they are left out rather than failing
/// the whole notification.
fn reserved_data_key(k: &str) -> bool {
    matches!(k, "from" | "message_type" | "collapse_key")
        || k.starts_with("google")
        || k.starts_with("gcm")
}

fn valid_project_id(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
}

#[async_trait]
impl Channel for FcmChannel {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        if out.devices.is_empty() {
            return Err(ChannelError::bad_recipient("no active device").with_code("no_device"));
        }
        let content = content(out)?;
        let message = self.message(&content);
        // Everything but the device token counts, which is at least what FCM counts.
        let size = Value::Object(message.clone()).to_string().len();
        if size > MAX_PAYLOAD {
            return Err(payload_too_large(
                "the FCM message",
                "FCM",
                size,
                MAX_PAYLOAD,
            ));
        }
        let token = self.access_token(None).await?;
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.endpoint, self.project_id
        );
        let mut outcomes = Vec::with_capacity(out.devices.len());
        for device in &out.devices {
            let outcome = if device.token.trim().is_empty() {
                Outcome::Dead("empty registration token".into())
            } else {
                // A token refreshed by an earlier device's re-authorisation is reused.
                let token = self
                    .access_token(None)
                    .await
                    .unwrap_or_else(|_| token.clone());
                self.send_one(&url, &message, device.token.trim(), token)
                    .await
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

/// FCM's error code (`details[].errorCode`, else the status string) and HTTP status → what
/// to do. `retry_after` is the `Retry-After` header.
pub(crate) fn classify(status: u16, code: Option<&str>, retry_after: Option<Duration>) -> Verdict {
    let code_text = code
        .map(|c| vendor_text(c, &[]))
        .unwrap_or_else(|| format!("HTTP {status}"));
    let answered = format!("FCM answered HTTP {status} {code_text}");
    let e = match code {
        Some("UNREGISTERED") => return Verdict::Dead("UNREGISTERED".into()),
        Some("INVALID_ARGUMENT") => ChannelError::permanent(answered),
        Some("SENDER_ID_MISMATCH") => ChannelError::permanent(format!(
            "{answered}: the token belongs to another sender (project)"
        )),
        Some("THIRD_PARTY_AUTH_ERROR") => ChannelError::config(format!(
            "{answered}: the APNs certificate or web push key in Firebase is invalid"
        )),
        Some("UNAUTHENTICATED") => {
            ChannelError::config(format!("{answered}: the access token was refused"))
        }
        Some("PERMISSION_DENIED") => ChannelError::config(format!(
            "{answered}: the service account may not send for this project"
        )),
        Some("NOT_FOUND") => {
            ChannelError::config(format!("{answered}: check `project_id` and `endpoint`"))
        }
        Some("QUOTA_EXCEEDED") | Some("RESOURCE_EXHAUSTED") => ChannelError::rate_limited(answered),
        Some("INTERNAL") | Some("UNAVAILABLE") => ChannelError::transient(answered),
        Some(_) => ChannelError::transient(answered),
        None => match status {
            400 | 413 => ChannelError::permanent(answered),
            401 | 403 | 404 => {
                ChannelError::config(format!("{answered}; check the credentials and `endpoint`"))
            }
            429 => ChannelError::rate_limited(answered),
            300..=399 => ChannelError::config(format!("{answered}; redirects are not followed")),
            _ => ChannelError::transient(answered),
        },
    };
    let e = e.with_code(code_text);
    Verdict::Failed(match retry_after {
        Some(after) if e.is_retryable() => e.with_retry_after(after),
        _ => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::Services;

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
        assert_eq!(
            classify(404, Some("UNREGISTERED"), None),
            Verdict::Dead("UNREGISTERED".into())
        );
        let rows: &[Row] = &[
            (
                400,
                Some("INVALID_ARGUMENT"),
                None,
                Permanent,
                "INVALID_ARGUMENT",
                None,
            ),
            (
                403,
                Some("SENDER_ID_MISMATCH"),
                None,
                Permanent,
                "SENDER_ID_MISMATCH",
                None,
            ),
            (
                401,
                Some("THIRD_PARTY_AUTH_ERROR"),
                None,
                Config,
                "THIRD_PARTY_AUTH_ERROR",
                None,
            ),
            (
                401,
                Some("UNAUTHENTICATED"),
                None,
                Config,
                "UNAUTHENTICATED",
                None,
            ),
            (
                403,
                Some("PERMISSION_DENIED"),
                None,
                Config,
                "PERMISSION_DENIED",
                None,
            ),
            (404, Some("NOT_FOUND"), None, Config, "NOT_FOUND", None),
            (
                429,
                Some("QUOTA_EXCEEDED"),
                after,
                RateLimited,
                "QUOTA_EXCEEDED",
                after,
            ),
            (
                429,
                Some("QUOTA_EXCEEDED"),
                None,
                RateLimited,
                "QUOTA_EXCEEDED",
                None,
            ),
            (500, Some("INTERNAL"), None, Transient, "INTERNAL", None),
            (
                503,
                Some("UNAVAILABLE"),
                after,
                Transient,
                "UNAVAILABLE",
                after,
            ),
            (
                400,
                Some("SOMETHING_NEW"),
                None,
                Transient,
                "SOMETHING_NEW",
                None,
            ),
            (400, None, after, Permanent, "HTTP 400", None),
            (401, None, None, Config, "HTTP 401", None),
            (429, None, after, RateLimited, "HTTP 429", after),
            (502, None, None, Transient, "HTTP 502", None),
            (302, None, None, Config, "HTTP 302", None),
            (418, None, None, Transient, "HTTP 418", None),
        ];
        for &(status, code, retry_after, kind, expected_code, expected_after) in rows {
            let Verdict::Failed(e) = classify(status, code, retry_after) else {
                panic!("{status} {code:?} should fail");
            };
            assert_eq!(e.kind(), kind, "{status} {code:?}: {e}");
            assert_eq!(e.code(), Some(expected_code), "{status} {code:?}");
            assert_eq!(e.retry_after(), expected_after, "{status} {code:?}");
        }
    }

    #[test]
    fn reserved_data_keys() {
        for k in [
            "from",
            "message_type",
            "collapse_key",
            "google.sent_time",
            "gcm.n.e",
        ] {
            assert!(reserved_data_key(k), "{k}");
        }
        for k in ["reportId", "messageId", "url", "fromUser"] {
            assert!(!reserved_data_key(k), "{k}");
        }
    }

    #[test]
    fn error_code_prefers_details() {
        let v = json!({"error": {"code": 404, "message": "Requested entity was not found.",
            "status": "NOT_FOUND", "details": [
                {"@type": "type.googleapis.com/google.rpc.BadRequest"},
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                 "errorCode": "UNREGISTERED"}]}});
        assert_eq!(
            error_code(&v),
            (
                Some("UNREGISTERED".into()),
                "Requested entity was not found.".into()
            )
        );
        let v = json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}});
        assert_eq!(error_code(&v).0.as_deref(), Some("UNAUTHENTICATED"));
        assert_eq!(error_code(&json!("<html>")).0, None);
    }

    /// rand 0.9 behind rsa's rand_core 0.6 traits.
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

    #[test]
    fn debug_redacts_the_private_key() {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        // 1024 bits: key generation is slow in unoptimised builds.
        let key = RsaPrivateKey::new(&mut Rng06, 1024).unwrap();
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let account = json!({"type": "service_account", "project_id": "p",
            "client_email": "a@p.iam.gserviceaccount.com", "private_key": pem});
        let config = json!({"service_account": account.to_string()});
        let services = Services::default();
        let ch = FcmChannel::from_context(&BuildContext {
            name: "fcm",
            config: &config,
            services: &services,
        })
        .unwrap();
        let debug = format!("{ch:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        for line in pem.lines().skip(1).take(3) {
            assert!(!debug.contains(line), "{debug}");
        }
        assert!(
            debug.contains("https://oauth2.googleapis.com/token"),
            "{debug}"
        );
        assert!(debug.contains("https://fcm.googleapis.com"), "{debug}");
        // The assertion carries the documented claims.
        let assertion = ch.assertion(1_000);
        let claims = assertion.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(
            claims,
            json!({"iss": "a@p.iam.gserviceaccount.com", "scope": SCOPE,
                "aud": "https://oauth2.googleapis.com/token", "iat": 1000, "exp": 4600})
        );
    }
}
