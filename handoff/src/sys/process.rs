//! Starting worker processes, signalling and reaping them.
//!
//! This is the only module with `unsafe` code: the closure that runs in the child
//! between `fork` and `exec` (`pre_exec`), taking ownership of a descriptor number
//! inherited through the environment, and [`fork_worker`], a `fork` without `exec` for
//! closure workers (sound because the master is single-threaded). Each block lists what
//! makes it sound.
//!
//! What a spawned worker inherits, and nothing more: stdin (`/dev/null`), stdout,
//! stderr, and its end of the channel, whose number is in `HANDOFF_FD`. Every other
//! descriptor of the master (listeners, other workers' channels, client sockets it
//! still holds) is `CLOEXEC` and vanishes at `exec`; a forked worker, which never
//! execs, closes them all itself before running any user code.

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
    // 1. Only async-signal-safe work: each call below is a raw syscall (fcntl, prctl,
    //    getppid, setpgid through rustix; sched_getscheduler and sched_setscheduler);
    //    no allocation, no lock. Errors are built from
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
            // A process group of its own: a terminal's Ctrl-C (SIGINT to the foreground
            // group) reaches the master alone, which then drains the workers gracefully.
            rustix::process::setpgid(None, None)?;
            reset_child_scheduling();
            Ok(())
        });
    }
    cmd.spawn()
}

// ---- the master's CPU scheduling ----
//
// The master runs as `SCHED_BATCH`: woken by a new connection, it does not preempt a
// worker in the middle of a request but runs when the CPU is next given up, then
// accepts and hands on everything that came meanwhile in one batch. On a busy machine
// that is fewer context switches and larger batches for the master and the workers
// alike (BENCHMARKS.md: a quarter more requests per second, a third less CPU per
// request on two saturated cores); on an idle one a woken task runs at once either
// way. Workers must not inherit it (their requests are latency work): every child is
// put back to `SCHED_OTHER` before it runs anything.

thread_local! {
    /// Whether this thread (a master's) switched itself to `SCHED_BATCH`: then its
    /// children go back. Per thread, as the policy is; `const`, so that reading it in a
    /// child after `fork` allocates nothing.
    static MASTER_BATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `sched_param` for the non-real-time policies, whose priority must be 0.
const NORMAL_PRIORITY: libc::sched_param = libc::sched_param { sched_priority: 0 };

/// The calling thread's scheduling policy.
fn current_policy() -> i32 {
    // SAFETY: `sched_getscheduler` reads the calling thread's policy; no pointers.
    unsafe { libc::sched_getscheduler(0) }
}

/// Sets the calling thread's policy (`SCHED_OTHER` or `SCHED_BATCH`, priority 0).
fn set_policy(policy: i32) -> io::Result<()> {
    // SAFETY: pid 0 is the calling thread; `NORMAL_PRIORITY` is a valid `sched_param`
    // that lives for the whole call; no allocation, no lock (async-signal-safe).
    if unsafe { libc::sched_setscheduler(0, policy, &NORMAL_PRIORITY) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts the calling thread (a master's) in `SCHED_BATCH` if `batch` and it runs in
/// the default `SCHED_OTHER`, or back in `SCHED_OTHER` if not `batch` and this function
/// had switched it. A policy set from outside (`chrt`, systemd's
/// `CPUSchedulingPolicy=`), before start or since, is the operator's: left as it is,
/// and inherited by the workers as before. Returns whether the thread now runs as
/// `SCHED_BATCH` by its own doing.
pub fn set_master_batch(batch: bool) -> io::Result<bool> {
    let policy = current_policy();
    // Ours only while it is still the SCHED_BATCH we set.
    let ours = MASTER_BATCH.get() && policy == libc::SCHED_BATCH;
    MASTER_BATCH.set(ours);
    let to = match (batch, ours) {
        (true, false) if policy == libc::SCHED_OTHER => libc::SCHED_BATCH,
        (false, true) => libc::SCHED_OTHER,
        _ => return Ok(ours),
    };
    set_policy(to)?;
    MASTER_BATCH.set(batch);
    Ok(batch)
}

/// Puts the calling thread back in `SCHED_OTHER` when dropped, if [`set_master_batch`]
/// had switched it: a library's `Server` returns the caller's thread as it found it.
#[derive(Debug)]
pub struct MasterSchedGuard;

impl Drop for MasterSchedGuard {
    fn drop(&mut self) {
        let _ = set_master_batch(false);
    }
}

/// In a new child (after `fork`, before `exec` or a forked worker's body): back to
/// `SCHED_OTHER` if it is in the `SCHED_BATCH` its master chose for itself. Best effort
/// (a worker in `SCHED_BATCH` is slower to answer on a busy machine, not wrong; leaving
/// it for `SCHED_OTHER` at the same nice value needs no privilege anyway). Two system
/// calls, async-signal-safe.
fn reset_child_scheduling() {
    if MASTER_BATCH.get() && current_policy() == libc::SCHED_BATCH {
        let _ = set_policy(libc::SCHED_OTHER);
    }
}

// ---- forked closure workers ----
//
// `fork_worker` is the second place with `unsafe` here: a `fork` without `exec`. The
// child goes on running Rust code (the user's closure) in a copy of the master, so it
// must first shed everything of the master's it could trip over: signal handlers that
// write into the master's self-pipe, and every descriptor but its own.

/// Signals the master handles (signal-hook); a forked child puts them back to default.
pub const MASTER_SIGNALS: [i32; 8] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGCHLD,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR2,
];

/// Forks a worker that runs `body` in the child, with `channel` as its only descriptor
/// besides stdin (`/dev/null`), stdout and stderr (a new pipe to the master).
///
/// Returns the child's pid and the read end of its stderr pipe. In the child:
/// 1. the [`MASTER_SIGNALS`] get their default disposition and no signal is blocked,
///    so a signal-hook handler of the master never runs there (it would write to a
///    descriptor number that the child has closed, or reused);
/// 2. `PR_SET_PDEATHSIG` is `SIGKILL`, and the child exits at once if the master is
///    already gone;
/// 3. stdin is `/dev/null`, stderr the new pipe, and every other descriptor but
///    `channel` is closed (`close_range`): no listener, no other worker's channel, no
///    epoll instance, no client socket of the master's;
/// 4. `env` is set, and `fd_var` to the channel's number, so the worker API finds its
///    channel exactly as an exec'd worker does;
/// 5. `body` runs; its return value is the exit status. A panic exits with 101. The
///    child then calls `_exit`: it never returns into the master's code, runs no
///    destructor of the master's objects and flushes no buffer it copied from it.
///
/// # Safety
/// The calling process must be single-threaded (the master is: it never starts a
/// thread). Then the child is an exact copy with no lock held by a vanished thread, so
/// allocating and running ordinary Rust code in it is sound. In a process that started
/// threads, the child may deadlock or corrupt memory (a lock or allocator arena taken
/// by another thread stays taken, half-updated, forever in the child);
/// [`fork_worker_checked`] checks this before it forks, and [`crate::Server::serve`]
/// documents it for library users.
pub unsafe fn fork_worker(
    channel: BorrowedFd<'_>,
    child: &ForkChild<'_>,
    body: &dyn Fn() -> i32,
) -> io::Result<(u32, OwnedFd)> {
    let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let devnull = rustix::fs::open("/dev/null", rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC, 0.into())?;
    let master = getpid();
    // SAFETY: `fork` has no memory-safety preconditions of its own; what makes the
    // child sound is that the caller is single-threaded (see "Fork safety" above), so
    // the child's copy of every lock and allocator is consistent. Both processes keep
    // their own copies of the descriptors; the parent's `OwnedFd`s below are dropped
    // in the parent only, and the child never returns from `child_main`.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => child_main(master, channel, devnull, err_write, child, body),
        pid => {
            drop(err_write);
            drop(devnull);
            rustix::io::ioctl_fionbio(&err_read, true)?;
            Ok((pid as u32, err_read))
        }
    }
}

/// The number of threads of this process (`/proc/self/task`).
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// [`fork_worker`], after checking that this process has one thread, which is what
/// makes forking it sound: with one thread, no other can start one between the check
/// and the fork. An error, never a fork, otherwise.
pub fn fork_worker_checked(
    channel: BorrowedFd<'_>,
    child: &ForkChild<'_>,
    body: &dyn Fn() -> i32,
) -> io::Result<(u32, OwnedFd)> {
    let threads = thread_count().map_err(|e| {
        io::Error::other(format!(
            "cannot count this process's threads in /proc/self/task ({e}): a worker is forked only \
             from a single-threaded process, and /proc is how that is checked; mount /proc"
        ))
    })?;
    match threads {
        // SAFETY: this process has one thread (just counted, and only this thread
        // could start another), which is `fork_worker`'s requirement.
        1 => unsafe { fork_worker(channel, child, body) },
        n => Err(io::Error::other(format!(
            "cannot fork a worker from a process with {n} threads: a forked worker runs code, \
             and is only sound when forked from a single-threaded process"
        ))),
    }
}

/// What a forked worker is given besides its channel.
#[derive(Debug)]
pub struct ForkChild<'a> {
    /// The variable that gets the channel's descriptor number (`HANDOFF_FD`).
    pub fd_var: &'a str,
    /// Variables to set (the worker's slot, the number of workers, ...).
    pub env: &'a [(String, String)],
    /// The user to become before `body` runs (`--user`).
    pub uid: Option<u32>,
    /// The group to become before `body` runs (`--group`, or `--user`'s own).
    pub gid: Option<u32>,
}

/// The forked child: sets itself up, runs `body`, exits. Never returns.
fn child_main(
    master: Pid,
    channel: BorrowedFd<'_>,
    devnull: OwnedFd,
    err_write: OwnedFd,
    child: &ForkChild<'_>,
    body: &dyn Fn() -> i32,
) -> ! {
    // Any failure before `body` runs: a short message on stderr (the master's own until
    // it is redirected, then the pipe) and exit 127, which the master counts as a
    // failed start.
    let fail = |what: &str, e: io::Error| -> ! {
        let msg = format!("handoff: forked worker: {what}: {e}\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
        // SAFETY: `_exit` ends the process without running atexit handlers or
        // destructors, which belong to the master's state copied into this child.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: `sigaction` with SIG_DFL installs no handler, so there is no handler
    // code whose safety matters; `sa` is a zeroed `sigaction`, which is a valid value
    // (empty mask, no flags). Resetting to default is what the kernel does at exec.
    // `sigprocmask` only reads the empty set we give it.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        for sig in MASTER_SIGNALS {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    // Own process group, as for exec'd workers: Ctrl-C goes to the master alone.
    let _ = rustix::process::setpgid(None, None);
    reset_child_scheduling();
    // Keep the channel clear of 0..=2, which are about to be replaced (a master started
    // with closed stdio may have been given one of those numbers for it).
    let channel = if channel.as_raw_fd() > 2 {
        channel
    } else {
        match rustix::io::fcntl_dupfd_cloexec(channel, 3) {
            // Leaked on purpose: the child ends with `_exit`, and this is its channel.
            Ok(fd) => {
                let raw = fd.as_raw_fd();
                std::mem::forget(fd);
                // SAFETY: `raw` is open (just duplicated) and never closed before `_exit`.
                unsafe { BorrowedFd::borrow_raw(raw) }
            }
            Err(e) => fail("moving the channel", e.into()),
        }
    };
    if let Err(e) = rustix::stdio::dup2_stdin(&devnull).and_then(|()| rustix::stdio::dup2_stderr(&err_write)) {
        fail("redirecting stdin and stderr", e.into());
    }
    // The two originals are closed with everything else below; forget them so that no
    // destructor closes a number that the closure may have reused by then.
    std::mem::forget(devnull);
    std::mem::forget(err_write);
    if let Err(e) = close_all_but(channel.as_raw_fd()) {
        fail("closing the master's descriptors", e);
    }
    if let Err(e) = become_user(child.uid, child.gid) {
        fail("becoming --user/--group", e);
    }
    // After the switch: the kernel clears the parent-death signal when the uid or gid
    // changes.
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        fail("PR_SET_PDEATHSIG", e.into());
    }
    if rustix::process::getppid() != Some(master) {
        // The master exited before PDEATHSIG was armed: nobody would ever stop us.
        // SAFETY: as above, `_exit` runs none of the master's destructors.
        unsafe { libc::_exit(0) }
    }
    for key in SCRUBBED_ENV {
        std::env::remove_var(key);
    }
    for (k, v) in child.env {
        // The child is single-threaded, so no other thread reads the environment now.
        std::env::set_var(k, v);
    }
    std::env::set_var(child.fd_var, channel.as_raw_fd().to_string());
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // SAFETY: `_exit` ends the child here, so it never unwinds or returns into the
    // master's stack frames (whose objects own descriptors this child has closed).
    unsafe { libc::_exit(code) }
}

/// Becomes `uid`/`gid` for good, as `Command::uid`/`gid` and [`spawn_with_channel`] do
/// for an exec'd worker: no supplementary groups (`EPERM` ignored: a process that
/// may not change them has none of root's to shed), the group, then the user (after
/// which the others could not be changed any more), then no_new_privs.
///
/// rustix's calls change the calling thread only; that is the whole process here, a
/// forked child having exactly one thread.
fn become_user(uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    match rustix::thread::set_thread_groups(&[]) {
        Ok(()) | Err(rustix::io::Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(gid) = gid {
        rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(gid))?;
    }
    if let Some(uid) = uid {
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid))?;
    }
    rustix::thread::set_no_new_privs(true)?;
    Ok(())
}

/// Closes every descriptor from 3 up, except `keep`.
fn close_all_but(keep: RawFd) -> io::Result<()> {
    let close_range = |first: RawFd, last: u32| -> io::Result<()> {
        if first as u32 > last {
            return Ok(());
        }
        // SAFETY: close_range takes plain integers; it closes descriptors that this
        // child owns no Rust object for (the master's objects are never dropped here:
        // the child only leaves through `_exit`).
        let r = unsafe { libc::syscall(libc::SYS_close_range, first as u32, last, 0u32) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let ranged = close_range(3, (keep as u32).saturating_sub(1)).and_then(|()| close_range(keep + 1, u32::MAX));
    match ranged {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            // Kernels before 5.9: close what /proc lists (the listing's own descriptor
            // is closed by then; closing it again fails harmlessly with EBADF).
            let raws: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2 && fd != keep)
                .collect();
            for raw in raws {
                // SAFETY: as above: no Rust object of this child owns `raw`.
                unsafe { libc::close(raw) };
            }
            Ok(())
        }
        r => r,
    }
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

/// Sends `sig` to every process of group `pgid` (a worker leads a group of its own,
/// numbered by its pid, which its children join unless they leave it). True if some
/// process got it; false if the group is empty. Call it for a worker just reaped: while
/// the group has members the kernel does not give its number to a new process, so a
/// non-empty group is the worker's.
pub fn signal_group(pgid: u32, sig: Signal) -> io::Result<bool> {
    let Some(pgid) = Pid::from_raw(pgid as i32) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "process group 0"));
    };
    match rustix::process::kill_process_group(pgid, sig) {
        Err(rustix::io::Errno::SRCH) => Ok(false),
        r => r.map(|()| true).map_err(io::Error::from),
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
    // `wait`, not `waitpid(None)`: rustix maps `None` to 0, "any child in my process
    // group", and workers lead process groups of their own.
    match rustix::process::wait(WaitOptions::NOHANG) {
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
pub(crate) fn adopt_fds(raws: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
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

/// Spawns `cmd` (a new master) so that it inherits `keep` across exec, and gets
/// `SIGTERM` (a graceful stop) when this master's thread exits, until it takes over and
/// calls [`outlive_parent`]: a new master that has not taken over must not go on alone
/// on the listening sockets. The death signal fires when the *thread* that spawned it
/// exits: the master's loop thread spawns it, which lives as long as the master. If
/// this master is already gone by the time the request takes effect (the child has a
/// new parent), the child does not start.
pub fn spawn_keeping(cmd: &mut Command, keep: &[BorrowedFd<'_>]) -> io::Result<Child> {
    let raws: Vec<RawFd> = keep.iter().map(|f| f.as_raw_fd()).collect();
    let master = getpid();
    // SAFETY: runs in the forked child before exec; only fcntl, prctl, getppid and
    // sched_setscheduler, raw syscalls with no allocation (errors from a raw errno).
    // The descriptors are open in the parent for the duration of `spawn` (the caller's
    // borrows), hence in the child. `raws` was allocated before fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            for &raw in &raws {
                fcntl_setfd(BorrowedFd::borrow_raw(raw), FdFlags::empty())?;
            }
            rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
            if rustix::process::getppid() != Some(master) {
                return Err(io::Error::from_raw_os_error(rustix::io::Errno::SRCH.raw_os_error()));
            }
            // The new master starts from `SCHED_OTHER` and chooses for itself (and
            // so knows its workers must go back to it).
            reset_child_scheduling();
            Ok(())
        });
    }
    cmd.spawn()
}

/// A new master that has taken over: it no longer stops when the old master exits
/// (undoes the death signal [`spawn_keeping`] set up).
pub fn outlive_parent() -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own: the policy is per thread, and these change it.
    fn on_a_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().expect("the test thread");
    }

    /// The policy of a child spawned by this thread, as the child itself reads it.
    fn childs_policy() -> String {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cut -d' ' -f41 /proc/$$/stat"]).stdout(std::process::Stdio::piped());
        let out = spawn_keeping(&mut cmd, &[]).unwrap().wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn the_master_thread_switches_and_its_children_go_back() {
        on_a_thread(|| {
            assert!(set_master_batch(true).unwrap());
            assert_eq!(current_policy(), libc::SCHED_BATCH);
            assert_eq!(childs_policy(), libc::SCHED_OTHER.to_string(), "a child");
            assert_eq!(current_policy(), libc::SCHED_BATCH, "the master thread itself");
            assert!(!set_master_batch(false).unwrap());
            assert_eq!(current_policy(), libc::SCHED_OTHER);
        });
    }

    #[test]
    fn a_policy_changed_from_outside_is_the_operators() {
        on_a_thread(|| {
            assert!(set_master_batch(true).unwrap());
            // The operator moves the running master (`chrt --idle -p 0 PID`): children
            // inherit that, and no child tries to leave it (which needs privilege).
            set_policy(libc::SCHED_IDLE).unwrap();
            reset_child_scheduling();
            assert_eq!(current_policy(), libc::SCHED_IDLE, "reset only what the master set");
            // Nor does a reload to `inherit` take it back.
            assert!(!set_master_batch(false).unwrap());
            assert_eq!(current_policy(), libc::SCHED_IDLE);
            assert!(!MASTER_BATCH.get());
        });
    }

    #[test]
    fn the_guard_returns_the_thread_as_it_found_it() {
        on_a_thread(|| {
            {
                let _guard = MasterSchedGuard;
                assert!(set_master_batch(true).unwrap());
            }
            assert_eq!(current_policy(), libc::SCHED_OTHER);
            assert!(!MASTER_BATCH.get());
        });
    }
}
