//! The built-in worker's load-test knobs (`?cpu_ms=N`, `?sleep_ms=N`) exist only in
//! test mode (`--test-knobs`, TOML `test-knobs`): on a default `handoff run`, any client
//! could otherwise stop a worker with one request.

mod util;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

/// CPU time the knob asks for in the default run, and the most the worker may spend
/// answering it (a bound, far above the few ms an answer costs, far below the ask).
const ASKED_CPU_MS: u64 = 5000;
const SPENT_AT_MOST_MS: u64 = 1000;

fn cpu_ms(pid: u32) -> u64 {
    let hz = rustix::param::clock_ticks_per_second().max(1);
    cpu_ticks(pid) * 1000 / hz
}

#[test]
fn the_knobs_do_nothing_on_a_default_run() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1"]);
    let worker = *h.wait_ready_slots(1).get(&0).unwrap();
    let before = cpu_ms(worker);
    let r = http_get(h.addr(), &format!("/?cpu_ms={ASKED_CPU_MS}")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    // The same through hyper's keep-alive path (the one-shot path above may not be it).
    let mut held = hold(h.addr());
    held.stream.write_all(format!("GET /?cpu_ms={ASKED_CPU_MS} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
    assert_eq!(read_one_response(&mut held.stream).expect("an answer").status, 200);
    let spent = cpu_ms(worker) - before;
    assert!(spent < SPENT_AT_MOST_MS, "the worker spent {spent} ms of CPU on ?cpu_ms={ASKED_CPU_MS}");

    // `sleep_ms` (capped at 10 s when honoured) is not a wait either: a bound, not a
    // measure of speed (a loopback answer takes milliseconds).
    let t0 = Instant::now();
    held.stream.write_all(b"GET /?sleep_ms=10000 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_one_response(&mut held.stream).expect("an answer").status, 200);
    assert!(t0.elapsed() < Duration::from_secs(9), "?sleep_ms=10000 held the answer {:?}", t0.elapsed());
}

#[test]
fn test_knobs_turn_them_on() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1", "--test-knobs"]);
    let worker = *h.wait_ready_slots(1).get(&0).unwrap();
    // Lower bounds only: a wait or a busy loop cannot end before its time.
    let t0 = Instant::now();
    assert_eq!(http_get(h.addr(), "/?sleep_ms=300").unwrap().status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300), "?sleep_ms=300 answered after {:?}", t0.elapsed());
    let before = cpu_ticks(worker);
    let t0 = Instant::now();
    assert_eq!(http_get(h.addr(), "/?cpu_ms=300").unwrap().status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300), "?cpu_ms=300 answered after {:?}", t0.elapsed());
    assert!(cpu_ticks(worker) > before, "?cpu_ms=300 burnt no CPU");
}

#[test]
fn test_knobs_from_the_config_file() {
    let dir = TempDir::new("knobs");
    let file = dir.join("handoff.toml");
    std::fs::write(&file, "listen = [\"127.0.0.1:0\"]\nworkers = 1\ntest-knobs = true\n").unwrap();
    let h = Handoff::start(&["--config", file.to_str().unwrap()]);
    h.wait_ready(1);
    let t0 = Instant::now();
    assert_eq!(http_get(h.addr(), "/?sleep_ms=300").unwrap().status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300), "?sleep_ms=300 answered after {:?}", t0.elapsed());
}

#[test]
fn built_in_worker_flags_with_a_worker_command_are_refused() {
    for (args, says) in [
        (&["--test-knobs", "--", "true"][..], "--test-knobs"),
        (&["--static-no-symlinks"][..], "--static-no-symlinks needs --static"),
    ] {
        let out = Command::new(handoff_bin())
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{args:?}: {stderr}");
    }
}
