//! A worker that hangs (reads nothing, says nothing) is detected, killed and replaced,
//! and the connections queued to it are served by others.

mod util;
use util::*;

#[test]
fn a_stalled_worker_is_replaced_and_its_queued_connections_are_served() {
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--policy",
        "round-robin",
        "--worker-timeout",
        "1",
        "--",
        handoff_bin(),
        "worker",
        "--misbehave",
        "stall",
        "--misbehave-slot",
        "0",
    ]);
    h.wait_ready(2);
    let stalled = h.worker_pid(0);
    // Round robin sends every other connection to the stalled worker. Each must still
    // be answered: handed on once the stalled worker is found out.
    let addr = h.addr();
    let clients: Vec<_> = (0..6).map(|_| std::thread::spawn(move || http_get(addr, "/"))).collect();
    for c in clients {
        let r = c.join().unwrap().expect("every connection is served");
        assert_eq!(r.status, 200);
        assert_eq!(r.worker, Some(1), "only the healthy worker can have answered");
    }
    // (waits, not a look at the log so far: the reader may lag the clients)
    h.wait_line(&format!("worker 0 (pid {stalled}) sent nothing for"));
    h.wait_line("handing on");
    h.wait_lines("worker 0 started", 2);
}

#[test]
fn a_worker_that_never_acks_is_replaced_and_its_connections_handed_on() {
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--policy",
        "round-robin",
        "--worker-timeout",
        "1",
        "--",
        handoff_bin(),
        "worker",
        "--misbehave",
        "no-ack",
        "--misbehave-slot",
        "0",
    ]);
    h.wait_ready(2);
    let addr = h.addr();
    // Every other connection goes to the worker that takes them and never ACKs; the
    // master still holds each one and hands it on once that worker is found out.
    let clients: Vec<_> = (0..6).map(|_| std::thread::spawn(move || http_get(addr, "/"))).collect();
    for c in clients {
        let r = c.join().unwrap().expect("every connection is served");
        assert_eq!(r.status, 200);
        assert_eq!(r.worker, Some(1));
    }
    h.wait_line("has not acknowledged a connection for");
}
