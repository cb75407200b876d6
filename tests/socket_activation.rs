//! systemd socket activation: listening sockets passed as descriptors 3.. with
//! LISTEN_FDS and LISTEN_PID, exactly as systemd does; the master uses them instead of
//! binding.

mod util;
use std::os::fd::AsRawFd;
use util::*;

#[test]
fn serves_on_sockets_passed_by_systemd() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let raw = l.as_raw_fd();
    // LISTEN_PID must be the pid of the process that reads it: a shell that sets it to
    // its own pid and then execs handoff, as systemd's own helpers do.
    let h = Handoff::start_with(&["--workers", "2"], |cmd| {
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
    });
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
