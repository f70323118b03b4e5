//! Who is connected: the session registry.
//!
//! Each WebSocket session has a bounded outbound queue. Pushing never waits: when a
//! session's queue is full the session is *kicked* (closed as a slow consumer) and its
//! messages stay undelivered, to be replayed on reconnect. A slow session therefore never
//! delays anyone else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use herald_channel::MessageView;
use tokio::sync::{mpsc, Notify};

pub mod memory;

/// What the management API shows about a session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session_id: String,
    pub user_id: String,
    pub login_name: Option<String>,
    pub device: Option<String>,
    pub login_time_ms: i64,
    pub remote_addr: String,
    pub node: String,
}

/// One frame queued for a session.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub delivery_id: i64,
    pub message: Arc<MessageView>,
    /// The serialized message frame, shared by every session receiving this message.
    pub frame: Utf8Bytes,
}

/// The registry's handle on a live session.
pub struct SessionHandle {
    pub info: SessionInfo,
    tx: mpsc::Sender<Outbound>,
    kicked: AtomicBool,
    kick: Notify,
}

impl SessionHandle {
    /// A handle and the receiving end of its outbound queue.
    pub fn new(
        info: SessionInfo,
        capacity: usize,
    ) -> (Arc<SessionHandle>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity);
        let handle = Arc::new(SessionHandle {
            info,
            tx,
            kicked: AtomicBool::new(false),
            kick: Notify::new(),
        });
        (handle, rx)
    }

    /// Queue a frame without waiting. A full queue kicks the session and returns `false`.
    pub fn offer(&self, item: Outbound) -> bool {
        if self.kicked.load(Ordering::Relaxed) {
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kick();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ask the session to close as a slow consumer.
    pub fn kick(&self) {
        if !self.kicked.swap(true, Ordering::Relaxed) {
            self.kick.notify_one();
        }
    }

    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Relaxed)
    }

    /// Resolves once the session has been kicked.
    pub async fn kicked(&self) {
        self.kick.notified().await
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
    /// Users with at least one session.
    async fn online_users(&self) -> Vec<String>;
    /// Every session.
    async fn list(&self) -> Vec<SessionInfo>;
    /// Sessions on this node.
    fn local_count(&self) -> usize;
}
