//! Out of descriptors: accept fails with EMFILE; the master pauses accepting instead
//! of spinning, recovers by itself, and serves everyone once load drops.

mod util;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use util::*;

#[test]
fn emfile_pauses_accepting_without_burning_cpu_and_recovers() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--policy", "round-robin", "--test-knobs"]);
    h.wait_ready(2);
    let master = h.pid();
    // Leave the master room for about 20 client sockets beyond what it holds.
    let limit = (fd_count(master) + 20) as u64;
    let lim = rustix::process::Rlimit { current: Some(limit), maximum: Some(limit) };
    rustix::process::prlimit(rustix::process::Pid::from_raw(master as i32), rustix::process::Resource::Nofile, lim)
        .unwrap();
    let addr = h.addr();
    let cpu0 = cpu_ticks(master);
    let t0 = Instant::now();
    // 200 clients connect while the master is stopped (SIGSTOP): the kernel completes
    // their handshakes into the backlog, so when the master resumes, its first accept
    // batch alone runs past the limit, however fast workers ACK. Each holds its
    // connection for a while, so descriptors free up only as requests finish.
    h.signal(Signal::STOP);
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let connected = connected.clone();
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr);
                connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut s = s.ok()?;
                use std::io::Write;
                s.set_read_timeout(Some(WAIT)).ok()?;
                write!(s, "GET /?sleep_ms=300 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
                read_one_response(&mut s).map(|r| r.status)
            })
        })
        .collect();
    wait_until("200 clients connected", || connected.load(std::sync::atomic::Ordering::SeqCst) == 200);
    h.signal(Signal::CONT);
    let results: Vec<Option<u16>> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let wall = t0.elapsed();
    let cpu = Duration::from_millis((cpu_ticks(master) - cpu0) * 10);
    let served = results.iter().filter(|r| **r == Some(200)).count();
    assert_eq!(served, 200, "every client is served once descriptors free up: {results:?}");
    assert!(cpu < wall / 2, "the master burned {cpu:?} of CPU in {wall:?}: it must not spin on EMFILE");
    let line = h.wait_line("accept failed");
    assert!(line.contains("pausing accepts"), "EMFILE was hit: {line}");
    // Still alive and serving.
    assert_eq!(http_get(addr, "/").unwrap().status, 200);
}
