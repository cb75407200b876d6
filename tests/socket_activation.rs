//! systemd socket activation: listening sockets passed as descriptors 3.. with
//! LISTEN_FDS and LISTEN_PID, exactly as systemd does; the master uses them instead of
//! binding.
#![allow(
    unsafe_code,
    reason = "Command::pre_exec sets up the child under test; the one unsafe block says why it is sound"
)]

mod util;
use std::os::fd::AsRawFd;
use util::*;

/// Starts handoff with `l` passed as systemd passes a socket (descriptor 3,
/// LISTEN_FDS=1, LISTEN_PID set by a shell that then execs handoff, as systemd's own
/// helpers do).
fn start_activated(l: &std::net::TcpListener, args: &[&str]) -> Handoff {
    let raw = l.as_raw_fd();
    Handoff::start_with(args, |cmd| {
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let mut c = std::process::Command::new("sh");
        c.arg("-c")
            .arg(format!("exec 3<&{raw}; export LISTEN_FDS=1 LISTEN_PID=$$ LISTEN_FDNAMES=web; exec \"$0\" \"$@\""))
            .arg(handoff_bin())
            .args(args)
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        use std::os::unix::process::CommandExt;
        // SAFETY: fcntl on our own listener between fork and exec: async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                rustix::io::fcntl_setfd(std::os::fd::BorrowedFd::borrow_raw(raw), rustix::io::FdFlags::empty())?;
                Ok(())
            });
        }
        *cmd = c;
    })
}

#[test]
fn serves_on_sockets_passed_by_systemd() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = start_activated(&l, &["--workers", "2"]);
    h.wait_line("socket activation: using the 1 sockets systemd passed");
    h.wait_ready(2);
    assert_eq!(h.tcp_addrs(), vec![addr]);
    // Our copy in the test still exists; only the master accepts (it is the only one
    // calling accept), so every request is answered by a worker.
    for _ in 0..4 {
        assert!(http_get(addr, "/").unwrap().worker.is_some());
    }
    // The workers did not inherit the LISTEN_* variables.
    for pid in h.worker_pids() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(!env.windows(10).any(|w| w == b"LISTEN_FDS"), "worker {pid} sees LISTEN_FDS");
    }
}

/// `DeferAcceptSec=` in the socket unit: systemd sets TCP_DEFER_ACCEPT on the socket it
/// passes. handoff leaves it as it is, at start and across a reload, unless its own
/// configuration says `,deferred`.
#[test]
fn a_passed_socket_keeps_the_defer_accept_systemd_gave_it() {
    use handoff::__private::sys::{set_tcp_defer_accept, tcp_defer_accept};
    use std::os::fd::AsFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    set_tcp_defer_accept(l.as_fd(), 5).unwrap();
    let set = tcp_defer_accept(l.as_fd()).unwrap();
    assert!(set > 0, "the kernel took TCP_DEFER_ACCEPT: {set}");
    let dir = TempDir::new("activation-defer");
    let control = dir.path_str("c.sock");
    let cfg = dir.join("h.toml");
    std::fs::write(&cfg, "workers = 1\n").unwrap();
    let h = start_activated(&l, &["--config", cfg.to_str().unwrap(), "--control", &control]);
    h.wait_ready(1);
    assert_eq!(tcp_defer_accept(l.as_fd()).unwrap(), set, "after start");
    // A reload that changes the listeners (the passed socket stays, one is added)
    // goes through every listener's options.
    let addr = l.local_addr().unwrap();
    std::fs::write(&cfg, format!("workers = 1\nlisten = [\"{addr}\", \"127.0.0.1:0\"]\n")).unwrap();
    let (ok, out) = ctl(&control, &["reload"]);
    assert!(ok, "reload: {out}");
    h.wait_lines("listening on", 2); // the passed one at start, then the added one
    assert_eq!(tcp_defer_accept(l.as_fd()).unwrap(), set, "after a reload that changed the listeners");
    assert_eq!(http_get(addr, "/").unwrap().status, 200);
}
