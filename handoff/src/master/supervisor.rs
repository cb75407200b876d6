//! The worker table: one record per worker process, per-slot restart history, and
//! how a worker is started.
//!
//! A *slot* is a worker position `0..N` (`HANDOFF_WORKER_ID`); a *worker* is one
//! process filling a slot. During a recycle or rolling reload a slot briefly has two
//! workers (the old one draining, the new one starting), so workers carry a unique
//! `key` that also names their event-loop tokens: an event for a dead worker can never
//! reach its successor.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{Config, WorkerKind};
use crate::sys::process::{self as sysproc, Exit};
use crate::wire::cap;

/// How many lines of a worker's stderr are kept for error messages.
pub const STDERR_LINES: usize = 12;
/// A worker that lives shorter than this counts as a failed start.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(1);
/// Longest wait before respawning a worker that keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Failed starts in a row, with no worker ever healthy, that stop the master.
pub const CRASH_LOOP_STARTS: u32 = 3;
/// A worker that has not sent READY this long after it started is taken for a minimal
/// worker (one that never will) and starts getting connections. Until then it gets
/// none: a full worker's first connections are then protected by its ACKs, and a
/// worker that dies at start-up takes no connection with it.
pub const MINIMAL_READY_AFTER: Duration = Duration::from_millis(300);

/// How long a worker that never sends READY must live to count as proven (see
/// [`Worker::proven`]): longer than a broken deploy takes to die (an app that fails
/// after its imports), short enough for a rolling restart of minimal workers.
pub const MINIMAL_PROVEN_AFTER: Duration = Duration::from_secs(10);

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
    pub inflight: HashMap<u64, Inflight>,
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
    /// Spawn time.
    pub started: Instant,
    /// Last frame received.
    pub last_heard: Instant,
    /// When the current kill escalates to SIGKILL, or the lost worker is killed.
    pub kill_at: Option<Instant>,
    /// Its exit status, once reaped.
    pub exit: Option<Exit>,
}

impl Worker {
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

/// Reads what is available from a non-blocking stderr pipe into `slot` and `out`.
/// Returns false at end of file.
pub fn drain_stderr(fd: &OwnedFd, slot: &mut Slot, out: &mut Forward, lines: &mut Lines) -> bool {
    !matches!(read_stderr(fd, slot, usize::MAX, out, lines), StderrRead::Eof)
}

/// Where one worker's output stands in its lines, to label each line with the worker
/// it came from (`[worker 3] `), as pm2 and supervisord do: with several workers
/// writing to one log, a line without its worker is a line nobody can place.
#[derive(Debug)]
pub struct Lines {
    prefix: Vec<u8>,
    at_start: bool,
}

impl Lines {
    /// For the worker in `slot`.
    pub fn new(slot: usize) -> Lines {
        Lines { prefix: format!("[worker {slot}] ").into_bytes(), at_start: true }
    }

    /// Queues `bytes` on `out`, each line that starts in them labelled.
    fn push(&mut self, bytes: &[u8], out: &mut Forward) {
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            if self.at_start {
                out.push(&self.prefix);
            }
            out.push(line);
            self.at_start = line.ends_with(b"\n");
        }
    }
}

/// Most worker output waiting for the master's stderr; more is dropped (and counted).
pub const FORWARD_MAX: usize = 1 << 20;

/// Worker output on its way to the master's stderr, written without ever blocking the
/// loop: if whoever reads the master's stderr (a terminal, journald, a pipe) falls
/// behind, output waits here, up to [`FORWARD_MAX`], and beyond that is dropped, with
/// a line saying how much once the reader has caught up. A worker that floods its
/// stderr thus costs log lines, never the master's attention to connections.
#[derive(Debug, Default)]
pub struct Forward {
    buf: Vec<u8>,
    dropped: u64,
    /// Bytes dropped since the master started.
    pub dropped_total: u64,
}

impl Forward {
    /// Queues bytes a worker wrote.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > FORWARD_MAX {
            self.dropped += bytes.len() as u64;
            self.dropped_total += bytes.len() as u64;
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Writes what the master's stderr takes now; keeps the rest for later.
    pub fn flush(&mut self) {
        if self.buf.is_empty() && self.dropped == 0 {
            return;
        }
        if self.buf.is_empty() {
            let note = format!(
                "[handoff] {} bytes of worker output dropped: the master's stderr was not being read\n",
                std::mem::take(&mut self.dropped)
            );
            self.buf.extend_from_slice(note.as_bytes());
        }
        while !self.buf.is_empty() {
            match crate::sys::write_stderr_nowait(&self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // stderr closed or broken: nobody will read this.
                Err(_) => {
                    self.buf.clear();
                    self.dropped = 0;
                    break;
                }
            }
        }
    }
}

/// What one bounded read of a stderr pipe found.
#[derive(Debug, PartialEq, Eq)]
pub enum StderrRead {
    /// The pipe is empty for now.
    Empty,
    /// The read stopped at its bound with more perhaps waiting.
    More,
    /// The worker closed its end.
    Eof,
}

/// Reads at most `chunks` buffers of a non-blocking stderr pipe into `slot`, so a
/// worker writing without pause cannot hold the master's loop.
pub fn read_stderr(fd: &OwnedFd, slot: &mut Slot, chunks: usize, out: &mut Forward, lines: &mut Lines) -> StderrRead {
    let mut buf = [0u8; 8192];
    let mut n_read = 0;
    while n_read < chunks {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => return StderrRead::Eof,
            Ok(n) => {
                n_read += 1;
                lines.push(&buf[..n], out);
                slot.take_stderr(&buf[..n])
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return StderrRead::Empty,
        }
    }
    StderrRead::More
}

/// What a new worker gets.
pub struct SpawnArgs<'a> {
    /// Settings.
    pub cfg: &'a Config,
    /// Slot number.
    pub slot: usize,
    /// Number of slots.
    pub slots: usize,
    /// The worker's end of the channel.
    pub channel: &'a OwnedFd,
}

/// Starts one worker process; returns its pid and stderr pipe.
pub fn spawn(args: SpawnArgs<'_>) -> io::Result<(u32, Option<OwnedFd>)> {
    let SpawnArgs { cfg, slot, slots, channel } = args;
    // Looked up here, in the master, for either kind: a failure is the master's error,
    // not a crash loop.
    let (uid, gid) = (crate::master::privileges::uid(cfg)?, crate::master::privileges::gid(cfg)?);
    let mut cmd = match &cfg.worker {
        WorkerKind::Fork(f) => return spawn_fork(f, cfg, slot, slots, channel, (uid, gid)),
        WorkerKind::Command(argv) => {
            // Validated non-empty by the config; a library caller may still hand us one.
            let Some((prog, rest)) = argv.split_first() else {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty worker command"));
            };
            let mut c = Command::new(prog);
            c.args(rest);
            c
        }
        WorkerKind::Builtin { static_dir, static_no_symlinks, test_knobs } => {
            let mut c = Command::new(std::env::current_exe()?);
            c.arg("worker");
            if let Some(d) = static_dir {
                c.arg("--static").arg(d);
            }
            if *static_no_symlinks {
                c.arg("--static-no-symlinks");
            }
            if *test_knobs {
                c.arg("--test-knobs");
            }
            if let Some(f) = cfg.access_log {
                c.env(crate::worker::access_log::ENV_ACCESS_LOG, f.name());
            }
            c
        }
    };
    cmd.env(crate::worker::ENV_FD, channel.as_raw_fd().to_string())
        .env(crate::worker::ENV_WORKER_ID, slot.to_string())
        .env(crate::worker::ENV_WORKERS, slots.to_string())
        .env(crate::worker::ENV_HEARTBEAT_MS, cfg.heartbeat.as_millis().to_string())
        .env(crate::worker::ENV_RETURN, cfg.hand_back.name())
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        cmd.uid(uid);
    }
    if let Some(gid) = gid {
        cmd.gid(gid);
    }
    let no_new_privs = cfg.user.is_some() || cfg.group.is_some();
    let mut child = sysproc::spawn_with_channel(&mut cmd, channel.as_fd(), no_new_privs)?;
    let stderr = child.stderr.take().map(OwnedFd::from);
    if let Some(e) = &stderr {
        rustix::io::ioctl_fionbio(e, true)?;
    }
    Ok((child.id(), stderr))
}

/// Forks a worker that runs the closure `f` (no exec); the child sees the same
/// environment variables as an exec'd worker, so the worker API works unchanged.
fn spawn_fork(
    f: &crate::config::WorkerFn,
    cfg: &Config,
    slot: usize,
    slots: usize,
    channel: &OwnedFd,
    (uid, gid): (Option<u32>, Option<u32>),
) -> io::Result<(u32, Option<OwnedFd>)> {
    let env = [
        (crate::worker::ENV_WORKER_ID, slot.to_string()),
        (crate::worker::ENV_WORKERS, slots.to_string()),
        (crate::worker::ENV_HEARTBEAT_MS, cfg.heartbeat.as_millis().to_string()),
        (crate::worker::ENV_RETURN, cfg.hand_back.name().to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let body = || crate::worker::Context::run_fork_body(&*f.0, slot);
    let child = sysproc::ForkChild { fd_var: crate::worker::ENV_FD, env: &env, uid, gid };
    let (pid, stderr) = sysproc::fork_worker(channel.as_fd(), &child, &body)?;
    Ok((pid, Some(stderr)))
}
