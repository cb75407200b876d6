//! The load generator: a fixed number of tokio client tasks on loopback, each sending
//! HTTP/1.1 GETs and timing every request into an HdrHistogram.
//!
//! A run is bounded twice: by a total request count (tickets drawn from one shared
//! counter) and by a deadline, so it stops by itself however slow the server is.
//! Latency is measured per request from just before `connect` (close-style
//! workloads) or just before the write (keep-alive) to the last byte of the body:
//! the figure a client sees, without coordinated-omission correction.
//!
//! Each response names its worker in `X-Handoff-Worker`; the generator counts the
//! connections (and requests) each worker served, which is what the fairness figures
//! are computed from. The client is deliberately minimal (no pipelining, one request
//! in flight per connection) so that it costs the same under every model.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stats;

/// What one load run does.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Client tasks running at once.
    pub concurrency: usize,
    /// Requests sent on one connection before it is closed (1: a new connection per request).
    pub per_conn: u64,
    /// Stop after this many requests in total.
    pub max_requests: u64,
    /// Stop after this long, whatever the count.
    pub max_duration: Duration,
    /// Every `n`th request (counted over the whole run) asks for `?cpu_ms=ms`.
    pub expensive: Option<(u64, u64)>,
}

/// What one load run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Requests answered with a complete response.
    pub requests: u64,
    /// Connections opened that served at least one request.
    pub connections: u64,
    /// Failed connects, resets, malformed or timed-out responses.
    pub errors: u64,
    /// Wall time from the first request to the last response.
    pub elapsed: Duration,
    /// Per-request latency, µs.
    pub latency: Histogram<u64>,
    /// Connections served by each worker (index = `X-Handoff-Worker`).
    pub conns_per_worker: Vec<u64>,
    /// Requests served by each worker.
    pub reqs_per_worker: Vec<u64>,
    /// The first error seen, to tell the user what went wrong.
    pub first_error: Option<String>,
}

struct TaskTally {
    latency: Histogram<u64>,
    requests: u64,
    connections: u64,
    errors: u64,
    conns_per_worker: Vec<u64>,
    reqs_per_worker: Vec<u64>,
    first_error: Option<String>,
}

impl TaskTally {
    fn count(v: &mut Vec<u64>, i: usize) {
        // A worker index beyond the expected count grows the table rather than being
        // dropped: an unexpected worker is something the report must show.
        if i >= v.len() {
            v.resize(i + 1, 0);
        }
        v[i] += 1;
    }
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// Runs `spec` against `addr` (which must be a loopback address) with `workers`
/// expected worker indices.
pub async fn run(addr: SocketAddr, spec: &LoadSpec, workers: usize) -> LoadResult {
    let tickets = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + spec.max_duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..spec.concurrency.max(1) {
        let spec = spec.clone();
        let tickets = tickets.clone();
        set.spawn(client_task(addr, spec, tickets, deadline, workers));
    }
    let mut out = LoadResult {
        requests: 0,
        connections: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: stats::new_histogram(),
        conns_per_worker: vec![0; workers],
        reqs_per_worker: vec![0; workers],
        first_error: None,
    };
    while let Some(r) = set.join_next().await {
        let Ok(t) = r else {
            out.errors += 1;
            continue;
        };
        out.requests += t.requests;
        out.connections += t.connections;
        out.errors += t.errors;
        let _ = out.latency.add(&t.latency);
        for (dst, src) in
            [(&mut out.conns_per_worker, &t.conns_per_worker), (&mut out.reqs_per_worker, &t.reqs_per_worker)]
        {
            if src.len() > dst.len() {
                dst.resize(src.len(), 0);
            }
            for (d, s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        }
        if out.first_error.is_none() {
            out.first_error = t.first_error;
        }
    }
    out.elapsed = start.elapsed();
    out
}

async fn client_task(
    addr: SocketAddr,
    spec: LoadSpec,
    tickets: Arc<AtomicU64>,
    deadline: Instant,
    workers: usize,
) -> TaskTally {
    let mut t = TaskTally {
        latency: stats::new_histogram(),
        requests: 0,
        connections: 0,
        errors: 0,
        conns_per_worker: vec![0; workers],
        reqs_per_worker: vec![0; workers],
        first_error: None,
    };
    let mut buf = Vec::with_capacity(4096);
    'conns: loop {
        // One connection: up to `per_conn` requests on it.
        let mut stream: Option<TcpStream> = None;
        let mut conn_worker: Option<usize> = None;
        for k in 0..spec.per_conn.max(1) {
            let ticket = tickets.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            if ticket >= spec.max_requests || now >= deadline {
                break 'conns;
            }
            let last = k + 1 == spec.per_conn.max(1);
            let query = match spec.expensive {
                Some((every, ms)) if every > 0 && ticket % every == every - 1 => {
                    format!("/?cpu_ms={ms}")
                }
                _ => "/".to_string(),
            };
            let req = format!(
                "GET {query} HTTP/1.1\r\nHost: bench\r\n{}\r\n",
                if last { "Connection: close\r\n" } else { "" }
            );
            // Give a request until the deadline plus a grace period: a stuck server
            // costs the run a few seconds, never hangs it.
            let limit = deadline.saturating_duration_since(now) + Duration::from_secs(5);
            let started = Instant::now();
            let res = tokio::time::timeout(limit, async {
                if stream.is_none() {
                    let s = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                let s = stream.as_mut().ok_or("no stream")?;
                s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
                read_response(s, &mut buf).await
            })
            .await;
            match res {
                Ok(Ok(resp)) => {
                    stats::record(&mut t.latency, started.elapsed().as_micros() as u64);
                    t.requests += 1;
                    if let Some(w) = resp.worker {
                        TaskTally::count(&mut t.reqs_per_worker, w);
                        if conn_worker.is_none() {
                            conn_worker = Some(w);
                            t.connections += 1;
                            TaskTally::count(&mut t.conns_per_worker, w);
                        }
                    } else {
                        t.error("response without X-Handoff-Worker".into());
                    }
                    if resp.close {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    t.error(e);
                    // Do not spin on a refusing server.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    break;
                }
                Err(_) => {
                    t.error("request timed out".into());
                    break;
                }
            }
        }
        drop(stream);
    }
    t
}

/// Idle keep-alive connections held open by [`hold_idle`].
#[derive(Debug)]
pub struct IdleClients {
    /// The connections, each after one answered request; dropping them closes them.
    pub streams: Vec<std::net::TcpStream>,
    /// Connections that failed to open or to get their one answer.
    pub errors: u64,
    /// The first such failure.
    pub first_error: Option<String>,
}

/// Connections opened at once by [`hold_idle`]: enough to open thousands in a second or
/// two, few enough not to overflow the server's accept backlog (a dropped SYN costs a
/// one-second retransmit).
const IDLE_OPEN_AT_ONCE: usize = 64;

/// Opens `n` keep-alive connections to `addr`, sends one request on each and reads its
/// answer, then leaves them silent: clients that keep a connection for later, the way
/// browsers and connection pools do. Bounded by `limit` overall.
pub async fn hold_idle(addr: SocketAddr, n: usize, limit: Duration) -> IdleClients {
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = IdleClients { streams: Vec::with_capacity(n), errors: 0, first_error: None };
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < n || !set.is_empty() {
        while started < n && set.len() < IDLE_OPEN_AT_ONCE {
            started += 1;
            set.spawn(tokio::time::timeout_at(deadline, async move {
                let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").await.map_err(|e| format!("write: {e}"))?;
                let mut buf = Vec::with_capacity(512);
                let resp = read_response(&mut s, &mut buf).await?;
                if resp.close {
                    return Err("the server closed an idle keep-alive connection after its first answer".into());
                }
                s.into_std().map_err(|e| format!("into_std: {e}"))
            }));
        }
        let Some(r) = set.join_next().await else { break };
        match r {
            Ok(Ok(Ok(s))) => out.streams.push(s),
            Ok(Ok(Err(e))) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
            Ok(Err(_)) | Err(_) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| "opening idle connections timed out".into());
            }
        }
    }
    out
}

struct Response {
    worker: Option<usize>,
    close: bool,
}

/// Reads one response (headers, then a `Content-Length` body) from `s`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Response, String> {
    buf.clear();
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err("response header over 64 KiB".into());
        }
        read_more(s, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "response header is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(format!("unexpected status line {status:?}"));
    }
    let (mut len, mut worker, mut close) = (0usize, None, false);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            len = v.parse().map_err(|_| format!("bad content-length {v:?}"))?;
        } else if k.eq_ignore_ascii_case("x-handoff-worker") {
            worker = v.parse().ok();
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    while buf.len() < head_end + len {
        read_more(s, buf).await?;
    }
    Ok(Response { worker, close })
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) => Err("connection closed mid-response".into()),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read: {e}")),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_header_end() {
        assert_eq!(find(b"HTTP/1.1 200 OK\r\n\r\nbody", b"\r\n\r\n"), Some(15));
        assert_eq!(find(b"partial\r\n", b"\r\n\r\n"), None);
    }
}
