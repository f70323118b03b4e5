//! Recipients, push devices and presence records on SQLite: writes inside the writer's
//! transaction, reads from the reader pool.

use rusqlite::{params, Connection, OptionalExtension};
use sqlx::Row;

use super::SqliteStore;
use crate::model::{DeviceRecord, NewDevice, Recipient, Registered};
use crate::store::rows;
use crate::store::StoreError;

pub(super) fn register_device(
    conn: &Connection,
    d: &NewDevice,
    now: i64,
) -> Result<Registered, StoreError> {
    let existing: Option<(i64, String)> = conn
        .prepare_cached("SELECT id, user_id FROM devices WHERE platform = ? AND token = ?")?
        .query_row(params![d.platform, d.token], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (id, created, previous_owner) = match existing {
        Some((id, owner)) => {
            // Moving to another user: the new registration's name (maybe none), not the
            // previous owner's label.
            conn.prepare_cached(
                "UPDATE devices SET name = CASE WHEN user_id = ?1 THEN COALESCE(?2, name) ELSE ?2 END, \
                   user_id = ?1, active = 1, deactivated_at = NULL, deactivated_reason = NULL, \
                   updated_at = ?3 WHERE id = ?4",
            )?
            .execute(params![d.user_id, d.name, now, id])?;
            (id, false, (owner != d.user_id).then_some(owner))
        }
        None => {
            conn.prepare_cached(
                "INSERT INTO devices (user_id, platform, token, name, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![d.user_id, d.platform, d.token, d.name, now])?;
            (conn.last_insert_rowid(), true, None)
        }
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM devices WHERE id = ?",
        rows::DEVICE_COLUMNS
    ))?;
    let mut q = stmt.query([id])?;
    let row = q
        .next()?
        .ok_or_else(|| StoreError::Corrupt("a registered device vanished".into()))?;
    Ok(Registered {
        device: rows::device(row)?,
        created,
        previous_owner,
    })
}

pub(super) fn delete_device(conn: &Connection, user: &str, id: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM devices WHERE id = ? AND user_id = ?")?
        .execute(params![id, user])?
        > 0)
}

pub(super) fn deactivate_devices(
    conn: &Connection,
    dead: &[(i64, String)],
    now: i64,
) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE devices SET active = 0, deactivated_at = ?1, deactivated_reason = ?2, \
           updated_at = ?1 WHERE id = ?3 AND active = 1",
    )?;
    let mut n = 0;
    for (id, reason) in dead {
        n += stmt.execute(params![now, reason, id])? as u64;
    }
    Ok(n)
}

pub(super) fn put_recipient(
    conn: &Connection,
    r: &Recipient,
    now: i64,
) -> Result<bool, StoreError> {
    let existed = conn
        .prepare_cached("SELECT 1 FROM recipients WHERE user_id = ?")?
        .query_row([&r.user_id], |_| Ok(()))
        .optional()?
        .is_some();
    conn.prepare_cached(
        "INSERT OR REPLACE INTO recipients (user_id, name, email, phone, wechat_open_id, devices, \
           preferences, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        r.user_id,
        r.name,
        r.email,
        r.phone,
        r.wechat_open_id,
        r.devices.to_string(),
        r.preferences.to_string(),
        now
    ])?;
    Ok(!existed)
}

pub(super) fn delete_recipient(conn: &Connection, user: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM recipients WHERE user_id = ?")?
        .execute([user])?
        > 0)
}

pub(super) fn presence_open(
    conn: &Connection,
    session: &str,
    receiver: &str,
    node: &str,
    since: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO presence (session, receiver, node, since, until) \
         VALUES (?, ?, ?, ?, NULL)",
    )?
    .execute(params![session, receiver, node, since])?;
    Ok(())
}

pub(super) fn presence_close(
    conn: &Connection,
    session: &str,
    until: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE presence SET until = ? WHERE session = ? AND until IS NULL")?
        .execute(params![until, session])?;
    Ok(())
}

pub(super) fn presence_close_node(
    conn: &Connection,
    node: &str,
    until: i64,
) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached("UPDATE presence SET until = ? WHERE node = ? AND until IS NULL")?
        .execute(params![until, node])? as u64)
}

impl SqliteStore {
    pub(super) async fn read_recipient(
        &self,
        user_id: &str,
    ) -> Result<Option<Recipient>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM recipients WHERE user_id = ?",
            rows::RECIPIENT_COLUMNS
        ))
        .bind(user_id)
        .fetch_optional(&self.readers)
        .await?
        .as_ref()
        .map(rows::recipient)
        .transpose()
    }

    pub(super) async fn read_any_preferences(&self) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM recipients WHERE preferences <> '{}' LIMIT 1")
                .fetch_optional(&self.readers)
                .await?
                .is_some(),
        )
    }

    pub(super) async fn read_devices(
        &self,
        user_id: &str,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM devices WHERE user_id = ? ORDER BY id",
            rows::DEVICE_COLUMNS
        ))
        .bind(user_id)
        .fetch_all(&self.readers)
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
            "SELECT id, token FROM devices WHERE user_id = ? AND platform = ? AND active = 1 ORDER BY id",
        )
        .bind(user_id)
        .bind(platform)
        .fetch_all(&self.readers)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }
}
