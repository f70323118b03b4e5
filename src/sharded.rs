//! A map split into lock shards by key hash, so operations on different keys rarely
//! contend and no lock covers the whole map. Locks are `std::sync::Mutex`, held only for
//! the caller's closure (never across an `.await`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;

/// aHash, keyed per process (a broadcast hashes every online user id: SipHash showed in
/// the fan-out profile).
pub type Map<V> = HashMap<String, V, ahash::RandomState>;

pub struct ShardedMap<V> {
    shards: Box<[Mutex<Map<V>>]>,
    hasher: ahash::RandomState,
}

impl<V> Default for ShardedMap<V> {
    fn default() -> Self {
        let hasher = ahash::RandomState::new();
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            hasher,
        }
    }
}

impl<V> ShardedMap<V> {
    /// The shard holding `key`, locked. A poisoned lock is recovered: the maps stay
    /// consistent because no code panics while holding one.
    pub fn shard(&self, key: &str) -> MutexGuard<'_, Map<V>> {
        // The map's own hash of the key, high bits: independent of the bucket the map picks.
        let h = self.hasher.hash_one(key);
        self.shards[((h >> 32) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Visit every shard in turn (each locked only while visited).
    pub fn each_shard(&self, mut f: impl FnMut(&mut Map<V>)) {
        for shard in self.shards.iter() {
            f(&mut shard.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_land_in_one_shard_and_are_all_visited() {
        let m = ShardedMap::<u32>::default();
        for i in 0..1000 {
            m.shard(&i.to_string()).insert(i.to_string(), i);
        }
        assert_eq!(m.shard("7").get("7"), Some(&7));
        let mut n = 0;
        m.each_shard(|s| n += s.len());
        assert_eq!(n, 1000);
    }
}
