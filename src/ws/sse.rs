//! `GET /events`: a session over Server-Sent Events (docs/websocket.md §7), for networks
//! that block WebSocket. The same session as on WebSocket — registered, counted against
//! the session share, fed by the dispatcher, the same welcome, replay and live frames
//! (`shared.rs`) — written as `data:` events on a streaming response. The client sends
//! nothing: it acknowledges over REST, so the session has no first-frame or pong deadline
//! (`SessionHandle::one_way`); a failed or stalled write ends it.
//!
//! The session task owns the writes: it appends events to a buffer and hands it to hyper
//! through a small bounded channel (the response body). A flush waits until hyper has
//! taken every chunk, so `sent` is recorded once a frame is on its way to the socket, as
//! on WebSocket, and a client that stops reading blocks the write (`websocket.
//! write_timeout` then ends the session).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::shared::{self, bounded, fatal, Transport};
use super::End;
use crate::auth::UserIdentity;
use crate::error::ApiError;
use crate::session::{signal, SessionHandle};
use crate::state::AppState;

/// Chunks waiting between the session task and hyper (the response body). Two: each
/// chunk is at most about `websocket.write_buffer_size` plus one frame, so a client that
/// stops reading costs at most two of them (plus hyper's and the kernel's buffers) before
/// the session's write blocks.
const CHUNKS: usize = 2;

/// The first line: EventSource waits this long (ms) before it reconnects.
const RETRY: &[u8] = b"retry: 2000\n\n";

/// The heartbeat, a comment line every `websocket.ping_interval`.
const PING: &[u8] = b": ping\n\n";

/// The longest `Last-Event-ID` echoed in the welcome (Herald's ids are message seqs).
const MAX_EVENT_ID: usize = 64;

const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// `GET /events`
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    params(
        ("token" = Option<String>, Query, description = "User token (JWT), when not sent as `Authorization: Bearer` (EventSource cannot set headers)"),
        ("lastEventId" = Option<String>, Query, description = "The last event id the client saw, when not sent as `Last-Event-ID`; echoed as `resumedFrom` in the welcome"),
        ("Last-Event-ID" = Option<String>, Header, description = "Sent by EventSource when it reconnects; wins over `lastEventId`"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", description = "The event stream: `retry: 2000`, then one `data:` event per frame (welcome, replay, live; message events replayed carry `id: <seq>`), `: ping` comments every `websocket.ping_interval`. See docs/websocket.md §7."),
        (status = 401, description = "Bad, expired or missing token", body = crate::error::ErrorBody),
        (status = 429, description = "Too many handshakes from this address (`websocket.handshake_rate_limit`); checked before the token", body = crate::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a handshake is allowed again"))),
        (status = 503, description = "Sessions hold every connection not reserved (`http.max_connections` - `http.reserved_connections`), or the server is shutting down", body = crate::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again (when sessions are full)"))),
    ),
    security((), ("user_token" = []))
)]
pub async fn events(
    State(app): State<AppState>,
    method: Method,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let mut query = query.map(|Query(q)| q).unwrap_or_default();
    let token = crate::auth::bearer(&headers)
        .map(str::to_owned)
        .or_else(|| query.remove("token"));
    let identity = match shared::admit(&app, token.as_deref(), remote).await {
        Ok(id) => id,
        Err(refused) => return refused,
    };
    if app.shutdown.is_cancelled() {
        return ApiError::unavailable("shutting down").into_response();
    }
    // The header (EventSource sends it on every reconnect) wins over the query.
    let resumed_from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.remove("lastEventId"))
        .filter(|id| is_event_id(id));
    if method == Method::HEAD {
        // axum answers HEAD with the GET route: the headers, and no session.
        return stream_response(Body::empty());
    }
    let (tx, rx) = mpsc::channel(CHUNKS);
    app.sessions
        .spawn(run_session(app.clone(), tx, identity, remote, resumed_from));
    stream_response(body(rx))
}

/// A `Last-Event-ID` worth echoing: 1 to 64 bytes, no control characters.
fn is_event_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_EVENT_ID && !id.chars().any(char::is_control)
}

/// `200` with the event stream's headers. The connection service adds `Connection:
/// close` (the session's slot is given back when its socket closes).
fn stream_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // nginx: pass events on at once instead of buffering the response.
            (X_ACCEL_BUFFERING, HeaderValue::from_static("no")),
        ],
        body,
    )
        .into_response()
}

/// The response body: the chunks the session hands over, until it drops its sender.
fn body(mut rx: mpsc::Receiver<Bytes>) -> Body {
    Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|chunk| chunk.map(Ok::<_, Infallible>))
    }))
}

/// Append one event: `id: <seq>` for a message whose seq is known, then the frame as
/// `data:` lines. Frames are compact JSON (serde escapes line breaks inside strings), so
/// there is one line; a line break elsewhere would start another `data:` line, which the
/// client joins back with `\n`.
fn event(buf: &mut Vec<u8>, seq: Option<i64>, json: &str) {
    use std::io::Write;
    if let Some(seq) = seq {
        let _ = writeln!(buf, "id: {seq}");
    }
    for line in json.split(['\n', '\r']) {
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    buf.push(b'\n');
}

struct SseSession {
    app: AppState,
    handle: Arc<SessionHandle>,
    tx: mpsc::Sender<Bytes>,
    /// Events not handed to hyper yet.
    buf: Vec<u8>,
}

/// The session task: register, stream, unregister. Dropping the sender ends the response
/// body; hyper then finishes the response and closes the connection.
fn run_session(
    app: AppState,
    tx: mpsc::Sender<Bytes>,
    identity: UserIdentity,
    remote: SocketAddr,
    resumed_from: Option<String>,
) -> impl std::future::Future<Output = ()> + Send {
    let handle = shared::new_handle(&app, identity, remote);
    handle.one_way();
    let mut session = SseSession {
        app,
        handle,
        tx,
        buf: Vec::new(),
    };
    async move {
        Box::pin(shared::open(&session.app, &session.handle)).await;
        session.app.metrics.sse_sessions.fetch_add(1, Relaxed);
        let end = session.run(resumed_from.as_deref()).await;
        session.app.metrics.sse_sessions.fetch_sub(1, Relaxed);
        if end == End::SlowConsumer {
            session.app.metrics.slow_consumers.fetch_add(1, Relaxed);
        }
        Box::pin(shared::finish(&session.app, &session.handle, &end)).await;
    }
}

impl SseSession {
    async fn run(&mut self, resumed_from: Option<&str>) -> End {
        self.buf.extend_from_slice(RETRY);
        let welcome = shared::welcome(&self.app, &self.handle, resumed_from).await;
        let (welcome, replay) = match welcome {
            Ok(w) => w,
            Err(end) => return end,
        };
        if let Err(end) = self.frame(welcome.into(), None, true).await {
            return end;
        }
        let mut replayed = match Box::pin(shared::replay(self, replay)).await {
            Ok(ids) => Some(ids),
            Err(end) => return end,
        };
        if replayed.as_ref().is_some_and(HashSet::is_empty) {
            replayed = None;
        }
        loop {
            // Signals first: a kicked, stalled or stopping session writes nothing more.
            let signals = self.handle.take_signals();
            if let Some(end) = fatal(signals) {
                return end;
            }
            if signals & signal::PING != 0 {
                self.buf.extend_from_slice(PING);
                if let Err(end) = self.write_out(true).await {
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
                // The body was dropped: the client went away.
                _ = self.tx.closed() => return End::ClientClosed,
            }
        }
    }

    /// Hand the buffered events to hyper; with `drain`, also wait until hyper has taken
    /// every chunk (a flush). Bounded like every session write (`write_timeout`, signals).
    async fn write_out(&mut self, drain: bool) -> Result<(), End> {
        let chunk = (!self.buf.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.buf)));
        let tx = &self.tx;
        let io = async move {
            if let Some(chunk) = chunk {
                tx.send(chunk).await.map_err(drop)?;
            }
            if drain {
                // Every slot free again: the receiver has taken all chunks.
                drop(tx.reserve_many(CHUNKS).await.map_err(drop)?);
            }
            Ok::<(), ()>(())
        };
        bounded(&self.handle, io).await
    }
}

impl Transport for SseSession {
    fn app(&self) -> &AppState {
        &self.app
    }

    fn handle(&self) -> &Arc<SessionHandle> {
        &self.handle
    }

    async fn frame(&mut self, json: Utf8Bytes, seq: Option<i64>, flush: bool) -> Result<(), End> {
        event(&mut self.buf, seq, json.as_str());
        if flush {
            self.write_out(true).await
        } else if self.buf.len() >= self.app.settings.websocket.write_buffer_size {
            self.write_out(false).await
        } else {
            Ok(())
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        self.write_out(true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(seq: Option<i64>, json: &str) -> String {
        let mut buf = Vec::new();
        event(&mut buf, seq, json);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn events_are_data_lines_with_an_id_when_known() {
        assert_eq!(
            text(Some(42), r#"{"type":"message"}"#),
            "id: 42\ndata: {\"type\":\"message\"}\n\n"
        );
        assert_eq!(
            text(None, r#"{"type":"welcome"}"#),
            "data: {\"type\":\"welcome\"}\n\n"
        );
        // A line break (never in compact JSON) becomes another data line.
        assert_eq!(text(None, "{\n}"), "data: {\ndata: }\n\n");
    }

    #[test]
    fn only_short_printable_event_ids_are_echoed() {
        assert!(is_event_id("12345"));
        assert!(!is_event_id(""));
        assert!(!is_event_id(&"9".repeat(65)));
        assert!(!is_event_id("1\n2"));
    }
}
