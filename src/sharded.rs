//! A map split into lock shards by key hash, so operations on different keys rarely
//! contend and no lock covers the whole map. Locks are `std::sync::Mutex`, held only for
//! the caller's closure (never across an `.await`).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;

pub struct ShardedMap<V> {
    shards: Box<[Mutex<HashMap<String, V>>]>,
}

impl<V> Default for ShardedMap<V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl<V> ShardedMap<V> {
    /// The shard holding `key`, locked. A poisoned lock is recovered: the maps stay
    /// consistent because no code panics while holding one.
    pub fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, V>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        self.shards[(h.finish() as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Visit every shard in turn (each locked only while visited).
    pub fn each_shard(&self, mut f: impl FnMut(&mut HashMap<String, V>)) {
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
