//! Fuzz targets: plain functions that feed arbitrary input to Herald's real decoding code
//! and panic on anything a client must never see: a panic, a `5xx`, or a rejection that is
//! not a `4xx` JSON error. `tests/fuzz.rs` drives them with proptest (bounded, in CI);
//! `fuzz/` drives them with cargo-fuzz (nightly, unbounded). Not a public API.
//!
//! The HTTP targets run each input twice: through the extractor alone, and through the
//! whole server (router, auth, extractors, validation, store), started once per process on
//! `127.0.0.1:0` with its data in a temporary directory, on a runtime of its own: call the
//! targets from plain threads, not from inside a Tokio runtime.

#![doc(hidden)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::extract::FromRequestParts;
use futures_util::FutureExt;
use reqwest::Method;

use crate::api::dto::{SeedSendRequest, SendRequest};
use crate::api::extract::{parse_json, Params};
use crate::config::{Secret, Settings, Synchronous};
use crate::error::ApiError;
use crate::ws::frame::{decode, ClientFrame, ServerFrame};

const API_KEY: &str = "fuzz-api-key-0123456789abcdef";
const JWT_SECRET: &str = "fuzz-jwt-secret-0123456789abcdef0123456789";

/// A client → server WebSocket text frame (docs/websocket.md §2.2): decoded, or answered with an error
/// frame that is itself valid JSON. Bytes that are not UTF-8 are decoded lossily (the
/// protocol layer refuses them before Herald sees them).
pub fn ws_frame(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match decode(&text) {
        Ok(ClientFrame::Ack { id } | ClientFrame::Read { id }) => {
            assert!(!id.is_empty() && id.len() <= 64, "accepted id {id:?}");
        }
        Ok(ClientFrame::Ping) => {}
        Err(reason) => {
            let frame = ServerFrame::Error { error: &reason }.to_json();
            let v: serde_json::Value =
                serde_json::from_str(&frame).expect("an error frame is JSON");
            assert_eq!(v["type"], "error", "{frame}");
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{frame}"
            );
        }
    }
}

/// A send body: `JsonBody` + the `SendRequest` / `SeedSendRequest` DTOs, then
/// `POST /api/v1/messages` and `POST /message/sendMessage` on the server.
pub fn send_body(data: &[u8]) {
    if let Err(e) = parse_json::<SendRequest>(data) {
        assert_rejection(&e, "SendRequest");
    }
    if let Err(e) = parse_json::<SeedSendRequest>(data) {
        assert_rejection(&e, "SeedSendRequest");
    }
    let server = server();
    for path in ["/api/v1/messages", "/message/sendMessage"] {
        server.check(Method::POST, path, Auth::ApiKey, Some(data.to_vec()), data);
    }
}

/// A query string: `Params` and its page numbers, then every route that reads query
/// parameters on the server.
pub fn query(data: &str) {
    if let Ok(request) = axum::http::Request::builder()
        .uri(format!("/api/v1/messages?{data}"))
        .body(())
    {
        let (mut parts, ()) = request.into_parts();
        let parsed = Params::from_request_parts(&mut parts, &())
            .now_or_never()
            .expect("Params extracts without waiting");
        match parsed {
            Ok(params) => {
                for names in [["page", "pageNum"], ["size", "pageSize"]] {
                    if let Err(e) = params.number(&names, 1, 1000) {
                        assert_rejection(&e, "Params::number");
                    }
                }
            }
            Err(e) => assert_rejection(&e, "Params"),
        }
    }
    let server = server();
    for (method, path, auth) in [
        (Method::GET, "/api/v1/messages", Auth::ApiKey),
        (Method::GET, "/message/getMessagePage", Auth::ApiKey),
        (Method::GET, "/api/v1/inbox", Auth::User),
        (Method::GET, "/api/v1/stats/deliveries", Auth::ApiKey),
        (Method::DELETE, "/message/deleteMessageById", Auth::ApiKey),
        (Method::GET, "/websocket", Auth::None),
    ] {
        server.check(
            method,
            &format!("{path}?{data}"),
            auth,
            None,
            data.as_bytes(),
        );
    }
}

/// How often each route answered each status so far in this process (route, status, count):
/// shows how much of the input got past validation.
pub fn answered() -> Vec<(String, u16, u64)> {
    answers()
        .lock()
        .map(|seen| seen.iter().map(|((r, s), n)| (r.clone(), *s, *n)).collect())
        .unwrap_or_default()
}

fn answers() -> &'static Mutex<BTreeMap<(String, u16), u64>> {
    static ANSWERS: OnceLock<Mutex<BTreeMap<(String, u16), u64>>> = OnceLock::new();
    ANSWERS.get_or_init(Default::default)
}

#[track_caller]
fn assert_rejection(e: &ApiError, what: &str) {
    assert!(
        e.status().is_client_error(),
        "{what} rejected with {}: {e:?}",
        e.status()
    );
}

#[derive(Clone, Copy)]
enum Auth {
    None,
    ApiKey,
    User,
}

/// The in-process server the HTTP targets talk to.
struct Server {
    runtime: tokio::runtime::Runtime,
    base: String,
    user_token: String,
    client: reqwest::Client,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

impl Server {
    fn start() -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("fuzz runtime");
        let dir = data_dir();
        let mut settings = Settings::for_data_dir(&dir);
        settings.api_key = Some(Secret::new(API_KEY));
        settings.jwt_secret = Some(Secret::new(JWT_SECRET));
        settings.database.synchronous = Synchronous::Normal;
        settings.templates.dir = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates"));
        // A provider instance (its vendor is a closed port), so that channel names,
        // addresses and routing steps naming it take the real paths.
        #[cfg(feature = "sms")]
        {
            let mut sms = toml::Table::new();
            for (k, v) in [
                ("kind", "sms.twilio"),
                ("account_sid", "AC0123456789abcdef0123456789abcdef"),
                ("auth_token", "fuzz-token"),
                ("from", "+15005550006"),
                ("endpoint", "http://127.0.0.1:9"),
            ] {
                sms.insert(k.into(), toml::Value::String(v.into()));
            }
            settings.channels.insert("sms".into(), sms);
        }
        let running = runtime
            .block_on(crate::start(settings))
            .expect("start the fuzz server");
        let base = format!("http://{}", running.addr());
        let user_token = running.mint_token(
            "fuzz-user",
            None,
            None,
            Duration::from_secs(10 * 365 * 24 * 3600),
        );
        // The server lives as long as the process.
        runtime.spawn(async move {
            let mut running = running;
            running.stopped().await;
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Server {
            runtime,
            base,
            user_token,
            client,
        }
    }

    /// One request; panics on a `5xx` or on an error without a JSON `error`.
    fn check(&self, method: Method, path: &str, auth: Auth, body: Option<Vec<u8>>, input: &[u8]) {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        req = match auth {
            Auth::None => req,
            Auth::ApiKey => req.bearer_auth(API_KEY),
            Auth::User => req.bearer_auth(&self.user_token),
        };
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let Ok(req) = req.build() else {
            // Not a URL a client could send (the HTTP layer refuses it before Herald).
            return;
        };
        let (status, text) = self.runtime.block_on(async {
            let resp = self
                .client
                .execute(req)
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: no answer ({e})"));
            let status = resp.status();
            (status, resp.text().await.unwrap_or_default())
        });
        if let Ok(mut seen) = answers().lock() {
            let route = format!("{method} {}", path.split('?').next().unwrap_or(path));
            *seen.entry((route, status.as_u16())).or_default() += 1;
        }
        let input = String::from_utf8_lossy(input);
        assert!(
            !status.is_server_error(),
            "{method} {path} answered {status}: {text}\ninput: {input:?}"
        );
        if status.is_client_error() {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| {
                panic!("{method} {path}: {status} without a JSON body: {text:?}\ninput: {input:?}")
            });
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{method} {path}: {status} without an error text: {text}\ninput: {input:?}"
            );
        }
    }
}

/// `$TMPDIR/herald-fuzz-<pid>`, emptied; directories of earlier runs whose process is gone
/// are removed (the server of a run lives until its process exits).
fn data_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    if std::path::Path::new("/proc/self").exists() {
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("herald-fuzz-"))
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    let dir = tmp.join(format!("herald-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the fuzz data directory");
    dir
}
