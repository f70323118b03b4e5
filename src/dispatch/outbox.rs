//! The provider outbox: one worker per provider channel instance.
//!
//! Provider deliveries are rows in the store, due at `next_attempt_at`. A worker claims due
//! rows under a lease (the lease end becomes the row's due time, so a row whose worker died
//! comes due again when the lease runs out), hands each to its channel with a timeout, and
//! records the outcome through the dispatcher's batched status writer: `sent`, a retry at a
//! later time (exponential backoff with jitter, or the channel's `retry_after`), or
//! `failed`. Per-instance limits: a semaphore bounds sends in flight, a governor limiter
//! bounds the send rate — a claimed row already holds its permit and rate cell, so nothing
//! waits while holding a lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_channel::{Accepted, AddressKind, ChannelError, MessageView, Outgoing, Rendered};
use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::Dispatcher;
use crate::config::DispatchSettings;
use crate::model::{
    rfc3339, AttemptOutcome, Claimed, OutboxMessage, QuotaClaim, Recipient, StatusChange,
};

/// Per-instance limits, from the instance's `[channels.<name>]` table.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Sends in flight at once.
    pub concurrency: usize,
    /// Most sends per period (`rate_limit = "10/s"`).
    pub rate: Option<Rate>,
    /// Attempts before `attempts_exhausted`.
    pub max_attempts: u32,
    /// Sends per day (`daily_quota`); when spent, deliveries wait for the next window.
    pub quota: Option<DailyQuota>,
}

/// A daily quota: `limit` claims per day, the day starting at `reset` (e.g. midnight in
/// UTC+8 for WeChat: `quota_reset = "00:00+08:00"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyQuota {
    pub limit: u64,
    /// Milliseconds after UTC midnight at which a window starts (0 ..< 86,400,000).
    pub reset_ms: i64,
}

const DAY_MS: i64 = 86_400_000;

impl DailyQuota {
    /// `"HH:MM"` with an optional UTC offset (`"00:00+08:00"`, `"04:30Z"`, `"00:00"` = UTC).
    pub fn parse_reset(s: &str) -> Result<i64, String> {
        let bad = || format!("`{s}`: expected HH:MM with an optional offset, e.g. \"00:00+08:00\"");
        let (time, offset) = match s.find(['+', '-', 'Z']) {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        let hm = |t: &str| -> Option<i64> {
            let (h, m) = t.split_once(':')?;
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            ((0..24).contains(&h) && (0..60).contains(&m)).then_some((h * 60 + m) * 60_000)
        };
        let local = hm(time).ok_or_else(bad)?;
        let off = match offset {
            "" | "Z" => 0,
            o => {
                let sign = if o.starts_with('-') { -1 } else { 1 };
                sign * hm(&o[1..]).ok_or_else(bad)?
            }
        };
        Ok((local - off).rem_euclid(DAY_MS))
    }

    /// The start of the window holding `now_ms`.
    pub fn window_start(&self, now_ms: i64) -> i64 {
        (now_ms - self.reset_ms).div_euclid(DAY_MS) * DAY_MS + self.reset_ms
    }

    pub fn window_end(&self, now_ms: i64) -> i64 {
        self.window_start(now_ms) + DAY_MS
    }
}

/// A rate limit shared by every node of a cluster (Redis); single nodes use governor.
#[async_trait::async_trait]
pub trait SharedRate: Send + Sync + 'static {
    /// Take up to `want` cells of `key` under `rate`: how many were granted and, when none
    /// was, how long until the next one.
    async fn take(&self, key: &str, rate: Rate, want: u32) -> Result<(u32, Duration), String>;
}

pub use crate::config::Rate;

impl Rate {
    fn quota(self) -> Option<Quota> {
        // Spread the cells evenly over the period; allow a burst of the whole count.
        Quota::with_period(self.per / self.count.get()).map(|q| q.allow_burst(self.count))
    }
}

/// The delay before retry number `attempt` (1 = after the first failure): `base · 2^(n-1)`,
/// ±20 % jitter, at most `max`.
pub fn backoff(attempt: i64, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let exp = attempt.clamp(1, 32) as u32 - 1;
    let raw = base.saturating_mul(2u32.saturating_pow(exp)).min(max);
    let jitter: f64 = rng.random_range(0.8..1.2);
    raw.mul_f64(jitter).min(max)
}

/// A running worker's handles, kept by the dispatcher.
pub(crate) struct WorkerHandle {
    pub notify: Arc<Notify>,
    /// The earliest retry this node scheduled since the worker last went idle (ms, clock
    /// time). The retry's row is written by the batched status writer, so the worker may
    /// have read an older due time; this hint wakes it on time.
    pub wake_at: AtomicI64,
    pub semaphore: Arc<Semaphore>,
    pub limits: Limits,
}

impl WorkerHandle {
    pub fn new(limits: Limits) -> WorkerHandle {
        WorkerHandle {
            notify: Arc::new(Notify::new()),
            wake_at: AtomicI64::new(i64::MAX),
            semaphore: Arc::new(Semaphore::new(limits.concurrency)),
            limits,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.limits
            .concurrency
            .saturating_sub(self.semaphore.available_permits())
    }
}

pub(crate) struct Worker {
    pub dispatcher: Dispatcher,
    pub name: Arc<str>,
    pub settings: DispatchSettings,
    pub shutdown: CancellationToken,
}

impl Worker {
    pub async fn run(self) {
        let Some(instance) = self.dispatcher.inner.instances.get(&*self.name) else {
            return;
        };
        let Some(handle) = self.dispatcher.inner.workers.get(&*self.name) else {
            return;
        };
        let limiter: Option<DefaultDirectRateLimiter> = handle
            .limits
            .rate
            .and_then(Rate::quota)
            .map(RateLimiter::direct);
        let clock = self.dispatcher.inner.clock.clone();
        let store = self.dispatcher.inner.store.clone();
        let lease = self.settings.lease.as_millis() as i64;
        let batch = self
            .settings
            .claim_batch
            .min(handle.limits.concurrency)
            .max(1);
        if let (Some(q), Some(c)) = (
            handle.limits.quota,
            self.dispatcher.inner.metrics.channel(&self.name),
        ) {
            c.quota_limit.store(q.limit, Ordering::Relaxed);
            if let Ok(used) = store
                .quota_used(&self.name, q.window_start(clock.now_ms()))
                .await
            {
                c.quota_used.store(used, Ordering::Relaxed);
            }
        }
        tracing::debug!(channel = %self.name, kind = instance.descriptor.kind, "outbox worker started");
        loop {
            // Capacity first: one permit (and, when rate limited, one rate cell) per row we
            // claim, so a claimed row never waits while holding its lease.
            let first = tokio::select! {
                p = handle.semaphore.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = self.shutdown.cancelled() => break,
            };
            let mut permits = vec![first];
            while permits.len() < batch {
                match handle.semaphore.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let shared = handle
                .limits
                .rate
                .and_then(|r| self.dispatcher.shared_rate().map(|s| (s, r)));
            if shared.is_some() || limiter.is_some() {
                // Take rate cells only for rows that are due (an idle poll must not spend
                // them).
                let now = clock.now_ms();
                let due = match store.count_due(&self.name, now, permits.len() as u32).await {
                    Ok(n) => n as usize,
                    Err(e) => {
                        tracing::warn!(channel = %self.name, error = %e, "outbox: counting due work failed");
                        0
                    }
                };
                if due == 0 {
                    drop(permits);
                    self.idle(handle, now).await;
                    continue;
                }
                permits.truncate(due);
            }
            if let Some((shared, rate)) = shared {
                // Cluster: the instance's rate is shared by every node (Redis).
                let pause = match shared.take(&self.name, rate, permits.len() as u32).await {
                    Ok((0, wait)) => wait.min(self.settings.poll_interval),
                    Ok((granted, _)) => {
                        permits.truncate(granted as usize);
                        Duration::ZERO
                    }
                    Err(e) => {
                        tracing::warn!(channel = %self.name, error = %e,
                            "shared rate limit unavailable; sending nothing until it answers");
                        Duration::from_secs(1)
                    }
                };
                if !pause.is_zero() {
                    drop(permits);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                    continue;
                }
            } else if let Some(l) = &limiter {
                tokio::select! {
                    () = l.until_ready() => {}
                    () = self.shutdown.cancelled() => break,
                }
                let mut cells = 1;
                while cells < permits.len() && l.check().is_ok() {
                    cells += 1;
                }
                permits.truncate(cells);
            }
            let now = clock.now_ms();
            let quota = handle.limits.quota.map(|q| QuotaClaim {
                window_start_ms: q.window_start(now),
                limit: q.limit,
            });
            let claimed = match store
                .claim_due(&self.name, now, now + lease, permits.len() as u32, quota)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(channel = %self.name, error = %e, "outbox claim failed; retrying");
                    drop(permits);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = self.shutdown.cancelled() => break,
                    }
                }
            };
            if let (Some(q), Some(left)) = (handle.limits.quota, claimed.quota_left) {
                if let Some(c) = self.dispatcher.inner.metrics.channel(&self.name) {
                    c.quota_limit.store(q.limit, Ordering::Relaxed);
                    c.quota_used
                        .store(q.limit.saturating_sub(left), Ordering::Relaxed);
                }
                if claimed.rows.is_empty() && left == 0 {
                    // Spent: the due deliveries wait (still pending) for the next window.
                    drop(permits);
                    let end = q.window_end(now);
                    tracing::info!(channel = %self.name, limit = q.limit,
                        "daily quota spent; deliveries wait for the next window");
                    let wait = Duration::from_millis((end - now).max(0) as u64)
                        .min(self.settings.poll_interval);
                    tokio::select! {
                        () = handle.notify.notified() => {}
                        () = tokio::time::sleep(wait) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                    continue;
                }
            }
            let claimed = claimed.rows;
            if claimed.is_empty() {
                drop(permits);
                self.idle(handle, now).await;
                continue;
            }
            permits.truncate(claimed.len());
            if let Err(e) = self.hand_over(claimed, permits).await {
                tracing::warn!(channel = %self.name, error = %e, "outbox: loading claimed work failed; it is retried when its lease ends");
            }
        }
        tracing::debug!(channel = %self.name, "outbox worker stopped");
    }

    /// Nothing due: sleep until the next row is due (at most `poll_interval`), or until told.
    async fn idle(&self, handle: &WorkerHandle, now: i64) {
        let poll = self.settings.poll_interval;
        let hint = handle.wake_at.swap(i64::MAX, Ordering::SeqCst);
        let wait = if hint <= now {
            // A retry already due was scheduled but its row is not committed yet (the
            // status writer batches): look again in a moment.
            Duration::from_millis(20)
        } else {
            let due = match self.dispatcher.inner.store.next_due(&self.name).await {
                Ok(due) => due.unwrap_or(i64::MAX).min(hint),
                Err(e) => {
                    tracing::warn!(channel = %self.name, error = %e, "outbox: next due time unknown");
                    hint
                }
            };
            if due == i64::MAX {
                poll
            } else {
                Duration::from_millis((due - now).max(0) as u64).min(poll)
            }
        };
        if wait.is_zero() {
            return;
        }
        tokio::select! {
            () = handle.notify.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = self.shutdown.cancelled() => {}
        }
    }

    /// Load what the claimed rows need and start one send per row.
    async fn hand_over(
        &self,
        claimed: Vec<Claimed>,
        permits: Vec<OwnedSemaphorePermit>,
    ) -> Result<(), crate::store::StoreError> {
        let inner = &self.dispatcher.inner;
        let Some(instance) = inner.instances.get(&*self.name) else {
            return Ok(());
        };
        let family = instance.descriptor.family();
        let mut seqs: Vec<i64> = claimed.iter().map(|c| c.message_seq).collect();
        seqs.dedup();
        let messages: HashMap<i64, (Arc<MessageView>, Option<Arc<Rendered>>)> = inner
            .store
            .outbox_messages(&seqs)
            .await?
            .into_iter()
            .map(|m| view(m, family))
            .collect();
        let address_kind = instance.descriptor.address;
        let mut recipients: HashMap<String, Option<Recipient>> = HashMap::new();
        if address_kind != AddressKind::None {
            for c in &claimed {
                if !recipients.contains_key(&c.receiver) {
                    let r = inner.store.get_recipient(&c.receiver).await?;
                    recipients.insert(c.receiver.clone(), r);
                }
            }
        }
        for (c, permit) in claimed.into_iter().zip(permits) {
            let Some((message, rendered)) = messages.get(&c.message_seq).cloned() else {
                continue; // deleted meanwhile: its deliveries are gone too
            };
            if self.dispatcher.is_deleted(&message.id) {
                continue;
            }
            let address = recipients
                .get(&c.receiver)
                .and_then(Option::as_ref)
                .and_then(|r| address_of(r, address_kind));
            let devices = match address_kind {
                AddressKind::Device(platform) => inner
                    .store
                    .active_devices(&c.receiver, platform)
                    .await?
                    .into_iter()
                    .map(|(id, token)| herald_channel::Device { id, token })
                    .collect(),
                _ => Vec::new(),
            };
            let address = match address_kind {
                AddressKind::Device(_) if !devices.is_empty() => {
                    Some(format!("{} device(s)", devices.len()))
                }
                _ => address,
            };
            let out = Outgoing {
                delivery_id: c.delivery_id,
                message,
                receiver: c.receiver.clone(),
                address,
                rendered,
                attempt: c.attempts.clamp(1, i64::from(u32::MAX)) as u32,
                devices,
                dead_devices: Default::default(),
            };
            let needs_address = address_kind != AddressKind::None;
            let this = self.dispatcher.clone();
            let name = self.name.clone();
            let settings = self.settings.clone();
            inner.in_flight.spawn(async move {
                let outcome = if needs_address && out.address.is_none() {
                    AttemptOutcome::Failed {
                        error: "no_address".into(),
                    }
                } else {
                    attempt(&this, &name, &settings, &c, &out).await
                };
                drop(permit);
                // Devices the provider said are gone: deactivate (kept, with the reason).
                let dead = out.dead_devices.take();
                if !dead.is_empty() {
                    let n = dead.len() as u64;
                    match this.inner.store.deactivate_devices(dead).await {
                        Ok(_) => {
                            if let Some(ctr) = this.inner.metrics.channel(&name) {
                                ctr.dead_devices.fetch_add(n, Ordering::Relaxed);
                            }
                            tracing::info!(channel = %name, count = n, "dead device tokens deactivated");
                        }
                        Err(e) => tracing::warn!(channel = %name, error = %e,
                            "deactivating dead devices failed; they are reported again next time"),
                    }
                }
                this.record(
                    &name,
                    StatusChange::Attempt {
                        delivery_id: c.delivery_id,
                        lease_until_ms: c.lease_until_ms,
                        outcome,
                    },
                )
                .await;
            });
        }
        Ok(())
    }
}

/// One hand-over and its classification.
async fn attempt(
    d: &Dispatcher,
    name: &str,
    settings: &DispatchSettings,
    c: &Claimed,
    out: &Outgoing,
) -> AttemptOutcome {
    let inner = &d.inner;
    let Some(instance) = inner.instances.get(name) else {
        return AttemptOutcome::Failed {
            error: "config: channel instance no longer configured".into(),
        };
    };
    let max_attempts = inner
        .workers
        .get(name)
        .map(|w| w.limits.max_attempts)
        .unwrap_or(settings.max_attempts);
    let counters = inner.metrics.channel(name);
    let result = match tokio::time::timeout(settings.send_timeout, instance.channel.send(out)).await
    {
        Ok(r) => r,
        Err(_) => Err(ChannelError::transient(format!(
            "send timed out after {}",
            humantime::format_duration(settings.send_timeout)
        ))),
    };
    let now = inner.clock.now_ms();
    match result {
        Ok(accepted @ (Accepted::Sent { .. } | Accepted::Queued)) => {
            if let Some(c) = counters {
                let created = time::OffsetDateTime::parse(
                    &out.message.created_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .unwrap_or(now);
                c.latency
                    .observe(Duration::from_millis((now - created).max(0) as u64));
            }
            AttemptOutcome::Sent {
                provider_id: match accepted {
                    // Keep what fits a column; vendors' ids are short.
                    Accepted::Sent { provider_id } => provider_id.filter(|p| p.len() <= 256),
                    _ => None,
                },
            }
        }
        Ok(Accepted::Held) => retry_or_fail(
            d,
            name,
            c,
            max_attempts,
            settings,
            ChannelError::transient("the channel held a provider delivery"),
            now,
        ),
        Err(e) => {
            if let Some(ctr) = counters {
                ctr.errors[super::error_index(e.kind())].fetch_add(1, Ordering::Relaxed);
            }
            if e.is_retryable() {
                retry_or_fail(d, name, c, max_attempts, settings, e, now)
            } else {
                tracing::warn!(
                    delivery = c.delivery_id,
                    channel = name,
                    kind = e.kind().as_str(),
                    attempt = c.attempts,
                    "delivery failed"
                );
                AttemptOutcome::Failed {
                    error: e.to_string(),
                }
            }
        }
    }
}

fn retry_or_fail(
    d: &Dispatcher,
    name: &str,
    c: &Claimed,
    max_attempts: u32,
    settings: &DispatchSettings,
    e: ChannelError,
    now: i64,
) -> AttemptOutcome {
    if c.attempts >= i64::from(max_attempts) {
        tracing::warn!(
            delivery = c.delivery_id,
            channel = name,
            attempts = c.attempts,
            "delivery failed: attempts exhausted"
        );
        return AttemptOutcome::Failed {
            error: format!("attempts_exhausted: {e}"),
        };
    }
    let delay = e.retry_after().unwrap_or_else(|| {
        backoff(
            c.attempts,
            settings.retry_base,
            settings.retry_max,
            &mut rand::rng(),
        )
    });
    if let Some(ctr) = d.inner.metrics.channel(name) {
        ctr.retries.fetch_add(1, Ordering::Relaxed);
    }
    let at_ms = now + delay.as_millis() as i64;
    if let Some(w) = d.inner.workers.get(name) {
        w.wake_at.fetch_min(at_ms, Ordering::SeqCst);
        w.notify.notify_one();
    }
    tracing::info!(delivery = c.delivery_id, channel = name, attempt = c.attempts,
        retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
        kind = e.kind().as_str(), "send failed, retry scheduled");
    AttemptOutcome::Retry {
        at_ms,
        error: e.to_string(),
    }
}

pub(crate) fn view(
    m: OutboxMessage,
    family: &str,
) -> (i64, (Arc<MessageView>, Option<Arc<Rendered>>)) {
    let rendered = m
        .rendered
        .get(family)
        .map(|parts| Arc::new(Rendered::new(parts.clone())));
    (
        m.seq,
        (
            Arc::new(MessageView {
                id: m.id,
                title: m.title,
                content: m.content,
                msg_type: m.msg_type,
                sender: m.sender,
                created_at: rfc3339(m.created_at_ms),
                template: m.template,
                data: m.data,
            }),
            rendered,
        ),
    )
}

/// The address a channel needs, from a recipient record.
pub fn address_of(r: &Recipient, kind: AddressKind) -> Option<String> {
    match kind {
        AddressKind::Email => r.email.clone(),
        AddressKind::Phone => r.phone.clone(),
        AddressKind::WechatOpenId => r.wechat_open_id.clone(),
        // Devices arrive with the push channels.
        AddressKind::Device(_) | AddressKind::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let r = Rate::parse("10/s").unwrap();
        assert_eq!((r.count.get(), r.per), (10, Duration::from_secs(1)));
        let r = Rate::parse("600/min").unwrap();
        assert_eq!((r.count.get(), r.per), (600, Duration::from_secs(60)));
        let r = Rate::parse("20/30s").unwrap();
        assert_eq!((r.count.get(), r.per), (20, Duration::from_secs(30)));
        for bad in ["10", "0/s", "x/s", "10/fortnight", "10/0s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_a_cap() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        let mut rng = rand::rng();
        for _ in 0..200 {
            let d1 = backoff(1, base, max, &mut rng);
            assert!(d1 >= Duration::from_millis(1600) && d1 <= Duration::from_millis(2400));
            let d3 = backoff(3, base, max, &mut rng);
            assert!(d3 >= Duration::from_millis(6400) && d3 <= Duration::from_millis(9600));
            assert!(backoff(30, base, max, &mut rng) <= max);
        }
    }

    #[test]
    fn quota_windows() {
        assert_eq!(DailyQuota::parse_reset("00:00").unwrap(), 0);
        assert_eq!(DailyQuota::parse_reset("00:00Z").unwrap(), 0);
        // Midnight in UTC+8 is 16:00 UTC.
        assert_eq!(
            DailyQuota::parse_reset("00:00+08:00").unwrap(),
            16 * 3_600_000
        );
        assert_eq!(
            DailyQuota::parse_reset("01:30-02:00").unwrap(),
            210 * 60_000
        );
        for bad in ["24:00", "x", "12:60", "00:00+8"] {
            assert!(DailyQuota::parse_reset(bad).is_err(), "{bad}");
        }
        let q = DailyQuota {
            limit: 3,
            reset_ms: 16 * 3_600_000,
        };
        // 2026-11-29T15:59:59Z is still the window that began 2026-11-28T16:00Z.
        let t = 1_796_486_399_000; // 2026-12-05T15:59:59Z
        assert_eq!(q.window_end(t) - t, 1000);
        assert_eq!(q.window_start(t + 1000), t + 1000);
        assert_eq!(q.window_start(t + 1000) - q.window_start(t), DAY_MS);
    }

    #[tokio::test]
    async fn rate_limiter_holds_to_its_quota() {
        let q = Rate::parse("3/h").unwrap().quota().unwrap();
        let l = RateLimiter::direct(q);
        assert!(l.check().is_ok() && l.check().is_ok() && l.check().is_ok());
        assert!(l.check().is_err(), "a 4th send within the hour must wait");
    }
}
