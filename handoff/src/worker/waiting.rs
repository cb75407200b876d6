//! The waiting room: connections that had nothing to read when the built-in worker's
//! first look came wait here for their first bytes, then get a second look.
//!
//! Without `,deferred` the master hands a connection on as soon as its handshake is
//! done, so a third of a connection-per-request client's connections reach the worker
//! before their request (over a real network, more). Waiting as tokio streams costs
//! each one a task, a timer, `FIONBIO`, an `epoll_ctl` to register and another to
//! deregister: on loopback, 5% of the server's whole CPU per request more than waiting
//! here (`BENCHMARKS.md`). Here each costs one `epoll_ctl`, in an epoll set of the
//! worker's own that is registered with tokio once (an epoll descriptor is readable
//! while it has events): `EPOLLONESHOT` disarms a socket once it has reported, and the
//! kernel drops it from the set when it closes, so only a socket that goes on to a
//! server (which may hand it back to the master, keeping it open) is deregistered; the sockets
//! that become readable in one turn share one `epoll_wait`; and one timer, re-armed
//! at most once per timeout, serves every deadline, which all share one length and so
//! come in arrival order.

use std::collections::VecDeque;
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

/// A connection waiting for its first bytes.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) item: ConnItem,
    pub(crate) stream: Stream,
    /// When it stops waiting: its first request head must be complete by then.
    pub(crate) deadline: Instant,
}

/// What one poll of the room found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Readable (bytes, end of stream or an error): out of the room, for a second look.
    pub(crate) readable: Vec<Waiting>,
    /// Out of time with nothing read: out of the room, to be closed.
    pub(crate) expired: Vec<Waiting>,
}

/// Connections waiting for their first bytes, each until its deadline.
#[derive(Debug)]
pub(crate) struct WaitRoom {
    ep: AsyncFd<Arc<OwnedFd>>,
    /// Indexed by key (the low half of a socket's epoll data; the high half is the
    /// slot's generation, so that an event or deadline of a slot's earlier occupant is
    /// recognised as stale).
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// (deadline, key, generation), in the order the connections came, which is also
    /// deadline order; entries of connections already gone are skipped.
    order: VecDeque<(Instant, u32, u32)>,
    /// Fires at or before the first deadline (early is harmless: it is set again).
    timer: Pin<Box<Sleep>>,
    timeout: Duration,
    /// The epoll data of the sockets one `epoll_wait` found readable.
    keys: Vec<u64>,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    waiting: Option<Waiting>,
}

impl WaitRoom {
    /// An empty room whose connections wait at most `timeout`. Needs a tokio runtime.
    pub(crate) fn new(timeout: Duration) -> io::Result<WaitRoom> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        Ok(WaitRoom {
            ep: crate::sys::async_fd(Arc::new(ep))?,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            order: VecDeque::new(),
            timer: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            keys: Vec::with_capacity(EVENTS),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Lets `stream` wait, from now, for its first bytes; gives it back if the kernel
    /// refuses to watch it (out of memory, or the user's epoll watch limit).
    pub(crate) fn add(&mut self, item: ConnItem, stream: Stream) -> Result<(), (ConnItem, Stream)> {
        let now = Instant::now();
        // The built-in worker caps its timeout at a year; should a caller not, a
        // deadline a century away is as good as none, and no panic.
        let deadline = now.checked_add(self.timeout).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        self.put(Waiting { item, stream, deadline }, true).map_err(|w| (w.item, w.stream))
    }

    /// Lets a connection that reported readable but had nothing to read wait again,
    /// until its own deadline, which may then be met up to one timeout late (it goes
    /// to the back of the line). Rare: epoll reports `EPOLLIN` only with bytes or an
    /// end to read.
    pub(crate) fn wait_again(&mut self, w: Waiting) -> Result<(), Waiting> {
        self.put(w, false)
    }

    fn put(&mut self, w: Waiting, new: bool) -> Result<(), Waiting> {
        let key = match self.free.pop() {
            Some(k) => k,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.slots[key as usize].generation;
        let data = epoll::EventData::new_u64(u64::from(generation) << 32 | u64::from(key));
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        // A socket that reported once is still in the set, disarmed: arm it again.
        let watched = if new {
            epoll::add(self.ep.get_ref(), &w.stream, data, flags)
        } else {
            epoll::modify(self.ep.get_ref(), &w.stream, data, flags)
        };
        if watched.is_err() {
            self.free.push(key);
            return Err(w);
        }
        self.order.push_back((w.deadline, key, generation));
        self.slots[key as usize].waiting = Some(w);
        self.live += 1;
        Ok(())
    }

    /// Takes a socket that leaves the room for a server out of the room's epoll set.
    /// Closing it used to be enough (the kernel drops an entry with its last
    /// descriptor), but a connection may now go back to the master and live on
    /// elsewhere: its entry would stay here, disarmed, for the connection's lifetime.
    pub(crate) fn release(&self, s: &Stream) {
        let _ = epoll::delete(self.ep.get_ref(), s);
    }

    fn take(&mut self, key: u32, generation: u32) -> Option<Waiting> {
        let slot = self.slots.get_mut(key as usize)?;
        if slot.generation != generation {
            return None;
        }
        let w = slot.waiting.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key);
        self.live -= 1;
        Some(w)
    }

    fn is_live(&self, key: u32, generation: u32) -> bool {
        self.slots.get(key as usize).is_some_and(|s| s.generation == generation && s.waiting.is_some())
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
                    self.keys.extend(events.iter().map(|ev| ev.data.u64()));
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
            for data in keys.drain(..) {
                if let Some(w) = self.take(data as u32, (data >> 32) as u32) {
                    found.readable.push(w);
                }
            }
            self.keys = keys;
            // And round again even after a partial batch: every event in it may have
            // been stale, and only a poll that returns Pending registers the waker
            // (from the readiness just cleared: no system call).
        }
        let now = Instant::now();
        while let Some(&(deadline, key, generation)) = self.order.front() {
            if self.is_live(key, generation) && deadline > now {
                break;
            }
            self.order.pop_front();
            if let Some(w) = self.take(key, generation) {
                found.expired.push(w);
            }
        }
        // Connections leave in roughly the order they came, so the front pops keep the
        // line short; one that waits long would not let them pop behind it.
        if self.order.len() > 2 * self.live + 1024 {
            let slots = &self.slots;
            self.order.retain(|&(_, k, g)| slots[k as usize].generation == g && slots[k as usize].waiting.is_some());
        }
        if let Some(&(first, ..)) = self.order.front() {
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

    /// Takes out every waiting connection (the worker is draining, or going away).
    pub(crate) fn take_all(&mut self) -> Vec<Waiting> {
        self.order.clear();
        self.free.clear();
        self.live = 0;
        let mut all = Vec::new();
        for (key, slot) in self.slots.iter_mut().enumerate() {
            slot.generation = slot.generation.wrapping_add(1);
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
            room.wait_again(w).unwrap();
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
            assert_eq!(ids(&found(&mut room).await.readable), vec![1]);
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
                    out += found(&mut room).await.readable.len();
                }
            }
            assert_eq!(room.live, 1);
            assert!(room.order.len() <= 2 * room.live + 1024 + 100, "{} entries for one", room.order.len());
        });
    }
}
