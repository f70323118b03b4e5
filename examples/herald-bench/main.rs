//! `herald_bench`: a load generator for Herald (and, for comparison, nginx + nchan).
//!
//! ```text
//! cargo run --release --example herald-bench -- idle      --conns 10000 [--procs 2]
//! cargo run --release --example herald-bench -- fanout    --conns 10000 --rate 10 --duration 10s
//! cargo run --release --example herald-bench -- targeted  --conns 1000 --rate 2000 --duration 10s
//! cargo run --release --example herald-bench -- smoke     (tiny; used by CI)
//! cargo run --release --example herald-bench -- outbox    --channel hook --rate 2000 --duration 10s
//! ```
//! `outbox` measures the provider outbox: it serves the webhook receiver itself
//! (`--receiver-port`, default 18090, path `/hook`) and sends targeted messages on
//! `--channel` to a server running the `webhook.json` channel (`herald-custom`, see
//! `examples/custom-channel`) pointed at it; latency is POST → webhook received.
//! Options: `--target herald|nchan`, `--ws`, `--api`, `--api-key`, `--jwt-secret`,
//! `--server-pid PID` (RSS and CPU from /proc). Prints one JSON line on stdout; progress
//! goes to stderr. Loopback only; every phase is bounded in time.
//!
//! Each message's content is `"<seq> <unix-nanos at send>"`: receivers compute latency
//! (send → frame received) and count losses and duplicates per connection. Client sockets
//! are bound to 127.0.0.2…254 in turn so 19k connections don't exhaust ephemeral ports.
//! Big runs use `--procs K` child processes (a process holds < 20,000 sockets here); the
//! parent sends, the children receive, and the parent merges their results.

use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Scenario {
    Idle,
    Fanout,
    Targeted,
    Smoke,
    Outbox,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Target {
    Herald,
    Nchan,
}

#[derive(Debug, Parser, Clone)]
struct Args {
    #[arg(value_enum)]
    scenario: Scenario,
    #[arg(long, value_enum, default_value = "herald")]
    target: Target,
    #[arg(long, default_value = "1000")]
    conns: usize,
    /// Messages per second (`max`: as fast as `--concurrency` allows; targeted only).
    #[arg(long, default_value = "10")]
    rate: String,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    hold: Duration,
    #[arg(long, default_value = "64")]
    concurrency: usize,
    #[arg(long, default_value = "512")]
    connect_concurrency: usize,
    #[arg(long, default_value = "1")]
    procs: usize,
    /// WebSocket base URL(s); several, comma-separated (cluster nodes), are used in turn.
    #[arg(long)]
    ws: Option<String>,
    #[arg(long)]
    api: Option<String>,
    #[arg(long, default_value = "bench-key")]
    api_key: String,
    #[arg(long, default_value = "bench-secret")]
    jwt_secret: String,
    /// The server's process ids (comma-separated: nginx's workers): RSS and CPU are summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// After the drain, every client reconnects and takes its replay (herald): a `202`ed
    /// message that a client (connected throughout) got neither live nor by replay is lost.
    #[arg(long)]
    verify: bool,
    /// Spread client sockets over this many source addresses (127.0.0.2 …) so very large
    /// runs don't exhaust ephemeral ports (and port search stays cheap); 1 lets the kernel
    /// choose.
    #[arg(long, default_value = "253")]
    source_ips: usize,
    /// Ack every message (herald; always on for targeted).
    #[arg(long)]
    ack: bool,
    /// After the last send, wait this long for frames still in flight.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Hard deadline for the whole run.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// `outbox`: the channel instance to send on, and the port of our webhook receiver.
    #[arg(long)]
    channel: Option<String>,
    #[arg(long, default_value = "18090")]
    receiver_port: u16,
    /// Internal: this process is child `shard` of `shards`.
    #[arg(long, hide = true)]
    shard: Option<usize>,
    #[arg(long, hide = true, default_value = "1")]
    shards: usize,
}

impl Args {
    /// Connection `i`'s server: `--ws` may list several (comma-separated: cluster nodes),
    /// taken in turn.
    fn ws_base_for(&self, i: usize) -> String {
        let all = self.ws_base();
        let bases: Vec<&str> = all
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .collect();
        bases
            .get(i % bases.len().max(1))
            .map_or(all.clone(), |b| (*b).to_owned())
    }

    fn ws_base(&self) -> String {
        self.ws.clone().unwrap_or_else(|| match self.target {
            Target::Herald => "ws://127.0.0.1:8080".into(),
            Target::Nchan => "ws://127.0.0.1:8081".into(),
        })
    }
    fn api_base(&self) -> String {
        self.api.clone().unwrap_or_else(|| match self.target {
            Target::Herald => "http://127.0.0.1:8080".into(),
            Target::Nchan => "http://127.0.0.1:8081".into(),
        })
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Latency histogram: 20 µs buckets up to 20 s, then one overflow bucket.
const BUCKET_US: u64 = 20;
const BUCKETS: usize = 1_000_000;

#[derive(Clone, Serialize, Deserialize)]
struct Histogram {
    counts: Vec<u64>,
    max_us: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS + 1],
            max_us: 0,
        }
    }
    fn record(&mut self, us: u64) {
        let i = ((us / BUCKET_US) as usize).min(BUCKETS);
        self.counts[i] += 1;
        self.max_us = self.max_us.max(us);
    }
    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max_us = self.max_us.max(other.max_us);
    }
    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    fn percentile_ms(&self, p: f64) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let want = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
            }
        }
        self.max_us as f64 / 1000.0
    }
    /// Sparse form for the child → parent protocol.
    fn sparse(&self) -> Vec<(u32, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i as u32, *c))
            .collect()
    }
    fn from_sparse(s: &[(u32, u64)], max_us: u64) -> Self {
        let mut h = Histogram::new();
        for (i, c) in s {
            h.counts[*i as usize] += c;
        }
        h.max_us = max_us;
        h
    }
}

/// What one process measured on its receiving side.
#[derive(Default, Serialize, Deserialize)]
struct ChildReport {
    connected: usize,
    failed_connects: usize,
    connect_start_ns: u64,
    connect_end_ns: u64,
    received: u64,
    duplicates: u64,
    hist: Vec<(u32, u64)>,
    max_us: u64,
    closed_early: usize,
    last_recv_ns: u64,
    #[serde(default)]
    replayed: u64,
    #[serde(default)]
    missing: u64,
}

struct Shared {
    /// `--verify`: the seqs answered `202` (a bitset), known once the sends are done.
    accepted: std::sync::OnceLock<Vec<u64>>,
    /// `--verify`: frames taken by replay, and `202`ed seqs a client never got.
    replayed: AtomicU64,
    missing: AtomicU64,
    /// Unix nanos of the last frame received (for deliveries/s over the real span).
    last_recv_ns: AtomicU64,
    hist: Mutex<Histogram>,
    received: AtomicU64,
    duplicates: AtomicU64,
    closed_early: AtomicUsize,
}

fn source_addr(i: usize) -> SocketAddr {
    // 127.0.0.2 … 127.0.0.254
    let host = 2 + (i % 253) as u8;
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0))
}

fn user_of(i: usize) -> String {
    format!("u{i}")
}

/// Open connection `i` and run its receive loop until `stop` fires.
async fn connection(
    args: Arc<Args>,
    i: usize,
    shared: Arc<Shared>,
    ready: tokio::sync::mpsc::Sender<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let ack = args.ack || args.scenario == Scenario::Targeted;
    let url = match args.target {
        Target::Herald => {
            let exp = (unix_nanos() / 1_000_000_000) as i64 + 3600;
            let token =
                herald::auth::mint_token(args.jwt_secret.as_bytes(), &user_of(i), None, None, exp);
            format!("{}/websocket/{token}", args.ws_base_for(i))
        }
        Target::Nchan => format!("{}/sub/bcast", args.ws_base_for(i)),
    };
    let connect = async {
        let server: SocketAddr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .and_then(|h| h.parse().ok())
            .ok_or("bad ws url")?;
        let sock = tokio::net::TcpSocket::new_v4().map_err(|_| "socket")?;
        if args.source_ips > 1 {
            sock.bind(source_addr(i % args.source_ips))
                .map_err(|_| "bind")?;
        }
        let stream = sock.connect(server).await.map_err(|_| "connect")?;
        stream.set_nodelay(true).map_err(|_| "nodelay")?;
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_config()))
                .await
                .map_err(|_| "upgrade")?;
        if args.target == Target::Herald {
            // A completed connect includes the welcome frame (token verified, registered).
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => break,
                    Some(Ok(_)) => continue,
                    _ => return Err("no welcome"),
                }
            }
        }
        Ok::<_, &'static str>(ws)
    };
    let mut ws = match tokio::time::timeout(Duration::from_secs(30), connect).await {
        Ok(Ok(ws)) => ws,
        _ => {
            let _ = ready.send(false).await;
            return;
        }
    };
    let _ = ready.send(true).await;
    drop(ready);
    let mut seen: Vec<u64> = Vec::new(); // bitset of received seqs
    let mut lat: Vec<u64> = Vec::new();
    let mut closed_early = false;
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => break,
            m = ws.next() => m,
        };
        {
            {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ => {
                        shared.closed_early.fetch_add(1, Relaxed);
                        closed_early = true;
                        break;
                    }
                };
                let now = unix_nanos();
                shared.last_recv_ns.fetch_max(now, Relaxed);
                // Cheap field extraction: this runs for every delivery and the generator
                // must cost less than the server it measures.
                let (content, id) = match args.target {
                    Target::Nchan => (text.as_str(), None),
                    Target::Herald => {
                        if !text.starts_with(r#"{"type":"message""#) {
                            continue;
                        }
                        let Some(content) = field(&text, r#""content":""#) else {
                            continue;
                        };
                        (content, field(&text, r#""id":""#))
                    }
                };
                let mut parts = content.split(' ');
                let (Some(seq), Some(ts)) = (
                    parts.next().and_then(|s| s.parse::<usize>().ok()),
                    parts.next().and_then(|s| s.parse::<u64>().ok()),
                ) else {
                    continue;
                };
                let (word, bit) = (seq / 64, seq % 64);
                if seen.len() <= word {
                    seen.resize(word + 1, 0);
                }
                if seen[word] & (1 << bit) != 0 {
                    shared.duplicates.fetch_add(1, Relaxed);
                } else {
                    seen[word] |= 1 << bit;
                    shared.received.fetch_add(1, Relaxed);
                    lat.push(now.saturating_sub(ts) / 1000);
                }
                if ack {
                    if let Some(id) = id {
                        let _ = ws
                            .send(Message::Text(
                                format!(r#"{{"type":"ack","id":"{id}"}}"#).into(),
                            ))
                            .await;
                    }
                }
                if lat.len() >= 256 {
                    let mut h = shared.hist.lock().unwrap();
                    for us in lat.drain(..) {
                        h.record(us);
                    }
                    drop(h);
                }
            }
        }
    }
    {
        let mut h = shared.hist.lock().unwrap();
        for us in lat.drain(..) {
            h.record(us);
        }
    }
    let _ = ws.close(None).await;
    if args.verify && args.target == Target::Herald && !closed_early {
        verify(&args, i, &url, &shared, &mut seen, ack).await;
    }
}

/// Reconnect and take the replay (its size is the welcome's `pending`), then count the
/// `202`ed seqs this client has seen neither live nor now.
async fn verify(args: &Args, i: usize, url: &str, shared: &Shared, seen: &mut Vec<u64>, ack: bool) {
    let mut missing = 0;
    let done = async {
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true)
                .await
                .ok()?;
        let pending = loop {
            match ws.next().await? {
                Ok(Message::Text(t)) if t.contains("\"welcome\"") => {
                    let v: serde_json::Value = serde_json::from_str(&t).ok()?;
                    break v["pending"].as_u64().unwrap_or(0);
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        };
        let mut got = 0;
        while got < pending {
            let Ok(Message::Text(t)) = ws.next().await? else {
                continue;
            };
            let Some(content) = field(&t, r#""content":""#) else {
                continue;
            };
            got += 1;
            if let Some(seq) = content
                .split(' ')
                .next()
                .and_then(|x| x.parse::<usize>().ok())
            {
                let (word, bit) = (seq / 64, seq % 64);
                if seen.len() <= word {
                    seen.resize(word + 1, 0);
                }
                seen[word] |= 1 << bit;
            }
            if ack {
                if let Some(id) = field(&t, r#""id":""#) {
                    let _ = ws
                        .send(Message::Text(
                            format!(r#"{{"type":"ack","id":"{id}"}}"#).into(),
                        ))
                        .await;
                }
            }
        }
        let _ = ws.close(None).await;
        Some(got)
    };
    let replayed = tokio::time::timeout(Duration::from_secs(60), done)
        .await
        .ok()
        .flatten();
    if let Some(accepted) = shared.accepted.get() {
        let targeted = args.scenario == Scenario::Targeted;
        for (w, bits) in accepted.iter().enumerate() {
            let mut want = *bits;
            if targeted {
                // Only this client's own seqs.
                want = (0..64)
                    .filter(|b| want & (1 << b) != 0 && (w * 64 + b) % args.conns == i)
                    .fold(0u64, |acc, b| acc | (1 << b));
            }
            let have = seen.get(w).copied().unwrap_or(0);
            missing += (want & !have).count_ones() as u64;
        }
    }
    shared.replayed.fetch_add(replayed.unwrap_or(0), Relaxed);
    shared.missing.fetch_add(missing, Relaxed);
}

/// A minimal HTTP/1.1 keep-alive client for the POSTs. Hand-written for the generator
/// only: reqwest's per-request work (header maps, URL parsing, its pool) was half of the
/// generator's profile in the targeted runs, i.e. the generator, not the server, set the
/// ceiling. Herald and nginx both answer with `Content-Length` bodies.
struct RawHttp {
    stream: tokio::net::TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl RawHttp {
    async fn connect(addr: &str) -> std::io::Result<RawHttp> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawHttp {
            stream,
            host: addr.to_owned(),
            buf: Vec::with_capacity(1024),
        })
    }

    async fn post(&mut self, path: &str, auth: Option<&str>, body: &[u8]) -> std::io::Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut req = Vec::with_capacity(256 + body.len());
        let _ = write!(
            req,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if let Some(a) = auth {
            let _ = write!(req, "Authorization: Bearer {a}\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        self.stream.write_all(&req).await?;
        self.buf.clear();
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).map_err(|_| bad("head"))?;
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| bad("status"))?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let mut chunk = [0u8; 4096];
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(bad("closed"));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(status);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Client sockets read in small chunks: tungstenite's default 128 KiB read buffer is
/// zero-filled on every read, which made `memset` 41 % of the generator's profile.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
}

/// The string value after `key` (e.g. `"id":"`) in a frame, up to the next quote. Ids
/// are UUIDs and benchmark contents are digits and a space: nothing is escaped.
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let rest = &json[json.find(key)? + key.len()..];
    Some(&rest[..rest.find('"')?])
}

/// The receiving side of one process: connect this shard's connections, report ready, wait
/// for the stop signal, report.
async fn receive(
    args: Arc<Args>,
    shard: usize,
    shards: usize,
    go: impl std::future::Future<Output = Vec<u64>>,
) -> ChildReport {
    let shared = Arc::new(Shared {
        accepted: std::sync::OnceLock::new(),
        replayed: AtomicU64::new(0),
        missing: AtomicU64::new(0),
        last_recv_ns: AtomicU64::new(0),
        hist: Mutex::new(Histogram::new()),
        received: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        closed_early: AtomicUsize::new(0),
    });
    let mine: Vec<usize> = (0..args.conns).filter(|i| i % shards == shard).collect();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1024);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sem = Arc::new(Semaphore::new(args.connect_concurrency));
    let start_ns = unix_nanos();
    let mut report = ChildReport {
        connect_start_ns: start_ns,
        ..Default::default()
    };
    let spawner = {
        let args = args.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            for i in mine {
                let permit = sem.clone().acquire_owned().await.unwrap();
                let (args, shared, ready, stop) = (
                    args.clone(),
                    shared.clone(),
                    ready_tx.clone(),
                    stop_rx.clone(),
                );
                tokio::spawn(async move {
                    let (inner_tx, mut inner_rx) = tokio::sync::mpsc::channel(1);
                    let task = tokio::spawn(connection(args, i, shared, inner_tx, stop));
                    let ok = inner_rx.recv().await.unwrap_or(false);
                    drop(permit);
                    let _ = ready.send(ok).await;
                    let _ = task.await;
                });
            }
        })
    };
    let expected = (0..args.conns).filter(|i| i % shards == shard).count();
    for _ in 0..expected {
        match ready_rx.recv().await {
            Some(true) => report.connected += 1,
            Some(false) => report.failed_connects += 1,
            None => break,
        }
    }
    report.connect_end_ns = unix_nanos();
    let _ = spawner.await;
    eprintln!(
        "shard {shard}: {} connected, {} failed in {:.2}s",
        report.connected,
        report.failed_connects,
        (report.connect_end_ns - start_ns) as f64 / 1e9
    );
    let accepted = go.await;
    let _ = shared.accepted.set(accepted);
    let _ = stop_tx.send(true);
    // Give connection tasks a moment to flush their histograms (and to take their replay).
    let wait = if args.verify { 90 } else { 5 };
    let deadline = Instant::now() + Duration::from_secs(wait);
    while Arc::strong_count(&shared) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = shared.hist.lock().unwrap().clone();
    report.hist = h.sparse();
    report.max_us = h.max_us;
    report.received = shared.received.load(Relaxed);
    report.duplicates = shared.duplicates.load(Relaxed);
    report.closed_early = shared.closed_early.load(Relaxed);
    report.last_recv_ns = shared.last_recv_ns.load(Relaxed);
    report.replayed = shared.replayed.load(Relaxed);
    report.missing = shared.missing.load(Relaxed);
    report
}

/// Server resource use from /proc.
#[derive(Clone, Copy, Default)]
struct ProcSample {
    rss_kib: u64,
    cpu_ticks: u64,
}

fn sample(pids: &[u32]) -> ProcSample {
    let mut total = ProcSample::default();
    for &pid in pids {
        let one = sample_one(pid);
        total.rss_kib += one.rss_kib;
        total.cpu_ticks += one.cpu_ticks;
    }
    total
}

fn sample_one(pid: u32) -> ProcSample {
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let cpu_ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    ProcSample { rss_kib, cpu_ticks }
}

/// The sending side: one send per tick at `rate`/s for `duration`, each POST in its own task.
struct Sender {
    args: Arc<Args>,
    /// Idle keep-alive connections for the POSTs.
    pool: Mutex<Vec<RawHttp>>,
    seq: AtomicUsize,
    accepted: AtomicU64,
    rejected: AtomicU64,
    /// `503` answers (admission control): refused, nothing stored.
    refused: AtomicU64,
    /// POST → answer time, every answer (202 or not).
    answer_hist: Mutex<Histogram>,
    /// Seqs answered `202`.
    accepted_seqs: Mutex<Vec<u64>>,
}

impl Sender {
    fn new(args: Arc<Args>) -> Arc<Self> {
        Arc::new(Sender {
            args,
            pool: Mutex::new(Vec::new()),
            seq: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            answer_hist: Mutex::new(Histogram::new()),
            accepted_seqs: Mutex::new(Vec::new()),
        })
    }

    /// One send; `Some(_)`: targeted, to the receiver of this seq (`user_of(seq % conns)`,
    /// so `--verify` knows who should have it).
    async fn send_one(self: Arc<Self>, receiver: Option<String>) {
        let seq = self.seq.fetch_add(1, Relaxed);
        let receiver = receiver.map(|_| user_of(seq % self.args.conns));
        let content = format!("{seq} {}", unix_nanos());
        let (path, body) = match self.args.target {
            Target::Herald => {
                let mut body = json!({"title": "bench", "content": content});
                if let Some(r) = receiver {
                    body["receivers"] = json!([r]);
                }
                if let Some(c) = &self.args.channel {
                    body["channels"] = json!([c]);
                }
                ("/api/v1/messages", body.to_string())
            }
            Target::Nchan => ("/pub/bcast", content),
        };
        let asked = Instant::now();
        let answer = self.post(path, body.as_bytes()).await;
        if answer.is_ok() {
            let us = asked.elapsed().as_micros() as u64;
            self.answer_hist.lock().unwrap().record(us);
        }
        match answer {
            Ok(status) if (200..300).contains(&status) => {
                self.accepted.fetch_add(1, Relaxed);
                let mut set = self.accepted_seqs.lock().unwrap();
                let (word, bit) = (seq / 64, seq % 64);
                if set.len() <= word {
                    set.resize(word + 1, 0);
                }
                set[word] |= 1 << bit;
            }
            Ok(503) => {
                self.rejected.fetch_add(1, Relaxed);
                self.refused.fetch_add(1, Relaxed);
            }
            Ok(status) => {
                self.rejected.fetch_add(1, Relaxed);
                eprintln!("send {seq}: HTTP {status}");
            }
            Err(e) => {
                self.rejected.fetch_add(1, Relaxed);
                eprintln!("send {seq}: {e}");
            }
        }
    }

    /// POST `body` on an idle keep-alive connection (or a new one); the status code.
    async fn post(&self, path: &str, body: &[u8]) -> std::io::Result<u16> {
        let conn = self.pool.lock().unwrap().pop();
        let mut conn = match conn {
            Some(c) => c,
            None => {
                let addr = self
                    .args
                    .api_base()
                    .trim_start_matches("http://")
                    .to_owned();
                RawHttp::connect(&addr).await?
            }
        };
        let auth = match self.args.target {
            Target::Herald => Some(self.args.api_key.as_str()),
            Target::Nchan => None,
        };
        let status = tokio::time::timeout(Duration::from_secs(30), conn.post(path, auth, body))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "POST timed out"))??;
        self.pool.lock().unwrap().push(conn);
        Ok(status)
    }

    /// Paced sends for `duration`; returns when every send has been answered.
    async fn paced(self: &Arc<Self>, rate: f64, duration: Duration, targeted: bool) {
        let total = (rate * duration.as_secs_f64()).round() as usize;
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..total {
            tick.tick().await;
            let receiver = targeted.then(String::new);
            let _ = n;
            tasks.spawn(self.clone().send_one(receiver));
        }
        while tasks.join_next().await.is_some() {}
    }

    /// As many sends as `concurrency` allows, for `duration`.
    async fn flat_out(self: &Arc<Self>, duration: Duration) {
        let end = Instant::now() + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.args.concurrency {
            let me = self.clone();
            tasks.spawn(async move {
                let mut n = 0usize;
                while Instant::now() < end {
                    let r = user_of((n * 7919 + me.seq.load(Relaxed)) % me.args.conns);
                    me.clone().send_one(Some(r)).await;
                    n += 1;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

fn main() {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let deadline = args.deadline;
    let result = rt.block_on(async move {
        match tokio::time::timeout(deadline, run(Arc::new(args))).await {
            Ok(v) => v,
            Err(_) => json!({"error": "deadline exceeded"}),
        }
    });
    println!("{result}");
    // Don't wait for lingering connection tasks.
    std::process::exit(if result.get("error").is_some() { 1 } else { 0 });
}

async fn run(args: Arc<Args>) -> serde_json::Value {
    if let Some(shard) = args.shard {
        return child(args, shard).await;
    }
    if args.scenario == Scenario::Outbox {
        return outbox(args).await;
    }
    let mut args_owned = (*args).clone();
    if args.scenario == Scenario::Smoke {
        args_owned.conns = args.conns.min(50);
        args_owned.rate = "5".into();
        args_owned.duration = Duration::from_secs(1);
        args_owned.hold = Duration::from_millis(200);
    }
    let args = Arc::new(args_owned);

    // Spawn children (or receive in-process when --procs 1).
    let before = sample(&args.server_pid);
    let mut children = Vec::new();
    if args.procs > 1 {
        let exe = std::env::current_exe().expect("current exe");
        for shard in 0..args.procs {
            let mut cmd = Command::new(&exe);
            cmd.args(std::env::args().skip(1))
                .arg("--shard")
                .arg(shard.to_string())
                .arg("--shards")
                .arg(args.procs.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            children.push(cmd.spawn().expect("spawn child"));
        }
    }
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<Vec<u64>>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let local = if args.procs <= 1 {
        let a = args.clone();
        Some(tokio::spawn(async move {
            let go = async move {
                let _ = ready_tx.send(());
                go_rx.await.unwrap_or_default()
            };
            receive(a, 0, 1, go).await
        }))
    } else {
        // Children print READY on stdout once connected.
        let mut readers = Vec::new();
        for c in &mut children {
            let out = c.stdout.take().expect("child stdout");
            readers.push(std::io::BufReader::new(out));
        }
        let readers = tokio::task::spawn_blocking(move || {
            for r in &mut readers {
                let mut line = String::new();
                let _ = r.read_line(&mut line);
            }
            readers
        })
        .await
        .expect("join");
        let _ = ready_tx.send(());
        let children_rx = readers;
        // Keep the readers for the final reports.
        CHILD_READERS.lock().unwrap().replace(children_rx);
        None
    };
    let _ = ready_rx.await;
    tokio::time::sleep(args.hold.min(Duration::from_secs(1))).await;
    let after_connect = sample(&args.server_pid);
    let after_connect_at = Instant::now();

    // Send phase.
    let sender = Sender::new(args.clone());
    let send_start = Instant::now();
    let send_start_ns = unix_nanos();
    match args.scenario {
        Scenario::Idle => {
            tokio::time::sleep(args.hold.saturating_sub(Duration::from_secs(1))).await
        }
        Scenario::Fanout | Scenario::Smoke => {
            let rate: f64 = args.rate.parse().unwrap_or(10.0);
            sender.paced(rate, args.duration, false).await;
        }
        Scenario::Outbox => unreachable!("handled by outbox()"),
        Scenario::Targeted => {
            if args.rate == "max" {
                sender.flat_out(args.duration).await;
            } else {
                let rate: f64 = args.rate.parse().unwrap_or(1000.0);
                sender.paced(rate, args.duration, true).await;
            }
        }
    }
    let send_elapsed = send_start.elapsed();
    // Drain: let the last frames arrive.
    tokio::time::sleep(args.drain).await;
    let after_send = sample(&args.server_pid);
    let measured = after_connect_at.elapsed();
    let accepted_seqs = sender.accepted_seqs.lock().unwrap().clone();
    let _ = go_tx.send(accepted_seqs.clone());

    let mut reports: Vec<ChildReport> = Vec::new();
    if let Some(local) = local {
        reports.push(local.await.expect("receiver"));
    } else {
        for c in &mut children {
            if let Some(mut stdin) = c.stdin.take() {
                let _ = writeln!(
                    stdin,
                    "GO {}",
                    serde_json::to_string(&accepted_seqs).unwrap_or_default()
                );
            }
        }
        let readers = CHILD_READERS.lock().unwrap().take().unwrap_or_default();
        let parsed = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for mut r in readers {
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                if let Ok(rep) = serde_json::from_str::<ChildReport>(&line) {
                    out.push(rep);
                }
            }
            out
        })
        .await
        .expect("join");
        reports = parsed;
        for mut c in children {
            let _ = c.wait();
        }
    }
    summarize(
        &args,
        reports,
        before,
        after_connect,
        after_send,
        send_start_ns,
        send_elapsed,
        measured,
        &sender,
    )
}

static CHILD_READERS: Mutex<Option<Vec<std::io::BufReader<std::process::ChildStdout>>>> =
    Mutex::new(None);

async fn child(args: Arc<Args>, shard: usize) -> serde_json::Value {
    let go = async {
        println!("READY");
        let _ = std::io::stdout().flush();
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            line.trim()
                .strip_prefix("GO")
                .and_then(|rest| serde_json::from_str::<Vec<u64>>(rest.trim()).ok())
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default()
    };
    let report = receive(args.clone(), shard, args.shards, go).await;
    serde_json::to_value(&report).unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &Args,
    reports: Vec<ChildReport>,
    before: ProcSample,
    after_connect: ProcSample,
    after_send: ProcSample,
    send_start_ns: u64,
    send_elapsed: Duration,
    measured: Duration,
    sender: &Sender,
) -> serde_json::Value {
    let mut hist = Histogram::new();
    let (mut replayed, mut missing) = (0u64, 0u64);
    let (mut connected, mut failed, mut received, mut dups, mut closed) = (0, 0, 0u64, 0u64, 0);
    let (mut start, mut end, mut last_recv) = (u64::MAX, 0u64, 0u64);
    for r in &reports {
        hist.merge(&Histogram::from_sparse(&r.hist, r.max_us));
        connected += r.connected;
        failed += r.failed_connects;
        received += r.received;
        dups += r.duplicates;
        closed += r.closed_early;
        replayed += r.replayed;
        missing += r.missing;
        start = start.min(r.connect_start_ns);
        last_recv = last_recv.max(r.last_recv_ns);
        end = end.max(r.connect_end_ns);
    }
    let connect_secs = end.saturating_sub(start) as f64 / 1e9;
    let accepted = sender.accepted.load(Relaxed);
    let expected = match args.scenario {
        Scenario::Targeted | Scenario::Outbox => accepted,
        Scenario::Idle => 0,
        _ => accepted * connected as u64,
    };
    let lost = expected.saturating_sub(received);
    let ticks = after_send.cpu_ticks.saturating_sub(after_connect.cpu_ticks) as f64 / 100.0;
    let send_secs = send_elapsed.as_secs_f64().max(1e-9);
    json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "target": format!("{:?}", args.target).to_lowercase(),
        "conns": args.conns,
        "procs": args.procs,
        "connected": connected,
        "failed_connects": failed,
        "closed_early": closed,
        "connect_seconds": (connect_secs * 1000.0).round() / 1000.0,
        "connects_per_s": (connected as f64 / connect_secs.max(1e-9)).round(),
        "server_rss_kib_before": before.rss_kib,
        "server_rss_kib_connected": after_connect.rss_kib,
        "server_rss_kib_end": after_send.rss_kib,
        "kib_per_conn": if connected > 0 { ((after_connect.rss_kib as f64 - before.rss_kib as f64) / connected as f64 * 100.0).round() / 100.0 } else { 0.0 },
        "server_cpu_seconds_send": ticks,
        // Over the send phase and the drain (what the CPU ticks cover).
        "server_cpu_percent_send": (ticks / measured.as_secs_f64().max(1e-9) * 100.0).round(),
        "sends_accepted": accepted,
        "sends_rejected": sender.rejected.load(Relaxed),
        "accepted_sends_per_s": (accepted as f64 / send_secs).round(),
        "expected_deliveries": expected,
        "received": received,
        "lost": lost,
        "duplicates": dups,
        // Over the real span: first send → last frame received.
        "deliveries_per_s": (received as f64 / (last_recv.saturating_sub(send_start_ns) as f64 / 1e9).max(1e-9)).round(),
        "latency_ms": {
            "p50": hist.percentile_ms(0.50),
            "p90": hist.percentile_ms(0.90),
            "p99": hist.percentile_ms(0.99),
            "max": hist.max_us as f64 / 1000.0,
        },
        "send_seconds": (send_secs * 1000.0).round() / 1000.0,
        "sends_refused_503": sender.refused.load(Relaxed),
        "answer_ms": answer_percentiles(sender),
        "verified": args.verify,
        "replayed_after": replayed,
        "lost_after_replay": missing,
    })
}

fn answer_percentiles(sender: &Sender) -> serde_json::Value {
    let h = sender.answer_hist.lock().unwrap();
    json!({
        "p50": h.percentile_ms(0.50),
        "p99": h.percentile_ms(0.99),
        "max": h.max_us as f64 / 1000.0,
    })
}

/// What the webhook receiver saw.
#[derive(Default)]
struct Hooked {
    hist: Option<Histogram>,
    received: u64,
    duplicates: u64,
    seen: std::collections::HashSet<u64>,
    last_ns: u64,
}

/// The `outbox` scenario: targeted sends on a provider channel whose webhook is us.
async fn outbox(args: Arc<Args>) -> serde_json::Value {
    let hooked = Arc::new(Mutex::new(Hooked {
        hist: Some(Histogram::new()),
        ..Hooked::default()
    }));
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", args.receiver_port)).await {
        Ok(l) => l,
        Err(e) => return json!({"error": format!("receiver port {}: {e}", args.receiver_port)}),
    };
    let h = hooked.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let h = h.clone();
            async move {
                let now = unix_nanos();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let content = v["message"]["content"].as_str().unwrap_or("");
                let mut it = content.split(' ');
                let seq = it.next().and_then(|x| x.parse::<u64>().ok());
                let sent = it.next().and_then(|x| x.parse::<u64>().ok());
                let mut g = h.lock().unwrap();
                if let (Some(seq), Some(sent)) = (seq, sent) {
                    if g.seen.insert(seq) {
                        g.received += 1;
                        g.last_ns = g.last_ns.max(now);
                        if let Some(hist) = g.hist.as_mut() {
                            hist.record(now.saturating_sub(sent) / 1000);
                        }
                    } else {
                        g.duplicates += 1;
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let before = sample(&args.server_pid);
    let sender = Sender::new(args.clone());
    let send_start = Instant::now();
    let send_start_ns = unix_nanos();
    if args.rate == "max" {
        sender.flat_out(args.duration).await;
    } else {
        let rate: f64 = args.rate.parse().unwrap_or(1000.0);
        sender.paced(rate, args.duration, true).await;
    }
    let send_elapsed = send_start.elapsed();
    // Drain: until every accepted send arrived, at most `drain`.
    let accepted = sender.accepted.load(Relaxed);
    let drain_end = Instant::now() + args.drain;
    while hooked.lock().unwrap().received < accepted && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = sample(&args.server_pid);
    let g = hooked.lock().unwrap();
    let hist = g.hist.clone().unwrap_or_else(Histogram::new);
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / 100.0;
    let send_secs = send_elapsed.as_secs_f64().max(1e-9);
    let span = (g.last_ns.saturating_sub(send_start_ns) as f64 / 1e9).max(1e-9);
    json!({
        "scenario": "outbox",
        "target": "herald",
        "channel": args.channel,
        "sends_accepted": accepted,
        "sends_rejected": sender.rejected.load(Relaxed),
        "accepted_sends_per_s": (accepted as f64 / send_secs).round(),
        "received": g.received,
        "lost": accepted.saturating_sub(g.received),
        "duplicates": g.duplicates,
        "deliveries_per_s": (g.received as f64 / span).round(),
        "latency_ms": {
            "p50": hist.percentile_ms(0.50),
            "p90": hist.percentile_ms(0.90),
            "p99": hist.percentile_ms(0.99),
            "max": hist.max_us as f64 / 1000.0,
        },
        "server_cpu_seconds": ticks,
        "server_cpu_percent": (ticks / span.max(send_secs) * 100.0).round(),
        "server_rss_kib_end": after.rss_kib,
        "send_seconds": (send_secs * 1000.0).round() / 1000.0,
    })
}
