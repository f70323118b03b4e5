//! What both WeChat channels share: secrets, configuration helpers, and the mapping of HTTP-level failures (no answer, a proxy's error page) to
//! classified errors.

use std::time::Duration;

use herald_channel::http::check_base_url;
use herald_channel::{ChannelError, ConfigError};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

/// `User-Agent` of every request. Both channels build their client with
/// [`herald_channel::http::http_client`], connecting within at most 5 s of `timeout`;
/// redirects are never followed (they would carry the access token or webhook key to
/// another address).
pub(crate) const USER_AGENT: &str = concat!("herald-wechat/", env!("CARGO_PKG_VERSION"));

/// The default of `timeout`.
pub(crate) const DEFAULT_TIMEOUT: &str = "10s";

pub(crate) fn default_timeout() -> String {
    DEFAULT_TIMEOUT.to_owned()
}

pub(crate) use herald_channel::{config_error, Secret};

/// Configuration parsing is the SDK's (it names the key path in type errors).
pub(crate) use herald_channel::parse_config as parse;

/// A humantime duration greater than zero.
pub(crate) fn parse_timeout(name: &str, value: &str) -> Result<Duration, ConfigError> {
    let timeout = humantime::parse_duration(value.trim()).map_err(|e| {
        config_error(
            name,
            "timeout",
            format!("`{value}` is not a duration ({e}); expected e.g. \"10s\""),
        )
    })?;
    if timeout.is_zero() {
        return Err(config_error(name, "timeout", "must be longer than 0s"));
    }
    Ok(timeout)
}

/// A base URL ([`check_base_url`]: http(s), a host, no credentials, query or fragment),
/// returned without a trailing `/` so paths can be appended.
pub(crate) fn parse_endpoint(name: &str, key: &str, value: &str) -> Result<String, ConfigError> {
    let url = check_base_url(name, key, value)?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// `scheme://host[:port]` of a URL, for `Debug` output of URLs whose path or query is secret.
pub(crate) fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// A request that got no HTTP answer: `transient`. The URL is stripped (it holds the access
/// token or the webhook key); the causes are kept.
pub(crate) fn request_error(e: reqwest::Error, what: &str) -> ChannelError {
    let e = e.without_url();
    let how = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    let message = format!("{what} {how}: {}", herald_channel::error_chain(&e));
    if e.is_builder() {
        ChannelError::config(message)
    } else {
        ChannelError::transient(message)
    }
}

/// A non-2xx HTTP status. WeChat answers every API call with 200 and an `errcode`, so this
/// comes from a proxy, a load balancer or a wrong `endpoint`.
pub(crate) fn http_status_error(status: StatusCode, what: &str) -> ChannelError {
    let answered = format!("{what} answered HTTP {status}");
    let error = match status.as_u16() {
        429 => ChannelError::rate_limited(answered).with_retry_after(Duration::from_secs(60)),
        408 | 500..=599 => ChannelError::transient(answered),
        413 => ChannelError::permanent(answered),
        300..=399 => ChannelError::config(format!(
            "{answered}; redirects are not followed, check `endpoint`"
        )),
        _ => ChannelError::config(format!("{answered}; check `endpoint`")),
    };
    error.with_code(format!("HTTP {}", status.as_u16()))
}

/// Shared with every channel crate (the SDK).
pub(crate) use herald_channel::{truncate_bytes, vendor_text};

/// The reply every WeChat / WeCom API call gives: `errcode` 0 is success.
#[derive(Debug, Deserialize)]
pub(crate) struct Reply {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
    /// Template sends: the message id (a number).
    #[serde(default)]
    pub msgid: Option<serde_json::Value>,
}

/// Reads an API reply: the status first, then the JSON body.
pub(crate) async fn read_reply(
    response: reqwest::Response,
    what: &str,
) -> Result<Reply, ChannelError> {
    let status = response.status();
    if !status.is_success() {
        return Err(http_status_error(status, what));
    }
    let body = response.bytes().await.map_err(|e| request_error(e, what))?;
    serde_json::from_slice(&body).map_err(|_| {
        ChannelError::transient(format!(
            "{what} answered HTTP {status} with a body that is not a WeChat reply ({} bytes)",
            body.len()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::ErrorKind;

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate_bytes("short", 10), "short");
        assert_eq!(truncate_bytes("exactly10!", 10), "exactly10!");
        assert_eq!(truncate_bytes("abcdefghijk", 10), "abcdefg…");
        // 报 is 3 bytes: 4 of them are 12 bytes; 10 bytes leave 7 for text → 2 characters.
        let cut = truncate_bytes("报报报报", 10);
        assert_eq!(cut, "报报…");
        assert!(cut.len() <= 10);
        for max in 3..40 {
            let s = "报告 ready ✓ 好".repeat(3);
            let cut = truncate_bytes(&s, max);
            assert!(cut.len() <= max, "{max}: {cut}");
        }
    }

    #[test]
    fn vendor_text_is_short_one_line_and_redacted() {
        assert_eq!(
            vendor_text(
                "invalid credential,\n access_token is  TOK123 rid: 1",
                &["TOK123"]
            ),
            "invalid credential, access_token is <redacted> rid: 1"
        );
        let long = "x".repeat(500);
        assert_eq!(
            vendor_text(&long, &[]).chars().count(),
            herald_channel::MAX_VENDOR_CHARS + 1
        );
        assert_eq!(vendor_text("ok", &[""]), "ok");
    }

    #[test]
    fn http_statuses() {
        use ErrorKind::*;
        for (status, kind) in [
            (429, RateLimited),
            (408, Transient),
            (500, Transient),
            (502, Transient),
            (503, Transient),
            (413, Permanent),
            (301, Config),
            (400, Config),
            (401, Config),
            (403, Config),
            (404, Config),
        ] {
            let e = http_status_error(StatusCode::from_u16(status).unwrap(), "stable_token");
            assert_eq!(e.kind(), kind, "{status}: {e}");
            assert_eq!(e.code(), Some(format!("HTTP {status}").as_str()));
            assert!(e.message().starts_with("stable_token answered HTTP"), "{e}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("w", "endpoint", "https://api.weixin.qq.com/").unwrap(),
            "https://api.weixin.qq.com"
        );
        assert_eq!(
            parse_endpoint("w", "endpoint", "http://127.0.0.1:8080/proxy/").unwrap(),
            "http://127.0.0.1:8080/proxy"
        );
        for bad in [
            "",
            "api.weixin.qq.com",
            "ftp://x",
            "https://x/?a=1",
            "https://x/#f",
        ] {
            let e = parse_endpoint("w", "endpoint", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("channels.w: endpoint: "), "{bad}: {e}");
        }
    }

    #[test]
    fn timeouts() {
        assert_eq!(
            parse_timeout("w", "750ms").unwrap(),
            Duration::from_millis(750)
        );
        for bad in ["soon", "0s", ""] {
            let e = parse_timeout("w", bad).unwrap_err().to_string();
            assert!(e.starts_with("channels.w: timeout: "), "{bad}: {e}");
        }
    }

    #[test]
    fn secrets_are_redacted_and_not_echoed() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "\"<redacted>\"");
        let err = serde_json::from_value::<Secret>(serde_json::json!(987654321)).unwrap_err();
        assert!(!err.to_string().contains("987654321"), "{err}");
    }
}
