//! Cluster mode: N identical nodes behind any load balancer, sharing PostgreSQL (the store)
//! and Redis (`redis_url`): who is connected where, fan-out of live frames, and the caches
//! and locks channels share.
//!
//! Redis keys (prefix `cluster.prefix`, default `herald`):
//! * `{p}:nodes` — set of node names ever seen;
//! * `{p}:alive:{node}` — present while the node lives (`PX node_ttl`, refreshed every
//!   `heartbeat_interval`); a node that dies stops being listed within `node_ttl`;
//! * `{p}:sessions:{node}` — hash session id → session JSON (user, login name, device,
//!   login time, remote address, node);
//! * `{p}:user:{user}` — hash session id → node (presence for failover routing);
//! * `{p}:push` — pub/sub channel: every live frame for a user, published by the node that
//!   dispatched it; every other node pushes it to its local sessions of that user;
//! * `{p}:cache:…` — the channels' shared cache ([`cache::RedisCache`]);
//! * `{p}:rate:{instance}` — a provider instance's `rate_limit`, shared by every node
//!   ([`limiter::RedisRate`]).
//!
//! Without `redis_url` none of this exists and nothing needs Redis.

use std::time::Duration;

pub mod cache;
pub mod limiter;
pub mod registry;

pub use crate::config::ClusterSettings;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis {url}: {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
}

/// A Redis URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Connect: one multiplexed, auto-reconnecting connection for commands.
pub async fn connect(
    url: &str,
) -> Result<(redis::Client, redis::aio::ConnectionManager), ClusterError> {
    let err = |source| ClusterError::Redis {
        url: redact(url),
        source,
    };
    let client = redis::Client::open(url).map_err(err)?;
    let conn = tokio::time::timeout(Duration::from_secs(10), client.get_connection_manager())
        .await
        .map_err(|_| {
            err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within 10s",
            )))
        })?
        .map_err(err)?;
    Ok((client, conn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://…@127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1"), "redis://127.0.0.1");
    }

    #[test]
    fn the_cluster_example_loads() {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster/herald.toml");
        let s =
            crate::config::Settings::load_from(Some(&file), vec![], &Default::default()).unwrap();
        s.validate().unwrap();
        assert!(s.redis_url.is_some());
        assert!(s.database_url.starts_with("postgres://"));
        assert_eq!(s.cluster.node_ttl, Duration::from_secs(10));
    }

    #[test]
    fn cluster_mode_needs_a_shared_database() {
        let s = crate::config::Settings {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            ..Default::default()
        };
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("postgres"), "{err}");
        let s = crate::config::Settings {
            redis_url: Some("http://x".into()),
            database_url: "postgres://h/db".into(),
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("redis_url"));
    }

    #[test]
    fn settings_validate() {
        assert!(ClusterSettings::default().validate().is_ok());
        let bad = ClusterSettings {
            node_ttl: Duration::from_secs(1),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("node_ttl"));
    }
}
