//! Sockets: creating, binding, listening, accepting, their options, the peer's
//! credentials, and the crate's one retry of a call a signal interrupted (`EINTR`).
//!
//! Every socket made here is `CLOEXEC` from the system call that creates it, and an
//! `OwnedFd` in the same expression. Listening sockets are non-blocking; accepted
//! connections are blocking or not as the caller asks. Compound operations (bind and
//! listen) return [`io::Error`]; single calls whose errors callers tell apart (`accept`,
//! `recv`, `send`) return [`rustix::io::Errno`], which `?` turns into an [`io::Error`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

/// Calls `f` again for as long as a signal interrupts it (`EINTR`), and returns what
/// it returned otherwise. The one place the crate retries an interrupted call.
pub(crate) fn retry_intr<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            r => return r,
        }
    }
}

/// A non-blocking, `CLOEXEC` TCP socket for `addr`, with `SO_REUSEADDR` (restart
/// without waiting out TIME_WAIT) and, if asked, `SO_REUSEPORT`, bound to `addr`.
fn bind_tcp(addr: SocketAddr, v6only: bool, reuseport: bool) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK, None)?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    if reuseport {
        rustix::net::sockopt::set_socket_reuseport(&fd, true)?;
    }
    if v6only && addr.is_ipv6() {
        rustix::net::sockopt::set_ipv6_v6only(&fd, true)?;
    }
    rustix::net::bind(&fd, &addr)?;
    Ok(fd)
}

/// A listening TCP socket on `addr`: non-blocking, `CLOEXEC`, `SO_REUSEADDR`, and for
/// IPv6 `IPV6_V6ONLY` (so that `[::]:80` and `0.0.0.0:80` can coexist).
pub(crate) fn listen_tcp(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let fd = bind_tcp(addr, true, false)?;
    rustix::net::listen(&fd, backlog)?;
    Ok(fd)
}

/// A listening TCP socket on `addr` with `SO_REUSEPORT` as well, so that another
/// process of the same user can listen on the same address at the same time (a new
/// master's metrics and health endpoints during an upgrade, or a benchmark's
/// `reuseport` workers). Non-blocking, `CLOEXEC`; the dual-stack default of the system
/// is kept for IPv6.
pub fn listen_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let fd = bind_tcp(addr, false, true)?;
    rustix::net::listen(&fd, backlog)?;
    Ok(fd)
}

/// A listening Unix stream socket at `path`: non-blocking, `CLOEXEC`. A socket file
/// left behind by a dead server (nobody accepts on it) is replaced; one with a live
/// server behind it is "address in use". The file is created with the process's
/// umask.
pub(crate) fn listen_unix(path: &Path, backlog: i32) -> io::Result<OwnedFd> {
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
    let ua = SocketAddrUnix::new(path)?;
    match rustix::net::bind(&fd, &ua) {
        Err(Errno::ADDRINUSE) if stale_unix_socket(path) => {
            std::fs::remove_file(path)?;
            rustix::net::bind(&fd, &ua)?;
        }
        r => r?,
    }
    rustix::net::listen(&fd, backlog)?;
    Ok(fd)
}

/// A socket file nobody listens on (connect is refused). The probe is non-blocking: a
/// live server with a full backlog answers EAGAIN, which counts as live, instead of
/// stalling the caller.
fn stale_unix_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).map(|m| m.file_type().is_socket()).unwrap_or(false);
    if !is_socket {
        return false;
    }
    let probe = || -> io::Result<bool> {
        let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
        let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
        let addr = SocketAddrUnix::new(path)?;
        Ok(retry_intr(|| rustix::net::connect(&fd, &addr)) == Err(Errno::CONNREFUSED))
    };
    probe().unwrap_or(false)
}

/// Accepts one connection from a listening socket: `CLOEXEC`, and non-blocking if
/// `nonblocking`. `EAGAIN` means none is waiting; `EMFILE`/`ENFILE` that this process
/// or the system is out of descriptors.
pub(crate) fn accept(listener: BorrowedFd<'_>, nonblocking: bool) -> rustix::io::Result<OwnedFd> {
    let flags = if nonblocking { SocketFlags::CLOEXEC | SocketFlags::NONBLOCK } else { SocketFlags::CLOEXEC };
    retry_intr(|| rustix::net::accept_with(listener, flags))
}

/// Where a socket is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LocalAddr {
    /// TCP (or UDP) on IPv4 or IPv6.
    Inet(SocketAddr),
    /// A Unix socket at this path (empty for an unnamed one).
    Unix(PathBuf),
}

/// The address a socket is bound to (`getsockname`).
pub(crate) fn local_addr(fd: BorrowedFd<'_>) -> io::Result<LocalAddr> {
    match rustix::net::getsockname(fd)? {
        a if a.address_family() == AddressFamily::UNIX => {
            let u = SocketAddrUnix::try_from(a).map_err(io::Error::other)?;
            Ok(LocalAddr::Unix(u.path().map(|p| PathBuf::from(p.to_string_lossy().into_owned())).unwrap_or_default()))
        }
        a => Ok(LocalAddr::Inet(SocketAddr::try_from(a).map_err(io::Error::other)?)),
    }
}

/// The IP address of a connected socket's peer (`getpeername`); `None` for a Unix
/// socket's peer. An error (`ENOTCONN`) means the peer is already gone.
pub(crate) fn peer_ip(fd: BorrowedFd<'_>) -> io::Result<Option<std::net::IpAddr>> {
    match rustix::net::getpeername(fd)? {
        Some(a) if a.address_family() == AddressFamily::UNIX => Ok(None),
        None => Ok(None),
        Some(a) => Ok(Some(SocketAddr::try_from(a).map_err(io::Error::other)?.ip())),
    }
}

/// Puts a descriptor in non-blocking (or blocking) mode.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    Ok(rustix::io::ioctl_fionbio(fd, on)?)
}

/// Receives what is queued on a connected socket, without waiting (`MSG_DONTWAIT`,
/// whatever the socket's mode): `EAGAIN` if nothing is; `Ok(0)` at the end of the stream.
pub(crate) fn recv_nowait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> rustix::io::Result<usize> {
    retry_intr(|| rustix::net::recv(fd, &mut *buf, RecvFlags::DONTWAIT)).map(|(n, _)| n)
}

/// As [`recv_nowait`], but leaves the bytes queued (`MSG_PEEK`), for a look before the
/// bytes are consumed.
pub(crate) fn peek_nowait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> rustix::io::Result<usize> {
    retry_intr(|| rustix::net::recv(fd, &mut *buf, RecvFlags::PEEK | RecvFlags::DONTWAIT)).map(|(n, _)| n)
}

/// Sends what the socket takes now, without waiting (`MSG_DONTWAIT`) and without
/// `SIGPIPE` (a peer that has gone is `EPIPE`). With `more` (`MSG_MORE`), the kernel
/// holds the bytes back for what follows at once (a `shutdown`'s FIN, say), so both
/// leave in one segment.
pub(crate) fn send_nowait(fd: BorrowedFd<'_>, bytes: &[u8], more: bool) -> rustix::io::Result<usize> {
    let mut flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    if more {
        flags |= SendFlags::MORE;
    }
    retry_intr(|| rustix::net::send(fd, bytes, flags))
}

/// The credentials of the process at the other end of a Unix socket (`SO_PEERCRED`:
/// read from the kernel, as they were when the peer connected or bound, never claimed
/// by the peer).
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<rustix::net::UCred> {
    Ok(rustix::net::sockopt::socket_peercred(fd)?)
}

/// Whether a peer with these credentials may steer this process: it runs as this
/// process's user, or as root.
pub(crate) fn same_user_or_root(cred: &rustix::net::UCred) -> bool {
    cred.uid == rustix::process::getuid() || cred.uid.is_root()
}

/// Sets `TCP_DEFER_ACCEPT` on a listening TCP socket: the kernel completes `accept`
/// only once the client has sent data (or after about `secs` seconds). `0` turns it
/// off.
pub fn set_tcp_defer_accept(fd: BorrowedFd<'_>, secs: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is borrowed, so open for the whole call; the option value
    // points at a live c_int and the length passed is its size; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads `TCP_DEFER_ACCEPT` of a listening TCP socket: `0` if off, else about how many
/// seconds the kernel waits for data (it keeps a count of SYN-ACK retransmissions, so
/// the value read back is rounded up from the one set).
pub fn tcp_defer_accept(fd: BorrowedFd<'_>) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the descriptor is borrowed, so open for the whole call; the kernel writes
    // at most `len` bytes (one c_int) into `value`, which lives across the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(u32::try_from(value).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What this end of a Unix socket has sent that its peer has not read yet (`SIOCOUTQ`,
/// the kernel's memory for those messages, not their payload: divide by
/// [`super::fdpass::charge_of`] to count them): 0 once the peer has read everything, or
/// once it has closed its end (the kernel frees the queue). The master's view of whether
/// a worker reads its channel at all, and of what a dead one left unread.
pub(crate) fn unread_by_peer(fd: BorrowedFd<'_>) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    // SAFETY: the descriptor is borrowed, so open for the whole call; SIOCOUTQ (which
    // Linux numbers as TIOCOUTQ) writes one c_int into `value`, which lives across it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut value as *mut libc::c_int) };
    if r == 0 {
        Ok(usize::try_from(value).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `fd` is a stream socket (`SO_TYPE`), as a listener handed to us must be.
pub(crate) fn is_stream_socket(fd: impl AsFd) -> bool {
    rustix::net::sockopt::socket_type(fd).is_ok_and(|t| t == SocketType::STREAM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn is_cloexec(fd: impl AsFd) -> bool {
        rustix::io::fcntl_getfd(fd).unwrap().contains(rustix::io::FdFlags::CLOEXEC)
    }

    fn is_nonblocking(fd: impl AsFd) -> bool {
        rustix::fs::fcntl_getfl(fd).unwrap().contains(rustix::fs::OFlags::NONBLOCK)
    }

    fn port(fd: &OwnedFd) -> SocketAddr {
        match local_addr(fd.as_fd()).unwrap() {
            LocalAddr::Inet(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listeners_are_cloexec_and_nonblocking_and_accept_as_asked() {
        let l = listen_tcp("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        assert!(is_cloexec(&l) && is_nonblocking(&l));
        assert_eq!(accept(l.as_fd(), true).unwrap_err(), Errno::AGAIN, "nothing waits yet");
        let addr = port(&l);
        let _c1 = std::net::TcpStream::connect(addr).unwrap();
        let _c2 = std::net::TcpStream::connect(addr).unwrap();
        let take = |nonblocking| loop {
            match accept(l.as_fd(), nonblocking) {
                Ok(s) => break s,
                Err(Errno::AGAIN) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        let blocking = take(false);
        assert!(is_cloexec(&blocking) && !is_nonblocking(&blocking));
        let nonblocking = take(true);
        assert!(is_cloexec(&nonblocking) && is_nonblocking(&nonblocking));
        assert!(is_stream_socket(&nonblocking));
    }

    #[test]
    fn reuseport_lets_two_sockets_listen_on_one_port_and_plain_does_not() {
        let a = listen_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = port(&a);
        let b = listen_reuseport(addr, 16).unwrap();
        assert_eq!(port(&b), addr);
        assert!(is_cloexec(&b) && is_nonblocking(&b));
        let err = listen_tcp(addr, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn unix_listener_replaces_a_stale_file_only() {
        let dir = std::env::temp_dir().join(format!("handoff-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let first = listen_unix(&path, 16).unwrap();
        assert_eq!(local_addr(first.as_fd()).unwrap(), LocalAddr::Unix(path.clone()));
        assert_eq!(listen_unix(&path, 16).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(first);
        let second = listen_unix(&path, 16).unwrap();
        assert!(is_cloexec(&second) && is_nonblocking(&second));
        // Not a socket at all: never removed.
        let plain = dir.join("plain");
        std::fs::write(&plain, b"keep").unwrap();
        assert!(listen_unix(&plain, 16).is_err());
        assert_eq!(std::fs::read(&plain).unwrap(), b"keep");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn recv_peek_and_send_never_wait() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(recv_nowait(b.as_fd(), &mut buf), Err(Errno::AGAIN), "a blocking socket does not block");
        a.write_all(b"hello").unwrap();
        assert_eq!(peek_nowait(b.as_fd(), &mut buf), Ok(5));
        assert_eq!(recv_nowait(b.as_fd(), &mut buf), Ok(5), "the peek left the bytes queued");
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(send_nowait(b.as_fd(), b"back", true), Ok(4));
        let mut got = [0u8; 4];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"back");
        drop(a);
        assert_eq!(recv_nowait(b.as_fd(), &mut buf), Ok(0), "end of stream");
        assert_eq!(send_nowait(b.as_fd(), b"x", false), Err(Errno::PIPE), "EPIPE, not SIGPIPE");
    }

    #[test]
    fn peer_credentials_name_this_user() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_credentials(a.as_fd()).unwrap();
        assert_eq!(cred.uid, rustix::process::getuid());
        assert_eq!(cred.pid, rustix::process::getpid());
        assert!(same_user_or_root(&cred));
    }

    #[test]
    fn set_nonblocking_switches_both_ways() {
        let (a, _b) = UnixStream::pair().unwrap();
        set_nonblocking(a.as_fd(), true).unwrap();
        assert!(is_nonblocking(&a));
        set_nonblocking(a.as_fd(), false).unwrap();
        assert!(!is_nonblocking(&a));
    }

    #[test]
    fn retry_intr_retries_only_eintr() {
        let mut calls = 0;
        let r = retry_intr(|| {
            calls += 1;
            if calls < 3 {
                Err(Errno::INTR)
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r, Ok(3));
        let mut calls = 0;
        let r: rustix::io::Result<()> = retry_intr(|| {
            calls += 1;
            Err(Errno::AGAIN)
        });
        assert_eq!((r, calls), (Err(Errno::AGAIN), 1));
    }
}
