//! Broadcasts stored as one compact audience (ARCHITECTURE.md, "Compact audiences"): every
//! member's status is tracked and read back exactly as a delivery row's would be — by
//! the message's `GET`, the list filters, the inbox, replay and the welcome frame's
//! `pending` — before and after the audience window gives undelivered members rows.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

const WINDOW: Duration = Duration::from_secs(30);

async fn broadcast(app: &TestApp, title: &str) -> String {
    let (status, resp) = send(
        app,
        json!({"title": title, "content": "to everyone online"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    resp["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_of_a_broadcast_is_tracked_replayed_and_listed() {
    let app = spawn_app_clock(
        |s| s.database.audience_window = WINDOW,
        Some(herald::clock::ManualClock::default()),
    )
    .await;
    let (mut ann, _) = ws_login(&app, &app.token("ann")).await;
    let (mut ben, _) = ws_login(&app, &app.token("ben")).await;
    let (mut cat, _) = ws_login(&app, &app.token("cat")).await;

    let (status, resp) = send(&app, json!({"title": "all", "content": "everyone"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["deliveries"], 3, "{resp}");
    let id = resp["id"].as_str().expect("id").to_owned();

    // Everyone gets it live; ann acks, ben reads it and goes away, cat never answers.
    for ws in [&mut ann, &mut ben, &mut cat] {
        assert_eq!(ws.next_message().await["id"], id.as_str());
    }
    ann.ack(&id).await;
    app.wait_status(&id, "ann", &["delivered"]).await;
    app.wait_status(&id, "ben", &["sent"]).await;
    app.wait_status(&id, "cat", &["sent"]).await;
    ben.close().await;

    let msg = app.message(&id).await;
    assert_eq!(msg["deliveries"].as_array().map(Vec::len), Some(3), "{msg}");
    let ann_delivery = delivery_of(&msg, "ann").expect("ann");
    assert_eq!(ann_delivery["channel"], "websocket");
    assert_eq!(ann_delivery["attempts"], 1, "{msg}");
    rfc3339(&ann_delivery["updatedAt"], "a member's own change time");

    // Ben comes back: the welcome counts it, the replay brings it, his ack lands.
    let (mut ben, welcome) = ws_login(&app, &app.token("ben")).await;
    assert_eq!(welcome["pending"], 1, "{welcome}");
    assert_eq!(ben.next_message().await["id"], id.as_str());
    ben.ack(&id).await;
    app.wait_status(&id, "ben", &["delivered"]).await;

    // Acks by others, or for someone else, change nothing.
    cat.send_json(json!({"type": "read", "id": "not-a-message"}))
        .await;
    let (status, list) = app.api_get("/api/v1/messages?receiver=ann").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 1, "the list filter finds members: {list}");
    let (_, none) = app.api_get("/api/v1/messages?receiver=dan").await;
    assert_eq!(none["total"], 0, "{none}");
    let (_, sent) = app
        .api_get("/api/v1/messages?receiver=cat&status=sent")
        .await;
    assert_eq!(sent["total"], 1, "{sent}");

    // The members' own inboxes.
    for (user, expect) in [("ann", "delivered"), ("cat", "sent")] {
        let resp = app
            .client
            .get(app.url("/api/v1/inbox?status=all"))
            .bearer_auth(app.token(user))
            .send()
            .await
            .expect("inbox");
        let (status, inbox) = read_response(resp).await;
        assert_eq!(status, StatusCode::OK, "{inbox}");
        assert_eq!(inbox["total"], 1, "{user}: {inbox}");
        assert_eq!(inbox["items"][0]["id"], id.as_str());
        assert_eq!(inbox["items"][0]["status"], expect, "{user}: {inbox}");
    }

    // The window ends: cat's still-undelivered entry becomes a row; nothing reads
    // differently, and her ack after a reconnect still lands.
    app.advance(WINDOW + Duration::from_secs(1));
    wait_until(DEADLINE, "cat's entry spilled to a row", || async {
        let resp = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .expect("metrics");
        let text = resp.text().await.expect("metrics text");
        text.lines()
            .any(|l| l == "herald_broadcast_members_spilled_total 1")
    })
    .await;
    cat.close().await;
    let (mut cat, welcome) = ws_login(&app, &app.token("cat")).await;
    assert_eq!(welcome["pending"], 1, "{welcome}");
    assert_eq!(cat.next_message().await["id"], id.as_str());
    cat.ack(&id).await;
    app.wait_status(&id, "cat", &["delivered"]).await;
    let msg = app.message(&id).await;
    for user in ["ann", "ben", "cat"] {
        assert_eq!(
            delivery_of(&msg, user).expect("member")["status"],
            "delivered",
            "{msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_survives_a_restart_with_its_statuses() {
    let mut app = spawn_app().await;
    let (mut ann, _) = ws_login(&app, &app.token("ann")).await;
    let (mut ben, _) = ws_login(&app, &app.token("ben")).await;
    let id = broadcast(&app, "before restart").await;
    assert_eq!(ann.next_message().await["id"], id.as_str());
    assert_eq!(ben.next_message().await["id"], id.as_str());
    ann.ack(&id).await;
    app.wait_status(&id, "ann", &["delivered"]).await;
    drop(ann);
    drop(ben);
    app.restart().await;
    let msg = app.message(&id).await;
    assert_eq!(
        delivery_of(&msg, "ann").expect("ann")["status"],
        "delivered"
    );
    // Ben never acked: replayed after the restart.
    let (mut ben, welcome) = ws_login(&app, &app.token("ben")).await;
    assert_eq!(welcome["pending"], 1, "{welcome}");
    assert_eq!(ben.next_message().await["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_broadcast_is_never_replayed() {
    let app = spawn_app().await;
    let (ann, _) = ws_login(&app, &app.token("ann")).await;
    let id = broadcast(&app, "oops").await;
    ann.close().await;
    let (status, _) = app
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/messages/{id}"),
            Some(&app.api_key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (mut ann, welcome) = ws_login(&app, &app.token("ann")).await;
    assert_eq!(welcome["pending"], 0, "{welcome}");
    ann.expect_no_message(QUIET).await;
}

/// Fan-out admission control: a session that stops reading fills its socket, then its
/// queue; once the frames queued for this node average more than `fanout_backlog` per
/// session, sends are refused with `503` + `Retry-After` — nothing stored — and every send
/// that got a `202` is still delivered (here by replay, after the reader returns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_backlog_refuses_sends_and_loses_nothing_accepted() {
    let app = spawn_app_with(|s| {
        s.dispatch.fanout_backlog = 1;
        s.websocket.queue_capacity = 64;
        // The stalled client must be refused, not closed for silence, during the test.
        s.websocket.first_frame_timeout = Duration::from_secs(60);
        s.websocket.pong_timeout = Duration::from_secs(60);
        s.websocket.ping_interval = Duration::from_secs(30);
        s.websocket.write_timeout = Duration::from_secs(60);
    })
    .await;
    let (stalled, _) = ws_login(&app, &app.token("slow")).await; // never read again
    let big = "x".repeat(256 * 1024);
    let (mut accepted, mut refused) = (Vec::new(), None);
    for i in 0..200 {
        let resp = app
            .client
            .post(app.url("/api/v1/messages"))
            .bearer_auth(&app.api_key)
            .json(&json!({"title": format!("big {i}"), "content": big, "receivers": ["slow"]}))
            .send()
            .await
            .expect("send");
        let retry = resp.headers().get("retry-after").cloned();
        let (status, body) = read_response(resp).await;
        match status {
            StatusCode::ACCEPTED => accepted.push(body["id"].as_str().expect("id").to_owned()),
            StatusCode::SERVICE_UNAVAILABLE => {
                refused = Some((retry, body));
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let (retry, body) = refused.expect("the backlog never refused a send");
    assert!(retry.is_some(), "503 without Retry-After: {body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("nothing was stored")),
        "{body}"
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("herald_sends_refused_total{reason=\"backlog\"}")
                && !l.ends_with(" 0")
        ),
        "not counted"
    );
    let (_, list) = app.api_get("/api/v1/messages?size=1").await;
    assert_eq!(
        list["total"].as_u64(),
        Some(accepted.len() as u64),
        "a refused send was stored"
    );
    // The reader comes back: everything accepted arrives.
    drop(stalled);
    let (mut ws, welcome) = ws_login(&app, &app.token("slow")).await;
    let pending = welcome["pending"].as_u64().expect("pending") as usize;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < accepted.len() {
        let m = ws.next_message().await;
        got.insert(m["id"].as_str().expect("id").to_owned());
    }
    assert!(pending <= accepted.len());
    for id in &accepted {
        assert!(got.contains(id), "{id} was accepted but never delivered");
    }
}
