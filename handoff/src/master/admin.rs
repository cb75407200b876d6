//! The master's own small servers: the control socket, `/metrics` and the health
//! endpoint. Each request is tiny and each answer is computed from the master's state
//! at once, so these run inside the event loop, non-blocking, like everything else:
//! read until the request is complete (one line, or HTTP headers), answer, close.
//!
//! None of them can hold up the loop or crowd out another:
//! - a client that sends more than [`MAX_REQUEST`] bytes is dropped, and every
//!   connection is closed [`ADMIN_TIMEOUT`] after it was accepted, answered or not;
//! - each endpoint has its own cap, [`MAX_CONNS_PER_KIND`]: a flood of idle `/metrics`
//!   connections leaves `/health` and the control socket answering;
//! - each endpoint keeps [`SPARES_PER_KIND`] descriptors in reserve ([`AdminState`]):
//!   when clients (say, silent connections to a `,proxy` listener) have taken every
//!   descriptor the master may open, `accept` fails with EMFILE for them, while an
//!   admin endpoint gives up one of its spares and accepts in its place, and takes it
//!   back when that connection closes;
//! - the control socket answers only the master's own user and root (`SO_PEERCRED`).
//!
//! `Admin` owns the servers, their connections, their reserve and the registry
//! entry. It reads each request and hands it to the master, which answers from every
//! part's state (see `ops`) and gives the answer back to be written.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use tracing::{info, warn};

use super::{MasterError, Source};
use crate::config::Config;
use crate::control::{AdminCounts, AdminStatus, Reply};
use crate::listener::{ListenAddr, Listener};
use crate::sys::socket;

/// Largest request accepted.
pub const MAX_REQUEST: usize = 8192;
/// Most connections open at once to each endpoint (control, metrics, health); more are
/// closed at once. Far more than a scraper, a load balancer's checks and an operator
/// need together, and few enough descriptors that all three fit beside the clients.
pub const MAX_CONNS_PER_KIND: usize = 128;
/// Descriptors each endpoint keeps in reserve for when the master has no other.
pub const SPARES_PER_KIND: usize = 4;
/// An admin connection is closed this long after it was accepted, answered or not.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which server a connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminKind {
    /// The control socket (line protocol, JSON answers).
    Control,
    /// Prometheus `/metrics` over HTTP.
    Metrics,
    /// The health endpoint over HTTP.
    Health,
}

impl AdminKind {
    /// Its index in per-kind tables.
    pub fn index(self) -> usize {
        match self {
            AdminKind::Control => 0,
            AdminKind::Metrics => 1,
            AdminKind::Health => 2,
        }
    }
}

/// Per-endpoint bookkeeping: spare descriptors, counters, the registry entry.
#[derive(Debug, Default)]
pub struct AdminState {
    /// Spare descriptors per kind (`O_PATH` opens of `/`: they cost nothing but a slot
    /// in the descriptor table, which is the point).
    spares: [Vec<OwnedFd>; 3],
    /// Which kinds have a server (and so keep spares).
    served: [bool; 3],
    /// Connections closed at once because the endpoint was full, per kind.
    pub refused_full: [u64; 3],
    /// Control connections from another user, refused.
    pub refused_peer: u64,
    /// Connections accepted with a spare descriptor.
    pub from_reserve: u64,
    /// An accept failed for want of a descriptor with no spare left: what waits is
    /// accepted again at the next housekeeping tick (its readiness edge has passed).
    pub starved: bool,
    /// When a refusal was last logged (at most one line a second).
    pub last_refusal_log: Option<Instant>,
    /// This master's registry entry (`<runtime dir>/<pid>.json`) and the process that
    /// wrote it: removed when the master ends, however it ends (also a master that was
    /// built and dropped without running), but never by a forked child.
    pub registry: Option<(std::path::PathBuf, u32)>,
}

impl Drop for AdminState {
    fn drop(&mut self) {
        if let Some((path, pid)) = self.registry.take() {
            if pid == std::process::id() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl AdminState {
    /// Notes that `kind` has a server, and fills its spares.
    pub fn serve(&mut self, kind: AdminKind) {
        self.served[kind.index()] = true;
        self.refill();
    }

    /// Opens spares up to [`SPARES_PER_KIND`] for every served kind (as many as the
    /// descriptor limit allows now; the rest on a later call).
    pub fn refill(&mut self) {
        for k in 0..3 {
            while self.served[k] && self.spares[k].len() < SPARES_PER_KIND {
                let flags = rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
                match rustix::fs::open("/", flags, rustix::fs::Mode::empty()) {
                    Ok(fd) => self.spares[k].push(fd),
                    Err(_) => return,
                }
            }
        }
    }

    /// Closes one spare of `kind`, so that the next `accept` can have its slot; false
    /// if none is left.
    pub fn release_spare(&mut self, kind: AdminKind) -> bool {
        self.spares[kind.index()].pop().is_some()
    }

    /// Spares held now (for tests and status).
    pub fn spares(&self) -> usize {
        self.spares.iter().map(Vec::len).sum()
    }

    /// Whether to log a refusal now (at most one line a second); the counters count all.
    pub fn log_refusal(&mut self, now: Instant) -> bool {
        let quiet = self.last_refusal_log.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
        if !quiet {
            self.last_refusal_log = Some(now);
        }
        !quiet
    }
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A control command line.
    Command(String),
    /// An HTTP GET (or HEAD) of this path.
    Http {
        /// The path.
        path: String,
    },
}

/// One connection to an admin server.
#[derive(Debug)]
pub struct AdminConn {
    /// The server it came to.
    pub kind: AdminKind,
    /// The socket (non-blocking).
    pub fd: OwnedFd,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    /// When it was accepted.
    pub since: Instant,
}

impl AdminConn {
    /// Wraps an accepted, non-blocking socket.
    pub fn new(kind: AdminKind, fd: OwnedFd) -> AdminConn {
        AdminConn { kind, fd, inbuf: Vec::new(), out: Vec::new(), written: 0, since: Instant::now() }
    }

    /// Reads what is available; returns the request once it is complete.
    pub fn read(&mut self) -> io::Result<Option<Request>> {
        let mut buf = [0u8; 2048];
        loop {
            match socket::recv_nowait(self.fd.as_fd(), &mut buf) {
                // The client may half-close right after its request: answer what came.
                Ok(0) => {
                    return parse(self.kind, &self.inbuf).map(Some).ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    if self.inbuf.len() > MAX_REQUEST {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "request too large"));
                    }
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(parse(self.kind, &self.inbuf))
    }

    /// Whether an answer is queued.
    pub fn has_response(&self) -> bool {
        !self.out.is_empty()
    }

    /// Queues the answer.
    pub fn respond(&mut self, bytes: Vec<u8>) {
        self.out = bytes;
        self.written = 0;
    }

    /// Writes what it can; true when everything is written.
    pub fn flush(&mut self) -> io::Result<bool> {
        while self.written < self.out.len() {
            match socket::send_nowait(self.fd.as_fd(), &self.out[self.written..], false) {
                Ok(n) => self.written += n,
                Err(rustix::io::Errno::AGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}

/// Parses a complete request out of `buf`, or `None` if more is needed.
pub fn parse(kind: AdminKind, buf: &[u8]) -> Option<Request> {
    match kind {
        AdminKind::Control => {
            let nl = buf.iter().position(|&b| b == b'\n')?;
            Some(Request::Command(String::from_utf8_lossy(&buf[..nl]).trim().to_string()))
        }
        AdminKind::Metrics | AdminKind::Health => {
            buf.windows(4).position(|w| w == b"\r\n\r\n")?;
            let line = buf.split(|&b| b == b'\n').next()?;
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            let _method = parts.next()?;
            Some(Request::Http { path: parts.next().unwrap_or("/").to_string() })
        }
    }
}

/// An HTTP/1.1 response that closes the connection.
pub fn http_response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A server of the master's own: the control socket, metrics or health.
#[derive(Debug)]
struct AdminServer {
    kind: AdminKind,
    fd: OwnedFd,
    /// The socket file of a Unix server and its inode, removed at exit if it is
    /// still ours (a new master may have replaced it).
    path: Option<(std::path::PathBuf, u64)>,
}

/// The admin endpoints: servers, connections, reserve and registry entry.
#[derive(Debug, Default)]
pub(super) struct Admin {
    servers: Vec<AdminServer>,
    conns: Vec<Option<AdminConn>>,
    state: AdminState,
}

impl Admin {
    /// Opens the control socket, metrics and health endpoints the config asks for.
    ///
    /// The control socket is always opened (see [`crate::control`] for where): a master
    /// that cannot have one does not start, rather than run unreachable or let another
    /// take its commands. `take_over`: this master was started by an upgrade (it takes
    /// over a control socket path named with `--control`).
    pub(super) fn open(
        &mut self,
        cfg: &Config,
        reg: &Registry,
        take_over: bool,
        listeners: &[ListenAddr],
    ) -> Result<(), MasterError> {
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
            Err(e) if cfg.control.is_some() => {
                warn!("`handoff status` will not list this master: {e}");
                None
            }
            Err(e) => return Err(refuse(&dir.join(format!("{stem}.sock")), e)),
        };
        let path = match &cfg.control {
            Some(p) => {
                crate::control::check_socket_path(p).map_err(|e| refuse(p, e))?;
                p.clone()
            }
            None => dir.join(format!("{stem}.sock")),
        };
        // After an upgrade the new master takes over a path named with --control; a
        // default path has the pid in it, so each master has its own.
        let take_over = take_over && cfg.control.is_some();
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
        self.add(AdminKind::Control, fd, Some(path), reg)?;
        self.state.registry = registry.map(|r| (r, std::process::id()));
        self.write_registry(listeners);
        for (kind, addr) in [(AdminKind::Metrics, cfg.metrics), (AdminKind::Health, cfg.health)] {
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
            self.add(kind, l.into(), None, reg)?;
        }
        Ok(())
    }

    /// Writes (or rewrites, after a reload changed the listeners) this master's entry
    /// in the registry that `handoff status` and `handoff ctl` read.
    pub(super) fn write_registry(&self, listeners: &[ListenAddr]) {
        let Some((reg, _)) = &self.state.registry else { return };
        let control = self.servers.iter().find(|s| s.kind == AdminKind::Control).and_then(|s| s.path.as_ref());
        let Some((control, _)) = control else { return };
        let pid = std::process::id();
        let entry = crate::control::MasterEntry {
            pid,
            start_time: crate::control::process_start_time(pid).unwrap_or(0),
            listeners: listeners.iter().map(|a| a.to_string()).collect(),
            control: control.clone(),
        };
        if let Err(e) = crate::control::write_entry(reg, &entry) {
            warn!("cannot write {}: {e} (`handoff status` will not list this master)", reg.display());
        }
    }

    fn add(
        &mut self,
        kind: AdminKind,
        fd: OwnedFd,
        path: Option<std::path::PathBuf>,
        reg: &Registry,
    ) -> io::Result<()> {
        let i = self.servers.len();
        reg.register(&mut SourceFd(&fd.as_raw_fd()), Source::AdminServer(i).token(), Interest::READABLE)?;
        let path = path.and_then(|p| Some((p.clone(), inode(&p)?)));
        self.servers.push(AdminServer { kind, fd, path });
        self.state.serve(kind);
        Ok(())
    }

    /// Removes the control socket file if it is still ours (a new master may have
    /// taken the path over).
    pub(super) fn close(&mut self) {
        if let Some((reg, pid)) = self.state.registry.take() {
            if pid == std::process::id() {
                let _ = std::fs::remove_file(reg);
            }
        }
        for s in self.servers.drain(..) {
            if let Some((p, ino)) = &s.path {
                if inode(p) == Some(*ino) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }

    /// Accepts what waits on admin server `i`. Each endpoint has its own cap, and
    /// spare descriptors for when the master has no other (see the module docs).
    pub(super) fn accept(&mut self, i: usize, now: Instant, reg: &Registry) {
        let Some(kind) = self.servers.get(i).map(|s| s.kind) else { return };
        let mut spent_spare = false;
        loop {
            let fd = match socket::accept(self.servers[i].fd.as_fd(), true) {
                Ok(fd) => fd,
                // Out of descriptors: give up a spare for this one.
                Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) if self.state.release_spare(kind) => {
                    spent_spare = true;
                    continue;
                }
                // Out of descriptors with no spare left: what waits is taken at the
                // next housekeeping tick.
                Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) => {
                    self.state.starved = true;
                    break;
                }
                // EAGAIN: all taken; anything else: one failed connection, the next
                // event brings the rest.
                Err(_) => break,
            };
            if std::mem::take(&mut spent_spare) {
                self.state.from_reserve += 1;
            }
            let open = self.conns.iter().flatten().filter(|c| c.kind == kind).count();
            if open >= MAX_CONNS_PER_KIND {
                self.state.refused_full[kind.index()] += 1;
                if self.state.log_refusal(now) {
                    warn!(
                        "{} endpoint: {} connections open, closing new ones ({} so far)",
                        kind_name(kind),
                        MAX_CONNS_PER_KIND,
                        self.state.refused_full[kind.index()]
                    );
                }
                continue; // `fd` drops: closed
            }
            if kind == AdminKind::Control {
                if let Some(why) = peer_refusal(&fd) {
                    self.state.refused_peer += 1;
                    if self.state.log_refusal(now) {
                        warn!("control socket: refused a client: {why} ({} so far)", self.state.refused_peer);
                    }
                    let answer = serde_json::to_vec(&Reply { ok: false, message: why, master: None, reload: None })
                        .unwrap_or_default();
                    // A few bytes into an empty socket buffer: they fit, or the client
                    // sees the connection close, which says the same.
                    let _ = socket::send_nowait(fd.as_fd(), &answer, false);
                    continue;
                }
            }
            let slot = super::free_slot(&mut self.conns);
            let token = Source::AdminConn(slot).token();
            if reg.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE | Interest::WRITABLE).is_ok() {
                self.conns[slot] = Some(AdminConn::new(kind, fd));
            }
        }
    }

    /// Admin connection `slot` is ready: writes what is queued, or reads. A complete
    /// request is returned for the master to answer (with [`Admin::respond`]).
    pub(super) fn conn_event(&mut self, slot: usize, reg: &Registry) -> Option<(AdminKind, Request)> {
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return None };
        let finished = if conn.has_response() {
            conn.flush()
        } else {
            match conn.read() {
                Ok(Some(req)) => return Some((conn.kind, req)),
                Ok(None) => Ok(false),
                // A control client gets told why (once, if it fits), then the close.
                Err(e) if conn.kind == AdminKind::Control && e.kind() == io::ErrorKind::InvalidData => {
                    let message = format!("{e}: a command is one line of at most {} bytes", MAX_REQUEST);
                    let reply = Reply { ok: false, message, master: None, reload: None };
                    conn.respond(serde_json::to_vec(&reply).unwrap_or_default());
                    let _ = conn.flush();
                    Err(e)
                }
                Err(e) => Err(e),
            }
        };
        if !matches!(finished, Ok(false)) {
            self.close_conn(slot, reg);
        }
        None
    }

    /// Queues the answer to the request [`Admin::conn_event`] returned, and writes it.
    pub(super) fn respond(&mut self, slot: usize, answer: Vec<u8>, reg: &Registry) {
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return };
        conn.respond(answer);
        if !matches!(conn.flush(), Ok(false)) {
            self.close_conn(slot, reg);
        }
    }

    fn close_conn(&mut self, slot: usize, reg: &Registry) {
        if let Some(c) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = reg.deregister(&mut SourceFd(&c.fd.as_raw_fd()));
            drop(c);
            // Its descriptor slot is free now, before anything else can take it.
            self.state.refill();
        }
    }

    /// Closes admin connections past their deadline; takes back spares given up; and
    /// after an accept that found no descriptor, accepts what waits on each admin
    /// server (its readiness edge came while the master could not take it).
    pub(super) fn tick(&mut self, now: Instant, reg: &Registry) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| now.duration_since(c.since) > ADMIN_TIMEOUT) {
                self.close_conn(slot, reg);
            }
        }
        self.state.refill();
        if std::mem::take(&mut self.state.starved) {
            for i in 0..self.servers.len() {
                self.accept(i, now, reg);
            }
        }
    }

    /// Connections and refusals, for `handoff status` and `/metrics`.
    pub(super) fn status(&self) -> AdminStatus {
        let counts = |f: &dyn Fn(AdminKind) -> u64| AdminCounts {
            control: f(AdminKind::Control),
            metrics: f(AdminKind::Metrics),
            health: f(AdminKind::Health),
        };
        AdminStatus {
            open: counts(&|k| self.conns.iter().flatten().filter(|c| c.kind == k).count() as u64),
            refused_full: counts(&|k| self.state.refused_full[k.index()]),
            refused_peer: self.state.refused_peer,
            from_reserve: self.state.from_reserve,
        }
    }

    /// Binds the control socket path again if a failed new master took it over.
    pub(super) fn reclaim_control(&mut self, reg: &Registry) {
        for idx in 0..self.servers.len() {
            let Some((path, ino)) = self.servers[idx].path.clone() else { continue };
            if inode(&path) == Some(ino) {
                continue;
            }
            match bind_control(&path, true) {
                Ok(fd) => {
                    let old = std::mem::replace(&mut self.servers[idx].fd, fd);
                    let _ = reg.deregister(&mut SourceFd(&old.as_raw_fd()));
                    let new = self.servers[idx].fd.as_raw_fd();
                    let _ = reg.register(&mut SourceFd(&new), Source::AdminServer(idx).token(), Interest::READABLE);
                    self.servers[idx].path = inode(&path).map(|i| (path.clone(), i));
                    info!("control socket at {} is this master's again", path.display());
                }
                Err(e) => warn!("cannot take the control socket {} back: {e}", path.display()),
            }
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
    match socket::peer_credentials(fd.as_fd()) {
        Ok(c) if socket::same_user_or_root(&c) => None,
        Ok(c) => Some(format!(
            "refused: uid {} (pid {}) may not use this control socket: it answers uid {} and root only",
            c.uid.as_raw(),
            c.pid.as_raw_nonzero(),
            rustix::process::getuid().as_raw()
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
    Listener::from_fd(socket::listen_reuseport(addr, 128)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(parse(AdminKind::Control, b"stat"), None);
        assert_eq!(parse(AdminKind::Control, b"scale 3\n"), Some(Request::Command("scale 3".into())));
        assert_eq!(parse(AdminKind::Metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            parse(AdminKind::Metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Request::Http { path: "/metrics".into() })
        );
    }
}

#[cfg(test)]
mod reserve_tests {
    use super::*;

    #[test]
    fn spares_are_given_up_one_at_a_time_and_taken_back() {
        let mut s = AdminState::default();
        assert_eq!(s.spares(), 0, "no server, no spares");
        s.serve(AdminKind::Health);
        assert_eq!(s.spares(), SPARES_PER_KIND);
        assert!(s.release_spare(AdminKind::Health));
        assert!(!s.release_spare(AdminKind::Control), "the control socket has none until it is served");
        assert_eq!(s.spares(), SPARES_PER_KIND - 1);
        s.refill();
        assert_eq!(s.spares(), SPARES_PER_KIND);
    }
}
