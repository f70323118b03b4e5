//! What every session transport shares (WebSocket in `mod.rs`, Server-Sent Events in
//! `sse.rs`): the checks before a session opens, registering and unregistering it, the
//! welcome frame, the replay of undelivered messages, live writes with their `sent`
//! records, and writes bounded by the session's signals. One implementation; a transport
//! only says how a frame is written ([`Transport`]).

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use herald_channel::MessageView;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frame::{self, ServerFrame};
use super::{End, WEBSOCKET};
use crate::auth::UserIdentity;
use crate::error::ApiError;
use crate::model::{now_ms, rfc3339, InboxItem, Status, StatusChange};
use crate::session::{signal, Outbound, SessionHandle, SessionInfo, CONTROL_FRAME};
use crate::state::AppState;

/// How a session's frames reach its client.
pub(super) trait Transport: Send {
    fn app(&self) -> &AppState;
    fn handle(&self) -> &Arc<SessionHandle>;
    /// Write one server frame (JSON), buffered unless `flush`. `seq` is a message frame's
    /// `seq` when known (replayed frames), for transports that can carry it.
    fn frame(
        &mut self,
        json: Utf8Bytes,
        seq: Option<i64>,
        flush: bool,
    ) -> impl Future<Output = Result<(), End>> + Send;
    /// Write out whatever is buffered.
    fn flush(&mut self) -> impl Future<Output = Result<(), End>> + Send;
}

/// The checks before a session opens, in order: the per-address handshake limit (a flood
/// costs no token check), then the token. A refusal is the response to send.
pub(super) async fn admit(
    app: &AppState,
    token: Option<&str>,
    remote: SocketAddr,
) -> Result<UserIdentity, Response> {
    if let Some(limiter) = &app.ws_handshakes {
        if let Err(over) = limiter.check(remote.ip()) {
            app.metrics.ws_handshakes_limited.fetch_add(1, Relaxed);
            return Err(over.into_response());
        }
    }
    match app.auth.verify(token.unwrap_or("")).await {
        Ok(id) => Ok(id),
        Err(e) => {
            app.metrics.handshake_rejected.fetch_add(1, Relaxed);
            Err(ApiError::unauthorized(e.to_string()).into_response())
        }
    }
}

/// A new session's handle (not registered yet).
pub(super) fn new_handle(
    app: &AppState,
    identity: UserIdentity,
    remote: SocketAddr,
) -> Arc<SessionHandle> {
    let info = SessionInfo {
        session_id: uuid::Uuid::now_v7().simple().to_string(),
        user_id: identity.user_id,
        login_name: identity.name,
        device: identity.device,
        login_time_ms: now_ms(),
        remote_addr: remote,
        node: app.node.clone(),
    };
    let handle = SessionHandle::new(
        info,
        app.settings.websocket.queue_capacity,
        app.backlog.clone(),
    );
    handle.touch();
    handle
}

/// The history index first (broadcasts that see this session are queued after it),
/// then register before replaying: a message committed meanwhile is either in the
/// replay or queued live (or both: the replay set removes that duplicate).
pub(super) async fn open(app: &AppState, handle: &Arc<SessionHandle>) {
    presence(app, handle, true).await;
    app.registry.register(handle.clone());
    // Registered before this check, so a shutdown either sees this session or is seen
    // here.
    if app.shutdown.is_cancelled() {
        handle.raise(signal::SHUTDOWN);
    }
    app.metrics.connections.fetch_add(1, Relaxed);
    app.metrics.connections_total.fetch_add(1, Relaxed);
    tracing::debug!(session = %handle.info.session_id, "session opened");
}

/// Unregister, then close the presence record.
pub(super) async fn finish(app: &AppState, handle: &Arc<SessionHandle>, end: &End) {
    app.registry.unregister(handle);
    app.metrics.connections.fetch_sub(1, Relaxed);
    presence(app, handle, false).await;
    tracing::debug!(session = %handle.info.session_id, reason = ?end, "session closed");
}

/// Record that a session opened (before it is registered) or closed (after it was
/// unregistered): the presence history that finds a user's broadcasts. A failure costs
/// only that history (the store reports why it cannot write, once).
async fn presence(app: &AppState, handle: &SessionHandle, open: bool) {
    let info = &handle.info;
    let result = if open {
        app.store
            .presence_open(&info.session_id, &info.user_id, &app.node, now_ms())
            .await
    } else {
        app.store.presence_close(&info.session_id, now_ms()).await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, session = %info.session_id, "presence record not written");
    }
}

/// What the replay after the welcome sends: counted before the welcome.
#[derive(Debug, Clone, Copy)]
pub(super) struct Replay {
    /// The user's pending-index version (`None`: certainly nothing to replay).
    version: Option<u64>,
    /// Undelivered messages up to `until` (the welcome's `pending`).
    pending: u64,
    /// The newest message `seq` the replay covers; later ones arrive live.
    until: i64,
}

/// The gap signal and the welcome frame: what the replay will send, counted after
/// registering (so later messages arrive live) and before the welcome. Most sessions
/// skip the query. `resumed_from` is the id an SSE client resumes from (echoed only).
pub(super) async fn welcome(
    app: &AppState,
    handle: &SessionHandle,
    resumed_from: Option<&str>,
) -> Result<(String, Replay), End> {
    let user = &handle.info.user_id;
    let version = app.dispatcher.pending_version(user);
    let (pending, until) = match version {
        None => (0, 0),
        Some(_) => match app.store.count_undelivered(user, WEBSOCKET).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "replay count failed");
                return Err(End::StoreFailed);
            }
        },
    };
    let welcome = ServerFrame::Welcome {
        session_id: &handle.info.session_id,
        user_id: &handle.info.user_id,
        server_time: rfc3339(now_ms()),
        pending,
        counts: super::inbox::welcome_counts(app, user).await,
        resumed_from,
    }
    .to_json();
    Ok((
        welcome,
        Replay {
            version,
            pending,
            until,
        },
    ))
}

/// Send every undelivered message up to `replay.until` (later ones arrive live), oldest
/// first, in pages; record `sent` for each page once it is written. Returns the replayed
/// ids (a live frame for one of them is a duplicate).
pub(super) async fn replay<T: Transport>(
    t: &mut T,
    replay: Replay,
) -> Result<HashSet<String>, End> {
    let app = t.app().clone();
    let batch = app.settings.websocket.replay_batch as u32;
    let user = t.handle().info.user_id.clone();
    let mut after = 0;
    let mut ids = HashSet::new();
    // Most connections have nothing to replay: skip the query when certainly so.
    let Some(version) = replay.version else {
        return Ok(ids);
    };
    if replay.pending == 0 {
        // Counted before the welcome under this version: nothing was undelivered.
        app.dispatcher.replay_found_nothing(&user, version);
        return Ok(ids);
    }
    let mut found = false;
    loop {
        let page = match app.store.undelivered(&user, WEBSOCKET, after, batch).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "replay query failed");
                return Err(End::StoreFailed);
            }
        };
        let Some(last) = page.last() else { break };
        found = true;
        after = last.seq;
        let full = page.len() as u32 == batch;
        let page: Vec<InboxItem> = page.into_iter().filter(|i| i.seq <= replay.until).collect();
        let past_snapshot = after > replay.until;
        for item in &page {
            if app.dispatcher.is_deleted(&item.id) {
                continue;
            }
            t.frame(replay_frame(item).into(), Some(item.seq), false)
                .await?;
            ids.insert(item.id.clone());
        }
        t.flush().await?;
        app.metrics.replayed.fetch_add(page.len() as u64, Relaxed);
        record_sent(&app, page.iter().map(|i| i.delivery_id)).await;
        if !full || past_snapshot {
            break;
        }
    }
    if !found {
        app.dispatcher.replay_found_nothing(&user, version);
    }
    Ok(ids)
}

/// Write a live frame and whatever else is queued (one flush for up to 64), then record
/// `sent` for what was written. Deleted messages and replay duplicates are skipped.
pub(super) async fn write_live<T: Transport>(
    t: &mut T,
    first: Outbound,
    replayed: &mut Option<HashSet<String>>,
) -> Result<(), End> {
    let app = t.app().clone();
    let mut item = Some(first);
    let mut written = Vec::new();
    let mut frames = 0;
    while let Some(it) = item.take() {
        // Inbox `state`/`counts` frames: written, never de-duplicated or recorded.
        let control = it.delivery_id == CONTROL_FRAME;
        let skip = !control
            && (replayed
                .as_ref()
                .is_some_and(|r| r.contains(&it.message.id))
                || app.dispatcher.is_deleted(&it.message.id));
        if !skip {
            // Live frames do not know their message's seq (the channels' `Outgoing`
            // does not carry it).
            t.frame(it.frame, None, false).await?;
            frames += 1;
            if !control {
                written.push(it.delivery_id);
            }
        }
        if frames < 64 {
            item = t.handle().try_next();
        }
    }
    if t.handle().is_empty() {
        // Everything queued during the replay has been seen: duplicates are over.
        *replayed = None;
    }
    t.flush().await?;
    app.metrics
        .frames_sent
        .fetch_add(written.len() as u64, Relaxed);
    record_sent(&app, written).await;
    Ok(())
}

/// `sent` for frames just written: one hand-off to the status writer for all of them.
async fn record_sent(app: &AppState, delivery_ids: impl IntoIterator<Item = i64>) {
    let changes = delivery_ids
        .into_iter()
        .map(|delivery_id| StatusChange::Delivery {
            delivery_id,
            status: Status::Sent,
            error: None,
            count_attempt: true,
        })
        .collect();
    app.dispatcher.record_many(WEBSOCKET, changes).await;
}

/// Run a write until it completes or the session is kicked, found dead, stalled or
/// stopped (checked whenever the session is woken during the write). The write timeout
/// is enforced by the heartbeat (`STALLED`), so a write needs no timer of its own.
pub(super) async fn bounded<E>(
    handle: &SessionHandle,
    io: impl Future<Output = Result<(), E>>,
) -> Result<(), End> {
    tokio::pin!(io);
    let mut woken = false;
    handle.begin_write();
    let result = loop {
        if let Some(end) = fatal(handle.peek_signals()) {
            break Err(end);
        }
        tokio::select! {
            r = &mut io => break r.map_err(|_| End::WriteFailed),
            _ = handle.woken() => woken = true,
        }
    };
    handle.end_write();
    if woken {
        // Pass the wake-up on: the session loop must still see frames queued meanwhile.
        handle.rewake();
    }
    result
}

/// Signals that end a session, in order of precedence.
pub(super) fn fatal(signals: u8) -> Option<End> {
    if signals & signal::SHUTDOWN != 0 {
        Some(End::Shutdown)
    } else if signals & signal::KICKED != 0 {
        Some(End::SlowConsumer)
    } else if signals & signal::DEAD != 0 {
        Some(End::DeadPeer)
    } else if signals & signal::STALLED != 0 {
        Some(End::WriteFailed)
    } else {
        None
    }
}

fn replay_frame(item: &InboxItem) -> String {
    frame::message_frame(&MessageView {
        id: item.id.clone(),
        title: item.title.clone(),
        content: item.content.clone(),
        msg_type: item.msg_type,
        sender: item.sender.clone(),
        created_at: rfc3339(item.created_at_ms),
        template: None,
        data: None,
    })
}
