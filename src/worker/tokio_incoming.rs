//! The async worker API: connections as a tokio stream, and an axum `Listener`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;

pub use super::incoming::End;
use super::{channel_from_env, recv_event, Conn, Event, Reporter, Stream, TokioStream, WorkerEnv, WorkerError};

/// Connections handed to this worker, for tokio.
///
/// Create it inside a tokio runtime. It ACKs connections before their first read or
/// write (or with the next HEARTBEAT, for one your code holds unread), sends HEARTBEAT
/// from a small background task, and ends when the master sends DRAIN or closes the
/// channel. Use [`AsyncIncoming::accept`], or the `futures_core::Stream`
/// implementation, or (feature `axum`) pass it to `axum::serve`.
#[derive(Debug)]
pub struct AsyncIncoming {
    fd: AsyncFd<Arc<OwnedFd>>,
    reporter: Arc<Reporter>,
    env: WorkerEnv,
    buf: Vec<u8>,
    queue: VecDeque<Conn<TokioStream>>,
    ended: Option<End>,
    beat: tokio::task::JoinHandle<()>,
    /// Publishes `ended` to the futures returned by [`AsyncIncoming::drained`].
    end_tx: tokio::sync::watch::Sender<Option<End>>,
    /// Someone holds a `drained()` future: the program stops itself on DRAIN.
    graceful: std::sync::atomic::AtomicBool,
    /// A look at each connection before it is handed out (see [`FirstLook`]).
    first_look: Option<FirstLookFn>,
}

/// What a first look at a fresh connection decided.
pub(crate) enum FirstLook {
    /// It is finished (answered, or the client is gone): report DONE, shut it down.
    Finished,
    /// Hand it out; these bytes were read from it and are read again first.
    Serve(Vec<u8>),
}

/// The built-in worker's quick path: called for each connection, after its ACK is
/// sent and before the stream is registered with the runtime.
pub(crate) struct FirstLookFn(pub(crate) Box<LookFn>);

type LookFn = dyn FnMut(&crate::wire::ConnItem, &Stream) -> FirstLook + Send + Sync;

impl std::fmt::Debug for FirstLookFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FirstLookFn")
    }
}

impl AsyncIncoming {
    /// Takes the channel from `HANDOFF_FD` and announces READY.
    pub fn from_env() -> Result<AsyncIncoming, WorkerError> {
        // Checked before the channel is taken, so that a caller can retry in a runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(WorkerError::NoRuntime);
        }
        AsyncIncoming::from_fd(channel_from_env()?, WorkerEnv::from_env())
    }

    /// Uses `fd` (a non-blocking channel end) and announces READY.
    pub fn from_fd(fd: OwnedFd, env: WorkerEnv) -> Result<AsyncIncoming, WorkerError> {
        // tokio::spawn below would panic outside a runtime: say so instead.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(WorkerError::NoRuntime);
        }
        let fd = Arc::new(fd);
        let reporter = Arc::new(Reporter::new(fd.clone()));
        reporter.ready()?;
        let beat = {
            let reporter = reporter.clone();
            let every = env.heartbeat;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    reporter.heartbeat();
                }
            })
        };
        let fd = crate::sys::async_fd(fd)?;
        Ok(AsyncIncoming {
            fd,
            reporter,
            env,
            buf: vec![0; crate::wire::MAX_FRAME_LEN],
            queue: VecDeque::new(),
            ended: None,
            beat,
            end_tx: tokio::sync::watch::channel(None).0,
            graceful: Default::default(),
            first_look: None,
        })
    }

    /// Has `look` see every connection first (the built-in worker's quick path).
    pub(crate) fn set_first_look(&mut self, look: FirstLookFn) {
        self.first_look = Some(look);
    }

    /// This worker's facts (slot id, worker count, heartbeat interval).
    pub fn env(&self) -> &WorkerEnv {
        &self.env
    }

    /// Why the stream ended, once it has.
    pub fn end(&self) -> Option<End> {
        self.ended
    }

    /// A future that completes when the master asks this worker to drain (or goes
    /// away): the shutdown signal for `axum::serve(..).with_graceful_shutdown(..)` or
    /// for a hyper server's graceful shutdown.
    ///
    /// It is `Send + 'static`, so take it before moving the listener into the server.
    /// It completes only while something polls this `AsyncIncoming` for connections
    /// (the server's accept loop does), or once the `AsyncIncoming` is dropped.
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.graceful.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut rx = self.end_tx.subscribe();
        async move {
            // The guard of `borrow_and_update` is dropped within the condition, so it is
            // never held across the await (it is not Send).
            while rx.borrow_and_update().is_none() {
                if rx.changed().await.is_err() {
                    return; // the AsyncIncoming is gone: nothing more will come
                }
            }
        }
    }

    /// The next connection, or `None` once the master has asked this worker to drain
    /// (or has gone away).
    pub async fn accept(&mut self) -> Option<Result<Conn<TokioStream>, WorkerError>> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Poll form of [`AsyncIncoming::accept`].
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Conn<TokioStream>, WorkerError>>> {
        loop {
            if let Some(c) = self.queue.pop_front() {
                return Poll::Ready(Some(Ok(c)));
            }
            if self.ended.is_some() {
                let _ = self.reporter.flush();
                self.end_tx.send_replace(self.ended);
                return Poll::Ready(None);
            }
            let mut guard = match ready!(self.fd.poll_read_ready(cx)) {
                Ok(g) => g,
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            };
            match recv_event(guard.get_inner(), &mut self.buf) {
                Ok(Event::Conns(conns)) => self.take_conns(conns),
                Ok(Event::Drain) => self.ended = Some(End::Drain),
                Ok(Event::Closed) => self.ended = Some(End::MasterGone),
                Err(WorkerError::Channel(e)) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
}

impl AsyncIncoming {
    /// Queues a CONN frame's connections for `accept`. Their ACK waits for the first
    /// read of any of them; with a first look, which reads, it goes first, and the
    /// connections the look finishes share one DONE, sent before their FINs.
    fn take_conns(&mut self, conns: Vec<(crate::wire::ConnItem, OwnedFd)>) {
        let ids: Vec<u64> = conns.iter().map(|(it, _)| it.id).collect();
        self.reporter.ack_later(&ids);
        let mut look = self.first_look.take();
        // A look reads, so the ACK must be out first; with the channel full it is not,
        // and these connections go out unlooked (their first read tries the ACK again).
        let looking = look.is_some() && self.reporter.flush_acks();
        let mut finished = Vec::new();
        for (item, fd) in conns {
            let Ok(s) = Stream::from_fd_hint(fd, item.sock) else {
                self.reporter.done(item.id);
                continue;
            };
            let seen = match look.as_mut().filter(|_| looking).map(|FirstLookFn(f)| f(&item, &s)) {
                Some(FirstLook::Finished) => {
                    finished.push((item.id, s));
                    continue;
                }
                Some(FirstLook::Serve(seen)) => seen,
                None => Vec::new(),
            };
            match s.into_tokio() {
                Ok(s) => self.queue.push_back(Conn::new_coalescing(s, item, self.reporter.clone()).replay(seen)),
                Err(_) => self.reporter.done(item.id),
            }
        }
        self.first_look = look;
        if finished.is_empty() {
            return;
        }
        let ids: Vec<u64> = finished.iter().map(|(id, _)| *id).collect();
        self.reporter.done_all(&ids);
        for (_, s) in finished {
            // The FIN now, even if the master has not yet closed its copy.
            let _ = rustix::net::shutdown(&s, rustix::net::Shutdown::Write);
        }
    }
}

impl Drop for AsyncIncoming {
    fn drop(&mut self) {
        self.beat.abort();
    }
}

impl futures_core::Stream for AsyncIncoming {
    type Item = Result<Conn<TokioStream>, WorkerError>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx)
    }
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for AsyncIncoming {
    type Io = Conn<TokioStream>;
    type Addr = Option<std::net::SocketAddr>;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match AsyncIncoming::accept(self).await {
                Some(Ok(conn)) => {
                    let addr = conn.client_addr();
                    return (conn, addr);
                }
                Some(Err(e)) => {
                    tracing::error!("handoff worker: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                // axum's serve loop has no notion of "no more connections": once the
                // master asks us to drain, never yield again; the program's graceful
                // shutdown future (see `AsyncIncoming::drained`) ends the server.
                None if self.graceful.load(std::sync::atomic::Ordering::SeqCst) => std::future::pending::<()>().await,
                // Nobody will stop the server: wait until every connection handed out is
                // finished (at most a second when the master is gone, as the protocol
                // asks), then end the process ourselves.
                None => {
                    let patience = match self.ended {
                        Some(End::MasterGone) => std::time::Duration::from_secs(1),
                        _ => std::time::Duration::MAX,
                    };
                    let start = tokio::time::Instant::now();
                    while self.reporter.open() > 0 && start.elapsed() < patience {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    std::process::exit(0)
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(None)
    }
}
