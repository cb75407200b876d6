//! The built-in worker caps a request head at 32 KiB (`worker::http::MAX_REQUEST_HEAD`):
//! a client that sends a huge head and never finishes it is answered 431 and closed at
//! once, instead of holding ~400 KB of the worker's memory for the whole header timeout.

mod util;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use util::*;

/// The attack: a head of this many bytes, never finished.
const HUGE: usize = 380 * 1024;
/// Connections that send it at once.
const CONNS: usize = 40;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends an unfinished head of `len` bytes; returns the stream and whether the worker
/// then ended the connection (EOF or reset, after a 431 or not) within [`WAIT`].
fn unfinished_head(addr: SocketAddr, len: usize) -> (TcpStream, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    let mut head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Filler: ".to_vec();
    head.resize(len, b'a');
    // The worker may close while this is still being sent: that is the point.
    let _ = s.write_all(&head);
    let mut answer = Vec::new();
    let closed = match s.read_to_end(&mut answer) {
        Ok(_) => true,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    let text = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || text.starts_with("HTTP/1.1 431"), "answered {text:?}");
    (s, closed)
}

#[test]
fn an_unfinished_huge_head_is_refused_and_costs_no_memory() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1"]);
    let worker = *h.wait_ready_slots(1).get(&0).unwrap();
    let addr = h.addr();
    // One first, so that the worker's buffers and runtime have their working size.
    let (_first, closed) = unfinished_head(addr, HUGE);
    assert!(closed, "a {HUGE}-byte unfinished head was still open after {WAIT:?}");
    let before = rss_kib(worker);

    let threads: Vec<_> = (0..CONNS).map(|_| std::thread::spawn(move || unfinished_head(addr, HUGE))).collect();
    // Every client keeps its end open: the worker alone decides when each ends.
    let held: Vec<(TcpStream, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(held.iter().all(|(_, closed)| *closed), "an unfinished head was still open after {WAIT:?}");
    let grown = rss_kib(worker).saturating_sub(before);
    // Without the cap each held ~400 KB (16 MB for 40); allow a fraction of that.
    assert!(grown < 6 * 1024, "worker RSS grew {grown} KiB for {CONNS} unfinished {HUGE}-byte heads");
    drop(held);

    // A head under the cap is served as ever.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let filler = "a".repeat(20 * 1024);
    s.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\nX-Filler: {filler}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}
