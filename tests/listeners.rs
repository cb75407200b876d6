//! Several listeners at once: IPv4, IPv6 and Unix stream sockets; the worker learns
//! which listener each connection came from.

mod util;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use util::*;

#[test]
fn ipv4_ipv6_and_unix_listeners_all_serve() {
    let dir = std::env::temp_dir().join(format!("handoff-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("app.sock");
    let unix = format!("unix:{}", sock.display());
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--listen", "[::1]:0", "--listen", &unix, "--workers", "2"]);
    h.wait_lines("listening on", 3);
    let addrs = h.tcp_addrs();
    assert_eq!(addrs.len(), 2);
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6());
    for a in &addrs {
        assert_eq!(http_get(*a, "/").unwrap().status, 200, "{a}");
    }
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: u\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-handoff-worker"), "{out}");
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Connections the master has accepted so far.
fn accepted(control: &str) -> u64 {
    status_json(control)["totals"]["accepted"].as_u64().expect("totals.accepted")
}

#[test]
fn deferred_listener_hands_on_a_connection_only_once_its_client_has_spoken() {
    let dir = TempDir::new("deferred");
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--listen", "127.0.0.1:0,deferred", "--workers", "1", "--control", &control]);
    h.wait_line("(deferred accept)");
    let addr = h.tcp_addrs()[0];
    // A silent client, then a speaking one. The accept queue is first in, first out: had
    // the silent one been queued, the master would have accepted it before the second.
    // The kernel holds a silent client back for about a second; a run slower than that
    // proves nothing either way, so it is tried again (never more than three times).
    let mut silent = None;
    for attempt in 1..=3 {
        let before = accepted(&control);
        let t0 = std::time::Instant::now();
        let s = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(http_get(addr, "/").unwrap().status, 200);
        let after = accepted(&control);
        if t0.elapsed() < std::time::Duration::from_millis(800) {
            assert_eq!(after - before, 1, "the master accepted a client that had sent nothing");
            silent = Some(s);
            break;
        }
        assert!(attempt < 3, "three runs slower than the kernel's deferral: cannot tell");
    }
    // Once it speaks, the silent client is served like any other.
    let mut s = silent.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn a_listener_without_deferred_accepts_a_silent_client_at_once() {
    // The control for the test above: the same sequence on a plain listener.
    let dir = TempDir::new("not-deferred");
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1", "--control", &control]);
    h.wait_line("listening on");
    let addr = h.tcp_addrs()[0];
    let before = accepted(&control);
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    assert_eq!(http_get(addr, "/").unwrap().status, 200);
    assert_eq!(accepted(&control) - before, 2);
}
