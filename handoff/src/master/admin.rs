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

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

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
            match rustix::io::read(&self.fd, &mut buf) {
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
                Err(rustix::io::Errno::INTR) => continue,
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
            match rustix::net::send(&self.fd, &self.out[self.written..], rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) => self.written += n,
                Err(rustix::io::Errno::INTR) => continue,
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
