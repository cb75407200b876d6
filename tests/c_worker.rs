//! The C reference worker (`examples/c/worker.c`), built here with `cc`, under
//! `handoff run -- ./worker`: the same correctness checks as the built-in worker.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use util::*;

fn c_worker(policy: &str) -> (Handoff, TempDir) {
    let dir = TempDir::new("c-worker");
    let prog = build_c(&root().join("examples/c/worker.c"), &dir.0);
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "4",
        "--policy",
        policy,
        "--",
        prog.to_str().unwrap(),
    ]);
    (h, dir)
}

#[test]
fn round_robin_exact() {
    let (h, _dir) = c_worker("round-robin");
    h.wait_ready_slots(4);
    assert_round_robin_exact(&h, 4);
}

#[test]
fn least_conn_counts_done() {
    let (h, _dir) = c_worker("least-conn");
    h.wait_ready_slots(4);
    assert_least_conn_with_done(&h);
}

#[test]
fn replaced_when_killed() {
    let (h, _dir) = c_worker("round-robin");
    h.wait_ready_slots(4);
    let (old, new) = kill_worker_and_wait_replacement(&h, 0, true);
    assert_ne!(old, new);
    assert_every_slot_serves(&h, 4);
}

#[test]
fn drains_on_sigterm() {
    let (h, _dir) = c_worker("round-robin");
    h.wait_ready_slots(4);
    assert_eq!(served_counts(h.addr(), 4).len(), 4);
    stop_gracefully(h, 4);
}

/// Compiles a C file with `cc` into `dir`; returns the program.
fn build_c(src: &Path, dir: &Path) -> PathBuf {
    let out = dir.join(src.file_stem().unwrap());
    let status = Command::new("cc").args(["-O2", "-Wall", "-o"]).arg(&out).arg(src).status().expect("run cc");
    assert!(status.success(), "cc failed on {}", src.display());
    out
}
