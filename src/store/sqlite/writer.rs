//! The SQLite writer: one OS thread owns the only read-write connection (rusqlite,
//! synchronous, prepared statements cached) and applies queued jobs in batches. Every job
//! waiting when a batch starts runs in **one transaction** (group commit): one hand-off to
//! this thread per batch, not one per statement.
//!
//! What a caller hears:
//! * `Ok` only after the `COMMIT` of the transaction that holds its work returned OK.
//! * A job that fails on its own (a constraint, bad data) fails alone: the batch is rolled
//!   back and every job runs again in a transaction of its own.
//! * When the *database* fails (disk full, I/O error, locked for longer than the busy
//!   timeout, the file gone), the transaction is rolled back — the connection is reopened if
//!   it cannot be — and **every** job of the batch fails with [`StoreError::Unavailable`].
//!   [`Health`] records why (`/readyz`, the send path), the log says so once, and a probe
//!   write every second finds out when writing works again.
//!
//! Admission control for sends ([`Writer::admit`]): the queue is bounded (jobs) and so are
//! the bytes queued sends hold; a send that finds either full is refused with
//! [`StoreError::Overloaded`] at once, before anything is written. Beyond that the writer
//! sheds the way CoDel does: a burst may queue, but once the oldest queued send has waited
//! longer than `database.max_queue_wait` for ten such periods in a row (a standing queue:
//! the writer cannot keep up), every send that waited longer than `max_queue_wait` is
//! refused, until the queue has drained. So overload turns into quick `503`s, never into a
//! growing queue, while a short burst is still taken whole. Internal writes (status
//! changes, claims, timers) wait for room instead: their producers are bounded.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::audiences::Hot;
use crate::model::now_ms;
use crate::store::audience::{Members, MembersCache};
use crate::store::{Health, StoreError};

/// What a job gets while it runs: the connection (inside the batch's transaction), the
/// batch's clock, and the writer's caches.
pub(super) struct Ctx<'a> {
    pub conn: &'a Connection,
    pub now: i64,
    /// Audiences being changed (state kept across batches; cleared on any rollback).
    pub hot: &'a mut Hot,
    /// Member lists to share with the readers once the transaction has committed.
    pub publish: &'a mut Vec<(i64, Arc<Members>)>,
}

/// One unit of work for the writer. `run` may be called more than once (a batch that
/// failed is retried job by job), so it must not consume its input.
pub(super) trait Job: Send {
    fn run(&mut self, cx: &mut Ctx<'_>) -> Result<(), StoreError>;
    /// Answer the caller: called exactly once, after the commit (or with the error).
    fn finish(self: Box<Self>, result: Result<(), StoreError>);
    /// A send under admission control: when it was queued.
    fn admitted_at(&self) -> Option<Instant>;
}

struct Task<T, F> {
    f: F,
    out: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
    admitted: Option<(Instant, OwnedSemaphorePermit)>,
}

impl<T, F> Job for Task<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut Ctx<'_>) -> Result<T, StoreError> + Send + 'static,
{
    fn run(&mut self, cx: &mut Ctx<'_>) -> Result<(), StoreError> {
        self.out = Some((self.f)(cx)?);
        Ok(())
    }

    fn finish(self: Box<Self>, result: Result<(), StoreError>) {
        let Task { out, reply, .. } = *self;
        let answer = result.and_then(|()| {
            out.ok_or_else(|| StoreError::Corrupt("a committed job left no result".into()))
        });
        if let Err(Err(e)) = reply.send(answer) {
            // Nobody waits for this answer (a queued-only write): say what went wrong.
            tracing::warn!(error = %e, "SQLite: a queued write failed");
        }
    }

    fn admitted_at(&self) -> Option<Instant> {
        self.admitted.as_ref().map(|(at, _)| *at)
    }
}

enum Msg {
    Job(Box<dyn Job>),
    /// Try a small write (the writer is failing: has it recovered?).
    Probe,
    /// Hourly housekeeping (expired idempotency keys, old presence records).
    Prune,
    /// Finish everything queued before it, close the connection, answer, stop.
    Close(oneshot::Sender<()>),
}

/// How the writer opens (and, after an I/O error, reopens) its connection.
pub(super) struct Opener {
    pub path: PathBuf,
    pub synchronous: &'static str,
    pub max_page_count: Option<u64>,
}

impl Opener {
    pub fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(256);
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA synchronous = {}; \
             PRAGMA cache_size = -16000; PRAGMA temp_store = MEMORY;",
            self.synchronous
        ))?;
        if let Some(pages) = self.max_page_count {
            conn.pragma_update(None, "max_page_count", pages)?;
        }
        Ok(conn)
    }
}

pub(super) struct Settings {
    /// Jobs per transaction.
    pub max_batch: usize,
    pub queue: usize,
    pub max_queued_bytes: usize,
    /// CoDel's target (see the module comment).
    pub max_queue_wait: Duration,
}

/// The handle the store holds.
pub(super) struct Writer {
    tx: mpsc::Sender<Msg>,
    pub health: Arc<Health>,
    /// KiB the queued sends may hold.
    budget: Arc<Semaphore>,
    budget_kib: u32,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(
        conn: Connection,
        opener: Opener,
        settings: Settings,
        members: Arc<MembersCache>,
    ) -> Result<Writer, StoreError> {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let health = Arc::new(Health::default());
        let budget_kib = (settings.max_queued_bytes / 1024).clamp(1, u32::MAX as usize) as u32;
        let thread = {
            let health = health.clone();
            let mut w = Thread {
                conn: Some(conn),
                opener,
                rx,
                health,
                hot: Hot::new().with_cache(members.clone()),
                members,
                max_batch: settings.max_batch.max(1),
                shed: Shedding::new(settings.max_queue_wait),
            };
            std::thread::Builder::new()
                .name("herald-sqlite-writer".into())
                .spawn(move || w.run())
                .map_err(|e| StoreError::Corrupt(format!("starting the SQLite writer: {e}")))?
        };
        // Probes while failing, housekeeping hourly. It holds a sender: aborted on close.
        let ticker = {
            let tx = tx.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last_prune = Instant::now();
                loop {
                    tick.tick().await;
                    let msg = if health.is_failing() {
                        Msg::Probe
                    } else if last_prune.elapsed() >= Duration::from_secs(3600) {
                        last_prune = Instant::now();
                        Msg::Prune
                    } else {
                        continue;
                    };
                    // Never wait for room: a full queue will tell the health by itself.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(msg) {
                        return;
                    }
                }
            })
        };
        Ok(Writer {
            tx,
            health,
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            thread: Mutex::new(Some(thread)),
            ticker,
        })
    }

    /// Run `f` in the writer's next transaction; waits for room in the queue.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut Ctx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let task = Task {
            f,
            out: None,
            reply,
            admitted: None,
        };
        self.tx
            .send(Msg::Job(Box::new(task)))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queue `f` and return once it is queued (not committed): for writes whose caller
    /// needs only their order (everything queued later runs after it). A failure is logged.
    pub async fn submit<F>(&self, f: F) -> Result<(), StoreError>
    where
        F: FnMut(&mut Ctx<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        let (reply, _) = oneshot::channel();
        self.tx
            .send(Msg::Job(Box::new(Task {
                f,
                out: None,
                reply,
                admitted: None,
            })))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Like [`Writer::write`], for a send under admission control: refused at once
    /// (`Overloaded`/`Unavailable`, nothing written) when the store is failing, the queue is
    /// full, the queued sends already hold the byte budget, or it waits too long in the
    /// queue. `bytes`: about what the job holds in memory.
    pub async fn admit<T, F>(&self, bytes: usize, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut Ctx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        if let Some(reason) = self.health.failing() {
            return Err(StoreError::Unavailable(reason));
        }
        let kib = (bytes / 1024 + 1).min(self.budget_kib as usize) as u32;
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| StoreError::Overloaded("queued writes hold their memory budget"))?;
        let slot = self.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => {
                StoreError::Overloaded("the write queue is full")
            }
            mpsc::error::TrySendError::Closed(()) => StoreError::Closed,
        })?;
        let (reply, rx) = oneshot::channel();
        slot.send(Msg::Job(Box::new(Task {
            f,
            out: None,
            reply,
            admitted: Some((Instant::now(), permit)),
        })));
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Jobs waiting in the queue (for `/metrics`).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Finish everything queued, close the connection and stop the thread.
    pub async fn close(&self) {
        self.ticker.abort();
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Why a transaction failed.
enum Failure {
    /// The database cannot write: every job of the batch fails with this reason.
    Database(String),
    /// This job's own error (constraint, data): the others may still succeed.
    Job(StoreError),
}

/// SQLite result codes that say "the database cannot write now", as opposed to "this
/// statement is wrong". <https://www.sqlite.org/rescode.html>
fn database_failure(e: &StoreError) -> Option<String> {
    let StoreError::Sqlite(rusqlite::Error::SqliteFailure(err, _)) = e else {
        return None;
    };
    let why = match err.code {
        ErrorCode::DiskFull => "disk full",
        ErrorCode::SystemIoFailure => "I/O error",
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
            "the database is locked by another process"
        }
        ErrorCode::ReadOnly => "the database is read-only",
        ErrorCode::CannotOpen => "the database file cannot be opened",
        ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => "the database file is damaged",
        ErrorCode::OutOfMemory => "out of memory",
        ErrorCode::FileLockingProtocolFailed => "file locking failed",
        _ => return None,
    };
    Some(why.to_owned())
}

struct Thread {
    /// `None` after a failed reopen (every job fails until a probe reopens it).
    conn: Option<Connection>,
    opener: Opener,
    rx: mpsc::Receiver<Msg>,
    health: Arc<Health>,
    hot: Hot,
    members: Arc<MembersCache>,
    max_batch: usize,
    shed: Shedding,
}

/// CoDel-style shedding of queued sends (see the module comment).
struct Shedding {
    /// `database.max_queue_wait`: the standing queue delay tolerated.
    target: Duration,
    /// How long the oldest send must have waited longer than `target` before shedding.
    interval: Duration,
    above_since: Option<Instant>,
    on: bool,
}

impl Shedding {
    fn new(target: Duration) -> Shedding {
        Shedding {
            target,
            interval: target * 10,
            above_since: None,
            on: false,
        }
    }

    /// Update with the batch about to run (`oldest`: the longest wait of a send in it;
    /// `drained`: the queue is empty after it). `true`: refuse sends older than `target`.
    fn update(&mut self, oldest: Option<Duration>, drained: bool) -> bool {
        let now = Instant::now();
        match oldest {
            Some(wait) if wait > self.target => {
                let since = *self.above_since.get_or_insert(now);
                if now.duration_since(since) >= self.interval {
                    self.on = true;
                }
            }
            _ => {
                self.above_since = None;
                if drained {
                    self.on = false;
                }
            }
        }
        self.on
    }
}

impl Thread {
    fn run(&mut self) {
        let mut jobs: Vec<Box<dyn Job>> = Vec::with_capacity(self.max_batch);
        loop {
            let Some(first) = self.rx.blocking_recv() else {
                break; // every sender is gone
            };
            let mut close = None;
            let mut probe = false;
            let mut prune = false;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Job(j) => jobs.push(j),
                    Msg::Probe => probe = true,
                    Msg::Prune => prune = true,
                    Msg::Close(done) => {
                        close = Some(done);
                        break;
                    }
                }
                if jobs.len() < self.max_batch {
                    next = self.rx.try_recv().ok();
                }
            }
            if !jobs.is_empty() {
                let drained = jobs.len() < self.max_batch && close.is_none();
                self.batch(&mut jobs, drained);
            } else if probe {
                self.probe();
            }
            if prune {
                self.prune();
            }
            if let Some(done) = close {
                self.rx.close();
                while let Ok(msg) = self.rx.try_recv() {
                    match msg {
                        Msg::Job(j) => j.finish(Err(StoreError::Closed)),
                        Msg::Close(d) => drop(d.send(())),
                        Msg::Probe | Msg::Prune => {}
                    }
                }
                self.shut();
                let _ = done.send(());
                return;
            }
        }
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(conn) = self.conn.take() {
            if let Err((_, e)) = conn.close() {
                tracing::warn!(error = %e, "closing the SQLite writer failed");
            }
        }
    }

    /// Group commit, with the rules in the module comment.
    fn batch(&mut self, jobs: &mut Vec<Box<dyn Job>>, drained: bool) {
        // While the queue stands, sends that waited too long are refused before anything runs.
        let oldest = jobs.iter().filter_map(|j| j.admitted_at()).min();
        let target = self.shed.target;
        if self.shed.update(oldest.map(|t| t.elapsed()), drained) {
            let mut i = 0;
            while i < jobs.len() {
                if jobs[i]
                    .admitted_at()
                    .is_some_and(|at| at.elapsed() > target)
                {
                    jobs.remove(i).finish(Err(StoreError::Overloaded(
                        "the database cannot keep up; waited too long in the write queue",
                    )));
                } else {
                    i += 1;
                }
            }
        }
        if jobs.is_empty() {
            return;
        }
        let now = now_ms();
        if jobs.len() > 1 {
            match self.transaction(jobs, now) {
                Ok(()) => {
                    for j in jobs.drain(..) {
                        j.finish(Ok(()));
                    }
                    return;
                }
                Err(Failure::Database(why)) => {
                    for j in jobs.drain(..) {
                        j.finish(Err(StoreError::Unavailable(why.clone())));
                    }
                    return;
                }
                Err(Failure::Job(_)) => {
                    tracing::debug!("SQLite: a batch failed; retrying its jobs one by one");
                }
            }
        }
        let mut failed: Option<String> = None;
        for mut j in jobs.drain(..) {
            if let Some(why) = &failed {
                j.finish(Err(StoreError::Unavailable(why.clone())));
                continue;
            }
            match self.transaction(std::slice::from_mut(&mut j), now) {
                Ok(()) => j.finish(Ok(())),
                Err(Failure::Job(e)) => {
                    tracing::warn!(error = %e, "SQLite: write failed");
                    j.finish(Err(e));
                }
                Err(Failure::Database(why)) => {
                    j.finish(Err(StoreError::Unavailable(why.clone())));
                    failed = Some(why);
                }
            }
        }
    }

    /// Run `jobs` in one transaction. `Ok` only when `COMMIT` returned OK; on any error
    /// the transaction is rolled back (and the connection reopened if it cannot be).
    fn transaction(&mut self, jobs: &mut [Box<dyn Job>], now: i64) -> Result<(), Failure> {
        if self.conn.is_none() {
            self.reopen();
        }
        let Some(conn) = self.conn.as_ref() else {
            let why = self
                .health
                .failing()
                .unwrap_or_else(|| "the database file cannot be opened".into());
            return Err(Failure::Database(why));
        };
        let mut publish = Vec::new();
        let result = (|| {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let mut cx = Ctx {
                conn,
                now,
                hot: &mut self.hot,
                publish: &mut publish,
            };
            for j in jobs.iter_mut() {
                j.run(&mut cx)?;
            }
            cx.hot.flush(conn, now)?;
            conn.execute_batch("COMMIT")?;
            Ok::<(), StoreError>(())
        })();
        match result {
            Ok(()) => {
                self.health.ok();
                for (seq, m) in publish {
                    self.members.insert(seq, m);
                }
                Ok(())
            }
            Err(e) => {
                self.rollback();
                match database_failure(&e) {
                    Some(why) => {
                        self.health.fail(&why);
                        if why == "I/O error" || why == "the database file is damaged" {
                            // After a failed write or fsync the page cache can't be
                            // trusted: start from the file again.
                            self.shut();
                            self.reopen();
                        }
                        Err(Failure::Database(why))
                    }
                    None => Err(Failure::Job(e)),
                }
            }
        }
    }

    /// Roll back whatever is open. If the connection is still inside a transaction
    /// afterwards (SQLite may have ended it by itself after an I/O error or a full disk, or
    /// the rollback itself failed), close it: closing rolls back, and a fresh connection
    /// starts clean. Never leaves a transaction open.
    fn rollback(&mut self) {
        self.hot.clear();
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        if !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "SQLite: rollback failed; reopening the connection");
            }
        }
        if !conn.is_autocommit() {
            self.shut();
            self.reopen();
        }
    }

    fn reopen(&mut self) {
        match self.opener.open() {
            Ok(c) => self.conn = Some(c),
            Err(e) => {
                self.conn = None;
                let why = database_failure(&e).unwrap_or_else(|| e.to_string());
                self.health.fail(&why);
            }
        }
    }

    /// A small committed write (page allocation and the WAL included): does writing work?
    fn probe(&mut self) {
        let mut jobs: Vec<Box<dyn Job>> = Vec::new();
        let (reply, _rx) = oneshot::channel::<Result<(), StoreError>>();
        jobs.push(Box::new(Task {
            f: |cx: &mut Ctx<'_>| {
                cx.conn
                    .prepare_cached("INSERT INTO herald_probe (data) VALUES (zeroblob(16384))")?
                    .execute([])?;
                cx.conn
                    .prepare_cached("DELETE FROM herald_probe")?
                    .execute([])?;
                Ok(())
            },
            out: None,
            reply,
            admitted: None,
        }));
        let _ = self.transaction(&mut jobs, now_ms());
    }

    fn prune(&mut self) {
        let mut jobs: Vec<Box<dyn Job>> = Vec::new();
        let (reply, _rx) = oneshot::channel::<Result<(), StoreError>>();
        jobs.push(Box::new(Task {
            f: |cx: &mut Ctx<'_>| super::messages::prune(cx),
            out: None,
            reply,
            admitted: None,
        }));
        if let Err(Failure::Job(e)) = self.transaction(&mut jobs, now_ms()) {
            tracing::warn!(error = %e, "pruning old records failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_taken_and_a_standing_queue_is_shed_until_it_drains() {
        let mut s = Shedding::new(Duration::from_millis(50));
        s.interval = Duration::ZERO; // no wall-clock waiting in a test
        let long = Some(Duration::from_millis(80));
        let short = Some(Duration::from_millis(10));
        // A fresh queue: under target, nothing shed.
        assert!(!s.update(short, false));
        // Above target for the interval: shed, and keep shedding while the queue stands,
        // even when the sends in a batch are fresh.
        assert!(s.update(long, false));
        assert!(s.update(short, false));
        // Only a drained queue ends it.
        assert!(!s.update(short, true));
        let mut patient = Shedding::new(Duration::from_millis(50));
        assert!(
            !patient.update(long, false),
            "a burst under the interval is taken"
        );
    }
}
