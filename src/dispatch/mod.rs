//! The dispatcher: the only code that changes a delivery's status.
//!
//! After the API has committed a message and its deliveries, [`Dispatcher::dispatch`] hands
//! each delivery to its channel instance and records the outcome. Status changes from
//! anywhere (hand-over results, WebSocket acks and reads, replays) go through
//! [`Dispatcher::record`] into one bounded queue, drained by a writer task that applies them in
//! batches (one transaction per batch).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_channel::{
    Accepted, Channel, ChannelDescriptor, ChannelError, ErrorKind, MessageView, Outgoing,
};
use tokio::sync::{mpsc, oneshot};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod outbox;
pub mod pending;
pub mod plan;
mod receipts;
pub mod retention;
pub mod schedule;
pub mod webhooks;
use outbox::{Limits, Worker, WorkerHandle};
use pending::PendingIndex;

use crate::clock::Clock;
use crate::config::DispatchSettings;
use crate::metrics::Metrics;
use crate::model::{AttemptOutcome, InboxItem, Status, StatusChange};
use crate::store::{Store, StoreError};

/// A configured channel instance.
pub struct Instance {
    pub name: String,
    pub descriptor: &'static ChannelDescriptor,
    pub channel: Arc<dyn Channel>,
    /// `enabled = false`: sends naming it are refused; its outbox is not worked.
    pub enabled: bool,
    /// Outbox limits (provider channels).
    pub limits: Limits,
}

/// One delivery to hand over: (delivery id, receiver, channel instance name).
#[derive(Debug, Clone)]
pub struct Planned {
    pub delivery_id: i64,
    pub receiver: String,
    pub channel: String,
    pub address: Option<String>,
}

enum StatusItem {
    /// A change and the channel instance it belongs to (for metrics).
    Change(Arc<str>, StatusChange),
    /// Several changes of one instance (a session's `sent` for a burst of frames): one
    /// hand-off instead of one per frame.
    Changes(Arc<str>, Vec<StatusChange>),
    Flush(oneshot::Sender<()>),
}

/// How long a deleted message id is remembered in memory (covers frames already queued).
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    instances: BTreeMap<String, Instance>,
    /// Instance names, shared by every queued status change.
    names: HashMap<String, Arc<str>>,
    status_tx: mpsc::Sender<StatusItem>,
    tombstones: Tombstones,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    /// Provider hand-overs in flight; shutdown waits for them.
    in_flight: TaskTracker,
    /// Receivers that may have undelivered presence deliveries (replay on connect).
    pending: PendingIndex,
    /// Outbox worker handles of the provider instances (wake-ups, limits, in-flight).
    workers: HashMap<String, WorkerHandle>,
    clock: Arc<dyn Clock>,
    /// Wakes the scheduler (new timers, status changes that may move a failover chain).
    scheduler: Arc<tokio::sync::Notify>,
    /// Wakes the webhook worker (commits that may have written events).
    webhooks: Arc<tokio::sync::Notify>,
    /// Set when endpoints changed through the API: the worker reloads them at once.
    webhooks_reload: Arc<std::sync::atomic::AtomicBool>,
    /// Cluster mode: provider rate limits shared by every node.
    shared_rate: std::sync::OnceLock<Arc<dyn outbox::SharedRate>>,
}

impl Dispatcher {
    /// A dispatcher and its status writer task (which runs until [`Dispatcher::flush`]
    /// after the last clone is dropped, or forever).
    pub fn new(
        store: Arc<dyn Store>,
        instances: BTreeMap<String, Instance>,
        metrics: Arc<Metrics>,
        queue: usize,
        batch: usize,
        clock: Arc<dyn Clock>,
    ) -> (Dispatcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue);
        let scheduler = Arc::new(tokio::sync::Notify::new());
        let webhooks = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(status_writer(
            store.clone(),
            rx,
            batch,
            metrics.clone(),
            [scheduler.clone(), webhooks.clone()],
        ));
        let names = instances
            .keys()
            .map(|n| (n.clone(), Arc::from(n.as_str())))
            .collect();
        let workers = instances
            .values()
            .filter(|i| !i.descriptor.presence)
            .map(|i| (i.name.clone(), WorkerHandle::new(i.limits.clone())))
            .collect();
        let d = Dispatcher {
            inner: Arc::new(Inner {
                instances,
                names,
                status_tx: tx,
                tombstones: Tombstones::default(),
                metrics,
                store,
                in_flight: TaskTracker::new(),
                pending: PendingIndex::default(),
                workers,
                clock,
                scheduler,
                webhooks,
                webhooks_reload: Arc::default(),
                shared_rate: std::sync::OnceLock::new(),
            }),
        };
        (d, task)
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.inner.instances.get(name)
    }

    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.inner.instances.values()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Start one outbox worker per enabled provider instance; they stop when `shutdown` is
    /// cancelled (sends already started finish; [`Dispatcher::flush`] waits for them).
    pub fn start_outbox(
        &self,
        settings: &DispatchSettings,
        shutdown: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.inner
            .workers
            .keys()
            .filter(|name| self.inner.instances.get(*name).is_some_and(|i| i.enabled))
            .map(|name| {
                let worker = Worker {
                    dispatcher: self.clone(),
                    name: Arc::from(name.as_str()),
                    settings: settings.clone(),
                    shutdown: shutdown.clone(),
                };
                tokio::spawn(worker.run())
            })
            .collect()
    }

    /// Tell every outbox worker to look for due work now (new rows, a moved clock).
    pub fn wake_outbox(&self) {
        for w in self.inner.workers.values() {
            w.notify.notify_one();
        }
    }

    /// `n` deliveries of `channel` moved to `status` outside the status writer (an inbox
    /// change moves them in its own transaction): counted as the writer counts its
    /// transitions, and the scheduler woken, since a failover chain may have ended.
    pub fn moved(&self, channel: &str, status: Status, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(c) = self.inner.metrics.channel(channel) {
            c.count_n(status, n);
        }
        self.wake_scheduler();
    }

    /// Tell the scheduler to look for due timers now.
    pub fn wake_scheduler(&self) {
        self.inner.scheduler.notify_one();
    }

    pub(crate) fn scheduler_notify(&self) -> &tokio::sync::Notify {
        &self.inner.scheduler
    }

    /// Tell the webhook worker that events may be waiting.
    pub fn wake_webhooks(&self) {
        self.inner.webhooks.notify_one();
    }

    /// Tell the webhook worker that endpoints changed (it reloads them at once).
    pub fn webhooks_changed(&self) {
        self.inner
            .webhooks_reload
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.webhooks.notify_one();
    }

    /// What wakes the webhook worker, and the flag that makes it reload the endpoints
    /// (given to it at start).
    pub fn webhooks_signals(
        &self,
    ) -> (Arc<tokio::sync::Notify>, Arc<std::sync::atomic::AtomicBool>) {
        (
            self.inner.webhooks.clone(),
            self.inner.webhooks_reload.clone(),
        )
    }

    /// The names of the presence (WebSocket-like) instances.
    pub fn presence_instances(&self) -> Vec<String> {
        self.inner
            .instances
            .values()
            .filter(|i| i.descriptor.presence)
            .map(|i| i.name.clone())
            .collect()
    }

    /// Sends in flight on a provider instance.
    pub fn in_flight(&self, name: &str) -> usize {
        self.inner
            .workers
            .get(name)
            .map_or(0, WorkerHandle::in_flight)
    }

    /// The outbox limits of a provider instance.
    pub fn limits(&self, name: &str) -> Option<&Limits> {
        self.inner.workers.get(name).map(|w| &w.limits)
    }

    /// Load the receivers with undelivered presence deliveries (start-up).
    pub async fn load_pending(&self, store: &dyn Store) -> Result<(), StoreError> {
        for instance in self
            .inner
            .instances
            .values()
            .filter(|i| i.descriptor.presence)
        {
            for user in store.receivers_with_undelivered(&instance.name).await? {
                self.inner.pending.add(&user);
            }
        }
        Ok(())
    }

    /// Cluster mode: provider `rate_limit`s are shared by every node (set before
    /// [`Dispatcher::start_outbox`]).
    pub fn share_rate_limits(&self, shared: Arc<dyn outbox::SharedRate>) {
        let _ = self.inner.shared_rate.set(shared);
    }

    pub(crate) fn shared_rate(&self) -> Option<Arc<dyn outbox::SharedRate>> {
        self.inner.shared_rate.get().cloned()
    }

    /// Cluster mode: other nodes commit deliveries too, so every session replays.
    pub fn always_replay(&self) {
        self.inner.pending.set_always();
    }

    /// `Some(version)` when `user` may have undelivered presence deliveries (so a new
    /// session must replay); `None` when certainly not.
    pub fn pending_version(&self, user: &str) -> Option<u64> {
        self.inner.pending.check(user)
    }

    /// A replay that started at `version` found nothing for `user`.
    pub fn replay_found_nothing(&self, user: &str, version: u64) {
        self.inner.pending.clear(user, version);
    }

    /// Hand the deliveries of a freshly committed message to their channels.
    pub async fn dispatch(
        &self,
        message: Arc<MessageView>,
        accepted_at: Instant,
        planned: Vec<Planned>,
    ) {
        // Before any push: a session that connects from now on replays (see `pending`).
        for p in &planned {
            if self
                .inner
                .instances
                .get(&p.channel)
                .is_some_and(|i| i.descriptor.presence)
            {
                self.inner.pending.add(&p.receiver);
            }
        }
        let mut by_channel: HashMap<&str, Vec<Outgoing>> = HashMap::new();
        for p in &planned {
            by_channel
                .entry(p.channel.as_str())
                .or_default()
                .push(Outgoing {
                    delivery_id: p.delivery_id,
                    message: message.clone(),
                    receiver: p.receiver.clone(),
                    address: p.address.clone(),
                    rendered: None,
                    attempt: 1,
                    devices: Vec::new(),
                    dead_devices: Default::default(),
                });
        }
        for (name, outs) in by_channel {
            let Some(instance) = self.inner.instances.get(name) else {
                tracing::error!(channel = name, "delivery for an unknown channel instance");
                continue;
            };
            if instance.descriptor.presence {
                // Presence channels only queue frames: fast, never blocking. Inline.
                let results = instance.channel.send_batch(&outs).await;
                self.record_results(name, &outs, results, accepted_at).await;
            } else if let Some(w) = self.inner.workers.get(name) {
                // The rows are committed and due: the instance's outbox worker takes them.
                w.notify.notify_one();
            }
        }
    }

    /// Hand a broadcast's audience (members sorted; member `i` is delivery
    /// `member_delivery_id(seq, i)`) to its presence channel in one call.
    pub async fn dispatch_audience(
        &self,
        message: Arc<MessageView>,
        accepted_at: Instant,
        channel: &str,
        seq: i64,
        members: &[String],
    ) {
        let Some(instance) = self.inner.instances.get(channel) else {
            tracing::error!(channel, "audience for an unknown channel instance");
            return;
        };
        // Before any push: a session that connects from now on replays (see `pending`).
        for m in members {
            self.inner.pending.add(m);
        }
        let ids = move |i: usize| crate::model::member_delivery_id(seq, i);
        let results = instance
            .channel
            .send_audience(&herald_channel::Audience {
                message,
                receivers: members,
                delivery_id: &ids,
            })
            .await;
        let counters = self.inner.metrics.channel(channel);
        let mut queued = 0;
        let mut changes = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(Accepted::Queued) => queued += 1,
                Ok(Accepted::Sent { .. }) => {
                    queued += 1;
                    changes.push(delivery(ids(i), Status::Sent, None));
                }
                Ok(Accepted::Held) => {}
                Err(e) => {
                    if let Some(c) = counters {
                        c.errors[error_index(e.kind())].fetch_add(1, Ordering::Relaxed);
                    }
                    let status = if e.is_retryable() {
                        Status::Pending
                    } else {
                        Status::Failed
                    };
                    changes.push(delivery(ids(i), status, Some(e.to_string())));
                }
            }
        }
        if let Some(c) = counters {
            c.latency.observe_n(accepted_at.elapsed(), queued);
        }
        self.record_many(channel, changes).await;
    }

    async fn record_results(
        &self,
        channel: &str,
        outs: &[Outgoing],
        results: Vec<Result<Accepted, ChannelError>>,
        accepted_at: Instant,
    ) {
        let counters = self.inner.metrics.channel(channel);
        for (out, result) in outs.iter().zip(results) {
            match result {
                Ok(Accepted::Sent { .. }) => {
                    if let Some(c) = counters {
                        c.latency.observe(accepted_at.elapsed());
                    }
                    self.record(channel, delivery(out.delivery_id, Status::Sent, None))
                        .await;
                }
                Ok(Accepted::Queued) => {
                    // The session records `sent` when it writes the frame.
                    if let Some(c) = counters {
                        c.latency.observe(accepted_at.elapsed());
                    }
                }
                Ok(Accepted::Held) => {}
                Err(e) => {
                    if let Some(c) = counters {
                        c.errors[error_index(e.kind())].fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(
                        delivery = out.delivery_id,
                        channel,
                        kind = e.kind().as_str(),
                        "hand-over failed"
                    );
                    let (status, error) = if e.is_retryable() {
                        // Stays pending; retries with backoff come with the provider outbox.
                        (Status::Pending, e.to_string())
                    } else {
                        (Status::Failed, e.to_string())
                    };
                    self.record(channel, delivery(out.delivery_id, status, Some(error)))
                        .await;
                }
            }
        }
    }

    /// Queue a status change for the batched writer (waits when the queue is full).
    pub async fn record(&self, channel: &str, change: StatusChange) {
        let name = self.name(channel);
        if self
            .inner
            .status_tx
            .send(StatusItem::Change(name, change))
            .await
            .is_err()
        {
            tracing::error!("status writer is gone; a status change was dropped");
        }
    }

    /// Queue several status changes of one channel instance at once.
    pub async fn record_many(&self, channel: &str, changes: Vec<StatusChange>) {
        if changes.is_empty() {
            return;
        }
        let name = self.name(channel);
        if self
            .inner
            .status_tx
            .send(StatusItem::Changes(name, changes))
            .await
            .is_err()
        {
            tracing::error!("status writer is gone; status changes were dropped");
        }
    }

    fn name(&self, channel: &str) -> Arc<str> {
        match self.inner.names.get(channel) {
            Some(n) => n.clone(),
            None => Arc::from(channel),
        }
    }

    /// Atomically take a receiver's undelivered messages on a channel and mark them
    /// `delivered` (the inbox's collect).
    pub async fn collect(
        &self,
        receiver: &str,
        channel: &str,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError> {
        let items = self.inner.store.collect(receiver, channel, limit).await?;
        if let Some(c) = self.inner.metrics.channel(channel) {
            c.count_n(Status::Delivered, items.len() as u64);
        }
        if !items.is_empty() {
            // A collected message may end a failover chain.
            self.wake_scheduler();
        }
        Ok(items)
    }

    /// Wait until provider hand-overs in flight have finished and every status change queued
    /// so far is written.
    pub async fn flush(&self) {
        self.inner.in_flight.close();
        self.inner.in_flight.wait().await;
        self.inner.in_flight.reopen();
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .status_tx
            .send(StatusItem::Flush(tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Remember that a message was deleted, so frames already queued are not written.
    pub fn mark_deleted(&self, message_id: &str) {
        self.inner.tombstones.insert(message_id);
    }

    pub fn is_deleted(&self, message_id: &str) -> bool {
        self.inner.tombstones.contains(message_id)
    }
}

fn delivery(delivery_id: i64, status: Status, error: Option<String>) -> StatusChange {
    StatusChange::Delivery {
        delivery_id,
        status,
        error,
        count_attempt: true,
    }
}

fn change_status(change: &StatusChange) -> Status {
    match change {
        StatusChange::Delivery { status, .. } | StatusChange::Receiver { status, .. } => *status,
        StatusChange::Attempt { outcome, .. } => match outcome {
            AttemptOutcome::Sent { .. } => Status::Sent,
            AttemptOutcome::Retry { .. } => Status::Pending,
            AttemptOutcome::Failed { .. } => Status::Failed,
        },
    }
}

fn error_index(kind: ErrorKind) -> usize {
    match kind {
        ErrorKind::Transient => 0,
        ErrorKind::RateLimited => 1,
        ErrorKind::BadRecipient => 2,
        ErrorKind::Permanent => 3,
        ErrorKind::Config => 4,
    }
}

async fn status_writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<StatusItem>,
    batch: usize,
    metrics: Arc<Metrics>,
    [scheduler, webhooks]: [Arc<tokio::sync::Notify>; 2],
) {
    let mut items = Vec::with_capacity(batch);
    while rx.recv_many(&mut items, batch).await > 0 {
        let mut changes = Vec::with_capacity(items.len());
        let mut channels = Vec::with_capacity(items.len());
        let mut flushes = Vec::new();
        for item in items.drain(..) {
            match item {
                StatusItem::Change(channel, c) => {
                    channels.push(channel);
                    changes.push(c);
                }
                StatusItem::Changes(channel, cs) => {
                    channels.extend(std::iter::repeat_n(channel, cs.len()));
                    changes.extend(cs);
                }
                StatusItem::Flush(tx) => flushes.push(tx),
            }
        }
        let mut attempt = 0;
        while !changes.is_empty() {
            match store.apply_status(changes.clone()).await {
                Ok(applied) => {
                    if applied.iter().any(|&moved| moved) {
                        // A moved status may end or advance a failover chain (the store
                        // made its route due in the same transaction).
                        scheduler.notify_one();
                        // …and may have written webhook events.
                        webhooks.notify_one();
                    }
                    // Count only real transitions.
                    for ((channel, change), moved) in channels.iter().zip(&changes).zip(applied) {
                        if let (true, Some(c)) = (moved, metrics.channel(channel)) {
                            c.count(change_status(change));
                        }
                    }
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    metrics.status_write_errors.fetch_add(1, Ordering::Relaxed);
                    if attempt >= 3 {
                        // Lost status changes only cause re-sends (at-least-once), never loss.
                        tracing::error!(error = %e, count = changes.len(), "status changes dropped after 3 attempts");
                        break;
                    }
                    tracing::warn!(error = %e, attempt, "status write failed, retrying");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
            }
        }
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

/// Recently deleted message ids. Checked before every frame write; the common case (no
/// recent deletes) is one atomic load.
#[derive(Default)]
struct Tombstones {
    len: AtomicUsize,
    ids: Mutex<HashMap<String, Instant>>,
}

impl Tombstones {
    fn insert(&self, id: &str) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        ids.retain(|_, at| now.duration_since(*at) < TOMBSTONE_TTL);
        ids.insert(id.to_owned(), now);
        self.len.store(ids.len(), Ordering::Release);
    }

    fn contains(&self, id: &str) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones() {
        let t = Tombstones::default();
        assert!(!t.contains("a"));
        t.insert("a");
        assert!(t.contains("a"));
        assert!(!t.contains("b"));
    }
}
