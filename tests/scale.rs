//! SIGTTIN / SIGTTOU and `handoff ctl scale N`: add and remove workers under load,
//! without a failed request; `handoff status` follows.

mod util;
use util::*;

#[test]
fn scale_up_and_down_under_load() {
    let dir = TempDir::new("scale");
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--control", &control, "--test-knobs"]);
    h.wait_ready(2);
    let load = Load::start(h.addr(), 3, "/?sleep_ms=2");
    h.signal(Signal::TTIN);
    wait_until("3 workers", || {
        running_workers(&status_json(&control)) == 3 && status_json(&control)["workers_wanted"] == 3
    });
    // Two of the same signal sent at once merge into one (standard signals do not
    // queue): wait for the first to be taken before sending the second.
    h.signal(Signal::TTOU);
    wait_until("2 wanted", || status_json(&control)["workers_wanted"] == 2);
    h.signal(Signal::TTOU);
    wait_until("1 worker", || status_json(&control)["workers"].as_array().unwrap().len() == 1);
    let (ok, out) = ctl(&control, &["scale", "4"]);
    assert!(ok, "{out}");
    wait_until("4 workers", || running_workers(&status_json(&control)) == 4);
    let r = load.stop();
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    // Every slot serves.
    let t = tally((0..40).map(|_| http_get(h.addr(), "/").unwrap().worker.unwrap()), 4);
    assert!(t.iter().all(|&n| n > 0), "{t:?}");
    let (ok, out) = ctl(&control, &["scale", "0"]);
    assert!(!ok && out.contains("from 1 to 4096"), "{out}");
}

#[test]
fn drain_one_worker_replaces_it() {
    let dir = TempDir::new("drain");
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--control", &control]);
    h.wait_ready(2);
    let old = h.worker_pid(1);
    let (ok, out) = ctl(&control, &["drain", "1"]);
    assert!(ok, "{out}");
    h.wait_line(&format!("worker 1 (pid {old}) exited: exit status 0"));
    assert_ne!(h.worker_pid(1), old);
    let (ok, out) = ctl(&control, &["drain", "7"]);
    assert!(!ok && out.contains("no running worker 7"), "{out}");
}
