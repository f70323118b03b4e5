//! Abuse limits of the HTTP surface: the per-API-key send limit and the per-IP WebSocket
//! handshake limit (governor GCRA, in memory, per process — like the outbox's `rate_limit`s,
//! they restart with it). Which key may do what is in `crate::auth` (`ApiKeys`, `Scope`).

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{rate_limit_is_off, ConfigError, Rate};

/// A request over a limit: `429` with `Retry-After` (whole seconds, at least 1) and a JSON
/// error. Nothing behind the limit has run.
#[derive(Debug)]
pub struct TooManyRequests {
    retry_after: Duration,
    message: String,
}

impl TooManyRequests {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// A token bucket for `rate`: cells spread evenly over the period, a burst of the whole
/// count ("2/min" = 2 at once, then one every 30 s). `None` when the rate is too fast to
/// limit anything (less than a nanosecond per cell).
fn quota(rate: Rate) -> Option<Quota> {
    Quota::with_period(rate.per / rate.count.get()).map(|q| q.allow_burst(rate.count))
}

/// Parse an optional limit: absent, `"0"` or `"off"` → `None`.
pub fn parse_optional(path: &str, value: Option<&str>) -> Result<Option<Rate>, ConfigError> {
    match value {
        Some(v) if !rate_limit_is_off(v) => Rate::parse(v)
            .map(Some)
            .map_err(|m| ConfigError::Invalid(format!("{path}: {m}"))),
        _ => Ok(None),
    }
}

/// The send limit of one API key (`rate_limit` / `api_key_rate_limit`).
pub struct SendLimiter {
    /// As configured, for messages.
    text: String,
    rate: Rate,
    limiter: DefaultDirectRateLimiter,
}

impl SendLimiter {
    pub fn new(rate: Rate, text: &str) -> Option<SendLimiter> {
        Some(SendLimiter {
            text: text.trim().to_owned(),
            rate,
            limiter: RateLimiter::direct(quota(rate)?),
        })
    }

    /// Take one send for key `name` from the cluster's shared budget (Redis); when the
    /// shared store does not answer, from this node's own limiter.
    pub async fn take_shared(
        &self,
        name: &str,
        shared: &dyn crate::dispatch::outbox::SharedRate,
    ) -> Result<(), TooManyRequests> {
        match shared.take(&format!("apikey:{name}"), self.rate, 1).await {
            Ok((0, wait)) => Err(TooManyRequests {
                retry_after: wait,
                message: self.message(name),
            }),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, key = name, "shared send limit unavailable; using this node's");
                self.take(name)
            }
        }
    }

    fn message(&self, name: &str) -> String {
        format!(
            "send rate limit of API key \"{name}\" ({}) exceeded",
            self.text
        )
    }

    /// Take one send for key `name`, or say how long until the next one.
    pub fn take(&self, name: &str) -> Result<(), TooManyRequests> {
        self.limiter.check().map_err(|not_until| TooManyRequests {
            retry_after: not_until.wait_time_from(self.limiter.clock().now()),
            message: self.message(name),
        })
    }
}

/// Handshakes counted between two sweeps of idle addresses.
const SWEEP_EVERY: u64 = 1024;
/// Most client addresses tracked at once; beyond that the table starts afresh.
const MAX_TRACKED: usize = 100_000;

/// `websocket.handshake_rate_limit`: WebSocket handshakes per client address, checked
/// before the token. The table of addresses stays bounded: every [`SWEEP_EVERY`] checks,
/// addresses whose bucket is full again are dropped (`retain_recent`), and if more than
/// [`MAX_TRACKED`] are still recent (a flood from that many addresses, which no per-address
/// limit can stop) the table starts afresh.
pub struct HandshakeLimiter {
    text: String,
    quota: Quota,
    limiter: Mutex<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    checks: AtomicU64,
    sweep_every: u64,
    max_tracked: usize,
}

impl HandshakeLimiter {
    /// From `websocket.handshake_rate_limit`; `None` when it is off.
    pub fn from_setting(value: Option<&str>) -> Result<Option<HandshakeLimiter>, ConfigError> {
        let Some(rate) = parse_optional("websocket.handshake_rate_limit", value)? else {
            return Ok(None);
        };
        Ok(Self::with_bounds(
            rate,
            value.unwrap_or_default(),
            SWEEP_EVERY,
            MAX_TRACKED,
        ))
    }

    fn with_bounds(
        rate: Rate,
        text: &str,
        sweep_every: u64,
        max_tracked: usize,
    ) -> Option<HandshakeLimiter> {
        let quota = quota(rate)?;
        Some(HandshakeLimiter {
            text: text.trim().to_owned(),
            quota,
            limiter: Mutex::new(Arc::new(RateLimiter::keyed(quota))),
            checks: AtomicU64::new(0),
            sweep_every: sweep_every.max(1),
            max_tracked,
        })
    }

    /// Count one handshake from `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), TooManyRequests> {
        let limiter = self.current();
        let outcome = limiter.check_key(&client_key(ip));
        if self.checks.fetch_add(1, Relaxed) % self.sweep_every == self.sweep_every - 1 {
            self.sweep(&limiter);
        }
        outcome.map_err(|not_until| TooManyRequests {
            retry_after: not_until.wait_time_from(limiter.clock().now()),
            message: format!(
                "too many WebSocket handshakes from this address (websocket.handshake_rate_limit = {})",
                self.text
            ),
        })
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.current().len()
    }

    fn current(&self) -> Arc<DefaultKeyedRateLimiter<IpAddr>> {
        self.limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn sweep(&self, limiter: &DefaultKeyedRateLimiter<IpAddr>) {
        limiter.retain_recent();
        if limiter.len() > self.max_tracked {
            tracing::warn!(
                tracked = limiter.len(),
                "handshakes from more client addresses than the limiter tracks; starting afresh"
            );
            *self.limiter.lock().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(RateLimiter::keyed(self.quota));
        }
    }
}

/// The key an address is limited under: IPv4 (IPv4-mapped IPv6 included) as is; IPv6 by
/// its /64, which one host or subscriber usually holds whole.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKeySettings, Secret, Settings};
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;

    fn rate(s: &str) -> Rate {
        Rate::parse(s).unwrap()
    }

    #[test]
    fn send_limit_allows_the_burst_then_says_when() {
        let l = SendLimiter::new(rate("2/min"), "2/min").unwrap();
        assert!(l.take("k").is_ok());
        assert!(l.take("k").is_ok());
        let e = l.take("k").unwrap_err();
        // One cell every 30 s: the wait is at most that, and never announced as 0.
        assert!((1..=30).contains(&e.retry_after_secs()), "{e:?}");
        assert!(
            e.message.contains("\"k\"") && e.message.contains("2/min"),
            "{e:?}"
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let t = |ms| TooManyRequests {
            retry_after: Duration::from_millis(ms),
            message: String::new(),
        };
        assert_eq!(t(0).retry_after_secs(), 1);
        assert_eq!(t(1).retry_after_secs(), 1);
        assert_eq!(t(1000).retry_after_secs(), 1);
        assert_eq!(t(1001).retry_after_secs(), 2);
        assert_eq!(t(29_500).retry_after_secs(), 30);
    }

    #[test]
    fn too_many_requests_response() {
        let r = TooManyRequests {
            retry_after: Duration::from_millis(1500),
            message: "over".into(),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn handshakes_are_limited_per_address() {
        let l = HandshakeLimiter::from_setting(Some("2/min"))
            .unwrap()
            .unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.check(a).is_ok() && l.check(a).is_ok());
        assert!(l.check(a).is_err());
        assert!(l.check(b).is_ok(), "another address has its own budget");
        // The IPv4-mapped form is the same client.
        assert!(l.check("::ffff:192.0.2.1".parse().unwrap()).is_err());
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let l = HandshakeLimiter::from_setting(Some("1/min"))
            .unwrap()
            .unwrap();
        assert!(l.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(l.check("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(l.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn off_values_disable_the_handshake_limit() {
        for off in [None, Some("0"), Some("off"), Some("")] {
            assert!(
                HandshakeLimiter::from_setting(off).unwrap().is_none(),
                "{off:?}"
            );
        }
        let err = HandshakeLimiter::from_setting(Some("fast")).err().unwrap();
        assert!(
            err.to_string().contains("websocket.handshake_rate_limit"),
            "{err}"
        );
    }

    #[test]
    fn the_address_table_stays_bounded() {
        // Addresses that are all still recent (1/h): the table starts afresh past the cap.
        let l = HandshakeLimiter::with_bounds(rate("1/h"), "1/h", 64, 500).unwrap();
        for i in 0..10_000u32 {
            let _ = l.check(IpAddr::V4(i.into()));
            assert!(l.tracked() <= 500 + 64, "{} tracked", l.tracked());
        }
    }

    #[test]
    fn limits_config_errors_name_the_key() {
        let key = |name: &str, key: &str, scopes: &[&str], rate: Option<&str>| ApiKeySettings {
            name: name.into(),
            key: Secret::new(key),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            rate_limit: rate.map(str::to_owned),
        };
        let good = "0123456789abcdef-reports";
        let check = |keys: Vec<ApiKeySettings>, expect: &[&str]| {
            let s = Settings {
                api_keys: keys,
                ..Settings::default()
            };
            let err = s.validate().unwrap_err().to_string();
            for e in expect {
                assert!(err.contains(e), "{err:?} should contain {e:?}");
            }
            assert!(!err.contains(good), "the key leaked: {err}");
        };
        check(
            vec![key("reports", good, &["sned"], None)],
            &["api_keys[0] (\"reports\").scopes", "sned"],
        );
        check(
            vec![key("reports", good, &[], None)],
            &["api_keys[0]", "scopes"],
        );
        check(
            vec![key("reports", "", &["send"], None)],
            &["api_keys[0]", "key", "empty"],
        );
        check(
            vec![key("reports", "short", &["send"], None)],
            &["key", "16"],
        );
        check(
            vec![
                key("a", good, &["send"], None),
                key("b", good, &["admin"], None),
            ],
            &["api_keys[1] (\"b\").key", "twice"],
        );
        check(
            vec![
                key("a", good, &["send"], None),
                key("a", "another-key-0123456789", &["admin"], None),
            ],
            &["api_keys[1] (\"a\").name"],
        );
        check(
            vec![key("api_key", good, &["send"], None)],
            &["name", "main api_key"],
        );
        check(
            vec![key("bad name", good, &["send"], None)],
            &["api_keys[0].name"],
        );
        check(
            vec![key("reports", good, &["send"], Some("fast"))],
            &["api_keys[0] (\"reports\").rate_limit"],
        );
        // The main key counts for duplicates too.
        let s = Settings {
            api_key: Some(Secret::new(good)),
            api_keys: vec![key("reports", good, &["send"], None)],
            ..Settings::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("twice"));

        let mut s = Settings {
            api_key_rate_limit: Some("10/fortnight".into()),
            ..Settings::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("api_key_rate_limit"));
        s.api_key_rate_limit = Some("10/s".into());
        s.websocket.handshake_rate_limit = Some("x/s".into());
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("websocket.handshake_rate_limit"), "{err}");
        s.websocket.handshake_rate_limit = Some("off".into());
        s.validate().unwrap();

        for (origins, bad) in [
            (vec!["https://app.example.com/"], "allowed_origins[0]"),
            (vec!["app.example.com"], "allowed_origins[0]"),
            (vec!["https://a.example", "*"], "allowed_origins[1]"),
        ] {
            s.http.cors.allowed_origins = origins.iter().map(|o| o.to_string()).collect();
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("http.cors.{bad}")), "{err}");
        }
        s.http.cors.allowed_origins =
            vec!["https://a.example".into(), "http://localhost:3000".into()];
        s.validate().unwrap();
        s.http.cors.allowed_origins = vec!["*".into()];
        s.validate().unwrap();
    }
}
