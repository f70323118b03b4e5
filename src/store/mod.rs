//! Durable storage of messages, deliveries, recipients and idempotency keys.
//!
//! Invariants every backend keeps:
//! * `insert_message` returns only after the message and all its deliveries are committed.
//! * A delivery's status only moves forward (`pending` < `sent` < `delivered` < `read`;
//!   `failed` only from `pending`/`sent`); changes that would move it back are ignored.
//! * A deleted message and its deliveries are gone; nothing can reach them afterwards
//!   (its timers and failover chains go with it).
//! * Presence deliveries held for `sendAt` (`next_attempt_at` set) are invisible to replay,
//!   the inbox and collect until released.
//! * A delivery's status change makes its receiver's running failover chain due at once,
//!   in the same transaction.
//! * The presence deliveries of a broadcast ([`NewMessage::audience`]) are one compact
//!   record (`audience.rs`); every read answers for its members exactly as it would for
//!   delivery rows (the conformance suite checks both shapes side by side).
//! * A write that was not committed is never reported as done: when the database cannot
//!   write (disk full, I/O error, lost connection), operations fail with
//!   [`StoreError::Unavailable`] until it can again, and [`Store::ready`] says why.
//! * Webhook events are written in the transaction of the change that causes them (by
//!   triggers for rows, routes, devices and messages; by the audience writers for broadcast
//!   members), one per enabled endpoint that wants them, and none when no endpoint does.

use async_trait::async_trait;

use std::collections::HashMap;

use crate::model::webhook::{Attempt, AttemptRecord, Backlog, Claimed, Endpoint, Redeliver};
use crate::model::{
    inbox, ClaimResult, DeviceRecord, InboxItem, Inserted, Message, MessageFilter, NewDevice,
    NewMessage, OutboxMessage, Page, PageRequest, QuotaClaim, Recipient, Registered, RouteAdvance,
    StatusChange, Timer,
};

pub mod audience;
mod health;
pub mod postgres;
pub(crate) mod rows;
pub mod sqlite;

pub use health::Health;

/// Apply the migrations of the database at `url` (`sqlite://…` or `postgres://…`) and
/// return (`herald migrate`).
pub async fn migrate_only(url: &str) -> Result<(), StoreError> {
    if postgres::is_postgres_url(url) {
        postgres::PgStore::migrate_only(url).await
    } else {
        sqlite::SqliteStore::migrate_only(url).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The SQLite writer's own driver.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the store is shut down")]
    Closed,
    #[error("unexpected data in the store: {0}")]
    Corrupt(String),
    /// The database cannot take writes now (disk full, I/O error, lost connection, a
    /// statement timeout). Nothing of the failed operation was stored; retry later.
    #[error("the database cannot write: {0}")]
    Unavailable(String),
    /// More writes are queued than the store takes (admission control): nothing was
    /// stored; retry after a moment.
    #[error("the store is overloaded: {0}")]
    Overloaded(&'static str),
}

impl StoreError {
    /// The operation may succeed if tried again later (nothing was stored): the API answers
    /// `503` with `Retry-After` (this many seconds).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            StoreError::Overloaded(_) => Some(1),
            StoreError::Unavailable(_) | StoreError::Closed => Some(5),
            StoreError::Database(e) if is_transient(e) => Some(2),
            _ => None,
        }
    }
}

/// sqlx errors that say "the database is not reachable now" rather than "this operation is
/// wrong": connection and pool trouble, I/O.
pub fn is_transient(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    )
}

/// How many deliveries a listing shows per message (a broadcast may have thousands; the
/// message's own `GET` shows them all).
pub const LIST_DELIVERIES_PER_MESSAGE: usize = 100;

/// Outbox rows of one channel instance that are still `pending`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Waiting for their first attempt, for a retry, or in flight.
    pub pending: i64,
    /// Of those, deliveries that were attempted at least once.
    pub retrying: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Store a message and its deliveries atomically (and its idempotency key, if any).
    async fn insert_message(&self, msg: NewMessage) -> Result<Inserted, StoreError>;

    /// A message with all its deliveries.
    async fn get_message(&self, id: &str) -> Result<Option<Message>, StoreError>;

    /// Newest first; at most `deliveries_per_message` deliveries per message (the counts are
    /// complete).
    async fn list_messages(
        &self,
        filter: &MessageFilter,
        page: PageRequest,
        deliveries_per_message: usize,
    ) -> Result<Page<Message>, StoreError>;

    /// Delete a message and its deliveries. `false` when it did not exist.
    async fn delete_message(&self, id: &str) -> Result<bool, StoreError>;

    /// Undelivered (`pending`/`sent`) messages of `receiver` on `channel` with
    /// `seq > after_seq`, oldest first.
    async fn undelivered(
        &self,
        receiver: &str,
        channel: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError>;

    /// Every receiver with at least one undelivered delivery on `channel` (start-up).
    async fn receivers_with_undelivered(&self, channel: &str) -> Result<Vec<String>, StoreError>;

    /// A page of `receiver`'s inbox (its visible `websocket` entries, docs/api.md §6),
    /// newest first, with the total of entries matching the query.
    async fn inbox_entries(
        &self,
        receiver: &str,
        query: &inbox::Query,
    ) -> Result<Page<InboxItem>, StoreError>;

    /// `receiver`'s inbox counts (entries not archived): maintained counters, plus its
    /// broadcast entries that have no row of their own.
    async fn inbox_counts(&self, receiver: &str) -> Result<inbox::Counts, StoreError>;

    /// Change the inbox state of `receiver`'s entries in one transaction. With ids, every
    /// one must be an entry of this receiver's inbox, or nothing changes
    /// ([`inbox::Marked::Unknown`]). Ops that imply a status (`seen`, `read`, `ack`) move
    /// the delivery forward in the same statement.
    async fn inbox_mark(
        &self,
        receiver: &str,
        op: inbox::Op,
        target: inbox::Target,
    ) -> Result<inbox::Marked, StoreError>;

    /// Retention: delete up to `limit` inbox entries of messages created before
    /// `cutoff_ms` that are read, archived or deleted (every one with `include_unread`).
    /// How many went; call again while it is `limit`.
    async fn inbox_prune(
        &self,
        cutoff_ms: i64,
        include_unread: bool,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// Atomically take up to `limit` undelivered messages (oldest first) and mark them
    /// `delivered`.
    async fn collect(
        &self,
        receiver: &str,
        channel: &str,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError>;

    /// Apply status changes in one transaction (forward moves only). The answer says, per
    /// change, whether it moved a delivery's status (metrics count only real transitions).
    async fn apply_status(&self, changes: Vec<StatusChange>) -> Result<Vec<bool>, StoreError>;

    /// Create or replace a recipient. `true` when it was created.
    async fn put_recipient(&self, recipient: Recipient) -> Result<bool, StoreError>;
    async fn get_recipient(&self, user_id: &str) -> Result<Option<Recipient>, StoreError>;
    async fn delete_recipient(&self, user_id: &str) -> Result<bool, StoreError>;

    /// Lease up to `limit` due outbox deliveries of `channel` until `lease_until_ms`
    /// (counting an attempt for each). Oldest due first. With a quota, at most what is left
    /// of it in the window, and the claims count against it in the same transaction.
    async fn claim_due(
        &self,
        channel: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
        quota: Option<QuotaClaim>,
    ) -> Result<ClaimResult, StoreError>;

    /// Claims counted against `channel`'s quota in the window starting at `window_start_ms`.
    async fn quota_used(&self, channel: &str, window_start_ms: i64) -> Result<u64, StoreError>;

    /// The channel instance of a delivery.
    async fn delivery_channel(&self, delivery_id: i64) -> Result<Option<String>, StoreError>;

    /// The delivery of `channel` the provider knows as `provider_id`.
    async fn delivery_by_provider_id(
        &self,
        channel: &str,
        provider_id: &str,
    ) -> Result<Option<i64>, StoreError>;

    /// How many outbox deliveries of `channel` are due at `now_ms` (counting stops at `limit`).
    async fn count_due(&self, channel: &str, now_ms: i64, limit: u32) -> Result<u32, StoreError>;

    /// When the next outbox delivery of `channel` is due (leased rows: when the lease ends).
    async fn next_due(&self, channel: &str) -> Result<Option<i64>, StoreError>;

    /// Outbox rows still pending, per channel instance.
    async fn outbox_counts(&self) -> Result<HashMap<String, OutboxCounts>, StoreError>;

    /// The messages (by `seq`) of claimed deliveries; deleted ones are absent.
    async fn outbox_messages(&self, seqs: &[i64]) -> Result<Vec<OutboxMessage>, StoreError>;

    /// Some recipient has non-empty preferences (opt-outs must be checked on sends).
    async fn any_preferences(&self) -> Result<bool, StoreError>;

    /// Register a device (idempotent: the same platform and token is the same row, moved
    /// to this user and reactivated). A device that moves from another user takes the new
    /// registration's name (the old owner's label must not travel with it).
    async fn register_device(&self, device: NewDevice) -> Result<Registered, StoreError>;

    /// A user's devices, active and deactivated, oldest first.
    async fn list_devices(&self, user_id: &str) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Delete one of a user's devices. `false` when it is not theirs or does not exist.
    async fn delete_device(&self, user_id: &str, device_id: i64) -> Result<bool, StoreError>;

    /// The active devices of `user_id` on `platform`: (id, token).
    async fn active_devices(
        &self,
        user_id: &str,
        platform: &str,
    ) -> Result<Vec<(i64, String)>, StoreError>;

    /// Deactivate devices a provider reported gone: (device id, reason).
    async fn deactivate_devices(&self, dead: Vec<(i64, String)>) -> Result<u64, StoreError>;

    /// A WebSocket session opened (`since_ms`: before it was registered, wall clock). The
    /// history index: broadcasts taken while a receiver's session was open are found for it
    /// (inbox, `?receiver=`). Ordered before any write queued after it returns.
    async fn presence_open(
        &self,
        session: &str,
        receiver: &str,
        node: &str,
        since_ms: i64,
    ) -> Result<(), StoreError>;

    /// The session closed (`until_ms`: after it was unregistered).
    async fn presence_close(&self, session: &str, until_ms: i64) -> Result<(), StoreError>;

    /// Close every session of `node` still recorded as open (its process died): at start,
    /// and when a cluster node is found dead.
    async fn presence_close_node(&self, node: &str, until_ms: i64) -> Result<u64, StoreError>;

    /// A spill timer fired: members of the message's audience that are still undelivered
    /// get delivery rows of their own (so the audience is no longer scanned on connect),
    /// and the timer is dropped — if the lease still holds (`None` otherwise). Returns how
    /// many members were spilled.
    async fn spill_audience(&self, timer: &Timer, now_ms: i64) -> Result<Option<u64>, StoreError>;

    /// Undelivered, released deliveries of `receiver` on `channel`: how many, and the
    /// highest message `seq` among them (what a connecting session will replay).
    async fn count_undelivered(
        &self,
        receiver: &str,
        channel: &str,
    ) -> Result<(u64, i64), StoreError>;

    /// Lease up to `limit` due timers until `lease_until_ms` (the lease end becomes their
    /// due time, as in the outbox). Oldest due first.
    async fn claim_timers(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<Timer>, StoreError>;

    /// When the next timer is due.
    async fn next_timer_due(&self) -> Result<Option<i64>, StoreError>;

    /// A release timer fired: un-hold the message's pending deliveries on the `presence`
    /// channels and drop the timer, if the lease still holds (`None` otherwise). Returns
    /// the released deliveries: (id, receiver, channel).
    async fn release_held(
        &self,
        timer: &Timer,
        presence: &[String],
    ) -> Result<Option<Vec<(i64, String, String)>>, StoreError>;

    /// An expire timer fired: fail the message's `pending` deliveries (and `sent` ones on
    /// `presence` channels, which would be replayed) with `expired`, end its running
    /// chains, drop the timer. `None` when the lease was lost; else how many deliveries
    /// expired per channel.
    async fn expire_message(
        &self,
        timer: &Timer,
        presence: &[String],
        now_ms: i64,
    ) -> Result<Option<Vec<(String, u64)>>, StoreError>;

    /// A receiver's deliveries of a message (a failover chain's steps so far).
    async fn receiver_deliveries(
        &self,
        message_seq: i64,
        receiver: &str,
    ) -> Result<Vec<crate::model::Delivery>, StoreError>;

    /// Store a chain's evaluation in one transaction, if its lease still holds (`None`
    /// otherwise): progress, log entries, new deliveries (their ids are returned),
    /// superseded ones.
    async fn advance_route(&self, advance: RouteAdvance) -> Result<Option<Vec<i64>>, StoreError>;

    // --- Webhooks (docs/webhooks.md) ---

    /// Store a new endpoint; `false` when its id exists.
    async fn webhook_create(&self, ep: Endpoint) -> Result<bool, StoreError>;

    /// Replace an endpoint's settable fields (url, description, events, filters); `false`
    /// when there is none. Secrets, state and source are left alone.
    async fn webhook_update(&self, ep: Endpoint) -> Result<bool, StoreError>;

    /// Enable (clearing the failure streak and reason) or disable with a reason.
    async fn webhook_set_enabled(
        &self,
        id: &str,
        enabled: bool,
        reason: Option<String>,
    ) -> Result<bool, StoreError>;

    /// A new secret; the current one keeps signing until `old_until_ms`.
    async fn webhook_rotate(
        &self,
        id: &str,
        secret: crate::config::Secret,
        old_until_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Delete an endpoint and its events.
    async fn webhook_delete(&self, id: &str) -> Result<bool, StoreError>;

    /// Make the `[[webhooks]]` endpoints exactly `eps`: insert or update them (keeping
    /// their state and events), delete config endpoints no longer listed.
    async fn webhook_sync_config(&self, eps: Vec<Endpoint>) -> Result<(), StoreError>;

    async fn webhook_get(&self, id: &str) -> Result<Option<Endpoint>, StoreError>;

    /// Every endpoint, by id.
    async fn webhook_list(&self) -> Result<Vec<Endpoint>, StoreError>;

    /// Pending and failed events per endpoint.
    async fn webhook_backlog(&self) -> Result<HashMap<String, Backlog>, StoreError>;

    /// Whether some enabled endpoint has an event due at `now_ms` (a read, so an idle
    /// worker does not write).
    async fn webhook_any_due(&self, now_ms: i64) -> Result<bool, StoreError>;

    /// Lease up to `n` due events of each endpoint in `wants`, oldest first, never one
    /// while an earlier event of the endpoint with its ordering key (its delivery, chain or
    /// message) or its message's own key is pending (docs/webhooks.md §1). Counts the
    /// attempt.
    async fn webhook_claim(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        wants: Vec<(String, u32)>,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Record finished attempts (fenced by their lease) and the endpoints' failure
    /// streaks; an endpoint failing since before `disable_before_ms` is disabled. Returns
    /// the endpoints disabled now.
    async fn webhook_complete(
        &self,
        attempts: Vec<Attempt>,
        disable_before_ms: i64,
    ) -> Result<Vec<String>, StoreError>;

    /// An endpoint's attempts, newest first, with ids below `before` if given.
    async fn webhook_attempts(
        &self,
        endpoint_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AttemptRecord>, StoreError>;

    /// Make events of an endpoint pending and due now again: how many.
    async fn webhook_redeliver(
        &self,
        endpoint_id: &str,
        what: Redeliver,
    ) -> Result<u64, StoreError>;

    /// Delete up to `limit` delivered or failed events last changed before `cutoff_ms`,
    /// with their attempts: how many.
    async fn webhook_prune(&self, cutoff_ms: i64, limit: u32) -> Result<u64, StoreError>;

    /// The database answers, the migrations are applied and writes succeed (an
    /// `Unavailable` error says why not, e.g. "disk full").
    async fn ready(&self) -> Result<(), StoreError>;

    /// Writes waiting for the database (`/metrics`); 0 where there is no queue.
    fn queued_writes(&self) -> usize {
        0
    }

    /// Flush pending writes and close connections.
    async fn close(&self);
}

#[cfg(test)]
pub mod conformance;
