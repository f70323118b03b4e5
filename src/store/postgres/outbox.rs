//! The provider outbox on PostgreSQL: claims under a lease (`FOR UPDATE SKIP LOCKED`), quotas
//! locked per window, and what the workers and the dashboard read about it.

use std::collections::HashMap;

use sqlx::{PgConnection, Row};

use super::PgStore;
use crate::model::{ClaimResult, Claimed, OutboxMessage, QuotaClaim};
use crate::store::rows;
use crate::store::{OutboxCounts, StoreError};

/// Lease up to `limit` due outbox rows of `channel`: the lease end becomes the row's due
/// time, so a row whose worker died is due again when the lease runs out. With a quota,
/// at most what is left of it, counted in the same transaction.
pub(super) async fn claim(
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

impl PgStore {
    pub(super) async fn read_quota_used(
        &self,
        channel: &str,
        window_start_ms: i64,
    ) -> Result<u64, StoreError> {
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

    pub(super) async fn read_delivery_channel(
        &self,
        delivery_id: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query("SELECT channel FROM deliveries WHERE id = $1")
            .bind(delivery_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    pub(super) async fn read_delivery_by_provider_id(
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

    pub(super) async fn read_count_due(
        &self,
        channel: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<u32, StoreError> {
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

    pub(super) async fn read_next_due(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query(
            "SELECT min(next_attempt_at) FROM deliveries \
             WHERE channel = $1 AND status = 0 AND next_attempt_at IS NOT NULL",
        )
        .bind(channel)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?)
    }

    pub(super) async fn read_outbox_counts(
        &self,
    ) -> Result<HashMap<String, OutboxCounts>, StoreError> {
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

    pub(super) async fn read_outbox_messages(
        &self,
        seqs: &[i64],
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query(&format!(
            "SELECT {} FROM messages WHERE seq = ANY($1)",
            rows::OUTBOX_MESSAGE_COLUMNS
        ))
        .bind(seqs)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::outbox_message)
        .collect()
    }
}
