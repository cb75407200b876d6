//! Starting worker processes, signalling and reaping them.
//!
//! This is the only module with `unsafe` code: the closure that runs in the child
//! between `fork` and `exec` (`pre_exec`), and taking ownership of a descriptor number
//! inherited through the environment. Each block lists what makes it sound.
//!
//! What a spawned worker inherits, and nothing more: stdin (`/dev/null`), stdout,
//! stderr, and its end of the channel, whose number is in `HANDOFF_FD`. Every other
//! descriptor of the master (listeners, other workers' channels, client sockets it
//! still holds) is `CLOEXEC` and vanishes at `exec`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::{fcntl_getfd, fcntl_setfd, FdFlags};
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

pub use rustix::process::getpid;

/// Environment variables of the master's own environment that must not reach workers
/// (they describe descriptors or sockets meant for the master alone).
pub const SCRUBBED_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "HANDOFF_UPGRADE_FDS",
];

/// Spawns `cmd` so that the child inherits `channel` (clear of `CLOEXEC`) and dies
/// with the master.
///
/// The child asks the kernel for `SIGKILL` when its parent exits (`PR_SET_PDEATHSIG`),
/// and refuses to start if the master already exited before that request took effect
/// (the classic race: it then has a new parent). Channel end-of-file is the worker's
/// primary signal that the master is gone; this is the backstop for workers that never
/// read their channel.
pub fn spawn_with_channel(cmd: &mut Command, channel: BorrowedFd<'_>, no_new_privs: bool) -> io::Result<Child> {
    let raw = channel.as_raw_fd();
    let master = getpid();
    for key in SCRUBBED_ENV {
        cmd.env_remove(key);
    }
    // SAFETY: the closure runs in the forked child before exec. Its obligations:
    // 1. Only async-signal-safe work: each call below is a single raw syscall through
    //    rustix (fcntl, prctl, getppid); no allocation, no lock. Errors are built from
    //    a raw errno, which does not allocate.
    // 2. `raw` is the channel descriptor, open in the parent when `spawn` forks (the
    //    caller's `BorrowedFd` lives across this call), hence open in the child.
    unsafe {
        cmd.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(raw);
            fcntl_setfd(fd, FdFlags::empty())?;
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if rustix::process::getppid() != Some(master) {
                return Err(io::Error::from_raw_os_error(rustix::io::Errno::SRCH.raw_os_error()));
            }
            if no_new_privs {
                rustix::thread::set_no_new_privs(true)?;
            }
            Ok(())
        });
    }
    cmd.spawn()
}

static INHERITED_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of a descriptor inherited under number `raw` (from `HANDOFF_FD`),
/// marking it `CLOEXEC` so it does not leak further into the worker's own children.
///
/// It can be taken once per process; a second call is an error, so that two owners
/// never close the same number.
pub fn take_inherited_fd(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {raw} is negative")));
    }
    if INHERITED_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the inherited channel was already taken by this process",
        ));
    }
    // SAFETY: borrow_raw requires `raw` to stay open for the borrow's lifetime; the
    // borrow is used for one fcntl call, which itself reports EBADF if it is not open.
    let flags = fcntl_getfd(unsafe { BorrowedFd::borrow_raw(raw) })?;
    // SAFETY: the descriptor is open (checked above), nothing else in this process
    // owns it (the master gave it to us through the environment, and the static flag
    // above ensures this function hands it out once), so the OwnedFd is its one owner.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    fcntl_setfd(fd.as_fd(), flags | FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    let Some(pid) = Pid::from_raw(pid as i32) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "pid 0"));
    };
    match rustix::process::kill_process(pid, sig) {
        Err(rustix::io::Errno::SRCH) => Ok(()),
        r => Ok(r?),
    }
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `exit(code)`.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => {
                write!(f, "killed by signal {s}{}", signal_name(*s).map(|n| format!(" ({n})")).unwrap_or_default())
            }
        }
    }
}

fn signal_name(s: i32) -> Option<&'static str> {
    Some(match s {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// Reaps one exited child without blocking: `Ok(None)` when no child has exited.
pub fn reap_any() -> io::Result<Option<(u32, Exit)>> {
    match rustix::process::waitpid(None, WaitOptions::NOHANG) {
        Ok(Some((pid, status))) => Ok(Some((pid.as_raw_nonzero().get() as u32, exit_of(status)))),
        Ok(None) => Ok(None),
        Err(rustix::io::Errno::CHILD) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn exit_of(status: WaitStatus) -> Exit {
    if let Some(sig) = status.terminating_signal() {
        Exit::Signal(sig)
    } else {
        Exit::Code(status.exit_status().unwrap_or(0))
    }
}

static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Takes ownership of descriptors handed down by whoever started this process (systemd
/// socket activation, or the old master during an upgrade), marking them `CLOEXEC`.
///
/// Callable once per process: the numbers come from the environment, which names them
/// for exactly one owner.
pub fn adopt_fds(raws: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "inherited listeners were already taken"));
    }
    let mut out = Vec::with_capacity(raws.len());
    for &raw in raws {
        if raw < 3 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("inherited descriptor {raw} is stdio")));
        }
        // SAFETY: borrowed for one fcntl, which fails with EBADF if `raw` is not open.
        let flags = fcntl_getfd(unsafe { BorrowedFd::borrow_raw(raw) })?;
        // SAFETY: `raw` is open (checked above) and was handed to this process through
        // the environment for it alone; the static flag makes this the only adoption,
        // so the OwnedFd is its single owner.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        fcntl_setfd(fd.as_fd(), flags | FdFlags::CLOEXEC)?;
        out.push(fd);
    }
    Ok(out)
}

/// Spawns `cmd` (a new master) so that it inherits `keep` across exec.
pub fn spawn_keeping(cmd: &mut Command, keep: &[BorrowedFd<'_>]) -> io::Result<Child> {
    let raws: Vec<RawFd> = keep.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: runs in the forked child before exec; only fcntl, a raw syscall with no
    // allocation. The descriptors are open in the parent for the duration of `spawn`
    // (the caller's borrows), hence in the child. `raws` was allocated before fork and
    // is only read.
    unsafe {
        cmd.pre_exec(move || {
            for &raw in &raws {
                fcntl_setfd(BorrowedFd::borrow_raw(raw), FdFlags::empty())?;
            }
            Ok(())
        });
    }
    cmd.spawn()
}
