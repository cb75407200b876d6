//! Accepting and dispatching: the [`Dispatcher`] owns the listeners, the connections
//! waiting for their PROXY header (`proxied`), the connections the master holds (taken
//! back from dead workers, idle ones handed back by workers in `idle`, and the next
//! requests of those), and the balancer with its capacity rule and accept pause.
//!
//! It owns no worker: each method that places connections is given the worker table
//! ([`Workers`]), asks it which workers may take one, and hands it what to send.
//!
//! - **The master holds no unbounded queue.** It accepts only while some worker can
//!   take a connection (eligible, below `--max-conns-per-worker`, channel not full);
//!   otherwise clients wait in the kernel's backlog. It holds connections it took back
//!   from dead workers (bounded by what was in flight), idle keep-alive connections
//!   workers handed back (`idle`, bounded by `--max-idle`), and the next requests of
//!   those while every worker that hands back is busy with two (bounded by the idle
//!   ones): one queue in front of all the workers, which is what keeps the tail short.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::{Registry, Token};
use tracing::{debug, warn};

use super::idle::{self, IdleTable};
use super::supervisor::{Handed, Workers, RETRY_ELSEWHERE};
use super::{Held, Stage, Totals, ACCEPT_BATCH, ACCEPT_PAUSE, MAX_PENDING_PROXY};
use crate::config::Config;
use crate::listener::{self, ListenAddr, ListenSpec, Listener};
use crate::policy::{Balancer, Candidate};
use crate::wire::{self, ConnItem};
use listeners::Listeners;
use proxied::PendingProxy;

// Children of this part, in files of their own beside it: they share its state.
#[path = "listeners.rs"]
mod listeners;
#[path = "proxied.rs"]
mod proxied;

/// Requests of handed-back connections a worker that hands back may be working on at
/// once; more wait in the master (see `Dispatcher::dispatch_batch`).
const QUEUE_DEPTH: u32 = 2;
/// A continued connection in a worker longer than this no longer counts toward its
/// QUEUE_DEPTH (see `Worker::requests_in`).
const REQUEST_AGE: Duration = Duration::from_secs(1);
/// A worker that handed a connection back this recently counts as handing back.
const RETURNING: Duration = Duration::from_millis(100);
/// How long after the last request of a handed-back connection the master still runs as
/// `SCHED_OTHER` (see `Dispatcher::apply_sched`).
const REQUESTS_HOLD: Duration = Duration::from_secs(1);

/// Accepting, holding and placing connections.
#[derive(Debug)]
pub(super) struct Dispatcher {
    listeners: Listeners,
    /// Connections waiting for their PROXY header, by token offset.
    pending_proxy: Vec<Option<PendingProxy>>,
    /// Idle keep-alive connections handed back by workers.
    idle: IdleTable,
    /// Connections to place as soon as a worker can take them, in order.
    held: VecDeque<Held>,
    /// Next requests of handed-back connections (CONTINUED), in arrival order, waiting
    /// for a worker with room (QUEUE_DEPTH). Apart from `held` so that a pass that
    /// finds no room leaves them where they are: under hand-back most of them wait in
    /// most loop turns, and a pass costs what it places, not what waits.
    requests: VecDeque<Held>,
    /// Continued connections wait in `requests` (or `held`) for a worker with room:
    /// retried on the next worker frame or tick, not in a busy loop.
    held_blocked: bool,
    /// Reused buffer of the connections accepted in one pass.
    batch: Vec<Held>,
    /// Reused buffer of the held connections one pass places.
    placing: VecDeque<Held>,
    /// Reused buffer of what the worker table gave up (see `collect`).
    handed: Vec<Handed>,
    /// Reused per-worker buffers of the connections one pass sends (see
    /// `dispatch_batch`): no allocation per request on the dispatch path.
    plan: Vec<Vec<(ConnItem, OwnedFd)>>,
    balancer: Balancer,
    cand: Vec<Candidate>,
    /// Candidates for a continued connection (a reused buffer).
    cont_cand: Vec<Candidate>,
    /// Each worker's continued requests in progress, read by a pass that places one
    /// (a reused buffer; see `dispatch_batch`).
    requests_in: Vec<u32>,
    next_conn_id: u64,
    paused_until: Option<Instant>,
    pause_started: Option<Instant>,
    last_accept_log: Option<Instant>,
    last_proxy_log: Option<Instant>,
    /// When a handed-back connection was last dispatched again.
    last_continued: Option<Instant>,
    /// The master runs as `SCHED_BATCH` by its own doing.
    sched_batch: bool,
    /// This part's counters (accepts, PROXY errors, idle connections).
    counts: Totals,
}

impl Dispatcher {
    /// Registers `listeners` (each with the `--listen` entry it came from, if any).
    pub(super) fn new(
        listeners: Vec<(Listener, Option<ListenSpec>)>,
        cfg: &Config,
        idle_base: usize,
        idle_max: usize,
        reg: &Registry,
    ) -> io::Result<Dispatcher> {
        Ok(Dispatcher {
            listeners: Listeners::open(listeners, reg)?,
            pending_proxy: Vec::new(),
            idle: IdleTable::new(idle_base, idle_max, cfg.keepalive_timeout),
            held: VecDeque::new(),
            requests: VecDeque::new(),
            held_blocked: false,
            batch: Vec::with_capacity(ACCEPT_BATCH),
            placing: VecDeque::new(),
            handed: Vec::new(),
            plan: Vec::new(),
            balancer: Balancer::new(cfg.policy),
            cand: Vec::new(),
            cont_cand: Vec::new(),
            requests_in: Vec::new(),
            next_conn_id: 1,
            paused_until: None,
            pause_started: None,
            last_accept_log: None,
            last_proxy_log: None,
            last_continued: None,
            sched_batch: false,
            counts: Totals::default(),
        })
    }

    /// The addresses actually bound (with real ports when port 0 was asked for).
    pub(super) fn local_addrs(&self) -> Vec<ListenAddr> {
        self.listeners.local_addrs()
    }

    /// The listening sockets, to hand to a new master.
    pub(super) fn listener_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.listeners.fds()
    }

    /// An edge on listener `i`: connections are waiting.
    pub(super) fn listener_readable(&mut self, i: usize) {
        self.listeners.set_readable(i);
    }

    /// A reload: opens the listeners `want` adds, closes those it drops.
    pub(super) fn reconcile_listeners(&mut self, want: &[ListenSpec], reg: &Registry) -> Result<(), String> {
        self.listeners.reconcile(want, reg)
    }

    /// A stop: closes every listener. `unlink`: remove Unix socket files (not when a
    /// new master goes on using them).
    pub(super) fn close_listeners(&mut self, reg: &Registry, unlink: bool) {
        self.listeners.close_all(reg, unlink);
    }

    /// A stop, before the listeners close: accepts what the kernel's backlog holds and
    /// the workers can take, as if every listener had signalled.
    pub(super) fn accept_backlog(
        &mut self,
        workers: &mut Workers,
        now: Instant,
        cfg: &Config,
        reg: &Registry,
        wake: &mut Instant,
    ) {
        self.listeners.set_all_readable();
        self.accept_pass(workers, now, cfg, reg, wake);
    }

    /// The id the next connection handed out will get.
    pub(super) fn next_conn_id(&self) -> u64 {
        self.next_conn_id
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        id
    }

    /// Copies this part's counters into `t`.
    pub(super) fn count_into(&self, t: &mut Totals) {
        let c = &self.counts;
        t.accepted = c.accepted;
        t.accept_exhausted = c.accept_exhausted;
        t.accept_transient = c.accept_transient;
        t.paused = c.paused;
        t.proxy_errors = c.proxy_errors;
        t.proxy_refused = c.proxy_refused;
        t.continued = c.continued;
        t.continued_at_return = c.continued_at_return;
        t.idle_hangups = c.idle_hangups;
        t.idle_closed_at_stop = c.idle_closed_at_stop;
        t.idle_not_held = c.idle_not_held;
        t.proxy_header_timeouts = c.proxy_header_timeouts;
        t.proxy_header_bad = c.proxy_header_bad;
        t.lost_at_stop = c.lost_at_stop;
        t.idle_timeouts = self.idle.closed.timeouts;
        t.idle_evicted = self.idle.closed.evicted;
    }

    /// Idle connections held now.
    pub(super) fn idle_len(&self) -> usize {
        self.idle.len()
    }

    /// The balancing policy's name.
    pub(super) fn policy(&self) -> String {
        self.balancer.policy().to_string()
    }

    /// A reload's new settings for balancing and idle connections.
    pub(super) fn reconfigure(&mut self, cfg: &Config, idle_max: usize, reg: &Registry) {
        self.balancer.set_policy(cfg.policy);
        self.idle.set_limits(reg, idle_max, cfg.keepalive_timeout);
    }

    /// A worker sent a frame: it may have room for a held connection again.
    pub(super) fn unblock(&mut self) {
        self.held_blocked = false;
    }

    /// Whether an accept pass would do something now (the loop then polls without
    /// waiting). The caller checks that the master runs.
    pub(super) fn can_accept(&self, workers: &Workers, now: Instant, cfg: &Config) -> bool {
        self.paused_until.is_none()
            && ((self.held.len() + self.requests.len() > 0 && !self.held_blocked) || self.listeners.any_readable())
            && workers.any_could_take(now, cfg)
    }

    /// Takes what the worker table gave up: connections to hand on are held; idle ones
    /// handed back wait in the idle table (or, stopping, are held or closed).
    pub(super) fn collect(&mut self, workers: &mut Workers, reg: &Registry, now: Instant, stage: Stage, cfg: &Config) {
        let mut handed = std::mem::take(&mut self.handed);
        workers.take_handed(&mut handed);
        for h in handed.drain(..) {
            match h {
                Handed::TakenBack(h) => self.held.push_back(h),
                Handed::Returned(h) if stage == Stage::Running => self.returned(h, reg, now, cfg),
                Handed::Returned(h) => self.hold_or_close_at_stop(h.fd, h.listener, h.addrs, stage),
            }
        }
        self.handed = handed;
    }

    /// A connection handed back while running. Under load its client has often sent
    /// its next request before the master reads the RETURN: that request is placed at
    /// once (in this loop turn), saving the idle table an epoll registration that the
    /// next turn would report readable and remove again. A client that has gone is
    /// closed as a hang-up; any other waits in the idle table.
    fn returned(&mut self, h: Held, reg: &Registry, now: Instant, cfg: &Config) {
        match idle::peek(&h.fd) {
            idle::Peek::Request => {
                self.counts.continued_at_return += 1;
                self.continue_request(h.fd, h.listener, h.addrs, now, cfg);
            }
            idle::Peek::Gone => self.counts.idle_hangups += 1,
            idle::Peek::Quiet => {
                if let Err(err) = self.idle.insert(reg, now, h.fd, h.listener, h.addrs) {
                    self.counts.idle_not_held += 1;
                    warn!("cannot hold an idle connection ({err}): closing it");
                }
            }
        }
    }

    /// While stopping: an idle connection whose client has started its next request is
    /// handed out before the workers drain (if they have not yet); any other is closed.
    fn hold_or_close_at_stop(
        &mut self,
        fd: OwnedFd,
        listener: u16,
        addrs: Option<crate::proxy::ProxyHeader>,
        stage: Stage,
    ) {
        if stage != Stage::Draining && idle::peek(&fd) == idle::Peek::Request {
            self.held.push_back(Held { fd, listener, addrs, flags: wire::flags::CONTINUED });
        } else {
            self.counts.idle_closed_at_stop += 1;
        }
    }

    /// A stop: idle connections whose next request has started to arrive are held to
    /// be handed out; the others are closed, as every server closes its idle
    /// keep-alive connections when it stops.
    pub(super) fn release_idle(&mut self, reg: &Registry, stage: Stage) {
        for c in self.idle.take_all(reg) {
            self.hold_or_close_at_stop(c.fd, c.listener, c.addrs, stage);
        }
    }

    /// An idle connection reported readable: its client sent its next request (it is
    /// placed like a new connection) or hung up (it is closed).
    pub(super) fn idle_event(&mut self, token: Token, hung_up: bool, reg: &Registry, now: Instant, cfg: &Config) {
        let Some(c) = self.idle.take_token(reg, token) else { return };
        // A hang-up report with nothing to read is taken at its word.
        if hung_up && idle::peek(&c.fd) != idle::Peek::Request {
            self.counts.idle_hangups += 1;
            return;
        }
        self.continue_request(c.fd, c.listener, c.addrs, now, cfg);
    }

    /// The next request of a handed-back connection has arrived: it is held to be
    /// placed by policy, flagged CONTINUED.
    fn continue_request(
        &mut self,
        fd: OwnedFd,
        listener: u16,
        addrs: Option<crate::proxy::ProxyHeader>,
        now: Instant,
        cfg: &Config,
    ) {
        self.counts.continued += 1;
        // The first after a quiet spell leaves SCHED_BATCH (tried once per spell).
        let first = self.last_continued.is_none_or(|t| now.duration_since(t) >= REQUESTS_HOLD);
        self.last_continued = Some(now);
        if first && self.sched_batch {
            self.apply_sched(cfg, now);
        }
        self.requests.push_back(Held { fd, listener, addrs, flags: wire::flags::CONTINUED });
    }

    /// The master's own CPU scheduling, as `--master-sched` asks (see
    /// `sys::process::set_master_batch`): at start, at each reload, and when handed-back
    /// connections start or stop flowing. `SCHED_BATCH` suits handing out new
    /// connections (the master waits for the CPU and hands on in larger batches); but
    /// while it places requests of kept-alive connections, every request waits for the
    /// master, which then runs as `SCHED_OTHER` (woken, it gets the CPU at once) until a
    /// second after the last one.
    pub(super) fn apply_sched(&mut self, cfg: &Config, now: Instant) {
        let placing_requests = self.last_continued.is_some_and(|t| now.duration_since(t) < REQUESTS_HOLD);
        let batch = cfg.master_sched == crate::config::MasterSched::Batch && !placing_requests;
        match crate::sys::process::set_master_batch(batch) {
            Ok(now) => {
                self.sched_batch = now;
                debug!("master scheduling: {}", if now { "SCHED_BATCH" } else { "as started" })
            }
            Err(e) => warn!("master scheduling: cannot change it ({e}); running as it was"),
        }
    }

    /// Ends an accept pause that is over (first thing in a tick: a stop that follows
    /// in the same tick accepts its backlog).
    pub(super) fn resume_accepting(&mut self, now: Instant) {
        if let Some(until) = self.paused_until {
            if now >= until {
                self.paused_until = None;
                if let Some(s) = self.pause_started.take() {
                    self.counts.paused += now.duration_since(s);
                }
            }
        }
    }

    /// The dispatcher's timers: idle connections past `--keepalive-timeout`, held
    /// connections retried, the scheduling class, late PROXY headers.
    pub(super) fn tick(&mut self, now: Instant, cfg: &Config, reg: &Registry) {
        self.idle.expire(reg, now);
        self.held_blocked = false;
        if !self.sched_batch && self.last_continued.is_some_and(|t| now.duration_since(t) >= REQUESTS_HOLD) {
            self.last_continued = None;
            self.apply_sched(cfg, now);
        }
        self.proxy_timeouts(now, reg);
    }

    /// Places held connections, then accepts what the workers can take (only while
    /// the master runs: the caller checks).
    pub(super) fn accept_pass(
        &mut self,
        workers: &mut Workers,
        now: Instant,
        cfg: &Config,
        reg: &Registry,
        wake: &mut Instant,
    ) {
        if self.paused_until.is_some() {
            return;
        }
        // Connections taken back from dead workers go first. Next requests of
        // handed-back connections waiting for a worker with room (QUEUE_DEPTH) do not
        // hold up new connections, which do not wait for that room.
        self.place_held(workers, now, Stage::Running, cfg, reg);
        if !self.held.is_empty() && !self.held_blocked {
            return;
        }
        if !self.listeners.any_readable() {
            // Most loop turns (worker frames, timers) have nothing to accept: skip the
            // capacity scan over every worker.
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        let enough = ACCEPT_BATCH * self.listeners.list.len().max(1);
        let mut room = workers.capacity(now, cfg, ACCEPT_BATCH, enough);
        for li in 0..self.listeners.list.len() {
            let mut n = 0;
            if self.listeners.list[li].proxy && self.pending_proxy.iter().flatten().count() >= MAX_PENDING_PROXY {
                continue;
            }
            while self.listeners.list[li].readable && n < ACCEPT_BATCH && room > 0 {
                match self.listeners.list[li].listener.accept() {
                    Ok(fd) => {
                        n += 1;
                        room -= 1;
                        self.counts.accepted += 1;
                        if self.listeners.list[li].proxy {
                            if !self.proxy_source_allowed(&fd, li, now) {
                                continue;
                            }
                            self.proxy_accepted(fd, li as u16, now, &mut batch, reg);
                        } else {
                            batch.push(Held { fd, listener: li as u16, addrs: None, flags: 0 });
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.listeners.list[li].readable = false,
                    Err(e) if listener::accept_error_is_transient(&e) => {
                        self.counts.accept_transient += 1;
                        debug!("accept: {e} (skipped)");
                    }
                    Err(e) => {
                        if listener::accept_error_is_exhaustion(&e) {
                            self.counts.accept_exhausted += 1;
                        }
                        self.pause_accepting(now, &e, wake);
                        break;
                    }
                }
            }
        }
        if !batch.is_empty() {
            let mut placing = std::mem::take(&mut self.placing);
            placing.extend(batch.drain(..));
            self.dispatch_batch(&mut placing, false, workers, now, Stage::Running, cfg, reg);
            self.placing = placing;
        }
        self.batch = batch;
    }

    fn pause_accepting(&mut self, now: Instant, e: &io::Error, wake: &mut Instant) {
        self.paused_until = Some(now + ACCEPT_PAUSE);
        self.pause_started.get_or_insert(now);
        *wake = (*wake).min(now + ACCEPT_PAUSE);
        let quiet = self.last_accept_log.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
        if !quiet {
            self.last_accept_log = Some(now);
            warn!(
                "accept failed: {e}; pausing accepts for {ACCEPT_PAUSE:?} ({} times so far)",
                self.counts.accept_exhausted
            );
        }
    }

    /// Places what is held: first connections taken back or not yet placed, then the
    /// waiting next requests of handed-back connections, as far as workers have room.
    fn place_held(&mut self, workers: &mut Workers, now: Instant, stage: Stage, cfg: &Config, reg: &Registry) {
        if !self.held.is_empty() {
            // What cannot be placed goes back to `held` (emptied here), in order.
            let mut held = std::mem::take(&mut self.placing);
            std::mem::swap(&mut held, &mut self.held);
            self.dispatch_batch(&mut held, false, workers, now, stage, cfg, reg);
            self.placing = held;
        }
        if !self.requests.is_empty() {
            // What cannot be placed stays at the front; what arrives meanwhile (a
            // worker found gone hands back) goes behind it.
            let mut requests = std::mem::take(&mut self.requests);
            self.dispatch_batch(&mut requests, true, workers, now, stage, cfg, reg);
            requests.append(&mut self.requests);
            self.requests = requests;
        }
    }

    /// Hands each connection to a worker chosen by policy, one CONN frame per worker
    /// (several connections per frame for workers that announced BATCH), taking them
    /// from the front of `conns`. What cannot be placed now is held and placed in a
    /// later turn. `waiting`: `conns` are the waiting next requests of handed-back
    /// connections (`requests`); the first that finds no worker with room stops the
    /// pass, and it and those behind it stay in `conns`, in order.
    #[allow(
        clippy::too_many_arguments,
        reason = "the loop turn's context, as every placing method takes it, and the pass's own two"
    )]
    fn dispatch_batch(
        &mut self,
        conns: &mut VecDeque<Held>,
        waiting: bool,
        workers: &mut Workers,
        now: Instant,
        stage: Stage,
        cfg: &Config,
        reg: &Registry,
    ) {
        workers.fill_candidates(&mut self.cand, now, cfg);
        let mut plan = std::mem::take(&mut self.plan);
        plan.resize_with(self.cand.len(), Vec::new);
        // Read at the first continued connection of the pass (most passes place new
        // connections only, and need none of it).
        let mut requests_in = std::mem::take(&mut self.requests_in);
        let mut requests_read = false;
        // While stopping, what is held goes out as fast as the workers take it.
        let queueing = stage == Stage::Running;
        while let Some(h) = conns.pop_front() {
            let continued = h.flags & wire::flags::CONTINUED != 0;
            if continued && !requests_read {
                workers.requests_in(now, REQUEST_AGE, &mut requests_in);
                requests_read = true;
            }
            // A connection a worker did not receive goes to none that lost one lately.
            let retry = h.flags & RETRY_ELSEWHERE != 0;
            let pick = if retry {
                self.cont_cand.clear();
                for (k, c) in self.cand.iter().enumerate() {
                    let avoid = workers.lost_frame_recently(k, now);
                    self.cont_cand.push(Candidate { eligible: c.eligible && !avoid, ..*c });
                }
                self.balancer.pick(&self.cont_cand)
            } else if continued && queueing {
                // The next request of a kept-alive client waits here, where every
                // worker can take it, rather than in the queue of a worker that is
                // already working on QUEUE_DEPTH of them (one of which may be long):
                // one queue in front of all the workers is what keeps the tail short.
                // A worker that keeps its connections (not handing back) is not
                // counted: its requests in progress are not known.
                self.cont_cand.clear();
                for (k, c) in self.cand.iter().enumerate() {
                    let full = workers.load_view(k, now, RETURNING).0
                        && requests_read
                        && requests_in.get(k).is_some_and(|&r| r >= QUEUE_DEPTH);
                    self.cont_cand.push(Candidate { eligible: c.eligible && !full, ..*c });
                }
                let pick = self.balancer.pick(&self.cont_cand);
                if pick.is_none() && waiting {
                    // No worker has room for one: none gets room later in this pass
                    // (each pick only adds load), so the rest wait without a look.
                    self.held_blocked = true;
                    conns.push_front(h);
                    break;
                }
                pick
            } else {
                self.balancer.pick(&self.cand)
            };
            let Some(i) = pick else {
                // Retried when a worker frame or the tick may have changed the answer,
                // not in a busy loop.
                self.held_blocked |= continued || retry;
                self.held.push_back(h);
                continue;
            };
            if let Some(r) = requests_in.get_mut(i).filter(|_| continued && requests_read) {
                *r += 1;
            }
            // Later picks in this batch see the load this one adds.
            let (_, reports_load, acks) = workers.load_view(i, now, RETURNING);
            if reports_load {
                let c = &mut self.cand[i];
                c.active += 1;
                c.behind |= acks;
                if cfg.max_conns_per_worker.is_some_and(|k| c.active >= k) {
                    c.eligible = false;
                }
            }
            let id = self.next_id();
            let sock = self.listeners.sock(h.listener);
            plan[i].push((ConnItem { id, listener: h.listener, sock, flags: h.flags, addrs: h.addrs }, h.fd));
        }
        self.requests_in = requests_in;
        for (i, conns) in plan.iter_mut().enumerate() {
            if !conns.is_empty() {
                let back = workers.send_conns(i, conns, now, stage == Stage::Running, cfg, reg);
                // A worker found gone gave back what it had not ACKed: those first.
                self.collect(workers, reg, now, stage, cfg);
                self.held.extend(back);
            }
        }
        self.plan = plan;
    }

    /// Connections still to hand out at a stop: waiting for their PROXY header, and
    /// held.
    pub(super) fn undelivered(&self) -> (usize, usize) {
        (self.pending_proxy.iter().flatten().count(), self.held.len() + self.requests.len())
    }

    /// While stopping: hands out what is held, as fast as the workers take it.
    pub(super) fn hand_out(&mut self, workers: &mut Workers, now: Instant, stage: Stage, cfg: &Config, reg: &Registry) {
        self.place_held(workers, now, stage, cfg, reg);
    }

    /// The workers drain: what is still not handed out is closed, which tells its
    /// client.
    pub(super) fn close_undelivered(&mut self, reg: &Registry) {
        let (proxy, held) = self.undelivered();
        self.counts.lost_at_stop += (proxy + held) as u64;
        self.proxy_clear(reg);
        self.held.clear();
        self.requests.clear();
    }
}
