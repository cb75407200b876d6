//! Descriptor passing over `AF_UNIX` sockets: `sendmsg`/`recvmsg` with `SCM_RIGHTS`.
//!
//! Invariants this module guarantees to its callers:
//! - Received descriptors are opened with `MSG_CMSG_CLOEXEC`, so a worker that later
//!   execs never leaks a client socket into its children.
//! - A message whose control data was truncated (`MSG_CTRUNC`: the receiver had no room,
//!   or hit its descriptor limit) is an error, typed ([`Truncated`]) and for that message
//!   only, and every descriptor that did arrive is closed before the error is returned:
//!   nothing leaks, nothing is half-delivered. Its payload is still returned, so the
//!   caller knows which frame was hit.
//! - A message whose payload was truncated (`MSG_TRUNC`) is an error too.
//! - `EINTR` is retried; `EAGAIN` surfaces as [`io::ErrorKind::WouldBlock`]. With
//!   `SOCK_SEQPACKET` a send that fails transferred nothing: the caller still owns the
//!   descriptors and may give them to someone else.
//! - Sends use `MSG_NOSIGNAL`: a peer that has gone away is `EPIPE`, never `SIGPIPE`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::socket::retry_intr;

/// The kernel's limit on descriptors in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub const MAX_FDS_PER_MSG: usize = 253;

/// Creates a connected `SOCK_SEQPACKET` pair, both ends `CLOEXEC` and non-blocking.
///
/// The master keeps one end and gives the other to a worker; `SOCK_SEQPACKET`
/// preserves message boundaries, so one `sendmsg` is one frame and its descriptors.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Sends `data` and `fds` as one message.
///
/// Returns the number of bytes sent (all of `data` on a `SOCK_SEQPACKET` socket).
/// At most [`MAX_FDS_PER_MSG`] descriptors may be sent at once.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MSG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} descriptors in one message, the kernel allows {MAX_FDS_PER_MSG}", fds.len()),
        ));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("control buffer too small for the descriptors"));
    }
    let iov = [IoSlice::new(data)];
    Ok(retry_intr(|| sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL))?)
}

/// One received message: `len` bytes of payload and the descriptors that came with it.
#[derive(Debug)]
pub struct Received {
    /// Payload bytes written into the caller's buffer. 0 with no descriptors means the
    /// peer closed its end (end of file).
    pub len: usize,
    /// The descriptors, in the order the sender listed them, each `CLOEXEC`.
    pub fds: Vec<OwnedFd>,
}

/// A message whose descriptors did not all arrive: the control data was truncated
/// (`MSG_CTRUNC`: the sender sent more than the receiver made room for, or the receiver
/// is at its descriptor limit, `RLIMIT_NOFILE`), or more descriptors came than the
/// caller allows. Every descriptor that did arrive has been closed.
///
/// It is the inner error of the [`io::Error`] (kind `InvalidData`) that
/// [`recv_with_fds`] returns: find it with [`Truncated::of`]. The payload was received
/// whole into the caller's buffer (`buf[..len]`), so the caller can decode it and learn
/// which frame, and which connections, the lost descriptors belonged to: the error is
/// that message's only, and the channel is still good for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    /// Payload bytes written into the caller's buffer: the whole message.
    pub len: usize,
    /// Descriptors that did arrive (all closed before the error was returned).
    pub arrived: usize,
    /// Descriptors the receiver made room for (`max_fds`).
    pub room: usize,
}

impl Truncated {
    /// The [`Truncated`] inside `e`, if `e` is one (matched by type, not by text).
    pub fn of(e: &io::Error) -> Option<&Truncated> {
        e.get_ref()?.downcast_ref()
    }
}

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "control message truncated (MSG_CTRUNC): more than {} descriptors sent, or the receiver is out of \
             descriptors; {} received and closed",
            self.room, self.arrived
        )
    }
}

impl std::error::Error for Truncated {}

/// Receives one message into `buf`, with room for up to `max_fds` descriptors.
///
/// Errors (with every received descriptor already closed):
/// - `InvalidData` with a [`Truncated`] inside if the control data was truncated
///   (`MSG_CTRUNC`: more descriptors than `max_fds`, or this process is at its
///   descriptor limit); the payload is in `buf[..len]`;
/// - `InvalidData` if the payload did not fit in `buf` (`MSG_TRUNC`), whether or not
///   the control data was truncated too;
/// - `WouldBlock` if the socket is non-blocking and nothing is queued.
pub fn recv_with_fds(sock: impl AsFd, buf: &mut [u8], max_fds: usize) -> io::Result<Received> {
    let max_fds = max_fds.min(MAX_FDS_PER_MSG);
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
    // Offer only as much control space as the caller asked for, so that a sender who
    // sends more descriptors than announced is caught by MSG_CTRUNC.
    let room = rustix::cmsg_space!(ScmRights(max_fds));
    let mut control = RecvAncillaryBuffer::new(&mut space[..room]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = retry_intr(|| recvmsg(sock.as_fd(), &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC))?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    // A payload cut short is no use to anyone: that error first (`fds` closes on return).
    if msg.flags.contains(ReturnFlags::TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message longer than the {}-byte buffer (MSG_TRUNC)", buf.len()),
        ));
    }
    // rustix rounds the control space up, so the kernel may deliver more than
    // `max_fds` without MSG_CTRUNC: enforce the caller's limit ourselves.
    if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > max_fds {
        let arrived = fds.len();
        drop(fds);
        let t = Truncated { len: msg.bytes, arrived, room: max_fds };
        return Err(io::Error::new(io::ErrorKind::InvalidData, t));
    }
    Ok(Received { len: msg.bytes, fds })
}

/// What the kernel charges one unread message of `len` bytes with one descriptor, as
/// `socket::unread_by_peer` counts it: measured once on a fresh pair, as the charge depends
/// on the kernel's buffer sizes, not on anything this process can compute.
pub fn charge_of(len: usize) -> io::Result<usize> {
    let (a, _b) = seqpacket_pair()?;
    let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    send_with_fds(a.as_fd(), &vec![0u8; len], &[r.as_fd()])?;
    // Dropping `_b` frees the queued message and closes the descriptor in flight.
    super::socket::unread_by_peer(a.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    /// The queue a peer has not read is counted in messages: each is charged the same.
    #[test]
    fn unread_messages_are_counted_by_their_charge() {
        use crate::sys::socket::unread_by_peer;
        let (a, b) = seqpacket_pair().unwrap();
        let each = charge_of(24).unwrap();
        assert!(each >= 24, "{each}");
        let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        for _ in 0..3 {
            send_with_fds(a.as_fd(), &[7u8; 24], &[r.as_fd()]).unwrap();
        }
        assert_eq!(unread_by_peer(a.as_fd()).unwrap() / each, 3);
        let mut buf = [0u8; 64];
        recv_with_fds(&b, &mut buf, 1).unwrap();
        assert_eq!(unread_by_peer(a.as_fd()).unwrap() / each, 2);
        drop(b);
        assert_eq!(unread_by_peer(a.as_fd()).unwrap(), 0);
    }
    use std::os::unix::net::UnixStream;

    fn pipe_pair() -> (OwnedFd, OwnedFd) {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap()
    }

    fn is_cloexec(fd: impl AsFd) -> bool {
        rustix::io::fcntl_getfd(fd).unwrap().contains(rustix::io::FdFlags::CLOEXEC)
    }

    fn fd_is_open(raw: i32) -> bool {
        std::path::Path::new(&format!("/proc/self/fd/{raw}")).exists()
    }

    #[test]
    fn one_descriptor_round_trip_is_cloexec_and_same_file() {
        let (a, b) = seqpacket_pair().unwrap();
        let (mut s1, s2) = UnixStream::pair().unwrap();
        send_with_fds(a.as_fd(), b"hello", &[s2.as_fd()]).unwrap();
        drop(s2);
        let mut buf = [0u8; 64];
        let got = recv_with_fds(&b, &mut buf, 1).unwrap();
        assert_eq!(&buf[..got.len], b"hello");
        assert_eq!(got.fds.len(), 1);
        assert!(is_cloexec(&got.fds[0]));
        // The received descriptor is the same socket: bytes written into it arrive.
        let mut peer = UnixStream::from(got.fds.into_iter().next().unwrap());
        peer.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s1.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
    }

    #[test]
    fn many_descriptors_up_to_the_kernel_limit() {
        let (a, b) = seqpacket_pair().unwrap();
        let pipes: Vec<_> = (0..MAX_FDS_PER_MSG).map(|_| pipe_pair()).collect();
        let fds: Vec<_> = pipes.iter().map(|(r, _)| r.as_fd()).collect();
        send_with_fds(a.as_fd(), b"m", &fds).unwrap();
        let mut buf = [0u8; 8];
        let got = recv_with_fds(&b, &mut buf, MAX_FDS_PER_MSG).unwrap();
        assert_eq!(got.fds.len(), MAX_FDS_PER_MSG);
        assert!(got.fds.iter().all(is_cloexec));
        let too_many: Vec<_> = pipes.iter().map(|(r, _)| r.as_fd()).chain([a.as_fd()]).collect();
        let err = send_with_fds(a.as_fd(), b"m", &too_many).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// Sends the write ends of fresh pipes and drops our copies; returns the read
    /// ends, non-blocking. A read end reads EOF only once every copy of its write end,
    /// including any the receiver leaked, is closed.
    fn send_write_ends(a: &OwnedFd, n: usize, payload: &[u8]) -> Vec<OwnedFd> {
        let pipes: Vec<_> = (0..n).map(|_| pipe_pair()).collect();
        let ends: Vec<_> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
        send_with_fds(a.as_fd(), payload, &ends).unwrap();
        pipes
            .into_iter()
            .map(|(r, _w)| {
                rustix::io::ioctl_fionbio(&r, true).unwrap();
                r
            })
            .collect()
    }

    fn assert_all_closed(read_ends: &[OwnedFd]) {
        for r in read_ends {
            let mut b = [0u8; 1];
            assert_eq!(rustix::io::read(r, &mut b), Ok(0), "a received descriptor was leaked (its pipe is still open)");
        }
    }

    #[test]
    fn truncated_control_message_is_an_error_and_closes_what_arrived() {
        let (a, b) = seqpacket_pair().unwrap();
        let read_ends = send_write_ends(&a, 3, b"m");
        let mut buf = [0u8; 8];
        let err = recv_with_fds(&b, &mut buf, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("MSG_CTRUNC"), "{err}");
        // Typed: the payload came whole, so the caller knows which frame it was.
        let t = Truncated::of(&err).expect("a Truncated inside");
        assert_eq!((t.len, t.room), (1, 1));
        assert!((1..=3).contains(&t.arrived), "{t:?}");
        assert_eq!(&buf[..t.len], b"m");
        assert_all_closed(&read_ends);
        // The error is that message's only: the next one arrives as usual.
        send_with_fds(a.as_fd(), b"next", &[]).unwrap();
        let got = recv_with_fds(&b, &mut buf, 1).unwrap();
        assert_eq!(&buf[..got.len], b"next");
    }

    #[test]
    fn descriptors_to_a_receiver_expecting_none_are_closed() {
        let (a, b) = seqpacket_pair().unwrap();
        let read_ends = send_write_ends(&a, 1, b"m");
        let mut buf = [0u8; 8];
        assert!(recv_with_fds(&b, &mut buf, 0).is_err());
        assert_all_closed(&read_ends);
    }

    #[test]
    fn truncated_payload_is_an_error_and_closes_what_arrived() {
        let (a, b) = seqpacket_pair().unwrap();
        let read_ends = send_write_ends(&a, 2, &[7u8; 100]);
        let mut buf = [0u8; 10];
        let err = recv_with_fds(&b, &mut buf, 2).unwrap_err();
        assert!(err.to_string().contains("MSG_TRUNC"), "{err}");
        assert_all_closed(&read_ends);
    }

    #[test]
    fn would_block_surfaces_on_empty_and_on_full() {
        let (a, b) = seqpacket_pair().unwrap();
        let mut buf = [0u8; 8];
        let err = recv_with_fds(&b, &mut buf, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let p = pipe_pair();
        let mut sent = 0;
        let err = loop {
            match send_with_fds(a.as_fd(), &[0u8; 512], &[p.0.as_fd()]) {
                Ok(_) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 1_000_000, "the channel never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(sent > 0);
        // The failed send transferred nothing: we still hold our descriptor.
        assert!(fd_is_open(p.0.as_raw_fd()));
    }

    #[test]
    fn peer_closed_is_eof_for_receiver_and_epipe_for_sender() {
        let (a, b) = seqpacket_pair().unwrap();
        drop(a);
        let mut buf = [0u8; 8];
        let got = recv_with_fds(&b, &mut buf, 1).unwrap();
        assert_eq!(got.len, 0);
        assert!(got.fds.is_empty());
        let p = pipe_pair();
        let err = send_with_fds(b.as_fd(), b"x", &[p.0.as_fd()]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::PIPE.raw_os_error()));
    }

    #[test]
    fn message_without_descriptors() {
        let (a, b) = seqpacket_pair().unwrap();
        send_with_fds(a.as_fd(), b"plain", &[]).unwrap();
        let mut buf = [0u8; 8];
        let got = recv_with_fds(&b, &mut buf, 4).unwrap();
        assert_eq!((got.len, got.fds.len()), (5, 0));
    }
}
