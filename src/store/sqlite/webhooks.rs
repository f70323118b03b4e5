//! Webhooks on SQLite (docs/webhooks.md): endpoints, the event outbox and attempts.
//!
//! Events are written by the triggers of `migrations/sqlite/0008_webhooks.sql` inside the
//! transaction that changes a row; a broadcast member's move is inserted into the
//! `webhook_delivery_changes` view by the audience flush ([`member_events`]), and the same
//! trigger fans it out. Writes here run on the writer thread, reads on the readers.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::audiences::HotAudience;
use super::SqliteStore;
use crate::config::Secret;
use crate::model::webhook::{
    Attempt, AttemptRecord, Backlog, Claimed, Endpoint, Outcome, Redeliver, DELIVERED, FAILED,
    PENDING,
};
use crate::model::{member_delivery_id, Status};
use crate::store::audience::MEMBER_FAILED_ERROR;
use crate::store::rows::{self, webhook_list_json, Cols};
use crate::store::StoreError;

/// The bits of the `delivery.*` event types.
const DELIVERY_BITS: i64 = 2 | 4 | 8 | 16;

/// Whether any enabled endpoint wants `delivery.*` events (once per transaction that
/// moved broadcast members).
pub(super) fn want_delivery_events(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM webhooks WHERE enabled = 1 AND (events & ?) <> 0)",
        )?
        .query_row([DELIVERY_BITS], |r| r.get(0))?)
}

/// The events of members' moves: one insert into the fan-out view each.
pub(super) fn member_events(
    conn: &Connection,
    seq: i64,
    a: &HotAudience,
    moves: &[(usize, Status)],
    now: i64,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO webhook_delivery_changes VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for &(i, status) in moves {
        stmt.execute(params![
            seq,
            member_delivery_id(seq, i),
            a.members.get(i),
            a.channel,
            status.code(),
            (status == Status::Failed).then_some(MEMBER_FAILED_ERROR),
            a.st.member(i).attempts(),
            now
        ])?;
    }
    Ok(())
}

pub(super) fn create(conn: &Connection, ep: &Endpoint, now: i64) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "INSERT INTO webhooks (id, url, description, events, channels, types, senders, \
               secret, enabled, source, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11) \
             ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            ep.id,
            ep.url,
            ep.description,
            ep.events,
            webhook_list_json(&ep.channels),
            webhook_list_json(&ep.types),
            webhook_list_json(&ep.senders),
            ep.secret.expose(),
            ep.enabled,
            ep.source.as_str(),
            now
        ])?;
    Ok(n > 0)
}

pub(super) fn update(conn: &Connection, ep: &Endpoint, now: i64) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE webhooks SET url = ?2, description = ?3, events = ?4, channels = ?5, \
               types = ?6, senders = ?7, updated_at = ?8 WHERE id = ?1",
        )?
        .execute(params![
            ep.id,
            ep.url,
            ep.description,
            ep.events,
            webhook_list_json(&ep.channels),
            webhook_list_json(&ep.types),
            webhook_list_json(&ep.senders),
            now
        ])?;
    Ok(n > 0)
}

pub(super) fn set_enabled(
    conn: &Connection,
    id: &str,
    enabled: bool,
    reason: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE webhooks SET enabled = ?2, disabled_reason = ?3, \
               failing_since = CASE WHEN ?2 THEN NULL ELSE failing_since END, updated_at = ?4 \
             WHERE id = ?1",
        )?
        .execute(params![
            id,
            enabled,
            if enabled { None } else { reason },
            now
        ])?;
    Ok(n > 0)
}

pub(super) fn rotate(
    conn: &Connection,
    id: &str,
    secret: &Secret,
    old_until: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE webhooks SET old_secret = secret, old_until = ?3, secret = ?2, \
               updated_at = ?4 WHERE id = ?1",
        )?
        .execute(params![id, secret.expose(), old_until, now])?;
    Ok(n > 0)
}

pub(super) fn delete(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM webhooks WHERE id = ?")?
        .execute([id])?
        > 0)
}

pub(super) fn sync_config(conn: &Connection, eps: &[Endpoint], now: i64) -> Result<(), StoreError> {
    let ids: Vec<&str> = eps.iter().map(|e| e.id.as_str()).collect();
    conn.prepare_cached(
        "DELETE FROM webhooks WHERE source = 'config' \
           AND id NOT IN (SELECT value FROM json_each(?))",
    )?
    .execute([serde_json::to_string(&ids).expect("ids serialize")])?;
    for ep in eps {
        if !create(conn, ep, now)? {
            update(conn, ep, now)?;
            conn.prepare_cached(
                "UPDATE webhooks SET source = 'config', \
                   old_secret = CASE WHEN secret = ?2 THEN old_secret ELSE NULL END, \
                   old_until = CASE WHEN secret = ?2 THEN old_until ELSE NULL END, \
                   secret = ?2 WHERE id = ?1",
            )?
            .execute(params![ep.id, ep.secret.expose()])?;
        }
    }
    Ok(())
}

pub(super) fn claim(
    conn: &Connection,
    now: i64,
    lease_until: i64,
    wants: &[(String, u32)],
) -> Result<Vec<Claimed>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "UPDATE webhook_events SET lease_until = ?2, attempts = attempts + 1, updated_at = ?1 \
         WHERE id IN (SELECT e.id FROM webhook_events e \
                       WHERE e.endpoint_id = ?3 AND e.state = 0 AND e.due_at <= ?1 \
                         AND (e.lease_until IS NULL OR e.lease_until <= ?1) \
                         AND (e.okey IS NULL OR NOT EXISTS (SELECT 1 FROM webhook_events p \
                               WHERE p.endpoint_id = e.endpoint_id AND p.okey = e.okey \
                                 AND p.state = 0 AND p.id < e.id)) \
                         AND (e.mkey IS NULL OR NOT EXISTS (SELECT 1 FROM webhook_events p \
                               WHERE p.endpoint_id = e.endpoint_id AND p.okey = e.mkey \
                                 AND p.state = 0 AND p.id < e.id)) \
                       ORDER BY e.id LIMIT ?4) \
         RETURNING {}",
        rows::CLAIMED_COLUMNS
    ))?;
    let mut out = Vec::new();
    for (endpoint, n) in wants.iter().filter(|(_, n)| *n > 0) {
        let mut rs = stmt.query(params![now, lease_until, endpoint, n])?;
        while let Some(r) = rs.next()? {
            out.push(rows::webhook_claimed(r)?);
        }
    }
    out.sort_by_key(|c| c.row);
    Ok(out)
}

pub(super) fn complete(
    conn: &Connection,
    attempts: &[Attempt],
    disable_before: i64,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut disabled = Vec::new();
    for a in attempts {
        let (state, due) = match a.outcome {
            Outcome::Delivered => (DELIVERED, 0),
            Outcome::Retry { at_ms } => (PENDING, at_ms),
            Outcome::Failed => (FAILED, 0),
        };
        let unreached = matches!(a.outcome, Outcome::Retry { .. }) && a.code.is_none();
        let n = conn
            .prepare_cached(
                "UPDATE webhook_events SET state = ?4, due_at = ?5, lease_until = NULL, \
                   unreached = ?6, updated_at = ?1 \
                 WHERE id = ?2 AND state = 0 AND lease_until = ?3",
            )?
            .execute(params![now, a.row, a.lease_until_ms, state, due, unreached])?;
        if n == 0 {
            continue; // the lease was lost (another attempt owns it) or the event is gone
        }
        conn.prepare_cached(
            "INSERT INTO webhook_attempts (event_id, endpoint_id, at, latency_ms, code, \
               response, error) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            a.row,
            a.endpoint_id,
            a.at_ms,
            a.latency_ms,
            a.code,
            a.response,
            a.error
        ])?;
        if a.outcome == Outcome::Delivered {
            let recovered = conn
                .prepare_cached(
                    "UPDATE webhooks SET failing_since = NULL \
                     WHERE id = ? AND failing_since IS NOT NULL",
                )?
                .execute([&a.endpoint_id])?
                > 0;
            if recovered {
                // It answers again: what waits only because it could not be reached goes
                // now, in order (an event the endpoint refused keeps its backoff).
                conn.prepare_cached(
                    "UPDATE webhook_events SET due_at = 0 \
                     WHERE endpoint_id = ? AND state = 0 AND due_at > 0 AND unreached = 1",
                )?
                .execute([&a.endpoint_id])?;
            }
            continue;
        }
        conn.prepare_cached(
            "UPDATE webhooks SET failing_since = COALESCE(failing_since, ?2) WHERE id = ?1",
        )?
        .execute(params![a.endpoint_id, a.at_ms])?;
        let reason = format!(
            "every attempt failed for longer than the limit; the last: {}",
            a.error.as_deref().unwrap_or("no response")
        );
        let off: Option<String> = conn
            .prepare_cached(
                "UPDATE webhooks SET enabled = 0, disabled_reason = ?3, updated_at = ?4 \
                 WHERE id = ?1 AND enabled = 1 AND failing_since < ?2 RETURNING id",
            )?
            .query_row(params![a.endpoint_id, disable_before, reason, now], |r| {
                r.get(0)
            })
            .optional()?;
        disabled.extend(off);
    }
    Ok(disabled)
}

pub(super) fn redeliver(
    conn: &Connection,
    endpoint: &str,
    what: Redeliver,
    now: i64,
) -> Result<u64, StoreError> {
    // An event being sent right now (pending under a live lease) is left to that attempt.
    const SET: &str = "UPDATE webhook_events SET state = 0, due_at = 0, attempts = 0, \
                       updated_at = ?1 WHERE endpoint_id = ?2 \
                       AND NOT (state = 0 AND lease_until > ?1)";
    let n = match what {
        Redeliver::Event(row) => conn
            .prepare_cached(&format!("{SET} AND id = ?3"))?
            .execute(params![now, endpoint, row])?,
        Redeliver::Range { since_ms, until_ms } => conn
            .prepare_cached(&format!("{SET} AND created_at >= ?3 AND created_at < ?4"))?
            .execute(params![now, endpoint, since_ms, until_ms])?,
    };
    Ok(n as u64)
}

pub(super) fn prune(conn: &Connection, cutoff: i64, limit: u32) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM webhook_events WHERE id IN (SELECT id FROM webhook_events \
               WHERE state <> 0 AND updated_at < ? LIMIT ?)",
        )?
        .execute(params![cutoff, limit])? as u64)
}

impl SqliteStore {
    pub(super) async fn read_webhook(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM webhooks WHERE id = ?",
            rows::WEBHOOK_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&self.readers)
        .await?
        .as_ref()
        .map(rows::webhook)
        .transpose()
    }

    pub(super) async fn read_webhooks(&self) -> Result<Vec<Endpoint>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM webhooks ORDER BY id",
            rows::WEBHOOK_COLUMNS
        ))
        .fetch_all(&self.readers)
        .await?
        .iter()
        .map(rows::webhook)
        .collect()
    }

    pub(super) async fn read_webhook_backlog(
        &self,
    ) -> Result<HashMap<String, Backlog>, StoreError> {
        let rows = sqlx::query(
            "SELECT endpoint_id, sum(state = 0), sum(state = 2) FROM webhook_events \
             WHERE state <> 1 GROUP BY endpoint_id",
        )
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.text(0)?,
                    Backlog {
                        pending: r.int(1)?.max(0) as u64,
                        failed: r.int(2)?.max(0) as u64,
                    },
                ))
            })
            .collect()
    }

    pub(super) async fn read_webhook_due(&self, now: i64) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM webhooks w JOIN webhook_events e \
               ON e.endpoint_id = w.id AND e.state = 0 AND e.due_at <= ?1 \
              WHERE w.enabled = 1 AND (e.lease_until IS NULL OR e.lease_until <= ?1))",
        )
        .bind(now)
        .fetch_one(&self.readers)
        .await?;
        row.flag(0)
    }

    pub(super) async fn read_webhook_attempts(
        &self,
        endpoint: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM webhook_attempts a JOIN webhook_events e ON e.id = a.event_id \
             WHERE a.endpoint_id = ? AND a.id < ? ORDER BY a.id DESC LIMIT ?",
            rows::ATTEMPT_COLUMNS
        ))
        .bind(endpoint)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?
        .iter()
        .map(rows::webhook_attempt)
        .collect()
    }
}
