//! `email.smtp`: e-mail through an SMTP server (a relay or a provider's submission port),
//! with lettre's pooled [`AsyncSmtpTransport`].
//!
//! One `send` is one SMTP transaction (MAIL, RCPT, DATA) on a pooled connection. Failures
//! are mapped to a [`ChannelError`] in one place, [`classify`].

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use herald_channel::clock::{self, Clock, SystemClock};
use herald_channel::{
    async_trait, Accepted, BuildContext, Channel, ChannelError, ConfigError, ErrorKind, Health,
    Outgoing,
};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::common::{config_error, parse, Secret};

/// Consecutive failed sends without any SMTP reply (refused, timed out, TLS) after which
/// [`Channel::health`] reports `Degraded`.
const DEGRADED_AFTER: u32 = 3;

/// Longest reply text kept in an error message.
const MAX_REPLY_CHARS: usize = 160;

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// `[channels.<name>]` of kind `email.smtp`, minus `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    host: String,
    /// Default by `tls`: none → 25, starttls → 587, tls → 465.
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    tls: TlsMode,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    /// A mailbox: `Herald <noreply@example.com>` or `noreply@example.com`.
    from: String,
    #[serde(default)]
    reply_to: Option<String>,
    /// A humantime duration (`15s`, `1m`): connect and per-command timeout.
    #[serde(default = "default_timeout")]
    timeout: String,
    /// Most SMTP connections open at once (and kept idle in the pool).
    #[serde(default = "default_pool_max_size")]
    pool_max_size: u32,
    /// The EHLO name; defaults to the machine's host name.
    #[serde(default)]
    hello_name: Option<String>,
}

fn default_timeout() -> String {
    "15s".into()
}

fn default_pool_max_size() -> u32 {
    4
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TlsMode {
    /// Plain TCP, no encryption at all (credentials too). For a relay on localhost or a
    /// trusted network only.
    None,
    /// Plain TCP upgraded with STARTTLS, which the server must offer (port 587).
    #[default]
    Starttls,
    /// Implicit TLS from the first byte ("SMTPS", port 465).
    Tls,
}

impl TlsMode {
    fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
        }
    }
}

/// The descriptor's `build`: parse, validate, and return the channel. Connections are made
/// lazily on the first send.
pub(crate) fn build(ctx: BuildContext<'_>) -> Result<std::sync::Arc<dyn Channel>, ConfigError> {
    let cfg = parse(&ctx)?;
    let mut channel = SmtpChannel::new(ctx.name, cfg)?;
    channel.clock = clock::from_services(ctx.services);
    Ok(std::sync::Arc::new(channel))
}

// ---------------------------------------------------------------------------------------
// The channel
// ---------------------------------------------------------------------------------------

pub(crate) struct SmtpChannel {
    name: String,
    host: String,
    port: u16,
    tls: TlsMode,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    username: Option<String>,
    /// Everything lettre needs; turned into `transport` on the first send because building
    /// the pool spawns its clean-up task, which needs a running Tokio runtime (`build` may run
    /// outside one).
    builder: AsyncSmtpTransportBuilder,
    transport: OnceLock<AsyncSmtpTransport<Tokio1Executor>>,
    /// lettre's `max_size` only caps *idle* connections; this caps open ones.
    permits: Semaphore,
    /// Consecutive sends that got no SMTP reply at all (refused, timed out, TLS failed).
    connection_failures: AtomicU32,
    /// The `Date:` of every message (the SDK's clock, from the services; the system clock
    /// by default).
    clock: std::sync::Arc<dyn Clock>,
}

impl fmt::Debug for SmtpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpChannel")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from.email.to_string())
            .field("username", &self.username)
            .field("password", &self.username.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl SmtpChannel {
    /// Validates `cfg`; every error names the key.
    pub(crate) fn new(name: &str, cfg: Config) -> Result<Self, ConfigError> {
        let fail = |key: &str, msg: &str| config_error(name, key, msg);

        let host = cfg.host.trim().to_owned();
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(fail("host", "expected a host name or an IP address"));
        }
        let port = cfg.port.unwrap_or_else(|| cfg.tls.default_port());
        if port == 0 {
            return Err(fail("port", "must not be 0"));
        }
        let from: Mailbox = cfg.from.trim().parse().map_err(|_| {
            fail(
                "from",
                "not a valid mailbox (expected `Name <user@example.com>` or `user@example.com`)",
            )
        })?;
        let reply_to = match cfg.reply_to.as_deref().map(str::trim) {
            None => None,
            Some(r) => Some(r.parse::<Mailbox>().map_err(|_| {
                fail(
                    "reply_to",
                    "not a valid mailbox (expected `Name <user@example.com>` or `user@example.com`)",
                )
            })?),
        };
        let credentials = match (cfg.username, cfg.password) {
            (None, None) => None,
            (Some(_), None) => return Err(fail("password", "required when `username` is set")),
            (None, Some(_)) => return Err(fail("username", "required when `password` is set")),
            (Some(user), Some(password)) => {
                if user.is_empty() {
                    return Err(fail("username", "must not be empty"));
                }
                Some((user, password.expose().to_owned()))
            }
        };
        let timeout = humantime::parse_duration(cfg.timeout.trim())
            .map_err(|e| fail("timeout", &format!("{e} (expected e.g. \"15s\")")))?;
        if timeout.is_zero() {
            return Err(fail("timeout", "must be greater than zero"));
        }
        if cfg.pool_max_size == 0 {
            return Err(fail("pool_max_size", "must be at least 1"));
        }
        let hello_name = match cfg.hello_name.as_deref().map(str::trim) {
            None => None,
            Some(h) if h.is_empty() || h.contains(char::is_whitespace) => {
                return Err(fail("hello_name", "expected a host name"));
            }
            Some(h) => Some(ClientId::Domain(h.to_owned())),
        };

        let tls = match cfg.tls {
            TlsMode::None => Tls::None,
            TlsMode::Starttls | TlsMode::Tls => {
                let params = TlsParameters::new(host.clone())
                    .map_err(|e| fail("tls", &format!("cannot set up TLS for `host`: {e}")))?;
                if cfg.tls == TlsMode::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        if cfg.tls == TlsMode::None && credentials.is_some() {
            // lettre 0.11 authenticates over a plain connection without complaint; say so.
            tracing::warn!(
                channel = name,
                "tls = \"none\" with credentials: the SMTP password is sent unencrypted; \
                 use this only for a relay on localhost or a trusted network"
            );
        }

        // `builder_dangerous`: we choose port and TLS ourselves (lettre's `relay()` would
        // always pick TLS on 465).
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(port)
            .tls(tls)
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(cfg.pool_max_size));
        let username = credentials.as_ref().map(|(u, _)| u.clone());
        if let Some((user, password)) = credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        if let Some(hello) = hello_name {
            builder = builder.hello_name(hello);
        }

        Ok(Self {
            name: name.to_owned(),
            host,
            port,
            tls: cfg.tls,
            from,
            reply_to,
            username,
            builder,
            transport: OnceLock::new(),
            permits: Semaphore::new(cfg.pool_max_size as usize),
            connection_failures: AtomicU32::new(0),
            clock: std::sync::Arc::new(SystemClock),
        })
    }

    /// The e-mail for `out` and its Message-ID (without angle brackets).
    pub(crate) fn compose(&self, out: &Outgoing) -> Result<(Message, String), ChannelError> {
        let address = out
            .address
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ChannelError::bad_recipient("no e-mail address"))?;
        let to: Mailbox = address
            .parse()
            .map_err(|_| ChannelError::bad_recipient("invalid e-mail address"))?;

        let content = Content::of(out);
        // Stable across retries of one delivery, unique across deliveries.
        let message_id = format!(
            "{}.{}@{}",
            id_atom(&out.message.id),
            out.delivery_id,
            self.from.email.domain()
        );
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(content.subject)
            .date(self.clock.wall())
            .message_id(Some(format!("<{message_id}>")));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        let message = match content.body {
            Body::Text(text) => builder.singlepart(SinglePart::plain(text)),
            Body::Html(html) => builder.singlepart(SinglePart::html(html)),
            Body::Both { text, html } => {
                builder.multipart(MultiPart::alternative_plain_html(text, html))
            }
        }
        .map_err(|e| ChannelError::permanent(format!("cannot build the e-mail: {e}")))?;
        Ok((message, message_id))
    }

    fn transport(&self) -> &AsyncSmtpTransport<Tokio1Executor> {
        self.transport.get_or_init(|| self.builder.clone().build())
    }
}

#[async_trait]
impl Channel for SmtpChannel {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        let (message, message_id) = self.compose(out)?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ChannelError::transient("SMTP channel is shutting down"))?;
        match self.transport().send(message).await {
            Ok(_) => {
                self.connection_failures.store(0, Ordering::Relaxed);
                Ok(Accepted::Sent {
                    provider_id: Some(message_id),
                })
            }
            Err(e) => {
                if e.status().is_some() {
                    // The server answered: it is reachable.
                    self.connection_failures.store(0, Ordering::Relaxed);
                } else {
                    self.connection_failures.fetch_add(1, Ordering::Relaxed);
                }
                let err = classify(&e);
                tracing::debug!(
                    channel = %self.name,
                    delivery = out.delivery_id,
                    kind = err.kind().as_str(),
                    code = err.code().unwrap_or(""),
                    "smtp send failed"
                );
                Err(err)
            }
        }
    }

    /// All deliveries at once, at most `pool_max_size` SMTP transactions at a time (the
    /// semaphore in `send`); results in input order.
    async fn send_batch(&self, outs: &[Outgoing]) -> Vec<Result<Accepted, ChannelError>> {
        futures_util::future::join_all(outs.iter().map(|out| self.send(out))).await
    }

    fn health(&self) -> Health {
        let failures = self.connection_failures.load(Ordering::Relaxed);
        if failures >= DEGRADED_AFTER {
            Health::Degraded(format!(
                "{failures} consecutive sends could not reach the SMTP server"
            ))
        } else {
            Health::Ok
        }
    }
}

// ---------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum Body {
    Text(String),
    Html(String),
    /// `multipart/alternative`, plain first (least preferred), then HTML.
    Both {
        text: String,
        html: String,
    },
}

#[derive(Debug, PartialEq, Eq)]
struct Content {
    subject: String,
    body: Body,
}

impl Content {
    /// Rendered `email` parts (`subject`, `html`, `txt`) when the message has a template;
    /// otherwise the message's title and content as text/plain.
    fn of(out: &Outgoing) -> Content {
        let message = &out.message;
        let title = || one_line(&message.title);
        let Some(rendered) = &out.rendered else {
            return Content {
                subject: title(),
                body: Body::Text(message.content.clone()),
            };
        };
        let subject = rendered
            .part("subject")
            .map(one_line)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(title);
        let text = rendered.part("txt").map(str::to_owned);
        let html = rendered.part("html").map(str::to_owned);
        let body = match (text, html) {
            (Some(text), Some(html)) => Body::Both { text, html },
            (Some(text), None) => Body::Text(text),
            (None, Some(html)) => Body::Html(html),
            // A template with only a subject: the message content is the body.
            (None, None) => Body::Text(message.content.clone()),
        };
        Content { subject, body }
    }
}

/// Trimmed lines joined by one space: a header value never carries a line break.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The message id reduced to characters that are safe in a Message-ID's left part.
fn id_atom(id: &str) -> String {
    let atom: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    if atom.is_empty() {
        "message".into()
    } else {
        atom
    }
}

// ---------------------------------------------------------------------------------------
// Error classification
// ---------------------------------------------------------------------------------------

/// What went wrong, extracted from lettre's opaque error so [`classify_failure`] is a pure
/// function with a table test (lettre's error cannot be constructed outside lettre).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// A negative SMTP reply (4xx/5xx) to any command, with its text.
    Reply {
        code: u16,
        text: String,
    },
    Timeout,
    /// TLS handshake or certificate failure.
    Tls(String),
    /// The TCP connection could not be made, or broke mid-transaction.
    Connection(String),
    /// The server's reply could not be parsed.
    Protocol,
    /// lettre refused to go on (no usable AUTH mechanism, no STARTTLS, …).
    Client(String),
    /// The transport was shut down.
    Shutdown,
}

impl Failure {
    fn of(e: &lettre::transport::smtp::Error) -> Failure {
        use std::error::Error as _;
        if let Some(code) = e.status() {
            let text = e.source().map(|s| s.to_string()).unwrap_or_default();
            return Failure::Reply {
                code: u16::from(code),
                text,
            };
        }
        if e.is_timeout() {
            return Failure::Timeout;
        }
        let detail = io_detail(e).unwrap_or_else(|| {
            e.source()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown error".into())
        });
        if e.is_tls() {
            Failure::Tls(detail)
        } else if e.is_transport_shutdown() {
            Failure::Shutdown
        } else if e.is_response() {
            Failure::Protocol
        } else if e.is_client() {
            Failure::Client(detail)
        } else {
            Failure::Connection(detail)
        }
    }
}

/// The kind of the first I/O error in the chain (`connection refused`): short, no addresses.
fn io_detail(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                std::io::ErrorKind::Other | std::io::ErrorKind::InvalidData => {
                    short(&io.to_string())
                }
                kind => kind.to_string(),
            });
        }
        source = err.source();
    }
    None
}

/// Maps a lettre SMTP error to a [`ChannelError`]: the one place where SMTP failures are
/// classified (see `classify_failure` for the table).
pub(crate) fn classify(e: &lettre::transport::smtp::Error) -> ChannelError {
    classify_failure(&Failure::of(e))
}

fn classify_failure(failure: &Failure) -> ChannelError {
    match failure {
        Failure::Reply { code, text } => classify_reply(*code, text),
        Failure::Timeout => ChannelError::transient("SMTP server timed out"),
        Failure::Tls(d) => ChannelError::transient(format!("TLS handshake failed: {}", short(d))),
        Failure::Connection(d) => {
            ChannelError::transient(format!("SMTP connection failed: {}", short(d)))
        }
        Failure::Protocol => ChannelError::transient("unreadable SMTP reply"),
        Failure::Shutdown => ChannelError::transient("SMTP transport was shut down"),
        Failure::Client(d) => {
            let lower = d.to_ascii_lowercase();
            if lower.contains("authentication mechanism") {
                ChannelError::config(
                    "the SMTP server offers no supported AUTH mechanism (PLAIN, LOGIN)",
                )
            } else if lower.contains("starttls") {
                ChannelError::config("the SMTP server does not offer STARTTLS (tls = \"starttls\")")
            } else {
                ChannelError::permanent(format!("SMTP client error: {}", short(d)))
            }
        }
    }
}

/// A negative SMTP reply. 4xx → transient; auth failures → config; refused sender →
/// config; unknown recipient → bad_recipient; any other 5xx → permanent. The code is kept.
fn classify_reply(code: u16, text: &str) -> ChannelError {
    let enhanced = enhanced_code(text);
    let lower = text.to_ascii_lowercase();
    let kind = match code {
        400..=499 => ErrorKind::Transient,
        // 530 auth required, 534 mechanism too weak, 535 bad credentials,
        // 538 encryption required for the mechanism.
        530 | 534 | 535 | 538 => ErrorKind::Config,
        _ if is_sender_problem(enhanced, &lower) => ErrorKind::Config,
        _ if is_recipient_problem(code, enhanced, &lower) => ErrorKind::BadRecipient,
        _ => ErrorKind::Permanent,
    };
    let summary = short(text);
    let message = if summary.is_empty() {
        format!("SMTP {code}")
    } else {
        format!("SMTP {code}: {summary}")
    };
    ChannelError::new(kind, message).with_code(code.to_string())
}

/// `X.Y.Z` at the start of the reply text (RFC 3463), e.g. `5.1.1`.
fn enhanced_code(text: &str) -> Option<(u16, u16, u16)> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let class = parts.next()?.parse().ok()?;
    let subject = parts.next()?.parse().ok()?;
    let detail = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some((class, subject, detail))
}

/// Our `from` was refused: 5.1.7 (bad sender mailbox syntax), 5.1.8 (bad sender system),
/// or wording like Postfix's "Sender address rejected".
fn is_sender_problem(enhanced: Option<(u16, u16, u16)>, lower: &str) -> bool {
    matches!(enhanced, Some((5, 1, 7 | 8))) || lower.contains("sender address")
}

/// The recipient does not exist. An enhanced code decides when there is one (5.1.x address
/// status); without one, the wording of a 550/551/553 reply does.
fn is_recipient_problem(code: u16, enhanced: Option<(u16, u16, u16)>, lower: &str) -> bool {
    const WORDING: &[&str] = &[
        "user unknown",
        "unknown user",
        "no such user",
        "user not found",
        "no such mailbox",
        "mailbox unknown",
        "unknown mailbox",
        "mailbox unavailable",
        "mailbox not found",
        "mailbox does not exist",
        "recipient unknown",
        "unknown recipient",
        "invalid recipient",
        "recipient address rejected",
        "does not exist",
    ];
    match (code, enhanced) {
        (501, Some((5, 1, 3))) => true,
        (550 | 551 | 553, Some((5, 1, _))) => true,
        (550 | 551 | 553, None) => WORDING.iter().any(|w| lower.contains(w)),
        _ => false,
    }
}

/// One line, addresses replaced by `<address>`, at most [`MAX_REPLY_CHARS`] characters.
fn short(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        if word.contains('@') {
            out.push_str("<address>");
        } else {
            out.push_str(word);
        }
    }
    if out.chars().count() > MAX_REPLY_CHARS {
        out = out.chars().take(MAX_REPLY_CHARS).collect();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::testkit;
    use herald_channel::Services;
    use serde_json::json;

    fn ctx_build(config: serde_json::Value) -> Result<SmtpChannel, ConfigError> {
        let services = Services::default();
        let ctx = BuildContext {
            name: "mail",
            config: &config,
            services: &services,
        };
        SmtpChannel::new(ctx.name, parse(&ctx)?)
    }

    fn reply(code: u16, text: &str) -> Failure {
        Failure::Reply {
            code,
            text: text.into(),
        }
    }

    #[test]
    fn classification_table() {
        use ErrorKind::*;
        let cases: Vec<(Failure, ErrorKind, Option<&str>)> = vec![
            // 4xx: try again later, whatever the text says.
            (
                reply(421, "4.3.2 Service shutting down"),
                Transient,
                Some("421"),
            ),
            (reply(450, "4.2.1 Mailbox busy"), Transient, Some("450")),
            (
                reply(451, "4.3.0 Local error in processing"),
                Transient,
                Some("451"),
            ),
            (
                reply(452, "4.5.3 Too many recipients"),
                Transient,
                Some("452"),
            ),
            (
                reply(454, "4.7.0 Temporary authentication failure"),
                Transient,
                Some("454"),
            ),
            (
                reply(450, "4.1.1 <a@b.c>: Recipient address rejected: unverified"),
                Transient,
                Some("450"),
            ),
            // Recipient does not exist.
            (
                reply(
                    550,
                    "5.1.1 <a@b.c>: Recipient address rejected: User unknown",
                ),
                BadRecipient,
                Some("550"),
            ),
            (reply(550, "5.1.10 Null MX"), BadRecipient, Some("550")),
            (
                reply(551, "5.1.6 User not local; please try <x@y.z>"),
                BadRecipient,
                Some("551"),
            ),
            (
                reply(553, "5.1.3 Bad recipient address syntax"),
                BadRecipient,
                Some("553"),
            ),
            (
                reply(501, "5.1.3 Bad recipient address syntax"),
                BadRecipient,
                Some("501"),
            ),
            (
                reply(550, "Requested action not taken: mailbox unavailable"),
                BadRecipient,
                Some("550"),
            ),
            (reply(550, "No such user here"), BadRecipient, Some("550")),
            // An enhanced code that is not about the address wins over the wording.
            (
                reply(550, "5.7.1 Message rejected as spam; mailbox unavailable"),
                Permanent,
                Some("550"),
            ),
            (
                reply(501, "5.5.4 Syntax error in parameters"),
                Permanent,
                Some("501"),
            ),
            // Our sender was refused: configuration.
            (
                reply(
                    553,
                    "5.1.8 <n@example.com>: Sender address rejected: Domain not found",
                ),
                Config,
                Some("553"),
            ),
            (
                reply(
                    553,
                    "5.7.1 <n@example.com>: Sender address rejected: not owned by user",
                ),
                Config,
                Some("553"),
            ),
            (
                reply(550, "5.1.7 Invalid sender mailbox syntax"),
                Config,
                Some("550"),
            ),
            // Authentication.
            (
                reply(535, "5.7.8 Authentication credentials invalid"),
                Config,
                Some("535"),
            ),
            (
                reply(530, "5.7.0 Authentication required"),
                Config,
                Some("530"),
            ),
            (
                reply(534, "5.7.9 Authentication mechanism is too weak"),
                Config,
                Some("534"),
            ),
            (
                reply(538, "5.7.11 Encryption required"),
                Config,
                Some("538"),
            ),
            // Any other 5xx.
            (
                reply(554, "5.6.0 Transaction failed"),
                Permanent,
                Some("554"),
            ),
            (
                reply(552, "5.3.4 Message size exceeds fixed limit"),
                Permanent,
                Some("552"),
            ),
            (reply(550, "5.7.1 Relaying denied"), Permanent, Some("550")),
            (reply(500, ""), Permanent, Some("500")),
            // No reply at all.
            (Failure::Timeout, Transient, None),
            (
                Failure::Connection("connection refused".into()),
                Transient,
                None,
            ),
            (
                Failure::Connection("connection reset".into()),
                Transient,
                None,
            ),
            (
                Failure::Tls("invalid peer certificate: UnknownIssuer".into()),
                Transient,
                None,
            ),
            (Failure::Protocol, Transient, None),
            (Failure::Shutdown, Transient, None),
            (
                Failure::Client("No compatible authentication mechanism was found".into()),
                Config,
                None,
            ),
            (
                Failure::Client("STARTTLS is not supported on this server".into()),
                Config,
                None,
            ),
            (
                Failure::Client(
                    "Message contains non-ascii chars but server does not support 8BITMIME".into(),
                ),
                Permanent,
                None,
            ),
        ];
        for (failure, kind, code) in cases {
            let err = classify_failure(&failure);
            assert_eq!(err.kind(), kind, "{failure:?} → {err}");
            assert_eq!(err.code(), code, "{failure:?} → {err}");
        }
    }

    #[test]
    fn reply_messages_are_short_and_hide_addresses() {
        let err = classify_failure(&reply(
            550,
            "5.1.1 <alice@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
        ));
        assert_eq!(
            err.to_string(),
            "bad_recipient: [550] SMTP 550: 5.1.1 <address> Recipient address rejected: User unknown in virtual mailbox table"
        );
        assert!(!err.message().contains("alice"), "{err}");
        let long = "4.0.0 ".to_owned() + &"x".repeat(500);
        let err = classify_failure(&reply(451, &long));
        assert!(
            err.message().chars().count() < MAX_REPLY_CHARS + 20,
            "{err}"
        );
        let err = classify_failure(&reply(451, "first line\nsecond   line"));
        assert_eq!(err.message(), "SMTP 451: first line second line");
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(enhanced_code("5.1.1 User unknown"), Some((5, 1, 1)));
        assert_eq!(enhanced_code("4.7.28 rate"), Some((4, 7, 28)));
        assert_eq!(enhanced_code("Mailbox unavailable"), None);
        assert_eq!(enhanced_code("1.2.3 no"), None);
        assert_eq!(enhanced_code("5.1 short"), None);
        assert_eq!(enhanced_code(""), None);
    }

    fn base() -> serde_json::Value {
        json!({"host": "smtp.example.com", "from": "Herald <noreply@example.com>"})
    }

    #[test]
    fn defaults() {
        let ch = ctx_build(base()).unwrap();
        assert_eq!(ch.port, 587);
        assert_eq!(ch.tls, TlsMode::Starttls);
        assert_eq!(ch.from.email.to_string(), "noreply@example.com");
        assert_eq!(ch.from.name.as_deref(), Some("Herald"));
        assert_eq!(ch.permits.available_permits(), 4);
        for (tls, port) in [("none", 25), ("starttls", 587), ("tls", 465)] {
            let mut cfg = base();
            cfg["tls"] = json!(tls);
            assert_eq!(ctx_build(cfg).unwrap().port, port, "{tls}");
        }
        let mut cfg = base();
        cfg["port"] = json!(2525);
        cfg["tls"] = json!("tls");
        assert_eq!(ctx_build(cfg).unwrap().port, 2525);
    }

    #[test]
    fn config_errors_name_the_key() {
        let cases = [
            (json!({"host": "h", "from": "a@b.c", "hots": 1}), "hots"),
            (json!({"host": "h"}), "from"),
            (json!({"from": "a@b.c"}), "host"),
            (json!({"host": "h", "from": "not an address"}), "from:"),
            (
                json!({"host": "h", "from": "a@b.c", "reply_to": "nope"}),
                "reply_to:",
            ),
            (
                json!({"host": "h", "from": "a@b.c", "username": "u"}),
                "password:",
            ),
            (
                json!({"host": "h", "from": "a@b.c", "password": "p"}),
                "username:",
            ),
            (json!({"host": "h", "from": "a@b.c", "tls": "ssl"}), "tls:"),
            (json!({"host": "h", "from": "a@b.c", "port": "25"}), "port:"),
            (
                json!({"host": "h", "from": "a@b.c", "timeout": "soon"}),
                "timeout:",
            ),
            (
                json!({"host": "h", "from": "a@b.c", "timeout": "0s"}),
                "timeout:",
            ),
            (
                json!({"host": "h", "from": "a@b.c", "pool_max_size": 0}),
                "pool_max_size:",
            ),
            (
                json!({"host": "h", "from": "a@b.c", "hello_name": ""}),
                "hello_name:",
            ),
            (json!({"host": " ", "from": "a@b.c"}), "host:"),
        ];
        for (cfg, key) in cases {
            let err = ctx_build(cfg.clone()).unwrap_err().to_string();
            assert!(err.starts_with("channels.mail: "), "{cfg}: {err}");
            assert!(err.contains(key), "{cfg}: expected {key:?} in {err}");
        }
    }

    #[test]
    fn password_never_shown() {
        let mut cfg = base();
        cfg["username"] = json!("herald");
        cfg["password"] = json!("hunter2-secret");
        let ch = ctx_build(cfg.clone()).unwrap();
        let debug = format!("{ch:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");

        let services = Services::default();
        let ctx = BuildContext {
            name: "mail",
            config: &cfg,
            services: &services,
        };
        let config = parse::<Config>(&ctx).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));

        // A wrongly typed password is not echoed.
        cfg["password"] = json!(987654321);
        let err = ctx_build(cfg.clone()).unwrap_err();
        assert!(!err.to_string().contains("987654321"), "{err}");
        assert!(!format!("{err:?}").contains("987654321"), "{err:?}");
        assert!(err.to_string().contains("password"), "{err}");

        // A config error after the password was read does not show it either.
        cfg["password"] = json!("hunter2-secret");
        cfg["from"] = json!("broken");
        let err = ctx_build(cfg).unwrap_err();
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }

    #[test]
    fn content_selection() {
        let msg = testkit::message("Title\nline two", "the content");
        let mut out = testkit::outgoing(msg, "42", Some("a@example.com"));
        assert_eq!(
            Content::of(&out),
            Content {
                subject: "Title line two".into(),
                body: Body::Text("the content".into())
            }
        );
        out.rendered = Some(testkit::rendered(&[
            ("subject", "  Report\r\n ready \n"),
            ("txt", "plain"),
            ("html", "<p>html</p>"),
        ]));
        assert_eq!(
            Content::of(&out),
            Content {
                subject: "Report ready".into(),
                body: Body::Both {
                    text: "plain".into(),
                    html: "<p>html</p>".into()
                }
            }
        );
        out.rendered = Some(testkit::rendered(&[("html", "<p>h</p>")]));
        assert_eq!(
            Content::of(&out),
            Content {
                subject: "Title line two".into(),
                body: Body::Html("<p>h</p>".into())
            }
        );
        out.rendered = Some(testkit::rendered(&[("subject", " "), ("txt", "t")]));
        assert_eq!(
            Content::of(&out),
            Content {
                subject: "Title line two".into(),
                body: Body::Text("t".into())
            }
        );
        out.rendered = Some(testkit::rendered(&[("subject", "S")]));
        assert_eq!(Content::of(&out).body, Body::Text("the content".into()));
    }

    #[test]
    fn compose_headers_and_recipient_errors() {
        let mut cfg = base();
        cfg["reply_to"] = json!("support@example.com");
        let ch = ctx_build(cfg).unwrap();
        let mut out = testkit::outgoing(testkit::message("报告已生成", "c"), "42", None);
        let err = ch.compose(&out).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadRecipient);
        assert_eq!(err.message(), "no e-mail address");
        out.address = Some("not-an-address".into());
        let err = ch.compose(&out).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadRecipient);
        assert!(!err.message().contains("not-an-address"));

        out.address = Some("bob@example.org".into());
        out.delivery_id = 77;
        let (message, id) = ch.compose(&out).unwrap();
        assert_eq!(id, "0190f5c2-0000-7000-8000-000000000001.77@example.com");
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(raw.contains(&format!("Message-ID: <{id}>\r\n")), "{raw}");
        assert!(raw.contains("Reply-To: support@example.com\r\n"), "{raw}");
        assert!(raw.contains("To: bob@example.org\r\n"), "{raw}");
        assert!(raw.contains("Date: "), "{raw}");
        // Non-ASCII subjects are RFC 2047 encoded words.
        assert!(raw.contains("Subject: =?utf-8?"), "{raw}");
        assert_eq!(message.envelope().to()[0].to_string(), "bob@example.org");
        assert_eq!(
            message.envelope().from().map(|a| a.to_string()).as_deref(),
            Some("noreply@example.com")
        );
    }

    #[test]
    fn id_atoms() {
        assert_eq!(id_atom("0190f5c2-0000-7000"), "0190f5c2-0000-7000");
        assert_eq!(id_atom("a<b>@c d"), "abcd");
        assert_eq!(id_atom("<>"), "message");
    }

    #[test]
    fn health_degrades_after_connection_failures() {
        let ch = ctx_build(base()).unwrap();
        assert_eq!(ch.health(), Health::Ok);
        ch.connection_failures
            .store(DEGRADED_AFTER, Ordering::Relaxed);
        assert_eq!(ch.health().as_str(), "degraded");
    }
}
