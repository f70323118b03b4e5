//! The shared application state: a cheap-clone handle passed to every handler and task.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{Secret, Settings};
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::session::SessionRegistry;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub settings: Settings,
    /// Message templates, loaded at start.
    pub templates: Arc<crate::templates::Templates>,
    /// Plans and accepts sends (`dispatch::plan`).
    pub planner: crate::dispatch::plan::Planner,
    pub store: Arc<dyn Store>,
    pub registry: Arc<dyn SessionRegistry>,
    pub dispatcher: Dispatcher,
    pub auth: Arc<dyn Authenticator>,
    pub api_key: Secret,
    /// Every management API key with its scopes and send limit (the main one included).
    pub api_keys: crate::auth::ApiKeys,
    /// `websocket.handshake_rate_limit` per client address; `None`: off.
    pub ws_handshakes: Option<crate::limits::HandshakeLimiter>,
    pub metrics: Arc<Metrics>,
    /// Cancelled on SIGTERM/Ctrl-C: sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Session tasks, awaited (with a bound) at shutdown.
    pub sessions: TaskTracker,
    pub node: Arc<str>,
    /// Frames queued for this node's sessions (fan-out admission control).
    pub backlog: Arc<crate::session::Backlog>,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        AppState(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
