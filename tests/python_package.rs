//! The Python package (`python/`, imported as `handoff_worker`) under `handoff run`:
//! its WSGI server with Flask and Django, its ASGI server with FastAPI and Django's ASGI
//! handler (fixtures in `tests/python_apps/`). Real apps from PyPI, real clients:
//! keep-alive, a chunked and a 2 MB `Expect: 100-continue` body reaching the app whole,
//! streamed responses, an app that raises, PROXY addresses, WebSockets, a graceful drain
//! with a request in flight, a hung request caught by the HEARTBEAT rule, and RETURN.
//!
//! The package is used from the working tree (`PYTHONPATH=python/src`), so the tests
//! test this tree; its dependencies (h11) and the apps' frameworks must be installed
//! (`.ci/run` does it): a missing one fails the test with the command that installs it.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use util::*;

const MODULES: &str = "h11, wsproto, flask, django, fastapi";

/// Fails with what to install unless python3 imports everything the tests need.
fn require_python() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", &format!("import {MODULES}")])
            .output()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "python3 cannot import {MODULES}: {}\ninstall them with: pip install ./python flask django fastapi",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Whether the master of this tree takes connections back (RETURN, frame 0x05): until
/// it does, a worker that sends RETURN is killed, so the workers here must not.
fn master_takes_return() -> bool {
    std::fs::read_to_string(root().join("docs/PROTOCOL.md")).is_ok_and(|d| d.contains("RETURN"))
}

/// `handoff run MASTER_ARGS -- python3 -m handoff_worker.SERVER --app-dir tests/python_apps
/// APP --worker-header WORKER_ARGS`, with `HANDOFF_RETURN` set to `ret` (or `off` while the
/// master cannot take connections back).
fn start(server: &str, app: &str, master: &[&str], worker: &[&str], ret: &str) -> Handoff {
    require_python();
    let module = format!("handoff_worker.{server}");
    let mut args = if master.contains(&"--listen") { vec![] } else { vec!["--listen", "127.0.0.1:0"] };
    args.extend_from_slice(master);
    args.extend_from_slice(&["--", "python3", "-m", &module, "--app-dir", "tests/python_apps", app, "--worker-header"]);
    args.extend_from_slice(worker);
    let ret = if master_takes_return() { ret } else { "off" };
    Handoff::start_with(&args, |cmd| {
        cmd.env("PYTHONPATH", root().join("python/src")).env("HANDOFF_RETURN", ret);
    })
}

// ---- an HTTP/1.1 client that keeps its connection (Content-Length and chunked) ----

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn worker(&self) -> usize {
        self.header("x-handoff-worker").and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("no worker: {self:?}"))
    }
}

struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        Conn(BufReader::new(s))
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.get_mut().write_all(bytes).expect("send");
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.0.read_line(&mut l).expect("read a line");
        assert!(l.ends_with("\r\n"), "the connection ended in the middle of a response: {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    /// A status line and headers (names lowercased).
    fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line();
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok());
        let status = status.unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                return (status, headers);
            }
            let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("bad header {l:?}"));
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }

    /// The next final response (after any 1xx), with its body.
    fn response(&mut self, head_request: bool) -> Resp {
        let (status, headers) = loop {
            let (status, headers) = self.head();
            if status >= 200 {
                break (status, headers);
            }
        };
        let mut r = Resp { status, headers, body: Vec::new() };
        if head_request || status == 204 || status == 304 {
            return r;
        }
        if r.header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let size =
                    usize::from_str_radix(self.line().split(';').next().unwrap().trim(), 16).expect("chunk size");
                if size == 0 {
                    while !self.line().is_empty() {} // trailers
                    break;
                }
                let mut chunk = vec![0; size + 2];
                self.0.read_exact(&mut chunk).expect("chunk");
                r.body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(len) = r.header("content-length") {
            let mut body = vec![0; len.parse().expect("content-length")];
            self.0.read_exact(&mut body).expect("body");
            r.body = body;
        } else {
            self.0.read_to_end(&mut r.body).expect("body to the end");
        }
        r
    }

    fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.response(false)
    }

    /// True if the server closed the connection (end of file or reset) without a response.
    fn closed(&mut self) -> bool {
        let mut b = [0; 1];
        matches!(self.0.read(&mut b), Ok(0) | Err(_))
    }
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    Conn::open(addr).get(path)
}

// ---- bodies ----

/// `len` bytes that no byte-shifting bug keeps intact.
fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

/// CRC-32 (IEEE), as Python's `zlib.crc32`, which the fixtures answer with.
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
        *t = c;
    }
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// What `/echo` answers for `data`.
fn echoed(data: &[u8]) -> String {
    format!("{} {:08x}\n", data.len(), crc32(data))
}

// ---- the checks every app passes ----

/// GET, keep-alive, a chunked 300 KB POST, a 2 MB POST with `Expect: 100-continue`, a
/// streamed response, and an app that raises: `greeting` starts the body of `/`.
fn assert_serves_http(h: &Handoff, greeting: &str) {
    let addr = h.addr();
    let r = get(addr, "/");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().starts_with(greeting), "{r:?}");

    // Keep-alive: one connection, several requests, each answered.
    let mut c = Conn::open(addr);
    for i in 0..5 {
        let r = c.get("/");
        assert_eq!(r.status, 200, "request {i} on one connection: {r:?}");
        assert!(r.text().starts_with(greeting), "{r:?}");
    }

    // A chunked body, in uneven pieces, reaches the app whole (on the same connection).
    let data = body(300 * 1024);
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n");
    for piece in data.chunks(7919) {
        let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
        chunk.extend_from_slice(piece);
        chunk.extend_from_slice(b"\r\n");
        c.send(&chunk);
    }
    c.send(b"0\r\n\r\n");
    let r = c.response(false);
    assert_eq!((r.status, r.text()), (200, echoed(&data)), "chunked 300 KB POST");

    // Expect: 100-continue: the server asks for the body (the client would otherwise
    // wait before sending it), then the 2 MB reach the app whole.
    let data = body(2 * 1024 * 1024);
    c.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nExpect: 100-continue\r\n\r\n",
            data.len()
        )
        .as_bytes(),
    );
    let (status, _) = c.head();
    assert_eq!(status, 100, "no 100 Continue before the body");
    c.send(&data);
    let r = c.response(false);
    assert_eq!((r.status, r.text()), (200, echoed(&data)), "2 MB POST with Expect: 100-continue");

    // A streamed response without a length goes out chunked, every piece in order.
    let r = c.get("/stream");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
    assert_eq!(r.text(), (0..5).map(|i| format!("part {i}\n")).collect::<String>());

    // An app that raises: a 500, and its traceback in the master's log.
    let r = get(addr, "/raise");
    assert_eq!(r.status, 500, "{r:?}");
    h.wait_line("RuntimeError: the fixture app raised on purpose");
    h.wait_line("Traceback (most recent call last)");

    // The connection survived all of it.
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn wsgi_serves_flask() {
    let h = start("wsgi", "flask_app:app", &["--workers", "2"], &[], "auto");
    h.wait_ready_slots(2);
    assert_serves_http(&h, "hello from flask");
}

#[test]
fn wsgi_serves_django() {
    let h = start("wsgi", "django_app:application", &["--workers", "2"], &[], "auto");
    h.wait_ready_slots(2);
    assert_serves_http(&h, "hello from django");
}

#[test]
fn asgi_serves_fastapi_with_its_lifespan() {
    let h = start("asgi", "fastapi_app:app", &["--workers", "2"], &[], "auto");
    h.wait_ready_slots(2);
    // The lifespan startup ran before the first connection was read.
    assert!(get(h.addr(), "/").text().ends_with("lifespan startup ran\n"));
    assert_serves_http(&h, "hello from fastapi");
}

#[test]
fn asgi_serves_django_which_has_no_lifespan() {
    let h = start("asgi", "django_app:asgi_application", &["--workers", "2"], &[], "auto");
    h.wait_ready_slots(2);
    h.wait_line("does not support the lifespan protocol");
    assert_serves_http(&h, "hello from django");
}

/// PROXY addresses (CONN_ADDR) become the app's client address.
fn assert_client_from_proxy_header(server: &str, app: &str) {
    let h = start(server, app, &["--listen", "127.0.0.1:0,proxy", "--workers", "1"], &[], "auto");
    h.wait_ready_slots(1);
    let mut c = Conn::open(h.addr());
    c.send(b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 443\r\nGET /client HTTP/1.1\r\nHost: test\r\n\r\n");
    let r = c.response(false);
    assert_eq!((r.status, r.text()), (200, "192.0.2.9\n".to_string()), "{r:?}");
}

#[test]
fn wsgi_client_address_from_a_proxy_header() {
    assert_client_from_proxy_header("wsgi", "flask_app:app");
}

#[test]
fn asgi_client_address_from_a_proxy_header() {
    assert_client_from_proxy_header("asgi", "fastapi_app:app");
}

/// SIGTERM while a request runs: it completes, then every worker exits 0.
fn assert_drain_finishes_the_request(h: Handoff, workers: usize) {
    let addr = h.addr();
    let client = std::thread::spawn(move || get(addr, "/sleep?s=1.5"));
    h.wait_line("fixture: sleeping in worker");
    // An idle keep-alive connection too: the drain must not wait for its client.
    let mut idle = Conn::open(addr);
    assert_eq!(idle.get("/").status, 200);
    h.signal(Signal::TERM);
    let r = client.join().unwrap();
    assert_eq!((r.status, r.text()), (200, "slept\n".to_string()), "the request in flight completes");
    // The idle connection was closed or handed back (then closed by the stopping master).
    assert!(idle.closed(), "the idle connection stays open after the drain");
    stop_gracefully(h, workers);
}

#[test]
fn wsgi_drain_finishes_the_request_in_flight() {
    let h = start("wsgi", "flask_app:app", &["--workers", "2"], &[], "auto");
    h.wait_ready_slots(2);
    assert_drain_finishes_the_request(h, 2);
}

#[test]
fn asgi_drain_finishes_the_request_in_flight_and_runs_the_lifespan_shutdown() {
    let h = start("asgi", "fastapi_app:app", &["--workers", "2"], &[], "auto");
    h.wait_ready_slots(2);
    let addr = h.addr();
    let client = std::thread::spawn(move || get(addr, "/sleep?s=1.5"));
    h.wait_line("fixture: sleeping in worker");
    h.signal(Signal::TERM);
    let r = client.join().unwrap();
    assert_eq!((r.status, r.text()), (200, "slept\n".to_string()), "the request in flight completes");
    h.wait_lines("lifespan shutdown ran", 2);
    stop_gracefully(h, 2);
}

/// A request that makes no progress for the worker's `--timeout` silences its HEARTBEAT:
/// the master (`--worker-timeout 2`) kills the worker and starts another. An idle
/// keep-alive connection held longer than that first shows the heartbeat runs while
/// nothing is hung.
fn assert_hung_request_replaces_the_worker(server: &str, app: &str, hang: &str) {
    let h = start(
        server,
        app,
        &["--workers", "1", "--worker-timeout", "2"],
        &["--timeout", "1", "--keep-alive", "30"],
        "off",
    );
    let pid = h.wait_ready_slots(1)[&0];
    let mut idle = Conn::open(h.addr());
    assert_eq!(idle.get("/").status, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(idle.get("/").status, 200, "the worker holding an idle connection was replaced");
    assert_eq!(h.worker_pid(0), pid);
    drop(idle);

    let mut hung = Conn::open(h.addr());
    hung.send(format!("GET {hang} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    h.wait_line("hung: ");
    h.wait_line(&format!("worker 0 (pid {pid}) sent nothing for"));
    assert!(hung.closed(), "the hung request's connection ends with its worker");
    let new = h.wait_log("a new worker 0", |l| slot_pids(l, "ready (pid ").get(&0).copied().filter(|&p| p != pid));
    assert_ne!(new, pid);
    assert_eq!(get(h.addr(), "/").status, 200);
}

#[test]
fn wsgi_heartbeat_stops_for_a_hung_request() {
    assert_hung_request_replaces_the_worker("wsgi", "flask_app:app", "/sleep?s=60");
}

#[test]
fn asgi_heartbeat_stops_for_a_blocked_event_loop() {
    assert_hung_request_replaces_the_worker("asgi", "fastapi_app:app", "/block?s=60");
}

/// `HANDOFF_RETURN=always`: the connection goes back to the master after every response,
/// so requests on one keep-alive connection are spread by policy (round robin over two
/// workers) and arrive marked CONTINUED after the first. (A connection a worker received
/// in its first second may be one the master does not track, if the worker was slow to
/// say READY; such a one is never handed back: try new connections until one is.)
fn assert_return_balances_requests(server: &str, app: &str) {
    if !master_takes_return() {
        eprintln!("docs/PROTOCOL.md has no RETURN yet: the master cannot take connections back; not tested");
        return;
    }
    let h = start(server, app, &["--workers", "2", "--policy", "round-robin"], &[], "always");
    h.wait_ready_slots(2);
    let deadline = std::time::Instant::now() + WAIT;
    let (mut c, mut workers) = loop {
        let mut c = Conn::open(h.addr());
        let first = c.get("/continued");
        assert_eq!((first.status, first.text()), (200, "False\n".to_string()), "{first:?}");
        let second = c.get("/continued");
        assert_eq!(second.status, 200, "{second:?}");
        if second.text() == "True\n" {
            break (c, vec![first.worker(), second.worker()]);
        }
        assert!(std::time::Instant::now() < deadline, "no connection was handed back within {WAIT:?}");
    };
    for i in 0..5 {
        let r = c.get("/continued");
        assert_eq!((r.status, r.text()), (200, "True\n".to_string()), "request {i}: {r:?}");
        workers.push(r.worker());
    }
    for pair in workers.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin per request on one connection: {workers:?}");
    }
}

#[test]
fn wsgi_returns_connections_between_requests() {
    assert_return_balances_requests("wsgi", "flask_app:app");
}

#[test]
fn asgi_returns_connections_between_requests() {
    assert_return_balances_requests("asgi", "fastapi_app:app");
}

/// Runs `tests/python_apps/SCRIPT ARGS` with the package from this tree; it prints "ok".
fn run_check(script: &str, args: &[&str]) {
    require_python();
    let out = Command::new("python3")
        .arg(format!("tests/python_apps/{script}"))
        .args(args)
        .current_dir(root())
        .env("PYTHONPATH", root().join("python/src"))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{script} {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn protocol_frames_decode_and_malformed_ones_leak_nothing() {
    run_check("protocol_check.py", &[]);
}

/// RETURN checked frame by frame against a stand-in master (`tests/python_apps/fake_master.py`),
/// whatever this tree's master does: the frame, the descriptor, blocking mode, nothing
/// of the next request read, CONTINUED, DONE for `Connection: close`, RETURN at DRAIN.
fn assert_return_frames(server: &str, app: &str) {
    run_check("fake_master.py", &[server, app]);
}

#[test]
fn wsgi_return_frames_keep_the_protocol_promises() {
    assert_return_frames("wsgi", "flask_app:app");
}

#[test]
fn asgi_return_frames_keep_the_protocol_promises() {
    assert_return_frames("asgi", "fastapi_app:app");
}

// ---- WebSockets (ASGI) ----

/// A client frame (masked, as RFC 6455 requires of clients), payload under 126 bytes.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask: [u8; 4] = fastrand::u32(..).to_le_bytes();
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A server frame (unmasked, under 126 bytes): (opcode, payload).
fn ws_read(c: &mut Conn) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    c.0.read_exact(&mut head).expect("a WebSocket frame");
    assert!(head[1] & 0x80 == 0 && head[1] < 126, "unexpected frame header {head:?}");
    let mut payload = vec![0; head[1] as usize];
    c.0.read_exact(&mut payload).unwrap();
    (head[0] & 0x0f, payload)
}

/// Opens `/ws` on the FastAPI fixture: the 101 and one echoed message.
fn ws_open(addr: SocketAddr) -> Conn {
    let mut c = Conn::open(addr);
    c.send(b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    let (status, headers) = c.head();
    assert_eq!(status, 101, "{headers:?}");
    // RFC 6455's own example key and answer.
    assert!(headers.contains(&("sec-websocket-accept".into(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into())), "{headers:?}");
    c.send(&ws_frame(1, b"hello"));
    assert_eq!(ws_read(&mut c), (1, b"echo hello".to_vec()));
    c
}

#[test]
fn asgi_serves_websockets() {
    let h = start("asgi", "fastapi_app:app", &["--workers", "1"], &[], "auto");
    h.wait_ready_slots(1);
    let mut c = ws_open(h.addr());
    c.send(&ws_frame(9, b"ping?")); // a ping is answered with its pong
    assert_eq!(ws_read(&mut c), (10, b"ping?".to_vec()));
    c.send(&ws_frame(1, b"again"));
    assert_eq!(ws_read(&mut c), (1, b"echo again".to_vec()));
    c.send(&ws_frame(8, &1000u16.to_be_bytes())); // close: answered, and the app told
    assert_eq!(ws_read(&mut c), (8, 1000u16.to_be_bytes().to_vec()));
    assert!(c.closed(), "the connection ends after the close handshake");
    h.wait_line("fixture: websocket closed with 1000");
    // The worker goes on serving.
    assert_eq!(get(h.addr(), "/").status, 200);
}

#[test]
fn asgi_drain_closes_websockets_with_service_restart() {
    let h = start("asgi", "fastapi_app:app", &["--workers", "1"], &[], "auto");
    h.wait_ready_slots(1);
    let mut c = ws_open(h.addr());
    h.signal(Signal::TERM);
    // 1012: service restart, so the client reconnects (to a worker that is not leaving).
    assert_eq!(ws_read(&mut c), (8, 1012u16.to_be_bytes().to_vec()));
    h.wait_line("fixture: websocket closed with 1012");
    stop_gracefully(h, 1);
}
