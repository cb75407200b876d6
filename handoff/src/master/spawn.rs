//! Starting a worker process, and carrying what it writes to stderr to the master's
//! own stderr, each line labelled with its worker, without ever blocking the loop.
//!
//! Owns nothing long-lived: the worker table (`supervisor`) keeps each worker's pipe
//! and [`Lines`], and one [`Forward`] for all of them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::Slot;
use crate::config::{Config, WorkerKind};
use crate::sys::process as sysproc;

/// Reads what is available from a non-blocking stderr pipe into `slot` and `out`.
/// Returns false at end of file.
pub(super) fn drain_stderr(fd: &OwnedFd, slot: &mut Slot, out: &mut Forward, lines: &mut Lines) -> bool {
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
pub(super) const FORWARD_MAX: usize = 1 << 20;

/// Worker output on its way to the master's stderr, written without ever blocking the
/// loop: if whoever reads the master's stderr (a terminal, journald, a pipe) falls
/// behind, output waits here, up to [`FORWARD_MAX`], and beyond that is dropped, with
/// a line saying how much once the reader has caught up. A worker that floods its
/// stderr thus costs log lines, never the master's attention to connections.
#[derive(Debug, Default)]
pub(super) struct Forward {
    buf: Vec<u8>,
    dropped: u64,
    /// Bytes dropped since the master started.
    pub dropped_total: u64,
}

impl Forward {
    /// Queues bytes a worker wrote.
    pub(super) fn push(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > FORWARD_MAX {
            self.dropped += bytes.len() as u64;
            self.dropped_total += bytes.len() as u64;
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Writes what the master's stderr takes now; keeps the rest for later.
    pub(super) fn flush(&mut self) {
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
pub(super) enum StderrRead {
    /// The pipe is empty for now.
    Empty,
    /// The read stopped at its bound with more perhaps waiting.
    More,
    /// The worker closed its end.
    Eof,
}

/// Reads at most `chunks` buffers of a non-blocking stderr pipe into `slot`, so a
/// worker writing without pause cannot hold the master's loop.
pub(super) fn read_stderr(
    fd: &OwnedFd,
    slot: &mut Slot,
    chunks: usize,
    out: &mut Forward,
    lines: &mut Lines,
) -> StderrRead {
    let mut buf = [0u8; 8192];
    let mut n_read = 0;
    while n_read < chunks {
        match crate::sys::socket::retry_intr(|| rustix::io::read(fd, &mut buf)) {
            Ok(0) => return StderrRead::Eof,
            Ok(n) => {
                n_read += 1;
                lines.push(&buf[..n], out);
                slot.take_stderr(&buf[..n])
            }
            Err(_) => return StderrRead::Empty,
        }
    }
    StderrRead::More
}

/// What a new worker gets.
pub(super) struct SpawnArgs<'a> {
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
pub(super) fn spawn(args: SpawnArgs<'_>) -> io::Result<(u32, Option<OwnedFd>)> {
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
                c.env(crate::wire::ENV_ACCESS_LOG, f.name());
            }
            c
        }
    };
    cmd.env(crate::wire::ENV_FD, channel.as_raw_fd().to_string())
        .env(crate::wire::ENV_WORKER_ID, slot.to_string())
        .env(crate::wire::ENV_WORKERS, slots.to_string())
        .env(crate::wire::ENV_HEARTBEAT_MS, cfg.heartbeat.as_millis().to_string())
        .env(crate::wire::ENV_RETURN, cfg.hand_back.name())
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
        (crate::wire::ENV_WORKER_ID, slot.to_string()),
        (crate::wire::ENV_WORKERS, slots.to_string()),
        (crate::wire::ENV_HEARTBEAT_MS, cfg.heartbeat.as_millis().to_string()),
        (crate::wire::ENV_RETURN, cfg.hand_back.name().to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let body = || crate::worker::Context::run_fork_body(&*f.0, slot);
    let child = sysproc::ForkChild { fd_var: crate::wire::ENV_FD, env: &env, uid, gid };
    let (pid, stderr) = sysproc::fork_worker_checked(channel.as_fd(), &child, &body)?;
    Ok((pid, Some(stderr)))
}
