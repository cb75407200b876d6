//! The entry points a Rust worker starts from: [`Context`] (what a closure forked by
//! [`crate::Server::serve`] is given) and [`listener`] (an axum/tokio worker in one
//! call).
//!
//! A forked worker and an exec'd worker see the same environment (`HANDOFF_FD`,
//! `HANDOFF_WORKER_ID`, ...), so everything here works in both: the same worker code
//! runs under `Server::serve` and under `handoff run -- ./my-worker`.

use super::{AsyncIncoming, Incoming, WorkerEnv, WorkerError};

/// The body of a forked worker: the closure a `config::WorkerFn` holds, run
/// once in each child the master forks, with that worker's [`Context`].
pub type WorkerBody = dyn Fn(Context) -> Result<(), crate::BoxError> + Send + Sync;

/// What a forked worker's closure is given: which worker it is, and the way to its
/// connections.
///
/// Take the connections once, either blocking ([`Context::incoming`]) or for tokio
/// ([`Context::listener`], inside a runtime). A second take is an error: the channel
/// has one owner.
#[derive(Debug, Clone)]
pub struct Context {
    env: WorkerEnv,
}

impl Context {
    /// Reads this worker's facts from the environment (`HANDOFF_WORKER_ID`, ...).
    pub fn from_env() -> Context {
        Context { env: WorkerEnv::from_env() }
    }

    /// This worker's slot, `0..workers()`; a replacement gets the same slot.
    pub fn id(&self) -> usize {
        self.env.id
    }

    /// The number of worker slots.
    pub fn workers(&self) -> usize {
        self.env.workers
    }

    /// All the facts from the environment.
    pub fn env(&self) -> &WorkerEnv {
        &self.env
    }

    /// The connections as a blocking iterator (announces READY).
    pub fn incoming(&self) -> Result<Incoming, WorkerError> {
        Incoming::from_env()
    }

    /// The connections for tokio: a `Stream`, and with the `axum` feature an
    /// `axum::serve::Listener` (announces READY). Call it inside a tokio runtime.
    pub fn listener(&self) -> Result<AsyncIncoming, WorkerError> {
        listener()
    }

    /// Runs a forked worker's closure and turns its result into an exit status.
    pub(crate) fn run_fork_body(body: &WorkerBody, slot: usize) -> i32 {
        match body(Context::from_env()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("handoff worker {slot}: error: {e}");
                1
            }
        }
    }
}

/// This worker's connections as a tokio listener: all an axum worker needs is
/// `axum::serve(handoff::worker::listener()?, app)`.
///
/// Call it inside a tokio runtime (it registers the channel with the runtime and starts
/// the HEARTBEAT task); outside one it returns [`WorkerError::NoRuntime`]. To stop
/// gracefully when the master asks, take [`AsyncIncoming::drained`] before handing the
/// listener to axum:
///
/// ```no_run
/// # #[cfg(feature = "axum")]
/// # async fn run() -> Result<(), handoff::BoxError> {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
/// let listener = handoff::worker::listener()?;
/// let drained = listener.drained();
/// axum::serve(listener, app).with_graceful_shutdown(drained).await?;
/// # Ok(()) }
/// ```
///
/// Without `drained`, the listener ends the process itself (status 0) once the master
/// has asked it to drain and every connection it handed out is finished.
pub fn listener() -> Result<AsyncIncoming, WorkerError> {
    AsyncIncoming::from_env()
}
