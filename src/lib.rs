//! handoff: one master accepts, workers serve.
//!
//! A handoff server is one **master** process and N **worker** processes. The master
//! binds the listening sockets and is the only process that calls `accept`. For each
//! accepted connection it picks a worker by policy (round robin, least connections,
//! power of two choices) and passes the socket itself to that worker over a private
//! Unix socket pair (`SOCK_SEQPACKET`, the descriptor as `SCM_RIGHTS` ancillary data).
//! The worker serves the socket as if it had accepted it, and tells the master when it
//! is done, so load-aware policies see each worker's true load. Load is even by
//! construction, unlike workers competing on one accept queue; a worker that dies is
//! replaced, and connections it had not yet taken go to another worker.
//!
//! ```text
//!                     clients
//!                        │  TCP / Unix
//!              ┌─────────▼─────────┐
//!              │      master       │  binds, accepts, picks a worker
//!              │ (one thread, mio) │
//!              └──┬──────┬──────┬──┘
//!        channel  │      │      │  SOCK_SEQPACKET: CONN + fd ──►  ◄── READY ACK DONE HEARTBEAT
//!          ┌──────▼─┐ ┌──▼─────┐ ┌▼───────┐
//!          │worker 0│ │worker 1│ │worker 2│  serve each socket they are given
//!          └────────┘ └────────┘ └────────┘
//! ```
//!
//! Workers are a Rust closure the master forks ([`Server::serve`]), any program that
//! speaks the protocol of `docs/PROTOCOL.md` (`handoff run -- python3 worker.py`,
//! [`Server::command`]), or the built-in HTTP worker. In Rust, [`worker`] speaks the
//! protocol for you: a blocking iterator, a tokio stream, and an axum listener.
//!
//! # Example
//!
//! Four worker processes, each answering HTTP with its own id:
//!
//! ```no_run
//! use std::io::{Read, Write};
//!
//! fn main() -> Result<(), handoff::ServerError> {
//!     handoff::Server::new()
//!         .listen("127.0.0.1:8080")
//!         .workers(4)
//!         .policy(handoff::policy::Policy::LeastConn)
//!         .serve(|ctx| {
//!             // This closure runs in each forked worker process.
//!             for conn in ctx.incoming()? {
//!                 let mut conn = conn?;
//!                 let mut request = [0; 4096];
//!                 let _ = conn.read(&mut request)?;
//!                 let body = format!("hello from worker {}\n", ctx.id());
//!                 write!(conn, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())?;
//!             } // dropping `conn` reports DONE to the master, then closes the socket
//!             Ok(())
//!         })
//! }
//! ```
//!
//! With axum, the worker body is the usual `axum::serve` on [`worker::listener`]
//! (see `examples/axum.rs`):
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! fn main() -> Result<(), handoff::ServerError> {
//!     handoff::Server::new().listen("127.0.0.1:3000").workers(4).serve(|_ctx| {
//!         let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//!         rt.block_on(async {
//!             let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
//!             let listener = handoff::worker::listener()?;
//!             let drained = listener.drained();
//!             axum::serve(listener, app).with_graceful_shutdown(drained).await?;
//!             Ok(())
//!         })
//!     })
//! }
//! # #[cfg(not(feature = "axum"))]
//! # fn main() {}
//! ```
//!
//! # Modules
//! - [`Server`] (in `server`): the master as a library.
//! - [`worker`]: the worker side, for forked closures and external Rust workers alike.
//! - [`master`], [`policy`], [`listener`], [`config`]: the master's parts, also used by
//!   the `handoff` command.
//! - [`wire`]: the frames of the worker protocol; [`sys`]: the syscall boundary
//!   (descriptor passing, spawning and forking), the crate's only `unsafe` code.
#![warn(missing_docs)]

mod server;

pub use server::{Bound, Server, ServerError};

/// The error a worker closure may return: any error, boxed (so `?` works on all).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub mod bench;
pub mod config;
pub mod control;
pub mod listener;
pub mod master;
pub mod policy;
pub mod proxy;
pub mod sys;
pub mod wire;
pub mod worker;
