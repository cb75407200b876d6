//! Every connection the master loses is counted by cause, in `handoff status --json`
//! and in `/metrics`: a worker killed mid-request, a PROXY header that is late or bad,
//! and connections still unread in a dead minimal worker's channel. Each cause is
//! provoked with real processes and both outputs are read back.

mod util;
use std::io::{Read, Write};
use std::net::TcpStream;
use util::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /metrics` from the master's metrics endpoint: the body.
fn metrics(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

fn assert_metric(body: &str, line: &str) {
    assert!(body.lines().any(|l| l == line), "missing {line:?} in:\n{body}");
}

/// How a client's connection ended: `true` if closed (end of file or reset) without a
/// byte of answer within [`WAIT`].
fn closed_unanswered(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// A built-in worker SIGKILLed while a client waits for its answer: 1 lost with a
/// worker serving it. On a `,proxy` listener, a client that sends no header is closed
/// after the header timeout (5 s) and one that sends garbage at once: 1 late, 1 bad.
#[test]
fn a_worker_killed_mid_request_and_late_or_bad_proxy_headers_are_counted() {
    let dir = TempDir::new("losses");
    let control = dir.path_str("c.sock");
    let mp = free_port();
    let m = format!("127.0.0.1:{mp}");
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0,proxy",
        "--workers",
        "1",
        "--test-knobs",
        "--control",
        &control,
        "--metrics",
        &m,
    ]);
    h.wait_ready(1);
    let addrs = h.tcp_addrs();
    let (plain, proxied) = (addrs[0], addrs[1]);

    // The PROXY clients first: the silent one's 5 s run while the rest goes on.
    let mut silent = connect(proxied);
    let mut bad = connect(proxied);
    bad.write_all(b"GARBAGE / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed_unanswered(&mut bad), "a bad PROXY header is closed at once");

    // A request the worker takes (ACKed) and is working on when it is killed.
    let mut waiting = connect(plain);
    waiting.write_all(b"GET /?sleep_ms=30000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    wait_until("the worker serving the request", || {
        let w = &status_json(&control)["workers"][0];
        w["active"] == 1 && w["unacked"] == 0
    });
    let worker = h.worker_pid(0);
    h.kill_worker(worker);
    assert!(closed_unanswered(&mut waiting), "the client of a killed worker sees its connection end");
    assert!(closed_unanswered(&mut silent), "a client that sends no PROXY header is closed");

    wait_until("the losses counted", || {
        let t = &status_json(&control)["totals"];
        t["lost_with_worker"] == 1 && t["proxy_header_timeouts"] == 1 && t["proxy_header_bad"] == 1
    });
    let t = status_json(&control)["totals"].clone();
    assert_eq!((t["proxy_errors"].as_u64(), t["lost_in_channel"].as_u64()), (Some(2), Some(0)), "{t}");
    let body = metrics(mp);
    for line in [
        "handoff_connections_lost_total{cause=\"worker_died_serving\"} 1",
        "handoff_connections_lost_total{cause=\"proxy_header_timeout\"} 1",
        "handoff_connections_lost_total{cause=\"proxy_header_bad\"} 1",
        "handoff_connections_lost_total{cause=\"proxy_client_closed\"} 0",
        "handoff_connections_lost_total{cause=\"worker_died_unread\"} 0",
        "handoff_connections_retried_total{cause=\"worker_died_before_ack\"} 0",
    ] {
        assert_metric(&body, line);
    }
    // The table says it too.
    let out = std::process::Command::new(handoff_bin()).args(["status", "--control", &control]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("lost: worker died serving 1 ") && table.contains("PROXY header late 1 bad 1"), "{table}");
}

/// A minimal worker (no READY: the master lets each connection go once the kernel has
/// queued it) that never reads its channel, killed with three connections in it: the
/// kernel reports the queue it freed (ECONNRESET on the master's end) and the master
/// counts the three it last saw there. Their clients see their connection closed.
#[test]
fn connections_unread_in_a_dead_minimal_workers_channel_are_counted() {
    let dir = TempDir::new("losses-minimal");
    let control = dir.path_str("c.sock");
    let mp = free_port();
    let m = format!("127.0.0.1:{mp}");
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--control",
        &control,
        "--metrics",
        &m,
        "--",
        "python3",
        "-c",
        "import time; time.sleep(120)",
    ]);
    let worker = h.wait_started_slots(1)[&0];
    let addr = h.addr();
    let mut clients: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect(addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            s
        })
        .collect();
    wait_until("three connections sent to the worker", || status_json(&control)["totals"]["dispatched"] == 3);
    h.kill_worker(worker);
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(closed_unanswered(c), "client {i}");
    }
    wait_until("the loss counted", || status_json(&control)["totals"]["lost_in_channel"] != 0);
    let t = status_json(&control)["totals"].clone();
    assert_eq!((t["lost_in_channel"].as_u64(), t["lost_with_worker"].as_u64()), (Some(3), Some(0)), "{t}");
    assert_metric(&metrics(mp), "handoff_connections_lost_total{cause=\"worker_died_unread\"} 3");
    h.wait_line("unread in its channel: 3 lost");
}

/// The master at its own descriptor limit when a worker hands an idle connection back
/// (RETURN): the kernel cannot give it the descriptor (`MSG_CTRUNC`). The connection is
/// forgotten as the worker's (its `active` drops to 0, not stuck at 1), counted lost
/// (`return_truncated`), its client sees it end after its answer, and the worker is not
/// blamed (not killed).
#[test]
fn a_return_the_master_cannot_receive_is_forgotten_and_counted() {
    let dir = TempDir::new("losses-return");
    let control = dir.path_str("c.sock");
    let mp = free_port();
    let m = format!("127.0.0.1:{mp}");
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--hand-back",
        "always",
        "--test-knobs",
        "--control",
        &control,
        "--metrics",
        &m,
    ]);
    h.wait_ready(1);
    let worker = h.worker_pid(0);
    let mut client = connect(h.addr());
    client.write_all(b"GET /?sleep_ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    wait_until("the worker serving the request", || {
        let w = &status_json(&control)["workers"][0];
        w["active"] == 1 && w["unacked"] == 0
    });
    // The master now holds no copy of the connection: at this limit it can open nothing.
    let used: std::collections::BTreeSet<i32> = fd_links(h.pid()).into_iter().map(|(n, _)| n).collect();
    let first_free = (0..).find(|n| !used.contains(n)).unwrap() as u64;
    let lim = rustix::process::Rlimit { current: Some(first_free), maximum: Some(first_free) };
    let pid = rustix::process::Pid::from_raw(h.pid() as i32).unwrap();
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, lim).unwrap();

    let r = read_one_response(&mut client).expect("the answer");
    assert_eq!(r.status, 200);
    assert!(closed_unanswered(&mut client), "the handed-back connection is closed after its answer");
    h.wait_line("did not reach the master whole");
    // The admin endpoints answer from their reserve of descriptors.
    let st = status_json(&control);
    assert_eq!(st["totals"]["lost_return_truncated"], 1, "{}", st["totals"]);
    assert_eq!(st["totals"]["protocol_kills"], 0, "{}", st["totals"]);
    let w = &st["workers"][0];
    assert_eq!((w["pid"].as_u64(), w["active"].as_u64()), (Some(worker.into()), Some(0)), "{w}");
    assert_metric(&metrics(mp), "handoff_connections_lost_total{cause=\"return_truncated\"} 1");
}
