//! What the lifecycle hands over to and takes from outside the process: listeners
//! inherited from an old master or from systemd (socket activation), starting the new
//! master of an upgrade, and systemd's notifications and watchdog. Plumbing, with no
//! state of its own: [`super::lifecycle`] decides when.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::listener::Listener;
use crate::sys::process as sysproc;

/// Environment variable with the inherited listener descriptors of an upgrade.
pub(super) const ENV_UPGRADE_FDS: &str = "HANDOFF_UPGRADE_FDS";
/// Environment variable with the descriptor to write "ready" to.
pub(super) const ENV_UPGRADE_READY_FD: &str = "HANDOFF_UPGRADE_READY_FD";

/// Where inherited listeners came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
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
pub(super) fn inherited() -> io::Result<(Vec<Listener>, Origin, Option<OwnedFd>)> {
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
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A new master started by SIGUSR2.
#[derive(Debug)]
pub(super) struct Child {
    /// Its pid.
    pub pid: u32,
    /// When it was started.
    pub started: std::time::Instant,
    /// The read end of its ready pipe (non-blocking).
    pub ready: OwnedFd,
}

/// Starts `exe` with this process's arguments, handing it `listeners`.
pub(super) fn start_new_master(exe: &PathBuf, listeners: &[BorrowedFd<'_>]) -> io::Result<Child> {
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
pub(super) fn notify(state: &str) {
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

/// CLOCK_MONOTONIC in microseconds, as systemd wants it with RELOADING=1
/// (`Type=notify-reload` checks that it is recent).
pub(super) fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec.max(0) as u64) * 1_000_000 + (t.tv_nsec.max(0) as u64) / 1_000
}

/// Seconds since the Unix epoch, for the records `handoff status` shows.
pub(super) fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Listen addresses, as a log line shows them.
pub(super) fn listen_text(l: &[crate::listener::ListenSpec]) -> String {
    l.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>().join(", ")
}

/// Half the systemd watchdog period, if one is set for this process.
pub(super) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}
