//! SIGTERM while slow requests are in flight: every one of them finishes; new
//! connections are refused only once the listener is closed; then the master exits.

mod util;
use std::time::Duration;
use util::*;

#[test]
fn sigterm_lets_slow_requests_finish() {
    let mut h =
        Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--shutdown-timeout", "20", "--test-knobs"]);
    h.wait_ready(2);
    let addr = h.addr();
    let slow: Vec<_> = (0..8).map(|_| std::thread::spawn(move || http_get(addr, "/?sleep_ms=700"))).collect();
    // Let the eight reach the workers (a connection still in the backlog when the
    // listener closes would be refused, which is what a stop means).
    std::thread::sleep(Duration::from_millis(200));
    h.signal(Signal::TERM);
    for s in slow {
        let r = s.join().unwrap().expect("an in-flight request is finished, not cut");
        assert_eq!(r.status, 200);
    }
    assert_eq!(h.wait_exit(), Some(0));
    wait_no_processes(&h.marker, Duration::from_secs(5)).expect("nothing left behind");
}

#[test]
fn shutdown_timeout_kills_workers_that_do_not_finish() {
    let mut h =
        Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1", "--shutdown-timeout", "0.5", "--test-knobs"]);
    h.wait_ready(1);
    let addr = h.addr();
    let stuck = std::thread::spawn(move || http_get(addr, "/?sleep_ms=10000"));
    std::thread::sleep(Duration::from_millis(200));
    h.signal(Signal::TERM);
    assert_eq!(h.wait_exit(), Some(0));
    h.wait_line("shutdown timeout: killing 1 workers");
    assert!(stuck.join().unwrap().is_err(), "the stuck request was cut when its worker was killed");
    wait_no_processes(&h.marker, Duration::from_secs(5)).expect("nothing left behind");
}

#[test]
fn ctrl_c_to_the_terminal_group_drains_instead_of_killing_workers() {
    // The master leads its own process group, as a shell job would; a terminal Ctrl-C
    // is SIGINT to that whole group. Workers have groups of their own, so only the
    // master gets it, and the request in flight finishes.
    let mut h = Handoff::start_with(&["--listen", "127.0.0.1:0", "--workers", "2", "--test-knobs"], |cmd| {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    });
    h.wait_ready(2);
    let addr = h.addr();
    let slow = std::thread::spawn(move || http_get(addr, "/?sleep_ms=700"));
    std::thread::sleep(Duration::from_millis(200));
    // The master is our child, not yet waited for, and leads the group: its pid names
    // the group and nothing else.
    let _ = rustix::process::kill_process_group(rustix::process::Pid::from_raw(h.pid() as i32).unwrap(), Signal::INT);
    let r = slow.join().unwrap().expect("the request in flight is finished, not killed");
    assert_eq!(r.status, 200);
    assert_eq!(h.wait_exit(), Some(0));
    let log = h.lines().join("\n");
    assert!(log.contains("SIGINT: stopping gracefully") && !log.contains("unexpectedly"), "{log}");
}
