//! `sms.twilio`: Twilio Programmable Messaging, `POST
//! {endpoint}/2010-04-01/Accounts/{AccountSid}/Messages.json` with HTTP Basic auth.
//!
//! Twilio sends free text, so no template mapping: the body is the rendered `sms.txt.j2`
//! part when the message has a template, else the message's title and content (see
//! [`text`]). With `status_callback_url`, every message carries a `StatusCallback` of that
//! URL plus `?delivery=<delivery id>`, and [`Channel::callback`] turns Twilio's signed
//! status reports into receipts.
//!
//! Replies and callback error codes are mapped in one place, [`classify`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use herald_channel::http::{http_client, MAX_CONNECT_TIMEOUT};
use herald_channel::{
    async_trait, Accepted, BuildContext, CallbackError, CallbackRequest, Channel, ChannelError,
    ConfigError, ErrorKind, Health, Outgoing, Receipt, ReceiptFor,
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha1::Sha1;

use crate::common::{
    check_base_url, config_error, default_timeout, e164, parse, parse_timeout, read_body,
    request_error, required, retry_after_of, vendor_text, AccountHealth, Failure, Secret, Verdict,
    USER_AGENT,
};

pub(crate) const DEFAULT_ENDPOINT: &str = "https://api.twilio.com";
/// Twilio's limit for one message body (error 21617 beyond it).
const MAX_BODY_CHARS: usize = 1600;
/// The query parameter that carries the delivery id in the StatusCallback URL.
const DELIVERY_PARAM: &str = "delivery";
/// The header Twilio signs callbacks with (lowercase, as the core hands headers over).
const SIGNATURE_HEADER: &str = "x-twilio-signature";

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// `[channels.<name>]` of kind `sms.twilio`, minus `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    account_sid: String,
    auth_token: Secret,
    /// A Twilio number (E.164), short code or alphanumeric sender id. Exactly one of
    /// `from` and `messaging_service_sid`.
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    messaging_service_sid: Option<String>,
    /// The public URL of `POST /api/v1/callbacks/twilio/<instance>`.
    #[serde(default)]
    status_callback_url: Option<String>,
    #[serde(default = "default_endpoint")]
    endpoint: String,
    #[serde(default = "default_timeout")]
    timeout: String,
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.to_owned()
}

/// Who the message comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sender {
    From(String),
    Service(String),
}

pub(crate) fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    let cfg: Config = parse(&ctx)?;
    Ok(Arc::new(TwilioSms::new(ctx.name, cfg)?))
}

/// `prefix` followed by 32 hexadecimal digits, Twilio's SID format.
fn is_sid(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ---------------------------------------------------------------------------------------
// The channel
// ---------------------------------------------------------------------------------------

pub(crate) struct TwilioSms {
    account_sid: String,
    auth_token: Secret,
    sender: Sender,
    status_callback: Option<reqwest::Url>,
    messages_url: reqwest::Url,
    http: reqwest::Client,
    health: AccountHealth,
}

impl fmt::Debug for TwilioSms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioSms")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &self.auth_token)
            .field("sender", &self.sender)
            .field(
                "status_callback",
                &self.status_callback.as_ref().map(|u| u.as_str()),
            )
            .finish_non_exhaustive()
    }
}

impl TwilioSms {
    fn new(name: &str, cfg: Config) -> Result<Self, ConfigError> {
        let account_sid = cfg.account_sid.trim().to_owned();
        if !is_sid(&account_sid, "AC") {
            return Err(config_error(
                name,
                "account_sid",
                "expected `AC` followed by 32 hexadecimal digits",
            ));
        }
        if cfg.auth_token.expose().trim().is_empty() {
            return Err(config_error(name, "auth_token", "must not be empty"));
        }
        let sender = match (cfg.from, cfg.messaging_service_sid) {
            (Some(from), None) => Sender::From(required(name, "from", &from)?),
            (None, Some(sid)) => {
                let sid = sid.trim().to_owned();
                if !is_sid(&sid, "MG") {
                    return Err(config_error(
                        name,
                        "messaging_service_sid",
                        "expected `MG` followed by 32 hexadecimal digits",
                    ));
                }
                Sender::Service(sid)
            }
            _ => {
                return Err(config_error(
                    name,
                    "from",
                    "set exactly one of `from` and `messaging_service_sid`",
                ))
            }
        };
        let status_callback = match cfg.status_callback_url {
            None => None,
            Some(raw) => {
                let url = reqwest::Url::parse(raw.trim()).map_err(|e| {
                    config_error(
                        name,
                        "status_callback_url",
                        format!("not a valid URL ({e})"),
                    )
                })?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(config_error(
                        name,
                        "status_callback_url",
                        "expected an absolute http:// or https:// URL",
                    ));
                }
                if url.fragment().is_some() {
                    return Err(config_error(
                        name,
                        "status_callback_url",
                        "must not have a fragment",
                    ));
                }
                if url.query_pairs().any(|(k, _)| k == DELIVERY_PARAM) {
                    return Err(config_error(
                        name,
                        "status_callback_url",
                        "must not have a `delivery` query parameter (the channel adds it)",
                    ));
                }
                Some(url)
            }
        };
        let endpoint = check_base_url(name, "endpoint", &cfg.endpoint)?;
        let messages_url = reqwest::Url::parse(&format!(
            "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
            endpoint.as_str().trim_end_matches('/')
        ))
        .map_err(|e| config_error(name, "endpoint", format!("not a valid URL ({e})")))?;
        let timeout = parse_timeout(name, &cfg.timeout)?;
        Ok(Self {
            account_sid,
            auth_token: cfg.auth_token,
            sender,
            status_callback,
            messages_url,
            http: http_client(name, USER_AGENT, timeout.min(MAX_CONNECT_TIMEOUT), timeout)?,
            health: AccountHealth::new(name),
        })
    }

    /// The `StatusCallback` for a delivery: the configured URL plus `delivery=<id>`.
    fn status_callback_for(&self, delivery_id: i64) -> Option<String> {
        let mut url = self.status_callback.clone()?;
        url.query_pairs_mut()
            .append_pair(DELIVERY_PARAM, &delivery_id.to_string());
        Some(url.into())
    }

    /// The form body of one delivery.
    fn form(&self, out: &Outgoing) -> Result<String, ChannelError> {
        let to = e164(out)?;
        let body = text(out)?;
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("To", to);
        match &self.sender {
            Sender::From(from) => form.append_pair("From", from),
            Sender::Service(sid) => form.append_pair("MessagingServiceSid", sid),
        };
        form.append_pair("Body", &body);
        if let Some(callback) = self.status_callback_for(out.delivery_id) {
            form.append_pair("StatusCallback", &callback);
        }
        Ok(form.finish())
    }

    async fn attempt(&self, out: &Outgoing) -> Result<Accepted, Failure> {
        let form = self.form(out)?;
        let response = self
            .http
            .post(self.messages_url.clone())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status().as_u16();
        let retry_after = retry_after_of(&response);
        let body = read_body(response).await?;
        self.interpret(status, retry_after, &body)
            .map_err(|f| f.honour_retry_after(retry_after))
    }

    fn interpret(
        &self,
        status: u16,
        retry_after: Option<Duration>,
        body: &[u8],
    ) -> Result<Accepted, Failure> {
        let reply: Option<Reply> = serde_json::from_slice(body).ok();
        if (200..300).contains(&status) {
            let provider_id = reply.and_then(|r| r.sid).filter(|s| !s.is_empty());
            return Ok(Accepted::Sent { provider_id });
        }
        let code = reply.as_ref().and_then(|r| r.code);
        let mut verdict = classify(Some(status), code);
        if verdict.kind == ErrorKind::RateLimited && retry_after.is_some() {
            verdict.retry_after = retry_after;
        }
        let message = match reply.as_ref().and_then(|r| r.message.as_deref()) {
            Some(m) => format!("Twilio: {}", vendor_text(m, &[&self.account_sid])),
            None => format!("Twilio answered HTTP {status}"),
        };
        let code = code.map(|c| c.to_string());
        Err(verdict.error(code.as_deref(), message))
    }

    /// The URLs Twilio may have signed for a callback that arrived with `query`: the
    /// configured URL with the raw query, and the same with the port added or removed
    /// (Twilio's own validators accept both, as proxies and Twilio differ about it).
    fn callback_urls(&self, base: &reqwest::Url, query: &str) -> Vec<String> {
        let suffix = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let mut url = base.clone();
        url.set_query(None);
        let host = url.host_str().unwrap_or_default().to_owned();
        let path = url.path().to_owned();
        let mut urls = vec![format!("{}{suffix}", url.as_str())];
        match url.port() {
            Some(_) => urls.push(format!("{}://{host}{path}{suffix}", url.scheme())),
            None => {
                if let Some(port) = url.port_or_known_default() {
                    urls.push(format!("{}://{host}:{port}{path}{suffix}", url.scheme()));
                }
            }
        }
        urls
    }
}

#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    code: Option<u32>,
    #[serde(default)]
    message: Option<String>,
}

/// The SMS text: the rendered `txt` part (trimmed) when there is one, else
/// `title` + newline + `content` (or whichever of the two is not blank). Longer than
/// Twilio's 1600 characters is `permanent`, before any request.
fn text(out: &Outgoing) -> Result<String, ChannelError> {
    let rendered = out
        .rendered
        .as_ref()
        .and_then(|r| r.part("txt"))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let text = match rendered {
        Some(t) => t.to_owned(),
        None => {
            let title = out.message.title.trim();
            let content = out.message.content.trim();
            match (title.is_empty(), content.is_empty()) {
                (false, false) => format!("{title}\n{content}"),
                (false, true) => title.to_owned(),
                (true, false) => content.to_owned(),
                (true, true) => {
                    return Err(ChannelError::permanent(
                        "nothing to send: no rendered `txt` part, title or content",
                    ))
                }
            }
        }
    };
    let chars = text.chars().count();
    if chars > MAX_BODY_CHARS {
        return Err(ChannelError::permanent(format!(
            "the SMS text has {chars} characters; Twilio takes at most {MAX_BODY_CHARS}"
        ))
        .with_code("21617"));
    }
    Ok(text)
}

#[async_trait]
impl Channel for TwilioSms {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        let result = self.attempt(out).await;
        self.health.observe(result)
    }

    fn health(&self) -> Health {
        self.health.health()
    }

    /// A StatusCallback: verify `X-Twilio-Signature`, then `delivered` → `Delivered`,
    /// `undelivered` / `failed` / `canceled` → `Failed` (classified from `ErrorCode`), any
    /// other status → no receipt.
    async fn callback(&self, req: &CallbackRequest<'_>) -> Result<Vec<Receipt>, CallbackError> {
        let Some(base) = &self.status_callback else {
            // No StatusCallback was ever given to Twilio: nothing to verify against.
            return Err(CallbackError::NotSupported);
        };
        let signature = req
            .header(SIGNATURE_HEADER)
            .ok_or_else(|| CallbackError::Unauthorized("no X-Twilio-Signature header".into()))?;
        let params: Vec<(String, String)> = form_urlencoded::parse(req.body).into_owned().collect();
        let signed = self
            .callback_urls(base, req.query)
            .iter()
            .any(|url| verify_signature(self.auth_token.expose(), url, &params, signature));
        if !signed {
            return Err(CallbackError::Unauthorized(
                "X-Twilio-Signature does not match".into(),
            ));
        }
        receipts(req.query, &params)
    }
}

/// The receipts of a verified callback.
fn receipts(query: &str, params: &[(String, String)]) -> Result<Vec<Receipt>, CallbackError> {
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let status = get("MessageStatus")
        .or_else(|| get("SmsStatus"))
        .ok_or_else(|| CallbackError::BadRequest("no MessageStatus".into()))?;
    let delivery = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == DELIVERY_PARAM)
        .map(|(_, v)| {
            v.parse::<i64>().map_err(|_| {
                CallbackError::BadRequest(format!("`{DELIVERY_PARAM}` is not a delivery id"))
            })
        })
        .transpose()?;
    let target = || match delivery {
        Some(id) => Ok(ReceiptFor::Delivery(id)),
        None => get("MessageSid")
            .or_else(|| get("SmsSid"))
            .map(|sid| ReceiptFor::Provider(sid.to_owned()))
            .ok_or_else(|| CallbackError::BadRequest("no MessageSid and no delivery id".into())),
    };
    Ok(match status {
        "delivered" | "read" => vec![Receipt::Delivered(target()?)],
        "undelivered" | "failed" | "canceled" => {
            let code = get("ErrorCode");
            let numeric = code.and_then(|c| c.trim().parse::<u32>().ok());
            let message = match code {
                Some(c) => format!("Twilio reported the message {status} (error {c})"),
                None => format!("Twilio reported the message {status}"),
            };
            let error = classify(None, numeric).error(code, message).error;
            vec![Receipt::Failed(target()?, error)]
        }
        // queued, accepted, scheduled, sending, sent, receiving, received …
        _ => Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------

/// Twilio's answer → what the dispatcher does. `status` is the HTTP status of a send
/// (`None` for a StatusCallback's `ErrorCode`), `code` Twilio's error code.
///
/// | code / status | outcome |
/// |---|---|
/// | 20429, 30001 (queue overflow), HTTP 429 | rate_limited (`Retry-After` seconds honoured by the caller) |
/// | 21211, 21610, 21614, 21608, 21635, 30004, 30005, 30006 | bad_recipient |
/// | 20003, 20404, 30002 (suspended), HTTP 401 | config, instance down |
/// | 21212, 21606, 21659 (the `From` is wrong) | config |
/// | 21602, 21617, 30007 | permanent |
/// | 30003, 30008 | transient |
/// | other: HTTP 5xx / other 4xx / callback without HTTP status / rest | transient / permanent / permanent / transient |
pub(crate) fn classify(status: Option<u16>, code: Option<u32>) -> Verdict {
    use ErrorKind::*;
    match code {
        Some(20429 | 30001) => return Verdict::of(RateLimited),
        Some(21211 | 21610 | 21614 | 21608 | 21635 | 30004 | 30005 | 30006) => {
            return Verdict::of(BadRecipient)
        }
        Some(20003 | 20404 | 30002) => return Verdict::of(Config).down(),
        Some(21212 | 21606 | 21659) => return Verdict::of(Config),
        Some(21602 | 21617 | 30007) => return Verdict::of(Permanent),
        Some(30003 | 30008) => return Verdict::of(Transient),
        _ => {}
    }
    match status {
        Some(429) => Verdict::of(RateLimited),
        Some(401) => Verdict::of(Config).down(),
        Some(500..=599) => Verdict::of(Transient),
        Some(400..=499) => Verdict::of(Permanent),
        // A callback reporting failure with an unknown (or no) code: it is final.
        None => Verdict::of(Permanent),
        Some(_) => Verdict::of(Transient),
    }
}

// ---------------------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------------------

/// The string Twilio signs: the URL, then every POST parameter as `key` + `value`, sorted
/// by key (and value).
fn signed_content(url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut s = url.to_owned();
    for (k, v) in sorted {
        s.push_str(k);
        s.push_str(v);
    }
    s
}

/// `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, url + sorted params)). Herald only
/// verifies ([`verify_signature`]); this is the vector test's view of the same content.
#[cfg(test)]
fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(signed_content(url, params).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Does `header` sign `url` + `params`? Compared in constant time.
fn verify_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) else {
        return false;
    };
    mac.update(signed_content(url, params).as_bytes());
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::testkit::{message, outgoing, rendered};
    use herald_channel::Services;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Gold vector 5 (providers.md): Twilio's documented request-validation example.
    #[test]
    fn signature_vector() {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let expected = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert_eq!(twilio_signature("12345", url, &params), expected);
        // Order of the POST parameters does not matter; the token, URL and values do.
        let mut reversed = params.clone();
        reversed.reverse();
        assert!(verify_signature("12345", url, &reversed, expected));
        assert!(!verify_signature("12346", url, &params, expected));
        assert!(!verify_signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1",
            &params,
            expected
        ));
        assert!(!verify_signature("12345", url, &params, "not base64!"));
    }

    #[test]
    fn classification_table() {
        use ErrorKind::*;
        // (HTTP status, code, kind, down)
        let table: &[(Option<u16>, Option<u32>, ErrorKind, bool)] = &[
            // providers.md
            (Some(429), Some(20429), RateLimited, false),
            (Some(429), None, RateLimited, false),
            (Some(400), Some(21211), BadRecipient, false),
            (Some(400), Some(21610), BadRecipient, false),
            (Some(400), Some(21614), BadRecipient, false),
            (Some(400), Some(21608), BadRecipient, false),
            (Some(401), Some(20003), Config, true),
            (Some(401), None, Config, true),
            // more send-time codes
            (Some(400), Some(21635), BadRecipient, false),
            (Some(404), Some(20404), Config, true),
            (Some(400), Some(21212), Config, false),
            (Some(400), Some(21606), Config, false),
            (Some(400), Some(21659), Config, false),
            (Some(400), Some(21602), Permanent, false),
            (Some(400), Some(21617), Permanent, false),
            // other 4xx / 5xx
            (Some(400), Some(21999), Permanent, false),
            (Some(400), None, Permanent, false),
            (Some(403), None, Permanent, false),
            (Some(404), None, Permanent, false),
            (Some(500), Some(20500), Transient, false),
            (Some(500), None, Transient, false),
            (Some(503), None, Transient, false),
            (Some(302), None, Transient, false),
            // StatusCallback ErrorCodes
            (None, Some(30001), RateLimited, false),
            (None, Some(30002), Config, true),
            (None, Some(30003), Transient, false),
            (None, Some(30004), BadRecipient, false),
            (None, Some(30005), BadRecipient, false),
            (None, Some(30006), BadRecipient, false),
            (None, Some(30007), Permanent, false),
            (None, Some(30008), Transient, false),
            (None, Some(30999), Permanent, false),
            (None, None, Permanent, false),
        ];
        for &(status, code, kind, down) in table {
            let v = classify(status, code);
            assert_eq!(
                (v.kind, v.retry_after, v.down),
                (kind, None, down),
                "{status:?} {code:?}"
            );
        }
    }

    fn channel(config: serde_json::Value) -> Result<TwilioSms, ConfigError> {
        let services = Services::default();
        let ctx = BuildContext {
            name: "tw",
            config: &config,
            services: &services,
        };
        TwilioSms::new("tw", parse(&ctx)?)
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "account_sid": SID,
            "auth_token": "tok3n-value",
            "from": "+15005550006",
            "status_callback_url": "https://herald.example.com/api/v1/callbacks/twilio/tw",
        })
    }

    #[test]
    fn config() {
        let ch = channel(base()).unwrap();
        assert_eq!(
            ch.messages_url.as_str(),
            format!("https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json")
        );
        assert!(!format!("{ch:?}").contains("tok3n"));
        let cases: &[(serde_json::Value, &str)] = &[
            (serde_json::json!({"account_sid": "AC123"}), "account_sid:"),
            (serde_json::json!({"auth_token": " "}), "auth_token:"),
            (
                serde_json::json!({"messaging_service_sid": "MG0123456789abcdef0123456789abcdef"}),
                "exactly one of `from` and `messaging_service_sid`",
            ),
            (serde_json::json!({"from": null}), "exactly one"),
            (
                serde_json::json!({"status_callback_url": "/relative"}),
                "status_callback_url:",
            ),
            (
                serde_json::json!({"status_callback_url": "https://h/x?delivery=1"}),
                "status_callback_url: must not have a `delivery`",
            ),
            (
                serde_json::json!({"endpoint": "https://api.twilio.com?x=1"}),
                "endpoint:",
            ),
            (
                serde_json::json!({"statuscallback": "x"}),
                "unknown field `statuscallback`",
            ),
        ];
        for (patch, expected) in cases {
            let mut cfg = base();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    cfg.as_object_mut().unwrap().remove(k);
                } else {
                    cfg[k] = v.clone();
                }
            }
            let err = channel(cfg).unwrap_err().to_string();
            assert!(err.starts_with("channels.tw: "), "{patch}: {err}");
            assert!(err.contains(expected), "{patch}: {err}");
        }
        let mut cfg = base();
        cfg.as_object_mut().unwrap().remove("from");
        cfg["messaging_service_sid"] = "MG0123456789abcdef0123456789abcdef".into();
        assert!(matches!(channel(cfg).unwrap().sender, Sender::Service(_)));
    }

    #[test]
    fn text_selection() {
        let mut out = outgoing(
            message("Report ready", "Report 42 is ready"),
            "u",
            Some("+1"),
        );
        assert_eq!(text(&out).unwrap(), "Report ready\nReport 42 is ready");
        out.rendered = Some(rendered(&[("txt", "  Hi Bob, report 42 is ready.\n")]));
        assert_eq!(text(&out).unwrap(), "Hi Bob, report 42 is ready.");
        out.rendered = Some(rendered(&[("txt", "  ")]));
        assert_eq!(text(&out).unwrap(), "Report ready\nReport 42 is ready");
        let out = outgoing(message("", "only content"), "u", None);
        assert_eq!(text(&out).unwrap(), "only content");
        let out = outgoing(message("only title", " "), "u", None);
        assert_eq!(text(&out).unwrap(), "only title");
        let out = outgoing(message(" ", ""), "u", None);
        assert_eq!(text(&out).unwrap_err().kind(), ErrorKind::Permanent);
        let long = "x".repeat(MAX_BODY_CHARS + 1);
        let out = outgoing(message("", &long), "u", None);
        assert_eq!(text(&out).unwrap_err().code(), Some("21617"));
    }

    #[test]
    fn form_fields() {
        let ch = channel(base()).unwrap();
        let mut out = outgoing(message("Hi", "there & more"), "u", Some("+8613800000000"));
        out.delivery_id = 17;
        let form: Vec<(String, String)> = form_urlencoded::parse(ch.form(&out).unwrap().as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            form,
            pairs(&[
                ("To", "+8613800000000"),
                ("From", "+15005550006"),
                ("Body", "Hi\nthere & more"),
                (
                    "StatusCallback",
                    "https://herald.example.com/api/v1/callbacks/twilio/tw?delivery=17"
                ),
            ])
        );
    }

    #[test]
    fn callback_url_variants() {
        let ch = channel(base()).unwrap();
        let base = ch.status_callback.clone().unwrap();
        assert_eq!(
            ch.callback_urls(&base, "delivery=3"),
            [
                "https://herald.example.com/api/v1/callbacks/twilio/tw?delivery=3",
                "https://herald.example.com:443/api/v1/callbacks/twilio/tw?delivery=3",
            ]
        );
        let with_port = reqwest::Url::parse("http://h.example:8080/cb?k=v").unwrap();
        assert_eq!(
            ch.callback_urls(&with_port, "k=v&delivery=3"),
            [
                "http://h.example:8080/cb?k=v&delivery=3",
                "http://h.example/cb?k=v&delivery=3"
            ]
        );
        assert_eq!(
            ch.callback_urls(&with_port, "")[0],
            "http://h.example:8080/cb"
        );
    }

    #[test]
    fn receipts_from_params() {
        let r = receipts(
            "delivery=5",
            &pairs(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]),
        )
        .unwrap();
        assert_eq!(r, [Receipt::Delivered(ReceiptFor::Delivery(5))]);
        let r = receipts(
            "",
            &pairs(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]),
        )
        .unwrap();
        assert_eq!(r, [Receipt::Delivered(ReceiptFor::Provider("SM1".into()))]);
        let r = receipts(
            "delivery=5",
            &pairs(&[
                ("MessageSid", "SM1"),
                ("MessageStatus", "undelivered"),
                ("ErrorCode", "30005"),
            ]),
        )
        .unwrap();
        let Receipt::Failed(ReceiptFor::Delivery(5), e) = &r[0] else {
            panic!("{r:?}")
        };
        assert_eq!(
            (e.kind(), e.code()),
            (ErrorKind::BadRecipient, Some("30005"))
        );
        for status in ["queued", "accepted", "sending", "sent", "scheduled"] {
            let r = receipts("delivery=5", &pairs(&[("MessageStatus", status)])).unwrap();
            assert!(r.is_empty(), "{status}");
        }
        assert!(matches!(
            receipts("delivery=x", &pairs(&[("MessageStatus", "delivered")])),
            Err(CallbackError::BadRequest(_))
        ));
        assert!(matches!(
            receipts("", &pairs(&[("MessageStatus", "delivered")])),
            Err(CallbackError::BadRequest(_))
        ));
        assert!(matches!(
            receipts("delivery=1", &pairs(&[("MessageSid", "SM1")])),
            Err(CallbackError::BadRequest(_))
        ));
    }

    #[test]
    fn replies() {
        let ch = channel(base()).unwrap();
        let ok = br#"{"sid":"SM1234567890abcdef1234567890abcdef","status":"queued"}"#;
        assert_eq!(
            ch.interpret(201, None, ok).unwrap(),
            Accepted::Sent {
                provider_id: Some("SM1234567890abcdef1234567890abcdef".into())
            }
        );
        let limited = br#"{"code":20429,"message":"Too Many Requests","more_info":"https://www.twilio.com/docs/errors/20429","status":429}"#;
        let f = ch
            .interpret(429, Some(Duration::from_secs(7)), limited)
            .unwrap_err();
        assert_eq!(f.error.kind(), ErrorKind::RateLimited);
        assert_eq!(f.error.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(f.error.code(), Some("20429"));
        let bad = br#"{"code":21211,"message":"The 'To' number +15005550001 is not a valid phone number.","status":400}"#;
        let f = ch
            .interpret(400, Some(Duration::from_secs(7)), bad)
            .unwrap_err();
        assert_eq!(f.error.kind(), ErrorKind::BadRecipient);
        assert_eq!(
            f.error.retry_after(),
            None,
            "Retry-After only for rate limits"
        );
        assert!(!f.error.message().contains("15005550001"), "{}", f.error);
    }
}
