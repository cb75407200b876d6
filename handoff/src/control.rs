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
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The directory where masters put their control sockets and registry entries when
/// `--control` is not given: `$HANDOFF_RUNTIME_DIR` if set (an absolute path); else
/// `/run/handoff` for root (the same for a system service and a root shell, which
/// often has `$XDG_RUNTIME_DIR=/run/user/0`); else `$XDG_RUNTIME_DIR/handoff` if that
/// is a directory of this user; else `/tmp/handoff-<uid>`.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HANDOFF_RUNTIME_DIR").filter(|d| Path::new(d).is_absolute()) {
        return d.into();
    }
    let uid = rustix::process::getuid();
    if uid.is_root() && Path::new("/run").is_dir() {
        return PathBuf::from("/run/handoff");
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_absolute()) {
        // A runtime directory inherited from another user (`sudo` may keep it) is not ours.
        if std::fs::metadata(&x).is_ok_and(|m| m.is_dir() && m.uid() == uid.as_raw()) {
            return Path::new(&x).join("handoff");
        }
    }
    PathBuf::from(format!("/tmp/handoff-{}", uid.as_raw()))
}

/// Creates the runtime directory (mode 0700) if it is missing, then checks it as
/// [`check_private_dir`] does.
pub fn prepare_runtime_dir(dir: &Path) -> Result<(), ControlError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(ControlError::Io { path: dir.into(), source }),
    }
    check_private_dir(dir)
}

/// Checks that `dir` is a directory (not a symlink) of this user that no one else can
/// write or read: anything else may have been put there to catch the commands.
pub fn check_private_dir(dir: &Path) -> Result<(), ControlError> {
    let m = std::fs::symlink_metadata(dir).map_err(|source| ControlError::Io { path: dir.into(), source })?;
    let uid = rustix::process::getuid().as_raw();
    let why = if m.file_type().is_symlink() {
        "is a symbolic link".to_string()
    } else if !m.is_dir() {
        "is not a directory".to_string()
    } else if m.uid() != uid {
        format!("belongs to uid {}, not to you (uid {uid})", m.uid())
    } else if m.mode() & 0o077 != 0 {
        format!("has mode {:04o}: others may use it", m.mode() & 0o7777)
    } else {
        return Ok(());
    };
    Err(ControlError::Unsafe { path: dir.into(), why })
}

/// Checks a control socket path given with `--control` before the master binds it:
/// its directory must not let others replace it (owned by this user or root, and not
/// writable by others unless sticky, like `/tmp`), and a file already there must be
/// this user's socket (a stale one is replaced; a live master's is refused when bound).
pub fn check_socket_path(path: &Path) -> Result<(), ControlError> {
    let uid = rustix::process::getuid().as_raw();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::symlink_metadata(path) {
        Err(_) => {}
        Ok(m) if m.uid() != uid => {
            return Err(ControlError::Unsafe {
                path: path.into(),
                why: format!(
                    "already exists and belongs to uid {}: someone else may be listening there in a master's place",
                    m.uid()
                ),
            })
        }
        Ok(m) if !m.file_type().is_socket() => {
            return Err(ControlError::Unsafe { path: path.into(), why: "already exists and is not a socket".into() })
        }
        Ok(_) => {}
    }
    if let Ok(m) = std::fs::metadata(dir) {
        let open = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if m.uid() != uid && m.uid() != 0 {
            let why = format!("is in {}, which belongs to uid {}", dir.display(), m.uid());
            return Err(ControlError::Unsafe { path: path.into(), why });
        }
        if open {
            let why = format!("is in {}, which others may write (mode {:04o})", dir.display(), m.mode() & 0o7777);
            return Err(ControlError::Unsafe { path: path.into(), why });
        }
    }
    Ok(())
}

/// The file name stem of this process's next master (`PID`, then `PID-1`, ... for
/// further masters a library program runs in the same process).
pub fn next_stem() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    match N.fetch_add(1, Ordering::Relaxed) {
        0 => std::process::id().to_string(),
        n => format!("{}-{n}", std::process::id()),
    }
}

/// A running master as its registry entry (`<runtime dir>/<pid>.json`) describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MasterEntry {
    /// The master's pid.
    pub pid: u32,
    /// The process's start time (field 22 of `/proc/PID/stat`): tells the master from a
    /// later process that got the same pid.
    #[serde(default)]
    pub start_time: u64,
    /// Its listen addresses, as `handoff status` shows them.
    pub listeners: Vec<String>,
    /// Its control socket.
    pub control: PathBuf,
}

impl std::fmt::Display for MasterEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "master pid {} on {} (control {})", self.pid, self.listeners.join(", "), self.control.display())
    }
}

/// A process's start time in clock ticks since boot, from `/proc/PID/stat`.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the master an entry describes still runs.
fn alive(e: &MasterEntry) -> bool {
    match process_start_time(e.pid) {
        Some(t) => e.start_time == 0 || t == e.start_time,
        // /proc works, and has no such process.
        None if Path::new("/proc/self/stat").exists() => false,
        // No /proc (a sandbox): whether the pid exists at all is all we can tell.
        None => i32::try_from(e.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|p| matches!(rustix::process::test_kill_process(p), Ok(()) | Err(rustix::io::Errno::PERM))),
    }
}

/// Writes a registry entry (through a temporary file and a rename: a reader sees the
/// old entry or the new one, never half of one).
pub fn write_entry(path: &Path, entry: &MasterEntry) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&text)?;
    std::fs::rename(&tmp, path)
}

/// The masters of this user that run now, by pid, from the registry in `dir`.
/// Entries of masters that have died are removed (with their socket, when it is in
/// `dir`). A missing directory means no master.
pub fn list_masters_in(dir: &Path) -> Result<Vec<MasterEntry>, ControlError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ControlError::Io { path: dir.into(), source }),
    };
    check_private_dir(dir)?;
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let p = ent.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(e) = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<MasterEntry>(&b).ok()) else {
            continue;
        };
        if alive(&e) {
            out.push(e);
        } else {
            let _ = std::fs::remove_file(&p);
            if e.control.parent() == Some(dir) {
                let _ = std::fs::remove_file(&e.control);
            }
        }
    }
    out.sort_by_key(|e| e.pid);
    Ok(out)
}

/// [`list_masters_in`] the [`runtime_dir`].
pub fn list_masters() -> Result<Vec<MasterEntry>, ControlError> {
    list_masters_in(&runtime_dir())
}

/// Which master a command is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selector {
    /// The one master running (an error if there are several).
    #[default]
    Only,
    /// The master with this pid.
    Pid(u32),
    /// The master listening on this address (`127.0.0.1:8080`, `unix:/path`, or just a
    /// port: `8080`).
    Listen(String),
}

impl Selector {
    fn matches(&self, e: &MasterEntry) -> bool {
        match self {
            Selector::Only => true,
            Selector::Pid(p) => e.pid == *p,
            Selector::Listen(a) => e.listeners.iter().any(|l| listen_matches(l, a)),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Only => write!(f, "any master"),
            Selector::Pid(p) => write!(f, "--master {p}"),
            Selector::Listen(a) => write!(f, "--listen {a}"),
        }
    }
}

/// Whether listener `l` (as a master shows it) is the address `a` a user typed.
fn listen_matches(l: &str, a: &str) -> bool {
    if l == a || l.strip_prefix("unix:") == Some(a) {
        return true;
    }
    if a.parse::<u16>().is_ok() {
        return l.rsplit_once(':').is_some_and(|(_, port)| port == a);
    }
    matches!((l.parse::<std::net::SocketAddr>(), a.parse::<std::net::SocketAddr>()), (Ok(x), Ok(y)) if x == y)
}

/// The one running master that `sel` names, from the registry in `dir`.
pub fn find_master_in(dir: &Path, sel: &Selector) -> Result<MasterEntry, ControlError> {
    let all = list_masters_in(dir)?;
    let mut found: Vec<MasterEntry> = all.iter().filter(|e| sel.matches(e)).cloned().collect();
    match (found.len(), sel) {
        (1, _) => Ok(found.remove(0)),
        (0, _) if all.is_empty() => Err(ControlError::NoMaster { dir: dir.into() }),
        (0, _) => Err(ControlError::NoMatch { selector: sel.to_string(), running: list_text(&all).trim_end().into() }),
        _ => Err(ControlError::Ambiguous { n: found.len(), running: list_text(&found).trim_end().into() }),
    }
}

/// [`find_master_in`] the [`runtime_dir`].
pub fn find_master(sel: &Selector) -> Result<MasterEntry, ControlError> {
    find_master_in(&runtime_dir(), sel)
}

/// One line per master: pid, listeners, control socket.
pub fn list_text(masters: &[MasterEntry]) -> String {
    let mut out = format!("{:>8}  {:<40}  {}\n", "PID", "LISTENING ON", "CONTROL SOCKET");
    for e in masters {
        out += &format!("{:>8}  {:<40}  {}\n", e.pid, e.listeners.join(", "), e.control.display());
    }
    out
}
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
    /// Held idle connections whose client hung up.
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
        "{:>4} {:>8} {:<9} {:>9} {:>8} {:>11} {:>7} {:>8}\n",
        "ID", "PID", "STATE", "UPTIME", "RESTARTS", "DISPATCHED", "ACTIVE", "UNACKED"
    );
    for w in &s.workers {
        out += &format!(
            "{:>4} {:>8} {:<9} {:>8.0}s {:>8} {:>11} {:>7} {:>8}\n",
            w.id, w.pid, w.state, w.uptime_s, w.restarts, w.dispatched, w.active, w.unacked
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
    out
}

#[cfg(test)]
mod tests {
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
