//! The Rust examples run as documented (`cargo run --example NAME -- 127.0.0.1:0`): four
//! forked workers serve, each names itself, and a SIGTERM drains them all to exit 0.
//! `cargo test` builds the examples before it runs this, so they cannot rot.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use util::*;

fn example(name: &str) -> Handoff {
    // target/debug/handoff -> target/debug/examples/NAME
    let bin: PathBuf = Path::new(handoff_bin()).parent().unwrap().join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test` (which builds the examples) or `cargo build --examples`",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.arg("127.0.0.1:0");
    let h = Handoff::start_command(cmd);
    h.wait_ready_slots(4);
    h
}

fn check(name: &str, body: &str) {
    let h = example(name);
    let r = http_get(h.addr(), "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(body), "{r:?}");
    // The default policy is least-conn: sequential requests find every worker idle,
    // and ties rotate, so eight requests reach all four workers.
    assert_eq!(served_counts(h.addr(), 8).len(), 4);
    stop_gracefully(h, 4);
}

#[test]
fn hello() {
    check("hello", "hello from worker");
}

#[test]
fn axum() {
    check("axum", "hello from axum");
}

#[test]
fn hyper() {
    check("hyper", "hello from hyper worker");
}

#[test]
fn hyper_as_an_external_worker() {
    let bin = Path::new(handoff_bin()).parent().unwrap().join("examples/hyper");
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--policy",
        "round-robin",
        "--",
        bin.to_str().unwrap(),
    ]);
    h.wait_ready_slots(2);
    assert_eq!(served_counts(h.addr(), 4), [(0, 2), (1, 2)].into_iter().collect());
    stop_gracefully(h, 2);
}
