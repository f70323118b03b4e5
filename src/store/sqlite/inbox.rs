//! The notification center on SQLite (docs/api.md §6): inbox listings, counts, state
//! changes and retention.
//!
//! An entry's flags live in `deliveries.inbox`; `inbox_counts` holds each receiver's
//! counters, kept by triggers (migration `0007_inbox.sql`) on every path that changes a
//! websocket row, so counting is one lookup. A broadcast member without a row of its own has
//! no flags stored: it is unseen and unread unless its status is `read`
//! ([`inbox::derived`]), is counted from the presence history on read, and gets a row
//! ([`audiences::spill_member`]) the first time its inbox state changes.

use std::collections::{HashMap, HashSet};

use rusqlite::params;

use super::audiences::{self, json_list};
use super::writer::Ctx;
use super::SqliteStore;
use crate::model::inbox::{self, Counts, Marked, Op, Query, Target};
use crate::model::{InboxItem, Page, Status, WEBSOCKET};
use crate::store::rows::{self, Cols};
use crate::store::StoreError;

/// Change the inbox state of `receiver`'s entries (writer side): one `UPDATE` for the rows,
/// whatever their number; broadcast members get rows first.
pub(super) fn mark(
    cx: &mut Ctx<'_>,
    receiver: &str,
    op: Op,
    target: &Target,
) -> Result<Marked, StoreError> {
    let (mut changed, mut moved) = (0u64, 0u64);
    // Entries to update by seq (`None`: every entry up to `before`).
    let seqs: Option<Vec<i64>> = match target {
        Target::Ids(ids) => {
            let by_id: HashMap<String, i64> = cx
                .conn
                .prepare_cached(
                    "SELECT id, seq FROM messages WHERE id IN (SELECT value FROM json_each(?))",
                )?
                .query_map([serde_json::to_string(ids).unwrap_or_default()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            let known: Vec<i64> = by_id.values().copied().collect();
            let with_rows: HashSet<i64> = cx
                .conn
                .prepare_cached(
                    "SELECT message_seq FROM deliveries WHERE receiver = ?1 AND channel = ?2 \
                       AND message_seq IN (SELECT value FROM json_each(?3)) \
                       AND next_attempt_at IS NULL AND status <> 4 AND (inbox & 8) = 0",
                )?
                .query_map(params![receiver, WEBSOCKET, json_list(&known)], |r| {
                    r.get(0)
                })?
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
                match audiences::member_in_writer(cx, seq, receiver, WEBSOCKET)? {
                    Some((i, m)) if m.status() != Status::Failed => members.push((seq, i, m)),
                    _ => unknown.push(id.clone()),
                }
            }
            if !unknown.is_empty() {
                return Ok(Marked::Unknown(unknown));
            }
            let acked = members_first(cx, op, &members, &mut seqs)?;
            changed += acked;
            moved += acked;
            Some(seqs)
        }
        Target::All { before } => {
            let members = audiences::history_members_in_writer(cx, receiver, WEBSOCKET, *before)?;
            let members: Vec<_> = members
                .into_iter()
                .filter(|(_, _, m)| m.status() != Status::Failed)
                .collect();
            let acked = members_first(cx, op, &members, &mut Vec::new())?;
            changed += acked;
            moved += acked;
            None
        }
    };
    let (set, clear) = op.bits();
    let min = op.status().map_or(-1, Status::code);
    let new_flags = "((inbox | ?1) & ~?2)";
    let which = "receiver = ?5 AND channel = ?6 \
           AND next_attempt_at IS NULL AND status <> 4 AND (inbox & 8) = 0";
    let (target_cond, bound) = match (seqs, target) {
        (Some(seqs), _) if seqs.is_empty() => return Ok(Marked::Done { changed, moved }),
        (Some(seqs), _) => (
            "message_seq IN (SELECT value FROM json_each(?7))",
            rusqlite::types::Value::Text(json_list(&seqs)),
        ),
        (None, Target::All { before }) => (
            "message_seq <= ?7",
            rusqlite::types::Value::Integer(before.unwrap_or(i64::MAX)),
        ),
        (None, Target::Ids(_)) => return Ok(Marked::Done { changed, moved }),
    };
    let args = params![set, clear, min, cx.now, receiver, WEBSOCKET, bound];
    // The status moves first counted (the metrics count transitions), then one `UPDATE`.
    if min >= 0 {
        let n: i64 = cx
            .conn
            .prepare_cached(&format!(
                "SELECT count(*) FROM deliveries WHERE {which} AND {target_cond} \
                   AND status < ?3"
            ))?
            .query_row(args, |r| r.get(0))?;
        moved += n as u64;
    }
    let n = cx
        .conn
        .prepare_cached(&format!(
            "UPDATE deliveries SET inbox = {new_flags}, \
               status = CASE WHEN status < ?3 THEN ?3 ELSE status END, updated_at = ?4 \
             WHERE {which} AND {target_cond} AND (inbox <> {new_flags} OR status < ?3)"
        ))?
        .execute(args)?;
    Ok(Marked::Done {
        changed: changed + n as u64,
        moved,
    })
}

/// Broadcast members an op changes: an ack moves the member's status in place; any other
/// op that changes something gives the member a row, whose seq joins `seqs` (the `UPDATE`
/// then changes it, counted there). Returns the changes made here.
fn members_first(
    cx: &mut Ctx<'_>,
    op: Op,
    members: &[(i64, usize, crate::store::audience::MemberState)],
    seqs: &mut Vec<i64>,
) -> Result<u64, StoreError> {
    let mut changed = 0;
    for &(seq, i, m) in members {
        let status = m.status();
        if op == Op::Ack {
            if audiences::apply_member(cx, seq, i, Status::Delivered, false)? {
                changed += 1;
            }
            continue;
        }
        let flags = inbox::derived(status);
        let moves = op.status().is_some_and(|s| status < s);
        if op.apply(flags) != flags || moves {
            audiences::spill_member(cx, seq, i)?;
            seqs.push(seq);
        } else {
            // Nothing would change; a row is not needed.
        }
    }
    Ok(changed)
}

/// Retention (writer side): delete up to `limit` websocket rows of messages created before
/// `cutoff_ms` that are read, archived or deleted (any, with `include_unread`), and with
/// `include_unread` whole broadcast audiences that old. How many went.
pub(super) fn prune(
    cx: &mut Ctx<'_>,
    cutoff_ms: i64,
    include_unread: bool,
    limit: u32,
) -> Result<u64, StoreError> {
    let last: Option<i64> = cx
        .conn
        .prepare_cached("SELECT max(seq) FROM messages WHERE created_at < ?")?
        .query_row([cutoff_ms], |r| r.get(0))?;
    let Some(last) = last else { return Ok(0) };
    let mask = if include_unread { -1 } else { 2 | 4 | 8 };
    let mut n = cx
        .conn
        .prepare_cached(
            "DELETE FROM deliveries WHERE id IN (SELECT d.id FROM deliveries d \
               JOIN messages m ON m.seq = d.message_seq \
               WHERE d.message_seq <= ?1 AND m.created_at < ?5 AND d.channel = ?2 \
                 AND (?3 = -1 OR (d.inbox & ?3) <> 0) \
               LIMIT ?4)",
        )?
        .execute(params![last, WEBSOCKET, mask, limit, cutoff_ms])? as u64;
    if include_unread && n < u64::from(limit) {
        let old: Vec<i64> = cx
            .conn
            .prepare_cached(
                "SELECT a.message_seq FROM audiences a JOIN messages m ON m.seq = a.message_seq \
                 WHERE a.message_seq <= ?1 AND m.created_at < ?4 AND a.channel = ?2 \
                 ORDER BY a.message_seq LIMIT ?3",
            )?
            .query_map(
                params![last, WEBSOCKET, u64::from(limit) - n, cutoff_ms],
                |r| r.get(0),
            )?
            .collect::<Result<_, _>>()?;
        for seq in old {
            cx.conn
                .prepare_cached("DELETE FROM audiences WHERE message_seq = ?")?
                .execute([seq])?;
            cx.hot.forget(seq);
            n += 1;
        }
    }
    Ok(n)
}

impl SqliteStore {
    /// The counters, plus the receiver's broadcast entries without rows.
    pub(super) async fn read_inbox_counts(&self, receiver: &str) -> Result<Counts, StoreError> {
        let mut counts = Counts::default();
        if let Some(r) =
            sqlx::query("SELECT total, unseen, unread FROM inbox_counts WHERE receiver = ?")
                .bind(receiver)
                .fetch_optional(&self.readers)
                .await?
        {
            counts = Counts {
                total: r.int(0)?.max(0) as u64,
                unseen: r.int(1)?.max(0) as u64,
                unread: r.int(2)?.max(0) as u64,
            };
        }
        for m in self.all_memberships(receiver, Some(WEBSOCKET)).await? {
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
        let cond = q.sql(&mut || "?".to_owned());
        let params = q.sql_params();
        let from = "FROM deliveries d JOIN messages m ON m.seq = d.message_seq \
                    WHERE d.receiver = ? AND d.channel = ?";
        let count_sql = format!("SELECT count(*) {from}{cond}");
        let mut count = sqlx::query(&count_sql).bind(receiver).bind(WEBSOCKET);
        for p in &params {
            count = count.bind(*p);
        }
        let row_total = count.fetch_one(&self.readers).await?.int(0)?;
        let want = q.offset.max(0) + i64::from(q.limit);
        // After a cursor: the entries right after it (oldest first), shown newest first.
        let order = if q.after.is_some() { "ASC" } else { "DESC" };
        let list_sql = format!(
            "SELECT {} {from}{cond} ORDER BY d.message_seq {order} LIMIT ?",
            rows::INBOX_COLUMNS
        );
        let mut list = sqlx::query(&list_sql).bind(receiver).bind(WEBSOCKET);
        for p in &params {
            list = list.bind(*p);
        }
        let mut items = list
            .bind(want)
            .fetch_all(&self.readers)
            .await?
            .iter()
            .map(rows::inbox_item)
            .collect::<Result<Vec<_>, _>>()?;
        let found = self.all_memberships(receiver, Some(WEBSOCKET)).await?;
        let members: Vec<InboxItem> = self
            .member_items(&found)
            .await?
            .into_iter()
            .filter(|i| q.matches(i.seq, i.status, i.flags, i.msg_type))
            .collect();
        let total = row_total + members.len() as i64;
        items.extend(members);
        Ok(Page {
            items: crate::store::rows::inbox_page(items, q),
            total,
        })
    }
}
