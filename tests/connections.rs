//! Connection limits (RELIABILITY.md §6): what a client that holds a connection without
//! using it costs, and what stays reachable when many do.
//!
//! * [`an_idle_flood_past_the_descriptor_limit_leaves_healthz_answering`] and
//!   [`accept_errors_are_counted_and_make_room_when_descriptors_run_out`]: the real binary
//!   under `ulimit -n 256`, flooded with 600 connections that send nothing.
//! * One test per timeout, each configured to 1 s, reading until the server closes:
//!   header read (nothing, half a request line, half an upgrade request), idle keep-alive,
//!   a short and a dripping body (`408`), and a WebSocket client that never answers.
//! * [`sessions_fill_their_share_and_the_reserve_keeps_management_reachable`]: the cap, the
//!   reserve and eviction in one small server (8 connections, 3 reserved).
//!
//! Every wait has a deadline; each test prints its figures (`FAULTS …` lines, `cargo test
//! --test connections -- --nocapture`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

const SECOND: Duration = Duration::from_secs(1);

/// Reads until the server closes the connection (EOF or reset) and returns what came and
/// how long it took. Panics if it stays open for [`DEADLINE`].
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open for {DEADLINE:?}; received {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one complete HTTP response (head + `Content-Length` body); returns it as text.
async fn read_response_raw(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("content-length"))
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("a response within the deadline")
            .expect("read");
        assert!(n > 0, "connection closed before a full response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// The value of an unlabelled metric (or one given with its labels) in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    let resp = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.expect("metrics body")
}

/// A fresh client (its own connection) that asserts `GET path` answers 200.
async fn get_ok(base: &str, path: &str, auth: Option<&str>) -> Duration {
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("client");
    let mut req = client.get(format!("{base}{path}"));
    if let Some(key) = auth {
        req = req.bearer_auth(key);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
    started.elapsed()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------------------------
// Descriptor exhaustion (the real binary, `ulimit -n 256`)
// ---------------------------------------------------------------------------------------------

const NOFILE: u64 = 256;
const FLOOD: usize = 600;

/// Opens `n` connections that send nothing and keeps them (the server may close them).
async fn flood(port: u16, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let c = tokio::time::timeout(DEADLINE, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect within the deadline")
            .expect("connect");
        conns.push(c);
    }
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_past_the_descriptor_limit_leaves_healthz_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // A long header timeout: only the cap and eviction can make room here.
    let server = spawn_process_nofile(
        dir.path(),
        port,
        &[("HERALD_HTTP__HEADER_READ_TIMEOUT", "5m")],
        Some(NOFILE),
    )
    .await;
    let started = Instant::now();
    let conns = flood(port, FLOOD).await;
    let flooded = started.elapsed();

    let healthz = get_ok(&server.base, "/healthz", None).await;
    let readyz = get_ok(&server.base, "/readyz", None).await;
    let text = metrics_text(&server.client, &server.base).await;
    let limit = metric(&text, "herald_http_connections_limit");
    let open = metric(&text, "herald_http_connections");
    let evicted = metric(&text, "herald_http_connections_evicted_total");
    let accept_errors = metric(&text, "herald_accept_errors_total");
    // Derived from the limit: 256 - min(256, 256 / 2).
    assert_eq!(limit, 128.0, "max_connections derived from ulimit -n 256");
    assert!(
        open <= limit,
        "{open} open connections over the cap {limit}"
    );
    // Everything past the cap made room by closing the longest-waiting connection.
    assert!(
        evicted >= (FLOOD as f64) - limit,
        "{evicted} evictions for a flood of {FLOOD}"
    );
    // The cap kept the server below its descriptor limit: accept never failed.
    assert_eq!(accept_errors, 0.0);
    eprintln!(
        "FAULTS idle-flood: nofile={NOFILE} max_connections={limit} flood={FLOOD} flood_ms={} \
         evicted={evicted} open={open} accept_errors={accept_errors} healthz_ms={} readyz_ms={}",
        ms(flooded),
        ms(healthz),
        ms(readyz)
    );
    drop(conns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_are_counted_and_make_room_when_descriptors_run_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // A cap above what 256 descriptors allow: accept itself fails (EMFILE).
    let mut server = spawn_process_nofile(
        dir.path(),
        port,
        &[
            ("HERALD_HTTP__MAX_CONNECTIONS", "5000"),
            ("HERALD_HTTP__HEADER_READ_TIMEOUT", "5m"),
        ],
        Some(NOFILE),
    )
    .await;
    let started = Instant::now();
    let conns = flood(port, FLOOD).await;
    let flooded = started.elapsed();

    let healthz = get_ok(&server.base, "/healthz", None).await;
    let text = metrics_text(&server.client, &server.base).await;
    let accept_errors = metric(&text, "herald_accept_errors_total");
    let evicted = metric(&text, "herald_http_connections_evicted_total");
    assert!(
        accept_errors > 0.0,
        "no accept error past the descriptor limit"
    );
    // Each error made room by evicting one waiting connection, and the loop accepted
    // again: about one error per connection over the limit, no spinning.
    assert!(
        accept_errors <= (FLOOD + 10) as f64,
        "{accept_errors} accept errors for {FLOOD} connections: the accept loop spins"
    );
    assert!(evicted >= 1.0);
    let elapsed = started.elapsed();
    server.sigterm();
    let status = server.wait_exit(DEADLINE).await;
    assert!(status.success(), "exit status {status}");
    let log = server.log_text();
    let lines = log.matches("accept failed").count();
    // Logged at most once per 10 s, not per error.
    let allowed = 1 + elapsed.as_secs() as usize / 10;
    assert!(
        (1..=allowed).contains(&lines),
        "{lines} accept-error log lines for {accept_errors} errors in {elapsed:?}:\n{log}"
    );
    eprintln!(
        "FAULTS emfile: nofile={NOFILE} max_connections=5000 flood={FLOOD} flood_ms={} \
         accept_errors={accept_errors} evicted={evicted} log_lines={lines} healthz_ms={}",
        ms(flooded),
        ms(healthz)
    );
    drop(conns);
}

// ---------------------------------------------------------------------------------------------
// Timeouts (in-process, 1 s each)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_completes_its_request_head_is_closed() {
    let app = spawn_app_with(|s| {
        s.http.header_read_timeout = SECOND;
        s.http.keep_alive_timeout = Duration::from_secs(300);
    })
    .await;
    let token = app.token("alice");
    let cases: [(&str, String); 3] = [
        ("nothing", String::new()),
        ("half a request line", "GET /heal".into()),
        (
            "half an upgrade request",
            format!(
                "GET /websocket/{token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            ),
        ),
    ];
    let mut figures = Vec::new();
    for (what, sent) in &cases {
        let mut c = TcpStream::connect(app.addr).await.expect("connect");
        c.write_all(sent.as_bytes()).await.expect("write");
        let (got, took) = read_until_closed(&mut c).await;
        assert!(got.is_empty(), "{what}: unexpected answer {got:?}");
        assert!(
            took >= SECOND - Duration::from_millis(50),
            "{what}: closed after {took:?}, before the timeout"
        );
        figures.push(format!("{}={}ms", what.replace(' ', "_"), ms(took)));
    }
    // A complete head in time is served as usual.
    get_ok(&app.base, "/healthz", None).await;
    let text = metrics_text(&app.client, &app.base).await;
    assert_eq!(
        metric(&text, "herald_http_timeouts_total{phase=\"header\"}"),
        3.0
    );
    eprintln!("FAULTS header-timeout: timeout=1s {}", figures.join(" "));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = spawn_app_with(|s| {
        s.http.keep_alive_timeout = SECOND;
        s.http.header_read_timeout = Duration::from_secs(300);
    })
    .await;
    let mut c = TcpStream::connect(app.addr).await.expect("connect");
    // Two requests on one connection: keep-alive works.
    for _ in 0..2 {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let resp = read_response_raw(&mut c).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    // Then it idles.
    let (got, took) = read_until_closed(&mut c).await;
    assert!(got.is_empty(), "unexpected bytes {got:?}");
    assert!(
        took >= SECOND - Duration::from_millis(50),
        "closed after {took:?}"
    );
    let text = metrics_text(&app.client, &app.base).await;
    assert_eq!(
        metric(&text, "herald_http_timeouts_total{phase=\"keep_alive\"}"),
        1.0
    );
    eprintln!(
        "FAULTS keep-alive-timeout: timeout=1s requests=2 closed_after_ms={}",
        ms(took)
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_or_dripping_body_is_answered_408_and_closed() {
    let app = spawn_app_with(|s| s.http.body_read_timeout = SECOND).await;
    let head = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        app.api_key
    );

    // Content-Length 1000, then 10 bytes, then nothing.
    let mut c = TcpStream::connect(app.addr).await.expect("connect");
    c.write_all(head.as_bytes()).await.expect("write head");
    c.write_all(b"{\"title\":1").await.expect("write 10 bytes");
    let (got, short_took) = read_until_closed(&mut c).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or(""))
        .unwrap_or_else(|e| panic!("408 without a JSON body ({e}): {text}"));
    assert!(
        assert_error_body(&body).contains("body_read_timeout"),
        "{body}"
    );
    assert!(short_took >= SECOND - Duration::from_millis(50));

    // One byte every 200 ms: never silent for the timeout, but the body as a whole is
    // late. (A per-frame timeout would never fire.)
    let mut c = TcpStream::connect(app.addr).await.expect("connect");
    c.write_all(head.as_bytes()).await.expect("write head");
    let started = Instant::now();
    let dripping = Arc::new(AtomicBool::new(true));
    let (mut rd, mut wr) = c.into_split();
    let drip = tokio::spawn({
        let dripping = dripping.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while dripping.load(SeqCst) {
                tick.tick().await;
                if wr.write_all(b" ").await.is_err() {
                    break;
                }
            }
        }
    });
    let mut got = Vec::new();
    let answer = tokio::time::timeout(DEADLINE, rd.read_to_end(&mut got))
        .await
        .expect("an answer within the deadline while dripping");
    let drip_took = started.elapsed();
    dripping.store(false, SeqCst);
    drip.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{answer:?}: {text}");

    let metrics = metrics_text(&app.client, &app.base).await;
    assert_eq!(
        metric(&metrics, "herald_http_timeouts_total{phase=\"body\"}"),
        2.0
    );
    assert_eq!(app.total().await, 0, "nothing was stored");
    eprintln!(
        "FAULTS body-timeout: timeout=1s short_body_408_ms={} dripping_body_408_ms={}",
        ms(short_took),
        ms(drip_took)
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_never_answers_is_closed_after_the_first_frame_deadline() {
    let app = spawn_app_with(|s| s.websocket.first_frame_timeout = SECOND).await;

    // A client that answers (its reader keeps polling, so tungstenite sends the pongs).
    let (active, active_welcome) = ws_login(&app, &app.token("active")).await;
    let mut active_stream = active.stream;
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = active_stream.next().await {} });

    // A client that completes the upgrade and then neither reads nor writes.
    let mut c = TcpStream::connect(app.addr).await.expect("connect");
    let request = format!(
        "GET /websocket/{} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        app.token("silent")
    );
    c.write_all(request.as_bytes()).await.expect("write");
    let (got, took) = read_until_closed(&mut c).await;
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // The frames: welcome (text), ping, close 1001.
    let frames = server_frames(&got[end + 4..]);
    let opcodes: Vec<u8> = frames.iter().map(|(op, _)| *op).collect();
    assert_eq!(opcodes, [0x1, 0x9, 0x8], "frames: {frames:?}");
    assert!(String::from_utf8_lossy(&frames[0].1).contains("\"welcome\""));
    assert_eq!(frames[2].1[..2], 1001u16.to_be_bytes(), "close code");
    assert!(
        took >= SECOND - Duration::from_millis(50),
        "closed after {took:?}"
    );

    // The answering session, connected before and for longer, is still there.
    let clients = app.clients().await;
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0]["sessionId"], active_welcome["sessionId"]);
    eprintln!(
        "FAULTS silent-websocket: first_frame_timeout=1s closed_after_ms={} close_code=1001 answering_sessions_kept=1",
        ms(took)
    );
    reader.abort();
    app.shutdown().await;
}

/// Unmasked server frames: (opcode, payload), small payloads only.
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let op = bytes[0] & 0x0f;
        let (len, start) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            n => (n as usize, 2),
        };
        out.push((op, bytes[start..start + len].to_vec()));
        bytes = &bytes[start + len..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The cap and the reserve (in-process)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_fill_their_share_and_the_reserve_keeps_management_reachable() {
    const MAX: usize = 8;
    const RESERVED: usize = 3;
    let app = spawn_app_with(|s| {
        s.http.max_connections = Some(MAX);
        s.http.reserved_connections = RESERVED;
        s.http.header_read_timeout = Duration::from_secs(300);
        s.http.body_read_timeout = Duration::from_secs(300);
        // The sessions' clients stop reading after the welcome; only the cap matters here.
        s.websocket.first_frame_timeout = Duration::from_secs(300);
    })
    .await;
    // Sessions take their share: max - reserved.
    let mut sessions = Vec::new();
    for i in 0..MAX - RESERVED {
        sessions.push(ws_login(&app, &app.token(&format!("u{i}"))).await.0);
    }
    match ws_try_connect(&app.ws_url(&format!("/websocket/{}", app.token("one-more")))).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert!(resp.headers().contains_key("retry-after"));
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("JSON");
            assert_error_body(&body);
        }
        Err(e) => panic!("expected 503, got {e}"),
        Ok(_) => panic!("a session past max - reserved was accepted"),
    }
    // The reserve: health, readiness, metrics and the management API answer.
    for path in ["/healthz", "/readyz", "/metrics"] {
        get_ok(&app.base, path, None).await;
    }
    get_ok(&app.base, "/api/v1/clients", Some(&app.api_key)).await;

    // Idle connections fill the reserve and more: each new one evicts the oldest idle one,
    // and a new /healthz still gets in.
    let idle = flood(app.addr.port(), 2 * RESERVED).await;
    let healthz = get_ok(&app.base, "/healthz", None).await;

    // Requests in flight (bodies that never come) take the reserve: nothing can be evicted,
    // so a new connection is closed at once. `Expect: 100-continue` tells when a request
    // is in flight: the server says `100 Continue` once the handler reads the body.
    let mut busy = Vec::new();
    for _ in 0..RESERVED {
        let mut c = TcpStream::connect(app.addr).await.expect("connect");
        let head = format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
            app.api_key
        );
        c.write_all(head.as_bytes()).await.expect("write");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(DEADLINE, c.read(&mut buf))
            .await
            .expect("100 Continue within the deadline")
            .expect("read");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 100"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        c.write_all(b"{").await.expect("write");
        busy.push(c);
    }
    let mut c = TcpStream::connect(app.addr).await.expect("connect");
    let _ = c
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let (got, refused) = read_until_closed(&mut c).await;
    assert!(
        got.is_empty(),
        "served although every slot was busy: {:?}",
        String::from_utf8_lossy(&got)
    );
    // Give one slot back and read the counters.
    drop(busy.pop());
    let deadline = Instant::now() + DEADLINE;
    let text = loop {
        let resp = reqwest::Client::new().get(app.url("/metrics")).send().await;
        if let Ok(r) = resp {
            if r.status() == StatusCode::OK {
                break r.text().await.expect("metrics body");
            }
        }
        assert!(
            Instant::now() < deadline,
            "/metrics unreachable after a slot was freed"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let refused_total = metric(&text, "herald_http_connections_refused_total");
    let evicted = metric(&text, "herald_http_connections_evicted_total");
    assert!(refused_total >= 1.0);
    assert!(evicted >= RESERVED as f64, "{evicted} evictions");
    assert_eq!(metric(&text, "herald_ws_sessions_refused_total"), 1.0);
    assert_eq!(metric(&text, "herald_connections"), (MAX - RESERVED) as f64);
    eprintln!(
        "FAULTS cap-reserve: max_connections={MAX} reserved={RESERVED} sessions={} \
         session_refused=503 healthz_through_idle_flood_ms={} refused_at_once_ms={} evicted={evicted}",
        MAX - RESERVED,
        ms(healthz),
        ms(refused)
    );
    drop((idle, busy, sessions));
    app.shutdown().await;
}
