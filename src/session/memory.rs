//! The in-memory session registry (single node).
//!
//! Sessions are kept per user in a sharded map: pushes for different users take different
//! shard locks, each held only for a lookup (never across an `.await`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use herald_channel::MessageView;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Outbound, Pushed, SessionHandle, SessionInfo, SessionRegistry};
use crate::sharded::ShardedMap;

#[derive(Default)]
pub struct MemoryRegistry {
    users: ShardedMap<Vec<Arc<SessionHandle>>>,
    count: AtomicUsize,
}

impl MemoryRegistry {
    /// Snapshot of one user's handles (taken under the shard lock, used outside it).
    fn handles(&self, user: &str) -> Vec<Arc<SessionHandle>> {
        self.users
            .shard(user)
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    fn each_shard(&self, mut f: impl FnMut(&crate::sharded::Map<Vec<Arc<SessionHandle>>>)) {
        self.users.each_shard(|m| f(m));
    }
}

#[async_trait]
impl SessionRegistry for MemoryRegistry {
    fn register(&self, handle: Arc<SessionHandle>) {
        let mut map = self.users.shard(&handle.info.user_id);
        map.entry(handle.info.user_id.clone())
            .or_default()
            .push(handle);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn unregister(&self, handle: &Arc<SessionHandle>) {
        let user = &handle.info.user_id;
        let mut map = self.users.shard(user);
        if let Some(list) = map.get_mut(user) {
            let before = list.len();
            list.retain(|h| !Arc::ptr_eq(h, handle));
            if list.len() < before {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            if list.is_empty() {
                map.remove(user);
            }
        }
    }

    fn push(&self, user: &str, item: &Outbound) -> Pushed {
        let mut pushed = Pushed::default();
        for h in self.handles(user) {
            let was_kicked = h.is_kicked();
            if h.offer(item.clone()) {
                pushed.accepted += 1;
            } else if !was_kicked && h.is_kicked() {
                pushed.kicked += 1;
            }
        }
        pushed
    }

    /// One pass over the shards (each locked once) instead of a lookup per member: a
    /// broadcast's audience is nearly everyone online. Offers happen under the shard lock,
    /// which is short (no await) and never taken while a session queue's lock is held.
    fn push_audience(
        &self,
        members: &[String],
        delivery_id: &(dyn Fn(usize) -> i64 + Send + Sync),
        message: &Arc<MessageView>,
        frame: &Utf8Bytes,
    ) -> Vec<bool> {
        let mut accepted = vec![false; members.len()];
        self.users.each_shard(|m| {
            for (user, handles) in m.iter() {
                let Ok(i) = members.binary_search_by(|x| x.as_bytes().cmp(user.as_bytes())) else {
                    continue;
                };
                for h in handles {
                    let item = Outbound {
                        delivery_id: delivery_id(i),
                        message: message.clone(),
                        frame: frame.clone(),
                    };
                    if h.offer(item) {
                        accepted[i] = true;
                    }
                }
            }
        });
        accepted
    }

    async fn online_users(&self) -> Vec<String> {
        let mut users = Vec::new();
        self.each_shard(|m| users.extend(m.keys().cloned()));
        users.sort();
        users
    }

    async fn is_online(&self, user: &str) -> bool {
        self.users.shard(user).contains_key(user)
    }

    async fn list(&self) -> Vec<SessionInfo> {
        let mut all = Vec::new();
        self.each_shard(|m| all.extend(m.values().flatten().map(|h| h.info.clone())));
        all.sort_by(|a, b| (a.login_time_ms, &a.session_id).cmp(&(b.login_time_ms, &b.session_id)));
        all
    }

    fn local_count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn for_each_local(&self, f: &mut dyn FnMut(&Arc<SessionHandle>)) {
        self.each_shard(|m| m.values().flatten().for_each(&mut *f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::MessageView;

    fn info(session: &str, user: &str) -> SessionInfo {
        SessionInfo {
            session_id: session.into(),
            user_id: user.into(),
            login_name: None,
            device: None,
            login_time_ms: 0,
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            node: "n".into(),
        }
    }

    fn item() -> Outbound {
        Outbound {
            delivery_id: 1,
            message: Arc::new(MessageView {
                id: "m".into(),
                title: "t".into(),
                content: "c".into(),
                msg_type: 0,
                sender: "s".into(),
                created_at: "x".into(),
                template: None,
                data: None,
            }),
            frame: "{}".into(),
        }
    }

    #[tokio::test]
    async fn register_push_unregister() {
        let reg = MemoryRegistry::default();
        let a = SessionHandle::new(info("a", "42"), 4, Default::default());
        let b = SessionHandle::new(info("b", "42"), 4, Default::default());
        let c = SessionHandle::new(info("c", "7"), 4, Default::default());
        reg.register(a.clone());
        reg.register(b.clone());
        reg.register(c.clone());
        assert_eq!(reg.local_count(), 3);
        assert_eq!(
            reg.online_users().await,
            vec!["42".to_string(), "7".to_string()]
        );
        assert_eq!(reg.push("42", &item()).accepted, 2);
        assert!(a.try_next().is_some() && b.try_next().is_some());
        assert!(c.try_next().is_none());
        reg.unregister(&a);
        assert_eq!(reg.push("42", &item()).accepted, 1);
        assert_eq!(reg.list().await.len(), 2);
        reg.unregister(&b);
        reg.unregister(&b); // twice is harmless
        assert_eq!(reg.local_count(), 1);
        assert_eq!(reg.push("42", &item()), Pushed::default());
    }

    #[tokio::test]
    async fn full_queue_kicks_only_that_session() {
        let reg = MemoryRegistry::default();
        let slow = SessionHandle::new(info("slow", "1"), 2, Default::default());
        let fast = SessionHandle::new(info("fast", "1"), 8, Default::default());
        reg.register(slow.clone());
        reg.register(fast.clone());
        assert_eq!(reg.push("1", &item()).accepted, 2);
        assert_eq!(reg.push("1", &item()).accepted, 2);
        let third = reg.push("1", &item());
        assert_eq!(
            third,
            Pushed {
                accepted: 1,
                kicked: 1
            }
        );
        assert!(slow.is_kicked() && !fast.is_kicked());
        // The kicked session's task is woken and sees the signal.
        tokio::time::timeout(std::time::Duration::from_secs(1), slow.woken())
            .await
            .unwrap();
        assert_ne!(slow.take_signals() & crate::session::signal::KICKED, 0);
        for _ in 0..3 {
            assert!(fast.try_next().is_some());
        }
        assert!(fast.try_next().is_none());
        let mut visited = 0;
        reg.for_each_local(&mut |_| visited += 1);
        assert_eq!(visited, 2);
    }
}
