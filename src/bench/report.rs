//! Running the model × workload matrix and reporting it: the terminal table (with a
//! progress line per cell on stderr), JSON, and the Markdown report with its charts.
//!
//! With `--runs N` every figure in the summary is the median over the N runs, and every
//! ratio between models (handoff against `reuseport`, `least-conn` against the best
//! kernel model) is computed within one run first, then the median is taken: models
//! measured minutes apart on a shared machine are never compared directly.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use super::stats::{self, Percentiles};
use super::{charts, load, models, BenchArgs, Model, Workload};

/// One model × workload × run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    /// The model.
    pub model: Model,
    /// The workload.
    pub workload: Workload,
    /// Which run (0-based).
    pub run: usize,
    /// Requests answered.
    pub requests: u64,
    /// Connections that served a request.
    pub connections: u64,
    /// Failed requests.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles, ms.
    pub latency: Percentiles,
    /// Connections each worker served.
    pub conns_per_worker: Vec<u64>,
    /// Requests each worker served.
    pub reqs_per_worker: Vec<u64>,
    /// Busiest over idlest worker (connections); `None` if one got none.
    pub max_min: Option<f64>,
    /// Jain's index over connections per worker.
    pub jain: f64,
    /// The handoff master's CPU time per connection, µs (handoff models).
    pub master_cpu_us_per_conn: Option<f64>,
}

/// Runs every model × workload `args.runs` times. Processes are started from this
/// (the main) thread; the load generator runs on its own runtime.
pub fn run_matrix(
    args: &BenchArgs,
    workers: usize,
    exe: &Path,
    models_: &[Model],
    workloads: &[Workload],
) -> Result<Vec<Cell>, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.clamp(1, 64))
        .enable_all()
        .build()
        .map_err(|e| format!("load generator runtime: {e}"))?;
    let total = args.runs * models_.len() * workloads.len();
    let mut done = 0;
    let mut cells = Vec::new();
    let started = Instant::now();
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    for run in 0..args.runs {
        for &model in models_ {
            let server = models::start(model, workers, exe, listen)?;
            for &workload in workloads {
                done += 1;
                let _ = write!(
                    std::io::stderr(),
                    "{} [{done:>3}/{total}] {:>6.1}s  run {}  {model:<18} {workload:<9} ... ",
                    progress_bar(done - 1, total),
                    started.elapsed().as_secs_f64(),
                    run + 1
                );
                let spec = workload.spec(args);
                let cpu0 = server.master_cpu_us();
                let r = rt.block_on(load::run(server.addr, &spec, workers));
                let cpu1 = server.master_cpu_us();
                let cell = make_cell(model, workload, run, r, cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)));
                let _ = writeln!(
                    std::io::stderr(),
                    "{:>8.0} req/s  p99 {:>7.2} ms  jain {:.3}{}",
                    cell.rps,
                    cell.latency.p99,
                    cell.jain,
                    if cell.errors > 0 {
                        format!("  {} errors: {}", cell.errors, cell.first_error.as_deref().unwrap_or("?"))
                    } else {
                        String::new()
                    }
                );
                cells.push(cell);
            }
            server.stop();
        }
    }
    Ok(cells)
}

/// `[#####.....]`: `done` of `total` cells finished, 20 characters wide.
fn progress_bar(done: usize, total: usize) -> String {
    let filled = (done * 20).checked_div(total).unwrap_or(20).min(20);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(20 - filled))
}

fn make_cell(model: Model, workload: Workload, run: usize, r: load::LoadResult, master_cpu_us: Option<u64>) -> Cell {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    Cell {
        model,
        workload,
        run,
        requests: r.requests,
        connections: r.connections,
        errors: r.errors,
        first_error: r.first_error,
        elapsed_s: secs,
        rps: r.requests as f64 / secs,
        latency: stats::percentiles(&r.latency),
        max_min: stats::max_min(&r.conns_per_worker),
        jain: stats::jain(&r.conns_per_worker),
        conns_per_worker: r.conns_per_worker,
        reqs_per_worker: r.reqs_per_worker,
        master_cpu_us_per_conn: master_cpu_us.filter(|_| r.connections > 0).map(|us| us as f64 / r.connections as f64),
    }
}

/// The median of each figure of one model × workload over the runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// The model.
    pub model: Model,
    /// The workload.
    pub workload: Workload,
    /// Runs the medians are taken over.
    pub runs: usize,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles, ms.
    pub latency: Percentiles,
    /// Jain's index.
    pub jain: f64,
    /// Busiest over idlest worker; `None` when a worker got nothing in the median run.
    pub max_min: Option<f64>,
    /// Connections per worker, from the run with the median Jain's index.
    pub conns_per_worker: Vec<u64>,
    /// The handoff master's CPU per connection, µs.
    pub master_cpu_us_per_conn: Option<f64>,
    /// Failed requests, summed over runs.
    pub errors: u64,
}

/// A ratio between two models, per run and its median.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Ratio {
    /// What it compares.
    pub name: String,
    /// The ratio in each run.
    pub per_run: Vec<f64>,
    /// Their median.
    pub median: Option<f64>,
    /// The target, as stated in issue 3.
    pub target: String,
    /// Whether the median meets the target.
    pub met: Option<bool>,
}

/// Everything `handoff bench` reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Workers per model.
    pub workers: usize,
    /// Runs.
    pub runs: usize,
    /// Concurrency of close, keepalive, uneven.
    pub concurrency: usize,
    /// The command line.
    pub command: String,
    /// Medians per model × workload.
    pub rows: Vec<Row>,
    /// Cross-model ratios.
    pub ratios: Vec<Ratio>,
    /// Every run.
    pub cells: Vec<Cell>,
}

impl Summary {
    /// Summarises `cells`.
    pub fn new(args: &BenchArgs, workers: usize, cells: Vec<Cell>) -> Summary {
        let mut rows = Vec::new();
        let mut seen = Vec::new();
        for c in &cells {
            if !seen.contains(&(c.model, c.workload)) {
                seen.push((c.model, c.workload));
            }
        }
        for &(model, workload) in &seen {
            let mine: Vec<&Cell> = cells.iter().filter(|c| c.model == model && c.workload == workload).collect();
            rows.push(row_of(model, workload, &mine));
        }
        let ratios = ratios(&cells, args.runs);
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        Summary { workers, runs: args.runs, concurrency: args.concurrency, command, rows, ratios, cells }
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nhandoff bench: {} workers, {} run(s), concurrency {} (trickle 1); medians over runs\n",
            self.workers, self.runs, self.concurrency
        );
        let _ = writeln!(
            s,
            "{:<18} {:<9} {:>9} {:>8} {:>8} {:>8} {:>6} {:>7}  {:>8}  connections per worker",
            "model", "workload", "req/s", "p50 ms", "p99 ms", "p99.9ms", "jain", "max/min", "cpu µs/c",
        );
        for r in &self.rows {
            let c = cells(r, "-");
            let _ = writeln!(
                s,
                "{:<18} {:<9} {:>9} {:>8} {:>8} {:>8} {:>6} {:>7}  {:>8}  {}{}",
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
            );
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(s);
            for r in &self.ratios {
                let _ = writeln!(
                    s,
                    "{:<58} {:>7}  target {:<8} {}",
                    r.name,
                    r.median.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
                    r.target,
                    met_word(r.met)
                );
            }
        }
        s
    }

    /// The Markdown report (charts referenced by the relative paths given).
    pub fn markdown(&self, dist_svg: &str, lat_svg: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Workers: {}. Runs: {} (figures are medians over runs; ratios are computed within each run, then the median is taken). Concurrency: {} clients (trickle: 1). Latency is per request as the client measured it (no coordinated-omission correction).\n", self.workers, self.runs, self.concurrency);
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        let _ = writeln!(s, "![connections per worker]({dist_svg})\n\n![latency percentiles]({lat_svg})\n");
        let _ = writeln!(s, "| model | workload | req/s | p50 ms | p99 ms | p99.9 ms | Jain | max/min | master CPU µs/conn | connections per worker |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for r in &self.rows {
            let c = cells(r, "–");
            let _ = writeln!(s, "| {}{} |", c[..10].join(" | "), c[10]);
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(s, "\n| comparison | per run | median | target | met |");
            let _ = writeln!(s, "|---|---|---:|---|---|");
            for r in &self.ratios {
                let per: Vec<String> = r.per_run.iter().map(|v| format!("{v:.2}")).collect();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    r.name,
                    per.join(", "),
                    r.median.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into()),
                    r.target,
                    met_word(r.met)
                );
            }
        }
        s
    }

    /// Writes `report.md`, `results.json`, `bench-distribution.svg` and
    /// `bench-latency.svg` into `dir`.
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        charts::distribution(&self.rows, self.workers, &dir.join("bench-distribution.svg"))?;
        charts::latency(&self.rows, &dir.join("bench-latency.svg"))?;
        std::fs::write(dir.join("report.md"), self.markdown("bench-distribution.svg", "bench-latency.svg"))?;
        std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(self).map_err(std::io::Error::other)?)?;
        Ok(())
    }
}

fn met_word(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    }
}

/// One result row as text cells, the same for the terminal table and the Markdown
/// report: model, workload, req/s, p50, p99, p99.9, Jain, max/min, master CPU (`none`
/// where there is no master), connections per worker, and an errors suffix.
fn cells(r: &Row, none: &str) -> [String; 11] {
    [
        r.model.name().to_string(),
        r.workload.name().to_string(),
        format!("{:.0}", r.rps),
        format!("{:.2}", r.latency.p50),
        format!("{:.2}", r.latency.p99),
        format!("{:.2}", r.latency.p999),
        format!("{:.3}", r.jain),
        fmt_ratio(r.max_min),
        r.master_cpu_us_per_conn.map(|v| format!("{v:.1}")).unwrap_or_else(|| none.into()),
        fmt_counts(&r.conns_per_worker),
        if r.errors > 0 { format!(" ({} errors)", r.errors) } else { String::new() },
    ]
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|v| format!("{v:.2}")).unwrap_or_else(|| "inf".into())
}

fn fmt_counts(v: &[u64]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" / ")
}

fn row_of(model: Model, workload: Workload, cells: &[&Cell]) -> Row {
    let med = |f: &dyn Fn(&Cell) -> f64| stats::median(&cells.iter().map(|c| f(c)).collect::<Vec<_>>()).unwrap_or(0.0);
    // The run whose Jain's index is the median supplies the per-worker counts, so the
    // counts shown agree with the index shown.
    let jain = med(&|c| c.jain);
    let rep = cells.iter().min_by(|a, b| (a.jain - jain).abs().total_cmp(&(b.jain - jain).abs())).copied();
    let cpu: Vec<f64> = cells.iter().filter_map(|c| c.master_cpu_us_per_conn).collect();
    Row {
        model,
        workload,
        runs: cells.len(),
        rps: med(&|c| c.rps),
        latency: Percentiles {
            p50: med(&|c| c.latency.p50),
            p99: med(&|c| c.latency.p99),
            p999: med(&|c| c.latency.p999),
            max: med(&|c| c.latency.max),
        },
        jain,
        max_min: rep.and_then(|c| c.max_min),
        conns_per_worker: rep.map(|c| c.conns_per_worker.clone()).unwrap_or_default(),
        master_cpu_us_per_conn: stats::median(&cpu),
        errors: cells.iter().map(|c| c.errors).sum(),
    }
}

fn find(cells: &[Cell], model: Model, workload: Workload, run: usize) -> Option<&Cell> {
    cells.iter().find(|c| c.model == model && c.workload == workload && c.run == run)
}

/// The targets that compare models, each computed within one run.
fn ratios(cells: &[Cell], runs: usize) -> Vec<Ratio> {
    let mut out = Vec::new();
    let mut push = |name: String, per_run: Vec<f64>, target: &str, ok: &dyn Fn(f64) -> bool| {
        if per_run.is_empty() {
            return;
        }
        let median = stats::median(&per_run);
        out.push(Ratio { name, per_run, median, target: target.into(), met: median.map(ok) });
    };
    for m in [Model::HandoffRr, Model::HandoffLeastConn, Model::HandoffP2c] {
        let per: Vec<f64> = (0..runs)
            .filter_map(|r| {
                Some(
                    find(cells, m, Workload::Close, r)?.rps
                        / find(cells, Model::Reuseport, Workload::Close, r)?.rps.max(1e-9),
                )
            })
            .collect();
        push(format!("close req/s, {m} / reuseport"), per, ">= 0.90", &|v| v >= 0.9);
    }
    let per: Vec<f64> = (0..runs)
        .filter_map(|r| {
            let lc = find(cells, Model::HandoffLeastConn, Workload::Uneven, r)?.latency.p99;
            let best = [Model::Shared, Model::SharedNginx, Model::Reuseport]
                .iter()
                .filter_map(|&k| find(cells, k, Workload::Uneven, r).map(|c| c.latency.p99))
                .min_by(f64::total_cmp)?;
            Some(lc / best.max(1e-9))
        })
        .collect();
    push("uneven p99, handoff-least-conn / best kernel model".into(), per, "<= 0.50", &|v| v <= 0.5);
    for w in Workload::ALL {
        let per: Vec<f64> = (0..runs).filter_map(|r| Some(find(cells, Model::HandoffRr, w, r)?.jain)).collect();
        push(format!("Jain's index, handoff-rr, {w}"), per, ">= 0.99", &|v| v >= 0.99);
    }
    let per: Vec<f64> =
        (0..runs).filter_map(|r| Some(find(cells, Model::HandoffLeastConn, Workload::Uneven, r)?.jain)).collect();
    push("Jain's index, handoff-least-conn, uneven".into(), per, ">= 0.98", &|v| v >= 0.98);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(model: Model, workload: Workload, run: usize, rps: f64, p99: f64, counts: Vec<u64>) -> Cell {
        Cell {
            model,
            workload,
            run,
            requests: 100,
            connections: counts.iter().sum(),
            errors: 0,
            first_error: None,
            elapsed_s: 1.0,
            rps,
            latency: Percentiles { p50: 1.0, p99, p999: p99 * 2.0, max: p99 * 3.0 },
            max_min: stats::max_min(&counts),
            jain: stats::jain(&counts),
            conns_per_worker: counts,
            reqs_per_worker: vec![],
            master_cpu_us_per_conn: None,
        }
    }

    #[test]
    fn progress_bar_fills_in_proportion() {
        assert_eq!(progress_bar(0, 24), format!("[{}]", ".".repeat(20)));
        assert_eq!(progress_bar(12, 24), format!("[{}{}]", "#".repeat(10), ".".repeat(10)));
        assert_eq!(progress_bar(24, 24), format!("[{}]", "#".repeat(20)));
        assert_eq!(progress_bar(0, 0), format!("[{}]", "#".repeat(20)));
    }

    #[test]
    fn ratios_are_taken_within_a_run_then_medianed() {
        let mut cells = Vec::new();
        for (run, (rr, rp)) in [(900.0, 1000.0), (400.0, 500.0), (2000.0, 2000.0)].into_iter().enumerate() {
            cells.push(cell(Model::HandoffRr, Workload::Close, run, rr, 1.0, vec![5, 5]));
            cells.push(cell(Model::Reuseport, Workload::Close, run, rp, 1.0, vec![5, 5]));
        }
        let r = ratios(&cells, 3);
        let close = r.iter().find(|r| r.name.contains("handoff-rr / reuseport")).unwrap();
        assert_eq!(close.per_run, vec![0.9, 0.8, 1.0]);
        assert_eq!(close.median, Some(0.9));
        assert_eq!(close.met, Some(true));
    }

    #[test]
    fn uneven_ratio_uses_the_best_kernel_model() {
        let cells = vec![
            cell(Model::Shared, Workload::Uneven, 0, 1.0, 30.0, vec![1, 1]),
            cell(Model::Reuseport, Workload::Uneven, 0, 1.0, 20.0, vec![1, 1]),
            cell(Model::HandoffLeastConn, Workload::Uneven, 0, 1.0, 5.0, vec![1, 1]),
        ];
        let r = ratios(&cells, 1);
        let u = r.iter().find(|r| r.name.starts_with("uneven p99")).unwrap();
        assert_eq!(u.median, Some(0.25));
        assert_eq!(u.met, Some(true));
    }

    #[test]
    fn rows_take_medians_and_the_median_runs_counts() {
        let cells = [
            cell(Model::Shared, Workload::Trickle, 0, 10.0, 3.0, vec![10, 0]),
            cell(Model::Shared, Workload::Trickle, 1, 30.0, 1.0, vec![6, 4]),
            cell(Model::Shared, Workload::Trickle, 2, 20.0, 2.0, vec![9, 1]),
        ];
        let refs: Vec<&Cell> = cells.iter().collect();
        let row = row_of(Model::Shared, Workload::Trickle, &refs);
        assert_eq!(row.rps, 20.0);
        assert_eq!(row.latency.p99, 2.0);
        assert_eq!(row.conns_per_worker, vec![9, 1]);
        assert_eq!(row.max_min, Some(9.0));
    }
}
