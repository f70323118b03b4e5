//! The vendor tokens of `push.fcm` (OAuth access tokens) and `push.apns` (provider JWTs),
//! one per set of credentials for the whole cluster, kept in the core's shared cache
//! ([`herald_channel::shared`]).
//!
//! * **Shared.** A token lives under a key that names the credentials, not the instance
//!   (`herald:token:fcm:<client_email>`, `herald:token:apns:<team_id>:<key_id>`), for as long
//!   as the provider reuses it, with its refresh time in unix seconds so every node judges it
//!   by the wall clock (the SDK's injectable [`Clock`]). Instances with the same credentials, on
//!   one node or many, share it.
//! * **One maker.** A new token is made (fetched, or signed) only when the shared cache holds
//!   none, by one caller in the cluster at a time ([`get_or_refresh`]); the other nodes wait
//!   for it and use it.
//! * **In-process copy.** Each instance keeps the token it last read for at most
//!   [`LOCAL_RECHECK_SECS`] and never past its refresh time, so a send costs no shared-cache
//!   round trip. It sits behind an async mutex held across the lookup: the instance's
//!   concurrent sends queue behind one lookup.
//! * **Rejected tokens.** A token the vendor refused is deleted from the shared cache only if
//!   it is still the one stored (`delete_if`: a fresher token another node stored meanwhile
//!   stays), then looked up again: the first caller to find the cache empty makes the new
//!   token, every other send on every node uses it.
//! * **Shared cache down.** [`get_or_refresh`] makes the token locally and it is not shared.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_channel::clock::Clock;
use herald_channel::shared::{get_or_refresh, Shared};
use herald_channel::{ChannelError, Services};
use serde::{Deserialize, Serialize};

use crate::common::Secret;

/// How long an instance trusts its in-process copy before reading the shared cache again
/// (so it moves to a token another node made, without waiting for a refusal).
pub(crate) const LOCAL_RECHECK_SECS: u64 = 60;

/// A token just made, and for how long (seconds) it is used before the next one.
pub(crate) struct Fresh {
    pub token: Secret,
    pub reuse_secs: u64,
}

/// The shared cache's value.
#[derive(Serialize, Deserialize)]
struct Entry {
    token: String,
    /// Unix seconds: make a new token from here on.
    refresh_at: u64,
}

impl Entry {
    fn encode(&self) -> String {
        // A string and an integer always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn decode(raw: &str) -> Option<Entry> {
        serde_json::from_str(raw).ok()
    }
}

/// The instance's copy.
struct Local {
    token: Secret,
    /// The shared cache's value it came from: what `delete_if` removes.
    raw: String,
    refresh_at: u64,
    /// Unix seconds: read the shared cache again from here on.
    recheck_at: u64,
}

impl Local {
    fn new(entry: Entry, raw: String, now: u64) -> Local {
        Local {
            token: Secret::new(entry.token),
            raw,
            refresh_at: entry.refresh_at,
            recheck_at: now + LOCAL_RECHECK_SECS,
        }
    }
}

/// One instance's handle on a token shared by its credentials.
pub(crate) struct SharedToken {
    shared: Shared,
    key: String,
    clock: Arc<dyn Clock>,
    local: tokio::sync::Mutex<Option<Local>>,
}

impl SharedToken {
    /// The token stored under `key` in the shared cache `services` lend (an in-process one
    /// of its own when they lend none).
    pub(crate) fn new(services: &Services, key: String, clock: Arc<dyn Clock>) -> SharedToken {
        SharedToken {
            shared: Shared::from_services(services),
            key,
            clock,
            local: tokio::sync::Mutex::new(None),
        }
    }

    fn now(&self) -> u64 {
        self.clock.unix_secs()
    }

    /// A usable token: the instance's copy, the cluster's, or one `make` makes (one caller
    /// in the cluster at a time). `rejected` is a token the vendor just refused: it is
    /// deleted from the shared cache and not handed out again.
    pub(crate) async fn get<F, Fut>(
        &self,
        rejected: Option<&Secret>,
        make: F,
    ) -> Result<Secret, ChannelError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fresh, ChannelError>>,
    {
        let mut local = self.local.lock().await;
        let now = self.now();
        if let Some(l) = local.as_ref() {
            let refused = rejected == Some(&l.token);
            if !refused && now < l.refresh_at && now < l.recheck_at {
                return Ok(l.token.clone());
            }
            if refused || now >= l.refresh_at {
                // For the whole cluster; a fresher token stored meanwhile is left alone.
                let _ = self.shared.0.delete_if(&self.key, &l.raw).await;
            }
            if refused {
                *local = None;
            }
        }
        // Taken by the one `make` that runs (if any): `None` afterwards means "made here".
        let mut make = Some(make);
        for round in 0..2 {
            let slot = &mut make;
            let raw = get_or_refresh(self.shared.0.as_ref(), &self.key, move || async move {
                let make = slot
                    .take()
                    .ok_or_else(|| ChannelError::transient("token made twice"))?;
                let fresh = make().await?;
                let entry = Entry {
                    token: fresh.token.expose().to_owned(),
                    refresh_at: self.now() + fresh.reuse_secs,
                };
                Ok::<_, ChannelError>((entry.encode(), Duration::from_secs(fresh.reuse_secs)))
            })
            .await?;
            let made_here = make.is_none();
            let now = self.now();
            match Entry::decode(&raw) {
                Some(entry)
                    if made_here
                        || (rejected.map(Secret::expose) != Some(entry.token.as_str())
                            // Due by this node's clock, yet just stored by another node:
                            // the clocks differ; use it.
                            && (now < entry.refresh_at || round == 1)) =>
                {
                    let l = Local::new(entry, raw, now);
                    let token = l.token.clone();
                    *local = Some(l);
                    return Ok(token);
                }
                // Refused, due or unreadable: delete it and look once more.
                _ if round == 0 => {
                    let _ = self.shared.0.delete_if(&self.key, &raw).await;
                }
                _ => {}
            }
        }
        Err(ChannelError::transient(
            "the shared cache still holds the token the vendor refused",
        ))
    }

    /// The cluster's token if it is not `rejected`, without making one or deleting anything
    /// (for when a new token may not be made yet).
    pub(crate) async fn other_than(&self, rejected: &Secret) -> Option<Secret> {
        let mut local = self.local.lock().await;
        let now = self.now();
        if let Some(l) = local.as_ref() {
            if &l.token != rejected && now < l.refresh_at {
                return Some(l.token.clone());
            }
        }
        let raw = self.shared.0.get(&self.key).await.ok()??;
        let entry = Entry::decode(&raw).filter(|e| e.token != rejected.expose())?;
        let l = Local::new(entry, raw, now);
        let token = l.token.clone();
        *local = Some(l);
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::shared::LocalCache;
    use herald_channel::testkit::ManualClock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cluster() -> (Services, ManualClock) {
        let at = ManualClock::at_unix_secs(1_800_000_000);
        let mut services = Services::default();
        services.insert(Shared(Arc::new(LocalCache::default())));
        (services, at)
    }

    /// One instance ("node") of the cluster `services` and `at` (its clock) describe.
    fn node(services: &Services, at: &ManualClock) -> SharedToken {
        SharedToken::new(services, "herald:token:test:a".into(), Arc::new(at.clone()))
    }

    /// Makes `T1`, `T2`, … reused for an hour.
    #[derive(Default)]
    struct Maker(AtomicUsize);

    impl Maker {
        async fn make(&self) -> Result<Fresh, ChannelError> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Fresh {
                token: Secret::new(format!("T{n}")),
                reuse_secs: 3600,
            })
        }
        fn made(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn nodes_share_one_token_and_one_replacement() {
        let (services, at) = cluster();
        let (a, b) = (node(&services, &at), node(&services, &at));
        let m = Maker::default();
        let t1 = a.get(None, || m.make()).await.unwrap();
        assert_eq!(b.get(None, || m.make()).await.unwrap(), t1);
        assert_eq!(m.made(), 1);
        let t2 = a.get(Some(&t1), || m.make()).await.unwrap();
        assert_eq!(t2.expose(), "T2");
        // B's copy is refused too: it takes A's replacement.
        assert_eq!(b.get(Some(&t1), || m.make()).await.unwrap(), t2);
        assert_eq!(m.made(), 2);
        // Without a refusal B moves to it within a minute.
        let c = node(&services, &at);
        assert_eq!(c.get(None, || m.make()).await.unwrap(), t2);
        at.advance(Duration::from_secs(3600));
        let t3 = b.get(None, || m.make()).await.unwrap();
        assert_eq!(t3.expose(), "T3", "due after reuse_secs");
        assert_eq!(c.get(None, || m.make()).await.unwrap(), t3);
        assert_eq!(m.made(), 3);
    }

    #[tokio::test]
    async fn other_than_never_makes_or_deletes() {
        let (services, at) = cluster();
        let (a, b) = (node(&services, &at), node(&services, &at));
        let m = Maker::default();
        let t1 = a.get(None, || m.make()).await.unwrap();
        assert_eq!(b.other_than(&t1).await, None);
        assert_eq!(b.other_than(&Secret::new("T0")).await, Some(t1.clone()));
        let t2 = a.get(Some(&t1), || m.make()).await.unwrap();
        assert_eq!(b.other_than(&t1).await, Some(t2));
        assert_eq!(m.made(), 2);
    }
}
