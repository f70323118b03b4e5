//! The webhook worker (docs/webhooks.md): one task per node that claims due events under
//! a lease, POSTs them signed the Standard Webhooks way, and records each attempt.
//!
//! * Events are rows the database wrote with the change that caused them; this task only
//!   reads them. A claim leases up to `concurrency × QUEUE_FACTOR` events of an endpoint
//!   (`lease = timeout × (QUEUE_FACTOR + 1) + 5 s`, enough to send them all
//!   `concurrency` at a time): a node that dies mid-send leaves them to be claimed again
//!   when the lease ends (at-least-once, same `webhook-id`). Claiming ahead keeps the
//!   database's commits (one per claim, one per batch of outcomes) off the per-request path.
//! * Per endpoint at most `concurrency` requests are in flight on this node (a semaphore),
//!   and while the endpoint is failing only one event is claimed at a time (so a dead
//!   receiver gets probes, not a flood). The store never hands out an event while an
//!   earlier one of the same delivery (or its message's acceptance) is pending at that
//!   endpoint, so what must arrive in order does.
//! * Outcomes go back to the store in batches (one transaction per batch); the send tasks
//!   report through a bounded channel whose bound (`MAX_IN_FLIGHT`) is also the most
//!   requests in flight on the node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::outbox::backoff;
use crate::config::{WebhookEndpointSettings, WebhookSettings};
use crate::metrics::Metrics;
use crate::model::webhook::{self, Attempt, Claimed, Endpoint, Outcome};
use crate::model::{now_ms, rfc3339};
use crate::store::Store;

/// Most requests in flight on one node, over all endpoints (and the completion channel's
/// bound).
pub const MAX_IN_FLIGHT: usize = 1024;
/// Bytes of a response body read (the rest is not waited for).
pub const RESPONSE_READ: usize = 4096;
/// Characters of a response body kept with the attempt.
pub const RESPONSE_KEPT: usize = 256;
/// How old the worker's copy of the endpoints may get when it wakes (an endpoint created
/// through the API is served within this).
const RELOAD_AFTER: Duration = Duration::from_millis(250);
/// Events claimed per endpoint: `concurrency` × this, sent `concurrency` at a time.
const QUEUE_FACTOR: u32 = 8;
/// Batches of outcomes waiting to be written (see `record`).
const RECORD_QUEUE: usize = 16;
/// Most outcomes written per transaction.
const COMPLETE_BATCH: usize = 512;

/// A store error the loop meets every `poll_interval` while the database cannot be read
/// or written: logged once a minute, not once a second (the store logs why it fails).
#[derive(Default)]
pub struct Quiet(std::sync::Mutex<Option<Instant>>);

impl Quiet {
    fn warn(&self, e: &crate::store::StoreError, what: &str) {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!(error = %e, "{what}; retried every poll_interval (logged once a minute)");
        }
    }
}

/// What a worker needs.
pub struct Worker {
    pub store: Arc<dyn Store>,
    pub settings: WebhookSettings,
    pub metrics: Arc<Metrics>,
    /// Poked after commits that may have written events, and after endpoint changes; the
    /// flag is set when endpoints changed (reload them now).
    pub signals: (Arc<Notify>, Arc<std::sync::atomic::AtomicBool>),
    pub quiet: Quiet,
}

/// The HTTP client for endpoints: no redirects (a 3xx is a failure naming the target, so
/// a request never reaches a host the endpoint does not name), a total timeout, rustls.
pub fn client(settings: &WebhookSettings) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .pool_max_idle_per_host(settings.concurrency.max(1) as usize)
        .user_agent(concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the webhook HTTP client builds")
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` for each secret, space-separated
/// (Standard Webhooks).
pub fn signature(secrets: &[Vec<u8>], id: &str, timestamp: i64, body: &str) -> String {
    secrets
        .iter()
        .map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body.as_bytes());
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The request body: `{"type","timestamp","data"}` (`data` is the stored JSON object).
pub fn body(ev: &Claimed) -> String {
    format!(
        r#"{{"type":{},"timestamp":{},"data":{}}}"#,
        serde_json::Value::from(ev.kind.as_str()),
        serde_json::Value::from(rfc3339(ev.created_at_ms)),
        ev.data
    )
}

impl Worker {
    /// Runs until `stop`; then waits for the requests in flight and records them.
    pub async fn run(self, stop: CancellationToken) {
        let client = client(&self.settings);
        let lease = self.settings.timeout * (QUEUE_FACTOR + 1) + Duration::from_secs(5);
        let mut gates: HashMap<String, Arc<tokio::sync::Semaphore>> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::channel::<Attempt>(MAX_IN_FLIGHT);
        let sends = TaskTracker::new();
        let mut endpoints: HashMap<String, Arc<Endpoint>> = HashMap::new();
        let mut loaded_at: Option<Instant> = None;
        let mut in_flight: HashMap<String, u32> = HashMap::new();
        let mut failing: HashSet<String> = HashSet::new();
        let mut outcomes: Vec<Attempt> = Vec::new();
        let mut total_in_flight = 0usize;
        // Outcomes are written by a task of their own, so a commit never stalls the claims
        // (the finished events stay leased until it is written; nothing is sent twice).
        // Bound: RECORD_QUEUE batches; when it is full, this loop waits.
        let (record_tx, record_rx) = mpsc::channel::<Vec<Attempt>>(RECORD_QUEUE);
        let recorder = tokio::spawn(record(
            self.store.clone(),
            self.metrics.clone(),
            self.settings.disable_after,
            self.signals.clone(),
            record_rx,
        ));
        loop {
            // Record what finished.
            while let Ok(a) = done_rx.try_recv() {
                outcomes.push(a);
            }
            if !outcomes.is_empty() {
                for a in &outcomes {
                    total_in_flight -= 1;
                    if let Some(n) = in_flight.get_mut(&a.endpoint_id) {
                        *n = n.saturating_sub(1);
                    }
                    if a.outcome == Outcome::Delivered {
                        failing.remove(&a.endpoint_id);
                    } else {
                        failing.insert(a.endpoint_id.clone());
                    }
                    self.metrics.webhook_attempt(a);
                }
                let _ = record_tx.send(std::mem::take(&mut outcomes)).await;
            }
            if stop.is_cancelled() {
                if total_in_flight == 0 {
                    break;
                }
            } else {
                // Refresh the endpoints now and then (other nodes and the API change them).
                let stale = RELOAD_AFTER.min(self.settings.poll_interval);
                let changed = self
                    .signals
                    .1
                    .swap(false, std::sync::atomic::Ordering::AcqRel);
                if changed || loaded_at.is_none_or(|t| t.elapsed() >= stale) {
                    match self.store.webhook_list().await {
                        Ok(list) => {
                            failing.retain(|id| list.iter().any(|e| &e.id == id));
                            for e in &list {
                                if e.failing_since_ms.is_some() {
                                    failing.insert(e.id.clone());
                                }
                            }
                            endpoints = list
                                .into_iter()
                                .filter(|e| e.enabled)
                                .map(|e| (e.id.clone(), Arc::new(e)))
                                .collect();
                            gates.retain(|id, _| endpoints.contains_key(id));
                            loaded_at = Some(Instant::now());
                        }
                        Err(e) => self.quiet.warn(&e, "webhook endpoints not loaded"),
                    }
                }
                let claimed = self
                    .claim(&endpoints, &in_flight, &failing, total_in_flight, lease)
                    .await;
                for ev in claimed {
                    let Some(ep) = endpoints.get(&ev.endpoint_id).cloned() else {
                        continue; // disabled or deleted since: its lease runs out
                    };
                    *in_flight.entry(ev.endpoint_id.clone()).or_default() += 1;
                    total_in_flight += 1;
                    let gate = gates
                        .entry(ev.endpoint_id.clone())
                        .or_insert_with(|| {
                            Arc::new(tokio::sync::Semaphore::new(
                                self.settings.concurrency.max(1) as usize,
                            ))
                        })
                        .clone();
                    let (client, tx, settings) =
                        (client.clone(), done_tx.clone(), self.settings.clone());
                    sends.spawn(async move {
                        let _permit = gate.acquire_owned().await;
                        let a = send(&client, &ep, ev, &settings).await;
                        let _ = tx.send(a).await;
                    });
                }
            }
            // Stopping (the token may have been cancelled while this loop awaited the
            // store above): only wait for the requests in flight; the top of the loop
            // records them and leaves when none is left.
            if stop.is_cancelled() {
                if total_in_flight > 0 {
                    if let Some(a) = done_rx.recv().await {
                        outcomes.push(a);
                    }
                }
                continue;
            }
            tokio::select! {
                Some(a) = done_rx.recv() => outcomes.push(a),
                _ = self.signals.0.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = stop.cancelled() => {}
            }
        }
        sends.close();
        sends.wait().await;
        drop(record_tx);
        let _ = recorder.await;
    }

    /// Claim what the endpoints have room for; nothing when nothing is due (a read).
    async fn claim(
        &self,
        endpoints: &HashMap<String, Arc<Endpoint>>,
        in_flight: &HashMap<String, u32>,
        failing: &HashSet<String>,
        total: usize,
        lease: Duration,
    ) -> Vec<Claimed> {
        let room = MAX_IN_FLIGHT.saturating_sub(total) as u32;
        let wants: Vec<(String, u32)> = endpoints
            .keys()
            .map(|id| {
                let cap = if failing.contains(id) {
                    1
                } else {
                    self.settings.concurrency.max(1) * QUEUE_FACTOR
                };
                let busy = in_flight.get(id).copied().unwrap_or(0);
                (id.clone(), cap.saturating_sub(busy).min(room))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        if wants.is_empty() {
            return vec![];
        }
        let now = now_ms();
        match self.store.webhook_any_due(now).await {
            Ok(true) => {}
            Ok(false) => return vec![],
            Err(e) => {
                self.quiet.warn(&e, "webhook events not read");
                return vec![];
            }
        }
        let until = now + lease.as_millis() as i64;
        match self.store.webhook_claim(now, until, wants).await {
            Ok(c) => c,
            Err(e) => {
                self.quiet.warn(&e, "webhook events not claimed");
                vec![]
            }
        }
    }
}

/// Writes outcomes as they come, in batches of up to `COMPLETE_BATCH` (one transaction
/// each); wakes the worker after each (a delivery's next event may be claimable now) and
/// makes it reload the endpoints when one was disabled.
async fn record(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    disable_after: Duration,
    (wake, reload): (Arc<Notify>, Arc<std::sync::atomic::AtomicBool>),
    mut rx: mpsc::Receiver<Vec<Attempt>>,
) {
    let mut batch: Vec<Attempt> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.extend(first);
        while batch.len() < COMPLETE_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let disable_before =
            now_ms() - i64::try_from(disable_after.as_millis()).unwrap_or(i64::MAX);
        for chunk in batch.chunks(COMPLETE_BATCH) {
            let mut tries = 0;
            loop {
                match store.webhook_complete(chunk.to_vec(), disable_before).await {
                    Ok(disabled) => {
                        for id in disabled {
                            metrics
                                .webhooks_disabled
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(endpoint = %id,
                                "webhook endpoint disabled: every attempt failed for longer than dispatch.webhooks.disable_after");
                            reload.store(true, std::sync::atomic::Ordering::Release);
                        }
                        break;
                    }
                    Err(e) => {
                        tries += 1;
                        if tries >= 3 {
                            // The events stay leased and are sent again when the lease
                            // ends (at-least-once).
                            tracing::error!(error = %e, count = chunk.len(),
                                "webhook outcomes not recorded; the events will be sent again");
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                    }
                }
            }
        }
        batch.clear();
        wake.notify_one();
    }
}

/// The `[[webhooks]]` endpoints, checked; the error names the key (`webhooks[1].url: …`).
pub fn from_config(
    list: &[WebhookEndpointSettings],
    allow_hosts: &[String],
) -> Result<Vec<Endpoint>, String> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, w) in list.iter().enumerate() {
        let at = |field: &str, m: String| format!("webhooks[{i}].{field}: {m}");
        webhook::check_id(&w.id).map_err(|m| at("id", m))?;
        if !seen.insert(w.id.as_str()) {
            return Err(at("id", format!("`{}` is listed twice", w.id)));
        }
        webhook::check_url(&w.url, allow_hosts).map_err(|m| at("url", m))?;
        let events = webhook::EventType::bits_of(&w.events).map_err(|m| at("events", m))?;
        webhook::secret_key(w.secret.expose()).map_err(|m| at("secret", m))?;
        out.push(Endpoint {
            id: w.id.clone(),
            url: w.url.clone(),
            description: w.description.clone(),
            events,
            channels: w.channels.clone(),
            types: w.types.clone(),
            senders: w.senders.clone(),
            secret: w.secret.clone(),
            old_secret: None,
            old_until_ms: None,
            enabled: true,
            disabled_reason: None,
            failing_since_ms: None,
            source: webhook::Source::Config,
            created_at_ms: 0,
            updated_at_ms: 0,
        });
    }
    Ok(out)
}

/// One attempt: sign, POST, read a capped piece of the answer, classify.
pub async fn send(
    client: &reqwest::Client,
    ep: &Endpoint,
    ev: Claimed,
    settings: &WebhookSettings,
) -> Attempt {
    let started = Instant::now();
    let at_ms = now_ms();
    let id = webhook::event_id(ev.row);
    let body = body(&ev);
    let timestamp = at_ms / 1000;
    let keys: Vec<Vec<u8>> = ep
        .signing_secrets(at_ms)
        .into_iter()
        .filter_map(|s| webhook::secret_key(s.expose()).ok())
        .collect();
    let result = client
        .post(&ep.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature(&keys, &id, timestamp, &body))
        .body(body)
        .send()
        .await;
    let (code, response, error, retry_after) = match result {
        Ok(mut resp) => {
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut bytes = Vec::new();
            while bytes.len() < RESPONSE_READ {
                match resp.chunk().await {
                    Ok(Some(c)) => bytes.extend_from_slice(&c),
                    _ => break,
                }
            }
            let text: String = String::from_utf8_lossy(&bytes)
                .chars()
                .take(RESPONSE_KEPT)
                .collect();
            let error = if status.is_success() {
                None
            } else if status.is_redirection() {
                Some(format!(
                    "HTTP {}: redirects are not followed (to {}); set the endpoint's URL to the final address",
                    status.as_u16(),
                    location.as_deref().unwrap_or("?")
                ))
            } else {
                Some(format!("HTTP {}", status.as_u16()))
            };
            (Some(status.as_u16()), Some(text), error, retry_after)
        }
        Err(e) => {
            let e = e.without_url(); // the URL may hold a token in its query
                                     // reqwest's own message is generic ("error sending request"): the innermost
                                     // cause says what happened (connection refused, DNS, TLS …).
            let mut cause: &dyn std::error::Error = &e;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            let why = if e.is_timeout() {
                format!("no answer within {:?}", settings.timeout)
            } else if e.is_connect() {
                format!("connection failed: {cause}")
            } else {
                format!("request failed: {cause}")
            };
            (None, None, Some(why), None)
        }
    };
    let retryable = match code {
        None => true,
        Some(c) => c == 408 || c == 429 || c >= 500,
    };
    let outcome = if error.is_none() {
        Outcome::Delivered
    } else if retryable && ev.attempts < i64::from(settings.max_attempts) {
        let wait = retry_after
            .map(|d| d.min(settings.retry_max))
            .unwrap_or_else(|| {
                backoff(
                    ev.attempts,
                    settings.retry_base,
                    settings.retry_max,
                    &mut rand::rng(),
                )
            });
        Outcome::Retry {
            at_ms: now_ms() + wait.as_millis() as i64,
        }
    } else {
        Outcome::Failed
    };
    Attempt {
        row: ev.row,
        endpoint_id: ev.endpoint_id,
        lease_until_ms: ev.lease_until_ms,
        at_ms,
        latency_ms: started.elapsed().as_millis() as i64,
        code,
        response,
        error,
        outcome,
    }
}

/// Removes delivered and failed events older than `retention`, in batches; every node
/// runs it (batches are safe to run concurrently).
pub async fn prune(store: Arc<dyn Store>, settings: WebhookSettings, stop: CancellationToken) {
    const BATCH: u32 = 1000;
    let every = (settings.retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let cutoff = now_ms() - i64::try_from(settings.retention.as_millis()).unwrap_or(i64::MAX);
        loop {
            match store.webhook_prune(cutoff, BATCH).await {
                Ok(n) if n == u64::from(BATCH) && !stop.is_cancelled() => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook retention failed; retried later");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks reference vector (standard-webhooks/standard-webhooks,
    /// libraries' tests): this secret, id, timestamp and payload sign to this value.
    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let key = webhook::secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_body_carries_type_timestamp_and_data() {
        let ev = Claimed {
            row: 7,
            endpoint_id: "e".into(),
            kind: "delivery.failed".into(),
            data: r#"{"reason":"no_address"}"#.into(),
            created_at_ms: 0,
            attempts: 1,
            lease_until_ms: 0,
        };
        let v: serde_json::Value = serde_json::from_str(&body(&ev)).unwrap();
        assert_eq!(v["type"], "delivery.failed");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["data"]["reason"], "no_address");
    }
}
