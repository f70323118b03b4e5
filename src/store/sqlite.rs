//! SQLite store (the embedded default).
//!
//! SQLite has one writer at a time, so Herald gives it exactly one: a writer task owns the
//! only read-write connection and applies queued operations in batches — every operation
//! waiting when a batch starts is committed in one transaction (group commit); if any of
//! them fails, the batch is rolled back and each runs again alone, so one failure doesn't
//! undo the others. Callers get their answer only after their commit. Reads go through a separate pool of read-only connections (WAL mode
//! lets them run beside the writer).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::{OutboxCounts, Store, StoreError};
use crate::config::{DatabaseSettings, Synchronous};
use crate::model::{
    now_ms, AttemptOutcome, ClaimResult, Claimed, Delivery, DeviceRecord, InboxItem, Inserted,
    Message, MessageFilter, NewDevice, NewMessage, OutboxMessage, Page, PageRequest, QuotaClaim,
    Recipient, RouteAdvance, RouteRecord, Status, StatusChange, StatusFilter, Timer,
};
use crate::routing::{LogEntry, Policy, RouteState};

mod timers;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row INSERT (8 parameters each; SQLite allows 32,766).
const INSERT_CHUNK: usize = 256;

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum WriteOp {
    Insert(Box<NewMessage>, Reply<Inserted>),
    Delete(String, Reply<bool>),
    Status(Vec<StatusChange>, Reply<Vec<bool>>),
    Collect {
        receiver: String,
        channel: String,
        limit: u32,
        reply: Reply<Vec<InboxItem>>,
    },
    PutRecipient(Box<Recipient>, Reply<bool>),
    DeleteRecipient(String, Reply<bool>),
    RegisterDevice(Box<NewDevice>, Reply<(DeviceRecord, bool)>),
    DeleteDevice(String, i64, Reply<bool>),
    DeactivateDevices(Vec<(i64, String)>, Reply<u64>),
    Claim {
        channel: String,
        now: i64,
        lease_until: i64,
        limit: u32,
        quota: Option<QuotaClaim>,
        reply: Reply<ClaimResult>,
    },
    /// Scheduler work on the `schedule` table.
    Timers(TimerOp, Reply<TimerOutcome>),
    /// Finish everything queued before it, close the connection, answer, stop.
    Close(oneshot::Sender<()>),
}

enum TimerOp {
    Claim {
        now: i64,
        lease_until: i64,
        limit: u32,
    },
    Release(Timer, Vec<String>),
    Expire(Timer, Vec<String>, i64),
    Advance(Box<RouteAdvance>),
}

enum TimerOutcome {
    Claimed(Vec<Timer>),
    Released(Option<Vec<(i64, String, String)>>),
    Expired(Option<Vec<String>>),
    Advanced(Option<Vec<i64>>),
}

pub struct SqliteStore {
    writer: mpsc::Sender<WriteOp>,
    readers: SqlitePool,
    writer_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SqliteStore {
    /// Open (creating the file if needed), migrate, and start the writer.
    pub async fn open(url: &str, settings: &DatabaseSettings) -> Result<SqliteStore, StoreError> {
        let base = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .synchronous(match settings.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .pragma("cache_size", "-16000")
            .pragma("temp_store", "memory");
        let mut writer = SqliteConnection::connect_with(&base).await?;
        MIGRATOR.run(&mut writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(settings.max_readers)
            .min_connections(1)
            .connect_with(base.clone().read_only(true))
            .await?;
        // Prune expired idempotency keys once at start; the writer does it hourly after.
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
            .bind(now_ms() - IDEMPOTENCY_TTL_MS)
            .execute(&mut writer)
            .await?;
        let (tx, rx) = mpsc::channel(settings.max_batch * 4);
        let max_batch = settings.max_batch;
        let task = tokio::spawn(writer_loop(writer, rx, max_batch));
        Ok(SqliteStore {
            writer: tx,
            readers,
            writer_task: std::sync::Mutex::new(Some(task)),
        })
    }

    /// Migrate the database at `url` and return.
    pub async fn migrate_only(url: &str) -> Result<(), StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let mut conn = SqliteConnection::connect_with(&opts).await?;
        MIGRATOR.run(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// Make sure the directory of a `sqlite://` file exists.
    pub fn ensure_parent(path: &Path) -> std::io::Result<()> {
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
            _ => Ok(()),
        }
    }

    async fn write<T>(&self, make: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

async fn writer_loop(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<WriteOp>,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut last_prune = now_ms();
    loop {
        if rx.recv_many(&mut batch, max_batch).await == 0 {
            break; // every sender is gone: shut down
        }
        let close_at = batch.iter().position(|op| matches!(op, WriteOp::Close(_)));
        if let Some(at) = close_at {
            let rest = batch.split_off(at);
            run_batch(&mut conn, &mut batch).await;
            if let Err(e) = conn.close().await {
                tracing::warn!(error = %e, "closing the SQLite writer failed");
            }
            for op in rest {
                match op {
                    WriteOp::Close(done) => {
                        let _ = done.send(());
                    }
                    other => fail(other, "the store is shut down"),
                }
            }
            rx.close();
            while let Ok(op) = rx.try_recv() {
                fail(op, "the store is shut down");
            }
            return;
        }
        run_batch(&mut conn, &mut batch).await;
        let now = now_ms();
        if now - last_prune > 3600 * 1000 {
            last_prune = now;
            if let Err(e) = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
                .bind(now - IDEMPOTENCY_TTL_MS)
                .execute(&mut conn)
                .await
            {
                tracing::warn!(error = %e, "pruning idempotency keys failed");
            }
        }
    }
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the SQLite writer failed");
    }
}

/// What an operation produced, before its caller is answered.
enum Outcome {
    Inserted(Inserted),
    Flag(bool),
    Applied(Vec<bool>),
    Items(Vec<InboxItem>),
    Claimed(ClaimResult),
    Device(DeviceRecord, bool),
    Count(u64),
    Timers(TimerOutcome),
}

/// Run one operation inside the current transaction (by reference: it may run again).
async fn apply(conn: &mut SqliteConnection, op: &WriteOp, now: i64) -> Result<Outcome, StoreError> {
    Ok(match op {
        WriteOp::Insert(msg, _) => Outcome::Inserted(insert(conn, msg, now).await?),
        WriteOp::Delete(id, _) => Outcome::Flag(
            sqlx::query("DELETE FROM messages WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                > 0,
        ),
        WriteOp::Status(changes, _) => Outcome::Applied(apply_status(conn, changes, now).await?),
        WriteOp::Collect {
            receiver,
            channel,
            limit,
            ..
        } => Outcome::Items(collect(conn, receiver, channel, *limit, now).await?),
        WriteOp::PutRecipient(rec, _) => Outcome::Flag(put_recipient(conn, rec, now).await?),
        WriteOp::DeleteRecipient(user, _) => Outcome::Flag(
            sqlx::query("DELETE FROM recipients WHERE user_id = ?")
                .bind(user)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                > 0,
        ),
        WriteOp::Claim {
            channel,
            now,
            lease_until,
            limit,
            quota,
            ..
        } => Outcome::Claimed(claim(conn, channel, *now, *lease_until, *limit, *quota).await?),
        WriteOp::RegisterDevice(d, _) => {
            let (rec, created) = register_device(conn, d, now).await?;
            Outcome::Device(rec, created)
        }
        WriteOp::DeleteDevice(user, id, _) => Outcome::Flag(
            sqlx::query("DELETE FROM devices WHERE id = ? AND user_id = ?")
                .bind(id)
                .bind(user)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                > 0,
        ),
        WriteOp::DeactivateDevices(dead, _) => {
            let mut n = 0;
            for (id, reason) in dead {
                n += sqlx::query(
                    "UPDATE devices SET active = 0, deactivated_at = ?1, deactivated_reason = ?2, \
                       updated_at = ?1 WHERE id = ?3 AND active = 1",
                )
                .bind(now)
                .bind(reason)
                .bind(id)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            }
            Outcome::Count(n)
        }
        WriteOp::Timers(op, _) => Outcome::Timers(match op {
            TimerOp::Claim {
                now,
                lease_until,
                limit,
            } => TimerOutcome::Claimed(timers::claim(conn, *now, *lease_until, *limit).await?),
            TimerOp::Release(t, presence) => {
                TimerOutcome::Released(timers::release(conn, t, presence, now).await?)
            }
            TimerOp::Expire(t, presence, at) => {
                TimerOutcome::Expired(timers::expire(conn, t, presence, *at).await?)
            }
            TimerOp::Advance(a) => TimerOutcome::Advanced(timers::advance(conn, a).await?),
        }),
        WriteOp::Close(_) => Outcome::Flag(true),
    })
}

/// Answer an operation's caller (after its transaction committed, or with the error).
fn answer(op: WriteOp, result: Result<Outcome, StoreError>) {
    fn reply<T>(
        tx: Reply<T>,
        r: Result<Outcome, StoreError>,
        pick: impl FnOnce(Outcome) -> Option<T>,
    ) {
        let r =
            r.and_then(|o| pick(o).ok_or_else(|| StoreError::Corrupt("mismatched outcome".into())));
        let _ = tx.send(r); // a dropped receiver means the caller went away
    }
    match op {
        WriteOp::Insert(_, tx) => reply(tx, result, |o| match o {
            Outcome::Inserted(i) => Some(i),
            _ => None,
        }),
        WriteOp::Delete(_, tx) | WriteOp::PutRecipient(_, tx) | WriteOp::DeleteRecipient(_, tx) => {
            reply(tx, result, |o| match o {
                Outcome::Flag(f) => Some(f),
                _ => None,
            })
        }
        WriteOp::Status(_, tx) => reply(tx, result, |o| match o {
            Outcome::Applied(a) => Some(a),
            _ => None,
        }),
        WriteOp::Collect { reply: tx, .. } => reply(tx, result, |o| match o {
            Outcome::Items(i) => Some(i),
            _ => None,
        }),
        WriteOp::RegisterDevice(_, tx) => reply(tx, result, |o| match o {
            Outcome::Device(d, c) => Some((d, c)),
            _ => None,
        }),
        WriteOp::DeleteDevice(_, _, tx) => reply(tx, result, |o| match o {
            Outcome::Flag(f) => Some(f),
            _ => None,
        }),
        WriteOp::DeactivateDevices(_, tx) => reply(tx, result, |o| match o {
            Outcome::Count(n) => Some(n),
            _ => None,
        }),
        WriteOp::Claim { reply: tx, .. } => reply(tx, result, |o| match o {
            Outcome::Claimed(c) => Some(c),
            _ => None,
        }),
        WriteOp::Timers(_, tx) => reply(tx, result, |o| match o {
            Outcome::Timers(t) => Some(t),
            _ => None,
        }),
        WriteOp::Close(done) => {
            let _ = done.send(());
        }
    }
}

/// Group commit. The fast path runs every queued operation in one transaction without
/// savepoints (each costs a round trip to SQLite's thread). If any operation fails, or the
/// commit does, everything is rolled back and each operation runs again alone, in its own
/// transaction — so one bad operation never takes the others down, and a caller hears
/// "done" only after its own work is committed.
async fn run_batch(conn: &mut SqliteConnection, batch: &mut Vec<WriteOp>) {
    let now = now_ms();
    let ops: Vec<WriteOp> = std::mem::take(batch);
    if ops.len() > 1 {
        if let Ok(mut tx) = conn.begin().await {
            let mut outcomes = Vec::with_capacity(ops.len());
            let mut ok = true;
            for op in &ops {
                match apply(&mut tx, op, now).await {
                    Ok(o) => outcomes.push(o),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok && tx.commit().await.is_ok() {
                for (op, o) in ops.into_iter().zip(outcomes) {
                    answer(op, Ok(o));
                }
                return;
            }
            // Dropping an uncommitted transaction rolls it back; retry one by one below.
            tracing::debug!("SQLite: batch failed; retrying its operations one by one");
        }
    }
    for op in ops {
        let result = match conn.begin().await {
            Err(e) => Err(StoreError::from(e)),
            Ok(mut tx) => match apply(&mut tx, &op, now).await {
                Ok(o) => tx.commit().await.map(|()| o).map_err(StoreError::from),
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            },
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "SQLite: write failed");
        }
        answer(op, result);
    }
}

fn fail(op: WriteOp, msg: &str) {
    let err = || StoreError::Corrupt(msg.to_owned());
    match op {
        WriteOp::Insert(_, r) => drop(r.send(Err(err()))),
        WriteOp::Delete(_, r) => drop(r.send(Err(err()))),
        WriteOp::Status(_, r) => drop(r.send(Err(err()))),
        WriteOp::Collect { reply, .. } => drop(reply.send(Err(err()))),
        WriteOp::Claim { reply, .. } => drop(reply.send(Err(err()))),
        WriteOp::RegisterDevice(_, r) => drop(r.send(Err(err()))),
        WriteOp::DeleteDevice(_, _, r) => drop(r.send(Err(err()))),
        WriteOp::DeactivateDevices(_, r) => drop(r.send(Err(err()))),
        WriteOp::PutRecipient(_, r) => drop(r.send(Err(err()))),
        WriteOp::DeleteRecipient(_, r) => drop(r.send(Err(err()))),
        WriteOp::Timers(_, r) => drop(r.send(Err(err()))),
        WriteOp::Close(done) => {
            let _ = done.send(());
        }
    }
}

async fn insert(
    conn: &mut SqliteConnection,
    msg: &NewMessage,
    now: i64,
) -> Result<Inserted, StoreError> {
    if let Some(idem) = &msg.idempotency {
        let row = sqlx::query(
            "SELECT request_hash, message_id, deliveries FROM idempotency_keys WHERE key = ? AND created_at >= ?",
        )
        .bind(&idem.key)
        .bind(now - IDEMPOTENCY_TTL_MS)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            let hash: String = row.try_get(0)?;
            if hash != idem.request_hash {
                return Ok(Inserted::KeyConflict);
            }
            let deliveries: i64 = row.try_get(2)?;
            return Ok(Inserted::Existing {
                id: row.try_get(1)?,
                deliveries: deliveries as usize,
            });
        }
    }
    let seq = sqlx::query(
        "INSERT INTO messages (id, title, content, msg_type, sender, created_at, template, data, rendered, \
           send_at, expires_at, routing) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    .bind(msg.routing.as_ref().and_then(|r| serde_json::to_string(r).ok()))
    .execute(&mut *conn)
    .await?
    .last_insert_rowid();
    // Multi-row inserts (a broadcast has thousands of deliveries). This connection is the
    // database's only writer and one INSERT stores its rows in order with consecutive
    // rowids, so the chunk's ids are the `n` ids ending at `last_insert_rowid`.
    let mut ids = Vec::with_capacity(msg.deliveries.len());
    let held = msg.held_until();
    for chunk in msg.deliveries.chunks(INSERT_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO deliveries (message_seq, receiver, channel, status, last_error, next_attempt_at, created_at, updated_at) ",
        );
        qb.push_values(chunk, |mut row, d| {
            // Outbox rows are due at once, or at sendAt (the message's own clock: tests
            // inject one); presence rows of a scheduled message are held until sendAt.
            let due = match (d.outbox, d.status) {
                (true, Status::Pending) => Some(held.unwrap_or(msg.created_at_ms)),
                (false, Status::Pending) => held,
                _ => None,
            };
            row.push_bind(seq)
                .push_bind(d.receiver.as_str())
                .push_bind(d.channel.as_str())
                .push_bind(d.status.code())
                .push_bind(d.error.as_deref())
                .push_bind(due)
                .push_bind(msg.created_at_ms)
                .push_bind(now);
        });
        let last = qb.build().execute(&mut *conn).await?.last_insert_rowid();
        let first = last - chunk.len() as i64 + 1;
        ids.extend(first..=last);
    }

    timers::insert_for(conn, seq, msg).await?;
    if let Some(idem) = &msg.idempotency {
        sqlx::query(
            "INSERT OR REPLACE INTO idempotency_keys (key, request_hash, message_id, deliveries, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&idem.key)
        .bind(&idem.request_hash)
        .bind(&msg.id)
        .bind(msg.deliveries.len() as i64)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Inserted::New {
        seq,
        delivery_ids: ids,
    })
}

/// The forward-only rule, as SQL over the bound new status `?1`.
const MOVES_FORWARD: &str = "(CASE WHEN ?1 = 4 THEN status < 2 ELSE status < ?1 END)";

async fn apply_status(
    conn: &mut SqliteConnection,
    changes: &[StatusChange],
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    let by_id = format!(
        "UPDATE deliveries SET status = ?1, last_error = COALESCE(?2, last_error), \
           attempts = attempts + ?3, updated_at = ?4 \
         WHERE id = ?5 AND {MOVES_FORWARD}"
    );
    // A retryable failure or a re-send: the status stays, the attempt and error are kept.
    let attempt_only = "UPDATE deliveries SET last_error = COALESCE(?1, last_error), \
           attempts = attempts + 1, updated_at = ?2 WHERE id = ?3 AND status < 2";
    let by_receiver = format!(
        "UPDATE deliveries SET status = ?1, updated_at = ?2 \
         WHERE message_seq = (SELECT seq FROM messages WHERE id = ?3) \
           AND receiver = ?4 AND channel = ?5 AND {MOVES_FORWARD}"
    );
    let mut applied = vec![false; changes.len()];
    // `sent` without an error is by far the most common change (every written frame): apply
    // those in bulk, `IN (…)` chunks, instead of one statement each.
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
    // `UPDATE … SET <set>, updated_at = now WHERE status = <from> AND id IN (chunk)<tail>`
    let by_ids = |set: &str, from: i64, chunk: &[(usize, i64)], tail: &str| {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "UPDATE OR FAIL deliveries SET {set}, updated_at = "
        ));
        qb.push_bind(now)
            .push(" WHERE status = ")
            .push_bind(from)
            .push(" AND id IN (");
        let mut sep = qb.separated(", ");
        for (_, id) in chunk {
            sep.push_bind(*id);
        }
        qb.push(")").push(tail);
        qb
    };
    for chunk in bulk.chunks(500) {
        // Re-sends first (already `sent`: count the attempt), then `pending` → `sent`.
        by_ids("attempts = attempts + 1", 1, chunk, "")
            .build()
            .execute(&mut *conn)
            .await?;
        let mut forward = by_ids(
            "status = 1, attempts = attempts + 1",
            0,
            chunk,
            " RETURNING id",
        );
        let moved: std::collections::HashSet<i64> = forward
            .build()
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
        for (id, n) in seen.into_iter().filter(|(_, n)| *n > 1) {
            sqlx::query(
                "UPDATE deliveries SET attempts = attempts + ? WHERE id = ? AND status = 1",
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
                let q = match outcome {
                    AttemptOutcome::Sent { .. } => sqlx::query(
                        "UPDATE deliveries SET status = 1, next_attempt_at = NULL, lease_until = NULL, \
                           provider_id = ?4, updated_at = ?1 WHERE id = ?2 AND status = 0 AND lease_until = ?3",
                    )
                    .bind(now),
                    AttemptOutcome::Retry { .. } => sqlx::query(
                        "UPDATE deliveries SET next_attempt_at = ?4, lease_until = NULL, last_error = ?5, \
                           updated_at = ?1 WHERE id = ?2 AND status = 0 AND lease_until = ?3",
                    )
                    .bind(now),
                    AttemptOutcome::Failed { .. } => sqlx::query(
                        "UPDATE deliveries SET status = 4, next_attempt_at = NULL, lease_until = NULL, \
                           last_error = ?4, updated_at = ?1 WHERE id = ?2 AND status = 0 AND lease_until = ?3",
                    )
                    .bind(now),
                };
                let q = q.bind(delivery_id).bind(lease_until_ms);
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

fn inbox_item(row: &sqlx::sqlite::SqliteRow) -> Result<InboxItem, StoreError> {
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

async fn collect(
    conn: &mut SqliteConnection,
    receiver: &str,
    channel: &str,
    limit: u32,
    now: i64,
) -> Result<Vec<InboxItem>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {INBOX_COLUMNS} FROM deliveries d JOIN messages m ON m.seq = d.message_seq \
         WHERE d.receiver = ? AND d.channel = ? AND d.status < 2 AND d.next_attempt_at IS NULL \
         ORDER BY d.message_seq LIMIT ?"
    ))
    .bind(receiver)
    .bind(channel)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut item = inbox_item(row)?;
        sqlx::query("UPDATE deliveries SET status = 2, updated_at = ? WHERE id = ? AND status < 2")
            .bind(now)
            .bind(item.delivery_id)
            .execute(&mut *conn)
            .await?;
        item.status = Status::Delivered;
        items.push(item);
    }
    Ok(items)
}

/// Lease up to `limit` due outbox rows of `channel`: the lease end becomes the row's due
/// time, so a row whose worker died is due again when the lease runs out.
async fn claim(
    conn: &mut SqliteConnection,
    channel: &str,
    now: i64,
    lease_until: i64,
    limit: u32,
    quota: Option<QuotaClaim>,
) -> Result<ClaimResult, StoreError> {
    let mut limit = limit;
    let mut left = None;
    if let Some(q) = quota {
        let used: i64 = sqlx::query(
            "SELECT COALESCE((SELECT used FROM quota_usage WHERE channel = ? AND window_start = ?), 0)",
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
        "UPDATE deliveries SET next_attempt_at = ?1, lease_until = ?1, attempts = attempts + 1, updated_at = ?2 \
         WHERE id IN (SELECT id FROM deliveries WHERE channel = ?3 AND status = 0 \
                        AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?2 \
                      ORDER BY next_attempt_at LIMIT ?4) \
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
                "INSERT INTO quota_usage (channel, window_start, used) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (channel, window_start) DO UPDATE SET used = used + ?3",
            )
            .bind(channel)
            .bind(q.window_start_ms)
            .bind(out.len() as i64)
            .execute(&mut *conn)
            .await?;
            // Old windows are of no use: keep the table small.
            sqlx::query("DELETE FROM quota_usage WHERE channel = ? AND window_start < ?")
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

fn device_row(r: &sqlx::sqlite::SqliteRow) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        platform: r.try_get(2)?,
        token: r.try_get(3)?,
        name: r.try_get(4)?,
        active: r.try_get::<i64, _>(5)? != 0,
        deactivated_at_ms: r.try_get(6)?,
        deactivated_reason: r.try_get(7)?,
        created_at_ms: r.try_get(8)?,
        updated_at_ms: r.try_get(9)?,
    })
}

async fn register_device(
    conn: &mut SqliteConnection,
    d: &NewDevice,
    now: i64,
) -> Result<(DeviceRecord, bool), StoreError> {
    let existing = sqlx::query("SELECT id FROM devices WHERE platform = ? AND token = ?")
        .bind(&d.platform)
        .bind(&d.token)
        .fetch_optional(&mut *conn)
        .await?;
    let (id, created) = match existing {
        Some(row) => {
            let id: i64 = row.try_get(0)?;
            sqlx::query(
                "UPDATE devices SET user_id = ?1, name = COALESCE(?2, name), active = 1, \
                   deactivated_at = NULL, deactivated_reason = NULL, updated_at = ?3 WHERE id = ?4",
            )
            .bind(&d.user_id)
            .bind(&d.name)
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await?;
            (id, false)
        }
        None => {
            let id = sqlx::query(
                "INSERT INTO devices (user_id, platform, token, name, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )
            .bind(&d.user_id)
            .bind(&d.platform)
            .bind(&d.token)
            .bind(&d.name)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .last_insert_rowid();
            (id, true)
        }
    };
    let row = sqlx::query(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?"
    ))
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    Ok((device_row(&row)?, created))
}

async fn put_recipient(
    conn: &mut SqliteConnection,
    r: &Recipient,
    now: i64,
) -> Result<bool, StoreError> {
    let existed = sqlx::query("SELECT 1 FROM recipients WHERE user_id = ?")
        .bind(&r.user_id)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    sqlx::query(
        "INSERT OR REPLACE INTO recipients (user_id, name, email, phone, wechat_open_id, devices, preferences, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&r.user_id)
    .bind(&r.name)
    .bind(&r.email)
    .bind(&r.phone)
    .bind(&r.wechat_open_id)
    .bind(r.devices.to_string())
    .bind(r.preferences.to_string())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(!existed)
}

fn delivery(row: &sqlx::sqlite::SqliteRow) -> Result<Delivery, StoreError> {
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

const DELIVERY_COLUMNS: &str =
    "id, message_seq, receiver, channel, status, attempts, last_error, next_attempt_at, provider_id, created_at, updated_at";

fn message_head(row: &sqlx::sqlite::SqliteRow) -> Result<Message, StoreError> {
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
fn push_filter(qb: &mut QueryBuilder<'_, Sqlite>, f: &MessageFilter) {
    qb.push(" WHERE 1 = 1");
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

#[async_trait]
impl Store for SqliteStore {
    async fn insert_message(&self, msg: NewMessage) -> Result<Inserted, StoreError> {
        self.write(|r| WriteOp::Insert(Box::new(msg), r)).await
    }

    async fn get_message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {HEAD_COLUMNS} FROM messages m WHERE m.id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.readers)
        .await?
        else {
            return Ok(None);
        };
        let mut msg = message_head(&row)?;
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_seq = ? ORDER BY id"
        ))
        .bind(msg.seq)
        .fetch_all(&self.readers)
        .await?;
        for row in &rows {
            let d = delivery(row)?;
            msg.delivery_counts[d.status.code() as usize] += 1;
            msg.deliveries.push(d);
        }
        if msg.routing.is_some() {
            let rows = sqlx::query(
                "SELECT receiver, state, step, log FROM schedule WHERE message_seq = ? AND kind = 2 ORDER BY id",
            )
            .bind(msg.seq)
            .fetch_all(&self.readers)
            .await?;
            for r in &rows {
                let step: i64 = r.try_get(2)?;
                let log: String = r.try_get(3)?;
                msg.routes.push(RouteRecord {
                    receiver: r.try_get(0)?,
                    state: RouteState::from_code(r.try_get(1)?),
                    step: usize::try_from(step).ok(),
                    log: serde_json::from_str::<Vec<LogEntry>>(&log)
                        .map_err(|e| StoreError::Corrupt(format!("schedule.log: {e}")))?,
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
        let mut count = QueryBuilder::<Sqlite>::new("SELECT count(*) FROM messages m");
        push_filter(&mut count, filter);
        let total: i64 = count.build().fetch_one(&self.readers).await?.try_get(0)?;

        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {HEAD_COLUMNS} FROM messages m"));
        push_filter(&mut q, filter);
        q.push(" ORDER BY m.seq DESC LIMIT ")
            .push_bind(i64::from(page.size))
            .push(" OFFSET ")
            .push_bind(page.offset());
        let rows = q.build().fetch_all(&self.readers).await?;
        let mut items = rows
            .iter()
            .map(message_head)
            .collect::<Result<Vec<_>, _>>()?;
        if items.is_empty() {
            return Ok(Page { items, total });
        }
        let index: HashMap<i64, usize> =
            items.iter().enumerate().map(|(i, m)| (m.seq, i)).collect();

        let mut counts = QueryBuilder::<Sqlite>::new(
            "SELECT message_seq, status, count(*) FROM deliveries WHERE message_seq IN (",
        );
        let mut sep = counts.separated(", ");
        for m in &items {
            sep.push_bind(m.seq);
        }
        counts.push(") GROUP BY message_seq, status");
        for row in counts.build().fetch_all(&self.readers).await? {
            let seq: i64 = row.try_get(0)?;
            let status: i64 = row.try_get(1)?;
            let n: i64 = row.try_get(2)?;
            if let Some(&i) = index.get(&seq) {
                items[i].delivery_counts[Status::from_code(status).code() as usize] += n;
            }
        }

        let mut ds = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {DELIVERY_COLUMNS} FROM (SELECT *, row_number() OVER (PARTITION BY message_seq ORDER BY id) AS rn \
             FROM deliveries WHERE message_seq IN ("
        ));
        let mut sep = ds.separated(", ");
        for m in &items {
            sep.push_bind(m.seq);
        }
        ds.push(")) WHERE rn <= ")
            .push_bind(deliveries_per_message as i64)
            .push(" ORDER BY message_seq, id");
        for row in ds.build().fetch_all(&self.readers).await? {
            let seq: i64 = row.try_get("message_seq")?;
            if let Some(&i) = index.get(&seq) {
                items[i].deliveries.push(delivery(&row)?);
            }
        }
        Ok(Page { items, total })
    }

    async fn delete_message(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(|r| WriteOp::Delete(id, r)).await
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
             WHERE d.receiver = ? AND d.channel = ? AND d.status < 2 AND d.message_seq > ? \
               AND d.next_attempt_at IS NULL \
             ORDER BY d.message_seq LIMIT ?"
        ))
        .bind(receiver)
        .bind(channel)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(inbox_item).collect()
    }

    async fn receivers_with_undelivered(&self, channel: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT receiver FROM deliveries WHERE channel = ? AND status < 2",
        )
        .bind(channel)
        .fetch_all(&self.readers)
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
            "SELECT count(*) FROM deliveries d WHERE d.receiver = ? AND d.channel = ?{cond}"
        ))
        .bind(receiver)
        .bind(channel)
        .fetch_one(&self.readers)
        .await?
        .try_get(0)?;
        let rows = sqlx::query(&format!(
            "SELECT {INBOX_COLUMNS} FROM deliveries d JOIN messages m ON m.seq = d.message_seq \
             WHERE d.receiver = ? AND d.channel = ?{cond} ORDER BY d.message_seq DESC LIMIT ? OFFSET ?"
        ))
        .bind(receiver)
        .bind(channel)
        .bind(i64::from(page.size))
        .bind(page.offset())
        .fetch_all(&self.readers)
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
        let (receiver, channel) = (receiver.to_owned(), channel.to_owned());
        self.write(|reply| WriteOp::Collect {
            receiver,
            channel,
            limit,
            reply,
        })
        .await
    }

    async fn apply_status(&self, changes: Vec<StatusChange>) -> Result<Vec<bool>, StoreError> {
        if changes.is_empty() {
            return Ok(vec![]);
        }
        self.write(|r| WriteOp::Status(changes, r)).await
    }

    async fn put_recipient(&self, recipient: Recipient) -> Result<bool, StoreError> {
        self.write(|r| WriteOp::PutRecipient(Box::new(recipient), r))
            .await
    }

    async fn get_recipient(&self, user_id: &str) -> Result<Option<Recipient>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM recipients WHERE user_id = ?")
            .bind(user_id)
            .fetch_optional(&self.readers)
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
        let user = user_id.to_owned();
        self.write(|r| WriteOp::DeleteRecipient(user, r)).await
    }

    async fn claim_due(
        &self,
        channel: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
        quota: Option<QuotaClaim>,
    ) -> Result<ClaimResult, StoreError> {
        let channel = channel.to_owned();
        self.write(|reply| WriteOp::Claim {
            channel,
            now: now_ms,
            lease_until: lease_until_ms,
            limit,
            quota,
            reply,
        })
        .await
    }

    async fn quota_used(&self, channel: &str, window_start_ms: i64) -> Result<u64, StoreError> {
        let used: Option<i64> =
            sqlx::query("SELECT used FROM quota_usage WHERE channel = ? AND window_start = ?")
                .bind(channel)
                .bind(window_start_ms)
                .fetch_optional(&self.readers)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        Ok(used.unwrap_or(0).max(0) as u64)
    }

    async fn delivery_channel(&self, delivery_id: i64) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query("SELECT channel FROM deliveries WHERE id = ?")
            .bind(delivery_id)
            .fetch_optional(&self.readers)
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
            "SELECT id FROM deliveries WHERE channel = ? AND provider_id = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(channel)
        .bind(provider_id)
        .fetch_optional(&self.readers)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
    }

    async fn count_due(&self, channel: &str, now_ms: i64, limit: u32) -> Result<u32, StoreError> {
        let n: i64 = sqlx::query(
            "SELECT count(*) FROM (SELECT 1 FROM deliveries WHERE channel = ? AND status = 0 \
               AND next_attempt_at IS NOT NULL AND next_attempt_at <= ? LIMIT ?)",
        )
        .bind(channel)
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_one(&self.readers)
        .await?
        .try_get(0)?;
        Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    async fn next_due(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query(
            "SELECT min(next_attempt_at) FROM deliveries \
             WHERE channel = ? AND status = 0 AND next_attempt_at IS NOT NULL",
        )
        .bind(channel)
        .fetch_one(&self.readers)
        .await?
        .try_get(0)?)
    }

    async fn outbox_counts(&self) -> Result<HashMap<String, OutboxCounts>, StoreError> {
        let rows = sqlx::query(
            "SELECT channel, count(*), sum(attempts > 0) FROM deliveries \
             WHERE status = 0 AND next_attempt_at IS NOT NULL GROUP BY channel",
        )
        .fetch_all(&self.readers)
        .await?;
        let mut out = HashMap::new();
        for r in &rows {
            out.insert(
                r.try_get::<String, _>(0)?,
                OutboxCounts {
                    pending: r.try_get(1)?,
                    retrying: r.try_get::<Option<i64>, _>(2)?.unwrap_or(0),
                },
            );
        }
        Ok(out)
    }

    async fn outbox_messages(&self, seqs: &[i64]) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(500) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT seq, id, title, content, msg_type, sender, created_at, template, data, rendered, \
                   expires_at, routing FROM messages WHERE seq IN (",
            );
            let mut sep = qb.separated(", ");
            for seq in chunk {
                sep.push_bind(*seq);
            }
            qb.push(")");
            for r in qb.build().fetch_all(&self.readers).await? {
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
                        .map_err(|e| StoreError::Corrupt(format!("messages.data: {e}")))?,
                    rendered: rendered
                        .map(|d| serde_json::from_str(&d))
                        .transpose()
                        .map_err(|e| StoreError::Corrupt(format!("messages.rendered: {e}")))?
                        .unwrap_or_default(),
                    expires_at_ms: r.try_get(10)?,
                    routing: policy(r.try_get(11)?)?,
                });
            }
        }
        Ok(out)
    }

    async fn any_preferences(&self) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM recipients WHERE preferences <> '{}' LIMIT 1")
                .fetch_optional(&self.readers)
                .await?
                .is_some(),
        )
    }

    async fn register_device(&self, device: NewDevice) -> Result<(DeviceRecord, bool), StoreError> {
        self.write(|r| WriteOp::RegisterDevice(Box::new(device), r))
            .await
    }

    async fn list_devices(&self, user_id: &str) -> Result<Vec<DeviceRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ? ORDER BY id"
        ))
        .bind(user_id)
        .fetch_all(&self.readers)
        .await?
        .iter()
        .map(device_row)
        .collect()
    }

    async fn delete_device(&self, user_id: &str, device_id: i64) -> Result<bool, StoreError> {
        let user = user_id.to_owned();
        self.write(|r| WriteOp::DeleteDevice(user, device_id, r))
            .await
    }

    async fn active_devices(
        &self,
        user_id: &str,
        platform: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, token FROM devices WHERE user_id = ? AND platform = ? AND active = 1 ORDER BY id",
        )
        .bind(user_id)
        .bind(platform)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn deactivate_devices(&self, dead: Vec<(i64, String)>) -> Result<u64, StoreError> {
        if dead.is_empty() {
            return Ok(0);
        }
        self.write(|r| WriteOp::DeactivateDevices(dead, r)).await
    }

    async fn count_undelivered(
        &self,
        receiver: &str,
        channel: &str,
    ) -> Result<(u64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT count(*), COALESCE(max(message_seq), 0) FROM deliveries \
             WHERE receiver = ? AND channel = ? AND status < 2 AND next_attempt_at IS NULL",
        )
        .bind(receiver)
        .bind(channel)
        .fetch_one(&self.readers)
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
        let op = TimerOp::Claim {
            now: now_ms,
            lease_until: lease_until_ms,
            limit,
        };
        match self.write(|r| WriteOp::Timers(op, r)).await? {
            TimerOutcome::Claimed(t) => Ok(t),
            _ => Err(StoreError::Corrupt("mismatched outcome".into())),
        }
    }

    async fn next_timer_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query("SELECT min(due_at) FROM schedule WHERE due_at IS NOT NULL")
                .fetch_one(&self.readers)
                .await?
                .try_get(0)?,
        )
    }

    async fn release_held(
        &self,
        timer: &Timer,
        presence: &[String],
    ) -> Result<Option<Vec<(i64, String, String)>>, StoreError> {
        let op = TimerOp::Release(timer.clone(), presence.to_vec());
        match self.write(|r| WriteOp::Timers(op, r)).await? {
            TimerOutcome::Released(t) => Ok(t),
            _ => Err(StoreError::Corrupt("mismatched outcome".into())),
        }
    }

    async fn expire_message(
        &self,
        timer: &Timer,
        presence: &[String],
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let op = TimerOp::Expire(timer.clone(), presence.to_vec(), now_ms);
        match self.write(|r| WriteOp::Timers(op, r)).await? {
            TimerOutcome::Expired(t) => Ok(t),
            _ => Err(StoreError::Corrupt("mismatched outcome".into())),
        }
    }

    async fn receiver_deliveries(
        &self,
        message_seq: i64,
        receiver: &str,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_seq = ? AND receiver = ? ORDER BY id"
        ))
        .bind(message_seq)
        .bind(receiver)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(delivery).collect()
    }

    async fn advance_route(&self, advance: RouteAdvance) -> Result<Option<Vec<i64>>, StoreError> {
        let op = TimerOp::Advance(Box::new(advance));
        match self.write(|r| WriteOp::Timers(op, r)).await? {
            TimerOutcome::Advanced(t) => Ok(t),
            _ => Err(StoreError::Corrupt("mismatched outcome".into())),
        }
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let applied: i64 = sqlx::query("SELECT count(*) FROM _sqlx_migrations WHERE success = 1")
            .fetch_one(&self.readers)
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
        let (tx, rx) = oneshot::channel();
        if self.writer.send(WriteOp::Close(tx)).await.is_ok() {
            // Every write queued before the close is committed and answered first.
            let _ = rx.await;
        }
        if let Some(task) = self.writer_task.lock().ok().and_then(|mut t| t.take()) {
            let _ = task.await;
        }
        self.readers.close().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{new_message_id, NewDelivery};

    async fn open(dir: &Path) -> SqliteStore {
        let url = format!("sqlite://{}", dir.join("t.db").display());
        SqliteStore::open(&url, &DatabaseSettings::default())
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()).await);
        crate::store::conformance::run_all(store.clone()).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_data_survives_reopen_and_close_drains_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()).await);
        // Queue many writes, then close at once: every answered write must be on disk.
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let m = NewMessage {
                        id: new_message_id(),
                        title: format!("t{i}"),
                        content: "c".into(),
                        msg_type: 0,
                        sender: "s".into(),
                        created_at_ms: now_ms(),
                        deliveries: vec![NewDelivery {
                            receiver: "u".into(),
                            channel: "websocket".into(),
                            status: Status::Pending,
                            error: None,
                            address: None,
                            outbox: false,
                        }],
                        idempotency: None,
                        template: None,
                        data: None,
                        rendered: Default::default(),
                        ..Default::default()
                    };
                    store.insert_message(m).await.is_ok()
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        store.close().await;
        let reopened = open(dir.path()).await;
        let items = reopened
            .undelivered("u", "websocket", 0, 1000)
            .await
            .unwrap();
        assert_eq!(items.len(), ok);
        assert_eq!(ok, 100);
        reopened.close().await;
    }

    fn new_msg(id: &str, receiver: &str) -> NewMessage {
        NewMessage {
            id: id.into(),
            title: "t".into(),
            content: "c".into(),
            msg_type: 0,
            sender: "s".into(),
            created_at_ms: now_ms(),
            deliveries: vec![NewDelivery {
                receiver: receiver.into(),
                channel: "websocket".into(),
                status: Status::Pending,
                error: None,
                address: None,
                outbox: false,
            }],
            idempotency: None,
            template: None,
            data: None,
            rendered: Default::default(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_does_not_take_its_batch_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()).await);
        store.insert_message(new_msg("dup", "a")).await.unwrap();
        for round in 0..20 {
            // Queued together, these usually share a batch: the duplicate id fails, the
            // others must still commit.
            let good1 = format!("good-{round}-1");
            let good2 = format!("good-{round}-2");
            let (bad, ok1, ok2) = tokio::join!(
                store.insert_message(new_msg("dup", "b")),
                store.insert_message(new_msg(&good1, "c")),
                store.insert_message(new_msg(&good2, "c")),
            );
            assert!(bad.is_err(), "a duplicate message id must fail");
            assert!(matches!(ok1, Ok(Inserted::New { .. })), "{ok1:?}");
            assert!(matches!(ok2, Ok(Inserted::New { .. })), "{ok2:?}");
            assert!(store.get_message(&good1).await.unwrap().is_some());
            assert!(store.get_message(&good2).await.unwrap().is_some());
        }
        let dup = store.get_message("dup").await.unwrap().unwrap();
        assert_eq!(dup.deliveries.len(), 1);
        assert_eq!(
            dup.deliveries[0].receiver, "a",
            "the failed insert left nothing behind"
        );
        assert!(store
            .undelivered("b", "websocket", 0, 10)
            .await
            .unwrap()
            .is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn writes_after_close_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        store.close().await;
        assert!(matches!(
            store.delete_message("x").await,
            Err(StoreError::Closed) | Err(StoreError::Corrupt(_))
        ));
    }
}
