//! `--listen ADDR,proxy`: the master reads the PROXY header (v1 or v2) before handing
//! the connection on; the worker sees the client's first byte first, and the real
//! client address (CONN_ADDR); a bad or late header closes that connection only.

mod util;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use util::*;

fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else { panic!("v4 only here") };
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend_from_slice(&[0x21, 0x11, 0, 12]);
    b.extend_from_slice(&s.ip().octets());
    b.extend_from_slice(&d.ip().octets());
    b.extend_from_slice(&s.port().to_be_bytes());
    b.extend_from_slice(&d.port().to_be_bytes());
    b
}

fn client_header(r: &Response) -> Option<String> {
    r.headers.iter().find(|(k, _)| k == "x-handoff-client").map(|(_, v)| v.clone())
}

#[test]
fn v1_and_v2_headers_give_the_worker_the_real_client() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0,proxy", "--workers", "2"]);
    h.wait_ready(2);
    assert!(h.wait_line("listening on").contains("(PROXY protocol)"));
    let addr = h.addr();
    let client: SocketAddr = "203.0.113.7:40001".parse().unwrap();
    let r = http_get_with(TcpStream::connect(addr).unwrap(), "/", &v2(client, "198.51.100.1:443".parse().unwrap()))
        .unwrap();
    assert_eq!((r.status, client_header(&r).as_deref()), (200, Some("203.0.113.7:40001")));
    let v1 = b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 443\r\n";
    let r = http_get_with(TcpStream::connect(addr).unwrap(), "/", v1).unwrap();
    assert_eq!((r.status, client_header(&r).as_deref()), (200, Some("192.0.2.9:5555")));
    // A LOCAL header (a balancer's own health check) carries no address: the socket's
    // peer is the client.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let s = TcpStream::connect(addr).unwrap();
    let me = s.local_addr().unwrap().to_string();
    let r = http_get_with(s, "/", &local).unwrap();
    assert_eq!(client_header(&r), Some(me));
}

#[test]
fn a_header_split_across_packets_is_reassembled() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0,proxy", "--workers", "1"]);
    h.wait_ready(1);
    let mut s = TcpStream::connect(h.addr()).unwrap();
    let hdr = v2("192.0.2.1:1000".parse().unwrap(), "192.0.2.2:80".parse().unwrap());
    s.set_nodelay(true).unwrap();
    for chunk in hdr.chunks(5) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = http_get_with(s, "/", b"").unwrap();
    assert_eq!(client_header(&r).as_deref(), Some("192.0.2.1:1000"));
}

#[test]
fn a_bad_header_closes_that_connection_only() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0,proxy", "--workers", "2"]);
    h.wait_ready(2);
    let addr = h.addr();
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    bad.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    let _ = bad.read_to_end(&mut out);
    assert!(out.is_empty(), "a connection without a PROXY header must not reach a worker: {out:?}");
    h.wait_line("closed a connection on a PROXY listener");
    let r = http_get_with(TcpStream::connect(addr).unwrap(), "/", b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 443\r\n")
        .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn a_client_that_never_finishes_its_header_is_closed_after_the_timeout() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0,proxy", "--workers", "1"]);
    h.wait_ready(1);
    let mut s = TcpStream::connect(h.addr()).unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.9").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty());
    h.wait_line("no complete PROXY header within");
}

#[test]
fn a_minimal_worker_gets_proxied_connections_without_addresses() {
    let dir = TempDir::new("proxy-min");
    let script = dir.join("w.py");
    std::fs::write(
        &script,
        "import os, socket\nchan = socket.socket(fileno=int(os.environ['HANDOFF_FD']))\nwhile True:\n    msg, fds, _, _ = socket.recv_fds(chan, 4096, 1)\n    if not fds: break\n    c = socket.socket(fileno=fds[0])\n    first = c.recv(4096)\n    body = first[:3]\n    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n\\r\\n' + body)\n    c.close()\n",
    )
    .unwrap();
    let h =
        Handoff::start(&["--listen", "127.0.0.1:0,proxy", "--workers", "1", "--", "python3", script.to_str().unwrap()]);
    let r =
        http_get_with(TcpStream::connect(h.addr()).unwrap(), "/", b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 443\r\n")
            .unwrap();
    // The worker's first bytes are the client's request, not the header.
    assert_eq!(r.body, "GET");
}

/// A connection the master has accepted, whose balancer is still sending the PROXY
/// header when the master is told to stop (SIGTERM here; an upgrade's old master stops
/// the same way): it is served, like the rest of the backlog, before the workers drain.
#[test]
fn a_header_still_coming_when_the_master_stops_is_served() {
    let dir = TempDir::new("proxy-stop");
    let control = dir.path_str("c.sock");
    let mut h = Handoff::start(&["--listen", "127.0.0.1:0,proxy", "--workers", "1", "--control", &control]);
    h.wait_ready(1);
    let mut s = TcpStream::connect(h.addr()).unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.9").unwrap();
    wait_until("the master accepts the connection", || status_json(&control)["totals"]["accepted"] == 1);
    h.signal(Signal::TERM);
    h.wait_line("stopping gracefully");
    let r = http_get_with(s, "/", b" 198.51.100.1 5555 443\r\n").unwrap();
    assert_eq!((r.status, client_header(&r).as_deref()), (200, Some("192.0.2.9:5555")));
    assert_eq!(h.wait_exit(), Some(0), "then the master drains and exits: {:?}", h.lines());
}

/// Stopping while one connection is being served slowly and another, whose header
/// completes after the stop, finds no worker free (`--max-conns-per-worker 1`): the
/// second waits for the first to end and is served; the workers' `--shutdown-timeout`
/// runs from their DRAIN, not from the stop, so the slow one is not cut short either.
/// With `--max-requests 1` the worker would be due for recycling: none is started.
#[test]
fn connections_still_to_hand_out_at_stop_wait_for_a_free_worker() {
    let dir = TempDir::new("proxy-stop-held");
    let control = dir.path_str("c.sock");
    let mut h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0,proxy",
        "--workers",
        "1",
        "--max-conns-per-worker",
        "1",
        "--shutdown-timeout",
        "1",
        "--max-requests",
        "2",
        "--test-knobs",
        "--control",
        &control,
    ]);
    h.wait_ready(1);
    let addr = h.addr();
    let v1 = b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 443\r\n";
    // The late one first: the master accepts it while the worker is free, and it waits
    // for the rest of its header; then the slow one fills the worker.
    let mut late = TcpStream::connect(addr).unwrap();
    late.write_all(b"PROXY TCP4 192.0.2.7").unwrap();
    wait_until("the master accepts the first connection", || status_json(&control)["totals"]["accepted"] == 1);
    let slow = std::thread::spawn(move || http_get_with(TcpStream::connect(addr).unwrap(), "/?sleep_ms=2000", v1));
    wait_until("the slow request is with the worker", || status_json(&control)["totals"]["dispatched"] == 1);
    h.signal(Signal::TERM);
    h.wait_line("stopping gracefully");
    let r = http_get_with(late, "/", b" 198.51.100.1 7777 443\r\n").unwrap();
    assert_eq!((r.status, client_header(&r).as_deref()), (200, Some("192.0.2.7:7777")));
    let r = slow.join().unwrap().expect("the slow request is answered");
    assert_eq!(r.status, 200);
    assert_eq!(h.wait_exit(), Some(0), "{:?}", h.lines());
    let log = h.lines().join("\n");
    assert!(!log.contains("recycling"), "a worker recycled while stopping: {log}");
    assert_eq!(log.matches("started (pid").count(), 1, "only the first worker ever started: {log}");
}

/// `,proxy-from=`: only the listed sources may send PROXY headers (anyone else could
/// claim any client address). A connection from another source is closed before a
/// byte is read, logged and counted; one from a listed source is served.
#[test]
fn only_the_listed_sources_may_send_a_header() {
    let dir = TempDir::new("proxy-from");
    let control = dir.path_str("c.sock");
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0,proxy,proxy-from=127.0.0.2",
        "--workers",
        "1",
        "--control",
        &control,
    ]);
    h.wait_ready(1);
    assert!(h.wait_line("listening on").contains("(headers from 127.0.0.2/32)"));
    let v1 = b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 443\r\n";
    // From 127.0.0.1, not listed: closed, nothing served.
    let refused = connect_from("127.0.0.1".parse().unwrap(), h.addr()).unwrap();
    refused.set_read_timeout(Some(WAIT)).unwrap();
    let got = http_get_with(refused, "/", v1);
    assert!(got.is_err(), "a header from an unlisted source reached a worker: {:?}", got.map(|r| r.status));
    let line = h.wait_line("may not send PROXY headers");
    assert!(line.contains("from 127.0.0.1 on the PROXY listener"), "{line}");
    assert_eq!(status_json(&control)["totals"]["proxy_refused"], 1);
    let table = std::process::Command::new(handoff_bin()).args(["status", "--control", &control]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("PROXY header from a source not in proxy-from 1"), "{table}");
    // From 127.0.0.2, listed: served, with the header's client address.
    let r = http_get_with(connect_from("127.0.0.2".parse().unwrap(), h.addr()).unwrap(), "/", v1).unwrap();
    assert_eq!((r.status, client_header(&r).as_deref()), (200, Some("192.0.2.9:5555")));
    assert_eq!(status_json(&control)["totals"]["proxy_refused"], 1);
}
