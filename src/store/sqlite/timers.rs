//! The `schedule` table on SQLite: release (`sendAt`), expire (`expiresAt`), failover
//! route and spill timers. The writes run inside the writer's transaction; `routes` reads.

use rusqlite::{params, Connection, OptionalExtension};
use sqlx::{Row, SqlitePool};

use super::audiences;
use super::writer::Ctx;
use crate::model::{NewMessage, RouteAdvance, RouteRecord, Status, Timer, TimerKind};
use crate::routing::{LogEntry, RouteState};
use crate::store::StoreError;

/// The timers a new message needs (the spill timer of an audience is added with it).
pub(super) fn insert_for(conn: &Connection, seq: i64, msg: &NewMessage) -> Result<(), StoreError> {
    let start = msg.held_until().unwrap_or(msg.created_at_ms);
    let mut stmt = conn.prepare_cached(
        "INSERT INTO schedule (message_seq, kind, receiver, due_at) VALUES (?, ?, ?, ?)",
    )?;
    if let Some(at) = msg.held_until() {
        if msg
            .deliveries
            .iter()
            .any(|d| !d.outbox && d.status == Status::Pending)
        {
            stmt.execute(params![seq, TimerKind::Release as i64, "", at])?;
        }
    }
    if let Some(at) = msg.expires_at_ms {
        stmt.execute(params![seq, TimerKind::Expire as i64, "", at])?;
    }
    for r in &msg.routes {
        stmt.execute(params![seq, TimerKind::Route as i64, r, start])?;
    }
    Ok(())
}

pub(super) fn claim(
    conn: &Connection,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> Result<Vec<Timer>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE schedule SET due_at = ?1 \
         WHERE id IN (SELECT id FROM schedule WHERE due_at IS NOT NULL AND due_at <= ?2 \
                      ORDER BY due_at LIMIT ?3) \
         RETURNING id, message_seq, kind, receiver, step, step_started_at",
    )?;
    let mut rows = stmt.query(params![lease_until, now, i64::from(limit)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(
            Timer::claimed(
                (r.get(0)?, r.get(1)?, r.get(2)?),
                r.get(3)?,
                (r.get(4)?, r.get(5)?),
                lease_until,
            )
            .map_err(StoreError::Corrupt)?,
        );
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// Does the claim still hold? (The single writer makes check-then-write safe.)
pub(super) fn holds(conn: &Connection, timer_id: i64, lease: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM schedule WHERE id = ? AND due_at = ?")?
        .query_row(params![timer_id, lease], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(super) fn delete(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM schedule WHERE id = ?")?
        .execute([id])?;
    Ok(())
}

/// `channel IN (…)` over a list of names, bound as one JSON parameter.
fn names_json(names: &[String]) -> String {
    serde_json::to_string(names).unwrap_or_else(|_| "[]".into())
}

/// Released deliveries: (id, receiver, channel).
type Released = Vec<(i64, String, String)>;

pub(super) fn release(
    cx: &mut Ctx<'_>,
    timer: &Timer,
    presence: &[String],
) -> Result<Option<Released>, StoreError> {
    let conn = cx.conn;
    if !holds(conn, timer.id, timer.lease_until_ms)? {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(
        "UPDATE deliveries SET next_attempt_at = NULL, updated_at = ?1 \
         WHERE message_seq = ?2 AND status = 0 AND next_attempt_at IS NOT NULL \
           AND channel IN (SELECT value FROM json_each(?3)) \
         RETURNING id, receiver, channel",
    )?;
    let mut rows = stmt.query(params![cx.now, timer.message_seq, names_json(presence)])?;
    let mut released = Vec::new();
    while let Some(r) = rows.next()? {
        released.push((r.get(0)?, r.get(1)?, r.get(2)?));
    }
    drop(rows);
    delete(conn, timer.id)?;
    Ok(Some(released))
}

fn append_log(
    conn: &Connection,
    where_sql: &str,
    key: i64,
    entries: &[LogEntry],
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "UPDATE schedule SET log = json_insert(log, '$[#]', json(?)) WHERE {where_sql}"
    ))?;
    for e in entries {
        let json = serde_json::to_string(e)
            .map_err(|e| StoreError::Corrupt(format!("route log entry: {e}")))?;
        stmt.execute(params![json, key])?;
    }
    Ok(())
}

pub(super) fn expire(
    cx: &mut Ctx<'_>,
    timer: &Timer,
    presence: &[String],
    now: i64,
) -> Result<Option<Vec<(String, u64)>>, StoreError> {
    let conn = cx.conn;
    if !holds(conn, timer.id, timer.lease_until_ms)? {
        return Ok(None);
    }
    let mut out: Vec<(String, u64)> = {
        let mut stmt = conn.prepare_cached(
            "UPDATE deliveries SET status = 4, last_error = 'expired', next_attempt_at = NULL, \
               lease_until = NULL, updated_at = ?1 \
             WHERE message_seq = ?2 AND (status = 0 OR (status = 1 \
               AND channel IN (SELECT value FROM json_each(?3)))) \
             RETURNING channel",
        )?;
        let mut rows = stmt.query(params![now, timer.message_seq, names_json(presence)])?;
        let mut by_channel: Vec<(String, u64)> = Vec::new();
        while let Some(r) = rows.next()? {
            let c: String = r.get(0)?;
            match by_channel.iter_mut().find(|(n, _)| *n == c) {
                Some((_, k)) => *k += 1,
                None => by_channel.push((c, 1)),
            }
        }
        by_channel
    };
    let seq = timer.message_seq;
    let channel = cx.hot.get(conn, seq)?.map(|a| a.channel.clone());
    if let Some(channel) = channel {
        let n = audiences::expire(cx, seq, now)?;
        if n > 0 {
            match out.iter_mut().find(|(c, _)| *c == channel) {
                Some((_, k)) => *k += n,
                None => out.push((channel, n)),
            }
        }
    }
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
        seq,
        std::slice::from_ref(&entry),
    )?;
    conn.prepare_cached(
        "UPDATE schedule SET state = 3, due_at = NULL WHERE message_seq = ? AND kind = 2 AND state = 0",
    )?
    .execute([seq])?;
    delete(conn, timer.id)?;
    out.sort();
    Ok(Some(out))
}

pub(super) fn advance(cx: &mut Ctx<'_>, a: &RouteAdvance) -> Result<Option<Vec<i64>>, StoreError> {
    let conn = cx.conn;
    if !holds(conn, a.timer_id, a.lease_until_ms)? {
        return Ok(None);
    }
    for (id, error) in &a.supersede {
        conn.prepare_cached(
            "UPDATE deliveries SET status = 4, last_error = ?, next_attempt_at = NULL, \
               lease_until = NULL, updated_at = ? WHERE id = ? AND status = 0",
        )?
        .execute(params![error, a.now_ms, id])?;
    }
    let mut ids = Vec::with_capacity(a.start.len());
    for d in &a.start {
        let due = (d.outbox && d.status == Status::Pending).then_some(a.now_ms);
        conn.prepare_cached(
            "INSERT INTO deliveries (message_seq, receiver, channel, status, last_error, \
               next_attempt_at, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        )?
        .execute(params![
            a.message_seq,
            d.receiver,
            d.channel,
            d.status.code(),
            d.error,
            due,
            a.now_ms
        ])?;
        ids.push(conn.last_insert_rowid());
    }
    append_log(conn, "id = ?", a.timer_id, &a.log)?;
    // Last: the supersede above fired the trigger on this very row.
    conn.prepare_cached(
        "UPDATE schedule SET state = ?, step = ?, step_started_at = ?, due_at = ? WHERE id = ?",
    )?
    .execute(params![
        a.state as i64,
        a.progress.step.map_or(-1, |s| s as i64),
        a.progress.started_at_ms,
        a.due_at_ms,
        a.timer_id
    ])?;
    Ok(Some(ids))
}

/// A message's failover chains, for its `GET`.
pub(super) async fn routes(readers: &SqlitePool, seq: i64) -> Result<Vec<RouteRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT receiver, state, step, log FROM schedule WHERE message_seq = ? AND kind = 2 ORDER BY id",
    )
    .bind(seq)
    .fetch_all(readers)
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
