//! A worker process of the kernel models (`shared`, `shared-nginx`, `reuseport`): the
//! hidden `handoff bench-worker` subcommand.
//!
//! It inherits one listening socket (number in [`ENV_LISTEN_FD`]) and accepts on it
//! the way a pre-fork server does: one epoll per worker holding the listener
//! (`EPOLLEXCLUSIVE` for the shared queue, so the kernel wakes one idle worker per
//! connection instead of all of them), blocked in `epoll_wait` directly, never nested
//! inside tokio's own epoll, because a nested exclusive waiter does not count as
//! woken and the kernel would go on to wake every worker.
//!
//! The epoll wait runs on a small acceptor thread, and connections are served by the
//! same code as `handoff run`'s built-in worker (`handoff::worker::http`: its quick path
//! for plain requests for the greeting, hyper for the rest) on a single-threaded tokio
//! runtime. To keep the pre-fork property that a worker busy
//! serving does not accept, the acceptor goes back into `epoll_wait` only once the
//! serving thread has picked up the previous connection: a worker stuck in a 25 ms
//! request is absent from the wait queue for those 25 ms, exactly like an nginx worker
//! stuck in its event loop.
//!
//! `shared-nginx` adds nginx's mitigation (1.21.6+): after every 16 accepts the worker
//! deletes the listener from its epoll and adds it again, which moves it to the tail of
//! the listener's wait queue so that wake-ups rotate among workers.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::epoll;
use rustix::net::SocketFlags;

use super::Model;
use handoff::__private::worker::http::{serve_accepted, HttpConfig};

/// Environment variable naming the inherited listening socket.
pub const ENV_LISTEN_FD: &str = "HANDOFF_BENCH_LISTEN_FD";

/// The line a worker prints on stdout once it waits for connections.
pub const READY_LINE: &str = "ready";

/// Accepts after which `shared-nginx` re-adds its listener (nginx's constant).
const NGINX_REORDER_EVERY: u64 = 16;

/// Runs a kernel-model worker until SIGTERM or SIGINT (or its parent dies).
pub fn run(model: Model, id: usize) -> Result<(), String> {
    let raw: i32 = std::env::var(ENV_LISTEN_FD).ok().and_then(|v| v.trim().parse().ok()).ok_or_else(|| {
        format!("{ENV_LISTEN_FD} is not set: bench-worker is started by `handoff bench`, not by hand")
    })?;
    let listener = handoff::__private::sys::process::take_inherited_fd(raw)
        .map_err(|e| format!("inherited listener {raw}: {e}"))?;
    rustix::io::ioctl_fionbio(&listener, true).map_err(|e| format!("listener non-blocking: {e}"))?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll_create: {e}"))?;
    let flags = listen_flags(model);
    epoll::add(&ep, &listener, epoll::EventData::new_u64(0), flags).map_err(|e| format!("epoll add listener: {e}"))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::unbounded_channel::<OwnedFd>();
    let (taken_tx, taken_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let reorder = model == Model::SharedNginx;
    std::thread::Builder::new()
        .name("acceptor".into())
        .spawn(move || acceptor(listener, ep, flags, reorder, conn_tx, taken_rx))
        .map_err(|e| format!("acceptor thread: {e}"))?;

    let mut cfg = HttpConfig::new(id, None);
    cfg.test_knobs = true; // the `uneven` workload asks for `?cpu_ms=`
                           // The same switch as the built-in worker's (`HANDOFF_QUICK_PATH=off`: hyper only).
    cfg.quick_path = handoff::__private::worker::http::quick_path_from_env();
    let cfg = Arc::new(cfg);
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{READY_LINE}");
            let _ = out.flush();
        }
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                fd = conn_rx.recv() => {
                    let Some(fd) = fd else { break };
                    // The serving thread is free: let the acceptor wait for the next one.
                    let _ = taken_tx.try_send(());
                    let std = std::net::TcpStream::from(fd);
                    let _ = std.set_nodelay(true);
                    tasks.spawn(serve_accepted(std, cfg.clone(), stop_rx.clone()));
                    while tasks.try_join_next().is_some() {}
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        Ok::<(), String>(())
    })?;
    // Connections in progress are cut: the bench stops a model only between runs.
    std::process::exit(0)
}

fn listen_flags(model: Model) -> epoll::EventFlags {
    match model {
        // Its own socket: nobody else to wake.
        Model::Reuseport => epoll::EventFlags::IN,
        _ => epoll::EventFlags::IN | epoll::EventFlags::EXCLUSIVE,
    }
}

/// Waits for the listener, accepts one connection per wake-up (nginx's default,
/// `multi_accept off`), hands it to the serving thread and waits until it is taken.
fn acceptor(
    listener: OwnedFd,
    ep: OwnedFd,
    flags: epoll::EventFlags,
    reorder: bool,
    conn_tx: tokio::sync::mpsc::UnboundedSender<OwnedFd>,
    taken_rx: std::sync::mpsc::Receiver<()>,
) {
    let mut events: Vec<epoll::Event> = Vec::with_capacity(4);
    let mut accepted: u64 = 0;
    loop {
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "bench-worker: epoll_wait: {e}");
                return;
            }
        }
        match rustix::net::accept_with(&listener, SocketFlags::CLOEXEC) {
            Ok(fd) => {
                if conn_tx.send(fd).is_err() {
                    return;
                }
                if taken_rx.recv().is_err() {
                    return;
                }
                accepted += 1;
                if reorder && accepted % NGINX_REORDER_EVERY == 0 {
                    let _ = epoll::delete(&ep, &listener);
                    if let Err(e) = epoll::add(&ep, listener.as_fd(), epoll::EventData::new_u64(0), flags) {
                        let _ = writeln!(std::io::stderr(), "bench-worker: epoll re-add listener: {e}");
                        return;
                    }
                }
            }
            // Another worker took it (exclusive wake-ups may still wake more than one).
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                let e = std::io::Error::from(e);
                if handoff::__private::listener::accept_error_is_exhaustion(&e) {
                    // Out of descriptors: a level-triggered retry would spin.
                    std::thread::sleep(Duration::from_millis(10));
                } else if !handoff::__private::listener::accept_error_is_transient(&e) {
                    let _ = writeln!(std::io::stderr(), "bench-worker: accept: {e}");
                    return;
                }
            }
        }
    }
}
