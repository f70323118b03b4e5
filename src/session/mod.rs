//! Who is connected: the session registry.
//!
//! Each session (WebSocket or SSE) has a bounded outbound queue. Pushing never waits: when a
//! session's queue is full the session is *kicked* (closed as a slow consumer) and its
//! messages stay undelivered, to be replayed on reconnect. A slow session therefore never
//! delays anyone else.
//!
//! An idle session must be cheap (thousands per node): its queue allocates nothing until a
//! frame is queued, and it owns no timers — one heartbeat task per node raises the `PING`
//! and `DEAD` signals on every session (see `ws::heartbeat`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use herald_channel::MessageView;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub mod memory;

/// What the management API shows about a session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session_id: String,
    pub user_id: String,
    pub login_name: Option<String>,
    pub device: Option<String>,
    pub login_time_ms: i64,
    pub remote_addr: SocketAddr,
    pub node: Arc<str>,
}

/// The `delivery_id` of a *control* frame (inbox `state`/`counts`): written like a message
/// frame, never recorded as `sent`, never de-duplicated against the replay.
pub const CONTROL_FRAME: i64 = 0;

/// One frame queued for a session.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub delivery_id: i64,
    pub message: Arc<MessageView>,
    /// The serialized message frame, shared by every session receiving this message.
    pub frame: Utf8Bytes,
}

/// Signals raised on a session; the session task handles them when woken.
pub mod signal {
    /// Its queue overflowed: close as a slow consumer.
    pub const KICKED: u8 = 1;
    /// Time to send a WebSocket ping.
    pub const PING: u8 = 2;
    /// Nothing received for longer than the pong timeout.
    pub const DEAD: u8 = 4;
    /// The server is shutting down.
    pub const SHUTDOWN: u8 = 8;
    /// A socket write has taken longer than the write timeout.
    pub const STALLED: u8 = 16;
}

/// Frames queued for the sessions of this node, all together: the fan-out backlog.
/// Sends are refused with `503` while it is above `dispatch.fanout_backlog` per session
/// (admission control), so memory and latency stay bounded however fast messages come.
#[derive(Debug, Default)]
pub struct Backlog(AtomicUsize);

impl Backlog {
    pub fn frames(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// [`SessionHandle::first_frame`] states.
const FIRST_FRAME_SETUP: u8 = 0;
const FIRST_FRAME_AWAITED: u8 = 1;
const FIRST_FRAME_HEARD: u8 = 2;
/// The client never sends frames (Server-Sent Events): no first-frame or pong deadline.
const ONE_WAY: u8 = 3;

/// The registry's handle on a live session.
pub struct SessionHandle {
    pub info: SessionInfo,
    queue: Mutex<VecDeque<Outbound>>,
    backlog: Arc<Backlog>,
    capacity: usize,
    signals: AtomicU8,
    /// Sticky: once kicked, offers are refused until the session is gone.
    kicked: AtomicBool,
    /// Milliseconds since [`SessionHandle::epoch`] at which the client was last heard from.
    last_seen: AtomicI64,
    /// Milliseconds since `epoch` at which the current socket write began; -1 when idle.
    write_started: AtomicI64,
    /// The first-frame deadline (`websocket.first_frame_timeout`): [`FIRST_FRAME_SETUP`]
    /// while the welcome and replay are written, [`FIRST_FRAME_AWAITED`] once the session
    /// listens, [`FIRST_FRAME_HEARD`] once the client sent anything; [`ONE_WAY`] for a
    /// client that never sends.
    first_frame: AtomicU8,
    epoch: Instant,
    wake: Notify,
}

impl SessionHandle {
    pub fn new(info: SessionInfo, capacity: usize, backlog: Arc<Backlog>) -> Arc<SessionHandle> {
        Arc::new(SessionHandle {
            info,
            queue: Mutex::new(VecDeque::new()),
            backlog,
            capacity,
            signals: AtomicU8::new(0),
            kicked: AtomicBool::new(false),
            last_seen: AtomicI64::new(0),
            write_started: AtomicI64::new(-1),
            first_frame: AtomicU8::new(FIRST_FRAME_SETUP),
            epoch: Instant::now(),
            wake: Notify::new(),
        })
    }

    /// Queue a frame without waiting. A full queue kicks the session and returns `false`.
    pub fn offer(&self, item: Outbound) -> bool {
        if self.is_kicked() {
            return false;
        }
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= self.capacity {
                drop(q);
                self.raise(signal::KICKED);
                return false;
            }
            q.push_back(item);
        }
        self.backlog.0.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        true
    }

    /// Take the next queued frame, if any.
    pub fn try_next(&self) -> Option<Outbound> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let item = q.pop_front();
        if item.is_some() {
            self.backlog.0.fetch_sub(1, Ordering::Relaxed);
        }
        if q.is_empty() && q.capacity() > 16 {
            // Give a burst's memory back: idle sessions stay small.
            *q = VecDeque::new();
        }
        item
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().map(|q| q.is_empty()).unwrap_or(true)
    }

    /// Raise signals and wake the session task.
    pub fn raise(&self, bits: u8) {
        if bits & signal::KICKED != 0 {
            self.kicked.store(true, Ordering::Release);
        }
        self.signals.fetch_or(bits, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Take (and clear) the raised signals; `KICKED` is reported for as long as it holds.
    pub fn take_signals(&self) -> u8 {
        let bits = self.signals.swap(0, Ordering::AcqRel);
        if self.is_kicked() {
            bits | signal::KICKED
        } else {
            bits
        }
    }

    /// The raised signals, without clearing them.
    pub fn peek_signals(&self) -> u8 {
        self.signals.load(Ordering::Acquire)
    }

    /// Wake the session task again (hand a consumed wake-up on).
    pub fn rewake(&self) {
        self.wake.notify_one();
    }

    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    /// Resolves when a frame is queued or a signal is raised (a wake-up that came while
    /// nobody waited is kept, so none is lost).
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Record that the client was heard from now.
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as i64;
        self.last_seen.store(ms, Ordering::Relaxed);
        if self.first_frame.load(Ordering::Relaxed) == FIRST_FRAME_AWAITED {
            self.first_frame.store(FIRST_FRAME_HEARD, Ordering::Relaxed);
        }
    }

    /// The welcome (and any replay) has been written and the session starts reading: the
    /// client's silence counts from now, and its first frame is awaited.
    pub fn listen(&self) {
        self.touch();
        let _ = self.first_frame.compare_exchange(
            FIRST_FRAME_SETUP,
            FIRST_FRAME_AWAITED,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The session listens but has not heard from its client yet.
    pub fn awaiting_first_frame(&self) -> bool {
        self.first_frame.load(Ordering::Relaxed) == FIRST_FRAME_AWAITED
    }

    /// The client never sends frames (an SSE stream): its silence is no sign of a dead
    /// peer, so the heartbeat applies no first-frame or pong deadline; a failed or stalled
    /// write ends such a session.
    pub fn one_way(&self) {
        self.first_frame.store(ONE_WAY, Ordering::Relaxed);
    }

    /// Whether the client is expected to send frames (false after [`Self::one_way`]).
    pub fn expects_frames(&self) -> bool {
        self.first_frame.load(Ordering::Relaxed) != ONE_WAY
    }

    fn now_ms(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }

    /// A socket write begins (the heartbeat enforces the write timeout).
    pub fn begin_write(&self) {
        self.write_started.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn end_write(&self) {
        self.write_started.store(-1, Ordering::Relaxed);
    }

    /// How long the current socket write has taken, if one is under way.
    pub fn writing_for(&self) -> Option<std::time::Duration> {
        let started = self.write_started.load(Ordering::Relaxed);
        (started >= 0)
            .then(|| std::time::Duration::from_millis((self.now_ms() - started).max(0) as u64))
    }

    /// How long since the client was last heard from.
    pub fn silent_for(&self) -> std::time::Duration {
        let ms = self.epoch.elapsed().as_millis() as i64 - self.last_seen.load(Ordering::Relaxed);
        std::time::Duration::from_millis(ms.max(0) as u64)
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        // Frames a closed session never wrote leave the backlog with it.
        let left = self.queue.get_mut().map(|q| q.len()).unwrap_or(0);
        self.backlog.0.fetch_sub(left, Ordering::Relaxed);
    }
}

/// Result of pushing a frame to a user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Sessions that queued the frame.
    pub accepted: usize,
    /// Sessions kicked as slow consumers by this push.
    pub kicked: usize,
}

#[async_trait]
pub trait SessionRegistry: Send + Sync + 'static {
    fn register(&self, handle: Arc<SessionHandle>);
    fn unregister(&self, handle: &Arc<SessionHandle>);
    /// Queue `item` for every session of `user` on this node (never waits).
    fn push(&self, user: &str, item: &Outbound) -> Pushed;
    /// Queue one message for every session of the sorted `members` (a broadcast): member
    /// `i`'s frame carries `delivery_id(i)`. `true` per member with a session that took it.
    /// The default pushes member by member; a registry that can do one pass over its
    /// sessions overrides it.
    fn push_audience(
        &self,
        members: &[String],
        delivery_id: &(dyn Fn(usize) -> i64 + Send + Sync),
        message: &Arc<MessageView>,
        frame: &Utf8Bytes,
    ) -> Vec<bool> {
        members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let item = Outbound {
                    delivery_id: delivery_id(i),
                    message: message.clone(),
                    frame: frame.clone(),
                };
                self.push(m, &item).accepted > 0
            })
            .collect()
    }
    /// Users with at least one session.
    async fn online_users(&self) -> Vec<String>;
    /// Does `user` have a session (failover routing is presence-aware)?
    async fn is_online(&self, user: &str) -> bool;
    /// Every session.
    async fn list(&self) -> Vec<SessionInfo>;
    /// Sessions on this node.
    fn local_count(&self) -> usize;
    /// Visit every session on this node (heartbeat, shutdown). Called under short locks:
    /// `f` must not block.
    fn for_each_local(&self, f: &mut dyn FnMut(&Arc<SessionHandle>));
    /// Shared by several nodes (cluster mode).
    fn is_shared(&self) -> bool {
        false
    }
}
