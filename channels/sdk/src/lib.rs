//! # herald-channel — the plugin SDK for Herald channels
//!
//! A *channel* turns one delivery (a message for one receiver) into something the outside
//! world sees: a WebSocket frame, an e-mail, an SMS, a push notification. Herald's core
//! owns everything else — storage, retries, delivery status, rate limits — so a channel is
//! small: it implements [`Channel::send`] and classifies what went wrong.
//!
//! ## Writing a channel
//!
//! 1. Implement [`Channel`] for your type. `send` makes exactly **one** attempt: never
//!    retry, sleep or write to the store; return a classified [`ChannelError`] instead and the
//!    dispatcher decides what happens next.
//! 2. Register a [`ChannelDescriptor`] with `inventory::submit!`; its `build` function parses
//!    the instance's configuration table (use [`parse_config`] with a
//!    `#[serde(deny_unknown_fields)]` struct so typos fail the start with the key named).
//! 3. Link the crate into the `herald` binary (`extern crate my_channel as _;`): an unreferenced
//!    crate is not linked and silently does not register.
//!
//! Lay the crate out as every channel crate is (`README.md`, "Layout of a channel crate"):
//! `lib.rs` registers, `common.rs` shares, one file per provider, fakes behind a `testing`
//! feature. Use [`config_error`], [`clock`] and, with the `http` feature, `http` rather
//! than writing your own.
//!
//! ```
//! use herald_channel::*;
//! use std::sync::Arc;
//!
//! struct Null;
//!
//! #[async_trait::async_trait]
//! impl Channel for Null {
//!     async fn send(&self, _out: &Outgoing) -> Result<Accepted, ChannelError> {
//!         Ok(Accepted::Sent { provider_id: None })
//!     }
//! }
//!
//! fn build(_ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
//!     Ok(Arc::new(Null))
//! }
//!
//! inventory::submit! {
//!     ChannelDescriptor { kind: "null.doc", summary: "discards everything", address: AddressKind::None, presence: false, build }
//! }
//!
//! assert!(find("null.doc").is_some());
//! ```

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use async_trait::async_trait;
pub use inventory;

pub mod clock;
#[cfg(feature = "http")]
pub mod http;
pub mod shared;
pub mod testkit;

/// The recipient address a channel needs, looked up by the core before `send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// The receiver's user id is enough (WebSocket: delivered to the user's sessions).
    None,
    /// `email` of the recipient record.
    Email,
    /// `phone` (E.164) of the recipient record.
    Phone,
    /// `wechatOpenId` of the recipient record.
    WechatOpenId,
    /// Registered devices of the given platform (`fcm`, `apns`, `webpush`).
    Device(&'static str),
}

/// A channel kind, collected at compile time with [`inventory`].
pub struct ChannelDescriptor {
    /// `family.provider`, e.g. `email.smtp`; `websocket` for the built-in WebSocket channel.
    /// The family (the first word) selects the template files (`<family>.<part>.j2`).
    pub kind: &'static str,
    /// One line for `GET /api/v1/channels` and error messages.
    pub summary: &'static str,
    /// Which recipient address the channel needs.
    pub address: AddressKind,
    /// A *presence* channel only reaches receivers that are connected right now. When
    /// it answers [`Accepted::Held`] the delivery stays `pending` and the core hands it over
    /// again when the receiver connects (WebSocket replay). Provider channels are `false`.
    pub presence: bool,
    /// Builds one configured instance.
    pub build: fn(BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError>,
}

impl ChannelDescriptor {
    /// The kind's first word (`email` for `email.smtp`).
    pub fn family(&self) -> &'static str {
        family_of(self.kind)
    }
}

impl fmt::Debug for ChannelDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelDescriptor")
            .field("kind", &self.kind)
            .field("address", &self.address)
            .field("presence", &self.presence)
            .finish_non_exhaustive()
    }
}

inventory::collect!(ChannelDescriptor);

/// The family of a kind: its first dot-separated word.
pub fn family_of(kind: &str) -> &str {
    kind.split('.').next().unwrap_or(kind)
}

/// Every registered channel kind, sorted by kind.
pub fn descriptors() -> Vec<&'static ChannelDescriptor> {
    let mut all: Vec<_> = inventory::iter::<ChannelDescriptor>.into_iter().collect();
    all.sort_by_key(|d| d.kind);
    all
}

/// The descriptor registered for `kind`.
pub fn find(kind: &str) -> Option<&'static ChannelDescriptor> {
    inventory::iter::<ChannelDescriptor>
        .into_iter()
        .find(|d| d.kind == kind)
}

/// A check a channel crate runs on every device registration of one platform
/// (`POST /api/v1/me/devices`, a recipient's `devices`) after the core's own checks and
/// before it stores anything: what the crate's `send` could never use is refused at
/// registration with `422` naming the field, instead of a later `bad_recipient`.
/// Collected with [`inventory`] like [`ChannelDescriptor`]; an unlinked crate's checks do
/// not run.
///
/// ```
/// use herald_channel::{check_device, DeviceCheck, InvalidDevice};
///
/// fn check(token: &str) -> Result<(), InvalidDevice> {
///     if token.starts_with("dev-") {
///         Ok(())
///     } else {
///         Err(InvalidDevice::new("token", "must start with `dev-`"))
///     }
/// }
/// herald_channel::inventory::submit! { DeviceCheck { platform: "doc-platform", check } }
///
/// assert!(check_device("doc-platform", "dev-1").is_ok());
/// assert_eq!(check_device("doc-platform", "x").unwrap_err().field, "token");
/// assert!(check_device("other", "x").is_ok());
/// ```
pub struct DeviceCheck {
    /// The platform, as in [`AddressKind::Device`] (`webpush`).
    pub platform: &'static str,
    /// Checks a registration's [`Device::token`] as the core will store it (for `webpush`
    /// the subscription JSON `{"endpoint", "keys": {"p256dh", "auth"}}`). The error never
    /// quotes the token: it may be a capability.
    pub check: fn(&str) -> Result<(), InvalidDevice>,
}

inventory::collect!(DeviceCheck);

/// Why a device registration is refused: the field of the registration body
/// (`token`, `subscription.keys.p256dh`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDevice {
    pub field: &'static str,
    pub message: String,
}

impl InvalidDevice {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Run every registered [`DeviceCheck`] of `platform` on `token`; the first refusal wins.
pub fn check_device(platform: &str, token: &str) -> Result<(), InvalidDevice> {
    inventory::iter::<DeviceCheck>
        .into_iter()
        .filter(|c| c.platform == platform)
        .try_for_each(|c| (c.check)(token))
}

/// What a builder receives: the instance name, its configuration table (without `kind`) and
/// the services the core offers (e.g. the session registry for WebSocket).
pub struct BuildContext<'a> {
    pub name: &'a str,
    pub config: &'a serde_json::Value,
    pub services: &'a Services,
}

/// A small type map of shared handles the core lends to channel builders.
#[derive(Default, Clone)]
pub struct Services {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Services {
    pub fn insert<T: Any + Send + Sync + Clone>(&mut self, value: T) {
        self.map.insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub fn get<T: Any + Send + Sync + Clone>(&self) -> Option<T> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }
}

/// Parse an instance's configuration into `T`. Use `#[serde(deny_unknown_fields)]` on `T`
/// so an unknown key is rejected; the error names the key. A wrongly typed value names its
/// key's path too (serde alone names the key only for unknown and missing fields:
/// `timeout = 5` would just say "expected a string", and a nested
/// `templates.x.params` error would lose its table).
pub fn parse_config<T: serde::de::DeserializeOwned>(
    ctx: &BuildContext<'_>,
) -> Result<T, ConfigError> {
    T::deserialize(ctx.config).map_err(|err| {
        match serde_path_to_error::deserialize::<_, T>(ctx.config) {
            Err(e) if e.path().to_string() != "." => {
                ConfigError::new(ctx.name, format!("{}: {}", e.path(), e.inner()))
            }
            _ => ConfigError::new(ctx.name, err.to_string()),
        }
    })
}

/// Longest vendor text [`vendor_text`] keeps, in characters.
pub const MAX_VENDOR_CHARS: usize = 160;

/// A vendor's error text made fit for a stored delivery error: one line, at most
/// [`MAX_VENDOR_CHARS`] characters (then `…`), and each of `secrets` a vendor might echo
/// replaced by `<redacted>`.
pub fn vendor_text(text: &str, secrets: &[&str]) -> String {
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    if text.chars().count() > MAX_VENDOR_CHARS {
        text = text.chars().take(MAX_VENDOR_CHARS).collect::<String>() + "…";
    }
    text
}

/// `s` cut to at most `max` bytes at a character boundary, ending in `…` when cut.
pub fn truncate_bytes(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    const ELLIPSIS: &str = "…";
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{ELLIPSIS}", &s[..end]))
}

/// A secret configuration value (password, API secret, token): `Debug` never shows it, and a
/// wrongly typed value is not echoed by the configuration error either (serde's own
/// `String` error would quote it).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Secret(s)),
            _ => Err(serde::de::Error::custom("invalid type: expected a string")),
        }
    }
}

/// `e` followed by its sources, `": "`-separated, skipping a source whose text the message
/// already ends with (HTTP clients often repeat the cause). For channel error messages;
/// strip URLs holding secrets from `e` first.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// A configuration problem found while building an instance; the server refuses to start.
#[derive(Debug, thiserror::Error)]
#[error("channels.{instance}: {message}")]
pub struct ConfigError {
    pub instance: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(instance: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            instance: instance.into(),
            message: message.into(),
        }
    }
}

/// A validation failure of `key` in instance `instance`'s table:
/// `channels.<instance>: <key>: <message>`. Never put a secret value into `message`.
pub fn config_error(instance: &str, key: &str, message: impl fmt::Display) -> ConfigError {
    ConfigError::new(instance, format!("{key}: {message}"))
}

/// The message as channels see it. Shared by every delivery of one message.
#[derive(Debug, Clone)]
pub struct MessageView {
    /// Public message id.
    pub id: String,
    pub title: String,
    pub content: String,
    pub msg_type: i64,
    pub sender: String,
    /// RFC 3339.
    pub created_at: String,
    /// The Herald template the message was sent with (`report_ready`), if any. Providers
    /// that map Herald templates to vendor templates (SMS template codes, WeChat template
    /// ids) key their configuration on it.
    pub template: Option<String>,
    /// The template data the sender gave (a JSON object), if any.
    pub data: Option<serde_json::Value>,
}

/// A template rendered for one channel family: part name → text. The parts are the files
/// `templates/<name>/<family>.<part>.j2` (e.g. `subject`, `html`, `txt` for `email`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    parts: std::collections::BTreeMap<String, String>,
}

impl Rendered {
    pub fn new(parts: std::collections::BTreeMap<String, String>) -> Self {
        Self { parts }
    }
    /// One part's text (`"subject"`, `"html"`, `"txt"`, `"json"` …).
    pub fn part(&self, name: &str) -> Option<&str> {
        self.parts.get(name).map(String::as_str)
    }
    pub fn parts(&self) -> &std::collections::BTreeMap<String, String> {
        &self.parts
    }
}

/// One delivery handed to a channel.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Stable id of the delivery; use it as the vendor's idempotency / out id.
    pub delivery_id: i64,
    pub message: Arc<MessageView>,
    /// The receiving user id.
    pub receiver: String,
    /// The address resolved from the recipient record for [`ChannelDescriptor::address`].
    pub address: Option<String>,
    /// The message's template rendered for this channel's family, when it was sent with a
    /// template. Without one, use `message.title` / `message.content`.
    pub rendered: Option<Arc<Rendered>>,
    /// 1 for the first attempt, 2 for the first retry, …
    pub attempt: u32,
    /// Push channels ([`AddressKind::Device`]): the receiver's active devices of the
    /// platform. Send to each; report dead ones with [`DeadDevices::mark`].
    pub devices: Vec<Device>,
    /// Where a push channel reports devices the vendor says are gone (FCM `UNREGISTERED`,
    /// APNs 410, Web Push 404/410). The core deactivates them after `send` returns.
    pub dead_devices: DeadDevices,
}

/// One message for many receivers of a presence channel ([`Channel::send_audience`]).
pub struct Audience<'a> {
    pub message: Arc<MessageView>,
    /// The receivers, sorted by their bytes and without duplicates.
    pub receivers: &'a [String],
    /// The delivery id of receiver `i`.
    pub delivery_id: &'a (dyn Fn(usize) -> i64 + Send + Sync),
}

/// A registered device of a receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Herald's id of the registration.
    pub id: i64,
    /// The FCM registration token, the APNs device token, or the Web Push subscription
    /// (JSON: `{"endpoint", "keys": {"p256dh", "auth"}}`).
    pub token: String,
}

/// Devices a channel found dead during one `send`: (device id, reason).
#[derive(Debug, Clone, Default)]
pub struct DeadDevices(Arc<std::sync::Mutex<Vec<(i64, String)>>>);

impl DeadDevices {
    /// Report `device` as gone for good (`reason` is shown to operators; no secrets).
    pub fn mark(&self, device: i64, reason: impl Into<String>) {
        if let Ok(mut v) = self.0.lock() {
            v.push((device, reason.into()));
        }
    }
    /// What was reported so far (the core reads it after `send`).
    pub fn take(&self) -> Vec<(i64, String)> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// A successful hand-over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Written to a socket or accepted by the provider (status `sent`).
    Sent { provider_id: Option<String> },
    /// Presence channels only: the receiver is not reachable now; the delivery stays
    /// `pending` and is handed over again when the receiver comes back.
    Held,
    /// Presence channels only: queued on the receiver's live session(s); the core records
    /// `sent` when a frame is actually written to a socket.
    Queued,
}

/// How a failure should be treated. One classification per provider (`classify()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Try again later (network error, 5xx, 4xx SMTP reply…).
    Transient,
    /// The provider throttles us: defer, honouring `retry_after` when given.
    RateLimited,
    /// The address is wrong or dead; never retried (may deactivate a device token).
    BadRecipient,
    /// The provider refused this delivery for good; never retried.
    Permanent,
    /// Our configuration is wrong (credentials, template id); never retried.
    Config,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::BadRecipient => "bad_recipient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Config => "config",
        }
    }
}

/// A classified channel error. The message must never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelError {
    kind: ErrorKind,
    message: String,
    retry_after: Option<Duration>,
    code: Option<String>,
}

impl ChannelError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
            code: None,
        }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RateLimited, message)
    }
    pub fn bad_recipient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRecipient, message)
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    /// Ask the dispatcher not to try again before `after`.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
    /// Keep the vendor's error code (shown in the delivery's error).
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
    /// Worth another attempt later.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::RateLimited)
    }
    /// Never worth another attempt.
    pub fn is_permanent(&self) -> bool {
        !self.is_retryable()
    }
}

impl fmt::Display for ChannelError {
    /// `kind: [code] message`, the form stored in a delivery's `error`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.kind.as_str())?;
        if let Some(code) = &self.code {
            write!(f, "[{code}] ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ChannelError {}

/// The health a channel reports for `GET /api/v1/channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    Degraded(String),
    Down(String),
}

impl Health {
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded(_) => "degraded",
            Health::Down(_) => "down",
        }
    }
}

/// Limits a kind suggests for its instances (the vendor's documented caps). The instance's
/// own `rate_limit` / `daily_quota` keys win; the core enforces both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Defaults {
    /// At most `count` sends per `per`.
    pub rate_limit: Option<(u32, Duration)>,
    /// At most this many sends per quota window (a day).
    pub daily_quota: Option<u64>,
    /// When the vendor's day starts, as minutes east of UTC midnight (WeChat counts days in
    /// China time: `8 * 60`… i.e. windows start at 00:00 UTC+8 = 16:00 UTC). The
    /// instance's `quota_reset` wins.
    pub quota_reset_utc_offset_minutes: Option<i32>,
}

impl Defaults {
    pub fn rate_limit(mut self, count: u32, per: Duration) -> Self {
        self.rate_limit = Some((count, per));
        self
    }
    pub fn daily_quota(mut self, n: u64) -> Self {
        self.daily_quota = Some(n);
        self
    }
    /// The vendor's day starts at local midnight in this UTC offset (minutes, e.g. 480).
    pub fn quota_day_in_utc_offset(mut self, minutes: i32) -> Self {
        self.quota_reset_utc_offset_minutes = Some(minutes);
        self
    }
}

/// A vendor's HTTP call back to Herald (delivery receipts), routed by the core from
/// `POST /api/v1/callbacks/<provider>/<instance>` to the instance's [`Channel::callback`].
#[derive(Debug, Clone)]
pub struct CallbackRequest<'a> {
    /// The raw query string (without `?`), possibly empty.
    pub query: &'a str,
    /// Request headers, names lowercase.
    pub headers: &'a [(String, String)],
    /// The raw body.
    pub body: &'a [u8],
}

impl CallbackRequest<'_> {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Which delivery a receipt is about: Herald's delivery id (when the channel put it into
/// the callback URL) or the provider's id returned in [`Accepted::Sent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptFor {
    Delivery(i64),
    Provider(String),
}

/// A delivery receipt from the vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// Reached the device / handset: status `delivered`.
    Delivered(ReceiptFor),
    /// The vendor gave up: status `failed` with the error.
    Failed(ReceiptFor, ChannelError),
}

/// Why a callback was refused. The core answers 401 / 400 / 404 and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("signature check failed: {0}")]
    Unauthorized(String),
    #[error("bad callback: {0}")]
    BadRequest(String),
    #[error("this channel takes no callbacks")]
    NotSupported,
}

/// A channel instance. One required method; the rest have defaults.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// Make one attempt to hand `out` over. Never retries, sleeps or touches the store.
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError>;

    /// Hand over several deliveries (of one or more messages). The default calls
    /// [`Channel::send`] for each; channels that can share work override it. The result has
    /// one entry per input, in order.
    async fn send_batch(&self, outs: &[Outgoing]) -> Vec<Result<Accepted, ChannelError>> {
        let mut results = Vec::with_capacity(outs.len());
        for out in outs {
            results.push(self.send(out).await);
        }
        results
    }

    /// Hand one message to many receivers at once (a broadcast's audience on a presence
    /// channel). The default builds one [`Outgoing`] per receiver and calls
    /// [`Channel::send_batch`]; a channel that can fan out more cheaply (WebSocket: one pass
    /// over its sessions) overrides it. One result per receiver, in order.
    async fn send_audience(&self, audience: &Audience<'_>) -> Vec<Result<Accepted, ChannelError>> {
        let outs: Vec<Outgoing> = audience
            .receivers
            .iter()
            .enumerate()
            .map(|(i, r)| Outgoing {
                delivery_id: (audience.delivery_id)(i),
                message: audience.message.clone(),
                receiver: r.clone(),
                address: None,
                rendered: None,
                attempt: 1,
                devices: Vec::new(),
                dead_devices: DeadDevices::default(),
            })
            .collect();
        self.send_batch(&outs).await
    }

    /// Current health, for the management API.
    fn health(&self) -> Health {
        Health::Ok
    }

    /// Limits this kind suggests (see [`Defaults`]); none by default.
    fn defaults(&self) -> Defaults {
        Defaults::default()
    }

    /// Verify and parse a vendor callback (e.g. an SMS status report). Verify the vendor's
    /// signature here; never touch the store: the core applies the receipts.
    async fn callback(&self, _req: &CallbackRequest<'_>) -> Result<Vec<Receipt>, CallbackError> {
        Err(CallbackError::NotSupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_and_predicates() {
        let e = ChannelError::rate_limited("slow down")
            .with_code("45011")
            .with_retry_after(Duration::from_secs(60));
        assert_eq!(e.to_string(), "rate_limited: [45011] slow down");
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(60)));
        assert!(ChannelError::bad_recipient("x").is_permanent());
        assert!(ChannelError::config("x").is_permanent());
        assert!(!ChannelError::transient("x").is_permanent());
    }

    #[test]
    fn services_type_map() {
        let mut s = Services::default();
        s.insert(Arc::new(7u32));
        assert_eq!(*s.get::<Arc<u32>>().unwrap(), 7);
        assert!(s.get::<Arc<u64>>().is_none());
    }

    #[test]
    fn secrets_are_redacted_and_not_echoed() {
        let s: Secret = serde_json::from_value(serde_json::json!("hunter2")).unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let err = serde_json::from_value::<Secret>(serde_json::json!(12345)).unwrap_err();
        assert!(!err.to_string().contains("12345"), "{err}");
    }

    #[test]
    fn error_chains_skip_repeated_causes() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl fmt::Display for E {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "send: refused",
            Some(Box::new(E(
                "refused",
                Some(Box::new(E("os error 111", None))),
            ))),
        );
        assert_eq!(error_chain(&e), "send: refused: os error 111");
    }

    #[test]
    fn family() {
        assert_eq!(family_of("email.smtp"), "email");
        assert_eq!(family_of("websocket"), "websocket");
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        host: String,
    }

    #[test]
    fn parse_config_names_the_key() {
        let v = serde_json::json!({"host": "x", "hots": 1});
        let services = Services::default();
        let ctx = BuildContext {
            name: "mail",
            config: &v,
            services: &services,
        };
        let err = parse_config::<Cfg>(&ctx).unwrap_err();
        assert!(err.to_string().contains("channels.mail"), "{err}");
        assert!(err.to_string().contains("hots"), "{err}");
        let v = serde_json::json!({});
        let ctx = BuildContext {
            name: "mail",
            config: &v,
            services: &services,
        };
        let err = parse_config::<Cfg>(&ctx).unwrap_err();
        assert!(err.to_string().contains("missing field `host`"), "{err}");
    }

    #[test]
    fn config_errors_name_instance_and_key() {
        let e = config_error("sms", "timeout", "must be longer than 0s");
        assert_eq!(
            e.to_string(),
            "channels.sms: timeout: must be longer than 0s"
        );
        assert_eq!(e.instance, "sms");
        assert_eq!(e.message, "timeout: must be longer than 0s");
    }
}
