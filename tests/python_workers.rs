//! The Python reference workers (`examples/python/`) under `handoff run -- python3 ...`:
//! the same correctness checks as the built-in worker.

mod util;

use util::*;

const WORKER: &str = "examples/python/worker.py";
const MINIMAL: &str = "examples/python/minimal.py";
const WSGI: &str = "examples/python/wsgi.py";

fn python(policy: &str, script: &str, extra: &[&str]) -> Handoff {
    let mut args = vec!["--listen", "127.0.0.1:0", "--workers", "4", "--policy", policy, "--", "python3", script];
    args.extend_from_slice(extra);
    Handoff::start(&args)
}

#[test]
fn full_worker_round_robin_exact() {
    let h = python("round-robin", WORKER, &[]);
    h.wait_ready_slots(4);
    assert_round_robin_exact(&h, 4);
}

#[test]
fn full_worker_hands_idle_connections_back_between_requests() {
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "4",
        "--hand-back",
        "always",
        "--",
        "python3",
        WORKER,
    ]);
    h.wait_ready_slots(4);
    assert_one_connection_reaches_every_worker(&h, 4);
}

#[test]
fn full_worker_least_conn_counts_done() {
    // Without hand-back: in `auto` a worker that finds itself slow (a request over 2 ms,
    // as on a loaded machine) hands its idle connections back, and the held ones would
    // stop counting against it.
    let args = ["--listen", "127.0.0.1:0", "--workers", "4", "--policy", "least-conn", "--hand-back", "off"];
    let h = Handoff::start(&[&args[..], &["--", "python3", WORKER][..]].concat());
    h.wait_ready_slots(4);
    assert_least_conn_with_done(&h);
}

#[test]
fn full_worker_replaced_when_killed() {
    let h = python("round-robin", WORKER, &[]);
    h.wait_ready_slots(4);
    let (old, new) = kill_worker_and_wait_replacement(&h, 2, true);
    assert_ne!(old, new);
    assert_every_slot_serves(&h, 4);
}

#[test]
fn full_worker_drains_on_sigterm() {
    let h = python("round-robin", WORKER, &[]);
    h.wait_ready_slots(4);
    assert_eq!(served_counts(h.addr(), 4).len(), 4);
    stop_gracefully(h, 4);
}

#[test]
fn full_worker_heartbeat_keeps_a_busy_worker_alive() {
    // A worker that announced HEARTBEAT and holds a connection is killed if silent for
    // --worker-timeout; worker.py beats every half period, so it must survive this.
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--worker-timeout",
        "2",
        "--",
        "python3",
        WORKER,
    ]);
    let pid = h.wait_ready_slots(1)[&0];
    let mut held = hold(h.addr());
    std::thread::sleep(std::time::Duration::from_secs(3));
    // The same process still serves the same connection.
    let again = held.request();
    assert_eq!(again, 0);
    assert_eq!(h.wait_ready_slots(1)[&0], pid, "the worker was replaced");
    assert!(!h.lines().iter().any(|l| l.contains("exited")), "{:#?}", h.lines());
}

#[test]
fn minimal_worker_round_robin_exact() {
    // A minimal worker never sends READY: wait until all four have started.
    let h = python("round-robin", MINIMAL, &[]);
    h.wait_started_slots(4);
    assert_round_robin_exact(&h, 4);
}

#[test]
fn minimal_worker_replaced_when_killed() {
    let h = python("round-robin", MINIMAL, &[]);
    h.wait_started_slots(4);
    kill_worker_and_wait_replacement(&h, 1, false);
    assert_every_slot_serves(&h, 4);
}

#[test]
fn wsgi_app_round_robin_exact() {
    let h = python("round-robin", WSGI, &["app:app"]);
    h.wait_ready_slots(4);
    let r = http_get(h.addr(), "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "hello from a WSGI app\n");
    assert_eq!(http_get(h.addr(), "/nope").unwrap().status, 404);
    assert_eq!(http_get(h.addr(), "/health").unwrap().body, "ok\n");
    // Three requests so far: start the exact count from worker 3's turn.
    assert_eq!(served_by(h.addr()), 3);
    assert_round_robin_exact(&h, 4);
}

#[test]
fn wsgi_app_least_conn_counts_done() {
    let h = python("least-conn", WSGI, &["app:app"]);
    h.wait_ready_slots(4);
    assert_least_conn_with_idle_holders(&h);
}
