//! State a channel shares with the other nodes of a cluster: short-lived values such as
//! vendor access tokens, and locks so that one node refreshes them, not every node.
//!
//! The core lends a [`Shared`] handle through [`crate::Services`]: in-process
//! ([`LocalCache`]) on a single node, Redis in cluster mode. Channels call
//! [`get_or_refresh`] instead of keeping a token of their own, so a cluster of N nodes asks
//! the vendor for one token, not N (WeChat rotates tokens on every request; Apple refuses
//! provider tokens renewed more than once per 20 minutes).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

/// The shared store failed (e.g. Redis unreachable). Callers fall back to local work.
#[derive(Debug, thiserror::Error)]
#[error("shared cache: {0}")]
pub struct SharedError(pub String);

/// Cluster-wide values with a time to live, and locks.
#[async_trait]
pub trait SharedCache: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<String>, SharedError>;
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), SharedError>;
    /// Delete `key` if it still holds `value` (invalidate a token the vendor rejected,
    /// without deleting a fresher one another node stored meanwhile).
    async fn delete_if(&self, key: &str, value: &str) -> Result<(), SharedError>;
    /// Take the lock `key` for at most `ttl`; `Some(token)` when taken.
    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<String>, SharedError>;
    /// Release a lock taken with `token` (a lock that expired and was taken by someone
    /// else is left alone).
    async fn unlock(&self, key: &str, token: &str) -> Result<(), SharedError>;
}

/// The handle the core puts into [`crate::Services`].
#[derive(Clone)]
pub struct Shared(pub Arc<dyn SharedCache>);

impl Shared {
    /// The handle from `services`, or an in-process one (a channel built without a core,
    /// e.g. in its own tests).
    pub fn from_services(services: &crate::Services) -> Shared {
        services
            .get::<Shared>()
            .unwrap_or_else(|| Shared(Arc::new(LocalCache::default())))
    }
}

/// How long [`get_or_refresh`] waits for another node's refresh before doing its own.
pub const REFRESH_WAIT: Duration = Duration::from_secs(10);
/// How long a refresh may hold its lock.
pub const REFRESH_LOCK_TTL: Duration = Duration::from_secs(30);

/// The cached value of `key`, or a fresh one from `refresh` (value, time to live), made by
/// one caller in the whole cluster at a time: the others wait for it (up to
/// [`REFRESH_WAIT`], then refresh themselves: the lock holder may have died). When the
/// shared store fails, `refresh` runs locally and its value is returned (and not shared).
pub async fn get_or_refresh<F, Fut, E>(
    cache: &dyn SharedCache,
    key: &str,
    refresh: F,
) -> Result<String, E>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(String, Duration), E>>,
{
    let lock = format!("{key}:lock");
    let deadline = Instant::now() + REFRESH_WAIT;
    let mut pause = Duration::from_millis(10);
    let token = loop {
        match cache.get(key).await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(_) => return refresh().await.map(|(v, _)| v),
        }
        match cache.try_lock(&lock, REFRESH_LOCK_TTL).await {
            Ok(Some(token)) => break Some(token),
            Ok(None) if Instant::now() < deadline => {
                // Another node is refreshing: wait for its value.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            Ok(None) | Err(_) => break None,
        }
    };
    // Holding the lock: someone may have stored a value just before we took it.
    if token.is_some() {
        if let Ok(Some(v)) = cache.get(key).await {
            if let Some(t) = &token {
                let _ = cache.unlock(&lock, t).await;
            }
            return Ok(v);
        }
    }
    let result = refresh().await;
    if let Ok((v, ttl)) = &result {
        if !ttl.is_zero() {
            let _ = cache.set(key, v, *ttl).await;
        }
    }
    if let Some(t) = &token {
        let _ = cache.unlock(&lock, t).await;
    }
    result.map(|(v, _)| v)
}

/// The in-process [`SharedCache`] of a single node.
#[derive(Default)]
pub struct LocalCache {
    entries: Mutex<HashMap<String, (String, Instant)>>,
}

impl LocalCache {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (String, Instant)>) -> T) -> T {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, (_, until)| *until > now);
        f(&mut map)
    }
}

#[async_trait]
impl SharedCache for LocalCache {
    async fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
        Ok(self.with(|m| m.get(key).map(|(v, _)| v.clone())))
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), SharedError> {
        self.with(|m| m.insert(key.to_owned(), (value.to_owned(), Instant::now() + ttl)));
        Ok(())
    }

    async fn delete_if(&self, key: &str, value: &str) -> Result<(), SharedError> {
        self.with(|m| {
            if m.get(key).is_some_and(|(v, _)| v == value) {
                m.remove(key);
            }
        });
        Ok(())
    }

    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<String>, SharedError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(self.with(|m| {
            if m.contains_key(key) {
                return None;
            }
            let token = NEXT
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_string();
            m.insert(key.to_owned(), (token.clone(), Instant::now() + ttl));
            Some(token)
        }))
    }

    async fn unlock(&self, key: &str, token: &str) -> Result<(), SharedError> {
        self.delete_if(key, token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_refresh_for_many_concurrent_callers() {
        let cache = Arc::new(LocalCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                get_or_refresh(cache.as_ref(), "tok", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<_, ()>(("T1".to_owned(), Duration::from_secs(60)))
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok("T1".to_owned()));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_rejected_value_is_invalidated_only_if_unchanged() {
        let cache = LocalCache::default();
        cache
            .set("k", "old", Duration::from_secs(60))
            .await
            .unwrap();
        cache.delete_if("k", "other").await.unwrap();
        assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("old"));
        cache.delete_if("k", "old").await.unwrap();
        assert_eq!(cache.get("k").await.unwrap(), None);
        let t = cache
            .try_lock("l", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert!(cache
            .try_lock("l", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none());
        cache.unlock("l", &t).await.unwrap();
        assert!(cache
            .try_lock("l", Duration::from_secs(5))
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn refresh_errors_are_returned_and_not_cached() {
        let cache = LocalCache::default();
        let r = get_or_refresh(&cache, "k", || async {
            Err::<(String, Duration), _>("down")
        })
        .await;
        assert_eq!(r, Err("down"));
        let r = get_or_refresh(&cache, "k", || async {
            Ok::<_, &str>(("v".to_owned(), Duration::from_secs(1)))
        })
        .await;
        assert_eq!(r, Ok("v".to_owned()));
    }
}
