//! The cluster session registry: this node's sessions in memory (as on a single node), the
//! cluster's in Redis, and live frames fanned out over Redis pub/sub.
//!
//! * Publishing sessions: `register`/`unregister` only change the local map and wake the
//!   sync task, which *reconciles* the node's Redis hashes with the local map (also every
//!   heartbeat). Nothing is queued per session, so a burst of connects costs one round trip
//!   and a missed update heals at the next heartbeat.
//! * Pushing: the local sessions get the frame at once; the frame is also queued (bounded)
//!   for the publisher task — always, even when no other node was seen at the last
//!   heartbeat — and every other node's subscriber pushes it to its sessions of that user. A frame that cannot be published (queue full, Redis down) is not lost: the
//!   delivery stays undelivered and is replayed when the user reconnects.
//! * Liveness: a node renews `alive:{node}` every `heartbeat_interval` with a TTL of
//!   `node_ttl`; listings and presence only count nodes whose key exists when they look, so
//!   a node killed with -9 disappears within `node_ttl` and a new one counts at once. The first node to notice a dead node removes its
//!   hashes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald_channel::MessageView;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::ClusterSettings;
use crate::session::memory::MemoryRegistry;
use crate::session::{Outbound, Pushed, SessionHandle, SessionInfo, SessionRegistry};

/// A session as stored in Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct SessionRecord {
    session_id: String,
    user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    login_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    login_time: i64,
    remote_addr: String,
    node: String,
}

impl SessionRecord {
    fn of(i: &SessionInfo) -> SessionRecord {
        SessionRecord {
            session_id: i.session_id.clone(),
            user_id: i.user_id.clone(),
            login_name: i.login_name.clone(),
            device: i.device.clone(),
            login_time: i.login_time_ms,
            remote_addr: i.remote_addr.to_string(),
            node: i.node.to_string(),
        }
    }

    fn info(self) -> SessionInfo {
        SessionInfo {
            session_id: self.session_id,
            user_id: self.user_id,
            login_name: self.login_name,
            device: self.device,
            login_time_ms: self.login_time,
            remote_addr: self
                .remote_addr
                .parse()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            node: Arc::from(self.node.as_str()),
        }
    }
}

/// A live frame on its way to the other nodes.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The node that published it (it ignores its own).
    o: String,
    /// User.
    u: String,
    /// Delivery id (the receiving session records `sent` for it).
    d: i64,
    /// Message id (de-duplication against the replay, tombstones).
    m: String,
    /// The frame.
    f: String,
    /// A broadcast: one envelope for its whole audience instead of one per member (`u`
    /// is empty then; member `i`'s delivery id is `d - i`, or `a.ids[i]` when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<AudienceEnvelope>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AudienceEnvelope {
    /// The members, sorted.
    r: Vec<String>,
    /// Delivery ids, when they are not `d - i`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ids: Vec<i64>,
}

struct Keys {
    prefix: String,
}

impl Keys {
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn alive(&self, node: &str) -> String {
        format!("{}:alive:{node}", self.prefix)
    }
    fn sessions(&self, node: &str) -> String {
        format!("{}:sessions:{node}", self.prefix)
    }
    fn user(&self, user: &str) -> String {
        format!("{}:user:{user}", self.prefix)
    }
    fn push(&self) -> String {
        format!("{}:push", self.prefix)
    }
    fn reap(&self, node: &str) -> String {
        format!("{}:reap:{node}", self.prefix)
    }
}

pub struct RedisRegistry {
    local: MemoryRegistry,
    node: String,
    keys: Keys,
    settings: ClusterSettings,
    conn: ConnectionManager,
    client: redis::Client,
    /// Wakes the sync task (a session came or went).
    dirty: Notify,
    publish: mpsc::Sender<Envelope>,
    publish_rx: Mutex<Option<mpsc::Receiver<Envelope>>>,
    /// Nodes whose liveness key existed at the last heartbeat (this one included).
    alive: Mutex<HashSet<String>>,
    /// Frames not published because the queue was full.
    pub dropped: std::sync::atomic::AtomicU64,
}

type RResult<T> = Result<T, redis::RedisError>;

impl RedisRegistry {
    /// Connected and registered as alive; call [`RedisRegistry::spawn`] to start its tasks.
    pub async fn connect(
        url: &str,
        node: &str,
        settings: &ClusterSettings,
    ) -> Result<Arc<RedisRegistry>, super::ClusterError> {
        let (client, conn) = super::connect(url).await?;
        let (tx, rx) = mpsc::channel(settings.publish_queue);
        let reg = Arc::new(RedisRegistry {
            local: MemoryRegistry::default(),
            node: node.to_owned(),
            keys: Keys {
                prefix: settings.prefix.clone(),
            },
            settings: settings.clone(),
            conn,
            client,
            dirty: Notify::new(),
            publish: tx,
            publish_rx: Mutex::new(Some(rx)),
            alive: Mutex::new(HashSet::from([node.to_owned()])),
            dropped: Default::default(),
        });
        // A previous process of this node (killed) may have left its sessions behind.
        reg.forget_node(node)
            .await
            .and(reg.beat().await)
            .map_err(|source| super::ClusterError::Redis {
                url: super::redact(url),
                source,
            })?;
        Ok(reg)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The heartbeat + session sync task, the publisher and the subscriber. They stop with
    /// `stop`; the node's keys are removed then.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let rx = self
            .publish_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut tasks = vec![
            tokio::spawn(self.clone().sync_loop(stop.clone())),
            tokio::spawn(self.clone().subscribe_loop(stop.clone())),
        ];
        if let Some(rx) = rx {
            tasks.push(tokio::spawn(self.clone().publish_loop(rx, stop)));
        }
        tasks
    }

    async fn beat(&self) -> RResult<()> {
        let mut c = self.conn();
        let ttl = self.settings.node_ttl.as_millis() as u64;
        redis::pipe()
            .cmd("SET")
            .arg(self.keys.alive(&self.node))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("SADD")
            .arg(self.keys.nodes())
            .arg(&self.node)
            .ignore()
            .query_async::<()>(&mut c)
            .await?;
        // Which nodes are alive now.
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut c)
            .await?;
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.cmd("EXISTS").arg(self.keys.alive(n));
        }
        let exists: Vec<bool> = pipe.query_async(&mut c).await?;
        let mut alive = HashSet::from([self.node.clone()]);
        let mut dead = Vec::new();
        for (n, up) in nodes.into_iter().zip(exists) {
            if up {
                alive.insert(n);
            } else if n != self.node {
                dead.push(n);
            }
        }
        *self.alive.lock().unwrap_or_else(|p| p.into_inner()) = alive;
        for n in dead {
            // One node cleans up after a dead one.
            let won: Option<String> = redis::cmd("SET")
                .arg(self.keys.reap(&n))
                .arg(&self.node)
                .arg("NX")
                .arg("PX")
                .arg(ttl)
                .query_async(&mut c)
                .await?;
            if won.is_some() {
                tracing::warn!(node = %n, "cluster node stopped sending heartbeats; removing its sessions");
                self.forget_node(&n).await?;
                redis::cmd("SREM")
                    .arg(self.keys.nodes())
                    .arg(&n)
                    .query_async::<()>(&mut c)
                    .await?;
            }
        }
        Ok(())
    }

    /// Remove a node's session hash and its entries in the user index.
    async fn forget_node(&self, node: &str) -> RResult<()> {
        let mut c = self.conn();
        let sessions: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.sessions(node))
            .query_async(&mut c)
            .await?;
        let mut pipe = redis::pipe();
        for (sid, json) in &sessions {
            if let Ok(r) = serde_json::from_str::<SessionRecord>(json) {
                pipe.cmd("HDEL")
                    .arg(self.keys.user(&r.user_id))
                    .arg(sid)
                    .ignore();
            }
        }
        pipe.cmd("DEL").arg(self.keys.sessions(node)).ignore();
        pipe.query_async::<()>(&mut c).await
    }

    /// Make this node's hashes in Redis equal its local sessions.
    async fn reconcile(&self, published: &mut HashMap<String, SessionRecord>) -> RResult<()> {
        let mut now: HashMap<String, SessionRecord> = HashMap::new();
        self.local.for_each_local(&mut |h| {
            now.insert(h.info.session_id.clone(), SessionRecord::of(&h.info));
        });
        let mut pipe = redis::pipe();
        let mut changes = 0;
        for (sid, r) in &now {
            if !published.contains_key(sid) {
                let json = serde_json::to_string(r).unwrap_or_default();
                pipe.cmd("HSET")
                    .arg(self.keys.sessions(&self.node))
                    .arg(sid)
                    .arg(json)
                    .ignore();
                pipe.cmd("HSET")
                    .arg(self.keys.user(&r.user_id))
                    .arg(sid)
                    .arg(&self.node)
                    .ignore();
                changes += 1;
            }
        }
        for (sid, r) in published.iter() {
            if !now.contains_key(sid) {
                pipe.cmd("HDEL")
                    .arg(self.keys.sessions(&self.node))
                    .arg(sid)
                    .ignore();
                pipe.cmd("HDEL")
                    .arg(self.keys.user(&r.user_id))
                    .arg(sid)
                    .ignore();
                changes += 1;
            }
        }
        if changes > 0 {
            pipe.query_async::<()>(&mut self.conn()).await?;
        }
        *published = now;
        Ok(())
    }

    async fn sync_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut published = HashMap::new();
        let mut tick = tokio::time::interval(self.settings.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let beat = tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => true,
                _ = self.dirty.notified() => false,
            };
            if beat {
                if let Err(e) = self.beat().await {
                    tracing::warn!(error = %e, "cluster heartbeat failed");
                }
            }
            if let Err(e) = self.reconcile(&mut published).await {
                tracing::warn!(error = %e, "publishing sessions to redis failed; retried at the next heartbeat");
                // Unknown state: rewrite everything next time.
                published.clear();
            }
        }
        // Leaving: this node's sessions are closing; say so at once.
        let mut c = self.conn();
        let _ = redis::cmd("DEL")
            .arg(self.keys.alive(&self.node))
            .query_async::<()>(&mut c)
            .await;
        let _ = self.forget_node(&self.node).await;
    }

    async fn publish_loop(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Envelope>,
        stop: CancellationToken,
    ) {
        let channel = self.keys.push();
        let mut batch = Vec::with_capacity(256);
        loop {
            let n = tokio::select! {
                _ = stop.cancelled() => break,
                n = rx.recv_many(&mut batch, 256) => n,
            };
            if n == 0 {
                break;
            }
            let mut pipe = redis::pipe();
            for e in batch.drain(..) {
                if let Ok(json) = serde_json::to_string(&e) {
                    pipe.cmd("PUBLISH").arg(&channel).arg(json).ignore();
                }
            }
            if let Err(e) = pipe.query_async::<()>(&mut self.conn()).await {
                // Those frames reach remote sessions by replay instead.
                tracing::warn!(error = %e, count = n, "publishing frames to the cluster failed");
            }
        }
    }

    async fn subscribe_loop(self: Arc<Self>, stop: CancellationToken) {
        use futures_util::StreamExt;
        let channel = self.keys.push();
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            let conn = tokio::select! {
                _ = stop.cancelled() => return,
                c = self.client.get_async_pubsub() => c,
            };
            let mut pubsub = match conn {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster subscriber cannot connect; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    continue;
                }
            };
            if let Err(e) = pubsub.subscribe(&channel).await {
                tracing::warn!(error = %e, "cluster subscribe failed; retrying");
                continue;
            }
            backoff = std::time::Duration::from_millis(100);
            let mut stream = pubsub.on_message();
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = stream.next() => m,
                };
                let Some(msg) = msg else { break };
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                let Ok(e) = serde_json::from_str::<Envelope>(&payload) else {
                    continue;
                };
                if e.o == self.node {
                    continue;
                }
                let message = Arc::new(MessageView {
                    id: e.m,
                    title: String::new(),
                    content: String::new(),
                    msg_type: 0,
                    sender: String::new(),
                    created_at: String::new(),
                    template: None,
                    data: None,
                });
                let frame = Utf8Bytes::from(e.f);
                if let Some(AudienceEnvelope { r, ids }) = e.a {
                    let base = e.d;
                    let id = move |i: usize| ids.get(i).copied().unwrap_or(base - i as i64);
                    self.local.push_audience(&r, &id, &message, &frame);
                    continue;
                }
                let item = Outbound {
                    delivery_id: e.d,
                    message,
                    frame,
                };
                self.local.push(&e.u, &item);
            }
            tracing::warn!(
                "cluster subscription lost; reconnecting (frames meanwhile arrive by replay)"
            );
        }
    }

    fn alive_nodes(&self) -> HashSet<String> {
        self.alive.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The nodes alive right now (one round trip; a node that joined since the last
    /// heartbeat counts). Falls back to the heartbeat's view when Redis does not answer.
    async fn live_nodes(&self) -> HashSet<String> {
        let mut c = self.conn();
        let nodes: Vec<String> = match redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut c)
            .await
        {
            Ok(n) => n,
            Err(_) => return self.alive_nodes(),
        };
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.cmd("EXISTS").arg(self.keys.alive(n));
        }
        match pipe.query_async::<Vec<bool>>(&mut c).await {
            Ok(up) => {
                let mut live: HashSet<String> = nodes
                    .into_iter()
                    .zip(up)
                    .filter_map(|(n, up)| up.then_some(n))
                    .collect();
                live.insert(self.node.clone());
                live
            }
            Err(_) => self.alive_nodes(),
        }
    }

    /// Every session of every live node (this one's from memory).
    async fn all_sessions(&self) -> Vec<SessionInfo> {
        let mut all = self.local.list().await;
        let others: Vec<String> = self
            .live_nodes()
            .await
            .into_iter()
            .filter(|n| *n != self.node)
            .collect();
        if others.is_empty() {
            return all;
        }
        let mut pipe = redis::pipe();
        for n in &others {
            pipe.cmd("HVALS").arg(self.keys.sessions(n));
        }
        match pipe.query_async::<Vec<Vec<String>>>(&mut self.conn()).await {
            Ok(lists) => {
                for json in lists.into_iter().flatten() {
                    if let Ok(r) = serde_json::from_str::<SessionRecord>(&json) {
                        all.push(r.info());
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing the cluster's sessions failed; showing this node's");
            }
        }
        all.sort_by(|a, b| (a.login_time_ms, &a.session_id).cmp(&(b.login_time_ms, &b.session_id)));
        all
    }
}

#[async_trait]
impl SessionRegistry for RedisRegistry {
    fn register(&self, handle: Arc<SessionHandle>) {
        self.local.register(handle);
        self.dirty.notify_one();
    }

    fn unregister(&self, handle: &Arc<SessionHandle>) {
        self.local.unregister(handle);
        self.dirty.notify_one();
    }

    fn push(&self, user: &str, item: &Outbound) -> Pushed {
        let pushed = self.local.push(user, item);
        // Always published: a node that joined since the last heartbeat is not in `alive`
        // yet, and its users must get their frames live too (found by benches/cluster.sh:
        // up to a heartbeat's worth of frames reached a new node only by replay).
        {
            let e = Envelope {
                o: self.node.clone(),
                u: user.to_owned(),
                d: item.delivery_id,
                m: item.message.id.clone(),
                f: item.frame.as_str().to_owned(),
                a: None,
            };
            if self.publish.try_send(e).is_err() {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        pushed
    }

    /// Local sessions in one pass, and one envelope for the other nodes (not one per
    /// member): they fan out to their own sessions the same way.
    fn push_audience(
        &self,
        members: &[String],
        delivery_id: &(dyn Fn(usize) -> i64 + Send + Sync),
        message: &Arc<MessageView>,
        frame: &Utf8Bytes,
    ) -> Vec<bool> {
        let accepted = self
            .local
            .push_audience(members, delivery_id, message, frame);
        let base = delivery_id(0);
        let regular = (0..members.len()).all(|i| delivery_id(i) == base - i as i64);
        let e = Envelope {
            o: self.node.clone(),
            u: String::new(),
            d: base,
            m: message.id.clone(),
            f: frame.as_str().to_owned(),
            a: Some(AudienceEnvelope {
                r: members.to_vec(),
                ids: if regular {
                    Vec::new()
                } else {
                    (0..members.len()).map(delivery_id).collect()
                },
            }),
        };
        if self.publish.try_send(e).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        accepted
    }

    async fn online_users(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .all_sessions()
            .await
            .into_iter()
            .map(|s| s.user_id)
            .collect();
        users.sort();
        users.dedup();
        users
    }

    async fn is_online(&self, user: &str) -> bool {
        if self.local.is_online(user).await {
            return true;
        }
        let nodes: Vec<String> = match redis::cmd("HVALS")
            .arg(self.keys.user(user))
            .query_async(&mut self.conn())
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "presence lookup failed; treating the user as offline");
                return false;
            }
        };
        if nodes.is_empty() {
            return false;
        }
        let alive = self.live_nodes().await;
        nodes.iter().any(|n| alive.contains(n))
    }

    async fn list(&self) -> Vec<SessionInfo> {
        self.all_sessions().await
    }

    fn local_count(&self) -> usize {
        self.local.local_count()
    }

    fn for_each_local(&self, f: &mut dyn FnMut(&Arc<SessionHandle>)) {
        self.local.for_each_local(f);
    }

    fn is_shared(&self) -> bool {
        true
    }
}
