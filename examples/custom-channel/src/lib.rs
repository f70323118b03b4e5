//! # herald-custom-channel — a generic JSON webhook channel (kind `webhook.json`)
//!
//! An example of a **third-party** Herald channel: it lives outside `channels/`, depends only
//! on the `herald-channel` SDK, and registers itself with `inventory`. Herald's own code is not
//! changed; a binary that links this crate (`src/main.rs`) simply knows one more kind.
//!
//! For every delivery it makes one `POST <url>` with a JSON body (see [`Payload`]), an
//! `Idempotency-Key: <message id>.<delivery id>` header (stable across retries, so the
//! receiver can de-duplicate), and, when a `secret` is configured,
//! `X-Herald-Signature: sha256=<hex HMAC-SHA256(secret, body)>`. The answer's HTTP status is
//! mapped to a classified error in one place, [`classify`].
//!
//! ```toml
//! [channels.hook]
//! kind = "webhook.json"
//! url = "https://example.com/herald"     # required, http or https
//! timeout = "10s"                        # optional, humantime
//! secret = "…"                           # optional: sign the body
//! headers = { Authorization = "Bearer …" } # optional extra headers
//! ```
//!
//! Invariants: the channel never retries, sleeps or follows redirects (the dispatcher owns
//! retries; a redirect would carry the signature and headers to another address). Header
//! values, the secret and the URL's path/query (webhook URLs often embed a token) never
//! appear in `Debug` output or in errors.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use herald_channel::{
    async_trait, parse_config, Accepted, AddressKind, BuildContext, Channel, ChannelDescriptor,
    ChannelError, ConfigError, Outgoing,
};
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The channel kind this crate registers.
pub const KIND: &str = "webhook.json";
/// The signature header (when `secret` is set): `sha256=<lowercase hex>`.
pub const SIGNATURE_HEADER: &str = "x-herald-signature";
/// The de-duplication header: `<message id>.<delivery id>`, the same for every attempt.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// A response header whose value becomes the delivery's provider id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("herald-webhook/", env!("CARGO_PKG_VERSION"));

const DEFAULT_TIMEOUT: &str = "10s";
/// The longest provider id kept from `X-Request-Id`.
const MAX_PROVIDER_ID: usize = 128;
/// Headers the channel sets itself (or that HTTP owns): configuring them would send two
/// conflicting values.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "connection",
    "transfer-encoding",
    "user-agent",
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
];

type HmacSha256 = Hmac<Sha256>;

/// `[channels.<name>]` minus `kind`. No `Debug`: it holds the secret and header values.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default)]
    secret: Option<String>,
}

fn default_timeout() -> String {
    DEFAULT_TIMEOUT.to_owned()
}

/// One configured `webhook.json` instance.
pub struct WebhookChannel {
    url: Url,
    /// Extra headers from the configuration, values marked sensitive.
    headers: HeaderMap,
    timeout: Duration,
    /// HMAC keyed with `secret`, cloned for each body.
    mac: Option<HmacSha256>,
    /// One client per instance: keeps connections alive, carries the timeout.
    http: reqwest::Client,
}

impl WebhookChannel {
    /// Validate the instance's configuration and build the channel. Every error names the
    /// key (`channels.<name>: url: …`) and never contains a secret.
    pub fn from_context(ctx: &BuildContext<'_>) -> Result<Self, ConfigError> {
        let cfg: Config = parse_config(ctx)?;
        let fail = |message: String| ConfigError::new(ctx.name, message);

        let url = parse_url(&cfg.url).map_err(fail)?;
        let headers = parse_headers(&cfg.headers).map_err(fail)?;
        let timeout = humantime::parse_duration(&cfg.timeout).map_err(|e| {
            fail(format!(
                "timeout: `{}` is not a duration ({e}); expected e.g. \"10s\"",
                cfg.timeout
            ))
        })?;
        if timeout.is_zero() {
            return Err(fail("timeout: must be longer than 0s".into()));
        }
        let mac = match cfg.secret.as_deref() {
            None => None,
            Some("") => return Err(fail("secret: must not be empty".into())),
            Some(secret) => Some(
                HmacSha256::new_from_slice(secret.as_bytes())
                    .map_err(|_| fail("secret: not usable as an HMAC key".into()))?,
            ),
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| fail(format!("HTTP client: {e}")))?;
        Ok(Self {
            url,
            headers,
            timeout,
            mac,
            http,
        })
    }

    /// The request body for one delivery, exactly as it is signed and sent.
    pub fn body(out: &Outgoing) -> Result<Vec<u8>, ChannelError> {
        serde_json::to_vec(&Payload::from(out))
            .map_err(|e| ChannelError::permanent(format!("cannot encode the body: {e}")))
    }
}

impl fmt::Debug for WebhookChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("WebhookChannel")
            .field("url", &redacted_url(&self.url))
            .field("headers", &header_names)
            .field("timeout", &self.timeout)
            .field("secret", &self.mac.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// `scheme://host:port` plus `/…` when there is more: the path and query may hold a token.
fn redacted_url(url: &Url) -> String {
    let origin = url.origin().ascii_serialization();
    if url.path() == "/" && url.query().is_none() {
        origin
    } else {
        format!("{origin}/…")
    }
}

fn parse_url(raw: &str) -> Result<Url, String> {
    // The URL itself is not repeated in the message: it may contain a token.
    let url = Url::parse(raw).map_err(|e| format!("url: not a valid URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "url: expected an http:// or https:// URL, got scheme `{}`",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("url: has no host".into());
    }
    Ok(url)
}

fn parse_headers(raw: &BTreeMap<String, String>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in raw {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers.{name}: not a valid header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(format!("headers.{name}: set by the channel itself"));
        }
        // The value is never echoed: it is usually a credential.
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| format!("headers.{name}: not a valid header value"))?;
        value.set_sensitive(true);
        map.insert(header, value);
    }
    Ok(map)
}

/// The JSON body of a webhook request.
///
/// ```json
/// {"deliveryId": 17, "attempt": 1, "receiver": "42", "address": null,
///  "message": {"id": "…", "title": "…", "content": "…", "type": 0, "sender": "api",
///              "createdAt": "2026-01-01T00:00:00.000Z", "template": null, "data": null},
///  "rendered": null}
/// ```
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload<'a> {
    pub delivery_id: i64,
    pub attempt: u32,
    pub receiver: &'a str,
    pub address: Option<&'a str>,
    pub message: MessagePayload<'a>,
    /// The template rendered for the `webhook` family: part name → text.
    pub rendered: Option<&'a BTreeMap<String, String>>,
}

/// `message` in [`Payload`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePayload<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub content: &'a str,
    #[serde(rename = "type")]
    pub msg_type: i64,
    pub sender: &'a str,
    pub created_at: &'a str,
    pub template: Option<&'a str>,
    pub data: Option<&'a serde_json::Value>,
}

impl<'a> From<&'a Outgoing> for Payload<'a> {
    fn from(out: &'a Outgoing) -> Self {
        let m = &out.message;
        Payload {
            delivery_id: out.delivery_id,
            attempt: out.attempt,
            receiver: &out.receiver,
            address: out.address.as_deref(),
            message: MessagePayload {
                id: &m.id,
                title: &m.title,
                content: &m.content,
                msg_type: m.msg_type,
                sender: &m.sender,
                created_at: &m.created_at,
                template: m.template.as_deref(),
                data: m.data.as_ref(),
            },
            rendered: out.rendered.as_deref().map(|r| r.parts()),
        }
    }
}

/// `Idempotency-Key` for a delivery: `<message id>.<delivery id>`.
pub fn idempotency_key(out: &Outgoing) -> String {
    format!("{}.{}", out.message.id, out.delivery_id)
}

fn sign(mac: &HmacSha256, body: &[u8]) -> String {
    let mut mac = mac.clone();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// For receivers written in Rust: does `header` (the `X-Herald-Signature` value) sign `body`
/// with `secret`? Compares in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Map the receiver's answer to an outcome: the one table of this channel.
///
/// | status | outcome |
/// |---|---|
/// | 2xx | `Sent`, provider id from `X-Request-Id` |
/// | 429 | `rate_limited`, honouring `Retry-After` (seconds) |
/// | 503 | `transient`, honouring `Retry-After` (seconds) |
/// | 408, 425, other 5xx | `transient` |
/// | 404, 410 | `config`: the endpoint is wrong |
/// | 401, 403 | `config`: the credentials in `headers` are wrong |
/// | 3xx | `config`: redirects are not followed, `url` must be the final address |
/// | other | `permanent` |
///
/// Every error keeps the HTTP status as its code.
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    request_id: Option<&str>,
) -> Result<Accepted, ChannelError> {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default();
    let answered = format!("webhook answered HTTP {status}{reason}");
    let delay = retry_after.and_then(parse_retry_after);
    let error = match status {
        200..=299 => {
            let provider_id = request_id
                .map(str::trim)
                .filter(|id| !id.is_empty() && id.len() <= MAX_PROVIDER_ID)
                .map(str::to_owned);
            return Ok(Accepted::Sent { provider_id });
        }
        429 => with_delay(ChannelError::rate_limited(answered), delay),
        503 => with_delay(ChannelError::transient(answered), delay),
        408 | 425 | 500..=599 => ChannelError::transient(answered),
        404 | 410 => ChannelError::config(format!("{answered}; check `url`")),
        401 | 403 => ChannelError::config(format!("{answered}; check `headers`")),
        300..=399 => ChannelError::config(format!(
            "{answered}; redirects are not followed, set `url` to the final address"
        )),
        _ => ChannelError::permanent(answered),
    };
    Err(error.with_code(status.to_string()))
}

fn with_delay(error: ChannelError, delay: Option<Duration>) -> ChannelError {
    match delay {
        Some(d) => error.with_retry_after(d),
        None => error,
    }
}

/// `Retry-After` in its seconds form; the HTTP-date form is ignored (the dispatcher's
/// backoff applies then).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A request that got no HTTP answer: worth another attempt. The URL is stripped (it may
/// hold a token); the causes are kept.
fn request_error(e: reqwest::Error) -> ChannelError {
    let e = e.without_url();
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let message = format!("{what}: {}", herald_channel::error_chain(&e));
    if e.is_builder() {
        ChannelError::config(message)
    } else {
        ChannelError::transient(message)
    }
}

fn header_str(headers: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[async_trait]
impl Channel for WebhookChannel {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        let body = Self::body(out)?;
        let key = HeaderValue::from_str(&idempotency_key(out)).map_err(|_| {
            ChannelError::permanent("the message id is not usable in an Idempotency-Key header")
        })?;
        let mut request = self
            .http
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_HEADER, key);
        if let Some(mac) = &self.mac {
            request = request.header(SIGNATURE_HEADER, sign(mac, &body));
        }
        let response = request.body(body).send().await.map_err(request_error)?;
        // The status says it all: the response body is not read.
        let headers = response.headers();
        classify(
            response.status().as_u16(),
            header_str(headers, RETRY_AFTER),
            header_str(headers, REQUEST_ID_HEADER),
        )
    }
}

/// The descriptor's `build`: one instance per `[channels.<name>]` with `kind = "webhook.json"`.
pub fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    Ok(Arc::new(WebhookChannel::from_context(&ctx)?))
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: KIND,
        summary: "JSON POST to an HTTP endpoint (signed with HMAC-SHA256 when `secret` is set)",
        // The receiver's user id is all a webhook needs: every receiver gets a POST.
        address: AddressKind::None,
        presence: false,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::testkit::{message, outgoing, rendered};
    use herald_channel::{ErrorKind, Services};

    fn try_build(config: serde_json::Value) -> Result<WebhookChannel, ConfigError> {
        let services = Services::default();
        WebhookChannel::from_context(&BuildContext {
            name: "hook",
            config: &config,
            services: &services,
        })
    }

    fn build_err(config: serde_json::Value) -> String {
        match try_build(config) {
            Ok(ch) => panic!("expected a configuration error, built {ch:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn registered_as_a_provider_channel() {
        let d = herald_channel::find(KIND).expect("webhook.json is registered");
        assert_eq!(d.address, AddressKind::None);
        assert!(!d.presence);
        assert_eq!(d.family(), "webhook");
    }

    #[test]
    fn minimal_config_and_defaults() {
        let ch = try_build(serde_json::json!({"url": "http://127.0.0.1:9/hook"})).unwrap();
        assert_eq!(ch.timeout, Duration::from_secs(10));
        assert!(ch.mac.is_none());
        assert!(ch.headers.is_empty());
        let ch = try_build(serde_json::json!({"url": "https://example.com", "timeout": "750ms"}))
            .unwrap();
        assert_eq!(ch.timeout, Duration::from_millis(750));
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = build_err(serde_json::json!({}));
        assert!(err.starts_with("channels.hook: "), "{err}");
        assert!(err.contains("url"), "{err}");

        for bad in [
            "not a url",
            "/relative/path",
            "ftp://example.com/x",
            "mailto:a@b.c",
        ] {
            let err = build_err(serde_json::json!({ "url": bad }));
            assert!(err.contains("channels.hook: url:"), "{bad}: {err}");
        }

        let err = build_err(serde_json::json!({"url": "http://x", "uri": "http://y"}));
        assert!(err.contains("unknown field `uri`"), "{err}");

        let err = build_err(serde_json::json!({"url": "http://x", "timeout": "soon"}));
        assert!(err.contains("timeout:"), "{err}");
        let err = build_err(serde_json::json!({"url": "http://x", "timeout": "0s"}));
        assert!(err.contains("timeout:"), "{err}");

        let err = build_err(serde_json::json!({"url": "http://x", "secret": ""}));
        assert!(err.contains("secret:"), "{err}");

        let err = build_err(serde_json::json!({"url": "http://x", "headers": {"bad header": "v"}}));
        assert!(err.contains("headers.bad header"), "{err}");
        let err = build_err(
            serde_json::json!({"url": "http://x", "headers": {"X-Token": "line\nbreak-s3cret"}}),
        );
        assert!(err.contains("headers.X-Token"), "{err}");
        assert!(!err.contains("s3cret"), "header value leaked: {err}");
        let err = build_err(
            serde_json::json!({"url": "http://x", "headers": {"Idempotency-Key": "mine"}}),
        );
        assert!(
            err.contains("headers.Idempotency-Key: set by the channel"),
            "{err}"
        );
    }

    #[test]
    fn url_with_a_token_is_not_echoed() {
        let err = build_err(serde_json::json!({"url": "gopher://host/T0KEN"}));
        assert!(!err.contains("T0KEN"), "{err}");
    }

    #[test]
    fn debug_redacts_secret_headers_and_url_path() {
        let ch = try_build(serde_json::json!({
            "url": "https://hooks.example.com/services/T0KEN?key=K3Y",
            "secret": "hunter2",
            "headers": {"Authorization": "Bearer t0psecret"},
        }))
        .unwrap();
        let dbg = format!("{ch:?}");
        for leaked in ["hunter2", "t0psecret", "T0KEN", "K3Y"] {
            assert!(!dbg.contains(leaked), "{leaked} in {dbg}");
        }
        assert!(dbg.contains("https://hooks.example.com/…"), "{dbg}");
        assert!(dbg.contains("authorization"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        // reqwest marks the values sensitive, so even a HeaderMap dump hides them.
        assert!(!format!("{:?}", ch.headers).contains("t0psecret"));
    }

    #[test]
    fn classify_table() {
        use ErrorKind::*;
        let secs = |s| Some(Duration::from_secs(s));
        // (status, Retry-After, expected kind (None = sent), expected retry_after)
        type Row = (
            u16,
            Option<&'static str>,
            Option<ErrorKind>,
            Option<Duration>,
        );
        let table: &[Row] = &[
            (200, None, None, None),
            (201, None, None, None),
            (202, Some("5"), None, None),
            (204, None, None, None),
            (429, Some("30"), Some(RateLimited), secs(30)),
            (429, Some(" 7 "), Some(RateLimited), secs(7)),
            (429, None, Some(RateLimited), None),
            (
                429,
                Some("Wed, 21 Oct 2015 07:28:00 GMT"),
                Some(RateLimited),
                None,
            ),
            (503, Some("120"), Some(Transient), secs(120)),
            (503, None, Some(Transient), None),
            (408, None, Some(Transient), None),
            (425, None, Some(Transient), None),
            (500, Some("9"), Some(Transient), None),
            (502, None, Some(Transient), None),
            (504, None, Some(Transient), None),
            (599, None, Some(Transient), None),
            (404, None, Some(Config), None),
            (410, None, Some(Config), None),
            (401, None, Some(Config), None),
            (403, None, Some(Config), None),
            (301, None, Some(Config), None),
            (307, None, Some(Config), None),
            (400, None, Some(Permanent), None),
            (409, None, Some(Permanent), None),
            (413, None, Some(Permanent), None),
            (422, None, Some(Permanent), None),
            (451, None, Some(Permanent), None),
            (102, None, Some(Permanent), None),
        ];
        for &(status, retry_after, kind, delay) in table {
            match (classify(status, retry_after, None), kind) {
                (Ok(Accepted::Sent { provider_id: None }), None) => {}
                (Err(e), Some(kind)) => {
                    assert_eq!(e.kind(), kind, "{status}: {e}");
                    assert_eq!(e.retry_after(), delay, "{status} {retry_after:?}");
                    assert_eq!(e.code(), Some(status.to_string().as_str()), "{status}");
                    assert!(e.message().contains(&status.to_string()), "{e}");
                }
                (other, _) => panic!("{status}: expected {kind:?}, got {other:?}"),
            }
        }
        assert_eq!(
            classify(400, None, None).unwrap_err().to_string(),
            "permanent: [400] webhook answered HTTP 400 Bad Request"
        );
    }

    #[test]
    fn provider_id_from_x_request_id() {
        assert_eq!(
            classify(200, None, Some("req-123")),
            Ok(Accepted::Sent {
                provider_id: Some("req-123".into())
            })
        );
        assert_eq!(
            classify(200, None, Some("  ")),
            Ok(Accepted::Sent { provider_id: None })
        );
        let long = "x".repeat(MAX_PROVIDER_ID + 1);
        assert_eq!(
            classify(200, None, Some(&long)),
            Ok(Accepted::Sent { provider_id: None })
        );
    }

    /// Checked two ways: against HMAC-SHA256 computed independently here with `hmac`/`sha2`,
    /// and against a published fixed vector.
    #[test]
    fn signature_header_value() {
        let ch = try_build(serde_json::json!({"url": "http://x", "secret": "key"})).unwrap();
        let body = br#"{"hello":"world"}"#;
        let header = sign(ch.mac.as_ref().unwrap(), body);

        let mut independent = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        independent.update(body);
        let expected = format!(
            "sha256={}",
            hex::encode(independent.finalize().into_bytes())
        );
        assert_eq!(header, expected);

        // HMAC_SHA256("key", "The quick brown fox jumps over the lazy dog"), the example
        // vector on Wikipedia's HMAC page (also `openssl dgst -sha256 -hmac key`).
        assert_eq!(
            sign(
                ch.mac.as_ref().unwrap(),
                b"The quick brown fox jumps over the lazy dog"
            ),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );

        assert!(verify_signature(b"key", body, &header));
        assert!(!verify_signature(b"other", body, &header));
        assert!(!verify_signature(b"key", b"{}", &header));
        assert!(!verify_signature(b"key", body, "sha1=00"));
        assert!(!verify_signature(b"key", body, "sha256=zz"));
    }

    #[test]
    fn body_format() {
        let mut m = (*message("Report ready", "It is done")).clone();
        m.template = Some("report_ready".into());
        m.data = Some(serde_json::json!({"n": 3}));
        let mut out = outgoing(Arc::new(m), "42", None);
        out.delivery_id = 17;
        out.attempt = 2;
        out.rendered = Some(rendered(&[("txt", "3 reports")]));
        let body: serde_json::Value =
            serde_json::from_slice(&WebhookChannel::body(&out).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "deliveryId": 17,
                "attempt": 2,
                "receiver": "42",
                "address": null,
                "message": {
                    "id": "0190f5c2-0000-7000-8000-000000000001",
                    "title": "Report ready",
                    "content": "It is done",
                    "type": 0,
                    "sender": "test",
                    "createdAt": "2026-01-01T00:00:00.000Z",
                    "template": "report_ready",
                    "data": {"n": 3},
                },
                "rendered": {"txt": "3 reports"},
            })
        );
        assert_eq!(
            idempotency_key(&out),
            "0190f5c2-0000-7000-8000-000000000001.17"
        );

        let plain = outgoing(message("t", "c"), "7", None);
        let body: serde_json::Value =
            serde_json::from_slice(&WebhookChannel::body(&plain).unwrap()).unwrap();
        assert_eq!(body["rendered"], serde_json::Value::Null);
        assert_eq!(body["message"]["template"], serde_json::Value::Null);
    }
}
