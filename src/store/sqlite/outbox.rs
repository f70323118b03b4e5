//! The provider outbox on SQLite: claims under a lease (writer side) and what the workers
//! and the dashboard read about it.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};
use sqlx::Row;

use super::audiences::json_list;
use super::SqliteStore;
use crate::model::{ClaimResult, Claimed, OutboxMessage, QuotaClaim};
use crate::store::rows;
use crate::store::{OutboxCounts, StoreError};

/// Lease up to `limit` due outbox rows of `channel`: the lease end becomes the row's due
/// time, so a row whose worker died is due again when the lease runs out. With a quota,
/// at most what is left of it, counted in the same transaction.
pub(super) fn claim(
    conn: &Connection,
    channel: &str,
    now: i64,
    lease_until: i64,
    limit: u32,
    quota: Option<QuotaClaim>,
) -> Result<ClaimResult, StoreError> {
    let mut limit = limit;
    let mut left = None;
    if let Some(q) = quota {
        let used: i64 = conn
            .prepare_cached("SELECT used FROM quota_usage WHERE channel = ? AND window_start = ?")?
            .query_row(params![channel, q.window_start_ms], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
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
    let mut out = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            "UPDATE deliveries SET next_attempt_at = ?1, lease_until = ?1, attempts = attempts + 1, \
               updated_at = ?2 \
             WHERE id IN (SELECT id FROM deliveries WHERE channel = ?3 AND status = 0 \
                            AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?2 \
                          ORDER BY next_attempt_at LIMIT ?4) \
             RETURNING id, message_seq, receiver, channel, attempts",
        )?;
        let mut rows = stmt.query(params![lease_until, now, channel, i64::from(limit)])?;
        while let Some(r) = rows.next()? {
            out.push(Claimed {
                delivery_id: r.get(0)?,
                message_seq: r.get(1)?,
                receiver: r.get(2)?,
                channel: r.get(3)?,
                attempts: r.get(4)?,
                lease_until_ms: lease_until,
            });
        }
    }
    out.sort_by_key(|c| (c.message_seq, c.delivery_id));
    if let (Some(q), Some(remaining)) = (quota, left) {
        if !out.is_empty() {
            conn.prepare_cached(
                "INSERT INTO quota_usage (channel, window_start, used) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (channel, window_start) DO UPDATE SET used = used + ?3",
            )?
            .execute(params![channel, q.window_start_ms, out.len() as i64])?;
            // Old windows are of no use: keep the table small.
            conn.prepare_cached("DELETE FROM quota_usage WHERE channel = ? AND window_start < ?")?
                .execute(params![channel, q.window_start_ms - 7 * 86_400_000])?;
        }
        left = Some(remaining - out.len() as u64);
    }
    Ok(ClaimResult {
        rows: out,
        quota_left: left,
    })
}

impl SqliteStore {
    pub(super) async fn read_quota_used(
        &self,
        channel: &str,
        window_start_ms: i64,
    ) -> Result<u64, StoreError> {
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

    pub(super) async fn read_delivery_channel(
        &self,
        delivery_id: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query("SELECT channel FROM deliveries WHERE id = ?")
            .bind(delivery_id)
            .fetch_optional(&self.readers)
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
            "SELECT id FROM deliveries WHERE channel = ? AND provider_id = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(channel)
        .bind(provider_id)
        .fetch_optional(&self.readers)
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

    pub(super) async fn read_next_due(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query(
            "SELECT min(next_attempt_at) FROM deliveries \
             WHERE channel = ? AND status = 0 AND next_attempt_at IS NOT NULL",
        )
        .bind(channel)
        .fetch_one(&self.readers)
        .await?
        .try_get(0)?)
    }

    pub(super) async fn read_outbox_counts(
        &self,
    ) -> Result<HashMap<String, OutboxCounts>, StoreError> {
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

    pub(super) async fn read_outbox_messages(
        &self,
        seqs: &[i64],
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(500) {
            let rows_ = sqlx::query(&format!(
                "SELECT {} FROM messages WHERE seq IN (SELECT value FROM json_each(?))",
                rows::OUTBOX_MESSAGE_COLUMNS
            ))
            .bind(json_list(chunk))
            .fetch_all(&self.readers)
            .await?;
            for r in &rows_ {
                out.push(rows::outbox_message(r)?);
            }
        }
        Ok(out)
    }
}
