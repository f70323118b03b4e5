//! The `herald-custom` binary: Herald's unchanged command line with `webhook.json` linked in,
//! started as a child process from a `herald.toml`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use serde_json::json;

const API_KEY: &str = "custom-binary-test-api-key-0123456789";
const JWT_SECRET: &str = "custom-binary-test-jwt-secret-0123456789abcdef";
/// Start-up includes creating and migrating the database; generous for a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Kills and reaps the child when dropped, so a failing test never leaves a server behind.
struct ChildGuard {
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port on 127.0.0.1")
        .port()
}

fn write_config(dir: &Path, port: u16, hook_url: &str) -> PathBuf {
    let path = dir.join("herald.toml");
    let text = format!(
        r#"bind = "127.0.0.1:{port}"
database_url = "sqlite://{db}"
api_key = "{API_KEY}"
jwt_secret = "{JWT_SECRET}"

[channels.hook]
kind = "webhook.json"
url = "{hook_url}"
secret = "{SECRET}"
timeout = "5s"
# A core key: removed from the table before the channel's strict config sees it.
max_attempts = 3
"#,
        db = dir.join("herald.db").display(),
    );
    std::fs::write(&path, text).expect("write herald.toml");
    path
}

/// `herald-custom serve --config FILE`, run in `dir` with a clean `HERALD_*` environment.
fn spawn(dir: &Path, config: &Path) -> ChildGuard {
    let log = dir.join("herald.log");
    let out = std::fs::File::create(&log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald-custom"));
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn herald-custom");
    ChildGuard { child, log }
}

async fn wait_ready(guard: &mut ChildGuard, client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(status) = guard.child.try_wait().expect("try_wait") {
            panic!(
                "herald-custom exited during start-up with {status}; log:\n{}",
                guard.log_text()
            );
        }
        if let Ok(resp) = client.get(format!("{base}/readyz")).send().await {
            if resp.status().is_success() {
                return;
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "herald-custom was not ready within {START_DEADLINE:?}; log:\n{}",
                guard.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn binary_serves_with_the_webhook_channel() {
    let receiver = Receiver::start([]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = write_config(dir.path(), port, &receiver.url());
    let mut guard = spawn(dir.path(), &config);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("reqwest client");
    wait_ready(&mut guard, &client, &base).await;

    let (status, channels) = api_get(&client, &base, API_KEY, "/api/v1/channels").await;
    assert_eq!(status, StatusCode::OK, "{channels}");
    assert_lists_hook(&channels);

    let (status, sent) = api_post(
        &client,
        &base,
        API_KEY,
        "/api/v1/messages",
        &json!({
            "title": "From the binary",
            "content": "linked, not patched",
            "receivers": ["7"],
            "channels": ["hook"],
        }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    let id = sent["id"].as_str().expect("message id").to_owned();

    let requests = receiver.wait_requests(1).await;
    let body = requests[0].json();
    assert_eq!(body["receiver"], "7", "{body}");
    assert_eq!(body["message"]["title"], "From the binary", "{body}");
    assert_eq!(
        requests[0].header("x-herald-signature"),
        Some(expected_signature(SECRET, &requests[0].body).as_str())
    );

    wait_delivery(
        &client,
        &base,
        API_KEY,
        &id,
        "7",
        "hook",
        "the hook delivery to be sent",
        |d| d["status"] == "sent",
    )
    .await;
    // `guard` kills the server here.
}

#[tokio::test]
async fn binary_refuses_a_bad_webhook_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), free_port(), "ftp://example.com/hook");
    let mut guard = spawn(dir.path(), &config);
    let deadline = Instant::now() + START_DEADLINE;
    let status = loop {
        if let Some(status) = guard.child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            panic!(
                "herald-custom started with a bad webhook url; log:\n{}",
                guard.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(!status.success(), "{status}");
    let log = guard.log_text();
    assert!(log.contains("channels.hook: url:"), "{log}");
}
