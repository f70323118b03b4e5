//! What the push providers share: the notification's content, one device's verdict and
//! how the devices' outcomes make the delivery's result, the payload-size refusal, and
//! configuration helpers for tables whose values are checked one by one (so a wrongly
//! typed secret is never echoed). `push.fcm` and `push.apns` use all of it, `push.webpush`
//! the configuration helpers and `request_error`.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_channel::http::check_base_url;
use herald_channel::{Accepted, ChannelError, ConfigError, ErrorKind, Outgoing};
use serde_json::Value;

/// What a vendor's answer means for one device.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The token is gone: mark the device dead (reason: the vendor's code).
    Dead(String),
    Failed(ChannelError),
}

/// A notification over the vendor's limit: `permanent`, before any request. Neither kind
/// ever cuts the text to fit (a cut notification would be reported `sent` although the
/// user never saw the end of it).
pub(crate) fn payload_too_large(
    what: &str,
    vendor: &str,
    size: usize,
    limit: usize,
) -> ChannelError {
    ChannelError::permanent(format!(
        "{what} is {size} bytes; {vendor} accepts at most {limit} bytes, so nothing was sent \
         (the title and content are never cut: shorten them, or render a shorter push.json)"
    ))
    .with_code("payload_too_large")
}

pub(crate) use herald_channel::{config_error, Secret};

/// A string value of `key`; type errors do not quote the value.
pub(crate) fn string_value<'v>(
    name: &str,
    key: &str,
    value: Option<&'v Value>,
) -> Result<Option<&'v str>, ConfigError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(config_error(name, key, "invalid type: expected a string")),
    }
}

/// A secret string value of `key`: never empty, never quoted.
pub(crate) fn secret_value(
    name: &str,
    key: &str,
    value: Option<&Value>,
) -> Result<Option<Secret>, ConfigError> {
    match string_value(name, key, value)? {
        Some(s) if s.trim().is_empty() => Err(config_error(name, key, "must not be empty")),
        Some(s) => Ok(Some(Secret::new(s))),
        None => Ok(None),
    }
}

/// A humantime duration of `key`, `default` when unset.
pub(crate) fn duration_value(
    name: &str,
    key: &str,
    value: Option<&Value>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = string_value(name, key, value)?.unwrap_or(default);
    humantime::parse_duration(text.trim()).map_err(|e| {
        config_error(
            name,
            key,
            format!("`{text}` is not a duration ({e}); expected e.g. \"{default}\""),
        )
    })
}

/// `timeout`: a duration longer than 0s, 10s when unset.
pub(crate) fn timeout_value(name: &str, value: Option<&Value>) -> Result<Duration, ConfigError> {
    let timeout = duration_value(name, "timeout", value, "10s")?;
    if timeout.is_zero() {
        return Err(config_error(name, "timeout", "must be longer than 0s"));
    }
    Ok(timeout)
}

/// The base URL of `key` ([`check_base_url`]: http(s), a host, no credentials, query or
/// fragment), `default` when unset, without a trailing `/`.
pub(crate) fn endpoint_value(
    name: &str,
    key: &str,
    value: Option<&Value>,
    default: &str,
) -> Result<String, ConfigError> {
    let text = string_value(name, key, value)?.unwrap_or(default);
    let url = check_base_url(name, key, text)?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A request that got no HTTP answer: `transient`, without the URL (it holds device tokens).
pub(crate) fn request_error(e: reqwest::Error, what: &str) -> ChannelError {
    let e = e.without_url();
    let how = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    let message = format!("{what}: request {how}: {}", herald_channel::error_chain(&e));
    ChannelError::transient(message)
}

/// `Retry-After` in seconds (the HTTP-date form is ignored).
pub(crate) fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Shared with every channel crate (the SDK).
pub(crate) use herald_channel::{truncate_bytes, vendor_text};

/// What a notification shows and carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Content {
    pub title: String,
    pub body: String,
    /// String → string (FCM requires it; APNs gets the same keys).
    pub data: BTreeMap<String, String>,
}

/// The rendered `push` `json` part (`{"title", "body", "data": {…}}`) when there is one,
/// else the message's title and content, whole (the caller refuses a payload over the
/// vendor's limit). `data` gets `messageId` unless the rendering sets it; non-string data
/// values are stringified.
pub(crate) fn content(out: &Outgoing) -> Result<Content, ChannelError> {
    let message = &out.message;
    let mut content = Content {
        title: message.title.clone(),
        body: message.content.clone(),
        data: BTreeMap::new(),
    };
    if let Some(json) = out.rendered.as_ref().and_then(|r| r.part("json")) {
        let bad = |why: &str| {
            ChannelError::permanent(format!("the rendered push.json template {why}"))
                .with_code("bad_rendering")
        };
        let v: Value = serde_json::from_str(json).map_err(|_| bad("is not valid JSON"))?;
        let Value::Object(v) = v else {
            return Err(bad("is not a JSON object"));
        };
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        if let Some(title) = v.get("title") {
            content.title = text(title);
        }
        if let Some(body) = v.get("body") {
            content.body = text(body);
        }
        match v.get("data") {
            None | Some(Value::Null) => {}
            Some(Value::Object(data)) => {
                content.data = data.iter().map(|(k, v)| (k.clone(), text(v))).collect();
            }
            Some(_) => return Err(bad("has a `data` that is not an object")),
        }
    }
    content
        .data
        .entry("messageId".into())
        .or_insert_with(|| message.id.clone());
    Ok(content)
}

/// One device's result.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Accepted, with the vendor's id.
    Sent(Option<String>),
    /// The token is gone (already marked dead).
    Dead(String),
    Failed(ChannelError),
}

/// Lower is more important.
fn rank(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Config => 0,
        ErrorKind::RateLimited | ErrorKind::Transient => 1,
        ErrorKind::BadRecipient => 2,
        ErrorKind::Permanent => 3,
    }
}

/// The delivery's result from its devices' outcomes: `Sent` (first vendor id) when any
/// device accepted; else the most important error (config > retryable > bad recipient >
/// permanent), dead tokens counting as bad recipients.
pub(crate) fn finish(outcomes: Vec<Outcome>) -> Result<Accepted, ChannelError> {
    let total = outcomes.len();
    let mut sent: Option<Option<String>> = None;
    let mut dead = 0;
    let mut best: Option<ChannelError> = None;
    for outcome in outcomes {
        match outcome {
            Outcome::Sent(id) => {
                if sent.as_ref().is_none_or(|s| s.is_none()) {
                    sent = Some(id);
                }
            }
            Outcome::Dead(_) => dead += 1,
            Outcome::Failed(e) => {
                let better = match &best {
                    None => true,
                    Some(b) => {
                        rank(e.kind()) < rank(b.kind())
                            || (rank(e.kind()) == rank(b.kind())
                                && e.retry_after() > b.retry_after())
                    }
                };
                if better {
                    best = Some(e);
                }
            }
        }
    }
    if let Some(provider_id) = sent {
        return Ok(Accepted::Sent { provider_id });
    }
    let dead_error = || {
        if dead == total {
            ChannelError::bad_recipient("all devices unregistered")
        } else {
            ChannelError::bad_recipient(format!("{dead} of {total} devices unregistered"))
        }
    };
    match best {
        Some(e) if dead == 0 || rank(e.kind()) < rank(ErrorKind::BadRecipient) => Err(e),
        Some(_) => Err(dead_error()),
        None if dead > 0 => Err(dead_error()),
        None => Err(ChannelError::bad_recipient("no active device").with_code("no_device")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::testkit::{message, rendered, to_devices};

    #[test]
    fn outcomes_combine() {
        use Outcome::*;
        let sent = finish(vec![
            Dead("UNREGISTERED".into()),
            Sent(Some("a".into())),
            Sent(Some("b".into())),
        ]);
        assert_eq!(
            sent,
            Ok(Accepted::Sent {
                provider_id: Some("a".into())
            })
        );
        let e = finish(vec![Dead("x".into()), Dead("y".into())]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadRecipient);
        assert_eq!(e.message(), "all devices unregistered");
        let e = finish(vec![Dead("x".into()), Failed(ChannelError::permanent("p"))]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadRecipient);
        let e = finish(vec![
            Failed(ChannelError::permanent("p")),
            Failed(ChannelError::transient("t")),
            Dead("x".into()),
        ])
        .unwrap_err();
        assert_eq!(e.message(), "t");
        let e = finish(vec![
            Failed(ChannelError::transient("t")),
            Failed(ChannelError::rate_limited("r").with_retry_after(Duration::from_secs(5))),
            Failed(ChannelError::config("c")),
        ])
        .unwrap_err();
        assert_eq!(e.message(), "c");
        let e = finish(vec![]).unwrap_err();
        assert_eq!(e.message(), "no active device");
    }

    #[test]
    fn content_from_rendering_or_message() {
        let mut out = to_devices(message("Hello", "World"), "42", &["t"]);
        let c = content(&out).unwrap();
        assert_eq!((c.title.as_str(), c.body.as_str()), ("Hello", "World"));
        assert_eq!(c.data.get("messageId"), Some(&out.message.id));
        out.rendered = Some(rendered(&[(
            "json",
            r#"{"title": "T", "body": "B", "data": {"reportId": 17, "url": "/r/1", "ok": true}}"#,
        )]));
        let c = content(&out).unwrap();
        assert_eq!((c.title.as_str(), c.body.as_str()), ("T", "B"));
        assert_eq!(c.data["reportId"], "17");
        assert_eq!(c.data["ok"], "true");
        assert_eq!(c.data["url"], "/r/1");
        out.rendered = Some(rendered(&[("json", r#"{"data": [1]}"#)]));
        assert_eq!(content(&out).unwrap_err().code(), Some("bad_rendering"));
        // Never cut, whatever the length.
        let long = to_devices(message(&"t".repeat(1000), &"é".repeat(5000)), "42", &["t"]);
        let c = content(&long).unwrap();
        assert_eq!((c.title.len(), c.body.len()), (1000, 10_000));
        assert_eq!(c.body, long.message.content);
    }
}
