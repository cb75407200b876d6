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
//! # The API
//! - [`Server`]: the master as a library (fork a closure per worker, run a worker
//!   program, or the built-in HTTP worker), [`Bound`] once its listeners are bound.
//! - [`worker`]: the worker side, for forked closures and external Rust workers alike:
//!   [`worker::Context`], the blocking [`worker::Incoming`], the tokio
//!   [`worker::AsyncIncoming`], [`worker::listener`] for axum, [`worker::serve_http`].
//! - [`config`]: the settings a `Server` takes ([`config::ConfigFile`]); [`policy`]: the
//!   balancing policies.
//!
//! Everything else (the master's loop, the wire codec, the PROXY parser, the syscall
//! layer) is private. The `handoff` command, the benchmark harness, the tests and the
//! fuzz targets reach it through a hidden door (`__private`) that is not part of the
//! API and may change in any release.

mod server;

pub use listener::ListenAddr;
pub use master::MasterError;
pub use server::{Bound, Server, ServerError};
pub use sys::process::Exit;

/// The error a worker closure may return: any error, boxed (so `?` works on all).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub mod config;
pub mod policy;
pub mod worker;

mod control;
mod listener;
mod master;
mod proxy;
mod sys;
mod wire;

/// Not part of the API: the crate's insides, for the `handoff` command, the benchmark
/// harness, the tests and the fuzz targets of this repository (which are versioned with
/// it). Anything here may change or go away in any release.
#[doc(hidden)]
#[allow(missing_docs, reason = "not part of the API; documented where it is defined")]
pub mod __private {
    pub mod control {
        pub use crate::control::*;
    }
    pub mod listener {
        pub use crate::listener::*;
    }
    pub mod master {
        pub use crate::master::*;
    }
    pub mod policy {
        pub use crate::policy::*;
    }
    pub mod proxy {
        pub use crate::proxy::*;
    }
    pub mod sys {
        pub use crate::sys::*;
    }
    pub mod wire {
        pub use crate::wire::*;
    }
    pub mod worker {
        pub use crate::worker::*;
        pub mod access_log {
            pub use crate::worker::access_log::*;
        }
        pub mod faults {
            pub use crate::worker::faults::*;
        }
        pub mod hand_back {
            pub use crate::worker::hand_back::*;
        }
        pub mod http {
            pub use crate::worker::http::*;
        }
        pub mod static_files {
            pub use crate::worker::static_files::*;
        }
    }
}
