//! `--max-requests`: a worker is replaced after N connections, its successor READY
//! first, without a failed request.

mod util;
use util::*;

#[test]
fn workers_are_recycled_without_failing_a_request() {
    let h = Handoff::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--max-requests",
        "40",
        "--max-requests-jitter",
        "5",
    ]);
    h.wait_ready(2);
    let first: Vec<u32> = h.worker_pids();
    let load = Load::start(h.addr(), 3, "/");
    h.wait_lines("recycling it", 4);
    h.wait_ready(6);
    let r = load.stop();
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    for pid in first {
        h.wait_line(&format!("(pid {pid}) exited: exit status 0"));
    }
}
