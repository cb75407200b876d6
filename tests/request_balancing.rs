//! Balancing per request: workers hand idle keep-alive connections back to the master
//! (RETURN), which holds them until their next request and places that request by
//! policy. Pipelined bytes are never left behind, hung-up and timed-out idle
//! connections are closed, a stop or a reload keeps every request that had begun.

mod util;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use util::*;

fn start(extra: &[&str]) -> (Handoff, TempDir, String) {
    let dir = TempDir::new("rb");
    let control = dir.path_str("control.sock");
    let args = [&["--listen", "127.0.0.1:0", "--control", &control][..], extra].concat();
    let h = Handoff::start(&args);
    (h, dir, control)
}

fn idle_held(control: &str) -> u64 {
    status_json(control)["idle"].as_u64().expect("status.idle")
}

fn total(control: &str, key: &str) -> u64 {
    status_json(control)["totals"][key].as_u64().unwrap_or_else(|| panic!("totals.{key}"))
}

fn keep_alive(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn get(s: &mut TcpStream, path: &str) -> Response {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
    read_one_response(s).expect("a response on the keep-alive connection")
}

#[test]
fn one_keep_alive_connection_is_served_by_every_worker() {
    let (h, _dir, control) = start(&["--workers", "4", "--hand-back", "always"]);
    h.wait_ready(4);
    assert_one_connection_reaches_every_worker(&h, 4);
    let st = status_json(&control);
    assert_eq!(st["totals"]["accepted"], 1, "{st}");
    assert!(st["totals"]["continued"].as_u64().unwrap() >= 39, "{st}");
    assert!(st["totals"]["returned"].as_u64().unwrap() >= 39, "{st}");
}

#[test]
fn without_hand_back_a_connection_stays_with_its_worker() {
    for mode in ["off"] {
        let (h, _dir, control) = start(&["--workers", "4", "--hand-back", mode]);
        h.wait_ready(4);
        let mut s = keep_alive(h.addr());
        let first = get(&mut s, "/").worker;
        for _ in 0..40 {
            assert_eq!(get(&mut s, "/").worker, first, "{mode}");
        }
        assert_eq!(total(&control, "returned"), 0, "{mode}");
    }
}

/// Keep-alive connections until two of them are on the same worker: `(that worker,
/// the two, every other connection)`. Each has served one request, so it is idle at a
/// request boundary.
fn two_on_one_worker(addr: std::net::SocketAddr) -> (Option<usize>, TcpStream, TcpStream, Vec<TcpStream>) {
    let mut seen: Vec<(Option<usize>, TcpStream)> = Vec::new();
    for _ in 0..16 {
        let mut s = keep_alive(addr);
        let w = get(&mut s, "/").worker;
        if let Some(k) = seen.iter().position(|(o, _)| *o == w) {
            let (_, first) = seen.remove(k);
            return (w, first, s, seen.into_iter().map(|(_, s)| s).collect());
        }
        seen.push((w, s));
    }
    panic!("16 connections on 2 workers and never two on one");
}

/// The stall rescue: while one request holds a worker (1.5 s of CPU here), the
/// connections idle in that worker go back to the master (the worker's watch thread
/// RETURNs them after a few milliseconds), so their next requests are served by the
/// other worker at once, not after the long one; and the master sends the held worker
/// nothing new (BUSY) although it has the fewest connections.
#[test]
fn connections_idle_behind_a_long_request_are_served_by_another_worker() {
    let (h, _dir, control) = start(&["--workers", "2", "--test-knobs"]);
    h.wait_ready(2);
    let (held, mut long, mut idle, _others) = two_on_one_worker(h.addr());
    long.write_all(b"GET /?cpu_ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    wait_until("the idle connection to be rescued", || total(&control, "returned") >= 1);
    // Meanwhile the held worker's thread runs at a lower priority, where it may come
    // back from it: as root (the master then grants workers RLIMIT_NICE 20), always.
    let pid = status_json(&control)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"].as_u64().map(|i| i as usize) == held)
        .and_then(|w| w["pid"].as_u64())
        .expect("the held worker's pid") as u32;
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    // Relative to the nice value the workers inherit (this test's: `nice cargo test`
    // starts everything lower), 5 levels more, within the 19 that is the lowest.
    let base = nice_of(std::process::id());
    let expected = if root && base + 5 <= 19 { base + 5 } else { base };
    wait_until("the held thread's priority", || nice_of(pid) == expected);
    let r = get(&mut idle, "/");
    assert_eq!(r.status, 200);
    assert_ne!(r.worker, held, "served by the worker the long request holds");
    // A new client goes to the free worker, although the held one has fewer clients.
    let mut fresh = keep_alive(h.addr());
    assert_ne!(get(&mut fresh, "/").worker, held, "a new connection went to the BUSY worker");
    // The long request is answered, and its worker serves on: nothing broke the protocol.
    let r = read_one_response(&mut long).expect("the long request's response");
    assert_eq!((r.status, r.worker), (200, held));
    assert_eq!(get(&mut long, "/").status, 200);
    assert_eq!(get(&mut idle, "/").status, 200);
    let st = status_json(&control);
    let workers = st["workers"].as_array().unwrap();
    assert!(workers.iter().all(|w| w["restarts"] == 0), "{st}");
    // The stall is reported, and over by now.
    assert!(workers.iter().any(|w| w["stalls"].as_u64() >= Some(1)), "{st}");
    wait_until("the worker to say FREE", || {
        status_json(&control)["workers"].as_array().unwrap().iter().all(|w| w["busy"] == false)
    });
    assert_eq!(nice_of(pid), base, "the priority was not restored");
}

/// The nice value of a process's main thread (the built-in worker's serving thread).
fn nice_of(pid: u32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After "pid (comm) ": state is field 3; nice is field 19.
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(16).unwrap().parse().unwrap()
}

/// Sends `first` on a connection idle in some worker (`first` holds one whole request
/// and maybe more), then a 1 s request on another connection of that worker, waits
/// for the watch to act, sends `rest`, and asserts that the connection was left alone:
/// its next response (`GET /b`, completed by `rest`, or sent whole if `rest` is empty)
/// comes whole from its own worker, and no worker broke the protocol.
fn assert_not_rescued(first: &[u8], rest: &[u8], why: &str) {
    let (h, _dir, control) = start(&["--workers", "2", "--test-knobs"]);
    h.wait_ready(2);
    let (held, mut long, mut s, _others) = two_on_one_worker(h.addr());
    s.write_all(first).unwrap();
    assert_eq!(read_one_response(&mut s).expect("/a").status, 200);
    std::thread::sleep(Duration::from_millis(100));
    long.write_all(b"GET /?cpu_ms=1000 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    // Let the watch see the stall (it acts within milliseconds).
    std::thread::sleep(Duration::from_millis(300));
    let r = if rest.is_empty() {
        get(&mut s, "/b")
    } else {
        s.write_all(rest).unwrap();
        read_one_response(&mut s).expect("/b")
    };
    assert_eq!((r.status, r.worker), (200, held), "{why}: /b answered elsewhere, or broken");
    assert_eq!(read_one_response(&mut long).expect("the long one").status, 200);
    let st = status_json(&control);
    assert!(st["workers"].as_array().unwrap().iter().all(|w| w["restarts"] == 0), "{st}");
}

/// A connection whose last request had a body is not rescued (hyper may still be
/// reading or discarding that body), and is answered by its own worker. The body ends
/// like a request head, so that only the body rule keeps it.
#[test]
fn a_connection_whose_last_request_had_a_body_is_not_rescued() {
    assert_not_rescued(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\na\r\n\r\n", b"", "a body");
}

/// A connection whose next request has begun to arrive (pipelined: the rest of it comes
/// later) is not at a request boundary: the rescue leaves it alone, and it is answered,
/// whole, by its own worker once the long request is done.
#[test]
fn a_connection_with_part_of_a_next_request_is_not_rescued() {
    assert_not_rescued(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HT", b"TP/1.1\r\nHost: t\r\n\r\n", "pipelined");
}

/// The built-in worker's two paths: `/` is answered by its quick path (the connection
/// waits in its waiting room between requests), `/?sleep_ms=0` by hyper.
const PATHS: [&str; 2] = ["/", "/?sleep_ms=0"];

#[test]
fn an_idle_connection_goes_back_after_a_second_in_auto_mode() {
    let (h, _dir, control) = start(&["--workers", "2", "--test-knobs"]);
    h.wait_ready(2);
    let workers = h.worker_pids();
    let sockets = |p: u32| fd_links(p).iter().filter(|(_, l)| l.starts_with("socket:")).count();
    let before: Vec<usize> = workers.iter().map(|&p| sockets(p)).collect();
    for path in PATHS {
        let mut s = keep_alive(h.addr());
        assert_eq!(get(&mut s, path).status, 200);
        // Idle clients cost the workers nothing: after a second the master holds it.
        wait_until("the idle connection to come back to the master", || idle_held(&control) == 1);
        // The worker closes its copy right after the RETURN.
        wait_until("the workers to close their copies", || {
            workers.iter().map(|&p| sockets(p)).eq(before.iter().copied())
        });
        assert_eq!(get(&mut s, path).status, 200, "{path}");
        drop(s);
        wait_until("the closed client's connection to be dropped", || {
            idle_held(&control) == 0 && workers.iter().map(|&p| sockets(p)).eq(before.iter().copied())
        });
    }
}

/// The idle rule times one idle spell, not the connection's life: a client that sends a
/// request every 100 ms for 2.5 s is never idle for a second, so its connection stays
/// with its worker (it was handed back once a second, whatever the traffic, when the
/// timer ran from the first idle moment: under uniform keep-alive that cost a round
/// trip through the master per connection per second).
#[test]
fn a_busy_keep_alive_connection_is_not_handed_back_in_auto_mode() {
    let (h, _dir, control) = start(&["--workers", "2", "--test-knobs"]);
    h.wait_ready(2);
    for path in PATHS {
        let mut s = keep_alive(h.addr());
        let first = get(&mut s, path).worker;
        for _ in 0..13 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert_eq!(get(&mut s, path).worker, first, "{path}: served by another worker: handed back");
        }
        assert_eq!(total(&control, "returned"), 0, "{path}");
    }
}

#[test]
fn pipelined_requests_are_answered_in_order_and_no_byte_is_left_behind() {
    let (h, _dir, control) = start(&["--workers", "3", "--hand-back", "always"]);
    h.wait_ready(3);
    let mut s = keep_alive(h.addr());
    // Three whole requests and the start of a fourth in one write, then the rest of it
    // later: the worker must not hand the connection back with the fourth's first bytes
    // in its buffer.
    s.write_all(
        b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\nGET /c HTTP/1.1\r\nHost: t\r\n\r\nGET /d HT",
    )
    .unwrap();
    for i in 0..3 {
        assert_eq!(read_one_response(&mut s).map(|r| r.status), Some(200), "response {i}");
    }
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"TP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_one_response(&mut s).map(|r| r.status), Some(200), "the split request");
    // And the connection is still good afterwards, however often it moved.
    for _ in 0..10 {
        assert_eq!(get(&mut s, "/").status, 200);
    }
    drop(s);
    wait_until("the closed client's connection to be dropped", || idle_held(&control) == 0);
}

#[test]
fn a_client_that_hangs_up_while_held_is_closed_at_once() {
    let (h, _dir, control) = start(&["--workers", "2", "--hand-back", "always"]);
    h.wait_ready(2);
    let mut s = keep_alive(h.addr());
    assert_eq!(get(&mut s, "/").status, 200);
    wait_until("the connection to be held", || idle_held(&control) == 1);
    drop(s);
    wait_until("the hang-up to be seen", || idle_held(&control) == 0);
    assert_eq!(total(&control, "idle_hangups"), 1);
    let master_fds = fd_count(h.pid());
    // A request sent just before the FIN is still served.
    let mut s = keep_alive(h.addr());
    assert_eq!(get(&mut s, "/").status, 200);
    wait_until("the connection to be held", || idle_held(&control) == 1);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&rest));
    wait_until("the master's descriptors to come back", || fd_count(h.pid()) <= master_fds);
}

#[test]
fn an_idle_connection_is_closed_after_the_keepalive_timeout() {
    let (h, _dir, control) = start(&["--workers", "2", "--hand-back", "always", "--keepalive-timeout", "0.5"]);
    h.wait_ready(2);
    let mut s = keep_alive(h.addr());
    assert_eq!(get(&mut s, "/").status, 200);
    // The client sees the end of its idle connection, and the master counts it.
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0);
    assert_eq!(total(&control, "idle_timeouts"), 1);
    assert_eq!(idle_held(&control), 0);
}

#[test]
fn beyond_max_idle_the_oldest_are_closed_first() {
    let (h, _dir, control) = start(&["--workers", "2", "--hand-back", "always", "--max-idle", "3"]);
    h.wait_ready(2);
    let mut conns: Vec<TcpStream> = (0..5).map(|_| keep_alive(h.addr())).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        assert_eq!(get(s, "/").status, 200);
        wait_until("the connection to be held", || total(&control, "returned") == i as u64 + 1);
    }
    assert_eq!(idle_held(&control), 3);
    assert_eq!(total(&control, "idle_evicted"), 2);
    let mut b = [0u8; 1];
    for s in &mut conns[..2] {
        assert_eq!(s.read(&mut b).unwrap(), 0, "the oldest are closed");
    }
    for s in &mut conns[2..] {
        assert_eq!(get(s, "/").status, 200, "the newest are still served");
    }
}

#[test]
fn a_reload_keeps_held_connections_and_serves_them_with_the_new_workers() {
    let (h, _dir, control) = start(&["--workers", "2", "--hand-back", "always"]);
    let old: std::collections::HashSet<u32> = h.wait_ready_slots(2).into_values().collect();
    let mut conns: Vec<TcpStream> = (0..6).map(|_| keep_alive(h.addr())).collect();
    for s in &mut conns {
        assert_eq!(get(s, "/").status, 200);
    }
    h.signal(Signal::HUP);
    h.wait_lines("ready (pid", 4);
    wait_until("the old workers to exit", || h.children().iter().all(|p| !old.contains(p)));
    // Every connection opened before the reload is still open and served.
    for s in &mut conns {
        assert_eq!(get(s, "/").status, 200);
    }
    assert_eq!(total(&control, "accepted"), 6);
}

#[test]
fn a_stop_closes_idle_connections_and_serves_a_request_that_had_arrived() {
    let (mut h, _dir, control) = start(&["--workers", "2", "--hand-back", "always"]);
    h.wait_ready(2);
    let mut idle = keep_alive(h.addr());
    assert_eq!(get(&mut idle, "/").status, 200);
    wait_until("the connection to be held", || idle_held(&control) == 1);
    h.signal(Signal::TERM);
    assert_eq!(h.wait_exit(), Some(0));
    let mut b = [0u8; 1];
    assert_eq!(idle.read(&mut b).unwrap(), 0, "an idle connection is closed by the stop");
}

#[test]
fn held_connections_cost_the_workers_nothing_and_leave_no_descriptor_behind() {
    const CLIENTS: usize = 1000;
    let (h, _dir, control) = start(&["--workers", "2", "--hand-back", "always"]);
    h.wait_ready(2);
    let master_before = fd_count(h.pid());
    let workers = h.worker_pids();
    let worker_fds: Vec<usize> = workers.iter().map(|&p| fd_count(p)).collect();
    let mut conns: Vec<TcpStream> = (0..CLIENTS).map(|_| keep_alive(h.addr())).collect();
    for s in &mut conns {
        assert_eq!(get(s, "/").status, 200);
    }
    wait_until("every connection to be held", || idle_held(&control) == CLIENTS as u64);
    // The workers hold none of them.
    for (&p, &before) in workers.iter().zip(&worker_fds) {
        assert!(fd_count(p) <= before + 2, "worker {p}: {} descriptors, {before} before", fd_count(p));
    }
    assert!(fd_count(h.pid()) >= master_before + CLIENTS);
    drop(conns);
    wait_until("every idle connection to be closed", || idle_held(&control) == 0);
    wait_until("the master's descriptors to come back", || fd_count(h.pid()) <= master_before);
}

#[test]
fn the_master_leaves_sched_batch_while_it_places_requests() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let (h, _dir, _control) = start(&["--workers", "2", "--hand-back", "always"]);
    h.wait_ready(2);
    assert_eq!(sched_policy(h.pid()), Some(SCHED_BATCH));
    let mut s = keep_alive(h.addr());
    for _ in 0..3 {
        assert_eq!(get(&mut s, "/").status, 200);
    }
    // Every request of a kept-alive connection now waits for the master: it must not
    // wait for the CPU as well.
    wait_until("the master to run as SCHED_OTHER", || sched_policy(h.pid()) == Some(SCHED_OTHER));
    // A second after the last one, back to handing out connections in batches.
    wait_until("the master to run as SCHED_BATCH again", || sched_policy(h.pid()) == Some(SCHED_BATCH));
}

/// A held keep-alive connection `s` whose next request has been served with the master
/// stopped (SIGSTOP) once its worker had it: the worker has answered and handed the
/// connection back, and its RETURN waits in the channel, unread, while the master stays
/// stopped. Returns what the caller sends the master on with (SIGCONT).
fn return_unread(h: &Handoff, control: &str, s: &mut TcpStream) {
    let workers = h.worker_pids();
    assert_eq!(get(s, "/").status, 200);
    wait_until("the connection to be held", || idle_held(control) == 1);
    let fds: Vec<usize> = workers.iter().map(|&p| fd_count(p)).collect();
    // The next request goes to a worker that cannot run yet ...
    for &p in &workers {
        assert!(h.signal_worker(p, Signal::STOP), "worker {p}");
    }
    s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    wait_until("the request to be dispatched", || total(control, "dispatched") == 2);
    // ... and the master is stopped before the worker answers.
    h.signal(Signal::STOP);
    for &p in &workers {
        assert!(h.signal_worker(p, Signal::CONT), "worker {p}");
    }
    assert_eq!(read_one_response(s).map(|r| r.status), Some(200), "the answer to /a");
    wait_until("the worker to hand the connection back (its copy closed)", || {
        workers.iter().zip(&fds).all(|(&p, &n)| fd_count(p) <= n)
    });
}

#[test]
fn a_request_that_arrived_before_the_return_is_placed_at_once_in_order() {
    let (h, _dir, control) = start(&["--workers", "2", "--hand-back", "always"]);
    h.wait_ready(2);
    let mut s = keep_alive(h.addr());
    return_unread(&h, &control, &mut s);
    // Two requests at once, and only when they wait in the master's socket does the
    // master run again and read the RETURN.
    s.write_all(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\nGET /c HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (client, server) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
    wait_until("the requests to reach the master's socket", || tcp_socket(server, client).is_some_and(|(_, n)| n > 0));
    h.signal(Signal::CONT);
    // Both answered, in order, on the same connection, which goes on serving.
    for path in ["/b", "/c"] {
        assert_eq!(read_one_response(&mut s).map(|r| r.status), Some(200), "{path}");
    }
    assert_eq!(get(&mut s, "/").status, 200);
    wait_until("the connection to be held again", || idle_held(&control) == 1);
    let st = status_json(&control);
    let t = &st["totals"];
    assert_eq!(t["continued"], 3, "{st}");
    assert_eq!(t["continued_at_return"], 1, "the one that was there when the RETURN was read: {st}");
    assert_eq!(t["returned"], 4, "{st}");
    assert_eq!(t["idle_hangups"], 0, "{st}");
    assert_eq!(t["accepted"], 1, "{st}");
}

#[test]
fn a_client_gone_before_the_return_is_closed_as_a_hang_up() {
    let (h, _dir, control) = start(&["--workers", "2", "--hand-back", "always"]);
    h.wait_ready(2);
    let mut s = keep_alive(h.addr());
    return_unread(&h, &control, &mut s);
    let master_fds = fd_count(h.pid());
    let (client, server) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
    drop(s);
    const CLOSE_WAIT: u8 = 8;
    wait_until("the FIN to reach the master's socket", || {
        tcp_socket(server, client).is_some_and(|(st, _)| st == CLOSE_WAIT)
    });
    h.signal(Signal::CONT);
    wait_until("the hang-up to be counted", || total(&control, "idle_hangups") == 1);
    assert_eq!(idle_held(&control), 0, "a connection whose client left is not held");
    assert_eq!(total(&control, "continued"), 1);
    assert_eq!(total(&control, "continued_at_return"), 0);
    // The master received the connection with the RETURN and closed it at once.
    wait_until("the master's descriptors to come back", || fd_count(h.pid()) < master_fds + 1);
    wait_until("the master's end to be closed", || tcp_socket(server, client).is_none());
}
