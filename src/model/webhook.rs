//! Webhooks (docs/webhooks.md): endpoints, the event types they subscribe to, and the
//! outbox rows the worker claims. Events are written by the database in the transaction of
//! the change that causes them (`migrations/*/…webhooks.sql`); nothing here sends.

use crate::config::Secret;

/// The event types, with the bit each has in `webhooks.events` (the same numbers are in
/// the migrations' triggers: a delivery status's bit is `1 << status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    MessageAccepted = 1,
    DeliverySent = 2,
    DeliveryDelivered = 4,
    DeliveryRead = 8,
    DeliveryFailed = 16,
    RouteSucceeded = 32,
    RouteExhausted = 64,
    DeviceDeactivated = 128,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::MessageAccepted,
        EventType::DeliverySent,
        EventType::DeliveryDelivered,
        EventType::DeliveryRead,
        EventType::DeliveryFailed,
        EventType::RouteSucceeded,
        EventType::RouteExhausted,
        EventType::DeviceDeactivated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageAccepted => "message.accepted",
            EventType::DeliverySent => "delivery.sent",
            EventType::DeliveryDelivered => "delivery.delivered",
            EventType::DeliveryRead => "delivery.read",
            EventType::DeliveryFailed => "delivery.failed",
            EventType::RouteSucceeded => "route.succeeded",
            EventType::RouteExhausted => "route.exhausted",
            EventType::DeviceDeactivated => "device.deactivated",
        }
    }

    pub fn bit(self) -> i64 {
        self as i64
    }

    /// The bits of `names`; `*` is every type. The error names the unknown one.
    pub fn bits_of<S: AsRef<str>>(names: &[S]) -> Result<i64, String> {
        if names.is_empty() {
            return Err("must list at least one event type (or \"*\")".into());
        }
        let mut bits = 0;
        for n in names {
            let n = n.as_ref();
            if n == "*" {
                bits |= Self::ALL.iter().map(|t| t.bit()).sum::<i64>();
                continue;
            }
            let t = Self::ALL.iter().find(|t| t.as_str() == n).ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown event type `{n}`; known: {}", known.join(", "))
            })?;
            bits |= t.bit();
        }
        Ok(bits)
    }

    /// The names of `bits`, in [`EventType::ALL`] order.
    pub fn names_of(bits: i64) -> Vec<&'static str> {
        Self::ALL
            .iter()
            .filter(|t| bits & t.bit() != 0)
            .map(|t| t.as_str())
            .collect()
    }
}

/// Where an endpoint was defined: `[[webhooks]]` ones are replaced at every start and can
/// not be changed through the API (except enabling and disabling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    Config,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Config => "config",
        }
    }

    pub fn parse(s: &str) -> Source {
        if s == "config" {
            Source::Config
        } else {
            Source::Api
        }
    }
}

/// A webhook endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub description: String,
    /// [`EventType`] bits.
    pub events: i64,
    /// Channel instances whose events it wants; `None`: all.
    pub channels: Option<Vec<String>>,
    /// Message types; `None`: all.
    pub types: Option<Vec<i64>>,
    /// Senders; `None`: all.
    pub senders: Option<Vec<String>>,
    pub secret: Secret,
    /// The secret before the last rotation, still signing until `old_until_ms`.
    pub old_secret: Option<Secret>,
    pub old_until_ms: Option<i64>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// The first failed attempt since the last success.
    pub failing_since_ms: Option<i64>,
    pub source: Source,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Endpoint {
    /// The secrets that sign a request sent at `now_ms`: the current one, and during a
    /// rotation's overlap the previous one.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<&Secret> {
        let mut s = vec![&self.secret];
        if let (Some(old), Some(until)) = (&self.old_secret, self.old_until_ms) {
            if now_ms < until {
                s.push(old);
            }
        }
        s
    }
}

/// Counts of an endpoint's events by state, for listings and the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending: u64,
    pub failed: u64,
}

/// An event claimed for sending, under a lease.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Row id; the `webhook-id` header is `evt_<row>`.
    pub row: i64,
    pub endpoint_id: String,
    pub kind: String,
    /// The JSON object sent as `data`.
    pub data: String,
    /// When the change happened (the body's `timestamp`).
    pub created_at_ms: i64,
    /// Attempts including this one.
    pub attempts: i64,
    /// The lease; the outcome is recorded only while it holds.
    pub lease_until_ms: i64,
}

/// What became of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again at this time.
    Retry {
        at_ms: i64,
    },
    /// Given up: a permanent answer, or retried for too long.
    Failed,
}

/// One finished attempt, to record.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub row: i64,
    pub endpoint_id: String,
    pub lease_until_ms: i64,
    pub at_ms: i64,
    pub latency_ms: i64,
    /// HTTP status; `None` when there was no response.
    pub code: Option<u16>,
    /// The first bytes of the response body.
    pub response: Option<String>,
    pub error: Option<String>,
    pub outcome: Outcome,
}

/// An attempt as `GET /api/v1/webhooks/{id}/attempts` lists it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub id: i64,
    pub event_row: i64,
    pub kind: String,
    pub at_ms: i64,
    pub latency_ms: i64,
    pub code: Option<u16>,
    pub response: Option<String>,
    pub error: Option<String>,
    /// The event's state now: 0 pending, 1 delivered, 2 failed.
    pub event_state: i64,
}

/// What `POST /api/v1/webhooks/{id}/redeliver` sends again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeliver {
    /// One event, by row.
    Event(i64),
    /// Every event that happened in `[since, until)` (ms).
    Range { since_ms: i64, until_ms: i64 },
}

/// Check an endpoint id: 1–64 characters of `a-z 0-9 _ -`.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("must be 1–64 characters of a-z, 0-9, `_` and `-`".into())
    }
}

/// Check an endpoint URL: `http(s)://host…`, no credentials, and a host the allow-list
/// (`example.com` exactly, `*.example.com` for subdomains; empty: any) admits.
pub fn check_url(url: &str, allow_hosts: &[String]) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!(
            "scheme `{}` is not allowed: use http:// or https://",
            u.scheme()
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not hold credentials (the signature authenticates requests)".into());
    }
    let Some(host) = u.host_str() else {
        return Err("has no host".into());
    };
    let host = host.to_ascii_lowercase();
    let allowed = allow_hosts.is_empty()
        || allow_hosts.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            match a.strip_prefix("*.") {
                Some(parent) => host.ends_with(&format!(".{parent}")),
                None => host == a,
            }
        });
    if !allowed {
        return Err(format!(
            "host `{host}` is not in dispatch.webhooks.allow_hosts"
        ));
    }
    Ok(())
}

/// The HMAC key of a `whsec_…` secret (Standard Webhooks: base64 after the prefix).
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or("must start with `whsec_`")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "must be `whsec_` followed by base64")?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "must hold 24–64 bytes after `whsec_` (it holds {})",
            key.len()
        ));
    }
    Ok(key)
}

/// A new random secret: `whsec_` and base64 of 32 bytes.
pub fn new_secret() -> Secret {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    Secret::new(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// The event state codes in `webhook_events.state`.
pub const PENDING: i64 = 0;
pub const DELIVERED: i64 = 1;
pub const FAILED: i64 = 2;

/// `evt_<row>`, the `webhook-id` of an event; [`row_of`] reads it back.
pub fn event_id(row: i64) -> String {
    format!("evt_{row}")
}

pub fn row_of(id: &str) -> Option<i64> {
    id.strip_prefix("evt_")?.parse().ok().filter(|r| *r > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bits_round_trip_and_name_the_unknown() {
        let bits = EventType::bits_of(&["delivery.failed", "route.exhausted"]).unwrap();
        assert_eq!(bits, 16 | 64);
        assert_eq!(
            EventType::names_of(bits),
            vec!["delivery.failed", "route.exhausted"]
        );
        assert_eq!(EventType::bits_of(&["*"]).unwrap(), 255);
        let e = EventType::bits_of(&["delivery.lost"]).unwrap_err();
        assert!(e.contains("delivery.lost"), "{e}");
        assert!(EventType::bits_of::<&str>(&[]).is_err());
        // The triggers rely on a status's bit being 1 << status.
        for s in crate::model::Status::ALL.into_iter().skip(1) {
            let t = EventType::ALL
                .into_iter()
                .find(|t| t.as_str() == format!("delivery.{}", s.as_str()))
                .unwrap();
            assert_eq!(t.bit(), 1 << s.code());
        }
    }

    #[test]
    fn urls_ids_and_secrets_are_checked() {
        assert!(check_url("https://hooks.example.com/x?y=1", &[]).is_ok());
        assert!(check_url("ftp://example.com/", &[])
            .unwrap_err()
            .contains("ftp"));
        assert!(check_url("http://user:pw@example.com/", &[]).is_err());
        assert!(check_url("not a url", &[]).is_err());
        let allow = vec!["example.com".to_string(), "*.internal".to_string()];
        assert!(check_url("http://example.com/", &allow).is_ok());
        assert!(check_url("http://a.b.internal:8080/", &allow).is_ok());
        assert!(check_url("http://evil.com/", &allow)
            .unwrap_err()
            .contains("evil.com"));
        assert!(check_url("http://internal/", &allow).is_err());
        assert!(check_id("billing-1").is_ok());
        assert!(check_id("Billing").is_err());
        assert!(check_id("").is_err());
        let s = new_secret();
        assert_eq!(secret_key(s.expose()).unwrap().len(), 32);
        assert!(secret_key("whsec_short").is_err());
        assert!(secret_key("nope").unwrap_err().contains("whsec_"));
    }

    #[test]
    fn event_ids() {
        assert_eq!(row_of(&event_id(42)), Some(42));
        assert_eq!(row_of("evt_x"), None);
        assert_eq!(row_of("42"), None);
    }
}
