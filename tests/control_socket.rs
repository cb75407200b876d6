//! The control socket: one per master, found through the registry without guessing,
//! answering only its own user and root, and never mistaken for an impostor's.
//!
//! Each test gives its masters and its `handoff status`/`ctl` runs a private runtime
//! directory (`$HANDOFF_RUNTIME_DIR`), so that they see only the masters of the test
//! (CI runs as root, whose masters otherwise register in /run/handoff, shared by every
//! test).
//! The tests that switch users run as root, as CI does.

mod util;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use util::*;

const NOBODY: u32 = 65534;

/// The runtime directory of a test: `run` in its temporary directory (created by the
/// first master, unless the test made it).
fn run_dir(tmp: &TempDir) -> std::path::PathBuf {
    tmp.join("run")
}

/// `handoff ARGS` with the test's runtime directory; returns (success, stdout, stderr).
fn handoff_in(tmp: &TempDir, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(handoff_bin()).args(args).env("HANDOFF_RUNTIME_DIR", run_dir(tmp)).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Starts `handoff run ARGS` with the test's runtime directory.
fn start_in(tmp: &TempDir, args: &[&str]) -> Handoff {
    let dir = run_dir(tmp);
    Handoff::start_with(args, move |cmd| {
        cmd.env("HANDOFF_RUNTIME_DIR", dir);
    })
}

fn status_of(tmp: &TempDir, selector: &[&str]) -> serde_json::Value {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(selector);
    let (ok, out, err) = handoff_in(tmp, &args);
    assert!(ok, "status {selector:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn assert_root() {
    assert_eq!(rustix::process::getuid().as_raw(), 0, "this test needs root (CI runs as root)");
}

#[test]
fn two_masters_each_have_their_own_socket_and_neither_is_steered_by_mistake() {
    let tmp = TempDir::new("ctl-two");
    let a = start_in(&tmp, &["--listen", "127.0.0.1:0", "--workers", "1"]);
    let b = start_in(&tmp, &["--listen", "127.0.0.1:0", "--workers", "1"]);
    a.wait_ready(1);
    b.wait_ready(1);
    let run = run_dir(&tmp);
    assert_eq!(mode(&run), 0o700, "the runtime directory is private");
    for h in [&a, &b] {
        let sock = run.join(format!("{}.sock", h.pid()));
        assert_eq!(mode(&sock), 0o600, "{}", sock.display());
        assert!(h.lines().iter().any(|l| l.contains(&format!("control socket at {}", sock.display()))));
    }
    // The list names both, with their listeners and sockets.
    let (ok, list, err) = handoff_in(&tmp, &["status", "--list"]);
    assert!(ok, "{err}");
    for h in [&a, &b] {
        let line = list.lines().find(|l| l.trim_start().starts_with(&h.pid().to_string())).unwrap_or_else(|| {
            panic!("master {} not listed:\n{list}", h.pid());
        });
        assert!(line.contains(&h.addr().to_string()) && line.contains(&format!("{}.sock", h.pid())), "{line}");
    }
    // Without a choice, status and ctl refuse, and say which masters there are.
    for args in [&["status"][..], &["ctl", "scale", "3"]] {
        let (ok, _, err) = handoff_in(&tmp, args);
        assert!(!ok, "{args:?} acted although two masters run");
        assert!(err.contains("2 handoff masters are running; choose one with --master PID or --listen ADDR"), "{err}");
        assert!(err.contains(&a.pid().to_string()) && err.contains(&b.pid().to_string()), "{err}");
    }
    assert_eq!(status_of(&tmp, &["--master", &b.pid().to_string()])["workers_wanted"], 1, "nothing was scaled");
    // Chosen by pid: ctl acts on that one only and says which it was.
    let (ok, out, err) = handoff_in(&tmp, &["ctl", "--master", &a.pid().to_string(), "scale", "2"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("master pid {} ({}): scaling to 2 workers", a.pid(), a.addr()));
    assert_eq!(status_of(&tmp, &["--master", &a.pid().to_string()])["workers_wanted"], 2);
    // Chosen by listen address, or by its port alone.
    let st = status_of(&tmp, &["--listen", &b.addr().to_string()]);
    assert_eq!((st["pid"].as_u64(), st["workers_wanted"].as_u64()), (Some(b.pid() as u64), Some(1)));
    let st = status_of(&tmp, &["--listen", &b.addr().port().to_string()]);
    assert_eq!(st["pid"].as_u64(), Some(b.pid() as u64));
    let (ok, _, err) = handoff_in(&tmp, &["ctl", "--master", "1", "stop"]);
    assert!(!ok && err.contains("no running master matches --master 1"), "{err}");
    // Once one has stopped, the other is the only one: no choice needed.
    let mut a = a;
    let (ok, out, err) = handoff_in(&tmp, &["ctl", "--master", &a.pid().to_string(), "stop"]);
    assert!(ok && out.contains("stopping gracefully"), "{out}{err}");
    assert_eq!(a.wait_exit(), Some(0));
    assert!(!run.join(format!("{}.json", a.pid())).exists(), "the registry entry goes with its master");
    assert!(!run.join(format!("{}.sock", a.pid())).exists());
    assert_eq!(status_of(&tmp, &[])["pid"].as_u64(), Some(b.pid() as u64));
    // A master killed outright leaves its entry behind: it is found dead and removed.
    let mut b = b;
    b.signal(Signal::KILL);
    b.wait_exit();
    assert!(run.join(format!("{}.json", b.pid())).exists(), "SIGKILL leaves the entry");
    let (ok, _, err) = handoff_in(&tmp, &["status"]);
    assert!(!ok && err.contains("no handoff master of yours is running"), "{err}");
    assert!(!run.join(format!("{}.json", b.pid())).exists(), "the stale entry is removed");
    assert!(!run.join(format!("{}.sock", b.pid())).exists(), "and its socket");
}

#[test]
fn a_master_with_an_explicit_control_path_is_listed_too() {
    let tmp = TempDir::new("ctl-explicit");
    let dir = TempDir::new("ctl-explicit-sock");
    let control = dir.path_str("c.sock");
    let h = start_in(&tmp, &["--listen", "127.0.0.1:0", "--workers", "1", "--control", &control]);
    h.wait_ready(1);
    let (ok, list, err) = handoff_in(&tmp, &["status", "--list", "--json"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["pid"].as_u64(), Some(h.pid() as u64), "{list}");
    assert_eq!(list[0]["control"], control.as_str());
    assert_eq!(list[0]["listeners"][0], h.addr().to_string());
    let (ok, out, err) = handoff_in(&tmp, &["ctl", "scale", "2"]);
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("master pid {} ", h.pid())), "{out}");
    assert_eq!(status_json(&control)["workers_wanted"], 2);
}

/// Whoever connects is checked by the kernel's record of its credentials, not by the
/// socket's file mode: here the socket is opened to everyone (mode 0666 in a
/// world-searchable directory) and a client that dropped to `nobody` is still refused.
#[test]
fn a_control_client_of_another_user_is_refused() {
    assert_root();
    let dir = TempDir::new("ctl-peer");
    let control = dir.path_str("c.sock");
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1", "--control", &control]);
    h.wait_ready(1);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [&["status", "--control", &control][..], &["ctl", "--control", &control, "stop"]] {
        // std's Command forks, drops the groups, setgid/setuid, then execs.
        let out = Command::new(handoff_bin()).args(args).uid(NOBODY).gid(NOBODY).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} as nobody succeeded: {err}");
        assert!(
            err.contains("refused: uid 65534") && err.contains("it answers uid 0 and root only"),
            "{args:?}: {err}"
        );
    }
    let line = h.wait_line("control socket: refused a client");
    assert!(line.contains("uid 65534"), "{line}");
    // The master is untouched (`stop` was not obeyed) and counts the refusals.
    let st = status_json(&control);
    assert_eq!(st["phase"], "running");
    assert_eq!(st["admin"]["refused_peer"], 2, "{}", st["admin"]);
}

/// A socket at the path served by another user (an impostor that got there first) is
/// refused by the client before it sends a command: `stop` must not report success.
#[test]
fn a_client_refuses_a_socket_served_by_another_user() {
    assert_root();
    let dir = TempDir::new("ctl-impostor");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path_str("c.sock");
    // The impostor answers every command with success.
    let script = "import socket,sys\n\
                  s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)\n\
                  while True:\n    c,_=s.accept()\n    try: c.recv(100); c.sendall(b'{\"ok\":true,\"message\":\"stopping gracefully\"}')\n    except OSError: pass\n    c.close()\n";
    let mut impostor = Command::new("python3").args(["-c", script, &path]).uid(NOBODY).gid(NOBODY).spawn().unwrap();
    wait_until("the impostor to listen", || std::os::unix::net::UnixStream::connect(&path).is_ok());
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), NOBODY);
    for args in [&["ctl", "--control", &path, "stop"][..], &["status", "--control", &path]] {
        let out = Command::new(handoff_bin()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} trusted the impostor: {}", String::from_utf8_lossy(&out.stdout));
        assert!(err.contains("is served by uid 65534, neither you (uid 0) nor root"), "{err}");
    }
    // And a master given that path refuses to start rather than share or steal it.
    let mut h = Handoff::spawn(&["--listen", "127.0.0.1:0", "--control", &path], |_| {});
    assert_eq!(h.wait_exit(), Some(1));
    let log = h.lines().join("\n");
    assert!(log.contains("already exists and belongs to uid 65534"), "{log}");
    let _ = impostor.kill(); // our child, by its pid
    let _ = impostor.wait();
}

/// A runtime directory or socket path that another user could control is refused with
/// a clear error, never used.
#[test]
fn an_unsafe_runtime_directory_or_socket_path_is_refused() {
    assert_root();
    let start_fails = |tmp: &TempDir, extra: &[&str], expect: &str| {
        let dir = run_dir(tmp);
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut h = Handoff::spawn(&args, move |cmd| {
            cmd.env("HANDOFF_RUNTIME_DIR", dir);
        });
        assert_eq!(h.wait_exit(), Some(1), "started with {extra:?}");
        let log = h.lines().join("\n");
        assert!(log.contains(expect) && log.contains("refusing to use it"), "expected {expect:?} in:\n{log}");
    };
    // Pre-created by another user.
    let tmp = TempDir::new("ctl-unsafe-owner");
    std::fs::create_dir(run_dir(&tmp)).unwrap();
    std::os::unix::fs::chown(run_dir(&tmp), Some(NOBODY), Some(NOBODY)).unwrap();
    start_fails(&tmp, &[], "belongs to uid 65534, not to you (uid 0)");
    // Ours, but open to others.
    let tmp = TempDir::new("ctl-unsafe-mode");
    std::fs::create_dir(run_dir(&tmp)).unwrap();
    std::fs::set_permissions(run_dir(&tmp), std::fs::Permissions::from_mode(0o777)).unwrap();
    start_fails(&tmp, &[], "has mode 0777: others may use it");
    // A symbolic link to somewhere else.
    let tmp = TempDir::new("ctl-unsafe-link");
    let elsewhere = TempDir::new("ctl-unsafe-elsewhere");
    std::os::unix::fs::symlink(&elsewhere.0, run_dir(&tmp)).unwrap();
    start_fails(&tmp, &[], "is a symbolic link");
    // --control in a directory anyone may write (not sticky): the socket could be
    // replaced under the master.
    let tmp = TempDir::new("ctl-unsafe-explicit");
    let open = TempDir::new("ctl-unsafe-open");
    std::fs::set_permissions(&open.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    start_fails(&tmp, &["--control", &open.path_str("c.sock")], "which others may write (mode 0777)");
    // --control naming a file that is not a socket.
    let plain = TempDir::new("ctl-unsafe-file");
    std::fs::write(plain.join("c.sock"), "not a socket").unwrap();
    start_fails(&tmp, &["--control", &plain.path_str("c.sock")], "already exists and is not a socket");
    // The safe setups start (the runtime directory is created 0700).
    let tmp = TempDir::new("ctl-safe");
    let h = start_in(&tmp, &["--listen", "127.0.0.1:0", "--workers", "1"]);
    h.wait_ready(1);
    assert_eq!(mode(&run_dir(&tmp)), 0o700);
}

#[test]
fn a_live_masters_explicit_path_is_not_taken_over() {
    let dir = TempDir::new("ctl-inuse");
    let control = dir.path_str("c.sock");
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1", "--control", &control]);
    h.wait_ready(1);
    let mut second = Handoff::spawn(&["--listen", "127.0.0.1:0", "--control", &control], |_| {});
    assert_eq!(second.wait_exit(), Some(1));
    let log = second.lines().join("\n");
    assert!(log.contains("another master listens there"), "{log}");
    assert_eq!(status_json(&control)["pid"].as_u64(), Some(h.pid() as u64), "the first still answers there");
}
