//! The master: one thread, one event loop, every accept.
//!
//! The master binds the listeners, starts the workers, and loops on `epoll` (mio):
//! it accepts connections in bounded batches, picks a worker for each by policy, and
//! sends the descriptor over that worker's channel. It never blocks and never starts a
//! thread, so forking from it is safe.
//!
//! Invariants:
//! - **The master owns each accepted descriptor until the worker ACKs it.** If the
//!   worker dies first, the connection is handed to another worker under a new id.
//!   Workers that do not announce ACK (minimal workers) get the descriptor and the
//!   master closes its copy at once: a connection queued in such a worker's channel
//!   dies with it (counted, as far as the kernel tells: see `frames`).
//! - **Every connection lost is counted once, by cause** (`Totals`, where it happens:
//!   `frames` for workers, `dispatch` and its children for the rest).
//! - **The master holds no unbounded queue** (see `dispatch`).
//! - **Worker events are handled before accepts** in each loop turn, so a DONE that a
//!   worker sent before its client saw the connection end is counted before the
//!   client's next connection is placed: load-aware policies are exact, not lucky.
//! - Input from workers is untrusted (see `frames`): a worker that breaks the protocol
//!   is killed and replaced; the others never notice.
//!
//! The parts, each owning its state (no part reads another's fields; [`Master`] owns
//! them all, and each loop turn passes one part to another's method where needed):
//! - `dispatch` (with its children `listeners` and `proxied`, and `idle`): accepting,
//!   the held connections, the balancer;
//! - `supervisor` (with `frames`, `eligibility`, `spawn`, its children): the worker table;
//! - `admin` (with `ops`): the control socket, metrics and health;
//! - `lifecycle`: reload, scale, upgrade and the stop phases;
//! - `source`: the poll tokens. The loop below is poll, then one `match` per event
//!   on its `Source`, then each part's timers.

pub mod admin;
mod dispatch;
mod handover;
mod idle;
mod lifecycle;
mod ops;
pub mod privileges;
mod source;
pub mod supervisor;

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll};
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals;
use tracing::{info, warn};

use crate::config::{Config, ConfigSource, WorkerKind};
pub use crate::control::Totals;
use crate::listener::{ListenAddr, ListenSpec, Listener};
use crate::sys::process::{self as sysproc, Exit};
use admin::{Admin, AdminKind, Request};
use dispatch::Dispatcher;
use lifecycle::{Lifecycle, Parts, Phase};
use source::Source;
use supervisor::Workers;

/// Connections accepted from one listener before the loop looks at other events.
pub const ACCEPT_BATCH: usize = 64;
/// Pause after `accept` fails for lack of descriptors or memory.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Housekeeping period (timeouts, respawns).
const TICK: Duration = Duration::from_millis(100);
/// How long a client of a `,proxy` listener has to send its PROXY header.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections waiting for their PROXY header at once; beyond it the master stops
/// accepting on `,proxy` listeners until some complete.
pub const MAX_PENDING_PROXY: usize = 4096;

/// Why the master could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MasterError {
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The address.
        addr: ListenAddr,
        /// The kernel's answer.
        #[source]
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// A worker could not be started.
    #[error("cannot start worker {slot}: {source}")]
    Spawn {
        /// The slot.
        slot: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Every start of a worker failed within its first second.
    #[error("worker {slot} keeps dying at start-up ({exit}, {starts} starts in a row, none lived {healthy:?}); giving up.{tail}")]
    CrashLoop {
        /// The slot that gave up.
        slot: usize,
        /// Its last exit.
        exit: Exit,
        /// Failed starts in a row.
        starts: u32,
        /// How long counts as a successful start.
        healthy: Duration,
        /// The last lines of its stderr, formatted.
        tail: String,
    },
    /// The event loop failed.
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
}

fn bind_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            " (another process is listening there: stop it, or choose another address with --listen)"
        }
        io::ErrorKind::PermissionDenied => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        io::ErrorKind::AddrNotAvailable => " (that IP address is not on this machine)",
        _ => "",
    }
}

/// A connection the master holds until a worker can take it: just accepted, taken back
/// from a worker that died before ACKing it, or an idle one whose client spoke again.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) fd: OwnedFd,
    pub(super) listener: u16,
    pub(super) addrs: Option<crate::proxy::ProxyHeader>,
    /// [`crate::wire::flags`] for its CONN item.
    pub(super) flags: u8,
}

/// How far a stop has come, as the dispatcher needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Not stopping: held requests queue for a worker with room; handed-back
    /// connections are held idle.
    Running,
    /// Stopping, handing out what was accepted before the workers drain.
    HandingOut,
    /// The workers drain (or the master exits): nothing more is handed out.
    Draining,
}

/// The master process: listeners, workers, and the loop that joins them.
pub struct Master {
    cfg: Config,
    poll: Poll,
    signals: Signals,
    /// Accepting and dispatching.
    dispatch: Dispatcher,
    /// The worker table.
    workers: Workers,
    /// The control socket, metrics and health.
    admin: Admin,
    /// Reload, scale, upgrade, stop.
    life: Lifecycle,
    fatal: Option<MasterError>,
    next_tick: Instant,
    /// The time at the top of this loop turn (one clock read per turn).
    now: Instant,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master").field("pid", &std::process::id()).field("phase", &self.life.phase()).finish()
    }
}

impl Master {
    /// Binds every listener and prepares the loop; starts no worker yet.
    pub fn new(cfg: Config) -> Result<Master, MasterError> {
        let (mut pool, origin, upgrade_ready) = handover::inherited()?;
        crate::sys::cloexec_inherited_fds()?;
        let mut listeners = Vec::new();
        if origin == handover::Origin::Systemd && !cfg.listen_given {
            info!("socket activation: using the {} sockets systemd passed", pool.len());
            listeners = std::mem::take(&mut pool).into_iter().map(|l| (l, None)).collect();
        } else {
            for spec in &cfg.listen {
                let addr = &spec.addr;
                // Port 0 ("any port") matches an inherited socket on the same IP: after an
                // upgrade, the new master must keep the port the old one got.
                let matches = |l: &Listener| match (l.addr(), addr) {
                    (ListenAddr::Tcp(a), ListenAddr::Tcp(b)) if b.port() == 0 => a.ip() == b.ip(),
                    (a, b) => a == b,
                };
                if let Some(pos) = pool.iter().position(matches) {
                    listeners.push((pool.remove(pos), Some(spec.clone())));
                    continue;
                }
                let l = Listener::bind(addr).map_err(|source| MasterError::Bind {
                    addr: addr.clone(),
                    hint: bind_hint(&source),
                    source,
                })?;
                listeners.push((l, Some(spec.clone())));
            }
        }
        for l in pool {
            warn!("inherited listener {} is not in the configuration: closing it", l.local_addr());
        }
        Master::with_listeners_inner(cfg, listeners, upgrade_ready)
    }

    /// Uses listeners opened elsewhere (socket activation, upgrade, tests).
    /// Each listener takes the options (`,proxy`, `,deferred`) of the `--listen` entry
    /// at its position.
    pub fn with_listeners(cfg: Config, listeners: Vec<Listener>) -> Result<Master, MasterError> {
        let listeners: Vec<(Listener, Option<ListenSpec>)> =
            listeners.into_iter().enumerate().map(|(i, l)| (l, cfg.listen.get(i).cloned())).collect();
        Master::with_listeners_inner(cfg, listeners, None)
    }

    fn with_listeners_inner(
        cfg: Config,
        listeners: Vec<(Listener, Option<ListenSpec>)>,
        upgrade_ready: Option<OwnedFd>,
    ) -> Result<Master, MasterError> {
        let nofile = crate::sys::raise_nofile_limit().unwrap_or(1024);
        let poll = Poll::new()?;
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGCHLD, SIGTTIN, SIGTTOU, SIGUSR2])?;
        poll.registry().register(&mut signals, Source::Signals.token(), Interest::READABLE)?;
        let idle_max = idle_bound(cfg.max_idle, nofile);
        let dispatch = Dispatcher::new(listeners, &cfg, source::IDLE_BASE, idle_max, poll.registry())?;
        let life = Lifecycle::new(upgrade_ready);
        let mut admin = Admin::default();
        admin.open(&cfg, poll.registry(), life.upgraded(), &dispatch.local_addrs())?;
        Ok(Master {
            workers: Workers::new(cfg.workers),
            cfg,
            poll,
            signals,
            dispatch,
            admin,
            life,
            fatal: None,
            next_tick: Instant::now(),
            now: Instant::now(),
        })
    }

    /// Remembers where the settings came from, so SIGHUP can read them again.
    pub fn with_source(mut self, source: ConfigSource) -> Master {
        self.life.set_source(source);
        self
    }

    /// The addresses actually bound (with real ports when port 0 was asked for).
    pub fn local_addrs(&self) -> Vec<ListenAddr> {
        self.dispatch.local_addrs()
    }

    /// Starts the workers and runs until stopped by a signal. Returns an error if the
    /// workers could not be kept running (crash loop) or the loop itself failed.
    pub fn run(mut self) -> Result<(), MasterError> {
        info!(
            "master pid {} starting {} workers ({}), policy {}",
            std::process::id(),
            self.cfg.workers,
            match &self.cfg.worker {
                WorkerKind::Builtin { .. } => "built-in HTTP worker".to_string(),
                WorkerKind::Command(c) => format!("command {:?}", c.join(" ")),
                WorkerKind::Fork(_) => "forked Rust closure".to_string(),
            },
            self.cfg.policy
        );
        supervisor::warn_short_ready_timeout(&self.cfg);
        privileges::let_workers_restore_priority();
        // Whichever way `run` ends, the thread leaves SCHED_BATCH with it.
        let _restore = crate::sys::process::MasterSchedGuard;
        self.dispatch.apply_sched(&self.cfg, self.now);
        if let Err(e) = self.workers.start_all(&self.cfg, self.poll.registry()) {
            self.workers.kill_all_now();
            return Err(e);
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.workers.kill_all_now();
                return Err(e.into());
            }
            // One clock read per turn: frames, timers and dispatch in it share it.
            self.now = Instant::now();
            // Workers first: their DONEs and exits decide where the next accept goes.
            let next_id = self.dispatch.next_conn_id();
            if self.workers.read_backlog(self.now, next_id, &self.cfg, self.poll.registry()) {
                self.dispatch.unblock();
            }
            self.collect_handed();
            for ev in events.iter().filter(|ev| Source::of(ev.token()).is_worker()) {
                self.event(ev);
            }
            for ev in events.iter().filter(|ev| !Source::of(ev.token()).is_worker()) {
                self.event(ev);
            }
            let now = self.now;
            if now >= self.next_tick {
                self.tick(now);
                self.next_tick = now + TICK;
            }
            if self.life.running() {
                let reg = self.poll.registry();
                self.dispatch.accept_pass(&mut self.workers, now, &self.cfg, reg, &mut self.next_tick);
            }
            if self.life.handing_out() {
                let (life, mut p) = self.parts();
                life.hand_out_then_drain(&mut p);
            }
            self.workers.watch_for_room(self.poll.registry());
            self.workers.flush_output();
            if let Some(end) = self.end() {
                return end;
            }
        }
    }

    /// One event, handed to the part that owns its source.
    fn event(&mut self, ev: &mio::event::Event) {
        let (now, reg) = (self.now, self.poll.registry());
        match Source::of(ev.token()) {
            Source::Channel(key) => {
                if ev.is_writable() {
                    self.workers.writable(key, now);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    let next_id = self.dispatch.next_conn_id();
                    if self.workers.read(key, now, next_id, &self.cfg, reg) {
                        self.dispatch.unblock();
                    }
                    self.collect_handed();
                }
            }
            Source::Stderr(key) => self.workers.read_stderr(key, reg),
            Source::Idle(token) => {
                let hung_up = ev.is_read_closed() || ev.is_error();
                self.dispatch.idle_event(token, hung_up, reg, now, &self.cfg);
            }
            Source::Signals => self.handle_signals(),
            Source::Upgrade => {
                let (life, mut p) = self.parts();
                life.upgrade_event(&mut p);
            }
            Source::Proxy(slot) => self.dispatch.proxy_readable(slot, now, reg),
            Source::AdminConn(slot) => {
                if let Some((kind, req)) = self.admin.conn_event(slot, reg) {
                    let answer = self.answer(kind, req);
                    self.admin.respond(slot, answer, self.poll.registry());
                }
            }
            Source::AdminServer(i) => self.admin.accept(i, now, reg),
            Source::Listener(i) => self.dispatch.listener_readable(i),
        }
    }

    /// Whether this turn ends the run, and how: a fatal error, an exit, or a stop
    /// whose workers have all exited.
    fn end(&mut self) -> Option<Result<(), MasterError>> {
        if let Some(e) = self.fatal.take() {
            self.workers.kill_all_now();
            self.admin.close();
            return Some(Err(e));
        }
        match self.life.phase() {
            Phase::Exiting => {
                self.workers.kill_all_now();
                self.life.kill_abandoned();
                self.admin.close();
                Some(Ok(()))
            }
            Phase::Stopping { .. } if self.workers.is_empty() && !self.life.waiting_for_upgrade() => {
                info!("all workers exited; master exiting");
                self.admin.close();
                Some(Ok(()))
            }
            _ => None,
        }
    }

    /// The lifecycle, and the other parts as its transitions reach them.
    fn parts(&mut self) -> (&mut Lifecycle, Parts<'_>) {
        let Master { cfg, poll, dispatch, workers, admin, life, next_tick, now, .. } = self;
        let parts = Parts { cfg, reg: poll.registry(), workers, dispatch, admin, now: *now, wake: next_tick };
        (life, parts)
    }

    /// Gives the dispatcher what the worker table gave up (returned and taken-back
    /// connections), in the order it gave them up.
    fn collect_handed(&mut self) {
        self.dispatch.collect(&mut self.workers, self.poll.registry(), self.now, self.life.stage(), &self.cfg);
    }

    fn poll_timeout(&self) -> Duration {
        let now = Instant::now();
        let can_accept = self.life.running() && self.dispatch.can_accept(&self.workers, self.now, &self.cfg);
        if can_accept || self.workers.has_backlog() {
            Duration::ZERO
        } else {
            self.next_tick.saturating_duration_since(now)
        }
    }

    // ---- signals and process exits ----

    fn handle_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            if sig == SIGCHLD {
                self.reap();
            } else {
                let (life, mut p) = self.parts();
                life.signal(sig, &mut p);
            }
        }
    }

    fn reap(&mut self) {
        loop {
            match sysproc::reap_any() {
                Ok(Some((pid, exit))) => self.child_exited(pid, exit),
                Ok(None) => return,
                Err(e) => {
                    warn!("waitpid: {e}");
                    return;
                }
            }
        }
    }

    fn child_exited(&mut self, pid: u32, exit: Exit) {
        let (life, mut p) = self.parts();
        if life.child_exited(pid, exit, &mut p) {
            return;
        }
        let running = self.life.running();
        let reg = self.poll.registry();
        if let Err(e) = self.workers.exited(pid, exit, running, &self.cfg, reg, &mut self.next_tick) {
            self.fatal = Some(e);
        }
        self.collect_handed();
    }

    // ---- timers ----

    /// Each part's timers, in an order that matters: an accept pause that is over
    /// ends before a stop takes the backlog; a stop past its deadline ends the tick.
    fn tick(&mut self, now: Instant) {
        self.dispatch.resume_accepting(now);
        let (life, mut p) = self.parts();
        if life.tick_stop(&mut p) {
            return;
        }
        let running = self.life.running();
        self.workers.tick(now, &self.cfg, running);
        self.admin.tick(now, self.poll.registry());
        self.dispatch.tick(now, &self.cfg, self.poll.registry());
        let (life, mut p) = self.parts();
        life.tick(&mut p);
        if self.life.running() {
            self.workers.respawn_due(now, &self.cfg, self.poll.registry());
        }
    }

    // ---- the admin endpoints' answers ----

    fn answer(&mut self, kind: AdminKind, req: Request) -> Vec<u8> {
        match (kind, req) {
            (AdminKind::Control, Request::Command(line)) => self.control_command(&line),
            (AdminKind::Metrics, Request::Http { path }) if path == "/metrics" => {
                admin::http_response(200, "text/plain; version=0.0.4", &ops::metrics_text(&self.view()))
            }
            (AdminKind::Health, Request::Http { .. }) => match self.life.health(&self.workers, Instant::now()) {
                Ok(()) => admin::http_response(200, "text/plain", "ok\n"),
                Err(why) => admin::http_response(503, "text/plain", why),
            },
            _ => admin::http_response(404, "text/plain", "not found\n"),
        }
    }

    fn control_command(&mut self, line: &str) -> Vec<u8> {
        // The master as it was when the command came (a stop closes the listeners, a
        // reload may change them).
        let listeners: Vec<String> = self.local_addrs().iter().map(|a| a.to_string()).collect();
        let command = match ops::parse_command(line) {
            Ok(c) => c,
            Err(m) => return ops::reply(false, m, listeners),
        };
        let (life, mut p) = self.parts();
        let (ok, message) = match command {
            ops::Command::Status => return serde_json::to_vec(&self.status()).unwrap_or_default(),
            ops::Command::Reload => match life.reload("control", &mut p) {
                // The client follows the reload in the status until it settles.
                Ok((id, m)) => return ops::reload_reply(id, m, listeners),
                Err(m) => (false, m),
            },
            ops::Command::Stop => {
                life.begin_stop("stop command", true, &mut p);
                (true, "stopping gracefully".to_string())
            }
            ops::Command::Scale(n) => {
                life.scale(n, &mut p);
                (true, format!("scaling to {n} workers"))
            }
            ops::Command::Drain(id) => {
                let found = id.parse::<usize>().ok().and_then(|slot| p.workers.find_running(slot));
                match found {
                    Some(i) if life.running() => {
                        p.workers.recycle(i, p.cfg, p.reg);
                        (true, format!("replacing worker {id}: a fresh one first, then draining the old one"))
                    }
                    _ => (false, format!("no running worker {id}")),
                }
            }
        };
        ops::reply(ok, message, listeners)
    }

    fn view(&self) -> ops::View<'_> {
        ops::View {
            workers: &self.workers,
            dispatch: &self.dispatch,
            admin: &self.admin,
            phase: self.life.phase_name(),
            uptime: self.life.uptime(Instant::now()),
            listeners: self.local_addrs().iter().map(|a| a.to_string()).collect(),
            totals: self.totals(),
            reload: self.life.reload_status(&self.workers, Instant::now()),
        }
    }

    /// A snapshot for `handoff status`.
    pub fn status(&self) -> crate::control::Status {
        ops::status(&self.view())
    }

    /// The counters, each part's own, with the output dropped so far (kept where it is
    /// counted, read only when someone asks).
    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        self.dispatch.count_into(&mut t);
        self.workers.count_into(&mut t);
        self.life.count_into(&mut t);
        t
    }
}

/// `--max-idle`, but at most half the master's descriptor limit: the rest stays for
/// connections being accepted and handed out, workers' channels and admin endpoints.
pub(super) fn idle_bound(max_idle: usize, nofile: u64) -> usize {
    max_idle.min((nofile / 2).min(usize::MAX as u64) as usize).clamp(1, idle::MAX_SLOTS)
}

/// The index of a free entry of a token table (its position names the mio token),
/// growing the table if none is free.
fn free_slot<T>(table: &mut Vec<Option<T>>) -> usize {
    match table.iter().position(Option::is_none) {
        Some(i) => i,
        None => {
            table.push(None);
            table.len() - 1
        }
    }
}
