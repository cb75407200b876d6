//! Starting and stopping one connection model as a set of real processes.
//!
//! Kernel models re-execute this binary as `handoff bench-worker` (never a bare fork:
//! the bench process runs a tokio runtime, which must not be used in a forked child),
//! one process per worker, each given its listening socket as an inherited descriptor:
//! the one shared socket for `shared` and `shared-nginx`, its own `SO_REUSEPORT`
//! socket for `reuseport` (created here so that every socket of the group is listening
//! before the first client connects). Handoff models run `handoff run` as a child and
//! read its port from the `listening on` log line.
//!
//! Every process is started from the calling thread with `PR_SET_PDEATHSIG`, so it
//! dies if the bench dies; [`Server`]'s `Drop` stops them by pid (SIGTERM, then SIGKILL
//! after 3 s) and reaps them. Call [`start`] from a thread that outlives the server
//! (the main thread): the death signal follows the thread that spawned the child.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::{kworker, Model};
use handoff::__private::listener::{ListenAddr, Listener, BACKLOG};
use handoff::__private::sys::process::spawn_with_channel;

/// How long a model gets to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running model.
#[derive(Debug)]
pub struct Server {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The handoff master's pid (handoff models only).
    pub master_pid: Option<u32>,
    children: Vec<Child>,
    model: Model,
}

/// Starts `model` with `workers` workers on `listen` (port 0: the kernel picks),
/// running `exe` (this binary) for its processes. Returns once every worker is ready.
pub fn start(model: Model, workers: usize, exe: &Path, listen: SocketAddr) -> Result<Server, String> {
    let mut server = Server { addr: listen, master_pid: None, children: Vec::new(), model };
    match model.policy() {
        Some(policy) => start_handoff(&mut server, policy, workers, exe, listen)?,
        None => start_kernel(&mut server, workers, exe, listen)?,
    }
    Ok(server)
}

fn start_kernel(server: &mut Server, workers: usize, exe: &Path, listen: SocketAddr) -> Result<(), String> {
    let model = server.model;
    let mut shared: Option<Listener> = None;
    let mut port = listen.port();
    for id in 0..workers {
        let own: OwnedFd;
        let fd = if model == Model::Reuseport {
            own = reuseport_socket(SocketAddr::new(listen.ip(), port))
                .map_err(|e| format!("{model}: SO_REUSEPORT socket on {}:{port}: {e}", listen.ip()))?;
            if port == 0 {
                port = local_port(&own)?;
            }
            own.as_fd()
        } else {
            if shared.is_none() {
                let l = Listener::bind(&ListenAddr::Tcp(listen))
                    .map_err(|e| format!("{model}: bind {listen}: {e}; is the port free?"))?;
                port = match l.local_addr() {
                    ListenAddr::Tcp(a) => a.port(),
                    other => return Err(format!("{model}: unexpected listener address {other}")),
                };
                shared = Some(l);
            }
            shared.as_ref().map(|l| l.as_fd()).ok_or("no listener")?
        };
        let mut cmd = Command::new(exe);
        cmd.args(["bench-worker", "--model", model.name(), "--id", &id.to_string()])
            .env(kworker::ENV_LISTEN_FD, std::os::fd::AsRawFd::as_raw_fd(&fd).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn_with_channel(&mut cmd, fd, false)
            .map_err(|e| format!("{model}: start worker {id} ({}): {e}", exe.display()))?;
        let stdout = child.stdout.take();
        server.children.push(child);
        // A worker prints one line once it waits in epoll_wait; EOF means it died. The
        // line is read on a thread so that a worker stuck before it cannot hang the bench.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let ok = stdout.map(|s| BufReader::new(s).read_line(&mut line).is_ok()).unwrap_or(false);
            let _ = tx.send(ok && line.trim() == kworker::READY_LINE);
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(true) => {}
            Ok(false) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("{model}: worker {id} exited before it was ready (see its error above)"));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("{model}: worker {id} was not ready within {START_TIMEOUT:?}"));
            }
        }
        // Our copy of a worker's own reuseport socket is dropped here (`own`); the
        // shared listener's copy when this function returns. Only workers hold them.
    }
    server.addr = SocketAddr::new(listen.ip(), port);
    Ok(())
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    handoff::__private::sys::socket::listen_reuseport(addr, BACKLOG)
}

fn local_port(fd: &OwnedFd) -> Result<u16, String> {
    rustix::net::getsockname(fd)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok())
        .map(|a| a.port())
        .ok_or_else(|| "getsockname on the reuseport socket failed".to_string())
}

fn start_handoff(
    server: &mut Server,
    policy: &str,
    workers: usize,
    exe: &Path,
    listen: SocketAddr,
) -> Result<(), String> {
    let model = server.model;
    let mut cmd = Command::new(exe);
    // `--test-knobs`: the `uneven` workload asks for `?cpu_ms=`.
    cmd.args(["run", "--listen", &listen.to_string(), "--workers", &workers.to_string(), "--policy", policy])
        .arg("--test-knobs")
        .env("HANDOFF_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());

    if let Some(mode) = model.hand_back() {
        cmd.args(["--hand-back", mode]);
    }
    // spawn_with_channel is used for its death signal; the master gets /dev/null as
    // an extra descriptor, which it marks close-on-exec at start-up and ignores.
    let devnull: OwnedFd = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?.into();
    let mut child = spawn_with_channel(&mut cmd, devnull.as_fd(), false)
        .map_err(|e| format!("{model}: start `{} run`: {e}", exe.display()))?;
    drop(devnull);
    server.master_pid = Some(child.id());
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    server.children.push(child);
    // A thread reads the master's log for as long as it runs (a full pipe would block
    // the master) and passes the lines on until nobody listens.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut forward = true;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if forward && tx.send(line).is_err() {
                forward = false;
            }
        }
    });
    let until = Instant::now() + START_TIMEOUT;
    let mut ready = std::collections::HashSet::new();
    let mut addr: Option<SocketAddr> = None;
    let mut last = Vec::new();
    while addr.is_none() || ready.len() < workers {
        let left = until.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => {
                return Err(format!(
                    "{model}: `handoff run` was not ready within {START_TIMEOUT:?}; its last lines:\n{}",
                    last.join("\n")
                ))
            }
        };
        if let Some(rest) = line.split("listening on ").nth(1) {
            // "listening on ADDR", perhaps followed by notes such as "(deferred accept)".
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.split("worker ").nth(1) {
            if let Some((slot, tail)) = rest.split_once(' ') {
                if tail.starts_with("ready") {
                    ready.insert(slot.to_string());
                }
            }
        }
        last.push(line);
        if last.len() > 10 {
            last.remove(0);
        }
    }
    server.addr = addr.ok_or("no address")?;
    Ok(())
}

impl Server {
    /// CPU time (user + system) the handoff master has used so far, in µs.
    pub fn master_cpu_us(&self) -> Option<u64> {
        cpu_time_us(self.master_pid?)
    }

    /// The worker processes' pids: the handoff master's children, or the kernel
    /// model's processes (which are all workers).
    pub fn worker_pids(&self) -> Vec<u32> {
        match self.master_pid {
            Some(m) => super::procs::children(m),
            None => self.pids(),
        }
    }

    /// The model's processes' pids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Stops every process of the model and waits for them.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for c in &self.children {
            let _ = handoff::__private::sys::process::signal(c.id(), Signal::TERM);
        }
        let until = Instant::now() + Duration::from_secs(3);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= until => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// utime + stime of `pid` from `/proc/<pid>/stat`, in µs.
pub fn cpu_time_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&stat).map(|t| t * 1_000_000 / rustix::param::clock_ticks_per_second().max(1))
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime (14) is 11, stime (15) is 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_fields() {
        let s = "1234 (we ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 1 0 100 1000 10";
        assert_eq!(parse_stat_cpu_ticks(s), Some(267));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert!(cpu_time_us(std::process::id()).is_some());
    }
}
