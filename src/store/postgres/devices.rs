//! Recipients, push devices and presence records on PostgreSQL. Each write is one
//! statement (its own transaction, committed when it returns); `ON CONFLICT` makes the
//! upserts safe when two nodes race.

use sqlx::{PgConnection, Row};

use super::PgStore;
use crate::model::{DeviceRecord, NewDevice, Recipient, Registered};
use crate::store::rows;
use crate::store::StoreError;

pub(super) async fn put_recipient(
    conn: &mut PgConnection,
    r: &Recipient,
    now: i64,
) -> Result<bool, StoreError> {
    // `xmax = 0` only for a row this statement inserted (an update sets it).
    Ok(sqlx::query(
        "INSERT INTO recipients (user_id, name, email, phone, wechat_open_id, devices, \
           preferences, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (user_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email, \
           phone = EXCLUDED.phone, wechat_open_id = EXCLUDED.wechat_open_id, \
           devices = EXCLUDED.devices, preferences = EXCLUDED.preferences, \
           updated_at = EXCLUDED.updated_at \
         RETURNING (xmax = 0)",
    )
    .bind(&r.user_id)
    .bind(&r.name)
    .bind(&r.email)
    .bind(&r.phone)
    .bind(&r.wechat_open_id)
    .bind(r.devices.to_string())
    .bind(r.preferences.to_string())
    .bind(now)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?)
}

pub(super) async fn delete_recipient(
    conn: &mut PgConnection,
    user: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query("DELETE FROM recipients WHERE user_id = $1")
        .bind(user)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0)
}

/// One statement: the same platform and token is the same row (moved to this user and
/// reactivated), even when two nodes register it at once.
pub(super) async fn register_device(
    conn: &mut PgConnection,
    d: &NewDevice,
    now: i64,
) -> Result<Registered, StoreError> {
    // `old` reads the row as the statement's snapshot has it: whose device it was before
    // (without a lock: `FOR UPDATE` would follow the row to the version this statement
    // writes).
    // Moving to another user takes the new registration's name, not the old owner's label.
    let row = sqlx::query(&format!(
        "WITH old AS (SELECT user_id FROM devices WHERE platform = $2 AND token = $3) \
         INSERT INTO devices (user_id, platform, token, name, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5) \
         ON CONFLICT (platform, token) DO UPDATE SET user_id = EXCLUDED.user_id, \
           name = CASE WHEN devices.user_id = EXCLUDED.user_id \
                       THEN COALESCE(EXCLUDED.name, devices.name) ELSE EXCLUDED.name END, \
           active = TRUE, deactivated_at = NULL, deactivated_reason = NULL, \
           updated_at = EXCLUDED.updated_at \
         RETURNING {}, (xmax = 0), (SELECT user_id FROM old)",
        rows::DEVICE_COLUMNS
    ))
    .bind(&d.user_id)
    .bind(&d.platform)
    .bind(&d.token)
    .bind(&d.name)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let previous: Option<String> = row.try_get(11)?;
    Ok(Registered {
        device: rows::device(&row)?,
        created: row.try_get(10)?,
        previous_owner: previous.filter(|p| *p != d.user_id),
    })
}

pub(super) async fn delete_device(
    conn: &mut PgConnection,
    user: &str,
    id: i64,
) -> Result<bool, StoreError> {
    Ok(
        sqlx::query("DELETE FROM devices WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user)
            .execute(&mut *conn)
            .await?
            .rows_affected()
            > 0,
    )
}

pub(super) async fn deactivate_devices(
    conn: &mut PgConnection,
    dead: &[(i64, String)],
    now: i64,
) -> Result<u64, StoreError> {
    let (ids, reasons): (Vec<i64>, Vec<&str>) =
        dead.iter().map(|(id, r)| (*id, r.as_str())).unzip();
    Ok(sqlx::query(
        "UPDATE devices d SET active = FALSE, deactivated_at = $1, deactivated_reason = t.reason, \
           updated_at = $1 \
         FROM (SELECT DISTINCT ON (id) id, reason \
                 FROM UNNEST($2::int8[], $3::text[]) WITH ORDINALITY AS u (id, reason, ord) \
                ORDER BY id, ord) t \
         WHERE d.id = t.id AND d.active",
    )
    .bind(now)
    .bind(&ids)
    .bind(&reasons)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// A session opened. Committed when this returns: in cluster mode another node may take a
/// broadcast's audience the next moment, and the history index must already show it.
pub(super) async fn presence_open(
    conn: &mut PgConnection,
    session: &str,
    receiver: &str,
    node: &str,
    since: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO presence (session, receiver, node, since, until) \
         VALUES ($1, $2, $3, $4, NULL) \
         ON CONFLICT (session) DO UPDATE SET receiver = EXCLUDED.receiver, node = EXCLUDED.node, \
           since = EXCLUDED.since, until = NULL",
    )
    .bind(session)
    .bind(receiver)
    .bind(node)
    .bind(since)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn presence_close(
    conn: &mut PgConnection,
    session: &str,
    until: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE presence SET until = $1 WHERE session = $2 AND until IS NULL")
        .bind(until)
        .bind(session)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Close the sessions a node left open (it died, or starts again).
pub(super) async fn presence_close_node(
    conn: &mut PgConnection,
    node: &str,
    until: i64,
) -> Result<u64, StoreError> {
    Ok(
        sqlx::query("UPDATE presence SET until = $1 WHERE node = $2 AND until IS NULL")
            .bind(until)
            .bind(node)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
    )
}

impl PgStore {
    pub(super) async fn read_recipient(
        &self,
        user_id: &str,
    ) -> Result<Option<Recipient>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM recipients WHERE user_id = $1",
            rows::RECIPIENT_COLUMNS
        ))
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(rows::recipient)
        .transpose()
    }

    pub(super) async fn read_any_preferences(&self) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM recipients WHERE preferences <> '{}' LIMIT 1")
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    pub(super) async fn read_devices(
        &self,
        user_id: &str,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM devices WHERE user_id = $1 ORDER BY id",
            rows::DEVICE_COLUMNS
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::device)
        .collect()
    }

    pub(super) async fn read_active_devices(
        &self,
        user_id: &str,
        platform: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        sqlx::query(
            "SELECT id, token FROM devices WHERE user_id = $1 AND platform = $2 AND active \
             ORDER BY id",
        )
        .bind(user_id)
        .bind(platform)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }
}
