//! `GET /websocket/{token}` (and `/websocket?token=`): token check before the upgrade, then
//! one task per session: welcome, replay of everything undelivered (oldest first), then live
//! frames from the session's bounded queue, client acks/reads/pings, and server pings.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use herald_channel::MessageView;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::auth::UserIdentity;
use crate::error::ApiError;
use crate::model::{now_ms, rfc3339, InboxItem, Status, StatusChange};
use crate::session::{signal, Outbound, SessionHandle, SessionInfo, CONTROL_FRAME};
use crate::state::AppState;

pub mod channel;
pub mod frame;
pub mod inbox;
pub mod upgrade;

/// A session's socket: tokio-tungstenite over the connection hyper handed over.
type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

pub use channel::WEBSOCKET;
use frame::{ClientFrame, ServerFrame};

/// Close codes (RFC 6455 §7.4.1).
const GOING_AWAY: u16 = 1001;
const PROTOCOL_ERROR: u16 = 1002;
const INVALID_PAYLOAD: u16 = 1007;
const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;
const INTERNAL: u16 = 1011;

/// `GET /websocket/{token}`
#[utoipa::path(
    get,
    path = "/websocket/{token}",
    tag = "websocket",
    params(("token" = String, Path, description = "User token (JWT)")),
    responses(
        (status = 101, description = "Upgraded; frames as in docs/websocket.md §2"),
        (status = 401, description = "Bad, expired or missing token", body = crate::error::ErrorBody),
        (status = 429, description = "Too many handshakes from this address (`websocket.handshake_rate_limit`); checked before the token", body = crate::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a handshake is allowed again"))),
        (status = 503, description = "Sessions hold every connection not reserved (`http.max_connections` - `http.reserved_connections`), or the server is shutting down", body = crate::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again (when sessions are full)"))),
    )
)]
pub async fn ws_path(
    State(app): State<AppState>,
    Path(token): Path<String>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    connect(app, Some(token), remote, req).await
}

/// `GET /websocket?token=…`
#[utoipa::path(
    get,
    path = "/websocket",
    tag = "websocket",
    params(("token" = String, Query, description = "User token (JWT)")),
    responses(
        (status = 101, description = "Upgraded; frames as in docs/websocket.md §2"),
        (status = 401, description = "Bad, expired or missing token", body = crate::error::ErrorBody),
        (status = 429, description = "Too many handshakes from this address (`websocket.handshake_rate_limit`); checked before the token", body = crate::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a handshake is allowed again"))),
        (status = 503, description = "Sessions hold every connection not reserved (`http.max_connections` - `http.reserved_connections`), or the server is shutting down", body = crate::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again (when sessions are full)"))),
    )
)]
pub async fn ws_query(
    State(app): State<AppState>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let token = query.ok().and_then(|Query(mut q)| q.remove("token"));
    connect(app, token, remote, req).await
}

async fn connect(
    app: AppState,
    token: Option<String>,
    remote: SocketAddr,
    mut req: Request,
) -> Response {
    // Per-address handshake limit first: a flood costs neither a token check nor an upgrade.
    if let Some(limiter) = &app.ws_handshakes {
        if let Err(over) = limiter.check(remote.ip()) {
            app.metrics.ws_handshakes_limited.fetch_add(1, Relaxed);
            return over.into_response();
        }
    }
    let identity = match app.auth.verify(token.as_deref().unwrap_or("")).await {
        Ok(id) => id,
        Err(e) => {
            app.metrics.handshake_rejected.fetch_add(1, Relaxed);
            return ApiError::unauthorized(e.to_string()).into_response();
        }
    };
    let handshake = match upgrade::Handshake::check(&mut req) {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    if app.shutdown.is_cancelled() {
        return ApiError::unavailable("shutting down").into_response();
    }
    let config = ws_config(&app.settings.websocket);
    let tracker = app.sessions.clone();
    handshake.accept(move |upgraded| {
        tracker.track_future(async move {
            let socket = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            run_session(app, socket, identity, remote).await;
        })
    })
}

/// tungstenite's limits from `[websocket]`.
fn ws_config(ws: &crate::config::WsSettings) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(ws.read_buffer_size)
        .write_buffer_size(ws.write_buffer_size)
        // No cap: the sink flushes before it takes a frame after a blocked write, so the
        // buffer holds at most `write_buffer_size` plus one frame. A cap would make every
        // larger frame undeliverable (WriteBufferFull on each replay: a poison message).
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(ws.max_frame_size))
        .max_frame_size(Some(ws.max_frame_size))
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Shutdown,
    SlowConsumer,
    TooBig,
    /// The client broke RFC 6455 (unmasked frame, reserved bits or opcode, bad
    /// fragmentation, control frame over 125 bytes, malformed close): close `1002`.
    ProtocolError(&'static str),
    /// A text frame (or a close reason) that is not UTF-8: close `1007`.
    InvalidPayload,
    DeadPeer,
    ClientClosed,
    WriteFailed,
    StoreFailed,
}

/// The session task. Set-up runs synchronously here; the returned future holds only the
/// [`Session`] and its loop, which keeps every idle session's task small.
fn run_session(
    app: AppState,
    socket: WebSocket,
    identity: UserIdentity,
    remote: SocketAddr,
) -> impl std::future::Future<Output = ()> + Send {
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
    // Built here and moved in as the future's one upvar: upvars keep their space for the
    // future's whole life, so anything captured apart would be stored twice.
    let mut session = Session {
        app,
        socket,
        handle,
    };
    async move {
        // The one-off prologue and epilogue are boxed: inline, their state would enlarge
        // every idle session.
        Box::pin(session.open()).await;
        let end = session.run().await;
        Box::pin(session.finish(end)).await;
    }
}

impl Session {
    /// The history index first (broadcasts that see this session are queued after it),
    /// then register before replaying: a message committed meanwhile is either in the
    /// replay or queued live (or both: the replay set removes that duplicate).
    async fn open(&mut self) {
        presence(&self.app, &self.handle, true).await;
        self.app.registry.register(self.handle.clone());
        // Registered before this check, so a shutdown either sees this session or is seen
        // here.
        if self.app.shutdown.is_cancelled() {
            self.handle.raise(signal::SHUTDOWN);
        }
        self.app.metrics.connections.fetch_add(1, Relaxed);
        self.app.metrics.connections_total.fetch_add(1, Relaxed);
        tracing::debug!(session = %self.handle.info.session_id, "session opened");
    }

    async fn finish(&mut self, end: End) {
        self.app.registry.unregister(&self.handle);
        self.app.metrics.connections.fetch_sub(1, Relaxed);
        presence(&self.app, &self.handle, false).await;
        tracing::debug!(session = %self.handle.info.session_id, reason = ?end, "session closed");
        close(self, end).await;
    }
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

/// Say goodbye with the close code that fits why the session ended.
async fn close(session: &mut Session, end: End) {
    let metrics = &session.app.metrics;
    let close = match end {
        End::Shutdown => Some((GOING_AWAY, "server shutting down")),
        End::SlowConsumer => {
            metrics.slow_consumers.fetch_add(1, Relaxed);
            Some((POLICY, "slow consumer: outbound queue full"))
        }
        End::TooBig => Some((TOO_BIG, "frame too large")),
        // tungstenite reports the violation and leaves the connection open, with nothing
        // queued: the close frame RFC 6455 §7.1.7 asks for is ours to send.
        End::ProtocolError(reason) => Some((PROTOCOL_ERROR, reason)),
        End::InvalidPayload => Some((INVALID_PAYLOAD, "invalid UTF-8")),
        End::DeadPeer => {
            metrics.dead_peers.fetch_add(1, Relaxed);
            Some((GOING_AWAY, "ping timeout"))
        }
        End::StoreFailed => Some((INTERNAL, "storage unavailable")),
        End::ClientClosed => {
            // The close reply is queued by the protocol layer; send it.
            let _ = tokio::time::timeout(Duration::from_secs(1), session.socket.flush()).await;
            None
        }
        End::WriteFailed => None,
    };
    if let Some((code, reason)) = close {
        let frame = Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(1), session.socket.send(frame)).await;
        // Linger (RFC 6455 §7.1.1): read (and drop) what the client still sends until it
        // closes, at most a second. Dropping a socket with unread input makes the kernel
        // answer with a reset, which can destroy the close frame before the client reads
        // it — after a frame over `max_frame_size`, whose payload is still arriving.
        let raw = session.socket.get_mut();
        let drain = async {
            let mut sink = [0u8; 1024];
            while matches!(raw.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}

/// One task per node raises `PING` on every session each `ping_interval` and `DEAD` on
/// sessions silent for longer than `pong_timeout`, or that have not sent their first
/// frame `first_frame_timeout` after they started listening; sessions own no timers of
/// their own. On shutdown it raises `SHUTDOWN` everywhere.
pub async fn heartbeat(app: AppState) {
    let ws = &app.settings.websocket;
    let (ping_every, pong_timeout, write_timeout, first_frame_timeout) = (
        ws.ping_interval,
        ws.pong_timeout,
        ws.write_timeout,
        ws.first_frame_timeout,
    );
    // Check often enough that a dead peer is closed within ~10 % of the timeout.
    let period = (pong_timeout.min(write_timeout).min(first_frame_timeout) / 10)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ping = Instant::now();
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let ping = last_ping.elapsed() >= ping_every;
        if ping {
            last_ping = Instant::now();
        }
        app.registry.for_each_local(&mut |h| {
            if h.writing_for().is_some_and(|d| d > write_timeout) {
                h.raise(signal::STALLED);
            } else if h.silent_for() > pong_timeout
                || (h.awaiting_first_frame() && h.silent_for() > first_frame_timeout)
            {
                h.raise(signal::DEAD);
            } else if ping {
                h.raise(signal::PING);
            }
        });
    }
    app.registry
        .for_each_local(&mut |h| h.raise(signal::SHUTDOWN));
}

struct Session {
    app: AppState,
    socket: WebSocket,
    handle: Arc<SessionHandle>,
}

impl Session {
    async fn run(&mut self) -> End {
        // The gap signal: what the replay will send, counted after registering (so later
        // messages arrive live) and before the welcome. Most sessions skip the query.
        let user = &self.handle.info.user_id;
        let version = self.app.dispatcher.pending_version(user);
        let (pending, until) = match version {
            None => (0, 0),
            Some(_) => match self.app.store.count_undelivered(user, WEBSOCKET).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "replay count failed");
                    return End::StoreFailed;
                }
            },
        };
        let welcome = ServerFrame::Welcome {
            session_id: &self.handle.info.session_id,
            user_id: &self.handle.info.user_id,
            server_time: rfc3339(now_ms()),
            pending,
            counts: inbox::welcome_counts(&self.app, user).await,
        }
        .to_json();
        if let Err(end) = self.write(Message::Text(welcome.into()), true).await {
            return end;
        }
        // Then a ping: a live client answers at once (its WebSocket stack does), which is
        // the first frame `websocket.first_frame_timeout` waits for. Flushed on its own:
        // buffered behind the welcome it would double the write buffer every session
        // keeps (about 200 bytes more per idle session).
        if let Err(end) = self.write(Message::Ping(Default::default()), true).await {
            return end;
        }
        // Boxed: the replay runs once, and its state would otherwise enlarge every idle
        // session's future for its whole life.
        let mut replayed = match Box::pin(self.replay(version, pending, until)).await {
            Ok(ids) => Some(ids),
            Err(end) => return end,
        };
        if replayed.as_ref().is_some_and(HashSet::is_empty) {
            replayed = None;
        }
        // Reading starts now (a pong sent during the replay waits in the socket): the
        // first-frame deadline and the silence before `pong_timeout` count from here.
        self.handle.listen();
        loop {
            // Signals first: a kicked, dead or stopping session writes nothing more.
            let signals = self.handle.take_signals();
            if let Some(end) = fatal(signals) {
                return end;
            }
            if signals & signal::PING != 0 {
                if let Err(end) = self.write(Message::Ping(Default::default()), true).await {
                    return end;
                }
            }
            if let Some(item) = self.handle.try_next() {
                if let Err(end) = Box::pin(self.write_live(item, &mut replayed)).await {
                    return end;
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = self.handle.woken() => {}
                msg = self.socket.next() => {
                    let msg = match msg {
                        None => return End::ClientClosed,
                        Some(Err(e)) => return read_failed(e),
                        Some(Ok(msg)) => msg,
                    };
                    self.handle.touch();
                    match msg {
                        Message::Text(text) => {
                            if let Err(end) = Box::pin(self.on_text(text.as_str())).await {
                                return end;
                            }
                        }
                        Message::Binary(_) => {
                            let reason = "binary frames are not supported; send JSON text";
                            if let Err(end) = self.error_frame(reason).await {
                                return end;
                            }
                        }
                        Message::Close(_) => return End::ClientClosed,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
        }
    }

    /// Send every undelivered message up to `until` (a message `seq`; later ones arrive
    /// live), oldest first, in pages. Returns the replayed ids.
    async fn replay(
        &mut self,
        version: Option<u64>,
        pending: u64,
        until: i64,
    ) -> Result<HashSet<String>, End> {
        let batch = self.app.settings.websocket.replay_batch as u32;
        let user = self.handle.info.user_id.clone();
        let mut after = 0;
        let mut ids = HashSet::new();
        // Most connections have nothing to replay: skip the query when certainly so.
        let Some(version) = version else {
            return Ok(ids);
        };
        if pending == 0 {
            // Counted before the welcome under this version: nothing was undelivered.
            self.app.dispatcher.replay_found_nothing(&user, version);
            return Ok(ids);
        }
        let mut found = false;
        loop {
            let page = match self
                .app
                .store
                .undelivered(&user, WEBSOCKET, after, batch)
                .await
            {
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
            let page: Vec<InboxItem> = page.into_iter().filter(|i| i.seq <= until).collect();
            let past_snapshot = after > until;
            for item in &page {
                if self.app.dispatcher.is_deleted(&item.id) {
                    continue;
                }
                self.write(Message::Text(replay_frame(item).into()), false)
                    .await?;
                ids.insert(item.id.clone());
            }
            self.flush().await?;
            self.app
                .metrics
                .replayed
                .fetch_add(page.len() as u64, Relaxed);
            self.record_sent(page.iter().map(|i| i.delivery_id)).await;
            if !full || past_snapshot {
                break;
            }
        }
        if !found {
            self.app.dispatcher.replay_found_nothing(&user, version);
        }
        Ok(ids)
    }

    /// Write a live frame and whatever else is queued (one flush for up to 64), then
    /// record `sent` for what was written.
    async fn write_live(
        &mut self,
        first: Outbound,
        replayed: &mut Option<HashSet<String>>,
    ) -> Result<(), End> {
        let mut item = Some(first);
        let mut written = Vec::new();
        while let Some(it) = item.take() {
            let control = it.delivery_id == CONTROL_FRAME;
            let skip = !control
                && (replayed
                    .as_ref()
                    .is_some_and(|r| r.contains(&it.message.id))
                    || self.app.dispatcher.is_deleted(&it.message.id));
            if !skip {
                self.write(Message::Text(it.frame), false).await?;
                if !control {
                    written.push(it.delivery_id);
                }
            }
            if written.len() < 64 {
                item = self.handle.try_next();
            }
        }
        if self.handle.is_empty() {
            // Everything queued during the replay has been seen: duplicates are over.
            *replayed = None;
        }
        self.flush().await?;
        self.app
            .metrics
            .frames_sent
            .fetch_add(written.len() as u64, Relaxed);
        self.record_sent(written).await;
        Ok(())
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        match frame::decode(text) {
            Ok(ClientFrame::Ping) => {
                self.write(Message::Text(ServerFrame::Pong.to_json().into()), true)
                    .await
            }
            Ok(ClientFrame::Ack { id }) => {
                self.receipt(id, Status::Delivered).await;
                Ok(())
            }
            Ok(ClientFrame::Read { id }) => {
                // Read in the inbox too (seen + read), synced to the user's other sessions:
                // the same change as `POST /api/v1/inbox/read` (docs/websocket.md §4.3).
                // Off the session's loop; an id that is not in the inbox changes nothing.
                self.app.metrics.acks.fetch_add(1, Relaxed);
                let (app, user) = (self.app.clone(), self.handle.info.user_id.clone());
                tokio::spawn(async move {
                    let target = crate::model::inbox::Target::Ids(vec![id]);
                    if let Err(e) =
                        inbox::mark(&app, &user, crate::model::inbox::Op::Read, target).await
                    {
                        tracing::debug!(error = %e, "read receipt not stored");
                    }
                });
                Ok(())
            }
            Err(reason) => self.error_frame(&reason).await,
        }
    }

    async fn receipt(&mut self, message_id: String, status: Status) {
        self.app.metrics.acks.fetch_add(1, Relaxed);
        let change = StatusChange::Receiver {
            message_id,
            receiver: self.handle.info.user_id.clone(),
            channel: WEBSOCKET.to_owned(),
            status,
        };
        self.app.dispatcher.record(WEBSOCKET, change).await;
    }

    /// `sent` for frames just written: one hand-off to the status writer for all of them.
    async fn record_sent(&mut self, delivery_ids: impl IntoIterator<Item = i64>) {
        let changes = delivery_ids
            .into_iter()
            .map(|delivery_id| StatusChange::Delivery {
                delivery_id,
                status: Status::Sent,
                error: None,
                count_attempt: true,
            })
            .collect();
        self.app.dispatcher.record_many(WEBSOCKET, changes).await;
    }

    async fn error_frame(&mut self, reason: &str) -> Result<(), End> {
        let text = ServerFrame::Error { error: reason }.to_json();
        self.write(Message::Text(text.into()), true).await
    }

    /// Write one frame (buffered unless `flush`), bounded by the write timeout. A session
    /// kicked as a slow consumer (or a server shutting down) stops waiting at once.
    async fn write(&mut self, msg: Message, flush: bool) -> Result<(), End> {
        let socket = &mut self.socket;
        let io = async {
            if flush {
                socket.send(msg).await
            } else {
                socket.feed(msg).await
            }
        };
        bounded(&self.handle, io).await
    }

    async fn flush(&mut self) -> Result<(), End> {
        bounded(&self.handle, self.socket.flush()).await
    }
}

/// Run a socket write until it completes or the session is kicked, found dead, stalled
/// or stopped (checked whenever the session is woken during the write). The write timeout
/// is enforced by the heartbeat (`STALLED`), so a write needs no timer of its own.
async fn bounded(
    handle: &SessionHandle,
    io: impl std::future::Future<Output = Result<(), tungstenite::Error>>,
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
fn fatal(signals: u8) -> Option<End> {
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

/// Why a read failed, as the close code it calls for (RFC 6455 §7.4.1): `1009` for a frame
/// over `max_frame_size`, `1007` for text that is not UTF-8, `1002` for a protocol
/// violation; anything else (I/O, a peer that vanished) ends without a close frame.
fn read_failed(e: tungstenite::Error) -> End {
    use tungstenite::error::ProtocolError as P;
    let reason = match &e {
        tungstenite::Error::Capacity(_) => return End::TooBig,
        tungstenite::Error::Utf8(_) => return End::InvalidPayload,
        tungstenite::Error::Protocol(p) => match p {
            // The peer is gone or the close handshake is already under way.
            P::ResetWithoutClosingHandshake | P::ReceivedAfterClosing | P::SendAfterClosing => {
                return End::ClientClosed
            }
            P::UnmaskedFrameFromClient => "protocol error: unmasked client frame",
            P::NonZeroReservedBits => "protocol error: reserved bits set",
            P::UnknownDataFrameType(_) | P::UnknownControlFrameType(_) | P::InvalidOpcode(_) => {
                "protocol error: reserved opcode"
            }
            P::ControlFrameTooBig => "protocol error: control frame over 125 bytes",
            P::FragmentedControlFrame => "protocol error: fragmented control frame",
            P::UnexpectedContinueFrame => "protocol error: continuation without a message",
            P::ExpectedFragment(_) => "protocol error: new message inside a fragmented one",
            P::InvalidCloseSequence => "protocol error: malformed close frame",
            _ => "protocol error",
        },
        _ => return End::ClientClosed,
    };
    End::ProtocolError(reason)
}
