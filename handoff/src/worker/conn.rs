//! One connection handed to this worker, and the DONE report that goes with it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Reporter;

/// A client connection: the stream, the master's id for it, and the listener it came
/// from.
///
/// When a `Conn` is shut down for writing (async) or dropped, it reports DONE to the
/// master *before* the socket is closed, so that the master's count of this worker's
/// active connections is already correct when the client sees the connection end.
#[derive(Debug)]
pub struct Conn<S> {
    stream: S,
    id: u64,
    listener: u16,
    addrs: Option<crate::proxy::ProxyHeader>,
    /// Until DONE is sent (or queued, see `done_queued`).
    reporter: Option<Arc<Reporter>>,
    /// The ACK is queued in the reporter, not yet sent: send it before the stream is
    /// first touched (async connections only). Atomic so that `get_ref(&self)` can
    /// send it too, and `Conn` stays `Sync`.
    ack_queued: AtomicBool,
    /// Async connections let DONE wait for the end of the scheduler pass.
    coalesce: bool,
    /// DONE is queued as this number (see [`Reporter::done_later`]), not yet known sent.
    done_queued: Option<u64>,
    /// Bytes already read from the stream by a first look (the built-in worker's quick
    /// path), served again before the stream's own.
    replay: Option<(Vec<u8>, usize)>,
    /// When its first request head must be complete, for a connection that has spent
    /// part of that time waiting for its first bytes (the built-in worker's waiting
    /// room): the server gets only what is left.
    head_deadline: Option<std::time::Instant>,
    /// On the stall rescue's shelf (see [`super::stall`]): the serving code claims it
    /// before every read and write, and leaves the shelf before the descriptor closes.
    spot: Option<Arc<super::stall::Spot>>,
    /// Answered already by the built-in worker's quick path, which kept it alive: it
    /// comes to the server between requests.
    between_requests: bool,
    /// The end of that answer, which the socket did not take at once: the server
    /// writes it before anything else (and then ends the connection, with `true`:
    /// the client asked for `Connection: close`).
    unsent: Option<(Vec<u8>, bool)>,
}

impl<S> Conn<S> {
    pub(crate) fn new(stream: S, item: crate::wire::ConnItem, reporter: Arc<Reporter>) -> Conn<S> {
        Conn {
            stream,
            id: item.id,
            listener: item.listener,
            addrs: item.addrs,
            reporter: Some(reporter),
            ack_queued: AtomicBool::new(false),
            coalesce: false,
            done_queued: None,
            replay: None,
            head_deadline: None,
            spot: None,
            between_requests: false,
            unsent: None,
        }
    }

    /// Marks a connection the quick path answered and kept alive (see
    /// `between_requests`), with what the socket did not take of that answer.
    pub(crate) fn between_requests(mut self, unsent: Option<(Vec<u8>, bool)>) -> Conn<S> {
        self.between_requests = true;
        self.unsent = unsent.filter(|(u, _)| !u.is_empty());
        self
    }

    /// Whether it comes to the server between requests (see [`Conn::between_requests`]).
    pub(crate) fn is_between_requests(&self) -> bool {
        self.between_requests
    }

    /// The end of the last answer, for the server to write first, and whether the
    /// connection ends after it.
    pub(crate) fn take_unsent(&mut self) -> Option<(Vec<u8>, bool)> {
        self.unsent.take()
    }

    /// Makes `bytes`, already read from the stream, the first ones read from this
    /// connection.
    pub(crate) fn replay(mut self, bytes: Vec<u8>) -> Conn<S> {
        if !bytes.is_empty() {
            // No longer at a boundary: the stall rescue must not take it now.
            if let Some(s) = &self.spot {
                // Bytes just read from it are put back: it was claimed for that read.
                let claimed = s.claim();
                debug_assert!(claimed, "bytes put back into a connection the stall rescue took");
            }
            self.replay = Some((bytes, 0));
        }
        self
    }

    /// Sets when the first request head must be complete (see `head_deadline`).
    pub(crate) fn with_head_deadline(mut self, deadline: Option<std::time::Instant>) -> Conn<S> {
        self.head_deadline = deadline;
        self
    }

    /// When the first request head must be complete, if the connection has spent part
    /// of the time for it waiting.
    pub(crate) fn head_deadline(&self) -> Option<std::time::Instant> {
        self.head_deadline
    }

    /// Hands the replayed bytes left to `put`, which copies what fits and says how
    /// many; `None` once there are none left.
    fn replay_into(&mut self, put: impl FnOnce(&[u8]) -> usize) -> Option<usize> {
        let (bytes, at) = self.replay.as_mut()?;
        let n = put(&bytes[*at..]);
        *at += n;
        if *at == bytes.len() {
            self.replay = None;
        }
        Some(n)
    }

    /// A connection whose ACK is queued in `reporter` (by [`Reporter::ack_later`]) and
    /// whose DONE may be coalesced with others of the same pass.
    pub(crate) fn new_coalescing(stream: S, item: crate::wire::ConnItem, reporter: Arc<Reporter>) -> Conn<S> {
        let mut conn = Conn::new(stream, item, reporter);
        conn.ack_queued = AtomicBool::new(true);
        conn.coalesce = true;
        conn
    }

    /// Sends the queued ACK before the stream is touched: if this worker died now, the
    /// master would hand the connection to another worker, which must find every byte
    /// the client sent still unread.
    fn before_io(&self) {
        if self.ack_queued.load(Ordering::Relaxed) && self.ack_queued.swap(false, Ordering::Relaxed) {
            if let Some(r) = &self.reporter {
                r.flush_acks();
            }
        }
    }

    /// The addresses from the PROXY protocol header, for connections from a `,proxy`
    /// listener: `source` is the real client, `destination` the address it connected
    /// to. `None` for other listeners (then the socket's own addresses are the real
    /// ones); both fields `None` for a header that carried no addresses (a balancer's
    /// health check).
    pub fn proxy_header(&self) -> Option<crate::proxy::ProxyHeader> {
        self.addrs
    }

    /// The master's id for this connection (unique for the master's lifetime).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Index of the listener that accepted it, in the master's `--listen` order.
    pub fn listener(&self) -> u16 {
        self.listener
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        self.before_io();
        &self.stream
    }

    /// The stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.before_io();
        &mut self.stream
    }

    /// Queues DONE to share a frame with the others of this scheduler pass, where the
    /// connection coalesces and has not reported yet: the caller then yields once
    /// before [`Conn::finish`] (which sends the frame if nobody has yet).
    fn queue_done(&mut self) -> bool {
        match (&self.reporter, self.done_queued) {
            (Some(r), None) if self.coalesce => {
                self.done_queued = Some(r.done_later(self.id));
                true
            }
            _ => false,
        }
    }

    /// The error for I/O on a connection the stall rescue handed back (`None`: still
    /// this worker's; claimed for the caller's I/O).
    fn gone(&self) -> Option<io::Error> {
        let claimed = self.spot.as_ref().is_none_or(|s| s.claim());
        (!claimed).then(|| io::Error::new(io::ErrorKind::BrokenPipe, "handed back to the master during a stall"))
    }

    /// Reports DONE now (idempotent). Called for you on drop and on async shutdown.
    pub fn finish(&mut self) {
        if self.spot.as_ref().is_some_and(|s| s.taken()) {
            // Handed back by the stall rescue: its RETURN stands for the DONE.
            self.reporter = None;
        }
        if let Some(r) = self.reporter.take() {
            match self.done_queued {
                Some(mark) => r.done_sent(mark),
                None => r.done(self.id),
            }
        }
    }
}

/// Why [`Conn::hand_back`] did not hand a connection back; the connection comes back
/// unchanged, still this worker's to serve.
#[derive(Debug)]
pub struct HandBackError<S> {
    /// The connection, still open and still this worker's.
    pub conn: Box<Conn<S>>,
    /// Why.
    pub error: io::Error,
}

impl<S> std::fmt::Display for HandBackError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection {} not handed back: {}", self.conn.id, self.error)
    }
}

impl<S: std::fmt::Debug> std::error::Error for HandBackError<S> {}

/// A stream a connection can be handed back from: the crate's [`Stream`] (blocking)
/// and [`TokioStream`] (non-blocking). Sealed.
pub trait Returnable: std::os::fd::AsFd + sealed::Sealed {
    /// Whether the socket is in non-blocking mode here (it goes back blocking).
    #[doc(hidden)]
    const NONBLOCKING: bool;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Stream {}
    impl Sealed for super::TokioStream {}
}

impl Returnable for Stream {
    const NONBLOCKING: bool = false;
}

impl Returnable for TokioStream {
    const NONBLOCKING: bool = true;
}

impl<S: Returnable> Conn<S> {
    /// The mode the master asked for hand-backs in (`HANDOFF_RETURN`), if this
    /// connection is still this worker's.
    pub(crate) fn hand_back_mode(&self) -> Option<crate::wire::HandBack> {
        self.reporter.as_ref().map(|r| r.hand_back)
    }

    /// Whether a connection idle at a request boundary should go back to the master
    /// now, by the mode the master asked for (see `HANDOFF_RETURN` in docs/PROTOCOL.md): `always`, or
    /// `auto` while this worker is slow. Always false if the master said `off`.
    pub fn hand_back_wanted(&self) -> bool {
        self.reporter.as_ref().is_some_and(|r| super::hand_back::wanted(r.hand_back))
    }

    /// Hands this connection back to the master (a RETURN frame), which holds it until
    /// its client sends the next request and then gives it to whichever worker should
    /// serve that one. Call it only at a request boundary: every response completely
    /// written, and nothing of the next request read (peeking is fine). On success the
    /// connection is the master's: this `Conn` is consumed (no DONE is sent; the
    /// RETURN counts as one) and the worker's copy of the socket closed.
    ///
    /// On an error nothing was handed back and the connection is yours again, unchanged:
    /// the master said `HANDOFF_RETURN=off`, bytes read ahead by this crate are still
    /// unread by you, or the channel is momentarily full. Serve it on, or close it.
    ///
    /// A tokio stream is put back in blocking mode first, as the protocol hands sockets
    /// over (and made non-blocking again if it stays).
    pub fn hand_back(mut self) -> Result<(), HandBackError<S>> {
        let nonblocking = S::NONBLOCKING;
        let refuse = |conn, kind: io::ErrorKind, why: &str| {
            Err(HandBackError { conn: Box::new(conn), error: io::Error::new(kind, why) })
        };
        if self.reporter.as_ref().is_some_and(|r| r.hand_back == crate::wire::HandBack::Off) {
            return refuse(self, io::ErrorKind::Unsupported, "the master asked for no hand-back (HANDOFF_RETURN=off)");
        }
        if self.replay.is_some() {
            return refuse(self, io::ErrorKind::InvalidInput, "bytes already read from it are still unread");
        }
        if self.unsent.is_some() {
            return refuse(self, io::ErrorKind::InvalidInput, "the end of its last answer is still unsent");
        }
        if self.gone().is_some() {
            // The stall rescue handed it back already.
            self.reporter = None;
            return Ok(());
        }
        let Some(reporter) = self.reporter.clone().filter(|_| self.done_queued.is_none()) else {
            return refuse(self, io::ErrorKind::NotConnected, "it is already finished");
        };
        self.before_io();
        let fd = self.stream.as_fd();
        if nonblocking {
            if let Err(e) = rustix::io::ioctl_fionbio(fd, false) {
                return Err(HandBackError { conn: Box::new(self), error: e.into() });
            }
        }
        match reporter.give_back(self.id, fd) {
            Ok(()) => {
                // The RETURN stands for the DONE: dropping `self` sends none, and
                // closes only this worker's copy of the socket (no FIN).
                self.reporter = None;
                super::hand_back::HANDED_BACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                if nonblocking {
                    let _ = rustix::io::ioctl_fionbio(self.stream.as_fd(), true);
                }
                Err(HandBackError { conn: Box::new(self), error })
            }
        }
    }
}

impl Conn<Stream> {
    /// The client's address: from the PROXY header if there was one, else the peer.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.addrs.and_then(|a| a.source).or_else(|| self.stream.peer_addr())
    }
}

impl Conn<TokioStream> {
    /// The client's address: from the PROXY header if there was one, else the peer.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.addrs.and_then(|a| a.source).or_else(|| self.stream.peer_addr())
    }

    /// Puts it on the stall rescue's shelf, if the rescue may run here and the master
    /// takes connections back (see [`super::stall`]); its state for the I/O wrapper
    /// that finds request boundaries.
    pub(crate) fn shelve(&mut self) -> Option<Arc<super::stall::Spot>> {
        use std::os::fd::AsFd;
        // Bytes to replay are fine: the I/O wrapper finds a boundary only once they
        // are read.
        if self.spot.is_none() {
            let r = self.reporter.as_ref().filter(|r| r.hand_back != crate::wire::HandBack::Off)?;
            self.spot = super::stall::shelve(self.id, self.stream.as_fd(), true, r);
        }
        self.spot.clone()
    }
}

impl<S> Drop for Conn<S> {
    fn drop(&mut self) {
        // Off the shelf before the descriptor closes (the rescue may be borrowing it);
        // after this, whether the rescue took it is final.
        if self.spot.is_some() {
            super::stall::unshelve(self.id);
        }
        // Runs before `stream` is dropped: DONE reaches the master before the close.
        self.finish();
    }
}

/// A connection as a std stream: TCP (IPv4 or IPv6) or Unix.
#[derive(Debug)]
pub enum Stream {
    /// From a TCP listener.
    Tcp(TcpStream),
    /// From a Unix stream listener.
    Unix(UnixStream),
}

impl Stream {
    /// Wraps a received socket after looking at its address family.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Stream> {
        Stream::from_fd_hint(fd, crate::wire::sock::UNKNOWN)
    }

    /// Wraps a received socket of the kind the master said (a [`crate::wire::sock`]
    /// value), looking at its address family only if it did not say.
    pub(crate) fn from_fd_hint(fd: OwnedFd, sock: u8) -> io::Result<Stream> {
        match sock {
            crate::wire::sock::TCP => return Ok(Stream::Tcp(TcpStream::from(fd))),
            crate::wire::sock::UNIX => return Ok(Stream::Unix(UnixStream::from(fd))),
            _ => {}
        }
        let addr = rustix::net::getsockname(&fd)?;
        Ok(match addr.address_family() {
            rustix::net::AddressFamily::UNIX => Stream::Unix(UnixStream::from(fd)),
            _ => Stream::Tcp(TcpStream::from(fd)),
        })
    }

    /// The client's address, for TCP connections.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok(),
            Stream::Unix(_) => None,
        }
    }

    /// Converts into a tokio stream (sets the socket non-blocking; needs a runtime).
    pub fn into_tokio(self) -> io::Result<TokioStream> {
        Ok(match self {
            Stream::Tcp(s) => {
                s.set_nonblocking(true)?;
                TokioStream::Tcp(tokio::net::TcpStream::from_std(s)?)
            }
            Stream::Unix(s) => {
                s.set_nonblocking(true)?;
                TokioStream::Unix(tokio::net::UnixStream::from_std(s)?)
            }
        })
    }
}

impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Read> Read for Conn<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let copy = |b: &[u8]| {
            let n = b.len().min(buf.len());
            buf[..n].copy_from_slice(&b[..n]);
            n
        };
        if let Some(n) = self.replay_into(copy) {
            return Ok(n);
        }
        self.stream.read(buf)
    }
}

impl<S: Write> Write for Conn<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// A connection as a tokio stream: TCP or Unix.
#[derive(Debug)]
pub enum TokioStream {
    /// From a TCP listener.
    Tcp(tokio::net::TcpStream),
    /// From a Unix stream listener.
    Unix(tokio::net::UnixStream),
}

impl TokioStream {
    /// The client's address, for TCP connections.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            TokioStream::Tcp(s) => s.peer_addr().ok(),
            TokioStream::Unix(_) => None,
        }
    }

    /// Waits until the stream may be readable (see tokio's `TcpStream::readable`).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            TokioStream::Tcp(s) => s.readable().await,
            TokioStream::Unix(s) => s.readable().await,
        }
    }

    /// Reads what is there into `buf`'s spare capacity without waiting: `WouldBlock`
    /// if nothing is (see tokio's `TcpStream::try_read_buf`).
    pub fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            TokioStream::Tcp(s) => s.try_read_buf(buf),
            TokioStream::Unix(s) => s.try_read_buf(buf),
        }
    }
}

impl std::os::fd::AsFd for TokioStream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            TokioStream::Tcp(s) => s.as_fd(),
            TokioStream::Unix(s) => s.as_fd(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            TokioStream::Tcp($s) => $e,
            TokioStream::Unix($s) => $e,
        }
    };
}

impl AsyncRead for TokioStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for TokioStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.gone().is_some() {
            // Handed back by the stall rescue: the end, for this worker.
            return Poll::Ready(Ok(()));
        }
        this.before_io();
        let put = |b: &[u8]| {
            let n = b.len().min(buf.remaining());
            buf.put_slice(&b[..n]);
            n
        };
        if this.replay_into(put).is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(gone) = this.gone() {
            return Poll::Ready(Err(gone));
        }
        this.before_io();
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The server is ending the connection: tell the master before the client
        // sees the FIN, so a client that reconnects at once meets an exact count.
        let this = self.get_mut();
        if this.gone().is_some() {
            // Handed back by the stall rescue: no DONE, no FIN; the master has it.
            this.finish();
            return Poll::Ready(Ok(()));
        }
        if this.queue_done() {
            // Yield once: the connections that finish in this same pass queue theirs,
            // and the first of them polled again sends them all.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.finish();
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(gone) = this.gone() {
            return Poll::Ready(Err(gone));
        }
        this.before_io();
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
