//! Connections from `,proxy` listeners: the master reads the PROXY protocol header
//! (v1 or v2) before handing the connection on, so the worker's first byte is the
//! client's first byte and the worker learns the client's real address.
//!
//! The header is read without blocking: peeked, and consumed only once complete. A
//! connection whose header is incomplete waits in a table, registered for readability,
//! for at most [`PROXY_HEADER_TIMEOUT`]; a bad or late header closes that connection
//! (logged, at most once a second) and affects nothing else. The table is the
//! dispatcher's ([`Dispatcher`]).
//!
//! A PROXY header lets its sender claim any client address, so only the listener's
//! `,proxy-from=` sources (loopback by default) may send one: a connection from any
//! other source is closed at once, before a byte is read (counted as refused).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use tracing::warn;

use super::Dispatcher;
use crate::listener::ListenSpec;
use crate::master::{Held, Source, PROXY_HEADER_TIMEOUT};

/// A connection from a `,proxy` listener whose header has not fully arrived.
#[derive(Debug)]
pub(super) struct PendingProxy {
    fd: OwnedFd,
    listener: u16,
    deadline: Instant,
}

impl Dispatcher {
    /// A connection accepted on a `,proxy` listener: read its header now if it is
    /// there, else wait for it.
    pub(super) fn proxy_accepted(
        &mut self,
        fd: OwnedFd,
        listener: u16,
        now: Instant,
        ready: &mut Vec<Held>,
        reg: &Registry,
    ) {
        match crate::proxy::read_header(fd.as_fd()) {
            Ok(h) => ready.push(Held { fd, listener, addrs: Some(h), flags: 0 }),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let slot = crate::master::free_slot(&mut self.pending_proxy);
                let token = Source::Proxy(slot).token();
                if reg.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE).is_ok() {
                    self.pending_proxy[slot] =
                        Some(PendingProxy { fd, listener, deadline: now + PROXY_HEADER_TIMEOUT });
                }
            }
            Err(e) => {
                self.count_bad_header(&e);
                self.proxy_failed(&e.to_string(), now)
            }
        }
    }

    /// Whether the peer of `fd`, accepted on `,proxy` listener `li`, may send a PROXY
    /// header there; if not, counts and logs the refusal (the caller drops `fd`).
    pub(super) fn proxy_source_allowed(&mut self, fd: &OwnedFd, li: usize, now: Instant) -> bool {
        let peer = crate::sys::socket::peer_ip(fd.as_fd());
        let allowed = match &peer {
            Ok(ip) => ListenSpec::proxy_allows(&self.listeners.list[li].proxy_from, *ip),
            Err(_) => false,
        };
        if !allowed {
            self.counts.proxy_refused += 1;
            let quiet = self.last_proxy_log.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
            if !quiet {
                self.last_proxy_log = Some(now);
                let who = match peer {
                    Ok(Some(ip)) => ip.to_string(),
                    Ok(None) => "a local peer".to_string(),
                    Err(e) => format!("a peer already gone ({e})"),
                };
                warn!(
                    "closed a connection from {who} on the PROXY listener {}: that source may not send PROXY \
                     headers (name it in the listener's proxy-from=) ({} so far)",
                    self.listeners.list[li].listener.local_addr(),
                    self.counts.proxy_refused
                );
            }
        }
        allowed
    }

    /// More bytes arrived on a connection waiting for its header.
    pub(in crate::master) fn proxy_readable(&mut self, slot: usize, now: Instant, reg: &Registry) {
        let Some(Some(p)) = self.pending_proxy.get(slot) else { return };
        match crate::proxy::read_header(p.fd.as_fd()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            result => {
                let p = self.take_pending(slot, reg).expect("present");
                match result {
                    Ok(h) => self.held.push_back(Held { fd: p.fd, listener: p.listener, addrs: Some(h), flags: 0 }),
                    Err(e) => {
                        self.count_bad_header(&e);
                        self.proxy_failed(&e.to_string(), now)
                    }
                }
            }
        }
    }

    fn take_pending(&mut self, slot: usize, reg: &Registry) -> Option<PendingProxy> {
        let p = self.pending_proxy.get_mut(slot)?.take()?;
        let _ = reg.deregister(&mut SourceFd(&p.fd.as_raw_fd()));
        Some(p)
    }

    /// Closes connections whose header is late.
    pub(super) fn proxy_timeouts(&mut self, now: Instant, reg: &Registry) {
        for slot in 0..self.pending_proxy.len() {
            if self.pending_proxy[slot].as_ref().is_some_and(|p| now >= p.deadline) {
                self.take_pending(slot, reg);
                self.counts.proxy_header_timeouts += 1;
                self.proxy_failed(&format!("no complete PROXY header within {PROXY_HEADER_TIMEOUT:?}"), now);
            }
        }
    }

    /// Drops every connection still waiting for its header (stopping).
    pub(super) fn proxy_clear(&mut self, reg: &Registry) {
        for slot in 0..self.pending_proxy.len() {
            self.take_pending(slot, reg);
        }
    }

    /// Counts a header that is not one (the rest of `proxy_errors` are clients that
    /// closed or failed before theirs was complete, and late headers).
    fn count_bad_header(&mut self, e: &io::Error) {
        if e.kind() == io::ErrorKind::InvalidData {
            self.counts.proxy_header_bad += 1;
        }
    }

    fn proxy_failed(&mut self, why: &str, now: Instant) {
        self.counts.proxy_errors += 1;
        let quiet = self.last_proxy_log.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
        if !quiet {
            self.last_proxy_log = Some(now);
            warn!("closed a connection on a PROXY listener: {why} ({} so far)", self.counts.proxy_errors);
        }
    }
}
