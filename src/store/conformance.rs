//! The store conformance suite: behaviour every [`Store`] backend must have. Each backend's
//! tests call [`run_all`] with a fresh, empty store.

use std::sync::Arc;

use super::OutboxCounts;
use super::Store;
use crate::model::*;

fn msg(receivers: &[&str], channel: &str) -> NewMessage {
    NewMessage {
        id: new_message_id(),
        title: "Report ready".into(),
        content: r#"{"reportId":7}"#.into(),
        msg_type: 1,
        sender: "lab".into(),
        created_at_ms: now_ms(),
        deliveries: receivers
            .iter()
            .map(|r| NewDelivery {
                receiver: r.to_string(),
                channel: channel.into(),
                status: Status::Pending,
                error: None,
                address: None,
                outbox: false,
            })
            .collect(),
        idempotency: None,
        template: None,
        data: None,
        rendered: Default::default(),
        ..Default::default()
    }
}

async fn insert(store: &dyn Store, m: NewMessage) -> (String, Vec<i64>) {
    let id = m.id.clone();
    match store.insert_message(m).await.unwrap() {
        Inserted::New { delivery_ids, .. } => (id, delivery_ids),
        other => panic!("expected a new message, got {other:?}"),
    }
}

/// The inbox listing the API's `status=undelivered|all` asks for, by page.
fn listing_query(undelivered_only: bool, p: PageRequest) -> inbox::Query {
    inbox::Query {
        show: if undelivered_only {
            inbox::Show::Undelivered
        } else {
            inbox::Show::All
        },
        archived: Some(false),
        msg_type: None,
        before: None,
        after: None,
        offset: p.offset(),
        limit: p.size,
    }
}

fn page(page: u32, size: u32) -> PageRequest {
    PageRequest { page, size }
}

fn ack(id: &str, receiver: &str, status: Status) -> StatusChange {
    StatusChange::Receiver {
        message_id: id.into(),
        receiver: receiver.into(),
        channel: "websocket".into(),
        status,
    }
}

async fn status_of(store: &dyn Store, id: &str, receiver: &str) -> Status {
    let m = store.get_message(id).await.unwrap().unwrap();
    m.deliveries
        .iter()
        .find(|d| d.receiver == receiver)
        .unwrap()
        .status
}

/// Every property below as its own test for one backend: `open` gives a fresh, empty store
/// (and whatever must live as long as it, e.g. its directory or database).
macro_rules! conformance_tests {
    ($open:path) => {
        $crate::store::conformance::conformance_tests!(@each $open;
            insert_and_get, idempotency, status_moves_forward_only, undelivered_and_collect,
            delete_cascades, recipients, devices_move_between_users,
            concurrent_inserts_all_commit, listing, outbox_claims_leases_and_outcomes,
            scheduled_messages_are_held_released_and_expired,
            failover_routes_advance_under_their_lease, compact_audiences_read_like_rows,
            compact_audiences_spill_expire_and_delete, ready_after_migrations,
            inbox_states_counts_and_marks, webhook_events_outbox);
    };
    (@each $open:path; $($name:ident),* $(,)?) => {
        /// The store conformance suite (`store/conformance.rs`), one test per property.
        mod conformance {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _keep) = $open().await;
                    $crate::store::conformance::$name(&store).await;
                    store.close().await;
                }
            )*
        }
    };
}
pub(crate) use conformance_tests;

pub async fn ready_after_migrations(store: &Arc<dyn Store>) {
    store.ready().await.unwrap();
}

/// Claim every timer due at `at` and keep those of message `seq`.
async fn timers_of(store: &dyn Store, seq: i64, at: i64, lease: i64) -> Vec<Timer> {
    store
        .claim_timers(at, lease, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.message_seq == seq)
        .collect()
}

async fn seq_of(store: &dyn Store, id: &str) -> i64 {
    store.get_message(id).await.unwrap().unwrap().seq
}

pub async fn scheduled_messages_are_held_released_and_expired(store: &Arc<dyn Store>) {
    let store: &dyn Store = store.as_ref();
    let now = now_ms();
    let mut m = msg(&["held-u"], "websocket");
    let mut sms = m.deliveries[0].clone();
    sms.channel = "sms".into();
    sms.outbox = true;
    m.deliveries.push(sms);
    m.send_at_ms = Some(now + 60_000);
    m.expires_at_ms = Some(now + 120_000);
    let (id, ids) = insert(store, m).await;
    let seq = seq_of(store, &id).await;
    let presence = vec!["websocket".to_string()];
    // Held: invisible to replay, the inbox and the count; the outbox row is due at sendAt.
    assert!(store
        .undelivered("held-u", "websocket", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .count_undelivered("held-u", "websocket")
            .await
            .unwrap()
            .0,
        0
    );
    let page = PageRequest { page: 1, size: 10 };
    assert_eq!(
        store
            .inbox_entries("held-u", &listing_query(false, page))
            .await
            .unwrap()
            .total,
        0
    );
    assert_eq!(store.count_due("sms", now, 10).await.unwrap(), 0);
    assert!(
        timers_of(store, seq, now, now + 1).await.is_empty(),
        "nothing due yet"
    );
    assert_eq!(
        store
            .next_timer_due()
            .await
            .unwrap()
            .map(|t| t <= now + 60_000),
        Some(true)
    );

    // sendAt: the release timer un-holds the presence row, once.
    let t = timers_of(store, seq, now + 60_000, now + 70_000).await;
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0].kind, TimerKind::Release);
    let released = store.release_held(&t[0], &presence).await.unwrap().unwrap();
    assert_eq!(
        released,
        vec![(ids[0], "held-u".to_string(), "websocket".to_string())]
    );
    assert!(
        store
            .release_held(&t[0], &presence)
            .await
            .unwrap()
            .is_none(),
        "done once"
    );
    assert_eq!(
        store
            .count_undelivered("held-u", "websocket")
            .await
            .unwrap(),
        (1, seq)
    );
    assert_eq!(
        store
            .undelivered("held-u", "websocket", 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // expiresAt: a stale lease changes nothing; the holder fails what is undelivered.
    let t = timers_of(store, seq, now + 120_000, now + 130_000).await;
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].kind, TimerKind::Expire);
    let stale = Timer {
        lease_until_ms: now + 1,
        ..t[0].clone()
    };
    assert!(store
        .expire_message(&stale, &presence, now)
        .await
        .unwrap()
        .is_none());
    let mut expired = store
        .expire_message(&t[0], &presence, now + 120_000)
        .await
        .unwrap()
        .unwrap();
    expired.sort();
    assert_eq!(
        expired,
        [("sms".to_string(), 1), ("websocket".to_string(), 1)]
    );
    let got = store.get_message(&id).await.unwrap().unwrap();
    assert!(got
        .deliveries
        .iter()
        .all(|d| d.status == Status::Failed && d.error.as_deref() == Some("expired")));
    assert!(store
        .undelivered("held-u", "websocket", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(timers_of(store, seq, i64::MAX / 2, i64::MAX / 2)
        .await
        .is_empty());
}

pub async fn failover_routes_advance_under_their_lease(store: &Arc<dyn Store>) {
    let store: &dyn Store = store.as_ref();
    use crate::routing::{LogEntry, Policy, PolicyKind, Progress, RouteState, Step};
    let now = now_ms();
    let mut m = msg(&[], "websocket");
    m.routing = Some(Policy {
        policy: PolicyKind::Failover,
        steps: vec![Step {
            channel: "sms".into(),
            wait_ms: Some(1_000),
        }],
    });
    m.routes = vec!["route-u".into()];
    m.created_at_ms = now;
    let (id, ids) = insert(store, m).await;
    assert!(ids.is_empty(), "a chain creates its deliveries itself");
    let seq = seq_of(store, &id).await;
    let t = timers_of(store, seq, now, now + 5_000).await;
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].kind, t[0].receiver.as_str()),
        (TimerKind::Route, "route-u")
    );
    assert_eq!(t[0].progress.step, None);
    let entry = |event: &str| LogEntry {
        at: rfc3339(now),
        step: Some(0),
        channel: Some("sms".into()),
        event: event.into(),
        reason: "r".into(),
    };
    let advance = |t: &Timer, state, log| RouteAdvance {
        timer_id: t.id,
        lease_until_ms: t.lease_until_ms,
        message_seq: seq,
        receiver: "route-u".into(),
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
    let mut first = advance(&t[0], RouteState::Running, vec![entry("started")]);
    first.start = vec![NewDelivery {
        receiver: "route-u".into(),
        channel: "sms".into(),
        status: Status::Pending,
        error: None,
        address: None,
        outbox: true,
    }];
    let created = store.advance_route(first.clone()).await.unwrap().unwrap();
    assert_eq!(created.len(), 1);
    let seen = store.receiver_deliveries(seq, "route-u").await.unwrap();
    assert_eq!(
        (seen.len(), seen[0].id, seen[0].status),
        (1, created[0], Status::Pending)
    );
    assert!(
        store.count_due("sms", now, 1000).await.unwrap() >= 1,
        "due at once"
    );
    assert!(
        timers_of(store, seq, now + 999, now + 2_000)
            .await
            .is_empty(),
        "waits for its wait"
    );

    // A status change of the receiver's delivery makes the chain due at once, and takes
    // the lease from whoever held it.
    let t = timers_of(store, seq, now + 1_000, now + 9_000).await;
    assert_eq!(t[0].progress.step, Some(0));
    store
        .apply_status(vec![StatusChange::Delivery {
            delivery_id: created[0],
            status: Status::Sent,
            error: None,
            count_attempt: false,
        }])
        .await
        .unwrap();
    let late = advance(&t[0], RouteState::Succeeded, vec![entry("succeeded")]);
    assert!(
        store.advance_route(late).await.unwrap().is_none(),
        "lease lost"
    );
    let t = timers_of(store, seq, now, now + 9_500).await;
    assert_eq!(t.len(), 1, "due again after the status change");
    let mut done = advance(&t[0], RouteState::Succeeded, vec![entry("succeeded")]);
    done.due_at_ms = None;
    assert!(store.advance_route(done).await.unwrap().is_some());
    let got = store.get_message(&id).await.unwrap().unwrap();
    assert_eq!(got.routes.len(), 1);
    assert_eq!(got.routes[0].state, RouteState::Succeeded);
    let events: Vec<&str> = got.routes[0].log.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["started", "succeeded"]);
    assert!(
        timers_of(store, seq, i64::MAX / 2, i64::MAX / 2)
            .await
            .is_empty(),
        "finished"
    );
    assert!(store.delete_message(&id).await.unwrap());
    assert!(store
        .receiver_deliveries(seq, "route-u")
        .await
        .unwrap()
        .is_empty());
}

fn outbox_msg(receivers: &[&str], channel: &str) -> NewMessage {
    let mut m = msg(receivers, channel);
    for d in &mut m.deliveries {
        d.outbox = true;
    }
    m.template = Some("report_ready".into());
    m.data = Some(serde_json::json!({"patient_name": "Li Lei"}));
    m.rendered
        .entry("email".into())
        .or_default()
        .insert("subject".into(), "Your report".into());
    m
}

fn attempt(c: &Claimed, outcome: AttemptOutcome) -> StatusChange {
    StatusChange::Attempt {
        delivery_id: c.delivery_id,
        lease_until_ms: c.lease_until_ms,
        outcome,
    }
}

pub async fn outbox_claims_leases_and_outcomes(store: &Arc<dyn Store>) {
    let s: &dyn Store = store.as_ref();
    let now = now_ms();
    let (id, dids) = insert(s, outbox_msg(&["a", "b", "c"], "mail")).await;
    // WebSocket rows never enter the outbox.
    insert(s, msg(&["a"], "websocket")).await;
    assert_eq!(
        s.claim_due("websocket", now + 1000, now + 60_000, 10, None)
            .await
            .unwrap()
            .rows,
        vec![]
    );

    let counts = s.outbox_counts().await.unwrap();
    assert_eq!(
        counts["mail"],
        OutboxCounts {
            pending: 3,
            retrying: 0
        }
    );
    assert_eq!(s.count_due("mail", now_ms(), 10).await.unwrap(), 3);
    assert_eq!(s.count_due("mail", now_ms(), 2).await.unwrap(), 2);
    assert_eq!(s.count_due("mail", now - 60_000, 10).await.unwrap(), 0);
    assert!(s
        .next_due("mail")
        .await
        .unwrap()
        .is_some_and(|d| d <= now_ms()));

    // Claim two: leased, an attempt counted each, oldest first.
    let lease = now + 60_000;
    let first = s
        .claim_due("mail", now_ms(), lease, 2, None)
        .await
        .unwrap()
        .rows;
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].delivery_id, dids[0]);
    assert!(first
        .iter()
        .all(|c| c.attempts == 1 && c.lease_until_ms == lease));
    // Leased rows are not claimable again until the lease ends …
    let rest = s
        .claim_due("mail", now_ms(), lease, 10, None)
        .await
        .unwrap()
        .rows;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].delivery_id, dids[2]);
    assert_eq!(
        s.claim_due("mail", now_ms(), lease, 10, None)
            .await
            .unwrap()
            .rows,
        vec![]
    );
    assert_eq!(s.next_due("mail").await.unwrap(), Some(lease));

    // The messages of claimed rows, with template, data and renderings.
    let msgs = s.outbox_messages(&[first[0].message_seq]).await.unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].id, id);
    assert_eq!(msgs[0].template.as_deref(), Some("report_ready"));
    assert_eq!(msgs[0].data.as_ref().unwrap()["patient_name"], "Li Lei");
    assert_eq!(msgs[0].rendered["email"]["subject"], "Your report");

    // Outcomes: sent, retry later, failed.
    let applied = s
        .apply_status(vec![
            attempt(
                &first[0],
                AttemptOutcome::Sent {
                    provider_id: Some("p-1".into()),
                },
            ),
            attempt(
                &first[1],
                AttemptOutcome::Retry {
                    at_ms: now + 5_000,
                    error: "transient: [451] try later".into(),
                },
            ),
            attempt(
                &rest[0],
                AttemptOutcome::Failed {
                    error: "bad_recipient: [550] no such user".into(),
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(applied, vec![true, false, true]);
    let m = s.get_message(&id).await.unwrap().unwrap();
    let d = |rid: i64| m.deliveries.iter().find(|d| d.id == rid).unwrap().clone();
    assert_eq!(d(dids[0]).status, Status::Sent);
    assert_eq!(d(dids[1]).status, Status::Pending);
    assert_eq!(d(dids[1]).next_attempt_ms, Some(now + 5_000));
    assert_eq!(
        d(dids[1]).error.as_deref(),
        Some("transient: [451] try later")
    );
    assert_eq!(d(dids[2]).status, Status::Failed);
    assert_eq!(d(dids[2]).attempts, 1);
    let counts = s.outbox_counts().await.unwrap();
    assert_eq!(
        counts["mail"],
        OutboxCounts {
            pending: 1,
            retrying: 1
        }
    );

    // Not due before its time; due after; the attempt count grows.
    assert_eq!(
        s.claim_due("mail", now + 4_999, now + 70_000, 10, None)
            .await
            .unwrap()
            .rows,
        vec![]
    );
    let again = s
        .claim_due("mail", now + 5_000, now + 70_000, 10, None)
        .await
        .unwrap()
        .rows;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);

    // Lease fencing: an outcome under a lease that was taken over changes nothing.
    let stale = attempt(
        &first[1],
        AttemptOutcome::Failed {
            error: "late".into(),
        },
    );
    assert_eq!(s.apply_status(vec![stale]).await.unwrap(), vec![false]);
    let m = s.get_message(&id).await.unwrap().unwrap();
    assert_eq!(
        m.deliveries
            .iter()
            .find(|x| x.id == dids[1])
            .unwrap()
            .status,
        Status::Pending
    );
    // … and an expired lease makes the row claimable again (a crashed worker).
    let taken = s
        .claim_due("mail", now + 70_000, now + 130_000, 10, None)
        .await
        .unwrap()
        .rows;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].attempts, 3);
    assert_eq!(
        s.apply_status(vec![attempt(
            &taken[0],
            AttemptOutcome::Sent {
                provider_id: Some("p-2".into())
            }
        )])
        .await
        .unwrap(),
        vec![true]
    );
    assert_eq!(s.next_due("mail").await.unwrap(), None);
    // A daily quota: claims count against the window, in the same transaction.
    insert(s, outbox_msg(&["q1", "q2", "q3"], "quota")).await;
    let at = now_ms() + 1000;
    let q = Some(QuotaClaim {
        window_start_ms: now - 1000,
        limit: 2,
    });
    let r = s.claim_due("quota", at, at + 60_000, 1, q).await.unwrap();
    assert_eq!((r.rows.len(), r.quota_left), (1, Some(1)));
    let r = s.claim_due("quota", at, at + 60_000, 10, q).await.unwrap();
    assert_eq!((r.rows.len(), r.quota_left), (1, Some(0)));
    let r = s.claim_due("quota", at, at + 60_000, 10, q).await.unwrap();
    assert_eq!(
        (r.rows.len(), r.quota_left),
        (0, Some(0)),
        "spent: nothing claimed"
    );
    assert_eq!(s.quota_used("quota", now - 1000).await.unwrap(), 2);
    let next = Some(QuotaClaim {
        window_start_ms: now + 86_400_000,
        limit: 2,
    });
    let r = s
        .claim_due("quota", at, at + 60_000, 10, next)
        .await
        .unwrap();
    assert_eq!((r.rows.len(), r.quota_left), (1, Some(1)), "a new window");
    // Provider ids are kept and map back to the delivery.
    let m = s.get_message(&id).await.unwrap().unwrap();
    let d0 = m.deliveries.iter().find(|d| d.id == dids[0]).unwrap();
    assert_eq!(d0.provider_id.as_deref(), Some("p-1"));
    assert_eq!(
        s.delivery_by_provider_id("mail", "p-1").await.unwrap(),
        Some(dids[0])
    );
    assert_eq!(
        s.delivery_by_provider_id("mail2", "p-1").await.unwrap(),
        None
    );

    // Deleting the message removes its outbox rows.
    insert(s, outbox_msg(&["z"], "mail2")).await;
    let (gone, _) = insert(s, outbox_msg(&["y"], "mail3")).await;
    assert!(s.delete_message(&gone).await.unwrap());
    assert_eq!(
        s.claim_due("mail3", now + 1_000_000, now + 2_000_000, 10, None)
            .await
            .unwrap()
            .rows,
        vec![]
    );
}

pub async fn insert_and_get(store: &Arc<dyn Store>) {
    let s: &dyn Store = store.as_ref();
    let (id, dids) = insert(s, msg(&["a", "b"], "websocket")).await;
    assert_eq!(dids.len(), 2);
    let m = s.get_message(&id).await.unwrap().unwrap();
    assert_eq!(m.title, "Report ready");
    assert_eq!(m.content, r#"{"reportId":7}"#);
    assert_eq!((m.msg_type, m.sender.as_str()), (1, "lab"));
    assert_eq!(m.deliveries.len(), 2);
    assert_eq!(m.delivery_counts[Status::Pending.code() as usize], 2);
    assert!(m
        .deliveries
        .iter()
        .all(|d| d.status == Status::Pending && d.attempts == 0));
    assert!(s.get_message("nope").await.unwrap().is_none());

    // A broadcast-sized insert: every returned id belongs to its own receiver.
    let names: Vec<String> = (0..600).map(|i| format!("b{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (id, dids) = insert(s, msg(&refs, "websocket")).await;
    let m = s.get_message(&id).await.unwrap().unwrap();
    assert_eq!(m.deliveries.len(), 600);
    for (i, did) in dids.iter().enumerate() {
        let d = m.deliveries.iter().find(|d| d.id == *did).unwrap();
        assert_eq!(d.receiver, names[i]);
    }
}

pub async fn idempotency(store: &Arc<dyn Store>) {
    let s: &dyn Store = store.as_ref();
    let mut first = msg(&["i1"], "websocket");
    first.idempotency = Some(Idempotency {
        key: "k1".into(),
        request_hash: "h1".into(),
    });
    let (id, _) = insert(s, first).await;
    let mut again = msg(&["i1"], "websocket");
    again.idempotency = Some(Idempotency {
        key: "k1".into(),
        request_hash: "h1".into(),
    });
    assert_eq!(
        s.insert_message(again).await.unwrap(),
        Inserted::Existing {
            id: id.clone(),
            deliveries: 1
        }
    );
    let mut other = msg(&["i1"], "websocket");
    other.idempotency = Some(Idempotency {
        key: "k1".into(),
        request_hash: "h2".into(),
    });
    assert_eq!(
        s.insert_message(other).await.unwrap(),
        Inserted::KeyConflict
    );
    let filter = MessageFilter {
        receiver: Some("i1".into()),
        ..Default::default()
    };
    assert_eq!(
        s.list_messages(&filter, page(1, 10), 10)
            .await
            .unwrap()
            .total,
        1
    );
}

pub async fn status_moves_forward_only(store: &Arc<dyn Store>) {
    let s: &dyn Store = store.as_ref();
    let (id, dids) = insert(s, msg(&["f1", "f2"], "websocket")).await;
    let sent = |i: usize| StatusChange::Delivery {
        delivery_id: dids[i],
        status: Status::Sent,
        error: None,
        count_attempt: true,
    };
    assert_eq!(
        s.apply_status(vec![sent(0), sent(0)]).await.unwrap(),
        vec![true, false]
    );
    let m = s.get_message(&id).await.unwrap().unwrap();
    let d = m.deliveries.iter().find(|d| d.receiver == "f1").unwrap();
    assert_eq!((d.status, d.attempts), (Status::Sent, 2));

    s.apply_status(vec![ack(&id, "f1", Status::Delivered)])
        .await
        .unwrap();
    assert_eq!(status_of(s, &id, "f1").await, Status::Delivered);
    // Backwards and failed-after-delivered are ignored.
    s.apply_status(vec![sent(0), ack(&id, "f1", Status::Failed)])
        .await
        .unwrap();
    assert_eq!(status_of(s, &id, "f1").await, Status::Delivered);
    s.apply_status(vec![ack(&id, "f1", Status::Read)])
        .await
        .unwrap();
    assert_eq!(status_of(s, &id, "f1").await, Status::Read);
    s.apply_status(vec![ack(&id, "f1", Status::Delivered)])
        .await
        .unwrap();
    assert_eq!(status_of(s, &id, "f1").await, Status::Read);
    // An ack by someone who is not a receiver changes nothing.
    s.apply_status(vec![ack(&id, "mallory", Status::Delivered)])
        .await
        .unwrap();
    assert_eq!(status_of(s, &id, "f2").await, Status::Pending);
    // Failed keeps its error and is terminal.
    s.apply_status(vec![StatusChange::Delivery {
        delivery_id: dids[1],
        status: Status::Failed,
        error: Some("permanent: nope".into()),
        count_attempt: true,
    }])
    .await
    .unwrap();
    s.apply_status(vec![ack(&id, "f2", Status::Delivered)])
        .await
        .unwrap();
    let m = s.get_message(&id).await.unwrap().unwrap();
    let d = m.deliveries.iter().find(|d| d.receiver == "f2").unwrap();
    assert_eq!(
        (d.status, d.error.as_deref()),
        (Status::Failed, Some("permanent: nope"))
    );
}

pub async fn undelivered_and_collect(store: &Arc<dyn Store>) {
    let s: &dyn Store = store.as_ref();
    let mut ids = vec![];
    for _ in 0..5 {
        ids.push(insert(s, msg(&["u1"], "websocket")).await.0);
    }
    insert(s, msg(&["u1"], "other")).await;
    s.apply_status(vec![ack(&ids[1], "u1", Status::Delivered)])
        .await
        .unwrap();
    let first = s.undelivered("u1", "websocket", 0, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|i| &i.id).collect::<Vec<_>>(),
        vec![&ids[0], &ids[2]]
    );
    let rest = s
        .undelivered("u1", "websocket", first[1].seq, 10)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|i| &i.id).collect::<Vec<_>>(),
        vec![&ids[3], &ids[4]]
    );

    let pending = s.receivers_with_undelivered("websocket").await.unwrap();
    assert!(pending.contains(&"u1".to_string()), "{pending:?}");
    let inbox = s
        .inbox_entries("u1", &listing_query(true, page(1, 10)))
        .await
        .unwrap();
    assert_eq!(inbox.total, 4);
    assert_eq!(inbox.items[0].id, ids[4], "newest first");
    assert_eq!(
        s.inbox_entries("u1", &listing_query(false, page(1, 10)))
            .await
            .unwrap()
            .total,
        5
    );

    let collected = s.collect("u1", "websocket", 3).await.unwrap();
    assert_eq!(
        collected.iter().map(|i| &i.id).collect::<Vec<_>>(),
        vec![&ids[0], &ids[2], &ids[3]]
    );
    assert!(collected.iter().all(|i| i.status == Status::Delivered));
    let collected = s.collect("u1", "websocket", 3).await.unwrap();
    assert_eq!(collected.len(), 1);
    assert!(s.collect("u1", "websocket", 3).await.unwrap().is_empty());
    assert!(s
        .undelivered("u1", "websocket", 0, 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn delete_cascades(store: &Arc<dyn Store>) {
    let s: &dyn Store = store.as_ref();
    let (id, _) = insert(s, msg(&["d1"], "websocket")).await;
    assert!(s.delete_message(&id).await.unwrap());
    assert!(!s.delete_message(&id).await.unwrap());
    assert!(s.get_message(&id).await.unwrap().is_none());
    assert!(s
        .undelivered("d1", "websocket", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(s.collect("d1", "websocket", 10).await.unwrap().is_empty());
}

pub async fn recipients(store: &Arc<dyn Store>) {
    let s: &dyn Store = store.as_ref();
    let r = Recipient {
        user_id: "r1".into(),
        name: Some("Alice".into()),
        email: Some("alice@example.com".into()),
        phone: Some("+8613800000000".into()),
        wechat_open_id: None,
        devices: serde_json::json!([]),
        preferences: serde_json::json!({"optOut": ["sms"]}),
        updated_at_ms: 0,
    };
    assert!(s.put_recipient(r.clone()).await.unwrap());
    assert!(!s.put_recipient(r.clone()).await.unwrap());
    let got = s.get_recipient("r1").await.unwrap().unwrap();
    assert_eq!(got.email, r.email);
    assert_eq!(got.preferences, r.preferences);
    assert!(got.updated_at_ms > 0);
    assert!(s.delete_recipient("r1").await.unwrap());
    assert!(!s.delete_recipient("r1").await.unwrap());
    assert!(s.get_recipient("r1").await.unwrap().is_none());
}

pub async fn concurrent_inserts_all_commit(store: &Arc<dyn Store>) {
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(
                async move { insert(store.as_ref(), msg(&["c1", "c2"], "websocket")).await },
            )
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let filter = MessageFilter {
        receiver: Some("c2".into()),
        ..Default::default()
    };
    assert_eq!(
        store
            .list_messages(&filter, page(1, 1), 1)
            .await
            .unwrap()
            .total,
        200
    );
}

pub async fn listing(store: &Arc<dyn Store>) {
    let s: &dyn Store = store.as_ref();
    let mut ids = vec![];
    for i in 0..5 {
        let mut m = msg(&["l1", "l2", "l3"], "websocket");
        m.msg_type = 100 + (i % 2);
        m.sender = format!("list-sender-{}", i % 2);
        ids.push(insert(s, m).await.0);
    }
    let by_sender = MessageFilter {
        sender: Some("list-sender-0".into()),
        ..Default::default()
    };
    let p = s.list_messages(&by_sender, page(1, 2), 2).await.unwrap();
    assert_eq!(p.total, 3);
    assert_eq!(p.items.len(), 2);
    assert_eq!(p.items[0].id, ids[4], "newest first");
    assert_eq!(p.items[1].id, ids[2]);
    assert_eq!(
        p.items[0].deliveries.len(),
        2,
        "deliveries capped per message"
    );
    assert_eq!(p.items[0].delivery_counts[0], 3, "counts are complete");
    let p2 = s.list_messages(&by_sender, page(2, 2), 2).await.unwrap();
    assert_eq!(
        p2.items.iter().map(|m| &m.id).collect::<Vec<_>>(),
        vec![&ids[0]]
    );

    let by_type = MessageFilter {
        msg_type: Some(101),
        ..Default::default()
    };
    assert_eq!(
        s.list_messages(&by_type, page(1, 10), 10)
            .await
            .unwrap()
            .total,
        2
    );

    s.apply_status(vec![ack(&ids[3], "l2", Status::Delivered)])
        .await
        .unwrap();
    let delivered = MessageFilter {
        status: Some(StatusFilter::Is(Status::Delivered)),
        receiver: Some("l2".into()),
        ..Default::default()
    };
    let p = s.list_messages(&delivered, page(1, 10), 10).await.unwrap();
    assert_eq!(
        p.items.iter().map(|m| &m.id).collect::<Vec<_>>(),
        vec![&ids[3]]
    );
    let by_channel = MessageFilter {
        channel: Some("nonexistent".into()),
        ..Default::default()
    };
    assert_eq!(
        s.list_messages(&by_channel, page(1, 10), 10)
            .await
            .unwrap()
            .total,
        0
    );
}

/// A broadcast's presence deliveries as one compact audience (members sorted).
fn broadcast(receivers: &[&str], now: i64) -> NewMessage {
    let mut m = msg(&[], "websocket");
    m.created_at_ms = now;
    m.audience = Some(NewAudience::new(
        "websocket",
        receivers.iter().map(|r| r.to_string()).collect(),
        now,
        now + 60_000,
    ));
    m
}

/// Sessions open for `receivers` since `since` (as the server records before it takes a
/// broadcast's audience).
async fn online(s: &dyn Store, receivers: &[&str], since: i64) {
    for r in receivers {
        s.presence_open(&format!("session-{r}"), r, "node-a", since)
            .await
            .unwrap();
    }
}

fn member_id(s_seq: i64, members: &[&str], receiver: &str) -> i64 {
    let mut sorted: Vec<&str> = members.to_vec();
    sorted.sort();
    member_delivery_id(s_seq, sorted.iter().position(|m| *m == receiver).unwrap())
}

/// The same changes applied to a message with delivery rows and to one with a compact
/// audience must read back the same through every read of the store.
pub async fn compact_audiences_read_like_rows(store: &Arc<dyn Store>) {
    let s: &dyn Store = store.as_ref();
    let people = ["cx-a", "cx-b", "cx-c", "cx-d", "cx-e"];
    let now = now_ms();
    online(s, &people, now - 1_000).await;
    let (rows_id, row_ids) = insert(s, msg(&people, "websocket")).await;
    let m = broadcast(&people, now);
    assert_eq!(m.delivery_count(), 5);
    let (compact_id, none) = insert(s, m).await;
    assert!(none.is_empty(), "members have no rows");
    let cseq = seq_of(s, &compact_id).await;
    let sent = |id: i64| StatusChange::Delivery {
        delivery_id: id,
        status: Status::Sent,
        error: None,
        count_attempt: true,
    };
    let script = |row: bool, id: &str| {
        let did = |r: &str| {
            if row {
                row_ids[people.iter().position(|p| *p == r).unwrap()]
            } else {
                member_id(cseq, &people, r)
            }
        };
        vec![
            sent(did("cx-a")),
            ack(id, "cx-a", Status::Delivered),
            ack(id, "cx-a", Status::Read),
            sent(did("cx-b")),
            sent(did("cx-b")),
            ack(id, "cx-c", Status::Delivered),
            sent(did("cx-e")),
            ack(id, "cx-a", Status::Delivered), // backwards: ignored
            ack(id, "cx-mallory", Status::Delivered),
        ]
    };
    let on_rows = s.apply_status(script(true, &rows_id)).await.unwrap();
    let on_members = s.apply_status(script(false, &compact_id)).await.unwrap();
    assert_eq!(
        on_rows, on_members,
        "the same changes move the same deliveries"
    );
    assert_eq!(
        on_members,
        [true, true, true, true, false, true, true, false, false]
    );

    let by_rows = s.get_message(&rows_id).await.unwrap().unwrap();
    let by_members = s.get_message(&compact_id).await.unwrap().unwrap();
    assert_eq!(by_rows.delivery_counts, by_members.delivery_counts);
    assert_eq!(by_members.delivery_counts, [1, 2, 1, 1, 0]);
    let view = |m: &Message| {
        let mut v: Vec<_> = m
            .deliveries
            .iter()
            .map(|d| {
                (
                    d.receiver.clone(),
                    d.channel.clone(),
                    d.status,
                    d.attempts,
                    d.error.clone(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(view(&by_rows), view(&by_members));
    let a = by_members
        .deliveries
        .iter()
        .find(|d| d.receiver == "cx-a")
        .unwrap();
    assert!(a.updated_at_ms >= now, "a member's own change time");

    // Replay, the welcome count and the inbox see both messages, oldest first.
    for (who, expect) in [
        ("cx-b", 2),
        ("cx-d", 2),
        ("cx-e", 2),
        ("cx-a", 0),
        ("cx-c", 0),
    ] {
        let items = s.undelivered(who, "websocket", 0, 10).await.unwrap();
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        let want: Vec<&str> = [rows_id.as_str(), compact_id.as_str()][..expect].to_vec();
        assert_eq!(ids, want, "{who}");
        let (n, max) = s.count_undelivered(who, "websocket").await.unwrap();
        assert_eq!(n as usize, expect, "{who}");
        if expect > 0 {
            assert_eq!(max, cseq);
            assert!(items[1].delivery_id < 0, "a member's id is derived");
            let after = s
                .undelivered(who, "websocket", items[0].seq, 10)
                .await
                .unwrap();
            assert_eq!(after.len(), 1, "paging past the row");
        }
    }
    let pending = s.receivers_with_undelivered("websocket").await.unwrap();
    for who in ["cx-b", "cx-d", "cx-e"] {
        assert!(pending.iter().any(|p| p == who), "{who}");
    }
    for (who, undelivered, all) in [("cx-a", 0, 2), ("cx-d", 2, 2)] {
        let u = s
            .inbox_entries(who, &listing_query(true, page(1, 10)))
            .await
            .unwrap();
        assert_eq!(u.total, undelivered, "{who}");
        let a = s
            .inbox_entries(who, &listing_query(false, page(1, 10)))
            .await
            .unwrap();
        assert_eq!(a.total, all, "{who}");
        assert_eq!(a.items[0].id, compact_id, "newest first");
        let second = s
            .inbox_entries(who, &listing_query(false, page(2, 1)))
            .await
            .unwrap();
        assert_eq!(second.items.len(), 1);
        assert_eq!(second.items[0].id, rows_id);
    }
    let read = s
        .inbox_entries("cx-a", &listing_query(false, page(1, 10)))
        .await
        .unwrap();
    assert!(read.items.iter().all(|i| i.status == Status::Read));

    // Listing filters match a member as they match a row.
    let ids_of = |p: Page<Message>| {
        let mut v: Vec<String> = p.items.into_iter().map(|m| m.id).collect();
        v.sort();
        v
    };
    let mut both = vec![rows_id.clone(), compact_id.clone()];
    both.sort();
    for f in [
        MessageFilter {
            receiver: Some("cx-d".into()),
            ..Default::default()
        },
        MessageFilter {
            receiver: Some("cx-b".into()),
            status: Some(StatusFilter::Is(Status::Sent)),
            ..Default::default()
        },
        MessageFilter {
            receiver: Some("cx-a".into()),
            status: Some(StatusFilter::Is(Status::Read)),
            channel: Some("websocket".into()),
            ..Default::default()
        },
    ] {
        let p = s.list_messages(&f, page(1, 100), 100).await.unwrap();
        assert_eq!(p.total, 2, "{f:?}");
        assert_eq!(ids_of(p), both, "{f:?}");
    }
    let none = MessageFilter {
        receiver: Some("cx-a".into()),
        status: Some(StatusFilter::Is(Status::Pending)),
        ..Default::default()
    };
    assert_eq!(
        s.list_messages(&none, page(1, 10), 10).await.unwrap().total,
        0
    );
    let delivered = MessageFilter {
        status: Some(StatusFilter::Is(Status::Delivered)),
        ..Default::default()
    };
    let p = ids_of(s.list_messages(&delivered, page(1, 1000), 1).await.unwrap());
    assert!(p.contains(&rows_id) && p.contains(&compact_id));
    let listed = s
        .list_messages(
            &MessageFilter {
                receiver: Some("cx-e".into()),
                ..Default::default()
            },
            page(1, 10),
            3,
        )
        .await
        .unwrap();
    for m in &listed.items {
        assert_eq!(m.deliveries.len(), 3, "capped per message");
        assert_eq!(m.delivery_counts.iter().sum::<i64>(), 5, "counts complete");
    }

    // Collect takes members like rows.
    let got = s.collect("cx-d", "websocket", 10).await.unwrap();
    assert_eq!(
        got.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [rows_id.as_str(), compact_id.as_str()]
    );
    assert!(got.iter().all(|i| i.status == Status::Delivered));
    assert_eq!(status_of(s, &compact_id, "cx-d").await, Status::Delivered);
    assert!(s.collect("cx-d", "websocket", 10).await.unwrap().is_empty());

    // Idempotent retries of a broadcast report its deliveries.
    let mut again = broadcast(&people, now);
    again.idempotency = Some(Idempotency {
        key: "compact-key".into(),
        request_hash: "h".into(),
    });
    let first = s.insert_message(again.clone()).await.unwrap();
    assert!(matches!(first, Inserted::New { .. }));
    again.id = new_message_id();
    match s.insert_message(again).await.unwrap() {
        Inserted::Existing { deliveries, .. } => assert_eq!(deliveries, 5),
        other => panic!("{other:?}"),
    }
}

pub async fn compact_audiences_spill_expire_and_delete(store: &Arc<dyn Store>) {
    let s: &dyn Store = store.as_ref();
    let people = ["sp-a", "sp-b", "sp-c"];
    let now = now_ms();
    online(s, &people, now - 1_000).await;
    let mut m = broadcast(&people, now);
    m.expires_at_ms = Some(now + 120_000);
    let (id, _) = insert(s, m).await;
    let seq = seq_of(s, &id).await;
    s.apply_status(vec![
        StatusChange::Delivery {
            delivery_id: member_id(seq, &people, "sp-b"),
            status: Status::Sent,
            error: None,
            count_attempt: true,
        },
        ack(&id, "sp-c", Status::Delivered),
    ])
    .await
    .unwrap();

    // The window ends: the two undelivered members get rows; nothing reads differently.
    let t = timers_of(s, seq, now + 60_000, now + 70_000).await;
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0].kind, TimerKind::Spill);
    let stale = Timer {
        lease_until_ms: now + 1,
        ..t[0].clone()
    };
    assert!(s.spill_audience(&stale, now).await.unwrap().is_none());
    assert_eq!(
        s.spill_audience(&t[0], now + 60_000).await.unwrap(),
        Some(2)
    );
    assert!(
        s.spill_audience(&t[0], now + 60_000)
            .await
            .unwrap()
            .is_none(),
        "once"
    );
    let got = s.get_message(&id).await.unwrap().unwrap();
    assert_eq!(got.deliveries.len(), 3);
    assert_eq!(got.delivery_counts, [1, 1, 1, 0, 0]);
    let b = got
        .deliveries
        .iter()
        .find(|d| d.receiver == "sp-b")
        .unwrap();
    assert_eq!((b.status, b.attempts), (Status::Sent, 1));
    assert!(b.id > 0, "a spilled member is a row now");
    for who in ["sp-a", "sp-b"] {
        let items = s.undelivered(who, "websocket", 0, 10).await.unwrap();
        assert_eq!(items.len(), 1, "{who}");
        assert_eq!(items[0].id, id);
        assert_eq!(s.count_undelivered(who, "websocket").await.unwrap().0, 1);
    }
    // Changes by member id and by ack reach the row now.
    let moved = s
        .apply_status(vec![
            StatusChange::Delivery {
                delivery_id: member_id(seq, &people, "sp-a"),
                status: Status::Sent,
                error: None,
                count_attempt: true,
            },
            ack(&id, "sp-b", Status::Delivered),
        ])
        .await
        .unwrap();
    assert_eq!(moved, [true, true]);
    assert_eq!(status_of(s, &id, "sp-a").await, Status::Sent);
    assert_eq!(status_of(s, &id, "sp-b").await, Status::Delivered);

    // expiresAt fails what is left, rows and members alike.
    let people2 = ["ex-a", "ex-b"];
    online(s, &people2, now - 1_000).await;
    let mut m = broadcast(&people2, now);
    m.expires_at_ms = Some(now + 120_000);
    let (id2, _) = insert(s, m).await;
    s.apply_status(vec![ack(&id2, "ex-a", Status::Delivered)])
        .await
        .unwrap();
    let seq2 = seq_of(s, &id2).await;
    let t = timers_of(s, seq2, now + 120_000, now + 130_000).await;
    let expire = t.iter().find(|t| t.kind == TimerKind::Expire).unwrap();
    let presence = vec!["websocket".to_string()];
    assert_eq!(
        s.expire_message(expire, &presence, now + 120_000)
            .await
            .unwrap(),
        Some(vec![("websocket".to_string(), 1)])
    );
    let got = s.get_message(&id2).await.unwrap().unwrap();
    let b = got
        .deliveries
        .iter()
        .find(|d| d.receiver == "ex-b")
        .unwrap();
    assert_eq!(
        (b.status, b.error.as_deref()),
        (Status::Failed, Some("expired"))
    );
    assert_eq!(status_of(s, &id2, "ex-a").await, Status::Delivered);
    assert!(s
        .undelivered("ex-b", "websocket", 0, 10)
        .await
        .unwrap()
        .is_empty());

    // Delete: gone everywhere; changes for its members match nothing.
    assert!(s.delete_message(&id).await.unwrap());
    assert!(s.get_message(&id).await.unwrap().is_none());
    assert!(s
        .undelivered("sp-a", "websocket", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.apply_status(vec![
            StatusChange::Delivery {
                delivery_id: member_id(seq, &people, "sp-c"),
                status: Status::Read,
                error: None,
                count_attempt: false,
            },
            ack(&id, "sp-a", Status::Delivered),
        ])
        .await
        .unwrap(),
        [false, false]
    );
    assert_eq!(
        s.inbox_entries("sp-c", &listing_query(false, page(1, 10)))
            .await
            .unwrap()
            .total,
        0
    );

    // Presence records of a dead node are closed.
    assert!(s.presence_close_node("node-a", now).await.unwrap() >= 5);
    assert_eq!(s.presence_close_node("node-a", now).await.unwrap(), 0);
}

pub async fn devices_move_between_users(store: &Arc<dyn Store>) {
    let s: &dyn Store = store.as_ref();
    let reg = |user: &str, name: Option<&str>| NewDevice {
        user_id: user.into(),
        platform: "fcm".into(),
        token: "moving-token".into(),
        name: name.map(str::to_owned),
    };
    let first = s
        .register_device(reg("dv-a", Some("Ann's phone")))
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.previous_owner, None);
    let again = s.register_device(reg("dv-a", None)).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.previous_owner, None, "the same user again is no move");
    assert_eq!(
        again.device.name.as_deref(),
        Some("Ann's phone"),
        "kept without a new name"
    );
    let moved = s.register_device(reg("dv-b", None)).await.unwrap();
    assert_eq!(moved.device.id, first.device.id);
    assert_eq!(moved.previous_owner.as_deref(), Some("dv-a"));
    assert_eq!(moved.device.user_id, "dv-b");
    assert_eq!(
        moved.device.name, None,
        "the old owner's label does not travel"
    );
    assert!(s.list_devices("dv-a").await.unwrap().is_empty());
}

fn show(show: inbox::Show) -> inbox::Query {
    inbox::Query {
        show,
        archived: Some(false),
        msg_type: None,
        before: None,
        after: None,
        offset: 0,
        limit: 100,
    }
}

async fn counts(s: &dyn Store, who: &str) -> (u64, u64, u64) {
    let c = s.inbox_counts(who).await.unwrap();
    (c.unseen, c.unread, c.total)
}

async fn mark(s: &dyn Store, who: &str, op: inbox::Op, ids: &[&str]) -> inbox::Marked {
    let ids = ids.iter().map(|i| i.to_string()).collect();
    s.inbox_mark(who, op, inbox::Target::Ids(ids))
        .await
        .unwrap()
}

/// `changed` entries, `moved` delivery statuses.
fn done(changed: u64, moved: u64) -> inbox::Marked {
    inbox::Marked::Done { changed, moved }
}

/// The notification center: flags beside the status, counters, listings, marks by id and
/// for all, unknown ids, broadcast members, retention (docs/api.md §6).
pub async fn inbox_states_counts_and_marks(store: &Arc<dyn Store>) {
    use inbox::{Op, Show, Target};
    let s = store.as_ref();
    let (m1, _) = insert(s, msg(&["ib-1"], "websocket")).await;
    let (m2, _) = insert(s, msg(&["ib-1"], "websocket")).await;
    let (m3, _) = insert(s, msg(&["ib-1", "ib-2"], "websocket")).await;
    let (other, _) = insert(s, msg(&["ib-2"], "websocket")).await;
    // Held (sendAt later) and provider deliveries are not in the inbox.
    let mut held = msg(&["ib-1"], "websocket");
    held.send_at_ms = Some(now_ms() + 3_600_000);
    held.deliveries[0].status = Status::Pending;
    insert(s, held).await;
    insert(s, outbox_msg(&["ib-1"], "email")).await;
    assert_eq!(counts(s, "ib-1").await, (3, 3, 3));
    assert_eq!(counts(s, "nobody").await, (0, 0, 0));

    assert_eq!(mark(s, "ib-1", Op::Seen, &[&m1]).await, done(1, 1));
    assert_eq!(
        mark(s, "ib-1", Op::Seen, &[&m1]).await,
        done(0, 0),
        "idempotent"
    );
    assert_eq!(status_of(s, &m1, "ib-1").await, Status::Delivered);
    assert_eq!(counts(s, "ib-1").await, (2, 3, 3));
    assert_eq!(mark(s, "ib-1", Op::Read, &[&m2]).await, done(1, 1));
    assert_eq!(status_of(s, &m2, "ib-1").await, Status::Read);
    assert_eq!(counts(s, "ib-1").await, (1, 2, 3));
    // Unread: the flag goes, the status stays (forward only), seen stays.
    assert_eq!(mark(s, "ib-1", Op::Unread, &[&m2]).await, done(1, 0));
    assert_eq!(status_of(s, &m2, "ib-1").await, Status::Read);
    assert_eq!(counts(s, "ib-1").await, (1, 3, 3));
    // Archived: out of the counts and the default listing, still unread.
    assert_eq!(mark(s, "ib-1", Op::Archive, &[&m3]).await, done(1, 0));
    assert_eq!(counts(s, "ib-1").await, (0, 2, 2));
    let listed = s.inbox_entries("ib-1", &show(Show::All)).await.unwrap();
    assert_eq!(listed.total, 2);
    assert_eq!(listed.items[0].id, m2, "newest first");
    let flags: Vec<i64> = listed.items.iter().map(|i| i.flags).collect();
    assert_eq!(flags, [inbox::SEEN, inbox::SEEN]);
    let archived = s
        .inbox_entries(
            "ib-1",
            &inbox::Query {
                archived: Some(true),
                ..show(Show::Unread)
            },
        )
        .await
        .unwrap();
    assert_eq!(archived.items.len(), 1);
    assert_eq!(archived.items[0].id, m3);
    assert_eq!(archived.items[0].flags, inbox::ARCHIVED);
    // The other receiver of m3 is untouched.
    assert_eq!(counts(s, "ib-2").await, (2, 2, 2));

    // Unknown ids, another user's ids: nothing changes, every bad id is named.
    let before = counts(s, "ib-1").await;
    assert_eq!(
        mark(s, "ib-1", Op::Read, &[&m1, "no-such-id", &other]).await,
        inbox::Marked::Unknown(vec!["no-such-id".into(), other.clone()])
    );
    assert_eq!(counts(s, "ib-1").await, before);
    assert_eq!(status_of(s, &m1, "ib-1").await, Status::Delivered);

    // Cursors: stable pages newest first, `after` gives what is newer.
    let all = s.inbox_entries("ib-1", &show(Show::All)).await.unwrap();
    let newest = all.items[0].seq;
    let older = s
        .inbox_entries(
            "ib-1",
            &inbox::Query {
                before: Some(newest),
                ..show(Show::All)
            },
        )
        .await
        .unwrap();
    assert_eq!(older.items.len(), 1);
    assert_eq!(older.items[0].id, m1);
    let newer = s
        .inbox_entries(
            "ib-1",
            &inbox::Query {
                after: Some(older.items[0].seq),
                ..show(Show::All)
            },
        )
        .await
        .unwrap();
    assert_eq!(newer.items.len(), 1);
    assert_eq!(newer.items[0].id, m2);

    // Mark all read up to a cursor: one change for everything at or before it.
    let (m4, _) = insert(s, msg(&["ib-1"], "websocket")).await;
    let upto = seq_of(s, &m3).await;
    let marked = s
        .inbox_mark("ib-1", Op::Read, Target::All { before: Some(upto) })
        .await
        .unwrap();
    assert_eq!(
        marked,
        done(3, 2),
        "m1, m2 and the archived m3; m2 was read already"
    );
    assert_eq!(
        status_of(s, &m4, "ib-1").await,
        Status::Pending,
        "after the cursor"
    );
    assert_eq!(counts(s, "ib-1").await, (1, 1, 3));

    // A `read` receipt (the WebSocket frame's status change) reads the entry too.
    s.apply_status(vec![ack(&m4, "ib-1", Status::Read)])
        .await
        .unwrap();
    assert_eq!(counts(s, "ib-1").await, (0, 0, 3));

    // Deleted: gone from the inbox for good; the delivery stays for the sender.
    assert_eq!(mark(s, "ib-1", Op::Delete, &[&m1]).await, done(1, 0));
    assert_eq!(counts(s, "ib-1").await, (0, 0, 2));
    assert_eq!(status_of(s, &m1, "ib-1").await, Status::Read);
    assert!(matches!(
        mark(s, "ib-1", Op::Unread, &[&m1]).await,
        inbox::Marked::Unknown(_)
    ));
    // Deleting the message itself takes its entries (and counts) with it.
    assert!(s.delete_message(&m2).await.unwrap());
    assert_eq!(counts(s, "ib-1").await, (0, 0, 1));

    // Broadcast members: counted and listed without rows; a change gives them one.
    let now = now_ms();
    online(s, &["bm-1", "bm-2"], now - 1_000).await;
    let (b, _) = insert(s, broadcast(&["bm-1", "bm-2"], now)).await;
    let (t, _) = insert(s, msg(&["bm-1"], "websocket")).await;
    assert_eq!(counts(s, "bm-1").await, (2, 2, 2));
    let listed = s.inbox_entries("bm-1", &show(Show::Unread)).await.unwrap();
    assert_eq!(listed.total, 2);
    assert_eq!(listed.items[1].id, b);
    assert_eq!(mark(s, "bm-1", Op::Archive, &[&b]).await, done(1, 0));
    assert_eq!(counts(s, "bm-1").await, (1, 1, 1));
    assert_eq!(
        counts(s, "bm-2").await,
        (1, 1, 1),
        "other members untouched"
    );
    assert_eq!(mark(s, "bm-1", Op::Unarchive, &[&b]).await, done(1, 0));
    assert_eq!(counts(s, "bm-1").await, (2, 2, 2));
    // An ack moves the member's status, not its inbox state.
    assert_eq!(mark(s, "bm-2", Op::Ack, &[&b]).await, done(1, 1));
    assert_eq!(status_of(s, &b, "bm-2").await, Status::Delivered);
    assert_eq!(counts(s, "bm-2").await, (1, 1, 1));
    // Mark all seen reaches members without rows too.
    let all = s
        .inbox_mark("bm-2", Op::Seen, Target::All { before: None })
        .await
        .unwrap();
    assert_eq!(all, done(1, 0));
    assert_eq!(counts(s, "bm-2").await, (0, 1, 1));
    assert_eq!(mark(s, "bm-1", Op::Read, &[&b, &t]).await, done(2, 2));
    assert_eq!(counts(s, "bm-1").await, (0, 0, 2));
    assert_eq!(status_of(s, &b, "bm-1").await, Status::Read);
    assert_eq!(status_of(s, &b, "bm-2").await, Status::Delivered);

    // Retention: old read/archived/deleted entries go; unread ones only when asked.
    let old = now_ms() - 10 * 86_400_000;
    let mut r1 = msg(&["rt-1"], "websocket");
    r1.created_at_ms = old;
    let (r1, _) = insert(s, r1).await;
    let mut r2 = msg(&["rt-1"], "websocket");
    r2.created_at_ms = old;
    insert(s, r2).await;
    let (fresh, _) = insert(s, msg(&["rt-1"], "websocket")).await;
    mark(s, "rt-1", Op::Read, &[&r1, &fresh]).await;
    assert_eq!(counts(s, "rt-1").await, (1, 1, 3));
    let cutoff = now_ms() - 86_400_000;
    assert_eq!(s.inbox_prune(cutoff, false, 100).await.unwrap(), 1);
    assert_eq!(
        counts(s, "rt-1").await,
        (1, 1, 2),
        "the unread old one stays"
    );
    assert_eq!(s.inbox_prune(cutoff, false, 100).await.unwrap(), 0);
    assert_eq!(s.inbox_prune(cutoff, true, 100).await.unwrap(), 1);
    assert_eq!(counts(s, "rt-1").await, (0, 0, 1));
    let left = s.inbox_entries("rt-1", &show(Show::All)).await.unwrap();
    assert_eq!(left.items.len(), 1);
    assert_eq!(left.items[0].id, fresh);
}

// ---------------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------------

fn endpoint(id: &str, events: &[&str], channels: Option<&[&str]>) -> webhook::Endpoint {
    webhook::Endpoint {
        id: id.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        description: String::new(),
        events: webhook::EventType::bits_of(events).unwrap(),
        channels: channels.map(|c| c.iter().map(|s| s.to_string()).collect()),
        types: None,
        senders: None,
        secret: crate::config::Secret::new(format!("whsec_{id}")),
        old_secret: None,
        old_until_ms: None,
        enabled: true,
        disabled_reason: None,
        failing_since_ms: None,
        source: webhook::Source::Api,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

/// Claim everything claimable of `ep` at `now` (lease 30 s).
async fn claim_all(s: &dyn Store, ep: &str, now: i64) -> Vec<webhook::Claimed> {
    s.webhook_claim(now, now + 30_000, vec![(ep.to_string(), 100)])
        .await
        .unwrap()
}

fn hook_outcome(c: &webhook::Claimed, outcome: webhook::Outcome, now: i64) -> webhook::Attempt {
    webhook::Attempt {
        row: c.row,
        endpoint_id: c.endpoint_id.clone(),
        lease_until_ms: c.lease_until_ms,
        at_ms: now,
        latency_ms: 3,
        code: Some(if outcome == webhook::Outcome::Delivered {
            200
        } else {
            503
        }),
        response: Some("ok".into()),
        error: (outcome != webhook::Outcome::Delivered).then(|| "HTTP 503".into()),
        outcome,
    }
}

/// Events are written with the change that causes them (rows, members, devices), one per
/// wanting endpoint, none when none wants them; claims keep order per message; outcomes,
/// retries, the failure streak, redelivery, rotation, config sync and pruning.
pub async fn webhook_events_outbox(s: &Arc<dyn Store>) {
    use webhook::Outcome;
    let s = s.as_ref();
    let now = now_ms();
    // Nobody listens: changes write no events.
    let (quiet, ids) = insert(s, msg(&["u0"], "websocket")).await;
    s.apply_status(vec![ack(&quiet, "u0", Status::Read)])
        .await
        .unwrap();
    assert!(s.webhook_backlog().await.unwrap().is_empty());
    let _ = ids;

    assert!(s
        .webhook_create(endpoint("all", &["*"], None))
        .await
        .unwrap());
    assert!(
        !s.webhook_create(endpoint("all", &["*"], None))
            .await
            .unwrap(),
        "id taken"
    );
    assert!(s
        .webhook_create(endpoint("sms", &["delivery.failed"], Some(&["sms"])))
        .await
        .unwrap());
    let listed = s.webhook_list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].secret.expose(), "whsec_all");

    // A message with a websocket delivery and an sms one born failed.
    let mut m = msg(&["u1"], "websocket");
    m.deliveries.push(NewDelivery {
        receiver: "u2".into(),
        channel: "sms".into(),
        status: Status::Failed,
        error: Some("no_address".into()),
        address: None,
        outbox: false,
    });
    let (id, dids) = insert(s, m).await;
    s.apply_status(vec![ack(&id, "u1", Status::Sent)])
        .await
        .unwrap();
    s.apply_status(vec![ack(&id, "u1", Status::Sent)])
        .await
        .unwrap(); // no move, no event
    let b = s.webhook_backlog().await.unwrap();
    assert_eq!(b["all"].pending, 3, "accepted, failed, sent: {b:?}");
    assert_eq!(b["sms"].pending, 1);

    // Order where it matters: a message's acceptance first, then each delivery's events in
    // order; different deliveries go side by side.
    let c = claim_all(s, "all", now).await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].kind, "message.accepted");
    let data: serde_json::Value = serde_json::from_str(&c[0].data).unwrap();
    assert_eq!(data["messageId"], id.as_str());
    assert_eq!(data["sender"], "lab");
    assert!(
        claim_all(s, "all", now).await.is_empty(),
        "leased and blocking"
    );
    s.webhook_complete(vec![hook_outcome(&c[0], Outcome::Delivered, now)], 0)
        .await
        .unwrap();
    let c = claim_all(s, "all", now).await;
    let kinds: Vec<&str> = c.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["delivery.failed", "delivery.sent"]);
    let data: serde_json::Value = serde_json::from_str(&c[0].data).unwrap();
    assert_eq!(data["recipient"], "u2");
    assert_eq!(data["channel"], "sms");
    assert_eq!(data["reason"], "no_address");
    assert_eq!(data["deliveryId"], dids[1]);
    // The sent event is retried later: its delivery's next event waits for it.
    s.webhook_complete(
        vec![
            hook_outcome(&c[1], Outcome::Retry { at_ms: now + 5_000 }, now),
            hook_outcome(&c[0], Outcome::Delivered, now),
        ],
        now - 60_000,
    )
    .await
    .unwrap();
    s.apply_status(vec![ack(&id, "u1", Status::Delivered)])
        .await
        .unwrap();
    let early = claim_all(s, "all", now + 1_000).await;
    assert!(early.is_empty(), "{early:?}");
    assert!(s.webhook_any_due(now + 6_000).await.unwrap());
    let c = claim_all(s, "all", now + 6_000).await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!((c[0].kind.as_str(), c[0].attempts), ("delivery.sent", 2));
    // A stale lease's outcome changes nothing.
    let mut stale = hook_outcome(&c[0], Outcome::Delivered, now + 6_000);
    stale.lease_until_ms -= 1;
    s.webhook_complete(vec![stale], 0).await.unwrap();
    s.webhook_complete(
        vec![hook_outcome(&c[0], Outcome::Delivered, now + 6_000)],
        0,
    )
    .await
    .unwrap();
    let c = claim_all(s, "all", now + 6_000).await;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].kind, "delivery.delivered");
    s.webhook_complete(
        vec![hook_outcome(&c[0], Outcome::Delivered, now + 6_000)],
        0,
    )
    .await
    .unwrap();
    let attempts = s.webhook_attempts("all", None, 10).await.unwrap();
    assert_eq!(attempts.len(), 5, "the stale outcome is not an attempt");
    assert_eq!(attempts[0].kind, "delivery.delivered");
    assert_eq!(attempts[0].event_state, webhook::DELIVERED);
    assert_eq!(
        (attempts[3].kind.as_str(), attempts[3].code),
        ("delivery.sent", Some(503))
    );
    let older = s
        .webhook_attempts("all", Some(attempts[1].id), 10)
        .await
        .unwrap();
    assert_eq!(older.len(), 3);

    // Broadcast members' moves are events too (rows' ids are positive, members' negative).
    online(s, &["b1", "b2"], now - 1_000).await;
    let (bid, _) = insert(s, broadcast(&["b1", "b2"], now)).await;
    s.apply_status(vec![ack(&bid, "b2", Status::Read)])
        .await
        .unwrap();
    let c = claim_all(s, "all", now + 7_000).await;
    assert_eq!(c.len(), 1, "accepted first: {c:?}");
    // No answer at all: retried in an hour, unless the endpoint answers again before.
    let mut unreached = hook_outcome(
        &c[0],
        Outcome::Retry {
            at_ms: now + 3_600_000,
        },
        now,
    );
    unreached.code = None;
    s.webhook_complete(vec![unreached], 0).await.unwrap();

    // Device deactivation (no message: not held back by anything).
    let dev = s
        .register_device(NewDevice {
            user_id: "u1".into(),
            platform: "fcm".into(),
            token: "tok-1".into(),
            name: None,
        })
        .await
        .unwrap()
        .device
        .id;
    s.deactivate_devices(vec![(dev, "unregistered".into())])
        .await
        .unwrap();
    let c = claim_all(s, "all", now + 7_000).await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].kind, "device.deactivated");
    // It answers: what waited because it could not be reached is due at once.
    s.webhook_complete(
        vec![hook_outcome(&c[0], Outcome::Delivered, now + 7_000)],
        0,
    )
    .await
    .unwrap();
    let c = claim_all(s, "all", now + 7_000).await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].kind, "message.accepted");
    s.webhook_complete(
        vec![hook_outcome(&c[0], Outcome::Delivered, now + 7_000)],
        0,
    )
    .await
    .unwrap();
    let c = claim_all(s, "all", now + 7_000).await;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].kind, "delivery.read");
    let data: serde_json::Value = serde_json::from_str(&c[0].data).unwrap();
    assert_eq!(data["recipient"], "b2");
    assert!(data["deliveryId"].as_i64().unwrap() < 0, "{data}");
    s.webhook_complete(
        vec![hook_outcome(&c[0], Outcome::Delivered, now + 7_000)],
        0,
    )
    .await
    .unwrap();

    // The sms endpoint fails for longer than the limit: disabled, and then gets nothing.
    let c = claim_all(s, "sms", now).await;
    assert_eq!(c.len(), 1);
    let off = s
        .webhook_complete(vec![hook_outcome(&c[0], Outcome::Failed, now)], now + 1)
        .await
        .unwrap();
    assert_eq!(off, vec!["sms".to_string()]);
    let ep = s.webhook_get("sms").await.unwrap().unwrap();
    assert!(!ep.enabled);
    assert!(ep.disabled_reason.unwrap().contains("HTTP 503"));
    assert_eq!(s.webhook_backlog().await.unwrap()["sms"].failed, 1);
    let mut m = msg(&["u3"], "sms");
    m.deliveries[0].status = Status::Failed;
    insert(s, m).await;
    assert_eq!(s.webhook_backlog().await.unwrap()["sms"].pending, 0);
    // Redeliver what failed; enabling clears the streak.
    assert!(s.webhook_set_enabled("sms", true, None).await.unwrap());
    assert_eq!(
        s.webhook_redeliver("sms", webhook::Redeliver::Event(c[0].row))
            .await
            .unwrap(),
        1
    );
    let again = claim_all(s, "sms", now + 8_000).await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].row, again[0].attempts), (c[0].row, 1));
    s.webhook_complete(
        vec![hook_outcome(&again[0], Outcome::Delivered, now + 8_000)],
        0,
    )
    .await
    .unwrap();
    assert!(s
        .webhook_get("sms")
        .await
        .unwrap()
        .unwrap()
        .failing_since_ms
        .is_none());
    let n = s
        .webhook_redeliver(
            "all",
            webhook::Redeliver::Range {
                since_ms: 0,
                until_ms: i64::MAX,
            },
        )
        .await
        .unwrap();
    assert!(n >= 5, "{n}");

    // Rotation keeps the old secret beside the new one until the overlap ends.
    let new = crate::config::Secret::new("whsec_new");
    assert!(s.webhook_rotate("all", new, now + 60_000).await.unwrap());
    let ep = s.webhook_get("all").await.unwrap().unwrap();
    let secrets: Vec<&str> = ep.signing_secrets(now).iter().map(|s| s.expose()).collect();
    assert_eq!(secrets, ["whsec_new", "whsec_all"]);
    assert_eq!(ep.signing_secrets(now + 60_000).len(), 1);
    // Update changes the filters, not the secret or state.
    let mut up = endpoint("all", &["message.accepted"], None);
    up.url = "http://127.0.0.1:9/changed".into();
    assert!(s.webhook_update(up).await.unwrap());
    let ep = s.webhook_get("all").await.unwrap().unwrap();
    assert_eq!(
        (ep.url.as_str(), ep.events),
        ("http://127.0.0.1:9/changed", 1)
    );
    assert_eq!(ep.secret.expose(), "whsec_new");

    // Config endpoints: upserted, and removed when no longer listed.
    let mut cfg = endpoint("cfg", &["*"], None);
    cfg.source = webhook::Source::Config;
    s.webhook_sync_config(vec![cfg.clone()]).await.unwrap();
    cfg.url = "http://127.0.0.1:9/v2".into();
    s.webhook_sync_config(vec![cfg]).await.unwrap();
    let ep = s.webhook_get("cfg").await.unwrap().unwrap();
    assert_eq!(
        (ep.url.as_str(), ep.source),
        ("http://127.0.0.1:9/v2", webhook::Source::Config)
    );
    s.webhook_sync_config(vec![]).await.unwrap();
    assert!(s.webhook_get("cfg").await.unwrap().is_none());
    assert!(
        s.webhook_get("all").await.unwrap().is_some(),
        "API endpoints stay"
    );

    assert!(
        s.webhook_any_due(now + 60_000).await.unwrap(),
        "redelivered"
    );
    assert!(s
        .webhook_set_enabled("all", false, Some("paused".into()))
        .await
        .unwrap());
    assert!(
        !s.webhook_any_due(now + 60_000).await.unwrap(),
        "a disabled one is not due"
    );
    let ep = s.webhook_get("all").await.unwrap().unwrap();
    assert_eq!(
        (ep.enabled, ep.disabled_reason.as_deref()),
        (false, Some("paused"))
    );

    // Pruning takes finished events; deleting an endpoint takes its events.
    assert!(s.webhook_prune(now + 3_600_000, 1_000).await.unwrap() >= 1);
    assert!(s.webhook_delete("all").await.unwrap());
    assert!(!s.webhook_delete("all").await.unwrap());
    assert!(!s.webhook_backlog().await.unwrap().contains_key("all"));
}
