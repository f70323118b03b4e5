//! Planning a send: everything between a parsed request and the `202` (docs/api.md §3).
//!
//! The HTTP handlers (`api/messages.rs`, `api/seed.rs`) parse and map errors; this checks
//! what only the server can check (channel instances, templates, times), routes, renders,
//! decides the receivers (a broadcast: who is online now), plans one delivery per receiver
//! and channel (or one compact audience), applies fan-out admission, stores the message
//! and hands it to the [`Dispatcher`]. The scheduler plans failover steps with
//! [`Planner::plan_one`], the same rules a send uses.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_channel::{AddressKind, MessageView};

use super::outbox::address_of;
use super::{Dispatcher, Planned};
use crate::metrics::Metrics;
use crate::model::{
    new_message_id, now_ms, rfc3339, Idempotency, Inserted, NewAudience, NewDelivery, NewMessage,
    Preferences, Recipient, RenderedByFamily, Status, WEBSOCKET,
};
use crate::routing::{Policy, PolicyKind, PolicySpec, RoutingSettings};
use crate::session::{Backlog, SessionRegistry};
use crate::store::{Store, StoreError};
use crate::templates::Templates;

/// Most receivers one send may name.
pub const MAX_RECEIVERS: usize = 10_000;
/// Longest id (receiver, sender, template name).
pub const MAX_ID_LEN: usize = 128;
const MAX_TITLE_LEN: usize = 1024;
/// Latest `sendAt`, from now.
const MAX_SCHEDULE_MS: i64 = 366 * 86_400_000;

/// A send after parsing, shared by `/api/v1/messages` and the seed route.
#[derive(Debug, Default)]
pub struct SendInput {
    pub title: Option<String>,
    pub content: Option<String>,
    pub msg_type: i64,
    /// `None` or empty: a broadcast to every user online now.
    pub receivers: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    pub template: Option<String>,
    pub data: Option<serde_json::Value>,
    pub sender: Option<String>,
    pub routing: Option<PolicySpec>,
    pub send_at: Option<String>,
    pub expires_at: Option<String>,
}

/// A stored send: `202 {"id", "deliveries"}`.
#[derive(Debug)]
pub struct Accepted {
    pub id: String,
    /// Deliveries planned (a failover message: its chains, one per receiver).
    pub deliveries: usize,
}

/// Why a send was not stored. Nothing was stored in any case.
#[derive(Debug)]
pub enum SendError {
    /// A field is invalid (`422`, naming it).
    Invalid { field: String, message: String },
    /// This node's WebSocket sessions have too many frames queued (`503`).
    Backlog,
    /// The store refused or failed (`503`, `Retry-After` when it helps).
    Store(StoreError),
}

impl SendError {
    fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        SendError::Invalid {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

impl From<StoreError> for SendError {
    fn from(e: StoreError) -> Self {
        SendError::Store(e)
    }
}

/// What a [`Planner`] needs; built once at start.
pub struct PlannerParts {
    pub dispatcher: Dispatcher,
    pub store: Arc<dyn Store>,
    pub registry: Arc<dyn SessionRegistry>,
    pub templates: Arc<Templates>,
    pub metrics: Arc<Metrics>,
    pub backlog: Arc<Backlog>,
    /// `[routing]`: default policies per template and message type.
    pub routing: RoutingSettings,
    /// `database.audience_window`.
    pub audience_window: Duration,
    /// `dispatch.fanout_backlog` (0: off).
    pub fanout_backlog: usize,
    /// Some recipient has preferences at start.
    pub preferences_present: bool,
}

/// Plans and accepts sends; a cheap-clone handle.
#[derive(Clone)]
pub struct Planner(Arc<Inner>);

struct Inner {
    parts: PlannerParts,
    /// Some recipient has preferences (opt-outs): sends must look receivers up. Set at
    /// start and on writes; never cleared while running (a stale `true` only costs a lookup).
    preferences_present: AtomicBool,
}

impl Planner {
    pub fn new(parts: PlannerParts) -> Self {
        let preferences_present = AtomicBool::new(parts.preferences_present);
        Planner(Arc::new(Inner {
            parts,
            preferences_present,
        }))
    }

    /// A recipient with preferences is about to be written: sends look receivers up from
    /// now on (call before the write, so a racing send already does).
    pub fn note_preferences(&self) {
        self.0.preferences_present.store(true, Relaxed);
    }

    pub fn dispatcher(&self) -> &Dispatcher {
        &self.0.parts.dispatcher
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.parts.store
    }

    pub fn registry(&self) -> &Arc<dyn SessionRegistry> {
        &self.0.parts.registry
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.parts.metrics
    }

    /// Validate, store (durably) and dispatch a send. `Ok` only after the commit that holds
    /// the message returned.
    pub async fn accept(
        &self,
        req: SendInput,
        idem: Option<Idempotency>,
    ) -> Result<Accepted, SendError> {
        let p = &self.0.parts;
        // The outbox's clock: the system clock, or the one a test injected.
        let created_at_ms = p.dispatcher.clock().now_ms();
        let send_at = parse_time("sendAt", req.send_at.as_deref())?;
        let expires_at = parse_time("expiresAt", req.expires_at.as_deref())?;
        if send_at.is_some_and(|t| t > created_at_ms + MAX_SCHEDULE_MS) {
            return Err(SendError::invalid("sendAt", "at most one year ahead"));
        }
        if let Some(e) = expires_at {
            let start = send_at.unwrap_or(created_at_ms).max(created_at_ms);
            if e <= start {
                return Err(SendError::invalid(
                    "expiresAt",
                    "must be later than sendAt (or now, without sendAt)",
                ));
            }
        }
        let (channels, routing) = self.route(
            req.channels,
            req.routing,
            req.template.as_deref(),
            req.msg_type,
        )?;
        let rendered = self.render(req.template.as_deref(), req.data.as_ref(), &channels)?;
        let (title, content) = title_and_content(
            req.title,
            req.content,
            req.template.as_deref(),
            req.data.as_ref(),
            &rendered,
        )?;
        if title.len() > MAX_TITLE_LEN {
            return Err(SendError::invalid(
                "title",
                format!("longer than {MAX_TITLE_LEN} bytes"),
            ));
        }
        let sender = req.sender.unwrap_or_else(|| "api".into());
        check_id("sender", &sender)?;

        let explicit = req.receivers.filter(|r| !r.is_empty());
        let broadcast = explicit.is_none();
        let receivers = match explicit {
            Some(list) => unique_receivers(list)?,
            // Broadcast: every user online right now.
            None => {
                if send_at.is_some_and(|t| t > created_at_ms) {
                    return Err(SendError::invalid(
                        "receivers",
                        "a scheduled message (sendAt) needs explicit receivers: a broadcast goes to the users online when it is accepted",
                    ));
                }
                p.registry.online_users().await
            }
        };

        // A failover chain creates its deliveries step by step (the scheduler).
        let (mut deliveries, routes) = if routing.is_some() {
            (Vec::new(), receivers)
        } else {
            (
                self.plan(&receivers, &channels, req.msg_type).await?,
                Vec::new(),
            )
        };
        // A broadcast's presence deliveries that start pending become one compact audience
        // record (ARCHITECTURE.md, "Compact audiences"): a constant number of rows before
        // the `202`, however many users are online. The rest (provider channels, opt-outs)
        // are rows.
        let audience = match (broadcast, routing.is_some()) {
            (true, false) => compact_audience(&mut deliveries, created_at_ms, p.audience_window),
            _ => None,
        };
        if deliveries
            .iter()
            .any(|d| !d.outbox && d.status == Status::Pending)
            || audience.is_some()
        {
            self.refuse_over_backlog()?;
        }
        let id = new_message_id();
        let accepted_at = Instant::now();
        let data = req
            .template
            .as_ref()
            .map(|_| req.data.unwrap_or_else(|| serde_json::json!({})));
        let new = NewMessage {
            id: id.clone(),
            title,
            content,
            msg_type: req.msg_type,
            sender,
            created_at_ms,
            deliveries,
            idempotency: idem,
            template: req.template,
            data,
            rendered,
            send_at_ms: send_at,
            expires_at_ms: expires_at,
            routing,
            routes,
            audience,
        };
        let held = new.held_until().is_some();
        let timers =
            held || new.expires_at_ms.is_some() || !new.routes.is_empty() || new.audience.is_some();
        let view = Arc::new(MessageView {
            id: id.clone(),
            title: new.title.clone(),
            content: new.content.clone(),
            msg_type: new.msg_type,
            sender: new.sender.clone(),
            created_at: rfc3339(created_at_ms),
            template: new.template.clone(),
            data: new.data.clone(),
        });
        let planned_deliveries = new.deliveries.clone();
        let members = new
            .audience
            .as_ref()
            .map(|a| (a.channel.clone(), a.members.clone()));
        let chains = new.routes.len();
        let inserted = match p.store.insert_message(new).await {
            Ok(i) => i,
            Err(e) => {
                match &e {
                    StoreError::Overloaded(_) => p.metrics.count_refusal("overloaded"),
                    StoreError::Unavailable(_) => p.metrics.count_refusal("unavailable"),
                    _ => {}
                }
                return Err(e.into());
            }
        };
        let (seq, delivery_ids) = match inserted {
            Inserted::New { seq, delivery_ids } => {
                // The commit may have written webhook events (message.accepted …).
                p.dispatcher.wake_webhooks();
                (seq, delivery_ids)
            }
            Inserted::Existing { id, deliveries } => return Ok(Accepted { id, deliveries }),
            Inserted::KeyConflict => {
                return Err(SendError::invalid(
                    "Idempotency-Key",
                    "already used with a different request body",
                ))
            }
        };
        p.metrics.messages_accepted.fetch_add(1, Relaxed);
        self.count_born_failed(&planned_deliveries);
        // A failover message counts its chains (one per receiver).
        let member_count = members.as_ref().map_or(0, |(_, m)| m.len());
        let deliveries = (delivery_ids.len() + member_count).max(chains);
        if timers {
            p.dispatcher.wake_scheduler();
        }
        if held {
            // Provider rows come due at sendAt; presence rows wait for the release.
            return Ok(Accepted { id, deliveries });
        }
        let planned: Vec<Planned> = planned_deliveries
            .into_iter()
            .zip(delivery_ids)
            .filter(|(d, _)| d.status == Status::Pending)
            .map(|(d, delivery_id)| Planned {
                delivery_id,
                receiver: d.receiver,
                channel: d.channel,
                address: d.address,
            })
            .collect();
        if let Some((channel, members)) = &members {
            p.dispatcher
                .dispatch_audience(view.clone(), accepted_at, channel, seq, members)
                .await;
        }
        p.dispatcher.dispatch(view, accepted_at, planned).await;
        Ok(Accepted { id, deliveries })
    }

    /// Deliveries born `failed` (no_address, opted_out) count as failures: the one place
    /// that counts them, for sends and for failover steps alike.
    pub fn count_born_failed(&self, deliveries: &[NewDelivery]) {
        for d in deliveries.iter().filter(|d| d.status == Status::Failed) {
            if let Some(c) = self.0.parts.metrics.channel(&d.channel) {
                c.count(Status::Failed);
            }
        }
    }

    /// Fan-out admission control: refuse while this node's sessions have more frames
    /// queued than `dispatch.fanout_backlog` per session (nothing is stored).
    fn refuse_over_backlog(&self) -> Result<(), SendError> {
        let p = &self.0.parts;
        if p.fanout_backlog == 0 {
            return Ok(());
        }
        let sessions = p.registry.local_count().max(1);
        if p.backlog.frames() > p.fanout_backlog.saturating_mul(sessions) {
            p.metrics.count_refusal("backlog");
            return Err(SendError::Backlog);
        }
        Ok(())
    }

    /// Render `template` for the family of every requested channel (docs/api.md §3.3). A
    /// family without template files, or data the template cannot render, is invalid.
    fn render(
        &self,
        template: Option<&str>,
        data: Option<&serde_json::Value>,
        channels: &[String],
    ) -> Result<RenderedByFamily, SendError> {
        let p = &self.0.parts;
        let Some(name) = template else {
            if data.is_some() {
                return Err(SendError::invalid(
                    "data",
                    "`data` is only used with `template`",
                ));
            }
            return Ok(RenderedByFamily::new());
        };
        if name.is_empty() || name.len() > MAX_ID_LEN {
            return Err(SendError::invalid(
                "template",
                "must be 1 to 128 characters",
            ));
        }
        let families = p.templates.families(name);
        if families.is_empty() {
            let known = p.templates.names();
            return Err(SendError::invalid(
                "template",
                format!(
                    "template `{name}` not found (loaded: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        let empty = serde_json::json!({});
        let data = data.unwrap_or(&empty);
        if !data.is_object() {
            return Err(SendError::invalid("data", "must be a JSON object"));
        }
        let mut out = RenderedByFamily::new();
        for (i, c) in channels.iter().enumerate() {
            let Some(instance) = p.dispatcher.instance(c) else {
                continue;
            };
            let family = instance.descriptor.family();
            if out.contains_key(family) {
                continue;
            }
            if !p.templates.has(name, family) {
                return Err(SendError::invalid(
                    format!("channels[{i}]"),
                    format!(
                        "template `{name}` has nothing for channel `{c}` (expected {name}/{family}.<part>.j2; it has: {})",
                        families.join(", ")
                    ),
                ));
            }
            let parts = p
                .templates
                .render(name, family, data)
                .map_err(|e| SendError::invalid("data", e))?;
            out.insert(family.to_owned(), parts);
        }
        Ok(out)
    }

    /// The channels to render for and, for `failover`, the chain. A send's `routing` or
    /// `channels` wins over the defaults of its template, then of its type (`[routing]`).
    fn route(
        &self,
        channels: Option<Vec<String>>,
        routing: Option<PolicySpec>,
        template: Option<&str>,
        msg_type: i64,
    ) -> Result<(Vec<String>, Option<Policy>), SendError> {
        if channels.is_some() && routing.is_some() {
            return Err(SendError::invalid(
                "routing",
                "give either `channels` or `routing`, not both",
            ));
        }
        let (spec, field) = match (&routing, &channels) {
            (Some(spec), _) => (spec, "routing".to_owned()),
            (None, Some(_)) => return Ok((self.resolve_channels(channels)?, None)),
            (None, None) => match self.0.parts.routing.default_for(template, msg_type) {
                Some(spec) => (spec, "routing (configured default)".to_owned()),
                None => return Ok((self.resolve_channels(None)?, None)),
            },
        };
        let policy = spec
            .validate(&|name| self.check_instance(name))
            .map_err(|(f, e)| SendError::invalid(format!("{field}.{f}"), e))?;
        let names = policy.steps.iter().map(|s| s.channel.clone()).collect();
        Ok(match policy.policy {
            PolicyKind::All => (names, None),
            PolicyKind::Failover => (names, Some(policy)),
        })
    }

    fn resolve_channels(&self, requested: Option<Vec<String>>) -> Result<Vec<String>, SendError> {
        let Some(list) = requested else {
            return Ok(vec![WEBSOCKET.to_owned()]);
        };
        if list.is_empty() {
            return Err(SendError::invalid(
                "channels",
                "must name at least one channel instance",
            ));
        }
        let mut out: Vec<String> = Vec::with_capacity(list.len());
        for (i, name) in list.into_iter().enumerate() {
            self.check_instance(&name)
                .map_err(|e| SendError::invalid(format!("channels[{i}]"), e))?;
            if !out.contains(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// A channel instance a send may name: configured and enabled.
    fn check_instance(&self, name: &str) -> Result<(), String> {
        let dispatcher = &self.0.parts.dispatcher;
        match dispatcher.instance(name) {
            Some(i) if !i.enabled => Err(format!(
                "channel instance `{name}` is disabled (enabled = false)"
            )),
            Some(_) => Ok(()),
            None => {
                let known: Vec<&str> = dispatcher.instances().map(|i| i.name.as_str()).collect();
                Err(format!(
                    "unknown channel instance `{name}` (configured: {})",
                    known.join(", ")
                ))
            }
        }
    }

    /// One delivery per receiver × channel. Channels that need an address get it from the
    /// recipient record; without one the delivery is born `failed` with `no_address`. A
    /// receiver who opted out of the channel or of the message type gets a `failed`
    /// delivery with `opted_out` (recorded, not dropped).
    async fn plan(
        &self,
        receivers: &[String],
        channels: &[String],
        msg_type: i64,
    ) -> Result<Vec<NewDelivery>, StoreError> {
        let p = &self.0.parts;
        let mut out = Vec::with_capacity(receivers.len() * channels.len());
        let needs_records = self.0.preferences_present.load(Relaxed)
            || channels.iter().any(|c| {
                p.dispatcher
                    .instance(c)
                    .is_some_and(|i| i.descriptor.address != AddressKind::None)
            });
        let mut records: HashMap<&str, Option<Recipient>> = HashMap::new();
        if needs_records {
            for r in receivers {
                records.insert(r, p.store.get_recipient(r).await?);
            }
        }
        for r in receivers {
            let rec = records.get(r.as_str()).and_then(Option::as_ref);
            for c in channels {
                if let Some(d) = self.plan_one(r, c, rec, msg_type).await? {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// The delivery of one receiver on one channel instance (`None`: no such instance):
    /// pending, or born `failed` with `opted_out` / `no_address`. `rec` is the receiver's
    /// record (needed when the channel needs an address or the receiver may have
    /// preferences).
    pub async fn plan_one(
        &self,
        receiver: &str,
        channel: &str,
        rec: Option<&Recipient>,
        msg_type: i64,
    ) -> Result<Option<NewDelivery>, StoreError> {
        let p = &self.0.parts;
        let Some(instance) = p.dispatcher.instance(channel) else {
            return Ok(None);
        };
        let prefs = rec.map(Preferences::of);
        let kind = instance.descriptor.address;
        let opted_out = prefs.as_ref().is_some_and(|prefs| {
            prefs.mutes_type(msg_type) || prefs.mutes_channel(channel, instance.descriptor.family())
        });
        let address = match kind {
            // Push: the receiver's active devices of the platform (looked up again at every
            // attempt); "address" only says there is at least one.
            AddressKind::Device(platform) => {
                let any = p.store.active_devices(receiver, platform).await?;
                (!any.is_empty()).then(|| format!("{} device(s)", any.len()))
            }
            _ => rec.and_then(|rec| address_of(rec, kind)),
        };
        let (status, error) = if opted_out {
            (Status::Failed, Some("opted_out".to_owned()))
        } else if kind != AddressKind::None && address.is_none() {
            (Status::Failed, Some("no_address".to_owned()))
        } else {
            (Status::Pending, None)
        };
        Ok(Some(NewDelivery {
            receiver: receiver.to_owned(),
            channel: channel.to_owned(),
            status,
            error,
            address,
            outbox: !instance.descriptor.presence,
        }))
    }
}

/// Named receivers, checked and deduplicated in order.
fn unique_receivers(list: Vec<String>) -> Result<Vec<String>, SendError> {
    if list.len() > MAX_RECEIVERS {
        return Err(SendError::invalid(
            "receivers",
            format!("at most {MAX_RECEIVERS} receivers per message"),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.into_iter().enumerate() {
        check_id(&format!("receivers[{i}]"), &r)?;
        if seen.insert(r.clone()) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Move a broadcast's pending presence deliveries (on its first presence channel) out of
/// `deliveries` into a compact audience.
fn compact_audience(
    deliveries: &mut Vec<NewDelivery>,
    created_at_ms: i64,
    window: Duration,
) -> Option<NewAudience> {
    let channel = deliveries
        .iter()
        .find(|d| !d.outbox && d.status == Status::Pending)?
        .channel
        .clone();
    let mut members = Vec::new();
    deliveries.retain_mut(|d| {
        if !d.outbox && d.status == Status::Pending && d.channel == channel {
            members.push(std::mem::take(&mut d.receiver));
            false
        } else {
            true
        }
    });
    Some(NewAudience::new(
        channel,
        members,
        now_ms(),
        created_at_ms + window.as_millis() as i64,
    ))
}

/// The stored title and content: given ones win; else the WebSocket rendering
/// (`websocket.json.j2` → `{"title","content"}`); else the e-mail subject and text; else
/// the template name and the data as JSON text.
fn title_and_content(
    title: Option<String>,
    content: Option<String>,
    template: Option<&str>,
    data: Option<&serde_json::Value>,
    rendered: &RenderedByFamily,
) -> Result<(String, String), SendError> {
    let Some(name) = template else {
        let title = title.ok_or_else(|| SendError::invalid("title", "missing field `title`"))?;
        let content =
            content.ok_or_else(|| SendError::invalid("content", "missing field `content`"))?;
        return Ok((title, content));
    };
    let ws = rendered
        .get(WEBSOCKET)
        .and_then(|p| p.get("json"))
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok());
    let ws_field = |f: &str| -> Option<String> {
        ws.as_ref()?.get(f).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let email = rendered.get("email");
    let title = title
        .or_else(|| ws_field("title"))
        .or_else(|| email.and_then(|p| p.get("subject").cloned()))
        .unwrap_or_else(|| name.to_owned());
    let content = content
        .or_else(|| ws_field("content"))
        .or_else(|| email.and_then(|p| p.get("txt").cloned()))
        .unwrap_or_else(|| data.map(|d| d.to_string()).unwrap_or_default());
    Ok((title, content))
}

fn check_id(field: &str, id: &str) -> Result<(), SendError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(SendError::invalid(
            field,
            format!("must be 1 to {MAX_ID_LEN} characters without control characters"),
        ));
    }
    Ok(())
}

/// An optional RFC 3339 date-time field, in ms since the epoch.
fn parse_time(field: &str, value: Option<&str>) -> Result<Option<i64>, SendError> {
    let Some(v) = value else { return Ok(None) };
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            SendError::invalid(
                field,
                format!("`{v}` is not an RFC 3339 date-time (e.g. 2026-12-01T08:00:00Z)"),
            )
        })?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms)
        .ok()
        .filter(|ms| *ms >= 0)
        .map(Some)
        .ok_or_else(|| SendError::invalid(field, "out of range"))
}
