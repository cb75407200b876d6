//! No descriptor leak: after 10 000 connections, with workers killed along the way,
//! the master holds exactly the descriptors it held at the start.

mod util;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use util::*;

#[test]
fn ten_thousand_connections_and_killed_workers_leave_no_descriptor_behind() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2"]);
    h.wait_ready(2);
    let master = h.pid();
    let before = fd_links(master);
    let addr = h.addr();
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                for _ in 0..2500 {
                    // Failures are expected only around the kills; the count is what matters here.
                    let _ = http_get(addr, "/");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for (k, at) in [2500u64, 5000, 7500].iter().enumerate() {
        wait_until("progress", || done.load(Ordering::Relaxed) >= *at);
        h.kill_worker(h.worker_pid(k % 2));
    }
    for c in clients {
        c.join().unwrap();
    }
    h.wait_ready(5);
    // The master may still be reaping the last replacement's start; give it a moment.
    wait_until("the master's descriptor count to settle", || fd_count(master) == before.len());
    assert_eq!(fd_count(master), before.len(), "before: {before:?}\nafter: {:?}", fd_links(master));
}
