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
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
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
    pub latency: Histogram,
}

impl ChannelCounters {
    pub fn count(&self, status: Status) {
        self.status[status.code() as usize].fetch_add(1, Relaxed);
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
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub handshake_rejected: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub dead_peers: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub frames_sent: AtomicU64,
    pub replayed: AtomicU64,
    pub acks: AtomicU64,
    pub status_write_errors: AtomicU64,
    /// Per channel instance; the key set is fixed at start (no lock on the hot path).
    pub channels: BTreeMap<String, ChannelCounters>,
}

impl Metrics {
    pub fn new(instances: impl IntoIterator<Item = String>) -> Metrics {
        Metrics {
            channels: instances
                .into_iter()
                .map(|n| (n, ChannelCounters::default()))
                .collect(),
            ..Metrics::default()
        }
    }

    pub fn channel(&self, name: &str) -> Option<&ChannelCounters> {
        self.channels.get(name)
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "herald_connections",
            "Open WebSocket sessions on this node.",
            self.connections.load(Relaxed),
        );
        let counters: [(&str, &str, &AtomicU64); 9] = [
            (
                "herald_connections_total",
                "WebSocket sessions opened.",
                &self.connections_total,
            ),
            (
                "herald_handshakes_rejected_total",
                "WebSocket handshakes refused (bad token).",
                &self.handshake_rejected,
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
                "Message frames written to WebSocket sessions.",
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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
