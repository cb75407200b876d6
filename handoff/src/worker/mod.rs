//! The worker side: receive connections from a handoff master and serve them.
//!
//! A worker is any process started by `handoff run -- CMD` (or forked by
//! the library's `Server`). It finds its channel to the master in the environment
//! (`HANDOFF_FD`), announces itself with READY, then receives connections. This module
//! speaks the whole protocol for you: it ACKs what it receives, sends HEARTBEAT while
//! it runs, and sends DONE when a [`Conn`] is dropped or shut down, so load-aware
//! policies see the worker's true load.
//!
//! - Blocking: [`Incoming`] is an iterator of [`Conn<Stream>`] (std streams).
//! - Async (tokio): [`AsyncIncoming`] yields [`Conn<TokioStream>`], and implements
//!   `futures_core::Stream`; with the `axum` feature it is an `axum::serve::Listener`.
//!
//! This module never depends on the master: a worker links only what it uses.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! for conn in handoff::worker::Incoming::from_env()? {
//!     let mut conn = conn?;
//!     let mut buf = [0u8; 1024];
//!     let _ = conn.read(&mut buf)?;
//!     conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nhi\n")?;
//! } // each `conn` dropped here: DONE goes to the master, then the socket closes
//! # Ok::<(), handoff::worker::WorkerError>(())
//! ```

pub(crate) mod access_log;
mod conn;
#[doc(hidden)]
pub(crate) mod faults;
pub(crate) mod hand_back;
pub(crate) mod http;
mod incoming;
mod send_timeout;
mod serve;
pub(crate) mod stall;
pub(crate) mod static_files;
mod tokio_incoming;
mod waiting;
// Library additions (forked workers, axum): kept apart from the list above.
mod context;

pub use conn::{Conn, HandBackError, Returnable, Stream, TokioStream};
pub use context::{listener, Context, WorkerBody};
pub use incoming::{End, Incoming};
#[cfg(feature = "axum")]
pub use serve::serve_axum;
pub use serve::serve_http;
pub use tokio_incoming::AsyncIncoming;

// Types the worker API hands out: a connection's PROXY addresses, a frame that did not
// decode.
pub use crate::proxy::ProxyHeader;
pub use crate::wire::DecodeError;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sys::fdpass;
use crate::wire::{self, cap, kind};

// The environment a master gives its workers belongs to the protocol (`wire`), which
// both sides read; re-exported here under the names workers have always used.
pub use crate::wire::{ENV_FD, ENV_HEARTBEAT_MS, ENV_RETURN, ENV_WORKERS, ENV_WORKER_ID};

/// Capabilities this crate's workers announce, and RETURN unless the master said
/// `HANDOFF_RETURN=off` (see [`caps`]).
pub(crate) const CAPS: u32 = cap::ACK | cap::DONE | cap::HEARTBEAT | cap::BATCH | cap::ADDRS;

/// What a worker announces in READY: [`CAPS`], and RETURN unless hand-back is off.
pub(crate) fn caps(hand_back: crate::wire::HandBack) -> u32 {
    match hand_back {
        crate::wire::HandBack::Off => CAPS,
        _ => CAPS | cap::RETURN,
    }
}

/// What went wrong on the worker side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// `HANDOFF_FD` is missing: the process was not started by a handoff master.
    #[error("{ENV_FD} is not set: this program is a handoff worker; start it with `handoff run -- PROGRAM`")]
    NotAWorker,
    /// `HANDOFF_FD` does not name a usable descriptor.
    #[error("{ENV_FD}={value:?} is not an open channel descriptor: {source}")]
    BadFd {
        /// The variable's value.
        value: String,
        /// Why it was refused.
        #[source]
        source: io::Error,
    },
    /// The channel to the master failed.
    #[error("channel to the master: {0}")]
    Channel(#[from] io::Error),
    /// The master sent a frame this worker cannot decode.
    #[error("bad frame from the master: {0}")]
    Protocol(#[from] wire::DecodeError),
    /// The async API was used outside a tokio runtime.
    #[error("handoff::worker::listener() and AsyncIncoming need a tokio runtime: call them inside one")]
    NoRuntime,
}

/// Facts about this worker from its environment.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    /// Slot number, `0..workers`.
    pub id: usize,
    /// Number of worker slots.
    pub workers: usize,
    /// How often to send HEARTBEAT.
    pub heartbeat: Duration,
    /// When to hand idle connections back to the master (`HANDOFF_RETURN`).
    pub hand_back: crate::wire::HandBack,
}

impl WorkerEnv {
    /// Reads `HANDOFF_WORKER_ID`, `HANDOFF_WORKERS` and `HANDOFF_HEARTBEAT_MS`
    /// (missing or unparsable values fall back to 0, 1 and 1000 ms).
    pub fn from_env() -> WorkerEnv {
        let num = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        WorkerEnv {
            id: num(ENV_WORKER_ID, 0) as usize,
            workers: num(ENV_WORKERS, 1) as usize,
            heartbeat: Duration::from_millis(num(ENV_HEARTBEAT_MS, 1000).max(10)),
            hand_back: hand_back::mode(),
        }
    }
}

/// Takes the channel named by `HANDOFF_FD` (once per process) and makes it non-blocking.
pub(crate) fn channel_from_env() -> Result<OwnedFd, WorkerError> {
    let value = std::env::var(ENV_FD).map_err(|_| WorkerError::NotAWorker)?;
    let bad = |source| WorkerError::BadFd { value: value.clone(), source };
    let raw = value.trim().parse().map_err(|_| bad(io::Error::new(io::ErrorKind::InvalidInput, "not a number")))?;
    let fd = crate::sys::process::take_inherited_fd(raw).map_err(bad)?;
    // Received descriptors count against our limit; running out truncates a CONN.
    let _ = crate::sys::raise_nofile_limit();
    crate::sys::socket::set_nonblocking(fd.as_fd(), true).map_err(bad)?;
    Ok(fd)
}

/// The worker's sending half: READY, ACK, DONE and HEARTBEAT, shared by every
/// connection of the worker (DONE is sent from each [`Conn`]'s drop or shutdown).
///
/// Sends are synchronous and non-blocking; if the channel is momentarily full, ids
/// wait in a queue that the next send flushes first. The blocking API sends each ACK
/// and DONE at once. The async API coalesces them per scheduler pass, without giving
/// up either ordering the master relies on: a connection's ACK is flushed before the
/// client can see anything of it ([`Reporter::flush_acks`] before a connection's first
/// read or write; after a batch's first looks, which read); and its DONE before its
/// `shutdown` ([`Reporter::done_later`]), so the master's count is exact when the
/// client sees the end. One `sendmsg` then covers every connection that reached that
/// point in the same pass, instead of one per connection; a connection whose ACK is
/// still queued when it finishes (a first look answered it) is reported once, SERVED,
/// in place of both. Both orderings hold while the channel has room: on a full
/// channel (a master far behind) the worker does not wait, and the reports follow
/// with the next send that gets through.
#[derive(Debug)]
pub(crate) struct Reporter {
    fd: Arc<OwnedFd>,
    /// When connections go back to the master (RETURN announced unless `Off`).
    pub(crate) hand_back: crate::wire::HandBack,
    state: Mutex<ReporterState>,
    /// Connections received and not yet reported DONE.
    open: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
struct ReporterState {
    buf: Vec<u8>,
    acks: Vec<u64>,
    /// Finished before their ACK went out: ACK and DONE in one (SERVED).
    served: Vec<u64>,
    dones: Vec<u64>,
    closed: bool,
    /// DONE ids queued and sent (or given up on: the master is gone), ever. `dones`
    /// is first in, first out, so the id queued as number `n` is sent once
    /// `dones_sent >= n`.
    dones_queued: u64,
    dones_sent: u64,
}

impl Reporter {
    pub(crate) fn new(fd: Arc<OwnedFd>, hand_back: crate::wire::HandBack) -> Reporter {
        Reporter { fd, hand_back, state: Mutex::new(ReporterState::default()), open: Default::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReporterState> {
        // A panic in another thread while sending leaves the state consistent (ids are
        // only removed after a successful send), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn ready(&self) -> io::Result<()> {
        let mut st = self.lock();
        wire::encode_ready(&mut st.buf, caps(self.hand_back), std::process::id());
        let ReporterState { buf, .. } = &mut *st;
        fdpass::send_with_fds(self.fd.as_fd(), buf, &[]).map(drop)
    }

    pub(crate) fn heartbeat(&self) {
        let mut st = self.lock();
        let _ = self.flush_locked(&mut st);
        wire::encode_empty(&mut st.buf, kind::HEARTBEAT);
        let ReporterState { buf, closed, .. } = &mut *st;
        if !*closed {
            let _ = fdpass::send_with_fds(self.fd.as_fd(), buf, &[]);
        }
    }

    /// Hands connection `id` back to the master with its descriptor (a RETURN frame).
    /// On an error nothing was sent and the caller keeps the connection: the channel
    /// is full, or an ACK still waits in the queue (the master must see a connection's
    /// ACK before its RETURN).
    pub(crate) fn give_back(&self, id: u64, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        self.give_back_many(&[id], &[fd])
    }

    /// Hands several idle connections back in one RETURN frame (at most
    /// [`wire::MAX_RETURNS`]), as [`Reporter::give_back`] does one; the stall rescue
    /// sends them from its own thread. On an error nothing was sent.
    pub(crate) fn give_back_many(&self, ids: &[u64], fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
        let mut st = self.lock();
        let _ = self.flush_locked(&mut st);
        if st.closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if !st.acks.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        wire::encode_ids(&mut st.buf, kind::RETURN, ids);
        fdpass::send_with_fds(self.fd.as_fd(), &st.buf, fds)?;
        drop(st);
        self.forget_open(ids.len());
        Ok(())
    }

    /// Tells the master that one request holds this worker (BUSY) or no longer does
    /// (FREE). Says whether it was sent (false: the channel is full; the caller tries
    /// again later) or need not be (the master is gone).
    pub(crate) fn busy(&self, busy: bool) -> bool {
        let mut st = self.lock();
        let _ = self.flush_locked(&mut st);
        wire::encode_empty(&mut st.buf, if busy { kind::BUSY } else { kind::FREE });
        let ReporterState { buf, closed, .. } = &mut *st;
        *closed || fdpass::send_with_fds(self.fd.as_fd(), buf, &[]).is_ok()
    }

    /// Connections received and not yet finished.
    pub(crate) fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn ack(&self, ids: &[u64]) {
        self.ack_later(ids);
        self.flush_acks();
    }

    pub(crate) fn done(&self, id: u64) {
        self.done_all(&[id]);
    }

    /// `n` connections fewer are open.
    fn forget_open(&self, n: usize) {
        let _ = self.open.fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |o| {
            Some(o.saturating_sub(n))
        });
    }

    /// Queues ACKs for connections just received, for [`Reporter::flush_acks`].
    pub(crate) fn ack_later(&self, ids: &[u64]) {
        self.open.fetch_add(ids.len(), std::sync::atomic::Ordering::SeqCst);
        self.lock().acks.extend_from_slice(ids);
    }

    /// Sends the queued ACKs, if any (a connection calls it before its first read:
    /// the first of a batch sends the ACK for all of them). Says whether none is left
    /// queued (false: the channel is full).
    pub(crate) fn flush_acks(&self) -> bool {
        let mut st = self.lock();
        if !st.acks.is_empty() {
            let _ = self.flush_locked(&mut st);
        }
        st.acks.is_empty()
    }

    /// Reports `ids` finished at once (connections a first look finished): SERVED for
    /// those whose ACK is still queued, which it replaces, and DONE for the others;
    /// one frame each.
    pub(crate) fn done_all(&self, ids: &[u64]) {
        self.forget_open(ids.len());
        let mut st = self.lock();
        let ReporterState { acks, served, dones, dones_queued, .. } = &mut *st;
        for &id in ids {
            match acks.iter().position(|&a| a == id) {
                Some(at) => {
                    acks.swap_remove(at);
                    served.push(id);
                }
                None => {
                    dones.push(id);
                    *dones_queued += 1;
                }
            }
        }
        let _ = self.flush_locked(&mut st);
    }

    /// Reports DONE for connections the master sent and whose descriptors never
    /// arrived (see [`lost_conns`]): never counted open, never ACKed. The master then
    /// forgets them and closes its copy, which is what ends each client's connection.
    pub(crate) fn done_unreceived(&self, ids: &[u64]) {
        let mut st = self.lock();
        st.dones.extend_from_slice(ids);
        st.dones_queued += ids.len() as u64;
        let _ = self.flush_locked(&mut st);
    }

    /// Queues a DONE and returns its number in the queue: the caller yields once, so
    /// that connections finishing in the same pass queue theirs too, then calls
    /// [`Reporter::done_sent`] with it.
    pub(crate) fn done_later(&self, id: u64) -> u64 {
        let mut st = self.lock();
        st.dones.push(id);
        st.dones_queued += 1;
        st.dones_queued
    }

    /// Makes sure the DONE queued as number `mark` has been sent: the first
    /// connection of a pass to get here sends them all, the others find theirs gone.
    /// On a full channel each connection tries once and goes on (its DONE follows
    /// with the next send that gets through). Only now does the connection stop
    /// counting as open: a worker that exits once nothing is open has sent it.
    pub(crate) fn done_sent(&self, mark: u64) {
        {
            let mut st = self.lock();
            if st.dones_sent < mark {
                let _ = self.flush_locked(&mut st);
            }
        }
        self.forget_open(1);
    }

    /// Sends what is queued; on a full channel it keeps the rest for later.
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut st = self.lock();
        self.flush_locked(&mut st)
    }

    fn flush_locked(&self, st: &mut ReporterState) -> io::Result<()> {
        if st.closed {
            st.acks.clear();
            st.served.clear();
            st.dones_sent += st.dones.len() as u64;
            st.dones.clear();
            return Ok(());
        }
        // ACK first: a DONE for a connection the master has no ACK for means "never
        // received".
        for k in [kind::ACK, kind::SERVED, kind::DONE] {
            loop {
                let ReporterState { buf, acks, served, dones, closed, dones_sent, .. } = &mut *st;
                let ids = match k {
                    kind::ACK => acks,
                    kind::SERVED => served,
                    _ => dones,
                };
                if ids.is_empty() {
                    break;
                }
                let n = ids.len().min(wire::MAX_IDS);
                wire::encode_ids(buf, k, &ids[..n]);
                match fdpass::send_with_fds(self.fd.as_fd(), buf, &[]) {
                    Ok(_) => {
                        ids.drain(..n);
                        if k == kind::DONE {
                            *dones_sent += n as u64;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                    Err(e) => {
                        // The master is gone; nobody is left to tell.
                        *closed = true;
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}

/// What one receive from the channel produced.
pub(crate) enum Event {
    /// Connections, each descriptor with its item.
    Conns(Vec<(wire::ConnItem, OwnedFd)>),
    /// The master asked this worker to drain.
    Drain,
    /// The master closed the channel (it exited).
    Closed,
    /// A CONN frame whose descriptors did not arrive (this worker is at its descriptor
    /// limit): the ids of its connections, whose descriptors are closed. An error for
    /// that frame only: report them DONE with [`lost_conns`] and go on.
    Lost(Vec<u64>),
}

/// Receives and decodes one message from the master.
pub(crate) fn recv_event(fd: &OwnedFd, buf: &mut [u8]) -> Result<Event, WorkerError> {
    let got = match fdpass::recv_with_fds(fd, buf, wire::MAX_CONNS) {
        Ok(got) => got,
        Err(e) => {
            // The payload came whole: a CONN frame within the protocol's bounds says
            // which connections were lost. Anything else stays an error of the channel.
            if let Some(t) = fdpass::Truncated::of(&e) {
                if let Ok(wire::Frame::Conn(items)) = wire::decode(&buf[..t.len]) {
                    if items.len() <= t.room {
                        return Ok(Event::Lost(items.iter().map(|it| it.id).collect()));
                    }
                }
            }
            return Err(e.into());
        }
    };
    if got.len == 0 && got.fds.is_empty() {
        return Ok(Event::Closed);
    }
    match wire::decode(&buf[..got.len])? {
        wire::Frame::Conn(items) if items.len() == got.fds.len() => {
            Ok(Event::Conns(items.into_iter().zip(got.fds).collect()))
        }
        wire::Frame::Conn(items) => Err(WorkerError::Channel(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("CONN frame with {} items came with {} descriptors", items.len(), got.fds.len()),
        ))),
        wire::Frame::Drain => Ok(Event::Drain),
        other => Err(WorkerError::Channel(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected frame from the master: {other:?}"),
        ))),
    }
}

/// Connections lost to a truncated CONN frame, ever, in this process.
static LOST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// When [`lost_conns`] last logged.
static LOST_LOGGED: Mutex<Option<std::time::Instant>> = Mutex::new(None);

/// Handles [`Event::Lost`]: the descriptors of a CONN frame did not arrive (the worker
/// is at its descriptor limit, `RLIMIT_NOFILE`) and those that did were closed. Those
/// connections are lost, and reported DONE so the master's counts stay right (it then
/// closes its own copy: the clients see their connection closed, unanswered). The
/// worker goes on serving the connections it has, and takes new ones as soon as
/// descriptors free up. Logged at most once a second, with the count so far.
pub(crate) fn lost_conns(reporter: &Reporter, worker: usize, ids: &[u64]) {
    reporter.done_unreceived(ids);
    let total = LOST.fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed) + ids.len() as u64;
    let now = std::time::Instant::now();
    let mut last = LOST_LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
        *last = Some(now);
        tracing::error!(
            "worker {worker}: out of descriptors: {} connection(s) sent to this worker were closed unserved ({total} \
             so far); it keeps serving the others. Raise the worker's descriptor limit (`ulimit -n`, systemd \
             LimitNOFILE=) or lower --max-conns-per-worker",
            ids.len()
        );
    }
}
