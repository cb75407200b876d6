//! Round robin spreads sequential connections exactly evenly.

mod util;
use util::*;

#[test]
fn four_hundred_sequential_connections_give_each_of_four_workers_exactly_one_hundred() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "4", "--policy", "round-robin"]);
    h.wait_ready(4);
    let addr = h.addr();
    let workers = (0..400).map(|_| http_get(addr, "/").unwrap().worker.unwrap());
    assert_eq!(tally(workers, 4), [100, 100, 100, 100]);
}

#[test]
fn every_policy_spreads_like_round_robin_at_low_load() {
    for policy in ["least-conn", "p2c"] {
        let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "3", "--policy", policy]);
        h.wait_ready(3);
        let addr = h.addr();
        let workers = (0..60).map(|_| http_get(addr, "/").unwrap().worker.unwrap());
        assert_eq!(tally(workers, 3), [20, 20, 20], "{policy}");
    }
}
