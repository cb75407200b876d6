//! Inherited listeners and the zero-downtime upgrade; systemd notifications.
//!
//! **Upgrade (SIGUSR2).** The old master starts the binary again (the path it was
//! started from, so a binary replaced on disk is the one that runs), with the same
//! arguments. The new master inherits the listening sockets (their numbers in
//! `HANDOFF_UPGRADE_FDS`) and a pipe (`HANDOFF_UPGRADE_READY_FD`). It starts its own
//! workers and, once every one is ready, writes one byte to the pipe. Only then does
//! the old master stop accepting and drain its workers. Both accept on the same kernel
//! sockets meanwhile, so no client is refused or reset. If the new master exits or
//! closes the pipe without writing, the old one logs it and carries on.
//!
//! **Socket activation.** systemd passes listening sockets as descriptors 3.. with
//! `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`; the master uses them instead of
//! binding (matching `--listen` addresses, or all of them if none was given).
//!
//! **Notifications.** With `NOTIFY_SOCKET` set, the master reports READY (once its
//! workers are ready), RELOADING, STOPPING and, with `WATCHDOG_USEC`, watchdog pings.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::listener::Listener;
use crate::sys::process as sysproc;

/// Environment variable with the inherited listener descriptors of an upgrade.
pub const ENV_UPGRADE_FDS: &str = "HANDOFF_UPGRADE_FDS";
/// Environment variable with the descriptor to write "ready" to.
pub const ENV_UPGRADE_READY_FD: &str = "HANDOFF_UPGRADE_READY_FD";

/// Where inherited listeners came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Nothing inherited: bind everything.
    None,
    /// An old master handed them over.
    Upgrade,
    /// systemd socket activation.
    Systemd,
}

fn parse_fds(v: &str) -> io::Result<Vec<i32>> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad descriptor list {v:?}")))
        })
        .collect()
}

/// Takes the listeners this process inherited, and the upgrade pipe if any.
/// Removes the variables from the environment so they reach no child.
pub fn inherited() -> io::Result<(Vec<Listener>, Origin, Option<OwnedFd>)> {
    if let Ok(v) = std::env::var(ENV_UPGRADE_FDS) {
        let mut raws = parse_fds(&v)?;
        let ready = std::env::var(ENV_UPGRADE_READY_FD).ok().and_then(|r| r.parse::<i32>().ok());
        if let Some(r) = ready {
            raws.push(r);
        }
        std::env::remove_var(ENV_UPGRADE_FDS);
        std::env::remove_var(ENV_UPGRADE_READY_FD);
        let mut fds = sysproc::adopt_fds(&raws)?;
        let ready = ready.and_then(|_| fds.pop());
        let ls = fds.into_iter().map(Listener::from_fd).collect::<io::Result<_>>()?;
        return Ok((ls, Origin::Upgrade, ready));
    }
    let pid_matches = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    if let (true, Ok(n)) = (pid_matches, std::env::var("LISTEN_FDS")) {
        let n: i32 = n
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("LISTEN_FDS={n:?} is not a number")))?;
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(k);
        }
        if !(0..=4096).contains(&n) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("LISTEN_FDS={n} is out of range")));
        }
        let fds = sysproc::adopt_fds(&(3..3 + n).collect::<Vec<_>>())?;
        let ls = fds.into_iter().map(Listener::from_fd).collect::<io::Result<_>>()?;
        return Ok((ls, Origin::Systemd, None));
    }
    Ok((Vec::new(), Origin::None, None))
}

/// How long a new master may take to have all its workers ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A new master started by SIGUSR2.
#[derive(Debug)]
pub struct Child {
    /// Its pid.
    pub pid: u32,
    /// When it was started.
    pub started: std::time::Instant,
    /// The read end of its ready pipe (non-blocking).
    pub ready: OwnedFd,
}

/// Starts `exe` with this process's arguments, handing it `listeners`.
pub fn start_new_master(exe: &PathBuf, listeners: &[BorrowedFd<'_>]) -> io::Result<Child> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)?;
    // The writer must block on nothing, but O_NONBLOCK on a pipe end is per open file
    // description: make the write end blocking again for the child.
    rustix::io::ioctl_fionbio(&w, false)?;
    let nums: Vec<String> = listeners.iter().map(|l| l.as_raw_fd().to_string()).collect();
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(ENV_UPGRADE_FDS, nums.join(","))
        .env(ENV_UPGRADE_READY_FD, w.as_raw_fd().to_string());
    let mut keep: Vec<BorrowedFd<'_>> = listeners.to_vec();
    keep.push(w.as_fd());
    let child = sysproc::spawn_keeping(&mut cmd, &keep)?;
    Ok(Child { pid: child.id(), started: std::time::Instant::now(), ready: r })
}

/// Tells systemd something, if it listens. Errors are ignored: a lost notification
/// must not stop the server.
pub fn notify(state: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let states: Vec<sd_notify::NotifyState<'_>> = state
        .lines()
        .map(|l| match l.split_once('=') {
            Some(("READY", "1")) => sd_notify::NotifyState::Ready,
            Some(("RELOADING", "1")) => sd_notify::NotifyState::Reloading,
            Some(("STOPPING", "1")) => sd_notify::NotifyState::Stopping,
            Some(("WATCHDOG", "1")) => sd_notify::NotifyState::Watchdog,
            Some(("MAINPID", pid)) => sd_notify::NotifyState::MainPid(pid.parse().unwrap_or(0)),
            Some(("STATUS", s)) => sd_notify::NotifyState::Status(s),
            _ => sd_notify::NotifyState::Custom(l),
        })
        .collect();
    let _ = sd_notify::notify(false, &states);
}

/// Half the systemd watchdog period, if one is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}
