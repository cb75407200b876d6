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

/// A worker's own children (here a `sleep 1000` started by the worker's shell) are in
/// its process group: they are killed when the worker has exited, so a stopped
/// `handoff` leaves none of them behind.
#[test]
fn a_workers_children_do_not_outlive_the_stop() {
    let script = format!("sleep 1000 & echo \"grandchild $!\" >&2; exec {} worker", handoff_bin());
    let mut h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1", "--", "sh", "-c", &script]);
    h.wait_ready(1);
    let line = h.wait_line("] grandchild ");
    let pid: u32 = line.rsplit(' ').next().and_then(|p| p.trim().parse().ok()).expect("the child's pid");
    assert!(h.processes().contains(&pid), "the sleep {pid} runs, with this run's marker");
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
    h.signal(Signal::TERM);
    assert_eq!(h.wait_exit(), Some(0));
    wait_no_processes(&h.marker, Duration::from_secs(5))
        .unwrap_or_else(|l| panic!("left behind after the stop: {l:?} (the worker's child was {pid})"));
    let line = h.wait_line("left processes running in its process group");
    assert!(line.contains("worker 0"), "{line}");
}
