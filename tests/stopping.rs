//! Stopping: signals stop the master and every worker, leaving no process behind.

mod util;
use std::time::Duration;
use util::*;

#[test]
fn sigterm_stops_master_and_workers() {
    let mut h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "3"]);
    h.wait_ready(3);
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
    assert_eq!(h.processes().len(), 4, "master and three workers");
    h.signal(Signal::TERM);
    assert_eq!(h.wait_exit(), Some(0));
    wait_no_processes(&h.marker, Duration::from_secs(5)).expect("no worker left after SIGTERM");
}

#[test]
fn sigint_and_sigquit_stop_too() {
    for sig in [Signal::INT, Signal::QUIT] {
        let mut h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2"]);
        h.wait_ready(2);
        h.signal(sig);
        assert_eq!(h.wait_exit(), Some(0), "{sig:?}");
        wait_no_processes(&h.marker, Duration::from_secs(5)).unwrap_or_else(|l| panic!("{sig:?} left {l:?}"));
    }
}

#[test]
fn workers_exit_when_the_master_is_killed() {
    let mut h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "3"]);
    h.wait_ready(3);
    h.signal(Signal::KILL);
    h.wait_exit();
    wait_no_processes(&h.marker, Duration::from_secs(2))
        .unwrap_or_else(|l| panic!("orphans after the master died: {l:?}"));
}
