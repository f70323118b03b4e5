//! Whether the store can write right now, and why not. Both backends set it from their
//! write path; `/readyz` and the send path read it. A failure is logged when it starts, and
//! again only if the reason changes or a quiet minute has passed — also across short
//! recoveries: a database at its size limit can still fit a small write now and then, and
//! that flapping must not make one log line per request. Recovery is logged once per
//! logged failure; relapses kept quiet are counted in the next failure line (`relapses`).
//! `/readyz` and `herald_sends_refused_total` always show the current state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the same failure stays quiet in the log.
const RELOG_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Health {
    failing: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Why writes fail now; `None` while they succeed.
    reason: Option<String>,
    /// The failure last logged and when; kept across recoveries so a relapse within
    /// `RELOG_AFTER` stays quiet.
    logged: Option<(String, Instant)>,
    /// A logged failure whose recovery has not been logged yet.
    announced: bool,
    /// Failures since the last log line that were kept quiet.
    relapses: u64,
    /// When the current failure began.
    since: Option<Instant>,
}

impl Health {
    /// `None` while writes succeed; else why they fail.
    pub fn failing(&self) -> Option<String> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.lock().reason.clone()
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Writes fail for `reason` (e.g. "disk full").
    pub fn fail(&self, reason: &str) {
        let mut s = self.lock();
        let now = Instant::now();
        let starts = s.reason.is_none();
        let log = match &s.logged {
            Some((last, at)) => last != reason || now.duration_since(*at) >= RELOG_AFTER,
            None => true,
        };
        if log {
            tracing::error!(
                reason,
                relapses = s.relapses,
                "the database cannot write: sends are refused with 503 until it can"
            );
            s.logged = Some((reason.to_owned(), now));
            s.announced = true;
            s.relapses = 0;
        } else if starts {
            s.relapses += 1;
        }
        if starts {
            s.since = Some(now);
        }
        s.reason = Some(reason.to_owned());
        self.failing.store(true, Ordering::Release);
    }

    /// A write succeeded.
    pub fn ok(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.lock();
        let since = s.since.take();
        if std::mem::take(&mut s.announced) {
            tracing::warn!(
                after_ms = since.map_or(0, |t| t.elapsed().as_millis() as u64),
                "the database writes again: sends are accepted"
            );
        }
        s.reason = None;
        self.failing.store(false, Ordering::Release);
    }

    /// Failures kept out of the log since its last failure line (for tests).
    #[cfg(test)]
    fn relapses(&self) -> u64 {
        self.lock().relapses
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_then_recovered() {
        let h = Health::default();
        assert_eq!(h.failing(), None);
        h.fail("disk full");
        h.fail("disk full");
        assert_eq!(h.failing().as_deref(), Some("disk full"));
        assert!(h.is_failing());
        h.ok();
        assert_eq!(h.failing(), None);
        assert!(!h.is_failing());
    }

    #[test]
    fn a_relapse_within_the_quiet_minute_is_counted_not_logged() {
        let h = Health::default();
        h.fail("disk full");
        assert_eq!(h.relapses(), 0);
        h.ok();
        h.fail("disk full");
        h.fail("disk full");
        assert_eq!(h.relapses(), 1, "one relapse, however many refused writes");
        assert_eq!(h.failing().as_deref(), Some("disk full"));
        h.ok();
        h.fail("I/O error");
        assert_eq!(h.relapses(), 0, "a new reason is logged, with the count");
    }
}
