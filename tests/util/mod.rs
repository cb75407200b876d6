//! Shared helpers for every integration test that runs a master: start `handoff run`
//! (or any program that serves with `handoff::Server`) as a real process, follow its
//! log, talk HTTP to it over loopback sockets, look at descriptors and processes in
//! `/proc`, and the correctness checks every kind of worker must pass.
//!
//! Every process a test starts is killed when its [`Handoff`] drops (also when the test
//! fails), and every wait is bounded by [`WAIT`], so a failing test never hangs or
//! leaves processes behind. Processes are signalled by pid only, and never by a bare
//! pid read earlier: the master is pinned with a pidfd while it is our unreaped child,
//! and a worker with a pidfd checked, after pinning, to be the master's child (or to
//! carry this run's marker). A pid read earlier and used later may belong to someone
//! else by then (pid_max is often 32768 and other tests spawn fast); a pidfd names its
//! process and no other.
//!
//! Nothing measures speed: tests wait for log lines, never for wall-clock time.

#![allow(dead_code, reason = "each test binary uses a part of the shared helpers")]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use rustix::process::{Pid, PidfdFlags};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The repository root (where `examples/` lives); masters run there.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `handoff` binary built for these tests.
pub fn handoff_bin() -> &'static str {
    env!("CARGO_BIN_EXE_handoff")
}

/// A name no other test, run or process uses: `handoff-test-PID-N-RANDOM`.
fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("handoff-{tag}-{}-{n}-{:x}", std::process::id(), fastrand::u64(..))
}

// ---- a master and its log ----

/// A running master (`handoff run`, or a program built on `handoff::Server`), with its
/// stderr collected line by line.
pub struct Handoff {
    child: Child,
    /// The master, pinned right after it was started (an unreaped child of ours, so the
    /// pid was its): signals through it reach the master and nothing else, ever.
    pidfd: OwnedFd,
    /// Its exit status once [`Handoff::wait_exit`] has reaped it (from then on its pid
    /// may be anyone's, and its children are no longer found through it).
    status: Option<ExitStatus>,
    log: Arc<(Mutex<Log>, Condvar)>,
    /// A marker in the environment of the master and all its workers (and of a master
    /// it upgrades to), to find every process it started.
    pub marker: String,
}

/// The master's stderr so far, and whether it has ended.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    eof: bool,
}

/// Marks the log ended when dropped (when the reader thread ends, however it ends).
struct EofOnDrop(Arc<(Mutex<Log>, Condvar)>);

impl Drop for EofOnDrop {
    fn drop(&mut self) {
        let (mutex, cv) = &*self.0;
        lock(mutex).eof = true;
        cv.notify_all();
    }
}

/// Locks, also after another thread panicked holding the lock (a failed test must
/// still show its log and clean up).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Starts `handoff run ARGS` without waiting for anything. `adjust` may change the
    /// command or replace it (keeping its arguments and environment).
    pub fn spawn(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Handoff {
        let mut cmd = Command::new(handoff_bin());
        cmd.arg("run").args(args);
        adjust(&mut cmd);
        Handoff::spawn_command(cmd)
    }

    /// Starts `cmd`, a master of any kind (an example, the library test itself), and
    /// waits for its listeners.
    pub fn start_command(cmd: Command) -> Handoff {
        let h = Handoff::spawn_command(cmd);
        h.wait_line("listening on");
        h
    }

    /// Starts `cmd`, a master of any kind, without waiting for anything: in the
    /// repository root, with this run's marker, stdin and stdout null, stderr followed.
    pub fn spawn_command(cmd: Command) -> Handoff {
        Handoff::spawn_inner(cmd, None)
    }

    /// Like [`Handoff::spawn_command`], with the master's stderr going to `stderr`
    /// instead of the test's log (which then stays empty).
    pub fn spawn_command_stderr(cmd: Command, stderr: Stdio) -> Handoff {
        Handoff::spawn_inner(cmd, Some(stderr))
    }

    fn spawn_inner(mut cmd: Command, stderr: Option<Stdio>) -> Handoff {
        let marker = unique("test");
        let follow = stderr.is_none();
        cmd.current_dir(root())
            .env("HANDOFF_TEST_MARKER", &marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.unwrap_or_else(Stdio::piped));
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
                Err(e) => panic!("start the master {cmd:?}: {e}"),
            }
        };
        // Our child, not yet waited for: the pid cannot have been reused.
        let pidfd = match pid_of(child.id()).and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok()) {
            Some(fd) => fd,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pidfd_open on the master {}", child.id());
            }
        };
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        if !follow {
            return Handoff { child, pidfd, status: None, log, marker };
        }
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let _eof = EofOnDrop(sink.clone());
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Captured by the test harness: shown only when the test fails.
                eprintln!("[handoff] {line}");
                lock(&sink.0).lines.push(line);
                sink.1.notify_all();
            }
        });
        Handoff { child, pidfd, status: None, log, marker }
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// All stderr lines so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.log.0).lines.clone()
    }

    /// Waits until `f` finds what it wants in the log (`what` names it if it never
    /// does); fails at once if the log has ended without it.
    pub fn wait_log<T>(&self, what: &str, f: impl Fn(&[String]) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let (mutex, cv) = &*self.log;
        let mut log = lock(mutex);
        loop {
            if let Some(v) = f(&log.lines) {
                return v;
            }
            // Its whole stderr has been read: nothing more will come.
            assert!(
                !log.eof,
                "the master's log ended (it exited) while waiting for {what}; its log:\n{}",
                log.lines.join("\n")
            );
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}; the master's log:\n{}", log.lines.join("\n"));
            log = cv.wait_timeout(log, left.min(Duration::from_millis(100))).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Waits until `n` lines contain `needle`; returns them.
    pub fn wait_lines(&self, needle: &str, n: usize) -> Vec<String> {
        self.wait_log(&format!("{n} lines with {needle:?}"), |lines| {
            let found: Vec<String> = lines.iter().filter(|l| l.contains(needle)).cloned().collect();
            (found.len() >= n).then_some(found)
        })
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

    /// Waits until `n` READY lines have been logged (replacements count too).
    pub fn wait_ready(&self, n: usize) {
        self.wait_lines("ready (pid", n);
    }

    /// Waits until `n` different slots have announced READY; returns slot → the latest
    /// pid in each.
    pub fn wait_ready_slots(&self, n: usize) -> HashMap<usize, u32> {
        self.wait_log(&format!("{n} slots ready"), |lines| {
            let ready = slot_pids(lines, "ready (pid ");
            (ready.len() >= n).then_some(ready)
        })
    }

    /// Waits until `n` different slots have started a worker (for workers that never
    /// send READY); returns slot → the latest pid in each.
    pub fn wait_started_slots(&self, n: usize) -> HashMap<usize, u32> {
        self.wait_log(&format!("{n} slots started"), |lines| {
            let started = slot_pids(lines, "started (pid ");
            (started.len() >= n).then_some(started)
        })
    }

    /// Pids of every worker started so far, in the order of the log.
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

    /// The pids of the master's children now (its workers), while it is not reaped.
    pub fn children(&self) -> Vec<u32> {
        if self.status.is_some() {
            return Vec::new(); // its pid may be someone else's by now
        }
        let path = format!("/proc/{0}/task/{0}/children", self.pid());
        std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }

    /// Sends a signal to the master (through its pidfd: never to another process,
    /// also after it exited).
    pub fn signal(&self, sig: Signal) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, sig);
    }

    /// Sends `sig` to worker `pid` if it is the master's child now (see [`pin_child`]);
    /// false if it is not (or no longer).
    pub fn signal_worker(&self, pid: u32, sig: Signal) -> bool {
        self.status.is_none()
            && pin_child(self.pid(), pid).is_some_and(|fd| rustix::process::pidfd_send_signal(&fd, sig).is_ok())
    }

    /// SIGKILLs worker `pid`, which must be the master's child.
    pub fn kill_worker(&self, pid: u32) {
        assert!(self.signal_worker(pid, Signal::KILL), "pid {pid} is not a worker of master {}", self.pid());
    }

    /// Sends `sig` to `pid` if it is a process of this run (it carries [`Handoff::marker`]:
    /// a master started by an upgrade, say, which is not our child); false if not.
    pub fn signal_own(&self, pid: u32, sig: Signal) -> bool {
        pin_marked(pid, &self.marker).is_some_and(|fd| rustix::process::pidfd_send_signal(&fd, sig).is_ok())
    }

    /// Waits for the master to exit; returns its exit code (None if killed).
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "handoff did not exit; log:\n{}", self.lines().join("\n"));
            std::thread::sleep(Duration::from_millis(10));
        };
        self.status = Some(status);
        // Let the reader take the last lines the master wrote (a process that inherited
        // its stderr, like a new master after an upgrade, may keep the pipe open: wait a
        // bounded time only).
        let (mutex, cv) = &*self.log;
        let until = Instant::now() + Duration::from_secs(2);
        let mut log = lock(mutex);
        while !log.eof {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            log = cv.wait_timeout(log, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        status.code()
    }

    /// Every live process (master or worker) carrying this run's marker.
    pub fn processes(&self) -> Vec<u32> {
        processes_with_env(&self.marker)
    }

    /// Pins every live process carrying this run's marker.
    fn pin_own(&self) -> Vec<OwnedFd> {
        self.processes().into_iter().filter_map(|pid| pin_marked(pid, &self.marker)).collect()
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        // Workers die with the master (PDEATHSIG), but kill every process of the run
        // too, so that a test leaves nothing behind even if that backstop failed. Pin
        // them first: the workers as the master's children while it is alive (also a
        // worker whose program cleared its environment), and whatever carries the
        // marker (a master an upgrade started, its workers).
        let mut pinned: Vec<OwnedFd> =
            self.children().into_iter().filter_map(|pid| pin_child(self.pid(), pid)).collect();
        pinned.extend(self.pin_own());
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
        let _ = self.child.wait();
        for fd in &pinned {
            let _ = rustix::process::pidfd_send_signal(fd, Signal::KILL);
        }
        // Anything started while the master was dying.
        for fd in self.pin_own() {
            let _ = rustix::process::pidfd_send_signal(&fd, Signal::KILL);
        }
    }
}

/// Parses `worker N <what>PID` log lines into slot → pid (the latest per slot).
pub fn slot_pids(lines: &[String], what: &str) -> HashMap<usize, u32> {
    let mut out = HashMap::new();
    for l in lines {
        let Some(rest) = l.split("worker ").nth(1) else { continue };
        let Some((slot, tail)) = rest.split_once(' ') else { continue };
        let Some(pid) = tail.strip_prefix(what) else { continue };
        let pid: String = pid.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let (Ok(slot), Ok(pid)) = (slot.parse(), pid.parse()) {
            out.insert(slot, pid);
        }
    }
    out
}

// ---- processes ----

fn pid_of(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

/// A pidfd for `pid` if it is a child of `parent` now. The pidfd names that process
/// and no other for as long as it is open, so signals sent through it cannot reach an
/// unrelated process that got the same pid after this one died. `parent` must be a
/// process whose pid cannot be reused meanwhile (our unreaped child).
pub fn pin_child(parent: u32, pid: u32) -> Option<OwnedFd> {
    let fd = rustix::process::pidfd_open(pid_of(pid)?, PidfdFlags::empty()).ok()?;
    // Checked after pinning: if it is the parent's child now, the pidfd is that process
    // (or one that has died since, which a signal no longer reaches).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
    (ppid == parent).then_some(fd)
}

/// A pidfd for `pid` if it carries `marker` in its environment now (checked after
/// pinning, as in [`pin_child`]).
pub fn pin_marked(pid: u32, marker: &str) -> Option<OwnedFd> {
    let fd = rustix::process::pidfd_open(pid_of(pid)?, PidfdFlags::empty()).ok()?;
    has_env(pid, marker).then_some(fd)
}

fn has_env(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// Live processes whose environment contains `needle` (zombies excluded).
pub fn processes_with_env(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if !has_env(pid, needle) {
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

/// Number of open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    fd_links(pid).len()
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    fields.get(11).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0)
}

/// A process's scheduling policy (`/proc/<pid>/stat` field 41): 0 `SCHED_OTHER`,
/// 3 `SCHED_BATCH`, ...; `None` once it is gone.
pub fn sched_policy(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(38)?.parse().ok()
}

/// `SCHED_OTHER` and `SCHED_BATCH`, as [`sched_policy`] gives them.
pub const SCHED_OTHER: u32 = 0;
pub const SCHED_BATCH: u32 = 3;

/// The children of `pid` (its main thread's), from `/proc`.
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits until `f` is true, or fails the test with `what`.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- HTTP over loopback ----

/// One HTTP response, as far as the tests care.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The `X-Handoff-Worker` header.
    pub worker: Option<usize>,
    /// Names lowercased.
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
    // with delayed ACKs would then stall every request by up to 40 ms; and the textbook
    // minimal worker reads the request with a single recv.
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

/// A keep-alive connection that stays open after its first response: a "long"
/// connection, held by one worker.
pub struct Held {
    pub stream: TcpStream,
    /// The worker that answered the first request.
    pub worker: usize,
}

/// Opens a connection, makes one keep-alive request, and keeps the connection.
pub fn hold(addr: SocketAddr) -> Held {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut held = Held { stream, worker: usize::MAX };
    held.worker = held.request();
    held
}

impl Held {
    /// One more keep-alive `GET /` on the connection: must be a 200 with a
    /// Content-Length body; returns the worker that answered.
    pub fn request(&mut self) -> usize {
        self.stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let r = read_one_response(&mut self.stream).expect("response on held connection");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.headers.iter().any(|(k, _)| k == "content-length"), "no Content-Length: {r:?}");
        r.worker.unwrap_or_else(|| panic!("no X-Handoff-Worker header: {r:?}"))
    }
}

/// The worker that served a short `GET /` (which must succeed).
pub fn served_by(addr: SocketAddr) -> usize {
    let r = http_get(addr, "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.worker.unwrap_or_else(|| panic!("no X-Handoff-Worker header: {r:?}"))
}

/// How many of `n` sequential short connections each worker served: worker → count.
pub fn served_counts(addr: SocketAddr, n: usize) -> HashMap<usize, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(served_by(addr)).or_insert(0) += 1;
    }
    counts
}

/// Counts responses per worker id (ids below `n`).
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
    stop: Arc<AtomicBool>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
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
        self.stop.store(true, Ordering::Relaxed);
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

// ---- files and the control socket ----

/// A fresh temporary directory for one test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/handoff-TAG-PID-N-RANDOM`.
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn join(&self, name: &str) -> PathBuf {
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

/// A client that connects and sends nothing, then one request from another client:
/// returns how many connections the master accepted meanwhile (`totals.accepted`), and
/// the silent client, still open. The accept queue is first in, first out, so the
/// master accepts the silent one before the second unless the listener defers it
/// (`,deferred`). The kernel defers a silent client for about a second: a run slower
/// than 800 ms proves nothing either way and is tried again (three times at most).
pub fn silent_then_speaking(addr: SocketAddr, control: &str) -> (u64, TcpStream) {
    let accepted = || status_json(control)["totals"]["accepted"].as_u64().expect("totals.accepted");
    for _ in 0..3 {
        let before = accepted();
        let t0 = Instant::now();
        let silent = TcpStream::connect(addr).unwrap();
        assert_eq!(http_get(addr, "/").unwrap().status, 200);
        let n = accepted() - before;
        if t0.elapsed() < Duration::from_millis(800) {
            return (n, silent);
        }
    }
    panic!("three runs slower than the kernel's deferral of a silent client: cannot tell")
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

// ---- the checks every kind of worker passes (reference workers, library, examples) ----

/// Asserts the exact round robin: `workers` workers, 100 sequential connections each.
pub fn assert_round_robin_exact(h: &Handoff, workers: usize) {
    let counts = served_counts(h.addr(), 100 * workers);
    let expected: HashMap<usize, usize> = (0..workers).map(|w| (w, 100)).collect();
    assert_eq!(counts, expected, "round robin must be exact");
}

/// The least-conn check: 3 long connections land on 3 different workers, then every new
/// short connection goes to the fourth. Needs workers that send DONE, all ready.
pub fn assert_least_conn_with_done(h: &Handoff) {
    let held: Vec<Held> = (0..3).map(|_| hold(h.addr())).collect();
    let busy: HashSet<usize> = held.iter().map(|c| c.worker).collect();
    assert_eq!(busy.len(), 3, "long connections on three different workers");
    let free = (0..4).find(|w| !busy.contains(w)).unwrap();
    for i in 0..40 {
        assert_eq!(served_by(h.addr()), free, "short connection {i} must go to the idle worker {free}");
    }
    drop(held);
}

/// The least-conn check for workers that serve one request per connection: 3 idle
/// connections (no request sent, so each holds a worker), then every new short
/// connection goes to the one worker left idle. The master accepts in the kernel's
/// FIFO order, so the idle ones are placed first: deterministic.
pub fn assert_least_conn_with_idle_holders(h: &Handoff) {
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(h.addr()).expect("connect")).collect();
    let first = served_by(h.addr());
    for i in 0..40 {
        assert_eq!(served_by(h.addr()), first, "short connection {i} must go to the one idle worker {first}");
    }
    drop(held);
}

/// Kills worker `slot` with SIGKILL and waits until a new process fills the slot.
/// `ready` says whether to wait for its READY (full-protocol workers) or its start.
/// Returns (old pid, new pid).
pub fn kill_worker_and_wait_replacement(h: &Handoff, slot: usize, ready: bool) -> (u32, u32) {
    let what = if ready { "ready (pid " } else { "started (pid " };
    let old = h.wait_log(&format!("worker {slot} {what}"), |l| slot_pids(l, what).get(&slot).copied());
    h.kill_worker(old);
    let new = h.wait_log(&format!("a new worker {slot} {what}"), |l| {
        slot_pids(l, what).get(&slot).copied().filter(|&p| p != old)
    });
    (old, new)
}

/// Sends SIGTERM to the master (a graceful stop: DRAIN to every worker), waits for it
/// and its workers to exit, and asserts that each of the `workers` exited with status 0.
pub fn stop_gracefully(h: Handoff, workers: usize) {
    h.signal(Signal::TERM);
    h.wait_line("all workers exited");
    let deadline = Instant::now() + WAIT;
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
/// [`WAIT`]). For checks after a replacement: a new worker may become eligible a
/// little after it starts (a minimal worker sends no READY), so poll, do not count.
pub fn assert_every_slot_serves(h: &Handoff, workers: usize) {
    let deadline = Instant::now() + WAIT;
    let mut seen = HashSet::new();
    while seen.len() < workers {
        assert!(Instant::now() < deadline, "only workers {seen:?} served within {WAIT:?}");
        seen.insert(served_by(h.addr()));
    }
}

/// The `-- CMD` part of `handoff run` for workers that break the protocol with `fault`
/// (see `handoff worker --misbehave`) in slot 0 and behave in the other slots.
pub fn misbehaving_in_slot_0(fault: &str) -> [&str; 7] {
    ["--", handoff_bin(), "worker", "--misbehave", fault, "--misbehave-slot", "0"]
}

/// Request-level balancing (`--hand-back always`): 40 requests on one keep-alive
/// connection reach every one of `workers` workers, each answered in turn.
pub fn assert_one_connection_reaches_every_worker(h: &Handoff, workers: usize) {
    let mut s = TcpStream::connect(h.addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut seen = BTreeSet::new();
    for i in 0..40 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let r = read_one_response(&mut s).unwrap_or_else(|| panic!("no response to request {i}"));
        assert_eq!(r.status, 200, "{r:?}");
        seen.insert(r.worker.unwrap_or_else(|| panic!("no X-Handoff-Worker header: {r:?}")));
    }
    assert_eq!(seen.len(), workers, "40 requests on one connection reached only workers {seen:?}");
}

// ---- HTTP checks for the app servers in other languages (Ruby, Node) ----

/// Eight slow requests and one idle keep-alive connection, then SIGTERM: every slow
/// request is answered, the idle connection is closed, every worker exits 0, and
/// nothing is left running.
pub fn drain_with_requests_in_flight(mut h: Handoff, control: &str, slow_path: &'static str) {
    let addr = h.addr();
    let mut idle = hold(addr);
    let slow: Vec<_> = (0..8).map(|_| std::thread::spawn(move || http_get(addr, slow_path))).collect();
    // Once every one of them is in a worker and acknowledged, a stop must serve it (one
    // still in the backlog when the listener closes would be refused: that is a stop).
    wait_until("9 connections dispatched and acknowledged", || {
        let st = status_json(control);
        let unacked: u64 = st["workers"].as_array().unwrap().iter().map(|w| w["unacked"].as_u64().unwrap()).sum();
        st["totals"]["dispatched"].as_u64().unwrap() >= 9 && unacked == 0
    });
    h.signal(Signal::TERM);
    for s in slow {
        let r = s.join().unwrap().expect("a request in flight is answered, not cut");
        assert_eq!((r.status, r.body.as_str()), (200, "slept\n"), "{r:?}");
    }
    let mut byte = [0u8; 1];
    assert_eq!(idle.stream.read(&mut byte).expect("the idle connection is closed"), 0, "idle keep-alive closed");
    assert_eq!(h.wait_exit(), Some(0));
    let lines = h.lines();
    let exits: Vec<&String> = lines.iter().filter(|l| l.contains(") exited: ")).collect();
    assert_eq!(exits.len(), 4, "{lines:#?}");
    assert!(exits.iter().all(|l| l.ends_with("exited: exit status 0")), "{exits:#?}");
    wait_no_processes(&h.marker, Duration::from_secs(5)).expect("nothing left behind");
}

/// `n` bytes of numbered lines: a reordered, lost or repeated piece shows.
pub fn numbered_lines(n: usize) -> String {
    let mut s = String::with_capacity(n + 16);
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!("{i:08}\n"));
        i += 1;
    }
    s.truncate(n);
    s
}

pub fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// POSTs `body` with `Transfer-Encoding: chunked`, in chunks of `chunk` bytes.
pub fn post_chunked(addr: SocketAddr, path: &str, body: &str, chunk: usize) -> Response {
    let mut s = connect(addr);
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for piece in body.as_bytes().chunks(chunk) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).unwrap();
    read_one_response(&mut s).expect("a response to the chunked POST")
}

/// POSTs `body` with `Expect: 100-continue`: the body is sent only after the server's
/// `100 Continue`, so a server that never sends one fails this (after [`WAIT`]).
pub fn post_expect_continue(addr: SocketAddr, path: &str, body: &str) -> Response {
    let mut s = connect(addr);
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    let interim = read_one_response(&mut s).expect("an interim response");
    assert_eq!(interim.status, 100, "{interim:?}");
    s.write_all(body.as_bytes()).unwrap();
    read_one_response(&mut s).expect("a response to the POST")
}

/// The state (`/proc/net/tcp` numbering: 1 ESTABLISHED, 8 CLOSE_WAIT: the peer sent
/// FIN) and the bytes waiting unread in the receive queue of the IPv4 TCP socket bound
/// to `local` and connected to `remote`, whoever holds it (this network namespace);
/// `None` if there is no such socket. How a test knows that what a client sent has
/// reached a server that is not reading (stopped), without waiting for time: loopback
/// delivery may be left to a softirq that runs later.
pub fn tcp_socket(local: SocketAddr, remote: SocketAddr) -> Option<(u8, u64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => Some(format!("{:08X}:{:04X}", u32::from_le_bytes(a.ip().octets()), a.port())),
        SocketAddr::V6(_) => None,
    };
    let (l, r) = (hex(local)?, hex(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&l.as_str()) || f.get(2) != Some(&r.as_str()) {
            return None;
        }
        let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
        let unread = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
        Some((state, unread))
    })
}
