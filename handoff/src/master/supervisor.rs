//! The supervisor: the worker table (`Workers`) owns every worker process and
//! every slot's history: starting workers (`spawn`), their channels and stderr pipes
//! (`frames`), their exits and reaping, respawn backoff and the crash-loop verdict,
//! recycling, readiness (`proven`), draining, and killing hung or lost workers.
//! What the other parts need of it goes through its methods: the dispatcher asks it
//! which workers may take a connection and hands it the connections to send; it
//! hands back (as `Handed`) the connections a worker returned or left behind.
//!
//! **Failed starts.** A worker that ends before it is proven (see `Worker::proven`),
//! or lives shorter than [`HEALTHY_AFTER`], failed its start; so does one still not
//! proven `--ready-timeout` after it started, which is killed. Each failed start
//! doubles the slot's wait before the next one ([`Slot::backoff`]); a reload reads the
//! slots' failures to decide whether its new workers will ever serve
//! (`Workers::reload_verdict`).
//!
//! A *slot* is a worker position `0..N` (`HANDOFF_WORKER_ID`); a *worker* is one
//! process filling a slot. During a recycle or rolling reload a slot briefly has two
//! workers (the old one draining, the new one starting), so workers carry a unique
//! `key` that also names their event-loop tokens: an event for a dead worker can never
//! reach its successor.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use tracing::{debug, error, info, warn};

use super::{Held, MasterError, Source, Totals, TICK};
use crate::config::Config;
use crate::sys::fdpass;
use crate::sys::process::{self as sysproc, Exit};
use crate::wire::{self, cap};
use spawn::{Forward, Lines};

// Children of this part, in files of their own beside it: they share its state.
#[path = "eligibility.rs"]
mod eligibility;
#[path = "frames.rs"]
mod frames;
pub(super) use frames::FrameBudget;
#[path = "spawn.rs"]
mod spawn;

/// How many lines of a worker's stderr are kept for error messages.
pub const STDERR_LINES: usize = 12;
/// A worker that lives shorter than this counts as a failed start.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(1);
/// Longest wait before respawning a worker that keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Failed starts in a row, with no worker ever healthy, that stop the master.
pub const CRASH_LOOP_STARTS: u32 = 3;
/// A worker that has not sent READY this long after it started is taken for a minimal
/// worker (one that never will) and starts getting connections. Until then it gets
/// none: a full worker's first connections are then protected by its ACKs, and a
/// worker that dies at start-up takes no connection with it.
pub const MINIMAL_READY_AFTER: Duration = Duration::from_millis(300);

/// How long a worker that never sends READY must live to count as proven (see
/// [`Worker::proven`]): longer than a broken deploy takes to die (an app that fails
/// after its imports), short enough for a rolling restart of minimal workers.
pub const MINIMAL_PROVEN_AFTER: Duration = Duration::from_secs(10);

/// A worker that reported DONE for a connection it never ACKed (its descriptor did not
/// arrive: the worker is out of descriptors) gets no such connection again for this
/// long: it is handed to another worker, never back to one that just lost one.
pub const NOT_RECEIVED_AVOID: Duration = Duration::from_secs(1);

/// A master-only bit in [`Held::flags`] (never sent: the dispatcher masks it): the
/// connection is retried after a worker did not receive it, and goes to no worker that
/// lost one in the last [`NOT_RECEIVED_AVOID`].
pub(super) const RETRY_ELSEWHERE: u8 = 1 << 7;

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Serving; takes new connections.
    Running,
    /// Being replaced (recycle, reload): still takes connections until its successor is
    /// ready, then is drained.
    Retiring,
    /// Sent DRAIN: finishing its connections, takes no new ones.
    Draining,
    /// Being killed (hung, misbehaving, or a stop timed out).
    Killing,
    /// Its channel closed; waiting to reap the process.
    Lost,
}

/// A connection handed to a worker and not yet finished.
#[derive(Debug)]
pub struct Inflight {
    /// The master's copy of the descriptor, kept until the worker ACKs it.
    pub fd: Option<OwnedFd>,
    /// Listener index, to hand it on unchanged.
    pub listener: u16,
    /// The PROXY header's addresses, to hand it on unchanged (the header itself was
    /// consumed by the master).
    pub addrs: Option<crate::proxy::ProxyHeader>,
    /// [`crate::wire::flags`] it was sent with (a continued connection stays one).
    pub flags: u8,
}

/// One worker process.
#[derive(Debug)]
pub struct Worker {
    /// Unique for the master's lifetime; names the event-loop tokens.
    pub key: usize,
    /// `HANDOFF_WORKER_ID`.
    pub slot: usize,
    /// Process id.
    pub pid: u32,
    /// The master's end of the channel; `None` once closed.
    pub chan: Option<OwnedFd>,
    /// The read end of the worker's stderr pipe.
    pub stderr: Option<OwnedFd>,
    /// Where its output stands in its lines (for the `[worker N]` labels).
    pub lines: Lines,
    /// Capabilities from READY (0 until then, or forever for minimal workers).
    pub caps: u32,
    /// READY received.
    pub ready: bool,
    /// Connection ids below this were sent before READY: not tracked.
    pub tracked_from: u64,
    /// Life stage.
    pub state: State,
    /// Connections sent and not yet DONE (only for workers that report DONE or ACK).
    pub inflight: HashMap<u64, Inflight>,
    /// Ids of connections kept for an ACK, with when they were sent, in sending order;
    /// entries already ACKed are dropped lazily from the front. The front is the
    /// oldest connection still waiting for its ACK.
    pub ack_queue: VecDeque<(u64, Instant)>,
    /// Connections sent, ever.
    pub dispatched: u64,
    /// Continued connections (the next request of a handed-back one) in `inflight`:
    /// while the worker hands its connections back, its requests in progress.
    pub requests_in: u32,
    /// Continued connections sent, with when, oldest first: one that has been in the
    /// worker longer than the age `requests_in` is read with stops counting (a stream,
    /// a WebSocket, a connection the worker chose to keep).
    pub continued: VecDeque<(u64, Instant)>,
    /// When it last handed a connection back.
    pub last_return: Option<Instant>,
    /// DRAIN is owed but the channel was full: sent when it becomes writable.
    pub drain_pending: bool,
    /// Connections this worker may take before it is recycled.
    pub max_requests: Option<u64>,
    /// The last send hit a full channel; wait for it to become writable.
    pub blocked_since: Option<Instant>,
    /// Spawn time.
    pub started: Instant,
    /// Last frame received.
    pub last_heard: Instant,
    /// When the current kill escalates to SIGKILL, or the lost worker is killed.
    pub kill_at: Option<Instant>,
    /// Its exit status, once reaped.
    pub exit: Option<Exit>,
    /// Killed for not being proven within `--ready-timeout`: its failed start was
    /// counted at the kill.
    pub timed_out: bool,
    /// Stopped because the reload that started it failed: its exit is expected.
    pub abandoned: bool,
    /// What it may still send before it counts as flooding the master.
    pub frames: FrameBudget,
    /// A worker that does not ACK: since when its channel has held unread messages
    /// with no sign of it reading, the amount at the last look, and `dispatched` then
    /// (see [`Worker::unread_for`]).
    pub unread: Option<(Instant, usize, u64)>,
    /// Frames queued in its channel and not yet read, at the master's last look (kept
    /// only for a worker the master tracks nothing of: see [`Worker::tracks`]).
    pub unread_frames: u64,
    /// Its channel reported ECONNRESET: it closed its end with frames unread.
    pub channel_reset: bool,
    /// When it last reported DONE for a connection it never ACKed (never received).
    pub lost_frame_at: Option<Instant>,
}

impl Worker {
    /// How long its channel has held messages it has not read, with no sign of it
    /// reading any. The master cannot see a worker that sends nothing read its
    /// connections, but it sees the queue between two looks: smaller, or no larger
    /// although more was sent, means the worker took some. A queue that only grows
    /// (or stays with nothing sent) does not.
    pub fn unread_for(&mut self, now: Instant) -> Duration {
        let queued = self.chan.as_ref().and_then(|c| crate::sys::socket::unread_by_peer(c.as_fd()).ok());
        let sent = self.dispatched;
        match (queued, self.unread) {
            (None | Some(0), _) => {
                self.unread = None;
                return Duration::ZERO;
            }
            (Some(q), Some((since, last, sent_then))) if q > last || (q == last && sent == sent_then) => {
                self.unread = Some((since, q, sent))
            }
            (Some(q), _) => self.unread = Some((now, q, sent)),
        }
        self.unread.map_or(Duration::ZERO, |(since, _, _)| now.duration_since(since))
    }

    /// Reports DONE, so its `active` count is meaningful.
    pub fn reports_load(&self) -> bool {
        self.ready && self.caps & cap::DONE != 0
    }

    /// Connections it is serving, as far as the master knows.
    pub fn active(&self) -> u32 {
        if self.caps & cap::DONE != 0 {
            self.inflight.len() as u32
        } else {
            0
        }
    }

    /// The master tracks its connections (it sent READY with ACK or DONE): the
    /// connections it dies with are counted from the in-flight table, not its channel.
    pub fn tracks(&self) -> bool {
        self.ready && self.caps & (cap::ACK | cap::DONE) != 0
    }

    /// It did not receive a connection (DONE without ACK) in the last
    /// [`NOT_RECEIVED_AVOID`].
    pub fn lost_frame_recently(&self, now: Instant) -> bool {
        self.lost_frame_at.is_some_and(|t| now.duration_since(t) < NOT_RECEIVED_AVOID)
    }

    /// May hand connections back (RETURN).
    pub fn returns(&self) -> bool {
        self.ready && self.caps & cap::RETURN != 0
    }

    /// Stops tracking connection `id` (DONE, RETURN, or an ACK from a worker that
    /// reports no DONE).
    pub fn forget(&mut self, id: u64) -> Option<Inflight> {
        let e = self.inflight.remove(&id)?;
        if e.flags & crate::wire::flags::CONTINUED != 0 {
            self.requests_in = self.requests_in.saturating_sub(1);
        }
        Some(e)
    }

    /// Starts tracking connection `id`, sent at `now`.
    pub fn track(&mut self, id: u64, e: Inflight, now: Instant) {
        if e.flags & crate::wire::flags::CONTINUED != 0 {
            self.requests_in += 1;
            self.continued.push_back((id, now));
        }
        self.inflight.insert(id, e);
    }

    /// Continued connections it is working on, not counting those sent longer than
    /// `age` ago (they no longer count, ever: whatever holds them so long is not a
    /// request waiting for the worker's CPU, and must not keep it full for good).
    pub fn requests_in(&mut self, now: Instant, age: Duration) -> u32 {
        while let Some(&(id, at)) = self.continued.front() {
            if now.duration_since(at) < age {
                break;
            }
            self.continued.pop_front();
            if let Some(e) = self.inflight.get_mut(&id) {
                if e.flags & crate::wire::flags::CONTINUED != 0 {
                    e.flags &= !crate::wire::flags::CONTINUED;
                    self.requests_in = self.requests_in.saturating_sub(1);
                }
            }
        }
        self.requests_in
    }

    /// Hands its connections back now (it did within `window`): then `requests_in`
    /// counts what it is working on, and it should not be given more than a few.
    pub fn returning(&self, now: Instant, window: Duration) -> bool {
        self.last_return.is_some_and(|t| now.duration_since(t) < window)
    }

    /// Connections sent but not yet ACKed (the master still holds them).
    pub fn unacked(&self) -> usize {
        self.inflight.values().filter(|i| i.fd.is_some()).count()
    }

    /// May get connections: READY sent, or (a minimal worker, which never sends it)
    /// alive for [`MINIMAL_READY_AFTER`]. An unproven worker gets them only when no
    /// proven one can (see [`Worker::proven`]).
    pub fn is_ready(&self, now: Instant) -> bool {
        self.ready || now.duration_since(self.started) >= MINIMAL_READY_AFTER
    }

    /// Has shown it can serve: it sent READY, or (a minimal worker) it has lived for
    /// [`MINIMAL_PROVEN_AFTER`]. Only a proven successor lets a rolling restart, a
    /// recycle or a scale drain the worker it replaces; and traffic prefers proven
    /// workers, so a new generation that dies a second (or five) into its start takes
    /// no client with it and the old one goes on serving.
    pub fn proven(&self, now: Instant) -> bool {
        self.ready || now.duration_since(self.started) >= MINIMAL_PROVEN_AFTER
    }

    /// When the oldest connection still waiting for its ACK was sent.
    pub fn oldest_unacked(&mut self) -> Option<Instant> {
        while let Some(&(id, at)) = self.ack_queue.front() {
            if self.inflight.get(&id).is_some_and(|i| i.fd.is_some()) {
                return Some(at);
            }
            self.ack_queue.pop_front();
        }
        None
    }

    /// Hands back every connection the worker has not ACKed, for another worker.
    pub fn take_unacked(&mut self) -> Vec<(u64, Inflight)> {
        let ids: Vec<u64> = self.inflight.iter().filter(|(_, i)| i.fd.is_some()).map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| self.forget(id).map(|i| (id, i))).collect()
    }
}

/// The history of one slot, across the workers that filled it.
#[derive(Debug, Default)]
pub struct Slot {
    /// Workers started in this slot after the first.
    pub restarts: u32,
    /// Consecutive workers that died before [`HEALTHY_AFTER`].
    pub failed_starts: u32,
    /// When to start the next worker, if the slot is waiting for one.
    pub respawn_at: Option<Instant>,
    /// The last lines its workers wrote to stderr.
    pub stderr_tail: VecDeque<String>,
    /// Bytes of an unfinished stderr line.
    pub partial: Vec<u8>,
    /// The slot's last exit, for error messages.
    pub last_exit: Option<Exit>,
    /// Connections handed to this slot's workers, ever.
    pub dispatched: u64,
    /// Why its last start failed (`exit status 1 after 1.0s, before it was ready`,
    /// `not ready after 60s`), while `failed_starts` is above 0.
    pub last_failure: Option<String>,
    /// A worker of this slot was killed for `--ready-timeout` since the failures were
    /// last reset (a reload gives up on the first).
    pub timed_out: bool,
}

impl Slot {
    /// How long to wait before the next start.
    pub fn backoff(&self) -> Duration {
        match self.failed_starts {
            0 => Duration::ZERO,
            n => (Duration::from_millis(100) * 2u32.saturating_pow(n - 1)).min(MAX_BACKOFF),
        }
    }

    /// Keeps the last lines of what the slot's workers wrote to stderr.
    pub fn take_stderr(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.push_line(String::from_utf8_lossy(&line[..nl]).into_owned());
        }
        if self.partial.len() > 4096 {
            let line = std::mem::take(&mut self.partial);
            self.push_line(String::from_utf8_lossy(&line).into_owned());
        }
    }

    fn push_line(&mut self, line: String) {
        if self.stderr_tail.len() == STDERR_LINES {
            self.stderr_tail.pop_front();
        }
        self.stderr_tail.push_back(line);
    }
}

/// Failed starts in a row, in any slot, after which a reload gives up and keeps the
/// old workers: one is bad luck (a port in use, a dependency restarting), three in a
/// row with the same settings is a broken deploy. With the backoff between them
/// (0.1 s, then 0.2 s) a start that crashes at once is judged within a second, and
/// one that dies after its imports within a few.
pub const RELOAD_FAILED_STARTS: u32 = 3;

/// Warns when `--ready-timeout` leaves a worker that never sends READY no time to
/// prove itself ([`MINIMAL_PROVEN_AFTER`]): every such worker would be killed as a
/// failed start. The rule stays as it is (shortening it would let a deploy that dies
/// a few seconds in pass); the operator hears of it once, at start and on reload.
pub(super) fn warn_short_ready_timeout(cfg: &Config) {
    if cfg.ready_timeout <= MINIMAL_PROVEN_AFTER {
        warn!(
            "--ready-timeout {:?} is not longer than the {:?} a worker that never sends READY needs to prove itself: such workers will be killed as failed starts (workers must send READY, or raise --ready-timeout)",
            cfg.ready_timeout, MINIMAL_PROVEN_AFTER
        );
    }
}

/// Time between SIGTERM and SIGKILL for a worker being killed.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// A worker whose channel closed but which has not exited is killed after this.
pub(super) const LOST_GRACE: Duration = Duration::from_secs(1);

/// A connection the worker table gives up, for the dispatcher to place.
#[derive(Debug)]
pub(super) enum Handed {
    /// An idle keep-alive connection a worker handed back (RETURN), at a request
    /// boundary.
    Returned(Held),
    /// A connection a dead worker never ACKed: handed on to another worker.
    TakenBack(Held),
}

/// The worker table: every worker process, every slot, and what the master keeps
/// for talking to them.
#[derive(Debug)]
pub(super) struct Workers {
    list: Vec<Worker>,
    slots: Vec<Slot>,
    next_key: usize,
    /// Some worker lived past [`HEALTHY_AFTER`]: failing starts no longer stop the
    /// master.
    ever_healthy: bool,
    /// Worker output on its way to our stderr, never blocking the loop.
    forward: Forward,
    /// Reused buffer for frames sent.
    frame: Vec<u8>,
    /// Reused buffer for frames read.
    recv_buf: Vec<u8>,
    /// Workers whose channel may hold more frames than one turn read.
    unread: Vec<usize>,
    /// Workers whose stderr pipe may hold more than one turn read.
    unread_stderr: Vec<usize>,
    /// Connections given up since the caller last took them (see [`Handed`]).
    handed: Vec<Handed>,
    /// This part's counters (spawns, kills, hand-ons, losses, dispatches, returns).
    counts: Totals,
    /// What the kernel charges one unread single-connection CONN frame in a channel
    /// (see `fdpass::charge_of`), to count a dead minimal worker's unread connections;
    /// `None` if it could not be measured (then such a loss counts 1).
    frame_charge: Option<usize>,
    /// When a truncated RETURN was last logged (at most once a second).
    last_truncated_log: Option<Instant>,
}

impl Workers {
    /// A table of `slots` empty slots.
    pub(super) fn new(slots: usize) -> Workers {
        Workers {
            list: Vec::new(),
            slots: (0..slots).map(|_| Slot::default()).collect(),
            next_key: 0,
            ever_healthy: false,
            forward: Forward::default(),
            frame: Vec::with_capacity(wire::MAX_FRAME_LEN),
            recv_buf: vec![0; wire::MAX_FRAME_LEN + 1],
            unread: Vec::new(),
            unread_stderr: Vec::new(),
            handed: Vec::new(),
            counts: Totals::default(),
            frame_charge: conn_frame_charge(),
            last_truncated_log: None,
        }
    }

    /// Slots wanted.
    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Every slot's history.
    pub(super) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Worker processes, including ones being replaced.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// No worker process left.
    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every worker process.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Worker> {
        self.list.iter()
    }

    /// The connections given up since the last call (see [`Handed`]), in order.
    pub(super) fn take_handed(&mut self) -> Vec<Handed> {
        std::mem::take(&mut self.handed)
    }

    /// Writes what workers wrote to stderr, as far as our stderr takes it now.
    pub(super) fn flush_output(&mut self) {
        self.forward.flush();
    }

    /// Copies this part's counters into `t`.
    pub(super) fn count_into(&self, t: &mut Totals) {
        let c = &self.counts;
        t.dispatched = c.dispatched;
        t.redispatched = c.redispatched;
        t.lost_with_worker = c.lost_with_worker;
        t.spawned = c.spawned;
        t.protocol_kills = c.protocol_kills;
        t.hung_kills = c.hung_kills;
        t.recycled = c.recycled;
        t.failed_starts = c.failed_starts;
        t.ready_timeouts = c.ready_timeouts;
        t.returned = c.returned;
        t.lost_in_channel = c.lost_in_channel;
        t.lost_not_received = c.lost_not_received;
        t.retried_not_received = c.retried_not_received;
        t.lost_return_truncated = c.lost_return_truncated;
        t.worker_output_dropped = self.forward.dropped_total + crate::sys::stderr_dropped();
    }

    /// Worker `i` did not receive a connection in the last second (see
    /// [`RETRY_ELSEWHERE`]).
    pub(super) fn lost_frame_recently(&self, i: usize, now: Instant) -> bool {
        self.list.get(i).is_some_and(|w| w.lost_frame_recently(now))
    }

    fn index(&self, key: usize) -> Option<usize> {
        self.list.iter().position(|w| w.key == key)
    }

    /// The worker currently filling `slot` (not one being replaced).
    fn slot_worker(&self, slot: usize) -> Option<&Worker> {
        self.list.iter().find(|w| w.slot == slot && matches!(w.state, State::Running))
    }

    /// The index of the running worker of `slot`.
    pub(super) fn find_running(&self, slot: usize) -> Option<usize> {
        self.list.iter().position(|w| w.slot == slot && w.state == State::Running)
    }

    /// Some worker is waiting for its successor (a recycle or rolling step under way).
    pub(super) fn any_retiring(&self) -> bool {
        self.list.iter().any(|w| w.state == State::Retiring)
    }

    /// Some running worker has sent READY (the health endpoint's "ok").
    pub(super) fn any_ready(&self) -> bool {
        self.list.iter().any(|w| w.ready && w.state == State::Running)
    }

    /// Every slot has a running, proven worker (see [`Worker::proven`]: a new
    /// master of an upgrade tells the old one to go only then) and no worker is being
    /// replaced.
    pub(super) fn all_ready(&self, now: Instant) -> bool {
        let all = (0..self.slots.len())
            .all(|s| self.list.iter().any(|w| w.slot == s && w.state == State::Running && w.proven(now)));
        all && !self.any_retiring()
    }

    // ---- starting workers ----

    /// Starts a worker in every slot (the master's start). One start time for the
    /// first batch: minimal workers (no READY) then become eligible at the same
    /// instant, so the first connections spread evenly.
    pub(super) fn start_all(&mut self, cfg: &Config, reg: &Registry) -> Result<(), MasterError> {
        for slot in 0..self.slots.len() {
            self.spawn(slot, cfg, reg)?;
        }
        let t0 = Instant::now();
        for w in &mut self.list {
            w.started = t0;
        }
        Ok(())
    }

    pub(super) fn spawn(&mut self, slot: usize, cfg: &Config, reg: &Registry) -> Result<usize, MasterError> {
        if slot >= self.slots.len() {
            return Err(MasterError::Spawn { slot, source: io::Error::other("no such slot (scaled down)") });
        }
        let (mine, theirs) = fdpass::seqpacket_pair().map_err(|source| MasterError::Spawn { slot, source })?;
        // The worker's end must be blocking: a minimal worker just calls recvmsg.
        rustix::io::ioctl_fionbio(&theirs, false).map_err(|e| MasterError::Spawn { slot, source: e.into() })?;
        let args = spawn::SpawnArgs { cfg, slot, slots: self.slots.len(), channel: &theirs };
        let (pid, stderr) = spawn::spawn(args).map_err(|source| MasterError::Spawn { slot, source })?;
        // Close our copy of the worker's end now, or we would never see its EOF.
        drop(theirs);
        let key = self.next_key;
        self.next_key += 1;
        reg.register(
            &mut SourceFd(&mine.as_raw_fd()),
            Source::Channel(key).token(),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        if let Some(e) = &stderr {
            reg.register(&mut SourceFd(&e.as_raw_fd()), Source::Stderr(key).token(), Interest::READABLE)?;
        }
        let now = Instant::now();
        let max_requests = cfg.max_requests.map(|m| {
            m.saturating_add(if cfg.max_requests_jitter > 0 { fastrand::u64(0..=cfg.max_requests_jitter) } else { 0 })
        });
        self.list.push(Worker {
            key,
            slot,
            pid,
            chan: Some(mine),
            stderr,
            lines: Lines::new(slot),
            caps: 0,
            ready: false,
            tracked_from: u64::MAX,
            state: State::Running,
            inflight: Default::default(),
            dispatched: 0,
            requests_in: 0,
            continued: VecDeque::new(),
            last_return: None,
            ack_queue: VecDeque::new(),
            drain_pending: false,
            max_requests,
            blocked_since: None,
            started: now,
            last_heard: now,
            kill_at: None,
            exit: None,
            timed_out: false,
            abandoned: false,
            frames: FrameBudget::new(now),
            unread: None,
            unread_frames: 0,
            channel_reset: false,
            lost_frame_at: None,
        });
        let s = &mut self.slots[slot];
        if s.last_exit.is_some() || s.restarts > 0 {
            s.restarts += 1;
        }
        s.respawn_at = None;
        self.counts.spawned += 1;
        info!("worker {slot} started (pid {pid})");
        Ok(key)
    }

    /// Replaces worker `i` by a fresh one; the old one keeps serving until the new one
    /// is ready, then drains.
    pub(super) fn recycle(&mut self, i: usize, cfg: &Config, reg: &Registry) {
        let (slot, pid, n) = (self.list[i].slot, self.list[i].pid, self.list[i].dispatched);
        info!("worker {slot} (pid {pid}) took {n} connections: recycling it");
        self.counts.recycled += 1;
        let _ = self.recycle_quiet(i, cfg, reg);
    }

    /// Starts a successor for worker `i`'s slot; `i` drains once it is ready. An
    /// error: no successor could be started, and `i` keeps running.
    pub(super) fn recycle_quiet(&mut self, i: usize, cfg: &Config, reg: &Registry) -> Result<(), String> {
        let slot = self.list[i].slot;
        self.list[i].state = State::Retiring;
        if let Err(e) = self.spawn(slot, cfg, reg) {
            error!("{e}; worker {slot} keeps running");
            self.list[i].state = State::Running;
            self.list[i].max_requests = None;
            return Err(e.to_string());
        }
        Ok(())
    }

    /// Grows or shrinks the table to `n` slots: new slots get a worker at the next
    /// tick, the workers of removed slots drain.
    pub(super) fn resize(&mut self, n: usize, now: Instant) {
        while self.slots.len() < n {
            self.slots.push(Slot::default());
            let slot = self.slots.len() - 1;
            self.slots[slot].respawn_at = Some(Instant::now());
        }
        while self.slots.len() > n {
            let slot = self.slots.len() - 1;
            self.slots.pop();
            for i in 0..self.list.len() {
                if self.list[i].slot == slot {
                    self.drain(i, now);
                }
            }
        }
    }

    pub(super) fn drain(&mut self, i: usize, now: Instant) {
        let w = &mut self.list[i];
        if matches!(w.state, State::Draining | State::Killing | State::Lost) {
            return;
        }
        w.state = State::Draining;
        w.drain_pending = true;
        debug!("worker {} (pid {}) draining", w.slot, w.pid);
        self.send_drain(i, now);
    }

    /// Tells every worker to drain.
    pub(super) fn drain_all(&mut self, now: Instant) {
        for i in 0..self.list.len() {
            self.drain(i, now);
        }
    }

    // ---- exits ----

    /// Worker `pid` exited: hand on what it had not taken, and decide whether and
    /// when its slot gets a new worker. `running`: the master is not stopping (then
    /// exits are expected and slots are not refilled). An error: the slot keeps
    /// failing at start-up and the master must give up.
    pub(super) fn exited(
        &mut self,
        pid: u32,
        exit: Exit,
        running: bool,
        cfg: &Config,
        reg: &Registry,
        wake: &mut Instant,
    ) -> Result<(), MasterError> {
        let Some(i) = self.list.iter().position(|w| w.pid == pid) else {
            debug!("reaped unknown child {pid}: {exit}");
            return Ok(());
        };
        end_group(self.list[i].slot, pid);
        if self.list[i].chan.is_some() {
            self.channel_closed(i, cfg, reg);
        }
        let mut w = self.list.remove(i);
        if let Some(fd) = w.stderr.take() {
            let mut gone = Slot::default();
            let slot = self.slots.get_mut(w.slot).unwrap_or(&mut gone);
            spawn::drain_stderr(&fd, slot, &mut self.forward, &mut w.lines);
            let _ = reg.deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        let now = Instant::now();
        let lived = now.duration_since(w.started);
        let proven = w.proven(now);
        let expected = matches!(w.state, State::Draining) || !running || w.abandoned;
        if expected {
            info!("worker {} (pid {pid}) exited: {exit}", w.slot);
        } else {
            warn!("worker {} (pid {pid}) exited unexpectedly after {:.1}s: {exit}", w.slot, lived.as_secs_f64());
        }
        if !running || w.slot >= self.slots.len() {
            return Ok(());
        }
        let slot = &mut self.slots[w.slot];
        slot.last_exit = Some(exit);
        if lived >= HEALTHY_AFTER {
            self.ever_healthy = true;
        }
        if w.timed_out {
            // Counted when it was killed.
        } else if lived >= HEALTHY_AFTER && proven {
            slot.failed_starts = 0;
            slot.last_failure = None;
        } else if !expected {
            // Died before it could serve: a deploy that fails after its imports (one,
            // five seconds in) fails its start as surely as one that cannot exec.
            slot.failed_starts += 1;
            self.counts.failed_starts += 1;
            let before = if proven { "" } else { ", before it was ready" };
            slot.last_failure = Some(format!("{exit} after {:.1}s{before}", lived.as_secs_f64()));
        }
        // Replace it unless it was being replaced anyway.
        let replaced = self.list.iter().any(|o| o.slot == w.slot && o.state == State::Running);
        if replaced {
            return Ok(());
        }
        if !self.ever_healthy && slot.failed_starts >= CRASH_LOOP_STARTS {
            let tail = if slot.stderr_tail.is_empty() {
                " It wrote nothing to stderr.".to_string()
            } else {
                format!(
                    " Its last stderr lines:\n{}",
                    slot.stderr_tail.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
                )
            };
            return Err(MasterError::CrashLoop {
                slot: w.slot,
                exit,
                starts: slot.failed_starts,
                healthy: HEALTHY_AFTER,
                tail,
            });
        }
        let delay = slot.backoff();
        if delay > Duration::ZERO {
            info!(
                "restarting worker {} in {:.1}s ({} failed starts in a row)",
                w.slot,
                delay.as_secs_f64(),
                slot.failed_starts
            );
        }
        slot.respawn_at = Some(now + delay);
        *wake = (*wake).min(now + delay);
        Ok(())
    }

    /// Kills every worker and reaps them (the master is leaving at once).
    pub(super) fn kill_all_now(&mut self) {
        for w in &self.list {
            let _ = sysproc::signal(w.pid, rustix::process::Signal::KILL);
        }
        // Reap them so that none is left behind as a zombie or an orphan.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.list.is_empty() && Instant::now() < deadline {
            match sysproc::reap_any() {
                Ok(Some((pid, exit))) => {
                    if let Some(i) = self.list.iter().position(|w| w.pid == pid) {
                        let w = self.list.remove(i);
                        end_group(w.slot, pid);
                        info!("worker {} (pid {pid}) exited: {exit}", w.slot);
                    }
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    // ---- timers ----

    /// Escalates kills, kills hung workers, and drains retiring workers whose
    /// successor has proven itself. `running`: a hung worker's slot gets a new worker
    /// at once.
    pub(super) fn tick(&mut self, now: Instant, cfg: &Config, running: bool) {
        for i in 0..self.list.len() {
            let w = &mut self.list[i];
            if !self.ever_healthy && now.duration_since(w.started) >= HEALTHY_AFTER {
                self.ever_healthy = true;
            }
            if let Some(at) = w.kill_at {
                if now >= at {
                    warn!("worker {} (pid {}) did not exit: SIGKILL", w.slot, w.pid);
                    let _ = sysproc::signal(w.pid, rustix::process::Signal::KILL);
                    w.kill_at = None;
                }
                continue;
            }
            if !matches!(w.state, State::Running | State::Retiring | State::Draining) || w.chan.is_none() {
                continue;
            }
            if w.state == State::Running && !w.proven(now) && now.duration_since(w.started) >= cfg.ready_timeout {
                let why = format!("not ready after {:?}", cfg.ready_timeout);
                error!("worker {} (pid {}) {why} (--ready-timeout): killing it, a failed start", w.slot, w.pid);
                self.counts.ready_timeouts += 1;
                self.counts.failed_starts += 1;
                let _ = sysproc::signal(w.pid, rustix::process::Signal::TERM);
                w.state = State::Killing;
                w.kill_at = Some(now + KILL_GRACE);
                w.timed_out = true;
                // Started again once it has exited, after the slot's backoff.
                if let Some(s) = self.slots.get_mut(w.slot) {
                    s.failed_starts += 1;
                    s.last_failure = Some(why);
                    s.timed_out = true;
                }
                continue;
            }
            let timeout = cfg.worker_timeout;
            let silent =
                w.caps & cap::HEARTBEAT != 0 && !w.inflight.is_empty() && now.duration_since(w.last_heard) > timeout;
            let stuck = w.blocked_since.is_some_and(|b| now.duration_since(b) > timeout);
            // A worker that announced ACK but does not ACK would make the master hold a
            // descriptor for every connection it is sent: bounded by the timeout.
            let unacking = w.oldest_unacked().is_some_and(|t| now.duration_since(t) > timeout);
            // One that does not ACK (a minimal worker) shows only whether it reads:
            // connections left unread in its channel would hang for good.
            let unread = w.caps & cap::ACK == 0 && w.unread_for(now) > timeout;
            if silent || stuck || unacking || unread {
                let why = if silent {
                    format!("sent nothing for {timeout:?} while holding connections")
                } else if stuck {
                    format!("has not read its channel for {timeout:?}")
                } else if unread {
                    format!("has left connections unread in its channel for {timeout:?} (they are closed with it)")
                } else {
                    format!("has not acknowledged a connection for {timeout:?}")
                };
                error!("worker {} (pid {}) {why}: killing it", w.slot, w.pid);
                self.counts.hung_kills += 1;
                let _ = sysproc::signal(w.pid, rustix::process::Signal::TERM);
                w.state = State::Killing;
                w.kill_at = Some(now + KILL_GRACE);
                // Its slot needs a new worker now, not after it dies.
                let slot = w.slot;
                if running && slot < self.slots.len() {
                    self.slots[slot].respawn_at = Some(now);
                }
            }
        }
        for i in 0..self.list.len() {
            self.sample_unread(i);
        }
        // Retiring workers whose successor has proven itself are drained.
        for i in 0..self.list.len() {
            if self.list[i].state == State::Retiring {
                let slot = self.list[i].slot;
                if self.slot_worker(slot).is_some_and(|s| s.proven(now)) {
                    self.drain(i, now);
                }
            }
        }
    }

    // ---- reloads ----

    /// Forgets every slot's failed starts: a reload starts its workers afresh (no
    /// backoff carried over from other settings), and its verdict counts its own.
    pub(super) fn reset_failures(&mut self) {
        for s in &mut self.slots {
            s.failed_starts = 0;
            s.last_failure = None;
            s.timed_out = false;
        }
    }

    /// Why the workers started since the failures were last reset will not serve, if
    /// a slot says so: [`RELOAD_FAILED_STARTS`] failed starts in a row, or one worker
    /// not proven within `--ready-timeout` (waiting that long again would only
    /// repeat it).
    pub(super) fn reload_verdict(&self) -> Option<String> {
        self.slots.iter().enumerate().find_map(|(i, s)| {
            let last = s.last_failure.as_deref().unwrap_or("unknown");
            if s.timed_out {
                Some(format!("worker {i} was {last}"))
            } else if s.failed_starts >= RELOAD_FAILED_STARTS {
                Some(format!("worker {i} failed to start {} times in a row (last: {last})", s.failed_starts))
            } else {
                None
            }
        })
    }

    /// Slots whose running worker started at or after `since` and has proven itself.
    pub(super) fn proven_since(&self, since: Instant, now: Instant) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&s| self.slot_worker(s).is_some_and(|w| w.started >= since && w.proven(now)))
            .collect()
    }

    /// Stops the workers started at or after `since` that have not proven themselves
    /// (a failed reload's), and gives back their slots to the workers they were
    /// replacing: those keep serving as if nothing had happened. Returns how many were
    /// stopped.
    pub(super) fn abandon_since(&mut self, since: Instant, now: Instant) -> usize {
        let mut stopped = 0;
        for w in &mut self.list {
            let new = w.started >= since && matches!(w.state, State::Running | State::Retiring);
            if new && !w.proven(now) {
                info!("worker {} (pid {}) stopped: its reload failed", w.slot, w.pid);
                let _ = sysproc::signal(w.pid, rustix::process::Signal::TERM);
                w.state = State::Killing;
                w.kill_at = Some(now + KILL_GRACE);
                w.abandoned = true;
                stopped += 1;
            }
        }
        for i in 0..self.list.len() {
            let slot = self.list[i].slot;
            if self.list[i].state == State::Retiring && self.slot_worker(slot).is_none() {
                self.list[i].state = State::Running;
                if let Some(s) = self.slots.get_mut(slot) {
                    s.respawn_at = None;
                }
            }
        }
        stopped
    }

    /// Starts the workers whose respawn is due (only while the master runs).
    pub(super) fn respawn_due(&mut self, now: Instant, cfg: &Config, reg: &Registry) {
        for slot in 0..self.slots.len() {
            let due = self.slots[slot].respawn_at.is_some_and(|t| now >= t);
            if due && self.slot_worker(slot).is_none() {
                if let Err(e) = self.spawn(slot, cfg, reg) {
                    error!("{e}; retrying");
                    self.slots[slot].failed_starts += 1;
                    self.slots[slot].respawn_at = Some(now + self.slots[slot].backoff().max(TICK));
                }
            } else if due {
                self.slots[slot].respawn_at = None;
            }
        }
    }
}

/// Worker `pid` of `slot` was just reaped: SIGKILLs what it left running in its process
/// group (its own children, which would otherwise outlive it and the master). The worker
/// had its time to stop them (DRAIN, then `--shutdown-timeout`, or the SIGTERM grace);
/// a child that left the group (`setsid`, a daemon) is beyond reach.
fn end_group(slot: usize, pid: u32) {
    match sysproc::signal_group(pid, rustix::process::Signal::KILL) {
        Ok(true) => warn!("worker {slot} (pid {pid}) left processes running in its process group: killed them"),
        Ok(false) => {}
        Err(e) => debug!("worker {slot} (pid {pid}): cannot signal its process group: {e}"),
    }
}

/// What the kernel charges one single-connection CONN frame (the only kind a minimal
/// worker gets), measured once.
fn conn_frame_charge() -> Option<usize> {
    let mut frame = Vec::new();
    let item = wire::ConnItem { id: 0, listener: 0, sock: 0, flags: 0, addrs: None };
    wire::encode_conn(&mut frame, &[item]);
    match fdpass::charge_of(frame.len()) {
        Ok(n) if n > 0 => Some(n),
        Ok(_) => None,
        Err(e) => {
            warn!("cannot measure a channel's queue ({e}): a minimal worker's unread connections count 1 when it dies");
            None
        }
    }
}
