//! The `schedule` table on SQLite: release (`sendAt`), expire (`expiresAt`) and failover
//! route timers. Every function runs inside the writer's transaction.

use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use crate::model::{NewMessage, RouteAdvance, Status, Timer, TimerKind};
use crate::routing::LogEntry;
use crate::store::StoreError;

/// The timers a new message needs.
pub(super) async fn insert_for(
    conn: &mut SqliteConnection,
    seq: i64,
    msg: &NewMessage,
) -> Result<(), StoreError> {
    let start = msg.held_until().unwrap_or(msg.created_at_ms);
    if let Some(at) = msg.held_until() {
        if msg
            .deliveries
            .iter()
            .any(|d| !d.outbox && d.status == Status::Pending)
        {
            insert_one(conn, seq, TimerKind::Release, "", at).await?;
        }
    }
    if let Some(at) = msg.expires_at_ms {
        insert_one(conn, seq, TimerKind::Expire, "", at).await?;
    }
    for chunk in msg.routes.chunks(256) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO schedule (message_seq, kind, receiver, due_at) ",
        );
        qb.push_values(chunk, |mut row, r| {
            row.push_bind(seq)
                .push_bind(TimerKind::Route as i64)
                .push_bind(r.as_str())
                .push_bind(start);
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_one(
    conn: &mut SqliteConnection,
    seq: i64,
    kind: TimerKind,
    receiver: &str,
    due: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO schedule (message_seq, kind, receiver, due_at) VALUES (?, ?, ?, ?)")
        .bind(seq)
        .bind(kind as i64)
        .bind(receiver)
        .bind(due)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn claim(
    conn: &mut SqliteConnection,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> Result<Vec<Timer>, StoreError> {
    let rows = sqlx::query(
        "UPDATE schedule SET due_at = ?1 \
         WHERE id IN (SELECT id FROM schedule WHERE due_at IS NOT NULL AND due_at <= ?2 \
                      ORDER BY due_at LIMIT ?3) \
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
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// Does the claim still hold? (The single writer makes check-then-write safe.)
async fn holds(conn: &mut SqliteConnection, timer_id: i64, lease: i64) -> Result<bool, StoreError> {
    Ok(
        sqlx::query("SELECT 1 FROM schedule WHERE id = ? AND due_at = ?")
            .bind(timer_id)
            .bind(lease)
            .fetch_optional(&mut *conn)
            .await?
            .is_some(),
    )
}

fn push_in(qb: &mut QueryBuilder<'_, Sqlite>, names: &[String]) {
    qb.push("(");
    let mut sep = qb.separated(", ");
    for n in names {
        sep.push_bind(n.clone());
    }
    if names.is_empty() {
        sep.push("NULL");
    }
    qb.push(")");
}

pub(super) async fn release(
    conn: &mut SqliteConnection,
    timer: &Timer,
    presence: &[String],
    now: i64,
) -> Result<Option<Vec<(i64, String, String)>>, StoreError> {
    if !holds(conn, timer.id, timer.lease_until_ms).await? {
        return Ok(None);
    }
    let mut qb =
        QueryBuilder::<Sqlite>::new("UPDATE deliveries SET next_attempt_at = NULL, updated_at = ");
    qb.push_bind(now)
        .push(" WHERE message_seq = ")
        .push_bind(timer.message_seq)
        .push(" AND status = 0 AND next_attempt_at IS NOT NULL AND channel IN ");
    push_in(&mut qb, presence);
    qb.push(" RETURNING id, receiver, channel");
    let rows = qb.build().fetch_all(&mut *conn).await?;
    let released = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    delete(conn, timer.id).await?;
    Ok(Some(released))
}

async fn delete(conn: &mut SqliteConnection, id: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM schedule WHERE id = ?")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn append_log(
    conn: &mut SqliteConnection,
    where_sql: &str,
    key: i64,
    entries: &[LogEntry],
) -> Result<(), StoreError> {
    for e in entries {
        let json = serde_json::to_string(e)
            .map_err(|e| StoreError::Corrupt(format!("route log entry: {e}")))?;
        let q = format!(
            "UPDATE schedule SET log = json_insert(log, '$[#]', json(?)) WHERE {where_sql}"
        );
        sqlx::query(&q)
            .bind(json)
            .bind(key)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub(super) async fn expire(
    conn: &mut SqliteConnection,
    timer: &Timer,
    presence: &[String],
    now: i64,
) -> Result<Option<Vec<String>>, StoreError> {
    if !holds(conn, timer.id, timer.lease_until_ms).await? {
        return Ok(None);
    }
    let mut qb = QueryBuilder::<Sqlite>::new(
        "UPDATE deliveries SET status = 4, last_error = 'expired', next_attempt_at = NULL, \
         lease_until = NULL, updated_at = ",
    );
    qb.push_bind(now)
        .push(" WHERE message_seq = ")
        .push_bind(timer.message_seq)
        .push(" AND (status = 0 OR (status = 1 AND channel IN ");
    push_in(&mut qb, presence);
    qb.push(")) RETURNING channel");
    let channels = qb
        .build()
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<String>, _>>()?;
    // Running chains end here (after the status updates, whose trigger made them due).
    let entry = LogEntry {
        at: crate::model::rfc3339(now),
        step: None,
        channel: None,
        event: "expired".into(),
        reason: "the message expired: remaining steps cancelled".into(),
    };
    append_log(
        conn,
        "message_seq = ? AND kind = 2 AND state = 0",
        timer.message_seq,
        std::slice::from_ref(&entry),
    )
    .await?;
    sqlx::query(
        "UPDATE schedule SET state = 3, due_at = NULL WHERE message_seq = ? AND kind = 2 AND state = 0",
    )
    .bind(timer.message_seq)
    .execute(&mut *conn)
    .await?;
    delete(conn, timer.id).await?;
    Ok(Some(channels))
}

pub(super) async fn advance(
    conn: &mut SqliteConnection,
    a: &RouteAdvance,
) -> Result<Option<Vec<i64>>, StoreError> {
    if !holds(conn, a.timer_id, a.lease_until_ms).await? {
        return Ok(None);
    }
    for (id, error) in &a.supersede {
        sqlx::query(
            "UPDATE deliveries SET status = 4, last_error = ?, next_attempt_at = NULL, lease_until = NULL, \
               updated_at = ? WHERE id = ? AND status = 0",
        )
        .bind(error)
        .bind(a.now_ms)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    let mut ids = Vec::with_capacity(a.start.len());
    for d in &a.start {
        let due = (d.outbox && d.status == Status::Pending).then_some(a.now_ms);
        let id = sqlx::query(
            "INSERT INTO deliveries (message_seq, receiver, channel, status, last_error, next_attempt_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        )
        .bind(a.message_seq)
        .bind(&d.receiver)
        .bind(&d.channel)
        .bind(d.status.code())
        .bind(&d.error)
        .bind(due)
        .bind(a.now_ms)
        .execute(&mut *conn)
        .await?
        .last_insert_rowid();
        ids.push(id);
    }
    append_log(conn, "id = ?", a.timer_id, &a.log).await?;
    // Last: the supersede above fired the trigger on this very row.
    sqlx::query(
        "UPDATE schedule SET state = ?, step = ?, step_started_at = ?, due_at = ? WHERE id = ?",
    )
    .bind(a.state as i64)
    .bind(a.progress.step.map_or(-1, |s| s as i64))
    .bind(a.progress.started_at_ms)
    .bind(a.due_at_ms)
    .bind(a.timer_id)
    .execute(&mut *conn)
    .await?;
    Ok(Some(ids))
}
