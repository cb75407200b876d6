//! The async worker API: connections as a tokio stream, and an axum `Listener`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

pub(super) use super::incoming::End;
use super::waiting::{Found, WaitRoom, Waiting};
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
    /// Where connections the look found nothing to read on wait for their first bytes.
    room: Option<WaitRoom>,
    found: Found,
}

/// What a first look at a fresh connection decided.
pub(crate) enum FirstLook {
    /// It is finished (answered, or the client is gone): report DONE, shut it down.
    Finished,
    /// Hand it out; these bytes were read from it and are read again first.
    Serve(Vec<u8>),
    /// Nothing to read yet: look again once there is.
    Wait,
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
        let reporter = Arc::new(Reporter::new(fd.clone(), env.hand_back));
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
            room: None,
            found: Found::default(),
        })
    }

    /// Has `look` see every connection first (the built-in worker's quick path), and
    /// again once bytes come for one that it found nothing to read on, for at most
    /// `header_timeout` (then the connection is closed).
    pub(crate) fn set_first_look(&mut self, look: FirstLookFn, header_timeout: Duration) {
        self.first_look = Some(look);
        self.room = match WaitRoom::new(header_timeout) {
            Ok(room) => Some(room),
            Err(e) => {
                // Such connections then go to the server as they are, still served.
                tracing::warn!("worker {}: no waiting room for silent connections: {e}", self.env.id);
                None
            }
        };
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
                // Connections still waiting for their first request are the server's
                // now, with the grace it gives a drain.
                if let Some(room) = self.room.as_mut().filter(|r| !r.is_empty()) {
                    let waiting = room.take_all();
                    for w in &waiting {
                        room.release(&w.stream);
                    }
                    for w in waiting {
                        self.hand_out(w.item, w.stream, Vec::new(), Some(w.deadline));
                    }
                    continue;
                }
                let _ = self.reporter.flush();
                self.end_tx.send_replace(self.ended);
                return Poll::Ready(None);
            }
            if let Some(room) = self.room.as_mut().filter(|r| !r.is_empty()) {
                if room.poll_found(cx, &mut self.found).is_ready() {
                    self.second_looks();
                    continue;
                }
            }
            let mut guard = match ready!(self.fd.poll_read_ready(cx)) {
                Ok(g) => g,
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            };
            match recv_event(guard.get_inner(), &mut self.buf) {
                Ok(Event::Conns(conns)) => self.take_conns(conns),
                Ok(Event::Lost(ids)) => super::lost_conns(&self.reporter, self.env.id, &ids),
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
        // A look reads, so the ACK must be out first; with the channel full it is not,
        // and these connections go out unlooked (their first read tries the ACK again).
        let looking = self.first_look.is_some() && self.reporter.flush_acks();
        let mut finished = Vec::new();
        for (item, fd) in conns {
            let Ok(s) = Stream::from_fd_hint(fd, item.sock) else {
                self.reporter.done(item.id);
                continue;
            };
            if looking {
                self.look(item, s, None, &mut finished);
            } else {
                self.hand_out(item, s, Vec::new(), None);
            }
        }
        self.finish_all(finished);
    }

    /// The second look, at the connections of the waiting room that became readable
    /// (their ACK went out before the first); those out of time are closed.
    fn second_looks(&mut self) {
        let mut found = std::mem::take(&mut self.found);
        let mut finished = Vec::new();
        for w in found.readable.drain(..) {
            self.look(w.item, w.stream, Some(w.deadline), &mut finished);
        }
        // The same limit as hyper's for a request head: a client that never speaks is
        // closed, DONE first.
        for w in found.expired.drain(..) {
            finished.push((w.item.id, w.stream));
        }
        self.found = found;
        self.finish_all(finished);
    }

    /// Has the first look see `s`: finished, handed out, or (nothing to read yet) put
    /// in the waiting room. `waited` is its deadline there, if it has waited already.
    fn look(
        &mut self,
        item: crate::wire::ConnItem,
        s: Stream,
        waited: Option<tokio::time::Instant>,
        finished: &mut Vec<(u64, Stream)>,
    ) {
        let Some(FirstLookFn(look)) = self.first_look.as_mut() else {
            return self.hand_out(item, s, Vec::new(), waited);
        };
        match look(&item, &s) {
            FirstLook::Finished => finished.push((item.id, s)),
            FirstLook::Serve(seen) => {
                if let (Some(room), Some(_)) = (self.room.as_ref(), waited) {
                    room.release(&s);
                }
                self.hand_out(item, s, seen, waited)
            }
            FirstLook::Wait => {
                let refused = match (self.room.as_mut(), waited) {
                    (Some(room), None) => room.add(item, s).err(),
                    (Some(room), Some(deadline)) => {
                        room.wait_again(Waiting { item, stream: s, deadline }).err().map(|w| (w.item, w.stream))
                    }
                    (None, _) => Some((item, s)),
                };
                // No room for it: the server waits for its request instead.
                if let Some((item, s)) = refused {
                    self.hand_out(item, s, Vec::new(), waited);
                }
            }
        }
    }

    /// Queues a connection for `accept`, with the bytes a look read from it, and the
    /// deadline for its first request head if it spent some of that time waiting.
    fn hand_out(
        &mut self,
        item: crate::wire::ConnItem,
        s: Stream,
        seen: Vec<u8>,
        waited: Option<tokio::time::Instant>,
    ) {
        match s.into_tokio() {
            Ok(s) => {
                let conn = Conn::new_coalescing(s, item, self.reporter.clone()).replay(seen);
                self.queue.push_back(conn.with_head_deadline(waited.map(|d| d.into_std())));
            }
            Err(_) => self.reporter.done(item.id),
        }
    }

    /// Reports DONE for connections that are over, in one frame, then sends each
    /// one's FIN (even if the master has not yet closed its copy) and closes it.
    fn finish_all(&mut self, finished: Vec<(u64, Stream)>) {
        if finished.is_empty() {
            return;
        }
        let ids: Vec<u64> = finished.iter().map(|(id, _)| *id).collect();
        self.reporter.done_all(&ids);
        for (_, s) in finished {
            let _ = rustix::net::shutdown(&s, rustix::net::Shutdown::Write);
        }
    }
}

impl Drop for AsyncIncoming {
    fn drop(&mut self) {
        self.beat.abort();
        // As a dropped `Conn` does: DONE, then the close.
        if let Some(room) = self.room.as_mut() {
            let waiting = room.take_all();
            if !waiting.is_empty() {
                self.reporter.done_all(&waiting.iter().map(|w| w.item.id).collect::<Vec<_>>());
            }
            drop(waiting);
        }
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
