//! `handoff bench`: the same built-in HTTP worker under each connection model, side by
//! side, to test handoff's claim that choosing the worker for each connection balances
//! load better than a shared accept queue or `SO_REUSEPORT` hashing, at little cost.
//!
//! The parts, by role:
//! - [`models`] starts and stops one model as real processes: `shared`, `shared-nginx`
//!   and `reuseport` through [`kworker`] (the hidden `bench-worker` subcommand), and
//!   `handoff-rr`, `handoff-least-conn`, `handoff-p2c` through `handoff run` (and, asked
//!   for by name, `handoff-always` and `handoff-off`: least-conn with `--hand-back
//!   always` or `off`, beside the default `auto`).
//! - [`load`] is the load generator (tokio, loopback only, bounded in requests and
//!   time, per-request latency in an HdrHistogram, per-worker counts from the
//!   `X-Handoff-Worker` header that every model sets).
//! - [`procs`] reads the models' memory and descriptors from `/proc` (held-idle).
//! - [`stats`] is the arithmetic: Jain's index, max/min, percentiles, medians.
//! - [`report`] prints the terminal table, the JSON, and the Markdown report;
//!   [`charts`] draws its SVG charts.
//!
//! Every model serves with `handoff::worker::http` (the built-in worker), so what differs between rows is
//! only how connections reach workers.
//!
//! Beside the connection-level workloads, two ask about keep-alive traffic (issue 15):
//! `keepalive-uneven-32`/`-16` hold 32 or 16 connections for the whole run while 1
//! request in 500 burns 25 ms (a worker holding a connection keeps its next requests
//! behind a slow one, unless connections can move), and `held-idle` holds thousands of
//! idle clients to show where they cost memory and descriptors.

pub mod charts;
pub mod kworker;
pub mod load;
pub mod models;
pub mod procs;
pub mod report;
pub mod stats;

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// How connections reach workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Model {
    /// Workers accept on one inherited socket, each with its own epoll (`EPOLLEXCLUSIVE`).
    Shared,
    /// `shared`, plus nginx's re-add of the listener every 16 accepts (nginx ≥ 1.21.6).
    SharedNginx,
    /// Each worker has its own `SO_REUSEPORT` socket; the kernel hashes connections.
    Reuseport,
    /// `handoff run --policy round-robin`.
    HandoffRr,
    /// `handoff run --policy least-conn`.
    HandoffLeastConn,
    /// `handoff run --policy p2c`.
    HandoffP2c,
    /// `handoff run --policy least-conn --hand-back always`: every idle keep-alive
    /// connection goes back to the master after each response.
    HandoffAlways,
    /// `handoff run --policy least-conn --hand-back off`: balancing per connection only,
    /// as before RETURN.
    HandoffOff,
}

impl Model {
    /// The models run without `--models`, in report order. `handoff-always` and
    /// `handoff-off` (the other hand-back modes) are asked for by name.
    pub const ALL: [Model; 6] = [
        Model::Shared,
        Model::SharedNginx,
        Model::Reuseport,
        Model::HandoffRr,
        Model::HandoffLeastConn,
        Model::HandoffP2c,
    ];

    /// The model's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Model::Shared => "shared",
            Model::SharedNginx => "shared-nginx",
            Model::Reuseport => "reuseport",
            Model::HandoffRr => "handoff-rr",
            Model::HandoffLeastConn => "handoff-least-conn",
            Model::HandoffP2c => "handoff-p2c",
            Model::HandoffAlways => "handoff-always",
            Model::HandoffOff => "handoff-off",
        }
    }

    /// The `handoff run --policy` of a handoff model; `None` for kernel models.
    pub fn policy(self) -> Option<&'static str> {
        match self {
            Model::HandoffRr => Some("round-robin"),
            Model::HandoffLeastConn => Some("least-conn"),
            Model::HandoffP2c => Some("p2c"),
            Model::HandoffAlways | Model::HandoffOff => Some("least-conn"),
            _ => None,
        }
    }

    /// The `handoff run --hand-back` of a handoff model; `None`: handoff's default.
    pub fn hand_back(self) -> Option<&'static str> {
        match self {
            Model::HandoffAlways => Some("always"),
            Model::HandoffOff => Some("off"),
            _ => None,
        }
    }

    /// Whether the kernel, not a handoff master, places connections.
    pub fn is_kernel(self) -> bool {
        self.policy().is_none()
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// One request per connection, fixed concurrency.
    Close,
    /// Many requests per connection (100, then a new connection).
    Keepalive,
    /// One request per connection; 1 request in 500 asks for `?cpu_ms=25`.
    Uneven,
    /// One client, one request per connection, where the shared queue picks one worker.
    Trickle,
    /// 32 keep-alive connections open for the whole run; 1 request in 500 asks for
    /// `?cpu_ms=25` (issue 15: where request-level balancing shows).
    #[value(name = "keepalive-uneven-32")]
    #[serde(rename = "keepalive-uneven-32")]
    KeepaliveUneven32,
    /// The same with 16 keep-alive connections.
    #[value(name = "keepalive-uneven-16")]
    #[serde(rename = "keepalive-uneven-16")]
    KeepaliveUneven16,
    /// `--idle` keep-alive clients held open (one request each, then silent) while 4
    /// keep-alive clients run; reports the servers' memory and descriptors.
    HeldIdle,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 7] = [
        Workload::Close,
        Workload::Keepalive,
        Workload::Uneven,
        Workload::Trickle,
        Workload::KeepaliveUneven32,
        Workload::KeepaliveUneven16,
        Workload::HeldIdle,
    ];

    /// What runs without `--workloads`: the connection-level four, which fit the
    /// default run in about a minute. The keep-alive and held-idle workloads are asked
    /// for by name (`--workloads keepalive-uneven-32,keepalive-uneven-16,held-idle`).
    pub const DEFAULT: [Workload; 4] = [Workload::Close, Workload::Keepalive, Workload::Uneven, Workload::Trickle];

    /// The workload's name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Close => "close",
            Workload::Keepalive => "keepalive",
            Workload::Uneven => "uneven",
            Workload::Trickle => "trickle",
            Workload::KeepaliveUneven32 => "keepalive-uneven-32",
            Workload::KeepaliveUneven16 => "keepalive-uneven-16",
            Workload::HeldIdle => "held-idle",
        }
    }

    /// Whether fairness is counted in requests per worker rather than connections: the
    /// workloads whose clients hold their connections, so that a handful of connections
    /// carries every request (and, with connections handed back to the master, one
    /// connection's requests may be served by several workers).
    pub fn counts_requests(self) -> bool {
        matches!(self, Workload::KeepaliveUneven32 | Workload::KeepaliveUneven16 | Workload::HeldIdle)
    }

    /// The load for this workload under the given settings.
    pub fn spec(self, s: &BenchArgs) -> load::LoadSpec {
        let duration = Duration::from_secs_f64(s.duration.clamp(0.1, 600.0));
        let (concurrency, per_conn, requests, expensive) = match self {
            Workload::Close => (s.concurrency, 1, 20_000, None),
            Workload::Keepalive => (s.concurrency, 100, 60_000, None),
            Workload::Uneven => (s.concurrency, 1, 20_000, Some((500, 25))),
            Workload::Trickle => (1, 1, 4_000, None),
            // A connection per client for the whole run: no request ever closes it.
            Workload::KeepaliveUneven32 => (32, u64::MAX, 200_000, Some((500, 25))),
            Workload::KeepaliveUneven16 => (16, u64::MAX, 200_000, Some((500, 25))),
            Workload::HeldIdle => (HELD_IDLE_ACTIVE, 100, 60_000, None),
        };
        load::LoadSpec {
            concurrency,
            per_conn,
            max_requests: s.requests.unwrap_or(requests),
            max_duration: duration,
            expensive,
        }
    }
}

/// Active clients of the held-idle workload, beside the idle ones.
pub const HELD_IDLE_ACTIVE: usize = 4;

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `handoff bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Worker processes per model [default: number of cores]
    #[arg(long, short = 'w', value_name = "N")]
    pub workers: Option<usize>,
    /// Models to run, comma-separated [default: all]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "MODEL")]
    pub models: Vec<Model>,
    /// Workloads to run, comma-separated [default: close, keepalive, uneven, trickle]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "WORKLOAD")]
    pub workloads: Vec<Workload>,
    /// Requests per model × workload [default: close 20000, keepalive 60000, uneven 20000, trickle 4000, keepalive-uneven-N 200000, held-idle 60000]
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Time limit per model × workload, seconds
    #[arg(long, value_name = "SECS", default_value_t = 4.0)]
    pub duration: f64,
    /// Concurrent clients (trickle always uses 1, keepalive-uneven-N N, held-idle 4 active)
    #[arg(long, short = 'c', value_name = "N", default_value_t = 16)]
    pub concurrency: usize,
    /// Idle keep-alive clients the held-idle workload holds open (bounded by RLIMIT_NOFILE)
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub idle: usize,
    /// Repeat the whole matrix; the report shows the median of each figure
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub runs: usize,
    /// Threads of the load generator's runtime
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub client_threads: usize,
    /// Print the results as JSON on stdout (progress still goes to stderr)
    #[arg(long)]
    pub json: bool,
    /// Write report.md, results.json and SVG charts into DIR
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Redraw the report (with --out) or table from a results.json of an earlier run, without measuring
    #[arg(long, value_name = "FILE", conflicts_with = "serve")]
    pub render: Option<PathBuf>,
    /// Run MODEL alone as a server until SIGINT/SIGTERM, for outside load generators
    #[arg(long, value_enum, value_name = "MODEL")]
    pub serve: Option<Model>,
    /// Address for --serve (loopback for the matrix, which always uses 127.0.0.1:0)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

/// The hidden `handoff bench-worker` options.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The kernel model this worker runs.
    #[arg(long, value_enum)]
    pub model: Model,
    /// This worker's index (the `X-Handoff-Worker` value).
    #[arg(long)]
    pub id: usize,
}

/// Entry point of `handoff bench-worker`.
pub fn worker_main(args: WorkerArgs) -> Result<(), String> {
    if !args.model.is_kernel() {
        return Err(format!(
            "{} is not a kernel model; bench-worker runs shared, shared-nginx or reuseport",
            args.model
        ));
    }
    kworker::run(args.model, args.id)
}

/// Entry point of `handoff bench`.
pub fn main(args: BenchArgs) -> Result<(), String> {
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    if workers == 0 || workers > 256 {
        return Err(format!("--workers {workers}: give between 1 and 256"));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the handoff binary to start workers: {e}"))?;
    if let Some(model) = args.serve {
        return serve(model, workers, &exe, args.listen);
    }
    if args.runs == 0 || args.runs > 20 {
        return Err(format!("--runs {}: give between 1 and 20", args.runs));
    }
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 600.0) {
        return Err(format!("--duration {}: give a number of seconds between 0 and 600", args.duration));
    }
    if args.concurrency == 0 || args.concurrency > 4096 {
        return Err(format!("--concurrency {}: give between 1 and 4096", args.concurrency));
    }
    if let Some(path) = &args.render {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let summary: report::Summary = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a results.json written by `handoff bench --out`: {e}", path.display()))?;
        return output(&args, &summary);
    }
    let models = if args.models.is_empty() { Model::ALL.to_vec() } else { args.models.clone() };
    if args.idle > 1_000_000 {
        return Err(format!("--idle {}: give at most 1000000", args.idle));
    }
    let workloads = if args.workloads.is_empty() { Workload::DEFAULT.to_vec() } else { args.workloads.clone() };
    if workloads.contains(&Workload::HeldIdle) {
        // The idle clients' sockets are this process's descriptors, and the kernel
        // models' workers (started from here) inherit the limit for their side.
        let _ = handoff::__private::sys::raise_nofile_limit();
    }
    let results = report::run_matrix(&args, workers, &exe, &models, &workloads)?;
    let summary = report::Summary::new(&args, workers, results);
    output(&args, &summary)
}

/// Prints `summary` (table or JSON) and writes the report directory if asked.
/// The report (`report.md`, `results.json`) and the charts it shows, side by side.
fn write_dir(summary: &report::Summary, dir: &std::path::Path) -> std::io::Result<()> {
    summary.write_dir(dir)?;
    charts::distribution(&summary.rows, summary.workers, &dir.join(report::DISTRIBUTION_SVG))?;
    charts::latency(&summary.rows, &dir.join(report::LATENCY_SVG))?;
    if summary.rows.iter().any(|r| r.held.is_some()) {
        charts::held_idle(&summary.rows, &dir.join(report::HELD_SVG))?;
    }
    Ok(())
}

fn output(args: &BenchArgs, summary: &report::Summary) -> Result<(), String> {
    if args.json {
        let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(summary).map_err(|e| e.to_string())?);
    } else {
        let _ = write!(std::io::stdout(), "{}", summary.table());
    }
    if let Some(dir) = &args.out {
        write_dir(summary, dir).map_err(|e| format!("writing the report to {}: {e}", dir.display()))?;
        let _ = writeln!(std::io::stderr(), "report written to {}", dir.display());
    }
    Ok(())
}

/// `handoff bench --serve MODEL`: one model until SIGINT or SIGTERM.
fn serve(model: Model, workers: usize, exe: &std::path::Path, listen: SocketAddr) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signal handler: {e}"))?;
    }
    let server = models::start(model, workers, exe, listen)?;
    let _ = writeln!(
        std::io::stderr(),
        "{model} with {workers} workers listening on {} (pids {:?}); Ctrl-C stops",
        server.addr,
        server.pids()
    );
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
    Ok(())
}
