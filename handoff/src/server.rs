//! [`Server`]: the master as a library, for Rust programs that are their own workers.
//!
//! A `Server` is a builder over the same settings as `handoff run` and its TOML config
//! ([`ConfigFile`]). It ends in one of three ways:
//! - [`Server::serve`]: the master **forks** each worker and runs your closure in it
//!   (and forks replacements the same way);
//! - [`Server::command`] then [`Server::run`]: workers are an external program, as with
//!   `handoff run -- CMD`;
//! - [`Server::run`] alone: the built-in HTTP worker.
//!
//! [`Server::bind`] splits binding from running, to learn the real port when port 0
//! was asked for.
//!
//! Invariant: the master is single-threaded and stays so; it forks only from its own
//! thread. That is what makes running a closure in a forked child sound, and why
//! `serve` must be called before the program starts any thread (or tokio runtime).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, ConfigFile, WorkerFn, WorkerKind};
use crate::listener::ListenAddr;
use crate::master::{Master, MasterError};
use crate::policy::Policy;
use crate::worker::Context;

/// Why a [`Server`] could not start or stopped with an error.
///
/// Each says what to change:
///
/// ```
/// let err = handoff::Server::new().listen("localhost:http").bind().unwrap_err();
/// assert!(matches!(err, handoff::ServerError::Listen(_)));
/// println!("{err}");
/// let err = handoff::Server::new().listen("127.0.0.1:0").workers(0).bind().unwrap_err();
/// assert!(err.to_string().contains("workers must be at least 1"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listen address does not parse.
    #[error("bad listen address: {0}")]
    Listen(String),
    /// A setting is invalid (the message names it and what to write instead).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The master could not bind, start its workers, or keep them running.
    #[error(transparent)]
    Master(#[from] MasterError),
    /// [`Server::serve`] was called from a process that already runs other threads,
    /// where forking is unsound.
    #[error(
        "handoff::Server forks its workers, so it must start before the program starts any thread \
         (this process has {0} threads): build tokio runtimes and thread pools inside the worker closure"
    )]
    Threads(usize),
    /// [`Server::serve`] could not count this process's threads (it reads
    /// `/proc/self/task`), so it cannot tell whether forking is sound.
    #[error(
        "handoff::Server forks its workers only from a single-threaded process and counts threads in \
         /proc/self/task, which it cannot read ({0}): mount /proc"
    )]
    NoThreadCount(std::io::Error),
}

/// A handoff master, configured in code.
///
/// ```no_run
/// use std::io::{Read, Write};
///
/// fn main() -> Result<(), handoff::ServerError> {
///     handoff::Server::new().listen("127.0.0.1:8080").workers(4).serve(|ctx| {
///         for conn in ctx.incoming()? {
///             let mut conn = conn?;
///             let mut buf = [0; 4096];
///             let _ = conn.read(&mut buf)?;
///             let body = format!("hello from worker {}\n", ctx.id());
///             write!(conn, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())?;
///         }
///         Ok(())
///     })
/// }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a Server does nothing until .serve(), .run() or .bind()"]
pub struct Server {
    file: ConfigFile,
    fork: Option<WorkerFn>,
    /// The first listen address that did not parse, reported when the server starts.
    bad_listen: Option<String>,
}

impl Server {
    /// A server with the defaults of `handoff run`: `127.0.0.1:8080`, one worker per
    /// core, `least-conn`.
    pub fn new() -> Server {
        Server::default()
    }

    /// Starts from a config file's settings (setters called afterwards win).
    pub fn config(mut self, file: ConfigFile) -> Server {
        self.file = file;
        self
    }

    /// Adds a listen address: `127.0.0.1:8080`, `[::1]:8080` or `unix:/path.sock`.
    /// Connections carry the index of their listener, in the order added.
    pub fn listen(mut self, addr: &str) -> Server {
        // The element type decides the parser (an address, or an address with options).
        match addr.parse() {
            Ok(a) => self.file.listen.get_or_insert_with(Vec::new).push(a),
            Err(e) => {
                self.bad_listen.get_or_insert(e);
            }
        }
        self
    }

    /// The number of worker processes (default: one per core).
    pub fn workers(mut self, n: usize) -> Server {
        self.file.workers = Some(n);
        self
    }

    /// The balancing policy (default: [`Policy::LeastConn`]).
    pub fn policy(mut self, policy: Policy) -> Server {
        self.file.policy = Some(policy);
        self
    }

    /// A worker holding `k` active connections gets no more; when every worker is full
    /// the master stops accepting until one frees.
    pub fn max_conns_per_worker(mut self, k: u32) -> Server {
        self.file.max_conns_per_worker = Some(k);
        self
    }

    /// A worker that holds connections and is silent this long is replaced.
    pub fn worker_timeout(mut self, d: Duration) -> Server {
        self.file.worker_timeout = Some(d.as_secs_f64());
        self
    }

    /// How long a graceful stop waits for workers before killing them.
    pub fn shutdown_timeout(mut self, d: Duration) -> Server {
        self.file.shutdown_timeout = Some(d.as_secs_f64());
        self
    }

    /// Recycles a worker after it took `n` connections (plus up to `jitter`, at random).
    pub fn max_requests(mut self, n: u64, jitter: u64) -> Server {
        self.file.max_requests = Some(n);
        self.file.max_requests_jitter = Some(jitter);
        self
    }

    /// The master's CPU scheduling (default [`MasterSched::Batch`]: the thread that
    /// runs the master, the caller's, switches to `SCHED_BATCH` if it is in
    /// `SCHED_OTHER`, and back when the master returns; workers run in `SCHED_OTHER`).
    /// [`MasterSched::Inherit`] leaves it.
    ///
    /// [`MasterSched::Batch`]: crate::config::MasterSched::Batch
    /// [`MasterSched::Inherit`]: crate::config::MasterSched::Inherit
    pub fn master_sched(mut self, sched: crate::config::MasterSched) -> Server {
        self.file.master_sched = Some(sched);
        self
    }

    /// When workers hand idle keep-alive connections back to the master between
    /// requests (default [`HandBack::Auto`](crate::wire::HandBack::Auto)).
    pub fn hand_back(mut self, mode: crate::wire::HandBack) -> Server {
        self.file.hand_back = Some(mode);
        self
    }

    /// How often workers send HEARTBEAT.
    pub fn heartbeat(mut self, every: Duration) -> Server {
        self.file.heartbeat_ms = Some(every.as_millis().min(u64::MAX as u128) as u64);
        self
    }

    /// Workers run this external program (argv\[0\] looked up in `$PATH`), as
    /// `handoff run -- CMD` does; start it with [`Server::run`].
    pub fn command<I, S>(mut self, argv: I) -> Server
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.file.command = Some(argv.into_iter().map(Into::into).collect());
        self.fork = None;
        self
    }

    /// The built-in HTTP worker serves files from `dir`.
    pub fn static_dir(mut self, dir: impl Into<PathBuf>) -> Server {
        self.file.static_dir = Some(dir.into());
        self
    }

    /// Workers are forked from the master and run `body`; start with [`Server::run`]
    /// or [`Server::bind`]. [`Server::serve`] does both at once.
    pub fn fork<F>(mut self, body: F) -> Server
    where
        F: Fn(Context) -> Result<(), crate::BoxError> + Send + Sync + 'static,
    {
        self.fork = Some(WorkerFn::new(body));
        self.file.command = None;
        self
    }

    /// Forks the workers, each running `body`, and runs the master until it is stopped
    /// (SIGTERM or SIGINT: graceful; SIGQUIT: at once).
    ///
    /// `body` runs in a child process, once per worker, with the worker's [`Context`];
    /// the child exits when it returns (status 0 on `Ok`, 1 on `Err`, 101 on a panic),
    /// and a worker that dies is forked again. The child holds no descriptor of the
    /// master's (no listener, no other worker's channel), and the master's signal
    /// handlers are reset to the default there.
    ///
    /// **Call it before the program starts any thread or tokio runtime**: `fork` copies
    /// only the calling thread, so a lock held by another thread would stay held forever
    /// in the child. Build runtimes inside `body`. Signal handlers registered in `body`
    /// through signal-hook (and so `tokio::signal`) for the master's signals (TERM, INT,
    /// QUIT, HUP, CHLD, TTIN, TTOU, USR2) do not fire in the child, which inherits the
    /// master's registration table; workers learn of a stop from
    /// [`crate::worker::AsyncIncoming::drained`] or the end of their connections.
    pub fn serve<F>(self, body: F) -> Result<(), ServerError>
    where
        F: Fn(Context) -> Result<(), crate::BoxError> + Send + Sync + 'static,
    {
        self.fork(body).run()
    }

    /// Binds the listeners and runs the master with the configured workers (forked
    /// closure, command, or the built-in HTTP worker) until it is stopped.
    pub fn run(self) -> Result<(), ServerError> {
        self.bind()?.run()
    }

    /// Checks the settings and binds every listener, without starting workers yet.
    pub fn bind(self) -> Result<Bound, ServerError> {
        if let Some(e) = self.bad_listen {
            return Err(ServerError::Listen(e));
        }
        let mut cfg = self.file.resolve()?;
        if let Some(f) = self.fork {
            if matches!(cfg.worker, WorkerKind::Builtin { static_dir: Some(_), .. }) {
                return Err(ConfigError::Invalid(
                    "static_dir serves files with the built-in worker; it cannot be combined with fork/serve".into(),
                )
                .into());
            }
            // Refuse rather than fork a copy of a process whose other threads may hold
            // locks (allocator, stdio, a runtime's) that the child could never take.
            let threads = crate::sys::process::thread_count().map_err(ServerError::NoThreadCount)?;
            if threads > 1 {
                return Err(ServerError::Threads(threads));
            }
            cfg.worker = WorkerKind::Fork(f);
        }
        Ok(Bound { master: Master::new(cfg)? })
    }
}

/// A master with its listeners bound and no worker started yet.
pub struct Bound {
    master: Master,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound").field("local_addrs", &self.local_addrs()).finish()
    }
}

impl Bound {
    /// The addresses actually bound (with the real port where port 0 was asked for).
    pub fn local_addrs(&self) -> Vec<ListenAddr> {
        self.master.local_addrs()
    }

    /// Starts the workers and runs until stopped (see [`Server::serve`]).
    pub fn run(self) -> Result<(), ServerError> {
        Ok(self.master.run()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> Server {
        Server::new().fork(|_ctx| Ok(()))
    }

    #[test]
    fn bad_settings_are_errors_before_anything_starts() {
        let e = noop().listen("127.0.0.1:nope").bind().unwrap_err();
        assert!(matches!(e, ServerError::Listen(_)), "{e}");
        let e = noop().listen("127.0.0.1:0").workers(0).bind().unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        let e = Server::new().listen("127.0.0.1:0").command(["/nonexistent/worker"]).bind().unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[test]
    fn forking_from_a_threaded_process_is_refused() {
        // The test harness runs this on a thread of its own: the process has several.
        let e = noop().listen("127.0.0.1:0").workers(1).bind().unwrap_err();
        assert!(matches!(e, ServerError::Threads(n) if n > 1), "{e}");
        assert!(e.to_string().contains("before the program starts any thread"), "{e}");
    }

    #[test]
    fn fork_and_command_replace_each_other() {
        let s = Server::new().command(["python3", "w.py"]).fork(|_| Ok(()));
        assert!(s.fork.is_some() && s.file.command.is_none());
        let s = s.command(["python3", "w.py"]);
        assert!(s.fork.is_none() && s.file.command.is_some());
    }

    #[test]
    fn worker_fns_compare_by_identity_and_serialize_as_a_placeholder() {
        let a = WorkerFn::new(|_| Ok(()));
        let b = WorkerFn::new(|_| Ok(()));
        assert_eq!(a, a.clone());
        assert_ne!(a, b);
        assert_eq!(serde_json::to_string(&WorkerKind::Fork(a)).unwrap(), r#"{"Fork":"<closure>"}"#);
    }
}
