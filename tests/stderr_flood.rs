//! Nobody reads the master's stderr (a stalled journald, a full pipe) while a worker
//! floods its own: the master keeps serving, and drops and counts the output it cannot
//! write, instead of sleeping in `write` with every connection waiting behind it.

mod util;
use std::process::{Command, Stdio};
use util::*;

/// `handoff run --listen 127.0.0.1:PORT --workers N --control ... [-- CMD]` with its
/// stderr on `stderr` (so its log cannot tell us when it is up: the control socket
/// does); returns when `workers` workers are READY.
fn start(
    workers: usize,
    command: &[&str],
    stderr: std::os::fd::OwnedFd,
) -> (Handoff, TempDir, String, std::net::SocketAddr) {
    let dir = TempDir::new("stderr");
    let control = dir.path_str("ctl.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(handoff_bin());
    cmd.args(["run", "--listen", &addr.to_string(), "--workers", &workers.to_string(), "--control", &control]);
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    let h = Handoff::spawn_command_stderr(cmd, Stdio::from(stderr));
    wait_until("the workers to be ready", || {
        std::path::Path::new(&control).exists() && running_workers(&status_json(&control)) == workers
    });
    (h, dir, control, addr)
}

#[test]
fn a_worker_flooding_stderr_into_an_unread_pipe_does_not_stall_the_master() {
    // The master's stderr: a pipe whose reading end this test holds and never reads.
    let (unread, stderr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    // 4 MB on stderr before it starts serving: many times what the pipe (64 KiB) and
    // the master's own queue (1 MiB) hold.
    let flood = format!("head -c 4000000 /dev/zero | tr '\\0' x >&2; exec '{}' worker", handoff_bin());
    let (h, _dir, control, addr) = start(1, &["sh", "-c", &flood], stderr);
    for _ in 0..20 {
        assert_eq!(http_get(addr, "/").unwrap().status, 200);
    }
    let dropped = status_json(&control)["totals"]["worker_output_dropped"].as_u64().unwrap();
    assert!(dropped >= 4_000_000 - (1 << 20) - 65536, "only {dropped} bytes dropped of 4 MB");
    drop(h);
    drop(unread);
}

#[test]
fn a_master_whose_stderr_reader_has_gone_keeps_serving_and_stops_cleanly() {
    // `handoff run 2>&1 | head -1`: the reader goes away, every later log line meets
    // EPIPE. A log write error must not become a panic (tracing-subscriber reports
    // one with eprint!, which panics on a broken stderr).
    let (gone, stderr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    drop(gone);
    let (mut h, _dir, _control, addr) = start(2, &[], stderr);
    for _ in 0..10 {
        assert_eq!(http_get(addr, "/").unwrap().status, 200);
    }
    h.signal(Signal::TERM);
    assert_eq!(h.wait_exit(), Some(0), "a graceful stop, not a panic (101)");
}
