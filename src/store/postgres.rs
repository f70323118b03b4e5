//! PostgreSQL store (cluster mode: several nodes share one database).
//!
//! There is no single writer here: every operation is its own transaction on a pooled
//! connection (`database.max_connections`), and what SQLite gets from having one writer,
//! PostgreSQL gets from row locks. Transactions run at READ COMMITTED (the default); each
//! statement below re-checks its conditions on a row's latest committed version once it
//! holds the row's lock, which is what makes them safe across nodes:
//! * **Claims** (`claim_due`, `claim_timers`) pick rows in a materialized CTE with
//!   `FOR UPDATE SKIP LOCKED` and move their due time to the lease end in the same
//!   statement, so nodes claiming at once never take the same row (and never wait for
//!   each other).
//! * **Quotas**: the window's `quota_usage` row is created if missing
//!   (`ON CONFLICT DO NOTHING`) and locked (`SELECT … FOR UPDATE`) before the claim that
//!   counts against it, so concurrent claims of one channel queue on that row and never
//!   overspend.
//! * **Idempotency keys** are inserted first, with `ON CONFLICT`: of two inserts racing
//!   on one key, the second waits for the first to commit and then answers
//!   `Existing`/`KeyConflict` (an expired key is taken over in the same statement).
//! * **Fenced writes**: the scheduler's (`release_held`, `expire_message`,
//!   `advance_route`) lock their timer row with `SELECT … FOR UPDATE` and check the lease
//!   before changing anything; an outbox `Attempt` outcome checks its lease in the
//!   `UPDATE`'s own `WHERE` (an atomic check-and-set on the locked row).
//! * The trigger `deliveries_route_event` (plpgsql) makes a receiver's running chain due
//!   when one of its deliveries changes status, as on SQLite. Writers that touch both
//!   tables lock deliveries before schedule rows (the trigger's order), in id order, so a
//!   fenced write and a status change never wait for each other in a cycle. A deadlock
//!   that remains possible (two multi-row writers meeting in opposite orders) is broken
//!   by PostgreSQL and surfaces as an ordinary database error: the status writer retries,
//!   a claimed timer comes due again when its lease ends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, QueryBuilder, Row};

use super::{OutboxCounts, Store, StoreError};
use crate::config::DatabaseSettings;
use crate::model::{
    now_ms, AttemptOutcome, ClaimResult, Claimed, Delivery, DeviceRecord, InboxItem, Inserted,
    Message, MessageFilter, NewDevice, NewMessage, OutboxMessage, Page, PageRequest, QuotaClaim,
    Recipient, RouteAdvance, RouteRecord, Status, StatusChange, StatusFilter, Timer,
};
use crate::routing::{LogEntry, Policy, RouteState};

mod timers;

#[cfg(all(test, feature = "service-tests"))]
mod tests;

/// sqlx's PostgreSQL migrator holds an advisory lock (`pg_advisory_lock`) while it runs, so
/// nodes starting at once apply each migration once: the others wait, then find it applied.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// How often expired idempotency keys are pruned (by whichever node inserts then).
const PRUNE_EVERY_MS: i64 = 3600 * 1000;

/// Ids per `= ANY($n)` array in bulk status updates.
const BULK_CHUNK: usize = 1000;

/// `postgres://…` or `postgresql://…`.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

pub struct PgStore {
    pool: PgPool,
    /// When this node last pruned expired idempotency keys (ms).
    last_prune: AtomicI64,
}

impl PgStore {
    /// Connect, migrate (once across nodes: see [`MIGRATOR`]) and prune expired keys.
    pub async fn open(url: &str, settings: &DatabaseSettings) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        let now = now_ms();
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(now - IDEMPOTENCY_TTL_MS)
            .execute(&pool)
            .await?;
        Ok(PgStore {
            pool,
            last_prune: AtomicI64::new(now),
        })
    }

    /// Migrate the database at `url` and return.
    pub async fn migrate_only(url: &str) -> Result<(), StoreError> {
        let mut conn = PgConnection::connect(url).await?;
        MIGRATOR.run(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// Prune expired idempotency keys about hourly, in the background (the writer task does
    /// this on SQLite; here any node that inserts may, and concurrent prunes are harmless).
    fn maybe_prune(&self, now: i64) {
        let last = self.last_prune.load(Ordering::Relaxed);
        if now - last < PRUNE_EVERY_MS
            || self
                .last_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(now - IDEMPOTENCY_TTL_MS)
                .execute(&pool)
                .await
            {
                tracing::warn!(error = %e, "pruning idempotency keys failed");
            }
        });
    }
}

async fn insert(
    conn: &mut PgConnection,
    msg: &NewMessage,
    now: i64,
) -> Result<Inserted, StoreError> {
    if let Some(idem) = &msg.idempotency {
        // Claim the key first. A live key of another transaction makes this statement wait
        // for it to commit (or roll back); an expired key is taken over.
        let ours = sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, message_id, deliveries, created_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (key) DO UPDATE SET request_hash = EXCLUDED.request_hash, \
               message_id = EXCLUDED.message_id, deliveries = EXCLUDED.deliveries, \
               created_at = EXCLUDED.created_at \
             WHERE idempotency_keys.created_at < $6 \
             RETURNING 1",
        )
        .bind(&idem.key)
        .bind(&idem.request_hash)
        .bind(&msg.id)
        .bind(msg.deliveries.len() as i64)
        .bind(now)
        .bind(now - IDEMPOTENCY_TTL_MS)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
        if !ours {
            // ON CONFLICT DO UPDATE locked the live row: it is there, committed.
            let row = sqlx::query(
                "SELECT request_hash, message_id, deliveries FROM idempotency_keys WHERE key = $1",
            )
            .bind(&idem.key)
            .fetch_one(&mut *conn)
            .await?;
            let hash: String = row.try_get(0)?;
            if hash != idem.request_hash {
                return Ok(Inserted::KeyConflict);
            }
            let deliveries: i64 = row.try_get(2)?;
            return Ok(Inserted::Existing {
                id: row.try_get(1)?,
                deliveries: deliveries.max(0) as usize,
            });
        }
    }
    let seq: i64 = sqlx::query(
        "INSERT INTO messages (id, title, content, msg_type, sender, created_at, template, data, \
           rendered, send_at, expires_at, routing) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING seq",
    )
    .bind(&msg.id)
    .bind(&msg.title)
    .bind(&msg.content)
    .bind(msg.msg_type)
    .bind(&msg.sender)
    .bind(msg.created_at_ms)
    .bind(&msg.template)
    .bind(msg.data.as_ref().map(|d| d.to_string()))
    .bind(if msg.rendered.is_empty() {
        None
    } else {
        serde_json::to_string(&msg.rendered).ok()
    })
    .bind(msg.send_at_ms)
    .bind(msg.expires_at_ms)
    .bind(
        msg.routing
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok()),
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;

    let ids = insert_deliveries(conn, seq, msg, now).await?;
    timers::insert_for(conn, seq, msg).await?;
    Ok(Inserted::New {
        seq,
        delivery_ids: ids,
    })
}

/// One `INSERT … SELECT FROM UNNEST(…)` for all of a message's deliveries (a broadcast has
/// thousands). The ids come back by (receiver, channel), unique per message, so the answer
/// does not rely on the order of `RETURNING`.
async fn insert_deliveries(
    conn: &mut PgConnection,
    seq: i64,
    msg: &NewMessage,
    now: i64,
) -> Result<Vec<i64>, StoreError> {
    if msg.deliveries.is_empty() {
        return Ok(Vec::new());
    }
    let n = msg.deliveries.len();
    let held = msg.held_until();
    let (mut receivers, mut channels) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut statuses, mut errors, mut dues) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for d in &msg.deliveries {
        // Outbox rows are due at once, or at sendAt (the message's own clock: tests inject
        // one); presence rows of a scheduled message are held until sendAt.
        let due = match (d.outbox, d.status) {
            (true, Status::Pending) => Some(held.unwrap_or(msg.created_at_ms)),
            (false, Status::Pending) => held,
            _ => None,
        };
        receivers.push(d.receiver.as_str());
        channels.push(d.channel.as_str());
        statuses.push(d.status.code());
        errors.push(d.error.as_deref());
        dues.push(due);
    }
    let rows = sqlx::query(
        "INSERT INTO deliveries (message_seq, receiver, channel, status, last_error, \
           next_attempt_at, created_at, updated_at) \
         SELECT $1, t.receiver, t.channel, t.status, t.last_error, t.due, $7, $8 \
         FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[]) \
           WITH ORDINALITY AS t (receiver, channel, status, last_error, due, ord) \
         ORDER BY t.ord \
         RETURNING id, receiver, channel",
    )
    .bind(seq)
    .bind(&receivers)
    .bind(&channels)
    .bind(&statuses)
    .bind(&errors)
    .bind(&dues)
    .bind(msg.created_at_ms)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_key: HashMap<(String, String), i64> = HashMap::with_capacity(rows.len());
    for r in &rows {
        by_key.insert((r.try_get(1)?, r.try_get(2)?), r.try_get(0)?);
    }
    msg.deliveries
        .iter()
        .map(|d| {
            by_key
                .get(&(d.receiver.clone(), d.channel.clone()))
                .copied()
                .ok_or_else(|| {
                    StoreError::Corrupt("an inserted delivery came back without its id".into())
                })
        })
        .collect()
}

/// The forward-only rule, as SQL over the bound new status `$1`.
const MOVES_FORWARD: &str = "(CASE WHEN $1 = 4 THEN status < 2 ELSE status < $1 END)";

async fn apply_status(
    conn: &mut PgConnection,
    changes: &[StatusChange],
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    let by_id = format!(
        "UPDATE deliveries SET status = $1, last_error = COALESCE($2, last_error), \
           attempts = attempts + $3, updated_at = $4 \
         WHERE id = $5 AND {MOVES_FORWARD}"
    );
    // A retryable failure or a re-send: the status stays, the attempt and error are kept.
    let attempt_only = "UPDATE deliveries SET last_error = COALESCE($1, last_error), \
           attempts = attempts + 1, updated_at = $2 WHERE id = $3 AND status < 2";
    let by_receiver = format!(
        "UPDATE deliveries SET status = $1, updated_at = $2 \
         WHERE message_seq = (SELECT seq FROM messages WHERE id = $3) \
           AND receiver = $4 AND channel = $5 AND {MOVES_FORWARD}"
    );
    let mut applied = vec![false; changes.len()];
    // `sent` without an error is by far the most common change (every written frame): apply
    // those in bulk, `= ANY(…)` arrays, instead of one statement each.
    let mut bulk: Vec<(usize, i64)> = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        if let StatusChange::Delivery {
            delivery_id,
            status: Status::Sent,
            error: None,
            count_attempt: true,
        } = change
        {
            bulk.push((i, *delivery_id));
        }
    }
    for chunk in bulk.chunks(BULK_CHUNK) {
        let ids: Vec<i64> = chunk.iter().map(|(_, id)| *id).collect();
        // Re-sends first (already `sent`: count the attempt), then `pending` → `sent`.
        sqlx::query(
            "UPDATE deliveries SET attempts = attempts + 1, updated_at = $1 \
             WHERE status = 1 AND id = ANY($2)",
        )
        .bind(now)
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
        let moved: HashSet<i64> = sqlx::query(
            "UPDATE deliveries SET status = 1, attempts = attempts + 1, updated_at = $1 \
             WHERE status = 0 AND id = ANY($2) RETURNING id",
        )
        .bind(now)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()?;
        // A delivery listed twice in one batch (two sessions of one user) moves once but
        // counts every hand-over as an attempt.
        let mut seen: HashMap<i64, i64> = HashMap::with_capacity(chunk.len());
        for (i, id) in chunk {
            let n = seen.entry(*id).or_insert(0);
            *n += 1;
            applied[*i] = *n == 1 && moved.contains(id);
        }
        let mut extra: Vec<(i64, i64)> = seen.into_iter().filter(|(_, n)| *n > 1).collect();
        extra.sort_unstable();
        for (id, n) in extra {
            sqlx::query(
                "UPDATE deliveries SET attempts = attempts + $1 WHERE id = $2 AND status = 1",
            )
            .bind(n - 1)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
    }
    for (i, change) in changes.iter().enumerate() {
        let moved = match change {
            StatusChange::Delivery {
                status: Status::Sent,
                error: None,
                count_attempt: true,
                ..
            } => continue, // applied in bulk above
            StatusChange::Delivery {
                delivery_id,
                status,
                error,
                count_attempt,
            } => {
                let moved = sqlx::query(&by_id)
                    .bind(status.code())
                    .bind(error)
                    .bind(i64::from(*count_attempt))
                    .bind(now)
                    .bind(delivery_id)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
                    > 0;
                if !moved && *count_attempt {
                    sqlx::query(attempt_only)
                        .bind(error)
                        .bind(now)
                        .bind(delivery_id)
                        .execute(&mut *conn)
                        .await?;
                }
                moved
            }
            StatusChange::Attempt {
                delivery_id,
                lease_until_ms,
                outcome,
            } => {
                // Fenced: the WHERE re-checks `lease_until` on the locked, latest version of
                // the row, so an outcome whose lease was taken over changes nothing.
                let q = match outcome {
                    AttemptOutcome::Sent { .. } => sqlx::query(
                        "UPDATE deliveries SET status = 1, next_attempt_at = NULL, lease_until = NULL, \
                           provider_id = $4, updated_at = $1 \
                         WHERE id = $2 AND status = 0 AND lease_until = $3",
                    ),
                    AttemptOutcome::Retry { .. } => sqlx::query(
                        "UPDATE deliveries SET next_attempt_at = $4, lease_until = NULL, last_error = $5, \
                           updated_at = $1 WHERE id = $2 AND status = 0 AND lease_until = $3",
                    ),
                    AttemptOutcome::Failed { .. } => sqlx::query(
                        "UPDATE deliveries SET status = 4, next_attempt_at = NULL, lease_until = NULL, \
                           last_error = $4, updated_at = $1 WHERE id = $2 AND status = 0 AND lease_until = $3",
                    ),
                };
                let q = q.bind(now).bind(delivery_id).bind(lease_until_ms);
                let q = match outcome {
                    AttemptOutcome::Sent { provider_id } => q.bind(provider_id),
                    AttemptOutcome::Retry { at_ms, error } => q.bind(at_ms).bind(error),
                    AttemptOutcome::Failed { error } => q.bind(error),
                };
                let moved = q.execute(&mut *conn).await?.rows_affected() > 0;
                // A retry keeps the status: "moved" means a status transition.
                moved && !matches!(outcome, AttemptOutcome::Retry { .. })
            }
            StatusChange::Receiver {
                message_id,
                receiver,
                channel,
                status,
            } => {
                sqlx::query(&by_receiver)
                    .bind(status.code())
                    .bind(now)
                    .bind(message_id)
                    .bind(receiver)
                    .bind(channel)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
                    > 0
            }
        };
        applied[i] = moved;
    }
    Ok(applied)
}

const INBOX_COLUMNS: &str =
    "m.seq, m.id, m.title, m.content, m.msg_type, m.sender, m.created_at, d.status, d.id";

fn inbox_item(row: &PgRow) -> Result<InboxItem, StoreError> {
    Ok(InboxItem {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        title: row.try_get(2)?,
        content: row.try_get(3)?,
        msg_type: row.try_get(4)?,
        sender: row.try_get(5)?,
        created_at_ms: row.try_get(6)?,
        status: Status::from_code(row.try_get(7)?),
        delivery_id: row.try_get(8)?,
    })
}

/// Lease up to `limit` due outbox rows of `channel`: the lease end becomes the row's due
/// time, so a row whose worker died is due again when the lease runs out.
async fn claim(
    conn: &mut PgConnection,
    channel: &str,
    now: i64,
    lease_until: i64,
    limit: u32,
    quota: Option<QuotaClaim>,
) -> Result<ClaimResult, StoreError> {
    let mut limit = limit;
    let mut left = None;
    if let Some(q) = quota {
        // Lock the window's counter for this transaction: claims against one quota queue
        // here, across nodes, so they never spend more than the limit between them.
        sqlx::query(
            "INSERT INTO quota_usage (channel, window_start, used) VALUES ($1, $2, 0) \
             ON CONFLICT (channel, window_start) DO NOTHING",
        )
        .bind(channel)
        .bind(q.window_start_ms)
        .execute(&mut *conn)
        .await?;
        let used: i64 = sqlx::query(
            "SELECT used FROM quota_usage WHERE channel = $1 AND window_start = $2 FOR UPDATE",
        )
        .bind(channel)
        .bind(q.window_start_ms)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        let remaining = q.limit.saturating_sub(used.max(0) as u64);
        limit = limit.min(remaining.min(u64::from(u32::MAX)) as u32);
        left = Some(remaining);
        if limit == 0 {
            return Ok(ClaimResult {
                rows: Vec::new(),
                quota_left: left,
            });
        }
    }
    let rows = sqlx::query(
        "WITH picked AS MATERIALIZED ( \
           SELECT id FROM deliveries \
            WHERE channel = $3 AND status = 0 AND next_attempt_at IS NOT NULL AND next_attempt_at <= $2 \
            ORDER BY next_attempt_at LIMIT $4 \
            FOR UPDATE SKIP LOCKED) \
         UPDATE deliveries SET next_attempt_at = $1, lease_until = $1, attempts = attempts + 1, updated_at = $2 \
          WHERE id IN (SELECT id FROM picked) \
         RETURNING id, message_seq, receiver, channel, attempts",
    )
    .bind(lease_until)
    .bind(now)
    .bind(channel)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok(Claimed {
                delivery_id: r.try_get(0)?,
                message_seq: r.try_get(1)?,
                receiver: r.try_get(2)?,
                channel: r.try_get(3)?,
                attempts: r.try_get(4)?,
                lease_until_ms: lease_until,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    out.sort_by_key(|c| (c.message_seq, c.delivery_id));
    if let (Some(q), Some(remaining)) = (quota, left) {
        if !out.is_empty() {
            sqlx::query(
                "UPDATE quota_usage SET used = used + $3 WHERE channel = $1 AND window_start = $2",
            )
            .bind(channel)
            .bind(q.window_start_ms)
            .bind(out.len() as i64)
            .execute(&mut *conn)
            .await?;
            // Old windows are of no use: keep the table small.
            sqlx::query("DELETE FROM quota_usage WHERE channel = $1 AND window_start < $2")
                .bind(channel)
                .bind(q.window_start_ms - 7 * 86_400_000)
                .execute(&mut *conn)
                .await?;
        }
        left = Some(remaining - out.len() as u64);
    }
    Ok(ClaimResult {
        rows: out,
        quota_left: left,
    })
}

const DEVICE_COLUMNS: &str = "id, user_id, platform, token, name, active, deactivated_at, \
     deactivated_reason, created_at, updated_at";

fn device_row(r: &PgRow) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        platform: r.try_get(2)?,
        token: r.try_get(3)?,
        name: r.try_get(4)?,
        active: r.try_get(5)?,
        deactivated_at_ms: r.try_get(6)?,
        deactivated_reason: r.try_get(7)?,
        created_at_ms: r.try_get(8)?,
        updated_at_ms: r.try_get(9)?,
    })
}

fn delivery(row: &PgRow) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: row.try_get("id")?,
        receiver: row.try_get("receiver")?,
        channel: row.try_get("channel")?,
        status: Status::from_code(row.try_get("status")?),
        attempts: row.try_get("attempts")?,
        error: row.try_get("last_error")?,
        next_attempt_ms: row.try_get("next_attempt_at")?,
        provider_id: row.try_get("provider_id")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
    })
}

const DELIVERY_COLUMNS: &str = "id, message_seq, receiver, channel, status, attempts, last_error, \
     next_attempt_at, provider_id, created_at, updated_at";

fn message_head(row: &PgRow) -> Result<Message, StoreError> {
    Ok(Message {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        content: row.try_get("content")?,
        msg_type: row.try_get("msg_type")?,
        sender: row.try_get("sender")?,
        created_at_ms: row.try_get("created_at")?,
        template: row.try_get("template")?,
        send_at_ms: row.try_get("send_at")?,
        expires_at_ms: row.try_get("expires_at")?,
        routing: policy(row.try_get("routing")?)?,
        routes: Vec::new(),
        deliveries: Vec::new(),
        delivery_counts: [0; 5],
    })
}

fn policy(json: Option<String>) -> Result<Option<Policy>, StoreError> {
    json.map(|j| serde_json::from_str(&j))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("messages.routing: {e}")))
}

const HEAD_COLUMNS: &str = "m.seq, m.id, m.title, m.content, m.msg_type, m.sender, m.created_at, \
     m.template, m.send_at, m.expires_at, m.routing";

/// Add the `WHERE` clause of a message filter (over `messages m`).
fn push_filter(qb: &mut QueryBuilder<'_, Postgres>, f: &MessageFilter) {
    qb.push(" WHERE TRUE");
    if let Some(sender) = &f.sender {
        qb.push(" AND m.sender = ").push_bind(sender.clone());
    }
    if let Some(t) = f.msg_type {
        qb.push(" AND m.msg_type = ").push_bind(t);
    }
    if f.receiver.is_some() || f.channel.is_some() || f.status.is_some() {
        qb.push(" AND EXISTS (SELECT 1 FROM deliveries d WHERE d.message_seq = m.seq");
        if let Some(r) = &f.receiver {
            qb.push(" AND d.receiver = ").push_bind(r.clone());
        }
        if let Some(c) = &f.channel {
            qb.push(" AND d.channel = ").push_bind(c.clone());
        }
        match f.status {
            Some(StatusFilter::Is(s)) => {
                qb.push(" AND d.status = ").push_bind(s.code());
            }
            Some(StatusFilter::Undelivered) => {
                qb.push(" AND d.status < 2");
            }
            None => {}
        }
        qb.push(")");
    }
}

fn corrupt(what: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

#[async_trait]
impl Store for PgStore {
    async fn insert_message(&self, msg: NewMessage) -> Result<Inserted, StoreError> {
        let now = now_ms();
        self.maybe_prune(now);
        let mut tx = self.pool.begin().await?;
        let inserted = insert(&mut tx, &msg, now).await?;
        if matches!(inserted, Inserted::New { .. }) {
            tx.commit().await?;
        }
        // Otherwise nothing was written: dropping `tx` rolls back (and frees the key's lock).
        Ok(inserted)
    }

    async fn get_message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {HEAD_COLUMNS} FROM messages m WHERE m.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let mut msg = message_head(&row)?;
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_seq = $1 ORDER BY id"
        ))
        .bind(msg.seq)
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let d = delivery(row)?;
            msg.delivery_counts[d.status.code() as usize] += 1;
            msg.deliveries.push(d);
        }
        if msg.routing.is_some() {
            let rows = sqlx::query(
                "SELECT receiver, state, step, log::text FROM schedule \
                 WHERE message_seq = $1 AND kind = 2 ORDER BY id",
            )
            .bind(msg.seq)
            .fetch_all(&self.pool)
            .await?;
            for r in &rows {
                let step: i64 = r.try_get(2)?;
                let log: String = r.try_get(3)?;
                msg.routes.push(RouteRecord {
                    receiver: r.try_get(0)?,
                    state: RouteState::from_code(r.try_get(1)?),
                    step: usize::try_from(step).ok(),
                    log: serde_json::from_str::<Vec<LogEntry>>(&log)
                        .map_err(corrupt("schedule.log"))?,
                });
            }
        }
        Ok(Some(msg))
    }

    async fn list_messages(
        &self,
        filter: &MessageFilter,
        page: PageRequest,
        deliveries_per_message: usize,
    ) -> Result<Page<Message>, StoreError> {
        let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM messages m");
        push_filter(&mut count, filter);
        let total: i64 = count.build().fetch_one(&self.pool).await?.try_get(0)?;

        let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {HEAD_COLUMNS} FROM messages m"));
        push_filter(&mut q, filter);
        q.push(" ORDER BY m.seq DESC LIMIT ")
            .push_bind(i64::from(page.size))
            .push(" OFFSET ")
            .push_bind(page.offset());
        let rows = q.build().fetch_all(&self.pool).await?;
        let mut items = rows
            .iter()
            .map(message_head)
            .collect::<Result<Vec<_>, _>>()?;
        if items.is_empty() {
            return Ok(Page { items, total });
        }
        let index: HashMap<i64, usize> =
            items.iter().enumerate().map(|(i, m)| (m.seq, i)).collect();
        let seqs: Vec<i64> = items.iter().map(|m| m.seq).collect();

        let counts = sqlx::query(
            "SELECT message_seq, status, count(*) FROM deliveries \
             WHERE message_seq = ANY($1) GROUP BY message_seq, status",
        )
        .bind(&seqs)
        .fetch_all(&self.pool)
        .await?;
        for row in counts {
            let seq: i64 = row.try_get(0)?;
            let status: i64 = row.try_get(1)?;
            let n: i64 = row.try_get(2)?;
            if let Some(&i) = index.get(&seq) {
                items[i].delivery_counts[Status::from_code(status).code() as usize] += n;
            }
        }

        let ds = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM ( \
               SELECT *, row_number() OVER (PARTITION BY message_seq ORDER BY id) AS rn \
               FROM deliveries WHERE message_seq = ANY($1)) d \
             WHERE rn <= $2 ORDER BY message_seq, id"
        ))
        .bind(&seqs)
        .bind(deliveries_per_message as i64)
        .fetch_all(&self.pool)
        .await?;
        for row in ds {
            let seq: i64 = row.try_get("message_seq")?;
            if let Some(&i) = index.get(&seq) {
                items[i].deliveries.push(delivery(&row)?);
            }
        }
        Ok(Page { items, total })
    }

    async fn delete_message(&self, id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("DELETE FROM messages WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }

    async fn undelivered(
        &self,
        receiver: &str,
        channel: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {INBOX_COLUMNS} FROM deliveries d JOIN messages m ON m.seq = d.message_seq \
             WHERE d.receiver = $1 AND d.channel = $2 AND d.status < 2 AND d.message_seq > $3 \
               AND d.next_attempt_at IS NULL \
             ORDER BY d.message_seq LIMIT $4"
        ))
        .bind(receiver)
        .bind(channel)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(inbox_item).collect()
    }

    async fn receivers_with_undelivered(&self, channel: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT receiver FROM deliveries WHERE channel = $1 AND status < 2",
        )
        .bind(channel)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    async fn inbox(
        &self,
        receiver: &str,
        channel: &str,
        undelivered_only: bool,
        page: PageRequest,
    ) -> Result<Page<InboxItem>, StoreError> {
        // Held (scheduled, not yet released) deliveries are not shown.
        let cond = if undelivered_only {
            " AND d.status < 2 AND d.next_attempt_at IS NULL"
        } else {
            " AND d.next_attempt_at IS NULL"
        };
        let total: i64 = sqlx::query(&format!(
            "SELECT count(*) FROM deliveries d WHERE d.receiver = $1 AND d.channel = $2{cond}"
        ))
        .bind(receiver)
        .bind(channel)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        let rows = sqlx::query(&format!(
            "SELECT {INBOX_COLUMNS} FROM deliveries d JOIN messages m ON m.seq = d.message_seq \
             WHERE d.receiver = $1 AND d.channel = $2{cond} \
             ORDER BY d.message_seq DESC LIMIT $3 OFFSET $4"
        ))
        .bind(receiver)
        .bind(channel)
        .bind(i64::from(page.size))
        .bind(page.offset())
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(inbox_item).collect::<Result<_, _>>()?;
        Ok(Page { items, total })
    }

    async fn collect(
        &self,
        receiver: &str,
        channel: &str,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError> {
        // One statement: lock the oldest undelivered rows (waiting for a concurrent collect,
        // whose rows then fail the re-check), mark them delivered, return them with their
        // messages. Two nodes collecting at once never return the same delivery.
        let rows = sqlx::query(
            "WITH picked AS MATERIALIZED ( \
               SELECT id FROM deliveries \
                WHERE receiver = $1 AND channel = $2 AND status < 2 AND next_attempt_at IS NULL \
                ORDER BY message_seq LIMIT $3 FOR UPDATE), \
             moved AS ( \
               UPDATE deliveries SET status = 2, updated_at = $4 \
                WHERE id IN (SELECT id FROM picked) AND status < 2 \
               RETURNING id, message_seq) \
             SELECT m.seq, m.id, m.title, m.content, m.msg_type, m.sender, m.created_at, \
                    2::int8, moved.id \
             FROM moved JOIN messages m ON m.seq = moved.message_seq ORDER BY m.seq",
        )
        .bind(receiver)
        .bind(channel)
        .bind(i64::from(limit))
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(inbox_item).collect()
    }

    async fn apply_status(&self, changes: Vec<StatusChange>) -> Result<Vec<bool>, StoreError> {
        if changes.is_empty() {
            return Ok(vec![]);
        }
        let mut tx = self.pool.begin().await?;
        let applied = apply_status(&mut tx, &changes, now_ms()).await?;
        tx.commit().await?;
        Ok(applied)
    }

    async fn put_recipient(&self, r: Recipient) -> Result<bool, StoreError> {
        // `xmax = 0` only for a row this statement inserted (an update sets it).
        let created: bool = sqlx::query(
            "INSERT INTO recipients (user_id, name, email, phone, wechat_open_id, devices, \
               preferences, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (user_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email, \
               phone = EXCLUDED.phone, wechat_open_id = EXCLUDED.wechat_open_id, \
               devices = EXCLUDED.devices, preferences = EXCLUDED.preferences, \
               updated_at = EXCLUDED.updated_at \
             RETURNING (xmax = 0)",
        )
        .bind(&r.user_id)
        .bind(&r.name)
        .bind(&r.email)
        .bind(&r.phone)
        .bind(&r.wechat_open_id)
        .bind(r.devices.to_string())
        .bind(r.preferences.to_string())
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(created)
    }

    async fn get_recipient(&self, user_id: &str) -> Result<Option<Recipient>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT user_id, name, email, phone, wechat_open_id, devices, preferences, updated_at \
             FROM recipients WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let json = |col: &str| -> Result<serde_json::Value, StoreError> {
            let text: String = row.try_get(col)?;
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("recipients.{col}: {e}")))
        };
        Ok(Some(Recipient {
            user_id: row.try_get("user_id")?,
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            phone: row.try_get("phone")?,
            wechat_open_id: row.try_get("wechat_open_id")?,
            devices: json("devices")?,
            preferences: json("preferences")?,
            updated_at_ms: row.try_get("updated_at")?,
        }))
    }

    async fn delete_recipient(&self, user_id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("DELETE FROM recipients WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }

    async fn claim_due(
        &self,
        channel: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
        quota: Option<QuotaClaim>,
    ) -> Result<ClaimResult, StoreError> {
        let mut tx = self.pool.begin().await?;
        let claimed = claim(&mut tx, channel, now_ms, lease_until_ms, limit, quota).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn quota_used(&self, channel: &str, window_start_ms: i64) -> Result<u64, StoreError> {
        let used: Option<i64> =
            sqlx::query("SELECT used FROM quota_usage WHERE channel = $1 AND window_start = $2")
                .bind(channel)
                .bind(window_start_ms)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        Ok(used.unwrap_or(0).max(0) as u64)
    }

    async fn delivery_channel(&self, delivery_id: i64) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query("SELECT channel FROM deliveries WHERE id = $1")
            .bind(delivery_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    async fn delivery_by_provider_id(
        &self,
        channel: &str,
        provider_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query(
            "SELECT id FROM deliveries WHERE channel = $1 AND provider_id = $2 \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(channel)
        .bind(provider_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
    }

    async fn count_due(&self, channel: &str, now_ms: i64, limit: u32) -> Result<u32, StoreError> {
        let n: i64 = sqlx::query(
            "SELECT count(*) FROM (SELECT 1 FROM deliveries WHERE channel = $1 AND status = 0 \
               AND next_attempt_at IS NOT NULL AND next_attempt_at <= $2 LIMIT $3) due",
        )
        .bind(channel)
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    async fn next_due(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query(
            "SELECT min(next_attempt_at) FROM deliveries \
             WHERE channel = $1 AND status = 0 AND next_attempt_at IS NOT NULL",
        )
        .bind(channel)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?)
    }

    async fn outbox_counts(&self) -> Result<HashMap<String, OutboxCounts>, StoreError> {
        let rows = sqlx::query(
            "SELECT channel, count(*), count(*) FILTER (WHERE attempts > 0) FROM deliveries \
             WHERE status = 0 AND next_attempt_at IS NOT NULL GROUP BY channel",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::new();
        for r in &rows {
            out.insert(
                r.try_get::<String, _>(0)?,
                OutboxCounts {
                    pending: r.try_get(1)?,
                    retrying: r.try_get(2)?,
                },
            );
        }
        Ok(out)
    }

    async fn outbox_messages(&self, seqs: &[i64]) -> Result<Vec<OutboxMessage>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT seq, id, title, content, msg_type, sender, created_at, template, data, rendered, \
               expires_at, routing FROM messages WHERE seq = ANY($1)",
        )
        .bind(seqs)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let data: Option<String> = r.try_get(8)?;
            let rendered: Option<String> = r.try_get(9)?;
            out.push(OutboxMessage {
                seq: r.try_get(0)?,
                id: r.try_get(1)?,
                title: r.try_get(2)?,
                content: r.try_get(3)?,
                msg_type: r.try_get(4)?,
                sender: r.try_get(5)?,
                created_at_ms: r.try_get(6)?,
                template: r.try_get(7)?,
                data: data
                    .map(|d| serde_json::from_str(&d))
                    .transpose()
                    .map_err(corrupt("messages.data"))?,
                rendered: rendered
                    .map(|d| serde_json::from_str(&d))
                    .transpose()
                    .map_err(corrupt("messages.rendered"))?
                    .unwrap_or_default(),
                expires_at_ms: r.try_get(10)?,
                routing: policy(r.try_get(11)?)?,
            });
        }
        Ok(out)
    }

    async fn any_preferences(&self) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM recipients WHERE preferences <> '{}' LIMIT 1")
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    async fn register_device(&self, d: NewDevice) -> Result<(DeviceRecord, bool), StoreError> {
        // One statement: the same platform and token is the same row (moved to this user and
        // reactivated), even when two nodes register it at once.
        let row = sqlx::query(&format!(
            "INSERT INTO devices (user_id, platform, token, name, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (platform, token) DO UPDATE SET user_id = EXCLUDED.user_id, \
               name = COALESCE(EXCLUDED.name, devices.name), active = TRUE, \
               deactivated_at = NULL, deactivated_reason = NULL, updated_at = EXCLUDED.updated_at \
             RETURNING {DEVICE_COLUMNS}, (xmax = 0) AS created"
        ))
        .bind(&d.user_id)
        .bind(&d.platform)
        .bind(&d.token)
        .bind(&d.name)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok((device_row(&row)?, row.try_get("created")?))
    }

    async fn list_devices(&self, user_id: &str) -> Result<Vec<DeviceRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 ORDER BY id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(device_row)
        .collect()
    }

    async fn delete_device(&self, user_id: &str, device_id: i64) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("DELETE FROM devices WHERE id = $1 AND user_id = $2")
                .bind(device_id)
                .bind(user_id)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    async fn active_devices(
        &self,
        user_id: &str,
        platform: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, token FROM devices WHERE user_id = $1 AND platform = $2 AND active \
             ORDER BY id",
        )
        .bind(user_id)
        .bind(platform)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn deactivate_devices(&self, dead: Vec<(i64, String)>) -> Result<u64, StoreError> {
        if dead.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let mut n = 0;
        for (id, reason) in &dead {
            n += sqlx::query(
                "UPDATE devices SET active = FALSE, deactivated_at = $1, deactivated_reason = $2, \
                   updated_at = $1 WHERE id = $3 AND active",
            )
            .bind(now)
            .bind(reason)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn count_undelivered(
        &self,
        receiver: &str,
        channel: &str,
    ) -> Result<(u64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT count(*), COALESCE(max(message_seq), 0) FROM deliveries \
             WHERE receiver = $1 AND channel = $2 AND status < 2 AND next_attempt_at IS NULL",
        )
        .bind(receiver)
        .bind(channel)
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = row.try_get(0)?;
        Ok((n.max(0) as u64, row.try_get(1)?))
    }

    async fn claim_timers(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<Timer>, StoreError> {
        timers::claim(&self.pool, now_ms, lease_until_ms, limit).await
    }

    async fn next_timer_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query("SELECT min(due_at) FROM schedule WHERE due_at IS NOT NULL")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    async fn release_held(
        &self,
        timer: &Timer,
        presence: &[String],
    ) -> Result<Option<Vec<(i64, String, String)>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let released = timers::release(&mut tx, timer, presence, now_ms()).await?;
        if released.is_some() {
            tx.commit().await?;
        }
        Ok(released)
    }

    async fn expire_message(
        &self,
        timer: &Timer,
        presence: &[String],
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let expired = timers::expire(&mut tx, timer, presence, now_ms).await?;
        if expired.is_some() {
            tx.commit().await?;
        }
        Ok(expired)
    }

    async fn receiver_deliveries(
        &self,
        message_seq: i64,
        receiver: &str,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_seq = $1 AND receiver = $2 \
             ORDER BY id"
        ))
        .bind(message_seq)
        .bind(receiver)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery).collect()
    }

    async fn advance_route(&self, advance: RouteAdvance) -> Result<Option<Vec<i64>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ids = timers::advance(&mut tx, &advance).await?;
        if ids.is_some() {
            tx.commit().await?;
        }
        Ok(ids)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let applied: i64 = sqlx::query("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let expected = MIGRATOR.iter().count() as i64;
        if applied < expected {
            return Err(StoreError::Corrupt(format!(
                "{applied} of {expected} migrations applied"
            )));
        }
        Ok(())
    }

    async fn close(&self) {
        // Every operation finished its own transaction before answering: nothing is queued.
        self.pool.close().await;
    }
}
