//! A send timeout for hyper's connections: a client that stops reading is let go.
//!
//! hyper has a timeout for reading a request head but none for writing an answer: a
//! client that sends a request and then reads nothing (a large file, or many pipelined
//! requests whose answers it never takes) holds its connection, its task and what is
//! queued for it forever. [`SendTimeout`] wraps the stream hyper writes to and fails the
//! write that has waited [`SEND_TIMEOUT`] without a byte going out; hyper then closes
//! the connection. It holds no bytes of its own, so taking the stream back from hyper
//! (RETURN) loses nothing.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a write to a client may make no progress before the connection is closed:
/// nginx's `send_timeout` is 60 s, hyper's header timeout here is 30 s; a client that
/// reads nothing for 30 s has stopped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection whose writes fail with `TimedOut` once one has waited `limit` without
/// any byte going out: hyper then closes it. Only a write that would block starts the
/// clock (a timer is set up only then), and any progress stops it.
///
/// The built-in worker wraps every connection in it: a client that stops reading is
/// otherwise held forever (a large file, or many pipelined requests whose answers it
/// never reads).
pub(super) struct SendTimeout<I> {
    io: I,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the timer runs for the current stall.
    armed: bool,
}

impl<I> SendTimeout<I> {
    /// `io` with writes bounded by `limit` (at most a year, as the header timeout).
    pub(super) fn new(io: I, limit: Duration) -> SendTimeout<I> {
        SendTimeout { io, limit: limit.min(Duration::from_secs(365 * 86_400)), timer: None, armed: false }
    }

    /// The connection itself, for whoever takes it back from hyper.
    pub(super) fn into_inner(self) -> I {
        self.io
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        let limit = self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if !self.armed {
            timer.as_mut().reset(tokio::time::Instant::now() + limit);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<I: AsFd> AsFd for SendTimeout<I> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.as_fd()
    }
}
