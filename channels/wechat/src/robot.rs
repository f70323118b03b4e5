//! `wechat.robot`: a WeCom (企业微信) group robot, posting through its webhook.
//!
//! One `send` is one `POST {endpoint}/cgi-bin/webhook/send?key=KEY` with a `markdown` or
//! `text` message. The robot posts to its group, so every delivery (one per receiver of the
//! message) is one post. Vendor codes are mapped in one `classify()`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use herald_channel::http::{http_client, MAX_CONNECT_TIMEOUT};
use herald_channel::{
    async_trait, Accepted, BuildContext, Channel, ChannelError, ConfigError, Defaults, Outgoing,
};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::{
    config_error, default_timeout, origin, parse, parse_endpoint, parse_timeout, read_reply,
    request_error, truncate_bytes, vendor_text, Secret, USER_AGENT,
};

/// The default `endpoint`.
pub const DEFAULT_ENDPOINT: &str = "https://qyapi.weixin.qq.com";
/// WeCom's limit for a markdown message's content, in UTF-8 bytes.
pub const MARKDOWN_MAX_BYTES: usize = 4096;
/// WeCom's limit for a text message's content, in UTF-8 bytes.
pub const TEXT_MAX_BYTES: usize = 2048;
/// The kind's default rate: a robot takes 20 messages a minute.
pub const RATE_LIMIT: (u32, Duration) = (20, Duration::from_secs(60));

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// `[channels.<name>]` of kind `wechat.robot`, minus `kind` and the core's keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The webhook key (`…/webhook/send?key=KEY`). Exactly one of `key` and `url`.
    #[serde(default)]
    key: Option<Secret>,
    /// The whole webhook URL.
    #[serde(default)]
    url: Option<Secret>,
    /// Base URL for `key` (a proxy, a test server).
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    msgtype: MsgType,
    /// Phone numbers (or `@all`) to mention; `msgtype = "text"` only.
    #[serde(default)]
    mentioned_mobile_list: Option<Vec<String>>,
    #[serde(default = "default_timeout")]
    timeout: String,
}

/// The robot message type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MsgType {
    /// Plain text (at most 2048 bytes); can mention members by phone number.
    Text,
    /// WeCom's markdown subset (at most 4096 bytes).
    #[default]
    Markdown,
}

impl MsgType {
    fn as_str(self) -> &'static str {
        match self {
            MsgType::Text => "text",
            MsgType::Markdown => "markdown",
        }
    }
    fn max_bytes(self) -> usize {
        match self {
            MsgType::Text => TEXT_MAX_BYTES,
            MsgType::Markdown => MARKDOWN_MAX_BYTES,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The channel
// ---------------------------------------------------------------------------------------

/// One configured `wechat.robot` instance.
pub struct RobotChannel {
    name: String,
    /// The whole webhook URL, key included: secret.
    webhook: Url,
    /// Strings never to echo from a reply: the key and the webhook URL.
    secrets: Vec<Secret>,
    msgtype: MsgType,
    mentioned_mobile_list: Vec<String>,
    timeout: Duration,
    http: reqwest::Client,
}

impl fmt::Debug for RobotChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RobotChannel")
            .field("name", &self.name)
            .field("webhook", &format!("{}/<redacted>", origin(&self.webhook)))
            .field("msgtype", &self.msgtype)
            .field("mentioned_mobile_list", &self.mentioned_mobile_list.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RobotChannel {
    /// Validates the instance's configuration; every error names the key and never
    /// contains the webhook key or URL.
    pub fn from_context(ctx: &BuildContext<'_>) -> Result<Self, ConfigError> {
        let cfg: Config = parse(ctx)?;
        let name = ctx.name;
        let (webhook, secrets) = match (cfg.key, cfg.url) {
            (Some(_), Some(_)) => {
                return Err(config_error(
                    name,
                    "key",
                    "set either `key` or `url`, not both",
                ))
            }
            (None, None) => {
                return Err(config_error(
                    name,
                    "key",
                    "set the robot's webhook `key` (or its whole webhook `url`)",
                ))
            }
            (Some(key), None) => {
                let key_text = key.expose().trim();
                if key_text.is_empty() || key_text.contains(char::is_whitespace) {
                    return Err(config_error(
                        name,
                        "key",
                        "must not be empty or contain spaces",
                    ));
                }
                let endpoint = parse_endpoint(
                    name,
                    "endpoint",
                    cfg.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT),
                )?;
                let mut url = Url::parse(&format!("{endpoint}/cgi-bin/webhook/send"))
                    .map_err(|e| config_error(name, "endpoint", e))?;
                url.query_pairs_mut().append_pair("key", key_text);
                let secrets = vec![Secret::new(key_text), Secret::new(url.as_str())];
                (url, secrets)
            }
            (None, Some(url)) => {
                if cfg.endpoint.is_some() {
                    return Err(config_error(
                        name,
                        "endpoint",
                        "only with `key`; `url` is the whole webhook URL",
                    ));
                }
                // The value is never quoted: the key is in it.
                let parsed = Url::parse(url.expose().trim())
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                    .ok_or_else(|| {
                        config_error(
                            name,
                            "url",
                            "expected the robot's webhook URL, \
                             https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…",
                        )
                    })?;
                let mut secrets = vec![Secret::new(parsed.as_str()), url];
                if let Some((_, key)) = parsed.query_pairs().find(|(k, _)| k == "key") {
                    secrets.push(Secret::new(key.into_owned()));
                }
                (parsed, secrets)
            }
        };
        let mentioned_mobile_list = match cfg.mentioned_mobile_list {
            None => Vec::new(),
            Some(_) if cfg.msgtype != MsgType::Text => {
                return Err(config_error(
                    name,
                    "mentioned_mobile_list",
                    "only with msgtype = \"text\" (markdown messages cannot mention members)",
                ))
            }
            Some(list) => {
                if list
                    .iter()
                    .any(|m| m.trim().is_empty() || m.contains(char::is_whitespace))
                {
                    return Err(config_error(
                        name,
                        "mentioned_mobile_list",
                        "expected phone numbers (or \"@all\") without spaces",
                    ));
                }
                list
            }
        };
        let timeout = parse_timeout(name, &cfg.timeout)?;
        let http = http_client(name, USER_AGENT, timeout.min(MAX_CONNECT_TIMEOUT), timeout)?;
        Ok(Self {
            name: name.to_owned(),
            webhook,
            secrets,
            msgtype: cfg.msgtype,
            mentioned_mobile_list,
            timeout,
            http,
        })
    }

    /// The message text: the rendering's `md` (markdown; else `txt`) or `txt` (text) part,
    /// else the title and content; cut to WeCom's limit at a character boundary with `…`.
    fn content(&self, out: &Outgoing) -> String {
        let parts: &[&str] = match self.msgtype {
            MsgType::Markdown => &["md", "txt"],
            MsgType::Text => &["txt"],
        };
        let rendered = out.rendered.as_deref().and_then(|r| {
            parts
                .iter()
                .filter_map(|p| r.part(p))
                .map(str::trim)
                .find(|t| !t.is_empty())
        });
        let text = match rendered {
            Some(text) => text.to_owned(),
            None => {
                let title = out.message.title.trim();
                let content = out.message.content.trim();
                let title = match (self.msgtype, title.is_empty()) {
                    (_, true) => String::new(),
                    (MsgType::Markdown, false) => format!("**{title}**"),
                    (MsgType::Text, false) => title.to_owned(),
                };
                match (title.is_empty(), content.is_empty()) {
                    (true, _) => content.to_owned(),
                    (false, true) => title,
                    (false, false) => format!("{title}\n{content}"),
                }
            }
        };
        truncate_bytes(&text, self.msgtype.max_bytes()).into_owned()
    }

    /// The request body for `out`.
    fn body(&self, out: &Outgoing) -> Result<Value, ChannelError> {
        let content = self.content(out);
        if content.is_empty() {
            return Err(ChannelError::permanent(
                "nothing to post: the message has no title, content or rendering",
            ));
        }
        let mut message = json!({ "content": content });
        if !self.mentioned_mobile_list.is_empty() {
            message["mentioned_mobile_list"] = json!(self.mentioned_mobile_list);
        }
        let msgtype = self.msgtype.as_str();
        Ok(json!({ "msgtype": msgtype, msgtype: message }))
    }

    /// The instance's request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The one table of robot webhook codes.
pub(crate) fn classify(errcode: i64, errmsg: &str) -> Result<Accepted, ChannelError> {
    let detail = |what: &str| {
        if errmsg.is_empty() {
            what.to_owned()
        } else {
            format!("{what} ({errmsg})")
        }
    };
    let minute = Duration::from_secs(60);
    let error = match errcode {
        0 => return Ok(Accepted::Sent { provider_id: None }),
        -1 => ChannelError::transient(detail("WeCom is busy")),
        45009 | 45033 => ChannelError::rate_limited(detail("the robot's rate limit was reached"))
            .with_retry_after(minute),
        93000 => ChannelError::config(detail(
            "invalid webhook key or URL (was the robot removed from its group?)",
        )),
        40008 | 40035 | 40058 | 44004 | 45002 => {
            ChannelError::permanent(detail("WeCom refused the message"))
        }
        _ => ChannelError::transient(detail("WeCom error")),
    };
    Err(error.with_code(errcode.to_string()))
}

#[async_trait]
impl Channel for RobotChannel {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        const WHAT: &str = "webhook send";
        let body = self.body(out)?;
        let response = self
            .http
            .post(self.webhook.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| request_error(e, WHAT))?;
        let reply = read_reply(response, WHAT).await?;
        let secrets: Vec<&str> = self.secrets.iter().map(Secret::expose).collect();
        let result = classify(reply.errcode, &vendor_text(&reply.errmsg, &secrets));
        if let Err(e) = &result {
            tracing::debug!(channel = %self.name, code = reply.errcode, kind = e.kind().as_str(), "WeCom robot refused a message");
        }
        result
    }

    fn defaults(&self) -> Defaults {
        Defaults::default().rate_limit(RATE_LIMIT.0, RATE_LIMIT.1)
    }
}

/// The descriptor's `build`.
pub(crate) fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    Ok(Arc::new(RobotChannel::from_context(&ctx)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::testkit::{message, outgoing, rendered};
    use herald_channel::{ErrorKind, Services};

    const KEY: &str = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa";

    fn try_build(config: Value) -> Result<RobotChannel, ConfigError> {
        let services = Services::default();
        RobotChannel::from_context(&BuildContext {
            name: "robot",
            config: &config,
            services: &services,
        })
    }

    #[test]
    fn classification_table() {
        use ErrorKind::*;
        let minute = Some(Duration::from_secs(60));
        let rows: &[(i64, ErrorKind, Option<Duration>)] = &[
            (-1, Transient, None),
            (45009, RateLimited, minute),
            (45033, RateLimited, minute),
            (93000, Config, None),
            (40008, Permanent, None),
            (40035, Permanent, None),
            (40058, Permanent, None),
            (44004, Permanent, None),
            (45002, Permanent, None),
            (123456, Transient, None),
        ];
        for &(code, kind, retry_after) in rows {
            let e = classify(code, "api freq out of limit").unwrap_err();
            assert_eq!(e.kind(), kind, "{code}: {e}");
            assert_eq!(e.retry_after(), retry_after, "{code}");
            assert_eq!(e.code(), Some(code.to_string().as_str()));
            assert!(e.message().contains("api freq out of limit"), "{e}");
        }
        assert_eq!(classify(0, "ok"), Ok(Accepted::Sent { provider_id: None }));
    }

    #[test]
    fn webhook_urls() {
        let ch = try_build(json!({"key": KEY})).unwrap();
        assert_eq!(
            ch.webhook.as_str(),
            format!("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}")
        );
        assert_eq!(ch.msgtype, MsgType::Markdown);
        assert_eq!(ch.timeout(), Duration::from_secs(10));
        assert_eq!(
            ch.defaults().rate_limit,
            Some((20, Duration::from_secs(60)))
        );
        assert_eq!(ch.defaults().daily_quota, None);
        let ch = try_build(json!({"key": KEY, "endpoint": "http://127.0.0.1:9/proxy/"})).unwrap();
        assert_eq!(
            ch.webhook.as_str(),
            format!("http://127.0.0.1:9/proxy/cgi-bin/webhook/send?key={KEY}")
        );
        let url = format!("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}");
        let ch = try_build(json!({ "url": url, "msgtype": "text" })).unwrap();
        assert_eq!(ch.webhook.as_str(), url);
        assert!(ch.secrets.iter().any(|s| s.expose() == KEY));
    }

    #[test]
    fn config_errors_name_the_key_and_hide_secrets() {
        let url = format!("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}");
        let cases = [
            (json!({}), "key:"),
            (json!({"key": KEY, "url": url}), "not both"),
            (json!({"key": ""}), "key:"),
            (json!({"key": KEY, "kye": 1}), "unknown field `kye`"),
            (json!({"key": KEY, "msgtype": "news"}), "msgtype:"),
            (json!({"key": KEY, "endpoint": "nope"}), "endpoint:"),
            (json!({"url": url, "endpoint": "https://x"}), "endpoint:"),
            (json!({"url": format!("qyapi/{KEY}")}), "url:"),
            (json!({"url": 12345}), "url:"),
            (json!({"key": KEY, "timeout": "0s"}), "timeout:"),
            (
                json!({"key": KEY, "mentioned_mobile_list": ["13800001111"]}),
                "mentioned_mobile_list: only with msgtype = \"text\"",
            ),
            (
                json!({"key": KEY, "msgtype": "text", "mentioned_mobile_list": ["138 0000"]}),
                "mentioned_mobile_list:",
            ),
        ];
        for (cfg, expected) in cases {
            let err = try_build(cfg.clone()).unwrap_err().to_string();
            assert!(err.starts_with("channels.robot: "), "{cfg}: {err}");
            assert!(
                err.contains(expected),
                "{cfg}: expected {expected:?} in {err}"
            );
            assert!(!err.contains(KEY), "{err}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let ch = try_build(json!({
            "key": KEY,
            "msgtype": "text",
            "mentioned_mobile_list": ["13800001111"],
        }))
        .unwrap();
        let debug = format!("{ch:?}");
        assert!(!debug.contains(KEY), "{debug}");
        assert!(!debug.contains("13800001111"), "{debug}");
        assert!(
            debug.contains("https://qyapi.weixin.qq.com/<redacted>"),
            "{debug}"
        );
        let url = format!("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}");
        let debug = format!("{:?}", try_build(json!({ "url": url })).unwrap());
        assert!(!debug.contains(KEY), "{debug}");
    }

    #[test]
    fn content_selection() {
        let md = try_build(json!({"key": KEY})).unwrap();
        let text = try_build(json!({"key": KEY, "msgtype": "text"})).unwrap();
        let mut out = outgoing(message("Report ready", "CT chest is ready"), "42", None);
        assert_eq!(md.content(&out), "**Report ready**\nCT chest is ready");
        assert_eq!(text.content(&out), "Report ready\nCT chest is ready");

        out.rendered = Some(rendered(&[
            ("md", "### MD\n"),
            ("txt", "TXT"),
            ("json", "{}"),
        ]));
        assert_eq!(md.content(&out), "### MD");
        assert_eq!(text.content(&out), "TXT");
        out.rendered = Some(rendered(&[("txt", "only text")]));
        assert_eq!(md.content(&out), "only text");
        out.rendered = Some(rendered(&[("md", "only md"), ("txt", "  ")]));
        assert_eq!(text.content(&out), "Report ready\nCT chest is ready");

        let untitled = outgoing(message("", "just content"), "42", None);
        assert_eq!(md.content(&untitled), "just content");
        let empty = outgoing(message(" ", ""), "42", None);
        assert_eq!(md.body(&empty).unwrap_err().kind(), ErrorKind::Permanent);
    }

    #[test]
    fn long_content_is_cut_at_the_limit() {
        let md = try_build(json!({"key": KEY})).unwrap();
        let text = try_build(json!({"key": KEY, "msgtype": "text"})).unwrap();
        let out = outgoing(message("报告", &"检查结果".repeat(1000)), "42", None);
        let c = md.content(&out);
        assert!(c.len() <= MARKDOWN_MAX_BYTES && c.len() > MARKDOWN_MAX_BYTES - 8);
        assert!(c.ends_with('…'));
        let c = text.content(&out);
        assert!(c.len() <= TEXT_MAX_BYTES && c.len() > TEXT_MAX_BYTES - 8);
    }

    #[test]
    fn bodies() {
        let md = try_build(json!({"key": KEY})).unwrap();
        let out = outgoing(message("T", "C"), "42", None);
        assert_eq!(
            md.body(&out).unwrap(),
            json!({"msgtype": "markdown", "markdown": {"content": "**T**\nC"}})
        );
        let text = try_build(json!({
            "key": KEY,
            "msgtype": "text",
            "mentioned_mobile_list": ["13800001111", "@all"],
        }))
        .unwrap();
        assert_eq!(
            text.body(&out).unwrap(),
            json!({"msgtype": "text", "text": {
                "content": "T\nC",
                "mentioned_mobile_list": ["13800001111", "@all"],
            }})
        );
    }
}
