//! Management API (docs/api.md §3–§5, §7), inbox (§6), seed routes (§8), operations (§9), input
//! validation and persistence across a restart.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use herald_channel::testkit::ScriptedChannel;
use herald_channel::{AddressKind, BuildContext, Channel, ChannelDescriptor, ConfigError};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

// A channel kind that accepts everything, so messages can be routed to a second channel
// instance ("audit") next to websocket. Registered the way any plugin registers.
fn build_null(_ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    Ok(Arc::new(ScriptedChannel::default()))
}

inventory::submit! {
    ChannelDescriptor {
        kind: "test.null",
        summary: "accepts every delivery (integration tests)",
        address: AddressKind::None,
        presence: false,
        build: build_null,
    }
}

fn ids(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {items}"))
        .iter()
        .map(|m| {
            m["id"]
                .as_str()
                .unwrap_or_else(|| panic!("item without id: {m}"))
                .to_owned()
        })
        .collect()
}

/// Items of a list response. The paged form `{"items":[…]}` is what §4 defines; a bare array
/// is tolerated for the inbox/collect answers, whose shape §5 leaves open.
fn items_of(body: &Value) -> Vec<String> {
    if body.is_array() {
        ids(body)
    } else {
        ids(&body["items"])
    }
}

/// `GET path` with the API key; asserts 200 and returns `items` ids, checking `total`.
async fn list(app: &TestApp, path: &str) -> Vec<String> {
    let (status, body) = app.api_get(path).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    let got = ids(&body["items"]);
    assert_eq!(
        body["total"].as_u64(),
        Some(got.len() as u64),
        "GET {path}: total: {body}"
    );
    got
}

fn s(v: &[&String]) -> Vec<String> {
    v.iter().map(|x| (*x).clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_api_needs_the_api_key() {
    let app = spawn_app().await;
    let user_token = app.token("alice");
    let body = msg("x", &["alice"]);
    let routes: Vec<(Method, &str, Option<&Value>)> = vec![
        (Method::POST, "/api/v1/messages", Some(&body)),
        (Method::GET, "/api/v1/messages", None),
        (
            Method::GET,
            "/api/v1/messages/00000000-0000-0000-0000-000000000000",
            None,
        ),
        (
            Method::DELETE,
            "/api/v1/messages/00000000-0000-0000-0000-000000000000",
            None,
        ),
        (Method::GET, "/api/v1/clients", None),
        (Method::GET, "/api/v1/channels", None),
        (Method::POST, "/message/sendMessage", Some(&body)),
        (
            Method::GET,
            "/message/getMessagePage?pageNum=1&pageSize=10",
            None,
        ),
        (Method::GET, "/message/getWebSocketClients", None),
        (Method::POST, "/message/deleteMessageById?id=x", None),
    ];
    let wrong = format!("{}x", app.api_key);
    for (method, path, body) in &routes {
        for (label, auth) in [
            ("no credential", None),
            ("wrong key", Some(wrong.as_str())),
            ("user token", Some(user_token.as_str())),
        ] {
            let (status, resp) = app.request(method.clone(), path, auth, *body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {label}: {resp}"
            );
            assert_error_body(&resp);
        }
    }
    // A bare key without the Bearer scheme is not accepted either.
    let resp = app
        .client
        .get(app.url("/api/v1/messages"))
        .header("authorization", app.api_key.clone())
        .send()
        .await
        .expect("request");
    let (status, resp) = read_response(resp).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{resp}");

    assert_eq!(
        app.total().await,
        0,
        "an unauthenticated send stored something"
    );
    let (status, _) = app.api_get("/api/v1/messages").await;
    assert_eq!(status, StatusCode::OK, "the right key is accepted");
}

// ---------------------------------------------------------------------------------------------
// Send / list / get / delete
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_stores_message_with_defaults() {
    let app = spawn_app().await;
    let (status, resp) = send(
        &app,
        json!({"title": "hi", "content": "there", "receivers": ["alice", "bob"]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["deliveries"], 2, "{resp}");
    let id = resp["id"].as_str().expect("id");
    let m = app.message(id).await;
    assert_eq!(m["id"], id);
    assert_eq!(m["title"], "hi");
    assert_eq!(m["content"], "there");
    assert_eq!(m["type"], 0, "type defaults to 0: {m}");
    assert!(m["sender"].is_string(), "{m}");
    rfc3339(&m["createdAt"], "createdAt");
    let deliveries = m["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 2, "{m}");
    for d in deliveries {
        assert_eq!(
            d["channel"], "websocket",
            "channels default to websocket: {m}"
        );
        assert_eq!(
            d["status"], "pending",
            "offline receivers stay pending: {m}"
        );
        assert!(d["attempts"].is_number(), "{d}");
        rfc3339(&d["updatedAt"], "updatedAt");
    }
    let receivers: BTreeSet<&str> = deliveries
        .iter()
        .map(|d| d["receiver"].as_str().unwrap())
        .collect();
    assert_eq!(receivers, BTreeSet::from(["alice", "bob"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_newest_first() {
    let app = spawn_app().await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(send_ok(&app, msg(&format!("m{i}"), &["alice"])).await);
    }
    let newest_first: Vec<String> = sent.iter().rev().cloned().collect();

    let (status, body) = app.api_get("/api/v1/messages?page=1&size=2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["page"], 1, "{body}");
    assert_eq!(body["size"], 2, "{body}");
    assert_eq!(body["total"], 5, "{body}");
    assert_eq!(ids(&body["items"]), newest_first[0..2].to_vec());
    let first = &body["items"][0];
    assert_eq!(first["title"], "m4");
    assert!(
        first["deliveries"].is_array(),
        "list items are full messages: {first}"
    );

    let (_, body) = app.api_get("/api/v1/messages?page=2&size=2").await;
    assert_eq!(body["page"], 2, "{body}");
    assert_eq!(ids(&body["items"]), newest_first[2..4].to_vec());
    let (_, body) = app.api_get("/api/v1/messages?page=3&size=2").await;
    assert_eq!(ids(&body["items"]), newest_first[4..5].to_vec());
    let (_, body) = app.api_get("/api/v1/messages?page=4&size=2").await;
    assert_eq!(
        ids(&body["items"]),
        Vec::<String>::new(),
        "past the end: {body}"
    );
    assert_eq!(body["total"], 5);

    // Defaults: page 1, size 20.
    let (status, body) = app.api_get("/api/v1/messages").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["page"], 1, "{body}");
    assert_eq!(body["size"], 20, "{body}");
    assert_eq!(ids(&body["items"]), newest_first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_status_receiver_sender_and_type() {
    let app = spawn_app().await;
    let (mut alice, _) = ws_login(&app, &app.token("alice")).await;

    // m1: alice (online), type 1, sender billing → delivered after ack
    let m1 = send_ok(&app, json!({"title": "m1", "content": "c", "type": 1, "sender": "billing", "receivers": ["alice"]})).await;
    assert_eq!(alice.next_message().await["id"], m1.as_str());
    alice.ack(&m1).await;
    app.wait_status(&m1, "alice", &["delivered"]).await;
    // m2: bob (offline), type 2, sender ops → pending
    let m2 = send_ok(
        &app,
        json!({"title": "m2", "content": "c", "type": 2, "sender": "ops", "receivers": ["bob"]}),
    )
    .await;
    // m3: alice + bob, type 1, sender ops → alice sent, bob pending
    let m3 = send_ok(&app, json!({"title": "m3", "content": "c", "type": 1, "sender": "ops", "receivers": ["alice", "bob"]})).await;
    assert_eq!(alice.next_message().await["id"], m3.as_str());
    app.wait_status(&m3, "alice", &["sent"]).await;

    let base = "/api/v1/messages?page=1&size=20";
    assert_eq!(list(&app, base).await, s(&[&m3, &m2, &m1]));
    assert_eq!(
        list(&app, &format!("{base}&receiver=alice")).await,
        s(&[&m3, &m1])
    );
    assert_eq!(
        list(&app, &format!("{base}&receiver=bob")).await,
        s(&[&m3, &m2])
    );
    assert_eq!(list(&app, &format!("{base}&receiver=nobody")).await, s(&[]));
    assert_eq!(
        list(&app, &format!("{base}&sender=ops")).await,
        s(&[&m3, &m2])
    );
    assert_eq!(
        list(&app, &format!("{base}&sender=billing")).await,
        s(&[&m1])
    );
    assert_eq!(list(&app, &format!("{base}&type=1")).await, s(&[&m3, &m1]));
    assert_eq!(list(&app, &format!("{base}&type=2")).await, s(&[&m2]));
    assert_eq!(list(&app, &format!("{base}&type=9")).await, s(&[]));
    assert_eq!(
        list(&app, &format!("{base}&status=delivered")).await,
        s(&[&m1])
    );
    assert_eq!(
        list(&app, &format!("{base}&status=pending")).await,
        s(&[&m3, &m2])
    );
    assert_eq!(list(&app, &format!("{base}&status=sent")).await, s(&[&m3]));
    assert_eq!(list(&app, &format!("{base}&status=read")).await, s(&[]));
    // Filters combine.
    assert_eq!(
        list(&app, &format!("{base}&receiver=bob&type=2")).await,
        s(&[&m2])
    );
    assert_eq!(
        list(&app, &format!("{base}&sender=ops&status=sent")).await,
        s(&[&m3])
    );
    // Paging applies after filtering.
    let (_, body) = app
        .api_get("/api/v1/messages?page=1&size=1&receiver=bob")
        .await;
    assert_eq!(body["total"], 2, "{body}");
    assert_eq!(ids(&body["items"]), s(&[&m3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_channel() {
    let app = spawn_app_with(|s| {
        s.channels = serde_json::from_value(json!({"audit": {"kind": "test.null"}}))
            .expect("channel instance table");
    })
    .await;
    let ws_only = send_ok(&app, msg("ws", &["alice"])).await;
    let audit_only = send_ok(
        &app,
        json!({"title": "a", "content": "c", "receivers": ["alice"], "channels": ["audit"]}),
    )
    .await;
    let both = send_ok(&app, json!({"title": "b", "content": "c", "receivers": ["alice"], "channels": ["websocket", "audit"]})).await;

    let m = app.message(&audit_only).await;
    let channels: Vec<&str> = m["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, vec!["audit"], "{m}");

    let base = "/api/v1/messages?page=1&size=20";
    assert_eq!(
        list(&app, &format!("{base}&channel=websocket")).await,
        s(&[&both, &ws_only])
    );
    assert_eq!(
        list(&app, &format!("{base}&channel=audit")).await,
        s(&[&both, &audit_only])
    );
    let (status, body) = app.api_get(&format!("{base}&channel=nosuch")).await;
    assert!(
        status == StatusCode::OK && body["total"] == 0 || status.is_client_error(),
        "unknown channel filter: {status} {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_lists_configured_instances() {
    let app = spawn_app_with(|s| {
        s.channels = serde_json::from_value(json!({"audit": {"kind": "test.null"}}))
            .expect("channel instance table");
    })
    .await;
    let (status, body) = app.api_get("/api/v1/channels").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list = body
        .as_array()
        .unwrap_or_else(|| panic!("channels is not an array: {body}"));
    let find = |name: &str| {
        list.iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("channel {name} not listed: {body}"))
    };
    let ws = find("websocket");
    assert_eq!(ws["kind"], "websocket", "{ws}");
    assert_eq!(ws["enabled"], true, "{ws}");
    let audit = find("audit");
    assert_eq!(audit["kind"], "test.null", "{audit}");
    assert_eq!(audit["enabled"], true, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_put_get_delete() {
    let app = spawn_app().await;
    let path = "/api/v1/recipients/alice";
    let (status, body) = app.api_get(path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "unknown recipient: {body}");

    let record = json!({
        "name": "Alice",
        "email": "alice@example.com",
        "phone": "+8613800000000",
        "wechatOpenId": "o-alice",
    });
    let (status, body) = app.api(Method::PUT, path, Some(&record)).await;
    assert!(
        matches!(status.as_u16(), 200 | 201 | 204),
        "PUT recipient: {status} {body}"
    );
    let (status, body) = app.api_get(path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for key in ["name", "email", "phone", "wechatOpenId"] {
        assert_eq!(body[key], record[key], "{key}: {body}");
    }

    // PUT replaces.
    let (status, body) = app
        .api(Method::PUT, path, Some(&json!({"email": "a2@example.com"})))
        .await;
    assert!(
        matches!(status.as_u16(), 200 | 201 | 204),
        "second PUT: {status} {body}"
    );
    let (_, body) = app.api_get(path).await;
    assert_eq!(body["email"], "a2@example.com", "{body}");

    let (status, body) = app.api(Method::DELETE, path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = app.api_get(path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A user token is not the API key.
    let (status, body) = app
        .request(Method::GET, path, Some(&app.token("alice")), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_unknown_message_is_404() {
    let app = spawn_app().await;
    for id in ["00000000-0000-0000-0000-000000000000", "no-such-id"] {
        let (status, body) = app.api_get(&format!("/api/v1/messages/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        assert_error_body(&body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_message_is_gone_and_never_delivered() {
    let app = spawn_app().await;
    let keep = send_ok(&app, msg("keep", &["alice"])).await;
    let gone = send_ok(&app, msg("gone", &["alice"])).await;

    let (status, body) = app
        .api(Method::DELETE, &format!("/api/v1/messages/{gone}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(body, Value::Null, "204 has no body");
    let (status, _) = app.api_get(&format!("/api/v1/messages/{gone}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .api(Method::DELETE, &format!("/api/v1/messages/{gone}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "second delete: {body}");
    assert_eq!(list(&app, "/api/v1/messages").await, s(&[&keep]));

    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;
    assert_eq!(
        ws.next_message().await["id"],
        keep.as_str(),
        "only the kept message is replayed"
    );
    ws.expect_no_message(QUIET).await;

    let (status, body) = app
        .request(
            Method::POST,
            "/api/v1/inbox/collect",
            Some(&app.token("alice")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !items_of(&body).contains(&gone),
        "collect returned a deleted message: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_sends_once() {
    let app = spawn_app().await;
    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;
    let body = msg("once", &["alice"]);
    let post = |key: &'static str| {
        let req = app
            .client
            .post(app.url("/api/v1/messages"))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { read_response(req.send().await.expect("send")).await }
    };

    let (status, first) = post("key-1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let id = first["id"].as_str().expect("id").to_owned();
    assert_eq!(ws.next_message().await["id"], id.as_str());

    let (status, second) = post("key-1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_eq!(
        second["id"],
        id.as_str(),
        "same key must return the same id"
    );
    assert_eq!(second["deliveries"], first["deliveries"]);
    ws.expect_no_message(QUIET).await;
    assert_eq!(
        app.total().await,
        1,
        "the repeated request stored a second message"
    );
    assert_eq!(
        app.message(&id).await["deliveries"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let (status, third) = post("key-2").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{third}");
    assert_ne!(third["id"], id.as_str(), "another key is another message");
    assert_eq!(ws.next_message().await["id"], third["id"]);
    assert_eq!(app.total().await, 2);
}

/// The key identifies the request body, not its spelling: the same fields in another order
/// or layout are the same request (same id, nothing sent twice); another body under a used
/// key is a `422` naming the header, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_ignores_key_order_and_refuses_another_body() {
    let app = spawn_app().await;
    let post = |key: &'static str, raw: &'static str| {
        let req = app
            .client
            .post(app.url("/api/v1/messages"))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", key)
            .header("content-type", "application/json")
            .body(raw);
        async move { read_response(req.send().await.expect("send")).await }
    };
    let (status, first) = post(
        "order",
        r#"{"title":"t","content":"c","receivers":["alice"],"type":2}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again) = post(
        "order",
        r#"{ "type": 2, "receivers": ["alice"], "content": "c", "title": "t" }"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["id"], first["id"], "key order made another request");
    assert_eq!(app.total().await, 1);

    let (status, other) = post(
        "order",
        r#"{"title":"t","content":"another","receivers":["alice"],"type":2}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{other}");
    assert_eq!(other["field"], "Idempotency-Key", "{other}");
    assert!(
        other["error"]
            .as_str()
            .is_some_and(|e| e.contains("different request body")),
        "{other}"
    );
    assert_eq!(app.total().await, 1, "a refused request stored a message");
}

// ---------------------------------------------------------------------------------------------
// Inbox
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_lists_and_collects_only_own_messages() {
    let app = spawn_app().await;
    let alice = app.token("alice");
    let bob = app.token("bob");
    let a1 = send_ok(&app, msg("a1", &["alice"])).await;
    let shared = send_ok(&app, msg("shared", &["alice", "bob"])).await;
    let b1 = send_ok(&app, msg("b1", &["bob"])).await;
    let a2 = send_ok(&app, msg("a2", &["alice"])).await;

    let inbox = |token: String, query: &'static str| {
        let app = &app;
        async move {
            let (status, body) = app
                .request(
                    Method::GET,
                    &format!("/api/v1/inbox{query}"),
                    Some(&token),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "inbox{query}: {body}");
            items_of(&body).into_iter().collect::<BTreeSet<String>>()
        }
    };
    let set = |v: &[&String]| v.iter().map(|x| (*x).clone()).collect::<BTreeSet<String>>();

    assert_eq!(
        inbox(alice.clone(), "?status=undelivered").await,
        set(&[&a1, &shared, &a2])
    );
    assert_eq!(
        inbox(bob.clone(), "?status=undelivered").await,
        set(&[&shared, &b1])
    );
    assert_eq!(
        inbox(alice.clone(), "?status=all").await,
        set(&[&a1, &shared, &a2])
    );

    // Collect: oldest first, marks delivered, only alice's deliveries.
    let (status, body) = app
        .request(Method::POST, "/api/v1/inbox/collect", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        items_of(&body),
        s(&[&a1, &shared, &a2]),
        "collect returns oldest first: {body}"
    );
    for id in [&a1, &shared, &a2] {
        assert_eq!(
            app.delivery_status(id, "alice").await.as_deref(),
            Some("delivered"),
            "{id}"
        );
    }
    assert_eq!(
        app.delivery_status(&shared, "bob").await.as_deref(),
        Some("pending"),
        "bob's copy untouched"
    );

    let (status, body) = app
        .request(Method::POST, "/api/v1/inbox/collect", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        items_of(&body).is_empty(),
        "second collect returns nothing: {body}"
    );

    assert!(inbox(alice.clone(), "?status=undelivered").await.is_empty());
    assert_eq!(
        inbox(alice.clone(), "?status=all").await,
        set(&[&a1, &shared, &a2])
    );
    assert_eq!(
        inbox(bob.clone(), "?status=undelivered").await,
        set(&[&shared, &b1])
    );

    // Collected means delivered: no WebSocket replay.
    let (mut ws, _) = ws_login(&app, &alice).await;
    ws.expect_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_rejects_api_key_and_other_users() {
    let app = spawn_app().await;
    let a1 = send_ok(&app, msg("a1", &["alice"])).await;
    let bob = app.token("bob");

    for (method, path) in [
        (Method::GET, "/api/v1/inbox"),
        (Method::POST, "/api/v1/inbox/collect"),
        (Method::POST, "/message/collectMessage"),
    ] {
        for (label, auth) in [
            ("API key", Some(app.api_key.as_str())),
            ("nothing", None),
            ("garbage", Some("not-a-jwt")),
        ] {
            let (status, body) = app.request(method.clone(), path, auth, None).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {label}: {body}"
            );
            assert_error_body(&body);
        }
    }

    // Bob sees nothing of alice's, and his token opens nothing of the management API.
    let (status, body) = app
        .request(Method::GET, "/api/v1/inbox?status=all", Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(items_of(&body).is_empty(), "{body}");
    let (status, body) = app
        .request(Method::POST, "/api/v1/inbox/collect", Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(items_of(&body).is_empty(), "{body}");
    let (status, _) = app
        .request(
            Method::GET,
            &format!("/api/v1/messages/{a1}"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.delivery_status(&a1, "alice").await.as_deref(),
        Some("pending")
    );
}

// ---------------------------------------------------------------------------------------------
// Seed-compatible routes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_send_page_clients_collect_and_delete() {
    let app = spawn_app().await;

    let body =
        json!({"content": "seed content", "receiver": ["alice"], "title": "seed", "type": 3});
    let (status, resp) = app
        .api(Method::POST, "/message/sendMessage", Some(&body))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["deliveries"], 1, "{resp}");
    let first = resp["id"].as_str().expect("id").to_owned();
    let m = app.message(&first).await;
    assert_eq!(m["title"], "seed");
    assert_eq!(m["content"], "seed content");
    assert_eq!(m["type"], 3);
    assert!(
        delivery_of(&m, "alice").is_some(),
        "receiver → delivery for alice: {m}"
    );

    let (status, resp) = app
        .api(
            Method::POST,
            "/message/sendMessage",
            Some(&json!({"content": "c2", "receiver": ["alice"], "title": "t2", "type": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let second = resp["id"].as_str().expect("id").to_owned();
    let third = send_ok(&app, msg("third", &["bob"])).await;

    // Paging with the seed's names, and with page/size.
    let (status, page) = app
        .api_get("/message/getMessagePage?pageNum=1&pageSize=2")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 3, "{page}");
    assert_eq!(ids(&page["items"]), s(&[&third, &second]));
    let (_, page) = app
        .api_get("/message/getMessagePage?pageNum=2&pageSize=2")
        .await;
    assert_eq!(ids(&page["items"]), s(&[&first]), "{page}");
    let (status, page) = app.api_get("/message/getMessagePage?page=2&size=1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page["items"]), s(&[&second]), "{page}");

    // Online clients.
    let (mut ws, welcome) = ws_login(&app, &app.token_full("alice", "Alice", "phone")).await;
    assert_eq!(ws.next_message().await["id"], first.as_str());
    assert_eq!(ws.next_message().await["id"], second.as_str());
    let (status, clients) = app.api_get("/message/getWebSocketClients").await;
    assert_eq!(status, StatusCode::OK, "{clients}");
    let clients = clients.as_array().expect("array of clients");
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["sessionId"], welcome["sessionId"]);
    assert_eq!(clients[0]["userId"], "alice");
    assert_eq!(clients[0]["device"], "phone");
    ws.close().await;

    // collectMessage: user token; sent-but-unacked messages are still undelivered.
    let alice = app.token("alice");
    let (status, collected) = app
        .request(Method::POST, "/message/collectMessage", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{collected}");
    assert_eq!(items_of(&collected), s(&[&first, &second]), "{collected}");
    assert_eq!(
        app.delivery_status(&first, "alice").await.as_deref(),
        Some("delivered")
    );
    let (_, collected) = app
        .request(Method::POST, "/message/collectMessage", Some(&alice), None)
        .await;
    assert!(items_of(&collected).is_empty(), "{collected}");

    // Delete by query id, with POST and with DELETE.
    let (status, body) = app
        .api(
            Method::POST,
            &format!("/message/deleteMessageById?id={first}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = app
        .api(
            Method::DELETE,
            &format!("/message/deleteMessageById?id={second}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    for id in [&first, &second] {
        let (status, _) = app.api_get(&format!("/api/v1/messages/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id} still there");
    }
    let (status, body) = app
        .api(
            Method::DELETE,
            &format!("/message/deleteMessageById?id={first}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(list(&app, "/api/v1/messages").await, s(&[&third]));
}

/// The seed body ignores unknown fields, so a misspelt `receiver` must not broadcast: a
/// missing `receiver` is a 422 naming it, and only an explicit `[]` broadcasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_send_without_receiver_is_refused_not_broadcast() {
    let app = spawn_app().await;
    let (mut ws, _) = ws_login(&app, &app.token("42")).await;
    for body in [
        json!({"content": "c", "receivers": ["42"], "title": "misspelt"}),
        json!({"content": "c", "title": "forgotten"}),
    ] {
        let (status, resp) = app
            .api(Method::POST, "/message/sendMessage", Some(&body))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {resp}");
        assert_eq!(resp["field"], "receiver", "{resp}");
    }
    ws.expect_no_message(QUIET).await;
    assert_eq!(app.total().await, 0, "a refused send was stored");
    let (status, resp) = app
        .api(
            Method::POST,
            "/message/sendMessage",
            Some(&json!({"content": "c", "receiver": [], "title": "everyone"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(ws.next_message().await["id"], resp["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_send_delivers_live() {
    let app = spawn_app().await;
    let (mut ws, _) = ws_login(&app, &app.token("42")).await;
    let body = json!({"content": "{\"k\":1}", "receiver": ["42"], "title": "seed live", "type": 1});
    let (status, resp) = app
        .api(Method::POST, "/message/sendMessage", Some(&body))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let frame = ws.next_message().await;
    assert_eq!(frame["id"], resp["id"]);
    assert_eq!(frame["content"], "{\"k\":1}");
    assert_eq!(frame["msgType"], 1);
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

/// Asserts a 4xx (one of `allowed`) with a JSON error naming `field`, and nothing stored.
async fn assert_rejected(
    app: &TestApp,
    status: StatusCode,
    body: &Value,
    allowed: &[u16],
    field: &str,
) {
    assert!(
        allowed.contains(&status.as_u16()),
        "expected one of {allowed:?} for bad {field}, got {status}: {body}"
    );
    let err = assert_error_body(body);
    assert!(
        err.to_lowercase().contains(&field.to_lowercase()),
        "error for bad {field} does not name it: {err:?}"
    );
    assert_eq!(app.total().await, 0, "a rejected request stored a message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_is_400() {
    let app = spawn_app().await;
    for raw in ["{\"title\": \"t\", \"content\": ", "not json", ""] {
        let (status, body) = app
            .request_raw(Method::POST, "/api/v1/messages", Some(&app.api_key), raw)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw:?}: {body}");
        assert_error_body(&body);
    }
    // Valid JSON of the wrong shape.
    let (status, body) = app
        .request_raw(
            Method::POST,
            "/api/v1/messages",
            Some(&app.api_key),
            "[1,2]",
        )
        .await;
    assert!(
        matches!(status.as_u16(), 400 | 422),
        "array body: {status} {body}"
    );
    assert_error_body(&body);
    assert_eq!(app.total().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_content_is_422_naming_it() {
    let app = spawn_app().await;
    let (status, body) = send(&app, json!({"title": "t", "receivers": ["alice"]})).await;
    assert_rejected(&app, status, &body, &[422], "content").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_for_type_is_422_naming_it() {
    let app = spawn_app().await;
    for bad in [json!("abc"), json!(1.5), json!([1]), json!({"n": 1})] {
        let (status, body) = send(
            &app,
            json!({"title": "t", "content": "c", "type": bad, "receivers": ["alice"]}),
        )
        .await;
        assert_rejected(&app, status, &body, &[422], "type").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_not_an_array_is_422_naming_it() {
    let app = spawn_app().await;
    for bad in [
        json!("alice"),
        json!({"id": "alice"}),
        json!([{"id": "alice"}]),
        json!([true]),
    ] {
        let (status, body) = send(
            &app,
            json!({"title": "t", "content": "c", "receivers": bad}),
        )
        .await;
        assert_rejected(&app, status, &body, &[422], "receivers").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_channel_is_422_naming_it() {
    let app = spawn_app().await;
    let (status, body) = send(&app, json!({"title": "t", "content": "c", "receivers": ["alice"], "channels": ["websocket", "pigeon"]})).await;
    assert_rejected(&app, status, &body, &[422], "pigeon").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    let app = spawn_app_with(|s| s.http.body_limit = 4096).await;
    let (status, body) = send(
        &app,
        json!({"title": "t", "content": "x".repeat(8192), "receivers": ["alice"]}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_error_body(&body);
    assert_eq!(
        app.total().await,
        0,
        "an oversized request stored a message"
    );
    // Under the limit is fine: the limit is the configured one.
    send_ok(
        &app,
        json!({"title": "t", "content": "x".repeat(3000), "receivers": ["alice"]}),
    )
    .await;
    assert_eq!(app.total().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paging_query_is_4xx() {
    let app = spawn_app().await;
    for q in [
        "page=abc",
        "size=xyz",
        "size=-1",
        "page=-3",
        "page=1&size=1.5",
    ] {
        for path in ["/api/v1/messages", "/message/getMessagePage"] {
            let (status, body) = app.api_get(&format!("{path}?{q}")).await;
            assert!(
                matches!(status.as_u16(), 400 | 422),
                "{path}?{q}: {status} {body}"
            );
            let err = assert_error_body(&body);
            let names_it = ["page", "size"]
                .iter()
                .any(|f| err.to_lowercase().contains(f));
            assert!(
                names_it,
                "{path}?{q}: error does not name the parameter: {err:?}"
            );
        }
    }
    let (status, body) = app
        .request(
            Method::GET,
            "/api/v1/inbox?status=bogus",
            Some(&app.token("alice")),
            None,
        )
        .await;
    assert!(
        matches!(status.as_u16(), 400 | 422),
        "inbox status=bogus: {status} {body}"
    );
    assert_error_body(&body);
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_openapi() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let resp = app.client.get(app.url(path)).send().await.expect("request");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }

    // Some traffic so counters exist.
    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;
    let id = send_ok(&app, msg("m", &["alice"])).await;
    assert_eq!(ws.next_message().await["id"], id.as_str());
    ws.ack(&id).await;
    app.wait_status(&id, "alice", &["delivered"]).await;

    let resp = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        ctype.starts_with("text/plain"),
        "metrics content-type {ctype:?}"
    );
    let text = resp.text().await.expect("metrics body");
    let samples: Vec<&str> = text.lines().filter(|l| l.starts_with("herald_")).collect();
    assert!(!samples.is_empty(), "no herald_ samples:\n{text}");
    for line in &samples {
        let value = line.rsplit(' ').next().unwrap_or("");
        assert!(
            value.parse::<f64>().is_ok(),
            "sample without a numeric value: {line:?}"
        );
    }
    assert!(
        text.lines().any(|l| l.starts_with("# TYPE herald_")),
        "no # TYPE lines:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("# TYPE herald_") && l.ends_with(" histogram")),
        "no delivery latency histogram:\n{text}"
    );
    assert!(
        text.contains("_bucket{") && text.contains("le=\"+Inf\""),
        "histogram without buckets:\n{text}"
    );

    let resp = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await.expect("openapi is JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi version: {}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths object");
    for p in [
        "/api/v1/messages",
        "/api/v1/messages/{id}",
        "/api/v1/clients",
        "/api/v1/inbox",
        "/api/v1/inbox/collect",
        "/websocket/{token}",
        "/api/v1/channels",
        "/api/v1/recipients/{userId}",
        "/api/v1/recipients/{userId}/devices/{id}",
        "/api/v1/me/devices",
        "/api/v1/me/devices/{id}",
        "/api/v1/callbacks/{provider}/{instance}",
        "/api/v1/stats/deliveries",
    ] {
        assert!(
            paths.contains_key(p),
            "OpenAPI lacks {p}; has {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_secrets_are_stored_privately_beside_the_database() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    assert!(!app.api_key.is_empty());
    let mut secret_files = Vec::new();
    for entry in std::fs::read_dir(app.dir.path()).expect("read data dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("herald.db") || !entry.file_type().expect("file type").is_file() {
            continue;
        }
        let mode = entry.metadata().expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        secret_files.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    assert!(
        secret_files.iter().any(|text| text.contains(&app.api_key)),
        "the generated API key is not stored in the data directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_configured_secret_is_used_and_the_other_generated() {
    const JWT: &str = "only-the-jwt-secret-is-configured-0123456789";
    let app = spawn_app_with(|s| s.jwt_secret = Some(herald::config::Secret::new(JWT))).await;
    assert!(!app.api_key.is_empty(), "an API key is generated");
    assert_eq!(app.total().await, 0, "the generated API key is accepted");
    let token = herald::auth::mint_token(JWT.as_bytes(), "alice", None, None, unix_now() + 3600);
    let (_ws, welcome) = ws_login(&app, &token).await;
    assert_eq!(welcome["userId"], "alice");

    let app =
        spawn_app_with(|s| s.api_key = Some(herald::config::Secret::new("configured-key-123")))
            .await;
    assert_eq!(app.api_key, "configured-key-123");
    assert_eq!(app.total().await, 0, "the configured API key is accepted");
    let (_ws, welcome) = ws_login(&app, &app.token("bob")).await;
    assert_eq!(welcome["userId"], "bob", "a JWT secret is generated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_messages_survive_a_restart() {
    let mut app = spawn_app().await;
    let api_key = app.api_key.clone();
    let token = app.token("alice");
    let a = send_ok(&app, msg("before restart 1", &["alice"])).await;
    let b = send_ok(&app, msg("before restart 2", &["alice"])).await;

    app.restart().await;
    assert_eq!(app.api_key, api_key, "the generated API key is reused");

    assert_eq!(app.total().await, 2);
    let (mut ws, _) = ws_login(&app, &token).await; // token minted before the restart
    let first = ws.next_message().await;
    assert_eq!(first["id"], a.as_str());
    assert_eq!(first["title"], "before restart 1");
    assert_eq!(ws.next_message().await["id"], b.as_str());
    ws.expect_no_message(QUIET).await;
    app.shutdown().await;
}

/// The OpenAPI document covers the seed-compatible routes too, and `/docs` renders it
/// without any external resource (it must work offline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_seed_routes_and_docs_page_is_self_contained() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("openapi json");
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/message/sendMessage",
        "/message/getMessagePage",
        "/message/deleteMessageById",
        "/message/getWebSocketClients",
        "/message/collectMessage",
        "/api/v1/recipients/{userId}",
        "/api/v1/channels",
        "/websocket",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing from /openapi.json");
    }
    // What the server enforces is what the document says (schemathesis checks both).
    let delete_by_id = &paths["/message/deleteMessageById"];
    assert!(delete_by_id.get("post").is_some() && delete_by_id.get("delete").is_some());
    let page = paths["/api/v1/messages"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "page")
        .expect("page parameter")
        .clone();
    assert_eq!(page["schema"]["minimum"], 1, "{page}");
    let resp = app.client.get(app.url("/docs")).send().await.expect("docs");
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.expect("docs html");
    assert!(
        html.contains("/openapi.json"),
        "docs page does not load the document"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "docs page refers to an external resource"
    );
}

/// `GET /` is a front door (version, live health, links to every page, the next step) and
/// `/favicon.ico` an icon; neither loads anything from outside the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_door_links_every_page_and_the_icon_is_served() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/")).send().await.expect("index");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("type")
        .starts_with("text/html"));
    let html = resp.text().await.expect("html");
    assert!(
        html.contains(&format!("v{}", env!("CARGO_PKG_VERSION"))),
        "no version"
    );
    for link in [
        "href=\"/demo\"",
        "href=\"/admin\"",
        "href=\"/docs\"",
        "href=\"/openapi.json\"",
        "/readyz",
    ] {
        assert!(html.contains(link), "{link} missing");
    }
    assert!(html.contains("herald send --to 42"), "no next step");
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("{{"),
        "external asset or unfilled placeholder"
    );
    // Every page it links to exists.
    for page in ["/demo", "/admin", "/docs", "/openapi.json", "/readyz"] {
        let status = app
            .client
            .get(app.url(page))
            .send()
            .await
            .expect("page")
            .status();
        assert_eq!(status, StatusCode::OK, "{page}");
    }
    let icon = app
        .client
        .get(app.url("/favicon.ico"))
        .send()
        .await
        .expect("icon");
    assert_eq!(icon.status(), StatusCode::OK);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    assert!(icon.text().await.expect("svg").starts_with("<svg"));
}
