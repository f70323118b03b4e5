//! Cluster mode: three `herald serve` processes on different ports sharing one PostgreSQL
//! database and one Redis, as a deployment behind a load balancer would run them.
//!
//! Needs PostgreSQL (`HERALD_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and Redis (`HERALD_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`); compiled only with `--features service-tests` (`.ci/run` starts
//! both). An unreachable service fails the test; nothing is skipped.
#![cfg(feature = "service-tests")]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;

fn pg_admin_url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh database for one test: `postgres://…/herald_cluster_<random>`.
async fn fresh_database() -> String {
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} is required for cluster tests (service-tests): {e}")
        });
    let name = format!("herald_cluster_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

/// A local WeCom robot webhook: answers `{"errcode":0}`, except that it never answers the
/// first `stall` requests (their sender hangs until it dies or times out).
struct Robot {
    url: String,
    requests: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    bodies: Arc<std::sync::Mutex<Vec<Value>>>,
}

async fn robot(stall: usize) -> Robot {
    use axum::routing::post;
    let requests = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (r, a, b) = (requests.clone(), accepted.clone(), bodies.clone());
    let app = axum::Router::new().route(
        "/cgi-bin/webhook/send",
        post(move |body: axum::Json<Value>| {
            let (r, a, b) = (r.clone(), a.clone(), b.clone());
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst);
                if n < stall {
                    std::future::pending::<()>().await;
                }
                b.lock().unwrap().push(body.0);
                a.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({"errcode": 0, "errmsg": "ok"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    Robot {
        url,
        requests,
        accepted,
        bodies,
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    db: String,
    prefix: String,
    nodes: Vec<(String, HeraldProcess)>,
}

impl Cluster {
    async fn new(robot: Option<&Robot>) -> Cluster {
        Cluster::with_toml(robot, "").await
    }

    async fn with_toml(robot: Option<&Robot>, extra: &str) -> Cluster {
        Cluster::with(robot, extra, "200ms", "1500ms").await
    }

    async fn with(robot: Option<&Robot>, extra: &str, heartbeat: &str, ttl: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = String::from(extra);
        toml.push_str(&format!(
            "[cluster]\nheartbeat_interval = \"{heartbeat}\"\nnode_ttl = \"{ttl}\"\n\n"
        ));
        toml.push_str(
            "[dispatch]\nlease = \"4s\"\nsend_timeout = \"3s\"\npoll_interval = \"250ms\"\n",
        );
        if let Some(r) = robot {
            toml.push_str(&format!(
                "\n[channels.robot]\nkind = \"wechat.robot\"\nkey = \"test-key\"\nendpoint = \"{}\"\n",
                r.url
            ));
        }
        std::fs::write(dir.path().join("herald.toml"), toml).unwrap();
        Cluster {
            dir,
            db: fresh_database().await,
            prefix: format!("herald-test-{}", uuid::Uuid::now_v7().simple()),
            nodes: Vec::new(),
        }
    }

    async fn start(&mut self, name: &str) -> usize {
        let redis = redis_url();
        let env = [
            ("HERALD_API_KEY", PROC_API_KEY),
            ("HERALD_JWT_SECRET", PROC_JWT_SECRET),
            ("HERALD_DATABASE_URL", self.db.as_str()),
            ("HERALD_REDIS_URL", redis.as_str()),
            ("HERALD_NODE_NAME", name),
            ("HERALD_CLUSTER__PREFIX", self.prefix.as_str()),
        ];
        let p = spawn_process(self.dir.path(), free_port(), &env).await;
        self.nodes.push((name.to_owned(), p));
        self.nodes.len() - 1
    }

    fn node(&self, name: &str) -> &HeraldProcess {
        &self
            .nodes
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no node {name}"))
            .1
    }

    async fn get(&self, node: &str, path: &str) -> Value {
        let p = self.node(node);
        let resp = p
            .client
            .get(format!("{}{path}", p.base))
            .bearer_auth(PROC_API_KEY)
            .send()
            .await
            .expect("GET");
        let (status, body) = read_response(resp).await;
        assert_eq!(status, StatusCode::OK, "GET {path} on {node}: {body}");
        body
    }

    /// The (user, node) pairs `GET /api/v1/clients` shows on `node`.
    async fn sessions(&self, node: &str) -> BTreeSet<(String, String)> {
        self.get(node, "/api/v1/clients")
            .await
            .as_array()
            .expect("clients array")
            .iter()
            .map(|c| {
                (
                    c["userId"].as_str().unwrap().to_owned(),
                    c["node"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    async fn wait_sessions(&self, node: &str, want: &BTreeSet<(String, String)>) {
        let what = format!("{node} to list sessions {want:?}");
        wait_until(DEADLINE, &what, || async {
            &self.sessions(node).await == want
        })
        .await;
    }

    /// A user's `POST` (JSON body) or `GET` (no body) on `node`, with their token.
    async fn user(
        &self,
        node: &str,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let p = self.node(node);
        let url = format!("{}{path}", p.base);
        let req = match body {
            Some(b) => p.client.post(url).json(&b),
            None => p.client.get(url),
        };
        read_response(req.bearer_auth(token).send().await.expect("user request")).await
    }

    async fn send(&self, node: &str, body: Value) -> String {
        let (status, v) = self.node(node).send(&body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "send via {node}: {v}");
        v["id"].as_str().unwrap().to_owned()
    }

    async fn delivery(&self, node: &str, id: &str, receiver: &str, channel: &str) -> Value {
        let m = self.get(node, &format!("/api/v1/messages/{id}")).await;
        m["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["receiver"] == receiver && d["channel"] == channel)
            .cloned()
            .unwrap_or(Value::Null)
    }

    async fn wait_delivery(
        &self,
        node: &str,
        id: &str,
        receiver: &str,
        channel: &str,
        status: &str,
    ) {
        let what = format!("{receiver}'s {channel} delivery of {id} to be {status} (via {node})");
        wait_until(DEADLINE, &what, || async {
            self.delivery(node, id, receiver, channel).await["status"] == status
        })
        .await;
    }
}

fn pairs(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(u, n)| (u.to_string(), n.to_string()))
        .collect()
}

async fn login(node: &HeraldProcess, user: &str) -> WsClient {
    let mut ws = ws_connect_url(&node.ws_url(&proc_token(user))).await;
    ws.welcome().await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_as_one() {
    let mut c = Cluster::new(None).await;
    for n in ["a", "b", "c"] {
        c.start(n).await;
    }
    let mut ua = login(c.node("a"), "ua").await;
    let mut ub = login(c.node("b"), "ub").await;
    let mut uc = login(c.node("c"), "uc").await;
    let all = pairs(&[("ua", "a"), ("ub", "b"), ("uc", "c")]);
    for n in ["a", "b", "c"] {
        c.wait_sessions(n, &all).await;
    }

    // A send through A reaches the user connected to C; C's ack shows through B.
    let id = c
        .send(
            "a",
            json!({"title": "report ready", "content": "x", "receivers": ["uc"]}),
        )
        .await;
    let frame = uc.next_message().await;
    assert_eq!(frame["id"], id.as_str());
    uc.send_json(json!({"type": "ack", "id": id})).await;
    c.wait_delivery("b", &id, "uc", "websocket", "delivered")
        .await;

    // A broadcast through B reaches every node's users, once each.
    let (status, body) = c
        .node("b")
        .send(&json!({"title": "maintenance", "content": "tonight"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["deliveries"], 3,
        "every online user of the cluster: {body}"
    );
    let bid = body["id"].as_str().unwrap().to_owned();
    for ws in [&mut ua, &mut ub, &mut uc] {
        assert_eq!(ws.next_message().await["id"], bid.as_str());
        ws.send_json(json!({"type": "ack", "id": bid})).await;
    }
    for u in ["ua", "ub", "uc"] {
        c.wait_delivery("c", &bid, u, "websocket", "delivered")
            .await;
    }
    for ws in [&mut ua, &mut ub, &mut uc] {
        ws.expect_no_message(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_the_list_and_its_work_is_finished_elsewhere_once() {
    let hook = robot(1).await;
    let mut c = Cluster::new(Some(&hook)).await;
    for n in ["a", "b", "c"] {
        c.start(n).await;
    }
    // A provider delivery; whichever node claims it hangs on the vendor (first request).
    let rid = c
        .send("a", json!({"title": "disk full", "content": "x", "receivers": ["ops"], "channels": ["robot"]}))
        .await;
    wait_until(DEADLINE, "the vendor to see the first attempt", || async {
        hook.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut victim = None;
    for n in ["a", "b", "c"] {
        let channels = c.get(n, "/api/v1/channels").await;
        let robot = channels
            .as_array()
            .unwrap()
            .iter()
            .find(|ch| ch["name"] == "robot")
            .cloned()
            .unwrap();
        if robot["inFlight"] == 1 {
            victim = Some(n);
        }
    }
    let victim = victim.expect("one node holds the hanging send");
    let survivor = ["a", "b", "c"].into_iter().find(|n| *n != victim).unwrap();

    // A user on the victim receives a message and does not ack it.
    let mut u = login(c.node(victim), "u-victim").await;
    let _other = login(c.node(survivor), "u-survivor").await;
    let all = pairs(&[("u-victim", victim), ("u-survivor", survivor)]);
    c.wait_sessions(survivor, &all).await;
    let mid = c
        .send(
            survivor,
            json!({"title": "unacked", "content": "x", "receivers": ["u-victim"]}),
        )
        .await;
    assert_eq!(u.next_message().await["id"], mid.as_str());
    c.wait_delivery(survivor, &mid, "u-victim", "websocket", "sent")
        .await;

    // kill -9 the victim: its sessions leave the list within the heartbeat expiry.
    let i = c.nodes.iter().position(|(n, _)| n == victim).unwrap();
    c.nodes[i].1.kill9();
    drop(u);
    c.wait_sessions(survivor, &pairs(&[("u-survivor", survivor)]))
        .await;

    // Its user reconnects elsewhere and gets what it had not acked.
    let mut again = ws_connect_url(&c.node(survivor).ws_url(&proc_token("u-victim"))).await;
    let welcome = again.welcome().await;
    assert_eq!(welcome["pending"], 1, "{welcome}");
    assert_eq!(again.next_message().await["id"], mid.as_str());

    // The delivery it had leased is completed by another node, once.
    c.wait_delivery(survivor, &rid, "ops", "robot", "sent")
        .await;
    assert_eq!(
        hook.accepted.load(Ordering::SeqCst),
        1,
        "accepted once by the vendor"
    );
    assert_eq!(
        hook.requests.load(Ordering::SeqCst),
        2,
        "the hung attempt and one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_racing_for_a_scheduled_send_deliver_it_once() {
    let hook = robot(0).await;
    let mut c = Cluster::new(Some(&hook)).await;
    for n in ["a", "b", "c"] {
        c.start(n).await;
    }
    // The same user on two nodes: the release happens once and reaches both sessions.
    let mut on_a = login(c.node("a"), "sched").await;
    let mut on_c = login(c.node("c"), "sched").await;
    c.wait_sessions("b", &pairs(&[("sched", "a"), ("sched", "c")]))
        .await;
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let id = c
        .send(
            "b",
            json!({"title": "at two", "content": "x", "receivers": ["sched"],
                   "channels": ["websocket", "robot"], "sendAt": at}),
        )
        .await;
    assert_eq!(on_a.next_message().await["id"], id.as_str());
    assert_eq!(on_c.next_message().await["id"], id.as_str());
    c.wait_delivery("a", &id, "sched", "robot", "sent").await;
    on_a.expect_no_message(QUIET).await;
    on_c.expect_no_message(QUIET).await;
    assert_eq!(hook.accepted.load(Ordering::SeqCst), 1, "one node sent it");
    assert_eq!(hook.bodies.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_keys_send_limit_holds_for_the_whole_cluster() {
    let key = "reports-service-key-0123456789";
    let mut c = Cluster::with_toml(
        None,
        &format!(
            "[[api_keys]]\nname = \"reports\"\nkey = \"{key}\"\nscopes = [\"send\"]\nrate_limit = \"3/h\"\n\n"
        ),
    )
    .await;
    c.start("a").await;
    c.start("b").await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let node = c.node(if i % 2 == 0 { "a" } else { "b" });
        let resp = node
            .client
            .post(format!("{}/api/v1/messages", node.base))
            .bearer_auth(key)
            .json(&json!({"title": format!("t{i}"), "content": "c", "receivers": ["u"]}))
            .send()
            .await
            .unwrap();
        let retry_after = resp.headers().get("retry-after").cloned();
        statuses.push(resp.status().as_u16());
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
            assert!(secs >= 1, "Retry-After {secs}");
        }
    }
    assert_eq!(
        statuses,
        [202, 202, 202, 429, 429],
        "3 per hour across both nodes"
    );
    let listed = c.get("a", "/api/v1/messages?size=100").await;
    assert_eq!(listed["total"], 3, "nothing stored for a limited send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_rate_limit_holds_for_the_whole_cluster() {
    let hook = robot(0).await;
    let mut c = Cluster::new(Some(&hook)).await;
    // Every node works the robot's outbox; together they may send 2 per hour.
    std::fs::write(
        c.dir.path().join("herald.toml"),
        std::fs::read_to_string(c.dir.path().join("herald.toml")).unwrap()
            + "rate_limit = \"2/h\"\n",
    )
    .unwrap();
    for n in ["a", "b", "c"] {
        c.start(n).await;
    }
    let mut ids = Vec::new();
    for (i, n) in ["a", "b", "c", "a"].into_iter().enumerate() {
        ids.push(
            c.send(n, json!({"title": format!("r{i}"), "content": "x", "receivers": ["ops"], "channels": ["robot"]}))
                .await,
        );
    }
    wait_until(DEADLINE, "two sends to reach the vendor", || async {
        hook.accepted.load(Ordering::SeqCst) == 2
    })
    .await;
    // Several poll rounds of three nodes later, still two: the other two wait their turn.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.requests.load(Ordering::SeqCst), 2);
    let mut pending = 0;
    for id in &ids {
        if c.delivery("b", id, "ops", "robot").await["status"] == "pending" {
            pending += 1;
        }
    }
    assert_eq!(pending, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_just_joined_gets_live_frames_and_broadcasts_at_once() {
    // Heartbeats every 30 s: node A's periodic view of the cluster never includes B during
    // this test, so only the live lookups can get frames and broadcasts to B's users.
    let mut c = Cluster::with(None, "", "30s", "60s").await;
    c.start("a").await;
    c.start("b").await;
    let mut ub = login(c.node("b"), "ub").await;
    c.wait_sessions("a", &pairs(&[("ub", "b")])).await;
    let id = c
        .send(
            "a",
            json!({"title": "t", "content": "x", "receivers": ["ub"]}),
        )
        .await;
    assert_eq!(ub.next_message().await["id"], id.as_str());
    let (status, body) = c
        .node("a")
        .send(&json!({"title": "everyone", "content": "x"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 1, "B's user is online for A: {body}");
    assert_eq!(ub.next_message().await["id"], body["id"]);
}

/// The notification center across nodes: one user on two nodes; a change made through
/// either node (REST or a `read` frame) reaches both sessions with the same counts, and a
/// broadcast member's state is shared too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_states_and_counts_reach_the_users_sessions_on_every_node() {
    let mut c = Cluster::new(None).await;
    c.start("a").await;
    c.start("b").await;
    let m1 = c
        .send(
            "a",
            json!({"title": "one", "content": "x", "receivers": ["u"]}),
        )
        .await;
    let m2 = c
        .send(
            "b",
            json!({"title": "two", "content": "x", "receivers": ["u"]}),
        )
        .await;
    let token = proc_token("u");
    let mut on_a = ws_connect_url(&c.node("a").ws_url(&token)).await;
    let welcome = on_a.welcome().await;
    assert_eq!(
        welcome["counts"],
        json!({"unseen": 2, "unread": 2, "total": 2})
    );
    let mut on_b = ws_connect_url(&c.node("b").ws_url(&token)).await;
    on_b.welcome().await;
    c.wait_sessions("a", &pairs(&[("u", "a"), ("u", "b")]))
        .await;

    // REST through node A: both sessions hear it.
    let (status, body) = c
        .user(
            "a",
            &token,
            "/api/v1/inbox/read",
            Some(json!({"ids": [m1]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["counts"],
        json!({"unseen": 1, "unread": 1, "total": 2})
    );
    for ws in [&mut on_a, &mut on_b] {
        let state = ws.next_control().await;
        assert_eq!(
            state,
            json!({"type": "state", "ids": [m1], "seen": true, "read": true})
        );
        assert_eq!(
            ws.next_control().await,
            json!({"type": "counts", "unseen": 1, "unread": 1, "total": 2})
        );
    }
    // A `read` frame on node B: node A's session hears it.
    on_b.send_json(json!({"type": "read", "id": m2})).await;
    for ws in [&mut on_a, &mut on_b] {
        let state = ws.next_control().await;
        assert_eq!(state["ids"], json!([m2]));
        assert_eq!(ws.next_control().await["unread"], 0);
    }
    // A broadcast taken on node B reaches both; archiving it on A is seen by B.
    let (status, body) = c
        .node("b")
        .send(&json!({"title": "everyone", "content": "x"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let b = body["id"].as_str().unwrap().to_owned();
    assert_eq!(on_a.next_message().await["id"], b.as_str());
    assert_eq!(on_b.next_message().await["id"], b.as_str());
    let (status, body) = c
        .user(
            "a",
            &token,
            "/api/v1/inbox/archive",
            Some(json!({"ids": [b]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["counts"],
        json!({"unseen": 0, "unread": 0, "total": 2})
    );
    let state = on_b.next_control().await;
    assert_eq!(
        state,
        json!({"type": "state", "ids": [b], "archived": true})
    );
    let (_, body) = c.user("b", &token, "/api/v1/inbox/counts", None).await;
    assert_eq!(body, json!({"unseen": 0, "unread": 0, "total": 2}));
}

/// A minimal `text/event-stream` reader over reqwest (its reads have deadlines): the JSON
/// of each `data:` event, comments skipped.
struct EventStream {
    resp: reqwest::Response,
    buf: String,
}

impl EventStream {
    async fn open(node: &HeraldProcess, token: &str) -> EventStream {
        let resp = node
            .client
            .get(format!("{}/events?token={token}", node.base))
            .send()
            .await
            .expect("GET /events");
        assert_eq!(resp.status(), StatusCode::OK);
        EventStream {
            resp,
            buf: String::new(),
        }
    }

    async fn next_json(&mut self) -> Value {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if !data.is_empty() {
                    return serde_json::from_str(&data.join("\n")).expect("event JSON");
                }
                continue;
            }
            let chunk = tokio::time::timeout(DEADLINE, self.resp.chunk())
                .await
                .expect("an event within the deadline")
                .expect("the stream")
                .expect("the stream ended");
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }
}

/// SSE is cluster-aware like WebSocket: a stream on node B gets a message sent through node
/// A, and the state and counts of a change made through node A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_on_one_node_gets_messages_and_inbox_changes_from_another() {
    let mut c = Cluster::new(None).await;
    c.start("a").await;
    c.start("b").await;
    let token = proc_token("v");
    let mut events = EventStream::open(c.node("b"), &token).await;
    let welcome = events.next_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    c.wait_sessions("a", &pairs(&[("v", "b")])).await;
    let id = c
        .send(
            "a",
            json!({"title": "t", "content": "x", "receivers": ["v"]}),
        )
        .await;
    let message = events.next_json().await;
    assert_eq!(message["id"], id.as_str(), "{message}");
    let (status, body) = c
        .user(
            "a",
            &token,
            "/api/v1/inbox/read",
            Some(json!({"ids": [id]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        events.next_json().await,
        json!({"type": "state", "ids": [id], "seen": true, "read": true})
    );
    assert_eq!(
        events.next_json().await,
        json!({"type": "counts", "unseen": 0, "unread": 0, "total": 1})
    );
    c.wait_delivery("b", &id, "v", "websocket", "read").await;
}

/// Webhooks in a cluster: an endpoint created through one node gets the events of changes
/// made on every node (they share it through the database), each event once (claims on
/// PostgreSQL skip what another node holds), and a disable through another node stops it
/// everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_shared_by_every_node_and_each_event_is_sent_once() {
    use axum::routing::post;
    let hits: Arc<std::sync::Mutex<Vec<(String, Value)>>> = Arc::default();
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(
            move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
                let h = h.clone();
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    h.lock().unwrap().push((id, body.0));
                    StatusCode::NO_CONTENT
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });

    let mut c = Cluster::with_toml(
        None,
        "[dispatch.webhooks]\npoll_interval = \"200ms\"\nretry_base = \"100ms\"\n\n",
    )
    .await;
    c.start("a").await;
    c.start("b").await;
    let a = c.node("a");
    let resp = a
        .client
        .post(format!("{}/api/v1/webhooks", a.base))
        .bearer_auth(PROC_API_KEY)
        .json(&json!({"id": "shared", "url": url, "events": ["message.accepted"]}))
        .send()
        .await
        .expect("create");
    let (status, body) = read_response(resp).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Node b lists it too: one endpoint for the cluster.
    let listed = c.get("b", "/api/v1/webhooks").await;
    assert_eq!(listed[0]["id"], "shared", "{listed}");

    let mut ids = BTreeSet::new();
    for i in 0..20 {
        let node = if i % 2 == 0 { "a" } else { "b" };
        ids.insert(
            c.send(
                node,
                json!({"title": format!("m{i}"), "content": "c", "receivers": ["u"]}),
            )
            .await,
        );
    }
    let got = || -> BTreeSet<String> {
        hits.lock()
            .unwrap()
            .iter()
            .filter_map(|(_, b)| b["data"]["messageId"].as_str().map(str::to_owned))
            .collect()
    };
    wait_until(
        DEADLINE,
        "an event for every message, from both nodes",
        || {
            let done = got() == ids;
            async move { done }
        },
    )
    .await;
    let all = hits.lock().unwrap().clone();
    let distinct: BTreeSet<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        distinct.len(),
        all.len(),
        "an event delivered twice: {all:?}"
    );

    // Disabled through b: neither node writes events for it any more.
    let b = c.node("b");
    let resp = b
        .client
        .patch(format!("{}/api/v1/webhooks/shared", b.base))
        .bearer_auth(PROC_API_KEY)
        .json(&json!({"enabled": false, "disabledReason": "maintenance"}))
        .send()
        .await
        .expect("patch");
    let (status, body) = read_response(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    c.send(
        "a",
        json!({"title": "after", "content": "c", "receivers": ["u"]}),
    )
    .await;
    let ep = c.get("a", "/api/v1/webhooks/shared").await;
    assert_eq!(
        (ep["enabled"].as_bool(), ep["pending"].as_u64()),
        (Some(false), Some(0)),
        "{ep}"
    );
}
