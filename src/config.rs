//! Typed settings: built-in defaults < `herald.toml` (or `--config`) < `HERALD_…` environment
//! (`__` nests) < command-line flags. Nothing else in Herald reads the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A secret string: `Debug`/`Display` never show it.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the HTTP/WebSocket server listens on.
    pub bind: String,
    /// `sqlite://FILE` (created if missing) or, in cluster mode, `postgres://…`.
    pub database_url: String,
    /// Cluster mode: sessions, fan-out and shared caches in Redis (absent: single node).
    pub redis_url: Option<String>,
    /// HS256 secret for user tokens. Generated and stored beside the database when absent.
    pub jwt_secret: Option<Secret>,
    /// API key for the management API. Generated and stored beside the database when absent.
    pub api_key: Option<Secret>,
    /// Directory holding generated secrets; default: the SQLite file's directory (or `.`).
    pub data_dir: Option<PathBuf>,
    /// Name of this node in `GET /api/v1/clients` (default: host name).
    pub node_name: Option<String>,
    pub http: HttpSettings,
    pub websocket: WsSettings,
    pub database: DatabaseSettings,
    pub dispatch: DispatchSettings,
    pub templates: TemplateSettings,
    /// The notification center (`[inbox]`): retention of old entries.
    pub inbox: InboxSettings,
    pub log: LogSettings,
    /// Channel instances by name: `[channels.<name>] kind = "…"`.
    pub channels: ChannelTables,
    /// Default routing policies per template and message type (`[routing.…]`).
    pub routing: RoutingSettings,
    /// Cluster mode tuning (`[cluster]`; used with `redis_url`).
    pub cluster: ClusterSettings,
    /// Send rate limit of the main `api_key` (e.g. `"50/s"`); absent: none. Keys in
    /// `[[api_keys]]` have their own `rate_limit`.
    pub api_key_rate_limit: Option<String>,
    /// Extra management API keys with scopes and their own send limits (`[[api_keys]]`).
    pub api_keys: Vec<ApiKeySettings>,
    /// Webhook endpoints defined in the file (`[[webhooks]]`, docs/webhooks.md); more are
    /// added at runtime through `/api/v1/webhooks`.
    pub webhooks: Vec<WebhookEndpointSettings>,
}

/// The `[channels.<name>]` tables, as given. They hold credentials, so `Debug` shows only
/// each instance's name and kind.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct ChannelTables(pub BTreeMap<String, toml::Table>);

impl fmt::Debug for ChannelTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(name, t)| {
                (
                    name,
                    t.get("kind").and_then(toml::Value::as_str).unwrap_or("?"),
                )
            }))
            .finish()
    }
}

impl std::ops::Deref for ChannelTables {
    type Target = BTreeMap<String, toml::Table>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ChannelTables {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a ChannelTables {
    type Item = (&'a String, &'a toml::Table);
    type IntoIter = std::collections::btree_map::Iter<'a, String, toml::Table>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Largest accepted request body in bytes; larger → 413.
    pub body_limit: usize,
    /// Time allowed for in-flight work after SIGTERM before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Cross-origin access for browser clients (`[http.cors]`); default: none.
    pub cors: CorsSettings,
    /// Most client connections open at once, WebSocket sessions included. Absent: what the
    /// open-file limit allows, keeping `min(256, limit / 2)` descriptors for the database and
    /// outbound connections (see `server::Limits`). A new connection over the cap evicts the
    /// connection that has waited longest for a request head, or is closed at once.
    pub max_connections: Option<usize>,
    /// Connections WebSocket sessions may not take: sessions get at most
    /// `max_connections - reserved_connections`, so health checks, metrics and the
    /// management API stay reachable when sessions fill the rest (over it: `503`).
    pub reserved_connections: usize,
    /// A new connection must send a complete request head within this time, or it is
    /// closed (slowloris, idle floods). WebSocket upgrade requests included.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// After a response, a keep-alive connection must send its next complete request head
    /// within this time, or it is closed.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// A request body must arrive in full within this time once Herald starts reading it;
    /// otherwise `408` and the connection is closed.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsSettings {
    /// Interval between server pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A session that sends nothing (no pong, no frame) for this long is closed.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// The server pings right after `welcome`; a session whose client has sent no frame
    /// (the pong counts) this long after the welcome and replay were written is closed.
    #[serde(with = "humantime_serde")]
    pub first_frame_timeout: Duration,
    /// Largest accepted client frame in bytes; larger → close 1009.
    pub max_frame_size: usize,
    /// Frames buffered per session; a session whose queue is full is closed (slow consumer).
    pub queue_capacity: usize,
    /// A write to one socket taking longer than this closes the session.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Messages fetched per page while replaying on connect.
    pub replay_batch: usize,
    /// Socket read/write buffer sizes (tungstenite). Small values keep idle sessions cheap.
    pub read_buffer_size: usize,
    pub write_buffer_size: usize,
    /// Handshakes per client IP address (IPv6: per /64), e.g. `"20/s"`; absent, `"0"` or
    /// `"off"`: no limit. Over it → `429` before the token is checked.
    pub handshake_rate_limit: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// SQLite `synchronous`: `full` survives power loss; `normal` survives process crashes.
    pub synchronous: Synchronous,
    /// Read connections in the pool.
    pub max_readers: u32,
    /// Most write operations committed in one transaction (group commit).
    pub max_batch: usize,
    /// PostgreSQL: connections in the pool (each operation is a transaction on one).
    pub max_connections: u32,
    /// Admission control: memory the sends waiting for the writer may hold, in bytes. A
    /// send that finds it spent (or the queue full) is refused with `503` + `Retry-After`
    /// at once, before anything is written.
    pub max_queued_bytes: usize,
    /// Admission control: a send that waited this long for the writer is refused with
    /// `503` + `Retry-After` (nothing written), so overload answers fast instead of queueing.
    #[serde(with = "humantime_serde")]
    pub max_queue_wait: Duration,
    /// SQLite: the largest the database file may grow, e.g. `"10 GiB"`; beyond it writes
    /// fail as on a full disk (`503`, `/readyz` says why) until space is freed. Unset: no
    /// limit but the disk's.
    pub max_size: Option<String>,
    /// Broadcasts: members still undelivered this long after the send get delivery rows of
    /// their own; until then the broadcast is one compact record (ARCHITECTURE.md, "Compact
    /// audiences"). Shorter: fewer records scanned when a user connects; longer: fewer rows
    /// for slow acknowledgers.
    #[serde(with = "humantime_serde")]
    pub audience_window: Duration,
}

impl DatabaseSettings {
    /// `max_size` in bytes (`None`: no limit).
    pub fn max_size_bytes(&self) -> Result<Option<u64>, String> {
        self.max_size.as_deref().map(parse_size).transpose()
    }
}

/// `"512 MiB"`, `"10GB"`, `"4096"` → bytes. Hand-written: one small parser is not worth a
/// dependency.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a size such as \"10 GiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}`: too large"))
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Normal,
    Full,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchSettings {
    /// Status changes (sent, acks, reads) waiting for the batched writer; when full, the
    /// producers wait (backpressure), nothing is dropped.
    pub status_queue: usize,
    /// Most status changes written in one transaction.
    pub status_batch: usize,
    /// Admission control for the live fan-out: while the frames queued for this node's
    /// WebSocket sessions average more than this per session, sends to presence channels
    /// are refused with `503` + `Retry-After` (nothing stored), so the backlog — memory and
    /// latency — stays bounded under overload (each queued frame is a round of session work
    /// that a `POST` waits behind: 2 keeps answers under 100 ms p99 at 4 × a core's
    /// broadcast capacity). `0`: off.
    pub fanout_backlog: usize,
    /// Provider channels (e-mail, SMS, push …): attempts per delivery before it fails with
    /// `attempts_exhausted`. An instance can override it (`max_attempts` in its table).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt (with ±20 % jitter) up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Time one provider `send` may take before it counts as a transient failure.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// How long a worker holds a claimed delivery. A delivery whose worker died (crash,
    /// kill -9) is claimed again when its lease runs out. Must exceed `send_timeout`.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Longest a worker waits before looking for due deliveries it was not told about
    /// (retries come due; work left by a previous process).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most deliveries one worker claims per query.
    pub claim_batch: usize,
    /// How webhook events are sent (`[dispatch.webhooks]`).
    pub webhooks: WebhookSettings,
}

/// `[dispatch.webhooks]`: sending webhook events (docs/webhooks.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Longest one request may take (connect, send, response head and the capped body).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests in flight per endpoint on this node. An endpoint that is failing gets one
    /// at a time until it answers again.
    pub concurrency: u32,
    /// First retry delay; doubles per attempt (±20 % jitter) up to `retry_max`. A
    /// `Retry-After` answer is honoured up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Attempts per event before it is given up (`failed`; it can be redelivered).
    pub max_attempts: u32,
    /// An endpoint whose every attempt has failed for this long is disabled, with the
    /// reason, until it is enabled again (its events wait).
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
    /// Delivered and failed events (and their attempts) are removed after this.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Longest the worker waits before looking for due events it was not told about
    /// (events of other nodes, retries coming due).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Hosts endpoints may point at (`example.com`, or `*.example.com` for its
    /// subdomains). Empty: any host.
    pub allow_hosts: Vec<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            timeout: Duration::from_secs(10),
            concurrency: 8,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            max_attempts: 30,
            disable_after: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(7 * 24 * 3600),
            poll_interval: Duration::from_secs(1),
            allow_hosts: Vec::new(),
        }
    }
}

/// One `[[webhooks]]` endpoint. It is stored at start (replacing an earlier version of
/// itself) and removed when it leaves the file; the API can only enable or disable it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointSettings {
    /// 1–64 characters of `a-z 0-9 _ -`; the endpoint's id in the API.
    pub id: String,
    /// `http://` or `https://`.
    pub url: String,
    /// Event types (`delivery.failed` …) or `["*"]`.
    pub events: Vec<String>,
    /// `whsec_` followed by base64 of 24–64 random bytes (e.g. `whsec_$(openssl rand -base64 32)`).
    pub secret: Secret,
    #[serde(default)]
    pub description: String,
    /// Only events of these channel instances (delivery and route events).
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    /// Only events of messages of these types.
    #[serde(default)]
    pub types: Option<Vec<i64>>,
    /// Only events of messages from these senders.
    #[serde(default)]
    pub senders: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateSettings {
    /// Directory of `<name>/<family>.<part>.j2` files (relative paths: from the working
    /// directory). Unset: `./templates` when it exists, else no templates. A directory set
    /// explicitly must exist.
    pub dir: Option<PathBuf>,
}

/// `[inbox]`: how long inbox entries are kept (docs/configuration.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxSettings {
    /// Remove entries of messages older than this that are read, archived or deleted by the
    /// user (e.g. `"90d"`). Unset (the default): keep everything.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Remove unread entries that old too (their message is gone from the user's inbox).
    pub retention_unread: bool,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Entries removed per transaction (a run takes batches until one is short).
    pub retention_batch: u32,
}

impl Default for InboxSettings {
    fn default() -> Self {
        InboxSettings {
            retention: None,
            retention_unread: false,
            retention_interval: Duration::from_secs(600),
            retention_batch: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info,herald=debug`. `RUST_LOG` is not read; use `HERALD_LOG__FILTER`.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            database_url: "sqlite://herald.db".into(),
            redis_url: None,
            jwt_secret: None,
            api_key: None,
            data_dir: None,
            node_name: None,
            http: HttpSettings::default(),
            websocket: WsSettings::default(),
            database: DatabaseSettings::default(),
            dispatch: DispatchSettings::default(),
            templates: TemplateSettings::default(),
            inbox: InboxSettings::default(),
            log: LogSettings::default(),
            channels: ChannelTables::default(),
            routing: Default::default(),
            cluster: Default::default(),
            api_key_rate_limit: None,
            api_keys: Vec::new(),
            webhooks: Vec::new(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            body_limit: 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            cors: CorsSettings::default(),
            max_connections: None,
            reserved_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(75),
            first_frame_timeout: Duration::from_secs(10),
            max_frame_size: 64 * 1024,
            queue_capacity: 256,
            write_timeout: Duration::from_secs(10),
            replay_batch: 200,
            read_buffer_size: 512,
            write_buffer_size: 4 * 1024,
            handshake_rate_limit: None,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            max_readers: 4,
            max_batch: 512,
            max_connections: 10,
            max_queued_bytes: 64 << 20,
            max_queue_wait: Duration::from_millis(50),
            max_size: None,
            audience_window: Duration::from_secs(30),
        }
    }
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            status_queue: 16_384,
            status_batch: 2048,
            fanout_backlog: 2,
            max_attempts: 10,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(15 * 60),
            send_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(5),
            claim_batch: 64,
            webhooks: WebhookSettings::default(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: "text".into(),
        }
    }
}

/// Command-line values that override everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub bind: Option<String>,
    pub database_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Load the layered settings. `file` is `--config`; without it `./herald.toml` is read
    /// when present.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("HERALD_"))
            .collect();
        Self::load_from(file, vars, overrides)
    }

    /// [`Settings::load`] with the environment passed in (tests).
    pub fn load_from(
        file: Option<&Path>,
        env: Vec<(String, String)>,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::MissingFile(path.to_owned()));
                }
                builder =
                    builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
            }
            None => {
                builder = builder.add_source(
                    config::File::with_name("herald.toml")
                        .format(config::FileFormat::Toml)
                        .required(false),
                );
            }
        }
        let env_keys: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
        let source = config::Environment::with_prefix("HERALD")
            .prefix_separator("_")
            .separator("__")
            .source(Some(env.into_iter().collect()));
        builder = builder.add_source(source);
        if let Some(bind) = &overrides.bind {
            builder = builder
                .set_override("bind", bind.as_str())
                .map_err(invalid)?;
        }
        if let Some(url) = &overrides.database_url {
            builder = builder
                .set_override("database_url", url.as_str())
                .map_err(invalid)?;
        }
        let cfg = builder.build().map_err(invalid)?;
        let settings: Settings = cfg
            .try_deserialize()
            .map_err(|e| name_the_variable(invalid(e), &env_keys))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Defaults for a server whose files live in `dir` (tests, embedding): SQLite at
    /// `dir/herald.db`, secrets generated in `dir`, an ephemeral port on 127.0.0.1.
    pub fn for_data_dir(dir: &Path) -> Settings {
        Settings {
            bind: "127.0.0.1:0".into(),
            database_url: format!("sqlite://{}", dir.join("herald.db").display()),
            data_dir: Some(dir.to_owned()),
            ..Settings::default()
        }
    }

    /// Fail fast on values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "bind: `{}` is not an address like 127.0.0.1:8080",
                self.bind
            )));
        }
        if !(self.database_url.starts_with("sqlite:") || is_postgres_url(&self.database_url)) {
            return Err(ConfigError::Invalid(
                "database_url: expected sqlite://FILE or postgres://USER@HOST[:PORT]/DB".into(),
            ));
        }
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("unix://")) {
                return Err(ConfigError::Invalid(
                    "redis_url: expected redis://HOST[:PORT][/DB] (cluster mode) or unset (single node)".into(),
                ));
            }
            if self.database_url.starts_with("sqlite:") {
                return Err(ConfigError::Invalid(
                    "redis_url: cluster mode needs a shared database: set database_url to postgres://… (SQLite is one node's file)".into(),
                ));
            }
            self.cluster.validate().map_err(ConfigError::Invalid)?;
        }
        let inbox = &self.inbox;
        if inbox.retention.is_some_and(|r| r.is_zero()) {
            return Err(ConfigError::Invalid(
                "inbox.retention: must be more than 0 (e.g. \"90d\"), or unset to keep everything"
                    .into(),
            ));
        }
        if inbox.retention_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "inbox.retention_interval: must be more than 0".into(),
            ));
        }
        if !(1..=100_000).contains(&inbox.retention_batch) {
            return Err(ConfigError::Invalid(
                "inbox.retention_batch: must be from 1 to 100000".into(),
            ));
        }
        let ws = &self.websocket;
        if ws.queue_capacity == 0 {
            return Err(ConfigError::Invalid(
                "websocket.queue_capacity: must be at least 1".into(),
            ));
        }
        if ws.max_frame_size < 128 {
            return Err(ConfigError::Invalid(
                "websocket.max_frame_size: must be at least 128".into(),
            ));
        }
        if ws.ping_interval.is_zero() || ws.pong_timeout <= ws.ping_interval {
            return Err(ConfigError::Invalid(
                "websocket.pong_timeout: must be longer than websocket.ping_interval (> 0)".into(),
            ));
        }
        if ws.replay_batch == 0 {
            return Err(ConfigError::Invalid(
                "websocket.replay_batch: must be at least 1".into(),
            ));
        }
        if self.http.body_limit < 64 {
            return Err(ConfigError::Invalid(
                "http.body_limit: must be at least 64 bytes".into(),
            ));
        }
        self.validate_connections()?;
        if self.database.max_batch == 0
            || self.database.max_readers == 0
            || self.database.max_connections == 0
        {
            return Err(ConfigError::Invalid(
                "database.max_batch, database.max_readers and database.max_connections: must be at least 1".into(),
            ));
        }
        if self.database.max_queued_bytes < 1 << 20 {
            return Err(ConfigError::Invalid(
                "database.max_queued_bytes: at least 1048576 (1 MiB); one send may hold up to http.body_limit".into(),
            ));
        }
        if self.database.max_queue_wait.is_zero() || self.database.audience_window.is_zero() {
            return Err(ConfigError::Invalid(
                "database.max_queue_wait and database.audience_window: must be longer than 0"
                    .into(),
            ));
        }
        match self.database.max_size_bytes() {
            Err(e) => return Err(ConfigError::Invalid(format!("database.max_size: {e}"))),
            Ok(Some(b)) if b < 1 << 20 => {
                return Err(ConfigError::Invalid(
                    "database.max_size: at least 1 MiB".into(),
                ))
            }
            _ => {}
        }
        if self.database_url.starts_with("sqlite:") && self.sqlite_path().is_none() {
            return Err(ConfigError::Invalid(
                "database_url: SQLite needs a file (sqlite://FILE); an in-memory database would lose every message".into(),
            ));
        }
        if self.dispatch.status_queue == 0 || self.dispatch.status_batch == 0 {
            return Err(ConfigError::Invalid(
                "dispatch.status_queue and dispatch.status_batch: must be at least 1".into(),
            ));
        }
        let d = &self.dispatch;
        if d.max_attempts == 0 || d.claim_batch == 0 {
            return Err(ConfigError::Invalid(
                "dispatch.max_attempts and dispatch.claim_batch: must be at least 1".into(),
            ));
        }
        if d.retry_base.is_zero() || d.retry_max < d.retry_base {
            return Err(ConfigError::Invalid(
                "dispatch.retry_base: must be > 0 and at most dispatch.retry_max".into(),
            ));
        }
        if d.send_timeout.is_zero() || d.lease <= d.send_timeout {
            return Err(ConfigError::Invalid(
                "dispatch.lease: must be longer than dispatch.send_timeout (> 0), or a slow send could be claimed twice".into(),
            ));
        }
        if d.poll_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "dispatch.poll_interval: must be > 0".into(),
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(
                "log.format: expected \"text\" or \"json\"".into(),
            ));
        }
        if self.channels.contains_key("websocket") {
            return Err(ConfigError::Invalid(
                "channels.websocket: the websocket instance always exists and is configured under [websocket]".into(),
            ));
        }
        self.validate_limits()?;
        Ok(())
    }

    /// `http.max_connections`, `reserved_connections`, the HTTP timeouts and
    /// `websocket.first_frame_timeout`. The open-file limit is checked at start
    /// (`server::Limits`), when `max_connections` is derived from it.
    fn validate_connections(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        let timeouts = [
            ("http.header_read_timeout", h.header_read_timeout),
            ("http.keep_alive_timeout", h.keep_alive_timeout),
            ("http.body_read_timeout", h.body_read_timeout),
            (
                "websocket.first_frame_timeout",
                self.websocket.first_frame_timeout,
            ),
        ];
        for (key, t) in timeouts {
            if t.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{key}: must be above zero (e.g. \"10s\")"
                )));
            }
        }
        match h.max_connections {
            Some(0) => Err(ConfigError::Invalid(
                "http.max_connections: must be at least 1 (unset: derived from the open-file limit)".into(),
            )),
            Some(max) if h.reserved_connections >= max => Err(ConfigError::Invalid(format!(
                "http.reserved_connections: {} leaves no connection for WebSocket sessions; it must be below http.max_connections ({max})",
                h.reserved_connections
            ))),
            _ => Ok(()),
        }
    }

    /// The SQLite file path, when the database is SQLite.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.database_url.strip_prefix("sqlite:")?;
        let rest = rest.trim_start_matches("//");
        let path = rest.split('?').next().unwrap_or(rest);
        if path.is_empty() || path == ":memory:" {
            return None;
        }
        Some(PathBuf::from(path))
    }

    /// Where generated secrets are kept: `data_dir`, else the SQLite file's directory, else `.`.
    pub fn secrets_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        match self
            .sqlite_path()
            .and_then(|p| p.parent().map(Path::to_owned))
        {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => PathBuf::from("."),
        }
    }

    pub fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "herald".into());
            // Cluster nodes need distinct names; several may run on one host.
            match (&self.redis_url, self.bind.rsplit_once(':')) {
                (Some(_), Some((_, port))) => format!("{host}:{port}"),
                _ => host,
            }
        })
    }
}

fn invalid(e: config::ConfigError) -> ConfigError {
    ConfigError::Invalid(e.to_string())
}

// ---------------------------------------------------------------------------------------------
// API keys, scopes and limits: `api_key_rate_limit`, `[[api_keys]]`, `[http.cors]`,
// `websocket.handshake_rate_limit`. The limiters themselves are in `crate::limits`.
// ---------------------------------------------------------------------------------------------

/// One extra management API key (`[[api_keys]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// Shown in logs and metrics (`herald_api_rate_limited_total{key}`), never the key:
    /// 1–64 characters of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// The secret sent as `Authorization: Bearer <key>`: at least 16 visible ASCII
    /// characters, no spaces.
    pub key: Secret,
    /// `"send"` (`POST /api/v1/messages`, `POST /message/sendMessage`) and/or `"admin"`
    /// (every management route; includes send).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Sends this key may make, e.g. `"50/s"` or `"600/min"`; absent: no limit.
    #[serde(default)]
    pub rate_limit: Option<String>,
}

/// `[http.cors]`: which browser origins may call Herald from another origin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSettings {
    /// Origins like `https://app.example.com`, or `["*"]` for any. Empty (the default): no
    /// CORS headers at all, so only same-origin pages can call the API.
    pub allowed_origins: Vec<String>,
    /// `false` (default): CORS only on the routes the browser client uses with a user
    /// token (`/api/v1/inbox*`, `/api/v1/me/*`, `/message/collectMessage`, `/herald.js`).
    /// `true`: on every route, the management API (API key) included.
    pub all_routes: bool,
}

/// The name the main `api_key` has in logs and metrics; no `[[api_keys]]` entry may use it.
pub const MAIN_API_KEY_NAME: &str = "api_key";

/// `"0"`, `"off"`, `"none"` and `""` switch an optional rate limit off.
pub fn rate_limit_is_off(s: &str) -> bool {
    matches!(s.trim(), "" | "0" | "off" | "none")
}

/// An unknown setting that came from the environment names its variable: `HERALD_BINDD`
/// says more than ``unknown field `bindd` ``, and the file has no such line to look for.
fn name_the_variable(e: ConfigError, env_keys: &[String]) -> ConfigError {
    let ConfigError::Invalid(message) = &e else {
        return e;
    };
    let Some(field) = message
        .split("unknown field `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
    else {
        return e;
    };
    let from_env = env_keys.iter().find(|k| {
        k.strip_prefix("HERALD_").is_some_and(|rest| {
            rest.to_ascii_lowercase()
                .split("__")
                .any(|part| part == field)
        })
    });
    match from_env {
        Some(var) => ConfigError::Invalid(format!(
            "environment variable {var}: unknown setting `{field}` (settings are HERALD_<KEY>, \
             nested keys joined with `__`, e.g. HERALD_BIND or HERALD_LOG__FILTER; see \
             docs/configuration.md §2) — {message}"
        )),
        None => e,
    }
}

impl Settings {
    /// `[[api_keys]]`, `api_key_rate_limit`, `[http.cors]` and
    /// `websocket.handshake_rate_limit`; every error names the key path.
    pub fn validate_limits(&self) -> Result<(), ConfigError> {
        let bad = |path: String, msg: String| Err(ConfigError::Invalid(format!("{path}: {msg}")));
        let rate = |path: &dyn Fn() -> String, value: &Option<String>| match value {
            Some(r) if !rate_limit_is_off(r) => Rate::parse(r)
                .map(drop)
                .map_err(|m| ConfigError::Invalid(format!("{}: {m} (\"off\": no limit)", path()))),
            _ => Ok(()),
        };
        rate(&|| "api_key_rate_limit".into(), &self.api_key_rate_limit)?;
        rate(
            &|| "websocket.handshake_rate_limit".into(),
            &self.websocket.handshake_rate_limit,
        )?;
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        if let Some(main) = &self.api_key {
            keys.insert(main.expose());
        }
        for (i, k) in self.api_keys.iter().enumerate() {
            let at = |field: &str| format!("api_keys[{i}] (\"{}\").{field}", k.name);
            let name_ok = (1..=64).contains(&k.name.len())
                && k.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !name_ok {
                return bad(
                    format!("api_keys[{i}].name"),
                    format!(
                        "`{}` must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'",
                        k.name.escape_default()
                    ),
                );
            }
            if k.name == MAIN_API_KEY_NAME {
                return bad(
                    at("name"),
                    format!(
                        "`{MAIN_API_KEY_NAME}` is the name of the main api_key; choose another"
                    ),
                );
            }
            if !names.insert(k.name.as_str()) {
                return bad(
                    at("name"),
                    "another [[api_keys]] entry has this name".into(),
                );
            }
            let key = k.key.expose();
            if key.is_empty() {
                return bad(at("key"), "must not be empty".into());
            }
            if key.len() < 16 || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return bad(
                    at("key"),
                    "must be at least 16 visible ASCII characters without spaces (e.g. `openssl rand -base64 32`)".into(),
                );
            }
            if !keys.insert(key) {
                return bad(
                    at("key"),
                    "the same key is configured twice (here and in another [[api_keys]] entry or api_key); every key must be distinct".into(),
                );
            }
            if k.scopes.is_empty() {
                return bad(
                    at("scopes"),
                    "give at least one scope: \"send\" and/or \"admin\"".into(),
                );
            }
            if let Some(s) = k
                .scopes
                .iter()
                .find(|s| !matches!(s.as_str(), "send" | "admin"))
            {
                return bad(
                    at("scopes"),
                    format!(
                        "unknown scope `{}` (expected \"send\" or \"admin\")",
                        s.escape_default()
                    ),
                );
            }
            rate(&|| at("rate_limit"), &k.rate_limit)?;
        }
        let origins = &self.http.cors.allowed_origins;
        for (i, o) in origins.iter().enumerate() {
            if o == "*" {
                if origins.len() > 1 {
                    return bad(
                        format!("http.cors.allowed_origins[{i}]"),
                        "\"*\" allows every origin and must be the only entry".into(),
                    );
                }
            } else if let Err(m) = check_origin(o) {
                return bad(format!("http.cors.allowed_origins[{i}]"), m);
            }
        }
        Ok(())
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, no path, query or trailing slash.
fn check_origin(o: &str) -> Result<(), String> {
    let err = || {
        format!(
            "`{}` is not an origin like https://app.example.com (scheme://host[:port], no path or trailing slash)",
            o.escape_default()
        )
    };
    let (scheme, rest) = o.split_once("://").ok_or_else(err)?;
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let host_ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if scheme_ok && host_ok {
        Ok(())
    } else {
        Err(err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::load_from(None, vec![], &Overrides::default()).unwrap();
        assert_eq!(s.bind, "127.0.0.1:8080");
        assert_eq!(s.database_url, "sqlite://herald.db");
        assert_eq!(s.websocket.ping_interval, Duration::from_secs(30));
        assert_eq!(s.websocket.pong_timeout, Duration::from_secs(75));
        assert_eq!(s.websocket.max_frame_size, 65536);
        assert_eq!(s.http.body_limit, 1 << 20);
        assert_eq!(s.sqlite_path().unwrap(), PathBuf::from("herald.db"));
        assert_eq!(s.secrets_dir(), PathBuf::from("."));
    }

    #[test]
    fn an_unknown_setting_from_the_environment_names_the_variable() {
        for (var, field) in [("HERALD_BINDD", "bindd"), ("HERALD_LOG__FROMAT", "fromat")] {
            let e = Settings::load_from(None, env(&[(var, "x")]), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(var) && e.contains(&format!("`{field}`")), "{e}");
        }
        // From a file there is no variable to name.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(&file, "bindd = \"x\"\n").unwrap();
        let e = Settings::load_from(Some(&file), vec![], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`bindd`") && !e.contains("HERALD_"), "{e}");
    }

    #[test]
    fn layering_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(
            &file,
            "bind = \"127.0.0.1:9000\"\napi_key = \"from-file\"\n[websocket]\nping_interval = \"10s\"\npong_timeout = \"20s\"\n",
        )
        .unwrap();
        let s = Settings::load_from(Some(&file), vec![], &Overrides::default()).unwrap();
        assert_eq!(s.bind, "127.0.0.1:9000");
        assert_eq!(s.api_key.as_ref().unwrap().expose(), "from-file");
        assert_eq!(s.websocket.ping_interval, Duration::from_secs(10));

        let e = env(&[
            ("HERALD_BIND", "127.0.0.1:9001"),
            ("HERALD_API_KEY", "from-env"),
            ("HERALD_WEBSOCKET__PONG_TIMEOUT", "40s"),
            ("HERALD_DATABASE_URL", "sqlite:///tmp/x/h.db"),
        ]);
        let s = Settings::load_from(Some(&file), e.clone(), &Overrides::default()).unwrap();
        assert_eq!(s.bind, "127.0.0.1:9001");
        assert_eq!(s.api_key.as_ref().unwrap().expose(), "from-env");
        assert_eq!(s.websocket.pong_timeout, Duration::from_secs(40));
        assert_eq!(s.sqlite_path().unwrap(), PathBuf::from("/tmp/x/h.db"));
        assert_eq!(s.secrets_dir(), PathBuf::from("/tmp/x"));

        let o = Overrides {
            bind: Some("127.0.0.1:9002".into()),
            database_url: None,
        };
        let s = Settings::load_from(Some(&file), e, &o).unwrap();
        assert_eq!(s.bind, "127.0.0.1:9002");
    }

    #[test]
    fn bad_values_fail_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(&file, "bnd = \"x\"\n").unwrap();
        let err = Settings::load_from(Some(&file), vec![], &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("bnd"), "{err}");

        let err = Settings::load_from(
            None,
            env(&[("HERALD_BIND", "nonsense")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("bind"), "{err}");

        let err = Settings::load_from(
            Some(&dir.path().join("missing.toml")),
            vec![],
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }

    #[test]
    fn the_example_file_loads_and_channel_secrets_come_from_the_environment() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/herald.toml");
        let s = Settings::load_from(Some(&example), vec![], &Overrides::default()).unwrap();
        s.validate().unwrap();
        assert_eq!(s.dispatch.max_attempts, 10);
        assert_eq!(s.dispatch.lease, Duration::from_secs(60));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(
            &file,
            "[channels.mail]\nkind = \"email.smtp\"\nhost = \"smtp.example.com\"\nconcurrency = 4\n",
        )
        .unwrap();
        let env = vec![(
            "HERALD_CHANNELS__MAIL__PASSWORD".to_owned(),
            "s3cret".to_owned(),
        )];
        let s = Settings::load_from(Some(&file), env, &Overrides::default()).unwrap();
        let mail = &s.channels["mail"];
        assert_eq!(mail["password"].as_str(), Some("s3cret"));
        assert_eq!(mail["host"].as_str(), Some("smtp.example.com"));
        assert_eq!(mail["concurrency"].as_integer(), Some(4));
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("email.smtp"), "{debug}");
    }

    #[test]
    fn connection_limits_fail_fast_with_the_key_named() {
        let bad = |tweak: &dyn Fn(&mut Settings), key: &str| {
            let mut s = Settings::default();
            tweak(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        };
        bad(
            &|s| s.http.header_read_timeout = Duration::ZERO,
            "http.header_read_timeout",
        );
        bad(
            &|s| s.http.keep_alive_timeout = Duration::ZERO,
            "http.keep_alive_timeout",
        );
        bad(
            &|s| s.http.body_read_timeout = Duration::ZERO,
            "http.body_read_timeout",
        );
        bad(
            &|s| s.websocket.first_frame_timeout = Duration::ZERO,
            "websocket.first_frame_timeout",
        );
        bad(
            &|s| s.http.max_connections = Some(0),
            "http.max_connections",
        );
        bad(
            &|s| {
                s.http.max_connections = Some(64);
                s.http.reserved_connections = 64;
            },
            "http.reserved_connections",
        );

        let s = Settings::load_from(
            None,
            env(&[
                ("HERALD_HTTP__MAX_CONNECTIONS", "5000"),
                ("HERALD_HTTP__KEEP_ALIVE_TIMEOUT", "2m"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.http.max_connections, Some(5000));
        assert_eq!(s.http.keep_alive_timeout, Duration::from_secs(120));
        let d = Settings::default();
        assert_eq!(d.http.max_connections, None);
        assert_eq!(d.http.reserved_connections, 64);
        assert_eq!(d.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(d.http.keep_alive_timeout, Duration::from_secs(75));
        assert_eq!(d.http.body_read_timeout, Duration::from_secs(30));
        assert_eq!(d.websocket.first_frame_timeout, Duration::from_secs(10));
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let settings = Settings {
            api_key: Some(s),
            ..Settings::default()
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}

// Setting types that other modules give behaviour to (`impl` blocks in `routing.rs`,
// `dispatch/outbox.rs`, `cluster/`): defined here so `config` imports nothing of the crate.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl Rate {
    /// `"10/s"`, `"600/min"`, `"1000/h"`, `"20/1m"` (a humantime period).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (n, per) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected COUNT/PERIOD, e.g. \"10/s\" or \"600/min\""))?;
        let count = n
            .trim()
            .parse::<NonZeroU32>()
            .map_err(|_| format!("`{s}`: the count must be a positive integer"))?;
        let per = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => humantime::parse_duration(other)
                .map_err(|_| format!("`{s}`: unknown period `{other}` (s, min, h, day or 30s…)"))?,
        };
        if per.is_zero() {
            return Err(format!("`{s}`: the period must be > 0"));
        }
        Ok(Rate { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.per))
    }
}

/// `[cluster]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// How often a node renews its liveness key and re-reads which nodes are alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a node stays listed (with its sessions) after its last heartbeat.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// Key prefix, so several Herald clusters can share one Redis.
    pub prefix: String,
    /// Frames waiting to be published to the other nodes; when full, a frame is not sent
    /// live to remote sessions (it stays undelivered and is replayed on reconnect).
    pub publish_queue: usize,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            heartbeat_interval: Duration::from_secs(2),
            node_ttl: Duration::from_secs(10),
            prefix: "herald".into(),
            publish_queue: 65_536,
        }
    }
}

impl ClusterSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err("cluster.heartbeat_interval: at least 100ms".into());
        }
        if self.node_ttl < self.heartbeat_interval * 2 {
            return Err(
                "cluster.node_ttl: must be at least twice cluster.heartbeat_interval".into(),
            );
        }
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return Err("cluster.prefix: a non-empty word".into());
        }
        if self.publish_queue == 0 {
            return Err("cluster.publish_queue: at least 1".into());
        }
        Ok(())
    }
}

/// `postgres://…` or `postgresql://…`.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Every listed channel at once.
    All,
    /// One step after another, until one succeeds.
    Failover,
}

/// A routing policy as written in a send (`routing`) or in `herald.toml`
/// (`[routing.templates.<name>]`, `[routing.types.<n>]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(example = json!({"policy": "failover", "steps": [
    {"channel": "websocket", "wait": "2m"}, {"channel": "wechat"}, {"channel": "sms"}]}))]
pub struct PolicySpec {
    pub policy: PolicyKind,
    /// Channel instances, in order (for `all`, the order does not matter).
    pub steps: Vec<StepSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StepSpec {
    /// A channel instance name.
    pub channel: String,
    /// `failover` only: how long to wait for `delivered`/`read` before the next step
    /// (`"90s"`, `"2m"`, `"1h"`; at most 30 days). Absent: the step succeeds once `sent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
}

/// Default policies (`[routing]` in `herald.toml`). A send's own `routing` or `channels`
/// wins; then its template's policy; then its message type's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// By template name.
    pub templates: BTreeMap<String, PolicySpec>,
    /// By message type (the keys are the type numbers, as strings).
    pub types: BTreeMap<String, PolicySpec>,
}
