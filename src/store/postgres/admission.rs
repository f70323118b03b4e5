//! Admission control for sends, as the SQLite writer's `admit`: overload is refused at once
//! with [`StoreError::Overloaded`] (`503` + `Retry-After`, nothing written) instead of
//! piling up as tasks queued on the connection pool.
//!
//! * **Running**: at most `max_connections − max_connections / 4` inserts (at least one)
//!   hold a connection at once; the rest of the pool stays free for status writes, claims,
//!   timers and reads, which wait for a connection instead of being refused.
//! * **Waiting**: at most 4 × `database.max_batch` sends (the SQLite writer's queue) and
//!   `database.max_queued_bytes` of their data may be admitted, running or waiting; a send
//!   that finds either spent is refused before it waits at all.
//! * **Wait**: a send that got no slot *and* connection within 10 × `database.max_queue_wait`
//!   is refused — the patience the SQLite writer grants a burst before it sheds (there is
//!   no group commit here, so a burst of a few hundred sends queues for connections).
//!
//! So the memory sends hold is bounded by `max_queued_bytes` (plus what the pool's
//! connections buffer), whatever the offered load.

use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::DatabaseSettings;
use crate::model::NewMessage;
use crate::store::StoreError;

pub(super) struct Admission {
    /// Sends admitted and not finished (waiting or running).
    admitted: Arc<Semaphore>,
    admitted_max: usize,
    /// KiB of `max_queued_bytes` the admitted sends hold.
    budget: Arc<Semaphore>,
    budget_kib: u32,
    /// Inserts holding a connection.
    running: Arc<Semaphore>,
    max_wait: Duration,
}

/// An admitted send: its connection and the permits it holds until it is done.
pub(super) struct Admitted {
    pub conn: PoolConnection<Postgres>,
    _permits: [OwnedSemaphorePermit; 3],
}

impl Admission {
    pub fn new(settings: &DatabaseSettings) -> Admission {
        let connections = settings.max_connections.max(1) as usize;
        let admitted_max = (4 * settings.max_batch).max(1);
        let budget_kib = (settings.max_queued_bytes / 1024).clamp(1, u32::MAX as usize) as u32;
        Admission {
            admitted: Arc::new(Semaphore::new(admitted_max)),
            admitted_max,
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            running: Arc::new(Semaphore::new((connections - connections / 4).max(1))),
            max_wait: settings.max_queue_wait * 10,
        }
    }

    /// Admit a send of about `bytes` and get it a connection, or refuse it.
    pub async fn admit(&self, pool: &PgPool, bytes: usize) -> Result<Admitted, StoreError> {
        let admitted =
            self.admitted.clone().try_acquire_owned().map_err(|_| {
                StoreError::Overloaded("too many sends are waiting for the database")
            })?;
        let kib = (bytes / 1024 + 1).min(self.budget_kib as usize) as u32;
        let budget = self
            .budget
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| StoreError::Overloaded("waiting sends hold their memory budget"))?;
        let deadline = Instant::now() + self.max_wait;
        let running = tokio::time::timeout_at(deadline, self.running.clone().acquire_owned())
            .await
            .map_err(|_| StoreError::Overloaded("waited too long for the database"))?
            .map_err(|_| StoreError::Closed)?;
        let conn = tokio::time::timeout_at(deadline, pool.acquire())
            .await
            .map_err(|_| StoreError::Overloaded("waited too long for a database connection"))??;
        Ok(Admitted {
            conn,
            _permits: [admitted, budget, running],
        })
    }

    /// Sends admitted and not yet answered (`/metrics`).
    pub fn queued(&self) -> usize {
        self.admitted_max - self.admitted.available_permits()
    }
}

/// About what an insert holds in memory from admission to its answer: the message, and its
/// deliveries and members twice (as given and as bound to the statements).
pub(super) fn footprint(m: &NewMessage) -> usize {
    let rendered: usize = m
        .rendered
        .values()
        .flat_map(|parts| parts.values())
        .map(String::len)
        .sum();
    let rows: usize = m
        .deliveries
        .iter()
        .map(|d| 2 * (64 + d.receiver.len() + d.channel.len()))
        .sum();
    let members: usize = m
        .audience
        .as_ref()
        .map_or(0, |a| a.members.iter().map(|r| 2 * (24 + r.len())).sum());
    1024 + m.title.len() + m.content.len() + rendered + rows + members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_connections: u32, max_queued_bytes: usize) -> DatabaseSettings {
        DatabaseSettings {
            max_connections,
            max_batch: 1,
            max_queued_bytes,
            ..DatabaseSettings::default()
        }
    }

    #[test]
    fn a_quarter_of_the_pool_is_kept_for_everything_else() {
        for (connections, inserts) in [(1, 1), (2, 2), (4, 3), (10, 8), (16, 12)] {
            let a = Admission::new(&settings(connections, 1 << 20));
            assert_eq!(a.running.available_permits(), inserts, "{connections}");
        }
    }

    #[tokio::test]
    async fn a_spent_queue_or_budget_refuses_at_once() {
        let a = Admission::new(&settings(4, 8 << 10));
        assert_eq!((a.admitted_max, a.budget_kib), (4, 8));
        let held: Vec<_> = (0..4)
            .map(|_| a.admitted.clone().try_acquire_owned())
            .collect();
        assert_eq!(a.queued(), 4);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        assert!(matches!(
            a.admit(&pool, 10).await,
            Err(StoreError::Overloaded(_))
        ));
        drop(held);
        // A big send holding the whole byte budget refuses the next one.
        let big = a.budget.clone().try_acquire_many_owned(8).unwrap();
        assert!(matches!(
            a.admit(&pool, 100).await,
            Err(StoreError::Overloaded(_))
        ));
        drop(big);
        assert_eq!(a.queued(), 0);
    }

    #[test]
    fn footprints_grow_with_what_is_sent() {
        let small = NewMessage::default();
        let big = NewMessage {
            content: "x".repeat(10_000),
            audience: Some(crate::model::NewAudience::new(
                "websocket",
                (0..100).map(|i| format!("u{i}")).collect(),
                0,
                0,
            )),
            ..Default::default()
        };
        assert!(footprint(&big) > footprint(&small) + 10_000 + 100 * 48);
    }
}
