//! A hyper server (hyper-util) on handoff's tokio stream of connections.
//!
//! ```text
//! cargo run --example hyper                 # forked workers; curl -i http://127.0.0.1:3001/
//! cargo run --example hyper -- 127.0.0.1:0  # any free port (printed on stderr)
//! ```
//! The worker code is the same when the program is an external worker instead:
//! `handoff run --workers 4 -- target/debug/examples/hyper` runs only [`worker`] (the
//! master has set `HANDOFF_FD`, so the program knows it is a worker).

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;

/// Serves HTTP/1.1 on every connection the master hands this worker, until DRAIN.
async fn worker(id: usize) -> Result<(), handoff::BoxError> {
    let mut incoming = handoff::worker::listener()?;
    let drained = incoming.drained();
    tokio::pin!(drained);
    let graceful = GracefulShutdown::new();
    let http = hyper::server::conn::http1::Builder::new();
    loop {
        let conn = tokio::select! {
            conn = incoming.accept() => conn,
            () = &mut drained => break,
        };
        // `None`: the master asked us to drain, or is gone.
        let Some(conn) = conn else { break };
        // A `Conn` is the stream plus its id; dropping it tells the master DONE.
        let conn = conn?;
        let service = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
            let mut resp = Response::new(Full::new(Bytes::from(format!("hello from hyper worker {id}\n"))));
            resp.headers_mut().insert("x-handoff-worker", id.into());
            Ok::<_, Infallible>(resp)
        });
        let served = graceful.watch(http.serve_connection(TokioIo::new(conn), service));
        tokio::spawn(async move {
            if let Err(e) = served.await {
                eprintln!("worker {id}: {e}");
            }
        });
    }
    // Finish requests in flight; idle keep-alive connections are closed now.
    graceful.shutdown().await;
    Ok(())
}

fn run_worker(id: usize) -> Result<(), handoff::BoxError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(worker(id))
}

fn main() -> Result<(), handoff::BoxError> {
    if std::env::var_os(handoff::worker::ENV_FD).is_some() {
        // Started by `handoff run -- ...`: this process is one worker.
        return run_worker(handoff::worker::Context::from_env().id());
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_target(false).init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3001".into());
    handoff::Server::new().listen(&addr).workers(4).serve(|ctx| run_worker(ctx.id()))?;
    Ok(())
}
