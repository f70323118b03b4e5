//! The one clock of Herald and its channels: the outbox's due times and backoff, token
//! caches' expiry, JWT `iat`, "until midnight Beijing time". Injectable, so tests move time
//! instead of sleeping ([`crate::testkit::ManualClock`]).
//!
//! A channel takes its clock from the services it is built with ([`from_services`]): the
//! system clock unless a host or a test lends another one.
//!
//! ```
//! use std::sync::Arc;
//! use herald_channel::clock::{self, Clock};
//! use herald_channel::testkit::ManualClock;
//! use herald_channel::Services;
//!
//! let manual = ManualClock::at_unix_secs(1_800_000_000);
//! let mut services = Services::default();
//! services.insert::<Arc<dyn Clock>>(Arc::new(manual.clone()));
//! let clock = clock::from_services(&services); // what a channel's `build` does
//! manual.advance(std::time::Duration::from_secs(60));
//! assert_eq!(clock.unix_secs(), 1_800_000_060);
//! ```

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::Services;

/// A source of time. Implement [`Clock::instant`] and [`Clock::wall`]; the rest derive from
/// `wall`.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time, for how long something was kept on this node (an in-process copy of
    /// a token).
    fn instant(&self) -> Instant;

    /// Wall-clock time, which every node of a cluster judges alike (token refresh and
    /// expiry, due times).
    fn wall(&self) -> SystemTime;

    /// [`Clock::wall`] in seconds since the Unix epoch (0 before it).
    fn unix_secs(&self) -> u64 {
        self.wall()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// [`Clock::wall`] in milliseconds since the Unix epoch (negative before it): the
    /// outbox's time.
    fn now_ms(&self) -> i64 {
        match self.wall().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// The system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn instant(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The clock lent through `services` (an `Arc<dyn Clock>`, inserted by a host or a test),
/// or the [`SystemClock`].
pub fn from_services(services: &Services) -> Arc<dyn Clock> {
    services
        .get::<Arc<dyn Clock>>()
        .unwrap_or_else(|| Arc::new(SystemClock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::ManualClock;
    use std::time::Duration;

    #[test]
    fn derived_times() {
        let c = ManualClock::at(UNIX_EPOCH + Duration::from_millis(1_500));
        assert_eq!(c.unix_secs(), 1);
        assert_eq!(c.now_ms(), 1_500);
        let before = ManualClock::at(UNIX_EPOCH - Duration::from_millis(20));
        assert_eq!(before.unix_secs(), 0);
        assert_eq!(before.now_ms(), -20);
    }

    #[test]
    fn services_lend_a_clock_or_the_system_one() {
        let system = from_services(&Services::default());
        let now = SystemTime::now();
        let read = system.wall();
        assert!(read.duration_since(now).unwrap_or_default() < Duration::from_secs(60));

        let manual = ManualClock::at_unix_secs(1_000);
        let mut services = Services::default();
        services.insert::<Arc<dyn Clock>>(Arc::new(manual.clone()));
        let lent = from_services(&services);
        let start = lent.instant();
        manual.advance(Duration::from_secs(5));
        assert_eq!(lent.unix_secs(), 1_005);
        assert_eq!(lent.instant() - start, Duration::from_secs(5));
    }
}
