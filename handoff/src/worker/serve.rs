//! Serving HTTP/1.1 with hyper on the connections a master hands out, and handing
//! them back between requests (RETURN): what the built-in worker runs, and what
//! [`serve_http`] (and, with the `axum` feature, [`serve_axum`]) offers a Rust worker
//! of your own, in place of `axum::serve` or hyper-util's server.
//!
//! Each connection is one hyper connection that is stopped at a request boundary when
//! the hand-back policy says so ([`super::hand_back`]): hyper is told to close while
//! it is idle (`graceful_shutdown`, which closes an idle connection at once), polled
//! without shutting the socket down, and the socket goes back to the master. A request
//! boundary is what the I/O wrapper sees: hyper asking for a next request it has not
//! got, after every response body was dropped and flushed. hyper may have buffered the
//! start of a pipelined next request: those bytes come back from `into_parts` and the
//! connection is served on with them in front, never handed back.
//!
//! On DRAIN, a connection between requests goes back to the master (unless the master
//! said `off`; then it is closed, as hyper's graceful shutdown does); one in a request
//! finishes it first; one that has not sent its first request yet gets
//! [`FIRST_REQUEST_GRACE`] for it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::hand_back::{Boundary, Tracked, Watched};
use super::send_timeout::SendTimeout;
use super::{AsyncIncoming, End, WorkerError};

/// How long a drain waits for the first request of a connection that has none yet.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(5);

/// How hyper runs a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Http1Opts {
    /// hyper's `writev` (false: head and body copied into one buffer, one `send`).
    pub(crate) writev: bool,
    /// How long a client may take over a request head.
    pub(crate) header_timeout: Duration,
    /// Longest request head: [`super::http::MAX_REQUEST_HEAD`].
    pub(crate) max_head: usize,
    /// hyper's buffers per connection: [`super::http::MAX_CONN_BUFFER`].
    pub(crate) max_buf: usize,
    /// An answer that makes no progress this long closes the connection:
    /// [`super::http::SEND_TIMEOUT`].
    pub(crate) send_timeout: Duration,
}

impl Default for Http1Opts {
    fn default() -> Http1Opts {
        Http1Opts {
            writev: true,
            header_timeout: super::http::HEADER_TIMEOUT,
            max_head: super::http::MAX_REQUEST_HEAD,
            max_buf: super::http::MAX_CONN_BUFFER,
            send_timeout: super::http::SEND_TIMEOUT,
        }
    }
}

/// Serves every connection of `incoming` with `handler` (one call per request), HTTP/1.1
/// with keep-alive, handing idle connections back to the master as `HANDOFF_RETURN`
/// says, so that the master balances every request. Returns once the master has asked
/// for a drain (or gone away) and the connections in progress are finished.
///
/// ```no_run
/// # async fn run() -> Result<(), handoff::worker::WorkerError> {
/// use http_body_util::Full;
/// use hyper::{body::Bytes, Request, Response};
/// let incoming = handoff::worker::listener()?;
/// handoff::worker::serve_http(incoming, |_req: Request<hyper::body::Incoming>| async {
///     Response::new(Full::new(Bytes::from_static(b"hello\n")))
/// })
/// .await
/// # }
/// ```
pub async fn serve_http<H, F, B>(incoming: AsyncIncoming, handler: H) -> Result<(), WorkerError>
where
    H: Fn(Request<Incoming>) -> F + Clone + Unpin + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_each(incoming, Http1Opts::default(), move |_| handler.clone()).await
}

/// [`serve_http`] for an axum `Router`: `axum::serve(listener, app)` with request-level
/// balancing.
#[cfg(feature = "axum")]
pub async fn serve_axum(incoming: AsyncIncoming, app: axum::Router) -> Result<(), WorkerError> {
    use tower_service::Service;
    serve_http(incoming, move |req: Request<Incoming>| {
        let mut app = app.clone();
        async move {
            match app.call(req.map(axum::body::Body::new)).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    })
    .await
}

/// The accept loop: one task per connection, running `handler_for(conn)`'s handler,
/// until DRAIN; then the tasks are told to stop and waited for (a second at most if
/// the master is gone).
pub(crate) async fn serve_each<H, F, B>(
    mut incoming: AsyncIncoming,
    opts: Http1Opts,
    mut handler_for: impl FnMut(&super::Conn<super::TokioStream>) -> H,
) -> Result<(), WorkerError>
where
    H: Fn(Request<Incoming>) -> F + Clone + Unpin + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let env = incoming.env().clone();
    if env.hand_back == super::hand_back::HandBack::Auto {
        super::hand_back::spawn_stall_watch();
        super::stall::allow();
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(conn) = incoming.accept().await {
        match conn {
            Ok(conn) => {
                let handler = handler_for(&conn);
                // After a wait in the waiting room, what is left of the header timeout.
                let first_head_by = conn.head_deadline();
                tasks.spawn(serve_conn(conn, handler, opts, stop_rx.clone(), first_head_by));
            }
            Err(e) => {
                tracing::error!("worker {}: {e}", env.id);
                return Err(e);
            }
        }
        // Reap finished tasks so the set does not grow with every connection.
        while tasks.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    let grace = match incoming.end() {
        Some(End::MasterGone) => Duration::from_secs(1),
        _ => Duration::from_secs(3600),
    };
    let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    Ok(())
}

/// Serves one connection the accept loop hands out: first the end of an answer the
/// built-in worker's quick path began and the socket did not take (then the FIN, if
/// its client asked to close), then hyper, from a request boundary if the quick path
/// answered it before.
async fn serve_conn<H, F, B>(
    mut conn: super::Conn<super::TokioStream>,
    handler: H,
    opts: Http1Opts,
    stop: tokio::sync::watch::Receiver<bool>,
    first_head_by: Option<std::time::Instant>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Unpin + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some((unsent, close)) = conn.take_unsent() {
        if !finish_answer(&mut conn, &unsent, close, opts.send_timeout).await {
            return;
        }
    }
    let resumed = conn.is_between_requests();
    serve_hyper(conn, handler, opts, stop, first_head_by, resumed).await
}

/// Writes `rest`, the end of an answer the quick path began, within `limit` (the send
/// timeout's rule, for the whole rest: a few hundred bytes at most), then shuts the
/// connection down if its client asked to `close`. `true`: it serves on.
pub(crate) async fn finish_answer<W: AsyncWrite + Unpin>(
    io: &mut W,
    rest: &[u8],
    close: bool,
    limit: Duration,
) -> bool {
    use tokio::io::AsyncWriteExt;
    let sent = tokio::time::timeout(limit, io.write_all(rest)).await;
    if !matches!(sent, Ok(Ok(()))) {
        return false; // the client reads nothing, or is gone: closed when dropped
    }
    if close {
        let _ = io.shutdown().await;
        return false;
    }
    true
}

/// A connection this server can hand back to the master at a request boundary
/// (see [`super::hand_back`]): the worker's own connections; any other stream is
/// served as it is ([`Plain`]).
pub(crate) trait ServeIo: AsyncRead + AsyncWrite + Unpin + Send + 'static + Sized {
    /// When it may go back to the master (`Off`: never).
    fn return_mode(&self) -> super::hand_back::HandBack;
    /// Hands it back; on an error it stays here, unchanged.
    fn give_back(self) -> Result<(), Self>;
    /// Puts bytes hyper read ahead (a partial next request) back in front of the
    /// stream, for the next hyper connection over it. Called only after a boundary
    /// that [`ServeIo::return_mode`] allowed.
    fn unread(self, bytes: Bytes) -> Self;
    /// Its place on the stall rescue's shelf, put there if the rescue may take it.
    fn shelve(&mut self) -> Option<Arc<super::stall::Spot>> {
        None
    }
}

impl ServeIo for super::Conn<super::TokioStream> {
    fn return_mode(&self) -> super::hand_back::HandBack {
        self.hand_back_mode().unwrap_or(super::hand_back::HandBack::Off)
    }
    fn give_back(self) -> Result<(), Self> {
        self.hand_back().map_err(|e| *e.conn)
    }
    fn unread(self, bytes: Bytes) -> Self {
        self.replay(bytes.to_vec())
    }
    fn shelve(&mut self) -> Option<Arc<super::stall::Spot>> {
        if self.return_mode() == super::hand_back::HandBack::Auto {
            super::Conn::shelve(self)
        } else {
            None
        }
    }
}

/// Any other stream: served, never handed back.
#[derive(Debug)]
pub(crate) struct Plain<I>(pub(crate) I);

impl<I: AsyncRead + Unpin> AsyncRead for Plain<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Plain<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> ServeIo for Plain<I> {
    fn return_mode(&self) -> super::hand_back::HandBack {
        super::hand_back::HandBack::Off
    }
    fn give_back(self) -> Result<(), Self> {
        Err(self)
    }
    fn unread(self, _bytes: Bytes) -> Self {
        // Never called: in mode `Off` no connection stops at a boundary.
        self
    }
}

/// Serves one connection with `handler`, with `first_head_by` the deadline of the
/// first request head, for a connection that has spent part of its header timeout
/// waiting in the waiting room; the later heads of a keep-alive connection get the
/// whole timeout. `resumed`: it comes between requests, its last answer written (the
/// quick path answered it).
///
/// A connection that may go back to the master is served until a request boundary
/// where the hand-back policy (or a drain) says it should, then handed back; if that
/// fails (a full channel) it is served on.
pub(crate) async fn serve_hyper<I, H, F, B>(
    io: I,
    handler: H,
    opts: Http1Opts,
    stop: tokio::sync::watch::Receiver<bool>,
    first_head_by: Option<std::time::Instant>,
    resumed: bool,
) where
    I: ServeIo,
    H: Fn(Request<Incoming>) -> F + Clone + Unpin + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut stop = stop;
    let (mut io, mut first_head_by, mut started) = (io, first_head_by, resumed);
    loop {
        let spot = io.shelve();
        let Some((back, leftover)) =
            serve_until_boundary(io, handler.clone(), &opts, &mut stop, first_head_by.take(), started, spot).await
        else {
            return;
        };
        let back = if leftover.is_empty() {
            match back.give_back() {
                Ok(()) => return,
                Err(back) => back,
            }
        } else {
            // A pipelined request had begun to arrive: not a boundary after all.
            back.unread(leftover)
        };
        if *stop.borrow() {
            // Draining, and it could not go back: end it as a drain always did.
            let mut back = back;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut back).await;
            return;
        }
        (io, started) = (back, true);
    }
}

/// One hyper connection over `io`, until the client or a drain ends it (`None`; the
/// stream is shut down or dropped), or until it is idle at a request boundary and
/// should go back to the master (`Some`: the stream, and any bytes hyper had read of a
/// next request).
async fn serve_until_boundary<I, H, F, B>(
    io: I,
    handler: H,
    opts: &Http1Opts,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    first_head_by: Option<std::time::Instant>,
    started_before: bool,
    spot: Option<Arc<super::stall::Spot>>,
) -> Option<(I, Bytes)>
where
    I: ServeIo,
    H: Fn(Request<Incoming>) -> F + Clone + Unpin + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let at = Arc::new(Boundary::default());
    if started_before {
        at.resumed();
    }
    let first = Arc::new(tokio::sync::Notify::new());
    let mode = io.return_mode();
    let can_return = mode != super::hand_back::HandBack::Off;
    let svc = {
        let (first, at) = (first.clone(), at.clone());
        hyper::service::service_fn(move |req| {
            if !at.started() {
                first.notify_one();
            }
            let in_service = at.request();
            at.with_body(!hyper::body::Body::is_end_stream(req.body()));
            let resp = super::stall::Timed::new(super::stall::timed(|| handler(req)));
            Box::pin(
                async move { Ok::<_, Infallible>(resp.await.map(|body| Tracked { body, _in_service: in_service })) },
            )
        })
    };
    let mut conn = hyper::server::conn::http1::Builder::new()
        .writev(opts.writev)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_header_size(opts.max_head)
        .max_buf_size(opts.max_buf.max(8192)) // hyper's minimum (it panics below)
        .serve_connection(
            TokioIo::new(Watched {
                inner: SendTimeout::new(io, opts.send_timeout),
                at: at.clone(),
                spot,
                // A connection served on after a boundary starts at one.
                tail: if started_before { u32::from_be_bytes(*b"\r\n\r\n") } else { 0 },
            }),
            svc,
        );
    // hyper applies one header timeout to every head: the first one's shorter limit is
    // kept here, until the first request has started (drain or not).
    let first_head_late = async {
        let Some(by) = first_head_by else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(by.into()).await;
        if at.started() {
            std::future::pending::<()>().await;
        }
    };
    let mut first_head_late = std::pin::pin!(first_head_late);
    let mut stopped_fut = std::pin::pin!(stopped(stop));
    // On a drain, a connection without a request yet gets FIRST_REQUEST_GRACE for one
    // (the timer is set when the drain comes).
    let mut grace = std::pin::pin!(tokio::time::sleep(Duration::from_secs(365 * 86_400)));
    let mut first_seen = std::pin::pin!(first.notified());
    let (mut draining, mut graceful, mut handing_back) = (false, false, false);
    // Auto mode: the worker becoming slow while this connection is idle hands it back.
    let mut slow = std::pin::pin!(super::hand_back::became_slow());
    // Auto mode: a connection idle this long goes back whatever the worker's load (a
    // client's think time, a proxy's pooled connection between bursts): it then costs
    // this worker nothing, and its next request is placed afresh.
    let mut idle_for = std::pin::pin!(tokio::time::sleep(Duration::from_secs(365 * 86_400)));
    // Armed with the request count of the idle spell it times: a request served
    // within one poll leaves the connection idle again, but in a new spell.
    let mut idle_armed: Option<u64> = None;
    let ended = std::future::poll_fn(|cx| loop {
        // The connection first: a head that came in time is parsed (and the request
        // started) in the same poll that would see the deadline pass. Polled as a
        // future it ends the stream itself (DONE, then the FIN, after the last bytes);
        // stopped at a boundary to go back, it leaves the stream open.
        let polled = if handing_back { conn.poll_without_shutdown(cx) } else { Pin::new(&mut conn).poll(cx) };
        if let Poll::Ready(r) = polled {
            return Poll::Ready(Some(r));
        }
        // Dropping the connection closes it (reset if unread bytes remain).
        if first_head_late.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if !draining && stopped_fut.as_mut().poll(cx).is_ready() {
            draining = true;
            grace.as_mut().reset(tokio::time::Instant::now() + FIRST_REQUEST_GRACE);
        }
        if graceful || handing_back {
            return Poll::Pending;
        }
        if mode == super::hand_back::HandBack::Auto && slow.as_mut().poll(cx).is_ready() {
            slow.set(super::hand_back::became_slow());
            let _ = slow.as_mut().poll(cx);
        }
        let mut idle_long = false;
        if mode == super::hand_back::HandBack::Auto && at.is_idle() {
            let spell = at.requests();
            if idle_armed != Some(spell) {
                idle_for.as_mut().reset(tokio::time::Instant::now() + super::hand_back::IDLE_HAND_BACK);
                idle_armed = Some(spell);
            }
            idle_long = idle_for.as_mut().poll(cx).is_ready();
        } else {
            idle_armed = None;
        }
        if can_return && at.is_idle() && (draining || idle_long || super::hand_back::wanted(mode)) {
            // Idle between requests: hyper closes at once, keeping the socket open.
            Pin::new(&mut conn).graceful_shutdown();
            handing_back = true;
            continue;
        }
        if draining && !can_return {
            let waiting_first =
                !at.started() && first_seen.as_mut().poll(cx).is_pending() && grace.as_mut().poll(cx).is_pending();
            if !waiting_first {
                Pin::new(&mut conn).graceful_shutdown();
                graceful = true;
                continue;
            }
        }
        if draining && can_return && !at.started() && grace.as_mut().poll(cx).is_ready() {
            // No first request in the grace time: nothing to hand back.
            Pin::new(&mut conn).graceful_shutdown();
            graceful = true;
            continue;
        }
        return Poll::Pending;
    })
    .await;
    match ended {
        Some(Ok(())) if handing_back => {
            let parts = conn.into_parts();
            Some((parts.io.into_inner().inner.into_inner(), parts.read_buf))
        }
        _ => None,
    }
}

async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // `wait_for` would hold a non-Send guard across the await; poll the flag instead.
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection as the accept loop hands it out after the quick path answered it in
    /// part: the server's end of a socket pair (its reports go nowhere that matters).
    fn handed_out(
        unsent: &[u8],
        close: bool,
    ) -> (super::super::Conn<super::super::TokioStream>, tokio::net::UnixStream) {
        let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let (chan, _master) = std::os::unix::net::UnixStream::pair().unwrap();
        let reporter = Arc::new(super::super::Reporter::new(
            Arc::new(OwnedFd::from(chan)),
            super::super::hand_back::HandBack::Off,
        ));
        let item = crate::wire::ConnItem { id: 1, listener: 0, sock: crate::wire::sock::UNIX, flags: 0, addrs: None };
        let stream = super::super::TokioStream::Unix(tokio::net::UnixStream::from_std(server).unwrap());
        let conn = super::super::Conn::new(stream, item, reporter).between_requests(Some((unsent.to_vec(), close)));
        client.set_nonblocking(true).unwrap();
        (conn, tokio::net::UnixStream::from_std(client).unwrap())
    }

    fn greeting(_: Request<Incoming>) -> impl Future<Output = Response<http_body_util::Full<Bytes>>> {
        std::future::ready(Response::new(http_body_util::Full::new(Bytes::from_static(b"hi"))))
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn the_rest_of_an_answer_goes_out_first_then_the_next_request_is_served() {
        run(async {
            let (conn, mut client) = handed_out(b"...rest of the first answer", false);
            let (_stop_tx, stop) = tokio::sync::watch::channel(false);
            let server = tokio::spawn(serve_conn(conn, greeting, Http1Opts::default(), stop, None));
            let mut got = vec![0u8; 27];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"...rest of the first answer");
            client.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            let rest = String::from_utf8_lossy(&rest);
            assert!(rest.starts_with("HTTP/1.1 200 OK") && rest.ends_with("hi"), "{rest:?}");
            server.await.unwrap();
        })
    }

    #[test]
    fn the_rest_of_a_last_answer_goes_out_then_the_connection_ends() {
        run(async {
            let (conn, mut client) = handed_out(b"...the end", true);
            let (_stop_tx, stop) = tokio::sync::watch::channel(false);
            let server = tokio::spawn(serve_conn(conn, greeting, Http1Opts::default(), stop, None));
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got)).await.unwrap().unwrap();
            assert_eq!(&got, b"...the end");
            server.await.unwrap();
        })
    }
}
