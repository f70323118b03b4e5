//! `wechat.template`: template messages of a WeChat official account (公众号模板消息).
//!
//! One `send` is one `POST {endpoint}/cgi-bin/message/template/send?access_token=…` to the
//! recipient's openid, with the WeChat template id mapped from the message's Herald template
//! and the `data`/`url` of its `wechat.json.j2` rendering. The access token comes from
//! `POST {endpoint}/cgi-bin/stable_token` and is shared by every instance and node with the
//! same AppID through the core's shared cache ([`crate::token`]). The one retry
//! inside an attempt: when WeChat rejects the token (40001/42001/40014) the token is
//! refreshed (forced) once and the call repeated once. Vendor codes are mapped in
//! `classify()` (sends) and `classify_token()` (tokens).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_channel::http::{http_client, MAX_CONNECT_TIMEOUT};
use herald_channel::{
    async_trait, Accepted, BuildContext, Channel, ChannelError, ConfigError, Defaults, Health,
    Outgoing,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::common::{
    config_error, default_timeout, parse, parse_endpoint, parse_timeout, read_reply, request_error,
    vendor_text, Reply, Secret, USER_AGENT,
};
use crate::token::{cache_key, Fetched, TokenCache};
use herald_channel::clock::{self, Clock};
use herald_channel::shared::Shared;

/// The default `endpoint`.
pub const DEFAULT_ENDPOINT: &str = "https://api.weixin.qq.com";
/// The kind's default daily quota: WeChat allows 100,000 template sends a day per account.
pub const DAILY_QUOTA: u64 = 100_000;
/// WeChat's limit for `client_msg_id`.
const MAX_CLIENT_MSG_ID: usize = 64;
/// The daily quotas reset at midnight Beijing time (UTC+8, no daylight saving).
const BEIJING_OFFSET_SECS: u64 = 8 * 3600;
const DAY_SECS: u64 = 86_400;

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// `[channels.<name>]` of kind `wechat.template`, minus `kind` and the core's keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    app_id: String,
    app_secret: Secret,
    #[serde(default = "default_endpoint")]
    endpoint: String,
    #[serde(default = "default_timeout")]
    timeout: String,
    /// Herald template name → WeChat template.
    #[serde(default)]
    templates: BTreeMap<String, Mapping>,
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.to_owned()
}

/// `[channels.<name>.templates.<herald template>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mapping {
    /// The WeChat template id (from the account's template library).
    template_id: String,
    /// Overrides the rendering's `url`.
    #[serde(default)]
    url: Option<String>,
    /// Overrides the rendering's `miniprogram`.
    #[serde(default)]
    miniprogram: Option<MiniProgram>,
}

/// Opens a mini program instead of (WeChat prefers it over) `url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MiniProgram {
    appid: String,
    pagepath: String,
}

fn valid_template_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn token_like(s: &str) -> bool {
    !s.is_empty() && !s.contains(char::is_whitespace)
}

// ---------------------------------------------------------------------------------------
// The channel
// ---------------------------------------------------------------------------------------

/// One configured `wechat.template` instance.
pub struct TemplateChannel {
    name: String,
    app_id: String,
    app_secret: Secret,
    /// Base URL without a trailing `/`.
    endpoint: String,
    timeout: Duration,
    templates: BTreeMap<String, Mapping>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    /// The core's cluster-wide cache, where the access token lives.
    shared: Shared,
    tokens: TokenCache,
}

impl fmt::Debug for TemplateChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemplateChannel")
            .field("name", &self.name)
            .field("app_id", &self.app_id)
            .field("app_secret", &self.app_secret)
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .field("templates", &self.templates)
            .finish_non_exhaustive()
    }
}

impl TemplateChannel {
    /// Validates the instance's configuration; every error names the key
    /// (`channels.<name>: <key>: …`) and never contains the secret.
    pub fn from_context(ctx: &BuildContext<'_>) -> Result<Self, ConfigError> {
        let cfg: Config = parse(ctx)?;
        let name = ctx.name;
        let app_id = cfg.app_id.trim().to_owned();
        if !token_like(&app_id) {
            return Err(config_error(
                name,
                "app_id",
                "expected the official account's AppID (wx…)",
            ));
        }
        if !token_like(cfg.app_secret.expose()) {
            return Err(config_error(
                name,
                "app_secret",
                "must not be empty or contain spaces",
            ));
        }
        let endpoint = parse_endpoint(name, "endpoint", &cfg.endpoint)?;
        let timeout = parse_timeout(name, &cfg.timeout)?;
        if cfg.templates.is_empty() {
            return Err(config_error(
                name,
                "templates",
                "map at least one Herald template to a WeChat template id, e.g. \
                 [channels.<name>.templates.report_ready] template_id = \"…\"",
            ));
        }
        for (template, mapping) in &cfg.templates {
            let key = |field: &str| format!("templates.{template}{field}");
            if !valid_template_name(template) {
                return Err(config_error(
                    name,
                    &key(""),
                    "not a Herald template name (lowercase letters, digits, `_` and `-`)",
                ));
            }
            if !token_like(mapping.template_id.trim()) {
                return Err(config_error(
                    name,
                    &key(".template_id"),
                    "expected a WeChat template id",
                ));
            }
            if let Some(url) = &mapping.url {
                let ok = reqwest::Url::parse(url)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
                if !ok {
                    return Err(config_error(
                        name,
                        &key(".url"),
                        format!("`{url}` is not an http(s) URL"),
                    ));
                }
            }
            if let Some(mp) = &mapping.miniprogram {
                if !token_like(&mp.appid) {
                    return Err(config_error(
                        name,
                        &key(".miniprogram.appid"),
                        "expected the mini program's AppID",
                    ));
                }
                if mp.pagepath.trim().is_empty() {
                    return Err(config_error(
                        name,
                        &key(".miniprogram.pagepath"),
                        "must not be empty",
                    ));
                }
            }
        }
        let templates = cfg
            .templates
            .into_iter()
            .map(|(k, mut m)| {
                m.template_id = m.template_id.trim().to_owned();
                (k, m)
            })
            .collect();
        let http = http_client(name, USER_AGENT, timeout.min(MAX_CONNECT_TIMEOUT), timeout)?;
        let clock = clock::from_services(ctx.services);
        let shared = Shared::from_services(ctx.services);
        Ok(Self {
            tokens: TokenCache::new(clock.clone(), shared.clone(), cache_key(&app_id)),
            name: name.to_owned(),
            app_id,
            app_secret: cfg.app_secret,
            endpoint,
            timeout,
            templates,
            http,
            shared,
            clock,
        })
    }

    /// Use `clock` for token expiry and quota retry times (tests; a host lends one through
    /// the services instead, [`herald_channel::clock::from_services`]). Call before the first
    /// send: the instance's copy of the token starts empty again (the shared one stays).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.tokens = TokenCache::new(clock.clone(), self.shared.clone(), cache_key(&self.app_id));
        self.clock = clock;
        self
    }

    /// The request body for `out`, or why there is none. Needs no token and no network.
    fn body(&self, out: &Outgoing) -> Result<Value, ChannelError> {
        let openid = out
            .address
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ChannelError::bad_recipient("no WeChat openid"))?;
        if openid.contains(char::is_whitespace) {
            return Err(ChannelError::bad_recipient("invalid WeChat openid"));
        }
        let template = out.message.template.as_deref().ok_or_else(|| {
            ChannelError::config(
                "wechat.template sends template messages only: send with a Herald `template` \
                 mapped under `templates`",
            )
        })?;
        let mapping = self.templates.get(template).ok_or_else(|| {
            ChannelError::config(format!(
                "no WeChat template for `{template}`: add [channels.{}.templates.{template}] \
                 template_id = \"…\"",
                self.name
            ))
        })?;
        let rendering = out
            .rendered
            .as_deref()
            .and_then(|r| r.part("json"))
            .ok_or_else(|| {
                ChannelError::config(format!(
                    "no rendering for `{template}`: add templates/{template}/wechat.json.j2"
                ))
            })?;
        let rendered = Rendering::parse(rendering).map_err(|what| {
            ChannelError::config(format!("templates/{template}/wechat.json.j2: {what}"))
        })?;

        let mut body = Map::new();
        body.insert("touser".into(), json!(openid));
        body.insert("template_id".into(), json!(mapping.template_id));
        if let Some(url) = mapping.url.as_ref().or(rendered.url.as_ref()) {
            body.insert("url".into(), json!(url));
        }
        if let Some(mp) = mapping
            .miniprogram
            .as_ref()
            .or(rendered.miniprogram.as_ref())
        {
            body.insert("miniprogram".into(), json!(mp));
        }
        body.insert("client_msg_id".into(), json!(client_msg_id(out)));
        body.insert("data".into(), Value::Object(rendered.data));
        Ok(Value::Object(body))
    }

    /// Ask WeChat for a token (`force`: invalidate the current one and get a new one).
    async fn fetch_token(&self, force: bool) -> Result<Fetched, ChannelError> {
        const WHAT: &str = "stable_token";
        let response = self
            .http
            .post(format!("{}/cgi-bin/stable_token", self.endpoint))
            .json(&json!({
                "grant_type": "client_credential",
                "appid": self.app_id,
                "secret": self.app_secret.expose(),
                "force_refresh": force,
            }))
            .send()
            .await
            .map_err(|e| request_error(e, WHAT))?;
        let status = response.status();
        if !status.is_success() {
            return Err(crate::common::http_status_error(status, WHAT));
        }
        let body = response.bytes().await.map_err(|e| request_error(e, WHAT))?;
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|_| {
            ChannelError::transient(format!(
                "{WHAT} answered with a body that is not a WeChat reply ({} bytes)",
                body.len()
            ))
        })?;
        match reply {
            TokenReply {
                access_token: Some(token),
                expires_in: Some(expires_in),
                ..
            } if !token.is_empty() && expires_in > 0 => {
                tracing::debug!(channel = %self.name, force, expires_in, "WeChat access token fetched");
                Ok(Fetched {
                    token: Secret::new(token),
                    expires_in,
                })
            }
            TokenReply {
                errcode: Some(code),
                errmsg,
                ..
            } if code != 0 => {
                let err = classify_token(
                    code,
                    &vendor_text(&errmsg, &[self.app_secret.expose()]),
                    self.clock.wall(),
                );
                tracing::warn!(channel = %self.name, code, kind = err.kind().as_str(), "WeChat access token refused");
                Err(err)
            }
            _ => Err(ChannelError::transient(format!(
                "{WHAT} answered without an access_token"
            ))),
        }
    }

    /// A usable token (the instance's copy, the cluster's, or fetched by one caller in the
    /// cluster at a time).
    async fn token(&self, rejected: Option<&Secret>) -> Result<Secret, ChannelError> {
        self.tokens
            .get(rejected, |force| self.fetch_token(force))
            .await
    }

    /// One template-send call with `token`.
    async fn post(&self, token: &Secret, body: &Value) -> Result<Reply, ChannelError> {
        const WHAT: &str = "template send";
        let response = self
            .http
            .post(format!("{}/cgi-bin/message/template/send", self.endpoint))
            .query(&[("access_token", token.expose())])
            .json(body)
            .send()
            .await
            .map_err(|e| request_error(e, WHAT))?;
        let mut reply = read_reply(response, WHAT).await?;
        reply.errmsg = vendor_text(&reply.errmsg, &[token.expose(), self.app_secret.expose()]);
        Ok(reply)
    }

    /// The instance's request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The `stable_token` reply: a token, or an error.
#[derive(Deserialize)]
struct TokenReply {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: String,
}

/// The `wechat.json.j2` rendering: `{"url"?, "miniprogram"?, "data": {…}}`. Other keys are
/// ignored.
#[derive(Debug, PartialEq)]
struct Rendering {
    url: Option<String>,
    miniprogram: Option<MiniProgram>,
    data: Map<String, Value>,
}

impl Rendering {
    fn parse(text: &str) -> Result<Rendering, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let Value::Object(mut object) = value else {
            return Err("expected a JSON object with `data`".into());
        };
        let data = match object.remove("data") {
            Some(Value::Object(data)) => data,
            Some(_) => return Err("`data` must be an object of {\"value\": …} fields".into()),
            None => return Err("no `data` object".into()),
        };
        let url = match object.remove("url") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err("`url` must be a string".into()),
        };
        let miniprogram = match object.remove("miniprogram") {
            None | Some(Value::Null) => None,
            Some(mp) => Some(
                serde_json::from_value(mp)
                    .map_err(|e| format!("`miniprogram` must be {{appid, pagepath}}: {e}"))?,
            ),
        };
        Ok(Rendering {
            url,
            miniprogram,
            data,
        })
    }
}

/// `<message id>-<delivery id>`: the same for every attempt of a delivery, so WeChat drops a
/// repeated send. Only ASCII letters, digits, `-` and `_` of the message id are kept, and it
/// is shortened from the front if the whole would exceed WeChat's 64 characters.
fn client_msg_id(out: &Outgoing) -> String {
    let suffix = format!("-{}", out.delivery_id);
    let id: String = out
        .message
        .id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    let room = MAX_CLIENT_MSG_ID.saturating_sub(suffix.len());
    let id = &id[id.len().saturating_sub(room)..];
    format!("{id}{suffix}")
}

/// Until the next midnight in Beijing (UTC+8), when WeChat's daily quotas reset.
pub(crate) fn until_beijing_midnight(now: SystemTime) -> Duration {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let local = secs + BEIJING_OFFSET_SECS;
    Duration::from_secs(DAY_SECS - local % DAY_SECS)
}

// ---------------------------------------------------------------------------------------
// Error classification
// ---------------------------------------------------------------------------------------

/// What a template send's `errcode` means.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    Sent,
    /// The token was refused: refresh it (forced) once and repeat the call once.
    RefreshToken,
    Failed(ChannelError),
}

/// The one table of template-send codes. `errmsg` is already shortened and scrubbed; `now`
/// is the wall clock (45009 waits for midnight Beijing time).
pub(crate) fn classify(errcode: i64, errmsg: &str, now: SystemTime) -> Verdict {
    let detail = |what: &str| {
        if errmsg.is_empty() {
            what.to_owned()
        } else {
            format!("{what} ({errmsg})")
        }
    };
    let error = match errcode {
        0 => return Verdict::Sent,
        // invalid credential / access_token expired / invalid access_token
        40001 | 42001 | 40014 => return Verdict::RefreshToken,
        -1 => ChannelError::transient(detail("WeChat is busy")),
        45009 => ChannelError::rate_limited(detail(
            "daily API quota reached; it resets at midnight Beijing time",
        ))
        .with_retry_after(until_beijing_midnight(now)),
        45011 => ChannelError::rate_limited(detail("per-minute API limit reached"))
            .with_retry_after(Duration::from_secs(60)),
        43004 => ChannelError::bad_recipient(detail("the user does not follow the account")),
        40003 => ChannelError::bad_recipient(detail("invalid openid")),
        40037 => ChannelError::permanent(detail("invalid template_id")),
        47003 => ChannelError::permanent(detail(
            "WeChat refused the template data (check wechat.json.j2 against the template's fields)",
        )),
        48001 => ChannelError::config(detail(
            "the account may not send template messages (API unauthorized)",
        )),
        _ => ChannelError::transient(detail("WeChat error")),
    };
    Verdict::Failed(error.with_code(errcode.to_string()))
}

/// The table of `stable_token` codes. Refusals of our credentials or address are `config`.
pub(crate) fn classify_token(errcode: i64, errmsg: &str, now: SystemTime) -> ChannelError {
    let detail = |what: &str| {
        if errmsg.is_empty() {
            format!("access token: {what}")
        } else {
            format!("access token: {what} ({errmsg})")
        }
    };
    let error = match errcode {
        -1 => ChannelError::transient(detail("WeChat is busy")),
        45009 => ChannelError::rate_limited(detail("daily stable_token quota reached"))
            .with_retry_after(until_beijing_midnight(now)),
        45011 => ChannelError::rate_limited(detail("per-minute stable_token limit reached"))
            .with_retry_after(Duration::from_secs(60)),
        40001 | 40125 => ChannelError::config(detail("invalid app_secret")),
        40013 => ChannelError::config(detail("invalid app_id")),
        40164 | 89503 | 89501 | 89506 | 89507 => ChannelError::config(detail(
            "this server's IP address is not allowed (add it to the account's IP whitelist)",
        )),
        40002 | 41002 | 41004 | 40243 | 48001 => {
            ChannelError::config(detail("WeChat refused the credentials"))
        }
        _ => ChannelError::transient(detail("WeChat error")),
    };
    error.with_code(errcode.to_string())
}

#[async_trait]
impl Channel for TemplateChannel {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        // Everything that needs no network first: a delivery that cannot be sent never
        // costs a token fetch.
        let body = self.body(out)?;
        let token = self.token(None).await?;
        let reply = self.post(&token, &body).await?;
        let (reply, verdict) = match classify(reply.errcode, &reply.errmsg, self.clock.wall()) {
            Verdict::RefreshToken => {
                // The documented exception to "one call per attempt": a refused token is
                // refreshed once and the call repeated once.
                tracing::info!(
                    channel = %self.name,
                    code = reply.errcode,
                    "WeChat refused the access token; refreshing it"
                );
                let fresh = self.token(Some(&token)).await?;
                let again = self.post(&fresh, &body).await?;
                let verdict = match classify(again.errcode, &again.errmsg, self.clock.wall()) {
                    Verdict::RefreshToken => Verdict::Failed(
                        ChannelError::transient(format!(
                            "access token refused again after a refresh ({})",
                            again.errmsg
                        ))
                        .with_code(again.errcode.to_string()),
                    ),
                    other => other,
                };
                (again, verdict)
            }
            verdict => (reply, verdict),
        };
        match verdict {
            Verdict::Sent => Ok(Accepted::Sent {
                provider_id: reply.msgid.as_ref().and_then(msgid_text),
            }),
            Verdict::Failed(err) => Err(err),
            Verdict::RefreshToken => Err(ChannelError::transient("access token refused")),
        }
    }

    fn health(&self) -> Health {
        match self.tokens.failure() {
            Some(failure) => Health::Degraded(format!("access token: {failure}")),
            None => Health::Ok,
        }
    }

    fn defaults(&self) -> Defaults {
        // WeChat's day is China time (UTC+8).
        Defaults::default()
            .daily_quota(DAILY_QUOTA)
            .quota_day_in_utc_offset(8 * 60)
    }
}

/// WeChat's `msgid` (a number; a string is accepted too).
fn msgid_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The descriptor's `build`.
pub(crate) fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    Ok(Arc::new(TemplateChannel::from_context(&ctx)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::testkit::{message, outgoing, rendered};
    use herald_channel::{ErrorKind, Services};

    fn try_build(config: Value) -> Result<TemplateChannel, ConfigError> {
        let services = Services::default();
        TemplateChannel::from_context(&BuildContext {
            name: "wechat",
            config: &config,
            services: &services,
        })
    }

    fn base() -> Value {
        json!({
            "app_id": "wx0123456789abcdef",
            "app_secret": "s3cr3t-app-secret",
            "templates": {"report_ready": {"template_id": "TPL-1"}},
        })
    }

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    #[test]
    fn classification_table() {
        use ErrorKind::*;
        // 2026-01-01T00:00:00Z = 08:00 in Beijing: 16 h to midnight there.
        let now = at(1_767_225_600);
        let to_midnight = Some(Duration::from_secs(16 * 3600));
        let minute = Some(Duration::from_secs(60));
        let rows: &[(i64, Option<ErrorKind>, Option<Duration>)] = &[
            (-1, Some(Transient), None),
            (45009, Some(RateLimited), to_midnight),
            (45011, Some(RateLimited), minute),
            (43004, Some(BadRecipient), None),
            (40003, Some(BadRecipient), None),
            (40037, Some(Permanent), None),
            (47003, Some(Permanent), None),
            (48001, Some(Config), None),
            (12345, Some(Transient), None),
        ];
        for &(code, kind, retry_after) in rows {
            match classify(code, "errmsg rid: 1", now) {
                Verdict::Failed(e) => {
                    assert_eq!(Some(e.kind()), kind, "{code}: {e}");
                    assert_eq!(e.retry_after(), retry_after, "{code}");
                    assert_eq!(e.code(), Some(code.to_string().as_str()), "{code}");
                    assert!(e.message().contains("errmsg rid: 1"), "{e}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        assert_eq!(classify(0, "ok", now), Verdict::Sent);
        for code in [40001, 42001, 40014] {
            assert_eq!(classify(code, "", now), Verdict::RefreshToken, "{code}");
        }
        let Verdict::Failed(e) = classify(43004, "", now) else {
            panic!()
        };
        assert_eq!(
            e.to_string(),
            "bad_recipient: [43004] the user does not follow the account"
        );
    }

    #[test]
    fn token_classification_table() {
        use ErrorKind::*;
        let now = at(1_767_225_600);
        for (code, kind) in [
            (-1, Transient),
            (45009, RateLimited),
            (45011, RateLimited),
            (40001, Config),
            (40125, Config),
            (40013, Config),
            (40164, Config),
            (89503, Config),
            (89501, Config),
            (89506, Config),
            (89507, Config),
            (40002, Config),
            (41002, Config),
            (41004, Config),
            (40243, Config),
            (48001, Config),
            (99999, Transient),
        ] {
            let e = classify_token(code, "invalid appsecret rid: 2", now);
            assert_eq!(e.kind(), kind, "{code}: {e}");
            assert_eq!(e.code(), Some(code.to_string().as_str()));
            assert!(e.message().starts_with("access token: "), "{e}");
        }
        assert_eq!(
            classify_token(45011, "", now).retry_after(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            classify_token(45009, "", now).retry_after(),
            Some(Duration::from_secs(16 * 3600))
        );
    }

    #[test]
    fn beijing_midnight() {
        // 2026-01-01T15:59:59Z is 23:59:59 in Beijing.
        assert_eq!(
            until_beijing_midnight(at(1_767_283_199)),
            Duration::from_secs(1)
        );
        // 16:00:00Z is midnight there: a whole day to the next one.
        assert_eq!(
            until_beijing_midnight(at(1_767_283_200)),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            until_beijing_midnight(at(1_767_225_600)),
            Duration::from_secs(16 * 3600)
        );
        assert_eq!(
            until_beijing_midnight(at(0)),
            Duration::from_secs(16 * 3600)
        );
    }

    #[test]
    fn client_msg_ids() {
        let mut out = outgoing(message("t", "c"), "42", Some("o-openid"));
        out.delivery_id = 77;
        assert_eq!(
            client_msg_id(&out),
            "0190f5c2-0000-7000-8000-000000000001-77"
        );
        let mut m = (*out.message).clone();
        m.id = format!("{}<>", "a".repeat(100));
        out.message = Arc::new(m);
        out.delivery_id = i64::MAX;
        let id = client_msg_id(&out);
        assert_eq!(id.len(), 64, "{id}");
        assert!(id.ends_with(&format!("-{}", i64::MAX)), "{id}");
        assert!(id.starts_with('a'), "{id}");
    }

    #[test]
    fn renderings() {
        let r = Rendering::parse(
            r#"{"url":"https://r.example.com/1","data":{"first":{"value":"x"}},"extra":1}"#,
        )
        .unwrap();
        assert_eq!(r.url.as_deref(), Some("https://r.example.com/1"));
        assert_eq!(r.data["first"]["value"], "x");
        let r = Rendering::parse(
            r#"{"url":"","miniprogram":{"appid":"wxmini","pagepath":"p/i"},"data":{}}"#,
        )
        .unwrap();
        assert_eq!(r.url, None);
        assert_eq!(
            r.miniprogram,
            Some(MiniProgram {
                appid: "wxmini".into(),
                pagepath: "p/i".into()
            })
        );
        for (bad, what) in [
            ("[]", "expected a JSON object"),
            ("{}", "no `data`"),
            (r#"{"data":[]}"#, "`data` must be an object"),
            (r#"{"data":{},"url":1}"#, "`url` must be a string"),
            (
                r#"{"data":{},"miniprogram":{"appid":"x"}}"#,
                "`miniprogram`",
            ),
            ("not json", "not valid JSON"),
        ] {
            let e = Rendering::parse(bad).unwrap_err();
            assert!(e.contains(what), "{bad}: {e}");
        }
    }

    fn report_ready(rendering: &str) -> Outgoing {
        let mut m = (*message("Report ready", "c")).clone();
        m.template = Some("report_ready".into());
        let mut out = outgoing(Arc::new(m), "42", Some("oOPENID"));
        out.delivery_id = 9;
        out.rendered = Some(rendered(&[("json", rendering), ("md", "**x**")]));
        out
    }

    #[test]
    fn request_bodies() {
        let ch = try_build(base()).unwrap();
        let out = report_ready(
            r#"{"url":"https://r.example.com/R-1","data":{"keyword1":{"value":"Li Lei"}}}"#,
        );
        assert_eq!(
            ch.body(&out).unwrap(),
            json!({
                "touser": "oOPENID",
                "template_id": "TPL-1",
                "url": "https://r.example.com/R-1",
                "client_msg_id": "0190f5c2-0000-7000-8000-000000000001-9",
                "data": {"keyword1": {"value": "Li Lei"}},
            })
        );

        // The mapping's url and miniprogram override the rendering's.
        let mut cfg = base();
        cfg["templates"]["report_ready"]["url"] = json!("https://fixed.example.com/");
        cfg["templates"]["report_ready"]["miniprogram"] =
            json!({"appid": "wxmini", "pagepath": "pages/report"});
        let ch = try_build(cfg).unwrap();
        let body = ch.body(&out).unwrap();
        assert_eq!(body["url"], "https://fixed.example.com/");
        assert_eq!(
            body["miniprogram"],
            json!({"appid": "wxmini", "pagepath": "pages/report"})
        );
    }

    #[test]
    fn what_cannot_be_sent_is_named() {
        let ch = try_build(base()).unwrap();
        let mut out = report_ready(r#"{"data":{}}"#);
        out.address = None;
        assert_eq!(ch.body(&out).unwrap_err().kind(), ErrorKind::BadRecipient);
        out.address = Some("  ".into());
        assert_eq!(ch.body(&out).unwrap_err().kind(), ErrorKind::BadRecipient);

        let plain = outgoing(message("t", "c"), "42", Some("oOPENID"));
        let e = ch.body(&plain).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("template"), "{e}");

        let mut other = report_ready(r#"{"data":{}}"#);
        let mut m = (*other.message).clone();
        m.template = Some("invoice_due".into());
        other.message = Arc::new(m);
        let e = ch.body(&other).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.message()
                .contains("[channels.wechat.templates.invoice_due]"),
            "{e}"
        );

        let mut unrendered = report_ready("{}");
        unrendered.rendered = None;
        let e = ch.body(&unrendered).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.message()
                .contains("templates/report_ready/wechat.json.j2"),
            "{e}"
        );
        let bad = report_ready(r#"{"url":"x"}"#);
        let e = ch.body(&bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("no `data`"), "{e}");
    }

    #[test]
    fn defaults_and_health() {
        let ch = try_build(base()).unwrap();
        assert_eq!(ch.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(ch.timeout(), Duration::from_secs(10));
        assert_eq!(ch.defaults().daily_quota, Some(100_000));
        assert_eq!(ch.defaults().rate_limit, None);
        assert_eq!(ch.health(), Health::Ok);
    }

    #[test]
    fn config_errors_name_the_key() {
        let with = |key: &str, value: Value| {
            let mut cfg = base();
            cfg[key] = value;
            cfg
        };
        let without = |key: &str| {
            let mut cfg = base();
            cfg.as_object_mut().unwrap().remove(key);
            cfg
        };
        let cases = [
            (with("appid", json!("x")), "unknown field `appid`"),
            (without("app_id"), "missing field `app_id`"),
            (without("app_secret"), "missing field `app_secret`"),
            (without("templates"), "templates:"),
            (with("templates", json!({})), "templates:"),
            (with("app_id", json!(" ")), "app_id:"),
            (with("app_secret", json!("")), "app_secret:"),
            (with("app_secret", json!(42)), "app_secret:"),
            (with("endpoint", json!("api.weixin.qq.com")), "endpoint:"),
            (with("timeout", json!("soon")), "timeout:"),
            (with("timeout", json!(5)), "timeout:"),
            (
                with("templates", json!({"report_ready": {}})),
                "missing field `template_id`",
            ),
            (
                with(
                    "templates",
                    json!({"report_ready": {"template_id": "T", "color": "red"}}),
                ),
                "unknown field `color`",
            ),
            (
                with("templates", json!({"Report": {"template_id": "T"}})),
                "templates.Report:",
            ),
            (
                with("templates", json!({"r": {"template_id": " "}})),
                "templates.r.template_id:",
            ),
            (
                with("templates", json!({"r": {"template_id": "T", "url": "/x"}})),
                "templates.r.url:",
            ),
            (
                with(
                    "templates",
                    json!({"r": {"template_id": "T", "miniprogram": {"appid": "wx1", "pagepath": ""}}}),
                ),
                "templates.r.miniprogram.pagepath:",
            ),
            (
                with(
                    "templates",
                    json!({"r": {"template_id": "T", "miniprogram": {"appid": "wx1"}}}),
                ),
                "missing field `pagepath`",
            ),
        ];
        for (cfg, expected) in cases {
            let err = try_build(cfg.clone()).unwrap_err().to_string();
            assert!(err.starts_with("channels.wechat: "), "{cfg}: {err}");
            assert!(
                err.contains(expected),
                "{cfg}: expected {expected:?} in {err}"
            );
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        // A wrongly typed secret is not echoed.
        let err = try_build(with("app_secret", json!(987654321)))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("987654321"), "{err}");
    }

    #[test]
    fn debug_hides_the_secret() {
        let ch = try_build(base()).unwrap();
        let debug = format!("{ch:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(debug.contains("wx0123456789abcdef"), "{debug}");
        let services = Services::default();
        let cfg = base();
        let config: Config = parse(&BuildContext {
            name: "wechat",
            config: &cfg,
            services: &services,
        })
        .unwrap();
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}
