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
//!   dies with it.
//! - **The master holds no unbounded queue.** It accepts only while some worker can
//!   take a connection (eligible, below `--max-conns-per-worker`, channel not full);
//!   otherwise clients wait in the kernel's backlog. It holds connections it took back
//!   from dead workers (bounded by what was in flight), idle keep-alive connections
//!   workers handed back (`idle`, bounded by `--max-idle`), and the next requests of
//!   those while every worker that hands back is busy with two (bounded by the idle
//!   ones): one queue in front of all the workers, which is what keeps the tail short.
//! - **Worker events are handled before accepts** in each loop turn, so a DONE that a
//!   worker sent before its client saw the connection end is counted before the
//!   client's next connection is placed: load-aware policies are exact, not lucky.
//! - Input from workers is untrusted: a malformed frame, an unknown id or a descriptor
//!   sent to the master gets that worker killed and replaced; the others never notice.

pub mod admin;
mod idle;
mod ops;
pub mod privileges;
mod proxied;
mod source;
pub mod supervisor;
pub mod upgrade;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals;
use tracing::{debug, error, info, warn};

use crate::config::{Config, ConfigFile, WorkerKind};
use crate::listener::{self, ListenAddr, ListenSpec, Listener};
use crate::policy::{Balancer, Candidate};
use crate::sys::fdpass;
use crate::sys::process::{self as sysproc, Exit};
use crate::wire::{self, cap, ConnItem, Frame};
pub use crate::control::Totals;
use admin::{AdminConn, AdminKind};
use source::Source;
use supervisor::{Inflight, Slot, State, Worker};

/// Connections accepted from one listener before the loop looks at other events.
pub const ACCEPT_BATCH: usize = 64;
/// Frames read from one worker before the loop looks at other events.
const RECV_BATCH: usize = 64;
/// 8 KiB reads of one worker's stderr before the loop looks at other events.
const STDERR_CHUNKS: usize = 8;
/// Pause after `accept` fails for lack of descriptors or memory.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Housekeeping period (timeouts, respawns).
const TICK: Duration = Duration::from_millis(100);
/// How long a client of a `,proxy` listener has to send its PROXY header.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections waiting for their PROXY header at once; beyond it the master stops
/// accepting on `,proxy` listeners until some complete.
pub const MAX_PENDING_PROXY: usize = 4096;
/// Requests of handed-back connections a worker that hands back may be working on at
/// once; more wait in the master (see `Master::dispatch_batch`).
const QUEUE_DEPTH: u32 = 2;
/// A continued connection in a worker longer than this no longer counts toward its
/// QUEUE_DEPTH (see `Worker::requests_in`).
const REQUEST_AGE: Duration = Duration::from_secs(1);
/// A worker that handed a connection back this recently counts as handing back.
const RETURNING: Duration = Duration::from_millis(100);
/// How long after the last request of a handed-back connection the master still runs as
/// `SCHED_OTHER` (see `Master::apply_master_sched`).
const REQUESTS_HOLD: Duration = Duration::from_secs(1);
/// Time between SIGTERM and SIGKILL for a worker being killed.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// A worker whose channel closed but which has not exited is killed after this.
const LOST_GRACE: Duration = Duration::from_secs(1);

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
struct Held {
    fd: OwnedFd,
    listener: u16,
    addrs: Option<crate::proxy::ProxyHeader>,
    /// [`wire::flags`] for its CONN item.
    flags: u8,
}

#[derive(Debug)]
struct ListenerSlot {
    listener: Listener,
    /// An edge said connections are waiting and we have not seen EAGAIN since.
    readable: bool,
    /// Connections start with a PROXY protocol header.
    proxy: bool,
    /// `TCP_DEFER_ACCEPT` as the configuration last asked (set only on a change).
    deferred: bool,
}

/// A connection from a `,proxy` listener whose header has not fully arrived.
#[derive(Debug)]
struct PendingProxy {
    fd: OwnedFd,
    listener: u16,
    deadline: Instant,
}

/// Where the settings came from, so that a reload can read them again.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// Settings given on the command line (they win over the file).
    pub cli: ConfigFile,
    /// The config file, if any.
    pub path: Option<std::path::PathBuf>,
}

impl ConfigSource {
    /// Reads and validates the settings again.
    pub fn load(&self) -> Result<Config, crate::config::ConfigError> {
        let merged = match &self.path {
            Some(p) => self.cli.clone().or(ConfigFile::load(p)?),
            None => self.cli.clone(),
        };
        merged.resolve()
    }
}

#[derive(Debug)]
struct AdminServer {
    kind: AdminKind,
    fd: OwnedFd,
    /// The socket file of a Unix server and its inode, removed at exit if it is
    /// still ours (a new master may have replaced it).
    path: Option<(std::path::PathBuf, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Graceful stop: DRAIN sent, waiting until the deadline.
    Stopping {
        deadline: Instant,
    },
    /// Kill everything and leave.
    Exiting,
}

/// The master process: listeners, workers, and the loop that joins them.
pub struct Master {
    cfg: Config,
    poll: Poll,
    signals: Signals,
    listeners: Vec<ListenerSlot>,
    workers: Vec<Worker>,
    slots: Vec<Slot>,
    balancer: Balancer,
    phase: Phase,
    held: VecDeque<Held>,
    /// Idle keep-alive connections handed back by workers.
    idle: idle::IdleTable,
    next_conn_id: u64,
    next_key: usize,
    paused_until: Option<Instant>,
    pause_started: Option<Instant>,
    last_accept_log: Option<Instant>,
    ever_healthy: bool,
    fatal: Option<MasterError>,
    totals: Totals,
    frame: Vec<u8>,
    recv_buf: Vec<u8>,
    cand: Vec<Candidate>,
    /// `--drain-delay`: a stop was asked for; accepting goes on until then, with
    /// health at 503, so that a load balancer notices first.
    lingering: Option<(Instant, String)>,
    /// Reused buffer of the connections accepted in one pass.
    batch: Vec<Held>,
    /// Workers whose channel may hold more frames than one turn read.
    unread: Vec<usize>,
    /// Workers whose stderr pipe may hold more than one turn read.
    unread_stderr: Vec<usize>,
    /// Worker output on its way to our stderr, never blocking the loop.
    forward: supervisor::Forward,
    /// Connections waiting for their PROXY header, by token offset.
    pending_proxy: Vec<Option<PendingProxy>>,
    /// Stopping, with connections still to hand out (a PROXY header on its way, or
    /// no worker free to take one): the workers are drained once there are none, or
    /// at this instant.
    drain_at: Option<Instant>,
    last_proxy_log: Option<Instant>,
    next_tick: Instant,
    /// The time at the top of this loop turn (one clock read per turn).
    now: Instant,
    interrupts: u32,
    started_at: Instant,
    source: Option<ConfigSource>,
    admin: Vec<AdminServer>,
    admin_conns: Vec<Option<AdminConn>>,
    admin_state: admin::AdminState,
    /// Slots waiting for a rolling restart.
    rolling: VecDeque<usize>,
    /// A new master being started by SIGUSR2.
    upgrade: Option<upgrade::Child>,
    /// This master was started by an upgrade: tell the old one once ready.
    upgrade_ready: Option<OwnedFd>,
    /// When a handed-back connection was last dispatched again.
    last_continued: Option<Instant>,
    /// Candidates for a continued connection (a reused buffer).
    cont_cand: Vec<Candidate>,
    /// Continued connections wait in `held` for a worker with room: retried on the
    /// next worker frame or tick, not in a busy loop.
    held_blocked: bool,
    /// The master runs as `SCHED_BATCH` by its own doing.
    sched_batch: bool,
    /// When to send the next systemd watchdog ping.
    watchdog: Option<(Duration, Instant)>,
    ready_notified: bool,
    /// The binary to start on upgrade: the path this one was started from.
    exe: std::path::PathBuf,
}

impl Master {
    /// Binds every listener and prepares the loop; starts no worker yet.
    pub fn new(cfg: Config) -> Result<Master, MasterError> {
        let (mut pool, origin, upgrade_ready) = upgrade::inherited()?;
        crate::sys::cloexec_inherited_fds()?;
        let mut listeners = Vec::new();
        if origin == upgrade::Origin::Systemd && !cfg.listen_given {
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
        let mut m = Master::with_listeners_inner(cfg, listeners, upgrade_ready)?;
        m.open_admin_servers()?;
        Ok(m)
    }

    /// Remembers where the settings came from, so SIGHUP can read them again.
    pub fn with_source(mut self, source: ConfigSource) -> Master {
        self.source = Some(source);
        self
    }

    /// Uses listeners opened elsewhere (socket activation, upgrade, tests).
    /// Each listener takes the options (`,proxy`, `,deferred`) of the `--listen` entry
    /// at its position.
    pub fn with_listeners(cfg: Config, listeners: Vec<Listener>) -> Result<Master, MasterError> {
        let listeners: Vec<(Listener, Option<ListenSpec>)> =
            listeners.into_iter().enumerate().map(|(i, l)| (l, cfg.listen.get(i).cloned())).collect();
        let mut m = Master::with_listeners_inner(cfg, listeners, None)?;
        m.open_admin_servers()?;
        Ok(m)
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
        let mut ls = Vec::new();
        for (i, (l, spec)) in listeners.into_iter().enumerate() {
            poll.registry().register(
                &mut SourceFd(&l.as_fd().as_raw_fd()),
                Source::Listener(i).token(),
                Interest::READABLE,
            )?;
            // Only turned on, never off: a socket systemd (`DeferAcceptSec=`) or an old
            // master passed us keeps what it has unless the configuration asks.
            let proxy = spec.as_ref().is_some_and(|s| s.proxy);
            let deferred = spec.as_ref().is_some_and(|s| s.deferred);
            if deferred {
                l.set_deferred(true).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot set TCP_DEFER_ACCEPT on {}: {e}", l.local_addr()))
                })?;
            }
            info!("listening on {}{}", l.local_addr(), spec.as_ref().map(listen_notes).unwrap_or_default());
            ls.push(ListenerSlot { listener: l, readable: true, proxy, deferred });
        }
        let slots = (0..cfg.workers).map(|_| Slot::default()).collect();
        let m = Master {
            idle: idle::IdleTable::new(source::IDLE_BASE, idle_bound(cfg.max_idle, nofile), cfg.keepalive_timeout),
            balancer: Balancer::new(cfg.policy),
            cfg,
            poll,
            signals,
            listeners: ls,
            workers: Vec::new(),
            slots,
            phase: Phase::Running,
            held: VecDeque::new(),
            next_conn_id: 1,
            next_key: 0,
            paused_until: None,
            pause_started: None,
            last_accept_log: None,
            ever_healthy: false,
            fatal: None,
            totals: Totals::default(),
            frame: Vec::with_capacity(wire::MAX_FRAME_LEN),
            recv_buf: vec![0; wire::MAX_FRAME_LEN + 1],
            cand: Vec::new(),
            batch: Vec::with_capacity(ACCEPT_BATCH),
            unread: Vec::new(),
            unread_stderr: Vec::new(),
            forward: supervisor::Forward::default(),
            pending_proxy: Vec::new(),
            drain_at: None,
            lingering: None,
            last_proxy_log: None,
            next_tick: Instant::now(),
            now: Instant::now(),
            interrupts: 0,
            started_at: Instant::now(),
            source: None,
            admin: Vec::new(),
            admin_conns: Vec::new(),
            admin_state: admin::AdminState::default(),
            rolling: VecDeque::new(),
            upgrade: None,
            upgrade_ready,
            last_continued: None,
            cont_cand: Vec::new(),
            held_blocked: false,
            sched_batch: false,
            watchdog: upgrade::watchdog_interval().map(|d| (d, Instant::now())),
            ready_notified: false,
            exe: std::env::current_exe().unwrap_or_else(|_| "handoff".into()),
        };
        Ok(m)
    }

    /// The addresses actually bound (with real ports when port 0 was asked for).
    pub fn local_addrs(&self) -> Vec<ListenAddr> {
        self.listeners.iter().map(|l| l.listener.local_addr()).collect()
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
        // Whichever way `run` ends, the thread leaves SCHED_BATCH with it.
        let _restore = crate::sys::process::MasterSchedGuard;
        self.apply_master_sched();
        for slot in 0..self.slots.len() {
            if let Err(e) = self.spawn_worker(slot) {
                self.kill_all_now();
                return Err(e);
            }
        }
        // One start time for the first batch: minimal workers (no READY) then become
        // eligible at the same instant, so the first connections spread evenly.
        let t0 = Instant::now();
        for w in &mut self.workers {
            w.started = t0;
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.kill_all_now();
                return Err(e.into());
            }
            // One clock read per turn: frames, timers and dispatch in it share it.
            self.now = Instant::now();
            // Workers first: their DONEs and exits decide where the next accept goes.
            for key in std::mem::take(&mut self.unread) {
                self.read_worker(key);
            }
            for key in std::mem::take(&mut self.unread_stderr) {
                self.read_stderr(key);
            }
            for ev in events.iter().filter(|ev| Source::of(ev.token()).is_worker()) {
                match Source::of(ev.token()) {
                    Source::Channel(key) => {
                        if ev.is_writable() {
                            if let Some(i) = self.worker_index(key) {
                                self.workers[i].blocked_since = None;
                                self.send_drain(i);
                            }
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read_worker(key);
                        }
                    }
                    Source::Stderr(key) => self.read_stderr(key),
                    _ => {}
                }
            }
            for ev in events.iter() {
                match Source::of(ev.token()) {
                    Source::Idle(token) => self.idle_event(token, ev.is_read_closed() || ev.is_error()),
                    Source::Signals => self.handle_signals(),
                    Source::Upgrade => self.upgrade_event(),
                    Source::Proxy(slot) => self.proxy_readable(slot),
                    Source::AdminConn(slot) => self.admin_conn_event(slot),
                    Source::AdminServer(i) => self.admin_accept(i),
                    Source::Listener(i) => {
                        if let Some(l) = self.listeners.get_mut(i) {
                            l.readable = true;
                        }
                    }
                    Source::Channel(_) | Source::Stderr(_) => {}
                }
            }
            let now = self.now;
            if now >= self.next_tick {
                self.housekeeping(now);
                self.next_tick = now + TICK;
            }
            self.accept_pass(now);
            if self.drain_at.is_some() {
                self.hand_out_then_drain();
            }
            self.forward.flush();
            if let Some(e) = self.fatal.take() {
                self.kill_all_now();
                self.close_admin_servers();
                return Err(e);
            }
            match self.phase {
                Phase::Exiting => {
                    self.kill_all_now();
                    self.close_admin_servers();
                    return Ok(());
                }
                Phase::Stopping { .. } if self.workers.is_empty() => {
                    info!("all workers exited; master exiting");
                    self.close_admin_servers();
                    return Ok(());
                }
                _ => {}
            }
        }
    }

    fn poll_timeout(&self) -> Duration {
        let now = Instant::now();
        let can_accept = self.phase == Phase::Running
            && self.paused_until.is_none()
            && ((!self.held.is_empty() && !self.held_blocked) || self.listeners.iter().any(|l| l.readable))
            && self.workers.iter().any(|w| self.could_take(w));
        if can_accept || !self.unread.is_empty() || !self.unread_stderr.is_empty() {
            Duration::ZERO
        } else {
            self.next_tick.saturating_duration_since(now)
        }
    }

    fn worker_index(&self, key: usize) -> Option<usize> {
        self.workers.iter().position(|w| w.key == key)
    }

    // ---- starting workers ----

    fn spawn_worker(&mut self, slot: usize) -> Result<usize, MasterError> {
        if slot >= self.slots.len() {
            return Err(MasterError::Spawn { slot, source: io::Error::other("no such slot (scaled down)") });
        }
        let (mine, theirs) = fdpass::seqpacket_pair().map_err(|source| MasterError::Spawn { slot, source })?;
        // The worker's end must be blocking: a minimal worker just calls recvmsg.
        rustix::io::ioctl_fionbio(&theirs, false).map_err(|e| MasterError::Spawn { slot, source: e.into() })?;
        let args = supervisor::SpawnArgs { cfg: &self.cfg, slot, slots: self.slots.len(), channel: &theirs };
        let (pid, stderr) = supervisor::spawn(args).map_err(|source| MasterError::Spawn { slot, source })?;
        // Close our copy of the worker's end now, or we would never see its EOF.
        drop(theirs);
        let key = self.next_key;
        self.next_key += 1;
        let reg = self.poll.registry();
        reg.register(&mut SourceFd(&mine.as_raw_fd()), Source::Channel(key).token(), Interest::READABLE | Interest::WRITABLE)?;
        if let Some(e) = &stderr {
            reg.register(&mut SourceFd(&e.as_raw_fd()), Source::Stderr(key).token(), Interest::READABLE)?;
        }
        let now = Instant::now();
        let max_requests = self.cfg.max_requests.map(|m| {
            m.saturating_add(if self.cfg.max_requests_jitter > 0 {
                fastrand::u64(0..=self.cfg.max_requests_jitter)
            } else {
                0
            })
        });
        self.workers.push(Worker {
            key,
            slot,
            pid,
            chan: Some(mine),
            stderr,
            lines: supervisor::Lines::new(slot),
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
        });
        let s = &mut self.slots[slot];
        if s.last_exit.is_some() || s.restarts > 0 {
            s.restarts += 1;
        }
        s.respawn_at = None;
        self.totals.spawned += 1;
        info!("worker {slot} started (pid {pid})");
        Ok(key)
    }

    /// The worker currently filling `slot` (not one being replaced).
    fn slot_worker(&self, slot: usize) -> Option<&Worker> {
        self.workers.iter().find(|w| w.slot == slot && matches!(w.state, State::Running))
    }

    // ---- reading from workers ----

    fn read_worker(&mut self, key: usize) {
        for _ in 0..RECV_BATCH {
            let Some(i) = self.worker_index(key) else { return };
            let Some(chan) = self.workers[i].chan.as_ref() else { return };
            // Room for descriptors only for a worker that may hand connections back:
            // any other that sends one is caught by MSG_CTRUNC, and the kernel-delivered
            // descriptor is closed before we look further.
            let returns = self.workers[i].returns();
            let room = if returns { wire::MAX_RETURNS } else { 0 };
            let got = match fdpass::recv_with_fds(chan, &mut self.recv_buf, room) {
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::InvalidData && returns && e.to_string().contains("CTRUNC") => {
                    // More than a RETURN may carry, or the master itself is out of
                    // descriptors: not provably the worker's fault. The kernel closed
                    // what did not fit; those clients see their idle connection end.
                    error!(
                        "worker {}: a RETURN frame was truncated ({e}); its connections are closed",
                        self.workers[i].slot
                    );
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    let what = if e.to_string().contains("CTRUNC") {
                        "a descriptor (workers must not send any)".to_string()
                    } else {
                        e.to_string()
                    };
                    self.violation(i, &what);
                    return;
                }
                Err(e) => {
                    debug!("worker channel read: {e}");
                    self.channel_closed(i);
                    return;
                }
            };
            if got.len == 0 && got.fds.is_empty() {
                self.channel_closed(i);
                return;
            }
            let frame = match wire::decode(&self.recv_buf[..got.len]) {
                Ok(f) => f,
                Err(e) => {
                    self.violation(i, &format!("a malformed frame: {e}"));
                    return;
                }
            };
            self.workers[i].last_heard = self.now;
            self.held_blocked = false;
            let handled = match frame {
                Frame::Return(ids) => self.take_back(i, ids, got.fds),
                _ if !got.fds.is_empty() => Err("a descriptor with a frame other than RETURN".into()),
                frame => self.handle_frame(i, frame),
            };
            if let Err(what) = handled {
                self.violation(i, &what);
                return;
            }
        }
        // More may be queued, and the edge will not fire again for it: read on in the
        // next turn, after the other events (a chatty worker cannot starve the loop).
        if !self.unread.contains(&key) {
            self.unread.push(key);
        }
    }

    fn handle_frame(&mut self, i: usize, frame: Frame) -> Result<(), String> {
        let next_id = self.next_conn_id;
        let w = &mut self.workers[i];
        match frame {
            Frame::Ready { caps, .. } => {
                if w.ready {
                    return Err("READY twice".into());
                }
                w.ready = true;
                w.caps = caps & cap::ALL;
                // RETURN stands for a DONE of a tracked connection: without ACK and DONE
                // the master has nothing to check a hand-back against.
                if w.caps & (cap::ACK | cap::DONE) != cap::ACK | cap::DONE {
                    w.caps &= !cap::RETURN;
                }
                w.tracked_from = next_id;
                info!(
                    "worker {} ready (pid {}, protocol v{}, capabilities {})",
                    w.slot,
                    w.pid,
                    wire::VERSION,
                    caps_names(w.caps)
                );
            }
            Frame::Ack(ids) => {
                for id in ids {
                    if id < w.tracked_from {
                        continue;
                    }
                    let keep = w.caps & cap::DONE != 0;
                    match w.inflight.get_mut(&id) {
                        Some(e) if keep => e.fd = None,
                        Some(_) => {
                            w.forget(id);
                        }
                        None => return Err(format!("an ACK for connection {id}, which it was never sent")),
                    }
                }
            }
            Frame::Done(ids) => {
                if w.caps & cap::DONE == 0 && w.ready {
                    return Err("DONE without the DONE capability".into());
                }
                for id in ids {
                    if id < w.tracked_from {
                        continue;
                    }
                    if w.forget(id).is_none() {
                        return Err(format!("a DONE for connection {id}, which it does not hold"));
                    }
                }
            }
            Frame::Heartbeat => {}
            Frame::Return(_) => return Err("RETURN without descriptors".into()),
            Frame::Conn(_) | Frame::Drain => return Err("a master-to-worker frame".into()),
        }
        Ok(())
    }

    fn read_stderr(&mut self, key: usize) {
        let Some(i) = self.worker_index(key) else { return };
        let w = &mut self.workers[i];
        if let Some(fd) = &w.stderr {
            let mut gone = Slot::default();
            // A worker of a slot removed by scaling down still has its output forwarded.
            let slot = self.slots.get_mut(w.slot).unwrap_or(&mut gone);
            match supervisor::read_stderr(fd, slot, STDERR_CHUNKS, &mut self.forward, &mut w.lines) {
                supervisor::StderrRead::Empty => {}
                // The edge will not fire again for what is left: read on next turn.
                supervisor::StderrRead::More => {
                    if !self.unread_stderr.contains(&key) {
                        self.unread_stderr.push(key);
                    }
                }
                supervisor::StderrRead::Eof => {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
                    w.stderr = None;
                }
            }
        }
    }

    /// A worker broke the protocol: kill it now; its connections are handed on when
    /// its channel closes.
    fn violation(&mut self, i: usize, what: &str) {
        let w = &mut self.workers[i];
        error!("worker {} (pid {}) sent {what}; killing it", w.slot, w.pid);
        self.totals.protocol_kills += 1;
        let _ = sysproc::signal(w.pid, rustix::process::Signal::KILL);
        w.state = State::Killing;
        w.kill_at = None;
    }

    /// A RETURN frame: worker `i` hands back idle connections, each at a request
    /// boundary. They count as DONE and wait in the idle table for their next request.
    fn take_back(&mut self, i: usize, ids: Vec<u64>, fds: Vec<OwnedFd>) -> Result<(), String> {
        let w = &mut self.workers[i];
        if !w.returns() {
            return Err("RETURN without the RETURN capability".into());
        }
        if ids.len() != fds.len() {
            return Err(format!("a RETURN of {} connections with {} descriptors", ids.len(), fds.len()));
        }
        // All checked before any is taken: a bad frame changes nothing but the
        // worker's fate (its descriptors are closed with it). Connections sent before
        // its READY are not tracked (as for ACK and DONE), so they cannot be checked
        // against what it holds: their ids must predate its READY, and their
        // descriptors be stream sockets.
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        let held_or_untracked = |id: u64, fd: &OwnedFd| {
            w.inflight.contains_key(&id)
                || (id < w.tracked_from.min(self.next_conn_id)
                    && rustix::net::sockopt::socket_type(fd).is_ok_and(|t| t == rustix::net::SocketType::STREAM))
        };
        if let Some(id) =
            ids.iter().zip(&fds).find(|(&id, fd)| !held_or_untracked(id, fd) || !seen.insert(id)).map(|(id, _)| id)
        {
            return Err(format!("a RETURN of connection {id}, which it does not hold"));
        }
        for (id, fd) in ids.into_iter().zip(fds) {
            let (listener, addrs) = match self.workers[i].forget(id) {
                Some(e) => (e.listener, e.addrs),
                // Sent before READY: its listener and PROXY addresses are not known
                // any more; the listener index goes unsaid (0) and the addresses, if
                // any, are lost for its next requests.
                None => (0, None),
            };
            self.totals.returned += 1;
            self.workers[i].last_return = Some(self.now);
            if self.phase == Phase::Running {
                if let Err(err) = self.idle.insert(self.poll.registry(), self.now, fd, listener, addrs) {
                    warn!("cannot hold an idle connection ({err}): closing it");
                }
            } else {
                self.hold_or_close_at_stop(fd, listener, addrs);
            }
        }
        Ok(())
    }

    /// While stopping: an idle connection whose client has started its next request is
    /// handed out before the workers drain (if they have not yet); any other is closed.
    fn hold_or_close_at_stop(&mut self, fd: OwnedFd, listener: u16, addrs: Option<crate::proxy::ProxyHeader>) {
        let before_drain = self.phase == Phase::Running || self.drain_at.is_some();
        if before_drain && idle::peek(&fd) == idle::Peek::Request {
            self.held.push_back(Held { fd, listener, addrs, flags: wire::flags::CONTINUED });
        } else {
            self.totals.idle_closed_at_stop += 1;
        }
    }

    /// An idle connection reported readable: its client sent its next request (it is
    /// placed like a new connection) or hung up (it is closed).
    fn idle_event(&mut self, token: Token, hung_up: bool) {
        let Some(c) = self.idle.take_token(self.poll.registry(), token) else { return };
        if hung_up && idle::peek(&c.fd) == idle::Peek::Gone {
            self.totals.idle_hangups += 1;
            return;
        }
        self.totals.continued += 1;
        // The first after a quiet spell leaves SCHED_BATCH (tried once per spell).
        let first = self.last_continued.is_none_or(|t| self.now.duration_since(t) >= REQUESTS_HOLD);
        self.last_continued = Some(self.now);
        if first && self.sched_batch {
            self.apply_master_sched();
        }
        self.held.push_back(Held { fd: c.fd, listener: c.listener, addrs: c.addrs, flags: wire::flags::CONTINUED });
    }

    /// The worker's channel closed (it exited, or closed it): take back what it had
    /// not ACKed and stop talking to it.
    fn channel_closed(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if let Some(chan) = w.chan.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&chan.as_raw_fd()));
        }
        let unacked = w.take_unacked();
        let lost = w.inflight.len() as u64;
        w.inflight.clear();
        w.requests_in = 0;
        w.continued.clear();
        if !matches!(w.state, State::Killing | State::Draining) {
            w.state = State::Lost;
        }
        // A draining worker may close its channel first and finish its connections
        // after: give it the shutdown timeout, not the lost-worker grace.
        let grace = if w.state == State::Draining { self.cfg.shutdown_timeout } else { LOST_GRACE };
        w.kill_at = Some(Instant::now() + grace);
        let (slot, pid) = (w.slot, w.pid);
        if !unacked.is_empty() || lost > 0 {
            warn!("worker {slot} (pid {pid}) is gone: handing on {} connections it had not taken; {lost} it was serving are lost with it", unacked.len());
        }
        self.totals.lost_with_worker += lost;
        for (_, Inflight { fd, listener, addrs, flags }) in unacked {
            if let Some(fd) = fd {
                self.totals.redispatched += 1;
                self.held.push_back(Held { fd, listener, addrs, flags });
            }
        }
    }

    // ---- signals and process exits ----

    fn handle_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGCHLD => self.reap(),
                SIGTERM => self.begin_stop("SIGTERM", true),
                SIGINT => {
                    self.interrupts += 1;
                    if self.interrupts > 1 {
                        info!("second SIGINT: stopping now");
                        self.phase = Phase::Exiting;
                    } else {
                        self.begin_stop("SIGINT", true);
                    }
                }
                SIGQUIT => {
                    info!("SIGQUIT: stopping now");
                    self.phase = Phase::Exiting;
                }
                SIGTTIN => self.scale(self.slots.len() + 1),
                SIGTTOU => self.scale(self.slots.len().saturating_sub(1)),
                SIGHUP => {
                    info!("SIGHUP: reloading the configuration");
                    let _ = self.reload();
                }
                SIGUSR2 => self.start_upgrade(),
                _ => {}
            }
        }
    }

    fn reap(&mut self) {
        loop {
            match sysproc::reap_any() {
                Ok(Some((pid, exit))) => self.worker_exited(pid, exit),
                Ok(None) => return,
                Err(e) => {
                    warn!("waitpid: {e}");
                    return;
                }
            }
        }
    }

    fn worker_exited(&mut self, pid: u32, exit: Exit) {
        if self.upgrade.as_ref().is_some_and(|u| u.pid == pid) {
            if self.phase == Phase::Running {
                self.upgrade_failed(&format!("the new master (pid {pid}) exited before it was ready ({exit})"));
            }
            return;
        }
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            debug!("reaped unknown child {pid}: {exit}");
            return;
        };
        if self.workers[i].chan.is_some() {
            self.channel_closed(i);
        }
        let mut w = self.workers.remove(i);
        if let Some(fd) = w.stderr.take() {
            let mut gone = Slot::default();
            let slot = self.slots.get_mut(w.slot).unwrap_or(&mut gone);
            supervisor::drain_stderr(&fd, slot, &mut self.forward, &mut w.lines);
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        let now = Instant::now();
        let lived = now.duration_since(w.started);
        let expected = matches!(w.state, State::Draining) || self.phase != Phase::Running;
        if expected {
            info!("worker {} (pid {pid}) exited: {exit}", w.slot);
        } else {
            warn!("worker {} (pid {pid}) exited unexpectedly after {:.1}s: {exit}", w.slot, lived.as_secs_f64());
        }
        if self.phase != Phase::Running || w.slot >= self.slots.len() {
            return;
        }
        let slot = &mut self.slots[w.slot];
        slot.last_exit = Some(exit);
        if lived >= supervisor::HEALTHY_AFTER {
            self.ever_healthy = true;
            slot.failed_starts = 0;
        } else if !expected {
            slot.failed_starts += 1;
        }
        // Replace it unless it was being replaced anyway.
        let replaced = self.workers.iter().any(|o| o.slot == w.slot && o.state == State::Running);
        if replaced {
            return;
        }
        if !self.ever_healthy && slot.failed_starts >= supervisor::CRASH_LOOP_STARTS {
            let tail = if slot.stderr_tail.is_empty() {
                " It wrote nothing to stderr.".to_string()
            } else {
                format!(
                    " Its last stderr lines:\n{}",
                    slot.stderr_tail.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
                )
            };
            self.fatal = Some(MasterError::CrashLoop {
                slot: w.slot,
                exit,
                starts: slot.failed_starts,
                healthy: supervisor::HEALTHY_AFTER,
                tail,
            });
            return;
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
        self.next_tick = self.next_tick.min(now + delay);
    }

    fn scale(&mut self, n: usize) {
        if self.phase != Phase::Running || n == 0 || n == self.slots.len() {
            if n == 0 {
                warn!("cannot scale below one worker");
            }
            return;
        }
        info!("scaling from {} to {n} workers", self.slots.len());
        while self.slots.len() < n {
            self.slots.push(Slot::default());
            let slot = self.slots.len() - 1;
            self.slots[slot].respawn_at = Some(Instant::now());
        }
        while self.slots.len() > n {
            let slot = self.slots.len() - 1;
            self.slots.pop();
            for i in 0..self.workers.len() {
                if self.workers[i].slot == slot {
                    self.drain_worker(i);
                }
            }
        }
        self.next_tick = Instant::now();
    }

    fn drain_worker(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if matches!(w.state, State::Draining | State::Killing | State::Lost) {
            return;
        }
        w.state = State::Draining;
        w.drain_pending = true;
        debug!("worker {} (pid {}) draining", w.slot, w.pid);
        self.send_drain(i);
    }

    /// Sends an owed DRAIN. A full channel keeps it owed until the channel is writable
    /// again (a worker busy with its connections is no reason to kill them); a channel
    /// full for `--worker-timeout` gets the worker killed like any stuck one.
    fn send_drain(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if !w.drain_pending {
            return;
        }
        let Some(chan) = &w.chan else {
            w.drain_pending = false;
            return;
        };
        wire::encode_empty(&mut self.frame, wire::kind::DRAIN);
        match fdpass::send_with_fds(chan.as_fd(), &self.frame, &[]) {
            Ok(_) => w.drain_pending = false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                w.blocked_since.get_or_insert(self.now);
            }
            Err(e) => {
                debug!("DRAIN to worker {}: {e}", w.slot);
                w.drain_pending = false;
            }
        }
    }

    /// Stops accepting and drains every worker. `unlink`: remove Unix listener files
    /// (not when a new master goes on using them).
    fn begin_stop(&mut self, why: &str, unlink: bool) {
        if self.phase != Phase::Running || self.lingering.is_some() {
            return;
        }
        upgrade::notify("STOPPING=1");
        let delay = self.cfg.drain_delay;
        if unlink && !delay.is_zero() {
            // Health says 503 from now on; keep serving until the balancer has noticed.
            info!("{why}: health is 503; still accepting for {delay:?} (--drain-delay) before draining");
            self.lingering = Some((Instant::now() + delay, why.to_string()));
            self.next_tick = self.next_tick.min(Instant::now() + delay);
            return;
        }
        self.stop_now(why, unlink);
    }

    fn stop_now(&mut self, why: &str, unlink: bool) {
        self.lingering = None;
        // Idle connections whose next request has started to arrive are handed out
        // with the backlog below; the others are closed, as every server closes its
        // idle keep-alive connections when it stops.
        for c in self.idle.take_all(self.poll.registry()) {
            self.hold_or_close_at_stop(c.fd, c.listener, c.addrs);
        }
        // Hand out what the master holds, and what is already in the kernel's backlog:
        // those clients finished their handshake and would be reset when the listener
        // closes (after an upgrade the new master would take them, but the old
        // workers can serve them as well before they drain).
        let now = Instant::now();
        for l in &mut self.listeners {
            l.readable = true;
        }
        self.accept_pass(now);
        info!(
            "{why}: stopping gracefully (draining {} workers, at most {:?})",
            self.workers.len(),
            self.cfg.shutdown_timeout
        );
        // The deadline is set again when the workers are told to drain (`drain_all`).
        self.phase = Phase::Stopping { deadline: now + PROXY_HEADER_TIMEOUT + self.cfg.shutdown_timeout };
        for l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&l.listener.as_fd().as_raw_fd()));
            if unlink {
                l.listener.unlink();
            }
        }
        self.rolling.clear();
        let pending = self.pending_proxy.iter().flatten().count();
        if pending > 0 || !self.held.is_empty() {
            // Accepted like the backlog above, but not handed out yet: their balancer's
            // PROXY header is still on its way (during an upgrade too: the new master
            // cannot take them over), or no worker could take them (all at
            // --max-conns-per-worker, or they were a dead worker's). The workers drain
            // once these are handed out, or after the header's own time limit.
            info!(
                "{why}: handing out {} connection(s) before draining ({pending} waiting for their PROXY header; at most {:?})",
                pending + self.held.len(),
                PROXY_HEADER_TIMEOUT
            );
            // Checked each loop turn, which housekeeping's tick (100 ms) bounds.
            self.drain_at = Some(now + PROXY_HEADER_TIMEOUT);
            return;
        }
        self.drain_all();
    }

    /// While stopping: hands out the connections whose PROXY header has come (and any
    /// a worker can take now), and drains the workers once none is left, or when
    /// `drain_at` has come.
    fn hand_out_then_drain(&mut self) {
        if !self.held.is_empty() {
            let held: Vec<Held> = self.held.drain(..).collect();
            self.dispatch_batch(held);
        }
        let waiting = self.pending_proxy.iter().any(Option::is_some) || !self.held.is_empty();
        if !waiting || self.drain_at.is_some_and(|t| self.now >= t) {
            self.drain_at = None;
            self.drain_all();
        }
    }

    /// Sends DRAIN to every worker; what is still not handed out is closed, which
    /// tells its client. The workers get the whole --shutdown-timeout from now.
    fn drain_all(&mut self) {
        let left = self.pending_proxy.iter().flatten().count() + self.held.len();
        if left > 0 {
            warn!("closing {left} connection(s) that no worker could take (or whose PROXY header did not come)");
        }
        self.proxy_clear();
        self.held.clear();
        self.phase = Phase::Stopping { deadline: Instant::now() + self.cfg.shutdown_timeout };
        for i in 0..self.workers.len() {
            self.drain_worker(i);
        }
    }

    fn kill_all_now(&mut self) {
        for w in &self.workers {
            let _ = sysproc::signal(w.pid, rustix::process::Signal::KILL);
        }
        // Reap them so that none is left behind as a zombie or an orphan.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.workers.is_empty() && Instant::now() < deadline {
            match sysproc::reap_any() {
                Ok(Some((pid, exit))) => {
                    if let Some(i) = self.workers.iter().position(|w| w.pid == pid) {
                        let w = self.workers.remove(i);
                        info!("worker {} (pid {pid}) exited: {exit}", w.slot);
                    }
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    // ---- timers ----

    fn housekeeping(&mut self, now: Instant) {
        if let Some(until) = self.paused_until {
            if now >= until {
                self.paused_until = None;
                if let Some(s) = self.pause_started.take() {
                    self.totals.paused += now.duration_since(s);
                }
            }
        }
        if let Some((until, why)) = &self.lingering {
            if now >= *until {
                let why = why.clone();
                self.stop_now(&why, true);
            }
        }
        if let Phase::Stopping { deadline } = self.phase {
            if now >= deadline {
                warn!("shutdown timeout: killing {} workers still running", self.workers.len());
                self.phase = Phase::Exiting;
                return;
            }
        }
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            if !self.ever_healthy && now.duration_since(w.started) >= supervisor::HEALTHY_AFTER {
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
            let timeout = self.cfg.worker_timeout;
            let silent =
                w.caps & cap::HEARTBEAT != 0 && !w.inflight.is_empty() && now.duration_since(w.last_heard) > timeout;
            let stuck = w.blocked_since.is_some_and(|b| now.duration_since(b) > timeout);
            // A worker that announced ACK but does not ACK would make the master hold a
            // descriptor for every connection it is sent: bounded by the timeout.
            let unacking = w.oldest_unacked().is_some_and(|t| now.duration_since(t) > timeout);
            if silent || stuck || unacking {
                let why = if silent {
                    format!("sent nothing for {timeout:?} while holding connections")
                } else if stuck {
                    format!("has not read its channel for {timeout:?}")
                } else {
                    format!("has not acknowledged a connection for {timeout:?}")
                };
                error!("worker {} (pid {}) {why}: killing it", w.slot, w.pid);
                self.totals.hung_kills += 1;
                let _ = sysproc::signal(w.pid, rustix::process::Signal::TERM);
                w.state = State::Killing;
                w.kill_at = Some(now + KILL_GRACE);
                // Its slot needs a new worker now, not after it dies.
                let slot = w.slot;
                if self.phase == Phase::Running && slot < self.slots.len() {
                    self.slots[slot].respawn_at = Some(now);
                }
            }
        }
        // Retiring workers whose successor has proven itself are drained.
        for i in 0..self.workers.len() {
            if self.workers[i].state == State::Retiring {
                let slot = self.workers[i].slot;
                if self.slot_worker(slot).is_some_and(|s| s.proven(now)) {
                    self.drain_worker(i);
                }
            }
        }
        self.admin_timeouts(now);
        self.idle.expire(self.poll.registry(), now);
        self.held_blocked = false;
        if !self.sched_batch && self.last_continued.is_some_and(|t| now.duration_since(t) >= REQUESTS_HOLD) {
            self.last_continued = None;
            self.apply_master_sched();
        }
        self.upgrade_timeout(now);
        self.proxy_timeouts(now);
        if let Some((every, last)) = self.watchdog {
            if now.duration_since(last) >= every {
                upgrade::notify("WATCHDOG=1");
                self.watchdog = Some((every, now));
            }
        }
        self.rolling_step();
        self.maybe_announce_ready();
        if self.phase == Phase::Running {
            for slot in 0..self.slots.len() {
                let due = self.slots[slot].respawn_at.is_some_and(|t| now >= t);
                if due && self.slot_worker(slot).is_none() {
                    if let Err(e) = self.spawn_worker(slot) {
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

    // ---- accepting and dispatching ----

    /// May `w` get a connection now? `proven_can`: some proven worker could take one
    /// (then unproven workers get none; see `Worker::proven`).
    fn eligible(&self, w: &Worker, proven_can: bool) -> bool {
        self.could_take(w) && (!proven_can || w.proven(self.now))
    }

    /// Whether some proven worker could take a connection now.
    fn proven_can_take(&self) -> bool {
        self.workers.iter().any(|w| w.proven(self.now) && self.could_take(w))
    }

    /// Eligible but for the preference for proven workers.
    fn could_take(&self, w: &Worker) -> bool {
        matches!(w.state, State::Running | State::Retiring)
            && w.is_ready(self.now)
            && w.chan.is_some()
            && w.blocked_since.is_none()
            && !(w.reports_load() && self.cfg.max_conns_per_worker.is_some_and(|k| w.active() >= k))
    }

    fn fill_candidates(&mut self) {
        self.cand.clear();
        let proven_can = self.proven_can_take();
        for i in 0..self.workers.len() {
            let eligible = self.eligible(&self.workers[i], proven_can);
            let behind = self.workers[i].oldest_unacked().is_some();
            let w = &self.workers[i];
            self.cand.push(Candidate { eligible, active: w.active(), reports_load: w.reports_load(), behind });
        }
    }

    fn accept_pass(&mut self, now: Instant) {
        if self.phase != Phase::Running || self.paused_until.is_some() {
            return;
        }
        // Connections taken back from dead workers go first. Next requests of
        // handed-back connections waiting for a worker with room (QUEUE_DEPTH) do not
        // hold up new connections, which do not wait for that room.
        if !self.held.is_empty() {
            let held: Vec<Held> = self.held.drain(..).collect();
            self.dispatch_batch(held);
            if !self.held.is_empty() && !self.held_blocked {
                return;
            }
        }
        if !self.listeners.iter().any(|l| l.readable) {
            // Most loop turns (worker frames, timers) have nothing to accept: skip the
            // capacity scan over every worker.
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        let mut room = self.capacity();
        for li in 0..self.listeners.len() {
            let mut n = 0;
            if self.listeners[li].proxy && self.pending_proxy.iter().flatten().count() >= MAX_PENDING_PROXY {
                continue;
            }
            while self.listeners[li].readable && n < ACCEPT_BATCH && room > 0 {
                match self.listeners[li].listener.accept() {
                    Ok(fd) => {
                        n += 1;
                        room -= 1;
                        self.totals.accepted += 1;
                        if self.listeners[li].proxy {
                            self.proxy_accepted(fd, li as u16, now, &mut batch);
                        } else {
                            batch.push(Held { fd, listener: li as u16, addrs: None, flags: 0 });
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.listeners[li].readable = false,
                    Err(e) if listener::accept_error_is_transient(&e) => {
                        self.totals.accept_transient += 1;
                        debug!("accept: {e} (skipped)");
                    }
                    Err(e) => {
                        if listener::accept_error_is_exhaustion(&e) {
                            self.totals.accept_exhausted += 1;
                        }
                        self.pause_accepting(now, &e);
                        break;
                    }
                }
            }
        }
        if !batch.is_empty() {
            self.dispatch_batch(std::mem::take(&mut batch));
        }
        self.batch = batch;
    }

    /// How many connections the workers can take right now: the master accepts no
    /// more than that, so clients beyond it wait in the kernel backlog, not here.
    fn capacity(&self) -> usize {
        let mut room = 0usize;
        let proven_can = self.proven_can_take();
        for w in &self.workers {
            if !self.eligible(w, proven_can) {
                continue;
            }
            room += match self.cfg.max_conns_per_worker {
                Some(k) if w.reports_load() => k.saturating_sub(w.active()) as usize,
                _ => ACCEPT_BATCH,
            };
            if room >= ACCEPT_BATCH * self.listeners.len().max(1) {
                break;
            }
        }
        room
    }

    fn pause_accepting(&mut self, now: Instant, e: &io::Error) {
        self.paused_until = Some(now + ACCEPT_PAUSE);
        self.pause_started.get_or_insert(now);
        self.next_tick = self.next_tick.min(now + ACCEPT_PAUSE);
        let quiet = self.last_accept_log.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
        if !quiet {
            self.last_accept_log = Some(now);
            warn!(
                "accept failed: {e}; pausing accepts for {ACCEPT_PAUSE:?} ({} times so far)",
                self.totals.accept_exhausted
            );
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        id
    }

    /// Hands each connection to a worker chosen by policy, one CONN frame per worker
    /// (several connections per frame for workers that announced BATCH). What cannot
    /// be placed now is held and placed in the next turn.
    fn dispatch_batch(&mut self, conns: Vec<Held>) {
        self.fill_candidates();
        let mut plan: Vec<Vec<(ConnItem, OwnedFd)>> = (0..self.workers.len()).map(|_| Vec::new()).collect();
        let now = self.now;
        let mut requests_in: Vec<u32> = self.workers.iter_mut().map(|w| w.requests_in(now, REQUEST_AGE)).collect();
        // While stopping, what is held goes out as fast as the workers take it.
        let queueing = self.phase == Phase::Running;
        for h in conns {
            let continued = h.flags & wire::flags::CONTINUED != 0;
            let pick = if continued && queueing {
                // The next request of a kept-alive client waits here, where every
                // worker can take it, rather than in the queue of a worker that is
                // already working on QUEUE_DEPTH of them (one of which may be long):
                // one queue in front of all the workers is what keeps the tail short.
                // A worker that keeps its connections (not handing back) is not
                // counted: its requests in progress are not known.
                self.cont_cand.clear();
                for (k, c) in self.cand.iter().enumerate() {
                    let full = self.workers[k].returning(self.now, RETURNING) && requests_in[k] >= QUEUE_DEPTH;
                    self.cont_cand.push(Candidate { eligible: c.eligible && !full, ..*c });
                }
                self.balancer.pick(&self.cont_cand)
            } else {
                self.balancer.pick(&self.cand)
            };
            let Some(i) = pick else {
                self.held_blocked |= continued;
                self.held.push_back(h);
                continue;
            };
            if continued {
                requests_in[i] += 1;
            }
            // Later picks in this batch see the load this one adds.
            if self.workers[i].reports_load() {
                let c = &mut self.cand[i];
                c.active += 1;
                c.behind |= self.workers[i].caps & cap::ACK != 0;
                if self.cfg.max_conns_per_worker.is_some_and(|k| c.active >= k) {
                    c.eligible = false;
                }
            }
            let id = self.next_id();
            let sock = match self.listeners.get(h.listener as usize).map(|l| l.listener.addr()) {
                Some(ListenAddr::Tcp(_)) => wire::sock::TCP,
                Some(ListenAddr::Unix(_)) => wire::sock::UNIX,
                None => wire::sock::UNKNOWN,
            };
            plan[i].push((ConnItem { id, listener: h.listener, sock, flags: h.flags, addrs: h.addrs }, h.fd));
        }
        for (i, conns) in plan.into_iter().enumerate() {
            if !conns.is_empty() {
                self.send_conns(i, conns);
            }
        }
    }

    /// Sends connections to worker `i`; those it cannot take go back to `held`.
    fn send_conns(&mut self, i: usize, mut conns: Vec<(ConnItem, OwnedFd)>) {
        // Addresses go only to workers that understand CONN_ADDR (they stay in `conns`,
        // and in the in-flight table, for a hand-on to one that does).
        let addrs_ok = self.workers[i].caps & cap::ADDRS != 0;
        // Flags likewise only to workers that know them.
        let flags_ok = self.workers[i].returns();
        let per_frame = match (
            self.workers[i].caps & cap::BATCH != 0,
            addrs_ok && conns.iter().any(|(it, _)| it.addrs.is_some()),
        ) {
            (false, _) => 1,
            (true, false) => wire::MAX_CONNS,
            (true, true) => wire::MAX_CONN_ADDRS,
        };
        let mut items = Vec::with_capacity(per_frame.min(conns.len()));
        while !conns.is_empty() {
            let n = per_frame.min(conns.len());
            items.clear();
            items.extend(conns[..n].iter().map(|(it, _)| ConnItem {
                addrs: it.addrs.filter(|_| addrs_ok),
                flags: if flags_ok { it.flags } else { 0 },
                ..*it
            }));
            wire::encode_conn(&mut self.frame, &items);
            let w = &mut self.workers[i];
            let sent = match w.chan.as_ref() {
                Some(chan) => {
                    let fds: Vec<_> = conns[..n].iter().map(|(_, fd)| fd.as_fd()).collect();
                    fdpass::send_with_fds(chan.as_fd(), &self.frame, &fds)
                }
                None => Err(io::ErrorKind::BrokenPipe.into()),
            };
            match sent {
                Ok(_) => {
                    let track = w.ready && w.caps & (cap::ACK | cap::DONE) != 0;
                    let keep = w.caps & cap::ACK != 0;
                    for (item, fd) in conns.drain(..n) {
                        w.dispatched += 1;
                        if track && item.id >= w.tracked_from {
                            w.track(
                                item.id,
                                Inflight {
                                    fd: keep.then_some(fd),
                                    listener: item.listener,
                                    addrs: item.addrs,
                                    flags: item.flags,
                                },
                                self.now,
                            );
                            if keep {
                                w.ack_queue.push_back((item.id, self.now));
                            }
                        }
                        // Otherwise `fd` drops here: the worker has its own copy.
                    }
                    self.totals.dispatched += n as u64;
                    if let Some(s) = self.slots.get_mut(w.slot) {
                        s.dispatched += n as u64;
                    }
                    // Not while stopping (connections handed out then are the last).
                    if w.max_requests.is_some_and(|m| w.dispatched >= m)
                        && w.state == State::Running
                        && self.phase == Phase::Running
                    {
                        self.recycle(i);
                    }
                }
                Err(e) => {
                    use rustix::io::Errno;
                    let gone = [Errno::PIPE, Errno::CONNRESET, Errno::NOTCONN]
                        .iter()
                        .any(|x| e.raw_os_error() == Some(x.raw_os_error()))
                        || e.kind() == io::ErrorKind::BrokenPipe;
                    if gone {
                        debug!("send to worker {}: {e}", w.slot);
                        self.channel_closed(i);
                    } else {
                        // Full channel, or the kernel short of memory or of room for
                        // descriptors in flight (ENOBUFS, ENOMEM, ETOOMANYREFS): not the
                        // worker's fault; try again when it is writable.
                        if e.kind() != io::ErrorKind::WouldBlock {
                            warn!("send to worker {}: {e}; will retry", w.slot);
                        }
                        w.blocked_since = Some(Instant::now());
                    }
                    // Nothing of a failed send was transferred: hand these on later.
                    for (item, fd) in conns.drain(..) {
                        self.held.push_back(Held { fd, listener: item.listener, addrs: item.addrs, flags: item.flags });
                    }
                }
            }
        }
    }

    /// The master's own CPU scheduling, as `--master-sched` asks (see
    /// `sys::process::set_master_batch`): at start, at each reload, and when handed-back
    /// connections start or stop flowing. `SCHED_BATCH` suits handing out new
    /// connections (the master waits for the CPU and hands on in larger batches); but
    /// while it places requests of kept-alive connections, every request waits for the
    /// master, which then runs as `SCHED_OTHER` (woken, it gets the CPU at once) until a
    /// second after the last one.
    pub(super) fn apply_master_sched(&mut self) {
        let placing_requests = self.last_continued.is_some_and(|t| self.now.duration_since(t) < REQUESTS_HOLD);
        let batch = self.cfg.master_sched == crate::config::MasterSched::Batch && !placing_requests;
        match crate::sys::process::set_master_batch(batch) {
            Ok(now) => {
                self.sched_batch = now;
                debug!("master scheduling: {}", if now { "SCHED_BATCH" } else { "as started" })
            }
            Err(e) => warn!("master scheduling: cannot change it ({e}); running as it was"),
        }
    }

    /// Replaces worker `i` by a fresh one; the old one keeps serving until the new one
    /// is ready, then drains.
    fn recycle(&mut self, i: usize) {
        let (slot, pid, n) = (self.workers[i].slot, self.workers[i].pid, self.workers[i].dispatched);
        info!("worker {slot} (pid {pid}) took {n} connections: recycling it");
        self.totals.recycled += 1;
        self.recycle_quiet(i);
    }

    /// Starts a successor for worker `i`'s slot; `i` drains once it is ready.
    fn recycle_quiet(&mut self, i: usize) {
        let slot = self.workers[i].slot;
        self.workers[i].state = State::Retiring;
        if let Err(e) = self.spawn_worker(slot) {
            error!("{e}; worker {slot} keeps running");
            self.workers[i].state = State::Running;
            self.workers[i].max_requests = None;
        }
    }
}

/// The index of a free entry of a token table (its position names the mio token),
/// growing the table if none is free.
/// What the "listening on" line adds for a listener's options.
fn listen_notes(spec: &ListenSpec) -> String {
    let mut notes = String::new();
    if spec.proxy {
        notes.push_str(" (PROXY protocol)");
    }
    if spec.deferred {
        notes.push_str(" (deferred accept)");
    }
    notes
}

/// `--max-idle`, but at most half the master's descriptor limit: the rest stays for
/// connections being accepted and handed out, workers' channels and admin endpoints.
pub(super) fn idle_bound(max_idle: usize, nofile: u64) -> usize {
    max_idle.min((nofile / 2).min(usize::MAX as u64) as usize).clamp(1, idle::MAX_SLOTS)
}

fn free_slot<T>(table: &mut Vec<Option<T>>) -> usize {
    match table.iter().position(Option::is_none) {
        Some(i) => i,
        None => {
            table.push(None);
            table.len() - 1
        }
    }
}

fn caps_names(caps: u32) -> String {
    let names: Vec<&str> = [
        (cap::ACK, "ack"),
        (cap::DONE, "done"),
        (cap::HEARTBEAT, "heartbeat"),
        (cap::BATCH, "batch"),
        (cap::ADDRS, "addrs"),
        (cap::RETURN, "return"),
    ]
    .iter()
    .filter(|(b, _)| caps & b != 0)
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}
