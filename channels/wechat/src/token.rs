//! The access-token cache of `wechat.template`: one token per official account (AppID) for
//! the whole cluster, kept in the core's shared cache ([`herald_channel::shared`]) and
//! refreshed by one caller in the cluster at a time, with a short-lived in-process copy in
//! front and the SDK's injectable [`Clock`] (the channel's `ctx.services` lend one, or
//! [`crate::template::TemplateChannel::with_clock`]).
//!
//! * **Shared.** The token lives under `herald:token:wechat:<appid>` ([`cache_key`]) for
//!   `expires_in - 300` s, together with its refresh and expiry times in unix seconds, so every
//!   node judges it by the wall clock. Instances with the same AppID, on one node or many,
//!   share it. WeChat is asked only when the shared cache holds no token, through
//!   [`get_or_refresh`]: one node refreshes, the others wait for its token. (WeChat's stable
//!   token stays valid for its whole `expires_in`; the 5 minutes of margin cover clock skew
//!   and slow sends. WeChat never returns less than 300 s; should it, the token is reused for
//!   half its life instead of not at all.)
//! * **In-process copy.** Each instance keeps the token it last read for at most
//!   [`LOCAL_RECHECK`] (and never past its refresh time), so a send costs no shared-cache
//!   round trip. The copy sits behind a `tokio::sync::Mutex` held across the lookup: the
//!   instance's concurrent sends queue behind one lookup and use its token. If that lookup's
//!   fetch *failed*, the queued sends share its error instead of asking again one by one (a
//!   wrong secret or an unreachable endpoint answers every one of them the same way).
//! * **Rejected tokens.** After WeChat rejects a token (40001/42001/40014) the send deletes
//!   exactly that token from the shared cache (`delete_if`: a fresher token another node
//!   stored meanwhile stays) and asks again: the first caller in the cluster to find the
//!   cache empty forces a refresh (`force_refresh: true`), every other send on every node gets
//!   its token. Forced refreshes are scarce (20 a day, 30 s apart).
//! * **Grace.** A refresh that fails for a passing reason (network, `-1`, quota) while the
//!   instance's copy has not actually expired yet (the 300 s margin) keeps using that copy.
//! * **Shared cache down.** [`get_or_refresh`] then fetches locally and the token is not
//!   shared (the stable token does not rotate, so that is safe, only less economical).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_channel::clock::Clock;
use herald_channel::shared::{get_or_refresh, Shared};
use herald_channel::ChannelError;
use serde::{Deserialize, Serialize};

use crate::common::Secret;

/// Seconds before `expires_in` runs out at which the token is refreshed.
pub const REFRESH_MARGIN_SECS: u64 = 300;

/// How long an instance trusts its in-process copy before reading the shared cache again
/// (so it picks up a token another node refreshed, before WeChat retires the old one).
pub const LOCAL_RECHECK: Duration = Duration::from_secs(60);

/// The shared cache's key for the token of `app_id`: independent of the instance, so every
/// instance (and node) with the same account shares one token.
pub fn cache_key(app_id: &str) -> String {
    format!("herald:token:wechat:{app_id}")
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

/// The shared cache's value: the token and its times (unix seconds).
#[derive(Serialize, Deserialize)]
struct Entry {
    token: String,
    /// Refresh from here on.
    refresh_at: u64,
    /// WeChat's own expiry.
    expires_at: u64,
}

impl Entry {
    fn encode(&self) -> String {
        // A struct of a string and two integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn decode(raw: &str) -> Option<Entry> {
        serde_json::from_str(raw).ok()
    }
}

/// The instance's copy of the shared token.
struct Cached {
    token: Secret,
    /// The shared cache's value it came from: what `delete_if` removes when it is refused.
    raw: String,
    /// Unix seconds: refresh from here on.
    refresh_at: u64,
    /// Unix seconds: WeChat's expiry; usable until here if a refresh fails for a passing
    /// reason.
    expires_at: u64,
    /// Read the shared cache again from here on.
    recheck_at: Instant,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    /// The outcome of the last lookup, when its fetch failed.
    last_error: Option<ChannelError>,
}

pub(crate) struct TokenCache {
    clock: Arc<dyn Clock>,
    shared: Shared,
    /// [`cache_key`] of the instance's AppID.
    key: String,
    state: tokio::sync::Mutex<State>,
    /// Lookups finished (either way): tells a queued caller that one happened while it
    /// waited for the lock.
    fetches: AtomicU64,
    /// The last fetch's error for `health()`, readable without the async lock.
    failure: Mutex<Option<String>>,
}

impl TokenCache {
    pub(crate) fn new(clock: Arc<dyn Clock>, shared: Shared, key: String) -> Self {
        Self {
            clock,
            shared,
            key,
            state: tokio::sync::Mutex::new(State::default()),
            fetches: AtomicU64::new(0),
            failure: Mutex::new(None),
        }
    }

    fn wall(&self) -> u64 {
        self.clock.unix_secs()
    }

    /// The last token fetch's error, while no later lookup succeeded.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// A usable token: the instance's copy, the shared one, or one `fetch(force_refresh)`
    /// gets (one caller in the cluster at a time). `rejected` is a token WeChat just
    /// refused: it is removed from the shared cache and not handed out again, and the fetch
    /// that replaces it is forced.
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
        let (now, wall) = (self.clock.instant(), self.wall());
        if let Some(c) = state.current.as_ref() {
            if rejected != Some(&c.token) && wall < c.refresh_at && now < c.recheck_at {
                return Ok(c.token.clone());
            }
        }
        if self.fetches.load(Ordering::Acquire) != seen {
            // A lookup finished while we waited for the lock, and its fetch failed: share
            // its outcome rather than asking again at once.
            if let Some(err) = state.last_error.clone() {
                return Self::fallback(&state, wall, rejected, err);
            }
        }
        // Invalidate, for the whole cluster, the copy WeChat refused or that is due for a
        // refresh; a fresher token another node stored meanwhile is left alone.
        if let Some(c) = state.current.as_ref() {
            if rejected == Some(&c.token) || wall >= c.refresh_at {
                let _ = self.shared.0.delete_if(&self.key, &c.raw).await;
            }
        }

        let result = self.lookup(rejected, fetch).await;
        self.fetches.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(cached) => {
                let token = cached.token.clone();
                state.current = Some(cached);
                state.last_error = None;
                self.set_failure(None);
                Ok(token)
            }
            Err(err) => {
                state.last_error = Some(err.clone());
                self.set_failure(Some(err.to_string()));
                if rejected.is_some() && state.current.as_ref().map(|c| &c.token) == rejected {
                    // WeChat refused it: never hand it out again.
                    state.current = None;
                }
                Self::fallback(&state, self.wall(), rejected, err)
            }
        }
    }

    /// The shared token, or a fetched one stored for the cluster. A shared token that is
    /// the `rejected` one or due for a refresh (by this node's clock) is deleted and looked
    /// up once more; a fetch made here is used as it is.
    async fn lookup<F, Fut>(
        &self,
        rejected: Option<&Secret>,
        fetch: F,
    ) -> Result<Cached, ChannelError>
    where
        F: FnOnce(bool) -> Fut,
        Fut: Future<Output = Result<Fetched, ChannelError>>,
    {
        let force = rejected.is_some();
        // Taken by the one refresh that runs (if any): `None` afterwards means "fetched here".
        let mut fetch = Some(fetch);
        for round in 0..2 {
            let slot = &mut fetch;
            let raw = get_or_refresh(self.shared.0.as_ref(), &self.key, move || async move {
                let fetch = slot
                    .take()
                    .ok_or_else(|| ChannelError::transient("access token: fetched twice"))?;
                let fetched = fetch(force).await?;
                let wall = self.wall();
                let reuse = reuse_for(fetched.expires_in);
                let entry = Entry {
                    token: fetched.token.expose().to_owned(),
                    refresh_at: wall + reuse.as_secs(),
                    expires_at: wall + fetched.expires_in,
                };
                Ok::<_, ChannelError>((entry.encode(), reuse))
            })
            .await?;
            let fetched_here = fetch.is_none();
            let wall = self.wall();
            match Entry::decode(&raw) {
                Some(entry)
                    if fetched_here
                        || (rejected.map(Secret::expose) != Some(entry.token.as_str())
                            // Past its refresh time by this node's clock, yet just stored
                            // by another node: the clocks differ; use it.
                            && (wall < entry.refresh_at || round == 1)) =>
                {
                    return Ok(Cached {
                        token: Secret::new(entry.token),
                        raw,
                        refresh_at: entry.refresh_at,
                        expires_at: entry.expires_at,
                        recheck_at: self.clock.instant() + LOCAL_RECHECK,
                    });
                }
                _ if round == 0 => {
                    let _ = self.shared.0.delete_if(&self.key, &raw).await;
                }
                _ => {}
            }
        }
        Err(ChannelError::transient(
            "access token: the shared cache still holds the token WeChat refused",
        ))
    }

    /// After a failed lookup: the instance's copy if it is not expired yet and the failure
    /// was a passing one, else the error.
    fn fallback(
        state: &State,
        wall: u64,
        rejected: Option<&Secret>,
        err: ChannelError,
    ) -> Result<Secret, ChannelError> {
        match state.current.as_ref() {
            Some(c) if err.is_retryable() && wall < c.expires_at && rejected != Some(&c.token) => {
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
mod tests {
    use super::*;
    use herald_channel::shared::LocalCache;
    use herald_channel::testkit::ManualClock;
    use std::sync::atomic::AtomicUsize;
    use std::time::UNIX_EPOCH;

    /// A clock that moves only when told to, its wall clock starting at the Unix epoch.
    fn manual_clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::at(UNIX_EPOCH))
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

    /// A cache shared by nobody else.
    fn alone(clock: Arc<dyn Clock>) -> TokenCache {
        node(clock, &Shared(Arc::new(LocalCache::default())))
    }

    /// One instance ("node") of a cluster whose shared cache is `shared`.
    fn node(clock: Arc<dyn Clock>, shared: &Shared) -> TokenCache {
        TokenCache::new(clock, shared.clone(), cache_key("wx0123456789abcdef"))
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
        let clock = manual_clock();
        let cache = alone(clock.clone());
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
        let cache = alone(manual_clock());
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
        let cache = Arc::new(alone(manual_clock()));
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
        let cache = Arc::new(alone(manual_clock()));
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
    async fn two_nodes_share_one_token_and_one_forced_refresh() {
        let shared = Shared(Arc::new(LocalCache::default()));
        let clock = manual_clock();
        let (a, b) = (node(clock.clone(), &shared), node(clock.clone(), &shared));
        let f = Fetcher::default();
        let t1 = a.get(None, |force| f.fetch(force, 7200)).await.unwrap();
        let from_b = b.get(None, |force| f.fetch(force, 7200)).await.unwrap();
        assert_eq!(from_b, t1);
        assert_eq!(f.calls(), 1, "B found A's token in the shared cache");

        // WeChat refuses T1 on A: one forced refresh; when B's copy is refused too, B takes
        // A's new token from the shared cache instead of forcing another one.
        let t2 = a
            .get(Some(&t1), |force| f.fetch(force, 7200))
            .await
            .unwrap();
        assert_eq!(t2.expose(), "T2");
        let from_b = b
            .get(Some(&t1), |force| f.fetch(force, 7200))
            .await
            .unwrap();
        assert_eq!(from_b, t2);
        assert_eq!(*f.forced.lock().unwrap(), vec![false, true]);

        // Another AppID is another token.
        let other = TokenCache::new(clock, shared.clone(), cache_key("wxfedcba9876543210"));
        let t3 = other.get(None, |force| f.fetch(force, 7200)).await.unwrap();
        assert_eq!(t3.expose(), "T3");
    }

    #[tokio::test]
    async fn a_node_rereads_the_shared_token_after_a_minute() {
        let shared = Shared(Arc::new(LocalCache::default()));
        let clock = manual_clock();
        let (a, b) = (node(clock.clone(), &shared), node(clock.clone(), &shared));
        let f = Fetcher::default();
        let t1 = a.get(None, |force| f.fetch(force, 7200)).await.unwrap();
        b.get(None, |force| f.fetch(force, 7200)).await.unwrap();
        let t2 = a
            .get(Some(&t1), |force| f.fetch(force, 7200))
            .await
            .unwrap();
        // B's copy is still T1 for up to a minute (no shared-cache round trip per send)…
        let get_b = || b.get(None, |force| f.fetch(force, 7200));
        assert_eq!(get_b().await.unwrap(), t1);
        // …then B reads the shared cache again and moves to T2 without a fetch.
        clock.advance(LOCAL_RECHECK);
        assert_eq!(get_b().await.unwrap(), t2);
        assert_eq!(f.calls(), 2);
    }

    #[tokio::test]
    async fn concurrent_nodes_on_a_cold_cache_fetch_once() {
        let shared = Shared(Arc::new(LocalCache::default()));
        let clock = manual_clock();
        let nodes = [
            Arc::new(node(clock.clone(), &shared)),
            Arc::new(node(clock.clone(), &shared)),
        ];
        let f = Arc::new(Fetcher::default());
        let (release, gate) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (cache, f, mut gate) = (nodes[i % 2].clone(), f.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(None, |force| async move {
                        gate.wait_for(|open| *open).await.unwrap();
                        f.fetch(force, 7200).await
                    })
                    .await
            }));
        }
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
    async fn the_shared_entry_carries_the_times() {
        let shared = Shared(Arc::new(LocalCache::default()));
        let clock = manual_clock();
        clock.advance(secs(1000));
        let a = node(clock.clone(), &shared);
        let f = Fetcher::default();
        a.get(None, |force| f.fetch(force, 7200)).await.unwrap();
        let raw = shared
            .0
            .get(&cache_key("wx0123456789abcdef"))
            .await
            .unwrap()
            .expect("stored for the cluster");
        let entry = Entry::decode(&raw).unwrap();
        assert_eq!(
            (entry.token.as_str(), entry.refresh_at, entry.expires_at),
            ("T1", 1000 + 6900, 1000 + 7200)
        );
        // An entry this version cannot read is replaced, not handed out.
        shared
            .0
            .set(&cache_key("wx0123456789abcdef"), "T0", secs(60))
            .await
            .unwrap();
        let b = node(clock.clone(), &shared);
        assert_eq!(
            b.get(None, |force| f.fetch(force, 7200))
                .await
                .unwrap()
                .expose(),
            "T2"
        );
    }

    #[tokio::test]
    async fn a_passing_failure_keeps_the_unexpired_token() {
        let clock = manual_clock();
        let cache = alone(clock.clone());
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
        let cache = alone(manual_clock());
        let t1 = cache.get(None, |force| f.fetch(force, 7200)).await.unwrap();
        assert!(cache.get(Some(&t1), down).await.is_err());
        assert!(cache.get(None, down).await.is_err(), "T1 was dropped");
    }
}
