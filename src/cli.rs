//! The `herald` command line: `serve | token | send | health | migrate`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::config::{Overrides, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Self-hosted multi-channel notification server"
)]
pub struct Cli {
    /// Configuration file (default: ./herald.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        /// Listen address (HERALD_BIND).
        #[arg(long, value_name = "ADDR")]
        bind: Option<String>,
        /// sqlite://FILE or postgres://… (HERALD_DATABASE_URL).
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Print a user token accepted by a server with the same configuration.
    #[command(after_help = "Examples:
  herald token --user 42 --name alice --ttl 7d     # in the server's directory
  herald token --user 42 --config /etc/herald/herald.toml")]
    Token {
        /// User id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Login name (`name` claim).
        #[arg(long)]
        name: Option<String>,
        /// Device name (`device` claim).
        #[arg(long)]
        device: Option<String>,
        /// Lifetime, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Generate herald-secrets.toml here if it does not exist (for a server that will
        /// start in this directory). Without it, missing secrets are an error.
        #[arg(long)]
        generate: bool,
    },
    /// Send a message through a running server's API (prints the answer: id, deliveries).
    #[command(after_help = "Examples:
  herald send --to 42 --title 'Report ready' --content 'Your report #7 is ready'
  herald send --to 42,43 --channel email,sms --template report_ready --data '{\"reportId\":7}'
  herald send --broadcast --title Maintenance --content 'Back at 22:00'
  herald send --to 42 --title t --content c --idempotency-key order-7   # sent once, however often it runs")]
    Send {
        /// Receivers: user ids separated by commas.
        #[arg(
            long,
            value_delimiter = ',',
            value_name = "ID[,ID…]",
            required_unless_present = "broadcast",
            conflicts_with = "broadcast"
        )]
        to: Vec<String>,
        /// Send to every user online now (a broadcast) instead of --to.
        #[arg(long)]
        broadcast: bool,
        /// Title (optional with --template: the template's rendering is used).
        #[arg(long, required_unless_present = "template")]
        title: Option<String>,
        /// Content (optional with --template).
        #[arg(long, required_unless_present = "template")]
        content: Option<String>,
        /// Template name (templates/<name>/<channel>.<part>.j2).
        #[arg(long, value_name = "NAME")]
        template: Option<String>,
        /// The template's data, a JSON object.
        #[arg(long, value_name = "JSON", requires = "template", value_parser = json_object)]
        data: Option<serde_json::Value>,
        /// Message type (an integer your services agree on).
        #[arg(long = "type", default_value_t = 0)]
        msg_type: i64,
        /// Channel instance (repeat or separate with commas; default websocket).
        #[arg(long = "channel", value_delimiter = ',', value_name = "NAME")]
        channels: Vec<String>,
        /// Idempotency-Key: the same key and body again return the same id and send nothing
        /// twice (kept 24 h).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// Server base URL (default: http://<bind>).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
    /// Connect to a running server as a user and print every frame as a JSON line (no
    /// WebSocket client needed); each message is acked, so its delivery becomes `delivered`.
    #[command(after_help = "Examples:
  herald listen --user 42                 # until Ctrl-C
  herald listen --user 42 --count 1       # exit after the first message
  herald listen --user 42 --no-ack        # leave messages unacknowledged (replayed later)")]
    Listen {
        /// User id to connect as (a token is minted with the server's secret).
        #[arg(long)]
        user: String,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        /// Do not acknowledge messages.
        #[arg(long)]
        no_ack: bool,
        /// Server base URL (default: http://<bind>).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
    /// Check a running server: exit 0 when GET /readyz (or --path) answers 200 within 5 s.
    /// For container HEALTHCHECKs and scripts that have no curl.
    Health {
        /// Server base URL (default: http://<bind>).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// The path to check: /readyz (can it store?) or /healthz (is it up?).
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate {
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
}

/// The whole `herald` program: parse the process arguments, run the command, map the outcome
/// to an exit code. A binary that links extra channel crates needs nothing else:
///
/// ```no_run
/// // extern crate my_channel as _;   // registers its kinds
/// fn main() -> std::process::ExitCode {
///     herald::cli::run()
/// }
/// ```
pub fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the Tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Run one parsed command.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Serve { bind, database_url } => {
            let settings = Settings::load(config, &Overrides { bind, database_url })?;
            init_tracing(&settings);
            raise_nofile_limit();
            let running = crate::start(settings).await?;
            wait_for_signal().await;
            tracing::info!("shutting down");
            running.shutdown().await;
            Ok(())
        }
        Command::Token {
            user,
            name,
            device,
            ttl,
            generate,
        } => {
            let settings = Settings::load(config, &Overrides::default())?;
            let secrets = if generate {
                crate::auth::resolve_secrets(&settings)?
            } else {
                crate::auth::existing_secrets(&settings)?
            };
            if let Some(file) = secrets
                .file
                .as_ref()
                .filter(|_| !secrets.generated.is_empty())
            {
                eprintln!("generated secrets in {}", file.display());
            }
            let exp = crate::auth::unix_now() + ttl.as_secs() as i64;
            let token = crate::auth::mint_token(
                secrets.jwt_secret.expose().as_bytes(),
                &user,
                name.as_deref(),
                device.as_deref(),
                exp,
            );
            println!("{token}");
            Ok(())
        }
        Command::Send {
            to,
            broadcast,
            title,
            content,
            template,
            data,
            msg_type,
            channels,
            idempotency_key,
            server,
        } => {
            let settings = Settings::load(config, &Overrides::default())?;
            let secrets = crate::auth::existing_secrets(&settings)?;
            let base = server.unwrap_or_else(|| format!("http://{}", client_addr(&settings.bind)));
            let mut body = serde_json::json!({ "type": msg_type });
            let fields = [
                ("title", title.map(serde_json::Value::from)),
                ("content", content.map(serde_json::Value::from)),
                ("template", template.map(serde_json::Value::from)),
                ("data", data),
                ("receivers", (!broadcast).then(|| serde_json::json!(to))),
                (
                    "channels",
                    (!channels.is_empty()).then(|| serde_json::json!(channels)),
                ),
            ];
            for (key, value) in fields {
                if let Some(v) = value {
                    body[key] = v;
                }
            }
            let mut request = reqwest::Client::new()
                .post(format!("{}/api/v1/messages", base.trim_end_matches('/')))
                .bearer_auth(secrets.api_key.expose())
                .json(&body)
                .timeout(Duration::from_secs(30));
            if let Some(key) = &idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            let resp = request.send().await.with_context(|| {
                format!("cannot reach the server at {base} (is `herald serve` running?)")
            })?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("server answered {status}: {text}");
            }
            println!("{text}");
            Ok(())
        }
        Command::Listen {
            user,
            count,
            no_ack,
            server,
        } => {
            let settings = Settings::load(config, &Overrides::default())?;
            let secrets = crate::auth::existing_secrets(&settings)?;
            let base = server.unwrap_or_else(|| format!("http://{}", client_addr(&settings.bind)));
            listen(&base, &secrets, &user, count, !no_ack).await
        }
        Command::Health { server, path } => {
            let settings = Settings::load(config, &Overrides::default())?;
            let base = server.unwrap_or_else(|| format!("http://{}", client_addr(&settings.bind)));
            let url = format!("{}{path}", base.trim_end_matches('/'));
            let resp = reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("{url} answered {status}: {text}");
            }
            println!("{text}");
            Ok(())
        }
        Command::Migrate { database_url } => {
            let settings = Settings::load(
                config,
                &Overrides {
                    bind: None,
                    database_url,
                },
            )?;
            if let Some(path) = settings.sqlite_path() {
                crate::store::sqlite::SqliteStore::ensure_parent(&path)?;
            }
            crate::store::migrate_only(&settings.database_url).await?;
            println!(
                "migrations applied to {}",
                crate::redact_url(&settings.database_url)
            );
            Ok(())
        }
    }
}

/// `herald listen`: one session, frames printed as they come, messages acked.
async fn listen(
    base: &str,
    secrets: &crate::auth::ResolvedSecrets,
    user: &str,
    count: Option<usize>,
    ack: bool,
) -> anyhow::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let ws_base = match base.split_once("://") {
        Some(("https", rest)) => bail!(
            "https://{rest}: `herald listen` speaks plain ws:// only; use the server's own address"
        ),
        Some((_, rest)) => format!("ws://{}", rest.trim_end_matches('/')),
        None => format!("ws://{}", base.trim_end_matches('/')),
    };
    let exp = crate::auth::unix_now() + 86_400;
    let token = crate::auth::mint_token(
        secrets.jwt_secret.expose().as_bytes(),
        user,
        None,
        Some("herald listen"),
        exp,
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_base}/websocket/{token}"))
        .await
        .with_context(|| format!("cannot connect to {ws_base} (is `herald serve` running?)"))?;
    let mut seen = 0usize;
    loop {
        let frame = tokio::select! {
            f = ws.next() => f,
            _ = tokio::signal::ctrl_c() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                let why = c.map(|c| format!("{} {}", u16::from(c.code), c.reason));
                bail!("the server closed the session: {}", why.unwrap_or_default());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("connection lost: {e}"),
            None => bail!("connection closed"),
        };
        println!("{text}");
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if frame["type"] != "message" {
            continue;
        }
        if ack {
            if let Some(id) = frame["id"].as_str() {
                let ack = serde_json::json!({"type": "ack", "id": id}).to_string();
                ws.send(Message::text(ack)).await.context("ack")?;
            }
        }
        seen += 1;
        if count.is_some_and(|n| seen >= n) {
            // The ack is written before the close frame: it is applied before we leave.
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
            return Ok(());
        }
    }
}

/// `--data`: a JSON object.
fn json_object(s: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err("expected a JSON object, e.g. '{\"reportId\":7}'".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Where a client on this machine reaches a server bound to `bind`.
fn client_addr(bind: &str) -> String {
    match bind.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        _ => bind.to_owned(),
    }
}

fn init_tracing(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `json`: one object per line (`timestamp`, `level`, `target`, the event's fields at the
    // top level, `span`/`spans`), what Loki/ELK/Vector ingest without parsing rules.
    let _ = if settings.log.format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// Many idle sockets need many file descriptors: raise the soft limit to the hard one.
fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
