//! What the providers of the `webhook` family share: the headers every request carries
//! and their names, the body signature and its check for receivers, the configured extra
//! headers, and the one classification of the receiver's answer. `webhook.json`
//! (`json.rs`) is the only provider; a second one (say `webhook.form`) would use all of it.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_channel::{config_error, Accepted, ChannelError, ConfigError, Outgoing};
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use sha2::Sha256;

/// The signature header (when `secret` is set): `sha256=<lowercase hex>`.
pub const SIGNATURE_HEADER: &str = "x-herald-signature";
/// The de-duplication header: `<message id>.<delivery id>`, the same for every attempt.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// A response header whose value becomes the delivery's provider id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("herald-webhook/", env!("CARGO_PKG_VERSION"));

pub(crate) const DEFAULT_TIMEOUT: &str = "10s";
/// The longest provider id kept from `X-Request-Id`.
pub(crate) const MAX_PROVIDER_ID: usize = 128;
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

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// `scheme://host:port` plus `/…` when there is more: the path and query may hold a token.
pub(crate) fn redacted_url(url: &Url) -> String {
    let origin = url.origin().ascii_serialization();
    if url.path() == "/" && url.query().is_none() {
        origin
    } else {
        format!("{origin}/…")
    }
}

/// The configured extra headers (`headers = { … }`), values marked sensitive. Errors name
/// the header (`headers.<name>`), never its value.
pub(crate) fn parse_headers(
    instance: &str,
    raw: &BTreeMap<String, String>,
) -> Result<HeaderMap, ConfigError> {
    let mut map = HeaderMap::new();
    for (name, value) in raw {
        let key = format!("headers.{name}");
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| config_error(instance, &key, "not a valid header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(config_error(instance, &key, "set by the channel itself"));
        }
        // The value is never echoed: it is usually a credential.
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| config_error(instance, &key, "not a valid header value"))?;
        value.set_sensitive(true);
        map.insert(header, value);
    }
    Ok(map)
}

/// `Idempotency-Key` for a delivery: `<message id>.<delivery id>`.
pub fn idempotency_key(out: &Outgoing) -> String {
    format!("{}.{}", out.message.id, out.delivery_id)
}

pub(crate) fn sign(mac: &HmacSha256, body: &[u8]) -> String {
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
pub(crate) fn request_error(e: reqwest::Error) -> ChannelError {
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

pub(crate) fn header_str(
    headers: &HeaderMap,
    name: impl reqwest::header::AsHeaderName,
) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::ErrorKind;

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
}
