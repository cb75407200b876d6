//! The built-in HTTP/1.1 worker (hyper): what `handoff run` serves when no command is
//! given, and the server code every `handoff bench` model runs.
//!
//! Every response carries `X-Handoff-Worker: <slot id>`, so a client can tell which
//! worker served it. Query parameters shape the load for tests and benchmarks:
//! `?cpu_ms=N` burns N ms of CPU before answering (capped at 10 s), `?sleep_ms=N`
//! waits N ms without holding the CPU, but only in test mode ([`HttpConfig::test_knobs`],
//! `handoff run --test-knobs`): anywhere else they would let any client stop a worker.
//! With a static root it serves files instead ([`super::static_files`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming as Body;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};

pub use super::static_files::ResponseBody;
use super::static_files::{self, Symlinks};
use super::tokio_incoming::{FirstLook, FirstLookFn};
use super::{AsyncIncoming, WorkerEnv, WorkerError};

/// Longest `cpu_ms` or `sleep_ms` honoured.
pub const MAX_DELAY_MS: u64 = 10_000;

/// What the built-in worker serves.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The worker's slot id (the `X-Handoff-Worker` value).
    pub worker_id: usize,
    /// Serve files from this directory instead of the short greeting.
    pub static_root: Option<PathBuf>,
    /// How long a client may take to send a whole request head (from the moment the
    /// worker has its connection, or from the end of the previous response on a
    /// keep-alive connection) before the connection is closed: [`HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// Which symlinks under `static_root` are followed (`--static-no-symlinks`: none).
    pub static_symlinks: Symlinks,
    /// Honour `?cpu_ms=` and `?sleep_ms=` (`--test-knobs`, and `handoff bench`'s own
    /// models); off by default.
    pub test_knobs: bool,
    /// A connection whose answer makes no progress this long is closed:
    /// [`SEND_TIMEOUT`].
    pub send_timeout: Duration,
    /// One line per request on standard output (`--access-log`); off by default.
    pub access_log: Option<super::access_log::AccessLog>,
    /// Answer plain requests for the greeting without hyper (one `recv` and one `send`
    /// each); on by default. `HANDOFF_QUICK_PATH=off` in the worker's environment turns it off
    /// (`HANDOFF_QUICK_PATH=off handoff bench`: every model serves with hyper only).
    pub quick_path: bool,
    /// The quick path's answer, made once (see [`HttpConfig::quick_answer`]).
    quick_answer: std::sync::OnceLock<Arc<Greeting>>,
    worker_header: HeaderValue,
    greeting: Bytes,
}

impl HttpConfig {
    /// A config for worker `worker_id`.
    pub fn new(worker_id: usize, static_root: Option<PathBuf>) -> HttpConfig {
        HttpConfig {
            worker_id,
            static_root,
            header_timeout: HEADER_TIMEOUT,
            static_symlinks: Symlinks::default(),
            test_knobs: false,
            access_log: None,
            quick_path: true,
            quick_answer: std::sync::OnceLock::new(),
            send_timeout: SEND_TIMEOUT,
            worker_header: HeaderValue::from(worker_id),
            greeting: Bytes::from(format!("hello from handoff worker {worker_id} (pid {})\n", std::process::id())),
        }
    }
}

impl HttpConfig {
    /// The quick path's answer for this config, made on first use.
    fn quick_answer(&self) -> Arc<Greeting> {
        self.quick_answer.get_or_init(|| Arc::new(Greeting::new(self))).clone()
    }

    /// Whether the quick path runs: it answers the greeting and logs nothing, so it is
    /// off with a static root or an access log.
    fn quick_path_on(&self) -> bool {
        self.quick_path && self.static_root.is_none() && self.access_log.is_none()
    }
}

/// What `HANDOFF_QUICK_PATH` in the environment says of [`HttpConfig::quick_path`]
/// (`off`: no quick path; anything else or nothing: on).
pub fn quick_path_from_env() -> bool {
    std::env::var(ENV_QUICK_PATH).map_or(true, |v| v != "off")
}

/// How long a client may take over a request head by default (hyper's own default):
/// a client that connects and says nothing holds a descriptor and a task that long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// `HttpConfig::header_timeout`, at most a year: hyper (and the waiting room) add it to
/// the time of day, which a larger value would overflow.
fn header_limit(cfg: &HttpConfig) -> Duration {
    cfg.header_timeout.min(Duration::from_secs(365 * 86_400))
}

/// Largest request head (request line and headers) the built-in worker reads: a
/// longer one is answered 431 and the connection closed. nginx's default allows about
/// 32 KB (a 1 KB buffer, then four of 8 KB), Node's 16 KB; hyper's own limit is its
/// ~400 KB buffer, which let a client that never finishes its head pin that much
/// memory per connection for the whole header timeout.
pub const MAX_REQUEST_HEAD: usize = 32 * 1024;

/// Most bytes hyper buffers for one connection, each way: read ahead of the request
/// being served, and queued for the client (a file chunk waits here for a slow
/// reader). hyper's default, ~400 KB, let a client that reads nothing pin that much
/// per connection; one [file chunk](static_files::CHUNK) is enough to keep a socket fed.
pub const MAX_CONN_BUFFER: usize = 64 * 1024;

pub use super::send_timeout::SEND_TIMEOUT;
pub use super::serve::FIRST_REQUEST_GRACE;
use super::serve::{serve_each, serve_hyper, Http1Opts, Plain};

/// Serves one connection with HTTP/1.1 keep-alive until the client or `stop` ends it.
///
/// On `stop` (drain), a request in progress is finished and the connection closed;
/// an idle keep-alive connection is closed at once; a connection that has not sent
/// its first request yet is given [`FIRST_REQUEST_GRACE`] for it, because its client
/// has just been handed to us and is surely sending one.
pub async fn serve_connection<I>(io: I, cfg: Arc<HttpConfig>, stop: tokio::sync::watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_from(io, cfg, stop, None).await
}

/// [`serve_connection`] for a client whose address is known: every response then
/// carries `X-Handoff-Client: <address>`. The built-in worker passes it for
/// connections from a `,proxy` listener: the real client's address from the PROXY
/// header (or the socket's peer for a header without addresses).
pub async fn serve_connection_from<I>(
    io: I,
    cfg: Arc<HttpConfig>,
    stop: tokio::sync::watch::Receiver<bool>,
    client: Option<std::net::SocketAddr>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let opts = opts(&cfg);
    serve_hyper(Plain(io), handler(cfg, client, None), opts, stop, None, false).await
}

/// Serves one TCP connection the caller accepted itself (no master, no hand-back) with
/// the built-in worker's serving code: its quick path while the requests are plain
/// requests for the greeting, hyper from the first that is not. `handoff bench`'s
/// kernel models serve with it, so that every model runs the same code.
pub async fn serve_accepted(s: std::net::TcpStream, cfg: Arc<HttpConfig>, stop: tokio::sync::watch::Receiver<bool>) {
    let mut seen = Vec::new();
    let mut s = s;
    if cfg.quick_path_on() {
        let Ok(afd) = crate::sys::async_fd(Arc::new(std::os::fd::OwnedFd::from(s))) else { return };
        let mut quick = Quick::new(cfg.quick_answer());
        let item = crate::wire::ConnItem { id: 0, listener: 0, sock: crate::wire::sock::TCP, flags: 0, addrs: None };
        let limit = header_limit(&cfg);
        let unsent = loop {
            let Ok(Ok(mut guard)) = tokio::time::timeout(limit, afd.readable()).await else {
                return; // out of time, or an error: closed
            };
            // The end of the stream, if it came with the request, is reported once.
            let hung_up = guard.ready().is_read_closed();
            match quick.look(&item, std::os::fd::AsFd::as_fd(&**guard.get_inner()), || None) {
                FirstLook::Wait => guard.clear_ready(),
                FirstLook::Answered if !hung_up => guard.clear_ready(),
                FirstLook::Answered | FirstLook::Finished => {
                    let _ = rustix::net::shutdown(&**guard.get_inner(), rustix::net::Shutdown::Write);
                    return;
                }
                FirstLook::Serve(bytes) => {
                    seen = bytes;
                    break None;
                }
                FirstLook::Unsent { rest, close } => break Some((rest, close)),
            }
        };
        // The runtime lets go of it; the one reference left is this one.
        let Ok(fd) = Arc::try_unwrap(afd.into_inner()) else { return };
        s = std::net::TcpStream::from(fd);
        if let Some((rest, close)) = unsent {
            let Ok(mut t) = s.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(s)) else { return };
            if super::serve::finish_answer(&mut t, &rest, close, cfg.send_timeout).await {
                serve_connection(t, cfg, stop).await;
            }
            return;
        }
    }
    let Ok(t) = s.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(s)) else { return };
    if seen.is_empty() {
        return serve_connection(t, cfg, stop).await;
    }
    // The bytes the look read go to hyper first.
    let (read, write) = t.into_split();
    let io = tokio::io::join(tokio::io::AsyncReadExt::chain(std::io::Cursor::new(seen), read), write);
    serve_connection(io, cfg, stop).await
}

/// How the built-in worker runs hyper: the greeting is a few dozen bytes, copied behind
/// the head it goes in one plain `send`, where hyper's default (a `writev` of head and
/// body) costs 6% more CPU per keep-alive request; a file's body is not worth copying.
fn opts(cfg: &HttpConfig) -> Http1Opts {
    Http1Opts {
        writev: cfg.static_root.is_some(),
        header_timeout: header_limit(cfg),
        send_timeout: cfg.send_timeout,
        ..Http1Opts::default()
    }
}

/// The built-in service's answer to one request, on its way.
type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Response<ResponseBody>> + Send>>;

/// The built-in service for one connection: [`handle`], with `X-Handoff-Client` for a
/// client whose address is known.
/// `logged`: the client an access log names, if there is one.
fn handler(
    cfg: Arc<HttpConfig>,
    client: Option<std::net::SocketAddr>,
    logged: Option<std::net::SocketAddr>,
) -> impl Fn(Request<Body>) -> Answer + Clone + Unpin + Send + Sync + 'static {
    let header = client.and_then(|c| HeaderValue::from_str(&c.to_string()).ok());
    let h = Handler { cfg, header, logged };
    move |req| h.call(req)
}

/// The built-in service for one connection (see [`handler`]).
#[derive(Clone)]
struct Handler {
    cfg: Arc<HttpConfig>,
    /// `X-Handoff-Client`, for a client whose address a PROXY header gave.
    header: Option<HeaderValue>,
    /// The client the access log names, when there is one.
    logged: Option<std::net::SocketAddr>,
}

impl Handler {
    fn call(&self, req: Request<Body>) -> Answer {
        let (cfg, header, logged) = (self.cfg.clone(), self.header.clone(), self.logged);
        Box::pin(async move {
            let Some(format) = cfg.access_log else {
                let mut resp = handle(req, &cfg).await;
                if let Some(c) = header {
                    resp.headers_mut().insert("x-handoff-client", c);
                }
                return resp;
            };
            let started = Instant::now();
            let (method, uri, version) = (req.method().clone(), req.uri().clone(), req.version());
            let text = |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(String::from);
            let (referer, agent) = (text(hyper::header::REFERER), text(hyper::header::USER_AGENT));
            let mut resp = handle(req, &cfg).await;
            if let Some(c) = header {
                resp.headers_mut().insert("x-handoff-client", c);
            }
            let entry = super::access_log::Entry {
                client: logged,
                method: &method,
                uri: &uri,
                version,
                status: resp.status().as_u16(),
                bytes: hyper::body::Body::size_hint(resp.body()).exact(),
                referer: referer.as_deref(),
                user_agent: agent.as_deref(),
                worker: cfg.worker_id,
                took: started.elapsed(),
            };
            super::access_log::write(&entry.format(format, std::time::SystemTime::now()));
            resp
        })
    }
}

fn query_ms(req: &Request<Body>, key: &str) -> Option<u64> {
    query_ms_in(req.uri().query(), key)
}

fn query_ms_in(query: Option<&str>, key: &str) -> Option<u64> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse::<u64>().ok()).flatten().map(|ms| ms.min(MAX_DELAY_MS))
    })
}

/// Burns CPU for `ms` milliseconds (a busy loop the optimiser cannot remove).
pub fn burn_cpu(ms: u64) {
    let until = Instant::now() + Duration::from_millis(ms);
    let mut x = 0u64;
    while Instant::now() < until {
        for i in 0..1000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
}

/// Answers one request.
pub async fn handle(req: Request<Body>, cfg: &HttpConfig) -> Response<ResponseBody> {
    // Anyone could stop a worker with these: only in an explicit test mode.
    if cfg.test_knobs {
        if let Some(ms) = query_ms(&req, "sleep_ms") {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(ms) = query_ms(&req, "cpu_ms") {
            burn_cpu(ms);
        }
    }
    let mut resp = match &cfg.static_root {
        Some(root) => static_files::serve(&req, root, cfg.static_symlinks).await,
        None => Response::new(Either::Left(Full::new(cfg.greeting.clone()))),
    };
    resp.headers_mut().insert("x-handoff-worker", cfg.worker_header.clone());
    resp
}

/// `HANDOFF_QUICK_PATH=off`: the built-in worker answers every request with hyper
/// ([`HttpConfig::quick_path`]).
pub const ENV_QUICK_PATH: &str = "HANDOFF_QUICK_PATH";

/// Runs the built-in worker on the channel from the environment until the master
/// sends DRAIN (then it finishes its connections) or goes away (then it gives them at
/// most one second). This is `handoff`'s hidden `worker` subcommand.
pub fn run_from_env(
    static_root: Option<PathBuf>,
    static_symlinks: Symlinks,
    test_knobs: bool,
) -> Result<(), WorkerError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let env = WorkerEnv::from_env();
        let mut cfg = HttpConfig::new(env.id, static_root);
        cfg.static_symlinks = static_symlinks;
        cfg.test_knobs = test_knobs;
        cfg.access_log = super::access_log::AccessLog::from_env();
        cfg.quick_path = quick_path_from_env();
        let cfg = Arc::new(cfg);
        serve_incoming(AsyncIncoming::from_env()?, cfg).await
    })
}

/// Serves every connection `incoming` hands out with the built-in service, as
/// `handoff run` does without a command, until the master asks for a drain (then waits
/// for the connections in progress) or goes away (then waits a second at most).
pub async fn serve_incoming(mut incoming: AsyncIncoming, cfg: Arc<HttpConfig>) -> Result<(), WorkerError> {
    if cfg.quick_path_on() {
        let mut quick = Quick::new(cfg.quick_answer());
        let look = move |item: &crate::wire::ConnItem, s: &super::Stream| {
            quick.look(item, std::os::fd::AsFd::as_fd(s), || s.peer_addr())
        };
        incoming.set_first_look(FirstLookFn(Box::new(look)), header_limit(&cfg));
    }
    let opts = opts(&cfg);
    serve_each(incoming, opts, move |conn| {
        // Only connections that came through a balancer carry the header: a direct
        // client knows its own address, and asking the socket would cost a getpeername
        // per connection (paid only for an access log).
        let client = conn.proxy_header().and_then(|_| conn.client_addr());
        let logged = cfg.access_log.and_then(|_| conn.client_addr());
        handler(cfg.clone(), client, logged)
    })
    .await
}

/// Sends what it can of a connection's last bytes without waiting, held back (with
/// `MSG_MORE`) for the FIN that the caller's `shutdown` sends right after: the answer
/// and the FIN then leave in one segment instead of two, which spares the client a
/// wake-up and both sides a packet each way (on loopback, a fifth of the built-in
/// worker's CPU per connection-per-request). A fresh socket's send buffer is empty,
/// so a short answer goes whole.
fn send_before_fin(fd: impl std::os::fd::AsFd, bytes: &[u8]) -> rustix::io::Result<usize> {
    crate::sys::socket::send_nowait(fd.as_fd(), bytes, true)
}

/// The quick path: a connection whose whole request is already in the socket when the
/// worker looks at it, and asks for the greeting, is answered with one `recv` and one
/// `send`, before the stream is registered with the runtime: no task, no `epoll_ctl`, no
/// `FIONBIO`, no hyper. With `Connection: close` (connection-per-request clients such
/// as load balancers' checks and benchmarks), its DONE shares one frame with the others
/// of its batch and the FIN follows the answer in one segment. Kept alive, it waits in
/// the worker's waiting room (`worker::waiting`) for its next request, which is looked
/// at the same way: keep-alive clients that ask for the greeting never reach hyper, and
/// the connection stays at a request boundary between requests, where the stall rescue
/// and the hand-back rules take it as they take hyper's. One from a balancer (PROXY
/// header) gets its `X-Handoff-Client` as from hyper. Anything else (a partial request,
/// pipelined requests, HTTP/1.0, a body, a query hyper must act on, a static root) goes
/// to hyper with the bytes already read, so the answer is the same either way. A
/// connection with nothing to read yet waits in the room too (still without a task or
/// `FIONBIO`) and gets a second look once it has something.
struct Quick {
    greeting: Arc<Greeting>,
    buf: Vec<u8>,
    out: Vec<u8>,
}

/// The quick path's answer: hyper's, byte for byte (the same headers in the same
/// order; `tests/worker_reports.rs` compares the two).
#[derive(Debug)]
struct Greeting {
    /// The answer: `first + [x-handoff-client line] + head + date + tail`.
    first: Vec<u8>,
    /// With `connection: close`.
    head: Vec<u8>,
    /// For a keep-alive connection: hyper says nothing of it for HTTP/1.1.
    head_kept: Vec<u8>,
    tail: Vec<u8>,
    /// The date and the second it is for (hyper's `date` header has one-second
    /// resolution too). Behind a lock only because tasks must be `Send`: the built-in
    /// worker has one thread, so it is never contended.
    date: std::sync::Mutex<(u64, String)>,
}

impl Greeting {
    fn new(cfg: &HttpConfig) -> Greeting {
        let first = format!("HTTP/1.1 200 OK\r\nx-handoff-worker: {}\r\n", cfg.worker_id);
        let head_kept = format!("content-length: {}\r\ndate: ", cfg.greeting.len());
        let head = format!("connection: close\r\n{head_kept}");
        let mut tail = b"\r\n\r\n".to_vec();
        tail.extend_from_slice(&cfg.greeting);
        Greeting {
            first: first.into_bytes(),
            head: head.into_bytes(),
            head_kept: head_kept.into_bytes(),
            tail,
            date: std::sync::Mutex::new((u64::MAX, String::new())),
        }
    }

    /// Writes the whole answer to `asked` (only its head for `HEAD`) into `out`, with
    /// `X-Handoff-Client` for a connection that came through a balancer.
    fn answer(&self, asked: Asked, client: Option<std::net::SocketAddr>, out: &mut Vec<u8>) {
        let head_only = asked.head_only;
        let head = if asked.close { &self.head } else { &self.head_kept };
        use std::io::Write;
        let now = std::time::SystemTime::now();
        let secs = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let tail = if head_only { &self.tail[..4] } else { &self.tail[..] };
        out.clear();
        out.reserve(self.first.len() + 64 + self.head.len() + 29 + tail.len());
        out.extend_from_slice(&self.first);
        if let Some(c) = client {
            // Where hyper puts it: after the worker's header (inserted before it).
            let _ = write!(out, "x-handoff-client: {c}\r\n");
        }
        out.extend_from_slice(head);
        {
            let mut date = self.date.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if date.0 != secs {
                *date = (secs, httpdate::fmt_http_date(now));
            }
            out.extend_from_slice(date.1.as_bytes());
        }
        out.extend_from_slice(tail);
    }
}

/// Largest request the quick path reads in its one `recv`.
const QUICK_READ: usize = 4096;

impl Quick {
    fn new(greeting: Arc<Greeting>) -> Quick {
        Quick { greeting, buf: vec![0; QUICK_READ], out: Vec::new() }
    }

    /// Looks at connection `s` (`peer`: its peer's address, asked only for a
    /// connection from a balancer whose PROXY header named no client).
    fn look(
        &mut self,
        item: &crate::wire::ConnItem,
        s: std::os::fd::BorrowedFd<'_>,
        peer: impl FnOnce() -> Option<std::net::SocketAddr>,
    ) -> FirstLook {
        use rustix::io::Errno;
        // From a balancer: the client it names, or for a header without addresses (a
        // health check) the socket's peer, as hyper's path reports.
        let client = item.addrs.and_then(|a| a.source.or_else(peer));
        let n = match crate::sys::socket::recv_nowait(s, &mut self.buf[..]) {
            Ok(0) => return FirstLook::Finished, // the client closed without a request
            Ok(n) => n,
            Err(Errno::AGAIN) => return FirstLook::Wait,
            Err(_) => return FirstLook::Finished, // reset: nobody to answer
        };
        let seen = &self.buf[..n];
        // A full buffer may have left bytes in the socket, which an edge-triggered
        // wait in the room would not report again: hyper reads on.
        let asked = if n < self.buf.len() { quick_request(seen) } else { None };
        let Some(asked) = asked else {
            return FirstLook::Serve(seen.to_vec());
        };
        self.greeting.answer(asked, client, &mut self.out);
        if asked.close {
            // The FIN follows when the batch is done. A fresh socket takes a short answer
            // whole; if the kernel is short of memory and takes nothing, hyper answers
            // instead, later.
            return match send_before_fin(s, &self.out) {
                Err(Errno::AGAIN) => FirstLook::Serve(seen.to_vec()),
                // Part of it, on a kept connection whose client reads slowly.
                Ok(sent) if sent < self.out.len() => FirstLook::Unsent { rest: self.out[sent..].to_vec(), close: true },
                _ => FirstLook::Finished, // sent, or the client is gone: nothing to wait for
            };
        }
        // Kept alive: a client that does not read its answers fills the socket's send
        // buffer in the end; then hyper (nothing taken) or a task (part) writes on.
        match crate::sys::socket::send_nowait(s, &self.out, false) {
            Ok(sent) if sent == self.out.len() => FirstLook::Answered,
            Ok(sent) => FirstLook::Unsent { rest: self.out[sent..].to_vec(), close: false },
            Err(Errno::AGAIN) => FirstLook::Serve(seen.to_vec()),
            Err(_) => FirstLook::Finished, // the client is gone
        }
    }
}

/// What a request the quick path answers asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Asked {
    /// `HEAD`: the answer without its body.
    head_only: bool,
    /// `Connection: close`: the connection ends after the answer.
    close: bool,
}

/// Whether `bytes` is exactly one complete request the quick path answers: `GET` or
/// `HEAD` of a path without `cpu_ms` or `sleep_ms`, HTTP/1.1, no body and nothing after
/// it; and what it asks for.
fn quick_request(bytes: &[u8]) -> Option<Asked> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) if len == bytes.len() => {}
        _ => return None,
    }
    let head_only = match req.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    if req.version? != 1 {
        return None;
    }
    // A target hyper would refuse (400) is hyper's to answer.
    let uri: hyper::Uri = req.path?.parse().ok()?;
    if query_ms_in(uri.query(), "cpu_ms").is_some() || query_ms_in(uri.query(), "sleep_ms").is_some() {
        return None;
    }
    let mut close = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            // hyper reads a header value only if it is visible ASCII (or tabs).
            if !h.value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
                return None;
            }
            let v = std::str::from_utf8(h.value).ok()?;
            close |= v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if h.value != b"0" {
                return None;
            }
        } else if ["transfer-encoding", "expect", "upgrade"].iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            return None;
        }
    }
    Some(Asked { head_only, close })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// hyper's answer to `request` on an in-memory stream, without its date line, and
    /// whether hyper then closed the connection (`false`: it answered a second request
    /// on it).
    fn hyper_answer(cfg: &Arc<HttpConfig>, request: &[u8], head_only: bool) -> (String, bool) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let (_stop_tx, stop) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(serve_connection(server, cfg.clone(), stop));
            client.write_all(request).await.unwrap();
            // The whole answer: its head, then the body its content-length announces.
            let mut out = Vec::new();
            let whole = |out: &[u8]| {
                let end = out.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                let head = std::str::from_utf8(&out[..end]).ok()?;
                let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length: "))?.trim().parse().ok()?;
                Some(end + if head_only { 0 } else { len })
            };
            let read = async {
                let mut chunk = [0u8; 4096];
                while whole(&out).is_none_or(|n| out.len() < n) {
                    match client.read(&mut chunk).await.unwrap() {
                        0 => break,
                        n => out.extend_from_slice(&chunk[..n]),
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(5), read).await.expect("no whole answer within 5 s");
            let answer = without_date(&out);
            // Closed, or still serving: a second request is answered.
            let _ = client.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
            let mut rest = Vec::new();
            let ended = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
            task.abort();
            assert!(ended.is_ok(), "neither closed nor answered a second request");
            (answer, !String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200 OK"))
        })
    }

    fn without_date(answer: &[u8]) -> String {
        String::from_utf8_lossy(answer)
            .split("\r\n")
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    /// Requests built from the parts that decide between the quick path and hyper.
    fn request() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "HEAD", "POST", "get"]);
        let target = prop::sample::select(vec!["/", "/x?a=1", "/?cpu_ms=0", "/?sleep_ms=0", "*", "?a", "http://h/p"]);
        let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]);
        let connection = prop::sample::select(vec![
            None,
            Some("close"),
            Some("Close"),
            Some("keep-alive, close"),
            Some("keep-alive"),
            Some("closed"),
            Some("close, \u{e9}"),
        ]);
        let extra = prop::sample::select(vec![
            "",
            "Content-Length: 0\r\n",
            "Content-Length: 3\r\n",
            "Expect: 100-continue\r\n",
        ]);
        let tail = prop::sample::select(vec!["", "abc", "GET / HTTP/1.1\r\n\r\n"]);
        (method, target, version, connection, extra, tail).prop_map(|(m, t, v, c, e, tail)| {
            let c = c.map(|c| format!("Connection: {c}\r\n")).unwrap_or_default();
            format!("{m} {t} {v}\r\nHost: h\r\n{c}{e}\r\n{tail}").into_bytes()
        })
    }

    /// A connection accepted by the caller (the kernel models of `handoff bench`):
    /// kept-alive greetings by the quick path, then a request it declines, served by
    /// hyper with the bytes the look read, then the end; the same answers either way.
    #[test]
    fn an_accepted_connection_is_served_by_the_quick_path_then_hyper() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (s, _) = listener.accept().unwrap();
        let mut cfg = HttpConfig::new(4, None);
        cfg.test_knobs = true;
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (_stop_tx, stop) = tokio::sync::watch::channel(false);
            rt.block_on(serve_accepted(s, Arc::new(cfg), stop));
        });
        let mut answers = Vec::new();
        for path in ["/a", "/b", "/?sleep_ms=0", "/c"] {
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while !got.ends_with(b"\r\n\r\n") {
                assert_eq!(c.read(&mut byte).unwrap(), 1, "{path}: ended in the head");
                got.push(byte[0]);
            }
            // The greeting's length depends on the pid's digits.
            let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
            let len: usize = head
                .split("content-length: ")
                .nth(1)
                .and_then(|v| v.split("\r\n").next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{path}: no content-length in {head:?}"));
            let mut body = vec![0u8; len];
            c.read_exact(&mut body).unwrap();
            got.extend_from_slice(&body);
            answers.push(without_date(&got));
        }
        assert!(answers[0].starts_with("HTTP/1.1 200 OK\r\nx-handoff-worker: 4\r\n"), "{answers:?}");
        assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.starts_with(b"HTTP/1.1 200 OK"), "{:?}", String::from_utf8_lossy(&rest));
        server.join().unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the quick path answers, hyper answers the same way (but for the
        /// date), and closes the connection after it exactly when the quick path does.
        #[test]
        fn the_quick_path_answers_only_what_hyper_answers_the_same_way(req in request()) {
            if let Some(asked) = quick_request(&req) {
                let cfg = Arc::new(HttpConfig::new(3, None));
                let mut quick = Vec::new();
                Greeting::new(&cfg).answer(asked, None, &mut quick);
                let (hyper, closed) = hyper_answer(&cfg, &req, asked.head_only);
                prop_assert_eq!(without_date(&quick), hyper, "request {:?}", String::from_utf8_lossy(&req));
                prop_assert_eq!(closed, asked.close, "request {:?}", String::from_utf8_lossy(&req));
            }
        }
    }
}
