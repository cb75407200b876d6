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

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
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
#[path = "records.rs"]
mod records;
pub use records::{IdHasher, Inflight, Slot, State, Worker};
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
    /// Reused buffer for the items of a CONN frame.
    items: Vec<wire::ConnItem>,
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
            items: Vec::new(),
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

    /// Moves the connections given up since the last call (see [`Handed`]), in order,
    /// to the end of `into` (a buffer the caller reuses, as this table reuses its own).
    pub(super) fn take_handed(&mut self, into: &mut Vec<Handed>) {
        into.append(&mut self.handed);
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

    /// Some running worker is proven (the health endpoint's "ok"): it sent READY, or,
    /// a minimal worker that never does, it has lived long enough to count as serving
    /// ([`Worker::proven`]). READY alone would keep health at 503 for ever for minimal
    /// workers that serve fine.
    pub(super) fn any_ready(&self, now: Instant) -> bool {
        self.list.iter().any(|w| w.state == State::Running && w.proven(now))
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
        // Readable only: room is watched for while a send waits for it (see
        // `Workers::watch_for_room`).
        reg.register(&mut SourceFd(&mine.as_raw_fd()), Source::Channel(key).token(), Interest::READABLE)?;
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
            watching_room: false,
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
            busy: false,
            stalls: 0,
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
