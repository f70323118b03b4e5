//! Test harness: an in-process Herald, and the crate's local webhook receiver
//! (`herald_custom_channel::testing`, re-exported here).
//!
//! Nothing here sleeps to wait: Herald's delivery status is polled with a deadline
//! ([`wait_until`]).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

pub use herald_custom_channel::testing::*;

// ---------------------------------------------------------------------------------------------
// Herald in-process
// ---------------------------------------------------------------------------------------------

/// `kind = "webhook.json"`, `url`, `secret` (+ `extra` keys) as a `[channels.<name>]` table.
pub fn hook_table(url: &str, extra: &[(&str, &str)]) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("kind".into(), "webhook.json".into());
    t.insert("url".into(), url.into());
    t.insert("secret".into(), SECRET.into());
    for (k, v) in extra {
        t.insert((*k).into(), (*v).into());
    }
    t
}

pub struct Herald {
    // Dropped before the directory that holds its database.
    running: Option<herald::Running>,
    pub base: String,
    pub api_key: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
}

/// Start Herald with `Settings::for_data_dir` and the given channel instances.
pub async fn start_herald(channels: Vec<(&str, toml::Table)>) -> Herald {
    start_herald_with(channels, |_| {}).await
}

/// [`start_herald`] with a closure that adjusts the settings first.
pub async fn start_herald_with(
    channels: Vec<(&str, toml::Table)>,
    tweak: impl FnOnce(&mut herald::config::Settings),
) -> Herald {
    let dir = tempfile::tempdir().expect("create temp dir");
    let mut settings = herald::config::Settings::for_data_dir(dir.path());
    settings.bind = "127.0.0.1:0".into();
    for (name, table) in channels {
        settings.channels.insert(name.to_owned(), table);
    }
    tweak(&mut settings);
    let running = tokio::time::timeout(DEADLINE, herald::start(settings))
        .await
        .expect("herald::start did not finish within the deadline")
        .expect("herald::start failed");
    Herald {
        base: format!("http://{}", running.addr()),
        api_key: running.api_key().to_owned(),
        running: Some(running),
        client: reqwest::Client::builder()
            .timeout(DEADLINE)
            .build()
            .expect("build reqwest client"),
        dir,
    }
}

impl Herald {
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        api_get(&self.client, &self.base, &self.api_key, path).await
    }

    pub async fn send(&self, body: &Value) -> (StatusCode, Value) {
        api_post(
            &self.client,
            &self.base,
            &self.api_key,
            "/api/v1/messages",
            body,
        )
        .await
    }

    /// Poll `GET /api/v1/messages/{id}` until `check` accepts the delivery of `receiver` on
    /// `channel`; returns that delivery.
    pub async fn wait_delivery(
        &self,
        id: &str,
        receiver: &str,
        channel: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_delivery(
            &self.client,
            &self.base,
            &self.api_key,
            id,
            receiver,
            channel,
            what,
            check,
        )
        .await
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            tokio::time::timeout(DEADLINE, running.shutdown())
                .await
                .expect("graceful shutdown within the deadline");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// API helpers shared by the in-process and the child-process tests
// ---------------------------------------------------------------------------------------------

async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(resp.status().as_u16()).expect("valid status");
    let text = resp.text().await.expect("read response body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

pub async fn api_get(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
) -> (StatusCode, Value) {
    let resp = client
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET request failed");
    read(resp).await
}

pub async fn api_post(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let resp = client
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("POST request failed");
    read(resp).await
}

/// The `hook` entry of `GET /api/v1/channels`, asserting it is a `webhook.json` instance.
pub fn assert_lists_hook(channels: &Value) {
    let list = channels
        .as_array()
        .unwrap_or_else(|| panic!("channels is not an array: {channels}"));
    let hook = list
        .iter()
        .find(|c| c["name"] == "hook")
        .unwrap_or_else(|| panic!("no `hook` instance in {channels}"));
    assert_eq!(hook["kind"], "webhook.json", "{hook}");
    assert_eq!(hook["enabled"], true, "{hook}");
}

#[allow(clippy::too_many_arguments)]
pub async fn wait_delivery(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    id: &str,
    receiver: &str,
    channel: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, msg) = api_get(client, base, key, &format!("/api/v1/messages/{id}")).await;
        assert_eq!(status, StatusCode::OK, "GET message {id}: {msg}");
        let delivery = msg["deliveries"]
            .as_array()
            .unwrap_or_else(|| panic!("message without deliveries: {msg}"))
            .iter()
            .find(|d| d["receiver"] == receiver && d["channel"] == channel)
            .cloned()
            .unwrap_or_else(|| panic!("no {channel} delivery for {receiver}: {msg}"));
        if check(&delivery) {
            return delivery;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {DEADLINE:?} waiting for {what}; last delivery: {delivery}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
