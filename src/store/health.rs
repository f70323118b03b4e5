//! Whether the store can write right now, and why not. Both backends set it from their
//! write path; `/readyz` and the send path read it. A failure is logged when it starts
//! (and again if the reason changes or after a quiet minute), recovery once: a full disk
//! under load makes one log line a minute, not one per request.

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
    reason: Option<String>,
    logged_at: Option<Instant>,
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
        let changed = s.reason.as_deref() != Some(reason);
        let quiet = s
            .logged_at
            .is_none_or(|t| now.duration_since(t) >= RELOG_AFTER);
        if changed || quiet {
            tracing::error!(
                reason,
                "the database cannot write: sends are refused with 503 until it can"
            );
            s.logged_at = Some(now);
        }
        if s.since.is_none() {
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
        if let Some(since) = s.since.take() {
            tracing::warn!(
                after_ms = since.elapsed().as_millis() as u64,
                "the database writes again: sends are accepted"
            );
        }
        s.reason = None;
        s.logged_at = None;
        self.failing.store(false, Ordering::Release);
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
}
