//! The `schedule` table on PostgreSQL: release (`sendAt`), expire (`expiresAt`) and failover
//! route timers. The fenced writes run inside the caller's transaction and lock their timer
//! row before checking its lease; `routes` reads a message's chains.

use sqlx::{PgConnection, Row};

use super::{audiences, inbox};
use crate::model::{NewMessage, RouteAdvance, RouteRecord, Status, Timer, TimerKind, WEBSOCKET};
use crate::routing::{LogEntry, RouteState};
use crate::store::audience::MembersCache;
use crate::store::StoreError;

/// The timers a new message needs (inside the insert's transaction), its audience's spill
/// timer included.
pub(super) async fn insert_for(
    conn: &mut PgConnection,
    seq: i64,
    msg: &NewMessage,
) -> Result<(), StoreError> {
    let start = msg.held_until().unwrap_or(msg.created_at_ms);
    let mut kinds: Vec<i64> = Vec::new();
    let mut receivers: Vec<&str> = Vec::new();
    let mut dues: Vec<i64> = Vec::new();
    if let Some(at) = msg.held_until() {
        if msg
            .deliveries
            .iter()
            .any(|d| !d.outbox && d.status == Status::Pending)
        {
            kinds.push(TimerKind::Release as i64);
            receivers.push("");
            dues.push(at);
        }
    }
    if let Some(at) = msg.expires_at_ms {
        kinds.push(TimerKind::Expire as i64);
        receivers.push("");
        dues.push(at);
    }
    for r in &msg.routes {
        kinds.push(TimerKind::Route as i64);
        receivers.push(r.as_str());
        dues.push(start);
    }
    if let Some(a) = &msg.audience {
        kinds.push(TimerKind::Spill as i64);
        receivers.push("");
        dues.push(a.spill_at_ms);
    }
    if kinds.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO schedule (message_seq, kind, receiver, due_at) \
         SELECT $1, t.kind, t.receiver, t.due_at \
         FROM UNNEST($2::int8[], $3::text[], $4::int8[]) AS t (kind, receiver, due_at)",
    )
    .bind(seq)
    .bind(&kinds)
    .bind(&receivers)
    .bind(&dues)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Lease up to `limit` due timers: one statement, the rows picked with `FOR UPDATE SKIP
/// LOCKED`, so schedulers on several nodes never claim the same timer.
pub(super) async fn claim(
    conn: &mut PgConnection,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> Result<Vec<Timer>, StoreError> {
    let rows = sqlx::query(
        "WITH picked AS MATERIALIZED ( \
           SELECT id FROM schedule WHERE due_at IS NOT NULL AND due_at <= $2 \
            ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE schedule SET due_at = $1 WHERE id IN (SELECT id FROM picked) \
         RETURNING id, message_seq, kind, receiver, step, step_started_at",
    )
    .bind(lease_until)
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Timer::claimed(
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                r.try_get(3)?,
                (r.try_get(4)?, r.try_get(5)?),
                lease_until,
            )
            .map_err(StoreError::Corrupt)
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// Does the claim still hold? Locks the timer row for the rest of the transaction, so no
/// claim (it skips locked rows) and no trigger (it waits) can change it under us.
async fn holds(conn: &mut PgConnection, timer_id: i64, lease: i64) -> Result<bool, StoreError> {
    Ok(
        sqlx::query("SELECT 1 FROM schedule WHERE id = $1 AND due_at = $2 FOR UPDATE")
            .bind(timer_id)
            .bind(lease)
            .fetch_optional(&mut *conn)
            .await?
            .is_some(),
    )
}

async fn delete(conn: &mut PgConnection, id: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM schedule WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Log entries as one JSON array, to append with `log || $n::jsonb`.
fn log_json(entries: &[LogEntry]) -> Result<String, StoreError> {
    serde_json::to_string(entries).map_err(|e| StoreError::Corrupt(format!("route log entry: {e}")))
}

pub(super) async fn release(
    conn: &mut PgConnection,
    timer: &Timer,
    presence: &[String],
    now: i64,
) -> Result<Option<Vec<(i64, String, String)>>, StoreError> {
    // The message first (a concurrent delete then waits). Release timers are never
    // touched by the trigger (it makes routes due), so locking this row before the
    // deliveries cannot deadlock with the status writer.
    audiences::lock_messages(conn, &[timer.message_seq]).await?;
    if !holds(conn, timer.id, timer.lease_until_ms).await? {
        return Ok(None);
    }
    // Released websocket rows enter their receivers' inboxes: the counters first, in
    // receiver order, before the rows (lock order).
    sqlx::query(&inbox::lock_counts_sql(
        "message_seq = $1 AND status = 0 AND next_attempt_at IS NOT NULL AND channel = ANY($2)",
    ))
    .bind(timer.message_seq)
    .bind(presence)
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query(
        "UPDATE deliveries SET next_attempt_at = NULL, updated_at = $1 \
         WHERE message_seq = $2 AND status = 0 AND next_attempt_at IS NOT NULL \
           AND channel = ANY($3) \
         RETURNING id, receiver, channel",
    )
    .bind(now)
    .bind(timer.message_seq)
    .bind(presence)
    .fetch_all(&mut *conn)
    .await?;
    let mut released = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    released.sort();
    delete(conn, timer.id).await?;
    Ok(Some(released))
}

pub(super) async fn expire(
    conn: &mut PgConnection,
    cache: &MembersCache,
    timer: &Timer,
    presence: &[String],
    now: i64,
) -> Result<Option<Vec<(String, u64)>>, StoreError> {
    // The message first (a concurrent delete then waits), then the timer: an expire timer
    // is never touched by the trigger, so locking it before the deliveries is safe.
    let seq = timer.message_seq;
    audiences::lock_messages(conn, &[seq]).await?;
    if !holds(conn, timer.id, timer.lease_until_ms).await? {
        return Ok(None);
    }
    // Its audience before its deliveries, as the status writer takes them.
    let mut audience = audiences::lock(conn, cache, &[seq]).await?;
    // The inbox counters of the websocket rows that fail, in receiver order.
    sqlx::query(&inbox::lock_counts_sql(
        "message_seq = $1 AND (status = 0 OR (status = 1 AND channel = ANY($2)))",
    ))
    .bind(seq)
    .bind(presence)
    .execute(&mut *conn)
    .await?;
    // Lock the deliveries in id order before changing them (their trigger then locks the
    // routes), the order every other writer uses.
    sqlx::query(
        "SELECT id FROM deliveries \
         WHERE message_seq = $1 AND (status = 0 OR (status = 1 AND channel = ANY($2))) \
         ORDER BY id FOR UPDATE",
    )
    .bind(timer.message_seq)
    .bind(presence)
    .execute(&mut *conn)
    .await?;
    let mut out: Vec<(String, u64)> = sqlx::query(
        "WITH d AS ( \
           UPDATE deliveries SET status = 4, last_error = 'expired', next_attempt_at = NULL, \
             lease_until = NULL, updated_at = $1 \
           WHERE message_seq = $2 AND (status = 0 OR (status = 1 AND channel = ANY($3))) \
           RETURNING channel) \
         SELECT channel, count(*) FROM d GROUP BY channel",
    )
    .bind(now)
    .bind(timer.message_seq)
    .bind(presence)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)?.max(0) as u64)))
    .collect::<Result<_, sqlx::Error>>()?;
    if let Some(a) = audience.get_mut(&seq) {
        let n = a.expire(now);
        if n > 0 {
            match out.iter_mut().find(|(c, _)| *c == a.channel) {
                Some((_, k)) => *k += n,
                None => out.push((a.channel.clone(), n)),
            }
        }
    }
    audiences::write_back(conn, &mut audience, now).await?;
    // Running chains end here (after the status updates, whose trigger made them due).
    let entry = LogEntry {
        at: crate::model::rfc3339(now),
        step: None,
        channel: None,
        event: "expired".into(),
        reason: "the message expired: remaining steps cancelled".into(),
    };
    sqlx::query(
        "UPDATE schedule SET log = log || $2::jsonb, state = 3, due_at = NULL \
         WHERE message_seq = $1 AND kind = 2 AND state = 0",
    )
    .bind(timer.message_seq)
    .bind(log_json(std::slice::from_ref(&entry))?)
    .execute(&mut *conn)
    .await?;
    delete(conn, timer.id).await?;
    out.sort();
    Ok(Some(out))
}

pub(super) async fn advance(
    conn: &mut PgConnection,
    a: &RouteAdvance,
) -> Result<Option<Vec<i64>>, StoreError> {
    // The message first (a concurrent delete then waits); then the deliveries to
    // supersede, in id order, then the route row: a status change locks its delivery and
    // then (trigger) this route row, so taking them the other way round could deadlock
    // with the status writer.
    audiences::lock_messages(conn, &[a.message_seq]).await?;
    // A websocket step enters the receiver's inbox (the insert's trigger adds to its
    // counter): the counter before the deliveries and the route row, as the status writer
    // takes them. (Superseded steps are provider deliveries: never counted.)
    let counted: Vec<String> = a
        .start
        .iter()
        .filter(|d| d.channel == WEBSOCKET)
        .map(|d| d.receiver.clone())
        .collect();
    inbox::lock_counts(conn, counted).await?;
    let mut supersede: Vec<(i64, &str)> = a
        .supersede
        .iter()
        .map(|(id, e)| (*id, e.as_str()))
        .collect();
    supersede.sort_by_key(|(id, _)| *id); // stable: a repeated id keeps its first error
    supersede.dedup_by_key(|(id, _)| *id);
    let (ids, errors): (Vec<i64>, Vec<&str>) = supersede.into_iter().unzip();
    if !ids.is_empty() {
        sqlx::query("SELECT id FROM deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
    }
    if !holds(conn, a.timer_id, a.lease_until_ms).await? {
        return Ok(None);
    }
    if !ids.is_empty() {
        sqlx::query(
            "UPDATE deliveries d SET status = 4, last_error = t.error, next_attempt_at = NULL, \
               lease_until = NULL, updated_at = $1 \
             FROM UNNEST($2::int8[], $3::text[]) AS t (id, error) \
             WHERE d.id = t.id AND d.status = 0",
        )
        .bind(a.now_ms)
        .bind(&ids)
        .bind(&errors)
        .execute(&mut *conn)
        .await?;
    }
    let mut created = Vec::with_capacity(a.start.len());
    for d in &a.start {
        let due = (d.outbox && d.status == Status::Pending).then_some(a.now_ms);
        let id: i64 = sqlx::query(
            "INSERT INTO deliveries (message_seq, receiver, channel, status, last_error, \
               next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
        )
        .bind(a.message_seq)
        .bind(&d.receiver)
        .bind(&d.channel)
        .bind(d.status.code())
        .bind(&d.error)
        .bind(due)
        .bind(a.now_ms)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        created.push(id);
    }
    // Last: the supersede above fired the trigger on this very row.
    sqlx::query(
        "UPDATE schedule SET log = log || $1::jsonb, state = $2, step = $3, \
           step_started_at = $4, due_at = $5 WHERE id = $6",
    )
    .bind(log_json(&a.log)?)
    .bind(a.state as i64)
    .bind(a.progress.step.map_or(-1, |s| s as i64))
    .bind(a.progress.started_at_ms)
    .bind(a.due_at_ms)
    .bind(a.timer_id)
    .execute(&mut *conn)
    .await?;
    Ok(Some(created))
}

/// A spill timer fired: the audience's undelivered members get rows of their own, and the
/// timer is dropped. Locks as `expire` does: message, timer, audience.
pub(super) async fn spill(
    conn: &mut PgConnection,
    cache: &MembersCache,
    timer: &Timer,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let seq = timer.message_seq;
    audiences::lock_messages(conn, &[seq]).await?;
    if !holds(conn, timer.id, timer.lease_until_ms).await? {
        return Ok(None);
    }
    let mut audience = audiences::lock(conn, cache, &[seq]).await?;
    let mut n = 0;
    if let Some(a) = audience.get_mut(&seq) {
        n = audiences::spill(conn, a, now).await?;
    }
    audiences::write_back(conn, &mut audience, now).await?;
    delete(conn, timer.id).await?;
    Ok(Some(n))
}

/// A message's failover chains, for its `GET`.
pub(super) async fn routes(
    conn: &mut PgConnection,
    seq: i64,
) -> Result<Vec<RouteRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT receiver, state, step, log::text FROM schedule \
         WHERE message_seq = $1 AND kind = 2 ORDER BY id",
    )
    .bind(seq)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let step: i64 = r.try_get(2)?;
            let log: String = r.try_get(3)?;
            Ok(RouteRecord {
                receiver: r.try_get(0)?,
                state: RouteState::from_code(r.try_get(1)?),
                step: usize::try_from(step).ok(),
                log: serde_json::from_str::<Vec<LogEntry>>(&log)
                    .map_err(|e| StoreError::Corrupt(format!("schedule.log: {e}")))?,
            })
        })
        .collect()
}
