//! The HTTP server: Herald's own accept loop over hyper, so that connections have limits.
//!
//! * [`serve`] accepts connections until the shutdown token is cancelled. Each accepted
//!   socket takes a slot in the connection [`table::Table`] (the cap, the session share,
//!   the waits for a request head) and is served by hyper (HTTP/1.1, upgrades for
//!   WebSockets) in a task of its own; hyper-util's `GracefulShutdown` drains them.
//! * Accept errors (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) are counted
//!   (`herald_accept_errors_total`) and logged at most once per 10 s; the loop then frees a
//!   descriptor by evicting the connection that has waited longest for a request head, or
//!   backs off (10 ms doubling to 1 s) when there is none. It never spins.
//! * `ConnService` is each connection's hyper service: it inserts
//!   `ConnectInfo<SocketAddr>` (what `axum::serve` did), puts request bodies under
//!   `http.body_read_timeout`, keeps sessions (WebSocket upgrades and `GET /events`
//!   streams) to their share and tells the table when the connection stops or starts
//!   waiting for a request head.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::{ConfigError, HttpSettings};
use crate::error::ApiError;
use crate::metrics::Metrics;

pub mod body;
pub mod table;

use table::{Admission, Conn, Table, TableLimits, TrackedIo};

/// Descriptors kept for everything but client connections when `http.max_connections` is
/// derived from the open-file limit: `min(256, limit / 2)` (SQLite files, the outbound
/// HTTP/SMTP/Redis/PostgreSQL pools, the listener, the runtime).
const FD_HEADROOM: u64 = 256;

/// `http.max_connections` when it is unset and the open-file limit is unknown.
const FALLBACK_MAX_CONNECTIONS: usize = 10_000;

/// Back-off after an accept error when nothing could be evicted.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long the accept loop waits for an evicted connection's descriptor to be freed (its
/// task only has to run once; this bound is never reached unless the runtime is stuck).
const RELEASE_WAIT: Duration = Duration::from_millis(100);

/// At most one accept-error log line per this period.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The connection limits in effect: `[http]` with `max_connections` resolved.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub table: TableLimits,
    pub body_read_timeout: Duration,
    /// The soft open-file limit at start, when known.
    pub open_files: Option<u64>,
}

impl Limits {
    /// Resolve `http.max_connections` (unset: from the open-file limit, which `herald
    /// serve` has raised to its hard limit) and check the reserve against it.
    pub fn resolve(http: &HttpSettings) -> Result<Limits, ConfigError> {
        Self::resolve_with(http, open_file_limit())
    }

    /// [`Limits::resolve`] with the open-file limit given.
    fn resolve_with(http: &HttpSettings, open_files: Option<u64>) -> Result<Limits, ConfigError> {
        let derived =
            open_files.map(|n| usize::try_from(n - (n / 2).min(FD_HEADROOM)).unwrap_or(usize::MAX));
        let max = http
            .max_connections
            .or(derived)
            .unwrap_or(FALLBACK_MAX_CONNECTIONS);
        if http.reserved_connections >= max {
            return Err(ConfigError::Invalid(format!(
                "http.reserved_connections: {} leaves no connection for WebSocket sessions: http.max_connections is {max}{}",
                http.reserved_connections,
                match (http.max_connections, open_files) {
                    (None, Some(n)) => format!(" (derived from the open-file limit {n}; raise it with `ulimit -n` or set http.max_connections)"),
                    _ => String::new(),
                }
            )));
        }
        if let (Some(max), Some(derived), Some(n)) = (http.max_connections, derived, open_files) {
            if max > derived {
                tracing::warn!(max_connections = max, open_file_limit = n,
                    "http.max_connections is more than the open-file limit leaves for connections ({derived}); when descriptors run out, connections waiting for a request head are evicted");
            }
        }
        Ok(Limits {
            table: TableLimits {
                max,
                sessions: max - http.reserved_connections,
                header_read_timeout: http.header_read_timeout,
                keep_alive_timeout: http.keep_alive_timeout,
            },
            body_read_timeout: http.body_read_timeout,
            open_files,
        })
    }
}

#[cfg(unix)]
fn open_file_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

/// Accept and serve connections on `listener` until `shutdown` is cancelled, then let the
/// requests in flight finish (bounded by `shutdown_timeout`; idle connections close at
/// once). Upgraded connections (WebSocket sessions) are not waited for here: they close
/// with `1001` through the session heartbeat.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
) {
    let table = Table::new(limits.table, metrics.clone());
    tracing::info!(
        max_connections = limits.table.max,
        websocket_sessions = limits.table.sessions,
        open_file_limit = limits.open_files,
        "connection limits"
    );
    let reaper_stop = CancellationToken::new();
    let reaper = tokio::spawn(table.clone().run_reaper(reaper_stop.clone()));
    let shared = Arc::new(Shared {
        router,
        table,
        body_read_timeout: limits.body_read_timeout,
        metrics,
    });
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only, as before. hyper's own `header_read_timeout` stays off (no timer is
    // set): in hyper 1.12 it is one value for two different waits — it is armed for the
    // first head and again whenever a keep-alive connection goes idle (`State::idle` sets
    // `notify_read`, and `poll_read_head` arms the timer) — so it cannot give a short head
    // timeout and a longer keep-alive one. The table's reaper enforces both, and needs no
    // timer per connection.
    let builder = auto::Builder::new(TokioExecutor::new()).http1_only();

    accept_loop(&listener, &shared, &builder, &graceful, &shutdown).await;
    drop(listener);

    if tokio::time::timeout(shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP requests were still running at shutdown");
    }
    reaper_stop.cancel();
    let _ = reaper.await;
}

async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    shutdown: &CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut log = AcceptErrorLog::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let e = match accepted {
            Ok((tcp, remote)) => {
                backoff = BACKOFF_MIN;
                match admit(&shared.table).await {
                    Some(conn) => spawn_connection(tcp, remote, conn, shared, builder, graceful),
                    // Every slot is busy and none can be evicted: closed at once.
                    None => drop(tcp),
                }
                continue;
            }
            // The client's doing (reset before we took it): nothing to back off from.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => e,
        };
        shared.metrics.conns.accept_errors.fetch_add(1, Relaxed);
        log.record(&e);
        if is_out_of_resources(&e) && free_a_descriptor(&shared.table).await {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A slot for a new connection: at the cap, wait (briefly) for the connection evicted to
/// make room to close its socket. `None`: close the new one at once.
async fn admit(table: &Table) -> Option<Arc<Conn>> {
    loop {
        let released = table.released();
        tokio::pin!(released);
        released.as_mut().enable();
        match table.admit() {
            Admission::Admitted(conn) => return Some(conn),
            Admission::Refused => return None,
            Admission::Wait => {
                if tokio::time::timeout(RELEASE_WAIT, released).await.is_err() {
                    table.refused();
                    return None;
                }
            }
        }
    }
}

/// Evict the connection that has waited longest for a request head and wait (briefly) for
/// its descriptor to be closed. False when no connection was waiting.
async fn free_a_descriptor(table: &Table) -> bool {
    let released = table.released();
    tokio::pin!(released);
    released.as_mut().enable();
    if !table.evict_one() {
        return false;
    }
    let _ = tokio::time::timeout(RELEASE_WAIT, released).await;
    true
}

fn spawn_connection(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    conn: Arc<Conn>,
    shared: &Arc<Shared>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
) {
    let io = TokioIo::new(TrackedIo::new(tcp, conn.clone(), shared.table.clone()));
    let service = ConnService {
        shared: shared.clone(),
        conn,
        remote,
    };
    let connection = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::trace!(error = %e, "connection ended with an error");
        }
    });
}

/// Reset or aborted by the client before it was accepted.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Out of descriptors or socket memory: closing a connection helps.
fn is_out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Logs accept errors at most once per [`ACCEPT_LOG_EVERY`], with how many there were.
#[derive(Default)]
struct AcceptErrorLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrorLog {
    fn record(&mut self, e: &std::io::Error) {
        self.unlogged += 1;
        if self.last.is_some_and(|t| t.elapsed() < ACCEPT_LOG_EVERY) {
            return;
        }
        tracing::warn!(error = %e, errors = self.unlogged,
            "accept failed; evicting a waiting connection or backing off (logged at most every 10 s; see herald_accept_errors_total)");
        self.last = Some(Instant::now());
        self.unlogged = 0;
    }
}

/// What every connection's service shares.
struct Shared {
    router: Router,
    table: Arc<Table>,
    body_read_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// One connection's hyper service (see the module documentation).
#[derive(Clone)]
struct ConnService {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    remote: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.shared.table.request_started(&self.conn);
        let timeout = self.shared.body_read_timeout;
        let conn = self.conn.clone();
        let mut req = req.map(|b| {
            if hyper::body::Body::is_end_stream(&b) {
                Body::new(b)
            } else {
                Body::new(body::DeadlineBody::new(b, timeout, conn.clone()))
            }
        });
        req.extensions_mut().insert(ConnectInfo(self.remote));
        let shared = self.shared.clone();
        Box::pin(async move { Ok(shared.respond(req, conn).await) })
    }
}

impl Shared {
    async fn respond(&self, req: Request<Body>, conn: Arc<Conn>) -> Response<Body> {
        let session = session_kind(&req);
        if session.is_some() && !self.table.try_open_session() {
            let mut resp = ApiError::unavailable(
                "too many sessions on this server; the remaining connections are reserved (http.reserved_connections); retry later",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return self.finish(resp, conn);
        }
        let mut resp = match self.router.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        match session {
            Some(SessionKind::WebSocket) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                // The socket now belongs to the session; it keeps the slot until it closes.
                conn.set_upgraded();
                return resp;
            }
            Some(SessionKind::Events) if resp.status() == StatusCode::OK => {
                // The response streams for as long as the session lives, and the
                // connection is a session's from now on: never evicted, never waiting for
                // a head, its slot (and its place in the session share) given back when
                // the socket closes — which `Connection: close` makes happen right after
                // the stream ends.
                conn.set_upgraded();
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return resp;
            }
            Some(_) => self.table.session_not_opened(),
            None => {}
        }
        if conn.take_body_timed_out() {
            self.metrics.conns.timeouts[crate::metrics::TIMEOUT_BODY].fetch_add(1, Relaxed);
            let mut resp = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within http.body_read_timeout ({})",
                    humantime::format_duration(self.body_read_timeout)
                ),
            )
            .into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return self.finish(resp, conn);
        }
        self.finish(resp, conn)
    }

    fn finish(&self, resp: Response<Body>, conn: Arc<Conn>) -> Response<Body> {
        let table = self.table.clone();
        resp.map(|b| body::Finished::wrap(b, conn, table))
    }
}

/// The sessions a request may open; each takes a place in the session share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionKind {
    /// A WebSocket upgrade (any route: a `101` is a session).
    WebSocket,
    /// `GET /events`: a Server-Sent Events stream (a `200` is a session).
    Events,
}

/// What session `req` asks for, if any.
fn session_kind<B>(req: &Request<B>) -> Option<SessionKind> {
    if req.method() == axum::http::Method::GET && req.uri().path() == "/events" {
        Some(SessionKind::Events)
    } else if wants_websocket(req) {
        Some(SessionKind::WebSocket)
    } else {
        None
    }
}

/// A WebSocket upgrade request (`Upgrade: websocket`).
fn wants_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_comes_from_the_open_file_limit_when_unset() {
        let http = HttpSettings::default();
        let at = |n| Limits::resolve_with(&http, Some(n)).map(|l| l.table);
        let l = at(256).unwrap();
        assert_eq!((l.max, l.sessions), (128, 64));
        let l = at(20_000).unwrap();
        assert_eq!((l.max, l.sessions), (19_744, 19_680));
        let l = Limits::resolve_with(&http, None).unwrap().table;
        assert_eq!(l.max, FALLBACK_MAX_CONNECTIONS);
        // Too few descriptors for the reserve: a clear error naming the limit.
        let err = at(100).unwrap_err().to_string();
        assert!(
            err.contains("http.reserved_connections")
                && err.contains("100")
                && err.contains("ulimit"),
            "{err}"
        );
    }

    #[test]
    fn a_configured_cap_wins_over_the_open_file_limit() {
        let http = HttpSettings {
            max_connections: Some(1000),
            reserved_connections: 10,
            ..HttpSettings::default()
        };
        let l = Limits::resolve_with(&http, Some(256)).unwrap().table;
        assert_eq!((l.max, l.sessions), (1000, 990));
    }

    #[test]
    fn only_websocket_upgrades_count_as_sessions() {
        let req = |v: &str| {
            Request::builder()
                .header(header::UPGRADE, v)
                .body(())
                .unwrap()
        };
        assert!(wants_websocket(&req("websocket")));
        assert!(wants_websocket(&req("WebSocket")));
        assert!(wants_websocket(&req("h2c, websocket")));
        assert!(!wants_websocket(&req("h2c")));
        assert!(!wants_websocket(&Request::new(())));
    }

    #[test]
    fn event_streams_count_as_sessions_too() {
        let req =
            |method: &str, uri: &str| Request::builder().method(method).uri(uri).body(()).unwrap();
        for uri in ["/events", "/events?token=t&lastEventId=4"] {
            assert_eq!(session_kind(&req("GET", uri)), Some(SessionKind::Events));
        }
        // A preflight, HEAD and other paths open no session.
        for (m, uri) in [
            ("OPTIONS", "/events"),
            ("HEAD", "/events"),
            ("GET", "/events/"),
            ("GET", "/api/v1/inbox"),
        ] {
            assert_eq!(session_kind(&req(m, uri)), None, "{m} {uri}");
        }
        let ws = Request::builder()
            .uri("/websocket/t")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert_eq!(session_kind(&ws), Some(SessionKind::WebSocket));
    }
}
