//! Load-aware policies see each worker's active connections (from DONE), exactly.

mod util;
use util::*;

#[test]
fn short_connections_go_to_the_one_idle_worker_while_three_are_busy() {
    // p2c samples at random: it is not exact here, only least-conn promises this.
    for policy in ["least-conn"] {
        let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "4", "--policy", policy]);
        h.wait_ready(4);
        let addr = h.addr();
        let held: Vec<Held> = (0..3).map(|_| hold(addr)).collect();
        let mut busy: Vec<usize> = held.iter().map(|c| c.worker).collect();
        busy.sort();
        busy.dedup();
        assert_eq!(busy.len(), 3, "{policy}: the held connections should be on three workers: {busy:?}");
        let idle = (0..4).find(|w| !busy.contains(w)).unwrap();
        for i in 0..50 {
            let r = http_get(addr, "/").unwrap();
            assert_eq!(r.worker, Some(idle), "{policy}: short connection {i} went to a busy worker");
        }
        // Once the held connections end, the load evens out again. The workers report
        // DONE for them when they see the client's close, asynchronously; a worker that
        // had one is chosen again only after that DONE (least-conn), so once every
        // worker has served again, all are idle and the spread is exact.
        drop(held);
        let mut seen = [false; 4];
        wait_until("every worker to serve again", || {
            seen[http_get(addr, "/").unwrap().worker.unwrap()] = true;
            seen.iter().all(|s| *s)
        });
        let workers = (0..40).map(|_| http_get(addr, "/").unwrap().worker.unwrap());
        let t = tally(workers, 4);
        assert!(t.iter().all(|&n| n == 10), "{policy}: {t:?}");
    }
}
