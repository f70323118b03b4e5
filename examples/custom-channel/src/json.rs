//! `webhook.json`: every delivery as one JSON `POST <url>` ([`Payload`]), with the headers
//! and signature of the family (`common.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use herald_channel::http::{http_client, MAX_CONNECT_TIMEOUT};
use herald_channel::{
    async_trait, config_error, parse_config, Accepted, BuildContext, Channel, ChannelError,
    ConfigError, Outgoing,
};
use hmac::Mac;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::common::{
    classify, header_str, idempotency_key, parse_headers, redacted_url, request_error, sign,
    HmacSha256, DEFAULT_TIMEOUT, IDEMPOTENCY_HEADER, REQUEST_ID_HEADER, SIGNATURE_HEADER,
    USER_AGENT,
};

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
        let name = ctx.name;

        let url = parse_url(name, &cfg.url)?;
        let headers = parse_headers(name, &cfg.headers)?;
        let timeout = humantime::parse_duration(&cfg.timeout).map_err(|e| {
            config_error(
                name,
                "timeout",
                format!(
                    "`{}` is not a duration ({e}); expected e.g. \"10s\"",
                    cfg.timeout
                ),
            )
        })?;
        if timeout.is_zero() {
            return Err(config_error(name, "timeout", "must be longer than 0s"));
        }
        let mac = match cfg.secret.as_deref() {
            None => None,
            Some("") => return Err(config_error(name, "secret", "must not be empty")),
            Some(secret) => Some(
                HmacSha256::new_from_slice(secret.as_bytes())
                    .map_err(|_| config_error(name, "secret", "not usable as an HMAC key"))?,
            ),
        };
        // The SDK's client: no redirects, connects within at most 5 s of `timeout`.
        let http = http_client(name, USER_AGENT, timeout.min(MAX_CONNECT_TIMEOUT), timeout)?;
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

/// The webhook's whole URL: unlike a vendor's base URL (`herald_channel::http::check_base_url`)
/// it may carry a query, often a token.
fn parse_url(name: &str, raw: &str) -> Result<Url, ConfigError> {
    // The URL itself is not repeated in the message: it may contain a token.
    let url =
        Url::parse(raw).map_err(|e| config_error(name, "url", format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(config_error(
            name,
            "url",
            format!(
                "expected an http:// or https:// URL, got scheme `{}`",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(config_error(name, "url", "has no host"));
    }
    Ok(url)
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

/// The descriptor's `build` (registered in `lib.rs`): one instance per `[channels.<name>]`
/// with `kind = "webhook.json"`.
pub fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    Ok(Arc::new(WebhookChannel::from_context(&ctx)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::verify_signature;
    use herald_channel::testkit::{message, outgoing, rendered};
    use herald_channel::Services;
    use hmac::Hmac;
    use sha2::Sha256;

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
