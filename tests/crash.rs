//! The real binary as a child process: nothing accepted is lost across `kill -9`, SIGTERM is
//! graceful, and `herald token` mints tokens the server accepts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const USERS: usize = 10;
const MESSAGES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_accepted_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = spawn_process_with_secrets(dir.path()).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..MESSAGES {
        let client = server.client.clone();
        let url = format!("{}/api/v1/messages", server.base);
        let user = format!("user-{}", i % USERS);
        tasks.spawn(async move {
            let body = json!({"title": format!("crash {i}"), "content": format!("payload {i}"), "receivers": [user]});
            let resp = client
                .post(url)
                .bearer_auth(PROC_API_KEY)
                .json(&body)
                .send()
                .await
                .expect("send to herald process");
            let (status, resp) = read_response(resp).await;
            assert_eq!(status, StatusCode::ACCEPTED, "message {i}: {resp}");
            let id = resp["id"].as_str().expect("id").to_owned();
            (user, id)
        });
    }
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (user, id) = joined.expect("send task");
        expected.entry(user).or_default().insert(id);
    }
    assert_eq!(
        expected.values().map(BTreeSet::len).sum::<usize>(),
        MESSAGES,
        "ids must be unique"
    );

    // No grace: the moment the last 202 arrived.
    server.kill9();

    let server = spawn_process_with_secrets(dir.path()).await;
    for (user, ids) in &expected {
        let mut ws = ws_connect_url(&server.ws_url(&proc_token(user))).await;
        ws.welcome().await;
        ws.receive_ids(user, ids).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_and_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = spawn_process_with_secrets(dir.path()).await;

    let mut alice = ws_connect_url(&server.ws_url(&proc_token("alice"))).await;
    alice.welcome().await;
    let (status, resp) = server
        .send(&json!({"title": "t", "content": "for later", "receivers": ["bob"]}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let pending = resp["id"].as_str().expect("id").to_owned();

    server.sigterm();
    let close = alice.expect_close().await.expect("close frame with a code");
    assert_eq!(
        close.code,
        CloseCode::Away,
        "close code must be 1001, got {close:?}"
    );
    let status = server.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log_text()
    );
    assert_eq!(status.code(), Some(0));

    // Nothing accepted is lost.
    let server = spawn_process_with_secrets(dir.path()).await;
    let mut bob = ws_connect_url(&server.ws_url(&proc_token("bob"))).await;
    bob.welcome().await;
    assert_eq!(bob.next_message().await["id"], pending.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_printed_by_cli_is_accepted_by_server_from_same_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    // No secrets configured: the server generates them beside the database.
    let server = spawn_process(dir.path(), free_port(), &[]).await;

    let out = herald_command(dir.path(), &[])
        .args([
            "token", "--user", "alice", "--name", "Alice", "--device", "cli", "--ttl", "1h",
        ])
        .output()
        .expect("run herald token");
    assert!(
        out.status.success(),
        "herald token failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 token");
    let token = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .expect("a token on stdout");
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token:?}");

    let mut ws = ws_connect_url(&server.ws_url(token)).await;
    let welcome = ws.welcome().await;
    assert_eq!(welcome["userId"], "alice", "{welcome}");

    // A token from a different secret is still refused by this server.
    let foreign = proc_token("alice");
    match ws_try_connect(&server.ws_url(&foreign)).await {
        Ok(_) => panic!("a token signed with another secret was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED)
        }
        Err(e) => panic!("expected HTTP 401, got {e}"),
    }
}

/// A `herald-secrets.toml` that other users can read (an operator wrote it with umask 022)
/// stops `herald serve` at start, and `herald token`, with the file and the fix named and
/// nothing of its contents; after `chmod 600` both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secrets_file_others_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir
        .path()
        .canonicalize()
        .expect("dir")
        .join("herald-secrets.toml");
    std::fs::write(
        &path,
        format!("jwt_secret = \"{PROC_JWT_SECRET}\"\napi_key = \"{PROC_API_KEY}\"\n"),
    )
    .expect("write the secrets file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let fix = format!("chmod 600 {}", path.display());

    let log = dir.path().join("serve.log");
    let out = std::fs::File::create(&log).expect("log file");
    let mut serve = herald_command(dir.path(), &[])
        .args(["serve", "--bind", &format!("127.0.0.1:{}", free_port())])
        .arg("--database-url")
        .arg(format!(
            "sqlite://{}",
            dir.path().join("herald.db").display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(out)
        .spawn()
        .expect("spawn herald serve");
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = serve.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = serve.kill();
            let _ = serve.wait();
            panic!(
                "herald serve started with a world-readable secrets file; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "serve exited {status}: {text}");
    assert!(text.contains(&fix), "the error must name the fix: {text}");
    assert!(text.contains("mode 0644"), "{text}");
    assert!(
        !text.contains(PROC_API_KEY) && !text.contains(PROC_JWT_SECRET),
        "the error shows the secrets: {text}"
    );

    let token = herald_command(dir.path(), &[])
        .args(["token", "--user", "alice"])
        .output()
        .expect("run herald token");
    let stderr = String::from_utf8_lossy(&token.stderr);
    assert!(!token.status.success(), "herald token used it: {stderr}");
    assert!(stderr.contains(&fix), "{stderr}");
    assert!(token.stdout.is_empty(), "herald token printed a token");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let server = spawn_process(dir.path(), free_port(), &[]).await;
    let (status, _) = server
        .send(&json!({"title": "t", "content": "c", "receivers": ["alice"]}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "the file's API key is used");
}

/// The quick start, through the real binary: `herald token`, a WebSocket client,
/// `herald send`, an ack, and the message log showing `delivered`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_token_send_ack_delivered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = spawn_process(dir.path(), free_port(), &[]).await;
    let run = |args: &[&str]| {
        let out = herald_command(dir.path(), &[])
            .args(args)
            .output()
            .expect("run herald");
        assert!(
            out.status.success(),
            "herald {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let token = run(&["token", "--user", "42", "--name", "alice"]);
    let mut ws = ws_connect_url(&server.ws_url(&token)).await;
    ws.welcome().await;

    let sent = run(&[
        "send",
        "--server",
        &server.base,
        "--to",
        "42",
        "--title",
        "Report ready",
        "--content",
        r#"{"reportId":7}"#,
    ]);
    let sent: serde_json::Value = serde_json::from_str(&sent).expect("send prints JSON");
    assert_eq!(sent["deliveries"], 1, "{sent}");
    let id = sent["id"].as_str().expect("id").to_owned();

    let frame = ws.next_message().await;
    assert_eq!(frame["id"], id.as_str());
    assert_eq!(frame["title"], "Report ready");
    assert_eq!(frame["content"], r#"{"reportId":7}"#);
    ws.ack(&id).await;

    let key =
        std::fs::read_to_string(dir.path().join("herald-secrets.toml")).expect("secrets file");
    let key = key
        .lines()
        .find_map(|l| l.strip_prefix("api_key = "))
        .expect("api_key line")
        .trim_matches('"')
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = server
            .client
            .get(format!("{}/api/v1/messages/{id}", server.base))
            .bearer_auth(&key)
            .send()
            .await
            .expect("get message");
        let (status, body) = read_response(resp).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["deliveries"][0]["status"] == "delivered" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never delivered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `herald migrate` creates and migrates a database, then `serve` starts on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("sub/dir/m.db");
    let url = format!("sqlite://{}", db.display());
    let out = herald_command(dir.path(), &[])
        .args(["migrate", "--database-url", &url])
        .output()
        .expect("run herald migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(db.exists(), "database file not created");
    // Running it again is a no-op that still succeeds.
    let again = herald_command(dir.path(), &[])
        .args(["migrate", "--database-url", &url])
        .output()
        .expect("run herald migrate");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// `log.format = "json"`: every line the server writes is one JSON object with the
/// timestamp, level and message at the top level, and the event's fields beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut server = spawn_process(dir.path(), port, &[("HERALD_LOG__FORMAT", "json")]).await;
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status}");
    let log = server.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l.get(key).is_some(), "no `{key}` in {l}");
        }
    }
    let listening = lines
        .iter()
        .find(|l| l["message"] == "listening")
        .unwrap_or_else(|| panic!("no `listening` line in:\n{log}"));
    assert_eq!(listening["level"], "INFO");
    assert_eq!(
        listening["addr"],
        format!("127.0.0.1:{port}"),
        "{listening}"
    );
    assert!(lines.iter().any(|l| l["message"] == "stopped"), "{log}");
}
