//! `--user` / `--group`: the master keeps its privileges (it binds), workers run as the
//! given user with no_new_privs. Only meaningful as root, which is how CI runs.

mod util;
use util::*;

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with(key)).unwrap_or("").to_string()
}

#[test]
fn workers_drop_to_the_given_user() {
    assert_eq!(rustix::process::getuid().as_raw(), 0, "this test needs root (CI runs as root)");
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--user", "nobody"]);
    h.wait_ready(2);
    assert!(status_field(h.pid(), "Uid:").starts_with("Uid:\t0\t"), "the master keeps root");
    for pid in h.worker_pids() {
        let uid = status_field(pid, "Uid:");
        assert!(uid.starts_with("Uid:\t65534\t65534\t65534"), "worker {pid}: {uid}");
        assert_eq!(status_field(pid, "NoNewPrivs:"), "NoNewPrivs:\t1");
        let groups = status_field(pid, "Groups:");
        assert!(!groups.split_whitespace().any(|g| g == "0"), "worker {pid} kept root's groups: {groups}");
    }
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
}

#[test]
fn an_unknown_user_is_a_clear_error() {
    let mut h = Handoff::spawn(&["--listen", "127.0.0.1:0", "--user", "no-such-user-xyz"], |_| {});
    assert_eq!(h.wait_exit(), Some(1));
    assert!(h.lines().join("\n").contains("--user no-such-user-xyz: no such user"), "{:?}", h.lines());
}

#[test]
fn a_numeric_user_takes_its_group_from_passwd_or_needs_one() {
    assert_eq!(rustix::process::getuid().as_raw(), 0, "this test needs root (CI runs as root)");
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1", "--user", "65534"]);
    h.wait_ready(1);
    for pid in h.worker_pids() {
        assert!(status_field(pid, "Uid:").starts_with("Uid:\t65534\t"), "worker {pid}");
        let gid = status_field(pid, "Gid:");
        assert!(gid.starts_with("Gid:\t65534\t65534\t65534"), "worker {pid} kept the master's group: {gid}");
    }
    drop(h);
    // No /etc/passwd line, no --group: refused, rather than a worker in group root.
    let mut h = Handoff::spawn(&["--listen", "127.0.0.1:0", "--user", "4242424"], |_| {});
    assert_eq!(h.wait_exit(), Some(1));
    assert!(h.lines().join("\n").contains("--user 4242424 has no /etc/passwd line"), "{:?}", h.lines());
}
