//! Compact audiences on PostgreSQL (the layout and rules are in `store/audience.rs`).
//!
//! Writer side: a transaction that changes audiences first locks their messages
//! (`FOR KEY SHARE`, so a concurrent `DELETE` waits instead of meeting it in the cascade)
//! and then the audience rows (`FOR UPDATE`), both in `message_seq` order, and loads them
//! ([`Locked`]). Every change of the transaction is applied to that copy in memory, and
//! each changed audience is written back once, at the end ([`write_back`]): one
//! read-modify-write per audience however many of its members change, and writers on
//! other nodes queue on the row lock, so every change lands exactly once.
//!
//! Read side: member lists never change, so readers find a receiver's index in the shared
//! [`MembersCache`] and fetch only its state byte (`substring` of the state blob, which is
//! stored uncompressed so that PostgreSQL reads just the chunk holding it).

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{PgConnection, Row};

use super::messages::{apply_to_row, RowKey};
use crate::model::{NewAudience, Status};
use crate::store::audience::{
    AudienceState, MemberState, Members, MembersCache, Membership, PRESENCE_SLACK_MS,
};
use crate::store::rows::Cols;
use crate::store::StoreError;

/// An audience locked by this transaction, changed in memory.
pub(super) struct Locked {
    pub seq: i64,
    pub channel: String,
    /// The message's `created_at` (member times are relative to it).
    pub created_at: i64,
    pub members: Arc<Members>,
    pub st: AudienceState,
    dirty: bool,
    /// Members whose status moved in this transaction, for webhook events at the
    /// [`write_back`] (spilled members' rows get theirs from the row triggers). Kept only
    /// when `hooks`.
    pub moves: Vec<(usize, Status)>,
    /// Whether an enabled endpoint wanted `delivery.*` events when this was locked.
    pub hooks: bool,
}

impl Locked {
    /// Change member `i` (see [`AudienceState::apply`]); a spilled member's row is changed
    /// instead. `true` when its status moved.
    pub async fn apply(
        &mut self,
        conn: &mut PgConnection,
        i: usize,
        status: Status,
        count_attempt: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        if self.st.member(i).spilled() {
            let row = RowKey::Of {
                seq: self.seq,
                receiver: self.members.get(i),
                channel: &self.channel,
            };
            return apply_to_row(conn, row, status, None, count_attempt, now).await;
        }
        let moved = self
            .st
            .apply(i, status, count_attempt, now - self.created_at);
        self.dirty |= moved || count_attempt;
        if moved && self.hooks {
            self.moves.push((i, status));
        }
        Ok(moved)
    }

    /// `receiver`'s entry in this audience if it is on `channel` and not spilled (a spilled
    /// member's row answers for it).
    pub fn member_of(&self, receiver: &str, channel: &str) -> Option<(usize, MemberState)> {
        if self.channel != channel {
            return None;
        }
        let i = self.members.find(receiver)?;
        let m = self.st.member(i);
        (!m.spilled()).then_some((i, m))
    }

    /// Fail the undelivered members (`expiresAt`): how many.
    pub fn expire(&mut self, now: i64) -> u64 {
        let todo: Vec<usize> = self.st.undelivered().collect();
        for &i in &todo {
            self.st
                .apply(i, Status::Failed, false, now - self.created_at);
        }
        if self.hooks {
            self.moves.extend(todo.iter().map(|&i| (i, Status::Failed)));
        }
        self.dirty |= !todo.is_empty();
        todo.len() as u64
    }
}

/// Take `FOR KEY SHARE` locks on the messages of `seqs`, in seq order: first thing in a
/// transaction that will change their audiences or add rows for them.
pub(super) async fn lock_messages(conn: &mut PgConnection, seqs: &[i64]) -> Result<(), StoreError> {
    if !seqs.is_empty() {
        sqlx::query("SELECT seq FROM messages WHERE seq = ANY($1) ORDER BY seq FOR KEY SHARE")
            .bind(seqs)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Lock the messages, then the audiences of `seqs` (both in seq order), and load them.
/// Messages without an audience (or deleted) are absent from the answer.
pub(super) async fn lock(
    conn: &mut PgConnection,
    cache: &MembersCache,
    seqs: &[i64],
) -> Result<HashMap<i64, Locked>, StoreError> {
    let mut seqs = seqs.to_vec();
    seqs.sort_unstable();
    seqs.dedup();
    let mut out = HashMap::with_capacity(seqs.len());
    if seqs.is_empty() {
        return Ok(out);
    }
    lock_messages(conn, &seqs).await?;
    let uncached: Vec<i64> = seqs
        .iter()
        .copied()
        .filter(|s| cache.get(*s).is_none())
        .collect();
    let rows = sqlx::query(&format!(
        "SELECT a.message_seq, a.channel, m.created_at, a.state, a.times, \
           CASE WHEN a.message_seq = ANY($2) THEN a.members END, {} \
         FROM audiences a JOIN messages m ON m.seq = a.message_seq \
         WHERE a.message_seq = ANY($1) ORDER BY a.message_seq FOR UPDATE OF a",
        super::webhooks::WANT_DELIVERY_EVENTS
    ))
    .bind(&seqs)
    .bind(&uncached)
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        let seq = r.int(0)?;
        let members = match (cache.get(seq), r.try_get::<Option<Vec<u8>>, _>(5)?) {
            (Some(m), _) => m,
            (None, Some(blob)) => parse_and_cache(cache, seq, &blob)?,
            // Evicted since the list of uncached ones was made: read it again.
            (None, None) => members(conn, cache, &[seq])
                .await?
                .remove(&seq)
                .ok_or_else(|| StoreError::Corrupt(format!("audience {seq} has no members")))?,
        };
        let st = AudienceState::from_blobs(r.blob(3)?, r.blob(4)?)?;
        if st.len() != members.len() {
            return Err(StoreError::Corrupt(format!(
                "audience {seq}: {} members, {} states",
                members.len(),
                st.len()
            )));
        }
        out.insert(
            seq,
            Locked {
                seq,
                channel: r.text(1)?,
                created_at: r.int(2)?,
                members,
                st,
                dirty: false,
                moves: Vec::new(),
                hooks: r.flag(6)?,
            },
        );
    }
    Ok(out)
}

fn parse_and_cache(
    cache: &MembersCache,
    seq: i64,
    blob: &[u8],
) -> Result<Arc<Members>, StoreError> {
    let m = Arc::new(Members::parse(blob)?);
    cache.insert(seq, m.clone());
    Ok(m)
}

/// Write every changed audience back, in one statement, and the webhook events of its
/// members' moves in another (the rows' come from triggers).
pub(super) async fn write_back(
    conn: &mut PgConnection,
    locked: &mut HashMap<i64, Locked>,
    now: i64,
) -> Result<(), StoreError> {
    let dirty: Vec<&Locked> = locked.values().filter(|a| a.dirty).collect();
    if dirty.is_empty() {
        return Ok(());
    }
    super::webhooks::member_events(conn, &dirty, now).await?;
    let seqs: Vec<i64> = dirty.iter().map(|a| a.seq).collect();
    let states: Vec<&[u8]> = dirty.iter().map(|a| a.st.state.as_slice()).collect();
    let times: Vec<&[u8]> = dirty.iter().map(|a| a.st.times.as_slice()).collect();
    let count = |k: usize| dirty.iter().map(|a| a.st.counts[k]).collect::<Vec<i64>>();
    sqlx::query(
        "UPDATE audiences a SET state = t.state, times = t.times, pending = t.pending, \
           sent = t.sent, delivered = t.delivered, read = t.read, failed = t.failed, \
           updated_at = $1 \
         FROM UNNEST($2::int8[], $3::bytea[], $4::bytea[], $5::int8[], $6::int8[], $7::int8[], \
                     $8::int8[], $9::int8[]) \
           AS t (seq, state, times, pending, sent, delivered, read, failed) \
         WHERE a.message_seq = t.seq",
    )
    .bind(now)
    .bind(&seqs)
    .bind(&states)
    .bind(&times)
    .bind(count(0))
    .bind(count(1))
    .bind(count(2))
    .bind(count(3))
    .bind(count(4))
    .execute(&mut *conn)
    .await?;
    for a in locked.values_mut() {
        a.dirty = false;
        a.moves.clear();
    }
    Ok(())
}

/// Store a new audience (inside the message's insert; its spill timer is added with the
/// message's other timers). Returns its member list, to cache once committed.
pub(super) async fn insert(
    conn: &mut PgConnection,
    seq: i64,
    a: &NewAudience,
    now: i64,
) -> Result<Members, StoreError> {
    let blob = Members::encode(&a.members);
    let st = AudienceState::new(a.members.len());
    let c = st.counts;
    sqlx::query(
        "INSERT INTO audiences (message_seq, channel, taken_at, members, state, times, \
           pending, sent, delivered, read, failed, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(seq)
    .bind(&a.channel)
    .bind(a.taken_at_ms)
    .bind(&blob)
    .bind(&st.state)
    .bind(&st.times)
    .bind(c[0])
    .bind(c[1])
    .bind(c[2])
    .bind(c[3])
    .bind(c[4])
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Members::parse(&blob)
}

/// Give the undelivered members of `a` rows of their own (the spill timer fired): one
/// `INSERT … UNNEST`, each row a copy of the member's state. How many.
pub(super) async fn spill(
    conn: &mut PgConnection,
    a: &mut Locked,
    now: i64,
) -> Result<u64, StoreError> {
    let todo: Vec<usize> = a.st.undelivered().collect();
    if todo.is_empty() {
        return Ok(0);
    }
    let mut receivers = Vec::with_capacity(todo.len());
    let (mut statuses, mut attempts, mut updated) = (
        Vec::with_capacity(todo.len()),
        Vec::with_capacity(todo.len()),
        Vec::with_capacity(todo.len()),
    );
    for &i in &todo {
        let m = a.st.member(i);
        receivers.push(a.members.get(i));
        statuses.push(m.status().code());
        attempts.push(m.attempts());
        updated.push(a.created_at + a.st.changed_after(i));
    }
    sqlx::query(
        "INSERT INTO deliveries (message_seq, receiver, channel, status, attempts, created_at, \
           updated_at) \
         SELECT $1, t.receiver, $2, t.status, t.attempts, $3, t.updated_at \
         FROM UNNEST($4::text[], $5::int8[], $6::int8[], $7::int8[]) \
           AS t (receiver, status, attempts, updated_at)",
    )
    .bind(a.seq)
    .bind(&a.channel)
    .bind(a.created_at)
    .bind(&receivers)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&updated)
    .execute(&mut *conn)
    .await?;
    for &i in &todo {
        a.st.spill(i, now - a.created_at);
    }
    a.dirty = true;
    Ok(todo.len() as u64)
}

/// Give member `i` of `a` a delivery row of its own now (its inbox state is about to
/// change, and a member has no room for inbox flags): the row takes its status, attempts
/// and the flags its status implies. `false` when there is no such unspilled member. The
/// caller holds the receiver's inbox counter (the insert's trigger adds to it).
pub(super) async fn spill_member(
    conn: &mut PgConnection,
    a: &mut Locked,
    i: usize,
    now: i64,
) -> Result<bool, StoreError> {
    if i >= a.members.len() || a.st.member(i).spilled() {
        return Ok(false);
    }
    let m = a.st.member(i);
    sqlx::query(
        "INSERT INTO deliveries (message_seq, receiver, channel, status, attempts, \
           created_at, updated_at, inbox) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(a.seq)
    .bind(a.members.get(i))
    .bind(&a.channel)
    .bind(m.status().code())
    .bind(m.attempts())
    .bind(a.created_at)
    .bind(a.created_at + a.st.changed_after(i))
    .bind(crate::model::inbox::derived(m.status()))
    .execute(&mut *conn)
    .await?;
    a.st.spill(i, now - a.created_at);
    a.dirty = true;
    Ok(true)
}

/// `receiver`'s unspilled entries in `channel` audiences with `seq <= before` (all when
/// `None`), oldest first, found through the presence history as the readers find them.
/// Not locked: a writer locks the audiences of those it will change and checks them again.
pub(super) async fn history_members(
    conn: &mut PgConnection,
    cache: &MembersCache,
    receiver: &str,
    channel: &str,
    before: Option<i64>,
) -> Result<Vec<Membership>, StoreError> {
    let mut seqs = history_seqs(conn, receiver, Some(channel)).await?;
    if let Some(b) = before {
        seqs.retain(|&s| s <= b);
    }
    memberships(conn, cache, receiver, &seqs).await
}

/// The member lists of `seqs`, from the cache or the database (then cached). Deleted
/// audiences are absent.
pub(super) async fn members(
    conn: &mut PgConnection,
    cache: &MembersCache,
    seqs: &[i64],
) -> Result<HashMap<i64, Arc<Members>>, StoreError> {
    let mut out = HashMap::with_capacity(seqs.len());
    let mut missing = Vec::new();
    for &seq in seqs {
        match cache.get(seq) {
            Some(m) => {
                out.insert(seq, m);
            }
            None => missing.push(seq),
        }
    }
    // A broadcast's list is about 14 bytes a member: a few lists per round trip.
    for chunk in missing.chunks(64) {
        let rows =
            sqlx::query("SELECT message_seq, members FROM audiences WHERE message_seq = ANY($1)")
                .bind(chunk)
                .fetch_all(&mut *conn)
                .await?;
        for r in &rows {
            let seq = r.int(0)?;
            out.insert(seq, parse_and_cache(cache, seq, &r.blob(1)?)?);
        }
    }
    Ok(out)
}

/// `receiver`'s entries in the audiences among `seqs` (not spilled ones: their rows
/// answer), oldest first. Members come from the cache; of the states only the receiver's
/// byte is read.
pub(super) async fn memberships(
    conn: &mut PgConnection,
    cache: &MembersCache,
    receiver: &str,
    seqs: &[i64],
) -> Result<Vec<Membership>, StoreError> {
    let lists = members(conn, cache, seqs).await?;
    let (mut found_seqs, mut found_idx) = (Vec::new(), Vec::new());
    for &seq in seqs {
        if let Some(i) = lists.get(&seq).and_then(|m| m.find(receiver)) {
            found_seqs.push(seq);
            found_idx.push(i as i64);
        }
    }
    if found_seqs.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT t.seq, t.idx, substring(a.state FROM (t.idx + 1)::int4 FOR 1) \
         FROM UNNEST($1::int8[], $2::int8[]) AS t (seq, idx) \
         JOIN audiences a ON a.message_seq = t.seq ORDER BY t.seq",
    )
    .bind(&found_seqs)
    .bind(&found_idx)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let seq = r.int(0)?;
        let byte = r.blob(2)?;
        let &[b] = byte.as_slice() else {
            return Err(StoreError::Corrupt(format!(
                "audience {seq}: state too short"
            )));
        };
        let state = MemberState(b);
        if !state.spilled() {
            out.push(Membership {
                seq,
                index: r.int(1)? as usize,
                state,
            });
        }
    }
    Ok(out)
}

/// Open audiences of `channel` (some member undelivered) with `seq > after`, oldest first.
pub(super) async fn open_seqs(
    conn: &mut PgConnection,
    channel: &str,
    after: i64,
) -> Result<Vec<i64>, StoreError> {
    sqlx::query(
        "SELECT message_seq FROM audiences WHERE channel = $1 AND pending + sent > 0 \
           AND message_seq > $2 ORDER BY message_seq",
    )
    .bind(channel)
    .bind(after)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.int(0))
    .collect()
}

/// Audiences (of `channel`, if given) taken while one of `receiver`'s sessions was open
/// (the history index; a superset, checked by [`memberships`]).
pub(super) async fn history_seqs(
    conn: &mut PgConnection,
    receiver: &str,
    channel: Option<&str>,
) -> Result<Vec<i64>, StoreError> {
    sqlx::query(
        "SELECT DISTINCT a.message_seq FROM presence p JOIN audiences a \
           ON a.taken_at >= p.since - $2 AND (p.until IS NULL OR a.taken_at <= p.until + $2) \
         WHERE p.receiver = $1 AND ($3::text IS NULL OR a.channel = $3) ORDER BY a.message_seq",
    )
    .bind(receiver)
    .bind(PRESENCE_SLACK_MS)
    .bind(channel)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.int(0))
    .collect()
}
