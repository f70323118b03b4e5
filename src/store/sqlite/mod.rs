//! SQLite store (the embedded default).
//!
//! * **Writes** go to one writer thread ([`writer`]): a synchronous rusqlite connection
//!   that commits every queued job in one transaction (group commit) and answers only after
//!   `COMMIT` returned OK — never after a failed one (disk full, I/O error: see
//!   `writer.rs`).
//! * **Reads** go through a pool of read-only sqlx connections beside it (WAL mode).
//! * Concerns live in their own files: `messages.rs` (inserts, status, collect, listings,
//!   replay), `audiences.rs` (compact broadcast records), `outbox.rs`, `devices.rs`
//!   (recipients, devices, presence records) and `timers.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};

use super::audience::MembersCache;
use super::{OutboxCounts, Store, StoreError};
use crate::config::{DatabaseSettings, Secret, Synchronous};
use crate::model::webhook::{Attempt, AttemptRecord, Backlog, Claimed, Endpoint, Redeliver};
use crate::model::{
    inbox as inbox_model, ClaimResult, Delivery, DeviceRecord, InboxItem, Inserted, Message,
    MessageFilter, NewDevice, NewMessage, OutboxMessage, Page, PageRequest, QuotaClaim, Recipient,
    Registered, RouteAdvance, StatusChange, Timer,
};

mod audiences;
mod devices;
mod inbox;
mod messages;
mod outbox;
mod timers;
mod webhooks;
mod writer;

#[cfg(test)]
mod tests;

use writer::Writer;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Bytes of member lists the readers keep parsed (broadcasts being replayed or listed).
const MEMBERS_CACHE_BYTES: usize = 32 << 20;

pub struct SqliteStore {
    writer: Writer,
    readers: SqlitePool,
    members: Arc<MembersCache>,
}

/// The file of a `sqlite://FILE` URL.
fn path_of(url: &str) -> Result<PathBuf, StoreError> {
    let rest = url.strip_prefix("sqlite:").unwrap_or(url);
    let rest = rest.trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::Corrupt(format!(
            "`{url}`: SQLite needs a database file"
        )));
    }
    Ok(PathBuf::from(path))
}

impl SqliteStore {
    /// Open (creating the file, mode 0600, if needed), migrate, and start the writer.
    pub async fn open(url: &str, settings: &DatabaseSettings) -> Result<SqliteStore, StoreError> {
        let path = path_of(url)?;
        create_private(&path)?;
        // Migrations through sqlx's migrator (the `_sqlx_migrations` table of every
        // existing database), on a connection of its own, closed before the writer opens.
        let mut conn = SqliteConnection::connect_with(&base_options(&path)).await?;
        MIGRATOR.run(&mut conn).await?;
        conn.close().await?;

        let max_page_count = settings
            .max_size_bytes()
            .map_err(StoreError::Corrupt)?
            .map(|b| (b / 4096).max(1));
        let opener = writer::Opener {
            path: path.clone(),
            synchronous: match settings.synchronous {
                Synchronous::Full => "FULL",
                Synchronous::Normal => "NORMAL",
            },
            max_page_count,
        };
        let first = opener.open()?;
        // Sessions recorded as open by a process that is gone (kill -9, power loss).
        first.execute(
            "UPDATE presence SET until = ? WHERE until IS NULL",
            [crate::model::now_ms()],
        )?;
        first.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?",
            [crate::model::now_ms() - messages::IDEMPOTENCY_TTL_MS],
        )?;
        let members = Arc::new(MembersCache::new(MEMBERS_CACHE_BYTES));
        let writer = Writer::start(
            first,
            opener,
            writer::Settings {
                max_batch: settings.max_batch,
                queue: settings.max_batch * 4,
                max_queued_bytes: settings.max_queued_bytes,
                max_queue_wait: settings.max_queue_wait,
            },
            members.clone(),
        )?;
        let readers = SqlitePoolOptions::new()
            .max_connections(settings.max_readers)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base_options(&path).read_only(true))
            .await?;
        Ok(SqliteStore {
            writer,
            readers,
            members,
        })
    }

    /// Migrate the database at `url` and return.
    pub async fn migrate_only(url: &str) -> Result<(), StoreError> {
        let path = path_of(url)?;
        create_private(&path)?;
        let mut conn = SqliteConnection::connect_with(&base_options(&path)).await?;
        MIGRATOR.run(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// Make sure the directory of a `sqlite://` file exists.
    pub fn ensure_parent(path: &Path) -> std::io::Result<()> {
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
            _ => Ok(()),
        }
    }
}

fn base_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10))
}

/// Create the database file readable by its owner only (SQLite gives the `-wal` and `-shm`
/// files the same mode). An existing file keeps its mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

/// About how much memory a queued insert holds (admission control's byte budget).
fn queued_bytes(m: &NewMessage) -> usize {
    let rendered: usize = m
        .rendered
        .values()
        .flat_map(|parts| parts.values())
        .map(String::len)
        .sum();
    let deliveries: usize = m
        .deliveries
        .iter()
        .map(|d| 96 + d.receiver.len() + d.channel.len())
        .sum();
    let members: usize = m
        .audience
        .as_ref()
        .map_or(0, |a| a.members.iter().map(|r| 24 + r.len()).sum());
    512 + m.title.len() + m.content.len() + rendered + deliveries + members
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_message(&self, msg: NewMessage) -> Result<Inserted, StoreError> {
        let bytes = queued_bytes(&msg);
        self.writer
            .admit(bytes, move |cx| messages::insert(cx, &msg))
            .await
    }

    async fn get_message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        self.read_message(id).await
    }

    async fn list_messages(
        &self,
        filter: &MessageFilter,
        page: PageRequest,
        deliveries_per_message: usize,
    ) -> Result<Page<Message>, StoreError> {
        self.read_list(filter, page, deliveries_per_message).await
    }

    async fn delete_message(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.writer.write(move |cx| messages::delete(cx, &id)).await
    }

    async fn undelivered(
        &self,
        receiver: &str,
        channel: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError> {
        self.read_undelivered(receiver, channel, after_seq, limit)
            .await
    }

    async fn receivers_with_undelivered(&self, channel: &str) -> Result<Vec<String>, StoreError> {
        self.read_receivers_with_undelivered(channel).await
    }

    async fn inbox_entries(
        &self,
        receiver: &str,
        query: &inbox_model::Query,
    ) -> Result<Page<InboxItem>, StoreError> {
        self.read_inbox_entries(receiver, query).await
    }

    async fn inbox_counts(&self, receiver: &str) -> Result<inbox_model::Counts, StoreError> {
        self.read_inbox_counts(receiver).await
    }

    async fn inbox_mark(
        &self,
        receiver: &str,
        op: inbox_model::Op,
        target: inbox_model::Target,
    ) -> Result<inbox_model::Marked, StoreError> {
        let receiver = receiver.to_owned();
        self.writer
            .write(move |cx| inbox::mark(cx, &receiver, op, &target))
            .await
    }

    async fn inbox_prune(
        &self,
        cutoff_ms: i64,
        include_unread: bool,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.writer
            .write(move |cx| inbox::prune(cx, cutoff_ms, include_unread, limit))
            .await
    }

    async fn collect(
        &self,
        receiver: &str,
        channel: &str,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError> {
        let (receiver, channel) = (receiver.to_owned(), channel.to_owned());
        self.writer
            .write(move |cx| messages::collect(cx, &receiver, &channel, limit))
            .await
    }

    async fn apply_status(&self, changes: Vec<StatusChange>) -> Result<Vec<bool>, StoreError> {
        if changes.is_empty() {
            return Ok(vec![]);
        }
        self.writer
            .write(move |cx| messages::apply_status(cx, &changes))
            .await
    }

    async fn put_recipient(&self, recipient: Recipient) -> Result<bool, StoreError> {
        self.writer
            .write(move |cx| devices::put_recipient(cx.conn, &recipient, cx.now))
            .await
    }

    async fn get_recipient(&self, user_id: &str) -> Result<Option<Recipient>, StoreError> {
        self.read_recipient(user_id).await
    }

    async fn delete_recipient(&self, user_id: &str) -> Result<bool, StoreError> {
        let user = user_id.to_owned();
        self.writer
            .write(move |cx| devices::delete_recipient(cx.conn, &user))
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
        let channel = channel.to_owned();
        self.writer
            .write(move |cx| outbox::claim(cx.conn, &channel, now_ms, lease_until_ms, limit, quota))
            .await
    }

    async fn quota_used(&self, channel: &str, window_start_ms: i64) -> Result<u64, StoreError> {
        self.read_quota_used(channel, window_start_ms).await
    }

    async fn delivery_channel(&self, delivery_id: i64) -> Result<Option<String>, StoreError> {
        self.read_delivery_channel(delivery_id).await
    }

    async fn delivery_by_provider_id(
        &self,
        channel: &str,
        provider_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.read_delivery_by_provider_id(channel, provider_id)
            .await
    }

    async fn count_due(&self, channel: &str, now_ms: i64, limit: u32) -> Result<u32, StoreError> {
        self.read_count_due(channel, now_ms, limit).await
    }

    async fn next_due(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        self.read_next_due(channel).await
    }

    async fn outbox_counts(&self) -> Result<HashMap<String, OutboxCounts>, StoreError> {
        self.read_outbox_counts().await
    }

    async fn outbox_messages(&self, seqs: &[i64]) -> Result<Vec<OutboxMessage>, StoreError> {
        self.read_outbox_messages(seqs).await
    }

    async fn any_preferences(&self) -> Result<bool, StoreError> {
        self.read_any_preferences().await
    }

    async fn register_device(&self, device: NewDevice) -> Result<Registered, StoreError> {
        self.writer
            .write(move |cx| devices::register_device(cx.conn, &device, cx.now))
            .await
    }

    async fn list_devices(&self, user_id: &str) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read_devices(user_id).await
    }

    async fn delete_device(&self, user_id: &str, device_id: i64) -> Result<bool, StoreError> {
        let user = user_id.to_owned();
        self.writer
            .write(move |cx| devices::delete_device(cx.conn, &user, device_id))
            .await
    }

    async fn active_devices(
        &self,
        user_id: &str,
        platform: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.read_active_devices(user_id, platform).await
    }

    async fn deactivate_devices(&self, dead: Vec<(i64, String)>) -> Result<u64, StoreError> {
        if dead.is_empty() {
            return Ok(0);
        }
        self.writer
            .write(move |cx| devices::deactivate_devices(cx.conn, &dead, cx.now))
            .await
    }

    async fn presence_open(
        &self,
        session: &str,
        receiver: &str,
        node: &str,
        since_ms: i64,
    ) -> Result<(), StoreError> {
        let (session, receiver, node) = (session.to_owned(), receiver.to_owned(), node.to_owned());
        // Queued, not awaited: the single writer applies it before anything queued later
        // (a broadcast that saw this session), which is all the history index needs.
        self.writer
            .submit(move |cx| devices::presence_open(cx.conn, &session, &receiver, &node, since_ms))
            .await
    }

    async fn presence_close(&self, session: &str, until_ms: i64) -> Result<(), StoreError> {
        let session = session.to_owned();
        self.writer
            .submit(move |cx| devices::presence_close(cx.conn, &session, until_ms))
            .await
    }

    async fn presence_close_node(&self, node: &str, until_ms: i64) -> Result<u64, StoreError> {
        let node = node.to_owned();
        self.writer
            .write(move |cx| devices::presence_close_node(cx.conn, &node, until_ms))
            .await
    }

    async fn spill_audience(&self, timer: &Timer, _now_ms: i64) -> Result<Option<u64>, StoreError> {
        let timer = timer.clone();
        self.writer
            .write(move |cx| audiences::spill(cx, &timer))
            .await
    }

    async fn count_undelivered(
        &self,
        receiver: &str,
        channel: &str,
    ) -> Result<(u64, i64), StoreError> {
        self.read_count_undelivered(receiver, channel).await
    }

    async fn claim_timers(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<Timer>, StoreError> {
        self.writer
            .write(move |cx| timers::claim(cx.conn, now_ms, lease_until_ms, limit))
            .await
    }

    async fn next_timer_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query("SELECT min(due_at) FROM schedule WHERE due_at IS NOT NULL")
                .fetch_one(&self.readers)
                .await?
                .try_get(0)?,
        )
    }

    async fn release_held(
        &self,
        timer: &Timer,
        presence: &[String],
    ) -> Result<Option<Vec<(i64, String, String)>>, StoreError> {
        let (timer, presence) = (timer.clone(), presence.to_vec());
        self.writer
            .write(move |cx| timers::release(cx, &timer, &presence))
            .await
    }

    async fn expire_message(
        &self,
        timer: &Timer,
        presence: &[String],
        now_ms: i64,
    ) -> Result<Option<Vec<(String, u64)>>, StoreError> {
        let (timer, presence) = (timer.clone(), presence.to_vec());
        self.writer
            .write(move |cx| timers::expire(cx, &timer, &presence, now_ms))
            .await
    }

    async fn receiver_deliveries(
        &self,
        message_seq: i64,
        receiver: &str,
    ) -> Result<Vec<Delivery>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM deliveries WHERE message_seq = ? AND receiver = ? ORDER BY id",
            super::rows::DELIVERY_COLUMNS
        ))
        .bind(message_seq)
        .bind(receiver)
        .fetch_all(&self.readers)
        .await?
        .iter()
        .map(super::rows::delivery)
        .collect()
    }

    async fn advance_route(&self, advance: RouteAdvance) -> Result<Option<Vec<i64>>, StoreError> {
        self.writer
            .write(move |cx| timers::advance(cx, &advance))
            .await
    }

    async fn webhook_create(&self, ep: Endpoint) -> Result<bool, StoreError> {
        self.writer
            .write(move |cx| webhooks::create(cx.conn, &ep, cx.now))
            .await
    }

    async fn webhook_update(&self, ep: Endpoint) -> Result<bool, StoreError> {
        self.writer
            .write(move |cx| webhooks::update(cx.conn, &ep, cx.now))
            .await
    }

    async fn webhook_set_enabled(
        &self,
        id: &str,
        enabled: bool,
        reason: Option<String>,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.writer
            .write(move |cx| {
                webhooks::set_enabled(cx.conn, &id, enabled, reason.as_deref(), cx.now)
            })
            .await
    }

    async fn webhook_rotate(
        &self,
        id: &str,
        secret: Secret,
        old_until_ms: i64,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.writer
            .write(move |cx| webhooks::rotate(cx.conn, &id, &secret, old_until_ms, cx.now))
            .await
    }

    async fn webhook_delete(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.writer
            .write(move |cx| webhooks::delete(cx.conn, &id))
            .await
    }

    async fn webhook_sync_config(&self, eps: Vec<Endpoint>) -> Result<(), StoreError> {
        self.writer
            .write(move |cx| webhooks::sync_config(cx.conn, &eps, cx.now))
            .await
    }

    async fn webhook_get(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        self.read_webhook(id).await
    }

    async fn webhook_list(&self) -> Result<Vec<Endpoint>, StoreError> {
        self.read_webhooks().await
    }

    async fn webhook_backlog(&self) -> Result<HashMap<String, Backlog>, StoreError> {
        self.read_webhook_backlog().await
    }

    async fn webhook_any_due(&self, now_ms: i64) -> Result<bool, StoreError> {
        self.read_webhook_due(now_ms).await
    }

    async fn webhook_claim(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        wants: Vec<(String, u32)>,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.writer
            .write(move |cx| webhooks::claim(cx.conn, now_ms, lease_until_ms, &wants))
            .await
    }

    async fn webhook_complete(
        &self,
        attempts: Vec<Attempt>,
        disable_before_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.writer
            .write(move |cx| webhooks::complete(cx.conn, &attempts, disable_before_ms, cx.now))
            .await
    }

    async fn webhook_attempts(
        &self,
        endpoint_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read_webhook_attempts(endpoint_id, before, limit).await
    }

    async fn webhook_redeliver(
        &self,
        endpoint_id: &str,
        what: Redeliver,
    ) -> Result<u64, StoreError> {
        let id = endpoint_id.to_owned();
        self.writer
            .write(move |cx| webhooks::redeliver(cx.conn, &id, what, cx.now))
            .await
    }

    async fn webhook_prune(&self, cutoff_ms: i64, limit: u32) -> Result<u64, StoreError> {
        self.writer
            .write(move |cx| webhooks::prune(cx.conn, cutoff_ms, limit))
            .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if let Some(reason) = self.writer.health.failing() {
            return Err(StoreError::Unavailable(reason));
        }
        let applied: i64 = sqlx::query("SELECT count(*) FROM _sqlx_migrations WHERE success = 1")
            .fetch_one(&self.readers)
            .await?
            .try_get(0)?;
        let expected = MIGRATOR.iter().count() as i64;
        if applied < expected {
            return Err(StoreError::Corrupt(format!(
                "{applied} of {expected} migrations applied"
            )));
        }
        Ok(())
    }

    fn queued_writes(&self) -> usize {
        self.writer.queued()
    }

    async fn close(&self) {
        // Every write queued before the close is committed and answered first.
        self.writer.close().await;
        self.readers.close().await;
    }
}
