//! With NOTIFY_SOCKET set, the master tells systemd READY (once its workers are
//! ready), RELOADING and STOPPING, and pings the watchdog; workers never see the socket.

mod util;
use std::os::unix::net::UnixDatagram;
use util::*;

fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_reloading_stopping_and_watchdog() {
    let dir = TempDir::new("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut h = Handoff::start_with(&["--listen", "127.0.0.1:0", "--workers", "2"], |cmd| {
        cmd.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "400000");
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        seen.push(next(&sock));
    }
    // READY only after both workers announced themselves: the master logs each worker's
    // READY, then "all 2 workers ready" just before it notifies systemd.
    h.wait_line("all 2 workers ready");
    let lines = h.lines();
    let all_at = lines.iter().position(|l| l.contains("all 2 workers ready")).unwrap();
    assert_eq!(lines[..all_at].iter().filter(|l| l.contains("ready (pid")).count(), 2, "{seen:?}");
    for pid in h.worker_pids() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(!env.windows(13).any(|w| w == b"NOTIFY_SOCKET"), "worker {pid} sees NOTIFY_SOCKET");
    }
    let msg = loop {
        let m = next(&sock);
        if !m.contains("WATCHDOG=1") {
            break m;
        }
        seen.push(m);
        if seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2 {
            h.signal(Signal::HUP);
        }
    };
    assert!(seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2, "{seen:?}");
    assert!(msg.contains("RELOADING=1"), "{msg}");
    loop {
        let m = next(&sock);
        if m.contains("READY=1") {
            break;
        }
    }
    h.signal(Signal::TERM);
    loop {
        let m = next(&sock);
        if m.contains("STOPPING=1") {
            break;
        }
    }
    assert_eq!(h.wait_exit(), Some(0));
}
