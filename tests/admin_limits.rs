//! The master's own endpoints (control socket, `/metrics`, `/health`) under abuse: a
//! slow or malformed control client, a flood of idle `/metrics` connections, and a
//! flood of silent `,proxy` clients that takes every descriptor the master may open.
//! Each time the other endpoints keep answering, and the master keeps its loop.

mod util;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use util::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on a new connection; (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{out:?}"));
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// Reads until the master closes; what it sent. A close with our bytes still unread
/// on its side shows here as a reset after its answer: a close too.
fn read_until_closed(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the master closes the connection (bounded by its deadline): {e}"),
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_slow_or_malformed_control_client_cannot_hold_up_the_master() {
    let dir = TempDir::new("admin-slow");
    let control = dir.path_str("c.sock");
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1", "--control", &control]);
    h.wait_ready(1);
    // Half a command, then nothing: the master goes on answering others meanwhile.
    let mut stalled = UnixStream::connect(&control).unwrap();
    stalled.write_all(b"sta").unwrap();
    let st = status_json(&control);
    assert_eq!(st["admin"]["open"]["control"], 2, "the stalled client and this one: {}", st["admin"]);
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
    // More than a command may be: told why, and closed.
    let mut big = UnixStream::connect(&control).unwrap();
    let _ = big.write_all(&[b'x'; 20_000]); // the master may close before all of it is written
    let answer = read_until_closed(&mut big);
    assert!(answer.contains("request too large"), "{answer:?}");
    // Bytes that are no command: an error for that command only.
    let mut garbage = UnixStream::connect(&control).unwrap();
    garbage.write_all(b"\x00\xff\xfe scale\n").unwrap();
    let answer = read_until_closed(&mut garbage);
    let reply: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(reply["ok"], false);
    assert!(reply["message"].as_str().unwrap().contains("unknown command"), "{reply}");
    // The stalled client is closed at its deadline, unanswered.
    assert_eq!(read_until_closed(&mut stalled), "");
    let st = status_json(&control);
    assert_eq!(st["phase"], "running");
    assert_eq!(st["admin"]["open"]["control"], 1, "only this one is left: {}", st["admin"]);
}

/// Each endpoint has its own cap: `/metrics` full of idle connections leaves `/health`
/// and the control socket answering.
#[test]
fn idle_metrics_connections_leave_health_and_status_answering() {
    let dir = TempDir::new("admin-metrics-flood");
    let control = dir.path_str("c.sock");
    let (mp, hp) = (free_port(), free_port());
    let (m, he) = (format!("127.0.0.1:{mp}"), format!("127.0.0.1:{hp}"));
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--control",
        &control,
        "--metrics",
        &m,
        "--health",
        &he,
    ]);
    h.wait_ready(1);
    assert_eq!(get(hp, "/").0, 200);
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(("127.0.0.1", mp)).unwrap()).collect();
    // Every one of them has reached the master: 128 held, the rest closed at once.
    wait_until("the master to take all 300", || {
        let a = &status_json(&control)["admin"];
        a["refused_full"]["metrics"].as_u64().unwrap() + a["open"]["metrics"].as_u64().unwrap() >= 300
    });
    let (code, body) = get(hp, "/");
    assert_eq!((code, body.as_str()), (200, "ok\n"), "health answers beside a full /metrics");
    let st = status_json(&control);
    let a = &st["admin"];
    assert!(a["open"]["metrics"].as_u64().unwrap() <= 128, "{a}");
    assert!(a["refused_full"]["metrics"].as_u64().unwrap() >= 172, "{a}");
    assert_eq!(a["refused_full"]["health"], 0, "{a}");
    assert_eq!(a["refused_full"]["control"], 0, "{a}");
    h.wait_line("metrics endpoint: 128 connections open, closing new ones");
    drop(idle);
    // Once they are gone, /metrics serves again, and reports what it refused.
    wait_until("/metrics to answer", || {
        let (code, body) = get(mp, "/metrics");
        code == 200
            && body.lines().any(|l| {
                l.strip_prefix("handoff_admin_refused_total{endpoint=\"metrics\",reason=\"full\"} ")
                    .is_some_and(|n| n.parse::<u64>().unwrap() >= 172)
            })
    });
}

/// Silent clients of a `,proxy` listener are held by the master until their header
/// comes (or 5 s pass), each on a descriptor. When they take every descriptor its
/// limit allows, accepting clients pauses, while health and control still answer:
/// each endpoint keeps spare descriptors for that.
#[test]
fn a_descriptor_flood_leaves_health_and_control_answering() {
    let dir = TempDir::new("admin-fd-flood");
    let control = dir.path_str("c.sock");
    let hp = free_port();
    let he = format!("127.0.0.1:{hp}");
    let h =
        Handoff::start(&["--listen", "127.0.0.1:0,proxy", "--workers", "1", "--control", &control, "--health", &he]);
    h.wait_ready(1);
    let master = h.pid();
    let base = fd_count(master);
    // `accept` fails once every descriptor number below the limit is taken, whatever
    // is open above it (a test harness may leak a pipe with a high number into the
    // master: the pipe of cargo's jobserver, say). Room for at least 10 more, past the
    // master's own descriptors (the lowest numbers: about 25 here).
    let below = |limit: u64| fd_links(master).iter().filter(|(n, _)| (*n as u64) < limit).count() as u64;
    let highest = fd_links(master).iter().map(|(n, _)| *n as u64).filter(|n| *n < 100).max().unwrap();
    let limit = highest + 11;
    let lim = rustix::process::Rlimit { current: Some(limit), maximum: Some(limit) };
    rustix::process::prlimit(rustix::process::Pid::from_raw(master as i32), rustix::process::Resource::Nofile, lim)
        .unwrap();
    let silent: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(h.addr()).unwrap()).collect();
    // `handoff status` works throughout (status_json fails the test if it does not).
    wait_until("accept to run out of descriptors", || {
        status_json(&control)["totals"]["accept_exhausted"].as_u64().unwrap() > 0
    });
    // Each answer frees its descriptor for a moment, until the next accept pass gives
    // it to one of the silent clients still queued: wait for that before each request,
    // so that it finds the master at its limit.
    let at_limit = || wait_until("every descriptor number below the limit in use", || below(limit) == limit);
    at_limit();
    assert_eq!(get(hp, "/"), (200, "ok\n".to_string()), "health answers at the descriptor limit");
    at_limit();
    let st = status_json(&control);
    assert!(st["admin"]["from_reserve"].as_u64().unwrap() >= 2, "spares were used: {}", st["admin"]);
    assert_eq!(st["phase"], "running");
    // Once the silent clients are gone, the master is back where it started: every
    // spare given up was taken back, nothing leaked.
    drop(silent);
    wait_until("the master's descriptors back to where they were", || fd_count(master) == base);
}
