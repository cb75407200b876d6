//! Idle keep-alive connections that workers handed back (RETURN), held by the master
//! until their client sends the next request.
//!
//! This is what makes balancing per request possible: a connection parked here costs
//! one descriptor and one epoll registration in the master, and nothing in any worker.
//! When it becomes readable the master takes it out and places it by policy like a
//! new connection (flagged `CONTINUED`), so the request goes to whichever worker
//! should have it now, not to the one that happened to serve the previous request.
//! A connection whose next request is already there when the master reads the RETURN
//! (most, under load) never comes here: the dispatcher looks first ([`peek`]) and
//! places it at once, sparing an epoll registration made only to be removed.
//!
//! Invariants:
//! - **Every connection here is at a request boundary**: the worker that returned it
//!   wrote every response and read nothing of the next request (the protocol's
//!   promise), so any worker can take it from its next byte.
//! - **Registered for exactly as long as it is here.** A returned socket is shared
//!   with nobody once the worker closed its copy, but the master deregisters before
//!   it hands the socket on: an epoll registration lives as long as the open file,
//!   not the descriptor, and must not report the next worker's traffic to us.
//! - **Bounded**: at most `max` entries; one more closes the oldest first (as nginx
//!   reuses its oldest idle keep-alive connections when it runs short). Entries leave
//!   in the order they came, which is also their deadline order (one timeout for all),
//!   so timeouts and eviction are both a pop from the front of one queue.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::proxy::ProxyHeader;

/// An idle connection and what the master must remember to hand it on unchanged.
#[derive(Debug)]
pub(crate) struct IdleConn {
    pub(crate) fd: OwnedFd,
    pub(crate) listener: u16,
    pub(crate) addrs: Option<ProxyHeader>,
    deadline: Instant,
    /// Tells this entry from a later one in the same slot (see `order`).
    generation: u64,
}

/// Why idle connections were closed, counted since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdleClosed {
    /// The client hung up while idle.
    pub(crate) hangups: u64,
    /// Idle longer than `--keepalive-timeout`.
    pub(crate) timeouts: u64,
    /// The oldest, closed to make room beyond `--max-idle`.
    pub(crate) evicted: u64,
}

/// Bits of a token that name the slot; the bits above them carry the low bits of the
/// entry's generation, so that an event for a connection that left (evicted in the same
/// loop turn, its slot given to the next) never reaches the one that took its slot.
const SLOT_BITS: u32 = 24;
/// Most entries (slots) a table can have.
pub(crate) const MAX_SLOTS: usize = 1 << SLOT_BITS;

/// The table of idle connections; an entry in slot `i` with generation `g` is the mio
/// token `base + (g mod 2^16) << 24 + i`.
#[derive(Debug)]
pub(crate) struct IdleTable {
    slots: Vec<Option<IdleConn>>,
    free: Vec<usize>,
    /// (slot, generation) in arrival order; stale pairs (taken earlier) are skipped.
    order: VecDeque<(usize, u64)>,
    next_generation: u64,
    len: usize,
    base: usize,
    max: usize,
    timeout: Duration,
    pub(crate) closed: IdleClosed,
}

impl IdleTable {
    /// A table whose tokens start at `base`.
    pub(crate) fn new(base: usize, max: usize, timeout: Duration) -> IdleTable {
        IdleTable {
            slots: Vec::new(),
            free: Vec::new(),
            order: VecDeque::new(),
            next_generation: 0,
            len: 0,
            base,
            max: max.max(1),
            timeout,
            closed: IdleClosed::default(),
        }
    }

    /// Connections held now.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// New limits (a reload); applied to connections that come from now on, and the
    /// count is brought under the new bound at once.
    pub(crate) fn set_limits(&mut self, registry: &Registry, max: usize, timeout: Duration) {
        self.max = max.max(1);
        self.timeout = timeout;
        while self.len > self.max {
            self.pop_oldest(registry);
            self.closed.evicted += 1;
        }
    }

    fn token(&self, slot: usize, generation: u64) -> Token {
        Token(self.base + (((generation & 0xffff) as usize) << SLOT_BITS) + slot)
    }

    /// Takes out the connection an event's token names, if it is still the one that
    /// token was given to.
    pub(crate) fn take_token(&mut self, registry: &Registry, token: Token) -> Option<IdleConn> {
        let rel = token.0.checked_sub(self.base)?;
        let slot = rel & (MAX_SLOTS - 1);
        let generation = (rel >> SLOT_BITS) as u64;
        let current = self.slots.get(slot)?.as_ref()?.generation;
        if current & 0xffff != generation {
            return None;
        }
        self.take(registry, slot)
    }

    /// Parks a connection until its client speaks again. If registering fails (the
    /// kernel is out of memory) the connection is closed: it was idle, so its client
    /// just sees a keep-alive connection end, which HTTP clients expect.
    pub(crate) fn insert(
        &mut self,
        registry: &Registry,
        now: Instant,
        fd: OwnedFd,
        listener: u16,
        addrs: Option<ProxyHeader>,
    ) -> io::Result<()> {
        if self.len >= self.max {
            self.pop_oldest(registry);
            self.closed.evicted += 1;
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        let token = self.token(slot, generation);
        if let Err(e) = registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE) {
            self.free.push(slot);
            return Err(e);
        }
        self.slots[slot] = Some(IdleConn { fd, listener, addrs, deadline: now + self.timeout, generation });
        self.order.push_back((slot, generation));
        self.len += 1;
        Ok(())
    }

    /// Takes the connection in `slot` out, deregistered.
    fn take(&mut self, registry: &Registry, slot: usize) -> Option<IdleConn> {
        let conn = self.slots.get_mut(slot)?.take()?;
        let _ = registry.deregister(&mut SourceFd(&conn.fd.as_raw_fd()));
        self.free.push(slot);
        self.len -= 1;
        // Its entry in `order` goes stale and is skipped when it reaches the front.
        if self.order.len() > 2 * self.len + 64 {
            let slots = &self.slots;
            self.order.retain(|&(s, g)| slots[s].as_ref().is_some_and(|c| c.generation == g));
        }
        Some(conn)
    }

    /// Closes the connections idle past their deadline; says when the next one is due.
    pub(crate) fn expire(&mut self, registry: &Registry, now: Instant) -> Option<Instant> {
        loop {
            let (slot, generation) = *self.order.front()?;
            match &self.slots[slot] {
                Some(c) if c.generation == generation => {
                    if c.deadline > now {
                        return Some(c.deadline);
                    }
                    self.pop_oldest(registry);
                    self.closed.timeouts += 1;
                }
                _ => {
                    self.order.pop_front();
                }
            }
        }
    }

    /// Takes every connection out (a stop), deregistered, oldest first.
    pub(crate) fn take_all(&mut self, registry: &Registry) -> Vec<IdleConn> {
        let mut all = Vec::with_capacity(self.len);
        while let Some((slot, _)) = self.order.pop_front() {
            if let Some(c) = self.take(registry, slot) {
                all.push(c);
            }
        }
        all
    }

    /// Closes the oldest connection held.
    fn pop_oldest(&mut self, registry: &Registry) {
        while let Some((slot, generation)) = self.order.pop_front() {
            if self.slots[slot].as_ref().is_some_and(|c| c.generation == generation) {
                drop(self.take(registry, slot));
                return;
            }
        }
    }
}

/// What a look at a connection's receive queue found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peek {
    /// Bytes are waiting (a request, perhaps followed by the client's FIN): serve it.
    Request,
    /// Nothing yet, and the client is still there: hold it until it speaks.
    Quiet,
    /// Nothing will come: the client closed or reset it.
    Gone,
}

/// Looks, without reading or waiting, whether a connection has a request to serve:
/// one just handed back (its client may have sent its next request before the
/// RETURN was read), or one that reported a hang-up (a client may send its request
/// and close its half at once).
pub(crate) fn peek(fd: &OwnedFd) -> Peek {
    let mut b = [0u8; 1];
    match crate::sys::socket::peek_nowait(std::os::fd::AsFd::as_fd(fd), &mut b) {
        Ok(n) if n > 0 => Peek::Request,
        Err(rustix::io::Errno::AGAIN) => Peek::Quiet,
        // End of stream, or an error (reset): whatever it was, no request will come.
        _ => Peek::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn conn() -> (OwnedFd, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (OwnedFd::from(a), b)
    }

    #[test]
    fn oldest_go_first_when_full_and_timeouts_follow_arrival_order() {
        let poll = mio::Poll::new().unwrap();
        let reg = poll.registry();
        let t0 = Instant::now();
        let mut t = IdleTable::new(1000, 2, Duration::from_secs(10));
        let mut peers = Vec::new();
        for k in 0..3u16 {
            let (fd, peer) = conn();
            peers.push(peer);
            t.insert(reg, t0 + Duration::from_secs(k as u64), fd, k, None).unwrap();
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.closed.evicted, 1);
        // The first one (listener 0) was evicted: its peer sees the end.
        let mut b = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut peers[0], &mut b).unwrap(), 0);
        // Taken by token: slot of the newest.
        let taken = (0..3).find_map(|s| t.take(reg, s).filter(|c| c.listener == 2)).unwrap();
        // A token of the evicted first entry does not reach whoever took its slot.
        assert!(t.take_token(reg, Token(1000)).is_none());
        assert_eq!(taken.listener, 2);
        assert_eq!(t.len(), 1);
        // The one left (listener 1) expires at t0 + 1 + 10 s, not before.
        assert_eq!(t.expire(reg, t0 + Duration::from_secs(5)), Some(t0 + Duration::from_secs(11)));
        assert_eq!(t.expire(reg, t0 + Duration::from_secs(11)), None);
        assert_eq!(t.closed.timeouts, 1);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_hung_up_client_with_a_request_is_served_one_without_is_gone() {
        let (fd, mut peer) = conn();
        std::io::Write::write_all(&mut peer, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        drop(peer);
        assert_eq!(peek(&fd), Peek::Request);
        let (fd, peer) = conn();
        assert_eq!(peek(&fd), Peek::Quiet);
        drop(peer);
        assert_eq!(peek(&fd), Peek::Gone);
    }
}
