//! A worker at its descriptor limit (the built-in one, the blocking Rust API, the Python
//! package, the Ruby worker): the kernel cannot install the descriptors of a CONN frame
//! (`MSG_CTRUNC`). The worker reports that frame's connections DONE without ACK (never
//! received); the master, which still holds them, hands them to another worker, or
//! with no other worker closes them unanswered (counted lost, `not_received`). The
//! worker keeps serving the connections it has, is not replaced, leaks nothing, and
//! takes new connections again once descriptors free up.

mod util;
use std::io::{Read, Write};
use std::net::TcpStream;
use util::*;

/// The lowest descriptor number `pid` has free: with `RLIMIT_NOFILE` at it, the
/// process can open nothing more (the kernel hands out the lowest free number, and
/// refuses any at or above the limit).
fn first_free_fd(pid: u32) -> u64 {
    let used: std::collections::BTreeSet<i32> = fd_links(pid).into_iter().map(|(n, _)| n).collect();
    (0..).find(|n| !used.contains(n)).unwrap() as u64
}

fn set_nofile(pid: u32, limit: u64) {
    let lim = rustix::process::Rlimit { current: Some(limit), maximum: Some(limit) };
    rustix::process::prlimit(rustix::process::Pid::from_raw(pid as i32), rustix::process::Resource::Nofile, lim)
        .unwrap();
}

/// Sends one request and says how the connection ended: `Ok(true)` answered,
/// `Ok(false)` closed without an answer; `Err` if it was neither within [`WAIT`].
fn request_outcome(addr: std::net::SocketAddr) -> Result<bool, String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) if got.is_empty() => Ok(false),
        Ok(_) if got.starts_with(b"HTTP/1.1 200") => Ok(true),
        Ok(_) => Err(format!("unexpected answer: {:?}", String::from_utf8_lossy(&got))),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(false),
        Err(e) => Err(format!("neither answered nor closed: {e}")),
    }
}

#[test]
fn a_worker_at_its_descriptor_limit_loses_only_new_connections_and_keeps_serving() {
    let dir = TempDir::new("fd-limit-worker");
    let control = dir.path_str("c.sock");
    // Hand-back off: the keep-alive clients stay with the worker between requests.
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1", "--hand-back", "off", "--control", &control]);
    h.wait_ready(1);
    let addr = h.addr();
    let worker = h.worker_pid(0);
    let mut held: Vec<Held> = (0..20).map(|_| hold(addr)).collect();
    assert!(held.iter().all(|c| c.worker == 0));
    let worker_fds = fd_count(worker);
    // A client has its answer before the master has read the ACK that came before it
    // (the master keeps its copy of a connection until then): count the master's
    // descriptors once it holds none.
    wait_until("the master read every ACK", || status_json(&control)["workers"][0]["unacked"] == 0);
    let master_fds = fd_count(h.pid());
    let master_links = fd_links(h.pid());
    set_nofile(worker, first_free_fd(worker));

    // Each new connection reaches a worker that cannot take its descriptor.
    for i in 0..10 {
        assert_eq!(request_outcome(addr), Ok(false), "connection {i} after the limit");
    }
    let line = h.wait_line("out of descriptors");
    assert!(line.contains("ulimit -n") && line.contains("--max-conns-per-worker"), "{line}");

    // The old clients are still served, by the same worker.
    for c in &mut held {
        assert_eq!(c.request(), 0);
    }
    assert_eq!(h.worker_pids(), vec![worker], "the worker was replaced");
    assert!(h.lines().iter().all(|l| !l.contains("exited")), "{:#?}", h.lines());

    // The master's counts are right (the lost ones were reported DONE, none waits for
    // an ACK; with no other worker to take them, they count as lost, not received) and
    // neither side kept a descriptor of the lost connections.
    let st = status_json(&control);
    assert_eq!(st["totals"]["lost_not_received"], 10, "{}", st["totals"]);
    assert_eq!(st["totals"]["retried_not_received"], 0, "{}", st["totals"]);
    let w = &st["workers"][0];
    assert_eq!(
        (w["pid"].as_u64(), w["active"].as_u64(), w["unacked"].as_u64()),
        (Some(worker.into()), Some(20), Some(0)),
        "{w}"
    );
    assert_eq!(fd_count(worker), worker_fds, "worker: {:?}", fd_links(worker));
    let deadline = std::time::Instant::now() + WAIT;
    while fd_count(h.pid()) != master_fds {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the master's descriptors back to before: before {master_links:?}, now {:?}",
            fd_links(h.pid())
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    // Descriptors free up (five clients leave): new connections are served again.
    held.truncate(15);
    wait_until("the worker closed the five", || fd_count(worker) == worker_fds - 5);
    assert_eq!(request_outcome(addr), Ok(true));
    for c in &mut held {
        assert_eq!(c.request(), 0);
    }
    assert_eq!(h.worker_pids(), vec![worker]);
}

/// Two workers, round robin, one of them at its descriptor limit: the connections it
/// cannot receive (DONE without ACK) are handed to the other one, so every client is
/// served; they count as retried, none as lost, and the worker is not replaced.
#[test]
fn connections_a_worker_cannot_receive_are_served_by_another() {
    let dir = TempDir::new("fd-limit-retry");
    let control = dir.path_str("c.sock");
    let mut args = vec!["--listen", "127.0.0.1:0", "--workers", "2", "--policy", "round-robin"];
    args.extend(["--hand-back", "off", "--control", &control]);
    let h = Handoff::start(&args);
    let pids = h.wait_ready_slots(2);
    let addr = h.addr();
    let worker = pids[&0];
    set_nofile(worker, first_free_fd(worker));
    for i in 0..10 {
        let r = http_get(addr, "/").unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!((r.status, r.worker), (200, Some(1)), "connection {i}: {r:?}");
    }
    h.wait_line("out of descriptors");
    let st = status_json(&control);
    let t = &st["totals"];
    let retried = t["retried_not_received"].as_u64().unwrap();
    assert!(retried >= 1, "round robin sent none to worker 0: {t}");
    assert_eq!(t["lost_not_received"], 0, "{t}");
    let w0 = st["workers"].as_array().unwrap().iter().find(|w| w["id"] == 0).unwrap().clone();
    assert_eq!(
        (w0["pid"].as_u64(), w0["active"].as_u64(), w0["unacked"].as_u64()),
        (Some(worker.into()), Some(0), Some(0))
    );
    let mut now = h.worker_pids();
    now.sort();
    let mut first: Vec<u32> = pids.into_values().collect();
    first.sort();
    assert_eq!(now, first, "a worker was replaced");
}

/// The same through the blocking API (`Incoming`, here in the `hello` example's forked
/// workers, a thread per connection): clients that are halfway through a request when
/// every worker reaches its limit get their answer; the connections that came after
/// are closed unanswered; no worker is replaced.
#[test]
fn the_blocking_worker_api_loses_only_new_connections_too() {
    let bin = std::path::Path::new(handoff_bin()).parent().unwrap().join("examples/hello");
    assert!(bin.exists(), "{} is missing: run `cargo test` (which builds the examples)", bin.display());
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("127.0.0.1:0");
    let h = Handoff::start_command(cmd);
    let workers: Vec<u32> = h.wait_ready_slots(4).into_values().collect();
    let addr = h.addr();
    let fds = || workers.iter().map(|&w| fd_count(w)).sum::<usize>();
    let before = fds();
    // Half a request head each: every one holds a thread of some worker.
    let mut halfway: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect(addr);
            s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    wait_until("the workers hold the 8 connections", || fds() == before + 8);
    for &w in &workers {
        set_nofile(w, first_free_fd(w));
    }
    for i in 0..8 {
        assert_eq!(request_outcome(addr), Ok(false), "connection {i} after the limit");
    }
    h.wait_line("out of descriptors");
    for s in &mut halfway {
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"Host: t\r\n\r\n").unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 200") && got.contains("hello from worker"), "{got:?}");
    }
    let mut now = h.worker_pids();
    now.sort();
    let mut first = workers.clone();
    first.sort();
    assert_eq!(now, first, "a worker was replaced");
}

/// An external worker (`argv` after `handoff run ... --`) serving keep-alive clients
/// when it reaches its limit: a truncated CONN loses that frame's connections only,
/// reported DONE (the master's counts stay right); the clients it has are still served
/// and it is not replaced.
fn external_worker_loses_only_new_connections(argv: &[&str]) {
    let dir = TempDir::new("fd-limit-external");
    let control = dir.path_str("c.sock");
    let mut args = vec!["--listen", "127.0.0.1:0", "--workers", "1", "--hand-back", "off", "--control", &control, "--"];
    args.extend_from_slice(argv);
    let h = Handoff::start_with(&args, |cmd| {
        cmd.env("PYTHONPATH", root().join("python/src"));
    });
    h.wait_ready(1);
    let addr = h.addr();
    let worker = h.worker_pid(0);
    let mut held: Vec<Held> = (0..5).map(|_| hold(addr)).collect();
    set_nofile(worker, first_free_fd(worker));

    for i in 0..4 {
        assert_eq!(request_outcome(addr), Ok(false), "connection {i} after the limit");
    }
    let line = h.wait_line("out of descriptors");
    assert!(line.contains("ulimit -n"), "{line}");
    for c in &mut held {
        assert_eq!(c.request(), 0);
    }
    assert_eq!(h.worker_pids(), vec![worker], "the worker was replaced");
    let st = status_json(&control);
    let w = &st["workers"][0];
    assert_eq!((w["active"].as_u64(), w["unacked"].as_u64()), (Some(5), Some(0)), "{w}");
}

/// The Python package's WSGI server (a thread per connection), serving the Flask app.
#[test]
fn the_python_wsgi_worker_loses_only_new_connections_too() {
    external_worker_loses_only_new_connections(&[
        "python3",
        "-m",
        "handoff_worker.wsgi",
        "--app-dir",
        "tests/python_apps",
        "flask_app:app",
        "--worker-header",
    ]);
}

/// The Rack worker of `examples/ruby/`.
#[test]
fn the_ruby_rack_worker_loses_only_new_connections_too() {
    external_worker_loses_only_new_connections(&["ruby", "examples/ruby/rack_worker.rb", "examples/ruby/config.ru"]);
}
