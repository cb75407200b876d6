//! Workers that die at start-up: the master gives up with a clear error that quotes
//! the exit status and the worker's last stderr lines, instead of spinning.

mod util;
use std::time::Duration;
use util::*;

#[test]
fn a_worker_that_cannot_start_stops_the_master_with_its_stderr() {
    let mut h = Handoff::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--",
            "sh",
            "-c",
            "echo 'ImportError: no module named app' >&2; exit 3",
        ],
        |_| {},
    );
    assert_eq!(h.wait_exit(), Some(1));
    let log = h.lines().join("\n");
    assert!(log.contains("keeps dying at start-up (exit status 3"), "{log}");
    assert!(log.contains("| ImportError: no module named app"), "{log}");
    // It backed off between starts rather than spinning.
    assert!(log.contains("restarting worker") && log.contains("failed starts in a row"), "{log}");
    wait_no_processes(&h.marker, Duration::from_secs(5)).expect("nothing left behind");
}
