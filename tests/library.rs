//! The library: `handoff::Server` forking Rust closures as workers (blocking and axum),
//! checked from outside like every other worker kind.
//!
//! Forking is only sound from a single-threaded process, and the test harness runs
//! tests on threads; so this file has its own `main` (`harness = false`), and each
//! check starts this same executable again as a master (`HANDOFF_LIBRARY_ROLE`), then
//! talks to it over TCP from here.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::Duration;

use handoff::policy::Policy;
use handoff::worker::Context;
use handoff::{BoxError, Server};
use util::*;

const ROLE: &str = "HANDOFF_LIBRARY_ROLE";
const CONTROL: &str = "HANDOFF_LIBRARY_CONTROL";

/// Each master's control socket: in the temporary directory, named after this
/// process, removed when the checks end (a master stopped by SIGKILL leaves it).
fn control_path(n: usize) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("handoff-library-{}-{n}.sock", std::process::id()))
}

struct RemoveControlSockets;

impl Drop for RemoveControlSockets {
    fn drop(&mut self) {
        for n in 0..STARTED.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = std::fs::remove_file(control_path(n));
        }
    }
}

static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        return master(&role);
    }
    let _cleanup = RemoveControlSockets;
    let checks: &[(&str, fn())] = &[
        ("forked_round_robin_exact", forked_round_robin_exact),
        ("forked_least_conn_counts_done", forked_least_conn_counts_done),
        ("forked_worker_replaced_when_killed", forked_worker_replaced_when_killed),
        ("forked_worker_holds_no_master_descriptor", forked_worker_holds_no_master_descriptor),
        ("forked_workers_drain_on_sigterm", forked_workers_drain_on_sigterm),
        ("axum_round_robin_and_graceful_drain", axum_round_robin_and_graceful_drain),
        ("axum_without_drained_still_exits_on_drain", axum_without_drained_still_exits_on_drain),
        ("forked_workers_run_as_the_given_user", forked_workers_run_as_the_given_user),
        ("blocking_conn_hands_back_between_requests", blocking_conn_hands_back_between_requests),
        ("serve_axum_hands_back_between_requests", serve_axum_hands_back_between_requests),
    ];
    // Understand the harness arguments cargo may pass: `--list`, name filters, and flags
    // whose value must not be taken for a filter (`--test-threads 2`, `--skip NAME`).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in checks {
            println!("{name}: test");
        }
        return;
    }
    let mut filter = Vec::new();
    let mut skip = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--skip" => skip.extend(it.next().cloned()),
            "--test-threads" | "--color" | "--format" | "--logfile" | "-Z" => drop(it.next()),
            a if a.starts_with('-') => {}
            a => filter.push(a.to_string()),
        }
    }
    for (name, check) in checks {
        if (!filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())))
            || skip.iter().any(|f| name.contains(f.as_str()))
        {
            continue;
        }
        eprintln!("test {name} ...");
        check();
        eprintln!("test {name} ... ok");
    }
}

// ---- the master side (a child process of the checks) ----

fn master(role: &str) {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).with_target(false).init();
    let policy =
        std::env::var("HANDOFF_LIBRARY_POLICY").ok().and_then(|p| p.parse().ok()).unwrap_or(Policy::RoundRobin);
    // Settings from a file first: the builder's calls below go on top of them. The
    // control socket is the check's own, not the default one a real master may use.
    let file = handoff::config::ConfigFile {
        control: std::env::var_os(CONTROL).map(std::path::PathBuf::from),
        user: (role == "blocking-nobody").then(|| "nobody".to_string()),
        hand_back: role.ends_with("-return").then_some(handoff::config::HandBack::Always),
        ..Default::default()
    };
    let server = Server::new()
        .config(file)
        .listen("127.0.0.1:0")
        .workers(4)
        .policy(policy)
        .shutdown_timeout(Duration::from_secs(10));
    let result = match role {
        "blocking" => server.serve(blocking_worker),
        "blocking-nobody" => server.serve(blocking_worker),
        "axum" => server.serve(|ctx| axum_worker(ctx, true)),
        "axum-plain" => server.serve(|ctx| axum_worker(ctx, false)),
        "blocking-return" => server.serve(blocking_worker),
        "axum-return" => server.serve(serve_axum_worker),
        other => panic!("unknown role {other}"),
    };
    if let Err(e) = result {
        eprintln!("master: {e}");
        std::process::exit(1);
    }
}

/// HTTP/1.1 keep-alive on std streams, a thread per connection.
fn blocking_worker(ctx: Context) -> Result<(), BoxError> {
    let id = ctx.id();
    // Told to every client, for the check that the master's death still kills us.
    let pdeathsig = rustix::process::parent_process_death_signal()?.map_or(0, |s| s.as_raw());
    for conn in ctx.incoming()? {
        let conn = conn?;
        std::thread::spawn(move || {
            let mut r = BufReader::new(conn);
            loop {
                let (mut line, mut close, mut empty) = (String::new(), false, true);
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                    close |= line.to_ascii_lowercase().starts_with("connection: close");
                    empty = false;
                    line.clear();
                }
                if empty {
                    return; // the client closed
                }
                let conn = r.get_mut();
                let ka = if close { "close" } else { "keep-alive" };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nX-Handoff-Worker: {id}\r\nX-Pdeathsig: {pdeathsig}\r\nContent-Length: 3\r\nConnection: {ka}\r\n\r\nhi\n"
                );
                if conn.write_all(head.as_bytes()).is_err() || close {
                    return; // dropping the Conn sends DONE, then closes
                }
                // Between requests, nothing of the next one read (the reader's buffer
                // is empty): the connection may go back to the master.
                if r.buffer().is_empty() && r.get_ref().hand_back_wanted() {
                    match r.into_inner().hand_back() {
                        Ok(()) => return,
                        Err(e) => r = BufReader::new(*e.conn),
                    }
                }
            }
        });
    }
    Ok(())
}

fn axum_worker(ctx: Context, graceful: bool) -> Result<(), BoxError> {
    let id = ctx.id();
    // Outside a runtime: a clear error, not a panic, and the channel is still there.
    assert!(matches!(ctx.listener(), Err(handoff::worker::WorkerError::NoRuntime)));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move { ([("x-handoff-worker", id.to_string())], "hello from axum\n") }),
        );
        let listener = ctx.listener()?;
        if graceful {
            let drained = listener.drained();
            axum::serve(listener, app).with_graceful_shutdown(drained).await?;
        } else {
            axum::serve(listener, app).await?;
        }
        Ok(())
    })
}

/// `handoff::worker::serve_axum`: axum with request-level balancing.
fn serve_axum_worker(ctx: Context) -> Result<(), BoxError> {
    let id = ctx.id();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move { ([("x-handoff-worker", id.to_string())], "hello from axum\n") }),
        );
        handoff::worker::serve_axum(ctx.listener()?, app).await?;
        Ok(())
    })
}

// ---- the checks ----

fn start(role: &str, policy: &str) -> Handoff {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    cmd.env(ROLE, role).env("HANDOFF_LIBRARY_POLICY", policy).env(CONTROL, control_path(n));
    let h = Handoff::start_command(cmd);
    h.wait_ready_slots(4);
    h
}

fn forked_round_robin_exact() {
    let h = start("blocking", "round-robin");
    assert_round_robin_exact(&h, 4);
}

fn forked_least_conn_counts_done() {
    let h = start("blocking", "least-conn");
    assert_least_conn_with_done(&h);
}

fn forked_worker_replaced_when_killed() {
    let h = start("blocking", "round-robin");
    let (old, new) = kill_worker_and_wait_replacement(&h, 3, true);
    assert_ne!(old, new);
    assert_every_slot_serves(&h, 4);
}

fn forked_worker_holds_no_master_descriptor() {
    let h = start("blocking", "round-robin");
    for (slot, pid) in h.wait_ready_slots(4) {
        let fds: Vec<String> = fd_links(pid).into_iter().map(|(_, link)| link).collect();
        // stdin, stdout, stderr and the channel: no listener, no other channel, no epoll.
        assert_eq!(fds.len(), 4, "worker {slot} (pid {pid}) holds {fds:?}");
        assert_eq!(fds.iter().filter(|f| f.starts_with("socket:")).count(), 1, "worker {slot}: {fds:?}");
        // Nor the master's SCHED_BATCH.
        assert_eq!(sched_policy(pid), Some(SCHED_OTHER), "worker {slot} (pid {pid})");
    }
    assert_eq!(sched_policy(h.pid()), Some(SCHED_BATCH), "the master");
}

fn forked_workers_drain_on_sigterm() {
    let h = start("blocking", "round-robin");
    assert_eq!(served_counts(h.addr(), 4).len(), 4);
    stop_gracefully(h, 4);
}

fn axum_round_robin_and_graceful_drain() {
    let h = start("axum", "round-robin");
    let r = http_get(h.addr(), "/").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello from axum\n"));
    let counts = served_counts(h.addr(), 100);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![25; 4], "{counts:?}");
    // A keep-alive connection held open: graceful shutdown closes it when idle.
    let held = hold(h.addr());
    stop_gracefully(h, 4);
    drop(held);
}

fn axum_without_drained_still_exits_on_drain() {
    let h = start("axum-plain", "round-robin");
    assert_eq!(served_counts(h.addr(), 8).len(), 4);
    stop_gracefully(h, 4);
}

fn blocking_conn_hands_back_between_requests() {
    let h = start("blocking-return", "least-conn");
    assert_one_connection_reaches_every_worker(&h, 4);
    stop_gracefully(h, 4);
}

fn serve_axum_hands_back_between_requests() {
    let h = start("axum-return", "least-conn");
    assert_one_connection_reaches_every_worker(&h, 4);
    stop_gracefully(h, 4);
}

/// `user` in the configuration: each forked worker is `nobody`, without root's groups
/// and with no_new_privs, before the closure runs; the master stays root. (As root
/// only, which is how CI runs.)
fn forked_workers_run_as_the_given_user() {
    assert_eq!(rustix::process::getuid().as_raw(), 0, "this check needs root (CI runs as root)");
    let h = start("blocking-nobody", "round-robin");
    let field = |pid: u32, key: &str| -> String {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines().find(|l| l.starts_with(key)).unwrap_or("").to_string()
    };
    assert!(field(h.pid(), "Uid:").starts_with("Uid:\t0\t"), "the master keeps root");
    for (slot, pid) in h.wait_ready_slots(4) {
        let uid = field(pid, "Uid:");
        assert!(uid.starts_with("Uid:\t65534\t65534\t65534"), "worker {slot} (pid {pid}): {uid}");
        assert!(field(pid, "Gid:").starts_with("Gid:\t65534\t65534\t65534"), "worker {slot}: {}", field(pid, "Gid:"));
        assert_eq!(field(pid, "NoNewPrivs:"), "NoNewPrivs:\t1", "worker {slot}");
        let groups = field(pid, "Groups:");
        assert!(!groups.split_whitespace().any(|g| g == "0"), "worker {slot} kept root's groups: {groups}");
    }
    // Changing the uid clears the parent-death signal: it must be armed after.
    let r = http_get(h.addr(), "/").unwrap();
    let sig = r.headers.iter().find(|(k, _)| k == "x-pdeathsig").map(|(_, v)| v.as_str());
    assert_eq!(sig, Some("9"), "the worker would outlive its master (PR_SET_PDEATHSIG {sig:?}, not SIGKILL)");
    assert_round_robin_exact(&h, 4);
}
