//! A worker holds only what it should: stdio, its channel, its client sockets. No
//! listening socket, no other worker's channel, nothing the master inherited.
#![allow(
    unsafe_code,
    reason = "Command::pre_exec sets up the child under test; the one unsafe block says why it is sound"
)]

mod util;
use std::collections::BTreeSet;
use util::*;

#[test]
fn builtin_workers_share_no_socket_with_the_master_or_each_other() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--workers", "3"]);
    h.wait_ready(3);
    let master = socket_inodes(h.pid());
    assert!(master.len() >= 5, "master holds 2 listeners and 3 channel ends: {master:?}");
    let pids = h.worker_pids();
    let mut seen = BTreeSet::new();
    for pid in &pids {
        let mine = socket_inodes(*pid);
        assert!(
            mine.is_disjoint(&master),
            "worker {pid} shares a socket with the master (listener or channel end): {mine:?} vs {master:?}"
        );
        assert!(mine.is_disjoint(&seen), "worker {pid} holds another worker's socket");
        seen.extend(mine);
    }
}

#[test]
fn a_plain_worker_holds_exactly_stdio_and_its_channel_then_its_client() {
    let dir = std::env::temp_dir().join(format!("handoff-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("w.py");
    // Reports its descriptors in each response, so the test sees them while serving.
    std::fs::write(
        &script,
        r#"
import os, socket
chan = socket.socket(fileno=int(os.environ["HANDOFF_FD"]))
while True:
    msg, fds, _, _ = socket.recv_fds(chan, 4096, 1)
    if not fds:
        break
    c = socket.socket(fileno=fds[0])
    c.recv(4096)
    body = " ".join(sorted(os.listdir("/proc/self/fd"), key=int)) + " chan=" + os.environ["HANDOFF_FD"] + " client=" + str(fds[0])
    c.sendall(("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)).encode())
    c.close()
"#,
    )
    .unwrap();
    // A stray inherited descriptor in the master must not reach the worker.
    let stray = std::fs::File::open("/dev/null").unwrap();
    let h = Handoff::start_with(
        &["--listen", "127.0.0.1:0", "--workers", "1", "--", "python3", script.to_str().unwrap()],
        |cmd| {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let raw = stray.as_raw_fd();
            // SAFETY: fcntl on a descriptor we own, between fork and exec: async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = std::os::fd::BorrowedFd::borrow_raw(raw);
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                    Ok(())
                });
            }
        },
    );
    let body = http_get(h.addr(), "/").unwrap().body;
    let (fds, rest) = body.split_once(" chan=").unwrap();
    let (chan, client) = rest.split_once(" client=").unwrap();
    let mut expected: Vec<String> = ["0", "1", "2", chan, client].iter().map(|s| s.to_string()).collect();
    expected.sort_by_key(|s| s.parse::<i32>().unwrap());
    // os.listdir opens one descriptor of its own to read the directory.
    let got: Vec<&str> = fds.split(' ').collect();
    assert_eq!(got.len(), expected.len() + 1, "worker descriptors: {got:?}, expected {expected:?} plus listdir's own");
    for e in &expected {
        assert!(got.contains(&e.as_str()), "missing {e} in {got:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
