//! WebSocket contract (docs/websocket.md), broadcast (docs/api.md §3.2) and the online-clients list.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use hmac::Mac as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "websocket-test-secret-0123456789abcdef";

async fn app_with_known_secret() -> TestApp {
    spawn_app_with(|s| s.jwt_secret = Some(herald::config::Secret::new(SECRET))).await
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HS256 JWT with arbitrary claims, signed with `secret`.
fn hs256(secret: &[u8], claims: &Value) -> String {
    let head = b64(json!({"alg": "HS256", "typ": "JWT"}).to_string().as_bytes());
    let body = b64(claims.to_string().as_bytes());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{head}.{body}").as_bytes());
    let sig = b64(&mac.finalize().into_bytes());
    format!("{head}.{body}.{sig}")
}

/// A plain HTTP GET carrying a complete WebSocket upgrade request, so that the server's answer
/// to an unauthenticated upgrade can be inspected directly.
async fn raw_upgrade(app: &TestApp, path: &str) -> (StatusCode, Value) {
    let resp = app
        .client
        .get(app.url(path))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("upgrade request");
    read_response(resp).await
}

/// The token must be refused with `401` + JSON error and no upgrade, on both URL forms.
async fn assert_rejected(app: &TestApp, paths: &[String], why: &str) {
    for path in paths {
        let (status, body) = raw_upgrade(app, path).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{why}: {path} answered {status}: {body}"
        );
        assert_error_body(&body);

        match ws_try_connect(&app.ws_url(path)).await {
            Ok(_) => panic!("{why}: {path} was upgraded"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{why}: {path}")
            }
            Err(e) => panic!("{why}: {path}: expected an HTTP 401 refusal, got {e}"),
        }
    }
}

fn both_forms(token: &str) -> Vec<String> {
    vec![
        format!("/websocket/{token}"),
        format!("/websocket?token={token}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_forged_and_missing_tokens_get_401_without_upgrade() {
    let app = app_with_known_secret().await;
    let now = unix_now();

    // Control: a token signed with the configured secret is accepted on both forms, so the
    // refusals below are about the token and nothing else.
    let good = herald::auth::mint_token(SECRET.as_bytes(), "alice", None, None, now + 3600);
    for path in both_forms(&good) {
        let mut ws = ws_connect_url(&app.ws_url(&path)).await;
        let welcome = ws.welcome().await;
        assert_eq!(welcome["userId"], "alice", "{path}: {welcome}");
        ws.close().await;
    }

    assert_rejected(&app, &both_forms("not-a-jwt"), "garbage token").await;

    let expired = herald::auth::mint_token(SECRET.as_bytes(), "alice", None, None, now - 3600);
    assert_rejected(&app, &both_forms(&expired), "expired token").await;

    let forged = herald::auth::mint_token(
        b"some-other-secret-0123456789",
        "alice",
        None,
        None,
        now + 3600,
    );
    assert_rejected(
        &app,
        &both_forms(&forged),
        "token signed with another secret",
    )
    .await;

    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes()),
        b64(json!({"sub": "alice", "exp": now + 3600})
            .to_string()
            .as_bytes())
    );
    assert_rejected(&app, &both_forms(&unsigned), "alg=none token").await;

    let no_exp = hs256(SECRET.as_bytes(), &json!({"sub": "alice"}));
    assert_rejected(&app, &both_forms(&no_exp), "token without exp").await;

    // Tampered payload: a valid signature over different claims.
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(json!({"sub": "mallory", "exp": now + 3600})
            .to_string()
            .as_bytes()),
        parts[2]
    );
    assert_rejected(&app, &both_forms(&tampered), "tampered token").await;

    let missing = vec!["/websocket".to_owned(), "/websocket?token=".to_owned()];
    assert_rejected(&app, &missing, "missing token").await;

    assert!(
        app.clients().await.is_empty(),
        "a refused connection left a session behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_frame_comes_first() {
    let app = spawn_app().await;
    let mut ws = ws_connect(&app, &app.token_full("u-1", "Alice", "phone")).await;
    let welcome = ws.next_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["userId"], "u-1", "{welcome}");
    let sid = welcome["sessionId"].as_str().unwrap_or_default();
    assert!(!sid.is_empty(), "sessionId missing: {welcome}");
    let server_time = rfc3339(&welcome["serverTime"], "serverTime");
    let skew = (time::OffsetDateTime::now_utc() - server_time).abs();
    assert!(
        skew < time::Duration::minutes(5),
        "serverTime {server_time} is far from now"
    );

    // A second session gets its own id.
    let (_ws2, welcome2) = ws_login(&app, &app.token("u-1")).await;
    assert_ne!(welcome2["sessionId"], welcome["sessionId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_token_form_connects() {
    let app = spawn_app().await;
    let mut ws =
        ws_connect_url(&app.ws_url(&format!("/websocket?token={}", app.token("bob")))).await;
    let welcome = ws.welcome().await;
    assert_eq!(welcome["userId"], "bob");
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_are_replayed_oldest_first_with_exact_frames() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = send_ok(
            &app,
            json!({
                "title": format!("title {i}"),
                "content": format!("{{\"n\":{i},\"text\":\"é ✓\"}}"),
                "type": 7,
                "sender": "ops",
                "receivers": ["alice"],
            }),
        )
        .await;
        ids.push(id);
    }
    // Someone else's message must not show up.
    send_ok(&app, msg("for bob", &["bob"])).await;

    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;
    for (i, id) in ids.iter().enumerate() {
        let frame = ws.next_json().await;
        let stored = app.message(id).await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["id"], id.as_str(), "replay order: frame {i}: {frame}");
        assert_eq!(frame["title"], format!("title {i}"));
        assert_eq!(
            frame["content"],
            format!("{{\"n\":{i},\"text\":\"é ✓\"}}"),
            "content verbatim"
        );
        assert_eq!(frame["msgType"], 7);
        assert_eq!(frame["sender"], "ops");
        rfc3339(&frame["createdAt"], "createdAt");
        assert_eq!(
            rfc3339(&frame["createdAt"], "frame createdAt"),
            rfc3339(&stored["createdAt"], "stored createdAt"),
            "frame and GET disagree on createdAt"
        );
    }
    ws.expect_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_resent_and_acked_ones_are_not() {
    let app = spawn_app().await;
    let a = send_ok(&app, msg("a", &["alice"])).await;
    let b = send_ok(&app, msg("b", &["alice"])).await;

    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;
    assert_eq!(ws.next_message().await["id"], a.as_str());
    assert_eq!(ws.next_message().await["id"], b.as_str());
    ws.ack(&a).await;
    app.wait_status(&a, "alice", &["delivered"]).await;
    // Handed over but not acknowledged: still undelivered.
    app.wait_status(&b, "alice", &["sent"]).await;
    ws.close().await;

    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;
    let again = ws.next_message().await;
    assert_eq!(
        again["id"],
        b.as_str(),
        "the unacked message must be re-sent, the acked one not"
    );
    ws.expect_no_message(QUIET).await;
    assert_eq!(
        app.delivery_status(&a, "alice").await.as_deref(),
        Some("delivered")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_marks_delivery_read() {
    let app = spawn_app().await;
    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;
    let id = send_ok(&app, msg("hello", &["alice"])).await;
    assert_eq!(ws.next_message().await["id"], id.as_str());
    ws.send_json(json!({"type": "read", "id": id})).await;
    app.wait_status(&id, "alice", &["read"]).await;
    ws.close().await;

    // Read implies delivered: nothing is replayed.
    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;
    ws.expect_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_frame_gets_pong() {
    let app = spawn_app().await;
    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;
    for _ in 0..2 {
        ws.send_json(json!({"type": "ping"})).await;
        let pong = ws.next_json().await;
        assert_eq!(pong, json!({"type": "pong"}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_frames_get_error_and_connection_stays_usable() {
    let app = spawn_app().await;
    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;

    for bad in [
        "this is not json".to_owned(),
        json!({"type": "bogus"}).to_string(),
        json!({"no": "type"}).to_string(),
        json!(["type", "ping"]).to_string(),
        json!({"type": "ack"}).to_string(),
    ] {
        ws.send_text(bad.clone()).await;
        let frame = ws.next_json().await;
        assert_eq!(frame["type"], "error", "answer to {bad}: {frame}");
        assert!(
            frame["error"].as_str().is_some_and(|e| !e.is_empty()),
            "error frame without error text for {bad}: {frame}"
        );
    }

    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    let id = send_ok(&app, msg("still here", &["alice"])).await;
    assert_eq!(ws.next_message().await["id"], id.as_str());
    assert_eq!(app.clients().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_get_an_error_frame_on_every_frame_type() {
    let app = spawn_app().await;
    let id = send_ok(&app, msg("unacked", &["alice"])).await;
    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;
    assert_eq!(ws.next_message().await["id"], id.as_str());
    app.wait_status(&id, "alice", &["sent"]).await;

    // A ping with an extra field gets an error frame, not a pong; an ack or read with one
    // gets an error frame and is not applied.
    for (bad, field) in [
        (json!({"type": "ping", "x": 1}), "`x`"),
        (json!({"type": "ack", "id": id, "x": 1}), "`x`"),
        (json!({"type": "read", "id": id, "extra": true}), "`extra`"),
    ] {
        ws.send_json(bad.clone()).await;
        let frame = ws.next_json().await;
        assert_eq!(frame["type"], "error", "answer to {bad}: {frame}");
        let error = frame["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("unknown field") && error.contains(field),
            "the error for {bad} must name {field}: {frame}"
        );
    }
    assert_eq!(
        app.delivery_status(&id, "alice").await.as_deref(),
        Some("sent")
    );

    // The connection stays usable.
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await, json!({"type": "pong"}));
    ws.ack(&id).await;
    app.wait_status(&id, "alice", &["delivered"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009() {
    let app = spawn_app_with(|s| s.websocket.max_frame_size = 1024).await;
    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;

    // Under the limit: an ordinary (invalid) frame, answered with an error frame.
    ws.send_text("x".repeat(900)).await;
    assert_eq!(ws.next_json().await["type"], "error");

    ws.send_text("x".repeat(4096)).await;
    let close = ws.expect_close().await.expect("close frame with a code");
    assert_eq!(
        close.code,
        CloseCode::Size,
        "close code must be 1009, got {close:?}"
    );
    app.wait_clients(0).await;
}

/// Each RFC 6455 violation, written over a raw TCP socket, is answered with the close
/// frame §7.4.1 names (then the server ends the connection), not a bare TCP close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_1002_or_1007() {
    let app = spawn_app_with(|s| s.websocket.max_frame_size = 1024).await;
    let token = app.token("alice");
    const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);
    let ping = br#"{"type":"ping"}"#;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 in a text frame",
            raw_frame(0x81, b"{\"type\":\"\xff\xfe\"}", MASK),
            1007,
        ),
        (
            "invalid UTF-8 split across fragments",
            [
                raw_frame(0x01, b"caf\xc3", MASK),
                raw_frame(0x80, b"\x28", MASK),
            ]
            .concat(),
            1007,
        ),
        (
            "invalid UTF-8 in a close reason",
            raw_frame(0x88, b"\x03\xe8\xff", MASK),
            1007,
        ),
        ("unmasked client frame", raw_frame(0x81, ping, None), 1002),
        (
            "control frame over 125 bytes",
            raw_frame(0x89, &[b'p'; 126], MASK),
            1002,
        ),
        (
            "fragmented control frame",
            raw_frame(0x09, b"p", MASK),
            1002,
        ),
        (
            "reserved data opcode 0x3",
            raw_frame(0x83, ping, MASK),
            1002,
        ),
        (
            "reserved control opcode 0xB",
            raw_frame(0x8b, b"", MASK),
            1002,
        ),
        (
            "RSV1 set without an extension",
            raw_frame(0xc1, ping, MASK),
            1002,
        ),
        (
            "continuation without a message",
            raw_frame(0x80, ping, MASK),
            1002,
        ),
        (
            "new message inside a fragmented one",
            [raw_frame(0x01, b"{", MASK), raw_frame(0x81, ping, MASK)].concat(),
            1002,
        ),
        (
            "close frame with a 1-byte body",
            raw_frame(0x88, b"\x03", MASK),
            1002,
        ),
        // Unchanged: a frame over `websocket.max_frame_size` is 1009.
        (
            "frame over max_frame_size",
            raw_frame(0x81, &[b'x'; 2048], MASK),
            1009,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut ws = raw_ws_login(&app, &token).await;
        ws.write(&bytes).await;
        let got = ws.expect_close().await;
        assert_eq!(
            got,
            Some(code),
            "{what}: expected close {code}, got {got:?}"
        );
        ws.expect_end().await;
    }
    // The sessions are gone; a well-behaved client still connects.
    app.wait_clients(0).await;
    let (mut ws, _) = ws_login(&app, &token).await;
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await, json!({"type": "pong"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_message_reaches_online_user_and_is_marked_sent() {
    let app = spawn_app().await;
    let (mut ws, _) = ws_login(&app, &app.token("alice")).await;
    let id = send_ok(
        &app,
        json!({"title": "t", "content": "c", "type": 2, "sender": "ops", "receivers": ["alice"]}),
    )
    .await;
    let frame = ws.next_message().await;
    assert_eq!(frame["id"], id.as_str());
    assert_eq!(frame["title"], "t");
    assert_eq!(frame["content"], "c");
    assert_eq!(frame["msgType"], 2);
    assert_eq!(frame["sender"], "ops");
    app.wait_status(&id, "alice", &["sent", "delivered", "read"])
        .await;
    ws.expect_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_of_a_user_receives_and_one_ack_delivers() {
    let app = spawn_app().await;
    let (mut phone, w1) = ws_login(&app, &app.token_full("alice", "Alice", "phone")).await;
    let (mut laptop, w2) = ws_login(&app, &app.token_full("alice", "Alice", "laptop")).await;
    assert_ne!(w1["sessionId"], w2["sessionId"]);

    let (status, resp) = send(&app, msg("both", &["alice"])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["deliveries"], 1, "one receiver, one delivery: {resp}");
    let id = resp["id"].as_str().expect("id").to_owned();

    assert_eq!(phone.next_message().await["id"], id.as_str());
    assert_eq!(laptop.next_message().await["id"], id.as_str());
    laptop.ack(&id).await;
    app.wait_status(&id, "alice", &["delivered"]).await;
    phone.expect_no_message(QUIET).await;

    let (mut tablet, _) = ws_login(&app, &app.token("alice")).await;
    tablet.expect_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_for_another_users_message_changes_nothing() {
    let app = spawn_app().await;
    let (mut alice, _) = ws_login(&app, &app.token("alice")).await;
    let (mut bob, _) = ws_login(&app, &app.token("bob")).await;

    let for_alice = send_ok(&app, msg("alice only", &["alice"])).await;
    assert_eq!(alice.next_message().await["id"], for_alice.as_str());
    app.wait_status(&for_alice, "alice", &["sent"]).await;

    let for_bob = send_ok(&app, msg("bob only", &["bob"])).await;
    assert_eq!(bob.next_message().await["id"], for_bob.as_str());

    // Bob acks and reads Alice's message, then acks his own. Once his own ack is applied,
    // the earlier ones have been processed too (one session's frames are handled in order).
    bob.ack(&for_alice).await;
    bob.send_json(json!({"type": "read", "id": for_alice}))
        .await;
    bob.ack(&for_bob).await;
    app.wait_status(&for_bob, "bob", &["delivered"]).await;

    let stored = app.message(&for_alice).await;
    assert_eq!(
        delivery_of(&stored, "alice").expect("alice's delivery")["status"],
        "sent",
        "bob's ack changed alice's delivery: {stored}"
    );
    assert!(
        delivery_of(&stored, "bob").is_none(),
        "bob's ack created a delivery: {stored}"
    );
    alice.close().await;

    // Still undelivered for alice: replayed on her next connection.
    let (mut alice, _) = ws_login(&app, &app.token("alice")).await;
    assert_eq!(alice.next_message().await["id"], for_alice.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_only_users_online_at_that_moment() {
    let app = spawn_app().await;
    let (mut alice_phone, _) = ws_login(&app, &app.token_full("alice", "Alice", "phone")).await;
    let (mut alice_laptop, _) = ws_login(&app, &app.token_full("alice", "Alice", "laptop")).await;
    let (mut bob, _) = ws_login(&app, &app.token("bob")).await;

    // `receivers` absent.
    let (status, resp) = send(&app, json!({"title": "all", "content": "everyone"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(
        resp["deliveries"], 2,
        "two users online (three sessions): {resp}"
    );
    let id = resp["id"].as_str().expect("id").to_owned();
    for ws in [&mut alice_phone, &mut alice_laptop, &mut bob] {
        assert_eq!(ws.next_message().await["id"], id.as_str());
    }
    let stored = app.message(&id).await;
    let receivers: BTreeSet<&str> = stored["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["receiver"].as_str().expect("receiver"))
        .collect();
    assert_eq!(receivers, BTreeSet::from(["alice", "bob"]), "{stored}");

    // `receivers: []` means the same.
    let (status, resp) = send(
        &app,
        json!({"title": "all 2", "content": "x", "receivers": []}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["deliveries"], 2, "{resp}");
    let id2 = resp["id"].as_str().expect("id").to_owned();
    assert_eq!(bob.next_message().await["id"], id2.as_str());

    // Carol comes later: she gets neither broadcast.
    let (mut carol, _) = ws_login(&app, &app.token("carol")).await;
    carol.expect_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_with_nobody_online_stores_no_deliveries() {
    let app = spawn_app().await;
    let (status, resp) = send(&app, json!({"title": "void", "content": "x"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["deliveries"], 0, "{resp}");
    let (mut late, _) = ws_login(&app, &app.token("late")).await;
    late.expect_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_lists_sessions_and_forgets_closed_ones() {
    let app = spawn_app().await;
    assert!(app.clients().await.is_empty());

    let (alice, welcome) = ws_login(&app, &app.token_full("alice", "Alice Liddell", "phone")).await;
    let (_bob, bob_welcome) = ws_login(&app, &app.token("bob")).await;

    let clients = app.clients().await;
    assert_eq!(clients.len(), 2, "{clients:?}");
    let entry = clients
        .iter()
        .find(|c| c["sessionId"] == welcome["sessionId"])
        .unwrap_or_else(|| {
            panic!(
                "alice's session {} not listed: {clients:?}",
                welcome["sessionId"]
            )
        });
    assert_eq!(entry["userId"], "alice", "{entry}");
    assert_eq!(entry["loginName"], "Alice Liddell", "{entry}");
    assert_eq!(entry["device"], "phone", "{entry}");
    let login = rfc3339(&entry["loginTime"], "loginTime");
    assert!((time::OffsetDateTime::now_utc() - login).abs() < time::Duration::minutes(5));
    let remote = entry["remoteAddr"].as_str().unwrap_or_default();
    assert!(
        remote.contains("127.0.0.1"),
        "remoteAddr {remote:?}: {entry}"
    );
    assert!(entry["status"].is_string(), "status: {entry}");
    assert!(entry["node"].is_string(), "node: {entry}");
    assert!(
        clients
            .iter()
            .any(|c| c["sessionId"] == bob_welcome["sessionId"] && c["userId"] == "bob"),
        "{clients:?}"
    );

    alice.close().await;
    wait_until(DEADLINE, "alice's closed session to disappear", || async {
        let clients = app.clients().await;
        clients.len() == 1 && clients[0]["userId"] == "bob"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_disappears_from_clients() {
    let app = spawn_app().await;
    let (ws, _) = ws_login(&app, &app.token("alice")).await;
    app.wait_clients(1).await;
    drop(ws); // TCP close without a close handshake
    app.wait_clients(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_that_misses_pongs_is_closed() {
    let app = spawn_app_with(|s| {
        s.websocket.ping_interval = Duration::from_millis(100);
        s.websocket.pong_timeout = Duration::from_millis(400);
    })
    .await;

    // The active client keeps reading, so tungstenite answers the server's pings; it counts
    // them, which measures time in the server's own ticks.
    let (mut active, active_welcome) = ws_login(&app, &app.token("active")).await;
    let pings = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn({
        let pings = pings.clone();
        async move {
            use futures_util::StreamExt;
            while let Some(Ok(frame)) = active.stream.next().await {
                if matches!(frame, Message::Ping(_)) {
                    pings.fetch_add(1, SeqCst);
                }
            }
        }
    });
    // The idle client never reads after the welcome, so it never answers a ping.
    let (_idle, _) = ws_login(&app, &app.token("idle")).await;

    wait_until(
        DEADLINE,
        "the idle session to be closed and the active one to stay",
        || async {
            let clients = app.clients().await;
            clients.len() == 1 && clients[0]["sessionId"] == active_welcome["sessionId"]
        },
    )
    .await;
    // The answering session survives several more pong timeouts (10 pings = 2.5 timeouts).
    let seen = pings.load(SeqCst);
    wait_until(DEADLINE, "ten more server pings", || async {
        pings.load(SeqCst) >= seen + 10
    })
    .await;
    let clients = app.clients().await;
    assert_eq!(
        clients.len(),
        1,
        "the session answering pings was closed: {clients:?}"
    );
    assert_eq!(clients[0]["sessionId"], active_welcome["sessionId"]);
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_without_delaying_others_and_replayed_later() {
    let app = spawn_app_with(|s| {
        s.websocket.queue_capacity = 2;
        // Long enough that only the full queue, not a write timeout, can close the session
        // within the test's deadline.
        s.websocket.write_timeout = Duration::from_secs(120);
        // The slow client never answers the ping sent with the welcome either.
        s.websocket.first_frame_timeout = Duration::from_secs(120);
    })
    .await;
    // The slow client never reads after the welcome: ~12 MB fill the loopback socket
    // buffers, then its outbound queue.
    let (slow, slow_welcome) = ws_login(&app, &app.token("slow")).await;
    let (mut fast, _) = ws_login(&app, &app.token("fast")).await;

    let big = "x".repeat(60 * 1024);
    let mut sent = BTreeSet::new();
    for i in 0..200 {
        let body = json!({"title": format!("big {i}"), "content": big, "receivers": ["slow"]});
        sent.insert(send_ok(&app, body).await);
    }

    // Another user's session is not held up by the stuck one.
    let quick = send_ok(&app, msg("quick", &["fast"])).await;
    assert_eq!(fast.next_message().await["id"], quick.as_str());

    wait_until(
        DEADLINE,
        "the slow consumer's session to be closed",
        || async {
            !app.clients()
                .await
                .iter()
                .any(|c| c["sessionId"] == slow_welcome["sessionId"])
        },
    )
    .await;
    drop(slow);

    // Whatever it did not acknowledge is still undelivered and comes back on reconnect.
    let (status, body) = app
        .api_get("/api/v1/messages?page=1&size=100&receiver=slow&status=delivered")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 0, "nothing was acked: {body}");
    let (mut again, _) = ws_login(&app, &app.token("slow")).await;
    again.receive_ids("slow", &sent).await;
}

/// `herald_deliveries_total` counts real status transitions, not frames or repeated acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_metrics_count_transitions_once() {
    let app = spawn_app().await;
    let (mut alice, _) = ws_login(&app, &app.token("alice")).await;
    let id = send_ok(&app, msg("count me", &["alice"])).await;
    assert_eq!(alice.next_message().await["id"], id.as_str());
    for _ in 0..3 {
        alice.ack(&id).await;
    }
    let (mut bob, _) = ws_login(&app, &app.token("bob")).await;
    bob.ack(&id).await; // not bob's message
    let bob_msg = send_ok(&app, msg("sync", &["bob"])).await;
    assert_eq!(bob.next_message().await["id"], bob_msg.as_str());
    bob.ack(&bob_msg).await;
    app.wait_status(&bob_msg, "bob", &["delivered"]).await;
    app.wait_status(&id, "alice", &["delivered"]).await;

    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |status: &str| -> u64 {
        let prefix =
            format!("herald_deliveries_total{{channel=\"websocket\",status=\"{status}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in metrics:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("delivered"),
        2,
        "two deliveries were delivered:\n{text}"
    );
    assert_eq!(value("sent"), 2, "two frames were written:\n{text}");
}
