//! The notification center on PostgreSQL (docs/api.md §6): inbox listings, counts, state
//! changes and retention, as on SQLite (`store/sqlite/inbox.rs`).
//!
//! An entry's flags live in `deliveries.inbox`; `inbox_counts` holds each receiver's
//! counters, kept by triggers (migration `0003_inbox.sql`) on every path that changes a
//! websocket row, so counting is one lookup. A broadcast member without a row of its own has
//! no flags stored: it is unseen and unread unless its status is `read`
//! ([`inbox::derived`]), is counted from the presence history on read, and gets a row
//! ([`audiences::spill_member`]) the first time its inbox state changes.
//!
//! **Locking.** A counter row stays locked by the transaction that changed it until it
//! commits, so it is a lock in the store's order (`mod.rs`, "Lock order"): after messages,
//! timers and audiences, before delivery rows. Writers that change the counted state of
//! existing rows take their receivers' counters first, in receiver order
//! ([`lock_counts`], [`lock_counts_sql`]); the triggers then re-take locks already held.

use std::collections::{HashMap, HashSet};

use sqlx::{PgConnection, Row};

use super::audiences::{self, Locked};
use super::messages::{all_memberships, member_items};
use super::PgStore;
use crate::model::inbox::{self, Counts, Marked, Op, Query, Target};
use crate::model::{InboxItem, Page, Status, WEBSOCKET};
use crate::store::audience::MembersCache;
use crate::store::rows::{self, Cols};
use crate::store::StoreError;

/// Lock the inbox counters of `receivers` (created when missing), in receiver order (byte
/// order, `COLLATE "C"`, the order of the triggers), for the rest of the transaction.
/// `ON CONFLICT DO UPDATE … WHERE false` locks an existing row without writing it.
pub(super) async fn lock_counts(
    conn: &mut PgConnection,
    mut receivers: Vec<String>,
) -> Result<(), StoreError> {
    if receivers.is_empty() {
        return Ok(());
    }
    receivers.sort_unstable();
    receivers.dedup();
    sqlx::query(
        "INSERT INTO inbox_counts AS c (receiver) \
         SELECT r FROM UNNEST($1::text[]) AS r ORDER BY r COLLATE \"C\" \
         ON CONFLICT (receiver) DO UPDATE SET total = c.total WHERE false",
    )
    .bind(&receivers)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// [`lock_counts`] for the receivers of the websocket rows matching `cond` (a condition
/// over `deliveries`, its parameters bound by the caller), in one statement.
pub(super) fn lock_counts_sql(cond: &str) -> String {
    format!(
        "INSERT INTO inbox_counts AS c (receiver) \
         SELECT receiver FROM deliveries WHERE channel = 'websocket' AND ({cond}) \
         GROUP BY receiver ORDER BY receiver COLLATE \"C\" \
         ON CONFLICT (receiver) DO UPDATE SET total = c.total WHERE false"
    )
}

/// Would `op` change a broadcast member with this status (an ack: move it to
/// `delivered`; any other op: change its flags or move its status)?
fn member_changes(op: Op, status: Status) -> bool {
    if status == Status::Failed {
        return false;
    }
    if op == Op::Ack {
        return status < Status::Delivered;
    }
    let flags = inbox::derived(status);
    op.apply(flags) != flags || op.status().is_some_and(|s| status < s)
}

/// Change the inbox state of `receiver`'s entries (in the caller's transaction): one
/// `UPDATE` for the rows, whatever their number; broadcast members get rows first. Locks:
/// the audiences of the members it may change (messages first), then the receiver's
/// counter, then its rows in id order.
pub(super) async fn mark(
    conn: &mut PgConnection,
    cache: &MembersCache,
    receiver: &str,
    op: Op,
    target: &Target,
    now: i64,
) -> Result<Marked, StoreError> {
    let (mut changed, mut moved) = (0u64, 0u64);
    // Entries to update by seq (`None`: every entry up to `before`).
    let seqs: Option<Vec<i64>> = match target {
        Target::Ids(ids) => {
            let by_id: HashMap<String, i64> =
                sqlx::query("SELECT id, seq FROM messages WHERE id = ANY($1)")
                    .bind(ids)
                    .fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(|r| Ok((r.text(0)?, r.int(1)?)))
                    .collect::<Result<_, StoreError>>()?;
            let known: Vec<i64> = by_id.values().copied().collect();
            // Under the audience locks no member is spilled meanwhile, and under the
            // counter's lock no row of the receiver enters or leaves the inbox.
            let mut locked = audiences::lock(conn, cache, &known).await?;
            lock_counts(conn, vec![receiver.to_owned()]).await?;
            let with_rows: HashSet<i64> = sqlx::query(
                "SELECT message_seq FROM deliveries WHERE receiver = $1 AND channel = $2 \
                   AND message_seq = ANY($3) \
                   AND next_attempt_at IS NULL AND status <> 4 AND (inbox & 8) = 0",
            )
            .bind(receiver)
            .bind(WEBSOCKET)
            .bind(&known)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.int(0))
            .collect::<Result<_, _>>()?;
            let mut unknown = Vec::new();
            let mut members = Vec::new();
            let mut seqs = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(&seq) = by_id.get(id) else {
                    unknown.push(id.clone());
                    continue;
                };
                if with_rows.contains(&seq) {
                    seqs.push(seq);
                    continue;
                }
                match locked
                    .get(&seq)
                    .and_then(|a| a.member_of(receiver, WEBSOCKET))
                {
                    Some((i, m)) if m.status() != Status::Failed => members.push((seq, i)),
                    _ => unknown.push(id.clone()),
                }
            }
            if !unknown.is_empty() {
                return Ok(Marked::Unknown(unknown));
            }
            let acked = members_first(conn, &mut locked, op, &members, &mut seqs, now).await?;
            changed += acked;
            moved += acked;
            audiences::write_back(conn, &mut locked, now).await?;
            Some(seqs)
        }
        Target::All { before } => {
            // Candidates read without locks, checked again under their audience's lock.
            let found =
                audiences::history_members(conn, cache, receiver, WEBSOCKET, *before).await?;
            let candidates: Vec<i64> = found
                .iter()
                .filter(|m| member_changes(op, m.state.status()))
                .map(|m| m.seq)
                .collect();
            let mut locked = audiences::lock(conn, cache, &candidates).await?;
            lock_counts(conn, vec![receiver.to_owned()]).await?;
            let members: Vec<(i64, usize)> = candidates
                .iter()
                .filter_map(|seq| {
                    let (i, m) = locked.get(seq)?.member_of(receiver, WEBSOCKET)?;
                    (m.status() != Status::Failed).then_some((*seq, i))
                })
                .collect();
            // The rows they get are within `before`: the `UPDATE` below changes them.
            let acked =
                members_first(conn, &mut locked, op, &members, &mut Vec::new(), now).await?;
            changed += acked;
            moved += acked;
            audiences::write_back(conn, &mut locked, now).await?;
            None
        }
    };
    let (set, clear) = op.bits();
    let min = op.status().map_or(-1, Status::code);
    let (target_cond, bound) = match (seqs, target) {
        (Some(seqs), _) if seqs.is_empty() => {
            return Ok(Marked::Done { changed, moved });
        }
        (Some(seqs), _) => ("message_seq = ANY($7)", TargetBind::Seqs(seqs)),
        (None, Target::All { before }) => (
            "message_seq <= $7",
            TargetBind::Upto(before.unwrap_or(i64::MAX)),
        ),
        (None, Target::Ids(_)) => return Ok(Marked::Done { changed, moved }),
    };
    // 1. Lock the rows in id order and read them as they are (the lock order; and what the
    //    metrics and the counters need: each row's status and flags before the change).
    let cond = format!(
        "receiver = $3 AND channel = $4 \
           AND next_attempt_at IS NULL AND status <> 4 AND (inbox & 8) = 0 \
           AND (inbox <> ((inbox | $1) & ~$2) OR status < $5) AND {target_cond}"
    )
    .replace("$7", "$6");
    let select =
        format!("SELECT id, status, inbox FROM deliveries WHERE {cond} ORDER BY id FOR UPDATE");
    let q = sqlx::query(&select)
        .bind(set)
        .bind(clear)
        .bind(receiver)
        .bind(WEBSOCKET)
        .bind(min);
    let q = match &bound {
        TargetBind::Seqs(seqs) => q.bind(seqs),
        TargetBind::Upto(before) => q.bind(*before),
    };
    let rows = q.fetch_all(&mut *conn).await?;
    let mut ids = Vec::with_capacity(rows.len());
    let (mut total, mut unseen, mut unread) = (0i64, 0i64, 0i64);
    for r in &rows {
        let (status, before) = (r.int(1)?, r.int(2)?);
        let after = op.apply(before);
        ids.push(r.int(0)?);
        if status < min {
            moved += 1;
        }
        // Visible, not failed before and after (the condition): only the flags count.
        let mut was = inbox::Counts::default();
        was.add(before);
        let mut now = inbox::Counts::default();
        now.add(after);
        total += now.total as i64 - was.total as i64;
        unseen += now.unseen as i64 - was.unseen as i64;
        unread += now.unread as i64 - was.unread as i64;
    }
    // 2. Change exactly those rows, by primary key: no plan depends on the table's
    //    statistics (a join with the locked set was planned as a nested loop over a
    //    freshly filled table: 10,000 rows took 17–33 s). The per-row counter trigger
    //    stands aside (`herald.inbox_bulk`, migration 0003): one counter row updated
    //    10,000 times in one transaction is quadratic on PostgreSQL; the delta is applied
    //    once below.
    sqlx::query("SELECT set_config('herald.inbox_bulk', 'on', true)")
        .execute(&mut *conn)
        .await?;
    let n = sqlx::query(
        "UPDATE deliveries SET inbox = (inbox | $1) & ~$2, \
           status = CASE WHEN status < $3 THEN $3 ELSE status END, updated_at = $4 \
         WHERE id = ANY($5)",
    )
    .bind(set)
    .bind(clear)
    .bind(min)
    .bind(now)
    .bind(&ids)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query("SELECT set_config('herald.inbox_bulk', 'off', true)")
        .execute(&mut *conn)
        .await?;
    // The rows changed are visible, not failed entries before and after (the `UPDATE`'s
    // condition), so each one's contribution depends on its flags only. The receiver's
    // counter row is locked already (`lock_counts`).
    if (total, unseen, unread) != (0, 0, 0) {
        sqlx::query(
            "INSERT INTO inbox_counts AS c (receiver, total, unseen, unread) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (receiver) DO UPDATE SET \
               total = c.total + EXCLUDED.total, unseen = c.unseen + EXCLUDED.unseen, \
               unread = c.unread + EXCLUDED.unread",
        )
        .bind(receiver)
        .bind(total)
        .bind(unseen)
        .bind(unread)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Marked::Done {
        changed: changed + n,
        moved,
    })
}

enum TargetBind {
    Seqs(Vec<i64>),
    Upto(i64),
}

/// Broadcast members an op changes: an ack moves the member's status in place; any other
/// op that changes something gives the member a row, whose seq joins `seqs` (the `UPDATE`
/// then changes it, counted there). Returns the changes made here.
async fn members_first(
    conn: &mut PgConnection,
    locked: &mut HashMap<i64, Locked>,
    op: Op,
    members: &[(i64, usize)],
    seqs: &mut Vec<i64>,
    now: i64,
) -> Result<u64, StoreError> {
    let mut changed = 0;
    for &(seq, i) in members {
        let Some(a) = locked.get_mut(&seq) else {
            continue;
        };
        if op == Op::Ack {
            if a.apply(conn, i, Status::Delivered, false, now).await? {
                changed += 1;
            }
            continue;
        }
        if member_changes(op, a.st.member(i).status()) {
            audiences::spill_member(conn, a, i, now).await?;
            seqs.push(seq);
        } else {
            // Nothing would change; a row is not needed.
        }
    }
    Ok(changed)
}

/// Retention, rows: delete up to `limit` websocket rows of messages created before
/// `cutoff_ms` that are read, archived or deleted (any, with `include_unread`). How many
/// went. Their receivers' counters are locked before the rows (the delete's trigger takes
/// them from every receiver at once).
pub(super) async fn prune_rows(
    conn: &mut PgConnection,
    last: i64,
    cutoff_ms: i64,
    include_unread: bool,
    limit: u32,
) -> Result<u64, StoreError> {
    let mask: i64 = if include_unread { -1 } else { 2 | 4 | 8 };
    let found = sqlx::query(
        "SELECT d.id, d.receiver FROM deliveries d JOIN messages m ON m.seq = d.message_seq \
         WHERE d.message_seq <= $1 AND m.created_at < $2 AND d.channel = $3 \
           AND ($4 = -1 OR (d.inbox & $4) <> 0) \
         LIMIT $5",
    )
    .bind(last)
    .bind(cutoff_ms)
    .bind(WEBSOCKET)
    .bind(mask)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    if found.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(found.len());
    let mut receivers = Vec::with_capacity(found.len());
    for r in &found {
        ids.push(r.int(0)?);
        receivers.push(r.text(1)?);
    }
    lock_counts(conn, receivers).await?;
    Ok(sqlx::query(
        "WITH s AS MATERIALIZED ( \
           SELECT id FROM deliveries WHERE id = ANY($1) AND ($2 = -1 OR (inbox & $2) <> 0) \
           ORDER BY id FOR UPDATE) \
         DELETE FROM deliveries WHERE id IN (SELECT id FROM s)",
    )
    .bind(&ids)
    .bind(mask)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Retention, broadcasts: delete up to `limit` whole `websocket` audiences of messages
/// created before `cutoff_ms` (messages, then audiences, in seq order). Their seqs.
pub(super) async fn prune_audiences(
    conn: &mut PgConnection,
    last: i64,
    cutoff_ms: i64,
    limit: u64,
) -> Result<Vec<i64>, StoreError> {
    let old: Vec<i64> = sqlx::query(
        "SELECT a.message_seq FROM audiences a JOIN messages m ON m.seq = a.message_seq \
         WHERE a.message_seq <= $1 AND m.created_at < $2 AND a.channel = $3 \
         ORDER BY a.message_seq LIMIT $4",
    )
    .bind(last)
    .bind(cutoff_ms)
    .bind(WEBSOCKET)
    .bind(limit as i64)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.int(0))
    .collect::<Result<_, _>>()?;
    if old.is_empty() {
        return Ok(old);
    }
    audiences::lock_messages(conn, &old).await?;
    sqlx::query(
        "WITH s AS MATERIALIZED ( \
           SELECT message_seq FROM audiences WHERE message_seq = ANY($1) \
           ORDER BY message_seq FOR UPDATE) \
         DELETE FROM audiences WHERE message_seq IN (SELECT message_seq FROM s) \
         RETURNING message_seq",
    )
    .bind(&old)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.int(0))
    .collect()
}

/// The newest message created before `cutoff_ms` (retention works up to it).
pub(super) async fn last_before(
    conn: &mut PgConnection,
    cutoff_ms: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query("SELECT max(seq) FROM messages WHERE created_at < $1")
            .bind(cutoff_ms)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?,
    )
}

impl PgStore {
    /// The counters, plus the receiver's broadcast entries without rows.
    pub(super) async fn read_inbox_counts(&self, receiver: &str) -> Result<Counts, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut counts = Counts::default();
        if let Some(r) =
            sqlx::query("SELECT total, unseen, unread FROM inbox_counts WHERE receiver = $1")
                .bind(receiver)
                .fetch_optional(&mut *conn)
                .await?
        {
            counts = Counts {
                total: r.int(0)?.max(0) as u64,
                unseen: r.int(1)?.max(0) as u64,
                unread: r.int(2)?.max(0) as u64,
            };
        }
        for m in all_memberships(&mut conn, &self.members, receiver, Some(WEBSOCKET)).await? {
            counts.add_member(m.state.status());
        }
        Ok(counts)
    }

    /// A page of the receiver's inbox, newest first.
    pub(super) async fn read_inbox_entries(
        &self,
        receiver: &str,
        q: &Query,
    ) -> Result<Page<InboxItem>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut n = 2;
        let cond = q.sql(&mut || {
            n += 1;
            format!("${n}")
        });
        let params = q.sql_params();
        let from = "FROM deliveries d JOIN messages m ON m.seq = d.message_seq \
                    WHERE d.receiver = $1 AND d.channel = $2";
        let count_sql = format!("SELECT count(*) {from}{cond}");
        let mut count = sqlx::query(&count_sql).bind(receiver).bind(WEBSOCKET);
        for p in &params {
            count = count.bind(*p);
        }
        let row_total = count.fetch_one(&mut *conn).await?.int(0)?;
        let want = q.offset.max(0) + i64::from(q.limit);
        // After a cursor: the entries right after it (oldest first), shown newest first.
        let order = if q.after.is_some() { "ASC" } else { "DESC" };
        let list_sql = format!(
            "SELECT {} {from}{cond} ORDER BY d.message_seq {order} LIMIT ${}",
            rows::INBOX_COLUMNS,
            n + 1
        );
        let mut list = sqlx::query(&list_sql).bind(receiver).bind(WEBSOCKET);
        for p in &params {
            list = list.bind(*p);
        }
        let mut items = list
            .bind(want)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(rows::inbox_item)
            .collect::<Result<Vec<_>, _>>()?;
        let found = all_memberships(&mut conn, &self.members, receiver, Some(WEBSOCKET)).await?;
        let members: Vec<InboxItem> = member_items(&mut conn, &found)
            .await?
            .into_iter()
            .filter(|i| q.matches(i.seq, i.status, i.flags, i.msg_type))
            .collect();
        let total = row_total + members.len() as i64;
        items.extend(members);
        Ok(Page {
            items: rows::inbox_page(items, q),
            total,
        })
    }
}
