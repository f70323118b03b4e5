//! When PostgreSQL cannot take writes: which errors mean that, how the store records it
//! ([`Health`]) and how it finds out that writing works again (a probe).
//!
//! | cause | SQLSTATE / sqlx error | `Unavailable(…)` |
//! |---|---|---|
//! | connection refused, reset or closed; a protocol error | `Io`, `Protocol`, `Tls`, `WorkerCrashed`, class `08` | "connection lost" |
//! | no pooled connection within `acquire_timeout` | `PoolTimedOut` | "no database connection" |
//! | backend killed (`pg_terminate_backend`), server shut down | `57P01` admin_shutdown | "the database server ended the connection" |
//! | server restarting after a crash, not yet accepting | `57P02`, `57P03` | "the database server is restarting" |
//! | idle session / idle-in-transaction timeout | `57P05`, `25P03` | "connection lost" |
//! | disk full | `53100` disk_full | "disk full" |
//! | out of memory, resources, connection slots | `53200`, `53000`, `53300` | "the database server is out of resources" |
//! | statement timeout (or a cancelled query) | `57014` query_canceled | "statement timeout" |
//! | lock timeout | `55P03` lock_not_available | "lock timeout" |
//! | read-only: a standby, or a primary demoted by a failover | `25006` read_only_sql_transaction | "the database is read-only" |
//! | I/O error on the server | `58030` io_error | "I/O error" |
//!
//! Anything else is the operation's own error (a constraint, bad data) and passes through.
//!
//! * A write that fails with one of these marks the store failing ([`Health::fail`]: logged
//!   once, `ready()` answers `Unavailable(reason)`, sends are refused at once) and wakes
//!   the probe. Reads map the error the same way but do not record it (`ready()` does).
//! * Recovery is recorded by a committed insert or by the **probe**, a task that runs while
//!   the store is failing (at once when a failure is recorded, then every second): `SELECT
//!   1`, then `TRUNCATE herald_probe` and a 16 KiB insert in one committed transaction.
//!   The truncate gives the table new, empty files, so the insert must allocate pages (and
//!   TOAST pages: the column is stored uncompressed) — like an insert of a message, unlike
//!   an update that fits in place, or a transaction that changed nothing, both of which
//!   commit even on a full disk and are therefore not taken as recovery.
//! * A connection lost *during* `COMMIT` leaves the outcome unknown: the write is answered
//!   `Unavailable` (never `Ok`), although it may have committed. A send retried with its
//!   `Idempotency-Key` then finds its message (`Existing`) or stores it once.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::store::{Health, StoreError};

/// How often the probe runs while the store is failing.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// What the probe writes: enough for a heap page and a few TOAST pages.
const PROBE_BYTES: usize = 16 << 10;

/// Why the database cannot do this now, or `None` when the error is the operation's own.
pub(super) fn unavailable(e: &sqlx::Error) -> Option<&'static str> {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Some("connection lost"),
        sqlx::Error::PoolTimedOut => Some("no database connection"),
        sqlx::Error::Database(db) => {
            let code = db.code()?;
            Some(match code.as_ref() {
                "57P01" => "the database server ended the connection",
                "57P02" | "57P03" => "the database server is restarting",
                "57P05" | "25P03" => "connection lost",
                "53100" => "disk full",
                "53000" | "53200" | "53300" => "the database server is out of resources",
                "57014" => "statement timeout",
                "55P03" => "lock timeout",
                "25006" => "the database is read-only",
                "58030" => "I/O error",
                c if c.starts_with("08") => "connection lost",
                _ => return None,
            })
        }
        _ => None,
    }
}

/// `e` as the caller should see it: database failures become `Unavailable(reason)` (with
/// the reason, when there is one), a closed pool `Closed`.
pub(super) fn classify(e: StoreError) -> (StoreError, Option<&'static str>) {
    match e {
        StoreError::Database(sqlx::Error::PoolClosed) => (StoreError::Closed, None),
        StoreError::Database(ref err) => match unavailable(err) {
            Some(why) => (StoreError::Unavailable(why.to_owned()), Some(why)),
            None => (e, None),
        },
        other => (other, None),
    }
}

/// The store's health and the probe that restores it.
pub(super) struct Availability {
    pub health: Arc<Health>,
    wake: Arc<Notify>,
    probe: tokio::task::JoinHandle<()>,
}

impl Availability {
    pub fn start(pool: PgPool) -> Availability {
        let health = Arc::new(Health::default());
        let wake = Arc::new(Notify::new());
        let probe = tokio::spawn(probe_loop(pool, health.clone(), wake.clone()));
        Availability {
            health,
            wake,
            probe,
        }
    }

    /// A write failed with `e`: record a database failure (and probe at once).
    pub fn write_failed(&self, e: StoreError) -> StoreError {
        let (e, why) = classify(e);
        if let Some(why) = why {
            self.health.fail(why);
            self.wake.notify_one();
        }
        e
    }

    /// Stop probing (the store is closing).
    pub fn stop(&self) {
        self.probe.abort();
    }
}

impl Drop for Availability {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

async fn probe_loop(pool: PgPool, health: Arc<Health>, wake: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
        if pool.is_closed() {
            return;
        }
        if !health.is_failing() {
            continue;
        }
        match tokio::time::timeout(PROBE_TIMEOUT, probe(&pool)).await {
            Ok(Ok(())) => health.ok(),
            Ok(Err(e)) => {
                let why =
                    unavailable(&e).map_or_else(|| format!("probe failed: {e}"), String::from);
                health.fail(&why);
            }
            Err(_) => health.fail("the database does not answer"),
        }
    }
}

/// A small write into fresh pages, committed (see the module comment).
async fn probe(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT 1").execute(&mut *conn).await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query("TRUNCATE herald_probe")
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO herald_probe (data) VALUES ($1)")
        .bind(vec![0x5a_u8; PROBE_BYTES])
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_errors_are_named_and_others_pass_through() {
        assert_eq!(
            unavailable(&sqlx::Error::PoolTimedOut),
            Some("no database connection")
        );
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(unavailable(&io), Some("connection lost"));
        assert_eq!(unavailable(&sqlx::Error::RowNotFound), None);
        let (e, why) = classify(StoreError::Database(sqlx::Error::PoolClosed));
        assert!(matches!(e, StoreError::Closed) && why.is_none());
        let (e, why) = classify(StoreError::Database(io));
        assert!(matches!(e, StoreError::Unavailable(ref r) if r == "connection lost"));
        assert_eq!(why, Some("connection lost"));
        let (e, _) = classify(StoreError::Corrupt("x".into()));
        assert!(matches!(e, StoreError::Corrupt(_)));
    }
}
