//! `handoff status`, Prometheus metrics and the health endpoint reflect what the
//! master does.

mod util;
use std::io::{Read, Write};
use std::net::TcpStream;
use util::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, out.split_once("\r\n\r\n").unwrap().1.to_string())
}

#[test]
fn status_metrics_and_health() {
    let dir = TempDir::new("status");
    let control = dir.path_str("ctl.sock");
    let (mp, hp) = (free_port(), free_port());
    let (m, he) = (format!("127.0.0.1:{mp}"), format!("127.0.0.1:{hp}"));
    let mut h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--policy",
        "round-robin",
        "--control",
        &control,
        "--metrics",
        &m,
        "--health",
        &he,
        "--test-knobs",
        "--shutdown-timeout",
        "10",
    ]);
    h.wait_ready(2);
    assert_eq!(get(hp, "/").0, 200);
    for _ in 0..10 {
        http_get(h.addr(), "/").unwrap();
    }
    let st = status_json(&control);
    assert_eq!(st["totals"]["dispatched"], 10);
    assert_eq!(st["fairness"], 1.0);
    let ws = st["workers"].as_array().unwrap();
    assert!(ws.iter().all(|w| w["dispatched"] == 5 && w["state"] == "running" && w["ready"] == true), "{ws:?}");
    // The control socket is private to the master's user.
    let mode = std::fs::metadata(dir.join("ctl.sock"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);
    // The table form.
    let out = std::process::Command::new(handoff_bin()).args(["status", "--control", &control]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("DISPATCHED") && table.contains("policy round-robin"), "{table}");
    let (code, body) = get(mp, "/metrics");
    assert_eq!(code, 200);
    for line in [
        "handoff_connections_dispatched_total 10",
        "handoff_worker_dispatched_total{worker=\"0\"} 5",
        "handoff_fairness_index 1",
        "handoff_accept_errors_total{kind=\"exhaustion\"} 0",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in:\n{body}");
    }
    assert_eq!(get(mp, "/other").0, 404);
    // While draining (a slow request holds a worker), health says 503.
    let addr = h.addr();
    let slow = std::thread::spawn(move || http_get(addr, "/?sleep_ms=1500"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    h.signal(Signal::TERM);
    wait_until("health 503 while draining", || get(hp, "/") == (503, "draining\n".to_string()));
    assert_eq!(slow.join().unwrap().unwrap().status, 200);
    assert_eq!(h.wait_exit(), Some(0));
    assert!(!dir.join("ctl.sock").exists(), "the control socket is removed at exit");
}
