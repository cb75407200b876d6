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

/// What a look at a connection decided (a fresh one, or one waiting in the room).
pub(crate) enum FirstLook {
    /// It is finished (answered, or the client is gone): report DONE, shut it down.
    Finished,
    /// Hand it out; these bytes were read from it and are read again first.
    Serve(Vec<u8>),
    /// Nothing to read yet: look again once there is.
    Wait,
    /// Its request was answered in full and the connection stays open: it waits in
    /// the room for the next one (or goes back to the master, as the hand-back mode
    /// says).
    Answered,
    /// Its request was answered, but the socket took only part of the answer: hand it
    /// out with the rest, which the server writes first (then ends the connection, if
    /// the client asked for that).
    Unsent {
        /// What the socket did not take.
        rest: Vec<u8>,
        /// `Connection: close` was asked for.
        close: bool,
    },
}

/// The built-in worker's quick path: called for each connection, after its ACK is
/// sent and before the stream is registered with the runtime, and again each time one
/// waiting in the room has something to read.
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
                if self.room.as_ref().is_some_and(|r| !r.is_empty()) {
                    self.empty_the_room();
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
    /// read of any of them; with a first look it waits for the looks to end: the
    /// connections they finish are reported SERVED (ACK and DONE in one frame, sent
    /// before their FINs), the others ACKed, so that a batch costs the master one
    /// frame to read where it would cost two.
    ///
    /// The trade-off, for a crash in the middle of the looks: the master hands the
    /// whole batch to another worker, not only the connections the looks had not
    /// reached (which an ACK sent first would lose with this worker), but also the
    /// one being looked at, whose request this worker had read: its client then waits
    /// for the header timeout of the next worker, where it would see its connection
    /// reset at once.
    fn take_conns(&mut self, conns: Vec<(crate::wire::ConnItem, OwnedFd)>) {
        let ids: Vec<u64> = conns.iter().map(|(it, _)| it.id).collect();
        self.reporter.ack_later(&ids);
        let looking = self.first_look.is_some();
        let mut finished = Vec::new();
        let deadline = self.room.as_ref().map(|r| WaitRoom::deadline_after(r.timeout()));
        for (item, fd) in conns {
            let Ok(s) = Stream::from_fd_hint(fd, item.sock) else {
                self.reporter.done(item.id);
                continue;
            };
            let w = Waiting::new(item, s, deadline.unwrap_or_else(tokio::time::Instant::now));
            if looking {
                self.look(w, false, &mut finished);
            } else {
                self.hand_out(w, Vec::new(), false);
            }
        }
        self.finish_all(finished);
        // The ACK of those still open, if finishing the others did not send it.
        self.reporter.flush_acks();
    }

    /// The next look, at the connections of the waiting room that became readable
    /// (their ACK went out before the first); those out of time are closed, or (kept
    /// alive, `auto` mode) handed back.
    fn second_looks(&mut self) {
        let mut found = std::mem::take(&mut self.found);
        let mut finished = Vec::new();
        for w in found.readable.drain(..) {
            if let Some(w) = self.unless_rescued(w) {
                self.look(w, true, &mut finished);
            }
        }
        // The same limit as hyper's for a request head: a client that never speaks is
        // closed, DONE first.
        for w in found.expired.drain(..) {
            let Some(w) = self.unless_rescued(w) else { continue };
            if w.kept.as_ref().is_some_and(|k| k.then_return) {
                // Idle for a second: back to the master; if the channel is full, it
                // stays and is tried again a second later (as hyper's path does).
                if let Err(mut w) = self.give_back(w) {
                    w.deadline = WaitRoom::deadline_after(super::hand_back::IDLE_HAND_BACK);
                    self.wait(w, true);
                }
                continue;
            }
            finished.push(w);
        }
        self.found = found;
        self.finish_all(finished);
    }

    /// Has the look see `w`: finished, handed out, kept alive, or (nothing to read
    /// yet) put in the waiting room. `waited`: it comes from the room.
    fn look(&mut self, w: Waiting, waited: bool, finished: &mut Vec<Waiting>) {
        let Some(FirstLookFn(look)) = self.first_look.as_mut() else {
            return self.hand_out(w, Vec::new(), waited);
        };
        match look(&w.item, &w.stream) {
            FirstLook::Finished => finished.push(w),
            FirstLook::Serve(seen) => self.hand_out(w, seen, waited),
            FirstLook::Unsent { rest, close } => self.hand_out_unsent(w, rest, close),
            FirstLook::Wait => self.wait(w, waited),
            // The client has shut down its side after this request (the event said
            // so, and will not again): answered, and the connection ends.
            FirstLook::Answered if w.hung_up => finished.push(w),
            FirstLook::Answered => self.keep(w),
        }
    }

    /// Lets `w` wait for its first request (a fresh one: from now), or a kept one for
    /// its next until the deadline it has; the server waits for it if the room cannot.
    fn wait(&mut self, mut w: Waiting, waited: bool) {
        let Some(room) = self.room.as_mut() else {
            return self.hand_out(w, Vec::new(), waited);
        };
        if !waited {
            w.deadline = WaitRoom::deadline_after(room.timeout());
        }
        let spot = w.kept.as_ref().and_then(|k| k.spot.clone());
        match room.wait(w) {
            Ok(()) => {
                if let Some(spot) = spot {
                    spot.set_idle();
                }
            }
            Err(w) => self.hand_out(w, Vec::new(), waited),
        }
    }

    /// A connection whose request the quick path answered, still open: it goes back to
    /// the master if the hand-back mode wants it now (`always`, or a slow worker in
    /// `auto`), else it waits in the room for its next request, on the stall rescue's
    /// shelf (`auto` mode): the rescue takes it if a long request holds this worker.
    fn keep(&mut self, w: Waiting) {
        let mode = self.reporter.hand_back;
        let w = if super::hand_back::wanted(mode) {
            match self.give_back(w) {
                Ok(()) => return,
                Err(w) => w,
            }
        } else {
            w
        };
        let Some(room) = self.room.as_ref() else {
            // hyper serves it on, between requests.
            let mut w = w;
            w.kept.get_or_insert_with(Default::default);
            return self.hand_out(w, Vec::new(), true);
        };
        // hyper closes a keep-alive connection that sends no next head within the
        // header timeout; `auto` hands back one idle for IDLE_HAND_BACK first.
        let idle = super::hand_back::IDLE_HAND_BACK;
        let then_return = mode == crate::wire::HandBack::Auto && idle < room.timeout();
        let mut w = w;
        w.deadline = WaitRoom::deadline_after(if then_return { idle } else { room.timeout() });
        let kept = w.kept.get_or_insert_with(Default::default);
        kept.then_return = then_return;
        if kept.spot.is_none() && mode != crate::wire::HandBack::Off {
            use std::os::fd::AsFd;
            kept.spot = super::stall::shelve(w.item.id, w.stream.as_fd(), false, &self.reporter);
        }
        self.wait(w, true);
    }

    /// `w` as it came out of the room, unless the stall rescue handed it back while it
    /// waited: then it is the master's, and its descriptor here is closed without a
    /// word (its RETURN stands for the DONE; no FIN).
    fn unless_rescued(&mut self, mut w: Waiting) -> Option<Waiting> {
        if still_ours(&w) {
            return Some(w);
        }
        if let Some(room) = self.room.as_mut() {
            room.leave(&mut w, true);
        }
        off_the_shelf(&w);
        None
    }

    /// Hands a kept connection back to the master (RETURN); on an error (a full
    /// channel) it is still this worker's, unchanged.
    #[allow(
        clippy::result_large_err,
        reason = "the rare error hands the connection back by value; boxing it would cost an allocation on every call"
    )]
    fn give_back(&mut self, mut w: Waiting) -> Result<(), Waiting> {
        use std::os::fd::AsFd;
        // The room's sockets are blocking, as the protocol hands them over.
        if self.reporter.give_back(w.item.id, w.stream.as_fd()).is_err() {
            return Err(w);
        }
        // Out of the set before the socket's next bytes, which the master now waits for.
        if let Some(room) = self.room.as_mut() {
            room.leave(&mut w, true);
        }
        off_the_shelf(&w);
        super::hand_back::HANDED_BACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Queues a connection for `accept`, with the bytes a look read from it. One that
    /// `waited` for its first request in the room has until its deadline for that head;
    /// a kept one comes between requests (its next head gets the whole header timeout).
    fn hand_out(&mut self, w: Waiting, seen: Vec<u8>, waited: bool) {
        self.hand_out_with(w, seen, waited, None)
    }

    /// Hands out a kept connection whose last answer the socket took only part of:
    /// the server writes `rest` first (and then closes it if `close`).
    fn hand_out_unsent(&mut self, w: Waiting, rest: Vec<u8>, close: bool) {
        self.hand_out_with(w, Vec::new(), false, Some((rest, close)))
    }

    fn hand_out_with(&mut self, mut w: Waiting, seen: Vec<u8>, waited: bool, unsent: Option<(Vec<u8>, bool)>) {
        if let Some(room) = self.room.as_mut() {
            room.leave(&mut w, true);
        }
        // The server puts it on the shelf its own way.
        off_the_shelf(&w);
        let between = w.kept.is_some() || unsent.is_some();
        let head_by = (waited && !between).then(|| w.deadline.into_std());
        match w.stream.into_tokio() {
            Ok(s) => {
                let conn =
                    Conn::new_coalescing(s, w.item, self.reporter.clone()).replay(seen).with_head_deadline(head_by);
                self.queue.push_back(if between { conn.between_requests(unsent) } else { conn });
            }
            Err(_) => self.reporter.done(w.item.id),
        }
    }

    /// Reports DONE for connections that are over, in one frame, then sends each
    /// one's FIN (even if the master has not yet closed its copy) and closes it.
    fn finish_all(&mut self, finished: Vec<Waiting>) {
        if finished.is_empty() {
            return;
        }
        let ids: Vec<u64> = finished.iter().map(|w| w.item.id).collect();
        self.reporter.done_all(&ids);
        for mut w in finished {
            if let Some(room) = self.room.as_mut() {
                room.leave(&mut w, false);
            }
            off_the_shelf(&w);
            let _ = rustix::net::shutdown(&w.stream, rustix::net::Shutdown::Write);
        }
    }

    /// The worker is draining or its master is gone: the connections still waiting for
    /// a first request go to the server, with the grace it gives a drain; the kept ones
    /// (between requests) go back to the master, which gives them to the other workers
    /// (as a server hands back its idle ones), or, where it cannot take them, are
    /// closed as hyper closes an idle connection on a drain.
    fn empty_the_room(&mut self) {
        let Some(room) = self.room.as_mut() else { return };
        let waiting = room.take_all();
        let can_return = self.reporter.hand_back != crate::wire::HandBack::Off && self.ended != Some(End::MasterGone);
        let mut finished = Vec::new();
        for w in waiting {
            let Some(mut w) = self.unless_rescued(w) else { continue };
            if w.kept.is_none() {
                self.hand_out(w, Vec::new(), true);
                continue;
            }
            if can_return {
                match self.give_back(w) {
                    Ok(()) => continue,
                    Err(back) => w = back,
                }
            }
            finished.push(w);
        }
        self.finish_all(finished);
    }
}

/// Whether `w` is still this worker's, claimed for the caller's I/O: false once the
/// stall rescue has handed it back while it waited.
fn still_ours(w: &Waiting) -> bool {
    w.kept.as_ref().and_then(|k| k.spot.as_ref()).is_none_or(|s| s.claim())
}

/// Takes a kept connection off the stall rescue's shelf, before it leaves the room or
/// its descriptor closes (the rescue may be borrowing it until then).
fn off_the_shelf(w: &Waiting) {
    if w.kept.as_ref().is_some_and(|k| k.spot.is_some()) {
        super::stall::unshelve(w.item.id);
    }
}

impl Drop for AsyncIncoming {
    fn drop(&mut self) {
        self.beat.abort();
        // As a dropped `Conn` does: DONE, then the close (none for a connection the
        // stall rescue handed back: its RETURN stands for it).
        if let Some(room) = self.room.as_mut() {
            let waiting = room.take_all();
            let mut ids = Vec::with_capacity(waiting.len());
            for w in &waiting {
                if still_ours(w) {
                    ids.push(w.item.id);
                }
                off_the_shelf(w);
            }
            if !ids.is_empty() {
                self.reporter.done_all(&ids);
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
