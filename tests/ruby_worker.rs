//! The Rack worker (`examples/ruby/rack_worker.rb` with `examples/ruby/config.ru`) under
//! `handoff run -- ruby ...`: exact round robin, DONE for least-conn, HTTP/1.1
//! keep-alive and pipelining, idle connections handed back (RETURN), request bodies (chunked, and `Expect: 100-continue`),
//! streamed responses, an app that raises, client addresses from a PROXY header, and a
//! graceful drain with requests in flight.
//!
//! Ruby with Rack is required, not optional: without it every test fails and says what
//! to install (CI installs it in `.ci/run`).

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;

use util::*;

const WORKER: &str = "examples/ruby/rack_worker.rb";
const APP: &str = "examples/ruby/config.ru";

/// Fails the test, saying what to install, unless `ruby` can load Rack.
fn need_ruby_with_rack() {
    let out = Command::new("ruby").args(["-e", "require 'rack'; print Rack.release"]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "ruby cannot load Rack ({}): install it (Debian/Ubuntu: apt-get install ruby-rack); .ci/run does",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => {
            panic!("cannot run `ruby` ({e}): install Ruby and Rack (apt-get install ruby ruby-rack); .ci/run does")
        }
    }
}

/// `handoff run` with 4 Rack workers and the given policy (plus `extra` master options).
fn rack(policy: &str, extra: &[&str]) -> Handoff {
    need_ruby_with_rack();
    let mut args = vec!["--listen", "127.0.0.1:0", "--workers", "4", "--policy", policy];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "ruby", WORKER, APP]);
    let h = Handoff::start(&args);
    h.wait_ready_slots(4);
    h
}

#[test]
fn round_robin_exact_over_four_workers() {
    let h = rack("round-robin", &[]);
    let r = http_get(h.addr(), "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("hello from Rack worker 0"), "{r:?}");
    assert_eq!(http_get(h.addr(), "/nope").unwrap().status, 404);
    // Two requests so far: the exact count starts at worker 2's turn.
    assert_round_robin_exact(&h, 4);
}

#[test]
fn least_conn_counts_done() {
    // Held connections stay with their workers only if they are never handed back.
    let h = rack("least-conn", &["--hand-back", "off"]);
    assert_least_conn_with_done(&h);
}

#[test]
fn keep_alive_and_pipelining_on_one_connection() {
    let h = rack("round-robin", &["--hand-back", "off"]);
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
fn hands_idle_connections_back_between_requests() {
    let h = rack("round-robin", &["--hand-back", "always"]);
    assert_one_connection_reaches_every_worker(&h, 4);
}

#[test]
fn a_slow_request_makes_its_worker_hand_back_in_auto_mode() {
    let dir = TempDir::new("ruby-auto");
    let control = dir.path_str("ctl.sock");
    let h = rack("round-robin", &["--control", &control, "--hand-back", "auto"]);
    let returned = || status_json(&control)["totals"]["returned"].as_u64().expect("totals.returned");
    let mut held = hold(h.addr());
    // 20 ms of CPU: the worker is slow for a second and hands the connection back after
    // the response; the next request on it is placed again, and answered.
    held.stream.write_all(b"GET /cpu?ms=20 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_one_response(&mut held.stream).expect("a response").status, 200);
    wait_until("the connection to come back to the master", || returned() >= 1);
    held.request();
    assert!(status_json(&control)["totals"]["continued"].as_u64().unwrap() >= 1);
}

#[test]
fn a_reload_hands_idle_keep_alive_connections_to_the_new_workers() {
    // auto: fast requests keep their connections in the workers; at the DRAIN of a
    // reload the old workers hand their idle ones back instead of closing them.
    let dir = TempDir::new("ruby-reload");
    let control = dir.path_str("ctl.sock");
    let h = rack("round-robin", &["--control", &control, "--hand-back", "auto"]);
    let old: std::collections::HashSet<u32> = h.wait_ready_slots(4).into_values().collect();
    let mut conns: Vec<Held> = (0..4).map(|_| hold(h.addr())).collect();
    h.signal(Signal::HUP);
    h.wait_lines("ready (pid", 8);
    wait_until("the old workers to exit", || h.children().iter().all(|p| !old.contains(p)));
    for c in &mut conns {
        c.request(); // still open, and served by a new worker
    }
    assert_eq!(status_json(&control)["totals"]["accepted"], 4, "no client had to reconnect");
}

#[test]
fn request_bodies_reach_the_app_whole() {
    let h = rack("round-robin", &[]);
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
fn streamed_responses_and_an_app_that_raises() {
    let h = rack("round-robin", &[]);
    // A body with no length is sent chunked (`http_get` returns the raw chunked body).
    let r = http_get(h.addr(), "/stream?n=3").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(header(&r, "transfer-encoding"), Some("chunked"), "{r:?}");
    assert_eq!(r.body, "7\r\nline 0\n\r\n7\r\nline 1\n\r\n7\r\nline 2\n\r\n0\r\n\r\n");
    let r = http_get(h.addr(), "/error").unwrap();
    assert_eq!(r.status, 500, "{r:?}");
    h.wait_line("the app raised RuntimeError: a failure in the app, on purpose");
    h.wait_line("config.ru:"); // the traceback, pointing into the app
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200, "the worker serves on after it");
}

#[test]
fn sigterm_with_requests_in_flight_drains_without_a_failure() {
    let dir = TempDir::new("ruby-drain");
    let control = dir.path_str("ctl.sock");
    let h = rack("round-robin", &["--control", &control, "--shutdown-timeout", "20"]);
    drain_with_requests_in_flight(h, &control, "/sleep?ms=700");
}

#[test]
fn a_proxy_listener_gives_the_app_the_client_address() {
    need_ruby_with_rack();
    let proxied = "127.0.0.1:0,proxy";
    let args = ["--listen", proxied, "--listen", "127.0.0.1:0", "--workers", "2", "--", "ruby", WORKER, APP];
    let h = Handoff::start(&args);
    h.wait_ready_slots(2);
    let (proxy, plain) = (h.tcp_addrs()[0], h.tcp_addrs()[1]);
    let via = |header: &[u8]| http_get_with(TcpStream::connect(proxy).unwrap(), "/ip", header).unwrap().body;
    assert_eq!(via(b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 443\r\n"), "192.0.2.9\n");
    assert_eq!(via(b"PROXY TCP6 2001:db8::9 2001:db8::1 5555 443\r\n"), "2001:db8::9\n");
    assert_eq!(via(b"PROXY UNKNOWN\r\n"), "127.0.0.1\n", "no address in the header: the socket's own");
    assert_eq!(http_get(plain, "/ip").unwrap().body, "127.0.0.1\n");
}
