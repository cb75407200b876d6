//! Handing idle keep-alive connections back to the master (RETURN), so that the master
//! places every request, not just every connection.
//!
//! A worker may give a connection back only at a request boundary: every response
//! written, nothing of the next request read (`docs/PROTOCOL.md`, "Request-level
//! balancing"). When it should is the mode the master passes in `HANDOFF_RETURN`
//! ([`HandBack`]):
//!
//! - `always`: after every response whose connection stays open;
//! - `auto` (the default): where the stall rescue runs ([`super::stall`]: the built-in
//!   worker, `serve_http` on a current-thread runtime), during a request that holds the
//!   worker, from its watch thread; elsewhere, while this worker is *slow*, from the end of a request
//!   that held it for [`SLOW_REQUEST`] (time spent running it, not waiting: a request
//!   that sleeps or waits for a database does not count) until [`SLOW_HOLD`] later; and
//!   any connection idle for [`IDLE_HAND_BACK`] (a client's think time, a proxy's pooled
//!   connection), so that idle clients cost a worker nothing.
//!   Uniform fast traffic then never pays for a hand-back, while a worker that starts
//!   getting stuck behind long requests stops hoarding the idle connections of clients
//!   whose next request would queue behind them;
//! - `off`: never (the worker does not announce the capability).
//!
//! A draining worker hands back its idle connections in every mode but `off`: the
//! master gives them to the other workers, and a rolling reload keeps its clients'
//! connections open.
//!
//! This module holds that decision (one per process: a worker is one process), the
//! stall watch that finds slow requests by the thread's CPU time
//! ([`spawn_stall_watch`]), and the pieces the built-in HTTP worker uses to find
//! request boundaries under hyper: an I/O wrapper that sees hyper wait for a next
//! request it has not got, and a response body that says when a response is completely
//! handed to hyper. When the worker becomes slow, its connections idle at that moment
//! go back at once, not only those that finish a request afterwards.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use crate::wire::{HandBack, SLOW_HOLD, SLOW_REQUEST};

/// The mode the master asked for (`HANDOFF_RETURN`; absent or unknown: `auto`), as
/// [`super::WorkerEnv::from_env`] reads it.
pub fn mode() -> HandBack {
    static MODE: OnceLock<HandBack> = OnceLock::new();
    *MODE.get_or_init(|| std::env::var(super::ENV_RETURN).ok().and_then(|v| v.parse().ok()).unwrap_or_default())
}

/// When this process started being measured: the slow clock counts from it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Until when (ns after `epoch`) this worker counts as slow; 0: not slow.
static SLOW_UNTIL: AtomicU64 = AtomicU64::new(0);

/// Tells the hand-back policy how long a request held this worker (the time spent
/// running its handler, not waiting). The built-in worker does it for every request;
/// a worker of your own that hands connections back in `auto` mode calls it too.
pub fn note_request(held: Duration) {
    // Where the stall rescue runs, it takes idle connections away during a long
    // request, when it matters, and the worker need not hand back after it.
    if held >= SLOW_REQUEST && !super::stall::rescuing() {
        // The epoch first: set on first use, it must not be later than `now`.
        let epoch = epoch();
        let now = Instant::now().duration_since(epoch);
        let ns = (now + SLOW_HOLD).as_nanos().min(u64::MAX as u128) as u64;
        let before = SLOW_UNTIL.fetch_max(ns, Ordering::Relaxed);
        if before < now.as_nanos() as u64 {
            // Just became slow: the connections idle in this worker now go back too,
            // not only those that finish a request from now on.
            BECAME_SLOW.notify_waiters();
        }
    }
}

/// Woken when the worker becomes slow (see [`note_request`]).
static BECAME_SLOW: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A future that completes the next time this worker becomes slow.
pub(crate) fn became_slow() -> tokio::sync::futures::Notified<'static> {
    BECAME_SLOW.notified()
}

/// Should a connection that is idle at a request boundary go back to the master now,
/// in `mode`? (`always`; or `auto` while this worker is slow.) A draining worker hands
/// back in any mode but `off`, whatever this says.
pub fn wanted(mode: HandBack) -> bool {
    match mode {
        HandBack::Always => true,
        HandBack::Off => false,
        HandBack::Auto => {
            let until = SLOW_UNTIL.load(Ordering::Relaxed);
            let epoch = epoch();
            until != 0 && (Instant::now().duration_since(epoch).as_nanos() as u64) < until
        }
    }
}

/// What the built-in worker knows of one connection's position between requests,
/// shared by its I/O wrapper, its service and its response bodies.
#[derive(Debug, Default)]
pub(crate) struct Boundary {
    /// Requests started whose response body hyper has not finished with.
    in_service: AtomicU32,
    /// Bytes were written since the last bytes were read.
    wrote: AtomicBool,
    /// Bytes were written since hyper last flushed them all (its `poll_flush` returns
    /// ready only once its own buffer is empty).
    unflushed: AtomicBool,
    /// hyper asked for more bytes, found none, and has no request in service after
    /// writing a response: it is waiting for the next request.
    idle: AtomicBool,
    /// A request has started on this connection.
    started: AtomicBool,
    /// Requests started on this connection, so far.
    requests: AtomicU64,
    /// The last request came with a body (or may have: `Expect`, chunked): hyper may
    /// still be reading or discarding it after the response, so the stall rescue must
    /// not take the connection (see [`super::stall`]).
    body: AtomicBool,
}

impl Boundary {
    /// hyper is waiting for a next request it has not got (as far as this wrapper can
    /// see: a partial request hyper buffered is found by `into_parts` and served on).
    pub(crate) fn is_idle(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
    }

    /// A request has started on this connection.
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// How many requests have started on this connection: two looks that both find it
    /// idle saw the same idle spell only if this did not change in between (a request
    /// can start and end within one poll).
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A connection served on by a new hyper connection after a boundary (a failed
    /// hand-back, or bytes read ahead put back): it is between requests, its last
    /// response written, so that it can be found idle again without a new response.
    pub(crate) fn resumed(&self) {
        self.started.store(true, Ordering::Relaxed);
        self.wrote.store(true, Ordering::Relaxed);
    }

    /// hyper wrote (or tried to): bytes are out since the last read, and not flushed.
    fn writing(&self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.wrote.store(true, Ordering::Relaxed);
        }
        self.unflushed.store(true, Ordering::Relaxed);
    }

    /// Notes whether the request just started has a body (see `body`).
    pub(crate) fn with_body(&self, body: bool) {
        self.body.store(body, Ordering::Relaxed);
    }

    /// Marks a request as started; the guard ends it when the response body is gone.
    pub(crate) fn request(self: &Arc<Self>) -> InService {
        self.started.store(true, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_service.fetch_add(1, Ordering::Relaxed);
        self.idle.store(false, Ordering::Relaxed);
        InService(self.clone())
    }
}

/// One request in service, from its head until hyper drops its response body.
#[derive(Debug)]
pub(crate) struct InService(Arc<Boundary>);

impl Drop for InService {
    fn drop(&mut self) {
        self.0.in_service.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The I/O hyper reads and writes through, watched for request boundaries.
#[derive(Debug)]
pub(crate) struct Watched<I> {
    pub(crate) inner: I,
    pub(crate) at: Arc<Boundary>,
    /// The connection's place on the stall rescue's shelf, if it is on it.
    pub(crate) spot: Option<Arc<super::stall::Spot>>,
    /// The last four bytes read, as a big-endian number: `\r\n\r\n` ends a request
    /// without a body (see [`super::stall`]).
    pub(crate) tail: u32,
}

/// `\r\n\r\n`, as [`Watched::tail`] holds it.
const END_OF_HEAD: u32 = u32::from_be_bytes(*b"\r\n\r\n");

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.at.wrote.store(false, Ordering::Relaxed);
                this.at.idle.store(false, Ordering::Relaxed);
                // Only the stall rescue reads the tail.
                if this.spot.is_some() {
                    let new = &buf.filled()[before..];
                    for &b in &new[new.len().saturating_sub(4)..] {
                        this.tail = (this.tail << 8) | u32::from(b);
                    }
                }
            }
            Poll::Pending => {
                let idle = this.at.wrote.load(Ordering::Relaxed)
                    && !this.at.unflushed.load(Ordering::Relaxed)
                    && this.at.in_service.load(Ordering::Relaxed) == 0;
                this.at.idle.store(idle, Ordering::Relaxed);
                if idle && this.tail == END_OF_HEAD && !this.at.body.load(Ordering::Relaxed) {
                    if let Some(spot) = &this.spot {
                        spot.idle(cx.waker());
                    }
                }
            }
            _ => {}
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.at.writing(&r);
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.at.writing(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.at.unflushed.store(false, Ordering::Relaxed);
        }
        r
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request "in service" until hyper drops it, which
/// hyper does once the body is completely written (or the connection failed).
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    pub(crate) body: B,
    pub(crate) _in_service: InService,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// In `auto` mode, a connection idle this long at a request boundary goes back to the
/// master, slow worker or not.
pub const IDLE_HAND_BACK: Duration = Duration::from_secs(1);

/// Connections handed back since the stall watch last looked (see `spawn_stall_watch`).
pub(crate) static HANDED_BACK: AtomicU64 = AtomicU64::new(0);
/// Hand-backs within a second after which the worker returns its free memory.
const TRIM_AFTER: u64 = 256;

/// How often the stall watch looks at this worker's thread (see [`spawn_stall_watch`]).
pub const STALL_TICK: Duration = Duration::from_millis(10);

/// Watches the current thread for requests that hold it, on the current tokio runtime
/// (once per process; later calls do nothing), and tells [`note_request`]. The built-in
/// worker and [`super::serve_http`] start it; a worker of your own that calls
/// [`super::Conn::hand_back_wanted`] on a tokio runtime can too.
///
/// Every [`STALL_TICK`] it reads the thread's CPU time. A tick that comes late because
/// the thread was busy running something (its CPU time grew by more than the tick plus
/// [`SLOW_REQUEST`]) means one request held the event loop that long: the worker is
/// slow. A tick late because the thread was not running at all (descheduled: another
/// process had the CPU) is not: timing each request by the clock instead took every
/// preemption inside a handler for a slow request, and under uniform load on a shared
/// core made workers hand back thousands of connections a second for nothing. It costs
/// one timer and one `clock_gettime` per tick. On a multi-threaded runtime it watches
/// the thread it happens to run on.
pub fn spawn_stall_watch() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if tokio::runtime::Handle::try_current().is_err() || STARTED.swap(true, Ordering::Relaxed) {
        return;
    }
    tokio::spawn(async {
        let cpu = || {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
            Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
        };
        let mut tick = tokio::time::interval(STALL_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last = cpu();
        let mut ticks = 0u32;
        loop {
            tick.tick().await;
            ticks = ticks.wrapping_add(1);
            if ticks % 100 == 0 && HANDED_BACK.swap(0, Ordering::Relaxed) >= TRIM_AFTER {
                // Many connections left at once (idle clients handed back): their
                // buffers are free, give them back to the kernel too.
                crate::sys::release_free_memory();
            }
            let now = cpu();
            // CPU time the thread spent since the last tick, beyond the tick itself:
            // what kept it from coming back to its timers.
            let held = now.saturating_sub(last).saturating_sub(STALL_TICK);
            note_request(held);
            last = now;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_request_makes_the_worker_slow_for_a_while_and_a_short_one_does_not() {
        // The mode is read once per process; tests run in auto (no HANDOFF_RETURN).
        note_request(Duration::from_micros(50));
        let before = SLOW_UNTIL.load(Ordering::Relaxed);
        note_request(SLOW_REQUEST);
        let after = SLOW_UNTIL.load(Ordering::Relaxed);
        assert!(after > before);
        assert!(Duration::from_nanos(after) <= Instant::now().duration_since(epoch()) + SLOW_HOLD);
    }
}
