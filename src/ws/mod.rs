//! `GET /websocket/{token}` (and `/websocket?token=`): token check before the upgrade, then
//! one task per session: welcome, replay of everything undelivered (oldest first), then live
//! frames from the session's bounded queue, client acks/reads/pings, and server pings.
//! `GET /events` (`sse.rs`) is the same session over Server-Sent Events; what both share
//! (welcome, replay, live writes) is in `shared.rs`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::auth::UserIdentity;
use crate::error::ApiError;
use crate::model::{Status, StatusChange};
use crate::session::{signal, SessionHandle};
use crate::state::AppState;

pub mod channel;
pub mod frame;
pub mod inbox;
mod shared;
pub mod sse;
pub mod upgrade;

use shared::{bounded, fatal, Transport};

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
    let identity = match shared::admit(&app, token.as_deref(), remote).await {
        Ok(id) => id,
        Err(refused) => return refused,
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
    let handle = shared::new_handle(&app, identity, remote);
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
    /// Register (see [`shared::open`]).
    async fn open(&mut self) {
        shared::open(&self.app, &self.handle).await;
    }

    async fn finish(&mut self, end: End) {
        shared::finish(&self.app, &self.handle, &end).await;
        close(self, end).await;
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
/// frame `first_frame_timeout` after they started listening (never on SSE sessions, whose
/// clients send nothing), and `STALLED` on sessions whose write has taken longer than
/// `write_timeout`; sessions own no timers of their own. On shutdown it raises `SHUTDOWN`
/// everywhere.
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
            } else if h.expects_frames()
                && (h.silent_for() > pong_timeout
                    || (h.awaiting_first_frame() && h.silent_for() > first_frame_timeout))
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
        let (welcome, replay) = match shared::welcome(&self.app, &self.handle, None).await {
            Ok(w) => w,
            Err(end) => return end,
        };
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
        let mut replayed = match Box::pin(shared::replay(self, replay)).await {
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
                if let Err(end) = Box::pin(shared::write_live(self, item, &mut replayed)).await {
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
                // Awaited here, so a client flooding reads is slowed by the store instead
                // of piling up tasks. An id that is not in the inbox changes nothing.
                self.app.metrics.acks.fetch_add(1, Relaxed);
                let target = crate::model::inbox::Target::Ids(vec![id]);
                let user = &self.handle.info.user_id;
                if let Err(e) =
                    inbox::mark(&self.app, user, crate::model::inbox::Op::Read, target).await
                {
                    tracing::debug!(error = %e, "read receipt not stored");
                }
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
}

/// The shared replay and live writes send text frames; WebSocket frames carry no `seq`.
impl Transport for Session {
    fn app(&self) -> &AppState {
        &self.app
    }

    fn handle(&self) -> &Arc<SessionHandle> {
        &self.handle
    }

    fn frame(
        &mut self,
        json: Utf8Bytes,
        _seq: Option<i64>,
        flush: bool,
    ) -> impl std::future::Future<Output = Result<(), End>> + Send {
        self.write(Message::Text(json), flush)
    }

    fn flush(&mut self) -> impl std::future::Future<Output = Result<(), End>> + Send {
        bounded(&self.handle, self.socket.flush())
    }
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
