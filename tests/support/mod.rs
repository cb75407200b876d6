//! Shared helpers for the reference-worker, library and example tests: start a master,
//! follow its log, talk HTTP.
//!
//! (Kept apart from main's `tests/util/`, written at the same time with another API,
//! so that the branches merge cleanly; the two can be unified later.)
//!
//! Every process a test starts is killed by pid when its handle drops (also when the
//! test fails), and every wait is bounded, so a broken build fails instead of hanging.
//! Nothing measures speed: tests wait for log lines, never for wall-clock time.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal};

/// Longest wait for anything (a log line, a response).
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The repository root (where `examples/` lives).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `handoff` binary built for these tests.
pub fn handoff_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_handoff"))
}

/// A master process started by a test, with its stderr collected line by line.
pub struct Handoff {
    child: Child,
    /// The TCP port of its first listener.
    pub port: u16,
    log: Arc<(Mutex<Log>, Condvar)>,
}

/// The master's stderr so far, and whether it has ended.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    eof: bool,
}

impl Handoff {
    /// Runs `handoff run --listen 127.0.0.1:0 ARGS...` and waits for its port.
    pub fn run(args: &[&str]) -> Handoff {
        let mut cmd = Command::new(handoff_bin());
        cmd.arg("run").args(["--listen", "127.0.0.1:0"]).args(args);
        Handoff::spawn(cmd)
    }

    /// Starts `cmd` (a master that logs `listening on 127.0.0.1:PORT` on stderr).
    pub fn spawn(mut cmd: Command) -> Handoff {
        cmd.current_dir(root()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the master");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[handoff] {line}");
                sink.0.lock().unwrap_or_else(|p| p.into_inner()).lines.push(line);
                sink.1.notify_all();
            }
            sink.0.lock().unwrap_or_else(|p| p.into_inner()).eof = true;
            sink.1.notify_all();
        });
        let mut h = Handoff { child, port: 0, log };
        let line = h.wait_line(|l| l.contains("listening on 127.0.0.1:"));
        let port = line.rsplit(':').next().and_then(|p| p.trim().parse().ok());
        h.port = port.unwrap_or_else(|| panic!("no port in {line:?}"));
        h
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap_or_else(|p| p.into_inner()).lines.clone()
    }

    /// Waits for a line matching `pred` (panics after [`TIMEOUT`], showing the log).
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        self.wait_until(|lines| lines.iter().find(|l| pred(l)).cloned())
    }

    /// Waits until `f` finds what it wants in the log.
    pub fn wait_until<T>(&mut self, f: impl Fn(&[String]) -> Option<T>) -> T {
        let deadline = Instant::now() + TIMEOUT;
        let (lock, cv) = &*self.log;
        let mut log = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = f(&log.lines) {
                return v;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("timed out waiting in the master's log:\n{}", log.lines.join("\n"));
            }
            // Its whole stderr has been read and it has exited: nothing more will come.
            if log.eof {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("the master exited ({status}) while a test waited; its log:\n{}", log.lines.join("\n"));
                }
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            log = cv.wait_timeout(log, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Waits for `worker N ready` from each of `n` slots; returns slot → pid.
    pub fn wait_ready(&mut self, n: usize) -> HashMap<usize, u32> {
        self.wait_until(|lines| {
            let ready = worker_pids(lines, "ready (pid ");
            (ready.len() >= n).then_some(ready)
        })
    }

    /// Waits for `worker N started` from each of `n` slots; returns slot → latest pid.
    pub fn wait_started(&mut self, n: usize) -> HashMap<usize, u32> {
        self.wait_until(|lines| {
            let started = worker_pids(lines, "started (pid ");
            (started.len() >= n).then_some(started)
        })
    }

    /// The pids of the worker processes now alive (children of the master).
    pub fn children(&self) -> Vec<u32> {
        let path = format!("/proc/{0}/task/{0}/children", self.pid());
        std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        // Workers die with the master (PDEATHSIG), but kill them by pid too, so that a
        // test leaves nothing behind even if that backstop failed. Pin each one with a
        // pidfd while the master is alive (so the pid is still its child's): a pid read
        // earlier and used later may belong to someone else by then (pid_max is often
        // 32768 and other tests spawn fast).
        let master = self.pid();
        let pinned: Vec<OwnedFd> = self.children().into_iter().filter_map(|pid| pin_child(master, pid)).collect();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for fd in pinned {
            let _ = rustix::process::pidfd_send_signal(&fd, Signal::KILL);
        }
    }
}

/// Parses `worker N <what>N)` log lines into slot → pid (the latest per slot).
pub fn worker_pids(lines: &[String], what: &str) -> HashMap<usize, u32> {
    let mut out = HashMap::new();
    for l in lines {
        let Some(rest) = l.split("worker ").nth(1) else {
            continue;
        };
        let Some((slot, tail)) = rest.split_once(' ') else {
            continue;
        };
        let Some(pid) = tail.strip_prefix(what) else {
            continue;
        };
        let pid: String = pid.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let (Ok(slot), Ok(pid)) = (slot.parse(), pid.parse()) {
            out.insert(slot, pid);
        }
    }
    out
}

/// A pidfd for `pid` if it is a child of `parent` now. The pidfd names that process
/// and no other for as long as it is open, so signals sent through it cannot reach an
/// unrelated process that got the same pid after this one died.
pub fn pin_child(parent: u32, pid: u32) -> Option<OwnedFd> {
    let fd = rustix::process::pidfd_open(Pid::from_raw(pid as i32)?, PidfdFlags::empty()).ok()?;
    // Checked after pinning: if it is our child now, the pidfd is the right process.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
    (ppid == parent).then_some(fd)
}

/// Sends `sig` to worker `pid` of master `h`, safely (see [`pin_child`]); false if it
/// is no longer the master's child.
pub fn signal_worker(h: &Handoff, pid: u32, sig: Signal) -> bool {
    pin_child(h.pid(), pid).is_some_and(|fd| rustix::process::pidfd_send_signal(&fd, sig).is_ok())
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The `X-Handoff-Worker` header.
    pub worker: Option<String>,
    /// The body.
    pub body: String,
}

fn parse_head(head: &str) -> (u16, Option<String>, Option<usize>) {
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    (status, header("x-handoff-worker"), header("content-length").and_then(|v| v.parse().ok()))
}

/// One short connection: `GET path` with `Connection: close`, read to the end.
pub fn http_get(port: u16, path: &str) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    // One write: the textbook minimal worker reads the request with a single recv.
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response to the end");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, worker, _) = parse_head(head);
    Response { status, worker, body: body.to_string() }
}

/// The worker id that served a short `GET /`, as a number.
pub fn served_by(port: u16) -> usize {
    let r = http_get(port, "/");
    assert_eq!(r.status, 200, "{r:?}");
    r.worker.as_deref().and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("no X-Handoff-Worker header: {r:?}"))
}

/// A keep-alive connection held open after one request: a "long" connection.
pub struct LongConn {
    /// The socket, still open.
    pub stream: TcpStream,
    /// The worker that holds it.
    pub worker: usize,
}

impl LongConn {
    /// Connects, sends one keep-alive `GET /`, reads exactly that response.
    pub fn open(port: u16) -> LongConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut c = LongConn { stream, worker: usize::MAX };
        c.worker = c.request();
        c
    }

    /// Sends one more keep-alive `GET /` on the connection; returns the worker id.
    pub fn request(&mut self) -> usize {
        self.stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut r = BufReader::new(&self.stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).expect("read the response head") == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let (status, worker, len) = parse_head(&head);
        assert_eq!(status, 200, "{head}");
        let mut body = vec![0; len.expect("content-length")];
        r.read_exact(&mut body).unwrap();
        worker.and_then(|w| w.parse().ok()).expect("X-Handoff-Worker")
    }
}

/// Counts how many of `n` sequential short connections each worker served.
pub fn tally(port: u16, n: usize) -> HashMap<usize, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(served_by(port)).or_insert(0) += 1;
    }
    counts
}

/// Asserts the exact round robin of the core issue: `workers` workers, 100 each.
pub fn assert_round_robin_exact(h: &Handoff, workers: usize) {
    let counts = tally(h.port, 100 * workers);
    let expected: HashMap<usize, usize> = (0..workers).map(|w| (w, 100)).collect();
    assert_eq!(counts, expected, "round robin must be exact");
}

/// The least-conn check: 3 long connections land on 3 different workers, then every new
/// short connection goes to the fourth. Needs workers that send DONE, all ready.
pub fn assert_least_conn_with_done(h: &Handoff) {
    let held: Vec<LongConn> = (0..3).map(|_| LongConn::open(h.port)).collect();
    let busy: HashSet<usize> = held.iter().map(|c| c.worker).collect();
    assert_eq!(busy.len(), 3, "long connections on three different workers");
    let free = (0..4).find(|w| !busy.contains(w)).unwrap();
    for i in 0..40 {
        assert_eq!(served_by(h.port), free, "short connection {i} must go to the idle worker {free}");
    }
    drop(held);
}

/// The least-conn check for workers that serve one request per connection: 3 idle
/// connections (no request sent, so each holds a worker), then every new short
/// connection goes to the one worker left idle. The master accepts in the kernel's
/// FIFO order, so the idle ones are placed first: deterministic.
pub fn assert_least_conn_with_idle_holders(h: &Handoff) {
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", h.port)).expect("connect")).collect();
    let first = served_by(h.port);
    for i in 0..40 {
        assert_eq!(served_by(h.port), first, "short connection {i} must go to the one idle worker {first}");
    }
    drop(held);
}

/// Kills worker `slot` with SIGKILL and waits until a new process fills the slot.
/// `ready` says whether to wait for its READY (full-protocol workers) or its start.
pub fn kill_worker_and_wait_replacement(h: &mut Handoff, slot: usize, ready: bool) -> (u32, u32) {
    let what = if ready { "ready (pid " } else { "started (pid " };
    let old = h.wait_until(|l| worker_pids(l, what).get(&slot).copied());
    assert!(signal_worker(h, old, Signal::KILL), "worker {slot} (pid {old}) is not the master's child");
    let new = h.wait_until(|l| worker_pids(l, what).get(&slot).copied().filter(|&p| p != old));
    (old, new)
}

/// Sends SIGTERM to the master (a graceful stop: DRAIN to every worker), waits for it
/// and its workers to exit, and asserts that each of the `workers` exited with status 0.
pub fn stop_gracefully(mut h: Handoff, workers: usize) {
    // The master is our child and not yet waited for: its pid cannot be reused.
    let _ = rustix::process::kill_process(Pid::from_raw(h.pid() as i32).unwrap(), Signal::TERM);
    h.wait_line(|l| l.contains("all workers exited"));
    let deadline = Instant::now() + TIMEOUT;
    while !h.children().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(h.children().is_empty(), "workers left behind: {:?}", h.children());
    let lines = h.lines();
    let exits: Vec<&String> = lines.iter().filter(|l| l.contains(") exited: ")).collect();
    assert_eq!(exits.len(), workers, "{lines:#?}");
    assert!(exits.iter().all(|l| l.ends_with("exited: exit status 0")), "{exits:#?}");
}

/// Sends short requests until each of the `workers` slots has served one (bounded by
/// [`TIMEOUT`]). For checks after a replacement: a new worker may become eligible a
/// little after it starts (a minimal worker sends no READY), so poll, do not count.
pub fn assert_every_slot_serves(h: &Handoff, workers: usize) {
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = HashSet::new();
    while seen.len() < workers {
        assert!(Instant::now() < deadline, "only workers {seen:?} served within {TIMEOUT:?}");
        seen.insert(served_by(h.port));
    }
}

/// Compiles a C file with `cc` into `dir`; returns the program.
pub fn build_c(src: &Path, dir: &Path) -> PathBuf {
    let out = dir.join(src.file_stem().unwrap());
    let status = Command::new("cc").args(["-O2", "-Wall", "-o"]).arg(&out).arg(src).status().expect("run cc");
    assert!(status.success(), "cc failed on {}", src.display());
    out
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/handoff-test-NAME-PID-N`.
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("handoff-test-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
