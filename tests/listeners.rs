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
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: u\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-handoff-worker"), "{out}");
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deferred_listener_hands_on_a_connection_only_once_its_client_has_spoken() {
    let dir = TempDir::new("deferred");
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--listen", "127.0.0.1:0,deferred", "--workers", "1", "--control", &control]);
    h.wait_line("(deferred accept)");
    h.wait_ready(1); // and the control socket is open
    let (accepted, mut silent) = silent_then_speaking(h.addr(), &control);
    assert_eq!(accepted, 1, "the master accepted a client that had sent nothing");
    // Once it speaks, the silent client is served like any other.
    silent.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    silent.write_all(b"GET / HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    silent.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn a_listener_without_deferred_accepts_a_silent_client_at_once() {
    // The control for the test above: the same sequence on a plain listener.
    let dir = TempDir::new("not-deferred");
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--listen", "127.0.0.1:0,nodeferred", "--workers", "1", "--control", &control]);
    h.wait_ready(1);
    assert_eq!(silent_then_speaking(h.addr(), &control).0, 2);
}
