//! The channels' [`SharedCache`] on Redis: vendor tokens shared by every node, and the
//! locks that let one node refresh them (`SET NX PX`, released by compare-and-delete).

use std::time::Duration;

use async_trait::async_trait;
use herald_channel::shared::{SharedCache, SharedError};
use redis::aio::ConnectionManager;

pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
}

/// Delete KEYS[1] if it holds ARGV[1].
const DELETE_IF: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

fn err(e: redis::RedisError) -> SharedError {
    SharedError(e.to_string())
}

impl RedisCache {
    pub fn new(conn: ConnectionManager, prefix: &str) -> RedisCache {
        RedisCache {
            conn,
            prefix: format!("{prefix}:cache:"),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn px(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

#[async_trait]
impl SharedCache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
        redis::cmd("GET")
            .arg(self.key(key))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), SharedError> {
        redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("PX")
            .arg(px(ttl))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)
    }

    async fn delete_if(&self, key: &str, value: &str) -> Result<(), SharedError> {
        redis::Script::new(DELETE_IF)
            .key(self.key(key))
            .arg(value)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<String>, SharedError> {
        let token = uuid::Uuid::now_v7().simple().to_string();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(key))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(px(ttl))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        Ok(set.map(|_| token))
    }

    async fn unlock(&self, key: &str, token: &str) -> Result<(), SharedError> {
        self.delete_if(key, token).await
    }
}

/// Against a real Redis (`HERALD_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`).
#[cfg(all(test, feature = "service-tests"))]
mod tests {
    use super::*;
    use herald_channel::shared::get_or_refresh;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    async fn cache(prefix: &str) -> RedisCache {
        let url = std::env::var("HERALD_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let (_, conn) = crate::cluster::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("Redis is required for service-tests: {e}"));
        RedisCache::new(conn, prefix)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_racing_for_one_token_refresh_make_one_request() {
        let prefix = format!("herald-test-{}", uuid::Uuid::now_v7().simple());
        // Two "nodes": separate connections, the same Redis.
        let nodes = [
            Arc::new(cache(&prefix).await),
            Arc::new(cache(&prefix).await),
        ];
        let refreshes = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let node = nodes[i % 2].clone();
            let refreshes = refreshes.clone();
            tasks.push(tokio::spawn(async move {
                get_or_refresh(node.as_ref(), "token:wechat:app", || async {
                    refreshes.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await; // the vendor's round trip
                    Ok::<_, ()>(("T1".to_owned(), Duration::from_secs(60)))
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok("T1".to_owned()));
        }
        assert_eq!(
            refreshes.load(Ordering::SeqCst),
            1,
            "one refresh in the cluster"
        );
        // A rejected token is invalidated once; a fresher value is never deleted.
        nodes[0]
            .delete_if("token:wechat:app", "stale")
            .await
            .unwrap();
        assert_eq!(
            nodes[1].get("token:wechat:app").await.unwrap().as_deref(),
            Some("T1")
        );
        nodes[1].delete_if("token:wechat:app", "T1").await.unwrap();
        assert_eq!(nodes[0].get("token:wechat:app").await.unwrap(), None);
        // Locks: one holder; another's token cannot release it.
        let t = nodes[0]
            .try_lock("l", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert!(nodes[1]
            .try_lock("l", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none());
        nodes[1].unlock("l", "not-the-token").await.unwrap();
        assert!(nodes[1]
            .try_lock("l", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none());
        nodes[0].unlock("l", &t).await.unwrap();
        assert!(nodes[1]
            .try_lock("l", Duration::from_secs(5))
            .await
            .unwrap()
            .is_some());
    }
}
