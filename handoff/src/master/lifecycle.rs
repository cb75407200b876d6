//! The master's lifecycle, in one place: start (inherited listeners), reload with a
//! rolling restart, scaling, the zero-downtime upgrade, and the stop phases (linger,
//! hand out, drain, exit). [`Lifecycle`] owns the phase and everything a transition
//! waits on; a transition reaches the other parts through their methods, given
//! explicitly as [`Parts`].
//!
//! **Reload.** SIGHUP or `reload`: the config is read again and applied, and each
//! slot's worker replaced in turn, the old one drained only once its successor is
//! proven. The reload is followed to its end: it succeeds when every slot has a
//! proven worker of its own, and fails when a slot's new workers fail to start
//! [`RELOAD_FAILED_STARTS`](super::supervisor::RELOAD_FAILED_STARTS) times in a row,
//! or one is not proven within `--ready-timeout` (see `Workers::reload_verdict`).
//! A failed reload stops its unproven workers, gives each slot back to the old worker
//! it was replacing (never drained, it served all along) and puts the previous
//! settings back; its reason is logged, shown by `handoff status`, counted in the
//! metrics and told to systemd. Its record ([`ReloadStatus`]) is what `handoff ctl
//! reload` waits on.
//!
//! **Stop.** SIGTERM, SIGINT or `stop`: with `--drain-delay`, health turns 503 and the
//! master goes on accepting until then (lingering). Then it stops accepting, hands
//! out what it accepted or held (and the kernel's backlog), waiting at most
//! [`PROXY_HEADER_TIMEOUT`] for PROXY headers on their way, sends DRAIN to every
//! worker, and leaves once they exit, or kills them after `--shutdown-timeout`.
//!
//! **Upgrade (SIGUSR2).** The old master starts the binary again (the path it was
//! started from, so a binary replaced on disk is the one that runs), with the same
//! arguments. The new master inherits the listening sockets (their numbers in
//! `HANDOFF_UPGRADE_FDS`) and a pipe (`HANDOFF_UPGRADE_READY_FD`). It starts its own
//! workers and, once every one is ready, writes one byte to the pipe. Only then does
//! the old master stop accepting and drain its workers. Both accept on the same kernel
//! sockets meanwhile, so no client is refused or reset. If the new master exits or
//! closes the pipe without writing, the old one logs it and carries on. If the old
//! master is stopped (SIGTERM, SIGINT, SIGQUIT, `stop`) before the new one took over,
//! it stops the new one too (SIGTERM) and waits for it within its own stop's deadline;
//! and a new master gets SIGTERM from the kernel if the old one dies first
//! (`PR_SET_PDEATHSIG`, cleared once it takes over): no new binary is left orphaned on
//! the listening sockets.
//!
//! **Socket activation.** systemd passes listening sockets as descriptors 3.. with
//! `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`; the master uses them instead of
//! binding (matching `--listen` addresses, or all of them if none was given).
//!
//! **Notifications.** With `NOTIFY_SOCKET` set, the master reports READY (once its
//! workers are proven), RELOADING (and READY with a STATUS saying how the reload
//! ended), STOPPING and, with `WATCHDOG_USEC`, watchdog pings.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use signal_hook::consts::signal::*;
use tracing::{error, info, warn};

use super::admin::Admin;
use super::dispatch::Dispatcher;
use super::handover::{
    listen_text, monotonic_usec, notify, start_new_master, unix_now, watchdog_interval, Child, READY_TIMEOUT,
};
use super::supervisor::Workers;
use super::{idle_bound, ConfigSource, Source, Stage, Totals, PROXY_HEADER_TIMEOUT};
use crate::config::Config;
use crate::control::ReloadStatus;
use crate::sys::process as sysproc;

/// Where the master is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Running,
    /// Graceful stop: DRAIN sent, waiting until the deadline.
    Stopping {
        deadline: Instant,
    },
    /// Kill everything and leave.
    Exiting,
}

/// The other parts, as a lifecycle transition reaches them.
pub(super) struct Parts<'a> {
    pub(super) cfg: &'a mut Config,
    pub(super) reg: &'a Registry,
    pub(super) workers: &'a mut Workers,
    pub(super) dispatch: &'a mut Dispatcher,
    pub(super) admin: &'a mut Admin,
    /// The time at the top of this loop turn.
    pub(super) now: Instant,
    /// The loop's next housekeeping tick (a transition may bring it forward).
    pub(super) wake: &'a mut Instant,
}

/// A reload under way: what its verdict and its undoing need.
#[derive(Debug)]
struct Reload {
    id: u64,
    /// When it began: the workers started since are its own.
    started: Instant,
    /// The settings before it, put back if it fails (those the old workers run: a
    /// reload that supersedes another keeps the first one's).
    before: Config,
}

/// The phase and what its transitions wait on.
#[derive(Debug)]
pub(super) struct Lifecycle {
    phase: Phase,
    /// `--drain-delay`: a stop was asked for; accepting goes on until then, with
    /// health at 503, so that a load balancer notices first.
    lingering: Option<(Instant, String)>,
    /// Stopping, with connections still to hand out (a PROXY header on its way, or
    /// no worker free to take one): the workers are drained once there are none, or
    /// at this instant.
    drain_at: Option<Instant>,
    interrupts: u32,
    /// Slots waiting for a rolling restart.
    rolling: VecDeque<usize>,
    /// The reload under way, if any.
    reload: Option<Reload>,
    /// The last reload's record, for `handoff status`.
    last_reload: Option<ReloadStatus>,
    /// Reloads asked for, and those that failed (refused, or their workers did not
    /// become ready).
    reloads: u64,
    reloads_failed: u64,
    /// A new master being started by SIGUSR2.
    upgrade: Option<Child>,
    /// The pid of a new master this one stopped before it took over (this one is
    /// stopping): waited for before exiting.
    abandoned: Option<u32>,
    /// This master was started by an upgrade: tell the old one once ready.
    upgrade_ready: Option<OwnedFd>,
    ready_notified: bool,
    /// When to send the next systemd watchdog ping.
    watchdog: Option<(Duration, Instant)>,
    /// The binary to start on upgrade: the path this one was started from.
    exe: PathBuf,
    /// Where the settings came from, for a reload.
    source: Option<ConfigSource>,
    started_at: Instant,
}

impl Lifecycle {
    pub(super) fn new(upgrade_ready: Option<OwnedFd>) -> Lifecycle {
        Lifecycle {
            phase: Phase::Running,
            lingering: None,
            drain_at: None,
            interrupts: 0,
            rolling: VecDeque::new(),
            reload: None,
            last_reload: None,
            reloads: 0,
            reloads_failed: 0,
            upgrade: None,
            abandoned: None,
            upgrade_ready,
            ready_notified: false,
            watchdog: watchdog_interval().map(|d| (d, Instant::now())),
            exe: std::env::current_exe().unwrap_or_else(|_| "handoff".into()),
            source: None,
            started_at: Instant::now(),
        }
    }

    /// Remembers where the settings came from, for a reload.
    pub(super) fn set_source(&mut self, source: ConfigSource) {
        self.source = Some(source);
    }

    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    /// Not stopping (lingering counts as running: it still accepts).
    pub(super) fn running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// How far a stop has come, as the dispatcher needs it.
    pub(super) fn stage(&self) -> Stage {
        match (self.phase, self.drain_at) {
            (Phase::Running, _) => Stage::Running,
            (_, Some(_)) => Stage::HandingOut,
            _ => Stage::Draining,
        }
    }

    /// This master was started by an upgrade and has not told the old one yet.
    pub(super) fn upgraded(&self) -> bool {
        self.upgrade_ready.is_some()
    }

    /// Stopping with connections still to hand out before the workers drain.
    pub(super) fn handing_out(&self) -> bool {
        self.drain_at.is_some()
    }

    pub(super) fn uptime(&self, now: Instant) -> Duration {
        now.duration_since(self.started_at)
    }

    /// The phase as `handoff status` names it.
    pub(super) fn phase_name(&self) -> &'static str {
        match (self.phase, self.upgrade.is_some()) {
            _ if self.lingering.is_some() => "draining",
            (Phase::Running, false) => "running",
            (Phase::Running, true) => "upgrading",
            _ => "stopping",
        }
    }

    /// The health endpoint's verdict: ready, or why not.
    pub(super) fn health(&self, workers: &Workers, now: Instant) -> Result<(), &'static str> {
        let ready = self.phase == Phase::Running
            && self.lingering.is_none()
            && self.upgrade.is_none()
            && workers.any_ready(now);
        if ready {
            return Ok(());
        }
        Err(match (self.phase, self.upgrade.is_some()) {
            _ if self.lingering.is_some() => "draining\n",
            (Phase::Running, true) => "upgrading\n",
            (Phase::Running, false) => "no worker ready\n",
            _ => "draining\n",
        })
    }

    /// A signal other than SIGCHLD (which the master reaps with).
    pub(super) fn signal(&mut self, sig: i32, p: &mut Parts<'_>) {
        if matches!(sig, SIGTERM | SIGINT | SIGQUIT) {
            self.stop_upgrade(p.reg);
        }
        match sig {
            SIGTERM => self.begin_stop("SIGTERM", true, p),
            SIGINT => {
                self.interrupts += 1;
                if self.interrupts > 1 {
                    info!("second SIGINT: stopping now");
                    self.phase = Phase::Exiting;
                    self.lingering = None;
                } else {
                    self.begin_stop("SIGINT", true, p);
                }
            }
            SIGQUIT => {
                info!("SIGQUIT: stopping now");
                self.phase = Phase::Exiting;
                self.lingering = None;
            }
            SIGTTIN => self.scale(p.workers.slot_count() + 1, p),
            SIGTTOU => self.scale(p.workers.slot_count().saturating_sub(1), p),
            SIGHUP => {
                info!("SIGHUP: reloading the configuration");
                let _ = self.reload("SIGHUP", p);
            }
            SIGUSR2 => self.start_upgrade(p),
            _ => {}
        }
    }

    // ---- stopping ----

    /// Stops accepting and drains every worker. `unlink`: remove Unix listener files
    /// (not when a new master goes on using them).
    pub(super) fn begin_stop(&mut self, why: &str, unlink: bool, p: &mut Parts<'_>) {
        if self.phase != Phase::Running || self.lingering.is_some() {
            return;
        }
        // An upgrade that has not taken over ends with this master (`upgrade` is
        // cleared before the stop that follows a successful one).
        self.stop_upgrade(p.reg);
        notify("STOPPING=1");
        let delay = p.cfg.drain_delay;
        if unlink && !delay.is_zero() {
            // Health says 503 from now on; keep serving until the balancer has noticed.
            info!("{why}: health is 503; still accepting for {delay:?} (--drain-delay) before draining");
            self.lingering = Some((Instant::now() + delay, why.to_string()));
            *p.wake = (*p.wake).min(Instant::now() + delay);
            return;
        }
        self.stop_now(why, unlink, p);
    }

    fn stop_now(&mut self, why: &str, unlink: bool, p: &mut Parts<'_>) {
        self.lingering = None;
        // Idle connections whose next request has started to arrive are handed out
        // with the backlog below; the others are closed.
        p.dispatch.release_idle(p.reg, Stage::Running);
        // Hand out what the master holds, and what is already in the kernel's backlog:
        // those clients finished their handshake and would be reset when the listener
        // closes (after an upgrade the new master would take them, but the old
        // workers can serve them as well before they drain).
        let now = Instant::now();
        p.dispatch.accept_backlog(p.workers, now, p.cfg, p.reg, p.wake);
        info!(
            "{why}: stopping gracefully (draining {} workers, at most {:?})",
            p.workers.len(),
            p.cfg.shutdown_timeout
        );
        // The deadline is set again when the workers are told to drain (`drain_all`).
        self.phase = Phase::Stopping { deadline: now + PROXY_HEADER_TIMEOUT + p.cfg.shutdown_timeout };
        p.dispatch.close_listeners(p.reg, unlink);
        self.rolling.clear();
        let (pending, held) = p.dispatch.undelivered();
        if pending > 0 || held > 0 {
            // Accepted like the backlog above, but not handed out yet: their balancer's
            // PROXY header is still on its way (during an upgrade too: the new master
            // cannot take them over), or no worker could take them (all at
            // --max-conns-per-worker, or they were a dead worker's). The workers drain
            // once these are handed out, or after the header's own time limit.
            info!(
                "{why}: handing out {} connection(s) before draining ({pending} waiting for their PROXY header; at most {:?})",
                pending + held,
                PROXY_HEADER_TIMEOUT
            );
            // Checked each loop turn, which housekeeping's tick (100 ms) bounds.
            self.drain_at = Some(now + PROXY_HEADER_TIMEOUT);
            return;
        }
        self.drain_all(p);
    }

    /// While stopping: hands out the connections whose PROXY header has come (and any
    /// a worker can take now), and drains the workers once none is left, or when
    /// `drain_at` has come.
    pub(super) fn hand_out_then_drain(&mut self, p: &mut Parts<'_>) {
        p.dispatch.hand_out(p.workers, p.now, self.stage(), p.cfg, p.reg);
        let (pending, held) = p.dispatch.undelivered();
        let waiting = pending > 0 || held > 0;
        if !waiting || self.drain_at.is_some_and(|t| p.now >= t) {
            self.drain_at = None;
            self.drain_all(p);
        }
    }

    /// Sends DRAIN to every worker; what is still not handed out is closed, which
    /// tells its client. The workers get the whole --shutdown-timeout from now.
    fn drain_all(&mut self, p: &mut Parts<'_>) {
        let (pending, held) = p.dispatch.undelivered();
        let left = pending + held;
        if left > 0 {
            warn!("closing {left} connection(s) that no worker could take (or whose PROXY header did not come)");
        }
        p.dispatch.close_undelivered(p.reg);
        self.phase = Phase::Stopping { deadline: Instant::now() + p.cfg.shutdown_timeout };
        p.workers.drain_all(p.now);
    }

    // ---- reload and scale ----

    /// Re-reads the config; on success applies it with a rolling restart, which
    /// [`Lifecycle::tick`] follows to its end. `trigger`: `SIGHUP` or `control`.
    /// Returns the reload's id and what it is doing, or why it was refused.
    pub(super) fn reload(&mut self, trigger: &'static str, p: &mut Parts<'_>) -> Result<(u64, String), String> {
        if self.phase != Phase::Running {
            return Err("stopping; not reloading".into());
        }
        let Some(src) = &self.source else {
            return Err("this master has no config source to reload".into());
        };
        self.reloads += 1;
        let id = self.reloads;
        let new = match src.load() {
            Ok(c) => c,
            Err(e) => return Err(self.refused(id, trigger, format!("reload refused, running setup unchanged: {e}"))),
        };
        notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        let old_slots = p.workers.slot_count();
        // The settings to go back to are those the old workers run: a reload that
        // supersedes one under way keeps that one's.
        let before = self.reload.as_ref().map_or_else(|| p.cfg.clone(), |r| r.before.clone());
        if let Err(e) = self.apply(new, true, p) {
            let m = self.refused(id, trigger, format!("reload refused, running setup unchanged: {e}"));
            // READY=1 ends the RELOADING=1 above, unless a reload under way will.
            if self.reload.is_none() && self.ready_notified {
                notify("READY=1");
            }
            return Err(m);
        }
        if let Some(r) = self.reload.take() {
            info!("reload #{id} supersedes reload #{}, which was not done", r.id);
        }
        // Its workers start afresh: no backoff carried over, and the verdict counts
        // only their own failures.
        p.workers.reset_failures();
        let n = p.cfg.workers;
        self.rolling = (0..old_slots.min(n)).collect();
        let m = format!(
            "reload #{id}: {n} workers, policy {}; replacing {} workers one by one, each old one drained once its successor is ready",
            p.cfg.policy,
            self.rolling.len()
        );
        info!("{m}");
        self.reload = Some(Reload { id, started: Instant::now(), before });
        self.last_reload = Some(ReloadStatus {
            id,
            state: "in-progress".into(),
            trigger: trigger.into(),
            started_unix: unix_now(),
            finished_unix: None,
            message: m.clone(),
            replaced: 0,
            workers: n,
            ready_timeout_s: p.cfg.ready_timeout.as_secs_f64(),
        });
        Ok((id, m))
    }

    /// Applies settings: listeners, the dispatcher's settings, the worker count.
    /// `strict`: a listener that cannot be bound refuses the whole change (a reload);
    /// otherwise the listeners stay as they are and the rest applies (going back after
    /// a failed reload, which must not fail half-way).
    fn apply(&mut self, mut new: Config, strict: bool, p: &mut Parts<'_>) -> Result<(), String> {
        if new.listen != p.cfg.listen {
            if let Err(e) = p.dispatch.reconcile_listeners(&new.listen, p.reg) {
                if strict {
                    return Err(e);
                }
                warn!("cannot go back to the previous listeners ({e}); keeping {}", listen_text(&p.cfg.listen));
                new.listen = p.cfg.listen.clone();
            }
        }
        let nofile = crate::sys::raise_nofile_limit().unwrap_or(1024);
        p.dispatch.reconfigure(&new, idle_bound(new.max_idle, nofile), p.reg);
        let n = new.workers;
        // The admin endpoints stay as they are: they cannot move under a client.
        let (control, metrics, health) = (p.cfg.control.clone(), p.cfg.metrics, p.cfg.health);
        *p.cfg = Config { control, metrics, health, ..new };
        super::supervisor::warn_short_ready_timeout(p.cfg);
        p.dispatch.apply_sched(p.cfg, p.now);
        self.scale(n, p);
        p.admin.write_registry(&p.dispatch.local_addrs());
        Ok(())
    }

    /// A reload refused before it changed anything: logged, counted, and recorded
    /// (unless another is under way, whose record its waiting clients follow).
    fn refused(&mut self, id: u64, trigger: &'static str, message: String) -> String {
        error!("{message}");
        self.reloads_failed += 1;
        notify(&format!("STATUS={message}"));
        if self.reload.is_none() {
            let now = unix_now();
            self.last_reload = Some(ReloadStatus {
                id,
                state: "failed".into(),
                trigger: trigger.into(),
                started_unix: now,
                finished_unix: Some(now),
                message: message.clone(),
                replaced: 0,
                workers: 0,
                ready_timeout_s: 0.0,
            });
        }
        message
    }

    /// Judges the reload under way: failed if a slot's new workers will not serve (or
    /// the master began to stop), done once every slot has a proven worker of its own
    /// and no old one is left to drain.
    fn reload_progress(&mut self, p: &mut Parts<'_>) {
        let Some(r) = &self.reload else { return };
        if self.phase != Phase::Running {
            let m = format!("reload #{} failed: the master began to stop before it was done", r.id);
            self.reload = None;
            self.settle("failed", m, 0);
            return;
        }
        if let Some(why) = p.workers.reload_verdict() {
            self.fail_reload(&why, p);
            return;
        }
        let mine = p.workers.proven_since(r.started, p.now).len();
        if self.rolling.is_empty() && !p.workers.any_retiring() && mine == p.workers.slot_count() {
            let secs = p.now.duration_since(r.started).as_secs_f64();
            let m = format!("reload #{} done: {mine} workers of the new settings ready in {secs:.1}s", r.id);
            info!("{m}");
            self.reload = None;
            self.settle("ok", m, mine);
        }
    }

    /// The reload under way failed: stop its unproven workers, give their slots back
    /// to the old ones, put the previous settings back, and say so everywhere.
    fn fail_reload(&mut self, why: &str, p: &mut Parts<'_>) {
        let Some(r) = self.reload.take() else { return };
        let stopped = p.workers.abandon_since(r.started, p.now);
        // Workers of the failed settings that did prove themselves (in slots done
        // before another failed) are replaced again, one by one, with the old ones.
        let redo = p.workers.proven_since(r.started, p.now);
        self.rolling.clear();
        self.apply(r.before, false, p).ok();
        p.workers.reset_failures();
        if !redo.is_empty() {
            info!("reload #{}: replacing {} worker(s) of the failed settings with the previous ones", r.id, redo.len());
        }
        self.rolling = redo.iter().copied().collect();
        let stopped = if stopped > 0 { format!(" ({stopped} of its workers stopped)") } else { String::new() };
        let m =
            format!("reload #{} failed: {why}; the old workers keep serving with the previous settings{stopped}", r.id);
        error!("{m}");
        self.reloads_failed += 1;
        self.settle("failed", m, redo.len());
    }

    /// Records how the reload ended (`replaced`: slots its workers filled) and tells
    /// systemd: READY=1 ends its reloading state, if the master had said READY=1
    /// before and is not stopping.
    fn settle(&mut self, state: &str, message: String, replaced: usize) {
        let ready = if self.ready_notified && self.phase == Phase::Running { "READY=1\n" } else { "" };
        notify(&format!("{ready}STATUS={}", message.replace('\n', " ")));
        if let Some(l) = &mut self.last_reload {
            l.state = state.into();
            l.finished_unix = Some(unix_now());
            l.message = message;
            l.replaced = replaced;
        }
    }

    /// The last reload's record, with how far one under way has come.
    pub(super) fn reload_status(&self, workers: &Workers, now: Instant) -> Option<ReloadStatus> {
        let mut st = self.last_reload.clone()?;
        if let Some(r) = &self.reload {
            st.replaced = workers.proven_since(r.started, now).len();
            st.workers = workers.slot_count();
        }
        Some(st)
    }

    /// Copies this part's counters into `t`.
    pub(super) fn count_into(&self, t: &mut Totals) {
        t.reloads = self.reloads;
        t.reloads_failed = self.reloads_failed;
    }

    pub(super) fn scale(&mut self, n: usize, p: &mut Parts<'_>) {
        if self.phase != Phase::Running || n == 0 || n == p.workers.slot_count() {
            if n == 0 {
                warn!("cannot scale below one worker");
            }
            return;
        }
        info!("scaling from {} to {n} workers", p.workers.slot_count());
        p.workers.resize(n, p.now);
        *p.wake = Instant::now();
    }

    /// Starts one step of a rolling restart, if one is due and none is under way.
    fn rolling_step(&mut self, p: &mut Parts<'_>) {
        if self.phase != Phase::Running || p.workers.any_retiring() {
            return;
        }
        while let Some(slot) = self.rolling.pop_front() {
            if let Some(i) = p.workers.find_running(slot) {
                if let Err(e) = p.workers.recycle_quiet(i, p.cfg, p.reg) {
                    self.fail_reload(&format!("cannot start a new worker {slot}: {e}"), p);
                }
                return;
            }
        }
    }

    // ---- upgrade ----

    /// SIGUSR2: start a new master on the same listeners.
    fn start_upgrade(&mut self, p: &mut Parts<'_>) {
        if self.phase != Phase::Running || self.upgrade.is_some() {
            warn!("SIGUSR2 ignored: an upgrade is under way or the master is stopping");
            return;
        }
        let fds = p.dispatch.listener_fds();
        match start_new_master(&self.exe, &fds) {
            Ok(child) => {
                info!(
                    "SIGUSR2: started new master {} (pid {}); waiting for it to be ready",
                    self.exe.display(),
                    child.pid
                );
                let _ = p.reg.register(
                    &mut SourceFd(&child.ready.as_raw_fd()),
                    Source::Upgrade.token(),
                    Interest::READABLE,
                );
                self.upgrade = Some(child);
            }
            Err(e) => error!("upgrade failed: cannot start {}: {e}; carrying on", self.exe.display()),
        }
    }

    /// The new master's ready pipe is readable: a byte means ready, EOF means it failed.
    pub(super) fn upgrade_event(&mut self, p: &mut Parts<'_>) {
        let Some(child) = &self.upgrade else { return };
        let mut b = [0u8; 1];
        match crate::sys::socket::retry_intr(|| rustix::io::read(&child.ready, &mut b)) {
            Ok(1) => {
                info!("new master (pid {}) is ready: this master stops accepting and drains", child.pid);
                self.end_upgrade(p.reg);
                self.begin_stop("upgrade", false, p);
            }
            Err(rustix::io::Errno::AGAIN) => {}
            _ => {
                let pid = child.pid;
                self.upgrade_failed(&format!("the new master (pid {pid}) gave up before it was ready"), p);
            }
        }
    }

    /// A child that is not a worker exited: if it is the new master, before it was
    /// ready, the upgrade failed. False if `pid` is not the new master.
    pub(super) fn child_exited(&mut self, pid: u32, exit: sysproc::Exit, p: &mut Parts<'_>) -> bool {
        if self.abandoned == Some(pid) {
            info!("the new master (pid {pid}) of the unfinished upgrade exited: {exit}");
            self.abandoned = None;
            return true;
        }
        if self.upgrade.as_ref().is_none_or(|u| u.pid != pid) {
            return false;
        }
        if self.phase == Phase::Running {
            self.upgrade_failed(&format!("the new master (pid {pid}) exited before it was ready ({exit})"), p);
        }
        true
    }

    /// The new master will not take over: stop it if it still runs, take the control
    /// socket path back if it had taken it, and carry on.
    fn upgrade_failed(&mut self, why: &str, p: &mut Parts<'_>) {
        error!("upgrade failed: {why}; carrying on");
        if let Some(child) = &self.upgrade {
            let _ = crate::sys::process::signal(child.pid, rustix::process::Signal::TERM);
        }
        self.end_upgrade(p.reg);
        p.admin.reclaim_control(p.reg);
    }

    /// This master is stopping while a new master it started has not taken over: stop
    /// that one too (gracefully: it may have accepted clients meanwhile).
    fn stop_upgrade(&mut self, reg: &Registry) {
        if let Some(pid) = self.upgrade.as_ref().map(|c| c.pid) {
            warn!("stopping the new master (pid {pid}) too: this master stops before the upgrade took over");
            let _ = crate::sys::process::signal(pid, rustix::process::Signal::TERM);
            self.end_upgrade(reg);
            self.abandoned = Some(pid);
        }
    }

    /// A new master stopped by [`Lifecycle::stop_upgrade`] has not exited yet.
    pub(super) fn waiting_for_upgrade(&self) -> bool {
        self.abandoned.is_some()
    }

    /// This master leaves now: a new master it stopped and that is still there is
    /// killed (its stop had the time of this one's).
    pub(super) fn kill_abandoned(&mut self) {
        if let Some(pid) = self.abandoned.take() {
            warn!("the new master (pid {pid}) has not stopped: SIGKILL");
            let _ = crate::sys::process::signal(pid, rustix::process::Signal::KILL);
        }
    }

    fn end_upgrade(&mut self, reg: &Registry) {
        if let Some(child) = self.upgrade.take() {
            let _ = reg.deregister(&mut SourceFd(&child.ready.as_raw_fd()));
        }
    }

    /// Once every slot has a ready worker: tell systemd, and the old master if this
    /// one was started by an upgrade.
    fn maybe_announce_ready(&mut self, p: &mut Parts<'_>) {
        if self.ready_notified || self.phase != Phase::Running || !self.rolling.is_empty() || self.reload.is_some() {
            return;
        }
        if !p.workers.all_ready(p.now) {
            return;
        }
        self.ready_notified = true;
        if let Some(fd) = self.upgrade_ready.take() {
            // Taking over: from now on this master outlives the old one. Before the
            // byte, or the old one could be gone (and signal us) in between.
            if let Err(e) = sysproc::outlive_parent() {
                warn!("cannot clear the parent-death signal: {e}; this master stops if the old one exits");
            }
            let _ = rustix::io::write(&fd, b"1");
            info!("all workers ready; told the old master to stop");
            notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
        } else {
            info!("all {} workers ready", p.workers.slot_count());
            notify("READY=1");
        }
    }

    // ---- timers ----

    /// The stop's timers, first in a tick: a linger that is over becomes a stop; a
    /// stop past its deadline becomes an exit (true: the tick ends here).
    pub(super) fn tick_stop(&mut self, p: &mut Parts<'_>) -> bool {
        if let Some((until, why)) = &self.lingering {
            // Only from Running: a stop at once (SIGQUIT, a second SIGINT) during the
            // linger has ended it already.
            if p.now >= *until && self.phase == Phase::Running {
                let why = why.clone();
                self.stop_now(&why, true, p);
            }
        }
        if let Phase::Stopping { deadline } = self.phase {
            if p.now >= deadline {
                warn!("shutdown timeout: killing {} workers still running", p.workers.len());
                self.phase = Phase::Exiting;
                self.lingering = None;
                return true;
            }
        }
        false
    }

    /// The other timers: an upgrade that takes too long, the systemd watchdog, the
    /// next rolling step, the READY notification.
    pub(super) fn tick(&mut self, p: &mut Parts<'_>) {
        let now = p.now;
        if self.upgrade.as_ref().is_some_and(|u| now.duration_since(u.started) > READY_TIMEOUT) {
            self.upgrade_failed(&format!("the new master was not ready within {READY_TIMEOUT:?}"), p);
        }
        if let Some((every, last)) = self.watchdog {
            if now.duration_since(last) >= every {
                notify("WATCHDOG=1");
                self.watchdog = Some((every, now));
            }
        }
        self.reload_progress(p);
        self.rolling_step(p);
        self.maybe_announce_ready(p);
    }
}
