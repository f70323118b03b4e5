//! What both backends read the same way: column lists, row → domain mappers and the
//! message-filter clause. A mapper takes any row through [`Cols`] (sqlx's SQLite and
//! PostgreSQL rows, and rusqlite's rows in the SQLite writer), by position, so each
//! column list below and its mapper are the one place a column is named.

use sqlx::{Database, QueryBuilder};

use super::StoreError;
use crate::config::Secret;
use crate::model::webhook;
use crate::model::{
    Delivery, DeviceRecord, InboxItem, Message, MessageFilter, OutboxMessage, Recipient, Status,
    StatusFilter,
};
use crate::routing::Policy;

/// Positional access to a row's columns, whatever the driver.
pub trait Cols {
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn blob(&self, i: usize) -> Result<Vec<u8>, StoreError>;
    /// A boolean (PostgreSQL `BOOLEAN`, SQLite `INTEGER` 0/1).
    fn flag(&self, i: usize) -> Result<bool, StoreError>;
}

macro_rules! sqlx_cols {
    ($row:ty) => {
        impl Cols for $row {
            fn int(&self, i: usize) -> Result<i64, StoreError> {
                Ok(sqlx::Row::try_get(self, i)?)
            }
            fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
                Ok(sqlx::Row::try_get(self, i)?)
            }
            fn text(&self, i: usize) -> Result<String, StoreError> {
                Ok(sqlx::Row::try_get(self, i)?)
            }
            fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
                Ok(sqlx::Row::try_get(self, i)?)
            }
            fn blob(&self, i: usize) -> Result<Vec<u8>, StoreError> {
                Ok(sqlx::Row::try_get(self, i)?)
            }
            fn flag(&self, i: usize) -> Result<bool, StoreError> {
                Ok(sqlx::Row::try_get(self, i)?)
            }
        }
    };
}

sqlx_cols!(sqlx::sqlite::SqliteRow);
sqlx_cols!(sqlx::postgres::PgRow);

impl Cols for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }
    fn blob(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.get(i)?)
    }
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.get::<_, i64>(i)? != 0)
    }
}

/// `messages m` columns of a [`Message`] head ([`message_head`]).
pub const HEAD_COLUMNS: &str = "m.seq, m.id, m.title, m.content, m.msg_type, m.sender, \
     m.created_at, m.template, m.send_at, m.expires_at, m.routing";

pub fn message_head(r: &impl Cols) -> Result<Message, StoreError> {
    Ok(Message {
        seq: r.int(0)?,
        id: r.text(1)?,
        title: r.text(2)?,
        content: r.text(3)?,
        msg_type: r.int(4)?,
        sender: r.text(5)?,
        created_at_ms: r.int(6)?,
        template: r.opt_text(7)?,
        send_at_ms: r.opt_int(8)?,
        expires_at_ms: r.opt_int(9)?,
        routing: policy(r.opt_text(10)?)?,
        routes: Vec::new(),
        deliveries: Vec::new(),
        delivery_counts: [0; 5],
    })
}

/// `deliveries` columns of a [`Delivery`] ([`delivery`]); `message_seq` comes second so
/// listings can group by it.
pub const DELIVERY_COLUMNS: &str = "id, message_seq, receiver, channel, status, attempts, \
     last_error, next_attempt_at, provider_id, created_at, updated_at";

pub fn delivery(r: &impl Cols) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: r.int(0)?,
        receiver: r.text(2)?,
        channel: r.text(3)?,
        status: Status::from_code(r.int(4)?),
        attempts: r.int(5)?,
        error: r.opt_text(6)?,
        next_attempt_ms: r.opt_int(7)?,
        provider_id: r.opt_text(8)?,
        created_at_ms: r.int(9)?,
        updated_at_ms: r.int(10)?,
    })
}

/// `messages m` + `deliveries d` columns of an [`InboxItem`] ([`inbox_item`]).
pub const INBOX_COLUMNS: &str =
    "m.seq, m.id, m.title, m.content, m.msg_type, m.sender, m.created_at, d.status, d.id, d.inbox";

pub fn inbox_item(r: &impl Cols) -> Result<InboxItem, StoreError> {
    Ok(InboxItem {
        seq: r.int(0)?,
        id: r.text(1)?,
        title: r.text(2)?,
        content: r.text(3)?,
        msg_type: r.int(4)?,
        sender: r.text(5)?,
        created_at_ms: r.int(6)?,
        status: Status::from_code(r.int(7)?),
        delivery_id: r.int(8)?,
        flags: r.int(9)?,
    })
}

/// `messages` columns of an inbox item without its delivery (compact members: the status
/// and id come from the audience). Same order as [`INBOX_COLUMNS`]' first seven.
pub const MESSAGE_ITEM_COLUMNS: &str = "seq, id, title, content, msg_type, sender, created_at";

pub fn message_item(
    r: &impl Cols,
    status: Status,
    delivery_id: i64,
) -> Result<InboxItem, StoreError> {
    Ok(InboxItem {
        seq: r.int(0)?,
        id: r.text(1)?,
        title: r.text(2)?,
        content: r.text(3)?,
        msg_type: r.int(4)?,
        sender: r.text(5)?,
        created_at_ms: r.int(6)?,
        status,
        delivery_id,
        flags: crate::model::inbox::derived(status),
    })
}

pub const DEVICE_COLUMNS: &str = "id, user_id, platform, token, name, active, deactivated_at, \
     deactivated_reason, created_at, updated_at";

pub fn device(r: &impl Cols) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        id: r.int(0)?,
        user_id: r.text(1)?,
        platform: r.text(2)?,
        token: r.text(3)?,
        name: r.opt_text(4)?,
        active: r.flag(5)?,
        deactivated_at_ms: r.opt_int(6)?,
        deactivated_reason: r.opt_text(7)?,
        created_at_ms: r.int(8)?,
        updated_at_ms: r.int(9)?,
    })
}

/// `webhooks` columns of an [`webhook::Endpoint`] ([`webhook`]).
pub const WEBHOOK_COLUMNS: &str = "id, url, description, events, channels, types, senders, \
     secret, old_secret, old_until, enabled, disabled_reason, failing_since, source, \
     created_at, updated_at";

pub fn webhook(r: &impl Cols) -> Result<webhook::Endpoint, StoreError> {
    fn list<T: serde::de::DeserializeOwned>(
        v: Option<String>,
        col: &str,
    ) -> Result<Option<Vec<T>>, StoreError> {
        v.map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| StoreError::Corrupt(format!("webhooks.{col}: {e}")))
        })
        .transpose()
    }
    Ok(webhook::Endpoint {
        id: r.text(0)?,
        url: r.text(1)?,
        description: r.text(2)?,
        events: r.int(3)?,
        channels: list(r.opt_text(4)?, "channels")?,
        types: list(r.opt_text(5)?, "types")?,
        senders: list(r.opt_text(6)?, "senders")?,
        secret: Secret::new(r.text(7)?),
        old_secret: r.opt_text(8)?.map(Secret::new),
        old_until_ms: r.opt_int(9)?,
        enabled: r.flag(10)?,
        disabled_reason: r.opt_text(11)?,
        failing_since_ms: r.opt_int(12)?,
        source: webhook::Source::parse(&r.text(13)?),
        created_at_ms: r.int(14)?,
        updated_at_ms: r.int(15)?,
    })
}

/// The JSON text of an endpoint's filter list (`NULL` for "all").
pub fn webhook_list_json<T: serde::Serialize>(v: &Option<Vec<T>>) -> Option<String> {
    v.as_ref()
        .map(|l| serde_json::to_string(l).expect("a list serializes"))
}

/// `webhook_attempts a JOIN webhook_events e` columns of an [`webhook::AttemptRecord`].
pub const ATTEMPT_COLUMNS: &str =
    "a.id, a.event_id, e.type, a.at, a.latency_ms, a.code, a.response, a.error, e.state";

pub fn webhook_attempt(r: &impl Cols) -> Result<webhook::AttemptRecord, StoreError> {
    Ok(webhook::AttemptRecord {
        id: r.int(0)?,
        event_row: r.int(1)?,
        kind: r.text(2)?,
        at_ms: r.int(3)?,
        latency_ms: r.int(4)?,
        code: r.opt_int(5)?.and_then(|c| u16::try_from(c).ok()),
        response: r.opt_text(6)?,
        error: r.opt_text(7)?,
        event_state: r.int(8)?,
    })
}

/// `webhook_events` columns of a [`webhook::Claimed`] (with `RETURNING`).
pub const CLAIMED_COLUMNS: &str = "id, endpoint_id, type, data, created_at, attempts, lease_until";

pub fn webhook_claimed(r: &impl Cols) -> Result<webhook::Claimed, StoreError> {
    Ok(webhook::Claimed {
        row: r.int(0)?,
        endpoint_id: r.text(1)?,
        kind: r.text(2)?,
        data: r.text(3)?,
        created_at_ms: r.int(4)?,
        attempts: r.int(5)?,
        lease_until_ms: r.int(6)?,
    })
}

pub const RECIPIENT_COLUMNS: &str =
    "user_id, name, email, phone, wechat_open_id, devices, preferences, updated_at";

pub fn recipient(r: &impl Cols) -> Result<Recipient, StoreError> {
    let json = |i: usize, col: &str| -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&r.text(i)?)
            .map_err(|e| StoreError::Corrupt(format!("recipients.{col}: {e}")))
    };
    Ok(Recipient {
        user_id: r.text(0)?,
        name: r.opt_text(1)?,
        email: r.opt_text(2)?,
        phone: r.opt_text(3)?,
        wechat_open_id: r.opt_text(4)?,
        devices: json(5, "devices")?,
        preferences: json(6, "preferences")?,
        updated_at_ms: r.int(7)?,
    })
}

pub const OUTBOX_MESSAGE_COLUMNS: &str = "seq, id, title, content, msg_type, sender, \
     created_at, template, data, rendered, expires_at, routing";

pub fn outbox_message(r: &impl Cols) -> Result<OutboxMessage, StoreError> {
    Ok(OutboxMessage {
        seq: r.int(0)?,
        id: r.text(1)?,
        title: r.text(2)?,
        content: r.text(3)?,
        msg_type: r.int(4)?,
        sender: r.text(5)?,
        created_at_ms: r.int(6)?,
        template: r.opt_text(7)?,
        data: r
            .opt_text(8)?
            .map(|d| serde_json::from_str(&d))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("messages.data: {e}")))?,
        rendered: r
            .opt_text(9)?
            .map(|d| serde_json::from_str(&d))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("messages.rendered: {e}")))?
            .unwrap_or_default(),
        expires_at_ms: r.opt_int(10)?,
        routing: policy(r.opt_text(11)?)?,
    })
}

pub fn policy(json: Option<String>) -> Result<Option<Policy>, StoreError> {
    json.map(|j| serde_json::from_str(&j))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("messages.routing: {e}")))
}

/// The `WHERE` clause of a message filter over `messages m`, for either backend. A
/// delivery filter (`receiver`, `channel`, `status`) matches a message with such a delivery
/// row, or (compact audiences) one whose audience matches: by channel and status counts,
/// and for a receiver, a message among `member_seqs` — the audiences where that receiver
/// is a member with a matching status, found beforehand (`audience::member_matches`).
pub fn push_filter<'a, DB: Database>(
    qb: &mut QueryBuilder<'a, DB>,
    f: &MessageFilter,
    member_seqs: Option<&[i64]>,
    seq_in: fn(&mut QueryBuilder<'a, DB>, &[i64]),
) where
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    qb.push(" WHERE 1 = 1");
    if let Some(sender) = &f.sender {
        qb.push(" AND m.sender = ").push_bind(sender.clone());
    }
    if let Some(t) = f.msg_type {
        qb.push(" AND m.msg_type = ").push_bind(t);
    }
    if f.receiver.is_none() && f.channel.is_none() && f.status.is_none() {
        return;
    }
    qb.push(" AND (EXISTS (SELECT 1 FROM deliveries d WHERE d.message_seq = m.seq");
    if let Some(r) = &f.receiver {
        qb.push(" AND d.receiver = ").push_bind(r.clone());
    }
    if let Some(c) = &f.channel {
        qb.push(" AND d.channel = ").push_bind(c.clone());
    }
    match f.status {
        Some(StatusFilter::Is(s)) => {
            qb.push(" AND d.status = ").push_bind(s.code());
        }
        Some(StatusFilter::Undelivered) => {
            qb.push(" AND d.status < 2");
        }
        None => {}
    }
    qb.push(")");
    match (&f.receiver, member_seqs) {
        // A receiver filter: the audiences were checked beforehand.
        (Some(_), Some(seqs)) if !seqs.is_empty() => {
            qb.push(" OR m.seq IN ");
            seq_in(qb, seqs);
        }
        (Some(_), _) => {}
        (None, _) => {
            qb.push(" OR EXISTS (SELECT 1 FROM audiences a WHERE a.message_seq = m.seq");
            if let Some(c) = &f.channel {
                qb.push(" AND a.channel = ").push_bind(c.clone());
            }
            match f.status {
                Some(StatusFilter::Is(s)) => {
                    qb.push(match s {
                        Status::Pending => " AND a.pending > 0",
                        Status::Sent => " AND a.sent > 0",
                        Status::Delivered => " AND a.delivered > 0",
                        Status::Read => " AND a.read > 0",
                        Status::Failed => " AND a.failed > 0",
                    });
                }
                Some(StatusFilter::Undelivered) => {
                    qb.push(" AND a.pending + a.sent > 0");
                }
                None => {}
            }
            qb.push(")");
        }
    }
    qb.push(")");
}

/// The page of a [`crate::model::inbox::Query`] from the candidates of both shapes (rows
/// and broadcast members, each already limited to `offset + limit`): newest first; after
/// a cursor, the entries right after it.
pub fn inbox_page(mut items: Vec<InboxItem>, q: &crate::model::inbox::Query) -> Vec<InboxItem> {
    let (offset, limit) = (q.offset.max(0) as usize, q.limit as usize);
    if q.after.is_some() {
        items.sort_by_key(|i| i.seq);
        let mut page: Vec<InboxItem> = items.into_iter().skip(offset).take(limit).collect();
        page.reverse();
        page
    } else {
        items.sort_by_key(|i| std::cmp::Reverse(i.seq));
        items.into_iter().skip(offset).take(limit).collect()
    }
}
