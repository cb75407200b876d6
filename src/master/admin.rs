//! The master's own small servers: the control socket, `/metrics` and the health
//! endpoint. Each request is tiny and each answer is computed from the master's state
//! at once, so these run inside the event loop, non-blocking, like everything else:
//! read until the request is complete (one line, or HTTP headers), answer, close.
//! A client that sends more than [`MAX_REQUEST`] bytes or stalls for
//! [`ADMIN_TIMEOUT`] is dropped.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Largest request accepted.
pub const MAX_REQUEST: usize = 8192;
/// Most admin connections open at once; more are closed at once (a flood on the health
/// port must not take the descriptors the master needs for clients).
pub const MAX_ADMIN_CONNS: usize = 256;
/// An admin connection idle this long is closed.
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
