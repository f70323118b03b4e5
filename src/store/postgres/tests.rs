//! `PgStore` against a real PostgreSQL (feature `service-tests`): the conformance suite, and
//! races between two stores on one database, as two nodes would run.
//!
//! The server is `HERALD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates its own database and
//! drops it at the end (also when it fails). An unreachable server fails the test.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use sqlx::{Connection, PgConnection};
use tokio::sync::Barrier;

use super::*;
use crate::model::{
    member_delivery_id, new_message_id, Idempotency, NewAudience, NewDelivery, Status,
};

fn admin_url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` with its database replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

async fn admin() -> PgConnection {
    let url = admin_url();
    PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is required for the service tests and is not reachable at {} \
             (set HERALD_TEST_POSTGRES_URL): {e}",
            crate::redact_url(&url)
        )
    })
}

/// A database of its own for one test, dropped when this guard is (even on a panic).
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn create() -> TestDb {
        let name = format!("herald_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = admin().await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        conn.close().await.ok();
        TestDb {
            url: with_database(&admin_url(), &name),
            name,
        }
    }

    /// A store for behaviour, not overload: sends may wait long for a connection (every
    /// insert is a transaction of its own, and bursts of 200 on a busy test machine take
    /// longer than the default `max_queue_wait`; `overload_is_refused…` tests that).
    async fn store(&self) -> Arc<PgStore> {
        self.store_with(DatabaseSettings {
            max_connections: 8,
            max_queue_wait: std::time::Duration::from_secs(10),
            ..DatabaseSettings::default()
        })
        .await
    }

    async fn store_with(&self, settings: DatabaseSettings) -> Arc<PgStore> {
        Arc::new(PgStore::open(&self.url, &settings).await.unwrap())
    }

    /// A connection of the test's own (as an operator's `psql`).
    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    /// How many of `ids` are stored, as another client sees it.
    async fn stored(&self, ids: &[String]) -> usize {
        let mut conn = self.connect().await;
        let n: i64 = sqlx::query("SELECT count(*) FROM messages WHERE id = ANY($1)")
            .bind(ids)
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        conn.close().await.ok();
        n as usize
    }
}

/// Run `sql` on the admin connection from a `Drop` (which runs inside the test's runtime:
/// the async work happens on a thread of its own). `true` when it succeeded.
fn admin_from_drop(sql: String) -> bool {
    let done = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for a test's clean-up");
        rt.block_on(async {
            let mut conn = admin().await;
            sqlx::query(&sql).execute(&mut conn).await
        })
    })
    .join();
    matches!(done, Ok(Ok(_)))
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let dropped = admin_from_drop(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
        if !dropped && !std::thread::panicking() {
            panic!("could not drop the test database {}", self.name);
        }
    }
}

fn outbox_msg(receivers: impl IntoIterator<Item = String>, channel: &str) -> NewMessage {
    NewMessage {
        id: new_message_id(),
        title: "t".into(),
        content: "c".into(),
        sender: "s".into(),
        created_at_ms: now_ms(),
        deliveries: receivers
            .into_iter()
            .map(|receiver| NewDelivery {
                receiver,
                channel: channel.into(),
                status: Status::Pending,
                error: None,
                address: None,
                outbox: true,
            })
            .collect(),
        ..Default::default()
    }
}

/// A fresh store on a database of its own (dropped when the test ends).
async fn fresh() -> (Arc<dyn Store>, TestDb) {
    let db = TestDb::create().await;
    let store: Arc<dyn Store> = db.store().await;
    (store, db)
}

crate::store::conformance::conformance_tests!(super::fresh);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_when_nodes_start_together() {
    let db = TestDb::create().await;
    let settings = DatabaseSettings::default();
    let (a, b, c) = tokio::join!(
        PgStore::open(&db.url, &settings),
        PgStore::open(&db.url, &settings),
        PgStore::migrate_only(&db.url),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    c.unwrap();
    a.ready().await.unwrap();
    b.ready().await.unwrap();
    let n: i64 = sqlx::query("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&a.pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    assert_eq!(n, MIGRATOR.iter().count() as i64);
    a.close().await;
    b.close().await;
}

/// Two stores ("nodes") with `per_node` claimers each claim 200 due outbox rows at once:
/// every row is claimed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_are_claimed_once_across_nodes() {
    let db = TestDb::create().await;
    let nodes = [db.store().await, db.store().await];
    let mut expected = BTreeSet::new();
    let mut ids = Vec::new();
    for batch in 0..4 {
        let m = outbox_msg((0..50).map(|i| format!("r{batch}-{i}")), "race");
        ids.push(m.id.clone());
        match nodes[0].insert_message(m).await.unwrap() {
            Inserted::New { delivery_ids, .. } => expected.extend(delivery_ids),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(expected.len(), 200);
    let per_node = 4;
    let barrier = Arc::new(Barrier::new(2 * per_node));
    let now = now_ms() + 1_000;
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..per_node {
            let (node, barrier) = (node.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut mine = Vec::new();
                loop {
                    let got = node
                        .claim_due("race", now, now + 3_600_000, 7, None)
                        .await
                        .unwrap()
                        .rows;
                    // Empty: every due row is taken or being taken (a locked row is skipped
                    // only because another claimer is taking it).
                    if got.is_empty() && node.count_due("race", now, 1).await.unwrap() == 0 {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|c| c.delivery_id));
                }
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "a row was claimed twice");
    assert_eq!(unique, expected, "every row is claimed");
    for id in &ids {
        let m = nodes[1].get_message(id).await.unwrap().unwrap();
        assert!(
            m.deliveries.iter().all(|d| d.attempts == 1),
            "one attempt each"
        );
    }
    for n in nodes {
        n.close().await;
    }
}

/// A due timer claimed by eight schedulers on two nodes at once has exactly one winner,
/// and only the winner's fenced write lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_timer_has_one_winner_across_nodes() {
    let db = TestDb::create().await;
    let nodes = [db.store().await, db.store().await];
    let presence = vec!["websocket".to_string()];
    for round in 0..10 {
        let now = now_ms();
        let mut m = outbox_msg([format!("t{round}")], "websocket");
        m.deliveries[0].outbox = false;
        m.send_at_ms = Some(now + 60_000);
        let Inserted::New { seq, .. } = nodes[round % 2].insert_message(m).await.unwrap() else {
            panic!("not inserted");
        };
        let barrier = Arc::new(Barrier::new(8));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (node, barrier) = (nodes[i % 2].clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                node.claim_timers(now + 60_000, now + 120_000 + i as i64, 10)
                    .await
                    .unwrap()
            }));
        }
        let mut won = Vec::new();
        for t in tasks {
            won.extend(t.await.unwrap());
        }
        assert_eq!(won.len(), 1, "round {round}: {won:?}");
        assert_eq!(won[0].message_seq, seq);
        let loser = Timer {
            lease_until_ms: won[0].lease_until_ms + 1,
            ..won[0].clone()
        };
        assert!(nodes[0]
            .release_held(&loser, &presence)
            .await
            .unwrap()
            .is_none());
        let released = nodes[1]
            .release_held(&won[0], &presence)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(released.len(), 1);
    }
    for n in nodes {
        n.close().await;
    }
}

/// The same Idempotency-Key sent through both nodes at once creates one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_creates_one_message_across_nodes() {
    let db = TestDb::create().await;
    let nodes = [db.store().await, db.store().await];
    for round in 0..20 {
        let key = format!("key-{round}");
        // Odd rounds: the racing requests differ (the losers get KeyConflict).
        let same_body = round % 2 == 0;
        let barrier = Arc::new(Barrier::new(4));
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (node, barrier) = (nodes[i % 2].clone(), barrier.clone());
            let mut m = outbox_msg([format!("idem-{round}")], "websocket");
            m.deliveries[0].outbox = false;
            m.idempotency = Some(Idempotency {
                key: key.clone(),
                request_hash: if same_body {
                    "h".into()
                } else {
                    format!("h{i}")
                },
            });
            let id = m.id.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                (id, node.insert_message(m).await.unwrap())
            }));
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let new: Vec<&String> = answers
            .iter()
            .filter(|(_, a)| matches!(a, Inserted::New { .. }))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(new.len(), 1, "round {round}: {answers:?}");
        for (_, a) in &answers {
            match a {
                Inserted::New { .. } => {}
                Inserted::Existing { id, deliveries } => {
                    assert!(same_body, "round {round}: {a:?}");
                    assert_eq!((id, *deliveries), (new[0], 1));
                }
                Inserted::KeyConflict => assert!(!same_body, "round {round}"),
            }
        }
        let filter = MessageFilter {
            receiver: Some(format!("idem-{round}")),
            ..Default::default()
        };
        let page = nodes[0]
            .list_messages(&filter, PageRequest { page: 1, size: 10 }, 1)
            .await
            .unwrap();
        assert_eq!(page.total, 1, "round {round}: one message stored");
        assert_eq!(&page.items[0].id, new[0]);
    }
    for n in nodes {
        n.close().await;
    }
}

/// A quota of 10 holds across two nodes claiming 40 due rows at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_holds_across_nodes() {
    let db = TestDb::create().await;
    let nodes = [db.store().await, db.store().await];
    let m = outbox_msg((0..40).map(|i| format!("q{i}")), "quota-race");
    nodes[0].insert_message(m).await.unwrap();
    let now = now_ms() + 1_000;
    let quota = Some(QuotaClaim {
        window_start_ms: now - 1_000,
        limit: 10,
    });
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (node, barrier) = (nodes[i % 2].clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut mine = Vec::new();
            loop {
                let r = node
                    .claim_due("quota-race", now, now + 3_600_000, 3, quota)
                    .await
                    .unwrap();
                if r.rows.is_empty() {
                    assert_eq!(r.quota_left, Some(0), "stops only when the quota is spent");
                    return mine;
                }
                mine.extend(r.rows.into_iter().map(|c| c.delivery_id));
            }
        }));
    }
    let mut all = HashSet::new();
    let mut n = 0;
    for t in tasks {
        let mine = t.await.unwrap();
        n += mine.len();
        all.extend(mine);
    }
    assert_eq!((n, all.len()), (10, 10), "exactly the quota, each row once");
    assert_eq!(
        nodes[1]
            .quota_used("quota-race", now - 1_000)
            .await
            .unwrap(),
        10
    );
    assert_eq!(
        nodes[0].count_due("quota-race", now, 100).await.unwrap(),
        30,
        "the rest stay due for the next window"
    );
    for n in nodes {
        n.close().await;
    }
}

/// Concurrent collects of one user's inbox on two nodes never return the same delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_takes_each_delivery_once_across_nodes() {
    let db = TestDb::create().await;
    let nodes = [db.store().await, db.store().await];
    for _ in 0..30 {
        let mut m = outbox_msg(["inbox-u".to_string()], "websocket");
        m.deliveries[0].outbox = false;
        nodes[0].insert_message(m).await.unwrap();
    }
    let barrier = Arc::new(Barrier::new(6));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (node, barrier) = (nodes[i % 2].clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut mine = Vec::new();
            loop {
                let got = node.collect("inbox-u", "websocket", 4).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|i| i.delivery_id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!((all.len(), unique.len()), (30, 30));
    for n in nodes {
        n.close().await;
    }
}

fn broadcast(members: &[String], now: i64) -> NewMessage {
    let mut m = outbox_msg([], "websocket");
    m.created_at_ms = now;
    m.audience = Some(NewAudience::new(
        "websocket",
        members.to_vec(),
        now,
        now + 60_000,
    ));
    m
}

/// Every task of `tasks` (spread over both nodes) applies `changes(task)` in batches of
/// 40, all at once; returns how many changes moved a status, per change key.
async fn race(
    nodes: &[Arc<PgStore>; 2],
    tasks: usize,
    changes: impl Fn(usize) -> Vec<(usize, StatusChange)>,
) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let barrier = Arc::new(Barrier::new(tasks));
    let mut handles = Vec::new();
    let mut keys = 0;
    for t in 0..tasks {
        let mut mine = changes(t);
        keys = keys.max(mine.iter().map(|(k, _)| k + 1).max().unwrap_or(0));
        mine.shuffle(&mut rand::rng());
        let (node, barrier) = (nodes[t % 2].clone(), barrier.clone());
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut moved = Vec::new();
            for batch in mine.chunks(40) {
                let (k, c): (Vec<usize>, Vec<StatusChange>) = batch.iter().cloned().unzip();
                let applied = node.apply_status(c).await.unwrap();
                moved.extend(
                    k.into_iter()
                        .zip(applied)
                        .filter(|(_, a)| *a)
                        .map(|(k, _)| k),
                );
            }
            moved
        }));
    }
    let mut per_key = vec![0; keys];
    for h in handles {
        for k in h.await.unwrap() {
            per_key[k] += 1;
        }
    }
    per_key
}

/// Two nodes apply `sent`, acks and reads for the members of two broadcasts at once, in
/// batches that touch both audiences in random order, while one node spills the second
/// broadcast: every change lands exactly once (one `true` per transition, attempts counted
/// once per hand-over), the counts are exact, and no batch deadlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_changes_land_once_across_nodes() {
    let db = TestDb::create().await;
    let nodes = [db.store().await, db.store().await];
    let people: Vec<String> = (0..200).map(|i| format!("m{i:03}")).collect();
    let now = now_ms();
    let mut msgs = Vec::new();
    for _ in 0..2 {
        let m = broadcast(&people, now);
        let id = m.id.clone();
        let Inserted::New { seq, .. } = nodes[0].insert_message(m).await.unwrap() else {
            panic!("not inserted");
        };
        msgs.push((id, seq));
    }
    let (tasks, n) = (8, people.len());
    let key = |b: usize, i: usize| b * n + i;

    // Every task hands every member over once (`sent` by member id).
    let sent = race(&nodes, tasks, |_| {
        let mut v = Vec::new();
        for (b, (_, seq)) in msgs.iter().enumerate() {
            for i in 0..n {
                let change = StatusChange::Delivery {
                    delivery_id: member_delivery_id(*seq, i),
                    status: Status::Sent,
                    error: None,
                    count_attempt: true,
                };
                v.push((key(b, i), change));
            }
        }
        v
    })
    .await;
    assert!(
        sent.iter().all(|&k| k == 1),
        "one pending → sent each: {sent:?}"
    );

    // Every task acks every member; the second broadcast is spilled meanwhile.
    let spill = {
        let (node, seq) = (nodes[1].clone(), msgs[1].1);
        tokio::spawn(async move {
            let t = node
                .claim_timers(now + 60_000, now + 70_000, 100)
                .await
                .unwrap();
            let t = t.into_iter().find(|t| t.message_seq == seq).unwrap();
            node.spill_audience(&t, now + 60_000)
                .await
                .unwrap()
                .unwrap()
        })
    };
    let ack = |id: &str, who: &str, status| StatusChange::Receiver {
        message_id: id.into(),
        receiver: who.into(),
        channel: "websocket".into(),
        status,
    };
    let delivered = race(&nodes, tasks, |_| {
        let mut v = Vec::new();
        for (b, (id, _)) in msgs.iter().enumerate() {
            for (i, who) in people.iter().enumerate() {
                v.push((key(b, i), ack(id, who, Status::Delivered)));
            }
        }
        v
    })
    .await;
    assert!(delivered.iter().all(|&k| k == 1), "{delivered:?}");
    assert!(spill.await.unwrap() <= n as u64);
    // Even members read it.
    let read = race(&nodes, tasks, |_| {
        let mut v = Vec::new();
        for (b, (id, _)) in msgs.iter().enumerate() {
            for (i, who) in people.iter().enumerate().step_by(2) {
                v.push((key(b, i), ack(id, who, Status::Read)));
            }
        }
        v
    })
    .await;
    for (k, &moved) in read.iter().enumerate() {
        assert_eq!(moved, usize::from(k % n % 2 == 0), "key {k}");
    }

    for (id, _) in &msgs {
        let m = nodes[0].get_message(id).await.unwrap().unwrap();
        assert_eq!(
            m.delivery_counts,
            [0, 0, n as i64 / 2, n as i64 / 2, 0],
            "{id}"
        );
        assert_eq!(
            m.deliveries.len(),
            n,
            "each member once, as a member or a row"
        );
        for d in &m.deliveries {
            assert_eq!(d.attempts, tasks as i64, "{d:?}");
        }
    }
    for who in ["m000", "m001", "m199"] {
        assert!(nodes[1]
            .undelivered(who, "websocket", 0, 10)
            .await
            .unwrap()
            .is_empty());
    }
    // The spilled members' rows were read as they were counted.
    assert_counts_match_recount(&db).await;
    for n in nodes {
        n.close().await;
    }
}

/// The inbox listing the API's `status=all` asks for, first page.
fn all_entries() -> inbox_model::Query {
    inbox_model::Query {
        show: inbox_model::Show::All,
        archived: Some(false),
        msg_type: None,
        before: None,
        after: None,
        offset: 0,
        limit: 10,
    }
}

/// Every receiver's `inbox_counts` row equals a plain count over its delivery rows (a
/// receiver without rows may keep a row of zeros).
async fn assert_counts_match_recount(db: &TestDb) {
    let mut conn = db.connect().await;
    let wrong: Vec<(String, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "WITH r AS ( \
           SELECT receiver, count(*) AS total, count(*) FILTER (WHERE (inbox & 1) = 0) AS unseen, \
                  count(*) FILTER (WHERE (inbox & 2) = 0) AS unread \
             FROM deliveries \
            WHERE channel = 'websocket' AND next_attempt_at IS NULL AND status <> 4 \
              AND (inbox & 12) = 0 \
            GROUP BY receiver) \
         SELECT COALESCE(c.receiver, r.receiver), \
                COALESCE(c.total, 0), COALESCE(c.unseen, 0), COALESCE(c.unread, 0), \
                COALESCE(r.total, 0), COALESCE(r.unseen, 0), COALESCE(r.unread, 0) \
           FROM inbox_counts c FULL JOIN r ON r.receiver = c.receiver \
          WHERE (COALESCE(c.total, 0), COALESCE(c.unseen, 0), COALESCE(c.unread, 0)) \
                IS DISTINCT FROM (COALESCE(r.total, 0), COALESCE(r.unseen, 0), COALESCE(r.unread, 0))",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
    assert!(
        wrong.is_empty(),
        "counters (total, unseen, unread) against a recount: {wrong:?}"
    );
}

/// A session recorded through one node indexes the broadcasts another node takes: the
/// record is committed before `presence_open` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_on_one_node_finds_broadcasts_of_another() {
    let db = TestDb::create().await;
    let nodes = [db.store().await, db.store().await];
    let now = now_ms();
    nodes[0]
        .presence_open("s-1", "hist-u", "node-a", now - 1_000)
        .await
        .unwrap();
    let m = broadcast(&["hist-u".to_string(), "other".to_string()], now);
    let id = m.id.clone();
    nodes[1].insert_message(m).await.unwrap();
    nodes[1]
        .apply_status(vec![StatusChange::Receiver {
            message_id: id.clone(),
            receiver: "hist-u".into(),
            channel: "websocket".into(),
            status: Status::Delivered,
        }])
        .await
        .unwrap();
    // Delivered, so only the history index (not the open audiences) can find it.
    let all = nodes[1]
        .inbox_entries("hist-u", &all_entries())
        .await
        .unwrap();
    assert_eq!(all.total, 1);
    assert_eq!(all.items[0].id, id);
    assert_eq!(all.items[0].status, Status::Delivered);
    let filter = MessageFilter {
        receiver: Some("hist-u".into()),
        ..Default::default()
    };
    let listed = nodes[0]
        .list_messages(&filter, PageRequest { page: 1, size: 10 }, 10)
        .await
        .unwrap();
    assert_eq!(listed.total, 1);
    // A node found dead: the sessions it left open are closed, once.
    assert_eq!(
        nodes[1].presence_close_node("node-a", now).await.unwrap(),
        1
    );
    assert_eq!(
        nodes[0].presence_close_node("node-a", now).await.unwrap(),
        0
    );
    let all = nodes[0]
        .inbox_entries("hist-u", &all_entries())
        .await
        .unwrap();
    assert_eq!(all.total, 1, "taken while the session was open");
    for n in nodes {
        n.close().await;
    }
}

/// Two nodes change one receiver's inbox at once, 50 rounds: mark-all read (or unread)
/// against an archive (or unarchive) of one entry, a broadcast member's among them, and a
/// `read` receipt through the status writer. Both take the receiver's counter before its
/// rows, so none waits for another in a cycle (PostgreSQL would fail one with `40P01`),
/// and the counters equal a recount afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_marks_of_one_receiver_neither_deadlock_nor_miscount() {
    use inbox_model::{Marked, Op, Target};
    let db = TestDb::create().await;
    let nodes = [db.store().await, db.store().await];
    let who = "mk-u";
    let people = [who.to_string(), "mk-other".to_string()];
    nodes[0]
        .presence_open("mk-s", who, "node-a", now_ms() - 1_000)
        .await
        .unwrap();
    let mut archived: Option<String> = None;
    for round in 0..50 {
        // New entries each round: two rows and a broadcast member.
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut m = outbox_msg(people.clone(), "websocket");
            for d in &mut m.deliveries {
                d.outbox = false;
            }
            ids.push(m.id.clone());
            nodes[0].insert_message(m).await.unwrap();
        }
        let b = broadcast(&people, now_ms());
        ids.push(b.id.clone());
        nodes[1].insert_message(b).await.unwrap();

        let all_op = if round % 2 == 0 { Op::Read } else { Op::Unread };
        let (one_op, one) = match archived.take() {
            Some(id) => (Op::Unarchive, id),
            None => {
                let id = ids[round % ids.len()].clone();
                archived = Some(id.clone());
                (Op::Archive, id)
            }
        };
        let receipt = ids[(round + 1) % ids.len()].clone();
        let barrier = Arc::new(Barrier::new(3));
        let all = {
            let (node, barrier) = (nodes[0].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                node.inbox_mark(who, all_op, Target::All { before: None })
                    .await
            })
        };
        let single = {
            let (node, barrier) = (nodes[1].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                node.inbox_mark(who, one_op, Target::Ids(vec![one])).await
            })
        };
        let read = {
            let (node, barrier) = (nodes[round % 2].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                node.apply_status(vec![StatusChange::Receiver {
                    message_id: receipt,
                    receiver: who.into(),
                    channel: "websocket".into(),
                    status: Status::Read,
                }])
                .await
            })
        };
        let (all, single, read) = (
            all.await.unwrap(),
            single.await.unwrap(),
            read.await.unwrap(),
        );
        assert!(
            matches!(all, Ok(Marked::Done { .. })),
            "round {round}: {all:?}"
        );
        assert!(
            matches!(single, Ok(Marked::Done { .. })),
            "round {round}: {single:?}"
        );
        assert_eq!(read.map(|r| r.len()).ok(), Some(1), "round {round}");
    }
    assert_counts_match_recount(&db).await;
    // The store's count (counters plus broadcast members without rows) agrees with its
    // listing (rows and members).
    for who in people {
        let counts = nodes[0].inbox_counts(&who).await.unwrap();
        let listed = nodes[1].inbox_entries(&who, &all_entries()).await.unwrap();
        assert_eq!(counts.total, listed.total as u64, "{who}");
    }
    for n in nodes {
        n.close().await;
    }
}

/// A message whose content does not compress (it must take its room on disk).
fn bulky(bytes: usize) -> NewMessage {
    use rand::distr::{Alphanumeric, SampleString};
    let mut m = outbox_msg(["bulky-u".to_string()], "websocket");
    m.deliveries[0].outbox = false;
    m.content = Alphanumeric.sample_string(&mut rand::rng(), bytes);
    m
}

/// Poll until a send is accepted again (the store recovers by itself), within `secs`.
async fn until_accepting(store: &PgStore, secs: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let m = bulky(100);
        let id = m.id.clone();
        match store.insert_message(m).await {
            Ok(Inserted::New { .. }) => return id,
            Err(StoreError::Unavailable(_)) | Err(StoreError::Overloaded(_)) => {}
            other => panic!("unexpected answer while recovering: {other:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every backend of the test database is killed (`pg_terminate_backend`, as an operator or
/// a failover would) while 16 tasks insert: every `Ok` is stored, every error is
/// `Unavailable`, and the store recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backends_fail_writes_as_unavailable_and_the_store_recovers() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..16 {
        let (store, tx) = (store.clone(), tx.clone());
        tokio::spawn(async move {
            for _ in 0..30 {
                let m = bulky(200);
                let id = m.id.clone();
                if tx.send((id, store.insert_message(m).await)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut killer = db.connect().await;
    let (mut accepted, mut refused, mut kills) = (Vec::new(), 0, 0);
    let mut since_kill = 0;
    while let Some((id, answer)) = rx.recv().await {
        match answer {
            Ok(Inserted::New { .. }) => accepted.push(id),
            Err(StoreError::Unavailable(why)) => {
                assert!(
                    why == "the database server ended the connection" || why == "connection lost",
                    "{why}"
                );
                refused += 1;
            }
            other => panic!("unexpected answer: {other:?}"),
        }
        since_kill += 1;
        // Kill every connection of the store 40 answers after the last kill (while the
        // others run); when none is connected yet, try again at the next answer. A kill
        // counts only when it found backends; how many fit in the 480 answers depends on
        // how fast refusals come, so at least 3 are required, not a fixed number.
        if kills < 6 && since_kill >= 40 {
            let n: i64 = sqlx::query(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut killer)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
            if n > 0 {
                kills += 1;
                since_kill = 0;
            }
        }
    }
    assert!(
        kills >= 3 && refused > 0,
        "kills {kills}, refused {refused}"
    );
    assert_eq!(db.stored(&accepted).await, accepted.len(), "an Ok was lost");
    let after = until_accepting(&store, 20).await;
    assert!(store.get_message(&after).await.unwrap().is_some());
    store.ready().await.unwrap();
    store.close().await;
}

/// A statement timeout (here: an insert waiting on a lock held elsewhere) answers
/// `Unavailable("statement timeout")`, stores nothing, and sends work again once the lock
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_is_unavailable_and_passes() {
    let db = TestDb::create().await;
    let mut admin = db.connect().await;
    sqlx::query(&format!(
        "ALTER DATABASE {} SET statement_timeout = '300ms'",
        db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let store = db.store().await;
    let first = bulky(100);
    store.insert_message(first).await.unwrap();
    let mut blocker = db.connect().await;
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE messages IN SHARE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let m = bulky(100);
    let id = m.id.clone();
    match store.insert_message(m).await {
        Err(StoreError::Unavailable(why)) => assert_eq!(why, "statement timeout"),
        other => panic!("expected a statement timeout: {other:?}"),
    }
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    assert_eq!(
        db.stored(&[id]).await,
        0,
        "a timed-out insert stored nothing"
    );
    until_accepting(&store, 20).await;
    store.ready().await.unwrap();
    store.close().await;
}

/// Admission control: while inserts cannot finish (a lock held elsewhere), sends beyond
/// what may run and wait are refused with `Overloaded` (at once, or after
/// `max_queue_wait`) instead of queueing on the pool; nothing refused is stored, everything
/// accepted is, and the store is healthy afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_and_nothing_accepted_is_lost() {
    let db = TestDb::create().await;
    let store = db
        .store_with(DatabaseSettings {
            max_connections: 4, // 3 inserts at once
            max_batch: 4,       // 16 admitted
            max_queue_wait: std::time::Duration::from_millis(50),
            ..DatabaseSettings::default()
        })
        .await;
    let mut blocker = db.connect().await;
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE messages IN SHARE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut all = Vec::new();
    for _ in 0..64 {
        let (store, tx) = (store.clone(), tx.clone());
        let m = bulky(100);
        all.push(m.id.clone());
        tokio::spawn(async move {
            let id = m.id.clone();
            let _ = tx.send((id, store.insert_message(m).await));
        });
    }
    drop(tx);
    let (mut ok, mut refused) = (Vec::new(), 0);
    // Everything but the running inserts is answered while the lock is held.
    while refused < 64 - 3 {
        match rx.recv().await {
            Some((_, Err(StoreError::Overloaded(_)))) => refused += 1,
            other => panic!("unexpected while blocked: {other:?}"),
        }
    }
    assert_eq!(store.queued_writes(), 3, "the running ones");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    while let Some((id, answer)) = rx.recv().await {
        match answer {
            Ok(Inserted::New { .. }) => ok.push(id),
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(ok.len(), 3);
    assert_eq!(db.stored(&ok).await, 3);
    assert_eq!(db.stored(&all).await, 3, "a refused send was stored");
    assert_eq!(store.queued_writes(), 0);
    until_accepting(&store, 10).await;
    store.close().await;
}

/// A tablespace on a tmpfs, mounted for one test and removed afterwards (also when the test
/// fails): Herald's tables are created in it (`default_tablespace`), so it fills up as
/// a disk would. (The database's catalogs, a copy of `template1`, stay where they are:
/// they would not fit.)
struct SmallDisk {
    dir: std::path::PathBuf,
    tablespace: String,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let name = format!("herald_ts_{}", uuid::Uuid::now_v7().simple());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir(&dir).unwrap();
        let disk = SmallDisk {
            dir,
            tablespace: name,
        };
        disk.run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
        );
        disk.run("chown", &["postgres:postgres"]);
        disk
    }

    /// `program args… DIR`, which must succeed.
    fn run(&self, program: &str, args: &[&str]) {
        let status = std::process::Command::new(program)
            .args(args)
            .arg(&self.dir)
            .status()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            status.success(),
            "{program} {args:?} {}: {status} (the disk-full test runs as root)",
            self.dir.display()
        );
    }

    fn resize(&self, size: &str) {
        self.run("mount", &["-o", &format!("remount,size={size}")]);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let dropped = admin_from_drop(format!("DROP TABLESPACE IF EXISTS {}", self.tablespace));
        let unmounted = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success())
            || std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
        let removed = std::fs::remove_dir(&self.dir).is_ok();
        if !std::thread::panicking() {
            assert!(dropped, "DROP TABLESPACE {} failed", self.tablespace);
            assert!(unmounted && removed, "{} left behind", self.dir.display());
        }
    }
}

/// The disk holding Herald's tables fills up: inserts get `Unavailable("disk full")`,
/// `ready()` says why, every `Ok` is stored, and once there is room again (the tmpfs grows)
/// sends are accepted by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_inserts_and_recovers_by_itself() {
    let disk = SmallDisk::mount("4m");
    let db = TestDb::create().await; // dropped before `disk`
    let mut admin_conn = admin().await;
    for sql in [
        format!(
            "CREATE TABLESPACE {} LOCATION '{}'",
            disk.tablespace,
            disk.dir.display()
        ),
        format!(
            "ALTER DATABASE {} SET default_tablespace = '{}'",
            db.name, disk.tablespace
        ),
    ] {
        sqlx::query(&sql).execute(&mut admin_conn).await.unwrap();
    }
    admin_conn.close().await.ok();
    let store = db.store().await;
    let (mut accepted, mut refused) = (Vec::new(), 0);
    // Four writers at a time until 40 sends were refused.
    for round in 0.. {
        assert!(round < 400, "the disk never filled up");
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                let m = bulky(24 << 10);
                let id = m.id.clone();
                tokio::spawn(async move { (id, store.insert_message(m).await) })
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                (id, Ok(Inserted::New { .. })) => accepted.push(id),
                (_, Err(StoreError::Unavailable(why))) => {
                    assert_eq!(why, "disk full");
                    refused += 1;
                }
                (_, other) => panic!("unexpected answer: {other:?}"),
            }
        }
        if refused >= 40 {
            break;
        }
    }
    assert!(accepted.len() > 10, "accepted {}", accepted.len());
    match store.ready().await {
        Err(StoreError::Unavailable(why)) => assert_eq!(why, "disk full"),
        other => panic!("ready while full: {other:?}"),
    }
    assert_eq!(db.stored(&accepted).await, accepted.len(), "an Ok was lost");
    for id in accepted.iter().rev().take(3) {
        assert!(store.get_message(id).await.unwrap().is_some());
    }

    disk.resize("64m");
    let after = until_accepting(&store, 30).await;
    store.ready().await.unwrap();
    assert!(store.get_message(&after).await.unwrap().is_some());
    store.close().await;
}

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgresql://h:5432", "x"),
        "postgresql://h:5432/x"
    );
}

// ---------------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------------

fn hook(id: &str, events: &[&str]) -> Endpoint {
    use crate::model::webhook::{EventType, Source};
    Endpoint {
        id: id.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        description: String::new(),
        events: EventType::bits_of(events).unwrap(),
        channels: None,
        types: None,
        senders: None,
        secret: crate::config::Secret::new(format!("whsec_{id}")),
        old_secret: None,
        old_until_ms: None,
        enabled: true,
        disabled_reason: None,
        failing_since_ms: None,
        source: Source::Api,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

/// A finished attempt of `c`.
fn hook_attempt(c: &Claimed, outcome: crate::model::webhook::Outcome) -> Attempt {
    let ok = outcome == crate::model::webhook::Outcome::Delivered;
    Attempt {
        row: c.row,
        endpoint_id: c.endpoint_id.clone(),
        lease_until_ms: c.lease_until_ms,
        at_ms: now_ms(),
        latency_ms: 1,
        code: Some(if ok { 200 } else { 503 }),
        response: None,
        error: (!ok).then(|| "HTTP 503".into()),
        outcome,
    }
}

/// Every event of `endpoints`, drained through claims (each delivered at once), by
/// endpoint and message id (`""`: events of no message) in the order they were claimed:
/// within a message, the order the events were written.
async fn drain_events(
    s: &dyn Store,
    endpoints: &[&str],
) -> std::collections::BTreeMap<(String, String), Vec<(String, serde_json::Value)>> {
    let mut out = std::collections::BTreeMap::new();
    loop {
        let now = now_ms();
        let wants = endpoints.iter().map(|e| (e.to_string(), 100)).collect();
        let claimed = s.webhook_claim(now, now + 30_000, wants).await.unwrap();
        if claimed.is_empty() {
            return out;
        }
        let mut done = Vec::new();
        for c in &claimed {
            let data: serde_json::Value = serde_json::from_str(&c.data).unwrap();
            let message = data["messageId"].as_str().unwrap_or_default().to_owned();
            out.entry((c.endpoint_id.clone(), message))
                .or_insert_with(Vec::new)
                .push((c.kind.clone(), data));
            done.push(hook_attempt(c, crate::model::webhook::Outcome::Delivered));
        }
        s.webhook_complete(done, 0).await.unwrap();
    }
}

/// The same changes on a SQLite store and on this one, `now` fixed: the same events for
/// each endpoint (type, payload key for key and value, order within a message). Covers
/// what the conformance suite does not: filters by channel, type and sender, a broadcast
/// member moving twice in one batch, members failed by `expiresAt`, and a chain exhausted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_events_match_sqlite() {
    use crate::routing::{LogEntry, Policy, PolicyKind, Progress, RouteState, Step};
    let db = TestDb::create().await;
    let pg: Arc<dyn Store> = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let lite: Arc<dyn Store> = Arc::new(
        crate::store::sqlite::SqliteStore::open(&url, &DatabaseSettings::default())
            .await
            .unwrap(),
    );
    let now = now_ms();
    let endpoints = ["all", "picky", "sms", "typed"];
    let script = |s: Arc<dyn Store>| async move {
        let s = s.as_ref();
        let message = |id: &str, msg_type: i64, to: &[(&str, &str, Status)]| NewMessage {
            id: id.into(),
            title: "t".into(),
            content: "c".into(),
            msg_type,
            sender: "lab".into(),
            created_at_ms: now,
            deliveries: to
                .iter()
                .map(|(receiver, channel, status)| NewDelivery {
                    receiver: receiver.to_string(),
                    channel: channel.to_string(),
                    status: *status,
                    error: (*status == Status::Failed).then(|| "no_address".into()),
                    address: None,
                    outbox: false,
                })
                .collect(),
            ..Default::default()
        };
        let ack = |id: &str, receiver: &str, status| StatusChange::Receiver {
            message_id: id.into(),
            receiver: receiver.into(),
            channel: "websocket".into(),
            status,
        };
        let new_seq = |i: Inserted| match i {
            Inserted::New { seq, .. } => seq,
            other => panic!("not inserted: {other:?}"),
        };
        // Nobody listens yet: a broadcast member's move writes nothing.
        for r in ["b1", "b2", "b3"] {
            s.presence_open(&format!("session-{r}"), r, "node-a", now - 1_000)
                .await
                .unwrap();
        }
        let mut quiet = message("wh-quiet", 1, &[]);
        quiet.audience = Some(NewAudience::new(
            "websocket",
            vec!["b1".into()],
            now,
            now + 60_000,
        ));
        s.insert_message(quiet).await.unwrap();
        s.apply_status(vec![ack("wh-quiet", "b1", Status::Read)])
            .await
            .unwrap();
        assert!(s.webhook_backlog().await.unwrap().is_empty());

        s.webhook_create(hook("all", &["*"])).await.unwrap();
        let mut picky = hook("picky", &["*"]);
        picky.senders = Some(vec!["nobody".into()]);
        s.webhook_create(picky).await.unwrap();
        let mut sms = hook("sms", &["delivery.failed"]);
        sms.channels = Some(vec!["sms".into()]);
        sms.types = Some(vec![1]);
        sms.senders = Some(vec!["lab".into()]);
        s.webhook_create(sms).await.unwrap();
        let mut typed = hook("typed", &["message.accepted", "delivery.failed"]);
        typed.types = Some(vec![2, 3]);
        s.webhook_create(typed).await.unwrap();

        // Rows: born failed, moved step by step; a message of another type.
        let mut m1 = message(
            "wh-m1",
            1,
            &[
                ("u1", "websocket", Status::Pending),
                ("u2", "sms", Status::Failed),
            ],
        );
        m1.template = Some("welcome".into());
        m1.expires_at_ms = Some(now + 3_600_000);
        s.insert_message(m1).await.unwrap();
        for st in [Status::Sent, Status::Delivered, Status::Read] {
            s.apply_status(vec![ack("wh-m1", "u1", st)]).await.unwrap();
        }
        s.insert_message(message("wh-m2", 2, &[("u4", "websocket", Status::Pending)]))
            .await
            .unwrap();
        s.apply_status(vec![ack("wh-m2", "u4", Status::Failed)])
            .await
            .unwrap();

        // A broadcast: b1 sent and delivered in one batch, b2 read, b3 sent and expired.
        let mut m3 = message("wh-m3", 1, &[]);
        m3.audience = Some(NewAudience::new(
            "websocket",
            vec!["b1".into(), "b2".into(), "b3".into()],
            now,
            now + 60_000,
        ));
        m3.expires_at_ms = Some(now + 120_000);
        let seq3 = new_seq(s.insert_message(m3).await.unwrap());
        let sent = |i| StatusChange::Delivery {
            delivery_id: member_delivery_id(seq3, i),
            status: Status::Sent,
            error: None,
            count_attempt: true,
        };
        s.apply_status(vec![sent(0), ack("wh-m3", "b1", Status::Delivered)])
            .await
            .unwrap();
        s.apply_status(vec![ack("wh-m3", "b2", Status::Read), sent(2)])
            .await
            .unwrap();
        let timers = s
            .claim_timers(now + 120_000, now + 130_000, 1000)
            .await
            .unwrap();
        let expire = timers
            .iter()
            .find(|t| t.message_seq == seq3 && t.kind == crate::model::TimerKind::Expire)
            .unwrap();
        s.expire_message(expire, &["websocket".to_string()], now + 120_000)
            .await
            .unwrap()
            .unwrap();

        // A chain: starts an sms delivery, then is exhausted (the delivery superseded).
        let mut m4 = message("wh-m4", 1, &[]);
        m4.routing = Some(Policy {
            policy: PolicyKind::Failover,
            steps: vec![Step {
                channel: "sms".into(),
                wait_ms: Some(1_000),
            }],
        });
        m4.routes = vec!["r1".into()];
        let seq4 = new_seq(s.insert_message(m4).await.unwrap());
        let route = |at: i64| async move {
            s.claim_timers(at, at + 5_000, 1000)
                .await
                .unwrap()
                .into_iter()
                .find(|t| t.message_seq == seq4)
                .unwrap()
        };
        let entry = |event: &str| LogEntry {
            at: crate::model::rfc3339(now),
            step: Some(0),
            channel: Some("sms".into()),
            event: event.into(),
            reason: "r".into(),
        };
        let t = route(now).await;
        let advance = |t: &Timer, state, log| RouteAdvance {
            timer_id: t.id,
            lease_until_ms: t.lease_until_ms,
            message_seq: seq4,
            receiver: "r1".into(),
            state,
            progress: Progress {
                step: Some(0),
                started_at_ms: Some(now),
            },
            due_at_ms: Some(now + 1_000),
            log,
            start: Vec::new(),
            supersede: Vec::new(),
            now_ms: now,
        };
        let mut first = advance(&t, RouteState::Running, vec![entry("started")]);
        first.start = vec![NewDelivery {
            receiver: "r1".into(),
            channel: "sms".into(),
            status: Status::Pending,
            error: None,
            address: None,
            outbox: true,
        }];
        let started = s.advance_route(first).await.unwrap().unwrap();
        let t = route(now + 1_000).await;
        let mut last = advance(&t, RouteState::Exhausted, vec![entry("exhausted")]);
        last.due_at_ms = None;
        last.supersede = vec![(started[0], "superseded".into())];
        s.advance_route(last).await.unwrap().unwrap();

        // A device the provider no longer knows.
        let dev = s
            .register_device(NewDevice {
                user_id: "u1".into(),
                platform: "fcm".into(),
                token: "tok".into(),
                name: None,
            })
            .await
            .unwrap()
            .device
            .id;
        s.deactivate_devices(vec![(dev, "unregistered".into())])
            .await
            .unwrap();
        drain_events(s, &endpoints).await
    };
    let on_pg = script(pg.clone()).await;
    let on_lite = script(lite.clone()).await;
    assert_eq!(on_pg, on_lite);

    // And what that is (so the comparison is not of two empty maps).
    let kinds = |endpoint: &str, message: &str| -> Vec<String> {
        on_pg
            .get(&(endpoint.to_string(), message.to_string()))
            .map(|v| v.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        kinds("all", "wh-m1"),
        [
            "message.accepted",
            "delivery.failed",
            "delivery.sent",
            "delivery.delivered",
            "delivery.read"
        ]
    );
    // Claimed in rounds: each delivery's next event once its previous one is out, so two
    // members' events interleave (each member's stay in order).
    assert_eq!(
        kinds("all", "wh-m3"),
        [
            "message.accepted",
            "delivery.sent",
            "delivery.read",
            "delivery.sent",
            "delivery.delivered",
            "delivery.failed"
        ]
    );
    assert_eq!(
        kinds("all", "wh-m4"),
        ["message.accepted", "delivery.failed", "route.exhausted"]
    );
    assert_eq!(kinds("all", ""), ["device.deactivated"]);
    assert_eq!(kinds("sms", "wh-m1"), ["delivery.failed"]);
    assert_eq!(kinds("sms", "wh-m4"), ["delivery.failed"]);
    assert_eq!(
        kinds("typed", "wh-m2"),
        ["message.accepted", "delivery.failed"]
    );
    let picky: Vec<&(String, String)> = on_pg.keys().filter(|(e, _)| e == "picky").collect();
    assert_eq!(
        picky,
        [&("picky".to_string(), String::new())],
        "device events only"
    );
    assert!(!on_pg.keys().any(|(_, m)| m == "wh-quiet"));
    let seq3 = pg.get_message("wh-m3").await.unwrap().unwrap().seq;
    let failed = &on_pg[&("all".to_string(), "wh-m3".to_string())][5].1;
    assert_eq!(failed["recipient"], "b3");
    assert_eq!(failed["reason"], "expired");
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["deliveryId"], member_delivery_id(seq3, 2));
    pg.close().await;
    lite.close().await;
}

/// Four workers on two nodes claim and complete one endpoint's events at once, a third of
/// first attempts asking for a retry (so outcomes, failure streaks and recoveries race on
/// the endpoint): every event is delivered exactly once, a delivery never has two events
/// out at once nor one before its message's acceptance went out, and each delivery's
/// events are delivered in the order they were written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_events_go_out_once_and_in_order_across_nodes() {
    use crate::model::webhook::Outcome;
    use std::collections::HashMap;
    use std::sync::Mutex;
    let db = TestDb::create().await;
    let nodes = [db.store().await, db.store().await];
    nodes[0]
        .webhook_create(hook(
            "hook",
            &["message.accepted", "delivery.sent", "delivery.read"],
        ))
        .await
        .unwrap();
    let receivers: Vec<String> = (0..3).map(|i| format!("w{i}")).collect();
    let mut ids = Vec::new();
    for _ in 0..12 {
        let mut m = outbox_msg(receivers.clone(), "websocket");
        for d in &mut m.deliveries {
            d.outbox = false;
        }
        ids.push(m.id.clone());
        nodes[0].insert_message(m).await.unwrap();
    }
    // Per message: accepted, then sent and read of each receiver.
    for status in [Status::Sent, Status::Read] {
        let changes = ids
            .iter()
            .flat_map(|id| {
                receivers.iter().map(move |r| StatusChange::Receiver {
                    message_id: id.clone(),
                    receiver: r.clone(),
                    channel: "websocket".into(),
                    status,
                })
            })
            .collect();
        nodes[1].apply_status(changes).await.unwrap();
    }
    let total = ids.len() * (1 + 2 * receivers.len());
    assert_eq!(
        nodes[0].webhook_backlog().await.unwrap()["hook"].pending,
        total as u64
    );

    #[derive(Default)]
    struct Log {
        /// The event out now per ordering key (a message's acceptance, a delivery).
        out: HashMap<String, i64>,
        /// Each ordering key's delivered events, in delivery order.
        delivered: HashMap<String, Vec<i64>>,
        retried: HashSet<i64>,
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let barrier = Arc::new(Barrier::new(4));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (node, log, barrier) = (nodes[w % 2].clone(), log.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let mut idle = 0;
                while idle < 20 {
                    assert!(std::time::Instant::now() < deadline, "took too long");
                    let now = now_ms();
                    let claimed = node
                        .webhook_claim(now, now + 30_000, vec![("hook".into(), 5)])
                        .await
                        .unwrap();
                    if claimed.is_empty() {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    idle = 0;
                    let mut outcomes = Vec::new();
                    let mut msgs = Vec::new();
                    for c in &claimed {
                        let data: serde_json::Value = serde_json::from_str(&c.data).unwrap();
                        let message = data["messageId"].as_str().unwrap().to_owned();
                        // The ordering key: the message for its acceptance, else the delivery.
                        let msg = match data["deliveryId"].as_i64() {
                            None => message.clone(),
                            Some(d) => format!("{message}/{d}"),
                        };
                        let mut log = log.lock().unwrap();
                        if msg != message {
                            assert!(
                                log.delivered.contains_key(&message),
                                "{msg}: claimed before its message's acceptance went out"
                            );
                        }
                        if let Some(other) = log.out.insert(msg.clone(), c.row) {
                            panic!("{msg}: {} claimed while {other} is out", c.row);
                        }
                        let outcome = if c.row % 3 == 0 && log.retried.insert(c.row) {
                            Outcome::Retry { at_ms: 0 }
                        } else {
                            log.delivered.entry(msg.clone()).or_default().push(c.row);
                            Outcome::Delivered
                        };
                        outcomes.push(hook_attempt(c, outcome));
                        msgs.push(msg);
                    }
                    // Out until the outcome is written: let the other workers in.
                    tokio::task::yield_now().await;
                    {
                        // No longer out just before the outcome is written: the message's
                        // next event can only be claimed once that commits.
                        let mut log = log.lock().unwrap();
                        for m in &msgs {
                            log.out.remove(m);
                        }
                    }
                    node.webhook_complete(outcomes, 0).await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    let mut all = BTreeSet::new();
    assert_eq!(log.delivered.len(), ids.len() * (1 + receivers.len()));
    for (key, rows) in &log.delivered {
        assert!(rows.windows(2).all(|w| w[0] < w[1]), "{key}: {rows:?}");
        let want = if key.contains('/') { 2 } else { 1 };
        assert_eq!(rows.len(), want, "{key}: {rows:?}");
        all.extend(rows.iter().copied());
    }
    assert_eq!(all.len(), total, "each delivered once");
    assert!(!log.retried.is_empty());
    let b = nodes[0].webhook_backlog().await.unwrap();
    assert!(!b.contains_key("hook"), "{b:?}");
    let ep = nodes[1].webhook_get("hook").await.unwrap().unwrap();
    assert!(ep.enabled && ep.failing_since_ms.is_none(), "{ep:?}");
    assert_eq!(
        nodes[0]
            .webhook_attempts("hook", None, 1000)
            .await
            .unwrap()
            .len(),
        total + log.retried.len()
    );
    for n in nodes {
        n.close().await;
    }
}
