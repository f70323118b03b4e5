//! Rate limits shared by every node (cluster mode): GCRA in one Lua script on Redis, on
//! Redis's own clock, so N nodes together send at most a channel instance's `rate_limit`
//! (on a single node the outbox uses an in-process governor limiter instead).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use crate::dispatch::outbox::{Rate, SharedRate};

/// KEYS[1] holds the theoretical arrival time (µs). ARGV: interval µs per cell, burst
/// (cells), cells wanted. Returns {granted, µs until the next cell when none was granted}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local limit = now + burst * interval
local granted = 0
while granted < want and tat + interval <= limit do
  tat = tat + interval
  granted = granted + 1
end
if granted > 0 then
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  return {granted, 0}
end
return {0, tat + interval - limit}
"#;

pub struct RedisRate {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
}

impl RedisRate {
    pub fn new(conn: ConnectionManager, prefix: &str) -> RedisRate {
        RedisRate {
            conn,
            prefix: format!("{prefix}:rate:"),
            script: redis::Script::new(GCRA),
        }
    }
}

#[async_trait]
impl SharedRate for RedisRate {
    async fn take(&self, key: &str, rate: Rate, want: u32) -> Result<(u32, Duration), String> {
        let interval = (rate.per.as_micros() / u128::from(rate.count.get())).max(1) as u64;
        let (granted, wait): (u32, u64) = self
            .script
            .key(format!("{}{key}", self.prefix))
            .arg(interval)
            .arg(rate.count.get())
            .arg(want.max(1))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok((granted, Duration::from_micros(wait)))
    }
}

#[cfg(all(test, feature = "service-tests"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_nodes_share_one_budget() {
        let url = std::env::var("HERALD_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("herald-test-{}", uuid::Uuid::now_v7().simple());
        let a = RedisRate::new(crate::cluster::connect(&url).await.unwrap().1, &prefix);
        let b = RedisRate::new(crate::cluster::connect(&url).await.unwrap().1, &prefix);
        let rate = Rate::parse("5/h").unwrap();
        let (ga, _) = a.take("sms", rate, 3).await.unwrap();
        let (gb, _) = b.take("sms", rate, 3).await.unwrap();
        assert_eq!((ga, gb), (3, 2), "5 per hour across both nodes");
        let (g, wait) = a.take("sms", rate, 1).await.unwrap();
        assert_eq!(g, 0);
        assert!(
            wait > Duration::from_secs(600) && wait <= Duration::from_secs(720),
            "{wait:?}"
        );
        // Another key has its own budget.
        assert_eq!(b.take("mail", rate, 5).await.unwrap().0, 5);
    }
}
