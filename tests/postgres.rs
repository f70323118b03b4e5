//! Herald on PostgreSQL: `herald migrate --database-url postgres://…`, the `herald serve`
//! binary and an in-process `herald::start` on the same database.
//!
//! Needs PostgreSQL (`HERALD_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, trust auth); compiled only with
//! `--features service-tests`. Each test creates its own database and drops it at the end.
//! An unreachable server fails the test; nothing is skipped.
#![cfg(feature = "service-tests")]

mod common;

use common::*;
use reqwest::StatusCode;
use sqlx::Connection;

fn pg_admin_url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn admin() -> sqlx::PgConnection {
    let url = pg_admin_url();
    sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is required for these tests (service-tests) and is not reachable at {} \
             (set HERALD_TEST_POSTGRES_URL): {e}",
            herald::redact_url(&url)
        )
    })
}

/// A database of its own for one test, dropped with this guard (also when the test fails).
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn create() -> TestDb {
        let name = format!("herald_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = admin().await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let admin = pg_admin_url();
        let (base, query) = admin
            .split_once('?')
            .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
        let authority = base.find("://").map_or(0, |i| i + 3);
        let base = base[authority..]
            .find('/')
            .map_or(base, |i| &base[..authority + i]);
        let url = match query {
            Some(q) => format!("{base}/{name}?{q}"),
            None => format!("{base}/{name}"),
        };
        TestDb { name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database")
                .block_on(async {
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin().await)
                        .await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) && !std::thread::panicking() {
            panic!("could not drop the test database {}", self.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_then_serve_on_postgres() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");

    // `herald migrate`, twice: the second run finds everything applied.
    for _ in 0..2 {
        let out = herald_command(dir.path(), &[])
            .arg("migrate")
            .arg("--database-url")
            .arg(&db.url)
            .output()
            .expect("run herald migrate");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "herald migrate failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("migrations applied"), "{stdout}");
    }

    // `herald serve` (the binary) on the database: a send is committed there.
    let mut server = spawn_process(
        dir.path(),
        free_port(),
        &[
            ("HERALD_DATABASE_URL", db.url.as_str()),
            ("HERALD_API_KEY", PROC_API_KEY),
            ("HERALD_JWT_SECRET", PROC_JWT_SECRET),
        ],
    )
    .await;
    let (status, body) = server.send(&msg("from the binary", &["pg-user"])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let first = body["id"].as_str().expect("an id").to_owned();
    server.sigterm();
    let exit = server.wait_exit(DEADLINE).await;
    assert!(exit.success(), "{exit}; log:\n{}", server.log_text());

    // An in-process server on the same database: one more send, then both arrive by replay
    // (oldest first) to a WebSocket user who connects afterwards, and the ack lands.
    let app = spawn_app_with(|s| s.database_url = db.url.clone()).await;
    let second = send_ok(&app, msg("in process", &["pg-user"])).await;
    let (mut ws, _) = ws_login(&app, &app.token("pg-user")).await;
    let replayed = [ws.next_message().await, ws.next_message().await];
    assert_eq!(replayed[0]["id"], first.as_str());
    assert_eq!(replayed[1]["id"], second.as_str());
    assert_eq!(replayed[1]["title"], "in process");
    app.wait_status(&first, "pg-user", &["sent"]).await;
    ws.ack(&second).await;
    app.wait_status(&second, "pg-user", &["delivered"]).await;
    ws.close().await;
    app.shutdown().await;
}
