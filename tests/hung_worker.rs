//! A worker that hangs (reads nothing, says nothing), or that takes connections and
//! never acknowledges them, is detected, killed and replaced, and the connections it
//! had not taken are served by others.

use std::io::{Read, Write};

mod util;
use util::*;

/// Two round-robin workers, the one in slot 0 misbehaving with `fault`, found out after
/// one second; six concurrent clients, every other one sent to slot 0, must all be
/// answered by slot 1 once their connections are handed on.
fn every_connection_served_despite(fault: &str) -> Handoff {
    let args = ["--listen", "127.0.0.1:0", "--workers", "2", "--policy", "round-robin", "--worker-timeout", "1"];
    let h = Handoff::start(&[&args[..], &misbehaving_in_slot_0(fault)].concat());
    h.wait_ready(2);
    let addr = h.addr();
    let clients: Vec<_> = (0..6).map(|_| std::thread::spawn(move || http_get(addr, "/"))).collect();
    for c in clients {
        let r = c.join().unwrap().expect("every connection is served");
        assert_eq!(r.status, 200);
        assert_eq!(r.worker, Some(1), "only the healthy worker can have answered");
    }
    h
}

#[test]
fn a_stalled_worker_is_replaced_and_its_queued_connections_are_served() {
    let h = every_connection_served_despite("stall");
    let stalled = h
        .lines()
        .iter()
        .find_map(|l| l.split("worker 0 started (pid ").nth(1)?.trim_end_matches(')').parse::<u32>().ok());
    let stalled = stalled.expect("slot 0 started");
    // (waits, not a look at the log so far: the reader may lag the clients)
    h.wait_line(&format!("worker 0 (pid {stalled}) sent nothing for"));
    h.wait_line("handing on");
    h.wait_lines("worker 0 started", 2);
}

#[test]
fn a_worker_that_never_acks_is_replaced_and_its_connections_handed_on() {
    let h = every_connection_served_despite("no-ack");
    h.wait_line("has not acknowledged a connection for");
    h.wait_lines("worker 0 started", 2);
}

/// A minimal worker (no READY, no ACK) that never reads its channel: the master cannot
/// hand its connections on (it keeps no copy), but it sees them sit unread, and after
/// `--worker-timeout` kills and replaces the worker, which closes them: the client gets
/// an answer (the connection ends) instead of waiting forever.
#[test]
fn a_minimal_worker_that_never_reads_its_channel_is_replaced() {
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--worker-timeout",
        "1",
        "--",
        "sh",
        "-c",
        "exec sleep 1000",
    ]);
    let first = h.wait_started_slots(1)[&0];
    let mut s = connect(h.addr());
    std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    // Ends (EOF or reset) well within WAIT; a timeout would be an error of kind
    // WouldBlock/TimedOut.
    let ended = match std::io::Read::read_to_end(&mut s, &mut out) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(ended && out.is_empty(), "the connection hung (or was answered?): {out:?}");
    let line = h.wait_line("has left connections unread in its channel");
    assert!(line.contains(&format!("worker 0 (pid {first})")), "{line}");
    h.wait_lines("worker 0 started", 2);
}

/// A worker that stops reading its channel until the channel is full, and then catches
/// up, is sent connections again once there is room, and is not killed: the master
/// watches a full channel for room (and only a full one). 400 clients, all sent before
/// the worker reads anything: more than its channel holds (one descriptor a frame).
#[test]
fn a_worker_whose_channel_filled_up_gets_connections_again_when_it_catches_up() {
    let slow = "import time; time.sleep(3); exec(open('examples/python/minimal.py').read())";
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1", "--", "python3", "-c", slow]);
    h.wait_started_slots(1);
    let addr = h.addr();
    let mut clients: Vec<std::net::TcpStream> = (0..400)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(addr).expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
            c
        })
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert!(out.starts_with(b"HTTP/1.1 200 OK"), "client {i} got {:?}", String::from_utf8_lossy(&out));
    }
    let lines = h.lines();
    assert!(!lines.iter().any(|l| l.contains("killing")), "{lines:#?}");
}
