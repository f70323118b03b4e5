//! Webhooks on PostgreSQL (docs/webhooks.md): endpoints, the event outbox and attempts.
//!
//! Events are written by the triggers of `migrations/postgres/0004_webhooks.sql` inside the
//! transaction that changes a row; a broadcast member's moves are fanned out by the same
//! SQL function (`webhook_delivery_events`) from the audience writer ([`member_events`]).
//!
//! Across nodes: claims pick events with `FOR UPDATE SKIP LOCKED` (never waiting, never
//! taking one twice), and an event whose message has an earlier pending event of the
//! endpoint is not claimed, leased or not, so a message's events go out in order. Writers
//! of existing events (`complete`, `redeliver`) lock their endpoints' rows first, in id
//! order; an outcome is fenced by its lease in the `UPDATE`'s own `WHERE`.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::audiences::Locked;
use super::PgStore;
use crate::config::Secret;
use crate::model::webhook::{
    Attempt, AttemptRecord, Backlog, Claimed, Endpoint, EventType, Outcome, Redeliver, DELIVERED,
    FAILED, PENDING,
};
use crate::model::{member_delivery_id, Status};
use crate::store::audience::MEMBER_FAILED_ERROR;
use crate::store::rows::{self, webhook_list_json, Cols};
use crate::store::StoreError;

/// Whether an enabled endpoint wants `delivery.*` events (bits 2 | 4 | 8 | 16), as a
/// column of another query: `audiences::lock` asks it with the audiences it locks, so a
/// transaction that moves members needs no round trip of its own to find out.
pub(super) const WANT_DELIVERY_EVENTS: &str =
    "EXISTS (SELECT 1 FROM webhooks WHERE enabled AND (events & 30) <> 0)";

const _: () = assert!(
    EventType::DeliverySent as i64
        | EventType::DeliveryDelivered as i64
        | EventType::DeliveryRead as i64
        | EventType::DeliveryFailed as i64
        == 30
);

/// The events of broadcast members' moves in `audiences` (recorded only when an endpoint
/// wanted `delivery.*` events as they were locked): one call of the fan-out function for
/// all of them, in `message_seq` order and each audience's order of moves.
pub(super) async fn member_events(
    conn: &mut PgConnection,
    audiences: &[&Locked],
    now: i64,
) -> Result<(), StoreError> {
    let mut moved: Vec<&Locked> = audiences
        .iter()
        .copied()
        .filter(|a| !a.moves.is_empty())
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    moved.sort_unstable_by_key(|a| a.seq);
    let n: usize = moved.iter().map(|a| a.moves.len()).sum();
    let mut seqs = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    let mut channels = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    for a in moved {
        for &(i, status) in &a.moves {
            seqs.push(a.seq);
            ids.push(member_delivery_id(a.seq, i));
            receivers.push(a.members.get(i));
            channels.push(a.channel.as_str());
            statuses.push(status.code());
            reasons.push((status == Status::Failed).then_some(MEMBER_FAILED_ERROR));
            attempts.push(a.st.member(i).attempts());
        }
    }
    sqlx::query(
        "SELECT webhook_delivery_events($1::int8[], $2::int8[], $3::text[], $4::text[], \
           $5::int8[], $6::text[], $7::int8[], $8)",
    )
    .bind(&seqs)
    .bind(&ids)
    .bind(&receivers)
    .bind(&channels)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&attempts)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn create(
    conn: &mut PgConnection,
    ep: &Endpoint,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "INSERT INTO webhooks (id, url, description, events, channels, types, senders, \
           secret, enabled, source, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ep.id)
    .bind(&ep.url)
    .bind(&ep.description)
    .bind(ep.events)
    .bind(webhook_list_json(&ep.channels))
    .bind(webhook_list_json(&ep.types))
    .bind(webhook_list_json(&ep.senders))
    .bind(ep.secret.expose())
    .bind(ep.enabled)
    .bind(ep.source.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0)
}

pub(super) async fn update(
    conn: &mut PgConnection,
    ep: &Endpoint,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE webhooks SET url = $2, description = $3, events = $4, channels = $5, \
           types = $6, senders = $7, updated_at = $8 WHERE id = $1",
    )
    .bind(&ep.id)
    .bind(&ep.url)
    .bind(&ep.description)
    .bind(ep.events)
    .bind(webhook_list_json(&ep.channels))
    .bind(webhook_list_json(&ep.types))
    .bind(webhook_list_json(&ep.senders))
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0)
}

pub(super) async fn set_enabled(
    conn: &mut PgConnection,
    id: &str,
    enabled: bool,
    reason: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE webhooks SET enabled = $2, disabled_reason = $3, \
           failing_since = CASE WHEN $2 THEN NULL ELSE failing_since END, updated_at = $4 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(enabled)
    .bind(if enabled { None } else { reason })
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0)
}

pub(super) async fn rotate(
    conn: &mut PgConnection,
    id: &str,
    secret: &Secret,
    old_until: i64,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE webhooks SET old_secret = secret, old_until = $3, secret = $2, \
           updated_at = $4 WHERE id = $1",
    )
    .bind(id)
    .bind(secret.expose())
    .bind(old_until)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0)
}

pub(super) async fn delete(conn: &mut PgConnection, id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("DELETE FROM webhooks WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0)
}

/// Inside a transaction: config endpoints no longer listed go, the listed ones are
/// upserted in id order (nodes starting at once lock them in one order). An existing
/// endpoint keeps its state and events; a changed secret ends any rotation.
pub(super) async fn sync_config(
    conn: &mut PgConnection,
    eps: &[Endpoint],
    now: i64,
) -> Result<(), StoreError> {
    let mut eps: Vec<&Endpoint> = eps.iter().collect();
    eps.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let ids: Vec<&str> = eps.iter().map(|e| e.id.as_str()).collect();
    sqlx::query("DELETE FROM webhooks WHERE source = 'config' AND NOT (id = ANY($1))")
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    for ep in eps {
        sqlx::query(
            "INSERT INTO webhooks AS w (id, url, description, events, channels, types, \
               senders, secret, enabled, source, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
             ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, \
               description = EXCLUDED.description, events = EXCLUDED.events, \
               channels = EXCLUDED.channels, types = EXCLUDED.types, \
               senders = EXCLUDED.senders, updated_at = EXCLUDED.updated_at, \
               source = 'config', \
               old_secret = CASE WHEN w.secret = EXCLUDED.secret THEN w.old_secret END, \
               old_until = CASE WHEN w.secret = EXCLUDED.secret THEN w.old_until END, \
               secret = EXCLUDED.secret",
        )
        .bind(&ep.id)
        .bind(&ep.url)
        .bind(&ep.description)
        .bind(ep.events)
        .bind(webhook_list_json(&ep.channels))
        .bind(webhook_list_json(&ep.types))
        .bind(webhook_list_json(&ep.senders))
        .bind(ep.secret.expose())
        .bind(ep.enabled)
        .bind(ep.source.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Lease up to `n` due events of each endpoint of `wants` (one statement each, in one
/// transaction), oldest first, never one while an earlier event with its ordering key or
/// its message's key is pending (as on SQLite).
///
/// The held-back checks are scalar subqueries on purpose: as `NOT EXISTS` the planner may
/// make them an anti-join that hashes every pending event of the endpoint on each claim;
/// as sub-plans they are index probes for only the rows the claim walks (oldest first,
/// stopping at `n`).
pub(super) async fn claim(
    conn: &mut PgConnection,
    now: i64,
    lease_until: i64,
    wants: &[(String, u32)],
) -> Result<Vec<Claimed>, StoreError> {
    let sql = format!(
        "WITH picked AS MATERIALIZED ( \
           SELECT e.id FROM webhook_events e \
            WHERE e.endpoint_id = $3 AND e.state = 0 AND e.due_at <= $1 \
              AND (e.lease_until IS NULL OR e.lease_until <= $1) \
              AND (e.okey IS NULL OR (SELECT 1 FROM webhook_events p \
                    WHERE p.endpoint_id = e.endpoint_id AND p.okey = e.okey \
                      AND p.state = 0 AND p.id < e.id LIMIT 1) IS NULL) \
              AND (e.mkey IS NULL OR (SELECT 1 FROM webhook_events p \
                    WHERE p.endpoint_id = e.endpoint_id AND p.okey = e.mkey \
                      AND p.state = 0 AND p.id < e.id LIMIT 1) IS NULL) \
            ORDER BY e.id LIMIT $4 \
            FOR UPDATE SKIP LOCKED) \
         UPDATE webhook_events SET lease_until = $2, attempts = attempts + 1, updated_at = $1 \
          WHERE id IN (SELECT id FROM picked) \
         RETURNING {}",
        rows::CLAIMED_COLUMNS
    );
    let mut out = Vec::new();
    for (endpoint, n) in wants.iter().filter(|(_, n)| *n > 0) {
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(lease_until)
            .bind(endpoint)
            .bind(i64::from(*n))
            .fetch_all(&mut *conn)
            .await?;
        for r in &rows {
            out.push(rows::webhook_claimed(r)?);
        }
    }
    out.sort_by_key(|c| c.row);
    Ok(out)
}

/// Inside a transaction: record the attempts whose lease still holds, and their
/// endpoints' failure streaks. Returns the endpoints disabled now. Set-based: one
/// statement records every outcome and its attempt, then one or two per endpoint settle
/// its streak — a batch of outcomes is a handful of round trips, not three per attempt.
pub(super) async fn complete(
    conn: &mut PgConnection,
    attempts: &[Attempt],
    disable_before: i64,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    // The endpoints first, in id order (see the module docs).
    let mut endpoints: Vec<&str> = attempts.iter().map(|a| a.endpoint_id.as_str()).collect();
    endpoints.sort_unstable();
    endpoints.dedup();
    sqlx::query("SELECT id FROM webhooks WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(&endpoints)
        .execute(&mut *conn)
        .await?;
    let col = |f: &dyn Fn(&Attempt) -> i64| attempts.iter().map(f).collect::<Vec<i64>>();
    let states = col(&|a| match a.outcome {
        Outcome::Delivered => DELIVERED,
        Outcome::Retry { .. } => PENDING,
        Outcome::Failed => FAILED,
    });
    let dues = col(&|a| match a.outcome {
        Outcome::Retry { at_ms } => at_ms,
        _ => 0,
    });
    let unreached: Vec<bool> = attempts
        .iter()
        .map(|a| matches!(a.outcome, Outcome::Retry { .. }) && a.code.is_none())
        .collect();
    let codes: Vec<Option<i64>> = attempts.iter().map(|a| a.code.map(i64::from)).collect();
    let responses: Vec<Option<&str>> = attempts.iter().map(|a| a.response.as_deref()).collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    let endpoint_ids: Vec<&str> = attempts.iter().map(|a| a.endpoint_id.as_str()).collect();
    // The outcomes whose lease holds, and an attempt row for each, in the batch's order.
    let recorded: Vec<i64> = sqlx::query_scalar(
        "WITH t AS ( \
           SELECT * FROM UNNEST($2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::bool[], \
                                $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::text[], \
                                $12::text[]) WITH ORDINALITY \
             AS t (row_id, lease, state, due, unreached, endpoint_id, at, latency, code, \
                   response, error, n)), \
         done AS ( \
           UPDATE webhook_events e SET state = t.state, due_at = t.due, lease_until = NULL, \
             unreached = t.unreached, updated_at = $1 \
           FROM t WHERE e.id = t.row_id AND e.state = 0 AND e.lease_until = t.lease \
           RETURNING e.id), \
         ins AS ( \
           INSERT INTO webhook_attempts (event_id, endpoint_id, at, latency_ms, code, \
             response, error) \
           SELECT t.row_id, t.endpoint_id, t.at, t.latency, t.code, t.response, t.error \
             FROM t JOIN done ON done.id = t.row_id ORDER BY t.n \
           RETURNING event_id) \
         SELECT event_id FROM ins",
    )
    .bind(now)
    .bind(col(&|a| a.row))
    .bind(col(&|a| a.lease_until_ms))
    .bind(&states)
    .bind(&dues)
    .bind(&unreached)
    .bind(&endpoint_ids)
    .bind(col(&|a| a.at_ms))
    .bind(col(&|a| a.latency_ms))
    .bind(&codes)
    .bind(&responses)
    .bind(&errors)
    .fetch_all(&mut *conn)
    .await?;
    let recorded: std::collections::HashSet<i64> = recorded.into_iter().collect();
    // Each endpoint's streak after this batch: the last recorded success ends it; failures
    // after it start one (at the first of them) unless one runs already.
    let mut disabled = Vec::new();
    for ep in endpoints {
        let mine: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.endpoint_id == ep && recorded.contains(&a.row))
            .collect();
        let last_ok = mine.iter().rposition(|a| a.outcome == Outcome::Delivered);
        let failures_after = &mine[last_ok.map_or(0, |i| i + 1)..];
        if let Some(i) = last_ok {
            // It answers again (after failing before, or earlier in this batch): what waits
            // only because it could not be reached goes now, in order (an event the
            // endpoint refused keeps its backoff).
            let failed_in_batch = mine[..i].iter().any(|a| a.outcome != Outcome::Delivered);
            sqlx::query(
                "WITH recovered AS ( \
                   UPDATE webhooks SET failing_since = NULL \
                   WHERE id = $1 AND (failing_since IS NOT NULL OR $2) RETURNING id) \
                 UPDATE webhook_events SET due_at = 0 \
                 WHERE endpoint_id = (SELECT id FROM recovered) AND state = 0 AND due_at > 0 \
                   AND unreached",
            )
            .bind(ep)
            .bind(failed_in_batch)
            .execute(&mut *conn)
            .await?;
        }
        let Some(first) = failures_after.first() else {
            continue;
        };
        let last = failures_after.last().expect("not empty");
        let reason = format!(
            "every attempt failed for longer than the limit; the last: {}",
            last.error.as_deref().unwrap_or("no response")
        );
        // Two statements: one statement must not update the same row twice.
        sqlx::query(
            "UPDATE webhooks SET failing_since = COALESCE(failing_since, $2) WHERE id = $1",
        )
        .bind(ep)
        .bind(first.at_ms)
        .execute(&mut *conn)
        .await?;
        let off: Option<String> = sqlx::query_scalar(
            "UPDATE webhooks SET enabled = FALSE, disabled_reason = $3, updated_at = $4 \
             WHERE id = $1 AND enabled AND failing_since < $2 RETURNING id",
        )
        .bind(ep)
        .bind(disable_before)
        .bind(reason)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        disabled.extend(off);
    }
    Ok(disabled)
}

/// Inside a transaction: make events of `endpoint` pending and due now (the endpoint's
/// row locked first). An event being sent right now (pending under a live lease) is left
/// to that attempt.
pub(super) async fn redeliver(
    conn: &mut PgConnection,
    endpoint: &str,
    what: Redeliver,
    now: i64,
) -> Result<u64, StoreError> {
    sqlx::query("SELECT id FROM webhooks WHERE id = $1 FOR NO KEY UPDATE")
        .bind(endpoint)
        .execute(&mut *conn)
        .await?;
    const SET: &str = "UPDATE webhook_events SET state = 0, due_at = 0, attempts = 0, \
                       updated_at = $1 WHERE endpoint_id = $2 \
                       AND NOT (state = 0 AND lease_until > $1)";
    let done = match what {
        Redeliver::Event(row) => {
            sqlx::query(&format!("{SET} AND id = $3"))
                .bind(now)
                .bind(endpoint)
                .bind(row)
                .execute(&mut *conn)
                .await?
        }
        Redeliver::Range { since_ms, until_ms } => {
            sqlx::query(&format!("{SET} AND created_at >= $3 AND created_at < $4"))
                .bind(now)
                .bind(endpoint)
                .bind(since_ms)
                .bind(until_ms)
                .execute(&mut *conn)
                .await?
        }
    };
    Ok(done.rows_affected())
}

/// Delete up to `limit` finished events last changed before `cutoff` (their attempts go
/// with them); rows another transaction holds are left for the next round.
pub(super) async fn prune(
    conn: &mut PgConnection,
    cutoff: i64,
    limit: u32,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "WITH old AS MATERIALIZED ( \
           SELECT id FROM webhook_events WHERE state <> 0 AND updated_at < $1 \
            LIMIT $2 FOR UPDATE SKIP LOCKED) \
         DELETE FROM webhook_events WHERE id IN (SELECT id FROM old)",
    )
    .bind(cutoff)
    .bind(i64::from(limit))
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

impl PgStore {
    pub(super) async fn read_webhook(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM webhooks WHERE id = $1",
            rows::WEBHOOK_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::webhook)
        .collect()
    }

    pub(super) async fn read_webhook_backlog(
        &self,
    ) -> Result<HashMap<String, Backlog>, StoreError> {
        let rows = sqlx::query(
            "SELECT endpoint_id, count(*) FILTER (WHERE state = 0), \
               count(*) FILTER (WHERE state = 2) \
             FROM webhook_events WHERE state <> 1 GROUP BY endpoint_id",
        )
        .fetch_all(&self.pool)
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
        sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM webhooks w JOIN webhook_events e \
               ON e.endpoint_id = w.id AND e.state = 0 AND e.due_at <= $1 \
              WHERE w.enabled AND (e.lease_until IS NULL OR e.lease_until <= $1))",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?
        .flag(0)
    }

    pub(super) async fn read_webhook_attempts(
        &self,
        endpoint: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM webhook_attempts a JOIN webhook_events e ON e.id = a.event_id \
             WHERE a.endpoint_id = $1 AND a.id < $2 ORDER BY a.id DESC LIMIT $3",
            rows::ATTEMPT_COLUMNS
        ))
        .bind(endpoint)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::webhook_attempt)
        .collect()
    }
}
