//! Messages and their deliveries on PostgreSQL: inserts, status changes, collect and
//! deletes (each in the caller's transaction) and the reads that list them. Delivery rows
//! and compact audience members are merged here, so every read answers the same whatever
//! the storage shape (as on SQLite).

use std::collections::{HashMap, HashSet};

use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use super::{audiences, PgStore};
use crate::model::{
    decode_member_id, member_delivery_id, AttemptOutcome, InboxItem, Inserted, Message,
    MessageFilter, NewMessage, Page, PageRequest, Status, StatusChange, StatusFilter, WEBSOCKET,
};
use crate::store::audience::{self, AudienceState, Members, MembersCache, Membership};
use crate::store::rows::{self, Cols};
use crate::store::StoreError;

/// How long an idempotency key is remembered.
pub(super) const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// Ids per `= ANY($n)` array in bulk status updates.
const BULK_CHUNK: usize = 1000;

/// Store a message, its deliveries, its audience and timers (in the caller's transaction).
/// With a new audience, its member list comes back too (to cache once committed).
pub(super) async fn insert(
    conn: &mut PgConnection,
    msg: &NewMessage,
    now: i64,
) -> Result<(Inserted, Option<Members>), StoreError> {
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
        .bind(msg.delivery_count() as i64)
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
                return Ok((Inserted::KeyConflict, None));
            }
            let deliveries: i64 = row.try_get(2)?;
            return Ok((
                Inserted::Existing {
                    id: row.try_get(1)?,
                    deliveries: deliveries.max(0) as usize,
                },
                None,
            ));
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
    super::timers::insert_for(conn, seq, msg).await?;
    let members = match &msg.audience {
        Some(a) => Some(audiences::insert(conn, seq, a, now).await?),
        None => None,
    };
    Ok((
        Inserted::New {
            seq,
            delivery_ids: ids,
        },
        members,
    ))
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

/// The forward-only rule, as SQL over the bound new status `$1` (see
/// [`Status::can_move_to`]).
const MOVES_FORWARD: &str = "(CASE WHEN $1 = 4 THEN status < 2 ELSE status < $1 END)";

/// The delivery row a change names: by id, or by (message, receiver, channel).
#[derive(Clone, Copy)]
pub(super) enum RowKey<'a> {
    Id(i64),
    Of {
        seq: i64,
        receiver: &'a str,
        channel: &'a str,
    },
}

impl<'a> RowKey<'a> {
    /// The `WHERE` condition, its parameters numbered from `$first`.
    fn cond(self, first: usize) -> String {
        match self {
            RowKey::Id(_) => format!("id = ${first}"),
            RowKey::Of { .. } => format!(
                "message_seq = ${first} AND receiver = ${} AND channel = ${}",
                first + 1,
                first + 2
            ),
        }
    }

    fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        match self {
            RowKey::Id(id) => q.bind(id),
            RowKey::Of {
                seq,
                receiver,
                channel,
            } => q.bind(seq).bind(receiver).bind(channel),
        }
    }
}

/// A status change of one delivery row, with the rules of [`Status::can_move_to`]:
/// `count_attempt` counts a hand-over even when the status does not move (the error is
/// kept then too). `true` when the status moved; a move to `read` reads the inbox entry too
/// (its flags seen and read).
pub(super) async fn apply_to_row(
    conn: &mut PgConnection,
    row: RowKey<'_>,
    status: Status,
    error: Option<&str>,
    count_attempt: bool,
    now: i64,
) -> Result<bool, StoreError> {
    let moved = row
        .bind(
            sqlx::query(&format!(
                "UPDATE deliveries SET status = $1, last_error = COALESCE($2, last_error), \
                   attempts = attempts + $3, updated_at = $4, \
                   inbox = CASE WHEN $1 = 3 THEN inbox | 3 ELSE inbox END \
                 WHERE {} AND {MOVES_FORWARD}",
                row.cond(5)
            ))
            .bind(status.code())
            .bind(error)
            .bind(i64::from(count_attempt))
            .bind(now),
        )
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0;
    if !moved && count_attempt {
        // A retryable failure or a re-send: the status stays, the attempt and error are kept.
        row.bind(
            sqlx::query(&format!(
                "UPDATE deliveries SET last_error = COALESCE($1, last_error), \
                   attempts = attempts + 1, updated_at = $2 WHERE {} AND status < 2",
                row.cond(3)
            ))
            .bind(error)
            .bind(now),
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(moved)
}

/// Apply a batch of status changes in order, as SQLite does. Audience members are changed
/// in memory after their audiences were locked (messages, then audiences, in seq order,
/// before any delivery row), and each changed audience is written once at the end.
pub(super) async fn apply_status(
    conn: &mut PgConnection,
    cache: &MembersCache,
    changes: &[StatusChange],
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    // Acks name messages by public id: their seqs, and the channel of their audience.
    let ids: Vec<&str> = changes
        .iter()
        .filter_map(|c| match c {
            StatusChange::Receiver { message_id, .. } => Some(message_id.as_str()),
            _ => None,
        })
        .collect();
    let mut receipts: HashMap<String, (i64, Option<String>)> = HashMap::new();
    if !ids.is_empty() {
        for r in sqlx::query(
            "SELECT m.id, m.seq, a.channel FROM messages m \
             LEFT JOIN audiences a ON a.message_seq = m.seq WHERE m.id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?
        {
            receipts.insert(r.text(0)?, (r.int(1)?, r.opt_text(2)?));
        }
    }
    let mut seqs: Vec<i64> = Vec::new();
    for c in changes {
        match c {
            StatusChange::Delivery { delivery_id, .. } => {
                if let Some((seq, _)) = decode_member_id(*delivery_id) {
                    seqs.push(seq);
                }
            }
            StatusChange::Receiver {
                message_id,
                channel,
                ..
            } => {
                if let Some((seq, Some(c))) = receipts.get(message_id) {
                    if c == channel {
                        seqs.push(*seq);
                    }
                }
            }
            StatusChange::Attempt { .. } => {}
        }
    }
    let mut locked = audiences::lock(conn, cache, &seqs).await?;
    // Then the inbox counters the batch may change, before any delivery row.
    let counted = counted_receivers(conn, changes, &receipts, &locked).await?;
    super::inbox::lock_counts(conn, counted).await?;

    let mut applied = vec![false; changes.len()];
    let bulk = bulk_sent(conn, changes, &mut applied, now).await?;
    for (i, change) in changes.iter().enumerate() {
        if bulk.contains(&i) {
            continue;
        }
        applied[i] = match change {
            StatusChange::Delivery {
                delivery_id,
                status,
                error,
                count_attempt,
            } => match decode_member_id(*delivery_id) {
                Some((seq, m)) => match locked.get_mut(&seq) {
                    Some(a) if m < a.members.len() => {
                        a.apply(conn, m, *status, *count_attempt, now).await?
                    }
                    _ => false, // deleted, or no such member
                },
                None => {
                    let row = RowKey::Id(*delivery_id);
                    apply_to_row(conn, row, *status, error.as_deref(), *count_attempt, now).await?
                }
            },
            StatusChange::Attempt {
                delivery_id,
                lease_until_ms,
                outcome,
            } => apply_attempt(conn, *delivery_id, *lease_until_ms, outcome, now).await?,
            StatusChange::Receiver {
                message_id,
                receiver,
                channel,
                status,
            } => {
                let Some((seq, _)) = receipts.get(message_id) else {
                    continue; // no such message: `applied[i]` stays false
                };
                // Its audience entry, unless it has none (or a row of its own now).
                let member = locked
                    .get_mut(seq)
                    .filter(|a| a.channel == *channel)
                    .and_then(|a| {
                        let m = a.members.find(receiver)?;
                        (!a.st.member(m).spilled()).then_some((a, m))
                    });
                match member {
                    Some((a, m)) => a.apply(conn, m, *status, false, now).await?,
                    None => {
                        let row = RowKey::Of {
                            seq: *seq,
                            receiver,
                            channel,
                        };
                        apply_to_row(conn, row, *status, None, false, now).await?
                    }
                }
            }
        };
    }
    audiences::write_back(conn, &mut locked, now).await?;
    Ok(applied)
}

/// The receivers whose inbox counters a batch may change: a websocket row moving to
/// `read` or `failed` (unspilled members change in their audience, not in a row; `sent`
/// and `delivered` leave the counters alone). Provider attempts are left out: they change
/// outbox rows, which are never on a presence channel such as `websocket`.
async fn counted_receivers(
    conn: &mut PgConnection,
    changes: &[StatusChange],
    receipts: &HashMap<String, (i64, Option<String>)>,
    locked: &HashMap<i64, audiences::Locked>,
) -> Result<Vec<String>, StoreError> {
    let counted = |s: &Status| matches!(s, Status::Read | Status::Failed);
    let mut out = Vec::new();
    let mut ids = Vec::new();
    for c in changes {
        match c {
            StatusChange::Delivery {
                delivery_id,
                status,
                ..
            } if counted(status) => match decode_member_id(*delivery_id) {
                Some((seq, m)) => {
                    if let Some(a) = locked.get(&seq) {
                        if a.channel == WEBSOCKET && m < a.members.len() && a.st.member(m).spilled()
                        {
                            out.push(a.members.get(m).to_owned());
                        }
                    }
                }
                None => ids.push(*delivery_id),
            },
            StatusChange::Receiver {
                message_id,
                receiver,
                channel,
                status,
            } if channel == WEBSOCKET && counted(status) => {
                let Some((seq, _)) = receipts.get(message_id) else {
                    continue; // no such message
                };
                let member = locked.get(seq).and_then(|a| a.member_of(receiver, channel));
                if member.is_none() {
                    out.push(receiver.clone());
                }
            }
            _ => {}
        }
    }
    if !ids.is_empty() {
        for r in sqlx::query(
            "SELECT DISTINCT receiver FROM deliveries WHERE id = ANY($1) AND channel = $2",
        )
        .bind(&ids)
        .bind(WEBSOCKET)
        .fetch_all(&mut *conn)
        .await?
        {
            out.push(r.text(0)?);
        }
    }
    Ok(out)
}

/// `sent` without an error for delivery rows is by far the most common change (every
/// written frame): applied first and in bulk, `= ANY(…)` arrays, instead of one statement
/// each. Returns the indices it applied.
async fn bulk_sent(
    conn: &mut PgConnection,
    changes: &[StatusChange],
    applied: &mut [bool],
    now: i64,
) -> Result<HashSet<usize>, StoreError> {
    let mut bulk: Vec<(usize, i64)> = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        if let StatusChange::Delivery {
            delivery_id,
            status: Status::Sent,
            error: None,
            count_attempt: true,
        } = change
        {
            if decode_member_id(*delivery_id).is_none() {
                bulk.push((i, *delivery_id));
            }
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
        .map(|r| r.int(0))
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
    Ok(bulk.into_iter().map(|(i, _)| i).collect())
}

/// An outbox attempt's outcome. Fenced: the WHERE re-checks `lease_until` on the locked,
/// latest version of the row, so an outcome whose lease was taken over changes nothing.
async fn apply_attempt(
    conn: &mut PgConnection,
    id: i64,
    lease_until: i64,
    outcome: &AttemptOutcome,
    now: i64,
) -> Result<bool, StoreError> {
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
    let q = q.bind(now).bind(id).bind(lease_until);
    let q = match outcome {
        AttemptOutcome::Sent { provider_id } => q.bind(provider_id),
        AttemptOutcome::Retry { at_ms, error } => q.bind(at_ms).bind(error),
        AttemptOutcome::Failed { error } => q.bind(error),
    };
    let moved = q.execute(&mut *conn).await?.rows_affected() > 0;
    // A retry keeps the status: "moved" means a status transition.
    Ok(moved && !matches!(outcome, AttemptOutcome::Retry { .. }))
}

/// Delete a message (in the caller's transaction): its row first (`FOR UPDATE`: writers
/// holding it `FOR KEY SHARE` finish first, and no delivery is added to it meanwhile),
/// then the inbox counters of its websocket receivers (lock order), then the cascade.
pub(super) async fn delete(conn: &mut PgConnection, id: &str) -> Result<bool, StoreError> {
    let Some(seq) = sqlx::query("SELECT seq FROM messages WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(false);
    };
    let seq = seq.int(0)?;
    sqlx::query(&super::inbox::lock_counts_sql("message_seq = $1"))
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query("DELETE FROM messages WHERE seq = $1")
        .bind(seq)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0)
}

/// Take up to `limit` undelivered messages of `receiver` (oldest first) and mark them
/// delivered: rows and audience members alike. The candidates' audiences are locked
/// first (the status writer's order), then the oldest undelivered rows (`FOR UPDATE`: a
/// concurrent collect's rows are waited for and then fail the re-check), and members are
/// re-checked under their audience's lock: two nodes collecting at once never return the
/// same delivery.
pub(super) async fn collect(
    conn: &mut PgConnection,
    cache: &MembersCache,
    receiver: &str,
    channel: &str,
    limit: u32,
    now: i64,
) -> Result<Vec<InboxItem>, StoreError> {
    let limit = limit as usize;
    let mut candidates = open_memberships(conn, cache, receiver, channel, 0).await?;
    candidates.truncate(limit);
    let seqs: Vec<i64> = candidates.iter().map(|m| m.seq).collect();
    let mut locked = audiences::lock(conn, cache, &seqs).await?;
    let rows: Vec<(i64, i64)> = sqlx::query(
        "SELECT message_seq, id FROM deliveries \
         WHERE receiver = $1 AND channel = $2 AND status < 2 AND next_attempt_at IS NULL \
         ORDER BY message_seq LIMIT $3 FOR UPDATE",
    )
    .bind(receiver)
    .bind(channel)
    .bind(limit as i64)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Ok((r.int(0)?, r.int(1)?)))
    .collect::<Result<_, StoreError>>()?;
    // (seq, delivery id, member index) of everything still undelivered, oldest first.
    let mut take: Vec<(i64, i64, Option<usize>)> =
        rows.into_iter().map(|(seq, id)| (seq, id, None)).collect();
    for m in &candidates {
        if let Some(a) = locked.get(&m.seq) {
            let now_state = a.st.member(m.index);
            if !now_state.spilled() && now_state.status().is_undelivered() {
                take.push((m.seq, member_delivery_id(m.seq, m.index), Some(m.index)));
            }
        }
    }
    take.sort_by_key(|(seq, _, _)| *seq);
    take.truncate(limit);
    let row_ids: Vec<i64> = take
        .iter()
        .filter(|(_, _, m)| m.is_none())
        .map(|(_, id, _)| *id)
        .collect();
    if !row_ids.is_empty() {
        sqlx::query(
            "UPDATE deliveries SET status = 2, updated_at = $1 WHERE id = ANY($2) AND status < 2",
        )
        .bind(now)
        .bind(&row_ids)
        .execute(&mut *conn)
        .await?;
    }
    for (seq, _, m) in &take {
        if let (Some(i), Some(a)) = (m, locked.get_mut(seq)) {
            a.apply(conn, *i, Status::Delivered, false, now).await?;
        }
    }
    audiences::write_back(conn, &mut locked, now).await?;
    let seqs: Vec<i64> = take.iter().map(|(seq, _, _)| *seq).collect();
    let heads = message_items(conn, &seqs).await?;
    Ok(take
        .into_iter()
        .filter_map(|(seq, id, _)| {
            heads.get(&seq).map(|h| InboxItem {
                status: Status::Delivered,
                delivery_id: id,
                ..h.clone()
            })
        })
        .collect())
}

/// `m.seq IN (…)` over a list bound as one array.
fn seq_in<'a>(qb: &mut QueryBuilder<'a, Postgres>, seqs: &[i64]) {
    qb.push("(SELECT unnest(")
        .push_bind(seqs.to_vec())
        .push("::int8[]))");
}

/// Message heads (inbox items without a delivery) by seq.
async fn message_items(
    conn: &mut PgConnection,
    seqs: &[i64],
) -> Result<HashMap<i64, InboxItem>, StoreError> {
    let mut out = HashMap::with_capacity(seqs.len());
    if seqs.is_empty() {
        return Ok(out);
    }
    for r in &sqlx::query(&format!(
        "SELECT {} FROM messages WHERE seq = ANY($1)",
        rows::MESSAGE_ITEM_COLUMNS
    ))
    .bind(seqs)
    .fetch_all(&mut *conn)
    .await?
    {
        let item = rows::message_item(r, Status::Pending, 0)?;
        out.insert(item.seq, item);
    }
    Ok(out)
}

/// Inbox items of memberships (those whose message still exists), in their order.
pub(super) async fn member_items(
    conn: &mut PgConnection,
    found: &[Membership],
) -> Result<Vec<InboxItem>, StoreError> {
    let seqs: Vec<i64> = found.iter().map(|m| m.seq).collect();
    let heads = message_items(conn, &seqs).await?;
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
    conn: &mut PgConnection,
    cache: &MembersCache,
    receiver: &str,
    channel: &str,
    after: i64,
) -> Result<Vec<Membership>, StoreError> {
    let seqs = audiences::open_seqs(conn, channel, after).await?;
    let mut found = audiences::memberships(conn, cache, receiver, &seqs).await?;
    found.retain(|m| m.state.status().is_undelivered());
    Ok(found)
}

/// Every audience entry of `receiver` (on `channel`, if given): the history index.
pub(super) async fn all_memberships(
    conn: &mut PgConnection,
    cache: &MembersCache,
    receiver: &str,
    channel: Option<&str>,
) -> Result<Vec<Membership>, StoreError> {
    let seqs = audiences::history_seqs(conn, receiver, channel).await?;
    audiences::memberships(conn, cache, receiver, &seqs).await
}

/// Add audience members to `msgs` (after their rows, up to `cap` deliveries each) and
/// their counts (always complete).
async fn add_members(
    conn: &mut PgConnection,
    cache: &MembersCache,
    msgs: &mut [Message],
    cap: usize,
) -> Result<(), StoreError> {
    let seqs: Vec<i64> = msgs.iter().map(|m| m.seq).collect();
    let rows_ = sqlx::query(
        "SELECT message_seq, channel, state, times FROM audiences WHERE message_seq = ANY($1)",
    )
    .bind(&seqs)
    .fetch_all(&mut *conn)
    .await?;
    if rows_.is_empty() {
        return Ok(());
    }
    let found: Vec<i64> = rows_.iter().map(|r| r.int(0)).collect::<Result<_, _>>()?;
    let lists = audiences::members(conn, cache, &found).await?;
    for r in &rows_ {
        let seq = r.int(0)?;
        let (Some(msg), Some(members)) = (msgs.iter_mut().find(|m| m.seq == seq), lists.get(&seq))
        else {
            continue; // deleted meanwhile
        };
        let st = AudienceState::from_blobs(r.blob(2)?, r.blob(3)?)?;
        audience::add_members(msg, &r.text(1)?, members, &st, cap);
    }
    Ok(())
}

impl PgStore {
    pub(super) async fn read_message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let Some(row) = sqlx::query(&format!(
            "SELECT {} FROM messages m WHERE m.id = $1",
            rows::HEAD_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        else {
            return Ok(None);
        };
        let mut msg = rows::message_head(&row)?;
        let ds = sqlx::query(&format!(
            "SELECT {} FROM deliveries WHERE message_seq = $1 ORDER BY id",
            rows::DELIVERY_COLUMNS
        ))
        .bind(msg.seq)
        .fetch_all(&mut *conn)
        .await?;
        for row in &ds {
            let d = rows::delivery(row)?;
            msg.delivery_counts[d.status.code() as usize] += 1;
            msg.deliveries.push(d);
        }
        add_members(
            &mut conn,
            &self.members,
            std::slice::from_mut(&mut msg),
            usize::MAX,
        )
        .await?;
        if msg.routing.is_some() {
            msg.routes = super::timers::routes(&mut conn, msg.seq).await?;
        }
        Ok(Some(msg))
    }

    /// The seqs of audiences where `f.receiver` is a member matching `f`'s channel and
    /// status (the compact half of a `?receiver=` filter).
    async fn member_seqs(
        &self,
        conn: &mut PgConnection,
        f: &MessageFilter,
    ) -> Result<Option<Vec<i64>>, StoreError> {
        let Some(receiver) = &f.receiver else {
            return Ok(None);
        };
        let found = all_memberships(conn, &self.members, receiver, f.channel.as_deref()).await?;
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
        let mut conn = self.pool.acquire().await?;
        let member_seqs = self.member_seqs(&mut conn, filter).await?;
        let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM messages m");
        rows::push_filter(&mut count, filter, member_seqs.as_deref(), seq_in);
        let total: i64 = count.build().fetch_one(&mut *conn).await?.try_get(0)?;

        let mut q =
            QueryBuilder::<Postgres>::new(format!("SELECT {} FROM messages m", rows::HEAD_COLUMNS));
        rows::push_filter(&mut q, filter, member_seqs.as_deref(), seq_in);
        q.push(" ORDER BY m.seq DESC LIMIT ")
            .push_bind(i64::from(page.size))
            .push(" OFFSET ")
            .push_bind(page.offset());
        let mut items = q
            .build()
            .fetch_all(&mut *conn)
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
             WHERE message_seq = ANY($1) GROUP BY message_seq, status",
        )
        .bind(&seqs)
        .fetch_all(&mut *conn)
        .await?;
        for row in &counts {
            if let Some(&i) = index.get(&row.int(0)?) {
                items[i].delivery_counts[Status::from_code(row.int(1)?).code() as usize] +=
                    row.int(2)?;
            }
        }
        let ds = sqlx::query(&format!(
            "SELECT {} FROM ( \
               SELECT *, row_number() OVER (PARTITION BY message_seq ORDER BY id) AS rn \
               FROM deliveries WHERE message_seq = ANY($1)) d \
             WHERE rn <= $2 ORDER BY message_seq, id",
            rows::DELIVERY_COLUMNS
        ))
        .bind(&seqs)
        .bind(per_message as i64)
        .fetch_all(&mut *conn)
        .await?;
        for row in &ds {
            if let Some(&i) = index.get(&row.int(1)?) {
                items[i].deliveries.push(rows::delivery(row)?);
            }
        }
        add_members(&mut conn, &self.members, &mut items, per_message).await?;
        Ok(Page { items, total })
    }

    pub(super) async fn read_undelivered(
        &self,
        receiver: &str,
        channel: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut items = sqlx::query(&format!(
            "SELECT {} FROM deliveries d JOIN messages m ON m.seq = d.message_seq \
             WHERE d.receiver = $1 AND d.channel = $2 AND d.status < 2 AND d.message_seq > $3 \
               AND d.next_attempt_at IS NULL \
             ORDER BY d.message_seq LIMIT $4",
            rows::INBOX_COLUMNS
        ))
        .bind(receiver)
        .bind(channel)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(rows::inbox_item)
        .collect::<Result<Vec<_>, _>>()?;
        let mut found =
            open_memberships(&mut conn, &self.members, receiver, channel, after_seq).await?;
        found.truncate(limit as usize);
        items.extend(member_items(&mut conn, &found).await?);
        items.sort_by_key(|i| i.seq);
        items.truncate(limit as usize);
        Ok(items)
    }

    pub(super) async fn read_count_undelivered(
        &self,
        receiver: &str,
        channel: &str,
    ) -> Result<(u64, i64), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query(
            "SELECT count(*), COALESCE(max(message_seq), 0) FROM deliveries \
             WHERE receiver = $1 AND channel = $2 AND status < 2 AND next_attempt_at IS NULL",
        )
        .bind(receiver)
        .bind(channel)
        .fetch_one(&mut *conn)
        .await?;
        let (mut n, mut max) = (row.int(0)?.max(0) as u64, row.int(1)?);
        for m in open_memberships(&mut conn, &self.members, receiver, channel, 0).await? {
            n += 1;
            max = max.max(m.seq);
        }
        Ok((n, max))
    }

    pub(super) async fn read_receivers_with_undelivered(
        &self,
        channel: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut out: Vec<String> = sqlx::query(
            "SELECT DISTINCT receiver FROM deliveries WHERE channel = $1 AND status < 2",
        )
        .bind(channel)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<_, _>>()?;
        let open = sqlx::query(
            "SELECT message_seq, state FROM audiences WHERE channel = $1 AND pending + sent > 0",
        )
        .bind(channel)
        .fetch_all(&mut *conn)
        .await?;
        let seqs: Vec<i64> = open.iter().map(|r| r.int(0)).collect::<Result<_, _>>()?;
        let lists = audiences::members(&mut conn, &self.members, &seqs).await?;
        for r in &open {
            if let Some(members) = lists.get(&r.int(0)?) {
                out.extend(audience::undelivered_members(members, &r.blob(1)?).map(String::from));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}
