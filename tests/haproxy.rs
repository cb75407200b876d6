//! HAProxy in front of PROXY-protocol servers: the multi-host harness checks itself.
//!
//! Two plain Rust HTTP servers (std threads) read the PROXY v2 header that haproxy's
//! `send-proxy-v2` puts in front of every connection, with `handoff::__private::proxy`, and answer
//! with the client address it names. Requests through haproxy must all succeed, reach
//! both servers, and name 127.0.0.1 (the test client) as the client; haproxy's health
//! checks arrive as v2 LOCAL connections and are answered too. A stopped server is seen
//! DOWN, and traffic goes on to the other. The same with v1 (`send-proxy`) headers, and
//! a server drained on haproxy's admin socket.

mod support_haproxy;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff::__private::proxy::{read_header, ProxyHeader};
use support_haproxy::{http_get, Backend, Haproxy, Mode};

/// What a test server saw.
#[derive(Default)]
struct Seen {
    /// Client addresses from PROXY headers of proxied connections.
    clients: Mutex<Vec<SocketAddr>>,
    /// Connections with a LOCAL header (health checks).
    local: AtomicUsize,
    /// Connections whose header was refused.
    bad: AtomicUsize,
}

/// A thread-per-connection HTTP server behind a PROXY v2 header.
struct TestServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(name: &'static str) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let seen = seen2.clone();
                        std::thread::spawn(move || serve(name, s, &seen));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener closes here: haproxy's next check fails.
        });
        TestServer { addr, seen, stop, thread: Some(thread) }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads the PROXY header the way a non-blocking master would (peek, parse, consume
/// exactly the header), but waiting with short sleeps instead of a poller.
fn read_proxy_header(s: &TcpStream) -> std::io::Result<ProxyHeader> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match read_header(s.as_fd()) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            r => return r,
        }
    }
}

fn serve(name: &str, mut s: TcpStream, seen: &Seen) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let header = match read_proxy_header(&s) {
        Ok(h) => h,
        Err(_) => {
            seen.bad.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let client = match header.source {
        Some(c) => {
            seen.clients.lock().unwrap().push(c);
            c.to_string()
        }
        None => {
            seen.local.fetch_add(1, Ordering::Relaxed);
            "local".to_string()
        }
    };
    // The request follows the header, untouched.
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    if !req.starts_with(b"GET ") {
        seen.bad.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let body = format!("{name} {client}\n");
    let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

#[test]
fn haproxy_send_proxy_v2_reaches_both_servers_with_the_client_address() {
    let a = TestServer::start("a");
    let mut b = TestServer::start("b");
    let hap = Haproxy::start(Mode::Http, &[Backend::new(a.addr), Backend::new(b.addr)]);
    hap.wait_status(0, "UP");
    hap.wait_status(1, "UP");

    let mut by_server = [0usize; 2];
    for i in 0..20 {
        let r = http_get(hap.frontend, "/").unwrap_or_else(|e| panic!("request {i}: {e}\n{}", hap.log()));
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        let (server, client) = r.body.trim().split_once(' ').expect("body is 'server client'");
        let client: SocketAddr = client.parse().unwrap_or_else(|_| panic!("client {client:?}"));
        assert_eq!(client.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        by_server[usize::from(server == "b")] += 1;
    }
    assert_eq!(by_server, [10, 10], "round robin over both servers");
    for s in [&a, &b] {
        assert_eq!(s.seen.bad.load(Ordering::Relaxed), 0);
        assert!(s.seen.clients.lock().unwrap().iter().all(|c| c.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)));
        // Health checks came as PROXY v2 LOCAL connections and were answered.
        assert!(s.seen.local.load(Ordering::Relaxed) >= 1, "no health check seen");
    }

    // A server that goes away is seen DOWN and skipped.
    b.stop();
    hap.wait_status(1, "DOWN");
    for i in 0..5 {
        let r = http_get(hap.frontend, "/").unwrap_or_else(|e| panic!("request {i} after stop: {e}"));
        assert_eq!(r.status, 200);
        assert!(r.body.starts_with("a "), "{r:?}");
    }
}

#[test]
fn haproxy_send_proxy_v1_and_admin_drain() {
    let a = TestServer::start("a");
    let b = TestServer::start("b");
    let hap = Haproxy::start(Mode::Tcp, &[Backend::new(a.addr).v1(), Backend::new(b.addr).v1()]);
    hap.wait_status(0, "UP");
    hap.wait_status(1, "UP");
    for i in 0..4 {
        let r = http_get(hap.frontend, "/").unwrap_or_else(|e| panic!("request {i}: {e}\n{}", hap.log()));
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        let client: SocketAddr = r.body.trim().split_once(' ').unwrap().1.parse().unwrap();
        assert_eq!(client.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    // Drained by hand on the admin socket: new connections go to the other server only.
    hap.set_state(1, "drain");
    for _ in 0..4 {
        assert!(http_get(hap.frontend, "/").unwrap().body.starts_with("a "));
    }
    hap.set_state(1, "ready");
    let served: Vec<String> = (0..4).map(|_| http_get(hap.frontend, "/").unwrap().body).collect();
    assert!(served.iter().any(|b| b.starts_with("b ")), "{served:?}");
    for s in [&a, &b] {
        assert_eq!(s.seen.bad.load(Ordering::Relaxed), 0);
        // v1 health checks carry a real TCP4 line (no UNKNOWN), so every connection
        // named a client.
        assert_eq!(s.seen.local.load(Ordering::Relaxed), 0);
        assert!(s.seen.clients.lock().unwrap().iter().all(|c| c.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}

#[test]
fn config_has_send_proxy_v2_and_fast_checks() {
    let cfg = support_haproxy::config(
        Mode::Tcp,
        "127.0.0.1:8000".parse().unwrap(),
        &[Backend::with_health("127.0.0.1:8001".parse().unwrap(), "127.0.0.1:9101".parse().unwrap())],
        std::path::Path::new("/tmp/x.sock"),
    );
    assert!(cfg.contains("mode tcp"), "{cfg}");
    assert!(cfg.contains("option httpchk GET /"), "{cfg}");
    assert!(cfg.contains("inter 200ms fall 1 rise 1"), "{cfg}");
    assert!(cfg.contains("server s0 127.0.0.1:8001 send-proxy-v2 check addr 127.0.0.1 port 9101"), "{cfg}");
    let v1 = support_haproxy::config(
        Mode::Http,
        "127.0.0.1:8000".parse().unwrap(),
        &[Backend::new("127.0.0.1:8001".parse().unwrap()).v1()],
        std::path::Path::new("/tmp/x.sock"),
    );
    assert!(v1.contains("server s0 127.0.0.1:8001 send-proxy check\n"), "{v1}");
}
