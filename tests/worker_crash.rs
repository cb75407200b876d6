//! Workers killed under load: replaced, and no connection lost that had not reached
//! the dead worker.

mod util;
use std::time::Duration;
use util::*;

/// Connections the master reported lost with dead workers (already taken by them).
fn lost_in_log(h: &Handoff) -> u64 {
    h.lines().iter().filter_map(|l| l.split("; ").nth(1)?.split(" it was serving").next()?.parse::<u64>().ok()).sum()
}

#[test]
fn kill_a_worker_every_second_under_load() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "4", "--test-knobs"]);
    h.wait_ready(4);
    let load = Load::start(h.addr(), 4, "/?sleep_ms=5");
    for round in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        let slot = round % 4;
        let pid = h.worker_pid(slot);
        h.kill_worker(pid);
        // Its replacement in the same slot is started and announces READY.
        h.wait_lines(&format!("worker {slot} ready"), round / 4 + 2);
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = load.stop();
    let lost = lost_in_log(&h);
    assert!(r.ok > 100, "the load ran: {r:?}");
    assert!(
        r.failed <= lost,
        "{} requests failed but the master reported only {lost} connections taken by killed workers: {:?}",
        r.failed,
        r.errors
    );
    // Every slot is filled again and serves.
    let t = tally((0..40).map(|_| http_get(h.addr(), "/").unwrap().worker.unwrap()), 4);
    assert!(t.iter().all(|&n| n > 0), "{t:?}");
}

#[test]
fn a_killed_worker_is_replaced_in_its_slot() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--policy", "round-robin"]);
    h.wait_ready(2);
    let old = h.worker_pid(1);
    h.kill_worker(old);
    h.wait_lines("worker 1 ready", 2);
    let new = h.worker_pid(1);
    assert_ne!(old, new);
    let log = h.lines().join("\n");
    assert!(
        log.contains(&format!("worker 1 (pid {old}) exited unexpectedly"))
            && log.contains("killed by signal 9 (SIGKILL)"),
        "{log}"
    );
    let t = tally((0..10).map(|_| http_get(h.addr(), "/").unwrap().worker.unwrap()), 2);
    assert_eq!(t, [5, 5]);
}
