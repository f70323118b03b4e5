//! Compact audiences: the presence deliveries of a broadcast (or of any message with many
//! receivers) stored as one record instead of one row per receiver (ARCHITECTURE.md,
//! "Compact audiences"). Both backends store the same three byte strings and use the code
//! here to read and change them:
//!
//! * `members`: `[1][n: u32 LE][end offset: u32 LE × n][the ids' UTF-8 bytes]`, ids sorted
//!   by their bytes, no duplicates. A member's position is its index; its delivery id is
//!   [`member_delivery_id`](crate::model::member_delivery_id)`(seq, index)`. Immutable.
//! * `state`: one byte per member: status code (bits 0–2), hand-overs (bits 3–6,
//!   saturating at 15) and *spilled* (bit 7: the member has a delivery row of its own, which
//!   is authoritative from then on).
//! * `times`: one `u32` LE per member: ms after the message's `created_at` of its last
//!   change (saturating; members change within the audience window, long before 49 days).
//!
//! Hand-written rather than a serialization crate: the layout is searched in place
//! (binary search over offsets, no decoding of 10,000 strings per lookup) and must stay
//! byte-identical across both backends and releases.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::StoreError;
use crate::model::{member_delivery_id, Delivery, Message, Status};

const VERSION: u8 = 1;

/// The member list of one audience, parsed once and shared (it never changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// End offset of each id in `data`.
    ends: Vec<u32>,
    data: String,
}

impl Members {
    /// Encode a sorted, duplicate-free list (see [`crate::model::NewAudience::new`]).
    pub fn encode(sorted: &[String]) -> Vec<u8> {
        debug_assert!(sorted.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()));
        let bytes: usize = sorted.iter().map(String::len).sum();
        let mut out = Vec::with_capacity(5 + 4 * sorted.len() + bytes);
        out.push(VERSION);
        out.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
        let mut end = 0u32;
        for m in sorted {
            end += m.len() as u32;
            out.extend_from_slice(&end.to_le_bytes());
        }
        for m in sorted {
            out.extend_from_slice(m.as_bytes());
        }
        out
    }

    /// Parse and check a stored member list.
    pub fn parse(blob: &[u8]) -> Result<Members, StoreError> {
        let bad = |why: &str| StoreError::Corrupt(format!("audience members: {why}"));
        let (&version, rest) = blob.split_first().ok_or_else(|| bad("empty"))?;
        if version != VERSION {
            return Err(bad(&format!("unknown layout version {version}")));
        }
        let n = u32::from_le_bytes(
            rest.get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("truncated count"))?,
        ) as usize;
        let table = rest
            .get(4..4 + 4 * n)
            .ok_or_else(|| bad("truncated offsets"))?;
        let ends: Vec<u32> = table
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let data = String::from_utf8(rest[4 + 4 * n..].to_vec()).map_err(|_| bad("not UTF-8"))?;
        let mut start = 0usize;
        let mut prev: Option<&[u8]> = None;
        for &end in &ends {
            let end = end as usize;
            if end <= start || end > data.len() || !data.is_char_boundary(end) {
                return Err(bad("offsets out of order"));
            }
            // Lookups are binary searches: the ids must be sorted and unique.
            let id = &data.as_bytes()[start..end];
            if prev.is_some_and(|p| p >= id) {
                return Err(bad("ids not sorted"));
            }
            prev = Some(id);
            start = end;
        }
        if start != data.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Members { ends, data })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The id of member `i`.
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.data[start..self.ends[i] as usize]
    }

    /// The index of `receiver`, if it is a member (binary search).
    pub fn find(&self, receiver: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.get(mid).as_bytes().cmp(receiver.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Bytes held in memory (for the cache's bound).
    pub fn footprint(&self) -> usize {
        self.data.len() + 4 * self.ends.len() + 64
    }
}

/// Bit 7 of a state byte: the member has a delivery row of its own.
const SPILLED: u8 = 0x80;
const MAX_ATTEMPTS: u8 = 15;

/// A member's state byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberState(pub u8);

impl MemberState {
    pub const PENDING: MemberState = MemberState(0);

    pub fn status(self) -> Status {
        Status::from_code(i64::from(self.0 & 7))
    }

    pub fn attempts(self) -> i64 {
        i64::from((self.0 >> 3) & MAX_ATTEMPTS)
    }

    pub fn spilled(self) -> bool {
        self.0 & SPILLED != 0
    }

    fn with(status: Status, attempts: u8, spilled: bool) -> MemberState {
        MemberState(
            (status.code() as u8 & 7)
                | (attempts.min(MAX_ATTEMPTS) << 3)
                | if spilled { SPILLED } else { 0 },
        )
    }
}

/// The changeable part of an audience: state and times of every member, and the counts per
/// status of the members that are not spilled (stored beside the blobs so listings and
/// status filters need not read them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceState {
    pub state: Vec<u8>,
    pub times: Vec<u8>,
    pub counts: [i64; 5],
}

impl AudienceState {
    /// `n` members, all `pending`.
    pub fn new(n: usize) -> AudienceState {
        let mut counts = [0; 5];
        counts[0] = n as i64;
        AudienceState {
            state: vec![0; n],
            times: vec![0; 4 * n],
            counts,
        }
    }

    /// From stored blobs (the counts are recomputed: they are derived data).
    pub fn from_blobs(state: Vec<u8>, times: Vec<u8>) -> Result<AudienceState, StoreError> {
        if times.len() != 4 * state.len() {
            return Err(StoreError::Corrupt(format!(
                "audience state: {} members but {} time bytes",
                state.len(),
                times.len()
            )));
        }
        let mut counts = [0; 5];
        for &b in &state {
            let m = MemberState(b);
            if !m.spilled() {
                counts[m.status().code() as usize] += 1;
            }
        }
        Ok(AudienceState {
            state,
            times,
            counts,
        })
    }

    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    pub fn member(&self, i: usize) -> MemberState {
        MemberState(self.state[i])
    }

    /// ms after the message's `created_at` of member `i`'s last change.
    pub fn changed_after(&self, i: usize) -> i64 {
        let b = &self.times[4 * i..4 * i + 4];
        i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Members not spilled and not yet delivered (`pending`/`sent`): while there are any,
    /// the audience is *open* (scanned on connect).
    pub fn open(&self) -> i64 {
        self.counts[0] + self.counts[1]
    }

    fn set(&mut self, i: usize, next: MemberState, after_ms: i64) {
        let prev = self.member(i);
        if !prev.spilled() {
            self.counts[prev.status().code() as usize] -= 1;
        }
        if !next.spilled() {
            self.counts[next.status().code() as usize] += 1;
        }
        self.state[i] = next.0;
        let t = after_ms.clamp(0, i64::from(u32::MAX)) as u32;
        self.times[4 * i..4 * i + 4].copy_from_slice(&t.to_le_bytes());
    }

    /// Apply a status change to member `i` (`after_ms`: now, as ms after the message's
    /// `created_at`), with the rules of a delivery row: the status only moves forward
    /// ([`Status::can_move_to`]); `count_attempt` counts a hand-over even when the status
    /// does not move, as long as the member is undelivered. `true` when the status moved.
    /// A spilled member is not changed here (its row is).
    pub fn apply(&mut self, i: usize, status: Status, count_attempt: bool, after_ms: i64) -> bool {
        let cur = self.member(i);
        if cur.spilled() {
            return false;
        }
        let attempts = (cur.attempts() as u8).saturating_add(u8::from(count_attempt));
        if cur.status().can_move_to(status) {
            self.set(i, MemberState::with(status, attempts, false), after_ms);
            true
        } else {
            if count_attempt && cur.status().is_undelivered() {
                self.set(
                    i,
                    MemberState::with(cur.status(), attempts, false),
                    after_ms,
                );
            }
            false
        }
    }

    /// Mark member `i` as having a row of its own (its current state is copied there).
    pub fn spill(&mut self, i: usize, after_ms: i64) {
        let cur = self.member(i);
        if !cur.spilled() {
            self.set(
                i,
                MemberState::with(cur.status(), cur.attempts() as u8, true),
                after_ms,
            );
        }
    }

    /// Indices of the members that are undelivered and not spilled.
    pub fn undelivered(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| {
            let m = self.member(i);
            !m.spilled() && m.status().is_undelivered()
        })
    }
}

/// The error a failed member shows: the only way a compact delivery fails is its
/// message's `expiresAt` (deliveries born failed, e.g. `opted_out`, are rows).
pub const MEMBER_FAILED_ERROR: &str = "expired";

/// Member `i` as a [`Delivery`] (for listings and `GET /api/v1/messages/{id}`).
pub fn member_delivery(
    seq: i64,
    channel: &str,
    created_at_ms: i64,
    members: &Members,
    state: &AudienceState,
    i: usize,
) -> Delivery {
    let m = state.member(i);
    Delivery {
        id: member_delivery_id(seq, i),
        receiver: members.get(i).to_owned(),
        channel: channel.to_owned(),
        status: m.status(),
        attempts: m.attempts(),
        error: (m.status() == Status::Failed).then(|| MEMBER_FAILED_ERROR.to_owned()),
        next_attempt_ms: None,
        provider_id: None,
        created_at_ms,
        updated_at_ms: created_at_ms + state.changed_after(i),
    }
}

/// Add an audience's members to `msg` (a message's `GET` or a listing): its counts,
/// always complete, and its members after the deliveries already there, up to `cap`
/// deliveries in all. Spilled members are left out: their rows are listed.
pub fn add_members(
    msg: &mut Message,
    channel: &str,
    members: &Members,
    state: &AudienceState,
    cap: usize,
) {
    for (n, c) in state.counts.iter().enumerate() {
        msg.delivery_counts[n] += c;
    }
    for i in 0..members.len().min(state.len()) {
        if msg.deliveries.len() >= cap {
            break;
        }
        if !state.member(i).spilled() {
            msg.deliveries.push(member_delivery(
                msg.seq,
                channel,
                msg.created_at_ms,
                members,
                state,
                i,
            ));
        }
    }
}

/// The members with something to replay: undelivered and not spilled (`state`: the stored
/// state bytes).
pub fn undelivered_members<'a>(
    members: &'a Members,
    state: &'a [u8],
) -> impl Iterator<Item = &'a str> + 'a {
    state
        .iter()
        .take(members.len())
        .enumerate()
        .filter(|(_, &b)| {
            let m = MemberState(b);
            !m.spilled() && m.status().is_undelivered()
        })
        .map(|(i, _)| members.get(i))
}

/// A receiver's entry in one audience, as the readers see it (spilled entries are not
/// memberships: their rows answer).
#[derive(Debug, Clone, Copy)]
pub struct Membership {
    pub seq: i64,
    pub index: usize,
    pub state: MemberState,
}

/// Member lists by message `seq`, shared by every reader of a backend. They never change
/// and `seq`s are never reused, so an entry is valid for as long as it is kept; the cache
/// is bounded by the bytes it holds (oldest entries go first).
pub struct MembersCache {
    inner: Mutex<CacheInner>,
    max_bytes: usize,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<i64, Arc<Members>>,
    order: VecDeque<i64>,
    bytes: usize,
}

impl MembersCache {
    pub fn new(max_bytes: usize) -> MembersCache {
        MembersCache {
            inner: Mutex::new(CacheInner::default()),
            max_bytes,
        }
    }

    pub fn get(&self, seq: i64) -> Option<Arc<Members>> {
        self.lock().map.get(&seq).cloned()
    }

    pub fn insert(&self, seq: i64, members: Arc<Members>) {
        let mut c = self.lock();
        if c.map.contains_key(&seq) {
            return;
        }
        c.bytes += members.footprint();
        c.map.insert(seq, members);
        c.order.push_back(seq);
        while c.bytes > self.max_bytes && c.order.len() > 1 {
            let Some(old) = c.order.pop_front() else {
                break;
            };
            if let Some(m) = c.map.remove(&old) {
                c.bytes -= m.footprint();
            }
        }
    }

    pub fn remove(&self, seq: i64) {
        let mut c = self.lock();
        if let Some(m) = c.map.remove(&seq) {
            c.bytes -= m.footprint();
            c.order.retain(|s| *s != seq);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How much the history index (`presence` spans) may be off between the node that took an
/// audience and the nodes that recorded its members' sessions (clock skew, the time a
/// snapshot takes). Wider only costs checking a few more candidates.
pub const PRESENCE_SLACK_MS: i64 = 30_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str]) -> Members {
        let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        v.sort();
        Members::parse(&Members::encode(&v)).unwrap()
    }

    #[test]
    fn members_round_trip_and_find() {
        let m = members(&["u1", "u10", "u2", "ünï", "z"]);
        assert_eq!(m.len(), 5);
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            ["u1", "u10", "u2", "z", "ünï"]
        );
        for (i, id) in m.iter().enumerate() {
            assert_eq!(m.find(id), Some(i));
        }
        assert_eq!(m.find("u3"), None);
        assert_eq!(m.find(""), None);
        assert_eq!(m.find("zz"), None);
        let empty = members(&[]);
        assert!(empty.is_empty());
        assert_eq!(empty.find("a"), None);
    }

    #[test]
    fn damaged_member_lists_are_refused() {
        let good = Members::encode(&["a".into(), "bc".into()]);
        assert!(Members::parse(&good).is_ok());
        assert!(Members::parse(&[]).is_err());
        assert!(Members::parse(&[2]).is_err(), "unknown version");
        assert!(
            Members::parse(&good[..good.len() - 1]).is_err(),
            "truncated"
        );
        let mut extra = good.clone();
        extra.push(b'x');
        assert!(Members::parse(&extra).is_err(), "trailing bytes");
        let mut swapped = good.clone();
        swapped[5..9].copy_from_slice(&3u32.to_le_bytes()); // ["abc", ""]: not sorted
        assert!(Members::parse(&swapped).is_err());
        let mut past = good.clone();
        past[5..9].copy_from_slice(&4u32.to_le_bytes()); // first end past the second
        assert!(Members::parse(&past).is_err());
        let mut dup = Members::encode(&["a".into(), "b".into()]);
        dup[14] = b'a'; // ["a", "a"]
        assert!(Members::parse(&dup).is_err(), "duplicates");
        let mut unsorted = Members::encode(&["a".into(), "b".into()]);
        let n = unsorted.len();
        unsorted.swap(n - 1, n - 2); // "b", "a"
        assert!(Members::parse(&unsorted).is_err(), "not sorted");
        let mut utf = Members::encode(&["é".into()]);
        utf[5..9].copy_from_slice(&1u32.to_le_bytes()); // inside the two-byte char
        assert!(Members::parse(&utf).is_err());
    }

    #[test]
    fn state_moves_forward_only_like_a_row() {
        let mut s = AudienceState::new(3);
        assert_eq!(s.counts, [3, 0, 0, 0, 0]);
        assert!(s.apply(0, Status::Sent, true, 5));
        assert_eq!(s.member(0).status(), Status::Sent);
        assert_eq!(s.member(0).attempts(), 1);
        assert_eq!(s.changed_after(0), 5);
        // A re-send counts a hand-over without moving.
        assert!(!s.apply(0, Status::Sent, true, 6));
        assert_eq!(s.member(0).attempts(), 2);
        assert!(s.apply(0, Status::Delivered, false, 7));
        assert!(s.apply(0, Status::Read, false, 8));
        assert!(!s.apply(0, Status::Delivered, false, 9), "no way back");
        assert!(!s.apply(0, Status::Failed, false, 9), "read never fails");
        assert_eq!(s.member(0).status(), Status::Read);
        assert_eq!(s.changed_after(0), 8);
        // An ack straight from pending (a replayed frame acked before its `sent` landed).
        assert!(s.apply(1, Status::Delivered, false, 3));
        assert!(s.apply(2, Status::Failed, false, 4));
        assert!(!s.apply(2, Status::Sent, true, 4), "failed is final");
        assert_eq!(s.counts, [0, 0, 1, 1, 1]);
        assert_eq!(s.open(), 0);
    }

    #[test]
    fn attempts_saturate_and_spilled_members_stay_put() {
        let mut s = AudienceState::new(2);
        for _ in 0..40 {
            s.apply(0, Status::Sent, true, 1);
        }
        assert_eq!(s.member(0).attempts(), 15);
        assert_eq!(s.member(0).status(), Status::Sent);
        s.spill(1, 2);
        assert!(s.member(1).spilled());
        assert!(!s.apply(1, Status::Delivered, false, 3));
        assert_eq!(s.counts, [0, 1, 0, 0, 0], "spilled members are not counted");
        assert_eq!(s.undelivered().collect::<Vec<_>>(), [0]);
        let back = AudienceState::from_blobs(s.state.clone(), s.times.clone()).unwrap();
        assert_eq!(back, s);
        assert!(AudienceState::from_blobs(vec![0], vec![0; 3]).is_err());
    }

    #[test]
    fn times_saturate_instead_of_wrapping() {
        let mut s = AudienceState::new(1);
        s.apply(0, Status::Sent, true, i64::MAX);
        assert_eq!(s.changed_after(0), i64::from(u32::MAX));
        s.apply(0, Status::Delivered, false, -5);
        assert_eq!(s.changed_after(0), 0);
    }

    #[test]
    fn member_deliveries_show_status_time_and_the_expiry_error() {
        let m = members(&["a", "b"]);
        let mut s = AudienceState::new(2);
        s.apply(1, Status::Failed, false, 250);
        let d = member_delivery(7, "websocket", 1_000, &m, &s, 1);
        assert_eq!(d.receiver, "b");
        assert_eq!(d.status, Status::Failed);
        assert_eq!(d.error.as_deref(), Some("expired"));
        assert_eq!(d.updated_at_ms, 1_250);
        assert_eq!(crate::model::decode_member_id(d.id), Some((7, 1)));
        let p = member_delivery(7, "websocket", 1_000, &m, &s, 0);
        assert_eq!((p.status, p.error, p.attempts), (Status::Pending, None, 0));
    }

    #[test]
    fn members_are_added_to_a_message_after_its_rows_and_counted_in_full() {
        let m = members(&["a", "b", "c"]);
        let mut s = AudienceState::new(3);
        s.apply(0, Status::Delivered, false, 5);
        s.spill(1, 6);
        let mut msg = Message {
            seq: 9,
            id: "x".into(),
            title: String::new(),
            content: String::new(),
            msg_type: 0,
            sender: String::new(),
            created_at_ms: 100,
            template: None,
            send_at_ms: None,
            expires_at_ms: None,
            routing: None,
            routes: Vec::new(),
            deliveries: Vec::new(),
            delivery_counts: [1, 0, 0, 0, 0],
        };
        add_members(&mut msg, "websocket", &m, &s, 1);
        assert_eq!(
            msg.delivery_counts,
            [2, 0, 1, 0, 0],
            "spilled: counted by its row"
        );
        assert_eq!(msg.deliveries.len(), 1, "capped");
        assert_eq!(msg.deliveries[0].receiver, "a");
        add_members(&mut msg, "websocket", &m, &s, usize::MAX);
        let who: Vec<&str> = msg.deliveries.iter().map(|d| d.receiver.as_str()).collect();
        assert_eq!(who, ["a", "a", "c"], "the spilled member is not listed");
        let undelivered: Vec<&str> = undelivered_members(&m, &s.state).collect();
        assert_eq!(undelivered, ["c"]);
    }

    #[test]
    fn the_cache_is_bounded_by_bytes() {
        let one = Arc::new(members(&["aaaaaaaaaa"; 1]));
        let cache = MembersCache::new(one.footprint() * 2);
        cache.insert(1, one.clone());
        cache.insert(2, one.clone());
        cache.insert(3, one.clone());
        assert!(cache.get(1).is_none(), "the oldest went first");
        assert!(cache.get(2).is_some() && cache.get(3).is_some());
        cache.remove(3);
        assert!(cache.get(3).is_none());
    }
}
