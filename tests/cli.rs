//! The command line and start-up errors as a user meets them: the real binary, its exit
//! code and what it prints.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;

fn herald(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    herald_command(dir, env)
        .args(args)
        .output()
        .expect("run herald")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_misspelt_environment_variable_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = herald(
        dir.path(),
        &[("HERALD_BINDD", "127.0.0.1:1")],
        &["serve", "--bind", "127.0.0.1:0"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("environment variable HERALD_BINDD") && err.contains("`bindd`"),
        "{err}"
    );
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

/// A busy port: the OS error once, with what to do; and the failed start leaves neither a
/// new database nor a new secrets file behind.
#[test]
fn a_busy_port_is_reported_once_and_the_failed_start_leaves_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let out = herald(
        dir.path(),
        &[("HERALD_LOG__FILTER", "warn")],
        &["serve", "--bind", &addr],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("herald: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains(&format!("cannot listen on {addr}")), "{line}");
    assert_eq!(
        line.matches("os error").count(),
        1,
        "the OS error is printed more than once: {line}"
    );
    assert!(line.contains("--bind or HERALD_BIND"), "{line}");
    assert!(
        files_in(dir.path()).is_empty(),
        "left behind: {:?}",
        files_in(dir.path())
    );
}

/// An existing database and secrets file are kept when a start fails.
#[test]
fn a_failed_start_keeps_files_that_were_there() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = herald(dir.path(), &[], &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gen = herald(dir.path(), &[], &["token", "--user", "1", "--generate"]);
    assert!(gen.status.success(), "{}", stderr(&gen));
    let before = files_in(dir.path());
    assert!(before.contains(&"herald.db".to_owned()), "{before:?}");
    assert!(
        before.contains(&"herald-secrets.toml".to_owned()),
        "{before:?}"
    );
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let out = herald(dir.path(), &[], &["serve", "--bind", &addr]);
    assert!(!out.status.success());
    for f in ["herald.db", "herald-secrets.toml"] {
        assert!(dir.path().join(f).exists(), "{f} was removed");
    }
}

/// `herald token` where no server generated secrets refuses (a fresh secret would mint a
/// token no running server accepts) and says what to do; `--generate` creates them.
#[test]
fn token_without_secrets_refuses_unless_asked_to_generate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = herald(dir.path(), &[], &["token", "--user", "42"]);
    assert!(!out.status.success(), "a token was printed: {out:?}");
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(
        err.contains("herald-secrets.toml") && err.contains("--generate"),
        "{err}"
    );
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );

    let out = herald(dir.path(), &[], &["token", "--user", "42", "--generate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
    assert!(dir.path().join("herald-secrets.toml").exists());

    // `send` refuses the same way instead of using a key no server knows.
    let other = tempfile::tempdir().expect("temp dir");
    let out = herald(
        other.path(),
        &[],
        &["send", "--to", "1", "--title", "t", "--content", "c"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("herald-secrets.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn send_options_are_checked_before_anything_is_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (args, expect) in [
        (&["send", "--title", "t", "--content", "c"][..], "--to"),
        (
            &[
                "send",
                "--to",
                "1",
                "--broadcast",
                "--title",
                "t",
                "--content",
                "c",
            ][..],
            "cannot be used with",
        ),
        (
            &["send", "--to", "1", "--template", "n", "--data", "[1]"][..],
            "JSON object",
        ),
        (
            &[
                "send",
                "--to",
                "1",
                "--title",
                "t",
                "--content",
                "c",
                "--data",
                "{}",
            ][..],
            "--template",
        ),
    ] {
        let out = herald(dir.path(), &[], args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
    let help = herald(dir.path(), &[], &["send", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Examples:") && text.contains("--broadcast"),
        "{text}"
    );
}

/// `--broadcast`, `--template`/`--data` and `--idempotency-key` reach the API as the
/// request fields they name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_broadcasts_renders_templates_and_sends_once_per_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let templates = dir.path().join("templates/report_ready");
    std::fs::create_dir_all(&templates).expect("mkdir");
    std::fs::write(
        templates.join("websocket.json.j2"),
        r#"{"title": "Report {{ reportId }} ready", "content": "open it"}"#,
    )
    .expect("write template");
    let server = spawn_process(dir.path(), free_port(), &[]).await;
    let token = herald(dir.path(), &[], &["token", "--user", "42"]);
    assert!(token.status.success(), "{}", stderr(&token));
    let token = String::from_utf8(token.stdout).expect("utf-8");
    let mut ws = ws_connect_url(&server.ws_url(token.trim())).await;
    ws.welcome().await;
    let send = |args: &[&str]| {
        let mut all = vec!["send", "--server", &server.base];
        all.extend_from_slice(args);
        let out = herald(dir.path(), &[], &all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON answer")
    };

    let b = send(&["--broadcast", "--title", "all", "--content", "hello"]);
    let m = ws.next_message().await;
    assert_eq!(m["id"], b["id"]);
    assert_eq!(m["title"], "all");

    let t = send(&[
        "--to",
        "42",
        "--template",
        "report_ready",
        "--data",
        r#"{"reportId":7}"#,
    ]);
    let m = ws.next_message().await;
    assert_eq!(m["id"], t["id"]);
    assert_eq!(m["title"], "Report 7 ready", "{m}");

    let args = [
        "--to",
        "42",
        "--title",
        "once",
        "--content",
        "c",
        "--idempotency-key",
        "k-1",
    ];
    let first = send(&args);
    let again = send(&args);
    assert_eq!(first["id"], again["id"]);
    assert_eq!(ws.next_message().await["id"], first["id"]);
    ws.expect_no_message(Duration::from_millis(300)).await;
    let resp = server
        .client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), StatusCode::OK);
}

/// `herald listen` is a WebSocket client in the binary: it prints the frames as JSON lines
/// and acks each message, so the delivery ends `delivered`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_messages_and_acks_them() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let server = spawn_process_with_secrets(dir.path()).await;
    let secrets = [
        ("HERALD_API_KEY", PROC_API_KEY),
        ("HERALD_JWT_SECRET", PROC_JWT_SECRET),
    ];
    let mut child = herald_command(dir.path(), &secrets)
        .args([
            "listen",
            "--user",
            "42",
            "--count",
            "1",
            "--server",
            &server.base,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn listen");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let welcome = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no welcome line")
        .expect("listen exited");
    let welcome: serde_json::Value = serde_json::from_str(&welcome).expect("JSON line");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let (status, sent) = server
        .send(&serde_json::json!({"title": "t", "content": "hello", "receivers": ["42"]}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    let id = sent["id"].as_str().expect("id").to_owned();
    let message = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no message line")
        .expect("listen exited");
    let message: serde_json::Value = serde_json::from_str(&message).expect("JSON line");
    assert_eq!(message["id"], id.as_str(), "{message}");
    assert_eq!(message["content"], "hello");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "listen --count 1 did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    // The ack reached the store.
    loop {
        let resp = server
            .client
            .get(format!("{}/api/v1/messages/{id}", server.base))
            .bearer_auth(PROC_API_KEY)
            .send()
            .await
            .expect("get message");
        let (_, m) = read_response(resp).await;
        if m["deliveries"][0]["status"] == "delivered" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never delivered: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
