//! Nobody reads the master's stderr (a stalled journald, a full pipe) while a worker
//! floods its own: the master keeps serving, and drops and counts the output it cannot
//! write, instead of sleeping in `write` with every connection waiting behind it.

mod util;
use std::process::{Command, Stdio};
use util::*;

#[test]
fn a_worker_flooding_stderr_into_an_unread_pipe_does_not_stall_the_master() {
    let dir = TempDir::new("flood");
    let control = dir.path_str("ctl.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The master's stderr: a pipe whose reading end this test holds and never reads.
    let (unread, stderr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    // 4 MB on stderr before it starts serving: many times what the pipe (64 KiB) and
    // the master's own queue (1 MiB) hold.
    let flood = format!("head -c 4000000 /dev/zero | tr '\\0' x >&2; exec '{}' worker", handoff_bin());
    let mut cmd = Command::new(handoff_bin());
    cmd.args(["run", "--listen", &addr.to_string(), "--workers", "1", "--control", &control, "--"]);
    cmd.args(["sh", "-c", &flood]);
    let h = Handoff::spawn_command_stderr(cmd, Stdio::from(stderr));

    wait_until("the worker to be ready after its flood", || {
        std::path::Path::new(&control).exists() && running_workers(&status_json(&control)) == 1
    });
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
    let dir = TempDir::new("epipe");
    let control = dir.path_str("ctl.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (gone, stderr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    drop(gone);
    let mut cmd = Command::new(handoff_bin());
    cmd.args(["run", "--listen", &addr.to_string(), "--workers", "2", "--control", &control]);
    let mut h = Handoff::spawn_command_stderr(cmd, Stdio::from(stderr));
    wait_until("two ready workers", || {
        std::path::Path::new(&control).exists() && running_workers(&status_json(&control)) == 2
    });
    for _ in 0..10 {
        assert_eq!(http_get(addr, "/").unwrap().status, 200);
    }
    h.signal(Signal::TERM);
    assert_eq!(h.wait_exit(), Some(0), "a graceful stop, not a panic (101)");
}
