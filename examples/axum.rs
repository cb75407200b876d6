//! An axum app on 4 worker processes: the master accepts, each worker runs axum.
//!
//! ```text
//! cargo run --example axum                  # then: curl -i http://127.0.0.1:3000/
//! cargo run --example axum -- 127.0.0.1:0   # any free port (printed on stderr)
//! ```
//! `X-Handoff-Worker` in each response names the worker process that served it. Stop
//! with Ctrl-C: the master sends DRAIN, each worker's `drained()` future fires, and
//! axum finishes its requests and closes idle connections before the worker exits.

use axum::routing::get;
use axum::Router;

fn app(worker: usize) -> Router {
    Router::new()
        .route("/", get(move || async move { ([("x-handoff-worker", worker.to_string())], "hello from axum\n") }))
        .route("/pid", get(|| async { format!("{}\n", std::process::id()) }))
}

fn main() -> Result<(), handoff::ServerError> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_target(false).init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    // No runtime here: the master is single-threaded, and forks the workers.
    handoff::Server::new().listen(&addr).workers(4).serve(|ctx| {
        // In the worker process: its own runtime, built after the fork.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let listener = handoff::worker::listener()?;
            let drained = listener.drained();
            axum::serve(listener, app(ctx.id())).with_graceful_shutdown(drained).await?;
            Ok(())
        })
    })
}
