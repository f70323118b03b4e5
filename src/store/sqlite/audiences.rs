//! Compact audiences on SQLite (the layout and rules are in `store/audience.rs`).
//!
//! Writer side: [`Hot`] keeps the state of the audiences being changed in memory, so a
//! batch of 4,000 acks for one broadcast is 4,000 byte updates and one `UPDATE` of its
//! row at the end of the transaction, not 4,000 row writes. The writer is the only one that
//! changes audiences, so its copy is the committed state — except after a rollback, which
//! clears it (reloaded on next use).
//!
//! Read side: the members of an audience never change, so the readers find a receiver's
//! index in the shared [`MembersCache`] and read only the state bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use rusqlite::{params, OptionalExtension};
use sqlx::{Row, SqlitePool};

use super::writer::Ctx;
use crate::model::{NewAudience, Status, Timer, TimerKind};
use crate::store::audience::{
    AudienceState, MemberState, Members, MembersCache, PRESENCE_SLACK_MS,
};
use crate::store::StoreError;

/// Audiences the writer keeps in memory between transactions.
const HOT_MAX: usize = 128;

pub(super) struct HotAudience {
    pub created_at: i64,
    pub channel: String,
    pub members: Arc<Members>,
    pub st: AudienceState,
    dirty: bool,
    /// Members whose status moved in this transaction, for webhook events at the flush.
    moves: Vec<(usize, Status)>,
}

pub(super) struct Hot {
    by_seq: HashMap<i64, HotAudience>,
    /// Message id → seq, for acks (which name messages by public id).
    by_id: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
    members: Option<Arc<MembersCache>>,
}

impl Hot {
    pub fn new() -> Hot {
        Hot {
            by_seq: HashMap::new(),
            by_id: HashMap::new(),
            order: VecDeque::new(),
            members: None,
        }
    }

    pub fn with_cache(mut self, cache: Arc<MembersCache>) -> Hot {
        self.members = Some(cache);
        self
    }

    /// Forget everything (after a rollback: the database is the truth again).
    pub fn clear(&mut self) {
        self.by_seq.clear();
        self.by_id.clear();
        self.order.clear();
    }

    pub fn forget(&mut self, seq: i64) {
        self.by_seq.remove(&seq);
        self.by_id.retain(|_, s| *s != seq);
        self.order.retain(|(s, _)| *s != seq);
    }

    fn remember(&mut self, seq: i64, id: String, a: HotAudience) {
        // Evict what no transaction is changing (flushed entries are clean).
        while self.by_seq.len() >= HOT_MAX {
            let Some((old, old_id)) = self.order.pop_front() else {
                break;
            };
            if self.by_seq.get(&old).is_some_and(|a| a.dirty) {
                self.order.push_back((old, old_id));
                break;
            }
            self.by_seq.remove(&old);
            self.by_id.remove(&old_id);
        }
        self.by_id.insert(id.clone(), seq);
        self.order.push_back((seq, id));
        self.by_seq.insert(seq, a);
    }

    /// The audience of message `seq`, loaded if needed; `None` when it has none.
    pub fn get(
        &mut self,
        conn: &rusqlite::Connection,
        seq: i64,
    ) -> Result<Option<&mut HotAudience>, StoreError> {
        if !self.by_seq.contains_key(&seq) {
            let row = conn
                .prepare_cached(
                    "SELECT a.channel, a.state, a.times, m.id, m.created_at FROM audiences a \
                     JOIN messages m ON m.seq = a.message_seq WHERE a.message_seq = ?",
                )?
                .query_row([seq], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .optional()?;
            let Some((channel, state, times, id, created_at)) = row else {
                return Ok(None);
            };
            let members = match self.members.as_ref().and_then(|c| c.get(seq)) {
                Some(m) => m,
                None => {
                    let blob: Vec<u8> = conn
                        .prepare_cached("SELECT members FROM audiences WHERE message_seq = ?")?
                        .query_row([seq], |r| r.get(0))?;
                    let m = Arc::new(Members::parse(&blob)?);
                    if let Some(c) = &self.members {
                        c.insert(seq, m.clone());
                    }
                    m
                }
            };
            let st = AudienceState::from_blobs(state, times)?;
            if st.len() != members.len() {
                return Err(StoreError::Corrupt(format!(
                    "audience {seq}: {} members, {} states",
                    members.len(),
                    st.len()
                )));
            }
            self.remember(
                seq,
                id,
                HotAudience {
                    created_at,
                    channel,
                    members,
                    st,
                    dirty: false,
                    moves: Vec::new(),
                },
            );
        }
        Ok(self.by_seq.get_mut(&seq))
    }

    /// Is message `id`'s audience in memory?
    pub fn knows(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// The seq of message `id` if it has an audience.
    pub fn seq_of(
        &mut self,
        conn: &rusqlite::Connection,
        id: &str,
    ) -> Result<Option<i64>, StoreError> {
        if let Some(seq) = self.by_id.get(id) {
            return Ok(Some(*seq));
        }
        let seq: Option<i64> = conn
            .prepare_cached(
                "SELECT a.message_seq FROM messages m JOIN audiences a ON a.message_seq = m.seq \
                 WHERE m.id = ?",
            )?
            .query_row([id], |r| r.get(0))
            .optional()?;
        if let Some(seq) = seq {
            self.get(conn, seq)?;
        }
        Ok(seq)
    }

    /// Write every audience changed in this transaction, and the webhook events of its
    /// members' moves (the rows' come from triggers).
    pub fn flush(&mut self, conn: &rusqlite::Connection, now: i64) -> Result<(), StoreError> {
        let mut gone = Vec::new();
        let mut wanted = None;
        for (seq, a) in self.by_seq.iter_mut().filter(|(_, a)| a.dirty) {
            if !a.moves.is_empty() {
                let want = match wanted {
                    Some(w) => w,
                    None => *wanted.insert(super::webhooks::want_delivery_events(conn)?),
                };
                let moves = std::mem::take(&mut a.moves);
                if want {
                    super::webhooks::member_events(conn, *seq, a, &moves, now)?;
                }
            }
            let c = a.st.counts;
            let n = conn
                .prepare_cached(
                    "UPDATE audiences SET state = ?1, times = ?2, pending = ?3, sent = ?4, \
                       delivered = ?5, read = ?6, failed = ?7, updated_at = ?8 \
                     WHERE message_seq = ?9",
                )?
                .execute(params![
                    a.st.state, a.st.times, c[0], c[1], c[2], c[3], c[4], now, seq
                ])?;
            a.dirty = false;
            if n == 0 {
                gone.push(*seq); // deleted meanwhile
            }
        }
        for seq in gone {
            self.forget(seq);
        }
        Ok(())
    }
}

impl HotAudience {
    /// Change member `i` (see [`AudienceState::apply`]); a spilled member's row is changed
    /// instead. `true` when its status moved.
    pub fn apply(
        &mut self,
        conn: &rusqlite::Connection,
        seq: i64,
        i: usize,
        status: Status,
        count_attempt: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        if self.st.member(i).spilled() {
            return super::messages::apply_to_row(
                conn,
                seq,
                self.members.get(i),
                &self.channel,
                status,
                count_attempt,
                now,
            );
        }
        let moved = self
            .st
            .apply(i, status, count_attempt, now - self.created_at);
        self.dirty = true;
        if moved {
            self.moves.push((i, status));
        }
        Ok(moved)
    }

    pub fn touch(&mut self) {
        self.dirty = true;
    }
}

/// Store a new audience (inside the message's insert).
pub(super) fn insert(
    cx: &mut Ctx<'_>,
    seq: i64,
    id: &str,
    created_at: i64,
    a: &NewAudience,
) -> Result<(), StoreError> {
    let blob = Members::encode(&a.members);
    let st = AudienceState::new(a.members.len());
    let c = st.counts;
    cx.conn
        .prepare_cached(
            "INSERT INTO audiences (message_seq, channel, taken_at, members, state, times, \
               pending, sent, delivered, read, failed, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            seq,
            a.channel,
            a.taken_at_ms,
            blob,
            st.state,
            st.times,
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            cx.now
        ])?;
    cx.conn
        .prepare_cached(
            "INSERT INTO schedule (message_seq, kind, receiver, due_at) VALUES (?, ?, '', ?)",
        )?
        .execute(params![seq, TimerKind::Spill as i64, a.spill_at_ms])?;
    let members = Arc::new(Members::parse(&blob)?);
    cx.publish.push((seq, members.clone()));
    cx.hot.remember(
        seq,
        id.to_owned(),
        HotAudience {
            created_at,
            channel: a.channel.clone(),
            members,
            st,
            dirty: false,
            moves: Vec::new(),
        },
    );
    Ok(())
}

/// An ack/read of message `id` by `receiver`: `None` when the message has no audience on
/// `channel` with that member (the delivery, if any, is a row).
pub(super) fn ack(
    cx: &mut Ctx<'_>,
    id: &str,
    receiver: &str,
    channel: &str,
    status: Status,
) -> Result<Option<bool>, StoreError> {
    let Some(seq) = cx.hot.seq_of(cx.conn, id)? else {
        return Ok(None);
    };
    let (conn, now) = (cx.conn, cx.now);
    let Some(a) = cx.hot.get(conn, seq)? else {
        return Ok(None);
    };
    if a.channel != channel {
        return Ok(None);
    }
    let Some(i) = a.members.find(receiver) else {
        return Ok(None);
    };
    if a.st.member(i).spilled() {
        return Ok(None); // its row answers
    }
    a.apply(conn, seq, i, status, false, now).map(Some)
}

/// A change by member delivery id.
pub(super) fn apply_member(
    cx: &mut Ctx<'_>,
    seq: i64,
    i: usize,
    status: Status,
    count_attempt: bool,
) -> Result<bool, StoreError> {
    let (conn, now) = (cx.conn, cx.now);
    match cx.hot.get(conn, seq)? {
        Some(a) if i < a.members.len() => a.apply(conn, seq, i, status, count_attempt, now),
        _ => Ok(false), // deleted, or no such member
    }
}

/// Members still undelivered get rows of their own; `None` when the lease was lost.
pub(super) fn spill(cx: &mut Ctx<'_>, timer: &Timer) -> Result<Option<u64>, StoreError> {
    if !super::timers::holds(cx.conn, timer.id, timer.lease_until_ms)? {
        return Ok(None);
    }
    let (conn, now) = (cx.conn, cx.now);
    let mut n = 0;
    if let Some(a) = cx.hot.get(conn, timer.message_seq)? {
        let todo: Vec<usize> = a.st.undelivered().collect();
        let mut insert = conn.prepare_cached(
            "INSERT INTO deliveries (message_seq, receiver, channel, status, attempts, \
               created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for i in todo {
            let m = a.st.member(i);
            insert.execute(params![
                timer.message_seq,
                a.members.get(i),
                a.channel,
                m.status().code(),
                m.attempts(),
                a.created_at,
                a.created_at + a.st.changed_after(i)
            ])?;
            a.st.spill(i, now - a.created_at);
            n += 1;
        }
        if n > 0 {
            a.touch();
        }
    }
    super::timers::delete(conn, timer.id)?;
    Ok(Some(n))
}

/// Give member `i` of message `seq` a delivery row of its own now (its inbox state is about
/// to change, and a member has no room for inbox flags): the row takes its status,
/// attempts and the flags its status implies. `false` when there is no such unspilled
/// member.
pub(super) fn spill_member(cx: &mut Ctx<'_>, seq: i64, i: usize) -> Result<bool, StoreError> {
    let (conn, now) = (cx.conn, cx.now);
    let Some(a) = cx.hot.get(conn, seq)? else {
        return Ok(false);
    };
    if i >= a.members.len() || a.st.member(i).spilled() {
        return Ok(false);
    }
    let m = a.st.member(i);
    conn.prepare_cached(
        "INSERT INTO deliveries (message_seq, receiver, channel, status, attempts, \
           created_at, updated_at, inbox) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        seq,
        a.members.get(i),
        a.channel,
        m.status().code(),
        m.attempts(),
        a.created_at,
        a.created_at + a.st.changed_after(i),
        crate::model::inbox::derived(m.status())
    ])?;
    a.st.spill(i, now - a.created_at);
    a.touch();
    Ok(true)
}

/// `receiver`'s unspilled entries in `channel` audiences with `seq <= before` (all when
/// `None`), writer side (mark-all): found through the presence history, as the readers do.
pub(super) fn history_members_in_writer(
    cx: &mut Ctx<'_>,
    receiver: &str,
    channel: &str,
    before: Option<i64>,
) -> Result<Vec<(i64, usize, MemberState)>, StoreError> {
    let seqs: Vec<i64> = cx
        .conn
        .prepare_cached(
            "SELECT DISTINCT a.message_seq FROM presence p JOIN audiences a \
               ON a.taken_at >= p.since - ?2 AND (p.until IS NULL OR a.taken_at <= p.until + ?2) \
             WHERE p.receiver = ?1 AND a.channel = ?3 AND a.message_seq <= ?4 \
             ORDER BY a.message_seq",
        )?
        .query_map(
            params![
                receiver,
                PRESENCE_SLACK_MS,
                channel,
                before.unwrap_or(i64::MAX)
            ],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for seq in seqs {
        let conn = cx.conn;
        if let Some(a) = cx.hot.get(conn, seq)? {
            if let Some(i) = a.members.find(receiver) {
                let m = a.st.member(i);
                if !m.spilled() {
                    out.push((seq, i, m));
                }
            }
        }
    }
    Ok(out)
}

/// The unspilled entry of `receiver` in message `seq`'s audience on `channel`, if any.
pub(super) fn member_in_writer(
    cx: &mut Ctx<'_>,
    seq: i64,
    receiver: &str,
    channel: &str,
) -> Result<Option<(usize, MemberState)>, StoreError> {
    let conn = cx.conn;
    let Some(a) = cx.hot.get(conn, seq)? else {
        return Ok(None);
    };
    if a.channel != channel {
        return Ok(None);
    }
    Ok(a.members.find(receiver).and_then(|i| {
        let m = a.st.member(i);
        (!m.spilled()).then_some((i, m))
    }))
}

/// Fail the undelivered members of message `seq` (`expiresAt`): how many.
pub(super) fn expire(cx: &mut Ctx<'_>, seq: i64, now: i64) -> Result<u64, StoreError> {
    let conn = cx.conn;
    let Some(a) = cx.hot.get(conn, seq)? else {
        return Ok(0);
    };
    let todo: Vec<usize> = a.st.undelivered().collect();
    for &i in &todo {
        a.st.apply(i, Status::Failed, false, now - a.created_at);
        a.moves.push((i, Status::Failed));
    }
    if !todo.is_empty() {
        a.touch();
    }
    Ok(todo.len() as u64)
}

/// Undelivered members of `receiver` in open audiences of `channel` with `seq > after`
/// (writer side: collect). Oldest first, at most `limit`.
pub(super) fn undelivered_in_writer(
    cx: &mut Ctx<'_>,
    receiver: &str,
    channel: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<(i64, usize)>, StoreError> {
    let seqs: Vec<i64> = cx
        .conn
        .prepare_cached(
            "SELECT message_seq FROM audiences WHERE channel = ? AND pending + sent > 0 \
               AND message_seq > ? ORDER BY message_seq",
        )?
        .query_map(params![channel, after], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for seq in seqs {
        if out.len() >= limit {
            break;
        }
        let conn = cx.conn;
        if let Some(a) = cx.hot.get(conn, seq)? {
            if let Some(i) = a.members.find(receiver) {
                let m = a.st.member(i);
                if !m.spilled() && m.status().is_undelivered() {
                    out.push((seq, i));
                }
            }
        }
    }
    Ok(out)
}

/// A receiver's member entry in one audience, as the readers see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Membership {
    pub seq: i64,
    pub index: usize,
    pub state: MemberState,
}

/// Read side: `receiver`'s entries in the audiences of `channel` among `seqs` (not spilled
/// ones: their rows answer). Members come from the cache, states from the database.
pub(super) async fn memberships(
    readers: &SqlitePool,
    cache: &MembersCache,
    receiver: &str,
    seqs: &[i64],
) -> Result<Vec<Membership>, StoreError> {
    let mut found: Vec<(i64, usize)> = Vec::new();
    let missing: Vec<i64> = seqs
        .iter()
        .copied()
        .filter(|s| cache.get(*s).is_none())
        .collect();
    for chunk in missing.chunks(64) {
        let rows = sqlx::query(
            "SELECT message_seq, members FROM audiences \
             WHERE message_seq IN (SELECT value FROM json_each(?))",
        )
        .bind(json_list(chunk))
        .fetch_all(readers)
        .await?;
        for r in &rows {
            let blob: Vec<u8> = r.try_get(1)?;
            cache.insert(r.try_get(0)?, Arc::new(Members::parse(&blob)?));
        }
    }
    for &seq in seqs {
        if let Some(m) = cache.get(seq) {
            if let Some(i) = m.find(receiver) {
                found.push((seq, i));
            }
        }
    }
    let mut out = Vec::with_capacity(found.len());
    for chunk in found.chunks(64) {
        let seqs: Vec<i64> = chunk.iter().map(|(s, _)| *s).collect();
        let rows = sqlx::query(
            "SELECT message_seq, state FROM audiences \
             WHERE message_seq IN (SELECT value FROM json_each(?))",
        )
        .bind(json_list(&seqs))
        .fetch_all(readers)
        .await?;
        let states: HashMap<i64, Vec<u8>> = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        for &(seq, i) in chunk {
            let Some(st) = states.get(&seq) else { continue }; // deleted meanwhile
            let Some(&b) = st.get(i) else {
                return Err(StoreError::Corrupt(format!(
                    "audience {seq}: state too short"
                )));
            };
            let state = MemberState(b);
            if !state.spilled() {
                out.push(Membership {
                    seq,
                    index: i,
                    state,
                });
            }
        }
    }
    Ok(out)
}

/// Open audiences of `channel` (some member undelivered) with `seq > after`.
pub(super) async fn open_seqs(
    readers: &SqlitePool,
    channel: &str,
    after: i64,
) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query(
        "SELECT message_seq FROM audiences WHERE channel = ? AND pending + sent > 0 \
           AND message_seq > ? ORDER BY message_seq",
    )
    .bind(channel)
    .bind(after)
    .fetch_all(readers)
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<Result<_, _>>()?)
}

/// Audiences of `channel` taken while one of `receiver`'s sessions was open (the history
/// index; a superset, checked by [`memberships`]).
pub(super) async fn history_seqs(
    readers: &SqlitePool,
    receiver: &str,
    channel: Option<&str>,
) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query(
        "SELECT DISTINCT a.message_seq FROM presence p JOIN audiences a \
           ON a.taken_at >= p.since - ?2 AND (p.until IS NULL OR a.taken_at <= p.until + ?2) \
         WHERE p.receiver = ?1 AND (?3 IS NULL OR a.channel = ?3) ORDER BY a.message_seq",
    )
    .bind(receiver)
    .bind(PRESENCE_SLACK_MS)
    .bind(channel)
    .fetch_all(readers)
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<Result<_, _>>()?)
}

/// `[1,2,3]`: a list bound as one parameter (`IN (SELECT value FROM json_each(?))`).
pub(super) fn json_list(seqs: &[i64]) -> String {
    let mut s = String::with_capacity(seqs.len() * 8 + 2);
    s.push('[');
    for (i, v) in seqs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&v.to_string());
    }
    s.push(']');
    s
}
