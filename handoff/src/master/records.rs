//! The worker table's records: one [`Worker`] per process (its channel, its
//! connections in flight, what it announced, how it is doing), one [`Slot`] per worker
//! number (restarts, backoff, the last lines of stderr), and the questions the other
//! parts ask of them (is it ready, proven, busy, returning connections).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::*;

/// Hashes connection ids for the in-flight tables, looked up several times per request
/// (sent, ACK, DONE or RETURN). The ids are the master's own, consecutive: a worker can
/// look one up but never choose what is stored, so no flooding of one bucket is to
/// fear, and a multiply by an odd constant (Fibonacci hashing) spreads consecutive ids
/// over every bucket at a fraction of SipHash's cost.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Serving; takes new connections.
    Running,
    /// Being replaced (recycle, reload): still takes connections until its successor is
    /// ready, then is drained.
    Retiring,
    /// Sent DRAIN: finishing its connections, takes no new ones.
    Draining,
    /// Being killed (hung, misbehaving, or a stop timed out).
    Killing,
    /// Its channel closed; waiting to reap the process.
    Lost,
}

/// A connection handed to a worker and not yet finished.
#[derive(Debug)]
pub struct Inflight {
    /// The master's copy of the descriptor, kept until the worker ACKs it.
    pub fd: Option<OwnedFd>,
    /// Listener index, to hand it on unchanged.
    pub listener: u16,
    /// The PROXY header's addresses, to hand it on unchanged (the header itself was
    /// consumed by the master).
    pub addrs: Option<crate::proxy::ProxyHeader>,
    /// [`crate::wire::flags`] it was sent with (a continued connection stays one).
    pub flags: u8,
}

/// One worker process.
#[derive(Debug)]
pub struct Worker {
    /// Unique for the master's lifetime; names the event-loop tokens.
    pub key: usize,
    /// `HANDOFF_WORKER_ID`.
    pub slot: usize,
    /// Process id.
    pub pid: u32,
    /// The master's end of the channel; `None` once closed.
    pub chan: Option<OwnedFd>,
    /// The read end of the worker's stderr pipe.
    pub stderr: Option<OwnedFd>,
    /// Where its output stands in its lines (for the `[worker N]` labels).
    pub lines: Lines,
    /// Capabilities from READY (0 until then, or forever for minimal workers).
    pub caps: u32,
    /// READY received.
    pub ready: bool,
    /// Connection ids below this were sent before READY: not tracked.
    pub tracked_from: u64,
    /// Life stage.
    pub state: State,
    /// Connections sent and not yet DONE (only for workers that report DONE or ACK).
    pub inflight: HashMap<u64, Inflight, BuildHasherDefault<IdHasher>>,
    /// Ids of connections kept for an ACK, with when they were sent, in sending order;
    /// entries already ACKed are dropped lazily from the front. The front is the
    /// oldest connection still waiting for its ACK.
    pub ack_queue: VecDeque<(u64, Instant)>,
    /// Connections sent, ever.
    pub dispatched: u64,
    /// Continued connections (the next request of a handed-back one) in `inflight`:
    /// while the worker hands its connections back, its requests in progress.
    pub requests_in: u32,
    /// Continued connections sent, with when, oldest first: one that has been in the
    /// worker longer than the age `requests_in` is read with stops counting (a stream,
    /// a WebSocket, a connection the worker chose to keep).
    pub continued: VecDeque<(u64, Instant)>,
    /// When it last handed a connection back.
    pub last_return: Option<Instant>,
    /// DRAIN is owed but the channel was full: sent when it becomes writable.
    pub drain_pending: bool,
    /// Connections this worker may take before it is recycled.
    pub max_requests: Option<u64>,
    /// The last send hit a full channel; wait for it to become writable.
    pub blocked_since: Option<Instant>,
    /// Its channel is watched for room (WRITABLE), which it is only while blocked:
    /// watched always, every frame the worker reads would wake the master.
    pub watching_room: bool,
    /// Spawn time.
    pub started: Instant,
    /// Last frame received.
    pub last_heard: Instant,
    /// When the current kill escalates to SIGKILL, or the lost worker is killed.
    pub kill_at: Option<Instant>,
    /// Its exit status, once reaped.
    pub exit: Option<Exit>,
    /// Killed for not being proven within `--ready-timeout`: its failed start was
    /// counted at the kill.
    pub timed_out: bool,
    /// Stopped because the reload that started it failed: its exit is expected.
    pub abandoned: bool,
    /// What it may still send before it counts as flooding the master.
    pub frames: FrameBudget,
    /// A worker that does not ACK: since when its channel has held unread messages
    /// with no sign of it reading, the amount at the last look, and `dispatched` then
    /// (see [`Worker::unread_for`]).
    pub unread: Option<(Instant, usize, u64)>,
    /// Frames queued in its channel and not yet read, at the master's last look (kept
    /// only for a worker the master tracks nothing of: see [`Worker::tracks`]).
    pub unread_frames: u64,
    /// Its channel reported ECONNRESET: it closed its end with frames unread.
    pub channel_reset: bool,
    /// When it last reported DONE for a connection it never ACKed (never received).
    pub lost_frame_at: Option<Instant>,
    /// Between its BUSY and its FREE: one long request holds it, so that anything sent
    /// to it now would wait behind that request.
    pub busy: bool,
    /// BUSY frames it sent (stalls its own watch found).
    pub stalls: u64,
}

impl Worker {
    /// How long its channel has held messages it has not read, with no sign of it
    /// reading any. The master cannot see a worker that sends nothing read its
    /// connections, but it sees the queue between two looks: smaller, or no larger
    /// although more was sent, means the worker took some. A queue that only grows
    /// (or stays with nothing sent) does not.
    pub fn unread_for(&mut self, now: Instant) -> Duration {
        let queued = self.chan.as_ref().and_then(|c| crate::sys::socket::unread_by_peer(c.as_fd()).ok());
        let sent = self.dispatched;
        match (queued, self.unread) {
            (None | Some(0), _) => {
                self.unread = None;
                return Duration::ZERO;
            }
            (Some(q), Some((since, last, sent_then))) if q > last || (q == last && sent == sent_then) => {
                self.unread = Some((since, q, sent))
            }
            (Some(q), _) => self.unread = Some((now, q, sent)),
        }
        self.unread.map_or(Duration::ZERO, |(since, _, _)| now.duration_since(since))
    }

    /// Reports DONE, so its `active` count is meaningful.
    pub fn reports_load(&self) -> bool {
        self.ready && self.caps & cap::DONE != 0
    }

    /// Connections it is serving, as far as the master knows.
    pub fn active(&self) -> u32 {
        if self.caps & cap::DONE != 0 {
            self.inflight.len() as u32
        } else {
            0
        }
    }

    /// The master tracks its connections (it sent READY with ACK or DONE): the
    /// connections it dies with are counted from the in-flight table, not its channel.
    pub fn tracks(&self) -> bool {
        self.ready && self.caps & (cap::ACK | cap::DONE) != 0
    }

    /// It did not receive a connection (DONE without ACK) in the last
    /// [`NOT_RECEIVED_AVOID`].
    pub fn lost_frame_recently(&self, now: Instant) -> bool {
        self.lost_frame_at.is_some_and(|t| now.duration_since(t) < NOT_RECEIVED_AVOID)
    }

    /// May hand connections back (RETURN).
    pub fn returns(&self) -> bool {
        self.ready && self.caps & cap::RETURN != 0
    }

    /// Stops tracking connection `id` (DONE, RETURN, or an ACK from a worker that
    /// reports no DONE).
    pub fn forget(&mut self, id: u64) -> Option<Inflight> {
        let e = self.inflight.remove(&id)?;
        if e.flags & crate::wire::flags::CONTINUED != 0 {
            self.requests_in = self.requests_in.saturating_sub(1);
        }
        Some(e)
    }

    /// Starts tracking connection `id`, sent at `now`.
    pub fn track(&mut self, id: u64, e: Inflight, now: Instant) {
        if e.flags & crate::wire::flags::CONTINUED != 0 {
            self.requests_in += 1;
            self.continued.push_back((id, now));
        }
        self.inflight.insert(id, e);
    }

    /// Continued connections it is working on, not counting those sent longer than
    /// `age` ago (they no longer count, ever: whatever holds them so long is not a
    /// request waiting for the worker's CPU, and must not keep it full for good).
    pub fn requests_in(&mut self, now: Instant, age: Duration) -> u32 {
        while let Some(&(id, at)) = self.continued.front() {
            if now.duration_since(at) < age {
                break;
            }
            self.continued.pop_front();
            if let Some(e) = self.inflight.get_mut(&id) {
                if e.flags & crate::wire::flags::CONTINUED != 0 {
                    e.flags &= !crate::wire::flags::CONTINUED;
                    self.requests_in = self.requests_in.saturating_sub(1);
                }
            }
        }
        self.requests_in
    }

    /// Hands its connections back now (it did within `window`): then `requests_in`
    /// counts what it is working on, and it should not be given more than a few.
    pub fn returning(&self, now: Instant, window: Duration) -> bool {
        self.last_return.is_some_and(|t| now.duration_since(t) < window)
    }

    /// Connections sent but not yet ACKed (the master still holds them).
    pub fn unacked(&self) -> usize {
        self.inflight.values().filter(|i| i.fd.is_some()).count()
    }

    /// May get connections: READY sent, or (a minimal worker, which never sends it)
    /// alive for [`MINIMAL_READY_AFTER`]. An unproven worker gets them only when no
    /// proven one can (see [`Worker::proven`]).
    pub fn is_ready(&self, now: Instant) -> bool {
        self.ready || now.duration_since(self.started) >= MINIMAL_READY_AFTER
    }

    /// Has shown it can serve: it sent READY, or (a minimal worker) it has lived for
    /// [`MINIMAL_PROVEN_AFTER`]. Only a proven successor lets a rolling restart, a
    /// recycle or a scale drain the worker it replaces; and traffic prefers proven
    /// workers, so a new generation that dies a second (or five) into its start takes
    /// no client with it and the old one goes on serving.
    pub fn proven(&self, now: Instant) -> bool {
        self.ready || now.duration_since(self.started) >= MINIMAL_PROVEN_AFTER
    }

    /// When the oldest connection still waiting for its ACK was sent.
    pub fn oldest_unacked(&mut self) -> Option<Instant> {
        while let Some(&(id, at)) = self.ack_queue.front() {
            if self.inflight.get(&id).is_some_and(|i| i.fd.is_some()) {
                return Some(at);
            }
            self.ack_queue.pop_front();
        }
        None
    }

    /// Hands back every connection the worker has not ACKed, for another worker.
    pub fn take_unacked(&mut self) -> Vec<(u64, Inflight)> {
        let ids: Vec<u64> = self.inflight.iter().filter(|(_, i)| i.fd.is_some()).map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| self.forget(id).map(|i| (id, i))).collect()
    }
}

/// The history of one slot, across the workers that filled it.
#[derive(Debug, Default)]
pub struct Slot {
    /// Workers started in this slot after the first.
    pub restarts: u32,
    /// Consecutive workers that died before [`HEALTHY_AFTER`].
    pub failed_starts: u32,
    /// When to start the next worker, if the slot is waiting for one.
    pub respawn_at: Option<Instant>,
    /// The last lines its workers wrote to stderr.
    pub stderr_tail: VecDeque<String>,
    /// Bytes of an unfinished stderr line.
    pub partial: Vec<u8>,
    /// The slot's last exit, for error messages.
    pub last_exit: Option<Exit>,
    /// Connections handed to this slot's workers, ever.
    pub dispatched: u64,
    /// Why its last start failed (`exit status 1 after 1.0s, before it was ready`,
    /// `not ready after 60s`), while `failed_starts` is above 0.
    pub last_failure: Option<String>,
    /// A worker of this slot was killed for `--ready-timeout` since the failures were
    /// last reset (a reload gives up on the first).
    pub timed_out: bool,
}

impl Slot {
    /// How long to wait before the next start.
    pub fn backoff(&self) -> Duration {
        match self.failed_starts {
            0 => Duration::ZERO,
            n => (Duration::from_millis(100) * 2u32.saturating_pow(n - 1)).min(MAX_BACKOFF),
        }
    }

    /// Keeps the last lines of what the slot's workers wrote to stderr.
    pub fn take_stderr(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.push_line(String::from_utf8_lossy(&line[..nl]).into_owned());
        }
        if self.partial.len() > 4096 {
            let line = std::mem::take(&mut self.partial);
            self.push_line(String::from_utf8_lossy(&line).into_owned());
        }
    }

    fn push_line(&mut self, line: String) {
        if self.stderr_tail.len() == STDERR_LINES {
            self.stderr_tail.pop_front();
        }
        self.stderr_tail.push_back(line);
    }
}
