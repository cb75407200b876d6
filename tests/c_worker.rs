//! The C reference worker (`examples/c/worker.c`), built here with `cc`, under
//! `handoff run -- ./worker`: the same correctness checks as the built-in worker.

mod support;

use support::*;

fn c_worker(policy: &str) -> (Handoff, TempDir) {
    let dir = TempDir::new("c-worker");
    let prog = build_c(&root().join("examples/c/worker.c"), &dir.0);
    let h = Handoff::run(&["--workers", "4", "--policy", policy, "--", prog.to_str().unwrap()]);
    (h, dir)
}

#[test]
fn round_robin_exact() {
    let (mut h, _dir) = c_worker("round-robin");
    h.wait_ready(4);
    assert_round_robin_exact(&h, 4);
}

#[test]
fn least_conn_counts_done() {
    let (mut h, _dir) = c_worker("least-conn");
    h.wait_ready(4);
    assert_least_conn_with_done(&h);
}

#[test]
fn replaced_when_killed() {
    let (mut h, _dir) = c_worker("round-robin");
    h.wait_ready(4);
    let (old, new) = kill_worker_and_wait_replacement(&mut h, 0, true);
    assert_ne!(old, new);
    assert_every_slot_serves(&h, 4);
}

#[test]
fn drains_on_sigterm() {
    let (mut h, _dir) = c_worker("round-robin");
    h.wait_ready(4);
    assert_eq!(tally(h.port, 4).len(), 4);
    stop_gracefully(h, 4);
}
