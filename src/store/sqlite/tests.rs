//! The SQLite store: conformance, the writer's group commit, and what happens when the
//! database cannot write (a full disk: `database.max_size` makes SQLite answer
//! `SQLITE_FULL` exactly as a full filesystem does).
use std::sync::Arc;

use super::*;
use crate::model::{new_message_id, NewDelivery};
use crate::model::{now_ms, Status};

async fn open(dir: &Path) -> SqliteStore {
    let url = format!("sqlite://{}", dir.join("t.db").display());
    SqliteStore::open(&url, &DatabaseSettings::default())
        .await
        .unwrap()
}

/// A fresh store in a directory of its own (kept until the test ends).
async fn fresh() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(open(dir.path()).await);
    (store, dir)
}

crate::store::conformance::conformance_tests!(super::fresh);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_data_survives_reopen_and_close_drains_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    // Queue many writes, then close at once: every answered write must be on disk.
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let m = NewMessage {
                    id: new_message_id(),
                    title: format!("t{i}"),
                    content: "c".into(),
                    msg_type: 0,
                    sender: "s".into(),
                    created_at_ms: now_ms(),
                    deliveries: vec![NewDelivery {
                        receiver: "u".into(),
                        channel: "websocket".into(),
                        status: Status::Pending,
                        error: None,
                        address: None,
                        outbox: false,
                    }],
                    idempotency: None,
                    template: None,
                    data: None,
                    rendered: Default::default(),
                    ..Default::default()
                };
                store.insert_message(m).await.is_ok()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    store.close().await;
    let reopened = open(dir.path()).await;
    let items = reopened
        .undelivered("u", "websocket", 0, 1000)
        .await
        .unwrap();
    assert_eq!(items.len(), ok);
    assert_eq!(ok, 100);
    reopened.close().await;
}

fn new_msg(id: &str, receiver: &str) -> NewMessage {
    NewMessage {
        id: id.into(),
        title: "t".into(),
        content: "c".into(),
        msg_type: 0,
        sender: "s".into(),
        created_at_ms: now_ms(),
        deliveries: vec![NewDelivery {
            receiver: receiver.into(),
            channel: "websocket".into(),
            status: Status::Pending,
            error: None,
            address: None,
            outbox: false,
        }],
        idempotency: None,
        template: None,
        data: None,
        rendered: Default::default(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_does_not_take_its_batch_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    store.insert_message(new_msg("dup", "a")).await.unwrap();
    for round in 0..20 {
        // Queued together, these usually share a batch: the duplicate id fails, the
        // others must still commit.
        let good1 = format!("good-{round}-1");
        let good2 = format!("good-{round}-2");
        let (bad, ok1, ok2) = tokio::join!(
            store.insert_message(new_msg("dup", "b")),
            store.insert_message(new_msg(&good1, "c")),
            store.insert_message(new_msg(&good2, "c")),
        );
        assert!(bad.is_err(), "a duplicate message id must fail");
        assert!(matches!(ok1, Ok(Inserted::New { .. })), "{ok1:?}");
        assert!(matches!(ok2, Ok(Inserted::New { .. })), "{ok2:?}");
        assert!(store.get_message(&good1).await.unwrap().is_some());
        assert!(store.get_message(&good2).await.unwrap().is_some());
    }
    let dup = store.get_message("dup").await.unwrap().unwrap();
    assert_eq!(dup.deliveries.len(), 1);
    assert_eq!(
        dup.deliveries[0].receiver, "a",
        "the failed insert left nothing behind"
    );
    assert!(store
        .undelivered("b", "websocket", 0, 10)
        .await
        .unwrap()
        .is_empty());
    store.close().await;
}

#[tokio::test]
async fn writes_after_close_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.close().await;
    assert!(matches!(
        store.delete_message("x").await,
        Err(StoreError::Closed) | Err(StoreError::Corrupt(_))
    ));
}

async fn open_with(dir: &Path, settings: DatabaseSettings) -> SqliteStore {
    let url = format!("sqlite://{}", dir.join("t.db").display());
    SqliteStore::open(&url, &settings).await.unwrap()
}

fn big_msg(i: usize) -> NewMessage {
    let mut m = new_msg(&format!("full-{i}"), "u");
    m.content = "x".repeat(4000);
    m
}

/// The issue this guards: after `SQLITE_FULL` the old writer kept a transaction open and
/// answered `Ok` for inserts that were never committed. Every `Ok` must be on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_every_accepted_one_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let small = DatabaseSettings {
        max_size: Some("1 MiB".into()),
        ..DatabaseSettings::default()
    };
    let store = Arc::new(open_with(dir.path(), small.clone()).await);
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut reason = None;
    // Concurrent writers, so failures hit whole group commits, not just single inserts.
    for round in 0..60 {
        let tasks: Vec<_> = (0..8)
            .map(|k| {
                let store = store.clone();
                let m = big_msg(round * 8 + k);
                let id = m.id.clone();
                tokio::spawn(async move { (id, store.insert_message(m).await) })
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                (id, Ok(Inserted::New { .. })) => accepted.push(id),
                (_, Err(StoreError::Unavailable(why))) => {
                    refused += 1;
                    reason = Some(why);
                }
                (_, other) => panic!("unexpected answer: {other:?}"),
            }
        }
    }
    assert!(refused > 0, "the database never filled up");
    assert!(
        accepted.len() > 20,
        "too few accepted before full: {}",
        accepted.len()
    );
    assert_eq!(reason.as_deref(), Some("disk full"));
    match store.ready().await {
        Err(StoreError::Unavailable(why)) => assert_eq!(why, "disk full"),
        other => panic!("ready while full: {other:?}"),
    }
    // Every accepted insert is readable now, by another connection ...
    for id in &accepted {
        assert!(store.get_message(id).await.unwrap().is_some(), "{id} lost");
    }
    // ... and after a restart, with room again.
    store.close().await;
    let roomy = open_with(dir.path(), DatabaseSettings::default()).await;
    for id in &accepted {
        assert!(
            roomy.get_message(id).await.unwrap().is_some(),
            "{id} lost after restart"
        );
    }
    let listed = roomy
        .list_messages(
            &MessageFilter::default(),
            crate::model::PageRequest {
                page: 1,
                size: 1000,
            },
            1,
        )
        .await
        .unwrap();
    assert_eq!(
        listed.total as usize,
        accepted.len(),
        "nothing refused was stored"
    );
    roomy.ready().await.unwrap();
    roomy.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_resumes_by_itself_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let small = DatabaseSettings {
        max_size: Some("1 MiB".into()),
        ..DatabaseSettings::default()
    };
    let store = open_with(dir.path(), small).await;
    let mut ids = Vec::new();
    for i in 0.. {
        let m = big_msg(i);
        let id = m.id.clone();
        match store.insert_message(m).await {
            Ok(_) => ids.push(id),
            Err(StoreError::Unavailable(_)) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(i < 10_000, "never full");
    }
    // While failing, sends are refused at once, without queueing.
    assert!(matches!(
        store.insert_message(big_msg(99_999)).await,
        Err(StoreError::Unavailable(_))
    ));
    // Free space (deletes need no new pages); the probe notices, sends work again.
    for id in ids.iter().take(ids.len() / 2) {
        assert!(store.delete_message(id).await.unwrap());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.ready().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never recovered");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = big_msg(100_000);
    let id = m.id.clone();
    assert!(matches!(
        store.insert_message(m).await,
        Ok(Inserted::New { .. })
    ));
    assert!(store.get_message(&id).await.unwrap().is_some());
    store.close().await;
}

/// Admission control: when the writer cannot keep up (here: another process holds the
/// write lock), sends are refused with `Overloaded` at once — a full queue — or once they
/// waited `max_queue_wait`; nothing refused is stored, everything accepted is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_quickly_and_nothing_accepted_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let settings = DatabaseSettings {
        max_batch: 2,
        max_queue_wait: Duration::from_millis(50),
        ..DatabaseSettings::default()
    };
    let store = Arc::new(open_with(dir.path(), settings).await);
    let blocker = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..64 {
        let (store, done) = (store.clone(), done_tx.clone());
        let m = new_msg(&format!("load-{i}"), "u");
        tokio::spawn(async move {
            let r = store.insert_message(m).await;
            let _ = done.send((format!("load-{i}"), r));
        });
    }
    drop(done_tx);
    // Hold the lock until sends are being refused, then let go.
    let (mut ok, mut refused) = (Vec::new(), 0);
    while refused == 0 {
        let answer = tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await
            .expect("no send was refused while the writer was blocked");
        match answer {
            Some((id, Ok(Inserted::New { .. }))) => ok.push(id),
            Some((_, Err(StoreError::Overloaded(_)))) => refused += 1,
            other => panic!("unexpected: {other:?}"),
        }
    }
    blocker.execute_batch("ROLLBACK").unwrap();
    while let Some(answer) = done_rx.recv().await {
        match answer {
            (id, Ok(Inserted::New { .. })) => ok.push(id),
            (_, Err(StoreError::Overloaded(_))) => refused += 1,
            (_, other) => panic!("unexpected: {other:?}"),
        }
    }
    assert!(refused > 0, "nothing was refused");
    for id in &ok {
        assert!(store.get_message(id).await.unwrap().is_some());
    }
    let total = store
        .list_messages(
            &MessageFilter::default(),
            crate::model::PageRequest { page: 1, size: 100 },
            1,
        )
        .await
        .unwrap()
        .total;
    assert_eq!(total as usize, ok.len(), "a refused send was stored");
    // And the writer is healthy afterwards.
    assert!(store.insert_message(new_msg("after", "u")).await.is_ok());
    store.close().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_file_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.insert_message(new_msg("p", "u")).await.unwrap();
    for f in ["t.db", "t.db-wal"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
    }
    store.close().await;
}
