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
use crate::model::{new_message_id, Idempotency, NewDelivery};

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

    async fn store(&self) -> Arc<PgStore> {
        let settings = DatabaseSettings {
            max_connections: 8,
            ..DatabaseSettings::default()
        };
        Arc::new(PgStore::open(&self.url, &settings).await.unwrap())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let name = self.name.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            rt.block_on(async {
                let mut conn = admin().await;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
            })
        })
        .join();
        if !matches!(done, Ok(Ok(_))) && !std::thread::panicking() {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let db = TestDb::create().await;
    let store = db.store().await;
    crate::store::conformance::run_all(store.clone()).await;
    store.close().await;
}

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
