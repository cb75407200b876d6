//! Readiness is proven, never guessed: a worker that has not shown it can serve (READY,
//! or for a worker that never sends it, ten seconds alive) is not trusted over one that
//! has. A reload to a broken deploy that dies a second into its start fails no request
//! and leaves the old workers serving; a slow-starting app's old workers drain only
//! after their successors' READY.

mod util;
use util::*;

/// A config file running `command` (a TOML array) on the listener at `port` (0: any).
fn config(port: u16, command: &str) -> String {
    format!("listen = [\"127.0.0.1:{port}\"]\nworkers = 2\npolicy = \"round-robin\"\ncommand = {command}\n")
}

const WORKER: &str = r#"["python3", "examples/python/worker.py"]"#;

#[test]
fn a_reload_to_workers_that_die_at_start_up_fails_no_request_and_keeps_the_old_ones() {
    let dir = TempDir::new("ready-broken");
    let cfg = dir.join("h.toml");
    std::fs::write(&cfg, config(0, WORKER)).unwrap();
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--config", cfg.to_str().unwrap(), "--control", &control]);
    let old: Vec<u32> = h.wait_ready_slots(2).into_values().collect();
    let load = Load::start(h.addr(), 4, "/");
    // A broken deploy: it never says READY and dies a second after it starts.
    std::fs::write(&cfg, config(h.addr().port(), r#"["sh", "-c", "sleep 1; exit 1"]"#)).unwrap();
    h.signal(Signal::HUP);
    h.wait_lines("exited unexpectedly", 3);
    let r = load.stop();
    assert_eq!(r.failed, 0, "requests failed during the broken reload: {:?}", &r.errors[..r.errors.len().min(5)]);
    assert!(r.ok > 0);
    // The old workers are still there, still serving.
    let children = h.children();
    assert!(old.iter().all(|p| children.contains(p)), "old workers {old:?}, now {children:?}");
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
}

#[test]
fn a_slow_starting_app_replaces_each_old_worker_only_after_its_ready() {
    let dir = TempDir::new("ready-slow");
    let cfg = dir.join("h.toml");
    std::fs::write(&cfg, config(0, WORKER)).unwrap();
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--config", cfg.to_str().unwrap(), "--control", &control]);
    let old = h.wait_ready_slots(2);
    let load = Load::start(h.addr(), 4, "/");
    // 2 s of imports before it speaks: far longer than the 300 ms after which a silent
    // worker may be taken for a minimal one.
    let slow = r#"["sh", "-c", "sleep 2; exec python3 examples/python/worker.py"]"#;
    std::fs::write(&cfg, config(h.addr().port(), slow)).unwrap();
    h.signal(Signal::HUP);
    wait_until("the old workers to exit", || {
        let children = h.children();
        old.values().all(|p| !children.contains(p))
    });
    let r = load.stop();
    assert_eq!(r.failed, 0, "requests failed during the reload: {:?}", &r.errors[..r.errors.len().min(5)]);
    // Each old worker exited only after a successor in its slot had said READY.
    let lines = h.lines();
    for (slot, pid) in &old {
        let exited = lines.iter().position(|l| l.contains(&format!("(pid {pid}) exited"))).expect("old worker exit");
        let ready_before = lines[..exited]
            .iter()
            .any(|l| l.contains(&format!("worker {slot} ready (pid ")) && !l.contains(&format!("(pid {pid},")));
        assert!(ready_before, "worker {slot} (pid {pid}) exited before a successor was READY:\n{lines:#?}");
    }
}

/// The health endpoint trusts what readiness trusts: minimal workers, which never send
/// READY, make it answer "ok" once they are proven (ten seconds alive), not 503 "no
/// worker ready" for ever while they serve.
#[test]
fn health_is_ok_once_minimal_workers_are_proven() {
    use std::io::{Read, Write};
    let hp = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let health = format!("127.0.0.1:{hp}");
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--health",
        &health,
        "--",
        "python3",
        "examples/python/minimal.py",
    ]);
    let get = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", hp)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200, "the minimal workers serve");
    let early = get();
    assert!(early.starts_with("HTTP/1.1 503") && early.contains("no worker ready"), "{early}");
    wait_until("health ok once the minimal workers are proven", || get().starts_with("HTTP/1.1 200"));
}
