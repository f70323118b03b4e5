//! The connection table: every accepted client connection holds a slot until its socket is
//! closed, a WebSocket session's socket included (the slot travels inside the socket, see
//! [`TrackedIo`], so an upgraded connection keeps it without a task of its own).
//!
//! It enforces three things with one short `std::sync::Mutex` and one reaper task — no
//! timer per connection:
//! * **the cap** (`http.max_connections`): at the cap, a new connection evicts the one that
//!   has waited longest for a request head (a connection that never sent one first, then
//!   an idle keep-alive one) and is admitted once that one's socket is closed; when every
//!   slot is busy (a request in flight, or a session), the new connection is closed at
//!   once. A slot is free only when its socket is closed, so open descriptors never exceed
//!   the cap (plus the one being admitted);
//! * **the session share**: WebSocket sessions get at most `max - reserved`, so health
//!   checks, metrics and the management API always have `reserved` slots;
//! * **the waits for a request head**: a new connection has `http.header_read_timeout` to
//!   send its first complete head, a keep-alive one `http.keep_alive_timeout` after its
//!   response to send the next. Each wait list is in arrival order with one timeout, so
//!   its first entry is always the next to expire: the reaper sleeps until then.
//!
//! A connection is closed by raising `CLOSING` and waking its socket: the next read or
//! write fails, and hyper drops the connection.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Flags of a [`Conn`].
mod flag {
    /// Evicted or timed out: its socket fails every read and write from now on.
    pub const CLOSING: u8 = 1;
    /// Its socket is closed and its slot given back.
    pub const RELEASED: u8 = 2;
    /// A session (a WebSocket upgrade, or a `GET /events` stream): counted in the
    /// session share, never evicted.
    pub const UPGRADED: u8 = 4;
    /// The current request's body missed `http.body_read_timeout` (answered `408`).
    pub const BODY_TIMED_OUT: u8 = 8;
}

/// What a connection waits for.
#[derive(Clone, Copy)]
enum Wait {
    /// Its first request head (`http.header_read_timeout`).
    First,
    /// Its next request head after a response (`http.keep_alive_timeout`).
    KeepAlive,
}

impl Wait {
    /// Its index into `metrics::TIMEOUT_PHASES`.
    fn phase(self) -> usize {
        match self {
            Wait::First => crate::metrics::TIMEOUT_HEADER,
            Wait::KeepAlive => crate::metrics::TIMEOUT_KEEP_ALIVE,
        }
    }
}

/// One client connection's shared state (the socket, its service and the table).
pub struct Conn {
    /// Its key in a wait list, 0 while not waiting. Only changed under the table lock.
    key: AtomicU64,
    flags: AtomicU8,
    /// The socket's last reader, woken to make it see `CLOSING`.
    waker: AtomicWaker,
}

impl Conn {
    fn new() -> Arc<Conn> {
        Arc::new(Conn {
            key: AtomicU64::new(0),
            flags: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        })
    }

    fn has(&self, f: u8) -> bool {
        self.flags.load(Acquire) & f != 0
    }

    fn raise(&self, f: u8) {
        self.flags.fetch_or(f, AcqRel);
    }

    /// The request now being served made the connection a session: a WebSocket upgrade,
    /// or an SSE stream (whose connection closes when the stream ends).
    pub fn set_upgraded(&self) {
        self.raise(flag::UPGRADED);
        // Sessions are never closed through the waker, and the stored one belongs to the
        // HTTP connection's task, which ends now after an upgrade (an SSE stream's goes
        // on, and its reads no longer register): a waker keeps a finished task's memory
        // (the whole connection future's space, ~3.5 KiB) allocated for as long as the
        // session lives. (Called on that task, so no read registers again after this.)
        drop(self.waker.take());
    }

    /// The current request's body missed its deadline.
    pub fn set_body_timed_out(&self) {
        self.raise(flag::BODY_TIMED_OUT);
    }

    /// Whether the current request's body missed its deadline (and clear it).
    pub fn take_body_timed_out(&self) -> bool {
        self.flags.fetch_and(!flag::BODY_TIMED_OUT, AcqRel) & flag::BODY_TIMED_OUT != 0
    }

    fn closing_error(&self) -> Option<io::Error> {
        self.has(flag::CLOSING).then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "closed by Herald (timeout or evicted)",
            )
        })
    }
}

/// The limits a [`Table`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct TableLimits {
    /// Connections open at once, sessions included.
    pub max: usize,
    /// WebSocket sessions open at once (`max - reserved`).
    pub sessions: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
}

/// What [`Table::admit`] decided for a new connection.
pub enum Admission {
    Admitted(Arc<Conn>),
    /// At the cap, and a connection is being closed to make room: wait for
    /// [`Table::released`], then ask again.
    Wait,
    /// Every slot is busy and none can be evicted: close the new connection at once.
    Refused,
}

#[derive(Default)]
struct State {
    /// Slots taken: sockets not yet closed.
    open: usize,
    /// Of those, connections evicted or timed out whose socket is not closed yet.
    closing: usize,
    next_key: u64,
    /// Connections that have not sent their first complete request head, oldest first.
    first: BTreeMap<u64, Waiting>,
    /// Keep-alive connections waiting for their next request head, oldest first.
    keep_alive: BTreeMap<u64, Waiting>,
}

struct Waiting {
    since: Instant,
    conn: Arc<Conn>,
}

pub struct Table {
    limits: TableLimits,
    state: Mutex<State>,
    /// WebSocket sessions, upgrades in progress included.
    sessions: AtomicUsize,
    /// Wakes the reaper when a wait list that was empty gets an entry (its new first).
    reaper: Notify,
    /// A socket was closed and its descriptor freed (the accept loop waits for it after
    /// `EMFILE`).
    released: Notify,
    metrics: Arc<Metrics>,
}

impl Table {
    pub fn new(limits: TableLimits, metrics: Arc<Metrics>) -> Arc<Table> {
        metrics.conns.limit.store(limits.max as i64, Relaxed);
        Arc::new(Table {
            limits,
            state: Mutex::new(State::default()),
            sessions: AtomicUsize::new(0),
            reaper: Notify::new(),
            released: Notify::new(),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection was accepted: its slot; or, at the cap, [`Admission::Wait`] while a
    /// connection closes to make room (evicting one if none is closing yet); or
    /// [`Admission::Refused`] when every slot is busy.
    pub fn admit(&self) -> Admission {
        let mut st = self.lock();
        if st.open >= self.limits.max {
            if st.closing > 0 || self.evict_locked(&mut st) {
                return Admission::Wait;
            }
            drop(st);
            self.refused();
            return Admission::Refused;
        }
        st.open += 1;
        let conn = Conn::new();
        self.wait_locked(&mut st, &conn, Wait::First);
        self.metrics.conns.open.store(st.open as i64, Relaxed);
        Admission::Admitted(conn)
    }

    /// Count a new connection closed at once.
    pub fn refused(&self) {
        self.metrics.conns.refused.fetch_add(1, Relaxed);
    }

    /// Close the connection that has waited longest for a request head (one that never
    /// sent one first). False when no connection is waiting.
    pub fn evict_one(&self) -> bool {
        self.evict_locked(&mut self.lock())
    }

    fn evict_locked(&self, st: &mut State) -> bool {
        let Some((_, victim)) = st.first.pop_first().or_else(|| st.keep_alive.pop_first()) else {
            return false;
        };
        close_locked(st, &victim.conn);
        self.metrics.conns.evicted.fetch_add(1, Relaxed);
        true
    }

    fn wait_locked(&self, st: &mut State, conn: &Arc<Conn>, wait: Wait) {
        st.next_key += 1;
        let key = st.next_key;
        let list = match wait {
            Wait::First => &mut st.first,
            Wait::KeepAlive => &mut st.keep_alive,
        };
        list.insert(
            key,
            Waiting {
                since: Instant::now(),
                conn: conn.clone(),
            },
        );
        conn.key.store(key, Relaxed);
        if list.len() == 1 {
            // A later entry of a non-empty list never expires before its first.
            self.reaper.notify_one();
        }
    }

    /// A complete request head arrived: the connection no longer waits.
    pub fn request_started(&self, conn: &Conn) {
        conn.flags.fetch_and(!flag::BODY_TIMED_OUT, AcqRel);
        if conn.key.load(Relaxed) != 0 {
            unwait_locked(&mut self.lock(), conn);
        }
    }

    /// The response has been handed over: a keep-alive connection waits for its next head.
    pub fn request_finished(&self, conn: &Arc<Conn>) {
        let mut st = self.lock();
        if !conn.has(flag::CLOSING | flag::RELEASED | flag::UPGRADED) {
            self.wait_locked(&mut st, conn, Wait::KeepAlive);
        }
    }

    /// The socket was closed: give the slot back.
    fn release(&self, conn: &Conn) {
        {
            let mut st = self.lock();
            unwait_locked(&mut st, conn);
            if !conn.has(flag::RELEASED) {
                conn.raise(flag::RELEASED);
                st.open -= 1;
                if conn.has(flag::CLOSING) {
                    st.closing -= 1;
                }
            }
            self.metrics.conns.open.store(st.open as i64, Relaxed);
        }
        if conn.has(flag::UPGRADED) {
            self.sessions.fetch_sub(1, AcqRel);
        }
        self.released.notify_waiters();
    }

    /// Take a WebSocket session's place before its upgrade; false when sessions already
    /// hold their share. Give it back with [`Table::session_not_opened`] unless the
    /// connection is then upgraded.
    pub fn try_open_session(&self) -> bool {
        if self.sessions.fetch_add(1, AcqRel) < self.limits.sessions {
            return true;
        }
        self.sessions.fetch_sub(1, AcqRel);
        self.metrics.conns.sessions_refused.fetch_add(1, Relaxed);
        false
    }

    pub fn session_not_opened(&self) {
        self.sessions.fetch_sub(1, AcqRel);
    }

    /// Resolves after some socket was closed. Enable it (`Notified::enable`) before the
    /// eviction it waits for.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    pub fn limits(&self) -> TableLimits {
        self.limits
    }

    /// Close every connection whose wait has expired; returns when the next one expires.
    fn reap(&self, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        let mut next: Option<Instant> = None;
        for (wait, timeout) in [
            (Wait::First, self.limits.header_read_timeout),
            (Wait::KeepAlive, self.limits.keep_alive_timeout),
        ] {
            let mut closed = 0;
            loop {
                let list = match wait {
                    Wait::First => &mut st.first,
                    Wait::KeepAlive => &mut st.keep_alive,
                };
                let Some(entry) = list.first_entry() else {
                    break;
                };
                let deadline = entry.get().since + timeout;
                if deadline > now {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    break;
                }
                let waiting = entry.remove();
                close_locked(&mut st, &waiting.conn);
                closed += 1;
            }
            self.metrics.conns.timeouts[wait.phase()].fetch_add(closed, Relaxed);
        }
        next
    }

    /// The reaper: closes connections whose wait for a request head has expired, until
    /// `stop`. One task for all connections; it sleeps until the next expiry.
    pub async fn run_reaper(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let next = self.reap(Instant::now());
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.reaper.notified() => {}
                _ = sleep => {}
            }
        }
    }
}

/// Take `conn` out of its wait list (if it is in one).
fn unwait_locked(st: &mut State, conn: &Conn) {
    let key = conn.key.swap(0, Relaxed);
    if key != 0 && st.first.remove(&key).is_none() {
        st.keep_alive.remove(&key);
    }
}

/// Close a connection already taken out of its wait list: its task sees `CLOSING` at its
/// next read and drops the socket, which gives the slot back.
fn close_locked(st: &mut State, conn: &Conn) {
    conn.key.store(0, Relaxed);
    if !conn.has(flag::CLOSING | flag::RELEASED) {
        st.closing += 1;
    }
    conn.raise(flag::CLOSING);
    conn.waker.wake();
}

/// An accepted socket that holds its connection's slot: the slot is given back when the
/// socket is dropped, whether by hyper or, after an upgrade, by the WebSocket session.
/// Reads and writes fail once the connection is `CLOSING`.
pub struct TrackedIo {
    io: TcpStream,
    conn: Arc<Conn>,
    table: Arc<Table>,
}

impl TrackedIo {
    pub fn new(io: TcpStream, conn: Arc<Conn>, table: Arc<Table>) -> TrackedIo {
        TrackedIo { io, conn, table }
    }
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        self.table.release(&self.conn);
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Sessions are never evicted: they skip the registration.
        if !self.conn.has(flag::UPGRADED) {
            self.conn.waker.register(cx.waker());
            if let Some(e) = self.conn.closing_error() {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.conn.closing_error() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.conn.closing_error() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize, sessions: usize) -> Arc<Table> {
        Table::new(
            TableLimits {
                max,
                sessions,
                header_read_timeout: Duration::from_secs(10),
                keep_alive_timeout: Duration::from_secs(60),
            },
            Arc::new(Metrics::default()),
        )
    }

    fn admitted(t: &Table) -> Arc<Conn> {
        match t.admit() {
            Admission::Admitted(c) => c,
            Admission::Wait => panic!("wait"),
            Admission::Refused => panic!("refused"),
        }
    }

    #[test]
    fn at_the_cap_the_longest_waiting_connection_is_evicted_first_heads_before_keep_alive() {
        let t = table(3, 1);
        let idle = admitted(&t);
        t.request_started(&idle);
        t.request_finished(&idle); // now waits for its next head (keep-alive)
        let busy = admitted(&t);
        t.request_started(&busy); // a request in flight: never evicted
        let fresh = admitted(&t); // has not sent a head yet

        // Full: the fresh one goes first, although the keep-alive one waited longer; the
        // newcomer waits until its socket is closed, and evicts nothing more meanwhile.
        assert!(matches!(t.admit(), Admission::Wait));
        assert!(fresh.has(flag::CLOSING) && !idle.has(flag::CLOSING));
        assert!(matches!(t.admit(), Admission::Wait));
        assert!(!idle.has(flag::CLOSING));
        t.release(&fresh);
        let newer = admitted(&t);
        t.request_started(&newer);
        // Next, the keep-alive one.
        assert!(matches!(t.admit(), Admission::Wait));
        assert!(idle.has(flag::CLOSING) && !busy.has(flag::CLOSING));
        t.release(&idle);
        let newest = admitted(&t);
        t.request_started(&newest);
        // Now everything is busy: a new connection is refused.
        assert!(matches!(t.admit(), Admission::Refused));
        assert_eq!(t.metrics.conns.evicted.load(Relaxed), 2);
        assert_eq!(t.metrics.conns.refused.load(Relaxed), 1);
        let st = t.lock();
        assert_eq!((st.open, st.closing), (3, 0));
    }

    #[test]
    fn an_upgraded_connection_lets_go_of_the_http_task() {
        use futures_util::task::ArcWake;
        struct Task;
        impl ArcWake for Task {
            fn wake_by_ref(_: &Arc<Self>) {}
        }
        let task = Arc::new(Task);
        let t = table(2, 1);
        let conn = admitted(&t);
        conn.waker
            .register(&futures_util::task::waker(task.clone()));
        assert_eq!(Arc::strong_count(&task), 2, "the read registered its task");
        // A stored waker would keep the finished HTTP task's memory for the session's life.
        conn.set_upgraded();
        assert_eq!(Arc::strong_count(&task), 1);
    }

    #[test]
    fn sessions_get_max_minus_reserved() {
        let t = table(10, 2);
        assert!(t.try_open_session());
        assert!(t.try_open_session());
        assert!(!t.try_open_session());
        t.session_not_opened();
        assert!(t.try_open_session());
        assert_eq!(t.metrics.conns.sessions_refused.load(Relaxed), 1);
    }

    #[test]
    fn a_released_connection_never_waits_again() {
        let t = table(2, 1);
        let c = admitted(&t);
        t.release(&c);
        t.request_finished(&c); // e.g. a response body dropped after the socket
        let st = t.lock();
        assert_eq!((st.open, st.first.len(), st.keep_alive.len()), (0, 0, 0));
    }

    #[test]
    fn the_reaper_closes_each_wait_after_its_own_timeout() {
        let t = table(10, 5);
        let before = Instant::now();
        let first = admitted(&t);
        let kept = admitted(&t);
        t.request_started(&kept);
        t.request_finished(&kept);
        let after = Instant::now();
        let secs = Duration::from_secs;
        let next = t.reap(before).unwrap();
        assert!(next >= before + secs(10) && next <= after + secs(10));
        // The first head's wait (10 s) expires; the keep-alive one (60 s) is next.
        let next = t.reap(after + secs(10)).unwrap();
        assert!(next >= before + secs(60) && next <= after + secs(60));
        assert!(first.has(flag::CLOSING) && !kept.has(flag::CLOSING));
        assert_eq!(t.reap(after + secs(60)), None);
        assert!(kept.has(flag::CLOSING));
        let m = &t.metrics.conns;
        assert_eq!(m.timeouts[0].load(Relaxed), 1);
        assert_eq!(m.timeouts[1].load(Relaxed), 1);
        let counts = |t: &Table| {
            let st = t.lock();
            (st.open, st.closing)
        };
        // Closing, but their sockets are not closed yet: the slots are still taken.
        assert_eq!(counts(&t), (2, 2));
        t.release(&first);
        t.release(&kept);
        assert_eq!(counts(&t), (0, 0));
    }
}
