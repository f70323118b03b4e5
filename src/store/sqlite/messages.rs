//! Messages and their deliveries on SQLite: inserts, status changes, collect and deletes
//! (writer side, inside the writer's transaction) and the reads that list them (the
//! reader pool). Delivery rows and compact audience members are merged here, so every
//! read answers the same whatever the storage shape.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::audiences::{self, json_list, Membership};
use super::writer::Ctx;
use super::SqliteStore;
use crate::model::{
    decode_member_id, member_delivery_id, AttemptOutcome, InboxItem, Inserted, Message,
    MessageFilter, NewMessage, Page, PageRequest, Status, StatusChange, StatusFilter,
};
use crate::store::audience::{member_delivery, AudienceState, Members};
use crate::store::rows::{self, Cols};
use crate::store::StoreError;

/// How long an idempotency key is remembered.
pub(super) const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// Expired idempotency keys and presence records no audience can need any more.
pub(super) fn prune(cx: &mut Ctx<'_>) -> Result<(), StoreError> {
    cx.conn
        .prepare_cached("DELETE FROM idempotency_keys WHERE created_at < ?")?
        .execute([cx.now - IDEMPOTENCY_TTL_MS])?;
    cx.conn
        .prepare_cached(
            "DELETE FROM presence WHERE until IS NOT NULL \
               AND until < COALESCE((SELECT min(taken_at) FROM audiences), ?1) - ?2",
        )?
        .execute(params![cx.now, crate::store::audience::PRESENCE_SLACK_MS])?;
    Ok(())
}

pub(super) fn insert(cx: &mut Ctx<'_>, msg: &NewMessage) -> Result<Inserted, StoreError> {
    let (conn, now) = (cx.conn, cx.now);
    if let Some(idem) = &msg.idempotency {
        let row = conn
            .prepare_cached(
                "SELECT request_hash, message_id, deliveries FROM idempotency_keys \
                 WHERE key = ? AND created_at >= ?",
            )?
            .query_row(params![idem.key, now - IDEMPOTENCY_TTL_MS], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()?;
        if let Some((hash, id, deliveries)) = row {
            if hash != idem.request_hash {
                return Ok(Inserted::KeyConflict);
            }
            return Ok(Inserted::Existing {
                id,
                deliveries: deliveries.max(0) as usize,
            });
        }
    }
    conn.prepare_cached(
        "INSERT INTO messages (id, title, content, msg_type, sender, created_at, template, data, \
           rendered, send_at, expires_at, routing) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        msg.id,
        msg.title,
        msg.content,
        msg.msg_type,
        msg.sender,
        msg.created_at_ms,
        msg.template,
        msg.data.as_ref().map(|d| d.to_string()),
        (!msg.rendered.is_empty())
            .then(|| serde_json::to_string(&msg.rendered).ok())
            .flatten(),
        msg.send_at_ms,
        msg.expires_at_ms,
        msg.routing
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok()),
    ])?;
    let seq = conn.last_insert_rowid();
    let held = msg.held_until();
    let mut ids = Vec::with_capacity(msg.deliveries.len());
    {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO deliveries (message_seq, receiver, channel, status, last_error, \
               next_attempt_at, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for d in &msg.deliveries {
            // Outbox rows are due at once, or at sendAt (the message's own clock: tests
            // inject one); presence rows of a scheduled message are held until sendAt.
            let due = match (d.outbox, d.status) {
                (true, Status::Pending) => Some(held.unwrap_or(msg.created_at_ms)),
                (false, Status::Pending) => held,
                _ => None,
            };
            stmt.execute(params![
                seq,
                d.receiver,
                d.channel,
                d.status.code(),
                d.error,
                due,
                msg.created_at_ms,
                now
            ])?;
            ids.push(conn.last_insert_rowid());
        }
    }
    super::timers::insert_for(conn, seq, msg)?;
    if let Some(a) = &msg.audience {
        audiences::insert(cx, seq, &msg.id, msg.created_at_ms, a)?;
    }
    if let Some(idem) = &msg.idempotency {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency_keys (key, request_hash, message_id, deliveries, \
               created_at) VALUES (?, ?, ?, ?, ?)",
        )?
        .execute(params![
            idem.key,
            idem.request_hash,
            msg.id,
            msg.delivery_count() as i64,
            now
        ])?;
    }
    Ok(Inserted::New {
        seq,
        delivery_ids: ids,
    })
}

pub(super) fn delete(cx: &mut Ctx<'_>, id: &str) -> Result<bool, StoreError> {
    if let Some(seq) = cx.hot.seq_of(cx.conn, id)? {
        cx.hot.forget(seq);
    }
    Ok(cx
        .conn
        .prepare_cached("DELETE FROM messages WHERE id = ?")?
        .execute([id])?
        > 0)
}

/// The forward-only rule, as SQL over the bound new status `?1` (see
/// [`Status::can_move_to`]).
const MOVES_FORWARD: &str = "(CASE WHEN ?1 = 4 THEN status < 2 ELSE status < ?1 END)";

/// A status change of the row of (`seq`, `receiver`, `channel`): a spilled audience member,
/// or an ack. `count_attempt` counts a hand-over even when the status does not move.
pub(super) fn apply_to_row(
    conn: &rusqlite::Connection,
    seq: i64,
    receiver: &str,
    channel: &str,
    status: Status,
    count_attempt: bool,
    now: i64,
) -> Result<bool, StoreError> {
    let moved =
        conn.prepare_cached(&format!(
            "UPDATE deliveries SET status = ?1, attempts = attempts + ?2, updated_at = ?3, \
               inbox = CASE WHEN ?1 = 3 THEN inbox | 3 ELSE inbox END \
             WHERE message_seq = ?4 AND receiver = ?5 AND channel = ?6 AND {MOVES_FORWARD}"
        ))?
        .execute(params![
            status.code(),
            i64::from(count_attempt),
            now,
            seq,
            receiver,
            channel
        ])? > 0;
    if !moved && count_attempt {
        conn.prepare_cached(
            "UPDATE deliveries SET attempts = attempts + 1, updated_at = ?1 \
             WHERE message_seq = ?2 AND receiver = ?3 AND channel = ?4 AND status < 2",
        )?
        .execute(params![now, seq, receiver, channel])?;
    }
    Ok(moved)
}

pub(super) fn apply_status(
    cx: &mut Ctx<'_>,
    changes: &[StatusChange],
) -> Result<Vec<bool>, StoreError> {
    let mut applied = Vec::with_capacity(changes.len());
    for change in changes {
        let (conn, now) = (cx.conn, cx.now);
        let moved = match change {
            StatusChange::Delivery {
                delivery_id,
                status,
                error,
                count_attempt,
            } => match decode_member_id(*delivery_id) {
                Some((seq, i)) => audiences::apply_member(cx, seq, i, *status, *count_attempt)?,
                None => {
                    let moved = conn
                        .prepare_cached(&format!(
                            "UPDATE deliveries SET status = ?1, last_error = COALESCE(?2, last_error), \
                               attempts = attempts + ?3, updated_at = ?4, \
                               inbox = CASE WHEN ?1 = 3 THEN inbox | 3 ELSE inbox END \
                             WHERE id = ?5 AND {MOVES_FORWARD}"
                        ))?
                        .execute(params![
                            status.code(),
                            error,
                            i64::from(*count_attempt),
                            now,
                            delivery_id
                        ])?
                        > 0;
                    if !moved && *count_attempt {
                        // A retryable failure or a re-send: the status stays, the attempt
                        // and error are kept.
                        conn.prepare_cached(
                            "UPDATE deliveries SET last_error = COALESCE(?1, last_error), \
                               attempts = attempts + 1, updated_at = ?2 WHERE id = ?3 AND status < 2",
                        )?
                        .execute(params![error, now, delivery_id])?;
                    }
                    moved
                }
            },
            StatusChange::Attempt {
                delivery_id,
                lease_until_ms,
                outcome,
            } => {
                // Fenced: only while the row is still pending under this lease.
                let n = match outcome {
                    AttemptOutcome::Sent { provider_id } => conn
                        .prepare_cached(
                            "UPDATE deliveries SET status = 1, next_attempt_at = NULL, \
                               lease_until = NULL, provider_id = ?4, updated_at = ?1 \
                             WHERE id = ?2 AND status = 0 AND lease_until = ?3",
                        )?
                        .execute(params![now, delivery_id, lease_until_ms, provider_id])?,
                    AttemptOutcome::Retry { at_ms, error } => conn
                        .prepare_cached(
                            "UPDATE deliveries SET next_attempt_at = ?4, lease_until = NULL, \
                               last_error = ?5, updated_at = ?1 \
                             WHERE id = ?2 AND status = 0 AND lease_until = ?3",
                        )?
                        .execute(params![now, delivery_id, lease_until_ms, at_ms, error])?,
                    AttemptOutcome::Failed { error } => conn
                        .prepare_cached(
                            "UPDATE deliveries SET status = 4, next_attempt_at = NULL, \
                               lease_until = NULL, last_error = ?4, updated_at = ?1 \
                             WHERE id = ?2 AND status = 0 AND lease_until = ?3",
                        )?
                        .execute(params![now, delivery_id, lease_until_ms, error])?,
                };
                // A retry keeps the status: "moved" means a status transition.
                n > 0 && !matches!(outcome, AttemptOutcome::Retry { .. })
            }
            StatusChange::Receiver {
                message_id,
                receiver,
                channel,
                status,
            } => receipt(cx, message_id, receiver, channel, *status)?,
        };
        applied.push(moved);
    }
    Ok(applied)
}

/// An ack/read by the receiver itself: its audience entry, or its row. Ordered so the
/// common cases cost one statement (a targeted message: its row) or none (a broadcast the
/// writer holds in memory).
fn receipt(
    cx: &mut Ctx<'_>,
    id: &str,
    receiver: &str,
    channel: &str,
    status: Status,
) -> Result<bool, StoreError> {
    let known = cx.hot.knows(id);
    if known {
        if let Some(moved) = audiences::ack(cx, id, receiver, channel, status)? {
            return Ok(moved);
        }
    }
    let moved = cx
        .conn
        .prepare_cached(&format!(
            "UPDATE deliveries SET status = ?1, updated_at = ?2, \
               inbox = CASE WHEN ?1 = 3 THEN inbox | 3 ELSE inbox END \
             WHERE message_seq = (SELECT seq FROM messages WHERE id = ?3) \
               AND receiver = ?4 AND channel = ?5 AND {MOVES_FORWARD}"
        ))?
        .execute(params![status.code(), cx.now, id, receiver, channel])?
        > 0;
    if moved || known {
        return Ok(moved);
    }
    Ok(audiences::ack(cx, id, receiver, channel, status)?.unwrap_or(false))
}

/// Take up to `limit` undelivered messages of `receiver` (oldest first) and mark them
/// delivered: rows and audience members alike.
pub(super) fn collect(
    cx: &mut Ctx<'_>,
    receiver: &str,
    channel: &str,
    limit: u32,
) -> Result<Vec<InboxItem>, StoreError> {
    let limit = limit as usize;
    let mut items: Vec<InboxItem> = {
        let mut stmt = cx.conn.prepare_cached(&format!(
            "SELECT {} FROM deliveries d JOIN messages m ON m.seq = d.message_seq \
             WHERE d.receiver = ? AND d.channel = ? AND d.status < 2 AND d.next_attempt_at IS NULL \
             ORDER BY d.message_seq LIMIT ?",
            rows::INBOX_COLUMNS
        ))?;
        let mut rows_ = stmt.query(params![receiver, channel, limit as i64])?;
        let mut v = Vec::new();
        while let Some(r) = rows_.next()? {
            v.push(rows::inbox_item(r)?);
        }
        v
    };
    let members = audiences::undelivered_in_writer(cx, receiver, channel, 0, limit)?;
    if !members.is_empty() {
        let seqs: Vec<i64> = members.iter().map(|(s, _)| *s).collect();
        let heads = message_items_in_writer(cx.conn, &seqs)?;
        for (seq, i) in members {
            if let Some(r) = heads.get(&seq) {
                let mut item = r.clone();
                item.delivery_id = member_delivery_id(seq, i);
                items.push(item);
            }
        }
    }
    items.sort_by_key(|i| i.seq);
    items.truncate(limit);
    for item in &mut items {
        match decode_member_id(item.delivery_id) {
            Some((seq, i)) => {
                audiences::apply_member(cx, seq, i, Status::Delivered, false)?;
            }
            None => {
                cx.conn
                    .prepare_cached(
                        "UPDATE deliveries SET status = 2, updated_at = ? WHERE id = ? AND status < 2",
                    )?
                    .execute(params![cx.now, item.delivery_id])?;
            }
        }
        item.status = Status::Delivered;
    }
    Ok(items)
}

/// Message heads (as inbox items without a delivery) by seq, in the writer.
fn message_items_in_writer(
    conn: &rusqlite::Connection,
    seqs: &[i64],
) -> Result<HashMap<i64, InboxItem>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM messages WHERE seq IN (SELECT value FROM json_each(?))",
        rows::MESSAGE_ITEM_COLUMNS
    ))?;
    let mut out = HashMap::new();
    let mut q = stmt.query([json_list(seqs)])?;
    while let Some(r) = q.next()? {
        let item = rows::message_item(r, Status::Pending, 0)?;
        out.insert(item.seq, item);
    }
    Ok(out)
}

impl SqliteStore {
    /// Message heads (inbox items) by seq, from the readers.
    async fn message_items(&self, seqs: &[i64]) -> Result<HashMap<i64, InboxItem>, StoreError> {
        let mut out = HashMap::with_capacity(seqs.len());
        for chunk in seqs.chunks(500) {
            let rows = sqlx::query(&format!(
                "SELECT {} FROM messages WHERE seq IN (SELECT value FROM json_each(?))",
                rows::MESSAGE_ITEM_COLUMNS
            ))
            .bind(json_list(chunk))
            .fetch_all(&self.readers)
            .await?;
            for r in &rows {
                let item = rows::message_item(r, Status::Pending, 0)?;
                out.insert(item.seq, item);
            }
        }
        Ok(out)
    }

    /// Inbox items of memberships (those whose message still exists).
    pub(super) async fn member_items(
        &self,
        found: &[Membership],
    ) -> Result<Vec<InboxItem>, StoreError> {
        let seqs: Vec<i64> = found.iter().map(|m| m.seq).collect();
        let heads = self.message_items(&seqs).await?;
        Ok(found
            .iter()
            .filter_map(|m| {
                heads.get(&m.seq).map(|h| InboxItem {
                    status: m.state.status(),
                    delivery_id: member_delivery_id(m.seq, m.index),
                    flags: crate::model::inbox::derived(m.state.status()),
                    ..h.clone()
                })
            })
            .collect())
    }

    /// `receiver`'s undelivered entries in open audiences of `channel` after `after`.
    async fn open_memberships(
        &self,
        receiver: &str,
        channel: &str,
        after: i64,
    ) -> Result<Vec<Membership>, StoreError> {
        let seqs = audiences::open_seqs(&self.readers, channel, after).await?;
        let mut found =
            audiences::memberships(&self.readers, &self.members, receiver, &seqs).await?;
        found.retain(|m| m.state.status().is_undelivered());
        Ok(found)
    }

    /// Every audience entry of `receiver` (on `channel`, if given): the history index.
    pub(super) async fn all_memberships(
        &self,
        receiver: &str,
        channel: Option<&str>,
    ) -> Result<Vec<Membership>, StoreError> {
        let seqs = audiences::history_seqs(&self.readers, receiver, channel).await?;
        audiences::memberships(&self.readers, &self.members, receiver, &seqs).await
    }

    pub(super) async fn read_message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {} FROM messages m WHERE m.id = ?",
            rows::HEAD_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&self.readers)
        .await?
        else {
            return Ok(None);
        };
        let mut msg = rows::message_head(&row)?;
        let rows_ = sqlx::query(&format!(
            "SELECT {} FROM deliveries WHERE message_seq = ? ORDER BY id",
            rows::DELIVERY_COLUMNS
        ))
        .bind(msg.seq)
        .fetch_all(&self.readers)
        .await?;
        for row in &rows_ {
            let d = rows::delivery(row)?;
            msg.delivery_counts[d.status.code() as usize] += 1;
            msg.deliveries.push(d);
        }
        self.add_members(std::slice::from_mut(&mut msg), usize::MAX)
            .await?;
        if msg.routing.is_some() {
            msg.routes = super::timers::routes(&self.readers, msg.seq).await?;
        }
        Ok(Some(msg))
    }

    /// Add audience members to `msgs` (after their rows, up to `cap` deliveries each) and
    /// their counts (always complete).
    async fn add_members(&self, msgs: &mut [Message], cap: usize) -> Result<(), StoreError> {
        let seqs: Vec<i64> = msgs.iter().map(|m| m.seq).collect();
        let rows_ = sqlx::query(
            "SELECT message_seq, channel, members, state, times FROM audiences \
             WHERE message_seq IN (SELECT value FROM json_each(?))",
        )
        .bind(json_list(&seqs))
        .fetch_all(&self.readers)
        .await?;
        for r in &rows_ {
            let seq: i64 = r.try_get(0)?;
            let Some(msg) = msgs.iter_mut().find(|m| m.seq == seq) else {
                continue;
            };
            let channel: String = r.try_get(1)?;
            let members = match self.members.get(seq) {
                Some(m) => m,
                None => {
                    let m = std::sync::Arc::new(Members::parse(&r.blob(2)?)?);
                    self.members.insert(seq, m.clone());
                    m
                }
            };
            let st = AudienceState::from_blobs(r.blob(3)?, r.blob(4)?)?;
            for (n, c) in st.counts.iter().enumerate() {
                msg.delivery_counts[n] += c;
            }
            for i in 0..members.len().min(st.len()) {
                if msg.deliveries.len() >= cap {
                    break;
                }
                if !st.member(i).spilled() {
                    msg.deliveries.push(member_delivery(
                        seq,
                        &channel,
                        msg.created_at_ms,
                        &members,
                        &st,
                        i,
                    ));
                }
            }
        }
        Ok(())
    }

    /// The seqs of audiences where `f.receiver` is a member matching `f`'s channel and
    /// status (the compact half of a `?receiver=` filter).
    async fn member_seqs(&self, f: &MessageFilter) -> Result<Option<Vec<i64>>, StoreError> {
        let Some(receiver) = &f.receiver else {
            return Ok(None);
        };
        let found = self.all_memberships(receiver, f.channel.as_deref()).await?;
        Ok(Some(
            found
                .iter()
                .filter(|m| match f.status {
                    None => true,
                    Some(StatusFilter::Is(s)) => m.state.status() == s,
                    Some(StatusFilter::Undelivered) => m.state.status().is_undelivered(),
                })
                .map(|m| m.seq)
                .collect(),
        ))
    }

    pub(super) async fn read_list(
        &self,
        filter: &MessageFilter,
        page: PageRequest,
        per_message: usize,
    ) -> Result<Page<Message>, StoreError> {
        let member_seqs = self.member_seqs(filter).await?;
        let seq_in = |qb: &mut QueryBuilder<'_, Sqlite>, seqs: &[i64]| {
            qb.push("(SELECT value FROM json_each(")
                .push_bind(json_list(seqs))
                .push("))");
        };
        let mut count = QueryBuilder::<Sqlite>::new("SELECT count(*) FROM messages m");
        rows::push_filter(&mut count, filter, member_seqs.as_deref(), seq_in);
        let total: i64 = count.build().fetch_one(&self.readers).await?.try_get(0)?;

        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {} FROM messages m", rows::HEAD_COLUMNS));
        rows::push_filter(&mut q, filter, member_seqs.as_deref(), seq_in);
        q.push(" ORDER BY m.seq DESC LIMIT ")
            .push_bind(i64::from(page.size))
            .push(" OFFSET ")
            .push_bind(page.offset());
        let mut items = q
            .build()
            .fetch_all(&self.readers)
            .await?
            .iter()
            .map(rows::message_head)
            .collect::<Result<Vec<_>, _>>()?;
        if items.is_empty() {
            return Ok(Page { items, total });
        }
        let index: HashMap<i64, usize> =
            items.iter().enumerate().map(|(i, m)| (m.seq, i)).collect();
        let seqs: Vec<i64> = items.iter().map(|m| m.seq).collect();
        let counts = sqlx::query(
            "SELECT message_seq, status, count(*) FROM deliveries \
             WHERE message_seq IN (SELECT value FROM json_each(?)) GROUP BY message_seq, status",
        )
        .bind(json_list(&seqs))
        .fetch_all(&self.readers)
        .await?;
        for row in &counts {
            if let Some(&i) = index.get(&row.int(0)?) {
                items[i].delivery_counts[Status::from_code(row.int(1)?).code() as usize] +=
                    row.int(2)?;
            }
        }
        let ds = sqlx::query(&format!(
            "SELECT {} FROM (SELECT *, row_number() OVER (PARTITION BY message_seq ORDER BY id) AS rn \
             FROM deliveries WHERE message_seq IN (SELECT value FROM json_each(?))) \
             WHERE rn <= ? ORDER BY message_seq, id",
            rows::DELIVERY_COLUMNS
        ))
        .bind(json_list(&seqs))
        .bind(per_message as i64)
        .fetch_all(&self.readers)
        .await?;
        for row in &ds {
            if let Some(&i) = index.get(&row.int(1)?) {
                items[i].deliveries.push(rows::delivery(row)?);
            }
        }
        self.add_members(&mut items, per_message).await?;
        Ok(Page { items, total })
    }

    pub(super) async fn read_undelivered(
        &self,
        receiver: &str,
        channel: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError> {
        let mut items = sqlx::query(&format!(
            "SELECT {} FROM deliveries d JOIN messages m ON m.seq = d.message_seq \
             WHERE d.receiver = ? AND d.channel = ? AND d.status < 2 AND d.message_seq > ? \
               AND d.next_attempt_at IS NULL \
             ORDER BY d.message_seq LIMIT ?",
            rows::INBOX_COLUMNS
        ))
        .bind(receiver)
        .bind(channel)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?
        .iter()
        .map(rows::inbox_item)
        .collect::<Result<Vec<_>, _>>()?;
        let mut found = self.open_memberships(receiver, channel, after_seq).await?;
        found.truncate(limit as usize);
        items.extend(self.member_items(&found).await?);
        items.sort_by_key(|i| i.seq);
        items.truncate(limit as usize);
        Ok(items)
    }

    pub(super) async fn read_count_undelivered(
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
        let (mut n, mut max) = (row.int(0)?.max(0) as u64, row.int(1)?);
        for m in self.open_memberships(receiver, channel, 0).await? {
            n += 1;
            max = max.max(m.seq);
        }
        Ok((n, max))
    }

    pub(super) async fn read_receivers_with_undelivered(
        &self,
        channel: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = sqlx::query(
            "SELECT DISTINCT receiver FROM deliveries WHERE channel = ? AND status < 2",
        )
        .bind(channel)
        .fetch_all(&self.readers)
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<_, _>>()?;
        let open = sqlx::query(
            "SELECT members, state FROM audiences WHERE channel = ? AND pending + sent > 0",
        )
        .bind(channel)
        .fetch_all(&self.readers)
        .await?;
        for r in &open {
            let members = Members::parse(&r.blob(0)?)?;
            let state = r.blob(1)?;
            for (i, &b) in state.iter().enumerate().take(members.len()) {
                let m = crate::store::audience::MemberState(b);
                if !m.spilled() && m.status().is_undelivered() {
                    out.push(members.get(i).to_owned());
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}
