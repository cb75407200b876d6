//! Behind a proxy that pools its connections to the server (HAProxy `http-reuse
//! always`, a few pooled connections for many clients): with request-level balancing
//! the requests still spread over every worker, and a graceful reload under a steady
//! stream of requests fails none of them (the draining workers hand their idle pooled
//! connections back instead of closing them under HAProxy).

mod support_haproxy;
mod util;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support_haproxy::Haproxy;
use util::*;

fn pooling_haproxy(server: SocketAddr) -> Haproxy {
    Haproxy::start_config(|frontend, admin| {
        format!(
            "global
    maxconn 1024
    stats socket {admin} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s

frontend fe
    bind {frontend}
    default_backend be

backend be
    http-reuse always
    server s0 {server} pool-max-conn 4
",
            admin = admin.display()
        )
    })
}

/// A client request through HAProxy, on a new client connection: the worker that
/// answered it.
fn through(proxy: SocketAddr) -> std::io::Result<usize> {
    let r = http_get(proxy, "/")?;
    if r.status != 200 {
        return Err(std::io::Error::other(format!("status {}: {r:?}", r.status)));
    }
    r.worker.ok_or_else(|| std::io::Error::other(format!("no X-Handoff-Worker: {r:?}")))
}

#[test]
fn pooled_connections_still_spread_over_every_worker() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "4", "--hand-back", "always"]);
    h.wait_ready(4);
    let proxy = pooling_haproxy(h.addr());
    let served: Vec<usize> = (0..200).map(|i| through(proxy.frontend).unwrap_or_else(|e| panic!("{i}: {e}"))).collect();
    let per_worker: Vec<u64> = tally(served, 4).into_iter().map(|n| n as u64).collect();
    let fairness = handoff::__private::policy::jain(&per_worker);
    assert!(fairness >= 0.99, "requests per worker {per_worker:?}: Jain {fairness:.3}");
}

#[test]
fn a_reload_fails_no_request_through_a_pooling_proxy() {
    for mode in ["auto", "always"] {
        let dir = TempDir::new("reuse");
        let control = dir.path_str("control.sock");
        let h =
            Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--hand-back", mode, "--control", &control]);
        let old: std::collections::HashSet<u32> = h.wait_ready_slots(2).into_values().collect();
        let proxy = pooling_haproxy(h.addr());
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..3)
            .map(|_| {
                let (stop, front) = (stop.clone(), proxy.frontend);
                std::thread::spawn(move || {
                    let (mut ok, mut failed) = (0u64, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match through(front) {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        wait_until("requests to flow", || status_json(&control)["totals"]["dispatched"].as_u64() > Some(0));
        h.signal(Signal::HUP);
        wait_until("the old workers to exit", || h.children().iter().all(|p| !old.contains(p)));
        // And some more requests with the new workers only.
        let after = status_json(&control)["workers"].clone();
        std::thread::sleep(std::time::Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for c in clients {
            let (o, f) = c.join().unwrap();
            ok += o;
            failed.extend(f);
        }
        assert!(
            failed.is_empty(),
            "{mode}: {} of {} requests failed across the reload: {:?}\n{}",
            failed.len(),
            ok + failed.len() as u64,
            &failed[..failed.len().min(5)],
            proxy.log()
        );
        assert!(ok > 0, "{mode}: {after}");
    }
}
