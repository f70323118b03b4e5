//! Fakes for tests (cargo feature `testing`), one file per provider: a local stand-in for
//! Google's OAuth token endpoint and the FCM HTTP v1 API ([`fcm`]), for Apple's provider
//! API over HTTP/2 ([`apns`]) and a Web Push service that verifies VAPID and decrypts like
//! a browser ([`webpush`]). They check every request as the vendor does and answer with its
//! documented replies.
//!
//! Here: a cluster's shared cache for the tests ([`WatchedCache`]), the core's in-process
//! [`LocalCache`], watched. Channel instances built with [`WatchedCache::services`] share it
//! the way the nodes of a cluster share Redis. It tells when a caller found the refresh
//! lock taken (one "node" waits for another's token) and can hold the storing of a new
//! token, so a test can make two nodes overlap without sleeping. And the clock the tests
//! move ([`test_clock`]), which the channels read through their services and the APNs
//! stand-in shares.
//!
//! Used by this crate's tests and by the server's end-to-end `tests/push.rs`
//! (`herald-channel-push = { …, features = ["testing"] }`).

pub mod apns;
pub mod fcm;
pub mod webpush;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_channel::shared::{LocalCache, Shared, SharedCache, SharedError};
use herald_channel::{async_trait, Services};

pub use herald_channel::testkit::ManualClock;

/// A clock that moves only when told to, at 1_800_000_000 (2027-01-15T08:00:00Z). Lend it
/// to a channel with [`ManualClock::services`].
pub fn test_clock() -> ManualClock {
    ManualClock::at_unix_secs(1_800_000_000)
}

/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(5);

pub struct WatchedCache {
    inner: LocalCache,
    /// Refresh locks found taken, so far and when [`WatchedCache::hold_sets`] was called.
    refused: AtomicUsize,
    refused_at_hold: AtomicUsize,
    lock_refused: tokio::sync::Notify,
    /// `false`: `set` waits (see [`WatchedCache::hold_sets`]).
    sets: tokio::sync::watch::Sender<bool>,
    /// Values stored so far.
    stored: AtomicUsize,
}

impl WatchedCache {
    pub fn new() -> Arc<WatchedCache> {
        Arc::new(WatchedCache {
            inner: LocalCache::default(),
            refused: AtomicUsize::new(0),
            refused_at_hold: AtomicUsize::new(0),
            lock_refused: tokio::sync::Notify::new(),
            sets: tokio::sync::watch::channel(true).0,
            stored: AtomicUsize::new(0),
        })
    }

    /// `base` (e.g. a clock) plus this cache as the core's shared cache.
    pub fn services(self: &Arc<Self>, mut base: Services) -> Services {
        base.insert(Shared(self.clone()));
        base
    }

    /// Returns once a caller has found a refresh lock taken since
    /// [`WatchedCache::hold_sets`] (or panics after 5 s).
    pub async fn lock_refused(&self) {
        let since = self.refused_at_hold.load(Ordering::SeqCst);
        let refused = async {
            // `notify_one` keeps a permit when nobody waits: no refusal is missed.
            while self.refused.load(Ordering::SeqCst) <= since {
                self.lock_refused.notified().await;
            }
        };
        tokio::time::timeout(WAIT, refused)
            .await
            .expect("a caller waiting for another's refresh within the deadline");
    }

    /// New values wait to be stored (their maker keeps the refresh lock) until
    /// [`WatchedCache::release_sets`].
    pub fn hold_sets(&self) {
        self.refused_at_hold
            .store(self.refused.load(Ordering::SeqCst), Ordering::SeqCst);
        self.sets.send_replace(false);
    }

    pub fn release_sets(&self) {
        self.sets.send_replace(true);
    }

    /// How many values have been stored so far: each one a token a caller just made (two
    /// tokens made in the same second can be identical, e.g. deterministic ES256 signatures,
    /// so counting distinct tokens does not count makers).
    pub fn stored(&self) -> usize {
        self.stored.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl SharedCache for WatchedCache {
    async fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
        self.inner.get(key).await
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), SharedError> {
        let mut open = self.sets.subscribe();
        let _ = open.wait_for(|open| *open).await;
        self.inner.set(key, value, ttl).await?;
        self.stored.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn delete_if(&self, key: &str, value: &str) -> Result<(), SharedError> {
        self.inner.delete_if(key, value).await
    }

    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<String>, SharedError> {
        let taken = self.inner.try_lock(key, ttl).await?;
        if taken.is_none() {
            self.refused.fetch_add(1, Ordering::SeqCst);
            self.lock_refused.notify_one();
        }
        Ok(taken)
    }

    async fn unlock(&self, key: &str, token: &str) -> Result<(), SharedError> {
        self.inner.unlock(key, token).await
    }
}
