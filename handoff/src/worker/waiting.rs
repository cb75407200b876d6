//! The waiting room: the built-in worker's connections that wait for a request without
//! a task of their own. A connection that had nothing to read when the worker's first
//! look came waits here for its first bytes; one whose request the quick path answered
//! on a keep-alive connection waits here for its next request. Either way it gets
//! another look when it has something to read.
//!
//! Without `,deferred` the master hands a connection on as soon as its handshake is
//! done, so a third of a connection-per-request client's connections reach the worker
//! before their request (over a real network, more). Waiting as tokio streams costs
//! each one a task, a timer, `FIONBIO`, an `epoll_ctl` to register and another to
//! deregister: on loopback, 5% of the server's whole CPU per request more than waiting
//! here (`BENCHMARKS.md`). Here each costs one `epoll_ctl`, in an epoll set of the
//! worker's own that is registered with tokio once (an epoll descriptor is readable
//! while it has events): `EPOLLONESHOT` disarms a socket waiting for its first request
//! once it has reported, and the kernel drops it from the set when it closes, so only a
//! socket that goes on to a server (which may hand it back to the master, keeping it
//! open) is deregistered; the sockets that become readable in one turn share one
//! `epoll_wait`. A kept-alive connection is watched edge-triggered instead, and keeps
//! its place (its key in the set) while it is out for a look: it comes back after each
//! answer without a system call, where hyper's path costs a task wake-up, a parse into
//! a header map and an answer built through hyper's encoder per request.
//!
//! Deadlines (the header timeout; a kept connection's idle limit) sit in one heap, an
//! entry per connection at most, moved later only when it comes due: a kept
//! connection's deadline moves with every request, and the heap is not touched then.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustix::event::epoll;
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, Sleep};

use super::Stream;
use crate::wire::ConnItem;

/// Most readable connections taken from the set in one `epoll_wait`.
const EVENTS: usize = 64;

/// A connection waiting for a request.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) item: ConnItem,
    pub(crate) stream: Stream,
    /// When it stops waiting: its first request head must be complete by then; a kept
    /// connection's next request must have begun (see [`Kept`]).
    pub(crate) deadline: Instant,
    /// Answered here and kept alive, between requests; `None`: waiting for its first.
    pub(crate) kept: Option<Kept>,
    /// The event that took it out said the client has shut down its side (or the
    /// connection broke): an edge-triggered watch reports that once, even if a read
    /// then returns bytes before the end, so a kept connection must not wait again.
    pub(crate) hung_up: bool,
    /// The place it came out of for a look, still its own (key, generation).
    slot: Option<(u32, u32)>,
    /// It is in the room's epoll set (a socket that lives on elsewhere must leave it).
    registered: bool,
}

/// What the room knows of a connection kept alive between requests.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    /// Its place on the stall rescue's shelf (see `super::stall`), if the rescue may
    /// take it while it waits.
    pub(crate) spot: Option<Arc<super::stall::Spot>>,
    /// At its deadline it goes back to the master (`auto` mode's idle hand-back)
    /// instead of being closed.
    pub(crate) then_return: bool,
}

impl Waiting {
    /// A connection that has not been in the room, waiting from now for its first request.
    pub(crate) fn new(item: ConnItem, stream: Stream, deadline: Instant) -> Waiting {
        Waiting { item, stream, deadline, kept: None, hung_up: false, slot: None, registered: false }
    }
}

/// What one poll of the room found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Readable (bytes, end of stream or an error): out of the room, for another look;
    /// each goes back with [`WaitRoom::wait`] or away with [`WaitRoom::leave`].
    pub(crate) readable: Vec<Waiting>,
    /// Out of time with nothing read: out of the room, to be closed (or, kept ones in
    /// `auto` mode, handed back).
    pub(crate) expired: Vec<Waiting>,
}

/// Connections waiting for a request, each until its deadline.
#[derive(Debug)]
pub(crate) struct WaitRoom {
    ep: AsyncFd<Arc<OwnedFd>>,
    /// Indexed by key (the low half of a socket's epoll data; the high half is the
    /// slot's generation, so that an event or deadline of a slot's earlier occupant is
    /// recognised as stale).
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Connections in the room (not those out for a look).
    live: usize,
    /// (deadline, key, generation): at most one current entry per slot (the one
    /// [`Slot::entry`] names), no later than its connection's deadline; others are stale.
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Fires at or before the first deadline (early is harmless: it is set again).
    timer: Pin<Box<Sleep>>,
    timeout: Duration,
    /// The epoll data of the sockets one `epoll_wait` found readable, and whether
    /// each event said the peer has hung up.
    keys: Vec<(u64, bool)>,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    waiting: Option<Waiting>,
    /// Its connection is out for a look: the slot stays its own.
    out: bool,
    /// Its socket is watched edge-triggered (kept alive), not one-shot.
    edge: bool,
    /// The deadline of its current entry in the heap, if it has one.
    entry: Option<Instant>,
    /// An event came for it while it was out for a look (a second `epoll_wait` of the
    /// same poll): an edge-triggered watch would not report it again, so it is armed
    /// anew when it comes back.
    missed: bool,
}

impl WaitRoom {
    /// An empty room whose connections wait at most `timeout` for a first request.
    /// Needs a tokio runtime.
    pub(crate) fn new(timeout: Duration) -> io::Result<WaitRoom> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        Ok(WaitRoom {
            ep: crate::sys::async_fd(Arc::new(ep))?,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            deadlines: BinaryHeap::new(),
            timer: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            keys: Vec::with_capacity(EVENTS),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// How long a connection waits for its first request head.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `now + after`, or a century on for a duration that overflows: as good as none,
    /// and no panic (the built-in worker caps its timeouts at a year; a caller may not).
    pub(crate) fn deadline_after(after: Duration) -> Instant {
        let now = Instant::now();
        now.checked_add(after).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
    }

    /// Lets `stream` wait, from now, for its first bytes; gives it back if the kernel
    /// refuses to watch it (out of memory, or the user's epoll watch limit).
    #[cfg(test)]
    fn add(&mut self, item: ConnItem, stream: Stream) -> Result<(), (ConnItem, Stream)> {
        let w = Waiting::new(item, stream, Self::deadline_after(self.timeout));
        self.wait(w).map_err(|w| (w.item, w.stream))
    }

    /// Lets `w` wait (again) until `w.deadline`: for its first request, or (`w.kept`)
    /// for its next. One that came out of the room for a look takes its place back; a
    /// kept one then costs no system call. Gives it back if the kernel refuses to watch
    /// it (then it has left the room).
    #[allow(
        clippy::result_large_err,
        reason = "the rare error hands the connection back by value; boxing it would cost an allocation on every call"
    )]
    pub(crate) fn wait(&mut self, mut w: Waiting) -> Result<(), Waiting> {
        let edge = w.kept.is_some();
        let flags = epoll::EventFlags::IN
            | epoll::EventFlags::RDHUP
            | if edge { epoll::EventFlags::ET } else { epoll::EventFlags::ONESHOT };
        let ours = w.slot.take().filter(|&(k, g)| {
            self.slots.get(k as usize).is_some_and(|s| s.generation == g && s.out && s.waiting.is_none())
        });
        let (key, generation) = match ours {
            Some((key, generation)) => {
                let slot = &mut self.slots[key as usize];
                // A one-shot socket that reported is disarmed: arm it again (or switch
                // it to edge-triggered, once, when it is first kept). Arming checks
                // the socket's state afresh, which reports an event missed meanwhile.
                if !(edge && slot.edge) || std::mem::take(&mut slot.missed) {
                    let data = epoll::EventData::new_u64(u64::from(generation) << 32 | u64::from(key));
                    if epoll::modify(self.ep.get_ref(), &w.stream, data, flags).is_err() {
                        w.slot = Some((key, generation));
                        self.leave(&mut w, true);
                        return Err(w);
                    }
                }
                (key, generation)
            }
            None => {
                let key = match self.free.pop() {
                    Some(k) => k,
                    None => {
                        self.slots.push(Slot::default());
                        (self.slots.len() - 1) as u32
                    }
                };
                let generation = self.slots[key as usize].generation;
                let data = epoll::EventData::new_u64(u64::from(generation) << 32 | u64::from(key));
                // Still in the set (it left its place but not the set): watched anew.
                let watched = if w.registered {
                    epoll::modify(self.ep.get_ref(), &w.stream, data, flags)
                } else {
                    epoll::add(self.ep.get_ref(), &w.stream, data, flags)
                };
                if watched.is_err() {
                    self.free.push(key);
                    return Err(w);
                }
                w.registered = true;
                (key, generation)
            }
        };
        w.hung_up = false;
        let slot = &mut self.slots[key as usize];
        slot.out = false;
        slot.edge = edge;
        if slot.entry.is_none_or(|e| w.deadline < e) {
            slot.entry = Some(w.deadline);
            self.deadlines.push(Reverse((w.deadline, key, generation)));
        }
        slot.waiting = Some(w);
        self.live += 1;
        Ok(())
    }

    /// `w` leaves the room for good: its place is freed, and with `lives_on` (the
    /// socket stays open elsewhere: a server here, or the master) it leaves the epoll
    /// set too. Closing it would be enough otherwise (the kernel drops an entry with
    /// the last descriptor of its socket), but a connection that lives on would stay
    /// in the set, reporting for nothing, for its lifetime.
    pub(crate) fn leave(&mut self, w: &mut Waiting, lives_on: bool) {
        if lives_on && w.registered {
            let _ = epoll::delete(self.ep.get_ref(), &w.stream);
            w.registered = false;
        }
        if let Some((key, generation)) = w.slot.take() {
            if let Some(slot) = self.slots.get_mut(key as usize).filter(|s| s.generation == generation && s.out) {
                Self::free_slot(slot);
                self.free.push(key);
            }
        }
    }

    fn free_slot(slot: &mut Slot) {
        slot.generation = slot.generation.wrapping_add(1);
        slot.out = false;
        slot.entry = None;
        slot.missed = false;
    }

    /// Takes a readable connection out for a look, keeping its place.
    fn take_out(&mut self, key: u32, generation: u32, hung_up: bool) -> Option<Waiting> {
        let slot = self.slots.get_mut(key as usize).filter(|s| s.generation == generation)?;
        let Some(mut w) = slot.waiting.take() else {
            slot.missed |= slot.out;
            return None;
        };
        slot.out = true;
        w.slot = Some((key, generation));
        w.hung_up = hung_up;
        self.live -= 1;
        Some(w)
    }

    /// Takes out every connection that has become readable or run out of time, or
    /// registers to be woken when one does.
    pub(crate) fn poll_found(&mut self, cx: &mut Context<'_>, found: &mut Found) -> Poll<()> {
        // An error is not expected of an epoll descriptor; the deadlines still end the waits.
        while let Poll::Ready(Ok(mut guard)) = self.ep.poll_read_ready(cx) {
            let mut events = [MaybeUninit::<epoll::Event>::uninit(); EVENTS];
            let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
            let n = match epoll::wait(guard.get_inner(), &mut events, Some(&zero)) {
                Ok((events, _)) => {
                    let gone = epoll::EventFlags::RDHUP | epoll::EventFlags::HUP | epoll::EventFlags::ERR;
                    self.keys.extend(events.iter().map(|ev| {
                        let flags = ev.flags; // packed: copied, not borrowed
                        (ev.data.u64(), flags.intersects(gone))
                    }));
                    events.len()
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            };
            // Fewer than asked for: the set has no more. One that comes later reaches
            // tokio's own epoll afresh (a newer tick, which `clear_ready` leaves). A full
            // batch may have more: look again.
            if n < EVENTS {
                guard.clear_ready();
            }
            drop(guard);
            let mut keys = std::mem::take(&mut self.keys);
            for (data, hung_up) in keys.drain(..) {
                if let Some(w) = self.take_out(data as u32, (data >> 32) as u32, hung_up) {
                    found.readable.push(w);
                }
            }
            self.keys = keys;
            // And round again even after a partial batch: every event in it may have
            // been stale, and only a poll that returns Pending registers the waker
            // (from the readiness just cleared: no system call).
        }
        let now = Instant::now();
        while let Some(&Reverse((at, key, generation))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(slot) = self.slots.get_mut(key as usize) else { continue };
            if slot.generation != generation || slot.entry != Some(at) {
                continue; // stale: the slot's occupant left, or has a nearer entry
            }
            slot.entry = None;
            let Some(deadline) = slot.waiting.as_ref().map(|w| w.deadline) else {
                continue; // out for a look: `wait` queues it again
            };
            if deadline > now {
                // Its deadline moved on (a kept connection answered since): due later.
                slot.entry = Some(deadline);
                self.deadlines.push(Reverse((deadline, key, generation)));
                continue;
            }
            if let Some(w) = slot.waiting.take() {
                Self::free_slot(slot);
                self.free.push(key);
                self.live -= 1;
                found.expired.push(w);
            }
        }
        // Stale entries (connections gone before their deadline) leave as they come
        // due; a flood of short-lived connections would pile them up until then.
        if self.deadlines.len() > 2 * self.live + 1024 {
            let slots = &self.slots;
            self.deadlines.retain(|&Reverse((at, k, g))| {
                slots.get(k as usize).is_some_and(|s| s.generation == g && s.entry == Some(at))
            });
        }
        if let Some(&Reverse((first, ..))) = self.deadlines.peek() {
            if self.timer.is_elapsed() || self.timer.deadline() > first {
                self.timer.as_mut().reset(first);
            }
            if self.timer.as_mut().poll(cx).is_ready() {
                // Due already (between `now` and here): come back at once.
                cx.waker().wake_by_ref();
            }
        }
        if found.readable.is_empty() && found.expired.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Takes out every waiting connection (the worker is draining, or going away), in
    /// deadline order. They are still in the epoll set: see [`WaitRoom::leave`].
    pub(crate) fn take_all(&mut self) -> Vec<Waiting> {
        self.deadlines.clear();
        self.free.clear();
        self.live = 0;
        let mut all = Vec::new();
        for (key, slot) in self.slots.iter_mut().enumerate() {
            Self::free_slot(slot);
            if let Some(w) = slot.waiting.take() {
                all.push(w);
            }
            self.free.push(key as u32);
        }
        all.sort_by_key(|w| w.deadline);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn item(id: u64) -> ConnItem {
        ConnItem { id, listener: 0, sock: crate::wire::sock::UNIX, flags: 0, addrs: None }
    }

    /// `n` connections in `room`, and the client end of each.
    fn fill(room: &mut WaitRoom, ids: std::ops::Range<u64>) -> Vec<UnixStream> {
        ids.map(|id| {
            let (client, server) = UnixStream::pair().unwrap();
            room.add(item(id), Stream::Unix(server)).unwrap();
            client
        })
        .collect()
    }

    /// What the room has found once something has happened (10 s at most).
    async fn found(room: &mut WaitRoom) -> Found {
        let mut found = Found::default();
        let wait = std::future::poll_fn(|cx| room.poll_found(cx, &mut found));
        tokio::time::timeout(Duration::from_secs(10), wait).await.expect("nothing found within 10 s");
        found
    }

    fn ids(ws: &[Waiting]) -> Vec<u64> {
        let mut ids: Vec<u64> = ws.iter().map(|w| w.item.id).collect();
        ids.sort();
        ids
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn only_the_connections_with_something_to_read_come_out() {
        runtime().block_on(async {
            let mut room = WaitRoom::new(Duration::from_secs(60)).unwrap();
            let mut clients = fill(&mut room, 0..200);
            // Bytes on some, the end of the stream on another: both are for a second look.
            for i in [3, 77, 150] {
                clients[i].write_all(b"GET").unwrap();
            }
            clients[199].shutdown(std::net::Shutdown::Write).unwrap();
            let mut out = Vec::new();
            while out.len() < 4 {
                let f = found(&mut room).await;
                assert!(f.expired.is_empty(), "expired: {:?}", ids(&f.expired));
                out.extend(f.readable);
            }
            assert_eq!(ids(&out), vec![3, 77, 150, 199]);
            let mut got = [0u8; 3];
            match &out.iter().find(|w| w.item.id == 3).unwrap().stream {
                Stream::Unix(s) => std::io::Read::read_exact(&mut &*s, &mut got).unwrap(),
                Stream::Tcp(_) => unreachable!(),
            }
            assert_eq!(&got, b"GET", "the bytes are still there for the look");
            // The rest still wait, and each is handed back once.
            let rest = room.take_all();
            assert_eq!(rest.len(), 196);
            assert!(room.is_empty() && room.take_all().is_empty());
        });
    }

    #[test]
    fn a_socket_reports_once_until_it_waits_again() {
        runtime().block_on(async {
            let mut room = WaitRoom::new(Duration::from_secs(60)).unwrap();
            let mut clients = fill(&mut room, 0..2);
            clients[0].write_all(b"x").unwrap();
            let w = found(&mut room).await.readable.pop().unwrap();
            assert_eq!(w.item.id, 0);
            // Still readable, but out of the room: no second report...
            clients[1].write_all(b"y").unwrap();
            assert_eq!(ids(&found(&mut room).await.readable), vec![1]);
            // ...until it waits again (still readable: it comes straight back out).
            room.wait(w).unwrap();
            assert_eq!(ids(&found(&mut room).await.readable), vec![0]);
            assert!(room.is_empty());
        });
    }

    #[test]
    fn silent_connections_expire_after_their_timeout_and_stale_entries_are_skipped() {
        runtime().block_on(async {
            let timeout = Duration::from_millis(200);
            let mut room = WaitRoom::new(timeout).unwrap();
            let t0 = Instant::now();
            let mut clients = fill(&mut room, 0..3);
            // One leaves the room before its time: its slot is reused by a newcomer,
            // whose deadline is later; the first occupant's deadline must not take it.
            clients[1].write_all(b"x").unwrap();
            let mut out = found(&mut room).await.readable;
            assert_eq!(ids(&out), vec![1]);
            room.leave(&mut out[0], false);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t10 = Instant::now();
            let late = fill(&mut room, 10..11);
            // Only lower bounds: a stalled machine may let them all come out together.
            let mut expired = Vec::new();
            while expired.len() < 3 {
                let f = found(&mut room).await;
                assert!(f.readable.is_empty());
                for w in f.expired {
                    expired.push((w.item.id, Instant::now()));
                }
            }
            assert!(room.is_empty());
            expired.sort();
            assert_eq!(expired.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 2, 10]);
            for (id, at) in expired {
                let since = if id == 10 { t10 } else { t0 };
                assert!(at - since >= timeout, "{id} expired after {:?}", at - since);
            }
            drop((clients, late));
        });
    }

    #[test]
    fn a_batch_of_stale_events_still_leaves_the_room_watched() {
        runtime().block_on(async {
            let mut room = WaitRoom::new(Duration::from_secs(60)).unwrap();
            // Another copy of the socket's file outlives the room's (as the master's does
            // until it reads the ACK): it stays in the epoll set after it leaves the room
            // (expired, or here handed out) and is closed.
            let (mut ca, sa) = UnixStream::pair().unwrap();
            let other_copy = sa.try_clone().unwrap();
            room.add(item(1), Stream::Unix(sa)).unwrap();
            assert_eq!(ids(&room.take_all()), vec![1]);
            let mut b = fill(&mut room, 2..3).pop().unwrap();
            ca.write_all(b"late").unwrap(); // an event for a slot now empty
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                b.write_all(b"GET").unwrap();
                b
            });
            // The stale event alone must not leave the room unwatched: 2 is found when
            // it becomes readable, not at the next unrelated wake-up (here the 10 s
            // limit of `found`; its own deadline is a minute away).
            let t0 = Instant::now();
            let f = found(&mut room).await;
            let took = t0.elapsed();
            let _b = writer.join().unwrap();
            assert!(took < Duration::from_secs(5), "readable after 50 ms, found after {took:?}");
            assert_eq!(ids(&f.readable), vec![2], "expired instead: {:?}", ids(&f.expired));
            drop(other_copy);
        });
    }

    #[test]
    fn the_line_of_deadlines_stays_short_behind_one_that_waits_long() {
        runtime().block_on(async {
            let mut room = WaitRoom::new(Duration::from_secs(60)).unwrap();
            let _first = fill(&mut room, 0..1); // silent all along, at the front
            for round in 0..50u64 {
                let mut clients = fill(&mut room, 1000 + round * 100..1000 + round * 100 + 100);
                for c in &mut clients {
                    c.write_all(b"x").unwrap();
                }
                let mut out = 0;
                while out < 100 {
                    for mut w in found(&mut room).await.readable {
                        room.leave(&mut w, false);
                        out += 1;
                    }
                }
            }
            assert_eq!(room.live, 1);
            assert!(room.deadlines.len() <= 2 * room.live + 1024 + 100, "{} entries for one", room.deadlines.len());
        });
    }

    /// A connection out for a look, kept alive: it waits again edge-triggered.
    fn keep(room: &mut WaitRoom, mut w: Waiting, after: Duration) {
        w.kept = Some(Kept::default());
        w.deadline = WaitRoom::deadline_after(after);
        room.wait(w).unwrap();
    }

    fn read_all(w: &Waiting) {
        let mut buf = [0u8; 64];
        let Stream::Unix(s) = &w.stream else { unreachable!() };
        s.set_nonblocking(true).unwrap();
        while std::io::Read::read(&mut &*s, &mut buf).is_ok_and(|n| n > 0) {}
    }

    #[test]
    fn a_kept_connection_reports_each_new_request_and_keeps_its_place() {
        runtime().block_on(async {
            let mut room = WaitRoom::new(Duration::from_secs(60)).unwrap();
            let mut clients = fill(&mut room, 0..1);
            let mut place = None;
            for round in 0..5 {
                clients[0].write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                let w = found(&mut room).await.readable.pop().expect("reported");
                // The same key and generation every time: no new registration.
                assert!(place.is_none_or(|p| p == w.slot), "round {round}: moved from {place:?} to {:?}", w.slot);
                place = Some(w.slot);
                read_all(&w);
                keep(&mut room, w, Duration::from_secs(60));
            }
            assert_eq!(room.live, 1);
            // Bytes that come while it is out for a look are reported once it is back.
            clients[0].write_all(b"x").unwrap();
            let w = found(&mut room).await.readable.pop().unwrap();
            clients[0].write_all(b"y").unwrap();
            keep(&mut room, w, Duration::from_secs(60));
            assert_eq!(ids(&found(&mut room).await.readable), vec![0]);
        });
    }

    #[test]
    fn a_kept_connection_expires_at_its_last_deadline_not_at_an_earlier_one() {
        runtime().block_on(async {
            let step = Duration::from_millis(150);
            let mut room = WaitRoom::new(Duration::from_secs(60)).unwrap();
            let mut clients = fill(&mut room, 0..1);
            // Kept with a short idle limit, then asked again before it: the limit counts
            // from the last answer (its first entry in the heap comes due and is moved).
            clients[0].write_all(b"a").unwrap();
            let w = found(&mut room).await.readable.pop().unwrap();
            read_all(&w);
            keep(&mut room, w, step);
            tokio::time::sleep(step / 2).await;
            clients[0].write_all(b"b").unwrap();
            let w = found(&mut room).await.readable.pop().unwrap();
            read_all(&w);
            let last = Instant::now();
            keep(&mut room, w, step);
            let f = found(&mut room).await;
            assert_eq!(ids(&f.expired), vec![0]);
            assert!(last.elapsed() >= step, "expired {:?} after its last answer", last.elapsed());
            assert!(room.is_empty());
        });
    }
}
