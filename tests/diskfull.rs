//! A real full disk under the SQLite store: the binary's database on a 2 MiB tmpfs.
//!
//! Sends until the filesystem is full: every answer is `202` or `503` + `Retry-After`,
//! `/readyz` says "disk full", the log says so once; then the filesystem grows (`mount -o
//! remount,size=…`) and the server takes sends again *by itself* (no restart); after a
//! restart every message that got a `202` is listed and nothing else is.
//!
//! Mounting needs root (CI runs as root), so this is compiled with `--features
//! service-tests` like the other tests that need more than the process; it fails — never
//! skips — when it cannot mount. `tests/faults.rs` covers the same promise everywhere with
//! `database.max_size`, which makes SQLite answer `SQLITE_FULL` the same way.
#![cfg(feature = "service-tests")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::json;

/// A tmpfs mounted for one test, unmounted when dropped (also on a panic).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            ok.success(),
            "mounting a tmpfs needs root (service-tests run as root in CI)"
        );
        Tmpfs(dir.to_owned())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(ok.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn post(server: &HeraldProcess, i: usize) -> (StatusCode, Option<String>, bool) {
    let body =
        json!({"title": format!("fill {i}"), "content": "x".repeat(2000), "receivers": ["u"]});
    let resp = server
        .client
        .post(format!("{}/api/v1/messages", server.base))
        .bearer_auth(PROC_API_KEY)
        .json(&body)
        .send()
        .await
        .expect("send");
    let retry = resp.headers().contains_key("retry-after");
    let (status, body) = read_response(resp).await;
    (status, body["id"].as_str().map(str::to_owned), retry)
}

async fn readyz(server: &HeraldProcess) -> (StatusCode, serde_json::Value) {
    let resp = server
        .client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .expect("readyz");
    read_response(resp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_refuses_sends_recovers_by_itself_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fs = Tmpfs::mount(&dir.path().join("data"), "2m");
    let secrets = [
        ("HERALD_API_KEY", PROC_API_KEY),
        ("HERALD_JWT_SECRET", PROC_JWT_SECRET),
    ];
    let server = spawn_process(&fs.0, free_port(), &secrets).await;
    let (mut accepted, mut refused) = (Vec::new(), 0);
    let mut i = 0;
    while refused < 50 {
        let (status, id, retry) = post(&server, i).await;
        i += 1;
        match status {
            StatusCode::ACCEPTED => accepted.push(id.expect("id")),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(retry, "503 without Retry-After");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
        assert!(i < 20_000, "the filesystem never filled up");
    }
    let (status, body) = readyz(&server).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("disk full")),
        "{body}"
    );

    // Room again: the server notices by itself (its probe) and takes sends.
    fs.resize("64m");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = readyz(&server).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recovered after space came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, id, _) = post(&server, i).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    accepted.push(id.expect("id"));
    let log = server.log_text();
    let said = log.matches("the database cannot write").count();
    assert!((1..=2).contains(&said), "logged {said} times");
    drop(server);

    // After a restart: exactly what was accepted.
    let server = spawn_process(&fs.0, free_port(), &secrets).await;
    let resp = server
        .client
        .get(format!("{}/api/v1/messages?size=1", server.base))
        .bearer_auth(PROC_API_KEY)
        .send()
        .await
        .expect("list");
    let (_, list) = read_response(resp).await;
    assert_eq!(
        list["total"].as_u64(),
        Some(accepted.len() as u64),
        "{list}"
    );
    for id in &accepted {
        let resp = server
            .client
            .get(format!("{}/api/v1/messages/{id}", server.base))
            .bearer_auth(PROC_API_KEY)
            .send()
            .await
            .expect("get");
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{id} answered 202 but not stored"
        );
    }
    eprintln!(
        "FAULTS tmpfs_full: accepted={} refused={refused} logged={said}",
        accepted.len()
    );
}
