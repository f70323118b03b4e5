//! The access-token cache of `wechat.template`: one token per instance, refreshed by a
//! single caller at a time (single flight), with an injectable [`Clock`].
//!
//! * A token is used until `expires_in - 300` s after it was fetched (WeChat's stable token
//!   stays valid for its whole `expires_in`; the 5 minutes of margin cover clock skew and slow
//!   sends). WeChat never returns less than 300 s; should it, the token is reused for half its
//!   life instead of not at all.
//! * **Single flight.** The cache is a `tokio::sync::Mutex` held across the fetch: concurrent
//!   sends on a cold or stale cache queue behind the one that fetches and then use its token.
//!   If that fetch *failed*, the queued sends share its error instead of asking again one by
//!   one (a wrong secret or an unreachable endpoint answers every one of them the same way).
//! * **Rejected tokens.** After WeChat rejects a token (40001/42001/40014) the send asks for a
//!   forced refresh, but only if the cached token is still the rejected one: when several
//!   sends fail with the same token at once, the first forces a new token and the others use
//!   it. Forced refreshes are scarce (20 a day, 30 s apart).
//! * **Grace.** A refresh that fails for a passing reason (network, `-1`, quota) while the
//!   cached token has not actually expired yet (the 300 s margin) keeps using that token.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use herald_channel::ChannelError;

use crate::common::Secret;

/// Seconds before `expires_in` runs out at which the token is refreshed.
pub const REFRESH_MARGIN_SECS: u64 = 300;

/// The time source of the token cache and of quota retry times, injectable so expiry is
/// tested without sleeping ([`crate::template::TemplateChannel::with_clock`]).
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time: token expiry.
    fn now(&self) -> Instant;
    /// Wall-clock time: "until midnight Beijing time" for the daily quota (45009).
    fn wall(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A token as WeChat handed it out.
pub(crate) struct Fetched {
    pub token: Secret,
    pub expires_in: u64,
}

/// How long a token with this `expires_in` is used before it is refreshed.
pub(crate) fn reuse_for(expires_in: u64) -> Duration {
    Duration::from_secs(if expires_in > REFRESH_MARGIN_SECS {
        expires_in - REFRESH_MARGIN_SECS
    } else {
        expires_in / 2
    })
}

struct Cached {
    token: Secret,
    /// Refresh from here on.
    refresh_at: Instant,
    /// WeChat's own expiry: usable until here if a refresh fails for a passing reason.
    expires_at: Instant,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    /// The outcome of the last fetch, when it failed.
    last_error: Option<ChannelError>,
}

pub(crate) struct TokenCache {
    clock: Arc<dyn Clock>,
    state: tokio::sync::Mutex<State>,
    /// Fetches finished (either way): tells a queued caller that a fetch happened while it
    /// waited for the lock.
    fetches: AtomicU64,
    /// The last fetch's error for `health()`, readable without the async lock.
    failure: Mutex<Option<String>>,
}

impl TokenCache {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            state: tokio::sync::Mutex::new(State::default()),
            fetches: AtomicU64::new(0),
            failure: Mutex::new(None),
        }
    }

    /// The last token fetch's error, while no later fetch succeeded.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// A usable token: the cached one, or one `fetch(force_refresh)` gets. `rejected` is a
    /// token WeChat just refused: it is not handed out again, and the fetch is forced when
    /// it is still the cached one.
    pub(crate) async fn get<F, Fut>(
        &self,
        rejected: Option<&Secret>,
        fetch: F,
    ) -> Result<Secret, ChannelError>
    where
        F: FnOnce(bool) -> Fut,
        Fut: Future<Output = Result<Fetched, ChannelError>>,
    {
        let seen = self.fetches.load(Ordering::Acquire);
        let mut state = self.state.lock().await;
        let now = self.clock.now();
        let not_rejected = |c: &&Cached| rejected != Some(&c.token);
        if let Some(c) = state
            .current
            .as_ref()
            .filter(not_rejected)
            .filter(|c| now < c.refresh_at)
        {
            return Ok(c.token.clone());
        }
        if self.fetches.load(Ordering::Acquire) != seen {
            // A fetch finished while we waited for the lock, and it failed: share its
            // outcome rather than asking again at once.
            if let Some(err) = state.last_error.clone() {
                return Self::fallback(&state, now, rejected, err);
            }
        }

        let force = rejected.is_some()
            && state
                .current
                .as_ref()
                .is_none_or(|c| Some(&c.token) == rejected);
        let result = fetch(force).await;
        self.fetches.fetch_add(1, Ordering::AcqRel);
        let now = self.clock.now();
        match result {
            Ok(fetched) => {
                state.current = Some(Cached {
                    token: fetched.token.clone(),
                    refresh_at: now + reuse_for(fetched.expires_in),
                    expires_at: now + Duration::from_secs(fetched.expires_in),
                });
                state.last_error = None;
                self.set_failure(None);
                Ok(fetched.token)
            }
            Err(err) => {
                state.last_error = Some(err.clone());
                self.set_failure(Some(err.to_string()));
                if force {
                    // WeChat refused it: never hand it out again.
                    state.current = None;
                }
                Self::fallback(&state, now, rejected, err)
            }
        }
    }

    /// After a failed fetch: the cached token if it is not expired yet and the failure was
    /// a passing one, else the error.
    fn fallback(
        state: &State,
        now: Instant,
        rejected: Option<&Secret>,
        err: ChannelError,
    ) -> Result<Secret, ChannelError> {
        match state.current.as_ref() {
            Some(c) if err.is_retryable() && now < c.expires_at && rejected != Some(&c.token) => {
                Ok(c.token.clone())
            }
            _ => Err(err),
        }
    }

    fn set_failure(&self, failure: Option<String>) {
        if let Ok(mut f) = self.failure.lock() {
            *f = failure;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A clock that moves only when told to.
    pub(crate) struct ManualClock {
        start: Instant,
        offset: Mutex<Duration>,
    }

    impl ManualClock {
        pub(crate) fn new() -> Arc<Self> {
            Arc::new(Self {
                start: Instant::now(),
                offset: Mutex::new(Duration::ZERO),
            })
        }
        pub(crate) fn advance(&self, by: Duration) {
            *self.offset.lock().unwrap() += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.start + *self.offset.lock().unwrap()
        }
        fn wall(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + *self.offset.lock().unwrap()
        }
    }

    /// Fetches counted, tokens numbered `T1`, `T2`, …; `forced` records force_refresh.
    #[derive(Default)]
    struct Fetcher {
        calls: AtomicUsize,
        forced: Mutex<Vec<bool>>,
    }

    impl Fetcher {
        async fn fetch(&self, force: bool, expires_in: u64) -> Result<Fetched, ChannelError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.forced.lock().unwrap().push(force);
            Ok(Fetched {
                token: Secret::new(format!("T{n}")),
                expires_in,
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn reuse_periods() {
        assert_eq!(reuse_for(7200), secs(6900));
        assert_eq!(reuse_for(301), secs(1));
        assert_eq!(reuse_for(300), secs(150));
        assert_eq!(reuse_for(0), secs(0));
    }

    #[tokio::test]
    async fn cached_until_expires_in_minus_300() {
        let clock = ManualClock::new();
        let cache = TokenCache::new(clock.clone());
        let f = Fetcher::default();
        let get = || cache.get(None, |force| f.fetch(force, 7200));
        assert_eq!(get().await.unwrap().expose(), "T1");
        clock.advance(secs(6899));
        assert_eq!(get().await.unwrap().expose(), "T1");
        assert_eq!(f.calls(), 1);
        clock.advance(secs(1));
        assert_eq!(get().await.unwrap().expose(), "T2");
        assert_eq!(f.calls(), 2);
        assert_eq!(*f.forced.lock().unwrap(), vec![false, false]);
    }

    #[tokio::test]
    async fn a_rejected_token_forces_one_refresh() {
        let cache = TokenCache::new(ManualClock::new());
        let f = Fetcher::default();
        let t1 = cache.get(None, |force| f.fetch(force, 7200)).await.unwrap();
        let t2 = cache
            .get(Some(&t1), |force| f.fetch(force, 7200))
            .await
            .unwrap();
        assert_eq!(t2.expose(), "T2");
        // Another send that failed with T1 at the same time gets T2 without a fetch.
        let again = cache
            .get(Some(&t1), |force| f.fetch(force, 7200))
            .await
            .unwrap();
        assert_eq!(again.expose(), "T2");
        assert_eq!(*f.forced.lock().unwrap(), vec![false, true]);
    }

    #[tokio::test]
    async fn single_flight_on_a_cold_cache() {
        let cache = Arc::new(TokenCache::new(ManualClock::new()));
        let f = Arc::new(Fetcher::default());
        let (release, gate) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, f, mut gate) = (cache.clone(), f.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(None, |force| async move {
                        gate.wait_for(|open| *open).await.unwrap();
                        f.fetch(force, 7200).await
                    })
                    .await
            }));
        }
        // Current-thread runtime: let every task run up to the lock or the gate.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().expose(), "T1");
        }
        assert_eq!(f.calls(), 1);
    }

    #[tokio::test]
    async fn queued_callers_share_a_failure_then_the_next_one_retries() {
        let cache = Arc::new(TokenCache::new(ManualClock::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (cache, calls, mut gate) = (cache.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(None, |_| async move {
                        gate.wait_for(|open| *open).await.unwrap();
                        calls.fetch_add(1, Ordering::SeqCst);
                        Err::<Fetched, _>(ChannelError::config("invalid appsecret"))
                    })
                    .await
            }));
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for t in tasks {
            let err = t.await.unwrap().unwrap_err();
            assert_eq!(err.message(), "invalid appsecret");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            cache.failure().as_deref(),
            Some("config: invalid appsecret")
        );
        // A later send asks again, and success clears the failure.
        let f = Fetcher::default();
        cache.get(None, |force| f.fetch(force, 7200)).await.unwrap();
        assert_eq!(f.calls(), 1);
        assert_eq!(cache.failure(), None);
    }

    #[tokio::test]
    async fn a_passing_failure_keeps_the_unexpired_token() {
        let clock = ManualClock::new();
        let cache = TokenCache::new(clock.clone());
        let f = Fetcher::default();
        cache.get(None, |force| f.fetch(force, 7200)).await.unwrap();
        clock.advance(secs(7000)); // past the refresh point, before WeChat's expiry
        let down = |_| async { Err::<Fetched, _>(ChannelError::transient("cannot connect")) };
        assert_eq!(cache.get(None, down).await.unwrap().expose(), "T1");
        // A configuration failure does not fall back.
        let bad = |_| async { Err::<Fetched, _>(ChannelError::config("invalid appsecret")) };
        assert!(cache.get(None, bad).await.is_err());
        // Past WeChat's expiry: no fallback either.
        clock.advance(secs(200));
        assert!(cache.get(None, down).await.is_err());
        // A rejected token is never a fallback.
        let cache = TokenCache::new(ManualClock::new());
        let t1 = cache.get(None, |force| f.fetch(force, 7200)).await.unwrap();
        assert!(cache.get(Some(&t1), down).await.is_err());
        assert!(cache.get(None, down).await.is_err(), "T1 was dropped");
    }
}
