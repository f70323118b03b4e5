//! The scheduler: one task per node working the `schedule` table — releasing held
//! presence deliveries at `sendAt`, expiring messages at `expiresAt` and moving failover
//! chains along (`routing.rs` decides; this loads, stores and hands over).
//!
//! Timers are claimed under a lease exactly like outbox rows (the lease end becomes the due
//! time), so a timer whose node died comes due again, and every write is fenced by the
//! lease. A delivery status change makes its chain due at once (a trigger in the store);
//! the status writer then wakes this task, so an ack ends a chain within milliseconds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::outbox::view;
use super::plan::Planner;
use super::Planned;
use crate::model::{NewDelivery, RouteAdvance, Status, Timer, TimerKind};
use crate::routing::{self, LogEntry, Probe, RouteState, Seen};
use crate::store::StoreError;

/// Timers claimed per round.
const BATCH: u32 = 64;

/// What the scheduler works with: the planner (and through it the dispatcher, store and
/// session registry) and its two settings.
pub struct Scheduler {
    pub planner: Planner,
    /// `dispatch.poll_interval`: the longest sleep between rounds.
    pub poll: Duration,
    /// `dispatch.lease`: how long a claimed timer is this node's.
    pub lease: Duration,
}

pub async fn run(ctx: Scheduler, stop: CancellationToken) {
    let poll = ctx.poll;
    let app = &ctx.planner;
    let presence = app.dispatcher().presence_instances();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let clock = app.dispatcher().clock().clone();
        let now = clock.now_ms();
        let lease = ctx.lease.as_millis() as i64;
        let claimed = match app.store().claim_timers(now, now + lease, BATCH).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "claiming timers failed");
                Vec::new()
            }
        };
        for t in &claimed {
            if let Err(e) = fire(app, t, &presence).await {
                // The lease runs out and the timer comes due again.
                tracing::warn!(error = %e, timer = t.id, "timer failed; it will be retried");
            }
        }
        if claimed.len() == BATCH as usize {
            continue;
        }
        let next = app.store().next_timer_due().await.ok().flatten();
        let wait = next.map_or(poll, |at| {
            Duration::from_millis((at - clock.now_ms()).max(0) as u64).min(poll)
        });
        if wait.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = app.dispatcher().scheduler_notify().notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn fire(app: &Planner, t: &Timer, presence: &[String]) -> Result<(), StoreError> {
    match t.kind {
        TimerKind::Release => release(app, t, presence).await,
        TimerKind::Expire => {
            let now = app.dispatcher().clock().now_ms();
            if let Some(channels) = app.store().expire_message(t, presence, now).await? {
                for (c, n) in &channels {
                    if let Some(m) = app.metrics().channel(c) {
                        m.count_n(Status::Failed, *n);
                    }
                }
                tracing::info!(
                    message_seq = t.message_seq,
                    expired = channels.iter().map(|(_, n)| n).sum::<u64>(),
                    "message expired"
                );
            }
            Ok(())
        }
        TimerKind::Route => evaluate(app, t).await,
        TimerKind::Spill => {
            let now = app.dispatcher().clock().now_ms();
            if let Some(n) = app.store().spill_audience(t, now).await? {
                app.metrics()
                    .members_spilled
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    tracing::debug!(
                        message_seq = t.message_seq,
                        members = n,
                        "undelivered broadcast members now have rows"
                    );
                }
            }
            Ok(())
        }
    }
}

/// `sendAt` reached: push the held presence deliveries; provider rows are due by now.
async fn release(app: &Planner, t: &Timer, presence: &[String]) -> Result<(), StoreError> {
    let Some(released) = app.store().release_held(t, presence).await? else {
        return Ok(());
    };
    app.dispatcher().wake_outbox();
    if released.is_empty() {
        return Ok(());
    }
    let Some(m) = app.store().outbox_messages(&[t.message_seq]).await?.pop() else {
        return Ok(()); // deleted meanwhile
    };
    let (_, (message, _)) = view(m, "");
    let planned = released
        .into_iter()
        .map(|(delivery_id, receiver, channel)| Planned {
            delivery_id,
            receiver,
            channel,
            address: None,
        })
        .collect();
    app.dispatcher()
        .dispatch(message, Instant::now(), planned)
        .await;
    Ok(())
}

/// Evaluate one failover chain and store the result (if the lease still holds).
async fn evaluate(app: &Planner, t: &Timer) -> Result<(), StoreError> {
    let Some(m) = app.store().outbox_messages(&[t.message_seq]).await?.pop() else {
        return Ok(()); // deleted: its chains went with it
    };
    let now = app.dispatcher().clock().now_ms();
    let receiver = t.receiver.as_str();
    let Some(policy) = m.routing.clone() else {
        tracing::error!(message = %m.id, "a route timer for a message without a failover policy");
        return store(
            app,
            t,
            &m,
            ended(t, now, RouteState::Exhausted, "no policy stored"),
            Vec::new(),
        )
        .await;
    };
    if m.expires_at_ms.is_some_and(|e| e <= now) {
        // The expire timer fails the deliveries; the chain stops here.
        let d = ended(
            t,
            now,
            RouteState::Cancelled,
            "the message expired: remaining steps cancelled",
        );
        return store(app, t, &m, d, Vec::new()).await;
    }
    let seen: Vec<Seen> = app
        .store()
        .receiver_deliveries(t.message_seq, receiver)
        .await?
        .into_iter()
        .map(|d| Seen {
            id: d.id,
            channel: d.channel,
            status: d.status,
            error: d.error,
        })
        .collect();
    // Most evaluations only wait or end the chain (an ack, a hand-over within its wait)
    // and need nothing about the channels: decide once without probes, and look the
    // channels (recipient record, devices, quota) and presence up only if it asked.
    let asked = std::cell::Cell::new(false);
    let decision = routing::decide(&policy.steps, t.progress, &seen, now, false, &mut |_| {
        asked.set(true);
        Probe::Skip(String::new())
    });
    let (decision, probes) = if asked.get() {
        let probes = probe_steps(app, receiver, &policy.steps, m.msg_type, now).await?;
        let online = app.registry().is_online(receiver).await;
        let decision = routing::decide(&policy.steps, t.progress, &seen, now, online, &mut |s| {
            probes
                .get(&s.channel)
                .map_or_else(|| Probe::Skip("unknown".into()), |(p, _)| p.clone())
        });
        (decision, probes)
    } else {
        (decision, HashMap::new())
    };
    let start: Vec<NewDelivery> = decision
        .start
        .iter()
        .map(|s| {
            let base = probes.get(&s.channel).and_then(|(_, d)| d.clone());
            let mut d = base.unwrap_or_else(|| NewDelivery {
                receiver: receiver.to_owned(),
                channel: s.channel.clone(),
                status: Status::Failed,
                error: None,
                address: None,
                outbox: !s.presence,
            });
            if let Some(e) = &s.failed {
                d.status = Status::Failed;
                d.error = Some(e.clone());
            }
            d
        })
        .collect();
    for e in &decision.log {
        tracing::debug!(message = %m.id, receiver, event = %e.event, channel = ?e.channel, reason = %e.reason, "route");
        app.metrics().count_route_event(&e.event);
    }
    store(app, t, &m, decision, start).await
}

/// What each step's channel would do for `receiver` now (the record is read once): the
/// probe for [`routing::decide`] and the delivery it would start.
async fn probe_steps(
    app: &Planner,
    receiver: &str,
    steps: &[routing::Step],
    msg_type: i64,
    now: i64,
) -> Result<HashMap<String, (Probe, Option<NewDelivery>)>, StoreError> {
    let rec = app.store().get_recipient(receiver).await?;
    let mut probes: HashMap<String, (Probe, Option<NewDelivery>)> = HashMap::new();
    for step in steps {
        let planned = app
            .plan_one(receiver, &step.channel, rec.as_ref(), msg_type)
            .await?;
        let probe = match &planned {
            None => Probe::Skip(format!(
                "channel instance `{}` is not configured",
                step.channel
            )),
            Some(_)
                if app
                    .dispatcher()
                    .instance(&step.channel)
                    .is_some_and(|i| !i.enabled) =>
            {
                Probe::Skip(format!("channel instance `{}` is disabled", step.channel))
            }
            Some(d) if d.status == Status::Failed => {
                Probe::Skip(d.error.clone().unwrap_or_else(|| "failed".into()))
            }
            Some(d) => {
                if over_quota(app, &step.channel, now).await? {
                    Probe::Skip("over_quota".into())
                } else {
                    Probe::Ready {
                        address: d.address.clone(),
                        presence: !d.outbox,
                    }
                }
            }
        };
        probes.insert(step.channel.clone(), (probe, planned));
    }
    Ok(probes)
}

fn ended(t: &Timer, now: i64, state: RouteState, reason: &str) -> routing::Decision {
    routing::Decision {
        state,
        progress: t.progress,
        due_at_ms: None,
        log: vec![LogEntry {
            at: crate::model::rfc3339(now),
            step: None,
            channel: None,
            event: if state == RouteState::Cancelled {
                "expired".into()
            } else {
                "exhausted".into()
            },
            reason: reason.into(),
        }],
        start: Vec::new(),
        supersede: Vec::new(),
    }
}

async fn over_quota(app: &Planner, channel: &str, now: i64) -> Result<bool, StoreError> {
    let Some(q) = app.dispatcher().limits(channel).and_then(|l| l.quota) else {
        return Ok(false);
    };
    Ok(app.store().quota_used(channel, q.window_start(now)).await? >= q.limit)
}

async fn store(
    app: &Planner,
    t: &Timer,
    m: &crate::model::OutboxMessage,
    d: routing::Decision,
    start: Vec<NewDelivery>,
) -> Result<(), StoreError> {
    let now = app.dispatcher().clock().now_ms();
    let advance = RouteAdvance {
        timer_id: t.id,
        lease_until_ms: t.lease_until_ms,
        message_seq: t.message_seq,
        receiver: t.receiver.clone(),
        state: d.state,
        progress: d.progress,
        due_at_ms: d.due_at_ms,
        log: d.log,
        start: start.clone(),
        supersede: d.supersede,
        now_ms: now,
    };
    let Some(ids) = app.store().advance_route(advance).await? else {
        return Ok(()); // the lease was lost (a status change made it due again)
    };
    let mut planned = Vec::new();
    let mut providers = false;
    app.count_born_failed(&start);
    for (d, id) in start.into_iter().zip(ids) {
        if d.status == Status::Failed {
            continue;
        }
        if d.outbox {
            providers = true;
        } else {
            planned.push(Planned {
                delivery_id: id,
                receiver: d.receiver,
                channel: d.channel,
                address: d.address,
            });
        }
    }
    if providers {
        app.dispatcher().wake_outbox();
    }
    if !planned.is_empty() {
        let (_, (message, _)) = view(m.clone(), "");
        app.dispatcher()
            .dispatch(message, Instant::now(), planned)
            .await;
    }
    Ok(())
}
