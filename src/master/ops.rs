//! Operations on a running master: the control socket, metrics and health endpoints,
//! reload with a rolling restart, and the zero-downtime upgrade.

use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::Interest;
use tracing::{error, info, warn};

use super::admin::{self, AdminConn, AdminKind, Request};
use super::supervisor::State;
use super::upgrade;
use super::{
    AdminServer, ListenerSlot, Master, MasterError, Phase, Source,
};
use crate::control::{AdminCounts, AdminStatus, MasterId, Reply, Status, WorkerStatus};
use crate::listener::{ListenAddr, Listener};
use crate::policy::jain;

impl Master {
    /// Opens the control socket, metrics and health endpoints the config asks for.
    ///
    /// The control socket is always opened (see [`crate::control`] for where): a master
    /// that cannot have one does not start, rather than run unreachable or let another
    /// take its commands.
    pub(super) fn open_admin_servers(&mut self) -> Result<(), MasterError> {
        let dir = crate::control::runtime_dir();
        let stem = crate::control::next_stem();
        let refuse = |path: &std::path::Path, e: crate::control::ControlError| MasterError::Bind {
            addr: ListenAddr::Unix(path.to_path_buf()),
            source: io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()),
            hint: "",
        };
        let registry = match crate::control::prepare_runtime_dir(&dir) {
            Ok(()) => {
                // Entries of masters that died without removing theirs (SIGKILL) go now:
                // the directory holds the living, not a history.
                let _ = crate::control::list_masters_in(&dir);
                Some(dir.join(format!("{stem}.json")))
            }
            // The socket the user named still works; only the listing misses it.
            Err(e) if self.cfg.control.is_some() => {
                warn!("`handoff status` will not list this master: {e}");
                None
            }
            Err(e) => return Err(refuse(&dir.join(format!("{stem}.sock")), e)),
        };
        let path = match &self.cfg.control {
            Some(p) => {
                crate::control::check_socket_path(p).map_err(|e| refuse(p, e))?;
                p.clone()
            }
            None => dir.join(format!("{stem}.sock")),
        };
        // After an upgrade the new master takes over a path named with --control; a
        // default path has the pid in it, so each master has its own.
        let take_over = self.upgrade_ready.is_some() && self.cfg.control.is_some();
        let fd = bind_control(&path, take_over).map_err(|source| MasterError::Bind {
            addr: ListenAddr::Unix(path.clone()),
            hint: if source.kind() == io::ErrorKind::AddrInUse {
                " (another master listens there: `handoff status --list` shows them; give another --control PATH)"
            } else {
                ""
            },
            source,
        })?;
        info!("control socket at {}", path.display());
        self.add_admin(AdminKind::Control, fd, Some(path))?;
        self.admin_state.registry = registry.map(|r| (r, std::process::id()));
        self.write_registry();
        for (kind, addr) in [(AdminKind::Metrics, self.cfg.metrics), (AdminKind::Health, self.cfg.health)] {
            let Some(addr) = addr else { continue };
            let la = ListenAddr::Tcp(addr);
            let l = listen_reuseport(addr).map_err(|source| MasterError::Bind {
                addr: la.clone(),
                hint: super::bind_hint(&source),
                source,
            })?;
            info!(
                "{} endpoint on http://{}",
                if kind == AdminKind::Metrics { "metrics" } else { "health" },
                l.local_addr()
            );
            self.add_admin(kind, l.into(), None)?;
        }
        Ok(())
    }

    /// Writes (or rewrites, after a reload changed the listeners) this master's entry
    /// in the registry that `handoff status` and `handoff ctl` read.
    pub(super) fn write_registry(&self) {
        let Some((reg, _)) = &self.admin_state.registry else { return };
        let control = self.admin.iter().find(|s| s.kind == AdminKind::Control).and_then(|s| s.path.as_ref());
        let Some((control, _)) = control else { return };
        let pid = std::process::id();
        let entry = crate::control::MasterEntry {
            pid,
            start_time: crate::control::process_start_time(pid).unwrap_or(0),
            listeners: self.local_addrs().iter().map(|a| a.to_string()).collect(),
            control: control.clone(),
        };
        if let Err(e) = crate::control::write_entry(reg, &entry) {
            warn!("cannot write {}: {e} (`handoff status` will not list this master)", reg.display());
        }
    }

    fn add_admin(&mut self, kind: AdminKind, fd: OwnedFd, path: Option<std::path::PathBuf>) -> io::Result<()> {
        let i = self.admin.len();
        self.poll.registry().register(&mut SourceFd(&fd.as_raw_fd()), Source::AdminServer(i).token(), Interest::READABLE)?;
        let path = path.and_then(|p| Some((p.clone(), inode(&p)?)));
        self.admin.push(AdminServer { kind, fd, path });
        self.admin_state.serve(kind);
        Ok(())
    }

    /// Removes the control socket file if it is still ours (a new master may have
    /// taken the path over).
    pub(super) fn close_admin_servers(&mut self) {
        if let Some((reg, pid)) = self.admin_state.registry.take() {
            if pid == std::process::id() {
                let _ = std::fs::remove_file(reg);
            }
        }
        for s in self.admin.drain(..) {
            if let Some((p, ino)) = &s.path {
                if inode(p) == Some(*ino) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }

    /// Accepts what waits on admin server `i`. Each endpoint has its own cap, and
    /// spare descriptors for when the master has no other (see [`admin`]).
    pub(super) fn admin_accept(&mut self, i: usize) {
        let Some(kind) = self.admin.get(i).map(|s| s.kind) else { return };
        let mut spent_spare = false;
        loop {
            let fd = match rustix::net::accept_with(
                &self.admin[i].fd,
                rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::INTR) => continue,
                // Out of descriptors: give up a spare for this one.
                Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) if self.admin_state.release_spare(kind) => {
                    spent_spare = true;
                    continue;
                }
                // Out of descriptors with no spare left: what waits is taken at the
                // next housekeeping tick.
                Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) => {
                    self.admin_state.starved = true;
                    break;
                }
                // EAGAIN: all taken; anything else: one failed connection, the next
                // event brings the rest.
                Err(_) => break,
            };
            if std::mem::take(&mut spent_spare) {
                self.admin_state.from_reserve += 1;
            }
            let open = self.admin_conns.iter().flatten().filter(|c| c.kind == kind).count();
            if open >= admin::MAX_CONNS_PER_KIND {
                self.admin_state.refused_full[kind.index()] += 1;
                if self.admin_state.log_refusal(self.now) {
                    warn!(
                        "{} endpoint: {} connections open, closing new ones ({} so far)",
                        kind_name(kind),
                        admin::MAX_CONNS_PER_KIND,
                        self.admin_state.refused_full[kind.index()]
                    );
                }
                continue; // `fd` drops: closed
            }
            if kind == AdminKind::Control {
                if let Some(why) = peer_refusal(&fd) {
                    self.admin_state.refused_peer += 1;
                    if self.admin_state.log_refusal(self.now) {
                        warn!("control socket: refused a client: {why} ({} so far)", self.admin_state.refused_peer);
                    }
                    let answer =
                        serde_json::to_vec(&Reply { ok: false, message: why, master: None }).unwrap_or_default();
                    // A few bytes into an empty socket buffer: they fit, or the client
                    // sees the connection close, which says the same.
                    let _ = rustix::net::send(&fd, &answer, rustix::net::SendFlags::NOSIGNAL);
                    continue;
                }
            }
            let slot = super::free_slot(&mut self.admin_conns);
            let token = Source::AdminConn(slot).token();
            if self
                .poll
                .registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE | Interest::WRITABLE)
                .is_ok()
            {
                self.admin_conns[slot] = Some(AdminConn::new(kind, fd));
            }
        }
    }

    pub(super) fn admin_conn_event(&mut self, slot: usize) {
        let Some(Some(conn)) = self.admin_conns.get_mut(slot) else { return };
        let finished = if conn.has_response() {
            conn.flush()
        } else {
            match conn.read() {
                Ok(Some(req)) => {
                    let kind = conn.kind;
                    let answer = self.answer(kind, req);
                    let conn = self.admin_conns[slot].as_mut().expect("still there");
                    conn.respond(answer);
                    conn.flush()
                }
                Ok(None) => Ok(false),
                // A control client gets told why (once, if it fits), then the close.
                Err(e) if conn.kind == AdminKind::Control && e.kind() == io::ErrorKind::InvalidData => {
                    let message = format!("{e}: a command is one line of at most {} bytes", admin::MAX_REQUEST);
                    conn.respond(serde_json::to_vec(&Reply { ok: false, message, master: None }).unwrap_or_default());
                    let _ = conn.flush();
                    Err(e)
                }
                Err(e) => Err(e),
            }
        };
        if !matches!(finished, Ok(false)) {
            self.close_admin_conn(slot);
        }
    }

    pub(super) fn close_admin_conn(&mut self, slot: usize) {
        if let Some(c) = self.admin_conns.get_mut(slot).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&c.fd.as_raw_fd()));
            drop(c);
            // Its descriptor slot is free now, before anything else can take it.
            self.admin_state.refill();
        }
    }

    /// Closes admin connections past their deadline; takes back spares given up; and
    /// after an accept that found no descriptor, accepts what waits on each admin
    /// server (its readiness edge came while the master could not take it).
    pub(super) fn admin_timeouts(&mut self, now: Instant) {
        for slot in 0..self.admin_conns.len() {
            if self.admin_conns[slot].as_ref().is_some_and(|c| now.duration_since(c.since) > admin::ADMIN_TIMEOUT) {
                self.close_admin_conn(slot);
            }
        }
        self.admin_state.refill();
        if std::mem::take(&mut self.admin_state.starved) {
            for i in 0..self.admin.len() {
                self.admin_accept(i);
            }
        }
    }

    fn answer(&mut self, kind: AdminKind, req: Request) -> Vec<u8> {
        match (kind, req) {
            (AdminKind::Control, Request::Command(line)) => self.control_command(&line),
            (AdminKind::Metrics, Request::Http { path }) if path == "/metrics" => {
                admin::http_response(200, "text/plain; version=0.0.4", &self.metrics_text())
            }
            (AdminKind::Health, Request::Http { .. }) => {
                let ready = self.phase == Phase::Running
                    && self.lingering.is_none()
                    && self.upgrade.is_none()
                    && self.workers.iter().any(|w| w.ready && w.state == State::Running);
                if ready {
                    admin::http_response(200, "text/plain", "ok\n")
                } else {
                    let why = match (self.phase, self.upgrade.is_some()) {
                        _ if self.lingering.is_some() => "draining\n",
                        (Phase::Running, true) => "upgrading\n",
                        (Phase::Running, false) => "no worker ready\n",
                        _ => "draining\n",
                    };
                    admin::http_response(503, "text/plain", why)
                }
            }
            _ => admin::http_response(404, "text/plain", "not found\n"),
        }
    }

    fn control_command(&mut self, line: &str) -> Vec<u8> {
        let mut words = line.split_whitespace();
        let master = Some(MasterId {
            pid: std::process::id(),
            listeners: self.local_addrs().iter().map(|a| a.to_string()).collect(),
        });
        let reply = |ok: bool, message: String| {
            serde_json::to_vec(&Reply { ok, message, master: master.clone() }).unwrap_or_default()
        };
        match (words.next(), words.next(), words.next()) {
            (Some("status"), None, _) => serde_json::to_vec(&self.status()).unwrap_or_default(),
            (Some("reload"), None, _) => match self.reload() {
                Ok(m) => reply(true, m),
                Err(m) => reply(false, m),
            },
            (Some("stop"), None, _) => {
                self.begin_stop("stop command", true);
                reply(true, "stopping gracefully".into())
            }
            (Some("scale"), Some(n), None) => match n.parse::<usize>() {
                Ok(n) if (1..=4096).contains(&n) => {
                    self.scale(n);
                    reply(true, format!("scaling to {n} workers"))
                }
                _ => reply(false, format!("scale takes a number of workers from 1 to 4096, not {n:?}")),
            },
            (Some("drain"), Some(id), None) => {
                let found = id
                    .parse::<usize>()
                    .ok()
                    .and_then(|slot| self.workers.iter().position(|w| w.slot == slot && w.state == State::Running));
                match found {
                    Some(i) if self.phase == Phase::Running => {
                        self.recycle(i);
                        reply(true, format!("replacing worker {id}: a fresh one first, then draining the old one"))
                    }
                    _ => reply(false, format!("no running worker {id}")),
                }
            }
            _ => reply(false, format!("unknown command {line:?}; try: status, reload, scale N, drain ID, stop")),
        }
    }

    /// A snapshot for `handoff status`.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let phase = match (self.phase, self.upgrade.is_some()) {
            _ if self.lingering.is_some() => "draining",
            (Phase::Running, false) => "running",
            (Phase::Running, true) => "upgrading",
            _ => "stopping",
        };
        Status {
            pid: std::process::id(),
            phase: phase.into(),
            uptime_s: now.duration_since(self.started_at).as_secs_f64(),
            policy: self.balancer.policy().to_string(),
            workers_wanted: self.slots.len(),
            listeners: self.local_addrs().iter().map(|a| a.to_string()).collect(),
            workers: self
                .workers
                .iter()
                .map(|w| WorkerStatus {
                    id: w.slot,
                    pid: w.pid,
                    state: serde_json::to_value(w.state)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    ready: w.ready,
                    uptime_s: now.duration_since(w.started).as_secs_f64(),
                    restarts: self.slots.get(w.slot).map(|s| s.restarts).unwrap_or(0),
                    dispatched: w.dispatched,
                    active: w.active(),
                    unacked: w.unacked(),
                })
                .collect(),
            idle: self.idle.len(),
            totals: self.totals(),
            fairness: self.fairness(),
            admin: self.admin_status(),
        }
    }

    fn admin_status(&self) -> AdminStatus {
        let counts = |f: &dyn Fn(AdminKind) -> u64| AdminCounts {
            control: f(AdminKind::Control),
            metrics: f(AdminKind::Metrics),
            health: f(AdminKind::Health),
        };
        AdminStatus {
            open: counts(&|k| self.admin_conns.iter().flatten().filter(|c| c.kind == k).count() as u64),
            refused_full: counts(&|k| self.admin_state.refused_full[k.index()]),
            refused_peer: self.admin_state.refused_peer,
            from_reserve: self.admin_state.from_reserve,
        }
    }

    /// The counters, with the output dropped so far (kept where it is counted, read
    /// only when someone asks).
    fn totals(&self) -> super::Totals {
        let mut t = self.totals.clone();
        t.idle_timeouts = self.idle.closed.timeouts;
        t.idle_evicted = self.idle.closed.evicted;
        t.worker_output_dropped = self.forward.dropped_total + crate::sys::stderr_dropped();
        t
    }

    fn fairness(&self) -> f64 {
        let per_slot: Vec<u64> = self.slots.iter().map(|s| s.dispatched).collect();
        jain(&per_slot)
    }

    fn metrics_text(&self) -> String {
        let mut o = String::new();
        let t = &self.totals();
        let mut counter = |name: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP handoff_{name} {help}\n# TYPE handoff_{name} counter\nhandoff_{name} {v}");
        };
        counter("connections_accepted_total", "Connections accepted by the master.", t.accepted as f64);
        counter("connections_dispatched_total", "Connections handed to workers.", t.dispatched as f64);
        counter(
            "connections_handed_on_total",
            "Connections taken back from dead workers and handed on.",
            t.redispatched as f64,
        );
        counter(
            "connections_lost_total",
            "Connections lost with a dead worker that had taken them.",
            t.lost_with_worker as f64,
        );
        counter(
            "accept_paused_seconds_total",
            "Time accepting was paused after accept errors.",
            t.paused.as_secs_f64(),
        );
        counter(
            "connections_returned_total",
            "Idle keep-alive connections workers handed back to the master.",
            t.returned as f64,
        );
        counter(
            "connections_continued_total",
            "Handed-back connections dispatched again for their next request.",
            t.continued as f64,
        );
        counter("workers_started_total", "Worker processes started.", t.spawned as f64);
        counter("workers_recycled_total", "Workers replaced after --max-requests.", t.recycled as f64);
        counter(
            "worker_output_dropped_bytes_total",
            "Bytes of worker stderr and master log dropped: the master's stderr was not being read.",
            t.worker_output_dropped as f64,
        );
        let _ = writeln!(
            o,
            "# HELP handoff_accept_errors_total Accept errors by kind.\n# TYPE handoff_accept_errors_total counter"
        );
        let _ = writeln!(o, "handoff_accept_errors_total{{kind=\"exhaustion\"}} {}", t.accept_exhausted);
        let _ = writeln!(o, "handoff_accept_errors_total{{kind=\"transient\"}} {}", t.accept_transient);
        let _ = writeln!(
            o,
            "# HELP handoff_idle_closed_total Idle connections held by the master and closed, by reason.\n# TYPE handoff_idle_closed_total counter"
        );
        for (reason, n) in [
            ("hangup", t.idle_hangups),
            ("timeout", t.idle_timeouts),
            ("evicted", t.idle_evicted),
            ("stop", t.idle_closed_at_stop),
        ] {
            let _ = writeln!(o, "handoff_idle_closed_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP handoff_idle_connections Idle keep-alive connections the master holds.\n# TYPE handoff_idle_connections gauge\nhandoff_idle_connections {}",
            self.idle.len()
        );
        let _ = writeln!(o, "# HELP handoff_worker_kills_total Workers killed by the master, by reason.\n# TYPE handoff_worker_kills_total counter");
        let _ = writeln!(o, "handoff_worker_kills_total{{reason=\"protocol\"}} {}", t.protocol_kills);
        let _ = writeln!(o, "handoff_worker_kills_total{{reason=\"hung\"}} {}", t.hung_kills);
        let _ = writeln!(
            o,
            "# HELP handoff_workers Worker slots wanted.\n# TYPE handoff_workers gauge\nhandoff_workers {}",
            self.slots.len()
        );
        let _ = writeln!(o, "# HELP handoff_fairness_index Jain's index of connections dispatched per worker slot (1 = even).\n# TYPE handoff_fairness_index gauge\nhandoff_fairness_index {}", self.fairness());
        let a = self.admin_status();
        let _ = writeln!(o, "# HELP handoff_admin_connections Connections open to the master's own endpoints.\n# TYPE handoff_admin_connections gauge");
        let _ = writeln!(o, "# HELP handoff_admin_refused_total Connections to the master's own endpoints refused, by reason: full (the endpoint's cap), peer (a control client of another user).\n# TYPE handoff_admin_refused_total counter");
        for (name, open, full) in [
            ("control", a.open.control, a.refused_full.control),
            ("metrics", a.open.metrics, a.refused_full.metrics),
            ("health", a.open.health, a.refused_full.health),
        ] {
            let _ = writeln!(o, "handoff_admin_connections{{endpoint=\"{name}\"}} {open}");
            let _ = writeln!(o, "handoff_admin_refused_total{{endpoint=\"{name}\",reason=\"full\"}} {full}");
        }
        let _ = writeln!(o, "handoff_admin_refused_total{{endpoint=\"control\",reason=\"peer\"}} {}", a.refused_peer);
        let _ = writeln!(o, "# HELP handoff_admin_reserve_used_total Admin connections accepted with a reserved descriptor (the master had no other).\n# TYPE handoff_admin_reserve_used_total counter\nhandoff_admin_reserve_used_total {}", a.from_reserve);
        type Field = fn(&Master, usize) -> f64;
        let per_slot: [(&str, &str, &str, Field); 4] = [
            ("worker_dispatched_total", "counter", "Connections handed to the workers of this slot.", |m, s| {
                m.slots[s].dispatched as f64
            }),
            ("worker_restarts_total", "counter", "Workers started in this slot after the first.", |m, s| {
                m.slots[s].restarts as f64
            }),
            ("worker_active", "gauge", "Active connections of the slot's workers (from DONE).", |m, s| {
                m.workers.iter().filter(|w| w.slot == s).map(|w| w.active() as f64).sum()
            }),
            ("worker_unacked", "gauge", "Connections sent to the slot's workers and not yet ACKed.", |m, s| {
                m.workers.iter().filter(|w| w.slot == s).map(|w| w.unacked() as f64).sum()
            }),
        ];
        for (name, ty, help, f) in per_slot {
            let _ = writeln!(o, "# HELP handoff_{name} {help}\n# TYPE handoff_{name} {ty}");
            for s in 0..self.slots.len() {
                let _ = writeln!(o, "handoff_{name}{{worker=\"{s}\"}} {}", f(self, s));
            }
        }
        o
    }

    /// Re-reads the config; on success applies it with a rolling restart.
    pub(super) fn reload(&mut self) -> Result<String, String> {
        if self.phase != Phase::Running {
            return Err("stopping; not reloading".into());
        }
        let Some(src) = &self.source else {
            return Err("this master has no config source to reload".into());
        };
        let new = match src.load() {
            Ok(c) => c,
            Err(e) => {
                error!("reload refused, running setup unchanged: {e}");
                return Err(format!("reload refused, running setup unchanged: {e}"));
            }
        };
        upgrade::notify("RELOADING=1");
        if new.listen != self.cfg.listen {
            if let Err(e) = self.reconcile_listeners(&new.listen) {
                error!("reload refused, running setup unchanged: {e}");
                upgrade::notify("READY=1");
                return Err(format!("reload refused, running setup unchanged: {e}"));
            }
        }
        let old_slots = self.slots.len();
        self.balancer.set_policy(new.policy);
        let nofile = crate::sys::raise_nofile_limit().unwrap_or(1024);
        self.idle.set_limits(self.poll.registry(), super::idle_bound(new.max_idle, nofile), new.keepalive_timeout);
        let n = new.workers;
        // The admin endpoints stay as they are: they cannot move under a client.
        let (control, metrics, health) = (self.cfg.control.clone(), self.cfg.metrics, self.cfg.health);
        self.cfg = super::Config { control, metrics, health, ..new };
        self.apply_master_sched();
        self.scale(n);
        self.rolling = (0..old_slots.min(n)).collect();
        self.ready_notified = false;
        self.write_registry();
        let m = format!(
            "reloaded: {n} workers, policy {}; replacing {} workers one by one",
            self.cfg.policy,
            self.rolling.len()
        );
        info!("{m}");
        Ok(m)
    }

    /// Opens listeners that the new config adds and closes those it drops; keeps the
    /// ones that stay (their sockets, and their queued clients, are untouched).
    fn reconcile_listeners(&mut self, want: &[crate::listener::ListenSpec]) -> Result<(), String> {
        // Match on the configured address, or the bound one (port 0 resolved).
        let same = |l: &ListenerSlot, addr: &ListenAddr| l.listener.addr() == addr || &l.listener.local_addr() == addr;
        // Bind every new address first: if one fails, nothing has changed yet.
        let mut fresh: Vec<Option<Listener>> = Vec::new();
        for spec in want {
            let kept = self.listeners.iter().any(|l| same(l, &spec.addr));
            let twice = want.iter().filter(|w| w.addr == spec.addr).count() > 1;
            if twice {
                return Err(format!("{} is listed twice", spec.addr));
            }
            fresh.push(if kept {
                None
            } else {
                match Listener::bind(&spec.addr) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        for l in fresh.into_iter().flatten() {
                            l.unlink();
                        }
                        return Err(format!("cannot listen on {}: {e}", spec.addr));
                    }
                }
            });
        }
        // Tokens follow positions: deregister everything, then register the new list.
        for l in &self.listeners {
            let _ = self.poll.registry().deregister(&mut SourceFd(&l.listener.as_fd().as_raw_fd()));
        }
        let mut old: Vec<Option<ListenerSlot>> = self.listeners.drain(..).map(Some).collect();
        let mut next = Vec::with_capacity(want.len());
        for (spec, new) in want.iter().zip(fresh) {
            let mut slot = match new {
                Some(listener) => {
                    info!("listening on {}{}", listener.local_addr(), super::listen_notes(spec));
                    ListenerSlot { listener, readable: true, proxy: spec.proxy, deferred: false }
                }
                None => {
                    let p = old.iter().position(|o| o.as_ref().is_some_and(|l| same(l, &spec.addr))).expect("kept");
                    let mut l = old[p].take().expect("present");
                    l.proxy = spec.proxy;
                    l.readable = true;
                    l
                }
            };
            // A reload turns it on or off where the configuration changed it (a socket
            // from systemd keeps its own until then); failing to set a socket option is
            // not worth refusing the reload for.
            if slot.deferred != spec.deferred {
                match slot.listener.set_deferred(spec.deferred) {
                    Ok(()) => slot.deferred = spec.deferred,
                    Err(e) => warn!("cannot set TCP_DEFER_ACCEPT on {}: {e}", slot.listener.local_addr()),
                }
            }
            next.push(slot);
        }
        for l in old.into_iter().flatten() {
            info!("closing listener {}", l.listener.local_addr());
            l.listener.unlink();
        }
        for (i, l) in next.iter().enumerate() {
            let fd = l.listener.as_fd().as_raw_fd();
            if let Err(e) =
                self.poll.registry().register(&mut SourceFd(&fd), Source::Listener(i).token(), Interest::READABLE)
            {
                error!("listener {}: cannot watch it: {e}", l.listener.local_addr());
            }
        }
        self.listeners = next;
        Ok(())
    }

    /// Starts one step of a rolling restart, if one is due and none is under way.
    pub(super) fn rolling_step(&mut self) {
        if self.phase != Phase::Running || self.workers.iter().any(|w| w.state == State::Retiring) {
            return;
        }
        while let Some(slot) = self.rolling.pop_front() {
            if let Some(i) = self.workers.iter().position(|w| w.slot == slot && w.state == State::Running) {
                self.recycle_quiet(i);
                return;
            }
        }
    }

    /// SIGUSR2: start a new master on the same listeners.
    pub(super) fn start_upgrade(&mut self) {
        if self.phase != Phase::Running || self.upgrade.is_some() {
            warn!("SIGUSR2 ignored: an upgrade is under way or the master is stopping");
            return;
        }
        let fds: Vec<_> = self.listeners.iter().map(|l| l.listener.as_fd()).collect();
        match upgrade::start_new_master(&self.exe, &fds) {
            Ok(child) => {
                info!(
                    "SIGUSR2: started new master {} (pid {}); waiting for it to be ready",
                    self.exe.display(),
                    child.pid
                );
                let _ = self.poll.registry().register(
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
    pub(super) fn upgrade_event(&mut self) {
        let Some(child) = &self.upgrade else { return };
        let mut b = [0u8; 1];
        match rustix::io::read(&child.ready, &mut b) {
            Ok(1) => {
                info!("new master (pid {}) is ready: this master stops accepting and drains", child.pid);
                self.end_upgrade();
                self.begin_stop("upgrade", false);
            }
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
            _ => {
                let pid = child.pid;
                self.upgrade_failed(&format!("the new master (pid {pid}) gave up before it was ready"));
            }
        }
    }

    /// The new master will not take over: stop it if it still runs, take the control
    /// socket path back if it had taken it, and carry on.
    pub(super) fn upgrade_failed(&mut self, why: &str) {
        error!("upgrade failed: {why}; carrying on");
        if let Some(child) = &self.upgrade {
            let _ = crate::sys::process::signal(child.pid, rustix::process::Signal::TERM);
        }
        self.end_upgrade();
        self.reclaim_control();
    }

    /// Binds the control socket path again if a failed new master took it over.
    fn reclaim_control(&mut self) {
        for idx in 0..self.admin.len() {
            let Some((path, ino)) = self.admin[idx].path.clone() else { continue };
            if inode(&path) == Some(ino) {
                continue;
            }
            match bind_control(&path, true) {
                Ok(fd) => {
                    let old = std::mem::replace(&mut self.admin[idx].fd, fd);
                    let _ = self.poll.registry().deregister(&mut SourceFd(&old.as_raw_fd()));
                    let new = self.admin[idx].fd.as_raw_fd();
                    let _ =
                        self.poll.registry().register(&mut SourceFd(&new), Source::AdminServer(idx).token(), Interest::READABLE);
                    self.admin[idx].path = inode(&path).map(|i| (path.clone(), i));
                    info!("control socket at {} is this master's again", path.display());
                }
                Err(e) => warn!("cannot take the control socket {} back: {e}", path.display()),
            }
        }
    }

    /// Gives up on a new master that is not ready in time.
    pub(super) fn upgrade_timeout(&mut self, now: Instant) {
        if self.upgrade.as_ref().is_some_and(|u| now.duration_since(u.started) > upgrade::READY_TIMEOUT) {
            self.upgrade_failed(&format!("the new master was not ready within {:?}", upgrade::READY_TIMEOUT));
        }
    }

    pub(super) fn end_upgrade(&mut self) {
        if let Some(child) = self.upgrade.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&child.ready.as_raw_fd()));
        }
    }

    /// Once every slot has a ready worker: tell systemd, and the old master if this
    /// one was started by an upgrade.
    pub(super) fn maybe_announce_ready(&mut self) {
        if self.ready_notified || self.phase != Phase::Running || !self.rolling.is_empty() {
            return;
        }
        let now = self.now;
        let all = (0..self.slots.len())
            .all(|s| self.workers.iter().any(|w| w.slot == s && w.state == State::Running && w.is_ready(now)));
        if !all || self.workers.iter().any(|w| w.state == State::Retiring) {
            return;
        }
        self.ready_notified = true;
        if let Some(fd) = self.upgrade_ready.take() {
            let _ = rustix::io::write(&fd, b"1");
            info!("all workers ready; told the old master to stop");
            upgrade::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
        } else {
            info!("all {} workers ready", self.slots.len());
            upgrade::notify("READY=1");
        }
    }
}

fn kind_name(kind: AdminKind) -> &'static str {
    match kind {
        AdminKind::Control => "control",
        AdminKind::Metrics => "metrics",
        AdminKind::Health => "health",
    }
}

/// Why a control client may not steer this master, or `None` if it may: it must run
/// as the master's user or as root (`SO_PEERCRED`, read from the kernel, not claimed
/// by the client).
fn peer_refusal(fd: &OwnedFd) -> Option<String> {
    let me = rustix::process::getuid();
    match rustix::net::sockopt::socket_peercred(fd) {
        Ok(c) if c.uid == me || c.uid.is_root() => None,
        Ok(c) => Some(format!(
            "refused: uid {} (pid {}) may not use this control socket: it answers uid {} and root only",
            c.uid.as_raw(),
            c.pid.as_raw_nonzero(),
            me.as_raw()
        )),
        Err(e) => Some(format!("cannot read the client's credentials: {e}")),
    }
}

fn inode(p: &std::path::Path) -> Option<u64> {
    std::fs::symlink_metadata(p).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

fn bind_control(path: &std::path::Path, take_over: bool) -> io::Result<OwnedFd> {
    if take_over {
        // The old master still listens there; the path now belongs to the new one.
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    // Created 0600 from the start: the umask is process-wide, and the master has one
    // thread.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let l = Listener::bind(&ListenAddr::Unix(path.to_path_buf()));
    rustix::process::umask(old);
    Ok(l?.into())
}

/// A TCP listener with `SO_REUSEPORT`, so that during an upgrade the new master can
/// open its own metrics and health endpoints while the old one still has them.
fn listen_reuseport(addr: std::net::SocketAddr) -> io::Result<Listener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK, None)?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 128)?;
    Listener::from_fd(fd)
}
