//! Domain types shared by the store, the dispatcher and the API. Wire formats live in
//! `api/` and `ws/frame.rs`; these types don't derive `Serialize` just to be sent somewhere.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::PolicyKind;

/// Delivery status. The numeric rank only ever grows for one delivery (`pending` → `sent` →
/// `delivered` → `read`); `failed` is terminal and never overrides `delivered`/`read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Pending = 0,
    Sent = 1,
    Delivered = 2,
    Read = 3,
    Failed = 4,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Sent,
        Status::Delivered,
        Status::Read,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Read => "read",
            Status::Failed => "failed",
        }
    }

    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn from_code(code: i64) -> Status {
        match code {
            0 => Status::Pending,
            1 => Status::Sent,
            2 => Status::Delivered,
            3 => Status::Read,
            _ => Status::Failed,
        }
    }

    /// The forward-only rule: `pending < sent < delivered < read`, and `failed` only from
    /// `pending`/`sent`. Every backend applies exactly this (the SQL `MOVES_FORWARD`).
    pub fn can_move_to(self, next: Status) -> bool {
        match next {
            Status::Failed => self.is_undelivered(),
            _ => self != Status::Failed && self < next,
        }
    }

    /// `pending` or `sent`: replayed on connect, collected by the inbox.
    pub fn is_undelivered(self) -> bool {
        matches!(self, Status::Pending | Status::Sent)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or(())
    }
}

/// A filter on delivery status in listings: one status, or "undelivered" (pending or sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Is(Status),
    Undelivered,
}

impl FromStr for StatusFilter {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s == "undelivered" {
            return Ok(StatusFilter::Undelivered);
        }
        s.parse().map(StatusFilter::Is)
    }
}

/// A message accepted by the API, before it is stored.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    /// Public id (UUID v7).
    pub id: String,
    pub title: String,
    pub content: String,
    pub msg_type: i64,
    pub sender: String,
    pub created_at_ms: i64,
    /// One delivery per (receiver, channel instance).
    pub deliveries: Vec<NewDelivery>,
    /// Deduplication of retried sends: the key and a hash of the request.
    pub idempotency: Option<Idempotency>,
    /// The template it was sent with, its data, and what was rendered per channel family.
    pub template: Option<String>,
    pub data: Option<serde_json::Value>,
    pub rendered: RenderedByFamily,
    /// `sendAt`: provider deliveries are due then, presence deliveries are held until then.
    pub send_at_ms: Option<i64>,
    /// `expiresAt`: what is still undelivered then fails with `expired`.
    pub expires_at_ms: Option<i64>,
    /// A failover policy: `routes` lists the receivers, one chain each; the chains create
    /// their deliveries step by step (`deliveries` holds none of theirs).
    pub routing: Option<Policy>,
    pub routes: Vec<String>,
    /// Presence deliveries stored compactly (a broadcast, or many receivers): one row for
    /// the whole audience instead of one per receiver. `deliveries` holds none of them.
    pub audience: Option<NewAudience>,
}

/// The receivers of a message on one presence channel, stored as one compact record: the
/// sorted member list and one status byte per member (ARCHITECTURE.md, "Compact
/// audiences"). Every member starts `pending`.
#[derive(Debug, Clone, Default)]
pub struct NewAudience {
    pub channel: String,
    /// Sorted by their UTF-8 bytes, without duplicates ([`NewAudience::new`] makes it so).
    /// A member's position is its index (see [`member_delivery_id`]). Shared: the same
    /// list is stored and then fanned out.
    pub members: std::sync::Arc<[String]>,
    /// When the audience was taken (ms, this node's wall clock): the history index
    /// (`presence`) finds the message for sessions open at that time.
    pub taken_at_ms: i64,
    /// When members that are still undelivered get delivery rows of their own (and the
    /// record stops being scanned on connect), ms on the message's clock.
    pub spill_at_ms: i64,
}

impl NewAudience {
    pub fn new(
        channel: impl Into<String>,
        mut members: Vec<String>,
        taken_at_ms: i64,
        spill_at_ms: i64,
    ) -> Self {
        members.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        members.dedup();
        NewAudience {
            channel: channel.into(),
            members: members.into(),
            taken_at_ms,
            spill_at_ms,
        }
    }
}

/// Most members one compact audience may have (the index has 24 bits in a member id).
pub const MAX_AUDIENCE: usize = 1 << MEMBER_BITS;
const MEMBER_BITS: u32 = 24;

/// The delivery id of member `index` of the audience of message `seq`. Compact deliveries
/// have no row of their own, so their ids are derived: negative, where row ids are
/// positive. Ids never leave the server (the API names deliveries by receiver and channel).
pub fn member_delivery_id(seq: i64, index: usize) -> i64 {
    -((seq << MEMBER_BITS) | index as i64) - 1
}

/// `(message seq, member index)` of a compact delivery id; `None` for a row id.
pub fn decode_member_id(delivery_id: i64) -> Option<(i64, usize)> {
    if delivery_id >= 0 {
        return None;
    }
    let v = -(delivery_id + 1);
    Some((v >> MEMBER_BITS, (v & ((1 << MEMBER_BITS) - 1)) as usize))
}

impl NewMessage {
    /// Deliveries created: rows and audience members.
    pub fn delivery_count(&self) -> usize {
        self.deliveries.len() + self.audience.as_ref().map_or(0, |a| a.members.len())
    }

    /// Held until `sendAt` (a time in the past sends at once).
    pub fn held_until(&self) -> Option<i64> {
        self.send_at_ms.filter(|&t| t > self.created_at_ms)
    }
}

/// Rendered template parts per channel family: family → part → text.
pub type RenderedByFamily = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub receiver: String,
    pub channel: String,
    /// Usually `Pending`; a delivery can be born `Failed` (e.g. `no_address`).
    pub status: Status,
    pub error: Option<String>,
    /// The address resolved for the channel (not stored: looked up again on every attempt).
    pub address: Option<String>,
    /// A provider-channel delivery: it enters the outbox (due now) and is handed over by
    /// the outbox workers, with retries.
    pub outbox: bool,
}

#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

/// What the store answers to an insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored now; `seq` is the internal ordering key, deliveries carry their ids.
    New { seq: i64, delivery_ids: Vec<i64> },
    /// The idempotency key was seen before with the same request: the earlier message.
    Existing { id: String, deliveries: usize },
    /// The idempotency key was seen before with a different request.
    KeyConflict,
}

/// A provider delivery claimed by an outbox worker. The worker owns it until
/// `lease_until_ms`; its outcome is applied only while that lease is still the row's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub delivery_id: i64,
    pub message_seq: i64,
    pub receiver: String,
    pub channel: String,
    /// Attempts including this one.
    pub attempts: i64,
    pub lease_until_ms: i64,
}

/// A daily quota applied while claiming: at most `limit` claims per window starting at
/// `window_start_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaClaim {
    pub window_start_ms: i64,
    pub limit: u64,
}

/// What a claim returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimResult {
    pub rows: Vec<Claimed>,
    /// With a quota: what is left of it in the window after this claim.
    pub quota_left: Option<u64>,
}

/// What an outbox worker needs of a message to hand its deliveries over.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub seq: i64,
    pub id: String,
    pub title: String,
    pub content: String,
    pub msg_type: i64,
    pub sender: String,
    pub created_at_ms: i64,
    pub template: Option<String>,
    pub data: Option<serde_json::Value>,
    pub rendered: RenderedByFamily,
    pub expires_at_ms: Option<i64>,
    /// The failover policy it was sent with.
    pub routing: Option<Policy>,
}

/// What a timer is for (the `schedule` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// `sendAt` reached: push the held presence deliveries.
    Release = 0,
    /// `expiresAt` reached: fail what is undelivered with `expired`.
    Expire = 1,
    /// A failover chain (one per receiver) to evaluate.
    Route = 2,
    /// A compact audience's window ended: its undelivered members get rows of their own.
    Spill = 3,
}

impl TimerKind {
    pub fn from_code(c: i64) -> Option<TimerKind> {
        match c {
            0 => Some(TimerKind::Release),
            1 => Some(TimerKind::Expire),
            2 => Some(TimerKind::Route),
            3 => Some(TimerKind::Spill),
            _ => None,
        }
    }
}

/// A timer claimed by the scheduler, held until `lease_until_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub id: i64,
    pub message_seq: i64,
    pub kind: TimerKind,
    /// Route: whose chain.
    pub receiver: String,
    pub lease_until_ms: i64,
    /// Route: its progress.
    pub progress: Progress,
}

impl Timer {
    /// A timer from the columns a claim returns: (id, message_seq, kind), receiver,
    /// (step, step_started_at), and the lease it was claimed under.
    pub fn claimed(
        (id, message_seq, kind): (i64, i64, i64),
        receiver: String,
        (step, started_at_ms): (i64, Option<i64>),
        lease_until_ms: i64,
    ) -> Result<Timer, String> {
        Ok(Timer {
            id,
            message_seq,
            kind: TimerKind::from_code(kind).ok_or_else(|| format!("schedule.kind {kind}"))?,
            receiver,
            lease_until_ms,
            progress: Progress {
                step: usize::try_from(step).ok(),
                started_at_ms,
            },
        })
    }
}

/// The result of evaluating a chain, stored atomically if the lease still holds.
#[derive(Debug, Clone)]
pub struct RouteAdvance {
    pub timer_id: i64,
    pub lease_until_ms: i64,
    pub message_seq: i64,
    pub receiver: String,
    pub state: RouteState,
    pub progress: Progress,
    pub due_at_ms: Option<i64>,
    pub log: Vec<LogEntry>,
    /// Deliveries the chain starts (provider ones are due at `now_ms`).
    pub start: Vec<NewDelivery>,
    /// Pending deliveries to fail: (id, error).
    pub supersede: Vec<(i64, String)>,
    pub now_ms: i64,
}

/// A failover chain as the message log shows it.
#[derive(Debug, Clone)]
pub struct RouteRecord {
    pub receiver: String,
    pub state: RouteState,
    pub step: Option<usize>,
    pub log: Vec<LogEntry>,
}

/// The outcome of one provider attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Accepted by the provider: `sent`, with the provider's id when it gave one.
    Sent { provider_id: Option<String> },
    /// Try again at `at_ms`; the delivery stays `pending` with the error recorded.
    Retry { at_ms: i64, error: String },
    /// `failed` with the error.
    Failed { error: String },
}

/// A stored message with its deliveries.
#[derive(Debug, Clone)]
pub struct Message {
    pub seq: i64,
    pub id: String,
    pub title: String,
    pub content: String,
    pub msg_type: i64,
    pub sender: String,
    pub created_at_ms: i64,
    pub template: Option<String>,
    pub send_at_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
    /// The failover policy (JSON as stored), if any.
    pub routing: Option<Policy>,
    /// Its chains, one per receiver (`get_message` only).
    pub routes: Vec<RouteRecord>,
    /// Deliveries (all of them, or the first N in listings).
    pub deliveries: Vec<Delivery>,
    /// Number of deliveries per status, indexed by [`Status::code`] (always complete).
    pub delivery_counts: [i64; 5],
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub receiver: String,
    pub channel: String,
    pub status: Status,
    pub attempts: i64,
    pub error: Option<String>,
    pub next_attempt_ms: Option<i64>,
    /// The provider's id for the accepted hand-over (SMS BizId, Twilio sid …).
    pub provider_id: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A message as a receiver sees it (replay, inbox), without other receivers' deliveries.
#[derive(Debug, Clone)]
pub struct InboxItem {
    pub seq: i64,
    /// This receiver's delivery on the channel.
    pub delivery_id: i64,
    pub id: String,
    pub title: String,
    pub content: String,
    pub msg_type: i64,
    pub sender: String,
    pub created_at_ms: i64,
    pub status: Status,
    /// The receiver's inbox flags ([`inbox`]; websocket deliveries only).
    pub flags: i64,
}

pub mod webhook;

/// The notification center's per-receiver state of a websocket delivery, beside its
/// status (docs/api.md §6.1): bits of the `deliveries.inbox` column.
pub mod inbox {
    use super::Status;

    /// Seen in the feed (the badge no longer counts it).
    pub const SEEN: i64 = 1;
    /// Read; implies [`SEEN`].
    pub const READ: i64 = 2;
    /// Archived: out of the default feed and the counts, orthogonal to read.
    pub const ARCHIVED: i64 = 4;
    /// Deleted by the receiver: out of the inbox for good (the delivery stays).
    pub const DELETED: i64 = 8;

    /// The flags of an entry that has none stored (a broadcast member without a row of
    /// its own): a `read` receipt (the WebSocket `read` frame) makes it seen and read.
    pub fn derived(status: Status) -> i64 {
        if status == Status::Read {
            SEEN | READ
        } else {
            0
        }
    }

    /// A change of inbox state (`POST /api/v1/inbox/{op}`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Op {
        Seen,
        Read,
        Unread,
        Archive,
        Unarchive,
        Ack,
        Delete,
    }

    impl Op {
        pub const ALL: [Op; 7] = [
            Op::Seen,
            Op::Read,
            Op::Unread,
            Op::Archive,
            Op::Unarchive,
            Op::Ack,
            Op::Delete,
        ];

        pub fn as_str(self) -> &'static str {
            match self {
                Op::Seen => "seen",
                Op::Read => "read",
                Op::Unread => "unread",
                Op::Archive => "archive",
                Op::Unarchive => "unarchive",
                Op::Ack => "ack",
                Op::Delete => "delete",
            }
        }

        pub fn parse(s: &str) -> Option<Op> {
            Op::ALL.into_iter().find(|o| o.as_str() == s)
        }

        /// Flags set and cleared.
        pub fn bits(self) -> (i64, i64) {
            match self {
                Op::Seen => (SEEN, 0),
                Op::Read => (SEEN | READ, 0),
                Op::Unread => (0, READ),
                Op::Archive => (ARCHIVED, 0),
                Op::Unarchive => (0, ARCHIVED),
                Op::Ack => (0, 0),
                Op::Delete => (DELETED, 0),
            }
        }

        /// The delivery status the op moves the delivery to, at least (forward only).
        pub fn status(self) -> Option<Status> {
            match self {
                Op::Seen | Op::Ack => Some(Status::Delivered),
                Op::Read => Some(Status::Read),
                _ => None,
            }
        }

        /// The flags of an entry after the op.
        pub fn apply(self, flags: i64) -> i64 {
            let (set, clear) = self.bits();
            (flags | set) & !clear
        }
    }

    /// Which entries an op changes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Target {
        /// These messages (public ids): every one must be in the inbox, or nothing changes.
        Ids(Vec<String>),
        /// Every entry, or those with `seq <= before` (what the user saw).
        All { before: Option<i64> },
    }

    /// What an op did.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Marked {
        /// How many entries changed, and how many deliveries' statuses moved forward with
        /// them (to [`Op::status`]: counted in the delivery metrics).
        Done { changed: u64, moved: u64 },
        /// These ids are not in the receiver's inbox; nothing changed.
        Unknown(Vec<String>),
    }

    /// `GET /api/v1/inbox/counts`: entries not archived.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Counts {
        pub unseen: u64,
        pub unread: u64,
        pub total: u64,
    }

    impl Counts {
        /// Count a broadcast member without a row of its own (its flags follow from its
        /// status; a failed one is not in the inbox).
        pub fn add_member(&mut self, status: Status) {
            if status != Status::Failed {
                self.add(derived(status));
            }
        }

        /// Count one entry with `flags`.
        pub fn add(&mut self, flags: i64) {
            if flags & (ARCHIVED | DELETED) != 0 {
                return;
            }
            self.total += 1;
            if flags & SEEN == 0 {
                self.unseen += 1;
            }
            if flags & READ == 0 {
                self.unread += 1;
            }
        }
    }

    /// Which entries a listing shows.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Show {
        /// `pending`/`sent` (the default, as before the notification center).
        Undelivered,
        All,
        Unseen,
        Seen,
        Unread,
        Read,
    }

    /// A listing of the inbox, newest first.
    #[derive(Debug, Clone)]
    pub struct Query {
        pub show: Show,
        /// `Some(false)` (default): not archived; `Some(true)`: archived; `None`: both.
        pub archived: Option<bool>,
        pub msg_type: Option<i64>,
        /// Entries with `seq < before`.
        pub before: Option<i64>,
        /// Entries with `seq > after` (the oldest `limit` of them).
        pub after: Option<i64>,
        pub offset: i64,
        pub limit: u32,
    }

    impl Query {
        /// Does an entry with this status, flags and type belong in the listing?
        pub fn matches(&self, seq: i64, status: Status, flags: i64, msg_type: i64) -> bool {
            if status == Status::Failed || flags & DELETED != 0 {
                return false;
            }
            if let Some(a) = self.archived {
                if (flags & ARCHIVED != 0) != a {
                    return false;
                }
            }
            if self.msg_type.is_some_and(|t| t != msg_type)
                || self.before.is_some_and(|b| seq >= b)
                || self.after.is_some_and(|a| seq <= a)
            {
                return false;
            }
            match self.show {
                Show::Undelivered => status.is_undelivered(),
                Show::All => true,
                Show::Unseen => flags & SEEN == 0,
                Show::Seen => flags & SEEN != 0,
                Show::Unread => flags & READ == 0,
                Show::Read => flags & READ != 0,
            }
        }

        /// The same condition in SQL over `deliveries d` and `messages m` (the entry's
        /// visibility included); its parameters are bound by the caller in the order of
        /// [`Query::sql_params`].
        pub fn sql(&self, placeholder: &mut dyn FnMut() -> String) -> String {
            let mut s = String::from(
                " AND d.next_attempt_at IS NULL AND d.status <> 4 AND (d.inbox & 8) = 0",
            );
            match self.archived {
                Some(true) => s.push_str(" AND (d.inbox & 4) <> 0"),
                Some(false) => s.push_str(" AND (d.inbox & 4) = 0"),
                None => {}
            }
            s.push_str(match self.show {
                Show::Undelivered => " AND d.status < 2",
                Show::All => "",
                Show::Unseen => " AND (d.inbox & 1) = 0",
                Show::Seen => " AND (d.inbox & 1) <> 0",
                Show::Unread => " AND (d.inbox & 2) = 0",
                Show::Read => " AND (d.inbox & 2) <> 0",
            });
            if self.msg_type.is_some() {
                s.push_str(&format!(" AND m.msg_type = {}", placeholder()));
            }
            if self.before.is_some() {
                s.push_str(&format!(" AND d.message_seq < {}", placeholder()));
            }
            if self.after.is_some() {
                s.push_str(&format!(" AND d.message_seq > {}", placeholder()));
            }
            s
        }

        /// The values of [`Query::sql`]'s placeholders, in order.
        pub fn sql_params(&self) -> Vec<i64> {
            [self.msg_type, self.before, self.after]
                .into_iter()
                .flatten()
                .collect()
        }
    }
}

/// Listing filters of `GET /api/v1/messages`.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub status: Option<StatusFilter>,
    pub receiver: Option<String>,
    pub sender: Option<String>,
    pub msg_type: Option<i64>,
    pub channel: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// 1-based.
    pub page: u32,
    pub size: u32,
}

impl PageRequest {
    pub fn offset(&self) -> i64 {
        i64::from(self.page.saturating_sub(1)) * i64::from(self.size)
    }
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
}

/// A status change requested by the dispatcher. Applied only if it moves the delivery
/// forward (see [`Status`]).
#[derive(Debug, Clone)]
pub enum StatusChange {
    /// By delivery id (the dispatcher knows it).
    Delivery {
        delivery_id: i64,
        status: Status,
        error: Option<String>,
        count_attempt: bool,
    },
    /// The outcome of an outbox attempt. Applied only if the row is still `pending` and
    /// still held under `lease_until_ms` (a worker whose lease ran out and was taken over
    /// changes nothing). The attempt was counted when the row was claimed.
    Attempt {
        delivery_id: i64,
        lease_until_ms: i64,
        outcome: AttemptOutcome,
    },
    /// A receiver's ack/read of a message on a channel, by public message id. Matches only
    /// that receiver's delivery: an ack for someone else's message changes nothing.
    Receiver {
        message_id: String,
        receiver: String,
        channel: String,
        status: Status,
    },
}

/// The instance name and kind of the built-in WebSocket channel.
pub const WEBSOCKET: &str = "websocket";

/// A recipient's preferences: `{"optOutChannels": ["sms", "email"], "optOutTypes": [3]}`.
/// A channel entry names an instance (`mail`) or a family (`email`: every e-mail instance).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preferences {
    pub opt_out_channels: Vec<String>,
    pub opt_out_types: Vec<i64>,
}

impl Preferences {
    /// The keys a `preferences` object may have.
    pub const KEYS: [&'static str; 2] = ["optOutChannels", "optOutTypes"];

    /// Read from a stored record (validated when it was written; anything else is ignored).
    pub fn of(r: &Recipient) -> Preferences {
        let list = |key: &str| r.preferences.get(key).and_then(|v| v.as_array());
        Preferences {
            opt_out_channels: list("optOutChannels")
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            opt_out_types: list("optOutTypes")
                .map(|a| a.iter().filter_map(serde_json::Value::as_i64).collect())
                .unwrap_or_default(),
        }
    }

    pub fn mutes_type(&self, msg_type: i64) -> bool {
        self.opt_out_types.contains(&msg_type)
    }

    pub fn mutes_channel(&self, instance: &str, family: &str) -> bool {
        self.opt_out_channels
            .iter()
            .any(|c| c == instance || c == family)
    }
}

/// Addresses used by non-WebSocket channels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recipient {
    pub user_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub wechat_open_id: Option<String>,
    /// Registered devices (free-form JSON array until the push channels arrive).
    pub devices: serde_json::Value,
    /// Preferences (free-form JSON object until routing arrives).
    pub preferences: serde_json::Value,
    pub updated_at_ms: i64,
}

/// A registered push device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: i64,
    pub user_id: String,
    /// `fcm`, `apns` or `webpush`.
    pub platform: String,
    pub token: String,
    pub name: Option<String>,
    pub active: bool,
    pub deactivated_at_ms: Option<i64>,
    pub deactivated_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What registering a device did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub device: DeviceRecord,
    /// A new registration (else the same platform + token was known).
    pub created: bool,
    /// It was another user's device and moved to this one: whose it was.
    pub previous_owner: Option<String>,
}

/// A registration request.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub user_id: String,
    pub platform: String,
    pub token: String,
    pub name: Option<String>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 with millisecond precision, UTC (`2026-11-28T17:39:14.123Z`).
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// A fresh public message id.
pub fn new_message_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
            assert_eq!(Status::from_code(s.code()), s);
        }
        assert_eq!(
            "undelivered".parse::<StatusFilter>(),
            Ok(StatusFilter::Undelivered)
        );
        assert!("nope".parse::<StatusFilter>().is_err());
    }

    #[test]
    fn rfc3339_formats_utc_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        let parsed = time::OffsetDateTime::parse(
            &rfc3339(now_ms()),
            &time::format_description::well_known::Rfc3339,
        );
        assert!(parsed.is_ok());
    }

    #[test]
    fn member_ids_round_trip_and_never_collide_with_rows() {
        for (seq, index) in [(1, 0), (1, 1), (7, 9_999), (1 << 38, MAX_AUDIENCE - 1)] {
            let id = member_delivery_id(seq, index);
            assert!(id < 0);
            assert_eq!(decode_member_id(id), Some((seq, index)));
        }
        assert_ne!(member_delivery_id(1, 1), member_delivery_id(2, 0));
        assert_eq!(decode_member_id(0), None);
        assert_eq!(decode_member_id(42), None);
    }

    #[test]
    fn audiences_are_sorted_and_unique() {
        let a = NewAudience::new("websocket", vec!["b".into(), "a".into(), "b".into()], 1, 2);
        assert_eq!(&*a.members, ["a", "b"]);
    }

    #[test]
    fn page_offset() {
        assert_eq!(PageRequest { page: 1, size: 20 }.offset(), 0);
        assert_eq!(PageRequest { page: 3, size: 20 }.offset(), 40);
    }
}

// The stored shape of failover routing; `routing.rs` decides, with these.

/// A validated policy, as stored with a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub policy: PolicyKind,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<i64>,
}

/// Where a failover chain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteState {
    Running = 0,
    /// A step succeeded (or the receiver acked/read the message on some channel).
    Succeeded = 1,
    /// Every step was tried without success.
    Exhausted = 2,
    /// Ended early: the message expired.
    Cancelled = 3,
}

impl RouteState {
    pub fn from_code(c: i64) -> RouteState {
        match c {
            0 => RouteState::Running,
            1 => RouteState::Succeeded,
            2 => RouteState::Exhausted,
            _ => RouteState::Cancelled,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RouteState::Running => "running",
            RouteState::Succeeded => "succeeded",
            RouteState::Exhausted => "exhausted",
            RouteState::Cancelled => "cancelled",
        }
    }
}

/// One entry of a chain's log: what happened at which step, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// RFC 3339.
    pub at: String,
    /// The step's index in the policy (`null` for events of the whole chain).
    pub step: Option<usize>,
    pub channel: Option<String>,
    /// `started`, `skipped`, `failed`, `timeout`, `succeeded`, `acknowledged`, `exhausted`,
    /// `expired`.
    pub event: String,
    pub reason: String,
}

/// A chain's stored progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The current step (`None`: not started yet).
    pub step: Option<usize>,
    pub started_at_ms: Option<i64>,
}
