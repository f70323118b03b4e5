//! The notification center through the real server (docs/api.md §6): states and counts
//! synced to every session of a user, mark-all on 10,000 messages, cursors, bad input,
//! admin routes and retention.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn user_call(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    app.request(method, path, Some(token), body.as_ref()).await
}

async fn counts(app: &TestApp, token: &str) -> Value {
    let (status, body) = user_call(app, token, Method::GET, "/api/v1/inbox/counts", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn c(unseen: u64, unread: u64, total: u64) -> Value {
    json!({"unseen": unseen, "unread": unread, "total": total})
}

#[tokio::test]
async fn states_and_counts_reach_every_session_of_the_user_at_once() {
    let app = spawn_app().await;
    let m1 = send_ok(&app, msg("first", &["alice"])).await;
    let m2 = send_ok(&app, msg("second", &["alice"])).await;
    let alice = app.token("alice");

    let (mut a, welcome) = ws_login(&app, &alice).await;
    assert_eq!(welcome["counts"], c(2, 2, 2), "{welcome}");
    let (mut b, welcome) = ws_login(&app, &alice).await;
    assert_eq!(welcome["counts"], c(2, 2, 2));
    let (mut bob, welcome) = ws_login(&app, &app.token("bob")).await;
    assert_eq!(welcome["counts"], c(0, 0, 0));

    // A change over REST reaches both sessions: the state, then the counts.
    let (status, body) = user_call(
        &app,
        &alice,
        Method::POST,
        "/api/v1/inbox/read",
        Some(json!({"ids": [m1]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"changed": 1, "counts": c(1, 1, 2)}));
    for ws in [&mut a, &mut b] {
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
    assert_eq!(
        app.delivery_status(&m1, "alice").await.as_deref(),
        Some("read")
    );

    // An old client's `read` frame is the same change: the other session hears of it.
    a.send_json(json!({"type": "read", "id": m2})).await;
    for ws in [&mut a, &mut b] {
        let state = ws.next_control().await;
        assert_eq!(state["ids"], json!([m2]));
        assert_eq!(state["read"], true);
        assert_eq!(ws.next_control().await["unread"], 0);
    }
    assert_eq!(counts(&app, &alice).await, c(0, 0, 2));

    // Unread, then archive: flags only; the delivery stays `read`.
    let (status, _) = user_call(
        &app,
        &alice,
        Method::POST,
        "/api/v1/inbox/unread",
        Some(json!({"ids": [m2]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for ws in [&mut a, &mut b] {
        assert_eq!(
            ws.next_control().await,
            json!({"type": "state", "ids": [m2], "read": false})
        );
        assert_eq!(ws.next_control().await["unread"], 1);
    }
    assert_eq!(
        app.delivery_status(&m2, "alice").await.as_deref(),
        Some("read")
    );

    // A new message arrives live with a cursor-less frame; the client counts it itself.
    let m3 = send_ok(&app, msg("third", &["alice"])).await;
    let live = a.next_message().await;
    assert_eq!(live["id"], m3.as_str());
    assert_eq!(counts(&app, &alice).await, c(1, 2, 3));

    // Mark all seen up to a cursor: one frame for all.
    let (_, page) = user_call(
        &app,
        &alice,
        Method::GET,
        "/api/v1/inbox?status=all&limit=10",
        None,
    )
    .await;
    let newest = page["items"][0]["cursor"].as_str().unwrap().to_owned();
    assert_eq!(page["items"][0]["id"], m3.as_str());
    let (status, body) = user_call(
        &app,
        &alice,
        Method::POST,
        "/api/v1/inbox/seen",
        Some(json!({"all": true, "before": newest})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["counts"], c(0, 2, 3));
    assert_eq!(
        b.next_control().await,
        json!({"type": "state", "all": true, "before": newest, "seen": true})
    );
    // Bob heard nothing of Alice's inbox.
    bob.expect_no_message(QUIET).await;
    // The reads count as delivery transitions, as acks through the status writer do (the
    // statistics and the dashboard's chart).
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("herald_deliveries_total{channel=\"websocket\",status=\"read\"} 2"),
        "{metrics}"
    );
    let (_, stats) = app.api_get("/api/v1/stats/deliveries").await;
    let read: u64 = stats["channels"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["channel"] == "websocket"))
        .and_then(|c| c["series"]["read"].as_array())
        .map(|a| a.iter().filter_map(Value::as_u64).sum())
        .unwrap_or_default();
    assert_eq!(read, 2, "{stats}");
}

#[tokio::test]
async fn listing_filters_and_cursors_stay_stable_while_messages_arrive() {
    let app = spawn_app().await;
    let alice = app.token("alice");
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut body = msg(&format!("m{i}"), &["alice"]);
        body["type"] = json!(if i % 2 == 0 { 1 } else { 2 });
        ids.push(send_ok(&app, body).await);
    }
    let get = |q: String| {
        let (app, alice) = (&app, &alice);
        async move {
            let (status, body) =
                user_call(app, alice, Method::GET, &format!("/api/v1/inbox?{q}"), None).await;
            assert_eq!(status, StatusCode::OK, "{q}: {body}");
            body
        }
    };
    let first = get("status=all&limit=2".into()).await;
    assert_eq!(first["total"], 5);
    assert_eq!(first["items"][0]["id"], ids[4].as_str());
    assert_eq!(first["items"][0]["seen"], false);
    let cursor = first["nextCursor"].as_str().unwrap().to_owned();
    // New messages do not shift the next page.
    send_ok(&app, msg("late", &["alice"])).await;
    let second = get(format!("status=all&limit=2&before={cursor}")).await;
    let got: Vec<&str> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let last = get(format!(
        "status=all&limit=2&before={}",
        second["nextCursor"].as_str().unwrap()
    ))
    .await;
    assert_eq!(last["items"].as_array().unwrap().len(), 1);
    assert_eq!(last["nextCursor"], Value::Null);
    // `after` gives what is newer than a cursor.
    let newer = get(format!("status=all&limit=10&after={cursor}")).await;
    assert_eq!(newer["items"].as_array().unwrap().len(), 2);
    // Type and state filters.
    assert_eq!(get("status=all&type=2".into()).await["total"], 2);
    user_call(
        &app,
        &alice,
        Method::POST,
        "/api/v1/inbox/archive",
        Some(json!({"ids": [ids[0]]})),
    )
    .await;
    assert_eq!(get("status=unread".into()).await["total"], 5);
    assert_eq!(get("status=all&archived=true".into()).await["total"], 1);
    assert_eq!(get("status=all&archived=any".into()).await["total"], 6);
    // The default is still "undelivered" (clients written before the notification center).
    assert_eq!(get(String::new()).await["total"], 5);
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let app = spawn_app().await;
    let alice = app.token("alice");
    let mine = send_ok(&app, msg("mine", &["alice"])).await;
    let bobs = send_ok(&app, msg("bob's", &["bob"])).await;
    let before = counts(&app, &alice).await;

    let post = |op: &'static str, body: Value| {
        let (app, alice) = (&app, &alice);
        async move {
            user_call(
                app,
                alice,
                Method::POST,
                &format!("/api/v1/inbox/{op}"),
                Some(body),
            )
            .await
        }
    };
    // Unknown ids and another user's ids: 422 naming them, nothing changed.
    let (status, body) = post("read", json!({"ids": [mine, "no-such-message", bobs]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = assert_error_body(&body);
    assert!(
        error.contains("no-such-message") && error.contains(&bobs),
        "{error}"
    );
    assert_eq!(body["field"], "ids");
    assert_eq!(counts(&app, &alice).await, before);
    assert_eq!(
        app.delivery_status(&mine, "alice").await.as_deref(),
        Some("pending")
    );
    assert_eq!(
        app.delivery_status(&bobs, "bob").await.as_deref(),
        Some("pending")
    );

    // 100,000 ids: over the body limit.
    let many: Vec<String> = (0..100_000)
        .map(|i| format!("0198a3c2-e4b0-7d1f-8a2b-{i:012}"))
        .collect();
    let (status, body) = post("read", json!({ "ids": many })).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // More than 1,000 that fit: 422, use `all`.
    let (status, body) = post("read", json!({"ids": many[..1001]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(assert_error_body(&body).contains("at most 1000"));

    for (body, field) in [
        (json!({}), "ids"),
        (json!({"ids": []}), "ids"),
        (json!({"ids": [mine], "all": true}), "all"),
        (json!({"ids": [mine], "before": "1"}), "before"),
        (json!({"ids": [""]}), "ids"),
        (json!({"ids": "x"}), "ids"),
        (json!({"all": true, "before": "yesterday"}), "before"),
        (json!({"all": true, "limit": 3}), "limit"),
    ] {
        let (status, resp) = post("archive", body.clone()).await;
        assert!(status.is_client_error(), "{body}: {status} {resp}");
        assert_ne!(status, StatusCode::NOT_FOUND);
        let error = assert_error_body(&resp);
        assert!(
            resp["field"] == field || error.contains(field),
            "{body}: {resp}"
        );
    }
    let (status, _) = post("explode", json!({"ids": [mine]})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for q in [
        "status=bogus",
        "archived=maybe",
        "before=x",
        "type=x",
        "limit=0",
        "before=1&after=2",
        "limit=5&page=2",
    ] {
        let (status, body) = user_call(
            &app,
            &alice,
            Method::GET,
            &format!("/api/v1/inbox?{q}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
        assert_error_body(&body);
    }
    // Tokens and keys are not interchangeable.
    let (status, _) = app.api(Method::GET, "/api/v1/inbox/counts", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = user_call(
        &app,
        &alice,
        Method::GET,
        "/api/v1/recipients/alice/inbox/counts",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(counts(&app, &alice).await, before);
}

#[tokio::test]
async fn delete_and_admin_routes_work_on_one_users_inbox() {
    let app = spawn_app().await;
    let alice = app.token("alice");
    let m1 = send_ok(&app, msg("one", &["alice"])).await;
    let m2 = send_ok(&app, msg("two", &["alice", "bob"])).await;

    let (status, body) = app.api_get("/api/v1/recipients/alice/inbox/counts").await;
    assert_eq!((status, body), (StatusCode::OK, c(2, 2, 2)));
    let (status, body) = app
        .api(
            Method::POST,
            "/api/v1/recipients/alice/inbox/archive",
            Some(&json!({"ids": [m1]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["counts"], c(1, 1, 1));
    let (_, listed) = app
        .api_get("/api/v1/recipients/alice/inbox?status=all&archived=true")
        .await;
    assert_eq!(listed["items"][0]["id"], m1.as_str());
    assert_eq!(listed["items"][0]["archived"], true);

    // The user deletes their copy: gone from their inbox, still tracked for the sender.
    let (status, _) = user_call(
        &app,
        &alice,
        Method::DELETE,
        &format!("/api/v1/inbox/{m2}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = user_call(
        &app,
        &alice,
        Method::DELETE,
        &format!("/api/v1/inbox/{m2}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(counts(&app, &alice).await, c(0, 0, 0));
    assert_eq!(counts(&app, &app.token("bob")).await, c(1, 1, 1));
    assert!(app.delivery_status(&m2, "alice").await.is_some());
    let (status, _) = app
        .api(
            Method::DELETE,
            &format!("/api/v1/recipients/bob/inbox/{m2}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(counts(&app, &app.token("bob")).await, c(0, 0, 0));
}

/// Mark-all-read on 10,000 messages is one call and one statement (its time goes to
/// BENCHMARKS.md from a release build; here it is only printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_all_read_on_ten_thousand_messages_in_one_call() {
    const N: usize = 10_000;
    let app = spawn_app().await;
    let alice = app.token("alice");
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url, key, sent) = (
            app.client.clone(),
            app.url("/api/v1/messages"),
            app.api_key.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < N {
                let resp = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"title": "t", "content": "c", "receivers": ["alice"]}))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(resp.status(), StatusCode::ACCEPTED);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counts(&app, &alice).await, c(N as u64, N as u64, N as u64));
    let (mut ws, _) = ws_login(&app, &alice).await;
    let started = Instant::now();
    let (status, body) = user_call(
        &app,
        &alice,
        Method::POST,
        "/api/v1/inbox/read",
        Some(json!({"all": true})),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"changed": N, "counts": c(0, 0, N as u64)}));
    eprintln!("mark-all-read on {N} messages: {took:?}");
    let state = ws.next_control().await;
    assert_eq!(state["all"], true);
    assert_eq!(ws.next_control().await["unread"], 0);
    let (_, page) = user_call(
        &app,
        &alice,
        Method::GET,
        "/api/v1/inbox?status=unread",
        None,
    )
    .await;
    assert_eq!(page["total"], 0);
}

#[tokio::test]
async fn retention_removes_old_read_entries_and_keeps_unread_ones() {
    let app = spawn_app_with(|s| {
        s.inbox.retention = Some(Duration::from_millis(1));
        s.inbox.retention_interval = Duration::from_millis(50);
        s.inbox.retention_batch = 1;
    })
    .await;
    let alice = app.token("alice");
    let read = send_ok(&app, msg("read", &["alice"])).await;
    let archived = send_ok(&app, msg("archived", &["alice"])).await;
    let unread = send_ok(&app, msg("unread", &["alice"])).await;
    for (op, id) in [("read", &read), ("archive", &archived)] {
        let (status, _) = user_call(
            &app,
            &alice,
            Method::POST,
            &format!("/api/v1/inbox/{op}"),
            Some(json!({"ids": [id]})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    wait_until(
        DEADLINE,
        "retention removed the read and archived entries",
        || async {
            let (_, page) = user_call(
                &app,
                &alice,
                Method::GET,
                "/api/v1/inbox?status=all&archived=any",
                None,
            )
            .await;
            page["total"] == 1
        },
    )
    .await;
    let (_, page) = user_call(&app, &alice, Method::GET, "/api/v1/inbox?status=all", None).await;
    assert_eq!(page["items"][0]["id"], unread.as_str());
    assert_eq!(counts(&app, &alice).await, c(1, 1, 1));
}
