//! The Debian package (issue 18, item 5): `cargo deb` builds it from this tree, and it
//! holds what an operator needs: the stripped binary (under 10 MB), the systemd unit,
//! the config file as a conffile, the docs and the example workers. `dpkg -i` installs
//! it (its postinst makes the `handoff` system user); the unit's own `ExecStart` line,
//! run as systemd runs it (clean environment, `NOTIFY_SOCKET`, `WATCHDOG_USEC`, the
//! runtime directory), serves HTTP with its workers as that user, reloads through the
//! unit's `ExecReload` line and stops gracefully on SIGTERM; `dpkg --purge` takes it all
//! away again (and `deluser` the user, if the package made it).
//!
//! The test builds the package itself, so it is never stale: `cargo deb` shares
//! `target/release` with `cargo build --release` and takes a few seconds when that build
//! is current (the first release build takes minutes). It needs cargo-deb (`cargo
//! install cargo-deb --locked`), dpkg, adduser and systemd-analyze; `.ci/run` installs
//! them, and a missing one fails the test with the command that installs it.
//!
//! Installing changes the machine, so the test installs only where that disturbs
//! nothing: as root, with no `handoff` package installed already, and no systemd
//! running (whose postinst hook would start the service). Anywhere else (or with
//! `HANDOFF_DEB_TEST_UNPACK=1`) it unpacks the package with `dpkg -x` into a temporary
//! root instead, says so, and runs the same unit lines from there, as the invoking user.

mod util;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use util::*;

/// The bound on the shipped binary.
const MAX_BINARY: u64 = 10 * 1000 * 1000;

/// A cold release build on a busy two-core machine takes about five minutes.
const BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);

/// dpkg, dpkg-deb, systemd-analyze.
const TOOL_LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd` to its end, or kills it (its whole process group: cargo's rustc children
/// too) after `limit`; the output either way. An error only if it cannot be started.
fn run_within(mut cmd: Command, limit: Duration) -> std::io::Result<Output> {
    use std::os::unix::process::CommandExt;
    let shown = format!("{cmd:?}");
    let mut child = cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    // Read both pipes while it runs: a child blocked on a full pipe never ends.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            // Our unreaped child leads the group: its id names no one else's.
            let pgid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
            let _ = child.wait();
            panic!("{shown} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() })
}

/// Runs a tool that must be there (else: how to install it) and must succeed; its stdout.
fn tool(program: &str, args: &[&str], install: &str) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_within(cmd, TOOL_LIMIT)
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}): install it ({install}); .ci/run does"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo deb` on this tree, writing the package into `dir`; its path.
fn build_deb(dir: &TempDir) -> PathBuf {
    let deb = dir.join("handoff.deb");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root()).args(["deb", "--output"]).arg(&deb).args(["--", "--locked"]);
    let t0 = Instant::now();
    let out = run_within(cmd, BUILD_LIMIT).expect("cargo");
    let log = String::from_utf8_lossy(&out.stderr);
    if log.contains("no such command") {
        panic!("cargo-deb is not installed: cargo install cargo-deb --locked (.ci/run does)");
    }
    assert!(out.status.success(), "cargo deb failed ({}):\n{log}", out.status);
    eprintln!("cargo deb: {:.1} s", t0.elapsed().as_secs_f64());
    deb
}

/// The names of the sections of a 64-bit little-endian ELF file (what `readelf -S`
/// lists).
fn elf_sections(elf: &[u8]) -> Vec<String> {
    assert!(elf.starts_with(b"\x7fELF\x02\x01"), "not a 64-bit little-endian ELF file");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(header(shstrndx) + 0x18);
    (0..shnum)
        .map(|i| {
            let start = names + u32_at(header(i));
            let len = elf[start..].iter().position(|&b| b == 0).unwrap();
            String::from_utf8_lossy(&elf[start..start + len]).into_owned()
        })
        .collect()
}

/// The `[Service]` settings of a unit file (the last of a repeated key).
fn service_section(unit: &str) -> HashMap<String, String> {
    let mut section = "";
    let mut keys = HashMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if let Some((k, v)) = line.split_once('=').filter(|_| section == "[Service]" && !line.starts_with('#')) {
            keys.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    keys
}

/// A command line of a unit as systemd splits it: on spaces, with no quoting,
/// specifier or variable other than those in `vars` (the lines of this unit use none
/// more, which this checks rather than assumes).
fn unit_command(line: &str, vars: &[(&str, String)]) -> Vec<String> {
    let mut line = line.to_string();
    for (name, value) in vars {
        line = line.replace(name, value);
    }
    assert!(!line.contains(['"', '\'', '%', '$', '\\']), "a unit line this test cannot run faithfully: {line}");
    line.split_whitespace().map(String::from).collect()
}

/// Where the package went: installed with dpkg into `/`, or unpacked into a temporary
/// root. Purged (or removed with its directory) when dropped, also when the test fails.
struct Installed {
    /// None when installed with dpkg.
    unpacked: Option<PathBuf>,
    /// The runtime directory the unit's `RuntimeDirectory=` names (made as systemd
    /// does), and whether this test made it.
    run: PathBuf,
    made_run: bool,
    /// Whether dpkg's postinst made the user `handoff` (the test then removes it
    /// again: Debian keeps system users on purge, a test leaves the machine as it was).
    made_user: bool,
    purged: bool,
}

impl Installed {
    fn new(deb: &Path, dir: &TempDir) -> Installed {
        let root_user = rustix::process::geteuid().is_root();
        let status = Command::new("dpkg-query").args(["-W", "-f", "${Status}", "handoff"]).output();
        let already = status.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"));
        let systemd = Path::new("/run/systemd/system").exists();
        let forced = std::env::var_os("HANDOFF_DEB_TEST_UNPACK").is_some_and(|v| v == "1");
        if root_user && !already && !systemd && !forced {
            let had_user =
                Command::new("getent").args(["passwd", "handoff"]).output().is_ok_and(|o| o.status.success());
            let inst = Installed {
                unpacked: None,
                run: "/run/handoff".into(),
                made_run: false,
                made_user: !had_user,
                purged: false,
            };
            tool("dpkg", &["-i", deb.to_str().unwrap()], "apt-get install dpkg adduser");
            return inst;
        }
        let why = if forced {
            "HANDOFF_DEB_TEST_UNPACK=1"
        } else if !root_user {
            "not root"
        } else if already {
            "a handoff package is installed here"
        } else {
            "systemd runs here (the postinst would start the service)"
        };
        eprintln!("NOT installing the package ({why}): unpacked with dpkg -x into a temporary root instead");
        let root = dir.join("root");
        tool("dpkg", &["-x", deb.to_str().unwrap(), root.to_str().unwrap()], "apt-get install dpkg");
        Installed {
            unpacked: Some(root),
            run: dir.join("run/handoff"),
            made_run: false,
            made_user: false,
            purged: false,
        }
    }

    /// Where a path of the package is on this machine.
    fn path(&self, p: &str) -> PathBuf {
        match &self.unpacked {
            Some(root) if p.starts_with("/usr/") || p.starts_with("/etc/") => root.join(&p[1..]),
            Some(_) if p.starts_with("/run/handoff") => {
                self.run.join(p["/run/handoff".len()..].trim_start_matches('/'))
            }
            _ => PathBuf::from(p),
        }
    }

    /// A path of a unit's command line, as [`Installed::path`] (other arguments as they are).
    fn arg(&self, a: &str) -> String {
        if a.starts_with('/') {
            self.path(a).to_string_lossy().into_owned()
        } else {
            a.to_string()
        }
    }

    /// Makes the runtime directory as systemd does for `RuntimeDirectory=`, unless it
    /// is there already (root's masters share it).
    fn make_run_dir(&mut self, mode: u32) {
        if !self.run.exists() {
            std::fs::create_dir_all(self.run.parent().unwrap()).unwrap();
            std::fs::DirBuilder::new().mode(mode).create(&self.run).unwrap();
            self.made_run = true;
        }
    }

    /// `dpkg --purge handoff` (when installed with dpkg), and the user if the package
    /// made it; both must succeed.
    fn purge(&mut self) {
        self.purged = true;
        if self.unpacked.is_none() {
            tool("dpkg", &["--purge", "handoff"], "apt-get install dpkg");
        }
        if self.made_user {
            tool("deluser", &["--system", "--quiet", "handoff"], "apt-get install adduser");
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged && self.unpacked.is_none() {
            let _ = Command::new("dpkg").args(["--purge", "handoff"]).stdout(Stdio::null()).status();
        }
        if !self.purged && self.made_user {
            let _ = Command::new("deluser").args(["--system", "--quiet", "handoff"]).stderr(Stdio::null()).status();
        }
        if self.made_run {
            // Only if empty: another master run by root may have come since.
            let _ = std::fs::remove_dir(&self.run);
        }
    }
}

/// The next notification other than a watchdog ping; fails after [`WAIT`].
fn next_notification(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    loop {
        let n = sock.recv(&mut buf).expect("a notification from the master within the timeout");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !msg.contains("WATCHDOG=1") {
            return msg;
        }
    }
}

/// Waits for a notification containing `what`, skipping the others.
fn wait_notification(sock: &UnixDatagram, what: &str) {
    while !next_notification(sock).contains(what) {}
}

#[test]
fn the_package_installs_and_its_service_answers() {
    let dir = TempDir::new("deb");
    let deb = build_deb(&dir);
    let deb_str = deb.to_str().unwrap();
    let dpkg = "apt-get install dpkg";

    // What dpkg will see: the control fields, the conffiles, the maintainer scripts.
    let info = tool("dpkg-deb", &["--info", deb_str], dpkg);
    for member in ["control", "conffiles", "postinst", "prerm", "postrm"] {
        let listed = |l: &str| l.contains(" bytes,") && l.split_whitespace().any(|w| w == member);
        assert!(info.lines().any(listed), "no {member} in:\n{info}");
    }
    let field = |f: &str| tool("dpkg-deb", &["--field", deb_str, f], dpkg).trim().to_string();
    assert_eq!(field("Package"), "handoff");
    // lintian and apt's changelog tools read the version from the changelog's top entry.
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Version"), version);
    let changelog = std::fs::read_to_string(root().join("packaging/deb/changelog")).unwrap();
    assert!(
        changelog.starts_with(&format!("handoff ({version}) ")),
        "packaging/deb/changelog needs an entry for {version} at the top (dch -v {version}, or by hand)"
    );
    assert!(field("Depends").contains("adduser"), "the postinst runs adduser: {}", field("Depends"));
    let conffiles = tool("dpkg-deb", &["--info", deb_str, "conffiles"], dpkg);
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), ["/etc/handoff/handoff.toml"]);
    let postinst = tool("dpkg-deb", &["--info", deb_str, "postinst"], dpkg);
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(postinst.contains("deb-systemd-helper enable handoff.service"), "{postinst}");

    // What it unpacks: `-rwxr-xr-x root/root SIZE DATE TIME ./PATH` lines.
    let contents = tool("dpkg-deb", &["--contents", deb_str], dpkg);
    let files: HashMap<&str, (&str, u64)> = contents
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(5)?.trim_start_matches('.'), (f[0], f[2].parse().ok()?)))
        })
        .collect();
    for path in [
        "/usr/bin/handoff",
        "/usr/lib/systemd/system/handoff.service",
        "/etc/handoff/handoff.toml",
        "/usr/share/doc/handoff/README.md",
        "/usr/share/doc/handoff/OPERATIONS.md",
        "/usr/share/doc/handoff/PROTOCOL.md",
        "/usr/share/doc/handoff/copyright",
        "/usr/share/doc/handoff/changelog.Debian.gz",
        "/usr/share/handoff/examples/python/worker.py",
    ] {
        assert!(files.contains_key(path), "{path} is not in the package:\n{contents}");
    }
    let (mode, size) = files["/usr/bin/handoff"];
    assert_eq!(mode, "-rwxr-xr-x");
    assert!(size < MAX_BINARY, "/usr/bin/handoff is {size} bytes: the issue wants it under {MAX_BINARY}");
    eprintln!("/usr/bin/handoff in the package: {size} bytes");

    let mut inst = Installed::new(&deb, &dir);
    let bin = inst.path("/usr/bin/handoff");
    let sections = elf_sections(&std::fs::read(&bin).unwrap());
    assert!(sections.iter().any(|s| s == ".text"), "{sections:?}");
    assert!(!sections.iter().any(|s| s.starts_with(".debug")), "debug info in the shipped binary: {sections:?}");
    let handoff_uid = if inst.unpacked.is_none() {
        let passwd = tool("getent", &["passwd", "handoff"], "libc-bin");
        let uid: u32 = passwd.split(':').nth(2).and_then(|u| u.parse().ok()).expect("a uid");
        assert!(uid < 1000, "handoff should be a system user: {passwd}");
        let verify =
            tool("systemd-analyze", &["verify", "/usr/lib/systemd/system/handoff.service"], "apt-get install systemd");
        assert!(verify.trim().is_empty(), "{verify}");
        Some(uid)
    } else {
        None
    };

    // The unit, read from where the package put it.
    let unit = std::fs::read_to_string(inst.path("/usr/lib/systemd/system/handoff.service")).unwrap();
    let service = service_section(&unit);
    assert_eq!(service["Type"], "notify");
    let start = unit_command(&service["ExecStart"], &[]);
    assert_eq!(start[0], "/usr/bin/handoff", "{start:?}");
    assert!(start.windows(2).any(|w| w == ["--config", "/etc/handoff/handoff.toml"]), "{start:?}");
    assert_eq!(service["RuntimeDirectory"], "handoff");
    inst.make_run_dir(u32::from_str_radix(&service["RuntimeDirectoryMode"], 8).unwrap());
    let watchdog_s: u64 = service["WatchdogSec"].parse().unwrap();

    // The shipped config, with the one edit an operator makes: where to listen (any
    // free port here, not 8080, which may be taken). Unpacked, as someone who may not
    // switch users, the workers also stay as the invoking user.
    let config = inst.path("/etc/handoff/handoff.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let shipped = "listen = [\"127.0.0.1:8080\"]";
    assert!(text.contains(shipped) && text.contains("\nuser = \"handoff\"\n"), "{text}");
    let mut edited = text.replace(shipped, "listen = [\"127.0.0.1:0\"]");
    if inst.unpacked.is_some() {
        edited = edited.replace("\nuser = \"handoff\"\n", "\n");
    }
    std::fs::write(&config, &edited).unwrap();

    // ExecStart as systemd runs it: a clean environment, the notify socket, the
    // watchdog interval.
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let mut cmd = Command::new(inst.path(&start[0]));
    cmd.args(start[1..].iter().map(|a| inst.arg(a)))
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", (watchdog_s * 1_000_000).to_string());
    if inst.unpacked.is_some() {
        cmd.env("HANDOFF_RUNTIME_DIR", &inst.run);
    }
    let mut h = Handoff::start_command(cmd);
    wait_notification(&notify, "READY=1");
    let addr = h.addr();
    let r = http_get(addr, "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.worker.is_some(), "{r:?}");
    if let Some(uid) = handoff_uid {
        for pid in h.children() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let real = status.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().next());
            assert_eq!(real.flatten(), Some(uid.to_string().as_str()), "worker {pid} is not user handoff");
        }
    }
    let control = start.windows(2).find(|w| w[0] == "--control").map(|w| inst.arg(&w[1])).expect("--control");
    let out = Command::new(&bin).args(["status", "--json", "--control", &control]).output().unwrap();
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(running_workers(&st) >= 1, "{st}");

    // ExecReload, with the port now pinned in the file (a new `:0` would be a new
    // address): the master re-reads the file and restarts its workers.
    std::fs::write(&config, edited.replace("127.0.0.1:0", &addr.to_string())).unwrap();
    let reload = unit_command(&service["ExecReload"], &[("$MAINPID", h.pid().to_string())]);
    let mut cmd = Command::new(inst.arg(&reload[0]));
    cmd.args(reload[1..].iter().map(|a| inst.arg(a)));
    let out = run_within(cmd, TOOL_LIMIT).expect("ExecReload");
    assert!(out.status.success(), "{reload:?}: {}", String::from_utf8_lossy(&out.stderr));
    wait_notification(&notify, "RELOADING=1");
    wait_notification(&notify, "READY=1");
    assert_eq!(http_get(addr, "/").unwrap().status, 200);

    // systemctl stop: SIGTERM to the master, which drains and exits 0.
    h.signal(Signal::TERM);
    wait_notification(&notify, "STOPPING=1");
    assert_eq!(h.wait_exit(), Some(0));
    drop(h);

    inst.purge();
    if inst.unpacked.is_none() {
        for gone in ["/usr/bin/handoff", "/usr/lib/systemd/system/handoff.service", "/etc/handoff/handoff.toml"] {
            assert!(!Path::new(gone).exists(), "{gone} is still there after dpkg --purge");
        }
    }
    if inst.made_user {
        let groups = tool("getent", &["group"], "libc-bin");
        assert!(!groups.lines().any(|l| l.starts_with("handoff:")), "group handoff left behind");
    }
}
