//! The control socket: what `handoff status` and `handoff ctl` say to a running master,
//! how they find it, and what it answers.
//!
//! Every master (`handoff run`, and every library [`Server`](crate::Server)) has its own
//! control socket, so that no command ever reaches a master by accident:
//!
//! - **Where.** In a runtime directory private to the user ([`runtime_dir`]):
//!   `/run/handoff/` for root, `$XDG_RUNTIME_DIR/handoff/` for others if that directory
//!   is theirs, else `/tmp/handoff-<uid>/` (`$HANDOFF_RUNTIME_DIR` overrides). The master creates it mode 0700 and refuses to
//!   use one that is not a directory of its own user that nobody else can write (a
//!   directory pre-created by another user to catch the commands). The socket is
//!   `<pid>.sock` there, mode 0600, unless `--control PATH` names another.
//! - **Registry.** Beside it the master writes `<pid>.json` (a [`MasterEntry`]: pid,
//!   listeners, socket path; also for an explicit `--control`), rewritten when a reload
//!   changes the listeners and removed at exit. [`list_masters`] reads them and drops
//!   the entries of masters that have died (the pid is gone or belongs to a newer
//!   process: the entry records the process's start time).
//! - **Choice.** [`find_master`]: with exactly one master running, `status` and `ctl`
//!   act on it; with several they refuse and list them, and `--master PID` or
//!   `--listen ADDR` chooses (`--control PATH` still names a socket directly).
//! - **Who may talk.** The master checks each client's credentials (`SO_PEERCRED`):
//!   only its own user and root; others get a refusal and nothing else. The client
//!   checks the master's in turn: a socket served by another user (an impostor) is
//!   refused before a command is sent.
//!
//! A client connects, writes one command line, and reads one JSON document until the
//! master closes the connection:
//!
//! | command | effect | answer |
//! |---|---|---|
//! | `status` | — | a [`Status`] |
//! | `reload` | as SIGHUP: re-read the config, rolling restart | a [`Reply`] with the reload's id, at once; [`wait_reload`] follows it to its end |
//! | `scale N` | run N workers | a [`Reply`] |
//! | `drain ID` | replace worker ID (a fresh one first, then drain it) | a [`Reply`] |
//! | `stop` | as SIGTERM: graceful stop | a [`Reply`] |

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod registry;
pub use registry::*;

/// One worker, as `handoff status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    /// Slot (`HANDOFF_WORKER_ID`).
    pub id: usize,
    /// Process id.
    pub pid: u32,
    /// running, retiring, draining, killing, lost.
    pub state: String,
    /// READY received.
    pub ready: bool,
    /// Seconds since it started.
    pub uptime_s: f64,
    /// Workers started in this slot after the first.
    pub restarts: u32,
    /// Connections handed to it.
    pub dispatched: u64,
    /// Connections it holds (known only for workers that send DONE).
    pub active: u32,
    /// Connections sent and not yet ACKed.
    pub unacked: usize,
    /// Between a BUSY and its FREE: one long request holds it (see PROTOCOL.md).
    #[serde(default)]
    pub busy: bool,
    /// Long requests its stall watch reported (BUSY frames); each sent its idle
    /// connections back to the master.
    #[serde(default)]
    pub stalls: u64,
}

/// The master, as `handoff status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The master's pid.
    pub pid: u32,
    /// running, stopping, upgrading.
    pub phase: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Balancing policy.
    pub policy: String,
    /// Worker slots wanted.
    pub workers_wanted: usize,
    /// Listen addresses.
    pub listeners: Vec<String>,
    /// Every worker process, including ones being replaced.
    pub workers: Vec<WorkerStatus>,
    /// Idle keep-alive connections the master holds (handed back by workers).
    #[serde(default)]
    pub idle: usize,
    /// Counters since start.
    pub totals: Totals,
    /// Jain's fairness index of connections dispatched per slot since start (1 = even).
    pub fairness: f64,
    /// The control socket, metrics and health endpoints: connections and refusals.
    #[serde(default)]
    pub admin: AdminStatus,
    /// The last reload (SIGHUP or `reload`), if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadStatus>,
}

/// Where a reload stands: `handoff status` shows the last one, and `handoff ctl reload`
/// waits for its own to settle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadStatus {
    /// Numbered from 1 in the master's life; the `reload` command's [`Reply`] names it.
    pub id: u64,
    /// `in-progress`, `ok` or `failed`.
    pub state: String,
    /// `SIGHUP` or `control`.
    pub trigger: String,
    /// When it began, in seconds since the Unix epoch.
    pub started_unix: f64,
    /// When it settled, in seconds since the Unix epoch.
    #[serde(default)]
    pub finished_unix: Option<f64>,
    /// What it did, or why it failed.
    pub message: String,
    /// Slots whose worker is already one of the reload's and proven.
    pub replaced: usize,
    /// Slots the reload must fill with proven workers of its own.
    pub workers: usize,
    /// `--ready-timeout`, in seconds: no step of the reload waits longer than this for
    /// a new worker (a client waiting for the outcome can bound its wait by it).
    pub ready_timeout_s: f64,
}

impl ReloadStatus {
    /// Still under way.
    pub fn in_progress(&self) -> bool {
        self.state == "in-progress"
    }
}

/// Counters since start (the master's, as `handoff status` shows them; the master
/// re-exports this as `master::Totals`).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections handed to workers (including hand-ons).
    pub dispatched: u64,
    /// Connections taken back from dead workers and handed on.
    pub redispatched: u64,
    /// Connections lost with a dead worker that was serving them: ACKed and not DONE
    /// (or, for a worker that reports DONE without ACK, sent and not DONE).
    pub lost_with_worker: u64,
    /// Accept errors for lack of descriptors or memory.
    pub accept_exhausted: u64,
    /// Accept errors about a single connection.
    pub accept_transient: u64,
    /// Time spent with accepting paused.
    pub paused: Duration,
    /// Workers started.
    pub spawned: u64,
    /// Workers killed for breaking the protocol.
    pub protocol_kills: u64,
    /// Workers killed for hanging.
    pub hung_kills: u64,
    /// Worker starts that failed: the worker ended before it was proven (READY, or
    /// alive long enough), or was killed for `--ready-timeout`.
    #[serde(default)]
    pub failed_starts: u64,
    /// Workers killed because they were not proven within `--ready-timeout` (also
    /// counted in `failed_starts`).
    #[serde(default)]
    pub ready_timeouts: u64,
    /// Reloads asked for (SIGHUP or `reload`), refused ones included.
    #[serde(default)]
    pub reloads: u64,
    /// Reloads that failed: refused (the config did not load or a listener could not
    /// be bound), or whose new workers did not become ready.
    #[serde(default)]
    pub reloads_failed: u64,
    /// Workers recycled after `--max-requests`.
    pub recycled: u64,
    /// Connections closed for a bad or late PROXY header.
    #[serde(default)]
    pub proxy_errors: u64,
    /// Bytes of worker output and of the master's own log dropped because the master's
    /// stderr was not being read (filled in when the totals are read).
    #[serde(default)]
    pub worker_output_dropped: u64,
    /// Idle keep-alive connections workers handed back (RETURN).
    #[serde(default)]
    pub returned: u64,
    /// Handed-back connections dispatched again when their client sent a request.
    #[serde(default)]
    pub continued: u64,
    /// Of `continued`: those whose next request had arrived before the master read
    /// the RETURN, placed at once without being held idle.
    #[serde(default)]
    pub continued_at_return: u64,
    /// Handed-back idle connections whose client hung up (while held, or before the
    /// master read the RETURN).
    #[serde(default)]
    pub idle_hangups: u64,
    /// Held idle connections closed after `--keepalive-timeout`.
    #[serde(default)]
    pub idle_timeouts: u64,
    /// Held idle connections closed, oldest first, beyond `--max-idle`.
    #[serde(default)]
    pub idle_evicted: u64,
    /// Held idle connections closed by a graceful stop (no request had arrived).
    #[serde(default)]
    pub idle_closed_at_stop: u64,
    /// Connections to a `,proxy` listener closed unread: their source may not send
    /// PROXY headers (not in the listener's `proxy-from=`).
    #[serde(default)]
    pub proxy_refused: u64,
    /// Idle connections a worker handed back that the master could not hold (no
    /// descriptor or poll registration left): closed at once.
    #[serde(default)]
    pub idle_not_held: u64,
    /// Connections still unread in the channel of a worker the master tracks nothing of
    /// (a minimal worker: no ACK, no DONE) when that worker died: the queue as it
    /// stands when the master learns of the death (`SIOCOUTQ`, exact) if the kernel
    /// has not freed it yet; else, when the kernel says some were unread (ECONNRESET on
    /// the channel, not end-of-file), the queue at the master's last look (after each
    /// send and each tick: an upper bound, at least 1). Connections such a worker had
    /// already read die with it uncounted: the master cannot know them.
    #[serde(default)]
    pub lost_in_channel: u64,
    /// Connections a worker reported DONE without ever ACKing them (its descriptor
    /// never arrived: the worker is out of descriptors) when no other worker could
    /// take them: closed unanswered.
    #[serde(default)]
    pub lost_not_received: u64,
    /// Connections a worker reported DONE without ACKing them, handed to another
    /// worker instead (retried, not lost).
    #[serde(default)]
    pub retried_not_received: u64,
    /// Idle connections of a RETURN frame whose descriptors did not reach the master
    /// (`MSG_CTRUNC`: the master at its descriptor limit): closed by the kernel.
    #[serde(default)]
    pub lost_return_truncated: u64,
    /// Connections of `,proxy` listeners closed because no complete PROXY header came
    /// in time (also counted in `proxy_errors`).
    #[serde(default)]
    pub proxy_header_timeouts: u64,
    /// Connections of `,proxy` listeners closed for a malformed PROXY header (also
    /// counted in `proxy_errors`).
    #[serde(default)]
    pub proxy_header_bad: u64,
    /// Connections accepted but never handed to a worker when a stop ended: held, or
    /// still waiting for their PROXY header.
    #[serde(default)]
    pub lost_at_stop: u64,
}

/// The master's own endpoints, as `handoff status --json` shows them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AdminStatus {
    /// Connections open now, per endpoint.
    pub open: AdminCounts,
    /// Connections closed at once because the endpoint had its most open, per endpoint.
    pub refused_full: AdminCounts,
    /// Control connections refused because the peer was neither the master's user nor root.
    pub refused_peer: u64,
    /// Connections accepted with a descriptor kept in reserve for the endpoint, when
    /// the master had no other left.
    pub from_reserve: u64,
}

/// One number per admin endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AdminCounts {
    /// The control socket.
    pub control: u64,
    /// `/metrics`.
    pub metrics: u64,
    /// The health endpoint.
    pub health: u64,
}

/// The answer to a command other than `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    /// Whether the command was carried out (or started).
    pub ok: bool,
    /// What happened, or what was wrong.
    pub message: String,
    /// The master that answered (absent in answers of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<MasterId>,
    /// For a `reload` that started: its id, to follow in the status ([`wait_reload`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<u64>,
}

/// Which master answered a command: what `handoff ctl` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MasterId {
    /// Its pid.
    pub pid: u32,
    /// Its listen addresses.
    pub listeners: Vec<String>,
}

/// Errors finding or talking to a master.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Nobody listens at the path.
    #[error(
        "cannot reach a handoff master at {path}: {source} (is it running? `handoff status --list` shows the running masters)"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The exchange failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A path that another user could control: not used.
    #[error(
        "{path} {why}; refusing to use it: remove it, or choose a directory only you can write (HANDOFF_RUNTIME_DIR=DIR, or --control PATH)"
    )]
    Unsafe {
        /// The directory or socket.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The socket is served by a process of another user: not a master of ours.
    #[error(
        "{path} is served by uid {uid}, neither you (uid {me}) nor root: refusing to talk to it (an impostor, or another user's master: run as that user)"
    )]
    Impostor {
        /// The socket path.
        path: PathBuf,
        /// The serving process's uid.
        uid: u32,
        /// Ours.
        me: u32,
    },
    /// The master refused the connection (another user's client).
    #[error("{path}: {message}")]
    Refused {
        /// The socket path.
        path: PathBuf,
        /// Its answer.
        message: String,
    },
    /// No master of this user runs.
    #[error("no handoff master of yours is running (none registered in {dir}); start one with `handoff run`, or give --control PATH")]
    NoMaster {
        /// The runtime directory.
        dir: PathBuf,
    },
    /// None of the running masters matches the selector.
    #[error("no running master matches {selector}; running:\n{running}")]
    NoMatch {
        /// The selector, as typed.
        selector: String,
        /// The running masters, one a line.
        running: String,
    },
    /// More than one master could be meant.
    #[error("{n} handoff masters are running; choose one with --master PID or --listen ADDR:\n{running}")]
    Ambiguous {
        /// How many.
        n: usize,
        /// They, one a line.
        running: String,
    },
    /// The answer was not what this version expects.
    #[error("unexpected answer from the master: {0}")]
    Answer(String),
    /// A reload that has not settled in the time its master promised.
    #[error(
        "reload #{id} has not settled after {waited:.0}s ({replaced} of {workers} workers replaced); it goes on: `handoff status` shows how far it is"
    )]
    ReloadPending {
        /// The reload.
        id: u64,
        /// Seconds waited.
        waited: f64,
        /// Slots already filled by the reload's workers.
        replaced: usize,
        /// Slots it must fill.
        workers: usize,
    },
}

/// Connects to a master's control socket, after checking that whoever serves it is this
/// user or root (`SO_PEERCRED`: the credentials of the process that bound it).
pub fn connect(path: &Path) -> Result<UnixStream, ControlError> {
    let s = UnixStream::connect(path).map_err(|source| ControlError::Connect { path: path.into(), source })?;
    let cred = crate::sys::socket::peer_credentials(std::os::fd::AsFd::as_fd(&s))
        .map_err(|source| ControlError::Io { path: path.into(), source })?;
    if !crate::sys::socket::same_user_or_root(&cred) {
        let me = rustix::process::getuid().as_raw();
        return Err(ControlError::Impostor { path: path.into(), uid: cred.uid.as_raw(), me });
    }
    Ok(s)
}

/// Sends one command line, returns the raw answer. A refusal (a [`Reply`] with `ok`
/// false, which is what a master answers a client it does not accept) is left to the
/// caller.
pub fn request(path: &Path, command: &str) -> Result<String, ControlError> {
    let mut s = connect(path)?;
    let io_err = |source| ControlError::Io { path: path.into(), source };
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io_err)?;
    s.set_write_timeout(Some(Duration::from_secs(10))).map_err(io_err)?;
    // A master that refuses closes at once: the write may then fail, but its answer is
    // still there to read.
    let sent = s.write_all(format!("{command}\n").as_bytes());
    // A master that closes without reading all we sent (a refusal) makes the kernel
    // report a reset after its answer: the answer still counts.
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    match (read, sent) {
        _ if !out.is_empty() => Ok(String::from_utf8_lossy(&out).into_owned()),
        (Err(e), _) | (Ok(_), Err(e)) => Err(io_err(e)),
        (Ok(_), Ok(())) => Err(io_err(io::ErrorKind::UnexpectedEof.into())),
    }
}

/// Asks for the status.
pub fn status(path: &Path) -> Result<Status, ControlError> {
    let raw = request(path, "status")?;
    serde_json::from_str(&raw).map_err(|e| match serde_json::from_str::<Reply>(&raw) {
        Ok(r) if !r.ok => ControlError::Refused { path: path.into(), message: r.message },
        _ => ControlError::Answer(format!("{e}: {raw}")),
    })
}

/// Asks for the status and returns the raw JSON document (for `--json`), after
/// checking that it is one (a refusal is an error).
pub fn status_json(path: &Path) -> Result<String, ControlError> {
    let raw = request(path, "status")?;
    match serde_json::from_str::<Reply>(&raw) {
        Ok(r) if !r.ok => Err(ControlError::Refused { path: path.into(), message: r.message }),
        _ => Ok(raw),
    }
}

/// Sends a command other than `status`.
pub fn command(path: &Path, command: &str) -> Result<Reply, ControlError> {
    let raw = request(path, command)?;
    serde_json::from_str(&raw).map_err(|e| ControlError::Answer(format!("{e}: {raw}")))
}

/// How much longer than `--ready-timeout` [`wait_reload`] waits without progress
/// before it gives up: a step that the master judges at its ready timeout is reported
/// within the next status poll, plus the time to stop a worker (SIGTERM, 3 s, SIGKILL).
pub const RELOAD_WAIT_MARGIN: Duration = Duration::from_secs(10);

/// Follows reload `id` in the master's status until it settles, and returns its final
/// state (`ok` or `failed`; another id means a later reload superseded it).
///
/// The client polls, every `every`, rather than have the master hold the connection
/// until the reload ends: the master's control connections stay short (each is closed
/// at most 5 s after it came, answered or not), a waiting client holds nothing in the
/// master (a hundred waiting scripts do not fill the endpoint's cap, and one that is
/// killed leaves nothing behind), and the outcome is the one
/// `handoff status` shows everyone. The wait is bounded without a fixed total: a
/// reload replaces its workers one slot at a time and the master gives up on a slot
/// after `--ready-timeout`, so the client gives up only after `--ready-timeout` +
/// [`RELOAD_WAIT_MARGIN`] without a slot done.
pub fn wait_reload(path: &Path, id: u64, every: Duration) -> Result<ReloadStatus, ControlError> {
    let start = std::time::Instant::now();
    let mut progress = (start, usize::MAX);
    loop {
        let st = status(path)?;
        let Some(r) = st.reload else {
            return Err(ControlError::Answer(format!("the master shows no reload #{id} in its status")));
        };
        if r.id != id || !r.in_progress() {
            return Ok(r);
        }
        let now = std::time::Instant::now();
        if r.replaced != progress.1 {
            progress = (now, r.replaced);
        }
        if now.duration_since(progress.0) > Duration::from_secs_f64(r.ready_timeout_s) + RELOAD_WAIT_MARGIN {
            let waited = now.duration_since(start).as_secs_f64();
            return Err(ControlError::ReloadPending { id, waited, replaced: r.replaced, workers: r.workers });
        }
        std::thread::sleep(every);
    }
}

/// Formats a status as the table `handoff status` prints.
pub fn format_table(s: &Status) -> String {
    let mut out = format!(
        "master pid {}  {}  up {:.0}s  policy {}  workers {}  listening on {}\n",
        s.pid,
        s.phase,
        s.uptime_s,
        s.policy,
        s.workers_wanted,
        s.listeners.join(", ")
    );
    out += &format!(
        "{:>4} {:>8} {:<9} {:>9} {:>8} {:>11} {:>7} {:>8} {:>7}\n",
        "ID", "PID", "STATE", "UPTIME", "RESTARTS", "DISPATCHED", "ACTIVE", "UNACKED", "STALLS"
    );
    for w in &s.workers {
        let state = if w.busy && w.state == "running" { "busy" } else { w.state.as_str() };
        out += &format!(
            "{:>4} {:>8} {:<9} {:>8.0}s {:>8} {:>11} {:>7} {:>8} {:>7}\n",
            w.id, w.pid, state, w.uptime_s, w.restarts, w.dispatched, w.active, w.unacked, w.stalls
        );
    }
    let t = &s.totals;
    out += &format!(
        "total: accepted {}  dispatched {}  handed on {}  lost with workers {}  accept errors {}  fairness {:.4}\n",
        t.accepted,
        t.dispatched,
        t.redispatched,
        t.lost_with_worker,
        t.accept_exhausted + t.accept_transient,
        s.fairness
    );
    out += &format!(
        "idle keep-alive: held {}  returned {}  continued {}  closed: hangup {} timeout {} evicted {} at stop {}\n",
        s.idle, t.returned, t.continued, t.idle_hangups, t.idle_timeouts, t.idle_evicted, t.idle_closed_at_stop
    );
    out += &format!(
        "worker starts failed: {} ({} not ready within the ready timeout)  reloads: {} ({} failed)\n",
        t.failed_starts, t.ready_timeouts, t.reloads, t.reloads_failed
    );
    if let Some(r) = &s.reload {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let (state, at) = match r.finished_unix {
            _ if r.in_progress() => ("in progress", r.started_unix),
            Some(t) => (r.state.as_str(), t),
            None => (r.state.as_str(), r.started_unix),
        };
        out +=
            &format!("last reload: #{} {state} {:.0}s ago ({}): {}\n", r.id, (now - at).max(0.0), r.trigger, r.message);
    }
    out += &format!(
        "lost: worker died serving {}  unread in a minimal worker's channel {}  not received {}  RETURN truncated {}  \
         PROXY header late {} bad {}  at stop {}  (retried: worker died before ACK {}  not received {})\n",
        t.lost_with_worker,
        t.lost_in_channel,
        t.lost_not_received,
        t.lost_return_truncated,
        t.proxy_header_timeouts,
        t.proxy_header_bad,
        t.lost_at_stop,
        t.redispatched,
        t.retried_not_received
    );
    if t.proxy_refused > 0 {
        out += &format!("refused: PROXY header from a source not in proxy-from {}\n", t.proxy_refused);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::registry::listen_matches;
    use super::*;

    #[test]
    fn a_listen_address_matches_as_typed_or_by_port() {
        assert!(listen_matches("127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(listen_matches("127.0.0.1:8080", "8080"));
        assert!(!listen_matches("127.0.0.1:8080", "80"));
        assert!(listen_matches("[::1]:8080", "[0:0:0:0:0:0:0:1]:8080"));
        assert!(listen_matches("unix:/run/app.sock", "/run/app.sock"));
        assert!(listen_matches("unix:/run/app.sock", "unix:/run/app.sock"));
        assert!(!listen_matches("unix:/run/app.sock", "8080"));
    }

    /// A registry with this process (alive) twice and a pid that cannot exist: the
    /// dead entry is dropped and removed, the choice follows the selector.
    #[test]
    fn the_registry_lists_the_living_and_chooses_one_or_refuses() {
        let dir = std::env::temp_dir().join(format!("handoff-unit-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare_runtime_dir(&dir).unwrap();
        let me = std::process::id();
        let entry = |pid: u32, start_time: u64, listen: &str| MasterEntry {
            pid,
            start_time,
            listeners: vec![listen.into()],
            control: dir.join(format!("{pid}-{listen}.sock")),
        };
        let start = process_start_time(me).unwrap();
        assert!(find_master_in(&dir, &Selector::Only).unwrap_err().to_string().contains("no handoff master"));
        write_entry(&dir.join("a.json"), &entry(me, start, "127.0.0.1:1")).unwrap();
        // A dead master: a pid above the kernel's maximum.
        write_entry(&dir.join("dead.json"), &entry(u32::MAX - 1, 1, "127.0.0.1:3")).unwrap();
        // Our pid, but a start time that is not ours: a reused pid.
        write_entry(&dir.join("reused.json"), &entry(me, start + 1, "127.0.0.1:4")).unwrap();
        let found = find_master_in(&dir, &Selector::Only).unwrap();
        assert_eq!(found.listeners, ["127.0.0.1:1"]);
        assert!(!dir.join("dead.json").exists() && !dir.join("reused.json").exists());
        write_entry(&dir.join("b.json"), &entry(me, start, "127.0.0.1:2")).unwrap();
        let err = find_master_in(&dir, &Selector::Only).unwrap_err().to_string();
        assert!(err.starts_with("2 handoff masters are running"), "{err}");
        let found = find_master_in(&dir, &Selector::Listen("2".into())).unwrap();
        assert_eq!(found.listeners, ["127.0.0.1:2"]);
        let err = find_master_in(&dir, &Selector::Listen("9".into())).unwrap_err().to_string();
        assert!(err.starts_with("no running master matches --listen 9"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
