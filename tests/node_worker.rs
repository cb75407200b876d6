//! Node workers (`examples/node/`: the stdlib Python bridge `handoff-node-bridge.py`
//! running `node server.js`, an `http.createServer` app fed by `handoff.js`) under
//! `handoff run`: exact round robin, DONE counted off, keep-alive and pipelining,
//! request bodies (chunked, `Expect: 100-continue`), client addresses from a PROXY
//! header, a graceful drain with requests in flight, a hung event loop caught by HEARTBEAT, and a crashed Node replaced.
//!
//! Node.js (and python3) are required, not optional: without them every test fails and
//! says what to install (CI installs them in `.ci/run`).

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;

use util::*;

const BRIDGE: &str = "examples/node/handoff-node-bridge.py";
const APP: &str = "examples/node/server.js";

/// Fails the test, saying what to install, unless `node` runs.
fn need_node() {
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("`node --version` failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => panic!("cannot run `node` ({e}): install Node.js (apt-get install nodejs); .ci/run does"),
    }
}

/// `handoff run` with `workers` bridges running `node server.js`, and the given policy
/// (plus `extra` master options).
fn node(workers: usize, policy: &str, extra: &[&str]) -> Handoff {
    need_node();
    let n = workers.to_string();
    let mut args = vec!["--listen", "127.0.0.1:0", "--workers", &n, "--policy", policy];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "python3", BRIDGE, "node", APP]);
    let h = Handoff::start(&args);
    h.wait_ready_slots(workers);
    h
}

#[test]
fn round_robin_exact_over_four_workers() {
    let h = node(4, "round-robin", &[]);
    let r = http_get(h.addr(), "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("hello from Node worker 0"), "{r:?}");
    assert_eq!(http_get(h.addr(), "/nope").unwrap().status, 404);
    // Two requests so far: the exact count starts at worker 2's turn.
    assert_round_robin_exact(&h, 4);
}

#[test]
fn done_counts_connections_off_for_least_conn() {
    // DONE travels handoff.js -> bridge -> master, one hop more than the client's FIN,
    // so a client that reconnects at once may still find its last connection counted
    // (the exact check of assert_least_conn_with_done would race). What must hold:
    // long connections land on different workers, and every short one is counted off.
    let dir = TempDir::new("node-least-conn");
    let control = dir.path_str("ctl.sock");
    let h = node(4, "least-conn", &["--control", &control]);
    let held: Vec<Held> = (0..3).map(|_| hold(h.addr())).collect();
    let busy: std::collections::HashSet<usize> = held.iter().map(|c| c.worker).collect();
    assert_eq!(busy.len(), 3, "long connections on three different workers");
    for _ in 0..20 {
        assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
    }
    // worker id -> its active connections
    let active = || -> std::collections::HashMap<usize, u64> {
        let st = status_json(&control);
        let workers = st["workers"].as_array().unwrap().iter();
        workers.map(|w| (w["id"].as_u64().unwrap() as usize, w["active"].as_u64().unwrap())).collect()
    };
    wait_until("only the three long connections counted", || active().values().sum::<u64>() == 3);
    let expected = (0..4).map(|w| (w, u64::from(busy.contains(&w)))).collect();
    assert_eq!(active(), expected, "the long connections' workers have one each, the fourth none");
    drop(held);
    wait_until("every connection counted off", || active().values().sum::<u64>() == 0);
}

#[test]
fn keep_alive_and_pipelining_on_one_connection() {
    let h = node(4, "round-robin", &[]);
    let mut held = hold(h.addr());
    for _ in 0..20 {
        assert_eq!(held.request(), held.worker, "a keep-alive connection stays with its worker");
    }
    // Two requests in one write: answered in order, on the same connection.
    held.stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_one_response(&mut held.stream).expect("first pipelined response").status, 200);
    assert_eq!(read_one_response(&mut held.stream).expect("second pipelined response").status, 404);
    assert_eq!(held.request(), held.worker);
}

#[test]
fn request_bodies_reach_the_app_whole() {
    let h = node(4, "round-robin", &[]);
    let body = numbered_lines(300_000);
    let r = post_chunked(h.addr(), "/echo", &body, 7919);
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(header(&r, "x-body-bytes"), Some("300000"), "{:?}", r.headers);
    assert!(r.body == body, "the chunked body came back changed");

    let body = numbered_lines(2_000_000);
    let r = post_expect_continue(h.addr(), "/echo", &body);
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(header(&r, "x-body-bytes"), Some("2000000"));
    assert!(r.body == body, "the body came back changed");
}

#[test]
fn sigterm_with_requests_in_flight_drains_without_a_failure() {
    let dir = TempDir::new("node-drain");
    let control = dir.path_str("ctl.sock");
    let h = node(4, "round-robin", &["--control", &control, "--shutdown-timeout", "20"]);
    drain_with_requests_in_flight(h, &control, "/sleep?ms=700");
}

#[test]
fn a_hung_event_loop_is_caught_by_heartbeat_and_replaced() {
    // handoff.js beats from a timer of the event loop; the bridge passes each beat on.
    // A request that busy-loops stops the beats, so the master (--worker-timeout 2)
    // replaces that worker, and Node goes with its bridge (PR_SET_PDEATHSIG).
    let h = node(2, "round-robin", &["--worker-timeout", "2"]);
    let first = served_by(h.addr());
    let slot = (first + 1) % 2; // round robin: the next connection goes there
    let bridge = h.worker_pid(slot);
    let nodes = children_of(bridge);
    assert_eq!(nodes.len(), 1, "one Node under bridge {bridge}: {nodes:?}");
    let addr = h.addr();
    let hung = std::thread::spawn(move || http_get(addr, "/hang"));
    h.wait_line(&format!("worker {slot} (pid {bridge}) sent nothing for"));
    let new = h.wait_log(&format!("a new worker {slot} ready"), |l| {
        slot_pids(l, "ready (pid ").get(&slot).copied().filter(|&p| p != bridge)
    });
    assert_ne!(new, bridge);
    assert!(hung.join().unwrap().is_err(), "the hung request was cut with its worker");
    wait_until("the hung Node to be gone", || !h.processes().contains(&nodes[0]));
    assert_every_slot_serves(&h, 2);
}

#[test]
fn a_crashed_node_takes_its_bridge_down_and_is_replaced() {
    let h = node(2, "round-robin", &[]);
    let bridge = h.worker_pid(0);
    let nodes = children_of(bridge);
    assert_eq!(nodes.len(), 1, "one Node under bridge {bridge}: {nodes:?}");
    // Pinned, then checked to be our run's process: the signal reaches it or nothing.
    let pinned = pin_marked(nodes[0], &h.marker).expect("Node carries the run's marker");
    rustix::process::pidfd_send_signal(&pinned, Signal::KILL).unwrap();
    h.wait_line(&format!("worker 0 (pid {bridge}) exited unexpectedly"));
    h.wait_line("node bridge 0 (pid"); // it says why: Node exited (signal 9)
    h.wait_log("a new worker 0 ready", |l| slot_pids(l, "ready (pid ").get(&0).copied().filter(|&p| p != bridge));
    assert_every_slot_serves(&h, 2);
}

#[test]
fn a_proxy_listener_gives_the_app_the_client_address() {
    need_node();
    let proxied = "127.0.0.1:0,proxy";
    let args = ["--listen", proxied, "--listen", "127.0.0.1:0", "--workers", "2", "--", "python3", BRIDGE, "node", APP];
    let h = Handoff::start(&args);
    h.wait_ready_slots(2);
    let (proxy, plain) = (h.tcp_addrs()[0], h.tcp_addrs()[1]);
    let via = |header: &[u8]| http_get_with(TcpStream::connect(proxy).unwrap(), "/ip", header).unwrap().body;
    assert_eq!(via(b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 443\r\n"), "192.0.2.9\n");
    assert_eq!(via(b"PROXY TCP6 2001:db8::9 2001:db8::1 5555 443\r\n"), "2001:db8::9\n");
    assert_eq!(via(b"PROXY UNKNOWN\r\n"), "127.0.0.1\n", "no address in the header: the socket's own");
    assert_eq!(http_get(plain, "/ip").unwrap().body, "127.0.0.1\n");
}
