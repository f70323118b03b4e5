//! # Herald
//!
//! A self-hosted multi-channel notification server. Backend services call one REST API;
//! the dispatcher stores every message durably and routes it to channel plugins (WebSocket
//! built in). See `ARCHITECTURE.md` for the code map and invariants.
//!
//! [`start`] runs a server in the current Tokio runtime and returns a [`Running`] handle;
//! `main.rs` only parses arguments and calls [`cli::run`].

// Built-in channel crates: referenced so they are linked and register their kinds.
#[cfg(feature = "email")]
extern crate herald_channel_email as _;
#[cfg(feature = "push")]
extern crate herald_channel_push as _;
#[cfg(feature = "sms")]
extern crate herald_channel_sms as _;
#[cfg(feature = "wechat")]
extern crate herald_channel_wechat as _;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_channel::{BuildContext, Services};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod error;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod routing;
pub mod server;
pub mod session;
pub mod sharded;
pub mod state;
pub mod store;
pub mod templates;
pub mod ws;

use auth::{Authenticator, JwtAuthenticator};
use config::{Secret, Settings};
use dispatch::{Dispatcher, Instance};
use metrics::Metrics;
use session::memory::MemoryRegistry;
use session::SessionRegistry;
use state::AppState;
use store::sqlite::SqliteStore;
use store::Store;

/// Why the server could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Secrets(#[from] auth::SecretsError),
    // The fields are not `source`s: the message already says it, and an error chain
    // (`{:#}`) would print it twice.
    #[error("database {url}: {error}")]
    Store {
        url: String,
        error: store::StoreError,
    },
    #[error("cannot create the database directory {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
    #[error(transparent)]
    Channel(#[from] herald_channel::ConfigError),
    #[error(transparent)]
    Template(#[from] templates::TemplateError),
    #[error("templates.dir: {0} does not exist")]
    TemplateDir(std::path::PathBuf),
    #[error("{0}")]
    Routing(String),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("cannot listen on {addr}: {error}{hint}", hint = bind_hint(error))]
    Bind { addr: String, error: std::io::Error },
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another program listens there: stop it, or choose another address with --bind or HERALD_BIND)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " (no interface of this machine has that address; 127.0.0.1 or 0.0.0.0 always work)"
        }
        _ => "",
    }
}

/// A running server.
pub struct Running {
    addr: SocketAddr,
    dispatcher: Dispatcher,
    api_key: Secret,
    jwt_secret: Secret,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn api_key(&self) -> &str {
        self.api_key.expose()
    }

    /// A user token accepted by this server (default authenticator).
    pub fn mint_token(
        &self,
        user: &str,
        name: Option<&str>,
        device: Option<&str>,
        ttl: Duration,
    ) -> String {
        auth::mint_token(
            self.jwt_secret.expose().as_bytes(),
            user,
            name,
            device,
            auth::unix_now() + ttl.as_secs() as i64,
        )
    }

    /// Stop accepting, close sessions with 1001, finish in-flight work, flush, close.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "server task failed");
        }
    }

    /// Ask the outbox workers to look for due work now (tests that move an injected clock).
    pub fn wake_outbox(&self) {
        self.dispatcher.wake_outbox();
        self.dispatcher.wake_scheduler();
    }

    /// Resolves when the server has stopped by itself (it normally doesn't).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Start a server with the default (JWT) authenticator.
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    start_with_options(settings, StartOptions::default()).await
}

/// Start a server; `auth` replaces the default JWT authenticator (a deployment's own
/// account system).
pub async fn start_with(
    settings: Settings,
    auth: Option<Arc<dyn Authenticator>>,
) -> Result<Running, StartError> {
    start_with_options(
        settings,
        StartOptions {
            auth,
            ..StartOptions::default()
        },
    )
    .await
}

/// What an embedding program (or a test) can replace.
#[derive(Default)]
pub struct StartOptions {
    /// Replaces the default JWT authenticator (a deployment's own account system).
    pub auth: Option<Arc<dyn Authenticator>>,
    /// Replaces the system clock of the outbox (due times, backoff) — tests move time.
    pub clock: Option<Arc<dyn clock::Clock>>,
}

/// Load the templates: `templates.dir` when set (it must exist), else `./templates` when
/// it exists, else none.
pub fn load_templates(settings: &Settings) -> Result<templates::Templates, StartError> {
    let dir = match &settings.templates.dir {
        Some(dir) if !dir.is_dir() => return Err(StartError::TemplateDir(dir.clone())),
        Some(dir) => dir.clone(),
        None => std::path::PathBuf::from("templates"),
    };
    if !dir.is_dir() {
        return Ok(templates::Templates::empty());
    }
    Ok(templates::Templates::load(&dir)?)
}

/// Start a server with [`StartOptions`]. A start that fails removes the files it created
/// (a new SQLite database, a new secrets file): left behind, they would make the next start
/// or `herald token` look like a server that ran here.
pub async fn start_with_options(
    settings: Settings,
    options: StartOptions,
) -> Result<Running, StartError> {
    let new_files = NewFiles::before(&settings);
    let result = start_checked(settings, options).await;
    if result.is_err() {
        new_files.remove();
    }
    result
}

/// The files a start may create that do not exist yet.
struct NewFiles(Vec<std::path::PathBuf>);

impl NewFiles {
    fn before(settings: &Settings) -> NewFiles {
        let mut candidates = vec![settings.secrets_dir().join(auth::SECRETS_FILE)];
        if let Some(db) = settings.sqlite_path() {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut name = db.clone().into_os_string();
                name.push(suffix);
                candidates.push(name.into());
            }
        }
        NewFiles(candidates.into_iter().filter(|p| !p.exists()).collect())
    }

    fn remove(self) {
        for path in self.0 {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), "removed: the start failed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot remove"),
            }
        }
    }
}

async fn start_checked(settings: Settings, options: StartOptions) -> Result<Running, StartError> {
    let StartOptions { auth, clock } = options;
    settings.validate()?;
    // The connection cap may come from the open-file limit: resolved (and checked) now.
    let conn_limits = server::Limits::resolve(&settings.http)?;
    let templates = Arc::new(load_templates(&settings)?);
    let secrets = auth::resolve_secrets(&settings)?;
    if let Some(file) = &secrets.file {
        if secrets.generated.is_empty() {
            tracing::info!(file = %file.display(), "using generated secrets");
        } else {
            tracing::warn!(file = %file.display(), generated = ?secrets.generated,
                "no jwt_secret/api_key configured: generated them (mode 0600); read the API key there");
        }
    }

    // Management API keys with scopes and send limits; the per-IP handshake limit.
    let api_keys = auth::ApiKeys::new(&secrets.api_key, &settings)?;
    let ws_handshakes =
        limits::HandshakeLimiter::from_setting(settings.websocket.handshake_rate_limit.as_deref())?;
    for k in api_keys.iter().skip(1) {
        tracing::info!(key = %k.name, scopes = k.scopes.describe(),
            rate_limited = k.send_limit.is_some(), "extra API key");
    }

    let store = open_store(&settings).await?;
    // Sessions a previous run of this node left recorded as open (it was killed).
    if let Err(e) = store
        .presence_close_node(&settings.node(), model::now_ms())
        .await
    {
        tracing::warn!(error = %e, "closing this node's old presence records failed");
    }
    // Cluster mode: sessions, fan-out and shared caches in Redis; else all in memory.
    let cluster_stop = CancellationToken::new();
    #[allow(clippy::type_complexity)]
    let (registry, shared, shared_rate, cluster_tasks): (
        Arc<dyn SessionRegistry>,
        Arc<dyn herald_channel::shared::SharedCache>,
        Option<Arc<dyn dispatch::outbox::SharedRate>>,
        Vec<tokio::task::JoinHandle<()>>,
    ) = match &settings.redis_url {
        None => (
            Arc::new(MemoryRegistry::default()),
            Arc::new(herald_channel::shared::LocalCache::default()),
            None,
            Vec::new(),
        ),
        Some(url) => {
            let node = settings.node();
            let reg =
                cluster::registry::RedisRegistry::connect(url, &node, &settings.cluster).await?;
            let (_, conn) = cluster::connect(url).await?;
            let tasks = reg.spawn(cluster_stop.clone());
            tracing::info!(%node, redis = %cluster::redact(url), "cluster mode");
            (
                reg,
                Arc::new(cluster::cache::RedisCache::new(
                    conn.clone(),
                    &settings.cluster.prefix,
                )),
                Some(Arc::new(cluster::limiter::RedisRate::new(
                    conn,
                    &settings.cluster.prefix,
                ))),
                tasks,
            )
        }
    };
    let mut services = Services::default();
    services.insert(registry.clone());
    // Token caches and refresh locks the channels share (in-process on a single node).
    services.insert(herald_channel::shared::Shared(shared));
    let instances = build_instances(&settings, &services)?;
    let metrics = Arc::new(
        Metrics::with_kinds(
            instances
                .values()
                .map(|i| (i.name.as_str(), i.descriptor.kind)),
        )
        .with_api_keys(
            api_keys
                .iter()
                .filter(|k| k.send_limit.is_some())
                .map(|k| &*k.name),
        ),
    );
    let (dispatcher, status_task) = Dispatcher::new(
        store.clone(),
        instances,
        metrics.clone(),
        settings.dispatch.status_queue,
        settings.dispatch.status_batch,
        clock.unwrap_or_else(|| Arc::new(clock::SystemClock)),
    );
    if registry.is_shared() {
        dispatcher.always_replay();
    }
    if let Some(r) = shared_rate {
        dispatcher.share_rate_limits(r);
    }
    settings
        .routing
        .validate(&|name| match dispatcher.instance(name) {
            Some(_) => Ok(()),
            None => Err(format!("unknown channel instance `{name}`")),
        })
        .map_err(StartError::Routing)?;
    // Outbox rows of instances that are no longer configured wait until one is again.
    if let Ok(counts) = store.outbox_counts().await {
        for (name, c) in counts {
            if dispatcher.instance(&name).is_none() {
                tracing::warn!(channel = %name, pending = c.pending,
                    "deliveries wait for a channel instance that is not configured");
            }
        }
    }
    // `[[webhooks]]`: checked, then made exactly the stored config endpoints.
    let config_hooks = dispatch::webhooks::from_config(
        &settings.webhooks,
        &settings.dispatch.webhooks.allow_hosts,
    )
    .map_err(|m| StartError::Config(config::ConfigError::Invalid(m)))?;
    store
        .webhook_sync_config(config_hooks)
        .await
        .map_err(|source| StartError::Store {
            url: redact_url(&settings.database_url),
            error: source,
        })?;
    let preferences = store
        .any_preferences()
        .await
        .map_err(|source| StartError::Store {
            url: redact_url(&settings.database_url),
            error: source,
        })?;

    dispatcher
        .load_pending(store.as_ref())
        .await
        .map_err(|source| StartError::Store {
            url: redact_url(&settings.database_url),
            error: source,
        })?;
    let auth = auth.unwrap_or_else(|| {
        Arc::new(JwtAuthenticator::new(
            secrets.jwt_secret.expose().as_bytes(),
        ))
    });
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(&settings.bind)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.bind.clone(),
            error: source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: settings.bind.clone(),
        error: source,
    })?;
    let shutdown_timeout = settings.http.shutdown_timeout;
    // Outbox workers stop on their own token, after the HTTP server has stopped accepting.
    let outbox_stop = CancellationToken::new();
    let outbox = dispatcher.start_outbox(&settings.dispatch, &outbox_stop);
    let backlog: Arc<session::Backlog> = Arc::default();
    let planner = dispatch::plan::Planner::new(dispatch::plan::PlannerParts {
        dispatcher: dispatcher.clone(),
        store: store.clone(),
        registry: registry.clone(),
        templates: templates.clone(),
        metrics: metrics.clone(),
        backlog: backlog.clone(),
        routing: settings.routing.clone(),
        audience_window: settings.database.audience_window,
        fanout_backlog: settings.dispatch.fanout_backlog,
        preferences_present: preferences,
    });
    let scheduler_ctx = dispatch::schedule::Scheduler {
        planner: planner.clone(),
        poll: settings.dispatch.poll_interval,
        lease: settings.dispatch.lease,
    };
    let app = AppState::new(state::Inner {
        templates,
        planner,
        node: Arc::from(settings.node()),
        settings,
        store: store.clone(),
        registry,
        dispatcher: dispatcher.clone(),
        auth,
        api_key: secrets.api_key.clone(),
        api_keys,
        ws_handshakes,
        metrics,
        shutdown: shutdown.clone(),
        sessions: TaskTracker::new(),
        backlog,
    });
    let router = api::router(app.clone());
    // Timers (sendAt, expiresAt, failover chains) stop with the outbox workers.
    let scheduler = tokio::spawn(dispatch::schedule::run(scheduler_ctx, outbox_stop.clone()));
    // Inbox retention stops with them too (a batch in flight finishes).
    let retention = tokio::spawn(dispatch::retention::run(
        store.clone(),
        app.settings.inbox.clone(),
        outbox_stop.clone(),
    ));
    // Webhook events: the sender and their retention stop with the outbox workers too.
    let webhook_worker = tokio::spawn(
        dispatch::webhooks::Worker {
            store: store.clone(),
            settings: app.settings.dispatch.webhooks.clone(),
            metrics: app.metrics.clone(),
            signals: dispatcher.webhooks_signals(),
            quiet: Default::default(),
        }
        .run(outbox_stop.clone()),
    );
    let webhook_prune = tokio::spawn(dispatch::webhooks::prune(
        store.clone(),
        app.settings.dispatch.webhooks.clone(),
        outbox_stop.clone(),
    ));
    let wake_handle = dispatcher.clone();
    let heartbeat = tokio::spawn(ws::heartbeat(app.clone()));
    let token = shutdown.clone();
    let http_metrics = app.metrics.clone();
    let task = tokio::spawn(async move {
        // Stops accepting when the token is cancelled; requests in flight finish (bounded
        // by shutdown_timeout).
        server::serve(
            listener,
            router,
            conn_limits,
            http_metrics,
            token,
            shutdown_timeout,
        )
        .await;
        // The heartbeat raised SHUTDOWN on every session: they are closing with 1001.
        let _ = heartbeat.await;
        app.sessions.close();
        if tokio::time::timeout(shutdown_timeout, app.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("some WebSocket sessions did not close in time");
        }
        // Cluster mode: leave (this node's sessions and liveness key are removed).
        cluster_stop.cancel();
        for t in cluster_tasks {
            let _ = t.await;
        }
        // Stop claiming; sends already started finish (bounded by dispatch.send_timeout).
        outbox_stop.cancel();
        for worker in outbox {
            let _ = worker.await;
        }
        let _ = scheduler.await;
        let _ = retention.await;
        let _ = webhook_worker.await;
        let _ = webhook_prune.await;
        // In-flight provider hand-overs and queued status changes.
        if tokio::time::timeout(shutdown_timeout, dispatcher.flush())
            .await
            .is_err()
        {
            tracing::warn!(
                "status changes still queued at shutdown; they will be re-sent (at-least-once)"
            );
        }
        drop(dispatcher);
        drop(app);
        status_task.abort();
        store.close().await;
        tracing::info!("stopped");
    });
    tracing::info!(%addr, "listening");
    Ok(Running {
        addr,
        dispatcher: wake_handle,
        api_key: secrets.api_key,
        jwt_secret: secrets.jwt_secret,
        shutdown,
        task,
    })
}

/// The store for `database_url`'s scheme: `postgres://`/`postgresql://` → `PgStore`,
/// otherwise (`sqlite://`) `SqliteStore`.
async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, StartError> {
    let url = &settings.database_url;
    let failed = |source| StartError::Store {
        url: redact_url(url),
        error: source,
    };
    if store::postgres::is_postgres_url(url) {
        let store = store::postgres::PgStore::open(url, &settings.database)
            .await
            .map_err(failed)?;
        return Ok(Arc::new(store));
    }
    if let Some(path) = settings.sqlite_path() {
        SqliteStore::ensure_parent(&path).map_err(|e| StartError::DataDir(path.clone(), e))?;
    }
    let store = SqliteStore::open(url, &settings.database)
        .await
        .map_err(failed)?;
    Ok(Arc::new(store))
}

/// A database URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Build the WebSocket instance and every `[channels.<name>]` through the registry.
pub fn build_instances(
    settings: &Settings,
    services: &Services,
) -> Result<BTreeMap<String, Instance>, StartError> {
    let mut out = BTreeMap::new();
    let empty = serde_json::Value::Object(Default::default());
    let ws = herald_channel::find(ws::WEBSOCKET).ok_or_else(|| {
        herald_channel::ConfigError::new(ws::WEBSOCKET, "the websocket channel is not registered")
    })?;
    let channel = (ws.build)(BuildContext {
        name: ws::WEBSOCKET,
        config: &empty,
        services,
    })?;
    out.insert(
        ws::WEBSOCKET.to_owned(),
        Instance {
            name: ws::WEBSOCKET.to_owned(),
            descriptor: ws,
            channel,
            enabled: true,
            limits: dispatch::outbox::Limits {
                concurrency: 1,
                rate: None,
                max_attempts: settings.dispatch.max_attempts,
                quota: None,
            },
        },
    );
    for (name, table) in &settings.channels {
        let kind = match table.get("kind") {
            Some(toml::Value::String(k)) => k.clone(),
            Some(_) => {
                return Err(herald_channel::ConfigError::new(name, "kind: must be a string").into())
            }
            None => {
                return Err(herald_channel::ConfigError::new(name, "missing field `kind`").into());
            }
        };
        let Some(descriptor) = herald_channel::find(&kind) else {
            let known: Vec<&str> = herald_channel::descriptors()
                .iter()
                .map(|d| d.kind)
                .collect();
            return Err(herald_channel::ConfigError::new(
                name,
                format!(
                    "kind: unknown channel kind `{kind}` (available: {})",
                    known.join(", ")
                ),
            )
            .into());
        };
        let mut rest = table.clone();
        rest.remove("kind");
        let (enabled, mut limits, quota) = core_keys(name, &mut rest, settings)?;
        let config = serde_json::to_value(rest).map_err(|e| {
            herald_channel::ConfigError::new(name, format!("invalid configuration: {e}"))
        })?;
        let channel = (descriptor.build)(BuildContext {
            name,
            config: &config,
            services,
        })?;
        // The kind's documented limits apply unless the instance sets its own.
        let defaults = channel.defaults();
        if limits.rate.is_none() {
            limits.rate = defaults.rate_limit.and_then(|(count, per)| {
                Some(dispatch::outbox::Rate {
                    count: std::num::NonZeroU32::new(count)?,
                    per,
                })
                .filter(|r| !r.per.is_zero())
            });
        }
        // Without `quota_reset`, the vendor's day (local midnight in its UTC offset).
        let reset_ms = quota.reset_ms.unwrap_or_else(|| {
            defaults
                .quota_reset_utc_offset_minutes
                .map_or(0, |m| (-i64::from(m) * 60_000).rem_euclid(86_400_000))
        });
        limits.quota = quota
            .limit
            .or(defaults.daily_quota)
            .filter(|n| *n > 0)
            .map(|limit| dispatch::outbox::DailyQuota { limit, reset_ms });
        out.insert(
            name.clone(),
            Instance {
                name: name.clone(),
                descriptor,
                channel,
                enabled,
                limits,
            },
        );
    }
    Ok(out)
}

/// `daily_quota` (absent: the kind's default; 0: none) and `quota_reset` of an instance.
#[derive(Clone, Copy)]
struct QuotaKeys {
    limit: Option<u64>,
    /// `quota_reset`, when given.
    reset_ms: Option<i64>,
}

/// The keys of `[channels.<name>]` that belong to the core, not to the channel: `enabled`,
/// `concurrency`, `rate_limit`, `max_attempts`, `daily_quota`, `quota_reset`. Removed from
/// the table the builder sees.
fn core_keys(
    name: &str,
    table: &mut toml::Table,
    settings: &Settings,
) -> Result<(bool, dispatch::outbox::Limits, QuotaKeys), StartError> {
    let err = |key: &str, msg: &str| {
        StartError::from(herald_channel::ConfigError::new(
            name,
            format!("{key}: {msg}"),
        ))
    };
    let enabled = match table.remove("enabled") {
        None => true,
        Some(toml::Value::Boolean(b)) => b,
        Some(_) => return Err(err("enabled", "must be true or false")),
    };
    let concurrency = match table.remove("concurrency") {
        None => 8,
        Some(toml::Value::Integer(n)) if (1..=10_000).contains(&n) => n as usize,
        Some(_) => return Err(err("concurrency", "must be an integer from 1 to 10000")),
    };
    let rate = match table.remove("rate_limit") {
        None => None,
        Some(toml::Value::String(s)) => {
            Some(dispatch::outbox::Rate::parse(&s).map_err(|m| err("rate_limit", &m))?)
        }
        Some(_) => {
            return Err(err(
                "rate_limit",
                "must be a string like \"10/s\" or \"600/min\"",
            ))
        }
    };
    let max_attempts = match table.remove("max_attempts") {
        None => settings.dispatch.max_attempts,
        Some(toml::Value::Integer(n)) if (1..=1000).contains(&n) => n as u32,
        Some(_) => return Err(err("max_attempts", "must be an integer from 1 to 1000")),
    };
    let reset_ms = match table.remove("quota_reset") {
        None => None,
        Some(toml::Value::String(s)) => Some(
            dispatch::outbox::DailyQuota::parse_reset(&s).map_err(|m| err("quota_reset", &m))?,
        ),
        Some(_) => return Err(err("quota_reset", "must be a string like \"00:00+08:00\"")),
    };
    let limit = match table.remove("daily_quota") {
        None => None,
        Some(toml::Value::Integer(n)) if n >= 0 => Some(n as u64),
        Some(_) => {
            return Err(err(
                "daily_quota",
                "must be a non-negative integer (0: no quota)",
            ))
        }
    };
    Ok((
        enabled,
        dispatch::outbox::Limits {
            concurrency,
            rate,
            max_attempts,
            quota: None,
        },
        QuotaKeys { limit, reset_ms },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_database_passwords() {
        assert_eq!(
            redact_url("postgres://herald:s3cret@db:5432/herald"),
            "postgres://herald:***@db:5432/herald"
        );
        assert_eq!(redact_url("sqlite://herald.db"), "sqlite://herald.db");
    }

    #[test]
    fn websocket_is_registered_through_the_descriptor() {
        let kinds: Vec<&str> = herald_channel::descriptors()
            .iter()
            .map(|d| d.kind)
            .collect();
        assert!(kinds.contains(&"websocket"), "{kinds:?}");
        #[cfg(feature = "email")]
        assert!(kinds.contains(&"email.smtp"), "{kinds:?}");
        #[cfg(feature = "push")]
        for k in ["push.fcm", "push.apns", "push.webpush"] {
            assert!(kinds.contains(&k), "{kinds:?}");
        }
        #[cfg(feature = "sms")]
        for k in ["sms.aliyun", "sms.tencent", "sms.twilio"] {
            assert!(kinds.contains(&k), "{kinds:?}");
        }
        #[cfg(feature = "wechat")]
        for k in ["wechat.template", "wechat.robot"] {
            assert!(kinds.contains(&k), "{kinds:?}");
        }
        assert!(herald_channel::find("websocket").unwrap().presence);
    }

    #[test]
    fn unknown_kind_and_missing_kind_fail_with_the_key() {
        let mut settings = Settings::default();
        let services = Services::default();
        let mut t = toml::Table::new();
        t.insert("kind".into(), toml::Value::String("carrier.pigeon".into()));
        settings.channels.insert("birds".into(), t);
        let mut services_ws = services.clone();
        let registry: Arc<dyn SessionRegistry> = Arc::new(MemoryRegistry::default());
        services_ws.insert(registry);
        let err = build_instances(&settings, &services_ws)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("channels.birds") && err.contains("carrier.pigeon"),
            "{err}"
        );

        settings.channels.insert("birds".into(), toml::Table::new());
        let err = build_instances(&settings, &services_ws)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("channels.birds") && err.contains("kind"),
            "{err}"
        );
    }
}
