//! What the async worker API reports to its master, seen from a stand-in master on a
//! real channel (a SOCK_SEQPACKET pair) with real TCP clients on 127.0.0.1.
//!
//! The async API coalesces ACK and DONE per scheduler pass. These tests hold it to the
//! two orderings the master relies on, whatever the batching: a connection's ACK
//! reaches the master before the client sees anything of it (before the worker has
//! read a byte of it, but for the first look at a batch, which reads first and ACKs
//! after), and its DONE before the client sees the end (so `least-conn` counts
//! exactly); and they check that the batching happens, and that a connection the
//! first look finishes is reported once (SERVED: ACK and DONE in one frame).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff::__private::sys::fdpass;
use handoff::__private::wire::{self, ConnItem, Frame, HandBack};
use handoff::__private::worker::http::{serve_incoming, HttpConfig};
use handoff::worker::{AsyncIncoming, WorkerEnv};

const CLIENTS: u64 = 8;

/// The built-in HTTP worker on `chan`, in a current-thread runtime, as `handoff run`
/// runs it, until DRAIN. With a static root its quick path is off: every connection
/// goes through `AsyncIncoming` and hyper, as in a library user's worker.
fn spawn_worker(chan: OwnedFd, cfg: HttpConfig) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            // This test master speaks the protocol without RETURN (tests/request_balancing.rs
            // has the master that does).
            let env = WorkerEnv { id: 0, workers: 1, heartbeat: Duration::from_secs(60), hand_back: HandBack::Off };
            let incoming = AsyncIncoming::from_fd(chan, env).expect("worker starts");
            serve_incoming(incoming, Arc::new(cfg)).await.expect("serves until DRAIN");
        });
    })
}

/// A stand-in master with the built-in worker on the other end of its channel, past
/// READY, and a listener for the test's clients.
fn start() -> (OwnedFd, std::thread::JoinHandle<()>, Vec<Frame>, TcpListener) {
    start_with(None)
}

fn start_with(
    static_root: Option<std::path::PathBuf>,
) -> (OwnedFd, std::thread::JoinHandle<()>, Vec<Frame>, TcpListener) {
    start_cfg(HttpConfig::new(0, static_root))
}

/// [`start`] with this header timeout.
fn start_header_timeout(header_timeout: Duration) -> (OwnedFd, std::thread::JoinHandle<()>, Vec<Frame>, TcpListener) {
    let mut cfg = HttpConfig::new(0, None);
    cfg.header_timeout = header_timeout;
    start_cfg(cfg)
}

fn start_cfg(mut cfg: HttpConfig) -> (OwnedFd, std::thread::JoinHandle<()>, Vec<Frame>, TcpListener) {
    cfg.test_knobs = true; // some requests ask for `?cpu_ms=` or `?sleep_ms=`
    let (master, worker) = fdpass::seqpacket_pair().expect("socketpair");
    rustix::io::ioctl_fionbio(&master, true).expect("non-blocking");
    let thread = spawn_worker(worker, cfg);
    let mut log = Vec::new();
    wait_for(&master, &mut log, "READY", |log| !log.is_empty());
    assert!(matches!(log[0], Frame::Ready { .. }), "first frame is READY, got {:?}", log[0]);
    (master, thread, log, TcpListener::bind("127.0.0.1:0").expect("bind"))
}

/// DRAIN, and the worker must end (within 10 s: its connections are all finished).
fn finish(master: &OwnedFd, thread: std::thread::JoinHandle<()>) {
    send_drain(master);
    ended(thread);
}

/// The worker, sent DRAIN, must end within 10 s of its last connection.
fn ended(thread: std::thread::JoinHandle<()>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !thread.is_finished() {
        assert!(Instant::now() < deadline, "the worker did not end within 10 s of DRAIN and its last connection");
        std::thread::sleep(Duration::from_millis(5));
    }
    thread.join().expect("the worker ends on DRAIN");
}

/// Reads until the server closes `c` (10 s at most), which it must do without an answer
/// (or with hyper's 408).
fn closed_without_answer(c: &mut TcpStream, what: &str) {
    let mut out = Vec::new();
    c.read_to_end(&mut out).expect("closed within the read timeout (10 s)");
    assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 408"), "{what} got {out:?}");
}

/// Every frame the worker has sent so far, in order (the channel is non-blocking).
fn drain(chan: &OwnedFd, log: &mut Vec<Frame>) {
    let mut buf = vec![0u8; wire::MAX_FRAME_LEN];
    loop {
        match fdpass::recv_with_fds(chan, &mut buf, 0) {
            Ok(got) if got.len > 0 => log.push(wire::decode(&buf[..got.len]).expect("a valid frame")),
            Ok(_) => panic!("the worker closed its channel"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("channel: {e}"),
        }
    }
}

/// Reads frames into `log` until `until` holds (10 s at most).
fn wait_for(chan: &OwnedFd, log: &mut Vec<Frame>, what: &str, until: impl Fn(&[Frame]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        drain(chan, log);
        if until(log) {
            return;
        }
        assert!(Instant::now() < deadline, "no {what} from the worker in 10 s: {log:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends one CONN frame with `socks` (ids from `first`) and closes the sender's copies.
fn send_conns(chan: &OwnedFd, first: u64, socks: Vec<OwnedFd>) {
    send_conns_from(chan, first, socks, None);
}

/// [`send_conns`] for connections that came through a balancer with this PROXY header.
fn send_conns_from(
    chan: &OwnedFd,
    first: u64,
    socks: Vec<OwnedFd>,
    addrs: Option<handoff::__private::proxy::ProxyHeader>,
) {
    let items: Vec<ConnItem> = (first..first + socks.len() as u64)
        .map(|id| ConnItem { id, listener: 0, sock: wire::sock::TCP, flags: 0, addrs })
        .collect();
    let mut frame = Vec::new();
    wire::encode_conn(&mut frame, &items);
    let fds: Vec<_> = socks.iter().map(|fd| fd.as_fd()).collect();
    fdpass::send_with_fds(chan.as_fd(), &frame, &fds).expect("send CONN");
}

fn send_drain(chan: &OwnedFd) {
    let mut frame = Vec::new();
    wire::encode_empty(&mut frame, wire::kind::DRAIN);
    fdpass::send_with_fds(chan.as_fd(), &frame, &[]).expect("send DRAIN");
}

/// A client that has sent `request`, and the server's end of it.
fn client(listener: &TcpListener, request: &str) -> (TcpStream, OwnedFd) {
    let mut c = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    c.write_all(request.as_bytes()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (c, OwnedFd::from(listener.accept().expect("accept").0))
}

/// Position of the first frame that ACKs (or, `done`, reports DONE for) `id`: SERVED
/// does both.
fn position(log: &[Frame], id: u64, done: bool) -> Option<usize> {
    log.iter().position(|f| match f {
        Frame::Ack(ids) if !done => ids.contains(&id),
        Frame::Done(ids) if done => ids.contains(&id),
        Frame::Served(ids) => ids.contains(&id),
        _ => false,
    })
}

#[test]
fn async_worker_reports_done_before_the_fin_in_one_frame_for_connections_ending_together() {
    let (master, thread, mut log, listener) = start();

    // Clients that have sent their whole request before the worker gets the sockets: the
    // worker can serve all of them in one pass.
    // `cpu_ms=0` keeps these off the quick path (this is hyper's connection handling)
    // without a timer that could split them over two ticks.
    let (mut clients, accepted): (Vec<_>, Vec<_>) = (0..CLIENTS)
        .map(|_| client(&listener, "GET /?cpu_ms=0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
        .unzip();
    // Our copies close after the send, as the master's do after the ACK.
    send_conns(&master, 0, accepted);

    for (id, client) in clients.iter_mut().enumerate() {
        let id = id as u64;
        let mut resp = Vec::new();
        client.read_to_end(&mut resp).expect("the response, then the end of the stream");
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "client {id} got {resp:?}");
        // The client has its answer and its FIN: both reports must already be queued
        // in the master's end of the channel.
        drain(&master, &mut log);
        let ack = position(&log, id, false);
        let done = position(&log, id, true);
        assert!(done.is_some(), "client {id} saw the end before the master got its DONE: {log:?}");
        if let Some(ack) = ack {
            assert!(ack < done.unwrap(), "an ACK after the DONE for {id}: {log:?}");
        }
        assert!(ack.is_some(), "client {id} was answered (its request read) before any ACK: {log:?}");
    }

    let count = |done: bool| -> (usize, Vec<u64>) {
        let mut frames = 0;
        let mut ids = Vec::new();
        for f in &log {
            match f {
                Frame::Ack(x) if !done => {
                    frames += 1;
                    ids.extend(x);
                }
                Frame::Done(x) if done => {
                    frames += 1;
                    ids.extend(x);
                }
                _ => {}
            }
        }
        ids.sort_unstable();
        (frames, ids)
    };
    let all: Vec<u64> = (0..CLIENTS).collect();
    let (ack_frames, acked) = count(false);
    let (done_frames, done) = count(true);
    assert_eq!(acked, all, "each connection ACKed exactly once");
    assert_eq!(done, all, "each connection DONE exactly once");
    // One CONN frame: one ACK. Connections that end in the same pass share a DONE
    // (one frame here; a few if the scheduler splits them), where a per-connection
    // report would send eight.
    assert_eq!(ack_frames, 1, "one ACK for one CONN frame: {log:?}");
    assert!(done_frames <= 2, "{done_frames} DONE frames for {CLIENTS} connections that ended together: {log:?}");

    finish(&master, thread);
}

#[test]
fn async_worker_acks_a_connection_while_its_request_is_still_being_served() {
    // A static root turns the quick path (which ACKs a whole batch before it reads)
    // off: the ACK has to come from the connection's own first read.
    let root = std::env::temp_dir().join(format!("handoff-reports-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "hello\n").unwrap();
    let (master, thread, mut log, listener) = start_with(Some(root.clone()));

    // The worker reads this request, then takes 3 s to answer: its ACK must not wait
    // for the end of the connection (nor for a heartbeat, 60 s away here).
    let (mut slow, fd) =
        client(&listener, "GET /hello.txt?sleep_ms=3000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    send_conns(&master, 7, vec![fd]);
    wait_for(&master, &mut log, "ACK", |log| position(log, 7, false).is_some());
    slow.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let early = slow.peek(&mut byte);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the ACK came only with the answer ({early:?}): {log:?}"
    );
    assert_eq!(position(&log, 7, true), None, "DONE before the answer: {log:?}");

    slow.set_nonblocking(false).unwrap();
    let mut resp = Vec::new();
    slow.read_to_end(&mut resp).expect("the answer");
    assert!(resp.starts_with(b"HTTP/1.1 200 OK") && resp.ends_with(b"\r\nhello\n"), "{resp:?}");
    drain(&master, &mut log);
    assert!(position(&log, 7, true).is_some(), "DONE before the FIN: {log:?}");
    finish(&master, thread);
    let _ = std::fs::remove_dir_all(&root);
}

/// Reads a whole `Connection: close` answer; returns (head lines without the date, body).
fn answer(c: &mut TcpStream) -> (Vec<String>, String) {
    let mut out = Vec::new();
    c.read_to_end(&mut out).expect("an answer, then the end of the stream");
    let out = String::from_utf8(out).expect("text");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {out:?}"));
    assert!(head.to_ascii_lowercase().contains("\r\ndate: "), "no date header: {head:?}");
    (head_lines(head), body.to_string())
}

/// An answer's head as lines to compare: the status line, then the headers but the
/// date (which differs from one second to the next), sorted.
fn head_lines(head: &str) -> Vec<String> {
    let mut lines: Vec<String> =
        head.lines().filter(|l| !l.to_ascii_lowercase().starts_with("date:")).map(str::to_string).collect();
    lines[1..].sort();
    lines
}

/// The reference answer to `method /`: the same request kept off the quick path
/// (`sleep_ms=0`), so hyper answers it; sent as connection `id`.
fn hyper_answer(master: &OwnedFd, listener: &TcpListener, method: &str, id: u64) -> (Vec<String>, String) {
    let (mut c, fd) =
        client(listener, &format!("{method} /?sleep_ms=0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
    send_conns(master, id, vec![fd]);
    answer(&mut c)
}

#[test]
fn quick_path_answers_like_hyper_and_reports_the_batch_served_in_one_frame() {
    let (master, thread, mut log, listener) = start();

    let (hyper_head, hyper_body) = hyper_answer(&master, &listener, "GET", 100);
    let (hyper_head_only, hyper_no_body) = hyper_answer(&master, &listener, "HEAD", 101);
    assert!(hyper_no_body.is_empty());

    // Complete `Connection: close` requests, already sent when the sockets arrive.
    let (mut clients, socks): (Vec<_>, Vec<_>) = (0..CLIENTS)
        .map(|i| {
            let method = if i == 3 { "HEAD" } else { "GET" };
            client(&listener, &format!("{method} /x?a=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
        })
        .unzip();
    drain(&master, &mut log);
    let before = log.len();
    send_conns(&master, 0, socks);
    for (id, c) in clients.iter_mut().enumerate() {
        let (head, body) = answer(c);
        drain(&master, &mut log);
        let done = position(&log, id as u64, true);
        assert!(done.is_some(), "client {id} saw the end before the master got its DONE: {log:?}");
        assert_eq!(position(&log, id as u64, false), done, "{id} reported otherwise than SERVED: {log:?}");
        if id == 3 {
            assert_eq!((head, body), (hyper_head_only.clone(), String::new()), "HEAD");
        } else {
            assert_eq!((head, body), (hyper_head.clone(), hyper_body.clone()), "GET, client {id}");
        }
    }
    // One frame for the batch where ACK and DONE would be two: the master reads one.
    let frames = &log[before..];
    let served: Vec<u64> = frames
        .iter()
        .flat_map(|f| match f {
            Frame::Served(ids) => ids.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(frames.len(), 1, "one SERVED frame for the batch: {frames:?}");
    assert_eq!(served.len(), CLIENTS as usize, "{frames:?}");
    finish(&master, thread);
}

#[test]
fn requests_the_quick_path_declines_reach_hyper_whole() {
    let (master, thread, mut log, listener) = start();

    // Half a request when the worker looks (it reads it), the rest afterwards.
    let (mut partial, fd) = client(&listener, "GET / HTTP/1.1\r\nHost: t\r\n");
    send_conns(&master, 0, vec![fd]);
    wait_for(&master, &mut log, "ACK", |log| position(log, 0, false).is_some());
    std::thread::sleep(Duration::from_millis(50)); // let the worker's look find only half
    partial.write_all(b"Connection: close\r\n\r\n").unwrap();
    let (head, body) = answer(&mut partial);
    assert!(head[0].starts_with("HTTP/1.1 200"), "{head:?}");
    assert!(body.starts_with("hello from handoff worker 0"), "{body:?}");

    // A complete `Connection: close` request whose target hyper refuses: hyper's 400,
    // not the quick path's 200.
    for (id, target) in [(10, "?a"), (11, "http://[::1")] {
        let (mut c, fd) = client(&listener, &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
        send_conns(&master, id, vec![fd]);
        let (head, _) = answer(&mut c);
        assert!(head[0].starts_with("HTTP/1.1 400"), "{target}: {head:?}");
    }

    // Keep-alive: the first request, read by the look, is answered by hyper, which then
    // serves the next one on the same connection.
    let (mut kept, fd) = client(&listener, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    send_conns(&master, 1, vec![fd]);
    let mut first = [0u8; 1024];
    let n = kept.read(&mut first).expect("the first answer");
    let first = String::from_utf8_lossy(&first[..n]).to_string();
    assert!(first.starts_with("HTTP/1.1 200") && !first.contains("connection: close"), "{first:?}");
    kept.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let (head, _) = answer(&mut kept);
    assert!(head[0].starts_with("HTTP/1.1 200"), "{head:?}");
    drain(&master, &mut log);
    assert!(position(&log, 1, true).is_some(), "DONE before the FIN: {log:?}");

    finish(&master, thread);
}

#[test]
fn connections_with_nothing_to_read_yet_are_answered_when_their_request_comes() {
    let (master, thread, mut log, listener) = start();
    let (hyper_head, hyper_body) = hyper_answer(&master, &listener, "GET", 100);

    // Connected, silent when the worker gets them: the first look finds nothing (the
    // worker looks right after its ACK; the clients write 50 ms later). Then a whole
    // request, half a request and the rest, and no request at all.
    let (mut whole, fd0) = client(&listener, "");
    let (mut halves, fd1) = client(&listener, "");
    let (mut head, fd2) = client(&listener, "");
    let (gone, fd3) = client(&listener, "");
    // Our own reference to the first one's server socket, to count what it sends.
    let server = fd0.try_clone().expect("dup");
    let before = tcp_info(&server).0;
    send_conns(&master, 0, vec![fd0, fd1, fd2, fd3]);
    wait_for(&master, &mut log, "ACK", |log| position(log, 0, false).is_some());
    std::thread::sleep(Duration::from_millis(50));
    whole.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    halves.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n").unwrap();
    head.write_all(b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    gone.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(answer(&mut whole), (hyper_head.clone(), hyper_body.clone()), "a whole request");
    // The quick path's answer and FIN share a segment; with the kernel's ACK of the
    // request (unless the answer carried it) that is two at most. hyper's answer and
    // FIN are two segments, three with that ACK.
    let sent = tcp_info(&server).0 - before;
    assert!(sent <= 2, "{sent} segments for the ACK, the answer and the FIN: not the quick path's one for both");
    drain(&master, &mut log);
    assert!(position(&log, 0, true).is_some(), "DONE before the FIN: {log:?}");
    let (head_only, nothing) = answer(&mut head);
    assert_eq!((head_only, nothing), (hyper_head.clone(), String::new()), "HEAD");
    std::thread::sleep(Duration::from_millis(50)); // the worker has read the first half
    halves.write_all(b"Connection: close\r\n\r\n").unwrap();
    assert_eq!(answer(&mut halves), (hyper_head.clone(), hyper_body.clone()), "a request in two halves");
    // The client that left without a request is DONE too, with no answer.
    wait_for(&master, &mut log, "DONE for every connection", |log| (0..4).all(|id| position(log, id, true).is_some()));

    // A drain while a connection waits for its first request: it is still served.
    let (mut late, fd) = client(&listener, "");
    send_conns(&master, 9, vec![fd]);
    wait_for(&master, &mut log, "ACK", |log| position(log, 9, false).is_some());
    send_drain(&master);
    std::thread::sleep(Duration::from_millis(50));
    late.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let (late_head, late_body) = answer(&mut late);
    assert!(late_head[0].starts_with("HTTP/1.1 200"), "{late_head:?}");
    assert_eq!(late_body, hyper_body, "the request that came after the drain");
    // Drained and with no connection left, the worker ends by itself.
    ended(thread);
}

#[test]
fn a_client_that_never_completes_a_request_head_is_closed_after_the_header_timeout() {
    let (master, thread, mut log, listener) = start_header_timeout(Duration::from_millis(300));
    // Silent (it waits in the second look), and half a head (hyper has it, replayed).
    let (mut silent, fd0) = client(&listener, "");
    let (mut half, fd1) = client(&listener, "GET / HTTP/1.1\r\nHost: t\r\n");
    let t0 = Instant::now();
    send_conns(&master, 0, vec![fd0, fd1]);
    for (id, c) in [&mut silent, &mut half].into_iter().enumerate() {
        closed_without_answer(c, &format!("connection {id}"));
        assert!(t0.elapsed() >= Duration::from_millis(300), "connection {id} closed before its time");
        drain(&master, &mut log);
        assert!(position(&log, id as u64, true).is_some(), "DONE before the FIN for {id}: {log:?}");
    }
    finish(&master, thread);
}

#[test]
fn time_spent_waiting_for_the_first_bytes_counts_against_the_first_header_timeout_only() {
    let (master, thread, mut log, listener) = start_header_timeout(Duration::from_secs(2));
    // Both silent for 1.5 s, in the waiting room. Then `half` sends half a head: hyper
    // has it from then on, and closes it when the 2 s from the start are up (not 2 s
    // after the half head). `kept` sends a whole keep-alive request, answered (by
    // the quick path, which keeps the connection in the room), and a second one 1 s
    // after that answer, past the first head's limit but within the header timeout of
    // every later head: answered too.
    let (mut half, fd0) = client(&listener, "");
    let (mut kept, fd1) = client(&listener, "");
    let t0 = Instant::now();
    send_conns(&master, 0, vec![fd0, fd1]);
    wait_for(&master, &mut log, "ACK", |log| position(log, 1, false).is_some());
    std::thread::sleep(Duration::from_millis(1500));
    half.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    kept.write_all(request).unwrap();
    let mut buf = [0u8; 4096];
    let n = kept.read(&mut buf).expect("the first answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    let answered = Instant::now();

    closed_without_answer(&mut half, "half a head");
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(2), "closed after {took:?}, before its time");
    assert!(took < Duration::from_millis(3300), "closed after {took:?}: the wait was not counted (that gives 3.5 s)");
    drain(&master, &mut log);
    assert!(position(&log, 0, true).is_some(), "DONE before the FIN: {log:?}");

    std::thread::sleep(Duration::from_millis(1000).saturating_sub(answered.elapsed()));
    kept.write_all(request).unwrap();
    let n = kept.read(&mut buf).unwrap_or(0);
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "the second request: {:?}", String::from_utf8_lossy(&buf[..n]));
    drop(kept);
    finish(&master, thread);
}

#[test]
fn a_crowd_of_silent_clients_waits_without_holding_up_the_others_and_is_closed_in_time() {
    let (master, thread, mut log, listener) = start_header_timeout(Duration::from_millis(1000));
    // 200 clients that never speak (ids 0..200), in frames of 20.
    let mut silent = Vec::new();
    for frame in 0..10u64 {
        let (clients, fds): (Vec<_>, Vec<_>) = (0..20).map(|_| client(&listener, "")).unzip();
        let sent = Instant::now();
        send_conns(&master, frame * 20, fds);
        silent.extend(clients.into_iter().map(|c| (c, sent)));
    }
    wait_for(&master, &mut log, "ACK for the silent ones", |log| (0..200).all(|id| position(log, id, false).is_some()));
    // Meanwhile others are served: 40 whose request is there already (the first look)
    // and 40 that speak only once they are waiting too (a second look, among the crowd).
    let request = "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let (mut ready, fds): (Vec<_>, Vec<_>) = (0..40).map(|_| client(&listener, request)).unzip();
    send_conns(&master, 1000, fds);
    let (mut late, fds): (Vec<_>, Vec<_>) = (0..40).map(|_| client(&listener, "")).unzip();
    send_conns(&master, 2000, fds);
    wait_for(&master, &mut log, "ACK for the late ones", |log| {
        (2000..2040).all(|id| position(log, id, false).is_some())
    });
    for c in &mut late {
        c.write_all(request.as_bytes()).unwrap();
    }
    for (i, c) in ready.iter_mut().chain(late.iter_mut()).enumerate() {
        let (head, body) = answer(c);
        assert!(head[0].starts_with("HTTP/1.1 200") && body.starts_with("hello"), "client {i}: {head:?} {body:?}");
    }
    // The crowd: closed without an answer once the header timeout is up, DONE for each.
    for (i, (c, sent)) in silent.iter_mut().enumerate() {
        let mut out = Vec::new();
        c.read_to_end(&mut out).expect("closed within the read timeout (10 s)");
        assert!(out.is_empty(), "silent client {i} got {out:?}");
        assert!(sent.elapsed() >= Duration::from_millis(1000), "silent client {i} closed after {:?}", sent.elapsed());
    }
    wait_for(&master, &mut log, "DONE for every connection", |log| {
        (0..200).chain(1000..1040).chain(2000..2040).all(|id| position(log, id, true).is_some())
    });
    finish(&master, thread);
}

#[test]
fn a_first_head_complete_in_time_is_answered_even_if_the_worker_looks_late() {
    let (master, thread, mut log, listener) = start_header_timeout(Duration::from_secs(2));
    // 20 clients wait in the room, send half a head at 0.2 s (hyper's from then on,
    // with 1.8 s left) and the rest at 0.8 s. From 0.7 s a request keeps the worker's
    // one thread busy for 1.5 s: when it next looks, each head is complete and its
    // deadline has passed too. A head that came in time is answered.
    let (mut clients, fds): (Vec<_>, Vec<_>) = (0..20).map(|_| client(&listener, "")).unzip();
    let t0 = Instant::now();
    send_conns(&master, 0, fds);
    wait_for(&master, &mut log, "ACK", |log| (0..20).all(|id| position(log, id, false).is_some()));
    let at = |ms: u64| std::thread::sleep(Duration::from_millis(ms).saturating_sub(t0.elapsed()));
    at(200);
    for c in &mut clients {
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    }
    at(700);
    let (mut busy, fd) = client(&listener, "GET /?cpu_ms=1500 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    send_conns(&master, 100, vec![fd]);
    at(800);
    for c in &mut clients {
        c.write_all(b"Connection: close\r\n\r\n").unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut out = Vec::new();
        c.read_to_end(&mut out).expect("an answer within the read timeout (10 s)");
        assert!(out.starts_with(b"HTTP/1.1 200"), "client {i}: {:?}", String::from_utf8_lossy(&out));
    }
    let (head, _) = answer(&mut busy);
    assert!(head[0].starts_with("HTTP/1.1 200"), "{head:?}");
    finish(&master, thread);
}

#[test]
fn a_drain_does_not_lift_the_first_heads_limit() {
    let (master, thread, mut log, listener) = start_header_timeout(Duration::from_secs(2));
    // Silent for 1.7 s, then half a head, then DRAIN: still closed when its 2 s are up,
    // not after the drain's grace for a first request (5 s).
    let (mut c, fd) = client(&listener, "");
    let t0 = Instant::now();
    send_conns(&master, 0, vec![fd]);
    wait_for(&master, &mut log, "ACK", |log| position(log, 0, false).is_some());
    std::thread::sleep(Duration::from_millis(1700));
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    send_drain(&master);
    closed_without_answer(&mut c, "half a head");
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(2), "closed after {took:?}, before its time");
    assert!(took < Duration::from_millis(3500), "closed after {took:?}: the drain lifted the limit (that gives 3.7 s)");
    ended(thread);
}

/// TCP_INFO of a socket: (segments sent, bytes sent and not yet acknowledged).
#[allow(unsafe_code, reason = "getsockopt(TCP_INFO): neither std nor rustix reads it")]
fn tcp_info(fd: &impl AsFd) -> (u32, u32) {
    use std::os::fd::AsRawFd;
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: tcp_info is plain integers, so all zeroes is a valid value; getsockopt
    // writes at most `len` bytes into it, and `fd` is open for the call.
    let (rc, info) = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let rc = libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc, info)
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    (info.tcpi_segs_out, info.tcpi_unacked)
}

/// Waits until everything the client sent is acknowledged: the server's ACK of the
/// request is out, so counting the server's segments from now counts only its answer.
fn wait_acknowledged(client: &TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tcp_info(client).1 != 0 {
        assert!(Instant::now() < deadline, "the request was never acknowledged");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn quick_path_answer_and_fin_leave_in_one_segment() {
    let (master, thread, _log, listener) = start();
    for id in 0..3 {
        let (mut c, fd) = client(&listener, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        wait_acknowledged(&c);
        // Our own reference to the server's socket, to count what it sends: the
        // worker's shutdown sends the FIN all the same.
        let server = fd.try_clone().expect("dup");
        let before = tcp_info(&server).0;
        send_conns(&master, id, vec![fd]);
        let (head, body) = answer(&mut c);
        assert!(head[0].starts_with("HTTP/1.1 200") && body.starts_with("hello"), "{head:?} {body:?}");
        let sent = tcp_info(&server).0 - before;
        assert_eq!(sent, 1, "connection {id}: the answer and the FIN took {sent} segments, not one");
    }
    finish(&master, thread);
}

#[test]
fn connections_from_a_balancer_take_the_quick_path_with_their_client() {
    use handoff::__private::proxy::ProxyHeader;
    let (master, thread, _log, listener) = start();
    let named = ProxyHeader {
        source: Some("203.0.113.7:40001".parse().unwrap()),
        destination: Some("198.51.100.1:443".parse().unwrap()),
    };
    // A header without addresses (a balancer's own health check): the socket's peer.
    let local = ProxyHeader { source: None, destination: None };
    for (id, addrs) in [(0, named), (10, local)] {
        // hyper's answer for the same connection, as the reference.
        let (mut c, fd) = client(&listener, "GET /?sleep_ms=0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let peer = c.local_addr().unwrap();
        send_conns_from(&master, id + 100, vec![fd], Some(addrs));
        let reference = answer(&mut c);
        let expected = format!("x-handoff-client: {}", addrs.source.unwrap_or(peer));
        assert!(reference.0.contains(&expected), "hyper's answer: {reference:?}");

        let (mut c, fd) = client(&listener, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        wait_acknowledged(&c);
        let expected = format!("x-handoff-client: {}", addrs.source.unwrap_or(c.local_addr().unwrap()));
        let server = fd.try_clone().expect("dup");
        let before = tcp_info(&server).0;
        send_conns_from(&master, id, vec![fd], Some(addrs));
        let (head, body) = answer(&mut c);
        assert!(head.contains(&expected), "{expected:?} in {head:?}");
        let others = |h: &[String]| -> Vec<String> {
            h.iter().filter(|l| !l.starts_with("x-handoff-client:")).cloned().collect()
        };
        assert_eq!((others(&head), body), (others(&reference.0), reference.1.clone()), "as hyper answers");
        let sent = tcp_info(&server).0 - before;
        assert_eq!(sent, 1, "{sent} segments for the answer and the FIN: not the quick path's one");
    }
    finish(&master, thread);
}

/// A library user's worker (the async API, no quick path) that takes one connection
/// and holds it unread until the test has seen its ACK; `peek` says whether it looks
/// at the stream through `get_ref` first. Returns when the master end has seen the
/// ACK, then the DONE once the connection is dropped.
fn hold_one(heartbeat: Duration, peek: bool) {
    let (master, worker) = fdpass::seqpacket_pair().expect("socketpair");
    rustix::io::ioctl_fionbio(&master, true).expect("non-blocking");
    let (release, released) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let env = WorkerEnv { id: 0, workers: 1, heartbeat, hand_back: HandBack::Off };
            let mut incoming = AsyncIncoming::from_fd(worker, env).expect("worker starts");
            let held = incoming.accept().await.expect("a connection").expect("no error");
            if peek {
                // What a user could read through the inner stream: the ACK goes first.
                let _ = held.get_ref().peer_addr();
            }
            // Hold it, unread, until the test has seen the ACK; then drop it, and keep
            // the channel open until the test has seen the DONE.
            let released = tokio::task::spawn_blocking(move || {
                released.recv().expect("released");
                released
            })
            .await
            .expect("join");
            drop(held);
            tokio::task::spawn_blocking(move || released.recv()).await.expect("join").expect("done");
        });
    });
    let mut log = Vec::new();
    wait_for(&master, &mut log, "READY", |log| !log.is_empty());
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (_client, fd) = client(&listener, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    send_conns(&master, 5, vec![fd]);
    wait_for(&master, &mut log, "ACK of the held connection", |log| position(log, 5, false).is_some());
    assert_eq!(position(&log, 5, true), None, "DONE while still held: {log:?}");
    release.send(()).unwrap();
    wait_for(&master, &mut log, "DONE once dropped", |log| position(log, 5, true).is_some());
    release.send(()).unwrap();
    thread.join().expect("the worker thread ends");
}

#[test]
fn a_connection_held_unread_is_acked_by_the_next_heartbeat() {
    // A worker that takes a connection and does not touch it yet (a queue, a
    // concurrency limit): its ACK must not wait for the first read, or the master
    // would count it un-ACKed until --worker-timeout and kill the worker.
    hold_one(Duration::from_millis(100), false);
}

#[test]
fn a_connection_looked_at_through_get_ref_is_acked_at_once() {
    // The heartbeat is a minute away: only get_ref itself can have sent the ACK.
    hold_one(Duration::from_secs(60), true);
}

/// Reads one keep-alive answer (its head, then the body its content-length gives; none
/// for `HEAD`); returns (head lines without the date, body), as [`answer`] does.
fn kept_answer(c: &mut TcpStream, head_only: bool) -> (Vec<String>, String) {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => out.push(byte[0]),
            other => {
                panic!("the connection ended in an answer's head ({other:?}): {:?}", String::from_utf8_lossy(&out))
            }
        }
    }
    let head = String::from_utf8(out).expect("text");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse().expect("a length"))
        .unwrap_or(0);
    let mut body = vec![0u8; if head_only { 0 } else { len }];
    c.read_exact(&mut body).expect("the body");
    (head_lines(head.trim_end()), String::from_utf8(body).expect("text"))
}

/// The keep-alive quick path: requests on a kept-alive connection are answered as hyper
/// answers them (the same head and body), each in its turn, and the connection waits
/// between them in the waiting room under the header timeout, counted from the last
/// answer: a client that asks again in time is served, one that stays silent is closed,
/// DONE first.
#[test]
fn kept_alive_requests_are_answered_like_hyper_and_a_silent_one_is_closed_after_the_header_timeout() {
    let timeout = Duration::from_millis(500);
    let (master, thread, mut log, listener) = start_header_timeout(timeout);
    // hyper's answers to the same requests kept alive (`sleep_ms=0` keeps them off the
    // quick path).
    let (mut reference, fd) = client(&listener, "GET /?sleep_ms=0 HTTP/1.1\r\nHost: t\r\n\r\n");
    send_conns(&master, 100, vec![fd]);
    let hyper_get = kept_answer(&mut reference, false);
    reference.write_all(b"HEAD /?sleep_ms=0 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let hyper_head = kept_answer(&mut reference, true);
    assert!(!hyper_get.0.iter().any(|l| l.starts_with("connection")), "{hyper_get:?}");

    let (mut c, fd) = client(&listener, "GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
    send_conns(&master, 0, vec![fd]);
    assert_eq!(kept_answer(&mut c, false), hyper_get, "the first request");
    // Each next request comes within the timeout of the last answer, 1.2 timeouts in all.
    for i in 0..6 {
        std::thread::sleep(timeout / 5);
        let (request, head_only) = if i == 2 { ("HEAD", true) } else { ("GET", false) };
        c.write_all(format!("{request} /{i} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n").as_bytes())
            .unwrap();
        let expected = if head_only { &hyper_head } else { &hyper_get };
        assert_eq!(&kept_answer(&mut c, head_only), expected, "request {i}");
    }
    let answered = Instant::now();
    drain(&master, &mut log);
    assert_eq!(position(&log, 0, true), None, "DONE for a connection still served: {log:?}");
    closed_without_answer(&mut c, "a silent kept-alive connection");
    assert!(answered.elapsed() >= timeout, "closed {:?} after its last answer", answered.elapsed());
    drain(&master, &mut log);
    assert!(position(&log, 0, true).is_some(), "DONE before the FIN: {log:?}");
    drop(reference);
    finish(&master, thread);
}

/// A drain ends a kept-alive connection that waits between requests at once (DONE, then
/// the FIN: in mode `off` it cannot go back to the master), while a request in progress
/// on another connection is finished first; then the worker ends.
#[test]
fn a_drain_closes_kept_alive_connections_between_requests_and_finishes_one_in_a_request() {
    let (master, thread, mut log, listener) = start();
    let (mut kept, fd0) = client(&listener, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let (mut busy, fd1) = client(&listener, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    send_conns(&master, 0, vec![fd0, fd1]);
    kept_answer(&mut kept, false);
    kept_answer(&mut busy, false);
    busy.write_all(b"GET /?sleep_ms=500 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100)); // the worker has read it
    let t0 = Instant::now();
    send_drain(&master);
    closed_without_answer(&mut kept, "a kept-alive connection between requests");
    assert!(t0.elapsed() < Duration::from_millis(450), "closed after {:?}: after the busy one", t0.elapsed());
    drain(&master, &mut log);
    assert!(position(&log, 0, true).is_some(), "DONE before the FIN: {log:?}");
    let (head, body) = kept_answer(&mut busy, false);
    assert!(head[0].starts_with("HTTP/1.1 200") && body.starts_with("hello"), "{head:?} {body:?}");
    closed_without_answer(&mut busy, "the drained connection after its request");
    ended(thread);
}

/// A client that sends requests one by one and reads no answer fills its socket's
/// buffers: the quick path's answer then goes out in part (the rest written by a task)
/// or not at all (hyper answers), and every answer still arrives, whole and in order,
/// once the client reads.
#[test]
fn a_client_that_reads_no_answers_gets_every_one_in_the_end() {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let (master, thread, mut log, listener) = start();
    // Small buffers both ways, so that a few dozen answers fill them.
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    sockopt::set_socket_recv_buffer_size(&fd, 2048).unwrap();
    rustix::net::connect(&fd, &listener.local_addr().unwrap()).unwrap();
    let mut c = TcpStream::from(fd);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Each request leaves at once (Nagle would hold it for the server's ACK, which
    // waits for an answer that the full window holds back: they would come together).
    c.set_nodelay(true).unwrap();
    let server = OwnedFd::from(listener.accept().unwrap().0);
    sockopt::set_socket_send_buffer_size(&server, 2048).unwrap();
    send_conns(&master, 0, vec![server]);
    wait_for(&master, &mut log, "ACK", |log| position(log, 0, false).is_some());
    const REQUESTS: usize = 300;
    for i in 0..REQUESTS {
        c.write_all(format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
        // One at a time (mostly: two that arrive together go to hyper, answered too).
        std::thread::sleep(Duration::from_millis(2));
    }
    for i in 0..REQUESTS {
        let (head, body) = kept_answer(&mut c, false);
        assert!(head[0].starts_with("HTTP/1.1 200") && body.starts_with("hello"), "answer {i}: {head:?} {body:?}");
    }
    // Nothing more, and the connection still serves.
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let (head, _) = answer(&mut c);
    assert!(head[0].starts_with("HTTP/1.1 200"), "{head:?}");
    finish(&master, thread);
}

/// A kept-alive client whose next request and FIN arrive together (it shuts down its
/// side after its last request) is answered and closed at once, by either path; the
/// waiting room watches kept connections edge-triggered, which reports that end only
/// once, with the request.
#[test]
fn a_kept_alive_client_that_sends_its_last_request_with_its_fin_is_answered_and_closed_at_once() {
    let (master, thread, mut log, listener) = start_header_timeout(Duration::from_secs(60));
    for (id, path) in [(0, "/"), (1, "/?sleep_ms=0")] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        let (mut c, fd) = client(&listener, &request);
        send_conns(&master, id, vec![fd]);
        kept_answer(&mut c, false);
        std::thread::sleep(Duration::from_millis(50)); // back in the room
                                                       // The request and the FIN in one segment.
        rustix::net::sockopt::set_tcp_cork(&c, true).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let t0 = Instant::now();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).expect("closed within the read timeout (10 s)");
        let took = t0.elapsed();
        // hyper does not answer a request that came with the end of the stream.
        let text = String::from_utf8_lossy(&rest);
        assert!(rest.is_empty() || text.starts_with("HTTP/1.1 200"), "{path}: {text:?}");
        assert!(took < Duration::from_secs(5), "{path}: closed after {took:?}, not at once (header timeout 60 s)");
        drain(&master, &mut log);
        assert!(position(&log, id, true).is_some(), "{path}: DONE before the FIN: {log:?}");
    }
    finish(&master, thread);
}
