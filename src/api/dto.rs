//! Wire types of the management API and the inbox (serde + OpenAPI schemas).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{inbox, rfc3339, Delivery, InboxItem, Message, Status};
use crate::session::SessionInfo;

/// A user id as sent by clients: a string, or an integer (older clients send numbers).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum UserId {
    Text(String),
    Number(i64),
}

impl UserId {
    pub fn into_string(self) -> String {
        match self {
            UserId::Text(s) => s,
            UserId::Number(n) => n.to_string(),
        }
    }
}

/// `POST /api/v1/messages`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Required unless `template` is given.
    pub title: Option<String>,
    /// Any string; may itself be JSON text. Required unless `template` is given.
    pub content: Option<String>,
    /// Message type, free for the sender's use (default 0).
    #[serde(rename = "type", default)]
    pub msg_type: i64,
    /// User ids. Absent or empty: every user online at this moment (broadcast).
    #[serde(default)]
    pub receivers: Option<Vec<UserId>>,
    /// Channel instance names (default `["websocket"]`).
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    /// Template name: renders `templates/<name>/<family>.<part>.j2` for the family of every
    /// requested channel (each family must exist → else 422); then `title`/`content` are
    /// optional (from the `websocket` rendering, else the e-mail subject/text).
    pub template: Option<String>,
    /// Data for the template (a JSON object; only with `template`). A variable the
    /// template needs but `data` lacks → 422 naming it.
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    /// Who sends it (default `"api"`): 1–128 characters.
    #[schema(min_length = 1, max_length = 128)]
    pub sender: Option<String>,
    /// Routing policy, instead of `channels`: `all` (every step's channel at once) or
    /// `failover` (one step after another per receiver, until one succeeds; see docs/api.md
    /// §3.4). Absent: `channels`, else the configured default of the template or
    /// type, else `["websocket"]`. The response's `deliveries` then counts the chains.
    pub routing: Option<crate::routing::PolicySpec>,
    /// RFC 3339: deliver at this time instead of now (± 1 s; at most a year ahead; a past
    /// time sends at once). Needs explicit `receivers`. Deleting the message cancels it.
    #[serde(rename = "sendAt")]
    pub send_at: Option<String>,
    /// RFC 3339, after `sendAt`/now: deliveries still undelivered then become `failed` with
    /// error `expired` and are not replayed (a provider delivery already `sent` stays).
    #[serde(rename = "expiresAt")]
    pub expires_at: Option<String>,
}

/// `POST /message/sendMessage` (seed-compatible).
#[derive(Debug, Deserialize, ToSchema)]
pub struct SeedSendRequest {
    pub content: String,
    /// Required: the receivers, or `[]` to broadcast to every user online (a missing
    /// `receiver` is a 422, so a misspelt key never broadcasts).
    #[serde(default)]
    pub receiver: Option<Vec<UserId>>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(rename = "type", default)]
    pub msg_type: i64,
    /// 1–128 characters (default `"api"`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub sender: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SendResponse {
    /// The message id.
    pub id: String,
    /// Number of deliveries created.
    pub deliveries: usize,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDto {
    pub receiver: String,
    pub channel: String,
    /// `pending`, `sent`, `delivered`, `read` or `failed`.
    pub status: String,
    pub attempts: i64,
    /// RFC 3339.
    pub updated_at: String,
    /// Last error: `no_address`, `opted_out`, `bad_recipient: …`, `permanent: …`,
    /// `attempts_exhausted: …`; on a `pending` provider delivery, the error of the last
    /// attempt (a retry is scheduled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the next attempt is due (pending provider deliveries), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The provider's id for the hand-over (SMS BizId, Twilio sid, WeChat msgid …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
}

impl From<&Delivery> for DeliveryDto {
    fn from(d: &Delivery) -> Self {
        DeliveryDto {
            receiver: d.receiver.clone(),
            channel: d.channel.clone(),
            status: d.status.as_str().to_owned(),
            attempts: d.attempts,
            updated_at: rfc3339(d.updated_at_ms),
            error: d.error.clone(),
            next_attempt_at: match d.status {
                crate::model::Status::Pending => d.next_attempt_ms.map(rfc3339),
                _ => None,
            },
            provider_id: d.provider_id.clone(),
        }
    }
}

/// Deliveries per status.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliverySummary {
    pub total: i64,
    pub pending: i64,
    pub sent: i64,
    pub delivered: i64,
    pub read: i64,
    pub failed: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageDto {
    pub id: String,
    pub title: String,
    pub content: String,
    #[serde(rename = "type")]
    pub msg_type: i64,
    pub sender: String,
    /// RFC 3339.
    pub created_at: String,
    /// The template it was sent with, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    pub deliveries: Vec<DeliveryDto>,
    /// Counts over all deliveries.
    pub summary: DeliverySummary,
    /// In listings only the first 100 deliveries are shown; `GET /api/v1/messages/{id}` has all.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deliveries_truncated: bool,
    /// RFC 3339, when scheduled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_at: Option<String>,
    /// RFC 3339, when it expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The failover policy it was sent with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<crate::routing::PolicySpec>,
    /// Its failover chains, one per receiver, with every step taken and why
    /// (`GET /api/v1/messages/{id}` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteDto>,
}

/// A failover chain of one receiver.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteDto {
    pub receiver: String,
    /// `running`, `succeeded`, `exhausted` or `cancelled`.
    pub state: String,
    /// The current (or last) step's index; absent before the first step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    pub log: Vec<crate::routing::LogEntry>,
}

impl From<&Message> for MessageDto {
    fn from(m: &Message) -> Self {
        let c = &m.delivery_counts;
        let total: i64 = c.iter().sum();
        MessageDto {
            id: m.id.clone(),
            title: m.title.clone(),
            content: m.content.clone(),
            msg_type: m.msg_type,
            sender: m.sender.clone(),
            created_at: rfc3339(m.created_at_ms),
            template: m.template.clone(),
            deliveries: m.deliveries.iter().map(DeliveryDto::from).collect(),
            summary: DeliverySummary {
                total,
                pending: c[Status::Pending.code() as usize],
                sent: c[Status::Sent.code() as usize],
                delivered: c[Status::Delivered.code() as usize],
                read: c[Status::Read.code() as usize],
                failed: c[Status::Failed.code() as usize],
            },
            deliveries_truncated: (m.deliveries.len() as i64) < total,
            send_at: m.send_at_ms.map(rfc3339),
            expires_at: m.expires_at_ms.map(rfc3339),
            routing: m.routing.as_ref().map(|p| crate::routing::PolicySpec {
                policy: p.policy,
                steps: p
                    .steps
                    .iter()
                    .map(|s| crate::routing::StepSpec {
                        channel: s.channel.clone(),
                        wait: s.wait_ms.map(|w| {
                            humantime::format_duration(std::time::Duration::from_millis(
                                w.max(0) as u64
                            ))
                            .to_string()
                        }),
                    })
                    .collect(),
            }),
            routes: m
                .routes
                .iter()
                .map(|r| RouteDto {
                    receiver: r.receiver.clone(),
                    state: r.state.as_str().into(),
                    step: r.step,
                    log: r.log.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    pub items: Vec<MessageDto>,
    pub page: u32,
    pub size: u32,
    pub total: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboxMessage {
    pub id: String,
    pub title: String,
    pub content: String,
    #[serde(rename = "type")]
    pub msg_type: i64,
    pub sender: String,
    pub created_at: String,
    /// This user's delivery status.
    pub status: String,
    /// Where the entry stands in the inbox: pass it as `before`/`after` (opaque).
    pub cursor: String,
    /// Inbox state (docs/api.md §6.1).
    pub seen: bool,
    pub read: bool,
    pub archived: bool,
}

impl From<&InboxItem> for InboxMessage {
    fn from(i: &InboxItem) -> Self {
        InboxMessage {
            id: i.id.clone(),
            title: i.title.clone(),
            content: i.content.clone(),
            msg_type: i.msg_type,
            sender: i.sender.clone(),
            created_at: rfc3339(i.created_at_ms),
            status: i.status.as_str().to_owned(),
            cursor: i.seq.to_string(),
            seen: i.flags & inbox::SEEN != 0,
            read: i.flags & inbox::READ != 0,
            archived: i.flags & inbox::ARCHIVED != 0,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboxPage {
    pub items: Vec<InboxMessage>,
    pub page: u32,
    pub size: u32,
    /// Entries matching the filters (all pages).
    pub total: i64,
    /// Pass as `before` for the next (older) page; `null` when there is none.
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/inbox/counts`: the user's entries that are not archived.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct InboxCounts {
    pub unseen: u64,
    pub unread: u64,
    pub total: u64,
}

impl From<inbox::Counts> for InboxCounts {
    fn from(c: inbox::Counts) -> Self {
        InboxCounts {
            unseen: c.unseen,
            unread: c.unread,
            total: c.total,
        }
    }
}

/// `POST /api/v1/inbox/{op}`: either `ids` or `all` (optionally up to `before`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxChange {
    /// Message ids (1–1000), every one in this inbox.
    pub ids: Option<Vec<String>>,
    /// Every entry (with `before`: those at or before that cursor).
    pub all: Option<bool>,
    /// A cursor: with `all`, only entries at or before it (what the user saw).
    pub before: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboxChanged {
    /// Entries whose state changed.
    pub changed: u64,
    /// The counts after the change.
    pub counts: InboxCounts,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Collected {
    /// Undelivered messages, oldest first, now marked `delivered`.
    pub items: Vec<InboxMessage>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientDto {
    pub session_id: String,
    pub user_id: String,
    pub login_name: Option<String>,
    pub device: Option<String>,
    /// Always `online` (closed sessions are not listed).
    pub status: String,
    /// RFC 3339.
    pub login_time: String,
    pub remote_addr: String,
    pub node: String,
}

impl From<SessionInfo> for ClientDto {
    fn from(s: SessionInfo) -> Self {
        ClientDto {
            session_id: s.session_id,
            user_id: s.user_id,
            login_name: s.login_name,
            device: s.device,
            status: "online".into(),
            login_time: rfc3339(s.login_time_ms),
            remote_addr: s.remote_addr.to_string(),
            node: s.node.to_string(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelDto {
    /// Instance name, as used in a send's `channels`.
    pub name: String,
    pub kind: String,
    pub enabled: bool,
    pub summary: String,
    /// `ok`, `degraded` or `down`.
    pub health: String,
    /// Why the health is not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_detail: Option<String>,
    /// Status changes counted since the server started.
    pub sent: u64,
    pub delivered: u64,
    pub read: u64,
    pub failed: u64,
    /// Classified channel errors since start (every failed attempt counts).
    pub errors: u64,
    /// Retries scheduled since start.
    pub retries: u64,
    /// Outbox deliveries waiting now (first attempt, retry or in flight); 0 for WebSocket.
    pub pending: i64,
    /// Of those, deliveries attempted at least once and waiting for a retry.
    pub retrying: i64,
    /// Sends in flight now.
    pub in_flight: usize,
    /// Outbox limits (provider channels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Daily quota (sends claimed per window); when spent, deliveries wait for the next
    /// window (still `pending`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_quota: Option<u64>,
    /// Claims counted in the current quota window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_used: Option<u64>,
    /// When the current quota window ends, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_resets_at: Option<String>,
}

/// `PUT /api/v1/recipients/{userId}`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RecipientBody {
    pub name: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Phone number in E.164 form (`+8613800000000`).
    pub phone: Option<String>,
    pub wechat_open_id: Option<String>,
    /// Push devices to register for this user (idempotent; existing ones are kept — remove
    /// one with `DELETE /api/v1/recipients/{userId}/devices/{id}`). A token another user
    /// had registered moves to this user, as with `POST /api/v1/me/devices`, and is logged.
    pub devices: Option<Vec<DeviceBody>>,
    /// Opt-outs: `{"optOutChannels": ["sms", "email"], "optOutTypes": [3]}` (instance or
    /// family names; message types). Opted-out deliveries are recorded as `failed` with
    /// `opted_out`. Other keys → 422.
    #[schema(value_type = Option<Object>)]
    pub preferences: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecipientDto {
    pub user_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub wechat_open_id: Option<String>,
    /// Registered push devices, active and deactivated.
    pub devices: Vec<DeviceDto>,
    #[schema(value_type = Object)]
    pub preferences: serde_json::Value,
    pub updated_at: String,
}

/// `GET /api/v1/stats/deliveries`
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStats {
    /// Start of the first bucket, RFC 3339 (whole minute).
    pub from: String,
    pub bucket_seconds: u32,
    pub buckets: usize,
    pub channels: Vec<ChannelSeries>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelSeries {
    pub channel: String,
    /// Status → one count per bucket, oldest first.
    pub series: std::collections::BTreeMap<String, Vec<u64>>,
}

/// `POST /api/v1/me/devices` (and the `devices` of `PUT /api/v1/recipients/{userId}`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceBody {
    /// `fcm`, `apns` or `webpush`.
    pub platform: String,
    /// The FCM registration token or the APNs device token (hex).
    pub token: Option<String>,
    /// Web Push: the browser's `PushSubscription` (`{"endpoint", "keys": {"p256dh", "auth"}}`).
    #[schema(value_type = Option<Object>)]
    pub subscription: Option<serde_json::Value>,
    /// A label for people ("Alice's phone").
    pub name: Option<String>,
}

/// A registered push device.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceDto {
    pub id: i64,
    pub platform: String,
    /// FCM/APNs token; for Web Push the subscription's endpoint.
    pub token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `false` once a provider said the token is gone.
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deactivated_at: Option<String>,
    /// Why it was deactivated (e.g. `UNREGISTERED`, `410 Unregistered`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deactivated_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&crate::model::DeviceRecord> for DeviceDto {
    fn from(d: &crate::model::DeviceRecord) -> Self {
        let token = if d.platform == "webpush" {
            serde_json::from_str::<serde_json::Value>(&d.token)
                .ok()
                .and_then(|v| v["endpoint"].as_str().map(str::to_owned))
                .unwrap_or_default()
        } else {
            d.token.clone()
        };
        DeviceDto {
            id: d.id,
            platform: d.platform.clone(),
            token,
            name: d.name.clone(),
            active: d.active,
            deactivated_at: d.deactivated_at_ms.map(rfc3339),
            deactivated_reason: d.deactivated_reason.clone(),
            created_at: rfc3339(d.created_at_ms),
            updated_at: rfc3339(d.updated_at_ms),
        }
    }
}
