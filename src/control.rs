//! The control socket: what `handoff status` and `handoff ctl` say to a running master,
//! and what it answers.
//!
//! The master listens on a Unix stream socket (mode 0600: only its user may steer it).
//! A client connects, writes one command line, and reads one JSON document until the
//! master closes the connection:
//!
//! | command | effect | answer |
//! |---|---|---|
//! | `status` | — | a [`Status`] |
//! | `reload` | as SIGHUP: re-read the config, rolling restart | a [`Reply`] |
//! | `scale N` | run N workers | a [`Reply`] |
//! | `drain ID` | replace worker ID (a fresh one first, then drain it) | a [`Reply`] |
//! | `stop` | as SIGTERM: graceful stop | a [`Reply`] |

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The control socket path used when `--control` is not given:
/// `$XDG_RUNTIME_DIR/handoff.sock`, else `/tmp/handoff-<uid>.sock`.
pub fn default_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Path::new(&d).join("handoff.sock"),
        _ => PathBuf::from(format!("/tmp/handoff-{}.sock", rustix::process::getuid().as_raw())),
    }
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
    pub totals: crate::master::Totals,
    /// Jain's fairness index of connections dispatched per slot since start (1 = even).
    pub fairness: f64,
}

/// The answer to a command other than `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    /// Whether the command was carried out (or started).
    pub ok: bool,
    /// What happened, or what was wrong.
    pub message: String,
}

/// Errors talking to a master.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Nobody listens at the path.
    #[error(
        "cannot reach a handoff master at {path}: {source} (is it running? was it started with --control {path}?)"
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
    /// The answer was not what this version expects.
    #[error("unexpected answer from the master: {0}")]
    Answer(String),
}

/// Sends one command line, returns the raw answer.
pub fn request(path: &Path, command: &str) -> Result<String, ControlError> {
    let mut s = UnixStream::connect(path).map_err(|source| ControlError::Connect { path: path.into(), source })?;
    let io_err = |source| ControlError::Io { path: path.into(), source };
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io_err)?;
    s.write_all(format!("{command}\n").as_bytes()).map_err(io_err)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(io_err)?;
    Ok(out)
}

/// Asks for the status.
pub fn status(path: &Path) -> Result<Status, ControlError> {
    let raw = request(path, "status")?;
    serde_json::from_str(&raw).map_err(|e| ControlError::Answer(format!("{e}: {raw}")))
}

/// Sends a command other than `status`.
pub fn command(path: &Path, command: &str) -> Result<Reply, ControlError> {
    let raw = request(path, command)?;
    serde_json::from_str(&raw).map_err(|e| ControlError::Answer(format!("{e}: {raw}")))
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
    out
}
