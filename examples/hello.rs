//! Closure workers with std only: the master forks 4 workers, each runs the closure.
//!
//! ```text
//! cargo run --example hello                 # then: curl -i http://127.0.0.1:8080/
//! cargo run --example hello -- 127.0.0.1:0  # any free port (printed on stderr)
//! ```
//! Each response names the worker that served it (`X-Handoff-Worker`).

use std::io::{BufRead, BufReader, Write};

fn main() -> Result<(), handoff::ServerError> {
    // The master logs to stderr ("listening on ...", worker starts and exits).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_target(false).init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    handoff::Server::new().listen(&addr).workers(4).serve(|ctx| {
        // From here on we are in a worker process (forked before any thread started).
        let id = ctx.id();
        for conn in ctx.incoming()? {
            let conn = conn?;
            // One thread per connection, so a slow client holds up no one else.
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                // Read the request head up to its blank line.
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                    line.clear();
                }
                let body = format!("hello from worker {id} (pid {})\n", std::process::id());
                let mut conn = reader.into_inner();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nX-Handoff-Worker: {id}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                // `conn` drops here: DONE goes to the master, then the socket closes.
            });
        }
        Ok(()) // the master asked us to drain (or is gone): this worker exits
    })
}
