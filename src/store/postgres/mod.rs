//! PostgreSQL store (cluster mode: several nodes share one database).
//!
//! There is no single writer here: every operation is its own transaction on a pooled
//! connection (`database.max_connections`), and what SQLite gets from having one writer,
//! PostgreSQL gets from row locks. Transactions run at READ COMMITTED (the default); each
//! statement below re-checks its conditions on a row's latest committed version once it
//! holds the row's lock, which is what makes them safe across nodes:
//! * **Claims** (`claim_due`, `claim_timers`) pick rows in a materialized CTE with
//!   `FOR UPDATE SKIP LOCKED` and move their due time to the lease end in the same
//!   statement, so nodes claiming at once never take the same row (and never wait for
//!   each other).
//! * **Quotas**: the window's `quota_usage` row is created if missing
//!   (`ON CONFLICT DO NOTHING`) and locked (`SELECT … FOR UPDATE`) before the claim that
//!   counts against it, so concurrent claims of one channel queue on that row and never
//!   overspend.
//! * **Idempotency keys** are inserted first, with `ON CONFLICT`: of two inserts racing
//!   on one key, the second waits for the first to commit and then answers
//!   `Existing`/`KeyConflict` (an expired key is taken over in the same statement).
//! * **Fenced writes**: the scheduler's (`release_held`, `expire_message`,
//!   `spill_audience`, `advance_route`) lock their timer row with `SELECT … FOR UPDATE`
//!   and check the lease before changing anything; an outbox `Attempt` outcome checks its
//!   lease in the `UPDATE`'s own `WHERE` (an atomic check-and-set on the locked row).
//! * **Compact audiences** (`audiences.rs`): a broadcast's members are one `audiences`
//!   row. A transaction that changes members locks the row (`SELECT … FOR UPDATE`),
//!   applies every change of its batch in memory and writes the row once, so writers on
//!   several nodes queue on it and every change lands exactly once. Spilled members are
//!   changed through their rows.
//! * The trigger `deliveries_route_event` (plpgsql) makes a receiver's running chain due
//!   when one of its deliveries changes status, as on SQLite.
//! * **Webhook events** (`webhooks.rs`, migration 0004): triggers on messages,
//!   deliveries, routes and devices write them in the transaction of the change, through
//!   one fan-out function that the audience writer also calls for members' moves. Claims
//!   skip locked events; outcomes and redelivery lock their endpoints' rows (in id order)
//!   before any event. An event's insert takes a key-share lock on its endpoint (the
//!   foreign key), which only an endpoint's delete waits for.
//! * **Inbox counters** (`inbox.rs`): triggers keep `inbox_counts` in the transaction that
//!   changes a websocket row, so a counter row stays locked until that commits. Writers
//!   that change existing rows lock the counters first (`inbox::lock_counts`); of two
//!   that change one receiver's inbox, the second waits there, before any row.
//!
//! **Lock order.** Writers take what they need in this order, so no two wait for each
//! other in a cycle:
//! 1. the message row, `FOR KEY SHARE`: every fenced write, and status batches and
//!    collects that change an audience. A `DELETE` locks it before its cascade, so a
//!    delete and these writers queue on it instead of meeting in the cascade;
//! 2. the operation's own release, expire or spill timer (the trigger never touches those
//!    kinds);
//! 3. audiences, in `message_seq` order;
//! 4. inbox counters (`inbox_counts`), in receiver order (byte order: `COLLATE "C"`). A
//!    writer that may change whether existing websocket rows count, or how, locks their
//!    receivers' counters before any of those rows: a mark (its one receiver), a status
//!    batch with `read` or `failed` changes, release, expire, a route starting a websocket
//!    step, a message delete (all its websocket receivers, before the cascade) and
//!    retention. Inserts (messages, spills, members given rows) take theirs in the insert
//!    trigger, once per receiver and in receiver order whatever the order of the rows: a
//!    message to many receivers locks its counters in one order, and the new rows are
//!    invisible to every other writer, so none waits for them;
//! 5. deliveries, in id order where one statement locks several;
//! 6. route timers: through the trigger, or `advance_route`'s own after the deliveries it
//!    supersedes.
//!
//! The update trigger then takes counters the writer already holds, in any order; the one
//! path that does not lock them first is a provider attempt's outcome, whose row is an
//! outbox row (never on a presence channel such as `websocket`, so never counted).
//!
//! What remains possible is two writers meeting on *delivery rows* in opposite orders (a
//! status batch updates rows one statement at a time, in batch order; a `DELETE`'s
//! cascade has its own order). PostgreSQL breaks such a deadlock (`40P01`), which
//! surfaces as an ordinary database error: the status writer retries the batch, a claimed
//! timer comes due again when its lease ends. Two writers that both change how one
//! receiver's rows count never get that far: they queue on its counter first.
//!
//! **Failures and overload.** A write is answered `Ok` only after its `COMMIT` returned
//! OK. Database failures (lost connections, a killed backend, disk full, timeouts, a
//! read-only server …) become [`StoreError::Unavailable`] and mark the store failing until
//! a probe write succeeds (`availability.rs`); sends are admitted within bounds and
//! refused with [`StoreError::Overloaded`] beyond them (`admission.rs`).
//!
//! Concerns live in their own files, as on SQLite: `messages.rs` (inserts, status,
//! collect, listings, replay), `audiences.rs` (compact broadcast records), `inbox.rs` (the
//! notification center: listings, counts, marks, retention), `outbox.rs`,
//! `devices.rs` (recipients, devices, presence records), `timers.rs`, `webhooks.rs`
//! (endpoints, event claims and outcomes), `availability.rs` and `admission.rs`. Row
//! mappers, column lists and the listing filter are shared with SQLite (`store/rows.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};

use super::audience::{MembersCache, PRESENCE_SLACK_MS};
use super::{OutboxCounts, Store, StoreError};
use crate::config::{DatabaseSettings, Secret};
use crate::model::webhook::{Attempt, AttemptRecord, Backlog, Claimed, Endpoint, Redeliver};
use crate::model::{
    inbox as inbox_model, now_ms, ClaimResult, Delivery, DeviceRecord, InboxItem, Inserted,
    Message, MessageFilter, NewDevice, NewMessage, OutboxMessage, Page, PageRequest, QuotaClaim,
    Recipient, Registered, RouteAdvance, StatusChange, Timer,
};
use admission::Admission;
use availability::Availability;
use messages::IDEMPOTENCY_TTL_MS;

mod admission;
mod audiences;
mod availability;
mod devices;
mod inbox;
mod messages;
mod outbox;
mod timers;
mod webhooks;

#[cfg(all(test, feature = "service-tests"))]
mod tests;

/// sqlx's PostgreSQL migrator holds an advisory lock (`pg_advisory_lock`) while it runs, so
/// nodes starting at once apply each migration once: the others wait, then find it applied.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How often expired idempotency keys and old presence records are pruned (by whichever
/// node inserts then).
const PRUNE_EVERY_MS: i64 = 3600 * 1000;

/// Bytes of member lists kept parsed (broadcasts being acked, replayed or listed).
const MEMBERS_CACHE_BYTES: usize = 32 << 20;

pub use crate::config::is_postgres_url;

pub struct PgStore {
    pool: PgPool,
    /// Whether the database takes writes, and the probe that finds out when it does again.
    avail: Availability,
    /// Admission control for sends.
    admission: Admission,
    /// Audience member lists (immutable), shared by this node's readers and writers.
    members: Arc<MembersCache>,
    /// When this node last pruned expired idempotency keys (ms).
    last_prune: AtomicI64,
}

impl PgStore {
    /// Connect, migrate (once across nodes: see [`MIGRATOR`]) and prune expired keys.
    pub async fn open(url: &str, settings: &DatabaseSettings) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        let now = now_ms();
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(now - IDEMPOTENCY_TTL_MS)
            .execute(&pool)
            .await?;
        Ok(PgStore {
            avail: Availability::start(pool.clone()),
            admission: Admission::new(settings),
            pool,
            members: Arc::new(MembersCache::new(MEMBERS_CACHE_BYTES)),
            last_prune: AtomicI64::new(now),
        })
    }

    /// Migrate the database at `url` and return.
    pub async fn migrate_only(url: &str) -> Result<(), StoreError> {
        let mut conn = PgConnection::connect(url).await?;
        MIGRATOR.run(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// A write: database failures become `Unavailable` and mark the store failing (see
    /// `availability.rs`).
    async fn write<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        op.await.map_err(|e| self.avail.write_failed(e))
    }

    /// Prune expired idempotency keys, and presence records no audience can need any more,
    /// about hourly, in the background (the writer thread does this on SQLite; here any node
    /// that inserts may, and concurrent prunes are harmless).
    fn maybe_prune(&self, now: i64) {
        let last = self.last_prune.load(Ordering::Relaxed);
        if now - last < PRUNE_EVERY_MS
            || self
                .last_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let keys = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(now - IDEMPOTENCY_TTL_MS)
                .execute(&pool);
            let presence = sqlx::query(
                "DELETE FROM presence WHERE until IS NOT NULL \
                   AND until < COALESCE((SELECT min(taken_at) FROM audiences), $1) - $2",
            )
            .bind(now)
            .bind(PRESENCE_SLACK_MS)
            .execute(&pool);
            if let Err(e) = async { keys.await.and(presence.await) }.await {
                tracing::warn!(error = %e, "pruning idempotency keys and presence records failed");
            }
        });
    }
}

#[async_trait]
impl Store for PgStore {
    async fn insert_message(&self, msg: NewMessage) -> Result<Inserted, StoreError> {
        if let Some(reason) = self.avail.health.failing() {
            return Err(StoreError::Unavailable(reason));
        }
        let stored = async {
            let mut admitted = self
                .admission
                .admit(&self.pool, admission::footprint(&msg))
                .await?;
            let now = now_ms();
            self.maybe_prune(now);
            let mut tx = admitted.conn.begin().await?;
            let (inserted, members) = messages::insert(&mut tx, &msg, now).await?;
            if let Inserted::New { seq, .. } = inserted {
                tx.commit().await?;
                if let Some(m) = members {
                    self.members.insert(seq, Arc::new(m));
                }
            }
            // Otherwise nothing was written: dropping `tx` rolls back (and frees the key).
            Ok(inserted)
        };
        match stored.await {
            Ok(inserted) => {
                if matches!(inserted, Inserted::New { .. }) {
                    self.avail.health.ok(); // a committed insert: writing works
                }
                Ok(inserted)
            }
            Err(e) => Err(self.avail.write_failed(e)),
        }
    }

    async fn get_message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        read(self.read_message(id)).await
    }

    async fn list_messages(
        &self,
        filter: &MessageFilter,
        page: PageRequest,
        deliveries_per_message: usize,
    ) -> Result<Page<Message>, StoreError> {
        read(self.read_list(filter, page, deliveries_per_message)).await
    }

    async fn delete_message(&self, id: &str) -> Result<bool, StoreError> {
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let deleted = messages::delete(&mut tx, id).await?;
            tx.commit().await?;
            Ok(deleted)
        })
        .await
    }

    async fn undelivered(
        &self,
        receiver: &str,
        channel: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError> {
        read(self.read_undelivered(receiver, channel, after_seq, limit)).await
    }

    async fn receivers_with_undelivered(&self, channel: &str) -> Result<Vec<String>, StoreError> {
        read(self.read_receivers_with_undelivered(channel)).await
    }

    async fn inbox_entries(
        &self,
        receiver: &str,
        query: &inbox_model::Query,
    ) -> Result<Page<InboxItem>, StoreError> {
        read(self.read_inbox_entries(receiver, query)).await
    }

    async fn inbox_counts(&self, receiver: &str) -> Result<inbox_model::Counts, StoreError> {
        read(self.read_inbox_counts(receiver)).await
    }

    async fn inbox_mark(
        &self,
        receiver: &str,
        op: inbox_model::Op,
        target: inbox_model::Target,
    ) -> Result<inbox_model::Marked, StoreError> {
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let marked =
                inbox::mark(&mut tx, &self.members, receiver, op, &target, now_ms()).await?;
            if matches!(marked, inbox_model::Marked::Done { .. }) {
                tx.commit().await?;
            }
            // Unknown ids: nothing changes (dropping `tx` rolls back).
            Ok(marked)
        })
        .await
    }

    async fn inbox_prune(
        &self,
        cutoff_ms: i64,
        include_unread: bool,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            let Some(last) = inbox::last_before(&mut conn, cutoff_ms).await? else {
                return Ok(0);
            };
            let mut tx = conn.begin().await?;
            let mut n = inbox::prune_rows(&mut tx, last, cutoff_ms, include_unread, limit).await?;
            tx.commit().await?;
            if include_unread && n < u64::from(limit) {
                // Whole audiences in a transaction of their own: audiences come before the
                // counters the rows' delete held (lock order).
                let mut tx = conn.begin().await?;
                let gone =
                    inbox::prune_audiences(&mut tx, last, cutoff_ms, u64::from(limit) - n).await?;
                tx.commit().await?;
                for seq in &gone {
                    self.members.remove(*seq);
                }
                n += gone.len() as u64;
            }
            Ok(n)
        })
        .await
    }

    async fn collect(
        &self,
        receiver: &str,
        channel: &str,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError> {
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let items =
                messages::collect(&mut tx, &self.members, receiver, channel, limit, now_ms())
                    .await?;
            tx.commit().await?;
            Ok(items)
        })
        .await
    }

    async fn apply_status(&self, changes: Vec<StatusChange>) -> Result<Vec<bool>, StoreError> {
        if changes.is_empty() {
            return Ok(vec![]);
        }
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let applied =
                messages::apply_status(&mut tx, &self.members, &changes, now_ms()).await?;
            tx.commit().await?;
            Ok(applied)
        })
        .await
    }

    async fn put_recipient(&self, recipient: Recipient) -> Result<bool, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            devices::put_recipient(&mut conn, &recipient, now_ms()).await
        })
        .await
    }

    async fn get_recipient(&self, user_id: &str) -> Result<Option<Recipient>, StoreError> {
        read(self.read_recipient(user_id)).await
    }

    async fn delete_recipient(&self, user_id: &str) -> Result<bool, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            devices::delete_recipient(&mut conn, user_id).await
        })
        .await
    }

    async fn claim_due(
        &self,
        channel: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
        quota: Option<QuotaClaim>,
    ) -> Result<ClaimResult, StoreError> {
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let claimed =
                outbox::claim(&mut tx, channel, now_ms, lease_until_ms, limit, quota).await?;
            tx.commit().await?;
            Ok(claimed)
        })
        .await
    }

    async fn quota_used(&self, channel: &str, window_start_ms: i64) -> Result<u64, StoreError> {
        read(self.read_quota_used(channel, window_start_ms)).await
    }

    async fn delivery_channel(&self, delivery_id: i64) -> Result<Option<String>, StoreError> {
        read(self.read_delivery_channel(delivery_id)).await
    }

    async fn delivery_by_provider_id(
        &self,
        channel: &str,
        provider_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        read(self.read_delivery_by_provider_id(channel, provider_id)).await
    }

    async fn count_due(&self, channel: &str, now_ms: i64, limit: u32) -> Result<u32, StoreError> {
        read(self.read_count_due(channel, now_ms, limit)).await
    }

    async fn next_due(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        read(self.read_next_due(channel)).await
    }

    async fn outbox_counts(&self) -> Result<HashMap<String, OutboxCounts>, StoreError> {
        read(self.read_outbox_counts()).await
    }

    async fn outbox_messages(&self, seqs: &[i64]) -> Result<Vec<OutboxMessage>, StoreError> {
        read(self.read_outbox_messages(seqs)).await
    }

    async fn any_preferences(&self) -> Result<bool, StoreError> {
        read(self.read_any_preferences()).await
    }

    async fn register_device(&self, device: NewDevice) -> Result<Registered, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            devices::register_device(&mut conn, &device, now_ms()).await
        })
        .await
    }

    async fn list_devices(&self, user_id: &str) -> Result<Vec<DeviceRecord>, StoreError> {
        read(self.read_devices(user_id)).await
    }

    async fn delete_device(&self, user_id: &str, device_id: i64) -> Result<bool, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            devices::delete_device(&mut conn, user_id, device_id).await
        })
        .await
    }

    async fn active_devices(
        &self,
        user_id: &str,
        platform: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        read(self.read_active_devices(user_id, platform)).await
    }

    async fn deactivate_devices(&self, dead: Vec<(i64, String)>) -> Result<u64, StoreError> {
        if dead.is_empty() {
            return Ok(0);
        }
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            devices::deactivate_devices(&mut conn, &dead, now_ms()).await
        })
        .await
    }

    async fn presence_open(
        &self,
        session: &str,
        receiver: &str,
        node: &str,
        since_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            devices::presence_open(&mut conn, session, receiver, node, since_ms).await
        })
        .await
    }

    async fn presence_close(&self, session: &str, until_ms: i64) -> Result<(), StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            devices::presence_close(&mut conn, session, until_ms).await
        })
        .await
    }

    async fn presence_close_node(&self, node: &str, until_ms: i64) -> Result<u64, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            devices::presence_close_node(&mut conn, node, until_ms).await
        })
        .await
    }

    async fn spill_audience(&self, timer: &Timer, _now_ms: i64) -> Result<Option<u64>, StoreError> {
        // Member times are wall clock (as on SQLite, where the writer's clock is used).
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let spilled = timers::spill(&mut tx, &self.members, timer, now_ms()).await?;
            if spilled.is_some() {
                tx.commit().await?;
            }
            Ok(spilled)
        })
        .await
    }

    async fn count_undelivered(
        &self,
        receiver: &str,
        channel: &str,
    ) -> Result<(u64, i64), StoreError> {
        read(self.read_count_undelivered(receiver, channel)).await
    }

    async fn claim_timers(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<Timer>, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            timers::claim(&mut conn, now_ms, lease_until_ms, limit).await
        })
        .await
    }

    async fn next_timer_due(&self) -> Result<Option<i64>, StoreError> {
        read(async {
            Ok(
                sqlx::query("SELECT min(due_at) FROM schedule WHERE due_at IS NOT NULL")
                    .fetch_one(&self.pool)
                    .await?
                    .try_get(0)?,
            )
        })
        .await
    }

    async fn release_held(
        &self,
        timer: &Timer,
        presence: &[String],
    ) -> Result<Option<Vec<(i64, String, String)>>, StoreError> {
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let released = timers::release(&mut tx, timer, presence, now_ms()).await?;
            if released.is_some() {
                tx.commit().await?;
            }
            Ok(released)
        })
        .await
    }

    async fn expire_message(
        &self,
        timer: &Timer,
        presence: &[String],
        now_ms: i64,
    ) -> Result<Option<Vec<(String, u64)>>, StoreError> {
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let expired = timers::expire(&mut tx, &self.members, timer, presence, now_ms).await?;
            if expired.is_some() {
                tx.commit().await?;
            }
            Ok(expired)
        })
        .await
    }

    async fn receiver_deliveries(
        &self,
        message_seq: i64,
        receiver: &str,
    ) -> Result<Vec<Delivery>, StoreError> {
        read(async {
            sqlx::query(&format!(
                "SELECT {} FROM deliveries WHERE message_seq = $1 AND receiver = $2 ORDER BY id",
                super::rows::DELIVERY_COLUMNS
            ))
            .bind(message_seq)
            .bind(receiver)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(super::rows::delivery)
            .collect()
        })
        .await
    }

    async fn advance_route(&self, advance: RouteAdvance) -> Result<Option<Vec<i64>>, StoreError> {
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let ids = timers::advance(&mut tx, &advance).await?;
            if ids.is_some() {
                tx.commit().await?;
            }
            Ok(ids)
        })
        .await
    }

    async fn webhook_create(&self, ep: Endpoint) -> Result<bool, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            webhooks::create(&mut conn, &ep, now_ms()).await
        })
        .await
    }

    async fn webhook_update(&self, ep: Endpoint) -> Result<bool, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            webhooks::update(&mut conn, &ep, now_ms()).await
        })
        .await
    }

    async fn webhook_set_enabled(
        &self,
        id: &str,
        enabled: bool,
        reason: Option<String>,
    ) -> Result<bool, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            webhooks::set_enabled(&mut conn, id, enabled, reason.as_deref(), now_ms()).await
        })
        .await
    }

    async fn webhook_rotate(
        &self,
        id: &str,
        secret: Secret,
        old_until_ms: i64,
    ) -> Result<bool, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            webhooks::rotate(&mut conn, id, &secret, old_until_ms, now_ms()).await
        })
        .await
    }

    async fn webhook_delete(&self, id: &str) -> Result<bool, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            webhooks::delete(&mut conn, id).await
        })
        .await
    }

    async fn webhook_sync_config(&self, eps: Vec<Endpoint>) -> Result<(), StoreError> {
        self.write(async {
            let mut tx = self.pool.begin().await?;
            webhooks::sync_config(&mut tx, &eps, now_ms()).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn webhook_get(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        read(self.read_webhook(id)).await
    }

    async fn webhook_list(&self) -> Result<Vec<Endpoint>, StoreError> {
        read(self.read_webhooks()).await
    }

    async fn webhook_backlog(&self) -> Result<HashMap<String, Backlog>, StoreError> {
        read(self.read_webhook_backlog()).await
    }

    async fn webhook_any_due(&self, now_ms: i64) -> Result<bool, StoreError> {
        read(self.read_webhook_due(now_ms)).await
    }

    async fn webhook_claim(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        wants: Vec<(String, u32)>,
    ) -> Result<Vec<Claimed>, StoreError> {
        if wants.iter().all(|(_, n)| *n == 0) {
            return Ok(Vec::new());
        }
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let claimed = webhooks::claim(&mut tx, now_ms, lease_until_ms, &wants).await?;
            tx.commit().await?;
            Ok(claimed)
        })
        .await
    }

    async fn webhook_complete(
        &self,
        attempts: Vec<Attempt>,
        disable_before_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        if attempts.is_empty() {
            return Ok(Vec::new());
        }
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let disabled =
                webhooks::complete(&mut tx, &attempts, disable_before_ms, now_ms()).await?;
            tx.commit().await?;
            Ok(disabled)
        })
        .await
    }

    async fn webhook_attempts(
        &self,
        endpoint_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        read(self.read_webhook_attempts(endpoint_id, before, limit)).await
    }

    async fn webhook_redeliver(
        &self,
        endpoint_id: &str,
        what: Redeliver,
    ) -> Result<u64, StoreError> {
        self.write(async {
            let mut tx = self.pool.begin().await?;
            let n = webhooks::redeliver(&mut tx, endpoint_id, what, now_ms()).await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
    }

    async fn webhook_prune(&self, cutoff_ms: i64, limit: u32) -> Result<u64, StoreError> {
        self.write(async {
            let mut conn = self.pool.acquire().await?;
            webhooks::prune(&mut conn, cutoff_ms, limit).await
        })
        .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if let Some(reason) = self.avail.health.failing() {
            return Err(StoreError::Unavailable(reason));
        }
        // A failure here is recorded like a write's: an idle node notices a database that
        // went away, and the probe takes over.
        let applied: i64 = self
            .write(async {
                Ok(
                    sqlx::query("SELECT count(*) FROM _sqlx_migrations WHERE success")
                        .fetch_one(&self.pool)
                        .await?
                        .try_get(0)?,
                )
            })
            .await?;
        let expected = MIGRATOR.iter().count() as i64;
        if applied < expected {
            return Err(StoreError::Corrupt(format!(
                "{applied} of {expected} migrations applied"
            )));
        }
        Ok(())
    }

    fn queued_writes(&self) -> usize {
        self.admission.queued()
    }

    async fn close(&self) {
        // Every operation finished its own transaction before answering: nothing is queued.
        self.avail.stop();
        self.pool.close().await;
    }
}

/// A read: database failures become `Unavailable` (not recorded: writes and `ready()`
/// record them).
async fn read<T>(op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    op.await.map_err(|e| availability::classify(e).0)
}
