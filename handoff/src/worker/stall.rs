//! The stall rescue: the connections idle behind a long request leave the worker while
//! that request still runs.
//!
//! A worker that serves many keep-alive connections on one thread (the built-in worker,
//! [`super::serve_http`] on a current-thread runtime) serves none of them while one
//! handler holds the thread: a CPU-bound request of 25 ms makes every client whose next
//! request arrives meanwhile wait up to 25 ms, although other workers are free. Handing
//! every connection back after every request avoids that but costs a round trip through
//! the master per request (`--hand-back always`: about 6× a kept request). The rescue
//! pays only when it happens:
//!
//! - each handler poll marks the thread busy while it runs ([`Timed`]: two atomic
//!   additions per poll, no clock);
//! - a watch thread looks every [`TICK_CALM`] while handlers run ([`TICK_ALERT`] for
//!   [`ALERT_FOR`] after a stall, [`TICK_QUIET`] once no handler has run for a
//!   second). When one poll has held the thread for [`RESCUE_AFTER`] since the watch
//!   first saw it, and the serving thread either used at least half that in CPU time
//!   or is waiting in a blocking call (a thread that was merely preempted is not stuck
//!   in a handler), it sends BUSY (the master then sends this worker nothing new while
//!   another can take it) and RETURNs every connection idle at a request boundary, in
//!   one frame; their next requests go to other workers. While that poll runs, the
//!   serving thread runs at a lower priority ([`DEMOTION`], where the process may come
//!   back from it), so that the long request takes less CPU from the short ones of the
//!   other workers. When the poll ends the priority is restored and it sends FREE.
//!
//! The serving thread and the watch never touch one socket at once: a connection is on
//! the [`shelf`](shelve) with a state the serving thread sets to *idle* at a boundary and
//! claims back (*active*) before it reads or writes; the watch takes only an idle one
//! (*taken*), under the shelf's lock, which a connection also holds to leave the shelf
//! before its descriptor is closed. A taken connection is dead to the serving thread:
//! its reads see the end of the stream, its shutdown sends no FIN, and it reports no
//! DONE (the RETURN stands for it).
//!
//! A boundary seen by the I/O wrapper is exact only if the server holds no bytes of a
//! next request: the serving thread checks that with the server's own buffer when it
//! hands back, but the watch cannot look into hyper's buffer from another thread. So a
//! connection counts as idle for the rescue only if its last request had no body (hyper
//! may still be discarding a body the handler did not read) and the last four bytes
//! read from it were `\r\n\r\n`, the end of that request's head. A pipelined client
//! whose next request had begun to arrive, or one whose last request had a body, is
//! not rescued; it is served as before.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::hand_back::HANDED_BACK;
#[cfg(doc)]
use super::hand_back::SLOW_REQUEST;
use super::Reporter;

/// A handler poll that holds the serving thread this long (since the watch first saw
/// it) is a stall. Shorter than `auto` mode's [`SLOW_REQUEST`] for workers without a
/// watch: a rescue costs one round trip per idle connection, once per stall, where
/// the slow rule costs one per request for a second.
pub(crate) const RESCUE_AFTER: Duration = Duration::from_millis(1);
/// How often the watch looks while stalls are recent (one in the last
/// [`ALERT_FOR`]): a client behind a long request waits at most about
/// `RESCUE_AFTER + 2 × TICK_ALERT` for the rescue.
pub(crate) const TICK_ALERT: Duration = Duration::from_micros(500);
/// How long after a stall the watch stays on [`TICK_ALERT`].
pub(crate) const ALERT_FOR: Duration = Duration::from_secs(10);
/// How often it looks while handlers run and no stall is recent: each look wakes a
/// thread (measured pinned: about 12 µs of CPU per look here), so uniform fast
/// traffic pays for 200 of them a second, and only the first stall after a calm
/// spell waits up to this long to be seen.
pub(crate) const TICK_CALM: Duration = Duration::from_millis(5);
/// How often it looks once no handler has run for a second.
pub(crate) const TICK_QUIET: Duration = Duration::from_millis(20);

const ACTIVE: u8 = 0;
const IDLE: u8 = 1;
const TAKEN: u8 = 2;

/// One shelved connection's state, shared by its serving thread and the watch.
#[derive(Debug, Default)]
pub(crate) struct Spot {
    state: AtomicU8,
    /// Woken when the connection is taken, so that its task ends at once.
    waker: Mutex<Option<Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing is left half-done under these locks: a poisoned one is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Spot {
    /// The serving thread is at a request boundary, waiting for the next request with
    /// nothing of it read (see the module docs for what that means here).
    pub(crate) fn idle(&self, waker: &Waker) {
        {
            let mut w = lock(&self.waker);
            if !w.as_ref().is_some_and(|old| old.will_wake(waker)) {
                *w = Some(waker.clone());
            }
        }
        self.set_idle();
    }

    /// [`Spot::idle`] for a connection nothing waits on (the waiting room's: the room
    /// finds a taken one when it next reports or comes due).
    pub(crate) fn set_idle(&self) {
        let _ = self.state.compare_exchange(ACTIVE, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Before the serving thread touches the socket: `false` if the watch handed it
    /// back.
    pub(crate) fn claim(&self) -> bool {
        // The common case, on every read and write: a plain load, no locked instruction.
        if self.state.load(Ordering::Acquire) == ACTIVE {
            return true;
        }
        loop {
            match self.state.compare_exchange(IDLE, ACTIVE, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) | Err(ACTIVE) => return true,
                // Taken for good; or the send was undone and it is idle again: claimed
                // like any idle one on the next turn (never used unclaimed).
                Err(_) if self.taken() => return false,
                Err(_) => {}
            }
        }
    }

    /// The watch handed it back: the worker must not touch it again. Final: a
    /// connection the watch is still sending is waited for (it holds the shelf's lock
    /// until the send is done or undone; undone, the state is idle again).
    pub(crate) fn taken(&self) -> bool {
        if self.state.load(Ordering::Acquire) != TAKEN {
            return false;
        }
        drop(lock(shelf()));
        self.state.load(Ordering::Acquire) == TAKEN
    }
}

#[derive(Debug)]
struct Entry {
    spot: Arc<Spot>,
    /// Open for as long as the entry is on the shelf (see [`unshelve`]).
    fd: RawFd,
    /// The socket is in non-blocking mode (a tokio stream; the waiting room's are not).
    nonblocking: bool,
}

fn shelf() -> &'static Mutex<HashMap<u64, Entry>> {
    static SHELF: OnceLock<Mutex<HashMap<u64, Entry>>> = OnceLock::new();
    SHELF.get_or_init(Default::default)
}

/// The serving code of this process may be rescued (a current-thread runtime that hands
/// back in `auto` mode): set by the server before its first connection.
static ALLOWED: AtomicBool = AtomicBool::new(false);
/// The watch thread runs.
static RUNNING_WATCH: AtomicBool = AtomicBool::new(false);

/// Allows the rescue for the connections this process serves from now on, if the
/// current tokio runtime has one thread (on a multi-threaded one, other threads serve
/// while one is held, and one busy mark could not tell the threads apart).
pub(crate) fn allow() {
    let current_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
    if current_thread {
        let _ = SERVING_THREAD.set(rustix::thread::gettid().as_raw_nonzero().get());
        let _ = DEMOTE.set(priority_to_restore());
        ALLOWED.store(true, Ordering::Relaxed);
    }
}

/// How much lower the watch sets a stuck serving thread's priority (nice), until its
/// poll ends: the CPU a long request keeps from the short requests of the other
/// workers (and from the client and the master, on a small machine) is what lengthens
/// everyone's tail once the rescue has moved the clients away. Nice 5 gives it about a
/// third of a CPU that a nice 0 thread wants too, so a long request still advances
/// under full load.
pub(crate) const DEMOTION: i32 = 5;

/// The serving thread's nice value to come back to, if this process may come back to
/// it after lowering its priority (root, or `RLIMIT_NICE` that allows it: the master
/// grants it to workers when it runs as root); `None`: the watch does not demote.
static DEMOTE: OnceLock<Option<i32>> = OnceLock::new();

fn priority_to_restore() -> Option<i32> {
    use rustix::process::{getpriority_process, getrlimit, Resource};
    let nice = getpriority_process(None).ok()?;
    // RLIMIT_NICE n allows nice values down to 20 - n.
    let limit = getrlimit(Resource::Nice).current.unwrap_or(u64::MAX);
    let allowed = rustix::process::geteuid().is_root() || limit >= (20 - nice).max(0) as u64;
    (allowed && nice + DEMOTION <= 19).then_some(nice)
}

/// Sets the serving thread's nice value; says whether it took.
fn renice(nice: i32) -> bool {
    let Some(&tid) = SERVING_THREAD.get() else {
        return false;
    };
    rustix::process::setpriority_process(rustix::process::Pid::from_raw(tid), nice).is_ok()
}

/// The serving thread's id (the runtime's one thread), whose CPU time and state the
/// watch reads.
static SERVING_THREAD: OnceLock<i32> = OnceLock::new();

/// Whether the watch runs: the rescue then replaces `auto` mode's slow-worker rule.
pub(crate) fn rescuing() -> bool {
    RUNNING_WATCH.load(Ordering::Relaxed)
}

/// Puts connection `id` on the shelf (starting the watch with the first one); `None`
/// when the rescue is not allowed here. The caller must [`unshelve`] it before its
/// descriptor is closed. `nonblocking`: the socket is in non-blocking mode (it goes
/// back to the master blocking).
pub(crate) fn shelve(id: u64, fd: BorrowedFd<'_>, nonblocking: bool, reporter: &Arc<Reporter>) -> Option<Arc<Spot>> {
    if !ALLOWED.load(Ordering::Relaxed) {
        return None;
    }
    start(reporter.clone())?;
    let spot = Arc::new(Spot::default());
    let entry = Entry { spot: spot.clone(), fd: fd.as_raw_fd(), nonblocking };
    lock(shelf()).insert(id, entry);
    Some(spot)
}

/// Takes connection `id` off the shelf. Once this returns, the watch cannot take it
/// any more, and whether it did is final ([`Spot::taken`]).
pub(crate) fn unshelve(id: u64) {
    lock(shelf()).remove(&id);
}

/// Handler polls started and ended so far: odd while one runs. A counter, not a
/// clock, so that marking a poll costs two atomic additions and no clock read; the
/// watch times a poll by how long the counter stays at the same odd value.
static POLLS: AtomicU64 = AtomicU64::new(0);

/// Runs `f` as one handler poll: marked busy while it runs.
pub(crate) fn timed<T>(f: impl FnOnce() -> T) -> T {
    if !ALLOWED.load(Ordering::Relaxed) {
        return f();
    }
    /// Ends the poll's mark even if the handler panics (tokio catches a task's panic,
    /// and the worker serves on: a mark left odd would keep it BUSY for good).
    struct Ended;
    impl Drop for Ended {
        fn drop(&mut self) {
            POLLS.fetch_add(1, Ordering::Relaxed);
        }
    }
    POLLS.fetch_add(1, Ordering::Relaxed);
    let _ended = Ended;
    f()
}

pin_project_lite::pin_project! {
    /// A handler's future, each poll marked as [`timed`].
    #[derive(Debug)]
    pub(crate) struct Timed<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Timed<F> {
    pub(crate) fn new(inner: F) -> Timed<F> {
        Timed { inner }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let inner = self.project().inner;
        timed(|| inner.poll(cx))
    }
}

/// Connections the rescue handed back, ever (this process).
pub(crate) static RESCUED: AtomicU64 = AtomicU64::new(0);

/// Starts the watch once per process; `None` if it cannot run (no thread).
fn start(reporter: Arc<Reporter>) -> Option<()> {
    static STARTED: OnceLock<bool> = OnceLock::new();
    let ok = *STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new().name("handoff-stall".into()).spawn(move || watch(reporter));
        match spawned {
            Ok(_) => {
                RUNNING_WATCH.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::warn!("stall watch not started ({e}): connections stay behind long requests");
                false
            }
        }
    });
    ok.then_some(())
}

/// The serving thread as the kernel sees it: its CPU time so far, and whether it is
/// waiting in the kernel (a blocking call: asleep, or in uninterruptible I/O) rather
/// than running or ready to run. Read from `/proc` only when a poll has lasted a tick.
fn serving_thread() -> Option<(Duration, bool)> {
    let tid = SERVING_THREAD.get()?;
    // schedstat: time on the CPU (ns), time waiting to run (ns), timeslices.
    let sched = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let ran = Duration::from_nanos(sched.split_whitespace().next()?.parse().ok()?);
    // stat: "pid (comm) S ...": the state follows the last ')'.
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    Some((ran, matches!(state, "S" | "D")))
}

/// The watch thread (see the module docs). Runs for the life of the process.
fn watch(reporter: Arc<Reporter>) {
    // The poll seen running at the last look: the counter's value, when the watch
    // first saw it, and the serving thread's CPU time then (read at the second look).
    let (mut seen, mut since, mut cpu_then) = (0u64, Instant::now(), None::<Duration>);
    let mut last_change = Instant::now();
    let mut last_stall: Option<Instant> = None;
    let mut busy = false;
    // The serving thread runs at a lower priority (see DEMOTION).
    let mut demoted = false;
    loop {
        let tick = if busy || last_stall.is_some_and(|t| t.elapsed() < ALERT_FOR) {
            TICK_ALERT
        } else if last_change.elapsed() < Duration::from_secs(1) {
            TICK_CALM
        } else {
            TICK_QUIET
        };
        std::thread::sleep(tick);
        let polls = POLLS.load(Ordering::Relaxed);
        let now = Instant::now();
        if polls % 2 == 0 || polls != seen {
            if polls != seen {
                last_change = now;
            }
            // FREE, until it gets through (the master keeps a BUSY worker for last).
            if busy && reporter.busy(false) {
                busy = false;
            }
            if demoted {
                if let Some(&Some(nice)) = DEMOTE.get() {
                    demoted = !renice(nice);
                }
            }
            (seen, since, cpu_then) = (polls, now, None);
            continue;
        }
        // The same poll as at the last look: running since at least `since`.
        if busy {
            continue;
        }
        let Some((cpu, blocked)) = serving_thread() else {
            continue;
        };
        let ran = cpu.saturating_sub(*cpu_then.get_or_insert(cpu));
        // Held: it ran for half the time, or it waits in a blocking call. A thread
        // that is merely preempted (ready to run) is not stuck in a handler.
        let held = now.duration_since(since) >= RESCUE_AFTER && (ran >= RESCUE_AFTER / 2 || blocked);
        if held {
            last_stall = Some(now);
            // Without BUSY the master could send the rescued connections straight back.
            busy = reporter.busy(true);
            if busy {
                rescue(&reporter);
            }
            if let Some(&Some(nice)) = DEMOTE.get() {
                demoted = renice(nice + DEMOTION);
            }
        }
    }
}

/// Hands back every idle connection on the shelf (see the module docs).
#[allow(unsafe_code, reason = "borrows shelved descriptors, which the shelf's lock keeps open")]
/// All of this process's connections report through `reporter` (one channel per worker).
fn rescue(reporter: &Reporter) {
    let shelf = lock(shelf());
    let mut taken: Vec<(u64, &Entry)> = Vec::new();
    for (id, e) in shelf.iter() {
        if e.spot.state.compare_exchange(IDLE, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            taken.push((*id, e));
        }
    }
    for chunk in taken.chunks(crate::wire::MAX_RETURNS) {
        let ids: Vec<u64> = chunk.iter().map(|(id, _)| *id).collect();
        let fds: Vec<BorrowedFd<'_>> = chunk
            .iter()
            // SAFETY: a connection leaves the shelf (`unshelve`, under the lock held
            // here) before its descriptor is closed, so every descriptor on the shelf
            // is open, and is that connection's, until the lock is released.
            .map(|(_, e)| unsafe { BorrowedFd::borrow_raw(e.fd) })
            .collect();
        // Back in blocking mode, as it was received (PROTOCOL.md, section 5); the
        // serving thread does not touch a taken connection again.
        for ((_, e), fd) in chunk.iter().zip(&fds) {
            if e.nonblocking {
                let _ = rustix::io::ioctl_fionbio(*fd, false);
            }
        }
        match reporter.give_back_many(&ids, &fds) {
            Ok(()) => {
                HANDED_BACK.fetch_add(ids.len() as u64, Ordering::Relaxed);
                RESCUED.fetch_add(ids.len() as u64, Ordering::Relaxed);
                for (_, e) in chunk {
                    if let Some(w) = lock(&e.spot.waker).take() {
                        w.wake();
                    }
                }
            }
            Err(_) => {
                // Still this worker's (a full channel): served as before.
                for ((_, e), fd) in chunk.iter().zip(&fds) {
                    if e.nonblocking {
                        let _ = rustix::io::ioctl_fionbio(*fd, true);
                    }
                    e.spot.state.store(IDLE, Ordering::Release);
                }
            }
        }
    }
}
