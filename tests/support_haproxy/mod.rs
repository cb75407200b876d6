//! A real HAProxy in front of test servers, for the multi-host tests (issue 8).
//!
//! [`Haproxy::start`] writes an `haproxy.cfg` into a fresh temporary directory (a
//! frontend on a free loopback port, one backend with one `server` line per
//! [`Backend`], each `send-proxy-v2` with fast health checks), starts Debian's
//! `haproxy` in the foreground and waits until its frontend accepts connections. The
//! process is killed by pid when the handle drops, and the directory removed. The
//! admin socket answers [`Haproxy::server_status`] so a test can wait for a backend to
//! be seen UP or DOWN by the health checks.
//!
//! haproxy is a hard requirement: when it is missing, [`haproxy_bin`] tries
//! `apt-get install haproxy` and, failing that, panics with what to do. A multi-host
//! test never passes by skipping.
//!
//! Everything is on loopback, and every wait is bounded by [`WAIT`].

#![allow(dead_code, reason = "each test binary uses a part of the shared helpers")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// How haproxy balances: `Http` parses requests (and can retry them on another
/// server), `Tcp` relays bytes (a pure layer-4 balancer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
}

/// One `server` line.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where haproxy sends client connections, with a PROXY v2 header.
    pub addr: SocketAddr,
    /// Where it sends `GET /` health checks, if not to `addr` itself. A check sent to
    /// another port carries no PROXY header (haproxy's rule for `check port`), which
    /// fits handoff's plain `--health` endpoint.
    pub check: Option<SocketAddr>,
    /// The server keyword for the header: `send-proxy-v2` (binary, the default) or
    /// `send-proxy` (v1, text).
    pub send_proxy: &'static str,
}

impl Backend {
    /// A server checked on its own address (the checks then carry a PROXY header).
    pub fn new(addr: SocketAddr) -> Backend {
        Backend { addr, check: None, send_proxy: "send-proxy-v2" }
    }

    /// A server checked on a separate health address.
    pub fn with_health(addr: SocketAddr, health: SocketAddr) -> Backend {
        Backend { addr, check: Some(health), send_proxy: "send-proxy-v2" }
    }

    /// The same server, sent PROXY v1 text headers instead.
    pub fn v1(self) -> Backend {
        Backend { send_proxy: "send-proxy", ..self }
    }
}

/// Finds `haproxy`, installing Debian's package if it is missing; panics with a clear
/// message if that fails.
pub fn haproxy_bin() -> PathBuf {
    if let Some(p) = find_haproxy() {
        return p;
    }
    let mut log = String::new();
    for args in [&["install", "-y", "-qq", "haproxy"][..], &["update", "-qq"], &["install", "-y", "-qq", "haproxy"]] {
        match Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null()).output()
        {
            Ok(out) => {
                log.push_str(&String::from_utf8_lossy(&out.stderr));
                if find_haproxy().is_some() {
                    break;
                }
            }
            Err(e) => log.push_str(&format!("cannot run apt-get: {e}\n")),
        }
    }
    find_haproxy().unwrap_or_else(|| {
        panic!(
            "haproxy is required by the multi-host tests and could not be installed \
             (run `apt-get install haproxy` as root, or put haproxy in PATH); apt-get said:\n{log}"
        )
    })
}

fn find_haproxy() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

/// A free loopback port (bound, read and released: another process could take it in
/// between, which is unlikely enough on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// Renders the configuration. Server `i` is named `s{i}`.
pub fn config(mode: Mode, frontend: SocketAddr, backends: &[Backend], admin_socket: &Path) -> String {
    let mode = match mode {
        Mode::Http => "http",
        Mode::Tcp => "tcp",
    };
    let mut cfg = format!(
        "global
    maxconn 4096
    stats socket {admin} mode 600 level admin

defaults
    mode {mode}
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 3
    option redispatch

frontend fe
    bind {frontend}
    default_backend be

backend be
    balance roundrobin
    option httpchk GET /
    default-server inter 200ms fall 1 rise 1
",
        admin = admin_socket.display(),
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("    server s{i} {} {} check", b.addr, b.send_proxy));
        if let Some(c) = b.check {
            cfg.push_str(&format!(" addr {} port {}", c.ip(), c.port()));
        }
        cfg.push('\n');
    }
    cfg
}

/// A running haproxy, killed by pid on drop.
pub struct Haproxy {
    child: Child,
    dir: PathBuf,
    /// The frontend clients connect to.
    pub frontend: SocketAddr,
    /// Where its stderr goes (read it with [`Haproxy::log`]).
    pub log_path: PathBuf,
}

impl Haproxy {
    /// Starts haproxy in front of `backends` and waits until its frontend accepts.
    pub fn start(mode: Mode, backends: &[Backend]) -> Haproxy {
        Haproxy::start_config(|frontend, admin| config(mode, frontend, backends, admin))
    }

    /// Starts haproxy with the configuration `render(frontend, admin_socket)` writes,
    /// and waits until its frontend accepts.
    pub fn start_config(render: impl FnOnce(SocketAddr, &Path) -> String) -> Haproxy {
        let bin = haproxy_bin();
        let dir = std::env::temp_dir().join(format!("handoff-haproxy-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("create haproxy dir");
        let frontend: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, render(frontend, &dir.join("admin.sock"))).expect("write config");
        let log_path = dir.join("haproxy.log");
        let log = std::fs::File::create(&log_path).expect("create haproxy log");
        // Check the file first: a config error is then one clear message.
        let check = Command::new(&bin).arg("-c").arg("-f").arg(&cfg_path).output().expect("run haproxy -c");
        assert!(
            check.status.success(),
            "haproxy rejected {}:\n{}{}",
            cfg_path.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(&bin)
            .arg("-db") // foreground
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut h = Haproxy { child, dir, frontend, log_path };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&frontend, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("haproxy exited with {status} before listening:\n{}", h.log());
            }
            assert!(Instant::now() < deadline, "haproxy did not listen on {frontend} within {WAIT:?}:\n{}", h.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// haproxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What haproxy wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends one command to the admin socket and returns the answer.
    pub fn admin(&self, command: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(self.dir.join("admin.sock"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The health-check status of server `s{index}` ("UP", "DOWN", "MAINT", ...).
    pub fn server_status(&self, index: usize) -> Option<String> {
        let csv = self.admin("show stat").ok()?;
        let header = csv.lines().next()?.trim_start_matches("# ");
        let col = header.split(',').position(|c| c == "status")?;
        let name = format!("s{index}");
        csv.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > col && f[0] == "be" && f[1] == name)
            .map(|f| {
                // "UP 1/2" while rising: keep the word.
                f[col].split(' ').next().unwrap_or_default().to_string()
            })
    }

    /// Sets server `s{index}`'s administrative state: `"drain"` (no new connections,
    /// existing ones go on), `"maint"` or `"ready"`.
    pub fn set_state(&self, index: usize, state: &str) {
        let out = self.admin(&format!("set server be/s{index} state {state}")).expect("admin socket");
        assert!(out.trim().is_empty(), "set server be/s{index} state {state}: {out}");
    }

    /// Waits until server `s{index}` has `status`; panics after [`WAIT`].
    pub fn wait_status(&self, index: usize, status: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.server_status(index);
            if now.as_deref() == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server s{index} is {now:?}, not {status}, after {WAIT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // Child::kill signals this pid only (SIGKILL); then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response to [`http_get`].
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// One `GET path` with `Connection: close`, bounded by [`WAIT`].
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, WAIT)?;
    s.set_read_timeout(Some(WAIT))?;
    s.set_write_timeout(Some(WAIT))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad response {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    Ok(Response { status, body: body.to_string() })
}
