//! Typed settings: built-in defaults < `herald.toml` (or `--config`) < `HERALD_…` environment
//! (`__` nests) < command-line flags. Nothing else in Herald reads the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// Cluster mode (not yet implemented; must be absent).
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
    pub log: LogSettings,
    /// Channel instances by name: `[channels.<name>] kind = "…"`.
    pub channels: ChannelTables,
    /// Default routing policies per template and message type (`[routing.…]`).
    pub routing: crate::routing::RoutingSettings,
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
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateSettings {
    /// Directory of `<name>/<family>.<part>.j2` files (relative paths: from the working
    /// directory). Unset: `./templates` when it exists, else no templates. A directory set
    /// explicitly must exist.
    pub dir: Option<PathBuf>,
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
            log: LogSettings::default(),
            channels: ChannelTables::default(),
            routing: Default::default(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            body_limit: 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(75),
            max_frame_size: 64 * 1024,
            queue_capacity: 256,
            write_timeout: Duration::from_secs(10),
            replay_batch: 200,
            read_buffer_size: 512,
            write_buffer_size: 4 * 1024,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            max_readers: 4,
            max_batch: 512,
        }
    }
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            status_queue: 65_536,
            status_batch: 2048,
            max_attempts: 10,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(15 * 60),
            send_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(5),
            claim_batch: 64,
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
        let settings: Settings = cfg.try_deserialize().map_err(invalid)?;
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
        if !(self.database_url.starts_with("sqlite:") || self.database_url.starts_with("postgres"))
        {
            return Err(ConfigError::Invalid(
                "database_url: expected sqlite://FILE (postgres:// comes with cluster mode)".into(),
            ));
        }
        if self.database_url.starts_with("postgres") {
            return Err(ConfigError::Invalid(
                "database_url: the PostgreSQL store is not available in this build yet; use sqlite://FILE".into(),
            ));
        }
        if self.redis_url.is_some() {
            return Err(ConfigError::Invalid(
                "redis_url: cluster mode is not available in this build yet; remove it to run a single node".into(),
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
        if self.database.max_batch == 0 || self.database.max_readers == 0 {
            return Err(ConfigError::Invalid(
                "database.max_batch and database.max_readers: must be at least 1".into(),
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
        Ok(())
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
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "herald".into())
        })
    }
}

fn invalid(e: config::ConfigError) -> ConfigError {
    ConfigError::Invalid(e.to_string())
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
