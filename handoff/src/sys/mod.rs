//! The syscall boundary: descriptor passing, process spawning, resource limits.
//!
//! Everything that talks to the kernel below the level of `std` lives here, so the
//! rest of the crate reasons about `OwnedFd`s and typed results only. Functions return
//! plain [`std::io::Error`]s; the layers above add the context a user needs.
//!
//! The `unsafe` code of the crate is confined to this module: [`process`] (the code
//! that runs between `fork` and `exec`, and adopting inherited descriptors), `socket`
//! (`TCP_DEFER_ACCEPT` and `SIOCOUTQ`, which rustix does not offer), and small functions here
//! (marking inherited descriptors close-on-exec, registering a channel with tokio);
//! descriptor passing is built on `rustix`, whose
//! `sendmsg`/`recvmsg` take `BorrowedFd`s and hand back `OwnedFd`s, so no raw
//! descriptor is ever stored. Sockets (bind, listen, accept, options, the one `EINTR`
//! retry) are made in `socket`.

#![allow(unsafe_code, reason = "the crate's one syscall boundary; every block says why it is sound")]

pub mod fdpass;
pub mod process;
pub mod socket;

pub use socket::{set_tcp_defer_accept, tcp_defer_accept};

use std::io;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit.
///
/// Descriptors in flight on a Unix socket (sent, not yet received) count against the
/// sender's limit (`ETOOMANYREFS`), and the master holds a copy of every connection
/// until its worker acknowledges it, so the master wants all the room it may have.
/// Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), max) = (lim.current, lim.maximum) {
        let target = max.unwrap_or(cur.max(1 << 20));
        if target > cur {
            lim.current = Some(target);
            setrlimit(Resource::Nofile, lim)?;
        }
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// Gives the C allocator's free memory back to the kernel (`malloc_trim(0)`, glibc):
/// a worker that served ten thousand connections at once and then handed them back
/// to the master would otherwise keep the peak in its RSS for ever. Elsewhere a no-op.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists, under
    // the allocator's lock; it takes no pointer from us and is safe to call at any time
    // from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Counts the descriptors this process has open (from `/proc/self/fd`).
pub fn count_open_fds() -> io::Result<usize> {
    // The directory handle itself is one of the entries; do not count it.
    Ok(std::fs::read_dir("/proc/self/fd")?.count().saturating_sub(1))
}

/// Marks every descriptor this process inherited (3 and up) close-on-exec.
///
/// Whatever started the master may have leaked descriptors into it (shells, CI
/// runners and supervisors do); without this they would flow on into every worker.
/// Called once at master start-up, before the master opens anything of its own.
pub fn cloexec_inherited_fds() -> io::Result<()> {
    use std::os::fd::BorrowedFd;
    let raws: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for raw in raws {
        // SAFETY: `raw` was listed in /proc/self/fd a moment ago and the master is
        // single-threaded at start-up, so it is still open (or, for the directory
        // handle of the listing, already closed: fcntl then fails with EBADF and we
        // skip it). The borrow lasts for two fcntl calls only.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        if let Ok(flags) = rustix::io::fcntl_getfd(fd) {
            let _ = rustix::io::fcntl_setfd(fd, flags | rustix::io::FdFlags::CLOEXEC);
        }
    }
    Ok(())
}

/// Writes as much of `buf` as our stderr takes now, without blocking and without setting
/// `O_NONBLOCK` (which would change the descriptor for every process sharing it, such
/// as the shell the master's stderr came from): `pwritev2` with `RWF_NOWAIT` answers
/// `WouldBlock` when a pipe or socket is full. Where the kernel cannot say that for one
/// call (regular files, terminals: `EOPNOTSUPP`), it writes normally; those do not
/// stall on a reader.
pub fn write_stderr_nowait(buf: &[u8]) -> io::Result<usize> {
    use rustix::io::ReadWriteFlags;
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stderr = io::stderr();
    let fd = stderr.as_fd();
    // Once stderr has said EOPNOTSUPP (a file or a terminal), write to it plainly
    // without asking again on every line.
    static PLAIN: AtomicBool = AtomicBool::new(false);
    if PLAIN.load(Ordering::Relaxed) {
        return Ok(rustix::io::write(fd, buf)?);
    }
    // Offset -1: the descriptor's own position, as write(2) uses.
    match rustix::io::pwritev2(fd, &[io::IoSlice::new(buf)], u64::MAX, ReadWriteFlags::NOWAIT) {
        Err(rustix::io::Errno::OPNOTSUPP) => {
            PLAIN.store(true, Ordering::Relaxed);
            Ok(rustix::io::write(fd, buf)?)
        }
        r => Ok(r?),
    }
}

/// The master's log writer: stderr through [`write_stderr_nowait`]. A log line that finds
/// the reader of our stderr (journald, a pipe) stalled is dropped, not waited for: the
/// loop that serves every connection must never sleep on a log reader. A line that
/// cannot be written at all (the reader is gone: `EPIPE`) is dropped too, and the
/// error is not passed on, since `tracing-subscriber` would report it with `eprint!`,
/// which panics on a broken stderr. Lines dropped are counted in [`stderr_dropped`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrNoWait;

static STDERR_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes of log output [`StderrNoWait`] has dropped.
pub fn stderr_dropped() -> u64 {
    STDERR_DROPPED.load(std::sync::atomic::Ordering::Relaxed)
}

impl io::Write for StderrNoWait {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match write_stderr_nowait(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(_) => {
                STDERR_DROPPED.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(buf.len())
            }
            r => r,
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Registers a worker's channel with the current tokio runtime, for reading.
///
/// Must be called inside a tokio runtime.
pub fn async_fd(
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
) -> io::Result<tokio::io::unix::AsyncFd<std::sync::Arc<std::os::fd::OwnedFd>>> {
    // SAFETY: `register_with_interest` requires the descriptor to stay open and the
    // same for the AsyncFd's lifetime. It is an `Arc<OwnedFd>`: the AsyncFd holds one
    // strong reference, so the descriptor is closed only after the AsyncFd is dropped,
    // and an `OwnedFd` never changes the number it returns.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
