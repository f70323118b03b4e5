//! Which receivers *may* have undelivered deliveries on presence channels.
//!
//! Replaying on connect costs a database query; most connections have nothing to replay.
//! This index lets a session skip the query when its user certainly has nothing pending.
//! It is conservative: a user is added (before the live push) whenever a presence delivery
//! is committed, loaded from the store at start, and removed only when a replay query found
//! nothing *and* nothing was added for that user since the query began (version check).
//! A false "maybe" costs one query; a false "no" cannot happen on a single node.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::sharded::ShardedMap;

pub struct PendingIndex {
    users: ShardedMap<u64>,
    version: AtomicU64,
    /// Cluster mode: another node may commit a user's deliveries, so this node can never
    /// say "nothing pending": every session queries.
    always: AtomicBool,
}

impl Default for PendingIndex {
    fn default() -> Self {
        Self {
            users: ShardedMap::default(),
            version: AtomicU64::new(1),
            always: AtomicBool::new(false),
        }
    }
}

impl PendingIndex {
    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, crate::sharded::Map<u64>> {
        self.users.shard(user)
    }

    /// `user` may have something undelivered.
    pub fn add(&self, user: &str) {
        let v = self.version.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(user);
        match shard.get_mut(user) {
            Some(existing) => *existing = v,
            None => {
                shard.insert(user.to_owned(), v);
            }
        }
    }

    /// `Some(version)` when `user` may have something undelivered.
    pub fn check(&self, user: &str) -> Option<u64> {
        if self.always.load(Ordering::Relaxed) {
            return Some(0);
        }
        self.shard(user).get(user).copied()
    }

    /// Cluster mode: always answer "maybe".
    pub fn set_always(&self) {
        self.always.store(true, Ordering::Relaxed);
    }

    /// A replay that began at `version` found nothing: forget `user` unless something was
    /// added since.
    pub fn clear(&self, user: &str, version: u64) {
        let mut shard = self.shard(user);
        if shard.get(user) == Some(&version) {
            shard.remove(user);
        }
    }

    pub fn len(&self) -> usize {
        let mut n = 0;
        self.users.each_shard(|m| n += m.len());
        n
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_check_clear_with_versions() {
        let p = PendingIndex::default();
        assert_eq!(p.check("a"), None);
        p.add("a");
        let v = p.check("a").unwrap();
        // Something new arrives while the replay runs: the clear must not forget it.
        p.add("a");
        p.clear("a", v);
        let v2 = p.check("a").unwrap();
        assert_ne!(v, v2);
        p.clear("a", v2);
        assert_eq!(p.check("a"), None);
        assert!(p.is_empty());
        p.set_always();
        assert!(p.check("b").is_some(), "a cluster node always replays");
    }
}
