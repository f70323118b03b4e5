//! Prometheus metrics, hand-rolled on atomics: the hot paths (fan-out, acks) only do relaxed
//! atomic adds, never take a lock. Rendered as text by `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::model::Status;

/// Upper bounds (seconds) of the delivery latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// `n` observations of the same duration (a broadcast's members, handed over at once).
    pub fn observe_n(&self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(n, Relaxed);
        }
        self.count.fetch_add(n, Relaxed);
        self.sum_micros
            .fetch_add((d.as_micros() as u64).saturating_mul(n), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let labels = labels.trim_end_matches(',');
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Counters of one channel instance.
#[derive(Default)]
pub struct ChannelCounters {
    /// Status changes recorded, by [`Status::code`].
    pub status: [AtomicU64; 5],
    /// Classified errors by kind: transient, rate_limited, bad_recipient, permanent, config.
    pub errors: [AtomicU64; 5],
    /// Provider retries scheduled (outbox).
    pub retries: AtomicU64,
    /// Daily quota of the instance (0: none) and claims counted in the current window.
    pub quota_limit: AtomicU64,
    pub quota_used: AtomicU64,
    /// Push device tokens deactivated because the provider said they are gone.
    pub dead_devices: AtomicU64,
    /// Per-minute status changes, for the dashboard chart.
    pub recent: std::sync::Mutex<Recent>,
    /// The instance's kind (`email.smtp` …), for `herald_channel_info`.
    pub kind: String,
    pub latency: Histogram,
}

/// Minutes of per-minute history kept for the dashboard's chart.
pub const RECENT_MINUTES: usize = 60;

/// Status changes per minute over the last [`RECENT_MINUTES`] minutes (this node, since
/// start). One short lock per batch of changes; the status writer is its only writer.
#[derive(Default)]
pub struct Recent {
    /// (minute since the epoch, counts by status code), oldest first.
    minutes: std::collections::VecDeque<(i64, [u64; 5])>,
}

impl Recent {
    fn add(&mut self, minute: i64, status: Status, n: u64) {
        match self.minutes.back_mut() {
            Some((m, counts)) if *m == minute => counts[status.code() as usize] += n,
            Some((m, _)) if *m > minute => {
                // A change stamped in an older minute (clock step): count it in the latest.
                if let Some((_, counts)) = self.minutes.back_mut() {
                    counts[status.code() as usize] += n;
                }
            }
            _ => {
                let mut counts = [0; 5];
                counts[status.code() as usize] = n;
                self.minutes.push_back((minute, counts));
            }
        }
        while self
            .minutes
            .front()
            .is_some_and(|(m, _)| *m <= minute - RECENT_MINUTES as i64)
        {
            self.minutes.pop_front();
        }
    }

    /// Counts per status for the `RECENT_MINUTES` minutes ending with `now_minute`, oldest
    /// first (zeros where nothing happened).
    pub fn series(&self, now_minute: i64) -> [[u64; RECENT_MINUTES]; 5] {
        let mut out = [[0; RECENT_MINUTES]; 5];
        let first = now_minute - RECENT_MINUTES as i64 + 1;
        for (m, counts) in &self.minutes {
            if (first..=now_minute).contains(m) {
                let i = (m - first) as usize;
                for (s, n) in counts.iter().enumerate() {
                    out[s][i] = *n;
                }
            }
        }
        out
    }
}

impl ChannelCounters {
    pub fn count(&self, status: Status) {
        self.count_n(status, 1);
    }

    /// Count `n` transitions to `status` (and in the per-minute history).
    pub fn count_n(&self, status: Status, n: u64) {
        if n == 0 {
            return;
        }
        self.status[status.code() as usize].fetch_add(n, Relaxed);
        let minute = crate::model::now_ms().div_euclid(60_000);
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(minute, status, n);
    }

    pub fn recent_series(&self, now_minute: i64) -> [[u64; RECENT_MINUTES]; 5] {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .series(now_minute)
    }
    pub fn get(&self, status: Status) -> u64 {
        self.status[status.code() as usize].load(Relaxed)
    }
}

pub const ERROR_KINDS: [&str; 5] = [
    "transient",
    "rate_limited",
    "bad_recipient",
    "permanent",
    "config",
];

#[derive(Default)]
pub struct Metrics {
    /// Open sessions, WebSocket and SSE.
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    /// Of `connections`, the Server-Sent Events sessions (`GET /events`).
    pub sse_sessions: AtomicI64,
    pub handshake_rejected: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub dead_peers: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub frames_sent: AtomicU64,
    pub replayed: AtomicU64,
    pub acks: AtomicU64,
    /// Inbox entries whose state a change moved (seen, read, archived …).
    pub inbox_changes: AtomicU64,
    pub status_write_errors: AtomicU64,
    /// Failover chain events, indexed like [`ROUTE_EVENTS`].
    pub route_events: [AtomicU64; ROUTE_EVENTS.len()],
    /// WebSocket handshakes refused by `websocket.handshake_rate_limit`.
    pub ws_handshakes_limited: AtomicU64,
    /// Broadcast members still undelivered when their audience window ended (they got
    /// delivery rows of their own).
    pub members_spilled: AtomicU64,
    /// Sends refused with `503` before anything was stored, indexed like [`REFUSALS`].
    pub sends_refused: [AtomicU64; REFUSALS.len()],
    /// Sends refused by an API key's rate limit, by key name (keys with a limit; fixed at
    /// start, see [`Metrics::with_api_keys`]).
    pub api_rate_limited: BTreeMap<String, AtomicU64>,
    /// Per channel instance; the key set is fixed at start (no lock on the hot path).
    /// `herald_channel_info{channel,kind}` joins instances to kinds (providers).
    pub channels: BTreeMap<String, ChannelCounters>,
    /// Client connections: the cap, evictions, timeouts, accept errors (`crate::server`).
    pub conns: ConnCounters,
    /// Webhook attempts by outcome, indexed like [`WEBHOOK_OUTCOMES`].
    pub webhook_attempts: [AtomicU64; WEBHOOK_OUTCOMES.len()],
    /// How long webhook requests took (any outcome).
    pub webhook_latency: Histogram,
    /// Endpoints disabled for failing too long.
    pub webhooks_disabled: AtomicU64,
}

/// Outcomes of a webhook attempt (`herald_webhook_attempts_total{outcome}`).
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "retry", "failed"];

/// Why a connection was closed for taking too long (`herald_http_timeouts_total{phase}`).
pub const TIMEOUT_PHASES: [&str; 3] = ["header", "keep_alive", "body"];
/// Indexes into [`TIMEOUT_PHASES`].
pub const TIMEOUT_HEADER: usize = 0;
pub const TIMEOUT_KEEP_ALIVE: usize = 1;
pub const TIMEOUT_BODY: usize = 2;

/// Client connections (`crate::server`): what the cap, the reserve and the timeouts did.
#[derive(Default)]
pub struct ConnCounters {
    /// Open client connections, WebSocket sessions included.
    pub open: AtomicI64,
    /// `http.max_connections` in effect (derived from the open-file limit when unset).
    pub limit: AtomicI64,
    /// `accept` failures other than a client's reset (EMFILE, ENFILE, ENOBUFS, ENOMEM …).
    pub accept_errors: AtomicU64,
    /// Connections waiting for a request head, closed to make room for a new one.
    pub evicted: AtomicU64,
    /// New connections closed at once: every slot was busy and none could be evicted.
    pub refused: AtomicU64,
    /// WebSocket upgrades refused (503): sessions held `max_connections - reserved_connections`.
    pub sessions_refused: AtomicU64,
    /// Connections closed (or requests answered `408`) for a timeout, by [`TIMEOUT_PHASES`].
    pub timeouts: [AtomicU64; TIMEOUT_PHASES.len()],
}

impl ConnCounters {
    fn render(&self, out: &mut String) {
        for (name, help, v) in [
            (
                "herald_http_connections",
                "Open client connections, WebSocket sessions included.",
                &self.open,
            ),
            (
                "herald_http_connections_limit",
                "http.max_connections in effect.",
                &self.limit,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "herald_accept_errors_total",
                "Failed accepts (descriptors or memory exhausted); each backs off instead of retrying at once.",
                &self.accept_errors,
            ),
            (
                "herald_http_connections_evicted_total",
                "Connections waiting for a request head, closed to make room for a new one.",
                &self.evicted,
            ),
            (
                "herald_http_connections_refused_total",
                "New connections closed at once: every slot was busy and none could be evicted.",
                &self.refused,
            ),
            (
                "herald_ws_sessions_refused_total",
                "Sessions (WebSocket upgrades and SSE streams) refused (503) because sessions held max_connections - reserved_connections.",
                &self.sessions_refused,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_http_timeouts_total Connections closed (header, keep_alive) or requests answered 408 (body) for a timeout.\n# TYPE herald_http_timeouts_total counter"
        );
        for (phase, n) in TIMEOUT_PHASES.iter().zip(&self.timeouts) {
            let _ = writeln!(
                out,
                "herald_http_timeouts_total{{phase=\"{phase}\"}} {}",
                n.load(Relaxed)
            );
        }
    }
}

/// Why a send was refused with `503` (admission control): the write queue or its memory
/// budget was full (`overloaded`), the database could not write (`unavailable`), or the
/// frames queued for this node's sessions were over `dispatch.fanout_backlog` (`backlog`).
pub const REFUSALS: [&str; 3] = ["overloaded", "unavailable", "backlog"];

/// One gauge in the Prometheus text format.
pub fn write_gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// The events of a failover chain's log (`routing::LogEntry::event`).
pub const ROUTE_EVENTS: [&str; 8] = [
    "started",
    "skipped",
    "failed",
    "timeout",
    "succeeded",
    "acknowledged",
    "exhausted",
    "expired",
];

impl Metrics {
    pub fn count_refusal(&self, reason: &str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.sends_refused[i].fetch_add(1, Relaxed);
        }
    }

    pub fn webhook_attempt(&self, a: &crate::model::webhook::Attempt) {
        use crate::model::webhook::Outcome;
        let i = match a.outcome {
            Outcome::Delivered => 0,
            Outcome::Retry { .. } => 1,
            Outcome::Failed => 2,
        };
        self.webhook_attempts[i].fetch_add(1, Relaxed);
        self.webhook_latency
            .observe(Duration::from_millis(a.latency_ms.max(0) as u64));
    }

    pub fn count_route_event(&self, event: &str) {
        if let Some(i) = ROUTE_EVENTS.iter().position(|e| *e == event) {
            self.route_events[i].fetch_add(1, Relaxed);
        }
    }

    pub fn new(instances: impl IntoIterator<Item = String>) -> Metrics {
        Metrics {
            channels: instances
                .into_iter()
                .map(|n| (n, ChannelCounters::default()))
                .collect(),
            ..Metrics::default()
        }
    }

    /// Instances with their kinds.
    pub fn with_kinds<'a>(instances: impl IntoIterator<Item = (&'a str, &'a str)>) -> Metrics {
        Metrics {
            channels: instances
                .into_iter()
                .map(|(n, k)| {
                    (
                        n.to_owned(),
                        ChannelCounters {
                            kind: k.to_owned(),
                            ..ChannelCounters::default()
                        },
                    )
                })
                .collect(),
            ..Metrics::default()
        }
    }

    pub fn channel(&self, name: &str) -> Option<&ChannelCounters> {
        self.channels.get(name)
    }

    /// Register the API keys (by name) that have a send rate limit.
    pub fn with_api_keys<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Metrics {
        self.api_rate_limited = names
            .into_iter()
            .map(|n| (n.to_owned(), AtomicU64::new(0)))
            .collect();
        self
    }

    /// A send refused by key `name`'s rate limit.
    pub fn count_api_rate_limited(&self, name: &str) {
        if let Some(c) = self.api_rate_limited.get(name) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "herald_connections",
            "Open sessions on this node (WebSocket and SSE).",
            self.connections.load(Relaxed),
        );
        gauge(
            "herald_sse_sessions",
            "Open Server-Sent Events sessions on this node (also in herald_connections).",
            self.sse_sessions.load(Relaxed),
        );
        let counters: [(&str, &str, &AtomicU64); 12] = [
            (
                "herald_broadcast_members_spilled_total",
                "Broadcast members still undelivered when the audience window ended.",
                &self.members_spilled,
            ),
            (
                "herald_connections_total",
                "Sessions opened (WebSocket and SSE).",
                &self.connections_total,
            ),
            (
                "herald_handshakes_rejected_total",
                "Session handshakes refused, WebSocket and SSE (bad token).",
                &self.handshake_rejected,
            ),
            (
                "herald_ws_handshakes_rate_limited_total",
                "Session handshakes, WebSocket and SSE, refused by websocket.handshake_rate_limit (429).",
                &self.ws_handshakes_limited,
            ),
            (
                "herald_slow_consumers_total",
                "Sessions closed because their outbound queue was full.",
                &self.slow_consumers,
            ),
            (
                "herald_dead_peers_total",
                "Sessions closed for missing pongs.",
                &self.dead_peers,
            ),
            (
                "herald_messages_accepted_total",
                "Messages accepted by the API.",
                &self.messages_accepted,
            ),
            (
                "herald_ws_frames_sent_total",
                "Message frames written to sessions (WebSocket and SSE).",
                &self.frames_sent,
            ),
            (
                "herald_ws_replayed_total",
                "Message frames replayed on connect.",
                &self.replayed,
            ),
            (
                "herald_ws_acks_total",
                "Acks and reads received.",
                &self.acks,
            ),
            (
                "herald_inbox_changes_total",
                "Inbox entries changed by seen/read/unread/archive/unarchive/ack/delete.",
                &self.inbox_changes,
            ),
            (
                "herald_status_write_errors_total",
                "Failed batched status writes.",
                &self.status_write_errors,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_webhook_attempts_total Webhook requests by outcome (retry: will be tried again; failed: given up).\n# TYPE herald_webhook_attempts_total counter"
        );
        for (i, outcome) in WEBHOOK_OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "herald_webhook_attempts_total{{outcome=\"{outcome}\"}} {}",
                self.webhook_attempts[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_webhook_endpoints_disabled_total Webhook endpoints disabled for failing longer than dispatch.webhooks.disable_after.\n# TYPE herald_webhook_endpoints_disabled_total counter\nherald_webhook_endpoints_disabled_total {}",
            self.webhooks_disabled.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP herald_webhook_request_seconds How long webhook requests took.\n# TYPE herald_webhook_request_seconds histogram"
        );
        self.webhook_latency
            .render(&mut out, "herald_webhook_request_seconds", "");
        let _ = writeln!(
            out,
            "# HELP herald_sends_refused_total Sends refused with 503 before anything was stored, by reason (admission control).\n# TYPE herald_sends_refused_total counter"
        );
        for (i, reason) in REFUSALS.iter().enumerate() {
            let _ = writeln!(
                out,
                "herald_sends_refused_total{{reason=\"{reason}\"}} {}",
                self.sends_refused[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_channel_info The kind (provider) of each channel instance; join on `channel` to count by provider.\n# TYPE herald_channel_info gauge"
        );
        for (name, c) in &self.channels {
            if !c.kind.is_empty() {
                let _ = writeln!(
                    out,
                    "herald_channel_info{{channel=\"{name}\",kind=\"{}\"}} 1",
                    c.kind
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP herald_deliveries_total Delivery status changes by channel instance and status.\n# TYPE herald_deliveries_total counter"
        );
        for (name, c) in &self.channels {
            for s in Status::ALL {
                let _ = writeln!(
                    out,
                    "herald_deliveries_total{{channel=\"{name}\",status=\"{s}\"}} {}",
                    c.get(s)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP herald_provider_errors_total Classified channel errors by instance and kind.\n# TYPE herald_provider_errors_total counter"
        );
        for (name, c) in &self.channels {
            for (i, kind) in ERROR_KINDS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "herald_provider_errors_total{{channel=\"{name}\",kind=\"{kind}\"}} {}",
                    c.errors[i].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP herald_delivery_retries_total Provider retries scheduled by channel instance.\n# TYPE herald_delivery_retries_total counter"
        );
        for (name, c) in &self.channels {
            let _ = writeln!(
                out,
                "herald_delivery_retries_total{{channel=\"{name}\"}} {}",
                c.retries.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_dead_tokens_total Push device tokens deactivated after a provider said they are gone.\n# TYPE herald_dead_tokens_total counter"
        );
        for (name, c) in &self.channels {
            let _ = writeln!(
                out,
                "herald_dead_tokens_total{{channel=\"{name}\"}} {}",
                c.dead_devices.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_quota_limit Daily quota of a channel instance (instances with one).\n# TYPE herald_quota_limit gauge"
        );
        for (name, c) in &self.channels {
            let limit = c.quota_limit.load(Relaxed);
            if limit > 0 {
                let _ = writeln!(out, "herald_quota_limit{{channel=\"{name}\"}} {limit}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP herald_quota_used Sends counted against the daily quota in the current window.\n# TYPE herald_quota_used gauge"
        );
        for (name, c) in &self.channels {
            if c.quota_limit.load(Relaxed) > 0 {
                let _ = writeln!(
                    out,
                    "herald_quota_used{{channel=\"{name}\"}} {}",
                    c.quota_used.load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP herald_delivery_latency_seconds Time from acceptance to hand-over (sent), by channel.\n# TYPE herald_delivery_latency_seconds histogram"
        );
        for (name, c) in &self.channels {
            c.latency.render(
                &mut out,
                "herald_delivery_latency_seconds",
                &format!("channel=\"{name}\","),
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_route_events_total Failover chain events (steps started, skipped, failed, timed out; chains succeeded, acknowledged, exhausted, expired).\n# TYPE herald_route_events_total counter"
        );
        for (event, n) in ROUTE_EVENTS.iter().zip(&self.route_events) {
            let _ = writeln!(
                out,
                "herald_route_events_total{{event=\"{event}\"}} {}",
                n.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_api_rate_limited_total Sends refused (429) by an API key's rate limit, by key name.\n# TYPE herald_api_rate_limited_total counter"
        );
        for (key, n) in &self.api_rate_limited {
            let _ = writeln!(
                out,
                "herald_api_rate_limited_total{{key=\"{key}\"}} {}",
                n.load(Relaxed)
            );
        }
        self.conns.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keeps_an_hour_per_minute() {
        let mut r = Recent::default();
        r.add(1000, Status::Sent, 2);
        r.add(1000, Status::Failed, 1);
        r.add(1030, Status::Sent, 5);
        let s = r.series(1030);
        assert_eq!(s[Status::Sent.code() as usize][RECENT_MINUTES - 1], 5);
        assert_eq!(s[Status::Sent.code() as usize][RECENT_MINUTES - 31], 2);
        assert_eq!(s[Status::Failed.code() as usize][RECENT_MINUTES - 31], 1);
        r.add(1070, Status::Read, 1);
        let s = r.series(1070);
        assert_eq!(
            s[Status::Sent.code() as usize].iter().sum::<u64>(),
            5,
            "minute 1000 fell out"
        );
        assert_eq!(r.minutes.len(), 2);
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new(["websocket".to_string()]);
        m.messages_accepted.fetch_add(3, Relaxed);
        let c = m.channel("websocket").unwrap();
        c.count(Status::Sent);
        c.latency.observe(Duration::from_millis(3));
        c.latency.observe(Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains("herald_messages_accepted_total 3"));
        assert!(text.contains("herald_deliveries_total{channel=\"websocket\",status=\"sent\"} 1"));
        assert!(text.contains(
            "herald_delivery_latency_seconds_bucket{channel=\"websocket\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "herald_delivery_latency_seconds_bucket{channel=\"websocket\",le=\"0.05\"} 2"
        ));
        assert!(text.contains("herald_delivery_latency_seconds_count{channel=\"websocket\"} 2"));
        m.conns.accept_errors.fetch_add(2, Relaxed);
        m.conns.timeouts[2].fetch_add(1, Relaxed);
        let text = m.render();
        assert!(text.contains("herald_accept_errors_total 2"), "{text}");
        assert!(
            text.contains("herald_http_timeouts_total{phase=\"body\"} 1"),
            "{text}"
        );
    }
}
