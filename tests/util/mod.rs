//! Shared helpers for the integration tests: start `handoff` as a real process, talk
//! HTTP to it over real sockets, look at descriptors and processes in `/proc`.
//!
//! Every process a test starts is killed by pid when its handle drops, and every wait
//! is bounded, so a failing test never hangs or leaves processes behind.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running `handoff run` master, with its stderr collected line by line.
pub struct Handoff {
    child: Option<Child>,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    /// A marker in the environment of the master and all its workers, to find every
    /// process it started.
    pub marker: String,
    /// Set when the stderr reader has seen end of file.
    eof: Arc<std::sync::atomic::AtomicBool>,
}

/// Sets the flag when dropped (when the reader thread ends, however it ends).
struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

pub fn handoff_bin() -> &'static str {
    env!("CARGO_BIN_EXE_handoff")
}

impl Handoff {
    /// Starts `handoff run ARGS` and waits for its listeners.
    pub fn start(args: &[&str]) -> Handoff {
        Handoff::start_with(args, |_| {})
    }

    /// Like [`Handoff::start`], letting the caller adjust the command.
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Handoff {
        let h = Handoff::spawn(args, adjust);
        h.wait_line("listening on");
        h
    }

    /// Starts `handoff run ARGS` without waiting for anything.
    pub fn spawn(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Handoff {
        let marker = format!("handoff-test-{}-{}", std::process::id(), fastrand_u64());
        let mut cmd = Command::new(handoff_bin());
        cmd.arg("run")
            .args(args)
            .env("HANDOFF_TEST_MARKER", &marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        // A binary the test has just written may be "busy" for a moment: another test
        // thread may have forked while it was open for writing.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("start handoff: {e}"),
            }
        };
        let stderr = child.stderr.take().unwrap();
        let lines: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = lines.clone();
        let eof = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let eof_flag = eof.clone();
        std::thread::spawn(move || {
            let _set_on_exit = SetOnDrop(eof_flag);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("HANDOFF_TEST_ECHO").is_some() {
                    eprintln!("[handoff] {line}");
                }
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
        });
        Handoff { child: Some(child), lines, marker, eof }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// All stderr lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().clone()
    }

    /// Waits until `n` lines contain `needle`; returns them.
    pub fn wait_lines(&self, needle: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut g = self.lines.0.lock().unwrap();
        loop {
            let found: Vec<String> = g.iter().filter(|l| l.contains(needle)).cloned().collect();
            if found.len() >= n {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {n} lines with {needle:?}; got:\n{}", g.join("\n"));
            g = self.lines.1.wait_timeout(g, left.min(Duration::from_millis(100))).unwrap().0;
        }
    }

    /// Waits for a line containing `needle`; returns the first.
    pub fn wait_line(&self, needle: &str) -> String {
        self.wait_lines(needle, 1).remove(0)
    }

    /// The TCP addresses it listens on, in order.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.lines()
            .iter()
            .filter_map(|l| l.split("listening on ").nth(1))
            .filter_map(|a| a.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// The first TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.tcp_addrs()[0]
    }

    /// Waits until `n` workers have announced READY.
    pub fn wait_ready(&self, n: usize) {
        self.wait_lines("ready (pid", n);
    }

    /// Pids of every worker started so far, by slot order of the log.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.lines()
            .iter()
            .filter(|l| l.contains(" started (pid "))
            .filter_map(|l| l.split("(pid ").nth(1)?.trim_end_matches(')').parse().ok())
            .collect()
    }

    /// Pid of the worker last started in `slot`.
    pub fn worker_pid(&self, slot: usize) -> u32 {
        let tag = format!("worker {slot} started (pid ");
        self.lines()
            .iter()
            .rev()
            .find_map(|l| l.split(&tag).nth(1)?.trim_end_matches(')').parse().ok())
            .expect("worker started")
    }

    /// Sends a signal to the master.
    pub fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }

    /// Waits for the master to exit; returns its exit code (None if killed).
    pub fn wait_exit(&mut self) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                // Let the reader take the last lines the master wrote (a process that
                // inherited its stderr, like a new master after an upgrade, may keep
                // the pipe open: wait a bounded time only).
                let until = Instant::now() + Duration::from_secs(2);
                while !self.eof.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return st.code();
            }
            assert!(Instant::now() < deadline, "handoff did not exit; log:\n{}", self.lines().join("\n"));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every live process (master or worker) carrying this run's marker.
    pub fn processes(&self) -> Vec<u32> {
        processes_with_env(&self.marker)
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let mut pids = self.processes();
        if let Some(c) = &self.child {
            pids.push(c.id());
        }
        for pid in pids {
            signal(pid, 9);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

pub fn signal(pid: u32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).stderr(Stdio::null()).status();
}

/// Live processes whose environment contains `needle` (zombies excluded).
pub fn processes_with_env(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if !env.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            continue;
        }
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true);
        if !zombie {
            out.push(pid);
        }
    }
    out
}

/// Waits until no live process carries `marker`.
pub fn wait_no_processes(marker: &str, within: Duration) -> Result<(), Vec<u32>> {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_with_env(marker);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP response, as far as the tests care.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub worker: Option<usize>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let worker = headers.iter().find(|(k, _)| k == "x-handoff-worker").and_then(|(_, v)| v.parse().ok());
    Some(Response { status, worker, headers, body: body.to_string() })
}

/// A one-shot `GET path` on a new connection (`Connection: close`), read to the end.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    http_get_with(TcpStream::connect(addr)?, path, b"")
}

/// A TCP connection to `to` from the local address `from` (any 127.x.y.z is loopback).
pub fn connect_from(from: std::net::IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketType};
    let family = if to.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket(family, SocketType::STREAM, None)?;
    rustix::net::bind(&fd, &SocketAddr::new(from, 0))?;
    rustix::net::connect(&fd, &to)?;
    Ok(TcpStream::from(fd))
}

/// `GET path` on `s`, after writing `preamble` (a PROXY header, say), read to the end.
pub fn http_get_with(mut s: TcpStream, path: &str, preamble: &[u8]) -> std::io::Result<Response> {
    s.set_read_timeout(Some(WAIT))?;
    s.write_all(preamble)?;
    // One write: `write!` on a socket writes each formatted piece separately, and Nagle
    // with delayed ACKs would then stall every request by up to 40 ms.
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad response: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

/// A keep-alive connection that stays open after its first response.
pub struct Held {
    pub stream: TcpStream,
    pub worker: usize,
}

/// Opens a connection, makes one keep-alive request, and keeps the connection.
pub fn hold(addr: SocketAddr) -> Held {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let r = read_one_response(&mut s).expect("response on held connection");
    Held { stream: s, worker: r.worker.expect("worker header") }
}

/// Reads exactly one response with a Content-Length body from a keep-alive stream.
pub fn read_one_response(s: &mut TcpStream) -> Option<Response> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        raw.push(byte[0]);
    }
    let mut r = parse_response(&raw)?;
    let len: usize =
        r.headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    r.body = String::from_utf8_lossy(&body).into_owned();
    Some(r)
}

/// The targets of a process's descriptors: fd number → link text.
pub fn fd_links(pid: u32) -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.parse().ok()?;
                    let link = std::fs::read_link(e.path()).ok()?;
                    Some((n, link.to_string_lossy().into_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The socket inodes a process holds.
pub fn socket_inodes(pid: u32) -> BTreeSet<String> {
    fd_links(pid).into_iter().filter(|(_, l)| l.starts_with("socket:")).map(|(_, l)| l).collect()
}

/// Counts responses per worker id.
pub fn tally(workers: impl IntoIterator<Item = usize>, n: usize) -> Vec<usize> {
    let mut count = vec![0; n];
    for w in workers {
        count[w] += 1;
    }
    count
}

/// Steady load: `threads` clients making one-request connections in a loop until
/// stopped, counting successes and failures.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<(u64, u64, Vec<String>)>>,
}

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadResult {
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

impl Load {
    pub fn start(addr: SocketAddr, threads: usize, path: &'static str) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match http_get(addr, path) {
                            Ok(r) if r.status == 200 => ok += 1,
                            Ok(r) => {
                                failed += 1;
                                if errors.len() < 10 {
                                    errors.push(format!("status {}", r.status));
                                }
                            }
                            Err(e) => {
                                failed += 1;
                                if errors.len() < 10 {
                                    errors.push(e.to_string());
                                }
                            }
                        }
                    }
                    (ok, failed, errors)
                })
            })
            .collect();
        Load { stop, handles }
    }

    pub fn stop(self) -> LoadResult {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut r = LoadResult { ok: 0, failed: 0, errors: Vec::new() };
        for h in self.handles {
            let (ok, failed, errors) = h.join().unwrap();
            r.ok += ok;
            r.failed += failed;
            r.errors.extend(errors);
        }
        r
    }
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    fields.get(11).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0)
}

/// Number of open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    fd_links(pid).len()
}

/// Waits until `f` is true, or fails the test with `what`.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh temporary directory for one test, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("handoff-{tag}-{}-{}", std::process::id(), fastrand_u64()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
    pub fn path_str(&self, name: &str) -> String {
        self.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `handoff status --json --control PATH`, parsed.
pub fn status_json(control: &str) -> serde_json::Value {
    let out = Command::new(handoff_bin()).args(["status", "--json", "--control", control]).output().unwrap();
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `handoff ctl --control PATH ARGS`; returns (success, stdout+stderr).
pub fn ctl(control: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(handoff_bin()).args(["ctl", "--control", control]).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Running workers (state "running") in a status document.
pub fn running_workers(st: &serde_json::Value) -> usize {
    st["workers"].as_array().unwrap().iter().filter(|w| w["state"] == "running").count()
}
