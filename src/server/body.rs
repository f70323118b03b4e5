//! Body wrappers of the connection service: the request body's deadline, and the response
//! body that tells the connection table when a keep-alive connection starts to wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::table::{Conn, Table};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that must arrive in full within `http.body_read_timeout` of the first
/// time Herald waits for it. After that it fails, and the connection service answers
/// `408` and closes the connection.
///
/// Hand-written rather than tower-http's `RequestBodyTimeoutLayer`: that timeout restarts
/// after every frame, so a client dripping one byte per (timeout - ε) would hold its
/// connection for `body_limit × timeout` (1 MiB × 30 s). This deadline is for the whole
/// body, and a miss marks the connection so the answer is a `408`, not a `400`.
pub struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    /// Armed the first time a read has to wait: a body that is already buffered (most small
    /// JSON bodies arrive with the head) or never read costs no timer.
    deadline: Option<Pin<Box<Sleep>>>,
    conn: Arc<Conn>,
}

impl DeadlineBody {
    pub fn new(inner: Incoming, timeout: Duration, conn: Arc<Conn>) -> DeadlineBody {
        DeadlineBody {
            inner,
            timeout,
            deadline: None,
            conn,
        }
    }
}

/// The error a late body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within http.body_read_timeout ({0:?})")]
pub struct BodyTimeout(Duration);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.conn.set_body_timed_out();
                Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that, when hyper is done with it (written or abandoned), puts a
/// keep-alive connection on the table's wait list for its next request head.
pub struct Finished {
    inner: Body,
    conn: Arc<Conn>,
    table: Arc<Table>,
}

impl Finished {
    pub fn wrap(inner: Body, conn: Arc<Conn>, table: Arc<Table>) -> Body {
        Body::new(Finished { inner, conn, table })
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.table.request_finished(&self.conn);
    }
}

impl HttpBody for Finished {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
