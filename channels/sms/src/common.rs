//! What the SMS providers share: configuration helpers, phone numbers (E.164 checks and
//! masking), vendor text made fit for an error, template data, and the classification
//! helpers and account health every provider's `send` goes through.

use std::sync::Mutex;
use std::time::Duration;

use herald_channel::{ChannelError, ConfigError, ErrorKind, Health, Outgoing};
use serde::{Deserialize, Deserializer};

/// `User-Agent` of every vendor request.
pub(crate) const USER_AGENT: &str = concat!("herald-sms/", env!("CARGO_PKG_VERSION"));
/// Default `timeout` of every kind.
const DEFAULT_TIMEOUT: &str = "10s";
/// Longest vendor message kept in an error.
const MAX_VENDOR_TEXT: usize = 160;
/// Largest vendor reply read; anything longer is cut (the replies we parse are tiny).
const MAX_REPLY_BYTES: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// Configuration helpers
// ---------------------------------------------------------------------------------------

pub(crate) use herald_channel::http::check_base_url;
pub(crate) use herald_channel::{config_error, Secret};

/// An identifier written either as a string or as a number (`template_id = 1110` or
/// `"1110"`; Tencent's ids are numeric).
pub(crate) fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) if n.is_u64() => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom(
            "invalid type: expected a string or a non-negative integer",
        )),
    }
}

pub(crate) fn default_timeout() -> String {
    DEFAULT_TIMEOUT.to_owned()
}

/// Configuration parsing is the SDK's (it names the key path in type errors).
pub(crate) use herald_channel::parse_config as parse;

/// `value` trimmed, or an error naming `key` when it is blank.
pub(crate) fn required(name: &str, key: &str, value: &str) -> Result<String, ConfigError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(config_error(name, key, "must not be empty"));
    }
    Ok(v.to_owned())
}

/// A humantime duration greater than zero.
pub(crate) fn parse_timeout(name: &str, raw: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(raw.trim()).map_err(|e| {
        config_error(
            name,
            "timeout",
            format!("`{raw}` is not a duration ({e}); expected e.g. \"10s\""),
        )
    })?;
    if d.is_zero() {
        return Err(config_error(name, "timeout", "must be greater than zero"));
    }
    Ok(d)
}

/// The `Host` header value reqwest sends for `url` (the port only when it is not the
/// scheme's default), which the TC3 and ACS3 signatures cover.
pub(crate) fn host_header(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Phone numbers
// ---------------------------------------------------------------------------------------

/// The delivery's phone number, checked to be E.164 (`+`, a non-zero digit, 6 to 14 more
/// digits; the core validates recipients the same way).
pub(crate) fn e164(out: &Outgoing) -> Result<&str, ChannelError> {
    let phone = out
        .address
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ChannelError::bad_recipient("no phone number"))?;
    let digits = phone.strip_prefix('+').unwrap_or("");
    let valid = (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if !valid {
        return Err(ChannelError::bad_recipient(format!(
            "not an E.164 phone number: {}",
            mask_phone(phone)
        )));
    }
    Ok(phone)
}

/// A phone number as it may appear in errors and logs: the middle four digits and
/// everything but the country code and a few leading digits hidden.
///
/// `+8613800000000` → `+86138****0000`, `+15005550006` → `+150****0006`; numbers shorter
/// than 10 characters keep only their first character and last two digits.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    let n = chars.len();
    let (head, tail) = match n {
        10.. => (n - 8, 4),
        5..=9 => (1, 2),
        _ => (0, 0),
    };
    let mut out: String = chars[..head].iter().collect();
    out.push_str("****");
    out.extend(&chars[n - tail..]);
    out
}

/// `text` with every run of 7 or more digits (with an optional leading `+`) masked by
/// [`mask_phone`]: vendors echo numbers in their error messages.
pub(crate) fn redact_phones(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let plus = chars[i] == '+';
        let mut j = if plus { i + 1 } else { i };
        while j < chars.len() && chars[j].is_ascii_digit() {
            j += 1;
        }
        let digits = j - if plus { i + 1 } else { i };
        if digits >= 7 {
            let run: String = chars[start..j].iter().collect();
            out.push_str(&mask_phone(&run));
            i = j;
        } else if digits > 0 {
            out.extend(&chars[start..j]);
            i = j;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// A vendor's error message made fit for a delivery's `error`: one line, at most
/// [`MAX_VENDOR_TEXT`] characters, phone numbers masked, each of `hide` (e.g. the access
/// key id) replaced by `<redacted>`, and anything after "string to sign" dropped (Aliyun
/// echoes its whole canonical request there, numbers and key id included).
pub(crate) fn vendor_text(message: &str, hide: &[&str]) -> String {
    let mut text = message.to_owned();
    let lower = text.to_ascii_lowercase();
    if let Some(at) = lower
        .find("server string to sign")
        .or_else(|| lower.find("string to sign"))
    {
        text.truncate(at);
    }
    for secret in hide.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    let one_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches([' ', ':', ','])
        .to_owned();
    let mut short: String = one_line.chars().take(MAX_VENDOR_TEXT).collect();
    if one_line.chars().count() > MAX_VENDOR_TEXT {
        short.push('…');
    }
    redact_phones(&short)
}

// ---------------------------------------------------------------------------------------
// Template data
// ---------------------------------------------------------------------------------------

/// The Herald template the message was sent with; without one, a template-based vendor has
/// nothing to send.
pub(crate) fn template_name(out: &Outgoing) -> Result<&str, ChannelError> {
    out.message.template.as_deref().ok_or_else(|| {
        ChannelError::config(
            "the message has no template; this channel sends only vendor templates \
             (send with `template` and map it under `templates`)",
        )
    })
}

/// The error for a Herald template without an entry in `templates`.
pub(crate) fn unmapped(template: &str) -> ChannelError {
    ChannelError::config(format!(
        "no vendor template mapped for Herald template `{template}` (add `templates.{template}`)"
    ))
}

/// A scalar template value as text: strings as they are, numbers and booleans printed.
pub(crate) fn scalar(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `data[key]` as text, for a mapped vendor parameter. A missing or non-scalar value is a
/// `permanent` error: retrying does not change the message's data.
pub(crate) fn data_value(
    data: Option<&serde_json::Value>,
    key: &str,
    template: &str,
) -> Result<String, ChannelError> {
    let value = data.and_then(|d| d.get(key)).ok_or_else(|| {
        ChannelError::permanent(format!(
            "template `{template}`: the message data has no `{key}`"
        ))
    })?;
    scalar(value).ok_or_else(|| {
        ChannelError::permanent(format!(
            "template `{template}`: data `{key}` is not a string, number or boolean"
        ))
    })
}

// ---------------------------------------------------------------------------------------
// Classification and health
// ---------------------------------------------------------------------------------------

/// What a provider's `classify()` says about one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) kind: ErrorKind,
    pub(crate) retry_after: Option<Duration>,
    /// An account problem: no send can succeed until an operator acts, so the instance
    /// reports `Down` until a send succeeds again.
    pub(crate) down: bool,
}

impl Verdict {
    pub(crate) const fn of(kind: ErrorKind) -> Self {
        Self {
            kind,
            retry_after: None,
            down: false,
        }
    }
    pub(crate) const fn after(mut self, secs: u64) -> Self {
        self.retry_after = Some(Duration::from_secs(secs));
        self
    }
    pub(crate) const fn down(mut self) -> Self {
        self.down = true;
        self
    }
    /// The classified error, with the vendor's code.
    pub(crate) fn error(self, code: Option<&str>, message: String) -> Failure {
        let mut error = ChannelError::new(self.kind, message);
        if let Some(code) = code {
            error = error.with_code(code);
        }
        if let Some(after) = self.retry_after {
            error = error.with_retry_after(after);
        }
        Failure {
            error,
            down: self.down,
        }
    }
}

/// A failed attempt: the error returned to the dispatcher, and whether it takes the
/// instance down.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: ChannelError,
    pub(crate) down: bool,
}

impl From<ChannelError> for Failure {
    fn from(error: ChannelError) -> Self {
        Failure { error, down: false }
    }
}

/// A request that got no HTTP answer (or an unreadable one): worth another attempt. The
/// URL is stripped: it holds the account SID (Twilio) or the phone number (Aliyun ACS3).
pub(crate) fn request_error(e: reqwest::Error) -> Failure {
    let e = e.without_url();
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let message = format!("{what}: {}", herald_channel::error_chain(&e));
    ChannelError::transient(redact_phones(&message)).into()
}

/// Longest `Retry-After` honoured (a vendor asking for more is retried after this).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A reply's `Retry-After` in seconds (HTTP dates are not used by these vendors).
pub(crate) fn retry_after_of(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

impl Failure {
    /// A retryable failure (outage, throttling) waits as long as the vendor asked, unless
    /// the classification already set a time.
    pub(crate) fn honour_retry_after(mut self, after: Option<Duration>) -> Failure {
        if let Some(after) = after {
            if self.error.is_retryable() && self.error.retry_after().is_none() {
                self.error = self.error.with_retry_after(after);
            }
        }
        self
    }
}

/// Read at most [`MAX_REPLY_BYTES`] of a reply's body.
pub(crate) async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(request_error)? {
        let room = MAX_REPLY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_REPLY_BYTES {
            break;
        }
    }
    Ok(body)
}

/// An instance's account health: `Down(reason)` after an account problem, until a send
/// succeeds.
pub(crate) struct AccountHealth {
    channel: String,
    down: Mutex<Option<String>>,
}

impl AccountHealth {
    pub(crate) fn new(channel: &str) -> Self {
        Self {
            channel: channel.to_owned(),
            down: Mutex::new(None),
        }
    }

    /// Record the outcome of one attempt and hand the result on.
    pub(crate) fn observe<T>(&self, result: Result<T, Failure>) -> Result<T, ChannelError> {
        match result {
            Ok(v) => {
                if let Ok(mut down) = self.down.lock() {
                    if down.take().is_some() {
                        tracing::info!(channel = %self.channel, "send succeeded, channel up again");
                    }
                }
                Ok(v)
            }
            Err(f) => {
                if f.down {
                    let was_up = self
                        .down
                        .lock()
                        .map(|mut down| down.replace(f.error.to_string()).is_none())
                        .unwrap_or(false);
                    if was_up {
                        tracing::warn!(
                            channel = %self.channel,
                            code = f.error.code().unwrap_or(""),
                            "account problem, channel down until a send succeeds"
                        );
                    }
                }
                Err(f.error)
            }
        }
    }

    pub(crate) fn health(&self) -> Health {
        match self.down.lock().ok().and_then(|d| d.clone()) {
            Some(reason) => Health::Down(reason),
            None => Health::Ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::testkit::{message, outgoing};

    #[test]
    fn masks() {
        assert_eq!(mask_phone("+8613800000000"), "+86138****0000");
        assert_eq!(mask_phone("+15005550006"), "+150****0006");
        assert_eq!(mask_phone("+4930123"), "+****23");
        assert_eq!(mask_phone("123"), "****");
        assert_eq!(mask_phone(""), "****");
    }

    #[test]
    fn phones_in_text_are_masked() {
        assert_eq!(
            redact_phones("The 'To' number +15005550001 is not valid"),
            "The 'To' number +150****0001 is not valid"
        );
        assert_eq!(
            redact_phones("手机号13800000000格式错误, code 1016"),
            "手机号138****0000格式错误, code 1016"
        );
        assert_eq!(redact_phones("Permits:5 +1 2"), "Permits:5 +1 2");
    }

    #[test]
    fn vendor_text_is_short_and_clean() {
        let aliyun = "Specified signature is not matched with our calculation. server string \
                      to sign is:POST&%2F&AccessKeyId%3DLTAI5t&PhoneNumbers%3D13800000000";
        assert_eq!(
            vendor_text(aliyun, &["LTAI5t"]),
            "Specified signature is not matched with our calculation."
        );
        assert_eq!(
            vendor_text("key LTAI5t\nrejected", &["LTAI5t"]),
            "key <redacted> rejected"
        );
        let long = "x".repeat(500);
        assert_eq!(vendor_text(&long, &[]).chars().count(), MAX_VENDOR_TEXT + 1);
    }

    #[test]
    fn e164_addresses() {
        let ok = outgoing(message("t", "c"), "1", Some(" +8613800000000 "));
        assert_eq!(e164(&ok).unwrap(), "+8613800000000");
        for bad in [
            None,
            Some(""),
            Some("13800000000"),
            Some("+0123456"),
            Some("+86 138"),
        ] {
            let out = outgoing(message("t", "c"), "1", bad);
            let err = e164(&out).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::BadRecipient, "{bad:?}");
        }
        let out = outgoing(message("t", "c"), "1", Some("8613800000000"));
        let err = e164(&out).unwrap_err().to_string();
        assert!(!err.contains("8613800000000"), "{err}");
    }

    #[test]
    fn template_values() {
        let data = serde_json::json!({"s": "a", "n": 42, "f": 1.5, "b": true, "o": {}, "z": null});
        assert_eq!(data_value(Some(&data), "s", "t").unwrap(), "a");
        assert_eq!(data_value(Some(&data), "n", "t").unwrap(), "42");
        assert_eq!(data_value(Some(&data), "f", "t").unwrap(), "1.5");
        assert_eq!(data_value(Some(&data), "b", "t").unwrap(), "true");
        for key in ["o", "z", "missing"] {
            let e = data_value(Some(&data), key, "t").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Permanent);
            assert!(e.message().contains(key), "{e}");
        }
        assert!(data_value(None, "s", "t").is_err());
    }

    #[test]
    fn health_goes_down_and_comes_back() {
        let h = AccountHealth::new("sms");
        assert_eq!(h.health(), Health::Ok);
        let r: Result<(), _> = h.observe(Err(
            Verdict::of(ErrorKind::Transient).error(Some("x"), "blip".into())
        ));
        assert!(r.is_err());
        assert_eq!(
            h.health(),
            Health::Ok,
            "a transient error is no account problem"
        );
        let _ = h.observe::<()>(Err(Verdict::of(ErrorKind::Config)
            .down()
            .error(Some("isv.OUT_OF_SERVICE"), "stopped".into())));
        assert_eq!(
            h.health(),
            Health::Down("config: [isv.OUT_OF_SERVICE] stopped".into())
        );
        let _ = h.observe::<()>(Err(ChannelError::transient("blip").into()));
        assert!(
            matches!(h.health(), Health::Down(_)),
            "only a success clears it"
        );
        assert_eq!(h.observe(Ok(7)), Ok(7));
        assert_eq!(h.health(), Health::Ok);
    }

    /// The base-URL check itself is the SDK's (`herald_channel::http::check_base_url`, with
    /// these cases among its tests); the `Host` header the signatures cover is ours.
    #[test]
    fn host_headers() {
        let u = reqwest::Url::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(host_header(&u), "127.0.0.1:8080");
        let u = reqwest::Url::parse("https://sms.tencentcloudapi.com:443/").unwrap();
        assert_eq!(host_header(&u), "sms.tencentcloudapi.com");
    }
}
