//! HTTP for channels that speak to a vendor's HTTP API (cargo feature `http`): the client
//! each instance builds once in `build`, and the check of a configurable base URL
//! (`endpoint`). reqwest is re-exported ([`reqwest`]), built with rustls on the *ring*
//! provider and webpki roots, so every channel shares one TLS stack.
//!
//! ```
//! use std::time::Duration;
//! use herald_channel::http::{check_base_url, http_client, MAX_CONNECT_TIMEOUT};
//!
//! let timeout = Duration::from_secs(10);
//! let client = http_client("sms", "herald-sms/0.1.0", timeout.min(MAX_CONNECT_TIMEOUT), timeout)?;
//! let endpoint = check_base_url("sms", "endpoint", "https://sms.example.com/")?;
//! assert_eq!(endpoint.as_str(), "https://sms.example.com/");
//! let err = check_base_url("sms", "endpoint", "https://sms.example.com/?key=1").unwrap_err();
//! assert_eq!(err.to_string(), "channels.sms: endpoint: must not have a query or a fragment");
//! # drop(client);
//! # Ok::<(), herald_channel::ConfigError>(())
//! ```

use std::time::Duration;

pub use reqwest;
use reqwest::Url;

use crate::{config_error, error_chain, ConfigError};

/// The longest time the built-in channels wait for a connection: they connect with
/// `timeout.min(MAX_CONNECT_TIMEOUT)`, so an unreachable vendor fails fast while a slow
/// answer still has the whole `timeout`.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The builder behind [`http_client`], for a client that needs one more setting (APNs
/// tests speak HTTP/2 without TLS: `.http2_prior_knowledge()`); finish it with
/// [`build_client`].
///
/// * `timeout` bounds a whole request (connect, send, answer), `connect_timeout` the
///   connection alone;
/// * redirects are never followed: they would carry credentials (a bearer token, a
///   signature, a key in the URL) to another address;
/// * every request says `User-Agent: user_agent` (`herald-<crate>/<version>`).
pub fn client_builder(
    user_agent: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent)
}

/// Build `builder` for instance `instance`; a failure (no TLS backend) stops the start.
pub fn build_client(
    instance: &str,
    builder: reqwest::ClientBuilder,
) -> Result<reqwest::Client, ConfigError> {
    builder
        .build()
        .map_err(|e| ConfigError::new(instance, format!("HTTP client: {}", error_chain(&e))))
}

/// The one HTTP client of an instance, built in `build`: it keeps connections alive across
/// sends. See [`client_builder`] for what it does.
pub fn http_client(
    instance: &str,
    user_agent: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<reqwest::Client, ConfigError> {
    build_client(
        instance,
        client_builder(user_agent, connect_timeout, timeout),
    )
}

/// Check `raw`, the value of `key` (`endpoint`), as a vendor's base URL:
/// `http(s)://host[:port][/path]`, without credentials, query or fragment (paths are
/// appended to it). Surrounding spaces are ignored. The value is never quoted in the
/// error: a mistyped one may hold a password.
pub fn check_base_url(instance: &str, key: &str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw.trim())
        .map_err(|e| config_error(instance, key, format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(config_error(
            instance,
            key,
            format!(
                "expected an http:// or https:// URL, got scheme `{}`",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(config_error(instance, key, "has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_error(instance, key, "must not contain credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(config_error(
            instance,
            key,
            "must not have a query or a fragment",
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        for good in [
            "http://127.0.0.1:8080",
            "https://sms.example.com/proxy/",
            " https://api.weixin.qq.com/ ",
            "http://127.0.0.1:8080/proxy/",
            "https://fcm.googleapis.com",
        ] {
            assert!(
                check_base_url("s", "endpoint", good).is_ok(),
                "{good} is a base URL"
            );
        }
        assert_eq!(
            check_base_url("s", "endpoint", " https://x.example/a/ ")
                .unwrap()
                .as_str(),
            "https://x.example/a/"
        );
        for bad in [
            "",
            "not a url",
            "api.weixin.qq.com",
            "sms.tencentcloudapi.com",
            "ftp://x",
            "mailto:a@b.c",
            "https://u:p@x",
            "https://user@x",
            "https://x/?q=1",
            "https://api.twilio.com?x=1",
            "https://x/#f",
        ] {
            let e = check_base_url("s", "endpoint", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("channels.s: endpoint: "), "{bad}: {e}");
        }
        let e = check_base_url("s", "endpoint", "https://admin:hunter2@x/")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn clients_build() {
        let timeout = Duration::from_secs(10);
        http_client(
            "s",
            "herald-test/0",
            timeout.min(MAX_CONNECT_TIMEOUT),
            timeout,
        )
        .unwrap();
        build_client(
            "s",
            client_builder("herald-test/0", MAX_CONNECT_TIMEOUT, timeout).https_only(true),
        )
        .unwrap();
    }
}
